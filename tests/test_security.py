"""CurveZMQ: encryption, the allow-list, names bound to keys, per-key limits; all with real processes."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from pathlib import Path

import pytest
import zmq
from conftest import WAIT, Broker, Harness, free_port

import keys
import messages as m
from client import ChatClient, ChatError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    keys.init(path)
    keys.add_user(path, "alice")
    keys.add_user(path, "bob")
    keys.add_user(path, "logger-key", bind=False)
    return path


def user_key(keydir: Path, name: str) -> keys.CurveKeys:
    return keys.client_keys(keydir / "broker.key", keydir / "users" / f"{name}.key_secret")


def key_args(keydir: Path, name: str) -> list[str]:
    return ["--server-key", str(keydir / "broker.key"), "--key", str(keydir / "users" / f"{name}.key_secret")]


def curve_broker(harness: Harness, keydir: Path, *extra: str, **kw: str) -> Broker:
    broker = harness.broker("--curve", str(keydir), *extra, **kw)
    broker.expect(r"security:\s+CURVE, 3 allowed keys \(2 bound to a name\)")
    return broker


def test_plain_mode_says_so(harness: Harness) -> None:
    broker = harness.broker()
    broker.expect(r"security:\s+plain: no encryption, no authentication")


def test_keys_tool_makes_and_lists_keys(tmp_path: Path) -> None:
    keydir = tmp_path / "k"
    assert keys.main(["init", str(keydir)]) == 0
    assert keys.main(["init", str(keydir)]) == 1  # never overwrites the broker's key
    assert keys.main(["add", str(keydir), "carol"]) == 0
    assert keys.main(["add", str(keydir), "bot", "--unbound"]) == 0
    assert keys.main(["add", str(keydir), "bad name"]) == 1
    allowed = keys.allowed_keys(keydir)
    assert sorted(name or "-" for name in allowed.values()) == ["-", "carol"]
    assert (keydir / "users" / "carol.key_secret").stat().st_mode & 0o077 == 0  # secrets are private


def test_a_curve_broker_serves_clients_with_the_right_keys(harness: Harness, keydir: Path) -> None:
    broker = curve_broker(harness, keydir)
    log = harness.tmp_path / "chat.jsonl"
    harness.logger(broker, "--out", str(log), *key_args(keydir, "logger-key"))
    alice = harness.client(broker, "alice", *key_args(keydir, "alice"))
    bob = harness.client(broker, "bob", *key_args(keydir, "bob"))
    alice.send("encrypted hello")
    bob.expect(r"^alice: encrypted hello$")
    bob.send("/msg alice and a private one")
    alice.expect(r"^\[dm\] bob: and a private one$")


def test_clients_without_the_right_keys_get_nothing(harness: Harness, keydir: Path) -> None:
    broker = curve_broker(harness, keydir)
    alice = harness.client(broker, "alice", *key_args(keydir, "alice"))
    ends = {"router": broker.router, "pub": broker.pub}
    # No keys at all: the handshake never completes, so no answer, no feed.
    with ChatClient("mallory", **ends) as doomed, pytest.raises(TimeoutError):
        doomed.connect(timeout=1.5)
    # A well-formed key that is not on the allow-list: refused at the handshake.
    stranger = keydir.parent / "stranger"
    keys.init(stranger)
    keys.add_user(stranger, "mallory")
    unlisted = keys.client_keys(keydir / "broker.key", stranger / "users" / "mallory.key_secret")
    with ChatClient("mallory", curve=unlisted, **ends) as doomed, pytest.raises(TimeoutError):
        doomed.connect(timeout=1.5)
    # A plain SUB on the CURVE feed receives nothing while a keyed subscriber receives the chat.
    ctx = harness.ctx
    plain = ctx.socket(zmq.SUB)
    plain.setsockopt(zmq.SUBSCRIBE, b"")
    plain.connect(broker.pub)
    with ChatClient(None, curve=user_key(keydir, "logger-key"), **ends) as watcher:
        watcher.connect(timeout=WAIT)
        alice.send("for keyed ears only")
        deadline = time.monotonic() + WAIT
        while not any(isinstance(e, m.MsgEvent) and e.text == "for keyed ears only" for e in watcher.poll(0.1)):
            assert time.monotonic() < deadline, "the keyed subscriber should have received it"
    assert not plain.poll(200), "a plain SUB received something from a CURVE feed"
    plain.close(linger=0)


def test_a_bound_key_keeps_its_name_and_only_its_name(harness: Harness, keydir: Path) -> None:
    broker = curve_broker(harness, keydir)
    ends = {"router": broker.router, "pub": broker.pub}
    # alice's key cannot say hello as bob ...
    with ChatClient("bob", curve=user_key(keydir, "alice"), **ends) as doomed, pytest.raises(ChatError) as refused:
        doomed.connect(timeout=WAIT)
    assert refused.value.code == "name_reserved"
    # ... and bob cannot take alice's name, although alice is not even online.
    with ChatClient("alice", curve=user_key(keydir, "bob"), **ends) as doomed, pytest.raises(ChatError) as refused:
        doomed.connect(timeout=WAIT)
    assert refused.value.code == "name_reserved"
    # Nor in another case.
    with ChatClient("ALICE", curve=user_key(keydir, "bob"), **ends) as doomed, pytest.raises(ChatError) as refused:
        doomed.connect(timeout=WAIT)
    assert refused.value.code == "name_reserved"
    # An unbound key may use any name that is not bound to someone else.
    with ChatClient("helper-bot", curve=user_key(keydir, "logger-key"), **ends) as bot:
        welcome = bot.connect(timeout=WAIT)
        assert isinstance(welcome, m.Welcome) and welcome.user == "helper-bot"
        with (
            ChatClient("bob", curve=user_key(keydir, "logger-key"), **ends) as doomed,
            pytest.raises(ChatError) as refused,
        ):
            doomed.connect(timeout=WAIT)
        assert refused.value.code == "name_reserved"


def test_sessions_per_key_are_limited(harness: Harness, keydir: Path) -> None:
    broker = curve_broker(harness, keydir, "--max-sessions-per-key", "2")
    ends = {"router": broker.router, "pub": broker.pub}
    key = user_key(keydir, "logger-key")
    with ChatClient("one", curve=key, **ends) as one, ChatClient("two", curve=key, **ends) as two:
        one.connect(timeout=WAIT)
        two.connect(timeout=WAIT)
        with ChatClient("three", curve=key, **ends) as doomed, pytest.raises(ChatError) as refused:
            doomed.connect(timeout=WAIT)
        assert refused.value.code == "too_many_sessions"


class TcpTap:
    """A loopback TCP forwarder that keeps a copy of every byte, to look for cleartext on the wire."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self.stop.is_set():
            for key, _ in sel.select(0.1):
                sock = key.fileobj
                if sock is self.listener:
                    inside, _ = self.listener.accept()
                    outside = socket.create_connection(self.target)
                    peers[inside], peers[outside] = outside, inside
                    sel.register(inside, selectors.EVENT_READ)
                    sel.register(outside, selectors.EVENT_READ)
                    continue
                if sock not in peers:  # its pair ended earlier in this same round
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        self.seen += data
                        peers[sock].sendall(data)
                        continue
                except OSError:  # reset by one side: the pair is over, as with a clean close
                    pass
                other = peers.pop(sock)
                del peers[other]
                for end in (sock, other):
                    sel.unregister(end)
                    end.close()
        for sock in peers:
            sock.close()


def test_nothing_crosses_the_wire_in_clear(harness: Harness, keydir: Path) -> None:
    router_port, pub_port = free_port(), free_port()
    broker = curve_broker(harness, keydir, router=f"tcp://127.0.0.1:{router_port}", pub=f"tcp://127.0.0.1:{pub_port}")
    taps = TcpTap(router_port), TcpTap(pub_port)
    try:
        ends = {"router": f"tcp://127.0.0.1:{taps[0].port}", "pub": f"tcp://127.0.0.1:{taps[1].port}"}
        bob = harness.client(broker, "bob", *key_args(keydir, "bob"))
        with ChatClient("alice", curve=user_key(keydir, "alice"), **ends) as alice:
            alice.connect(timeout=WAIT)
            alice.say("general", "the secret plans are in the blue folder")
            alice.dm("bob", "a private secret for bob")
            while alice.unacked:
                alice.poll(0.05)
            # A room message and a private one travel different paths: no order between them is promised.
            expected = {"alice: the secret plans are in the blue folder", "[dm] alice: a private secret for bob"}
            deadline = time.monotonic() + WAIT
            while not expected <= set(bob.output(settle=0.1)):
                assert time.monotonic() < deadline, bob.output()
        wire = bytes(taps[0].seen + taps[1].seen)
        assert len(wire) > 500  # the traffic did go through the taps
        for clear in (b"secret plans", b"private secret", b'"type"', b"alice", b"general"):
            assert clear not in wire, f"{clear!r} crossed the wire in clear"
    finally:
        for tap in taps:
            tap.close()
