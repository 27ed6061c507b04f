"""The feed relay: subscribers behind an XSUB/XPUB proxy get exactly what direct subscribers get."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import ROOT, WAIT, Harness, Proc, free_port

import keys

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
    near.expect(r"^\[join\] far joined the room$")  # #dev is current: its lines carry no label
    near.send("in dev")
    far.expect(r"^near: in dev$")
    near.send("/quit")
    far.expect(r"^#general \[leave\] near left the chat$")

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


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    keys.init(path)
    keys.add_user(path, "relay-key", bind=False)
    return path


def test_a_relay_of_an_encrypted_feed_refuses_to_serve_it_in_clear(harness: Harness, keydir: Path) -> None:
    broker = harness.broker("--curve", str(keydir))
    upstream = ["--pub", broker.pub, "--router", broker.router, "--server-key", str(keydir / "broker.key")]
    upstream += ["--key", str(keydir / "users" / "relay-key.key_secret")]
    listen = ["--listen", f"tcp://127.0.0.1:{free_port()}"]
    refused = subprocess.run(
        [sys.executable, "relay.py", *upstream, *listen], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )
    assert refused.returncode != 0
    assert "unencrypted" in refused.stderr and "--serve-plaintext" in refused.stderr, refused.stderr
    assert "feed for subscribers" not in refused.stdout

    contradiction = [*upstream, *listen, "--curve", str(keydir), "--serve-plaintext"]
    both = subprocess.run(
        [sys.executable, "relay.py", *contradiction], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )
    assert both.returncode == 2 and "contradict" in both.stderr, both.stderr

    relay = Proc(["relay.py", *upstream, *listen, "--serve-plaintext"], "relay", stdin=False)
    harness.procs.append(relay)
    relay.expect(r"WARNING: --serve-plaintext: .* served unencrypted")
    relay.expect(r"feed for subscribers:\s+tcp://")
    sub = harness.ctx.socket(zmq.SUB)  # a plain subscriber gets the broker's feed through it, as asked
    sub.setsockopt(zmq.SUBSCRIBE, b"sys/")
    sub.connect(listen[1])
    try:
        assert sub.poll(WAIT * 1000), "no heartbeat through the relay"
        assert sub.recv_multipart()[0] == b"sys/"
    finally:
        sub.close(linger=0)


# A peer that connects to the relay's feed with its own socket and sends what it likes.  Subscriptions
# go upstream into an XSUB, whose prefix trie libzmq removes recursively: the megabyte subscription is
# the one that crashed the relay.  In a child process, which leaves without destroying its own trie
# (that would crash it too).  It waits until the relay has taken everything (the heartbeat it finally
# subscribed to comes) or has dropped it (the frame was too big).
GARBAGE_PEER = """
import os, sys, zmq
ctx = zmq.Context()
peer = ctx.socket(zmq.XSUB)
monitor = peer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
peer.connect(sys.argv[1])
for frame in [b"", b"\\x00", b"\\x01", b"\\x00never", b"\\x02user", b"\\xff" * 3000, b"\\x01" + b"a" * 2_000_000]:
    peer.send(frame)
peer.send_multipart([b"\\x01sys/", b"more", b"frames"])
peer.send(b"\\x01sys/")
poller = zmq.Poller()
poller.register(peer, zmq.POLLIN)
poller.register(monitor, zmq.POLLIN)
print("answered" if poller.poll(10_000) else "no answer", flush=True)
os._exit(0)
"""


def test_the_relay_survives_what_subscribers_send(harness: Harness) -> None:
    broker = harness.broker()
    port = free_port()
    relay = Proc(
        ["relay.py", "--pub", broker.pub, "--router", broker.router, "--listen", f"tcp://127.0.0.1:{port}"],
        "relay",
        stdin=False,
    )
    harness.procs.append(relay)
    relay.expect(r"feed for subscribers:\s+tcp://")

    peer = subprocess.run(
        [sys.executable, "-c", GARBAGE_PEER, f"tcp://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )
    assert peer.stdout.strip() == "answered", peer.stdout + peer.stderr
    wrong = harness.ctx.socket(zmq.DEALER)  # a socket type that may not talk to an XPUB: the handshake fails
    wrong.connect(f"tcp://127.0.0.1:{port}")
    wrong.send(b"\x01sys/")
    for junk in (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03" * 64, b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)) * 20):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            raw.sendall(junk)

    sub = harness.ctx.socket(zmq.SUB)  # after all that, a subscriber is still served
    sub.setsockopt(zmq.SUBSCRIBE, b"sys/")
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        for _ in range(3):  # heartbeats keep coming: the relay outlived the garbage peer's departure
            assert sub.poll(WAIT * 1000), "the relay stopped relaying"
            sub.recv_multipart()
    finally:
        sub.close(linger=0)
        wrong.close(linger=0)
    assert relay.popen.poll() is None, relay.output()


def test_a_client_behind_a_relay_that_was_down_gets_what_it_missed(harness: Harness) -> None:
    import messages as m
    import session
    from client import ChatClient

    broker = harness.broker()
    relay_ep = f"tcp://127.0.0.1:{free_port()}"
    argv = ["relay.py", "--pub", broker.pub, "--router", broker.router, "--listen", relay_ep]
    relay = Proc(argv, "relay", stdin=False)
    harness.procs.append(relay)
    relay.expect(r"feed for subscribers:\s+tcp://")
    bob = harness.client(broker, "bob")
    with ChatClient("far", router=broker.router, pub=relay_ep) as far:
        far.connect(timeout=WAIT)
        seen: list[session.Event] = []  # every event far gave, none dropped: they may come in either order

        def pump_until(done) -> None:
            """Keep far's session going (it pings, it hears the feed) until ``done()``: a session left unpolled
            for 3 heartbeats (a relay slow to start on a busy machine) loses its whole link, not just the feed."""
            deadline = time.monotonic() + WAIT
            while not done():
                assert time.monotonic() < deadline, f"never came; far saw {seen}"
                seen.extend(far.poll(0.1))

        def came(predicate, since: int = 0):
            return lambda: any(predicate(event) for event in seen[since:])

        bob.send("before")
        pump_until(came(lambda e: isinstance(e, m.MsgEvent) and e.text == "before"))
        relay.kill()
        relay.wait()
        # The inbox answers, the feed says nothing.
        pump_until(came(lambda e: isinstance(e, session.Status) and e.state == session.Change.FEED_LOST))
        lost = len(seen)
        bob.send("while the relay was down")
        relay = Proc(argv, "relay", stdin=False)
        harness.procs.append(relay)
        pump_until(lambda: relay.search(r"feed for subscribers:\s+tcp://", timeout=0) is not None)
        # The feed comes back: FEED_RESTORED (or, had the whole link dropped meanwhile, RESTORED or RECONNECTED,
        # which end the feed's loss too).  Its catch-up may deliver what was missed before or after that status.
        back = (session.Change.FEED_RESTORED, session.Change.RESTORED, session.Change.RECONNECTED)
        pump_until(came(lambda e: isinstance(e, session.Status) and e.state in back, lost))
        pump_until(came(lambda e: isinstance(e, m.MsgEvent), lost))
        missed = [e.text for e in seen[lost:] if isinstance(e, m.MsgEvent)]
        assert missed == ["while the relay was down"], seen  # nobody spoke again: only the catch-up shows it
