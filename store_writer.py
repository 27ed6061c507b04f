"""Commits the broker's sealed batches in a process of its own, so the broker's loop waits neither for the
disk nor for a lock on the interpreter.

With ``--sync normal`` a batch is durable once the loop has put it in the journal (``journal.py``), so
nobody waits for this process: the loop hands batches over at most every ``GROUP_S``, all in one message,
committed in one transaction (a few pages rewritten per hand-over, not per batch, and few checkpoints), and
the answer lets the broker forget their rows and delete journal segments.  Measured at 10,000 msgs/s: a
message and an answer per batch cost the broker and this process 10 µs a message and put this process on
the path of every ack.  With ``--sync full`` the commit (and its fsync) is what makes a batch durable: each
batch is handed over at once, and acks wait for the answer.

Measured first with a writer *thread*: it took the commits off the loop, but the two threads share one
interpreter lock, and the broker with a database file still accepted only 0.6-0.7 of what it did with
``--db :memory:``.  A process has its own: the loop's only cost is one frame per batch.

The broker (``Writer``) binds a PAIR on ipc and starts ``python store_writer.py DB SYNC ENDPOINT``; each
message it sends is one or more batches, a frame each (``store.batch_frame``: msgpack ``[number, rows]``, the
rows as stored), and each frame back says ``[number, error]`` for every batch up to ``number`` (error
``null`` once they are committed).  Batches that queue up meanwhile go in
one transaction (group commit).  After a failure every later batch fails too, without touching the
database, until the broker, having stored them itself, says ``["recover"]``.  ``["execute", SQL]`` runs a
statement on the writer's connection (tests use it to make the disk read-only or full); ``["stop"]`` ends
it once everything before it is answered.  The writer dies with the broker (``PR_SET_PDEATHSIG``): a batch
it had not committed was never acked, and one it had is found in the database by the next broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from lifeline import die_with_parent
from store import Row, Sealed, SqliteStore, batch_frame, read_batch, write

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
#: With a journal (``--sync normal``), batches are handed to the writer at most this often: nobody waits.
GROUP_S = 0.02


class Writer:
    """The broker's end: hands batches to the writer process and learns which were committed."""

    def __init__(self, store: SqliteStore, ctx: zmq.Context) -> None:
        self._dir = tempfile.mkdtemp(prefix="chat-writer-")
        endpoint = f"ipc://{self._dir}/writer"
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # the broker bounds what it hands over in bytes (unstored_bytes)
        self.sock.bind(endpoint)
        here = Path(__file__).resolve().parent
        self.process = subprocess.Popen(
            [sys.executable, str(here / "store_writer.py"), str(store.path), store.sync, endpoint],
            preexec_fn=die_with_parent,
        )
        self._numbers = store.stored_batch
        self._sent: dict[int, Sealed] = {}  # submitted, not yet answered, oldest first
        #: ``--sync normal``: where a batch becomes durable, before this process has it.
        self.journal = store.journal if store.sync == "normal" else None
        self._unsent: list[bytes] = []  # journaled, not yet handed over
        self._handed_at = 0.0

    def submit(self, batch: Sealed) -> bool:
        """Hand ``batch`` over; True if it is durable already (it is in the journal), False if only its
        answer will say so.  Raises ``OSError`` if the journal cannot take it (nothing was handed over)."""
        self._numbers += 1
        batch.number = self._numbers
        frame = batch_frame(batch.number, batch.rows)
        if self.journal is None:
            self._sent[batch.number] = batch
            self._send([frame])
            return False
        self.journal.append(batch.number, frame)
        batch.durable = True
        self._sent[batch.number] = batch
        self._unsent.append(frame)
        now = time.monotonic()
        if now - self._handed_at >= GROUP_S:
            self.hand_over(now)
        return True

    def hand_over(self, now: float = 0.0) -> None:
        """Send the batches journaled since the last hand-over, as one message (the broker's timer calls this
        too, so the last ones do not wait for more)."""
        if self._unsent:
            frames, self._unsent = self._unsent, []
            self._send(frames)
        self._handed_at = now or time.monotonic()

    def _send(self, frames: list[bytes]) -> None:
        """Send, waiting while the writer is alive but not yet (or no longer) reading; if it is gone, every
        batch it had fails (the broker then refuses writes until a commit of its own works)."""
        while True:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
                return
            except zmq.Again:
                if self.process.poll() is not None:
                    self._lost()
                    return
                self.sock.poll(100, zmq.POLLOUT)

    def collect(self) -> None:
        """Read every answer waiting: each batch's ``result`` is set (True, or the error); the journal lets
        go of what SQLite has."""
        while not self.sock.closed and self.sock.poll(0):
            last, error = _decode(self.sock.recv())
            result = True if error is None else sqlite3.OperationalError(error)
            while self._sent and next(iter(self._sent)) <= last:
                self._sent.pop(next(iter(self._sent))).result = result
            if error is None and self.journal is not None:
                self.journal.stored(last)

    def idle(self) -> None:
        """Wait until every batch submitted has its result (the writer is then doing nothing)."""
        self.hand_over()
        while self._sent:
            if not self.sock.poll(100) and self.process.poll() is not None:
                self._lost()
                return
            self.collect()

    def recover(self) -> None:
        """Storage works again (the broker stored what failed): take batches again.  Only once ``idle``."""
        self._send([_encode(["recover"])])

    def execute(self, sql: str) -> None:
        """Run ``sql`` on the writer's connection, once what was submitted before it is done."""
        self._send([_encode(["execute", sql])])
        self.idle()

    def stop(self) -> None:
        self.hand_over()
        self._send([_encode(["stop"])])
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
        """The writer process died: every batch it had not answered failed (those it had committed, SQLite
        says: ``SqliteStore.commit`` skips them)."""
        self._unsent = []
        for batch in self._sent.values():
            batch.result = sqlite3.OperationalError("the store's writer process ended")
        self._sent.clear()


# --- the writer process ----------------------------------------------------------------------------


def serve(path: str, sync: str, endpoint: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    failed = False
    while True:
        messages = [sock.recv_multipart()]
        while sock.poll(0):
            messages.append(sock.recv_multipart())
        batches: list[tuple[int, list[Row]]] = []
        for frames in messages:
            try:
                batches += [read_batch(frame) for frame in frames]
                continue
            except msgspec.ValidationError:  # not batches: an order
                message = _decode(frames[0])
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
            write(db, [row for _, rows in batches for row in rows], batches[-1][0])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = str(exc) or type(exc).__name__
    sock.send(_encode([batches[-1][0], error]))
    return error is not None


def main(argv: list[str] | None = None) -> Any:
    path, sync, endpoint = (sys.argv[1:] if argv is None else argv)[:3]
    # Ctrl-C (and a SIGTERM to the whole group) reaches us too: the broker, stopping, sends us "stop" once
    # everything is handed over; if the broker dies instead, PR_SET_PDEATHSIG kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(path, sync, endpoint)


if __name__ == "__main__":
    main()
