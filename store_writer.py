"""Commits the broker's sealed batches in a process of its own, so the broker's loop waits neither for the
disk nor for a lock on the interpreter.

Measured first with a writer *thread*: it took the commits off the loop, but the two threads share one
interpreter lock, and the broker with a database file still accepted only 0.6-0.7 of what it did with
``--db :memory:``.  A process has its own: the loop's only cost is one frame per batch.

The broker (``Writer``) binds a PAIR on ipc and starts ``python store_writer.py DB SYNC ENDPOINT``; each
frame it sends is a batch, msgpack ``[number, [[room, seq, payload], ...]]``, and each frame back says
``[number, error]`` (error ``null`` once the batch is committed).  Batches that queue up meanwhile go in
one transaction (group commit).  After a failure every later batch fails too, without touching the
database, until the broker, having stored them itself, says ``["recover"]``.  ``["execute", SQL]`` runs a
statement on the writer's connection (tests use it to make the disk read-only or full); ``["stop"]`` ends
it once everything before it is answered.  The writer dies with the broker (``PR_SET_PDEATHSIG``): a batch
it had not committed was never acked, and one it had is found in the database by the next broker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import zmq

from store import Row, Sealed, SqliteStore, write

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class Writer:
    """The broker's end: hands batches to the writer process and learns which were committed."""

    def __init__(self, store: SqliteStore, ctx: zmq.Context) -> None:
        self._dir = tempfile.mkdtemp(prefix="chat-writer-")
        endpoint = f"ipc://{self._dir}/writer"
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.bind(endpoint)
        here = Path(__file__).resolve().parent
        self.process = subprocess.Popen(
            [sys.executable, str(here / "store_writer.py"), str(store.path), store.sync, endpoint],
            preexec_fn=_die_with_parent,  # one call, async-signal-safe
        )
        self._numbers = 0
        self._sent: dict[int, Sealed] = {}  # submitted, not yet answered

    def submit(self, batch: Sealed) -> None:
        self._numbers += 1
        self._sent[self._numbers] = batch
        self._send([self._numbers, batch.rows])

    def _send(self, message: list[Any]) -> None:
        """Send, waiting while the writer is alive but not yet (or no longer) reading; if it is gone, every
        batch it had fails (the broker then refuses writes until a commit of its own works)."""
        frame = _encode(message)
        while True:
            try:
                self.sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                if self.process.poll() is not None:
                    self._lost()
                    return
                self.sock.poll(100, zmq.POLLOUT)

    def collect(self) -> None:
        """Read every answer waiting: each batch's ``result`` is set (True, or the error)."""
        while self.sock.poll(0):
            number, error = _decode(self.sock.recv())
            batch = self._sent.pop(number)
            batch.result = True if error is None else sqlite3.OperationalError(error)

    def idle(self) -> None:
        """Wait until every batch submitted has its result (the writer is then doing nothing)."""
        while self._sent:
            if not self.sock.poll(100) and self.process.poll() is not None:
                self._lost()
                return
            self.collect()

    def recover(self) -> None:
        """Storage works again (the broker stored what failed): take batches again.  Only once ``idle``."""
        self._send(["recover"])

    def execute(self, sql: str) -> None:
        """Run ``sql`` on the writer's connection, once what was submitted before it is done."""
        self._send(["execute", sql])
        self.idle()

    def stop(self) -> None:
        self._send(["stop"])
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.sock.close()
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def abandon(self) -> None:
        """The process is gone: fail what it had not answered, and let the socket go."""
        self._lost()
        self.sock.close(linger=0)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def _lost(self) -> None:
        """The writer process died: every batch it had not answered failed."""
        for batch in self._sent.values():
            batch.result = sqlite3.OperationalError("the store's writer process ended")
        self._sent.clear()


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills the writer when the broker dies, however it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


# --- the writer process ----------------------------------------------------------------------------


def serve(path: str, sync: str, endpoint: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.connect(endpoint)
    failed = False
    while True:
        messages = [_decode(sock.recv())]
        while sock.poll(0):
            messages.append(_decode(sock.recv()))
        batches: list[tuple[int, list[Row]]] = []
        for message in messages:
            if type(message[0]) is int:
                batches.append((message[0], [tuple(row) for row in message[1]]))
                continue
            failed = _commit(db, batches, failed, sock)
            batches = []
            if message[0] == "stop":
                db.close()
                sock.close(linger=1000)
                return
            if message[0] == "recover":
                failed = False
            elif message[0] == "execute":
                db.execute(message[1])
        failed = _commit(db, batches, failed, sock)


def _commit(db: sqlite3.Connection, batches: list[tuple[int, list[Row]]], failed: bool, sock: zmq.Socket) -> bool:
    """One transaction for ``batches``; answer each.  Returns whether the writer is now failed."""
    if not batches:
        return failed
    error: str | None = "an earlier batch could not be stored" if failed else None
    if not failed:
        try:
            db.execute("BEGIN")
            write(db, [row for _, rows in batches for row in rows])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = str(exc) or type(exc).__name__
    for number, _ in batches:
        sock.send(_encode([number, error]))
    return error is not None


def main(argv: list[str] | None = None) -> Any:
    path, sync, endpoint = (sys.argv[1:] if argv is None else argv)[:3]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the broker stops us
    serve(path, sync, endpoint)


if __name__ == "__main__":
    main()
