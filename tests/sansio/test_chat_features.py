"""Room topics, nick changes and away status in the chat core and the client session (no sockets)."""

from __future__ import annotations

import msgspec
from test_chat import A, B, C, hello, make, publishes, replies, say, send

import messages as m
from chat import ChatCore
from session import ClientSession
from store import SqliteStore

DEV = b"room/dev/"


def topic(core: ChatCore, peer: bytes, text: str, room: str = "general", msg_id: str = "t1") -> list:
    return send(core, peer, {"type": "topic", "room": room, "topic": text, "id": msg_id})


# --- topic ------------------------------------------------------------------------------------


def test_topic_is_a_room_event_acked_with_its_seq() -> None:
    core = make()
    hello(core, A, "alice")
    out = topic(core, A, "release on Friday")
    [event] = publishes(out)
    assert event | {"ts": 0} == {
        "type": "topic",
        "room": "general",
        "user": "alice",
        "topic": "release on Friday",
        "seq": 2,
        "prev": 1,
        "ts": 0,
    }
    assert replies(out, A) == [{"type": "ack", "id": "t1", "room": "general", "seq": 2}]


def test_joined_carries_the_topic_and_who_joins_later_sees_it() -> None:
    core = make()
    hello(core, A, "alice")
    topic(core, A, "plans")
    joined = replies(hello(core, B, "bob"), B)[1]
    assert joined["topic"] == "plans"


def test_the_same_topic_again_publishes_nothing_and_acks_the_first_seq() -> None:
    core = make()
    hello(core, A, "alice")
    first = replies(topic(core, A, "plans"))[0]
    out = topic(core, A, "plans", msg_id="t2")
    assert publishes(out) == []
    assert replies(out) == [{"type": "ack", "id": "t2", "room": "general", "seq": first["seq"]}]


def test_an_empty_topic_clears_it() -> None:
    core = make()
    hello(core, A, "alice")
    topic(core, A, "plans")
    topic(core, A, "", msg_id="t2")
    assert "topic" not in replies(hello(core, B, "bob"), B)[1]


def test_topic_outside_the_room_or_too_long_is_refused_with_the_id() -> None:
    core = make()
    hello(core, A, "alice")
    [refused] = replies(topic(core, A, "x", room="dev"))
    assert (refused["code"], refused["id"]) == ("not_in_room", "t1")
    [refused] = replies(topic(core, A, "x" * (m.MAX_TOPIC_CHARS + 1)))
    assert (refused["code"], refused["id"]) == ("too_large", "t1")


def test_the_topic_survives_a_restart_and_a_room_put_to_rest(tmp_path: object) -> None:
    path = f"{tmp_path}/chat.db"
    core = ChatCore(store=SqliteStore(path))
    hello(core, A, "alice", rooms=["dev"])
    topic(core, A, "kept", room="dev")
    say(core, A, "after the topic", room="dev")
    core.commit()
    core.store.close()
    again = ChatCore(store=SqliteStore(path))
    joined = replies(hello(again, B, "bob", rooms=["dev"]), B)[1]
    assert joined["topic"] == "kept"
    history = replies(send(again, B, {"type": "history", "room": "dev"}), B)[0]
    assert [e["type"] for e in history["events"]] == ["join", "topic", "msg", "join"]
    again.store.close()


# --- nick ---------------------------------------------------------------------------------------


def test_nick_renames_the_session_in_each_room_and_frees_the_old_name() -> None:
    core = make()
    hello(core, A, "alice", rooms=["general", "dev"])
    out = send(core, A, {"type": "nick", "name": "alicia", "id": "n1"})
    assert replies(out, A) == [{"type": "renamed", "user": "alicia", "was": "alice", "id": "n1"}]
    assert [(e["type"], e["room"], e["user"], e["name"]) for e in publishes(out)] == [
        ("nick", "general", "alice", "alicia"),
        ("nick", "dev", "alice", "alicia"),
    ]
    assert replies(send(core, A, {"type": "who", "room": "dev"}))[0]["users"] == ["alicia"]
    assert replies(hello(core, B, "alice"), B)[0]["type"] == "welcome"  # the old name is free
    [event] = publishes(say(core, A, "hi"))
    assert event["user"] == "alicia"


def test_nick_to_a_taken_name_is_refused_and_changes_nothing() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    out = send(core, A, {"type": "nick", "name": "BOB", "id": "n1"})
    assert [(r["code"], r["id"]) for r in replies(out)] == [("name_taken", "n1")]
    assert publishes(out) == []
    assert replies(send(core, B, {"type": "who", "room": "general"}))[0]["users"] == ["alice", "bob"]


def test_nick_to_the_same_name_or_its_case_is_answered_and_harmless() -> None:
    core = make()
    hello(core, A, "alice")
    assert publishes(send(core, A, {"type": "nick", "name": "alice"})) == []
    out = send(core, A, {"type": "nick", "name": "Alice"})
    assert replies(out) == [{"type": "renamed", "user": "Alice", "was": "alice"}]


def test_a_resend_after_a_nick_is_still_recognised() -> None:
    core = make()
    hello(core, A, "alice")
    first = replies(say(core, A, "once"))[0]
    send(core, A, {"type": "nick", "name": "alicia"})
    out = say(core, A, "once")  # the same id: its ack was lost
    assert publishes(out) == [] and replies(out) == [first]


def test_nick_to_a_reserved_name_is_refused() -> None:
    core = make()
    hello(core, A, "alice")
    [refused] = replies(send(core, A, {"type": "nick", "name": "admin", "id": "n1"}))
    assert refused["code"] == "bad_name"


# --- away ---------------------------------------------------------------------------------------


def test_away_shows_in_who_joined_and_a_dms_ack_until_back() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    assert replies(send(core, A, {"type": "away", "reason": "lunch", "id": "a1"})) == [
        {"type": "away", "reason": "lunch", "id": "a1"}
    ]
    assert replies(send(core, B, {"type": "who", "room": "general"}))[0]["away"] == {"alice": "lunch"}
    assert replies(hello(core, C, "carol"), C)[1]["away"] == {"alice": "lunch"}
    ack = replies(send(core, B, {"type": "dm", "to": "alice", "text": "psst", "id": "d1"}), B)[0]
    assert ack == {"type": "ack", "id": "d1", "to": "alice", "away": "lunch"}
    send(core, A, {"type": "away"})
    assert "away" not in replies(send(core, C, {"type": "who", "room": "general"}))[0]


def test_away_follows_a_nick_and_ends_with_the_session() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    send(core, A, {"type": "away", "reason": "out"})
    send(core, A, {"type": "nick", "name": "alicia"})
    assert replies(send(core, B, {"type": "who", "room": "general"}))[0]["away"] == {"alicia": "out"}
    send(core, A, {"type": "bye"})
    assert core.away == {}


# --- the client session ----------------------------------------------------------------------


def welcomed(name: str = "alice") -> ClientSession:
    session = ClientSession(name, 0.0)
    session.outbox.clear()
    session.reply(m.encode(m.Welcome(user=name, epoch="e1")), 0.0)
    session.take_events()
    return session


def test_the_session_follows_its_new_name_into_the_next_hello() -> None:
    session = welcomed()
    session.nick("alicia", 0.0)
    request = msgspec.json.decode(session.outbox.popleft())
    assert request["type"] == "nick" and request["name"] == "alicia"
    session.reply(m.encode(m.Renamed(user="alicia", was="alice", id=request["id"])), 0.1)
    assert (session.name, session.user) == ("alicia", "alicia")
    session.reply(m.encode({"type": "pong", "epoch": "e2", "session": False}), 0.2)  # a new broker run
    hellos = [msgspec.json.decode(f) for f in session.outbox]
    assert any(h["type"] == "hello" and h["user"] == "alicia" for h in hellos)


def test_the_session_says_away_again_after_a_broker_restart() -> None:
    session = welcomed()
    session.away("lunch", 0.0)
    request = msgspec.json.decode(session.outbox.popleft())
    session.reply(m.encode({"type": "away", "reason": "lunch", "id": request["id"]}), 0.1)
    assert session.away_reason == "lunch"
    session.reply(m.encode({"type": "pong", "epoch": "e2", "session": False}), 0.2)
    session.outbox.clear()
    session.reply(m.encode(m.Welcome(user="alice", epoch="e2")), 0.3)
    sent = [msgspec.json.decode(f) for f in session.outbox]
    assert {"type": "away", "reason": "lunch"} in [{k: v for k, v in s.items() if k != "id"} for s in sent]


def test_a_resend_after_a_nick_is_recognised_by_the_next_broker_run(tmp_path: object) -> None:
    path = f"{tmp_path}/chat.db"
    core = ChatCore(store=SqliteStore(path))
    hello(core, A, "alice", rooms=["general", "dev"])
    first = replies(say(core, A, "once", room="dev"))[0]  # its ack is lost on the way
    send(core, A, {"type": "nick", "name": "alicia"})
    core.commit()
    core.store.close()
    again = ChatCore(store=SqliteStore(path))
    hello(again, A, "alicia", rooms=["general", "dev"], resume=True)
    out = say(again, A, "once", room="dev")
    assert publishes(out) == [] and replies(out) == [first]
    again.store.close()


def test_nick_to_a_name_bound_to_another_curve_key_is_refused() -> None:
    core = ChatCore(epoch="e", bindings={"KEY-A": None, "KEY-B": "bob"})
    core.handle(A, [msgspec.json.encode({"type": "hello", "user": "alice"})], 0.0, key="KEY-A")
    out = core.handle(A, [msgspec.json.encode({"type": "nick", "name": "Bob", "id": "n1"})], 0.0, key="KEY-A")
    assert [(r["code"], r["id"]) for r in replies(out)] == [("name_reserved", "n1")]
    out = core.handle(A, [msgspec.json.encode({"type": "nick", "name": "carol"})], 0.0, key="KEY-A")
    assert replies(out)[0]["type"] == "renamed"  # an unbound key may take any free name


def test_a_nick_costs_a_token_per_room_it_is_announced_in() -> None:
    core = make(rate_limit=1.0, rate_burst=40.0, source_rate=0.0)
    rooms = [f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION)]
    hello(core, A, "alice", rooms=rooms)
    first = send(core, A, {"type": "nick", "name": "alice2"})
    assert len(publishes(first)) == len(rooms)
    again = replies(send(core, A, {"type": "nick", "name": "alice3", "id": "n2"}))
    assert [(r["type"], r.get("code")) for r in again] == [("error", "rate_limited")]  # 32 events were 32 requests


def test_the_away_list_in_a_reply_is_bounded_in_bytes() -> None:
    core = make(max_reply_bytes=2048, rate_limit=0.0, source_rate=0.0)
    for i in range(40):
        peer = f"peer-{i}".encode()
        hello(core, peer, f"user{i}")
        send(core, peer, {"type": "away", "reason": "x" * m.MAX_AWAY_CHARS})
    who = replies(send(core, b"peer-0", {"type": "who", "room": "general"}))[0]
    assert len(who["users"]) == 40 and 0 < len(who["away"]) < 40
    assert sum(len(k) + len(v) for k, v in who["away"].items()) <= 2048
