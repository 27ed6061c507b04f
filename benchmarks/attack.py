"""Adversary suite: a real broker, web gateway and relay on loopback, one honest user, and attacks one after another.

    python benchmarks/attack.py                   # every attack, about --seconds 5 each
    python benchmarks/attack.py --quick           # ~1 s each and smaller counts (the test suite runs this)
    python benchmarks/attack.py --only 03,07,19   # some of them (key prefixes); --list shows the keys

The broker runs in its default mode (``--db FILE``, in a temporary directory) with its default limits; the
gateway (``web.py``) and the relay (``relay.py``) are connected to it.  One honest user (a process of its own:
a DEALER to the broker and a SUB through the relay) pings the broker all the time, sends a message every
100 ms with distinct ids and resends what has no ack, as the protocol asks, recording every ack and feed event.

Every attack is bounded in count and in time, and catches its own exceptions (reported as ``error``).  It
**held** when:

- no process died (broker, gateway, relay, and any extra process the attack itself judges),
- the broker's peak RSS stayed under 512 MiB and the gateway's under 256 MiB (sampled from
  ``/proc/PID/status`` every 20 ms, and VmHWM, so no peak is missed),
- the honest user's ping p99 during the attack stayed under 250 ms (printed but not judged with ``--quick``),
- nothing the honest user got acked during the attack is missing from the room's history (a final
  history walk) and nothing was published twice,
- and the attack's own check (its docstring) passed.

An attack's window (its RSS peaks, ping p99, losses) runs from its start until the broker is idle again
(what an attack left queued is part of it: "broker busy N s after"; at most 3x --seconds).  What an attack
only needs made first (the room of big events for 02a/02b) is made before its window opens.

Each attacker connects from a loopback address of its own (``127.x.y.z``: ZeroMQ's ``tcp://SRC:0;DST``
endpoints, aiohttp's ``local_addr``), so the broker's per-source limits see one attacker as one source and
the honest user (127.0.0.2) as another.  A process that grows past 3x its bound is killed with SIGKILL (the
guard, so that a broken limit cannot take the machine down); a process that died, or is still over its
bound after an attack, is restarted for the next one.  With ``--quick`` the gateway runs with
``--slow-consumer-timeout 1`` (so attack 12 sees a disconnect within seconds); every other option of every
process is its default.

Exit status: 1 if any attack broke or errored, else 0; ``--no-fail`` always exits 0.
(``attack.py honest ...`` is the honest user's process; it is not meant to be run by hand.)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import functools
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keys  # noqa: E402
import messages as m  # noqa: E402
from benchmarks.procs import Child, cpu_seconds, free_port, python, status_kib  # noqa: E402
from broker import STOPPED_READING  # noqa: E402
from chat import ChatConfig  # noqa: E402

MIB = 1024 * 1024
BROKER_RSS_LIMIT_MIB = 512
GATEWAY_RSS_LIMIT_MIB = 256
PING_P99_LIMIT_MS = 250.0
#: Past this multiple of its bound the sampler kills a process (SIGKILL): the attack has broken it anyway.
GUARD_FACTOR = 3
HONEST_SOURCE = "127.0.0.2"
HONEST_NAME = "honest"
HONEST_ROOM = "honest"
#: Control characters that JSON escapes as ``\\u00XX`` (6 bytes each): 4000 of them are ~24 KB on the wire.
CONTROL = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\b\t\n\f\r")
CONTROL_TEXT = (CONTROL * (m.MAX_TEXT_CHARS // len(CONTROL) + 1))[: m.MAX_TEXT_CHARS]
PING_TIMEOUT_S = 2.0
RESEND_S = 2.0
#: Resends per second (bursts of RESEND_BURST): with a message every 100 ms and a ping every 150 ms this
#: keeps the honest user within the broker's default 20 requests/s per connection, as a client should.
RESEND_RATE = 3.0
RESEND_BURST = 20.0

encode_json = msgspec.json.encode


def now() -> float:
    return time.monotonic()


def via(source: str, endpoint: str) -> str:
    """``tcp://127.0.0.1:PORT`` connected from ``source``: ZeroMQ's ``tcp://SRC:0;DST`` form."""
    return endpoint.replace("tcp://", f"tcp://{source}:0;", 1)


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def envelopes(frame: bytes) -> list[dict[str, Any]]:
    """One reply frame -> its envelopes (one, or the batch a batch gets)."""
    return m.feed_events(frame)


# --- processes -----------------------------------------------------------------------------------


_ORIGINAL_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)


def _child_setup() -> None:
    """In a child: the file limit this script started with (we raise our own for the idle-connection attack),
    and SIGINT as a terminal would deliver it."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, _ORIGINAL_NOFILE)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _drop_dac_capabilities() -> None:
    """Drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from this process's bounding set (prctl(2)
    by ctypes), so that after exec even root is bound by file modes.  A root broker can still read and
    write what root owns with the matching mode bits."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


def _child_setup_without_dac() -> None:
    _child_setup()
    _drop_dac_capabilities()  # root writes anything: without these a mode 0444 file is read-only to it


def spawn(argv: list[str], name: str, logdir: Path, drop_dac: bool = False) -> Child:
    """A script of this project as a process of ours (``benchmarks.procs.Child``): its output lines are kept
    (the first 20,000) and copied to ``logdir/NAME.log``."""
    setup = _child_setup_without_dac if drop_dac else _child_setup
    return Child(python(*argv), name, log=logdir / f"{name}.log", keep=20_000, setup=setup)


class Sampler(threading.Thread):
    """Samples the RSS of the watched processes every 20 ms; keeps each window's peaks; the guard."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.lock = threading.Lock()
        self.peaks: dict[str, float] = {}
        self.hwm_start: dict[str, tuple[int, int]] = {}
        self.guard_kills: list[str] = []
        self.stopped = threading.Event()

    def watched(self) -> dict[str, tuple[Child | None, int]]:
        lab = self.lab
        return {
            "broker": (lab.broker, BROKER_RSS_LIMIT_MIB),
            "gateway": (lab.gateway, GATEWAY_RSS_LIMIT_MIB),
            "relay": (lab.relay, BROKER_RSS_LIMIT_MIB),
            "curve-broker": (lab.curve_broker, BROKER_RSS_LIMIT_MIB),
        }

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            for name, (child, limit) in self.watched().items():
                if child is None or not child.alive():
                    continue
                rss = status_kib(child.pid).get("VmRSS", 0) / 1024
                with self.lock:
                    self.peaks[name] = max(self.peaks.get(name, 0.0), rss)
                if rss > GUARD_FACTOR * limit:
                    child.popen.kill()
                    with self.lock:
                        self.guard_kills.append(f"guard killed the {name} at {rss:.0f} MiB")

    def window(self) -> None:
        """Start a new window: peaks from now on."""
        with self.lock:
            self.peaks = {}
            self.guard_kills = []
            self.hwm_start = {}
            for name, (child, _) in self.watched().items():
                if child is not None and child.alive():
                    self.hwm_start[name] = (child.pid, status_kib(child.pid).get("VmHWM", 0))

    def peak(self, name: str) -> float:
        """The window's peak RSS of ``name`` in MiB: the samples, and VmHWM if it rose in the window."""
        child = self.watched()[name][0]
        with self.lock:
            peak = self.peaks.get(name, 0.0)
            start = self.hwm_start.get(name)
        if child is not None and child.alive():
            status = status_kib(child.pid)
            peak = max(peak, status.get("VmRSS", 0) / 1024)
            hwm = status.get("VmHWM", 0)
            if start is None or start[0] != child.pid or hwm > start[1]:
                peak = max(peak, hwm / 1024)
        return peak

    def kills(self) -> list[str]:
        with self.lock:
            return list(self.guard_kills)


# --- the honest user (a process of its own) ----------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_honest(argv: list[str]) -> int:
    """The honest user: pings every --ping-interval, a message every --msg-interval, resends unacked ones.

    Writes one line per fact to --record (monotonic times, comparable across processes on Linux):
    ``P t_sent rtt_ms [lost|code]``, ``S t id``, ``A t id seq``, ``F t id seq`` (its own event on the feed),
    ``E t code id``, ``W t epoch`` (welcomed), ``R t id`` (a resend on command), ``D t`` (done).
    Commands on stdin: ``pause``, ``resume``, ``resend ID``, ``stop`` (wait for the acks, say bye, exit).
    """
    parser = argparse.ArgumentParser(prog="attack.py honest")
    parser.add_argument("--router", required=True)
    parser.add_argument("--pub", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--msg-interval", type=float, default=0.1)
    parser.add_argument("--ping-interval", type=float, default=0.15)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    record = open(args.record, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

    def note(*parts: object) -> None:
        record.write(" ".join(f"{p:.4f}" if isinstance(p, float) else str(p) for p in parts) + "\n")

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"H" + os.urandom(15))
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.connect(via(HONEST_SOURCE, args.router))
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, m.room_topic(HONEST_ROOM))
    sub.setsockopt(zmq.SUBSCRIBE, m.SYS_TOPIC)
    sub.connect(via(HONEST_SOURCE, args.pub))
    stdin = sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    poller.register(stdin, zmq.POLLIN)

    def send(env: dict) -> None:
        with contextlib.suppress(zmq.Again):
            dealer.send(encode_json(env), zmq.NOBLOCK)  # broker away: the queue is full; resends cover it

    session, epoch = False, None
    hello_at = -math.inf
    paused = stopping = False
    stop_deadline = math.inf
    count = pings = 0
    unacked: dict[str, list] = {}  # id -> [text, last sent]
    texts: dict[str, str] = {}
    ping_at: float | None = None
    ping_id = ""
    next_ping = next_msg = now()
    pending = b""
    resend_tokens, resend_at = RESEND_BURST, now()
    try:
        while True:
            t = now()
            if stopping and (not unacked or t > stop_deadline):
                break
            if not session and t - hello_at >= 1.0:
                send({"type": "hello", "user": HONEST_NAME, "rooms": [HONEST_ROOM], "id": "hello"})
                hello_at = t
            if ping_at is not None and t - ping_at >= PING_TIMEOUT_S:
                note("P", ping_at, PING_TIMEOUT_S * 1000, "lost")
                ping_at = None
            if ping_at is None and t >= next_ping:
                pings += 1
                ping_id = f"p{pings}"
                send({"type": "ping", "id": ping_id})
                ping_at, next_ping = t, t + args.ping_interval
            if session and not paused and not stopping and t >= next_msg:
                if len(unacked) < 300:
                    count += 1
                    msg_id, text = f"h{count}", f"honest message {count}"
                    texts[msg_id] = text
                    unacked[msg_id] = [text, t]
                    note("S", t, msg_id)
                    send({"type": "msg", "room": HONEST_ROOM, "text": text, "id": msg_id})
                next_msg = max(next_msg + args.msg_interval, t - 1.0)
            if session:
                resend_tokens = min(RESEND_BURST, resend_tokens + (t - resend_at) * RESEND_RATE)
                resend_at = t
                for msg_id, entry in unacked.items():  # oldest first
                    if resend_tokens < 1:
                        break
                    if t - entry[1] >= RESEND_S:
                        entry[1] = t
                        resend_tokens -= 1
                        send({"type": "msg", "room": HONEST_ROOM, "text": entry[0], "id": msg_id})
            due = [next_ping if ping_at is None else ping_at + PING_TIMEOUT_S]
            if session and not paused and not stopping:
                due.append(next_msg)
            wait_ms = max(0, min(50, math.ceil((min(due) - now()) * 1000)))
            ready = dict(poller.poll(wait_ms))
            if dealer in ready:
                while True:
                    try:
                        frame = dealer.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t = now()
                    for env in envelopes(frame):
                        kind = env.get("type")
                        if kind == "pong":
                            if ping_at is not None:
                                note("P", ping_at, (t - ping_at) * 1000)
                                ping_at = None
                            if epoch is not None and env.get("epoch") != epoch:
                                session = False
                            if env.get("session") is False:
                                session = False
                        elif kind == "welcome":
                            session, epoch = True, env.get("epoch")
                            note("W", t, epoch)
                            for entry in unacked.values():
                                entry[1] = -math.inf  # resend now
                        elif kind == "ack":
                            unacked.pop(env.get("id"), None)
                            note("A", t, env.get("id"), env.get("seq"))
                        elif kind == "error":
                            code, err_id = env.get("code"), env.get("id")
                            note("E", t, code, err_id)
                            if err_id == ping_id and ping_at is not None:
                                note("P", ping_at, (t - ping_at) * 1000, code)
                                ping_at = None
                            if code == "no_session":
                                session = False
                            elif code == "id_reused":
                                unacked.pop(err_id, None)
            if sub in ready:
                while True:
                    try:
                        _topic, payload = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except ValueError:
                        continue
                    t = now()
                    for env in envelopes(payload):
                        if env.get("type") == "msg" and env.get("user") == HONEST_NAME:
                            note("F", t, env.get("id"), env.get("seq"))
                        elif env.get("type") == "heartbeat" and epoch is not None and env.get("epoch") != epoch:
                            session = False
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:  # our parent is gone
                    break
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    words = line.decode().split()
                    if not words:
                        continue
                    if words[0] == "pause":
                        paused = True
                    elif words[0] == "resume":
                        paused = False
                        next_msg = now()
                    elif words[0] == "resend" and len(words) == 2 and words[1] in texts:
                        note("R", now(), words[1])
                        send({"type": "msg", "room": HONEST_ROOM, "text": texts[words[1]], "id": words[1]})
                    elif words[0] == "stop":
                        stopping, stop_deadline = True, now() + 15.0
    except KeyboardInterrupt:
        pass
    send({"type": "bye"})
    note("D", now(), len(unacked))
    dealer.close()
    sub.close()
    ctx.term()
    return 0


class HonestLog:
    """What the honest user recorded, read incrementally from its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.pings: list[tuple[float, float]] = []  # (sent, rtt ms)
        self.sent: dict[str, float] = {}  # id -> first send
        self.acks: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
        self.feed: dict[str, list[int]] = collections.defaultdict(list)
        self.errors: list[tuple[float, str, str]] = []
        self.welcomes: list[float] = []
        self.resends: list[tuple[float, str]] = []
        self.done: int | None = None

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as file:
            file.seek(self.pos)
            data = file.read()
        end = data.rfind(b"\n") + 1
        self.pos += end
        for raw in data[:end].decode().splitlines():
            parts = raw.split()
            if not parts:
                continue
            kind, t = parts[0], float(parts[1])
            if kind == "P":
                self.pings.append((t, float(parts[2])))
            elif kind == "S":
                self.sent.setdefault(parts[2], t)
            elif kind == "A" and parts[3] != "None":
                self.acks[parts[2]].append((t, int(parts[3])))
            elif kind == "F" and parts[3] != "None":
                self.feed[parts[2]].append(int(parts[3]))
            elif kind == "E":
                self.errors.append((t, parts[2], parts[3]))
            elif kind == "W":
                self.welcomes.append(t)
            elif kind == "R":
                self.resends.append((t, parts[2]))
            elif kind == "D":
                self.done = int(parts[2])

    def acked_after(self, start: float) -> list[tuple[float, str, int]]:
        self.refresh()
        return sorted((acks[0][0], msg_id, acks[0][1]) for msg_id, acks in self.acks.items() if acks[0][0] >= start)

    def ping_p99(self, start: float, end: float) -> float:
        return p99([rtt for sent, rtt in self.pings if start <= sent < end])


# --- the lab: processes, sockets, helpers ---------------------------------------------------------------


@dataclass
class Check:
    """What an attack found: its own check, notes for the table, and how to judge the common criteria."""

    ok: bool
    notes: str = ""
    dup: int = 0
    judge_ping: bool = True


@dataclass
class Row:
    key: str
    status: str = "error"
    broker_mib: float = 0.0
    gateway_mib: float = 0.0
    ping_p99: float = math.nan
    lost: int = 0
    dup: int = 0
    notes: list[str] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    check: Check | None = None
    deaths: list[str] = field(default_factory=list)
    seconds: float = 0.0
    busy: float = 0.0  # seconds the broker stayed busy after the attack's own end (counted in its window)
    after: list[str] = field(default_factory=list)  # what was done after it (outside its window)


class Lab:
    """The processes under attack, the honest user, and what attacks share (sockets, sources, helpers)."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.quick: bool = args.quick
        self.seconds: float = args.seconds
        self.config = ChatConfig()
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 16384)
        self.sockets: list[zmq.Socket] = []
        self._source = [20, 0, 0]
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.relay_ep = f"tcp://127.0.0.1:{free_port()}"
        self.db = work / "chat.db"
        self.broker: Child | None = None
        self.gateway: Child | None = None
        self.relay: Child | None = None
        self.curve_broker: Child | None = None
        self.curve: dict[str, Any] = {}
        self.gateway_url = ""
        self.gateway_slow_consumer = _web_option("--slow-consumer-timeout", 10.0)
        self.honest: subprocess.Popen | None = None
        self.honest_log = HonestLog(work / "honest.rec")
        self.cache: dict[str, Any] = {}
        self.counter = 0
        self.restarts: collections.Counter[str] = collections.Counter()
        self.sampler = Sampler(self)

    # -- counts and time

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def budget(self, factor: float = 1.0) -> float:
        return self.seconds * factor

    def uid(self) -> int:
        self.counter += 1
        return self.counter

    def source(self) -> str:
        """A loopback address no one else uses: 127.20.0.1, 127.20.0.2, ..."""
        a, b, c = self._source
        c += 1
        if c > 254:
            c, b = 1, b + 1
            if b > 255:
                b, a = 0, a + 1
        self._source = [a, b, c]
        return f"127.{a}.{b}.{c}"

    # -- processes

    def start_broker(self) -> None:
        argv = ["broker.py", "--router", self.router, "--pub", self.pub, "--db", str(self.db)]
        self.broker = spawn(argv, "broker", self.work)
        if self.broker.search(r"feed\s+\(PUB\):", 20) is None:
            raise RuntimeError(f"the broker did not start:\n{self.broker.text()}")

    def start_gateway(self) -> None:
        argv = ["web.py", "--router", self.router, "--pub", self.pub, "--port", "0", "--listen", "127.0.0.1"]
        if self.quick and _web_option("--slow-consumer-timeout", 0.0):
            argv += ["--slow-consumer-timeout", "1"]  # so that attack 12 sees the disconnect within seconds
            self.gateway_slow_consumer = 1.0
        self.gateway = spawn(argv, "gateway", self.work)
        match = self.gateway.search(r"open (http://\S+/)", 20)
        if match is None:
            raise RuntimeError(f"the gateway did not start:\n{self.gateway.text()}")
        self.gateway_url = match.group(1).replace("http://", "ws://") + "ws"

    def start_relay(self) -> None:
        argv = ["relay.py", "--router", self.router, "--pub", self.pub, "--listen", self.relay_ep]
        self.relay = spawn(argv, "relay", self.work)
        if self.relay.search(r"feed for subscribers:", 20) is None:
            raise RuntimeError(f"the relay did not start:\n{self.relay.text()}")

    def start_honest(self) -> None:
        log = open(self.work / "honest.log", "ab")  # noqa: SIM115 (the child holds it)
        self.honest = subprocess.Popen(
            [sys.executable, __file__, "honest", "--router", self.router, "--pub", self.relay_ep,
             "--record", str(self.honest_log.path)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_setup,
        )  # fmt: skip
        log.close()
        deadline = now() + 20
        while not self.honest_log.acks:
            if now() > deadline or self.honest.poll() is not None:
                raise RuntimeError("the honest user got no ack within 20 s")
            time.sleep(0.05)  # it writes its record by itself; the condition synchronises
            self.honest_log.refresh()

    def tell_honest(self, command: str) -> None:
        assert self.honest is not None and self.honest.stdin is not None
        self.honest.stdin.write(command.encode() + b"\n")
        self.honest.stdin.flush()

    def start(self) -> None:
        self.start_broker()
        self.start_relay()
        self.start_gateway()
        self.sampler.start()
        self.start_honest()

    def restart_dead(self) -> list[str]:
        """Restart whatever died (an attack broke it); returns what died."""
        died = []
        for name, child, start in (
            ("broker", self.broker, self.start_broker),
            ("relay", self.relay, self.start_relay),
            ("gateway", self.gateway, self.start_gateway),
        ):
            if child is not None and not child.alive():
                died.append(f"{name} died (exit {child.popen.returncode})")
                self.restarts[name] += 1
                start()
        if self.honest is not None and self.honest.poll() is not None:
            died.append(f"honest user died (exit {self.honest.returncode})")
        return died

    def restart(self, name: str) -> None:
        """Stop (SIGTERM) and start again the broker or the gateway."""
        child, start = {"broker": (self.broker, self.start_broker), "gateway": (self.gateway, self.start_gateway)}[name]
        if child is not None:
            child.stop(grace=5.0)
        self.restarts[f"{name} (over its RSS bound)"] += 1
        start()

    def stop(self) -> None:
        self.sampler.stopped.set()
        for child in (self.gateway, self.relay, self.broker, self.curve_broker):
            if child is not None:
                child.stop(grace=5.0)
        if self.honest is not None and self.honest.poll() is None:
            self.honest.kill()
            self.honest.wait(5)

    def settle(self, limit: float) -> float:
        """Wait (at most ``limit`` s) until the broker is idle again (under 25% of a core over 100 ms): what an
        attack left queued is part of the attack.  Returns how long it took."""
        start = now()
        while now() < start + limit and self.broker is not None and self.broker.alive():
            before, t0 = cpu_seconds(self.broker.pid) or 0.0, now()
            time.sleep(0.1)  # measuring the broker's CPU over this interval
            if (cpu_seconds(self.broker.pid) or 0.0) - before < 0.25 * (now() - t0):
                break
        return now() - start

    def rss(self, name: str = "broker") -> float:
        child = {"broker": self.broker, "gateway": self.gateway}[name]
        return status_kib(child.pid).get("VmRSS", 0) / 1024 if child is not None and child.alive() else 0.0

    # -- sockets

    def dealer(
        self,
        source: str | None = None,
        routing_id: bytes | None = None,
        router: str | None = None,
        curve: keys.CurveKeys | None = None,
        rcvhwm: int | None = None,
        rcvbuf: int | None = None,
    ) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id or b"A" + os.urandom(15))
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf is not None:
            sock.setsockopt(zmq.RCVBUF, rcvbuf)
        if curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
        sock.connect(via(source or self.source(), router or self.router))
        self.sockets.append(sock)
        return sock

    def close(self, sock: zmq.Socket) -> None:
        sock.close(linger=0)
        with contextlib.suppress(ValueError):
            self.sockets.remove(sock)

    def close_all(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.sockets = []

    # -- requests

    def call(
        self, sock: zmq.Socket, env: dict | bytes, match: Callable[[dict], bool], timeout: float = 3.0
    ) -> dict | None:
        """Send ``env`` and return the first reply envelope ``match`` accepts (others are skipped)."""
        sock.send(env if isinstance(env, bytes) else encode_json(env))
        return self.wait_for(sock, match, timeout)

    def wait_for(self, sock: zmq.Socket, match: Callable[[dict], bool], timeout: float) -> dict | None:
        deadline = now() + timeout
        while (left := deadline - now()) > 0:
            if sock.poll(left * 1000):
                for env in envelopes(sock.recv()):
                    if match(env):
                        return env
        return None

    def session(self, name: str, rooms: list[str], source: str | None = None, **kw: Any) -> zmq.Socket:
        """A DEALER with a session (hello answered with welcome), else RuntimeError."""
        sock = self.dealer(source, **kw)
        reply = self.call(sock, {"type": "hello", "user": name, "rooms": rooms}, _kind("welcome", "error"), 5.0)
        if reply is None or reply["type"] != "welcome":
            raise RuntimeError(f"hello {name!r} got {reply}")
        for _ in rooms:  # the joined replies
            self.wait_for(sock, _kind("joined"), 5.0)
        return sock

    def history(self, room: str, router: str | None = None, curve: keys.CurveKeys | None = None) -> list[dict]:
        """Every event of ``room``, paging with ``after`` (and ``more``); rate limits are waited out."""
        events: list[dict] = []
        after, deadline = 0, now() + 60
        sock = self.dealer(router=router, curve=curve)
        try:
            while now() < deadline:
                reply = self.call(
                    sock,
                    {"type": "history", "room": room, "after": after, "limit": m.MAX_HISTORY_LIMIT},
                    _kind("history", "error"),
                    5.0,
                )
                if reply is None or reply["type"] == "error":
                    self.close(sock)
                    sock = self.dealer(router=router, curve=curve)  # a fresh connection (and source)
                    time.sleep(0.1)  # being rate limited: the bucket refills with time
                    continue
                batch = [e for e in reply.get("events", []) if isinstance(e, dict)]
                events += batch
                if not batch or (not reply.get("more") and len(batch) < m.MAX_HISTORY_LIMIT):
                    return events
                after = batch[-1].get("seq", after)
            raise RuntimeError(f"history walk of {room!r} did not finish")
        finally:
            self.close(sock)

    def fill(
        self, rooms: dict[str, int], text: str, deadline: float, prefix: str = "fill", parallel: int = 24
    ) -> dict[str, int]:
        """Post ``rooms[room]`` messages of ``text`` in each room, as fast as the limits allow: each connection
        (``parallel`` at once) from a fresh source says hello, posts what its burst allows (two messages per
        frame), and bye."""
        need = dict(rooms)
        done = collections.Counter()
        per_conn = max(1, int(self.config.rate_burst) - 2)
        text_json = json.dumps(text).encode()
        frame_bytes = m.MAX_FRAME_BYTES - 1024
        while any(v > 0 for v in need.values()) and now() < deadline and self.broker and self.broker.alive():
            workers = []
            for room in [r for r, v in need.items() if v > 0]:
                while need[room] > 0 and len(workers) < parallel:
                    quota = min(per_conn, need[room])
                    need[room] -= quota
                    workers.append((room, quota))
            live = []
            for room, quota in workers:
                k = self.uid()
                sock = self.dealer()
                sock.send(encode_json({"type": "hello", "user": f"{prefix}{k}", "rooms": [room]}))
                msgs = [
                    b'{"type":"msg","room":"%s","text":%s,"id":"%s"}' % (room.encode(), text_json, f"f{k}-{i}".encode())
                    for i in range(quota)
                ]
                frame: list[bytes] = []
                for msg in msgs:
                    if frame and sum(map(len, frame)) + len(msg) + len(frame) + 2 > frame_bytes:
                        sock.send(b"[" + b",".join(frame) + b"]")
                        frame = []
                    frame.append(msg)
                if frame:
                    sock.send(b"[" + b",".join(frame) + b"]")
                live.append([sock, room, quota, 0, 0])  # sock, room, quota, acks, answers
            # Replies for at most 10 s, and not past the caller's deadline (but 1 s at least): a batch cut by the
            # rate limit is answered by one error without an id, so its rest is never counted as answered.
            until = min(now() + 10.0, max(deadline, now() + 1.0))
            while now() < until and any(w[4] < w[2] for w in live):
                for w in live:
                    sock = w[0]
                    while w[4] < w[2] and sock.poll(0):
                        for env in envelopes(sock.recv()):
                            if env.get("type") == "ack":
                                w[3] += 1
                                w[4] += 1
                            elif env.get("type") == "error" and env.get("id"):
                                w[4] += 1
                time.sleep(0.002)  # waiting for replies from many sockets; polled above
            for sock, room, quota, acks, _ in live:
                done[room] += acks
                need[room] += quota - acks
                with contextlib.suppress(zmq.ZMQError):
                    sock.send(b'{"type":"bye"}', zmq.NOBLOCK)
                self.close(sock)
        return dict(done)

    def rate_limits(self) -> dict[str, float]:
        """The broker's default limits (ChatConfig; attributes the broker does not have yet are absent)."""
        out = {}
        for name in (
            "rate_limit", "rate_burst", "source_rate", "source_burst", "max_sessions_per_source",
            "max_rooms_per_source", "max_rooms", "max_rooms_per_session", "dedupe_total", "dedupe_per_user",
        ):  # fmt: skip
            value = getattr(self.config, name, None)
            if value is not None:
                out[name] = float(value)
        return out

    def ensure_curve(self) -> dict[str, Any]:
        """A second broker with --curve (keys made with keys.py), for attacks 09 and 10."""
        if self.curve_broker is not None and self.curve_broker.alive():
            return self.curve
        keydir = self.work / "keys"
        if not (keydir / "broker.key_secret").exists():
            keys.init(keydir)
            for name in ("alice", "mallory"):
                keys.add_user(keydir, name)
            keys.add_user(keydir, "relay10", bind=False)
        router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        argv = [
            "broker.py",
            "--router",
            router,
            "--pub",
            pub,
            "--db",
            str(self.work / "curve.db"),
            "--curve",
            str(keydir),
        ]
        self.curve_broker = spawn(argv, "curve-broker", self.work)
        if self.curve_broker.search(r"feed\s+\(PUB\):", 20) is None:
            raise RuntimeError(f"the CURVE broker did not start:\n{self.curve_broker.text()}")

        def user(name: str) -> keys.CurveKeys:
            return keys.client_keys(keydir / "broker.key", keydir / "users" / f"{name}.key_secret")

        self.curve = {
            "router": router,
            "pub": pub,
            "keydir": keydir,
            "alice": user("alice"),
            "mallory": user("mallory"),
        }
        return self.curve


def _kind(*kinds: str) -> Callable[[dict], bool]:
    return lambda env: env.get("type") in kinds


def _code(env: dict | None) -> str:
    if env is None:
        return "no reply"
    return str(env.get("code")) if env.get("type") == "error" else str(env.get("type"))


def _drain_count(sock: zmq.Socket, counts: collections.Counter, limit: int = 10_000) -> int:
    """Read what is waiting on ``sock`` without blocking; count envelopes by type and error code."""
    got = 0
    while got < limit:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            break
        got += 1
        counts["bytes"] += len(frame)
        for env in envelopes(frame):
            counts[_code(env)] += 1
            if env.get("more"):
                counts["more"] += 1
    return got


def _sleep_until(deadline: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Let an attack's effect run its course for the rest of its time budget (no synchronisation implied)."""
    while now() < deadline and alive():
        time.sleep(0.05)


# --- the attacks ---------------------------------------------------------------------------------------


def attack_history_after(lab: Lab) -> Check:
    """``history`` with ``after`` (and ``limit``) of 2**63, 2**63-1, -1, 1e300, "x", 2**64, 1e400, ... (no session).

    Tries to crash the broker with integers SQLite cannot bind, floats and strings where a seq belongs.
    Held: every request is answered; each invalid value gets an ``error`` (any code but ``internal``), the
    valid ones (2**63-1, null) a ``history`` or an error; the broker lives (the common criteria).
    """
    values = [str(2**63), str(2**63 - 1), "-1", "1e300", '"x"', str(2**64), str(-(2**63) - 1), "1e400",
              "1.0", "null", "true", "[1]", "{}", str(10**100), "-0"]  # fmt: skip
    valid_after = {str(2**63 - 1), "null", "-0"}  # -0 is the integer 0 in JSON
    problems, codes = [], collections.Counter()
    for value in values:
        sock = lab.dealer()  # a fresh connection (and source) for each value: no rate limit in the way
        for room in (HONEST_ROOM, "nosuchroom1"):
            for fld in ("after", "limit"):
                raw = f'{{"type":"history","room":"{room}","{fld}":{value},"id":"q1"}}'.encode()
                reply = lab.call(sock, raw, _kind("history", "error"), 3.0)
                code = _code(reply)
                codes[code] += 1
                valid = value in valid_after if fld == "after" else value == "null"
                if reply is None:
                    problems.append(f"{fld}={value}: no reply")
                elif code == "internal" or (not valid and reply["type"] != "error"):
                    problems.append(f"{fld}={value} in {room}: {code}")
        lab.close(sock)
    batch = "[" + ",".join(f'{{"type":"history","room":"{HONEST_ROOM}","after":{v}}}' for v in values) + "]"
    sock = lab.dealer()
    reply = lab.call(sock, batch.encode(), lambda e: True, 3.0)
    if reply is None:
        problems.append("the batch of all values: no reply")
    notes = "replies " + ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
    return Check(not problems, "; ".join(problems[:4]) or notes)


def ensure_big_room(lab: Lab) -> str:
    """Room ``big2``: 500 (quick: 150) events of 4000 control characters, ~24 KB each once JSON-escaped."""
    room, want = "big2", lab.n(500, 150)
    have = lab.cache.get(room, 0)
    if have < want:
        done = lab.fill({room: want - have}, CONTROL_TEXT, now() + max(15.0, lab.budget(4)), prefix="big")
        lab.cache[room] = have + done.get(room, 0)
    return room


HISTORY_BATCH = b"[" + b",".join([b'{"type":"history","room":"big2","limit":500}'] * m.MAX_BATCH_REQUESTS) + b"]"


def attack_history_batch_unread(lab: Lab) -> Check:
    """One ~16 KB inbox frame holding 256 ``history`` requests (limit 500) for a room of 500 events of 4000
    control characters (~24 KB each escaped), sent again and again by a DEALER that never reads its replies.

    Each frame asks for up to 256 x 12 MB of replies: tries to make the broker build or queue gigabytes.
    Held: the common criteria (the broker bounded under 512 MiB, alive, the honest user served).
    """
    room = ensure_big_room(lab)
    sock = lab.dealer(rcvhwm=1, rcvbuf=4096)
    frames, sent = lab.n(200, 40), 0
    deadline = now() + lab.budget()
    while sent < frames and now() < deadline and lab.broker and lab.broker.alive():
        try:
            sock.send(HISTORY_BATCH, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.01)  # our queue is full: the broker stopped reading us
            continue
        time.sleep(0.002)  # lets the sampler (and its guard) keep up
    _sleep_until(deadline, lambda: bool(lab.broker and lab.broker.alive()))
    return Check(
        True,
        f"{sent} frames of 256 history requests ({len(HISTORY_BATCH)} B each) in {room} "
        f"({lab.cache.get(room, 0)} events); replies never read",
    )


def attack_history_batch_read(lab: Lab) -> Check:
    """The frame of 256 ``history`` requests again, but the attacker reads its replies as fast as it can.

    Tries to make the broker spend its time (and the honest user's latency) serialising megabytes.
    Held: the common criteria; the notes say how many bytes the broker let it pull per second.
    """
    room = ensure_big_room(lab)
    sock = lab.dealer()
    counts: collections.Counter = collections.Counter()
    frames, sent = lab.n(200, 40), 0
    start = now()
    deadline = start + lab.budget()
    while now() < deadline and lab.broker and lab.broker.alive():
        if sent < frames:
            try:
                sock.send(HISTORY_BATCH, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
        if sock.poll(5):
            _drain_count(sock, counts, 200)
    elapsed = now() - start
    mb = counts["bytes"] / MIB
    return Check(
        True,
        f"{sent} frames to {room}; read {mb:.0f} MiB ({mb / elapsed:.0f} MiB/s), "
        f"{counts['history']} history, {counts['rate_limited']} rate_limited, {counts['more']} cut",
    )


def attack_hello_msg_bye(lab: Lab) -> Check:
    """``hello``, 39 ``msg``, ``bye``, repeated on one connection as fast as possible.

    Tries to reset the rate limit by starting a new session (a bucket per session would be full again).
    Held: the accepted messages stay within the per-connection allowance, burst + rate x time (+25%),
    with the broker's default ``rate_limit``/``rate_burst`` (ChatConfig), not thousands per second.
    """
    limits = lab.rate_limits()
    rate, burst = limits["rate_limit"], limits["rate_burst"]
    sock = lab.dealer()
    counts: collections.Counter = collections.Counter()
    k = 0
    start = now()
    deadline = start + lab.budget()
    hello = encode_json({"type": "hello", "user": "flood3", "rooms": ["flood3"]})
    bye = b'{"type":"bye"}'
    while now() < deadline and lab.broker and lab.broker.alive():
        try:
            sock.send(hello, zmq.NOBLOCK)
            for _ in range(39):
                k += 1
                sock.send(b'{"type":"msg","room":"flood3","text":"flood","id":"f3-%d"}' % k, zmq.NOBLOCK)
            sock.send(bye, zmq.NOBLOCK)
        except zmq.Again:
            sock.poll(10)
        _drain_count(sock, counts)
    end = now() + 0.5
    while now() < end and sock.poll(100):
        _drain_count(sock, counts)
    elapsed = now() - start
    allowed = 1.25 * (burst + rate * elapsed) + 5
    ok = counts["ack"] <= allowed
    return Check(
        ok,
        f"{counts['ack']} acked in {elapsed:.1f}s ({counts['ack'] / elapsed:.0f}/s; allowed "
        f"{allowed:.0f}), {counts['rate_limited']} rate_limited, {k} sent",
    )


def attack_many_connections(lab: Lab) -> Check:
    """Many new connections (fresh routing ids) from one address, each saying hello and sending messages.

    Tries to multiply the per-connection allowance by connecting again and again.
    Held: the messages accepted from the address stay within the per-source allowance (source_burst +
    source_rate x time, +25%; if the broker has no per-source limit, the per-connection one), and the
    sessions it got within ``max_sessions_per_source`` (when the broker has that limit).
    """
    limits = lab.rate_limits()
    rate = limits.get("source_rate", limits["rate_limit"])
    burst = limits.get("source_burst", limits["rate_burst"])
    max_sessions = limits.get("max_sessions_per_source")
    src = lab.source()
    count = lab.n(400, 300)
    socks = [lab.dealer(src) for _ in range(count)]
    counts: collections.Counter = collections.Counter()
    start = now()
    for i, sock in enumerate(socks):
        sock.send(encode_json({"type": "hello", "user": f"c4x{i}", "rooms": ["c4room"]}))
    deadline = start + lab.budget()
    k = 0
    while now() < deadline and lab.broker and lab.broker.alive():
        for sock in socks:
            k += 1
            with contextlib.suppress(zmq.Again):
                sock.send(b'{"type":"msg","room":"c4room","text":"x","id":"c4-%d"}' % k, zmq.NOBLOCK)
        for sock in socks:
            _drain_count(sock, counts)
        time.sleep(0.01)  # a round every ~10 ms: thousands of requests per second from one address
    end = now() + 0.5
    while now() < end:
        if not sum(_drain_count(sock, counts) for sock in socks):
            time.sleep(0.05)  # nothing came in this pass
    elapsed = now() - start
    allowed = 1.25 * (burst + rate * elapsed) + 10
    ok = counts["ack"] <= allowed and (max_sessions is None or counts["welcome"] <= max_sessions)
    for sock in socks:
        with contextlib.suppress(zmq.ZMQError):
            sock.send(b'{"type":"bye"}', zmq.NOBLOCK)
    return Check(
        ok,
        f"{count} connections, {counts['welcome']} sessions (cap {max_sessions}), {counts['ack']} "
        f"acked (allowed {allowed:.0f}) of {k} in {elapsed:.1f}s, {counts['rate_limited']} "
        f"rate_limited, {counts['too_many_sessions']} too_many_sessions",
    )


def attack_escaped_rooms(lab: Lab) -> Check:
    """20 rooms filled with texts of 4000 control characters (~24 KB each on the wire and in memory).

    Tries to grow the broker's in-memory history: 1000 kept events x 24 KB is 24 MB per room.
    Held: the broker's RSS grows by at most 4 MiB per room (memory bounded in bytes, not only events),
    and the common criteria.
    """
    rooms = {f"esc5-{i}": lab.n(1000, 200) for i in range(20)}
    before = lab.rss()
    done = lab.fill(rooms, CONTROL_TEXT, now() + lab.budget(4), prefix="esc")
    after = lab.rss()
    per_room = (after - before) / len(rooms)
    events = sum(done.values())
    ok = per_room <= 4.0
    return Check(
        ok,
        f"{events} events in {len(rooms)} rooms ({events // len(rooms)} each): RSS {before:.0f} -> "
        f"{after:.0f} MiB, {per_room:.2f} MiB per room",
    )


def attack_room_hoarding(lab: Lab) -> Check:
    """Sessions from one address, each joining its maximum of rooms, kept alive by pings, to fill the broker's
    ``max_rooms`` with rooms someone is in.

    Held: afterwards an honest new user (another address) can still create and join a new room.
    """
    limits = lab.rate_limits()
    per = int(limits.get("max_rooms_per_session", m.MAX_ROOMS_PER_SESSION))
    count = math.ceil(limits.get("max_rooms", 10_000) / per) + 2
    src = lab.source()
    socks = []
    counts: collections.Counter = collections.Counter()
    for i in range(count):
        sock = lab.dealer(src)
        rooms = [f"h6-{i}-{j}" for j in range(per)]
        sock.send(encode_json({"type": "hello", "user": f"hog6x{i}", "rooms": rooms}))
        socks.append(sock)
    start = now()
    answered: set[int] = set()
    deadline = start + max(lab.budget(), 5.0)  # until every hello is answered, then to the end of the budget
    next_ping = start + 2.0
    while now() < deadline and lab.broker and lab.broker.alive():
        if len(answered) == count:
            deadline = start + lab.budget()
        got = 0
        for i, sock in enumerate(socks):
            if _drain_count(sock, counts):
                got += 1
                answered.add(i)
        if now() >= next_ping:
            for sock in socks:
                with contextlib.suppress(zmq.Again):
                    sock.send(b'{"type":"ping"}', zmq.NOBLOCK)
            next_ping = now() + 2.0
        if not got:
            time.sleep(0.02)  # nothing came in this pass
    newbie = lab.dealer()
    room = f"fresh6-{lab.uid()}"
    reply = lab.call(newbie, {"type": "hello", "user": f"newbie6x{lab.uid()}", "rooms": [room]},
                     lambda e: e.get("type") in ("joined", "error"), 5.0)  # fmt: skip
    ok = reply is not None and reply.get("type") == "joined" and reply.get("room") == room
    for sock in socks:
        with contextlib.suppress(zmq.ZMQError):
            sock.send(b'{"type":"bye"}', zmq.NOBLOCK)
    return Check(
        ok,
        f"{count} sessions asked for {count * per} rooms: {counts['welcome']} welcomed, "
        f"{counts['joined']} joined, {counts['too_many_rooms']} too_many_rooms, "
        f"{counts['too_many_sessions']} too_many_sessions; the newcomer got {_code(reply)}",
    )


def attack_dedupe_eviction(lab: Lab) -> Check:
    """DMs to oneself from 100 names (each from its own address) as fast as allowed, to push the honest
    user's remembered message ids out of the broker's dedupe memory; then the honest user resends an
    already-acked message (same id, text and room).  The honest user sends nothing new meanwhile.

    Held: the resend is acked again with the same seq, and not published twice.
    """
    start = now()
    mine = []
    while now() < start + 5 and not mine:
        mine = lab.honest_log.acked_after(start)
        time.sleep(0.05)  # the honest user's record fills by itself
    if not mine:
        return Check(False, "the honest user got no ack to resend")
    lab.tell_honest("pause")
    _, victim, seq = mine[-1]
    limits = lab.rate_limits()
    target = int(1.05 * limits.get("dedupe_total", 100_000))
    names = [f"dm7x{i}" for i in range(100)]
    socks = [lab.dealer() for _ in names]
    counts: collections.Counter = collections.Counter()
    acks = k = 0
    inflight = [0] * len(socks)  # frames sent minus reply frames read: at most 2, so nothing piles up unread
    deadline = now() + lab.budget(2)
    while acks < target and now() < deadline and lab.broker and lab.broker.alive():
        for i, (name, sock) in enumerate(zip(names, socks, strict=True)):
            if inflight[i] >= 2:
                continue
            dms = []
            for _ in range(38):
                k += 1
                dms.append(b'{"type":"dm","to":"%s","text":"x","id":"d%d"}' % (name.encode(), k))
            frame = b'[{"type":"hello","user":"%s","rooms":[]},%s,{"type":"bye"}]' % (name.encode(), b",".join(dms))
            with contextlib.suppress(zmq.Again):
                sock.send(frame, zmq.NOBLOCK)
                inflight[i] += 1
        if not any(sock.poll(0) for sock in socks):
            time.sleep(0.001)  # every connection waits for its replies
        for i, sock in enumerate(socks):
            while True:
                try:
                    reply = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                inflight[i] = max(0, inflight[i] - 1)
                acks += reply.count(b'"type":"ack"')
                counts["rate_limited"] += reply.count(b'"rate_limited"')
                counts["unavailable"] += reply.count(b'"unavailable"')
    flood_s = now() - start
    resent_at = now()  # before the command: a loaded machine may answer the resend before this process runs on
    lab.tell_honest(f"resend {victim}")
    again = None
    while now() < resent_at + 15 and again is None:  # a deadline, not a timing: a loaded machine is slow
        lab.honest_log.refresh()
        later = [(t, s) for t, s in lab.honest_log.acks.get(victim, []) if t >= resent_at]
        errors = [c for t, c, i in lab.honest_log.errors if i == victim and t >= resent_at]
        if later:
            again = later[0][1]
        elif errors:
            again = errors[0]
            break
        time.sleep(0.05)  # the honest user's record fills by itself
    lab.tell_honest("resume")
    ok = again == seq
    return Check(
        ok,
        f"{acks} DMs acked in {flood_s:.1f}s (target {target}), {counts['rate_limited']} "
        f"rate_limited; resend of {victim} (seq {seq}) got {again}",
    )


def attack_id_reuse(lab: Lab) -> Check:
    """A message id reused for a different request: another room, another text, ``me``, or a ``dm``.

    Tries to get the old ack (the broker would then say a message was stored that never was).
    Held: each reuse gets ``error`` ``id_reused`` and publishes nothing; the exact resend gets the
    original ack (same seq).
    """
    name = f"reuse8x{lab.uid()}"
    sock = lab.session(name, ["r8a", "r8b"])
    first = lab.call(sock, {"type": "msg", "room": "r8a", "text": "original", "id": "same"}, _kind("ack", "error"))
    if first is None or first["type"] != "ack":
        return Check(False, f"the first message got {_code(first)}")
    dm_first = lab.call(sock, {"type": "dm", "to": name, "text": "private", "id": "dmid"}, _kind("ack", "error"))
    variants = {
        "other room": {"type": "msg", "room": "r8b", "text": "original", "id": "same"},
        "other text": {"type": "msg", "room": "r8a", "text": "changed", "id": "same"},
        "me": {"type": "msg", "room": "r8a", "text": "original", "id": "same", "me": True},
        "dm vs msg": {"type": "dm", "to": name, "text": "original", "id": "same"},
        "msg vs dm": {"type": "msg", "room": "r8a", "text": "private", "id": "dmid"},
    }
    wrong = []
    for label, env in variants.items():
        reply = lab.call(sock, env, lambda e, i=env["id"]: e.get("type") in ("ack", "error") and e.get("id") == i)
        if _code(reply) != "id_reused":
            wrong.append(f"{label}: {_code(reply)}")
    resend = lab.call(sock, {"type": "msg", "room": "r8a", "text": "original", "id": "same"}, _kind("ack", "error"))
    if resend is None or resend.get("seq") != first.get("seq"):
        wrong.append(f"exact resend: {_code(resend)} seq {resend and resend.get('seq')} != {first.get('seq')}")
    published = [e for r in ("r8a", "r8b") for e in lab.history(r) if e.get("type") == "msg" and e.get("user") == name]
    dup = max(0, len(published) - 1)
    if dup:
        wrong.append(f"{len(published)} events published")
    notes = "; ".join(wrong) or f"all 5 reuses refused with id_reused (dm first: {_code(dm_first)})"
    return Check(not wrong, notes, dup=dup)


def attack_curve_routing_id(lab: Lab) -> Check:
    """CURVE: an allowed key (mallory) connects with the routing id of alice's live session and sends a
    ``msg``, a ``leave`` and a ``bye``.

    Tries to speak (or end a session) as another authenticated user through ROUTER_HANDOVER.
    Held: nothing appears as alice, alice stays in her room, her session keeps working (pong with
    ``session: true``, her next message acked), and mallory gets no ack.
    """
    curve = lab.ensure_curve()
    rid = b"V" + os.urandom(15)
    alice = lab.session("alice", ["general"], routing_id=rid, router=curve["router"], curve=curve["alice"])
    mallory = lab.dealer(routing_id=rid, router=curve["router"], curve=curve["mallory"])
    mallory.send(encode_json({"type": "msg", "room": "general", "text": "mallory as alice 1", "id": "m9-1"}))
    counts: collections.Counter = collections.Counter()
    deadline = now() + 0.3
    while now() < deadline:
        if mallory.poll(50):
            _drain_count(mallory, counts)
    mallory.send(b'[{"type":"msg","room":"general","text":"mallory as alice 2","id":"m9-2"},'
                 b'{"type":"leave","room":"general"},{"type":"bye"}]')  # fmt: skip
    deadline = now() + max(0.5, lab.budget(0.5))
    while now() < deadline:
        if mallory.poll(50):
            _drain_count(mallory, counts)
    pong = ack = None
    deadline = now() + 5
    while now() < deadline and (pong is None or ack is None):
        if pong is None:
            pong = lab.call(alice, {"type": "ping"}, _kind("pong"), 1.0)
        if ack is None:
            ack = lab.call(
                alice, {"type": "msg", "room": "general", "text": "alice still here", "id": "a9-1"}, _kind("ack"), 1.0
            )
    events = lab.history("general", router=curve["router"], curve=curve["alice"])
    forged = [e for e in events if "mallory" in str(e.get("text", "")) and e.get("user") == "alice"]
    left = [e for e in events if e.get("type") == "leave" and e.get("user") == "alice"]
    problems = []
    if forged:
        problems.append(f"{len(forged)} messages published as alice")
    if left:
        problems.append(f"alice made to leave ({left[0].get('reason')})")
    if pong is None or pong.get("session") is not True:
        problems.append(f"alice's session gone (pong {pong})")
    if ack is None:
        problems.append("alice's message not acked")
    if counts["ack"]:
        problems.append(f"mallory got {counts['ack']} acks")
    replies = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "bytes") or "nothing"
    return Check(not problems, "; ".join(problems) + f" (mallory got: {replies})" if problems
                 else f"mallory refused (got: {replies}); alice unaffected")  # fmt: skip


def attack_relay_plaintext(lab: Lab) -> Check:
    """A relay given --server-key/--key (a CURVE broker) but not --curve would serve the decrypted feed in
    plaintext to anyone.

    Held: it refuses to start (exit status non-zero) unless given its explicit opt-in flag (found in
    ``relay.py --help``), and starts with that flag.  No such flag in --help: broke.
    """
    curve = lab.ensure_curve()
    keydir = curve["keydir"]
    helptext = _help("relay.py")
    flag = re.search(r"(--[a-z-]*(?:plain|insecure|unencrypted|cleartext|no-curve)[a-z-]*)", helptext)
    base = ["relay.py", "--router", curve["router"], "--pub", curve["pub"], "--server-key", str(keydir / "broker.key"),
            "--key", str(keydir / "users" / "relay10.key_secret")]  # fmt: skip
    relay = spawn([*base, "--listen", f"tcp://127.0.0.1:{free_port()}"], "relay-plain", lab.work)
    started = relay.search(r"feed for subscribers:", 8) is not None and relay.alive()
    relay.stop(grace=5.0)
    code = relay.popen.returncode
    refused = not started and code not in (0, None)
    with_flag = None
    if flag:
        opt_in = spawn([*base, "--listen", f"tcp://127.0.0.1:{free_port()}", flag.group(1)], "relay-optin", lab.work)
        with_flag = opt_in.search(r"feed for subscribers:", 8) is not None
        opt_in.stop(grace=5.0)
    ok = refused and bool(flag) and bool(with_flag)
    said = relay.text().strip().splitlines()[-1:] if refused else []
    notes = (
        f"without the flag: {'refused, exit ' + str(code) if refused else 'served plaintext'}"
        f"{' (' + said[0][:60] + ')' if said else ''}; flag {flag.group(1) if flag else 'not in --help'}"
        f"{'' if with_flag is None else ', starts with it' if with_flag else ', does not start with it'}"
    )
    return Check(ok, notes)


@functools.cache
def _help(program: str) -> str:
    return subprocess.run(
        [sys.executable, program, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=20
    ).stdout


def _web_option(option: str, default: float) -> float:
    """The default of one of web.py's options, from its --help (``default`` if it has no such option)."""
    options = _help("web.py").split("options:", 1)[-1]
    match = re.search(re.escape(option) + r" [A-Z]+\s.*?\(default:\s*([\d.]+)\)", options, re.S)
    return float(match.group(1)) if match else default


async def _ws_open(url: str, source: str, count: int) -> tuple[list[Any], collections.Counter, Any]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, local_addr=(source, 0), force_close=True),
        timeout=aiohttp.ClientTimeout(total=20),
    )
    outcomes: collections.Counter = collections.Counter()
    sem = asyncio.Semaphore(50)

    async def one() -> Any:
        async with sem:
            try:
                ws = await session.ws_connect(url, autoping=False)
            except aiohttp.WSServerHandshakeError as exc:
                outcomes[f"http {exc.status}"] += 1
                return None
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1
                return None
            outcomes["open"] += 1
            return ws

    sockets = [ws for ws in await asyncio.gather(*(one() for _ in range(count))) if ws is not None]
    return sockets, outcomes, session


async def _ws_expect(ws: Any, match: Callable[[dict], bool], timeout: float) -> dict | None:
    import aiohttp

    deadline = now() + timeout
    while (left := deadline - now()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except asyncio.TimeoutError:
            return None
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        for env in envelopes(msg.data.encode()):
            if match(env):
                return env
    return None


def attack_ws_per_address(lab: Lab) -> Check:
    """As many WebSockets from one address as the gateway's global cap (--max-connections, default 500);
    then a browser from another address of the same machine.

    Tries to take every gateway slot from one address.
    Held: that address is capped below the global cap, and the other browser connects and gets ``welcome``.
    """
    cap = int(_web_option("--max-connections", 500))

    async def run() -> tuple[collections.Counter, dict | None, Any]:
        flood, outcomes, session = await _ws_open(lab.gateway_url, lab.source(), cap)
        browsers, browser_outcome, browser_session = await _ws_open(lab.gateway_url, lab.source(), 1)
        welcome = None
        if browsers:
            await browsers[0].send_str(json.dumps({"type": "hello", "user": f"browser11x{lab.uid()}"}))
            welcome = await _ws_expect(browsers[0], _kind("welcome", "error"), 5.0)
        for ws in flood + browsers:
            await ws.close()
        await session.close()
        await browser_session.close()
        return outcomes, welcome, browser_outcome

    outcomes, welcome, browser_outcome = asyncio.run(run())
    opened = outcomes["open"]
    ok = opened < cap and welcome is not None and welcome.get("type") == "welcome"
    refusals = ", ".join(f"{k} {v}" for k, v in outcomes.items() if k != "open") or "none"
    return Check(
        ok,
        f"one address opened {opened} of {cap} (refused: {refusals}); the other browser: "
        f"{dict(browser_outcome)} then {_code(welcome)}",
    )


def _raw_websocket(url: str, source: str, rcvbuf: int = 4096) -> socket.socket:
    """A WebSocket handshake by hand, on a socket with a small receive buffer that we will never read."""
    host, port = url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing after the headers is read
        if not chunk:
            raise ConnectionError("the gateway closed during the handshake")
        head += chunk
    status = head.split(b"\r\n")[0]
    if b" 101 " not in status:
        raise ConnectionError(f"handshake refused: {status.decode()}")
    return sock


def _ws_frame(text: bytes) -> bytes:
    """A masked (client) text frame."""
    mask = os.urandom(4)
    size = len(text)
    head = b"\x81" + (bytes([0x80 | size]) if size < 126 else struct.pack("!BH", 0x80 | 126, size))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (1 = established; a RST or FIN from the peer changes it)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def attack_ws_never_reads(lab: Lab) -> Check:
    """A WebSocket that never reads a byte: it joins a room where others post 24 KB messages (the feed
    fills what the kernel and the gateway buffer for it), then sends ``history`` requests (replies, which
    the gateway must not drop).

    Tries to make the gateway queue replies for it without bound.
    Held: the gateway's RSS stays bounded (the common criteria) and it disconnects the reader (seen in
    the kernel's TCP state, without reading) before the gateway's slow-consumer timeout (from its --help;
    --quick runs the gateway with 1 s) plus 25 s, or the --seconds budget if longer: filling what the
    kernel buffers for the connection (several MB on loopback) took 10-13 s in runs here.
    """
    timeout = lab.gateway_slow_consumer
    room = f"ws12x{lab.uid()}"
    sock = _raw_websocket(lab.gateway_url, lab.source())
    sock.sendall(_ws_frame(encode_json({"type": "hello", "user": f"ws12x{lab.uid()}", "rooms": [room]})))
    start = now()
    lab.fill({room: lab.n(1000, 600)}, CONTROL_TEXT, start + lab.budget(3), prefix="feed12x", parallel=4)
    frame = _ws_frame(encode_json({"type": "history", "room": room, "limit": 500}))
    sent = 0
    deadline = start + max(lab.budget(), timeout + 25.0)
    sock.setblocking(False)
    gone_at = None
    while now() < deadline and gone_at is None:
        try:
            sock.send(frame)  # the frame is tiny: it goes whole or not at all
            sent += 1
        except BlockingIOError:
            pass  # the gateway stopped reading us
        except OSError:
            gone_at = now()
            break
        if _tcp_state(sock) != 1:
            gone_at = now()
        time.sleep(0.05)  # 20 requests a second: within what the gateway lets one address send
    sock.close()
    if gone_at is None:
        return Check(False, f"{sent} history requests unread; still connected after {now() - start:.0f}s")
    return Check(
        True,
        f"{sent} history requests unread; disconnected after {gone_at - start:.1f}s "
        f"(slow-consumer timeout {timeout:g}s)",
    )


def attack_ws_bye(lab: Lab) -> Check:
    """Over the WebSocket: ``hello`` joining #secret13, then ``bye``; then someone else speaks in #secret13.

    Tries to keep receiving a room's events after the session ended (the gateway learns rooms from replies,
    and ``bye`` has none).
    Held: after the bye the WebSocket gets no #secret13 event (up to a heartbeat published after them).
    """
    room = f"secret13x{lab.uid()}"

    async def run() -> tuple[list[dict], str]:
        flood, outcomes, session = await _ws_open(lab.gateway_url, lab.source(), 1)
        if not flood:
            await session.close()
            return [], f"could not connect: {dict(outcomes)}"
        ws = flood[0]
        name = f"ws13x{lab.uid()}"
        await ws.send_str(json.dumps({"type": "hello", "user": name, "rooms": [room]}))
        joined = await _ws_expect(ws, _kind("joined", "error"), 5.0)
        if joined is None or joined["type"] != "joined":
            await session.close()
            return [], f"hello got {_code(joined)}"
        await ws.send_str('{"type":"bye"}')
        speaker = lab.session(f"speaker13x{lab.uid()}", [room])
        ack = lab.call(speaker, {"type": "msg", "room": room, "text": "after your bye", "id": "s13"}, _kind("ack"))
        if ack is None:
            await session.close()
            return [], "the speaker got no ack"
        said_at = time.time()
        leaked: list[dict] = []
        beat = None
        deadline = now() + 5
        while beat is None and now() < deadline:
            env = await _ws_expect(ws, lambda e: True, max(0.1, deadline - now()))
            if env is None:
                break
            if env.get("room") == room and env.get("user") == name and env.get("type") == "leave":
                continue  # our own leave, caused by the bye itself
            if env.get("room") == room:
                leaked.append(env)
            elif env.get("type") == "heartbeat" and env.get("ts", 0) > said_at + 0.05:
                beat = env
        await ws.close()
        await session.close()
        return leaked, "" if beat is not None else "no heartbeat after them within 5 s"

    leaked, problem = asyncio.run(run())
    if problem:
        return Check(False, problem)
    kinds = collections.Counter(e.get("type") for e in leaked)
    return Check(not leaked, f"after bye: {dict(kinds) if leaked else 'no'} #{room[:8]} events")


def _capacity_line(child: Child | None) -> str | None:
    if child is None:
        return None
    for line in child.lines[:40]:
        if re.search(r"(?i)capacity|connections|file descriptors|fds\b|RLIMIT|open files", line):
            return line.strip()
    return None


def attack_idle_connections(lab: Lab) -> Check:
    """~1,100 idle connections from one address (each says one ``ping`` so its handshake is known to be done),
    then a new client from another address.

    Tries to use up the broker's file descriptors (a default limit of 1024 is common).
    Held: the broker lives and the new client gets its ``pong``; if not every idle connection was served,
    the broker must have said at start-up what it can accept (its capacity line).
    """
    count = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * count + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want) if hard != resource.RLIM_INFINITY else want, hard))
    src = lab.source()
    socks = []
    for _ in range(count):
        sock = lab.dealer(src)
        with contextlib.suppress(zmq.Again):
            sock.send(b'{"type":"ping"}', zmq.NOBLOCK)
        socks.append(sock)
    answered: set[int] = set()
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    index = {sock: i for i, sock in enumerate(socks)}
    deadline = now() + max(3.0, lab.budget())
    while len(answered) < count and now() < deadline:
        for sock, _ in poller.poll(100):
            with contextlib.suppress(zmq.Again):
                while sock.recv(zmq.NOBLOCK):
                    answered.add(index[sock])
    newcomer = lab.dealer()
    reply = None
    for _ in range(3):
        reply = lab.call(newcomer, {"type": "ping"}, lambda e: True, 1.0)
        if reply is not None:
            break
    capacity = _capacity_line(lab.broker)
    ok = reply is not None and (len(answered) == count or capacity is not None)
    for sock in socks:
        lab.close(sock)
    return Check(
        ok,
        f"{len(answered)} of {count} idle connections answered; newcomer got {_code(reply)}; "
        f"capacity line: {capacity[:70] if capacity else 'none'}",
    )


def _copy_database(src: Path, dst: Path) -> None:
    """A consistent copy of a live database (SQLite's backup API), in WAL mode like the original."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dst)
    with target:
        source.backup(target)
    target.execute("PRAGMA journal_mode=WAL")
    target.close()
    source.close()


def attack_database(lab: Lab) -> Check:
    """A second broker on the same --db file; then a broker on a read-only database file.

    Two brokers on one file would hand out the same seqs; a read-only file must not end in a traceback.
    Held: the second broker exits non-zero at start, naming the holder (the first broker's pid); the
    read-only file either stops the broker at start with a message and no traceback, or the broker runs
    and answers a ``msg`` with ``unavailable`` while still answering ``ping``.
    """
    assert lab.broker is not None
    problems, notes = [], []
    argv = ["broker.py", "--router", f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}"]
    second = spawn([*argv, "--db", str(lab.db)], "broker-second", lab.work)
    started = second.search(r"feed\s+\(PUB\):", 5) is not None
    code = second.wait_exit(0 if started else 5)
    second.stop()
    text = second.text()
    if started or code in (0, None):
        problems.append("a second broker started on the same database")
    elif str(lab.broker.pid) not in text:
        problems.append(f"refused, but without naming pid {lab.broker.pid}: {text.strip()[-80:]!r}")
    else:
        notes.append(f"second broker refused (exit {code})")
    if "Traceback" in text:
        problems.append("the second broker printed a traceback")

    rodir = lab.work / f"readonly{lab.uid()}"
    rodir.mkdir()
    rodb = rodir / "chat.db"
    _copy_database(lab.db, rodb)
    os.chmod(rodb, 0o444)
    os.chmod(rodir, 0o555)
    router = f"tcp://127.0.0.1:{free_port()}"
    ro = spawn(["broker.py", "--router", router, "--pub", f"tcp://127.0.0.1:{free_port()}", "--db", str(rodb)],
               "broker-readonly", lab.work, drop_dac=True)  # fmt: skip
    started = ro.search(r"feed\s+\(PUB\):", 8) is not None
    if started:
        sock = lab.dealer(router=router)
        welcome = lab.call(sock, {"type": "hello", "user": "ro15"}, _kind("welcome", "error"), 3.0)
        msg = lab.call(sock, {"type": "msg", "room": "general", "text": "x", "id": "ro1"}, _kind("ack", "error"), 3.0)
        pong = lab.call(sock, {"type": "ping"}, _kind("pong"), 3.0)
        if _code(msg) != "unavailable" or pong is None or not ro.alive():
            problems.append(
                f"read-only: hello {_code(welcome)}, msg {_code(msg)}, ping {_code(pong)}, "
                f"{'alive' if ro.alive() else 'died'}"
            )
        else:
            notes.append("read-only: runs, msg unavailable")
    else:
        code = ro.wait_exit(5)
        said = ro.text().strip()
        if code in (0, None) or not said:
            problems.append(f"read-only: exit {code} with {said[-60:]!r}")
        else:
            notes.append(f"read-only: exit {code} ({said.splitlines()[-1][:60]})")
    ro.stop()
    if "Traceback" in ro.text():
        problems.append("read-only: traceback")
    os.chmod(rodir, 0o755)
    return Check(not problems, "; ".join(problems + notes))


def attack_stuck_subscribers(lab: Lab) -> Check:
    """Subscribers that never read the feed (8, quick 4, straight to the broker, and 2 behind the relay), while
    others post 24 KB messages.

    Tries to make the broker (and relay) queue the feed for them without bound.
    Held: the broker's RSS grows by at most 24 MiB per stuck subscriber + 64 MiB, the relay lives, and
    the common criteria.
    """
    count = lab.n(8, 4)
    src = lab.source()
    subs = []
    for i in range(count + 2):
        sub = lab.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(via(src, lab.pub if i < count else lab.relay_ep))
        lab.sockets.append(sub)
        subs.append(sub)
    before = lab.rss()
    room = f"stuck16x{lab.uid()}"
    done = lab.fill({room: lab.n(800, 250)}, CONTROL_TEXT, now() + lab.budget(3), prefix="chat", parallel=4)
    peak = lab.sampler.peak("broker")
    growth = peak - before
    ok = growth <= 24 * count + 64
    return Check(
        ok,
        f"{done.get(room, 0)} events of 24 KB; broker RSS {before:.0f} -> peak {peak:.0f} MiB "
        f"(+{growth:.0f}, allowed {24 * count + 64})",
    )


def attack_twin_same_id(lab: Lab) -> Check:
    """The same message id sent at the same moment from two connections of one session (the same routing
    id, as a client that reconnects while its first connection is still up: ROUTER_HANDOVER).

    Held: each id is published at most once.
    """
    rid = b"T" + os.urandom(15)
    src = lab.source()
    room = f"twin17x{lab.uid()}"
    a = lab.session(f"twin17x{lab.uid()}", [room], source=src, routing_id=rid)
    b = lab.dealer(src, routing_id=rid)
    counts: collections.Counter = collections.Counter()
    ids = 15
    for i in range(ids):
        msg = b'{"type":"msg","room":"%s","text":"twin %d","id":"tw-%d"}' % (room.encode(), i, i)
        for sock in (a, b) if i % 2 else (b, a):
            with contextlib.suppress(zmq.Again):
                sock.send(msg, zmq.NOBLOCK)
        for sock in (a, b):
            _drain_count(sock, counts)
        time.sleep(0.02)  # pairs ~20 ms apart, so the handover goes back and forth between them
    end = now() + max(0.5, lab.budget(0.5))
    while now() < end:
        if not (_drain_count(a, counts) + _drain_count(b, counts)):
            time.sleep(0.02)  # nothing came in this pass
    events = [e for e in lab.history(room) if e.get("type") == "msg"]
    per_id = collections.Counter(e.get("id") for e in events)
    dup = sum(c - 1 for c in per_id.values() if c > 1)
    return Check(
        dup == 0,
        f"{len(per_id)} of {ids} ids published, {dup} twice; {counts['ack']} acks, "
        f"{counts['rate_limited']} rate_limited",
        dup=dup,
    )


def _hard_frames() -> list[list[bytes]]:
    """Malformed frames of every kind we could think of, beyond the fuzzer's random ones."""
    ping = b'{"type":"ping"}'
    big_batch = b"[" + b",".join([ping] * (m.MAX_BATCH_REQUESTS + 1)) + b"]"
    nested = b"[" + b",".join([b"[" + ping + b"]"] * 200) + b"]"
    rooms300 = encode_json({"type": "hello", "user": "mal18", "rooms": [f"r{i}" for i in range(300)]})
    rooms_dup = encode_json({"type": "hello", "user": "mal18", "rooms": ["general"] * 256})
    return [
        [b"[]"], [b"[1,2,3]"], [big_batch], [nested], [b"[" * 60_000], [b"{" * 60_000], [rooms300], [rooms_dup],
        [b'{"type":"ping","type":"hello","user":"dupkey"}'], [b'{"type":"hello","user":"\\ud800"}'],
        [b'{"type":"history","room":"general","after":1e400}'], [b'{"type":"history","room":"general","limit":-0.0}'],
        [b'{"type":"msg","room":"general","text":"' + b"\\u0000" * 4000 + b'","id":"z"}'],
        [b'{"type":"msg","room":"general","text":"' + b"x" * 4001 + b'","id":"z"}'],
        [b'{"type":"dm","to":"' + b"a" * 40 + b'","text":"x","id":"z"}'], [b'{"type":null}'], [b'{"type":{}}'],
        [b'{"\x00":1,"type":"ping"}'], [b"\xef\xbb\xbf" + ping], [ping + b"\x00"], [b"null"], [b'"ping"'],
        [b"1e999999"], [b"-" * 100], [b'{"type":"join","room":"' + b"a" * 10_000 + b'"}'],
        [b"", b""], [ping, ping], [b"", ping], [ping] * 50, [b"[" + b",".join([b"[]"] * 256) + b"]"],
        [b'[{"type":"hello","user":"mal18b"},' + b",".join([b'{"type":"join","room":"j%d"}' % i for i in range(40)])
         + b',{"type":"bye"}]'],
        [b'{"type":"welcome"}'], [b'{"type":"ack","id":"h1","seq":1}'], [b'{"type":"bye","id":"' + b"i" * 65 + b'"}'],
        [os.urandom(60_000)], [b"\xff" * 1000], [b"x" * (m.MAX_FRAME_BYTES + 10)],
    ]  # fmt: skip


def attack_malformed(lab: Lab) -> Check:
    """Malformed frames of every kind at volume: the fuzzer's random frames (benchmarks/fuzz.py) and a list
    of hand-made ones (empty, multipart, over-long batches, deep nesting, bad UTF-8, NaN-ish numbers,
    oversize frames, reply types sent as requests) from 6 DEALERs on one address, as fast as possible.

    Held: the broker keeps answering (replies arrive) and the common criteria.
    """
    import fuzz  # benchmarks/fuzz.py: its random frame generator

    rng = random.Random(18)
    src = lab.source()
    peers = [lab.dealer(src) for _ in range(6)]
    oversize = lab.dealer(src)  # libzmq drops the connection of a peer that sends one (and its queued replies)
    hard = _hard_frames()
    counts: collections.Counter = collections.Counter()
    sent = dropped = 0
    deadline = now() + lab.budget()
    while now() < deadline and lab.broker and lab.broker.alive():
        frames = hard[sent % len(hard)] if sent % 3 == 0 else fuzz.frames(rng, m.MAX_FRAME_BYTES)
        big = any(len(f) > m.MAX_FRAME_BYTES for f in frames)
        try:
            (oversize if big else rng.choice(peers)).send_multipart(frames, zmq.NOBLOCK)
            sent += 1
            dropped += big
        except zmq.Again:
            pass
        if sent % 20 == 0:
            for p in peers:
                _drain_count(p, counts)
    end = now() + 0.5
    while now() < end:
        if not sum(_drain_count(p, counts) for p in peers):
            time.sleep(0.02)  # nothing came in this pass
    probe = lab.dealer()
    pong = lab.call(probe, {"type": "ping"}, _kind("pong"), 3.0)
    replies = sum(v for k, v in counts.items() if k not in ("bytes", "more"))
    top = ", ".join(f"{k} {v}" for k, v in counts.most_common(6) if k != "bytes")
    return Check(
        pong is not None and replies > 0,
        f"{sent} frames ({dropped} oversize), {replies} replies ({top}); fresh ping: {_code(pong)}",
    )


def attack_inbox_flood(lab: Lab) -> Check:
    """Connections that send frames faster than the broker can handle them and never read the replies: half
    send ~48 KB frames (two messages of escaped control characters, without a session), half batches of
    256 pings (each rate limited, each answered).

    libzmq queues up to the ROUTER's RCVHWM frames (1000) per connection before it stops reading a socket,
    whatever their size: 1000 x 64 KiB is 64 MiB per connection, and 1000 x 256 requests is work the broker
    still does after the attacker is gone (the window includes that: "broker busy").
    Held: the common criteria (the broker under 512 MiB, alive, the honest user served).
    """
    count = lab.n(16, 8)
    src = lab.source()
    socks = [lab.dealer(src) for _ in range(count)]
    text = json.dumps(CONTROL_TEXT).encode()
    msg = b'{"type":"msg","room":"general","text":%s,"id":"x"}' % text
    big = b"[" + msg + b"," + msg + b"]"
    pings = b"[" + b",".join([b'{"type":"ping"}'] * m.MAX_BATCH_REQUESTS) + b"]"
    frames = [big if i % 2 == 0 else pings for i in range(count)]
    sent = collections.Counter()
    start = now()
    deadline = start + lab.budget()
    while now() < deadline and lab.broker and lab.broker.alive():
        progress = False
        for sock, frame in zip(socks, frames, strict=True):
            try:
                sock.send(frame, zmq.NOBLOCK, copy=False)
                sent[frame is big] += 1
                progress = True
            except zmq.Again:
                pass
        if not progress:
            time.sleep(0.005)  # every queue of ours is full: the broker stopped reading them all
    elapsed = now() - start
    return Check(
        True,
        f"{count} connections: {sent[True]} frames of {len(big) // 1024} KiB "
        f"({sent[True] * len(big) / MIB / elapsed:.0f} MiB/s), {sent[False]} batches of 256 pings",
    )


def attack_kill9(lab: Lab) -> Check:
    """``kill -9`` of the broker in the middle of the honest user's sends, then a restart on the same ports
    and database.

    Held: the broker comes back, the honest user is served again (new acks), and nothing it got acked is
    lost or published twice (the final history walk).  Ping latency is not judged (the broker was down).
    """
    assert lab.broker is not None
    start = now()
    while now() < start + 5 and len(lab.honest_log.acked_after(start)) < 3:
        time.sleep(0.02)  # the honest user's record fills by itself
    killed_at = now()
    lab.broker.popen.kill()
    lab.broker.popen.wait(5)
    lab.restarts["broker (kill -9)"] += 1
    lab.start_broker()
    restarted_rss = lab.rss()
    back = None
    while now() < killed_at + 20 and back is None:
        later = lab.honest_log.acked_after(killed_at)
        back = next((t for t, msg_id, _ in later if lab.honest_log.sent.get(msg_id, 0) > killed_at), None)
        time.sleep(0.05)  # the honest user's record fills by itself
    _sleep_until(start + lab.budget())
    if back is None:
        return Check(False, "the honest user got no new ack within 20 s of the restart", judge_ping=False)
    return Check(
        True,
        f"honest served again {back - killed_at:.1f}s after the kill; the restarted broker started at "
        f"{restarted_rss:.0f} MiB",
        judge_ping=False,
    )


def attack_busy_machine(lab: Lab) -> Check:
    """A machine busy with other work: CPU-bound processes at normal priority, one more than it has cores,
    while 32 connections at a time (fresh sources, as ``fill`` does) post 24 KB messages as fast as their
    limits let.

    The store's writer runs under ``SCHED_IDLE`` while it keeps up (``store_writer.Yielding``): here it is
    starved, and the broker must give it its share of the CPU back before what SQLite lacks reaches
    ``--max-unstored-bytes``.  Stopping to read there for a moment is the bound working (the senders
    outrun any disk); a writer left idle stopped the broker for seconds (the honest user's pings took 2 s).
    Held: no ping of the honest user took a second or more (judged in full runs only, as the ping p99 is),
    and the common criteria.
    """
    assert lab.broker is not None
    before = lab.broker.text().count(STOPPED_READING)
    start = now()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        room = f"busy21x{lab.uid()}"
        done = lab.fill({room: lab.n(6000, 600)}, CONTROL_TEXT, now() + lab.budget(), prefix="busy", parallel=32)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    stopped = lab.broker.text().count(STOPPED_READING) - before
    lab.honest_log.refresh()
    worst = max((rtt for sent, rtt in lab.honest_log.pings if sent >= start), default=0.0)
    return Check(
        lab.quick or worst < 1000,
        f"{done.get(room, 0)} events of 24 KB beside {len(busy)} busy processes; the broker stopped reading for "
        f"SQLite {stopped} times; the honest user's slowest ping {worst:.0f} ms",
    )


ATTACKS: list[tuple[str, Callable[[Lab], Check]]] = [
    ("01-history-after", attack_history_after),
    ("02a-history-batch-unread", attack_history_batch_unread),
    ("02b-history-batch-read", attack_history_batch_read),
    ("03-hello-msg-bye-loop", attack_hello_msg_bye),
    ("04-many-conns-one-addr", attack_many_connections),
    ("05-rooms-escaped-text", attack_escaped_rooms),
    ("06-room-hoarding", attack_room_hoarding),
    ("07-dedupe-eviction", attack_dedupe_eviction),
    ("08-id-reuse", attack_id_reuse),
    ("09-curve-routing-id", attack_curve_routing_id),
    ("10-relay-plaintext", attack_relay_plaintext),
    ("11-ws-per-address", attack_ws_per_address),
    ("12-ws-never-reads", attack_ws_never_reads),
    ("13-ws-bye-room-leak", attack_ws_bye),
    ("14-idle-connections", attack_idle_connections),
    ("15-db-lock-readonly", attack_database),
    ("16-stuck-subscribers", attack_stuck_subscribers),
    ("17-twin-same-id", attack_twin_same_id),
    ("18-malformed-volume", attack_malformed),
    ("19-inbox-flood", attack_inbox_flood),
    ("20-kill9-restart", attack_kill9),
    ("21-busy-machine", attack_busy_machine),
]


# --- running and judging ---------------------------------------------------------------------------------


#: What an attack needs made before its window opens (it is not part of the attack): the room of big events.
PREPARE: dict[str, Callable[[Lab], Any]] = {
    "02a-history-batch-unread": ensure_big_room,
    "02b-history-batch-read": ensure_big_room,
}


def run_attack(lab: Lab, key: str, func: Callable[[Lab], Check], last: bool = False) -> Row:
    row = Row(key)
    print(f"[attack] {key} ...", file=sys.stderr, flush=True)
    prepare = PREPARE.get(key)
    if prepare is not None:
        try:
            prepare(lab)
        finally:
            lab.close_all()
        lab.settle(lab.budget(3))
    lab.sampler.window()
    row.start = now()
    try:
        row.check = func(lab)
        row.status = "ok"
    except Exception as exc:
        row.status = "error"
        row.notes.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}")
        traceback.print_exc(file=sys.stderr)
    finally:
        lab.close_all()
    row.busy = lab.settle(lab.budget(3))
    row.end = now()
    row.seconds = row.end - row.start
    with open(lab.work / "windows.txt", "a") as file:
        file.write(f"{key} {row.start:.4f} {row.end:.4f}\n")
    row.broker_mib = lab.sampler.peak("broker")
    row.gateway_mib = lab.sampler.peak("gateway")
    row.deaths = lab.sampler.kills()
    for name, limit in (("broker", BROKER_RSS_LIMIT_MIB), ("gateway", GATEWAY_RSS_LIMIT_MIB)):
        rss = lab.rss(name)
        if rss >= limit and not last:  # so the next attack starts from a process within its bound
            lab.restart(name)
            row.after.append(f"{name} restarted after it (RSS {rss:.0f} MiB, {lab.rss(name):.0f} MiB once restarted)")
    if lab.curve_broker is not None and not lab.curve_broker.alive():
        row.deaths.append(f"CURVE broker died (exit {lab.curve_broker.popen.returncode})")
        lab.curve_broker = None
    try:
        row.deaths += lab.restart_dead()
    except RuntimeError as exc:
        row.deaths.append(f"restart failed: {exc}")
    print(f"[attack] {key} done in {row.seconds:.1f}s", file=sys.stderr, flush=True)
    return row


def judge(rows: list[Row], lab: Lab, history: list[dict] | None, judge_ping: bool) -> list[Row]:
    """Attribute the honest user's losses and repeats to the attack during which its message was acked
    (lost) or first sent (published twice), and give each row its verdict."""
    log = lab.honest_log
    log.refresh()
    extra = Row("(between attacks)", status="ok", check=Check(True))
    counts = collections.Counter(e.get("id") for e in history or [] if e.get("type") == "msg"
                                 and e.get("user") == HONEST_NAME)  # fmt: skip
    seqs = collections.defaultdict(set)
    for e in history or []:
        if e.get("type") == "msg" and e.get("user") == HONEST_NAME:
            seqs[e.get("id")].add(e.get("seq"))

    def row_at(t: float) -> Row:
        return next((r for r in rows if r.start <= t < r.end), extra)

    if history is not None:
        for msg_id, acks in log.acks.items():
            if counts[msg_id] == 0:
                row_at(acks[0][0]).lost += 1
        for msg_id, sent in log.sent.items():
            repeats = counts[msg_id] - 1
            wrong_seq = any(seq not in seqs[msg_id] for _, seq in log.acks.get(msg_id, ())) and counts[msg_id] > 0
            if repeats > 0 or wrong_seq:
                row_at(sent).dup += max(repeats, 1)
    for row in [*rows, extra]:
        row.ping_p99 = log.ping_p99(row.start, row.end) if row is not extra else math.nan
        if row.status == "error":
            continue
        check = row.check or Check(False, "no result")
        row.dup += check.dup
        failures = list(row.deaths)
        if row.broker_mib >= BROKER_RSS_LIMIT_MIB:
            failures.append(f"broker RSS {row.broker_mib:.0f} >= {BROKER_RSS_LIMIT_MIB} MiB")
        if row.gateway_mib >= GATEWAY_RSS_LIMIT_MIB:
            failures.append(f"gateway RSS {row.gateway_mib:.0f} >= {GATEWAY_RSS_LIMIT_MIB} MiB")
        if judge_ping and check.judge_ping and row.ping_p99 >= PING_P99_LIMIT_MS and row is not extra:
            failures.append(f"ping p99 {row.ping_p99:.0f} ms")
        if history is None:
            failures.append("no final history walk")
        if row.lost:
            failures.append(f"{row.lost} acked honest messages lost")
        if row.dup:
            failures.append(f"{row.dup} published twice")
        if not check.ok:
            failures.append("own check failed")
        row.status = "broke" if failures else "held"
        row.notes = failures + ([check.notes] if check.notes else [])
    for row in rows:
        if row.busy >= 0.3:
            row.notes.append(f"broker busy {row.busy:.1f}s after the attack")
        row.notes += row.after
    if extra.lost or extra.dup:
        rows = [*rows, extra]
    return rows


def table(rows: list[Row]) -> str:
    head = ["attack", "result", "broker MiB", "gateway MiB", "ping p99 ms", "lost", "dup", "seconds", "notes"]
    body = [
        [r.key, r.status, f"{r.broker_mib:.0f}", f"{r.gateway_mib:.0f}",
         "-" if math.isnan(r.ping_p99) else f"{r.ping_p99:.0f}", str(r.lost), str(r.dup), f"{r.seconds:.1f}",
         "; ".join(r.notes)]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    widths[-1] = len(head[-1])

    def line(cells: Iterable[str]) -> str:
        cells = list(cells)
        out = [c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["honest"]:
        return run_honest(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="time budget of each attack (default: 5, quick: 1)")
    parser.add_argument("--quick", action="store_true", help="~1 s per attack, smaller counts, ping not judged")
    parser.add_argument("--only", help="comma-separated attack keys or key prefixes (e.g. 03,07,12-ws)")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if an attack broke")
    parser.add_argument("--workdir", type=Path, help="keep the database and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.list:
        for key, func in ATTACKS:
            print(f"{key:26} {(func.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 5.0
    selected = ATTACKS
    if args.only:
        prefixes = [p.strip() for p in args.only.split(",") if p.strip()]
        selected = [(k, f) for k, f in ATTACKS if any(k.startswith(p) for p in prefixes)]
        if not selected:
            parser.error(f"no attack matches {args.only!r} (see --list)")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    temp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(temp := tempfile.mkdtemp(prefix="chat-attack-"))
    began = now()
    lab = Lab(args, work)
    rows: list[Row] = []
    history = None
    try:
        lab.start()
        setup_s = now() - began
        for i, (key, func) in enumerate(selected):
            rows.append(run_attack(lab, key, func, last=i == len(selected) - 1))
        lab.tell_honest("stop")
        assert lab.honest is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            lab.honest.wait(20)
        try:
            history = lab.history(HONEST_ROOM)
        except Exception as exc:
            print(f"final history walk failed: {exc}", file=sys.stderr)
    finally:
        lab.stop()
        lab.ctx.destroy(linger=0)
    rows = judge(rows, lab, history, judge_ping=not args.quick)
    log = lab.honest_log
    held = sum(r.status == "held" for r in rows)
    broke = sum(r.status == "broke" for r in rows)
    errors = sum(r.status == "error" for r in rows)
    print(table(rows))
    print()
    print(
        f"honest user: {len(log.sent)} sent, {len(log.acks)} acked, {sum(r.lost for r in rows)} acked but lost, "
        f"{sum(r.dup for r in rows)} published twice, {log.done} unacked at the end, {len(log.welcomes)} welcomes"
    )
    print(
        f"limits: broker RSS < {BROKER_RSS_LIMIT_MIB} MiB, gateway RSS < {GATEWAY_RSS_LIMIT_MIB} MiB, ping p99 < "
        f"{PING_P99_LIMIT_MS:.0f} ms ({'not judged: --quick' if args.quick else 'judged'}); restarts: "
        f"{dict(lab.restarts) or 'none'}"
    )
    if lab.quick and lab.gateway_slow_consumer == 1.0:
        print("the gateway ran with --slow-consumer-timeout 1 (--quick), every other option at its default")
    print(f"setup {setup_s:.1f}s, total {now() - began:.1f}s, --seconds {args.seconds}, workdir {work}")
    print(f"RESULT: {held} held, {broke} broke, {errors} error")
    if temp and not broke and not errors:
        shutil.rmtree(temp, ignore_errors=True)
    return 0 if args.no_fail or not (broke or errors) else 1


if __name__ == "__main__":
    sys.exit(main())
