"""The full-screen console (tui.py): Textual's own pilot drives the app with a stand-in client, snapshots keep
how it looks, and one run of ``python client.py --tui`` on a pseudo-terminal chats through a real broker.

The snapshots live in ``tests/__snapshots__/test_tui/``; after a change meant to alter the look, look at the
report pytest-textual-snapshot writes and accept the new ones with ``pytest tests/test_tui.py --snapshot-update``.
``CHAT_TUI_SCREENSHOT=docs/tui.svg pytest tests/test_tui.py -k screenshot`` refreshes the README's picture.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import unicodedata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyte
import pytest
from conftest import WAIT, Harness, StubClient, Terminal
from rich.text import Text
from textual import events
from textual.pilot import Pilot
from textual.widgets import Input
from wcwidth import wcwidth

import messages as m
import tui
from session import Acked, Said
from views import Activity

pytestmark = pytest.mark.timeout(60)

#: Every line of the scripted conversations is stamped from here (2026-01-05 09:00 UTC) on.
T0 = 1_767_603_600.0
SIZE = (100, 30)


class Wall:
    """The wall clock of the pictures (``fixed_clock``): it moves only when the script says so."""

    now = T0


WALL = Wall()


def utc(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


Client = StubClient  # the shared stand-in (conftest), topic, nick and away included


class LocalChat:
    """The chat side of the app in the test's own thread: a ``TuiConsole`` over the stand-in client, posting to
    the app as the network thread does (``app.post``).  ``feed`` is what the broker would send."""

    def __init__(self, app: tui.ChatApp, name: str, client: Client) -> None:
        self.app = app
        self.client = client
        self.console = tui.TuiConsole(client, app.post)
        self.requests: list[tuple[str, str]] = []
        app.post(tui.Connected(name, "tcp://chat.example.org:5555"))
        self.console.show(f"[system] connected to tcp://chat.example.org:5555 as {name}; /help lists the commands")
        self.console.publish()

    def send(self, kind: str, arg: str = "") -> None:
        self.requests.append((kind, arg))
        going_on = self.console.handle(kind, arg)
        self.console.publish()
        if not going_on:
            self.app.post(tui.Closed())

    def feed(self, *events: Any) -> None:
        for event in events:
            self.console.on_event(event)
        self.console.publish()


def args(name: str | None = "alice", *extra: str) -> argparse.Namespace:
    return tui.parse_args([*(["--name", name] if name else []), *extra])


def make_app(
    name: str | None = "alice", rooms: tuple[str, ...] = ("general",), *extra: str
) -> tuple[tui.ChatApp, dict[str, LocalChat]]:
    """An app whose chat is a ``LocalChat`` (``chats["chat"]`` once it started), with a fixed clock."""
    chats: dict[str, LocalChat] = {}

    def connect(app: tui.ChatApp, user: str) -> LocalChat:
        client = Client(user, rooms=rooms, joined=False)
        chats["chat"] = LocalChat(app, user, client)
        return chats["chat"]

    app = tui.ChatApp(args(name, *extra), connect=connect, stamps=utc, now=lambda: T0 + 29 * 60)
    return app, chats


def run(app: tui.ChatApp, scenario: Callable[[Pilot], Awaitable[None]], size: tuple[int, int] = SIZE) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            app.query_one(tui.ChatInput).cursor_blink = False
            await pilot.pause()
            await scenario(pilot)

    asyncio.run(asyncio.wait_for(main(), WAIT))


# --- A conversation ------------------------------------------------------------------------------------------


def msg(room: str, user: str, text: str, minute: float, me: bool = False, seq: int = 0) -> m.MsgEvent:
    return m.MsgEvent(room=room, user=user, text=text, id=f"{user}-{minute}", ts=T0 + minute * 60, seq=seq, me=me)


def join(room: str, user: str, minute: float) -> m.JoinEvent:
    return m.JoinEvent(room=room, user=user, ts=T0 + minute * 60)


def leave(room: str, user: str, minute: float, reason: str = "left") -> m.LeaveEvent:
    return m.LeaveEvent(room=room, user=user, reason=reason, ts=T0 + minute * 60)


def joined(client: Client, room: str, users: list[str], history: list[Any], topic: str = "", away: Any = None):
    event = client.joined(room, users, history)
    return m.Joined(room=room, users=users, history=history, seq=event.seq, topic=topic, away=away or {})


def conversation(chat: LocalChat) -> None:
    """alice in #general, #dev and a private conversation with carol: what the snapshots and the README show."""
    c = chat.client
    chat.feed(
        joined(
            c,
            "general",
            ["alice", "bob", "carol", "dave", "erin", "frank"],
            [
                msg("general", "bob", "has anyone tried the new relay on the staging hosts?", 1),
                msg("general", "erin", "yes, 3 relays in a chain, no loss after a night of soak", 2),
                msg("general", "dave", "nice. CPU?", 2.5),
                msg("general", "erin", "about 4% each at 10k msgs/s", 3),
            ],
            topic="zmq-chat · be kind · release 2.4 on Friday · https://example.org/notes",
            away={"dave": "lunch"},
        ),
        msg("general", "bob", "morning alice! did you see erin's soak numbers?", 5),
        msg("general", "alice", "just now: no loss and no duplicates across the restarts", 6),
        msg("general", "carol", "waves", 6.5, me=True),
        join("general", "gus", 7),
        msg(
            "general",
            "carol",
            "I'll write the release notes tonight; anything the console needs beside the full-screen "
            "mode and the topic, nick and away commands?",
            8,
        ),
        msg("general", "bob", "alice: can you review the tui branch before lunch?", 9),
        leave("general", "frank", 10, "timeout"),
    )
    chat.feed(
        joined(
            c,
            "dev",
            ["alice", "bob", "erin"],
            [msg("dev", "erin", "CI is green on main", 4)],
            topic="CI: green · deploys at 16:00 UTC",
        ),
    )
    chat.send("switch", "1")
    chat.feed(
        msg("dev", "erin", "pushed the writer-process fix, 0.95 of :memory: now", 12),
        msg("dev", "bob", "merging after lunch", 13),
        m.Dm(user="carol", to="alice", text="lunch at noon? the usual place", ts=T0 + 14 * 60),
        m.JoinEvent(room="dev", user="gus", ts=T0 + 15 * 60),
    )
    WALL.now = T0 + 16 * 60  # an answer a minute later (a line of our own is stamped with the wall clock)
    chat.feed(Acked(Said(id="x", text="deal!", to="carol"), m.Ack(id="x", to="carol")))


async def converse(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, tui.ChatApp)
    conversation(app.connect_chat())  # type: ignore[attr-defined]
    await pilot.pause()


def app_with_conversation(size: tuple[int, int] = SIZE) -> tui.ChatApp:
    app, chats = make_app()
    app.connect_chat = lambda: chats["chat"]  # type: ignore[attr-defined]
    return app


async def typing(pilot: Pilot, text: str, *keys: str) -> None:
    """``text`` into the input line at its cursor, as if typed (one key each is slow), then ``keys`` pressed."""
    box = pilot.app.focused
    assert isinstance(box, Input)
    box.insert_text_at_cursor(text)
    await pilot.press(*keys)


# --- What the screen shows --------------------------------------------------------------------------------------


def shown(app: tui.ChatApp) -> list[str]:
    """The rows of the current view, as drawn."""
    return [strip.text.rstrip() for strip in app.query_one(tui.ChatLog).lines]


def room_rows(app: tui.ChatApp) -> list[str]:
    content = app.query_one(tui.RoomList).content
    assert isinstance(content, Text)
    return [" ".join(row.split()) for row in content.plain.splitlines()]


def style_at(text: Text, word: str) -> str:
    """The style of ``word`` in ``text`` (the spans that cover its first character), as a string."""
    at = text.plain.index(word)
    return " ".join(str(span.style) for span in text.spans if span.start <= at < span.end)


def room_style(app: tui.ChatApp, name: str) -> str:
    content = app.query_one(tui.RoomList).content
    assert isinstance(content, Text)
    return style_at(content, name)


def member_rows(app: tui.ChatApp) -> list[str]:
    content = app.query_one(tui.MemberList).content
    assert isinstance(content, Text)
    return content.plain.splitlines()


def plain(widget: Any) -> str:
    content = widget.content
    return content.plain if isinstance(content, Text) else str(content)


def test_each_view_shows_its_own_lines_and_the_view_list_what_is_unread_there() -> None:
    app, chats = make_app(rooms=("general", "dev", "ops"))

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        c = chat.client
        chat.feed(
            joined(c, "general", ["alice", "bob"], [msg("general", "bob", "said before you came", 1)]),
            joined(c, "dev", ["alice", "erin"], []),
            joined(c, "ops", ["alice"], []),
        )
        chat.feed(
            msg("dev", "erin", "the build is green", 2),
            msg("dev", "erin", "alice: have a look?", 3),
            join("ops", "gus", 4),
            msg("general", "bob", "hello there", 5),
            m.Dm(user="carol", to="alice", text="psst", ts=T0 + 360),
        )
        await pilot.pause()
        rows = shown(app)
        history, rule, live = (
            rows.index(next(r for r in rows if "said before you came" in r)),
            rows.index(next(r for r in rows if "history above, live below" in r)),
            rows.index(next(r for r in rows if "hello there" in r)),
        )
        assert history < rule < live  # the history on joining set apart from what came live
        assert rows[live].startswith("09:05") and rows[live].split("│")[0].rstrip().endswith("bob")
        assert not any("the build is green" in r or "psst" in r for r in rows)  # other views' lines
        assert room_rows(app) == ["1 #general", "2 #dev 2!", "3 #ops", "4 @carol 1!"]
        assert "on #1f3a5f" in room_style(app, "#general")  # the current view
        assert tui.ACTIVITY_STYLE[Activity.MENTION] in room_style(app, "#dev")  # alice was named there
        assert tui.ACTIVITY_STYLE[Activity.EVENTS] in room_style(app, "#ops")  # only a join
        assert tui.ACTIVITY_STYLE[Activity.MENTION] in room_style(app, "@carol")  # a private message
        assert "[Act: 2,4,3]" in plain(app.query_one(tui.StatusBar))  # mentions first, then the rest
        assert member_rows(app) == ["alice", "bob"]

        chat.feed(msg("dev", "bob", "just chatting", 7))
        await pilot.press("alt+2")
        assert app.state.current == "dev"
        assert app.query_one(tui.ChatInput).value == ""  # Alt-2 switched, and typed nothing
        rows = shown(app)
        assert any("the build is green" in r for r in rows) and not any("hello there" in r for r in rows)
        assert room_rows(app)[1] == "2 #dev"  # read now
        assert member_rows(app) == ["alice", "erin"]
        assert plain(app.query_one("#topic")).startswith("#dev  no topic")

    run(app, scenario)


def test_alt_number_window_and_ctrl_n_p_switch_views() -> None:
    app, chats = make_app(rooms=("general", "dev", "ops"))

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        c = chat.client
        chat.feed(*(joined(c, room, ["alice"], []) for room in ("general", "dev", "ops")))
        await pilot.press("alt+3")
        assert app.state.current == "ops"
        await typing(pilot, "/window 2", "enter")
        assert app.state.current == "dev"
        assert any("now in #dev" in r for r in shown(app))  # as the console says it
        await pilot.press("ctrl+n")
        assert app.state.current == "ops"
        await pilot.press("ctrl+n")
        assert app.state.current == "general"  # round again
        await pilot.press("ctrl+p")
        assert app.state.current == "ops"
        await pilot.press("alt+0")  # there is no view 10
        assert app.state.current == "ops"
        await typing(pilot, "/window 9", "enter")
        assert app.state.current == "ops"
        assert any("there is no view 9" in r for r in shown(app))
        assert app.query_one(tui.ChatInput).value == ""
        assert [r for kind, r in chat.requests if kind in ("switch", "step")] == ["3", "1", "1", "-1", "10"]

    run(app, scenario)


def test_a_click_on_a_view_switches_to_it() -> None:
    app, chats = make_app(rooms=("general", "dev"))

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        chat.feed(joined(chat.client, "general", ["alice"], []), joined(chat.client, "dev", ["alice", "erin"], []))
        chat.feed(m.Dm(user="carol", to="alice", text="over here", ts=T0))
        await pilot.pause()
        assert await pilot.click(tui.RoomList, offset=(3, 2))  # the third row: @carol
        await pilot.pause()
        assert app.state.current == "@carol"
        assert any("over here" in r for r in shown(app))
        assert plain(app.query_one("#topic")) == "@carol  private conversation with carol"
        assert member_rows(app) == ["alice", "carol"]
        assert await pilot.click(tui.RoomList, offset=(3, 1))
        await pilot.pause()
        assert app.state.current == "dev"
        assert await pilot.click("#rooms-scroll", offset=(3, 9))  # below the list: nothing
        await pilot.pause()
        assert app.state.current == "dev"
        assert app.query_one(tui.ChatInput).has_focus  # typing goes on where it was

    run(app, scenario)


def test_tab_completes_commands_rooms_and_names_and_again_the_next() -> None:
    app, chats = make_app(rooms=("general", "dev"))

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        chat.feed(
            joined(chat.client, "general", ["alice", "bea", "Bob", "carol"], []),
            joined(chat.client, "dev", ["alice"], []),
        )
        box = app.query_one(tui.ChatInput)
        await typing(pilot, "b", "tab")
        assert box.value == "bea: "  # a name at the start of a line addresses someone
        await pilot.press("tab")
        assert box.value == "Bob: "  # again: the next one
        await pilot.press("tab")
        assert box.value == "bea: "  # and round
        await typing(pilot, "see #d", "tab")
        assert box.value == "bea: see #dev "
        await typing(pilot, "and c", "tab")
        assert box.value == "bea: see #dev and carol "  # a name elsewhere: no colon
        await typing(pilot, "and zz", "tab")
        assert box.value == "bea: see #dev and carol and zz"  # nothing to complete: left as it was
        box.value = ""
        await typing(pilot, "/jo", "tab")
        assert box.value == "/join "
        await typing(pilot, "g", "tab")
        assert box.value == "/join #general "
        box.value = ""
        await typing(pilot, "/msg ca", "tab")
        await typing(pilot, "hi", "enter")
        assert chat.client.calls[-1] == ("dm", "carol", "hi", False)
        await pilot.press("up")
        assert box.value == "/msg carol hi"  # what was typed before
        await pilot.press("down")
        assert box.value == ""

    run(app, scenario)


def test_every_command_goes_through_the_console() -> None:
    app, chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        c = chat.client
        chat.feed(joined(c, "general", ["alice", "bob"], [], topic="old news"))
        await pilot.pause()
        assert plain(app.query_one("#topic")) == "#general  old news"

        async def typed(line: str) -> None:
            await typing(pilot, line, "enter")

        for line in ("hello all", "/me waves", "//slash", "/msg bob hi there", "/who", "/names"):
            await typed(line)
        assert c.calls == [
            ("say", "general", "hello all", False),
            ("say", "general", "waves", True),
            ("say", "general", "/slash", False),
            ("dm", "bob", "hi there", False),
            ("who", "general"),
            ("who", "general"),
        ]
        c.calls.clear()
        for line in ("/topic release on Friday", "/topic -", "/nick alicia", "/away lunch", "/back"):
            await typed(line)
        assert c.calls == [
            ("topic", "general", "release on Friday"),
            ("topic", "general", ""),
            ("nick", "alicia"),
            ("away", "lunch"),
            ("away", ""),
        ]
        # What the broker answers:
        chat.feed(
            m.TopicEvent(room="general", user="alice", topic="release on Friday", ts=T0),
            m.Who(room="general", users=["alice", "bob"], away={"bob": "lunch"}),
            m.Away(reason="lunch"),
        )
        c.user = "alicia"
        chat.feed(m.Renamed(user="alicia", was="alice"))
        await pilot.pause()
        assert plain(app.query_one("#topic")) == "#general  release on Friday"
        assert member_rows(app) == ["alice", "bob (away)"]
        status = plain(app.query_one(tui.StatusBar))
        assert status.startswith("[09:29] [alicia (away)] 1:#general{2}")
        assert "[alicia]" in plain(app.query_one("#prompt"))
        rows = shown(app)
        assert any("[who] #general: alice, bob (away) (2)" in r for r in rows)
        assert any("you are now known as alicia" in r for r in rows)
        assert any("you are marked as away: lunch" in r for r in rows)
        await typed("/topic")
        assert "[topic] #general: release on Friday" in shown(app)[-1]

        await typed("/join dev")
        assert c.calls[-1] == ("join", "dev")
        chat.feed(joined(c, "dev", ["alicia", "erin"], []))
        await pilot.pause()
        assert app.state.current == "dev"  # as the console does: a room joined becomes current
        await typed("/part")
        assert c.calls[-1] == ("leave", "dev")
        chat.feed(c.left("dev"))
        await pilot.pause()
        assert app.state.current == "general" and [v.name for v in app.state.views] == ["general"]

        await typed("/query carol")
        assert app.state.current == "@carol"
        await typed("psst")
        assert c.calls[-1] == ("dm", "carol", "psst", False)
        await typed("/part")  # in a conversation: closes it
        assert app.state.current == "general"

        await typed("/help")
        rows = shown(app)
        assert any("Commands:" in r for r in rows) and any("/window N" in r for r in rows)
        await typed("/bogus")
        assert any("=!=" in r and "unknown command /bogus" in r for r in shown(app))
        await typed("/clear")
        assert shown(app) == []

    run(app, scenario)


def test_own_lines_are_shown_as_the_broker_stores_them_and_a_private_message_opens_a_view() -> None:
    app, chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        chat.feed(joined(chat.client, "general", ["alice", "bob"], []))
        await typing(pilot, "on its way", "enter")
        assert not any("on its way" in r for r in shown(app))  # not before the broker has it
        chat.feed(msg("general", "alice", "on its way", 1))
        await pilot.pause()
        assert any("alice │ on its way" in r for r in shown(app))
        chat.feed(m.Dm(user="dave", to="alice", text="a word?", ts=T0 + 120))
        await pilot.pause()
        assert [v.name for v in app.state.views] == ["general", "@dave"]
        assert room_rows(app)[1] == "2 @dave 1!"
        await pilot.press("alt+2")
        await typing(pilot, "sure", "enter")
        assert chat.client.calls[-1] == ("dm", "dave", "sure", False)
        chat.feed(Acked(Said(id="x", text="sure", to="dave"), m.Ack(id="x", to="dave", away="lunch")))
        await pilot.pause()
        rows = shown(app)
        assert any("dave │ a word?" in r for r in rows)
        assert any("alice │ sure (dave is away: lunch)" in r for r in rows)

    run(app, scenario)


def test_text_from_others_is_text_and_a_wrapped_row_never_starts_a_line() -> None:
    app, chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        chat.feed(joined(chat.client, "general", ["alice", "mallory"], []))
        long = "[bold red]not markup[/] \x1b[2J " + "word " * 40 + "\n09:13      alice │ fake"
        chat.feed(msg("general", "mallory", long, 1))
        await pilot.pause()
        rows = shown(app)
        first = next(i for i, r in enumerate(rows) if "mallory │" in r)
        assert "[bold red]not markup[/] \\x1b[2J" in rows[first]
        rest = [r for r in rows[first + 1 :] if r]
        assert len(rest) >= 3
        assert all(r.startswith(" " * 17 + "│ ") for r in rest)  # under the text, never in the nick column
        assert any("\\x0a09:13" in r for r in rows[first:])  # no line of its own

    run(app, scenario, size=(80, 24))


def test_no_timestamps_and_a_narrow_screen() -> None:
    app, chats = make_app("alice", ("general",), "--no-timestamps")

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        chat.feed(joined(chat.client, "general", ["alice", "bob"], []), msg("general", "bob", "hi", 1))
        await pilot.pause()
        assert any(r.startswith("       bob │ hi") for r in shown(app))
        assert app.query_one("#members-scroll").display
        await pilot.resize_terminal(70, 20)
        await pilot.pause()
        assert not app.query_one("#members-scroll").display  # the text needs the room
        assert app.query_one("#rooms-scroll").display
        assert any(r.startswith("       bob │ hi") for r in shown(app))

    run(app, scenario)


# --- Names and leaving ------------------------------------------------------------------------------------------


def test_without_name_it_asks_and_asks_again_when_the_broker_refuses() -> None:
    names: list[str] = []

    class Refusing:
        def __init__(self, app: tui.ChatApp, name: str) -> None:
            names.append(name)
            if name == "bob":
                app.post(tui.Refused("name_taken", "that name is taken"))
            else:
                self.chat = LocalChat(app, name, Client(name, joined=False))

        def send(self, kind: str, arg: str = "") -> None:
            self.chat.send(kind, arg)

    app = tui.ChatApp(args(None), connect=Refusing, stamps=utc, now=lambda: T0)

    async def scenario(pilot: Pilot) -> None:
        assert isinstance(app.screen, tui.NameScreen)
        await typing(pilot, "bob", "enter")
        await pilot.pause()
        assert isinstance(app.screen, tui.NameScreen)
        assert "that name is taken (name_taken)" in plain(app.screen.query_one("#name-error"))
        await typing(pilot, "carol", "enter")
        await pilot.pause()
        assert not isinstance(app.screen, tui.NameScreen)
        assert names == ["bob", "carol"]
        assert app.state.me == "carol"
        await typing(pilot, "/quit", "enter")
        await pilot.pause()

    run(app, scenario)
    assert app.return_value == tui.Outcome(0, ("[system] bye",))


@pytest.mark.parametrize("keys", ["/quit", "ctrl+c", "ctrl+q", "ctrl+d"])
def test_quit_ctrl_c_ctrl_q_and_ctrl_d_say_bye(keys: str) -> None:
    app, chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        chats["chat"].feed(joined(chats["chat"].client, "general", ["alice"], []))
        if keys.startswith("/"):
            await typing(pilot, keys, "enter")
        else:
            await pilot.press(keys)
        await pilot.pause()
        assert chats["chat"].requests[-1] == ("quit", "")

    run(app, scenario)
    assert app.return_value == tui.Outcome(0, ("[system] bye",))


def test_ctrl_c_on_a_half_typed_line_clears_it_and_only_then_leaves() -> None:
    app, chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        await typing(pilot, "half a li", "ctrl+c")
        assert app.query_one(tui.ChatInput).value == ""
        assert ("quit", "") not in chats["chat"].requests
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert chats["chat"].requests[-1] == ("quit", "")

    run(app, scenario)
    assert app.return_value == tui.Outcome(0, ("[system] bye",))


def test_lines_pasted_together_go_one_by_one() -> None:
    app, chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        chat = chats["chat"]
        chat.feed(joined(chat.client, "general", ["alice", "bob"], []))
        await typing(pilot, "first ")
        line = app.query_one(tui.ChatInput)
        line.post_message(events.Paste("line one\nsecond line\r\nthird, still typing"))
        await pilot.pause()
        assert [call[2] for call in chat.client.calls] == ["first line one", "second line"]
        assert line.value == "third, still typing"

    run(app, scenario)


def test_a_goodbye_that_never_comes_does_not_hold_the_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tui, "CLOSE_GRACE", 0.2)

    class Silent:
        def __init__(self, app: tui.ChatApp, name: str) -> None:
            app.post(tui.Connected(name, "tcp://nowhere"))

        def send(self, kind: str, arg: str = "") -> None:
            pass

    app = tui.ChatApp(args("alice"), connect=Silent, stamps=utc)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause()
        await pilot.press("ctrl+q")
        assert "leaving…" in plain(app.query_one(tui.StatusBar))
        deadline = time.monotonic() + WAIT
        while app.is_running and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert not app.is_running

    run(app, scenario)


def test_undelivered_lines_are_said_after_the_screen_is_gone() -> None:
    app, _chats = make_app()

    async def scenario(pilot: Pilot) -> None:
        app.post(tui.Closed(undelivered=2))
        await pilot.pause()

    run(app, scenario)
    assert app.return_value == tui.Outcome(
        1, ("[error] 2 lines were not delivered: the broker did not acknowledge them", "[system] bye")
    )


# --- How it looks ----------------------------------------------------------------------------------------------


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console's own lines are stamped with the wall clock: a clock of the test's own here (``WALL``), for
    pictures that never change."""
    WALL.now = T0 + 4 * 60
    monkeypatch.setattr(time, "time", lambda: WALL.now)


async def still(pilot: Pilot) -> None:
    pilot.app.query_one(tui.ChatInput).cursor_blink = False
    await converse(pilot)


def test_snapshot_the_conversation(snap_compare: Any, fixed_clock: None) -> None:
    assert snap_compare(app_with_conversation(), terminal_size=SIZE, run_before=still)


def test_snapshot_a_private_conversation(snap_compare: Any, fixed_clock: None) -> None:
    assert snap_compare(app_with_conversation(), terminal_size=SIZE, run_before=still, press=["alt+3"])


def test_snapshot_a_narrow_terminal(snap_compare: Any, fixed_clock: None) -> None:
    assert snap_compare(app_with_conversation(), terminal_size=(72, 20), run_before=still, press=["alt+2"])


def test_screenshot(tmp_path: Path, fixed_clock: None) -> None:
    """The README's picture (``CHAT_TUI_SCREENSHOT=docs/tui.svg`` writes it there)."""
    target = Path(os.environ.get("CHAT_TUI_SCREENSHOT") or tmp_path / "tui.svg")
    app = app_with_conversation()

    async def scenario(pilot: Pilot) -> None:
        await converse(pilot)
        await typing(pilot, "b", "tab")
        await typing(pilot, "sure, looking at it now")
        await pilot.pause()
        target.write_text(app.export_screenshot(title="zmq-chat — alice"))

    run(app, scenario, size=(110, 32))
    svg = target.read_text()
    assert "morning" in svg and "deal!" not in svg  # #general on the screen, not the private conversation


# --- The real thing ------------------------------------------------------------------------------------------


class TuiScreen:
    """What a terminal shows of ``term``'s output: pyte's model of a screen of its size."""

    def __init__(self, term: Terminal, columns: int, lines: int) -> None:
        self.term = term
        self.size = (columns, lines)

    def rows(self) -> list[str]:
        screen = pyte.Screen(*self.size)
        text = "".join(c for c in self.term.raw if wcwidth(c) != 0 or unicodedata.combining(c) or c in "\r\n\t\x1b")
        pyte.Stream(screen).feed(text)
        return [row.rstrip() for row in screen.display]

    def expect(self, text: str, timeout: float = WAIT) -> list[str]:
        """The rows, once one of them shows ``text``."""
        return self.until(lambda rows: any(text in row for row in rows), repr(text), timeout)

    def until(self, condition: Callable[[list[str]], bool], what: str, timeout: float = WAIT) -> list[str]:
        """The rows, once ``condition`` holds for them (a frame may be read half written: asked again)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if condition(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not on the screen within {timeout}s:\n" + "\n".join(rows))
            time.sleep(0.05)  # polling what the reader thread collects: the condition synchronises


def test_client_tui_chats_through_a_real_broker(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    term = Terminal(["client.py", "--tui", *broker.endpoints, "--room", "general", "--room", "dev"], 100, 30)
    try:
        screen = TuiScreen(term, 100, 30)
        screen.expect("Enter a username:")
        term.type("alice\r")
        screen.expect("you are in #general")
        bob.expect(r"^\[join\] alice joined the chat$")
        bob.send("hello from bob")
        screen.until(
            lambda rows: (
                any("bob │ hello from bob" in row for row in rows)
                and any(row.startswith(" 1 #general") for row in rows)
                and any(row.startswith(" 2 #dev") for row in rows)
            ),
            "bob's line in #general, and the view list",
        )
        term.type("\x1b2")  # Alt-2, as xterm, GNOME Terminal and tmux send it
        screen.until(
            lambda rows: rows[0].startswith(" #dev ") and any("you are in #dev" in row for row in rows),
            "#dev, its topic bar and its lines",
        )
        term.type("/window 1\r")
        screen.expect("now in #general")
        term.type("hi bob\r")
        bob.expect(r"^alice: hi bob$")
        screen.expect("alice │ hi bob")  # as the broker stored it
        # The chat features through the real broker: topic, nick, away, and a private conversation.
        term.type("/topic deploy at noon\r")
        bob.expect(r"^\[topic\] alice set the topic: deploy at noon$")
        screen.until(lambda rows: rows[0].startswith(" #general  deploy at noon"), "the topic bar")
        term.type("/nick alicia\r")
        bob.expect(r"^\[nick\] alice is now known as alicia$")
        screen.expect("you are now known as alicia")
        term.type("/away lunch\r")
        screen.expect("you are marked as away: lunch")
        bob.send("/msg alicia are you there?")
        bob.expect(r"^\[dm -> alicia\] are you there\? \(alicia is away: lunch\)$")
        screen.until(lambda rows: any(row.startswith(" 3 @bob") for row in rows), "bob's conversation in the list")
        term.type("/query bob\r")
        term.type("back in 5\r")  # at once, as a fast typist: it must not join the line before it
        bob.expect(r"^\[dm\] alicia: back in 5$")
        term.type("\x03")  # Ctrl-C
        assert term.proc.wait(WAIT) == 0
        bob.expect(r"^\[leave\] alicia left the chat$")
        assert "[system] bye" in term.screen
    finally:
        term.close()
