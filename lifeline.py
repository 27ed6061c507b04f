"""Child processes that die with their parent: the store's writer with its broker, a local cluster's NATS
nodes and front doors with ``nats_cluster.py``, a benchmark's processes with the benchmark.

``preexec_fn=die_with_parent`` in ``subprocess.Popen``: the kernel sends the child SIGKILL when the thread
that started it ends, however it ends (kill -9 included), so nothing is left running, holding ports,
files or locks.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in the child between fork and exec: one call, async-signal-safe.  Linux only; elsewhere nothing."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
