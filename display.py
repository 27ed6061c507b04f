"""What the console prints: one line per event, in the words of the original TCP chat.

Shared by the console and the window (which shows the same lines).  Everything
that came from another user goes through ``safe_text``; names and rooms are
already restricted to safe characters by the broker.
"""

from __future__ import annotations

import messages as m
from safe_text import safe_text
from session import Acked, Change, Event, Failed, Status

QUIT_COMMANDS = ("/quit", "/exit")
#: Past messages shown when joining a room (the broker sends up to its --history events).
HISTORY_SHOWN = 20

HELP = """\
Commands:
  TEXT               say TEXT in the current room
  /msg NAME TEXT     private message to NAME (nobody else sees it, not even loggers)
  /me ACTION         say an action: * alice waves
  /join ROOM         join ROOM and make it current (or switch to it if you are in it)
  /leave [ROOM]      leave ROOM (default: the current room)
  /who [ROOM]        who is in ROOM (default: the current room)
  /rooms             the rooms you are in
  /help              this help
  /quit, /exit       leave the chat (Ctrl-D and Ctrl-C too)
  //TEXT             say TEXT starting with a slash"""

STATUS_LINES = {
    Change.LOST: "[system] connection lost, reconnecting…",
    Change.RESTORED: "[system] connection restored",
    Change.FEED_LOST: "[system] no news from the feed (a relay down?); what is said meanwhile comes when it is back",
    Change.FEED_RESTORED: "[system] the feed is back; fetching what was missed",
    Change.RECONNECTED: "[system] reconnected",
    Change.SHUTDOWN: "[system] the broker is shutting down; waiting for it to come back…",
}


def _where(room: str) -> str:
    """The default room reads exactly like the original chat; other rooms carry their name."""
    return "" if room == m.DEFAULT_ROOM else f"#{room} "


def _place(room: str) -> str:
    return "chat" if room == m.DEFAULT_ROOM else "room"


def render(event: Event, me: str | None = None) -> str | None:
    """The console line for an event, or None for events the console does not show."""
    match event:
        case m.MsgEvent(me=True):
            return f"{_where(event.room)}* {event.user} {safe_text(event.text)}"
        case m.MsgEvent():
            return f"{_where(event.room)}{event.user}: {safe_text(event.text)}"
        case m.JoinEvent():
            return f"{_where(event.room)}[join] {event.user} joined the {_place(event.room)}"
        case m.LeaveEvent(reason="left") if event.room == m.DEFAULT_ROOM:
            return f"[leave] {event.user} left #{event.room}"  # left this room only, maybe not the chat
        case m.LeaveEvent():
            why = " (timed out)" if event.reason == "timeout" else ""
            return f"{_where(event.room)}[leave] {event.user} left the {_place(event.room)}{why}"
        case m.Dm(me=True):
            return f"[dm] * {event.user} {safe_text(event.text)}"
        case m.Dm():
            return f"[dm] {event.user}: {safe_text(event.text)}"
        case Acked(request=request) if request.to is not None:
            to = event.ack.to if isinstance(event.ack.to, str) else request.to
            return f"[dm -> {to}] {safe_text(request.text)}"
        case Failed(retrying=True, error=error) if error.code == m.ErrorCode.UNAVAILABLE.value:
            return "[system] the broker cannot store messages just now; yours will be sent when it can"
        case Failed(retrying=True):
            return "[system] sending too fast; your message will be sent in a moment"
        case Failed(error=error):
            return f"[error] {safe_text(error.detail)} ({safe_text(error.code)})"
        case m.Who():
            users = event.users
            return f"[who] #{event.room}: {', '.join(users) if users else 'nobody'} ({len(users)})"
        case m.Joined():
            return f"[system] you are in #{event.room} ({len(event.users)} here: {', '.join(event.users)})"
        case m.Left():
            return f"[system] you left #{event.room}"
        case Status():
            return STATUS_LINES.get(event.state)
    return None


def undelivered_line(count: int) -> str:
    """Said when the console ends with messages the broker never acknowledged."""
    lines = "line was" if count == 1 else "lines were"
    return f"[error] {count} {lines} not delivered: the broker did not acknowledge them"
