"""The pieces every Python client shares: typed commands (commands.py) and the per-room views (views.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages as m
from commands import COMMAND_WORDS, HELP, Command, Usage, complete, parse, split_text
from display import line_of
from views import Activity, Views


@pytest.mark.parametrize(
    ("typed", "command"),
    [
        ("hello", Command("say", text="hello")),
        ("//etc/passwd", Command("say", text="/etc/passwd")),
        ("/me waves", Command("me", text="waves")),
        ("/msg bob psst now", Command("msg", arg="bob", text="psst now")),
        ("/query bob", Command("query", arg="bob")),
        ("/join #Dev", Command("join", arg="dev")),
        ("/part", Command("leave")),
        ("/names dev", Command("who", arg="dev")),
        ("/topic", Command("topic")),
        ("/topic release on Friday", Command("topic", text="release on Friday")),
        ("/nick alicia", Command("nick", arg="alicia")),
        ("/away", Command("away")),
        ("/away gone fishing", Command("away", text="gone fishing")),
        ("/back", Command("back")),
        ("/window 2", Command("window", arg="2")),
        ("/WIN 3", Command("window", arg="3")),
        ("/clear", Command("clear")),
        ("/exit", Command("quit")),
        ("   ", None),
    ],
)
def test_parse(typed: str, command: Command | None) -> None:
    assert parse(typed) == command


@pytest.mark.parametrize("typed", ["/msg bob", "/msg", "/me", "/join", "/nick", "/window x", "/teleport home"])
def test_parse_refuses_with_usage(typed: str) -> None:
    with pytest.raises(Usage):
        parse(typed)


def test_help_lists_every_command_word() -> None:
    for word in COMMAND_WORDS:
        assert word in HELP, word


def test_complete_commands_rooms_and_names() -> None:
    assert complete("/jo", [], []).candidates == ["/join"]
    assert complete("/join #ge", [], ["general", "games"]).candidates == ["#general"]
    assert complete("/join g", [], ["general", "dev"]).candidates == ["#general"]
    assert complete("al", ["alice", "Alan", "bob"], []).candidates == ["alice: ", "Alan: "]
    assert complete("hi al", ["alice", "bob"], []) == (3, ["alice"])
    assert complete("/msg b", ["alice", "bob"], []).candidates == ["bob"]
    assert complete("me", ["me", "mel"], [], me="me").candidates == ["mel: "]


@given(st.text(alphabet=st.sampled_from("ab ."), max_size=60), st.integers(3, 12))
def test_split_text_keeps_every_word_in_order_within_the_limit(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(len(part) <= limit for part in parts)
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")


def test_a_long_line_splits_at_word_boundaries() -> None:
    words = ["word"] * 2000  # 9,999 characters
    parts = split_text(" ".join(words))
    assert len(parts) == 3 and all(len(p) <= m.MAX_TEXT_CHARS for p in parts)
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in parts)


def event(text: str, room: str = "dev", user: str = "bob", seq: int = 1) -> m.MsgEvent:
    return m.MsgEvent(room=room, user=user, text=text, id=str(seq), seq=seq, ts=1.0)


def test_views_count_unread_and_mentions_where_you_are_not() -> None:
    views = Views(["general", "dev"])
    assert views.current == "general"
    for n, text in enumerate(["hi", "alice: look", "bye"], 1):
        views.add(line_of(event(text, seq=n), "alice"))
    dev = views.views["dev"]
    assert (dev.unread, dev.mentions, dev.activity) == (3, 1, Activity.MENTION)
    assert views.summary() == [(2, dev)]
    assert views.switch("dev") and (dev.unread, dev.mentions) == (0, 0)
    views.add(line_of(event("more", seq=4), "alice"))
    assert dev.unread == 0  # read as it comes: dev is current


def test_a_dm_opens_a_conversation_view_that_follows_a_nick() -> None:
    views = Views(["general"])
    views.on_event(m.Joined(room="general", users=["alice", "bob"]))
    views.add(line_of(m.Dm(user="bob", to="alice", text="psst", ts=1.0), "alice"))
    assert list(views.views) == ["general", "@bob"] and views.views["@bob"].mentions == 1
    views.on_event(m.NickEvent(room="general", user="bob", name="robert", seq=2))
    assert list(views.views) == ["general", "@robert"]
    assert views.views["general"].sorted_members() == ["alice", "robert"]


def test_topic_members_and_away_follow_the_events() -> None:
    views = Views(["dev"])
    views.on_event(m.Joined(room="dev", users=["alice"], topic="plans", away={"alice": "lunch"}))
    views.on_event(m.JoinEvent(room="dev", user="Bob", seq=2))
    views.on_event(m.TopicEvent(room="dev", user="Bob", topic="new plans", seq=3))
    view = views.views["dev"]
    assert (view.topic, view.sorted_members(), view.away) == ("new plans", ["alice", "Bob"], {"alice": "lunch"})
    views.on_event(m.Left(room="dev"))
    assert views.views == {} and views.current is None


def test_history_lines_are_set_apart_and_the_mark_moves_as_lines_scroll_away() -> None:
    views = Views(["dev"])
    view = views.views["dev"]
    for n in range(3):
        views.add(line_of(event(f"old {n}", seq=n + 1), "alice"), past=True)
    assert view.history_end == 3
    for n in range(view.lines.maxlen or 0):
        views.add(line_of(event(f"new {n}", seq=n + 4), "alice"))
    assert view.history_end == 0
