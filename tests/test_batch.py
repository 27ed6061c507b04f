"""Batches of requests in one inbox frame, over real sockets to a real broker (protocol.md, section 1)."""

from __future__ import annotations

import time

import msgspec
import pytest
from conftest import WAIT, Harness

import messages as m
import session
from client import ChatClient

pytestmark = pytest.mark.timeout(60)


def msg(n: int, room: str = "general", text: str = "") -> dict:
    return {"type": "msg", "room": room, "text": text or f"batched {n}", "id": f"b-{n}"}


def test_a_batch_is_handled_in_order_and_answered_as_one_frame(harness: Harness) -> None:
    broker = harness.broker()
    alice = harness.client(broker, "alice")
    raw = harness.raw(broker)
    raw.wait_subscribed()
    batch = [
        {"type": "hello", "user": "bot"},
        msg(1),
        msg(2),
        7,  # not an envelope: its own error, in its place
        msg(3, room="elsewhere"),  # not in that room
        msg(4),
        {"type": "ping"},
    ]
    raw.send(msgspec.json.encode(batch))
    replies = raw.replies()
    assert [r["type"] for r in replies] == ["welcome", "joined", "ack", "ack", "error", "error", "ack", "pong"]
    assert [r.get("code") for r in replies if r["type"] == "error"] == ["bad_envelope", "not_in_room"]
    assert [r["id"] for r in replies if r["type"] == "ack"] == ["b-1", "b-2", "b-4"]
    seqs = [r["seq"] for r in replies if r["type"] == "ack"]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    for n in (1, 2, 4):
        alice.expect(rf"^bot: batched {n}$")

    # The same batch again (its acks were lost, say): the same acks, nothing published twice.
    raw.send(msgspec.json.encode([msg(1), msg(2), msg(4)]))
    assert [r["seq"] for r in raw.replies()] == seqs
    raw.request(msg(5))
    assert raw.reply()["type"] == "ack"  # a lone request still gets a lone reply
    alice.expect(r"^bot: batched 5$")
    assert not [line for line in alice.lines if "batched 1" in line][1:]


def test_replies_to_a_big_batch_come_in_bounded_frames_and_lose_nothing(harness: Harness) -> None:
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0")
    raw = harness.raw(broker)
    raw.request({"type": "hello", "user": "bot"})
    assert [raw.reply()["type"], raw.reply()["type"]] == ["welcome", "joined"]
    raw.wait_subscribed()
    text = "y" * 200
    batch = [msg(n, text=text) for n in range(m.MAX_BATCH_REQUESTS)]
    raw.send(msgspec.json.encode(batch))
    acks: list[dict] = []
    frames = 0
    while len(acks) < len(batch):
        acks += raw.replies()
        frames += 1
    assert [a["id"] for a in acks] == [f"b-{n}" for n in range(m.MAX_BATCH_REQUESTS)]
    assert frames == 1  # 256 acks fit in one 32 KiB frame
    # The feed carries the 256 events (~60 KiB) in several bounded frames, in seq order.
    events, sizes = [], []
    while len(events) < len(batch) and raw.sub.poll(WAIT * 1000):
        _topic, payload = raw.sub.recv_multipart()
        events += [e for e in m.feed_events(payload) if e["type"] == "msg"]
        sizes.append(len(payload))
    assert [e["seq"] for e in events] == [a["seq"] for a in acks]
    assert len(sizes) > 1 and max(sizes) <= m.MAX_BATCH_BYTES


def test_a_batch_counts_against_the_rate_limit_request_by_request(harness: Harness) -> None:
    broker = harness.broker("--rate-limit", "1", "--rate-burst", "4")
    raw = harness.raw(broker)
    raw.request({"type": "hello", "user": "bot"})  # takes one of the four tokens
    assert [raw.reply()["type"], raw.reply()["type"]] == ["welcome", "joined"]
    raw.send(msgspec.json.encode([msg(n) for n in range(6)]))
    codes = [r.get("code", r["type"]) for r in raw.replies()]
    assert codes == ["ack"] * 3 + ["rate_limited"]  # the rest of the batch: one error, no work each


def test_say_many_sends_batches_and_every_message_is_acked_once_in_order(harness: Harness) -> None:
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0")
    raw = harness.raw(broker)
    raw.wait_subscribed()
    with ChatClient("bot", router=broker.router, pub=broker.pub, context=harness.ctx) as bot:
        bot.connect()
        ids = bot.say_many("general", [f"line {n}" for n in range(600)])  # three batch frames
        acks = []
        deadline = time.monotonic() + WAIT
        while bot.unacked and time.monotonic() < deadline:
            acks += [e for e in bot.poll(0.05) if isinstance(e, session.Acked)]
        assert [a.ack.id for a in acks] == ids
        assert [a.request.id for a in acks] == ids
    events: list[dict] = []
    while len(events) < 600 and raw.sub.poll(WAIT * 1000):
        events += [e for e in m.feed_events(raw.sub.recv_multipart()[1]) if e["type"] == "msg"]
    assert [e["text"] for e in events] == [f"line {n}" for n in range(600)]
    assert [e["seq"] for e in events] == [a.ack.seq for a in acks]
