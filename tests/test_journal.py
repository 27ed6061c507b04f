"""The journal (``journal.py``) under a hypothesis state machine: appends, the writer reading them, SQLite
indexing them, restarts, failed writes and torn tails.  Whatever happens, the writer reads each record
appended exactly once, in order; a restart finds exactly the records appended and not yet indexed; and every
record indexed is read back for history from where the writer found it."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

import journal


def body(record: journal.Place, payload: bytes) -> tuple[journal.Place, int]:
    """Where a record's payload is, and its CRC-32: what SQLite's index would keep of a row as long."""
    segment, at, size = record
    return (segment, at + journal.HEADER.size, size - journal.HEADER.size), zlib.crc32(payload)


def read(tail: journal.Tail, upto: int, places: dict | None = None) -> list[tuple[int, bytes]]:
    """What ``tail.read`` gives, each record copied out of the buffer it is read into (and, into ``places``,
    where it is: what SQLite's index keeps)."""
    found = []
    for number, record in tail.read(upto):
        found.append((number, bytes(record)))
        if places is not None:
            places[number] = tail.place
    return found


class JournalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="journal-"))
        self.db = self.folder / "c.db"
        self.journal = journal.Journal(self.db)
        self.tail = journal.Tail(self.db, 0)  # the writer process's end
        self.number = 0
        self.stored = 0
        self.appended: dict[int, bytes] = {}  # what an append returned from: durable
        self.places: dict[int, journal.Place] = {}  # where the writer found each record it read
        self.indexed: dict[journal.Place, bytes] = {}  # what SQLite's index points to, and what is there

    def teardown(self) -> None:
        self.journal.close()
        self.tail.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(payload=st.binary(max_size=300))
    def append(self, payload: bytes) -> None:
        self.number += 1
        self.journal.append(self.number, payload)
        self.appended[self.number] = payload

    @rule(payload=st.binary(min_size=1, max_size=300), device=st.sampled_from(["/dev/full", "/dev/null"]))
    def append_fails(self, payload: bytes, device: str) -> None:
        """A full disk (or a file that cannot be written): the append raises and leaves nothing behind."""
        self.append(b"")  # a segment is open
        fd = self.journal._fd
        self.journal._fd = os.open(device, os.O_WRONLY if device == "/dev/full" else os.O_RDONLY)
        self.number += 1
        try:
            self.journal.append(self.number, payload)
            raise AssertionError("the append should have failed")
        except OSError as exc:
            assert exc.errno in (errno.ENOSPC, errno.EBADF)
        if self.journal._fd >= 0:
            os.close(self.journal._fd)
        self.journal._fd = fd

    @rule()
    def writer_reads(self) -> None:
        """The broker told the writer of everything appended: it reads what it had not, and nothing else."""
        if not self.appended or max(self.appended) <= self.tail.last:
            return
        before, upto = self.tail.last, max(self.appended)
        assert read(self.tail, upto, self.places) == [(n, p) for n, p in self.appended.items() if before < n <= upto]

    @rule()
    def sqlite_catches_up(self) -> None:
        """The writer indexed what it read: from now on, history is read from there."""
        self.stored = max(self.stored, self.tail.last)
        self.indexed |= {place: self.appended[n] for n, place in self.places.items() if n in self.appended}
        self.places.clear()

    @rule()
    def history_is_read_back(self) -> None:
        records = journal.Records(self.db)
        try:
            assert {
                place: records.read(*body(place, payload)) for place, payload in self.indexed.items()
            } == self.indexed
        finally:
            records.close()

    @rule(cut=st.integers(1, 40))
    def killed_while_writing(self, cut: int) -> None:
        """A power cut in the middle of a record: part of it reached the file, and it was never acked."""
        self.journal.close()
        segments = sorted(self.folder.glob("c.db-log.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        if segments:
            record = journal.HEADER.pack(self.number + 1, 30, 0) + b"y" * 30
            with segments[-1].open("ab") as f:
                f.write(record[:cut])
        self.restart()

    @rule()
    def restart(self) -> None:
        self.journal.close()
        self.journal = journal.Journal(self.db)
        found = list(self.journal.pending(self.stored))
        assert [(n, p) for n, p, _ in found] == [(n, p) for n, p in self.appended.items() if n > self.stored]
        # What a starting store does: indexes them, and drops the segments that hold only torn records.
        self.indexed |= {place: payload for _, payload, place in found}
        self.stored = max([self.stored, *self.appended])
        self.number = max(self.number, self.stored) + 1  # a torn record's number is never reused
        self.journal.drop_after(self.stored)
        self.appended, self.places = {}, {}
        self.tail.close()
        self.tail = journal.Tail(self.db, self.stored)


JournalMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_the_journal_keeps_what_was_appended_and_not_stored = JournalMachine.TestCase


def test_segments_roll_over_and_a_start_reads_only_those_after_what_sqlite_has(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 100)
    j = journal.Journal(tmp_path / "c.db")
    for number in range(1, 21):
        j.append(number, b"x" * 40)
    assert len(list(tmp_path.glob("c.db-log.*"))) == 10  # two records each: 1-2, 3-4, ...
    opened, read_bytes = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self.name) or read_bytes(self))
    assert [n for n, _, _ in journal.Journal(tmp_path / "c.db").pending(12)] == list(range(13, 21))
    assert opened == [f"c.db-log.{n}" for n in (13, 15, 17, 19)]  # not the history before
    tail = journal.Tail(tmp_path / "c.db", 14)
    assert read(tail, 16) == [(15, b"x" * 40), (16, b"x" * 40)] and tail.place[0] == 15
    tail.close()
    j.close()


def test_a_start_drops_segments_holding_only_torn_records_and_logs_one_it_cannot(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """The next append may begin a segment of the same name.  ``unlink`` refused (a read-only folder: EROFS,
    EACCES) costs disk space and a log line, never the broker."""
    log = journal.Journal(tmp_path / "c.db")
    log.append(1, b"x")
    log.close()
    (tmp_path / "c.db-log.2").write_bytes(journal.HEADER.pack(2, 30, 0) + b"y")  # torn: a power cut
    (tmp_path / "c.db-log.3").write_bytes(journal.HEADER.pack(3, 30, 0) + b"y")
    log.drop_after(2)
    assert sorted(path.name for path in tmp_path.glob("c.db-log.*")) == ["c.db-log.1", "c.db-log.2"]

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    log.drop_after(1)
    assert "cannot delete the journal segment" in caplog.text


def test_a_record_lost_or_damaged_since_it_was_indexed_is_not_history(tmp_path: Path, caplog) -> None:
    """After a power cut with ``--sync normal`` SQLite's index may point at bytes the disk never got."""
    j = journal.Journal(tmp_path / "c.db")
    for number in (1, 2, 3):
        j.append(number, b"record %d" % number)
    j.close()
    tail = journal.Tail(tmp_path / "c.db", 0)
    places: dict[int, journal.Place] = {}
    read(tail, 3, places)
    tail.close()
    segment = tmp_path / "c.db-log.1"
    data = bytearray(segment.read_bytes())
    data[places[2][1] + journal.HEADER.size] ^= 0xFF  # record 2 damaged
    segment.write_bytes(data[: places[3][1] + 5])  # record 3 cut short
    records = journal.Records(tmp_path / "c.db")
    assert [records.read(*body(places[n], b"record %d" % n)) for n in (1, 2, 3)] == [b"record 1", None, None]
    assert records.read((7, 0, 20), 0) is None and records.read((7, 20, 20), 0) is None  # deleted by hand
    records.close()
    assert "history there is missing" in caplog.text and "cannot read history" in caplog.text
    assert caplog.text.count("cannot read history") == 1 and caplog.text.count("has lost events") == 1  # once each


def test_the_writer_reads_past_a_torn_record_and_a_number_an_append_failed_to_use(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 100)
    j = journal.Journal(tmp_path / "c.db")
    j.append(1, b"one")
    j.append(2, b"two")
    with (tmp_path / "c.db-log.1").open("ab") as f:  # an append that failed and could not be undone
        f.write(journal.HEADER.pack(3, 30, 0) + b"y" * 10)
    j.close()  # so the next record begins a segment of its own
    j.append(4, b"four")
    tail = journal.Tail(tmp_path / "c.db", 0)
    assert read(tail, 2) == [(1, b"one"), (2, b"two")]
    assert read(tail, 4) == [(4, b"four")] and tail.last == 4
    with pytest.raises(OSError):  # the broker said 5 is there, and it is not: the writer fails, nothing is lost
        read(tail, 5)
    j.append(6, b"six")
    assert read(tail, 6) == [(6, b"six")]
    tail.close()
    j.close()


def test_a_torn_header_claiming_gigabytes_is_a_torn_tail_not_an_allocation(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "c.db")
    j.append(1, b"one")
    with (tmp_path / "c.db-log.1").open("ab") as f:
        f.write(journal.HEADER.pack(2, 0xFFFFFFFF, 0) + b"y")
    tail = journal.Tail(tmp_path / "c.db", 0)
    assert read(tail, 1) == [(1, b"one")]
    with pytest.raises(OSError):
        read(tail, 2)
    tail.close()
    j.close()


def test_records_are_read_into_one_kept_buffer_and_a_bigger_one_for_a_big_record(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "c.db")
    records = {1: b"a" * 10, 2: b"b" * (journal.RECORD_KEPT + 10), 3: b"c" * 20, 4: b"d" * 5}
    for number, record in records.items():
        j.append(number, record)
    tail = journal.Tail(tmp_path / "c.db", 0)
    read_back, buffers = {}, {}
    for number, view in tail.read(4):
        read_back[number] = bytes(view)  # valid until the next is read
        buffers[number] = view.obj
    assert read_back == records
    assert buffers[4] is buffers[3]  # kept
    assert buffers[3] is not buffers[2]  # the big one was read into a buffer of its own, not kept
    tail.close()
    j.close()


def test_a_segment_is_never_appended_to_behind_a_torn_record(tmp_path: Path) -> None:
    """Found in review: a start that could not delete a segment holding only a torn record numbered the next
    batches from there again, appended them behind it, and the writer (and the next start) never read them.
    A segment is begun only if it does not exist: that append fails (nothing acked), the next one names
    another."""
    (tmp_path / "c.db-log.2").write_bytes(journal.HEADER.pack(2, 30, 0) + b"y")  # left by a power cut
    j = journal.Journal(tmp_path / "c.db")
    with pytest.raises(FileExistsError):
        j.append(2, b"two")
    j.append(3, b"three")
    tail = journal.Tail(tmp_path / "c.db", 1)
    assert read(tail, 3) == [(3, b"three")]
    tail.close()
    j.close()
