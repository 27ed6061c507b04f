"""ChatCore as a front door of a cluster (``clustered=True``): room events go to the log as ``Append`` and
come back, numbered by the log (positions that skip within a room), through ``applied``; acks wait for
``confirmed``.  Two cores share one simulated log here, as two front doors share the stream."""

from __future__ import annotations

import itertools

import msgspec

from chat import Append, ChatConfig, ChatCore, Claim, Forward, Publish, ReadLog, ReadRecent, Release, Reply
from messages import ErrorCode

A, B, C = b"peer-a", b"peer-b", b"peer-c"


class Log:
    """One stream for every room: positions in arrival order, each room's previous position, dedupe by id."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.by_id: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.names: dict[str, ChatCore] = {}  # the cluster's claims: name -> the front door holding it

    def store(self, append: Append) -> tuple[int, int, bool]:
        """(seq, prev, duplicate)"""
        if append.log_id in self.by_id:
            seq = self.by_id[append.log_id]
            return seq, 0, True
        self.events.append((append.room, append.payload))
        seq = self.by_id[append.log_id] = len(self.events)
        prev, self.last[append.room] = self.last.get(append.room, 0), seq
        return seq, prev, False

    def newest(self, room: str, below: int, limit: int) -> list[tuple[int, int, bytes]]:
        """The room's newest ``limit`` events at or before position ``below``: (seq, prev, stored bytes)."""
        chain, prev = [], 0
        for seq, (name, payload) in enumerate(self.events, 1):
            if name == room and seq <= below:
                chain.append((seq, prev, payload))
                prev = seq
        return chain[-limit:] if limit else []


def run(log: Log, doors: list[ChatCore], made: dict[ChatCore, list], now: float = 0.0) -> dict[ChatCore, list]:
    """Answer every Claim and Release the doors made (a name is free unless another door holds it), store
    every Append, in order; each door applies every new event (all doors see the stream's feed) and the door
    that made it confirms it.  Returns what each door sent."""
    out: dict[ChatCore, list] = {door: [] for door in doors}
    todo = [(door, o) for door, outputs in made.items() for o in outputs]
    while todo:
        door, o = todo.pop(0)
        if isinstance(o, Claim):
            taken = log.names.get(o.folded, door) is not door
            if not taken:
                log.names[o.folded] = door
            todo += [(door, x) for x in door.claimed(o.peer, o.folded, ErrorCode.NAME_TAKEN if taken else None, now)]
        elif isinstance(o, Release):
            log.names.pop(o.folded, None)
        elif isinstance(o, Append):
            seq, prev, duplicate = log.store(o)
            if not duplicate:
                for each in doors:
                    out[each] += each.applied(o.room, seq, prev, o.payload)
            out[door] += door.confirmed(o, seq, now)
        elif isinstance(o, ReadRecent):  # what cluster_reads finds by reading the stream backwards
            out[door].append(o)
            out[door] += door.recent_read(o.room, [o.peer], log.newest(o.room, o.below, o.limit))
        else:
            out[door].append(o)
    return out


def send(core: ChatCore, peer: bytes, env: dict, now: float = 0.0) -> list:
    return core.handle(peer, [msgspec.json.encode(env)], now)


def decoded(out: list, kind: type) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, kind)]


def door() -> ChatCore:
    return ChatCore(ChatConfig(), epoch="e", clustered=True)


def test_two_front_doors_show_one_room_alike_with_the_logs_positions() -> None:
    log, one, two = Log(), door(), door()
    run(log, [one, two], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    run(log, [one, two], {two: send(two, B, {"type": "hello", "user": "bob", "rooms": ["general"]})})
    log.store(Append("other", b'{"type":"msg","room":"other","seq":0,"prev":0}', "x", "carol", None))  # skips
    made = send(one, A, {"type": "msg", "room": "general", "text": "hi", "id": "m1"})
    assert decoded(made, Reply) == [] and [type(o) for o in made] == [Append]  # no ack before the log has it
    out = run(log, [one, two], {one: made})
    ack = decoded(out[one], Reply)
    assert ack == [{"type": "ack", "id": "m1", "room": "general", "seq": 4}]
    for each in (one, two):  # both doors publish it, numbered alike: position 4, the room's previous 2
        (event,) = [e for e in decoded(out[each], Publish) if e["type"] == "msg"]
        assert (event["seq"], event["prev"], event["text"], event["user"]) == (4, 2, "hi", "alice")
    # History from either door: the room's events with their positions, however they skip.
    for each, peer in ((one, A), (two, B)):
        (history,) = decoded(send(each, peer, {"type": "history", "room": "general", "after": 1}), Reply)
        assert [(e["type"], e["seq"], e["prev"]) for e in history["events"]] == [("join", 2, 1), ("msg", 4, 2)]
        assert history["seq"] == 4
        (history,) = decoded(send(each, peer, {"type": "history", "room": "general", "after": 3}), Reply)
        assert [e["seq"] for e in history["events"]] == [4]


def test_a_resend_is_stored_once_and_acked_alike_through_either_door() -> None:
    log, one, two = Log(), door(), door()
    run(log, [one, two], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    first = run(log, [one, two], {one: send(one, A, {"type": "msg", "room": "general", "text": "hi", "id": "m1"})})
    # Its ack was lost and the door died: alice says hello at the other door and sends it again.
    run(log, [one, two], {one: send(one, A, {"type": "bye"})})  # her name is free again in the cluster
    run(log, [one, two], {two: send(two, B, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    again = run(log, [one, two], {two: send(two, B, {"type": "msg", "room": "general", "text": "hi", "id": "m1"})})
    assert decoded(again[two], Reply) == decoded(first[one], Reply)  # the same seq
    assert [e for e in decoded(again[two], Publish) if e["type"] == "msg"] == []  # published once, earlier
    # Through the door that acked it (its said window has it), a resend is answered at once, no log round.
    run(log, [one, two], {two: send(two, B, {"type": "bye"})})
    run(log, [one, two], {one: send(one, A, {"type": "hello", "user": "alice"})})
    out = send(one, A, {"type": "msg", "room": "general", "text": "hi", "id": "m1"})
    assert not [o for o in out if isinstance(o, Append)] and decoded(out, Reply) == decoded(first[one], Reply)


def test_a_refused_append_is_an_unavailable_error_and_a_topic_waits_for_the_log_too() -> None:
    log, one = Log(), door()
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    (append,) = send(one, A, {"type": "msg", "room": "general", "text": "hi", "id": "m1"})
    (error,) = decoded(one.refused(append, "no quorum"), Reply)
    assert (error["type"], error["code"], error["id"]) == ("error", "unavailable", "m1")
    out = run(log, [one], {one: send(one, A, {"type": "topic", "room": "general", "topic": "news", "id": "t1"})})
    assert decoded(out[one], Reply) == [{"type": "ack", "id": "t1", "room": "general", "seq": 2}]
    (joined,) = decoded(send(one, A, {"type": "join", "room": "general"}), Reply)
    assert joined["topic"] == "news"


def test_the_fast_path_leaves_a_front_doors_msgs_to_the_log() -> None:
    log, one = Log(), door()
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    frames = [msgspec.json.encode({"type": "msg", "room": "general", "text": f"t{i}", "id": f"m{i}"}) for i in range(5)]
    made = one.handle(A, [msgspec.json.encode([msgspec.json.decode(f) for f in frames])], 0.0)
    assert [type(o) for o in made] == [Append] * 5
    out = run(log, [one], {one: made})
    assert [r["seq"] for r in decoded(out[one], Reply)] == [2, 3, 4, 5, 6]


def test_what_is_not_an_event_of_the_room_in_the_log_is_skipped_not_a_crash() -> None:
    one = door()
    send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    assert one.applied("general", 5, 0, b"junk") == []
    assert one.applied("general", 6, 0, b'{"type":"msg","room":"other","seq":0,"prev":0}') == []
    assert one.applied("general", 7, 0, b'{"type":"topic","room":"general","topic":1,"seq":0,"prev":0}') == []
    (out,) = one.applied(
        "general", 8, 0, b'{"type":"msg","room":"general","user":"x","text":"t","id":"i","seq":0,"prev":0}'
    )
    assert msgspec.json.decode(out.payload)["seq"] == 8


def test_history_older_than_what_a_front_door_saw_is_read_from_the_log() -> None:
    log, one = Log(), door()
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    for i in range(3):
        run(log, [one], {one: send(one, A, {"type": "msg", "room": "general", "text": f"t{i}", "id": f"m{i}"})})
    late = door()  # started after all that: its memory has nothing of it
    (claim,) = send(late, B, {"type": "hello", "user": "bob", "rooms": ["general"]})
    late.claimed(claim.peer, claim.folded, None, 0.0)  # bob is a member: the room is in memory
    late.applied("general", 4, 3, log.events[3][1])  # it saw the last one live
    (read,) = send(late, B, {"type": "history", "room": "general", "after": 0, "limit": 2})
    assert isinstance(read, ReadLog) and (read.room, read.after, read.limit, read.head) == ("general", 0, 2, 4)
    walked = [(seq, seq - 1, log.events[seq - 1][1]) for seq in (1, 2)]  # what walking the subject found
    (history,) = decoded(late.history_read(read, walked, ended=False), Reply)
    assert [(e["seq"], e["prev"]) for e in history["events"]] == [(1, 0), (2, 1)] and history["seq"] == 4
    # What memory has is answered at once, as on a single broker.
    (history,) = decoded(send(late, B, {"type": "history", "room": "general", "after": 3}), Reply)
    assert [e["seq"] for e in history["events"]] == [4]


def test_a_name_is_one_persons_in_the_whole_cluster_and_free_again_when_they_go() -> None:
    log, one, two = Log(), door(), door()
    made = send(one, A, {"type": "hello", "user": "alice"})
    assert [type(o) for o in made] == [Claim] and made[0].folded == "alice"  # no welcome before the claim
    assert decoded(run(log, [one, two], {one: made})[one], Reply)[0]["type"] == "welcome"
    out = run(log, [one, two], {two: send(two, B, {"type": "hello", "user": "Alice"})})
    assert [(r["type"], r.get("code")) for r in decoded(out[two], Reply)] == [("error", "name_taken")]
    out = run(log, [one, two], {two: send(two, B, {"type": "hello", "user": "bob"})})
    out = run(log, [one, two], {two: send(two, B, {"type": "nick", "name": "alice", "id": "n1"})})
    assert [(r["type"], r.get("code")) for r in decoded(out[two], Reply)] == [("error", "name_taken")]
    run(log, [one, two], {one: send(one, A, {"type": "bye"})})
    out = run(log, [one, two], {two: send(two, B, {"type": "nick", "name": "alice", "id": "n2"})})
    assert [r["type"] for r in decoded(out[two], Reply)] == ["renamed"]
    assert log.names == {"alice": two}  # bob's claim went with the rename


def test_a_history_read_the_log_did_not_finish_is_never_taken_for_the_rooms_end() -> None:
    """A walk the log stopped answering (an election) must not read as "nothing more": the logger of the
    cluster soak skipped 303 acked messages that way.  Some found: ``seq`` past them; none: unavailable."""
    one = door()
    read = ReadLog(A, "general", 10, 100, 0, "h1")
    event = b'{"type":"msg","room":"general","user":"x","text":"t","id":"i","seq":0,"prev":0}'
    (reply,) = decoded(one.history_read(read, [(12, 10, event)], ended=False), Reply)
    assert [e["seq"] for e in reply["events"]] == [12] and reply["seq"] > 12
    (error,) = decoded(one.history_read(read, [], ended=False), Reply)
    assert (error["type"], error["code"], error["id"]) == ("error", "unavailable", "h1")
    (reply,) = decoded(one.history_read(read, [], ended=True), Reply)  # the room has nothing after 10
    assert (reply["events"], reply["seq"]) == ([], 10)
    # A stored event with positions of its own, or a text longer than the limit, is not a front door's.
    forged = b'{"type":"msg","room":"general","user":"x","text":"t","id":"i","seq":7,"prev":6}'
    assert one.applied("general", 13, 12, forged) == []
    too_long = event.replace(b'"text":"t"', b'"text":"' + b"x" * 5000 + b'"')
    assert one.applied("general", 14, 12, too_long) == []


def test_a_dm_to_someone_on_another_front_door_goes_there_and_its_answer_acks_it() -> None:
    log, one, two = Log(), door(), door()
    run(log, [one, two], {one: send(one, A, {"type": "hello", "user": "alice"})})
    run(log, [one, two], {two: send(two, B, {"type": "hello", "user": "Bob"})})
    dm = {"type": "dm", "to": "bob", "text": "hi", "id": "d1"}
    (forward,) = [o for o in send(one, A, dm, 1.0) if isinstance(o, Forward)]
    assert forward.folded == "bob"
    assert send(one, A, dm, 1.5) == []  # a resend while it is on its way: the answer acks it
    answer, delivered = two.deliver(forward.folded, forward.event)
    (got,) = decoded(delivered, Reply)
    assert (got["type"], got["user"], got["to"], got["text"]) == ("dm", "alice", "Bob", "hi")
    assert "me" not in got  # as a dm between people on one front door
    (ack,) = decoded(one.forwarded(forward, answer, 2.0), Reply)
    assert (ack["type"], ack["id"], ack["to"]) == ("ack", "d1", "Bob")
    (again,) = decoded(send(one, A, dm, 3.0), Reply)  # a resend after the ack: acked again, not sent twice
    assert again == ack


def test_a_dm_nobody_in_the_cluster_answers_is_no_such_user() -> None:
    log, one, two = Log(), door(), door()
    run(log, [one, two], {one: send(one, A, {"type": "hello", "user": "alice"})})
    (forward,) = [
        o for o in send(one, A, {"type": "dm", "to": "zed", "text": "hi", "id": "d1"}) if isinstance(o, Forward)
    ]
    (error,) = decoded(one.forwarded(forward, None, 1.0), Reply)  # no front door listens for the name
    assert (error["code"], error["id"]) == ("no_such_user", "d1")
    answer, delivered = two.deliver("zed", forward.event)  # a front door that had them a moment ago
    assert delivered == []
    (error,) = decoded(one.forwarded(forward, answer, 1.0), Reply)
    assert error["code"] == "no_such_user"
    (error,) = decoded(one.forwarded(forward, b"not json", 1.0), Reply)  # a front door of another build
    assert error["code"] == "unavailable"


def test_dms_on_their_way_to_other_front_doors_are_bounded_in_bytes() -> None:
    log, one = Log(), ChatCore(ChatConfig(max_forward_bytes=2_000), epoch="e", clustered=True)
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice"})})
    forwards = []
    for i in range(20):
        out = send(one, A, {"type": "dm", "to": "bob", "text": "x" * 100, "id": f"d{i}"})
        forwards += [o for o in out if isinstance(o, Forward)]
        if decoded(out, Reply):
            (error,) = decoded(out, Reply)
            assert (error["code"], error["id"]) == ("unavailable", f"d{i}")
            break
    else:
        raise AssertionError("never refused")
    assert 0 < len(forwards) < 20 and one.forwarding_bytes <= 2_000
    for forward in forwards:  # answered: the bytes are free again
        one.forwarded(forward, None, 1.0)
    assert one.forwarding_bytes == 0 and one.forwarding == {}


def test_a_front_door_learns_the_logs_rooms_at_start_without_going_back() -> None:
    log, one = Log(), door()
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    seen = decoded(send(one, B, {"type": "rooms"}), Reply)[0]["rooms"]
    one.learned({"quiet": 7, "general": 1, "bad name!": 9, "huge": 2**64})
    (rooms,) = decoded(send(one, B, {"type": "rooms"}), Reply)
    assert rooms["rooms"] == {**seen, "quiet": 7}  # its own view of general stays; junk is not a room
    out = send(one, A, {"type": "join", "room": "quiet"})
    assert [o.below for o in out if isinstance(o, ReadRecent)] == [7]  # its recent past: from the log
    (joined,) = decoded(one.recent_read("quiet", [A], []), Reply)  # the log had nothing (for this test)
    assert joined["seq"] == 7  # the baseline a joining client starts from: where the log was


def test_a_join_on_a_front_door_started_later_shows_the_rooms_recent_past_from_the_log() -> None:
    log, one = Log(), ChatCore(ChatConfig(rate_limit=0, source_rate=0), epoch="e", clustered=True)
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general", "dev"]})})
    for i in range(80):  # two rooms interleaved: general's positions skip
        for room in ("general", "dev"):
            said = {"type": "msg", "room": room, "text": f"{room} {i}", "id": f"{room}{i}"}
            run(log, [one], {one: send(one, A, said)})
        if i == 78:  # a topic among its recent past
            run(log, [one], {one: send(one, A, {"type": "topic", "room": "general", "topic": "plans", "id": "t"})})
    late = door()  # started since: it saw none of it
    late.learned({"general": log.last["general"], "dev": log.last["dev"]})
    out = run(log, [late], {late: send(late, B, {"type": "hello", "user": "bob", "rooms": ["general"]})})
    (joined,) = [r for r in decoded(out[late], Reply) if r["type"] == "joined"]
    shown = ChatConfig().history_on_join
    texts = [e.get("text") or e["type"] for e in joined["history"]]
    said = [f"general {i}" for i in range(80 - shown + 2, 80)]
    assert texts == [*said[:-1], "topic", said[-1], "join"]  # the newest, bob's join last
    assert joined["topic"] == "plans"  # learned from them
    assert all(b["prev"] == a["seq"] for a, b in itertools.pairwise(joined["history"]))
    # Kept in memory: the next join reads nothing from the log, and shows the same.
    out = run(log, [late], {late: send(late, C, {"type": "hello", "user": "carol", "rooms": ["general"]})})
    assert not [o for o in out[late] if isinstance(o, ReadRecent)]
    (again,) = [r for r in decoded(out[late], Reply) if r["type"] == "joined"]
    assert [e.get("text") or e["type"] for e in again["history"]] == texts  # (carol's join: on its way to the log)


def test_a_leave_from_the_log_for_someone_here_again_is_followed_by_their_join() -> None:
    """The attack on the roster: a member of a dead front door came back here while another front door's
    sweep told them gone, and the leave reached the log after their new join.  The front door that has them
    puts their join (and roster entry) after it, so every view ends with them in the room."""
    log, one, other = Log(), door(), door()
    run(log, [one, other], {one: send(one, A, {"type": "hello", "user": "Alice", "rooms": ["general"]})})
    gone = other.gone("general", "Alice", "dead-door", 5.0)
    seq, prev, _ = log.store(gone)
    out = one.applied("general", seq, prev, gone.payload, 6.0)
    assert [type(o).__name__ for o in out] == ["Publish", "Member", "Append"]
    assert msgspec.json.decode(out[2].payload)["type"] == "join" and out[1].present
    assert other.applied("general", seq, prev, gone.payload, 6.0)[1:] == []  # not here: nothing more
    run(log, [one], {one: send(one, A, {"type": "leave", "room": "general"})})
    (leave_append,) = [a for a in log.events if b'"reason":"left"' in a[1]]
    assert one.applied("general", 99, seq, leave_append[1], 7.0)[1:] == []  # she left for real: no join


def test_a_second_name_claim_while_one_is_on_its_way_is_refused_and_the_first_goes_through() -> None:
    """The attack: five nicks sent at once got no reply at all (each answer found a later request)."""
    log, one = Log(), door()
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "nk0"})})
    (first,) = [o for o in send(one, A, {"type": "nick", "name": "nk1", "id": "n1"}) if isinstance(o, Claim)]
    (refused,) = decoded(send(one, A, {"type": "nick", "name": "nk2", "id": "n2"}), Reply)
    assert (refused["code"], refused["id"]) == ("unavailable", "n2")
    (renamed,) = decoded(one.claimed(A, first.folded, None, 1.0), Reply)
    assert (renamed["type"], renamed["user"], renamed["id"]) == ("renamed", "nk1", "n1")
    # A client's retry of the same hello waits with the first claim (its answer welcomes the latest request).
    (claim,) = [o for o in send(one, B, {"type": "hello", "user": "bob"}) if isinstance(o, Claim)]
    assert [o for o in send(one, B, {"type": "hello", "user": "bob"}) if isinstance(o, Claim | Reply)] == []
    replies = decoded(one.claimed(B, claim.folded, None, 2.0), Reply)
    assert replies[0]["type"] == "welcome"


def test_an_id_on_its_way_is_one_message_resends_wait_for_its_answer_and_another_is_id_reused() -> None:
    """The attack: the same id for a msg and a dm, while one was on its way, was accepted twice; resends of a
    dm on its way got no reply."""
    log, one = Log(), door()
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    msg = {"type": "msg", "room": "general", "text": "hi", "id": "x1"}
    (append,) = [o for o in send(one, A, msg) if isinstance(o, Append)]
    assert send(one, A, msg) == []  # a resend waits for the log's answer
    (error,) = decoded(send(one, A, {"type": "dm", "to": "bob", "text": "psst", "id": "x1"}), Reply)
    assert (error["code"], error["id"]) == ("id_reused", "x1")
    acks = decoded(one.confirmed(append, 7, 1.0), Reply)
    assert acks == [{"type": "ack", "id": "x1", "room": "general", "seq": 7}]  # one peer: one ack
    dm = {"type": "dm", "to": "bob", "text": "psst", "id": "d1"}
    (forward,) = [o for o in send(one, A, dm) if isinstance(o, Forward)]
    assert send(one, A, dm) == []  # the same dm again: it waits
    (error,) = decoded(send(one, A, {**dm, "text": "other"}), Reply)
    assert error["code"] == "id_reused"
    (ack,) = decoded(one.forwarded(forward, b'{"to":"Bob"}', 2.0), Reply)  # one connection: one ack
    assert (ack["type"], ack["id"], ack["to"]) == ("ack", "d1", "Bob")
    assert one.in_flight == {}


def test_a_join_reads_nothing_back_when_memory_already_holds_a_replys_worth() -> None:
    """Large events: memory holds fewer than a joined shows, but all a reply holds; reading more is waste."""
    config = ChatConfig(rate_limit=0, source_rate=0, max_reply_bytes=1024)
    log, one, late = Log(), ChatCore(config, epoch="e", clustered=True), ChatCore(config, epoch="e", clustered=True)
    run(log, [one], {one: send(one, A, {"type": "hello", "user": "alice", "rooms": ["general"]})})
    for i in range(6):
        run(log, [one], {one: send(one, A, {"type": "msg", "room": "general", "text": "y" * 600, "id": f"b{i}"})})
    late.learned({"general": log.last["general"]})
    log.newest = lambda room, below, limit: Log.newest(log, room, below, 2)  # type: ignore[method-assign]
    out = run(log, [late], {late: send(late, B, {"type": "hello", "user": "bob", "rooms": ["general"]})})[late]
    assert len([o for o in out if isinstance(o, ReadRecent)]) == 1  # (the read holds a reply's bytes: 2 events)
    room = late.rooms["general"]
    assert room.bytes >= 1024 and len(room.history) < config.history_on_join
    out = run(log, [late], {late: send(late, C, {"type": "hello", "user": "carol", "rooms": ["general"]})})[late]
    assert not [o for o in out if isinstance(o, ReadRecent)]  # memory holds what a reply can: read nothing
    (joined,) = [r for r in decoded(out, Reply) if r["type"] == "joined"]
    assert joined["history"]


def test_every_join_waiting_for_a_read_gets_its_joined_and_the_read_is_its_sources() -> None:
    log, late = Log(), door()
    late.learned({"dev": 5})
    run(log, [late], {late: send(late, B, {"type": "hello", "user": "bob", "rooms": []})})
    reads = [o for o in send(late, B, {"type": "join", "room": "dev"}) if isinstance(o, ReadRecent)]
    reads += [o for o in send(late, B, {"type": "join", "room": "dev"}) if isinstance(o, ReadRecent)]
    assert len(reads) == 2 and reads[0].source == late.peers[B].source.name
    replies = decoded(late.recent_read("dev", [r.peer for r in reads], []), Reply)
    assert [r["type"] for r in replies] == ["joined", "joined"]  # each join is answered
