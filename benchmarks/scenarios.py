"""The scenarios: what is measured on which system, each recorded under (system key, measure).

- ``throughput`` (measures ``tp1``, ``tp10``, ``tp100``): 1, 10 and 100 subscribers, publishers as fast as
  they are let (as fast as acked, where there are acks);
- ``latency`` (``latency``): 10k msgs/s offered to 10 subscribers, end-to-end percentiles;
- ``stuck`` (``stuck``): a subscriber that never reads joins between two windows;
- ``idle`` (``idle``): 10,000 connected clients that only ping;
- ``relay`` (``relay``): an XSUB/XPUB proxy chained on the broker's feed.

With ``--quick`` each system gets one drive, as fast as it is let, whose latency is recorded too: a smoke
run that touches every code path in seconds, with figures that mean nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.driver import FAILURES, HERE, LOADGEN, PY, Config, Record, drive, failure, spawn, split, summarize
from benchmarks.procs import Child, cpu_seconds, rss_bytes, thread_cpu
from benchmarks.systems import BY_KEY, Server, System, running

SCENARIOS = ("throughput", "latency", "stuck", "idle", "relay")
#: The broker the stuck and idle scenarios load: the default one, as people run it.
DEFAULT = "broker-db"


def throughput_latency(cfg: Config, work: Path, found: list[System], only: set[str], rec: Record) -> None:
    """Per run and system: one process, the throughput levels (as fast as accepted), then the paced latency run."""
    for run in range(cfg.runs):
        for system in found:
            levels = [lv for lv in cfg.levels if lv in system.sub_levels] if "throughput" in only else []
            if cfg.quick and "throughput" in only:
                levels = levels or [system.sub_levels[0]]  # the smoke run starts every system once
            do_latency = "latency" in only and system.latency
            if not levels and not do_latency:
                continue
            print(f"run {run + 1}/{cfg.runs}  {system.label}", flush=True)
            try:
                with running(system, work) as server:
                    watch = {"sut": server.pid, **server.parts}
                    args = (cfg, work, system.kind, system.topic, server.inbox, server.feed, watch)
                    for level in levels:
                        subs = cfg.level_subs(level)
                        smoke = cfg.quick and do_latency  # one drive serves both
                        (w,) = drive(*args, subs, latency=smoke, pub_args=system.pub_args)
                        rec.add(system.key, f"tp{subs}", summarize(w, "sut", server.parts))
                        if smoke:
                            rec.add(system.key, "latency", summarize(w, "sut"))
                        print(
                            f"    {subs:>3} subs: {w.ingress:>9,.0f} msgs/s in, {w.sub_median:>9,.0f}/s per sub, "
                            f"{w.cpu_us('sut') or 0:5.1f} µs CPU/msg, SUT {w.cores('sut') or 0:.2f} cores, "
                            f"load gen {w.loadgen_cores:.2f} cores",
                            flush=True,
                        )
                    if do_latency and not (cfg.quick and levels):
                        (w,) = drive(
                            *args,
                            cfg.subs,
                            rate=cfg.latency_rate,
                            latency=True,
                            pub_args=system.pub_args,
                            window=cfg.latency_window,
                        )
                        rec.add(system.key, "latency", summarize(w, "sut"))
                        lat = w.latency
                        print(
                            f"    latency at {cfg.latency_rate:,.0f}/s: p50 {lat.get('p50', 0):.3f} ms, "
                            f"p99 {lat.get('p99', 0):.3f} ms, p99.9 {lat.get('p99.9', 0):.3f} ms, lost {w.lost}",
                            flush=True,
                        )
            except FAILURES as exc:
                rec.errors.append(f"{system.key}: {failure(exc)}")
                print(f"    FAILED: {failure(exc)}", flush=True)


def stuck(cfg: Config, work: Path, found: list[System], rec: Record) -> None:
    """Window A: normal subscribers; then one more that never reads; window B: the same subscribers again.
    On the default broker, and on the thread relay as the reference (not in the smoke run)."""
    keys = (DEFAULT,) if cfg.quick else (DEFAULT, "threads")
    for run in range(cfg.runs):
        for system in [BY_KEY[key] for key in keys if key in {s.key for s in found}]:
            print(f"run {run + 1}/{cfg.runs}  stuck subscriber: {system.label}", flush=True)
            try:
                with running(system, work) as server:
                    _stuck_once(cfg, work, system, server, rec)
            except FAILURES as exc:
                rec.errors.append(f"stuck {system.key}: {failure(exc)}")
                print(f"    FAILED: {failure(exc)}", flush=True)


def _stuck_once(cfg: Config, work: Path, system: System, server: Server, rec: Record) -> None:
    stuck_readers: list[Child] = []

    def add_stuck() -> None:
        argv = [PY, LOADGEN, "stuck", "--kind", system.kind, "--endpoint", server.feed]
        argv += ["--topic", system.topic, "--max-seconds", "120"]
        stuck_readers.append(spawn(argv, "stuck", stdin=True))  # it lives until its stdin closes
        stuck_readers[0].expect(r"^READY", 20)

    try:
        args = (cfg, work, system.kind, system.topic, server.inbox, server.feed, {"sut": server.pid}, cfg.subs)
        a, b = drive(*args, windows=2, between=add_stuck, warmup=cfg.stuck_warmup)
    finally:
        for child in stuck_readers:
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


def idle(cfg: Config, work: Path, rec: Record) -> None:
    """Clients that said hello and only ping: the broker's RSS before and after, per client.  On the default
    broker (the goal's) and on ``:memory:`` (not in the smoke run)."""
    for key in (DEFAULT,) if cfg.quick else (DEFAULT, "broker"):
        system = BY_KEY[key]
        print(f"idle clients: {cfg.idle_clients:,} sessions on {system.label}", flush=True)
        try:
            with running(system, work) as server:
                _idle_once(cfg, system, server, rec)
        except FAILURES as exc:
            rec.errors.append(f"idle {key}: {failure(exc)}")
            print(f"    FAILED: {failure(exc)}", flush=True)


def _idle_once(cfg: Config, system: System, server: Server, rec: Record) -> None:
    clients: list[Child] = []
    try:
        time.sleep(0.5 if not cfg.quick else 0.1)
        before = rss_bytes(server.pid)
        started = time.monotonic()
        for i, count in enumerate(split(cfg.idle_clients, cfg.idle_procs)):
            argv = [PY, LOADGEN, "idle", "--endpoint", server.inbox, "--count", str(count), "--index", str(i)]
            argv += ["--connect-seconds", str(cfg.idle_connect), "--max-seconds", str(cfg.idle_connect + 60)]
            clients.append(spawn(argv, f"idle{i}", stdin=True))
        ready = [c.expect(r"^READY ", cfg.idle_connect + 30) for c in clients]
        welcomed = sum(json.loads(r.string[6:])["welcomed"] for r in ready)
        connect_s = time.monotonic() - started
        time.sleep(cfg.idle_settle)  # every client has pinged (once a second) at least once since, but for --quick
        cpu_a, threads_a, t_a = cpu_seconds(server.pid) or 0.0, thread_cpu(server.pid), time.monotonic()
        time.sleep(cfg.idle_settle)
        took = time.monotonic() - t_a
        cores = ((cpu_seconds(server.pid) or 0.0) - cpu_a) / took
        threads = {k: round((v - threads_a.get(k, 0.0)) / took, 3) for k, v in thread_cpu(server.pid).items()}
        after = rss_bytes(server.pid)
        for child in clients:
            child.send("STOP", check=False)
        pongs = sum(json.loads(c.expect(r"^RESULT ", 30).string[7:])["pongs"] for c in clients)
    finally:
        for child in clients:
            child.stop()
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
    rec.add(system.key, "idle", value)
    print(
        f"    {welcomed:,} welcomed in {connect_s:.1f} s; RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
        f"= {value['per_client_kib']:.1f} KiB per client; broker {cores:.2f} cores for their pings",
        flush=True,
    )


def relay(cfg: Config, work: Path, rec: Record, direct_known: bool) -> None:
    """Subscribers behind an XSUB/XPUB zmq.proxy chained on the broker's feed: rate, latency, completeness."""
    for run in range(cfg.runs):
        print(f"run {run + 1}/{cfg.runs}  relay: XSUB/XPUB zmq.proxy on the broker's feed", flush=True)
        try:
            with running(BY_KEY["broker"], work) as server:
                argv = [
                    PY,
                    str(HERE / "baselines.py"),
                    "relay",
                    "--upstream",
                    server.feed,
                    "--pub",
                    "tcp://127.0.0.1:*",
                ]
                with spawn(argv, "relay") as proxy:
                    feed = proxy.expect(r"feed\s+\(PUB\):\s*(\S+)", 20).group(1)
                    _relay_once(cfg, work, server, proxy, feed, rec, direct_known)
        except FAILURES as exc:
            rec.errors.append(f"relay: {failure(exc)}")
            print(f"    FAILED: {failure(exc)}", flush=True)


def _relay_once(
    cfg: Config, work: Path, server: Server, proxy: Child, feed: str, rec: Record, direct_known: bool
) -> None:
    watch = {"relay": proxy.pid, "broker": server.pid}
    args = (cfg, work, "broker", "room/general/", server.inbox)
    tp = None if cfg.quick else drive(*args, feed, watch, cfg.subs)[0]  # the smoke run: latency only
    (lat,) = drive(*args, feed, watch, cfg.subs, rate=cfg.latency_rate, latency=True, window=cfg.latency_window)
    shown = tp or lat
    value = {
        "sub_median": shown.sub_median,
        "ingress": shown.ingress,
        "relay_cpu_us": shown.cpu_us("relay"),
        "relay_cores": shown.cores("relay"),
        "relay_rss_mib": shown.rss["relay"][1] / 2**20,
        "lost": lat.lost,
        "received": lat.received,
        **lat.latency,
    }
    if not direct_known:  # the same figures without the relay, from this broker
        (dl,) = drive(
            *args, server.feed, watch, cfg.subs, rate=cfg.latency_rate, latency=True, window=cfg.latency_window
        )
        rec.add("broker", "latency", summarize(dl, "broker"))
    rec.add("relay", "relay", value)
    print(
        f"    via relay: {shown.sub_median:,.0f}/s per sub, relay {value['relay_cpu_us'] or 0:.1f} µs "
        f"CPU/msg; latency p50 {lat.latency.get('p50', 0):.3f} ms p99 {lat.latency.get('p99', 0):.3f} ms; "
        f"lost {lat.lost} of {lat.received}",
        flush=True,
    )
