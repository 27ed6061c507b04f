"""The console chat: typed lines become requests, events become lines (``display``).

Started by ``python client.py --name alice`` (``client.main``).  Runs in the main thread with the
client; a reader thread only reads lines (prompt_toolkit on a terminal, plain lines from a pipe)
and hands them over an inproc PAIR socket, so all ZeroMQ sockets stay in one thread and nothing
needs a lock.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import zmq

import cli
import console_text
import messages as m
from display import HELP, HISTORY_SHOWN, QUIT_COMMANDS, render
from safe_text import safe_text
from session import ChatError, Event, Failed, Rejoined


class Client(Protocol):
    """What the console needs of a chat client (``client.ChatClient`` is one; the tests have a stub)."""

    name: str | None
    ctx: zmq.Context
    poller: zmq.Poller

    @property
    def user(self) -> str | None: ...
    @property
    def rooms(self) -> dict[str, None]: ...
    @property
    def wanted_rooms(self) -> dict[str, None]: ...
    @property
    def ack_timeout(self) -> float: ...
    def poll(self, timeout: float = 0.0) -> list[Event]: ...
    def say(self, room: str, text: str, me: bool = False) -> str: ...
    def dm(self, to: str, text: str, me: bool = False) -> str: ...
    def join(self, room: str) -> None: ...
    def leave(self, room: str) -> None: ...
    def who(self, room: str) -> None: ...


class Console:
    """The console chat: turns typed lines into requests and events into lines."""

    def __init__(self, client: Client, out: Any = None) -> None:
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

    def me(self) -> str | None:
        return self.client.user or self.client.name  # user is None while reconnecting; our events still are ours

    def on_event(self, event: Event) -> None:
        if not self._worth_showing(event):
            return
        if isinstance(event, Failed) and event.room is not None:
            self.switch_on_join.discard(event.room)  # a join that was refused
        if isinstance(event, m.Joined) and event.room in self.switch_on_join:
            self.switch_on_join.discard(event.room)
            self.current = event.room
        if isinstance(event, m.Left) and self.current == event.room:
            rooms = list(self.client.rooms)
            self.current = m.DEFAULT_ROOM if m.DEFAULT_ROOM in rooms else next(iter(rooms), None)
        me = self.me()
        line = render(event, me)
        if line is not None:
            self.show(line)
        if isinstance(event, m.Joined):  # the recent conversation, as it was shown live
            for past in [e for e in event.history if isinstance(e, m.MsgEvent)][-HISTORY_SHOWN:]:
                self.show(render(past, me) or "")

    def _worth_showing(self, event: Event) -> bool:
        """What the console leaves out: what is already on this screen, and what is no news."""
        me = (self.me() or "").casefold()
        match event:
            case m.MsgEvent() | m.JoinEvent() | m.LeaveEvent() if event.user.casefold() == me:
                return False  # what I typed is already on my screen; my own join/leave is said by [system]
            case m.JoinEvent(resumed=True):
                return False  # someone back after the broker restarted: they never left
            case m.Dm() if event.user.casefold() == me and event.to.casefold() == me:
                return False  # a note to myself: its ack already shows it, as "[dm -> me] ..."
            case Rejoined():
                return False  # back after a reconnect: what was missed arrives as ordinary events
            case Failed(retrying=True):
                now = time.monotonic()
                if now < self.quiet_retries_until:
                    return False  # one "will be sent in a moment" per resend round, not one per message
                self.quiet_retries_until = now + self.client.ack_timeout
        return True

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
            room = cli.room_name(rest)
            if not room:
                self.show("[error] usage: /join ROOM")
            elif room in client.rooms:
                self.current = room
                self.show(f"[system] now talking in #{room}")
            else:
                self.switch_on_join.add(room)
                client.join(room)
        elif command == "/leave":
            room = cli.room_name(rest) or self.current
            if room is None:
                self.show("[error] usage: /leave ROOM")
            else:
                client.leave(room)
        elif command == "/who":
            room = cli.room_name(rest) or self.current
            if room is None:
                self.show("[error] usage: /who ROOM")
            else:
                client.who(room)
        elif command == "/rooms":
            rooms = ", ".join(f"#{r}" + (" (current)" if r == self.current else "") for r in client.rooms)
            self.show(f"[rooms] {rooms or 'none'}")
        else:
            self.show(f"[error] unknown command {safe_text(command)}; /help lists the commands")
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
            from prompt_toolkit.key_binding import KeyBindings
            from prompt_toolkit.keys import Keys

            bindings = KeyBindings()

            @bindings.add(Keys.Vt100MouseEvent)
            def _no_mouse(_event: Any) -> None:
                """A line prompt has no use for the mouse, and prompt_toolkit's own handler crashed the prompt
                on a report it cannot parse (ESC [ 2 M typed by hand: "Unhandled exception in event loop")."""

            self.session = PromptSession(history=InMemoryHistory(), key_bindings=bindings)

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
            yield from sys.stdin  # main() made bytes that are not UTF-8 harmless before the first read
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


def valid_unicode(line: str) -> str:
    """A line read from a terminal or a pipe, with what is not valid Unicode (bytes that were not UTF-8,
    kept as surrogate escapes) shown as U+FFFD, so it can be sent instead of ending the console."""
    try:
        raw = line.encode("utf-8", "surrogateescape")  # the bytes as they came
    except UnicodeEncodeError:  # a surrogate that is no escape
        raw = line.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
