"""Child processes for the test suite and the benchmarks alike, and what /proc says about a process.

``Child`` starts a program with its output on a pipe (or on a pseudo-terminal of its own), keeps every line
it prints (a thread reads them, so it never blocks on a full pipe), waits for a line with a deadline and
stops it: SIGTERM, then SIGKILL after a grace period, always reaped.  The readers below it give a process's
CPU time (alone, per thread, or with all its descendants), its RSS, and the machine's busy time.

Who uses it: the test suite (``tests/conftest.py``: ``Proc``, ``Broker`` and ``Terminal`` are thin layers
over ``Child``), the benchmark (``bench.py`` and its parts), ``attack.py`` and ``idle_cpu.py``.

Where it lives, and why here: in ``benchmarks/``, imported as ``benchmarks.procs`` with the project's root
directory on ``sys.path``.  That root is the one entry both sides already have: every benchmark script
puts it there (to import ``messages`` and ``broker``), and the test suite gets it from pytest's
``pythonpath = ["."]`` in pyproject.toml (``python -m pytest`` run from the root had it anyway).  Not in
``tests/``: the benchmarks would then need the test folder on their path, next to pytest's conftest.  Not
a top-level module beside ``broker.py``: those are the product, listed in pyproject's ``py-modules`` and
installed; this is tooling.  It imports only the standard library, so either side can load it anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lifeline

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a wait on a child's output takes before it fails, unless the child or the call says otherwise.
WAIT = 10.0
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Terminal escape sequences (and carriage returns): what a screen shows is the text without them.
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\r")


class ExpectError(AssertionError):
    """A wait for a child's output failed: its deadline passed, or the output ended first.

    An AssertionError, so that a test that waited in vain fails as an assertion does."""

    def __init__(self, summary: str, output: Sequence[str]) -> None:
        self.summary = summary
        self.output = list(output)
        shown = "\n".join(self.output[-200:])
        super().__init__(f"{summary}; its output so far:\n{shown}" if self.output else f"{summary}; no output")

    def brief(self, lines: int = 5) -> str:
        """One line: the summary and the last few lines of output."""
        return f"{self.summary}; output: {' | '.join(self.output[-lines:]) or '(none)'}"


def python(*args: str | Path) -> list[str]:
    """The argv that runs a script of this project (``args[0]``, relative to the root) with this interpreter."""
    return [sys.executable, *map(str, args)]


class Child:
    """A child process whose output a thread keeps reading, and which is awaited on that output with deadlines.

    - ``argv``: the whole command (``python("broker.py", ...)`` for a script of this project).
    - ``stdin``: a pipe to write lines to (``send``); otherwise /dev/null.
    - ``tty=(columns, lines)``: output (and input) on a pseudo-terminal of that size, its controlling terminal
      in a session of its own, as in a terminal emulator; ``master`` is our side.  Its output is kept as bytes
      (``raw``); ``text()`` is the same without escape sequences.  Otherwise output is kept as lines.
    - ``answers``: on a tty, the terminal answers cursor-position requests (whoever reads ``on_output`` does:
      a terminal emulator model); ``on_output``: called with each chunk the tty gives, as it comes.
    - ``log``: a file every line is also appended to; ``keep``: the most lines held in memory.
    - ``die_with_parent``: killed by the kernel if the thread that started it ends first (benchmarks).
    - ``setup``: more to do in the child before exec.  SIGINT is always set back to its default there: a shell
      that starts the caller in the background leaves it ignored, and children inherit that.

    Two ways to wait: ``expect`` (the next line matching, after the last one it matched; raises ExpectError)
    and ``search`` (a match anywhere in the output from a character offset; None when there is none).
    """

    #: Every child started and not yet stopped, for ``stop_all``.
    running: ClassVar[list[Child]] = []

    def __init__(
        self,
        argv: Sequence[str | Path],
        name: str,
        *,
        stdin: bool = False,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
        tty: tuple[int, int] | None = None,
        answers: bool = False,
        on_output: Callable[[bytes], None] | None = None,
        log: Path | None = None,
        keep: int | None = None,
        die_with_parent: bool = False,
        setup: Callable[[], None] | None = None,
        timeout: float = WAIT,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.timeout = timeout
        self.lines: list[str] = []
        self.master: int | None = None
        self._raw = bytearray()
        self._seen = 0
        self._keep = keep
        self._ended = False
        self._cond = threading.Condition()
        self._on_output = on_output
        self._log = open(log, "a", buffering=1, encoding="utf-8") if log else None  # noqa: SIM115 (the pump closes it)
        env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")

        def preexec() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if die_with_parent:
                lifeline.die_with_parent()
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            if setup:
                setup()

        if tty:
            columns, rows = tty
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            env.update(TERM="xterm", COLUMNS=str(columns), LINES=str(rows))
            if not answers:  # nobody answers cursor-position requests: each would wait for its time-out
                env["PROMPT_TOOLKIT_NO_CPR"] = "1"
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    cwd=cwd,
                    env=env,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    close_fds=True,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            finally:
                os.close(slave)
            self.master = master
            pump = self._pump_tty
        else:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
                preexec_fn=preexec,
            )
            pump = self._pump_lines
        self.pid = self.popen.pid
        Child.running.append(self)
        self._pumper = threading.Thread(target=pump, name=f"read {name}", daemon=True)
        self._pumper.start()

    # --- the reader thread ---

    def _pump_lines(self) -> None:
        assert self.popen.stdout is not None
        try:
            for line in self.popen.stdout:
                if self._log:
                    self._log.write(line)
                with self._cond:
                    if self._keep is None or len(self.lines) < self._keep:
                        self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):  # the pipe was closed under it
            pass
        finally:
            self._end()

    def _pump_tty(self) -> None:
        assert self.master is not None
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal's other side has closed
                data = b""
            if not data:
                self._end()
                return
            if self._log:
                self._log.write(data.decode("utf-8", "replace"))
            with self._cond:
                self._raw += data
                if self._on_output is not None:
                    self._on_output(data)
                self._cond.notify_all()

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        if self._log:
            self._log.close()

    # --- output ---

    def _text(self) -> str:
        """Everything so far (caller holds the lock): the lines, or the terminal's text without escapes."""
        if self.master is not None:
            return ANSI.sub("", self._raw.decode("utf-8", "replace"))
        return "\n".join(self.lines)

    def _summary(self, what: str, timeout: float) -> str:
        """Why a wait failed: its output ended, or the deadline passed."""
        code = self.popen.poll()
        state = "still running" if code is None else f"exit {code}"
        if self._ended:
            return f"{self.name}: {what} before its output ended ({state})"
        return f"{self.name}: {what} within {timeout:g} s ({state})"

    def expect(self, pattern: str, timeout: float | None = None) -> re.Match[str]:
        """The next line that matches ``pattern``, after the last line this matched; ExpectError at the
        deadline, or once the output ended without one."""
        timeout = self.timeout if timeout is None else timeout
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._seen < len(self.lines):
                    line = self.lines[self._seen]
                    self._seen += 1
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    raise ExpectError(self._summary(f"no line matching {pattern!r}", timeout), self.lines)
                self._cond.wait(left)

    def expect_all(self, wanted: set[str], timeout: float | None = None) -> None:
        """Wait until every line of ``wanted`` was printed, in any order; ExpectError at the deadline."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while not wanted <= set(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    missing = sorted(wanted - set(self.lines))
                    raise ExpectError(self._summary(f"never printed {missing}", timeout), self.lines)
                self._cond.wait(left)

    def search(self, pattern: str, timeout: float | None = None, start: int = 0) -> re.Match[str] | None:
        """The first match of ``pattern`` (multi-line) in all the output from character ``start`` on (an offset
        into ``text()``), waiting for it up to ``timeout``; None at the deadline or once the output ended."""
        timeout = self.timeout if timeout is None else timeout
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._text(), start)
                left = deadline - time.monotonic()
                if match or left <= 0 or self._ended:
                    return match
                self._cond.wait(left)

    def wait_until(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """``predicate()`` once it is true, asked as output comes (holding the output's lock, so what ``on_output``
        builds is whole); None at the deadline, or once the output ended without it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                result = predicate()
                left = deadline - time.monotonic()
                if result or left <= 0 or self._ended:
                    return result or None
                self._cond.wait(min(left, 0.5))

    def output(self, settle: float = 0.0) -> list[str]:
        """All lines so far, after waiting ``settle`` s for stragglers (only ever needed to prove an absence)."""
        deadline = time.monotonic() + settle
        with self._cond:
            while not self._ended and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return list(self.lines)

    def text(self) -> str:
        """Everything it printed so far (all of it once it has exited); a terminal's without escape sequences."""
        if self.popen.poll() is not None:
            self._pumper.join(5)
        with self._cond:
            return self._text()

    @property
    def raw(self) -> str:
        """What it wrote to its terminal, escape sequences and all (for a pipe: its lines)."""
        with self._cond:
            return self._raw.decode("utf-8", "replace") if self.master is not None else "\n".join(self.lines)

    def tail(self, count: int = 5) -> str:
        with self._cond:
            return "output: " + " | ".join(self.lines[-count:]) if self.lines else "no output"

    # --- input ---

    def send(self, line: str, check: bool = True) -> None:
        """Write a line to its stdin; with ``check=False`` a child that is gone is not an error."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()
        except OSError:
            if check:
                raise

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    # --- its life ---

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status (subprocess.TimeoutExpired past ``timeout``), once all its output is in."""
        code = self.popen.wait(self.timeout if timeout is None else timeout)
        self._pumper.join(5)
        with contextlib.suppress(ValueError):
            Child.running.remove(self)
        return code

    def wait_exit(self, timeout: float) -> int | None:
        """Its exit status, or None if it is still running after ``timeout``."""
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send it ``sig`` (SIGKILL unless said) if it is still running; nothing is waited for."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, grace: float = 0.0) -> None:
        """SIGTERM and up to ``grace`` seconds to exit (no grace: SIGKILL straight away), then SIGKILL;
        always reaped, its pipes closed."""
        if self.popen.poll() is None:
            if grace > 0:
                self.popen.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(grace)
            if self.popen.poll() is None:
                self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        self._pumper.join(1)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if not self._pumper.is_alive():  # else a process it started still holds the pipe: leave it to the thread
            if self.popen.stdout is not None:
                self.popen.stdout.close()
            if self.master is not None:
                with contextlib.suppress(OSError):
                    os.close(self.master)
                self.master = None
        with contextlib.suppress(ValueError):
            Child.running.remove(self)

    @classmethod
    def stop_all(cls, grace: float = 1.0) -> None:
        for child in list(cls.running):
            child.stop(grace)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- what /proc says ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, is [0]); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int, reaped: bool = False) -> float | None:
    """User + system CPU seconds of a process, all its threads; with ``reaped``, also those of the children it
    has waited for.  None once it is gone."""
    fields = _stat(pid)
    if fields is None:
        return None
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return ticks / TICK


def _children() -> dict[int, list[int]]:
    """Every living process's children, by parent id, from /proc (one pass)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    return parents


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every living process below ``pid`` (children, theirs, ...), found by their parent ids in /proc."""
    children = _children() if children is None else children
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tree_cpu_seconds(pid: int, children: dict[int, list[int]] | None = None) -> float | None:
    """CPU seconds of a process and of all its descendants, living or exited: all a server costs, when it
    forks (Redis's append-only-file rewrite) or starts helpers.  None once the process is gone.  Pass
    ``children`` (from one pass over /proc) to measure several trees at one instant."""
    total = cpu_seconds(pid, reaped=True)
    if total is None:
        return None
    return total + sum(cpu_seconds(kid, reaped=True) or 0.0 for kid in descendants(pid, children))


def trees_cpu_seconds(pids: Sequence[int]) -> list[float | None]:
    """``tree_cpu_seconds`` of each of ``pids``, from one pass over /proc."""
    children = _children()
    return [tree_cpu_seconds(pid, children) for pid in pids]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``python`` is the interpreter's main thread, ``ZMQbg/IO/0`` libzmq's I/O)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 once it is gone)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return 0


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (its peak) of a process, in KiB; empty once it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def free_port() -> int:
    """A tcp port of 127.0.0.1 nobody listens on now (for a server that must come back on the same one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    """The soft open-files limit raised to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
