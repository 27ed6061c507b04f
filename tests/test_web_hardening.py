"""The web gateway under attack: a real broker and gateway (processes), aiohttp's WebSocket client as the attacker.

Each attack of issue 13 must hold: one address cannot take every connection slot; a page that never reads
its socket is closed as a slow consumer and the gateway's memory stays bounded; after ``bye`` (or when the
broker ended the session) a page receives nothing more of its old rooms; an exception inside the gateway
costs only the frame it happened in (tested in-process, where a fault can be planted); one address's requests
are limited.  The page itself (headless Chromium, its WebSocket routed through Playwright) draws unpredictable
ids and handles ``id_reused``, ``unavailable``, ``internal`` and history replies cut with ``more``.

Every wait is "until this shows up, or fail at the deadline".
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, Broker, Harness, Proc

import messages as m
import web

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


# --- processes and helpers ----------------------------------------------------------


@functools.cache
def _broker_options() -> str:
    return subprocess.run([sys.executable, "broker.py", "--help"], cwd=ROOT, capture_output=True, text=True).stdout


def no_rate_limits() -> list[str]:
    """Broker options that turn its rate limits off (the per-source one only where the broker has it)."""
    flags = ["--rate-limit", "0"]
    if "--source-rate" in _broker_options():
        flags += ["--source-rate", "0"]
    return flags


def start_gateway(harness: Harness, broker: Broker, *extra: str) -> tuple[Proc, str]:
    """The gateway as a process of its own, and its WebSocket URL."""
    proc = Proc(["web.py", *broker.endpoints, "--port", "0", *extra], "gateway", stdin=False)
    harness.procs.append(proc)
    url = proc.expect(r"open (http://\S+/)").group(1)
    return proc, "ws" + url.removeprefix("http") + "ws"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a scenario in a loop of its own thread (pytest's thread may hold another loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=50)


def origin(ws_url: str) -> str:
    return "http" + ws_url.removeprefix("ws").removesuffix("/ws")


async def connect(http: aiohttp.ClientSession, ws_url: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(ws_url, origin=origin(ws_url), autoping=True)


async def send(ws: aiohttp.ClientWebSocketResponse, value: Any) -> None:
    await ws.send_str(msgspec.json.encode(value).decode())


_backlog: dict[int, deque[dict[str, Any]]] = {}  # per WebSocket: envelopes of a batch frame not yet looked at


async def next_env(
    ws: aiohttp.ClientWebSocketResponse,
    accept: Any,
    seen: list[dict[str, Any]] | None = None,
    timeout: float = WAIT,
) -> dict[str, Any]:
    """The next envelope for which ``accept(env)`` is true (or whose type is ``accept``); the others go to ``seen``."""
    if isinstance(accept, str):
        kind = accept
        accept = lambda env: env.get("type") == kind  # noqa: E731
    backlog = _backlog.setdefault(id(ws), deque())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        while backlog:
            env = backlog.popleft()
            if accept(env):
                return env
            if seen is not None:
                seen.append(env)
        try:
            msg = await asyncio.wait_for(ws.receive(), deadline - loop.time())
        except asyncio.TimeoutError:
            raise AssertionError(f"nothing accepted within {timeout}s; seen: {seen}") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type!r} {msg.data!r}")
        value = msgspec.json.decode(msg.data)
        backlog.extend(value if isinstance(value, list) else [value])


async def hello(ws: aiohttp.ClientWebSocketResponse, user: str, rooms: list[str]) -> None:
    await send(ws, {"type": "hello", "user": user, "rooms": rooms})
    await next_env(ws, "welcome")
    for room in rooms:
        await next_env(ws, lambda env, room=room: env.get("type") == "joined" and env.get("room") == room)


async def keep_alive(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Ping as a page does, so the broker keeps the session while a test waits for something else."""
    while not ws.closed:
        await send(ws, {"type": "ping"})
        await asyncio.sleep(0.2)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return {
            key: int(value.split()[0])
            for key, value in (line.split(":", 1) for line in status)
            if key in ("VmRSS", "VmHWM")
        }


def small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket whose kernel takes little before the gateway's writes must wait (an attacker's choice)."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    return sock


# --- 1. connections per address ---------------------------------------------------------------


async def _connection_caps(ws_url: str) -> None:
    async with (
        aiohttp.ClientSession() as one,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as two,
    ):
        first = [await connect(one, ws_url) for _ in range(2)]
        for i, ws in enumerate(first):
            await hello(ws, f"one{i}", ["general"])
        # The third from the same address is refused while the two are up, with a reason a person can read.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(one, ws_url)
        assert refused.value.status == 503
        handshake = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Origin": origin(ws_url),
        }
        async with one.get(ws_url.replace("ws", "http", 1), headers=handshake) as response:
            assert response.status == 503
            assert "too many connections from your address" in await response.text()

        # Another address still gets in, until the gateway as a whole is full.
        other = await connect(two, ws_url)
        await hello(other, "two0", ["general"])
        async with two.get(ws_url.replace("ws", "http", 1), headers=handshake) as response:
            assert response.status == 503
            assert "the chat gateway is full" in await response.text()

        # A slot frees when its connection closes: the gateway said bye for it, so its leave is on the feed.
        await first[0].close()
        await next_env(other, lambda env: env.get("type") == "leave" and env.get("user") == "one0")
        again = await connect(one, ws_url)
        await hello(again, "one2", ["general"])
        for ws in (first[1], other, again):
            await send(ws, {"type": "ping"})
            assert (await next_env(ws, "pong"))["session"] is True
            await ws.close()


def test_one_address_cannot_take_every_connection(harness: Harness) -> None:
    broker = harness.broker()
    _, ws_url = start_gateway(harness, broker, "--max-connections", "3", "--max-connections-per-address", "2")
    run(_connection_caps(ws_url))


# --- 2. a page that never reads ---------------------------------------------------------------------


async def _flood_without_reading(ws_url: str, gateway: Proc, attackers: int, frames: int) -> list[int | None]:
    async with aiohttp.ClientSession() as http:
        writer = await connect(http, ws_url)
        await hello(writer, "writer", ["general"])
        # History worth about 64 KiB: each history reply is that big (or cut to the broker's reply limit).
        for i in range(16):
            await send(writer, {"type": "msg", "room": "general", "text": f"{i} " + "x" * 3990, "id": f"w{i}"})
            await next_env(writer, "ack")
        watcher = await connect(http, ws_url)
        await hello(watcher, "watcher", ["general"])

        flood = [{"type": "history", "room": "general", "limit": m.MAX_HISTORY_LIMIT}] * 200
        try:
            connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
        except TypeError:  # aiohttp before 3.12: the kernel's buffers then take a little more first
            connector = aiohttp.TCPConnector()
        async with aiohttp.ClientSession(connector=connector) as evil:
            victims = [await connect(evil, ws_url) for _ in range(attackers)]
            for _ in range(frames):  # each frame asks for ~13 MB of replies; none of it is ever read
                for ws in victims:
                    await send(ws, flood)
            loop = asyncio.get_running_loop()
            for _ in range(attackers):
                await loop.run_in_executor(None, gateway.expect, r"closing a slow consumer from 127\.0\.0\.1")

            # The others never noticed: the watcher is served, the writer's messages arrive.
            await send(writer, {"type": "msg", "room": "general", "text": "still here", "id": "w-last"})
            await next_env(watcher, lambda env: env.get("text") == "still here")

            # Each attacker finds its connection closed once it reads (the close frame, or a reset: it was
            # not reading, so the close handshake could not complete).
            codes = []
            for ws in victims:
                while not ws.closed:
                    msg = await asyncio.wait_for(ws.receive(), WAIT)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
                codes.append(ws.close_code)
        # Their slots are free again.
        fresh = await connect(http, ws_url)
        await send(fresh, {"type": "ping"})
        await next_env(fresh, "pong")
        return codes


def test_a_page_that_never_reads_is_closed_and_memory_stays_bounded(harness: Harness) -> None:
    """Without the bound, each of these connections made the gateway hold ~1000 replies of 64 KiB (plus as
    many in libzmq): together well over 256 MiB.  With it, each costs about 1 MiB and is closed after 1 s."""
    broker = harness.broker(*no_rate_limits())
    gateway, ws_url = start_gateway(harness, broker, "--slow-consumer-timeout", "1", "--rate-per-address", "0")
    before = memory_kib(gateway.popen.pid)
    codes = run(_flood_without_reading(ws_url, gateway, attackers=3, frames=6))
    after = memory_kib(gateway.popen.pid)
    assert after["VmHWM"] < 256 * 1024, (before, after)
    assert set(codes) <= {aiohttp.WSCloseCode.POLICY_VIOLATION, aiohttp.WSCloseCode.ABNORMAL_CLOSURE, None}, codes


# --- 3. membership ends with the session ----------------------------------------------------------------


async def _sessions_end(ws_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        bob = await connect(http, ws_url)
        await hello(bob, "bob", ["general", "secret"])
        pings = asyncio.create_task(keep_alive(bob))

        # hello, then bye: a new session on the same WebSocket is in #general only.
        alice = await connect(http, ws_url)
        await hello(alice, "alice", ["general", "secret"])
        await send(alice, {"type": "bye"})
        await hello(alice, "alice2", ["general"])
        # The same without waiting: the joined of the first hello may still be on its way when bye is sent.
        rae = await connect(http, ws_url)
        await send(rae, {"type": "hello", "user": "rae", "rooms": ["secret"]})
        await send(rae, {"type": "bye"})
        await send(rae, {"type": "hello", "user": "rae2", "rooms": ["general"]})
        await next_env(rae, lambda env: env.get("type") == "joined" and env.get("room") == "general")
        # And inside one batch.
        sam = await connect(http, ws_url)
        batch = [
            {"type": "hello", "user": "sam", "rooms": ["secret"]},
            {"type": "bye"},
            {"type": "hello", "user": "sam2", "rooms": ["general"]},
        ]
        await send(sam, batch)
        await next_env(sam, lambda env: env.get("type") == "joined" and env.get("room") == "general")

        # Sessions the broker ended (silent past the session timeout): after the pong that says so, and at
        # the welcome of a new hello, the page is in no old room.
        carl, dan = await connect(http, ws_url), await connect(http, ws_url)
        await hello(carl, "carl", ["secret"])
        await hello(dan, "dan", ["secret"])
        timed_out: set[str] = set()
        while timed_out != {"carl", "dan"}:
            left = await next_env(bob, lambda env: env.get("type") == "leave" and env.get("user") in ("carl", "dan"))
            assert left["reason"] == "timeout"
            timed_out.add(left["user"])
        await send(carl, {"type": "ping"})
        assert (await next_env(carl, "pong"))["session"] is False
        await send(dan, {"type": "hello", "user": "dan", "rooms": ["general"]})
        await next_env(dan, lambda env: env.get("type") == "joined" and env.get("room") == "general")

        await send(bob, {"type": "msg", "room": "secret", "text": "leak", "id": "b1"})
        leak = await next_env(bob, lambda env: env.get("text") == "leak")
        await send(bob, {"type": "msg", "room": "general", "text": "marker", "id": "b2"})
        for ws in (alice, rae, sam, dan):
            seen: list[dict[str, Any]] = []
            await next_env(ws, lambda env: env.get("text") == "marker", seen)
            assert not [env for env in seen if env.get("room") == "secret"], seen
        # carl is in no room: a heartbeat published after the leak comes, the leak does not.
        seen = []
        await next_env(carl, lambda env: env.get("type") == "heartbeat" and env["ts"] > leak["ts"], seen)
        assert not [env for env in seen if env.get("room") == "secret"], seen
        pings.cancel()


def test_bye_and_an_ended_session_stop_room_delivery(harness: Harness) -> None:
    broker = harness.broker(*no_rate_limits())
    _, ws_url = start_gateway(harness, broker)
    run(_sessions_end(ws_url))


# --- 4. the crash barrier (in-process: a fault is planted in the gateway) --------------------------------


async def _crash_barrier(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> web.Gateway:
    gateway = web.Gateway(broker.router, broker.pub, {"*"})
    planted = web.requests_in

    def requests_in(frame: bytes) -> Any:
        if b'"id":"boom' in frame:
            raise ZeroDivisionError("planted")
        return planted(frame)

    monkeypatch.setattr(web, "requests_in", requests_in)
    dispatch = gateway._dispatch

    def feed(frames: list[bytes]) -> None:
        if b"ka-boom" in frames[-1]:
            raise KeyError("planted")
        dispatch(frames)

    monkeypatch.setattr(gateway, "_dispatch", feed)
    track = gateway._track

    def tracked(browser: web.Browser, env: dict[str, Any]) -> None:
        if env["type"] == "pong":
            raise ValueError("planted")
        track(browser, env)

    monkeypatch.setattr(gateway, "_track", tracked)
    runner = aiohttp.web.AppRunner(gateway.app())
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ws_url = f"ws://127.0.0.1:{port}/ws"
    try:
        async with aiohttp.ClientSession() as http:
            ann, ben = await connect(http, ws_url), await connect(http, ws_url)
            await hello(ann, "ann", ["general"])
            await hello(ben, "ben", ["general"])
            for n in range(2):  # a page frame that raises: error internal, with its id; the connection stays
                await send(ann, {"type": "msg", "room": "general", "text": "boom", "id": f"boom{n}"})
                error = await next_env(ann, "error")
                assert (error["code"], error["id"]) == ("internal", f"boom{n}")
            await send(ann, {"type": "ping"})  # a broker reply that raises while tracked still reaches the page
            assert (await next_env(ann, "pong"))["session"] is True
            # A feed message that raises is lost (the page would fetch it by seq); the next one arrives.
            await send(ben, {"type": "msg", "room": "general", "text": "ka-boom", "id": "b1"})
            await next_env(ben, "ack")
            await send(ben, {"type": "msg", "room": "general", "text": "after", "id": "b2"})
            seen: list[dict[str, Any]] = []
            await next_env(ann, lambda env: env.get("text") == "after", seen)
            assert not [env for env in seen if env.get("text") == "ka-boom"]
            await send(ben, {"type": "msg", "room": "general", "text": "ben still here", "id": "b3"})
            await next_env(ben, lambda env: env.get("id") == "b3" and env["type"] == "ack")
    finally:
        await runner.cleanup()
        gateway.close()
    return gateway


def test_an_exception_costs_one_frame_only(harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    broker = harness.broker()
    caplog.set_level(logging.ERROR, logger="chat-web")
    gateway = run(_crash_barrier(broker, monkeypatch))
    counts = {
        where: sum(n for key, n in gateway.internal_errors.items() if key.startswith(where))
        for where in ("page frame 'msg'", "broker reply", "feed message 'room/general/'")
    }
    assert counts == {"page frame 'msg'": 2, "broker reply": 1, "feed message 'room/general/'": 1}, counts
    logged = [r for r in caplog.records if r.name == "chat-web" and "internal error" in r.getMessage()]
    assert len(logged) == 3, [r.getMessage() for r in logged]  # the page frame's traceback once, not twice
    assert "ZeroDivisionError: planted" in logged[0].getMessage() and "'msg'" in logged[0].getMessage()


# --- membership bookkeeping and frame inspection, in-process ------------------------------------------------


def test_membership_is_learnt_from_the_brokers_replies_only() -> None:
    async def scenario() -> None:
        gateway = web.Gateway("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", {"*"})
        try:
            a = web.Browser(None, None, "a", None)  # type: ignore[arg-type]
            b = web.Browser(None, None, "b", None)  # type: ignore[arg-type]
            gateway.browsers |= {a, b}
            gateway._track(a, {"type": "welcome", "user": "A", "rooms": ["general", "secret"], "epoch": "e1"})
            gateway._track(b, {"type": "welcome", "user": "B", "rooms": ["general"], "epoch": "e1"})
            assert gateway.members == {"general": {a, b}, "secret": {a}}
            gateway._track(a, {"type": "joined", "room": "dev"})
            gateway._track(a, {"type": "left", "room": "secret"})
            assert set(gateway.members) == {"general", "dev"} and a.rooms == {"general", "dev"}
            # A repeated welcome of the same live session keeps its rooms; one after a silence starts over.
            gateway._track(a, {"type": "welcome", "user": "a", "rooms": ["general"], "epoch": "e1"})
            assert a.rooms == {"general", "dev"}
            a.suspect = True
            gateway._track(a, {"type": "welcome", "user": "a", "rooms": ["general"], "epoch": "e1"})
            assert a.rooms == {"general"} and set(gateway.members) == {"general"}
            # The broker says the session is gone: in no room any more.
            gateway._track(a, {"type": "pong", "epoch": "e1", "session": False})
            assert a.rooms == set() and gateway.members == {"general": {b}}
            gateway._track(b, {"type": "error", "code": "no_session", "detail": "say hello"})
            assert b.rooms == set() and gateway.members == {}
            # A new broker run: nobody is in any room until it welcomes them.
            gateway._track(a, {"type": "joined", "room": "x"})
            gateway._dispatch([m.SYS_TOPIC, m.encode({"type": "heartbeat", "epoch": "e2", "ts": 1.0})])
            assert gateway.members == {} and a.rooms == set()
            # Nothing a page could send is a reply: requests are never tracked, whatever they say.
            assert web.requests_in(b'{"type":"joined","room":"secret"}') == (1, None, None)
        finally:
            gateway.browsers.clear()  # stand-ins, with no DEALER to close
            gateway.close()

    asyncio.run(scenario())


def test_the_watchdog_closes_only_a_browser_that_takes_nothing() -> None:
    """The slow-consumer rule on the Gateway object, with the clock and the TCP buffer in the test's hands:
    a browser whose write waits and whose buffer never shrinks is closed after the timeout; one that takes
    a little now and then, however slowly, is not; nor is one with nothing waiting for it."""

    class Transport:
        buffered = 0

        def get_write_buffer_size(self) -> int:
            return self.buffered

    async def scenario() -> None:
        gateway = web.Gateway("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", {"*"}, slow_consumer_s=10.0)
        try:
            stuck, slow, idle = (web.Browser(None, Transport(), n, None) for n in "abc")  # type: ignore[arg-type]
            for browser in (stuck, slow, idle):
                browser.progress_at = 0.0
            stuck.writing_since = slow.writing_since = 1.0
            for now in range(2, 30):
                stuck.transport.buffered = slow.transport.buffered = 200_000  # type: ignore[union-attr]
                if now % 7 == 0:
                    slow.transport.buffered = 200_000 - now  # type: ignore[union-attr]
                for browser in (stuck, slow, idle):
                    gateway._watch(browser, float(now))
                if now <= 11:
                    assert not stuck.done.is_set(), now
            assert stuck.done.is_set() and stuck.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert "slow consumer" in stuck.close_reason
            assert not slow.done.is_set() and not idle.done.is_set()
            assert gateway.slow_consumers == 1
        finally:
            gateway.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"type":"ping"}', (1, None)),
        (b'{"type":"bye"}', (1, 0)),
        (b' {"id":"x","type":"\\u0062ye"}', (1, 0)),  # an escape hides the word
        (b'{"type":"msg","room":"general","text":"bye","id":"1"}', (1, None)),
        (b'[{"type":"ping"},{"type":"bye"},{"type":"bye"},{"type":"ping"}]', (4, 2)),
        (b"[]", (1, None)),  # refused whole by the broker: nothing ends
        (b"[" + b",".join([b'{"type":"bye"}'] * (m.MAX_BATCH_REQUESTS + 1)) + b"]", (1, None)),
        (b"not json bye", (1, None)),
    ],
)
def test_what_a_frame_asks(frame: bytes, expected: tuple[int, int | None]) -> None:
    count, last_bye, _ = web.requests_in(frame)
    assert (count, last_bye) == expected


def test_address_keys() -> None:
    assert web.address_key("192.0.2.7") == "192.0.2.7"
    assert web.address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert web.address_key("2001:db8:1:2:3:4:5:6") == web.address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert web.address_key(None) == "unknown"


# --- 6. the per-address request rate ------------------------------------------------------------------


async def _rate_per_address(ws_url: str) -> None:
    async with (
        aiohttp.ClientSession() as one,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as two,
    ):
        flood = await connect(one, ws_url)  # the handshake took 5 of the address's 10 tokens
        for _ in range(12):
            await send(flood, {"type": "ping"})
        answers = [await next_env(flood, lambda env: env["type"] in ("pong", "error")) for _ in range(12)]
        kinds = [env.get("code", env["type"]) for env in answers]
        assert kinds.count("pong") >= 5 and "rate_limited" in kinds, kinds
        assert re.search("your address", next(e for e in answers if e["type"] == "error")["detail"])
        calm = await connect(two, ws_url)  # another address has a budget of its own
        await send(calm, {"type": "ping"})
        await next_env(calm, "pong")


def test_one_address_cannot_send_for_everyone(harness: Harness) -> None:
    broker = harness.broker(*no_rate_limits())
    _, ws_url = start_gateway(harness, broker, "--rate-per-address", "1", "--burst-per-address", "10")
    run(_rate_per_address(ws_url))


def test_new_options_are_documented() -> None:
    result = subprocess.run([sys.executable, "web.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    doc = (ROOT / "docs" / "web.md").read_text()
    for option in (
        "--max-connections-per-address",
        "--max-queued-bytes",
        "--slow-consumer-timeout",
        "--rate-per-address",
        "--burst-per-address",
    ):
        assert option in result.stdout and option in doc, option


# --- 5. the page: unpredictable ids, the new error codes, history in pieces (headless Chromium) -------------

ID_RE = re.compile(r"[A-Za-z0-9_-]{22}")


def printed(page: Any, proc: Proc, pattern: str) -> None:
    """Wait until ``proc`` printed a line matching ``pattern``, inside Playwright's loop: its sync API runs
    the page's WebSocket route (and so the page's pings) only while the test is in a Playwright call."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + WAIT
    while not any(regex.search(line) for line in proc.output()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.name} never printed {pattern!r}:\n" + "\n".join(proc.lines))
        page.wait_for_timeout(50)


def test_the_page_draws_random_ids_and_handles_the_new_replies(harness: Harness) -> None:
    """The page's WebSocket goes through a Playwright route that plays the broker's new answers: the first
    try of some messages gets ``id_reused``, ``unavailable`` or ``internal``, and a history reply is cut
    with ``more: true``.  A console client sees what really reached the broker."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    broker = harness.broker()
    gateway = Proc(["web.py", *broker.endpoints, "--port", "0"], "gateway", stdin=False)
    harness.procs.append(gateway)
    url = gateway.expect(r"open (http://\S+/)").group(1)
    carol = harness.client(broker, "carol")

    sent: list[dict[str, Any]] = []  # every request of the page
    answered: dict[str, str] = {}  # text -> the id its first try was refused under
    refuse = {"reuse me": "id_reused", "later please": "unavailable", "this fails": "internal"}
    hidden = {"m2", "m3"}  # feed events the page does not get: it must fetch them
    cuts: list[int] = []  # the last seq of each history reply cut short

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            env = json.loads(message)
            sent.append(env)
            text = env.get("text")
            if env.get("type") == "msg" and text in refuse and text not in answered:
                answered[text] = env["id"]
                ws.send(json.dumps({"type": "error", "code": refuse[text], "detail": "played", "id": env["id"]}))
                return
            server.send(message)

        def from_server(message: str | bytes) -> None:
            value = json.loads(message)
            envs = value if isinstance(value, list) else [value]
            envs = [e for e in envs if not (e.get("type") == "msg" and e.get("text") in hidden)]
            for env in envs:
                if env.get("type") == "history" and len(env.get("events", [])) >= 2 and not cuts:
                    env["events"] = env["events"][:1]
                    env["more"] = True
                    cuts.append(env["events"][0]["seq"])
            if envs:
                ws.send(json.dumps(envs if isinstance(value, list) else envs[0]))

        ws.on_message(from_page)
        server.on_message(from_server)

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page()
            if not hasattr(page, "route_web_socket"):
                pytest.skip("Playwright before 1.48 cannot route a WebSocket")
            page.route_web_socket(re.compile(r"/ws$"), route)
            page.goto(url)
            page.fill("#name", "pia")
            page.click("#login-button")
            expect(page.locator("#status")).to_have_text("Connected as pia", timeout=WAIT * 1000)
            log = page.locator('.log[data-room="general"]')

            for text in ("reuse me", "later please", "this fails", "plain"):
                page.fill("#input", text)
                page.press("#input", "Enter")
            printed(page, carol, r"^pia: reuse me$")  # sent again under a fresh id, and accepted
            printed(page, carol, r"^pia: plain$")
            printed(page, carol, r"^pia: later please$")  # kept, and resent after the ack timeout
            expect(log.locator("li.failed", has_text="this fails")).to_contain_text("not sent: internal")
            expect(log.locator("li.pending, li.sent")).to_have_count(0, timeout=WAIT * 1000)
            msgs = [env for env in sent if env.get("type") == "msg"]
            ids = [env["id"] for env in msgs]
            assert all(ID_RE.fullmatch(i) for i in ids), ids
            reused = [env["id"] for env in msgs if env["text"] == "reuse me"]
            assert len(reused) == 2 and reused[0] == answered["reuse me"] and reused[1] != reused[0], reused
            assert len({env["id"] for env in msgs if env["text"] != "reuse me"}) == 3  # a resend keeps its id

            # Events the page missed come back through history, in pieces: a reply cut with more: true is
            # not complete, however short; the page asks again after its last event.
            for text in ("m1", "m2", "m3", "m4"):
                carol.send(text)
            expect(log.locator("li.msg", has_text=re.compile(r"carol: m\d$"))).to_have_text(
                [re.compile(f"carol: m{n}$") for n in range(1, 5)], timeout=WAIT * 1000
            )
            asked = [env["after"] for env in sent if env.get("type") == "history"]
            assert cuts and cuts[0] in asked, (cuts, asked)
            carol.send("/quit")
        finally:
            chromium.close()
