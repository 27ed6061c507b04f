"""Socket-level fuzzing: random and malformed frames from several raw DEALERs at a real broker.

Afterwards the broker must be alive, its memory bounded, and two ordinary clients must chat as before.

    python benchmarks/fuzz.py --duration 60 --peers 8

Exit status 0 when all three hold, 1 otherwise.  The frames are drawn from a seeded generator
(``--seed``), so a failing run can be replayed.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import messages as m  # noqa: E402
from client import ChatClient  # noqa: E402

TYPES = [*m.REQUESTS, "welcome", "ack", "", "HELLO", "msg ", "\u0000"]
NASTY = ["\x1b[2J", "\u202e", "\x00", "\ud800", "é", "💥", "../", "room/", "%s%n", "' OR 1=1", "\r\n"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcxyz_-.AZ09/ #" + "".join(NASTY)) for _ in range(rng.randrange(0, 40)))


def _json_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2**63, 1.5e308, float("nan")])
    if kind == 1:
        return rng.randrange(-(10**6), 10**6)
    if kind in (2, 3):
        return _word(rng)
    if kind == 4:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {_word(rng): _json_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _request(rng: random.Random) -> dict:
    """Something shaped like a request, often nearly right, which is where the bugs live."""
    env: dict = {"type": rng.choice(TYPES)}
    for field in rng.sample(["user", "room", "text", "id", "to", "rooms", "after", "limit", "me"], rng.randrange(5)):
        env[field] = rng.choice(
            [_json_value(rng), _word(rng), "general", "x" * rng.randrange(3990, 4010), rng.randrange(-5, 600)]
        )
    if rng.random() < 0.3:
        env["user"] = f"fz{rng.randrange(10**6)}"  # valid names too, so sessions and rooms get made
        env["room"] = f"r{rng.randrange(200)}"
    return env


def _encode(value: object) -> bytes:
    try:
        return msgspec.json.encode(value)
    except (TypeError, ValueError):  # a lone surrogate, say: send something close instead
        return repr(value).encode("utf-8", "surrogatepass")


def frames(rng: random.Random, max_frame: int) -> list[bytes]:
    roll = rng.random()
    if roll < 0.15:
        return [os.urandom(rng.randrange(0, 2000))]
    if roll < 0.30:
        return [_encode(_json_value(rng))]
    if roll < 0.75:
        return [_encode(_request(rng))]
    if roll < 0.82:
        return [_encode(_request(rng)) for _ in range(rng.randrange(2, 5))]  # several frames
    if roll < 0.88:
        return [b"[" * rng.randrange(500, 5000)]  # deep nesting
    if roll < 0.94:
        return [b'{"type":"msg","text":"\xff\xfe\xed\xa0\x80"}']  # invalid UTF-8
    if roll < 0.997:
        return [b""]
    # Over the frame limit: libzmq drops the connection (and what the DEALER queued), so keep it rare.
    return [b"x" * (max_frame + rng.randrange(1, 10_000))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_broker() -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "broker.py", "--router", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0", "--db", ":memory:",
         "--heartbeat", "0.5", "--session-timeout", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    router = pub = ""
    for line in proc.stdout:
        if "inbox (ROUTER):" in line:
            router = line.split()[-1]
        if "feed  (PUB):" in line:
            pub = line.split()[-1]
        if router and pub:
            return proc, router, pub
    raise RuntimeError("the broker did not start")


def chat_works(router: str, pub: str) -> bool:
    """Two ordinary clients: one says something, the other must see it."""
    with (
        ChatClient("after-fuzz-a", router=router, pub=pub) as a,
        ChatClient("after-fuzz-b", router=router, pub=pub) as b,
    ):
        a.connect(timeout=10)
        b.connect(timeout=10)
        a.say("general", "still standing")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            a.poll(0)
            if any(isinstance(e, m.MsgEvent) and e.text == "still standing" for e in b.poll(0.05)):
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of fuzzing (default: %(default)s)")
    parser.add_argument("--peers", type=int, default=6, help="raw DEALER sockets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-growth-mb", type=float, default=64.0, help="allowed broker RSS growth")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    broker, router, pub = start_broker()
    ctx = zmq.Context()
    peers = []
    try:
        for _ in range(args.peers):
            peer = ctx.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.setsockopt(zmq.SNDHWM, 1000)
            peer.connect(router)
            peers.append(peer)
        time.sleep(0.5)  # let the connections come up before measuring the starting RSS
        start_rss = peak_rss = rss_kib(broker.pid)
        sent = replies = 0
        end = time.monotonic() + args.duration
        while time.monotonic() < end and broker.poll() is None:
            peer = rng.choice(peers)
            try:
                peer.send_multipart(frames(rng, m.MAX_FRAME_BYTES), zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
            for p in peers:  # read replies as they come, so the broker's reply queues do not just fill
                while p.poll(0):
                    p.recv_multipart()
                    replies += 1
            if sent % 2000 == 0:
                peak_rss = max(peak_rss, rss_kib(broker.pid))
        alive = broker.poll() is None
        end_rss = rss_kib(broker.pid) if alive else 0
        chatting = alive and chat_works(router, pub)
        growth_mb = (max(peak_rss, end_rss) - start_rss) / 1024
        print(f"frames sent         {sent}")
        print(f"replies             {replies}")
        print(f"broker alive        {alive}")
        print(f"broker RSS (KiB)    start {start_rss}, peak {max(peak_rss, end_rss)}, end {end_rss}")
        print(f"RSS growth (MiB)    {growth_mb:.1f} (allowed {args.max_growth_mb})")
        print(f"clients chat after  {chatting}")
        ok = alive and chatting and growth_mb <= args.max_growth_mb
        print("RESULT:", "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for peer in peers:
            peer.close()
        ctx.term()
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    sys.exit(main())
