"""The chat logic: sessions, rooms, presence, history, liveness.  No sockets, no clock.

``ChatCore`` is a sans-I/O state machine in the manner of h11: the broker feeds
it what arrived (``handle``) and the passing of time (``tick``), and gets back
what to send where, as ``Reply`` (to one peer, on the ROUTER) and ``Publish``
(to a topic, on the PUB).  Time is always passed in, so tests drive it without
sleeping, and any other front end (a web gateway, a test) can reuse the logic.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import ipaddress
import itertools
import logging
import os
import struct
import traceback
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import msgspec

import messages as m
from messages import ErrorCode, ProtocolError
from store import TOPIC_EVENT, MemoryStore, Sealed, SqliteStore


class Reply(NamedTuple):
    """Send ``payload`` to the peer with this ROUTER routing id."""

    peer: bytes
    payload: bytes


class Publish(NamedTuple):
    """Send ``payload`` on the feed under ``topic``."""

    topic: bytes
    payload: bytes


class Append(NamedTuple):
    """A front door (``--cluster``): hand a room event to the cluster's log, which gives it its position.  It
    comes back through ``ChatCore.applied``, from every front door alike; ``ack`` (peer, request id) is
    answered once the log confirms it (``confirmed``) or gives up (``refused``)."""

    room: str
    payload: bytes  # the event with seq and prev 0: the log's position is set when it comes back
    log_id: str  # the log's deduplication id (Nats-Msg-Id): a resend, through any front door, is stored once
    sender: str  # the folded user whose event it is: one sender's events reach the log in their order
    ack: tuple[bytes, str] | None  # (peer, request id)


class ReadLog(NamedTuple):
    """A front door: a ``history`` request that memory cannot answer (older than what this front door has
    seen) is answered from the cluster's log: ``room``'s events after ``after``, at most ``limit``, then
    ``ChatCore.history_read`` makes the reply."""

    peer: bytes
    room: str
    after: int
    limit: int
    head: int  # the room's last position as this front door knows it (0: none): the reply's ``seq``
    request_id: str | None = None  # echoed by an error about it
    kept_from: int = 0  # the first position this front door keeps in memory (0: none): the walk stops there
    source: str = ""  # where the request came from (a CURVE key, else an address): its share of the walks


#: ``ReadRecent.below`` of a room a front door knows nothing of: the read begins at the log's newest event.
UNKNOWN = -1


class ReadRecent(NamedTuple):
    """A front door: a ``join`` of a room whose recent past this front door has not seen (it started since) is
    answered once the cluster's log gave the newest ``limit`` events older than its memory: those before
    position ``below`` (which the log has, the newest of them there), read backwards by ``cluster_reads``;
    ``ChatCore.recent_read`` then makes the ``joined``."""

    peer: bytes
    room: str
    below: int  # the newest position memory does not hold (``UNKNOWN``: the log's newest): read, and before it
    limit: int  # events wanted (0: none, only the topic)
    span: int  # how far back (in the stream's positions) the room's ``limit`` events may begin: a first guess
    source: str = ""  # where the join came from: its share of the walks
    topic: bool = False  # also look up the room's topic (this front door saw no topic event of it)


class Claim(NamedTuple):
    """A front door: a session wants the name ``folded``, which must be free in the whole cluster, not only
    here.  Answered by ``ChatCore.claimed``; ``resume``: a client back after a reconnect (its old front door
    may not be known dead yet)."""

    peer: bytes
    folded: str
    resume: bool


class Release(NamedTuple):
    """A front door: nobody here goes by ``folded`` any more; the cluster's claim on it goes."""

    folded: str


class Forward(NamedTuple):
    """A front door: a ``dm`` to ``folded``, who is not here, goes to the front door that has them (over core
    NATS), whose answer comes back through ``ChatCore.forwarded``; that front door hands it on with
    ``ChatCore.deliver``."""

    peer: bytes  # the sender's connection: the ack or the error goes there
    sender: str  # the sender's folded name (the resend window's key)
    folded: str  # the recipient's folded name
    event: bytes  # the dm event, ``to`` as the sender typed it (the recipient's front door writes theirs)
    request: dict  # the sender's request: its id, and its fingerprint for the resend window


class Member(NamedTuple):
    """A front door: ``user`` is in ``room`` here now (``present``), or no longer.  The cluster's roster
    (``front_door``: the key-value bucket ``chat_members``) follows, so ``who`` is the whole cluster's, and
    when a front door dies the others can tell its members gone."""

    room: str
    folded: str
    user: str
    present: bool
    away: str = ""  # their away reason ("": not away): ``who`` shows it on every front door


Output = Reply | Publish | Append | ReadLog | ReadRecent | Claim | Release | Forward | Member
_decode_room_event = msgspec.json.Decoder(m.RoomEvent).decode
#: How a msg event's bytes begin (``messages.encode`` writes a tagged struct's ``type`` first).
MSG_EVENT = b'{"type":"msg",'
LEAVE_EVENT = b'{"type":"leave",'
JOIN_EVENT = b'{"type":"join",'
_new_tuple = tuple.__new__  # builds a NamedTuple at half the cost of calling it: once per event, it shows
log = logging.getLogger("chat")

#: What one kept event costs beyond its bytes: the bytes object's header and its slot in the deque.
EVENT_OVERHEAD = 48
#: A reply costs one more token per this many bytes: the broker's work and the memory a reply can hold
#: (in the peer's queue) grow with its size, so a source's rate limit bounds the bytes it can pull too.
REPLY_TOKEN_BYTES = 16 * 1024


class DmAnswer(msgspec.Struct, omit_defaults=True):
    """A front door's answer to another's forwarded dm: whom it reached (their name as they wrote it) and
    their away reason; without ``to``, why not (an error code)."""

    to: str | None = None
    away: str | None = None
    error: str | None = None


#: Heartbeats that tell a changed room's head on the feed: one dropped ``head`` frame is not the last word.
HEAD_REPEATS = 3
#: Requests that write: refused with ``unavailable`` while the broker cannot store.
WRITES = frozenset({"hello", "join", "leave", "msg", "dm", "bye", "topic", "nick"})


@dataclass(frozen=True)
class ChatConfig:
    """Tunables of the chat logic; the protocol's hard limits live in ``messages``."""

    heartbeat: float = 1.0  # seconds between sys/ heartbeats; clients ping this often
    session_timeout: float = 5.0  # a session silent this long is ended with reason "timeout"
    history_on_join: int = 50  # events of history in a "joined" reply
    history_kept: int = 1000  # events kept per room for "history" requests
    max_rooms: int = 10_000  # rooms held in memory at once (rooms nobody is in are put to rest); bounds memory
    max_resting_rooms: int = 100_000  # rooms at rest whose seq is kept in memory (older ones: asked of the store)
    rate_limit: float = 20.0  # requests per second per connection (routing id; token bucket); 0 turns it off
    rate_burst: float = 40.0  # bucket size: how many requests may come at once
    # The same again for everything from one source (the CURVE key, else the peer's address): new
    # connections and new sessions share it, so reconnecting resets nothing.
    source_rate: float = 200.0
    source_burst: float = 400.0
    max_sessions_per_source: int = 256  # 0 = no limit
    max_rooms_per_source: int = 1024  # room memberships of all the source's sessions: a tenth of max_rooms
    # Addresses or CURVE keys of gateways that multiplex many people (the web gateway): each of their
    # connections is a source of its own, and the gateway limits its own peers per address.
    trusted_sources: frozenset[str] = frozenset()
    # In-memory history, in bytes (kept events beyond it are read back from the database).
    history_bytes_per_room: int = 1 << 20
    history_bytes_total: int = 256 << 20
    max_reply_bytes: int = m.MAX_REPLY_BYTES  # events' bytes in one history reply (or joined's history)
    # A resend is acked again, not repeated, while its id is remembered: each user's last ids, kept at
    # least ``dedupe_age`` seconds whatever others do; ``dedupe_total`` bounds them all together, and at
    # the bound new messages are refused (``unavailable``) rather than younger ids forgotten.
    dedupe_per_user: int = 1024  # more than a client may keep unacknowledged (client.MAX_UNACKED: 1000)
    dedupe_total: int = 500_000
    dedupe_age: float = 600.0
    max_text: int = m.MAX_TEXT_CHARS  # characters per msg/dm text (at most the protocol's limit)
    # A front door: bytes of dms on their way to other front doors at once (each waits up to 2 s for its
    # answer); past it a dm to someone not here gets ``unavailable``.
    max_forward_bytes: int = 4 << 20
    # A front door: bytes of the cluster's roster (who is in which room on the other front doors) it keeps;
    # past it, ``who`` and ``joined`` list fewer of the others' members.
    max_roster_bytes: int = 16 << 20
    max_rooms_per_session: int = m.MAX_ROOMS_PER_SESSION  # rooms one session may be in at once
    max_history: int = m.MAX_HISTORY_LIMIT  # events one history reply may carry (larger limits are cut to it)
    max_sessions_per_key: int = 4  # live sessions per CURVE client key; 0 = no limit (plain mode has no keys)

    def __post_init__(self) -> None:
        if self.heartbeat <= 0 or self.session_timeout <= self.heartbeat:
            raise ValueError("need 0 < heartbeat < session_timeout")
        if self.max_resting_rooms < 1:
            raise ValueError("need max_resting_rooms >= 1")
        if not 0 <= self.history_on_join <= self.history_kept or self.history_kept < 1:
            raise ValueError("need 0 <= history_on_join <= history_kept and history_kept >= 1")
        if self.rate_limit < 0 or (self.rate_limit and self.rate_burst < 1):
            raise ValueError("need rate_limit >= 0 and rate_burst >= 1")
        if self.source_rate < 0 or (self.source_rate and self.source_burst < 1):
            raise ValueError("need source_rate >= 0 and source_burst >= 1")
        if self.max_sessions_per_source < 0 or self.max_rooms_per_source < 0:
            raise ValueError("need max_sessions_per_source >= 0 and max_rooms_per_source >= 0")
        if not m.MAX_REPLY_BYTES <= self.history_bytes_per_room <= self.history_bytes_total:
            raise ValueError(f"need {m.MAX_REPLY_BYTES} <= history_bytes_per_room <= history_bytes_total")
        if not 1024 <= self.max_reply_bytes <= 16 * m.MAX_REPLY_BYTES:
            raise ValueError(f"need 1024 <= max_reply_bytes <= {16 * m.MAX_REPLY_BYTES}")
        if self.dedupe_age < 0:
            raise ValueError("need dedupe_age >= 0")
        for name, value, most in (
            ("max_text", self.max_text, m.MAX_TEXT_CHARS),
            ("max_rooms_per_session", self.max_rooms_per_session, m.MAX_ROOMS_PER_SESSION),
            ("max_history", self.max_history, m.MAX_HISTORY_LIMIT),
        ):
            if not 1 <= value <= most:
                raise ValueError(f"need 1 <= {name} <= {most}")
        if self.max_sessions_per_key < 0:
            raise ValueError("need max_sessions_per_key >= 0")
        if not 1 <= self.dedupe_per_user < self.dedupe_total:
            raise ValueError("need 1 <= dedupe_per_user < dedupe_total")


@dataclass(eq=False, slots=True)
class Bucket:
    """A token bucket; refilled lazily from ``at`` whenever it is used."""

    tokens: float
    at: float


@dataclass(eq=False, slots=True)
class Source:
    """Everything from one CURVE key, or (plain mode) one peer address: what no reconnect resets."""

    name: str
    bucket: Bucket
    peers: int = 0  # connections (routing ids) of it that the core knows
    sessions: int = 0
    rooms: int = 0  # room memberships of its sessions


@dataclass(eq=False, slots=True)
class Peer:
    """One connection (ROUTER routing id) seen lately, with or without a session."""

    bucket: Bucket
    source: Source
    key: str | None = None  # the CURVE key it authenticated with


@dataclass(eq=False, slots=True)
class Session:
    peer: bytes
    user: str
    folded: str  # user.casefold(): the key of by_name, of the dedupe windows and of name bindings
    rooms: dict[str, None]  # insertion-ordered set
    last_seen: float
    conn: Peer  # its connection's rate limit and source
    key: str | None = None  # the CURVE public key (z85) it authenticated with; None in plain mode
    away: str = ""  # why the user is away ("": here)


@dataclass(eq=False, slots=True)
class Room:
    name: str
    feed: bytes  # its topic on the PUB socket (``room/NAME/``)
    # Encoded events, oldest first, seqs contiguous up to ``seq``.  Bytes, not dicts: the cyclic GC
    # never walks them (so its pauses do not grow with history), they take a third of the memory, and
    # replies embed them as they are (msgspec.Raw) instead of encoding them again.
    history: deque[bytes]
    bytes: int = 0  # what ``history`` holds, counted as len(payload) + EVENT_OVERHEAD per event
    # Who is in the room, in display order (case-insensitive), kept sorted as people come and go:
    # ``joined`` and ``who`` list everyone, and sorting a room of 10,000 on every join cost 2 ms.
    users: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)  # users[i].casefold(): the sort keys
    seq: int = 0
    head_told: int = 0  # the last seq the feed was told as this room's head (``head``), and how many more
    head_repeats: int = 0  # heartbeats will tell it again (one told head may be dropped like any frame)
    topic: str = ""  # set by ``topic`` ("": none), kept in history as a topic event
    topic_seq: int = 0  # the seq of the event that set it
    topic_asked: bool = False  # a front door: the cluster's copy of the topic was looked up (once)
    #: Where its events go for the store until the next seal (``SqliteStore.run``); None: ask the store.
    unsealed: list[bytes] | None = None

    def set_topic(self, payload: bytes | None) -> None:
        """Take the topic from a stored topic event (a room loaded from the store)."""
        if payload is not None:
            event = msgspec.json.decode(payload, type=m.TopicEvent)
            self.topic, self.topic_seq = event.topic, event.seq

    def add(self, user: str, folded: str) -> None:
        at = bisect.bisect_left(self.folded, folded)
        self.folded.insert(at, folded)
        self.users.insert(at, user)

    def remove(self, folded: str) -> None:
        at = bisect.bisect_left(self.folded, folded)
        del self.folded[at], self.users[at]


class Window(OrderedDict):
    """One user's recent ids -> what they said: the ack of a ``msg`` (its event, in the room's history,
    tells what it was), or the ack of a ``dm`` with its fingerprint after it (8 bytes); least recently
    said first.  Bytes, not tuples: the cyclic GC never walks them, however many there are."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at  # when it was last written to


def fingerprint(target: str, text: str, me: bool) -> bytes:
    """What a resent ``dm`` must match to get the old ack (its recipient, as ``@name``, its text and ``me``):
    a dm is not stored, so its window entry keeps this.  A resent ``msg`` is checked against its event."""
    return _pack_hash((hash(target) * 1_000_003 ^ hash(text) ^ me) & ((1 << 64) - 1))


_pack_hash = struct.Struct("<Q").pack
FINGERPRINT_BYTES = 8
DM_TAG = b"d"  # what a dm's window entry starts with (a msg's is its ack, a JSON object: "{")


class SaidWindows:
    """What each user said lately: id -> the ack it got, so a resend gets that ack again and is not repeated.

    One window per user (casefolded name), made when the first of their messages is accepted, with
    their last ``per_user`` ids: more than a client sends between a message and its resend.  The
    ``total`` bound counts every id and every window.  Past it, windows not written to for ``age``
    seconds go, least recently written first; a younger one never does, whatever other users send:
    then ``full`` says so and new messages are refused until one ages out.  So what others do can
    never make a recent resend publish twice; memory is bounded by ``total``, and the rate limits
    bound how fast anyone can fill it.  Per user, rather than one window of everybody's ids, also
    keeps the broker fast: a sender's recent ids stay in the CPU cache.
    """

    __slots__ = ("age", "per_user", "size", "total", "windows")

    def __init__(self, per_user: int, total: int, age: float = 600.0) -> None:
        self.per_user = per_user
        self.total = total
        self.age = age
        self.size = 0  # ids remembered plus windows, all users together
        self.windows: OrderedDict[str, Window] = OrderedDict()  # least recently written first

    def window(self, folded: str, now: float) -> Window:
        """``folded``'s window, now the most recently used.  Whoever adds to it says so with ``grew``."""
        window = self.windows.get(folded)
        if window is None:
            window = self.windows[folded] = Window(now)
            self.size += 1
        else:
            self.windows.move_to_end(folded)
            window.at = now
        return window

    def get(self, folded: str, msg_id: str) -> bytes | None:
        """What ``folded`` said under ``msg_id`` (see ``Window``), if remembered."""
        window = self.windows.get(folded)
        return None if window is None else window.get(msg_id)

    def full(self, now: float) -> bool:
        """At the bound with nothing old enough to forget: a new id must wait."""
        return self.size >= self.total and not self._forget_old(now, self.total - 1)

    def remember(self, folded: str, msg_id: str, said: bytes, now: float) -> None:
        window = self.window(folded, now)
        before = len(window)
        window[msg_id] = said
        if len(window) > self.per_user:
            window.popitem(last=False)
        else:
            self.grew(len(window) - before, now)

    def rename(self, old: str, new: str, now: float, keep: bool = False) -> None:
        """A user now goes by another name: their window goes with them.  One the new name already had (its
        last holder's, gone) is kept too, merged under the same bound: its ids may still be resent.
        ``keep``: the old name keeps a copy (a restarted broker cannot tell which name a client comes back
        under: the one it asked for, or the old one if it never heard the answer)."""
        window = self.windows.get(old) if keep else self.windows.pop(old, None)
        if window is None:
            return
        if keep:
            window = Window(now)
            window.update(self.windows[old])
            self.size += len(window) + 1
        kept = self.windows.pop(new, None)
        if kept is not None:
            before = len(kept) + len(window) + 2
            kept.update(window)
            while len(kept) > self.per_user:
                kept.popitem(last=False)
            window = kept
            self.size -= before - len(kept) - 1
        window.at = now
        self.windows[new] = window

    def grew(self, count: int, now: float) -> None:
        """``count`` more ids are remembered: forget old windows while over ``total`` (callers check
        ``full`` first, so a young window is never what has to go)."""
        self.size += count
        if self.size > self.total:
            self._forget_old(now, self.total)

    def _forget_old(self, now: float, target: int) -> bool:
        """Forget windows idle for ``age`` seconds, least recently written first, until at most ``target``."""
        windows = self.windows
        while self.size > target and windows:
            first = next(iter(windows.values()))
            if now - first.at < self.age:
                return False
            windows.popitem(last=False)
            self.size -= len(first) + 1
        return self.size <= target


def new_epoch() -> str:
    """A random id of this broker run; clients see it change when the broker restarts."""
    return os.urandom(8).hex()


class ChatCore:
    """All chat state of one broker.  Not thread-safe by design: one loop owns it."""

    def __init__(
        self,
        config: ChatConfig | None = None,
        store: MemoryStore | SqliteStore | None = None,
        epoch: str | None = None,
        now: float = 0.0,
        wall_offset: float = 0.0,
        bindings: dict[str, str | None] | None = None,
        clustered: bool = False,
    ) -> None:
        """``now`` (here and in every call) is a monotonic clock; ``ts`` stamps are ``now + wall_offset``.

        ``clustered``: a front door of a cluster.  Room events are not numbered here but handed to the
        cluster's log (``Append``) and kept and published when the log hands them back (``applied``), with
        the log's positions, which skip within a room; acks wait for the log (``confirmed``).

        ``bindings`` maps CURVE client keys to the one name each may use (None: any free name); a bound
        name is then reserved for its key, even while nobody uses it.
        """
        self.config = config or ChatConfig()
        self.store = store or MemoryStore()
        #: ``store.run``, bound once (None: the store keeps nothing): rooms append their events to what it gives.
        self._store_run = self.store.run if self.store.persistent else None
        self.clustered = clustered
        #: A front door: the names it holds in the cluster (claimed, not yet released), and the hello or nick
        #: of each connection waiting for its claim (kind, request, key).
        self.names_held: set[str] = set()
        self.claiming: dict[bytes, tuple[str, dict, str | None]] = {}
        #: A front door: the dms handed to other front doors, not yet answered ((sender, id) -> bytes held).
        self.forwarding: dict[tuple[str, str], int] = {}
        self.forwarding_bytes = 0
        #: A front door: the msgs and dms on their way (to the log, to another front door), by (sender, id): what
        #: they were (fingerprint) and the connections that sent them again meanwhile.  A resend waits for the
        #: answer and gets the ack too; the same id for anything else meanwhile is ``id_reused``, as it is after.
        self.in_flight: dict[tuple[str, str], tuple[bytes, list[bytes]]] = {}
        #: A front door: the members of the other front doors (kept by ``cluster_roster``), by room and folded
        #: name: (user, away reason).  ``who`` and ``joined`` list them with this one's own.
        self.elsewhere: dict[str, dict[str, tuple[str, str]]] = {}
        self.wall_offset = wall_offset
        self.epoch = epoch or new_epoch()
        self.sessions: dict[bytes, Session] = {}  # by routing id
        self.by_name: dict[str, Session] = {}  # by casefolded user name
        self.away: dict[str, Session] = {}  # the sessions that are away, by casefolded user name
        self.rooms: dict[str, Room] = {}  # rooms in memory, the least recently joined first
        #: Rooms put to rest to make room for others (nobody was in them): their last seq, so a seq is
        #: never given twice, the least recently put to rest first; past ``max_resting_rooms`` the store
        #: answers for the oldest (``last_seq``).  Their events stay in the store; a join brings a room back.
        self.resting: OrderedDict[str, int] = OrderedDict()
        #: Each user's recent message ids and their acks.  Neither is walked by the cyclic GC.
        self.said = SaidWindows(self.config.dedupe_per_user, self.config.dedupe_total, self.config.dedupe_age)
        self.peers: dict[bytes, Peer] = {}  # connections seen lately (forgotten once idle with a full bucket)
        self.sources: dict[str, Source] = {}
        self.history_bytes = 0  # what every room's history holds together (Room.bytes)
        #: Why the broker cannot store now (set and cleared by the broker); writes get ``unavailable``.
        self.unavailable: str | None = None
        self.internal_errors: Counter[str] = Counter()  # crashes the barrier caught, by where they happened
        self.bindings = {key: name for key, name in (bindings or {}).items() if name}
        self.bindings_known = bindings is not None  # CURVE with an allow-list: a key is a person
        self.trusted_sources = {network_of(s) or s for s in self.config.trusted_sources}
        self.owners = {name.casefold(): key for key, name in self.bindings.items()}  # bound name -> its key
        self.sessions_per_key: Counter[str] = Counter()
        self.next_heartbeat = now
        self._restore(now)
        self._handlers = {
            "hello": self._hello,
            "join": self._join,
            "leave": self._leave,
            "msg": self._msg,
            "dm": self._dm,
            "who": self._who,
            "history": self._history,
            "ping": self._ping,
            "bye": self._bye,
            "rooms": self._rooms,
            "topic": self._topic,
            "nick": self._nick,
            "away": self._away,
        }

    def _restore(self, now: float) -> None:
        """Pick up rooms, seqs and recent message ids where the last broker run left them.

        Resends after a restart are recognised among each room's recent events (``history_kept``):
        a client resends within seconds, long before a room moves that far on.
        """
        cfg = self.config
        # The newest message ids of all rooms' last history_kept events (whatever memory keeps of them),
        # at most as many as the windows hold (a heap, so memory stays bounded however many rooms there
        # are), replayed oldest first, each at the time it was said: ids older than dedupe_age may go.
        newest: list[tuple[float, int, str, str, str, str]] = []
        most = cfg.dedupe_total
        for name, seq in self.store.rooms():
            self._rest(name, seq)
            if len(self.rooms) < cfg.max_rooms:  # the rest wait on disk until someone joins them
                self._room(name)
                if self.history_bytes > cfg.history_bytes_total:  # as it runs: memory never holds more
                    self._trim_all(cfg.history_bytes_total * 9 // 10)
            for said in map(_decode_said, self.store.events(name, seq - cfg.history_kept)):
                if said.type in ("msg", "nick"):  # after a nick, ids said before it are resent under the new name
                    entry = (said.ts, said.seq, name, said.user.casefold(), said.id, said.name.casefold())
                    (heapq.heappush if len(newest) < most else heapq.heappushpop)(newest, entry)
        for ts, seq, room_name, folded, msg_id, renamed in sorted(newest):
            at = min(now, ts - self.wall_offset)
            if renamed:
                self.said.rename(folded, renamed, at, keep=True)
            else:
                self.said.remember(folded, msg_id, m.encode(m.Ack(id=msg_id, room=room_name, seq=seq)), at)

    def commit(self) -> None:
        """Make everything handled so far durable.  The broker calls this before sending what it was given.

        Then, with the events on disk, in-memory history over its total bound gives up its oldest events
        (``history`` reads them back from the database)."""
        self.store.commit()
        self._trim_if_over()

    def seal(self) -> Sealed | None:
        """As ``commit``, for a broker whose ``store.Writer`` commits off its loop: what was handled so far
        goes to the writer as one batch, and the broker sends this batch's outputs once it is committed.
        Memory may give up events being written: history reads find them in the store's sealed batches."""
        batch = self.store.seal()
        self._trim_if_over()
        return batch

    def _trim_if_over(self) -> None:
        if self.history_bytes > self.config.history_bytes_total:
            self._trim_all(self.config.history_bytes_total * 9 // 10)

    # --- entry points ---------------------------------------------------------

    def handle(
        self, peer: bytes, frames: list[bytes], now: float, key: str | None = None, address: str | None = None
    ) -> list[Output]:
        """One inbox message from ``peer``: a request, or a batch of them; returns what to send.
        Never raises: bad input gets its error, and an unforeseen exception costs only the request
        it happened in (``internal``).

        ``key`` is the CURVE public key the peer authenticated with (the frame's User-Id), if any;
        ``address`` the peer's IP address (the frame's Peer-Address), needed only for a peer not yet in
        ``peers``.  The key, else the address, is the request's *source* for the per-source limits.
        """
        out: list[Output] = []
        try:
            conn = self.peers.get(peer)
            if conn is None or conn.key != key:  # new, or (CURVE) the routing id is now another key's
                conn = self._new_peer(peer, key, address, now)
            value = m.decode_frame(frames)
            if type(value) is list:
                self._handle_batch(peer, conn, m.check_batch(value), now, key, out)
                return out
            mine: list[bytes] = []
            session = self.sessions.get(peer)
            if session is not None and session.key == key and self._plain_msgs(session, (value,), 0, now, mine, out):
                out.append(Reply(peer, mine[0]))
            else:
                self._handle_one(peer, conn, value, now, key, out)
        except ProtocolError as exc:
            self._spend(conn, now)  # what fails to parse costs a token too
            out.append(Reply(peer, m.encode(exc.envelope())))
        except Exception as exc:  # the crash barrier: this frame is lost, the broker serves on
            out.append(self._internal(peer, "frame", exc))
        return out

    def _internal(self, peer: bytes, kind: str, exc: Exception, msg_id: str | None = None) -> Reply:
        """An unforeseen exception while handling a ``kind`` request: log its traceback the first time
        it happens there, count it, and answer ``internal``."""
        where = f"{kind}: {type(exc).__name__} at {_origin(exc)}"
        self.internal_errors[where] += 1
        if self.internal_errors[where] == 1:
            log.error(
                "internal error handling a %r request (further ones are counted, not logged):\n%s",
                kind,
                "".join(traceback.format_exception(exc)),
            )
        error = ProtocolError(ErrorCode.INTERNAL, f"the broker failed on this {kind} request; it was not done", msg_id)
        return Reply(peer, m.encode(error.envelope()))

    def _new_peer(self, peer: bytes, key: str | None, address: str | None, now: float) -> Peer:
        """A connection seen for the first time, counted against its source (made if new)."""
        # A key is who someone is only where keys are handed out (an allow-list): any key is free to make.
        if key is not None and self.bindings_known:
            origin, kind = key, "key"
        else:
            origin, kind = network_of(address), "addr"
        trusted = origin is None or origin in self.trusted_sources
        name = f"peer:{peer.hex()}" if trusted else f"{kind}:{origin}"
        source = self.sources.get(name)
        if source is None:
            source = self.sources[name] = Source(name, Bucket(self.config.source_burst, now))
        source.peers += 1
        old = self.peers.get(peer)
        if old is not None:
            old.source.peers -= 1
        conn = self.peers[peer] = Peer(Bucket(self.config.rate_burst, now), source, key)
        return conn

    def _handle_batch(
        self, peer: bytes, conn: Peer, envelopes: list[Any], now: float, key: str | None, out: list[Output]
    ) -> None:
        """Each request as if it had come alone; the peer's own replies then go back as batch frames,
        in order, so a batch costs one send each way instead of one per request."""
        mine: list[bytes] = []
        session = self.sessions.get(peer)
        at, end = 0, len(envelopes)
        while at < end:
            if session is not None and session.key == key:
                try:
                    at = self._plain_msgs(session, envelopes, at, now, mine, out)
                except Exception as exc:  # the crash barrier: that request only; the acks before it go out
                    failed = exc.chat_request_index  # type: ignore[attr-defined]
                    mine.append(self._internal(peer, "msg", exc, envelopes[failed].id).payload)
                    at = failed + 1
                    continue
                if at == end:
                    break
            if not self._has_tokens(conn, now):  # the rest of the batch: one error, and no work per request
                error = f"too many requests; slow down ({end - at} requests of this batch were not handled)"
                mine.append(m.encode(ProtocolError(ErrorCode.RATE_LIMITED, error).envelope()))
                break
            done: list[Output] = []
            self._handle_one(peer, conn, envelopes[at], now, key, done)
            for output in done:
                if type(output) is Reply and output.peer == peer:
                    mine.append(output.payload)
                else:
                    out.append(output)
            session = self.sessions.get(peer)  # a hello or a bye changes it
            at += 1
        out.extend(Reply(peer, frame) for frame in m.batch_frames(mine))

    def _plain_msgs(
        self, session: Session, envelopes: Sequence[Any], at: int, now: float, mine: list[bytes], out: list[Output]
    ) -> int:
        """The hot path: accept the plain ``msg`` requests from ``envelopes[at]`` on, up to the first
        that is anything else (returns its index): another type, an error, a resend, no token left.

        What ``_handle_one`` would do for each, minus its generality: any request this loop does
        not take is left untouched for ``_handle_one``, which then answers it exactly (the rate-limit
        check is the last here, and a failed take changes nothing).  The acks go to ``mine``.
        """
        session.last_seen = now
        # The sender's window is looked up, not made or moved: only what is accepted is written to it, so
        # requests that write nothing (a ping, a join, a refused msg) cannot push other users' ids out.
        windows = self.said
        said, rooms, user, room_of = windows.windows.get(session.folded), session.rooms, session.user, self.rooms
        max_text, per_user, said_total = self.config.max_text, self.config.dedupe_per_user, windows.total
        limited, conn = self.config.rate_limit or self.config.source_rate, session.conn
        kept, room_cap = self.config.history_kept, self.config.history_bytes_per_room
        encode, plain, event, ack, new_tuple = m.encode, m.PlainMsg, m.MsgEvent, m.Ack, _new_tuple
        ts, store_run = now + self.wall_offset, self._store_run
        end, grown, added, first, overhead = len(envelopes), 0, 0, True, EVENT_OVERHEAD
        if self.unavailable is not None or self.clustered:
            return at  # nothing can be stored (the general path refuses each), or the log numbers events
        try:
            while at < end:
                req = envelopes[at]
                if type(req) is not plain:
                    break
                room_name, msg_id, text = req.room, req.id, req.text
                if (
                    room_name not in rooms
                    or len(text) > max_text
                    or (said is not None and msg_id in said)
                    or (windows.size + grown >= said_total and windows.full(now))
                    or (limited and not self._spend(conn, now))
                ):
                    break
                # _publish and SaidWindows.remember, inlined: a call per message costs 5-10% of the
                # broker's throughput.  tests/sansio/test_fast_path.py holds this loop to the general path.
                room = room_of[room_name]
                seq = room.seq = room.seq + 1
                payload = encode(event(room=room_name, user=user, text=text, id=msg_id, seq=seq, prev=seq - 1, ts=ts))
                history, size = room.history, len(payload) + overhead
                if len(history) == kept:  # the deque's bound drops its oldest on append
                    size -= len(history[0]) + overhead
                history.append(payload)
                room.bytes += size
                added += size
                if room.bytes > room_cap:
                    added -= self._trim_room(room)
                if store_run is not None:
                    (room.unsealed or store_run(room_name, seq, room)).append(payload)
                out.append(new_tuple(Publish, (room.feed, payload)))
                if first:
                    said, first = windows.window(session.folded, now), False  # made, or moved to most recent
                reply = encode(ack(id=msg_id, room=room_name, seq=seq))
                said[msg_id] = reply
                mine.append(reply)
                if len(said) > per_user:
                    said.popitem(last=False)
                else:
                    grown += 1
                at += 1
        except Exception as exc:  # the crash barrier's business; it needs to know which request failed
            exc.chat_request_index = at  # type: ignore[attr-defined]
            raise
        finally:
            self.history_bytes += added
            if grown:
                windows.grew(grown, now)
        return at

    def _handle_one(self, peer: bytes, conn: Peer, env: Any, now: float, key: str | None, out: list[Output]) -> None:
        """One request, whatever it is: every one costs a token of its connection and of its source, and
        a large reply more (``REPLY_TOKEN_BYTES``).  Errors become ``error`` replies, each echoing the
        request's valid ``id`` so a client can tell which request failed; an unforeseen exception becomes
        ``internal`` (what it had done by then stands, what it had to send is sent)."""
        kind, msg_id, mark = "request", None, len(out)
        try:
            limited = not self._spend(conn, now)
            request = m.parse_envelope(env)
            kind, msg_id = request["type"], request.get("id") or m.request_id(env)
            session = self.sessions.get(peer)
            if session is not None:
                if session.key != key:  # CURVE: another key's connection took this routing id over
                    raise ProtocolError(ErrorCode.SESSION_EXISTS, "this connection's session belongs to another key")
                session.last_seen = now
            if limited and kind != "bye":  # a bye only frees what the session held
                raise ProtocolError(ErrorCode.RATE_LIMITED, "too many requests; slow down", msg_id)
            if session is None and kind not in m.SESSIONLESS:
                raise ProtocolError(ErrorCode.NO_SESSION, "say hello first", msg_id)
            if self.unavailable is not None and kind in WRITES:
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"the broker cannot store now ({self.unavailable})", msg_id)
            if kind == "hello":
                extra = len(request.get("rooms", ())) - 1  # a room joined costs what a join would
                if extra > 0:
                    self._spend(conn, now, extra, debt=True)
                self._hello(peer, session, request, now, out, key)
            else:
                self._handlers[kind](peer, session, request, now, out)
        except ProtocolError as exc:
            if exc.msg_id is None:  # raised where the id was not at hand: any error about a request echoes it
                exc.msg_id = msg_id
            out.append(Reply(peer, m.encode(exc.envelope())))
        except Exception as exc:  # the crash barrier
            out.append(self._internal(peer, kind, exc, msg_id))
        sent = sum(len(o.payload) for o in out[mark:] if type(o) is Reply and o.peer == peer)
        if sent >= REPLY_TOKEN_BYTES:
            self._spend(conn, now, sent // REPLY_TOKEN_BYTES, debt=True)

    def tick(self, now: float) -> list[Output]:
        """Time passed: end silent sessions, forget idle connections, publish the heartbeat when it is due.

        While the broker cannot store, sessions are not timed out: their leave events could not be kept."""
        out: list[Output] = []
        deadline = now - self.config.session_timeout
        if self.unavailable is None:
            for session in [s for s in self.sessions.values() if s.last_seen < deadline]:
                try:
                    self._end_session(session, "timeout", now, out)
                except Exception as exc:  # the crash barrier: one session's end, not the loop
                    self._internal(session.peer, "timeout", exc)
        self._forget_idle_peers(now)
        # The second test survives a clock that stepped back (the broker's is monotonic; a front end's may not be).
        if now >= self.next_heartbeat or self.next_heartbeat - now > self.config.heartbeat:
            self.next_heartbeat = now + self.config.heartbeat
            ts = now + self.wall_offset
            out.append(Publish(m.SYS_TOPIC, m.encode({"type": "heartbeat", "epoch": self.epoch, "ts": ts})))
            if self.unavailable is None:  # else a room's seq may count events held back, never to be told
                self._tell_heads(out)
        return out

    def _tell_heads(self, out: list[Output]) -> None:
        """With the heartbeat, each room that changed lately says its newest seq on its own topic (for
        ``HEAD_REPEATS`` heartbeats): a subscriber whose feed dropped a room's last events sees it is
        behind and fetches them, even if the room then stays quiet (the Clone pattern's heartbeat)."""
        for room in self.rooms.values():
            if room.seq != room.head_told:
                room.head_told = room.seq
                room.head_repeats = HEAD_REPEATS
            if room.head_repeats:
                room.head_repeats -= 1
                out.append(Publish(room.feed, m.encode({"type": "head", "room": room.name, "seq": room.seq})))

    def shutdown(self, now: float) -> list[Output]:
        """The broker is stopping: tell the feed, so clients know to wait for a new epoch."""
        ts = now + self.wall_offset
        return [Publish(m.SYS_TOPIC, m.encode({"type": "shutdown", "epoch": self.epoch, "ts": ts}))]

    # --- requests -------------------------------------------------------------

    def _forget_idle_peers(self, now: float) -> None:
        """Connections without a session whose bucket has refilled carry nothing worth keeping; a source
        with no connections left goes once its own bucket is full too.  Bounds both tables by the rates."""
        cfg = self.config
        sessions = self.sessions
        idle = [
            peer
            for peer, conn in self.peers.items()
            if peer not in sessions
            and peer not in self.claiming  # a hello waiting for the cluster's word on its name
            and (not cfg.rate_limit or _refilled(conn.bucket, now, cfg.rate_limit, cfg.rate_burst))
        ]
        for peer in idle:
            self.peers.pop(peer).source.peers -= 1
        for name in [n for n, s in self.sources.items() if not s.peers and not s.sessions]:
            if not cfg.source_rate or _refilled(self.sources[name].bucket, now, cfg.source_rate, cfg.source_burst):
                del self.sources[name]

    def _hello(
        self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output], key: str | None
    ) -> None:
        user: str = req["user"]
        folded = user.casefold()
        if session is not None and session.folded != folded:
            raise ProtocolError(
                ErrorCode.SESSION_EXISTS, f"this connection is already {session.user!r}; send bye first"
            )
        self._check_binding(user, key)
        holder = self.by_name.get(folded)
        if holder is not None and holder.peer != peer:
            raise ProtocolError(ErrorCode.NAME_TAKEN, f"{user!r} is taken; choose another name")
        if self.clustered and folded not in self.names_held:  # free here: is it free in the cluster?
            if self._claim_once(peer, "hello", req, folded, key):
                out.append(Claim(peer, folded, bool(req.get("resume"))))
            return
        rooms = req.get("rooms", [m.DEFAULT_ROOM])
        conn = self.peers[peer]
        self._check_room_capacity(session.rooms if session else {}, rooms, conn.source)
        if session is None:
            cap = self.config.max_sessions_per_key
            if key is not None and cap and self.sessions_per_key[key] >= cap:
                raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"at most {cap} sessions per key")
            cap = self.config.max_sessions_per_source
            if cap and conn.source.sessions >= cap:
                raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"at most {cap} sessions from one address or key")
            session = Session(peer, user, folded, {}, now, conn, key)
            self.sessions[peer] = session
            self.by_name[folded] = session
            conn.source.sessions += 1
            if key is not None:
                self.sessions_per_key[key] += 1
        # A repeated hello (a client resuming after a reconnect) is answered again, harmlessly.
        out.append(
            Reply(
                peer,
                m.encode(
                    {
                        "type": "welcome",
                        "user": session.user,
                        "rooms": rooms,
                        "epoch": self.epoch,
                        "history_id": self.store.history_id,
                        "heartbeat": self.config.heartbeat,
                        "session_timeout": self.config.session_timeout,
                        "protocol": m.PROTOCOL_VERSION,
                    }
                ),
            )
        )
        for room in rooms:
            self._enter(session, room, now, out, resumed=req.get("resume", False))

    def _check_binding(self, user: str, key: str | None) -> None:
        """A key bound to a name may use only that name, and nobody else may use it, online or not."""
        bound = self.bindings.get(key) if key is not None else None
        if bound is not None and bound.casefold() != user.casefold():
            raise ProtocolError(ErrorCode.NAME_RESERVED, f"your key may only be used as {bound!r}")
        owner = self.owners.get(user.casefold())
        if owner is not None and owner != key:
            raise ProtocolError(ErrorCode.NAME_RESERVED, f"{user!r} belongs to another key")

    def _join(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        self._check_room_capacity(session.rooms, [req["room"]], session.conn.source)
        self._enter(session, req["room"], now, out)

    def _leave(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        room = req["room"]
        if room not in session.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"you are not in {room!r}")
        self._exit(session, room, "left", now, out)
        out.append(Reply(peer, m.encode({"type": "left", "room": room})))

    def _msg(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        # The general path of a msg (a `me`, a resend, an error); _plain_msgs takes the plain ones.
        if self._resent(peer, session, req, out):
            return
        msg_id, room_name = req["id"], req["room"]
        if len(req["text"]) > self.config.max_text:
            self._check_text(req)
        if room_name not in session.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join {room_name!r} before writing to it", msg_id)
        self._check_said_room(now, msg_id)
        event = m.MsgEvent(room=room_name, user=session.user, text=req["text"], id=msg_id)
        if req.get("me"):
            event.me = True
        if self.clustered:  # acked once the log has it
            print_ = fingerprint("#" + room_name, req["text"], event.me is True)
            if not self._waits(peer, session.folded, msg_id, print_):
                self.in_flight[session.folded, msg_id] = (print_, [])
                self._append(self.rooms[room_name], event, session, now, out, (peer, msg_id))
            return
        seq = self._publish(self.rooms[room_name], event, now, out)
        ack = m.encode(m.Ack(id=msg_id, room=room_name, seq=seq))
        self.said.remember(session.folded, msg_id, ack, now)
        out.append(Reply(peer, ack))

    def _dm(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        if self._resent(peer, session, req, out):
            return
        self._check_text(req)
        target = self.by_name.get(req["to"].casefold())
        if target is None and not self.clustered:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"nobody called {req['to']!r} is online", req["id"])
        if self.clustered and self._waits(peer, session.folded, req["id"], _fingerprint_of(req)):
            return  # a resend of a dm on its way to another front door: its answer acks it
        self._check_said_room(now, req["id"])
        event = {
            "type": "dm",
            "user": session.user,
            "to": target.user if target is not None else req["to"],
            "text": req["text"],
            "id": req["id"],
            "ts": now + self.wall_offset,
        }
        if req.get("me"):
            event["me"] = True
        if target is None:  # a front door: perhaps on another one
            encoded = m.encode(event)
            cost = 2 * len(encoded)  # held twice: the event, and the request it came in
            if self.forwarding_bytes + cost > self.config.max_forward_bytes:
                raise ProtocolError(ErrorCode.UNAVAILABLE, "too many private messages on their way; retry", req["id"])
            self.forwarding[session.folded, req["id"]] = cost
            self.forwarding_bytes += cost
            self.in_flight[session.folded, req["id"]] = (_fingerprint_of(req), [])
            out.append(Forward(peer, session.folded, req["to"].casefold(), encoded, req))
            return
        out.append(Reply(target.peer, m.encode(event)))
        self._acked_dm(peer, session.folded, req, target.user, target.away, now, out)

    def _waits(self, peer: bytes, sender: str, msg_id: str, print_: bytes) -> bool:
        """A front door: is ``msg_id`` of ``sender`` on its way?  The same message again waits for its answer
        (True); another one under that id is ``id_reused``; none on its way: False (``in_flight`` it, once it
        goes)."""
        waiting = self.in_flight.get((sender, msg_id))
        if waiting is None:
            return False
        if waiting[0] != print_:
            raise ProtocolError(ErrorCode.ID_REUSED, "this id is on its way for another message; use a new id", msg_id)
        waiting[1].append(peer)
        return True

    def _arrived(self, sender: str, msg_id: str, first: bytes, reply: bytes) -> list[Output]:
        """The answer for a message on its way: to whoever sent it, and to each connection that sent it again."""
        _, again = self.in_flight.pop((sender, msg_id), (b"", []))
        return [Reply(peer, reply) for peer in dict.fromkeys([first, *again])]

    def _acked_dm(
        self, peer: bytes, sender: str, req: dict, to: str, away: str | None, now: float, out: list[Output]
    ) -> None:
        ack = m.encode(m.Ack(id=req["id"], to=to, away=away or msgspec.UNSET))
        self.said.remember(sender, req["id"], DM_TAG + _fingerprint_of(req) + ack, now)
        if self.clustered:
            out += self._arrived(sender, req["id"], peer, ack)
        else:
            out.append(Reply(peer, ack))

    def forwarded(self, forward: Forward, answer: bytes | None, now: float) -> list[Output]:
        """The answer of the front door that has the recipient (``deliver``'s), or None: no front door has
        them (nobody answered: NATS has no subscriber for the name)."""
        self.forwarding_bytes -= self.forwarding.pop((forward.sender, forward.request["id"]), 0)
        out: list[Output] = []
        try:
            got = msgspec.json.decode(answer, type=DmAnswer) if answer is not None else DmAnswer()
        except (msgspec.DecodeError, msgspec.ValidationError):
            got = DmAnswer(error=ErrorCode.UNAVAILABLE.value)
        if got.to is None:
            code = ErrorCode.UNAVAILABLE if got.error == ErrorCode.UNAVAILABLE.value else ErrorCode.NO_SUCH_USER
            text = (
                "try again" if code is ErrorCode.UNAVAILABLE else f"nobody called {forward.request['to']!r} is online"
            )
            error = ProtocolError(code, text, forward.request["id"])
            return self._arrived(forward.sender, forward.request["id"], forward.peer, m.encode(error.envelope()))
        self._acked_dm(forward.peer, forward.sender, forward.request, got.to, got.away, now, out)
        return out

    def deliver(self, folded: str, event: bytes) -> tuple[bytes, list[Output]]:
        """Another front door's ``Forward``: the dm goes to ``folded`` if they are here; returns the answer for
        that front door (``DmAnswer``: who got it, their away reason; or no ``to``) and what to send."""
        target = self.by_name.get(folded)
        try:
            dm = msgspec.json.decode(event, type=m.Dm)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return msgspec.json.encode(DmAnswer(error=ErrorCode.BAD_ENVELOPE.value)), []
        if target is None or dm.to.casefold() != folded or len(dm.text) > self.config.max_text:
            return msgspec.json.encode(DmAnswer(error=ErrorCode.NO_SUCH_USER.value)), []
        shown: dict[str, Any] = {"type": "dm", "user": dm.user, "to": target.user, "text": dm.text, "id": dm.id}
        shown["ts"] = dm.ts
        if dm.me:
            shown["me"] = True  # as a dm from this front door: only when it is one
        answer = DmAnswer(to=target.user, away=target.away)
        return msgspec.json.encode(answer), [Reply(target.peer, m.encode(shown))]

    def _who(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        room_name = req["room"]
        who: dict[str, Any] = {"type": "who", "room": room_name, "users": []}
        self._add_room_state(who, self.rooms.get(room_name), room_name)
        out.append(Reply(peer, m.encode(who)))

    def learned(self, heads: dict[str, int]) -> None:
        """A front door at start: the rooms the cluster's log has and their last positions, so that ``rooms``
        and a ``join`` know rooms this front door has seen no event of yet.  What it knows already (its feed
        may be ahead of this listing) stays."""
        for name, seq in heads.items():
            if m.valid_room(name) and name not in self.rooms and self.resting.get(name, 0) < seq < 2**63:
                self._rest(name, seq)

    def gone(self, room_name: str, user: str, door: str, now: float) -> Append:
        """A member of a front door that died (its lease ran out): their ``leave`` (reason ``timeout``), for the
        log.  Its log id is the member's and the dead front door's, so the others telling it too store it once."""
        event = m.LeaveEvent(room=room_name, user=user, reason="timeout", seq=0, prev=0, ts=now + self.wall_offset)
        key = f"gone {door} {room_name} {user.casefold()}"
        log_id = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return Append(room_name, m.encode(event), log_id, user.casefold(), None)

    def _roster(self, room: str, folded: str, user: str, present: bool, out: list[Output], away: str = "") -> None:
        if self.clustered:
            out.append(Member(room, folded, user, present, away))

    def _add_room_state(self, reply: dict[str, Any], room: Room | None, room_name: str, topic: bool = False) -> None:
        """The room's members (a front door: with the other front doors'), its ``away`` members (and, for
        ``joined``, its ``topic``), each only where there is one."""
        users = _users(room)
        away = self._away_in(room)
        others = self.elsewhere.get(room_name)
        if others:
            users = self._with_others(users, away, others)
        reply["users"] = users
        if away:
            reply["away"] = away
        if topic and room is not None and room.topic:
            reply["topic"] = room.topic

    def _with_others(self, users: list[str], away: dict[str, str], others: dict[str, tuple[str, str]]) -> list[str]:
        """``users`` and the other front doors' members of the room (those here win); their away reasons go
        into ``away``, within what is left of ``max_reply_bytes`` for reasons."""
        here = {user.casefold() for user in users}
        extra = [(user, reason) for folded, (user, reason) in others.items() if folded not in here]
        budget = self.config.max_reply_bytes - sum(len(u) + len(r.encode()) + 6 for u, r in away.items())
        for user, reason in extra:
            if not reason:
                continue
            budget -= len(user) + len(reason.encode()) + 6  # as _away_in: the reasons' bytes are bounded
            if budget < 0:
                break
            away[user] = reason
        return sorted([*users, *(user for user, _ in extra)], key=str.casefold)

    def _away_in(self, room: Room | None) -> dict[str, str]:
        """Who in ``room`` is away, and why: found among the sessions that are away, not by walking the room.
        At most ``max_reply_bytes`` of names and reasons: 300 characters each would make every join into a big
        room cost megabytes; past it some are not listed (a marker in a member list, not a message)."""
        away: dict[str, str] = {}
        if room is None:
            return away
        budget = self.config.max_reply_bytes
        for session in self.away.values():
            if room.name in session.rooms:
                budget -= len(session.user) + len(session.away.encode()) + 6  # "name":"reason",
                if budget < 0:
                    break
                away[session.user] = session.away
        return away

    def _topic(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        """Set a room's topic: a room event like any other (kept in history, so it survives a restart).
        Setting the topic it already has publishes nothing (a resend of a lost ack is answered the same)."""
        name, text = req["room"], req["topic"]
        if name not in session.rooms:
            raise ProtocolError(ErrorCode.NOT_IN_ROOM, f"join {name!r} before setting its topic", req["id"])
        room = self.rooms[name]
        if text != room.topic:
            event = m.TopicEvent(room=name, user=session.user, topic=text)
            if self.clustered:  # acked once the log has it; the topic is the room's when it comes back
                self._append(room, event, session, now, out, (peer, req["id"]))
                return
            room.topic = text
            room.topic_seq = self._publish(room, event, now, out)
        out.append(Reply(peer, m.encode(m.Ack(id=req["id"], room=name, seq=room.topic_seq))))

    def _nick(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        """Go by another name: checked as a hello's name is, announced in each of the session's rooms.
        The session keeps its recent message ids (a resend after the rename is still recognised)."""
        new, old = req["name"], session.user
        folded = new.casefold()
        if new != old:
            self._check_binding(new, session.key)
            holder = self.by_name.get(folded)
            if holder is not None and holder is not session:
                raise ProtocolError(ErrorCode.NAME_TAKEN, f"{new!r} is taken; choose another name")
            if self.clustered and folded not in self.names_held:
                if self._claim_once(peer, "nick", req, folded, session.key):
                    out.append(Claim(peer, folded, False))
                return
            if self.clustered and folded != session.folded:
                self._release(session.folded, out)
            del self.by_name[session.folded]
            self.said.rename(session.folded, folded, now)
            session.user, session.folded = new, folded
            self.by_name[folded] = session
            if session.away:
                self.away[folded] = self.away.pop(old.casefold())
            if len(session.rooms) > 1:  # an event in each room: it costs what as many requests would
                self._spend(session.conn, now, len(session.rooms) - 1, debt=True)
            for room_name in session.rooms:
                room = self.rooms[room_name]
                room.remove(old.casefold())
                room.add(new, folded)
                self._roster(room_name, old.casefold(), old, False, out)
                self._roster(room_name, folded, new, True, out, session.away)
                self._publish(room, m.NickEvent(room=room_name, user=old, name=new), now, out)
        reply: dict[str, Any] = {"type": "renamed", "user": new, "was": old}
        if "id" in req:
            reply["id"] = req["id"]
        out.append(Reply(peer, m.encode(reply)))

    def _away(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        """Mark the session away (``reason``) or back (""): shown in ``who`` and ``joined``, and to whoever
        sends it a dm.  Not an event: nothing is stored or published."""
        session = cast(Session, session)
        session.away = req.get("reason", "")
        if session.away:
            self.away[session.folded] = session
        else:
            self.away.pop(session.folded, None)
        for room_name in session.rooms:  # a front door: the roster says it too (a cluster's who shows it)
            self._roster(room_name, session.folded, session.user, True, out, session.away)
        reply: dict[str, Any] = {"type": "away", "reason": session.away}
        if "id" in req:
            reply["id"] = req["id"]
        out.append(Reply(peer, m.encode(reply)))

    def _history(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        name = req["room"]
        room = self.rooms.get(name)
        after, asked = req.get("after", 0), req.get("limit", m.DEFAULT_HISTORY_LIMIT)
        limit = min(asked, self.config.max_history)
        seq = self._shown_seq(name, room.seq if room is not None else self._resting_seq(name))
        if self.clustered and _before_memory(room, after, seq):
            kept_from = _first_kept(room) if room is not None and room.history else 0
            conn = self.peers.get(peer)
            source = conn.source.name if conn is not None else ""
            out.append(ReadLog(peer, name, after, limit, seq, req.get("id"), kept_from, source))
            return
        if after >= seq:
            payloads: list[bytes] = []  # nothing after it (and no query for an absurd `after`)
        elif room is not None and (not self.store.persistent or after + 1 >= _first_kept(room)):
            payloads = _after(room, after, limit)  # the common case: a recent gap, from memory
        else:  # older, or a room at rest: from disk (nothing, with no database), no more than is sent
            payloads = self.store.read(name, after, limit, self.config.max_reply_bytes)
        if self.unavailable is not None:
            payloads = [p for p in payloads if _seq_of(p) <= seq]
        out.append(self._history_reply(peer, name, payloads, seq, asked))

    def _history_reply(self, peer: bytes, name: str, payloads: list[bytes], seq: int, asked: int) -> Reply:
        events = _fit(payloads, self.config.max_reply_bytes)
        reply: dict[str, Any] = {"type": "history", "room": name, "events": list(map(msgspec.Raw, events)), "seq": seq}
        if events and len(events) < asked and _seq_of(events[-1]) < seq:
            reply["more"] = True  # cut to fit (bytes, or --max-history): ask again after the last event
        return Reply(peer, m.encode(reply))

    def history_read(self, read: ReadLog, events: list[tuple[int, int, bytes]], ended: bool) -> list[Output]:
        """The log's events for ``read`` ((seq, prev, stored bytes), oldest first): the ``history`` reply.
        ``ended``: the walk reached the room's end in the log.  Otherwise (``limit``, or the log stopped
        answering) the reply says ``more``, so the client asks again after its last event, and never takes
        what it did not get for what the room does not have."""
        payloads = [p for seq, prev, data in events if (p := self.stamped(read.room, seq, prev, data)) is not None]
        last = events[-1][0] if events else read.after
        head = read.head or last  # a room this door has not seen: as far as the log was read
        if not ended:
            head = max(head, last + 1)
        reply = self._history_reply(read.peer, read.room, payloads, head, read.limit)
        if ended or payloads:
            return [reply]
        error = ProtocolError(ErrorCode.UNAVAILABLE, "the cluster's log did not answer; retry later", read.request_id)
        return [Reply(read.peer, m.encode(error.envelope()))]

    def _rooms(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        """Every room and its last seq: the snapshot a subscriber takes after subscribing (Clone pattern)."""
        rooms = {**self.resting, **{name: r.seq for name, r in self.rooms.items()}}
        if self.unavailable is not None:
            rooms = {name: self._shown_seq(name, seq) for name, seq in rooms.items()}
        out.append(Reply(peer, m.encode({"type": "rooms", "rooms": rooms, "history_id": self.store.history_id})))

    def _shown_seq(self, name: str, seq: int) -> int:
        """How far a room may be shown.  All of it, but while the broker cannot store: up to its first
        event not yet stored, which a crash would take back (and give its seq to another event)."""
        first = self.store.first_pending(name) if self.unavailable is not None else None
        return seq if first is None else first - 1

    def _ping(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        out.append(Reply(peer, m.encode({"type": "pong", "epoch": self.epoch, "session": session is not None})))

    def _bye(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        if session is not None:
            self._end_session(session, "quit", now, out)

    # --- rooms and sessions ---------------------------------------------------

    def _check_text(self, req: dict) -> None:
        if len(req["text"]) > self.config.max_text:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"text is {len(req['text'])} characters; the limit is {self.config.max_text}",
                req["id"],
            )

    def _check_said_room(self, now: float, msg_id: str) -> None:
        if self.said.full(now):
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, "the broker remembers as many recent message ids as it may; retry later", msg_id
            )

    def _check_room_capacity(self, current: dict[str, None], rooms: list[str], source: Source) -> None:
        new = [r for r in rooms if r not in current]
        cap = self.config.max_rooms_per_session
        if len(current) + len(new) > cap:
            raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, f"at most {cap} rooms per session")
        cap = self.config.max_rooms_per_source
        if cap and new and source.rooms + len(new) > cap:
            raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, f"at most {cap} room memberships from one address or key")
        wanted = len(self.rooms) + sum(r not in self.rooms for r in new) - self.config.max_rooms
        if wanted > 0 and not self._put_to_rest(wanted, keep=set(rooms)):
            raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, "the broker has reached its room limit")

    def _put_to_rest(self, count: int, keep: set[str]) -> bool:
        """Free memory for ``count`` rooms by putting rooms nobody is in (and not in ``keep``) to rest,
        least recently joined first.  False (and nothing changed) if there are not that many."""
        idle = (r for r in self.rooms.values() if not r.users and r.name not in keep)
        idle = list(itertools.islice(idle, count))
        if len(idle) < count:
            return False
        self.store.commit()  # so a room that comes back finds all its events on disk
        for room in idle:
            del self.rooms[room.name]
            self._rest(room.name, room.seq)
            self.history_bytes -= room.bytes
        return True

    def _rest(self, name: str, seq: int) -> None:
        self.resting[name] = seq
        if len(self.resting) > self.config.max_resting_rooms:
            self.resting.popitem(last=False)  # the store still knows its seq

    def _resting_seq(self, name: str) -> int:
        """The last seq of a room not in memory (0: none yet)."""
        seq = self.resting.get(name)
        return seq if seq is not None else self.store.last_seq(name)

    def _keep(self, room: Room, payloads: list[bytes]) -> None:
        """Add events to a room's in-memory history (the deque's bound drops the oldest beyond
        ``history_kept``), then hold it to its byte bound."""
        history, kept, added = room.history, self.config.history_kept, 0
        for payload in payloads:  # as the hot loop in _plain_msgs does it
            size = len(payload) + EVENT_OVERHEAD
            if len(history) == kept:
                size -= len(history[0]) + EVENT_OVERHEAD
            history.append(payload)
            added += size
        room.bytes += added
        self.history_bytes += added - self._trim_room(room)

    def _trim_room(self, room: Room) -> int:
        """Drop a room's oldest kept events beyond its byte bound (but the newest); returns the bytes freed."""
        history, cap = room.history, self.config.history_bytes_per_room
        freed = 0
        while room.bytes - freed > cap and len(history) > 1:
            freed += len(history.popleft()) + EVENT_OVERHEAD
        room.bytes -= freed
        return freed

    def _trim_all(self, target: int) -> None:
        """In-memory history over its total: the least recently joined rooms give up their oldest events."""
        for room in self.rooms.values():
            history = room.history
            while history and self.history_bytes > target:
                size = len(history.popleft()) + EVENT_OVERHEAD
                room.bytes -= size
                self.history_bytes -= size
            if self.history_bytes <= target:
                return

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            history: deque[bytes] = deque(maxlen=self.config.history_kept)
            room = self.rooms[name] = Room(name, m.room_topic(name), history)
            seq = self._resting_seq(name)
            self.resting.pop(name, None)
            if seq:  # back from rest: its seq goes on, its recent events (and topic) come back from disk
                room.seq = seq
                room.set_topic(self.store.topic(name))
                self._keep(
                    room, self.store.newest(name, seq - self.config.history_kept, self.config.history_bytes_per_room)
                )
        return room

    def _enter(self, session: Session, room_name: str, now: float, out: list[Output], resumed: bool = False) -> None:
        room = self._room(room_name)
        self.rooms[room_name] = self.rooms.pop(room_name)  # most recently joined last: put to rest last
        if room_name not in session.rooms:
            session.rooms[room_name] = None
            session.conn.source.rooms += 1
            room.add(session.user, session.folded)
            self._roster(room_name, session.folded, session.user, True, out, session.away)
            event = m.JoinEvent(room=room_name, user=session.user)
            if resumed:
                event.resumed = True
            self._publish(room, event, now, out)
        shown = self.config.history_on_join
        below = _before_kept(room)
        if self.clustered and not room.seq:  # nothing known of it here (not even from the log's listing, yet)
            below = UNKNOWN
        short = len(room.history) < shown and room.bytes < self.config.max_reply_bytes  # (a reply holds no more)
        topic = self.clustered and not room.topic_seq and not room.topic_asked and not resumed
        if self.clustered and not resumed and ((below and short) or topic):  # memory lacks the room's recent past
            need = shown - len(room.history) if below and short else 0
            room.topic_asked = room.topic_asked or topic
            span, source = self._span(room, need), session.conn.source.name
            out.append(ReadRecent(session.peer, room_name, below, need, span, source, topic))
            return  # (a client coming back asks for what it missed itself, from where it was)
        if self.store.persistent and _first_kept(room) > max(1, room.seq - shown + 1):  # memory gave some up
            recent = self.store.newest(room_name, room.seq - shown, self.config.max_reply_bytes)
        else:
            recent = _newest(room, shown)
        out.append(self._joined(session.peer, room, recent))

    def _joined(self, peer: bytes, room: Room, recent: list[bytes]) -> Reply:
        """The ``joined`` reply: the room's state now, and ``recent`` (as many of the newest as fit)."""
        recent = _fit(recent, self.config.max_reply_bytes, newest=True)
        joined: dict[str, Any] = {
            "type": "joined",
            "room": room.name,
            "users": [],
            "history": list(map(msgspec.Raw, recent)),
            "seq": room.seq,
        }
        self._add_room_state(joined, room, room.name, topic=True)
        return Reply(peer, m.encode(joined))

    def _span(self, room: Room, need: int) -> int:
        """A first guess of how many of the log's positions hold the room's ``need`` events before memory:
        from how thinly its events in memory are spread, else as few as could (the read doubles it as it goes
        back: a guess too long would walk a busy room's every event in it)."""
        per_event = 1.0
        if len(room.history) >= 2:
            first, last = _seq_of(room.history[0]), _seq_of(room.history[-1])
            per_event = (last - first) / (len(room.history) - 1)
        return max(2 * need, int(per_event * need))

    def recent_read(
        self,
        room_name: str,
        peers: list[bytes],
        events: list[tuple[int, int, bytes]],
        topic: tuple[int, bytes] | None = None,
    ) -> list[Output]:
        """The log's newest events older than memory, for ``join``s of ``room_name`` (``ReadRecent``; (seq,
        prev, stored bytes), oldest first, perhaps fewer than asked, or none): kept in memory before what it
        holds (so the next join needs no read), and a ``joined`` for each of ``peers`` (a session that left the
        room meanwhile too: every ``join`` is answered, and a client ignores a ``joined`` it no longer wants).
        Of a room this front door knew nothing of, the newest is where the room stands.  ``topic``: the
        cluster's copy of the room's newest topic event (its position, its stored bytes), if it was looked up
        and found."""
        room = self.rooms.get(room_name)
        if room is None:
            return []
        if topic is not None and topic[0] > room.topic_seq and topic[1].startswith(TOPIC_EVENT):
            room.set_topic(self.stamped(room_name, topic[0], 0, topic[1]))
        below = _before_kept(room)  # memory may have changed meanwhile: only what is older than it now
        if not room.history and events and events[-1][0] > room.seq:
            room.seq = below = events[-1][0]
        older = [p for seq, prev, data in events if seq <= below and (p := self.stamped(room_name, seq, prev, data))]
        if older and _seq_of(older[-1]) == below:  # they end where memory begins: memory begins earlier
            self._keep_older(room, older)
        out: list[Output] = []
        recent = _newest(room, self.config.history_on_join)
        for peer in peers:  # one joined per join (the same client may have asked twice, or left meanwhile)
            if peer in self.sessions:
                out.append(self._joined(peer, room, recent))
        return out

    def _keep_older(self, room: Room, payloads: list[bytes]) -> None:
        """Put events older than a room's memory before it, as far as its bounds allow (the newest first)."""
        history, added = room.history, 0
        for payload in reversed(payloads):
            size = len(payload) + EVENT_OVERHEAD
            if (
                len(history) >= self.config.history_kept
                or room.bytes + added + size > self.config.history_bytes_per_room
            ):
                break
            history.appendleft(payload)
            added += size
        room.bytes += added
        self.history_bytes += added
        self._trim_if_over()
        if not room.topic_seq:  # a front door started since the topic was set: it learns it if it is among them
            topics = [p for p in payloads if p.startswith(TOPIC_EVENT)]
            room.set_topic(topics[-1] if topics else None)

    def _exit(self, session: Session, room_name: str, reason: str, now: float, out: list[Output]) -> None:
        room = self.rooms[room_name]
        del session.rooms[room_name]
        session.conn.source.rooms -= 1
        room.remove(session.folded)
        self._roster(room_name, session.folded, session.user, False, out)
        self._publish(room, m.LeaveEvent(room=room_name, user=session.user, reason=reason), now, out)

    def _end_session(self, session: Session, reason: str, now: float, out: list[Output]) -> None:
        for room_name in list(session.rooms):
            self._exit(session, room_name, reason, now, out)
        del self.sessions[session.peer]
        del self.by_name[session.folded]
        if self.clustered:
            self._release(session.folded, out)
        self.away.pop(session.folded, None)
        session.conn.source.sessions -= 1
        if session.key is not None:
            self.sessions_per_key[session.key] -= 1
            if not self.sessions_per_key[session.key]:
                del self.sessions_per_key[session.key]

    def _publish(self, room: Room, event: m.RoomEvent, now: float, out: list[Output]) -> int:
        """Stamp ``event`` with the room's next seq (and the one before it: a single broker's positions are
        consecutive) and the time, keep it, and send it to the feed.  A front door hands it to the log."""
        if self.clustered:
            self._append(room, event, self.by_name.get(event.user.casefold()), now, out, None)
            return room.seq
        seq = room.seq = room.seq + 1
        event.seq = seq
        event.prev = seq - 1
        event.ts = now + self.wall_offset
        payload = m.encode(event)
        self._keep(room, [payload])
        if self._store_run is not None:  # a call per event that does nothing shows in the broker's throughput
            (room.unsealed or self._store_run(room.name, seq, room)).append(payload)
        out.append(_new_tuple(Publish, (room.feed, payload)))  # Publish(...) without its Python-level __new__
        return seq

    def _append(
        self,
        room: Room,
        event: m.RoomEvent,
        session: Session | None,
        now: float,
        out: list[Output],
        ack: tuple[bytes, str] | None,
    ) -> None:
        """Hand ``event`` to the cluster's log.  An acked event's log id is its user's and request id's, so a
        resend through any front door is stored once; other events are each new (a random id)."""
        event.seq, event.prev, event.ts = 0, 0, now + self.wall_offset
        sender = session.folded if session is not None else event.user.casefold()
        key = f"{sender} {ack[1]}" if ack else os.urandom(16).hex()  # a name has no space
        log_id = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        out.append(Append(room.name, m.encode(event), log_id, sender, ack))

    def applied(self, room_name: str, seq: int, prev: int, payload: bytes, now: float = 0.0) -> list[Output]:
        """The log's next event of ``room_name`` (``cluster_feed``: each room in order, once), from any front
        door: stamped with its position, kept if the room is in memory, and published.  What is not a room
        event of that room (the log is shared infrastructure, not a peer, but a bug or a stray publisher
        could put anything there) is logged and skipped: the chain moves past it."""
        payload = self.stamped(room_name, seq, prev, payload)  # type: ignore[assignment]
        if payload is None:
            return []
        room = self.rooms.get(room_name)
        if room is None:
            self._rest(room_name, seq)  # a join brings it back at this position
        else:
            room.seq = seq
            if payload.startswith(TOPIC_EVENT):
                room.set_topic(payload)
            self._keep(room, [payload])
        out: list[Output] = [Publish(m.room_topic(room_name), payload)]
        if payload.startswith(LEAVE_EVENT) and room is not None:
            self._still_here(room, payload, now, out)
        return out

    def _still_here(self, room: Room, leave: bytes, now: float, out: list[Output]) -> None:
        """A ``leave`` in the log for someone who is in the room here: they came back here (from a front door
        that died, or from a session that timed out) before the log had it, so it is not the last word.  Their
        join goes to the log again, after it, and they are in the roster again: every front door's view of the
        room ends with them in it."""
        event = msgspec.json.decode(leave, type=m.LeaveEvent)
        session = self.by_name.get(event.user.casefold())
        if session is None or room.name not in session.rooms:
            return
        self._roster(room.name, session.folded, session.user, True, out, session.away)
        self._append(room, m.JoinEvent(room=room.name, user=session.user), session, now, out, None)

    def claimed(self, peer: bytes, folded: str, error: ErrorCode | None, now: float) -> list[Output]:
        """The cluster's answer to a ``Claim``: the name is ours (``error`` None), and the hello or nick that
        waited for it goes on; or it is not (``name_taken``, or ``unavailable``: the cluster did not say)."""
        out: list[Output] = []
        kind, req, key = self.claiming.pop(peer, ("", {}, None))
        wanted = (req.get("user") if kind == "hello" else req.get("name")) or ""
        if error is None:
            self.names_held.add(folded)
        if not kind or wanted.casefold() != folded:  # the connection went, or asked for another name since
            if error is None and folded not in self.by_name:
                self._release(folded, out)
            return out
        if error is not None:
            text = f"{wanted!r} is taken; choose another name" if error is ErrorCode.NAME_TAKEN else "try again"
            out.append(Reply(peer, m.encode(ProtocolError(error, text, req.get("id")).envelope())))
            return out
        if peer not in self.peers:  # forgotten meanwhile (cannot be while it waits, but a crash barrier)
            self._release(folded, out)
            return out
        try:
            if kind == "hello":
                self._hello(peer, self.sessions.get(peer), req, now, out, key)
            elif (session := self.sessions.get(peer)) is not None:
                self._nick(peer, session, req, now, out)
        except ProtocolError as exc:
            out.append(Reply(peer, m.encode(exc.envelope())))
        except Exception as exc:  # the crash barrier
            out.append(self._internal(peer, kind, exc, req.get("id")))
        if folded not in self.by_name:  # the hello or nick failed after all: nobody here uses the name
            self._release(folded, out)
        return out

    def _claim_once(self, peer: bytes, kind: str, req: dict, folded: str, key: str | None) -> bool:
        """A front door: a connection's hello or nick waits for the cluster's word on one name at a time.  The
        same request again (a client's retry) waits with it, and its answer goes to the latest; another name
        meanwhile is refused (answering it would leave the first unanswered).  True: claim the name now."""
        waiting = self.claiming.get(peer)
        if waiting is not None:
            wanted = waiting[1].get("user") if waiting[0] == "hello" else waiting[1].get("name")
            if waiting[0] != kind or (wanted or "").casefold() != folded:
                raise ProtocolError(ErrorCode.UNAVAILABLE, "a name of yours is being claimed; retry", req.get("id"))
        self.claiming[peer] = (kind, req, key)
        return waiting is None

    def _release(self, folded: str, out: list[Output]) -> None:
        if folded in self.names_held:
            self.names_held.discard(folded)
            out.append(Release(folded))

    def read_refused(self, read: ReadLog) -> list[Output]:
        """Too many history reads are walking the log: this one is refused, to be asked again later."""
        error = ProtocolError(
            ErrorCode.UNAVAILABLE, "too many history reads from the cluster's log; retry later", read.request_id
        )
        return [Reply(read.peer, m.encode(error.envelope()))]

    def stamped(self, room_name: str, seq: int, prev: int, data: bytes) -> bytes | None:
        """A room event as the log stored it (seq and prev 0), with its position; None (logged) if it is not
        one a front door stored: not an event of ``room_name``, positions of its own, a text too long."""
        payload = data.replace(b'"seq":0,"prev":0', b'"seq":%d,"prev":%d' % (seq, prev), 1)
        try:
            event = _decode_room_event(payload)
        except (msgspec.ValidationError, msgspec.DecodeError):
            event = None
        text = getattr(event, "text", getattr(event, "topic", ""))
        if event is None or event.room != room_name or event.seq != seq or len(text) > self.config.max_text:
            log.error("the cluster's log holds something that is not an event of %s at %d; skipped", room_name, seq)
            return None
        return payload

    def confirmed(self, append: Append, seq: int, now: float) -> list[Output]:
        """The log stored ``append`` at ``seq``: its ack (a msg's is kept, for a resend of its id)."""
        if append.ack is None:
            return []
        peer, msg_id = append.ack
        reply = m.encode(m.Ack(id=msg_id, room=append.room, seq=seq))
        if append.payload.startswith(MSG_EVENT):
            self.said.remember(append.sender, msg_id, reply, now)
        return self._arrived(append.sender, msg_id, peer, reply)

    def refused(self, append: Append, reason: str) -> list[Output]:
        """The log did not store ``append`` (no quorum for that long): the sender hears it was not sent."""
        if append.ack is None:
            return []
        error = ProtocolError(ErrorCode.UNAVAILABLE, f"the cluster's log did not store it ({reason})", append.ack[1])
        return self._arrived(append.sender, append.ack[1], append.ack[0], m.encode(error.envelope()))

    def _resent(self, peer: bytes, session: Session, req: dict, out: list[Output]) -> bool:
        """A message we already accepted (its ack was lost): ack it again, publish nothing.  The same id
        for anything else is refused: the old ack would tell the client a message it never sent went out."""
        said = self.said.get(session.folded, req["id"])
        if said is None:
            return False
        if said[:1] == b"{":  # a msg's ack: its event says what it was
            ack, same = said, self._same_msg(said, req)
        else:  # DM_TAG, a dm's fingerprint, its ack
            ack = said[1 + FINGERPRINT_BYTES :]
            same = req["type"] == "dm" and said[1 : 1 + FINGERPRINT_BYTES] == _fingerprint_of(req)
        if not same:
            raise ProtocolError(
                ErrorCode.ID_REUSED, "you used this id lately for another message; use a new id", req["id"]
            )
        out.append(Reply(peer, ack))
        return True

    def _same_msg(self, ack: bytes, req: dict) -> bool:
        """Is ``req`` the msg this ack was for?  Its event is in the room's history (memory, else disk).
        If neither has it any more (``--db :memory:``, long ago) nobody can tell: it is taken not to be,
        so the client sends it under a new id; a message shown twice is better than one acked and lost."""
        if req["type"] != "msg":
            return False
        acked = m.decode(ack)
        name, seq = acked["room"], acked["seq"]
        if name != req["room"]:
            return False
        room = self.rooms.get(name)
        if room is not None and seq >= _first_kept(room):
            payloads = _after(room, seq - 1, 1)
        else:
            payloads = self.store.read(name, seq - 1, 1)
        event = m.decode(payloads[0]) if payloads else {}
        return event.get("seq") == seq and event["text"] == req["text"] and bool(event.get("me")) == bool(req.get("me"))

    def _has_tokens(self, conn: Peer, now: float) -> bool:
        """Bring the connection's bucket and its source's up to ``now``: has each a token?"""
        cfg = self.config
        peer_ok = not cfg.rate_limit or _refill(conn.bucket, now, cfg.rate_limit, cfg.rate_burst) >= 1
        source_ok = not cfg.source_rate or _refill(conn.source.bucket, now, cfg.source_rate, cfg.source_burst) >= 1
        return peer_ok and source_ok

    def _spend(self, conn: Peer, now: float, cost: float = 1.0, debt: bool = False) -> bool:
        """Take ``cost`` tokens from the connection's bucket and its source's; False (and nothing taken)
        if either has less than one.  ``debt`` takes them anyway (a reply's size, known only after it)."""
        cfg = self.config
        if not self._has_tokens(conn, now) and not debt:
            return False
        if cfg.rate_limit:
            conn.bucket.tokens -= cost
        if cfg.source_rate:
            conn.source.bucket.tokens -= cost
        return True


def network_of(address: str | None) -> str | None:
    """The source an address stands for: an IPv4 address itself (also as libzmq reports it on a dual-stack
    socket, ``::ffff:a.b.c.d``), an IPv6 address its /64 (one host is given a whole /64)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def _refill(bucket: Bucket, now: float, rate: float, burst: float) -> float:
    """Bring a bucket up to ``now``; a clock step back refills nothing, and takes nothing."""
    if now > bucket.at:
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
    return bucket.tokens


def _refilled(bucket: Bucket, now: float, rate: float, burst: float) -> bool:
    return bucket.tokens + max(0.0, now - bucket.at) * rate >= burst


def _fingerprint_of(dm: dict) -> bytes:
    return fingerprint("@" + dm["to"].casefold(), dm["text"], bool(dm.get("me")))


def _origin(exc: BaseException) -> str:
    """Where an exception was raised: file and line of its innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"


def _users(room: Room | None) -> list[str]:
    return list(room.users) if room else []


class _Seq(msgspec.Struct):
    seq: int
    prev: int = 0


class _Said(msgspec.Struct):
    """What a restart needs of a stored event to recognise a resend (its other fields are skipped)."""

    type: str
    seq: int
    ts: float = 0.0
    user: str = ""
    id: str = ""
    name: str = ""  # a nick event's new name


_seq_of_payload = msgspec.json.Decoder(_Seq).decode
_decode_said = msgspec.json.Decoder(_Said).decode


def _seq_of(payload: bytes) -> int:
    """The ``seq`` of an encoded room event (its other fields are skipped, not built)."""
    return _seq_of_payload(payload).seq


def _first_kept(room: Room) -> int:
    """The seq of the oldest event kept in memory (``room.seq + 1``: none)."""
    return _seq_of(room.history[0]) if room.history else room.seq + 1


def _before_kept(room: Room) -> int:
    """The position of the room's newest event that memory does not hold (0: memory has all of it): a front
    door's memory begins where it started following the room."""
    return _seq_of_payload(room.history[0]).prev if room.history else room.seq


def _newest(room: Room, count: int) -> list[bytes]:
    history = room.history
    return list(itertools.islice(history, max(0, len(history) - count), None))


def _before_memory(room: Room | None, after: int, head: int) -> bool:
    """A front door: is what a ``history`` after ``after`` asks for older than its memory (or of a room it has
    no event of: in memory for a member, but seq 0), so that only the log has it?"""
    if after >= head and head:
        return False  # nothing after it as far as this front door knows
    return room is None or not room.seq or after + 1 < _first_kept(room)


def _after(room: Room, after: int, limit: int) -> list[bytes]:
    """The first ``limit`` kept events with ``seq > after``.  A single broker's seqs are consecutive, and
    where ``after`` falls is a subtraction; a cluster's skip, and it is found by bisection."""
    history = room.history
    if not history:
        return []
    first = _seq_of(history[0])
    start = after + 1 - first
    if start >= len(history) or (start > 0 and _seq_of(history[start - 1]) != after):
        start = bisect.bisect_right(history, after, key=_seq_of)
    start = max(0, start)
    if start >= len(history):
        return []
    return list(itertools.islice(history, start, start + limit))


def _fit(payloads: list[bytes], budget: int, newest: bool = False) -> list[bytes]:
    """As many of ``payloads`` as fit in ``budget`` bytes (the oldest first, or with ``newest`` the
    newest), and always at least one, so a reply makes progress whatever one event's size."""
    if sum(map(len, payloads)) <= budget:
        return payloads
    order = reversed(payloads) if newest else iter(payloads)
    fitted, used = [], 0
    for payload in order:
        used += len(payload) + 1
        if fitted and used > budget:
            break
        fitted.append(payload)
    return fitted[::-1] if newest else fitted
