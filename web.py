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
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMsgType, web

import messages as m
from client import add_endpoint_args, connection

DEFAULT_LISTEN = "127.0.0.1"
DEFAULT_PORT = 8080
#: The only files served, each from the static directory; nothing else on disk is reachable.
PAGES = {"/": "index.html", "/chat.js": "chat.js", "/chat.css": "chat.css"}
#: Frames up to this size from a browser get a ``too_large`` error and the connection stays;
#: past it aiohttp closes the WebSocket with 1009 (message too big) before buffering more.
HARD_FRAME_BYTES = 4 * m.MAX_FRAME_BYTES
#: Messages (replies and feed payloads) waiting to be written to one browser.  Feed events past
#: it are dropped, like the broker's PUB does at its high-water mark: the page sees the seq gap
#: and fetches them with ``history``.  Replies wait instead, so nothing the browser asked is lost.
BROWSER_QUEUE = 1000
#: Requests of one browser queued for the broker.  With IMMEDIATE nothing queues while the broker
#: is away; when this is full the gateway stops reading that browser's WebSocket (TCP backpressure).
DEALER_SNDHWM = 100
#: How long a request may wait for room in the DEALER's queue (or for a broker) before it is
#: dropped; the page resends what was not acknowledged once it has a session again.  After such a
#: drop, requests are dropped at once for BLOCKED_S, so during an outage the gateway keeps reading.
SEND_WAIT_MS = 250
BLOCKED_S = 1.0
#: WebSocket keepalive (seconds): a browser that vanished without closing is noticed and its
#: DEALER closed, so its broker session ends instead of lingering.
WS_HEARTBEAT = 20.0
MAX_CONNECTIONS = 500
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


def _request_id(frame: bytes) -> str | None:
    """The ``id`` of a request, if it has one the broker would echo (for errors the gateway answers itself)."""
    try:
        env = m.decode(frame)
    except m.ProtocolError:
        return None
    msg_id = env.get("id") if type(env) is dict else None
    return msg_id if type(msg_id) is str and 0 < len(msg_id) <= m.MAX_ID_CHARS else None


@dataclass(eq=False)
class Browser:
    """One WebSocket and its own broker session (DEALER)."""

    ws: web.WebSocketResponse
    dealer: zmq.asyncio.Socket
    rooms: set[str] = field(default_factory=set)
    out: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(BROWSER_QUEUE))
    dropped_feed: int = 0
    dropped_requests: int = 0
    blocked_until: float = 0.0  # loop time until which requests are dropped without waiting

    def offer(self, text: str) -> None:
        """Queue a feed payload; a browser too slow to take it misses it (and fetches it by seq later)."""
        try:
            self.out.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped_feed += 1


class Gateway:
    """The browsers, the shared SUB, and which rooms each browser is in."""

    def __init__(
        self,
        router: str,
        pub: str,
        origins: set[str] | None,
        max_connections: int = MAX_CONNECTIONS,
        curve: Any = None,
    ) -> None:
        self.router = router
        self.pub = pub
        self.curve = curve  # keys.CurveKeys for a CURVE broker: every socket of the gateway uses them
        self.origins = origins  # None until the port is known; {"*"} allows any origin
        self.max_connections = max_connections
        self.static = static_dir()
        self.ctx = zmq.asyncio.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self._tune(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, m.SYS_TOPIC)
        self.sub.connect(pub)
        self.browsers: set[Browser] = set()
        self.members: dict[str, set[Browser]] = {}  # room -> browsers in it; its keys are the SUB's subscriptions
        self.epochs: set[str] = set()  # broker runs seen; a new one means every session is gone
        self._feed_task: asyncio.Task[None] | None = None

    def _tune(self, sock: zmq.Socket) -> None:
        if self.curve is not None:
            sock.curve_serverkey = self.curve.server_public
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
        sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)

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

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.origin_allowed(request.headers.get("Origin")):
            raise web.HTTPForbidden(text="this origin may not use the chat gateway (see --allowed-origin)\n")
        if len(self.browsers) >= self.max_connections:
            raise web.HTTPServiceUnavailable(text="too many connections\n")
        ws = web.WebSocketResponse(heartbeat=WS_HEARTBEAT, max_msg_size=HARD_FRAME_BYTES, compress=False)
        await ws.prepare(request)
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, b"w" + os.urandom(15))  # a session of its own, as protocol.md asks
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for an absent broker: the page resends instead
        dealer.setsockopt(zmq.SNDHWM, DEALER_SNDHWM)
        dealer.setsockopt(zmq.RCVHWM, BROWSER_QUEUE)
        self._tune(dealer)
        dealer.connect(self.router)
        browser = Browser(ws, dealer)
        self.browsers.add(browser)
        tasks = [asyncio.create_task(self._replies(browser)), asyncio.create_task(self._writer(browser))]
        try:
            await self._requests(browser)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close(browser)
        return ws

    # --- browser -> broker ----------------------------------------------------

    async def _requests(self, browser: Browser) -> None:
        """Forward each text frame, unchanged, as one inbox frame; the broker validates it."""
        async for msg in browser.ws:
            if msg.type == WSMsgType.TEXT:
                frame = msg.data.encode()
                if len(frame) > m.MAX_FRAME_BYTES:
                    # The broker could not answer (libzmq would drop the connection): say what it would say.
                    error = m.ProtocolError(
                        m.ErrorCode.TOO_LARGE,
                        f"a request is at most {m.MAX_FRAME_BYTES} bytes, got {len(frame)}",
                        _request_id(frame),
                    )
                    await browser.out.put(m.encode(error.envelope()).decode())
                    continue
                await self._to_broker(browser, frame)
            elif msg.type == WSMsgType.BINARY:
                error = m.ProtocolError(m.ErrorCode.BAD_JSON, "send each envelope as a text frame, not binary")
                await browser.out.put(m.encode(error.envelope()).decode())
            elif msg.type == WSMsgType.ERROR:
                return

    async def _to_broker(self, browser: Browser, frame: bytes) -> None:
        now = asyncio.get_running_loop().time()
        wait = 0 if now < browser.blocked_until else SEND_WAIT_MS
        if await browser.dealer.poll(wait, zmq.POLLOUT):
            await browser.dealer.send(frame)
        else:  # no broker, or this browser's queue is full: drop, as a full socket would
            browser.dropped_requests += 1
            browser.blocked_until = now + BLOCKED_S

    # --- broker -> browser ----------------------------------------------------

    async def _replies(self, browser: Browser) -> None:
        while True:
            frames = await browser.dealer.recv_multipart()
            payload = frames[-1]
            for env in m.feed_events(payload):  # replies are single envelopes; garbage yields none
                self._track(browser, env)
            await browser.out.put(payload.decode("utf-8", "replace"))

    async def _writer(self, browser: Browser) -> None:
        """One writer per browser, so a slow browser only ever waits for itself."""
        while True:
            text = await browser.out.get()
            await browser.ws.send_str(text)

    def _track(self, browser: Browser, env: dict[str, Any]) -> None:
        """Learn the browser's rooms from the broker's replies (never from what the browser asked)."""
        kind = env["type"]
        if kind in ("welcome", "pong"):
            self._saw_epoch(env.get("epoch"))
        if kind == "welcome" and type(env.get("rooms")) is list:
            for room in env["rooms"]:
                if m.valid_room(room):
                    self._enter(browser, room)
        elif kind == "joined" and m.valid_room(env.get("room")):
            self._enter(browser, env["room"])
        elif kind == "left" and m.valid_room(env.get("room")):
            self._exit(browser, env["room"])

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

    def _saw_epoch(self, epoch: Any) -> None:
        """A broker run never seen before knows no session: nobody is in any room until it welcomes them."""
        if type(epoch) is not str or epoch in self.epochs:
            return
        if self.epochs:
            for browser in self.browsers:
                for room in list(browser.rooms):
                    self._exit(browser, room)
        self.epochs.add(epoch)

    async def _feed(self) -> None:
        """The shared SUB: room events to the browsers in that room, heartbeats to all."""
        while True:
            frames = await self.sub.recv_multipart()
            if len(frames) != 2:
                continue
            topic, payload = frames
            events = m.feed_events(payload)
            if not events:
                continue
            room = m.room_of_topic(topic)
            if room is None:
                for event in events:
                    if event["type"] == "heartbeat":
                        self._saw_epoch(event.get("epoch"))
                targets: Sequence[Browser] = list(self.browsers)
            else:
                targets = list(self.members.get(room, ()))
            text = payload.decode("utf-8", "replace")
            for browser in targets:
                browser.offer(text)

    # --- lifecycle --------------------------------------------------------------

    async def _close(self, browser: Browser) -> None:
        """End the broker session with the WebSocket: ``bye`` now, rather than a timeout later."""
        self.browsers.discard(browser)
        for room in list(browser.rooms):
            self._exit(browser, room)
        with contextlib.suppress(zmq.ZMQError):
            if await browser.dealer.poll(0, zmq.POLLOUT):
                await browser.dealer.send(m.encode({"type": "bye"}))
        browser.dealer.close(linger=500)
        if not browser.ws.closed:
            await browser.ws.close()

    async def _start(self, app: web.Application) -> None:
        self._feed_task = asyncio.create_task(self._feed())

    async def _shutdown(self, app: web.Application) -> None:
        for browser in list(self.browsers):
            await browser.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")

    def close(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
        self.sub.close(linger=0)
        self.ctx.term()


# --- Command line ---------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-web",
        description="Chat from a browser: serves the chat page and a WebSocket, each browser a broker session.",
    )
    add_endpoint_args(parser)
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
        type=int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="browsers connected at once (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _listen_socket(host: str, port: int) -> socket.socket:
    if ":" in host or host == "":
        return socket.create_server((host or "::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server((host, port))


async def serve(args: argparse.Namespace, sock: socket.socket, conn: dict[str, Any]) -> int:
    """Serve on the bound ``sock`` until SIGINT or SIGTERM; ``conn`` is ``client.connection(args)``."""
    router, pub, curve = conn["router"], conn["pub"], conn["curve"]
    port = sock.getsockname()[1]
    origins = (
        {_normalise_origin(o) for o in args.allowed_origin}
        if args.allowed_origin
        else default_origins(args.listen, port)
    )
    gateway = Gateway(router, pub, origins, args.max_connections, curve)
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    shown = "localhost" if args.listen in WILDCARD else _url_host(args.listen)
    print(f"chat gateway (protocol v{m.PROTOCOL_VERSION}): open http://{shown}:{port}/")
    print(f"  broker inbox: {router}")
    print(f"  broker feed:  {pub}" + (" (CURVE)" if curve is not None else ""))
    print(f"  allowed page origins: {', '.join(sorted(origins))}")
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
    try:
        static_dir()
        conn = connection(args)
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
