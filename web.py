"""The web gateway: one page and a WebSocket, so people can chat from a browser.

    python web.py --host BROKER_HOST          # then open http://127.0.0.1:8080/

The browser speaks the chat protocol itself (``docs/protocol.md``): every
WebSocket text frame it sends is one request envelope, and every frame it gets
is one reply or one feed payload (an envelope or a JSON array of them).  The
gateway adds no protocol of its own; it only moves frames:

- each WebSocket gets a DEALER of its own (its own routing id), so the broker,
  not the gateway, is the one that enforces names, limits and rates;
- one SUB, shared by all browsers, is subscribed to the rooms some browser is
  in (learnt from the ``welcome``/``joined``/``left`` replies going back to
  that browser) and each room event goes only to the browsers in that room;
  ``sys/`` heartbeats go to everyone, so a page can tell a broker restart.

What one browser (or one address) may cost is bounded: connections per address,
requests per second per address, bytes waiting for a browser (a browser that
does not read them is closed as a slow consumer), and an unforeseen exception
costs only the frame it happened in.  Each bound is in ``docs/web.md``.

Built on aiohttp rather than websockets: it serves the static page and the
WebSocket on one port, with a per-message size limit and WebSocket keepalive
built in.  ``zmq.asyncio`` runs the sockets in the same asyncio loop; there are
no threads.  Bind defaults and the origin check are in ``docs/web.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import traceback
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMsgType, web

import cli
import messages as m
import transport

log = logging.getLogger("chat-web")

DEFAULT_LISTEN = "127.0.0.1"
DEFAULT_PORT = 8080
#: The only files served, each from the static directory; nothing else on disk is reachable.
PAGES = {"/": "index.html", "/chat.js": "chat.js", "/chat.css": "chat.css"}
#: Frames up to this size from a browser get a ``too_large`` error and the connection stays;
#: past it aiohttp closes the WebSocket with 1009 (message too big) before buffering more.
HARD_FRAME_BYTES = 4 * m.MAX_FRAME_BYTES
#: Bytes (replies and feed payloads, each counted with MESSAGE_OVERHEAD) waiting to be written to
#: one browser.  The bound is in bytes, not messages, because one history reply can be 10,000 times
#: a pong.  Feed payloads past it are dropped, like the broker's PUB does at its high-water mark: the
#: page sees the seq gap and fetches them with ``history``.  A reply past it waits for room (the
#: gateway stops reading that browser's DEALER, and libzmq then the broker's connection), as long as
#: the browser reads.  One message always fits an empty queue, whatever its size.
MAX_QUEUED_BYTES = 1 << 20
#: What a queued message costs beyond its bytes (object header, deque slot), so that a flood of
#: tiny replies is bounded as well as a few big ones.
MESSAGE_OVERHEAD = 64
#: How long a browser may take nothing of what it is sent (its TCP connection full, its writes
#: waiting, not one byte of them taken) before it is closed as a slow consumer (1008) and everything
#: held for it is dropped.  A browser on a slow link reads all the time, so it never stalls this long.
SLOW_CONSUMER_S = 10.0
#: Connections at once, in all and from one address (an IPv6 address counts by its /64, which one
#: machine usually has whole).  Without the second, one address could take every slot.
MAX_CONNECTIONS = 500
MAX_CONNECTIONS_PER_ADDRESS = 16
IPV6_PREFIX = 64
#: Requests per second from one address (token bucket; a batch counts each request; a WebSocket
#: handshake, and a ``bye``, which gives the browser a new broker connection, cost HANDSHAKE_TOKENS).
#: The broker limits each connection, but it sees all browsers as one source (the gateway), or,
#: trusting the gateway (``--trusted-source``), each broker connection as a source of its own; either
#: way only the gateway knows the browsers' addresses, so it limits each address itself.
RATE_PER_ADDRESS = 100.0
BURST_PER_ADDRESS = 200.0
HANDSHAKE_TOKENS = 5.0
#: Requests of one browser queued for the broker.  With IMMEDIATE nothing queues while the broker
#: is away; when this is full the gateway stops reading that browser's WebSocket (TCP backpressure).
#: A frame is at most 64 KiB, so this holds at most 1 MiB per browser.
DEALER_SNDHWM = 16
#: Replies libzmq holds for a browser whose queue is full (the gateway stops reading its DEALER).
#: Past it libzmq stops reading the TCP connection and the broker drops replies at its own mark.
DEALER_RCVHWM = 16
#: Feed frames libzmq holds while the gateway is behind (each at most 32 KiB, so at most 64 MiB).
#: Past it the broker's PUB drops frames; pages see the seq gaps and fetch the events.
SUB_RCVHWM = 2000
#: What a WebSocket may hold in its transport's write buffer before writes wait for the peer to
#: read.  aiohttp's writer waits for drain only after every 64 KiB it writes and only while the
#: transport is paused, so a browser that reads nothing holds at most about twice this.
WRITE_BUFFER_BYTES = 64 * 1024
#: How long the gateway waits for a closing handshake (or to write the close frame) before it drops
#: the TCP connection and whatever it still buffers for a browser that does not read.
CLOSE_WAIT_S = 2.0
#: How long a request may wait for room in the DEALER's queue (or for a broker) before it is
#: dropped; the page resends what was not acknowledged once it has a session again.  After such a
#: drop, requests are dropped at once for BLOCKED_S, so during an outage the gateway keeps reading.
SEND_WAIT_MS = 250
BLOCKED_S = 1.0
#: Milliseconds a closed DEALER may take to deliver what it still holds (its ``bye``).
DEALER_LINGER_MS = 500
#: WebSocket keepalive (seconds): a browser that vanished without closing is noticed and its
#: DEALER closed, so its broker session ends instead of lingering.
WS_HEARTBEAT = 20.0
#: Distinct internal errors remembered (each logged with its traceback once, then only counted).
MAX_INTERNAL_KINDS = 1000
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
#: Defence in depth: even if some text were ever inserted as HTML, no inline script could run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
BYE = m.encode({"type": "bye"})
_BATCH = re.compile(rb"[ \t\r\n]*\[")
#: Replies the gateway never needs to look into (the big and the frequent ones): no parsing.
_OPAQUE_REPLIES = (b'{"type":"history"', b'{"type":"ack"', b'{"type":"dm"', b'{"type":"who"', b'{"type":"away"')


def static_dir() -> Path:
    """Where the page lives: next to this file (a checkout or ``pip install -e .``), else installed data."""
    candidates = [
        Path(__file__).resolve().parent / "static",
        Path(sys.prefix) / "share" / "zmq-chat" / "static",
    ]
    for candidate in candidates:
        if (candidate / "index.html").is_file():
            return candidate
    raise FileNotFoundError(f"the web page (static/index.html) is in none of: {', '.join(map(str, candidates))}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def default_origins(listen: str, port: int) -> set[str]:
    """The page's own origin(s): http://LISTEN:PORT and, for loopback or wildcard binds, the localhost names."""
    hosts = {listen}
    if listen in LOOPBACK or listen in WILDCARD:
        hosts |= set(LOOPBACK)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(listen).is_loopback:
            hosts |= set(LOOPBACK)
    if listen in WILDCARD:
        hosts.discard(listen)
        hosts.add(socket.gethostname())
    origins = {f"http://{_url_host(h)}:{port}" for h in hosts}
    if port == 80:  # browsers leave the default port out of the Origin header
        origins |= {f"http://{_url_host(h)}" for h in hosts}
    return {o.lower() for o in origins}


def _normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def address_key(remote: str | None) -> str:
    """Whose connection this is, for the per-address limits: the IP address the TCP connection came
    from (behind a reverse proxy: the proxy's), an IPv6 one as its /64, an IPv4-mapped one as IPv4."""
    if not remote:
        return "unknown"
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def _request_id(frame: bytes) -> str | None:
    """The ``id`` of a request, if it has one the broker would echo (for errors the gateway answers itself)."""
    try:
        env = m.decode(frame)
    except m.ProtocolError:
        return None
    msg_id = env.get("id") if type(env) is dict else None
    return msg_id if type(msg_id) is str and 0 < len(msg_id) <= m.MAX_ID_CHARS else None


def _request_type(frame: bytes) -> str:
    """What a frame asks, for a log line: its ``type`` (shortened), ``batch``, or ``?``."""
    try:
        env = m.decode(frame)
    except m.ProtocolError:
        return "?"
    if type(env) is list:
        return "batch"
    kind = env.get("type") if type(env) is dict else None
    return kind[:40] if type(kind) is str else "?"


def requests_in(frame: bytes) -> tuple[int, int | None, list[Any] | None]:
    """What the broker will make of a frame from a page: how many requests it holds, the index of the
    last ``bye`` among them (None: no bye), and a batch's envelopes (None: not a batch).

    Only batches, and frames that could be a ``bye`` (or hide one behind a ``\\u`` escape), are
    parsed; anything the broker would refuse whole (not JSON, a batch of a wrong size) is one request.
    """
    if _BATCH.match(frame) is None:
        if b"bye" not in frame and b"\\u" not in frame:
            return 1, None, None
        try:
            env = m.decode(frame)
        except m.ProtocolError:
            return 1, None, None
        return 1, (0 if type(env) is dict and env.get("type") == "bye" else None), None
    try:
        batch = m.decode(frame)
    except m.ProtocolError:
        return 1, None, None
    if type(batch) is not list or not 0 < len(batch) <= m.MAX_BATCH_REQUESTS:
        return 1, None, None
    last = None
    for i, env in enumerate(batch):
        if type(env) is dict and env.get("type") == "bye":
            last = i
    return len(batch), last, batch


def _utf8(payload: bytes) -> bytes:
    """A payload as a WebSocket text frame may carry it: valid UTF-8 (the broker's always is)."""
    try:
        payload.decode()
    except UnicodeDecodeError:
        return payload.decode("utf-8", "replace").encode()
    return payload


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until ``event`` is set or ``timeout`` passed.  Not ``asyncio.wait_for``: before Python 3.12
    it can swallow a cancellation that comes as the event is set, and a cancelled task would go on."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


def _origin_of(exc: BaseException) -> str:
    """Where an exception was raised: file and line of its innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"


@dataclass(eq=False)
class Address:
    """One address's connections and its request budget (a token bucket)."""

    tokens: float
    at: float
    connections: int = 0


@dataclass(eq=False)
class Browser:
    """One WebSocket, its own broker session (DEALER), and what waits to be written to it."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    address: str
    dealer: zmq.asyncio.Socket
    max_queued: int = MAX_QUEUED_BYTES
    rooms: set[str] = field(default_factory=set)
    user: str | None = None  # the (case-folded) name the broker welcomed on this DEALER; None: no session
    suspect: bool = False  # silent for a session timeout: the broker may have ended the session
    session_timeout: float = 5.0  # the broker's, from its welcome
    heartbeat: float = 1.0
    last_sent: float = 0.0  # loop time of the last frame sent to the broker
    out: deque[bytes] = field(default_factory=deque)
    queued: int = 0  # bytes in ``out`` and being written, each message with MESSAGE_OVERHEAD
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # something to write
    room: asyncio.Event = field(default_factory=asyncio.Event)  # the writer made room
    done: asyncio.Event = field(default_factory=asyncio.Event)  # this connection is to be closed
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # ... and now it is
    closed: bool = False
    close_code: int = WSCloseCode.OK
    close_reason: str = ""
    writing_since: float | None = None  # loop time the writer began the write it waits for, if it waits
    progress_at: float = 0.0  # loop time the browser was last seen taking what it is sent
    last_buffered: int = 0  # bytes in the transport's write buffer at the last look
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    replies_task: asyncio.Task[Any] | None = None
    dropped_feed: int = 0
    dropped_requests: int = 0
    blocked_until: float = 0.0  # loop time until which requests are dropped without waiting

    def fits(self, size: int) -> bool:
        return self.queued == 0 or self.queued + size + MESSAGE_OVERHEAD <= self.max_queued

    def push(self, payload: bytes) -> None:
        self.out.append(payload)
        self.queued += len(payload) + MESSAGE_OVERHEAD
        self.wake.set()

    def offer(self, payload: bytes) -> None:
        """Queue a feed payload; a browser too slow to take it misses it (and fetches it by seq later)."""
        if self.closed or not self.fits(len(payload)):
            self.dropped_feed += 1
        else:
            self.push(payload)

    def end(self, code: int = WSCloseCode.OK, reason: str = "") -> None:
        """Have the connection closed (the first reason given wins)."""
        if not self.done.is_set():
            self.close_code, self.close_reason = code, reason
            self.done.set()
            self.room.set()  # whoever waits for room in the queue: stop waiting

    def drop_queue(self) -> None:
        self.out.clear()
        self.queued = 0
        self.room.set()


class Gateway:
    """The browsers, the shared SUB, and which rooms each browser is in."""

    def __init__(
        self,
        router: str | Sequence[str],
        pub: str | Sequence[str],
        origins: set[str] | None,
        max_connections: int = MAX_CONNECTIONS,
        curve: Any = None,
        *,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        slow_consumer_s: float = SLOW_CONSUMER_S,
        rate_per_address: float = RATE_PER_ADDRESS,
        burst_per_address: float = BURST_PER_ADDRESS,
    ) -> None:
        #: Every broker's inbox and feed, in the order to try them: the gateway moves all its sockets to the
        #: next one when its broker's heartbeats stop (``_failover``); each page then says hello there.
        self.routers, self.pubs = transport.broker_endpoints(router, pub)
        self._at = 0
        self.heartbeat = 1.0  # the broker's, from the last welcome: how soon a silence means it is gone
        self._heard_at = self._moved_at = 0.0  # the last heartbeat on the feed; the last move (loop time)
        self.curve = curve  # keys.CurveKeys for a CURVE broker: every socket of the gateway uses them
        self.origins = origins  # None until the port is known; {"*"} allows any origin
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address  # 0: no limit per address
        self.max_queued_bytes = max_queued_bytes
        self.slow_consumer_s = slow_consumer_s
        self.rate_per_address = rate_per_address  # 0: no limit
        self.burst_per_address = max(burst_per_address, HANDSHAKE_TOKENS, 1.0)
        self.static = static_dir()
        self.ctx = zmq.asyncio.Context()
        # A DEALER per browser, and for a moment another per browser that said bye (closing ones linger).
        self.ctx.set(zmq.MAX_SOCKETS, min(2 * max_connections + 64, self.ctx.get(zmq.SOCKET_LIMIT)))
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
        self._tune(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, m.SYS_TOPIC)
        self.sub.connect(self.pub)
        self.browsers: set[Browser] = set()
        self.connections = 0  # WebSockets open or opening (slots taken)
        self.addresses: dict[str, Address] = {}  # connections and request budget per address
        self.members: dict[str, set[Browser]] = {}  # room -> browsers in it; its keys are the SUB's subscriptions
        self.epochs: set[str] = set()  # broker runs seen; a new one means every session is gone
        self.internal_errors: Counter[str] = Counter()
        self.slow_consumers = 0
        self._feed_task: asyncio.Task[None] | None = None
        self._failover_task: asyncio.Task[None] | None = None

    @property
    def router(self) -> str:
        """The inbox of the broker the gateway uses now."""
        return self.routers[self._at]

    @property
    def pub(self) -> str:
        return self.pubs[self._at]

    def _tune(self, sock: zmq.Socket) -> None:
        transport.tune_connecting(sock, self.curve, DEALER_LINGER_MS)

    def _dealer(self) -> zmq.asyncio.Socket:
        """A broker connection of its own, for one browser session."""
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, b"w" + os.urandom(15))  # a session of its own, as protocol.md asks
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for an absent broker: the page resends instead
        dealer.setsockopt(zmq.SNDHWM, DEALER_SNDHWM)
        dealer.setsockopt(zmq.RCVHWM, DEALER_RCVHWM)
        self._tune(dealer)
        dealer.connect(self.router)
        return dealer

    # --- HTTP -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024)  # the page posts nothing
        for route in PAGES:
            app.router.add_get(route, self.page)
        app.router.add_get("/ws", self.websocket)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shutdown)
        return app

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.static / PAGES[request.path], headers=SECURITY_HEADERS)

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers always send Origin on a WebSocket; another site's page must not chat as our user.

        A request without Origin is not from a browser, and such a client could reach the
        broker as easily as the gateway, so the check has nothing to protect there.
        """
        if origin is None:
            return True
        allowed = self.origins or set()
        return "*" in allowed or _normalise_origin(origin) in allowed

    def _admit(self, address: str) -> web.HTTPException | None:
        """Take a connection slot for ``address`` (None), or say why not.  No await in here: slots are
        counted before the handshake, so a thousand simultaneous handshakes cannot all see a free one."""
        now = asyncio.get_running_loop().time()
        state = self.addresses.get(address)
        per_address = self.max_connections_per_address
        if per_address and state is not None and state.connections >= per_address:
            return web.HTTPServiceUnavailable(
                text=f"too many connections from your address (at most {per_address}); close another chat tab\n",
                headers={"Retry-After": "10"},
            )
        if self.connections >= self.max_connections:
            return web.HTTPServiceUnavailable(
                text=f"the chat gateway is full ({self.max_connections} connections); try again later\n",
                headers={"Retry-After": "10"},
            )
        if state is None:
            self._prune_addresses()
            state = self.addresses[address] = Address(self.burst_per_address, now)
        if not self._spend(state, HANDSHAKE_TOKENS, now):
            return web.HTTPTooManyRequests(
                text="too many connections or requests from your address; try again in a few seconds\n",
                headers={"Retry-After": "5"},
            )
        state.connections += 1
        self.connections += 1
        return None

    def _release(self, address: str) -> None:
        self.connections -= 1
        state = self.addresses.get(address)
        if state is not None:
            state.connections -= 1

    def _spend(self, state: Address, cost: float, now: float) -> bool:
        """Take ``cost`` tokens from an address's bucket if it has one at least (it may go into debt:
        a batch of many requests is let through whole, and the address then waits it off)."""
        rate = self.rate_per_address
        if not rate:
            return True
        tokens = min(self.burst_per_address, state.tokens + max(0.0, now - state.at) * rate)
        state.at = now
        if tokens < 1:
            state.tokens = tokens
            return False
        state.tokens = tokens - cost
        return True

    def _prune_addresses(self) -> None:
        """Forget addresses with no connection whose bucket is full again (they are as good as new);
        past four times the bound, forget every address with no connection."""
        bound = max(1024, 2 * self.max_connections)
        if len(self.addresses) <= bound:
            return
        now = asyncio.get_running_loop().time()
        rate, burst = self.rate_per_address, self.burst_per_address
        for address, state in list(self.addresses.items()):
            if state.connections == 0 and (not rate or state.tokens + (now - state.at) * rate >= burst):
                del self.addresses[address]
        if len(self.addresses) > 4 * bound:
            for address, state in list(self.addresses.items()):
                if state.connections == 0:
                    del self.addresses[address]

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.origin_allowed(request.headers.get("Origin")):
            raise web.HTTPForbidden(text="this origin may not use the chat gateway (see --allowed-origin)\n")
        address = address_key(request.remote)
        refusal = self._admit(address)
        if refusal is not None:
            raise refusal
        browser: Browser | None = None
        dealer: zmq.asyncio.Socket | None = None
        try:
            try:
                dealer = self._dealer()
            except zmq.ZMQError as exc:  # out of sockets or file descriptors: refuse this one, serve the others
                self._internal("handshake", "new DEALER", exc)
                raise web.HTTPServiceUnavailable(
                    text="the chat gateway cannot open more connections now; try again later\n",
                    headers={"Retry-After": "10"},
                ) from None
            ws = web.WebSocketResponse(
                heartbeat=WS_HEARTBEAT, max_msg_size=HARD_FRAME_BYTES, compress=False, timeout=CLOSE_WAIT_S
            )
            await ws.prepare(request)
            transport = request.transport
            if transport is not None:
                transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
            browser = Browser(ws, transport, address, dealer, self.max_queued_bytes)
            self.browsers.add(browser)
            browser.replies_task = self._spawn(browser, self._replies(browser, browser.dealer))
            self._spawn(browser, self._writer(browser))
            self._spawn(browser, self._requests(browser))
            loop = asyncio.get_running_loop()
            browser.progress_at = loop.time()
            period = min(WS_HEARTBEAT, max(0.05, self.slow_consumer_s / 4))
            while not browser.done.is_set():
                await _wait(browser.done, period)
                if ws.closed:  # aiohttp gave up on it (no pong) while a task of ours was stuck writing
                    browser.end(WSCloseCode.ABNORMAL_CLOSURE)
                self._watch(browser, loop.time())
        finally:
            self._release(address)
            if browser is not None:
                await self._close(browser)
            elif dealer is not None:  # the handshake failed
                dealer.close(linger=0)
        return ws

    def _spawn(self, browser: Browser, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        browser.tasks.add(task)
        task.add_done_callback(partial(self._task_done, browser))
        return task

    def _task_done(self, browser: Browser, task: asyncio.Task[Any]) -> None:
        """A task of a connection ended: so does the connection (unless the task was replaced)."""
        browser.tasks.discard(task)
        if task.cancelled() or browser.closed:  # replaced, or ended with its connection
            return
        exc = task.exception()
        if exc is None or isinstance(exc, ConnectionError):  # the page closed, or its connection broke
            browser.end()
        else:
            self._internal("connection", task.get_coro().__qualname__, exc)  # type: ignore[union-attr]
            browser.end(WSCloseCode.INTERNAL_ERROR, "gateway error")

    # --- browser -> broker ----------------------------------------------------

    async def _requests(self, browser: Browser) -> None:
        """Forward each text frame, unchanged, as one inbox frame; the broker validates it.

        The crash barrier: an unforeseen exception costs the frame it happened in, answered with
        ``internal``, never the connection, the gateway or the other browsers."""
        async for msg in browser.ws:
            try:
                if not await self._page_frame(browser, msg):
                    return
            except Exception as exc:
                frame = msg.data.encode() if msg.type == WSMsgType.TEXT and type(msg.data) is str else b""
                self._internal("page frame", _request_type(frame), exc)
                detail = "the gateway failed on this request; it may not have reached the chat server"
                if not await self._error(browser, m.ErrorCode.INTERNAL, detail, _request_id(frame)):
                    return

    async def _page_frame(self, browser: Browser, msg: Any) -> bool:
        """One WebSocket message from the page; False when the connection is to end."""
        now = asyncio.get_running_loop().time()
        state = self.addresses.get(browser.address)
        if state is None:  # never: an address is kept while it has a connection
            state = self.addresses[browser.address] = Address(self.burst_per_address, now, 1)
        if msg.type == WSMsgType.TEXT:
            frame = msg.data.encode()
            if len(frame) > m.MAX_FRAME_BYTES:
                self._spend(state, 1, now)
                # The broker could not answer (libzmq would drop the connection): say what it would say.
                detail = f"a request is at most {m.MAX_FRAME_BYTES} bytes, got {len(frame)}"
                return await self._error(browser, m.ErrorCode.TOO_LARGE, detail, _request_id(frame))
            count, last_bye, batch = requests_in(frame)
            # A bye costs what a handshake does: it gives the browser a new broker connection.
            if not self._spend(state, count + (HANDSHAKE_TOKENS if last_bye is not None else 0), now):
                if last_bye is not None:  # the session must end, but not with a new connection: the WebSocket goes
                    browser.end(WSCloseCode.TRY_AGAIN_LATER, "too many requests from your address")
                    return False
                detail = f"your address sends more than {self.rate_per_address:g} requests a second; slow down"
                return await self._error(
                    browser, m.ErrorCode.RATE_LIMITED, detail, _request_id(frame) if batch is None else None
                )
            if last_bye is None:
                await self._to_broker(browser, frame)
            else:
                if batch is not None and last_bye > 0:
                    await self._to_broker(browser, m.encode(batch[:last_bye]))
                self._new_session(browser)
                if batch is not None and last_bye + 1 < len(batch):
                    await self._to_broker(browser, m.encode(batch[last_bye + 1 :]))
            return True
        if msg.type == WSMsgType.BINARY:
            self._spend(state, 1, now)
            return await self._error(browser, m.ErrorCode.BAD_JSON, "send each envelope as a text frame, not binary")
        return msg.type != WSMsgType.ERROR

    async def _to_broker(self, browser: Browser, frame: bytes) -> None:
        now = asyncio.get_running_loop().time()
        wait = 0 if now < browser.blocked_until else SEND_WAIT_MS
        dealer = browser.dealer
        if await dealer.poll(wait, zmq.POLLOUT):
            await dealer.send(frame)
            if browser.user is not None and now - browser.last_sent > browser.session_timeout - browser.heartbeat:
                # Silent for a session timeout (a client must ping every heartbeat): the broker may have
                # ended the session, so the next welcome starts a new one rather than adding to it.
                browser.suspect = True
            browser.last_sent = now
        else:  # no broker, or this browser's queue is full: drop, as a full socket would
            browser.dropped_requests += 1
            browser.blocked_until = now + BLOCKED_S

    def _new_session(self, browser: Browser) -> None:
        """The page said ``bye``: end its broker session and give it a new DEALER.

        Replies still on their way to the old DEALER (a ``joined`` of a ``hello`` sent just before
        the ``bye``) can then never put the browser back in a room: the gateway stops reading them.
        No await in here, so nothing can stop it half done.
        """
        new = self._dealer()  # first: if there is none to be had, the browser keeps its session as it is
        old, task = browser.dealer, browser.replies_task
        if task is not None:
            task.cancel()  # it reads no further: it is waiting, and wakes up cancelled
        self._retire(old)
        self._forget(browser)
        browser.dealer, browser.blocked_until = new, 0.0
        browser.replies_task = self._spawn(browser, self._replies(browser, new))

    @staticmethod
    def _retire(dealer: zmq.asyncio.Socket) -> None:
        """Say ``bye`` on a DEALER, if it can take it now, and close it (it delivers that for a moment).
        Synchronous (through a plain socket on the same handle), so that it cannot be cancelled half done."""
        try:
            with contextlib.suppress(zmq.ZMQError):
                zmq.Socket.shadow(dealer.underlying).send(BYE, zmq.NOBLOCK)
        finally:
            dealer.close(linger=DEALER_LINGER_MS)

    # --- broker -> browser ----------------------------------------------------

    async def _replies(self, browser: Browser, dealer: zmq.asyncio.Socket) -> None:
        while not browser.closed:
            frames = await dealer.recv_multipart()
            payload = _utf8(frames[-1])
            if not payload.startswith(_OPAQUE_REPLIES):
                try:
                    for env in m.feed_events(payload):  # replies are envelopes or batches; garbage yields none
                        self._track(browser, env)
                except Exception as exc:  # the crash barrier: the reply still goes to the page
                    self._internal("broker reply", payload[:20].decode("ascii", "replace"), exc)
            if not await self._reply(browser, payload):
                return

    async def _reply(self, browser: Browser, payload: bytes) -> bool:
        """Queue a reply, waiting for room while the queue is full (meanwhile whatever produces replies,
        the DEALER or the WebSocket, is not read).  A browser that reads nothing meanwhile is closed by
        the watchdog (``_watch``); False when the connection is ending."""
        size = len(payload)
        while not browser.fits(size):
            if browser.done.is_set():
                return False
            browser.room.clear()
            await _wait(browser.room, None)
        browser.push(payload)
        return True

    def _watch(self, browser: Browser, now: float) -> None:
        """The slow-consumer watchdog, every so often: a browser whose writes wait (its TCP connection
        is full) and which took not one byte of them for ``slow_consumer_s`` is closed.  One that reads,
        however slowly, is not: its replies wait for room, its feed past the bound is dropped."""
        size = browser.transport.get_write_buffer_size() if browser.transport is not None else 0
        since = browser.writing_since
        if since is None or size < browser.last_buffered:
            browser.progress_at = now  # nothing waits to be written, or the browser took some
        else:
            browser.progress_at = max(browser.progress_at, since)  # writes went through until this one
        browser.last_buffered = size
        if now - browser.progress_at > self.slow_consumer_s and not browser.done.is_set():
            self._slow_consumer(browser)

    def _slow_consumer(self, browser: Browser) -> None:
        self.slow_consumers += 1
        log.warning(
            "closing a slow consumer from %s: it read nothing for %g s (%d bytes queued, %d in its TCP buffer)",
            browser.address,
            self.slow_consumer_s,
            browser.queued,
            browser.last_buffered,
        )
        browser.end(WSCloseCode.POLICY_VIOLATION, "slow consumer: replies unread for too long")

    async def _error(self, browser: Browser, code: m.ErrorCode, detail: str, msg_id: str | None = None) -> bool:
        """Answer the page an ``error`` the gateway makes itself (queued like a reply)."""
        return await self._reply(browser, m.encode(m.ProtocolError(code, detail, msg_id).envelope()))

    async def _writer(self, browser: Browser) -> None:
        """One writer per browser, so a slow browser only ever waits for itself.  Each write waits
        while the browser's TCP connection buffers too much (aiohttp's drain), so what a browser
        that does not read holds is its queue, bounded in bytes, plus the transport's buffer."""
        ws, loop = browser.ws, asyncio.get_running_loop()
        send_frame = getattr(ws, "send_frame", None)  # aiohttp >= 3.11: the bytes as they are
        while True:
            while not browser.out:
                browser.wake.clear()
                await browser.wake.wait()
            payload = browser.out.popleft()
            browser.writing_since = loop.time()
            try:
                if send_frame is not None:
                    await send_frame(payload, WSMsgType.TEXT)
                else:
                    await ws.send_str(payload.decode())
            finally:
                browser.writing_since = None
                if browser.queued:
                    browser.queued = max(0, browser.queued - len(payload) - MESSAGE_OVERHEAD)
                browser.room.set()

    def _track(self, browser: Browser, env: dict[str, Any]) -> None:
        """Learn the browser's session and rooms from the broker's replies (never from what the page asked)."""
        kind = env["type"]
        if kind in ("welcome", "pong"):
            self._saw_epoch(env.get("epoch"))
        if kind == "welcome":
            user = env.get("user")
            folded = user.casefold() if type(user) is str else None
            if browser.user is None or browser.suspect or folded != browser.user:
                self._forget(browser)  # a new session: nothing of an old one carries over
            browser.user, browser.suspect = folded, False
            for name, default in (("session_timeout", 5.0), ("heartbeat", 1.0)):
                value = env.get(name)
                number = float(value) if type(value) in (int, float) and 0 < value < 86400 else default
                setattr(browser, name, number)
            self.heartbeat = browser.heartbeat
            if type(env.get("rooms")) is list:
                for room in env["rooms"][: m.MAX_HELLO_ROOM_ITEMS]:
                    if m.valid_room(room):
                        self._enter(browser, room)
        elif kind == "renamed":
            # The session goes on under its new name (/nick): a later welcome for that name (a repeated
            # hello, the page's hello after a pause) is the same session, and must not cost its rooms.
            user = env.get("user")
            if browser.user is not None and type(user) is str:
                browser.user = user.casefold()
        elif kind == "joined" and m.valid_room(env.get("room")):
            self._enter(browser, env["room"])
        elif kind == "left" and m.valid_room(env.get("room")):
            self._exit(browser, env["room"])
        elif kind == "pong" and env.get("session") is False:
            self._forget(browser)  # the broker has no session for this DEALER (it timed out)
        elif kind == "error" and env.get("code") == m.ErrorCode.NO_SESSION.value:
            self._forget(browser)

    def _enter(self, browser: Browser, room: str) -> None:
        browser.rooms.add(room)
        members = self.members.get(room)
        if members is None:
            members = self.members[room] = set()
            self.sub.setsockopt(zmq.SUBSCRIBE, m.room_topic(room))
        members.add(browser)

    def _exit(self, browser: Browser, room: str) -> None:
        browser.rooms.discard(room)
        members = self.members.get(room)
        if members is not None:
            members.discard(browser)
            if not members:
                del self.members[room]
                self.sub.setsockopt(zmq.UNSUBSCRIBE, m.room_topic(room))

    def _forget(self, browser: Browser) -> None:
        """The browser's session is over: it is in no room (and the SUB leaves rooms nobody is in)."""
        for room in list(browser.rooms):
            self._exit(browser, room)
        browser.user, browser.suspect = None, False

    def _saw_epoch(self, epoch: Any) -> None:
        """A broker run never seen before knows no session: nobody is in any room until it welcomes them."""
        if type(epoch) is not str or epoch in self.epochs:
            return
        if self.epochs:
            for browser in self.browsers:
                self._forget(browser)
        if len(self.epochs) >= 100:  # a broker restarted that often: only the runs since matter
            self.epochs.clear()
        self.epochs.add(epoch)

    async def _feed(self) -> None:
        """The shared SUB: room events to the browsers in that room, heartbeats to all."""
        while True:
            try:
                frames = await self.sub.recv_multipart()
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    return
                log.warning("feed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                self._dispatch(frames)
            except Exception as exc:  # the crash barrier: this feed message is lost, the gateway serves on
                topic = frames[0][:40].decode("ascii", "replace") if frames else "?"
                self._internal("feed message", topic, exc)

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        topic, payload = frames
        room = m.room_of_topic(topic)
        targets: Sequence[Browser]
        if room is not None:
            members = self.members.get(room)
            if not members:
                return
            targets = list(members)
        elif topic.startswith(m.SYS_TOPIC):
            events = m.feed_events(payload)
            if not events:
                return
            for event in events:
                if event["type"] == "heartbeat":
                    self._heard(asyncio.get_running_loop().time())
                    self._saw_epoch(event.get("epoch"))
            targets = list(self.browsers)
        else:
            return
        payload = _utf8(payload)
        for browser in targets:
            browser.offer(payload)

    def _internal(self, where: str, kind: str, exc: BaseException) -> None:
        """An unforeseen exception: log its traceback the first time it happens there, then count it."""
        key = f"{where} {kind!r}: {type(exc).__name__} at {_origin_of(exc)}"
        if key not in self.internal_errors and len(self.internal_errors) >= MAX_INTERNAL_KINDS:
            key = "other"
        self.internal_errors[key] += 1
        if self.internal_errors[key] == 1:
            log.error(
                "internal error handling a %s (%r); further ones there are counted, not logged:\n%s",
                where,
                kind,
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )

    # --- lifecycle --------------------------------------------------------------

    async def _close(self, browser: Browser) -> None:
        """End the broker session with the WebSocket: ``bye`` now, rather than a timeout later.
        Everything queued for the browser is dropped at once."""
        if browser.closed:
            return
        browser.closed = True
        self.browsers.discard(browser)
        self._forget(browser)
        browser.drop_queue()
        self._retire(browser.dealer)  # no await before this: nothing can cancel it half done
        ws, transport = browser.ws, browser.transport
        closed = False
        try:
            tasks = list(browser.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if transport is not None and transport.get_write_buffer_size():
                return  # it does not read what it has: a close frame would not get through either
            if not ws.closed:
                # In a task of its own: aiohttp's close may raise CancelledError (a drain waiter shared
                # with the cancelled writer), which must not pass for this task being cancelled.
                reason = browser.close_reason.encode()[:120]
                closing = asyncio.ensure_future(ws.close(code=browser.close_code, message=reason))
                done, _ = await asyncio.wait({closing}, timeout=CLOSE_WAIT_S)
                if not done:
                    closing.cancel()
                elif not closing.cancelled():
                    closing.exception()  # retrieved: a failed close is as good as closed here
            closed = transport is None or not transport.get_write_buffer_size()
        finally:
            if not closed and transport is not None:
                transport.abort()  # a browser that does not read: what it never took is dropped now
            browser.finished.set()

    async def _start(self, app: web.Application) -> None:
        self._feed_task = asyncio.create_task(self._feed())
        if len(self.routers) > 1:
            self._heard_at = self._moved_at = asyncio.get_running_loop().time()
            self._failover_task = asyncio.create_task(self._failover())

    async def _failover(self) -> None:
        """With several brokers: when ours has sent no heartbeat for 3 of its heartbeats, move every socket
        to the next (and on, after each further silence as long).  The pages see a new epoch there and say
        hello again, re-join and resend, as after a restart."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat / 2)
            now = loop.time()
            if now - max(self._heard_at, self._moved_at) < 3 * self.heartbeat:
                continue
            if self.sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                continue  # the feed task is behind (a busy loop), not the broker: heartbeats may be waiting
            try:
                self._move_to((self._at + 1) % len(self.routers), now)
            except Exception as exc:  # the crash barrier: the gateway serves on, and tries again later
                self._moved_at = now
                self._internal("failover", self.routers[self._at], exc)

    def _heard(self, now: float) -> None:
        """A heartbeat on the feed: the broker is there, and the gap since the last one is its heartbeat
        (the pages learn it from their welcome; the gateway may have none yet)."""
        gap = now - self._heard_at
        if 0.05 <= gap <= 60 and self._heard_at >= self._moved_at:
            self.heartbeat = gap if gap < self.heartbeat else (self.heartbeat + gap) / 2
        self._heard_at = now

    def _move_to(self, at: int, now: float) -> None:
        """The feed and every browser's DEALER (same routing ids, same subscriptions) to broker ``at``."""
        log.warning("no heartbeat from %s; moving to %s", self.router, self.routers[at])
        transport.move(self.sub, self.pub, self.pubs[at])
        for browser in self.browsers:
            transport.move(browser.dealer, self.router, self.routers[at])
        self._at, self._moved_at = at, now

    async def _shutdown(self, app: web.Application) -> None:
        browsers = list(self.browsers)
        for browser in browsers:
            browser.end(WSCloseCode.GOING_AWAY, "gateway shutting down")
        waits = [asyncio.create_task(browser.finished.wait()) for browser in browsers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=2 * CLOSE_WAIT_S)
            for task in pending:
                task.cancel()

    def close(self) -> None:
        for task in (self._feed_task, self._failover_task):
            if task is not None:
                task.cancel()
        for browser in self.browsers:
            browser.dealer.close(linger=0)
        self.sub.close(linger=0)
        self.ctx.term()


# --- Command line ---------------------------------------------------------------


def _positive(kind: type, low: float = 0) -> Any:
    def check(text: str) -> Any:
        value = kind(text)
        if not value >= low:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    check.__name__ = kind.__name__
    return check


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-web",
        description="Chat from a browser: serves the chat page and a WebSocket, each browser a broker session.",
    )
    cli.add_endpoint_args(parser)
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST",
        help="interface for the page and WebSocket (default: %(default)s, this machine only; 0.0.0.0 or :: for all)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port, 0 = any free (default: %(default)s)")
    parser.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="a page origin (scheme://host:port) that may open the WebSocket; repeat for more; '*' allows any "
        "(unsafe). Default: the gateway's own http://LISTEN:PORT and its localhost names",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int, 1),
        default=MAX_CONNECTIONS,
        metavar="N",
        help="browsers connected at once (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=_positive(int),
        default=MAX_CONNECTIONS_PER_ADDRESS,
        metavar="N",
        help="browsers connected at once from one IP address (IPv6: one /64); behind a reverse proxy every "
        "browser has the proxy's address. 0 = no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=_positive(int),
        default=MAX_QUEUED_BYTES,
        metavar="BYTES",
        help="bytes of replies and feed waiting for one browser; feed past it is dropped (the page refetches it), "
        "replies wait (default: %(default)s)",
    )
    parser.add_argument(
        "--slow-consumer-timeout",
        type=_positive(float),
        default=SLOW_CONSUMER_S,
        metavar="SECONDS",
        help="how long a browser may take nothing of what it is sent before it is closed as a slow consumer "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rate-per-address",
        type=_positive(float),
        default=RATE_PER_ADDRESS,
        metavar="N",
        help="requests per second from one address, all its browsers together; 0 = no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--burst-per-address",
        type=_positive(float),
        default=BURST_PER_ADDRESS,
        metavar="N",
        help="requests one address may send at once (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _listen_socket(host: str, port: int) -> socket.socket:
    if ":" in host or host == "":
        return socket.create_server((host or "::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server((host, port))


async def serve(args: argparse.Namespace, sock: socket.socket, conn: dict[str, Any]) -> int:
    """Serve on the bound ``sock`` until SIGINT or SIGTERM; ``conn`` is ``cli.connection(args)``."""
    router, pub, curve = conn["router"], conn["pub"], conn["curve"]
    port = sock.getsockname()[1]
    origins = (
        {_normalise_origin(o) for o in args.allowed_origin}
        if args.allowed_origin
        else default_origins(args.listen, port)
    )
    gateway = Gateway(
        router,
        pub,
        origins,
        args.max_connections,
        curve,
        max_connections_per_address=args.max_connections_per_address,
        max_queued_bytes=args.max_queued_bytes,
        slow_consumer_s=args.slow_consumer_timeout,
        rate_per_address=args.rate_per_address,
        burst_per_address=args.burst_per_address,
    )
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    shown = "localhost" if args.listen in WILDCARD else _url_host(args.listen)
    print(f"chat gateway (protocol v{m.PROTOCOL_VERSION}): open http://{shown}:{port}/")
    print(f"  broker inbox: {', '.join(router)}")
    print(f"  broker feed:  {', '.join(pub)}" + (" (CURVE)" if curve is not None else ""))
    print(f"  allowed page origins: {', '.join(sorted(origins))}")
    per_address = args.max_connections_per_address or "any number"
    rate = f"{args.rate_per_address:g}" if args.rate_per_address else "any number of"
    print(
        f"  limits: {args.max_connections} connections, {per_address} per address, "
        f"{rate} requests/s per address, {args.max_queued_bytes} bytes queued per browser"
    )
    print("Ctrl-C stops it.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()  # closes every WebSocket; each handler says bye for its session
        gateway.close()
    print("chat gateway stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="chat-web: %(levelname)s: %(message)s", stream=sys.stderr)
    files = transport.raise_open_files_limit()  # each browser takes about 4 files (see Gateway)
    if files and files < 4 * args.max_connections:
        log.warning(
            "the open files limit (%d) allows about %d browsers, not %d", files, files // 4, args.max_connections
        )
    try:
        static_dir()
        conn = cli.connection(args)
    except (OSError, ValueError) as exc:
        print(f"chat-web: {exc}", file=sys.stderr)
        return 1
    try:
        sock = _listen_socket(args.listen, args.port)
    except OSError as exc:
        print(f"chat-web: cannot listen on {args.listen}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(serve(args, sock, conn))


if __name__ == "__main__":
    sys.exit(main())
