"""The desktop client: its pure logic without Tk, then the real window under Xvfb, typed into with xdotool.

The window test needs Debian's ``xvfb``, ``xdotool`` and ``imagemagick`` (``import``
takes the screenshot); it is skipped, saying so, where they are missing.  It
keeps its screenshot in the test's temp directory; set ``CHAT_GUI_SCREENSHOT=docs/gui.png``
to refresh the one in the README.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, WAIT, Harness, Proc, StubClient

import client
import gui
import messages as m
from display import HELP
from session import Change, Rejoined, Status

pytestmark = pytest.mark.timeout(60)


# --- Members and line_tag: pure logic ------------------------------------------------------------


def test_members_start_from_joined_and_follow_join_and_leave() -> None:
    members = gui.Members()
    assert members.update(m.Joined(room="general", users=["bob", "alice"]))
    assert members.of("general") == ["alice", "bob"]
    assert members.update(m.JoinEvent(room="general", user="Carol"))
    assert members.of("general") == ["alice", "bob", "Carol"]  # sorted case-insensitively, as the broker does
    assert members.update(m.LeaveEvent(room="general", user="bob", reason="quit"))
    assert members.of("general") == ["alice", "Carol"]


def test_members_ignore_repeats_and_rooms_we_are_not_in() -> None:
    members = gui.Members()
    members.update(m.Joined(room="general", users=["alice"]))
    assert not members.update(m.JoinEvent(room="general", user="alice"))
    assert not members.update(m.JoinEvent(room="dev", user="bob"))
    assert not members.update(m.LeaveEvent(room="dev", user="bob", reason="left"))
    assert not members.update(m.Who(room="elsewhere", users=["x"]))
    assert members.of("dev") == [] and members.of("elsewhere") == [] and members.of(None) == []


def test_members_who_replaces_and_left_forgets() -> None:
    members = gui.Members()
    members.update(m.Joined(room="dev", users=["alice"]))
    assert members.update(m.Who(room="dev", users=["alice", "bob"]))
    assert not members.update(m.Who(room="dev", users=["bob", "alice"]))  # no change
    assert members.of("dev") == ["alice", "bob"]
    assert members.update(m.Left(room="dev"))
    assert members.of("dev") == []
    assert not members.update(m.Left(room="dev"))
    assert not members.update(Status(Change.LOST))


def test_members_start_over_from_a_rejoin() -> None:
    members = gui.Members()
    members.update(m.Joined(room="dev", users=["alice", "bob", "me"]))
    assert members.update(Rejoined(m.Joined(room="dev", users=["carol", "me"])))  # back after a reconnect
    assert members.of("dev") == ["carol", "me"]


@pytest.mark.parametrize(
    ("line", "tag"),
    [
        ("bob: hi", "message"),
        ("#dev bob: hi", "message"),
        ("* bob waves", "message"),
        ("me: hi", "self"),
        ("#dev * me waves", "self"),
        ("[dm] bob: psst", "dm"),
        ("[dm] * bob nods", "dm"),
        ("[dm -> bob] psst", "dm"),
        ("[error] no such user (no_such_user)", "error"),
        ("[join] bob joined the chat", "notice"),
        ("#dev [leave] bob left the room", "notice"),
        ("[system] you are in #dev (1 here: me)", "notice"),
        (HELP, "notice"),
        ("bob: [dm] me: fake", "message"),  # someone else's text never looks like a notice or a DM
        ("meg: hi", "message"),
    ],
)
def test_line_tag(line: str, tag: str) -> None:
    assert gui.line_tag(line, "me") == tag


# --- GuiConsole: the console's commands, output to the window's queue --------------------------------


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


def test_gui_console_shows_lines_with_tags_and_state() -> None:
    console, fake, posted = gui_console()
    fake.rooms["general"] = None
    console.on_event(m.Joined(room="general", users=["me", "bob"], history=[], seq=1))
    console.on_event(msg("bob", "hi \x1b[2J"))
    console.on_event(msg("me", "hello"))  # the console leaves this out; the window shows it
    console.on_event(m.Dm(user="bob", to="me", text="psst", id="d", ts=0.0))
    console.on_event(m.JoinEvent(room="general", user="carol", seq=3, ts=0.0))
    console.on_event(Status(Change.LOST))
    fake.user = None  # reconnecting: a resent message of ours is still ours
    console.on_event(msg("me", "again"))
    assert posted == [
        ("line", "[system] you are in #general (2 here: me, bob)", "notice"),
        ("state", ("general",), "general", ("bob", "me")),
        ("line", "bob: hi \\x1b[2J", "message"),
        ("line", "me: hello", "self"),
        ("line", "[dm] bob: psst", "dm"),
        ("line", "[join] carol joined the chat", "notice"),
        ("state", ("general",), "general", ("bob", "carol", "me")),
        ("line", "[system] connection lost, reconnecting…", "notice"),
        ("status", "lost"),
        ("line", "me: again", "self"),
    ]


def test_gui_console_shows_no_line_for_a_rejoin_but_updates_the_members() -> None:
    console, fake, posted = gui_console()
    fake.rooms["general"] = None
    console.on_event(m.Joined(room="general", users=["me", "bob"], history=[], seq=1))
    posted.clear()
    console.on_event(Status(Change.RECONNECTED, "e2"))
    console.on_event(Rejoined(m.Joined(room="general", users=["me", "carol"], history=[], seq=5)))
    assert posted == [
        ("line", "[system] reconnected", "notice"),
        ("status", "reconnected"),
        ("state", ("general",), "general", ("carol", "me")),
    ]


def test_gui_console_runs_the_console_commands() -> None:
    console, fake, posted = gui_console()
    fake.rooms["general"] = None
    assert console.on_line("hello")
    assert console.on_line("/msg bob psst")
    assert console.on_line("/join dev")
    assert not console.on_line("/quit")
    assert fake.calls == [("say", "general", "hello", False), ("dm", "bob", "psst", False), ("join", "dev")]
    console.on_line("/bogus")
    assert posted[-1] == ("line", "[error] unknown command /bogus; /help lists the commands", "error")


def test_client_gui_flag_hands_over_to_the_window() -> None:
    assert client.parse_args(["--gui", "--name", "al"]).gui
    args = gui.parse_args(["--gui", "--host", "h", "--name", "al", "--room", "dev"])  # client.py passes its argv on
    assert (args.host, args.name, args.room) == ("h", "al", ["dev"])


# --- The real window ------------------------------------------------------------------------------

TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "import": "imagemagick"}


@pytest.fixture
def display() -> Iterator[str]:
    """A fresh Xvfb; ``-displayfd`` makes it pick a free display and say so once it accepts clients."""
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.skip(f"the window test needs an X server and tools: apt-get install {' '.join(missing)}")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
        yield f":{number.decode().strip()}"
    finally:
        os.close(read_fd)
        xvfb.terminate()
        xvfb.wait(5)


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


def test_the_window_chats_with_a_console_client(
    harness: Harness, display: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv(gui.ECHO_ENV, "1")
    window = Proc(["gui.py", *broker.endpoints], "gui", stdin=False)
    harness.procs.append(window)
    desktop = Desktop(display)

    # The name prompt: a taken name is refused in the window, and another one can be typed.
    window.expect(r"^\[prompt\] Enter a username:$")
    wid = desktop.window()
    desktop.type(wid, "bob")
    window.expect(r"^\[prompt\] Enter a username: .*\(name_taken\)$")
    desktop.type(wid, "gui-alice")
    window.expect(r"^\[system\] connected to .* as gui-alice; /help lists the commands$")
    window.expect(r"^\[system\] you are in #general \(2 here: bob, gui-alice\)$")
    window.expect(r"^\[members\] #general: bob, gui-alice$")
    bob.expect(r"^\[join\] gui-alice joined the chat$")
    carol = harness.client(broker, "carol")
    window.expect(r"^\[join\] carol joined the chat$")
    window.expect(r"^\[members\] #general: bob, carol, gui-alice$")

    # Both directions, in the room; the window shows its own line too.
    desktop.type(wid, "hello from the window")
    bob.expect(r"^gui-alice: hello from the window$")
    window.expect(r"^gui-alice: hello from the window$")
    bob.send("hi gui-alice, from the console")
    window.expect(r"^bob: hi gui-alice, from the console$")

    # Hostile text is shown as visible escapes, not obeyed.
    bob.send("\x1b[2J\u202egotcha\x07")
    window.expect("^" + re.escape(r"bob: \x1b[2J\u202egotcha\x07") + "$")

    # Private messages, both ways.
    desktop.type(wid, "/msg bob psst, the window here")
    bob.expect(r"^\[dm\] gui-alice: psst, the window here$")
    window.expect(r"^\[dm -> bob\] psst, the window here$")
    bob.send("/msg gui-alice got it, thanks")
    window.expect(r"^\[dm\] bob: got it, thanks$")
    carol.close_stdin()  # end of input: the console says bye
    window.expect(r"^\[leave\] carol left the chat$")
    window.expect(r"^\[members\] #general: bob, gui-alice$")

    # Another room: the window switches to it, its member list follows.
    desktop.type(wid, "/join dev")
    window.expect(r"^\[system\] you are in #dev \(1 here: gui-alice\)$")
    window.expect(r"^\[members\] #dev: gui-alice$")
    bob.send("/join dev")
    window.expect(r"^#dev \[join\] bob joined the room$")
    window.expect(r"^\[members\] #dev: bob, gui-alice$")
    bob.send("the build is green")
    window.expect(r"^#dev bob: the build is green$")
    desktop.type(wid, "/me cheers")
    bob.expect(r"^#dev \* gui-alice cheers$")
    window.expect(r"^#dev \* gui-alice cheers$")

    shot = tmp_path / "gui.png"
    desktop.run("import", "-window", wid, "-strip", "-colors", "64", f"png8:{shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("CHAT_GUI_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / target)

    # /quit in the window leaves cleanly (bye, not a timeout) and closes it.
    desktop.type(wid, "/quit")
    window.expect(r"^\[system\] bye$")
    assert window.wait() == 0
    bob.expect(r"^\[leave\] gui-alice left the chat$")  # "(timed out)" would mean no bye was sent
    bob.expect(r"^#dev \[leave\] gui-alice left the room$")


def test_closing_the_window_by_signal_says_bye(harness: Harness, display: str, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv(gui.ECHO_ENV, "1")
    window = Proc(["client.py", "--gui", *broker.endpoints, "--name", "carol"], "gui", stdin=False)
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
