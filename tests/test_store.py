"""The store and what the core does with it: restore after a restart, dedupe of resends, history from disk."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from chat import ChatConfig, ChatCore, Publish, Reply
from store import MemoryStore, SqliteStore, open_store

A = b"peer-a"


def send(core: ChatCore, env: dict, peer: bytes = A, now: float = 1.0) -> list:
    out = core.handle(peer, [orjson.dumps(env)], now)
    core.commit()
    return out


def replies(out: list) -> list[dict]:
    return [orjson.loads(o.payload) for o in out if isinstance(o, Reply)]


def published(out: list) -> list[dict]:
    return [orjson.loads(o.payload) for o in out if isinstance(o, Publish)]


def chat(core: ChatCore, texts: list[str], user: str = "alice") -> list[dict]:
    send(core, {"type": "hello", "user": user})
    return [replies(send(core, {"type": "msg", "room": "general", "text": t, "id": t}))[0] for t in texts]


def test_a_restarted_core_goes_on_from_the_stored_seq_and_history(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    core = ChatCore(store=SqliteStore(path))
    acks = chat(core, ["one", "two"])
    assert [a["seq"] for a in acks] == [2, 3]  # seq 1 is alice's join
    core.store.close()

    again = ChatCore(store=SqliteStore(path))
    assert again.rooms["general"].seq == 3
    assert [e.get("text") for e in map(orjson.loads, again.rooms["general"].history)] == [None, "one", "two"]
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


def test_the_dedupe_window_is_bounded() -> None:
    core = ChatCore(ChatConfig(dedupe_window=3, rate_limit=0))
    chat(core, [f"m{i}" for i in range(10)])
    assert len(core.acked) == 3


def test_history_older_than_memory_comes_from_disk(tmp_path: Path) -> None:
    core = ChatCore(ChatConfig(history_kept=5, history_on_join=2, rate_limit=0), store=SqliteStore(tmp_path / "c.db"))
    chat(core, [f"m{i}" for i in range(20)])
    reply = replies(send(core, {"type": "history", "room": "general", "after": 0, "limit": 500}))[0]
    assert [e["seq"] for e in reply["events"]] == list(range(1, 22))
    reply = replies(send(core, {"type": "history", "room": "general", "after": 3, "limit": 2}))[0]
    assert [e["seq"] for e in reply["events"]] == [4, 5]


def test_nothing_is_on_disk_before_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "chat.db")
    core = ChatCore(store=store)
    core.handle(A, [orjson.dumps({"type": "hello", "user": "alice"})], 1.0)
    assert SqliteStore(tmp_path / "chat.db").load(10).seqs == {}
    core.commit()
    assert SqliteStore(tmp_path / "chat.db").load(10).seqs == {"general": 1}


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
