"""A short run of the adversary suite (benchmarks/attack.py --quick): it runs to the end, prints its table,
and every attack holds.  Ping latency is printed by the suite but not judged in --quick mode."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(170)

_spec = importlib.util.spec_from_file_location("attack", ROOT / "benchmarks" / "attack.py")
assert _spec is not None and _spec.loader is not None
attack = sys.modules["attack"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attack)
KEYS = [key for key, _ in attack.ATTACKS]

ROW = re.compile(r"^\| (\S+) +\| (held|broke|error) +\|(.*)\|$", re.MULTILINE)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    workdir: Path = tmp_path_factory.mktemp("attack")
    result = subprocess.run(
        [sys.executable, "benchmarks/attack.py", "--quick", "--no-fail", "--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=160,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    return result.stdout


def test_the_suite_runs_every_attack_and_prints_the_table(report: str) -> None:
    assert re.search(r"^\| attack +\| result +\| broker MiB +\| gateway MiB +\| ping p99 ms +\| lost +\| dup ", report,
                     re.MULTILINE), report  # fmt: skip
    assert [match.group(1) for match in ROW.finditer(report) if match.group(1) in KEYS] == KEYS, report
    assert re.search(r"^RESULT: \d+ held, \d+ broke, \d+ error$", report, re.MULTILINE), report
    assert re.search(r"^honest user: \d+ sent, [1-9]\d* acked", report, re.MULTILINE), report


@pytest.mark.parametrize("key", KEYS)
def test_the_attack_held(report: str, key: str) -> None:
    rows = {match.group(1): (match.group(2), match.group(3).strip()) for match in ROW.finditer(report)}
    status, notes = rows[key]
    assert status == "held", f"{key} {status}: {notes}"
