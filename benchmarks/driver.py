"""The load driver: sizes of a run, the load-generator processes (``loadgen.py``) and what a window measured.

``drive`` starts subscribers, then publishers, hands them one schedule (warm-up, measurement windows, end),
samples /proc at every window boundary (the system under test and its descendants, the load generators, the
whole machine) and turns the counters the load generators print into a ``Window``.  ``Record`` keeps every
window's figures by system and measure, over the runs; the report and the goals read medians from it.
"""

from __future__ import annotations

import array
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.procs import Child, ExpectError, cpu_seconds, machine_busy, rss_bytes, thread_cpu, trees_cpu_seconds

HERE = Path(__file__).resolve().parent
PY = sys.executable
LOADGEN = str(HERE / "loadgen.py")
#: Load-generator kinds whose publishers count acks: what such a system accepted is what it acked.
ACKED_KINDS = frozenset({"broker", "jetstream", "redis-streams"})


class BenchError(Exception):
    """A measurement could not be made (a process failed to start, answer or finish)."""


#: What a failed measurement raises: our own error, or a wait on a process's output that came to nothing.
FAILURES = (BenchError, ExpectError)


def failure(exc: Exception) -> str:
    """One line saying why a measurement failed."""
    return exc.brief() if isinstance(exc, ExpectError) else str(exc)


def spawn(argv: list[str], name: str, stdin: bool = False) -> Child:
    """A process of the benchmark: killed by the kernel if the benchmark dies first."""
    return Child(argv, name, stdin=stdin, die_with_parent=True, timeout=30.0)


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Sizes and durations of one benchmark run; ``--quick`` shrinks every one of them."""

    runs: int = 3
    window: float = 1.5  # seconds each figure is measured over
    #: Seconds the latency figures are measured over.  At 10k msgs/s a 1.5 s window's p99 is its 150th-worst
    #: message of 15,000 (times ten subscribers): one stall of the machine of 1.5 ms sets it.  Measured, one
    #: broker started anew each time, p99 over 1.5 s then over 4.5 s (7 runs each, same processes):
    #: ``:memory:`` 0.70-0.90 ms, one 6.1 ms | 0.70-0.86 ms; ``--db FILE`` 0.79-1.11 ms, one 48 ms | 0.86-1.16.
    latency_window: float = 4.5
    warmup: float = 0.6  # seconds of load before a window opens
    sub_levels: tuple[int, ...] = (1, 10, 100)  # subscribers in the throughput scenario
    subs: int = 10  # subscribers in the headline figures
    pubs: int = 2  # publisher processes (each one client session)
    latency_rate: float = 10_000.0  # msgs/s offered in the latency scenario
    #: Seconds a stuck subscriber gets to fill its queues before the second window: the kernel's socket buffers
    #: (several MiB on loopback), then --feed-hwm frames of up to 32 KiB; at 60-80k msgs/s that took 2-3 s,
    #: so with 2 s the one-time fill (7-9 MiB) fell in the window that goal 5.8 reads for growth.
    stuck_fill: float = 5.0
    stuck_warmup: float = 3.0  # load before the first stuck window: the broker's history and allocator settle
    levels: tuple[str, ...] = ("main", "1", "many")  # which of sub_levels the throughput scenario runs
    idle_clients: int = 10_000
    idle_procs: int = 4
    idle_connect: float = 45.0  # seconds the idle clients get to open their sessions
    idle_settle: float = 2.0  # seconds after the last welcome before, and the length of, the idle CPU window
    quick: bool = False  # a smoke run: one drive per system, latency taken from it (its figures mean nothing)

    def sub_procs(self, subs: int) -> int:
        """Subscriber processes for ``subs`` sockets: enough to spread them, few enough for two cores."""
        return 1 if subs <= 2 else 2 if subs <= 10 else 4

    def level_subs(self, level: str) -> int:
        return {"1": self.sub_levels[0], "main": self.sub_levels[1], "many": self.sub_levels[2]}[level]


QUICK = Config(
    runs=1,
    window=0.15,
    latency_window=0.15,
    warmup=0.1,
    sub_levels=(1, 2, 3),
    levels=("main",),
    subs=2,
    pubs=1,
    latency_rate=500.0,
    stuck_fill=0.4,
    stuck_warmup=0.15,
    idle_clients=40,
    idle_procs=2,
    idle_settle=0.3,
    quick=True,
)


# --- one measurement --------------------------------------------------------------------------------


@dataclass
class Window:
    """What one measurement window saw."""

    seconds: float
    ingress: float  # msgs/s the system accepted (acks where there are acks, sends otherwise)
    per_sub: list[float]  # msgs/s each subscriber received
    cpu: dict[str, float]  # CPU seconds per watched process (with its descendants)
    rss: dict[str, tuple[int, int]]  # RSS at the window's start and end per watched process
    loadgen_cores: float  # all load-generator processes together
    loadgen_top: float  # the busiest single load-generator process
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


def settle(watch: dict[str, int], limit: float = 3.0, step: float = 0.1) -> None:
    """Wait (at most ``limit`` s) until the watched processes are idle: no backlog of a previous measurement left."""
    deadline = time.monotonic() + limit
    before = sum(cpu or 0.0 for cpu in trees_cpu_seconds(list(watch.values())))
    while time.monotonic() < deadline:
        time.sleep(step)
        now = sum(cpu or 0.0 for cpu in trees_cpu_seconds(list(watch.values())))
        if now - before < 0.2 * step:
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


@dataclass
class _Sample:
    """/proc at one window boundary."""

    at: int
    cpu: dict[str, float]
    threads: dict[str, float]
    rss: dict[str, int]
    loadgen: dict[int, float]
    busy: tuple[int, int]


def _sample(watch: dict[str, int], children: list[Child]) -> _Sample:
    at = time.monotonic_ns()
    trees = trees_cpu_seconds(list(watch.values()))
    return _Sample(
        at,
        {name: cpu or 0.0 for name, cpu in zip(watch, trees, strict=True)},
        thread_cpu(next(iter(watch.values()))),
        {name: rss_bytes(pid) for name, pid in watch.items()},
        {c.pid: cpu_seconds(c.pid) or 0.0 for c in children},
        machine_busy(),
    )


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
    window: float | None = None,
) -> list[Window]:
    """Subscribers, then publishers, then ``windows`` measurement windows (each ``window`` s, or the config's);
    ``between`` runs after the first."""
    settle(watch, step=0.05 if cfg.quick else 0.1)
    children: list[Child] = []
    sample_files: list[Path] = []
    try:
        for i, count in enumerate(split(subs, cfg.sub_procs(subs))):
            argv = [PY, LOADGEN, "sub", "--kind", kind, "--endpoint", feed, "--count", str(count), "--topic", topic]
            if latency:
                sample_files.append(work / f"samples-{time.monotonic_ns()}-{i}.bin")
                argv += ["--latency", "--samples", str(sample_files[-1])]
            children.append(spawn(argv, f"sub{i}", stdin=True))
        for i in range(cfg.pubs):
            argv = [PY, LOADGEN, "pub", "--kind", kind, "--endpoint", inbox, "--index", str(i), *pub_args]
            children.append(spawn([*argv, "--rate", str(rate / cfg.pubs)], f"pub{i}", stdin=True))
        for child in children:  # publishers wait for GO, so subscribers are all there before the first message
            child.expect(r"^READY", 30)
        start = time.monotonic_ns() + 20_000_000
        spans = []
        t = start + int((cfg.warmup if warmup is None else warmup) * 1e9)
        for w in range(windows):
            spans.append([t, t + int((cfg.window if window is None else window) * 1e9)])
            t = spans[-1][1] + int((cfg.stuck_fill if w == 0 and between else 0.1) * 1e9)
        end = spans[-1][1] + 50_000_000
        go = "GO " + json.dumps({"start": start, "windows": spans, "end": end})
        for child in children:
            child.send(go, check=False)  # one that is gone fails below, at its RESULT
        samples: dict[int, _Sample] = {}
        for w, (a, b) in enumerate(spans):
            for bound in (a, b):
                time.sleep(max(0.0, (bound - time.monotonic_ns()) / 1e9))
                samples[bound] = _sample(watch, children)
            if w == 0 and between:
                between()
        results = [
            json.loads(c.expect(r"^RESULT ", (end - time.monotonic_ns()) / 1e9 + 20).string[7:]) for c in children
        ]
    finally:
        for child in children:
            child.stop()
    out = []
    for w, (a, b) in enumerate(spans):
        window = _window(kind, w, (b - a) / 1e9, results, samples[a], samples[b])
        if latency:
            merged = array.array("q")
            for path in sample_files:
                with contextlib.suppress(OSError), open(path, "rb") as fh:
                    merged.frombytes(fh.read())
            window.latency = percentiles(merged)
            window.lost = sum(r["lost"] for r in results if r["role"] == "sub")
            window.received = sum(sum(r["total"]) for r in results if r["role"] == "sub")
        out.append(window)
    for path in sample_files:
        path.unlink(missing_ok=True)
    return out


def _window(kind: str, w: int, seconds: float, results: list[dict[str, Any]], at_a: _Sample, at_b: _Sample) -> Window:
    """Window ``w`` from the load generators' counters and the /proc samples at its two ends."""
    accepted = errors = 0
    per_sub: list[float] = []
    column = 1 if kind in ACKED_KINDS else 0  # a publisher's counters: [sent, acked, errors]
    for res in results:
        first, last = res["windows"][w]
        if res["role"] == "pub":
            accepted += last[column] - first[column]
            errors += last[2] - first[2]
        else:
            per_sub += [(y - x) / seconds for x, y in zip(first, last, strict=True)]
    # /proc is read by this process, which may wake up late on a busy machine: rates over the time it really read.
    sampled = (at_b.at - at_a.at) / 1e9
    if sampled < seconds / 2:  # both reads came late: the CPU figures of this window are unknown
        print(f"    (CPU read over {sampled:.2f} s of a {seconds:.2f} s window: not counted)", flush=True)
        sampled = math.nan
    loadgen = {pid: (at_b.loadgen[pid] - at_a.loadgen[pid]) / sampled for pid in at_b.loadgen}
    return Window(
        seconds=seconds,
        ingress=accepted / seconds,
        per_sub=per_sub,
        cpu={name: (at_b.cpu[name] - at_a.cpu[name]) * seconds / sampled for name in at_b.cpu},
        rss={name: (at_a.rss[name], at_b.rss[name]) for name in at_b.rss},
        loadgen_cores=sum(loadgen.values()),
        loadgen_top=max(loadgen.values(), default=0.0),
        threads={name: (at_b.threads[name] - at_a.threads.get(name, 0.0)) / sampled for name in at_b.threads},
        machine_cores=(at_b.busy[0] - at_a.busy[0]) / max(1, at_b.busy[1] - at_a.busy[1]) * (os.cpu_count() or 1),
        errors=errors,
    )


# --- what was measured ----------------------------------------------------------------------------


@dataclass
class Record:
    """Every window measured, by (system key, measure name), over the runs."""

    data: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, system: str, measure: str, value: dict[str, Any]) -> None:
        self.data.setdefault(system, {}).setdefault(measure, []).append(value)

    def values(self, system: str, measure: str, key: str) -> list[Any]:
        return [v[key] for v in self.data.get(system, {}).get(measure, []) if v.get(key) is not None]

    def median(self, system: str, measure: str, key: str) -> float | None:
        values = self.values(system, measure, key)
        return statistics.median(values) if values else None


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else v


def summarize(w: Window, name: str, parts: Iterable[str] = ()) -> dict[str, Any]:
    """The figures of one window that the report uses (``name``: the watched process that is the SUT;
    ``parts``: watched processes of it whose CPU per message is reported each, as ``cpu_us:<part>``)."""
    return {
        **{f"cpu_us:{part}": w.cpu_us(part) for part in parts},
        "ingress": w.ingress,
        "sub_median": w.sub_median,
        "sub_min": min(w.per_sub) if w.per_sub else 0.0,
        "delivered": w.delivered,
        "cpu_us": w.cpu_us(name),
        "sut_cores": w.cores(name),
        "rss_mib": w.rss[name][1] / 2**20,
        "loadgen_cores": _finite(w.loadgen_cores),
        "loadgen_top": _finite(w.loadgen_top),
        "machine_cores": w.machine_cores,
        "threads": {k: round(v, 3) for k, v in w.threads.items() if not math.isnan(v) and v >= 0.005},
        "errors": w.errors,
        "lost": w.lost,
        "received": w.received,
        **w.latency,
    }
