"""Soak test: many bots chat while bots and the broker are killed and restarted at random.

At the end the logger's file is checked against every acknowledgement the bots
received: each acknowledged message must be in the log exactly once, with the
seq its ack gave, and each room's events must chain without holes (each one's
``prev`` the seq before it) or repeats.

    python benchmarks/soak.py --duration 300          # five minutes, the defaults otherwise
    python benchmarks/soak.py --duration 10 --bots 3  # a quick run (the test suite does this)
    python benchmarks/soak.py --cluster 2             # a cluster: 3 NATS nodes, 2 front doors (issue 17)

With ``--cluster N`` the broker is N front doors (``broker.py --cluster``) on three nats-server nodes; the
faults are bots, front doors (each restarted) and NATS nodes (kill -9, the stream's leader among them,
each restarted); every bot and every logger is given all front doors, each starting at another one, and
there is a logger per front door: each acknowledged message must be in every logger's file once, and
every logger must hold each room in one order.

Exit status: 0 when nothing acknowledged was lost or repeated, 1 otherwise.
(``soak.py bot ...`` is the bot process the soak starts; it is not meant to be run by hand.)
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import session  # noqa: E402
from client import ChatClient, ChatError  # noqa: E402

#: How long the bots get, after the chaos, to have their last messages acked (a cluster acks one sender's
#: messages one at a time, and a backlog from an election drains at its pace) before they are killed.
BOT_STOP_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the bot process ----------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_bot(args: argparse.Namespace) -> int:
    """Chat at ``--rate`` messages/s in random rooms; record each send and each ack, flushed at once."""
    signal.signal(signal.SIGTERM, _interrupt)
    rng = random.Random(args.name)
    rooms = args.rooms.split(",")
    record = open(args.record, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    routers, pubs = args.router.split(","), args.pub.split(",")  # several: front doors, the first tried first
    bot = ChatClient(args.name, router=routers, pub=pubs, rooms=rooms, ack_timeout=1.0)

    def note(events: list[session.Event]) -> None:
        for event in events:
            if isinstance(event, session.Acked):
                ack = event.ack
                record.write(f"A {ack.id} {ack.room} {ack.seq}\n")

    try:
        while True:
            try:
                bot.connect(timeout=60)
                break
            except ChatError:
                time.sleep(0.2)  # e.g. name_taken by a session of ours the broker has not timed out yet
        interval = 1.0 / args.rate
        next_send = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_send and len(bot.unacked) < 500:  # back-pressure while the broker is away
                msg_id = bot.say(rng.choice(rooms), f"{args.name} says {rng.random():.6f}")
                record.write(f"S {msg_id}\n")
                next_send = max(next_send + interval, now - 1.0)
            note(bot.poll(max(0.0, next_send - time.monotonic())))
    except KeyboardInterrupt:
        note(bot.close(flush_timeout=20.0))  # the acks that come in while it waits count too
    return 0


# --- the soak -----------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.work = workdir
        self.rng = random.Random(args.seed)
        doors = max(1, args.cluster)
        self.routers = [f"tcp://127.0.0.1:{free_port()}" for _ in range(doors)]
        self.pubs = [f"tcp://127.0.0.1:{free_port()}" for _ in range(doors)]
        self.db = workdir / "chat.db"
        self.logs_out = [workdir / (f"chat-{i}.jsonl" if args.cluster else "chat.jsonl") for i in range(doors)]
        self.rooms = [f"room{i}" for i in range(args.rooms)]
        self.brokers: list[subprocess.Popen | None] = [None] * doors
        self.nats = None
        if args.cluster:
            from nats_cluster import NatsCluster

            self.nats = NatsCluster(workdir / "nats")
        self.bots: dict[int, subprocess.Popen] = {}
        self.children: list[subprocess.Popen] = []  # everything spawned, for the end
        self.generation = collections.Counter()
        self.counts = collections.Counter()
        self.logs: list = []

    def spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.work / f"{name}.out", "ab")  # noqa: SIM115 (closed at the end)
        self.logs.append(log)
        child = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.children.append(child)
        return child

    def start_broker(self, door: int = 0) -> None:
        argv = ["broker.py", "--router", self.routers[door], "--pub", self.pubs[door]]
        if self.nats is not None:
            argv += ["--cluster", ",".join(self.nats.urls)]
        else:
            argv += ["--db", str(self.db)]
        argv += ["--rate-limit", "0", "--source-rate", "0", "--heartbeat", "0.5", "--session-timeout", "3"]
        self.brokers[door] = self.spawn(argv, f"broker{door}" if self.nats else "broker")

    def endpoints(self, first: int) -> list[str]:
        """Every front door, starting at ``first``: ``--router A,B --pub A,B``."""
        order = [(first + i) % len(self.routers) for i in range(len(self.routers))]
        return ["--router", ",".join(self.routers[i] for i in order), "--pub", ",".join(self.pubs[i] for i in order)]

    def start_bot(self, slot: int) -> None:
        self.generation[slot] += 1
        name = f"bot{slot}-{self.generation[slot]}"
        argv = [__file__, "bot", "--name", name, *self.endpoints(slot)]
        argv += ["--rooms", ",".join(self.rooms), "--rate", str(self.args.rate), "--record", str(self.work / "acks")]
        self.bots[slot] = self.spawn(argv, name)

    def wait_for_logger(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        out = self.work / f"{name}.out"
        while b"chat-logger: following" not in (out.read_bytes() if out.exists() else b""):
            if time.monotonic() > deadline:
                raise RuntimeError("the logger did not start")
            time.sleep(0.05)  # watching a file another process writes; the condition synchronises

    def chaos(self) -> None:
        """One random fault: most often a bot dies, sometimes a broker (kill -9, or a clean stop), in a cluster
        sometimes a NATS node (kill -9: a follower, or the stream's leader)."""
        roll = self.rng.random()
        if roll < 0.6:
            slot = self.rng.randrange(len(self.bots))
            self.bots[slot].kill()
            self.bots[slot].wait()
            self.counts["bot kill -9"] += 1
            self.start_bot(slot)
        elif self.nats is not None and roll >= 0.85:
            node = self.rng.choice(self.nats.nodes)
            role = "leader" if node is self.nats.stream_leader("CHAT") else "follower"
            node.kill()
            self.counts[f"nats {role} kill -9"] += 1
            time.sleep(self.rng.uniform(0.2, 1.5))
            self.nats.start_node(node)
        else:
            door = self.rng.randrange(len(self.brokers))
            broker = self.brokers[door]
            assert broker is not None
            hard = roll < 0.85 if self.nats is None else roll < 0.75
            broker.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            broker.wait(20)
            self.counts["broker kill -9" if hard else "broker SIGTERM"] += 1
            time.sleep(self.rng.uniform(0.2, 1.5))  # the broker is down for a while: that is the fault
            self.start_broker(door)

    def run(self) -> int:
        if self.nats is not None:
            self.nats.start()
        try:
            return self._run()
        finally:  # whatever happened (the harness itself failing too): nothing it started outlives it
            for child in self.children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            if self.nats is not None:
                self.nats.stop()

    def _run(self) -> int:
        for door in range(len(self.brokers)):
            self.start_broker(door)
        loggers = []
        for door, out in enumerate(self.logs_out):
            name = f"logger{door}" if self.nats else "logger"
            loggers.append(self.spawn(["logger.py", *self.endpoints(door), "--out", str(out)], name))
            self.wait_for_logger(name)  # it logs from its snapshot on: the bots start after it has one
        for slot in range(self.args.bots):
            self.start_bot(slot)
        end = time.monotonic() + self.args.duration
        while time.monotonic() < end:
            time.sleep(min(self.rng.uniform(0.5, 2.0), max(0.0, end - time.monotonic())))  # pacing the faults
            if time.monotonic() < end:
                self.chaos()
        for bot in self.bots.values():
            bot.send_signal(signal.SIGTERM)  # a clean stop: each waits for its acks
        deadline = time.monotonic() + BOT_STOP_S
        for bot in self.bots.values():
            try:
                bot.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # still resending into a slow log: what it has not got acked
                bot.kill()  # was never acked, so the checks hold without it
                bot.wait()
                self.counts["bots killed at the end"] += 1
        acked = self.acked()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(acked.keys() <= self.logged_ids(out) for out in self.logs_out):
            time.sleep(0.2)  # the loggers catch up by themselves; we only wait for them
        for logger in loggers:
            logger.send_signal(signal.SIGTERM)
            logger.wait(10)
        for broker in self.brokers:
            assert broker is not None
            broker.send_signal(signal.SIGTERM)
            broker.wait(20)
        for log in self.logs:
            log.close()
        return self.report(acked)

    def acked(self) -> dict[str, tuple[str, int]]:
        acks: dict[str, tuple[str, int]] = {}
        for line in (self.work / "acks").read_text().splitlines():
            parts = line.split()
            if parts[0] == "A" and len(parts) == 4:
                acks[parts[1]] = (parts[2], int(parts[3]))
            elif parts[0] == "S":
                self.counts["sent"] += 1
        return acks

    @staticmethod
    def events(out: Path) -> list[dict]:
        return [json.loads(line) for line in out.read_text().split("\n")[:-1]] if out.exists() else []

    def logged_ids(self, out: Path) -> set[str]:
        return {e["id"] for e in self.events(out) if e["type"] == "msg"}

    def report(self, acked: dict[str, tuple[str, int]]) -> int:
        """The checks, for every logger's file (summed over them); in a cluster also: each room in one order
        in every file."""
        lost = duplicated = misplaced = holes = repeats = logged = disagree = 0
        orders: dict[str, list[list[int]]] = collections.defaultdict(list)
        for out in self.logs_out:
            events = self.events(out)
            logged += len(events)
            messages = collections.Counter(e["id"] for e in events if e["type"] == "msg")
            where = {e["id"]: (e["room"], e["seq"]) for e in events if e["type"] == "msg"}
            lost += sum(1 for i in acked if i not in messages)
            duplicated += sum(n - 1 for n in messages.values() if n > 1)
            misplaced += sum(1 for i, at in acked.items() if i in where and where[i] != at)
            for room in {e["room"] for e in events}:
                chain = [(e["seq"], e.get("prev", e["seq"] - 1)) for e in events if e["room"] == room]
                seqs = [seq for seq, _ in chain]
                repeats += len(seqs) - len(set(seqs))
                if seqs != sorted(seqs):
                    repeats += 1  # out of order counts as a fault too
                holes += sum(1 for (before, _), (_, prev) in itertools.pairwise(chain) if prev != before)
                orders[room].append(seqs)
        for seen in orders.values():  # every file holds the room's events in one order, where they overlap: a
            start = max(seqs[0] for seqs in seen)  # logger started later saw less of the start, and one stopped
            end = min(seqs[-1] for seqs in seen)  # earlier less of the end (the bots' last leaves); not another order
            tails = {tuple(s for s in seqs if start <= s <= end) for seqs in seen}
            disagree += len(tails) - 1
        messages = sum(1 for out in self.logs_out for e in self.events(out) if e["type"] == "msg")
        rows = [
            ("duration (s)", self.args.duration),
            ("bots (at once)", self.args.bots),
            ("bot incarnations", sum(self.generation.values())),
            *sorted(self.counts.items()),
            ("acked", len(acked)),
            ("loggers", len(self.logs_out)),
            ("logged messages", messages),
            ("logged events", logged),
            ("lost (acked, not logged)", lost),
            ("duplicated", duplicated),
            ("seq holes", holes),
            ("seq repeats / disorder", repeats),
            ("ack seq != logged seq", misplaced),
            ("rooms in another order", disagree),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        failed = lost or duplicated or holes or repeats or misplaced or disagree
        print("RESULT:", "FAIL" if failed else "PASS", f"(work files in {self.work})")
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bot"]:
        bot = argparse.ArgumentParser(prog="soak.py bot")
        for option in ("--name", "--router", "--pub", "--rooms", "--record"):
            bot.add_argument(option, required=True)
        bot.add_argument("--rate", type=float, required=True)
        return run_bot(bot.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos (default: %(default)s)")
    parser.add_argument("--bots", type=int, default=6, help="bots chatting at once (default: %(default)s)")
    parser.add_argument("--rooms", type=int, default=3, help="rooms they chat in (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=40.0, help="messages per second per bot (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="where to keep the database, logs and acks (default: a temp dir)")
    parser.add_argument(
        "--cluster", type=int, default=0, metavar="N", help="N front doors on 3 NATS nodes, not one broker (default: 0)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chat-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Soak(args, workdir).run()


if __name__ == "__main__":
    sys.exit(main())
