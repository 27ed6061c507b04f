"""The chat client library: ``ChatClient``, the pyzmq shell around the sans-I/O ``session.ClientSession``.

A bot in ten lines::

    from client import ChatClient
    import messages as m

    with ChatClient("echo-bot", router="tcp://localhost:5555", pub="tcp://localhost:5556") as bot:
        bot.connect()
        for event in bot.events():
            if isinstance(event, m.MsgEvent) and event.user != bot.user:
                bot.say(event.room, event.text[::-1])

``ChatClient`` is single-threaded: it owns a DEALER (requests and replies) and a
SUB (the feed), hands every frame and the time to the session, and sends what
the session asks for.  Nothing runs behind the caller's back.  Run as a
program (``python client.py``), it is the console chat: ``main`` below connects, and ``console.Console``
does the rest.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import zmq

import cli
import keys
import messages as m
import transport
from console import Console
from display import error_text, undelivered_line
from sequencer import FeedSequencer
from session import MAX_UNACKED, ChatError, ClientSession, Event, Said, State

__all__ = ["MAX_UNACKED", "SUB_HWM", "ChatClient", "ChatError", "Event"]

#: Feed frames (events, or batches of at most 32 KiB) the SUB queues before libzmq drops them: a
#: client that falls behind loses feed frames, not memory, and the sequencer fills the gap from history.
SUB_HWM = 1_000


class ChatClient:
    """A chat session over ZeroMQ, or (``name=None``) a read-only observer of the feed.

    Call ``connect`` once, then ``poll``/``events`` in your loop; requests (``say``, ``dm``, ``join``,
    ...) only queue frames and return at once.  Events are the typed envelopes of ``messages`` (what
    the broker sent) and the session's own (``session.Status``, ``Acked``, ``Failed``, ``Rejoined``).

    Guarantees (see ``session``): every message passed to ``say``/``dm`` is kept until its ``ack``
    and resent (same id) after a timeout or a reconnect, in the order written, so it is shown on the
    feed exactly once; feed events come out once each, in ``seq`` order per room.
    """

    def __init__(
        self,
        name: str | None,
        *,
        router: str | Sequence[str],
        pub: str | Sequence[str],
        rooms: Iterable[str] | None = None,
        context: zmq.Context | None = None,
        ping_interval: float = 1.0,
        ack_timeout: float = 3.0,
        positions: dict[str, int] | None = None,
        history_id: str | None = None,
        curve: keys.CurveKeys | None = None,
    ) -> None:
        """``router``/``pub``: one broker's inbox and feed, or lists of several brokers' (front doors of one
        cluster, in the same order): when ours goes silent the session moves to the next.
        ``positions``/``history_id``: where an observer starts (see ``ClientSession``).
        ``curve``: talk to a CURVE broker (both sockets encrypted and authenticated with these keys)."""
        self.routers, self.pubs = transport.broker_endpoints(router, pub)
        self._at = 0  # the broker our sockets are connected to (the session's ``broker``)
        self.ctx = context or zmq.Context.instance()
        self.session = ClientSession(
            name,
            time.monotonic(),
            rooms=rooms,
            heartbeat=ping_interval,
            ack_timeout=ack_timeout,
            positions=positions,
            history_id=history_id,
            brokers=len(self.routers),
        )
        self._backlog: list[Event] = []
        self.dealer = self.ctx.socket(zmq.DEALER)
        # Our own routing id: after a dropped TCP connection the broker recognises us (ROUTER_HANDOVER).
        self.dealer.setsockopt(zmq.ROUTING_ID, b"c" + os.urandom(15))
        # Don't queue requests for a broker that isn't there: they would reach the next one before our
        # hello.  The session resends what matters.
        self.dealer.setsockopt(zmq.IMMEDIATE, 1)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, SUB_HWM)
        for sock in (self.dealer, self.sub):
            transport.tune_connecting(sock, curve)
        self._apply_subscriptions()
        self.dealer.connect(self.router_endpoint)
        self.sub.connect(self.pub_endpoint)
        self.poller = zmq.Poller()  # callers may register their own sockets too
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)

    # --- the session's state, read-only -----------------------------------------------------

    @property
    def router_endpoint(self) -> str:
        """The inbox of the broker we are connected to (or trying)."""
        return self.routers[self._at]

    @property
    def pub_endpoint(self) -> str:
        return self.pubs[self._at]

    @property
    def name(self) -> str | None:
        """The name we chat under (after ``nick``, the new one), welcomed or not yet."""
        return self.session.name

    @property
    def user(self) -> str | None:
        return self.session.user

    @property
    def away_reason(self) -> str:
        """Why we are away ("": here), as the broker last confirmed."""
        return self.session.away_reason

    @property
    def observer(self) -> bool:
        return self.session.observer

    @property
    def rooms(self) -> dict[str, None]:
        return self.session.rooms

    @property
    def wanted_rooms(self) -> dict[str, None]:
        return self.session.wanted_rooms

    @property
    def unacked(self) -> dict[str, Said]:
        return self.session.queue

    @property
    def sequencer(self) -> FeedSequencer:
        return self.session.sequencer

    @property
    def history_id(self) -> str | None:
        return self.session.history_id

    @property
    def epoch(self) -> str | None:
        return self.session.epoch

    @property
    def connected(self) -> bool:
        return self.session.connected

    @property
    def heartbeat(self) -> float:
        return self.session.heartbeat

    @property
    def ack_timeout(self) -> float:
        return self.session.ack_timeout

    # --- lifecycle ------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> Event:
        """Wait for ``welcome`` and a ``joined`` for each room (an observer: its ``rooms`` snapshot).

        Raises ``ChatError`` if the broker refuses (``name_taken``, ``bad_name``...) and ``TimeoutError``
        if no broker answers.  Events seen meanwhile are kept for the next ``poll``.
        """
        deadline = time.monotonic() + timeout
        seen: list[Event] = []
        first: Event | None = None
        try:
            while time.monotonic() < deadline:
                for event in self.poll(min(0.25, max(0.0, deadline - time.monotonic()))):
                    seen.append(event)
                    if first is None and isinstance(event, (m.Welcome, m.Rooms)):
                        first = event
                refused = self.session.refused
                if refused is not None:
                    raise ChatError(refused.code, refused.detail)
                if first is not None and (self.observer or self.wanted_rooms.keys() <= self.rooms.keys()):
                    return first
            raise TimeoutError(f"no answer from a broker at {', '.join(self.routers)}")
        finally:
            self._backlog = seen + self._backlog

    def close(self, flush_timeout: float = 2.0) -> list[Event]:
        """Deliver what was accepted while acks keep coming (``flush_timeout`` seconds without one at most;
        at least one resend round), say ``bye``, close the sockets.  So what a pipe fed faster than the rate
        limit is all sent, in order, before the client goes; ``undelivered`` tells what was not.

        Returns the events that arrived meanwhile (acks, errors), so a caller can still show them.
        """
        patience = max(flush_timeout, self.ack_timeout + 1.0) if flush_timeout else 0.0
        late, self._backlog = self._backlog, []
        if not self.dealer.closed:
            self.session.close(time.monotonic(), patience)
            while not self.session.closed:
                late.extend(self.poll(1.0))
            self._flush()
            self.dealer.close()
            self.sub.close()
        return late

    @property
    def undelivered(self) -> list[Said]:
        """Messages accepted but not acknowledged (after ``close``: never delivered)."""
        return self.session.undelivered

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------------

    def say(self, room: str, text: str, me: bool = False) -> str:
        """Send ``text`` to ``room``; returns the message id its ``Acked`` (or ``Failed``) will carry."""
        msg_id = self.session.say(room, text, time.monotonic(), me)
        self._flush()
        return msg_id

    def say_many(self, room: str, texts: Iterable[str], me: bool = False) -> list[str]:
        """Send several messages to ``room``; they travel in batches of up to 256 (one frame each way per
        batch instead of one per message: see "Batches of requests" in docs/protocol.md)."""
        ids = self.session.say_many(room, texts, time.monotonic(), me)
        self._flush()
        return ids

    def dm(self, to: str, text: str, me: bool = False) -> str:
        """Send a private message; it never goes on the feed."""
        msg_id = self.session.dm(to, text, time.monotonic(), me)
        self._flush()
        return msg_id

    def join(self, room: str) -> None:
        """Join ``room``; ``joined`` (or ``Failed`` with ``room``) answers."""
        self.session.join(room, time.monotonic())
        self._flush()

    def leave(self, room: str) -> None:
        self.session.leave(room, time.monotonic())
        self._flush()

    def who(self, room: str) -> None:
        self.session.who(room, time.monotonic())
        self._flush()

    def topic(self, room: str, topic: str) -> None:
        """Set ``room``'s topic ("" clears it); the room's ``TopicEvent`` (or ``Failed``) answers."""
        self.session.topic(room, topic, time.monotonic())
        self._flush()

    def nick(self, name: str) -> None:
        """Go by ``name`` from now on; ``Renamed`` (or ``Failed``: ``name_taken``, ...) answers."""
        self.session.nick(name, time.monotonic())
        self._flush()

    def away(self, reason: str = "") -> None:
        """Mark yourself away (``reason``), or back (""); ``m.Away`` answers."""
        self.session.away(reason, time.monotonic())
        self._flush()

    def history(self, room: str, after: int = 0, limit: int = m.DEFAULT_HISTORY_LIMIT) -> None:
        self.session.history(room, time.monotonic(), after, limit)
        self._flush()

    # --- the loop -------------------------------------------------------------------------------

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
        """Wait up to ``timeout`` seconds for traffic (less if the session has work due), hand it to the
        session, send what it asks, and return its events."""
        session = self.session
        backlog, self._backlog = self._backlog, []
        wait = 0.0 if backlog else max(0.0, min(timeout, session.next_deadline() - time.monotonic()))
        ready = dict(self.poller.poll(math.ceil(wait * 1000)))  # pyzmq truncates floats
        if self.dealer in ready:
            self._drain(self.dealer, session.reply)
        if self.sub in ready:
            self._drain(self.sub, session.feed)
        session.tick(time.monotonic())
        if session.broker != self._at:
            self._move_to(session.broker)
        self._flush()
        return backlog + session.take_events()

    def _move_to(self, broker: int) -> None:
        """Our broker went silent: the same sockets (our routing id, our subscriptions) to the next one."""
        transport.move(self.dealer, self.routers[self._at], self.routers[broker])
        transport.move(self.sub, self.pubs[self._at], self.pubs[broker])
        self._at = broker

    def _drain(self, sock: zmq.Socket, handle: Callable[[bytes, float], None]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handle(frames[-1], time.monotonic())  # feed: [topic, payload]; replies: [payload]

    def _flush(self) -> None:
        """Send the session's frames and apply its subscription changes."""
        self._apply_subscriptions()
        outbox = self.session.outbox
        while outbox and not self.dealer.closed:
            try:
                self.dealer.send(outbox[0], zmq.NOBLOCK)
            except zmq.Again:  # no connection (IMMEDIATE) or its queue is full
                self.session.blocked(time.monotonic())
                return
            outbox.popleft()

    def _apply_subscriptions(self) -> None:
        changes = self.session.subscriptions
        for subscribe, topic in changes:
            self.sub.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
        changes.clear()

    @property
    def state(self) -> State:
        return self.session.state


# --- run as a program: the console chat ----------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chat", description="Chat through a chat broker, at the console.")
    cli.add_endpoint_args(parser)
    cli.add_session_args(parser, "your user name (asked for if not given)")
    parser.add_argument("--gui", action="store_true", help="chat in a window (gui.py) instead of at the console")
    parser.add_argument(
        "--tui", action="store_true", help="full screen: a view per room, a room list and a member list (tui.py)"
    )
    parser.add_argument(
        "--no-timestamps",
        action="store_true",
        help="no HH:MM before each line on a terminal (a pipe never gets timestamps, colours or bells: "
        "its lines stay plain, for scripts)",
    )
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
    """0: said bye with everything delivered; 1: no broker, or lines not delivered; 2: refused or bad options."""
    given = list(sys.argv[1:] if argv is None else argv)
    other = "gui.py" if "--gui" in given else "tui.py" if "--tui" in given else None
    if other is not None:  # another program, with options of its own: it reads them, in this process's place
        rest = [a for a in given if a not in ("--gui", "--tui")]
        os.execv(sys.executable, [sys.executable, str(Path(__file__).with_name(other)), *rest])
    args = parse_args(given)
    try:
        conn = cli.connection(args)
    except (OSError, ValueError) as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive and isinstance(sys.stdin, io.TextIOWrapper):
        # Before the first read (the name may come from the pipe): a later reconfigure raises.
        sys.stdin.reconfigure(errors="surrogateescape")  # bytes that are not UTF-8 end no session
    rooms = args.room or [m.DEFAULT_ROOM]
    name = args.name
    while True:
        if name is None:
            name = _ask_name(interactive)
            if not name:
                return 1
        client = ChatClient(name, rooms=rooms, **conn)
        print(f"[system] connecting to {', '.join(conn['router'])} as {name}…", flush=True)
        try:
            client.connect(timeout=args.timeout)
            break
        except ChatError as exc:
            client.close(flush_timeout=0)
            print(error_text(exc.code, exc.detail), flush=True)
            if not interactive or exc.code not in ("name_taken", "bad_name"):
                return 2
            name = None
        except TimeoutError as exc:
            client.close(flush_timeout=0)
            print(f"[error] {exc} ({cli.no_broker_hint(conn)})", flush=True)
            return 1
        except KeyboardInterrupt:
            client.close(flush_timeout=0)
            return 130
    print(f"[system] connected to {client.router_endpoint} as {client.user}; /help lists the commands", flush=True)
    console = Console(client, timestamps=not args.no_timestamps)
    console.run(interactive)
    for event in client.close():
        console.on_event(event)
    undelivered = len(client.undelivered)
    if undelivered:
        console.show(undelivered_line(undelivered))
    print("[system] bye", flush=True)
    return 1 if undelivered else 0


if __name__ == "__main__":
    sys.exit(main())
