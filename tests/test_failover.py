"""Clients that fail over (issue 17): given several brokers, a client whose broker dies moves to the next by
itself, says hello there, and delivers what was typed meanwhile; the logger follows the feed there too.

Real brokers, console clients and a logger as processes on real sockets; every wait is for an expected line.
The two brokers here are independent (each its own history): what the cluster adds is one shared log behind
them, not the moving.
"""

from __future__ import annotations

import re
import signal

import pytest
from conftest import Harness, Proc, free_port

pytestmark = pytest.mark.timeout(60)


def both(a, b) -> list[str]:
    return ["--router", f"{a.router},{b.router}", "--pub", f"{a.pub},{b.pub}"]


def test_a_client_whose_broker_is_killed_chats_through_the_next_without_typing_anything(harness: Harness) -> None:
    first, second = harness.broker(), harness.broker()
    alice = Proc(["client.py", *both(first, second), "--name", "alice"], "alice")
    harness.procs.append(alice)
    alice.expect(rf"\[system\] connected to {re.escape(first.router)} as alice")
    bob = harness.client(second, "bob")
    logger = Proc(["logger.py", *both(first, second)], "logger", stdin=False)
    harness.procs.append(logger)
    logger.expect(r"chat-logger: following")
    first.kill()  # SIGKILL
    first.wait()
    alice.send("typed while the broker was dead")
    alice.expect(r"\[system\] no answer from this broker; trying the next one")
    alice.expect(r"\[system\] reconnected")
    bob.expect(r"^alice: typed while the broker was dead")
    alice.send("and after")
    bob.expect(r"^alice: and after")
    bob.send("hello from bob")
    alice.expect(r"^bob: hello from bob")
    logger.expect(r"hello from bob")
    alice.send("/quit")
    assert alice.wait(timeout=30) == 0, "\n".join(alice.output())


def test_a_relay_follows_the_next_broker_and_its_subscribers_stay_connected(harness: Harness) -> None:
    """A relay given three brokers' feeds moves its upstream when the first goes silent, and again when the
    second does; a client reading the feed through it (and sending to the brokers directly) chats on through
    the second; the relay stops when told, after moving twice."""
    first, second, third = harness.broker(), harness.broker(), harness.broker()
    relayed = f"tcp://127.0.0.1:{free_port()}"
    brokers = [
        *("--router", ",".join(b.router for b in (first, second, third))),
        *("--pub", ",".join(b.pub for b in (first, second, third))),
    ]
    relay = Proc(["relay.py", *brokers, "--listen", relayed, "--failover-after", "1"], "relay", stdin=False)
    harness.procs.append(relay)
    relay.expect(r"Ctrl-C stops it")
    through_relay = ["--router", f"{first.router},{second.router}", "--pub", f"{relayed},{relayed}"]
    alice = Proc(["client.py", *through_relay, "--name", "alice"], "alice")
    harness.procs.append(alice)
    alice.expect(r"\[system\] you are in #general")
    bob = harness.client(second, "bob")
    first.kill()
    first.wait()
    relay.expect(r"relaying " + re.escape(second.pub))
    alice.expect(r"\[system\] reconnected")
    bob.send("through the relay")
    alice.expect(r"^bob: through the relay")
    alice.send("and back")
    bob.expect(r"^alice: and back")
    second.kill()  # and again: the relay moves on to the third
    relay.expect(r"relaying " + re.escape(third.pub))
    relay.popen.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=10) == 0, "\n".join(relay.output())


def test_several_brokers_are_given_as_lists_in_one_order() -> None:
    import cli

    assert cli.brokers("a,b") == (["tcp://a:5555", "tcp://b:5555"], ["tcp://a:5556", "tcp://b:5556"])
    assert cli.brokers("x", "ipc:///r1,ipc:///r2", "ipc:///p1,ipc:///p2") == (
        ["ipc:///r1", "ipc:///r2"],
        ["ipc:///p1", "ipc:///p2"],
    )
    with pytest.raises(ValueError, match="one of each per broker"):
        cli.brokers("a,b", "tcp://a:1")
    with pytest.raises(ValueError, match="not an endpoint"):  # found at start, not when first needed
        cli.brokers("a", "tcp://a:1,tcp://b", "tcp://a:2,tcp://b:2")
