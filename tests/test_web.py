"""The web gateway and its page, end to end: a real broker, the gateway, headless Chromium and a console client.

Every wait is "until this shows up, or fail at the deadline" (Playwright's expect, Proc.expect).
``CHAT_WEB_SCREENSHOT=docs/web.png python -m pytest tests/test_web.py`` also refreshes the README's picture.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from conftest import ROOT, Harness, Proc
from playwright.sync_api import Browser, Locator, Page, expect

import messages as m
import web
from safe_text import safe_text

pytestmark = pytest.mark.timeout(90)

WAIT_MS = 10_000
expect.set_options(timeout=WAIT_MS)


# --- processes -------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_gateway(harness: Harness, router: str, pub: str, port: int = 0, *extra: str) -> tuple[Proc, str]:
    """The gateway as a process of its own, and the page's URL it printed."""
    proc = Proc(["web.py", "--router", router, "--pub", pub, "--port", str(port), *extra], "gateway", stdin=False)
    harness.procs.append(proc)
    return proc, proc.expect(r"open (http://\S+/)").group(1)


# --- the browser ------------------------------------------------------------------


@dataclass
class ChatPage:
    """One browser user: a page of its own (its own context, so its own storage and WebSocket)."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def type(self, line: str) -> None:
        self.page.fill("#input", line)
        self.page.press("#input", "Enter")

    def log(self, room: str = "general") -> Locator:
        return self.page.locator(f'.log[data-room="{room}"]')

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def query(self, peer: str) -> Locator:
        """The private conversation with ``peer`` (its case-folded name)."""
        return self.page.locator(f'.log[data-query="{peer}"]')


def open_page(browser: Browser, url: str, name: str) -> ChatPage:
    page = browser.new_page(viewport={"width": 1000, "height": 560})
    chat = ChatPage(page)
    page.on("dialog", lambda dialog: (chat.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: chat.errors.append(str(error)))
    page.goto(url)
    page.fill("#name", name)
    page.click("#login-button")
    expect(chat.status).to_have_text(f"Connected as {name}")
    return chat


# --- tests ------------------------------------------------------------------------------


def test_two_browsers_and_a_console_chat(harness: Harness, browser: Browser, tmp_path: Path) -> None:
    broker = harness.broker()
    _, url = start_gateway(harness, broker.router, broker.pub)
    carol = harness.client(broker, "carol")
    carol.send("Good morning!")

    # A name, the room's recent history on join, the member list.
    alice = open_page(browser, url, "alice")
    expect(alice.log()).to_contain_text("carol: Good morning!")
    bob = open_page(browser, url, "bob")
    expect(alice.log()).to_contain_text("bob joined the chat")
    carol.expect(r"^\[join\] bob joined the chat$")
    expect(alice.page.locator("#members li")).to_have_text(["alice", "bob", "carol"])

    # Browser -> browser and console; console -> browsers; /me.
    alice.type("Hi bob! Did the deploy go out?")
    expect(bob.log()).to_contain_text("alice: Hi bob! Did the deploy go out?")
    carol.expect(r"^alice: Hi bob! Did the deploy go out\?$")
    bob.type("/me gives a thumbs up")
    expect(alice.log()).to_contain_text("* bob gives a thumbs up")
    carol.expect(r"^\* bob gives a thumbs up$")
    carol.send("Nice work, both of you")
    expect(alice.log()).to_contain_text("carol: Nice work, both of you")
    expect(bob.log()).to_contain_text("carol: Nice work, both of you")

    # Private messages reach only their target, in every direction: each in a conversation view of its own.
    alice.type("/msg bob lunch at noon?")
    expect(bob.query("alice")).to_contain_text("alice: lunch at noon?")
    expect(bob.page.locator('#queries button[data-query="alice"] .unread')).to_have_text("1")
    expect(alice.query("bob")).to_contain_text("alice: lunch at noon?")
    expect(alice.log()).to_contain_text("[dm → bob] lunch at noon?")  # typed in #general: said where it went
    bob.type("/msg alice sure, see you there")
    expect(alice.query("bob")).to_contain_text("bob: sure, see you there")
    carol.send("/msg bob the console can whisper too")
    expect(bob.query("carol")).to_contain_text("carol: the console can whisper too")
    alice.type("/msg carol and the web can whisper back")
    carol.expect(r"^\[dm\] alice: and the web can whisper back$")
    alice.type("back to the room")
    carol.expect(r"^alice: back to the room$")  # everything alice sent before this has reached carol
    expect(bob.log()).to_contain_text("alice: back to the room")
    assert not [line for line in carol.lines if "lunch" in line or "see you there" in line]
    expect(alice.page.locator("#messages")).not_to_contain_text("the console can whisper")
    expect(bob.page.locator(".log[data-room]", has_text="lunch at noon")).to_have_count(0)
    expect(alice.page.locator(".log[data-room] li", has_text="see you there")).to_have_count(0)

    # Rooms: join with the form, /join by command, switch by click; each room's events stay in its log.
    alice.page.fill("#join-room", "dev")
    alice.page.click("#join-form button")
    expect(alice.page.locator("#room-title")).to_have_text("#dev")
    bob.type("/join dev")
    expect(alice.log("dev")).to_contain_text("bob joined the room")
    alice.type("the build is green")
    expect(bob.log("dev")).to_contain_text("alice: the build is green")
    expect(bob.log("general")).not_to_contain_text("the build is green")
    alice.page.click('#rooms button[data-room="general"]')
    expect(alice.page.locator("#room-title")).to_have_text("#general")
    bob.type("/me ships it")
    expect(alice.page.locator('#rooms button[data-room="dev"] .unread')).to_have_text("1")
    expect(alice.page.locator("#rooms button.room")).to_have_text(["#general", "#dev1"])

    shot = tmp_path / "web.png"
    alice.page.set_viewport_size({"width": 940, "height": 400})  # the README's picture: no empty space
    alice.page.screenshot(path=str(shot))
    if os.environ.get("CHAT_WEB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CHAT_WEB_SCREENSHOT"])

    # Hostile text is shown as text: no element is created, no script runs.
    script = "<script>alert(1)</script>"
    img = "<img src=x onerror=alert(2)>"
    carol.send(script)
    bob.type("/join general")  # already in it: just switches back
    alice.type(img)
    for page in (alice, bob):
        expect(page.log()).to_contain_text(f"carol: {script}")
        # Its own line, the text whole (a "connection restored" line may follow it on a loaded machine).
        mine = page.log().locator("li.msg", has_text="alice: <img")
        expect(mine).to_have_text(re.compile(re.escape(f"alice: {img}") + "$"))
        assert page.page.locator("#messages script, #messages img").count() == 0
        assert page.dialogs == [] and page.errors == []
    carol.expect(re.escape(f"alice: {img}"))


def test_the_gateway_moves_to_the_next_broker_and_the_page_chats_on_without_a_reload(
    harness: Harness, browser: Browser
) -> None:
    """Given two brokers (--router A,B --pub A,B), the gateway moves its feed and every page's connection to
    the second when the first goes silent; the page says hello there and sends what was typed meanwhile."""
    first, second = harness.broker(), harness.broker()
    gateway, url = start_gateway(harness, f"{first.router},{second.router}", f"{first.pub},{second.pub}")
    alice = open_page(browser, url, "alice")
    carol = harness.client(second, "carol")
    first.kill()
    first.wait()
    alice.type("typed while the first broker was dead")  # kept by the page until a broker acks it
    gateway.expect(r"moving to " + re.escape(second.router))
    expect(alice.log()).to_contain_text("the chat server restarted")  # a new epoch: hello again there
    expect(alice.status).to_have_text("Connected as alice")
    carol.expect(r"^alice: typed while the first broker was dead$")
    carol.send("hello from the second broker")
    expect(alice.log()).to_contain_text("carol: hello from the second broker")
    expect(alice.log().locator("li.pending, li.sent")).to_have_count(0)


@pytest.mark.parametrize("db", ["memory", "file"])
def test_page_recovers_when_the_broker_restarts(harness: Harness, browser: Browser, tmp_path: Path, db: str) -> None:
    """With no database the new broker's rooms start over; with one they go on: the page copes with both."""
    router_port, pub_port, web_port = free_ports(3)
    where = {
        "router": f"tcp://127.0.0.1:{router_port}",
        "pub": f"tcp://127.0.0.1:{pub_port}",
        "db": ":memory:" if db == "memory" else str(tmp_path / "chat.db"),
    }
    broker = harness.broker(**where)
    gateway, url = start_gateway(harness, broker.router, broker.pub, web_port)
    alice = open_page(browser, url, "alice")
    carol = harness.client(broker, "carol")
    expect(alice.log()).to_contain_text("carol joined the chat")
    alice.type("before the restart")
    carol.expect(r"^alice: before the restart$")
    # Confirmed by the feed (a lost ack no longer matters): with no database a resend would repeat it.
    expect(alice.log().locator("li.pending, li.sent")).to_have_count(0)

    # The broker dies: the page says so, keeps what is typed, and sends it once a new broker is there.
    broker.kill()
    broker.wait()
    expect(alice.status).to_contain_text("Connection to the chat server lost")
    alice.type("typed while the server was down")
    expect(alice.log().locator("li.pending")).to_have_count(1)
    broker = harness.broker(**where)  # the same endpoints
    expect(alice.status).to_have_text("Connected as alice")
    expect(alice.log()).to_contain_text("the chat server restarted")
    if db == "file":  # with no database the console may miss it: see the lead's note on client.FeedSequencer
        carol.expect(r"^alice: typed while the server was down$")
    expect(alice.log().locator("li.pending, li.sent")).to_have_count(0)
    expect(alice.log()).to_contain_text("alice: typed while the server was down")
    carol.send("welcome back")
    expect(alice.log()).to_contain_text("carol: welcome back")
    alice.type("good to be back")
    carol.expect(r"^alice: good to be back$")
    # Each line once: nothing repeated by the resend or the re-join.
    for text in ("alice: before the restart", "alice: typed while the server was down", "carol: welcome back"):
        expect(alice.log().locator("li.msg", has_text=text)).to_have_count(1)

    # The gateway dies, and the broker too; carol speaks in the new broker run before the page is back.
    # With a database the room goes on from its seq; without, it starts over at 1, and the page must still
    # show what was said (not skip it as "already seen", nor repeat the old lines).
    gateway.kill()
    gateway.wait()
    expect(alice.status).to_have_text("Connection to the gateway lost — reconnecting…")
    broker.kill()
    broker.wait()
    harness.broker(**where)
    carol.send("said while you were away")
    carol.expect(r"^\[system\] reconnected$")
    start_gateway(harness, where["router"], where["pub"], web_port)
    expect(alice.status).to_have_text("Connected as alice")
    expect(alice.log()).to_contain_text("carol: said while you were away")
    alice.type("and through a new gateway")
    carol.expect(r"^alice: and through a new gateway$")
    for text in ("carol: welcome back", "carol: said while you were away", "alice: and through a new gateway"):
        expect(alice.log().locator("li.msg", has_text=text)).to_have_count(1)
    assert alice.dialogs == [] and alice.errors == []


async def _until_one_comes_live(ws: aiohttp.ClientWebSocketResponse, room: str) -> None:
    """Send to ``room`` until a message comes back on the feed: the shared SUB's subscription reaches the
    broker's PUB on its own path, which a loaded machine may keep behind the join's reply and the history
    after it (what a page misses meanwhile it fetches by seq)."""
    for attempt in range(WAIT_MS // 500):
        text = f"{room}, live {attempt}"
        await ws.send_str(
            msgspec.json.encode({"type": "msg", "room": room, "text": text, "id": f"live{attempt}"}).decode()
        )
        try:
            while not (await asyncio.wait_for(_next(ws, "msg"), 0.5))["text"].startswith(f"{room}, live"):
                pass
            return
        except asyncio.TimeoutError:
            continue
    raise AssertionError(f"nothing sent to {room} came back on the feed")


async def _next(
    ws: aiohttp.ClientWebSocketResponse, *types: str, seen: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The next envelope of one of ``types``, skipping others (heartbeats, feed events) into ``seen``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_MS / 1000
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), deadline - loop.time())
        except asyncio.TimeoutError:
            raise AssertionError(f"no {'/'.join(types)} within {WAIT_MS / 1000}s") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type!r} {msg.data!r}")
        value = msgspec.json.decode(msg.data)
        for env in value if isinstance(value, list) else [value]:
            if seen is not None:
                seen.append(env)
            if env["type"] in types:
                return env


async def _bad_input(url: str, carol: Proc) -> None:
    ws_url = "ws" + url.removeprefix("http") + "ws"
    origin = url.rstrip("/")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url, origin="http://evil.example")
        assert refused.value.status == 403

        dave = await http.ws_connect(ws_url, origin=origin)
        await dave.send_str('{"type": "hello", "user": "dave"}')
        await _next(dave, "joined")
        bad = await http.ws_connect(ws_url, origin=origin)
        for frame, code in [
            ("not json", "bad_json"),
            ("[1, 2]", "bad_envelope"),
            ('{"type": "teleport"}', "unknown_type"),
            ('{"type": "msg", "room": "general", "text": "hi", "id": "x"}', "no_session"),
            ('{"type": "hello", "user": "system"}', "bad_name"),
        ]:
            await bad.send_str(frame)
            assert (await _next(bad, "error"))["code"] == code, frame
        await bad.send_bytes(b'{"type": "ping"}')
        assert (await _next(bad, "error"))["code"] == "bad_json"

        await bad.send_str('{"type": "hello", "user": "mallory"}')
        await _next(bad, "joined")
        # The shared SUB follows "side" for mallory; dave, not in it, gets none of it.
        await bad.send_str('{"type": "join", "room": "side"}')
        await _next(bad, "joined")
        await bad.send_str('{"type": "msg", "room": "side", "text": "only for side", "id": "side1"}')
        seq = (await _next(bad, "ack"))["seq"]
        # The gateway subscribes when the broker confirms the join, so the first event may race past the
        # subscription; a page then fetches it by seq (its catch-up history), as this does.
        await bad.send_str(msgspec.json.encode({"type": "history", "room": "side", "after": seq - 1}).decode())
        reply = await _next(bad, "history")
        assert [e["text"] for e in reply["events"] if e["type"] == "msg"] == ["only for side"]
        await _until_one_comes_live(bad, "side")
        await dave.send_str('{"type": "msg", "room": "general", "text": "marker", "id": "d-marker"}')
        seen: list[dict[str, Any]] = []
        while (await _next(dave, "msg", seen=seen))["text"] != "marker":
            pass
        assert not [env for env in seen if env.get("room") == "side"], seen

        big = {"type": "msg", "room": "general", "text": "x" * (m.MAX_FRAME_BYTES + 1), "id": "big"}
        await bad.send_str(msgspec.json.encode(big).decode())
        error = await _next(bad, "error")
        assert (error["code"], error["id"]) == ("too_large", "big")
        # A flood is the broker's to limit, per session: mallory is slowed, dave is not.
        for i in range(80):
            await bad.send_str(
                msgspec.json.encode({"type": "msg", "room": "general", "text": f"spam {i}", "id": f"s{i}"}).decode()
            )
        codes = [(await _next(bad, "ack", "error")).get("code", "ack") for _ in range(80)]
        assert "rate_limited" in codes and "ack" in codes, codes
        await dave.send_str('{"type": "msg", "room": "general", "text": "still fine", "id": "d1"}')
        assert (await _next(dave, "ack", "error"))["type"] == "ack"
        carol.expect(r"^dave: still fine$")

        # Past the hard limit the gateway closes that WebSocket with 1009; the client, still sending the rest
        # of the frame, may see its connection reset instead (1006).  Nobody else notices.
        await bad.send_str("x" * (web.HARD_FRAME_BYTES + 1))
        closing = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        while (await asyncio.wait_for(bad.receive(), WAIT_MS / 1000)).type not in closing:
            pass
        assert bad.close_code in (aiohttp.WSCloseCode.MESSAGE_TOO_BIG, aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
        carol.expect(r"^\[leave\] mallory left the chat$")  # the gateway said bye for it
        await dave.send_str('{"type": "msg", "room": "general", "text": "and still fine", "id": "d2"}')
        assert (await _next(dave, "ack", "error"))["type"] == "ack"
        carol.expect(r"^dave: and still fine$")
        await dave.close()


def test_bad_input_from_a_websocket_gets_the_brokers_errors(harness: Harness) -> None:
    broker = harness.broker()
    _, url = start_gateway(harness, broker.router, broker.pub)
    carol = harness.client(broker, "carol")
    # Playwright's sync API keeps an event loop in this thread (the module's browser), so the
    # WebSocket client gets a loop in a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _bad_input(url, carol)).result(timeout=60)


async def _two_sessions_chat(url: str) -> None:
    ws_url = "ws" + url.removeprefix("http") + "ws"
    async with aiohttp.ClientSession() as http:
        ann = await http.ws_connect(ws_url, origin=url.rstrip("/"))
        await ann.send_str('{"type": "hello", "user": "ann"}')
        await _next(ann, "joined")
        ben = await http.ws_connect(ws_url, origin=url.rstrip("/"))
        await ben.send_str('{"type": "hello", "user": "ben"}')
        await _next(ben, "joined")
        await ann.send_str('{"type": "msg", "room": "general", "text": "sealed", "id": "a1"}')
        while (await _next(ben, "msg"))["text"] != "sealed":  # through ann's DEALER and the shared SUB
            pass


def test_gateway_talks_to_a_curve_broker(harness: Harness, tmp_path: Path) -> None:
    """With --server-key/--key every socket of the gateway is CURVE; one unbound key serves every browser."""
    keys = pytest.importorskip("keys")
    keydir = tmp_path / "keys"
    keys.init(keydir)
    secret = keys.add_user(keydir, "web-gateway", bind=False)
    broker = harness.broker("--curve", str(keydir), "--max-sessions-per-key", "0")
    curve = ["--server-key", str(keydir / "broker.key"), "--key", str(secret)]
    _, url = start_gateway(harness, broker.router, broker.pub, 0, *curve)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _two_sessions_chat(url)).result(timeout=60)


#: The feed sequencer's shared vectors: tests/sansio/test_sequencer_vectors.py runs them on sequencer.FeedSequencer
#: and, in Node, on static/chat.js; here they run in the page as the browser loads it.
SEQUENCER_VECTORS: list[dict[str, Any]] = msgspec.json.decode(
    (ROOT / "tests" / "vectors" / "sequencer.json").read_bytes()
)["cases"]

#: Each case on a new window.zmqChat.FeedSequencer: what each step gave, then the counters.
RUN_SEQUENCER_VECTORS = """(cases) => cases.map((vector) => {
    const rooms = new Set(vector.steps.filter((step) => "room" in step).map((step) => step.room));
    const s = new window.zmqChat.FeedSequencer(vector.unknown_baseline ?? null);
    const event = (room, seq, prev) => {
        if (Array.isArray(seq)) [seq, prev] = seq;  // a fill's [seq, prev]
        return prev === undefined ? { type: "msg", room, user: "u", text: "t", id: "i", seq }
            : { type: "msg", room, user: "u", text: "t", id: "i", seq, prev };
    };
    const steps = vector.steps.map((step) => {
        const [ready, fetch] =
            step.op === "push" ? s.push(event(step.room, step.seq, step.prev))
            : step.op === "expect" ? s.expect(step.room, step.head)
            : step.op === "fill"
            ? s.fill(step.room, step.events.map((seq) => event(step.room, seq)), step.head, step.more)
            : step.op === "reset" ? (s.reset(), [[], null])
            : step.op === "forget" ? (s.forget(step.room), [[], null])
            : [["unknown op"], null];
        return { delivered: ready.map((e) => (rooms.size > 1 ? [e.room, e.seq] : e.seq)), fetch };
    });
    return { name: vector.name, steps, lost: s.lost, filled: s.filled };
})"""


def test_page_helpers_match_the_python_ones(harness: Harness, browser: Browser) -> None:
    """The page's FeedSequencer and safeText are ports of sequencer.py's and safe_text.py's: same answers."""
    _, url = start_gateway(harness, "tcp://127.0.0.1:9", "tcp://127.0.0.1:9")  # no broker needed to load the page
    page = browser.new_page()
    page.goto(url)
    result = page.evaluate(RUN_SEQUENCER_VECTORS, SEQUENCER_VECTORS)
    assert result == [
        {"name": c["name"], "steps": [step["out"] for step in c["steps"]], "lost": c["lost"], "filled": c["filled"]}
        for c in SEQUENCER_VECTORS
    ]
    # Held events are bounded in bytes as in sequencer.py: 300 events of 100,000 characters behind a hole
    # (120 MB by the estimate) leave at most 16 MiB and one event held, and the hole's fill brings the rest.
    held = page.evaluate(
        """() => {
            const s = new window.zmqChat.FeedSequencer();
            s.expect("r", 0);
            const text = "x".repeat(100000);
            for (let seq = 2; seq < 302; seq++) s.push({ type: "msg", room: "r", user: "u", text, id: "i", seq });
            return [s.heldBytes.get("r"), s.totalBytes, s.held.get("r").size];
        }"""
    )
    assert held[0] == held[1] <= 16 * 1024 * 1024 + 400 + 400_000 and held[2] < 300
    hostile = "a\x1b[2J\u202eb\tc\nd\u00a0e\u200bf\U000e0001 😀 👨\u200d👩\u200d👧 <b>"
    assert page.evaluate("(text) => window.zmqChat.safeText(text)", hostile) == safe_text(hostile)


def test_gateway_options_and_origin_defaults() -> None:
    result = subprocess.run([sys.executable, "web.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--host", "--router", "--pub", "--listen", "--port", "--allowed-origin"):
        assert option in result.stdout, option
    assert "127.0.0.1" in result.stdout and "8080" in result.stdout
    assert web.default_origins("127.0.0.1", 8080) == {
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
    }
    assert web.default_origins("chat.example.org", 80) == {"http://chat.example.org:80", "http://chat.example.org"}
