"""A smoke run of the benchmark (tiny counts, about 20 s), so the script never rots.  No timing figure is
asserted: benchmarks are not pass/fail, only whether every measurement could be made.  The peers (Redis,
NATS, JetStream, Redis Streams) take part where their servers and clients are installed (.ci/run installs
them), and are skipped, with a note, where they are not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(120)

ROWS = (
    "our broker, --db FILE --sync normal (the default)",
    "our broker, --db FILE --sync full",
    "our broker, --db :memory: (throwaway: keeps nothing)",
    "bare Python loop ROUTER->PUB, no parsing",
    "zmq.proxy ROUTER->PUB in C (the limit)",
    "our broker (:memory:), publishers batch (<= 100 msgs per frame)",
    "thread-per-client TCP relay, recv(1024) (original design)",
)
DURABLE_PEERS = ("jetstream", "redis-streams")


def test_quick_benchmark_runs_and_writes_its_tables(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for row in ROWS:
        assert f"| {row} |" in table, row
    for heading in ("| durable systems, same run |", "| id | goal | target | measured |"):
        assert heading in table, heading
    for scenario in ("stuck subscriber", "idle clients", "XSUB/XPUB relay on the feed"):
        assert scenario in table, scenario
    data = json.loads((tmp_path / "results.json").read_text())
    assert not data["errors"]
    measured = data["measurements"]
    for key in ("broker", "broker-db", "broker-full", *(k for k in DURABLE_PEERS if k in data["systems"])):
        latency = measured[key]["latency"][0]
        assert latency["received"] > 0 and latency["lost"] == 0, key
        assert latency["ingress"] > 0, f"{key}: nothing acked"
    idle = measured["broker-db"]["idle"][0]
    assert idle["welcomed"] == idle["clients"]
    for key, label in data["systems"].items():  # the peers appear only where installed
        assert f"| {label} |" in table, key
    for key in DURABLE_PEERS:  # installed, or said why not
        assert key in data["systems"] or any(note.startswith(f"{key}: skipped") for note in data["notes"]), key
    assert {g["id"] for g in data["goals"]} >= {"15.2", "15.3", "15.9", "15.11"}


def test_the_report_says_where_a_clusters_cpu_goes_by_process() -> None:
    """The cluster's rows (not in the smoke run: they take a minute) get CPU per message per front door and per
    NATS node beside their whole-system figure."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.driver import Record
    from benchmarks.report import _parts_lines
    from benchmarks.systems import CATALOGUE

    (cluster,) = [s for s in CATALOGUE if s.key == "cluster-2"]
    rec = Record()
    for cpu in (100.0, 300.0, 200.0):
        rec.add("cluster-2", "tp10", {"cpu_us": 2 * cpu, "cpu_us:NATS node 1": cpu, "cpu_us:front door 1": cpu / 2})
    (line,) = [x for x in _parts_lines(rec, [cluster], "tp10", 10) if x.startswith("- ")]
    assert "NATS node 1 200" in line and "front door 1 100" in line  # medians of the runs
