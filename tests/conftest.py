"""Real processes on real sockets: a broker, console clients and loggers, driven by their stdio.

Nothing here sleeps to synchronise: every wait is "until this line (or event)
shows up, or fail at the deadline".
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

import messages as m
from benchmarks.procs import ROOT, WAIT, Child, free_port, python
from messages import feed_events

__all__ = [
    "ROOT",
    "WAIT",
    "Broker",
    "Harness",
    "Proc",
    "RawPeer",
    "StubClient",
    "Terminal",
    "free_port",
    "inproc_broker",
]


#: Debian's Chromium, which Playwright drives (``playwright install`` is never needed), and how it is started:
#: headless, and without the background traffic that this machine's closed network refuses.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for a module's page tests (skipped, with the reason, where Debian's chromium is missing)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def wait_for(condition: Any, timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll a condition on files or processes that change by themselves; the condition synchronises."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def until_no_error(ask: Any, attempts: int = 5) -> Any:
    """``ask()`` (an answer with an ``error``) again until one has none, as the front door does when it makes
    its stream: under load JetStream may time out, or still be electing its leader.  The last answer."""
    for _ in range(attempts):
        answer = ask()
        if answer.error is None:
            break
    return answer


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

    def topic(self, room: str, topic: str) -> None:
        self.calls.append(("topic", room, topic))

    def nick(self, name: str) -> None:
        self.calls.append(("nick", name))

    def away(self, reason: str = "") -> None:
        self.calls.append(("away", reason))

    # What ChatClient does on the broker's replies, for the UI to see:

    def joined(self, room: str, users: list[str] | None = None, history: list[m.RoomEvent] | None = None) -> m.Joined:
        self.rooms[room] = None
        self.wanted_rooms[room] = None
        return m.Joined(room=room, users=users or [self.name], history=history or [], seq=1)

    def left(self, room: str) -> m.Left:
        self.rooms.pop(room, None)
        self.wanted_rooms.pop(room, None)
        return m.Left(room=room)


class Proc(Child):
    """A Python program of this project (``args``: its script and options) whose stdout lines are collected
    by a thread and awaited with deadlines (``expect``, ``expect_all``, ``output``): the shared
    ``benchmarks.procs.Child``, with the suite's defaults (stdin a pipe, ``WAIT`` s per wait, SIGKILL to stop)."""

    def __init__(self, args: list[str], name: str, stdin: bool = True, cwd: Path = ROOT) -> None:
        super().__init__(python(*args), name, stdin=stdin, cwd=cwd, timeout=WAIT)
        self.args = args


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

    @property
    def writer_pid(self) -> int:
        """The pid of its store's writer, its only child (a database file; Linux: read from /proc)."""
        (child,) = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return int(child)


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


class Terminal:
    """A process on a pseudo-terminal ``columns`` wide (the window size and COLUMNS agree, as in a real
    terminal), its controlling terminal in a session of its own, so that Ctrl-C typed while the line editor
    is not reading still raises SIGINT; ``raw`` is everything it wrote, ``screen`` the same with escape
    sequences removed."""

    def __init__(self, args: list[str], columns: int = 120, lines: int = 40) -> None:
        self.child = Child(python(*args), "terminal", tty=(columns, lines), timeout=WAIT)
        self.proc = self.child.popen
        assert self.child.master is not None
        self.master = self.child.master

    @property
    def raw(self) -> str:
        return self.child.raw

    @property
    def screen(self) -> str:
        return self.child.text()

    def expect(self, text: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the terminal within {timeout}s:\n{self.screen}")
            # Polling the buffer the reader thread fills (the condition synchronises), every 20 ms as before:
            # the console loses a Ctrl-D typed within a millisecond of "[system] you are in" (a race of its own,
            # reported), and an instant wake-up here made test_terminal's Ctrl-D test fail half the time.
            time.sleep(0.02)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> None:
        self.child.stop()


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
