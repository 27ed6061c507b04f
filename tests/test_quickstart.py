"""The README's quick start: ``./run``, the script that makes a venv, installs the project and runs a program.

What is cheap to check, without creating a venv or calling pip: its usage and errors, the message
for a Python that cannot make a venv (Debian without python3-venv), and when it installs, with a
stand-in venv whose ``python`` only writes down how it was called.  That the script really works
with Debian's /usr/bin/python3 is tried by hand (``PYTHON=/usr/bin/python3 ./run broker``) and by
CI, which runs ``./run test`` on a fresh clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.procs import ROOT

RUN = ROOT / "run"
#: The environment without the script's own variables: CI runs the suite with EXTRAS set.
INHERITED = {name: value for name, value in os.environ.items() if name not in ("PYTHON", "VENV", "EXTRAS")}

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("sh") is None, reason="./run is a POSIX shell script"
)


def run(*args: str, timeout: float = 10, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**INHERITED, **env},
        cwd=ROOT,
        check=False,
    )


def test_the_script_is_executable_and_posix_sh() -> None:
    assert os.access(RUN, os.X_OK)
    assert RUN.read_text().startswith("#!/bin/sh\n")


def test_help_lists_the_programs_and_the_system_package() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for program in ("broker", "client", "gui", "web", "logger", "relay", "keys", "test", "python"):
        assert f"\n  {program} " in result.stdout
    assert "python3-venv" in result.stdout
    assert "PYTHON" in result.stdout and "EXTRAS" in result.stdout


def test_no_program_prints_the_usage_and_exits_2() -> None:
    result = run()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ./run PROGRAM")


def test_an_unknown_program_is_named_and_nothing_is_created(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = run("brokr", "--host", "x", VENV=str(venv))
    assert result.returncode == 2
    assert "unknown program 'brokr'" in result.stderr
    assert "broker" in result.stderr  # the programs it could have been
    assert not venv.exists()


def test_a_python_without_venv_support_gets_the_debian_package_named(tmp_path: Path) -> None:
    # Debian's and Ubuntu's python3 without python3-venv: ``import ensurepip`` fails.
    fake = tmp_path / "python3"
    fake.write_text(
        f'#!/bin/sh\ncase "$*" in *ensurepip*) exit 1 ;; esac\nexec "{sys.executable}" "$@"\n', encoding="utf-8"
    )
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    result = run("broker", VENV=str(venv), PYTHON=str(fake))
    assert result.returncode == 1
    assert "sudo apt install python3-venv" in result.stderr
    assert not venv.exists()  # no half-made venv without pip left behind


def test_a_missing_python_is_named(tmp_path: Path) -> None:
    result = run("broker", VENV=str(tmp_path / "venv"), PYTHON=str(tmp_path / "no-such-python"))
    assert result.returncode == 1
    assert "no-such-python" in result.stderr


def fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose python writes down its directory and arguments, one line per call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$PWD" "$*" >> "{log}"\n', encoding="utf-8")
    python.chmod(0o755)
    return venv, log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_it_installs_once_then_only_when_pyproject_or_the_extras_change(tmp_path: Path) -> None:
    venv, log = fake_venv(tmp_path)
    root = str(ROOT.resolve())

    assert run("broker", "--db", ":memory:", VENV=str(venv)).returncode == 0
    assert calls(log) == [f"{root}|-m pip install --quiet -e .", f"{root}|{root}/broker.py --db :memory:"]

    assert run("broker", VENV=str(venv)).returncode == 0  # installed: straight to the program
    assert calls(log) == [f"{root}|{root}/broker.py"]

    assert run("test", "-x", "tests/sansio", VENV=str(venv)).returncode == 0  # the tests need [test]
    assert calls(log) == [f"{root}|-m pip install --quiet -e .[test]", f"{root}|-m pytest -x tests/sansio"]

    assert run("client", "--name", "alice", VENV=str(venv)).returncode == 0  # [test] is kept: no reinstall
    assert calls(log) == [f"{root}|{root}/client.py --name alice"]

    assert run("python", "-V", VENV=str(venv), EXTRAS="bench").returncode == 0  # CI's extra
    assert calls(log) == [f"{root}|-m pip install --quiet -e .[bench,test]", f"{root}|-V"]

    stamp = venv / "zmq-chat-installed.toml"  # the pyproject.toml last installed, as if it had changed since
    stamp.write_text(stamp.read_text() + "\n# changed\n", encoding="utf-8")
    assert run("web", VENV=str(venv)).returncode == 0
    assert calls(log) == [f"{root}|-m pip install --quiet -e .[bench,test]", f"{root}|{root}/web.py"]


def test_a_failed_install_is_tried_again_next_time(tmp_path: Path) -> None:
    venv, log = fake_venv(tmp_path)
    python = venv / "bin" / "python"
    python.write_text(python.read_text() + 'case "$*" in *pip*) exit 1 ;; esac\n', encoding="utf-8")
    result = run("broker", VENV=str(venv))
    assert result.returncode == 1
    assert "installing zmq-chat into" in result.stderr and "failed" in result.stderr
    assert len(calls(log)) == 1  # pip only; the broker was not started
    result = run("broker", VENV=str(venv))
    assert result.returncode == 1
    assert len(calls(log)) == 1  # pip again


def test_the_readme_and_ci_use_the_script() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "```sh\n./run broker\n```" in quick_start
    assert "```sh\n./run test\n```" in quick_start
    assert "python3-venv" in quick_start and "python3-tk" in quick_start
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "\n./run test\n" in ci  # CI runs the README's test command, as it stands
