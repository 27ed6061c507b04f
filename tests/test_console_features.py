"""The line console on a real terminal, as irssi or weechat: ``python client.py`` on a pty whose screen is a
terminal emulator model (pyte, through ``scripts/screenshot_console.PtyScreen``, which answers cursor-position
requests as a terminal does, so the status line is drawn), with a real broker and a piped client beside it.

Timestamps, a colour per name, own lines and mentions set apart (and the bell), Tab completion, the status
line, labels and the history rule when rooms change, Ctrl-C, a long line split, /query, /clear and the
lead's commands; and the piped client's lines stay plain throughout.  Every wait is for the screen (or a
line) with a deadline.
"""

from __future__ import annotations

import re
import sys

import pyte.graphics
import pytest
from conftest import WAIT, Broker, Harness, Proc

import messages as m
from console import NAME_COLOURS, history_rule
from display import colour_of
from scripts.screenshot_console import PtyScreen

pytestmark = pytest.mark.timeout(60)

STAMP = r"\d\d:\d\d "
#: pyte's name for each SGR foreground.
FG_NAMES = {**pyte.graphics.FG_ANSI, **pyte.graphics.FG_AIXTERM}


def fg_of(name: str) -> str:
    """pyte's name of the colour the console gives ``name``."""
    return FG_NAMES[int(NAME_COLOURS[colour_of(name)])]


@pytest.fixture
def terminal(harness: Harness):
    screens: list[PtyScreen] = []

    def start(broker: Broker, *args: str, name: str = "alice", columns: int = 100, lines: int = 30) -> PtyScreen:
        argv = [sys.executable, "client.py", *broker.endpoints, "--name", name, *args]
        screen = PtyScreen(argv, columns, lines, timeout=WAIT)
        screens.append(screen)
        screen.expect("[system] you are in #")
        prompt_row(screen, ">")  # the input line is drawn: keys typed from now on reach it, not the tty's echo
        return screen

    yield start
    for screen in screens:
        screen.close()


def row_matching(term: PtyScreen, pattern: str) -> tuple[int, re.Match[str]]:
    """Wait for a row matching ``pattern``; the lowest such row and its match."""
    regex = re.compile(pattern)

    def found(rows: list[str]) -> tuple[int, re.Match[str]] | None:
        for y in range(len(rows) - 1, -1, -1):
            match = regex.search(rows[y])
            if match:
                return y, match
        return None

    return term.wait(found, repr(pattern))


def prompt_row(term: PtyScreen, text: str) -> None:
    """Wait until the input line reads exactly ``text`` (the prompt included)."""
    term.wait(lambda rows: text in [row for row in rows[:-1] if row.startswith(("> ", ">", "#", "@"))][-1:], text)


def assert_plain(proc: Proc) -> None:
    """A piped console's output: no escape sequences, no bells, no timestamps."""
    for line in proc.output():
        assert "\x1b" not in line and "\x07" not in line, line
        assert not re.match(STAMP, line), line


def test_timestamps_colours_own_lines_and_a_mention_with_the_bell(harness: Harness, terminal) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = terminal(broker)
    bob.expect(r"^\[join\] alice joined the chat$")

    bob.send("hello there")
    y, match = row_matching(alice, rf"^({STAMP})bob: hello there$")
    assert alice.char(y, 0).fg == "brightblack"  # the time, grey
    x = len(match.group(1))
    assert [alice.char(y, x + i).fg for i in range(3)] == [fg_of("bob")] * 3  # bob's own colour
    assert alice.char(y, x + 3).fg == "default"  # the ':' and the text in the terminal's colour
    assert not alice.char(y, x).reverse

    alice.type("hi bob\r")  # my own line: the typed prompt goes, the line comes back as a chat line
    y, match = row_matching(alice, rf"^{STAMP}alice: hi bob$")
    assert alice.char(y, 6).bold and alice.char(y, 6).fg == "default"  # my name: bold, no colour of its own
    bob.expect(r"^alice: hi bob$")
    assert not any(row.startswith("> hi bob") for row in alice.rows())

    bells = alice.raw.count(b"\x07")
    bob.send("is alice around?")  # names me
    y, match = row_matching(alice, rf"^{STAMP}bob: is alice around\?$")
    assert alice.char(y, 6).reverse and alice.char(y, 6).fg == fg_of("bob")  # the speaker's name stands out
    assert alice.char(y, 11).bold  # and so does the text
    alice.wait(lambda rows: alice.raw.count(b"\x07") == bells + 1, "the bell")
    bob.send("malice is no mention")  # a word that merely contains my name
    row_matching(alice, rf"^{STAMP}bob: malice is no mention$")
    assert alice.raw.count(b"\x07") == bells + 1

    assert_plain(bob)  # the piped client beside it printed plain lines all along
    alice.type("/quit\r")
    assert alice.wait_exit() == 0


def test_no_timestamps(harness: Harness, terminal) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = terminal(broker, "--no-timestamps")
    bob.send("plain")
    row_matching(alice, r"^bob: plain$")


def test_tab_completes_commands_rooms_and_names_and_ctrl_c_clears_the_line(harness: Harness, terminal) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    harness.client(broker, "bobby")
    alice = terminal(broker)

    alice.type("/jo\t")
    prompt_row(alice, "> /join")
    alice.type(" #ge\t")
    prompt_row(alice, "> /join #general")
    alice.type("\x03")  # Ctrl-C: the half-typed line goes, the console stays
    prompt_row(alice, ">")
    assert alice.proc.poll() is None

    alice.type("bobb\t")  # a member's name, at the start of a line: addressed
    prompt_row(alice, "> bobby:")
    alice.type("\x03")
    prompt_row(alice, ">")
    alice.type("thanks bo\t")  # two members start so: Tab puts what they share and offers both
    alice.wait(lambda rows: "> thanks bob" in rows and {"bob", "bobby"} <= {row.strip() for row in rows}, "a menu")
    alice.type("\x1b")  # Escape closes the menu
    alice.type("\x03")
    prompt_row(alice, ">")
    alice.type("/msg bobb\t")
    prompt_row(alice, "> /msg bobby")
    alice.type(" hi\r")
    alice.expect("[dm -> bobby] hi")

    alice.type("\x03")  # Ctrl-C on an empty line: leaves, cleanly
    assert alice.wait_exit() == 0
    bob.expect(r"^\[leave\] alice left the chat$")


def test_status_line_labels_history_rule_and_mentions_across_rooms(harness: Harness, terminal) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob", "--room", "general", "--room", "dev")
    bob.send("/join dev")
    bob.expect(r"^\[system\] now talking in #dev$")
    bob.send("said before alice came")  # history alice is shown on joining #dev
    alice = terminal(broker)
    assert alice.wait(lambda rows: rows[-1].startswith(" alice │ [1:#general]"), "the status line")

    alice.type("/join dev\r")
    alice.expect("[system] you are in #dev")
    y_past, _ = row_matching(alice, rf"^{STAMP}bob: said before alice came$")  # the current room's: no label
    y_rule = alice.expect(history_rule("dev"))[0]
    assert y_rule == y_past + 1
    prompt_row(alice, "#dev>")
    alice.wait(lambda rows: "1:#general [2:#dev]" in rows[-1], "#dev current in the status line")

    bob.send("/join general")
    bob.send("over in general")  # another room's line: labelled, counted
    row_matching(alice, rf"^{STAMP}#general bob: over in general$")
    alice.wait(lambda rows: "1:#general +1 [2:#dev]" in rows[-1], "an unread line in the status line")
    bells = alice.raw.count(b"\x07")
    bob.send("alice: ping")
    row_matching(alice, rf"^{STAMP}#general bob: alice: ping$")
    alice.wait(lambda rows: "1:#general +2 !1 [2:#dev]" in rows[-1], "a mention in the status line")
    alice.wait(lambda rows: alice.raw.count(b"\x07") == bells + 1, "the bell")
    bob.send("/join dev")
    bob.send("back in dev")
    row_matching(alice, rf"^{STAMP}bob: back in dev$")  # the current room's again: no label

    alice.type("/away lunch\r")
    alice.wait(lambda rows: rows[-1].startswith(" alice (away: lunch) │"), "away in the status line")
    alice.type("/join general\r")  # back to general: its news is read
    alice.wait(lambda rows: rows[-1].startswith(" alice (away: lunch) │ [1:#general] 2:#dev"), "general current")
    prompt_row(alice, ">")
    alice.type("/back\r")
    alice.wait(lambda rows: rows[-1].startswith(" alice │ [1:#general] 2:#dev"), "back in the status line")
    bob.send("in dev, where alice is not looking")
    row_matching(alice, rf"^{STAMP}#dev bob: in dev, where alice is not looking$")
    assert_plain(bob)


def test_a_long_line_goes_as_several_messages_query_and_clear(harness: Harness, terminal) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = terminal(broker)
    bob.expect(r"^\[join\] alice joined the chat$")

    words = [f"word{i:04d}" for i in range(900)]  # 9,000 characters with the spaces
    text = " ".join(words)[:9000]
    alice.paste(text)
    alice.type("\r")
    parts = [bob.expect(r"^alice: (.*)$").group(1) for _ in range(3)]  # three messages, in order
    assert all(len(part) <= m.MAX_TEXT_CHARS for part in parts)
    assert " ".join(parts) == text  # cut at spaces: every word whole
    alice.expect("word0899")

    alice.type("/query bob\r")  # a private conversation: the prompt says with whom
    prompt_row(alice, "@bob>")
    alice.type("psst\r")
    bob.expect(r"^\[dm\] alice: psst$")
    alice.expect("[dm -> bob] psst")

    alice.type("/clear\r")
    alice.wait(lambda rows: not any("word0" in row or "psst" in row for row in rows), "a clear screen")
    prompt_row(alice, "@bob>")
    bob.send("/msg alice after the clear")
    row_matching(alice, rf"^{STAMP}\[dm\] bob: after the clear$")
    assert_plain(bob)


def test_the_leads_commands_and_errors_without_field_names(harness: Harness, terminal) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = terminal(broker, columns=132)  # the error's row is long

    alice.type("/topic release day\r")
    alice.expect("[topic] alice set the topic: release day")
    bob.expect(r"^\[topic\] alice set the topic: release day$")
    alice.type("/topic\r")
    alice.expect("[topic] #general: release day")
    alice.type("/names\r")
    alice.expect("[who] #general: alice, bob (2)")
    alice.type("/nick .dot\r")  # not a name: the broker says why, in words, without its field names
    y, match = row_matching(alice, rf"^{STAMP}\[error\] (a name is .*) \(bad_name\)$")
    assert "'" not in match.group(1)
    assert alice.char(y, 6).fg == "brightred"
    alice.type("/nick alicia\r")
    alice.expect("[system] you are now known as alicia")
    bob.expect(r"^\[nick\] alice is now known as alicia$")
    alice.wait(lambda rows: rows[-1].startswith(" alicia │"), "the new name in the status line")
    alice.type("/part\r")
    alice.expect("[system] you left #general")
    bob.expect(r"^\[leave\] alicia left #general$")
