"""A front door (``front_door.FrontDoor``) with a stand-in for the NATS bridge: its history reads from the
cluster's log, and its roster of who is in which room (``who`` and ``joined``, a dead front door's members
told gone).

The log answers one event per step, so a walk replies in chunks, and a client asking again (its patience
shorter than the walk) joins its walk instead of starting one more.  Found by the 5-minute cluster soak:
every restarted front door had its clients' fills walking the log, each client asked again every 1.5 s,
every new request started a new walk, and 30 walks shared the log until none finished within a client's
patience: both loggers stopped for minutes."""

from __future__ import annotations

import itertools

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("nats")

from chat import UNKNOWN, ChatConfig, ChatCore, Claim, Member, ReadLog, ReadRecent, Reply
from cluster_feed import LOG_PREFIX
from cluster_reads import MAX_READS, MAX_READS_PER_SOURCE, READ_CHUNK, RECENT_STEPS_PER_EVENT, TOPICS, LogReads
from cluster_roster import DOORS, ENTRY_OVERHEAD, MEMBERS, member_key, name_key
from front_door import FrontDoor
from nats_bridge import Acked, Changed, Dropped, Failed, KvEntries, KvResult, Stored

A, B = b"peer-a", b"peer-b"


class Bridge:
    """What a front door asks of the bridge, recorded; its answers are handed in by the test."""

    def __init__(self) -> None:
        self.tokens = itertools.count(1)
        self.steps: dict[int, tuple[str, int]] = {}  # token -> (subject, after)
        self.kvs: dict[int, tuple] = {}  # token -> (op, bucket, key, value, revision)
        self.lists: dict[int, tuple[str, str]] = {}  # token -> (bucket, pattern)
        self.published: dict[int, tuple[str, bytes, str]] = {}  # token -> (subject, payload, msg id)
        self.watches: dict[int, tuple[str, str]] = {}  # token -> (bucket, pattern), while watched
        self.purged: list[tuple[str, str, int]] = []  # (bucket, key, up to revision)
        self.answers: list = []

    def next(self, stream: str, subject: str, after: int) -> int:
        token = next(self.tokens)
        self.steps[token] = (subject, after)
        return token

    def last(self, stream: str, subject: str) -> int:
        return self.next(stream, subject, -1)

    def kv(self, op: str, bucket: str, key: str, value: bytes = b"", revision: int = 0) -> int:
        token = next(self.tokens)
        self.kvs[token] = (op, bucket, key, value, revision)
        return token

    def kv_list(self, bucket: str, pattern: str) -> int:
        token = next(self.tokens)
        self.lists[token] = (bucket, pattern)
        return token

    def watch(self, bucket: str, pattern: str) -> int:
        token = next(self.tokens)
        self.watches[token] = (bucket, pattern)
        return token

    def unwatch(self, token: int) -> None:
        del self.watches[token]

    def kv_purge(self, bucket: str, key: str, revision: int) -> int:
        token = next(self.tokens)
        self.purged.append((bucket, key, revision))
        return token

    def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        token = next(self.tokens)
        self.published[token] = (subject, payload, msg_id)
        return token

    def listen(self, subject: str) -> None:
        pass

    def unlisten(self, subject: str) -> None:
        pass

    def events(self) -> list:
        answers, self.answers = self.answers, []
        return answers


def event(room: str) -> bytes:
    return msgspec.json.encode({"type": "msg", "room": room, "user": "x", "text": "t", "id": "i", "seq": 0, "prev": 0})


@pytest.fixture
def door() -> FrontDoor:
    core = ChatCore(ChatConfig(), epoch="e", clustered=True)
    return FrontDoor(zmq.Context.instance(), [], core, bridge=Bridge())  # type: ignore[arg-type]


def answer(door: FrontDoor, now: float = 0.0, seq_of=lambda after: after + 3) -> list:
    """The log answers every step waiting: the room's next event, 3 positions on (other rooms between)."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    for token, (subject, after) in list(bridge.steps.items()):
        del bridge.steps[token]
        bridge.answers.append(Stored(token, seq_of(after), subject, event(subject[len(LOG_PREFIX) :])))
    return door.handle(now)


def replies(out: list) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, Reply)]


def walk_until_reply(door: FrontDoor, now: float = 0.0) -> list[dict]:
    for _ in range(READ_CHUNK + 5):
        if got := replies(answer(door, now)):
            return got
    raise AssertionError("no reply")


def test_a_walk_replies_after_a_chunk_with_more(door: FrontDoor) -> None:
    door.reads.read(ReadLog(A, "general", 10, 1000, 100_000, "h1"))
    (reply,) = walk_until_reply(door)
    assert len(reply["events"]) == READ_CHUNK and reply["more"] is True
    seqs = [e["seq"] for e in reply["events"]]
    assert seqs == list(range(13, 13 + 3 * READ_CHUNK, 3))
    assert [e["prev"] for e in reply["events"]] == [10, *seqs[:-1]]  # the walk follows the room
    assert door.reads.walks == {} and door.reads.steps == {}


def test_the_same_client_asking_again_joins_its_walk(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.reads.read(ReadLog(A, "general", 10, 1000, 100_000, "fill.1"))
    for _ in range(5):
        answer(door)
    assert door.reads.read(ReadLog(A, "general", 10, 1000, 100_000, "fill.2")) == []  # its patience ran out
    assert len(bridge.steps) == 1 and len(door.reads.walks) == 1  # no second walk
    (reply,) = walk_until_reply(door)
    assert len(reply["events"]) == READ_CHUNK  # the first five steps count: one walk, one reply


def test_asking_from_elsewhere_drops_the_old_walk(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.reads.read(ReadLog(A, "general", 10, 1000, 100_000, "fill.1"))
    old = dict(bridge.steps)
    door.reads.read(ReadLog(A, "general", 400, 1000, 100_000, "fill.2"))
    bridge.answers = [Stored(token, 999, subject, event("general")) for token, (subject, _) in old.items()]
    for token in old:
        del bridge.steps[token]
    assert door.handle(0.0) == []  # the old walk's answer is for nobody
    (reply,) = walk_until_reply(door)
    assert reply["events"][0]["prev"] == 400


def test_a_walk_stops_where_the_front_doors_memory_begins(door: FrontDoor) -> None:
    door.reads.read(ReadLog(A, "general", 10, 1000, 100_000, "h1", kept_from=20))
    (reply,) = walk_until_reply(door)
    assert [e["seq"] for e in reply["events"]] == [13, 16, 19, 22] and reply["more"] is True


def test_the_walks_reply_ends_at_the_rooms_head(door: FrontDoor) -> None:
    door.reads.read(ReadLog(A, "general", 10, 1000, 19, "h1"))
    (reply,) = walk_until_reply(door)
    assert [e["seq"] for e in reply["events"]] == [13, 16, 19] and "more" not in reply


def test_a_step_the_log_did_not_answer_is_asked_again_then_given_up(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.reads.read(ReadLog(A, "general", 10, 1000, 100_000, "h1"))
    answer(door)  # one event found
    (token,) = bridge.steps
    del bridge.steps[token]
    bridge.answers = [Failed(token, "timeout")]
    assert door.handle(0.0) == [] and not bridge.steps
    door.tick(0.2)  # a little later
    assert len(bridge.steps) == 1  # asked again
    (token,) = bridge.steps
    del bridge.steps[token]
    bridge.answers = [Failed(token, "timeout")]
    (reply,) = replies(door.handle(1e9))  # long past READ_RETRY_S: what was found, not the room's end
    assert [e["seq"] for e in reply["events"]] == [13] and reply["seq"] > 13


def test_more_walks_than_the_bounds_are_refused(door: FrontDoor) -> None:
    for i in range(MAX_READS):
        assert door.reads.read(ReadLog(A, f"room{i}", 10, 1000, 100_000, "h", source=f"10.0.0.{i}")) == []
    (error,) = replies(door.reads.read(ReadLog(B, "general", 10, 1000, 100_000, "h2", source="10.0.1.1")))
    assert (error["code"], error["id"]) == ("unavailable", "h2")


def test_one_source_gets_its_share_of_the_walks_not_all(door: FrontDoor) -> None:
    """The attack: 64 connections from one address, each asking history now and then, held every walk, and
    someone else's history got unavailable more often than not."""
    for i in range(MAX_READS_PER_SOURCE):
        assert door.reads.read(ReadLog(bytes([i]), "general", 10 + i, 1000, 100_000, "h", source="attacker")) == []
    (error,) = replies(door.reads.read(ReadLog(b"more", "general", 99, 1000, 100_000, "h9", source="attacker")))
    assert error["code"] == "unavailable"
    assert door.reads.read(ReadLog(B, "general", 10, 1000, 100_000, "v", source="victim")) == []  # walked


# --- the roster -------------------------------------------------------------------------------------


def route(door: FrontDoor, outputs: list, now: float = 0.0) -> list:
    """What the broker's dispatch does with a front door core's outputs (claims granted at once); the
    replies are returned."""
    replies = []
    for out in outputs:
        if isinstance(out, Claim):
            replies += route(door, door.core.claimed(out.peer, out.folded, None, now), now)
        elif isinstance(out, Member):
            door.roster.member(out)
        elif isinstance(out, ReadRecent):  # (the log has nothing of the room, in these tests)
            replies += door.core.recent_read(out.room, [out.peer], [])
        elif isinstance(out, Reply):
            replies.append(out)
        elif type(out).__name__ == "Append":
            door.append(out)
    return replies


def ask(door: FrontDoor, peer: bytes, env: dict, now: float = 0.0) -> list:
    return route(door, door.core.handle(peer, [msgspec.json.encode(env)], now), now)


def answered(door: FrontDoor, *events: object, now: float = 0.0) -> list:
    door.bridge.answers = list(events)  # type: ignore[attr-defined]
    return route(door, door.handle(now), now)


def roster(value_user: str, value_door: str, away: str = "") -> bytes:
    return msgspec.json.encode({"user": value_user, "door": value_door, **({"away": away} if away else {})})


def test_joins_and_leaves_go_to_the_roster_one_at_a_time_in_order(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    ask(door, A, {"type": "hello", "user": "Alice", "rooms": ["general"]})
    ((put_token, put),) = [(t, k) for t, k in bridge.kvs.items() if k[1] == MEMBERS]
    assert put[:3] == ("put", MEMBERS, member_key("general", "alice"))
    assert msgspec.json.decode(put[3]) == {"user": "Alice", "door": door.door_id}
    ask(door, A, {"type": "leave", "room": "general"})
    assert [k for k in bridge.kvs.values() if k[1] == MEMBERS] == [put]  # the delete waits for the put
    answered(door, KvResult(put_token, 5, None, None))
    deletes = [k for k in bridge.kvs.values() if k[0] == "delete" and k[1] == MEMBERS]
    assert deletes == [("delete", MEMBERS, member_key("general", "alice"), b"", 0)]
    assert door.pending() == 3  # join and leave for the log, the delete for the roster: a stop waits for all


def watching(door: FrontDoor, *entries: tuple[str, bytes | None, int], caught_up: bool = True) -> list:
    """The roster's watch tells ``entries`` (key, value or None: deleted, revision), then (``caught_up``) that
    it told every key there was."""
    if door.roster.watching is None:
        door.roster.watch()
    token = door.roster.watching
    told = [Changed(token, key, value, revision) for key, value, revision in entries]
    return answered(door, *told, *([Changed(token, "", None, 0)] if caught_up else []))


def listed(door: FrontDoor, peer: bytes, kind: str) -> dict:
    """The ``who`` or ``joined`` reply to a request of ``kind`` for general."""
    (reply,) = ask(door, peer, {"type": kind, "room": "general"})
    return msgspec.json.decode(reply.payload)


def test_who_and_joined_list_the_whole_clusters_members_at_once(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    watching(
        door,
        (member_key("general", "alice"), roster("alice", door.door_id), 3),  # our own: the core has her
        (member_key("general", "bob"), roster("Bob", "other-door", away="lunch"), 4),
        (member_key("general", "x"), b"not a roster value", 5),
        (member_key("dev", "carol"), roster("carol", "other-door"), 6),
    )
    who = listed(door, A, "who")  # answered at once: no listing of the bucket
    assert not bridge.lists
    assert (who["users"], who["away"]) == (["alice", "Bob"], {"Bob": "lunch"})  # away on the other front door
    ask(door, B, {"type": "hello", "user": "dave"})
    joined = listed(door, B, "join")
    assert (joined["users"], joined["away"]) == (["alice", "Bob", "dave"], {"Bob": "lunch"})
    watching(door, (member_key("general", "bob"), None, 7))  # Bob left
    assert listed(door, A, "who")["users"] == ["alice", "dave"]
    assert door.core.elsewhere == {"dev": {"carol": ("carol", "")}}


def test_a_watch_begun_again_forgets_what_it_no_longer_tells(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    watching(
        door,
        (member_key("general", "bob"), roster("Bob", "other-door"), 4),
        (member_key("general", "carol"), roster("carol", "other-door"), 5),
    )
    old = door.roster.watching
    answered(door, Dropped(3), now=1.0)  # the loop fell behind the feed: the watch may have missed changes
    assert door.roster.watching == old and door.due() <= 2.0  # watched again, a little later
    door.tick(2.0)
    assert old not in bridge.watches and door.roster.watching in bridge.watches
    watching(door, (member_key("general", "carol"), roster("carol", "other-door"), 5), caught_up=False)
    answered(door, Changed(old, member_key("general", "zed"), roster("zed", "other-door"), 9))  # the old one's
    assert listed(door, A, "who")["users"] == ["alice", "Bob", "carol"]  # kept until the new one told all
    watching(door)
    assert listed(door, A, "who")["users"] == ["alice", "carol"]
    answered(door, Failed(door.roster.watching, "nats: connection closed"), now=5.0)  # the watch ended
    assert door.roster.watching is None and door.due() <= 6.0
    door.tick(6.0)
    assert door.roster.watching in bridge.watches


def test_the_roster_keeps_no_more_than_its_bytes(door: FrontDoor) -> None:
    value = roster("Bob", "other-door")
    size = len(member_key("general", "bob")) + len(value) + ENTRY_OVERHEAD
    core = ChatCore(ChatConfig(max_roster_bytes=2 * size), epoch="e", clustered=True)
    door = FrontDoor(zmq.Context.instance(), [], core, bridge=Bridge())  # type: ignore[arg-type]
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    watching(door, *[(member_key("general", name), roster(name, "other-door"), 1) for name in ("bob", "cat", "dan")])
    assert listed(door, A, "who")["users"] == ["alice", "bob", "cat"]
    assert door.roster.entry_bytes <= 2 * size
    watching(door, (member_key("general", "bob"), None, 2))  # one gone: room for dan, whom it refused
    assert door.due() == 0.0
    door.tick(1.0)  # watched again: every key told again, dan among them
    watching(door, *[(member_key("general", name), roster(name, "other-door"), 1) for name in ("cat", "dan")])
    assert listed(door, A, "who")["users"] == ["alice", "cat", "dan"]


def scan(door: FrontDoor, live: list[str], now: float) -> None:
    """One listing of the front doors' leases, answered with ``live``."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.tick(now)
    (token,) = [t for t, (bucket, _) in bridge.lists.items() if bucket == DOORS]
    del bridge.lists[token]
    answered(door, KvEntries(token, [(d, b"", 1) for d in live], None), now=now)


def test_a_dead_front_doors_members_are_struck_by_compare_and_set_then_told_gone(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = 1e9  # this test is about the roster
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    bridge.kvs.clear()
    watching(
        door,
        (member_key("general", "zed"), roster("Zed", "dead"), 7),
        (member_key("general", "sam"), roster("sam", "slow"), 8),
    )
    scan(door, ["dead", "slow"], 10.0)
    scan(door, ["dead", "slow"], 20.0)  # the second listing: a first sweep of the roster (nobody dead)
    scan(door, ["slow"], 30.0)  # "dead" missing once: only suspected (a renewal lost in an election)
    scan(door, ["dead", "slow"], 40.0)  # back: it was alive
    scan(door, ["slow"], 50.0)
    assert not bridge.kvs and listed(door, A, "who")["users"] == ["alice", "sam", "Zed"]
    scan(door, [], 60.0)  # "dead" missing twice in a row: dead; "slow" only suspected
    assert listed(door, A, "who")["users"] == ["alice", "sam"]  # no longer listed
    ((take_token, take),) = [(t, k) for t, k in bridge.kvs.items() if k[1] == MEMBERS]
    assert take == ("delete", MEMBERS, member_key("general", "zed"), b"", 7)  # only at the revision it saw
    scan(door, [], 62.0)  # "slow" is dead too; Zed, being struck, is not struck twice
    (slow,) = [k for t, k in bridge.kvs.items() if t != take_token]
    assert slow[:3] == ("delete", MEMBERS, member_key("general", "sam"))
    watching(door, (member_key("general", "zed"), None, 9))  # the watch tells the delete before its answer
    answered(door, KvResult(take_token, 1, None, None), now=60.0)
    ((subject, payload, msg_id),) = [p for p in bridge.published.values() if b'"leave"' in p[1]]
    leave = msgspec.json.decode(payload)
    assert subject == LOG_PREFIX + "general"
    assert (leave["type"], leave["user"], leave["reason"]) == ("leave", "Zed", "timeout")
    # Another front door telling the same gives the log the same id: stored once.
    other = FrontDoor(zmq.Context.instance(), [], ChatCore(ChatConfig(), epoch="e", clustered=True), bridge=Bridge())
    assert other.core.gone("general", "Zed", "dead", 61.0).log_id == msg_id


def test_the_first_sweep_waits_for_the_watch_to_tell_every_key(door: FrontDoor) -> None:
    """A front door starting finds the members of front doors that died while none ran, once it knows them all."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = 1e9  # this test is about the roster
    watching(door, caught_up=False)
    scan(door, ["live"], 10.0)
    scan(door, ["live"], 20.0)
    watching(door, (member_key("general", "old"), roster("old", "long-dead"), 3), caught_up=False)
    assert not bridge.kvs  # not every key told yet
    watching(door)
    ((_, take),) = bridge.kvs.items()
    assert take == ("delete", MEMBERS, member_key("general", "old"), b"", 3)


def test_a_sweep_that_loses_the_compare_and_set_tells_nothing(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = 1e9  # this test is about the roster
    watching(door, (member_key("general", "zed"), roster("Zed", "dead"), 7))
    for at in (10.0, 20.0, 30.0, 40.0):
        scan(door, ["dead"] if at < 30 else [], at)
    ((token, _),) = bridge.kvs.items()
    answered(door, KvResult(token, 0, None, "wrong_revision"))  # back on another door, or told by another
    assert not bridge.published


def only_kv(bridge: Bridge) -> tuple[int, tuple]:
    ((token, order),) = bridge.kvs.items()
    del bridge.kvs[token]
    return token, order


def test_a_name_is_taken_over_only_when_its_front_doors_lease_is_found_gone_twice(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = door.roster.next_door_scan = 1e9  # this test is about the claim
    door.core.handle(A, [msgspec.json.encode({"type": "hello", "user": "alice"})], 0.0)
    door.claim(Claim(A, "alice", False), 0.0)
    token, order = only_kv(bridge)
    assert order[0] == "create"
    answered(door, KvResult(token, 0, None, "exists"))
    token, order = only_kv(bridge)
    assert order[0] == "get"
    answered(door, KvResult(token, 9, b"other-door", None))
    token, order = only_kv(bridge)
    assert order[:3] == ("get", DOORS, "other-door")
    answered(door, KvResult(token, 0, None, "not_found"))  # a renewal lost in an election, perhaps
    assert not bridge.kvs
    door.tick(0.5)
    token, order = only_kv(bridge)
    assert order[:3] == ("get", DOORS, "other-door")  # looked at again
    answered(door, KvResult(token, 0, None, "not_found"))
    token, order = only_kv(bridge)
    assert order[0] == "update" and order[4] == 9  # gone twice: taken over at the revision it saw
    replies = answered(door, KvResult(token, 10, None, None))
    assert msgspec.json.decode(replies[0].payload)["type"] == "welcome"


def test_a_lease_renewal_that_failed_is_tried_again_soon(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.roster.next_door_scan = 1e9
    door.tick(10.0)
    token, order = only_kv(bridge)
    assert order[:3] == ("put", DOORS, door.door_id)
    door.tick(10.5)
    assert not bridge.kvs  # not due yet
    answered(door, KvResult(token, 0, None, "nats: timeout"), now=10.1)
    assert door.due() <= 10.35
    door.tick(10.35)
    token, order = only_kv(bridge)
    assert order[:3] == ("put", DOORS, door.door_id)


def test_a_roster_change_the_bucket_did_not_take_is_tried_again_the_newest_only(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = door.roster.next_door_scan = 1e9  # this test is about the roster
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    ((token, put),) = [(t, k) for t, k in bridge.kvs.items() if k[1] == MEMBERS]
    answered(door, KvResult(token, 0, None, "nats: timeout"), now=1.0)  # an election: not taken
    assert door.pending() >= 1 and door.due() <= 1.5
    ask(door, A, {"type": "away", "reason": "lunch"}, now=1.2)  # meanwhile
    ask(door, A, {"type": "away"}, now=1.3)
    bridge.kvs.clear()
    door.tick(1.5)
    ((token, again),) = bridge.kvs.items()
    assert again[:3] == put[:3] and msgspec.json.decode(again[3]) == {"user": "alice", "door": door.door_id}
    answered(door, KvResult(token, 4, None, None), now=1.6)
    assert not door.roster.changes  # the changes in between were not sent: the newest says it all


def test_going_away_and_back_is_told_to_the_roster_in_each_room(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general", "dev"]})
    for token in [t for t, k in bridge.kvs.items() if k[1] == MEMBERS]:
        answered(door, KvResult(token, 1, None, None))
    bridge.kvs.clear()
    ask(door, A, {"type": "away", "reason": "lunch"})
    puts = {k[2]: msgspec.json.decode(k[3]) for k in bridge.kvs.values() if k[1] == MEMBERS}
    assert puts == {
        member_key(room, "alice"): {"user": "alice", "door": door.door_id, "away": "lunch"}
        for room in ("general", "dev")
    }


# --- a join's recent past, read backwards ----------------------------------------------------------------


class Recalled:
    """Stands in for the core: what a backward read found (room, joins waiting, events)."""

    def __init__(self, config: ChatConfig | None = None) -> None:
        self.config = config or ChatConfig()
        self.calls: list[tuple[str, list[bytes], list[tuple[int, int, bytes]]]] = []

    def recent_read(self, room: str, peers: list[bytes], events: list[tuple[int, int, bytes]], topic=None) -> list:
        self.calls.append((room, list(peers), events))
        self.topic = topic
        return []


def read_back(
    stream: list[str], below: int, limit: int, span: int, config: ChatConfig | None = None
) -> tuple[list[tuple[int, int]], int]:
    """A backward read of general's newest ``limit`` events at or before ``below``, over a stream whose
    position ``i + 1`` holds an event of ``stream[i]``; returns (seq, prev) of what it found, and its steps."""
    bridge, core = Bridge(), Recalled(config)
    reads = LogReads(bridge, core)  # type: ignore[arg-type]
    reads.recent(ReadRecent(A, "general", below, limit, span))
    steps = 0
    while bridge.steps:
        ((token, (subject, after)),) = bridge.steps.items()
        del bridge.steps[token]
        steps += 1
        room = subject[len(LOG_PREFIX) :]
        if after < 0:  # the newest
            seq = next((i + 1 for i in reversed(range(len(stream))) if stream[i] == room), None)
        else:
            seq = next((i + 1 for i in range(after, len(stream)) if stream[i] == room), None)
        reads.answered(Stored(token, seq, subject, event(room)) if seq else Failed(token, "not_found"), 0.0)
    ((room, peers, events),) = core.calls
    assert (room, peers) == ("general", [A]) and not reads.recents
    return [(seq, prev) for seq, prev, _ in events], steps


def chain(stream: list[str], below: int) -> list[tuple[int, int]]:
    """General's events at or before ``below``: (seq, prev)."""
    seqs = [i + 1 for i, room in enumerate(stream) if room == "general" and i + 1 <= below]
    return list(zip(seqs, [0, *seqs][: len(seqs)], strict=True))


def test_a_joins_recent_past_is_read_back_whole_from_a_busy_stream_and_a_quiet_room() -> None:
    busy = ["general" if i % 7 == 0 else "dev" for i in range(3_000)]  # one event in 7 is general's
    below = max(i + 1 for i, room in enumerate(busy) if room == "general")
    found, steps = read_back(busy, below, 50, span=100)  # a first guess far too short
    assert found == chain(busy, below)[-50:] and steps <= RECENT_STEPS_PER_EVENT * 51 + 16
    quiet = ["general"] * 10 + ["dev"] * 5_000 + ["general"]  # its past long before its last event
    found, _ = read_back(quiet, len(quiet), 50, span=100)
    assert found == chain(quiet, len(quiet))  # all 11, the first with prev 0


def test_a_backward_read_holds_no_more_than_a_reply() -> None:
    stream = ["general", "dev"] * 200
    found, _ = read_back(stream, len(stream) - 1, 50, span=400, config=ChatConfig(max_reply_bytes=1024))
    assert found == chain(stream, len(stream) - 1)[-len(found) :]
    assert len(found) * len(event("general")) <= 1024 < (len(found) + 2) * len(event("general"))


@given(
    stream=st.lists(st.sampled_from(["general", "dev", "quiet"]), min_size=1, max_size=600),
    cut=st.integers(0, 599),
    limit=st.integers(1, 60),
    span=st.integers(1, 800),
)
@settings(max_examples=200, deadline=None)
def test_a_backward_read_finds_the_newest_events_in_order_each_with_its_true_prev(
    stream: list[str], cut: int, limit: int, span: int
) -> None:
    below = min(cut + 1, len(stream))
    truth = chain(stream, below)
    found, steps = read_back(stream, below, limit, span)
    assert found == truth[len(truth) - len(found) :]  # the newest, none missing between, true prevs
    assert len(found) <= limit and steps <= RECENT_STEPS_PER_EVENT * (limit + 1) + 16 + 1
    if steps <= RECENT_STEPS_PER_EVENT * (limit + 1):  # it stopped by itself, not at its bound of steps
        assert len(found) == min(limit, len(truth))


def test_joins_of_a_room_meanwhile_wait_for_the_same_read() -> None:
    bridge, core = Bridge(), Recalled()
    reads = LogReads(bridge, core)  # type: ignore[arg-type]
    reads.recent(ReadRecent(A, "general", 9, 5, 10))
    reads.recent(ReadRecent(B, "general", 9, 5, 10))
    assert len(bridge.steps) == 1
    while bridge.steps:  # nothing there (a stream cut short): probes further back, each finding nothing
        ((token, _),) = bridge.steps.items()
        del bridge.steps[token]
        reads.answered(Failed(token, "not_found"), 0.0)
    assert core.calls == [("general", [A, B], [])]


def test_a_busy_room_among_many_quiet_ones_is_read_back_whole() -> None:
    """The attack: 100 quiet rooms known and one busy room; a first guess from the count of rooms walked the
    busy room's every event in it, ran out of steps, and the first joins showed nothing."""
    quiet = [f"quiet{i}" for i in range(100) for _ in range(3)]
    stream = quiet + ["general" if i % 2 else "dev" for i in range(800)]
    below = len(stream)
    found, steps = read_back(stream, below, 50, span=2 * 51)  # the core's guess with nothing in memory
    assert found == chain(stream, below)[-50:] and steps <= RECENT_STEPS_PER_EVENT * 51 + 16


def test_the_deletes_a_front_door_made_are_cleared_from_the_bucket_a_little_later(door: FrontDoor) -> None:
    """The attack: every (room, name) ever used left a delete marker, and every watch replayed them all."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = door.roster.next_door_scan = 1e9  # this test is about the roster
    mine, theirs = member_key("general", "alice"), member_key("general", "bob")
    watching(door, (mine, roster("alice", door.door_id), 3), (theirs, roster("bob", "other-door"), 4))
    door.roster.changed(Changed(door.roster.watching, mine, None, 7), 100.0)  # alice left here
    door.roster.changed(Changed(door.roster.watching, theirs, None, 8), 100.0)  # bob, on the other door
    door.tick(105.0)
    assert not bridge.purged  # not at once: a watch lagging behind would miss the delete
    door.tick(100.0 + 10.0)
    assert bridge.purged == [(MEMBERS, mine, 7)]  # only its own: the other front door clears bob's


def test_a_join_goes_to_the_log_only_once_the_roster_has_the_member(door: FrontDoor) -> None:
    """The attack: a front door killed between a join reaching the log and the roster's write left a member
    nobody ever told gone (no roster key: no sweep finds them)."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = door.roster.next_door_scan = 1e9  # this test is about the roster
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    ask(door, A, {"type": "msg", "room": "general", "text": "hi", "id": "m1"})
    assert not bridge.published  # the join waits for the roster, the msg behind it
    (token,) = [t for t, k in bridge.kvs.items() if k[1] == MEMBERS]
    answered(door, KvResult(token, 0, None, "nats: timeout"), now=1.0)  # not taken: tried again
    assert not bridge.published
    door.tick(1.5)
    ((token, _),) = [(t, k) for t, k in bridge.kvs.items() if k[1] == MEMBERS and t != token]
    answered(door, KvResult(token, 3, None, None), now=1.6)
    (join,) = bridge.published.values()  # now the join (and, once the log has it, the msg)
    assert msgspec.json.decode(join[1])["type"] == "join"


def test_a_room_the_front_door_knows_nothing_of_is_read_back_from_the_logs_newest() -> None:
    """The attack: a join just after a front door started, before its listing of the log's rooms came, showed
    the room empty at seq 0."""
    stream = ["general" if i % 3 == 0 else "dev" for i in range(300)]
    found, _ = read_back(stream, UNKNOWN, 20, span=40)
    assert found == chain(stream, len(stream))[-20:]
    assert read_back(["dev"] * 5, UNKNOWN, 20, span=40)[0] == []  # a new room: nothing


def test_a_join_of_a_room_whose_topic_this_front_door_never_saw_looks_it_up_once(door: FrontDoor) -> None:
    """A front door started since the topic was set, longer ago than the recent past a join shows."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = door.roster.next_door_scan = 1e9  # this test is about the topic
    door.core.learned({"general": 40})
    topic = msgspec.json.encode({"type": "topic", "room": "general", "user": "x", "topic": "plans", "seq": 0})
    topic = topic.replace(b'"seq":0', b'"seq":0,"prev":0')  # as the log stores an event

    def join() -> list[ReadRecent]:
        return [o for o in door.core.handle(A, [b'{"type":"join","room":"general"}'], 0.0) if isinstance(o, ReadRecent)]

    ask(door, A, {"type": "hello", "user": "alice", "rooms": []})
    (read,) = join()
    assert read.topic
    door.reads.recent(read)
    (token,) = [t for t, k in bridge.kvs.items() if k[1] == TOPICS]
    while bridge.steps:  # the log's events: none (for this test)
        ((step, _),) = bridge.steps.items()
        del bridge.steps[step]
        door.reads.answered(Failed(step, "not_found"), 0.0)
    (joined,) = replies(door.reads.answered(KvResult(token, 3, b"12 " + topic, None), 0.0))
    assert joined["topic"] == "plans" and door.core.rooms["general"].topic_seq == 12
    assert [r.topic for r in join()] == [False]  # looked up once


def test_a_topic_the_log_took_is_copied_for_the_front_doors_that_start_later(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.next_renewal = door.roster.next_door_scan = 1e9  # this test is about the topic
    ask(door, A, {"type": "hello", "user": "alice", "rooms": ["general"]})
    for token in [t for t, k in bridge.kvs.items() if k[1] == MEMBERS]:  # the roster has her: her join goes
        answered(door, KvResult(token, 1, None, None))
    ((token, _),) = bridge.published.items()
    answered(door, Acked(token, 11, False))  # her join
    ask(door, A, {"type": "topic", "room": "general", "topic": "plans", "id": "t1"})
    ((token, (_, payload, _)),) = [(t, p) for t, p in bridge.published.items() if b'"topic"' in p[1]]
    answered(door, Acked(token, 12, False))
    (copy,) = [k for k in bridge.kvs.values() if k[1] == TOPICS]
    assert copy[:4] == ("put", TOPICS, name_key("general"), b"12 " + payload)
