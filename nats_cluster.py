"""Three nats-server nodes with JetStream on this machine: the replicated log a cluster of brokers shares.

The cluster of issue 17 keeps the chat's history in one JetStream stream replicated on three NATS nodes,
with brokers as front doors over it.  This starts the nodes (Debian's ``nats-server``; 27-55 MB each,
healthy in well under a second on fresh folders) for trying the design out and for the tests:

    python nats_cluster.py                      # three nodes on free ports; prints their URLs; Ctrl-C stops
    python nats_cluster.py --dir /tmp/nats      # their data (stream files, logs) in /tmp/nats/n1..n3
    python nats_cluster.py --brokers 2          # and two brokers as front doors (``broker.py --cluster``)

With ``--brokers N`` it also starts N brokers on 127.0.0.1 (inbox/feed ports 5555/5556, 5565/5566, ...; with
``--port 0``, free ones), waits until each serves, prints where and the command that connects a console
client to all of them (it moves on when its door goes).  Options after ``--`` go to every broker.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifeline import die_with_parent

#: The cluster's name in every node's config (routes only join nodes of one name), with a suffix per folder.
CLUSTER_NAME = "chat"
#: How long a node may take to answer ``/healthz`` (JetStream ready) before the start is given up.
START_TIMEOUT_S = 20.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now.  They are released before their user binds them, so another process
    may take one meanwhile (under a parallel test run it happens): ``NatsCluster.start`` copes with that."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:  # bound all at once: none is handed out twice
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class Node:
    """One nats-server: its ports, its folder, its process."""

    def __init__(self, name: str, folder: Path, cluster_name: str = CLUSTER_NAME) -> None:
        self.name = name
        self.folder = folder
        self.cluster_name = cluster_name
        self.client_port, self.route_port, self.monitor_port = free_ports(3)
        self.process: subprocess.Popen[bytes] | None = None
        self.server_id: str | None = None  # what its monitor port says, once that was seen to be this node's
        self.log_from = 0  # where this start's lines begin in its log

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def log(self) -> Path:
        return self.folder / "nats.log"

    def config(self, routes: list[str]) -> str:
        routes_text = ", ".join(f'"{route}"' for route in routes)
        return (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'jetstream {{ store_dir: "{self.folder / "store"}" }}\n'
            f'cluster {{ name: "{self.cluster_name}", listen: 127.0.0.1:{self.route_port}, routes: [{routes_text}] }}\n'
        )

    def start(self, routes: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nats.conf"
        conf.write_text(self.config(routes))
        self.server_id = None
        with open(self.log, "ab") as log:
            self.log_from = log.seek(0, 2)
            self.process = subprocess.Popen(
                ["nats-server", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )

    def failed(self) -> str | None:
        """Why this start of the node is over (None: it runs): it exited, or its log says it is about to (a
        fatal error, most often a port it could not bind: ``free_port`` found it free, someone took it since)."""
        if self.process is None:
            return "was not started"
        if self.process.poll() is not None:
            return f"exited ({self.process.returncode})"
        with contextlib.suppress(OSError), open(self.log, "rb") as log:
            log.seek(self.log_from)
            fatal = next((line for line in log if b"[FTL]" in line), None)
            if fatal is not None:
                return "failed: " + fatal.decode(errors="replace").split("[FTL]", 1)[1].strip()
        return None

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON document, if this node is the server that answers it (else None).

        The monitor port may belong to another process (taken before this node could bind it, or since it
        died): anything may answer there, another cluster's nats-server included.  So each document is checked
        for this node's server id, learned from ``/varz`` when it named this node's ports."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            document = self._get(path)
            if self.server_id is None:
                varz = document if path == "varz" else self._get("varz")
                if (varz.get("port"), varz.get("http_port")) != (self.client_port, self.monitor_port):
                    return None
                self.server_id = varz.get("server_id") or None
        except Exception:  # refused, reset, not HTTP (a NATS port's INFO line), not JSON, ...: not this node
            return None
        return document if self.server_id and document.get("server_id") == self.server_id else None

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{path}", timeout=1) as reply:
            return json.load(reply)

    def healthy(self) -> bool:
        """JetStream on this node is up and current (``/healthz`` answers 200), as this very node says.
        Whatever goes wrong asking, or whoever else answers, is "not yet"."""
        if self.monitor("varz") is None:  # not up yet, or its monitor port is not its own
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as reply:
                # Still running: still the one that answered /varz (the port is its own while it lives).
                return reply.status == 200 and self.process is not None and self.process.poll() is None
        except Exception:  # an error status (HTTPError), refused, not HTTP, ...
            return False

    def kill(self) -> None:
        """kill -9: what a crash of its host costs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class NatsCluster:
    """``nodes`` nats-servers routed to each other, each with JetStream in a folder of its own."""

    def __init__(self, folder: Path, nodes: int = 3) -> None:
        self.folder = folder
        # A name of its own (the same for the same folder): a route that reaches another cluster's node (its
        # route port taken by that one before this cluster's node bound it) is refused, not joined.
        self.name = f"{CLUSTER_NAME}-{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]}"
        self.nodes = [Node(f"n{i}", folder / f"n{i}", self.name) for i in range(1, nodes + 1)]
        self._new_ports()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _new_ports(self) -> None:
        ports = iter(free_ports(3 * len(self.nodes)))  # distinct within the cluster
        for node in self.nodes:
            node.client_port, node.route_port, node.monitor_port = next(ports), next(ports), next(ports)

    def start(self, attempts: int = 5) -> None:
        """Start every node and wait until each says JetStream is ready; ``RuntimeError`` if one does not.
        A node that fails (most often: a port that ``free_port`` found free was taken before the node bound it,
        which nats-server logs as fatal and exits) makes every node start again, on new ports."""
        fresh = not any((node.folder / "store").exists() for node in self.nodes)
        for attempt in range(attempts):
            for node in self.nodes:
                self.start_node(node, wait=False)
            try:
                self.wait_healthy()
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                if fresh:  # what the failed start stored (the nodes that came up made a meta group) only slows
                    for node in self.nodes:  # the next start down (~5 s, as they agree it away): gone with it
                        shutil.rmtree(node.folder / "store", ignore_errors=True)
                self._new_ports()

    def start_node(self, node: Node, wait: bool = True) -> None:
        """(Re)start one node on its ports and folder, as after a crash."""
        node.start([f"nats-route://127.0.0.1:{other.route_port}" for other in self.nodes if other is not node])
        if wait:
            self.wait_healthy([node])

    def wait_healthy(self, nodes: Sequence[Node] | None = None, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until each node is healthy (``RuntimeError`` at once if one fails, or if one is not in time)."""
        deadline = time.monotonic() + timeout
        waiting = list(nodes or self.nodes)
        while True:
            for node in nodes or self.nodes:  # the healthy ones too: a port clash can come to light late
                failed = node.failed()
                if failed:
                    raise RuntimeError(f"nats-server {node.name} {failed}; see {node.log}")
            waiting = [node for node in waiting if not node.healthy()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {waiting[0].name} not healthy in {timeout:g} s; see {waiting[0].log}")
            time.sleep(0.05)

    def stream_leader(self, stream: str) -> Node | None:
        """The node that leads ``stream`` now, as any live node's monitoring endpoint says (None: none yet)."""
        for node in self.nodes:
            jsz = node.monitor("jsz?streams=true") or {}  # {}: down, or another server on its port
            accounts = jsz.get("account_details") or []
            for detail in (d for account in accounts for d in account.get("stream_detail") or []):
                leader = detail.get("cluster", {}).get("leader") if detail.get("name") == stream else None
                if leader:
                    return next((n for n in self.nodes if n.name == leader), None)
        return None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nats-cluster", description="Three nats-server nodes with JetStream.")
    parser.add_argument("--dir", type=Path, help="where the nodes keep their data (default: a new temporary folder)")
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default: %(default)s)")
    parser.add_argument("--brokers", type=int, default=0, help="front doors to start on them (default: none)")
    parser.add_argument(
        "--port",
        type=int,
        default=5555,
        help="the first front door's inbox port, its feed the next, the second "
        "front door's 10 more, ... (0: free ports; default: %(default)s)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if shutil.which("nats-server") is None:
        print("nats-cluster: nats-server is not installed (Debian: apt-get install nats-server)", file=sys.stderr)
        return 2
    folder = args.dir or Path(tempfile.mkdtemp(prefix="nats-cluster-"))
    cluster = NatsCluster(folder, args.nodes)
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        print(f"nats-cluster: {exc}", file=sys.stderr)
        return 1
    print(f"NATS cluster {cluster.name!r}: {', '.join(cluster.urls)} (data in {folder})", flush=True)
    ports = [
        (args.port + 10 * i, args.port + 10 * i + 1) if args.port else (free_port(), free_port())
        for i in range(args.brokers)
    ]
    brokers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.brokers):
            brokers.append(start_broker(cluster, *ports[i], folder / f"broker{i + 1}.log", extra))
    except RuntimeError as exc:
        for broker in brokers:
            broker.kill()
        cluster.stop()
        print(f"nats-cluster: {exc}", file=sys.stderr)
        return 1
    for i, (inbox, feed) in enumerate(ports):
        print(f"front door {i + 1}: inbox tcp://127.0.0.1:{inbox} feed tcp://127.0.0.1:{feed}")
    if brokers:
        routers = ",".join(f"tcp://127.0.0.1:{inbox}" for inbox, _ in ports)
        pubs = ",".join(f"tcp://127.0.0.1:{feed}" for _, feed in ports)
        print(f"{len(brokers)} front doors (logs in {folder}); chat through them with:")
        print(f"  python client.py --router {routers} --pub {pubs}")
    print("Ctrl-C stops it.", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            while all(node.process is not None and node.process.poll() is None for node in cluster.nodes):
                time.sleep(0.5)
    finally:
        for broker in brokers:
            broker.send_signal(signal.SIGTERM)
        for broker in brokers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                broker.wait(timeout=15)
        cluster.stop()
    return 0


def start_broker(
    cluster: NatsCluster, inbox: int, feed: int, log_path: Path, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """A broker as a front door of ``cluster`` on these ports, once it serves (``RuntimeError`` if it does not)."""
    argv = [sys.executable, str(Path(__file__).resolve().parent / "broker.py"), "--cluster", ",".join(cluster.urls)]
    argv += ["--router", f"tcp://127.0.0.1:{inbox}", "--pub", f"tcp://127.0.0.1:{feed}", *extra]
    with open(log_path, "ab") as log:
        broker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    deadline = time.monotonic() + START_TIMEOUT_S
    while b"Ctrl-C stops it" not in log_path.read_bytes():  # what it prints once it serves
        if broker.poll() is not None or time.monotonic() > deadline:
            broker.kill()
            raise RuntimeError(f"a front door did not start; see {log_path}")
        time.sleep(0.05)
    return broker


if __name__ == "__main__":
    sys.exit(main())
