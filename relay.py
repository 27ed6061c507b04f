"""Feed relay: ZeroMQ's own XSUB/XPUB proxy chained on the broker's feed, to spread the fan-out.

The broker's PUB then sends each event once per relay instead of once per subscriber; subscribers
on other hosts connect to a relay near them.  Subscriptions travel upstream through the proxy, so
a subscriber behind a relay receives exactly what it would from the broker (same topics, same
frames, same seqs), and fills gaps from the broker's ``history`` as usual: requests still go to the
broker's inbox, only the feed is relayed.

    python relay.py --host BROKER_HOST                     # relays tcp://BROKER_HOST:5556 on tcp://*:5557
    python client.py --router tcp://BROKER_HOST:5555 --pub tcp://RELAY_HOST:5557 --name alice

The relay holds no chat state and parses nothing: ``zmq.proxy`` runs in C.  See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

import keys
import messages as m
from broker import FEED_HWM, LINGER_MS
from client import add_endpoint_args, connection

DEFAULT_RELAY_PORT = 5557


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-relay", description="Relay a chat broker's feed (XSUB/XPUB proxy) so subscribers can connect here."
    )
    add_endpoint_args(parser)
    parser.add_argument(
        "--listen",
        default=f"tcp://*:{DEFAULT_RELAY_PORT}",
        metavar="ENDPOINT",
        help="where subscribers connect, any ZeroMQ endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--curve",
        metavar="KEYDIR",
        type=Path,
        help="serve the relayed feed with CURVE, keys and allow-list from KEYDIR (as the broker's --curve)",
    )
    parser.add_argument(
        "--feed-hwm",
        type=int,
        default=FEED_HWM,
        metavar="N",
        help="frames (a message or a batch) queued per subscriber (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        conn = connection(args)
        downstream_keys = keys.server_keys(args.curve) if args.curve else None
        allowed = keys.allowed_keys(args.curve) if args.curve else None
    except (OSError, ValueError) as exc:
        print(f"chat-relay: {exc}", file=sys.stderr)
        return 2
    ctx = zmq.Context()
    auth = None
    upstream = ctx.socket(zmq.XSUB)
    downstream = ctx.socket(zmq.XPUB)
    for sock in (upstream, downstream):
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.IPV6, 1)
    downstream.setsockopt(zmq.SNDHWM, args.feed_hwm)  # a stuck subscriber loses its own messages only
    upstream.setsockopt(zmq.RCVHWM, args.feed_hwm)
    curve = conn["curve"]
    if curve is not None:  # the relay is a CURVE client of the broker's feed
        upstream.curve_serverkey, upstream.curve_publickey, upstream.curve_secretkey = curve
    if downstream_keys is not None:
        auth = ThreadAuthenticator(ctx)
        auth.start()
        location = str(args.curve / keys.ALLOWED) if allowed is not None else zmq.auth.CURVE_ALLOW_ANY
        auth.configure_curve(domain="*", location=location)
        downstream.curve_server = True
        downstream.curve_publickey, downstream.curve_secretkey = downstream_keys
    try:
        downstream.bind(args.listen)
        upstream.connect(conn["pub"])
    except zmq.ZMQError as exc:
        print(f"chat-relay: cannot start: {exc}", file=sys.stderr)
        ctx.destroy(linger=0)
        return 1
    print(f"chat relay (protocol v{m.PROTOCOL_VERSION})")
    print(f"  from the broker's feed: {conn['pub']}" + (" (CURVE)" if curve is not None else ""))
    print(f"  feed for subscribers:   {downstream.getsockopt_string(zmq.LAST_ENDPOINT)}")
    print("Ctrl-C stops it.", flush=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        zmq.proxy(upstream, downstream)  # events come down, subscriptions go up; all in C
    except (KeyboardInterrupt, zmq.ContextTerminated):
        pass
    finally:
        upstream.close(linger=0)
        downstream.close(linger=0)
        if auth is not None:
            auth.stop()
        ctx.term()
    print("chat relay stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
