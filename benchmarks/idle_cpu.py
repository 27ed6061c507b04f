"""Idle CPU: with the broker down, an idle console, window, logger and gateway each use under 2% of a core.

    python benchmarks/idle_cpu.py                # 30 s per phase
    python benchmarks/idle_cpu.py --seconds 60
    python benchmarks/idle_cpu.py --quick        # 3 s per phase (the test suite runs this)

Why: a program left open while the broker is away (a restart, a crash, a laptop off the network) must
wait for it quietly.  A reconnect loop that spins, or a poll timeout that became zero, costs a core and
shows up nowhere else; this puts a number on it, beside the same program idle with the broker up.

One broker (``--db :memory:``, its defaults otherwise) on ephemeral loopback ports, and the four programs a
person leaves open, each with its default options:

- the console (``client.py``) on a pseudo-terminal of its own (as in a terminal, its controlling tty), whose
  output a thread keeps reading so it never blocks;
- the window (``gui.py``) on an ``Xvfb`` display of its own (``CHAT_GUI_ECHO=1``, so it says when it is
  connected and when it lost the connection); without Xvfb its row is skipped;
- the logger (``logger.py --out FILE`` in a temporary directory);
- the gateway (``web.py --port 0``) with one page connected: a WebSocket client in this process (a thread)
  doing what ``static/chat.js`` does when idle: ``hello``, then a ``ping`` every heartbeat.  Only the
  gateway process is measured.

Phase 1, the baseline: all four connected and in their room, broker up; each process's CPU time (user + sys,
all its threads, from ``/proc/PID/stat``) over ``--seconds``.  Phase 2: the broker is killed (SIGKILL); once
each program has said it lost the connection (the page: no traffic for 3 heartbeats), the same measurement.

Exit status 1 if any program uses more than 2% of a core with the broker down, died, or could not be
measured for another reason than a missing dependency; else 0.  A missing dependency (no Xvfb, no tkinter,
no aiohttp) skips that row and says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.procs import Child, cpu_seconds, python  # noqa: E402

LIMIT_PCT = 2.0
READY_S = 20.0  # how long a program may take to connect (a cold start imports a lot)
NOTICE_S = 30.0  # how long a program may take to say the broker is gone
MISSED_HEARTBEATS = 3  # as client.py and chat.js: heartbeats missed before the connection counts as lost
#: What a program prints when a third-party module or a display it needs is missing: its row is skipped, not
#: failed.  A module of this project that cannot be imported is a bug, not a missing dependency.
THIRD_PARTY = ("tkinter", "_tkinter", "aiohttp", "zmq", "msgspec", "prompt_toolkit")
MISSING = re.compile(
    rf"No module named '(?:{'|'.join(THIRD_PARTY)})[.']\S*|.*tkinter is not installed.*|.*cannot open a window.*"
)
PROGRAMS = ("console", "window", "logger", "gateway")


class Program(Child):
    """A program of this project (the shared ``benchmarks.procs.Child``): its output on a pipe or, with ``tty``,
    on a pseudo-terminal of its own (its controlling terminal, as a terminal emulator gives it), read by a
    thread so it never blocks, and searched with ``search(pattern, timeout, start)``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, tty: bool = False) -> None:
        super().__init__(python(*argv), name, env=env, tty=(120, 40) if tty else None, timeout=READY_S)

    def missing(self) -> str | None:
        """The line of its output naming a missing dependency, if any."""
        found = MISSING.search(self.text())
        return found.group(0).strip() if found else None

    def why_not(self) -> str:
        """Why it is not ready: the line naming a missing dependency, or its state and last line."""
        missing = self.missing()
        if missing:
            return missing
        lines = [line for line in self.text().splitlines() if line.strip()]
        state = "still running" if self.popen.poll() is None else f"exit {self.popen.returncode}"
        return f"{state}: {lines[-1].strip() if lines else 'no output'}"


class Page(threading.Thread):
    """One browser page on the gateway, as ``static/chat.js`` behaves when idle: ``hello`` on open, then a
    ``ping`` every heartbeat (from the welcome), reading everything it is sent.  It runs here, in a thread,
    so that only the gateway's CPU is in the gateway's row."""

    def __init__(self, url: str, origin: str, user: str, room: str) -> None:
        super().__init__(name="page", daemon=True)
        self.url, self.origin, self.user, self.room = url, origin, user, room
        self.heartbeat = 1.0
        self.welcomed = threading.Event()
        self.joined = threading.Event()
        self.last_heard = time.monotonic()
        self.error: str | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self._stopping.set()
        loop, halt = self._loop, self._halt
        if loop is not None and halt is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(halt.set)
        self.join(5)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heard

    def _heard(self, data: str) -> None:
        self.last_heard = time.monotonic()
        value = json.loads(data)
        for env in value if isinstance(value, list) else [value]:
            kind = env.get("type") if isinstance(env, dict) else None
            if kind == "welcome":
                beat = env.get("heartbeat")
                if isinstance(beat, (int, float)) and beat > 0:
                    self.heartbeat = float(beat)
                self.welcomed.set()
            elif kind == "joined" and env.get("room") == self.room:
                self.joined.set()
            elif kind == "error" and not self.welcomed.is_set():
                self.error = f"hello refused: {env.get('code')} {env.get('detail', '')}"

    async def _main(self) -> None:
        import aiohttp

        self._loop, self._halt = asyncio.get_running_loop(), asyncio.Event()
        if self._stopping.is_set():
            return
        async with aiohttp.ClientSession() as http, http.ws_connect(self.url, origin=self.origin) as ws:
            await ws.send_str(json.dumps({"type": "hello", "user": self.user, "rooms": [self.room]}))
            loop = self._loop
            next_ping = loop.time() + self.heartbeat
            stop = asyncio.ensure_future(self._halt.wait())
            receive = asyncio.ensure_future(ws.receive())
            try:
                while True:
                    timeout = max(0.0, next_ping - loop.time())
                    done, _ = await asyncio.wait({stop, receive}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    if stop in done:
                        return
                    if receive in done:
                        msg = receive.result()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            self.error = f"the gateway closed the WebSocket ({msg.type.name}, {ws.close_code})"
                            return
                        self._heard(msg.data)
                        receive = asyncio.ensure_future(ws.receive())
                    if loop.time() >= next_ping:
                        await ws.send_str('{"type": "ping"}')
                        next_ping = max(next_ping + self.heartbeat, loop.time())
            finally:
                for task in (stop, receive):
                    task.cancel()


def start_xvfb() -> tuple[subprocess.Popen[bytes] | None, str]:
    """A fresh Xvfb; ``-displayfd`` makes it pick a free display and say so once it accepts clients.
    Returns (process, display) or (None, why not)."""
    if shutil.which("Xvfb") is None:
        return None, "no Xvfb"
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + READY_S
    try:
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                break
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
    finally:
        os.close(read_fd)
    if not number.endswith(b"\n"):
        xvfb.kill()
        xvfb.wait(5)
        return None, "Xvfb did not start"
    return xvfb, f":{number.decode().strip()}"


@dataclass
class Row:
    """One program's measurement: CPU % of one core per phase, or why there is none."""

    name: str
    program: Program | None = None
    skipped: str | None = None  # a missing dependency: not a failure
    error: str | None = None  # could not be measured: a failure
    up: float | None = None
    down: float | None = None
    noticed: float | None = None  # seconds from the kill until it said the broker is gone
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.skipped:
            return f"skipped ({self.skipped})"
        if self.error:
            return f"ERROR ({self.error})"
        if self.down is None:
            return "ERROR (not measured)"
        return "ok" if self.down <= LIMIT_PCT else "OVER"

    @property
    def failed(self) -> bool:
        return not self.skipped and self.verdict != "ok"


class Bench:
    """The broker, the four programs, the page and the display, started once for both phases."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.broker: Program | None = None
        self.xvfb: subprocess.Popen[bytes] | None = None
        self.page: Page | None = None
        self.rows = {name: Row(name) for name in PROGRAMS}

    def start(self) -> None:
        self.broker = Program("broker", ["broker.py", "--router", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                                         "--db", ":memory:"])  # fmt: skip
        router = self.broker.search(r"inbox \(ROUTER\):\s+(\S+)", READY_S)
        pub = self.broker.search(r"feed  \(PUB\):\s+(\S+)", READY_S)
        if router is None or pub is None:
            raise RuntimeError(f"the broker did not start: {self.broker.why_not()}")
        ends = ["--router", router.group(1), "--pub", pub.group(1)]
        rows = self.rows
        # All four start at once (a cold start is mostly imports); each is then awaited in turn.
        rows["console"].program = Program("console", ["client.py", "--name", "idle1", *ends], tty=True)
        self.xvfb, display = start_xvfb()
        if self.xvfb is None:
            rows["window"].skipped = display
        else:
            env = dict(os.environ, DISPLAY=display, CHAT_GUI_ECHO="1")
            rows["window"].program = Program("window", ["gui.py", "--name", "idle2", *ends], env=env)
        log = str(self.work / "chat.jsonl")
        rows["logger"].program = Program("logger", ["logger.py", *ends, "--out", log])
        rows["gateway"].program = Program("gateway", ["web.py", *ends, "--listen", "127.0.0.1", "--port", "0"])
        self._await("console", r"\[system\] you are in #")
        self._await("window", r"\[system\] you are in #")
        self._await("logger", r"chat-logger: following")
        url = self._await("gateway", r"open (http://\S+)/")
        if url is not None:
            self._connect_page(url.group(1))

    def _await(self, name: str, pattern: str) -> re.Match[str] | None:
        """Wait until the program shows it is connected; else its row says why (skipped or an error)."""
        row = self.rows[name]
        if row.program is None:
            return None
        match = row.program.search(pattern, READY_S)
        if match is None:
            missing = row.program.missing()
            if missing:
                row.skipped = missing
            else:
                row.error = f"did not connect: {row.program.why_not()}"
            row.program.stop()
            row.program = None
        return match

    def _connect_page(self, http: str) -> None:
        row = self.rows["gateway"]
        try:
            import aiohttp  # noqa: F401 (the page needs it; the gateway already had it)
        except ImportError:
            row.skipped = "aiohttp is not installed here, for the page"
            return
        self.page = Page(http.replace("http://", "ws://") + "/ws", http, "idle4", "general")
        self.page.start()
        deadline = time.monotonic() + READY_S
        while not self.page.joined.wait(0.1):  # the page's thread sets it; the deadline bounds the wait
            if self.page.error or not self.page.is_alive() or time.monotonic() > deadline:
                row.error = f"the page got no welcome: {self.page.error or 'no answer'}"
                return

    def measure(self, seconds: float) -> dict[str, float | None]:
        """CPU % of one core of each running program over ``seconds`` of wall time (None: it died)."""
        programs = {r.name: r.program for r in self.rows.values() if r.program is not None}
        before = {name: cpu_seconds(p.pid) for name, p in programs.items()}
        began = time.monotonic()
        time.sleep(seconds)  # the measurement window itself: the programs are left alone
        after = {name: cpu_seconds(p.pid) for name, p in programs.items()}
        wall = time.monotonic() - began
        out: dict[str, float | None] = {}
        for name, program in programs.items():
            start, end = before[name], after[name]
            alive = program.popen.poll() is None
            out[name] = 100.0 * (end - start) / wall if start is not None and end is not None and alive else None
        return out

    def kill_broker(self) -> None:
        """SIGKILL, as a crash; then wait until every program has noticed (the state under test)."""
        assert self.broker is not None
        marks = {r.name: len(r.program.text()) for r in self.rows.values() if r.program is not None}
        self.broker.popen.send_signal(signal.SIGKILL)
        self.broker.popen.wait(10)
        lost = {
            "console": r"connection lost",
            "window": r"\[status\] connection lost",
            "logger": r"chat-logger: lost",
        }
        began = time.monotonic()
        for name, pattern in lost.items():
            program = self.rows[name].program
            if program is not None:
                left = NOTICE_S - (time.monotonic() - began)
                if program.search(pattern, max(0.0, left), start=marks[name]) is None:
                    self.rows[name].notes.append(f"never said it lost the connection ({program.why_not()})")
                else:
                    self.rows[name].noticed = time.monotonic() - began
        if self.page is not None and self.rows["gateway"].program is not None:
            silence = MISSED_HEARTBEATS * self.page.heartbeat
            while (short := silence - self.page.silent_for()) > 0 and time.monotonic() - began < NOTICE_S:
                time.sleep(short)  # until the page would call it lost, unless it heard something meanwhile
            if self.page.silent_for() < silence:
                self.rows["gateway"].notes.append("the page kept hearing from the gateway with the broker down")
            else:
                self.rows["gateway"].noticed = time.monotonic() - began

    def stop(self) -> None:
        """The page closes, every process goes (SIGKILL: nothing of theirs is kept), then the display; a
        failure in one step does not leave the others running (an ExitStack runs its callbacks last first)."""
        with contextlib.ExitStack() as stack:
            if self.xvfb is not None:
                stack.callback(self._stop_xvfb, self.xvfb)
            for program in [self.broker, *(r.program for r in self.rows.values())]:
                if program is not None:
                    stack.callback(program.stop)
            if self.page is not None:
                stack.callback(self.page.stop)

    @staticmethod
    def _stop_xvfb(xvfb: subprocess.Popen[bytes]) -> None:
        xvfb.terminate()
        try:
            xvfb.wait(5)
        except subprocess.TimeoutExpired:
            xvfb.kill()
            xvfb.wait(5)


def table(rows: list[Row], seconds: float) -> str:
    """The side-by-side table: program, broker up, broker down, limit, verdict."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}%"

    head = ["program", "CPU broker up", "CPU broker down", "limit", "verdict"]
    body = [[r.name, pct(r.up), pct(r.down), f"{LIMIT_PCT:g}%", r.verdict] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        out = [c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    title = f"idle CPU, % of one core over {seconds:g} s per phase (user+sys, all threads, /proc/PID/stat)"
    return "\n".join([title, line(head), rule, *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="measurement window of each phase (default: 30, quick: 3)")
    parser.add_argument("--quick", action="store_true", help="3 s per phase, for a smoke run")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 3.0 if args.quick else 30.0
    if seconds <= 0:
        parser.error("--seconds must be positive")
    with tempfile.TemporaryDirectory(prefix="chat-idle-") as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.start()
            for name, value in bench.measure(seconds).items():
                bench.rows[name].up = value
            bench.kill_broker()
            for name, value in bench.measure(seconds).items():
                bench.rows[name].down = value
            if bench.page is not None and bench.page.error:  # before the page is closed on purpose
                bench.rows["gateway"].notes.append(f"page: {bench.page.error}")
        except RuntimeError as exc:
            print(f"idle_cpu: {exc}", file=sys.stderr)
            return 1
        finally:
            bench.stop()
    rows = list(bench.rows.values())
    for row in rows:
        if row.program is not None and (row.up is None or row.down is None):
            row.error = f"died ({row.program.why_not()})"
    print(table(rows, seconds))
    said = [f"{r.name} {r.noticed:.1f} s" for r in rows if r.noticed is not None]
    if said:
        print(f"broker killed (SIGKILL); lost connection noticed after: {', '.join(said)} (page: {MISSED_HEARTBEATS} "
              "silent heartbeats)")  # fmt: skip
    for row in rows:
        for note in row.notes:
            print(f"note: {row.name}: {note}")
    failed = [r.name for r in rows if r.failed]
    verdict = f"FAIL ({', '.join(failed)})" if failed else "PASS"
    print(f"RESULT: {verdict}: limit {LIMIT_PCT:g}% of a core with the broker down")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
