"""The console client on a real terminal (a pty): line editing survives incoming messages."""

from __future__ import annotations

import time

import pytest
from conftest import WAIT, Harness, Terminal

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def terminal_factory():
    terminals: list[Terminal] = []

    def make(args: list[str]) -> Terminal:
        term = Terminal(args)
        terminals.append(term)
        return term

    yield make
    for term in terminals:
        term.close()


def test_typing_is_not_disturbed_by_incoming_messages(harness: Harness, terminal_factory) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = terminal_factory(["client.py", *broker.endpoints])
    alice.expect("Enter a username: ")
    alice.type("alice\r")
    alice.expect("[system] you are in #general")
    bob.expect(r"^\[join\] alice joined the chat$")

    alice.type("half a li")
    alice.expect("half a li")
    bob.send("interrupting you")
    alice.expect("bob: interrupting you")
    alice.type("ne\r")  # finish the line that was being typed when bob's message came in
    bob.expect(r"^alice: half a line$")
    # Alice's own copy of the line is printed by patch_stdout's thread, which waits 0.2 s between writes, so
    # it may come after bob has his. Wait for it, so that the count below can only grow when Up redraws the
    # input line (two CI runs typed Enter on an empty line: the late copy was taken for the recall).
    alice.expect("alice: half a line")

    shown = alice.screen.count("half a line")
    alice.type("\x1b[A")  # Up: the line editor's history recalls the last line
    deadline = time.monotonic() + WAIT
    while alice.screen.count("half a line") <= shown:  # redrawn in the input line: recalled
        assert time.monotonic() < deadline, f"Up recalled nothing:\n{alice.screen}"
        time.sleep(0.02)  # polling the terminal's buffer, as Terminal.expect does
    alice.type("\r")
    bob.expect(r"^alice: half a line$")

    alice.type("\x03")  # Ctrl-C
    assert alice.proc.wait(WAIT) == 0
    bob.expect(r"^\[leave\] alice left the chat$")


def test_ctrl_d_leaves_cleanly(harness: Harness, terminal_factory) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    carol = terminal_factory(["client.py", *broker.endpoints, "--name", "carol"])
    carol.expect("[system] you are in #general")
    bob.expect(r"^\[join\] carol joined the chat$")
    carol.type("\x04")  # Ctrl-D on an empty line
    assert carol.proc.wait(WAIT) == 0
    bob.expect(r"^\[leave\] carol left the chat$")
    carol.expect("[system] bye")
