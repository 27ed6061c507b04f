"""The console's picture in the README: a broker, a few bots chatting, and ``python client.py`` on a
pseudo-terminal whose screen is a terminal emulator model (pyte), written out as ``docs/console.svg``.

    python scripts/screenshot_console.py            # docs/console.svg
    python scripts/screenshot_console.py --out /tmp/console.svg --columns 100 --lines 28

``PtyScreen`` is the terminal: a program on a pty, its output drawn on a pyte screen that answers
cursor-position requests as a terminal emulator does (so prompt_toolkit draws the status line, which it
leaves out where nobody answers them).  The console's tests (``tests/test_console_features.py``) drive
the console through it too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyte

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.procs import Child, python  # noqa: E402 (the project's root is on the path first)

#: Seconds a wait for the screen takes before it fails.
WAIT = 10.0


class _Screen(pyte.Screen):
    """pyte's screen, which answers the program's requests (a cursor-position report) through ``answer``."""

    def __init__(self, columns: int, lines: int, answer: Callable[[str], None]) -> None:
        super().__init__(columns, lines)
        self._answer = answer

    def write_process_input(self, data: str) -> None:
        self._answer(data)


class PtyScreen:
    """A program on a pseudo-terminal ``columns`` x ``lines`` (``benchmarks.procs.Child``: in a session of its own,
    the pty its controlling terminal), its output drawn on a pyte screen as it comes, which answers its
    cursor-position requests.  ``rows()`` is the screen's text, ``char(y, x)`` one cell with its colours; ``raw``
    every byte written (bells included); ``wait`` waits for the screen."""

    def __init__(
        self, argv: Sequence[str], columns: int = 100, lines: int = 30, cwd: Path = ROOT, timeout: float = WAIT
    ) -> None:
        self.columns, self.lines, self.timeout = columns, lines, timeout
        self.raw = bytearray()
        self.screen = _Screen(columns, lines, self._answer)
        self._stream = pyte.ByteStream(self.screen)
        self.child = Child(
            list(argv),
            "pty screen",
            cwd=cwd,
            tty=(columns, lines),
            answers=True,
            on_output=self._output,
            timeout=timeout,
        )
        assert self.child.master is not None
        self.master = self.child.master
        self.proc = self.child.popen

    def _output(self, data: bytes) -> None:
        self.raw += data
        self._stream.feed(data)

    def _answer(self, data: str) -> None:
        child = getattr(self, "child", None)  # a request before the child is ours: prompt_toolkit asks again
        if child is not None and child.master is not None:
            with contextlib.suppress(OSError):
                os.write(child.master, data.encode())

    # --- the screen ---

    def rows(self) -> list[str]:
        return self.child.wait_until(self._rows, 0) or []

    def _rows(self) -> list[str]:
        return [row.rstrip() for row in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.rows())

    def char(self, y: int, x: int) -> pyte.screens.Char:
        return self.child.wait_until(lambda: self.screen.buffer[y][x], 0)

    def wait(self, predicate: Callable[[list[str]], object], what: str = "the screen", timeout: float | None = None):
        """Wait until ``predicate(rows)`` is true (returns what it returned); AssertionError at the deadline."""
        result = self.child.wait_until(lambda: predicate(self._rows()), self.timeout if timeout is None else timeout)
        if not result:
            raise AssertionError(f"{what} never showed; the screen:\n" + "\n".join(self.rows()))
        return result

    def expect(self, text: str, timeout: float | None = None) -> tuple[int, int]:
        """Wait until ``text`` is on the screen; where it is then (row, column; the lowest row first)."""

        def where(rows: list[str]) -> tuple[int, int] | None:
            for y in range(len(rows) - 1, -1, -1):
                if text in rows[y]:
                    return y, rows[y].index(text)
            return None

        return self.wait(where, repr(text), timeout)

    # --- the keyboard ---

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def paste(self, text: str) -> None:
        """``text`` as a terminal pastes it (bracketed paste: one edit, however long)."""
        self.type("\x1b[200~" + text + "\x1b[201~")

    # --- its life ---

    def wait_exit(self, timeout: float | None = None) -> int:
        return self.proc.wait(self.timeout if timeout is None else timeout)

    def close(self) -> None:
        self.child.stop()
        with contextlib.suppress(OSError):
            os.close(self.master)

    def __enter__(self) -> PtyScreen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the picture -------------------------------------------------------------------------------------

#: pyte's colour names as rich names them.
_COLOURS = {"brown": "yellow", "default": "default"}


def _rich_colour(name: str) -> str:
    if name.startswith("bright"):
        return "bright_" + _COLOURS.get(name[6:], name[6:])
    if len(name) == 6 and all(c in "0123456789abcdefABCDEF" for c in name):
        return "#" + name
    return _COLOURS.get(name, name)


def svg_of(screen: pyte.Screen, title: str) -> str:
    """The screen's cells, colours and attributes, as rich draws a terminal in SVG."""
    from rich.console import Console
    from rich.style import Style
    from rich.text import Text

    console = Console(record=True, width=screen.columns, file=open(os.devnull, "w"), color_system="truecolor")  # noqa: SIM115
    for y in range(screen.lines):
        line = Text()
        row = screen.buffer[y]
        for x in range(screen.columns):
            char = row[x]
            if not char.data:  # the right half of a wide character
                continue
            style = Style(
                color=_rich_colour(char.fg),
                bgcolor=_rich_colour(char.bg),
                bold=char.bold,
                italic=char.italics,
                underline=char.underscore,
                reverse=char.reverse,
            )
            line.append(char.data, style)
        console.print(line, no_wrap=True, overflow="crop", end="\n")
    svg = console.export_svg(title=title)
    console.file.close()
    return svg


def _conversation(columns: int, lines: int, out: Path) -> None:
    from client import ChatClient

    broker = Child(
        python("broker.py", "--router", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--db", ":memory:"),
        "broker",
    )
    bots: list[ChatClient] = []
    term: PtyScreen | None = None
    try:
        # The ports it took, as people write them (it prints the addresses it bound: tcp://[::ffff:127.0.0.1]:...).
        router = "tcp://127.0.0.1:" + broker.expect(r"inbox \(ROUTER\): \S+:(\d+)").group(1)
        pub = "tcp://127.0.0.1:" + broker.expect(r"feed  \(PUB\):\s+\S+:(\d+)").group(1)

        def bot(name: str, *rooms: str) -> ChatClient:
            client = ChatClient(name, router=router, pub=pub, rooms=rooms)
            client.connect()
            bots.append(client)
            return client

        def see(text: str) -> None:
            """Wait until ``text`` is on alice's screen, the bots answering the broker meanwhile."""
            assert term is not None
            deadline = time.monotonic() + WAIT
            while not any(text in row for row in term.rows()):
                assert time.monotonic() < deadline, f"{text!r} never showed:\n{term.text()}"
                for client in bots:
                    client.poll(0.02)

        def settle(seconds: float = 0.3) -> None:
            """Let the bots' requests go out and their acks come back."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for client in bots:
                    client.poll(0.02)

        bob = bot("bob", "general", "dev")
        carol = bot("carol", "general")
        erin = bot("erin", "dev")
        # Said before alice comes: the history she is shown on joining.
        bob.say("general", "morning all")
        carol.say("general", "morning! the coffee machine is fixed, finally")
        erin.say("dev", "CI is slow again, looking into it")
        settle()

        term = PtyScreen(
            [sys.executable, "client.py", "--router", router, "--pub", pub, "--name", "alice"], columns, lines
        )
        see("earlier messages above")
        term.type("hi all! the 4.2 release is tagged\r")
        see("alice: hi all!")
        settle()
        bob.say("general", "alice: nice! did the migration run on staging?")
        see("did the migration")
        term.type("yes, 0 errors; rolling out to prod after lunch\r")
        see("alice: yes, 0 errors")
        settle()
        carol.say("general", "cheers", me=True)
        carol.say("general", "I'll update the status page")
        see("status page")
        term.type("/join dev\r")
        see("you are in #dev")
        erin.say("dev", "found it: the cache volume was full")
        see("volume was full")
        term.type("thanks erin\r")
        see("alice: thanks erin")
        term.type("/join general\r")
        see("now talking in #general")
        settle()
        bob.topic("general", "4.2 release day")
        see("set the topic")
        erin.join("general")
        see("erin joined")
        erin.say("dev", "builds are back to 4 minutes")
        bob.dm("alice", "lunch at noon? carol is in too")
        see("lunch at noon")
        carol.say("general", "alice, can you send me the release notes?")
        see("release notes?")
        term.type("sure, ca")
        see("sure, ca")
        term.type("\t")  # Tab: the name completed
        see("sure, carol")
        settle()
        with open(out, "w", encoding="utf-8") as svg:
            svg.write(svg_of(term.screen, "python client.py --name alice"))
    finally:
        if term is not None:
            term.close()
        for client in bots:
            client.close(flush_timeout=0)
        broker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the console chatting, as docs/console.svg.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.svg")
    parser.add_argument("--columns", type=int, default=100)
    parser.add_argument("--lines", type=int, default=25)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    _conversation(args.columns, args.lines, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
