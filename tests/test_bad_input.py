"""Every kind of bad input, sent over a real socket to a real broker: a clear error, never a crash."""

from __future__ import annotations

import time

import msgspec
import pytest
import zmq
from conftest import WAIT, Harness

import messages as m

pytestmark = pytest.mark.timeout(60)

HELLO = msgspec.json.encode({"type": "hello", "user": "tester"})

# (frames sent before hello?, frames, expected error code)
BAD_BEFORE_HELLO = [
    ([b"not json"], "bad_json"),
    ([b"\xff\xfe{}"], "bad_json"),  # invalid UTF-8
    ([b'{"type": "msg", "text": "\xed\xa0\x80"}'], "bad_json"),  # a lone surrogate, as UTF-8
    ([b"[]"], "bad_envelope"),  # an empty batch
    ([b"[" + b"{}," * m.MAX_BATCH_REQUESTS + b"{}]"], "bad_envelope"),  # a batch one too long
    ([b'"just a string"'], "bad_envelope"),
    ([b"{}"], "bad_envelope"),
    ([b'{"type": 7}'], "bad_envelope"),
    ([HELLO, HELLO], "bad_envelope"),  # two frames
    ([b'{"type": "teleport"}'], "unknown_type"),
    ([b'{"type": "welcome"}'], "unknown_type"),  # a reply type is not a request
    ([b'{"type": "hello"}'], "bad_envelope"),  # no user
    ([b'{"type": "hello", "user": 42}'], "bad_field"),
    ([b'{"type": "hello", "user": "two words"}'], "bad_name"),
    ([b'{"type": "hello", "user": "evil\\u001b[2J"}'], "bad_name"),
    ([b'{"type": "hello", "user": "' + b"x" * 33 + b'"}'], "bad_name"),
    ([b'{"type": "hello", "user": "system"}'], "bad_name"),
    ([b'{"type": "hello", "user": "ok", "rooms": "general"}'], "bad_field"),
    ([b'{"type": "hello", "user": "ok", "rooms": ["No Caps"]}'], "bad_name"),
    ([b'{"type": "msg", "room": "general", "text": "hi", "id": "1"}'], "no_session"),
    ([b'{"type": "join", "room": "general"}'], "no_session"),
    ([b'{"type": "history", "room": "general", "limit": 100000}'], "bad_field"),
    ([b'{"type": "history", "room": "general", "after": -1}'], "bad_field"),
]

BAD_IN_SESSION = [
    ({"type": "msg", "room": "general", "text": "x" * (m.MAX_TEXT_CHARS + 1), "id": "big"}, "too_large"),
    ({"type": "msg", "room": "general", "text": "", "id": "e"}, "bad_field"),
    ({"type": "msg", "room": "general", "text": ["list"], "id": "t"}, "bad_field"),
    ({"type": "msg", "room": "general", "text": "hi"}, "bad_envelope"),
    ({"type": "msg", "room": "general", "text": "hi", "id": 5}, "bad_field"),
    ({"type": "msg", "room": "elsewhere", "text": "hi", "id": "n"}, "not_in_room"),
    ({"type": "leave", "room": "elsewhere"}, "not_in_room"),
    ({"type": "join", "room": "a/b"}, "bad_name"),
    ({"type": "dm", "to": "nobody", "text": "hi", "id": "d"}, "no_such_user"),
    ({"type": "hello", "user": "someone-else"}, "session_exists"),
]


def test_bad_input_gets_the_right_error_and_the_broker_serves_on(harness: Harness) -> None:
    broker = harness.broker()
    alice = harness.client(broker, "alice")
    raw = harness.raw(broker)
    for frames, code in BAD_BEFORE_HELLO:
        raw.send(*frames)
        reply = raw.reply()
        assert reply["type"] == "error" and reply["code"] == code, (frames, reply)
        assert reply["detail"]
    raw.send(HELLO)
    assert raw.reply()["type"] == "welcome"
    assert raw.reply()["type"] == "joined"
    for envelope, code in BAD_IN_SESSION:
        raw.request(envelope)
        reply = raw.reply()
        assert reply["type"] == "error" and reply["code"] == code, (envelope, reply)
        if isinstance(envelope.get("id"), str):
            assert reply["id"] == envelope["id"]  # so a client knows which message failed
    # Nothing above reached the room; alice chats as before.
    raw.request({"type": "msg", "room": "general", "text": "still here", "id": "ok"})
    assert raw.reply()["type"] == "ack"
    alice.expect(r"^tester: still here$")


def test_oversized_frame_is_dropped_by_libzmq_and_nothing_else_is_lost(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    raw = harness.raw(broker)
    raw.send(HELLO)
    assert raw.reply()["type"] == "welcome"
    raw.reply()
    # A frame over MAX_FRAME_BYTES: libzmq closes that connection; no reply is possible.
    raw.send(b"x" * (m.MAX_FRAME_BYTES + 1))
    assert not raw.dealer.poll(500)
    # The broker is alive and bob's session is untouched.
    bob.send("/who")
    bob.expect(r"^\[who\] #general: bob, tester \(2\)$")
    # The DEALER reconnects by itself; with the same routing id it would even keep its session.
    fresh = harness.raw(broker)
    fresh.request({"type": "ping"})
    assert fresh.reply()["type"] == "pong"


def test_rate_limit_answers_rate_limited_without_disconnecting(harness: Harness) -> None:
    broker = harness.broker("--rate-limit", "5", "--rate-burst", "5")
    raw = harness.raw(broker)
    raw.send(HELLO)
    raw.reply()
    raw.reply()
    for i in range(12):
        raw.request({"type": "msg", "room": "general", "text": f"spam {i}", "id": str(i)})
    codes = [raw.reply().get("code", "ack") for _ in range(12)]
    assert codes.count("ack") >= 3 and "rate_limited" in codes, codes
    # The session is still there: a ping, once a token has come back, says so.
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        raw.request({"type": "ping"})
        reply = raw.reply()
        if reply["type"] == "pong":
            break
        time.sleep(0.1)  # a token comes back every 0.2 s
    assert reply["type"] == "pong" and reply["session"] is True


def test_many_rooms_are_refused_past_the_limit(harness: Harness) -> None:
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0")
    raw = harness.raw(broker)
    raw.send(HELLO)
    raw.reply()
    raw.reply()  # in general: one room
    for i in range(m.MAX_ROOMS_PER_SESSION - 1):
        raw.request({"type": "join", "room": f"r{i}"})
        assert raw.reply()["type"] == "joined"
    raw.request({"type": "join", "room": "onemore"})
    assert raw.reply()["code"] == "too_many_rooms"


def test_req_style_framing_gets_an_error_not_a_hang(harness: Harness) -> None:
    """REQ-style framing (an empty delimiter first) is two frames: bad_envelope, answered, not ignored."""
    broker = harness.broker()
    req = harness.ctx.socket(zmq.DEALER)
    req.connect(broker.router)
    req.send_multipart([b"", b'{"type": "ping"}'])
    assert req.poll(5000)
    assert msgspec.json.decode(req.recv())["code"] == "bad_envelope"
    req.close(linger=0)


def hello_raw(harness: Harness, broker) -> object:
    raw = harness.raw(broker)
    raw.send(HELLO)
    assert raw.reply()["type"] == "welcome"
    assert raw.reply()["type"] == "joined"
    return raw


def test_max_text_option(harness: Harness) -> None:
    broker = harness.broker("--max-text", "10")
    raw = hello_raw(harness, broker)
    raw.request({"type": "msg", "room": "general", "text": "x" * 10, "id": "fits"})
    assert raw.reply()["type"] == "ack"
    raw.request({"type": "msg", "room": "general", "text": "x" * 11, "id": "long"})
    assert raw.reply() == {
        "type": "error",
        "code": "too_large",
        "detail": "text is 11 characters; the limit is 10",
        "id": "long",
    }
    raw.request({"type": "dm", "to": "tester", "text": "y" * 11, "id": "dm"})
    assert raw.reply()["code"] == "too_large"


def test_max_rooms_per_session_option(harness: Harness) -> None:
    broker = harness.broker("--max-rooms-per-session", "2")
    raw = hello_raw(harness, broker)
    raw.request({"type": "join", "room": "second"})
    assert raw.reply()["type"] == "joined"
    raw.request({"type": "join", "room": "third"})
    assert raw.reply()["code"] == "too_many_rooms"


def test_max_history_option_cuts_replies(harness: Harness) -> None:
    broker = harness.broker("--max-history", "3", "--rate-limit", "0", "--source-rate", "0")
    raw = hello_raw(harness, broker)
    for i in range(6):
        raw.request({"type": "msg", "room": "general", "text": f"m{i}", "id": str(i)})
        raw.reply()
    raw.request({"type": "history", "room": "general", "after": 0, "limit": 500})
    reply = raw.reply()
    assert [e["seq"] for e in reply["events"]] == [1, 2, 3] and reply["seq"] == 7  # a client asks on from 3


def test_max_frame_option(harness: Harness) -> None:
    broker = harness.broker("--max-frame", "1000")
    raw = hello_raw(harness, broker)
    raw.request({"type": "msg", "room": "general", "text": "x" * 900, "id": "fits"})
    assert raw.reply()["type"] == "ack"
    raw.request({"type": "msg", "room": "general", "text": "x" * 1000, "id": "over"})  # > 1000 bytes as JSON
    assert not raw.dealer.poll(500)  # libzmq dropped the connection: no reply is possible


def test_bad_limit_options_are_refused() -> None:
    import subprocess
    import sys

    from conftest import ROOT

    for option, value in (("--max-text", "5000"), ("--max-history", "0"), ("--max-rooms-per-session", "99")):
        result = subprocess.run(
            [sys.executable, "broker.py", option, value, "--db", ":memory:"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 2 and option.lstrip("-").replace("-", "_") in result.stderr
