"""The broker beside its baselines and peers, on this machine, in a few minutes: throughput, CPU, latency,
failure modes, and the goals they are held to.

    python benchmarks/bench.py                  # everything, medians of 3 runs (about eight minutes)
    python benchmarks/bench.py --quick          # a smoke run with tiny counts (the test suite does this)
    python benchmarks/bench.py --only latency,stuck --runs 1

Systems under test (``systems.py``), each a process of its own on ephemeral loopback ports: our broker
(``--db FILE`` with ``--sync normal``, the default, and ``--sync full``; ``--db :memory:``, the throwaway
mode), the bare Python loop and the same loop with the protocol's parsing (``baselines.py``), ``zmq.proxy``
in C, the thread-per-client relay of the original design (``thread_relay.py``), and, when their servers
and clients are installed (``apt-get install redis-server nats-server``, ``pip install -e '.[bench]'``),
Redis and NATS pub/sub and the durable peers, NATS JetStream and Redis Streams.  The load comes from
publisher and subscriber processes (``loadgen.py``, driven by ``driver.py``) on the same two cores, which
is said in the report.

Scenarios (``scenarios.py``, ``--only``): ``throughput`` (1, 10, 100 subscribers, publishers as fast as
accepted), ``latency`` (10k msgs/s offered to 10 subscribers), ``stuck`` (a subscriber that never reads),
``idle`` (10,000 connected idle clients), ``relay`` (an XSUB/XPUB proxy chained on the feed).  The goals
are a table of data in ``goals.py``; the report and the plot are made by ``report.py``; processes are
started, watched and stopped by ``procs.py``, which the test suite shares.

Writes ``results.md``, ``results.json`` and ``bench.png`` (when matplotlib is importable) to ``--out``.
Exit status 1 only when a measurement broke (a process failed); goals that are not met are reported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import scenarios  # noqa: E402
from benchmarks.driver import QUICK, Config, Record  # noqa: E402
from benchmarks.procs import Child, raise_fd_limit  # noqa: E402
from benchmarks.report import plot, report  # noqa: E402
from benchmarks.systems import BROKER_ARGS, BY_KEY, System, available, broker  # noqa: E402


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def replot(saved_path: Path, out: Path) -> int:
    """Only the tables and the plot again, from a results.json."""
    saved = json.loads(saved_path.read_text())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()})
    found = [BY_KEY.get(key) or System(key, label, key, "", "", broker()) for key, label in saved["systems"].items()]
    rec = Record(saved["measurements"], saved["errors"])
    print(report(cfg, found, saved["notes"], rec, out, saved.get("seconds", 0.0), saved.get("when", "")))
    print(plot(cfg, found, rec, out / "bench.png"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny counts (seconds, not minutes)")
    parser.add_argument("--runs", type=int, help="runs of each measurement; the report shows medians (default: 3)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results go (default: %(default)s)")
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all of {','.join(scenarios.SCENARIOS)})")
    parser.add_argument("--systems", help="comma-separated system keys (default: all found)")
    parser.add_argument(
        "--broker-args", default="", help="extra options for every broker started, e.g. '--heartbeat 10'"
    )
    parser.add_argument(
        "--pub-args", default="", help="extra options for every publisher (loadgen.py), e.g. '--in-flight 64'"
    )
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redo the table and plot from a results.json")
    args = parser.parse_args(argv)
    if args.replot:
        return replot(args.replot, args.out)
    BROKER_ARGS[:] = shlex.split(args.broker_args)
    cfg = QUICK if args.quick else Config()
    if args.runs:
        cfg = replace(cfg, runs=args.runs)
    only = set(args.only.split(",")) if args.only else set(scenarios.SCENARIOS)
    if only - set(scenarios.SCENARIOS):
        parser.error(
            f"unknown scenario(s) {sorted(only - set(scenarios.SCENARIOS))}; choose from {scenarios.SCENARIOS}"
        )
    signal.signal(signal.SIGTERM, _interrupt)
    found, notes = available(quick=cfg.quick)
    if args.systems:
        keys = set(args.systems.split(","))
        found = [s for s in found if s.key in keys]
    if args.pub_args:
        found = [replace(s, pub_args=(*s.pub_args, *shlex.split(args.pub_args))) for s in found]
    if "idle" in only and raise_fd_limit() < 2 * cfg.idle_clients // cfg.idle_procs + 256:
        notes.append(f"idle: skipped, the fd limit ({raise_fd_limit()}) is too low for {cfg.idle_clients} clients")
        only.discard("idle")
    for note in notes:
        print(note)
    rec = Record()
    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    started = time.monotonic()
    try:
        scenarios.throughput_latency(cfg, work, found, only, rec)
        if "stuck" in only:
            scenarios.stuck(cfg, work, found, rec)
        if "relay" in only:
            direct_known = "latency" in only and any(s.key == "broker" for s in found)
            scenarios.relay(cfg, work, rec, direct_known)
        if "idle" in only:
            scenarios.idle(cfg, work, rec)
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
