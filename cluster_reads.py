"""A front door's history reads from the cluster's log (issue 17): what a ``history`` request asks for that is
older than the front door's memory, read from the stream.

A front door keeps in memory what it saw since it started; for older events (or a room it has not seen) the
core says ``chat.ReadLog``, and a walk follows the room's subject in the stream, one event per round trip
(``nats_bridge.next``: ~1 ms on nats-server 2.9, and no faster through a consumer).  So a walk replies after
``READ_CHUNK`` events, or what fills ``--max-reply-bytes``, or where the front door's memory begins, saying
``more``: each reply comes well within a client's patience, however far back it asks, and walks share the
log in turns.  A client that asks again while its walk goes on (its patience ran out first) joins its walk:
the cluster soak showed what happens otherwise, 30 walks sharing the log and none finishing.

Sans-I/O apart from the bridge it is handed (a stand-in in the tests): requests and the bridge's answers in,
``ChatCore.history_read`` replies out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from chat import ChatCore, Output, ReadLog
from cluster_feed import LOG_PREFIX, STREAM
from nats_bridge import Failed, NatsBridge, Stored

#: Walks at once (each holds at most ``READ_CHUNK`` events and ``--max-reply-bytes``): more are refused
#: (``unavailable``, retry later), so what history requests can make a front door hold is bounded.
MAX_READS = 64
#: Walks of one source at once (a CURVE key, else an address; each connection of a trusted gateway is one):
#: one source cannot take every walk from the others.
MAX_READS_PER_SOURCE = 8
#: How long a walk asks the log again for a step it did not answer (a leader election takes ~5 s).
READ_RETRY_S = 10.0
#: Events one walk reads before it replies.
READ_CHUNK = 200


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


class LogReads:
    """The walks of one front door: one per client and room, and by the token of the step the log answers."""

    def __init__(self, bridge: NatsBridge, core: ChatCore) -> None:
        self.bridge = bridge
        self.core = core
        self.walks: dict[tuple[bytes, str], _Walk] = {}
        self.steps: dict[int, _Walk] = {}

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
        mine = sum(1 for other in self.walks.values() if other.read.source == read.source)
        if len(self.walks) >= MAX_READS or mine >= MAX_READS_PER_SOURCE:
            return self.core.read_refused(read)
        walk = _Walk(read, time.monotonic() + READ_RETRY_S)
        self.walks[walk.key] = walk
        self._step(walk)
        return []

    def owns(self, token: int) -> bool:
        return token in self.steps

    def due(self) -> float:
        """When a step the log did not answer is asked again (infinity: none waits)."""
        return min((walk.again_at for walk in self.walks.values() if not walk.token), default=float("inf"))

    def tick(self, now: float) -> None:
        for walk in [walk for walk in self.walks.values() if not walk.token and walk.again_at <= now]:
            self._step(walk)

    def answered(self, event: Stored | Failed, now: float) -> list[Output]:
        """One more event for a walk (its ``prev`` is the one before: the walk follows the room), or the reply:
        the room has no more, or the walk has the request's ``limit``, its ``READ_CHUNK``, a reply's worth of
        bytes, or reached what this front door keeps in memory (the client asks on from there).  A step the
        log did not answer (no leader just now) is asked again a little later, until ``READ_RETRY_S``; then
        the reply is what was found, marked as not the end."""
        walk = self.steps.pop(event.token)
        walk.token = 0
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

    def _step(self, walk: _Walk) -> None:
        walk.token = self.bridge.next(STREAM, LOG_PREFIX + walk.read.room, walk.after)
        self.steps[walk.token] = walk

    def _reply(self, walk: _Walk, ended: bool) -> list[Output]:
        del self.walks[walk.key]
        return self.core.history_read(walk.read, walk.found, ended)
