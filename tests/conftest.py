"""Real processes on real sockets: a broker, console clients and loggers, driven by their stdio.

Nothing here sleeps to synchronise: every wait is "until this line (or event)
shows up, or fail at the deadline".
"""

from __future__ import annotations

import fcntl
import os
import pty
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

import messages as m
from messages import feed_events

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # seconds any single expectation may take before the test fails


class StubClient:
    """Stands in for a ChatClient where only UI logic is under test (console, window): no sockets.

    Records the requests the UI makes and holds the state the UI reads.
    """

    def __init__(self, user: str = "me", rooms: tuple[str, ...] = ("general",), joined: bool = True) -> None:
        self.name = user
        self.user: str | None = user
        self.rooms: dict[str, None] = dict.fromkeys(rooms) if joined else {}
        self.wanted_rooms: dict[str, None] = dict.fromkeys(rooms)
        self.ack_timeout = 3.0  # how long the console keeps quiet about further retry-later refusals
        self.calls: list[tuple[Any, ...]] = []

    def say(self, room: str, text: str, me: bool = False) -> str:
        self.calls.append(("say", room, text, me))
        return "id"

    def dm(self, to: str, text: str, me: bool = False) -> str:
        self.calls.append(("dm", to, text, me))
        return "id"

    def join(self, room: str) -> None:
        self.wanted_rooms[room] = None
        self.calls.append(("join", room))

    def leave(self, room: str) -> None:
        self.calls.append(("leave", room))

    def who(self, room: str) -> None:
        self.calls.append(("who", room))

    # What ChatClient does on the broker's replies, for the UI to see:

    def joined(self, room: str, users: list[str] | None = None, history: list[m.RoomEvent] | None = None) -> m.Joined:
        self.rooms[room] = None
        self.wanted_rooms[room] = None
        return m.Joined(room=room, users=users or [self.name], history=history or [], seq=1)

    def left(self, room: str) -> m.Left:
        self.rooms.pop(room, None)
        self.wanted_rooms.pop(room, None)
        return m.Left(room=room)


def free_port() -> int:
    """A tcp port nobody listens on now, for a broker that must come back on the same endpoints."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_sigint() -> None:
    """In a child: SIGINT as a terminal would deliver it.  A shell that starts the test run in the
    background (``cmd &`` without job control) leaves SIGINT ignored, and children inherit that, so the
    Ctrl-C tests would test the launcher instead of the client."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A child process whose stdout lines are collected by a thread and awaited with deadlines."""

    def __init__(self, args: list[str], name: str, stdin: bool = True, cwd: Path = ROOT) -> None:
        self.name = name
        self.args = args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            preexec_fn=default_sigint,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._seen = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _collect(self, timeout: float) -> bool:
        """Move one line from the pipe into ``lines``; False at end of output or timeout."""
        try:
            line = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
            return False
        self.lines.append(line)
        return True

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait for the next line (after the last one matched) that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                match = regex.search(line)
                if match:
                    return match
            collected = self._collect(deadline - time.monotonic())
            if not collected and (time.monotonic() >= deadline or self.popen.poll() is not None):
                raise AssertionError(
                    f"{self.name}: no line matching {pattern!r} within {timeout}s; output so far:\n"
                    + "\n".join(self.lines)
                )

    def expect_all(self, lines: set[str], timeout: float = WAIT) -> None:
        """Wait until every one of ``lines`` has been printed, in any order (for events no order is promised for)."""
        deadline = time.monotonic() + timeout
        while not lines <= set(self.lines):
            if not self._collect(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: never printed {lines - set(self.lines)}:\n" + "\n".join(self.lines))

    def output(self, settle: float = 0.0) -> list[str]:
        """All lines so far (optionally waiting ``settle`` s for stragglers: only to prove an absence)."""
        deadline = time.monotonic() + settle
        while self._collect(deadline - time.monotonic()):
            pass
        return list(self.lines)

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()

    def wait(self, timeout: float = WAIT) -> int:
        code = self.popen.wait(timeout)
        self.output()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


class Broker(Proc):
    """A broker on ephemeral tcp ports of 127.0.0.1; ``router``/``pub`` are the endpoints it printed."""

    def __init__(
        self,
        *extra: str,
        heartbeat: float = 0.3,
        session_timeout: float = 2.0,
        router: str = "tcp://127.0.0.1:0",
        pub: str = "tcp://127.0.0.1:0",
        db: str = ":memory:",
    ) -> None:
        super().__init__(
            [
                "broker.py",
                "--router",
                router,
                "--pub",
                pub,
                "--db",
                db,
                "--heartbeat",
                str(heartbeat),
                "--session-timeout",
                str(session_timeout),
                *extra,
            ],
            "broker",
            stdin=False,
        )
        self.router = self.expect(r"inbox \(ROUTER\): (\S+)").group(1)
        self.pub = self.expect(r"feed  \(PUB\):\s+(\S+)").group(1)

    @property
    def endpoints(self) -> list[str]:
        return ["--router", self.router, "--pub", self.pub]


class Harness:
    """Starts processes for one test and stops them all at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.peers: list[RawPeer] = []
        self.ctx = zmq.Context()

    def broker(self, *extra: str, **kw: float | str) -> Broker:
        broker = Broker(*extra, **kw)
        self.procs.append(broker)
        return broker

    def client(self, broker: Broker, name: str, *extra: str) -> Proc:
        """A console client (stdin is a pipe, so it prints plain lines); returns once it is connected."""
        proc = Proc(["client.py", *broker.endpoints, "--name", name, *extra], name)
        self.procs.append(proc)
        proc.expect(rf"\[system\] connected to .* as {re.escape(name)}")
        proc.expect(r"\[system\] you are in #")
        return proc

    def logger(self, broker: Broker, *extra: str) -> Proc:
        proc = Proc(["logger.py", *broker.endpoints, *extra], "logger", stdin=False)
        self.procs.append(proc)
        proc.expect(r"chat-logger: following")
        return proc

    def raw(self, broker: Broker) -> RawPeer:
        peer = RawPeer(self.ctx, broker)
        self.peers.append(peer)  # kept, so its sockets are closed at the end and not left to the GC
        return peer

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()
        for peer in self.peers:
            peer.dealer.close(linger=0)
            peer.sub.close(linger=0)
        self.ctx.destroy(linger=0)


class RawPeer:
    """A bare DEALER + SUB, for sending exactly the bytes a test wants and reading the replies."""

    def __init__(self, ctx: zmq.Context, broker: Broker) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.connect(broker.router)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(broker.pub)

    def send(self, *frames: bytes) -> None:
        self.dealer.send_multipart(list(frames))

    def request(self, envelope: dict) -> None:
        self.dealer.send(msgspec.json.encode(envelope))

    def reply(self, timeout: float = WAIT) -> dict:
        if not self.dealer.poll(timeout * 1000):
            raise AssertionError(f"no reply within {timeout}s")
        return msgspec.json.decode(self.dealer.recv())

    def replies(self, timeout: float = WAIT) -> list[dict]:
        """The envelopes of the next reply frame: one, or the batch that answers a batch."""
        if not self.dealer.poll(timeout * 1000):
            raise AssertionError(f"no reply within {timeout}s")
        return feed_events(self.dealer.recv())

    def feed(self, predicate, timeout: float = WAIT) -> dict:
        """The next feed event for which ``predicate(event)`` is true."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.sub.poll(left * 1000):
                _topic, payload = self.sub.recv_multipart()
                for event in feed_events(payload):  # one event, or a batch of them
                    if predicate(event):
                        return event
        raise AssertionError(f"no matching feed event within {timeout}s")

    def wait_subscribed(self, timeout: float = WAIT) -> None:
        """Block until the SUB's subscription is live (a heartbeat came through)."""
        self.feed(lambda e: e["type"] == "heartbeat", timeout)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\r")


class Terminal:
    """A process on a pseudo-terminal ``columns`` wide (the window size and COLUMNS agree, as in a real
    terminal); ``raw`` is everything it wrote, ``screen`` the same with escape sequences removed."""

    def __init__(self, args: list[str], columns: int = 120, lines: int = 40) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        # No cursor-position requests: a real terminal answers them, this pty would leave each one to time out.
        env = dict(os.environ, TERM="xterm", COLUMNS=str(columns), LINES=str(lines), PROMPT_TOOLKIT_NO_CPR="1")
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
        self._raw = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._raw += data

    @property
    def raw(self) -> str:
        with self._lock:
            return self._raw.decode("utf-8", "replace")

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw)

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


def inproc_broker(ctx: zmq.Context, core: Any, topic: bytes, routing_id: bytes) -> tuple[Any, zmq.Socket, zmq.Socket]:
    """A real ``broker.Broker`` around ``core`` on inproc sockets (its loop driven by the test), a SUB on
    its feed subscribed to ``topic`` and a DEALER with ``routing_id`` on its inbox."""
    from broker import Broker

    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    router.bind("inproc://inbox")
    pub.bind("inproc://feed")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect("inproc://feed")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, routing_id)
    dealer.connect("inproc://inbox")
    return Broker(router, pub, core), sub, dealer
