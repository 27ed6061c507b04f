"""The client's session, sans-I/O: the twin of the broker's ``ChatCore``.

Frames and ``now`` go in (``reply``, ``feed``, ``tick`` and the requests),
frames to send (``outbox``), subscription changes (``subscriptions``) and typed
events (``take_events``) come out.  It opens no socket and reads no clock, so
the same object runs under pyzmq (``client.ChatClient``), under a simulated
network in the tests, or anywhere else.

What it guarantees, and how:

- **Nothing accepted is lost, nothing is published twice.**  Every ``msg``
  and ``dm`` stays in ``queue`` until its ``ack`` (or a final error), and is
  sent again under the same id after a timeout or a reconnect; the broker
  answers a repeated id with the first ack.
- **One sender's messages are stored in the order written.**  At most one
  frame whose fate is unknown is in flight: the next frame (the oldest
  unacknowledged messages, up to a batch) goes when every request in it was
  answered.  A retry-later refusal ends the broker's work on a frame, so what
  followed the refused message was not done either, and goes again with it.
  Messages written meanwhile travel together in the next batch.
- **Feed events come out once each, in ``seq`` order per room**
  (``sequencer.FeedSequencer`` fills the holes from ``history``).
- **Several brokers (front doors) are tried in turn.**  Given ``brokers=N``,
  a link silent for ``MISSED_HEARTBEATS`` heartbeats moves ``broker`` to the
  next one (the I/O layer reconnects its sockets there), and the session says
  hello again, re-joins, fills gaps and resends exactly as after a restart.
- **Every timer is computed from ``now``**; ``next_deadline`` is never in the
  past while work is waiting, so a loop around it never spins.
"""

from __future__ import annotations

import itertools
import operator
import secrets
from collections import deque
from collections.abc import Iterable, Iterator
from enum import Enum

import msgspec

import messages as m
from sequencer import MAX_HELD_PER_ROOM, FeedSequencer

#: Heartbeats that may go missing before the link (or the feed alone) is said to be lost.
MISSED_HEARTBEATS = 3
#: Messages that may wait for their ack at once; more are refused (``queue_full``).
MAX_UNACKED = 1000
#: Errors after which a message is kept and sent again later.
RETRY_LATER = frozenset({m.ErrorCode.RATE_LIMITED.value, m.ErrorCode.UNAVAILABLE.value})
#: The errors that refuse a hello for good: this name, these rooms or this key cannot have a session.
HELLO_REFUSALS = frozenset(
    code.value
    for code in (
        m.ErrorCode.NAME_TAKEN,
        m.ErrorCode.BAD_NAME,
        m.ErrorCode.NAME_RESERVED,
        m.ErrorCode.SESSION_EXISTS,
        m.ErrorCode.TOO_MANY_SESSIONS,
        m.ErrorCode.TOO_MANY_ROOMS,
        m.ErrorCode.BAD_FIELD,
    )
)
#: Refusals of a resuming hello that time can end: our old session still holds the name until it times out.
RESUME_LATER = frozenset({m.ErrorCode.NAME_TAKEN.value, m.ErrorCode.SESSION_EXISTS.value})
#: First wait after a retry-later refusal; it doubles while retries make no progress (up to ``ack_timeout``).
RETRY_FIRST_S = 0.25
#: Waits between hellos the transport refused (no connection yet): from the first to the last, doubling.
HELLO_RETRY_S = (0.05, 2.0)
#: The heartbeat a welcome may set, whatever a broker sends: no spinning, no silence taken for life.
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 0.05, 60.0
#: History fills outstanding at once; more rooms with holes wait their turn (an observer of many rooms).
MAX_FILLS = 8
#: A ``history`` fill not answered in this many heartbeats is asked again.
FILL_PATIENCE_HEARTBEATS = 3


class Control(Enum):
    """What a request other than msg/dm was; its id (``KIND.N``) says it, so its error can be placed.
    Message ids are base64url, which has no ``.``: the two never meet."""

    HELLO = "hello"  # hello, or an observer's rooms snapshot
    JOIN = "join"
    LEAVE = "leave"
    ASKED = "ask"  # who: the caller asked, the caller hears of an error
    HISTORY = "history"  # a history the caller asked for: its reply (or error) goes to the caller
    PING = "ping"
    NICK = "nick"  # asked again until answered; its error goes to the caller
    FILL = "fill"  # history to fill a hole: asked again by its timer
    BYE = "bye"


class State(Enum):
    """Where the session is.  An observer (no name) reads ``rooms`` snapshots instead of saying hello."""

    STARTING = "starting"  # hello sent, no answer yet
    READY = "ready"  # welcomed (observer: has its snapshot)
    RESUMING = "resuming"  # the broker lost our session (restart, time-out): hello again, then resend
    CLOSED = "closed"  # bye said, or the hello refused for good


class Link(Enum):
    UP = "up"
    LOST = "lost"  # nothing heard for MISSED_HEARTBEATS heartbeats


class Change(str, Enum):
    """What a ``Status`` event tells."""

    LOST = "lost"  # no heartbeat from the broker
    RESTORED = "restored"  # the same broker run is back
    RECONNECTED = "reconnected"  # a new broker run: session re-established, rooms re-joined, resends sent
    MOVED = "moved"  # ours was silent: trying the next broker address (``broker``)
    SHUTDOWN = "shutdown"  # the broker said it is stopping
    FEED_LOST = "feed_lost"  # the inbox answers but the feed is silent (a relay down?)
    FEED_RESTORED = "feed_restored"

    def __str__(self) -> str:
        return self.value


# --- Events the session adds to the broker's envelopes ------------------------------------


class Status(msgspec.Struct, frozen=True):
    state: Change
    epoch: str | None = None


class Said(msgspec.Struct, kw_only=True):
    """A ``msg`` (``room``) or ``dm`` (``to``) as it was written; kept until its ack."""

    id: str
    text: str
    room: str | None = None
    to: str | None = None
    me: bool = False

    def envelope(self) -> bytes:
        env: dict[str, object] = (
            {"type": "msg", "room": self.room} if self.to is None else {"type": "dm", "to": self.to}
        )
        env.update(text=self.text, id=self.id)
        if self.me:
            env["me"] = True
        return m.encode(env)


class Acked(msgspec.Struct, frozen=True):
    """The broker stored (``msg``) or delivered (``dm``) what we said."""

    request: Said
    ack: m.Ack


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    """An ``error``, with what it refused: a message (``request``), a join (``room``), the hello (neither).
    ``retrying``: the message is kept and sent again in a moment."""

    error: m.Error
    request: Said | None = None
    room: str | None = None
    retrying: bool = False


class Rejoined(msgspec.Struct, frozen=True):
    """A room joined again after a reconnect: nothing to announce; what was missed comes as events."""

    joined: m.Joined


Event = m.Envelope | Status | Acked | Failed | Rejoined


class ClientSession:
    """One chat session (``name``), or a read-only observer of the feed (``name=None``)."""

    def __init__(
        self,
        name: str | None,
        now: float,
        *,
        rooms: Iterable[str] | None = None,
        heartbeat: float = 1.0,
        ack_timeout: float = 3.0,
        positions: dict[str, int] | None = None,
        history_id: str | None = None,
        brokers: int = 1,
    ) -> None:
        """An observer may start from ``positions`` (room -> last seq it has) of the broker history
        ``history_id``: if the broker's history is another one they are void, and every room is taken
        from its first event.  ``brokers``: how many addresses the caller has; ``broker`` says which to use."""
        self.name = name
        self.observer = name is None
        wanted = list(rooms) if rooms is not None else ([] if self.observer else [m.DEFAULT_ROOM])
        self.wanted_rooms: dict[str, None] = dict.fromkeys(wanted)
        self.rooms: dict[str, None] = {}  # rooms the broker confirmed we are in
        self.state = State.STARTING
        self.link = Link.UP
        self.feed_link = Link.UP
        self.brokers = max(1, brokers)
        self.broker = 0  # which of them to talk to: the I/O layer connects there when this changes
        self._moved_at = now
        self.user: str | None = None  # the name the broker welcomed (None while there is no session)
        self.epoch: str | None = None
        self.history_id = history_id
        self.heartbeat = heartbeat
        self.ack_timeout = ack_timeout
        self.sequencer = FeedSequencer()
        self.sequencer.last.update(positions or {})
        #: Started from positions: a room not among them was made while we were away, so all of it is news.
        self.resumed = bool(positions)
        self.refused: m.Error | None = None  # the hello's final refusal (name_taken, bad_name, ...)
        self.away_reason = ""  # why we are away, as the broker confirmed ("": here); said again after a restart
        #: A nick asked for and not yet answered: (name, request id, when sent).  Asked again until answered: a
        #: lost ``renamed`` must not leave us believing in the old name, which the next hello would use.
        self._nicking: tuple[str, str, float] | None = None

        self.queue: dict[str, Said] = {}  # unacknowledged messages, in the order written
        self.in_flight: set[str] = set()  # ids of the one frame whose fate is unknown
        self._in_flight_at = 0.0
        self._retry_at: float | None = None  # after a retry-later refusal: when to send again
        self._retry_wait = RETRY_FIRST_S
        #: Joins and leaves asked for and not yet answered: room -> (request id, when sent).  Sent again
        #: after ``ack_timeout`` (a frame the transport dropped, a reply lost in a restart) until answered.
        self._joining: dict[str, tuple[str, float]] = {}
        self._leaving: dict[str, tuple[str, float]] = {}
        self._leave_after: set[str] = set()  # rooms to leave once our queued messages to them are answered
        #: Outstanding ``history`` requests per room, oldest first: (FILL (ours) or HISTORY (the caller's),
        #: request id).  The broker answers a connection's requests in order, and a reply names no request.
        self._histories: dict[str, deque[tuple[Control, str]]] = {}
        self._fill_backlog: dict[str, int] = {}  # rooms whose fill waits for a free slot -> after which seq
        self._fills: dict[str, float] = {}  # room -> when we asked history to fill its hole
        self._catch_up: dict[str, float] = {}  # room -> when to look for events missed just after joining
        self._closing_until: float | None = None  # close(): deliver what was accepted until then
        self._close_patience = 0.0

        self._last_heard = now
        self._feed_heard = now
        self._last_ping = now
        self._hello_at: float | None = None  # when to say hello (or ask the snapshot) again
        self._hello_wait = HELLO_RETRY_S[0]
        self._restoring = False  # heard again after a loss: same broker run (restored) or a new one?
        # Unpredictable ids: whoever takes our name after we left must not guess the ids we will resend.
        self._ids: Iterator[str] = (secrets.token_urlsafe(12) for _ in itertools.count())
        self._requests = 0  # numbers the other requests (see Control)
        self._refusal: str | None = None  # the last hello refusal shown while resuming (shown once per code)
        self._waiting_feed: list[m.Envelope] = []  # room events that came while our session was being resumed

        self.outbox: deque[bytes] = deque()  # frames for the broker's inbox, in order
        self.subscriptions: list[tuple[bool, bytes]] = [(True, m.SYS_TOPIC)]  # (subscribe?, topic), in order
        self._events: list[Event] = []
        if self.observer and not wanted:
            self.subscriptions.append((True, m.ROOM_TOPIC_PREFIX))
        self.subscriptions += [(True, m.room_topic(room)) for room in wanted]
        self._hello(now)

    # --- what the caller reads ------------------------------------------------------------

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def closing(self) -> bool:
        return self._closing_until is not None

    @property
    def connected(self) -> bool:
        return self.link is Link.UP

    def next_deadline(self) -> float:
        """When ``tick`` has work to do next: never in the past once ``tick(now)`` has run."""
        due = [self._last_ping + self.heartbeat]
        if self.link is Link.UP:
            due.append(self._last_heard + self.heartbeat * MISSED_HEARTBEATS)
            if self.feed_link is Link.UP:
                due.append(self._feed_heard + self.heartbeat * MISSED_HEARTBEATS)
        elif self.brokers > 1:  # when to move on to the next broker
            due.append(max(self._last_heard, self._moved_at) + self.heartbeat * MISSED_HEARTBEATS)
        if self._hello_at is not None:
            due.append(self._hello_at)
        if self.in_flight:
            due.append(self._in_flight_at + self.ack_timeout)
        if self.state is State.READY:
            due += [sent + self.ack_timeout for _, sent in (*self._joining.values(), *self._leaving.values())]
            if self._nicking is not None:
                due.append(self._nicking[2] + self.ack_timeout)
        if self._retry_at is not None:
            due.append(self._retry_at)
        if self._closing_until is not None:
            due.append(self._closing_until)
        due += self._catch_up.values()
        due += [asked + self.heartbeat * FILL_PATIENCE_HEARTBEATS for asked in self._fills.values()]
        return min(due)

    # --- requests -------------------------------------------------------------------------

    def say(self, room: str, text: str, now: float, me: bool = False) -> str:
        """Queue ``text`` for ``room``; returns the message id its ``Acked`` (or ``Failed``) will carry."""
        return self._write(Said(id=next(self._ids), room=room, text=text, me=me), now)

    def say_many(self, room: str, texts: Iterable[str], now: float, me: bool = False) -> list[str]:
        """Queue several messages at once (all or none: ``queue_full`` if they do not all fit)."""
        said = [Said(id=next(self._ids), room=room, text=text, me=me) for text in texts]
        self._check_writable(len(said))
        for one in said:
            one.envelope()  # text that is not valid Unicode raises here, before any is queued
        self.queue.update((one.id, one) for one in said)
        self._pump(now)  # as few frames as the batch limits allow
        return [one.id for one in said]

    def dm(self, to: str, text: str, now: float, me: bool = False) -> str:
        """Queue a private message; it never goes on the feed."""
        return self._write(Said(id=next(self._ids), to=to, text=text, me=me), now)

    def join(self, room: str, now: float) -> None:
        """Join ``room``: ``Joined`` (or ``Failed`` with ``room``) answers; asked again until one does."""
        if room in self._joining:
            return
        self.subscriptions.append((True, m.room_topic(room)))  # before the join, so its events reach us
        self._leaving.pop(room, None)
        self._leave_after.discard(room)
        self._joining[room] = ("", now)
        self._ask_membership(room, now)

    def leave(self, room: str, now: float) -> None:
        """Leave ``room`` once what we said there was answered: a leave must not overtake our own lines.
        Asked again until ``left`` answers; from now on the room is not ours (no events, no re-join)."""
        self.wanted_rooms.pop(room, None)
        self._joining.pop(room, None)
        if any(said.room == room for said in self.queue.values()):
            self._leave_after.add(room)
        else:
            self._leaving[room] = ("", now)
            self._ask_membership(room, now)

    def who(self, room: str, now: float) -> None:
        self._send(Control.ASKED, {"type": "who", "room": room})

    def topic(self, room: str, topic: str, now: float) -> None:
        """Set ``room``'s topic: its ``TopicEvent`` comes on the feed (the ack needs no event of its own)."""
        self._send(Control.ASKED, {"type": "topic", "room": room, "topic": topic})

    def nick(self, name: str, now: float) -> None:
        """Go by ``name``: ``Renamed`` (or ``Failed``) answers; asked again until one does.  From then on a hello
        (after a restart) says the new name."""
        self._nicking = (name, "", now)
        self._ask_nick(now)

    def _ask_nick(self, now: float) -> None:
        if self._nicking is not None and self.state is State.READY:
            name = self._nicking[0]
            self._nicking = (name, self._send(Control.NICK, {"type": "nick", "name": name}), now)

    def away(self, reason: str, now: float) -> None:
        """Away (``reason``) or back (""): ``m.Away`` answers."""
        self._send(Control.ASKED, {"type": "away", "reason": reason})

    def history(self, room: str, now: float, after: int = 0, limit: int = m.DEFAULT_HISTORY_LIMIT) -> None:
        self._ask_history(Control.HISTORY, room, after, limit)

    def close(self, now: float, patience: float) -> None:
        """Deliver what was accepted while acks keep coming (``patience`` seconds without one at most),
        then say bye.  ``undelivered`` tells what was left when patience ran out."""
        if self.state is State.CLOSED:
            return
        if not self.queue or patience <= 0 or self.observer:
            self._bye()
            return
        self._close_patience = patience
        self._closing_until = now + patience

    @property
    def undelivered(self) -> list[Said]:
        return list(self.queue.values())

    def _check_writable(self, count: int) -> None:
        if self.closing or self.closed:
            raise ChatError("queue_full", "the session is closing")
        if len(self.queue) + count > MAX_UNACKED:
            raise ChatError("queue_full", f"{MAX_UNACKED} messages may wait for the broker; try again later")

    def _write(self, said: Said, now: float) -> str:
        self._check_writable(1)
        said.envelope()  # text that is not valid Unicode (a lone surrogate) raises here, never queued to fail again
        self.queue[said.id] = said
        self._pump(now)
        return said.id

    # --- input: frames ----------------------------------------------------------------------

    def reply(self, payload: bytes, now: float) -> None:
        """A frame from the inbox (DEALER): one reply, or a batch of them."""
        for env in m.read_envelopes(payload):
            self._heard(now, feed=False)
            self._on_reply(env, now)
        self._pump(now)

    def feed(self, payload: bytes, now: float) -> None:
        """A frame's envelope from the feed (SUB): one event, or a batch of one room's events."""
        for env in m.read_envelopes(payload):
            self._heard(now, feed=True)
            self._on_feed(env, now)
        self._pump(now)

    def blocked(self, now: float) -> None:
        """The transport took none of what is left in ``outbox`` (no connection yet, or its queue is full).
        Dropped: messages are resent by their timer, a hello is tried again soon, then more slowly, and a
        ``history`` is no longer awaited (a fill of ours is asked again; the caller's is said to have failed)."""
        dropped = {_history_id(frame) for frame in self.outbox if frame.startswith(b'{"type":"history"')}
        self.outbox.clear()
        for room in list(self._histories):
            requests = self._histories[room]
            for item in [item for item in requests if item[1] in dropped]:
                requests.remove(item)
                self._history_unanswered(*item)  # a fill stays in _fills: its timer asks again
            if not requests:
                del self._histories[room]
        if self._hello_at is not None:
            self._hello_at = now + self._hello_wait
            self._hello_wait = min(self._hello_wait * 2, HELLO_RETRY_S[1])

    # --- input: time ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: liveness, pings, hellos, resends, fills, the end of a close."""
        self._check_liveness(now)
        if now >= self._last_ping + self.heartbeat:
            self._ping(now)
        if self._hello_at is not None and now >= self._hello_at:
            self._hello(now)
        if self.in_flight and now >= self._in_flight_at + self.ack_timeout:
            self.in_flight.clear()  # unanswered: sent again, same ids (the broker answers a repeat with its ack)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
        if self.state is State.READY:
            for room, (_, sent) in [*self._joining.items(), *self._leaving.items()]:
                if now >= sent + self.ack_timeout:  # unanswered (dropped with no connection, lost in a restart)
                    self._ask_membership(room, now)
            if self._nicking is not None and now >= self._nicking[2] + self.ack_timeout:
                self._ask_nick(now)
        for room, due in list(self._catch_up.items()):
            if now >= due:
                del self._catch_up[room]
                self._fetch(room, self.sequencer.last.get(room), now)
        for room, asked in list(self._fills.items()):
            if now >= asked + self.heartbeat * FILL_PATIENCE_HEARTBEATS:  # the reply was lost: ask again
                del self._fills[room]
                waiting = self._histories.pop(room, deque())
                kept = deque(item for item in waiting if item[0] is not Control.FILL)  # the lost one
                if kept:
                    self._histories[room] = kept
                self._fetch(room, self.sequencer.last.get(room), now)
        self._pump(now)
        if self._closing_until is not None and (not self.queue or now >= self._closing_until):
            self._bye()

    def _ping(self, now: float) -> None:
        self._last_ping = now
        self._send(Control.PING, {"type": "ping"})

    def _check_liveness(self, now: float) -> None:
        limit = self.heartbeat * MISSED_HEARTBEATS
        if self.link is Link.UP and now - self._last_heard >= limit:
            self.link = Link.LOST
            self._restoring = False
            self._emit(Status(Change.LOST))
        if (
            self.link is Link.LOST
            and self.brokers > 1
            and self.state is not State.CLOSED
            and now - max(self._last_heard, self._moved_at) >= limit
        ):
            self._move(now)
        if self.link is Link.UP and self.feed_link is Link.UP and now - self._feed_heard >= limit:
            self.feed_link = Link.LOST  # the inbox answers, the feed says nothing
            self._emit(Status(Change.FEED_LOST))

    def _move(self, now: float) -> None:
        """Ours is silent: on to the next broker, as to a restarted one (a session there is a new one)."""
        self.broker = (self.broker + 1) % self.brokers
        self._moved_at = now
        self._hello_wait = HELLO_RETRY_S[0]
        self._emit(Status(Change.MOVED))
        self._waiting_feed.clear()  # the silent broker's: the next one tells its own history
        self._fills.clear()
        for requests in self._histories.values():  # asked of the silent broker: no answer will come
            for kind, request_id in requests:
                self._history_unanswered(kind, request_id)
        self._histories.clear()
        if self.state is State.READY:
            self._lose_session(now)
        else:
            self.in_flight.clear()
            self._hello(now)

    def _history_unanswered(self, kind: Control, request_id: str) -> None:
        """A ``history`` the caller asked for will get no reply: say so (a fill of ours is asked again)."""
        if kind is Control.HISTORY:
            detail = "no answer from the broker; ask again"
            self._emit(Failed(error=m.Error(code=m.ErrorCode.UNAVAILABLE.value, detail=detail, id=request_id)))

    def _heard(self, now: float, feed: bool) -> None:
        self._last_heard = now
        if self.link is Link.LOST:
            self.link = Link.UP
            self.feed_link = Link.UP
            self._feed_heard = now
            self._restoring = True  # restored or reconnected: the next epoch we see tells
            self._hello_wait = HELLO_RETRY_S[0]
        if feed:
            self._feed_heard = now
            if self.feed_link is Link.LOST:
                self.feed_link = Link.UP
                self._emit(Status(Change.FEED_RESTORED))
                self._catch_up_all(now)

    # --- replies ------------------------------------------------------------------------------

    def _on_reply(self, env: m.Envelope, now: float) -> None:
        match env:
            case m.Welcome():
                self._on_welcome(env, now)
            case m.Joined() if self.state is State.READY:  # before our welcome it is a reply we cannot place:
                self._on_joined(env, now)  # the hello is answered again, joined and all
            case m.Joined():
                pass
            case m.Left() if env.room in self._joining:
                self.rooms.pop(env.room, None)  # a leave asked before the join now on its way: its answer follows
            case m.Left() if env.room in self.wanted_rooms:  # the answer to a leave asked before a later join
                self.rooms.pop(env.room, None)
                self._joining[env.room] = ("left", now)
                self._ask_membership(env.room, now)  # in again, as last asked
            case m.Left():
                self._leaving.pop(env.room, None)
                self._forget_room(env.room)
                self._emit(env)
            case m.Ack():
                self._on_ack(env)
            case m.Renamed():
                self.name = self.user = env.user
                if self._nicking is not None and self._nicking[0] == env.user:
                    self._nicking = None
                self._emit(env)
            case m.Away():
                self.away_reason = env.reason
                self._emit(env)
            case m.Error():
                self._on_error(env, now)
            case m.History() if self._answered(env.room) is Control.FILL:
                self._on_fill(env, now)
            case m.Rooms() if self.observer:
                self._on_snapshot(env, now)
            case m.Pong():
                self._saw_epoch(env.epoch, now)
                if not env.session and self.state is State.READY and not self.observer:
                    self._lose_session(now)  # the broker forgot us (we timed out): start again
            case _:  # dm, who, a history the caller asked for
                self._emit(env)

    def _answered(self, room: str) -> Control | None:
        """Which of our history requests for ``room`` this reply answers: the oldest outstanding one."""
        waiting = self._histories.get(room)
        if not waiting:
            return None
        kind, _ = waiting.popleft()
        if not waiting:
            del self._histories[room]
        return kind

    def _on_fill(self, env: m.History, now: float) -> None:
        room = env.room
        asked = self._fills.pop(room, None)
        if asked is None:
            return  # a room we stopped following meanwhile
        before = self.sequencer.last.get(room)
        # Only what belongs there; events of types we do not know (``others``) are links of the chain too.
        events = sorted((event for event in (*env.events, *env.others) if event.room == room), key=_SEQ)
        ready, fetch = self.sequencer.fill(room, events, env.seq, env.more)
        if fetch is not None and self.sequencer.last.get(room) == before and len(ready) == 0 and not events:
            self._fills[room] = asked  # no progress: its timer asks again, not a loop of requests
            return
        self._deliver(room, ready, fetch, now)
        self._next_fill(now)

    def _on_welcome(self, env: m.Welcome, now: float) -> None:
        if self.state is State.CLOSED or (self.state is State.READY and env.epoch == self.epoch):
            return  # the answer to a hello said twice (the first answer was slow): nothing new
        self._saw_history(env.history_id)
        resumed = self.state is State.RESUMING
        self.user = env.user
        self.heartbeat = min(max(env.heartbeat, MIN_HEARTBEAT_S), MAX_HEARTBEAT_S)  # a sane one, whatever was sent
        self._saw_epoch(env.epoch, now)
        self.state = State.READY
        self._hello_at = None
        self.in_flight.clear()  # whatever was in flight is sent again, first, in the order written
        self._retry_at = None
        self._retry_wait = RETRY_FIRST_S
        self._refusal = None
        if resumed:
            self._emit(Status(Change.RECONNECTED, self.epoch))
        self._emit(env)
        for room in [*self._joining, *self._leaving]:  # asked before or during the outage
            self._ask_membership(room, now)
        if resumed and self.away_reason:  # a new broker run knows nothing of it
            self._send(Control.ASKED, {"type": "away", "reason": self.away_reason})
        self._ask_nick(now)  # asked before or during the outage
        for room in self.wanted_rooms:  # the hello's joins: their joined replies are awaited like any join's
            if room not in self._joining:  # (one lost, the room's baseline would never come: asked again)
                self._joining[room] = ("welcome", now)
        self._replay_waiting_feed(now)

    def _on_joined(self, env: m.Joined, now: float) -> None:
        room = env.room
        if room in self._leaving or (room not in self.wanted_rooms and room not in self._joining):
            return  # a join we no longer want (left since), or never asked for
        self._joining.pop(room, None)
        rejoin = room in self.sequencer.last  # back after a reconnect: what we missed comes as events
        self.rooms[room] = None
        self.wanted_rooms[room] = None
        self._emit(Rejoined(env) if rejoin else env)
        self._deliver(room, *self.sequencer.expect(room, env.seq), now)
        # Our SUB subscription and this join raced on two connections; if events were published before the
        # subscription landed and none came after, no gap would show.  One catch-up fetch closes that hole.
        self._catch_up[room] = now + self.heartbeat

    def _on_snapshot(self, env: m.Rooms, now: float) -> None:
        """An observer's ``rooms`` snapshot: where each room stands, so nothing is missed or repeated."""
        first = self.state is State.STARTING
        started_over = self._saw_history(env.history_id)  # so did the positions we started from
        for room, head in env.rooms.items():
            if self.wanted_rooms and room not in self.wanted_rooms:
                continue
            if (started_over or not first or self.resumed) and room not in self.sequencer.last:
                self.sequencer.last[room] = 0  # a room we never saw: everything it has is news to us
            self._deliver(room, *self.sequencer.expect(room, head), now)
        self.sequencer.unknown_baseline = 0  # rooms not in the snapshot are newer than it
        for room in list(self.sequencer.held):
            if room not in self.sequencer.last:
                self._deliver(room, *self.sequencer.expect(room, 0), now)
        if self.state is State.RESUMING:
            self._emit(Status(Change.RECONNECTED, self.epoch))
        self.state = State.READY
        self._hello_at = None
        self._emit(env)
        self._replay_waiting_feed(now)

    def _on_ack(self, ack: m.Ack) -> None:
        said = self.queue.pop(ack.id, None)
        if said is None:
            return  # an ack for a resend we already had acked is no news
        self.in_flight.discard(ack.id)
        self._retry_wait = RETRY_FIRST_S  # progress
        if self._closing_until is not None:
            self._closing_until = max(self._closing_until, self._last_heard + self._close_patience)
        self._emit(Acked(said, ack))
        self._leave_when_answered(said.room)

    def _on_error(self, env: m.Error, now: float) -> None:
        code, msg_id = env.code, env.id
        said = self.queue.get(msg_id) if msg_id is not None else None
        kind = _control_of(msg_id)
        if said is not None or (msg_id is None and self.in_flight):
            self._on_message_error(env, said, now)
        elif kind is Control.HELLO:
            self._on_hello_error(env, now)
        elif kind in (Control.JOIN, Control.LEAVE):
            self._on_membership_error(env, now)
        elif kind is Control.NICK:
            if self._nicking is not None and self._nicking[1] == msg_id and code not in RETRY_LATER:
                if code == m.ErrorCode.NO_SESSION.value:
                    self._lose_session(now)  # asked again after the welcome
                else:
                    self._nicking = None
                    self._emit(Failed(error=env))
        elif code == m.ErrorCode.NO_SESSION.value and self.state is State.READY:
            self._lose_session(now)  # the broker forgot us (we timed out, or it restarted)
        elif msg_id is None and code in RETRY_LATER:
            pass  # about a frame of ours answered already, or resent anyway: nothing to tell
        elif kind in (None, Control.ASKED, Control.HISTORY):
            self._emit(Failed(error=env))
        # else: a ping, or a fill (asked again by its timer)
        if kind in (Control.FILL, Control.HISTORY):
            self._history_refused(env.id or "")

    def _history_refused(self, request_id: str) -> None:
        """A refused history request gets no history reply: it is no longer outstanding."""
        for room, waiting in list(self._histories.items()):
            for item in waiting:
                if item[1] == request_id:
                    waiting.remove(item)
                    if not waiting:
                        del self._histories[room]
                    return

    def _on_membership_error(self, env: m.Error, now: float) -> None:
        room = self._membership_of(env.id or "")
        if room is None:
            return  # an answer to a join or leave asked again since
        if env.code in RETRY_LATER or env.code == m.ErrorCode.NO_SESSION.value:
            if env.code == m.ErrorCode.NO_SESSION.value and self.state is State.READY:
                self._lose_session(now)
            return  # asked again by its timer, or after the welcome
        if room in self._leaving:  # not_in_room: left already
            del self._leaving[room]
            self._forget_room(room)
            return
        del self._joining[room]
        if room not in self.wanted_rooms:
            self.subscriptions.append((False, m.room_topic(room)))
        self._emit(Failed(error=env, room=room))

    def _on_message_error(self, env: m.Error, said: Said | None, now: float) -> None:
        """An error about a msg/dm we sent (``said``), or about the frame in flight (no id: a whole batch)."""
        code = env.code
        if code == m.ErrorCode.NO_SESSION.value:
            if self.state is State.READY:
                self._lose_session(now)  # queued messages stay: they are resent after the new welcome
        elif code in RETRY_LATER:
            if said is not None and said.id not in self.in_flight:
                return  # the frame it was in was already given up on: one wait per frame, not per message
            # The broker stopped at this request: it and what followed it in the frame were not done.
            self.in_flight.clear()
            self._retry_at = now + self._retry_wait
            self._retry_wait = min(self._retry_wait * 2, self.ack_timeout)
            self._emit(Failed(error=env, request=said, retrying=True))
        elif said is None:
            self._emit(Failed(error=env))  # about the frame as a whole (bad_envelope, internal): shown
        elif code == m.ErrorCode.ID_REUSED.value:
            self._renumber(said)  # our id was taken (by whoever had our name before): a new one, same place
        else:
            del self.queue[said.id]
            self.in_flight.discard(said.id)
            self._emit(Failed(error=env, request=said))
            self._leave_when_answered(said.room)

    def _on_hello_error(self, env: m.Error, now: float) -> None:
        """Retry-later: ask again in a moment.  A refusal at start is final (``refused``); while resuming,
        the name may come free (our old session timing out): shown once, and asked again."""
        if self.state is State.READY:
            return  # an answer to a hello said twice; the other was welcomed
        if env.code in RETRY_LATER or (self.state is State.RESUMING and env.code in RESUME_LATER):
            self._hello_at = now + self._retry_wait
            self._retry_wait = min(self._retry_wait * 2, self.ack_timeout)
            if env.code not in RETRY_LATER and env.code != self._refusal:
                self._refusal = env.code
                self._emit(Failed(error=env))
        elif not self.observer and env.code in HELLO_REFUSALS:
            self.refused = env  # name_taken, bad_name...: this session cannot start (or go on)
            self.state = State.CLOSED
            self._hello_at = None
            self._emit(Failed(error=env))

    # --- the feed -------------------------------------------------------------------------------

    def _on_feed(self, env: m.Envelope, now: float) -> None:
        match env:
            case m.Heartbeat() if env.epoch not in (None, self.epoch) and not self._restoring:
                # A new broker run, or a relay pointed elsewhere?  Only the broker itself says (pong).
                self._ping(now)
                if self.observer:
                    self._emit(env)
            case m.Heartbeat():
                self._saw_epoch(env.epoch, now)
                if self.observer:
                    self._emit(env)
            case m.Shutdown():
                self._emit(Status(Change.SHUTDOWN, env.epoch))
            case m.Head() if not (self.state is State.RESUMING or self._restoring):
                if env.room in self.sequencer.last:  # a room we follow: are we behind its head?
                    self._deliver(env.room, *self.sequencer.expect(env.room, env.seq), now)
            case m.MsgEvent() | m.JoinEvent() | m.LeaveEvent() | m.TopicEvent() | m.NickEvent() | m.OtherEvent() if (
                self.state is State.RESUMING or self._restoring
            ):
                # Which history is this, the one our seqs are from or a new one?  After a silence, the next
                # epoch tells (the same broker run, or a new one); while resuming, the welcome does.
                self._waiting_feed.append(env)
                if len(self._waiting_feed) > MAX_HELD_PER_ROOM:
                    del self._waiting_feed[0]  # its room's next hole is filled from history
            case m.MsgEvent() | m.JoinEvent() | m.LeaveEvent() | m.TopicEvent() | m.NickEvent() | m.OtherEvent():
                room = env.room  # an OtherEvent too: a newer broker's type, not shown, still a link of the chain
                if not self._follows(room):
                    return  # a late event for a room we left, or one we never asked for
                self._deliver(room, *self.sequencer.push(env), now)
            case _:
                pass  # replies do not come on the feed

    def _follows(self, room: str) -> bool:
        """Rooms whose events we deliver: ours, and those being joined; an observer of no rooms in
        particular follows them all."""
        return room in self.wanted_rooms or room in self._joining or (self.observer and not self.wanted_rooms)

    def _replay_waiting_feed(self, now: float) -> None:
        waiting, self._waiting_feed = self._waiting_feed, []
        for env in waiting:
            self._on_feed(env, now)

    def _deliver(self, room: str, ready: list, fetch_after: int | None, now: float) -> None:
        me = (self.user or self.name or "").casefold()
        for event in ready:
            self._emit(event)
            # Our own message on the feed is as good as its ack (both follow the commit), and the ack may
            # never come: libzmq drops replies not yet read when the broker's connection breaks.  A resend
            # to a broker that kept nothing (--db :memory:) would otherwise be published twice.
            if type(event) is m.MsgEvent and event.id in self.queue and event.user.casefold() == me:
                self._on_ack(m.Ack(id=event.id, room=room, seq=event.seq))
        self._fetch(room, fetch_after, now)

    def _fetch(self, room: str, after: int | None, now: float) -> None:
        """Ask ``room``'s history after ``after``: at most ``MAX_FILLS`` at once, the others in turn."""
        if after is None or room in self._fills:
            return
        if len(self._fills) >= MAX_FILLS:
            self._fill_backlog[room] = after
            return
        self._fill_backlog.pop(room, None)
        self._fills[room] = now
        self._ask_history(Control.FILL, room, after, m.MAX_HISTORY_LIMIT)

    def _next_fill(self, now: float) -> None:
        while self._fill_backlog and len(self._fills) < MAX_FILLS:
            room = next(iter(self._fill_backlog))
            after = self.sequencer.last.get(room)
            del self._fill_backlog[room]
            self._fetch(room, after, now)

    def _ask_history(self, kind: Control, room: str, after: int, limit: int) -> None:
        request_id = self._send(kind, {"type": "history", "room": room, "after": after, "limit": limit})
        self._histories.setdefault(room, deque()).append((kind, request_id))

    def _catch_up_all(self, now: float) -> None:
        """After an outage, ask every room for what came after the last event seen: nothing may come
        later that would show the gap."""
        for room, last in list(self.sequencer.last.items()):
            self._fills.pop(room, None)
            self._fetch(room, last, now)

    # --- sending ------------------------------------------------------------------------------

    def _send(self, kind: Control, env: dict[str, object]) -> str:
        """Queue a request other than msg/dm, under an id that says what it was: its error echoes it."""
        self._requests += 1
        env["id"] = request_id = f"{kind.value}.{self._requests}"
        self.outbox.append(m.encode(env))
        return request_id

    def _pump(self, now: float) -> None:
        """Send the next frame of messages, if none is in flight: the oldest unacknowledged ones, in order."""
        if self.in_flight or not self.queue or self.state is not State.READY:
            return
        if self._retry_at is not None and now < self._retry_at:
            return
        frame: list[bytes] = []
        size = 2
        for said in itertools.islice(self.queue.values(), m.MAX_BATCH_REQUESTS):
            payload = said.envelope()
            if frame and size + len(payload) + 1 > m.MAX_FRAME_BYTES:
                break
            frame.append(payload)
            size += len(payload) + 1
            self.in_flight.add(said.id)
        self.outbox.extend(m.batch_frames(frame, m.MAX_FRAME_BYTES, m.MAX_BATCH_REQUESTS))
        self._in_flight_at = now

    def _renumber(self, said: Said) -> None:
        old = said.id
        said.id = next(self._ids)
        self.queue = {said.id if k == old else k: v for k, v in self.queue.items()}  # its place kept
        self.in_flight.discard(old)

    def _leave_when_answered(self, room: str | None) -> None:
        if room in self._leave_after and not any(said.room == room for said in self.queue.values()):
            self._leave_after.discard(room)
            self._leaving[room] = ("", self._last_heard)
            self._ask_membership(room, self._last_heard)

    def _ask_membership(self, room: str, now: float) -> None:
        """Send the join or leave ``room`` waits for (when there is a session to send it in)."""
        if self.state is not State.READY:
            return  # sent after the welcome
        if room in self._joining:
            self._joining[room] = (self._send(Control.JOIN, {"type": "join", "room": room}), now)
        elif room in self._leaving:
            self._leaving[room] = (self._send(Control.LEAVE, {"type": "leave", "room": room}), now)

    def _membership_of(self, request_id: str) -> str | None:
        if not request_id:
            return None
        for pending in (self._joining, self._leaving):
            for room, (sent_as, _) in pending.items():
                if sent_as == request_id:
                    return room
        return None

    def _hello(self, now: float) -> None:
        """Start (or restart) the session; an observer asks for the rooms snapshot instead."""
        self._hello_at = now + max(self.heartbeat, self._hello_wait)  # unanswered: say it again
        if self.observer:
            self._send(Control.HELLO, {"type": "rooms"})
            return
        request: dict[str, object] = {"type": "hello", "user": self.name, "rooms": list(self.wanted_rooms)}
        if self.state is State.RESUMING:
            request["resume"] = True  # we had a session: coming back is no news to the others
        self._send(Control.HELLO, request)

    def _bye(self) -> None:
        if self.user is not None and self.state is State.READY:
            self._send(Control.BYE, {"type": "bye"})
        self.state = State.CLOSED
        self._closing_until = None
        self._hello_at = None

    # --- broker runs and histories -------------------------------------------------------------

    def _saw_epoch(self, epoch: str | None, now: float) -> None:
        if epoch is None:
            return
        if self._restoring:
            self._restoring = False
            if epoch == self.epoch and self.state is State.READY:
                self._emit(Status(Change.RESTORED, epoch))
                self._replay_waiting_feed(now)
                self._catch_up_all(now)
        if epoch == self.epoch:
            return
        restarted = self.epoch is not None
        self.epoch = epoch
        if restarted and self.state is State.READY:
            # A new broker run knows no session of ours.  Its rooms go on from where they were (or, with no
            # database, start over): re-joining, or a new snapshot, tells which, and fetches what we missed.
            self._fills.clear()
            self._lose_session(now)

    def _saw_history(self, history_id: str | None) -> bool:
        """True (and our seqs forgotten) when the broker's history is not the one our seqs came from."""
        changed = self.history_id is not None and history_id is not None and history_id != self.history_id
        if changed:
            self.sequencer.reset()
            if self.observer:
                self.sequencer.unknown_baseline = 0  # every room starts over: each from its first event
            self._fills.clear()
            self._catch_up.clear()
        if history_id is not None:
            self.history_id = history_id
        return changed

    def _lose_session(self, now: float) -> None:
        self.state = State.RESUMING
        self.user = None
        self.rooms.clear()
        self._catch_up.clear()
        self.in_flight.clear()
        self._hello(now)

    def _forget_room(self, room: str) -> None:
        self.rooms.pop(room, None)
        self.wanted_rooms.pop(room, None)
        self.sequencer.forget(room)
        self._fills.pop(room, None)
        self._fill_backlog.pop(room, None)
        self._catch_up.pop(room, None)
        self.subscriptions.append((False, m.room_topic(room)))

    def _emit(self, event: Event) -> None:
        self._events.append(event)


_SEQ = operator.attrgetter("seq")


def _history_id(frame: bytes) -> str | None:
    """The id of a ``history`` request we encoded."""
    request_id = msgspec.json.decode(frame).get("id")
    return request_id if type(request_id) is str else None


def _control_of(request_id: str | None) -> Control | None:
    kind, dot, _ = (request_id or "").partition(".")
    if not dot:
        return None
    try:
        return Control(kind)
    except ValueError:
        return None


class ChatError(Exception):
    """A refusal the caller must hear of: the broker's to our hello (``name_taken``, ``bad_name``...), or
    ours to a message when the queue of messages waiting for the broker is full (``queue_full``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
