"""The whole chat with real processes: a broker, console clients and a logger on real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Harness, Proc, wait_for

from broker import STOP_WAIT_S
from client import ChatClient
from store_writer import can_leave_idle

pytestmark = pytest.mark.timeout(60)


def test_three_clients_and_a_logger_chat(harness: Harness) -> None:
    broker = harness.broker()
    log_path = harness.tmp_path / "chat.jsonl"
    logger = harness.logger(broker, "--out", str(log_path))
    alice = harness.client(broker, "alice")
    bob = harness.client(broker, "bob")
    alice.expect(r"^\[join\] bob joined the chat$")
    carol = harness.client(broker, "carol")
    alice.expect(r"^\[join\] carol joined the chat$")
    bob.expect(r"^\[join\] carol joined the chat$")

    # Broadcast: everyone else sees it exactly as the original chat printed it.
    alice.send("Hello everyone")
    bob.expect(r"^alice: Hello everyone$")
    carol.expect(r"^alice: Hello everyone$")

    # Private: only bob sees it; the sender gets a confirmation line.
    alice.send("/msg bob the password is swordfish")
    bob.expect(r"^\[dm\] alice: the password is swordfish$")
    alice.expect(r"^\[dm -> bob\] the password is swordfish$")

    # Rooms: lines of the current room read as before, another room's carry its name; who is in it is answered.
    bob.send("/join dev")
    bob.expect(r"^\[system\] you are in #dev \(1 here: bob\)$")
    carol.send("/join dev")
    bob.expect(r"^\[join\] carol joined the room$")
    bob.send("standup in 5")
    carol.expect(r"^bob: standup in 5$")
    carol.send("/me nods")
    bob.expect(r"^\* carol nods$")
    carol.send("/who")
    carol.expect(r"^\[who\] #dev: bob, carol \(2\)$")
    carol.send("/rooms")
    carol.expect(r"^\[rooms\] #general, #dev \(current\)$")

    # /quit: the others see the original leave notice.
    alice.send("/quit")
    assert alice.wait() == 0
    bob.expect(r"^#general \[leave\] alice left the chat$")
    carol.expect(r"^#general \[leave\] alice left the chat$")

    # Nobody sees their own lines echoed back, and alice's room lines never reach general-only alice.
    assert "bob: standup in 5" not in "\n".join(bob.output())
    assert not [line for line in alice.output() if "alice: Hello everyone" in line]
    assert not [line for line in alice.output() if "#dev" in line]

    # The logger wrote the public conversation in seq order per room, and nothing private.
    carol.send("/quit")
    logger_lines = _wait_for_log(
        log_path,
        lambda events: any(e["type"] == "leave" and e["user"] == "carol" and e["room"] == "dev" for e in events),
    )
    texts = [e.get("text") for e in logger_lines if e["type"] == "msg"]
    assert texts == ["Hello everyone", "standup in 5", "nods"]
    assert "swordfish" not in log_path.read_text()
    assert not [line for line in carol.output() if "swordfish" in line]
    for room in ("general", "dev"):
        seqs = [e["seq"] for e in logger_lines if e["room"] == room]
        assert seqs == list(range(1, len(seqs) + 1)), (room, seqs)
    assert logger.popen.poll() is None


def _wait_for_log(path, done, timeout: float = 10.0) -> list[dict]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        complete = path.read_text().split("\n")[:-1] if path.exists() else []  # the logger may be mid-line
        events = [json.loads(line) for line in complete]
        if done(events):
            return events
        time.sleep(0.05)  # polling a file the logger appends to; the condition, not the sleep, synchronises
    raise AssertionError(f"log never reached the expected state:\n{path.read_text() if path.exists() else ''}")


def test_history_on_join_and_name_rules(harness: Harness) -> None:
    broker = harness.broker()
    alice = harness.client(broker, "alice")
    raw = harness.raw(broker)
    raw.wait_subscribed()
    alice.send("first words")
    alice.send("second words")
    raw.feed(lambda e: e.get("text") == "second words")
    raw.request({"type": "history", "room": "general", "after": 0})
    assert [e.get("text") for e in raw.reply()["events"] if e["type"] == "msg"] == ["first words", "second words"]

    # bob joins later and is shown the recent conversation.
    bob = harness.client(broker, "bob")
    bob.expect(r"^alice: first words$")
    bob.expect(r"^alice: second words$")

    # The name is taken, also in another case; a piped client says so and exits non-zero.
    for taken in ("alice", "ALICE"):
        imposter = Proc(["client.py", *broker.endpoints, "--name", taken], "imposter")
        harness.procs.append(imposter)
        imposter.expect(r"\[error\] .* \(name_taken\)")
        assert imposter.wait() == 2
    bad = Proc(["client.py", *broker.endpoints, "--name", "no spaces"], "bad")
    harness.procs.append(bad)
    bad.expect(r"\(bad_name\)")
    assert bad.wait() == 2


def test_name_is_asked_for_when_not_given(harness: Harness) -> None:
    broker = harness.broker()
    proc = Proc(["client.py", *broker.endpoints], "asked")
    harness.procs.append(proc)
    proc.send("dave")
    proc.expect(r"Enter a username: \[system\] connecting to .* as dave…$")
    proc.expect(r"^\[system\] connected to .* as dave")
    proc.send("/exit")
    code = proc.wait()
    assert not any("Traceback" in line for line in proc.lines), proc.lines  # the input thread lived on
    assert code == 0


def test_end_of_input_leaves_cleanly_and_sends_what_was_typed(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    script = subprocess.run(
        [sys.executable, "client.py", *broker.endpoints, "--name", "scripted"],
        cwd=ROOT,
        input="one\ntwo\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert script.returncode == 0, script.stdout + script.stderr
    bob.expect(r"^scripted: one$")
    bob.expect(r"^scripted: two$")
    bob.expect(r"^\[leave\] scripted left the chat$")


def test_ctrl_c_leaves_cleanly(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = harness.client(broker, "alice")
    alice.kill(signal.SIGINT)
    assert alice.wait() == 0
    bob.expect(r"^\[leave\] alice left the chat$")


def test_killed_client_times_out(harness: Harness) -> None:
    broker = harness.broker(heartbeat=0.2, session_timeout=1.0)
    bob = harness.client(broker, "bob")
    alice = harness.client(broker, "alice")
    alice.kill()  # SIGKILL: no bye is ever sent
    bob.expect(r"^\[leave\] alice left the chat \(timed out\)$", timeout=5)
    # The name is free again once the session has ended.
    harness.client(broker, "alice")


def test_impersonation_is_refused(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    raw = harness.raw(broker)
    raw.request({"type": "hello", "user": "mallory"})
    assert raw.reply()["type"] == "welcome"
    raw.reply()  # joined general
    bob.expect(r"^\[join\] mallory joined the chat$")
    # Whatever "user" the envelope claims, the broker stamps the session's name.
    raw.request({"type": "msg", "room": "general", "text": "I am bob", "id": "1", "user": "bob"})
    assert raw.reply() == {"type": "ack", "id": "1", "room": "general", "seq": 3}
    bob.expect(r"^mallory: I am bob$")
    raw.request({"type": "dm", "to": "bob", "text": "psst", "id": "2", "user": "alice"})
    assert raw.reply()["type"] == "ack"
    bob.expect(r"^\[dm\] mallory: psst$")


def test_hostile_text_cannot_rewrite_the_screen(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    raw = harness.raw(broker)
    raw.request({"type": "hello", "user": "mallory"})
    raw.reply()
    hostile = "\x1b[2J\x1b[Hclear\rfake\nalice: hi\u202eevil\x07\x9b"
    raw.request({"type": "msg", "room": "general", "text": hostile, "id": "1"})
    line = bob.expect(r"^mallory: ").string
    assert "\x1b" not in line and "\r" not in line and "\u202e" not in line and "\x07" not in line
    assert line == r"mallory: \x1b[2J\x1b[Hclear\x0dfake\x0aalice: hi\u202eevil\x07\x9b"


def test_a_very_long_hostile_line_is_shown_whole_and_harmless(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    raw = harness.raw(broker)
    raw.request({"type": "hello", "user": "mallory"})
    raw.reply()
    text = ("\x1b]0;pwned\x07\u2066" + "A" * 100) * 35  # 3990 characters of title-setting escapes and isolates
    raw.request({"type": "msg", "room": "general", "text": text, "id": "1"})
    line = bob.expect(r"^mallory: ").string
    assert "\x1b" not in line and "\x07" not in line and "\u2066" not in line
    assert line.count("A" * 100) == 35  # nothing was cut
    bob.send("/who")  # and the console still works
    bob.expect(r"^\[who\] #general: bob, mallory \(2\)$")


def test_ipc_endpoints_and_broker_shutdown(harness: Harness) -> None:
    sock_dir = harness.tmp_path
    broker = Proc(
        [
            "broker.py",
            "--router",
            f"ipc://{sock_dir}/in",
            "--pub",
            f"ipc://{sock_dir}/feed",
            "--heartbeat",
            "0.2",
            "--session-timeout",
            "1",
            "--db",
            ":memory:",
        ],
        "ipc-broker",
        stdin=False,
    )
    harness.procs.append(broker)
    broker.expect(r"inbox \(ROUTER\): ipc://")
    alice = Proc(
        ["client.py", "--router", f"ipc://{sock_dir}/in", "--pub", f"ipc://{sock_dir}/feed", "--name", "alice"], "alice"
    )
    harness.procs.append(alice)
    alice.expect(r"\[system\] you are in #general")
    broker.kill(signal.SIGTERM)
    assert broker.wait() == 0
    broker.expect(r"chat broker stopped")
    alice.expect(r"^\[system\] the broker is shutting down")


def test_logger_narrows_to_rooms_and_writes_stdout(harness: Harness) -> None:
    broker = harness.broker()
    dev_only = harness.logger(broker, "--room", "dev")
    alice = harness.client(broker, "alice", "--room", "general", "--room", "dev")
    alice.send("in general")
    alice.send("/join dev")
    alice.send("in dev")
    line = dev_only.expect(r'"text":"in dev"').string
    event = json.loads(line)
    assert event["room"] == "dev" and event["user"] == "alice" and event["seq"] == 2
    assert not [line for line in dev_only.output() if '"room":"general"' in line]


def test_installed_commands_exist() -> None:
    import shutil

    for command in ("chat-broker", "chat", "chat-logger", "chat-gui", "chat-web", "chat-keys"):
        path = shutil.which(command) or shutil.which(command, path=str(ROOT / ".venv" / "bin"))
        assert path, f"{command} is not installed (pip install -e .)"
        result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and ("--router" in result.stdout or command == "chat-keys")


def test_every_program_explains_its_options() -> None:
    for program, options in {
        "broker.py": ["--router", "--pub", "--host", "--heartbeat", "--session-timeout", "--rate-limit"],
        "client.py": ["--router", "--pub", "--host", "--name", "--room"],
        "logger.py": ["--router", "--pub", "--host", "--out", "--room", "--server-key", "--key"],
        "web.py": ["--router", "--pub", "--host", "--listen", "--port", "--allowed-origin"],
        "gui.py": ["--router", "--pub", "--host", "--name"],
    }.items():
        result = subprocess.run([sys.executable, program, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0
        for option in options:
            assert option in result.stdout, (program, option)


def test_a_piped_line_that_is_not_utf8_is_sent_with_replacement_characters(harness: Harness) -> None:
    broker = harness.broker()
    alice = harness.client(broker, "alice")
    bob = harness.client(broker, "bob")
    assert alice.popen.stdin is not None
    alice.popen.stdin.buffer.write(b"bad \xff\xfe bytes\n")  # was: the input thread died, the session ended
    alice.popen.stdin.buffer.flush()
    bob.expect("^alice: bad \ufffd\ufffd bytes$")
    alice.send("still here")
    bob.expect(r"^alice: still here$")


def test_the_library_refuses_text_that_is_not_unicode_before_queueing_it(harness: Harness) -> None:
    broker = harness.broker()
    with ChatClient("bot", router=broker.router, pub=broker.pub, context=harness.ctx) as bot:
        bot.connect()
        with pytest.raises(ValueError):
            bot.say("general", "half a pair \ud800")
        assert not bot.unacked  # nothing left behind to fail again on every resend
        bot.say("general", "fine")
        assert len(bot.unacked) == 1


def _policies(pid: int) -> dict[str, int]:
    """Each thread's name and scheduling policy (``/proc``: 0 SCHED_OTHER, 3 SCHED_BATCH, 5 SCHED_IDLE)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        found[name] = int(rest[38])  # field 41 of stat(5)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_the_loop_runs_as_usual_and_what_works_beside_it_does_not_preempt_it(harness: Harness) -> None:
    """The broker's ZeroMQ I/O thread runs under SCHED_BATCH (``transport.batch_scheduled``), and its SQLite
    writer, which nobody waits for with ``--sync normal``, under SCHED_IDLE while it keeps up, where it may
    leave it again (``store_writer.Yielding``); its I/O thread, which brings in its orders, under SCHED_BATCH."""
    broker = harness.broker(db=str(harness.tmp_path / "chat.db"))
    harness.client(broker, "alice")  # in #general: the I/O thread and the writer have been at work
    loop = _policies(broker.pid)
    assert loop["python"] == 0 and loop["ZMQbg/IO/0"] == 3, loop
    writer = broker.writer_pid

    # Nobody waits for the writer (acks go once the journal has a batch): on a busy machine it may not have
    # made its socket, and so its I/O thread, yet.
    def with_io_thread() -> dict[str, int] | None:
        found = _policies(writer)
        return found if "ZMQbg/IO/0" in found else None

    policies = wait_for(with_io_thread, what="the writer's I/O thread")
    assert policies["ZMQbg/IO/0"] == 3, policies
    idle = 5 if can_leave_idle() else 3
    wait_for(lambda: _policies(writer)["python"] == idle, what=f"the writer under policy {idle}")


@pytest.mark.skipif(not can_leave_idle(), reason="may not raise a thread from SCHED_IDLE here")
def test_a_writer_put_under_sched_idle_before_its_io_thread_began_still_runs_that_thread_as_batch(
    tmp_path: Path,
) -> None:
    """On a busy machine the broker can put the writer under SCHED_IDLE before the writer has made its socket;
    a thread inherits its policy, so its I/O thread was under SCHED_IDLE too (a CI run under load)."""
    import zmq

    from store import SqliteStore

    db = tmp_path / "chat.db"
    SqliteStore(db).close()
    sockets = tmp_path / "sock"
    sockets.mkdir()
    endpoint = f"ipc://{sockets}/writer"
    writer = subprocess.Popen(
        [sys.executable, str(ROOT / "store_writer.py"), str(db), "normal", endpoint],
        preexec_fn=lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)),
    )
    ctx = zmq.Context()
    try:
        broker_end = ctx.socket(zmq.PAIR)
        broker_end.connect(endpoint)
        broker_end.send(b"hello")  # any first message: the writer then removes its socket's folder
        # Under SCHED_IDLE it runs on CPU time nothing else wants: on a busy machine it takes a while.
        wait_for(lambda: not sockets.exists(), timeout=45, what="the writer to take the hello")
        policies = _policies(writer.pid)
        assert policies["python"] == 5 and policies["ZMQbg/IO/0"] == 3, policies
    finally:
        writer.kill()
        writer.wait()
        ctx.destroy(linger=0)


@pytest.mark.skipif(not can_leave_idle(), reason="may not raise a thread from SCHED_IDLE here")
def test_a_writer_behind_is_given_its_fair_share_of_the_cpu_again(harness: Harness) -> None:
    """A starved writer (a busy machine) falls behind: the broker takes it out of SCHED_IDLE itself, before it
    has to stop reading at ``--max-unstored-bytes``.  A tiny bound here: a burst is already behind."""
    broker = harness.broker("--max-unstored-bytes", "2000", db=str(harness.tmp_path / "chat.db"))
    writer = broker.writer_pid
    with ChatClient("bot", router=broker.router, pub=broker.pub, context=harness.ctx) as bot:
        bot.connect()
        bot.say_many("general", [f"line {n} " + "x" * 300 for n in range(40)])
        wait_for(lambda: _policies(writer)["python"] == 3, what="the writer under SCHED_BATCH")

        def all_acked() -> bool:
            bot.poll(0.1)
            return not bot.unacked

        wait_for(all_acked, what="every line acked")


@pytest.mark.skipif(not can_leave_idle(), reason="may not raise a thread from SCHED_IDLE here")
def test_a_stop_on_a_busy_machine_gives_the_idle_writer_its_share_first(harness: Harness) -> None:
    """A writer that keeps up runs under SCHED_IDLE: beside one busy process on its CPU it gets almost none of
    it, and took seconds to exit (a SIGTERM in CI waited out the whole ``STOP_WAIT_S``, then killed it).  A
    stop waits for the writer, so it first takes it out of SCHED_IDLE: the writer commits and exits itself."""
    broker = harness.broker(db=str(harness.tmp_path / "chat.db"))
    harness.client(broker, "alice")  # in #general: the writer has been at work
    writer = broker.writer_pid
    wait_for(lambda: _policies(writer)["python"] == 5, what="the writer under SCHED_IDLE")
    cpu = min(os.sched_getaffinity(writer))
    os.sched_setaffinity(writer, {cpu})  # its main thread, which runs the commits
    spin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nprint('busy', flush=True)\nwhile True: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline() == "busy\n"
        broker.kill(signal.SIGTERM)
        assert broker.wait(3 * STOP_WAIT_S) == 0
    finally:
        busy.kill()
        busy.wait()
    assert not re.search("writer did not (answer|exit)", broker.text()), broker.tail()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_with_sync_full_acks_wait_for_the_writer_so_it_keeps_the_usual_policy(harness: Harness) -> None:
    broker = harness.broker("--sync", "full", db=str(harness.tmp_path / "chat.db"))
    harness.client(broker, "alice")
    writer = broker.writer_pid
    assert set(_policies(writer).values()) == {0}


def test_where_the_policy_cannot_be_set_the_io_thread_keeps_the_default(monkeypatch) -> None:
    """A sandbox may refuse ``sched_setscheduler``: libzmq would abort on it, so the context is left as it was."""
    import os

    import transport

    class Context:  # records what is set on it
        def __init__(self) -> None:
            self.options: dict[int, int] = {}

        def set(self, option: int, value: int) -> None:
            self.options[option] = value

    assert transport.batch_scheduled(Context()).options  # type: ignore[arg-type]  (allowed here: it is set)

    def refuse(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    assert transport.batch_scheduled(Context()).options == {}  # type: ignore[arg-type]
