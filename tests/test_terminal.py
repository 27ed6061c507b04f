"""The console client on a real terminal (a pty): line editing survives incoming messages."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import subprocess
import sys
import termios
import threading
import time

import pytest
from conftest import ROOT, WAIT, Harness, default_sigint

pytestmark = pytest.mark.timeout(60)

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\r")


class Terminal:
    """A process on a pseudo-terminal; ``screen`` is everything it wrote, escape sequences removed."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        # No cursor-position requests: a real terminal answers them, this pty would leave each one to time out.
        env = dict(os.environ, TERM="xterm", COLUMNS="120", LINES="40", PROMPT_TOOLKIT_NO_CPR="1")
        # A session of its own with the pty as controlling terminal, as in a real terminal: then Ctrl-C typed
        # while the line editor is not reading (between two prompts) still raises SIGINT.
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            start_new_session=True,
            preexec_fn=lambda: (default_sigint(), fcntl.ioctl(0, termios.TIOCSCTTY, 0)),
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.raw += data

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def expect(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the terminal within {timeout}s:\n{self.screen}")
            time.sleep(0.02)  # polling the pty buffer the reader thread fills; the condition synchronises

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


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

    alice.type("\x1b[A")  # Up: the line editor's history recalls the last line
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
