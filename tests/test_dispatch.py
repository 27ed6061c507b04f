"""How the broker puts outputs on the wire: batches per room, bounded frames, feed before acks.

Real ZeroMQ sockets (inproc) around a real ``Broker``; no mocks.
"""

from __future__ import annotations

import msgspec
import pytest
import zmq
from conftest import inproc_broker

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from messages import MAX_BATCH_BYTES


@pytest.fixture
def wired():
    ctx = zmq.Context()
    broker, sub, dealer = inproc_broker(ctx, ChatCore(ChatConfig(rate_limit=0, source_rate=0)), b"", b"peer")
    dealer.send(b"hi")  # so the ROUTER knows the peer
    broker.router.recv_multipart()
    yield broker, sub, dealer
    ctx.destroy(linger=0)


def frames_on(sock: zmq.Socket) -> list[list[bytes]]:
    out = []
    while sock.poll(200):
        out.append(sock.recv_multipart())
    return out


def event(room: str, seq: int, size: int = 10) -> Publish:
    return Publish(
        m.room_topic(room), msgspec.json.encode({"type": "msg", "room": room, "seq": seq, "text": "x" * size})
    )


def test_a_lone_event_goes_out_alone(wired) -> None:
    broker, sub, _ = wired
    broker.dispatch([event("general", 1)])
    [[topic, payload]] = frames_on(sub)
    assert topic == b"room/general/" and msgspec.json.decode(payload)["seq"] == 1


def test_a_rooms_events_of_one_batch_go_out_as_one_frame_in_order(wired) -> None:
    broker, sub, _ = wired
    broker.dispatch([event("general", 1), event("dev", 1), event("general", 2), event("general", 3)])
    frames = {topic: m.feed_events(payload) for topic, payload in frames_on(sub)}
    assert [e["seq"] for e in frames[b"room/general/"]] == [1, 2, 3]
    assert [e["seq"] for e in frames[b"room/dev/"]] == [1]


def test_batch_frames_are_bounded_and_lose_nothing(wired) -> None:
    broker, sub, _ = wired
    broker.dispatch([event("general", n, size=1000) for n in range(1, 101)])
    frames = frames_on(sub)
    assert len(frames) > 1
    assert all(len(payload) <= MAX_BATCH_BYTES + 1100 for _, payload in frames)
    seqs = [e["seq"] for _, payload in frames for e in m.feed_events(payload)]
    assert seqs == list(range(1, 101))


def test_the_feed_goes_out_before_the_ack(wired) -> None:
    broker, sub, dealer = wired
    broker.dispatch([event("general", 1), Reply(b"peer", b'{"type":"ack","id":"1","room":"general","seq":1}')])
    assert dealer.poll(1000) and sub.poll(0)  # once the ack is here, the event already is


def test_replies_to_a_peer_that_is_gone_are_counted_not_raised(wired) -> None:
    broker, _, _ = wired
    broker.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    broker.dispatch([Reply(b"nobody", b"{}")])
    assert broker.dropped_replies == 1
