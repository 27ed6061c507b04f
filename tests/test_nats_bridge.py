"""The bridge between a broker's poller loop and NATS (``nats_bridge.py``), on a real 3-node cluster.

Driven as a broker would drive it: orders on the PAIR, answers read when the poller says the socket is
readable.  Skipped, with the reason, without nats-server or nats-py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import zmq
from conftest import until_no_error

from front_door import stream_config
from nats_bridge import Acked, Changed, Dropped, Failed, KvResult, Message, NatsBridge, Status, Stored
from nats_cluster import NatsCluster

pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")
if shutil.which("nats-server") is None:
    pytest.skip("nats-server is not installed (Debian: apt-get install nats-server)", allow_module_level=True)

pytestmark = pytest.mark.timeout(90)

STREAM = stream_config(replicas=3)  # as the front doors make it


class Loop:
    """What a broker's loop keeps of the bridge: every event read, and a way to wait for one."""

    def __init__(self, bridge: NatsBridge, feed: bool = True) -> None:
        self.bridge = bridge
        self.poller = zmq.Poller()
        self.poller.register(bridge.sock, zmq.POLLIN)
        if feed:
            self.poller.register(bridge.feed, zmq.POLLIN)
        self.read = bridge.events if feed else bridge.answers
        self.seen: list[object] = []

    def until(self, found, timeout: float = 30.0):
        """Read events until ``found(event)`` is true for one; return it."""
        deadline = time.monotonic() + timeout
        at = 0
        while True:
            for event in self.seen[at:]:
                if found(event):
                    return event
            at = len(self.seen)
            left = deadline - time.monotonic()
            assert left > 0, f"nothing matched; seen {self.seen[-5:]}"
            if self.poller.poll(int(min(left, 0.5) * 1000)):
                self.seen += self.read()

    def answer(self, token: int, timeout: float = 30.0):
        return self.until(lambda e: isinstance(e, Acked | Failed | KvResult | Stored) and e.token == token, timeout)


@pytest.fixture
def cluster(tmp_path: Path):
    with NatsCluster(tmp_path / "nats") as running:
        yield running


@pytest.fixture
def loop(cluster: NatsCluster):
    ctx = zmq.Context()
    bridge = NatsBridge(ctx, cluster.urls)
    try:  # closed even when it never connected: its thread would otherwise retry for the rest of the run
        running = Loop(bridge)
        running.until(lambda e: isinstance(e, Status) and e.state == "connected")
        yield running
    finally:
        bridge.close()
        ctx.term()


def test_publishes_are_stored_once_republished_in_a_prev_chain_and_survive_a_leader_kill(
    cluster: NatsCluster, loop: Loop
) -> None:
    bridge = loop.bridge
    assert until_no_error(lambda: loop.answer(bridge.stream(STREAM))).error is None
    bridge.subscribe("feed.room.>")
    first = loop.answer(bridge.publish("chat.room.a", b"one", "alice:1"))
    second = loop.answer(bridge.publish("chat.room.b", b"two", "alice:2"))
    third = loop.answer(bridge.publish("chat.room.a", b"three", "bob:1"))
    again = loop.answer(bridge.publish("chat.room.a", b"one", "alice:1"))  # its ack was lost: the same id
    assert isinstance(first, Acked) and isinstance(second, Acked) and isinstance(third, Acked)
    assert isinstance(again, Acked) and (again.seq, again.duplicate) == (first.seq, True)
    # A hole in room a's chain is filled by walking its subject: the first stored after a position.
    got = loop.answer(bridge.next("CHAT", "chat.room.a", first.seq))
    assert isinstance(got, Stored) and (got.seq, got.subject, got.data) == (third.seq, "chat.room.a", b"three")
    assert loop.answer(bridge.next("CHAT", "chat.room.a", third.seq)).reason == "not_found"

    def republished(seq: int) -> Message:
        return loop.until(lambda e: isinstance(e, Message) and int(e.headers.get("Nats-Sequence", 0)) == seq)

    # Nats-Last-Sequence: the stream position of the previous event of the same room (0 for its first).
    assert republished(first.seq).headers["Nats-Last-Sequence"] == "0"
    assert republished(second.seq).headers["Nats-Last-Sequence"] == "0"
    a3 = republished(third.seq)
    assert (a3.subject, a3.data, a3.headers["Nats-Last-Sequence"]) == ("feed.room.a", b"three", str(first.seq))

    leader = cluster.stream_leader("CHAT")
    assert leader is not None
    leader.kill()  # kill -9 of the stream's leader: publishes get no answer until a new one is elected
    after = loop.answer(bridge.publish("chat.room.a", b"four", "alice:3"), timeout=60)
    assert isinstance(after, Acked) and after.seq > third.seq and not after.duplicate
    assert republished(after.seq).headers["Nats-Last-Sequence"] == str(third.seq)
    resent = loop.answer(bridge.publish("chat.room.a", b"four", "alice:3"))
    assert isinstance(resent, Acked) and (resent.seq, resent.duplicate) == (after.seq, True)


def test_key_value_create_update_delete_answer_as_a_lease_table_needs(loop: Loop) -> None:
    bridge = loop.bridge
    assert loop.answer(bridge.kv_bucket({"bucket": "names", "history": 1, "ttl": 30, "replicas": 3})).error is None
    made = loop.answer(bridge.kv("create", "names", "alice", b"door-1"))
    assert made.error is None and made.revision > 0
    assert loop.answer(bridge.kv("create", "names", "alice", b"door-2")).error == "exists"
    renewed = loop.answer(bridge.kv("update", "names", "alice", b"door-1", made.revision))
    assert renewed.error is None and renewed.revision > made.revision
    assert loop.answer(bridge.kv("update", "names", "alice", b"door-2", made.revision)).error == "wrong_revision"
    got = loop.answer(bridge.kv("get", "names", "alice"))
    assert (got.revision, got.value) == (renewed.revision, b"door-1")
    assert loop.answer(bridge.kv("delete", "names", "alice", revision=renewed.revision)).error is None
    assert loop.answer(bridge.kv("get", "names", "alice")).error == "not_found"
    assert loop.answer(bridge.kv("create", "names", "alice", b"door-2")).error is None  # free again


def test_a_watch_tells_the_keys_there_then_each_change_and_a_failed_compare_and_set_not(loop: Loop) -> None:
    """The roster's watch (the Clone pattern): what was there, a marker, then each change in order."""
    bridge = loop.bridge
    assert loop.answer(bridge.kv_bucket({"bucket": "members", "history": 1, "replicas": 3})).error is None
    first = loop.answer(bridge.kv("put", "members", "general.alice", b"door-1"))
    watch = bridge.watch("members", ">")

    def told(key: str, value: bytes | None) -> Changed:
        return loop.until(lambda e: isinstance(e, Changed) and e.token == watch and (e.key, e.value) == (key, value))

    assert told("general.alice", b"door-1").revision == first.revision
    told("", None)  # every key there was is told
    bob = loop.answer(bridge.kv("put", "members", "general.bob", b"door-2"))
    stale = bridge.kv("delete", "members", "general.alice", revision=bob.revision)  # not alice's revision
    assert loop.answer(stale).error == "wrong_revision"
    loop.answer(bridge.kv("delete", "members", "general.alice"))
    told("general.bob", b"door-2")
    told("general.alice", None)
    changes = [(e.key, e.value) for e in loop.seen if isinstance(e, Changed)]
    assert changes == [("general.alice", b"door-1"), ("", None), ("general.bob", b"door-2"), ("general.alice", None)]
    bridge.unwatch(watch)
    # A delete marker cleared: a new watch no longer tells the key (a put after it would stay).
    gone = [e for e in loop.seen if isinstance(e, Changed) and e.key == "general.alice" and e.value is None]
    assert loop.answer(bridge.kv_purge("members", "general.alice", gone[0].revision)).error is None
    again = bridge.watch("members", ">")
    loop.until(lambda e: isinstance(e, Changed) and e.token == again and not e.key)
    assert [e.key for e in loop.seen if isinstance(e, Changed) and e.token == again] == ["general.bob", ""]
    bridge.unwatch(again)
    loop.answer(bridge.kv("put", "members", "general.carol", b"door-1"))
    loop.answer(bridge.kv("get", "members", "general.carol"))  # a round trip later: nothing more was told
    assert not [e for e in loop.seen if isinstance(e, Changed) and e.key == "general.carol"]


def test_a_publish_nobody_can_store_fails_after_its_retries(loop: Loop) -> None:
    failed = loop.answer(loop.bridge.publish("chat.room.x", b"lost", "alice:1", retry_s=0.5))
    assert isinstance(failed, Failed) and failed.reason.startswith("unavailable")  # no stream holds chat.room.x


def test_a_loop_that_reads_no_feed_loses_feed_messages_counted_and_no_answer(cluster: NatsCluster) -> None:
    ctx = zmq.Context()
    bridge = NatsBridge(ctx, cluster.urls, feed_frames=100)
    answers = Loop(bridge, feed=False)  # reads answers only: the feed queue fills and stays full
    try:
        answers.until(lambda e: isinstance(e, Status) and e.state == "connected")
        assert until_no_error(lambda: answers.answer(bridge.stream(STREAM))).error is None
        bridge.subscribe("feed.room.>")
        probe = answers.answer(bridge.publish("chat.room.flood", b"probe", "bot:probe"))
        tokens = [bridge.publish("chat.room.flood", b"x" * 100, f"bot:{i}") for i in range(2_000)]
        assert all(isinstance(answers.answer(token, timeout=60), Acked) for token in tokens)  # none dropped

        # The feed holds 100 (and the loop's end one more); the rest of the 2,001 republished copies were
        # dropped, each counted: every copy is either waiting or counted.
        def dropped() -> int:
            return sum(event.count for event in answers.seen if isinstance(event, Dropped))

        answers.until(lambda _: dropped() >= 2_001 - 101)
        feed = [event for event in bridge.events() if isinstance(event, Message)]
        assert len(feed) + dropped() == 2_001 and len(feed) <= 101
        assert int(feed[0].headers["Nats-Sequence"]) == probe.seq  # the oldest stay; the newest are dropped
    finally:
        bridge.close()
        ctx.term()
