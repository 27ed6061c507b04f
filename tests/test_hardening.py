"""Hardening of the broker against hostile peers and failing storage: the crash barrier, range checks,
replies and history bounded in bytes, ids that cannot be reused for other messages, storage faults
that stop acks but lose nothing, one broker per database, and sessions bound to their CURVE key."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from conftest import ROOT, WAIT, Harness, free_port, inproc_broker

import keys
import messages as m
from broker import Broker
from chat import EVENT_OVERHEAD, ChatConfig, ChatCore, Publish, Reply
from store import SqliteStore, StoreInUse

A, B = b"conn-alice-00000", b"conn-bob-0000000"
UNLIMITED = {"rate_limit": 0.0, "source_rate": 0.0}


def send(core: ChatCore, env: Any, peer: bytes = A, now: float = 1.0) -> list:
    out = core.handle(peer, [msgspec.json.encode(env)], now)
    core.commit()
    return out


def replies(out: list) -> list[dict]:
    return [e for o in out if isinstance(o, Reply) for e in m.feed_events(o.payload)]


def published(out: list) -> list[dict]:
    return [e for o in out if isinstance(o, Publish) for e in m.feed_events(o.payload)]


def hello(core: ChatCore, user: str = "alice", peer: bytes = A, rooms: list[str] | None = None) -> None:
    env: dict[str, Any] = {"type": "hello", "user": user}
    if rooms is not None:
        env["rooms"] = rooms
    assert replies(send(core, env, peer))[0]["type"] == "welcome"


def msg(text: str, msg_id: str, room: str = "general", **extra: Any) -> dict:
    return {"type": "msg", "room": room, "text": text, "id": msg_id, **extra}


# --- the crash barrier ---------------------------------------------------------------------------


def test_an_unforeseen_exception_costs_one_request_not_the_broker(caplog: pytest.LogCaptureFixture) -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    hello(core)

    def broken(*args: Any) -> None:
        raise KeyError("a bug")

    core._handlers["who"] = broken
    with caplog.at_level(logging.ERROR, logger="chat"):
        for _ in range(3):
            (error,) = replies(send(core, {"type": "who", "room": "general", "id": "w1"}))
            assert error == {"type": "error", "code": "internal", "detail": error["detail"], "id": "w1"}
    assert len([r for r in caplog.records if "internal error" in r.getMessage()]) == 1  # logged once, then counted
    assert sum(core.internal_errors.values()) == 3
    assert replies(send(core, msg("still here", "m1")))[0]["type"] == "ack"


def test_the_barrier_holds_inside_a_batch_and_the_rest_of_the_batch_is_served() -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    hello(core)
    core._handlers["who"] = lambda *args: 1 / 0
    batch = [msg("one", "b1"), {"type": "who", "room": "general"}, msg("two", "b2")]
    got = replies(send(core, batch))
    assert [r.get("code", r["type"]) for r in got] == ["ack", "internal", "ack"]


@pytest.mark.parametrize("after", [2**63, 2**64, -1, 1.5, "9", None, 1e300])
def test_out_of_range_after_is_a_bad_field(after: Any) -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    (reply,) = replies(send(core, {"type": "history", "room": "general", "after": after}))
    assert reply.get("code") in ("bad_field", "bad_json") or (after is None and reply["type"] == "history")


@pytest.mark.parametrize("persistent", [False, True])
def test_the_largest_after_is_an_empty_history(tmp_path: Path, persistent: bool) -> None:
    store = SqliteStore(tmp_path / "c.db") if persistent else None
    core = ChatCore(ChatConfig(max_rooms=1, **UNLIMITED), store=store)
    hello(core, rooms=["quiet"])
    send(core, {"type": "leave", "room": "quiet"})
    send(core, {"type": "join", "room": "general"})  # puts "quiet" to rest: asked for, it comes from disk
    for room in ("general", "quiet", "nowhere"):
        (reply,) = replies(send(core, {"type": "history", "room": room, "after": m.MAX_SEQ}))
        assert reply["type"] == "history" and reply["events"] == []


# --- replies and history in bytes -----------------------------------------------------------------


def test_a_history_reply_is_cut_in_bytes_says_more_and_pages_to_the_end() -> None:
    core = ChatCore(ChatConfig(max_reply_bytes=8 * 1024, **UNLIMITED))
    hello(core)
    for i in range(40):
        send(core, msg("\x01" * 300 + str(i), f"m{i}"))  # ~1.8 KiB each once escaped
    seen, after, rounds = [], 0, 0
    while True:
        (reply,) = replies(send(core, {"type": "history", "room": "general", "after": after, "limit": 500}))
        rounds += 1
        events = reply["events"]
        assert len(msgspec.json.encode(events)) <= 8 * 1024 + 2048  # the budget, give or take the last event
        seen += [e["seq"] for e in events]
        if not reply.get("more"):
            break
        after = events[-1]["seq"]
    assert seen == list(range(1, 42)) and rounds > 3


def test_a_single_event_larger_than_the_budget_still_comes() -> None:
    core = ChatCore(ChatConfig(max_reply_bytes=1024, **UNLIMITED))
    hello(core)
    send(core, msg("x" * 3000, "big"))
    (reply,) = replies(send(core, {"type": "history", "room": "general", "after": 1}))
    assert [e["id"] for e in reply["events"]] == ["big"] and not reply.get("more")


def test_joined_history_keeps_the_newest_events_that_fit() -> None:
    core = ChatCore(ChatConfig(max_reply_bytes=4 * 1024, **UNLIMITED))
    hello(core)
    for i in range(20):
        send(core, msg("y" * 1000, f"m{i}"))
    out = send(core, {"type": "hello", "user": "bob"}, B)
    joined = replies(out)[1]
    seqs = [e["seq"] for e in joined["history"]]
    assert seqs and seqs[-1] == joined["seq"] and len(seqs) < 20  # the newest, up to bob's own join


def test_history_in_memory_is_bounded_per_room_and_older_events_come_from_disk(tmp_path: Path) -> None:
    cap = 64 * 1024
    core = ChatCore(ChatConfig(history_bytes_per_room=cap, **UNLIMITED), store=SqliteStore(tmp_path / "c.db"))
    hello(core)
    for i in range(200):
        send(core, msg("\x02" * 500 + str(i), f"m{i}"))
    room = core.rooms["general"]
    assert room.bytes <= cap and room.bytes == sum(len(p) + EVENT_OVERHEAD for p in room.history)
    assert len(room.history) < 200
    got, after = [], 0
    while True:
        (reply,) = replies(send(core, {"type": "history", "room": "general", "after": after, "limit": 500}))
        got += reply["events"]
        if not reply.get("more") and len(reply["events"]) < 500:
            break
        after = got[-1]["seq"]
    assert [e["seq"] for e in got] == list(range(1, 202))


def test_history_in_memory_is_bounded_in_total() -> None:
    total = 256 * 1024
    config = ChatConfig(history_bytes_per_room=64 * 1024, history_bytes_total=total, **UNLIMITED)
    core = ChatCore(config)
    hello(core, rooms=[f"r{i}" for i in range(10)])
    for i in range(400):
        send(core, msg("z" * 400, f"m{i}", room=f"r{i % 10}"))
    assert core.history_bytes <= total
    assert core.history_bytes == sum(r.bytes for r in core.rooms.values())


# --- ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "again",
    [
        msg("hello", "x1", room="dev"),  # another room
        msg("hello!", "x1"),  # another text
        msg("hello", "x1", me=True),  # an action instead
        {"type": "dm", "to": "bob", "text": "hello", "id": "x1"},  # a dm instead
    ],
)
def test_an_id_reused_for_another_message_is_refused_not_acked(again: dict) -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    hello(core, rooms=["general", "dev"])
    hello(core, "bob", B)
    ack = replies(send(core, msg("hello", "x1")))[0]
    out = send(core, again)
    assert [r.get("code") for r in replies(out)] == ["id_reused"] and published(out) == []
    assert replies(out)[0]["id"] == "x1"
    assert replies(send(core, msg("hello", "x1"))) == [ack]  # the true resend still gets its ack


def test_a_dm_resend_gets_its_ack_and_a_reuse_is_refused() -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    hello(core)
    hello(core, "bob", B)
    dm = {"type": "dm", "to": "Bob", "text": "psst", "id": "d1"}
    ack = replies(send(core, dm))[-1]
    assert replies(send(core, dm))[-1] == ack
    assert replies(send(core, {**dm, "text": "other"}))[-1]["code"] == "id_reused"


def test_other_users_cannot_push_a_recent_id_out(tmp_path: Path) -> None:
    core = ChatCore(ChatConfig(dedupe_per_user=4, dedupe_total=50, **UNLIMITED))
    hello(core)
    ack = replies(send(core, msg("mine", "v1")))[0]
    codes = []
    for i in range(30):  # 30 names, each saying a few things: far more than the total
        peer = b"conn-%03d-0000000" % i
        hello(core, f"u{i}", peer)
        codes += [r.get("code", r["type"]) for r in replies(send(core, msg("spam", f"s{i}"), peer))]
        send(core, {"type": "bye"}, peer)
    assert "unavailable" in codes  # the bound held, and it refused rather than forget
    out = send(core, msg("mine", "v1"))
    assert replies(out) == [ack] and published(out) == []


# --- storage faults ----------------------------------------------------------------------------------


@pytest.fixture(params=["normal", "full"])
def wired(tmp_path: Path, request: pytest.FixtureRequest):
    """A real ``Broker`` with a SQLite store (``--sync normal``: the journal makes a batch durable; ``full``:
    the writer's commit does), on inproc sockets, and a DEALER and SUB to talk to it."""
    ctx = zmq.Context()
    store = SqliteStore(tmp_path / "c.db", request.param)
    broker, sub, dealer = inproc_broker(ctx, ChatCore(ChatConfig(**UNLIMITED), store=store), b"room/", A)
    yield broker, dealer, sub
    if broker.writer is not None:
        broker.writer.stop()
    store.db.close()
    ctx.destroy(linger=0)


def ask(broker: Broker, dealer: zmq.Socket, env: dict) -> list[dict]:
    dealer.send(msgspec.json.encode(env))
    assert broker.router.poll(WAIT * 1000)
    broker.drain()
    broker.settle(WAIT)  # the store's writer committed what the request stored, and its outputs went
    got = []
    while dealer.poll(200):
        got += m.feed_events(dealer.recv())
    return got


class Disk:
    """Breaks and mends the broker's storage as a disk would: SQLite (its writer's connection) and the
    journal (its file descriptor swapped for one the kernel refuses writes on: read-only, or /dev/full)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.journal = broker.writer.journal
        self.fd = -1

    def break_journal(self, device: str) -> None:
        if self.journal is not None:  # its segment is open: the session's join is in it
            flags = os.O_WRONLY if device == "/dev/full" else os.O_RDONLY
            self.fd, self.journal._fd = self.journal._fd, os.open(device, flags)

    def mend_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal._fd = self.fd


def test_a_failing_disk_stops_acks_keeps_reads_and_loses_nothing(wired) -> None:
    broker, dealer, sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    while sub.poll(200):  # alice's join
        sub.recv_multipart()
    disk = Disk(broker)
    broker.writer.execute("PRAGMA query_only = ON")  # every write now fails, as on a read-only disk
    disk.break_journal("/dev/null")
    assert ask(broker, dealer, msg("kept?", "k1")) == []  # accepted, but neither acked nor published
    assert broker.core.unavailable is not None
    assert [r["code"] for r in ask(broker, dealer, msg("later", "k2"))] == ["unavailable"]
    (history,) = ask(broker, dealer, {"type": "history", "room": "general"})
    assert [e["type"] for e in history["events"]] == ["join"] and history["seq"] == 1  # not what is unstored
    (rooms,) = ask(broker, dealer, {"type": "rooms"})
    assert rooms["rooms"] == {"general": 1}
    assert [r["type"] for r in ask(broker, dealer, {"type": "ping"})] == ["pong"]
    assert not sub.poll(100)
    broker.writer.execute("PRAGMA query_only = OFF")  # the disk is back
    disk.mend_journal()
    broker.retry_storage()
    assert broker.core.unavailable is None
    got = []
    while dealer.poll(500):
        got += m.feed_events(dealer.recv())
    assert [r["type"] for r in got] == ["ack"] and got[0]["id"] == "k1"
    events = []
    while sub.poll(500):
        events += m.feed_events(sub.recv_multipart()[1])
    assert [e.get("id") for e in events if e["type"] == "msg"] == ["k1"]
    assert ask(broker, dealer, msg("later", "k2"))[0]["type"] == "ack"
    stored = broker.core.store.read("general", 0, 100)
    assert [m.decode(p).get("id") for p in stored if b'"msg"' in p] == ["k1", "k2"]


def test_a_full_disk_is_the_same(wired) -> None:
    broker, dealer, _sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    pages = broker.core.store.db.execute("PRAGMA page_count").fetchone()[0]
    broker.writer.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page (for the writer)
    disk = Disk(broker)
    disk.break_journal("/dev/full")
    got = []
    for i in range(200):
        got += ask(broker, dealer, msg("w" * 2000, f"f{i}"))
        if broker.core.unavailable:
            break
    assert broker.core.unavailable is not None
    assert "full" in broker.core.unavailable or "No space left" in broker.core.unavailable
    acked = {r["id"] for r in got if r["type"] == "ack"}
    broker.writer.execute("PRAGMA max_page_count = 1000000")
    disk.mend_journal()
    broker.retry_storage()
    while dealer.poll(500):
        acked |= {r["id"] for r in m.feed_events(dealer.recv()) if r["type"] == "ack"}
    stored = {m.decode(p).get("id") for p in broker.core.store.read("general", 0, 500)}
    assert acked and acked <= stored and f"f{i}" in acked  # the held one was stored and acked too


# --- one broker per database ---------------------------------------------------------------------------


def test_a_second_store_on_the_same_file_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import store, sys; s = store.SqliteStore({str(path)!r}); print('ok', flush=True); "
         "sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreInUse, match=f"pid {holder.pid}"):
            SqliteStore(path)
    finally:
        holder.stdin.close()
        holder.wait(WAIT)
    SqliteStore(path).close()  # free again once the holder is gone


def test_a_second_broker_on_the_same_database_says_who_has_it(harness: Harness) -> None:
    db = str(harness.tmp_path / "chat.db")
    first = harness.broker(db=db)
    second = subprocess.run(
        [sys.executable, "broker.py", "--router", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--db", db],
        cwd=ROOT, capture_output=True, text=True, timeout=WAIT * 3,
    )  # fmt: skip
    assert second.returncode == 1
    assert f"pid {first.popen.pid}" in second.stderr and "Traceback" not in second.stderr


def test_the_broker_says_how_many_connections_it_can_take(harness: Harness) -> None:
    broker = harness.broker()
    broker.expect(r"capacity:\s+about [\d,]+ connections \(open files limit [\d,]+\)")


# --- sessions bound to their CURVE key -----------------------------------------------------------------


def test_another_key_cannot_take_over_a_live_session(harness: Harness, tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keys.init(keydir)
    keys.add_user(keydir, "alice")
    keys.add_user(keydir, "mallory")
    broker = harness.broker("--curve", str(keydir))

    def dealer(name: str) -> zmq.Socket:
        ck = keys.client_keys(keydir / "broker.key", keydir / "users" / f"{name}.key_secret")
        sock = harness.ctx.socket(zmq.DEALER)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = ck
        sock.setsockopt(zmq.ROUTING_ID, b"victim-routing-id")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(broker.router)
        return sock

    def request(sock: zmq.Socket, env: dict) -> None:
        sock.send(msgspec.json.encode(env))

    def replies_of(sock: zmq.Socket, timeout: float) -> list[dict]:
        got = []
        while sock.poll(timeout * 1000):
            got += m.feed_events(sock.recv())
            timeout = 0.2
        return got

    alice = dealer("alice")
    request(alice, {"type": "hello", "user": "alice"})
    assert replies_of(alice, WAIT)[0]["type"] == "welcome"
    mallory = dealer("mallory")  # the same routing id, another key
    request(mallory, msg("I am alice", "evil-1"))
    request(mallory, {"type": "ping"})
    assert [r.get("code", r["type"]) for r in replies_of(mallory, 1.0)] in ([], ["session_exists", "pong"])
    request(alice, msg("still me", "a-1"))  # alice's session is still hers, and it works
    assert [r["type"] for r in replies_of(alice, WAIT)] == ["ack"]
    history = harness.raw(broker)
    del history  # a plain peer gets nothing from a CURVE broker: read the room through alice
    request(alice, {"type": "history", "room": "general"})
    texts = [e.get("text") for r in replies_of(alice, WAIT) for e in r.get("events", []) if e["type"] == "msg"]
    assert texts == ["still me"]


def test_a_trusted_gateways_connections_are_each_a_source_of_their_own() -> None:
    core = ChatCore(ChatConfig(rate_limit=0.0, max_sessions_per_source=1, trusted_sources=frozenset({"10.0.0.1"})))

    def hello_from(peer: bytes, user: str, address: str) -> str:
        out = core.handle(peer, [m.encode({"type": "hello", "user": user})], 0.0, address=address)
        return replies(out)[0].get("code", "welcome")

    assert [hello_from(b"gw-%d-0000000000" % i, f"web{i}", "10.0.0.1") for i in range(3)] == ["welcome"] * 3
    assert [hello_from(b"ip-%d-0000000000" % i, f"ip{i}", "10.0.0.2") for i in range(2)] == [
        "welcome",
        "too_many_sessions",
    ]


def test_a_client_whose_id_was_taken_sends_again_under_a_new_one(harness: Harness) -> None:
    import session
    from client import ChatClient

    broker = harness.broker()
    squatter = harness.raw(broker)  # had the name alice first, and used the id alice's client will draw
    squatter.request({"type": "hello", "user": "alice"})
    squatter.reply(), squatter.reply()
    squatter.request(msg("not alice's words", "drawn-1"))
    assert squatter.reply()["type"] == "ack"
    squatter.request({"type": "bye"})
    with ChatClient("alice", router=broker.router, pub=broker.pub) as alice:
        alice.session._ids = iter(["drawn-1", "drawn-2", "drawn-3"])
        alice.connect(timeout=WAIT)
        alice.say("general", "my own words")
        acks = []
        for event in alice.events(timeout=WAIT):
            if isinstance(event, session.Acked):
                acks.append(event)
                break
        assert [(a.ack.id, a.request.id, a.request.text) for a in acks] == [("drawn-2", "drawn-2", "my own words")]
    squatter.request({"type": "history", "room": "general"})
    texts = {e["id"]: e["text"] for e in squatter.reply()["events"] if e["type"] == "msg"}
    assert texts == {"drawn-1": "not alice's words", "drawn-2": "my own words"}


def test_a_client_that_lost_the_broker_waits_instead_of_spinning() -> None:
    from client import ChatClient

    with ChatClient("alice", router="tcp://127.0.0.1:9", pub="tcp://127.0.0.1:9") as alice:  # nobody there
        alice.session._last_heard -= 60.0
        alice.poll(0)  # notices the silence: the connection is lost
        assert not alice.connected
        now = time.monotonic()
        assert alice.session.next_deadline() > now  # the next wake-up is a ping or a hello, not a deadline long past


def test_closing_waits_while_a_rate_limited_backlog_is_still_being_acked(harness: Harness) -> None:
    from client import ChatClient

    broker = harness.broker("--rate-limit", "20", "--rate-burst", "10")
    with ChatClient("piper", router=broker.router, pub=broker.pub, ack_timeout=0.3) as piper:
        piper.connect(timeout=WAIT)
        ids = [piper.say("general", f"line {i}") for i in range(60)]  # three times what the bucket allows at once
        piper.close(flush_timeout=1.0)
        assert not piper.unacked
    reader = harness.raw(broker)
    reader.request({"type": "history", "room": "general", "limit": 500})
    said = [e["id"] for e in reader.reply()["events"] if e["type"] == "msg"]
    assert said == ids  # every line, once, in the order written


@pytest.mark.parametrize("trusted", [False, True])
def test_sources_are_the_addresses_libzmq_reports(harness: Harness, trusted: bool) -> None:
    # The broker's sockets are dual-stack: libzmq reports an IPv4 peer as ::ffff:127.0.0.1.
    extra = ["--trusted-source", "127.0.0.1"] if trusted else []
    broker = harness.broker("--max-sessions-per-source", "1", *extra)
    codes = []
    for name in ("first", "second"):
        peer = harness.raw(broker)
        peer.request({"type": "hello", "user": name})
        codes.append(peer.reply().get("code", "welcome"))
    assert codes == (["welcome", "welcome"] if trusted else ["welcome", "too_many_sessions"])


def test_every_dm_resend_gets_its_ack() -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    hello(core)
    hello(core, "bob", B)
    for i in range(2000):  # whatever bytes a fingerprint ends in
        dm = {"type": "dm", "to": "bob", "text": f"psst {i}", "id": f"d{i}"}
        assert replies(send(core, dm))[-1] == replies(send(core, dm))[-1]


def test_ids_restored_after_a_restart_keep_their_age(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    config = ChatConfig(dedupe_per_user=3, dedupe_total=8, **UNLIMITED)
    core = ChatCore(config, store=SqliteStore(path), now=0.0)
    for user, peer in (("alice", A), ("bob", B)):
        hello(core, user, peer)
        for i in range(3):
            send(core, msg(f"{user} {i}", f"{user}-{i}"), peer)
    core.store.close()
    day = 86_400.0  # a day later: every id is far older than ten minutes
    again = ChatCore(config, store=SqliteStore(path), now=100.0, wall_offset=day)  # a new monotonic clock
    hello(again, "carol", b"conn-carol-00000")
    (reply,) = replies(again.handle(b"conn-carol-00000", [m.encode(msg("new", "c-1"))], 101.0))
    assert reply["type"] == "ack"  # not "unavailable": old ids may be forgotten to make room


def test_rooms_at_rest_are_bounded_and_the_store_remembers_their_seqs(tmp_path: Path) -> None:
    config = ChatConfig(max_rooms=1, max_resting_rooms=2, **UNLIMITED)
    core = ChatCore(config, store=SqliteStore(tmp_path / "c.db"))
    hello(core, rooms=["r0"])
    for i in range(5):  # each new room puts the last one to rest
        send(core, msg(f"in r{i}", f"m{i}", room=f"r{i}"))
        send(core, {"type": "leave", "room": f"r{i}"})
        send(core, {"type": "join", "room": f"r{i + 1}"})
    assert len(core.resting) <= 2 and "r0" not in core.resting and "r0" not in core.rooms
    (history,) = replies(send(core, {"type": "history", "room": "r0"}))
    assert history["seq"] == 3 and [e["type"] for e in history["events"]] == ["join", "msg", "leave"]
    send(core, {"type": "leave", "room": "r5"})  # so r5 can go to rest for r0
    out = send(core, {"type": "join", "room": "r0"})
    assert [e["seq"] for e in published(out)] == [4]  # its seq goes on: never given twice


def test_a_fault_in_the_batched_hot_path_costs_that_request_and_the_acks_before_it_go_out() -> None:
    core = ChatCore(ChatConfig(**UNLIMITED))
    hello(core)
    real = m.MsgEvent

    def event(**fields: Any) -> m.MsgEvent:
        if fields["text"] == "boom":
            raise RuntimeError("a planted fault")
        return real(**fields)

    m_event, m.MsgEvent = m.MsgEvent, event
    try:
        out = send(core, [msg("one", "b1"), msg("boom", "b2"), msg("three", "b3")])
    finally:
        m.MsgEvent = m_event
    assert [r.get("code", r["type"]) for r in replies(out)] == ["ack", "internal", "ack"]
    assert [r.get("id") for r in replies(out)] == ["b1", "b2", "b3"]
    assert [e["text"] for e in published(out)] == ["one", "three"]


def test_a_logger_with_no_broker_says_so_and_what_to_check(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import logger
    from client import ChatClient

    monkeypatch.setattr(logger, "FIRST_NOTICE_S", 0.2)
    monkeypatch.setattr(logger, "WAITING_NOTICE_S", 0.2)
    conn = {"router": "tcp://127.0.0.1:9", "pub": "tcp://127.0.0.1:9", "curve": None}
    with ChatClient(None, router=conn["router"], pub=conn["pub"]) as client:
        calls = []
        connect = client.connect

        def connect_twice(timeout: float):
            calls.append(timeout)
            if len(calls) > 2:
                raise KeyboardInterrupt
            return connect(timeout=timeout)

        client.connect = connect_twice
        with pytest.raises(KeyboardInterrupt):
            logger.wait_for_broker(client, conn)
    notices = [line for line in capsys.readouterr().err.splitlines() if "no answer yet" in line]
    assert len(notices) == 2 and "tcp://127.0.0.1:9" in notices[0] and "--server-key" in notices[0]


def test_one_persons_lines_are_stored_in_the_order_written_across_a_broker_restart(harness: Harness) -> None:
    from client import ChatClient

    ends = {"router": f"tcp://127.0.0.1:{free_port()}", "pub": f"tcp://127.0.0.1:{free_port()}"}
    db = str(harness.tmp_path / "chat.db")
    unlimited = ("--rate-limit", "0", "--source-rate", "0")  # a line every 50 ms: faster than people type
    broker = harness.broker(*unlimited, db=db, **ends)
    with ChatClient("typist", ack_timeout=0.3, **ends) as typist:
        typist.connect(timeout=WAIT)
        ids = []
        for i in range(40):  # a line every 50 ms, the broker killed and started again in the middle
            ids.append(typist.say("general", f"line {i}"))
            typist.poll(0.05)
            if i == 10:
                broker.kill()
                broker.wait()
            if i == 20:
                broker = harness.broker(*unlimited, db=db, **ends)
        typist.close(flush_timeout=5.0)
        assert not typist.unacked
    reader = harness.raw(broker)
    reader.request({"type": "history", "room": "general", "limit": 500})
    assert [e["id"] for e in reader.reply()["events"] if e["type"] == "msg"] == ids


def test_joined_shows_its_history_even_when_memory_gave_it_up(tmp_path: Path) -> None:
    config = ChatConfig(history_bytes_per_room=64 * 1024, history_bytes_total=64 * 1024, **UNLIMITED)
    core = ChatCore(config, store=SqliteStore(tmp_path / "c.db"))
    hello(core, rooms=["busy", "other"])
    for i in range(20):
        send(core, msg(f"busy {i}", f"b{i}", room="busy"))
    for i in range(200):  # the total bound makes the least recently joined room give up its events
        send(core, msg("z" * 500, f"o{i}", room="other"))
    assert len(core.rooms["busy"].history) < 20
    send(core, {"type": "hello", "user": "bob"}, B)
    out = send(core, {"type": "join", "room": "busy"}, B)
    (joined,) = [r for r in replies(out) if r["type"] == "joined"]
    assert [e["id"] for e in joined["history"] if e["type"] == "msg"] == [f"b{i}" for i in range(20)]


def test_a_dead_store_writer_costs_no_acked_message_and_the_broker_commits_itself(wired) -> None:
    """kill -9 of the writer process alone: what it had not answered is held (writes refused meanwhile),
    then committed on the broker's loop, and acked; the broker goes on without a writer."""
    broker, dealer, _sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    broker.writer.process.kill()
    broker.writer.process.wait()
    dealer.send(msgspec.json.encode(msg("after the writer died", "w1")))
    assert broker.router.poll(WAIT * 1000)
    broker.drain()
    broker._check_writer()
    assert broker.writer is None and broker.core.unavailable is not None
    broker.retry_storage()
    got = []
    while dealer.poll(500):
        got += m.feed_events(dealer.recv())
    assert [(r["type"], r.get("id")) for r in got] == [("ack", "w1")]
    assert ask(broker, dealer, msg("and after", "w2"))[0]["type"] == "ack"  # committed on the loop now
    stored = [m.decode(p).get("id") for p in broker.core.store.read("general", 0, 100) if b'"msg"' in p]
    assert stored == ["w1", "w2"]


def acks(dealer: zmq.Socket) -> list[str]:
    """The ids of the acks waiting on ``dealer``."""
    acked = []
    while dealer.poll(0):
        acked += [r["id"] for r in m.feed_events(dealer.recv()) if r["type"] == "ack"]
    return acked


def test_what_waits_for_sqlite_is_bounded_in_bytes_and_the_loop_waits_for_the_writer_past_it(wired) -> None:
    """``--max-unstored-bytes``: past it the loop reads no more requests until the writer has caught up, so a
    disk slower than the inbox costs memory up to the bound (and one batch), then pushes back; nothing is lost
    or reordered."""
    broker, dealer, _sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    broker.max_unstored_bytes = 1
    for i in range(30):
        dealer.send(msgspec.json.encode(msg("x" * 200, f"u{i}")))
    acked: list[str] = []
    deadline = time.monotonic() + WAIT
    while len(acked) < 30 and time.monotonic() < deadline:
        broker.turn()  # reads only once the writer stored the batch before
        assert len(broker.core.store.sealed) <= 1
        acked += acks(dealer)
    broker.settle(WAIT)
    assert acked == [f"u{i}" for i in range(30)] and broker.unstored() == 0
    stored = [m.decode(p).get("id") for p in broker.core.store.read("general", 0, 100) if b'"msg"' in p]
    assert stored == acked


def test_a_hung_writer_stops_the_reading_not_the_heartbeats(wired) -> None:
    """A writer that never answers (SIGSTOP: a hung disk) holds the loop at the byte bound for as long as it
    hangs: requests wait in libzmq's queues, the loop's timers go on, and everything is answered, in order,
    once the writer moves again."""
    broker, dealer, _sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    broker.max_unstored_bytes = 1
    broker.writer.process.send_signal(signal.SIGSTOP)
    try:
        dealer.send(msgspec.json.encode(msg("first", "h0")))
        assert broker.router.poll(WAIT * 1000)
        broker.drain()  # one batch, and the bound is passed
        held = broker.unstored()
        for i in range(1, 6):
            dealer.send(msgspec.json.encode(msg("later", f"h{i}")))
        heartbeat = broker.core.next_heartbeat
        while broker.core.next_heartbeat == heartbeat:  # the loop goes on until a heartbeat is due and sent
            broker.turn()
        assert broker.unstored() == held and broker.router.poll(0)  # nothing more read; the rest still queued
    finally:
        broker.writer.process.send_signal(signal.SIGCONT)
    acked: list[str] = []
    deadline = time.monotonic() + WAIT
    while len(acked) < 6 and time.monotonic() < deadline:
        broker.turn()
        acked += acks(dealer)
    assert acked == [f"h{i}" for i in range(6)]


def test_a_writer_killed_between_its_commit_and_its_answer_stores_nothing_twice(wired) -> None:
    """The writer commits, then dies before the broker read its answer: the broker sees those batches as
    failed and stores them on its loop, but SQLite (read in the same transaction) says it has them: no event
    twice, writes accepted again at once, every ack sent once."""
    broker, dealer, _sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    for i in range(3):
        dealer.send(msgspec.json.encode(msg("committed", f"c{i}")))
    assert broker.router.poll(WAIT * 1000)
    broker.drain()
    broker.writer.hand_over()
    assert broker.written.poll(WAIT * 1000)  # committed and answered; the answer is left unread
    broker.writer.process.kill()
    broker.writer.process.wait()
    broker._check_writer()
    assert broker.writer is None and broker.core.unavailable is not None
    broker.retry_storage()
    assert broker.core.unavailable is None
    acked = []
    while dealer.poll(200):
        acked += [r["id"] for r in m.feed_events(dealer.recv()) if r["type"] == "ack"]
    assert [i for i in acked if i.startswith("c")] == ["c0", "c1", "c2"]
    assert ask(broker, dealer, msg("then", "c3"))[0]["type"] == "ack"
    ids = [m.decode(p).get("id") for p in broker.core.store.events("general", 0) if b'"msg"' in p]
    assert ids == ["c0", "c1", "c2", "c3"]


@pytest.mark.parametrize("writer", ["killed", "hung"])
def test_stopping_with_a_dead_or_hung_writer_ends_and_keeps_every_acked_event(wired, monkeypatch, writer) -> None:
    """The writer died (killed) or never answers (SIGSTOP: a hung disk) with batches not yet in SQLite: ``stop``
    finds it dead, or kills it after ``STOP_WAIT_S``, stores the rest on the loop and ends, instead of waiting
    for an answer that never comes."""
    import broker as broker_module

    monkeypatch.setattr(broker_module, "STOP_WAIT_S", 0.3)
    broker, dealer, _sub = wired
    ask(broker, dealer, {"type": "hello", "user": "alice"})
    broker.writer.process.send_signal(signal.SIGSTOP)  # nothing reaches SQLite from here on
    for i in range(3):
        dealer.send(msgspec.json.encode(msg("late", f"d{i}")))
    assert broker.router.poll(WAIT * 1000)
    broker.drain()
    assert broker.unstored() > 0
    if writer == "killed":
        broker.writer.process.kill()
        broker.writer.process.wait()
    path = broker.core.store.path
    broker.stop()
    assert broker.writer is None
    reopened = SqliteStore(path)
    try:
        ids = [m.decode(p).get("id") for p in reopened.events("general", 0) if b'"msg"' in p]
    finally:
        reopened.close()
    assert ids == ["d0", "d1", "d2"]
