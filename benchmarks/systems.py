"""The systems under test: each a process of its own on ephemeral loopback ports, started and stopped here.

Ours: the broker with ``--db :memory:`` (the throwaway mode), with ``--db FILE`` (the default, ``--sync
normal``) and with ``--sync full``; the same broker fed by batching publishers.  Baselines: the bare Python
loop and the same loop with the protocol's parsing (``baselines.py``), ``zmq.proxy`` in C, the
thread-per-client relay of the original design (``thread_relay.py``).  Peers, where their servers and client
libraries are installed: Redis and NATS pub/sub (they keep nothing), and the durable ones, NATS JetStream (a
file-backed stream, one replica) and Redis Streams (``XADD`` with ``appendonly yes``, ``appendfsync
everysec``).

How each is loaded is the ``kind`` of ``loadgen.py`` its publishers and subscribers use.  A system's
``durable`` text says how it keeps what it acked; those systems make the durable table.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.driver import FAILURES, HERE, LOADGEN, PY, BenchError, failure, spawn
from benchmarks.procs import Child, descendants, free_port

#: Acks a JetStream publisher (nats-py) keeps in flight, and XADDs a Redis Streams publisher (redis-py)
#: pipelines: each the best of the values tried on this machine (docs/scaling.md, "How the peers are run").
JETSTREAM_IN_FLIGHT = 64
STREAMS_PIPELINE = 100
INSTALL_HINT = {
    "nats-server": "apt-get install nats-server",
    "redis-server": "apt-get install redis-server",
    "nats": "pip install nats-py",
    "redis": "pip install redis",
    "hiredis": "pip install hiredis",
}

#: Extra broker options from ``--broker-args``, to measure a variant (``--heartbeat 10``) without editing anything.
BROKER_ARGS: list[str] = []


@dataclass
class Server:
    """A running system under test: where publishers send, where subscribers listen, and what it left on disk."""

    child: Child
    inbox: str
    feed: str
    files: list[Path] = field(default_factory=list)
    #: Processes of the system whose CPU is reported each (a cluster's front doors and NATS nodes): name -> pid.
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.child.pid

    def stop(self) -> None:
        self.child.stop(grace=2.0)
        for path in self.files:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                for each in path.parent.glob(path.name + "*"):  # a database and its -wal and -shm
                    each.unlink(missing_ok=True)


@dataclass(frozen=True)
class System:
    key: str
    label: str
    short: str  # its name in goals and on the plot
    kind: str  # loadgen kind
    topic: str  # what its subscribers subscribe to (ZeroMQ kinds)
    start: Callable[[Path], Server]
    sub_levels: tuple[str, ...] = ("1", "main", "many")  # which throughput levels it takes part in
    latency: bool = True
    pub_args: tuple[str, ...] = ()  # extra loadgen options for its publishers
    durable: str = ""  # how it keeps what it acked (the durable table); "" = it keeps nothing, or not its row
    needs: tuple[str, ...] = ()  # programs (on PATH) and Python modules it needs; skipped, and said, without them
    quick: bool = True  # takes part in the --quick smoke run (False: its code path is another row's)


@contextlib.contextmanager
def running(system: System, work: Path) -> Iterator[Server]:
    """``system`` started, and stopped after.  It starts with the disk quiet: what the systems before it
    wrote (hundreds of MB for the durable ones) is flushed first, not written back by the kernel beside its
    measurement, on the same two cores."""
    os.sync()
    server = system.start(work)
    try:
        yield server
    finally:
        server.stop()


# --- starting each ------------------------------------------------------------------------------------


def _zmq_server(argv: list[str], name: str) -> Server:
    child = spawn(argv, name)
    try:
        inbox = child.expect(r"inbox \(ROUTER\):\s*(\S+)", 20).group(1)
        feed = child.expect(r"feed\s+\(PUB\):\s*(\S+)", 5).group(1)
    except FAILURES:
        child.stop()
        raise
    return Server(child, inbox, feed)


def broker(db: str = ":memory:", sync: str = "") -> Callable[[Path], Server]:
    """Our broker; ``db="FILE"`` is a new SQLite file in the work folder for each start."""

    def start(work: Path) -> Server:
        path = work / f"chat-{time.monotonic_ns()}.db" if db == "FILE" else None
        argv = [PY, "broker.py", "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*"]
        argv += ["--db", str(path or db), *(["--sync", sync] if sync else []), *BROKER_ARGS]
        # The load comes from one address: no per-connection or per-source limit may be what is measured.
        argv += ["--rate-limit", "0", "--source-rate", "0", "--max-sessions-per-source", "0"]
        argv += ["--max-rooms-per-source", "0"]
        for attempt in range(3):  # the broker is being worked on: a start that fails is retried a little later
            try:
                server = _zmq_server(argv, "broker")
                server.files += [path] if path else []
                return server
            except FAILURES as exc:
                if attempt == 2:
                    raise BenchError(f"the broker does not start: {failure(exc)}") from None
                print(f"  (the broker did not start, attempt {attempt + 1}: {failure(exc)}; retrying)", flush=True)
                time.sleep(3)
        raise AssertionError("unreachable")

    return start


def baseline(mode: str) -> Callable[[Path], Server]:
    def start(work: Path) -> Server:
        argv = [PY, str(HERE / "baselines.py"), mode, "--router", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*"]
        return _zmq_server(argv, mode)

    return start


def thread_relay(read_size: int) -> Callable[[Path], Server]:
    def start(work: Path) -> Server:
        argv = [PY, str(HERE / "thread_relay.py"), "--port", "0", "--read-size", str(read_size)]
        child = spawn(argv, "thread-relay")
        where = child.expect(r"listening on (\S+)", 20).group(1)
        return Server(child, where, where)

    return start


def redis(streams: bool) -> Callable[[Path], Server]:
    """redis-server: for pub/sub with no persistence at all; for Streams with its append-only file,
    ``appendfsync everysec`` (written at once, flushed to disk once a second), in a folder of its own."""

    def start(work: Path) -> Server:
        port = free_port()
        folder = work / f"redis-{time.monotonic_ns()}"
        folder.mkdir()
        persist = ["--appendonly", "yes", "--appendfsync", "everysec"] if streams else ["--appendonly", "no"]
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persist]
        child = spawn([*argv, "--dir", str(folder), "--daemonize", "no"], "redis-server")
        try:
            child.expect(r"Ready to accept connections", 20)
        except FAILURES:
            child.stop()
            raise
        return Server(child, f"127.0.0.1:{port}", f"127.0.0.1:{port}", [folder])

    return start


def nats(jetstream: bool) -> Callable[[Path], Server]:
    """nats-server; with JetStream, a store folder of its own and the stream (file storage, one replica)
    made by ``loadgen.py setup`` before any load."""

    def start(work: Path) -> Server:
        folder = work / f"jetstream-{time.monotonic_ns()}"
        argv = ["nats-server", "-a", "127.0.0.1", "-p", "-1", *(["-js", "-sd", str(folder)] if jetstream else [])]
        child = spawn(argv, "nats-server")
        try:
            where = child.expect(r"Listening for client connections on (\S+)", 20).group(1)
            child.expect(r"Server is ready", 10)
            if jetstream:
                with spawn([PY, LOADGEN, "setup", "--kind", "jetstream", "--endpoint", where], "setup") as setup:
                    setup.expect(r"^READY", 20)
        except FAILURES:
            child.stop()
            raise
        return Server(child, where, where, [folder] if jetstream else [])

    return start


def cluster(doors: int) -> Callable[[Path], Server]:
    """Our brokers as front doors of a cluster (issue 17): ``nats_cluster.py`` starts three nats-server nodes
    (an R3 file stream) and ``doors`` front doors, all its children, so the SUT's CPU is the whole cluster's.
    With two, publishers send through the first and subscribers read the second: every event crosses."""

    def start(work: Path) -> Server:
        folder = work / f"cluster-{time.monotonic_ns()}"
        limits = ["--rate-limit", "0", "--source-rate", "0", "--max-sessions-per-source", "0"]
        argv = [PY, "nats_cluster.py", "--dir", str(folder), "--brokers", str(doors), "--port", "0"]
        child = spawn([*argv, "--", *limits, "--max-rooms-per-source", "0", *BROKER_ARGS], "nats-cluster")
        try:
            found = [child.expect(r"front door \d+: inbox (\S+) feed (\S+)", 60) for _ in range(doors)]
        except FAILURES:
            child.stop()
            raise
        return Server(child, found[0].group(1), found[-1].group(2), [folder], _cluster_parts(child.pid))

    return start


def _cluster_parts(pid: int) -> dict[str, int]:
    """The front doors and NATS nodes among ``nats_cluster.py``'s processes, each named, in start order."""
    parts: dict[str, int] = {}
    counts = {"front door": 0, "NATS node": 0}
    for child in sorted(descendants(pid)):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            door = any(arg.endswith(b"broker.py") for arg in argv)
            kind = "NATS node" if argv[0].endswith(b"nats-server") else "front door" if door else ""
            if kind:
                counts[kind] += 1
                parts[f"{kind} {counts[kind]}"] = child
    return parts


# --- the catalogue ----------------------------------------------------------------------------------

ROOM = "room/general/"
#: In the order each run measures them: the default and ``:memory:`` back to back, as the goals compare the
#: two (the machine drifts by several percent over the minutes the other systems take).
CATALOGUE = (
    System(
        "broker-db",
        "our broker, --db FILE --sync normal (the default)",
        "broker, default",
        "broker",
        ROOM,
        broker("FILE"),
        durable="the journal (one write, in the OS page cache) before the ack, which keeps the events; SQLite's index "
        "of them (WAL, synchronous=NORMAL) soon after; survives kill -9, not a power cut",
    ),
    System(
        "broker",
        "our broker, --db :memory: (throwaway: keeps nothing)",
        "broker :memory:",
        "broker",
        ROOM,
        broker(),
        durable="nothing: the throwaway mode, for comparison",
    ),
    System(
        "broker-db-batch",
        "our broker, --db FILE (the default), publishers batch (<= 100 msgs per frame)",
        "broker, default, batching publishers",
        "broker",
        ROOM,
        broker("FILE"),
        ("1", "main"),
        pub_args=("--per-frame", "100"),
        durable="as the default: batches of up to 100 per frame, as Redis Streams' publishers pipeline 100 XADDs",
    ),
    System(
        "broker-full",
        "our broker, --db FILE --sync full",
        "broker, --sync full",
        "broker",
        ROOM,
        broker("FILE", "full"),
        ("1", "main"),
        durable="the journal, fdatasync, then SQLite's index (WAL, synchronous=FULL), fsync, before the ack; "
        "survives a power cut",
    ),
    System(
        "broker-batch",
        "our broker (:memory:), publishers batch (<= 100 msgs per frame)",
        "broker :memory:, batching publishers",
        "broker",
        ROOM,
        broker(),
        pub_args=("--per-frame", "100"),
    ),
    System("bare", "bare Python loop ROUTER->PUB, no parsing", "bare loop", "zmq", ROOM, baseline("bare")),
    System(
        "parse",
        "same loop + parse/validate/stamp/ack (msgspec)",
        "bare loop + parsing",
        "broker",
        ROOM,
        baseline("parse"),
        ("main",),
        latency=False,
    ),
    System(
        "proxy", "zmq.proxy ROUTER->PUB in C (the limit)", "zmq.proxy (C)", "zmq", "", baseline("proxy"), ("1", "main")
    ),
    System(
        "threads",
        "thread-per-client TCP relay, 64 KiB reads",
        "thread relay, 64 KiB reads",
        "tcp",
        "",
        thread_relay(65536),
        quick=False,
    ),
    System(
        "threads-1k",
        "thread-per-client TCP relay, recv(1024) (original design)",
        "thread relay, recv(1024) (original)",
        "tcp",
        "",
        thread_relay(1024),
    ),
    System(
        "jetstream",
        f"NATS JetStream, file store R1 (nats-py, {JETSTREAM_IN_FLIGHT} acks in flight)",
        "NATS JetStream",
        "jetstream",
        "",
        nats(jetstream=True),
        ("1", "main"),
        pub_args=("--in-flight", str(JETSTREAM_IN_FLIGHT)),
        durable="file store, one replica: written before the ack, flushed to disk by the server's own schedule",
        needs=("nats-server", "nats"),
    ),
    System(
        "redis-streams",
        f"Redis Streams XADD, AOF everysec (redis-py, pipelined {STREAMS_PIPELINE})",
        "Redis Streams",
        "redis-streams",
        "",
        redis(streams=True),
        ("1", "main"),
        pub_args=("--in-flight", str(STREAMS_PIPELINE)),
        durable="append-only file, appendfsync everysec: written before the reply, flushed once a second",
        needs=("redis-server", "redis", "hiredis"),
    ),
    System(
        "cluster-1",
        "our brokers as a cluster: 1 front door, NATS JetStream R3 on 3 nodes",
        "cluster, 1 front door",
        "broker",
        ROOM,
        cluster(1),
        ("1", "main"),
        durable="JetStream file store, 3 replicas: on a quorum of 2 nodes before the ack; survives losing a node",
        needs=("nats-server", "nats"),
        quick=False,
    ),
    System(
        "cluster-2",
        "our brokers as a cluster: in through one front door, out through another",
        "cluster, 2 front doors",
        "broker",
        ROOM,
        cluster(2),
        ("1", "main"),
        durable="as the cluster with one front door; every event crosses from one front door to the other",
        needs=("nats-server", "nats"),
        quick=False,
    ),
    System(
        "redis",
        "Redis pub/sub (redis-py, pipelined 100)",
        "Redis pub/sub",
        "redis",
        "",
        redis(streams=False),
        needs=("redis-server", "redis"),
    ),
    System(
        "nats",
        "NATS core pub/sub (Go), nats-py publishers",
        "NATS core",
        "nats",
        "",
        nats(jetstream=False),
        needs=("nats-server", "nats"),
    ),
)
BY_KEY = {s.key: s for s in CATALOGUE}


def _missing(need: str) -> bool:
    return shutil.which(need) is None if need.endswith("-server") else importlib.util.find_spec(need) is None


def available(quick: bool = False) -> tuple[list[System], list[str]]:
    """The systems this machine can run (those of the smoke run with ``quick``), and a note for each it cannot."""
    found, notes = [], []
    for system in CATALOGUE:
        if quick and not system.quick:
            continue
        missing = [need for need in system.needs if _missing(need)]
        if missing:
            hint = "; ".join(INSTALL_HINT[need] for need in missing)
            notes.append(f"{system.key}: skipped ({', '.join(missing)} missing: {hint})")
        else:
            found.append(system)
    return found, notes
