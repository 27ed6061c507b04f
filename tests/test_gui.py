"""The desktop client: its pure logic without Tk, the window's drawing in this process on an Xvfb display,
then the real window (``gui.py``, a process of its own) chatting through a real broker, typed into and clicked
with xdotool.

The window tests need Debian's ``xvfb``, ``xdotool`` and ``imagemagick`` (``import`` takes the screenshot);
they are skipped, saying so, where they are missing.  The screenshot is kept in the test's temp directory;
set ``CHAT_GUI_SCREENSHOT=docs/gui.png`` to refresh the one in the README.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bidi import get_display
from conftest import ROOT, WAIT, Harness, Proc, StubClient

import client
import gui
import messages as m
from client import ChatClient
from display import PALETTE_SIZE, Line, clock, colour_of
from lifeline import die_with_parent
from session import Acked, Change, Failed, Rejoined, Said, Status
from views import Activity

pytestmark = pytest.mark.timeout(60)

HEBREW = "שלום לכולם, מה נשמע?"  # "hello everyone, what's up?"


def line(who: str, text: str, room: str | None = "general", **kw: Any) -> Line:
    kind = "action" if kw.pop("action", False) else "msg"
    prefix = f"* {who} " if kind == "action" else f"{who}: "
    return Line(kind, text, prefix, room, None, who, kw.pop("ts", 1_700_000_000.0), **kw)


# --- Pure logic: how a line is drawn, right to left, the palettes -------------------------------------


def test_a_line_is_its_time_then_the_nick_in_its_colour_then_the_text() -> None:
    said = line("bob", "hi")
    hhmm = clock(said.ts) + " "
    assert gui.pieces(said, "general") == [
        (hhmm, ("time",)),
        ("bob: ", ("nick", f"nick{colour_of('bob')}")),
        ("hi", ("body",)),
    ]
    assert gui.pieces(said, "general", timestamps=False)[0] == ("bob: ", ("nick", f"nick{colour_of('bob')}"))
    assert gui.pieces(said, "dev", timestamps=False)[0] == ("#general ", ("where",))  # not this view's room
    mine = gui.pieces(line("me", "hello", mine=True), "general", timestamps=False)
    assert mine[0] == ("me: ", ("nick", "mine"))
    assert gui.pieces(line("bob", "waves", action=True), "general", False)[1] == ("waves", ("action",))
    notice = Line("join", "[join] bob joined the chat", room="general", nick="bob")
    assert gui.pieces(notice, "general", False) == [("[join] bob joined the chat", ("notice",))]
    error = Line("error", "[error] no such user (no_such_user)")
    assert gui.pieces(error, "general", False) == [("[error] no such user (no_such_user)", ("error",))]


def test_a_private_message_reads_as_a_conversation_in_its_view() -> None:
    got = Line("dm", "psst", "[dm] bob: ", None, "bob", "bob", 0.0, True)
    sent = Line("dm", "sure", "[dm -> bob] ", None, "bob", "me", 0.0, mine=True)
    nod = Line("dm", "nods", "[dm] * bob ", None, "bob", "bob", 0.0, True)
    assert [t for t, _ in gui.pieces(got, None, False)] == ["bob: ", "psst"]
    assert [t for t, _ in gui.pieces(sent, None, False)] == ["me: ", "sure"]
    assert gui.pieces(nod, None, False)[1] == ("nods", ("action",))


def test_right_to_left_text_is_put_in_display_order() -> None:
    said = line("dana", HEBREW)
    assert gui.is_rtl(said) and not gui.is_rtl(line("bob", f"hi {HEBREW[:4]} there, how are you"))
    parts = gui.pieces(said, "general", timestamps=False)
    shown = gui.visual(parts, rtl=True)  # from the right: the name, then the text
    assert shown == [(get_display(HEBREW, base_dir="R"), ("body",)), (" :dana", parts[0][1])]
    assert shown[0][0] == "?עמשנ המ ,םלוכל םולש"  # as Tk must draw it, left to right
    mixed = gui.visual(gui.pieces(line("bob", "say שלום please"), "general", False), rtl=False)
    assert mixed[1] == ("say םולש please", ("body",))  # a Hebrew word in an English line: in place, reordered
    plain = gui.pieces(line("bob", "hello"), "general")
    assert gui.visual(plain, rtl=False) == plain


def test_a_long_right_to_left_line_is_broken_into_rows_before_it_is_reordered() -> None:
    parts = [("dana: ", ("nick",)), ("אחת שתיים שלוש ארבע חמש", ("body",))]
    broken = gui.rows(parts, width=12, measure=lambda text, _tags: len(text))
    assert ["".join(t for t, _ in row) for row in broken] == ["dana: אחת ", "שתיים שלוש ", "ארבע חמש"]
    assert gui.visual(broken[0], rtl=True)[0] == (" תחא", ("body",))  # the first row holds the beginning
    long_word = gui.rows([("x" * 25, ("body",))], width=10, measure=lambda text, _tags: len(text))
    assert ["".join(t for t, _ in row) for row in long_word] == ["x" * 10, "x" * 10, "x" * 5]


@pytest.mark.parametrize("mode", sorted(gui.THEMES))
def test_nick_colours_are_readable_in_both_modes(mode: str) -> None:
    theme = gui.THEMES[mode]
    assert len(theme["nicks"]) == PALETTE_SIZE == len(set(theme["nicks"]))
    for colour in [*theme["nicks"], theme["muted"], theme["accent"], theme["error"]]:
        assert gui.contrast(colour, theme["text_bg"]) >= 4.5, (mode, colour)
    assert gui.contrast(theme["text_fg"], theme["mention_bg"]) >= 7


def test_the_room_list_counts() -> None:
    tabs = (gui.Tab("general"), gui.Tab("dev", 3, 1, Activity.MENTION), gui.Tab("@bob", 1))
    assert [t.title for t in tabs] == ["#general", "#dev", "@bob"]
    assert [t.badge for t in tabs] == ["", "3!", "1"]
    assert gui.rooms_summary(tabs) == "#general(0) #dev(3!) @bob(1)"


def test_the_window_takes_the_options_client_py_passes_on() -> None:
    assert client.parse_args(["--gui", "--name", "al"]).gui
    args = gui.parse_args(["--gui", "--host", "h", "--name", "al", "--room", "dev"])  # client.py passes its argv on
    assert (args.host, args.name, args.room, args.no_timestamps, args.theme) == ("h", "al", ["dev"], False, "auto")
    args = gui.parse_args(["--no-timestamps", "--tui", "--theme", "dark"])
    assert args.no_timestamps and args.theme == "dark"


# --- GuiConsole: the console's commands and views, posted to the window ------------------------------


class FakeClient(StubClient):
    """What GuiConsole reads and asks of a ChatClient: connected, in no room yet."""

    def __init__(self) -> None:
        super().__init__(joined=False)


def gui_console() -> tuple[gui.GuiConsole, FakeClient, list[tuple[Any, ...]]]:
    fake = FakeClient()
    posted: list[tuple[Any, ...]] = []
    return gui.GuiConsole(fake, posted.append), fake, posted  # type: ignore[arg-type]


def msg(user: str, text: str, room: str = "general") -> m.MsgEvent:
    return m.MsgEvent(room=room, user=user, text=text, id="x", seq=2, ts=0.0)


def texts(posted: list[tuple[Any, ...]]) -> list[str]:
    """The lines posted for the view on show, as text."""
    return [item[2].text for item in posted if item[0] == "line"]


def last_state(posted: list[tuple[Any, ...]]) -> gui.State:
    return [item[1] for item in posted if item[0] == "state"][-1]


def test_gui_console_posts_the_view_its_lines_and_the_state() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me", "bob"]))
    view = posted[0]
    assert view[:2] == ("view", "general") and [ln.text for ln in view[2]] == [
        "[system] you are in #general (2 here: me, bob)"
    ]
    members = (("bob", False), ("me", False))
    assert last_state(posted) == gui.State("me", (gui.Tab("general"),), "general", "", members)
    posted.clear()
    console.on_event(msg("bob", "hi \x1b[2J"))
    console.on_event(msg("me", "hello"))  # the console leaves this out; the window shows it
    console.on_event(m.JoinEvent(room="general", user="carol", seq=3, ts=0.0))
    console.on_event(Status(Change.LOST))
    fake.user = None  # reconnecting: a resent message of ours is still ours
    console.on_event(msg("me", "again"))
    assert texts(posted) == [
        "bob: hi \\x1b[2J",
        "me: hello",
        "[join] carol joined the chat",
        "[system] connection lost, reconnecting…",
        "me: again",
    ]
    assert [item[2].mine for item in posted if item[0] == "line"] == [False, True, False, False, True]
    assert ("status", "lost") in posted
    assert last_state(posted).members == (("bob", False), ("carol", False), ("me", False))


def test_gui_console_counts_other_views_and_rings_for_a_mention() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me"]))
    console.on_event(fake.joined("dev", ["me", "bob"]))  # joined at start: general stays current
    posted.clear()
    console.on_event(msg("bob", "the build is green", room="dev"))
    console.on_event(msg("bob", "me: can you look?", room="dev"))
    console.on_event(m.Dm(user="bob", to="me", text="psst", id="d", ts=0.0))
    assert texts(posted) == []  # none of it is in the view on show
    assert ("bell", "dev") in posted and ("bell", "@bob") in posted
    state = last_state(posted)
    assert state.current == "general"
    assert state.tabs == (
        gui.Tab("general"),
        gui.Tab("dev", 2, 1, Activity.MENTION),
        gui.Tab("@bob", 1, 1, Activity.MENTION),
    )


def test_picking_a_view_shows_it_and_clears_its_counts() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me"]))
    console.on_event(fake.joined("dev", ["me", "bob"]))
    console.on_event(m.TopicEvent(room="dev", user="bob", topic="builds", seq=3, ts=0.0))
    console.on_event(msg("bob", "ping", room="dev"))
    posted.clear()
    console.pick("dev")
    kind, name, lines, _history_end = posted[0]
    assert (kind, name) == ("view", "dev")
    assert [ln.text for ln in lines][-2:] == ["[topic] bob set the topic: builds", "bob: ping"]
    state = last_state(posted)
    assert state.current == "dev" and state.topic == "builds"
    assert state.tabs[1] == gui.Tab("dev") and state.members == (("bob", False), ("me", False))
    assert console.on_line("hello dev")
    assert fake.calls[-1] == ("say", "dev", "hello dev", False)  # typed text goes to the view on show
    posted.clear()
    console.pick("nowhere")  # a view gone meanwhile: nothing happens
    assert posted == []


def test_history_on_joining_is_marked_for_the_separator() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me"]))
    console.on_line("/join dev")
    past = [msg("bob", f"old {n}", room="dev") for n in range(3)]
    console.on_event(fake.joined("dev", ["me", "bob"], history=past))
    kind, name, lines, history_end = [item for item in posted if item[0] == "view"][-1]
    assert (kind, name, history_end) == ("view", "dev", 4)
    assert [ln.text for ln in lines] == [
        "[system] you are in #dev (2 here: me, bob)",
        "bob: old 0",
        "bob: old 1",
        "bob: old 2",
    ]


def test_a_private_message_sent_shows_its_conversation_once_delivered() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me", "bob"]))
    assert console.on_line("/msg BOB psst")
    assert fake.calls == [("dm", "BOB", "psst", False)]
    assert console.current == "general"
    delivered = Acked(Said(id="d1", text="psst", to="BOB"), m.Ack(id="d1", to="bob"))
    console.on_event(delivered)  # the broker says whom it went to: bob
    view = [item for item in posted if item[0] == "view"][-1]
    assert view[:2] == ("view", "@bob") and [ln.text for ln in view[2]] == ["[dm -> bob] psst"]
    state = last_state(posted)
    assert state.current == "@bob" and state.members == (("me", False), ("bob", False))
    assert console.on_line("and another")
    assert fake.calls[-1] == ("dm", "bob", "and another", False)
    console.on_event(Acked(Said(id="d2", text="and another", to="bob"), m.Ack(id="d2", to="bob")))
    assert texts(posted)[-1] == "[dm -> bob] and another"
    assert console.on_line("/msg nobody hello")  # refused: stays here, where the error is said
    refused = Said(id="d3", text="hello", to="nobody")
    console.on_event(Failed(error=m.Error(code="no_such_user", detail="no such user", id="d3"), request=refused))
    assert console.current == "@bob" and texts(posted)[-1] == "[error] no such user (no_such_user)"
    assert console._follow is None


def test_gui_console_shows_no_line_for_a_rejoin_but_updates_the_members() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me", "bob"]))
    posted.clear()
    console.on_event(Status(Change.RECONNECTED, "e2"))
    console.on_event(
        Rejoined(m.Joined(room="general", users=["me", "carol"], history=[], seq=5, away={"carol": "lunch"}))
    )
    assert texts(posted) == ["[system] reconnected"]
    assert ("status", "reconnected") in posted
    assert last_state(posted).members == (("carol", True), ("me", False))


def test_gui_console_runs_the_console_commands() -> None:
    console, fake, posted = gui_console()
    console.on_event(fake.joined("general", ["me"]))
    assert console.on_line("hello")
    assert console.on_line("/join dev")
    assert not console.on_line("/quit")
    assert fake.calls == [("say", "general", "hello", False), ("join", "dev")]
    console.on_line("/bogus")
    assert texts(posted)[-1] == "[error] unknown command /bogus; /help lists the commands"
    posted.clear()
    assert console.on_line("/clear")
    assert posted == [("view", "general", (), 0)]  # the window draws the view again, empty


# --- The window, in this process: drawing, scrolling, right to left, clicking -------------------------------

TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "import": "imagemagick"}


def start_xvfb(die_with_us: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """A fresh Xvfb and its display; ``-displayfd`` makes it pick a free display and say so once it accepts
    clients.  ``die_with_us``: the kernel ends it when this process ends (see ``tk_display``)."""
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.skip(f"the window test needs an X server and tools: apt-get install {' '.join(missing)}")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent if die_with_us else None,
    )
    os.close(write_fd)
    try:
        number = b""
        deadline = time.monotonic() + WAIT
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                raise AssertionError("Xvfb did not start")
            chunk = os.read(read_fd, 16)
            if not chunk:
                raise AssertionError(f"Xvfb exited with {xvfb.wait()}")
            number += chunk
    except BaseException:
        xvfb.kill()
        xvfb.wait(5)
        raise
    finally:
        os.close(read_fd)
    return xvfb, f":{number.decode().strip()}"


@pytest.fixture
def display() -> Iterator[str]:
    """An Xvfb of the test's own, for a window in a process of its own."""
    xvfb, name = start_xvfb()
    try:
        yield name
    finally:
        xvfb.terminate()
        xvfb.wait(5)


@pytest.fixture(scope="module")
def tk_display() -> str:
    """An Xvfb for windows in this process.  It is never stopped while the tests run: Tk keeps its connection
    to a display after its last window is gone, and once that display's server is gone, Tk's next look at its
    events ends the process ("XIO: fatal IO error").  So it lasts as long as this process, and ends with it."""
    _xvfb, name = start_xvfb(die_with_us=True)
    return name


class Desktop:
    """xdotool on the test's display: find the chat window, type into its focused entry."""

    def __init__(self, display: str) -> None:
        self.env = dict(os.environ, DISPLAY=display)

    def run(self, *args: str) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=WAIT, check=False)
        return done.stdout

    def window(self, title: str = "^chat") -> str:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = self.run("xdotool", "search", "--onlyvisible", "--name", title).split()
            if found:
                return found[0]
        raise AssertionError(f"no window titled {title!r}")

    def type(self, window: str, text: str) -> None:
        """Focus the window (its entry has Tk's focus) and type a line, then Enter."""
        self.run("xdotool", "windowfocus", "--sync", window)
        self.run("xdotool", "type", "--delay", "4", text)
        self.run("xdotool", "key", "Return")


def pump(root: Any, done: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Run Tk's loop until ``done()`` is true (or fail at the deadline): the condition synchronises."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root.update()
        result = done()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def window(tk_display: str) -> Iterator[gui.ChatWindow]:
    """A ChatWindow on the test's display, connected as "me" to no broker: the test posts what the network
    thread would, and ``window.sent`` keeps what the window sends it."""
    import tkinter as tk

    root = tk.Tk(screenName=tk_display, className="chat")
    win = gui.ChatWindow(root, gui.parse_args(["--theme", "light"]))
    sent: list[tuple[str, str]] = []
    win.to_network = lambda kind, text: sent.append((kind, text))  # type: ignore[method-assign]
    win.sent = sent  # type: ignore[attr-defined]
    win.handle(gui.Connected("me", "tcp://test"))
    pump(root, lambda: win.text.winfo_width() > 300, "the window on screen")
    try:
        yield win
    finally:
        win.destroy()


def drawn(win: gui.ChatWindow) -> list[str]:
    return win.text.get("1.0", "end-1c").split("\n")


def tags_of(win: gui.ChatWindow, row: int) -> set[str]:
    return set(win.text.tag_names(f"{row}.0"))


def test_a_busy_view_is_shown_at_its_newest_line_and_follows_only_from_there(window: gui.ChatWindow) -> None:
    said = [line("bob", f"message {n}: " + "and some more words " * 4) for n in range(50)]
    window.handle(("view", "busy", tuple(said), 20))
    pump(window.root, lambda: window.text.yview()[1] == 1.0, "the newest line in sight")
    assert window.text.yview()[0] > 0.5
    rows = drawn(window)
    assert gui.SEPARATOR in rows and rows.index(gui.SEPARATOR) == 20  # after the history
    assert "separator" in tags_of(window, 21)
    window.handle(("line", "busy", line("carol", "a new one"), False))
    pump(window.root, lambda: window.text.yview()[1] == 1.0, "following the new line")
    window.text.yview_moveto(0.0)  # the user scrolls up to read
    window.handle(("line", "busy", line("carol", "and another"), False))
    window.root.update()
    assert window.text.yview()[0] == 0.0  # not pulled down
    window.handle(("line", "other", line("dave", "elsewhere", room="other"), False))  # not on show: not drawn
    assert not any("elsewhere" in row for row in drawn(window))
    window.handle(("view", "quiet", (line("bob", "hi"),), 0))
    window.handle(("view", "busy", tuple(said), 20))  # back to it: at the newest again
    pump(window.root, lambda: window.text.yview()[1] == 1.0, "the newest line in sight after switching")
    assert gui.SEPARATOR in drawn(window)


def test_times_colours_own_lines_and_mentions(window: gui.ChatWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    bells: list[bool] = []
    monkeypatch.setattr(window.root, "bell", lambda: bells.append(True))
    window.handle(("view", "general", (line("bob", "hi"),), 0))
    window.handle(("line", "general", line("me", "hello", mine=True), False))
    window.handle(("line", "general", line("bob", "me: look at this", mention=True), False))
    window.handle(("bell", "general"))
    window.root.update()
    rows = drawn(window)
    assert rows[:3] == [f"{clock(1_700_000_000.0)} bob: hi", f"{clock(1_700_000_000.0)} me: hello",
                        f"{clock(1_700_000_000.0)} bob: me: look at this"]  # fmt: skip
    assert set(window.text.tag_names("1.0")) == {"time", "line"}
    assert f"nick{colour_of('bob')}" in window.text.tag_names("1.6")
    nick = window.text.tag_cget(f"nick{colour_of('bob')}", "foreground")
    assert nick == gui.THEMES["light"]["nicks"][colour_of("bob")]
    assert {"own", "mine"} <= set(window.text.tag_names("2.6")) and "mention" not in tags_of(window, 2)
    assert "mention" in tags_of(window, 3) and "mention" not in tags_of(window, 1)
    assert window.text.tag_cget("mention", "background") == gui.THEMES["light"]["mention_bg"]
    assert bells == [True]


def test_a_hebrew_line_is_drawn_in_display_order_and_set_right(window: gui.ChatWindow) -> None:
    window.handle(("view", "general", (line("bob", "hi"), line("dana", HEBREW)), 0))
    window.root.update()
    rows = drawn(window)
    assert rows[1] == f"{get_display(HEBREW, base_dir='R')} :dana {clock(1_700_000_000.0)}"
    assert "rtl" in tags_of(window, 2) and "rtl" not in tags_of(window, 1)
    assert window.text.tag_cget("rtl", "justify") == "right"
    # A line longer than the window is broken by the window, its beginning in the first row, at the right.
    words = HEBREW.split()
    long = line("dana", " ".join(words[n % len(words)] for n in range(60)))
    window.handle(("line", "general", long, False))
    window.root.update()
    rows = drawn(window)[2:-1]
    assert len(rows) > 2 and all("rtl" in tags_of(window, 3 + n) for n in range(len(rows)))
    assert rows[0].endswith(f"{get_display(words[0] + ' ' + words[1], base_dir='R')} :dana {clock(1_700_000_000.0)}")
    width = window.text.winfo_width()
    assert all(window.fonts["chat"].measure(row) < width for row in rows)
    window.root.geometry("760x600")  # narrower: laid out again
    pump(window.root, lambda: len(drawn(window)[2:-1]) > len(rows), "the long line laid out again")


def test_the_room_list_and_members_and_a_click_on_a_room(window: gui.ChatWindow, tk_display: str) -> None:
    tabs = (gui.Tab("general"), gui.Tab("dev", 3, 0, Activity.MESSAGES), gui.Tab("ops", 2, 1, Activity.MENTION))
    members = (("bob", False), ("dana", True), ("me", False))
    window.handle(("state", gui.State("me", tabs, "general", "deploys and lunch", members)))
    window.handle(("view", "general", (), 0))
    tree = window.room_list
    pump(window.root, lambda: tree.bbox("dev"), "the room list drawn")
    assert [tree.item(i, "text") for i in tree.get_children()] == ["#general", "#dev", "#ops"]
    assert [tree.set(i, "badge") for i in tree.get_children()] == ["", "3", "2!"]
    assert tuple(tree.item("ops", "tags")) == ("mention",) and tuple(tree.item("dev", "tags")) == ("unread",)
    assert tree.selection() == ("general",)
    people = window.member_list
    assert [people.item(i, "text") for i in people.get_children()] == ["bob", "dana  (away)", "me"]
    assert window.topic.cget("text") == "deploys and lunch" and window.where.cget("text") == "#general"
    assert str(window.room_prompt.cget("text")) == "#general ›"

    x, y, width, height = tree.bbox("dev")  # a real click, where the row is on the screen
    at = (tree.winfo_rootx() + x + width // 2, tree.winfo_rooty() + y + height // 2)
    Desktop(tk_display).run("xdotool", "mousemove", "--sync", str(at[0]), str(at[1]), "click", "1")
    pump(window.root, lambda: window.sent, "the click")
    assert window.sent == [("view", "dev")]  # type: ignore[attr-defined]
    tabs = (gui.Tab("general"), gui.Tab("dev"), tabs[2])
    window.handle(("view", "dev", (line("bob", "the build is green", room="dev"),), 0))
    window.handle(("state", gui.State("me", tabs, "dev", "", (("bob", False), ("me", False)))))
    window.root.update()
    assert drawn(window)[0].endswith("bob: the build is green") and tree.selection() == ("dev",)
    assert tree.set("dev", "badge") == "" and window.where.cget("text") == "#dev"
    assert window.sent == [("view", "dev")]  # type: ignore[attr-defined]  (showing it sent nothing back)

    x, y, width, height = people.bbox(people.get_children()[0])  # bob: a double click opens a conversation
    at = (people.winfo_rootx() + x + width // 2, people.winfo_rooty() + y + height // 2)
    Desktop(tk_display).run("xdotool", "mousemove", "--sync", str(at[0]), str(at[1]), "click", "--repeat", "2", "1")
    pump(window.root, lambda: len(window.sent) > 1, "the double click")  # type: ignore[attr-defined]
    assert window.sent[1:] == [("line", "/query bob")]  # type: ignore[attr-defined]


def test_tab_completes_names_rooms_and_commands(window: gui.ChatWindow) -> None:
    tabs = (gui.Tab("general"), gui.Tab("dev"))
    members = (("bob", False), ("carol", False), ("caroline", False), ("me", False))
    window.handle(("state", gui.State("me", tabs, "general", "", members)))
    for typed, completed in [("bo", "bob: "), ("ca", "carol"), ("hi ca", "hi carol"), ("/jo", "/join"),
                             ("/join #d", "/join #dev"), ("zz", "zz")]:  # fmt: skip
        window.entry.delete(0, "end")
        window.entry.insert(0, typed)
        assert window.complete() == "break"  # Tab stays in the line
        assert window.entry.get() == completed


def test_the_window_follows_the_dark_mode(window: gui.ChatWindow) -> None:
    window.handle(("view", "general", (line("bob", "hi"),), 0))
    window.handle(("theme", "dark"))
    window.root.update()
    dark = gui.THEMES["dark"]
    assert window.text.cget("background") == dark["text_bg"] and window.text.cget("foreground") == dark["text_fg"]
    assert window.text.tag_cget(f"nick{colour_of('bob')}", "foreground") == dark["nicks"][colour_of("bob")]
    assert window.style.theme_use() == "sun-valley-dark"
    assert str(window.topic.cget("foreground")) == ""  # from its style (muted), not the palette Sun Valley set
    assert window.style.lookup("Muted.TLabel", "foreground") == dark["muted"]
    assert drawn(window)[0].endswith("bob: hi")


# --- The real window, a process of its own, through a real broker ------------------------------------------


def test_the_window_chats_with_console_clients(
    harness: Harness, display: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker = harness.broker()
    with ChatClient("bot", router=broker.router, pub=broker.pub, rooms=["busy"], context=harness.ctx) as bot:
        bot.connect()
        bot.say_many("busy", [f"build {n} passed: " + "all green " * 8 for n in range(50)])  # acked before it goes
    bob = harness.client(broker, "bob")
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv(gui.ECHO_ENV, "1")
    window = Proc(["gui.py", *broker.endpoints, "--theme", "light"], "gui", stdin=False)
    harness.procs.append(window)
    desktop = Desktop(display)

    # The name prompt: a taken name is refused in the window, and another one can be typed.
    window.expect(r"^\[prompt\] Enter a username:$")
    wid = desktop.window()
    desktop.type(wid, "bob")
    window.expect(r"^\[prompt\] Enter a username: .*\(name_taken\)$")
    desktop.type(wid, "alice")
    window.expect(r"^\[view\] #general$")
    window.expect(r"^\[system\] connected to .* as alice; /help lists the commands$")
    window.expect(r"^\[system\] you are in #general \(2 here: alice, bob\)$")
    window.expect(r"^\[members\] #general: alice, bob$")
    bob.expect(r"^\[join\] alice joined the chat$")
    carol = harness.client(broker, "carol")
    window.expect(r"^\[join\] carol joined the chat$")
    window.expect(r"^\[members\] #general: alice, bob, carol$")
    bob.send("/topic deploys, reviews and lunch")
    window.expect(r"^\[topic\] bob set the topic: deploys, reviews and lunch$")
    window.expect(r"^\[topic\] #general: deploys, reviews and lunch$")

    # Both directions, in the room; the window shows its own line too; a mention rings.
    desktop.type(wid, "morning! is the deploy out?")
    bob.expect(r"^alice: morning! is the deploy out\?$")
    window.expect(r"^alice: morning! is the deploy out\?$")
    bob.send("alice: yes, ten minutes ago, all green")
    window.expect(r"^bob: alice: yes, ten minutes ago, all green$")
    window.expect(r"^\[bell\] #general$")
    carol.send("/me brings coffee")
    window.expect(r"^\* carol brings coffee$")
    dana = harness.client(broker, "dana")
    dana.send(HEBREW)
    window.expect(f"^dana: {re.escape(HEBREW)}$")  # the echo says it in typed order; the window draws it reordered

    # Private messages, both ways, in a view of their own; hostile text is shown as visible escapes.
    desktop.type(wid, "/msg bob can you review the relay patch?")
    window.expect(r"^\[view\] @bob$")
    bob.expect(r"^\[dm\] alice: can you review the relay patch\?$")
    window.expect(r"^alice: can you review the relay patch\?$")
    bob.send("/msg alice sure, after lunch")
    window.expect(r"^bob: sure, after lunch$")
    bob.send("/msg alice \x1b[2J\u202egotcha\x07")
    window.expect("^" + re.escape(r"bob: \x1b[2J\u202egotcha\x07") + "$")
    desktop.run("xdotool", "key", "alt+1")  # /window 1
    window.expect(r"^\[view\] #general$")
    window.expect(f"^dana: {re.escape(HEBREW)}$")
    carol.send("/away lunch")
    carol.expect(r"^\[system\] you are marked as away: lunch$")
    desktop.type(wid, "/who")  # away is no news on the feed: who (and joined) tell it
    window.expect(r"^\[who\] #general: alice, bob, carol \(away\), dana \(4\)$")
    window.expect(r"^\[members\] #general: alice, bob, carol \(away\), dana$")
    dana.close_stdin()  # end of input: the console says bye
    window.expect(r"^\[leave\] dana left the chat$")
    window.expect(r"^\[members\] #general: alice, bob, carol \(away\)$")

    # A busy room: shown at its newest line, the history set apart.
    desktop.type(wid, "/join busy")
    window.expect(r"^\[view\] #busy$")
    window.expect(r"^\[system\] you are in #busy \(1 here: alice\)$")
    window.expect(r"^bot: build 49 passed: ")
    scrolled = window.expect(r"^\[scroll\] #busy (\S+) (\S+)$")
    assert float(scrolled.group(1)) > 0.3 and scrolled.group(2) == "1.000"

    # Another room: the window switches to it, its member list follows; the others count what is missed.
    desktop.type(wid, "/join dev")
    window.expect(r"^\[view\] #dev$")
    window.expect(r"^\[system\] you are in #dev \(1 here: alice\)$")
    window.expect(r"^\[members\] #dev: alice$")
    bob.send("/join dev")
    window.expect(r"^\[join\] bob joined the room$")
    window.expect(r"^\[members\] #dev: alice, bob$")
    bob.send("the build is green")
    window.expect(r"^bob: the build is green$")
    desktop.type(wid, "/me cheers")
    bob.expect(r"^(#dev )?\* alice cheers$")
    window.expect(r"^\* alice cheers$")
    desktop.type(wid, "/window 1")
    window.expect(r"^\[view\] #general$")
    bob.send("merged the relay fix")
    window.expect(r"^\[rooms\] #general\(0\) @bob\(0\) #busy\(0\) #dev\(1\)$")
    bob.send("alice: ready for review when you are")
    window.expect(r"^\[bell\] #dev$")
    window.expect(r"^\[rooms\] #general\(0\) @bob\(0\) #busy\(0\) #dev\(2!\)$")
    bob.send("/window 1")
    bob.send("lunch at noon? carol is buying")
    window.expect(r"^bob: lunch at noon\? carol is buying$")
    desktop.type(wid, "count me in")
    window.expect(r"^alice: count me in$")

    shot = tmp_path / "gui.png"
    desktop.run("import", "-window", wid, "-strip", f"png:{shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("CHAT_GUI_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / target)

    # Topic, nick and away typed in the window, through the broker to the others.
    desktop.type(wid, "/topic release on Friday")
    bob.expect(r"^\[topic\] alice set the topic: release on Friday$")
    window.expect(r"^\[topic\] #general: release on Friday$")
    desktop.type(wid, "/nick alicia")
    window.expect(r"^\[system\] you are now known as alicia$")
    bob.expect(r"^\[nick\] alice is now known as alicia$")
    desktop.type(wid, "/away in a meeting")
    window.expect(r"^\[system\] you are marked as away: in a meeting$")
    bob.send("/msg alicia got a minute?")
    bob.expect(r"^\[dm -> alicia\] got a minute\? \(alicia is away: in a meeting\)$")

    # /quit in the window leaves cleanly (bye, not a timeout) and closes it.
    desktop.type(wid, "/quit")
    window.expect(r"^\[system\] bye$")
    assert window.wait() == 0
    bob.expect(r"\[leave\] alicia left the chat$")  # "(timed out)" would mean no bye was sent
    bob.expect(r"\[leave\] alicia left the room$")


def test_closing_the_window_by_signal_says_bye(harness: Harness, display: str, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv(gui.ECHO_ENV, "1")
    window = Proc(["client.py", "--gui", *broker.endpoints, "--name", "carol", "--no-timestamps"], "gui", stdin=False)
    harness.procs.append(window)
    window.expect(r"^\[members\] #general: bob, carol$")
    bob.expect(r"^\[join\] carol joined the chat$")
    window.kill(signal.SIGTERM)
    bob.expect(r"^\[leave\] carol left the chat$")  # "(timed out)" would mean no bye was sent
    assert window.wait() == 0


def test_the_status_line_says_when_the_broker_is_gone(
    harness: Harness, display: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = harness.broker()
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv(gui.ECHO_ENV, "1")
    window = Proc(["gui.py", *broker.endpoints, "--name", "dave"], "gui", stdin=False)
    harness.procs.append(window)
    window.expect(r"^\[status\] connected to .* as dave$")
    broker.kill()
    window.expect(r"^\[status\] connection lost, reconnecting…$")
    window.kill(signal.SIGTERM)  # leaving while the broker is away still closes promptly
    assert window.wait() == 0
