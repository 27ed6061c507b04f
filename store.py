"""Where room history and seq counters live: SQLite on disk, or memory for throwaway runs.

The chat core appends every published event here and the broker commits once
per batch of messages its loop handled (group commit); acks and feed events go
out only after that commit, so whatever anyone was told exists is on disk, and
a restarted broker never reuses a seq.

Durability: WAL with ``synchronous=NORMAL`` (the default) survives the broker
process dying at any moment (kill -9): a committed transaction is in the WAL
file, in the OS page cache, before ``commit`` returns. It does not survive the
machine losing power before the OS writes its cache back; ``--sync full``
fsyncs every commit for that, at the price of a disk flush per batch.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_VERSION = 2
SYNC_LEVELS = ("normal", "full")


@dataclass
class Snapshot:
    """What a broker starts from: each room's last seq and its recent events (oldest first)."""

    seqs: dict[str, int] = field(default_factory=dict)
    recent: dict[str, list[bytes]] = field(default_factory=dict)  # encoded events, as published


class MemoryStore:
    """Keeps nothing: every room starts at seq 0 and nothing survives the process (``--db :memory:``)."""

    persistent = False

    def __init__(self) -> None:
        #: Names this history; a new one (every run, here) tells clients that seqs started over.
        self.history_id = os.urandom(8).hex()

    def load(self, recent_per_room: int) -> Snapshot:
        return Snapshot()

    def append(self, room: str, seq: int, payload: bytes) -> None:
        pass

    def read(self, room: str, after: int, limit: int) -> list[bytes]:
        return []

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class SqliteStore:
    """Room events in one SQLite table; rows are buffered and written in one transaction per ``commit``."""

    persistent = True

    def __init__(self, path: str | Path, sync: str = "normal") -> None:
        if sync not in SYNC_LEVELS:
            raise ValueError(f"sync must be one of {SYNC_LEVELS}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={sync.upper()}")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            -- One B-tree keyed by (room, seq): the only order anything is read in.
            CREATE TABLE IF NOT EXISTS events (
                room TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (room, seq)
            ) WITHOUT ROWID;
            """
        )
        version = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("INSERT INTO meta VALUES ('history_id', ?)", (os.urandom(8).hex(),))
        elif int(version[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema {version[0]}; this broker reads {SCHEMA_VERSION}")
        #: Names this history for as long as the file lives; a new file means seqs started over.
        self.history_id: str = self.db.execute("SELECT value FROM meta WHERE key = 'history_id'").fetchone()[0]
        self._rows: list[tuple[str, int, bytes]] = []

    def load(self, recent_per_room: int) -> Snapshot:
        snap = Snapshot()
        for room, seq in self.db.execute("SELECT room, MAX(seq) FROM events GROUP BY room"):
            snap.seqs[room] = seq
            rows = self.db.execute(
                "SELECT payload FROM events WHERE room = ? AND seq > ? ORDER BY seq", (room, seq - recent_per_room)
            )
            snap.recent[room] = [payload for (payload,) in rows]
        return snap

    def append(self, room: str, seq: int, payload: bytes) -> None:
        self._rows.append((room, seq, payload))

    def read(self, room: str, after: int, limit: int) -> list[bytes]:
        """Encoded events of ``room`` with ``seq > after``, oldest first."""
        rows = self.db.execute(
            "SELECT payload FROM events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?", (room, after, limit)
        )
        return [payload for (payload,) in rows]

    def commit(self) -> None:
        """One transaction for everything appended since the last commit."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT INTO events (room, seq, payload) VALUES (?, ?, ?)", rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.commit()
        self.db.close()


def open_store(path: str, sync: str = "normal") -> MemoryStore | SqliteStore:
    """``:memory:`` keeps nothing; anything else is a SQLite file (created with its folder if missing)."""
    return MemoryStore() if path == ":memory:" else SqliteStore(path, sync)
