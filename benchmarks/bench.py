"""The broker beside its baselines, on this machine, in a few minutes: throughput, CPU, latency, failure modes.

    python benchmarks/bench.py                  # everything, medians of 3 runs (about five minutes)
    python benchmarks/bench.py --quick          # a smoke run with tiny counts (the test suite does this)
    python benchmarks/bench.py --only latency,stuck --runs 1

Systems under test, each a process of its own on ephemeral loopback ports: our broker (``--db :memory:``
and ``--db FILE``), the bare Python loop and the same loop with the protocol's parsing
(``baselines.py``), ``zmq.proxy`` in C, the thread-per-client relay of the original design
(``thread_relay.py``), and Redis and NATS when their servers are installed
(``apt-get install redis-server nats-server``, ``pip install redis nats-py``).  The load comes from
publisher and subscriber processes (``loadgen.py``) on the same two cores, which is said in the report.

Scenarios (``--only``): ``throughput`` (1, 10, 100 subscribers, publishers as fast as accepted),
``latency`` (10k msgs/s offered to 10 subscribers), ``stuck`` (a subscriber that never reads),
``idle`` (10,000 connected idle clients), ``relay`` (an XSUB/XPUB proxy chained on the feed).

Writes ``results.md``, ``results.json`` and ``bench.png`` (when matplotlib is importable) to ``--out``.
Exit status 1 only when a measurement broke (a process failed); goals that are not met are reported.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
LOADGEN = str(HERE / "loadgen.py")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SCENARIOS = ("throughput", "latency", "stuck", "idle", "relay")
INSTALL_HINT = {
    "redis": "apt-get install redis-server && pip install redis",
    "nats": "apt-get install nats-server && pip install nats-py",
}


class BenchError(Exception):
    """A measurement could not be made (a process failed to start, answer or finish)."""


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes and durations of one benchmark run; ``--quick`` shrinks every one of them."""

    runs: int = 3
    window: float = 1.5  # seconds each figure is measured over
    warmup: float = 0.6  # seconds of load before a window opens
    sub_levels: tuple[int, ...] = (1, 10, 100)  # subscribers in the throughput scenario
    subs: int = 10  # subscribers in the headline figures
    pubs: int = 2  # publisher processes (each one client session)
    latency_rate: float = 10_000.0  # msgs/s offered in the latency scenario
    stuck_fill: float = 2.0  # seconds a stuck subscriber gets to fill its queues before the second window
    stuck_warmup: float = 3.0  # load before the first stuck window: the broker's history and allocator settle
    levels: tuple[str, ...] = ("main", "1", "many")  # which of sub_levels the throughput scenario runs
    idle_clients: int = 10_000
    idle_procs: int = 4
    idle_connect: float = 45.0  # seconds the idle clients get to open their sessions
    quick: bool = False

    def sub_procs(self, subs: int) -> int:
        """Subscriber processes for ``subs`` sockets: enough to spread them, few enough for two cores."""
        return 1 if subs <= 2 else 2 if subs <= 10 else 4


QUICK = Config(
    runs=1,
    window=0.2,
    warmup=0.15,
    sub_levels=(1, 2, 3),
    levels=("main",),
    subs=2,
    pubs=1,
    latency_rate=500.0,
    stuck_fill=0.5,
    stuck_warmup=0.15,
    idle_clients=40,
    idle_procs=2,
    quick=True,
)


# --- processes ----------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel kills it if the benchmark dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Child:
    """A process whose stdout lines are collected by a thread; every wait on it has a deadline."""

    alive: ClassVar[list[Child]] = []

    def __init__(self, argv: list[str], name: str, stdin: bool = False) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        Child.alive.append(self)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The next output line matching ``pattern``; BenchError at the deadline or at the end of output."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.name}: no {pattern!r} within {timeout:.0f} s; {self.tail()}") from None
            if line is None:
                self._queue.put(None)
                raise BenchError(f"{self.name} exited ({self.popen.poll()}) before {pattern!r}; {self.tail()}")
            self.lines.append(line)
            match = regex.search(line)
            if match:
                return match

    def tail(self) -> str:
        return "output: " + " | ".join(self.lines[-5:]) if self.lines else "no output"

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdin:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self in Child.alive:
            Child.alive.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for child in list(cls.alive):
            child.stop(grace=1.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads, from /proc."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``python`` is the interpreter's main thread, ``ZMQbg/IO/0`` libzmq's I/O)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return 0


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    """Children (the broker among them) inherit it: 10,000 clients need more than the usual 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --- systems under test ---------------------------------------------------------------------------


@dataclass
class Server:
    """A running system under test: where publishers send, where subscribers listen."""

    child: Child
    inbox: str
    feed: str

    @property
    def pid(self) -> int:
        return self.child.pid


@dataclass
class System:
    key: str
    label: str
    kind: str  # loadgen kind
    topic: str  # what its subscribers subscribe to (ZeroMQ kinds)
    start: Callable[[Path], Server]
    sub_levels: tuple[str, ...] = ("1", "main", "many")  # which throughput levels it takes part in
    latency: bool = True
    pub_args: tuple[str, ...] = ()  # extra loadgen options for its publishers


def _zmq_server(argv: list[str], name: str) -> Server:
    child = Child(argv, name)
    try:
        inbox = child.expect(r"inbox \(ROUTER\):\s*(\S+)", 20).group(1)
        feed = child.expect(r"feed\s+\(PUB\):\s*(\S+)", 5).group(1)
    except BenchError:
        child.stop()
        raise
    return Server(child, inbox, feed)


#: Extra broker options from ``--broker-args``, to measure a variant (``--heartbeat 10``) without editing anything.
BROKER_ARGS: list[str] = []


def start_broker(work: Path, db: str = ":memory:") -> Server:
    argv = [PY, "broker.py", "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", "--db", db, *BROKER_ARGS]
    for attempt in range(3):  # the broker is being worked on: a start that fails is retried a little later
        try:
            # The load comes from one address: no per-connection or per-source limit may be what is measured.
            unlimited = ["--rate-limit", "0", "--source-rate", "0", "--max-sessions-per-source", "0"]
            return _zmq_server([*argv, *unlimited, "--max-rooms-per-source", "0"], "broker")
        except BenchError as exc:
            if attempt == 2:
                raise BenchError(f"the broker does not start: {exc}") from None
            print(f"  (the broker did not start, attempt {attempt + 1}: {exc}; retrying)", flush=True)
            time.sleep(3)
    raise AssertionError("unreachable")


def start_broker_db(work: Path) -> Server:
    db = work / f"chat-{time.monotonic_ns()}.db"
    return start_broker(work, str(db))


def start_baseline(mode: str) -> Callable[[Path], Server]:
    def start(work: Path) -> Server:
        argv = [PY, str(HERE / "baselines.py"), mode, "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*"]
        return _zmq_server(argv, mode)

    return start


def start_threads(read_size: int) -> Callable[[Path], Server]:
    def start(work: Path) -> Server:
        argv = [PY, str(HERE / "thread_relay.py"), "--port", "0", "--read-size", str(read_size)]
        child = Child(argv, "thread-relay")
        where = child.expect(r"listening on (\S+)", 20).group(1)
        return Server(child, where, where)

    return start


def start_redis(work: Path) -> Server:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = Child([*argv, "--dir", str(work), "--daemonize", "no"], "redis-server")
    child.expect(r"Ready to accept connections", 20)
    return Server(child, f"127.0.0.1:{port}", f"127.0.0.1:{port}")


def start_nats(work: Path) -> Server:
    child = Child(["nats-server", "-a", "127.0.0.1", "-p", "-1"], "nats-server")
    where = child.expect(r"Listening for client connections on (\S+)", 20).group(1)
    child.expect(r"Server is ready", 10)
    return Server(child, where, where)


def systems() -> tuple[list[System], list[str]]:
    """The systems this machine can run, and a note for each optional one it cannot."""
    found = [
        System("broker", "our broker (--db :memory:)", "broker", "room/general/", start_broker),
        System(
            "broker-batch",
            "our broker, publishers batch (<= 100 msgs per frame)",
            "broker",
            "room/general/",
            start_broker,
            pub_args=("--per-frame", "100"),
        ),
        System("broker-db", "our broker (--db FILE, SQLite)", "broker", "room/general/", start_broker_db, ("main",)),
        System("bare", "bare Python loop ROUTER->PUB, no parsing", "zmq", "room/general/", start_baseline("bare")),
        System(
            "parse",
            "same loop + parse/validate/stamp/ack (msgspec)",
            "broker",
            "room/general/",
            start_baseline("parse"),
            ("main",),
            latency=False,
        ),
        System("proxy", "zmq.proxy ROUTER->PUB in C (the limit)", "zmq", "", start_baseline("proxy"), ("1", "main")),
        System("threads", "thread-per-client TCP relay, 64 KiB reads", "tcp", "", start_threads(65536)),
        System(
            "threads-1k", "thread-per-client TCP relay, recv(1024) (original design)", "tcp", "", start_threads(1024)
        ),
    ]
    notes = []
    for key, binary, module, label, start in (
        ("redis", "redis-server", "redis", "Redis pub/sub (redis-py, pipelined 100)", start_redis),
        ("nats", "nats-server", "nats", "NATS server (Go), nats-py publishers", start_nats),
    ):
        if shutil.which(binary) and importlib.util.find_spec(module):
            found.append(System(key, label, key, "", start))
        else:
            notes.append(f"{key}: skipped ({binary} or the {module} module is missing: {INSTALL_HINT[key]})")
    return found, notes


# --- one measurement --------------------------------------------------------------------------------


@dataclass
class Window:
    """What one measurement window saw."""

    seconds: float
    ingress: float  # msgs/s the system accepted (acks for our broker, sends otherwise)
    per_sub: list[float]  # msgs/s each subscriber received
    cpu: dict[str, float]  # CPU seconds per watched process
    rss: dict[str, tuple[int, int]]  # RSS at the window's start and end per watched process
    loadgen_cores: float
    machine_cores: float
    threads: dict[str, float] = field(default_factory=dict)  # cores per thread name of the first watched process
    errors: int = 0
    latency: dict[str, float] = field(default_factory=dict)  # percentiles, ms
    lost: int | None = None
    received: int = 0

    @property
    def delivered(self) -> float:
        return sum(self.per_sub)

    @property
    def sub_median(self) -> float:
        return statistics.median(self.per_sub) if self.per_sub else 0.0

    def cpu_us(self, name: str) -> float | None:
        msgs = self.ingress * self.seconds
        return self.cpu[name] / msgs * 1e6 if msgs and not math.isnan(self.cpu[name]) else None

    def cores(self, name: str) -> float | None:
        return None if math.isnan(self.cpu[name]) else self.cpu[name] / self.seconds


def settle(watch: dict[str, int], limit: float = 3.0) -> None:
    """Wait (at most ``limit`` s) until the watched processes are idle: no backlog of a previous measurement left."""
    deadline = time.monotonic() + limit
    before = sum(cpu_seconds(pid) for pid in watch.values())
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(cpu_seconds(pid) for pid in watch.values())
        if now - before < 0.02:
            return
        before = now


def percentiles(samples: array.array) -> dict[str, float]:
    data = sorted(samples)
    if not data:
        return {}
    pick = lambda q: data[min(len(data) - 1, int(q * len(data)))] / 1e6  # noqa: E731 (ns -> ms)
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "p99.9": pick(0.999), "max": data[-1] / 1e6}


def split(total: int, parts: int) -> list[int]:
    """``total`` sockets over ``parts`` processes, as evenly as can be (no empty process)."""
    sizes = [total // parts + (i < total % parts) for i in range(parts)]
    return [n for n in sizes if n]


def drive(
    cfg: Config,
    work: Path,
    kind: str,
    topic: str,
    inbox: str,
    feed: str,
    watch: dict[str, int],
    subs: int,
    rate: float = 0.0,
    latency: bool = False,
    windows: int = 1,
    between: Callable[[], None] | None = None,
    warmup: float | None = None,
    pub_args: tuple[str, ...] = (),
) -> list[Window]:
    """Subscribers, then publishers, then ``windows`` measurement windows; ``between`` runs after the first."""
    settle(watch)
    children: list[Child] = []
    sample_files: list[Path] = []
    try:
        subs_children = []
        for i, count in enumerate(split(subs, cfg.sub_procs(subs))):
            argv = [PY, LOADGEN, "sub", "--kind", kind, "--endpoint", feed, "--count", str(count), "--topic", topic]
            if latency:
                sample_files.append(work / f"samples-{time.monotonic_ns()}-{i}.bin")
                argv += ["--latency", "--samples", str(sample_files[-1])]
            subs_children.append(Child(argv, f"sub{i}", stdin=True))
        pubs_children = []
        for i in range(cfg.pubs):
            argv = [PY, LOADGEN, "pub", "--kind", kind, "--endpoint", inbox, "--index", str(i), *pub_args]
            pubs_children.append(Child([*argv, "--rate", str(rate / cfg.pubs)], f"pub{i}", stdin=True))
        children += subs_children + pubs_children
        for child in children:  # publishers wait for GO, so subscribers are all there before the first message
            child.expect(r"^READY", 30)
        start = time.monotonic_ns() + 20_000_000
        spans = []
        t = start + int((cfg.warmup if warmup is None else warmup) * 1e9)
        for w in range(windows):
            spans.append([t, t + int(cfg.window * 1e9)])
            t = spans[-1][1] + int((cfg.stuck_fill if w == 0 and between else 0.1) * 1e9)
        end = spans[-1][1] + 50_000_000
        go = "GO " + json.dumps({"start": start, "windows": spans, "end": end})
        for child in children:
            child.send(go)
        samples: dict[int, tuple[int, dict[str, float], dict[str, float], dict[str, int], float, tuple[int, int]]] = {}
        for w, (a, b) in enumerate(spans):
            for bound in (a, b):
                time.sleep(max(0.0, (bound - time.monotonic_ns()) / 1e9))
                samples[bound] = (
                    time.monotonic_ns(),
                    {name: cpu_seconds(pid) for name, pid in watch.items()},
                    thread_cpu(next(iter(watch.values()))),
                    {name: rss_bytes(pid) for name, pid in watch.items()},
                    sum(cpu_seconds(c.pid) for c in children),
                    machine_busy(),
                )
            if w == 0 and between:
                between()
        results = [
            json.loads(c.expect(r"^RESULT ", (end - time.monotonic_ns()) / 1e9 + 20).string[7:]) for c in children
        ]
    finally:
        for child in children:
            child.stop()
    out = []
    ncpu = os.cpu_count() or 1
    for w, (a, b) in enumerate(spans):
        seconds = (b - a) / 1e9
        accepted = errors = 0
        per_sub: list[float] = []
        for res in results:
            first, last = res["windows"][w]
            if res["role"] == "pub":
                accepted += (last[1] if kind == "broker" else last[0]) - (first[1] if kind == "broker" else first[0])
                errors += last[2] - first[2]
            else:
                per_sub += [(y - x) / seconds for x, y in zip(first, last, strict=True)]
        # CPU is read by this process, which may wake up late on a busy machine: rates over the time it really read.
        (t_a, cpu_a, thr_a, rss_a, gen_a, busy_a), (t_b, cpu_b, thr_b, rss_b, gen_b, busy_b) = samples[a], samples[b]
        sampled = (t_b - t_a) / 1e9
        if sampled < seconds / 2:  # both reads came late: the CPU figures of this window are unknown
            print(f"    (CPU read over {sampled:.2f} s of a {seconds:.2f} s window: not counted)", flush=True)
            sampled = math.nan
        window = Window(
            seconds=seconds,
            ingress=accepted / seconds,
            per_sub=per_sub,
            cpu={name: (cpu_b[name] - cpu_a[name]) * seconds / sampled for name in watch},
            rss={name: (rss_a[name], rss_b[name]) for name in watch},
            loadgen_cores=(gen_b - gen_a) / sampled,
            threads={name: (thr_b[name] - thr_a.get(name, 0.0)) / sampled for name in thr_b},
            machine_cores=(busy_b[0] - busy_a[0]) / max(1, busy_b[1] - busy_a[1]) * ncpu,
            errors=errors,
        )
        if latency:
            merged = array.array("q")
            for path in sample_files:
                with contextlib.suppress(OSError), open(path, "rb") as fh:
                    merged.frombytes(fh.read())
                path.unlink(missing_ok=True)
            window.latency = percentiles(merged)
            window.lost = sum(r["lost"] for r in results if r["role"] == "sub")
            window.received = sum(sum(r["total"]) for r in results if r["role"] == "sub")
        out.append(window)
    return out


# --- scenarios ----------------------------------------------------------------------------------------


@dataclass
class Record:
    """Every window measured, by (system key, measure name), over the runs."""

    data: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, system: str, measure: str, value: dict[str, Any]) -> None:
        self.data.setdefault(system, {}).setdefault(measure, []).append(value)

    def median(self, system: str, measure: str, key: str) -> float | None:
        values = [v[key] for v in self.data.get(system, {}).get(measure, []) if v.get(key) is not None]
        return statistics.median(values) if values else None


def summarize(w: Window, name: str) -> dict[str, Any]:
    """The figures of one window that the report uses (``name``: the watched process that is the SUT)."""
    return {
        "ingress": w.ingress,
        "sub_median": w.sub_median,
        "sub_min": min(w.per_sub) if w.per_sub else 0.0,
        "delivered": w.delivered,
        "cpu_us": w.cpu_us(name),
        "sut_cores": w.cores(name),
        "rss_mib": w.rss[name][1] / 2**20,
        "loadgen_cores": None if math.isnan(w.loadgen_cores) else w.loadgen_cores,
        "machine_cores": w.machine_cores,
        "threads": {k: round(v, 3) for k, v in w.threads.items() if not math.isnan(v) and v >= 0.005},
        "errors": w.errors,
        "lost": w.lost,
        "received": w.received,
        **{k: v for k, v in w.latency.items()},
    }


def level_subs(cfg: Config, level: str) -> int:
    return {"1": cfg.sub_levels[0], "main": cfg.sub_levels[1], "many": cfg.sub_levels[2]}[level]


@contextlib.contextmanager
def running(system: System, work: Path) -> Iterator[Server]:
    server = system.start(work)
    try:
        yield server
    finally:
        server.child.stop()


def scenario_throughput_latency(cfg: Config, work: Path, found: list[System], only: set[str], rec: Record) -> None:
    """Per run and system: one process, the throughput levels (as fast as accepted), then the paced latency run."""
    for run in range(cfg.runs):
        for system in found:
            levels = [lv for lv in cfg.levels if lv in system.sub_levels] if "throughput" in only else []
            do_latency = "latency" in only and system.latency
            if not levels and not do_latency:
                continue
            print(f"run {run + 1}/{cfg.runs}  {system.label}", flush=True)
            try:
                with running(system, work) as server:
                    watch = {"sut": server.pid}
                    for level in levels:
                        subs = level_subs(cfg, level)
                        args = (cfg, work, system.kind, system.topic, server.inbox, server.feed, watch, subs)
                        (w,) = drive(*args, pub_args=system.pub_args)
                        rec.add(system.key, f"tp{subs}", summarize(w, "sut"))
                        print(
                            f"    {subs:>3} subs: {w.ingress:>9,.0f} msgs/s in, {w.sub_median:>9,.0f}/s per sub, "
                            f"{w.cpu_us('sut') or 0:5.1f} µs CPU/msg, SUT {w.cores('sut') or 0:.2f} cores, "
                            f"load gen {w.loadgen_cores:.2f} cores",
                            flush=True,
                        )
                    if do_latency:
                        args = (cfg, work, system.kind, system.topic, server.inbox, server.feed, watch, cfg.subs)
                        (w,) = drive(*args, rate=cfg.latency_rate, latency=True, pub_args=system.pub_args)
                        rec.add(system.key, "latency", summarize(w, "sut"))
                        lat = w.latency
                        print(
                            f"    latency at {cfg.latency_rate:,.0f}/s: p50 {lat.get('p50', 0):.3f} ms, "
                            f"p99 {lat.get('p99', 0):.3f} ms, lost {w.lost}",
                            flush=True,
                        )
            except BenchError as exc:
                rec.errors.append(f"{system.key}: {exc}")
                print(f"    FAILED: {exc}", flush=True)


def scenario_stuck(cfg: Config, work: Path, found: list[System], rec: Record) -> None:
    """Window A: normal subscribers; then one more that never reads; window B: the same subscribers again."""
    for run in range(cfg.runs):
        for system in [s for s in found if s.key in ("broker", "threads")]:
            print(f"run {run + 1}/{cfg.runs}  stuck subscriber: {system.label}", flush=True)
            try:
                with running(system, work) as server:
                    stuck: list[Child] = []

                    def add_stuck(system: System = system, server: Server = server, stuck: list[Child] = stuck) -> None:
                        argv = [PY, LOADGEN, "stuck", "--kind", system.kind, "--endpoint", server.feed]
                        argv += ["--topic", system.topic, "--max-seconds", "120"]
                        stuck.append(Child(argv, "stuck", stdin=True))  # it lives until its stdin closes
                        stuck[0].expect(r"^READY", 20)

                    try:
                        a, b = drive(
                            cfg,
                            work,
                            system.kind,
                            system.topic,
                            server.inbox,
                            server.feed,
                            {"sut": server.pid},
                            cfg.subs,
                            windows=2,
                            between=add_stuck,
                        )
                    finally:
                        for child in stuck:
                            child.stop()
                    value = {
                        "without": a.sub_median,
                        "with": b.sub_median,
                        "ingress_without": a.ingress,
                        "ingress_with": b.ingress,
                        "cost": 1 - b.sub_median / a.sub_median if a.sub_median else None,
                        "rss_before_mib": a.rss["sut"][1] / 2**20,
                        "rss_after_mib": b.rss["sut"][1] / 2**20,
                        "rss_growth_mib": (b.rss["sut"][1] - a.rss["sut"][1]) / 2**20,
                        # once the stuck reader's queue is full, an unbounded one would still grow here:
                        "rss_growth_in_window_mib": (b.rss["sut"][1] - b.rss["sut"][0]) / 2**20,
                        "cpu_us_without": a.cpu_us("sut"),
                        "cpu_us_with": b.cpu_us("sut"),
                    }
                    rec.add(system.key, "stuck", value)
                    print(
                        f"    others per sub: {a.sub_median:,.0f}/s without, {b.sub_median:,.0f}/s with; "
                        f"CPU {a.cpu_us('sut') or 0:.1f} -> {b.cpu_us('sut') or 0:.1f} µs/msg; "
                        f"RSS {value['rss_before_mib']:.1f} -> {value['rss_after_mib']:.1f} MiB "
                        f"({value['rss_growth_in_window_mib']:+.1f} during the second window)",
                        flush=True,
                    )
            except BenchError as exc:
                rec.errors.append(f"stuck {system.key}: {exc}")
                print(f"    FAILED: {exc}", flush=True)


def scenario_idle(cfg: Config, work: Path, rec: Record) -> None:
    """Clients that said hello and only ping: the broker's RSS before and after, per client."""
    print(f"idle clients: {cfg.idle_clients:,} sessions on one broker", flush=True)
    clients: list[Child] = []
    try:
        with running(System("broker", "", "broker", "", start_broker), work) as server:
            time.sleep(0.5)
            before = rss_bytes(server.pid)
            started = time.monotonic()
            for i, count in enumerate(split(cfg.idle_clients, cfg.idle_procs)):
                argv = [PY, LOADGEN, "idle", "--endpoint", server.inbox, "--count", str(count), "--index", str(i)]
                argv += ["--connect-seconds", str(cfg.idle_connect), "--max-seconds", str(cfg.idle_connect + 60)]
                clients.append(Child(argv, f"idle{i}", stdin=True))
            ready = [c.expect(r"^READY ", cfg.idle_connect + 30) for c in clients]
            welcomed = sum(json.loads(r.string[6:])["welcomed"] for r in ready)
            connect_s = time.monotonic() - started
            time.sleep(1.0 if cfg.quick else 2.0)  # every client has pinged at least once since
            cpu_a, threads_a, t_a = cpu_seconds(server.pid), thread_cpu(server.pid), time.monotonic()
            time.sleep(0.5 if cfg.quick else 2.0)
            took = time.monotonic() - t_a
            cores = (cpu_seconds(server.pid) - cpu_a) / took
            threads = {k: round((v - threads_a.get(k, 0.0)) / took, 3) for k, v in thread_cpu(server.pid).items()}
            after = rss_bytes(server.pid)
            for child in clients:
                child.send("STOP")
            pongs = sum(json.loads(c.expect(r"^RESULT ", 30).string[7:])["pongs"] for c in clients)
            value = {
                "clients": cfg.idle_clients,
                "welcomed": welcomed,
                "rss_before_mib": before / 2**20,
                "rss_after_mib": after / 2**20,
                "per_client_kib": (after - before) / max(1, welcomed) / 1024,
                "broker_cores": cores,
                "threads": threads,
                "connect_seconds": connect_s,
                "pongs": pongs,
            }
            rec.add("broker", "idle", value)
            print(
                f"    {welcomed:,} welcomed in {connect_s:.1f} s; RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
                f"= {value['per_client_kib']:.1f} KiB per client; broker {cores:.2f} cores for their pings",
                flush=True,
            )
    except BenchError as exc:
        rec.errors.append(f"idle: {exc}")
        print(f"    FAILED: {exc}", flush=True)
    finally:
        for child in clients:
            child.stop()


def scenario_relay(cfg: Config, work: Path, rec: Record, direct_known: bool) -> None:
    """Subscribers behind an XSUB/XPUB zmq.proxy chained on the broker's feed: rate, latency, completeness."""
    for run in range(cfg.runs):
        print(f"run {run + 1}/{cfg.runs}  relay: XSUB/XPUB zmq.proxy on the broker's feed", flush=True)
        relay = None
        try:
            with running(System("broker", "", "broker", "", start_broker), work) as server:
                argv = [
                    PY,
                    str(HERE / "baselines.py"),
                    "relay",
                    "--upstream",
                    server.feed,
                    "--pub",
                    "tcp://127.0.0.1:*",
                ]
                relay = Child(argv, "relay")
                feed = relay.expect(r"feed\s+\(PUB\):\s*(\S+)", 20).group(1)
                watch = {"relay": relay.pid, "broker": server.pid}
                args = (cfg, work, "broker", "room/general/", server.inbox)
                (tp,) = drive(*args, feed, watch, cfg.subs)
                (lat,) = drive(*args, feed, watch, cfg.subs, rate=cfg.latency_rate, latency=True)
                value = {
                    "sub_median": tp.sub_median,
                    "ingress": tp.ingress,
                    "relay_cpu_us": tp.cpu_us("relay"),
                    "relay_cores": tp.cores("relay"),
                    "relay_rss_mib": tp.rss["relay"][1] / 2**20,
                    "lost": lat.lost,
                    "received": lat.received,
                    **lat.latency,
                }
                if not direct_known:  # the same figures without the relay, from this broker
                    (dl,) = drive(*args, server.feed, watch, cfg.subs, rate=cfg.latency_rate, latency=True)
                    rec.add("broker", "latency", summarize(dl, "broker"))
                rec.add("relay", "relay", value)
                print(
                    f"    via relay: {tp.sub_median:,.0f}/s per sub, relay {value['relay_cpu_us'] or 0:.1f} µs "
                    f"CPU/msg; latency p50 {lat.latency.get('p50', 0):.3f} ms p99 {lat.latency.get('p99', 0):.3f} ms; "
                    f"lost {lat.lost} of {lat.received}",
                    flush=True,
                )
        except BenchError as exc:
            rec.errors.append(f"relay: {exc}")
            print(f"    FAILED: {exc}", flush=True)
        finally:
            if relay:
                relay.stop()


# --- report -------------------------------------------------------------------------------------------


def rate(v: float | None) -> str:
    """msgs/s, short: 132k, 9.8k, 950."""
    if v is None:
        return "—"
    return f"{v / 1000:.0f}k" if v >= 9_950 else f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def num(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def main_table(cfg: Config, found: list[System], rec: Record) -> list[str]:
    one, main, many = cfg.sub_levels
    rows = [
        f"| system | ingress msgs/s, {one} sub | ingress msgs/s, {main} subs | per-sub delivered msgs/s, {main} subs "
        f"| total delivered msgs/s, {many} subs | CPU µs per msg, {main} subs | SUT / load-gen cores, {main} subs "
        f"| p50 / p99 ms at {rate(cfg.latency_rate)} msgs/s, {cfg.subs} subs | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def bound(key: str, measure: str) -> str:
        """The ingress, marked † when the SUT was not what ran out: it got less than 0.85 of a core."""
        value, cores = rec.median(key, measure, "ingress"), rec.median(key, measure, "sut_cores")
        return rate(value) + (" †" if value and cores is not None and cores < 0.85 else "")

    for s in found:
        med = lambda measure, key, s=s: rec.median(s.key, measure, key)  # noqa: E731
        p50, p99 = med("latency", "p50"), med("latency", "p99")
        lat = "—" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}"
        cores = med(f"tp{main}", "sut_cores"), med(f"tp{main}", "loadgen_cores")
        rows.append(
            f"| {s.label} | {bound(s.key, f'tp{one}')} | {bound(s.key, f'tp{main}')} "
            f"| {rate(med(f'tp{main}', 'sub_median'))} | {rate(med(f'tp{many}', 'delivered'))} "
            f"| {num(med(f'tp{main}', 'cpu_us'))} | {num(cores[0], '.2f')} / {num(cores[1], '.2f')} | {lat} "
            f"| {num(med(f'tp{main}', 'rss_mib') or med('latency', 'rss_mib'), '.0f')} |"
        )
    return rows


def scenario_table(cfg: Config, rec: Record) -> list[str]:
    rows = ["| scenario | figure | our broker | reference |", "|---|---|---|---|"]
    b, t = "broker", "threads"
    if rec.data.get(b, {}).get("stuck") or rec.data.get(t, {}).get("stuck"):

        def stuck(key: str) -> str:
            m = lambda k: rec.median(key, "stuck", k)  # noqa: E731
            if m("without") is None:
                return "—"
            return f"{rate(m('without'))} -> {rate(m('with'))} (cost {num((m('cost') or 0) * 100, '.0f')}%)"

        def mem(key: str) -> str:
            m = lambda k: rec.median(key, "stuck", k)  # noqa: E731
            if m("rss_before_mib") is None:
                return "—"
            return (
                f"{m('rss_before_mib'):.0f} -> {m('rss_after_mib'):.0f} MiB "
                f"({num(m('rss_growth_in_window_mib'), '+.1f')} MiB during the second window)"
            )

        def cpu(key: str) -> str:
            m = lambda k: rec.median(key, "stuck", k)  # noqa: E731
            return f"{num(m('cpu_us_without'))} -> {num(m('cpu_us_with'))} µs"

        rows.append(
            f"| stuck subscriber | the others' msgs/s per sub, without -> with it | {stuck(b)} "
            f"| thread relay: {stuck(t)} |"
        )
        rows.append(f"| stuck subscriber | RSS of the server, before -> after | {mem(b)} | thread relay: {mem(t)} |")
        rows.append(
            f"| stuck subscriber | server CPU per message, without -> with it | {cpu(b)} | thread relay: {cpu(t)} |"
        )
    if rec.data.get(b, {}).get("idle"):
        idle = rec.data[b]["idle"][-1]
        rows.append(
            f"| {idle['clients']:,} idle clients | RSS before -> after, per client | {idle['rss_before_mib']:.0f} -> "
            f"{idle['rss_after_mib']:.0f} MiB, **{idle['per_client_kib']:.1f} KiB** per client | "
            f"{idle['welcomed']:,} welcomed in {idle['connect_seconds']:.1f} s |"
        )
        split = ", ".join(f"{k} {v:.2f}" for k, v in idle.get("threads", {}).items() if v >= 0.01)
        rows.append(
            f"| {idle['clients']:,} idle clients | broker CPU while they ping (1/s each), by thread | "
            f"{idle['broker_cores']:.2f} cores ({split or 'idle'}) | — |"
        )
    if rec.data.get("relay", {}).get("relay"):
        m = lambda k: rec.median("relay", "relay", k)  # noqa: E731
        d = lambda k: rec.median(b, "latency", k)  # noqa: E731
        rows.append(
            f"| XSUB/XPUB relay on the feed | per-sub msgs/s, {cfg.subs} subs: via relay (direct) | "
            f"{rate(m('sub_median'))} | direct: {rate(rec.median(b, f'tp{cfg.sub_levels[1]}', 'sub_median'))} |"
        )
        rows.append(
            f"| XSUB/XPUB relay on the feed | p50 / p99 ms at {rate(cfg.latency_rate)} msgs/s via relay "
            f"(direct) | {num(m('p50'), '.2f')} / {num(m('p99'), '.2f')} | direct: {num(d('p50'), '.2f')} / "
            f"{num(d('p99'), '.2f')} |"
        )
        lost = [v["lost"] for v in rec.data["relay"]["relay"]]
        got = [v["received"] for v in rec.data["relay"]["relay"]]
        rows.append(
            f"| XSUB/XPUB relay on the feed | relay CPU µs per msg; messages lost behind it | "
            f"{num(m('relay_cpu_us'))} µs ({num(m('relay_cores'), '.2f')} cores); lost {sum(lost)} of "
            f"{sum(got):,} | — |"
        )
    return rows


def goals(cfg: Config, rec: Record) -> list[dict[str, str]]:
    """Each goal of issue 5 beside its baseline from the same run."""
    main, many = cfg.sub_levels[1], cfg.sub_levels[2]
    m = rec.median
    out: list[dict[str, str]] = []

    def goal(name: str, ok: bool | None, measured: str, baseline: str) -> None:
        out.append(
            {
                "goal": name,
                "status": "—" if ok is None else "PASS" if ok else "FAIL",
                "measured": measured,
                "baseline": baseline,
            }
        )

    broker, bare = m("broker", f"tp{main}", "ingress"), m("bare", f"tp{main}", "ingress")
    one = cfg.sub_levels[0]
    broker1, bare1 = m("broker", f"tp{one}", "ingress"), m("bare", f"tp{one}", "ingress")
    if broker1 and bare1:
        goal(
            f"broker throughput >= 60% of the bare loop's ({one} sub)",
            broker1 / bare1 >= 0.6,
            f"{rate(broker1)} msgs/s = {broker1 / bare1:.0%}",
            f"bare loop {rate(bare1)} msgs/s",
        )
    if broker and bare:
        goal(
            f"broker throughput >= 60% of the bare loop's ({main} subs)",
            broker / bare >= 0.6,
            f"{rate(broker)} msgs/s = {broker / bare:.0%}",
            f"bare loop {rate(bare)} msgs/s",
        )
    if broker:
        goal(
            f">= 100k msgs/s ingress with {main} subscribers",
            broker >= 100_000,
            f"{rate(broker)} msgs/s",
            f"zmq.proxy {rate(m('proxy', f'tp{main}', 'ingress'))}",
        )
        goal(
            "CPU per message (no target)",
            None,
            f"{num(m('broker', f'tp{main}', 'cpu_us'))} µs",
            f"bare loop {num(m('bare', f'tp{main}', 'cpu_us'))} µs, "
            f"parse loop {num(m('parse', f'tp{main}', 'cpu_us'))} µs",
        )
    for subs in (main, many):
        # Ours at its best: the broker with one message per frame, or with publishers that batch.
        ours = [(v, key) for key in ("broker", "broker-batch") if (v := m(key, f"tp{subs}", "delivered"))]
        if not ours:
            continue
        best, key = max(ours)
        # The goal names NATS and the original design (recv(1024), the issue's ~300k row).  The relay
        # with 64 KiB reads is our own tuning of it: shown beside ours as a reference, not a target, as
        # it moves bytes in big writes and does no work per message.
        for ref in ("nats", "threads-1k", "threads"):
            theirs = m(ref, f"tp{subs}", "delivered")
            if theirs:
                goal(
                    f"delivered msgs/s, {subs} subscribers: ahead of {SHORT[ref]}"
                    if ref != "threads"
                    else f"delivered msgs/s, {subs} subscribers, beside {SHORT[ref]} (a reference, no target)",
                    best > theirs if ref != "threads" else None,
                    f"{rate(best)} ({SHORT[key]})",
                    f"{SHORT[ref]} {rate(theirs)}",
                )
    p99 = m("broker", "latency", "p99")
    if p99 is not None:
        goal(
            f"p99 end to end <= 1 ms at {rate(cfg.latency_rate)} msgs/s, {cfg.subs} subs",
            p99 <= 1.0,
            f"{p99:.2f} ms",
            f"bare loop {num(m('bare', 'latency', 'p99'), '.2f')} ms",
        )
    cost = m("broker", "stuck", "cost")
    if cost is not None:
        goal(
            "a stuck subscriber costs the others < 10% of their throughput",
            cost < 0.10,
            f"{cost:.0%} ({rate(m('broker', 'stuck', 'without'))} -> {rate(m('broker', 'stuck', 'with'))} per sub)",
            f"thread relay {num((m('threads', 'stuck', 'cost') or 0) * 100, '.0f')}%",
        )
        growth = m("broker", "stuck", "rss_growth_mib")
        late = m("broker", "stuck", "rss_growth_in_window_mib")
        goal(
            "broker memory stays bounded with a stuck subscriber (< 32 MiB growth, < 8 MiB in the 2nd window)",
            (growth or 0) < 32 and (late or 0) < 8,
            f"{growth:+.1f} MiB ({num(late, '+.1f')} MiB in the 2nd window)",
            f"thread relay {num(m('threads', 'stuck', 'rss_growth_mib'), '+.1f')} MiB",
        )
    idle = rec.data.get("broker", {}).get("idle")
    if idle:
        v = idle[-1]
        goal(
            f"{v['clients']:,} idle clients, <= 60 KiB each",
            v["welcomed"] == v["clients"] and v["per_client_kib"] <= 60,
            f"{v['per_client_kib']:.1f} KiB ({v['welcomed']:,} welcomed)",
            "—",
        )
    relay = rec.data.get("relay", {}).get("relay")
    if relay:
        lost = sum(v["lost"] or 0 for v in relay)
        received = sum(v["received"] for v in relay)
        goal(
            "subscribers behind an XSUB/XPUB relay receive everything",
            lost == 0 and received > 0,
            f"lost {lost} of {received:,}; p99 {num(m('relay', 'relay', 'p99'), '.2f')} ms",
            f"direct p99 {num(m('broker', 'latency', 'p99'), '.2f')} ms",
        )
    return out


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = found.group(1).strip() if found else ""
    import zmq

    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, pyzmq {zmq.pyzmq_version()} / libzmq {zmq.zmq_version()}"
    )


def report(cfg: Config, found: list[System], notes: list[str], rec: Record, out: Path, elapsed: float) -> str:
    goal_rows = goals(cfg, rec)
    lines = [
        "# Benchmark results",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}. "
        f"{'QUICK SMOKE RUN: tiny counts, the figures mean nothing. ' if cfg.quick else ''}"
        f"Medians of {cfg.runs} run(s), {cfg.window:g} s windows after {cfg.warmup:g} s of load; "
        f"{cfg.pubs} publisher process(es), subscribers spread over 1-4 processes, all on this machine "
        f"with the system under test (SUT): the load generators compete with it for the same cores. "
        f"Took {elapsed:.0f} s.",
        "",
        *main_table(cfg, found, rec),
        "",
        *scenario_table(cfg, rec),
        "",
        "| goal | measured | baseline (same run) | status |",
        "|---|---|---|---|",
        *[f"| {g['goal']} | {g['measured']} | {g['baseline']} | {g['status']} |" for g in goal_rows],
        "",
        "† the system under test used less than 0.85 of a core there: the load generators, on the same two "
        "cores, ran out first, so the figure is a floor (Redis, NATS, zmq.proxy and the relay could do more "
        "on a machine of their own).",
        "",
        "How to read it: *ingress* is what the system accepted per second (acks for our broker, sends "
        "otherwise, publishers going as fast as they are let); *delivered* is counted at the subscribers; "
        "*CPU µs per msg* is the SUT process's user+system CPU (all threads) over the window divided by the "
        "messages it accepted; latency is from a publisher's send to a subscriber's receive "
        "(CLOCK_MONOTONIC, system-wide), at a fixed offered rate.",
        *[f"- {note}" for note in notes],
        *[f"- ERROR {e}" for e in rec.errors],
    ]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "systems": {s.key: s.label for s in found},
                "notes": notes,
                "measurements": rec.data,
                "goals": goal_rows,
                "errors": rec.errors,
                "seconds": elapsed,
                "broker_args": BROKER_ARGS,
            },
            indent=1,
        )
    )
    return text


SHORT = {
    "broker": "broker :memory:",
    "broker-batch": "broker, batching publishers",
    "broker-db": "broker, SQLite file",
    "bare": "bare loop, no parsing",
    "parse": "bare loop + parsing",
    "proxy": "zmq.proxy (C)",
    "threads": "thread relay, 64 KiB reads",
    "threads-1k": "thread relay, recv(1024) (original)",
    "redis": "Redis",
    "nats": "NATS",
}


def rate_axis(v: float) -> str:
    return f"{v / 1e6:g}M" if v >= 1e6 else rate(v)


def plot(cfg: Config, found: list[System], rec: Record, path: Path) -> str:
    """Throughput, latency and CPU per message as bars; returns a line for the console."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return "no plot: matplotlib is not importable (pip install matplotlib)"
    names = [SHORT.get(s.key, s.key) for s in found]
    x = list(range(len(found)))
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.2))
    width = 0.27
    ax = axes[0]
    for j, subs in enumerate(cfg.sub_levels):
        values = [rec.median(s.key, f"tp{subs}", "ingress") for s in found]
        bars = ax.bar([i + (j - 1) * width for i in x], [v or 0 for v in values], width, label=f"{subs} subscriber(s)")
        for bar, v in zip(bars, values, strict=True):
            if v:
                ax.annotate(rate(v), (bar.get_x() + width / 2, v), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: rate_axis(v)))
    ax.set_title("Ingress, publishers as fast as accepted (log scale)")
    ax.set_ylabel("msgs/s accepted")
    ax = axes[1]
    shown = [1.0]
    for j, key in enumerate(("p50", "p99", "p99.9")):
        values = [rec.median(s.key, "latency", key) or 0 for s in found]
        ax.bar([i + (j - 1) * width for i in x], values, width, label=key)
        shown += [v for v in values if v > 0]
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="goal: p99 <= 1 ms")
    ax.set_yscale("log")
    ax.set_yticks(
        [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200) if min(shown) / 2 <= t <= max(shown) * 2]
    )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"End-to-end latency at {rate(cfg.latency_rate)} msgs/s, {cfg.subs} subscribers (log scale)")
    ax.set_ylabel("ms")
    ax = axes[2]
    main_thread, other = [], []
    for s in found:
        total = rec.median(s.key, f"tp{cfg.sub_levels[1]}", "cpu_us") or 0
        runs = rec.data.get(s.key, {}).get(f"tp{cfg.sub_levels[1]}", [])
        shares = [r["threads"].get("python", 0) / sum(r["threads"].values()) for r in runs if r.get("threads")]
        share = statistics.median(shares) if shares else 0.0
        main_thread.append(total * share)
        other.append(total * (1 - share))
    ax.bar(x, main_thread, 0.6, color="tab:green", label="Python threads (zmq.proxy: its C loop)")
    ax.bar(x, other, 0.6, bottom=main_thread, color="tab:olive", label="libzmq I/O thread; Redis, NATS")
    for i, (a, b) in enumerate(zip(main_thread, other, strict=True)):
        if a + b:
            ax.annotate(f"{a + b:.1f}", (i, a + b), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"CPU of the system under test per message, {cfg.sub_levels[1]} subscribers")
    ax.set_ylabel("µs per message")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"zmq-chat broker beside its baselines: {machine().split(', Linux')[0]}, loopback, load generators on the "
        f"same cores, medians of {cfg.runs}" + (" (QUICK SMOKE RUN: meaningless figures)" if cfg.quick else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


# --- command line ---------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny counts (seconds, not minutes)")
    parser.add_argument("--runs", type=int, help="runs of each measurement; the report shows medians (default: 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results go (default: %(default)s)")
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all of {','.join(SCENARIOS)})")
    parser.add_argument("--systems", help="comma-separated system keys (default: all found)")
    parser.add_argument(
        "--broker-args", default="", help="extra options for every broker started, e.g. '--heartbeat 10'"
    )
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redo the table and plot from a results.json")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
        found = [System(key, label, "", "", start_broker) for key, label in saved["systems"].items()]
        rec = Record(saved["measurements"], saved["errors"])
        print(report(cfg, found, saved["notes"], rec, args.out, saved.get("seconds", 0.0)))
        print(plot(cfg, found, rec, args.out / "bench.png"))
        return 0
    BROKER_ARGS[:] = shlex.split(args.broker_args)
    cfg = QUICK if args.quick else Config()
    if args.runs:
        cfg = Config(**{**asdict(cfg), "runs": args.runs, "sub_levels": cfg.sub_levels})
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if only - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {sorted(only - set(SCENARIOS))}; choose from {SCENARIOS}")
    signal.signal(signal.SIGTERM, _interrupt)
    found, notes = systems()
    if args.systems:
        keys = set(args.systems.split(","))
        found = [s for s in found if s.key in keys]
    if "idle" in only and raise_fd_limit() < 2 * cfg.idle_clients // cfg.idle_procs + 256:
        notes.append(f"idle: skipped, the fd limit ({raise_fd_limit()}) is too low for {cfg.idle_clients} clients")
        only.discard("idle")
    for note in notes:
        print(note)
    rec = Record()
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    started = time.monotonic()
    try:
        scenario_throughput_latency(cfg, work, found, only, rec)
        if "stuck" in only:
            scenario_stuck(cfg, work, found, rec)
        if "relay" in only:
            scenario_relay(cfg, work, rec, direct_known="latency" in only and any(s.key == "broker" for s in found))
        if "idle" in only:
            scenario_idle(cfg, work, rec)
    except KeyboardInterrupt:
        rec.errors.append("interrupted")
    finally:
        Child.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    text = report(cfg, found, notes, rec, args.out, time.monotonic() - started)
    print()
    print(text)
    print(plot(cfg, found, rec, args.out / "bench.png"))
    print(f"written: {args.out / 'results.md'}, {args.out / 'results.json'}")
    return 1 if rec.errors else 0


if __name__ == "__main__":
    sys.exit(main())
