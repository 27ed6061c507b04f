"""A short socket-level fuzz run against a real broker: it stays up, bounded, and serving."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(120)


def test_the_broker_survives_a_fuzz_run() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/fuzz.py", "--duration", "5", "--peers", "6", "--seed", "11"],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    report = result.stdout
    assert result.returncode == 0, report + result.stderr
    assert "broker alive        True" in report and "clients chat after  True" in report
    assert int(re.search(r"replies\s+(\d+)", report).group(1)) > 1000  # the broker really was answering
