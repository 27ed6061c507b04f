"""The chat client: a library (``ChatClient``) and the console chat people type in.

A bot in ten lines::

    from client import ChatClient

    with ChatClient("echo-bot", router="tcp://localhost:5555", pub="tcp://localhost:5556") as bot:
        bot.connect()
        for event in bot.events():
            if event["type"] == "msg" and event["user"] != bot.user:
                bot.say(event["room"], event["text"][::-1])

``ChatClient`` is single-threaded: it owns a DEALER (requests and replies) and a
SUB (the feed), and does its housekeeping (pings, liveness, re-hello after a
broker restart, resending unacknowledged messages, filling feed gaps from
``history``) inside ``poll``.  Nothing runs behind the caller's back.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import zmq

import console_text
import keys
import messages as m
import transport

Event = dict[str, Any]

#: Events held per room while waiting for a gap to be filled; past this the hole is skipped.
MAX_HELD_PER_ROOM = 10_000
#: Heartbeats that may go missing before the client says the connection is lost.
MISSED_HEARTBEATS = 3
#: Messages that may wait for their ack at once; ``say``/``dm`` refuse more (``queue_full``).
MAX_UNACKED = 1000
#: Feed frames (events, or batches of at most 32 KiB) the SUB queues before libzmq drops them: a
#: client that falls behind loses feed frames, not memory, and the sequencer fills the gap from history.
SUB_HWM = 1_000


#: Errors after which an unacknowledged message is kept and sent again after ``ack_timeout``.
RETRY_LATER = frozenset({m.ErrorCode.RATE_LIMITED.value, m.ErrorCode.UNAVAILABLE.value})


class ChatError(Exception):
    """The broker refused a request that the client cannot go on without (e.g. the name)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class FeedSequencer:
    """Puts each room's feed events in ``seq`` order, exactly once (the zguide Clone pattern).

    Sans-I/O: events go in, events in order come out, plus "fetch history after
    N" when there is a hole (a PUB high-water-mark drop, a subscription that
    arrived late, a reconnect).  A room's events are held until its baseline is
    known: ``expect`` gives it (from a ``joined`` reply or a ``rooms``
    snapshot), or ``unknown_baseline`` does for rooms nobody announced (0 for an
    observer that has its snapshot: a room it has never heard of is new, so
    everything from its first event is wanted).
    """

    def __init__(self, unknown_baseline: int | None = None) -> None:
        self.unknown_baseline = unknown_baseline
        self.last: dict[str, int] = {}
        self.held: dict[str, dict[int, Event]] = {}
        self.lost = 0  # events skipped because the broker no longer had them
        self.filled = 0  # events that came from history, not the feed (the feed dropped them, or was late)

    def expect(self, room: str, head: int) -> tuple[list[Event], int | None]:
        """The broker says ``room``'s last seq is ``head``; returns what can be delivered and any fetch needed.

        First sight: ``head`` is the baseline (everything up to it is known).  Known room and the broker is
        ahead: fetch what we missed.  ``head`` behind what we have is only an answer older than events the
        feed already brought (reply and feed travel apart): nothing to do.  When the broker's history
        really started over, the caller sees a new ``history_id`` and calls ``reset`` first.
        """
        if room not in self.last:
            self.last[room] = head
        ready, fetch = self._settle(room)
        if fetch is None and head > self.last[room]:
            fetch = self.last[room]
        return ready, fetch

    def forget(self, room: str) -> None:
        self.last.pop(room, None)
        self.held.pop(room, None)

    def reset(self) -> None:
        """The broker's history started over (a new database, or none): every seq we hold is void."""
        self.last.clear()
        self.held.clear()

    def push(self, event: Event) -> tuple[list[Event], int | None]:
        room, seq = event["room"], event["seq"]
        last = self.last.get(room)
        if last is None:
            if self.unknown_baseline is None:
                self._hold(room, event)
                return [], None
            self.last[room] = last = self.unknown_baseline
        if seq <= last:
            return [], None  # already delivered
        if seq == last + 1 and room not in self.held:
            self.last[room] = seq  # the common case: in order, nothing held
            return [event], None
        self._hold(room, event)
        return self._settle(room)

    def fill(self, room: str, events: list[Event], complete: bool) -> tuple[list[Event], int | None]:
        """A ``history`` reply arrived.  ``complete``: the broker sent all it had after our last seq."""
        if room not in self.last:
            return [], None
        held = self.held.get(room, {})
        fresh = [e for e in events if e["seq"] > self.last[room] and e["seq"] not in held]
        self.filled += len(fresh)
        for event in fresh:
            self._hold(room, event)
        ready, fetch = self._settle(room)
        while fetch is not None and complete:
            # The broker no longer keeps what we missed: skip over the hole rather than wait forever.
            self._skip_to(room, min(self.held[room]))
            more, fetch = self._settle(room)
            ready += more
        return ready, fetch

    def _hold(self, room: str, event: Event) -> None:
        held = self.held.setdefault(room, {})
        held[event["seq"]] = event
        if len(held) > MAX_HELD_PER_ROOM:
            if room in self.last:
                self._skip_to(room, min(held))
            else:
                del held[min(held)]  # no baseline yet: the oldest can be fetched again once there is one

    def _skip_to(self, room: str, first: int) -> None:
        self.lost += max(0, first - self.last[room] - 1)
        self.last[room] = max(self.last[room], first - 1)

    def _settle(self, room: str) -> tuple[list[Event], int | None]:
        held = self.held.get(room)
        if not held:
            return [], None
        nxt = self.last[room] + 1
        ready = []
        while nxt in held:
            ready.append(held.pop(nxt))
            nxt += 1
        self.last[room] = nxt - 1
        for seq in [s for s in held if s < nxt]:
            del held[seq]  # duplicates of what was delivered
        if held:
            return ready, self.last[room]
        del self.held[room]
        return ready, None


class ChatClient:
    """A chat session over ZeroMQ, or (``name=None``) a read-only observer of the feed.

    Call ``connect`` once, then ``poll``/``events`` in your loop; requests
    (``say``, ``dm``, ``join``, ...) only queue bytes and return at once.  Events
    are dicts as in ``docs/protocol.md``, plus the client's own
    ``{"type": "status", "state": ...}`` with state ``lost`` (no heartbeat),
    ``restored`` (the same broker is back), ``reconnected`` (a new broker run;
    the session was re-established, rooms re-joined, what was missed fetched and
    unacknowledged messages resent) and ``shutdown`` (the broker is stopping).

    Guarantees: every message passed to ``say``/``dm`` is kept until its ``ack``
    and resent (same id) after ``ack_timeout`` or a reconnect, so it is delivered
    at least once and, the broker dropping repeats, shown on the feed exactly
    once.  Feed events come out once each, in ``seq`` order per room.
    """

    def __init__(
        self,
        name: str | None,
        *,
        router: str,
        pub: str,
        rooms: Iterable[str] | None = None,
        context: zmq.Context | None = None,
        ping_interval: float = 1.0,
        ack_timeout: float = 3.0,
        positions: dict[str, int] | None = None,
        history_id: str | None = None,
        curve: keys.CurveKeys | None = None,
    ) -> None:
        """``name=None`` makes an observer; it may start from ``positions`` (room -> last seq it has) of
        the broker history ``history_id``: if the broker's history is another one, they are void and
        every room is taken from its first event.

        ``curve``: talk to a CURVE broker (both sockets encrypted and authenticated with these keys).
        """
        self.name = name
        self.router_endpoint = router
        self.pub_endpoint = pub
        self.ctx = context or zmq.Context.instance()
        self.observer = name is None
        wanted = list(rooms) if rooms is not None else ([] if self.observer else [m.DEFAULT_ROOM])
        self.wanted_rooms: dict[str, None] = dict.fromkeys(wanted)
        self.rooms: dict[str, None] = {}  # rooms the broker confirmed we are in
        self.user: str | None = None  # set by welcome; None while there is no session
        self.epoch: str | None = None
        self.history_id = history_id  # which history our seqs belong to (see _saw_history)
        self.heartbeat = ping_interval
        self.ack_timeout = ack_timeout
        self.sequencer = FeedSequencer()
        self.sequencer.last.update(positions or {})
        #: Started from positions: a room not among them was made while we were away, so all of it is news.
        self.resumed = bool(positions)
        self.unacked: dict[str, Event] = {}  # id -> request, in the order they were (re)sent
        self.connected = True  # the link state last reported to the caller
        self._sent_at: dict[str, float] = {}  # id -> when last sent, oldest first
        #: The broker asked us to retry later (rate_limited, unavailable): until what waits is acked, new
        #: messages wait behind it, so one person's lines are stored in the order they were written.
        self._retry_pending = False
        self._joining: dict[str, str] = {}  # join request id -> room, until joined or refused
        # Unpredictable ids: whoever takes our name after we left must not guess the ids we will resend.
        self._ids = (secrets.token_urlsafe(12) for _ in itertools.count())
        self._backlog: list[Event] = []
        self._fills: dict[str, float] = {}  # room -> when we asked history to fill a gap
        self._catch_up: dict[str, float] = {}  # room -> when to check for events missed just after joining
        now = time.monotonic()
        self._last_heard = now
        self._feed_heard = now  # the feed alone: it can go quiet while the inbox answers (a relay down)
        self.feed_lost = False
        self._last_ping = 0.0
        self._last_hello = 0.0
        self._hello_sent = False
        self._synced = False  # a session has been welcomed / an observer has its rooms snapshot
        self._resync = False  # an observer needs a new snapshot (the broker restarted)

        self.dealer = self.ctx.socket(zmq.DEALER)
        # Our own routing id: after a dropped TCP connection the broker recognises us (ROUTER_HANDOVER).
        self.dealer.setsockopt(zmq.ROUTING_ID, b"c" + os.urandom(15))
        # Don't queue requests for a broker that isn't there; unacked messages are resent by us instead.
        self.dealer.setsockopt(zmq.IMMEDIATE, 1)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, SUB_HWM)
        for sock in (self.dealer, self.sub):
            transport.tune_connecting(sock, curve)
        self.sub.setsockopt(zmq.SUBSCRIBE, m.SYS_TOPIC)
        if self.observer and not wanted:
            self.sub.setsockopt(zmq.SUBSCRIBE, m.ROOM_TOPIC_PREFIX)
        for room in wanted:
            self.sub.setsockopt(zmq.SUBSCRIBE, m.room_topic(room))
        self.dealer.connect(router)
        self.sub.connect(pub)
        self.poller = zmq.Poller()  # callers may register their own sockets too
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)

    # --- lifecycle ------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> Event:
        """Start the session and wait for ``welcome`` and a ``joined`` for each room.

        Raises ``ChatError`` if the broker refuses (``name_taken``, ``bad_name``...)
        and ``TimeoutError`` if no broker answers.  Events seen meanwhile are kept
        for the next ``poll``.  An observer waits for its ``rooms`` snapshot.
        """
        deadline = time.monotonic() + timeout
        first: Event | None = None
        seen: list[Event] = []
        self._hello()
        while time.monotonic() < deadline:
            for event in self.poll(0.05):
                seen.append(event)
                kind = event["type"]
                if kind in ("welcome", "rooms"):
                    first = first or event
                elif kind == "error" and self.user is None and not self.observer:
                    if event.get("code") in RETRY_LATER:
                        continue  # the hello is sent again in a moment (_hello_due)
                    self._backlog = seen
                    raise ChatError(event["code"], event["detail"])
            if first is not None and (self.observer or self.wanted_rooms.keys() <= self.rooms.keys()):
                self._backlog = seen + self._backlog
                return first
        self._backlog = seen
        raise TimeoutError(f"no answer from a broker at {self.router_endpoint} / {self.pub_endpoint}")

    def close(self, flush_timeout: float = 2.0) -> list[Event]:
        """Wait for unacknowledged messages while they are being acknowledged (up to ``flush_timeout``
        without one, or a resend round if longer), say ``bye``, close the sockets.  So what a pipe fed
        faster than the rate limit is all sent, in order, before the client goes.

        Returns the events that arrived meanwhile (acks, errors), so a caller can still show them.
        """
        patience = max(flush_timeout, self.ack_timeout + 1.0) if flush_timeout else 0.0
        deadline = time.monotonic() + flush_timeout
        late, self._backlog = self._backlog, []
        while self.unacked and self.user is not None and time.monotonic() < deadline:
            events = self.poll(0.05)
            late.extend(events)
            if any(event["type"] == "ack" for event in events):  # progress: keep waiting
                deadline = time.monotonic() + patience
        if self.user is not None:
            self._send({"type": "bye"})
        self.dealer.close()
        self.sub.close()
        return late

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.dealer.closed:
            self.close()

    # --- requests -------------------------------------------------------------

    def say(self, room: str, text: str, me: bool = False) -> str:
        """Send ``text`` to ``room``; returns the message id that its ``ack`` (or ``error``) will carry."""
        return self._request({"type": "msg", "room": room, "text": text}, me)

    def say_many(self, room: str, texts: Iterable[str], me: bool = False) -> list[str]:
        """Send several messages to ``room`` in as few frames as the protocol allows (batches of up to
        256); returns their ids, in order.  For programs that send a lot: one frame each way per batch
        instead of one per message (see "Batches of requests" in docs/protocol.md)."""
        envs = [{"type": "msg", "room": room, "text": text} for text in texts]
        if len(self.unacked) + len(envs) > MAX_UNACKED:
            raise ChatError("queue_full", f"{MAX_UNACKED} messages may wait for the broker; try again later")
        ids = [self._request(env, me, send=False) for env in envs]
        if self.user is not None:
            self._send_many(envs)
        return ids

    def dm(self, to: str, text: str, me: bool = False) -> str:
        """Send a private message; it never goes on the feed."""
        return self._request({"type": "dm", "to": to, "text": text}, me)

    def join(self, room: str) -> None:
        """Join ``room``; ``joined`` (or an ``error`` with ``room`` set) answers."""
        join_id = next(self._ids)
        self._joining[join_id] = room
        self.sub.setsockopt(zmq.SUBSCRIBE, m.room_topic(room))  # before the join, so its events reach us
        self._send({"type": "join", "room": room, "id": join_id})

    def leave(self, room: str) -> None:
        self._send({"type": "leave", "room": room})

    def who(self, room: str) -> None:
        self._send({"type": "who", "room": room})

    def history(self, room: str, after: int = 0, limit: int = m.DEFAULT_HISTORY_LIMIT) -> None:
        self._send({"type": "history", "room": room, "after": after, "limit": limit})

    def _request(self, env: Event, me: bool, send: bool = True) -> str:
        if len(self.unacked) >= MAX_UNACKED:
            raise ChatError("queue_full", f"{MAX_UNACKED} messages are waiting for the broker; try again later")
        env["id"] = msg_id = next(self._ids)
        if me:
            env["me"] = True
        m.encode(env)  # text that is not valid Unicode (a lone surrogate) raises here, never queued to fail again
        self.unacked[msg_id] = env
        self._sent_at[msg_id] = time.monotonic()
        if send and self.user is not None and not self._retry_pending:  # else it goes with the next resend
            self._send(env)
        return msg_id

    def _send(self, env: Event) -> bool:
        try:
            self.dealer.send(m.encode(env), zmq.NOBLOCK)
            return True
        except zmq.Again:  # no connection (IMMEDIATE) or queue full: housekeeping retries what matters
            return False

    def _send_many(self, envs: list[Event]) -> None:
        """Requests in batch frames: at most MAX_BATCH_REQUESTS each, within the frame limit."""
        payloads = [m.encode(env) for env in envs]
        for frame in m.batch_frames(payloads, m.MAX_FRAME_BYTES, m.MAX_BATCH_REQUESTS):
            try:
                self.dealer.send(frame, zmq.NOBLOCK)
            except zmq.Again:  # as _send: what is not acked is resent later
                return

    def _renumber(self, msg_id: str) -> None:
        """Send an unacknowledged message again under a new id."""
        env = self.unacked[msg_id]
        del self._sent_at[msg_id]
        env["id"] = new_id = next(self._ids)
        self.unacked = {new_id if k == msg_id else k: v for k, v in self.unacked.items()}  # its place kept
        self._sent_at[new_id] = time.monotonic()
        if self.user is not None:
            self._send(env)

    def _resend(self, msg_ids: list[str], now: float) -> None:
        """Send these unacknowledged messages again (in batches: after an outage there may be many)."""
        for msg_id in msg_ids:
            del self._sent_at[msg_id]
            self._sent_at[msg_id] = now  # to the back: _sent_at stays oldest first
        self._send_many([self.unacked[msg_id] for msg_id in msg_ids])

    def _hello(self) -> None:
        """Start (or restart) the session; an observer asks for the rooms snapshot instead."""
        self._last_hello = time.monotonic()
        if self.observer:
            request = {"type": "rooms"}
        else:
            request = {"type": "hello", "user": self.name, "rooms": list(self.wanted_rooms)}
            if self._synced:  # we had a session: coming back is no news to the others ("resumed" joins)
                request["resume"] = True
        self._hello_sent = self._send(request)

    # --- receiving ------------------------------------------------------------

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events as they come; stop after ``timeout`` seconds of silence (``None``: never)."""
        quiet_since = time.monotonic()
        while True:
            batch = self.poll(1.0 if timeout is None else timeout)
            now = time.monotonic()
            if batch:
                quiet_since = now
            elif timeout is not None and now - quiet_since >= timeout:
                return
            yield from batch

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Wait up to ``timeout`` seconds for traffic, handle it, and return the events for the caller."""
        events, self._backlog = self._backlog, []
        wait = 0 if events else max(0.0, min(timeout, self._next_due() - time.monotonic()))
        ready = dict(self.poller.poll(math.ceil(wait * 1000)))  # pyzmq truncates floats
        if self.dealer in ready:
            self._drain(self.dealer, events, self._on_reply)
        if self.sub in ready:
            self._drain(self.sub, events, self._on_feed)
        self._housekeeping(time.monotonic(), events)
        return events

    def _drain(self, sock: zmq.Socket, events: list[Event], handler: Any) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # Replies are single envelopes, feed frames may be batches; malformed input yields nothing.
            for env in m.feed_events(frames[-1]):
                self._last_heard = time.monotonic()
                if sock is self.sub:
                    self._feed_heard = self._last_heard
                handler(env, events)

    def _on_reply(self, env: Event, events: list[Event]) -> None:
        kind = env["type"]
        if kind == "welcome":
            self._on_welcome(env, events)
        elif kind == "joined":
            self._on_joined(env, events)
        elif kind == "left":
            self._forget_room(env["room"])
            events.append(env)
        elif kind == "ack":
            self._acknowledge(env, events)
        elif kind == "error":
            self._on_error(env, events)
        elif kind == "history" and env.get("room") in self._fills:
            room = env["room"]
            del self._fills[room]
            got = env["events"]
            # Complete when it reaches the room's head: the broker may send fewer than asked (its --max-history,
            # or its reply budget in bytes, when it says more).
            complete = not env.get("more") and (not got or got[-1]["seq"] >= env.get("seq", 0))
            self._deliver(room, *self.sequencer.fill(room, got, complete), events)
        elif kind == "rooms" and self.observer:
            self._on_snapshot(env, events)
        elif kind == "pong":
            self._saw_epoch(env.get("epoch"), events)
            if not env.get("session") and self.user is not None:
                self._lose_session()  # the broker forgot us (we timed out): start again
        else:  # dm, who, history the caller asked for, and anything newer than this client
            events.append(env)

    def _on_welcome(self, env: Event, events: list[Event]) -> None:
        resumed = self.user is None and self._synced
        self._saw_history(env.get("history_id"))
        self.user = env["user"]
        self.heartbeat = float(env.get("heartbeat", self.heartbeat))
        self._saw_epoch(env.get("epoch"), events)
        self._synced = True
        if resumed:
            events.append({"type": "status", "state": "reconnected", "epoch": self.epoch})
            self._resend(list(self.unacked), time.monotonic())  # in the order they were written
        events.append(env)

    def _on_joined(self, env: Event, events: list[Event]) -> None:
        room = env["room"]
        self._joining = {i: r for i, r in self._joining.items() if r != room}
        env["rejoin"] = room in self.sequencer.last  # after a reconnect: what we missed comes as events
        self.rooms[room] = None
        self.wanted_rooms[room] = None
        events.append(env)
        self._deliver(room, *self.sequencer.expect(room, env["seq"]), events)
        # Our SUB subscription and this join raced on two connections; if events were published before the
        # subscription landed and none came after, no gap would show.  One catch-up fetch closes that hole.
        self._catch_up[room] = time.monotonic() + self.heartbeat

    def _on_snapshot(self, env: Event, events: list[Event]) -> None:
        """An observer's ``rooms`` snapshot: where each room stands, so nothing is missed or repeated."""
        heads = env.get("rooms")
        if type(heads) is not dict:
            return
        first = not self._synced
        started_over = self._saw_history(env.get("history_id"))  # so did the positions we started from
        if started_over:
            self.sequencer.unknown_baseline = 0  # every room starts over: log each from its first event
        for room, head in heads.items():
            if type(head) is not int or (self.wanted_rooms and room not in self.wanted_rooms):
                continue
            if (started_over or not first or self.resumed) and room not in self.sequencer.last:
                self.sequencer.last[room] = 0  # a room we never saw: everything it has is news to us
            self._deliver(room, *self.sequencer.expect(room, head), events)
        self.sequencer.unknown_baseline = 0  # rooms not in the snapshot are newer than it
        for room in list(self.sequencer.held):
            if room not in self.sequencer.last:
                self._deliver(room, *self.sequencer.expect(room, 0), events)
        self._synced = True
        self._resync = False
        events.append(env)

    def _on_error(self, env: Event, events: list[Event]) -> None:
        msg_id = env.get("id")
        if env.get("code") == m.ErrorCode.NO_SESSION.value and self._synced:
            if self.user is not None:
                self._lose_session()  # keep the message: it is resent after the new welcome
            return
        if env.get("code") in RETRY_LATER and self.unacked:
            self._retry_pending = True
        if env.get("code") in RETRY_LATER and msg_id in self.unacked:
            env["retrying"] = True  # kept: resent after ack_timeout
        elif env.get("code") == m.ErrorCode.ID_REUSED.value and msg_id in self.unacked:
            self._renumber(msg_id)  # our id was taken (by whoever had our name before): a new one
            return
        elif msg_id in self.unacked:
            self._sent_at.pop(msg_id, None)
            env["request"] = self.unacked.pop(msg_id)
        elif msg_id in self._joining:
            env["room"] = room = self._joining.pop(msg_id)
            if room not in self.wanted_rooms:
                self.sub.setsockopt(zmq.UNSUBSCRIBE, m.room_topic(room))
        events.append(env)

    def _on_feed(self, env: Event, events: list[Event]) -> None:
        kind = env["type"]
        if kind == "heartbeat":
            self._saw_epoch(env.get("epoch"), events)
            if self.observer:
                events.append(env)
            return
        if kind == "shutdown":
            events.append({"type": "status", "state": "shutdown", "epoch": env.get("epoch")})
            return
        room = env.get("room")
        if type(room) is not str or type(env.get("seq")) is not int:
            return
        if not self.observer and room not in self.wanted_rooms and room not in self._joining.values():
            return  # a late event for a room we left
        self._deliver(room, *self.sequencer.push(env), events)

    def _acknowledge(self, ack: Event, events: list[Event]) -> None:
        self._sent_at.pop(ack.get("id"), None)
        ack["request"] = self.unacked.pop(ack.get("id"), None)
        if not self.unacked:
            self._retry_pending = False
        if ack["request"] is not None:  # an ack for a resend we already had acked is no news
            events.append(ack)

    def _deliver(self, room: str, ready: list[Event], fetch_after: int | None, events: list[Event]) -> None:
        events.extend(ready)
        if self.unacked:
            # Our own message on the feed is as good as its ack (both follow the commit), and the ack may
            # never come: libzmq drops replies not yet read when the broker's connection breaks.  A resend
            # to a broker that kept nothing (--db :memory:) would otherwise be published twice.
            me = (self.user or self.name or "").lower()
            for event in ready:
                if event.get("id") in self.unacked and str(event.get("user")).lower() == me:
                    ack = {"type": "ack", "id": event["id"], "room": room, "seq": event["seq"]}
                    self._acknowledge(ack, events)
        if fetch_after is not None and room not in self._fills:
            self._fills[room] = time.monotonic()
            self._send({"type": "history", "room": room, "after": fetch_after, "limit": m.MAX_HISTORY_LIMIT})

    def _forget_room(self, room: str) -> None:
        self.rooms.pop(room, None)
        self.wanted_rooms.pop(room, None)
        self.sequencer.forget(room)
        self._fills.pop(room, None)
        self._catch_up.pop(room, None)
        self.sub.setsockopt(zmq.UNSUBSCRIBE, m.room_topic(room))

    def _saw_epoch(self, epoch: str | None, events: list[Event]) -> None:
        if epoch is None or epoch == self.epoch:
            return
        restarted = self.epoch is not None
        self.epoch = epoch
        if not restarted:
            return
        # A new broker run knows no session of ours.  Its rooms go on from where they were (or, with no
        # database, start over): re-joining, or a new snapshot, tells which, and fetches what we missed.
        self._fills.clear()
        if self.observer:
            events.append({"type": "status", "state": "reconnected", "epoch": epoch})
            self._resync = True
            self._hello()
        elif self.user is not None:
            self._lose_session()

    def _saw_history(self, history_id: str | None) -> bool:
        """True (and our seqs forgotten) when the broker's history is not the one our seqs came from."""
        changed = self.history_id is not None and history_id is not None and history_id != self.history_id
        if changed:
            self.sequencer.reset()
            self._fills.clear()
            self._catch_up.clear()
        if history_id is not None:
            self.history_id = history_id
        return changed

    def _lose_session(self) -> None:
        self.user = None
        self.rooms.clear()
        self._catch_up.clear()
        self._hello()

    # --- timers ---------------------------------------------------------------

    def _hello_due(self) -> float | None:
        """When to resend hello (or the snapshot request): soon if IMMEDIATE refused it, slowly if unanswered."""
        waiting = (self._resync or not self._synced) if self.observer else self.user is None
        if not waiting or not self._last_hello:
            return None
        return self._last_hello + (1.0 if self._hello_sent else 0.05)

    def _next_due(self) -> float:
        due = self._last_ping + self.heartbeat
        if self.connected:  # once the loss is noticed, that deadline is past: waiting on it would spin
            due = min(due, self._last_heard + self.heartbeat * MISSED_HEARTBEATS)
            if not self.feed_lost:
                due = min(due, self._feed_heard + self.heartbeat * MISSED_HEARTBEATS)
        if self._sent_at and self.user is not None:
            due = min(due, next(iter(self._sent_at.values())) + self.ack_timeout)
        hello_due = self._hello_due()
        return min(due, *self._catch_up.values(), hello_due if hello_due is not None else due)

    def _catch_up_all(self, events: list[Event]) -> None:
        """After an outage, ask every room for what came after the last event seen: nothing may come
        later that would show the gap."""
        for room, last in list(self.sequencer.last.items()):
            self._fills.pop(room, None)
            self._deliver(room, [], last, events)

    def _housekeeping(self, now: float, events: list[Event]) -> None:
        silent = now - self._last_heard > self.heartbeat * MISSED_HEARTBEATS
        if silent and self.connected:
            self.connected = False
            events.append({"type": "status", "state": "lost"})
        elif not silent and not self.connected:
            self.connected = True
            self.feed_lost = False
            if self.user is not None or self.observer:
                events.append({"type": "status", "state": "restored"})
                self._catch_up_all(events)
        feed_silent = now - self._feed_heard > self.heartbeat * MISSED_HEARTBEATS
        if feed_silent and self.connected and not self.feed_lost:  # the inbox answers, the feed says nothing
            self.feed_lost = True
            events.append({"type": "status", "state": "feed_lost"})
        elif not feed_silent and self.feed_lost:
            self.feed_lost = False
            events.append({"type": "status", "state": "feed_restored"})
            self._catch_up_all(events)
        if now - self._last_ping >= self.heartbeat:
            self._last_ping = now
            self._send({"type": "ping"})
        hello_due = self._hello_due()
        if hello_due is not None and now >= hello_due:
            self._hello()
        if self.user is not None:
            due = list(itertools.takewhile(lambda item: now - item[1] >= self.ack_timeout, self._sent_at.items()))
            if due:  # oldest sent first: the rest are younger; sent again in the order they were written
                due_ids = {msg_id for msg_id, _ in due}
                self._resend([msg_id for msg_id in self.unacked if msg_id in due_ids], now)
        for room, due in list(self._catch_up.items()):
            if now >= due:
                del self._catch_up[room]
                self._deliver(room, [], self.sequencer.last.get(room), events)
        for room, asked in list(self._fills.items()):
            if now - asked > 3.0:  # the history reply was lost: ask again
                last = self.sequencer.last.get(room)
                del self._fills[room]
                if last is not None:
                    self._deliver(room, [], last, events)


# --- Console ------------------------------------------------------------------

QUIT_COMMANDS = ("/quit", "/exit")
#: Past messages shown when joining a room (the broker sends up to its --history events).
HISTORY_SHOWN = 20

HELP = """\
Commands:
  TEXT               say TEXT in the current room
  /msg NAME TEXT     private message to NAME (nobody else sees it, not even loggers)
  /me ACTION         say an action: * alice waves
  /join ROOM         join ROOM and make it current (or switch to it if you are in it)
  /leave [ROOM]      leave ROOM (default: the current room)
  /who [ROOM]        who is in ROOM (default: the current room)
  /rooms             the rooms you are in
  /help              this help
  /quit, /exit       leave the chat (Ctrl-D and Ctrl-C too)
  //TEXT             say TEXT starting with a slash"""


def _where(room: str) -> str:
    """The default room reads exactly like the original chat; other rooms carry their name."""
    return "" if room == m.DEFAULT_ROOM else f"#{room} "


def render(event: Event, me: str | None) -> str | None:
    """The console line for an event, or None for events the console does not show.

    Everything that came from another user goes through ``safe_text``; names and
    rooms are already restricted to safe characters by the broker.
    """
    kind = event.get("type")
    room = event.get("room", "")
    user = event.get("user", "?")
    if kind == "msg":
        text = m.safe_text(event.get("text", ""))
        return f"{_where(room)}* {user} {text}" if event.get("me") else f"{_where(room)}{user}: {text}"
    if kind == "join":
        return f"{_where(room)}[join] {user} joined the {'chat' if room == m.DEFAULT_ROOM else 'room'}"
    if kind == "leave" and event.get("reason") == "left" and room == m.DEFAULT_ROOM:
        return f"[leave] {user} left #{room}"  # left this room only, maybe not the chat
    if kind == "leave":
        place = "chat" if room == m.DEFAULT_ROOM else "room"
        why = " (timed out)" if event.get("reason") == "timeout" else ""
        return f"{_where(room)}[leave] {user} left the {place}{why}"
    if kind == "dm":
        text = m.safe_text(event.get("text", ""))
        return f"[dm] * {user} {text}" if event.get("me") else f"[dm] {user}: {text}"
    if kind == "ack" and (event.get("request") or {}).get("type") == "dm":
        req = event["request"]
        return f"[dm -> {event.get('to', req['to'])}] {m.safe_text(req['text'])}"
    if kind == "error" and event.get("retrying") and event.get("code") == m.ErrorCode.UNAVAILABLE.value:
        return "[system] the broker cannot store messages just now; yours will be sent when it can"
    if kind == "error" and event.get("retrying"):
        return "[system] sending too fast; your message will be sent in a moment"
    if kind == "error":
        return f"[error] {m.safe_text(str(event.get('detail', '')))} ({event.get('code')})"
    if kind == "who":
        users = event.get("users", [])
        return f"[who] #{room}: {', '.join(users) if users else 'nobody'} ({len(users)})"
    if kind == "joined":
        users = event.get("users", [])
        return f"[system] you are in #{room} ({len(users)} here: {', '.join(users)})"
    if kind == "left":
        return f"[system] you left #{room}"
    if kind == "status":
        return {
            "lost": "[system] connection lost, reconnecting…",
            "restored": "[system] connection restored",
            "feed_lost": "[system] no news from the feed (a relay down?); what is said meanwhile comes when it is back",
            "feed_restored": "[system] the feed is back; fetching what was missed",
            "reconnected": "[system] reconnected",
            "shutdown": "[system] the broker is shutting down; waiting for it to come back…",
        }.get(event.get("state", ""))
    return None


class Console:
    """The console chat: turns typed lines into requests and events into lines.

    Runs in the main thread with the ``ChatClient``; a reader thread only reads
    lines and hands them over an inproc PAIR socket, so all ZeroMQ sockets stay
    in one thread and nothing needs a lock.
    """

    def __init__(self, client: ChatClient, out: Any = None) -> None:
        self.client = client
        self.out = out  # None: whatever sys.stdout is at print time (patch_stdout swaps it)
        self.current: str | None = next(iter(client.wanted_rooms), None)
        self.switch_on_join: set[str] = set()
        self.quiet_retries_until = 0.0

    def show(self, line: str) -> None:
        """Print ``line``; on a terminal laid out by ``console_text``: no row the terminal could wrap, so none
        that others' text could start.  The help keeps its aligned spaces."""
        out = self.out or sys.stdout
        print(console_text.to_print(line, out, squeeze=line != HELP), file=out, flush=True)

    def on_event(self, event: Event) -> None:
        me = self.client.user or self.client.name  # user is None while reconnecting; our events still are ours
        kind = event["type"]
        if kind in ("msg", "join", "leave") and event.get("user") == me:
            return  # what I typed is already on my screen; my own join/leave is said by [system]
        if kind == "join" and event.get("resumed"):
            return  # someone back after the broker restarted: they never left
        if kind == "dm" and event.get("user") == me and str(event.get("to", "")).lower() == str(me).lower():
            return  # a note to myself: its ack already shows it, as "[dm -> me] ..."
        if kind == "joined" and event.get("rejoin"):
            return  # back after a reconnect: what was missed arrives as ordinary events
        if kind == "error" and event.get("retrying"):
            now = time.monotonic()
            if now < self.quiet_retries_until:
                return  # one "will be sent in a moment" per resend round, not one per message
            self.quiet_retries_until = now + self.client.ack_timeout
        if kind == "error" and "room" in event:
            self.switch_on_join.discard(event["room"])  # a join that was refused
        if kind == "joined" and event["room"] in self.switch_on_join:
            self.switch_on_join.discard(event["room"])
            self.current = event["room"]
        if kind == "left" and self.current == event["room"]:
            rooms = list(self.client.rooms)
            self.current = m.DEFAULT_ROOM if m.DEFAULT_ROOM in rooms else next(iter(rooms), None)
        line = render(event, me)
        if line is not None:
            self.show(line)
        if kind == "joined":  # the recent conversation, as it was shown live
            for past in [e for e in event.get("history", []) if e.get("type") == "msg"][-HISTORY_SHOWN:]:
                self.show(render(past, me) or "")

    def on_line(self, line: str) -> bool:
        """Act on one typed line; False means the user wants to leave."""
        try:
            return self._on_line(line)
        except ChatError as exc:
            self.show(f"[error] {exc.detail} ({exc.code})")
            return True

    def _on_line(self, line: str) -> bool:
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        if line.startswith("/") and not line.startswith("//"):
            return self.on_command(line)
        text = line[1:] if line.startswith("//") else line
        if self.current is None:
            self.show("[error] you are in no room; /join one")
        else:
            self.client.say(self.current, text)
        return True

    def on_command(self, line: str) -> bool:
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        command = command.lower()
        client = self.client
        if command in QUIT_COMMANDS:
            return False
        if command == "/help":
            self.show(HELP)
        elif command == "/msg":
            name, _, text = rest.partition(" ")
            if not name or not text.strip():
                self.show("[error] usage: /msg NAME TEXT")
            else:
                client.dm(name, text)
        elif command == "/me":
            if not rest:
                self.show("[error] usage: /me ACTION")
            elif self.current is None:
                self.show("[error] you are in no room; /join one")
            else:
                client.say(self.current, rest, me=True)
        elif command == "/join":
            room = room_name(rest)
            if not room:
                self.show("[error] usage: /join ROOM")
            elif room in client.rooms:
                self.current = room
                self.show(f"[system] now talking in #{room}")
            else:
                self.switch_on_join.add(room)
                client.join(room)
        elif command == "/leave":
            room = room_name(rest) or self.current
            if room is None:
                self.show("[error] usage: /leave ROOM")
            else:
                client.leave(room)
        elif command == "/who":
            room = room_name(rest) or self.current
            if room is None:
                self.show("[error] usage: /who ROOM")
            else:
                client.who(room)
        elif command == "/rooms":
            rooms = ", ".join(f"#{r}" + (" (current)" if r == self.current else "") for r in client.rooms)
            self.show(f"[rooms] {rooms or 'none'}")
        else:
            self.show(f"[error] unknown command {m.safe_text(command)}; /help lists the commands")
        return True

    def prompt(self) -> str:
        return "> " if self.current in (None, m.DEFAULT_ROOM) else f"#{self.current}> "

    def run(self, interactive: bool) -> None:
        """The loop: client events and typed lines, until /quit, end of input or Ctrl-C."""
        ctx = self.client.ctx
        inbox = ctx.socket(zmq.PAIR)
        address = f"inproc://console-input-{id(self)}"
        inbox.bind(address)
        reader = LineReader(ctx, address, interactive, self.prompt)
        self.client.poller.register(inbox, zmq.POLLIN)
        reader.start()
        try:
            with reader.output_guard():
                self._loop(inbox)
        except KeyboardInterrupt:
            pass
        finally:
            reader.stop()
            self.client.poller.unregister(inbox)
            inbox.close(linger=0)

    def _loop(self, inbox: zmq.Socket) -> None:
        while True:
            for event in self.client.poll(1.0):
                self.on_event(event)
            while True:
                try:
                    line = inbox.recv_string(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if line == LineReader.EOF or not self.on_line(line):
                    return


class LineReader(threading.Thread):
    """Reads lines (prompt_toolkit on a terminal, plain lines otherwise) and sends them over inproc."""

    EOF = "\x00eof"

    def __init__(self, ctx: zmq.Context, address: str, interactive: bool, prompt: Any) -> None:
        super().__init__(name="console-input", daemon=True)
        self.ctx = ctx
        self.address = address
        self.interactive = interactive
        self.prompt = prompt
        self.session: Any = None
        if interactive:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.history import InMemoryHistory

            self.session = PromptSession(history=InMemoryHistory())

    def output_guard(self) -> Any:
        """While reading from a terminal, printed lines go above the prompt, never through the typing."""
        if self.interactive:
            from prompt_toolkit.patch_stdout import patch_stdout

            return patch_stdout(raw=True)
        import contextlib

        return contextlib.nullcontext()

    def run(self) -> None:
        out = self.ctx.socket(zmq.PAIR)
        out.connect(self.address)
        try:
            for line in self._lines():
                out.send_string(valid_unicode(line))
        finally:
            out.send_string(self.EOF)
            out.close(linger=1000)

    def _lines(self) -> Iterator[str]:
        if not self.interactive:
            if isinstance(sys.stdin, io.TextIOWrapper):
                sys.stdin.reconfigure(errors="surrogateescape")  # bytes that are not UTF-8 end no session
            yield from sys.stdin
            return
        while True:
            try:
                line = self.session.prompt(self.prompt)
            except (EOFError, KeyboardInterrupt):
                return
            yield line
            if line.strip().lower() in QUIT_COMMANDS:
                return  # don't draw another prompt under the goodbye

    def stop(self) -> None:
        """Make a running prompt return, so the terminal is restored before we exit."""
        app = getattr(self.session, "app", None)
        if app is not None and app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()) if app.is_running else None)
            self.join(timeout=1.0)


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    """--host/--router/--pub, shared by every program that connects to a broker."""
    parser.add_argument(
        "--host", default="localhost", help="broker host, for tcp at the default ports (default: localhost)"
    )
    parser.add_argument(
        "--router",
        metavar="ENDPOINT",
        help=f"broker inbox, any ZeroMQ endpoint (default: tcp://HOST:{m.DEFAULT_ROUTER_PORT})",
    )
    parser.add_argument(
        "--pub", metavar="ENDPOINT", help=f"broker feed, any ZeroMQ endpoint (default: tcp://HOST:{m.DEFAULT_PUB_PORT})"
    )
    parser.add_argument(
        "--server-key", metavar="FILE", help="the broker's public certificate (broker.key), for a CURVE broker"
    )
    parser.add_argument("--key", metavar="FILE", help="your secret certificate (NAME.key_secret), for a CURVE broker")


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """``router``, ``pub`` and ``curve`` for ``ChatClient(**connection(args))``, from ``add_endpoint_args``."""
    router, pub = m.endpoints(args.host, args.router, args.pub)
    curve = None
    if args.server_key or args.key:
        if not (args.server_key and args.key):
            raise ValueError("--server-key and --key go together")
        curve = keys.client_keys(args.server_key, args.key)
    return {"router": router, "pub": pub, "curve": curve}


def valid_unicode(line: str) -> str:
    """A line read from a terminal or a pipe, with what is not valid Unicode (bytes that were not UTF-8,
    kept as surrogate escapes) shown as U+FFFD, so it can be sent instead of ending the console."""
    try:
        raw = line.encode("utf-8", "surrogateescape")  # the bytes as they came
    except UnicodeEncodeError:  # a surrogate that is no escape
        raw = line.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def room_name(text: str) -> str:
    """What people type for a room (``#Dev``) as its name (``dev``)."""
    return text.strip().lstrip("#").lower()


def add_session_args(parser: argparse.ArgumentParser, name_help: str) -> None:
    """--name, --room, --timeout: shared by the front ends that chat (console and window)."""
    parser.add_argument("--name", help=name_help)
    parser.add_argument(
        "--room",
        action="append",
        type=room_name,
        metavar="ROOM",
        help=f"room to join at start; repeat for more (default: {m.DEFAULT_ROOM})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the broker at start (default: %(default)s)",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chat", description="Chat through a chat broker, at the console.")
    add_endpoint_args(parser)
    add_session_args(parser, "your user name (asked for if not given)")
    parser.add_argument("--gui", action="store_true", help="chat in a window (gui.py) instead of at the console")
    return parser.parse_args(argv)


def _ask_name(interactive: bool) -> str | None:
    try:
        if interactive:
            return input("Enter a username: ").strip()
        print("Enter a username: ", end="", flush=True)
        line = sys.stdin.readline()
        return line.strip() if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gui:
        import gui

        return gui.main(argv)
    try:
        conn = connection(args)
    except (OSError, ValueError) as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 2
    router = conn["router"]
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    rooms = args.room or [m.DEFAULT_ROOM]
    name = args.name
    while True:
        if name is None:
            name = _ask_name(interactive)
            if not name:
                return 1
        client = ChatClient(name, rooms=rooms, **conn)
        try:
            client.connect(timeout=args.timeout)
            break
        except ChatError as exc:
            client.close(flush_timeout=0)
            print(f"[error] {m.safe_text(exc.detail)} ({exc.code})", flush=True)
            if not interactive or exc.code not in ("name_taken", "bad_name"):
                return 2
            name = None
        except TimeoutError as exc:
            client.close(flush_timeout=0)
            hint = "is a broker running there? If it uses CURVE, give --server-key and --key"
            if conn["curve"] is not None:
                hint = "is a broker running there, and do --server-key and --key match its keys?"
            print(f"[error] {exc} ({hint})", flush=True)
            return 1
        except KeyboardInterrupt:
            client.close(flush_timeout=0)
            return 130
    print(f"[system] connected to {router} as {client.user}; /help lists the commands", flush=True)
    console = Console(client)
    console.run(interactive)
    for event in client.close():
        console.on_event(event)
    print("[system] bye", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
