"""A smoke run of the benchmark (tiny counts), so the script never rots.  No timing figure is asserted:
benchmarks are not pass/fail, only whether every measurement could be made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(120)

ROWS = (
    "our broker (--db :memory:)",
    "our broker (--db FILE, SQLite)",
    "bare Python loop ROUTER->PUB, no parsing",
    "zmq.proxy ROUTER->PUB in C (the limit)",
    "our broker, publishers batch (<= 100 msgs per frame)",
    "thread-per-client TCP relay, recv(1024) (original design)",
    "thread-per-client TCP relay, 64 KiB reads",
)


def test_quick_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
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
    for scenario in ("stuck subscriber", "idle clients", "XSUB/XPUB relay on the feed"):
        assert scenario in table, scenario
    assert "| goal | measured |" in table
    data = json.loads((tmp_path / "results.json").read_text())
    assert not data["errors"]
    broker = data["measurements"]["broker"]
    assert broker["latency"][0]["received"] > 0 and broker["latency"][0]["lost"] == 0
    assert broker["idle"][0]["welcomed"] == broker["idle"][0]["clients"]
    for key, label in data["systems"].items():  # Redis and NATS appear only where installed
        assert f"| {label} |" in table, key
