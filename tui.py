"""The full-screen console (``python client.py --tui``, or ``python tui.py``): a view per room and per private
conversation, as in irssi and weechat, on Textual.

::

    #dev  CI: green · deploys at 16:00 UTC
     1 #general    │ 09:12       erin │ pushed the writer-process fix          │ alice
     2 #dev        │ 09:13        bob │ merging after lunch                    │ bob
     3 @carol   1! │ 09:15        --> │ gus joined the room                    │ erin
    [09:29] [alice] 2:#dev{4} [Act: 3]                                     connected
    [alice] _

It is one more front end on the same pieces, not a second client:

- A network thread owns the ``ChatClient`` (ZeroMQ sockets are not thread-safe) and a ``TuiConsole``: the
  console's own command handling (``console.Console``: /msg /query /join /part /who /topic /nick /away /window
  /clear /help /quit, exactly as at the console) and its views (``views.Views``), with its lines kept for the
  screen instead of printed.
- The Textual app (the main thread) only draws.  What it is asked to do (a typed line, a view to switch to,
  quit) goes to the network thread over an inproc PAIR socket registered in the client's poller, as the
  console's reader thread and the window do; what to draw comes back as immutable snapshots (``State``,
  ``Lines``), posted to the app's event loop without ever blocking the network thread.

Keys: Alt-1..Alt-9 and Alt-0 (view 10), Ctrl-N / Ctrl-P (next / previous view), Tab (complete a command, a
room or a name; again for the next one), Up / Down (what was typed before), PageUp / PageDown (scroll back),
Ctrl-Q, or Ctrl-C or Ctrl-D on an empty line (leave; Ctrl-C on a half-typed line clears it, and copies the
text selected with the mouse, if any).  A click on a view in the list switches to it; the mouse is never
needed.

Text from others is shown as text: ``display.line_of`` passes it through ``safe_text``, and it is drawn as
Rich ``Text``, never parsed as markup.  A long line wraps under its own text (a hanging indent), so no
wrapped row can pass for a line of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import zmq
from rich.cells import cell_len
from rich.console import Console as RichConsole
from rich.console import ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, RichLog, Static

import cli
import commands
import messages as m
from chat_thread import ChatThread, Closed, Connected, Refused
from console import Console
from display import PALETTE_SIZE, Line, clock, colour_of, error_text, line_of, undelivered_line
from safe_text import safe_text
from session import Change, Event, Status
from views import MAX_LINES, QUERY_PREFIX, Activity

#: Nick colours, ``display.colour_of``'s palette: twelve hues that read well on a dark background.
PALETTE = (
    *("#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2"),  # red, green, yellow, blue, magenta, cyan
    *("#d19a66", "#ff79c6", "#8be9fd", "#50fa7b", "#bd93f9", "#f1fa8c"),  # and six lighter or in between
)
assert len(PALETTE) == PALETTE_SIZE
#: Cells of the nick column (longer names are cut, as weechat does).
NICK_WIDTH = 10
#: Seconds to wait for a clean goodbye (bye said, late acks shown) before the app goes anyway.
CLOSE_GRACE = 4.0
#: Lines of a view drawn when it is shown (or the width changes): the newest, as each costs about 0.3 ms to
#: lay out and a switch must feel instant.  Lines that come while it is shown add to them (up to ``MAX_ROWS``).
REDRAWN = 500
#: Rows the current view's scrollback holds at most.
MAX_ROWS = 10_000
#: Below this many columns the member list is hidden, below the next the view list too.
MEMBERS_MIN_COLUMNS, ROOMS_MIN_COLUMNS = 90, 60

#: What the status bar says of the connection, after each ``session.Status``.
LINK_TEXT = {
    Change.LOST: "reconnecting…",
    Change.RESTORED: "connected",
    Change.RECONNECTED: "connected",
    Change.MOVED: "trying the next broker…",
    Change.FEED_LOST: "feed lost",
    Change.FEED_RESTORED: "connected",
    Change.SHUTDOWN: "broker restarting…",
}

# Styles: the bars, the notices' marks, the activity levels of the view list.
BAR = "#8b949e"
DIM = "#6e7681"
TEXT = "#c9d1d9"
MARKS = {
    "join": ("-->", "bold #3fb950"),
    "leave": ("<--", "bold #f85149"),
    "error": ("=!=", "bold #f85149"),
}
NOTICE_MARK = ("--", "#58a6ff")
#: Kinds of line whose ``[kind] `` tag the mark in the nick column replaces.
MARKED = frozenset({"join", "leave", "error", "system", "topic", "nick"})
ACTIVITY_STYLE = {
    Activity.NONE: "#8b949e",
    Activity.EVENTS: "#39c5cf",
    Activity.MESSAGES: "bold #e3b341",
    Activity.MENTION: "bold #ff7eb6",
}
MENTION_ROW = "on #3b2a12"
HISTORY_STYLE = "#7d8590"


# --- What the network thread tells the app: immutable, so it can cross threads ------------------------------


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """A view as the view list shows it."""

    number: int
    name: str
    unread: int = 0
    mentions: int = 0
    activity: int = Activity.NONE


@dataclass(frozen=True, slots=True)
class State:
    """Everything around the current view's lines: the view list, topic, members, the status bar."""

    me: str
    views: tuple[ViewInfo, ...] = ()
    current: str | None = None
    topic: str = ""
    members: tuple[tuple[str, bool], ...] = ()  # (name, away)
    rooms: tuple[str, ...] = ()
    away: str | None = None  # ours: the reason, None when here
    link: str = "connected"


@dataclass(frozen=True, slots=True)
class Lines:
    """Lines of the current view: all of them (``reset``: another view, or /clear), or the new ones."""

    view: str | None
    lines: tuple[Line, ...]
    history_end: int = 0  # lines[:history_end] of the whole view came from history on joining
    reset: bool = False


Post = Callable[[object], None]


# --- The chat side: the console's command handling, its lines kept for the screen ---------------------------


class TuiConsole(Console):
    """The console, with each line kept in its view (``views``) instead of printed, and ``publish`` to tell
    the app what changed.  Lives with the client (the network thread, or a test).

    Unlike the line console it shows your own messages, as they come back from the broker (a terminal still
    has what was typed; a full-screen input line was cleared): so a line of yours on the screen was stored.
    """

    def __init__(self, client: Any, post: Post) -> None:
        super().__init__(client)
        self.post = post
        self.link = "connected"
        self.away_reason: str | None = None
        self._shown: Any = None  # the View whose lines the app has
        self._fresh: list[Line] = []  # lines added to it since the last publish
        self._reset = True
        self._state: State | None = None

    def show_line(self, line: Line, past: bool = False) -> None:
        view = self.views.add(line, past)
        if view is not None and view is self._shown:
            self._fresh.append(line)

    def print_line(self, line: Line, past: bool = False) -> None:
        """Nothing is printed: the screen is the app's (``show_line`` keeps each line for it)."""

    def write_terminal(self, text: str) -> None:
        """Nor written: the console's rules and clear-screens would land in the middle of the app's screen."""

    def on_event(self, event: Event) -> None:
        me = self.me()
        if isinstance(event, m.MsgEvent) and me is not None and event.user.casefold() == me.casefold():
            self.show_line(line_of(event, me) or Line("system", ""))
        else:
            super().on_event(event)
        if isinstance(event, Status):
            self.link = LINK_TEXT.get(event.state, self.link)
        elif isinstance(event, m.Away):
            self.away_reason = event.reason or None

    def on_command(self, command: commands.Command) -> bool:
        going_on = super().on_command(command)
        if command.name == "clear":
            self._reset = True
        return going_on

    def handle(self, kind: str, arg: str = "") -> bool:
        """One request from the app: ``line`` (typed), ``switch`` (to view N), ``step`` (+1/-1 views), ``quit``.
        False: the user wants to leave."""
        if kind == "line":
            return self.on_line(arg)
        if kind == "switch":
            name = self.views.number(int(arg))
            if name is not None:
                self.current = name
        elif kind == "step":
            names = list(self.views.views)
            if names:
                at = names.index(self.current) if self.current in names else 0
                self.current = names[(at + int(arg)) % len(names)]
        elif kind == "quit":
            return False
        return True

    def state(self) -> State:
        view = self.views.view
        members: tuple[tuple[str, bool], ...] = ()
        topic = ""
        if view is not None:
            if view.room is None:
                peer = view.name[len(QUERY_PREFIX) :]
                members = tuple((name, False) for name in dict.fromkeys([self.me() or "", peer]) if name)
            else:
                members = tuple((name, name in view.away) for name in view.sorted_members())
                topic = view.topic
        infos = tuple(
            ViewInfo(n, v.name, v.unread, v.mentions, v.activity) for n, v in enumerate(self.views.views.values(), 1)
        )
        return State(
            me=self.me() or "",
            views=infos,
            current=self.current,
            topic=topic,
            members=members,
            rooms=tuple(self.client.rooms),
            away=self.away_reason,
            link=self.link,
        )

    def closing(self) -> None:
        """The goodbye starts: the status bar says so while late acks come in."""
        self.link = "leaving…"
        self.publish()

    def publish(self) -> None:
        """Tell the app what changed since the last time: the current view's lines, and the state around them,
        in one post, so the screen never shows one without the other."""
        update: list[Lines | State] = []
        view = self.views.view
        if view is not self._shown or self._reset:
            self._shown, self._reset = view, False
            self._fresh.clear()
            if view is None:
                update.append(Lines(None, (), 0, reset=True))
            else:
                update.append(Lines(view.name, tuple(view.lines), view.history_end, reset=True))
        elif self._fresh and view is not None:
            update.append(Lines(view.name, tuple(self._fresh), view.history_end))
            self._fresh.clear()
        state = self.state()
        if state != self._state:
            self._state = state
            update.append(state)
        if update:
            self.post(tuple(update))


class Backend(Protocol):
    """Where the app's requests go: the network thread (``NetworkBackend``), or a test's console."""

    def send(self, kind: str, arg: str = "") -> None: ...


class NetworkBackend:
    """Starts the network thread, and sends it the app's requests over inproc (app thread only)."""

    def __init__(self, app: ChatApp, name: str) -> None:
        self.ctx = zmq.Context.instance()
        address = f"inproc://tui-input-{id(self)}"
        inbox = self.ctx.socket(zmq.PAIR)
        inbox.bind(address)
        self.outbox = self.ctx.socket(zmq.PAIR)
        self.outbox.connect(address)
        self.app = app
        self.thread = ChatThread(name, app.args, inbox, app.post, self.ctx, lambda client: TuiConsole(client, app.post))
        self.thread.start()

    def send(self, kind: str, arg: str = "") -> None:
        if self.outbox.closed:
            return
        try:  # never blocks the screen: a thousand requests waiting means the network thread is stuck
            self.outbox.send_multipart([kind.encode(), arg.encode("utf-8", "replace")], zmq.NOBLOCK)
        except zmq.Again:
            self.app.notify("the chat is not answering; that was not sent", severity="error")

    def close(self) -> None:
        self.outbox.close(linger=0)


# --- Drawing: pure functions of a line or a state, for the widgets and the tests ----------------------------


def nick_style(name: str) -> str:
    return PALETTE[colour_of(name)]


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, cut with ``…``."""
    if cell_len(text) <= width:
        return text
    while text and cell_len(text) > width - 1:
        text = text[:-1]
    return text + "…"


class ChatLine:
    """One line laid out as weechat does: the time, the nick column (right-aligned), a bar, then the text,
    wrapped under itself, so a wrapped row can never pass for a line of its own."""

    def __init__(self, stamp: str | None, prefix: Text, body: Text, style: str = "", rule: bool = False) -> None:
        self.stamp = stamp
        self.prefix = prefix
        self.body = body
        self.style = style
        self.rule = rule

    def head(self, first: bool) -> Text:
        head = Text()
        if self.stamp is not None:
            head.append(self.stamp if first else " " * cell_len(self.stamp), style=DIM)
            head.append(" ")
        prefix = self.prefix if first else Text("")
        pad = max(0, NICK_WIDTH - prefix.cell_len)
        head.append(" " * pad)
        head.append_text(prefix)
        head.append(" │ ", style="#30363d")
        return head

    def __rich_console__(self, console: RichConsole, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        first = self.head(True)
        room = max(8, width - first.cell_len)
        if self.rule:
            label = f" {self.body.plain} " if room >= cell_len(self.body.plain) + 6 else ""
            left = (room - cell_len(label)) // 2
            rows = [Text("─" * left + label + "─" * (room - left - cell_len(label)), style="#3d4d66")]
        else:
            rows = list(self.body.wrap(console, room, overflow="fold", no_wrap=False))
        rest = self.head(False) if len(rows) > 1 else first
        for i, row in enumerate(rows or [Text("")]):
            out = Text(style=self.style, end="")  # the row's own style: under the nick's and the text's
            out.append_text(first if i == 0 else rest)
            out.append_text(row)
            if self.style:
                out.pad_right(max(0, width - out.cell_len))
            yield from out.render(console)  # laid out already: not wrapped again
            yield Segment.line()


def chat_line(line: Line, stamp: str | None, history: bool = False) -> ChatLine:
    """How ``line`` looks in a view: who in the nick column (coloured), or a notice's mark (``-->`` ...)."""
    body = Text(line.body)
    if line.kind == "msg" or (line.kind == "dm" and not line.prefix.startswith("[dm] * ")):
        who = line.nick or ""
        prefix = Text(cut(who, NICK_WIDTH), style="bold " + TEXT if line.mine else nick_style(who))
    elif line.kind in ("action", "dm"):
        who = line.nick or ""
        prefix = Text(" *", style="bold " + TEXT)
        body = Text.assemble((who, nick_style(who)), " ", line.body)
    else:
        mark, style = MARKS.get(line.kind, NOTICE_MARK)
        prefix = Text(mark, style=style)
        tag = f"[{line.kind}] "  # the mark says it: [join], [leave], [system]...; the others stay ([who], [rooms])
        text = line.body[len(tag) :] if line.kind in MARKED and line.body.startswith(tag) else line.body
        body = Text(text, style="#f0883e" if line.kind == "error" else TEXT if line.kind == "system" else "#a5b1be")
        if line.nick and text.startswith(line.nick):
            body.stylize(nick_style(line.nick), 0, len(line.nick))
    if history and line.kind != "system":  # what was said before you came, greyed; the [system] lines are now's
        body.stylize(HISTORY_STYLE)
    style = MENTION_ROW if line.mention and line.kind != "dm" else ""
    if line.mention and line.kind != "dm":
        prefix = Text(prefix.plain, style="bold #0d1117 on #e3b341")
    return ChatLine(stamp, prefix, body, style)


def history_rule(stamp: str | None) -> ChatLine:
    """The separator between what was said before you joined and what comes live."""
    return ChatLine(stamp and " " * len(stamp), Text(""), Text("history above, live below"), rule=True)


def room_entry(info: ViewInfo, current: bool, width: int = 18) -> Text:
    """A view in the view list: ``number name`` and its unread count, coloured by what happened there
    (mention, messages, events); the current one highlighted."""
    number = f"{info.number:>2} "
    badge = (f"{info.unread}" + ("!" if info.mentions else "")) if info.unread else ""
    if not badge and info.activity >= Activity.MENTION:
        badge = "!"
    name = info.name if info.name.startswith(QUERY_PREFIX) else f"#{info.name}"
    name = cut(name, max(1, width - len(number) - len(badge) - 1))
    gap = max(1, width - len(number) - cell_len(name) - len(badge))
    style = ACTIVITY_STYLE.get(info.activity, ACTIVITY_STYLE[Activity.NONE])
    if current:
        return Text.assemble((number, "#a5d6ff"), (name, "bold #ffffff"), " " * gap, badge, style="on #1f3a5f")
    badge_style = "bold #0d1117 on #ff7eb6" if info.activity >= Activity.MENTION else style
    return Text.assemble((number, DIM), (name, style), " " * gap, (badge, badge_style))


def member_entry(name: str, away: bool, me: str | None) -> Text:
    """A member in the member list; one who is away greyed, with ``(away)``."""
    if away:
        return Text.assemble((name, "italic #6e7681"), (" (away)", "#6e7681"), overflow="ellipsis", no_wrap=True)
    style = "bold " + TEXT if me is not None and name.casefold() == me.casefold() else nick_style(name)
    return Text(name, style=style, overflow="ellipsis", no_wrap=True)


def topic_text(state: State) -> Text:
    current = state.current
    if current is None:
        return Text("no room: /join one", style=DIM)
    if current.startswith(QUERY_PREFIX):
        return Text.assemble((current, "bold #ffffff"), "  ", (f"private conversation with {current[1:]}", BAR))
    topic = safe_text(state.topic) if state.topic else ""
    return Text.assemble((f"#{current}", "bold #ffffff"), "  ", topic or ("no topic (/topic TEXT sets one)", DIM))


def status_text(state: State, now: str, width: int) -> Text:
    """The status bar: the time, you (and away), the current view and its members, where there is news
    (``Act:``), the connection on the right."""
    left = Text()
    left.append("[", BAR).append(now, TEXT).append("] ", BAR)
    left.append("[", BAR).append(state.me, "bold " + TEXT)
    if state.away is not None:
        left.append(" (away)", "#e3b341")
    left.append("] ", BAR)
    current = next((v for v in state.views if v.name == state.current), None)
    if current is not None:
        name = current.name if current.name.startswith(QUERY_PREFIX) else f"#{current.name}"
        left.append(f"{current.number}:", BAR).append(name, "bold #ffffff")
        if not current.name.startswith(QUERY_PREFIX):
            left.append(f"{{{len(state.members)}}}", BAR)
        left.append(" ")
    news = [v for v in state.views if v.activity and v.name != state.current]
    if news:
        left.append("[Act: ", BAR)
        for i, view in enumerate(sorted(news, key=lambda v: (-v.activity, v.number))):
            if i:
                left.append(",", BAR)
            left.append(str(view.number), ACTIVITY_STYLE[view.activity])
        left.append("]", BAR)
    right = Text(state.link, style="#3fb950" if state.link == "connected" else "bold #f85149")
    gap = max(1, width - left.cell_len - right.cell_len)
    return Text.assemble(left, " " * gap, right, no_wrap=True, overflow="ellipsis")


# --- Widgets ------------------------------------------------------------------------------------------------


class RoomList(Static):
    """The views, numbered as Alt-N and /window N count; a click switches."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("", **kw)
        self.infos: tuple[ViewInfo, ...] = ()
        self.current: str | None = None

    def set_views(self, infos: tuple[ViewInfo, ...], current: str | None) -> None:
        self.infos, self.current = infos, current
        self.redraw()

    def redraw(self) -> None:
        width = max(8, self.content_region.width or 18)
        lines = [room_entry(info, info.name == self.current, width) for info in self.infos]
        self.update(Text("\n").join(lines) if lines else Text(""))

    def on_resize(self, _event: events.Resize) -> None:
        self.redraw()

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and 0 <= offset.y < len(self.infos):
            app = self.app
            if isinstance(app, ChatApp):
                app.switch_view(self.infos[offset.y].number)


class MemberList(Static):
    def set_members(self, members: tuple[tuple[str, bool], ...], me: str | None) -> None:
        lines = [member_entry(name, away, me) for name, away in members]
        self.update(Text("\n").join(lines) if lines else Text(""))


class ChatLog(RichLog):
    """The current view's lines; drawn again when the width changes (RichLog renders each line once)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(wrap=False, min_width=1, auto_scroll=False, max_lines=MAX_ROWS, **kw)
        self.entries: deque[Line] = deque(maxlen=MAX_LINES)
        self.history_end = 0
        self.clock: Callable[[float], str] | None = clock
        self._width = self._drawn_width = 0

    def show(self, lines: Iterable[Line], history_end: int) -> None:
        self.entries.clear()
        self.entries.extend(lines)
        self.history_end = history_end
        self.redraw()

    def append(self, lines: Iterable[Line], history_end: int) -> None:
        at_end = self.is_vertical_scroll_end or self.max_scroll_y == 0
        for line in lines:
            self.entries.append(line)
            self._write(line, len(self.entries) - 1, history_end)
        self.history_end = history_end
        if at_end:
            self.scroll_end(animate=False, immediate=False, x_axis=False)

    def redraw(self) -> None:
        self.clear()
        self._width = self._drawn_width = self.scrollable_content_region.width
        if self._width <= 0:
            return  # drawn when it gets a size
        first = max(0, len(self.entries) - REDRAWN)
        for index in range(first, len(self.entries)):
            self._write(self.entries[index], index, self.history_end)
        self.scroll_end(animate=False, immediate=False, x_axis=False)

    def _write(self, line: Line, index: int, history_end: int) -> None:
        width = self.scrollable_content_region.width
        if width <= 0:
            return
        stamp = self.clock(line.ts) if self.clock is not None else None
        history = index < history_end
        self.write(chat_line(line, stamp, history), width=width, scroll_end=False)
        if history and index == history_end - 1:
            self.write(history_rule(stamp), width=width, scroll_end=False)

    def on_resize(self, event: events.Resize) -> None:
        super().on_resize(event)
        if self.scrollable_content_region.width != self._width:
            self._width = self.scrollable_content_region.width
            self.call_after_refresh(self._redraw_if_resized)  # once, after the layout settled

    def _redraw_if_resized(self) -> None:
        if self.scrollable_content_region.width != self._drawn_width:
            self.redraw()


@dataclass(frozen=True, slots=True)
class Cycle:
    """Tab pressed again without typing goes on to the next candidate."""

    value: str
    cursor: int
    head: str
    tail: str
    candidates: list[str]
    index: int


class ChatInput(Input):
    """The input line: Tab completes (``commands.complete``; again: the next candidate), Up/Down recall."""

    BINDINGS = [  # noqa: RUF012 (Textual's own declaration)
        Binding("tab", "complete", show=False),
        Binding("up", "recall(-1)", show=False),
        Binding("down", "recall(1)", show=False),
        Binding("ctrl+d", "delete_or_quit", show=False),
    ]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.typed: list[str] = []
        self.recalled = 0
        self._cycle: Cycle | None = None

    async def _on_key(self, event: events.Key) -> None:
        """Enter is taken here, in order with the keys around it.  As a binding it ran later than the keys typed
        right after it, which joined the line being sent ("/query bob", "hi" went out as "/query bobhi")."""
        if event.key == "enter":  # (other keys: Textual calls Input's own handler after this one)
            event.stop()
            event.prevent_default()
            await self.action_submit()

    async def action_submit(self) -> None:
        """The line goes, and the input is empty at once."""
        line, self.value = self.value, ""
        app = self.app
        if isinstance(app, ChatApp):
            app.submit(self, line)

    def _on_paste(self, event: events.Paste) -> None:
        """Several lines pasted (or typed faster than the screen reads them) are sent one by one, as typed:
        Textual's own Input keeps the first line of a paste and drops the others."""
        parts = re.split(r"\r\n|\r|\n", event.text)
        app = self.app
        if len(parts) == 1 or not isinstance(app, ChatApp):
            return  # one line: Input's own handler, which Textual calls after this one
        event.stop()
        event.prevent_default()
        before, after = self.value[: self.cursor_position], self.value[self.cursor_position :]
        parts[0] = before + parts[0]
        for line in parts[:-1]:
            app.submit(self, line)
        self.value = parts[-1] + after
        self.cursor_position = len(parts[-1])

    def action_complete(self) -> None:
        app = self.app
        if not isinstance(app, ChatApp):
            return
        cycle = self._cycle
        if cycle is not None and (cycle.value, cycle.cursor) == (self.value, self.cursor_position):
            head, tail, candidates, index = cycle.head, cycle.tail, cycle.candidates, cycle.index + 1
        else:
            before = self.value[: self.cursor_position]
            names = [name for name, _away in app.state.members]
            found = commands.complete(before, names, list(app.state.rooms), app.state.me)
            if not found.candidates:
                self._cycle = None
                app.bell()
                return
            head, tail, candidates, index = (
                before[: found.start],
                self.value[self.cursor_position :],
                found.candidates,
                0,
            )
        word = candidates[index % len(candidates)]
        if not word.endswith(" ") and not tail.startswith(" "):
            word += " "
        self.value = head + word + tail
        self.cursor_position = len(head + word)
        self._cycle = Cycle(self.value, self.cursor_position, head, tail, candidates, index)

    def action_recall(self, step: int) -> None:
        if not self.typed:
            return
        self.recalled = max(0, min(len(self.typed), self.recalled + step))
        self.value = self.typed[self.recalled] if self.recalled < len(self.typed) else ""
        self.cursor_position = len(self.value)

    def action_delete_or_quit(self) -> None:
        if self.value:
            self.action_delete_right()
        elif isinstance(self.app, ChatApp):
            self.app.action_leave()

    def remember(self, line: str) -> None:
        if line and (not self.typed or self.typed[-1] != line):
            self.typed.append(line)
        self.recalled = len(self.typed)
        self._cycle = None


class StatusBar(Static):
    def __init__(self, **kw: Any) -> None:
        super().__init__("", **kw)
        self.state: State | None = None
        self.now: Callable[[], str] = lambda: clock(0)

    def set_state(self, state: State) -> None:
        self.state = state
        self.redraw()

    def redraw(self) -> None:
        if self.state is not None:
            self.update(status_text(self.state, self.now(), max(20, self.content_region.width)))

    def on_resize(self, _event: events.Resize) -> None:
        self.redraw()


class NameScreen(ModalScreen[str]):
    """Asks for a name when ``--name`` was not given (and again when the broker refuses it)."""

    DEFAULT_CSS = """
    NameScreen { align: center middle; background: #0d1117 80%; }
    NameScreen > Vertical { width: 52; height: auto; padding: 1 2; background: #161b22; border: round #30363d; }
    NameScreen Input { border: tall #30363d; }
    NameScreen #name-error { color: #f85149; height: auto; }
    """

    def __init__(self, error: str = "") -> None:
        super().__init__()
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text("zmq-chat", style="bold #ffffff"))
            yield Static(Text(self.error), id="name-error")
            yield Static("Enter a username:")
            yield Input(placeholder="letters, digits, _ . -", id="name", max_length=32)

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        name = event.value.strip()
        if name:
            self.dismiss(name)


# --- The app ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How the chat ended, for ``main`` to say on the terminal once the screen is gone."""

    code: int = 0
    lines: tuple[str, ...] = ()


Connect = Callable[["ChatApp", str], Backend]


class ChatUpdate(Message):
    """Something the chat side has to say (``State``, ``Lines``, ``Connected``, ``Refused``, ``Closed``)."""

    def __init__(self, item: object) -> None:
        super().__init__()
        self.item = item


class ChatApp(App[Outcome]):
    """rooms | the current view | members, topic above, status and input below."""

    TITLE = "zmq-chat"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { background: #0d1117; color: #c9d1d9; layers: base; }
    #topic { height: 1; background: #161b22; color: #c9d1d9; padding: 0 1; }
    #main { height: 1fr; }
    #rooms { width: 1fr; height: auto; background: #0d1117; padding: 0 1 0 0; }
    #rooms-scroll { width: 18; border-right: solid #30363d; background: #0d1117; scrollbar-size-vertical: 0; }
    #log { width: 1fr; background: #0d1117; padding: 0 1 0 1; scrollbar-size-vertical: 1;
           scrollbar-color: #30363d; scrollbar-background: #0d1117; }
    #log:focus { background-tint: #000000 0%; }
    #members-scroll { width: 16; border-left: solid #30363d; background: #0d1117; scrollbar-size-vertical: 0; }
    #members { padding: 0 1; }
    #status { height: 1; background: #161b22; padding: 0 1; }
    #input-row { height: 1; background: #0d1117; }
    #prompt { width: auto; padding: 0 0 0 1; }
    #input { height: 1; border: none; padding: 0 1; background: #0d1117; color: #e6edf3; }
    #input:focus { border: none; background-tint: #000000 0%; }
    #input > .input--placeholder { color: #484f58; }
    #input > .input--cursor { background: #c9d1d9; color: #0d1117; }
    """
    BINDINGS = [  # noqa: RUF012 (Textual's own declaration)
        *(Binding(f"alt+{n % 10}", f"switch({n})", show=False, priority=True) for n in range(1, 11)),
        Binding("ctrl+n", "step(1)", show=False, priority=True),
        Binding("ctrl+p", "step(-1)", show=False, priority=True),
        Binding("ctrl+q", "leave", show=False, priority=True),
        Binding("ctrl+c", "interrupt", show=False, priority=True),
        Binding("pageup", "scroll_log(-1)", show=False, priority=True),
        Binding("pagedown", "scroll_log(1)", show=False, priority=True),
    ]

    def __init__(
        self,
        args: argparse.Namespace,
        connect: Connect | None = None,
        stamps: Callable[[float], str] | None = clock,
        now: Callable[[], float] = time.time,
        signals: bool = False,
    ) -> None:
        """``connect(app, name)``: where the chat is (default: a network thread with a ``ChatClient``);
        ``stamps``: the time before each line (None: none); ``now``: the clock of the status bar; ``signals``:
        SIGTERM and SIGHUP leave as /quit does (the program's own app, not a test's)."""
        super().__init__()
        self.signals = signals
        self.args = args
        self.connect = connect or NetworkBackend
        self.stamps = None if getattr(args, "no_timestamps", False) else stamps
        self.now = now
        self.backend: Backend | None = None
        self.state = State(me=args.name or "")
        self.outcome = Outcome(code=1)
        self.asked_name = args.name is None
        self.leaving = False
        self.connected = False

    def compose(self) -> ComposeResult:
        yield Static(Text(""), id="topic")
        with Horizontal(id="main"):
            with VerticalScroll(id="rooms-scroll"):
                yield RoomList(id="rooms")
            yield ChatLog(id="log")
            with VerticalScroll(id="members-scroll"):
                yield MemberList(id="members")
        yield StatusBar(id="status")
        with Horizontal(id="input-row"):
            yield Static(Text(""), id="prompt")
            yield ChatInput(id="input", placeholder="type to chat, /help for the commands")

    def on_mount(self) -> None:
        log = self.query_one(ChatLog)
        log.clock = self.stamps
        log.can_focus = False
        self.query_one("#rooms-scroll").can_focus = False
        self.query_one("#members-scroll").can_focus = False
        self.query_one(StatusBar).now = lambda: (self.stamps or clock)(self.now())  # as the lines are stamped
        self.set_interval(10, self.query_one(StatusBar).redraw)
        self.query_one(ChatInput).focus()
        self._layout_for(self.size.width)
        if self.signals:  # a clean goodbye, and the terminal given back as it was
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(signum, self.action_leave)
        if self.args.name:
            self.start(self.args.name)
        else:
            self.push_screen(NameScreen(), self.start)

    def on_resize(self, event: events.Resize) -> None:
        self._layout_for(event.size.width)

    def _layout_for(self, width: int) -> None:
        self.query_one("#members-scroll").display = width >= MEMBERS_MIN_COLUMNS
        self.query_one("#rooms-scroll").display = width >= ROOMS_MIN_COLUMNS

    def start(self, name: str | None) -> None:
        if not name:
            return
        self.state = State(me=name, link="connecting…")
        self._show_state()
        self.backend = self.connect(self, name)

    # --- what the chat says (posted from the network thread, or called by a test's backend) -------------

    def post(self, item: object) -> None:
        """Hand ``item`` to the app: from any thread, never blocking (the network thread must never wait for the
        screen), as a Textual message, so it is handled in the app's own context; nothing once the app is gone."""
        self.post_message(ChatUpdate(item))

    def on_chat_update(self, message: ChatUpdate) -> None:
        self.receive(message.item)

    def receive(self, item: object) -> None:
        if isinstance(item, tuple):  # what changed together (``TuiConsole.publish``)
            for each in item:
                self.receive(each)
        elif isinstance(item, Lines):
            log = self.query_one(ChatLog)
            if item.reset:
                log.show(item.lines, item.history_end)
            else:
                log.append(item.lines, item.history_end)
        elif isinstance(item, State):
            self.state = item
            self._show_state()
        elif isinstance(item, Connected):
            self.connected = True
            self.outcome = Outcome(code=0)
        elif isinstance(item, Refused):
            self._chat_refused(item)
        elif isinstance(item, Closed):
            self._chat_closed(item)

    def _chat_refused(self, refused: Refused) -> None:
        """No session: ask for another name if the broker refused the one typed, else go and say why."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()  # its thread is gone
        self.backend = None
        text = error_text(refused.code, refused.detail)
        if self.asked_name and refused.code in ("name_taken", "bad_name") and not self.leaving:
            self.push_screen(NameScreen(text), self.start)
        else:
            self.exit(Outcome(code=1 if refused.code == "timeout" else 2, lines=(text,)))

    def _chat_closed(self, closed: Closed) -> None:
        lines = list(self.outcome.lines)
        code = self.outcome.code
        if closed.error:
            lines.append(f"[error] {closed.error}")
            code = 1
        if closed.undelivered:
            lines.append(undelivered_line(closed.undelivered))
            code = 1
        if self.connected:
            lines.append("[system] bye")
        self.outcome = Outcome(code, tuple(lines))
        self.exit(self.outcome)

    def _show_state(self) -> None:
        state = self.state
        self.query_one("#topic", Static).update(topic_text(state))
        self.query_one(RoomList).set_views(state.views, state.current)
        self.query_one(MemberList).set_members(state.members, state.me)
        self.query_one(StatusBar).set_state(state)
        prompt = Text.assemble(("[", BAR), (state.me, nick_style(state.me) if state.me else TEXT), ("]", BAR))
        self.query_one("#prompt", Static).update(prompt)

    # --- what the user does ---------------------------------------------------------------------------------

    def submit(self, input_line: ChatInput, line: str) -> None:
        """Send a typed (or pasted) line: a command or chat text."""
        input_line.remember(line)
        if self.backend is None:
            return
        if line.strip().lower() in commands.QUIT_COMMANDS:
            self.action_leave()
            return
        self.backend.send("line", line)

    def switch_view(self, number: int) -> None:
        if self.backend is not None:
            self.backend.send("switch", str(number))

    def action_switch(self, number: int) -> None:
        self.switch_view(number)

    def action_step(self, step: int) -> None:
        if self.backend is not None:
            self.backend.send("step", str(step))

    def action_scroll_log(self, pages: int) -> None:
        log = self.query_one(ChatLog)
        log.scroll_to(y=log.scroll_y + pages * max(1, log.size.height - 2), animate=False)

    def action_interrupt(self) -> None:
        """Ctrl-C: copies the text selected with the mouse, if any; else clears a half-typed line; on an empty
        line it leaves (as the console does)."""
        selected = self.screen.get_selected_text()
        if selected:
            self.copy_to_clipboard(selected)
            self.screen.clear_selection()
            return
        focused = self.focused
        if isinstance(focused, ChatInput) and focused.value:
            focused.value = ""
            return
        self.action_leave()

    def action_leave(self) -> None:
        """/quit, Ctrl-C, Ctrl-Q: say bye and go; a second time, or after ``CLOSE_GRACE`` s, go anyway."""
        if self.backend is None or self.leaving:
            self.exit(self.outcome)
            return
        self.leaving = True
        self.state = dataclasses.replace(self.state, link="leaving…")
        self._show_state()
        self.backend.send("quit")
        self.set_timer(CLOSE_GRACE, lambda: self.exit(self.outcome))


# --- The program --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-tui", description="Chat through a chat broker, full screen: a view per room, as in irssi."
    )
    cli.add_endpoint_args(parser)
    cli.add_session_args(parser, "your user name (asked for if not given)")
    parser.add_argument("--no-timestamps", action="store_true", help="no HH:MM before each line")
    # `client.py --tui` passes its argv on (without --tui); accepted and ignored, as the window does.
    parser.add_argument("--gui", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tui", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def read_alt_digits() -> None:
    """Make ESC 1 .. ESC 0 the keys Alt-1 .. Alt-0, as xterm, GNOME Terminal, Konsole and tmux send them (and as
    irssi and weechat read them).  Textual reads them as the characters a Mac's Option key types in WezTerm
    (ESC 2 is ``™``), which would type ``™`` into the input line instead of switching to view 2.  Terminals
    that speak the kitty keyboard protocol send Alt-2 unambiguously, and are not affected."""
    from textual import _ansi_sequences

    for digit in "1234567890":
        _ansi_sequences.ANSI_SEQUENCES_KEYS.pop(f"\x1b{digit}", None)


def main(argv: Sequence[str] | None = None) -> int:
    """0: said bye with everything delivered; 1: no broker, no name, or lines not delivered; 2: refused."""
    args = parse_args(argv)
    try:
        cli.connection(args)
    except (OSError, ValueError) as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("chat: --tui needs a terminal; without one, `python client.py` reads and prints lines", file=sys.stderr)
        return 2
    read_alt_digits()
    app = ChatApp(args, signals=True)
    outcome = app.run()
    if outcome is None:  # the app ended some other way (an exception, a signal): what was known by then
        outcome = app.outcome
    backend = app.backend
    if isinstance(backend, NetworkBackend):  # gone before the goodbye finished (the grace ran out): a moment more
        backend.thread.join(timeout=1.0)
        backend.close()
    for line in outcome.lines:
        print(line, flush=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
