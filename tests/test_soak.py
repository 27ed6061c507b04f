"""A short run of the soak script: bots and the broker killed at random, nothing acknowledged lost."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(150)


def soak(tmp_path: Path, *argv: str) -> tuple[str, dict[str, str]]:
    """Run the soak script; its report, and the report's figures by name."""
    result = subprocess.run(
        [sys.executable, "benchmarks/soak.py", *argv, "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    report = result.stdout
    assert result.returncode == 0, report + result.stderr
    return report, {name.strip(): value for name, value in re.findall(r"^(.+?)\s{2,}(\S+)$", report, re.MULTILINE)}


def test_short_soak_loses_and_repeats_nothing(tmp_path: Path) -> None:
    report, counts = soak(tmp_path, "--duration", "8", "--bots", "3", "--rate", "30", "--seed", "3")
    assert "RESULT: PASS" in report
    assert int(counts["acked"]) > 100
    assert int(counts["lost (acked, not logged)"]) == 0 and int(counts["duplicated"]) == 0
    assert int(counts["seq holes"]) == 0
    faults = sum(int(counts.get(k, 0)) for k in ("bot kill -9", "broker kill -9", "broker SIGTERM"))
    assert faults >= 3, "the run injected too few faults to prove anything"


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed (Debian: nats-server)")
def test_short_cluster_soak_loses_and_repeats_nothing_on_any_logger(tmp_path: Path) -> None:
    """Issue 17: three NATS nodes, two front doors, a logger on each; bots, front doors and NATS nodes killed
    (each restarted): every acknowledged message once in both loggers' files, each room in one order."""
    pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")
    report, counts = soak(tmp_path, "--cluster", "2", "--duration", "15", "--bots", "3", "--rate", "30", "--seed", "5")
    assert int(counts["acked"]) > 100 and int(counts["loggers"]) == 2
    for check in ("lost (acked, not logged)", "duplicated", "seq holes", "rooms in another order"):
        assert int(counts[check]) == 0, report
    doors = int(counts.get("broker kill -9", 0)) + int(counts.get("broker SIGTERM", 0))
    assert doors >= 1, "the run killed no front door: it proves too little"
