"""Gap filling: each room's feed events in ``seq`` order, exactly once (the zguide Clone pattern).

An event follows the last one delivered when its ``prev`` (protocol version 2: the position of the room's
previous event) is that one's ``seq``.  A single broker numbers a room 1, 2, 3...; a cluster's positions are
its log's and skip numbers, so only ``prev`` tells a hole from none.  An event without ``prev`` (a version-1
broker, history stored before version 2) has ``seq - 1`` as its ``prev``.

Sans-I/O and shared in spirit with ``static/chat.js``: both run the vectors in
``tests/vectors/sequencer.json``.  Events go in (from the feed, or from a
``history`` reply), events in order come out, plus "fetch history after N"
when there is a hole (a PUB high-water-mark drop, a subscription that arrived
late, a reconnect).

A room's events are held until its baseline is known: ``expect`` gives it (from
a ``joined`` reply, a ``rooms`` snapshot or a feed ``head``), or
``unknown_baseline`` does for rooms nobody announced (0 for an observer that has
its snapshot: a room it has never heard of is new, so everything from its first
event is wanted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

#: Events held per room while waiting for a gap to be filled; past this the hole is skipped.
MAX_HELD_PER_ROOM = 10_000
#: The same in bytes (as Python holds them, estimated), per room and for all rooms together: past either,
#: the newest held events (of the room holding most) are let go, to be fetched with the hole before them,
#: so what a feed can make a client hold stays bounded (by these, plus one event per room).
MAX_HELD_BYTES_PER_ROOM = 16 * 1024 * 1024
MAX_HELD_BYTES = 64 * 1024 * 1024
#: What holding one event costs beyond its text (the object, its fields, the dict slot).
HELD_OVERHEAD = 400


class Sequenced(Protocol):
    room: str
    seq: int  # and ``prev``, where the broker sent it (``prev_of``)


def prev_of(event: Sequenced) -> int:
    """The position of the room's event before ``event``: its ``prev``, or ``seq - 1`` when it has none (or
    one that is not before it: a chain must go forward)."""
    prev = getattr(event, "prev", None)
    return prev if type(prev) is int and prev < event.seq else event.seq - 1


#: What to deliver now, in order, and the seq to fetch history after (None: no hole).
Settled = tuple[list[Sequenced], int | None]


def history_complete(events: Sequence[Sequenced], head: int, more: bool) -> bool:
    """Did a ``history`` reply bring all the broker has after what we asked for?  Not when it says
    ``more`` (cut at the reply's byte budget), and not when its last event is short of the room's head
    ``seq`` (cut at ``limit``); an empty reply is complete: the broker has nothing after ``after``."""
    return not more and (not events or events[-1].seq >= head)


class FeedSequencer:
    """Per room: the last seq delivered, and the events held beyond a hole."""

    def __init__(self, unknown_baseline: int | None = None) -> None:
        self.unknown_baseline = unknown_baseline
        self.last: dict[str, int] = {}
        self.held: dict[str, dict[int, Sequenced]] = {}  # room -> seq -> event
        self.chain: dict[str, dict[int, int]] = {}  # room -> prev -> seq, of the held events
        self.held_bytes: dict[str, int] = {}  # per room, estimated (``_cost``)
        self.total_bytes = 0
        self.lost = 0  # events skipped because the broker no longer had them
        self.filled = 0  # events that came from history, not the feed (the feed dropped them, or was late)

    def expect(self, room: str, head: int) -> Settled:
        """The broker says ``room``'s last seq is ``head``; returns what can be delivered and any fetch needed.

        First sight: ``head`` is the baseline (everything up to it is known).  Known room and the broker is
        ahead: fetch what we missed.  ``head`` behind what we have is only an answer older than events the
        feed already brought (reply and feed travel apart): nothing to do.  When the broker's history
        really started over, the caller sees a new ``history_id`` and calls ``reset`` first.
        """
        if room not in self.last:
            self.last[room] = head
            held = self.held.get(room, {})
            for seq in [s for s in held if s <= head]:
                self._drop(room, seq)  # held before the baseline, and older than it: known already
            if not held:
                self._let_go(room)
        ready, fetch = self._settle(room)
        if fetch is None and head > self.last[room]:
            fetch = self.last[room]
        return ready, fetch

    def drop_held(self, room: str) -> int:
        """The events held for ``room`` beyond its hole are not to be delivered (the log has none of them);
        returns how many.  What was delivered stays."""
        count = len(self.held.get(room, {}))
        self._let_go(room)
        return count

    def forget(self, room: str) -> None:
        self.last.pop(room, None)
        self._let_go(room)

    def reset(self) -> None:
        """The broker's history started over (a new database, or none): every seq we hold is void."""
        self.last.clear()
        self.held.clear()
        self.chain.clear()
        self.held_bytes.clear()
        self.total_bytes = 0

    def push(self, event: Sequenced) -> Settled:
        room, seq = event.room, event.seq
        last = self.last.get(room)
        if last is None:
            if self.unknown_baseline is None:
                self._hold(room, event)
                return [], None
            self.last[room] = last = self.unknown_baseline
        if seq <= last:
            return [], None  # already delivered
        if room not in self.held and prev_of(event) == last:
            self.last[room] = seq  # the common case: in order, nothing held
            return [event], None
        self._hold(room, event)
        return self._settle(room)

    def fill(self, room: str, events: Sequence[Sequenced], head: int, more: bool = False) -> Settled:
        """A ``history`` reply for ``room`` arrived: its ``events``, the room's ``head`` seq, its ``more``.

        Complete (see ``history_complete``): a hole it did not fill is gone for good, so it is skipped.
        Not complete: ask again after the last event it brought."""
        if room not in self.last:
            return [], None
        held = self.held.get(room, {})
        for event in events:  # the history's word on a position is the last: a feed event it disagrees with goes
            if event.seq in held and prev_of(held[event.seq]) != prev_of(event):
                self._drop(room, event.seq)
        fresh = [e for e in events if e.seq > self.last[room] and e.seq not in held]
        self.filled += len(fresh)
        for event in fresh:
            self._hold(room, event)
        ready, fetch = self._settle(room)
        if not history_complete(events, head, more):
            reached = events[-1].seq if events else self.last[room]
            return ready, max(reached, self.last[room])
        while fetch is not None:
            # The broker no longer keeps what we missed up to its head: skip over that hole rather than wait
            # forever.  A hole past the head (the reply is older than what the feed brought) is asked again.
            held = self.held[room]
            skip_past = min(prev_of(held[min(held)]), head)
            if skip_past <= self.last[room]:
                break
            self._skip_past(room, skip_past)
            later, fetch = self._settle(room)
            ready += later
        return ready, fetch

    def _hold(self, room: str, event: Sequenced) -> None:
        held = self.held.setdefault(room, {})
        if event.seq in held:
            return
        held[event.seq] = event
        self.chain.setdefault(room, {})[prev_of(event)] = event.seq
        self._count(room, _cost(event))
        if len(held) > MAX_HELD_PER_ROOM:
            if room in self.last:
                self._skip_past(room, prev_of(held[min(held)]))
            else:
                self._drop(room, min(held))  # no baseline yet: the oldest can be fetched again once there is one
        while self.held_bytes[room] > MAX_HELD_BYTES_PER_ROOM and len(held) > 1:
            self._drop(room, max(held))
        while self.total_bytes > MAX_HELD_BYTES:
            largest = max(self.held_bytes, key=self.held_bytes.__getitem__)
            if len(self.held[largest]) <= 1:
                break
            self._drop(largest, max(self.held[largest]))

    # Past a byte bound, held events are let go newest first: nothing is lost by it, as the room's first
    # hole stays (its oldest held event shows it) and the fetch that fills it brings everything after it.

    def _count(self, room: str, cost: int) -> None:
        self.held_bytes[room] = self.held_bytes.get(room, 0) + cost
        self.total_bytes += cost

    def _drop(self, room: str, seq: int) -> Sequenced:
        event = self.held[room].pop(seq)
        chain = self.chain[room]
        if chain.get(prev_of(event)) == seq:
            del chain[prev_of(event)]
        self._count(room, -_cost(event))
        return event

    def _let_go(self, room: str) -> None:
        self.held.pop(room, None)
        self.chain.pop(room, None)
        self.total_bytes -= self.held_bytes.pop(room, 0)

    def _skip_past(self, room: str, position: int) -> None:
        """Take everything up to ``position`` as delivered (the broker no longer has it); ``lost`` counts the
        positions skipped (events, on a single broker)."""
        self.lost += max(0, position - self.last[room])
        self.last[room] = max(self.last[room], position)

    def _settle(self, room: str) -> Settled:
        held = self.held.get(room)
        if not held:
            return [], None
        chain, last = self.chain[room], self.last[room]
        ready = []
        while last in chain:
            seq = chain[last]
            ready.append(self._drop(room, seq))
            last = seq
        self.last[room] = last
        for seq in [seq for seq in held if seq <= last]:  # off the chain (two events named one prev): passed
            self._drop(room, seq)
        if held:
            return ready, last
        self._let_go(room)
        return ready, None


def _cost(event: Sequenced) -> int:
    """What holding ``event`` costs, estimated: its text at up to 4 bytes a character (or, for an event
    still in its stored bytes, as a front door holds them: ``cluster_feed``, those bytes), and the rest."""
    text = getattr(event, "text", "")
    if type(text) is str:
        return HELD_OVERHEAD + 4 * len(text)
    data = getattr(event, "data", b"")
    return HELD_OVERHEAD + len(data) if type(data) is bytes else HELD_OVERHEAD
