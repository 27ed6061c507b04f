"""The console chat: typed lines become requests, events become lines (``display``).

Started by ``python client.py --name alice`` (``client.main``).  Runs in the main thread with the
client; a reader thread only reads lines (prompt_toolkit on a terminal, plain lines from a pipe)
and hands them over an inproc PAIR socket, so all ZeroMQ sockets stay in one thread and nothing
needs a lock.  What the reader thread shows besides (the status line, Tab's candidates) it reads
from snapshots the main thread swaps in whole (``Snapshot``).

On a terminal, as in irssi or weechat: ``HH:MM`` before each line, each name in a colour of its own
(``display.colour_of``), your own lines and lines that name you set apart (and a bell for the
latter), lines of rooms other than the current one labelled ``#room``, a rule between the history
shown on joining and what comes live, a status line (your rooms, the current one, unread counts and
mentions, away), Tab completion of commands, rooms and names, and Ctrl-C to clear a half-typed line.

A pipe gets none of that: plain lines, one per event, for scripts (``^bob: hi$``), labelled
``#room`` unless they are the current room's, as on a terminal; no timestamps, colours or bells.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import zmq

import cli
import commands
import console_text
import messages as m
from console_text import Segment
from display import HELP, HISTORY_SHOWN, QUIT_COMMANDS, Line, clock, colour_of, error_text, label, line_of
from safe_text import safe_text
from session import ChatError, Event, Failed, Rejoined
from views import QUERY_PREFIX, Views

# --- How lines look on a terminal: SGR parameters (never in a pipe) ---------------------------------

#: A name's colour: ``display.colour_of(name)`` indexes these twelve foregrounds of the terminal's own palette
#: (red, green, yellow, blue, magenta, cyan, then their bright forms), so they follow its theme.
NAME_COLOURS = ("31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96")
TIME_STYLE = "90"  # grey
LABEL_STYLE = "1"  # #room of a line from another room: bold
OWN_STYLE = "1"  # my own name: bold, in the terminal's own colour (everyone else's has a colour)
MENTION_BODY_STYLE = "1"  # a line that names me: bold, its speaker's name in reverse
NOTICE_STYLE = "90"  # joins, leaves, topics, renames: grey
TAG_STYLE = "36"  # [system], [who], [rooms], [dm]
ERROR_STYLE = "91"
RULE_STYLE = "90"
#: Rings the terminal's bell: said when someone names me or writes to me privately.
BELL = "\a"
#: Clears the screen and its scrollback, cursor to the top (``/clear`` on a terminal).
CLEAR_SCREEN = "\x1b[H\x1b[2J\x1b[3J"
#: Kinds of line whose body is a notice, drawn grey.
NOTICES = frozenset({"join", "leave", "topic", "nick"})
_TAG = re.compile(r"\[[a-z >-]+\] ")
_WORD = re.compile(r"[^\s:*\[\]]+")


def name_style(name: str) -> str:
    """The SGR colour of a name (the same in every run, and as in the other clients' palettes)."""
    return NAME_COLOURS[colour_of(name, len(NAME_COLOURS))]


def styled(line: Line, current: str | None, timestamps: bool = True) -> list[Segment]:
    """A line as it is drawn on a terminal: (text, SGR style) segments whose text is, joined, ``HH:MM ``
    (with ``timestamps``), the ``#room `` label (unless it is ``current``'s) and the line's text."""
    segments: list[Segment] = []
    if timestamps:
        segments.append((clock(line.ts) + " ", TIME_STYLE))
    where = label(line, current)
    if where:
        segments.append((where, LABEL_STYLE))
    prefix, body = line.prefix, line.body
    if prefix:
        tag_style = TAG_STYLE if line.kind == "dm" else ""
        # Whose name the prefix holds: the speaker's (``bob: ``, ``* bob ``, ``[dm] bob: ``) or, for a private
        # message I sent, the other party's (``[dm -> bob] ``); a word of its own (a name holds no space, ``:``,
        # ``*`` or brackets), so a name that is part of ``[dm`` is not taken for it.
        words = [w for w in _WORD.finditer(prefix) if w.group() in (line.nick, line.peer)]
        if not words:
            segments.append((prefix, tag_style))
        else:
            word = words[-1]
            name = word.group()
            style = OWN_STYLE if line.mine and name == line.nick else name_style(name)
            if line.mention:
                style = "7;" + style
            segments += [(prefix[: word.start()], tag_style), (name, style), (prefix[word.end() :], tag_style)]
    if line.kind in NOTICES:
        segments.append((body, NOTICE_STYLE))
    elif line.kind == "error":
        segments.append((body, ERROR_STYLE))
    elif line.mention:
        segments.append((body, MENTION_BODY_STYLE))
    elif not prefix and (tag := _TAG.match(body)) and line.text != HELP:
        segments += [(tag.group(), TAG_STYLE), (body[tag.end() :], "")]
    else:
        segments.append((body, ""))
    if timestamps and "\n" in line.text:  # several rows (the help): each gets the time, so they stay aligned
        stamp = segments[0]
        rows: list[Segment] = []
        for text, style in segments:
            parts = text.split("\n")
            rows.append((parts[0], style))
            for part in parts[1:]:
                rows += [("\n", ""), stamp, (part, style)]
        segments = rows
    return [segment for segment in segments if segment[0]]


def history_rule(room: str) -> str:
    """Between the history shown on joining ``room`` and the lines that come live."""
    return f"── #{room}: earlier messages above ──"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Snapshot(NamedTuple):
    """What the reader thread shows besides the typed line, made by the main thread and swapped in whole."""

    status: list[tuple[str, str]]  # the status line, as prompt_toolkit's (style, text) fragments
    names: list[str]  # the current room's members (a conversation: its other party), for Tab
    everyone: list[str]  # every name known, for /msg and /query
    rooms: list[str]
    me: str | None


def status_line(views: Views, me: str | None, away: str = "") -> list[tuple[str, str]]:
    """The status line: who I am (and away), then every view numbered as ``/window`` counts them, the
    current one marked, each with its unread count (``+3``) and mentions (``!1``) from ``views.summary()``."""
    news = {view.name: view for _, view in views.summary()}
    parts: list[tuple[str, str]] = [("class:status.me", f" {me or '?'} ")]
    if away:
        short = away if len(away) <= 24 else away[:23] + "…"
        parts.append(("class:status.away", f"(away: {safe_text(short)}) "))
    parts.append(("class:status", "│"))
    for n, name in enumerate(views.views, 1):
        shown = name if name.startswith(QUERY_PREFIX) else f"#{name}"
        if name == views.current:
            parts.append(("class:status.current", f" [{n}:{shown}]"))
        else:
            parts.append(("class:status.view", f" {n}:{shown}"))
        view = news.get(name)
        if view is not None and view.unread:
            parts.append(("class:status.unread", f" +{view.unread}"))
        if view is not None and view.mentions:
            parts.append(("class:status.mention", f" !{view.mentions}"))
    parts.append(("class:status", " "))
    return parts


#: The status line's colours: white on blue, as irssi's; news in yellow, mentions white on red.
STATUS_STYLE = {  # prompt_toolkit's names: ansigray is the terminal's white, ansiwhite its bright white
    "bottom-toolbar": "noreverse bg:ansiblue ansigray",
    "bottom-toolbar.text": "noreverse bg:ansiblue ansigray",
    "status.me": "bold ansiwhite",
    "status.away": "ansibrightyellow",
    "status.current": "bold ansiwhite",
    "status.view": "ansigray",
    "status.unread": "bold ansibrightyellow",
    "status.mention": "bold bg:ansired ansiwhite",
}


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

    def __init__(self, client: Client, out: Any = None, *, timestamps: bool = True) -> None:
        self.client = client
        self.out = out  # None: whatever sys.stdout is at print time (patch_stdout swaps it)
        self.timestamps = timestamps  # HH:MM before each line, on a terminal
        self.echo = False  # show what I say as a line of its own (run() on a terminal: Enter empties the input)
        self.away = ""  # why I am away, as the broker last said ("": here)
        self.views = Views(list(client.wanted_rooms))
        self.switch_on_join: set[str] = set()
        self.quiet_retries_until = 0.0
        self.snapshot = self.take_snapshot()
        self.reader: LineReader | None = None

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
        """Keep ``line`` in its view and print it (``print_line``)."""
        self.views.add(line, past)
        self.print_line(line, past)

    def print_line(self, line: Line, past: bool = False) -> None:
        """Print a line.  On a terminal: timestamped, coloured, labelled unless it is the current room's, a
        bell if it names me (``past``: from history, no bell), and laid out by ``console_text``, no row the
        terminal could wrap, so none that others' text could start.  In a pipe: the plain line, labelled
        the same way.  The help keeps its aligned spaces."""
        out = self.out or sys.stdout
        if not is_terminal(out):
            print(label(line, self.current_room) + line.text, file=out, flush=True)
            return
        segments = styled(line, self.current_room, self.timestamps)
        text = console_text.lay_out_styled(segments, self._width(), squeeze=line.text != HELP)
        print(text + (BELL if line.mention and not past else ""), file=out, flush=True)

    def write_terminal(self, text: str) -> None:
        """Write what only a terminal gets (a rule, a clear screen): nothing in a pipe."""
        out = self.out or sys.stdout
        if is_terminal(out):
            print(text, end="", file=out, flush=True)

    def end_of_history(self, room: str) -> None:
        """After the history shown on joining ``room``: a rule, on a terminal.  (The views keep where it
        was too, ``View.history_end``, for the front ends that draw views themselves.)"""
        self.write_terminal(console_text.lay_out_styled([(history_rule(room), RULE_STYLE)], self._width()) + "\n")

    def clear_screen(self) -> None:
        """``/clear`` on a terminal: the screen and its scrollback go (the view's lines already went)."""
        self.write_terminal(CLEAR_SCREEN)

    @staticmethod
    def _width() -> int:
        return shutil.get_terminal_size().columns

    def me(self) -> str | None:
        return self.client.user or self.client.name  # user is None while reconnecting; our events still are ours

    def on_event(self, event: Event) -> None:
        self.views.on_event(event)
        if isinstance(event, m.Away):
            self.away = event.reason
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
            history = [e for e in event.history if isinstance(e, m.MsgEvent)][-HISTORY_SHOWN:]
            for past in history:
                self.show_line(line_of(past, me) or Line("system", ""), past=True)
            if history:
                self.end_of_history(event.room)

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
            self.show(error_text(exc.code, exc.detail))
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
            self.clear_screen()
        return True

    def _say(self, text: str, me: bool = False) -> None:
        """Plain text goes to the current view: its room, or its conversation's other party."""
        current = self.current
        if current is None:
            raise commands.Usage("you are in no room; /join one")
        for part in commands.split_text(text):
            if current.startswith(QUERY_PREFIX):
                self.client.dm(current[len(QUERY_PREFIX) :], part, me=me)  # its ack shows it
            else:
                self.client.say(current, part, me=me)
                if self.echo:
                    self._echo(current, part, me)

    def _echo(self, room: str, text: str, action: bool) -> None:
        """What I said, as a line like everyone else's (the feed's copy of it is not shown: ``_worth_showing``)."""
        name = self.me() or ""
        prefix = f"* {name} " if action else f"{name}: "
        kind = "action" if action else "msg"
        self.show_line(Line(kind, safe_text(text), prefix, room, None, name, time.time(), mine=True))

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

    def take_snapshot(self) -> Snapshot:
        """The status line and Tab's names and rooms as they are now (``Snapshot``)."""
        views = self.views
        view = views.view
        if view is None:
            names: list[str] = []
        elif view.room is None:
            names = [view.name[len(QUERY_PREFIX) :]]
        else:
            names = view.sorted_members()
        everyone: dict[str, str] = {}
        for each in views.views.values():
            for name in each.sorted_members() if each.room else [each.name[len(QUERY_PREFIX) :]]:
                everyone.setdefault(name.casefold(), name)
        rooms = [name for name in views.views if not name.startswith(QUERY_PREFIX)]
        me = self.me()
        return Snapshot(status_line(views, me, self.away), names, sorted(everyone.values()), rooms, me)

    def refresh(self) -> None:
        """After events or a typed line: a new snapshot, and the prompt and status line redrawn if it changed
        (the prompt shows the current view, which the status line marks)."""
        snapshot = self.take_snapshot()
        if snapshot != self.snapshot:
            self.snapshot = snapshot
            if self.reader is not None:
                self.reader.redraw()

    def completions(self, before_cursor: str) -> commands.Completion:
        """What Tab offers for the word before the cursor: ``commands.complete`` with the current room's
        members (any name known, after /msg and /query), the rooms I am in, and commands."""
        snapshot = self.snapshot
        first = before_cursor.split(" ", 1)[0].lower()
        names = snapshot.everyone if " " in before_cursor and first in commands.NAME_ARGUMENT else snapshot.names
        return commands.complete(before_cursor, names, snapshot.rooms, snapshot.me)

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
        self.echo = interactive
        self.snapshot = self.take_snapshot()
        reader = LineReader(
            ctx, address, interactive, self.prompt, status=lambda: self.snapshot.status, complete=self.completions
        )
        self.reader = reader
        self.client.poller.register(inbox, zmq.POLLIN)
        reader.start()
        try:
            with reader.output_guard():
                self._loop(inbox, reader)
        except KeyboardInterrupt:
            pass
        finally:
            reader.stop()
            self.reader = None
            self.client.poller.unregister(inbox)
            inbox.close(linger=0)

    def _loop(self, inbox: zmq.Socket, reader: LineReader) -> None:
        while True:
            events = self.client.poll(1.0)
            for event in events:
                self.on_event(event)
            typed = False
            while True:
                try:
                    line = inbox.recv_string(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if line == LineReader.EOF or not self.on_line(line):
                    return
                typed = True
            if (events or typed) and reader.interactive:
                self.refresh()  # the prompt and the status line show what changed (/join, /query, news)


class LineReader(threading.Thread):
    """Reads lines (prompt_toolkit on a terminal, plain lines otherwise) and sends them over inproc."""

    EOF = "\x00eof"

    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        interactive: bool,
        prompt: Any,
        status: Callable[[], Any] | None = None,
        complete: Callable[[str], commands.Completion] | None = None,
    ) -> None:
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
            from prompt_toolkit.styles import Style

            bindings = KeyBindings()

            @bindings.add(Keys.Vt100MouseEvent)
            def _no_mouse(_event: Any) -> None:
                """A line prompt has no use for the mouse, and prompt_toolkit's own handler crashed the prompt
                on a report it cannot parse (ESC [ 2 M typed by hand: "Unhandled exception in event loop")."""

            @bindings.add("c-c")
            def _clear_or_quit(event: Any) -> None:
                """Ctrl-C clears a half-typed line; on an empty line it quits, as before."""
                buffer = event.app.current_buffer
                if buffer.text:
                    buffer.reset()
                else:
                    event.app.exit(exception=KeyboardInterrupt())

            self.session = PromptSession(
                history=InMemoryHistory(),
                key_bindings=bindings,
                bottom_toolbar=status,  # shown where the terminal answers cursor-position requests (most do)
                completer=None if complete is None else tab_completer(complete),
                complete_while_typing=False,  # Tab, as in a shell
                reserve_space_for_menu=0,  # no empty rows kept under the prompt: the menu opens above when it must
                erase_when_done=True,  # the line said comes back as a line of the chat (Console.echo)
                style=Style.from_dict(STATUS_STYLE),
            )

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
            if self.interactive:
                self._read_terminal(lambda line: out.send_string(valid_unicode(line)))
            else:
                for line in sys.stdin:  # main() made bytes that are not UTF-8 harmless before the first read
                    out.send_string(valid_unicode(line))
        finally:
            out.send_string(self.EOF)
            out.close(linger=1000)

    def _read_terminal(self, send: Callable[[str], None]) -> None:
        """One prompt for the whole session: Enter hands the line over and empties the input line, the prompt
        stays.  So the terminal stays in raw mode: nothing typed right after Enter is echoed by the terminal
        itself, and the prompt and status line never flicker.  Ends with /quit, Ctrl-D or Ctrl-C on an empty
        line, or ``stop``."""
        session = self.session

        def accept(buffer: Any) -> bool:
            line = buffer.text
            send(line)
            if line.strip().lower() in QUIT_COMMANDS:
                session.app.exit()  # don't draw another prompt under the goodbye
            return False  # False: the line is emptied (and kept in the history)

        session.default_buffer.accept_handler = accept
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            session.prompt(self.prompt)

    def redraw(self) -> None:
        """Draw the prompt and the status line again (from any thread): what they show has changed."""
        app = getattr(self.session, "app", None)
        if app is not None:
            app.invalidate()  # thread-safe; nothing to do while no prompt is up

    def stop(self) -> None:
        """Make a running prompt return, so the terminal is restored before we exit."""
        app = getattr(self.session, "app", None)
        if app is not None and app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()) if app.is_running else None)
            self.join(timeout=1.0)


def tab_completer(complete: Callable[[str], commands.Completion]) -> Any:
    """A prompt_toolkit completer offering what ``complete(text before the cursor)`` finds."""
    from prompt_toolkit.completion import Completer, Completion

    class TabCompleter(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Iterator[Completion]:
            before = document.text_before_cursor
            found = complete(before)
            for candidate in found.candidates:
                yield Completion(candidate, start_position=found.start - len(before))

    return TabCompleter()


def valid_unicode(line: str) -> str:
    """A line read from a terminal or a pipe, with what is not valid Unicode (bytes that were not UTF-8,
    kept as surrogate escapes) shown as U+FFFD, so it can be sent instead of ending the console."""
    try:
        raw = line.encode("utf-8", "surrogateescape")  # the bytes as they came
    except UnicodeEncodeError:  # a surrogate that is no escape
        raw = line.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
