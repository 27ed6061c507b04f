"""The feed relay: subscribers behind an XSUB/XPUB proxy get exactly what direct subscribers get."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import Harness, Proc, free_port

pytestmark = pytest.mark.timeout(60)


def complete_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def test_clients_and_a_logger_behind_a_relay_see_everything(harness: Harness) -> None:
    broker = harness.broker()
    relay_ep = f"tcp://127.0.0.1:{free_port()}"
    relay = Proc(
        ["relay.py", "--pub", broker.pub, "--router", broker.router, "--listen", relay_ep], "relay", stdin=False
    )
    harness.procs.append(relay)
    relay.expect(r"feed for subscribers:\s+tcp://")
    via_relay = ["--router", broker.router, "--pub", relay_ep]

    log = harness.tmp_path / "relayed.jsonl"
    logger = Proc(["logger.py", *via_relay, "--out", str(log)], "relayed-logger", stdin=False)
    harness.procs.append(logger)
    logger.expect(r"chat-logger: following")
    far = Proc(["client.py", *via_relay, "--name", "far"], "far")
    harness.procs.append(far)
    far.expect(r"\[system\] you are in #general")
    near = harness.client(broker, "near")
    far.expect(r"^\[join\] near joined the chat$")

    near.send("hello from the broker's side")
    far.expect(r"^near: hello from the broker's side$")
    far.send("hello from behind the relay")
    near.expect(r"^far: hello from behind the relay$")
    near.send("/join dev")  # a room nobody behind the relay is in: its subscription goes up on demand
    near.expect(r"^\[system\] you are in #dev \(1 here: near\)$")
    far.send("/join dev")
    near.expect(r"^#dev \[join\] far joined the room$")
    near.send("in dev")
    far.expect(r"^#dev near: in dev$")
    near.send("/quit")
    far.expect(r"^\[leave\] near left the chat$")

    deadline = time.monotonic() + 10
    while not any(e["type"] == "leave" and e["room"] == "dev" for e in complete_lines(log)):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)  # the logger appends by itself; the condition synchronises
    events = complete_lines(log)
    for room in ("general", "dev"):
        seqs = [e["seq"] for e in events if e["room"] == room]
        assert seqs == list(range(1, len(seqs) + 1)), (room, seqs)
    texts = [e["text"] for e in events if e["type"] == "msg"]
    assert texts == ["hello from the broker's side", "hello from behind the relay", "in dev"]
