"""The client session (session.py) against the real ChatCore, through a simulated network that drops,
delays, duplicates and reorders frames, and a broker that restarts (with and without its database) or
crashes before a commit.  No sockets, no clock: everything is a step of the state machine.

What must hold, whatever the faults:

* nothing a session accepted (``say``) is lost or published twice: once the network heals, every
  message is acknowledged, and each history holds it at most once (exactly once in a persistent one),
  whatever names its writer took meanwhile (``nick``, whose answer may be lost like any other);
* one sender's messages are stored in the order they were written;
* feed events come out of a session once each, in ``seq`` order per room (per broker history);
* the session's next deadline is never in the past after it ran its timers;
* what it holds stays bounded.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from sequencer import MAX_HELD_PER_ROOM
from session import MAX_UNACKED, Acked, ClientSession, Failed, State
from store import MemoryStore, SqliteStore

NAMES = ("alice", "bob")
OBSERVER = "logger"
PEERS = (*NAMES, OBSERVER)
ROOM = "general"
OTHER_ROOM = "dev"
#: A small burst, so writing in bursts meets the rate limit and its retry-later errors.
CONFIG = dataclasses.replace(ChatConfig(), rate_limit=20.0, rate_burst=8.0, heartbeat=1.0, session_timeout=5.0)


@dataclasses.dataclass
class Peer:
    """One client: its session, and the frames in transit to and from it."""

    session: ClientSession
    routing_id: bytes
    connected: bool = True  # False: the transport takes nothing (ZMQ_IMMEDIATE with no connection)
    inbox: list[bytes] = dataclasses.field(default_factory=list)  # to the broker
    replies: list[bytes] = dataclasses.field(default_factory=list)  # from the broker
    feed: list[bytes] = dataclasses.field(default_factory=list)
    topics: set[bytes] = dataclasses.field(default_factory=set)
    written: list[str] = dataclasses.field(default_factory=list)  # texts, in the order written
    rooms: set[str] = dataclasses.field(default_factory=lambda: {ROOM})  # the rooms it last asked to be in
    acked: dict[str, int] = dataclasses.field(default_factory=dict)  # text -> times acked
    seen: dict[tuple[str | None, str], int] = dataclasses.field(default_factory=dict)  # (history, room) -> last seq
    delivered: dict[tuple[str | None, str], list[int]] = dataclasses.field(default_factory=dict)  # ... -> seqs


#: What brokers published, per history: (history_id, writer, text) -> the seqs it was given.
Published = dict[tuple[str, str, str], list[int]]


def assert_once_per_history(published: Published) -> None:
    doubled = {key: seqs for key, seqs in published.items() if len(seqs) > 1}
    assert not doubled, doubled


def assert_in_written_order(published: Published, written: dict[str, list[str]]) -> None:
    """In each history, every writer's messages are in the order it wrote them (``written``: texts per writer)."""
    for name, texts in written.items():
        order = {text: i for i, text in enumerate(texts)}
        by_history: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for (history, user, text), seqs in published.items():
            if user == name:
                by_history[history].append((seqs[0], order[text]))
        for history, pairs in by_history.items():
            written_order = [i for _, i in sorted(pairs)]
            assert written_order == sorted(written_order), (name, history, written_order)


class SessionsOverAFaultyNetwork(RuleBasedStateMachine):
    @initialize(persistent=st.booleans(), seed=st.integers(0, 2**16))
    def start(self, persistent: bool, seed: int) -> None:
        self.random = random.Random(seed)
        self.dir = tempfile.mkdtemp(prefix="chat-session-props-")
        self.persistent = persistent
        self.now = 1000.0
        self.store = self.open_store()
        self.core = ChatCore(CONFIG, store=self.store, now=self.now)
        self.generation = 0
        #: What the broker published, per history: (history_id, writer, text) -> seqs it was given.  The writer is
        #: told by the text (``alice-3``): its name on the feed changes with each nick.
        self.published: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        #: The same, by where it was published: (history_id, room, seq) -> (user, text).
        self.at_seq: dict[tuple[str, str, int], tuple[str, str]] = {}
        self.peers = {
            name: Peer(ClientSession(name, self.now, rooms=[ROOM], ack_timeout=3.0), f"peer-{name}".encode())
            for name in NAMES
        }
        self.peers[OBSERVER] = Peer(ClientSession(None, self.now), b"peer-logger")  # a logger: the whole feed
        for peer in self.peers.values():
            self.run_session(peer)

    def open_store(self) -> MemoryStore | SqliteStore:
        return SqliteStore(Path(self.dir) / "chat.db") if self.persistent else MemoryStore()

    def teardown(self) -> None:
        try:
            if hasattr(self, "core"):
                self.settle()
        finally:
            if isinstance(getattr(self, "store", None), SqliteStore):
                self.store.db.close()
            if hasattr(self, "dir"):
                shutil.rmtree(self.dir, ignore_errors=True)

    # --- the pieces between the rules ---------------------------------------------------------

    def run_session(self, peer: Peer) -> None:
        """What ``ChatClient.poll`` does after input: the timers, then send, then read the events."""
        session = peer.session
        session.tick(self.now)
        for subscribe, topic in session.subscriptions:
            (peer.topics.add if subscribe else peer.topics.discard)(topic)
        session.subscriptions.clear()
        if peer.connected:
            peer.inbox.extend(session.outbox)
            session.outbox.clear()
        elif session.outbox:
            session.blocked(self.now)
        for event in session.take_events():
            self.observe(peer, event)

    def observe(self, peer: Peer, event: object) -> None:
        session = peer.session
        if isinstance(event, Acked):
            peer.acked[event.request.text] = peer.acked.get(event.request.text, 0) + 1
        elif isinstance(event, Failed) and event.request is not None and not event.retrying:
            raise AssertionError(f"{session.name}: a message was refused for good: {event}")
        elif isinstance(event, m.RoomEvent):  # every event with a seq (a nick too)
            key = (session.history_id, event.room)
            last = peer.seen.get(key, 0)
            assert event.seq > last, f"{session.name} got seq {event.seq} after {last} in {key}"
            peer.seen[key] = event.seq
            peer.delivered.setdefault(key, []).append(event.seq)
            # And it is the event the broker published there, in that history.  Feed events carry no epoch: after
            # a restart quicker than the client's liveness timeout, a memory-only broker's first events can come
            # before the client knows the history started over, so only a persistent history is checked.
            if isinstance(event, m.MsgEvent) and self.persistent:
                truth = self.at_seq.get((session.history_id, event.room, event.seq))
                assert truth == (event.user, event.text), (session.name, session.history_id, event, truth)

    def to_broker(self, peer: Peer, frame: bytes) -> None:
        out = self.core.handle(peer.routing_id, [frame], self.now, address="127.0.0.1")
        self.core.commit()
        self.route(out)

    def route(self, out: list) -> None:
        for output in out:
            if type(output) is Reply:
                for peer in self.peers.values():
                    if peer.routing_id == output.peer:
                        peer.replies.append(output.payload)
            elif type(output) is Publish:
                self.record(output)
                for peer in self.peers.values():
                    if any(output.topic.startswith(topic) for topic in peer.topics):
                        peer.feed.append(output.payload)

    def record(self, output: Publish) -> None:
        for event in m.read_envelopes(output.payload):
            if isinstance(event, m.MsgEvent):
                writer = event.text.rpartition("-")[0]
                self.published[self.store.history_id, writer, event.text].append(event.seq)
                self.at_seq[self.store.history_id, event.room, event.seq] = (event.user, event.text)

    def pick(self, frames: list[bytes], choice: int) -> bytes:
        return frames.pop(choice % len(frames))

    # --- rules: people write ----------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), count=st.integers(1, 12))
    def write(self, name: str, count: int) -> None:
        peer = self.peers[name]
        if peer.session.closed or len(peer.session.queue) + count > MAX_UNACKED:
            return
        for _ in range(count):
            text = f"{name}-{len(peer.written)}"
            peer.session.say(ROOM, text, self.now)
            peer.written.append(text)
        self.run_session(peer)

    @rule(name=st.sampled_from(NAMES), join=st.booleans())
    def join_or_leave(self, name: str, join: bool) -> None:
        """Membership changes, whatever the network does meanwhile: each is asked again until answered."""
        peer = self.peers[name]
        if peer.session.closed:
            return
        if join:
            peer.session.join(OTHER_ROOM, self.now)
            peer.rooms.add(OTHER_ROOM)
        else:
            peer.session.leave(OTHER_ROOM, self.now)
            peer.rooms.discard(OTHER_ROOM)
        self.run_session(peer)

    @rule(name=st.sampled_from(NAMES))
    def rename(self, name: str) -> None:
        """A writer takes another name (``alice`` <-> ``alice_``): nobody else ever wants either."""
        peer = self.peers[name]
        if peer.session.closed:
            return
        current = peer.session.name or name
        peer.session.nick(name if current != name else f"{name}_", self.now)
        self.run_session(peer)

    # --- rules: the network ---------------------------------------------------------------------

    @precondition(lambda self: any(p.inbox for p in self.peers.values()))
    @rule(name=st.sampled_from(PEERS), choice=st.integers(0, 3), duplicate=st.booleans())
    def deliver_request(self, name: str, choice: int, duplicate: bool) -> None:
        """A frame reaches the broker: usually the oldest, sometimes a later one first."""
        peer = self.peers[name]
        if not peer.inbox:
            return
        frame = self.pick(peer.inbox, choice if self.random.random() < 0.2 else 0)
        self.to_broker(peer, frame)
        if duplicate:
            self.to_broker(peer, frame)

    @precondition(lambda self: any(p.replies or p.feed for p in self.peers.values()))
    @rule(name=st.sampled_from(PEERS), choice=st.integers(0, 3), duplicate=st.booleans(), feed=st.booleans())
    def deliver_to_client(self, name: str, choice: int, duplicate: bool, feed: bool) -> None:
        peer = self.peers[name]
        frames = peer.feed if feed else peer.replies
        if not frames:
            return
        frame = self.pick(frames, choice if self.random.random() < 0.2 else 0)
        handle = peer.session.feed if feed else peer.session.reply
        handle(frame, self.now)
        if duplicate:
            handle(frame, self.now)
        self.run_session(peer)

    @rule(name=st.sampled_from(PEERS), what=st.sampled_from(["inbox", "replies", "feed"]), choice=st.integers(0, 9))
    def drop(self, name: str, what: str, choice: int) -> None:
        frames = getattr(self.peers[name], what)
        if frames:
            self.pick(frames, choice)

    @rule(name=st.sampled_from(PEERS))
    def disconnect(self, name: str) -> None:
        """The TCP connection breaks: libzmq drops what was queued either way until it reconnects."""
        peer = self.peers[name]
        peer.connected = False
        peer.inbox.clear()
        peer.replies.clear()

    @rule(name=st.sampled_from(PEERS))
    def reconnect(self, name: str) -> None:
        self.peers[name].connected = True

    @rule(seconds=st.sampled_from([0.05, 0.3, 1.0, 2.5, 4.0, 7.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.route(self.core.tick(self.now))
        self.core.commit()
        for peer in self.peers.values():
            self.run_session(peer)

    # --- rules: the broker ----------------------------------------------------------------------

    @rule()
    def restart(self) -> None:
        """The broker stops cleanly and starts again (on the same database, or with none)."""
        self.core.commit()
        if not self.persistent:
            self.store = self.open_store()
        self.reborn()

    @precondition(lambda self: any(p.inbox for p in self.peers.values()))
    @rule(name=st.sampled_from(NAMES))
    def crash_before_commit(self, name: str) -> None:
        """The broker handles a frame and dies before its commit: what it did is lost, nobody saw it."""
        peer = self.peers[name]
        if not peer.inbox:
            return
        self.core.handle(peer.routing_id, [peer.inbox.pop(0)], self.now, address="127.0.0.1")
        if isinstance(self.store, SqliteStore):
            self.store.db.close()
        self.store = self.open_store()
        self.reborn()

    def reborn(self) -> None:
        self.core = ChatCore(CONFIG, store=self.store, now=self.now)
        for peer in self.peers.values():  # every connection broke: what was in transit is gone
            peer.inbox.clear()
            peer.replies.clear()
            peer.feed.clear()

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def deadlines_are_never_in_the_past(self) -> None:
        for peer in self.peers.values():
            if not peer.session.closed:
                session = peer.session
                deadline = session.next_deadline()
                assert deadline > self.now, (session.name, self.now, deadline, vars(session))

    @invariant()
    def nothing_is_published_twice_in_one_history(self) -> None:
        assert_once_per_history(self.published)

    @invariant()
    def each_sender_is_stored_in_the_order_written(self) -> None:
        assert_in_written_order(self.published, {name: peer.written for name, peer in self.peers.items()})

    @invariant()
    def what_is_held_stays_bounded(self) -> None:
        for peer in self.peers.values():
            session = peer.session
            assert len(session.queue) <= MAX_UNACKED
            assert all(len(held) <= MAX_HELD_PER_ROOM for held in session.sequencer.held.values())
            assert len(session.in_flight) <= m.MAX_BATCH_REQUESTS
            assert not session.take_events()  # every event was read

    # --- the end: heal the network and let everything through -------------------------------------

    def settle(self) -> None:
        """No more faults: every message must get through, once."""
        for peer in self.peers.values():
            peer.connected = True
        quiet_since = self.now
        for _ in range(400):
            moved = False
            for peer in self.peers.values():
                while peer.inbox:
                    self.to_broker(peer, peer.inbox.pop(0))
                    moved = True
                while peer.replies or peer.feed:
                    if peer.replies:
                        peer.session.reply(peer.replies.pop(0), self.now)
                    if peer.feed:
                        peer.session.feed(peer.feed.pop(0), self.now)
                    moved = True
                self.run_session(peer)
            if not moved:
                quiet = all(
                    p.session.state is State.READY
                    and not p.session.queue
                    and not p.session.sequencer.held
                    and not p.session._joining
                    and not p.session._leaving
                    for p in self.peers.values()
                )
                if quiet and self.now > quiet_since + 3:  # and the catch-up fetches after joining ran
                    break
                if not quiet:
                    quiet_since = self.now
                self.now += 0.25
                self.route(self.core.tick(self.now))
                self.core.commit()
        observer = self.peers[OBSERVER]
        history = self.store.history_id
        newest = max((seq for (hid, _, _), seqs in self.published.items() if hid == history for seq in seqs), default=0)
        if newest:  # the logger is up to the newest message, and has every event from where it began, in order
            assert observer.session.sequencer.last.get(ROOM, 0) >= newest, (observer.session.sequencer.last, newest)
            got = observer.delivered.get((history, ROOM), [])
            assert got == list(range(got[0], got[0] + len(got))) if got else True, got
        for name, peer in self.peers.items():
            assert peer.session.state is State.READY, (name, peer.session.state)
            assert not peer.session.queue, (name, list(peer.session.queue.values())[:3])
            never = [text for text in peer.written if peer.acked.get(text, 0) == 0]
            assert not never, (name, never[:5])
            twice = [text for text, n in peer.acked.items() if n > 1]
            assert not twice, (name, twice[:5])
            if name != OBSERVER:  # in the rooms it last asked for, by its own account and the broker's
                session = self.core.sessions.get(peer.routing_id)
                assert session is not None and set(session.rooms) == peer.rooms, (name, peer.rooms)
                assert set(peer.session.rooms) == peer.rooms, (name, peer.session.rooms, peer.rooms)
            if self.persistent:
                stored = {text for (_, user, text) in self.published if user == name}
                assert stored == set(peer.written), (name, set(peer.written) - stored)
        self.nothing_is_published_twice_in_one_history()
        self.each_sender_is_stored_in_the_order_written()


SessionsOverAFaultyNetwork.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_sessions_over_a_faulty_network = SessionsOverAFaultyNetwork.TestCase
