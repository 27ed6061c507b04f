"""Transport set-up that every program shares: socket options, CURVE on sockets, the ZAP
authenticator, the open-files limit and the stop signal.

One home, so the broker, the relay, the web gateway and the clients make their sockets the same way
(and a fix to one is a fix to all).  Nothing here knows the chat protocol.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

import keys

#: How long a closing socket may still send what it queued (the broker's shutdown event, last acks).
LINGER_MS = 1_000
#: Reconnect quickly at first, then back off: a restarted broker is found within 100 ms, a dead one
#: is not hammered.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2_000


def broker_endpoints(router: str | Sequence[str], pub: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """One broker's inbox and feed, or lists of several brokers' in the same order, as two checked lists:
    ``ValueError`` for lists of different lengths or an endpoint libzmq would refuse (``tcp://host`` without a
    port...), found at start, not when a later broker of a list is first needed."""
    routers = [router] if isinstance(router, str) else list(router)
    pubs = [pub] if isinstance(pub, str) else list(pub)
    if len(routers) != len(pubs) or not routers:
        raise ValueError(f"{len(routers)} inbox and {len(pubs)} feed endpoint(s): give one of each per broker")
    _check_endpoints(routers + pubs)
    return routers, pubs


def move(sock: zmq.Socket, old: str, new: str) -> None:
    """Connect ``sock`` to ``new`` instead of ``old``: the same socket, so its routing id and subscriptions
    go along (a SUB or XSUB sends the new peer every subscription it holds)."""
    with contextlib.suppress(zmq.ZMQError):  # not connected (any more): nothing to undo
        sock.disconnect(old)
    sock.connect(new)


def _check_endpoints(endpoints: list[str]) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        for endpoint in endpoints:
            try:
                sock.connect(endpoint)
                sock.disconnect(endpoint)
            except zmq.ZMQError as exc:
                raise ValueError(f"{endpoint!r} is not an endpoint to connect to ({exc})") from None
    finally:
        sock.close(linger=0)


def tune_bound(sock: zmq.Socket) -> None:
    """Options of a socket that peers connect to (the broker's inbox and feed, a relay's feed).

    TCP keepalive (in the kernel) frees the pipes of peers that vanished without a FIN, within about a
    minute.  Not ZMTP heartbeats: libzmq cancels a timer per heartbeat in O(connections), which made
    10,000 idle clients cost most of a core.  Chat liveness is the protocol's own ping.
    """
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.IPV6, 1)  # "*" then binds both IPv4 and IPv6
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


#: Largest feed frame a client (or relay) takes: the broker's are batches of at most 32 KiB, or one event
#: (text of at most 4,000 characters, each at most 6 bytes escaped: under 25 KiB).
MAX_FEED_FRAME = 256 * 1024
#: Largest reply frame a client takes: a ``joined`` or ``who`` lists everyone in the room (a room of
#: 10,000 has about 330 KB of names) beside at most 64 KiB of history.
MAX_REPLY_FRAME = 4 * 1024 * 1024


def tune_connecting(sock: zmq.Socket, curve: keys.CurveKeys | None, linger_ms: int = LINGER_MS) -> None:
    """Options of a socket that connects to a broker (or a relay): reconnection, the largest frame it
    takes (``MAX_FEED_FRAME``, ``MAX_REPLY_FRAME``: a broker sends nothing larger, so a larger frame is
    someone else's, and libzmq drops that connection before it is held), and CURVE if given."""
    sock.setsockopt(zmq.IPV6, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FEED_FRAME if sock.type in (zmq.SUB, zmq.XSUB) else MAX_REPLY_FRAME)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    if curve is not None:
        sock.curve_serverkey = curve.server_public
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret


def curve_server(sock: zmq.Socket, keypair: tuple[bytes, bytes]) -> None:
    """Make ``sock`` a CURVE server with the broker's (public, secret) keypair."""
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = keypair


def start_authenticator(ctx: zmq.Context, keydir: Path, allowed: dict[str, str | None] | None) -> ThreadAuthenticator:
    """pyzmq's ZAP handler: with an allow-list only listed keys get past the handshake, else any key
    (encryption without authentication).  It runs in its own thread on its own inproc socket."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    location = str(keydir / keys.ALLOWED) if allowed is not None else zmq.auth.CURVE_ALLOW_ANY
    auth.configure_curve(domain="*", location=location)
    return auth


def security_mode(curve: bool, allowed: dict[str, str | None] | None) -> str:
    """The one line a server prints about its security at start-up."""
    if not curve:
        return "plain: no encryption, no authentication (trusted networks only; see docs/security.md)"
    if allowed is None:
        return "CURVE, any client key (encrypted; no allow-list, so anyone with the broker's public key gets in)"
    bound = sum(1 for name in allowed.values() if name)
    return f"CURVE, {len(allowed)} allowed keys ({bound} bound to a name)"


def peer_address(frame: zmq.Frame) -> str | None:
    """The IP address a frame came from (tcp); None where the transport has none (ipc, inproc)."""
    try:
        return frame.get("Peer-Address")
    except zmq.ZMQError:
        return None


def batch_scheduled(ctx: zmq.Context) -> zmq.Context:
    """Run ``ctx``'s I/O thread under ``SCHED_BATCH`` (Linux): woken, it does not preempt the loop.

    The loop is the broker's bottleneck, and libzmq wakes its I/O thread for every burst the loop sends.  By
    default Linux lets a woken thread preempt the one running: at full load (2 cores, the load generators
    beside it) the I/O thread preempted the loop 6,000-12,000 times a second, each time taking its caches
    (``perf sched``: 24,563 of its preemptions in 2 s, nearly all by its own I/O thread).  Under
    ``SCHED_BATCH`` it runs on the other core, or when the loop waits; its share of the CPU is unchanged.
    Measured (one subscriber): 7-9% more acked msgs/s with a database file, 0-6% with ``:memory:``; the loop
    preempted about 300 times a second instead.  libzmq aborts if the policy
    cannot be set, so it is tried on a thread of ours first (a sandbox may forbid it); must be called before
    the context's first socket."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None and may_set_policies(policy):
        ctx.set(zmq.THREAD_SCHED_POLICY, policy)
    return ctx


def may_set_policies(*policies: int) -> bool:
    """Whether this process may put a thread under each of ``policies``, one after the other: tried on a thread
    of its own (a policy is per thread), so a refusal leaves the caller as it was."""
    allowed: list[bool] = []

    def probe() -> None:
        try:
            for policy in policies:
                os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: the calling thread, this one
            allowed.append(True)
        except OSError:
            allowed.append(False)

    thread = threading.Thread(target=probe, name="sched-probe")
    thread.start()
    thread.join()
    return allowed == [True]


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one (every connection is a file); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM stops the program as cleanly as Ctrl-C: both raise KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


class StopSignals:
    """SIGINT and SIGTERM ask a poll loop to stop after its turn, never in the middle of one (the Guide's
    ``s_interrupted``): a KeyboardInterrupt raised wherever a signal lands could cut a commit or a hand-over to
    the store's writer in half.  Each signal's byte lands on ``fileno()`` (``signal.set_wakeup_fd``), which the
    loop polls beside its sockets: it wakes at once however long it meant to wait.  Asked a second time, it
    raises KeyboardInterrupt after all: whoever insists does not want to wait for the stop."""

    def __init__(self) -> None:
        self.requested = False
        self._wakeup, self._signalled = socket.socketpair()
        self._wakeup.setblocking(False)
        self._signalled.setblocking(False)
        signal.set_wakeup_fd(self._signalled.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def fileno(self) -> int:
        return self._wakeup.fileno()
