"""Sessions given two brokers (``ClientSession(brokers=2)``) against two real ChatCores, through a simulated
network that drops frames, while the brokers die and come back (each time a new run with a new history:
independent brokers, not one cluster).  No sockets, no clock: everything is a step of the state machine.

What must hold, whatever the faults:

* a session talks to one broker at a time, and moves only after a silence (its ``broker`` index);
* once a broker is up, every message a session accepted is acknowledged exactly once, and each broker
  history holds it at most once, one sender's messages in the order written;
* the session's next deadline is never in the past after it ran its timers.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from test_session_properties import Published, assert_in_written_order, assert_once_per_history

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from session import MAX_UNACKED, MISSED_HEARTBEATS, Acked, ClientSession, Failed, State
from store import MemoryStore

NAMES = ("alice", "bob")
ROOM = "general"
CONFIG = dataclasses.replace(ChatConfig(), heartbeat=1.0, session_timeout=5.0)


@dataclasses.dataclass
class Peer:
    session: ClientSession
    routing_id: bytes
    at: int = 0  # the broker its sockets are connected to (follows ``session.broker``)
    inbox: list[bytes] = dataclasses.field(default_factory=list)
    replies: list[bytes] = dataclasses.field(default_factory=list)
    feed: list[bytes] = dataclasses.field(default_factory=list)
    topics: set[bytes] = dataclasses.field(default_factory=set)
    written: list[str] = dataclasses.field(default_factory=list)
    acked: dict[str, int] = dataclasses.field(default_factory=dict)


class SessionsOverTwoBrokers(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.now = 1000.0
        self.cores = [self.new_core(), self.new_core()]
        self.alive = [True, True]
        #: (history_id, writer, text) -> seqs: what each broker history published.
        self.published: Published = defaultdict(list)
        self.peers = {
            name: Peer(ClientSession(name, self.now, rooms=[ROOM], brokers=2), f"peer-{name}".encode())
            for name in NAMES
        }
        for peer in self.peers.values():
            self.run_session(peer)

    def new_core(self) -> ChatCore:
        return ChatCore(CONFIG, store=MemoryStore(), now=self.now)

    # --- the pieces between the rules ------------------------------------------------------------

    def run_session(self, peer: Peer) -> None:
        """What ``ChatClient.poll`` does: the timers, a move if the session asks for one, send, read events."""
        session = peer.session
        session.tick(self.now)
        if session.broker != peer.at:  # ChatClient._move_to: the same sockets, connected elsewhere
            peer.at = session.broker
            peer.inbox.clear()
            peer.replies.clear()
            peer.feed.clear()
        for subscribe, topic in session.subscriptions:
            (peer.topics.add if subscribe else peer.topics.discard)(topic)
        session.subscriptions.clear()
        if self.alive[peer.at]:
            peer.inbox.extend(session.outbox)
            session.outbox.clear()
        elif session.outbox:
            session.blocked(self.now)  # ZMQ_IMMEDIATE: no connection, nothing queued
        for event in session.take_events():
            if isinstance(event, Acked):
                peer.acked[event.request.text] = peer.acked.get(event.request.text, 0) + 1
            elif isinstance(event, Failed) and event.request is not None and not event.retrying:
                raise AssertionError(f"{session.name}: a message was refused for good: {event}")

    def route(self, broker: int, out: list) -> None:
        for output in out:
            if type(output) is Reply:
                for peer in self.peers.values():
                    if peer.routing_id == output.peer and peer.at == broker:
                        peer.replies.append(output.payload)
            elif type(output) is Publish:
                for event in m.read_envelopes(output.payload):
                    if isinstance(event, m.MsgEvent):
                        writer = event.text.rpartition("-")[0]
                        self.published[self.cores[broker].store.history_id, writer, event.text].append(event.seq)
                for peer in self.peers.values():
                    if peer.at == broker and any(output.topic.startswith(t) for t in peer.topics):
                        peer.feed.append(output.payload)

    def deliver_all(self) -> bool:
        moved = False
        for peer in self.peers.values():
            while peer.inbox:
                frame = peer.inbox.pop(0)
                if self.alive[peer.at]:
                    self.route(peer.at, self.cores[peer.at].handle(peer.routing_id, [frame], self.now))
                moved = True
            while peer.replies or peer.feed:
                if peer.replies:
                    peer.session.reply(peer.replies.pop(0), self.now)
                if peer.feed:
                    peer.session.feed(peer.feed.pop(0), self.now)
                moved = True
            self.run_session(peer)
        return moved

    def tick_brokers(self) -> None:
        for broker, core in enumerate(self.cores):
            if self.alive[broker]:
                self.route(broker, core.tick(self.now))

    # --- rules ---------------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), count=st.integers(1, 4))
    def write(self, name: str, count: int) -> None:
        peer = self.peers[name]
        if peer.session.closed or len(peer.session.queue) + count > MAX_UNACKED:
            return
        texts = [f"{name}-{len(peer.written) + i}" for i in range(count)]
        peer.session.say_many(ROOM, texts, self.now)
        peer.written += texts
        self.run_session(peer)

    @rule()
    def deliver(self) -> None:
        self.deliver_all()

    @rule(name=st.sampled_from(NAMES), what=st.sampled_from(["inbox", "replies", "feed"]))
    def drop(self, name: str, what: str) -> None:
        frames = getattr(self.peers[name], what)
        if frames:
            frames.pop(0)

    @rule(seconds=st.sampled_from([0.3, 1.0, 2.5, 4.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.tick_brokers()
        for peer in self.peers.values():
            self.run_session(peer)

    @rule(broker=st.sampled_from([0, 1]))
    def broker_dies(self, broker: int) -> None:
        """kill -9: what was in transit to or from it is gone, and it answers nothing."""
        self.alive[broker] = False
        for peer in self.peers.values():
            if peer.at == broker:
                peer.inbox.clear()
                peer.replies.clear()
                peer.feed.clear()

    @rule(broker=st.sampled_from([0, 1]))
    def broker_starts(self, broker: int) -> None:
        """A new run (a new epoch, and here a new history) where a dead one was."""
        if not self.alive[broker]:
            self.cores[broker] = self.new_core()
            self.alive[broker] = True

    # --- invariants ----------------------------------------------------------------------------------

    @invariant()
    def deadlines_are_never_in_the_past(self) -> None:
        for peer in self.peers.values():
            if not peer.session.closed:
                assert peer.session.next_deadline() > self.now, (peer.session.name, self.now)

    @invariant()
    def nothing_is_published_twice_in_one_history(self) -> None:
        assert_once_per_history(self.published)

    @invariant()
    def each_sender_is_stored_in_the_order_written(self) -> None:
        assert_in_written_order(self.published, {name: peer.written for name, peer in self.peers.items()})

    @invariant()
    def nothing_is_acked_twice(self) -> None:
        for peer in self.peers.values():
            assert all(n == 1 for n in peer.acked.values()), peer.acked

    # --- the end: one broker up, and everything gets through --------------------------------------------

    def teardown(self) -> None:
        if not hasattr(self, "cores"):
            return
        if not any(self.alive):
            self.broker_starts(0)
        quiet_since = self.now
        for _ in range(600):
            if self.deliver_all():
                continue
            quiet = all(p.session.state is State.READY and not p.session.queue for p in self.peers.values())
            if quiet and self.now > quiet_since + MISSED_HEARTBEATS:
                break
            if not quiet:
                quiet_since = self.now
            self.now += 0.25
            self.tick_brokers()
        for name, peer in self.peers.items():
            assert peer.session.state is State.READY, (name, peer.session.state)
            assert self.alive[peer.at], (name, "talks to a dead broker", peer.at)
            never = [text for text in peer.written if peer.acked.get(text, 0) == 0]
            assert not never, (name, never[:5])
        self.nothing_is_published_twice_in_one_history()
        self.each_sender_is_stored_in_the_order_written()
        self.nothing_is_acked_twice()


SessionsOverTwoBrokers.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_sessions_over_two_brokers = SessionsOverTwoBrokers.TestCase
