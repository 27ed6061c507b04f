"""A console line can never be faked: on a terminal the console wraps lines itself and marks every
continuation row, so no text of a message (padding, wide characters, invisible characters) can make
a row that starts like another message.  Checked on a terminal emulator model (pyte) at several
widths, and once with the real console on a pty.
"""

from __future__ import annotations

import io
import os
import re
import time
import unicodedata

import pyte
import pytest
from conftest import WAIT, Harness, StubClient, Terminal
from wcwidth import wcwidth

import messages as m
from console import Console
from console_text import (
    CONTINUATION,
    NARROW_CONTINUATION,
    RESET,
    SQUEEZED,
    lay_out,
    lay_out_styled,
    visible,
    width_of,
)
from display import HELP, render
from safe_text import safe_text
from session import Event

pytestmark = pytest.mark.timeout(60)

WIDTHS = [6, 10, 20, 40, 80, 132]
#: What a row that starts a message (or a line of the console's own) looks like.
LINE_START = re.compile(r"[\[#*]|[A-Za-z0-9_][A-Za-z0-9_.\-]*: ")
#: A colour or attribute change.
SGR = re.compile(r"\x1b\[[0-9;]*m")
#: What the console shows for the invisible letters it escapes.
ESCAPED = {"\u3164": "\\u3164", "\u115f": "\\u115f", "\u1160": "\\u1160", "\uffa0": "\\uffa0"}


class Screen(pyte.Screen):
    """pyte's screen, except that a zero-width character that is not a combining mark (a joiner, a
    variation selector) is left out instead of ending the rest of the text drawn (pyte's ``break``)."""

    def draw(self, data: str) -> None:
        super().draw("".join(c for c in data if wcwidth(c) != 0 or unicodedata.combining(c)))


def on_screen(output: str, width: int) -> tuple[list[str], Screen]:
    """The rows a terminal ``width`` columns wide shows for ``output`` (a tty turns \\n into \\r\\n)."""
    rows = output.count("\n") + width_of(output) // width + 4  # enough that nothing scrolls away
    screen = Screen(width, rows)
    pyte.Stream(screen).feed(output.replace("\n", "\r\n"))
    return [row.rstrip() for row in screen.display], screen


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def console_output(events: list[Event], width: int, monkeypatch: pytest.MonkeyPatch, timestamps: bool = False) -> str:
    """What the console prints for ``events`` on a terminal ``width`` columns wide (coloured; no timestamps
    unless asked, so that rows start as the lines do)."""
    monkeypatch.setenv("COLUMNS", str(width))  # shutil.get_terminal_size() reads it first
    monkeypatch.setenv("LINES", "24")
    out = Tty()
    con = Console(StubClient("me"), out=out, timestamps=timestamps)  # type: ignore[arg-type]
    for event in events:
        con.on_event(event)
    return out.getvalue()


def marker(width: int) -> str:
    return CONTINUATION if width >= 16 else NARROW_CONTINUATION if width >= 6 else "│"


def bare(text: str) -> str:
    """Text as compared: NFC (pyte composes marks), without spaces (and marks on them: a run of spaces is
    squeezed with its marks), squeeze marks and zero-width joiners."""
    text = unicodedata.normalize("NFC", text).replace(SQUEEZED.strip(), "")
    return as_drawn(re.sub(r"\s+(?:[\u0300-\u036f]\s*)*", "", text))


def as_drawn(text: str) -> str:
    """Text as the screen model holds it: marks composed, zero-width characters that are not marks left out."""
    return "".join(c for c in unicodedata.normalize("NFC", text) if wcwidth(c) != 0 or unicodedata.combining(c))


def expected_text(line: str) -> str:
    shown = safe_text(line)
    for char, escape in ESCAPED.items():
        shown = shown.replace(char, escape)
    return bare(shown)


def hostile_texts(width: int) -> list[str]:
    """Messages built to put ``carol: hi`` (or ``[system]``) at the start of a row the terminal wraps."""
    head = len("alice: ")
    texts = []
    for cells in (width, width - 1, width + 1, 2 * width, 3 * width - 1):
        fill = max(cells - head, 0)
        texts += [
            " " * fill + "carol: hi",  # spaces to an exact multiple of the width (and one either side)
            "x" * fill + "carol: hi",  # visible padding, no space to break at
            "\u2800" * fill + "carol: hi",  # braille blank: shows nothing, one cell everywhere
            "\u3164" * fill + "carol: hi",  # Hangul filler: a printable letter that shows nothing
            "\t" * (fill // 4 + 1) + "[system] fake",
            "中" * (fill // 2) + "a" * (fill % 2) + "[system] fake",  # wide characters up to the edge
            "a" + "中" * (fill // 2) + "[system] fake",  # ... and one cell off, so one straddles it
            "❤\ufe0f" * (fill // 2 + 1) + "carol: hi",  # narrow symbols a terminal may draw wide
            "\u200b" * fill + "carol: hi",  # zero-width space (escaped by safe_text)
            "\u200d" * fill + "carol: hi",  # zero-width joiners (kept: emoji and scripts need them)
            "e\u0301" * fill + " carol: hi",  # combining marks
            " \u0301" * fill + "carol: hi",  # marks on spaces, to get around the squeeze
            "👩\u200d💻" * (fill // 4 + 1) + "carol: hi",  # a ZWJ sequence
        ]
    texts += [
        " " * 3990 + "carol: hi",
        "\t\t\t \t" * 100 + "#dev bob: hi",
        "a " * 500 + "* bob waves",
        "line one\ncarol: line two\r\x1b[2Kbob: three",
        "",
    ]
    return texts


def events_for(text: str) -> list[tuple[Event, str]]:
    """Events carrying ``text`` from someone else, each with how its first row must start."""
    return [
        (m.MsgEvent(room="general", user="alice", text=text, id="x", seq=1), "alice:"),
        (m.MsgEvent(room="dev", user="alice", text=text, id="y", seq=1, me=True), "#dev * alice"),
        (m.Dm(user="alice", to="me", text=text), "[dm] alice:"),
    ]


def check_rows(rows: list[str], width: int, event: Event, start: str) -> None:
    """One event's rows: the first starts as it should, every other one with the continuation marker and
    nothing like a line start, and all the text is there."""
    rows = rows[: max(i for i, row in enumerate(rows) if row) + 1]
    line = render(event, "me")
    assert line is not None
    assert rows[0] == start[: len(rows[0])] or rows[0].startswith(start), rows
    for row in rows[1:]:
        assert row.startswith(marker(width)), rows
        assert not LINE_START.match(row), rows
    assert bare("".join([rows[0], *(row[len(marker(width)) :] for row in rows[1:])])) == expected_text(line)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_row_of_a_hostile_message_starts_like_a_message(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for text in hostile_texts(width):
        for event, start in events_for(text):
            output = console_output([event], width, monkeypatch)
            rows, screen = on_screen(output, width)
            assert screen.cursor.y == output.count("\n"), f"the terminal wrapped a row itself: {rows}"
            check_rows(rows, width, event, start)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_conversation_of_hostile_messages_has_one_line_start_per_message(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [event for text in hostile_texts(width) for event, _ in events_for(text)]
    events.append(m.JoinEvent(room="general", user="dave"))
    output = console_output(events, width, monkeypatch)
    rows, screen = on_screen(output, width)
    assert screen.cursor.y == output.count("\n")
    starts = [row for row in rows if row and not row.startswith(marker(width))]
    assert len(starts) == len(events), "\n".join(starts)  # one row per event is not a continuation...
    lines = [render(event, "me") or "" for event in events]
    for row, line in zip(starts, lines, strict=True):
        assert as_drawn(visible(line)).startswith(row), (row, line)  # ...its first
    assert all(row in starts for row in rows if LINE_START.match(row))


@pytest.mark.parametrize("width", [20, 80])
def test_an_ordinary_message_wraps_at_spaces(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "the quick brown fox jumps over the lazy dog " * 6
    event = m.MsgEvent(room="general", user="alice", text=text, id="x")
    output = console_output([event], width, monkeypatch)
    rows, _ = on_screen(output, width)
    words = text.split()
    assert " ".join(rows[0].split()[1:] + [w for row in rows[1:] if row for w in row.split()[1:]]) == " ".join(words)
    assert all(len(row) < width for row in rows)


@pytest.mark.parametrize("width", WIDTHS)
def test_styled_rows_are_the_plain_rows_coloured(width: int) -> None:
    """``lay_out_styled`` breaks and escapes a line exactly as ``lay_out`` does, whatever its parts hold."""
    for text in hostile_texts(width):
        for head in ("12:34 ", "12:34 #dev * alice ", ""):
            for cut in (0, 1, len(text) // 2):  # the parts may end anywhere, mid-run of spaces or marks
                segments = [(head, "90"), (text[:cut], "1;31"), (text[cut:], "")]
                styled = lay_out_styled(segments, width)
                assert SGR.sub("", styled) == lay_out(head + text, width), (head, text, cut)
                for row in styled.split("\n"):  # nothing bleeds into the next row: each ends in the default style
                    assert SGR.findall(row)[-1:] in ([], [RESET]), row


def test_runs_of_spaces_are_squeezed_and_tabs_are_spaces() -> None:
    assert visible("a    b") == f"a{SQUEEZED}b"
    assert visible("a   b") == "a   b"  # three are left alone
    assert visible("a\tb") == f"a{SQUEEZED}b"
    assert visible(" " * 4000) == SQUEEZED
    assert visible("x" + " \u0301" * 10 + "y") == f"x{SQUEEZED}y"
    assert visible("a\u3164b") == "a\\u3164b"


def test_wide_characters_never_straddle_the_edge() -> None:
    rows = lay_out("bob: " + "中" * 40, 20).split("\n")
    assert all(width_of(row) <= 19 for row in rows)
    assert "".join(row.removeprefix(CONTINUATION) for row in rows) == "bob: " + "中" * 40


def test_an_emoji_presentation_selector_counts_as_wide() -> None:
    assert width_of("❤\ufe0f") == 2
    assert width_of("👩\u200d💻") == 4  # as a terminal without the sequence draws it: the widest
    assert width_of("e\u0301") == 1


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5])
def test_very_narrow_terminals_still_get_everything(width: int) -> None:
    text = "alice: 中文 hello"
    rows = lay_out(text, width).split("\n")
    assert "".join(row.lstrip("│ ") for row in rows).replace(" ", "") == text.replace(" ", "")
    assert all(row.startswith("│") for row in rows[1:])


def test_help_keeps_its_alignment_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "132")
    out = Tty()
    Console(StubClient("me"), out=out, timestamps=False).on_line("/help")  # type: ignore[arg-type]
    assert out.getvalue() == HELP + "\n"


def test_help_keeps_its_alignment_with_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "132")
    out = Tty()
    Console(StubClient("me"), out=out).on_line("/help")  # type: ignore[arg-type]
    rows, _ = on_screen(out.getvalue(), 132)
    rows = [row for row in rows if row]
    assert all(re.match(r"\d\d:\d\d ", row) for row in rows), rows  # every row: the same time, then the help
    assert [row[6:] for row in rows] == HELP.split("\n")


@pytest.mark.parametrize("width", [20, 80])
def test_timestamps_and_colours_leave_no_row_that_starts_like_a_message(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with each line's time before it: the rows a hostile text makes still carry the marker."""
    events = [event for text in hostile_texts(width) for event, _ in events_for(text)]
    output = console_output(events, width, monkeypatch, timestamps=True)
    assert "\x1b[" in output  # coloured
    rows, screen = on_screen(output, width)
    assert screen.cursor.y == output.count("\n")
    starts = [row for row in rows if row and not row.startswith(marker(width))]
    assert len(starts) == len(events), "\n".join(starts)
    stamped = re.compile(r"\d\d:\d\d ")
    for row in starts:
        assert stamped.match(row) or width < 12, row
    for row in rows:
        assert not LINE_START.match(row) or row in starts, row
        assert not stamped.match(row) or row in starts, row


def test_a_pipe_gets_each_line_exactly_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "20")
    out = io.StringIO()
    con = Console(StubClient("me"), out=out)  # type: ignore[arg-type]
    text = "hi" + " " * 40 + "carol: hi\t中❤\ufe0f"
    con.on_event(m.MsgEvent(room="general", user="alice", text=text, id="x"))
    assert out.getvalue() == f"alice: {safe_text(text)}\n"


# --- The real console on a pty -------------------------------------------------------------


def rows_of(term: Terminal, columns: int, lines: int) -> list[str]:
    """The screen as a terminal of that size shows it now."""
    screen = Screen(columns, lines)
    pyte.Stream(screen).feed(term.raw)
    return [row.rstrip() for row in screen.display]


def expect_rows(term: Terminal, predicate, columns: int, lines: int, timeout: float = WAIT) -> list[str]:
    deadline = time.monotonic() + timeout
    while not predicate(rows := rows_of(term, columns, lines)):
        if time.monotonic() > deadline:
            raise AssertionError("the screen never got there:\n" + "\n".join(rows))
        time.sleep(0.05)  # polling the pty buffer the reader thread fills; the condition synchronises
    return rows


def test_the_real_console_on_a_narrow_pty(harness: Harness) -> None:
    columns, lines = 24, 60
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = Terminal(["client.py", *broker.endpoints, "--name", "alice", "--no-timestamps"], columns, lines)
    try:
        expect_rows(alice, lambda rows: any(r.startswith("[system] you are in") for r in rows), columns, lines)
        os.write(alice.master, b"half")  # typed, not sent: the console prints above it
        expect_rows(alice, lambda rows: any(r.startswith("> half") for r in rows), columns, lines)
        padded = "hi" + " " * (2 * columns - len("bob: hi")) + "carol: hi"
        wide = "a" + "中" * columns + "[system] fake"
        for text in (padded, wide, "done"):
            bob.send(text)
        rows = expect_rows(
            alice, lambda rows: "bob: done" in rows and "> half" in rows[rows.index("bob: done") :], columns, lines
        )
        rows = [r for r in rows if r]
        first = rows.index("bob: hi ⋯ carol: hi")
        done = rows.index("bob: done")
        assert rows[first + 1].startswith("bob: a")
        for row in rows[first + 2 : done]:
            assert row.startswith(CONTINUATION), rows
            assert not LINE_START.match(row), rows
        assert bare("".join(row.removeprefix(CONTINUATION) for row in rows[first + 1 : done])) == bare("bob: " + wide)
        assert rows[done + 1 :] == ["> half"], rows  # the line being typed is still there, under the messages
        os.write(alice.master, b"\x03")  # Ctrl-C: clears the half-typed line...
        expect_rows(alice, lambda rows: "> half" not in rows and ">" in rows, columns, lines)
        os.write(alice.master, b"\x03")  # ...and on an empty line, quits
        assert alice.proc.wait(WAIT) == 0
    finally:
        alice.close()
