"""A front door's feed from the log (``cluster_feed.py``) on a real 3-node cluster, through the bridge: a loop
too slow for the feed loses messages in the bridge, and gets every room back, in order, from the stream.
Skipped, with the reason, without nats-server or nats-py."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import zmq
from conftest import until_no_error

from cluster_feed import ClusterFeed, Fetch, LogEvent
from front_door import stream_config
from nats_bridge import Acked, Dropped, Failed, Message, NatsBridge, Status, Stored
from nats_cluster import NatsCluster

pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")
if shutil.which("nats-server") is None:
    pytest.skip("nats-server is not installed (Debian: apt-get install nats-server)", allow_module_level=True)

pytestmark = pytest.mark.timeout(90)

STREAM = stream_config(replicas=3)  # as the front doors make it
ROOMS = ("a", "b", "c")


def test_a_loop_that_fell_behind_gets_every_room_back_in_order_from_the_stream(tmp_path: Path) -> None:
    ctx = zmq.Context()
    with NatsCluster(tmp_path / "nats") as cluster:
        bridge = NatsBridge(ctx, cluster.urls, feed_frames=50)
        try:
            run(bridge)
        finally:
            bridge.close()
    ctx.term()


def run(bridge: NatsBridge) -> None:
    poller = zmq.Poller()
    poller.register(bridge.sock, zmq.POLLIN)
    answers: dict[int, object] = {}
    statuses: list[Status] = []
    dropped = 0

    def read_answers(timeout_ms: int = 500) -> None:
        nonlocal dropped
        if poller.poll(timeout_ms):
            for event in bridge.answers():
                if isinstance(event, Status):
                    statuses.append(event)
                elif isinstance(event, Dropped):
                    dropped += event.count
                else:
                    answers[event.token] = event  # type: ignore[attr-defined]

    def answer(token: int) -> object:
        deadline = time.monotonic() + 30
        while token not in answers:
            assert time.monotonic() < deadline, f"no answer to {token}; statuses {statuses}"
            read_answers()
        return answers.pop(token)

    while not any(s.state == "connected" for s in statuses):
        read_answers()
    assert until_no_error(lambda: answer(bridge.stream(STREAM))).error is None
    bridge.subscribe("feed.room.>")
    # 600 events while the loop reads no feed: the bridge keeps 50 (and the loop's end one), drops the rest.
    tokens = [(ROOMS[i % 3], bridge.publish(f"chat.room.{ROOMS[i % 3]}", b"%d" % i, f"bot:{i}")) for i in range(600)]
    acked: dict[str, list[int]] = {room: [] for room in ROOMS}
    for room, token in tokens:
        ack = answer(token)
        assert isinstance(ack, Acked)
        acked[room].append(ack.seq)
    while dropped < 600 - 60:  # the bridge keeps about 50; the rest, once it has seen them, it drops
        read_answers()

    feed = ClusterFeed()
    out: list[LogEvent] = []
    fetches: list[Fetch] = []
    queued = [event for event in bridge.events() if isinstance(event, Message)]
    assert 0 < len(queued) <= 51
    for event in queued:
        if isinstance(event, Message):
            ready, more = feed.message(event.subject, event.headers, event.data)
            out += ready
            fetches += more
    fetches += feed.dropped()
    while fetches:  # one fetch per room at a time: the bridge answers them in any order
        asked = {bridge.next("CHAT", fetch.subject, fetch.after): fetch for fetch in fetches}
        fetches = []
        for token, fetch in asked.items():
            got = answer(token)
            if isinstance(got, Stored):
                ready, more = feed.stored(fetch, got.seq, got.data)
            else:
                assert isinstance(got, Failed) and got.reason == "not_found", got
                ready, more = feed.missing(fetch)
            out += ready
            fetches += more
    for room in ROOMS:
        assert [event.seq for event in out if event.room == room] == acked[room]
    chain = {room: 0 for room in ROOMS}
    for event in out:  # each room's prev chain, unbroken
        assert event.prev == chain[event.room]
        chain[event.room] = event.seq
    assert feed.sequencer.lost == 0 and feed.sequencer.filled == 600 - len(queued)
