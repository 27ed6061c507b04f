"""ChatCore, the sans-I/O chat logic, driven with explicit times: no sockets, no sleeping."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply

A, B, C = b"peer-a", b"peer-b", b"peer-c"
GENERAL = b"room/general/"


def make(now: float = 0.0, **config: Any) -> ChatCore:
    return ChatCore(ChatConfig(**config), epoch="epoch-1", now=now)


def send(core: ChatCore, peer: bytes, env: dict, now: float = 0.0) -> list[Reply | Publish]:
    return core.handle(peer, [msgspec.json.encode(env)], now)


def replies(out: list, peer: bytes | None = None) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, Reply) and (peer is None or o.peer == peer)]


def publishes(out: list, topic: bytes | None = None) -> list[dict]:
    """What was published (on ``topic``), but the rooms' ``head`` frames: those are not events."""
    envs = [
        msgspec.json.decode(o.payload) for o in out if isinstance(o, Publish) and (topic is None or o.topic == topic)
    ]
    return [env for env in envs if env["type"] != "head"]


def types(out: list) -> list[str]:
    return [msgspec.json.decode(o.payload)["type"] for o in out]


def hello(core: ChatCore, peer: bytes, user: str, now: float = 0.0, **extra: Any) -> list[Reply | Publish]:
    return send(core, peer, {"type": "hello", "user": user, **extra}, now)


def say(core: ChatCore, peer: bytes, text: str = "hi", room: str = "general", now: float = 0.0, **extra: Any) -> list:
    return send(core, peer, {"type": "msg", "room": room, "text": text, "id": f"id-{text}", **extra}, now)


def only_error(out: list) -> dict:
    assert len(out) == 1
    assert isinstance(out[0], Reply)
    reply = msgspec.json.decode(out[0].payload)
    assert reply["type"] == "error"
    return reply


# --- hello --------------------------------------------------------------------------------


def test_hello_replies_welcome_then_joined() -> None:
    out = hello(make(), A, "alice")
    assert [r["type"] for r in replies(out, A)] == ["welcome", "joined"]


def test_welcome_carries_session_parameters() -> None:
    core = make(heartbeat=2.0, session_timeout=7.0)
    welcome = replies(hello(core, A, "alice"))[0]
    assert welcome == {
        "history_id": core.store.history_id,
        "type": "welcome",
        "user": "alice",
        "rooms": ["general"],
        "epoch": "epoch-1",
        "heartbeat": 2.0,
        "session_timeout": 7.0,
        "protocol": m.PROTOCOL_VERSION,
    }


def test_hello_publishes_join_on_the_general_topic() -> None:
    out = hello(make(), A, "alice", now=3.5)
    pubs = [o for o in out if isinstance(o, Publish)]
    assert [p.topic for p in pubs] == [GENERAL]
    assert msgspec.json.decode(pubs[0].payload) == {
        "type": "join",
        "room": "general",
        "user": "alice",
        "seq": 1,
        "prev": 0,
        "ts": 3.5,
    }


def test_joined_lists_users_and_seq() -> None:
    core = make()
    hello(core, A, "bob")
    joined = replies(hello(core, B, "alice"), B)[1]
    assert joined["room"] == "general"
    assert joined["users"] == ["alice", "bob"]
    assert joined["seq"] == 2


def test_hello_with_rooms_joins_each_room() -> None:
    out = hello(make(), A, "alice", rooms=["dev", "ops"])
    assert [r["room"] for r in replies(out) if r["type"] == "joined"] == ["dev", "ops"]
    assert [o.topic for o in out if isinstance(o, Publish)] == [b"room/dev/", b"room/ops/"]


def test_hello_with_no_rooms_joins_nothing() -> None:
    core = make()
    out = hello(core, A, "alice", rooms=[])
    assert types(out) == ["welcome"]
    assert core.sessions[A].rooms == {}


def test_name_taken_by_another_peer() -> None:
    core = make()
    hello(core, A, "alice")
    assert only_error(hello(core, B, "alice"))["code"] == "name_taken"


def test_name_taken_is_case_insensitive() -> None:
    core = make()
    hello(core, A, "alice")
    assert only_error(hello(core, B, "ALICE"))["code"] == "name_taken"


def test_name_taken_leaves_no_session() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "Alice")
    assert B not in core.sessions


def test_name_is_free_again_after_bye() -> None:
    core = make()
    hello(core, A, "alice")
    send(core, A, {"type": "bye"})
    assert replies(hello(core, B, "Alice"))[0]["type"] == "welcome"


def test_name_is_free_again_after_timeout() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice", now=0.0)
    core.tick(10.0)
    assert replies(hello(core, B, "alice", now=10.0))[0]["type"] == "welcome"


def test_repeated_hello_from_same_peer_is_harmless() -> None:
    core = make()
    hello(core, A, "alice")
    out = hello(core, A, "alice", now=1.0)
    assert [r["type"] for r in replies(out, A)] == ["welcome", "joined"]
    assert publishes(out) == []  # already in the room: no second join
    assert list(core.sessions) == [A]
    assert core.rooms["general"].users == ["alice"]


def test_repeated_hello_in_other_case_keeps_the_original_name() -> None:
    core = make()
    hello(core, A, "alice")
    assert replies(hello(core, A, "ALICE"))[0]["user"] == "alice"


def test_hello_under_another_name_is_session_exists() -> None:
    core = make()
    hello(core, A, "alice")
    assert only_error(hello(core, A, "bob"))["code"] == "session_exists"
    assert core.sessions[A].user == "alice"
    assert "bob" not in core.by_name


# --- requests that need a session ---------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"type": "join", "room": "dev"},
        {"type": "leave", "room": "general"},
        {"type": "msg", "room": "general", "text": "hi", "id": "1"},
        {"type": "dm", "to": "bob", "text": "hi", "id": "1"},
        {"type": "who", "room": "general"},
    ],
    ids=lambda e: e["type"],
)
def test_request_without_session_is_no_session(env: dict) -> None:
    assert only_error(send(make(), A, env))["code"] == "no_session"


def test_no_session_error_echoes_the_id() -> None:
    assert only_error(say(make(), A, "x"))["id"] == "id-x"


def test_bad_request_is_an_error_reply_to_the_sender() -> None:
    out = make().handle(A, [b"not json"], 0.0)
    assert out[0].peer == A
    assert only_error(out)["code"] == "bad_json"


# --- msg ----------------------------------------------------------------------------------


def test_msg_is_published_on_the_room_topic() -> None:
    core = make()
    hello(core, A, "alice")
    out = say(core, A, "hello", now=2.0)
    pubs = [o for o in out if isinstance(o, Publish)]
    assert [p.topic for p in pubs] == [GENERAL]
    assert msgspec.json.decode(pubs[0].payload) == {
        "type": "msg",
        "room": "general",
        "user": "alice",
        "text": "hello",
        "id": "id-hello",
        "seq": 2,
        "prev": 1,
        "ts": 2.0,
    }


def test_msg_is_acked_with_id_room_and_seq() -> None:
    core = make()
    hello(core, A, "alice")
    assert replies(say(core, A, "hello"), A) == [{"type": "ack", "id": "id-hello", "room": "general", "seq": 2}]


def test_msg_seq_increments_by_one_per_room() -> None:
    core = make()
    hello(core, A, "alice", rooms=["general", "dev"])  # join general=1, dev=1
    seqs = {"general": [], "dev": []}
    for i, room in enumerate(["general", "dev", "general", "general", "dev"]):
        for event in publishes(say(core, A, f"m{i}", room=room)):
            seqs[event["room"]].append(event["seq"])
    assert seqs == {"general": [2, 3, 4], "dev": [2, 3]}


def test_msg_seq_counts_joins_and_leaves_too() -> None:
    core = make()
    hello(core, A, "alice")  # 1
    hello(core, B, "bob")  # 2
    send(core, B, {"type": "bye"})  # 3
    assert publishes(say(core, A))[0]["seq"] == 4


def test_msg_user_is_the_session_name_not_the_envelope_user() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    event = publishes(say(core, A, "i am bob", user="bob"))[0]
    assert event["user"] == "alice"


def test_msg_with_me_marks_the_event() -> None:
    core = make()
    hello(core, A, "alice")
    assert publishes(say(core, A, "waves", me=True))[0]["me"] is True


def test_msg_without_me_has_no_me_field() -> None:
    core = make()
    hello(core, A, "alice")
    assert "me" not in publishes(say(core, A, "hi", me=False))[0]


def test_msg_to_a_room_not_joined_is_not_in_room_with_id() -> None:
    core = make()
    hello(core, A, "alice")
    error = only_error(say(core, A, "x", room="dev"))
    assert error["code"] == "not_in_room"
    assert error["id"] == "id-x"


# --- dm -----------------------------------------------------------------------------------


def test_dm_goes_to_the_target_peer_and_acks_the_sender() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    out = send(core, A, {"type": "dm", "to": "bob", "text": "psst", "id": "d1"}, now=4.0)
    assert replies(out, B) == [{"type": "dm", "user": "alice", "to": "bob", "text": "psst", "id": "d1", "ts": 4.0}]
    assert replies(out, A) == [{"type": "ack", "id": "d1", "to": "bob"}]


def test_a_resent_dm_gets_the_same_ack_and_is_not_delivered_again() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    dm = {"type": "dm", "to": "bob", "text": "psst", "id": "d1"}
    first = send(core, A, dm)
    again = send(core, A, dm)
    assert replies(again, A) == replies(first, A) == [{"type": "ack", "id": "d1", "to": "bob"}]
    assert replies(again, B) == []


def test_a_resent_me_msg_gets_the_same_ack_and_is_not_published_again() -> None:
    core = make()
    hello(core, A, "alice")
    first = say(core, A, "waves", me=True)
    again = say(core, A, "waves", me=True)
    assert replies(again, A) == replies(first, A) == [{"type": "ack", "id": "id-waves", "room": "general", "seq": 2}]
    assert publishes(again) == []


def test_dm_is_never_published() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    out = send(core, A, {"type": "dm", "to": "bob", "text": "psst", "id": "d1", "me": True})
    assert not any(isinstance(o, Publish) for o in out)
    assert all(
        event["type"] != "dm" for room in core.rooms.values() for event in map(msgspec.json.decode, room.history)
    )


def test_dm_target_name_is_case_insensitive_and_normalised() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "Bob")
    out = send(core, A, {"type": "dm", "to": "BOB", "text": "psst", "id": "d1"})
    assert replies(out, B)[0]["to"] == "Bob"
    assert replies(out, A)[0]["to"] == "Bob"


def test_dm_with_me_marks_the_event() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    assert replies(send(core, A, {"type": "dm", "to": "bob", "text": "nods", "id": "d", "me": True}), B)[0]["me"]


def test_dm_to_nobody_is_no_such_user_with_id() -> None:
    core = make()
    hello(core, A, "alice")
    error = only_error(send(core, A, {"type": "dm", "to": "ghost", "text": "hi", "id": "d9"}))
    assert error["code"] == "no_such_user"
    assert error["id"] == "d9"


def test_dm_to_a_user_who_left_is_no_such_user() -> None:
    core = make()
    hello(core, A, "alice")
    hello(core, B, "bob")
    send(core, B, {"type": "bye"})
    assert only_error(send(core, A, {"type": "dm", "to": "bob", "text": "hi", "id": "d"}))["code"] == "no_such_user"


# --- who, join, leave, bye, timeout -------------------------------------------------------


def test_who_lists_room_members_sorted_case_insensitively() -> None:
    core = make()
    for peer, name in ((A, "carol"), (B, "Bob"), (C, "alice")):
        hello(core, peer, name)
    assert replies(send(core, A, {"type": "who", "room": "general"})) == [
        {"type": "who", "room": "general", "users": ["alice", "Bob", "carol"]}
    ]


def test_who_for_unknown_room_is_empty() -> None:
    core = make()
    hello(core, A, "alice")
    assert replies(send(core, A, {"type": "who", "room": "nowhere"}))[0]["users"] == []


def test_join_publishes_join_and_replies_joined() -> None:
    core = make()
    hello(core, A, "alice")
    out = send(core, A, {"type": "join", "room": "dev"})
    assert publishes(out, b"room/dev/") == [
        {"type": "join", "room": "dev", "user": "alice", "seq": 1, "prev": 0, "ts": 0.0}
    ]
    assert replies(out, A)[0]["type"] == "joined"


def test_join_of_a_room_already_in_only_replies_joined() -> None:
    core = make()
    hello(core, A, "alice")
    out = send(core, A, {"type": "join", "room": "general"})
    assert types(out) == ["joined"]


def test_leave_replies_left_and_publishes_leave_reason_left() -> None:
    core = make()
    hello(core, A, "alice")
    out = send(core, A, {"type": "leave", "room": "general"}, now=1.0)
    assert publishes(out, GENERAL) == [
        {"type": "leave", "room": "general", "user": "alice", "reason": "left", "seq": 2, "prev": 1, "ts": 1.0}
    ]
    assert replies(out, A) == [{"type": "left", "room": "general"}]
    assert core.sessions[A].rooms == {}
    assert core.rooms["general"].users == []


def test_leave_a_room_not_in_is_not_in_room() -> None:
    core = make()
    hello(core, A, "alice")
    assert only_error(send(core, A, {"type": "leave", "room": "dev"}))["code"] == "not_in_room"


def test_bye_publishes_leave_reason_quit_in_every_room() -> None:
    core = make()
    hello(core, A, "alice", rooms=["general", "dev"])
    out = send(core, A, {"type": "bye"})
    assert [(o.topic, msgspec.json.decode(o.payload)["reason"]) for o in out] == [
        (GENERAL, "quit"),
        (b"room/dev/", "quit"),
    ]
    assert A not in core.sessions
    assert "alice" not in core.by_name


def test_bye_without_session_does_nothing() -> None:
    assert make().handle(A, [b'{"type": "bye"}'], 0.0) == []


def test_tick_after_session_timeout_ends_the_session_reason_timeout() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice", now=0.0)
    core.tick(0.0)
    out = core.tick(5.5)
    assert [e["reason"] for e in publishes(out, GENERAL)] == ["timeout"]
    assert publishes(out, GENERAL)[0]["user"] == "alice"
    assert A not in core.sessions
    assert core.rooms["general"].users == []


def test_tick_at_exactly_the_timeout_keeps_the_session() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice", now=0.0)
    core.tick(5.0)
    assert A in core.sessions


def test_timed_out_peer_is_told_no_session() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice", now=0.0)
    core.tick(6.0)
    assert only_error(say(core, A, now=6.0))["code"] == "no_session"


def test_ping_keeps_a_session_alive() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice", now=0.0)
    for t in range(1, 20):
        send(core, A, {"type": "ping"}, now=float(t))
        assert publishes(core.tick(t + 0.5), GENERAL) == []
    assert A in core.sessions


def test_any_request_keeps_a_session_alive() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice", now=0.0)
    send(core, A, {"type": "who", "room": "general"}, now=4.0)
    core.tick(8.0)
    assert A in core.sessions


def test_ping_replies_pong_with_session_flag() -> None:
    core = make()
    assert replies(send(core, A, {"type": "ping"})) == [{"type": "pong", "epoch": "epoch-1", "session": False}]
    hello(core, A, "alice")
    assert replies(send(core, A, {"type": "ping"}))[0]["session"] is True


# --- heartbeat ----------------------------------------------------------------------------


def heartbeats(out: list) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, Publish) and o.topic == m.SYS_TOPIC]


def test_first_tick_publishes_a_heartbeat_on_sys() -> None:
    assert heartbeats(make().tick(0.0)) == [{"type": "heartbeat", "epoch": "epoch-1", "ts": 0.0}]


def test_heartbeat_once_per_interval() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    times = [0.0, 0.3, 0.6, 0.99, 1.0, 1.5, 2.0, 2.2, 3.1]
    beats = [t for t in times if heartbeats(core.tick(t))]
    assert beats == [0.0, 1.0, 2.0, 3.1]


def test_heartbeat_interval_follows_config() -> None:
    core = make(heartbeat=0.25, session_timeout=1.0)
    beats = [t / 10 for t in range(0, 11) if heartbeats(core.tick(t / 10))]
    assert beats == [0.0, 0.3, 0.6, 0.9]


def test_shutdown_publishes_on_sys() -> None:
    out = make().shutdown(9.0)
    assert heartbeats(out) == [{"type": "shutdown", "epoch": "epoch-1", "ts": 9.0}]


def test_epoch_is_random_by_default() -> None:
    assert ChatCore().epoch != ChatCore().epoch


# --- history ------------------------------------------------------------------------------


def chat_room(core: ChatCore, count: int) -> None:
    """alice in general, then ``count`` messages: seqs 1 (join) .. count+1."""
    hello(core, A, "alice")
    for i in range(count):
        say(core, A, f"m{i}")


def history(core: ChatCore, peer: bytes = A, **fields: Any) -> dict:
    return replies(send(core, peer, {"type": "history", "room": "general", **fields}))[0]


def test_history_returns_all_events_and_the_room_seq() -> None:
    core = make()
    chat_room(core, 5)
    reply = history(core)
    assert reply["seq"] == 6
    assert [e["seq"] for e in reply["events"]] == [1, 2, 3, 4, 5, 6]
    assert reply["events"][0]["type"] == "join"
    assert reply["events"][1]["text"] == "m0"


def test_history_after_returns_later_events() -> None:
    core = make()
    chat_room(core, 5)
    assert [e["seq"] for e in history(core, after=3)["events"]] == [4, 5, 6]


def test_history_limit_returns_the_first_events_after() -> None:
    core = make()
    chat_room(core, 9)
    assert [e["seq"] for e in history(core, after=2, limit=3)["events"]] == [3, 4, 5]


def test_history_after_the_last_seq_is_empty() -> None:
    core = make()
    chat_room(core, 3)
    assert history(core, after=4)["events"] == []
    assert history(core, after=10**6)["events"] == []


def test_history_is_contiguous_after_old_events_are_dropped() -> None:
    core = make(history_kept=5, history_on_join=2)
    chat_room(core, 20)  # seqs 1..21, only 17..21 kept
    assert [e["seq"] for e in history(core)["events"]] == [17, 18, 19, 20, 21]
    assert [e["seq"] for e in history(core, after=18)["events"]] == [19, 20, 21]
    assert [e["seq"] for e in history(core, after=3, limit=2)["events"]] == [17, 18]


def test_history_for_an_unknown_room_is_empty() -> None:
    core = make()
    hello(core, A, "alice")
    assert replies(send(core, A, {"type": "history", "room": "nowhere"})) == [
        {"type": "history", "room": "nowhere", "events": [], "seq": 0}
    ]
    assert "nowhere" not in core.rooms


def test_history_needs_no_session() -> None:
    core = make()
    chat_room(core, 2)
    reply = history(core, peer=B)
    assert [e["seq"] for e in reply["events"]] == [1, 2, 3]
    assert B not in core.sessions


def test_history_needs_no_membership() -> None:
    core = make()
    chat_room(core, 2)
    hello(core, B, "bob", rooms=["dev"])
    assert history(core, peer=B)["seq"] == 3


def test_joined_history_is_limited_by_history_on_join() -> None:
    core = make(history_on_join=3)
    chat_room(core, 10)  # seqs 1..11
    joined = replies(hello(core, B, "bob"), B)[1]
    assert [e["seq"] for e in joined["history"]] == [10, 11, 12]  # ends with bob's own join
    assert joined["seq"] == 12


def test_joined_history_zero_is_empty() -> None:
    core = make(history_on_join=0)
    chat_room(core, 3)
    assert replies(hello(core, B, "bob"), B)[1]["history"] == []


def test_joined_history_of_a_new_room_is_only_the_own_join() -> None:
    core = make()
    recent = replies(hello(core, A, "alice"))[1]["history"]
    assert recent == [{"type": "join", "room": "general", "user": "alice", "seq": 1, "prev": 0, "ts": 0.0}]


# --- rate limit ---------------------------------------------------------------------------


def test_rate_limit_allows_a_burst_then_refuses() -> None:
    core = make(rate_limit=2.0, rate_burst=5.0)
    hello(core, A, "alice")  # every request costs a token, the hello too
    results = [types(say(core, A, f"m{i}"))[-1] for i in range(5)]
    assert results == ["ack"] * 4 + ["error"]


def test_rate_limited_error_code_and_id() -> None:
    core = make(rate_limit=2.0, rate_burst=2.0)
    hello(core, A, "alice")
    say(core, A, "first")
    error = only_error(say(core, A, "second"))
    assert error["code"] == "rate_limited"
    assert error["id"] == "id-second"


def test_rate_limited_msg_is_not_published() -> None:
    core = make(rate_limit=2.0, rate_burst=2.0)
    hello(core, A, "alice")
    say(core, A, "first")
    assert publishes(say(core, A, "second")) == []
    assert core.rooms["general"].seq == 2


def test_rate_limit_refills_as_time_passes() -> None:
    core = make(rate_limit=2.0, rate_burst=5.0)
    hello(core, A, "alice")
    for i in range(4):
        say(core, A, f"m{i}")
    assert only_error(say(core, A, "x", now=0.1))["code"] == "rate_limited"
    assert types(say(core, A, "y", now=0.6))[-1] == "ack"  # 0.6 s * 2/s = 1.2 tokens
    assert only_error(say(core, A, "z", now=0.6))["code"] == "rate_limited"


def test_rate_limit_refill_is_capped_at_the_burst() -> None:
    core = make(rate_limit=2.0, rate_burst=3.0)
    hello(core, A, "alice")
    results = [types(say(core, A, f"m{i}", now=1000.0))[-1] for i in range(4)]
    assert results == ["ack", "ack", "ack", "error"]


def test_rate_limit_is_per_connection() -> None:
    core = make(rate_limit=1.0, rate_burst=2.0)
    hello(core, A, "alice")
    hello(core, B, "bob")
    say(core, A, "a1")
    assert types(say(core, B, "b1"))[-1] == "ack"


def test_bye_and_hello_again_do_not_refill_the_bucket() -> None:
    core = make(rate_limit=1.0, rate_burst=3.0)
    hello(core, A, "alice")
    say(core, A, "a1")
    send(core, A, {"type": "bye"})
    hello(core, A, "alice")  # the third token
    assert only_error(say(core, A, "a2"))["code"] == "rate_limited"


def test_a_source_is_limited_across_its_connections() -> None:
    core = make(rate_limit=0.0, source_rate=1.0, source_burst=4.0)
    codes = []
    for i in range(6):  # a new connection each time, all from one address
        out = core.handle(b"conn-%d-xxxxxxxx" % i, [m.encode({"type": "ping"})], 0.0, address="10.0.0.7")
        codes.append(m.decode(out[0].payload).get("code", "pong"))
    assert codes == ["pong"] * 4 + ["rate_limited"] * 2
    other = core.handle(b"conn-other-xxxxx", [m.encode({"type": "ping"})], 0.0, address="10.0.0.8")
    assert m.decode(other[0].payload)["type"] == "pong"


def test_sessions_per_source_are_capped() -> None:
    core = make(rate_limit=0.0, source_rate=0.0, max_sessions_per_source=2)
    codes = []
    for i in range(3):
        out = core.handle(
            b"conn-%d-xxxxxxxx" % i, [m.encode({"type": "hello", "user": f"u{i}"})], 0.0, address="10.0.0.7"
        )
        codes.append(m.decode(out[0].payload).get("code", "welcome"))
    assert codes == ["welcome", "welcome", "too_many_sessions"]


def test_room_memberships_per_source_are_capped() -> None:
    core = make(rate_limit=0.0, source_rate=0.0, max_rooms_per_source=3)

    def ask(peer: bytes, env: dict) -> dict:
        return replies(core.handle(peer, [m.encode(env)], 0.0, address="10.0.0.7"))[0]

    assert ask(b"conn-a-xxxxxxxx", {"type": "hello", "user": "a", "rooms": ["r1", "r2"]})["type"] == "welcome"
    assert ask(b"conn-b-xxxxxxxx", {"type": "hello", "user": "b", "rooms": ["r1"]})["type"] == "welcome"
    assert ask(b"conn-b-xxxxxxxx", {"type": "join", "room": "r3"})["code"] == "too_many_rooms"
    ask(b"conn-a-xxxxxxxx", {"type": "leave", "room": "r2"})
    assert ask(b"conn-b-xxxxxxxx", {"type": "join", "room": "r3"})["type"] == "joined"


def test_rate_limit_zero_disables_it() -> None:
    core = make(rate_limit=0.0, rate_burst=0.0, source_rate=0.0)
    hello(core, A, "alice")
    assert all(types(say(core, A, f"m{i}"))[-1] == "ack" for i in range(500))


def test_pings_cost_tokens_too() -> None:
    core = make(rate_limit=1.0, rate_burst=3.0)
    hello(core, A, "alice")
    assert [replies(send(core, A, {"type": "ping"}))[0]["type"] for _ in range(3)] == ["pong", "pong", "error"]


def test_sessionless_requests_cost_tokens_too() -> None:
    core = make(rate_limit=1.0, rate_burst=2.0)
    codes = [replies(send(core, A, {"type": "rooms"}))[0]["type"] for _ in range(3)]
    assert codes == ["rooms", "rooms", "error"]


def test_a_large_reply_costs_more_tokens() -> None:
    core = make(rate_limit=1.0, rate_burst=40.0, source_rate=0.0)
    hello(core, A, "alice")
    for i in range(30):
        send(core, A, {"type": "msg", "room": "general", "text": "x" * 3000, "id": f"m{i}"}, now=100.0 + i)
    tokens = core.peers[A].bucket.tokens
    out = send(core, A, {"type": "history", "room": "general"}, now=130.0)
    size = len(out[0].payload)  # cut at the reply budget: ~64 KiB, so 1 + 3 tokens (after a refill of 1)
    assert size > 3 * 16 * 1024 and core.peers[A].bucket.tokens <= tokens + 1 - 1 - size // (16 * 1024)


def test_bye_is_never_rate_limited() -> None:
    core = make(rate_limit=1.0, rate_burst=1.0)
    hello(core, A, "alice")
    say(core, A, "spend")
    send(core, A, {"type": "bye"})
    assert A not in core.sessions


def test_rate_limited_requests_still_keep_the_session_alive() -> None:
    core = make(rate_limit=1.0, rate_burst=1.0, heartbeat=1.0, session_timeout=5.0)
    hello(core, A, "alice")
    say(core, A, "spend")
    say(core, A, "refused", now=0.0)
    send(core, A, {"type": "join", "room": "dev"}, now=4.0)
    core.tick(8.0)
    assert A in core.sessions


# --- room limits --------------------------------------------------------------------------


def test_join_beyond_max_rooms_per_session_is_too_many_rooms() -> None:
    core = make()
    rooms = [f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION)]
    hello(core, A, "alice", rooms=rooms)
    assert only_error(send(core, A, {"type": "join", "room": "one-more"}))["code"] == "too_many_rooms"
    assert "one-more" not in core.rooms


def test_join_of_a_room_already_in_at_the_session_cap_is_fine() -> None:
    core = make()
    rooms = [f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION)]
    hello(core, A, "alice", rooms=rooms)
    assert types(send(core, A, {"type": "join", "room": "r0"})) == ["joined"]


def test_leaving_makes_room_for_another_join() -> None:
    core = make()
    hello(core, A, "alice", rooms=[f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION)])
    send(core, A, {"type": "leave", "room": "r0"})
    assert "joined" in types(send(core, A, {"type": "join", "room": "fresh"}))


def test_repeated_hello_with_new_rooms_beyond_the_cap_is_too_many_rooms() -> None:
    core = make()
    hello(core, A, "alice", rooms=[f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION)])
    error = only_error(hello(core, A, "alice", rooms=["extra"]))
    assert error["code"] == "too_many_rooms"


def test_broker_wide_max_rooms_refuses_a_new_room() -> None:
    core = make(max_rooms=2)
    hello(core, A, "alice", rooms=["one", "two"])
    hello(core, B, "bob", rooms=["one"])
    assert only_error(send(core, B, {"type": "join", "room": "three"}))["code"] == "too_many_rooms"
    assert set(core.rooms) == {"one", "two"}


def test_broker_wide_max_rooms_still_allows_existing_rooms() -> None:
    core = make(max_rooms=2)
    hello(core, A, "alice", rooms=["one", "two"])
    hello(core, B, "bob", rooms=["one"])
    assert "joined" in types(send(core, B, {"type": "join", "room": "two"}))


def test_hello_beyond_broker_wide_max_rooms_creates_no_session() -> None:
    core = make(max_rooms=1)
    out = hello(core, A, "alice", rooms=["one", "two"])
    assert only_error(out)["code"] == "too_many_rooms"
    assert core.sessions == {}
    assert core.rooms == {}


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"heartbeat": 0.0},
        {"heartbeat": -1.0},
        {"heartbeat": 5.0, "session_timeout": 5.0},
        {"heartbeat": 6.0, "session_timeout": 5.0},
        {"history_on_join": -1},
        {"history_on_join": 11, "history_kept": 10},
        {"history_on_join": 0, "history_kept": -1},
        {"history_on_join": 0, "history_kept": 0},
        {"rate_limit": -1.0},
        {"rate_limit": 5.0, "rate_burst": 0.5},
    ],
    ids=repr,
)
def test_chat_config_rejects_bad_values(config: dict) -> None:
    with pytest.raises(ValueError):
        ChatConfig(**config)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"heartbeat": 0.1, "session_timeout": 0.2},
        {"history_on_join": 0, "history_kept": 1},
        {"history_on_join": 10, "history_kept": 10},
        {"rate_limit": 0.0, "rate_burst": 0.0},
        {"rate_limit": 1.0, "rate_burst": 1.0},
    ],
    ids=repr,
)
def test_chat_config_accepts_good_values(config: dict) -> None:
    ChatConfig(**config)


def test_chat_config_is_frozen() -> None:
    config = ChatConfig()
    with pytest.raises(AttributeError):
        config.heartbeat = 3.0  # type: ignore[misc]


# --- the clock ----------------------------------------------------------------------------
# The broker passes wall-clock time (time.time(): feed "ts" is Unix time), which NTP may step back.


def test_clock_stepping_back_does_not_rate_limit_a_session() -> None:
    core = make(rate_limit=20.0, rate_burst=40.0)
    hello(core, A, "alice", now=1000.0)
    say(core, A, "before", now=1000.0)
    assert types(say(core, A, "after", now=900.0))[-1] == "ack"


def test_heartbeat_resumes_soon_after_the_clock_steps_back() -> None:
    core = make(heartbeat=1.0, session_timeout=5.0)
    core.tick(1000.0)
    assert [t for t in (900.0, 901.0, 902.0) if heartbeats(core.tick(t))] != []
