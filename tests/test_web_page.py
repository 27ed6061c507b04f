"""The web page as people use it: its layout from a phone to a wide screen, mentions and notifications,
Tab completion, and the console's commands, against a real broker and gateway in headless Chromium.

Every wait is "until this shows up, or fail at the deadline" (Playwright's expect).  The page's typed-line
helpers are also checked against the Python ones they port (commands.py, display.mentions), in Node.
``CHAT_WEB_SCREENSHOT=1 python -m pytest tests/test_web_page.py -k layout`` refreshes docs/web-390.png and
docs/web-1280.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Harness
from playwright.sync_api import Browser, Locator, Page, expect
from test_web import WAIT_MS, ChatPage, start_gateway

import commands
import display
import web

pytestmark = pytest.mark.timeout(90)

#: The broker's side of /topic, /nick and /away (chat.py); without it those tests cannot run.
BROKER_HAS_NICK = '"nick"' in (ROOT / "chat.py").read_text()
needs_nick = pytest.mark.skipif(not BROKER_HAS_NICK, reason="the broker (chat.py) has no topic/nick/away handler yet")

PHONE = {"width": 390, "height": 844}
WIDE = {"width": 1280, "height": 800}

#: Stand-ins for what a headless browser cannot show: a Notification that records itself (permission
#: "default" until asked, as in a fresh browser) and a document.hidden the test sets (window.__hidden).
FAKE_NOTIFICATIONS = """(() => {
  window.__notes = [];
  window.__hidden = false;
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => window.__hidden });
  Object.defineProperty(Document.prototype, "visibilityState", {
    configurable: true, get: () => (window.__hidden ? "hidden" : "visible"),
  });
  class FakeNotification {
    constructor(title, options) { window.__notes.push({ title, body: options && options.body }); }
    close() {}
    static requestPermission() {
      FakeNotification.asked += 1;
      FakeNotification.permission = "granted";
      return Promise.resolve("granted");
    }
  }
  FakeNotification.asked = 0;
  FakeNotification.permission = "default";
  window.Notification = FakeNotification;
})();"""
#: A browser without notifications at all (an insecure origin in some browsers, old ones).
NO_NOTIFICATIONS = FAKE_NOTIFICATIONS + "delete window.Notification;"

SET_HIDDEN = "(hidden) => { window.__hidden = hidden; document.dispatchEvent(new Event('visibilitychange')); }"

#: Every visible element that sticks out of the viewport, and the document's scroll width.
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const node of document.querySelectorAll("body *")) {
    const style = getComputedStyle(node);
    if (style.visibility === "hidden" || style.display === "none") continue;
    const box = node.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    if (box.right > width + 0.5 || box.left < -0.5) {
      out.push(`${node.tagName.toLowerCase()}#${node.id}.${node.className} ${box.left}..${box.right}`);
    }
  }
  return { scrollWidth: document.documentElement.scrollWidth, width, out };
}"""

#: Each visible input's placeholder: its width as drawn, and the room it has.
PLACEHOLDERS = """() => [...document.querySelectorAll("input[placeholder]")]
  .filter((input) => input.getClientRects().length && getComputedStyle(input).visibility !== "hidden")
  .map((input) => {
    const style = getComputedStyle(input);
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
    const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return [input.id, input.placeholder, ctx.measureText(input.placeholder).width, room];
  })"""

#: The header's text on one line each: its title, and the status pill not cut short.
HEADER = """() => {
  const range = document.createRange();
  range.selectNodeContents(document.querySelector(".top h1"));
  const status = document.getElementById("status");
  const top = document.querySelector(".top").getBoundingClientRect();
  return {
    titleLines: range.getClientRects().length,
    statusCut: status.scrollWidth > status.clientWidth,
    statusInside: status.getBoundingClientRect().bottom <= top.bottom,
  };
}"""


@dataclass
class Chat(ChatPage):
    """One person's page (a browser context of its own: its own storage and WebSocket), with what these tests
    ask of it besides."""

    def query(self, peer: str) -> Locator:
        return self.page.locator(f'.log[data-query="{peer}"]')

    def tab(self, typed: str, presses: int = 1, shift: bool = False) -> str:
        """``typed`` in the input, Tab pressed ``presses`` times: what the input then holds."""
        self.page.fill("#input", typed)
        for _ in range(presses):
            self.page.press("#input", "Shift+Tab" if shift else "Tab")
        return self.page.input_value("#input")

    def hide(self, hidden: bool = True) -> None:
        self.page.evaluate(SET_HIDDEN, hidden)

    @property
    def notes(self) -> list[dict[str, str]]:
        return self.page.evaluate("() => window.__notes")


def open_chat(
    browser: Browser, url: str, name: str, viewport: dict[str, int], script: str = FAKE_NOTIFICATIONS
) -> Chat:
    page = browser.new_page(viewport=viewport)
    chat = Chat(page)
    page.on("pageerror", lambda error: chat.errors.append(str(error)))
    page.add_init_script(script)
    page.goto(url)
    page.fill("#name", name)
    page.click("#login-button")
    expect(page.locator("#status")).to_have_text(f"Connected as {name}")
    expect(chat.log()).to_be_attached()
    return chat


def check_fits(page: Page, where: str) -> None:
    """Nothing wider than the viewport, the header on one line, every placeholder whole."""
    overflow = page.evaluate(OVERFLOW)
    assert overflow["scrollWidth"] <= overflow["width"], f"{where}: the page scrolls sideways: {overflow}"
    assert overflow["out"] == [], f"{where}: sticks out of the viewport: {overflow['out']}"
    header = page.evaluate(HEADER)
    assert header == {"titleLines": 1, "statusCut": False, "statusInside": True}, f"{where}: {header}"
    for name, placeholder, drawn, room in page.evaluate(PLACEHOLDERS):
        assert drawn <= room, (
            f"{where}: the placeholder {placeholder!r} of #{name} is cut ({drawn:.0f} > {room:.0f} px)"
        )


def open_drawer(page: Page, which: str) -> None:
    """Open the rooms or members drawer and wait until it has slid in whole."""
    page.click(f"#{which}-toggle")
    expect(page.locator(f"#{which}-pane")).to_be_visible()
    page.wait_for_function(
        """(id) => { const box = document.getElementById(id).getBoundingClientRect();
                     return box.left >= 0 && box.right <= document.documentElement.clientWidth; }""",
        arg=f"{which}-pane",
        timeout=WAIT_MS,
    )


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    page.mouse.move(0, page.viewport_size["height"] - 1 if page.viewport_size else 0)  # no hover left behind
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    if os.environ.get("CHAT_WEB_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / name)


# --- layout ----------------------------------------------------------------------------------


@needs_nick
def test_layout_from_a_phone_to_a_wide_screen(harness: Harness, browser: Browser, tmp_path: Path) -> None:
    broker = harness.broker()
    _, url = start_gateway(harness, broker.router, broker.pub)
    carol = harness.client(broker, "carol")
    carol.send("Morning! The release notes for 2.0 are in the wiki")
    dave = open_chat(browser, url, "dave", WIDE)
    dave.type("/away on holiday until Monday")  # told to alice in her joined
    expect(dave.log()).to_contain_text("you are marked as away")
    bob = open_chat(browser, url, "bob", WIDE)
    alice = open_chat(browser, url, "alice", PHONE)
    page = alice.page
    bob.type("/topic Release 2.0 ships Friday — notes in the wiki")
    bob.type("alice: could you check the dashboards after the deploy?")
    bob.type("/me starts the deploy")
    carol.send("Thanks bob! I will write the summary for the team once it is out")
    bob.type("/msg alice lunch at noon?")
    alice.type("On it. Everything is green so far.")
    expect(bob.log()).to_contain_text("alice: On it.")
    dave_item = page.locator('#members li[data-user="dave"].away')
    expect(dave_item).to_have_attribute("title", "away: on holiday until Monday")
    page.evaluate("() => document.fonts.ready")

    # A phone: the conversation alone, the input at the bottom; rooms and members behind header buttons.
    expect(page.locator("#room-topic")).to_have_text("Release 2.0 ships Friday — notes in the wiki")
    expect(page.locator(".log li.mention")).to_have_count(1)
    check_fits(page, "390 px")
    screenshot(page, tmp_path, "web-390.png")
    box = page.locator("#input").bounding_box()
    assert box is not None and PHONE["height"] - 90 < box["y"] + box["height"] <= PHONE["height"]
    for control in ("#input", "#send", "#rooms-toggle", "#members-toggle"):
        page.locator(control).click(trial=True)
    expect(page.locator("#rooms-pane")).to_be_hidden()
    expect(page.locator("#members-pane")).to_be_hidden()
    expect(page.locator("#rooms-badge")).to_have_text("1")  # bob's private message, in another view

    # The rooms drawer: join a room from it (it closes on the switch), come back, close it with Escape.
    open_drawer(page, "rooms")
    check_fits(page, "390 px, rooms open")
    page.fill("#join-room", "dev")
    page.click("#join-form button")
    expect(page.locator("#room-title")).to_have_text("#dev")
    expect(page.locator("#rooms-pane")).to_be_hidden()
    page.click("#rooms-toggle")
    page.click('#queries button[data-query="bob"]')
    expect(page.locator("#room-title")).to_have_text("@bob")
    expect(alice.query("bob")).to_contain_text("bob: lunch at noon?")
    page.click("#rooms-toggle")
    page.click('#rooms button[data-room="general"]')
    expect(page.locator("#room-title")).to_have_text("#general")
    page.click("#rooms-toggle")
    expect(page.locator("#rooms-pane")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#rooms-pane")).to_be_hidden()

    # The members drawer: a tap outside closes it; a name in it opens a private conversation.
    open_drawer(page, "members")
    expect(page.locator("#members li")).to_have_text(["alice", "bob", "carol", "daveaway"])
    check_fits(page, "390 px, members open")
    page.mouse.click(20, PHONE["height"] // 2)  # on the scrim, beside the drawer
    expect(page.locator("#members-pane")).to_be_hidden()
    page.click("#members-toggle")
    page.click('#members li[data-user="bob"]')
    expect(page.locator("#room-title")).to_have_text("@bob")
    expect(page.locator("#members-pane")).to_be_hidden()
    alice.type("/window 1")
    expect(page.locator("#room-title")).to_have_text("#general")

    # A narrower phone, a phone held sideways and a tablet fit too.
    for width, height in ((360, 640), (844, 390), (800, 600)):
        page.set_viewport_size({"width": width, "height": height})
        check_fits(page, f"{width} px")

    # A wide screen: rooms | conversation | members side by side, no drawer buttons.
    page.set_viewport_size(WIDE)
    expect(page.locator("#rooms-toggle")).to_be_hidden()
    expect(page.locator("#members-toggle")).to_be_hidden()
    rooms, chat, members = (page.locator(s).bounding_box() for s in ("#rooms-pane", ".chat-pane", "#members-pane"))
    assert rooms and chat and members
    assert rooms["x"] + rooms["width"] <= chat["x"] + 1 and chat["x"] + chat["width"] <= members["x"] + 1
    check_fits(page, "1280 px")
    for control in ("#input", "#send", "#join-room", "#join-form button", '#rooms button[data-room="dev"]'):
        page.locator(control).click(trial=True)
    page.locator('#members li[data-user="bob"]').click(trial=True)
    screenshot(page, tmp_path, "web-1280.png")
    assert alice.errors == [] and bob.errors == [] and dave.errors == []


# --- mentions, notifications, completion, commands -------------------------------------------------


@needs_nick
def test_mentions_completion_and_commands(harness: Harness, browser: Browser) -> None:
    broker = harness.broker()
    _, url = start_gateway(harness, broker.router, broker.pub)
    alice = open_chat(browser, url, "alice", {"width": 1000, "height": 700})
    bob = open_chat(browser, url, "bob", {"width": 1000, "height": 700}, NO_NOTIFICATIONS)
    assert alice.page.evaluate("() => Notification.asked") == 1  # asked on signing in, a user's gesture
    expect(alice.page.locator("#members li")).to_have_text(["alice", "bob"])

    # Someone else naming me, as a word and in any case, is marked; names that only start like mine are not.
    bob.type("Alice, the build is green")
    bob.type("alicex and alice-2 are other people")
    expect(alice.log().locator("li.msg.mention")).to_have_text(re.compile("bob: Alice, the build is green$"))
    expect(alice.log().locator("li.msg", has_text="other people")).not_to_have_class(re.compile("mention"))
    alice.type("thanks bob")
    expect(bob.log().locator("li.mention")).to_have_count(1)
    expect(alice.log().locator("li.mention")).to_have_count(1)  # my own line naming bob is not a mention of me

    # While the tab is hidden: a notification per mention or private message, counts in the title.
    alice.hide()
    bob.type("alice: are you there?")
    expect(alice.page).to_have_title("(1, @1) #general · zmq-chat")
    bob.type("no mention here")
    expect(alice.page).to_have_title("(2, @1) #general · zmq-chat")
    bob.type("/msg alice psst")
    expect(alice.page).to_have_title("(3, @2) #general · zmq-chat")
    assert alice.notes == [
        {"title": "bob in #general", "body": "alice: are you there?"},
        {"title": "bob (private)", "body": "psst"},
    ]
    alice.page.evaluate("() => { Notification.permission = 'denied'; }")
    bob.type("alice, denied now")
    expect(alice.page).to_have_title("(4, @3) #general · zmq-chat")
    assert len(alice.notes) == 2
    alice.hide(False)
    expect(alice.page).to_have_title("#general · zmq-chat")
    bob.hide()  # a browser without notifications: the title counts all the same, and nothing fails
    alice.type("bob: ping")
    expect(bob.page).to_have_title("(1, @1) #general · zmq-chat")
    bob.hide(False)

    # Tab completes commands, rooms and names; again cycles through the candidates, Shift-Tab goes back.
    assert alice.tab("/jo") == "/join "
    assert alice.tab("/w") == "/who "
    assert alice.tab("/w", 2) == "/window "
    assert alice.tab("/w", 4) == "/who "
    assert alice.tab("/w", 1, shift=True) == "/win "
    assert alice.tab("b") == "bob: "
    assert alice.tab("thanks B") == "thanks bob "
    assert alice.tab("#ge") == "#general "
    assert alice.tab("/leave ge") == "/leave #general "
    assert alice.tab("/msg b") == "/msg bob "
    assert alice.tab("/query b") == "/query bob "
    alice.page.fill("#input", "")

    # /topic: set, shown in the header (and in joined to whoever joins later), asked for, cleared.
    alice.type("/topic Release 2.0 today")
    for page in (alice, bob):
        expect(page.page.locator("#room-topic")).to_have_text("Release 2.0 today")
        expect(page.log()).to_contain_text("[topic] alice set the topic: Release 2.0 today")
    alice.type("/topic")
    expect(alice.log()).to_contain_text("topic of #general: Release 2.0 today")
    bob.type("/join dev")
    expect(bob.page.locator("#room-title")).to_have_text("#dev")  # /topic is the current room's, as a person sees it
    bob.type("/topic only dev things")
    expect(bob.page.locator("#room-topic")).to_have_text("only dev things")
    alice.type("/join dev")
    expect(alice.page.locator("#room-title")).to_have_text("#dev")
    expect(alice.page.locator("#room-topic")).to_have_text("only dev things")
    bob.type("/names")
    expect(bob.log("dev")).to_contain_text("#dev: alice, bob (2)")
    bob.type("/part")
    expect(bob.page.locator("#room-title")).to_have_text("#general")
    alice.type("/join general")
    alice.type("/topic -")
    expect(bob.log()).to_contain_text("[topic] alice cleared the topic")
    for page in (alice, bob):
        expect(page.page.locator("#room-topic")).to_be_hidden()

    # /away and /back: marked in who, and told to whoever sends a private message meanwhile.
    alice.type("/away lunch")
    expect(alice.log()).to_contain_text("you are marked as away: lunch")
    bob.type("/who")
    expect(bob.log()).to_contain_text("#general: alice (away), bob (2)")
    expect(bob.page.locator('#members li[data-user="alice"]')).to_have_class(re.compile(r"\baway\b"))
    bob.type("/msg alice back soon?")
    expect(bob.log()).to_contain_text("alice is away: lunch")
    alice.type("/back")
    expect(alice.log()).to_contain_text("you are back")
    bob.type("/who")  # nobody is told when someone comes back (the page asks who again every minute)
    expect(bob.page.locator('#members li[data-user="alice"]')).not_to_have_class(re.compile(r"\baway\b"))

    # /nick: a taken name is refused; a free one is announced, and lists, views and mentions follow it.
    alice.type("/nick bob")
    expect(alice.log()).to_contain_text("(name_taken)")
    alice.type("/nick alicia")
    expect(alice.page.locator("#status")).to_have_text("Connected as alicia")
    expect(alice.log()).to_contain_text("you are now known as alicia")
    for page in (alice, bob):
        expect(page.log()).to_contain_text("[nick] alice is now known as alicia")
    expect(bob.page.locator("#members li")).to_have_text(["alicia", "bob"])
    expect(bob.query("alicia")).to_contain_text("bob: back soon?")  # the conversation followed the name
    bob.type("alicia: welcome back")
    expect(alice.log().locator("li.mention", has_text="welcome back")).to_have_count(1)

    # /query opens a private conversation; what is typed there goes to that person only; /clear empties it.
    alice.type("/query bob")
    expect(alice.page.locator("#room-title")).to_have_text("@bob")
    alice.type("just between us")
    expect(bob.query("alicia")).to_contain_text("alicia: just between us")
    expect(bob.log()).not_to_contain_text("just between us")
    alice.type("/clear")
    expect(alice.query("bob").locator("li")).to_have_count(0)
    alice.type("/help")
    for usage in ("/quit, /exit", "/msg NAME TEXT", "/topic [TEXT]", "/nick NAME", "/away [REASON]", "/clear"):
        expect(alice.query("bob")).to_contain_text(usage)
    alice.type("/leave")  # in a conversation: closes it
    expect(alice.page.locator("#room-title")).to_have_text("#general")

    # //TEXT says a line that starts with a slash; a line over 4000 characters goes as several messages.
    alice.type("//shrug")
    expect(bob.log()).to_contain_text("alicia: /shrug")
    long = " ".join(f"w{i:05d}" for i in range(1300))  # 9099 characters
    alice.type(long)
    parts = bob.log().locator("li.msg", has_text="alicia: w00000")
    expect(bob.log().locator("li.msg", has_text=re.compile(r"alicia: w\d{5} "))).to_have_count(3)
    lines = bob.log().locator("li.msg", has_text=re.compile(r"alicia: w\d{5} ")).all_inner_texts()
    assert parts.count() == 1
    texts = [line.split("alicia: ", 1)[1] for line in lines]
    assert " ".join(texts) == long and all(len(text) <= 4000 for text in texts)
    expect(alice.log().locator("li.pending, li.failed")).to_have_count(0)

    # The new name is the one this tab signs in with again, and the one a new tab offers.
    alice.page.reload()
    expect(alice.page.locator("#status")).to_have_text("Connected as alicia")
    assert alice.page.evaluate("() => localStorage.getItem('zmq-chat-name')") == "alicia"
    assert alice.errors == [] and bob.errors == []


class _RecordingSub:
    """Stands in for the gateway's shared SUB: records (un)subscriptions."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []

    def setsockopt(self, option: int, value: bytes) -> None:
        self.calls.append((option, value))

    def close(self, linger: int = 0) -> None:
        pass


def test_gateway_keeps_a_renamed_browsers_rooms() -> None:
    """After /nick, a welcome under the new name (a hello again on the same session) is the same session: the
    gateway must not take the browser out of its rooms, which would unsubscribe the shared SUB from rooms only
    it is in and lose their feed until it subscribes again."""
    gateway = web.Gateway("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", None)
    try:
        gateway.sub.close(linger=0)
        sub = gateway.sub = _RecordingSub()  # type: ignore[assignment]
        browser = web.Browser(ws=None, transport=None, address="127.0.0.1", dealer=None)  # type: ignore[arg-type]
        gateway.browsers.add(browser)
        gateway._track(browser, {"type": "welcome", "user": "ann", "rooms": ["general", "solo"], "epoch": "e1"})
        assert browser.rooms == {"general", "solo"} and len(sub.calls) == 2
        gateway._track(browser, {"type": "renamed", "user": "Anna", "was": "ann", "id": "n1"})
        gateway._track(browser, {"type": "welcome", "user": "Anna", "rooms": ["general", "solo"], "epoch": "e1"})
        assert browser.rooms == {"general", "solo"} and len(sub.calls) == 2, sub.calls
        assert gateway.members == {"general": {browser}, "solo": {browser}}
        # Another name on that connection is another session: nothing of the old one carries over.
        gateway._track(browser, {"type": "welcome", "user": "zoe", "rooms": ["general"], "epoch": "e1"})
        assert browser.rooms == {"general"} and "solo" not in gateway.members
    finally:
        gateway.ctx.term()


# --- the page's ports of the Python helpers ----------------------------------------------------------

NAMES = ["alice", "bob", "Bobby", "carol"]
ROOMS = ["general", "dev", "design"]


def _cases(text: str) -> list[str]:
    """Cases written as one string, separated by |: a line each would make a long list of short ones."""
    return text.split("|")


TYPED_CASES: dict[str, list[Any]] = {
    "parse": _cases(
        "hello|//shrug|/msg bob hi there|/msg bob|/MSG Bob  hi |/msg  bob hi|/query bob|/query bob hello you|"
        "/me waves|/me|/join #Dev|/join|/leave|/part dev|/who|/names #x|/rooms|/topic|/topic new topic here|"
        "/topic -|/nick al|/nick|/away|/away lunch break|/back|/window 2|/window x|/win 3|/clear|/help|/quit|"
        "/exit|/frobnicate now|/|   |text\r\n|/join dev extra words"
    ),
    "complete": [
        [before, NAMES, ROOMS, "alice"]
        for before in _cases(
            "/|/j|/w|/LE|b|hi b|#d|#|/join d|/leave |/msg b|/msg bob hi c|x|/query B||hello |/nick b|a"
        )
    ],
    "split": [
        *[["a b c", 3], ["word " * 10, 12], ["x" * 25, 10], ["hello world", 5], ["  lead", 3], ["a  b", 1]],
        *[["😀" * 5 + " x", 3], [" ".join(f"w{i:05d}" for i in range(1300)), 4000], ["short", 4000], ["", 10]],
    ],
    "mentions": [
        *[[text, "alice"] for text in _cases("hi alice|hi Alice!|alicex|alice.b hi|xalice|@alice|alice-2|éalice")],
        *[[text, "alice"] for text in _cases("alice_||ALICE: hi|(alice)|b,alice")],
        *[["al.ice", "al.ice"], ["alXice", "al.ice"], ["alice", ""]],
    ],
}


def _python_answers(cases: dict[str, list[Any]]) -> dict[str, list[Any]]:
    def parsed(line: str) -> Any:
        try:
            command = commands.parse(line)
        except commands.Usage as usage:
            return {"usage": str(usage)}
        return None if command is None else [command.name, command.arg, command.text]

    return {
        "parse": [parsed(line) for line in cases["parse"]],
        "complete": [list(commands.complete(*case)) for case in cases["complete"]],
        "split": [commands.split_text(text, limit) for text, limit in cases["split"]],
        "mentions": [display.mentions(text, me) for text, me in cases["mentions"]],
    }


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_typed_lines_read_as_commands_py_reads_them(tmp_path: Path) -> None:
    """The page's parse, complete, splitText and mentions give the Python ones' answers (tests/js/typed.test.mjs)."""
    node = shutil.which("node")
    assert node is not None
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(TYPED_CASES))
    done = subprocess.run(
        [node, str(ROOT / "tests" / "js" / "typed.test.mjs"), str(cases)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    page, python = json.loads(done.stdout), _python_answers(TYPED_CASES)
    for kind, inputs in TYPED_CASES.items():
        for given, got, expected in zip(inputs, page[kind], python[kind], strict=True):
            assert got == expected, f"{kind} {str(given)[:80]!r}: the page says {got!r}, Python {expected!r}"
