"""A front door's roster of the cluster (issue 17): who is in which room on which front door, and which front
doors are alive, so that ``who`` lists the whole cluster and a dead front door's members are told gone.

- **Members:** the bucket ``chat_members`` holds ``<room>.<name>`` -> the user, their front door and their away
  reason.  The core says ``chat.Member`` as people join, leave, rename and go away or come back; each key's
  changes go one at a time, in order.  ``who`` (``chat.ListMembers``) lists the room's keys; the reply
  (``ChatCore.who_listed``) merges them, and their away reasons, with the front door's own members.
- **Front doors:** each holds a lease, its key in ``chat_doors`` (renewed by ``front_door``).  Every
  ``DOOR_SCAN_S`` the roster lists the leases: one missing from two listings in a row has died (one missing
  once may only have lost a renewal in an election).  Then the members are swept: each of a dead front
  door's is struck by compare-and-set (of front doors sweeping at once, one wins) and told gone (a ``leave``,
  reason ``timeout``, under a log id of the member's and the dead door's, so the log stores it once).  The
  first sweep, after the second listing, also finds members of front doors that died while none was running.

Sans-I/O apart from the bridge it is handed (a stand-in in the tests): the core's outputs and the bridge's
answers in, replies and the leaves for the log out.
"""

from __future__ import annotations

import logging
from collections import deque

import msgspec

import messages as m
from chat import ChatCore, ListMembers, Member, Output
from nats_bridge import KvEntries, KvResult, NatsBridge

log = logging.getLogger("chat-broker")

#: The buckets of front doors' leases and of who is in which room on which front door.
DOORS, MEMBERS = "chat_doors", "chat_members"
#: How often the leases are listed.
DOOR_SCAN_S = 2.0
#: ``who`` listings at once (each answer holds up to ``nats_bridge.MAX_LISTED`` entries): more are answered
#: with this front door's members only.
MAX_LISTINGS = 16


def name_key(text: str) -> str:
    """A name (or room) as a key-value key, which allows fewer characters than a name, and no final dot."""
    return text.encode().hex()


def member_key(room: str, folded: str) -> str:
    """A room member's key in ``chat_members``: ``<room>.<name>`` (a room's members: ``<room>.*``)."""
    return f"{name_key(room)}.{name_key(folded)}"


def room_of(key: str) -> str | None:
    try:
        return bytes.fromhex(key.split(".", 1)[0]).decode()
    except ValueError:
        return None


def roster_entry(value: bytes) -> tuple[str, str, str] | None:
    """(user, front door, away reason) of a roster value; None if it is not one a front door wrote."""
    try:
        entry = msgspec.json.decode(value, type=dict[str, str])
        return entry["user"], entry["door"], entry.get("away", "")[: m.MAX_AWAY_CHARS]
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
        return None


class Roster:
    """One front door's part of the roster: its changes on their way, its ``who`` listings, its view of the
    other front doors, and its sweeps of their members."""

    def __init__(self, bridge: NatsBridge, core: ChatCore, door_id: str) -> None:
        self.bridge = bridge
        self.core = core
        self.door_id = door_id
        self.changes: dict[str, deque[Member]] = {}  # per member key, not yet answered (the first is asked)
        self.changing: dict[int, str] = {}  # bridge token -> the member key it changes
        self.listings: dict[int, ListMembers] = {}  # bridge token -> a who waiting for the roster
        #: The front doors of the last listing of leases, and those missing from it for the first time.
        self.live_doors: set[str] = set()
        self.suspects: set[str] = set()
        self.door_scan: int | None = None  # the listing of leases on its way
        self.sweep: int | None = None  # the listing of members on its way
        self.sweeps = 0
        self.next_door_scan = 0.0
        self.taking: dict[int, tuple[str, str, str]] = {}  # bridge token -> (room, user, dead door): a CAS delete

    def owns(self, token: int) -> bool:
        return (
            token in self.changing
            or token in self.listings
            or token in self.taking
            or token in (self.door_scan, self.sweep)
        )

    def pending(self) -> int:
        """Changes not yet answered by the bucket (a stopping front door waits for them)."""
        return sum(map(len, self.changes.values()))

    def due(self) -> float:
        return self.next_door_scan

    def tick(self, now: float) -> None:
        if now >= self.next_door_scan:
            if self.door_scan is None and self.sweep is None:
                self.door_scan = self.bridge.kv_list(DOORS, ">")
            self.next_door_scan = now + DOOR_SCAN_S

    def member(self, member: Member) -> None:
        """Record (or strike) a member here, behind the key's earlier changes."""
        key = member_key(member.room, member.folded)
        queue = self.changes.setdefault(key, deque())
        queue.append(member)
        if len(queue) == 1:
            self._change(key, member)

    def list_members(self, listing: ListMembers) -> list[Output]:
        """A ``who``: the room's members on every front door (past ``MAX_LISTINGS`` at once: this one's)."""
        if len(self.listings) >= MAX_LISTINGS:
            return [self.core.who_listed(listing.peer, listing.room, [])]
        self.listings[self.bridge.kv_list(MEMBERS, name_key(listing.room) + ".*")] = listing
        return []

    def answered(self, event: KvResult | KvEntries, now: float) -> list[Output]:
        token = event.token
        if isinstance(event, KvResult) and token in self.changing:
            self._changed(event)
        elif isinstance(event, KvResult) and token in self.taking:
            return self._taken(event, now)
        elif isinstance(event, KvEntries) and token in self.listings:
            return self._listed(event)
        elif isinstance(event, KvEntries) and token == self.door_scan:
            self._doors_listed(event)
        elif isinstance(event, KvEntries) and token == self.sweep:
            self._swept(event)
        return []

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

    def _changed(self, answer: KvResult) -> None:
        key = self.changing.pop(answer.token)
        if answer.error is not None:
            log.warning("cluster: the roster did not take a change: %s", answer.error)
        queue = self.changes[key]
        queue.popleft()
        if queue:
            self._change(key, queue[0])
        else:
            del self.changes[key]

    def _listed(self, answer: KvEntries) -> list[Output]:
        listing = self.listings.pop(answer.token)
        if answer.error is not None:
            log.warning("cluster: who of %s answered for this front door only: %s", listing.room, answer.error)
        others = []
        for _, value, _ in answer.entries:
            entry = roster_entry(value)
            if entry is not None and entry[1] != self.door_id and self._alive(entry[1]):
                others.append((entry[0], entry[2]))
        return [self.core.who_listed(listing.peer, listing.room, others)]

    def _alive(self, door: str) -> bool:
        """As far as the last listing of leases knows (before the first: every front door)."""
        return not self.live_doors or door in self.live_doors or door in self.suspects

    def _doors_listed(self, answer: KvEntries) -> None:
        self.door_scan = None
        if answer.error is not None:
            return
        live = {key for key, _, _ in answer.entries} | {self.door_id}
        dead = self.suspects - live
        self.suspects = (self.live_doors - live) - dead
        self.live_doors = live
        self.sweeps += 1
        if dead or self.sweeps == 2:
            self.sweep = self.bridge.kv_list(MEMBERS, ">")

    def _swept(self, answer: KvEntries) -> None:
        self.sweep = None
        if answer.error is not None:
            return
        for key, value, revision in answer.entries:
            entry, room = roster_entry(value), room_of(key)
            if entry is None or room is None or entry[1] in self.live_doors or entry[1] in self.suspects:
                continue
            token = self.bridge.kv("delete", MEMBERS, key, revision=revision)
            self.taking[token] = (room, entry[0], entry[1])

    def _taken(self, answer: KvResult, now: float) -> list[Output]:
        room, user, door = self.taking.pop(answer.token)
        if answer.error is not None:  # back on another front door, or told gone by another sweep
            return []
        log.info("cluster: %s in %s was on a front door that died; told gone", user, room)
        return [self.core.gone(room, user, door, now)]
