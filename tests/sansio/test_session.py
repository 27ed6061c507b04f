"""ClientSession (session.py), one rule at a time: frames and ``now`` in, frames and events out.

The broker's side of each exchange is written by hand here, so each test reads as the frames that
pass; ``test_session_properties.py`` drives the session against the real ChatCore with faults.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import messages as m
from session import (
    HELLO_RETRY_S,
    MAX_FILLS,
    MISSED_HEARTBEATS,
    Acked,
    Change,
    ClientSession,
    Failed,
    Rejoined,
    State,
    Status,
)

T0 = 100.0


def sent(session: ClientSession) -> list[Any]:
    """The envelopes the session queued for the inbox (batches as lists), and clear them."""
    frames = [json.loads(frame) for frame in session.outbox]
    session.outbox.clear()
    return frames


def kinds(frames: list[Any]) -> list[str]:
    return ["batch" if type(f) is list else f["type"] for f in frames]


def reply(session: ClientSession, now: float, *envs: dict[str, Any]) -> list[Any]:
    payload = json.dumps(list(envs) if len(envs) > 1 else envs[0]).encode()
    session.reply(payload, now)
    return session.take_events()


def welcome(epoch: str = "e1", history_id: str = "h1", user: str = "alice") -> dict[str, Any]:
    return {"type": "welcome", "user": user, "rooms": ["general"], "epoch": epoch, "history_id": history_id}


def joined(seq: int = 0, room: str = "general") -> dict[str, Any]:
    return {"type": "joined", "room": room, "users": ["alice"], "history": [], "seq": seq}


def ready(now: float = T0) -> ClientSession:
    """A session that said hello and was welcomed into general."""
    session = ClientSession("alice", now)
    assert [f["type"] for f in sent(session)] == ["hello"]
    reply(session, now, welcome(), joined())
    assert session.state is State.READY
    return session


def ack(said_id: str, seq: int) -> dict[str, Any]:
    return {"type": "ack", "id": said_id, "room": "general", "seq": seq}


# --- one frame of unknown fate in flight ---------------------------------------------------------


def test_messages_written_while_one_is_in_flight_wait_and_then_go_together_in_order() -> None:
    session = ready()
    first = session.say("general", "one", T0)
    assert [f["text"] for f in sent(session)] == ["one"]
    later = [session.say("general", text, T0) for text in ("two", "three")]
    assert sent(session) == []  # "one" has no answer yet
    events = reply(session, T0 + 0.01, ack(first, 1))
    assert [type(e) for e in events] == [Acked]
    [batch] = sent(session)
    assert [env["text"] for env in batch] == ["two", "three"] and [env["id"] for env in batch] == later


def test_a_rate_limited_batch_is_sent_again_from_the_refused_message_after_a_wait() -> None:
    session = ready()
    ids = session.say_many("general", ["a", "b", "c"], T0)
    sent(session)
    events = reply(
        session,
        T0,
        ack(ids[0], 1),
        {"type": "error", "code": "rate_limited", "detail": "slow down (2 requests of this batch were not handled)"},
    )
    assert [type(e) for e in events] == [Acked, Failed] and events[1].retrying
    session.tick(T0 + 0.1)
    assert kinds(sent(session)) == []  # waiting
    session.tick(T0 + 0.3)
    [batch] = sent(session)
    assert [env["text"] for env in batch] == ["b", "c"]  # in the order written, nothing new before them


def test_an_unanswered_frame_is_sent_again_with_the_same_ids() -> None:
    session = ready()
    said = session.say("general", "hi", T0)
    sent(session)
    session.tick(T0 + session.ack_timeout)
    resent = [f for f in sent(session) if f["type"] == "msg"]
    assert [f["id"] for f in resent] == [said]


def test_a_leave_waits_for_the_messages_said_in_that_room() -> None:
    session = ready()
    said = session.say("general", "bye all", T0)
    sent(session)
    session.leave("general", T0)
    assert sent(session) == []
    reply(session, T0, ack(said, 1))
    assert [f["type"] for f in sent(session)] == ["leave"]


def test_a_final_error_gives_the_message_back_and_an_id_reused_renumbers_it_in_place() -> None:
    session = ready()
    first, second = session.say_many("general", ["x", "y"], T0)
    sent(session)
    events = reply(
        session,
        T0,
        {"type": "error", "code": "id_reused", "detail": "pick another", "id": first},
        {"type": "error", "code": "not_in_room", "detail": "no", "id": second},
    )
    assert [(type(e), e.request.text) for e in events] == [(Failed, "y")]
    [renumbered] = session.undelivered
    assert renumbered.text == "x" and renumbered.id != first


# --- sessions that end and come back ----------------------------------------------------------------


def test_a_new_epoch_resumes_the_session_and_resends_first_and_rejoins_quietly() -> None:
    session = ready()
    said = session.say("general", "typed before the restart", T0)
    sent(session)
    session.feed(b'{"type":"heartbeat","epoch":"e2","ts":1}', T0 + 1)
    assert session.state is State.READY  # the feed alone is not believed (a relay pointed elsewhere?)
    assert [f["type"] for f in sent(session)] == ["ping"]  # the broker itself is asked
    session.reply(b'{"type":"pong","epoch":"e2","session":false}', T0 + 1)
    assert session.state is State.RESUMING
    [hello] = sent(session)
    assert hello["type"] == "hello" and hello["resume"] is True
    events = reply(session, T0 + 1.1, welcome(epoch="e2"), joined(seq=5))
    assert Status(Change.RECONNECTED, "e2") in events
    assert any(isinstance(e, Rejoined) for e in events) and not any(isinstance(e, m.Joined) for e in events)
    frames = sent(session)
    assert [f["id"] for f in frames if f["type"] == "msg"] == [said]  # resent, and before anything new


def test_a_refused_hello_at_start_is_final() -> None:
    session = ClientSession("alice", T0)
    [hello] = sent(session)
    events = reply(session, T0, {"type": "error", "code": "name_taken", "detail": "taken", "id": hello["id"]})
    assert session.state is State.CLOSED and session.refused is not None and session.refused.code == "name_taken"
    assert isinstance(events[0], Failed)


def test_a_rate_limited_hello_is_asked_again() -> None:
    session = ClientSession("alice", T0)
    [hello] = sent(session)
    assert reply(session, T0, {"type": "error", "code": "rate_limited", "detail": "slow", "id": hello["id"]}) == []
    session.tick(T0 + 1)
    assert [f["type"] for f in sent(session) if f["type"] != "ping"] == ["hello"]


def test_errors_about_our_own_pings_and_fills_are_not_shown() -> None:
    session = ready()
    session.tick(T0 + 1)  # a ping, and the catch-up fetch a join is followed by
    for request in sent(session):
        refused = {"type": "error", "code": "rate_limited", "detail": "slow", "id": request["id"]}
        assert reply(session, T0 + 1, refused) == [], request


def test_silence_is_said_once_and_restored_only_by_the_same_broker_run() -> None:
    session = ready()
    late = T0 + session.heartbeat * MISSED_HEARTBEATS
    session.tick(late)
    assert session.take_events() == [Status(Change.LOST)]
    session.tick(late + 1)
    assert session.take_events() == []
    session.reply(b'{"type":"pong","epoch":"e1","session":true}', late + 2)
    assert session.take_events() == [Status(Change.RESTORED, "e1")]


def test_events_heard_after_a_silence_wait_until_the_epoch_says_which_history_they_belong_to() -> None:
    session = ready()
    session.tick(T0 + 3)
    session.take_events()
    event = {"type": "msg", "room": "general", "user": "bob", "text": "hi", "id": "x", "seq": 1, "ts": 1}
    session.feed(json.dumps(event).encode(), T0 + 4)
    assert session.take_events() == []  # which broker run is this?
    session.feed(b'{"type":"heartbeat","epoch":"e1","ts":1}', T0 + 4)
    assert [type(e) for e in session.take_events()] == [Status, m.MsgEvent]


def test_a_head_past_what_we_have_fetches_the_missed_events() -> None:
    session = ready()
    sent(session)
    session.feed(b'{"type":"head","room":"general","seq":3}', T0 + 0.5)
    [fetch] = [f for f in sent(session) if f["type"] == "history"]
    assert fetch["room"] == "general" and fetch["after"] == 0


# --- closing and timers ---------------------------------------------------------------------------------


def test_close_delivers_what_was_accepted_then_says_bye() -> None:
    session = ready()
    said = session.say("general", "last words", T0)
    sent(session)
    session.close(T0, patience=2.0)
    assert not session.closed
    reply(session, T0 + 0.5, ack(said, 1))
    session.tick(T0 + 0.5)
    assert session.closed and [f["type"] for f in sent(session)] == ["bye"]


def test_close_gives_up_after_its_patience_and_tells_what_was_not_delivered() -> None:
    session = ready()
    session.say("general", "into the void", T0)
    session.close(T0, patience=2.0)
    session.tick(T0 + 2.0)
    assert session.closed and [s.text for s in session.undelivered] == ["into the void"]


def test_the_next_deadline_is_never_in_the_past_while_the_broker_is_away() -> None:
    session = ClientSession("alice", T0)
    now = T0
    for _ in range(200):  # no answer, ever; the transport refuses every frame (no connection)
        session.tick(now)
        session.blocked(now)
        deadline = session.next_deadline()
        assert deadline > now
        now = deadline
    assert now - T0 > 100 * min(session.heartbeat, HELLO_RETRY_S[1]) / 2  # woke at most ~twice a second


# --- what a review and an attack found (each failed before its fix) -------------------------------------


def test_a_join_the_transport_dropped_is_asked_again_until_answered() -> None:
    session = ready()
    session.join("dev", T0)
    session.blocked(T0)  # no connection: the frame is gone
    assert session.outbox == deque()
    session.tick(T0 + session.ack_timeout)
    assert [f["room"] for f in sent(session) if f["type"] == "join"] == ["dev"]
    events = reply(session, T0 + 3.1, joined(seq=4, room="dev"))
    assert [type(e) for e in events if not isinstance(e, Status)] == [m.Joined] and "dev" in session.rooms
    session.tick(T0 + 10)
    assert not [f for f in sent(session) if f["type"] == "join"]  # answered: asked no more


def test_a_join_asked_during_an_outage_is_sent_after_the_welcome_and_a_leave_is_not_undone() -> None:
    session = ready()
    session.reply(b'{"type":"pong","epoch":"e2","session":false}', T0)  # the broker restarted
    session.join("dev", T0)
    session.leave("general", T0)
    assert [f["type"] for f in sent(session)] == ["hello"]  # nothing else can go before the welcome
    reply(session, T0 + 1, welcome(epoch="e2"))
    assert sorted(f["type"] + " " + f["room"] for f in sent(session)) == ["join dev", "leave general"]
    session.tick(T0 + 2)
    assert [f["rooms"] for f in sent(session) if f["type"] == "hello"] == []


def test_a_fill_keeps_only_events_of_its_room() -> None:
    session = ready()
    session.feed(b'{"type":"head","room":"general","seq":3}', T0)
    [fill] = [f for f in sent(session) if f["type"] == "history"]
    stray = {"type": "msg", "room": "dev", "user": "x", "text": "not general", "id": "a", "seq": 1, "ts": 1}
    reply(session, T0, {"type": "history", "room": "general", "events": [stray], "seq": 3, "more": True})
    assert session.sequencer.last["general"] == 0 and fill["after"] == 0


def test_a_fill_that_brings_nothing_is_not_asked_again_at_once() -> None:
    session = ready()
    session.feed(b'{"type":"head","room":"general","seq":3}', T0)
    sent(session)
    for _ in range(5):
        reply(session, T0, {"type": "history", "room": "general", "events": [], "seq": 3, "more": True})
    assert [f for f in sent(session) if f["type"] == "history"] == []  # its timer asks again, later


def test_the_callers_history_is_not_taken_for_a_fill() -> None:
    session = ready()
    session.feed(b'{"type":"head","room":"general","seq":1}', T0)  # a fill goes out
    session.history("general", T0)  # and then the caller's own
    sent(session)
    event = {"type": "join", "room": "general", "user": "bob", "seq": 1, "ts": 1}
    first = reply(session, T0, {"type": "history", "room": "general", "events": [event], "seq": 1})
    second = reply(session, T0, {"type": "history", "room": "general", "events": [event], "seq": 1})
    assert [type(e) for e in first] == [m.JoinEvent]  # the fill: delivered as an event
    assert [type(e) for e in second] == [m.History]  # the caller's: handed over as asked


def test_an_insane_heartbeat_from_a_broker_is_clamped() -> None:
    for heartbeat, expected in ((0, 0.05), (-1, 0.05), (1e300, 60.0)):
        session = ClientSession("alice", T0)
        sent(session)
        reply(session, T0, {**welcome(), "heartbeat": heartbeat}, joined())
        assert session.heartbeat == expected
        session.tick(T0)
        assert session.next_deadline() > T0


def test_a_feed_heartbeat_with_another_epoch_only_asks_the_broker() -> None:
    session = ready()
    for epoch in ("x", "e1", "y", "e1") * 5:  # a relay flapping between brokers
        session.feed(json.dumps({"type": "heartbeat", "epoch": epoch, "ts": 1}).encode(), T0)
    assert session.state is State.READY and session.epoch == "e1"
    assert not any(isinstance(e, Status) for e in session.take_events())


def test_a_second_welcome_for_a_hello_said_twice_keeps_the_frame_in_flight() -> None:
    session = ready()
    said = session.say("general", "hi", T0)
    sent(session)
    assert reply(session, T0, welcome()) == []
    assert said in session.in_flight and sent(session) == []


def test_every_message_of_a_refused_batch_costs_one_wait_and_one_notice() -> None:
    session = ready()
    ids = session.say_many("general", [f"m{i}" for i in range(10)], T0)
    sent(session)
    errors = [{"type": "error", "code": "unavailable", "detail": "disk full", "id": i} for i in ids]
    events = reply(session, T0, *errors)
    assert len([e for e in events if isinstance(e, Failed)]) == 1
    session.tick(T0 + 0.25)
    [batch] = sent(session)
    assert [env["id"] for env in batch] == ids  # sent again after the first wait, in order


def test_a_resuming_hello_refused_for_good_closes_the_session() -> None:
    session = ready()
    session.reply(b'{"type":"pong","epoch":"e2","session":false}', T0)
    hello = [f for f in sent(session) if f["type"] == "hello"][-1]
    events = reply(session, T0, {"type": "error", "code": "too_many_rooms", "detail": "no", "id": hello["id"]})
    assert session.state is State.CLOSED and isinstance(events[-1], Failed)


def test_an_observer_asks_a_few_histories_at_a_time() -> None:
    session = ClientSession(None, T0)
    sent(session)
    reply(session, T0, {"type": "rooms", "rooms": {f"r{i}": 0 for i in range(100)}, "history_id": "h"})
    for i in range(100):  # every room has a hole
        event = {"type": "msg", "room": f"r{i}", "user": "u", "text": "t", "id": "x", "seq": 5, "ts": 1}
        session.feed(json.dumps(event).encode(), T0)
    fills = [f for f in sent(session) if f["type"] == "history"]
    assert len(fills) == MAX_FILLS
    reply(session, T0, {"type": "history", "room": fills[0]["room"], "events": [], "seq": 5})
    assert len([f for f in sent(session) if f["type"] == "history"]) == 1  # the next room's turn


def test_a_silent_broker_is_left_for_the_next_one_where_the_session_resumes_and_resends() -> None:
    """Given several brokers (front doors), a silence of MISSED_HEARTBEATS heartbeats moves ``broker`` on;
    the session says hello (resume) there at once, and its unacked message goes again, same id, first."""
    session = ClientSession("alice", T0, brokers=3)
    sent(session)
    reply(session, T0, welcome(), joined())
    said = session.say("general", "typed as the broker died", T0)
    sent(session)
    late = T0 + session.heartbeat * MISSED_HEARTBEATS
    assert session.next_deadline() <= late
    session.tick(late)
    assert session.take_events() == [Status(Change.LOST), Status(Change.MOVED)] and session.broker == 1
    assert session.state is State.RESUMING and "hello" in kinds(sent(session))
    # the next one is silent too: on again after another silence, and round to the first
    session.tick(late + session.heartbeat * MISSED_HEARTBEATS - 0.01)
    assert session.broker == 1
    session.tick(late + session.heartbeat * MISSED_HEARTBEATS)
    assert session.broker == 2 and Status(Change.MOVED) in session.take_events()
    sent(session)
    events = reply(session, late + 4, welcome(epoch="e2"), joined(seq=7))
    assert Status(Change.RECONNECTED, "e2") in events
    assert [f["id"] for f in sent(session) if f["type"] == "msg"] == [said]


def test_with_one_broker_a_silence_never_moves_anything() -> None:
    session = ready()
    session.tick(T0 + 100)
    assert session.broker == 0 and Status(Change.MOVED) not in session.take_events()


def test_topic_and_nick_events_on_the_feed_are_delivered_in_their_place() -> None:
    """Every room event counts in the room's chain, whatever its type: a topic change on the feed is delivered
    at once, and the message after it is not held for a fill."""
    session = ready()
    sent(session)
    session.feed(b'{"type":"topic","room":"general","user":"bob","topic":"t","seq":1,"prev":0,"ts":1}', T0)
    session.feed(b'{"type":"nick","room":"general","user":"bob","name":"rob","seq":2,"prev":1,"ts":1}', T0)
    session.feed(b'{"type":"msg","room":"general","user":"rob","text":"hi","id":"i","seq":3,"prev":2,"ts":1}', T0)
    assert [type(e).__name__ for e in session.take_events()] == ["TopicEvent", "NickEvent", "MsgEvent"]
    assert "history" not in kinds(sent(session))


def test_a_move_says_the_callers_history_request_failed_and_a_closed_session_stays_put() -> None:
    session = ClientSession("alice", T0, brokers=2)
    sent(session)
    reply(session, T0, welcome(), joined())
    session.history("general", T0)
    [asked] = [f for f in sent(session) if f["type"] == "history"]
    session.tick(T0 + session.heartbeat * MISSED_HEARTBEATS)
    [failed] = [e for e in session.take_events() if isinstance(e, Failed)]
    assert failed.error.id == asked["id"] and failed.error.code == "unavailable"

    refused = ClientSession("bob", T0, brokers=2)
    [hello] = sent(refused)
    reply(refused, T0, {"type": "error", "code": "name_taken", "detail": "taken", "id": hello["id"]})
    refused.tick(T0 + 100)
    assert refused.closed and refused.broker == 0 and Status(Change.MOVED) not in refused.take_events()


def test_a_history_request_the_transport_dropped_is_not_awaited() -> None:
    session = ready()
    sent(session)
    session.history("general", T0)
    session.blocked(T0)  # no connection: the request never left
    [failed] = [e for e in session.take_events() if isinstance(e, Failed)]
    assert failed.error.code == "unavailable" and not session._histories


def test_a_room_event_of_a_type_we_do_not_know_keeps_its_place_in_the_chain() -> None:
    """A newer broker's event type (here ``poll``) is not shown, but counts: the message after it is delivered
    at once, and a history reply holding one fills the gap it was part of."""
    session = ready()
    sent(session)
    session.feed(b'{"type":"poll","room":"general","user":"bob","question":"?","seq":1,"prev":0,"ts":1}', T0)
    session.feed(b'{"type":"msg","room":"general","user":"bob","text":"hi","id":"i","seq":2,"prev":1,"ts":1}', T0)
    assert [e.seq for e in session.take_events() if isinstance(e, m.MsgEvent)] == [2]
    assert "history" not in kinds(sent(session))
    session.feed(b'{"type":"msg","room":"general","user":"bob","text":"later","id":"j","seq":5,"prev":4,"ts":1}', T0)
    [fill] = [f for f in sent(session) if f["type"] == "history"]
    events = [
        {"type": "poll", "room": "general", "user": "bob", "seq": 3, "prev": 2, "ts": 1},
        {"type": "msg", "room": "general", "user": "bob", "text": "x", "id": "k", "seq": 4, "prev": 3, "ts": 1},
    ]
    got = reply(session, T0, {"type": "history", "room": "general", "events": events, "seq": 5})
    assert fill["after"] == 2 and [e.seq for e in got if isinstance(e, m.MsgEvent)] == [4, 5]
