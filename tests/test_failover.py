"""Clients that fail over (issue 17): given several brokers, a client whose broker dies moves to the next by
itself, says hello there, and delivers what was typed meanwhile; the logger follows the feed there too.

Real brokers, console clients and a logger as processes on real sockets; every wait is for an expected line.
The two brokers here are independent (each its own history): what the cluster adds is one shared log behind
them, not the moving.
"""

from __future__ import annotations

import re

import pytest
from conftest import Harness, Proc

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


def test_several_brokers_are_given_as_lists_in_one_order() -> None:
    import cli

    assert cli.brokers("a,b") == (["tcp://a:5555", "tcp://b:5555"], ["tcp://a:5556", "tcp://b:5556"])
    assert cli.brokers("x", "ipc:///r1,ipc:///r2", "ipc:///p1,ipc:///p2") == (
        ["ipc:///r1", "ipc:///r2"],
        ["ipc:///p1", "ipc:///p2"],
    )
    with pytest.raises(ValueError, match="one of each per broker"):
        cli.brokers("a,b", "tcp://a:1")
    with pytest.raises(ValueError, match="follows one broker"):
        cli.single_broker({"router": ["r1", "r2"], "pub": ["p1", "p2"]}, "the relay")
