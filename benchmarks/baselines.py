"""The baselines the broker is measured against, each as small as it can be.

    python benchmarks/baselines.py bare  --router tcp://127.0.0.1:* --pub tcp://127.0.0.1:*
    python benchmarks/baselines.py parse --router tcp://127.0.0.1:* --pub tcp://127.0.0.1:*
    python benchmarks/baselines.py proxy --router tcp://127.0.0.1:* --pub tcp://127.0.0.1:*
    python benchmarks/baselines.py relay --upstream tcp://127.0.0.1:5556 --pub tcp://127.0.0.1:*

- ``bare``: the broker's loop with nothing in it: drain the ROUTER, send each message on the PUB.
  The most a Python broker on pyzmq can do; the broker's throughput is quoted as a share of it.
- ``parse``: the same loop doing the least the protocol asks: validate with ``messages.parse_request``,
  stamp seq and ts, encode, publish, ack.  The gap between ``bare`` and ``parse`` is the price of
  JSON; the gap between ``parse`` and the broker is the chat logic, store and batching.
- ``proxy``: ``zmq.proxy(ROUTER, PUB)``, all in C; it publishes [identity, payload], so its
  subscribers subscribe to "".  The limit of the sockets themselves.
- ``relay``: an XSUB/XPUB ``zmq.proxy`` chained on a broker's feed, the zguide's way to fan a feed
  out to more machines: its subscribers see the broker's feed, subscriptions travel upstream.

Each prints its endpoints the way the broker does (``inbox (ROUTER): ...``, ``feed  (PUB): ...``).
Socket options (high-water marks) are the broker's, so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import messages as m  # noqa: E402
from broker import DRAIN_LIMIT, FEED_HWM, INBOX_HWM  # noqa: E402  (the broker's own settings: like for like)

TOPIC = b"room/general/"


def bare(router: zmq.Socket, pub: zmq.Socket) -> None:
    """recv on the ROUTER, send on the PUB: nothing parsed, nothing answered."""
    while True:
        router.poll()
        for _ in range(DRAIN_LIMIT):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            pub.send_multipart((TOPIC, frames[-1]))


def parse(router: zmq.Socket, pub: zmq.Socket) -> None:
    """The bare loop plus validation, a seq and a ts, encoding and an ack: the protocol's minimum."""
    seq = 0
    offset = time.time() - time.monotonic()
    while True:
        router.poll()
        for _ in range(DRAIN_LIMIT):
            try:
                peer, *frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                req = m.parse_request(frames)
            except m.ProtocolError as exc:
                router.send_multipart((peer, m.encode(exc.envelope())), zmq.NOBLOCK)
                continue
            if req["type"] == "hello":  # enough of a welcome for the load generator
                router.send_multipart((peer, m.encode({"type": "welcome", "user": req["user"]})), zmq.NOBLOCK)
            if req["type"] != "msg":
                continue
            seq += 1
            event = {"type": "msg", "room": req["room"], "user": "bench", "text": req["text"], "id": req["id"]}
            event["seq"] = seq
            event["ts"] = time.monotonic() + offset
            pub.send_multipart((m.room_topic(req["room"]), m.encode(event)))
            ack = m.encode({"type": "ack", "id": req["id"], "room": req["room"], "seq": seq})
            with contextlib.suppress(zmq.ZMQError):  # like the broker: a full or vanished peer loses its ack
                router.send_multipart((peer, ack), zmq.NOBLOCK)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("bare", "parse", "proxy", "relay"))
    parser.add_argument("--router", default="tcp://127.0.0.1:*", help="inbox endpoint to bind")
    parser.add_argument("--pub", default="tcp://127.0.0.1:*", help="feed endpoint to bind")
    parser.add_argument("--upstream", help="relay: the feed (PUB) endpoint to follow")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    ctx = zmq.Context()
    if args.mode == "relay":
        if not args.upstream:
            parser.error("relay needs --upstream")
        front = ctx.socket(zmq.XSUB)
        front.setsockopt(zmq.RCVHWM, FEED_HWM)
        front.connect(args.upstream)
        back = ctx.socket(zmq.XPUB)
        back.setsockopt(zmq.SNDHWM, FEED_HWM)
        back.bind(args.pub)
        print(f"  upstream (XSUB): {args.upstream}")
        print(f"  feed  (PUB):    {back.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    else:
        front = ctx.socket(zmq.ROUTER)
        front.setsockopt(zmq.SNDHWM, INBOX_HWM)
        front.setsockopt(zmq.RCVHWM, INBOX_HWM)
        front.bind(args.router)
        back = ctx.socket(zmq.PUB)
        back.setsockopt(zmq.SNDHWM, FEED_HWM)
        back.bind(args.pub)
        print(f"  inbox (ROUTER): {front.getsockopt_string(zmq.LAST_ENDPOINT)}")
        print(f"  feed  (PUB):    {back.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    try:
        if args.mode == "bare":
            bare(front, back)
        elif args.mode == "parse":
            parse(front, back)
        else:
            zmq.proxy(front, back)  # in C; returns only when the context is terminated
    except (KeyboardInterrupt, zmq.ContextTerminated):
        pass
    finally:
        front.close(0)
        back.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
