"""The log a cluster of brokers will share (issue 17), on a real 3-node NATS cluster (``nats_cluster.py``):
one R3 stream for every room, RePublish to a feed subject, and the two headers the design rests on.

- ``Nats-Last-Sequence`` of a republished message is the stream sequence of the previous message of the
  same subject: the room event's ``prev`` (protocol version 2), so a front door can tell a gap.
- ``Nats-Msg-Id`` (user and message id) makes a resend after a lost ack store nothing twice.

Both hold through a kill -9 of the stream's leader.  Skipped, with the reason, without nats-server or nats-py.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from nats_cluster import NatsCluster

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")
if shutil.which("nats-server") is None:
    pytest.skip("nats-server is not installed (Debian: apt-get install nats-server)", allow_module_level=True)

from nats.errors import NoRespondersError, TimeoutError  # noqa: E402
from nats.js.api import RePublish, StorageType, StreamConfig  # noqa: E402
from nats.js.errors import NoStreamResponseError  # noqa: E402

pytestmark = pytest.mark.timeout(90)

#: What a publish gets while the stream has no leader (an election takes a few seconds).
NO_LEADER = (NoRespondersError, NoStreamResponseError, TimeoutError)


@pytest.fixture
def cluster(tmp_path: Path):
    with NatsCluster(tmp_path / "nats") as running:
        yield running


async def publish(js, room: str, msg_id: str, deadline: float):
    """Publish until the stream acks (through a leader election), under the same ``Nats-Msg-Id``."""
    while True:
        try:
            return await js.publish(f"chat.room.{room}", msg_id.encode(), headers={"Nats-Msg-Id": msg_id}, timeout=1)
        except NO_LEADER:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def scenario(cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="CHAT",
            subjects=["chat.room.>"],
            num_replicas=3,
            storage=StorageType.FILE,
            duplicate_window=600,  # seconds: the promised ten minutes of dedupe
            republish=RePublish(src="chat.room.>", dest="feed.room.>"),
        )
    )
    feed: list[tuple[str, int, int, str]] = []  # (room, seq, prev, msg id), in the order republished
    arrived = asyncio.Event()

    async def on_feed(msg) -> None:
        headers = msg.headers or {}
        room = msg.subject.removeprefix("feed.room.")
        feed.append((room, int(headers["Nats-Sequence"]), int(headers["Nats-Last-Sequence"]), msg.data.decode()))
        arrived.set()

    await nc.subscribe("feed.room.>", cb=on_feed)
    deadline = time.monotonic() + 60
    rooms = ["a", "b", "a", "a", "b", "c", "a"]
    acks = [await publish(js, room, f"alice:{i}", deadline) for i, room in enumerate(rooms)]
    again = await publish(js, "a", "alice:0", deadline)  # the ack was "lost": the same id again
    assert again.duplicate and again.seq == acks[0].seq

    leader = (await js.stream_info("CHAT")).cluster.leader
    next(node for node in cluster.nodes if node.name == leader).kill()
    rooms_after = ["a", "b", "a"]
    acks += [await publish(js, room, f"alice:{len(rooms) + i}", deadline) for i, room in enumerate(rooms_after)]
    again = await publish(js, "a", f"alice:{len(rooms)}", deadline)  # acked after the election: once
    assert again.duplicate

    while len(feed) < len(acks):
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), timeout=max(0.1, deadline - time.monotonic()))
    await nc.close()

    assert [seq for _, seq, _, _ in feed] == sorted(ack.seq for ack in acks)  # each once, in stream order
    last: dict[str, int] = {}
    for room, seq, prev, _ in feed:  # the chain of each room: prev is the room's last position, 0 first
        assert prev == last.get(room, 0), (room, seq, prev, last)
        last[room] = seq
    assert [msg_id for *_, msg_id in feed] == [f"alice:{i}" for i in range(len(acks))]


def test_one_stream_republishes_each_room_as_a_prev_chain_and_dedupes_resends_through_a_leader_kill(
    cluster: NatsCluster,
) -> None:
    asyncio.run(scenario(cluster))
