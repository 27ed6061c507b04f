"""A quick run of the idle-CPU benchmark, so the script never rots.  No CPU figure is asserted (machines are
noisy, and 3 s windows are coarse): only that it completes and prints a measured or skipped row for each
program."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(90)

PROGRAMS = ("console", "window", "logger", "gateway")
ROW = re.compile(r"^\| (\w+)\s+\|\s+(\S+) \|\s+(\S+) \|\s+2% \| (.+?)\s*\|$", re.MULTILINE)


def test_quick_idle_cpu_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/idle_cpu.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    report = result.stdout
    assert result.returncode in (0, 1), report + result.stderr  # 1: a figure over the limit, not judged here
    assert "Traceback" not in result.stderr, result.stderr
    rows = {name: (up, down, verdict) for name, up, down, verdict in ROW.findall(report)}
    assert set(rows) == set(PROGRAMS), report
    for name, (up, down, verdict) in rows.items():
        if verdict.startswith("skipped"):  # a missing dependency (no Xvfb, say): said, not measured
            continue
        assert verdict in ("ok", "OVER"), f"{name}: {verdict}\n{report}"
        assert up.endswith("%") and down.endswith("%"), f"{name} was not measured\n{report}"
    assert re.search(r"^RESULT: (PASS|FAIL)", report, re.MULTILINE), report
