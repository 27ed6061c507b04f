"""The store and what the core does with it: restore after a restart, dedupe of resends, history from disk."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sqlite3
import tempfile
import zlib
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import journal
import messages as m
import store as store_module
from chat import ChatConfig, ChatCore, Publish, Reply, SaidWindows
from store import MemoryStore, SqliteStore, open_store
from store_writer import IDLE_AFTER_MAX_S, IDLE_AFTER_S, Writer, Yielding

A = b"peer-a"
B = b"peer-b"


def send(core: ChatCore, env: dict, peer: bytes = A, now: float = 1.0) -> list:
    out = core.handle(peer, [msgspec.json.encode(env)], now)
    core.commit()
    return out


def replies(out: list) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, Reply)]


def published(out: list) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, Publish)]


def chat(core: ChatCore, texts: list[str], user: str = "alice", peer: bytes = A) -> list[dict]:
    send(core, {"type": "hello", "user": user}, peer)
    return [replies(send(core, {"type": "msg", "room": "general", "text": t, "id": t}, peer))[0] for t in texts]


def test_a_restarted_core_goes_on_from_the_stored_seq_and_history(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    core = ChatCore(store=SqliteStore(path))
    acks = chat(core, ["one", "two"])
    assert [a["seq"] for a in acks] == [2, 3]  # seq 1 is alice's join
    core.store.close()

    again = ChatCore(store=SqliteStore(path))
    assert again.rooms["general"].seq == 3
    assert [e.get("text") for e in map(msgspec.json.decode, again.rooms["general"].history)] == [None, "one", "two"]
    acks = chat(again, ["three"], user="bob")
    assert acks[0]["seq"] == 5  # bob's join is 4


def test_a_resent_message_is_acked_again_and_not_published_again(tmp_path: Path) -> None:
    core = ChatCore(store=SqliteStore(tmp_path / "chat.db"))
    send(core, {"type": "hello", "user": "alice"})
    msg = {"type": "msg", "room": "general", "text": "hi", "id": "m1"}
    first = send(core, msg)
    again = send(core, msg)
    assert replies(again) == replies(first)
    assert published(again) == []


def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    core = ChatCore(store=SqliteStore(path))
    ack = chat(core, ["hello"])[0]
    core.store.close()
    # The broker died after committing but before its ack arrived; the client resends after the restart.
    again = ChatCore(store=SqliteStore(path))
    out = send(again, {"type": "hello", "user": "alice"}) and send(
        again, {"type": "msg", "room": "general", "text": "hello", "id": "hello"}
    )
    assert replies(out) == [ack]
    assert published(out) == []


def test_after_a_restart_each_window_holds_the_users_latest_ids_across_rooms(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    core = ChatCore(ChatConfig(dedupe_per_user=2), store=SqliteStore(path))
    send(core, {"type": "hello", "user": "alice", "rooms": ["general", "dev"]})
    for now, (room, msg_id) in enumerate([("dev", "d1"), ("general", "g1"), ("dev", "d2"), ("general", "g2")]):
        send(core, {"type": "msg", "room": room, "text": "x", "id": msg_id}, now=2.0 + now)
    core.store.close()
    again = ChatCore(ChatConfig(dedupe_per_user=2), store=SqliteStore(path))
    assert list(again.said.windows["alice"]) == ["d2", "g2"]  # by time, not room by room


def test_dedupe_is_per_user_and_case_insensitive() -> None:
    core = ChatCore()
    chat(core, ["same-id"])
    send(core, {"type": "bye"})
    out = send(core, {"type": "hello", "user": "ALICE"}) and send(
        core, {"type": "msg", "room": "general", "text": "x", "id": "same-id"}
    )
    assert published(out) == []  # the same user under another case: a resend
    out = send(core, {"type": "hello", "user": "bob"}, peer=b"b") and send(
        core, {"type": "msg", "room": "general", "text": "x", "id": "same-id"}, peer=b"b"
    )
    assert len(published(out)) == 1  # another user may use the same id


def test_each_user_keeps_their_last_ids_however_much_others_say() -> None:
    core = ChatCore(ChatConfig(dedupe_per_user=3, dedupe_total=20, rate_limit=0, source_rate=0))
    acks = chat(core, ["a1", "a2", "a3", "a4"])
    chat(core, [f"b{i}" for i in range(15)], user="bob", peer=B)  # bob's flood does not push alice's ids out
    send(core, {"type": "hello", "user": "alice"})
    for text, ack in zip(["a2", "a3", "a4"], acks[1:], strict=True):
        out = send(core, {"type": "msg", "room": "general", "text": text, "id": text})
        assert replies(out) == [ack] and published(out) == []
    out = send(core, {"type": "msg", "room": "general", "text": "a1", "id": "a1"})
    assert published(out)[0]["id"] == "a1"  # older than alice's last 3: treated as new, as documented


def test_requests_that_write_nothing_leave_the_windows_alone() -> None:
    core = ChatCore(ChatConfig(dedupe_per_user=2, dedupe_total=4, rate_limit=0, source_rate=0))
    ack = chat(core, ["m1"])[0]
    for i in range(20):  # idle clients, and writes that are refused, from 20 other users
        peer = b"p%d" % i
        send(core, {"type": "hello", "user": f"u{i}"}, peer)
        send(core, {"type": "ping"}, peer)
        send(core, {"type": "msg", "room": "nowhere", "text": "x", "id": "x"}, peer)
        send(core, {"type": "bye"}, peer)
    assert list(core.said.windows) == ["alice"]
    out = send(core, {"type": "msg", "room": "general", "text": "m1", "id": "m1"})
    assert replies(out) == [ack] and published(out) == []


def test_past_the_total_the_least_recently_active_users_are_forgotten_first() -> None:
    core = ChatCore(ChatConfig(dedupe_per_user=3, dedupe_total=8, dedupe_age=0, rate_limit=0, source_rate=0))
    chat(core, ["a1", "a2"])
    chat(core, ["b1", "b2"], user="bob", peer=B)
    chat(core, ["c1", "c2", "c3"], user="carol", peer=b"peer-c")  # 3 windows + 7 ids > 8: alice goes
    assert list(core.said.windows) == ["bob", "carol"]
    assert core.said.size == 2 + 5 <= 8
    out = send(core, {"type": "msg", "room": "general", "text": "a2", "id": "a2"})
    assert published(out)[0]["id"] == "a2"


def test_the_window_being_written_to_is_kept_and_the_least_recently_written_goes() -> None:
    said = SaidWindows(per_user=3, total=4, age=0)
    for i in range(5):
        said.remember("alice", f"a{i}", b"ack", now=0.0)
    assert list(said.windows["alice"]) == ["a2", "a3", "a4"]
    said.remember("bob", "b0", b"ack", now=0.0)  # alice, the least recent, goes to keep the total
    assert list(said.windows) == ["bob"] and said.get("alice", "a4") is None and said.get("bob", "b0") == b"ack"


def test_ids_younger_than_the_age_are_never_forgotten_for_others() -> None:
    said = SaidWindows(per_user=3, total=4, age=600)
    for i in range(3):
        said.remember("alice", f"a{i}", b"ack", now=0.0)
    assert said.full(now=599.0)  # bob must wait: alice's ids are younger than ten minutes
    assert not said.full(now=600.0)  # now alice's window may go
    said.remember("bob", "b0", b"ack", now=600.0)
    assert list(said.windows) == ["bob"]


def test_a_full_dedupe_memory_refuses_new_messages_with_unavailable() -> None:
    core = ChatCore(ChatConfig(dedupe_per_user=3, dedupe_total=6, rate_limit=0, source_rate=0))
    ack = chat(core, ["a1", "a2"])[1]
    chat(core, ["b1", "b2"], user="bob", peer=B)
    out = send(core, {"type": "msg", "room": "general", "text": "c1", "id": "c1"}, b"peer-c")  # no session
    out = send(core, {"type": "hello", "user": "carol"}, b"peer-c")
    out = send(core, {"type": "msg", "room": "general", "text": "c1", "id": "c1"}, b"peer-c")
    assert replies(out)[0]["code"] == "unavailable" and published(out) == []
    out = send(core, {"type": "msg", "room": "general", "text": "a2", "id": "a2"})  # alice's resend: still known
    assert replies(out) == [ack] and published(out) == []


@pytest.mark.parametrize("per_user, total", [(0, 10), (10, 10), (11, 10)])
def test_the_dedupe_bounds_are_checked(per_user: int, total: int) -> None:
    with pytest.raises(ValueError, match="dedupe_per_user"):
        ChatConfig(dedupe_per_user=per_user, dedupe_total=total)


def test_a_window_holds_more_than_a_client_keeps_unacknowledged() -> None:
    """What docs/protocol.md builds its guarantee on: the reference clients' unacked messages fit."""
    import client

    assert ChatConfig().dedupe_per_user >= client.MAX_UNACKED
    js = (Path(__file__).resolve().parent.parent / "static" / "chat.js").read_text()
    assert f"const MAX_UNACKED = {client.MAX_UNACKED};" in js


def test_history_older_than_memory_comes_from_disk(tmp_path: Path) -> None:
    core = ChatCore(
        ChatConfig(history_kept=5, history_on_join=2, rate_limit=0, source_rate=0), store=SqliteStore(tmp_path / "c.db")
    )
    chat(core, [f"m{i}" for i in range(20)])
    reply = replies(send(core, {"type": "history", "room": "general", "after": 0, "limit": 500}))[0]
    assert [e["seq"] for e in reply["events"]] == list(range(1, 22))
    reply = replies(send(core, {"type": "history", "room": "general", "after": 3, "limit": 2}))[0]
    assert [e["seq"] for e in reply["events"]] == [4, 5]


def test_nothing_is_on_disk_before_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "chat.db")
    core = ChatCore(store=store)
    core.handle(A, [msgspec.json.encode({"type": "hello", "user": "alice"})], 1.0)
    assert SqliteStore(tmp_path / "chat.db").rooms() == []
    core.commit()
    assert SqliteStore(tmp_path / "chat.db").rooms() == [("general", 1)]


def test_rooms_snapshot_lists_every_room_and_its_seq() -> None:
    core = ChatCore()
    chat(core, ["a", "b"])
    send(core, {"type": "join", "room": "dev"})
    assert replies(send(core, {"type": "rooms"}, peer=b"observer")) == [
        {"type": "rooms", "rooms": {"general": 3, "dev": 1}, "history_id": core.store.history_id}
    ]


def test_history_id_stays_with_the_database_and_changes_without_one(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "chat.db").history_id
    assert SqliteStore(tmp_path / "chat.db").history_id == first
    assert SqliteStore(tmp_path / "other.db").history_id != first
    assert MemoryStore().history_id != MemoryStore().history_id


def test_open_store_memory_keeps_nothing() -> None:
    assert isinstance(open_store(":memory:"), MemoryStore)


def test_a_database_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    SqliteStore(path).db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(RuntimeError, match="schema 99"):
        SqliteStore(path)


def test_sync_level_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "chat.db", sync="sometimes")


# --- rooms at rest: --max-rooms bounds the rooms in memory, not the rooms a broker may ever have ---


def join(core: ChatCore, room: str, peer: bytes = A) -> dict:
    return next(
        r for r in replies(send(core, {"type": "join", "room": room}, peer)) if r["type"] in ("joined", "error")
    )


def leave(core: ChatCore, room: str, peer: bytes = A) -> None:
    send(core, {"type": "leave", "room": room}, peer)


@pytest.mark.parametrize("persistent", [False, True])
def test_a_room_nobody_is_in_is_put_to_rest_and_comes_back_with_its_seq(tmp_path: Path, persistent: bool) -> None:
    store = SqliteStore(tmp_path / "c.db") if persistent else MemoryStore()
    core = ChatCore(ChatConfig(max_rooms=2, rate_limit=0, source_rate=0), store=store)
    send(core, {"type": "hello", "user": "alice", "rooms": ["old"]})
    send(core, {"type": "msg", "room": "old", "text": "remember", "id": "r"})
    leave(core, "old")
    for n in range(5):  # many more rooms than memory is for, one after another
        assert join(core, f"room{n}")["type"] == "joined"
        leave(core, f"room{n}")
    assert len(core.rooms) <= 2 and "old" in core.resting
    snapshot = replies(send(core, {"type": "rooms"}))[0]["rooms"]
    assert snapshot["old"] == 3  # join, msg, leave: at rest, still in the snapshot
    history = replies(send(core, {"type": "history", "room": "old", "after": 0}))[0]
    assert history["seq"] == 3
    assert [e.get("text") for e in history["events"] if e["type"] == "msg"] == (["remember"] if persistent else [])
    back = join(core, "old")
    assert back["seq"] == 4  # the seq goes on: never given twice
    kept = [e.get("text") for e in back["history"] if e["type"] == "msg"]
    assert kept == (["remember"] if persistent else [])  # with a database its history came back from disk
    assert "old" not in core.resting


def test_rooms_with_people_in_them_are_never_put_to_rest() -> None:
    core = ChatCore(ChatConfig(max_rooms=2, rate_limit=0, source_rate=0))
    send(core, {"type": "hello", "user": "alice", "rooms": ["one", "two"]})
    assert join(core, "three")["code"] == "too_many_rooms"
    leave(core, "one")
    assert join(core, "three")["type"] == "joined"
    assert set(core.rooms) == {"two", "three"} and core.resting == {"one": 2}


def test_a_restart_with_more_rooms_than_memory_keeps_them_all_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    core = ChatCore(ChatConfig(max_rooms=100, rate_limit=0, source_rate=0), store=SqliteStore(path))
    send(core, {"type": "hello", "user": "alice", "rooms": [f"r{n}" for n in range(10)]})
    for n in range(10):
        send(core, {"type": "msg", "room": f"r{n}", "text": f"in r{n}", "id": f"m{n}"})
    core.commit()
    core.store.close()
    again = ChatCore(ChatConfig(max_rooms=3, rate_limit=0, source_rate=0), store=SqliteStore(path))
    assert len(again.rooms) == 3 and len(again.resting) == 7
    assert replies(send(again, {"type": "rooms"}))[0]["rooms"] == {f"r{n}": 2 for n in range(10)}
    # A resend after the restart is still recognised, in a room at rest too.
    send(again, {"type": "hello", "user": "alice", "rooms": ["r9"]}, B)
    ack = replies(send(again, {"type": "msg", "room": "r9", "text": "in r9", "id": "m9"}, B))
    assert ack == [{"type": "ack", "id": "m9", "room": "r9", "seq": 2}]


# --- the writer: commits off the broker's loop ---------------------------------------------------------


def rows_on_disk(path: Path) -> list[tuple[str, int]]:
    """What another process would find: a connection of its own."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT room, seq, first FROM events ORDER BY room, seq").fetchall()
        return [(room, seq) for room, last, first in rows for seq in range(first or last, last + 1)]  # runs, spread
    finally:
        db.close()


@pytest.fixture
def writer(tmp_path: Path):
    ctx = zmq.Context()
    store = SqliteStore(tmp_path / "w.db")
    w = Writer(store, ctx)
    yield store, w
    w.stop()
    store.close()
    ctx.term()


class Holder:
    """What a room is to ``SqliteStore.run``: it keeps the list its events go to."""

    unsealed: list[bytes] | None = None


def test_a_run_takes_appends_until_its_rows_are_taken_and_then_tells_its_holder(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "chat.db")
    general, dev = Holder(), Holder()
    store.run("general", 1, general).append(b'{"seq":1}')
    general.unsealed.append(b'{"seq":2}')  # the hot path: the list it holds, no call to the store
    store.run("dev", 7, dev).append(b'{"seq":7}')
    assert store.read("general", 0, 10) == [b'{"seq":1}', b'{"seq":2}'] and store.pending == 3
    batch = store.seal()
    assert general.unsealed is None and dev.unsealed is None  # the next event asks for a new run
    assert batch.rows == [("general", 2, b'{"seq":1}\n{"seq":2}', 1), ("dev", 7, b'{"seq":7}', None)]
    store.run("general", 3, general).append(b'{"seq":3}')
    store.run("general", 9, Holder()).append(b'{"seq":9}')  # a gap ends the run, whoever holds it
    store.db.execute("PRAGMA query_only = ON")  # a read-only disk: the commit fails, nothing is taken
    with pytest.raises(sqlite3.Error):
        store.commit()
    general.unsealed.append(b'{"seq":4}')  # still the run's list: kept, and stored with it
    store.db.execute("PRAGMA query_only = OFF")
    store.unseal()
    store.commit()
    assert general.unsealed is None
    assert rows_on_disk(store.path) == [("dev", 7)] + [("general", seq) for seq in (1, 2, 3, 4, 9)]
    store.close()


class RunsMachine(RuleBasedStateMachine):
    """Rooms append to the lists the store gives them (``SqliteStore.run``), as the core's hot path does, while
    batches are sealed, committed by a writer (a connection of its own) in order, or fail and are stored again
    on the loop, and rooms come back from rest with a new holder.  Whatever happens, reads find every event
    appended, in order, exactly once."""

    ROOMS = ("general", "dev")

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="runs-"))
        self.store = SqliteStore(self.folder / "chat.db")
        self.writer_db = sqlite3.connect(self.store.path, isolation_level=None)
        self.holders = {room: Holder() for room in self.ROOMS}
        self.events: dict[str, list[bytes]] = {room: [] for room in self.ROOMS}
        self.seq = dict.fromkeys(self.ROOMS, 0)
        self.first = dict.fromkeys(self.ROOMS, 1)  # a room's first seq: it may start anew after a gap
        self.sealed: list = []  # sealed, not yet committed by the writer, oldest first

    def teardown(self) -> None:
        self.writer_db.close()
        self.store.db.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(room=st.sampled_from(ROOMS), count=st.integers(1, 5), topic=st.booleans())
    def publish(self, room: str, count: int, topic: bool) -> None:
        holder = self.holders[room]
        for _ in range(count):
            seq = self.seq[room] = self.seq[room] + 1
            kind = b"topic" if topic else b"msg"
            payload = b'{"type":"%s","room":"%s","seq":%d}' % (kind, room.encode(), seq)
            (holder.unsealed or self.store.run(room, seq, holder)).append(payload)  # as ChatCore does
            self.events[room].append(payload)

    @rule(room=st.sampled_from(ROOMS), jump=st.integers(0, 3))
    def back_from_rest(self, room: str, jump: int) -> None:
        """The room was put to rest and comes back: a new holder, its seq going on (or, a gap, further)."""
        self.holders[room] = Holder()
        self.seq[room] += jump

    @rule()
    def seal(self) -> None:
        batch = self.store.seal()
        if batch is not None:
            self.sealed.append(batch)

    @rule()
    def writer_commits_the_oldest(self) -> None:
        if not self.sealed:
            return
        batch = self.sealed.pop(0)
        self.writer_db.execute("BEGIN")
        store_module.write(self.writer_db, batch.rows)
        self.writer_db.execute("COMMIT")
        self.store.written(batch)

    @rule()
    def commit_on_the_loop(self) -> None:
        """What putting a room to rest does: the store commits what was appended since the last seal."""
        self.store.commit()

    @rule()
    def the_writer_fails_and_the_loop_stores_it_all(self) -> None:
        """The writer failed: its batches come back (``unseal``); the loop's first try, on a read-only disk,
        fails and takes nothing; the next stores them with what was appended since."""
        self.store.unseal()
        self.sealed.clear()
        pending = self.store.pending
        self.store.db.execute("PRAGMA query_only = ON")
        try:
            self.store.commit()
            failed = False
        except sqlite3.Error:
            failed = True
        finally:
            self.store.db.execute("PRAGMA query_only = OFF")
        assert failed == (pending > 0) and self.store.pending == pending
        self.store.commit()

    @invariant()
    def every_event_is_read_once_in_order(self) -> None:
        for room in self.ROOMS:
            expected = self.events[room]
            assert self.store.read(room, 0, 10**6) == expected
            assert self.store.newest(room, 0, 10**6) == expected
            after = _seq(expected[len(expected) // 2]) if expected else 0  # from the middle on, too
            later = [e for e in expected if _seq(e) > after]
            assert self.store.read(room, after, 10**6) == later and self.store.newest(room, after, 10**6) == later
            assert self.store.last_seq(room) == (_seq(expected[-1]) if expected else 0)
            topics = [e for e in expected if e.startswith(store_module.TOPIC_EVENT)]
            assert self.store.topic(room) == (topics[-1] if topics else None)


def _seq(payload: bytes) -> int:
    return msgspec.json.decode(payload)["seq"]


RunsMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_rooms_appending_to_their_runs_lose_nothing_whatever_is_sealed_committed_or_failed = RunsMachine.TestCase


def test_sealed_rows_are_read_back_before_and_after_the_writer_commits_them(writer) -> None:
    store, w = writer
    store.append("general", 1, b'{"seq":1}')
    store.append("general", 2, b'{"seq":2}')
    batch = store.seal()
    store.append("general", 3, b'{"seq":3}')  # appended after the seal: pending
    assert store.read("general", 0, 10) == [b'{"seq":1}', b'{"seq":2}', b'{"seq":3}']
    assert store.last_seq("general") == 3 and store.first_pending("general") == 1 and store.pending == 3
    w.submit(batch)
    w.idle()
    assert batch.result is True and rows_on_disk(store.path) == [("general", 1), ("general", 2)]
    assert store.read("general", 0, 10) == [b'{"seq":1}', b'{"seq":2}', b'{"seq":3}']  # no row twice
    store.written(batch)
    assert store.first_pending("general") == 3 and store.pending == 1


def test_batches_are_committed_in_the_order_they_were_sealed(writer) -> None:
    store, w = writer
    batches = []
    for seq in range(1, 51):
        store.append("general", seq, b"{}")
        batches.append(store.seal())
        w.submit(batches[-1])
    w.idle()
    assert all(batch.result is True for batch in batches)
    assert rows_on_disk(store.path) == [("general", seq) for seq in range(1, 51)]


def test_after_a_failed_batch_every_later_one_fails_until_recovered_and_nothing_is_lost(writer) -> None:
    store, w = writer
    w.execute("PRAGMA query_only = ON")  # a read-only disk
    store.append("general", 1, b"{}")
    first = store.seal()
    store.append("general", 2, b"{}")
    second = store.seal()
    w.submit(first)
    w.submit(second)
    w.idle()
    assert isinstance(first.result, sqlite3.Error) and isinstance(second.result, sqlite3.Error)
    store.unseal()
    assert store.pending == 2 and rows_on_disk(store.path) == []
    store.commit()  # the broker retries on its own connection
    w.recover()
    assert rows_on_disk(store.path) == [("general", 1), ("general", 2)]
    w.execute("PRAGMA query_only = OFF")
    store.append("general", 3, b"{}")
    third = store.seal()
    w.submit(third)
    w.idle()
    assert third.result is True


def test_a_writer_that_died_before_it_was_told_of_batches_fails_them_and_the_broker_goes_on(
    writer, monkeypatch
) -> None:
    """Found in review: the broker abandons a dead writer (its socket closed), then waits for it (``idle``);
    telling it of the batches journaled since the last hand-over raised ``ZMQError`` on the closed socket, out
    of the broker's loop.  They fail instead (they are journaled: the broker stores them itself)."""
    import store_writer

    store, w = writer
    monkeypatch.setattr(store_writer, "GROUP_S", 3600.0)  # the second batch waits for the next hand-over
    batches = []
    for seq in (1, 2):
        store.append("general", seq, b"{}")
        batches.append(store.seal())
        w.submit(batches[-1])
    w.process.kill()
    w.process.wait()
    w.abandon()  # what the broker's check does when it finds the process gone
    w.idle()
    assert all(isinstance(batch.result, sqlite3.Error) for batch in batches if batch.result is not True)
    assert isinstance(batches[1].result, sqlite3.Error)


def test_the_writer_dies_with_its_broker_and_its_batches_fail(writer) -> None:
    store, w = writer
    w.process.kill()
    w.process.wait()
    store.append("general", 1, b"{}")
    batch = store.seal()
    w.submit(batch)
    w.idle()
    assert isinstance(batch.result, sqlite3.Error)


def on_disk(path: Path) -> list[tuple[str, int]]:
    """What a broker starting now would find: SQLite's rows and the journal's (another process's reading)."""
    journaled = journal.Journal(path).pending(0)
    rows = [row for _, frame, _ in journaled for row in store_module._row_spans(frame)]
    journaled_seqs = [(room, seq) for room, last, first, _, _ in rows for seq in range(first or last, last + 1)]
    return rows_on_disk(path) + journaled_seqs


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_a_broker_acks_only_what_another_process_can_already_read(tmp_path: Path, sync: str) -> None:
    """The guarantee, end to end through the broker's loop and its writer: every ack names an event on disk
    (``normal``: in the journal or SQLite; ``full``: in SQLite, flushed)."""
    from conftest import inproc_broker

    ctx = zmq.Context()
    path = tmp_path / "b.db"
    store = SqliteStore(path, sync)
    broker, _sub, dealer = inproc_broker(ctx, ChatCore(ChatConfig(rate_limit=0, source_rate=0), store=store), b"", A)
    assert broker.writer is not None
    dealer.send(msgspec.json.encode({"type": "hello", "user": "alice"}))
    for i in range(300):
        dealer.send(msgspec.json.encode({"type": "msg", "room": "general", "text": f"t{i}", "id": f"i{i}"}))
    acked: list[int] = []
    while len(acked) < 300:
        if broker.router.poll(0):
            broker.drain()
        if broker.written.poll(10):
            broker.on_written()  # the writer process answered
        while dealer.poll(0):
            for env in m.feed_events(dealer.recv()):
                if env["type"] == "ack":
                    assert ("general", env["seq"]) in (on_disk(path) if sync == "normal" else rows_on_disk(path)), env
                    acked.append(env["seq"])
    assert acked == sorted(acked)
    broker.stop()
    ctx.destroy(linger=0)


def test_a_commit_stores_each_rooms_consecutive_events_as_one_row_and_reads_them_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db")
    events = {seq: b'{"seq":%d,"pad":"%s"}' % (seq, b"p" * (seq % 7)) for seq in range(1, 301)}
    for seq, payload in events.items():
        store.append("general", seq, payload)
        store.append("dev", seq, payload)
    store.commit()
    (count,) = store.db.execute("SELECT COUNT(*) FROM events").fetchone()
    assert count == 2  # one run a room
    assert store.read("general", 0, 500) == list(events.values())
    assert store.read("general", 150, 3) == [events[151], events[152], events[153]]
    assert store.newest("dev", 290, 1 << 20) == [events[seq] for seq in range(291, 301)]
    assert list(store.events("dev", 298)) == [events[299], events[300]]
    assert store.rooms() == [("dev", 300), ("general", 300)] and store.last_seq("general") == 300


def test_a_seal_cuts_each_rooms_events_into_rows_at_a_gap_and_at_their_byte_bound(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    big = b"x" * (store_module.RUN_BYTES // 2)
    for room, seq, event in [
        ("a", 1, b"1"),
        ("b", 1, big),
        ("a", 2, b"2"),
        ("b", 2, big),
        ("a", 5, b"5"),
        ("b", 3, b"3"),
    ]:
        store.append(room, seq, event)
    batch = store.seal()
    assert batch is not None and store.pending == 6
    assert sorted(batch.rows) == [
        ("a", 2, b"1\n2", 1),
        ("a", 5, b"5", None),
        ("b", 1, big, None),
        ("b", 3, big + b"\n3", 2),
    ]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from([1, 100, 150, 4000, store_module.RUN_BYTES // 3, store_module.RUN_BYTES + 5]),
        min_size=1,
        max_size=600,
    )
)
def test_a_run_is_cut_into_rows_within_the_byte_bound_holding_every_event_in_order(sizes: list[int]) -> None:
    events = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    rows = list(store_module._stored_rows("r", 7, events))
    assert [e for _, last, payload, first in rows for _, e in store_module.events_of(last, payload, first)] == events
    seqs = [(first if first is not None else last, last) for _, last, _, first in rows]
    assert [a for a, _ in seqs] == [7] + [b + 1 for _, b in seqs[:-1]]  # consecutive, no seq twice or skipped
    assert all(len(payload) <= store_module.RUN_BYTES or first is None for _, _, payload, first in rows)


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.booleans(),  # a gap in the room's seqs before it
            st.lists(
                st.sampled_from([1, 300, 5000, store_module.RUN_BYTES // 2, store_module.RUN_BYTES + 1]),
                min_size=1,
                max_size=8,
            ),
        ),
        max_size=40,
    )
)
def test_a_commit_joins_each_rooms_consecutive_rows_within_the_byte_bound(batches) -> None:
    """The loop makes a row per batch; the commit stores each room's consecutive ones as one row (a row over
    about 1 KiB costs SQLite an overflow page of its own), never over the bound, losing or reordering nothing."""
    seqs: dict[str, int] = {}
    rows, events = [], []
    for room, gap, sizes in batches:
        first = seqs.get(room, 0) + 1 + gap
        payloads = [b"%s%d:" % (room.encode(), first + i) + b"x" * size for i, size in enumerate(sizes)]
        rows += list(store_module._stored_rows(room, first, payloads))
        events += [(room, first + i, p) for i, p in enumerate(payloads)]
        seqs[room] = first + len(payloads) - 1
    joined = store_module.joined_runs(rows)
    spread = [
        (room, seq, e)
        for room, last, payload, first in joined
        for seq, e in store_module.events_of(last, payload, first)
    ]
    assert sorted(spread) == sorted(events) and len(spread) == len(events)
    assert all(len(p) <= store_module.RUN_BYTES or f is None for _, _, p, f in joined)
    for room in seqs:  # as few rows as the gaps and the bound allow: no two consecutive rows fit in one
        mine = [(last if f is None else f, last, len(p)) for r, last, p, f in joined if r == room]
        for (_, end, size), (start, _, size2) in itertools.pairwise(mine):
            assert start > end + 1 or size + 1 + size2 > store_module.RUN_BYTES


def test_the_writer_indexes_journaled_batches_and_sqlite_holds_none_of_their_bytes(writer) -> None:
    """Each batch's rows say where in the journal their events are; history reads them back from there."""
    store, w = writer
    batches = []
    for seq in range(1, 41):
        store.append("general", seq, b'{"seq":%d}' % seq)
        store.append("dev", seq, b'{"seq":%d}' % seq)
        batches.append(store.seal())
    for batch in batches:
        w.submit(batch)
    w.idle()
    assert all(batch.result is True for batch in batches)
    db = sqlite3.connect(store.path)
    (count, stored_bytes, places, journaled_bytes) = db.execute(
        "SELECT COUNT(*), SUM(LENGTH(payload)), COUNT(DISTINCT log_offset), SUM(log_size) FROM events"
    ).fetchone()
    db.close()
    assert (count, stored_bytes, places) == (80, 0, 80)  # a row a room a batch, where its events are
    assert journaled_bytes == sum(len(b'{"seq":%d}' % seq) for seq in range(1, 41)) * 2
    for batch in batches:
        store.written(batch)
    assert store.read("dev", 10, 100) == [b'{"seq":%d}' % seq for seq in range(11, 41)]
    assert store.read("general", 0, 100) == [b'{"seq":%d}' % seq for seq in range(1, 41)]
    assert list(store.events("dev", 38)) == [b'{"seq":39}', b'{"seq":40}']
    assert store.newest("general", 0, 30) == [b'{"seq":38}', b'{"seq":39}', b'{"seq":40}']


def test_a_rows_newest_topic_is_kept_with_its_own_seq(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    events = [b'{"type":"msg","text":"{\\"type\\":\\"topic\\","}', b'{"type":"topic","topic":"old"}', b"{}"]
    events += [b'{"type":"topic","topic":"new"}', b'{"type":"msg"}']
    for seq, event in enumerate(events, 1):
        store.append("general", seq, event)
    store.commit()
    assert store.db.execute("SELECT seq, payload FROM topics").fetchall() == [(4, events[3])]
    assert store.topic("general") == events[3]
    store.close()


def test_a_journal_written_before_rows_is_still_taken_in(tmp_path: Path) -> None:
    """A broker of the version before kept its batches as ``[number, [[room, seq, event], ...]]``."""
    path = tmp_path / "j.db"
    store = SqliteStore(path)
    assert store.journal is not None
    store.journal.append(1, msgspec.msgpack.encode((1, [("general", 1, b"{}"), ("general", 2, b"[]")])))
    killed(store)
    again = SqliteStore(path)
    assert again.read("general", 0, 10) == [b"{}", b"[]"] and again.stored_batch == 1
    again.close()


def test_a_schema_2_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE events (room TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL,
                             PRIMARY KEY (room, seq)) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema', '2'), ('history_id', 'cafe');
        INSERT INTO events VALUES ('general', 1, X'7B7D'), ('general', 2, X'5B5D');
        """
    )
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert store.history_id == "cafe" and store.read("general", 0, 10) == [b"{}", b"[]"]
    store.append("general", 3, b"3")
    store.append("general", 4, b"4")
    store.commit()
    assert store.read("general", 1, 10) == [b"[]", b"3", b"4"]
    store.close()


def schema_4(path: Path) -> None:
    """A database as the broker before the journal's index left it: rows with their events, a journal."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE events (room TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, first INTEGER,
                             PRIMARY KEY (room, seq)) WITHOUT ROWID;
        CREATE TABLE topics (room TEXT PRIMARY KEY, seq INTEGER NOT NULL, payload BLOB NOT NULL);
        INSERT INTO meta VALUES ('schema', '4'), ('history_id', 'beef'), ('journal', '1');
        INSERT INTO events VALUES ('general', 2, X'7B7D0A5B5D', 1);
        """
    )
    db.commit()
    db.close()
    log = journal.Journal(path)
    log.append(2, store_module.batch_frame(2, [("general", 3, b'"3"', None)]))  # acked, not yet in SQLite
    log.close()


def test_a_schema_4_database_and_its_journal_are_taken_in_and_read_together(tmp_path: Path) -> None:
    schema_4(tmp_path / "c.db")
    store = SqliteStore(tmp_path / "c.db")
    assert store.history_id == "beef" and store.stored_batch == 2
    assert store.read("general", 0, 10) == [b"{}", b"[]", b'"3"']  # one row with its events, one indexed
    store.close()


def test_an_upgrade_cut_short_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """Found in review: each ``ALTER TABLE`` was a transaction of its own, and a kill between them left a file
    no later start could upgrade (``duplicate column name``).  The upgrade is one transaction now: here its
    third statement fails, and nothing of the first two stays."""
    path = tmp_path / "c.db"
    schema_4(path)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE events ADD COLUMN log_size INTEGER")  # in the way of the upgrade's third
    db.commit()
    db.close()
    with pytest.raises(sqlite3.OperationalError, match="duplicate column"):
        SqliteStore(path)
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
    assert columns == ["room", "seq", "payload", "first", "log_size"]
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("4",)
    db.close()


def test_a_deleted_database_starts_afresh_and_its_journal_is_set_aside(tmp_path: Path, caplog) -> None:
    """Found in review: the journal outlives the database file (it holds the events), and a new file beside
    it took the old history in again, under a new history id.  A deleted database starts every room at seq 1
    (``docs/protocol.md``); its journal is renamed out of the way and kept, and the log says so."""
    store = SqliteStore(tmp_path / "c.db")
    store.journal.append(1, store_module.batch_frame(1, [("general", 1, b"{}", None)]))
    killed(store)
    for leftover in tmp_path.glob("c.db*"):
        if "-log." not in leftover.name:
            leftover.unlink()
    again = SqliteStore(tmp_path / "c.db")
    assert again.rooms() == [] and again.read("general", 0, 10) == [] and again.stored_batch == 0
    assert [p.name.split(".orphaned-")[0] for p in tmp_path.glob("c.db-log.*")] == ["c.db-log.1"]
    assert journal.segments(tmp_path / "c.db") == [] and "of a deleted one" in caplog.text
    again.close()


# --- the journal (``--sync normal``): durable before SQLite has it ------------------------------------


def killed(store: SqliteStore) -> None:
    """What a kill -9 leaves: nothing committed or cleared on the way out; only the kernel's locks go."""
    if store.journal is not None:
        store.journal.close()
        store.records.close()
    store.db.close()
    os.close(store._lock)


def test_a_journaled_batch_sqlite_never_got_is_indexed_by_the_next_broker(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    store = SqliteStore(path)
    assert store.journal is not None and store.stored_batch == 0
    for number in (1, 2):
        rows = [("general", number, b'{"seq":%d}' % number, None)]
        store.journal.append(number, store_module.batch_frame(number, rows))
    killed(store)  # acked (the journal had them), never committed to SQLite
    assert rows_on_disk(path) == []
    again = SqliteStore(path)
    assert rows_on_disk(path) == [("general", 1), ("general", 2)]
    assert again.stored_batch == 2 and again.read("general", 0, 10) == [b'{"seq":1}', b'{"seq":2}']
    assert [path.name for path in tmp_path.glob("j.db-log.*")] == ["j.db-log.1"]  # it holds them
    killed(again)
    third = SqliteStore(path)  # taken in once: nothing twice
    assert rows_on_disk(path) == [("general", 1), ("general", 2)] and third.stored_batch == 2
    third.close()


def test_a_torn_record_ends_its_segment_and_what_sqlite_has_is_not_stored_again(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    store = SqliteStore(path)
    assert store.journal is not None
    frame = store_module.batch_frame
    store.journal.append(1, frame(1, [("general", 1, b"{}", None)]))
    store.db.execute("BEGIN")
    store_module.write(store.db, [("general", 1, b"{}", None)], 1)  # the writer had committed batch 1
    store.db.execute("COMMIT")
    store.journal.append(2, frame(2, [("general", 2, b"{}", None)]))
    killed(store)
    (segment,) = tmp_path.glob("j.db-log.*")
    with segment.open("ab") as f:  # a power cut's torn tail: a header and part of its payload
        f.write(journal.HEADER.pack(3, 100, 12345) + b"x" * 10)
    again = SqliteStore(path)
    assert rows_on_disk(path) == [("general", 1), ("general", 2)] and again.stored_batch == 2
    again.close()


def test_the_writer_numbers_batches_on_and_history_is_read_back_across_segments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 200)
    path = tmp_path / "w.db"
    ctx = zmq.Context()
    store = SqliteStore(path)
    store.stored_batch = 40  # as if 40 batches had been stored before
    w = Writer(store, ctx)
    batches = []
    for seq in range(1, 31):
        store.append("general", seq, b'{"text":"%s"}' % (b"x" * 50))
        batches.append(store.seal())
        assert w.submit(batches[-1]) is True  # durable at once: in the journal
    assert [b.number for b in batches] == list(range(41, 71))
    assert len(list(tmp_path.glob("w.db-log.*"))) > 5
    w.idle()
    for batch in batches:
        store.written(batch)
    assert rows_on_disk(path) == [("general", seq) for seq in range(1, 31)]
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'journal'").fetchone() == ("70",)
    db.close()
    w.stop()
    store.close()
    segments = len(list(tmp_path.glob("w.db-log.*")))
    again = SqliteStore(path)  # the segments are the history, and a start indexes nothing twice
    assert again.read("general", 0, 100) == [b'{"text":"%s"}' % (b"x" * 50)] * 30 and again.stored_batch == 70
    assert len(list(tmp_path.glob("w.db-log.*"))) == segments > 5
    again.close()
    ctx.term()


def test_batches_the_writer_could_not_read_are_never_read_again_after_it_recovers(tmp_path: Path) -> None:
    """A batch the writer cannot decode fails it and every batch it was told of with it (the broker stores them
    from memory); after ``recover`` it reads on from the next one: reading the rest again had stored an event
    twice, joined into a row with a newer seq."""
    import store_writer

    path = tmp_path / "c.db"
    SqliteStore(path, "normal").close()  # the schema
    log = journal.Journal(path)
    log.append(1, store_module.batch_frame(1, [("general", 1, b'{"seq":1}', None)]))
    log.append(2, msgspec.msgpack.encode([2, "not rows"]))  # intact (its CRC holds), but not a batch
    log.append(3, store_module.batch_frame(3, [("general", 3, b'{"seq":3}', None)]))
    answers = []

    class Answers:
        def send(self, frame: bytes) -> None:
            answers.append(store_writer._decode(frame))

    db = sqlite3.connect(path, isolation_level=None)
    tail = journal.Tail(path, 0)
    assert store_writer._commit(db, tail, 3, False, Answers()) is True  # failed
    assert answers[-1][0] == 3 and answers[-1][1]
    db.execute("BEGIN")  # the broker stores batches 1-3 itself, then tells the writer to recover
    events = [("general", seq, b'{"seq":%d}' % seq, None) for seq in (1, 2, 3)]
    store_module.write(db, events, 3)
    db.execute("COMMIT")
    log.append(4, store_module.batch_frame(4, [("general", 4, b'{"seq":4}', None)]))
    assert store_writer._commit(db, tail, 4, False, Answers()) is False
    indexed = db.execute("SELECT seq, first, log_segment IS NOT NULL FROM events ORDER BY seq").fetchall()
    assert indexed == [(3, 1, 0), (4, None, 1)]  # 1-3 stored by the broker, 4 indexed: each once
    tail.close()
    log.close()
    db.close()
    again = SqliteStore(path)
    assert again.read("general", 0, 10) == [b'{"seq":%d}' % seq for seq in (1, 2, 3, 4)]
    again.close()


def test_the_writer_takes_a_damaged_record_for_a_torn_one(tmp_path: Path) -> None:
    """``Tail`` checks each record's CRC, as a start does: a damaged batch fails (the broker stores it from
    memory) instead of being stored as what the bytes now say."""
    log = journal.Journal(tmp_path / "c.db")
    log.append(1, b"one")
    log.append(2, b"two")
    log.close()
    segment = journal.segments(tmp_path / "c.db")[0][1]
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # the last byte of record 2
    segment.write_bytes(data)
    tail = journal.Tail(tmp_path / "c.db", 0)
    with pytest.raises(OSError):
        [bytes(record) for _, record in tail.read(2)]
    tail.close()


def test_with_sync_full_a_batch_is_durable_only_once_the_writer_committed_it(tmp_path: Path) -> None:
    """The writer reads it from the journal either way; with ``full`` the ack waits for the commit (fsync)."""
    ctx = zmq.Context()
    store = SqliteStore(tmp_path / "f.db", "full")
    w = Writer(store, ctx)
    try:
        store.append("general", 1, b"{}")
        batch = store.seal()
        assert w.submit(batch) is False and not batch.durable  # its answer will say it is durable
        w.idle()
        assert batch.result is True and rows_on_disk(store.path) == [("general", 1)]
        store.written(batch)
    finally:
        w.stop()
        store.close()
        ctx.term()
    again = SqliteStore(tmp_path / "f.db", "full")
    assert again.read("general", 0, 10) == [b"{}"]  # from the journal, which SQLite's row points into
    again.close()


def test_after_a_failure_what_the_journal_has_counts_as_durable(tmp_path: Path) -> None:
    """While storage is failing, rooms and history show events up to the first one a crash could take
    back: journaled batches are not among them (a restart stores them), the batch the journal refused is."""
    store = SqliteStore(tmp_path / "c.db")
    try:
        store.append("general", 1, b"{}")
        journaled = store.seal()
        journaled.durable = True
        store.append("general", 2, b"{}")
        store.seal()  # the journal refused this one
        store.unseal()
        assert store.first_pending("general") == 2 and store.pending == 2
        store.commit()
        assert store.first_pending("general") is None and rows_on_disk(store.path) == [("general", 1), ("general", 2)]
    finally:
        store.close()


def test_the_writer_yields_the_cpu_while_it_keeps_up_and_takes_its_share_while_behind() -> None:
    """``store_writer.Yielding``: idle from the first hand-over, a fair share as soon as the broker says it is
    behind (a busy machine starved it), idle again only after keeping up for ``IDLE_AFTER_S``, twice as long
    after each time it fell behind anew."""
    policies: list[bool] = []
    yielding = Yielding(True, policies.append)
    yielding.told(False, 100.0)
    assert policies == [True]  # idle
    yielding.told(True, 102.0)
    assert policies == [True, False]  # behind: SCHED_BATCH
    yielding.told(True, 103.0)  # still behind: the same episode
    yielding.told(False, 103.0 + IDLE_AFTER_S - 0.1)
    assert policies == [True, False] and not yielding.idle
    yielding.told(False, 103.0 + IDLE_AFTER_S)
    assert policies == [True, False, True] and yielding.idle
    now = 200.0
    yielding.told(True, now)  # starved again: twice as long before it yields again
    yielding.told(False, now + IDLE_AFTER_S)
    assert policies == [True, False, True, False] and not yielding.idle
    yielding.told(False, now + 2 * IDLE_AFTER_S)
    assert yielding.idle
    for _ in range(20):  # a machine that stays busy: at most IDLE_AFTER_MAX_S between two starvations
        now += yielding.idle_after
        yielding.told(True, now)
    assert yielding.idle_after == IDLE_AFTER_MAX_S and not yielding.idle
    never: list[bool] = []
    stuck = Yielding(False, never.append)  # may not leave SCHED_IDLE: never enters it
    for behind in (False, True, False):
        stuck.told(behind, 0.0)
    assert never == [] and not stuck.idle


rows_strategy = st.lists(
    st.tuples(
        st.text(max_size=300),
        st.integers(0, 2**63 - 1),
        st.binary(max_size=70_000),
        st.none() | st.integers(-(2**63), 2**63 - 1),
    ),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(number=st.integers(0, 2**64 - 1), rows=rows_strategy, old=st.booleans())
def test_each_row_of_a_batch_frame_is_found_where_msgpack_put_it(number: int, rows: list, old: bool) -> None:
    """``located`` walks the frame by hand to index each row's bytes in place: it must agree with msgpack,
    for every size of every field (fixstr to str32, bin8 to bin32, every integer width), in both formats."""
    frame = (
        msgspec.msgpack.encode((number, [(room, last, payload) for room, last, payload, _ in rows]))
        if old
        else store_module.batch_frame(number, rows)
    )
    found = store_module.located(frame, (7, 100, len(frame) + journal.HEADER.size))
    assert len(found) == len(rows)
    for (room, last, payload, first), (index_row, _) in zip(rows, found, strict=True):
        i_room, i_last, i_first, segment, offset, size, crc = index_row
        start = offset - 100 - journal.HEADER.size
        assert (i_room, i_last, i_first, segment) == (room, last, None if old else first, 7)
        assert frame[start : start + size] == payload and crc == zlib.crc32(payload)


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=200) | rows_strategy.map(lambda rows: store_module.batch_frame(1, rows)[:-1]))
def test_a_frame_that_is_not_a_batch_is_a_value_error_never_another(frame: bytes) -> None:
    """The writer fails such a batch (the broker stores it from memory): anything but ``ValueError`` would end
    the writer process."""
    with contextlib.suppress(ValueError):
        store_module.located(frame, (1, 0, len(frame)))
