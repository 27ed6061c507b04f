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
import commands
import console_text
import messages as m
from display import HELP, HISTORY_SHOWN, QUIT_COMMANDS, Line, label, line_of
from safe_text import safe_text
from session import ChatError, Event, Failed, Rejoined
from views import QUERY_PREFIX, Views


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
    def topic(self, room: str, topic: str) -> None: ...
    def nick(self, name: str) -> None: ...
    def away(self, reason: str = "") -> None: ...


class Console:
    """The chat as typed lines: turns them into requests (``commands``) and events into lines (``display``),
    kept in ``views`` (one per room and conversation).  The line console prints every line as it comes;
    the window and the full-screen client subclass it and show one view at a time (``show_line``)."""

    def __init__(self, client: Client, out: Any = None) -> None:
        self.client = client
        self.out = out  # None: whatever sys.stdout is at print time (patch_stdout swaps it)
        self.views = Views(list(client.wanted_rooms))
        self.switch_on_join: set[str] = set()
        self.quiet_retries_until = 0.0

    @property
    def current(self) -> str | None:
        """The current view: a room (where plain text goes), or ``@NAME``, a private conversation."""
        return self.views.current

    @current.setter
    def current(self, name: str | None) -> None:
        if name is not None:
            self.views.open(name, switch=True)

    @property
    def current_room(self) -> str | None:
        view = self.views.view
        return None if view is None else view.room

    def show(self, text: str) -> None:
        """Show a line of the console's own (help, usage, answers): in the current view."""
        self.show_line(Line("system" if not text.startswith("[error]") else "error", text, ts=time.time()))

    def show_line(self, line: Line, past: bool = False) -> None:
        """Keep ``line`` in its view and print it: on a terminal laid out by ``console_text``, no row the
        terminal could wrap, so none that others' text could start.  The help keeps its aligned spaces."""
        self.views.add(line, past)
        out = self.out or sys.stdout
        text = label(line, self.current_room) + line.text
        print(console_text.to_print(text, out, squeeze=text != HELP), file=out, flush=True)

    def me(self) -> str | None:
        return self.client.user or self.client.name  # user is None while reconnecting; our events still are ours

    def on_event(self, event: Event) -> None:
        self.views.on_event(event)
        if not self._worth_showing(event):
            return
        if isinstance(event, Failed) and event.room is not None:
            self.switch_on_join.discard(event.room)  # a join that was refused
        if isinstance(event, m.Joined) and event.room in self.switch_on_join:
            self.switch_on_join.discard(event.room)
            self.current = event.room
        if isinstance(event, m.Left) and self.current is None:
            rooms = list(self.client.rooms)
            self.current = m.DEFAULT_ROOM if m.DEFAULT_ROOM in rooms else next(iter(rooms), None)
        me = self.me()
        line = line_of(event, me)
        if line is not None:
            self.show_line(line)
        if isinstance(event, m.Joined):  # the recent conversation, as it was shown live
            for past in [e for e in event.history if isinstance(e, m.MsgEvent)][-HISTORY_SHOWN:]:
                self.show_line(line_of(past, me) or Line("system", ""), past=True)

    def _worth_showing(self, event: Event) -> bool:
        """What the console leaves out: what is already on this screen, and what is no news."""
        me = (self.me() or "").casefold()
        match event:
            case m.MsgEvent() | m.JoinEvent() | m.LeaveEvent() if event.user.casefold() == me:
                return False  # what I typed is already on my screen; my own join/leave is said by [system]
            case m.NickEvent() if event.name.casefold() == me:
                return False  # my own new name is said by [system]
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
            command = commands.parse(line)
            return True if command is None else self.on_command(command)
        except commands.Usage as exc:
            self.show(f"[error] {safe_text(str(exc))}")
        except ChatError as exc:
            self.show(f"[error] {exc.detail} ({exc.code})")
        return True

    def on_command(self, command: commands.Command) -> bool:
        client, name, arg, text = self.client, command.name, command.arg, command.text
        if name == "quit":
            return False
        if name in ("say", "me"):
            self._say(text, me=name == "me")
        elif name == "help":
            self.show(HELP)
        elif name in ("msg", "query"):
            if name == "query":
                self.current = QUERY_PREFIX + arg
            if text:
                for part in commands.split_text(text):
                    client.dm(arg, part)
        elif name == "join":
            self._join(arg)
        elif name == "leave":
            room = arg or self.current_room
            if room is not None:
                client.leave(room)
            elif self.current is not None:
                self.views.close(self.current)  # /part in a conversation closes it
            else:
                raise commands.Usage("usage: /leave ROOM")
        elif name == "who":
            room = arg or self.current_room
            if room is None:
                raise commands.Usage("usage: /who ROOM")
            client.who(room)
        elif name == "rooms":
            rooms = ", ".join(f"#{r}" + (" (current)" if r == self.current else "") for r in client.rooms)
            self.show(f"[rooms] {rooms or 'none'}")
        elif name == "topic":
            self._topic(text)
        elif name == "nick":
            client.nick(arg)
        elif name in ("away", "back"):
            client.away(text if name == "away" else "")
        elif name == "window":
            view = self.views.number(int(arg))
            if view is None:
                raise commands.Usage(f"there is no view {arg}; /rooms lists yours")
            self.current = view
            self.show(f"[system] now in {view if view.startswith(QUERY_PREFIX) else '#' + view}")
        elif name == "clear":
            self.views.clear()
        return True

    def _say(self, text: str, me: bool = False) -> None:
        """Plain text goes to the current view: its room, or its conversation's other party."""
        current = self.current
        if current is None:
            raise commands.Usage("you are in no room; /join one")
        for part in commands.split_text(text):
            if current.startswith(QUERY_PREFIX):
                self.client.dm(current[len(QUERY_PREFIX) :], part, me=me)
            else:
                self.client.say(current, part, me=me)

    def _join(self, room: str) -> None:
        room = cli.room_name(room) or room
        if room in self.client.rooms:
            self.current = room
            self.show(f"[system] now talking in #{room}")
        else:
            self.switch_on_join.add(room)
            self.client.join(room)

    def _topic(self, text: str) -> None:
        room = self.current_room
        if room is None:
            raise commands.Usage("you are in no room; /join one")
        if not text:
            topic = self.views.views[room].topic
            self.show(f"[topic] #{room}: {safe_text(topic)}" if topic else f"[topic] #{room} has no topic")
        else:
            self.client.topic(room, "" if text == "-" else text)

    def prompt(self) -> str:
        current = self.current
        if current is None or current == m.DEFAULT_ROOM:
            return "> "
        return f"{current}> " if current.startswith(QUERY_PREFIX) else f"#{current}> "

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
