"""The goals, as a table of data: each names the recorded figures it is computed from, how, and its threshold.

A ``Fig`` is one recorded figure: the median over the runs (or the max, or the sum) of ``key`` in one
system's measure (``tp{main}`` is the throughput level of ``main`` subscribers; see ``scenarios.py``).  A
goal's ``value`` is a figure, the ratio of two, or the best of several; it is compared with ``threshold``
by ``op`` (no op: printed, no target).  Beside it the report prints the absolute figures it came from, and
any other figures the goal names in ``beside``.  Machines differ, so the goals that compare systems are
ratios measured in one run.

Goals whose figures were not measured in a run (``--only``, a peer not installed) are left out of its table
and listed by id under it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.driver import Config, Record
from benchmarks.systems import BY_KEY

ONE, MAIN, MANY = "tp{one}", "tp{main}", "tp{many}"
#: Records that are not a system's: what the relay scenario measured behind the relay.
OTHER_NAMES = {"relay": "via the relay"}


@dataclass(frozen=True)
class Fig:
    """One recorded figure of one system: ``key`` of its ``measure``, the median over the runs unless said."""

    system: str
    measure: str  # with {one}, {main}, {many}: the throughput levels of this run's Config
    key: str
    unit: str  # msgs/s, ms, µs, KiB, MiB, %, count
    agg: str = "median"  # or "max", "sum": for a figure that must hold in every run

    def value(self, cfg: Config, rec: Record) -> float | None:
        measure = self.measure.format(one=cfg.sub_levels[0], main=cfg.sub_levels[1], many=cfg.sub_levels[2])
        if self.agg == "median":
            return rec.median(self.system, measure, self.key)
        values = rec.values(self.system, measure, self.key)
        return (max if self.agg == "max" else sum)(values) if values else None

    def shown(self, cfg: Config, rec: Record) -> str:
        """``<system> <figure>``, e.g. ``broker, default 101k msgs/s``; a count says what it counts."""
        v = self.value(cfg, rec)
        name = BY_KEY[self.system].short if self.system in BY_KEY else OTHER_NAMES.get(self.system, self.system)
        if self.unit == "count":
            return f"{name}: {self.key} {fmt(v, self.unit)}"
        return f"{name} {self.key} {fmt(v, self.unit)}" if self.key.startswith("p") else f"{name} {fmt(v, self.unit)}"


@dataclass(frozen=True)
class Best:
    """The highest of several figures (ours at its best: one message per frame, or batching publishers)."""

    of: tuple[Fig, ...]

    def best(self, cfg: Config, rec: Record) -> Fig | None:
        found = [(v, f) for f in self.of if (v := f.value(cfg, rec)) is not None]
        return max(found, key=lambda pair: pair[0])[1] if found else None

    def value(self, cfg: Config, rec: Record) -> float | None:
        best = self.best(cfg, rec)
        return best.value(cfg, rec) if best else None


@dataclass(frozen=True)
class Ratio:
    num: Fig | Best
    den: Fig

    def value(self, cfg: Config, rec: Record) -> float | None:
        a, b = self.num.value(cfg, rec), self.den.value(cfg, rec)
        return a / b if a is not None and b else None

    def figs(self, cfg: Config, rec: Record) -> list[Fig]:
        """The figures it came from (of a Best, the one that was best)."""
        num = self.num.best(cfg, rec) if isinstance(self.num, Best) else self.num
        return [*([num] if num else []), self.den]


Value = Fig | Ratio

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Goal:
    id: str
    text: str  # with {one} {main} {many} {subs} {latency} {clients}
    value: Value
    op: str | None = None  # None: printed, no target
    threshold: float | None = None
    beside: tuple[Fig, ...] = ()  # more absolute figures to print beside it
    unit: str = "x"  # how the value prints: x (a ratio), or a Fig's unit


def ingress(system: str, level: str) -> Fig:
    return Fig(system, level, "ingress", "msgs/s")


def delivered(system: str, level: str) -> Fig:
    return Fig(system, level, "delivered", "msgs/s")


def lat(system: str, q: str) -> Fig:
    return Fig(system, "latency", q, "ms")


def delivered_vs(id: str, level: str, ref: str, name: str, target: bool = True) -> Goal:
    """Delivered msgs/s at a throughput level: ours at its best over a reference system's."""
    measure = f"tp{{{level}}}"
    ours = Best((delivered("broker", measure), delivered("broker-batch", measure)))
    return Goal(
        id,
        f"delivered msgs/s, {{{level}}} subscribers: ours at best over {name}",
        Ratio(ours, delivered(ref, measure)),
        ">" if target else None,
        1.0 if target else None,
    )


# One goal a row: Goal(id, text, value, op, threshold, beside=..., unit=...).  Ratios print as "0.93x".
# fmt: off
GOALS: tuple[Goal, ...] = (
    # Issue 15: fast where it is durable.  "broker-db" is the default broker (--db FILE --sync normal).
    Goal("15.1", "default broker ingress, share of --db :memory:'s, {one} subscriber",
         Ratio(ingress("broker-db", ONE), ingress("broker", ONE)), ">=", 0.90),
    Goal("15.2", "default broker ingress, share of --db :memory:'s, {main} subscribers",
         Ratio(ingress("broker-db", MAIN), ingress("broker", MAIN)), ">=", 0.90),
    Goal("15.3", "default broker p99 {latency}, {subs} subscribers, over --db :memory:'s",
         Ratio(lat("broker-db", "p99"), lat("broker", "p99")), "<=", 1.25),
    Goal("15.4", "default broker p99.9 {latency}, {subs} subscribers, over --db :memory:'s",
         Ratio(lat("broker-db", "p99.9"), lat("broker", "p99.9")), "<=", 1.5),
    Goal("15.5", "--sync full acked msgs/s over NATS JetStream R1's (file store), {main} subscribers",
         Ratio(ingress("broker-full", MAIN), ingress("jetstream", MAIN)), ">", 1.0),
    Goal("15.6", "--sync full beside --sync normal: acked msgs/s, {main} subscribers (no target)",
         Ratio(ingress("broker-full", MAIN), ingress("broker-db", MAIN)),
         beside=(lat("broker-full", "p99"), lat("broker-db", "p99"))),
    Goal("15.7", "default broker acked msgs/s over NATS JetStream's, {main} subscribers",
         Ratio(ingress("broker-db", MAIN), ingress("jetstream", MAIN)), ">", 1.0),
    # Redis Streams' publishers pipeline 100 XADDs a round trip; ours send 100 msgs a frame (say_many) for the
    # like-for-like row, and the one-per-frame figure is printed beside it.
    Goal("15.8", "default broker acked msgs/s over Redis Streams', {main} subscribers, both publishers batching 100",
         Ratio(ingress("broker-db-batch", MAIN), ingress("redis-streams", MAIN)), ">", 1.0,
         beside=(ingress("broker-db", MAIN),)),
    Goal("15.9", "{clients} idle clients on the default broker: memory each",
         Fig("broker-db", "idle", "per_client_kib", "KiB", "max"), "<=", 60.0, unit="KiB"),
    Goal("15.10", "{clients} idle clients on the default broker: share welcomed",
         Ratio(Fig("broker-db", "idle", "welcomed", "count"), Fig("broker-db", "idle", "clients", "count")), ">=", 1.0),
    Goal("15.11", "a stuck subscriber's cost to the others' msgs/s, default broker",
         Fig("broker-db", "stuck", "cost", "%"), "<", 0.10, unit="%",
         beside=(Fig("broker-db", "stuck", "without", "msgs/s"), Fig("threads", "stuck", "cost", "%"))),
    # Issue 5: the broker beside its baselines (on --db :memory:, as they were set).
    Goal("5.1", "broker :memory: ingress, share of the bare loop's, {one} subscriber",
         Ratio(ingress("broker", ONE), ingress("bare", ONE)), ">=", 0.60),
    Goal("5.2", "broker :memory: ingress, share of the bare loop's, {main} subscribers",
         Ratio(ingress("broker", MAIN), ingress("bare", MAIN)), ">=", 0.60),
    Goal("5.3", "broker :memory: ingress with {main} subscribers, msgs/s",
         ingress("broker", MAIN), ">=", 100_000, unit="msgs/s",
         beside=(ingress("broker-db", MAIN), ingress("proxy", MAIN))),
    Goal("5.4", "CPU per message, {main} subscribers (no target)",
         Fig("broker", MAIN, "cpu_us", "µs"), unit="µs",
         beside=(Fig("broker-db", MAIN, "cpu_us", "µs"), Fig("bare", MAIN, "cpu_us", "µs"),
                 Fig("parse", MAIN, "cpu_us", "µs"))),
    # Ours at its best (one message per frame, or batching publishers) against NATS and the original design;
    # the relay with 64 KiB reads is our own tuning of that design: a reference, no target.
    delivered_vs("5.5a", "main", "nats", "NATS core"),
    delivered_vs("5.5b", "main", "threads-1k", "the original thread relay"),
    delivered_vs("5.5c", "main", "threads", "the relay with 64 KiB reads (a reference, no target)", target=False),
    delivered_vs("5.5d", "many", "nats", "NATS core"),
    delivered_vs("5.5e", "many", "threads-1k", "the original thread relay"),
    delivered_vs("5.5f", "many", "threads", "the relay with 64 KiB reads (a reference, no target)", target=False),
    Goal("5.6", "broker :memory: p99 {latency}, {subs} subscribers, ms",
         lat("broker", "p99"), "<=", 1.0, unit="ms", beside=(lat("bare", "p99"),)),
    Goal("5.7", "default broker RSS growth with a stuck subscriber, MiB",
         Fig("broker-db", "stuck", "rss_growth_mib", "MiB", "max"), "<", 32.0, unit="MiB",
         beside=(Fig("threads", "stuck", "rss_growth_mib", "MiB"),)),
    Goal("5.8", "default broker RSS growth during the stuck subscriber's 2nd window, MiB",
         Fig("broker-db", "stuck", "rss_growth_in_window_mib", "MiB", "max"), "<", 8.0, unit="MiB"),
    Goal("5.9", "messages lost behind an XSUB/XPUB relay on the feed",
         Fig("relay", "relay", "lost", "count", "sum"), "==", 0, unit="count",
         beside=(Fig("relay", "relay", "received", "count", "sum"), Fig("relay", "relay", "p99", "ms"),
                 lat("broker", "p99"))),
)
# fmt: on


def fmt(v: float | None, unit: str) -> str:
    """A figure as the report prints it."""
    if v is None:
        return "—"
    if unit == "msgs/s":
        return rate(v) + " msgs/s"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "%":
        return f"{v:.0%}"
    if unit == "count":
        return f"{v:,.0f}"
    if unit == "ms":
        return f"{v:.2f} ms"
    return f"{v:.1f} {unit}"


def latency_words(cfg: Config) -> str:
    """Where latency was measured: at the offered rate, or (the smoke run) under full load."""
    return "as fast as accepted (smoke run)" if cfg.quick else f"at {rate(cfg.latency_rate)} msgs/s"


def rate(v: float | None) -> str:
    """msgs/s, short: 132k, 9.8k, 950."""
    if v is None:
        return "—"
    return f"{v / 1000:.0f}k" if v >= 9_950 else f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def _figs(goal: Goal, cfg: Config, rec: Record) -> list[Fig]:
    """The absolute figures a goal's value came from, then those it names beside it."""
    value = goal.value
    return [*(value.figs(cfg, rec) if isinstance(value, Ratio) else []), *goal.beside]


def evaluate(cfg: Config, rec: Record) -> tuple[list[dict[str, str]], list[str]]:
    """The table's rows (id, goal, target, measured, figures, status), and the ids of goals not measured."""
    words = {
        "one": cfg.sub_levels[0],
        "main": cfg.sub_levels[1],
        "many": cfg.sub_levels[2],
        "subs": cfg.subs,
        "latency": latency_words(cfg),
        "clients": f"{cfg.idle_clients:,}",
    }
    rows, missing = [], []
    for goal in GOALS:
        v = goal.value.value(cfg, rec)
        if v is None:
            missing.append(goal.id)
            continue
        ok = None if goal.op is None or goal.threshold is None else OPS[goal.op](v, goal.threshold)
        rows.append(
            {
                "id": goal.id,
                "goal": goal.text.format(**words),
                "target": "—" if goal.op is None else f"{goal.op} {fmt(goal.threshold, goal.unit)}",
                "measured": fmt(v, goal.unit),
                "figures": "; ".join(f.shown(cfg, rec) for f in _figs(goal, cfg, rec)) or "—",
                "status": "—" if ok is None else "PASS" if ok else "FAIL",
            }
        )
    return rows, missing
