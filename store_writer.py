"""Commits the broker's sealed batches in a process of its own, so the broker's loop waits neither for the
disk nor for a lock on the interpreter.

The loop puts every batch in the journal (``journal.py``: one ``write``) and tells this process, over an ipc
PAIR, the number of the last one; this process reads them from there (``journal.Tail``).  With ``--sync
normal`` a batch is durable once the journal has it, so nobody waits for this process: the loop tells it at
most every ``GROUP_S``, and what it reads then is indexed in one transaction (``store.index``: a row says
where a run of a room's events is in the journal, which keeps them); the answer lets the broker forget the
batches' rows.  With ``--sync full`` the commit (the journal's fdatasync, then SQLite's fsync) is what makes
a batch durable: it is told of each batch at once, and acks wait for the answer.
(A journaled batch a crash kept from SQLite is stored by the next broker; with ``--sync full`` it was never
acked, and a resend of it is recognised.)

Measured: a message and an answer per batch cost the broker and this process 10 µs a message at 10,000
msgs/s and put this process on the path of every ack; batches sent over the socket cost the broker's I/O
thread and this process three copies of their bytes, where the journal's page cache costs one.  A writer
*thread* took the commits off the loop, but the two threads share one interpreter lock, and the broker with
a database file still accepted only 0.6-0.7 of what it did with ``--db :memory:``.

The broker (``Writer``) binds the PAIR and starts ``python store_writer.py DB SYNC ENDPOINT``.  It sends
``["journaled", N]``: every batch up to ``N`` is in the journal (each record's payload a
``store.batch_frame``, msgpack ``[number, rows]``, the rows as stored).  Each answer says ``[N, error]`` for
every batch up to ``N`` (error ``null`` once they are committed); what queues up meanwhile goes in one
transaction (group commit).  After a failure every later batch fails too, without touching the database,
until the broker, having stored them itself, says ``["recover"]``.  ``["execute", SQL]`` runs a statement on
the writer's connection (tests use it to make the disk read-only or full); ``["stop"]`` ends it once
everything before it is answered.  The writer dies with the broker (``PR_SET_PDEATHSIG``): a batch it had
not committed was never acked (``--sync full``) or is in the journal (``normal``), and one it had is found
in the database by the next broker.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq

from journal import RECORD_KEPT, Tail
from lifeline import die_with_parent
from store import Sealed, SqliteStore, batch_frame, index, located, stored_batch
from transport import batch_scheduled, may_set_policies

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
#: With a journal (``--sync normal``), batches are handed to the writer at most this often: nobody waits.
GROUP_S = 0.02
#: The writer is behind (``Yielding``) while the bytes of batches it has not answered for are at this share
#: of ``--max-unstored-bytes``, where the broker stops reading requests.
BEHIND_SHARE = 0.5
#: Kept up for this long, the writer runs on idle CPU time only again (``Yielding``); twice as long after each
#: time it fell behind, up to the most.
IDLE_AFTER_S = 10.0
IDLE_AFTER_MAX_S = 1280.0


class Writer:
    """The broker's end: hands batches to the writer process and learns which were committed."""

    def __init__(self, store: SqliteStore, ctx: zmq.Context, max_unstored_bytes: int = 16 << 20) -> None:
        self._dir = tempfile.mkdtemp(prefix="chat-writer-")
        endpoint = f"ipc://{self._dir}/writer"
        here = Path(__file__).resolve().parent
        self.process = subprocess.Popen(
            [sys.executable, str(here / "store_writer.py"), str(store.path), store.sync, endpoint],
            preexec_fn=_batch_child if store.sync == "normal" else die_with_parent,
        )
        # The writer binds, this end connects: the pipe exists from now on, so orders queue in it while the
        # writer starts (or hangs before it can bind: a stuck disk); a PAIR that binds blocks its sender
        # until a peer connects, and the loop with it.
        self.sock = ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # the broker bounds what it hands over in bytes (unstored_bytes)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 10)  # the writer binds within its start: no 100 ms wait
        self.sock.connect(endpoint)
        self.sock.send(_encode(["hello"]))  # its arrival says we are connected: the socket's file can go
        self._numbers = store.stored_batch
        self._sent: dict[int, Sealed] = {}  # submitted, not yet answered, oldest first
        assert store.journal is not None, "a writer process needs a database file"
        self.journal = store.journal
        #: ``--sync normal``: a batch is durable once the journal has it, before this process does.
        self._journal_is_durable = store.sync == "normal"
        self._journaled = self._told = store.stored_batch  # the last batch journaled; the last one told of
        self._handed_at = 0.0
        self._frame = bytearray()  # each batch is encoded here, for the journal
        self._store = store
        self._behind_bytes = int(max_unstored_bytes * BEHIND_SHARE)
        self._yielding = Yielding(store.sync == "normal" and can_leave_idle(), self._set_policy)

    def submit(self, batch: Sealed) -> bool:
        """Put ``batch`` in the journal and tell the writer of it (now, or with the next ones); True if it is
        durable already (``--sync normal``), False if only its answer will say so.  Raises ``OSError`` if the
        journal cannot take it (its number is used, and nothing was handed over)."""
        self._numbers += 1
        batch.number = self._numbers
        self.journal.append(batch.number, batch_frame(batch.number, batch.rows, self._frame))
        if len(self._frame) > RECORD_KEPT:
            self._frame = bytearray()  # a rare big batch does not keep its memory
        self._journaled = batch.number
        batch.durable = self._journal_is_durable
        self._sent[batch.number] = batch
        now = time.monotonic()
        if not batch.durable or now - self._handed_at >= GROUP_S:
            self.hand_over(now)
        return batch.durable

    def hand_over(self, now: float = 0.0, *, awaited: bool = False) -> None:
        """Tell the writer of the batches journaled since the last hand-over (the broker's timer calls this
        too, so the last ones do not wait for more).  ``awaited``: the caller waits for its answers (a stop, a
        failure, reads paused), so the writer is behind whatever it holds: under ``SCHED_IDLE`` on a busy
        machine it would take seconds to answer, or to exit."""
        if self._told < self._journaled:
            self._told = self._journaled
            self._send([_encode(["journaled", self._told])])
        self._handed_at = now or time.monotonic()
        behind = awaited or self._store.unstored_bytes >= self._behind_bytes
        self._yielding.told(behind, self._handed_at)

    def _set_policy(self, idle: bool) -> None:
        """The writer's main thread (its pid) under SCHED_IDLE or SCHED_BATCH, set from here: a writer starved
        of the CPU could not raise itself before the broker stops reading."""
        with contextlib.suppress(OSError):  # gone: ``_check_writer`` finds out
            os.sched_setscheduler(self.process.pid, os.SCHED_IDLE if idle else os.SCHED_BATCH, os.sched_param(0))

    def _send(self, frames: list[bytes]) -> None:
        """Send, waiting while the writer is alive but not yet (or no longer) reading; if it is gone, every
        batch it had fails (the broker then refuses writes until a commit of its own works)."""
        if self.sock.closed:  # abandoned: it is gone, and its batches failed then
            return
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
        """Read every answer waiting: each batch's ``result`` is set (True, or the error)."""
        while not self.sock.closed and self.sock.poll(0):
            last, error = _decode(self.sock.recv())
            result = True if error is None else sqlite3.OperationalError(error)
            while self._sent and next(iter(self._sent)) <= last:
                self._sent.pop(next(iter(self._sent))).result = result

    def idle(self) -> None:
        """Wait until every batch submitted has its result (the writer is then doing nothing)."""
        self.hand_over(awaited=True)
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

    def stop(self, timeout: float = 10.0) -> bool:
        """Tell the writer to commit what it was told of and exit; False if it did not in ``timeout`` seconds
        (then it is killed: what it had not committed is in the journal, for the next start)."""
        self.hand_over(awaited=True)
        self._send([_encode(["stop"])])
        exited = True
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            exited = False
        self.sock.close(linger=0)  # the writer is gone: nothing sent now could reach it
        shutil.rmtree(self._dir, ignore_errors=True)  # the writer's socket file, if it was killed
        return exited

    def abandon(self) -> None:
        """The process is gone: fail what it had not answered, and let the socket go."""
        self._lost()
        self.sock.close(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)  # the writer's socket file, if it was killed

    def _lost(self) -> None:
        """The writer process died: every batch it had not answered failed (those it had committed, SQLite
        says: ``SqliteStore.commit`` skips them)."""
        for batch in self._sent.values():
            batch.result = sqlite3.OperationalError("the store's writer process ended")
        self._sent.clear()
        self._told = self._journaled  # nothing journaled is told to it any more: the broker stores them itself


# --- the writer process ----------------------------------------------------------------------------


def serve(path: str, sync: str, endpoint: str) -> None:
    ctx = zmq.Context.instance()
    if sync == "normal":
        # Its I/O thread under SCHED_BATCH, said outright: inherited, it would be under SCHED_IDLE if the broker
        # put this process there before the thread began (a slow start on a busy machine).
        batch_scheduled(ctx)
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    sock.recv()  # the broker's hello: connected for good, so from now on nothing is left in /tmp if either is killed
    shutil.rmtree(Path(endpoint.removeprefix("ipc://")).parent, ignore_errors=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    tail = Tail(Path(path), stored_batch(db))
    failed = False
    while True:
        orders = [_decode(sock.recv())]
        while sock.poll(0):
            orders.append(_decode(sock.recv()))
        journaled = 0  # the last batch journaled, of the orders read so far: committed before the next order
        for order in orders:
            if order[0] == "journaled":
                journaled = order[1]
                continue
            failed = _commit(db, tail, journaled, failed, sock, sync)
            journaled = 0
            if order[0] == "stop":
                tail.close()
                db.close()
                sock.close(linger=1000)
                return
            if order[0] == "recover":
                failed = False
            elif order[0] == "execute":
                db.execute(order[1])
        failed = _commit(db, tail, journaled, failed, sock, sync)


def _commit(
    db: sqlite3.Connection, tail: Tail, journaled: int, failed: bool, sock: zmq.Socket, sync: str = "normal"
) -> bool:
    """Read the batches journaled up to ``journaled`` and index them in one transaction (with ``--sync full``
    the journal flushed to the disk first); answer.  Returns whether the writer is now failed."""
    if journaled <= tail.last:
        return failed
    error: str | None = "an earlier batch could not be stored" if failed else None
    try:  # each record is decoded before the next is read into the same buffer
        rows = [row for _, frame in tail.read(journaled) for row in located(frame, tail.place)]
        if sync == "full" and error is None:
            tail.sync()
    except (OSError, ValueError) as exc:  # the broker stores them itself, from memory
        tail.skip(journaled)  # so none of them is read again, and stored twice, after ``recover``
        rows, error = [], error or f"cannot read the journal: {exc}"
    if error is None:
        try:
            db.execute("BEGIN")
            index(db, rows, journaled)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = str(exc) or type(exc).__name__
    sock.send(_encode([journaled, error]))
    return error is not None


def main(argv: list[str] | None = None) -> Any:
    path, sync, endpoint = (sys.argv[1:] if argv is None else argv)[:3]
    # Ctrl-C (and a SIGTERM to the whole group) reaches us too: the broker, stopping, sends us "stop" once
    # everything is handed over; if the broker dies instead, PR_SET_PDEATHSIG kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(path, sync, endpoint)


def _batch_child() -> None:
    """Between fork and exec, with ``--sync normal``: the writer, which nobody waits for, and every thread it
    makes run under ``SCHED_BATCH`` (woken, they do not preempt the loop); ``Yielding`` may then set its main
    thread idle."""
    die_with_parent()
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


class Yielding:
    """With ``--sync normal`` nobody waits for the writer: while it keeps up, its main thread runs under
    ``SCHED_IDLE`` (Linux), on CPU time nothing else wants; once it is behind (what it has not answered for
    is at ``BEHIND_SHARE`` of ``--max-unstored-bytes``), under ``SCHED_BATCH`` again, a fair share, until it
    has kept up for ``IDLE_AFTER_S``, twice as long after each time it fell behind (up to
    ``IDLE_AFTER_MAX_S``): a machine that stays busy starves it less and less often.  The broker decides
    (``Writer._set_policy``): a starved writer would raise itself only when it next got the CPU.  Whoever
    waits for its answers (a stop, a failed batch, reads paused) counts it as behind too: beside one busy
    process, an idle writer took 10 s to exit.

    Measured (``bench.py``): with the writer always under ``SCHED_BATCH`` the default broker accepted
    0.87x-0.88x what it did with ``--db :memory:``; idle while it keeps up, 0.89x-0.93x, the publishers and
    the loop no longer waiting for it.  Always idle, three busy processes on the machine starved it: SQLite
    fell ``--max-unstored-bytes`` behind and the broker read nothing for seconds; raising itself, the writer
    did so 1.7 s late, the broker stopped once; raised by the broker, it went on without a pause.  Counted
    as behind when 0.1 s of hand-overs queued up instead, it left ``SCHED_IDLE`` in every latency run.  At
    half of ``--max-unstored-bytes`` rather than a quarter, it left it less often with ten subscribers at full
    load: 153k msgs/s against 150k (medians of 6 interleaved runs); attack 21 (three busy processes) held
    alike, the broker stopping once in each run of either.
    Leaving ``SCHED_IDLE`` takes ``CAP_SYS_NICE`` or ``RLIMIT_NICE`` >= 20 (root has them); without either
    the writer never enters it (``can_rise`` False) and keeps ``SCHED_BATCH``.  Sans-I/O: ``set_policy``
    does the system call."""

    def __init__(self, can_rise: bool, set_policy: Callable[[bool], None]) -> None:
        self.can_rise = can_rise
        self._set_policy = set_policy  # True: SCHED_IDLE; False: SCHED_BATCH
        self.idle = False
        self._behind_at = -math.inf
        self.idle_after = IDLE_AFTER_S / 2  # doubled each time it is found behind, the first time included

    def told(self, behind: bool, now: float) -> None:
        """The broker's last hand-over said whether the writer is ``behind``."""
        if not self.can_rise:
            return
        if behind:
            if now - self._behind_at >= self.idle_after:  # it was idle since: it fell behind anew
                self.idle_after = min(self.idle_after * 2, IDLE_AFTER_MAX_S)
            self._behind_at = now
        idle = now - self._behind_at >= self.idle_after
        if idle != self.idle:
            self._set_policy(idle)
            self.idle = idle


def can_leave_idle() -> bool:
    """Whether this process may go back from ``SCHED_IDLE`` to ``SCHED_BATCH`` (``Yielding``)."""
    return hasattr(os, "SCHED_IDLE") and may_set_policies(os.SCHED_IDLE, os.SCHED_BATCH)


if __name__ == "__main__":
    main()
