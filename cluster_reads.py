"""A front door's history reads from the cluster's log (issue 17): what a ``history`` request asks for that is
older than the front door's memory, read from the stream.

A front door keeps in memory what it saw since it started; for older events (or a room it has not seen) the
core says ``chat.ReadLog``, and a walk follows the room's subject in the stream, one event per round trip
(``nats_bridge.next``: ~1 ms on nats-server 2.9, and no faster through a consumer).  So a walk replies after
``READ_CHUNK`` events, or what fills ``--max-reply-bytes``, or where the front door's memory begins, saying
``more``: each reply comes well within a client's patience, however far back it asks, and walks share the
log in turns.  A client that asks again while its walk goes on (its patience ran out first) joins its walk:
the cluster soak showed what happens otherwise, 30 walks sharing the log and none finishing.

A ``join`` of a room whose recent past the front door has not seen (it started since) waits for a backward
read (``chat.ReadRecent``): the log reads only forwards, so it probes back from the newest event memory
lacks, each probe walking a stretch of the stream twice as long as the last, further back (the first guess
from how thinly the room's events are spread), until it has the events a ``joined`` shows, or reaches the
stream's start, or spent its steps.  One read per room: every join of the room meanwhile waits for it, and what it
found is kept in memory, so the next join reads nothing.

Sans-I/O apart from the bridge it is handed (a stand-in in the tests): requests and the bridge's answers in,
``ChatCore.history_read`` replies out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from chat import UNKNOWN, ChatCore, Output, ReadLog, ReadRecent
from cluster_feed import LOG_PREFIX, STREAM
from cluster_roster import name_key
from nats_bridge import Failed, KvResult, NatsBridge, Stored

#: Walks at once (each holds at most ``READ_CHUNK`` events and ``--max-reply-bytes``): more are refused
#: (``unavailable``, retry later), so what history requests can make a front door hold is bounded.
MAX_READS = 64
#: Walks of one source at once (a CURVE key, else an address; each connection of a trusted gateway is one):
#: one source cannot take every walk from the others.
MAX_READS_PER_SOURCE = 8
#: How long a walk asks the log again for a step it did not answer (a leader election takes ~5 s).
READ_RETRY_S = 10.0
#: The key-value bucket of each room's newest topic event (``<position> <stored bytes>``, by the room's
#: ``name_key``), written by the front door whose topic the log took: a front door that started since reads
#: it when someone first joins the room there.
TOPICS = "chat_topics"
#: Events one walk reads before it replies.
READ_CHUNK = 200
#: Steps a join's backward read may take, per event it wants (each probe also takes one step past its end).
RECENT_STEPS_PER_EVENT = 6
#: Joins' backward reads of one source at once (each is one room's, and every join of the room waits for it;
#: a ``hello`` may name 32 rooms): past it, or past ``MAX_READS`` reads of any kind, a join gets memory's.
MAX_RECENT_PER_SOURCE = 32
#: How long joins wait for a backward read the log does not answer before they get memory's events only.
RECENT_PATIENCE_S = 1.5


@dataclass
class _Walk:
    """A history read walking the log: the request, the events found so far (seq, prev, stored bytes), until
    when a step the log did not answer is asked again, and the step waiting for the log (0: none just now)."""

    read: ReadLog
    until: float
    found: list[tuple[int, int, bytes]] = field(default_factory=list)
    found_bytes: int = 0
    token: int = 0
    again_at: float = 0.0

    @property
    def key(self) -> tuple[bytes, str]:
        return self.read.peer, self.read.room

    @property
    def after(self) -> int:
        return self.found[-1][0] if self.found else self.read.after


@dataclass
class _Backward:
    """A join's read of a room's newest events before ``upper``: probe by probe, each walking forward from
    ``start`` to ``upper``, keeping the newest it met; then ``upper`` moves back to ``start``."""

    read: ReadRecent
    peers: list[bytes]
    until: float
    upper: int  # the events still wanted are at positions below it
    need: int  # how many more (one beyond the read's limit: the oldest then only says where the next begins)
    span: int
    steps_left: int
    start: int = 0
    window: deque[tuple[int, bytes]] = field(default_factory=deque)  # the probe's newest events so far
    let_go: int = -1  # the position of the last event the window let go (-1: none)
    found: list[tuple[int, bytes]] = field(default_factory=list)  # oldest first, none missing between
    held: int = 0  # the bytes of ``window`` and ``found``: no more than a reply holds (and one event)
    token: int = 0
    again_at: float = 0.0
    walked: bool = False  # the events are found (``events``); the joins wait for the topic too, if asked
    events: list[tuple[int, int, bytes]] = field(default_factory=list)
    topic_token: int = 0  # the lookup of the room's topic on its way (0: none)
    topic: tuple[int, bytes] | None = None  # what it found: the topic event's position and stored bytes

    @property
    def stepping(self) -> bool:
        """Waiting to take its next step (one the log did not answer is taken again)."""
        return not self.token and not self.walked

    @property
    def after(self) -> int:
        """Where the probe's next step begins: after the last event it met."""
        return self.window[-1][0] if self.window else self.start


class LogReads:
    """The walks of one front door: one per client and room, and by the token of the step the log answers."""

    def __init__(self, bridge: NatsBridge, core: ChatCore) -> None:
        self.bridge = bridge
        self.core = core
        self.walks: dict[tuple[bytes, str], _Walk] = {}
        self.recents: dict[str, _Backward] = {}  # by room
        self.topics: dict[int, _Backward] = {}  # by the token of its topic's lookup
        self.steps: dict[int, _Walk | _Backward] = {}

    def read(self, read: ReadLog) -> list[Output]:
        """Walk the room's subject from ``read.after``.  The same client asking again from the same place
        takes over its walk; from elsewhere, the old walk is dropped.  Past ``MAX_READS`` walks, or
        ``MAX_READS_PER_SOURCE`` of its source: refused."""
        walk = self.walks.pop((read.peer, read.room), None)
        if walk is not None and walk.read.after == read.after:
            walk.read = read
            self.walks[walk.key] = walk
            return []
        if walk is not None:
            self.steps.pop(walk.token, None)  # its answer, when it comes, is for nobody
        if self._full(read.source, self.walks.values(), MAX_READS_PER_SOURCE):
            return self.core.read_refused(read)
        walk = _Walk(read, time.monotonic() + READ_RETRY_S)
        self.walks[walk.key] = walk
        self._step(walk)
        return []

    def recent(self, read: ReadRecent) -> list[Output]:
        """A join's recent past: read backwards from ``read.below``; a join of the room meanwhile waits for the
        same read.  Past the bounds of walks: answered at once, from memory."""
        walk = self.recents.get(read.room)
        if walk is not None:
            walk.peers.append(read.peer)
            return []
        if self._full(read.source, self.recents.values(), MAX_RECENT_PER_SOURCE):
            return self.core.recent_read(read.room, [read.peer], [])
        need = read.limit + 1
        steps = RECENT_STEPS_PER_EVENT * need + 16
        walk = _Backward(
            read, [read.peer], time.monotonic() + RECENT_PATIENCE_S, read.below + 1, need, read.span, steps
        )
        self.recents[read.room] = walk
        if read.topic:  # the front door saw no topic event of the room: the cluster's copy of its topic
            walk.topic_token = self.bridge.kv("get", TOPICS, name_key(read.room))
            self.topics[walk.topic_token] = walk
        if not read.limit:
            walk.walked = True  # memory has the room's recent past: only the topic is wanted
        elif read.below == UNKNOWN:  # first where the room stands in the log (nowhere: a new room)
            self._step(walk)
        else:
            self._probe(walk)
        return []

    def _full(self, source: str, kind: Iterable[_Walk | _Backward], per_source: int) -> bool:
        """No more reads: ``MAX_READS`` of both kinds at once, or ``per_source`` of this ``kind``."""
        mine = sum(1 for other in kind if other.read.source == source)
        return len(self.walks) + len(self.recents) >= MAX_READS or mine >= per_source

    def owns(self, token: int) -> bool:
        return token in self.steps or token in self.topics

    def due(self) -> float:
        """When a step the log did not answer is asked again (infinity: none waits)."""
        waiting = [*self.walks.values(), *(walk for walk in self.recents.values() if walk.stepping)]
        return min((walk.again_at for walk in waiting if not walk.token), default=float("inf"))

    def tick(self, now: float) -> None:
        waiting = [*self.walks.values(), *(walk for walk in self.recents.values() if walk.stepping)]
        for walk in [w for w in waiting if not w.token and w.again_at <= now]:
            self._step(walk)

    def answered(self, event: Stored | Failed | KvResult, now: float) -> list[Output]:
        if isinstance(event, KvResult):
            return self._topic_found(event)
        walk = self.steps.pop(event.token)
        walk.token = 0
        if isinstance(walk, _Backward):
            return self._went_back(walk, event, now)
        return self._walked(walk, event, now)

    def _walked(self, walk: _Walk, event: Stored | Failed, now: float) -> list[Output]:
        """One more event for a walk (its ``prev`` is the one before: the walk follows the room), or the reply:
        the room has no more, or the walk has the request's ``limit``, its ``READ_CHUNK``, a reply's worth of
        bytes, or reached what this front door keeps in memory (the client asks on from there).  A step the
        log did not answer (no leader just now) is asked again a little later, until ``READ_RETRY_S``; then
        the reply is what was found, marked as not the end."""
        read, found = walk.read, walk.found
        if isinstance(event, Stored):
            found.append((event.seq, walk.after, event.data))
            walk.found_bytes += len(event.data)
            ended = bool(read.head) and event.seq >= read.head
            enough = (
                len(found) >= min(read.limit, READ_CHUNK)
                or walk.found_bytes >= self.core.config.max_reply_bytes  # no more would fit in the reply
                or 0 < read.kept_from <= event.seq
            )
            if not (ended or enough):
                self._step(walk)
                return []
            return self._reply(walk, ended)
        if event.reason == "not_found":
            return self._reply(walk, True)
        if now < walk.until:
            walk.again_at = now + 0.2
            return []
        return self._reply(walk, False)

    def _went_back(self, walk: _Backward, event: Stored | Failed, now: float) -> list[Output]:
        """One more event of a probe, or its end (an event at ``upper`` or beyond, or none): then the join's
        reply, or the next probe further back."""
        if walk.upper == 0:  # where the room stands: its newest event, read back from there
            if isinstance(event, Stored):
                walk.upper = event.seq + 1
                self._probe(walk)
                return []
            if isinstance(event, Failed) and event.reason == "not_found":
                return self._recalled(walk, 0)  # a new room
        elif isinstance(event, Stored) and event.seq < walk.upper:
            window = walk.window
            window.append((event.seq, event.data))
            walk.held += len(event.data)
            while len(window) > walk.need or (walk.held > self.core.config.max_reply_bytes and len(window) > 1):
                walk.let_go, data = window.popleft()  # the newest that fit in a reply are what a join shows
                walk.held -= len(data)
            walk.steps_left -= 1
            if walk.steps_left <= 0:  # a dense stretch: what the earlier probes found is what it shows
                return self._recalled(walk, None)
            self._step(walk)
            return []
        if isinstance(event, Failed) and event.reason != "not_found":
            if now < walk.until:
                walk.again_at = now + 0.2
                return []
            return self._recalled(walk, None)
        walk.found[:0] = walk.window  # every event of the room from the window's first to ``upper``
        walk.need -= len(walk.window)
        if walk.let_go >= 0:
            return self._recalled(walk, walk.let_go)
        if walk.start == 0:
            return self._recalled(walk, 0)  # the room's first event is among them
        walk.steps_left -= 1  # the step that ended the probe
        if walk.need <= 0 or walk.steps_left <= 0:  # (the oldest found only says where the next begins)
            return self._recalled(walk, None)
        walk.upper, walk.span = walk.start + 1, walk.span * 2
        self._probe(walk)
        return []

    def _probe(self, walk: _Backward) -> None:
        walk.start = max(0, walk.upper - 1 - walk.span)
        walk.window = deque()  # (what it held is in ``found`` now)
        walk.let_go = -1
        self._step(walk)

    def _recalled(self, walk: _Backward, before: int | None) -> list[Output]:
        """The read is done: the events found, each with the position of the one before it (``before``: the
        oldest one's; None, not known: the oldest only says where the next begins); the joins' replies once
        the topic asked for is found too."""
        found = walk.found
        prevs = [before if before is not None else -1, *(seq for seq, _ in found[:-1])][: len(found)]
        events = [(seq, prev, data) for (seq, data), prev in zip(found, prevs, strict=True) if prev >= 0]
        walk.events, walk.walked = events[-walk.read.limit :], True
        return self._answer_joins(walk)

    def _topic_found(self, answer: KvResult) -> list[Output]:
        """The cluster's copy of a room's topic event: ``<position> <stored bytes>`` (none, or unreadable:
        the room keeps what this front door knows)."""
        walk = self.topics.pop(answer.token)
        walk.topic_token = 0
        seq, _, data = (answer.value or b"").partition(b" ")
        if answer.error is None and seq.isdigit():
            walk.topic = int(seq), data
        return self._answer_joins(walk)

    def _answer_joins(self, walk: _Backward) -> list[Output]:
        """Once both the events and the topic asked for are found: the joins' replies."""
        if not walk.walked or walk.topic_token:
            return []
        del self.recents[walk.read.room]
        return self.core.recent_read(walk.read.room, walk.peers, walk.events, walk.topic)

    def _step(self, walk: _Walk | _Backward) -> None:
        subject = LOG_PREFIX + walk.read.room
        if isinstance(walk, _Backward) and walk.upper == 0:
            walk.token = self.bridge.last(STREAM, subject)
        else:
            walk.token = self.bridge.next(STREAM, subject, walk.after)
        self.steps[walk.token] = walk

    def _reply(self, walk: _Walk, ended: bool) -> list[Output]:
        del self.walks[walk.key]
        return self.core.history_read(walk.read, walk.found, ended)
