"""A front door's roster of the cluster (issue 17): who is in which room on which front door, and which front
doors are alive, so that ``who`` and ``joined`` list the whole cluster and a dead front door's members are told
gone.

- **Members:** the bucket ``chat_members`` holds ``<room>.<name>`` -> the user, their front door and their away
  reason.  The core says ``chat.Member`` as people join, leave, rename and go away or come back; each key's
  changes go one at a time, in order.  Every front door watches the whole bucket (the Clone pattern: its
  keys, then each change, in the bucket's order) and keeps the members of the others' that live in
  ``ChatCore.elsewhere``, so ``who`` and ``joined`` answer at once, without asking NATS.  A watch that
  ends or falls behind is begun again; the keys it tells again replace what was kept, and what it no
  longer tells is forgotten.  What is kept is bounded by ``--max-roster-bytes``.
- **Front doors:** each holds a lease, its key in ``chat_doors`` (renewed by ``front_door``).  Every
  ``DOOR_SCAN_S`` the roster lists the leases: one missing from two listings in a row has died (one missing
  once may only have lost a renewal in an election).  Then the members are swept: each of a dead front
  door's is struck by compare-and-set (of front doors sweeping at once, one wins) and told gone (a ``leave``,
  reason ``timeout``, under a log id of the member's and the dead door's, so the log stores it once).  The
  first sweep, after the second listing, also finds members of front doors that died while none was running.

A member's key deleted is cleared from the bucket ``PURGE_AFTER_S`` later by the front door that deleted it
(the bucket would otherwise keep a marker of every room and name ever used, which every watch replays).

Sans-I/O apart from the bridge it is handed (a stand-in in the tests): the core's outputs and the bridge's
answers in, the core's view of the others' members and the leaves for the log out.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import msgspec

import messages as m
from chat import ChatCore, Member, Output
from nats_bridge import Changed, Failed, KvEntries, KvResult, NatsBridge

log = logging.getLogger("chat-broker")

#: The buckets of front doors' leases and of who is in which room on which front door.
DOORS, MEMBERS = "chat_doors", "chat_members"
#: How often the leases are listed.
DOOR_SCAN_S = 2.0
#: How long a member's change the bucket did not take waits before it is tried again.
CHANGE_RETRY_S = 0.5
#: How long after a member's delete its marker is cleared from the bucket.  The bucket keeps the newest
#: message of every key, deletes too, and every watch begun tells them all: the attack on the roster made
#: 6,913 in 40 s from one address, and a front door starting behind 300,000 of them spent 15 s of CPU.
#: Cleared at once, a watch that lags behind would miss the delete.
PURGE_AFTER_S = 10.0
#: How long a watch that ended waits before it is begun again.
REWATCH_S = 1.0
#: What one kept member costs beyond its key's and value's bytes (the entry, its place in the core's view).
ENTRY_OVERHEAD = 200


def name_key(text: str) -> str:
    """A name (or room) as a key-value key, which allows fewer characters than a name, and no final dot."""
    return text.encode().hex()


def member_key(room: str, folded: str) -> str:
    """A room member's key in ``chat_members``: ``<room>.<name>`` (a room's members: ``<room>.*``)."""
    return f"{name_key(room)}.{name_key(folded)}"


def room_of(key: str) -> str | None:
    return _part(key, 0)


def folded_of(key: str) -> str | None:
    return _part(key, 1)


def _part(key: str, index: int) -> str | None:
    try:
        return bytes.fromhex(key.split(".")[index]).decode()
    except (ValueError, IndexError):
        return None


def roster_entry(value: bytes) -> tuple[str, str, str] | None:
    """(user, front door, away reason) of a roster value; None if it is not one a front door wrote."""
    try:
        entry = msgspec.json.decode(value, type=dict[str, str])
        return entry["user"], entry["door"], entry.get("away", "")[: m.MAX_AWAY_CHARS]
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
        return None


@dataclass(slots=True)
class _Entry:
    """A member of the roster, as the watch told it."""

    room: str
    folded: str
    user: str
    door: str
    away: str
    revision: int
    size: int  # what keeping it costs (``--max-roster-bytes``)


class Roster:
    """One front door's part of the roster: its changes on their way, its watch of everyone's, its view of the
    other front doors, and its sweeps of their members."""

    def __init__(self, bridge: NatsBridge, core: ChatCore, door_id: str) -> None:
        self.bridge = bridge
        self.core = core
        self.door_id = door_id
        self.changes: dict[str, deque[Member]] = {}  # per member key, not yet answered (the first is asked)
        self.changing: dict[int, str] = {}  # bridge token -> the member key it changes
        self.retries: dict[str, float] = {}  # member key -> when its change the bucket did not take goes again
        #: Deletes this front door made (of its members, or of a dead front door's it struck), to be cleared
        #: from the bucket a little later: (when, key, the delete's revision).
        self.purges: deque[tuple[float, str, int]] = deque()
        #: The bucket as the watch told it (key -> member), and what that holds in bytes.
        self.entries: dict[str, _Entry] = {}
        self.entry_bytes = 0
        self.watching: int | None = None  # the watch's token
        self.told: set[str] | None = None  # a watch begun again: the keys it told, until it told them all
        self.caught_up = False  # the watch told every key that was there when it began
        self.rewatch_at = float("inf")
        self.over_bound = False  # said once: the roster holds more than --max-roster-bytes
        #: The front doors of the last listing of leases, and those missing from it for the first time.
        self.live_doors: set[str] = set()
        self.suspects: set[str] = set()
        self.door_scan: int | None = None  # the listing of leases on its way
        self.sweeps = 0
        self.sweep_due = False  # a sweep waits for the watch to have told every key
        self.next_door_scan = 0.0
        #: bridge token -> a dead front door's member being struck (a CAS delete): its key and entry.
        self.taking: dict[int, tuple[str, _Entry]] = {}

    def owns(self, token: int) -> bool:
        return token in self.changing or token in self.taking or token in (self.door_scan, self.watching)

    def settled(self, key: str) -> bool:
        """Has the bucket taken every change of ``key`` this front door made?"""
        return key not in self.changes

    def pending(self) -> int:
        """Changes not yet answered by the bucket (a stopping front door waits for them)."""
        return sum(map(len, self.changes.values()))

    def due(self) -> float:
        purge = self.purges[0][0] if self.purges else float("inf")
        return min(self.next_door_scan, self.rewatch_at, purge, *self.retries.values())

    def tick(self, now: float) -> None:
        if now >= self.next_door_scan:
            if self.door_scan is None:
                self.door_scan = self.bridge.kv_list(DOORS, ">")
            self.next_door_scan = now + DOOR_SCAN_S
        if now >= self.rewatch_at:
            self.watch()
        while self.purges and self.purges[0][0] <= now:
            _, key, revision = self.purges.popleft()
            self.bridge.kv_purge(MEMBERS, key, revision)  # (not awaited: a marker left costs a replay, no more)
        for key in [key for key, at in self.retries.items() if at <= now]:
            del self.retries[key]
            newest = self.changes[key][-1]  # (changes made meanwhile: only the newest counts)
            self.changes[key] = deque([newest])
            self._change(key, newest)

    def watch(self) -> None:
        """Watch the bucket (again: a watch that ended, fell behind, or lived through a reconnection).  What
        is kept stays until the new watch has told every key; then what it did not tell is forgotten."""
        if self.watching is not None:
            self.bridge.unwatch(self.watching)
        self.watching = self.bridge.watch(MEMBERS, ">")
        self.told = set() if self.entries else None
        self.caught_up = False
        self.rewatch_at = float("inf")

    def member(self, member: Member) -> None:
        """Record (or strike) a member here, behind the key's earlier changes."""
        key = member_key(member.room, member.folded)
        queue = self.changes.setdefault(key, deque())
        queue.append(member)
        if len(queue) == 1:
            self._change(key, member)

    def changed(self, change: Changed, now: float) -> None:
        """A key the watch told: kept (a member of another live front door shows in the core's view), or
        forgotten (deleted).  No key: every key there was is told."""
        if change.token != self.watching:
            return  # an earlier watch's
        if not change.key:
            self._caught_up()
            return
        gone = self._forget(change.key)
        if change.value is None:
            if (gone is not None and gone.door == self.door_id) or change.key in self._taking_keys():
                self.purges.append((now + PURGE_AFTER_S, change.key, change.revision))  # ours to clear away
            return
        entry, room, folded = roster_entry(change.value), room_of(change.key), folded_of(change.key)
        if entry is None or room is None or folded is None:
            return  # not what a front door writes: the bucket is shared infrastructure, not a peer
        size = len(change.key) + len(change.value) + ENTRY_OVERHEAD
        if self.entry_bytes + size > self.core.config.max_roster_bytes:
            if not self.over_bound:
                log.warning("cluster: the roster holds over --max-roster-bytes; who and joined list fewer")
                self.over_bound = True
            return
        user, door, away = entry
        kept = self.entries[change.key] = _Entry(room, folded, user, door, away, change.revision, size)
        self.entry_bytes += size
        if self.told is not None:
            self.told.add(change.key)
        self._place(kept)

    def failed(self, now: float) -> None:
        """The watch ended (its consumer lost, the connection closed): begun again soon."""
        self.watching = None
        self.rewatch_at = now + REWATCH_S

    def rewatch(self, now: float) -> None:
        """The watch may have missed a change (the loop fell behind the feed that brings them, or the connection
        was down): begun again soon.  Not at once: each new watch tells every key again, and that must not
        feed a loop that already falls behind."""
        if self.watching is not None:
            self.rewatch_at = min(self.rewatch_at, now + REWATCH_S)

    def answered(self, event: KvResult | KvEntries | Failed, now: float) -> list[Output]:
        token = event.token
        if token == self.watching:
            self.failed(now)
        elif isinstance(event, KvResult) and token in self.changing:
            self._changed(event, now)
        elif isinstance(event, KvResult) and token in self.taking:
            return self._taken(event, now)
        elif isinstance(event, KvEntries) and token == self.door_scan:
            self._doors_listed(event)
        return []

    def _caught_up(self) -> None:
        if self.told is not None:
            for key in [key for key in self.entries if key not in self.told]:
                self._forget(key)
            self.told = None
        self.caught_up = True
        if self.sweep_due:
            self._sweep()

    def _forget(self, key: str) -> _Entry | None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return None
        self.entry_bytes -= entry.size
        if self.over_bound and self.entry_bytes < self.core.config.max_roster_bytes * 0.9:
            self.over_bound = False  # room again for those it refused: a new watch tells them
            self.rewatch_at = 0.0
        members = self.core.elsewhere.get(entry.room)
        if members is not None and members.pop(entry.folded, None) is not None and not members:
            del self.core.elsewhere[entry.room]
        return entry

    def _place(self, entry: _Entry) -> None:
        """Show ``entry`` in the core's view of the others' members, or not: only another front door's that
        lives (as far as the last listing of leases knows)."""
        members = self.core.elsewhere.get(entry.room)
        if entry.door != self.door_id and self._alive(entry.door):
            self.core.elsewhere.setdefault(entry.room, {})[entry.folded] = (entry.user, entry.away)
        elif members is not None and members.pop(entry.folded, None) is not None and not members:
            del self.core.elsewhere[entry.room]

    def _change(self, key: str, member: Member) -> None:
        if member.present:
            entry = {"user": member.user, "door": self.door_id}
            if member.away:
                entry["away"] = member.away
            value = msgspec.json.encode(entry)
            token = self.bridge.kv("put", MEMBERS, key, value)
        else:
            token = self.bridge.kv("delete", MEMBERS, key)
        self.changing[token] = key

    def _changed(self, answer: KvResult, now: float) -> None:
        """A change taken: the key's next goes.  Not taken (no leader just now): the key's newest change is
        tried again soon (a member missing from the roster, or one listed who left, would stay so)."""
        key = self.changing.pop(answer.token)
        queue = self.changes[key]
        if answer.error is not None and answer.error != "not_found":  # (deleting what is gone is done)
            if not self.retries:  # said once while some wait (an election fails every change for seconds)
                log.warning("cluster: the roster did not take a change (tried again): %s", answer.error)
            self.changes[key] = deque([queue[-1]])
            self.retries[key] = now + CHANGE_RETRY_S
            return
        queue.popleft()
        if queue:
            self._change(key, queue[0])
        else:
            del self.changes[key]

    def _alive(self, door: str) -> bool:
        """As far as the last listing of leases knows (before the first: every front door)."""
        return not self.live_doors or door in self.live_doors or door in self.suspects

    def _doors_listed(self, answer: KvEntries) -> None:
        self.door_scan = None
        if answer.error is not None:
            return
        live = {key for key, _, _ in answer.entries} | {self.door_id}
        dead = self.suspects - live
        seen = (self.live_doors, self.suspects)
        self.suspects = (self.live_doors - live) - dead
        self.live_doors = live
        if (self.live_doors, self.suspects) != seen:
            for entry in self.entries.values():  # who shows a front door's members while it lives
                self._place(entry)
        self.sweeps += 1
        if dead or self.sweeps == 2:
            self.sweep_due = True
            if self.caught_up:
                self._sweep()

    def _sweep(self) -> None:
        """Strike each member of a front door that is neither alive nor suspected, at the revision seen."""
        self.sweep_due = False
        taking = self._taking_keys()
        for key, entry in self.entries.items():
            if entry.door in self.live_doors or entry.door in self.suspects or key in taking:
                continue
            self.taking[self.bridge.kv("delete", MEMBERS, key, revision=entry.revision)] = (key, entry)

    def _taking_keys(self) -> set[str]:
        return {key for key, _ in self.taking.values()}

    def _taken(self, answer: KvResult, now: float) -> list[Output]:
        _, entry = self.taking.pop(answer.token)
        if answer.error is not None:  # back on another front door, or told gone by another
            return []
        log.info("cluster: %s in %s was on a front door that died; told gone", entry.user, entry.room)
        return [self.core.gone(entry.room, entry.user, entry.door, now)]
