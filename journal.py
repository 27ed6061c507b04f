"""The journal: where a batch becomes durable before its ack, and where its events are kept for good.

With ``--sync normal`` (the default) the broker's loop appends each sealed batch here as one record: one
``write`` to an append-only file, whose bytes are in the OS's page cache when it returns, so they survive
the broker being killed at any moment (the promise of ``--sync normal``: not a power cut).  The batch's acks
and events go out at once; the store's writer process reads the records in its own time and indexes them in
SQLite (``store.py``: a row says where in which segment a run of a room's events is), in big
transactions.  The events' bytes stay here: SQLite's own copies of them (its WAL, then the checkpoint) were
most of the writer's work and of the disk's, measured in ``docs/scaling.md``.  A broker that starts indexes
the records SQLite has not yet.

Measured before this: the loop handed each batch to the writer process and waited for its commit, and
at 10,000 msgs/s SQLite committed a few events at a time, rewriting whole pages into its WAL and
checkpointing it several times a second; with the hop to the writer on two busy cores, p99 was 30 times
``:memory:``'s.  A record here costs one ``write`` of the batch's own bytes.

A segment is ``DB-log.N`` (N: the number of its first batch); a record is a header ``<QII`` (the batch's
number, the payload's length, CRC-32 of the payload) and the payload.  A record cut short or failing its
check ends what is read of that segment (the tail a power cut can leave; nothing after it was acked), and
is never indexed.  SQLite's index keeps, for each row, where its events' bytes are in a segment and their
CRC-32, checked again when history reads them (``Records``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("chat-broker")

HEADER = struct.Struct("<QII")
#: A segment is closed (and a new one begun) past this size: what one batch's deletion waits for at most.
SEGMENT_BYTES = 8 * 1024 * 1024
#: A buffer a record is encoded into (the loop) or read into (the writer) is kept while no bigger than this:
#: a full batch of small events is about 100 KiB; a batch of big ones gets one of its own.
RECORD_KEPT = 1 << 20


class Journal:
    """Append-only segments beside the database, appended to on the loop (``Tail`` reads them)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._fd = -1
        self._size = 0

    def pending(self, stored: int) -> Iterator[tuple[int, bytes, Place]]:
        """Every intact record with a number above ``stored`` (what SQLite has not indexed), oldest first, with
        where it is.  Segments wholly at or before ``stored`` are not read: they are the history."""
        for number, path in unread_segments(self.db_path, stored):
            data = path.read_bytes()
            at = 0
            while at + HEADER.size <= len(data):
                batch, length, crc = HEADER.unpack_from(data, at)
                payload = data[at + HEADER.size : at + HEADER.size + length]
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break  # a torn tail: never acked
                if batch > stored:
                    yield batch, payload, (number, at, HEADER.size + length)
                at += HEADER.size + length

    def drop_after(self, stored: int) -> None:
        """Delete the segments that begin after ``stored``, the last batch SQLite has indexed: a start indexed
        every intact record, so they hold only torn ones, and the next ``append`` may begin a segment of the
        same name."""
        for number, path in segments(self.db_path):
            if number > stored:
                _delete(path)

    def append(self, number: int, payload: bytes | bytearray) -> None:
        """Make batch ``number`` durable (for ``--sync normal``): once this returns, a kill cannot lose it.
        Raises ``OSError`` (a full disk) with nothing of the record left behind."""
        if self._fd < 0 or self._size >= SEGMENT_BYTES:
            self._begin(number)
        header = HEADER.pack(number, len(payload), zlib.crc32(payload))
        try:  # header and payload in one write, without copying them into one buffer first
            written = os.writev(self._fd, (header, payload))
            if written != len(header) + len(payload):  # a short write to a file: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)  # no torn record in the middle of the journal
            except OSError:
                self.close()  # or none after it: the next record begins a segment of its own
            raise
        self._size += written

    def _begin(self, number: int) -> None:
        """A new segment, never one that exists: records appended behind a torn one (a segment a start could
        not delete) would never be read.  If it exists, the append fails (nothing was acked), and the next
        batch's number names another."""
        path = segment_path(self.db_path, number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._size = fd, 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: Where bytes of the journal are: (the number in their segment's name, their offset there, their length).
#: A record's (``Tail.place``: its header's offset, its length with the header); what SQLite's index keeps of a
#: row's events (``store.py``).
Place = tuple[int, int, int]


class Tail:
    """The store's writer process reads the journal here: each record once, in order, up to the number the
    broker says it has appended (so never one being written).  The batches go from the loop to the writer
    through the page cache, not a socket: one copy of their bytes instead of three, and no ipc work for the
    broker's I/O thread.

    Records are read in the order of their numbers, which may skip one (an append that failed used its
    number and left nothing).  A segment read to its end (or to a torn tail: an append that failed and could
    not be undone) is followed by the next one by number."""

    def __init__(self, db_path: Path, after: int) -> None:
        self.db_path = db_path
        self.last = after  # the number of the last record read (or stored before)
        #: Where the record ``read`` gave last is (``Place``).
        self.place: Place = (0, 0, 0)
        self._file: BinaryIO | None = None
        self._segment = -1  # the number in the open segment's name
        self._unsynced: set[int] = set()  # segments read from since ``sync``
        self._named = -1  # the newest segment whose name the folder has on disk (``sync``)
        self._buffer = bytearray()  # records are read into it (``read``)

    def read(self, upto: int) -> Iterator[tuple[int, memoryview]]:
        """Every record numbered above ``last`` and up to ``upto``, oldest first, each in the one buffer this
        reader keeps, so valid until the next is read: a new one the size of a batch was fresh memory the
        kernel had to map and zero each time (measured at full load: the writer took 10-18k page faults/s, 3k
        with it, and about 8 % less CPU).  Raises ``OSError`` if the journal does not have them (then ``last`` is
        ``upto``: what follows is read from the next segment)."""
        while self.last < upto:
            record = self._record()
            if record is None and not self._next_segment():
                self.last = upto
                raise OSError(errno.ENOENT, f"the journal of {self.db_path} has no batch up to {upto}")
            if record is not None and record[0] > self.last:
                self.last = record[0]
                yield record

    def skip(self, upto: int) -> None:
        """Go past every record up to ``upto`` unread (the broker stores those batches itself), as far as the
        journal has them."""
        with contextlib.suppress(OSError):
            for _ in self.read(upto):
                pass

    def _record(self) -> tuple[int, memoryview] | None:
        """The open segment's next record, or None at its end or a torn tail (read from there again next)."""
        if self._file is None:
            return None
        at = self._file.tell()
        header = self._file.read(HEADER.size)
        if len(header) == HEADER.size:
            number, length, crc = HEADER.unpack(header)
            if length <= os.fstat(self._file.fileno()).st_size - at - HEADER.size:  # not a torn header's length
                body = self._body(length)
                if zlib.crc32(body) == crc:  # else torn, or damaged on disk: never stored as if it were a batch
                    self.place = (self._segment, at, HEADER.size + length)
                    self._unsynced.add(self._segment)
                    return number, body
        self._file.seek(at)
        return None

    def _body(self, length: int) -> memoryview:
        """The next ``length`` bytes of the open segment, read into the kept buffer (a bigger one for a record
        over ``RECORD_KEPT``, not kept)."""
        buffer = self._buffer
        if len(buffer) < length:
            buffer = bytearray(length)
            if length <= RECORD_KEPT:
                self._buffer = buffer
        view = memoryview(buffer)[:length]
        self._file.readinto(view)  # type: ignore[union-attr]  (open: ``_record`` checked)
        return view

    def _next_segment(self) -> bool:
        """Go on to the segment after the open one (by number), past those wholly read before (the history);
        False if there is none (the open one stays)."""
        for number, path in unread_segments(self.db_path, self.last):
            if number <= self._segment:
                continue
            try:
                segment = open(path, "rb")  # noqa: SIM115 (kept open)
            except FileNotFoundError:  # deleted since (by hand): nothing of it can be read
                continue
            self._flush()
            self.close()
            self._file, self._segment = segment, number
            return True
        return False

    def _flush(self) -> None:
        """The open segment is read through: flush it to the disk (with ``--sync normal`` too, once per
        segment), so a power cut can take back only the newest segment's events, not older history."""
        if self._file is not None:
            try:
                os.fdatasync(self._file.fileno())
            except OSError as exc:
                log.error("cannot flush the journal segment %s to the disk: %s", self._segment, exc)

    def sync(self) -> None:
        """Flush to the disk the segments records were read from since the last call, and the folder's entry
        of each new one: with ``--sync full``, before SQLite's commit indexes them (its fsync)."""
        for number in sorted(self._unsynced):
            sync_segment(self.db_path, number, named=number <= self._named)
            self._named = max(self._named, number)
        self._unsynced.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Records:
    """Reads a row's events back for history (the loop's reads of SQLite's index), checked by the CRC-32 the
    index keeps: bytes the disk lost or damaged since (a power cut with ``--sync normal``) are None, never
    events, logged once a segment (a history read of hundreds of rows would say it hundreds of times).  Keeps
    a few segments open."""

    OPEN_SEGMENTS = 8

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._fds: dict[int, int] = {}  # segment number -> fd, least recently used first
        self._reported: set[int] = set()  # segments whose loss was logged

    def read(self, place: Place, crc: int) -> bytes | None:
        """The bytes at ``place`` if their CRC-32 is ``crc``, else None (logged)."""
        segment, offset, size = place
        try:
            data = os.pread(self._fd(segment), size, offset)
        except OSError as exc:
            self._lost(segment, f"cannot read history from the journal segment {segment}: {exc}")
            return None
        if len(data) == size and zlib.crc32(data) == crc:
            return data
        self._lost(segment, f"the journal segment {segment} has lost events (at {offset}): history there is missing")
        return None

    def _lost(self, segment: int, what: str) -> None:
        if segment not in self._reported:
            self._reported.add(segment)
            log.error("%s", what)

    def _fd(self, segment: int) -> int:
        fd = self._fds.pop(segment, None)
        if fd is None:
            fd = os.open(segment_path(self.db_path, segment), os.O_RDONLY)
            if len(self._fds) >= self.OPEN_SEGMENTS:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[segment] = fd  # the most recently used, last
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def segment_path(db_path: Path, number: int) -> Path:
    """The segment beside ``db_path`` whose first batch is ``number``."""
    return db_path.with_name(f"{_prefix(db_path)}{number}")


def segments(db_path: Path) -> list[tuple[int, Path]]:
    """The journal segments beside ``db_path``, oldest first: (number of its first batch, path)."""
    prefix = _prefix(db_path)
    found = ((path.name[len(prefix) :], path) for path in db_path.parent.glob(prefix + "*"))
    return sorted((int(number), path) for number, path in found if number.isdigit())


def unread_segments(db_path: Path, after: int) -> list[tuple[int, Path]]:
    """The segments that may hold a record numbered above ``after``: from the newest whose first batch is at
    or before ``after + 1`` on (a segment ends where the next begins, so the ones before it end at or before
    ``after``)."""
    found = segments(db_path)
    begin = 0
    while begin + 1 < len(found) and found[begin + 1][0] <= after + 1:
        begin += 1
    return found[begin:]


def sync_segment(db_path: Path, number: int, named: bool = False) -> None:
    """Flush segment ``number`` to the disk, and (unless it is ``named`` there already) the folder's entry."""
    for path, flush in ((segment_path(db_path, number), os.fdatasync), (db_path.parent, os.fsync)):
        fd = os.open(path, os.O_RDONLY)
        try:
            flush(fd)
        finally:
            os.close(fd)
        if named:
            return


def _prefix(db_path: Path) -> str:
    return db_path.name + "-log."


def _delete(path: Path) -> None:
    """Delete a segment that holds nothing indexed.  If that fails (a read-only folder), it stays and costs
    disk space, nothing else."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("cannot delete the journal segment %s (%s)", path, exc)
