"""The chat logic: sessions, rooms, presence, history, liveness.  No sockets, no clock.

``ChatCore`` is a sans-I/O state machine in the manner of h11: the broker feeds
it what arrived (``handle``) and the passing of time (``tick``), and gets back
what to send where, as ``Reply`` (to one peer, on the ROUTER) and ``Publish``
(to a topic, on the PUB).  Time is always passed in, so tests drive it without
sleeping, and any other front end (a web gateway, a test) can reuse the logic.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import os
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

import messages as m
from messages import ErrorCode, ProtocolError
from store import MemoryStore, SqliteStore


class Reply(NamedTuple):
    """Send ``payload`` to the peer with this ROUTER routing id."""

    peer: bytes
    payload: bytes


class Publish(NamedTuple):
    """Send ``payload`` on the feed under ``topic``."""

    topic: bytes
    payload: bytes


Output = Reply | Publish
_new_tuple = tuple.__new__  # builds a NamedTuple at half the cost of calling it: once per event, it shows


@dataclass(frozen=True)
class ChatConfig:
    """Tunables of the chat logic; the protocol's hard limits live in ``messages``."""

    heartbeat: float = 1.0  # seconds between sys/ heartbeats; clients ping this often
    session_timeout: float = 5.0  # a session silent this long is ended with reason "timeout"
    history_on_join: int = 50  # events of history in a "joined" reply
    history_kept: int = 1000  # events kept per room for "history" requests
    max_rooms: int = 10_000  # rooms held in memory at once (rooms nobody is in are put to rest); bounds memory
    rate_limit: float = 20.0  # requests per second per session (token bucket); 0 turns it off
    rate_burst: float = 40.0  # bucket size: how many requests may come at once
    # A resend is acked again, not repeated, while its id is remembered: each user's last ids, and a
    # bound on them all together (past it, the users with the least recently accepted messages go first).
    dedupe_per_user: int = 1024  # more than a client may keep unacknowledged (client.MAX_UNACKED: 1000)
    dedupe_total: int = 100_000
    max_text: int = m.MAX_TEXT_CHARS  # characters per msg/dm text (at most the protocol's limit)
    max_rooms_per_session: int = m.MAX_ROOMS_PER_SESSION  # rooms one session may be in at once
    max_history: int = m.MAX_HISTORY_LIMIT  # events one history reply may carry (larger limits are cut to it)
    max_sessions_per_key: int = 4  # live sessions per CURVE client key; 0 = no limit (plain mode has no keys)

    def __post_init__(self) -> None:
        if self.heartbeat <= 0 or self.session_timeout <= self.heartbeat:
            raise ValueError("need 0 < heartbeat < session_timeout")
        if not 0 <= self.history_on_join <= self.history_kept:
            raise ValueError("need 0 <= history_on_join <= history_kept")
        if self.rate_limit < 0 or (self.rate_limit and self.rate_burst < 1):
            raise ValueError("need rate_limit >= 0 and rate_burst >= 1")
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
class Session:
    peer: bytes
    user: str
    folded: str  # user.casefold(): the key of by_name, of the dedupe windows and of name bindings
    rooms: dict[str, None]  # insertion-ordered set
    last_seen: float
    tokens: float
    tokens_at: float
    key: str | None = None  # the CURVE public key (z85) it authenticated with; None in plain mode


@dataclass(eq=False, slots=True)
class Room:
    name: str
    topic: bytes
    # Encoded events, oldest first, seqs contiguous up to ``seq``.  Bytes, not dicts: the cyclic GC
    # never walks them (so its pauses do not grow with history), they take a third of the memory, and
    # replies embed them as they are (msgspec.Raw) instead of encoding them again.
    history: deque[bytes]
    # Who is in the room, in display order (case-insensitive), kept sorted as people come and go:
    # ``joined`` and ``who`` list everyone, and sorting a room of 10,000 on every join cost 2 ms.
    users: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)  # users[i].casefold(): the sort keys
    seq: int = 0

    def add(self, user: str, folded: str) -> None:
        at = bisect.bisect_left(self.folded, folded)
        self.folded.insert(at, folded)
        self.users.insert(at, user)

    def remove(self, folded: str) -> None:
        at = bisect.bisect_left(self.folded, folded)
        del self.folded[at], self.users[at]


class SaidWindows:
    """What each user said lately: id -> the ack it got, so a resend gets that ack again and is not repeated.

    One window per user (casefolded name), made when the first of their messages is accepted, with
    their last ``per_user`` ids: more than a client sends between a message and its resend, so other
    users' traffic cannot push a sender's recent ids out, only the ``total`` bound on all windows
    together (a window itself counts as one).  Past it, the windows written to least recently go
    first.  Per user, rather than one window of everybody's last 100,000, also keeps the broker
    fast: a sender's recent ids stay in the CPU cache, where the shared window cost a cache miss on
    every lookup and eviction (a fifth of the broker thread, measured under load).
    """

    __slots__ = ("per_user", "size", "total", "windows")

    def __init__(self, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self.size = 0  # ids remembered plus windows, all users together
        self.windows: OrderedDict[str, OrderedDict[str, bytes]] = OrderedDict()  # least recently written first

    def window(self, folded: str) -> OrderedDict[str, bytes]:
        """``folded``'s window, now the most recently used.  Whoever adds to it says so with ``grew``."""
        window = self.windows.get(folded)
        if window is None:
            window = self.windows[folded] = OrderedDict()
            self.grew(1)
        else:
            self.windows.move_to_end(folded)
        return window

    def get(self, folded: str, msg_id: str) -> bytes | None:
        window = self.windows.get(folded)
        return None if window is None else window.get(msg_id)

    def remember(self, folded: str, msg_id: str, ack: bytes) -> None:
        window = self.window(folded)
        before = len(window)
        window[msg_id] = ack
        if len(window) > self.per_user:
            window.popitem(last=False)
        else:
            self.grew(len(window) - before)

    def grew(self, count: int) -> None:
        """``count`` more ids are remembered: forget the least recently written windows while over ``total``.
        The most recent one (being written to) never goes: it counts at most ``per_user + 1 <= total``."""
        self.size += count
        while self.size > self.total:
            _, window = self.windows.popitem(last=False)
            self.size -= len(window) + 1


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
    ) -> None:
        """``now`` (here and in every call) is a monotonic clock; ``ts`` stamps are ``now + wall_offset``.

        ``bindings`` maps CURVE client keys to the one name each may use (None: any free name); a bound
        name is then reserved for its key, even while nobody uses it.
        """
        self.config = config or ChatConfig()
        self.store = store or MemoryStore()
        self.wall_offset = wall_offset
        self.epoch = epoch or new_epoch()
        self.sessions: dict[bytes, Session] = {}  # by routing id
        self.by_name: dict[str, Session] = {}  # by casefolded user name
        self.rooms: dict[str, Room] = {}  # rooms in memory, the least recently joined first
        #: Rooms put to rest to make room for others (nobody was in them): their last seq, so a seq is
        #: never given twice.  Their events stay in the store; a join brings the room back.
        self.resting: dict[str, int] = {}
        #: Each user's recent message ids and their acks.  Neither is walked by the cyclic GC.
        self.said = SaidWindows(self.config.dedupe_per_user, self.config.dedupe_total)
        self.bindings = {key: name for key, name in (bindings or {}).items() if name}
        self.owners = {name.casefold(): key for key, name in self.bindings.items()}  # bound name -> its key
        self.sessions_per_key: Counter[str] = Counter()
        self.next_heartbeat = now
        self._restore()
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
        }

    def _restore(self) -> None:
        """Pick up rooms, seqs and recent message ids where the last broker run left them.

        Resends after a restart are recognised among each room's recent events (``history_kept``):
        a client resends within seconds, long before a room moves that far on.
        """
        snap = self.store.load(self.config.history_kept)
        # The newest message ids of all rooms, at most as many as the windows hold (a heap, so memory
        # stays bounded however many rooms there are), replayed oldest first: as they were said.
        newest: list[tuple[float, int, str, str, str]] = []
        most = self.config.dedupe_total
        for name, seq in snap.seqs.items():
            recent = snap.recent.get(name, ())
            if len(self.rooms) < self.config.max_rooms:
                room = self._room(name)
                room.seq = seq
                room.history.extend(recent)
            else:  # more rooms than memory is for: the rest wait on disk until someone joins them
                self.resting[name] = seq
            for event in map(m.decode, recent):
                if event.get("type") == "msg":
                    said = (event["ts"], event["seq"], name, event["user"].casefold(), event["id"])
                    (heapq.heappush if len(newest) < most else heapq.heappushpop)(newest, said)
        for _, seq, room_name, folded, msg_id in sorted(newest):
            self.said.remember(folded, msg_id, m.encode(m.Ack(id=msg_id, room=room_name, seq=seq)))

    def commit(self) -> None:
        """Make everything handled so far durable.  The broker calls this before sending what it was given."""
        self.store.commit()

    # --- entry points ---------------------------------------------------------

    def handle(self, peer: bytes, frames: list[bytes], now: float, key: str | None = None) -> list[Output]:
        """One inbox message from ``peer``: a request, or a batch of them; returns what to send.
        Never raises on bad input.

        ``key`` is the CURVE public key the peer authenticated with (the frame's User-Id), if any.
        """
        out: list[Output] = []
        try:
            value = m.decode_frame(frames)
            if type(value) is list:
                self._handle_batch(peer, m.check_batch(value), now, key, out)
                return out
            mine: list[bytes] = []
            session = self.sessions.get(peer)
            if session is not None and self._plain_msgs(session, (value,), 0, now, mine, out):
                out.append(Reply(peer, mine[0]))
            else:
                self._handle_one(peer, value, now, key, out)
        except ProtocolError as exc:
            out.append(Reply(peer, m.encode(exc.envelope())))
        return out

    def _handle_batch(self, peer: bytes, envelopes: list[Any], now: float, key: str | None, out: list[Output]) -> None:
        """Each request as if it had come alone; the peer's own replies then go back as batch frames,
        in order, so a batch costs one send each way instead of one per request."""
        mine: list[bytes] = []
        session = self.sessions.get(peer)
        at, end = 0, len(envelopes)
        while at < end:
            if session is not None:
                at = self._plain_msgs(session, envelopes, at, now, mine, out)
                if at == end:
                    break
            done: list[Output] = []
            self._handle_one(peer, envelopes[at], now, key, done)
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
        said, rooms, user, room_of = self.said.windows.get(session.folded), session.rooms, session.user, self.rooms
        max_text, per_user, rate = self.config.max_text, self.config.dedupe_per_user, self.config.rate_limit
        encode, plain, event, ack, new_tuple = m.encode, m.PlainMsg, m.MsgEvent, m.Ack, _new_tuple
        ts, persistent = now + self.wall_offset, self.store.persistent
        end, grown, first = len(envelopes), 0, True
        try:
            while at < end:
                req = envelopes[at]
                if type(req) is not plain:
                    break
                room_name, msg_id = req.room, req.id
                if (
                    room_name not in rooms
                    or len(req.text) > max_text
                    or (said is not None and msg_id in said)
                    or (rate and not self._take_token(session, now))
                ):
                    break
                # _publish and SaidWindows.remember, inlined: a call per message costs 5-10% of the
                # broker's throughput.  tests/test_fast_path.py holds this loop to the general path.
                room = room_of[room_name]
                seq = room.seq = room.seq + 1
                payload = encode(event(room=room_name, user=user, text=req.text, id=msg_id, seq=seq, ts=ts))
                room.history.append(payload)
                if persistent:
                    self.store.append(room_name, seq, payload)
                out.append(new_tuple(Publish, (room.topic, payload)))
                if first:
                    said, first = self.said.window(session.folded), False  # made, or moved to most recent
                said[msg_id] = reply = encode(ack(id=msg_id, room=room_name, seq=seq))
                mine.append(reply)
                if len(said) > per_user:
                    said.popitem(last=False)
                else:
                    grown += 1
                at += 1
        finally:
            if grown:
                self.said.grew(grown)
        return at

    def _handle_one(self, peer: bytes, env: Any, now: float, key: str | None, out: list[Output]) -> None:
        try:
            request = m.parse_envelope(env)
            kind = request["type"]
            session = self.sessions.get(peer)
            if session is not None:
                session.last_seen = now
                if self.config.rate_limit and kind not in ("ping", "bye") and not self._take_token(session, now):
                    raise ProtocolError(ErrorCode.RATE_LIMITED, "too many requests; slow down", request.get("id"))
            elif kind not in m.SESSIONLESS:
                raise ProtocolError(ErrorCode.NO_SESSION, "say hello first", request.get("id"))
            if kind == "hello":
                self._hello(peer, session, request, now, out, key)
            else:
                self._handlers[kind](peer, session, request, now, out)
        except ProtocolError as exc:
            out.append(Reply(peer, m.encode(exc.envelope())))

    def tick(self, now: float) -> list[Output]:
        """Time passed: end silent sessions, publish the heartbeat when it is due."""
        out: list[Output] = []
        deadline = now - self.config.session_timeout
        for session in [s for s in self.sessions.values() if s.last_seen < deadline]:
            self._end_session(session, "timeout", now, out)
        # The second test survives a clock that stepped back (the broker's is monotonic; a front end's may not be).
        if now >= self.next_heartbeat or self.next_heartbeat - now > self.config.heartbeat:
            self.next_heartbeat = now + self.config.heartbeat
            ts = now + self.wall_offset
            out.append(Publish(m.SYS_TOPIC, m.encode({"type": "heartbeat", "epoch": self.epoch, "ts": ts})))
        return out

    def shutdown(self, now: float) -> list[Output]:
        """The broker is stopping: tell the feed, so clients know to wait for a new epoch."""
        ts = now + self.wall_offset
        return [Publish(m.SYS_TOPIC, m.encode({"type": "shutdown", "epoch": self.epoch, "ts": ts}))]

    # --- requests -------------------------------------------------------------

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
        rooms = req.get("rooms", [m.DEFAULT_ROOM])
        self._check_room_capacity(session.rooms if session else {}, rooms)
        if session is None:
            cap = self.config.max_sessions_per_key
            if key is not None and cap and self.sessions_per_key[key] >= cap:
                raise ProtocolError(ErrorCode.TOO_MANY_SESSIONS, f"at most {cap} sessions per key")
            session = Session(peer, user, folded, {}, now, self.config.rate_burst, now, key)
            self.sessions[peer] = session
            self.by_name[folded] = session
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
            self._enter(session, room, now, out)

    def _check_binding(self, user: str, key: str | None) -> None:
        """A key bound to a name may use only that name, and nobody else may use it, online or not."""
        bound = self.bindings.get(key) if key is not None else None
        if bound is not None and bound.casefold() != user.casefold():
            raise ProtocolError(ErrorCode.NAME_RESERVED, f"your key may only be used as {bound!r}")
        owner = self.owners.get(user.casefold())
        if owner is not None and owner != key:
            raise ProtocolError(ErrorCode.NAME_RESERVED, f"{user!r} belongs to another key")

    def _join(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        self._check_room_capacity(session.rooms, [req["room"]])
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
        event = m.MsgEvent(room=room_name, user=session.user, text=req["text"], id=msg_id)
        if req.get("me"):
            event.me = True
        seq = self._publish(self.rooms[room_name], event, now, out)
        ack = m.encode(m.Ack(id=msg_id, room=room_name, seq=seq))
        self.said.remember(session.folded, msg_id, ack)
        out.append(Reply(peer, ack))

    def _dm(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        if self._resent(peer, session, req, out):
            return
        self._check_text(req)
        target = self.by_name.get(req["to"].casefold())
        if target is None:
            raise ProtocolError(ErrorCode.NO_SUCH_USER, f"nobody called {req['to']!r} is online", req["id"])
        event = {
            "type": "dm",
            "user": session.user,
            "to": target.user,
            "text": req["text"],
            "id": req["id"],
            "ts": now + self.wall_offset,
        }
        if req.get("me"):
            event["me"] = True
        out.append(Reply(target.peer, m.encode(event)))
        ack = m.encode(m.Ack(id=req["id"], to=target.user))
        self.said.remember(session.folded, req["id"], ack)
        out.append(Reply(peer, ack))

    def _who(self, peer: bytes, session: Session, req: dict, now: float, out: list[Output]) -> None:
        room = self.rooms.get(req["room"])
        out.append(Reply(peer, m.encode({"type": "who", "room": req["room"], "users": _users(room)})))

    def _history(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        name = req["room"]
        room = self.rooms.get(name)
        after = req.get("after", 0)
        limit = min(req.get("limit", m.DEFAULT_HISTORY_LIMIT), self.config.max_history)
        if room is not None and (not self.store.persistent or after + 1 >= _first_kept(room)):
            events = _after(room, after, limit)  # the common case: a recent gap, from memory
        else:  # older, or a room at rest: from disk (nothing, with no database)
            events = list(map(msgspec.Raw, self.store.read(name, after, limit)))
        seq = room.seq if room is not None else self.resting.get(name, 0)
        reply = {"type": "history", "room": name, "events": events, "seq": seq}
        out.append(Reply(peer, m.encode(reply)))

    def _rooms(self, peer: bytes, session: Session | None, req: dict, now: float, out: list[Output]) -> None:
        """Every room and its last seq: the snapshot a subscriber takes after subscribing (Clone pattern)."""
        rooms = {**self.resting, **{name: r.seq for name, r in self.rooms.items()}}
        out.append(Reply(peer, m.encode({"type": "rooms", "rooms": rooms, "history_id": self.store.history_id})))

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

    def _check_room_capacity(self, current: dict[str, None], rooms: list[str]) -> None:
        new = [r for r in rooms if r not in current]
        cap = self.config.max_rooms_per_session
        if len(current) + len(new) > cap:
            raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, f"at most {cap} rooms per session")
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
            self.resting[room.name] = room.seq
        return True

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, m.room_topic(name), deque(maxlen=self.config.history_kept))
            seq = self.resting.pop(name, None)
            if seq is not None:  # back from rest: its seq goes on, its recent events come back from disk
                room.seq = seq
                kept = self.config.history_kept
                recent = self.store.read(name, seq - kept, kept)
                if recent and m.decode(recent[-1]).get("seq") == seq:  # contiguous up to seq, as kept
                    room.history.extend(recent)
        return room

    def _enter(self, session: Session, room_name: str, now: float, out: list[Output]) -> None:
        room = self._room(room_name)
        self.rooms[room_name] = self.rooms.pop(room_name)  # most recently joined last: put to rest last
        if room_name not in session.rooms:
            session.rooms[room_name] = None
            room.add(session.user, session.folded)
            self._publish(room, m.JoinEvent(room=room_name, user=session.user), now, out)
        recent = _after(room, room.seq - self.config.history_on_join, self.config.history_on_join)
        out.append(
            Reply(
                session.peer,
                m.encode(
                    {
                        "type": "joined",
                        "room": room_name,
                        "users": _users(room),
                        "history": recent,
                        "seq": room.seq,
                    }
                ),
            )
        )

    def _exit(self, session: Session, room_name: str, reason: str, now: float, out: list[Output]) -> None:
        room = self.rooms[room_name]
        del session.rooms[room_name]
        room.remove(session.folded)
        self._publish(room, m.LeaveEvent(room=room_name, user=session.user, reason=reason), now, out)

    def _end_session(self, session: Session, reason: str, now: float, out: list[Output]) -> None:
        for room_name in list(session.rooms):
            self._exit(session, room_name, reason, now, out)
        del self.sessions[session.peer]
        del self.by_name[session.folded]
        if session.key is not None:
            self.sessions_per_key[session.key] -= 1
            if not self.sessions_per_key[session.key]:
                del self.sessions_per_key[session.key]

    def _publish(self, room: Room, event: m.RoomEvent, now: float, out: list[Output]) -> int:
        """Stamp ``event`` with the room's next seq and the time, keep it, and send it to the feed."""
        seq = room.seq = room.seq + 1
        event.seq = seq
        event.ts = now + self.wall_offset
        payload = m.encode(event)
        room.history.append(payload)
        if self.store.persistent:  # a call per event that does nothing shows in the broker's throughput
            self.store.append(room.name, seq, payload)
        out.append(_new_tuple(Publish, (room.topic, payload)))  # Publish(...) without its Python-level __new__
        return seq

    def _resent(self, peer: bytes, session: Session, req: dict, out: list[Output]) -> bool:
        """A message we already accepted (its ack was lost): ack it again, publish nothing."""
        ack = self.said.get(session.folded, req["id"])
        if ack is None:
            return False
        out.append(Reply(peer, ack))
        return True

    def _take_token(self, session: Session, now: float) -> bool:
        """The session's token bucket (only called with a rate limit set)."""
        rate = self.config.rate_limit
        elapsed = max(0.0, now - session.tokens_at)  # a clock step back refills nothing, and takes nothing
        tokens = min(self.config.rate_burst, session.tokens + elapsed * rate)
        session.tokens_at = now
        if tokens < 1:
            session.tokens = tokens
            return False
        session.tokens = tokens - 1
        return True


def _users(room: Room | None) -> list[str]:
    return list(room.users) if room else []


def _first_kept(room: Room) -> int:
    """The seq of the oldest event kept in memory (seqs in a room's history are contiguous)."""
    return room.seq - len(room.history) + 1


def _after(room: Room, after: int, limit: int) -> list[msgspec.Raw]:
    """The first ``limit`` kept events with ``seq > after``, ready to embed in a reply."""
    start = max(0, after + 1 - _first_kept(room))
    return [msgspec.Raw(p) for p in itertools.islice(room.history, start, start + limit)]
