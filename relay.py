"""Feed relay: ZeroMQ's own XSUB/XPUB proxy chained on the broker's feed, to spread the fan-out.

The broker's PUB then sends each event once per relay instead of once per subscriber; subscribers
on other hosts connect to a relay near them.  Subscriptions travel upstream through the proxy, so
a subscriber behind a relay receives exactly what it would from the broker (same topics, same
frames, same seqs), and fills gaps from the broker's ``history`` as usual: requests still go to the
broker's inbox, only the feed is relayed.

    python relay.py --host BROKER_HOST                     # relays tcp://BROKER_HOST:5556 on tcp://*:5557
    python client.py --router tcp://BROKER_HOST:5555 --pub tcp://RELAY_HOST:5557 --name alice

The relay holds no chat state and parses nothing: ``zmq.proxy`` runs in C.  See docs/scaling.md.
Given several brokers (``--host A,B``), it watches their ``sys/`` heartbeats on a SUB of its own and, after
``--failover-after`` seconds of silence, stops the proxy, moves its upstream to the next broker (the XSUB
sends that one every subscription it holds) and starts the proxy again: subscribers stay connected.
The feed of a CURVE broker (``--server-key``/``--key``) is served with CURVE too (``--curve``); the
relay refuses to serve it in clear unless told ``--serve-plaintext``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

import cli
import keys
import messages as m
import transport
from broker import FEED_HWM

DEFAULT_RELAY_PORT = 5557
#: With several brokers: seconds without a heartbeat from ours before the relay moves to the next (three of
#: the broker's default heartbeats).
FAILOVER_AFTER_S = 3.0
#: Largest frame a subscriber may send (a subscription is 1 byte + a topic, ``room/NAME/`` is at most 38).
#: libzmq drops the connection of a peer that sends more: a subscription of megabytes, stored in the
#: upstream socket's prefix trie, crashes libzmq 4.3 (a stack overflow) when it is removed again.
MAX_SUBSCRIPTION_BYTES = 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-relay", description="Relay a chat broker's feed (XSUB/XPUB proxy) so subscribers can connect here."
    )
    cli.add_endpoint_args(parser)
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
        "--failover-after",
        type=float,
        default=FAILOVER_AFTER_S,
        metavar="SECONDS",
        help="with several brokers: move to the next after this long without a heartbeat (default: %(default)s)",
    )
    parser.add_argument(
        "--serve-plaintext",
        action="store_true",
        help="serve the feed unencrypted even though the broker's feed is encrypted (--server-key/--key "
        "without --curve): anyone who can reach --listen reads every message",
    )
    parser.add_argument(
        "--feed-hwm",
        type=int,
        default=FEED_HWM,
        metavar="N",
        help="frames (a message or a batch) queued per subscriber (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.serve_plaintext and args.curve:
        parser.error("--serve-plaintext and --curve contradict each other: the feed is served with CURVE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        conn = cli.connection(args)
        feeds = conn["pub"]
        downstream_keys = keys.server_keys(args.curve) if args.curve else None
        allowed = keys.allowed_keys(args.curve) if args.curve else None
    except (OSError, ValueError) as exc:
        print(f"chat-relay: {exc}", file=sys.stderr)
        return 2
    curve = conn["curve"]
    if curve is not None and downstream_keys is None:
        # The broker encrypts its feed; relaying it in clear would undo that for anyone who can connect here.
        if not args.serve_plaintext:
            print(
                "chat-relay: the broker's feed is encrypted (--server-key/--key) but this relay would serve it "
                "unencrypted to any subscriber; give --curve KEYDIR to serve it with CURVE, or --serve-plaintext "
                "if that is really what you want",
                file=sys.stderr,
            )
            return 2
        print(
            "chat-relay: WARNING: --serve-plaintext: the broker's encrypted feed is served unencrypted; "
            f"anyone who can connect to {args.listen} reads every message",
            file=sys.stderr,
            flush=True,
        )
    ctx = zmq.Context()
    auth = None
    upstream = ctx.socket(zmq.XSUB)
    downstream = ctx.socket(zmq.XPUB)
    transport.tune_connecting(upstream, curve)  # the relay is a (CURVE) client of the broker's feed
    transport.tune_bound(downstream)
    downstream.setsockopt(zmq.SNDHWM, args.feed_hwm)  # a stuck subscriber loses its own messages only
    downstream.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    upstream.setsockopt(zmq.RCVHWM, args.feed_hwm)
    if downstream_keys is not None:
        auth = transport.start_authenticator(ctx, args.curve, allowed)
        transport.curve_server(downstream, downstream_keys)
    try:
        downstream.bind(args.listen)
        upstream.connect(feeds[0])
    except zmq.ZMQError as exc:
        print(f"chat-relay: cannot start: {exc}", file=sys.stderr)
        ctx.destroy(linger=0)
        return 1
    print(f"chat relay (protocol v{m.PROTOCOL_VERSION})")
    print(f"  from the broker's feed: {', '.join(feeds)}" + (" (CURVE)" if curve is not None else ""))
    print(f"  feed for subscribers:   {downstream.getsockopt_string(zmq.LAST_ENDPOINT)}")
    print(f"  security:               {transport.security_mode(downstream_keys is not None, allowed)}")
    print("Ctrl-C stops it.", flush=True)
    transport.stop_on_sigterm()
    try:
        if len(feeds) == 1:
            zmq.proxy(upstream, downstream)  # events come down, subscriptions go up; all in C
        else:
            Failover(ctx, upstream, downstream, feeds, curve, args.failover_after).run()
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


class Failover:
    """The proxy in a thread of its own, which this one stops (``TERMINATE`` on its control socket) to move
    the upstream to the next broker when the one it follows has sent no heartbeat for ``after`` seconds."""

    def __init__(
        self,
        ctx: zmq.Context,
        upstream: zmq.Socket,
        downstream: zmq.Socket,
        feeds: list[str],
        curve: keys.CurveKeys | None,
        after: float,
    ) -> None:
        self.ctx, self.upstream, self.downstream, self.feeds, self.after = ctx, upstream, downstream, feeds, after
        self.at = 0
        self.watch = ctx.socket(zmq.SUB)  # the heartbeats of the broker we follow, nothing else
        transport.tune_connecting(self.watch, curve)
        self.watch.setsockopt(zmq.SUBSCRIBE, m.SYS_TOPIC)
        self.watch.connect(feeds[0])
        self.runs = 0  # each run of the proxy gets a control pair of its own: a PAIR takes one peer, ever

    def run(self) -> None:
        try:
            heard = time.monotonic()
            while True:
                control, proxy = self._start()
                try:
                    while self.watch.poll(max(1, int((heard + self.after - time.monotonic()) * 1000))):
                        self.watch.recv_multipart()
                        heard = time.monotonic()
                finally:
                    control.send(b"TERMINATE")  # the proxy stops; only then may this thread touch its sockets
                    proxy.join()
                    control.close(linger=0)
                self._move((self.at + 1) % len(self.feeds))
                heard = time.monotonic()  # give the next one as long
        finally:
            self.watch.close(linger=0)

    def _start(self) -> tuple[zmq.Socket, threading.Thread]:
        """A proxy thread, and the bound end of its control pair (connected before the proxy starts)."""
        self.runs += 1
        endpoint = f"inproc://relay-control-{self.runs}"
        control = self.ctx.socket(zmq.PAIR)
        control.bind(endpoint)
        peer = self.ctx.socket(zmq.PAIR)
        peer.connect(endpoint)
        proxy = threading.Thread(target=self._proxy, args=(peer,), name="proxy", daemon=True)
        proxy.start()
        return control, proxy

    def _proxy(self, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self.upstream, self.downstream, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(linger=0)

    def _move(self, at: int) -> None:
        old, new = self.feeds[self.at], self.feeds[at]
        print(f"chat-relay: no heartbeat from {old} for {self.after:g} s; relaying {new}", flush=True)
        for sock in (self.upstream, self.watch):
            transport.move(sock, old, new)
        self.at = at


if __name__ == "__main__":
    sys.exit(main())
