"""The report: the tables (every system; the durable ones side by side; the scenarios; the goals), written
to ``results.md`` and ``results.json``, and the plot, ``bench.png``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.driver import Config, Record
from benchmarks.goals import evaluate, latency_words, rate
from benchmarks.systems import BROKER_ARGS, System

#: Below this share of a core the system under test was not what ran out (see ``limit_mark``).
SUT_FULL = 0.85
#: Above this many busy cores (of 2) a latency window ran on a nearly full machine (see ``busy_mark``).
BUSY_CORES = 1.7


def num(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def limit_mark(rec: Record, key: str, measure: str) -> str:
    """† where the load generators ran out first: the SUT got less than 0.85 of a core while the machine's
    cores were busy (or one load-generator process had a whole core); ‡ where nothing was short of CPU: the
    figure is bound by waiting (disk flushes, or the publishers' window of unacked messages)."""
    sut = rec.median(key, measure, "sut_cores")
    if sut is None or sut >= SUT_FULL:
        return ""
    busy, top = rec.median(key, measure, "machine_cores"), rec.median(key, measure, "loadgen_top")
    return " †" if (busy or 0) >= 1.6 or (top or 0) >= 0.9 else " ‡"


def busy_mark(rec: Record, key: str, measure: str = "latency") -> str:
    """§ where the machine's cores were nearly full during a latency window (the load generators' share
    included): the tail percentiles there include waiting in the load generators, not only in the system."""
    busy = rec.median(key, measure, "machine_cores")
    return " §" if busy is not None and busy >= BUSY_CORES else ""


def main_table(cfg: Config, found: list[System], rec: Record) -> list[str]:
    one, main, many = cfg.sub_levels
    rows = [
        f"| system | ingress msgs/s, {one} sub | ingress msgs/s, {main} subs | per-sub delivered msgs/s, {main} subs "
        f"| total delivered msgs/s, {many} subs | CPU µs per msg, {main} subs | SUT / load-gen cores, {main} subs "
        f"| p50 / p99 ms {latency_words(cfg)}, {cfg.subs} subs | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def bound(key: str, measure: str) -> str:
        value = rec.median(key, measure, "ingress")
        return rate(value) + (limit_mark(rec, key, measure) if value else "")

    for s in found:
        med = lambda measure, key, s=s: rec.median(s.key, measure, key)  # noqa: E731
        p50, p99 = med("latency", "p50"), med("latency", "p99")
        lat = "—" if p50 is None or p99 is None else f"{p50:.2f} / {p99:.2f}{busy_mark(rec, s.key)}"
        cores = med(f"tp{main}", "sut_cores"), med(f"tp{main}", "loadgen_cores")
        rows.append(
            f"| {s.label} | {bound(s.key, f'tp{one}')} | {bound(s.key, f'tp{main}')} "
            f"| {rate(med(f'tp{main}', 'sub_median'))} | {rate(med(f'tp{many}', 'delivered'))} "
            f"| {num(med(f'tp{main}', 'cpu_us'))} | {num(cores[0], '.2f')} / {num(cores[1], '.2f')} | {lat} "
            f"| {num(med(f'tp{main}', 'rss_mib') or med('latency', 'rss_mib'), '.0f')} |"
        )
    return rows


def durable_table(cfg: Config, found: list[System], rec: Record) -> list[str]:
    """Ours (default, --sync full, and :memory: as the throwaway reference) beside the durable peers."""
    durable = [s for s in found if s.durable]
    if not durable:
        return []
    one, main = cfg.sub_levels[0], cfg.sub_levels[1]
    rows = [
        f"| durable systems, same run | acked msgs/s, {one} sub | acked msgs/s, {main} subs "
        f"| CPU µs per msg, {main} subs (all its processes) | SUT / load-gen cores, {main} subs "
        f"| p50 / p99 / p99.9 ms {latency_words(cfg)}, {cfg.subs} subs | lost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in durable:
        med = lambda measure, key, s=s: rec.median(s.key, measure, key)  # noqa: E731
        acked = [
            rate(v) + limit_mark(rec, s.key, m) if (v := med(m, "ingress")) is not None else "—"
            for m in (f"tp{one}", f"tp{main}")
        ]
        qs = [med("latency", q) for q in ("p50", "p99", "p99.9")]
        lat = "—" if None in qs else " / ".join(f"{q:.2f}" for q in qs) + busy_mark(rec, s.key)  # type: ignore[str-format]
        lost = rec.values(s.key, "latency", "lost")
        rows.append(
            f"| {s.label} | {acked[0]} | {acked[1]} | {num(med(f'tp{main}', 'cpu_us'))} "
            f"| {num(med(f'tp{main}', 'sut_cores'), '.2f')} / {num(med(f'tp{main}', 'loadgen_cores'), '.2f')} "
            f"| {lat} | {sum(lost) if lost else '—'} |"
        )
    rows += ["", "What each keeps, by the time it acks:"]
    rows += [f"- {s.short}: {s.durable}" for s in durable]
    rows += _parts_lines(rec, durable, f"tp{main}", main)
    return rows


def _parts_lines(rec: Record, systems: list[System], measure: str, subs: int) -> list[str]:
    """Where a system of several processes spends its CPU (a cluster: each front door, each NATS node)."""
    lines = []
    for s in systems:
        runs = rec.data.get(s.key, {}).get(measure, [])
        parts = [key for key in (runs[0] if runs else {}) if key.startswith("cpu_us:")]
        if parts:
            each = ", ".join(f"{key[len('cpu_us:') :]} {num(rec.median(s.key, measure, key))}" for key in parts)
            lines.append(f"- {s.short}, CPU µs per acked message by process ({subs} subs): {each}")
    return ["", "Where the CPU goes:", *lines] if lines else []


def scenario_table(cfg: Config, rec: Record) -> list[str]:
    rows = ["| scenario | figure | our broker | reference |", "|---|---|---|---|"]
    b, t = "broker-db", "threads"
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

        where = "stuck subscriber (default broker)"
        rows.append(
            f"| {where} | the others' msgs/s per sub, without -> with it | {stuck(b)} | thread relay: {stuck(t)} |"
        )
        rows.append(f"| {where} | RSS of the server, before -> after | {mem(b)} | thread relay: {mem(t)} |")
        rows.append(f"| {where} | server CPU per message, without -> with it | {cpu(b)} | thread relay: {cpu(t)} |")
    for key, name in (("broker-db", "default broker"), ("broker", "broker :memory:")):
        if not rec.data.get(key, {}).get("idle"):
            continue
        idle = rec.data[key]["idle"][-1]
        where = f"{idle['clients']:,} idle clients, {name}"
        rows.append(
            f"| {where} | RSS before -> after, per client | {idle['rss_before_mib']:.0f} -> "
            f"{idle['rss_after_mib']:.0f} MiB, **{idle['per_client_kib']:.1f} KiB** per client | "
            f"{idle['welcomed']:,} welcomed in {idle['connect_seconds']:.1f} s |"
        )
        split = ", ".join(f"{k} {v:.2f}" for k, v in idle.get("threads", {}).items() if v >= 0.01)
        rows.append(
            f"| {where} | broker CPU while they ping (1/s each), by thread | "
            f"{idle['broker_cores']:.2f} cores ({split or 'idle'}) | — |"
        )
    if rec.data.get("relay", {}).get("relay"):
        m = lambda k: rec.median("relay", "relay", k)  # noqa: E731
        d = lambda k: rec.median("broker", "latency", k)  # noqa: E731
        where = "XSUB/XPUB relay on the feed (broker :memory:)"
        rows.append(
            f"| {where} | per-sub msgs/s, {cfg.subs} subs: via relay (direct) | "
            f"{rate(m('sub_median'))} | direct: {rate(rec.median('broker', f'tp{cfg.sub_levels[1]}', 'sub_median'))} |"
        )
        rows.append(
            f"| {where} | p50 / p99 ms at {rate(cfg.latency_rate)} msgs/s via relay (direct) | "
            f"{num(m('p50'), '.2f')} / {num(m('p99'), '.2f')} | direct: {num(d('p50'), '.2f')} / "
            f"{num(d('p99'), '.2f')} |"
        )
        lost = sum(v["lost"] or 0 for v in rec.data["relay"]["relay"])
        got = sum(v["received"] for v in rec.data["relay"]["relay"])
        rows.append(
            f"| {where} | relay CPU µs per msg; messages lost behind it | {num(m('relay_cpu_us'))} µs "
            f"({num(m('relay_cores'), '.2f')} cores); lost {lost} of {got:,} | — |"
        )
    return rows


def goal_table(cfg: Config, rec: Record) -> tuple[list[dict[str, str]], list[str]]:
    rows, missing = evaluate(cfg, rec)
    lines = [
        "| id | goal | target | measured | absolute figures (same run) | status |",
        "|---|---|---|---|---|---|",
        *[
            f"| {g['id']} | {g['goal']} | {g['target']} | {g['measured']} | {g['figures']} | {g['status']} |"
            for g in rows
        ],
    ]
    if missing:
        lines += ["", f"Not measured in this run: {', '.join(missing)}."]
    return rows, lines


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


def report(
    cfg: Config, found: list[System], notes: list[str], rec: Record, out: Path, elapsed: float, when: str = ""
) -> str:
    """The whole report as markdown; written with the raw figures to ``out``.  ``when``: the run's date
    (now, unless the report is redone from a results.json)."""
    goal_rows, goal_lines = goal_table(cfg, rec)
    when = when or time.strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Benchmark results",
        "",
        f"{when}, {machine()}. "
        f"{'QUICK SMOKE RUN: tiny counts, the figures mean nothing. ' if cfg.quick else ''}"
        f"Medians of {cfg.runs} run(s), {cfg.window:g} s windows ({cfg.latency_window:g} s for latency) after "
        f"{cfg.warmup:g} s of load; "
        f"{cfg.pubs} publisher process(es), subscribers spread over 1-4 processes, all on this machine "
        f"with the system under test (SUT): the load generators compete with it for the same cores. "
        f"Took {elapsed:.0f} s.",
        "",
        *durable_table(cfg, found, rec),
        "",
        *main_table(cfg, found, rec),
        "",
        *scenario_table(cfg, rec),
        "",
        *goal_lines,
        "",
        "† the system under test used less than 0.85 of a core while the load generators, on the same two "
        "cores, had the rest (or one of them a whole core): they ran out first, so the figure is a floor "
        "(Redis, NATS, zmq.proxy and the relay could do more on a machine of their own). "
        "‡ nothing was short of CPU there: the figure is bound by waiting (disk flushes, or the publishers' "
        "window of unacked messages). "
        f"§ the machine's two cores were at least {BUSY_CORES / 2:.0%} busy during the latency window (the load "
        "generators' share included): its tail percentiles include waiting in the load generators, not only "
        "in the system under test.",
        "",
        "How to read it: *ingress* (*acked*) is what the system accepted per second: acks where there are acks "
        "(our broker, JetStream, Redis Streams' XADD replies), sends otherwise, publishers going as fast as they "
        "are let; *delivered* is counted at the subscribers; *CPU µs per msg* is the user+system CPU of the SUT "
        "(all its threads and processes, children included) over the window divided by the messages it "
        "accepted; latency is from a publisher's send to a subscriber's receive (CLOCK_MONOTONIC, "
        "system-wide), at a fixed offered rate.",
        *[f"- {note}" for note in notes],
        *[f"- ERROR {e}" for e in rec.errors],
    ]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    saved = {
        "config": asdict(cfg),
        "systems": {s.key: s.label for s in found},
        "notes": notes,
        "measurements": rec.data,
        "goals": goal_rows,
        "errors": rec.errors,
        "seconds": elapsed,
        "when": when,
        "broker_args": BROKER_ARGS,
    }
    (out / "results.json").write_text(json.dumps(saved, indent=1))
    return text


# --- the plot -----------------------------------------------------------------------------------------


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
    names = [s.short for s in found]
    x = list(range(len(found)))
    fig, axes = plt.subplots(1, 3, figsize=(21, 6.6))
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
    ax.set_title("Ingress (acked, where there are acks), publishers as fast as let (log scale)")
    ax.set_ylabel("msgs/s accepted")
    ax = axes[1]
    shown = [1.0]
    for j, key in enumerate(("p50", "p99", "p99.9")):
        values = [rec.median(s.key, "latency", key) or 0 for s in found]
        ax.bar([i + (j - 1) * width for i in x], values, width, label=key)
        shown += [v for v in values if v > 0]
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="goal 5.6: p99 <= 1 ms (:memory:)")
    ax.set_yscale("log")
    ax.set_yticks(
        [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200) if min(shown) / 2 <= t <= max(shown) * 2]
    )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"End-to-end latency {latency_words(cfg)}, {cfg.subs} subscribers (log scale)")
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
    ax.bar(
        x, other, 0.6, bottom=main_thread, color="tab:olive", label="libzmq I/O thread, other processes; Redis, NATS"
    )
    for i, (a, b) in enumerate(zip(main_thread, other, strict=True)):
        if a + b:
            ax.annotate(f"{a + b:.1f}", (i, a + b), ha="center", va="bottom", fontsize=8)
    ax.set_title(f"CPU of the system under test per message, {cfg.sub_levels[1]} subscribers")
    ax.set_ylabel("µs per message")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8, rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"zmq-chat broker beside its baselines and peers: {machine().split(', Linux')[0]}, loopback, load generators "
        f"on the same cores, medians of {cfg.runs}" + (" (QUICK SMOKE RUN: meaningless figures)" if cfg.quick else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"
