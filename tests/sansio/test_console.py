"""The console UI logic: render() lines, and Console with a stand-in client (no sockets)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from conftest import StubClient

import messages as m
from console import Console
from display import HELP, render
from session import Acked, Change, Failed, Rejoined, Said, Status

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
        object(),  # something newer
        None,
    ],
    ids=repr,
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
