"""Issue 14: the ten client defects seen on the old main, each as one process-level test (test_N for
defect N), plus test_9b: the form of defect 9 that crashed prompt_toolkit's mouse handler here (ESC [ 2 M).

Real broker, real clients (and loggers, relays) as processes on real sockets.  Every wait is for an
expected line (or file content, or exit) with a deadline; the only deliberate pauses are the pace of
a typist (test 3) and where the CPU measuring window of test 1 starts and ends, neither of which
synchronises anything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WAIT, Harness, Proc, Terminal, free_port, wait_for

import keys

pytestmark = pytest.mark.timeout(60)


def fixed_endpoints() -> dict[str, str]:
    """Endpoints a broker can be (re)started on: the same ports after a kill -9."""
    return {"router": f"tcp://127.0.0.1:{free_port()}", "pub": f"tcp://127.0.0.1:{free_port()}"}


def restartable(harness: Harness) -> Callable[[], Proc]:
    """Starts a broker, again and again, on the same ports and database: one that comes back after a kill -9."""
    ends, db = fixed_endpoints(), str(harness.tmp_path / "chat.db")
    return lambda: harness.broker(db=db, **ends)


def endpoint_args(ends: dict[str, str]) -> list[str]:
    return ["--router", ends["router"], "--pub", ends["pub"]]


def console(harness: Harness, name: str, *args: str) -> Proc:
    """A console client that is not (yet) expected to connect: nothing is awaited."""
    proc = Proc(["client.py", *args, "--name", name], name)
    harness.procs.append(proc)
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def read_log(path: Path) -> list[dict]:
    """The complete lines of a log the logger may be writing to right now."""
    complete = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in complete]


def room_texts(path: Path, room: str) -> list[str]:
    return [e["text"] for e in read_log(path) if e["type"] == "msg" and e["room"] == room]


# 1 --------------------------------------------------------------------------------------------------


def test_1_a_client_without_its_broker_does_not_spin(harness: Harness) -> None:
    lonely_ends = fixed_endpoints()  # nobody will ever listen there
    lonely = console(harness, "lonely", *endpoint_args(lonely_ends), "--timeout", "60")
    lonely_started = time.monotonic()
    broker = harness.broker()
    alice = harness.client(broker, "alice")
    broker.kill()
    broker.wait()
    alice.expect(r"^\[system\] connection lost")
    # The old poll loop spun from 3 heartbeats (1 s each before a welcome) of silence on: let the lonely
    # client get there.  Not synchronisation: where the CPU measuring window starts.
    time.sleep(max(0.0, lonely_started + 3.5 - time.monotonic()))
    clients = {"alice (broker killed)": alice, "lonely (never had a broker)": lonely}
    before = {name: cpu_seconds(proc.popen.pid) for name, proc in clients.items()}
    start = time.monotonic()
    time.sleep(3.0)  # the measuring window
    elapsed = time.monotonic() - start
    share = {name: (cpu_seconds(proc.popen.pid) - before[name]) / elapsed for name, proc in clients.items()}
    for name, proc in clients.items():
        assert proc.popen.poll() is None, f"{name} exited:\n" + "\n".join(proc.output())
    # A generous bound: an idle client takes well under 1% of a core, a spinning one all the core it can get
    # (~100% alone, still over 40% on a machine busy with other work).
    assert all(s < 0.20 for s in share.values()), f"CPU share of a core while waiting: {share}"


# 2 --------------------------------------------------------------------------------------------------


def test_2_piped_input_is_all_delivered_in_order(harness: Harness) -> None:
    # A rate limit (bursts of 40, as by default, then 50/s rather than 20/s to keep the test short): the pipe
    # is much faster than that, so most lines are refused "rate_limited" at first and must be sent again.
    broker = harness.broker("--rate-limit", "50")
    watcher = harness.client(broker, "watcher")
    flooder = console(harness, "flooder", *broker.endpoints)
    lines = [f"line {i}" for i in range(1, 201)]  # seq -f 'line %g' 1 200 | python client.py --name flooder
    for line in lines:
        flooder.send(line)
    flooder.close_stdin()
    code = flooder.wait(timeout=45)
    # Its leave comes after all it said (one room, seq order): every line it delivered is shown by then.
    watcher.expect(r"^\[leave\] flooder left")
    seen = [line.removeprefix("flooder: ") for line in watcher.output() if line.startswith("flooder: ")]
    assert seen == lines, f"{len(seen)} of 200 lines reached the feed, the last of them {seen[-1:]}"
    assert code == 0, "\n".join(flooder.output())


# 3 --------------------------------------------------------------------------------------------------


def test_3_one_senders_lines_stay_in_order_across_a_broker_restart(harness: Harness) -> None:
    start_broker = restartable(harness)
    broker = start_broker()
    writer = harness.client(broker, "writer")
    written = []
    for i in range(1, 33):
        line = f"line {i}"
        writer.send(line)
        written.append(line)
        if i == 8:
            broker.kill()  # SIGKILL, with a line in flight
            broker.wait()
        if i == 22:  # ~1.7 s later: the writer has noticed the loss and queued what was typed meanwhile
            broker = start_broker()
        time.sleep(0.12)  # the pace of someone typing: input timing, not synchronisation
    writer.send("/quit")
    code = writer.wait(timeout=30)
    raw = harness.raw(broker)
    raw.request({"type": "history", "room": "general", "after": 0, "limit": 500})
    reply = raw.reply()
    stored = [e["text"] for e in reply["events"] if e["type"] == "msg" and e["user"] == "writer"]
    assert stored == written, f"stored as {stored}"
    assert code == 0, "\n".join(writer.output())


# 4 --------------------------------------------------------------------------------------------------


def test_4_no_bad_envelope_error_after_a_broker_restart(harness: Harness) -> None:
    start_broker = restartable(harness)
    broker = start_broker()
    alice = harness.client(broker, "alice")
    broker.kill()
    broker.wait()
    alice.expect(r"^\[system\] connection lost")
    start_broker()
    alice.expect(r"^\[system\] reconnected$")
    alice.send("/who")  # its reply comes after any reply to what the client sent on reconnecting
    alice.expect(r"^\[who\] #general: alice \(1\)$")
    assert not [line for line in alice.output() if "bad_envelope" in line], "\n".join(alice.output())


# 5 --------------------------------------------------------------------------------------------------


def test_5_a_relay_outage_is_said_and_what_was_missed_comes_unasked(harness: Harness) -> None:
    broker = harness.broker()
    relay_ep = f"tcp://127.0.0.1:{free_port()}"

    def start_relay() -> Proc:
        proc = Proc(["relay.py", *broker.endpoints, "--listen", relay_ep], "relay", stdin=False)
        harness.procs.append(proc)
        proc.expect(r"feed for subscribers:\s+tcp://")
        return proc

    relay = start_relay()
    bob = harness.client(broker, "bob")
    far = console(harness, "far", "--router", broker.router, "--pub", relay_ep)
    far.expect(r"^\[system\] you are in #general")
    bob.send("before")
    far.expect(r"^bob: before$")
    relay.kill()
    relay.wait()
    far.expect(r"^\[system\] no news from the feed")
    bob.send("while the relay was down")
    start_relay()
    far.expect(r"^bob: while the relay was down$")  # nobody spoke again


# 6 --------------------------------------------------------------------------------------------------


def test_6_a_broker_restart_is_said_once_and_floods_nobody_with_joins(harness: Harness) -> None:
    start_broker = restartable(harness)
    broker = start_broker()
    ann, ben, cat = (harness.client(broker, name) for name in ("ann", "ben", "cat"))
    ann.expect_all({"[join] ben joined the chat", "[join] cat joined the chat"})
    ben.expect(r"^\[join\] cat joined the chat$")
    broker.kill()
    broker.wait()
    for proc in (ann, ben, cat):
        proc.expect(r"^\[system\] connection lost")
    start = {proc.name: len(proc.output()) for proc in (ann, ben, cat)}
    start_broker()
    for proc in (ann, ben, cat):
        proc.expect(r"^\[system\] reconnected$")
    # Rejoins come on the feed before anything said after them: once these are shown, they would be too.
    ann.send("after the restart")
    ben.expect(r"^ann: after the restart$")
    cat.expect(r"^ann: after the restart$")
    ben.send("me too")
    ann.expect(r"^ben: me too$")
    for proc in (ann, ben, cat):
        after = proc.output()[start[proc.name] :]
        assert not [line for line in after if "[join]" in line], f"{proc.name}:\n" + "\n".join(after)
        said = {"[system] connection restored", "[system] reconnected"} & set(after)
        assert len(said) == 1, f"{proc.name} said {said} for one restart:\n" + "\n".join(after)


# 7 --------------------------------------------------------------------------------------------------


def test_7_the_logger_says_it_waits_and_a_restarted_one_logs_quiet_rooms(harness: Harness) -> None:
    early_ends = fixed_endpoints()  # a logger started before its broker
    early = Proc(["logger.py", *endpoint_args(early_ends)], "early-logger", stdin=False)
    harness.procs.append(early)
    early_started = time.monotonic()

    broker = harness.broker()
    log = harness.tmp_path / "chat.jsonl"
    quinn = harness.client(broker, "quinn", "--room", "quiet")
    tom = harness.client(broker, "tom", "--room", "general", "--room", "quiet")
    logger = harness.logger(broker, "--out", str(log))  # #quiet has events, none of them in the log
    tom.send("logged")
    wait_for(lambda: room_texts(log, "general") == ["logged"], what="the logger to write tom's line")
    logger.kill(signal.SIGTERM)
    assert logger.wait() == 0
    quinn.send("while the logger was stopped")
    tom.expect(r"^#quiet quinn: while the logger was stopped$")  # stored before the logger comes back
    harness.logger(broker, "--out", str(log))
    quinn.send("after the restart")
    # In seq order per room: once the later line is in the log, the earlier one is there or never will be.
    wait_for(lambda: "after the restart" in room_texts(log, "quiet"), what="the restarted logger to log #quiet")
    assert room_texts(log, "quiet") == ["while the logger was stopped", "after the restart"]

    # The logger that came before any broker said, within ~12 s, that it is waiting for one.
    early.expect(r"waiting|no answer", timeout=max(0.5, early_started + 12.0 - time.monotonic()))
    harness.broker(**early_ends)
    early.expect(r"chat-logger: following")


# 8 --------------------------------------------------------------------------------------------------


def test_8_a_client_says_it_is_connecting_waits_for_a_late_broker_and_hints_at_keys(
    harness: Harness, tmp_path: Path
) -> None:
    late_ends = fixed_endpoints()
    early = console(harness, "early", *endpoint_args(late_ends), "--timeout", "30")  # its broker comes later
    early.expect(r"^\[system\] connecting to ")  # at once, not after the timeout in silence

    keydir = tmp_path / "keys"
    keys.init(keydir)
    curve_broker = harness.broker("--curve", str(keydir))
    keyless = console(harness, "keyless", *curve_broker.endpoints, "--timeout", "2")
    keyless.expect(r"^\[system\] connecting to ")
    error = keyless.expect(r"^\[error\] ").string
    assert "--server-key" in error and "--key" in error, error
    assert keyless.wait() == 1

    harness.broker(**late_ends)  # some 3 s after the early client started
    early.expect(r"^\[system\] connected to .* as early")
    early.expect(r"^\[system\] you are in #general")
    early.send("/quit")
    assert early.wait() == 0, "\n".join(early.output())


# 9 --------------------------------------------------------------------------------------------------


def test_9_an_escape_sequence_typed_at_the_console_breaks_nothing(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    term = Terminal(["client.py", *broker.endpoints, "--name", "alice"])
    try:
        term.expect("[system] you are in #general")
        bob.expect(r"^\[join\] alice joined the chat$")
        term.type("\x1b[2J\r")  # ESC [ 2 J, Enter
        term.type("a normal line\r")
        bob.expect(r"^alice: a normal line$")
        assert "Unhandled exception" not in term.screen, term.screen
        # Whatever came of the escape was said before the normal line: bob has shown it by now.
        from_alice = [line for line in bob.output() if line.startswith("alice: ")]
        assert from_alice[-1] == "alice: a normal line", from_alice
        # Not asserted: the line editor takes the unknown sequence as Escape then the text "[2J", which
        # it sends as a line ("alice: [2J"), as a terminal would have it typed.
        term.type("/quit\r")
        assert term.proc.wait(WAIT) == 0
    finally:
        term.close()


def test_9b_a_malformed_mouse_sequence_typed_at_the_console_breaks_nothing(harness: Harness) -> None:
    """Not one of the ten: what issue 14's description of defect 9 fits here.  ESC [ 2 M parses as a
    mouse event (urxvt form) whose fields prompt_toolkit's handler cannot unpack."""
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    term = Terminal(["client.py", *broker.endpoints, "--name", "alice"])
    try:
        term.expect("[system] you are in #general")
        bob.expect(r"^\[join\] alice joined the chat$")
        term.type("\x1b[2M")  # ESC [ 2 M
        term.type("a normal line\r")
        deadline = time.monotonic() + WAIT
        while not [line for line in bob.output() if line == "alice: a normal line"]:
            if "Unhandled exception" in term.screen:
                pytest.fail("the line editor crashed:\n" + term.screen[-600:])
            assert time.monotonic() < deadline, "the line never reached bob:\n" + term.screen
            time.sleep(0.02)  # polling the terminal and bob's output; the condition synchronises
        assert "Unhandled exception" not in term.screen, term.screen
    finally:
        term.close()


# 10 -------------------------------------------------------------------------------------------------


def test_10_leaving_general_is_not_leaving_the_chat_and_a_note_to_self_shows_once(harness: Harness) -> None:
    broker = harness.broker()
    alice = harness.client(broker, "alice")
    bob = harness.client(broker, "bob", "--room", "general", "--room", "dev")
    alice.expect(r"^\[join\] bob joined the chat$")
    bob.send("/leave general")
    bob.expect(r"^\[system\] you left #general$")
    leave = alice.expect(r"^\[leave\] bob ").string
    assert leave == "[leave] bob left #general", leave
    bob.send("/msg bob hi")
    bob.send("/who dev")  # its reply comes after the dm's ack and the dm itself
    bob.expect(r"^\[who\] #dev: bob \(1\)$")
    notes = [line for line in bob.output() if re.search(r"\bhi$", line)]
    assert len(notes) == 1, f"the note to self was shown as {notes}"
