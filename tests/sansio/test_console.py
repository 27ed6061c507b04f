"""The console UI logic: render() lines, and Console with a stand-in client (no sockets)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from conftest import StubClient

import messages as m
from console import (
    BELL,
    CLEAR_SCREEN,
    NAME_COLOURS,
    Console,
    Snapshot,
    history_rule,
    name_style,
    status_line,
    styled,
)
from display import HELP, Line, clock, colour_of, error_text, label, line_of, readable, render
from session import Acked, Change, Failed, Rejoined, Said, Status
from views import Views

FakeClient = StubClient  # the shared stand-in (conftest)


def console(user: str = "me", rooms: tuple[str, ...] = ("general",)) -> tuple[Console, FakeClient, io.StringIO]:
    fake = FakeClient(user, rooms)
    out = io.StringIO()
    return Console(fake, out=out), fake, out  # type: ignore[arg-type]


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def msg(user: str = "alice", text: str = "hi", room: str = "general", **extra: Any) -> m.MsgEvent:
    return m.MsgEvent(room=room, user=user, text=text, id="x", seq=1, ts=0.0, **extra)


def dm_acked(text: str, to: str = "bob", ack_to: str | None = None, msg_id: str = "d") -> Acked:
    """The ack of a dm we sent to ``to``; the broker's ack names the recipient as it spells it (``ack_to``)."""
    ack = m.Ack(id=msg_id) if ack_to is None else m.Ack(id=msg_id, to=ack_to)
    return Acked(request=Said(id=msg_id, to=to, text=text), ack=ack)


# --- render -------------------------------------------------------------------------------


def test_render_msg_in_general() -> None:
    assert render(msg(), "me") == "alice: hi"


def test_render_msg_in_another_room() -> None:
    assert render(msg(room="dev"), "me") == "#dev alice: hi"


def test_render_me_action() -> None:
    assert render(msg(text="waves", me=True), "me") == "* alice waves"


def test_render_me_action_in_another_room() -> None:
    assert render(msg(text="waves", room="dev", me=True), "me") == "#dev * alice waves"


def test_render_msg_with_me_false_is_no_action() -> None:
    assert render(msg(text="waves", me=False), "me") == "alice: waves"


def test_render_join_in_general() -> None:
    assert render(m.JoinEvent(room="general", user="alice"), "me") == "[join] alice joined the chat"


def test_render_join_in_another_room() -> None:
    assert render(m.JoinEvent(room="dev", user="alice"), "me") == "#dev [join] alice joined the room"


def test_render_leave_in_general() -> None:
    # /leave general: alice may still be in other rooms, so not "left the chat"
    event = m.LeaveEvent(room="general", user="alice", reason="left")
    assert render(event, "me") == "[leave] alice left #general"


def test_render_quit_reads_like_leave() -> None:
    event = m.LeaveEvent(room="general", user="alice", reason="quit")
    assert render(event, "me") == "[leave] alice left the chat"


def test_render_leave_by_timeout() -> None:
    event = m.LeaveEvent(room="general", user="alice", reason="timeout")
    assert render(event, "me") == "[leave] alice left the chat (timed out)"


def test_render_leave_in_another_room() -> None:
    event = m.LeaveEvent(room="dev", user="alice", reason="left")
    assert render(event, "me") == "#dev [leave] alice left the room"


def test_render_dm() -> None:
    event = m.Dm(user="bob", to="me", text="psst", id="d", ts=0.0)
    assert render(event, "me") == "[dm] bob: psst"


def test_render_dm_action() -> None:
    event = m.Dm(user="bob", to="me", text="nods", id="d", ts=0.0, me=True)
    assert render(event, "me") == "[dm] * bob nods"


def test_render_dm_ack_shows_what_was_sent() -> None:
    assert render(dm_acked("psst", to="bob", ack_to="Bob"), "me") == "[dm -> Bob] psst"


def test_render_dm_ack_without_to_names_the_recipient_as_written() -> None:
    assert render(dm_acked("psst", to="bob"), "me") == "[dm -> bob] psst"


def test_render_msg_ack_shows_nothing() -> None:
    event = Acked(request=Said(id="m", room="general", text="hi"), ack=m.Ack(id="m", room="general", seq=3))
    assert render(event, "me") is None


def test_render_ack_for_an_unknown_id_shows_nothing() -> None:
    # The session drops an ack whose id it no longer holds (e.g. a duplicate ack); a bare ack shows nothing.
    assert render(m.Ack(id="gone", room="general", seq=3), "me") is None


def test_render_error() -> None:
    event = Failed(error=m.Error(code="rate_limited", detail="too many requests; slow down"))
    assert render(event, "me") == "[error] too many requests; slow down (rate_limited)"


def test_render_error_of_a_message() -> None:
    said = Said(id="x", to="nobody", text="psst")
    event = Failed(error=m.Error(code="no_such_user", detail="no user nobody", id="x"), request=said)
    assert render(event, "me") == "[error] no user nobody (no_such_user)"


def test_render_refused_join() -> None:
    event = Failed(error=m.Error(code="bad_name", detail="bad room name", id="j"), room="x y")
    assert render(event, "me") == "[error] bad room name (bad_name)"


def test_render_retry_after_rate_limit() -> None:
    said = Said(id="x", room="general", text="hi")
    event = Failed(error=m.Error(code="rate_limited", detail="slow down", id="x"), request=said, retrying=True)
    assert render(event, "me") == "[system] sending too fast; your message will be sent in a moment"


def test_render_retry_while_the_broker_cannot_store() -> None:
    said = Said(id="x", room="general", text="hi")
    event = Failed(error=m.Error(code="unavailable", detail="disk full", id="x"), request=said, retrying=True)
    line = "[system] the broker cannot store messages just now; yours will be sent when it can"
    assert render(event, "me") == line


def test_render_who() -> None:
    assert render(m.Who(room="general", users=["alice", "bob"]), "me") == "[who] #general: alice, bob (2)"


def test_render_who_of_an_empty_room() -> None:
    assert render(m.Who(room="dev", users=[]), "me") == "[who] #dev: nobody (0)"


def test_render_joined() -> None:
    event = m.Joined(room="dev", users=["alice", "me"], history=[], seq=4)
    assert render(event, "me") == "[system] you are in #dev (2 here: alice, me)"


def test_render_left() -> None:
    assert render(m.Left(room="dev"), "me") == "[system] you left #dev"


@pytest.mark.parametrize(
    ("state", "line"),
    [
        (Change.LOST, "[system] connection lost, reconnecting…"),
        (Change.RESTORED, "[system] connection restored"),
        (Change.RECONNECTED, "[system] reconnected"),
        (Change.SHUTDOWN, "[system] the broker is shutting down; waiting for it to come back…"),
        (
            Change.FEED_LOST,
            "[system] no news from the feed (a relay down?); what is said meanwhile comes when it is back",
        ),
        (Change.FEED_RESTORED, "[system] the feed is back; fetching what was missed"),
    ],
)
def test_render_status(state: Change, line: str) -> None:
    assert render(Status(state), "me") == line


@pytest.mark.parametrize(
    "event",
    [
        Status("weird"),  # type: ignore[arg-type]  # a state this console does not know
        m.Heartbeat(epoch="e", ts=1.0),
        m.Welcome(user="me"),
        m.Pong(),
        m.History(room="general", events=[]),
        m.Rooms(rooms={"general": 3}),
        m.Shutdown(epoch="e"),  # the session turns it into Status(SHUTDOWN)
        Rejoined(m.Joined(room="general", users=["me"])),
        m.OtherEvent(type="poll", room="general", seq=3),  # a newer broker's room event
        object(),  # something newer
        None,
    ],
    ids=lambda event: type(event).__name__,  # not repr: an object()'s address differs between processes
)
def test_render_ignores_other_events(event: Any) -> None:
    assert render(event, "me") is None


# --- hostile text -------------------------------------------------------------------------

HOSTILE = "\x1b[2J\x1b[Hhi\nbob: fake\r\u202eevil\x9b31m"
ESCAPED = "\\x1b[2J\\x1b[Hhi\\x0abob: fake\\x0d\\u202eevil\\x9b31m"


def test_render_escapes_hostile_msg_text() -> None:
    assert render(msg(text=HOSTILE), "me") == f"alice: {ESCAPED}"


def test_render_escapes_hostile_me_text() -> None:
    assert render(msg(text=HOSTILE, me=True), "me") == f"* alice {ESCAPED}"


def test_render_escapes_hostile_dm_text() -> None:
    assert render(m.Dm(user="bob", to="me", text=HOSTILE), "me") == f"[dm] bob: {ESCAPED}"


def test_render_escapes_the_own_dm_text_in_an_ack() -> None:
    assert render(dm_acked(HOSTILE, to="bob", ack_to="bob"), "me") == f"[dm -> bob] {ESCAPED}"


def test_render_escapes_hostile_error_detail() -> None:
    assert render(Failed(error=m.Error(code="x", detail=HOSTILE)), "me") == f"[error] {ESCAPED} (x)"


def test_rendered_hostile_line_is_one_printable_line() -> None:
    line = render(msg(text=HOSTILE), "me")
    assert line is not None
    assert line.isprintable()


# --- Console: typed lines -----------------------------------------------------------------


def test_plain_text_goes_to_the_current_room() -> None:
    con, fake, _ = console()
    assert con.on_line("hello there\n") is True
    assert fake.calls == [("say", "general", "hello there", False)]


def test_current_room_starts_as_the_first_wanted_room() -> None:
    con, fake, _ = console(rooms=("dev", "general"))
    con.on_line("hi")
    assert fake.calls == [("say", "dev", "hi", False)]


def test_double_slash_sends_text_starting_with_a_slash() -> None:
    con, fake, _ = console()
    con.on_line("//x")
    assert fake.calls == [("say", "general", "/x", False)]


def test_double_slash_keeps_the_rest_verbatim() -> None:
    con, fake, _ = console()
    con.on_line("//quit now")
    assert fake.calls == [("say", "general", "/quit now", False)]


@pytest.mark.parametrize("line", ["", "   ", "\n", "\r\n", "\t"], ids=repr)
def test_empty_line_is_ignored(line: str) -> None:
    con, fake, out = console()
    assert con.on_line(line) is True
    assert fake.calls == []
    assert out.getvalue() == ""


def test_text_with_no_current_room_is_an_error() -> None:
    con, fake, out = console(rooms=())
    con.on_line("hello")
    assert fake.calls == []
    assert lines(out) == ["[error] you are in no room; /join one"]


def test_msg_sends_a_dm() -> None:
    con, fake, _ = console()
    con.on_line("/msg bob hello there")
    assert fake.calls == [("dm", "bob", "hello there", False)]


@pytest.mark.parametrize("line", ["/msg", "/msg bob", "/msg bob   "], ids=repr)
def test_msg_without_text_shows_usage(line: str) -> None:
    con, fake, out = console()
    con.on_line(line)
    assert fake.calls == []
    assert lines(out) == ["[error] usage: /msg NAME TEXT"]


def test_me_says_an_action_in_the_current_room() -> None:
    con, fake, _ = console()
    con.on_line("/me waves")
    assert fake.calls == [("say", "general", "waves", True)]


def test_me_without_action_shows_usage() -> None:
    con, fake, out = console()
    con.on_line("/me")
    assert fake.calls == []
    assert lines(out) == ["[error] usage: /me ACTION"]


def test_me_with_no_current_room_is_an_error() -> None:
    con, fake, out = console(rooms=())
    con.on_line("/me waves")
    assert fake.calls == []
    assert lines(out) == ["[error] you are in no room; /join one"]


def test_join_asks_the_client_and_switches_on_joined() -> None:
    con, fake, _ = console()
    con.on_line("/join dev")
    assert fake.calls == [("join", "dev")]
    assert con.current == "general"  # not yet: the broker has not answered
    con.on_event(fake.joined("dev"))
    assert con.current == "dev"
    con.on_line("hi")
    assert fake.calls[-1] == ("say", "dev", "hi", False)


def test_join_normalises_hash_and_case() -> None:
    con, fake, _ = console()
    con.on_line("/join #Dev")
    assert fake.calls == [("join", "dev")]


def test_joined_for_a_room_not_asked_for_does_not_switch() -> None:
    con, fake, _ = console()
    con.on_event(fake.joined("ops"))
    assert con.current == "general"


def test_join_of_a_room_already_in_switches_at_once() -> None:
    con, fake, out = console(rooms=("general", "dev"))
    con.on_line("/join dev")
    assert fake.calls == []
    assert con.current == "dev"
    assert lines(out) == ["[system] now talking in #dev"]


def test_join_without_room_shows_usage() -> None:
    con, fake, out = console()
    con.on_line("/join")
    assert fake.calls == []
    assert lines(out) == ["[error] usage: /join ROOM"]


def test_leave_defaults_to_the_current_room() -> None:
    con, fake, _ = console()
    con.on_line("/leave")
    assert fake.calls == [("leave", "general")]


def test_leave_a_named_room() -> None:
    con, fake, _ = console(rooms=("general", "dev"))
    con.on_line("/leave #dev")
    assert fake.calls == [("leave", "dev")]


def test_leave_with_no_current_room_shows_usage() -> None:
    con, fake, out = console(rooms=())
    con.on_line("/leave")
    assert fake.calls == []
    assert lines(out) == ["[error] usage: /leave ROOM"]


def test_left_current_room_falls_back_to_general() -> None:
    con, fake, _ = console(rooms=("general", "dev"))
    con.on_line("/join dev")
    con.on_event(fake.left("dev"))
    assert con.current == "general"


def test_left_general_falls_back_to_another_room() -> None:
    con, fake, _ = console(rooms=("general", "dev"))
    con.on_event(fake.left("general"))
    assert con.current == "dev"


def test_left_last_room_leaves_no_current_room() -> None:
    con, fake, out = console()
    con.on_event(fake.left("general"))
    assert con.current is None
    assert lines(out) == ["[system] you left #general"]


def test_left_another_room_keeps_the_current_one() -> None:
    con, fake, _ = console(rooms=("general", "dev"))
    con.on_event(fake.left("dev"))
    assert con.current == "general"


def test_who_defaults_to_the_current_room() -> None:
    con, fake, _ = console()
    con.on_line("/who")
    assert fake.calls == [("who", "general")]


def test_who_a_named_room() -> None:
    con, fake, _ = console()
    con.on_line("/who #Dev")
    assert fake.calls == [("who", "dev")]


def test_who_with_no_current_room_shows_usage() -> None:
    con, fake, out = console(rooms=())
    con.on_line("/who")
    assert fake.calls == []
    assert lines(out) == ["[error] usage: /who ROOM"]


def test_rooms_lists_the_rooms_and_marks_the_current_one() -> None:
    con, _, out = console(rooms=("general", "dev"))
    con.on_line("/rooms")
    assert lines(out) == ["[rooms] #general (current), #dev"]


def test_rooms_when_in_none() -> None:
    con, _, out = console(rooms=())
    con.on_line("/rooms")
    assert lines(out) == ["[rooms] none"]


def test_help_shows_the_help() -> None:
    con, fake, out = console()
    assert con.on_line("/help") is True
    assert out.getvalue() == HELP + "\n"
    assert fake.calls == []


def test_unknown_command_is_an_error() -> None:
    con, fake, out = console()
    assert con.on_line("/teleport home") is True
    assert fake.calls == []
    assert lines(out) == ["[error] unknown command /teleport; /help lists the commands"]


def test_unknown_command_is_shown_escaped() -> None:
    con, _, out = console()
    con.on_line("/x\x1b[2J")
    assert lines(out) == ["[error] unknown command /x\\x1b[2J; /help lists the commands"]


@pytest.mark.parametrize("line", ["/quit", "/exit", "/QUIT", "/exit now", "/quit\n"])
def test_quit_and_exit_return_false(line: str) -> None:
    con, fake, _ = console()
    assert con.on_line(line) is False
    assert fake.calls == []


@pytest.mark.parametrize("line", ["hello", "/help", "/who", "/rooms", "/nonsense", "//quit"])
def test_other_lines_return_true(line: str) -> None:
    con, _, _ = console()
    assert con.on_line(line) is True


def test_commands_are_case_insensitive() -> None:
    con, fake, _ = console()
    con.on_line("/MSG bob hi")
    con.on_line("/Me waves")
    assert fake.calls == [("dm", "bob", "hi", False), ("say", "general", "waves", True)]


def test_prompt_shows_the_current_room_unless_general() -> None:
    con, fake, _ = console()
    assert con.prompt() == "> "
    con.on_line("/join dev")
    con.on_event(fake.joined("dev"))
    assert con.prompt() == "#dev> "


# --- Console: events ----------------------------------------------------------------------


def test_on_event_shows_other_users_messages() -> None:
    con, _, out = console()
    con.on_event(msg("alice", "hi"))
    assert lines(out) == ["alice: hi"]


@pytest.mark.parametrize(
    "event",
    [
        msg("me", "my own words"),
        msg("me", "waves", me=True),
        m.JoinEvent(room="general", user="me", seq=1),
        m.LeaveEvent(room="dev", user="me", reason="left", seq=2),
    ],
    ids=["msg", "me-action", "join", "leave"],
)
def test_on_event_does_not_print_the_users_own_events(event: m.RoomEvent) -> None:
    con, _, out = console(user="me")
    con.on_event(event)
    assert out.getvalue() == ""


def test_own_events_are_still_ours_while_reconnecting() -> None:
    con, fake, out = console(user="me")
    fake.user = None  # no session just now: the name we asked for is still ours
    con.on_event(msg("me", "resent"))
    con.on_event(m.JoinEvent(room="general", user="me", seq=3))
    assert out.getvalue() == ""


def test_on_event_prints_other_users_join_and_leave() -> None:
    con, _, out = console(user="me")
    con.on_event(m.JoinEvent(room="general", user="alice"))
    con.on_event(m.LeaveEvent(room="general", user="alice", reason="timeout"))
    assert lines(out) == ["[join] alice joined the chat", "[leave] alice left the chat (timed out)"]


def test_a_join_resumed_after_a_broker_restart_is_not_shown() -> None:
    con, _, out = console(user="me")
    con.on_event(m.JoinEvent(room="general", user="alice", resumed=True, seq=4))
    assert out.getvalue() == ""


def test_on_event_shows_the_users_own_dm_ack() -> None:
    con, _, out = console(user="me")
    con.on_event(dm_acked("psst", to="bob", ack_to="bob"))
    assert lines(out) == ["[dm -> bob] psst"]


def test_on_event_shows_nothing_for_the_ack_of_a_message() -> None:
    con, _, out = console(user="me")
    con.on_event(Acked(request=Said(id="m", room="general", text="hi"), ack=m.Ack(id="m", room="general", seq=2)))
    assert out.getvalue() == ""


def test_on_event_prints_nothing_for_unrendered_events() -> None:
    con, _, out = console()
    con.on_event(m.Heartbeat(epoch="e", ts=0.0))
    assert out.getvalue() == ""


def test_on_event_shows_status_changes() -> None:
    con, _, out = console()
    con.on_event(Status(Change.LOST))
    con.on_event(Status(Change.RECONNECTED, "e2"))
    assert lines(out) == ["[system] connection lost, reconnecting…", "[system] reconnected"]


def test_a_room_rejoined_after_a_reconnect_is_not_announced() -> None:
    con, fake, out = console(rooms=("general", "dev"))
    con.on_line("/join ops")
    rejoined = fake.joined("ops", users=["me", "alice"], history=[msg("alice", "old", room="ops")])
    con.on_event(Rejoined(rejoined))
    assert out.getvalue() == ""  # what was missed arrives as ordinary events
    assert con.current == "general"


def test_a_refused_join_is_shown_and_switches_to_nothing() -> None:
    con, fake, out = console()
    con.on_line("/join dev")
    con.on_event(Failed(error=m.Error(code="too_many_rooms", detail="in too many rooms", id="j"), room="dev"))
    assert lines(out) == ["[error] in too many rooms (too_many_rooms)"]
    con.on_event(fake.joined("dev"))  # joined later, some other way: not the /join that was refused
    assert con.current == "general"


def test_retry_notices_are_shown_once_per_round(monkeypatch: pytest.MonkeyPatch) -> None:
    con, fake, out = console()
    clock = [100.0]
    monkeypatch.setattr("console.time.monotonic", lambda: clock[0])

    def refused(msg_id: str) -> Failed:
        said = Said(id=msg_id, room="general", text="hi")
        return Failed(error=m.Error(code="rate_limited", detail="slow down", id=msg_id), request=said, retrying=True)

    con.on_event(refused("a"))
    con.on_event(refused("b"))
    clock[0] += fake.ack_timeout - 0.1
    con.on_event(refused("c"))
    assert lines(out) == ["[system] sending too fast; your message will be sent in a moment"]
    clock[0] += 0.2
    con.on_event(refused("d"))
    assert lines(out) == ["[system] sending too fast; your message will be sent in a moment"] * 2


def test_joined_shows_the_system_line_and_the_recent_messages_in_order() -> None:
    con, fake, out = console()
    history: list[m.RoomEvent] = [
        m.JoinEvent(room="dev", user="alice", seq=1),
        msg("alice", "earlier", room="dev"),
        msg("bob", "later", room="dev"),
    ]
    con.on_event(fake.joined("dev", users=["alice", "bob", "me"], history=history))
    shown = lines(out)
    assert sorted(shown) == sorted(
        ["#dev alice: earlier", "#dev bob: later", "[system] you are in #dev (3 here: alice, bob, me)"]
    )
    assert shown.index("#dev alice: earlier") < shown.index("#dev bob: later")


def test_joined_shows_at_most_twenty_past_messages_the_latest_ones() -> None:
    con, fake, out = console()
    history: list[m.RoomEvent] = [msg("alice", f"m{i}") for i in range(30)]
    con.on_event(fake.joined("general", history=history))
    past = [line for line in lines(out) if line.startswith("alice: ")]
    assert past == [f"alice: m{i}" for i in range(10, 30)]


def test_a_dm_to_myself_is_shown_once() -> None:
    con, _fake, out = console("me")
    me = "me"
    con.on_event(m.Dm(user=me, to=me, text="note", id="d", ts=0.0))
    con.on_event(dm_acked("note", to=me, ack_to=me))
    assert out.getvalue() == f"[dm -> {me}] note\n"


# --- The console on a terminal: how lines look (``styled``), and what only a terminal gets -------------

T = 1_700_000_000.0  # a wall-clock time
HHMM = clock(T) + " "


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


Client = StubClient  # the shared stand-in (conftest), topic, nick and away included


def tty_console(user: str = "me", rooms: tuple[str, ...] = ("general",), **kw: Any) -> tuple[Console, Client, Tty]:
    fake = Client(user, rooms)
    out = Tty()
    return Console(fake, out=out, **kw), fake, out  # type: ignore[arg-type]


SGR = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    return SGR.sub("", text)


def msg_line(user: str = "bob", text: str = "hi", room: str = "general", **extra: Any) -> Line:
    """The line of ``user``'s message as ``me`` sees it."""
    line = line_of(m.MsgEvent(room=room, user=user, text=text, id="x", seq=1, ts=T, **extra), "me")
    assert line is not None
    return line


def test_a_name_has_one_of_twelve_colours_always_the_same() -> None:
    assert len(NAME_COLOURS) == 12 == len(set(NAME_COLOURS))
    assert name_style("bob") == NAME_COLOURS[colour_of("bob")] == name_style("Bob")
    assert len({name_style(f"user{i}") for i in range(200)}) == 12


def test_styled_msg_time_grey_name_in_its_colour_text_plain() -> None:
    assert styled(msg_line(), "general") == [(HHMM, "90"), ("bob", name_style("bob")), (": ", ""), ("hi", "")]


def test_styled_without_timestamps() -> None:
    assert styled(msg_line(), "general", timestamps=False)[0] == ("bob", name_style("bob"))


def test_styled_labels_another_rooms_line() -> None:
    assert styled(msg_line(room="dev"), "general")[:2] == [(HHMM, "90"), ("#dev ", "1")]
    assert styled(msg_line(room="dev"), "dev")[1] == ("bob", name_style("bob"))


def test_styled_action() -> None:
    line = msg_line(text="waves", me=True)
    assert styled(line, "general")[1:] == [("* ", ""), ("bob", name_style("bob")), (" ", ""), ("waves", "")]


def test_styled_own_line_bold_in_the_terminals_colour() -> None:
    line = Line("msg", "hello", "me: ", "general", None, "me", T, mine=True)
    assert styled(line, "general")[1:] == [("me", "1"), (": ", ""), ("hello", "")]


def test_styled_mention_name_reversed_text_bold() -> None:
    line = msg_line(text="hey me, look")
    assert line.mention
    assert styled(line, "general")[1:] == [("bob", "7;" + name_style("bob")), (": ", ""), ("hey me, look", "1")]


def test_styled_private_messages_both_ways() -> None:
    incoming = line_of(m.Dm(user="bob", to="me", text="psst", ts=T), "me")
    assert incoming is not None
    assert styled(incoming, "general")[1:] == [
        ("[dm] ", "36"),
        ("bob", "7;" + name_style("bob")),  # a private message to me is a mention
        (": ", "36"),
        ("psst", "1"),
    ]
    sent = line_of(dm_acked("psst", to="bob", ack_to="bob"), "me")
    assert sent is not None
    assert styled(sent, "general", timestamps=False) == [
        ("[dm -> ", "36"),
        ("bob", name_style("bob")),
        ("] ", "36"),
        ("psst", ""),
    ]


@pytest.mark.parametrize("name", ["d", "m", "dm", "-"])
def test_styled_finds_a_short_name_as_a_word_not_inside_the_tag(name: str) -> None:
    incoming = Line("dm", "psst", f"[dm] {name}: ", None, name, name, T, mention=False)
    assert (name, name_style(name)) in styled(incoming, None, timestamps=False)
    assert styled(incoming, None, timestamps=False)[0] == ("[dm] ", "36")
    sent = Line("dm", "psst", f"[dm -> {name}] ", None, name, "me", T, mine=True)
    assert styled(sent, None, timestamps=False)[:2] == [("[dm -> ", "36"), (name, name_style(name))]


def test_styled_notices_grey_errors_red_tags_coloured() -> None:
    join = line_of(m.JoinEvent(room="general", user="bob", ts=T), "me")
    assert join is not None
    assert styled(join, "general") == [(HHMM, "90"), ("[join] bob joined the chat", "90")]
    error = Line("error", "[error] nope (x)", ts=T)
    assert styled(error, "general")[1:] == [("[error] nope (x)", "91")]
    system = Line("system", "[system] you are in #dev", room="dev", ts=T)
    assert styled(system, "general")[1:] == [("[system] ", "36"), ("you are in #dev", "")]


@pytest.mark.parametrize(
    "line",
    [
        msg_line(),
        msg_line(room="dev", text="x me y"),
        msg_line(text="waves", me=True, room="ops"),
        Line("dm", "a", "[dm] * me ", None, "me", "me", T, mine=True),
        Line("system", "[system] x", ts=T),
        Line("system", HELP, ts=T),
        Line("who", "[who] #general: a, b (2)", ts=T),
    ],
    ids=repr,
)
def test_styled_text_is_the_time_the_label_and_the_line(line: Line) -> None:
    for stamp in (True, False):
        text = "".join(text for text, _ in styled(line, "general", stamp))
        expected = label(line, "general") + line.text
        if stamp:
            expected = "\n".join(clock(line.ts) + " " + row for row in expected.split("\n"))
        assert text == expected


def test_help_on_a_terminal_has_the_time_on_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "132")  # wide enough for the help's rows
    con, _, out = tty_console()
    con.on_line("/help")
    rows = plain(out.getvalue()).rstrip("\n").split("\n")
    assert len(rows) == len(HELP.split("\n"))
    assert all(re.match(r"\d\d:\d\d ", row) for row in rows)
    assert [row[6:] for row in rows] == HELP.split("\n")


# --- on a terminal and in a pipe ---


def test_a_terminal_gets_the_time_and_colours_a_pipe_the_plain_line() -> None:
    con, _, out = tty_console()
    con.on_event(msg(text="hi there"))
    shown = out.getvalue()
    assert "\x1b[" in shown
    assert re.fullmatch(r"\d\d:\d\d bob: hi there\n", plain(shown).replace("alice", "bob"))
    piped, _, pipe_out = console()
    piped.on_event(msg(text="hi there"))
    assert pipe_out.getvalue() == "alice: hi there\n"


def test_no_timestamps_on_a_terminal() -> None:
    con, _, out = tty_console(timestamps=False)
    con.on_event(msg(text="hi"))
    assert plain(out.getvalue()) == "alice: hi\n"


def test_a_mention_rings_the_bell_on_a_terminal_only() -> None:
    con, _, out = tty_console()
    con.on_event(msg(text="me: are you there?"))
    con.on_event(msg(text="no one here"))
    con.on_event(msg(text="meh, not a mention"))
    con.on_event(m.Dm(user="bob", to="me", text="psst"))
    assert out.getvalue().count(BELL) == 2
    piped, _, pipe_out = console()
    piped.on_event(msg(text="me: are you there?"))
    assert BELL not in pipe_out.getvalue()


def test_a_mention_in_history_rings_no_bell() -> None:
    con, fake, out = tty_console()
    con.on_event(fake.joined("general", history=[msg(text="me: earlier")]))
    assert BELL not in out.getvalue()


def test_hostile_text_cannot_ring_the_bell_or_colour_anything() -> None:
    con, _, out = tty_console()
    con.on_event(msg(text="\x07\x1b[31mred\x1b[0m"))
    shown = out.getvalue()
    assert BELL not in shown
    assert "\\x07\\x1b[31mred\\x1b[0m" in plain(shown)


def test_the_history_shown_on_joining_ends_with_a_rule_on_a_terminal() -> None:
    con, fake, out = tty_console()
    con.on_line("/join dev")
    con.on_event(fake.joined("dev", users=["bob", "me"], history=[msg("bob", "earlier", room="dev")]))
    con.on_event(msg("bob", "live", room="dev"))
    rows = [row[6:] if re.match(r"\d\d:\d\d ", row) else row for row in plain(out.getvalue()).splitlines()]
    assert rows == ["[system] you are in #dev (2 here: bob, me)", "bob: earlier", history_rule("dev"), "bob: live"]


def test_no_rule_without_history_and_none_in_a_pipe() -> None:
    con, fake, out = tty_console()
    con.on_event(fake.joined("dev"))
    assert "──" not in out.getvalue()
    piped, fake, pipe_out = console()
    piped.on_event(fake.joined("dev", history=[msg("bob", "earlier", room="dev")]))
    assert "──" not in pipe_out.getvalue()
    assert lines(pipe_out)[-1] == "#dev bob: earlier"


def test_lines_are_labelled_unless_they_are_the_current_rooms() -> None:
    for con, fake, out in (console(), tty_console(timestamps=False)):
        con.on_line("/join dev")
        con.on_event(fake.joined("dev"))
        con.on_event(msg("bob", "in dev", room="dev"))
        con.on_event(msg("bob", "in general"))
        con.on_line("/join general")  # already in it: switches at once
        con.on_event(msg("bob", "in general again"))
        con.on_event(msg("bob", "in dev again", room="dev"))
        assert [plain(line) for line in lines(out)][1:] == [  # type: ignore[arg-type]
            "bob: in dev",
            "#general bob: in general",
            "[system] now talking in #general",
            "bob: in general again",
            "#dev bob: in dev again",
        ]


def test_clear_clears_the_view_and_a_terminals_screen() -> None:
    con, _, out = tty_console()
    con.on_event(msg(text="old"))
    con.on_line("/clear")
    assert out.getvalue().endswith(CLEAR_SCREEN)
    assert not con.views.views["general"].lines
    piped, _, pipe_out = console()
    piped.on_event(msg(text="old"))
    piped.on_line("/clear")
    assert pipe_out.getvalue() == "alice: old\n"


def test_what_i_say_comes_back_as_my_line_when_echoing() -> None:
    con, fake, out = tty_console(timestamps=False)
    con.echo = True  # run() on a terminal: the prompt is erased, so the line is shown as a chat line
    con.on_line("hello all")
    con.on_line("/me waves")
    assert fake.calls == [("say", "general", "hello all", False), ("say", "general", "waves", True)]
    assert [plain(line) for line in lines(out)] == ["me: hello all", "* me waves"]  # type: ignore[arg-type]
    assert all(line.mine for line in con.views.views["general"].lines)
    assert con.views.views["general"].unread == 0


def test_no_echo_in_a_pipe_or_a_conversation() -> None:
    con, _, out = console()
    con.on_line("hello all")
    assert out.getvalue() == ""
    con, fake, out = tty_console()
    con.echo = True
    con.on_line("/query bob")
    con.on_line("psst")
    assert fake.calls == [("dm", "bob", "psst", False)]
    assert out.getvalue() == ""  # the ack shows it, "[dm -> bob] psst"


def test_a_long_line_goes_as_several_messages_cut_at_spaces() -> None:
    con, fake, _ = console()
    text = " ".join(f"word{i:04d}" for i in range(900))[:9000]
    con.on_line(text)
    parts = [call[2] for call in fake.calls]
    assert len(parts) == 3
    assert all(len(part) <= m.MAX_TEXT_CHARS for part in parts)
    assert " ".join(parts) == text


def test_query_switches_the_prompt_and_where_text_goes() -> None:
    con, fake, _ = console()
    con.on_line("/query bob")
    assert con.prompt() == "@bob> "
    con.on_line("hi")
    con.on_line("/query carol how are you")
    assert con.prompt() == "@carol> "
    assert fake.calls == [("dm", "bob", "hi", False), ("dm", "carol", "how are you", False)]
    con.on_line("/window 1")
    assert con.prompt() == "> "


def test_the_leads_commands_reach_the_client() -> None:
    con, fake, out = console(rooms=("general",))
    con.client = fake = Client("me", ("general",))
    con.on_line("/topic release day")
    con.on_line("/topic -")
    con.on_line("/nick alicia")
    con.on_line("/away lunch")
    con.on_line("/back")
    con.on_line("/names")
    assert fake.calls == [
        ("topic", "general", "release day"),
        ("topic", "general", ""),
        ("nick", "alicia"),
        ("away", "lunch"),
        ("away", ""),
        ("who", "general"),
    ]
    con.on_line("/topic")
    assert lines(out)[-1] == "[topic] #general has no topic"


# --- errors in words ---


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        ("'user': a name is 1-32 of A-Z", "a name is 1-32 of A-Z"),
        ("'room': a room name is 1-32", "a room name is 1-32"),
        ("'text' must not be empty", "the text must not be empty"),
        ("'topic' is 400 characters; the limit is 300", "the topic is 400 characters; the limit is 300"),
        ("no user bob", "no user bob"),
        ("", ""),
    ],
)
def test_errors_read_without_the_protocols_field_names(detail: str, shown: str) -> None:
    assert readable(detail) == shown


def test_a_refusal_shows_no_field_name() -> None:
    event = Failed(error=m.Error(code="bad_name", detail="'name': a name is 1-32 of A-Z", id="n"))
    assert render(event, "me") == "[error] a name is 1-32 of A-Z (bad_name)"
    assert error_text("bad_name", "'user': a name\x1b") == "[error] a name\\x1b (bad_name)"


# --- the status line and Tab ---


def status_text(views: Views, me: str = "me", away: str = "") -> str:
    return "".join(text for _, text in status_line(views, me, away))


def test_the_status_line_lists_the_views_the_current_one_news_and_mentions() -> None:
    views = Views(["general", "dev"])
    assert status_text(views) == " me │ [1:#general] 2:#dev "
    views.add(msg_line(room="dev"))
    views.add(msg_line(room="dev", text="me: look"))
    views.add(line_of(m.Dm(user="bob", to="me", text="psst"), "me"))  # type: ignore[arg-type]
    assert status_text(views) == " me │ [1:#general] 2:#dev +2 !1 3:@bob +1 !1 "
    views.switch("dev")
    assert status_text(views, away="lunch") == " me (away: lunch) │ 1:#general [2:#dev] 3:@bob +1 !1 "


def test_the_status_line_styles_mentions_apart() -> None:
    views = Views(["general", "dev"])
    views.add(msg_line(room="dev", text="me: look"))
    styles = dict((text, style) for style, text in status_line(views, "me"))
    assert styles[" !1"] == "class:status.mention"
    assert styles[" +1"] == "class:status.unread"
    assert styles[" [1:#general]"] == "class:status.current"


def test_the_console_keeps_its_status_line_and_away() -> None:
    con, _, _ = console(rooms=("general", "dev"))
    con.on_event(m.Away(reason="lunch"))
    con.on_event(msg("bob", "in dev", room="dev"))
    con.refresh()
    assert "".join(text for _, text in con.snapshot.status) == " me (away: lunch) │ [1:#general] 2:#dev +1 "
    con.on_event(m.Away(reason=""))
    con.refresh()
    assert "away" not in "".join(text for _, text in con.snapshot.status)


def completions(con: Console, typed: str) -> list[str]:
    con.refresh()
    return con.completions(typed).candidates


def test_tab_completes_commands_rooms_and_the_current_rooms_members() -> None:
    con, fake, _ = console(rooms=("general", "dev"))
    con.on_event(fake.joined("general", users=["bob", "bobby", "carol", "me"]))
    con.on_event(fake.joined("dev", users=["dave", "me"]))
    assert completions(con, "/jo") == ["/join"]
    assert completions(con, "/join #d") == ["#dev"]
    assert completions(con, "see #ge") == ["#general"]
    assert completions(con, "bo") == ["bob: ", "bobby: "]
    assert completions(con, "thanks ca") == ["carol"]
    assert completions(con, "da") == []  # dave is in #dev, not here
    assert completions(con, "/msg da") == ["dave"]  # any name I know
    assert completions(con, "m") == []  # not me
    con.on_event(m.JoinEvent(room="general", user="carla"))
    assert completions(con, "hi car") == ["carla", "carol"]


def test_tab_in_a_conversation_offers_its_other_party() -> None:
    con, _, _ = console()
    con.on_line("/query bob")
    assert completions(con, "b") == ["bob: "]


def test_the_snapshot_is_what_the_reader_thread_reads() -> None:
    con, fake, _ = console()
    before = con.snapshot
    con.on_event(fake.joined("general", users=["bob", "me"]))
    assert con.snapshot is before  # swapped whole, only by refresh (the main thread)
    con.refresh()
    assert con.snapshot.names == ["bob", "me"]
    assert isinstance(con.snapshot, Snapshot)
