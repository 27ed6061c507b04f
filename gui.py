"""The desktop chat: the console client's chat in a Tkinter window (``python gui.py`` or ``python client.py --gui``).

It is one more front end on the same ``ChatClient``, not a second client:

- A network thread owns the ``ChatClient`` (ZeroMQ sockets are not thread-safe)
  and runs a ``GuiConsole``: the console's own command handling, lines (``display.Line``)
  and views (``views.Views``: one per room and per private conversation, with unread
  counts, mentions, topic and members).  It posts to the window the lines of the view
  on show, a copy of a view's lines when another one is shown, and a ``State`` (the
  views with their counts, the current one, its topic and members) when it changed.
- The Tk main thread only touches widgets.  Typed lines, and the view picked in the room
  list, go to the network thread over an inproc PAIR socket registered in the client's
  poller (as the console's reader thread does); what to show comes back on a
  ``queue.Queue`` that the Tk loop drains with ``after`` polling.  No widget is touched
  from another thread, and no state is shared: ``Line`` and ``State`` are immutable.

The look: a maintained ttk theme (Sun Valley, ``sv-ttk``) in the desktop's light or dark mode
(``darkdetect``, asked again when the window gets the focus; ``--theme`` overrides it); each nick
in a colour of its own (``display.colour_of``) from a palette made for that mode; mentions
highlighted; history shown on joining set apart from what was said since.  Tk lays text out left to
right in the order it was typed, which shows Hebrew and Arabic reversed, so each line is put in
display order with ``python-bidi`` first, and a line that is mostly right-to-left is set right,
broken into rows the window's width by the window itself (Tk would break the reordered text, whose
first row would then be the end of the line).  Arabic letters are not joined (Tk does no shaping).

Text from others is shown as plain text: ``display`` passes it through ``safe_text``,
and a Tk ``Text`` widget interprets no markup.

Test hook: with ``CHAT_GUI_ECHO=1`` every line the window adds to the conversation is also
printed to stdout as it is displayed (without its time, in typed order), and so are a change of
the view on show (``[view] #dev``, then its lines, then ``[scroll] #dev TOP BOTTOM``, the
conversation's ``yview``), of the room list (``[rooms] #general(0) #dev(3!)``: unread counts,
``!`` for a mention), of the member list (``[members] #room: a, b (away)``), of the topic
(``[topic] #room: text``), of my being away (``[away] reason``), a bell (``[bell] #dev``), the
status line (``[status] ...``) and the name prompt appearing (``[prompt] ...``), so a test can
see what the window shows.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import re
import signal
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

import cli
import commands
import messages as m
from chat_thread import ChatThread, Closed, Connected, Refused
from console import Console
from display import Line, clock, colour_of, label, line_of, mentions, undelivered_line
from session import Event, Failed, Status
from views import MAX_LINES, QUERY_PREFIX, Activity

#: How often the Tk loop drains the queue from the network thread (ms).
POLL_MS = 40
#: Set to 1 to print what the window displays (for tests; see the module docstring).
ECHO_ENV = "CHAT_GUI_ECHO"
#: Seconds to wait for a clean goodbye (bye sent, late acks shown) before the window goes anyway.
CLOSE_GRACE = 4.0
#: At most this often (seconds) the window asks the desktop whether it is light or dark.
THEME_CHECK_EVERY = 5.0
#: The rule between the history shown on joining and what was said since.
SEPARATOR = "─────  earlier messages above  ─────"

STATUS_TEXT = {
    "lost": "connection lost, reconnecting…",
    "restored": "connection restored",
    "reconnected": "reconnected (the broker restarted, or another took over)",
    "moved": "no answer from this broker; trying the next one…",
    "shutdown": "the broker is shutting down; waiting for it to come back…",
}

Post = Callable[[tuple[Any, ...]], None]


# --- Pure logic (no Tk, no sockets) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tab:
    """A view as the room list shows it."""

    name: str  # a room, or "@NAME"
    unread: int = 0
    mentions: int = 0
    activity: int = Activity.NONE

    @property
    def title(self) -> str:
        return self.name if self.name.startswith(QUERY_PREFIX) else f"#{self.name}"

    @property
    def badge(self) -> str:
        """The room list's count: unread messages, and ``!`` if one of them named me."""
        return f"{self.unread or ''}{'!' if self.mentions else ''}"


@dataclass(frozen=True, slots=True)
class State:
    """What the window shows besides the lines: every view, the current one, its topic and members."""

    me: str | None
    tabs: tuple[Tab, ...]
    current: str | None
    topic: str = ""
    members: tuple[tuple[str, bool], ...] = ()  # (name, away)
    away: str = ""  # why I am away ("": here)


#: A nick's colour (``display.colour_of`` is the index) in the light and in the dark mode: the same hue, each at
#: least 4.5:1 against its mode's conversation background.
NICK_COLOURS = (
    ("#c0392b", "#ff8a80"),  # red
    ("#b35900", "#ffab61"),  # orange
    ("#8a6d00", "#e6c34a"),  # amber
    ("#5e7d00", "#b5d45a"),  # olive
    ("#1e7d32", "#7bd88f"),  # green
    ("#00796b", "#4fd1c0"),  # teal
    ("#00738a", "#5cc8e8"),  # cyan
    ("#1565c0", "#82b1ff"),  # blue
    ("#4a4fc4", "#a5a8ff"),  # indigo
    ("#7b3fb5", "#c99bff"),  # purple
    ("#a3278f", "#f28be0"),  # magenta
    ("#c2185b", "#ff8fb5"),  # pink
)

#: The look of each mode: the conversation's colours, and the nicks'.
THEMES: dict[str, dict[str, Any]] = {
    "light": {
        "text_bg": "#ffffff",
        "text_fg": "#1c1c1c",
        "muted": "#6b6b6b",
        "accent": "#005fb8",
        "mine_bg": "#f2f7fc",
        "mention_bg": "#fff4ce",
        "mention_bar": "#c29100",
        "error": "#c42b1c",
        "select_bg": "#dbe8f7",
        "attention": "#9a6700",
        "online": "#0f7b0f",
        "nicks": [light for light, _dark in NICK_COLOURS],
    },
    "dark": {
        "text_bg": "#242424",
        "text_fg": "#f0f0f0",
        "muted": "#9d9d9d",
        "accent": "#57c8ff",
        "mine_bg": "#1f2c36",
        "mention_bg": "#4a3b12",
        "mention_bar": "#fce100",
        "error": "#ff99a4",
        "select_bg": "#2d3f55",
        "attention": "#fce100",
        "online": "#6ccb5f",
        "nicks": [dark for _light, dark in NICK_COLOURS],
    },
}

#: Kinds of line (``display.Line.kind``) and the tag their text is drawn with, besides what people said.
NOTICE_TAGS = {"error": "error", "system": "system"}


def desktop_theme(timeout: float = 1.0) -> str:
    """``light`` or ``dark``, as the desktop is set (light if it cannot tell within ``timeout`` seconds)."""
    found: list[str] = []

    def ask() -> None:
        try:
            import darkdetect

            found.append((darkdetect.theme() or "light").lower())
        except Exception:  # no darkdetect, or a desktop it cannot ask: light, as Tk itself
            pass

    asker = threading.Thread(target=ask, name="chat-theme", daemon=True)
    asker.start()
    asker.join(timeout)
    return found[0] if found and found[0] in THEMES else "light"


def rtl_share(text: str) -> float:
    """The share of ``text``'s strong characters (letters) that are written right to left."""
    rtl = ltr = 0
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("R", "AL"):
            rtl += 1
        elif kind == "L":
            ltr += 1
    return rtl / (rtl + ltr) if rtl + ltr else 0.0


def has_rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(char) in ("R", "AL") for char in text)


def is_rtl(line: Line) -> bool:
    """Is most of what the line says (its body) written right to left?  Such a line is set right."""
    return rtl_share(line.body) > 0.5


Piece = tuple[str, tuple[str, ...]]


def pieces(line: Line, room: str | None, timestamps: bool = True) -> list[Piece]:
    """A line as (text, tags) pieces in typed order: its time, where it happened (if not in ``room``, the
    view's room), who said it in their colour (``nickN``, or ``mine``), then what they said."""
    out: list[Piece] = []
    if timestamps:
        out.append((clock(line.ts) + " ", ("time",)))
    where = label(line, room)
    if where:
        out.append((where, ("where",)))
    if line.kind in ("msg", "action", "dm"):
        who = line.nick or ""
        prefix, action = line.prefix, line.kind == "action"
        if line.kind == "dm":  # shown in its own conversation: said as in a room
            action = prefix.startswith("[dm] * ")
            prefix = f"* {who} " if action else f"{who}: "
        colour = "mine" if line.mine else f"nick{colour_of(who)}"
        out.append((prefix, ("nick", colour)))
        out.append((line.body, ("action",) if action else ("body",)))
    else:
        out.append((line.text, (NOTICE_TAGS.get(line.kind, "notice"),)))
    return out


def visual(parts: Sequence[Piece], rtl: bool) -> list[Piece]:
    """``parts`` in display order, for a widget that draws left to right: each piece's right-to-left runs
    reversed (python-bidi), and for a right-to-left line the pieces themselves in reverse, so its time and
    name come first from the right.  A piece is laid out on its own, as if isolated."""
    if not any(has_rtl(text) for text, _tags in parts) and not rtl:
        return list(parts)
    from bidi import get_display

    if rtl:
        return [(get_display(text, base_dir="R"), tags) for text, tags in reversed(parts) if text]
    return [(get_display(text, base_dir="L") if has_rtl(text) else text, tags) for text, tags in parts]


def rows(parts: Sequence[Piece], width: float, measure: Callable[[str, tuple[str, ...]], float]) -> list[list[Piece]]:
    """``parts`` broken into rows at most ``width`` wide (``measure``: a text's width in its tags' font), at
    spaces, or inside a word longer than a row: how a right-to-left line is laid out before it is reordered,
    so that its first row holds its beginning (as Tk would break the reordered text, it would hold its end)."""
    out: list[list[Piece]] = [[]]
    used = 0.0
    for text, tags in parts:
        for word in re.findall(r"\S+\s*|\s+", text):
            if used and used + measure(word.rstrip(), tags) > width:
                out.append([])
                used = 0.0
            while len(word) > 1 and measure(word.rstrip(), tags) > width:  # wider than a row: what fits, per row
                cut = _fits(word, width, tags, measure)
                out[-1].append((word[:cut], tags))
                out.append([])
                word = word[cut:]
            out[-1].append((word, tags))
            used += measure(word, tags)
    return [row for row in out if row] or [[]]


def _fits(word: str, width: float, tags: tuple[str, ...], measure: Callable[[str, tuple[str, ...]], float]) -> int:
    """How many characters of ``word`` (at least one) fit in ``width``."""
    low, high = 1, len(word) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if measure(word[:middle], tags) <= width:
            low = middle
        else:
            high = middle - 1
    return low


def rooms_summary(tabs: Iterable[Tab]) -> str:
    """The room list as the echo hook says it: ``#general(0) #dev(3!)``."""
    return " ".join(f"{tab.title}({tab.unread}{'!' if tab.mentions else ''})" for tab in tabs)


def contrast(colour: str, background: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""

    def luminance(hex_colour: str) -> float:
        channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(colour), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# --- The network thread ----------------------------------------------------------------------


class GuiConsole(Console):
    """The console's command handling, lines and views, shown in the window instead of printed.

    Lives in the network thread; everything it wants shown goes through ``post`` (a
    ``queue.Queue.put``): ``("line", view, line, past)`` for a line of the view on show,
    ``("view", name, lines, history_end)`` when another view is shown (or this one was
    cleared), ``("state", State)`` when the room list, topic or members changed,
    ``("bell", view)`` for a mention, ``("status", change)``.  Unlike the console, it shows
    the user's own messages (a terminal still has what was typed, a cleared input line does
    not), as they come back from the broker, and a private message sent shows its conversation
    (once delivered: a refusal is said where it was typed).
    """

    def __init__(self, client: Any, post: Post) -> None:
        super().__init__(client)
        self.post = post
        self._shown: str | None = None  # the view whose lines the window has
        self._state: State | None = None
        self._follow: str | None = None  # /msg NAME typed: show that conversation once the broker delivered it

    def show(self, text: str) -> None:
        if text.startswith(("[system] now in ", "[system] now talking in ")):
            return  # a view switched to: the window shows that itself
        super().show(text)

    def show_line(self, line: Line, past: bool = False) -> None:
        view = self.views.add(line, past)
        if view is None:
            return
        if view.name == self._shown:
            self.post(("line", view.name, line, past))
        if line.mention and not past:
            self.post(("bell", view.name))
        sent_to = line.peer if line.kind == "dm" and line.mine else None  # as the broker knows them
        if sent_to is not None and sent_to.casefold() == self._follow:
            self._follow = None
            self.current = view.name

    def on_event(self, event: Event) -> None:
        me = self.me()
        if isinstance(event, m.MsgEvent) and event.user.casefold() == (me or "").casefold():
            self.show_line(line_of(event, me) or Line("msg", event.text))
        else:
            super().on_event(event)
        if isinstance(event, Status):
            self.post(("status", event.state.value))
        refused = event.request if isinstance(event, Failed) and not event.retrying else None
        if refused is not None and (refused.to or "").casefold() == self._follow:
            self._follow = None  # nothing to follow
        self.publish()

    def on_line(self, line: str) -> bool:
        going_on = super().on_line(line)
        self.publish()
        return going_on

    def on_command(self, command: commands.Command) -> bool:
        going_on = super().on_command(command)
        if command.name == "msg":
            self._follow = command.arg.casefold()  # what was sent shows in its conversation, once delivered
        elif command.name == "clear":
            self._shown = None  # the window draws the view again, empty
        return going_on

    def write_terminal(self, text: str) -> None:
        """What the console writes only to a terminal (the rule after history, a clear screen): not to the one
        the window may have been started from.  The window draws its own rule (``View.history_end``)."""

    def handle(self, kind: str, arg: str) -> bool:
        """A request from the window: ``line`` (typed) or ``view`` (a view picked).  False: leave."""
        if kind == "view":
            self.pick(arg)
            return True
        return self.on_line(arg)

    def closing(self) -> None:
        """The goodbye starts: nothing to show until it ends (``Closed``)."""

    def pick(self, name: str) -> None:
        """The user clicked a view in the room list: show it, and make it where typed text goes."""
        if name in self.views.views:
            self.current = name
        self.publish()

    def publish(self) -> None:
        """Tell the window what changed: the view to show (all its lines), then the room list and the rest."""
        view = self.views.view
        name = None if view is None else view.name
        if name != self._shown:
            self._shown = name
            lines = () if view is None else tuple(view.lines)
            self.post(("view", name, lines, 0 if view is None else min(view.history_end, len(lines))))
        tabs = tuple(Tab(v.name, v.unread, v.mentions, v.activity) for v in self.views.views.values())
        if view is None:
            topic, members = "", ()
        elif view.room is None:  # a private conversation: its two parties
            peer = view.name[len(QUERY_PREFIX) :]
            topic, members = "", tuple((who, False) for who in dict.fromkeys([self.me() or "", peer]) if who)
        else:
            topic = view.topic
            members = tuple((who, who in view.away) for who in view.sorted_members())
        state = State(self.me(), tabs, name, topic, members, getattr(self, "away", ""))
        if state != self._state:
            self._state = state
            self.post(("state", state))


# --- The window (Tk main thread only) ----------------------------------------------------------

#: Fonts the window prefers, the first one installed wins (else Tk's default).
FONT_FAMILIES = ("Inter", "Cantarell", "Noto Sans", "Ubuntu", "Segoe UI", "SF Pro Text", "Helvetica Neue")


class ChatWindow:
    """The window: a name prompt, then rooms | topic, conversation and input line | members, and a status line."""

    def __init__(self, root: Any, args: argparse.Namespace, echo: bool = False) -> None:
        import tkinter as tk
        from tkinter import ttk

        self.root = root
        self.args = args
        self.echo = echo
        self.timestamps = not getattr(args, "no_timestamps", False)
        self.ctx = zmq.Context.instance()
        self.events: queue.Queue[Any] = queue.Queue()  # from the network thread: tuples, and Connected and the like
        self.network: ChatThread | None = None
        self.pipe: zmq.Socket | None = None  # the sending end of the PAIR to the network thread
        self._addresses = (f"inproc://gui-input-{os.getpid()}-{n}" for n in itertools.count())
        self.user: str | None = None
        self.state = State(None, (), None)
        self.shown: str | None = None  # the view whose lines are in the conversation
        self.lines: list[tuple[Line, bool]] = []  # those lines (and whether each came from history)
        self.history_end = 0  # lines[:history_end] came from history on joining: the separator goes after
        self.was_connected = False
        self.session_live = False  # between Connected and Closed or Refused: a bye is owed
        self.closing = False
        self.quit_requested = False  # set by a signal handler; acted on in the Tk loop
        self.destroyed = False
        self.history: list[str] = []
        self.history_pos = 0
        self._status = ""
        self._said = {"away": "[away] "}  # what the echo hook last said of rooms, members, topic, away
        self._theme_asked = 0.0
        self._relayout: str | None = None  # a pending redraw after a resize (an ``after`` id)
        self._width = 0
        self._widths: dict[tuple[str, str], int] = {}  # (font, text) -> pixels, for right-to-left lines
        self.theme = "light"
        self._alarm: bool | None = None  # the status dot: False green (connected), None amber, True red

        root.title("chat")
        root.geometry("980x600")
        root.minsize(640, 360)
        root.protocol("WM_DELETE_WINDOW", self.close)
        self.style = ttk.Style(root)
        self.fonts = self._make_fonts()

        # The name prompt: a card in the middle of the window.
        self.prompt = ttk.Frame(root, padding=40)
        card = ttk.Frame(self.prompt, style="Card.TFrame", padding=(32, 28))
        card.place(relx=0.5, rely=0.42, anchor="center")
        ttk.Label(card, text="Join the chat", font=self.fonts["title"]).grid(row=0, column=0, sticky="w")
        ttk.Label(card, text="Enter a username:", style="Muted.TLabel").grid(row=1, column=0, sticky="w", pady=(6, 2))
        self.name_entry = ttk.Entry(card, width=30, font=self.fonts["chat"])
        self.name_entry.grid(row=2, column=0, sticky="we", pady=6)
        self.name_entry.bind("<Return>", lambda _e: self.submit_name())
        ttk.Button(card, text="Join", style="Accent.TButton", command=self.submit_name).grid(
            row=3, column=0, sticky="e", pady=(6, 0)
        )
        self.prompt_error = ttk.Label(card, text="", style="Error.TLabel", wraplength=360)
        self.prompt_error.grid(row=4, column=0, sticky="w", pady=(8, 0))

        # The chat: rooms | the conversation | members.
        self.chat = ttk.Frame(root, padding=(10, 10, 10, 4))
        self.chat.columnconfigure(1, weight=1)
        self.chat.rowconfigure(0, weight=1)

        side = ttk.Frame(self.chat)
        side.grid(row=0, column=0, sticky="ns", padx=(0, 10))
        side.rowconfigure(1, weight=1)
        ttk.Label(side, text="ROOMS", style="Caption.TLabel").grid(row=0, column=0, sticky="w", padx=4, pady=(2, 6))
        self.room_list = ttk.Treeview(side, columns=("badge",), show="tree", selectmode="browse", style="Side.Treeview")
        self.room_list.column("#0", width=130, stretch=True)
        self.room_list.column("badge", width=36, anchor="e", stretch=False)
        self.room_list.grid(row=1, column=0, sticky="ns")
        self.room_list.bind("<<TreeviewSelect>>", lambda _e: self.pick_room())

        main = ttk.Frame(self.chat)
        main.grid(row=0, column=1, sticky="nsew")
        main.columnconfigure(0, weight=1)
        main.rowconfigure(1, weight=1)
        header = ttk.Frame(main, padding=(4, 0, 4, 8))
        header.grid(row=0, column=0, sticky="we")
        header.columnconfigure(1, weight=1)
        self.where = ttk.Label(header, text="", font=self.fonts["heading"])
        self.where.grid(row=0, column=0, sticky="w")
        self.topic = ttk.Label(header, text="", style="Muted.TLabel", anchor="w")
        self.topic.grid(row=0, column=1, sticky="we", padx=(12, 0))
        conversation = ttk.Frame(main, style="Card.TFrame", padding=2)
        conversation.grid(row=1, column=0, sticky="nsew")
        conversation.columnconfigure(0, weight=1)
        conversation.rowconfigure(0, weight=1)
        self.text = tk.Text(
            conversation,
            wrap="word",
            state="disabled",
            font=self.fonts["chat"],
            relief="flat",
            borderwidth=0,
            highlightthickness=0,
            padx=14,
            pady=10,
            cursor="arrow",
            takefocus=0,
            spacing1=3,
            spacing3=3,
        )
        self.text.grid(row=0, column=0, sticky="nsew", padx=(2, 0), pady=2)
        scroll = ttk.Scrollbar(conversation, orient="vertical", command=self.text.yview)
        scroll.grid(row=0, column=1, sticky="ns", padx=(0, 2), pady=4)
        self.text.configure(yscrollcommand=scroll.set)
        self.text.bind("<Configure>", self._resized)
        line = ttk.Frame(main, padding=(0, 10, 0, 0))
        line.grid(row=2, column=0, sticky="we")
        line.columnconfigure(1, weight=1)
        self.room_prompt = ttk.Label(line, text="#general ›", style="Muted.TLabel")
        self.room_prompt.grid(row=0, column=0, padx=(2, 8))
        self.entry = ttk.Entry(line, font=self.fonts["chat"])
        self.entry.grid(row=0, column=1, sticky="we")
        self.entry.bind("<Return>", lambda _e: self.submit_line())
        self.entry.bind("<KP_Enter>", lambda _e: self.submit_line())
        self.entry.bind("<Up>", lambda _e: self.recall(-1))
        self.entry.bind("<Down>", lambda _e: self.recall(1))
        self.entry.bind("<Tab>", lambda _e: self.complete())
        for n in range(1, 10):
            root.bind(f"<Alt-Key-{n}>", lambda _e, n=n: self.send_line(f"/window {n}"))
        ttk.Button(line, text="Send", style="Accent.TButton", command=self.submit_line).grid(
            row=0, column=2, padx=(8, 0)
        )

        members = ttk.Frame(self.chat)
        members.grid(row=0, column=2, sticky="ns", padx=(10, 0))
        members.rowconfigure(1, weight=1)
        self.members_label = ttk.Label(members, text="MEMBERS", style="Caption.TLabel")
        self.members_label.grid(row=0, column=0, sticky="w", padx=4, pady=(2, 6))
        self.member_list = ttk.Treeview(members, show="tree", selectmode="browse", style="Side.Treeview")
        self.member_list.column("#0", width=150)
        self.member_list.grid(row=1, column=0, sticky="ns")
        self.member_list.bind("<Double-Button-1>", lambda _e: self.query_member())

        bar = ttk.Frame(root, padding=(14, 2, 14, 6))
        bar.pack(side="bottom", fill="x")
        self.status_dot = ttk.Label(bar, text="●", style="Caption.TLabel")
        self.status_dot.pack(side="left")
        self.away = ttk.Label(bar, text="", style="Status.TLabel", anchor="e")
        self.away.pack(side="right")
        self.status = ttk.Label(bar, text="", style="Status.TLabel", anchor="w")
        self.status.pack(side="left", fill="x", expand=True, padx=(6, 0))

        theme = args.theme if getattr(args, "theme", "auto") in THEMES else desktop_theme()
        self.apply_theme(theme)
        self._theme_asked = time.monotonic()
        root.bind("<FocusIn>", self._focused, add="+")

        if args.name:
            self.start(args.name)
        else:
            self.show_prompt("")
        root.after(POLL_MS, self.poll)

    # --- the look --------------------------------------------------------------------------

    def _make_fonts(self) -> dict[str, Any]:
        from tkinter import font as tkfont

        installed = set(tkfont.families(self.root))
        family = next((f for f in FONT_FAMILIES if f in installed), tkfont.nametofont("TkDefaultFont").actual("family"))
        fonts = {
            "ui": (-15, "normal", "roman"),
            "chat": (-16, "normal", "roman"),
            "bold": (-16, "bold", "roman"),
            "italic": (-16, "normal", "italic"),
            "notice": (-14, "normal", "italic"),
            "time": (-13, "normal", "roman"),
            "caption": (-12, "bold", "roman"),
            "small": (-13, "normal", "roman"),
            "heading": (-20, "bold", "roman"),
            "title": (-26, "bold", "roman"),
            "side": (-15, "normal", "roman"),
            "side_bold": (-15, "bold", "roman"),
            "side_italic": (-15, "normal", "italic"),
        }
        return {
            name: tkfont.Font(self.root, family=family, size=size, weight=weight, slant=slant)
            for name, (size, weight, slant) in fonts.items()
        }

    def apply_theme(self, name: str) -> None:
        """Sun Valley in ``name`` mode (light or dark), and the conversation's colours to match."""
        from tkinter import font as tkfont

        import sv_ttk

        self.theme = name
        colours = THEMES[name]
        sv_ttk.set_theme(name, self.root)
        self.root.update_idletasks()  # <<ThemeChanged>>: Sun Valley's tk_setPalette paints every widget
        self._unpaint(self.root)
        family = self.fonts["ui"].actual("family")
        for font_name, size in (("SunValleyBodyFont", -15), ("SunValleyCaptionFont", -13)):
            tkfont.nametofont(font_name, self.root).configure(family=family, size=size)
        tkfont.nametofont("SunValleyBodyStrongFont", self.root).configure(family=family, size=-15, weight="bold")
        for font_name in ("TkDefaultFont", "TkTextFont", "TkMenuFont"):
            tkfont.nametofont(font_name, self.root).configure(family=family, size=-15)
        style = self.style
        style.configure("Muted.TLabel", foreground=colours["muted"])
        style.configure("Caption.TLabel", foreground=colours["muted"], font=self.fonts["caption"])
        style.configure("Status.TLabel", foreground=colours["muted"], font=self.fonts["small"])
        style.configure("Error.TLabel", foreground=colours["error"])
        style.configure("Side.Treeview", rowheight=self.fonts["side"].metrics("linespace") + 14)
        style.configure("Side.Treeview", font=self.fonts["side"], indent=0)
        style.map(
            "Side.Treeview",
            background=[("selected", colours["select_bg"])],
            foreground=[("selected", colours["text_fg"])],
        )
        item = [("Treeitem.image", {"side": "left", "sticky": ""}), ("Treeitem.text", {"side": "left", "sticky": ""})]
        style.layout("Side.Treeview.Item", [("Treeitem.padding", {"sticky": "nswe", "children": item})])  # no expander
        style.configure("Side.Treeview.Item", padding=(10, 0, 0, 0))
        for tree in (self.room_list, self.member_list):
            tree.tag_configure("unread", font=self.fonts["side_bold"])
            tree.tag_configure("mention", font=self.fonts["side_bold"], foreground=colours["attention"])
            tree.tag_configure("quiet", foreground="")
            tree.tag_configure("away", foreground=colours["muted"], font=self.fonts["side_italic"])
            tree.tag_configure("me", font=self.fonts["side_bold"])
        for index, colour in enumerate(colours["nicks"]):
            self.member_list.tag_configure(f"nick{index}", foreground=colour)
        self.member_list.tag_configure("mine", foreground=colours["accent"])
        self._paint_dot()

        text = self.text
        text.configure(
            background=colours["text_bg"],
            foreground=colours["text_fg"],
            selectbackground=colours["select_bg"],
            selectforeground=colours["text_fg"],
            inactiveselectbackground=colours["select_bg"],
            insertbackground=colours["text_fg"],
        )
        indent = 12
        hanging = indent + (self.fonts["time"].measure("00:00 ") if self.timestamps else 0)
        text.tag_configure("line", lmargin1=indent, lmargin2=hanging, rmargin=8)
        text.tag_configure("time", foreground=colours["muted"], font=self.fonts["time"])
        text.tag_configure("where", foreground=colours["muted"])
        text.tag_configure("nick", font=self.fonts["bold"])
        for index, colour in enumerate(colours["nicks"]):
            text.tag_configure(f"nick{index}", foreground=colour)
        text.tag_configure("mine", foreground=colours["accent"])
        text.tag_configure("body")
        text.tag_configure("action", font=self.fonts["italic"])
        text.tag_configure("notice", foreground=colours["muted"], font=self.fonts["notice"])
        text.tag_configure("system", foreground=colours["muted"], font=self.fonts["notice"])
        text.tag_configure("error", foreground=colours["error"])
        text.tag_configure("own", background=colours["mine_bg"])
        text.tag_configure(
            "mention", background=colours["mention_bg"], lmargincolor=colours["mention_bar"], selectbackground=""
        )
        text.tag_configure(
            "separator", foreground=colours["muted"], font=self.fonts["time"], justify="center", spacing1=8, spacing3=8
        )
        text.tag_configure("rtl", justify="right", lmargin2=indent)
        text.tag_raise("mention")
        text.tag_raise("rtl")
        text.tag_raise("sel")

    def _unpaint(self, widget: Any) -> None:
        """Give ttk labels their colours back from their styles: ``tk_setPalette`` set theirs on each one,
        which outranks any style (a muted or an error label would be drawn in the body's colour)."""
        for child in widget.winfo_children():
            if child.winfo_class() == "TLabel":
                child.configure(foreground="", background="")
            self._unpaint(child)

    def _paint_dot(self) -> None:
        colours = THEMES[self.theme]
        alarm = self._alarm
        self.status_dot.configure(
            foreground=colours["online"] if alarm is False else colours["error"] if alarm else colours["attention"]
        )

    def _focused(self, _event: Any) -> None:
        """Back in the window: ask the desktop (at most every few seconds) whether it went light or dark."""
        if getattr(self.args, "theme", "auto") in THEMES or self.destroyed:
            return
        now = time.monotonic()
        if now - self._theme_asked < THEME_CHECK_EVERY:
            return
        self._theme_asked = now
        threading.Thread(target=lambda: self.events.put(("theme", desktop_theme())), daemon=True).start()

    # --- connecting ----------------------------------------------------------------------

    def show_prompt(self, error: str) -> None:
        self.chat.pack_forget()
        self.prompt.pack(fill="both", expand=True)
        self.prompt_error.configure(text=error)
        self.name_entry.select_range(0, "end")  # typing replaces a refused name
        self.name_entry.icursor("end")
        self.name_entry.focus_set()
        self.set_status(error or "not connected", alarm=bool(error))
        self.say_for_test(f"[prompt] Enter a username:{' ' + error if error else ''}")

    def submit_name(self) -> None:
        name = self.name_entry.get().strip()
        if name and self.network is None:
            self.start(name)

    def start(self, name: str) -> None:
        """Connect in the network thread; the window stays live meanwhile."""
        address = next(self._addresses)
        inbox = self.ctx.socket(zmq.PAIR)
        inbox.bind(address)
        self.pipe = self.ctx.socket(zmq.PAIR)
        self.pipe.connect(address)
        post = self.events.put
        self.network = ChatThread(name, self.args, inbox, post, self.ctx, lambda client: GuiConsole(client, post))
        self.prompt_error.configure(text="")
        routers, _pubs = cli.brokers(self.args.host, self.args.router, self.args.pub)
        self.set_status(f"connecting to {', '.join(routers)} as {name}…", alarm=None)
        self.network.start()

    # --- events from the network thread ----------------------------------------------------

    def poll(self) -> None:
        """Drain the queue the network thread fills; the only way its news reaches the widgets."""
        if self.quit_requested and not self.closing:
            self.close()
        try:
            while not self.destroyed:
                self.handle(self.events.get_nowait())
        except queue.Empty:
            pass
        if not self.destroyed:
            self.root.after(POLL_MS, self.poll)

    def handle(self, item: Any) -> None:
        if isinstance(item, Connected | Refused | Closed):
            self.handle_session(item)
            return
        kind = item[0]
        if kind == "line":
            if item[1] == self.shown:
                self.add_line(item[2], item[3])
        elif kind == "view":
            self.show_view(item[1], item[2], item[3])
        elif kind == "state":
            self.set_state(item[1])
        elif kind == "bell":
            self.root.bell()
            self.say_for_test(f"[bell] {Tab(item[1]).title}")
        elif kind == "status":
            self.set_status(STATUS_TEXT.get(item[1], str(item[1])), alarm=item[1] in ("lost", "shutdown", "moved"))
        elif kind == "theme" and item[1] != self.theme:
            self.apply_theme(item[1])
            self.redraw()
            self.set_state(self.state, force=True)

    def handle_session(self, item: Connected | Refused | Closed) -> None:
        """The network thread's session began, was refused, or ended."""
        if isinstance(item, Connected):
            self.user, router = item.user, item.endpoint
            self.was_connected = self.session_live = True
            self.prompt.pack_forget()
            self.chat.pack(fill="both", expand=True)
            self.root.title(f"chat — {self.user}")
            self.set_status(f"connected to {router} as {self.user}")
            self.entry.focus_set()
            return
        self._drop_network()
        if isinstance(item, Closed) and item.error is None:
            if item.undelivered:
                self.add_line(Line("error", undelivered_line(item.undelivered), ts=time.time()))
            self.add_line(Line("system", "[system] bye", ts=time.time()))
            self.destroy()
        elif self.closing:
            self.destroy()
        else:  # refused (a taken name, no broker), or the network thread crashed: ask again
            self.show_prompt(f"{item.detail} ({item.code})" if isinstance(item, Refused) else f"{item.error} (crash)")

    def _drop_network(self) -> None:
        self.session_live = False
        if self.network is not None:
            self.network.join(timeout=1.0)
        self.network = None
        if self.pipe is not None:
            self.pipe.close(linger=0)
            self.pipe = None

    # --- the conversation ------------------------------------------------------------------

    def at_bottom(self) -> bool:
        return self.text.yview()[1] >= 0.999

    def show_view(self, name: str | None, lines: Sequence[Line], history_end: int) -> None:
        """Another view on show (or this one cleared): draw its lines and scroll to the newest."""
        self.shown = name
        self.lines = [(line, index < history_end) for index, line in enumerate(lines)]
        self.history_end = history_end
        self.redraw(bottom=True)
        if self.echo:
            title = Tab(name).title if name else "none"
            self.say_for_test(f"[view] {title}")
            for line, _past in self.lines:
                self.say_for_test(self._echo_text(line), idle=False)
            top, bottom = self.text.yview()
            self.say_for_test(f"[scroll] {title} {top:.3f} {bottom:.3f}", idle=False)

    def redraw(self, bottom: bool = False) -> None:
        """Draw every line of the view on show again (a new view, a new width for right-to-left lines, a
        new theme), scrolled to the newest if it was there (or ``bottom``)."""
        bottom = bottom or self.at_bottom()
        top = self.text.yview()[0]
        self.text.configure(state="normal")
        self.text.delete("1.0", "end")
        for index, (line, _past) in enumerate(self.lines):
            self._draw(line)
            if index + 1 == self.history_end:
                self._draw_separator()
        self.text.configure(state="disabled")
        if bottom:
            self.text.see("end")
        else:
            self.text.yview_moveto(top)

    def add_line(self, line: Line, past: bool = False) -> None:
        """A new line of the view on show; follow it down if the newest line was in sight."""
        bottom = self.at_bottom()
        self.lines.append((line, past))
        self.text.configure(state="normal")
        if past:  # the separator moves below the history
            self._drop_separator()
            self.history_end = len(self.lines)
        self._draw(line)
        if past:
            self._draw_separator()
        self.text.configure(state="disabled")
        if len(self.lines) > MAX_LINES + MAX_LINES // 10:  # older lines scroll away for good
            dropped = len(self.lines) - MAX_LINES
            del self.lines[:dropped]
            self.history_end = max(0, self.history_end - dropped)
            self.redraw()
        if bottom:
            self.text.see("end")
        self.say_for_test(self._echo_text(line))

    def _draw(self, line: Line) -> None:
        parts = pieces(line, self._room(), self.timestamps)
        tags = ["line"]
        if line.mine and line.kind in ("msg", "action", "dm"):
            tags.append("own")
        if line.mention and (line.kind != "dm" or mentions(line.body, self.user)):  # every dm is news, not each
            tags.append("mention")  # a highlight
        rtl = is_rtl(line)
        if rtl:
            tags.append("rtl")
            width = self.text.winfo_width() - 2 * int(self.text.cget("padx")) - 24  # margins, and a little spare
            if width < 50:
                width = 600  # not drawn yet: a guess; its first <Configure> lays it out again
            laid = [visual(row, rtl=True) for row in rows(parts, width, self._measure)]
        else:
            laid = [visual(parts, rtl=False)]
        extra = tuple(tags)
        args: list[Any] = []
        for number, row in enumerate(laid):
            if number:
                args += ["\n", extra]
            for text, piece_tags in row:
                args += [text, piece_tags + extra]
        args += ["\n", extra]
        self.text.insert("end", *args)

    def _measure(self, text: str, tags: tuple[str, ...]) -> float:
        """How wide ``text`` is in the font of ``tags`` (remembered: a view is laid out again on each resize)."""
        if "time" in tags:
            font = "time"
        elif "nick" in tags:
            font = "bold"
        elif "action" in tags:
            font = "italic"
        elif "notice" in tags or "system" in tags:
            font = "notice"
        else:
            font = "chat"
        width = self._widths.get((font, text))
        if width is None:
            if len(self._widths) > 50_000:
                self._widths.clear()
            width = self._widths[font, text] = self.fonts[font].measure(text)
        return width

    def _draw_separator(self) -> None:
        self.text.insert("end", SEPARATOR + "\n", ("separator",))

    def _drop_separator(self) -> None:
        ranges = self.text.tag_ranges("separator")
        for start, end in reversed(list(zip(ranges[::2], ranges[1::2], strict=True))):
            self.text.delete(start, end)

    def _room(self) -> str | None:
        """The room whose view is on show (None for a private conversation)."""
        return None if not self.shown or self.shown.startswith(QUERY_PREFIX) else self.shown

    def _echo_text(self, line: Line) -> str:
        return "".join(text for text, _tags in pieces(line, self._room(), timestamps=False))

    def _resized(self, event: Any) -> None:
        """A new width: lay the right-to-left lines out again (Tk breaks the others itself), once it settled."""
        if event.width == self._width:
            return
        self._width = event.width
        if not any(is_rtl(line) for line, _past in self.lines):
            return
        if self._relayout is not None:
            self.root.after_cancel(self._relayout)
        self._relayout = self.root.after(120, self._do_relayout)

    def _do_relayout(self) -> None:
        self._relayout = None
        if not self.destroyed:
            self.redraw()

    # --- the room list, the members, the topic -----------------------------------------------

    def set_state(self, state: State, force: bool = False) -> None:
        old, self.state = self.state, state
        if state.me:
            self.user = state.me
        if force or old.tabs != state.tabs or old.current != state.current:
            self._fill_rooms(state)
        if force or old.members != state.members or old.current != state.current or old.me != state.me:
            self._fill_members(state)
        current = Tab(state.current).title if state.current else "no room"
        self.where.configure(text=current)
        if state.current and state.current.startswith(QUERY_PREFIX):
            self.topic.configure(text="private conversation")
        else:
            self.topic.configure(text=state.topic or ("no topic: /topic TEXT sets one" if state.current else ""))
        self.room_prompt.configure(text=f"{current} ›")
        self.away.configure(text=f"away: {state.away}" if state.away else "")
        self.root.title(f"chat — {self.user} in {current}")
        self._say_once("rooms", f"[rooms] {rooms_summary(state.tabs)}")
        names = ", ".join(f"{who} (away)" if away else who for who, away in state.members)
        self._say_once("members", f"[members] {current}: {names}")
        if state.current and not state.current.startswith(QUERY_PREFIX):
            self._say_once("topic", f"[topic] {current}: {state.topic}")
        self._say_once("away", f"[away] {state.away}")

    def _fill_rooms(self, state: State) -> None:
        tree = self.room_list
        tree.delete(*tree.get_children())
        for tab in state.tabs:
            tags = ("mention",) if tab.mentions else ("unread",) if tab.unread else ("quiet",)
            tree.insert("", "end", iid=tab.name, text=tab.title, values=(tab.badge,), tags=tags)
        if state.current in tree.get_children():
            tree.selection_set(state.current)
            tree.see(state.current)

    def _fill_members(self, state: State) -> None:
        tree = self.member_list
        tree.delete(*tree.get_children())
        for index, (who, away) in enumerate(state.members):
            if away:
                tags: tuple[str, ...] = ("away",)
            elif who == state.me:
                tags = ("me", "mine")
            else:
                tags = (f"nick{colour_of(who)}",)
            tree.insert("", "end", iid=f"m{index}", text=f"{who}  (away)" if away else who, tags=tags)
        self.members_label.configure(text=f"MEMBERS · {len(state.members)}" if state.members else "MEMBERS")

    def _say_once(self, key: str, text: str) -> None:
        if self._said.get(key) != text:
            self._said[key] = text
            self.say_for_test(text)

    def set_status(self, text: str, alarm: bool | None = False) -> None:
        """The status line; its dot is green (connected), amber (connecting: ``alarm=None``) or red."""
        self._alarm = alarm
        self.status.configure(text=text)
        self._paint_dot()
        if text != self._status:
            self._status = text
            self.say_for_test(f"[status] {text}")

    def say_for_test(self, line: str, idle: bool = True) -> None:
        """The CHAT_GUI_ECHO hook: print what was just put on screen, once it is drawn."""
        if self.echo:
            if idle:
                self.root.update_idletasks()
            print(line, flush=True)

    # --- user input ----------------------------------------------------------------------

    def to_network(self, kind: str, text: str) -> None:
        """A typed line (``line``) or the view picked (``view``), to the network thread."""
        if self.pipe is not None:
            try:
                self.pipe.send_multipart([kind.encode(), text.encode("utf-8", "surrogatepass")], zmq.NOBLOCK)
            except zmq.Again:
                self.add_line(Line("error", "[error] the chat is not keeping up; line dropped", ts=time.time()))

    def send_line(self, line: str) -> None:
        self.to_network("line", line)

    def submit_line(self) -> None:
        text = self.entry.get()
        self.entry.delete(0, "end")
        if not text.strip() or self.network is None:
            return
        self.history.append(text)
        self.history_pos = len(self.history)
        for line in text.splitlines():  # a paste of several lines: one message each
            self.send_line(line)
        if text.strip().lower() in ("/quit", "/exit"):
            self.closing = True
            self.root.after(int(CLOSE_GRACE * 1000), self.destroy)

    def recall(self, step: int) -> str:
        """Up/Down walk through what was typed, like the console's history."""
        if not self.history:
            return "break"
        self.history_pos = max(0, min(len(self.history), self.history_pos + step))
        self.entry.delete(0, "end")
        if self.history_pos < len(self.history):
            self.entry.insert(0, self.history[self.history_pos])
        return "break"

    def complete(self) -> str:
        """Tab: complete the command, room or name being typed (the longest common start of the candidates)."""
        cursor = self.entry.index("insert")
        before = self.entry.get()[:cursor]
        names = [who for who, _away in self.state.members]
        rooms = [tab.name for tab in self.state.tabs if not tab.name.startswith(QUERY_PREFIX)]
        start, candidates = commands.complete(before, names, rooms, self.user)
        if candidates:
            common = os.path.commonprefix(candidates)  # noqa: RUF071 (strings, not paths) if len(candidates) > 1 else candidates[0]
            if len(common) >= cursor - start:
                self.entry.delete(start, cursor)
                self.entry.insert(start, common)
        return "break"

    def pick_room(self) -> None:
        """Clicking a room (or conversation) shows it and makes it current."""
        chosen = self.room_list.selection()
        if chosen and chosen[0] != self.state.current:
            self.to_network("view", chosen[0])
        self.entry.focus_set()

    def query_member(self) -> None:
        """Double-clicking a member opens a private conversation with them."""
        chosen = self.member_list.focus()
        if chosen:
            who = self.member_list.item(chosen, "text").split("  (away)")[0]
            if who != self.user:
                self.send_line(f"/query {who}")
            self.entry.focus_set()

    def destroy(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            self.root.destroy()

    def close(self) -> None:
        """Window closed, Ctrl-C or SIGTERM: leave cleanly (bye) if connected, then go."""
        if not self.session_live:  # not connected (yet): nobody to say bye to; a late session times out
            self.destroy()
            return
        if not self.closing:
            self.closing = True
            self.set_status("leaving…", alarm=None)
            self.to_network("line", "/quit")
            self.root.after(int(CLOSE_GRACE * 1000), self.destroy)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chat-gui", description="Chat through a chat broker, in a window.")
    cli.add_endpoint_args(parser)
    cli.add_session_args(parser, "your user name (asked for in the window if not given)")
    parser.add_argument("--no-timestamps", action="store_true", help="no HH:MM before each line")
    parser.add_argument(
        "--theme",
        choices=("auto", "light", "dark"),
        default="auto",
        help="light or dark; auto (the default) follows the desktop's setting",
    )
    parser.add_argument("--gui", action="store_true", help=argparse.SUPPRESS)  # `client.py --gui` passes its argv on
    parser.add_argument("--tui", action="store_true", help=argparse.SUPPRESS)  # as `client.py` takes it
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import tkinter as tk
    except ImportError:
        print("[error] tkinter is not installed (Debian: apt-get install python3-tk)", file=sys.stderr)
        return 1
    try:
        root = tk.Tk(className="chat")
    except tk.TclError as exc:
        print(f"[error] cannot open a window: {exc}", file=sys.stderr)
        return 1
    echo = os.environ.get(ECHO_ENV) == "1"
    if echo:
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    window = ChatWindow(root, args, echo=echo)

    def on_signal(_signum: int, _frame: Any) -> None:
        window.quit_requested = True  # Tk is not re-entrant: the next poll() closes the window

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    root.mainloop()
    if window.network is not None:  # the window went before the goodbye finished: give it a moment
        window.network.join(timeout=1.0)
    return 0 if window.was_connected else 1


if __name__ == "__main__":
    sys.exit(main())
