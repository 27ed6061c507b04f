"""What the clients show: one line per event, in the words of the original TCP chat.

Shared by the console, the full-screen client and the window.  ``line_of`` makes a ``Line`` (its words,
and what a front end needs to place and colour it); ``render`` is the console's text of it.  Everything
that came from another user goes through ``safe_text``; names and rooms are already restricted to safe
characters by the broker.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass

import messages as m
from commands import HELP, QUIT_COMMANDS
from safe_text import safe_text
from session import Acked, Change, Event, Failed, Status

__all__ = ["HELP", "QUIT_COMMANDS", "Line", "line_of", "render"]

#: Past messages shown when joining a room (the broker sends up to its --history events).
HISTORY_SHOWN = 20
#: Colours a name may get (``colour_of``): every front end has a palette of this many.
PALETTE_SIZE = 12

STATUS_LINES = {
    Change.LOST: "[system] connection lost, reconnecting…",
    Change.RESTORED: "[system] connection restored",
    Change.FEED_LOST: "[system] no news from the feed (a relay down?); what is said meanwhile comes when it is back",
    Change.FEED_RESTORED: "[system] the feed is back; fetching what was missed",
    Change.RECONNECTED: "[system] reconnected",
    Change.MOVED: "[system] no answer from this broker; trying the next one…",
    Change.SHUTDOWN: "[system] the broker is shutting down; waiting for it to come back…",
}


def _place(room: str) -> str:
    return "chat" if room == m.DEFAULT_ROOM else "room"


#: Kinds of line that are conversation (counted as unread); the others are notices.
SPOKEN = frozenset({"msg", "action", "dm"})


@dataclass(frozen=True, slots=True)
class Line:
    """One line a client shows: ``prefix`` (who: ``bob: ``, ``* bob ``, ``[dm] bob: ``; "" for a notice)
    then ``body``.  ``room``: the room it happened in (a front end labels it where another room is current);
    ``peer``: the other party of a private message; ``nick``: whose line, for its colour."""

    kind: str  # msg, action, dm, join, leave, topic, nick, system, error, who
    body: str
    prefix: str = ""
    room: str | None = None
    peer: str | None = None
    nick: str | None = None
    ts: float = 0.0  # wall clock, seconds
    mention: bool = False  # someone else said my name
    mine: bool = False

    @property
    def text(self) -> str:
        return self.prefix + self.body


def mentions(text: str, me: str | None) -> bool:
    """Does ``text`` name ``me`` as a word (any case)?  Names hold ``. -``, so those do not end a word."""
    if not me:
        return False
    return re.search(rf"(?<![\w.\-]){re.escape(me)}(?![\w\-])", text, re.IGNORECASE) is not None


def colour_of(name: str, size: int = PALETTE_SIZE) -> int:
    """A name's colour, the same in every client and every run: an index into a palette of ``size``."""
    return zlib.crc32(name.casefold().encode()) % size


def clock(ts: float) -> str:
    """``HH:MM`` of a wall-clock time, in local time (now, for 0)."""
    return time.strftime("%H:%M", time.localtime(ts or None))


def line_of(event: Event, me: str | None = None) -> Line | None:
    """The line for an event, or None for events the clients do not show."""
    mine = me is not None and getattr(event, "user", "").casefold() == me.casefold()
    match event:
        case m.MsgEvent(me=True) | m.MsgEvent():
            text = safe_text(event.text)
            prefix = f"* {event.user} " if event.me else f"{event.user}: "
            said = mentions(text, me) and not mine
            kind = "action" if event.me else "msg"
            return Line(kind, text, prefix, event.room, None, event.user, event.ts, said, mine)
        case m.JoinEvent():
            return _notice("join", f"[join] {event.user} joined the {_place(event.room)}", event)
        case m.LeaveEvent(reason="left") if event.room == m.DEFAULT_ROOM:
            return _notice("leave", f"[leave] {event.user} left #{event.room}", event)  # maybe not the chat
        case m.LeaveEvent():
            why = " (timed out)" if event.reason == "timeout" else ""
            return _notice("leave", f"[leave] {event.user} left the {_place(event.room)}{why}", event)
        case m.TopicEvent(topic=""):
            return _notice("topic", f"[topic] {event.user} cleared the topic", event)
        case m.TopicEvent():
            return _notice("topic", f"[topic] {event.user} set the topic: {safe_text(event.topic)}", event)
        case m.NickEvent():
            return _notice("nick", f"[nick] {event.user} is now known as {event.name}", event)
        case m.Dm():
            text = safe_text(event.text)
            prefix = f"[dm] * {event.user} " if event.me else f"[dm] {event.user}: "
            return Line("dm", text, prefix, None, event.user, event.user, event.ts, mentions(text, me) or not mine)
        case Acked(request=request) if request.to is not None:
            to = event.ack.to if isinstance(event.ack.to, str) else request.to
            away = f" ({to} is away: {safe_text(event.ack.away)})" if isinstance(event.ack.away, str) else ""
            return Line("dm", safe_text(request.text) + away, f"[dm -> {to}] ", None, to, me, time.time(), mine=True)
        case Failed(retrying=True, error=error) if error.code == m.ErrorCode.UNAVAILABLE.value:
            return _system("[system] the broker cannot store messages just now; yours will be sent when it can")
        case Failed(retrying=True):
            return _system("[system] sending too fast; your message will be sent in a moment")
        case Failed(error=error):
            return Line("error", error_text(error.code, error.detail), ts=time.time())
        case m.Who():
            users = [f"{u} (away)" if u in event.away else u for u in event.users]
            return Line("who", f"[who] #{event.room}: {', '.join(users) if users else 'nobody'} ({len(users)})")
        case m.Joined():
            here = f"({len(event.users)} here: {', '.join(event.users)})"
            topic = f"; topic: {safe_text(event.topic)}" if event.topic else ""
            return _system(f"[system] you are in #{event.room} {here}{topic}", event.room)
        case m.Left():
            return _system(f"[system] you left #{event.room}")
        case m.Renamed():
            return _system(f"[system] you are now known as {event.user}")
        case m.Away(reason=""):
            return _system("[system] you are back")
        case m.Away():
            return _system(f"[system] you are marked as away: {safe_text(event.reason)}")
        case Status():
            text = STATUS_LINES.get(event.state)
            return None if text is None else _system(text)
    return None


def _notice(kind: str, body: str, event: m.RoomEvent) -> Line:
    return Line(kind, body, "", event.room, None, event.user, event.ts)


def _system(body: str, room: str | None = None) -> Line:
    return Line("system", body, room=room, ts=time.time())


def render(event: Event, me: str | None = None, current: str | None = m.DEFAULT_ROOM) -> str | None:
    """The console's line for an event (None: not shown): labelled ``#room`` unless it is ``current``'s."""
    line = line_of(event, me)
    return None if line is None else label(line, current) + line.text


def label(line: Line, current: str | None) -> str:
    """``#room `` before a room's line when another room is current (a ``[system]`` line names its room)."""
    return f"#{line.room} " if line.room is not None and line.room != current and line.kind != "system" else ""


#: How the broker's details name the request field they are about: ``'user': a name is ...``, ``'text' must ...``,
#: ``'topic' is 301 characters``; but ``'bob' is taken`` is about a name, and keeps it.
_FIELD_NAMES = "|".join(sorted({field for fields in m.REQUESTS.values() for field in fields}))
_FIELD = re.compile(rf"^'({_FIELD_NAMES})'(?:(:) |(?= (?:must|has|is \d)))")


def readable(detail: str) -> str:
    """An error's detail as people read it: without the protocol's field names (``'user': a name is ...`` is
    ``a name is ...``; ``'text' must not be empty`` is ``the text must not be empty``)."""
    match = _FIELD.match(detail)
    if match is None:
        return detail
    rest = detail[match.end() :].lstrip()
    return rest if match.group(2) else f"the {match.group(1).replace('_', ' ')} {rest}"


def error_text(code: str, detail: str) -> str:
    """``[error] DETAIL (CODE)``: a refusal as every client shows it, safe and without field names."""
    return f"[error] {safe_text(readable(detail))} ({safe_text(code)})"


def undelivered_line(count: int) -> str:
    """Said when the console ends with messages the broker never acknowledged."""
    lines = "line was" if count == 1 else "lines were"
    return f"[error] {count} {lines} not delivered: the broker did not acknowledge them"
