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
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lifeline import die_with_parent

#: The cluster's name in every node's config (routes only join nodes of one name).
CLUSTER_NAME = "chat"
#: How long a node may take to answer ``/healthz`` (JetStream ready) before the start is given up.
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One nats-server: its ports, its folder, its process."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.client_port, self.route_port, self.monitor_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def config(self, routes: list[str]) -> str:
        routes_text = ", ".join(f'"{route}"' for route in routes)
        return (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'jetstream {{ store_dir: "{self.folder / "store"}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{self.route_port}, routes: [{routes_text}] }}\n'
        )

    def start(self, routes: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nats.conf"
        conf.write_text(self.config(routes))
        with open(self.folder / "nats.log", "ab") as log:
            self.process = subprocess.Popen(
                ["nats-server", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )

    def healthy(self) -> bool:
        """JetStream on this node is up and current (``/healthz`` answers 200)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
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
        self.nodes = [Node(f"n{i}", folder / f"n{i}") for i in range(1, nodes + 1)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, attempts: int = 3) -> None:
        """Start every node and wait until each says JetStream is ready; ``RuntimeError`` if one does not.
        A node that exits at once (most often: a port that ``free_port`` found free was taken before the node
        bound it) makes every node start again, on new ports."""
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
                for node in self.nodes:
                    node.client_port, node.route_port, node.monitor_port = free_port(), free_port(), free_port()

    def start_node(self, node: Node, wait: bool = True) -> None:
        """(Re)start one node on its ports and folder, as after a crash."""
        node.start([f"nats-route://127.0.0.1:{other.route_port}" for other in self.nodes if other is not node])
        if wait:
            self.wait_healthy([node])

    def wait_healthy(self, nodes: Sequence[Node] | None = None, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while not node.healthy():
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited; see {node.folder / 'nats.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {node.name} not healthy in {timeout:g} s")
                time.sleep(0.05)

    def stream_leader(self, stream: str) -> Node | None:
        """The node that leads ``stream`` now, as any live node's monitoring endpoint says (None: none yet)."""
        for node in self.nodes:
            try:
                url = f"http://127.0.0.1:{node.monitor_port}/jsz?streams=true"
                with urllib.request.urlopen(url, timeout=1) as reply:
                    accounts = json.load(reply).get("account_details", [])
            except (urllib.error.URLError, OSError, ValueError):
                continue
            for detail in (d for account in accounts for d in account.get("stream_detail", [])):
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
    print(f"NATS cluster {CLUSTER_NAME!r}: {', '.join(cluster.urls)} (data in {folder})", flush=True)
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
