"""Load-generator processes for ``bench.py``: publishers, subscribers, stuck readers and idle clients.

Each role runs as a process of its own, so the load is spread over processes the way real clients are.
Every role talks to its coordinator the same way: it prints ``READY`` once connected, waits for one
``GO {json}`` line on stdin (``start``, ``end`` and the measurement ``windows``, all in
``time.monotonic_ns``, which is one system-wide clock on Linux), runs until ``end`` and prints
``RESULT {json}`` with its counters as they stood at each window boundary.

    python benchmarks/loadgen.py pub --kind broker --endpoint tcp://127.0.0.1:5555 --index 0
    python benchmarks/loadgen.py sub --kind broker --endpoint tcp://127.0.0.1:5556 --count 5

Kinds: ``broker`` (our broker: hello first, acks consumed), ``zmq`` (a bare ROUTER->PUB loop or
zmq.proxy: no replies), ``tcp`` (the thread-per-client relay: newline-delimited lines), ``redis`` and
``nats`` (pub/sub), and the durable ones: ``jetstream`` (publishers await JetStream's acks; subscribers
follow the stream's subject) and ``redis-streams`` (XADD, whose reply is the ack; readers XREAD).
``setup`` makes what a system needs first (JetStream's stream).  Every message carries its send time and a
per-publisher number in its text, so subscribers measure end-to-end latency and count what went missing.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import messages as m  # noqa: E402
from benchmarks.procs import raise_fd_limit  # noqa: E402

#: Every message's text starts with these fields; subscribers find them after this marker.
TEXT_MARK = b'"text":"'
#: Padding that brings an envelope to about 100 bytes, like a short chat line.
PAD = b"lorem ipsum dolor sit amet"
#: Most messages a broker publisher has in flight (sent, not acked): the reference client allows 1000.
MAX_UNACKED = 1000
#: Longest a role waits for its GO line before it gives up (the coordinator died or forgot it).
GO_TIMEOUT = 120.0
#: The room every publisher writes to and every subscriber follows.
ROOM = "general"


def now_ns() -> int:
    return time.monotonic_ns()


def make_message(index: int, number: int, stamp: int, id_prefix: bytes) -> bytes:
    """One ~100-byte msg envelope whose text is ``<send time ns> <publisher> <number> <padding>``."""
    return b'{"type":"msg","room":"general","text":"%019d %02d %010d %s","id":"%s%d"}' % (
        stamp,
        index,
        number,
        PAD,
        id_prefix,
        number,
    )


def parse_text(text: str | bytes) -> tuple[int, int, int]:
    """(send time ns, publisher index, message number) from the start of a message's text."""
    return int(text[:19]), int(text[20:22]), int(text[23:33])


def ready(**info: Any) -> dict[str, Any]:
    """Say READY and wait for the coordinator's GO; returns its schedule."""
    print("READY", json.dumps(info), flush=True)
    readable, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT)
    line = sys.stdin.readline() if readable else ""
    if not line.startswith("GO "):
        raise SystemExit("no GO from the coordinator")
    return json.loads(line[3:])


def finish(**result: Any) -> None:
    print("RESULT", json.dumps(result), flush=True)


class Marks:
    """Counter snapshots at the window boundaries, taken by a thread that wakes at each one.

    A thread, not the load loop, because the loop may sit in a blocking call (a full pipeline, a
    client library's flush) just when a boundary passes.
    """

    def __init__(self, schedule: dict[str, Any], snapshot: Callable[[], Any]) -> None:
        self.windows = schedule["windows"]
        self.snaps: dict[int, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(snapshot,), daemon=True)
        self.thread.start()

    def _run(self, snapshot: Callable[[], Any]) -> None:
        for bound in sorted(t for window in self.windows for t in window):
            time.sleep(max(0.0, (bound - now_ns()) / 1e9))
            self.snaps[bound] = snapshot()

    def close(self) -> list[list[Any]]:
        """Per window, [counters at its start, counters at its end]."""
        self.thread.join(timeout=max(0.0, (self.windows[-1][1] - now_ns()) / 1e9) + 5)
        return [[self.snaps[a], self.snaps[b]] for a, b in self.windows]

    def inside(self, t: int) -> bool:
        return any(a <= t < b for a, b in self.windows)


class Rate:
    """Which message numbers are due: all of them at once (rate 0) or one every 1/rate seconds."""

    def __init__(self, rate: float, start: int) -> None:
        self.interval = int(1e9 / rate) if rate > 0 else 0
        self.start = start

    def due(self, sent: int, now: int, cap: int) -> int:
        if not self.interval:
            return cap
        return max(0, min(cap, (now - self.start) // self.interval + 1 - sent))

    def wait_ms(self, sent: int, now: int, cap_ms: int = 50) -> int:
        if not self.interval:
            return 0
        return max(0, min(cap_ms, (self.start + sent * self.interval - now) // 1_000_000))


# --- publishers -----------------------------------------------------------------------------


def pub_zmq(args: argparse.Namespace) -> None:
    """A DEALER that floods (or paces) msg envelopes; for the broker it says hello and consumes every ack."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"\x01" + os.urandom(15))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)
    broker = args.kind == "broker"
    name = f"bench-pub{args.index}-{os.getpid()}"
    if broker:
        sock.send(m.encode({"type": "hello", "user": name, "rooms": [ROOM]}))
        if not sock.poll(10_000):
            raise SystemExit("no welcome from the broker")
        reply = m.decode(sock.recv())
        if reply.get("type") != "welcome":
            raise SystemExit(f"hello refused: {reply}")
    schedule = ready()
    rate = Rate(args.rate, max(now_ns(), schedule["start"]))
    end = schedule["end"]
    prefix = f"p{args.index}-".encode()
    sent = acked = errors = 0
    per_frame = args.per_frame if broker else 1
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN | zmq.POLLOUT)
    pollin = zmq.Poller()
    pollin.register(sock, zmq.POLLIN)

    def snap() -> list[int]:
        return [sent, acked, errors]

    marks = Marks(schedule, snap)
    while True:
        now = now_ns()
        if now >= end:
            break
        budget = rate.due(sent, now, 256)
        if broker:
            budget = min(budget, MAX_UNACKED - (sent - acked - errors))
        blocked = False
        left = budget
        while left > 0:
            # What is due goes out now: in one frame (a batch, as protocol.md allows) when several are.
            count = min(per_frame, left)
            stamp = now_ns()
            if count == 1:
                frame = make_message(args.index, sent, stamp, prefix)
            else:
                frame = b"[" + b",".join(make_message(args.index, sent + k, stamp, prefix) for k in range(count)) + b"]"
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                blocked = True
                break
            sent += count
            left -= count
        if broker:
            for _ in range(4096):
                try:
                    reply = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                acked += reply.count(b'{"type":"ack"')  # a reply frame, or the batch answering a batch
                errors += reply.count(b'{"type":"error"')
        if blocked:
            poller.poll(5)  # the send queue is full: wait for room (or acks)
        elif budget == 0:  # out of credit (acks will come), or paced and nothing is due yet
            if args.rate:
                # Paced: sleep until the next message is due.  Not a poll for acks: on a machine shared
                # with the system under test, a wake-up per ack would steal the CPU its subscribers need;
                # acks wait in the socket and are read on the next round.
                time.sleep(max(1, rate.wait_ms(sent, now_ns())) / 1000)
            else:
                pollin.poll(5)  # out of credit: the acks will come
    finish(role="pub", kind=args.kind, windows=marks.close(), total=snap())
    sock.close(0)
    ctx.term()


def pub_tcp(args: argparse.Namespace) -> None:
    """A client of the thread relay: writes lines, and reads (and drops) what the relay sends it."""
    host, port = args.endpoint.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _read_greeting(sock)
    sock.setblocking(False)
    schedule = ready()
    rate = Rate(args.rate, max(now_ns(), schedule["start"]))
    end = schedule["end"]
    prefix = f"p{args.index}-".encode()
    out = bytearray()
    sent = 0

    def snap() -> list[int]:
        return [sent, 0, 0]

    marks = Marks(schedule, snap)
    while True:
        now = now_ns()
        if now >= end:
            break
        room = (65536 - len(out)) // 128
        for _ in range(rate.due(sent, now, max(0, room))):
            out += make_message(args.index, sent, now_ns(), prefix) + b"\n"
            sent += 1
        try:
            while True:
                if not sock.recv(1 << 18):
                    raise SystemExit("the relay closed the connection")
        except BlockingIOError:
            pass
        if out:
            with contextlib.suppress(BlockingIOError):
                out = out[sock.send(out) :]
        if out:  # wait for room in the socket (and drain what the relay sends us)
            select.select([sock], [sock], [], 0.005)
        elif args.rate:  # paced: sleep until the next message is due, a millisecond at least
            select.select([sock], [], [], max(1, rate.wait_ms(sent, now_ns())) / 1000)
    finish(role="pub", kind="tcp", windows=marks.close(), total=snap())
    sock.close()


def pub_redis(args: argparse.Namespace) -> None:
    """redis-py, ``--in-flight`` commands pipelined at a time (fewer when paced: what is due goes in one
    pipeline): PUBLISH for pub/sub; XADD for Streams, where each reply (the entry's id) is the message's ack."""
    import redis

    host, port = args.endpoint.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_timeout=10)
    client.ping()
    streams = args.kind == "redis-streams"
    schedule = ready()
    rate = Rate(args.rate, max(now_ns(), schedule["start"]))
    end = schedule["end"]
    prefix = f"p{args.index}-".encode()
    pipe = client.pipeline(transaction=False)
    sent = acked = errors = 0

    def snap() -> list[int]:
        return [sent, acked, errors]

    marks = Marks(schedule, snap)
    while True:
        now = now_ns()
        if now >= end:
            break
        due = rate.due(sent, now, args.in_flight)
        if not due:
            time.sleep(max(rate.wait_ms(sent, now), 1) / 1000)
            continue
        for i in range(due):
            data = make_message(args.index, sent + i, now_ns(), prefix)
            if streams:
                pipe.xadd(ROOM, {"m": data})
            else:
                pipe.publish(ROOM, data)
        failed = sum(isinstance(reply, Exception) for reply in pipe.execute(raise_on_error=False))
        sent += due
        acked += due - failed
        errors += failed
    finish(role="pub", kind=args.kind, windows=marks.close(), total=snap())
    client.close()


def pub_nats(args: argparse.Namespace) -> None:
    """nats-py.  Core NATS: publish (buffered by the client, flushed by its flusher task), yielding every 100.
    JetStream: ``publish_async``, each message's ack a future, at most ``--in-flight`` unacked at a time (the
    client's own limit: it waits for acks when there are that many)."""
    import nats
    from nats.js.errors import TooManyStalledMsgsError

    async def main() -> None:
        nc = await nats.connect(f"nats://{args.endpoint}", connect_timeout=10, allow_reconnect=False)
        js = nc.jetstream(publish_async_max_pending=args.in_flight) if args.kind == "jetstream" else None
        schedule = await asyncio.get_running_loop().run_in_executor(None, ready)
        rate = Rate(args.rate, max(now_ns(), schedule["start"]))
        end = schedule["end"]
        prefix = f"p{args.index}-".encode()
        sent = acked = errors = 0

        def snap() -> list[int]:
            return [sent, acked, errors]

        def done(future: asyncio.Future) -> None:
            nonlocal acked, errors
            if future.cancelled() or future.exception() is not None:
                errors += 1
            else:
                acked += 1

        marks = Marks(schedule, snap)
        while True:
            now = now_ns()
            if now >= end:
                break
            for _ in range(rate.due(sent, now, 100)):
                data = make_message(args.index, sent, now_ns(), prefix)
                if js is None:
                    await nc.publish(ROOM, data)
                else:
                    try:  # waits while --in-flight messages have no ack yet; the clock is checked every 0.1 s
                        future = await js.publish_async(ROOM, data, wait_stall=0.1)
                    except TooManyStalledMsgsError:
                        break
                    future.add_done_callback(done)
                sent += 1
            await asyncio.sleep(max(1, rate.wait_ms(sent, now_ns())) / 1000 if args.rate else 0)
        if js is None:
            await nc.flush(timeout=10)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(js.publish_async_completed(), 10)
        finish(role="pub", kind=args.kind, windows=marks.close(), total=snap())
        await nc.close()

    asyncio.run(main())


# --- subscribers ------------------------------------------------------------------------------


class Tally:
    """What one subscriber process saw: messages per socket, latencies inside the windows, gaps per publisher."""

    def __init__(self, count: int, latency: bool, start: int) -> None:
        self.counts = [0] * count
        self.latency = latency
        self.start = start  # messages stamped before this are a previous run's leftovers: not ours
        self.stale = 0
        self.samples = array.array("q")
        self.first: dict[tuple[int, int], int] = {}  # (socket, publisher) -> first number seen
        self.last: dict[tuple[int, int], int] = {}
        self.seen: dict[tuple[int, int], int] = {}

    def note(self, sock: int, stamp: int, pub: int, number: int, now: int, marks: Marks) -> None:
        if stamp < self.start:
            self.stale += 1
            return
        self.counts[sock] += 1
        if marks.inside(now):
            self.samples.append(now - stamp)
        key = (sock, pub)
        self.first.setdefault(key, number)
        self.last[key] = max(self.last.get(key, number), number)
        self.seen[key] = self.seen.get(key, 0) + 1

    def raw(self, sock: int, data: bytes, now: int, marks: Marks) -> None:
        """Complete envelopes in ``data`` (a frame, or whole lines of a stream): count them, time them if asked."""
        if not self.latency:
            self.counts[sock] += data.count(TEXT_MARK)
            return
        at = data.find(TEXT_MARK)
        while at >= 0:
            self.note(sock, *parse_text(data[at + 8 : at + 41]), now, marks)
            at = data.find(TEXT_MARK, at + 41)

    def lost(self) -> int:
        """Messages missing between the first and last number each socket saw of each publisher."""
        return sum(self.last[k] - self.first[k] + 1 - self.seen[k] for k in self.seen)

    def result(self, args: argparse.Namespace, marks: Marks) -> None:
        if args.samples:
            with open(args.samples, "wb") as out:
                self.samples.tofile(out)
        finish(
            role="sub",
            kind=args.kind,
            windows=marks.close(),
            total=list(self.counts),
            lost=self.lost() if self.latency else None,
            samples=len(self.samples),
            stale=self.stale,
        )


def sub_zmq(args: argparse.Namespace) -> None:
    """``--count`` SUB sockets in one process; our broker's frames may be batches: every envelope counts."""
    ctx = zmq.Context()
    topic = args.topic.encode()
    socks = []
    for _ in range(args.count):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(args.endpoint)
        socks.append(sock)
    schedule = ready()
    tally = Tally(args.count, args.latency, schedule["start"])
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    index = {sock: i for i, sock in enumerate(socks)}
    end = schedule["end"]
    marks = Marks(schedule, lambda: list(tally.counts))
    while True:
        now = now_ns()
        if now >= end:
            break
        for sock, _ in poller.poll(20):
            i = index[sock]
            for _ in range(2000):
                try:
                    sock.recv(zmq.NOBLOCK)  # the topic (or, behind zmq.proxy, the publisher's identity)
                except zmq.Again:
                    break
                # Every system's subscribers read messages the same way: find each text's stamp in the bytes.
                # Decoding whole envelopes here cost the load generators most of a core at 10k msgs/s to 10
                # subscribers, on the two cores the system under test runs on: its latency tail was theirs.
                tally.raw(i, sock.recv(), now_ns(), marks)
    tally.result(args, marks)
    for sock in socks:
        sock.close(0)
    ctx.term()


def _read_greeting(sock: socket.socket) -> None:
    """The thread relay greets each client with one line once it is in the broadcast list.  Broadcast lines
    follow it at once, in the same reads: wait for the greeting's newline, not for a read that ends in one
    (under load none may, and a stuck reader then read on and never said READY)."""
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the relay closed the connection")
        data += chunk


def _connect_stream(kind: str, endpoint: str) -> socket.socket:
    """A subscribed stream socket: a thread-relay client, a Redis SUBSCRIBE or a NATS SUB (raw protocol; for
    JetStream too: its stream stores the subject, and subscribers of the subject get each message live)."""
    host, port = endpoint.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if kind == "tcp":
        _read_greeting(sock)
        return sock
    if kind == "redis":
        sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$7\r\ngeneral\r\n")
        expect = b":1\r\n"
    else:
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nSUB general 1\r\nPING\r\n')
        expect = b"PONG\r\n"
    data = b""
    while expect not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"{kind} closed the connection")
        data += chunk
    return sock


def received(socks: list[socket.socket], end: int, what: str) -> Iterator[tuple[int, bytes]]:
    """(socket index, bytes) as they arrive on any of ``socks`` (made non-blocking here), until ``end``."""
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    while now_ns() < end:
        for key, _ in selector.select(0.02):
            try:
                data = key.fileobj.recv(1 << 18)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit(f"{what} closed a subscriber's connection")
            yield key.data, data


def sub_stream(args: argparse.Namespace) -> None:
    """Subscribers that read a byte stream (thread relay, Redis, NATS), with light parsers of our own.

    A client library's per-message callback (redis-py, nats-py) costs more than the server we measure, so
    these read big chunks and count envelopes by their text; whole lines (every protocol here ends a
    message with a newline) are decoded when latency is measured.
    """
    socks = [_connect_stream(args.kind, args.endpoint) for _ in range(args.count)]
    schedule = ready()
    tally = Tally(args.count, args.latency, schedule["start"])
    carry = [b""] * args.count
    keep = len(TEXT_MARK) - 1
    marks = Marks(schedule, lambda: list(tally.counts))
    for i, chunk in received(socks, schedule["end"], args.kind):
        if args.kind in ("nats", "jetstream") and b"PING\r\n" in chunk:
            socks[i].sendall(b"PONG\r\n")
        data = carry[i] + chunk
        if args.latency:
            cut = data.rfind(b"\n") + 1
            tally.raw(i, data[:cut], now_ns(), marks)
            carry[i] = data[cut:]
        else:
            tally.counts[i] += data.count(TEXT_MARK)
            carry[i] = data[-keep:]
    tally.result(args, marks)
    for sock in socks:
        sock.close()


def resp(*parts: str | bytes) -> bytes:
    """A Redis command, as RESP."""
    encoded = [p.encode() if isinstance(p, str) else p for p in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


def sub_redis_streams(args: argparse.Namespace) -> None:
    """Readers of a Redis stream: each socket keeps one ``XREAD COUNT 1000 BLOCK 0`` outstanding, from the last
    entry id it got (at first ``$``: what comes after it connected).  Replies are parsed by hiredis, in C: a
    client library's per-entry work would cost more than the server we measure."""
    import hiredis

    host, port = args.endpoint.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(args.count)]
    readers = [hiredis.Reader() for _ in socks]
    last = [b"$"] * args.count

    def ask(i: int) -> None:
        socks[i].sendall(resp("XREAD", "COUNT", "1000", "BLOCK", "0", "STREAMS", ROOM, last[i]))

    for i, sock in enumerate(socks):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ask(i)
    schedule = ready()
    tally = Tally(args.count, args.latency, schedule["start"])
    marks = Marks(schedule, lambda: list(tally.counts))
    for i, chunk in received(socks, schedule["end"], "redis"):
        readers[i].feed(chunk)
        while (reply := readers[i].gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise SystemExit(f"XREAD failed: {reply}")
            entries = reply[0][1]
            t = now_ns()
            if args.latency:
                for _id, fields in entries:
                    tally.raw(i, fields[1], t, marks)
            else:
                tally.counts[i] += len(entries)
            last[i] = entries[-1][0]
            ask(i)  # a few bytes: the socket's send buffer has room
    tally.result(args, marks)
    for sock in socks:
        sock.close()


def setup(args: argparse.Namespace) -> None:
    """What a system needs before any load: for JetStream, the stream of the room's subject (file storage,
    one replica, the server's default limits).  Prints READY once it exists."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    async def main() -> None:
        nc = await nats.connect(f"nats://{args.endpoint}", connect_timeout=10, allow_reconnect=False)
        config = StreamConfig(name="CHAT", subjects=[ROOM], storage=StorageType.FILE, num_replicas=1)
        await nc.jetstream().add_stream(config)
        await nc.close()

    asyncio.run(main())
    print("READY", flush=True)


# --- a stuck subscriber, idle clients -----------------------------------------------------------


def stuck(args: argparse.Namespace) -> None:
    """Connects and subscribes like any reader, then never reads; exits when stdin closes or says STOP."""
    ctx = zmq.Context()
    if args.kind in ("broker", "zmq"):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, args.topic.encode())
        sock.connect(args.endpoint)
    else:
        conn = _connect_stream(args.kind, args.endpoint)
    print("READY {}", flush=True)
    select.select([sys.stdin], [], [], args.max_seconds)
    if args.kind in ("broker", "zmq"):
        sock.close(0)
    else:
        conn.close()
    ctx.term()


def idle(args: argparse.Namespace) -> None:
    """``--count`` chat sessions that said hello and then only ping once a heartbeat, as the protocol asks.

    Sessions are opened ``--batch`` at a time (the broker's listen backlog is libzmq's default, 100).
    Each joins one of the rooms ``idle-N`` of ``--per-room`` users, so a join reply stays small.
    """
    limit = raise_fd_limit()
    if limit < 2 * args.count + 64:  # a TCP socket and a mailbox per ZeroMQ socket
        raise SystemExit(f"the fd limit ({limit}) is too low for {args.count} clients")
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, args.count + 64)
    socks: list[zmq.Socket] = []
    welcomed: set[zmq.Socket] = set()
    poller = zmq.Poller()
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    pongs = 0
    heartbeat = beat = args.heartbeat  # until a welcome says how often the broker wants a ping
    next_ping: dict[zmq.Socket, float] = {}

    def serve(timeout_ms: int) -> bool:
        """Handle replies and due pings for a while; False when the coordinator said STOP (or left)."""
        nonlocal pongs, beat
        stop = False
        for sock, _ in poller.poll(timeout_ms):
            if not isinstance(sock, zmq.Socket):
                stop = True
                continue
            for _ in range(64):
                try:
                    reply = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if reply.startswith(b'{"type":"welcome"'):
                    welcomed.add(sock)
                    beat = m.decode(reply).get("heartbeat", beat)
                    next_ping[sock] = time.monotonic() + beat
                elif reply.startswith(b'{"type":"pong"'):
                    pongs += 1
        now = time.monotonic()
        for sock in welcomed:
            if now >= next_ping[sock]:
                sock.send(b'{"type":"ping"}', zmq.NOBLOCK)
                next_ping[sock] = now + beat
        return not stop

    deadline = time.monotonic() + args.max_seconds
    connect_deadline = time.monotonic() + args.connect_seconds
    for start in range(0, args.count, args.batch):
        if time.monotonic() >= connect_deadline:
            break
        batch = []
        for i in range(start, min(args.count, start + args.batch)):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, b"\x01" + os.urandom(15))
            sock.connect(args.endpoint)
            user = f"idle{args.index}-{i}"
            room = f"idle-{(args.index * args.count + i) // args.per_room}"
            sock.send(m.encode({"type": "hello", "user": user, "rooms": [room]}))
            next_ping[sock] = time.monotonic() + heartbeat
            poller.register(sock, zmq.POLLIN)
            socks.append(sock)
            batch.append(sock)
        while not welcomed.issuperset(batch) and time.monotonic() < connect_deadline:
            serve(10)
    print(
        "READY", json.dumps({"welcomed": len(welcomed), "sockets": len(socks)}), flush=True
    )  # all, or at the deadline
    while time.monotonic() < deadline and serve(50):
        pass
    finish(role="idle", welcomed=len(welcomed), pongs=pongs)
    for sock in socks:
        sock.close(0)
    ctx.term()


# --- command line ---------------------------------------------------------------------------------

PUBLISHERS = {
    "broker": pub_zmq,
    "zmq": pub_zmq,
    "tcp": pub_tcp,
    "redis": pub_redis,
    "redis-streams": pub_redis,
    "nats": pub_nats,
    "jetstream": pub_nats,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    for role in ("pub", "sub", "stuck", "idle", "setup"):
        sub = roles.add_parser(role)
        sub.add_argument("--endpoint", required=True, help="ZeroMQ endpoint, or HOST:PORT for tcp/redis/nats")
        sub.add_argument("--kind", choices=sorted(PUBLISHERS), default="broker")
        sub.add_argument("--index", type=int, default=0, help="this process's number among its peers")
        sub.add_argument("--rate", type=float, default=0.0, help="messages/s to offer, 0 = as fast as accepted")
        sub.add_argument("--count", type=int, default=1, help="subscriber sockets, or idle clients")
        sub.add_argument("--topic", default="room/general/", help="SUB subscription (zmq.proxy needs '')")
        sub.add_argument("--latency", action="store_true", help="decode every message and time it")
        sub.add_argument("--samples", help="file to write the latency samples (int64 ns) to")
        sub.add_argument("--batch", type=int, default=50, help="idle: sessions opened at a time")
        sub.add_argument(
            "--per-frame", type=int, default=1, help="pub to the broker: most messages per inbox frame (a batch)"
        )
        sub.add_argument(
            "--in-flight", type=int, default=100, help="pub: JetStream acks awaited at once; Redis commands pipelined"
        )
        sub.add_argument("--per-room", type=int, default=100, help="idle: users per room")
        sub.add_argument("--heartbeat", type=float, default=1.0, help="idle: seconds between pings")
        sub.add_argument("--max-seconds", type=float, default=300.0, help="stuck/idle: exit after this long")
        sub.add_argument("--connect-seconds", type=float, default=60.0, help="idle: time to open the sessions")
    args = parser.parse_args(argv)
    if args.role == "pub":
        PUBLISHERS[args.kind](args)
    elif args.role == "sub":
        subscribers = {"broker": sub_zmq, "zmq": sub_zmq, "redis-streams": sub_redis_streams}
        subscribers.get(args.kind, sub_stream)(args)
    elif args.role == "stuck":
        stuck(args)
    elif args.role == "setup":
        setup(args)
    else:
        idle(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
