"""A front door's feed from the log (issue 17): each room's events as the stream stored them, in order and
exactly once, holes filled from the stream itself.

JetStream RePublishes every event it stores to ``feed.room.<room>``, with ``Nats-Sequence`` (its position)
and ``Nats-Last-Sequence`` (the position of the same room's previous event: protocol version 2's ``prev``).
A front door follows each room's chain with the clients' own ``sequencer.FeedSequencer``.  A hole (the bridge
dropped feed messages while the loop was busy, a reconnect to NATS lost some) is filled by walking the room's
subject in the stream: ``Fetch(room, after)`` asks for the first event stored after ``after``, whose ``prev``
is therefore ``after``, until the chain closes.  After the bridge says it dropped messages, every room is
checked that way once (a room with no later event would show its hole to nobody).

Exactly once also by identity: a message (a user's id) handed on lately is not handed on again, and the
event after it chains to what was.  nats-server 2.9.10 was seen (a cluster soak, a stream leader killed
mid-write) republishing three messages a second time at positions its stream did not keep, each ``prev`` the
first copy: loggers logged them twice.

A room seen for the first time starts at its first event's ``prev``: a front door follows rooms from when it
started, and reads older history on demand.  So a room nobody here is in can be forgotten (``trim``: the
rooms quiet longest first, past a bound), and is followed again from its next event: anyone can make rooms,
and what following them costs must not grow for ever.  Sans-I/O: the bridge's messages and answers in; events in
order, and fetches to make, out.  At most one fetch per room is outstanding.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Container
from dataclasses import dataclass, replace

import msgspec

from sequencer import FeedSequencer, Sequenced

#: The stream every room's events are in.
STREAM = "CHAT"
#: Where the stream republishes room events: ``feed.room.<room>``.
FEED_PREFIX = "feed.room."
#: Where room events are stored: ``chat.room.<room>``, one subject per room in one stream.
LOG_PREFIX = "chat.room."
#: Stream positions are unsigned 64-bit; a header claiming more is not the stream's (and would not encode).
MAX_POSITION = 2**63
#: Messages remembered as handed on (user and id), for a republished copy to be known: at the cluster's
#: ~1,000 msgs/s, over a minute, much longer than a leader election (~5 s).  About 100 bytes each.
RECENT_MESSAGES = 65_536
#: How a message event's stored bytes begin (``messages.encode`` writes ``type`` first).
MSG_EVENT = b'{"type":"msg",'


class _Identity(msgspec.Struct):
    user: str = ""
    id: str = ""


_identity = msgspec.json.Decoder(_Identity).decode


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A room event as the log stored it: its position, the room's previous position, the stored bytes."""

    room: str
    seq: int
    prev: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask the stream for ``room``'s first event stored after position ``after`` (``nats_bridge.next``)."""

    room: str
    after: int

    @property
    def subject(self) -> str:
        return LOG_PREFIX + self.room


Out = tuple[list[LogEvent], list[Fetch]]


class ClusterFeed:
    """Per room: the chain followed so far, events held beyond a hole, and the fetch filling it."""

    def __init__(self) -> None:
        self.sequencer = FeedSequencer()
        self.fetching: dict[str, int] = {}  # room -> the ``after`` of its outstanding fetch
        #: Rooms checked after a drop: their walk goes on to the stream's end (``missing``), not only until
        #: their chain closes, as a hole at a room's end shows in no later event.
        self.walking: set[str] = set()
        #: room -> the position of the last event handed on; the room that spoke last, last
        self.handed: dict[str, int] = {}
        self.recent: deque[str] = deque()  # messages handed on lately (``RECENT_MESSAGES``), oldest first
        self.recent_set: set[str] = set()
        self.repeated = 0  # messages not handed on again

    def message(self, subject: str, headers: dict[str, str], data: bytes) -> Out:
        """A republished event arrived (``nats_bridge.Message``); anything else on the feed is ignored."""
        try:
            seq, prev = int(headers["Nats-Sequence"]), int(headers["Nats-Last-Sequence"])
        except (KeyError, ValueError):
            return [], []
        if not subject.startswith(FEED_PREFIX) or not 0 <= prev < seq < MAX_POSITION:
            return [], []
        event = LogEvent(subject[len(FEED_PREFIX) :], seq, prev, data)
        if event.room not in self.sequencer.last:
            self.sequencer.expect(event.room, prev)  # first sight: the room starts here for us
        return self._out(event.room, *self.sequencer.push(event))

    def stored(self, fetch: Fetch, seq: int, data: bytes) -> Out:
        """The answer to ``fetch``: the event stored at ``seq``, the first of the room after ``fetch.after``."""
        if self.fetching.get(fetch.room) != fetch.after:
            return [], []  # not the outstanding fetch (the room was forgotten meanwhile)
        del self.fetching[fetch.room]
        if seq <= fetch.after:
            return self._out(fetch.room, [], fetch.after)  # not what was asked: ask again
        event = LogEvent(fetch.room, seq, fetch.after, data)
        ready, after = self.sequencer.fill(fetch.room, [event], head=seq)
        if after is None and fetch.room in self.walking:
            after = self.sequencer.last[fetch.room]
        return self._out(fetch.room, ready, after)

    def missing(self, fetch: Fetch) -> Out:
        """The stream has nothing of the room after ``fetch.after``.  So the events held beyond the hole are
        not in it either (the stream republishes only what it stored, and the walk reads the stream itself):
        they were not the stream's, or were deleted since (limits, a purge), and they go, unpublished."""
        if self.fetching.get(fetch.room) != fetch.after:
            return [], []
        del self.fetching[fetch.room]
        self.walking.discard(fetch.room)
        self.sequencer.drop_held(fetch.room)
        return [], []

    def failed(self, fetch: Fetch) -> list[Fetch]:
        """A fetch got no answer (no leader just now): it is made again."""
        if self.fetching.get(fetch.room) != fetch.after:
            return []
        del self.fetching[fetch.room]
        return self._out(fetch.room, [], fetch.after)[1]

    def dropped(self) -> list[Fetch]:
        """The bridge dropped feed messages: every room followed is checked for events after its last."""
        fetches = []
        self.walking.update(self.sequencer.last)
        for room, last in self.sequencer.last.items():
            if room not in self.fetching:
                self.fetching[room] = last
                fetches.append(Fetch(room, last))
        return fetches

    def forget(self, room: str) -> None:
        """The front door stops following ``room`` (no local member): its chain and held events go."""
        self.sequencer.forget(room)
        self.fetching.pop(room, None)
        self.walking.discard(room)
        self.handed.pop(room, None)

    def trim(self, most: int, keep: Container[str]) -> None:
        """Past ``most`` rooms followed, forget those quiet longest, but not those in ``keep`` (a member
        here) or filling a hole."""
        excess = len(self.handed) - most
        if excess <= 0:
            return
        for room in [r for r in itertools.islice(self.handed, 2 * excess) if r not in keep and r not in self.fetching]:
            self.forget(room)
            excess -= 1
            if not excess:
                return

    def _once(self, events: list[LogEvent]) -> list[LogEvent]:
        """``events`` (one room's, in chain order) less the messages handed on lately, each ``prev`` the event
        handed on before it."""
        out = []
        for event in events:
            key = _key_of(event.data)
            if key is not None and key in self.recent_set:
                self.repeated += 1
                continue
            last = self.handed.pop(event.room, None)
            if last is not None and event.prev != last:
                event = replace(event, prev=last)  # it followed a copy that was not handed on
            self.handed[event.room] = event.seq
            out.append(event)
            if key is not None:
                self.recent.append(key)
                self.recent_set.add(key)
                if len(self.recent) > RECENT_MESSAGES:
                    self.recent_set.discard(self.recent.popleft())
        return out

    def _out(self, room: str, ready: list[Sequenced], fetch_after: int | None) -> Out:
        events = self._once(ready)  # type: ignore[arg-type]  # what went in: LogEvents
        if fetch_after is None or room in self.fetching:
            return events, []
        self.fetching[room] = fetch_after
        return events, [Fetch(room, fetch_after)]


def _key_of(data: bytes) -> str | None:
    """A message event's identity (its user, folded, and id); None for other events."""
    if not data.startswith(MSG_EVENT):
        return None
    try:
        found = _identity(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return f"{found.user.casefold()} {found.id}"
