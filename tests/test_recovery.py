"""Issue 3's guarantees under faults, with real processes: nothing acknowledged is lost or repeated."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import zmq
from conftest import WAIT, Harness, free_port, wait_for

import client
import messages as m
import session
from client import ChatClient

pytestmark = pytest.mark.timeout(90)


def fixed_endpoints() -> dict[str, str]:
    return {"router": f"tcp://127.0.0.1:{free_port()}", "pub": f"tcp://127.0.0.1:{free_port()}"}


def read_log(path: Path) -> list[dict]:
    """The complete lines of a log the logger may be writing to right now."""
    complete = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in complete]


def drain_acks(bot: ChatClient, timeout: float = 30.0) -> list[session.Acked]:
    """Run the bot until every message it sent is acknowledged; return the acks."""
    acks = []
    deadline = time.monotonic() + timeout
    while bot.unacked and time.monotonic() < deadline:
        acks += [e for e in bot.poll(0.05) if isinstance(e, session.Acked)]
    assert not bot.unacked, f"{len(bot.unacked)} messages never acknowledged"
    return acks


def say_many(bot: ChatClient, count: int, text: str) -> list[str]:
    """Send ``count`` messages, letting acks in whenever the client's unacked queue is half full."""
    ids = []
    for i in range(count):
        while len(bot.unacked) >= client.MAX_UNACKED // 2:
            bot.poll(0.01)
        ids.append(bot.say("general", f"{text} {i}"))
    return ids


def check_exactly_once(log: list[dict], user: str, ids: list[str]) -> None:
    """Every id once, and every room's seqs contiguous (no holes, no repeats)."""
    logged = [e["id"] for e in log if e["type"] == "msg" and e["user"] == user]
    assert sorted(logged) == sorted(ids), f"missing {set(ids) - set(logged)}, extra {len(logged) - len(set(logged))}"
    for room in {e["room"] for e in log}:
        seqs = [e["seq"] for e in log if e["room"] == room]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"#{room} seqs have holes or repeats"


def test_kill_9_and_restart_loses_nothing_acknowledged(harness: Harness) -> None:
    ends = fixed_endpoints()
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0", db=db, **ends)
    log_path = harness.tmp_path / "chat.jsonl"
    harness.logger(broker, "--out", str(log_path))
    ids, acks = [], []
    with ChatClient("bot", ack_timeout=0.5, **ends) as bot:
        bot.connect()
        for i in range(400):
            ids.append(bot.say("general", f"message {i}"))
            acks += [e for e in bot.poll(0) if isinstance(e, session.Acked)]
            if i == 200:
                broker.kill()  # SIGKILL, mid-stream: some messages handled, some committed, some not
                assert broker.wait() == -signal.SIGKILL
                broker = harness.broker("--rate-limit", "0", "--source-rate", "0", db=db, **ends)
        acks += drain_acks(bot)
        assert bot.sequencer.lost == 0
    # Each message acked (an ack may be repeated for a resend: the same seq both times).
    seq_of = {}
    for acked in acks:
        assert acked.request.id == acked.ack.id
        assert seq_of.setdefault(acked.ack.id, acked.ack.seq) == acked.ack.seq
    assert set(seq_of) == set(ids)
    # The logger, which saw the broker die and come back, has each exactly once, in order.
    log = wait_for(
        lambda: (lg := read_log(log_path)) and any(e["type"] == "leave" and e["user"] == "bot" for e in lg) and lg,
        what="the logger to catch up, up to the bot's leave",
    )
    check_exactly_once(log, "bot", ids)
    assert {e["seq"] for e in log if e["type"] == "msg"} == set(seq_of.values())
    # And the restarted broker's history agrees: seq went on from where it was.
    raw = harness.raw(broker)
    raw.request({"type": "rooms"})
    assert raw.reply()["rooms"]["general"] == max(e["seq"] for e in log if e["room"] == "general")


def test_sigterms_mid_stream_stop_cleanly_and_lose_nothing_acknowledged(harness: Harness) -> None:
    """A signal lands wherever the loop is: it only asks the loop to stop after its turn
    (``transport.StopSignals``), so a commit or a hand-over to the writer is never cut in half; each stop
    commits, the writer exits by itself, and every acked message is in the history once."""
    ends = fixed_endpoints()
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0", db=db, **ends)
    log_path = harness.tmp_path / "chat.jsonl"
    harness.logger(broker, "--out", str(log_path))
    ids = []
    with ChatClient("bot", ack_timeout=0.5, **ends) as bot:
        bot.connect()
        for i in range(600):
            ids.append(bot.say("general", f"message {i}"))
            bot.poll(0)
            if i % 150 == 149:
                broker.kill(signal.SIGTERM)
                assert broker.wait() == 0
                assert not re.search("writer did not (answer|exit)", broker.text()), broker.tail()
                broker = harness.broker("--rate-limit", "0", "--source-rate", "0", db=db, **ends)
        drain_acks(bot)
    log = wait_for(
        lambda: (lg := read_log(log_path)) and any(e["type"] == "leave" and e["user"] == "bot" for e in lg) and lg,
        what="the logger to catch up, up to the bot's leave",
    )
    check_exactly_once(log, "bot", ids)


def test_text_typed_while_the_broker_is_down_is_sent_when_it_is_back(harness: Harness) -> None:
    ends = fixed_endpoints()
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker(db=db, **ends)
    alice = harness.client(broker, "alice")
    bob = harness.client(broker, "bob")
    alice.send("before the crash")
    bob.expect(r"^alice: before the crash$")
    broker.kill()
    broker.wait()
    alice.expect(r"^\[system\] connection lost, reconnecting…$")
    bob.expect(r"^\[system\] connection lost, reconnecting…$")
    alice.send("typed while the broker was down")
    harness.broker(db=db, **ends)
    alice.expect(r"^\[system\] reconnected$")
    # bob's feed subscription outlives his session, so the line may come before or after his own notice.
    bob.expect_all({"[system] reconnected", "alice: typed while the broker was down"})
    # Exactly once: nothing was printed twice, and the earlier line was not replayed.
    assert bob.output(settle=0.5).count("alice: typed while the broker was down") == 1
    assert bob.output().count("alice: before the crash") == 1


def test_a_stopped_logger_still_writes_every_event_once_in_order(harness: Harness) -> None:
    # A small feed high-water mark, so the PUB really drops what the stopped logger cannot take.
    broker = harness.broker(
        "--rate-limit", "0", "--source-rate", "0", "--feed-hwm", "50", db=str(harness.tmp_path / "chat.db")
    )
    log_path = harness.tmp_path / "chat.jsonl"
    logger = harness.logger(broker, "--out", str(log_path))
    ends = {"router": broker.router, "pub": broker.pub}
    with ChatClient("flood", **ends) as bot:
        bot.connect()
        logger.kill(signal.SIGSTOP)  # stuck: its socket buffers fill, then the PUB drops its messages
        ids = say_many(bot, 20_000, "x" * 200 + " flood")
        drain_acks(bot, timeout=60)
        logger.kill(signal.SIGCONT)
        log = wait_for(
            lambda: (lg := read_log(log_path)) and sum(e["type"] == "msg" for e in lg) >= len(ids) and lg,
            timeout=60,
            what="the logger to catch up",
        )
    check_exactly_once(log, "flood", ids)
    logger.kill(signal.SIGTERM)
    assert logger.wait() == 0
    filled = int(logger.expect(r"(\d+) events were fetched from history, 0 were lost").group(1))
    assert filled > 0, "the PUB dropped nothing, so this test proved nothing"


def test_a_restarted_logger_resumes_without_repeats_or_gaps(harness: Harness) -> None:
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0")
    log_path = harness.tmp_path / "chat.jsonl"
    logger = harness.logger(broker, "--out", str(log_path))
    ends = {"router": broker.router, "pub": broker.pub}
    with ChatClient("talker", **ends) as bot:
        bot.connect()
        first = [bot.say("general", f"first {i}") for i in range(50)]
        drain_acks(bot)
        wait_for(lambda: sum(e["type"] == "msg" for e in read_log(log_path)) == 50, what="the first 50")
        logger.kill()
        logger.wait()
        with log_path.open("ab") as f:
            f.write(b'{"type":"msg","room":"gen')  # a line torn by the kill
        second = [bot.say("general", f"second {i}") for i in range(50)]
        drain_acks(bot)
        harness.logger(broker, "--out", str(log_path))
        third = [bot.say("general", f"third {i}") for i in range(50)]
        drain_acks(bot)
        log = wait_for(
            lambda: (lg := read_log(log_path)) and sum(e["type"] == "msg" for e in lg) >= 150 and lg,
            what="the restarted logger to catch up",
        )
    check_exactly_once(log, "talker", first + second + third)


def test_a_logger_restarted_after_the_history_started_over_logs_the_new_one(harness: Harness) -> None:
    """With no database a restarted broker starts every room at seq 1 again.  A logger that was stopped
    meanwhile must not take the new events for ones it has (same seqs): it logs the new history too."""
    ends = fixed_endpoints()
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0", **ends)
    log_path = harness.tmp_path / "chat.jsonl"
    logger = harness.logger(broker, "--out", str(log_path))
    with ChatClient("talker", **ends) as bot:
        bot.connect()
        for i in range(20):
            bot.say("general", f"old {i}")
        drain_acks(bot)
        wait_for(lambda: sum(e["type"] == "msg" for e in read_log(log_path)) == 20, what="the old 20")
        logger.kill(signal.SIGTERM)
        assert logger.wait() == 0
        broker.kill()
        broker.wait()
        broker = harness.broker(
            "--rate-limit", "0", "--source-rate", "0", **ends
        )  # the same endpoints, an empty history
        wait_for(
            lambda: bot.poll(0.05) is not None and bot.user is not None and "general" in bot.rooms,
            what="the bot to be back in #general",
        )
        for i in range(5):
            bot.say("general", f"new {i}")  # seqs the old history had too
        drain_acks(bot)
        harness.logger(broker, "--out", str(log_path))
        log = wait_for(
            lambda: (lg := read_log(log_path)) and sum(e["type"] == "msg" for e in lg) >= 25 and lg,
            what="the restarted logger to log the new history",
        )
    logged = [e["text"] for e in log if e["type"] == "msg"]
    assert logged == [f"old {i}" for i in range(20)] + [f"new {i}" for i in range(5)]


def test_sigterm_commits_tells_the_feed_and_exits_promptly(harness: Harness) -> None:
    ends = fixed_endpoints()
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker(db=db, **ends)
    alice = harness.client(broker, "alice")
    raw = harness.raw(broker)
    raw.wait_subscribed()
    alice.send("remember me")
    raw.feed(lambda e: e.get("text") == "remember me")
    broker.kill(signal.SIGTERM)
    assert broker.wait() == 0
    assert not re.search("writer did not (answer|exit)", broker.text()), broker.tail()  # nothing killed
    alice.expect(r"^\[system\] the broker is shutting down")
    broker = harness.broker(db=db, **ends)
    alice.expect(r"^\[system\] reconnected$")
    bob = harness.client(broker, "bob")
    bob.expect(r"^alice: remember me$")  # the history survived, shown to a newcomer


def test_a_writer_hung_from_its_start_holds_up_nothing_and_leaves_nothing_in_tmp(harness: Harness) -> None:
    """The writer binds its socket and the broker connects, so orders queue from the start: a writer stuck
    before it could bind (a hung disk; SIGSTOP here, most likely during its start) no longer blocked the loop's
    first hand-over, and with it every request.  Once connected, the writer removes its socket's file."""
    broker = harness.broker(db=str(harness.tmp_path / "chat.db"))
    writer = broker.writer_pid
    cmdline = wait_for(
        lambda: b"store_writer.py" in (line := Path(f"/proc/{writer}/cmdline").read_bytes()) and line,
        what="the writer's exec",
    )
    os.kill(writer, signal.SIGSTOP)
    endpoint = cmdline.split(b"\0")[4].decode()  # python store_writer.py DB SYNC ENDPOINT
    try:
        with ChatClient("alice", router=broker.router, pub=broker.pub) as bot:
            bot.connect()
            bot.say("general", "acked while the writer hung")
            drain_acks(bot)
    finally:
        os.kill(writer, signal.SIGCONT)
    socket_dir = Path(endpoint.removeprefix("ipc://")).parent
    # Continued, it may be under SCHED_IDLE: it runs on CPU time nothing else wants, slow on a busy machine.
    wait_for(lambda: not socket_dir.exists(), timeout=45, what=f"the writer to remove {socket_dir}")


def test_asked_again_while_a_hung_writer_holds_the_stop_it_stops_at_once_and_loses_nothing(
    harness: Harness,
) -> None:
    """A stop waits up to ``STOP_WAIT_S`` for a writer that does not answer; whoever signals again does not
    want to wait: the broker stops at once.  What was acked is in the journal, and the next start stores it."""
    ends = fixed_endpoints()
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker(db=db, **ends)
    writer = broker.writer_pid
    try:
        with ChatClient("alice", **ends) as bot:
            bot.connect()
            os.kill(writer, signal.SIGSTOP)  # hung: commits nothing, answers nothing, and does not exit
            bot.say("general", "acked while the writer hung")
            drain_acks(bot)
        broker.kill(signal.SIGTERM)
        broker.expect(r"chat broker stopping")  # waiting for the writer (``STOP_WAIT_S``)
        broker.kill(signal.SIGTERM)  # once: a third, while the interpreter exits, finds the default action
        assert broker.wait() == 0
        assert "stopping at once" in broker.text(), broker.tail()
    finally:
        os.kill(writer, signal.SIGKILL)  # already gone with its parent (PR_SET_PDEATHSIG), or not: the same
    broker = harness.broker(db=db, **ends)
    bob = harness.client(broker, "bob")
    bob.expect(r"^alice: acked while the writer hung$")


def test_own_event_on_the_feed_stands_in_for_a_lost_ack() -> None:
    """libzmq drops replies not yet read when the broker's connection breaks; the feed event still
    proves the commit, so the client must not resend (a broker with no database would publish it twice).

    The broker here is a script on real sockets that publishes the message and never acks it.
    """
    ctx = zmq.Context()
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    router_port, pub_port = router.bind_to_random_port("tcp://127.0.0.1"), pub.bind_to_random_port("tcp://127.0.0.1")
    bot = ChatClient(
        "alice",
        router=f"tcp://127.0.0.1:{router_port}",
        pub=f"tcp://127.0.0.1:{pub_port}",
        context=ctx,
        ack_timeout=0.2,
        ping_interval=5.0,
    )
    try:
        hello: dict = {}  # the session says hello from the start; the first poll sends it
        deadline = time.monotonic() + WAIT
        while not hello and time.monotonic() < deadline:  # the client says hello again until one gets through
            bot.poll(0.05)
            while router.poll(0):  # a ping may come first
                peer, frame = router.recv_multipart()
                request = json.loads(frame)
                if request["type"] == "hello":
                    hello = request
        assert hello["type"] == "hello"
        welcome = {"type": "welcome", "user": "alice", "rooms": ["general"], "epoch": "e1", "heartbeat": 5.0}
        joined = {"type": "joined", "room": "general", "users": ["alice"], "history": [], "seq": 0}
        for reply in (welcome, joined):
            router.send_multipart([peer, json.dumps(reply).encode()])
        deadline = time.monotonic() + WAIT
        while bot.user is None and time.monotonic() < deadline:
            bot.poll(0.05)
        msg_id = bot.say("general", "hi")
        event = {"type": "msg", "room": "general", "user": "alice", "text": "hi", "id": msg_id, "seq": 1, "ts": 1.0}
        acks: list[session.Acked] = []
        deadline = time.monotonic() + WAIT
        while not acks and time.monotonic() < deadline:  # until the SUB's subscription has landed
            pub.send_multipart([b"room/general/", json.dumps(event).encode()])
            acks = [e for e in bot.poll(0.05) if isinstance(e, session.Acked)]
        assert len(acks) == 1
        assert acks[0].ack == m.Ack(id=msg_id, room="general", seq=1)
        assert acks[0].request.id == msg_id and acks[0].request.text == "hi"
        assert not bot.unacked
        # Well past the ack timeout, the broker has seen the msg once and no resend.
        seen = []
        deadline = time.monotonic() + 5 * bot.ack_timeout
        while time.monotonic() < deadline:
            bot.poll(0.05)
            while router.poll(0):
                seen.append(json.loads(router.recv_multipart()[1])["type"])
        assert seen.count("msg") == 1, seen
    finally:
        bot.close(flush_timeout=0)
        ctx.destroy(linger=0)


def test_a_broker_restart_does_not_announce_everyone_as_joining(harness: Harness) -> None:
    ends = fixed_endpoints()
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker(db=db, **ends)
    alice = harness.client(broker, "alice")
    bob = harness.client(broker, "bob")
    alice.expect(r"^\[join\] bob joined the chat$")  # a real join is news
    broker.kill()
    broker.wait()
    broker = harness.broker(db=db, **ends)
    alice.expect(r"^\[system\] reconnected$")
    bob.expect(r"^\[system\] reconnected$")
    bob.send("still here")
    alice.expect(r"^bob: still here$")
    assert not [line for line in alice.lines if "[join] bob" in line][1:]  # only the first, real one


def test_a_restarted_logger_logs_quiet_rooms_and_rooms_made_while_it_was_down(harness: Harness) -> None:
    broker = harness.broker(db=str(harness.tmp_path / "chat.db"))
    ends = {"router": broker.router, "pub": broker.pub}
    with ChatClient("talker", rooms=["quiet", "general"], **ends) as bot:
        bot.connect()
        bot.say("quiet", "before the logger")
        drain_acks(bot)
        log_path = harness.tmp_path / "chat.jsonl"
        logger = harness.logger(broker, "--out", str(log_path))
        bot.say("general", "while logging")  # the log has lines of #general only; #quiet stays quiet
        drain_acks(bot)
        wait_for(lambda: any(e.get("text") == "while logging" for e in read_log(log_path)), what="a line")
        logger.kill(signal.SIGTERM)
        assert logger.wait() == 0
        bot.say("quiet", "in the quiet room, while the logger was down")
        bot.join("made-meanwhile")
        bot.say("made-meanwhile", "in a room made while the logger was down")
        drain_acks(bot)
    harness.logger(broker, "--out", str(log_path))
    texts = {"in the quiet room, while the logger was down", "in a room made while the logger was down"}
    wait_for(lambda: texts <= {e.get("text") for e in read_log(log_path)}, what="both")
    logged = [e.get("text") for e in read_log(log_path) if e["type"] == "msg"]
    assert "before the logger" not in logged  # the log still begins where the logger first started
    assert len(logged) == len(set(logged))  # nothing twice


def test_no_session_answers_to_a_whole_frame_keep_every_message_for_the_resend() -> None:
    """A frame sent before the client knew its broker restarted is answered ``no_session`` request by
    request.  The first answer starts the session again; the others must not be taken as final refusals:
    every message is kept and sent again, in order, after the new welcome.  (Seen in the kill -9 test
    under load: 255 of a 256-message frame were dropped as ``Failed``.)"""
    bot = session.ClientSession("bot", 0.0)
    welcome = {"type": "welcome", "user": "bot", "rooms": ["general"], "epoch": "e1"}
    bot.reply(m.encode([welcome, {"type": "joined", "room": "general", "users": ["bot"], "seq": 0}]), 0.1)
    first = bot.say("general", "one", 0.2)
    ids = [bot.say("general", text, 0.2) for text in ("two", "three", "four")]
    bot.reply(m.encode({"type": "ack", "id": first, "room": "general", "seq": 1}), 0.3)
    bot.outbox.clear()
    bot.take_events()
    refusals = [{"type": "error", "code": "no_session", "detail": "say hello first", "id": i} for i in ids]
    bot.reply(m.encode(refusals), 0.4)  # the new broker run knows no session of ours
    assert not [e for e in bot.take_events() if isinstance(e, session.Failed)]
    assert [said.text for said in bot.queue.values()] == ["two", "three", "four"]
    assert [json.loads(frame)["type"] for frame in bot.outbox] == ["hello"]
    bot.outbox.clear()
    bot.reply(m.encode(dict(welcome, epoch="e2")), 0.5)
    resent = [json.loads(frame) for frame in bot.outbox]
    assert [env["id"] for frame in resent for env in (frame if isinstance(frame, list) else [frame])] == ids


def test_a_kill_9_while_sqlite_lags_behind_the_journal_loses_nothing_acknowledged(harness: Harness) -> None:
    """The worst moment for ``--sync normal``: messages acked from the journal, none of them in SQLite yet (its
    writer process is stopped), and the broker is killed.  The next broker indexes them from the journal first."""
    ends = fixed_endpoints()
    db = harness.tmp_path / "chat.db"
    broker = harness.broker("--rate-limit", "0", "--source-rate", "0", db=str(db), **ends)
    writer_pid = broker.writer_pid
    raw = harness.raw(broker)
    raw.request({"type": "hello", "user": "bot"})
    assert raw.reply()["type"] == "welcome"
    os.kill(writer_pid, signal.SIGSTOP)  # SQLite gets nothing from now on
    for i in range(50):
        raw.request({"type": "msg", "room": "general", "text": f"journaled {i}", "id": f"j{i}"})
    acks: list[dict] = []
    while len(acks) < 50:
        acks += [r for r in raw.replies() if r["type"] == "ack"]
    assert [a["id"] for a in acks] == [f"j{i}" for i in range(50)]
    assert list(db.parent.glob("chat.db-log.*")), "the acked batches are in the journal"
    broker.kill()  # the writer dies with it (PR_SET_PDEATHSIG), stopped or not
    broker.wait()
    wait_for(lambda: not Path(f"/proc/{writer_pid}").exists(), what="the writer process to be gone")
    again = harness.broker(db=str(db), **ends)
    assert any(re.search(r"indexed \d+ batch(es)? from the journal that SQLite", line) for line in again.output())
    peer = harness.raw(again)
    peer.request({"type": "history", "room": "general", "after": 0, "limit": 100})
    history = peer.reply()
    said = [e["id"] for e in history["events"] if e["type"] == "msg"]
    assert said == [f"j{i}" for i in range(50)]
    assert {e["seq"] for e in history["events"] if e["type"] == "msg"} == {a["seq"] for a in acks}
