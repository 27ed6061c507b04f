"""What a typed line asks for: the chat commands every Python client shares (the console, the full-screen
client and the window; the page has the same ones in ``static/chat.js``).

``parse`` turns one typed line into a ``Command`` or raises ``Usage``; ``complete`` offers what Tab may
put in place of the word being typed; ``split_text`` cuts a line longer than one message at word
boundaries.  No sockets, no state: each client decides what a command does to its own views.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import messages as m


class Spec(NamedTuple):
    """One command: its words (the first is its name), what it takes, and its line in /help."""

    words: tuple[str, ...]
    takes: str  # "", "room?", "room", "name", "name text", "name text?", "text", "text?", "number"
    usage: str
    help: str


#: Every command, in the order /help lists them.
COMMANDS: tuple[Spec, ...] = (
    Spec(("msg",), "name text", "/msg NAME TEXT", "private message to NAME (nobody else sees it, not even loggers)"),
    Spec(("query",), "name text?", "/query NAME [TEXT]", "open a private conversation with NAME"),
    Spec(("me",), "text", "/me ACTION", "say an action: * alice waves"),
    Spec(("join",), "room", "/join ROOM", "join ROOM and make it current (or switch to it if you are in it)"),
    Spec(("leave", "part"), "room?", "/leave [ROOM], /part", "leave ROOM (default: the current room)"),
    Spec(("who", "names"), "room?", "/who [ROOM], /names", "who is in ROOM (default: the current room)"),
    Spec(("rooms",), "", "/rooms", "the rooms you are in"),
    Spec(("topic",), "text?", "/topic [TEXT]", "show the current room's topic, or set it (/topic - clears it)"),
    Spec(("nick",), "name", "/nick NAME", "change your name"),
    Spec(("away",), "text?", "/away [REASON]", "mark yourself away (without a reason: back)"),
    Spec(("back",), "", "/back", "you are back"),
    Spec(("window", "win"), "number", "/window N", "switch to view N (Alt-N too)"),
    Spec(("clear",), "", "/clear", "clear the current view"),
    Spec(("help",), "", "/help", "this help"),
    Spec(("quit", "exit"), "", "/quit, /exit", "leave the chat (Ctrl-D, and Ctrl-C on an empty line, too)"),
)

_BY_WORD = {word: spec for spec in COMMANDS for word in spec.words}
#: Every command word with its slash, for completion.
COMMAND_WORDS = tuple(f"/{word}" for spec in COMMANDS for word in spec.words)
QUIT_COMMANDS = ("/quit", "/exit")
#: The argument of these commands is a room; of these, a user name.
ROOM_ARGUMENT = frozenset({"/join", "/leave", "/part", "/who", "/names"})
NAME_ARGUMENT = frozenset({"/msg", "/query", "/nick"})

HELP = "\n".join(
    [
        "Commands:",
        f"  {'TEXT':<22} say TEXT in the current room",
        *(f"  {spec.usage:<22} {spec.help}" for spec in COMMANDS),
        f"  {'//TEXT':<22} say TEXT starting with a slash",
    ]
)


@dataclass(frozen=True, slots=True)
class Command:
    """A typed line, understood.  ``name`` is the command's first word (``say`` for plain text); ``arg`` its
    room, user name or number ("" if not given); ``text`` the rest."""

    name: str
    arg: str = ""
    text: str = ""


class Usage(ValueError):
    """A command typed wrong: the message says how it is typed."""


def parse(line: str) -> Command | None:
    """One typed line -> its ``Command``; None for a blank line.  Raises ``Usage``."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        return Command("say", text=line[1:] if line.startswith("//") else line)
    word, _, rest = line[1:].partition(" ")
    spec = _BY_WORD.get(word.lower())
    if spec is None:
        raise Usage(f"unknown command /{word[:40]}; /help lists the commands")
    rest = rest.strip()
    name = spec.words[0]
    if spec.takes in ("", "text?"):
        return Command(name, text=rest)
    if spec.takes == "text":
        if not rest:
            raise Usage(f"usage: {spec.usage}")
        return Command(name, text=rest)
    first, _, text = rest.partition(" ")
    if spec.takes.startswith("room"):
        room = first.lstrip("#").lower()
        if not room and spec.takes == "room":
            raise Usage(f"usage: {spec.usage}")
        return Command(name, arg=room)
    if spec.takes == "number":
        if not first.isdigit():
            raise Usage(f"usage: {spec.usage}")
        return Command(name, arg=first)
    if not first or (spec.takes == "name text" and not text.strip()):
        raise Usage(f"usage: {spec.usage}")
    return Command(name, arg=first, text=text.strip())


class Completion(NamedTuple):
    """What Tab may put in place of the word being typed: ``start`` is where that word begins in the line."""

    start: int
    candidates: list[str]


_WORD_START = re.compile(r"\S*$")


def complete(before_cursor: str, names: list[str], rooms: list[str], me: str | None = None) -> Completion:
    """Completions of the word ending at the cursor: a command after ``/`` at the start, a room after ``#`` or
    as the argument of a room command, else a name (of the current room's members; ``NAME: `` at the start
    of a line, as chat clients address someone)."""
    word = _WORD_START.search(before_cursor)
    start = word.start() if word else len(before_cursor)
    typed = before_cursor[start:]
    folded = typed.casefold()
    head = before_cursor[:start]
    first = head.split(" ", 1)[0].lower() if head.strip() else ""
    if not head.strip() and typed.startswith("/"):
        return Completion(start, [w for w in COMMAND_WORDS if w.startswith(folded)])
    if typed.startswith("#") or first in ROOM_ARGUMENT:
        bare = folded.lstrip("#")
        return Completion(start, [f"#{r}" for r in rooms if r.startswith(bare)])
    others = [n for n in names if n.casefold().startswith(folded) and n != me]
    if not head.strip():
        return Completion(start, [f"{n}: " for n in others] if not first else others)
    return Completion(start, others)


def split_text(text: str, limit: int = m.MAX_TEXT_CHARS) -> list[str]:
    """``text`` as messages of at most ``limit`` characters each, cut at the last space before the limit (or
    hard, in a word longer than that).  A line of any length goes out whole, in order, as several messages."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        parts.append(text[:cut])
        text = text[cut:].lstrip(" ")
    if text or not parts:
        parts.append(text)
    return parts
