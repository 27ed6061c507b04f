"""Where room history and seq counters live: SQLite on disk, or memory for throwaway runs.

The chat core appends every published event here and the broker commits once
per batch of messages its loop handled (group commit); acks and feed events go
out only after that commit, so whatever anyone was told exists is on disk, and
a restarted broker never reuses a seq.

Durability: with ``--sync normal`` (the default) a batch is durable once it is
in the journal (``journal.py``: one ``write`` to an append-only file, in the OS
page cache when it returns), which survives the broker process dying at any
moment (kill -9); the store's writer process indexes it in SQLite (WAL,
``synchronous=NORMAL``) later, and a starting store first indexes what the
journal has that SQLite does not.  Neither survives the machine losing power
before the OS writes its cache back; ``--sync full`` fsyncs the journal and
every commit for that (the commit is then what makes a batch durable), at the
price of disk flushes per batch.

Where the events' bytes are: a journaled batch's stay in the journal, and its
rows in SQLite say where (``log_segment``, ``log_offset``, ``log_size``: a
row's events, joined, in the batch's record; ``log_crc``: their CRC-32), the
payload left empty.  Rows the broker stores itself (no writer: tests; or
batches a failed writer left) hold their payload.  So the database is the file
and its ``-log.N`` segments.
"""

from __future__ import annotations

import bisect
import fcntl
import heapq
import itertools
import logging
import os
import sqlite3
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import msgspec

from journal import HEADER, Journal, Place, Records, segments, sync_segment

log = logging.getLogger("chat-broker")

#: The meta key of the number of the last journaled batch that SQLite has (``journal.py``).
STORED_BATCH = "journal"
#: 5: a row may say where its events are in the journal instead of holding them (``log_*``).
#: 4: each room's newest topic event is kept in ``topics`` too.  3: a row holds a run of a room's consecutive
#: events (``first`` to ``seq``), not one event.  2 and 3 are read and upgraded in place (2's rows are runs of
#: one, ``first`` NULL; neither had topics), as 4 is.
SCHEMA_VERSION = 5
#: What 5 added to a row: where its events are in the journal (``journal.Place``), and their CRC-32.
JOURNAL_COLUMNS = ("log_segment", "log_offset", "log_size", "log_crc")
#: Largest run of events stored in one row: what one history read may have to load to find one event.
RUN_BYTES = 64 * 1024
SYNC_LEVELS = ("normal", "full")


class MemoryStore:
    """Keeps nothing: every room starts at seq 0 and nothing survives the process (``--db :memory:``)."""

    persistent = False

    def __init__(self) -> None:
        #: Names this history; a new one (every run, here) tells clients that seqs started over.
        self.history_id = os.urandom(8).hex()

    def rooms(self) -> list[tuple[str, int]]:
        return []

    def newest(self, room: str, after: int, max_bytes: int) -> list[bytes]:
        return []

    def events(self, room: str, after: int) -> Iterator[bytes]:
        return iter(())

    def first_pending(self, room: str) -> int | None:
        return None

    def seal(self) -> Sealed | None:
        return None

    def topic(self, room: str) -> bytes | None:
        return None

    def last_seq(self, room: str) -> int:
        return 0  # nothing is kept: a room forgotten at rest starts over, as after a restart

    def append(self, room: str, seq: int, payload: bytes) -> None:
        pass

    def read(self, room: str, after: int, limit: int, max_bytes: int = 1 << 62) -> list[bytes]:
        return []

    pending = 0

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class StoreInUse(RuntimeError):
    """Another process (another broker) has the database."""


class SqliteStore:
    """Room events in one SQLite table; rows are buffered and written in one transaction per ``commit``.

    One broker per file: two would hand out the same seqs.  ``PATH.lock`` holds an exclusive lock
    (``lockf``, released by the kernel however the holder dies) and the holder's pid, for the message.
    """

    persistent = True

    def __init__(self, path: str | Path, sync: str = "normal") -> None:
        if sync not in SYNC_LEVELS:
            raise ValueError(f"sync must be one of {SYNC_LEVELS}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite's own in-memory database (tests use it) has no file to share, so nothing to lock.
        self._lock = _lock(self.path.with_name(self.path.name + ".lock")) if str(path) != ":memory:" else -1
        try:
            self._open(sync)
        except BaseException:
            if self._lock >= 0:
                os.close(self._lock)
            raise

    def _open(self, sync: str) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={sync.upper()}")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            -- One B-tree keyed by (room, seq): the only order anything is read in.  A row is a run of the
            -- room's consecutive events, first..seq, their payloads joined by newlines (an encoded event has
            -- none); first is NULL for a run of one.  Runs are what a commit brings: one row, not one per event.
            -- A journaled run's payload is empty: it is the log_size bytes at log_offset in the journal's
            -- segment log_segment (journal.py), whose CRC-32 is log_crc.
            CREATE TABLE IF NOT EXISTS events (
                room TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, first INTEGER,
                log_segment INTEGER, log_offset INTEGER, log_size INTEGER, log_crc INTEGER,
                PRIMARY KEY (room, seq)
            ) WITHOUT ROWID;
            -- Each room's newest topic event (also in events): found without reading the room's history.
            CREATE TABLE IF NOT EXISTS topics (room TEXT PRIMARY KEY, seq INTEGER NOT NULL, payload BLOB NOT NULL);
            """
        )
        self.db.execute("BEGIN IMMEDIATE")  # a kill in the middle of an upgrade leaves the file as it was
        try:
            self._upgrade()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        #: Names this history for as long as the file lives; a new file means seqs started over.
        self.history_id: str = self.db.execute("SELECT value FROM meta WHERE key = 'history_id'").fetchone()[0]
        self.db.execute("BEGIN IMMEDIATE")  # can we write at all (a read-only file, folder or disk)?  Say so now.
        self.db.execute("ROLLBACK")
        self.sync = sync
        #: Appended, not yet sealed: each room's run of consecutive events being added to, and the runs a gap
        #: in a room's seqs ended (rare), in the order they were begun.
        self._growing: dict[str, _Growing] = {}
        self._ended: list[tuple[str, _Growing]] = []
        #: Who holds a growing run's list (``run``): told when the rows are taken, so nobody appends to it after.
        self._holders: list[RunHolder] = []
        #: Sealed batches the writer is committing, oldest first, until the broker hears they are done.
        self.sealed: deque[Sealed] = deque()
        #: Batches the writer failed or was lost with, oldest first: ``commit`` stores those SQLite lacks.
        self.failed: list[Sealed] = []
        self.unstored_bytes = 0  # the events' bytes in ``sealed``
        #: The number of the last journaled batch SQLite has: the writer numbers batches on from it.
        self.stored_batch = self._stored_batch()
        self.journal = Journal(self.path) if self.file is not None else None
        self.records = Records(self.path) if self.journal is not None else None
        if self.journal is not None:
            self._take_in_journal(self.journal)

    def _upgrade(self) -> None:
        """A new file: its schema and history id (and a deleted database's journal set aside).  An older
        schema: upgraded in place (``SCHEMA_VERSION``)."""
        version = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("INSERT INTO meta VALUES ('history_id', ?)", (os.urandom(8).hex(),))
            if self.file is not None:
                _set_aside_orphans(self.file)
        elif int(version[0]) in (2, 3, 4):  # topics was made above; 2 had one event a row: runs of one
            if int(version[0]) == 2:
                self.db.execute("ALTER TABLE events ADD COLUMN first INTEGER")
            for column in JOURNAL_COLUMNS:
                self.db.execute(f"ALTER TABLE events ADD COLUMN {column} INTEGER")
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        elif int(version[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema {version[0]}; this broker reads {SCHEMA_VERSION}")

    def _take_in_journal(self, journal: Journal) -> None:
        """Index what the journal holds and SQLite does not (the broker was killed before its writer caught
        up); drop the segments that hold nothing else (torn records)."""
        found = [(number, located(frame, place), place) for number, frame, place in journal.pending(self.stored_batch)]
        if found:
            if self.sync == "full":  # indexed, they are durable: the journal must be on the disk first
                for segment in sorted({place[0] for _, _, place in found}):
                    sync_segment(self.path, segment)
            self.db.execute("BEGIN")
            try:
                index(self.db, [row for _, rows, _ in found for row in rows], found[-1][0])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.stored_batch = found[-1][0]
            count = f"{len(found)} batch" + ("es" if len(found) > 1 else "")
            log.warning("indexed %s from the journal that SQLite did not have yet", count)
        journal.drop_after(self.stored_batch)

    @property
    def file(self) -> Path | None:
        """The database file, or None for SQLite's own in-memory database (tests): a writer process needs a file."""
        return None if str(self.path) == ":memory:" else self.path

    def _unstored(self, room: str, journaled: bool = True, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """(seq, event) of ``room`` appended but not known to be committed, oldest first: failed, being written,
        not yet sealed (without ``journaled``: not those the journal has).  A row or run that ends at or before
        ``after`` is skipped whole (the others may still hold a few events at or before it)."""
        for batch in itertools.chain(self.failed, self.sealed):
            if journaled or not batch.durable:
                for name, last, payload, first in batch.rows:
                    if name == room and last > after:
                        yield from events_of(last, payload, first)
        for name, run in itertools.chain(self._ended, self._growing.items()):
            if name == room and run.first + len(run.events) - 1 > after:
                yield from enumerate(run.events, run.first)

    def rooms(self) -> list[tuple[str, int]]:
        """Every room and its last seq: where a broker starts from."""
        return self.db.execute("SELECT room, MAX(seq) FROM events GROUP BY room").fetchall()

    def newest(self, room: str, after: int, max_bytes: int) -> list[bytes]:
        """The newest events of ``room`` with ``seq > after`` that fit in ``max_bytes`` (the newest always),
        oldest first: what memory keeps of a room.  Read newest first and lazily, so it stops at the budget."""
        rows = self._loaded(self.db.execute(f"{SELECT_AFTER} ORDER BY seq DESC", (room, after)))
        pending = [(seq, event) for seq, event in self._unstored(room, after=after) if seq > after]
        recent, used = [], 0
        for _, payload in _merged(_newest_first(rows, after), reversed(pending), newest_first=True):
            used += len(payload)
            if recent and used > max_bytes:
                break
            recent.append(payload)
        recent.reverse()
        return recent

    def events(self, room: str, after: int) -> Iterator[bytes]:
        """Every stored event of ``room`` with ``seq > after``, oldest first, one at a time."""
        rows = self._loaded(self.db.execute(f"{SELECT_AFTER} ORDER BY seq", (room, after)))
        for _, payload in _expand(rows, after):
            yield payload

    def first_pending(self, room: str) -> int | None:
        """The seq of ``room``'s oldest event not yet durable (in neither SQLite nor the journal), if any:
        what a crash could take back."""
        return next((seq for seq, _ in self._unstored(room, journaled=False)), None)

    def last_seq(self, room: str) -> int:
        """The last seq of ``room`` (0 for a room it has no event of), pending events included."""
        pending = max((seq for seq, _ in self._unstored(room)), default=0)
        (seq,) = self.db.execute("SELECT MAX(seq) FROM events WHERE room = ?", (room,)).fetchone()
        return max(pending, seq or 0)

    def append(self, room: str, seq: int, payload: bytes) -> None:
        self._run(room, seq).events.append(payload)

    def run(self, room: str, seq: int, holder: RunHolder) -> list[bytes]:
        """The list ``room``'s events from ``seq`` on are appended to, as ``holder.unsealed`` too, until their
        rows are taken (``seal``, ``commit``), which sets that to None.  The broker's hot path appends its
        consecutive events there, one ``list.append`` each where ``append`` is a call (measured at full load:
        the loop's 5.82 µs a message became 5.60, ``docs/scaling.md``)."""
        holder.unsealed = events = self._run(room, seq).events
        self._holders.append(holder)
        return events

    def _run(self, room: str, seq: int) -> _Growing:
        run = self._growing.get(room)
        if run is None or seq != run.first + len(run.events):
            if run is not None:  # a gap in the room's seqs (rare): its run ends, a new one begins
                self._ended.append((room, run))
            run = self._growing[room] = _Growing(seq)
        return run

    def topic(self, room: str) -> bytes | None:
        """``room``'s newest topic event, pending ones included (None: it never had a topic)."""
        pending = [(seq, p) for seq, p in self._unstored(room) if p.startswith(TOPIC_EVENT)]
        row = self.db.execute("SELECT seq, payload FROM topics WHERE room = ?", (room,)).fetchone()
        newest = pending[-1:] + ([tuple(row)] if row is not None else [])  # the loop may have stored a newer one
        return max(newest, key=itemgetter(0))[1] if newest else None

    def read(self, room: str, after: int, limit: int, max_bytes: int = 1 << 62) -> list[bytes]:
        """Encoded events of ``room`` with ``seq > after``, oldest first, at most ``limit`` and, but for the
        first, within ``max_bytes`` (rows are read lazily, so a large limit costs only what is sent):
        committed ones, then those appended since the last commit (memory may already have let them go;
        the broker sends the reply only after the commit anyway)."""
        rows = self._loaded(self.db.execute(f"{SELECT_AFTER} ORDER BY seq LIMIT ?", (room, after, limit)))
        found, used, last = [], 0, after
        for seq, payload in _merged(_expand(rows, after), self._unstored(room, after=after)):
            if seq <= last:
                continue  # at or before ``after`` (a pending row may begin there)
            used += len(payload)
            if (found and used > max_bytes) or len(found) == limit:
                break
            found.append(payload)
            last = seq
        return found

    def _loaded(self, rows: Iterable[tuple]) -> Iterator[tuple[int, bytes, int | None]]:
        """Rows as ``SELECT_AFTER`` gives them -> (seq, payload, first), a journaled row's payload read from
        the journal.  One the journal lost (a power cut with ``--sync normal``, a segment deleted by hand) is
        left out, logged: history then has a gap, and the seqs are never given again."""
        for seq, payload, first, segment, offset, size, crc in rows:
            if segment is not None:
                payload = self.records.read((segment, offset, size), crc) if self.records is not None else None
                if payload is None:
                    continue
            yield seq, payload, first

    @property
    def pending(self) -> int:
        """Events appended but not yet committed."""
        growing = sum(len(run.events) for _, run in itertools.chain(self._ended, self._growing.items()))
        rows = (row for batch in itertools.chain(self.failed, self.sealed) for row in batch.rows)
        return growing + sum(1 if first is None else last - first + 1 for _, last, _, first in rows)

    def seal(self) -> Sealed | None:
        """Everything appended since the last seal, as one batch for the writer to commit (None: nothing).
        Until the broker hears it is done, reads still find its rows here."""
        if not self._growing:
            return None
        batch = Sealed(self._take_rows())
        self.sealed.append(batch)
        self.unstored_bytes += batch.size
        return batch

    def written(self, batch: Sealed) -> None:
        """The broker heard ``batch`` is committed: its rows are the database's now."""
        assert self.sealed[0] is batch, "batches are committed in the order they were sealed"
        self.sealed.popleft()
        self.unstored_bytes -= batch.size

    def unseal(self) -> None:
        """The writer failed (or died): every sealed batch goes to ``failed``, in order, for ``commit``."""
        self.failed += self.sealed
        self.sealed.clear()
        self.unstored_bytes = 0

    def commit(self) -> None:
        """One transaction for the failed batches SQLite does not have and everything appended since the last
        commit.  If it fails (a full or read-only disk: ``sqlite3.Error``), nothing is lost: the rows stay
        pending for the next try.  Which failed batches SQLite has is read in the same transaction: a writer
        killed between its commit and its answer leaves batches that look failed and are stored."""
        if not self._growing and not self.failed:
            return
        self.db.execute("BEGIN")
        try:
            stored = self._stored_batch() if self.failed else 0  # only a failed writer leaves anything to check
            retried = [batch for batch in self.failed if not 0 < batch.number <= stored]  # 0: never numbered
            rows = [row for batch in retried for row in batch.rows] + self._rows()
            write(self.db, rows, max([stored] + [batch.number for batch in self.failed]))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self._forget_growing()
        self.failed = []

    def _rows(self) -> list[Row]:
        """What was appended since the last seal, as stored rows: the loop's only work per event was a list
        append, and the writer stores these rows without looking at their events."""
        growing = itertools.chain(self._ended, self._growing.items())
        return [row for room, run in growing for row in _stored_rows(room, run.first, run.events)]

    def _take_rows(self) -> list[Row]:
        rows = self._rows()
        self._forget_growing()
        return rows

    def _forget_growing(self) -> None:
        """The growing runs' rows were taken: new ones begin, and nobody appends to the old ones' lists."""
        self._growing, self._ended = {}, []
        for holder in self._holders:
            holder.unsealed = None
        self._holders.clear()

    def _stored_batch(self) -> int:
        return stored_batch(self.db)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self.journal is not None:
                self.journal.close()
            if self.records is not None:
                self.records.close()
            self.db.close()
            if self._lock >= 0:
                os.close(self._lock)


#: A row as stored, and as the loop hands it to the writer: (room, the seq of its last event, the encoded
#: events joined by newlines (an encoded event has none), the seq of its first or None for a row of one).
#: A row holds a run of the room's consecutive events, at most ``RUN_BYTES`` of them (or one bigger event).
Row = tuple[str, int, bytes, int | None]
INSERT = "INSERT INTO events (room, seq, payload, first) VALUES (?, ?, ?, ?)"
#: A row whose events are in the journal: where (``JOURNAL_COLUMNS``), its payload empty.
INDEX = (
    f"INSERT INTO events (room, seq, payload, first, {', '.join(JOURNAL_COLUMNS)}) VALUES (?, ?, X'', ?, ?, ?, ?, ?)"
)
#: The rows that hold events of a room after a seq: every run that ends after it (``SqliteStore._loaded``).
SELECT_AFTER = f"SELECT seq, payload, first, {', '.join(JOURNAL_COLUMNS)} FROM events WHERE room = ? AND seq > ?"


#: How a topic event's bytes begin (``messages.encode`` writes a tagged struct's ``type`` first).
TOPIC_EVENT = b'{"type":"topic",'
#: A room's newest topic event, kept only if it is newer than the one stored: a failed batch stored again on
#: the loop may be older than what the loop stored meanwhile.
UPSERT_TOPIC = (
    "INSERT INTO topics (room, seq, payload) VALUES (?, ?, ?) ON CONFLICT (room) DO UPDATE"
    " SET seq = excluded.seq, payload = excluded.payload WHERE excluded.seq > topics.seq"
)


def write(db: sqlite3.Connection, rows: list[Row], batch: int = 0) -> None:
    """Store ``rows`` in the open transaction, with each room's newest topic event and, for rows of journaled
    batches, the number of the last (``batch``), so the journal is never taken in twice.  No work per event:
    under load a row holds hundreds, and looking at each cost the writer most of its time."""
    rows = joined_runs(rows)
    db.executemany(INSERT, rows)
    _keep_topics_and_batch(db, {t[0]: t for row in rows if (t := _newest_topic(row)) is not None}, batch)


#: A row of the index: (room, seq, first, segment, offset, size, CRC-32), as ``INDEX`` inserts it.
IndexRow = tuple[str, int, int | None, int, int, int, int]
#: A room's newest topic event, as ``topics`` keeps it: (room, seq, event).
Topic = tuple[str, int, bytes]
#: A row of the index, and the newest topic event of its events if they have one.
Located = tuple[IndexRow, Topic | None]


def located(frame: bytes | memoryview, record: Place) -> list[Located]:
    """The rows of a journaled batch's frame, ``record`` where it is (``journal.Tail.place``), as SQLite indexes
    them: (room, seq, first, segment, offset, size, CRC-32) of the events' bytes, which history reads back alone
    (reading and decoding the whole record for each row cost a history read of 500 one-event rows 10 ms, where
    SQLite's joined rows had cost 0.3); with each row's newest topic event.  ``ValueError`` if it is not a
    batch frame."""
    segment, at, _ = record
    base = at + HEADER.size
    data = bytes(frame)  # one copy, for ``find`` (the writer reads every record into one buffer)
    view = memoryview(data)
    found: list[Located] = []
    for room, last, first, start, end in _row_spans(data):
        topic = None
        if data.find(TOPIC_EVENT, start, end) >= 0:
            topic = _newest_topic((room, last, data[start:end], first))
        found.append(((room, last, first, segment, base + start, end - start, zlib.crc32(view[start:end])), topic))
    return found


def index(db: sqlite3.Connection, rows: list[Located], batch: int) -> None:
    """Index journaled batches' rows (``located``) in the open transaction: a row each, saying where its events
    are, without them, with each room's newest topic event and the number of the last batch (``batch``), as
    ``write``.  SQLite's copies of the events' bytes (its WAL, then the checkpoint) were most of what the writer
    cost the machine (``docs/scaling.md``)."""
    db.executemany(INDEX, [row for row, _ in rows])
    topics = {topic[0]: topic for _, topic in rows if topic is not None}
    _keep_topics_and_batch(db, topics, batch)


def _keep_topics_and_batch(db: sqlite3.Connection, topics: dict[str, Topic], batch: int) -> None:
    if topics:
        db.executemany(UPSERT_TOPIC, topics.values())
    if batch:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (STORED_BATCH, str(batch)))


def joined_runs(rows: list[Row]) -> list[Row]:
    """``rows`` with each room's consecutive ones joined, up to ``RUN_BYTES`` a row: what one commit stores.

    The loop makes a row per batch, and at 10k msgs/s a batch holds a few events, about 1 KiB.  SQLite keeps
    what a row of this table has over about 1 KiB on overflow pages of its own, so each such row cost a 4 KiB
    page, mostly empty, written to the WAL and again at the checkpoint (measured at 10k msgs/s: 6.5 bytes
    written per byte of events; joined, 2.3: ``docs/scaling.md``).  A run is cut only by the bound, as the
    loop cuts it."""
    runs: list[_Joined] = []
    open_runs: dict[str, _Joined] = {}
    for room, last, payload, first in rows:
        start = last if first is None else first
        run = open_runs.get(room)
        if run is None or not run.takes(start, payload):
            run = open_runs[room] = _Joined(room, start)
            runs.append(run)
        run.add(last, payload)
    return rows if len(runs) == len(rows) else [run.row() for run in runs]


class _Joined:
    """A room's consecutive rows being joined into one (``joined_runs``)."""

    __slots__ = ("first", "last", "pieces", "room", "size")

    def __init__(self, room: str, first: int) -> None:
        self.room, self.first, self.last = room, first, first - 1
        self.pieces: list[bytes] = []
        self.size = -1  # the bytes of the pieces and the newlines between them

    def takes(self, first: int, payload: bytes) -> bool:
        return first == self.last + 1 and self.size + 1 + len(payload) <= RUN_BYTES

    def add(self, last: int, payload: bytes) -> None:
        self.last = last
        self.pieces.append(payload)
        self.size += 1 + len(payload)

    def row(self) -> Row:
        payload = self.pieces[0] if len(self.pieces) == 1 else b"\n".join(self.pieces)
        return self.room, self.last, payload, None if self.first == self.last else self.first


def stored_batch(db: sqlite3.Connection) -> int:
    """The number of the last journaled batch SQLite has (``meta``), as committed by whoever wrote last."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (STORED_BATCH,)).fetchone()
    return 0 if row is None else int(row[0])


_batch_encoder = msgspec.msgpack.Encoder()


def batch_frame(number: int, rows: list[Row], into: bytearray | None = None) -> bytes | bytearray:
    """A batch as the journal keeps it and the writer process reads it: msgpack ``[number, rows]``.  With
    ``into``, encoded there (resized to fit) and returned: the loop reuses one buffer, as a new one the size
    of a batch is fresh memory the kernel has to map and zero each time (measured: 80 ns an event)."""
    if into is None:
        return _batch_encoder.encode((number, rows))
    _batch_encoder.encode_into((number, rows), into)
    return into


def _row_spans(frame: bytes) -> Iterator[tuple[str, int, int | None, int, int]]:
    """(room, last, first, start, end) of each row of a batch frame (``batch_frame``, or the format before
    rows: ``[number, [[room, seq, event], ...]]``), its events' bytes ``frame[start:end]``: msgpack walked by
    hand, as no decoder says where a value lies.  ``ValueError`` if it is not one."""
    walk = _Walker(frame)
    if walk.array() != 2:
        raise ValueError("a batch frame is [number, rows]")
    walk.integer()
    for _ in range(walk.array()):
        items = walk.array()
        if items not in (3, 4):
            raise ValueError("a row is [room, seq, events, first]")
        room, last, (start, end) = walk.text(), walk.integer(), walk.binary()
        first = walk.integer_or_nil() if items == 4 else None
        yield room, last, first, start, end
    if walk.at != len(frame):
        raise ValueError("bytes after a batch frame")


_MSGPACK_INTEGERS = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
#: The length before a str (0xD9-0xDB) or bin (0xC4-0xC6) of 8, 16 or 32 bits.
_MSGPACK_SIZES = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}


class _Walker:
    """Reads the few msgpack types a batch frame holds, from ``at`` on (``_row_spans``)."""

    def __init__(self, frame: bytes) -> None:
        self.frame, self.at = frame, 0

    def _byte(self) -> int:
        if self.at >= len(self.frame):
            raise ValueError("a batch frame cut short")
        self.at += 1
        return self.frame[self.at - 1]

    def _unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.frame):
            raise ValueError("a batch frame cut short")
        (value,) = struct.unpack_from(fmt, self.frame, self.at)
        self.at += size
        return value

    def _span(self, size: int) -> tuple[int, int]:
        start = self.at
        self.at += size
        if self.at > len(self.frame):
            raise ValueError("a batch frame cut short")
        return start, self.at

    def array(self) -> int:
        kind = self._byte()
        if 0x90 <= kind <= 0x9F:
            return kind & 0x0F
        if kind in (0xDC, 0xDD):
            return self._unpack(">H" if kind == 0xDC else ">I")
        raise ValueError("not an array")

    def integer(self) -> int:
        kind = self._byte()
        if kind <= 0x7F:
            return kind
        if kind >= 0xE0:
            return kind - 0x100
        if kind in _MSGPACK_INTEGERS:
            return self._unpack(_MSGPACK_INTEGERS[kind])
        raise ValueError("not an integer")

    def integer_or_nil(self) -> int | None:
        if self.at < len(self.frame) and self.frame[self.at] == 0xC0:
            self.at += 1
            return None
        return self.integer()

    def text(self) -> str:
        kind = self._byte()
        if 0xA0 <= kind <= 0xBF:
            size = kind & 0x1F
        elif kind in (0xD9, 0xDA, 0xDB):
            size = self._unpack(_MSGPACK_SIZES[kind])
        else:
            raise ValueError("not a string")
        start, end = self._span(size)
        return self.frame[start:end].decode()

    def binary(self) -> tuple[int, int]:
        kind = self._byte()
        if kind not in (0xC4, 0xC5, 0xC6):
            raise ValueError("not bytes")
        return self._span(self._unpack(_MSGPACK_SIZES[kind]))


def events_of(last: int, payload: bytes, first: int | None) -> Iterator[tuple[int, bytes]]:
    """(seq, event) for each event of a stored row (its ``seq``, ``payload`` and ``first``), oldest first."""
    if first is None:
        yield last, payload
    else:
        yield from enumerate(payload.split(b"\n"), first)


def _stored_rows(room: str, first: int, events: list[bytes]) -> Iterator[Row]:
    """A run of ``room``'s consecutive events as stored rows: one, unless it is over ``RUN_BYTES``.  Then it is
    cut by the events' average size (a burst's events are alike: one more join, measured 15 µs for 512 events
    where the exact cut took 42); from a piece still over the bound on, the rest is cut exactly (``_cut_rows``)."""
    joined = b"\n".join(events)
    if len(joined) <= RUN_BYTES:
        yield room, first + len(events) - 1, joined, first if len(events) > 1 else None
        return
    per, start = max(1, len(events) * RUN_BYTES // len(joined)), 0
    while start < len(events):
        run = events[start : start + per]
        payload = b"\n".join(run)
        if len(payload) > RUN_BYTES and len(run) > 1:
            yield from _cut_rows(room, first + start, events[start:])
            return
        yield room, first + start + len(run) - 1, payload, first + start if len(run) > 1 else None
        start += len(run)


def _cut_rows(room: str, first: int, events: list[bytes]) -> Iterator[Row]:
    """``events`` cut where the byte bound falls, found by bisection over the running lengths (no Python work
    per event)."""
    ends = list(itertools.accumulate(map(_PLUS_ONE, map(len, events))))  # bytes of events[..k], a newline each
    start = 0
    while start < len(events):
        before = ends[start - 1] if start else 0
        end = max(start + 1, bisect.bisect_right(ends, before + RUN_BYTES + 1, lo=start))
        run = events[start:end]
        yield room, first + end - 1, b"\n".join(run), first + start if len(run) > 1 else None
        start = end


_PLUS_ONE = (1).__add__


def _newest_topic(row: Row) -> Topic | None:
    """The row's newest topic event, as ``topics`` keeps it (room, seq, event), if it has one."""
    room, last, payload, first = row
    at = payload.rfind(TOPIC_EVENT)
    if at < 0:
        return None
    if at == 0 or payload[at - 1] == ord("\n"):  # where an event begins (JSON-encoded, it cannot be elsewhere)
        end = payload.find(b"\n", at)
        return room, last - payload.count(b"\n", at), payload[at : None if end < 0 else end]
    topics = [(room, seq, e) for seq, e in events_of(last, payload, first) if e.startswith(TOPIC_EVENT)]
    return topics[-1] if topics else None


def _expand(rows: Iterator[tuple[int, bytes, int | None]], after: int) -> Iterator[tuple[int, bytes]]:
    """Stored rows (oldest first) -> (seq, event) for each event with ``seq > after``."""
    for last, payload, first in rows:
        if last > after:
            for seq, event in events_of(last, payload, first):
                if seq > after:
                    yield seq, event


def _merged(
    stored: Iterable[tuple[int, bytes]], pending: Iterable[tuple[int, bytes]], newest_first: bool = False
) -> Iterator[tuple[int, bytes]]:
    """(seq, event) from SQLite and from what is not known to be there yet, in the order of their seqs (each
    source is), each seq once (a batch the writer stored but has not yet said so is in both): pending events
    are not always newer, as the loop may commit what it appended since the last seal while the writer still
    has older batches (a room put to rest does)."""
    before = None
    for seq, event in heapq.merge(stored, pending, key=itemgetter(0), reverse=newest_first):
        if seq != before:
            before = seq
            yield seq, event


def _newest_first(rows: Iterator[tuple[int, bytes, int | None]], after: int) -> Iterator[tuple[int, bytes]]:
    """Stored rows (newest first) -> (seq, event) for each event with ``seq > after``, newest first."""
    for seq, payload, first in rows:
        events = [payload] if first is None else payload.split(b"\n")
        base = seq - len(events) + 1
        for offset in range(len(events) - 1, -1, -1):
            if base + offset <= after:
                return
            yield base + offset, events[offset]


class RunHolder(Protocol):
    """What keeps a growing run's list for ``SqliteStore.run`` (a room)."""

    unsealed: list[bytes] | None


class _Growing:
    """A room's run being appended to: the seq of its first event, and its events."""

    __slots__ = ("events", "first")

    def __init__(self, first: int) -> None:
        self.first = first
        self.events: list[bytes] = []


class Sealed:
    """A batch of rows the store's writer (``store_writer``) commits; its ``result``: True, or the error."""

    __slots__ = ("durable", "number", "result", "rows", "size")

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.size = sum(len(row[2]) for row in rows)
        self.number = 0  # given by the writer: batches are numbered in order, on from ``stored_batch``
        self.result: bool | BaseException | None = None
        self.durable = False  # in the journal: a crash cannot take it back (``--sync normal``)


def _set_aside_orphans(db_path: Path) -> None:
    """A new database beside journal segments: they are a deleted database's history (a deleted database
    starts every room afresh), renamed out of the journal's way, not taken in, and kept for whoever deleted it
    by mistake."""
    found = segments(db_path)
    if not found:
        return
    suffix = f".orphaned-{int(time.time())}"
    for _, path in found:
        path.rename(path.with_name(path.name + suffix))
    log.warning(
        "%s is a new database, but %d journal segment(s) of a deleted one were beside it: renamed to %s-log.N%s "
        "(delete them to free the space)",
        db_path,
        len(found),
        db_path.name,
        suffix,
    )


def _lock(path: Path) -> int:
    """Take ``path``'s exclusive lock and write our pid in it, or raise ``StoreInUse`` naming the holder."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreInUse(
            f"another broker (pid {holder}) is using it; stop that one first, or give another --db"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def open_store(path: str, sync: str = "normal") -> MemoryStore | SqliteStore:
    """``:memory:`` keeps nothing; anything else is a SQLite file (created with its folder if missing)."""
    return MemoryStore() if path == ":memory:" else SqliteStore(path, sync)
