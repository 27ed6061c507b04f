"""The views a client shows: one per room and one per private conversation, each with its lines, unread
count, mentions, topic and members, and which one is current.

Sans-I/O and shared: the full-screen client and the window show one view at a time; the line console
shows every line as it comes and uses the counts for its status line.  Fed the same events as
``display.line_of`` (``on_event``) and the lines made of them (``add``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import messages as m
from display import SPOKEN, Line
from session import Event, Rejoined

#: Lines a view keeps; older ones scroll away for good.
MAX_LINES = 2000
#: A private conversation's view is named ``@`` and the other party's name.
QUERY_PREFIX = "@"


class Activity:
    """How much happened in a view since it was last current (its marker in a room list)."""

    NONE, EVENTS, MESSAGES, MENTION = 0, 1, 2, 3


@dataclass(eq=False)
class View:
    name: str  # a room, or "@NAME" for a private conversation
    lines: deque[Line] = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    unread: int = 0  # messages since it was last current
    mentions: int = 0  # of those, the ones that said my name (and private messages)
    activity: int = Activity.NONE
    topic: str = ""
    members: dict[str, str] = field(default_factory=dict)  # casefolded name -> name, sorted on read
    away: dict[str, str] = field(default_factory=dict)  # name -> why
    history_end: int = 0  # lines[:history_end] came from history on joining (set apart from live ones)

    @property
    def room(self) -> str | None:
        return None if self.name.startswith(QUERY_PREFIX) else self.name

    def sorted_members(self) -> list[str]:
        """Members as the broker sorts them (case-insensitively)."""
        return [self.members[key] for key in sorted(self.members)]


class Views:
    """Every view, in the order they were opened (``/window N`` counts from 1), and the current one."""

    def __init__(self, rooms: list[str] | None = None) -> None:
        self.views: dict[str, View] = {}
        self.current: str | None = None
        for room in rooms or []:
            self.open(room)

    def open(self, name: str, switch: bool = False) -> View:
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = View(name)
        if switch or self.current is None:
            self.switch(name)
        return view

    def close(self, name: str) -> None:
        """Forget a view (a room left, a conversation closed); the current one becomes a neighbour."""
        names = list(self.views)
        if name not in self.views:
            return
        del self.views[name]
        if self.current == name:
            at = names.index(name)
            rest = [n for n in names if n != name]
            self.current = rest[min(at, len(rest) - 1)] if rest else None

    def switch(self, name: str) -> bool:
        view = self.views.get(name)
        if view is None:
            return False
        self.current = name
        view.unread = view.mentions = 0
        view.activity = Activity.NONE
        return True

    def number(self, n: int) -> str | None:
        """The name of view ``n`` (1-based), if there is one."""
        names = list(self.views)
        return names[n - 1] if 1 <= n <= len(names) else None

    def clear(self, name: str | None = None) -> None:
        view = self.views.get(name or self.current or "")
        if view is not None:
            view.lines.clear()
            view.history_end = 0

    @property
    def view(self) -> View | None:
        return self.views.get(self.current or "")

    def where(self, line: Line) -> str | None:
        """The view a line belongs in: its room's, its conversation's, else the current one."""
        if line.peer is not None:
            return QUERY_PREFIX + line.peer
        if line.room is not None and line.room in self.views:
            return line.room
        return self.current

    def add(self, line: Line, past: bool = False) -> View | None:
        """Put ``line`` in its view (opening a conversation's view for a private message); count it as unread
        there unless that view is current.  ``past``: a line from history, shown on joining."""
        name = self.where(line)
        if name is None:
            return None
        view = self.open(name)
        if len(view.lines) == view.lines.maxlen and view.history_end:
            view.history_end -= 1  # the oldest line scrolls away: the history's end moves up with it
        view.lines.append(line)
        if past:
            view.history_end = len(view.lines)
        elif name != self.current:
            spoken = line.kind in SPOKEN and not line.mine
            view.unread += spoken
            view.mentions += line.mention
            level = Activity.MENTION if line.mention else Activity.MESSAGES if spoken else Activity.EVENTS
            view.activity = max(view.activity, level)
        return view

    def on_event(self, event: Event) -> None:
        """Keep topics, members and away reasons up to date from the events a client gets anyway."""
        match event:
            case m.Joined() | Rejoined():
                joined = event if isinstance(event, m.Joined) else event.joined
                view = self.open(joined.room)
                view.members = {u.casefold(): u for u in joined.users}
                view.topic, view.away = joined.topic, dict(joined.away)
            case m.Left():
                self.close(event.room)
            case m.Who() if event.room in self.views:
                view = self.views[event.room]
                view.members = {u.casefold(): u for u in event.users}
                view.away = dict(event.away)
            case m.JoinEvent() if event.room in self.views:
                self.views[event.room].members[event.user.casefold()] = event.user
            case m.LeaveEvent() if event.room in self.views:
                self.views[event.room].members.pop(event.user.casefold(), None)
            case m.TopicEvent() if event.room in self.views:
                self.views[event.room].topic = event.topic
            case m.NickEvent() if event.room in self.views:
                view = self.views[event.room]
                view.members.pop(event.user.casefold(), None)
                view.members[event.name.casefold()] = event.name
                if event.user in view.away:
                    view.away[event.name] = view.away.pop(event.user)
                self._rename_query(event.user, event.name)

    def _rename_query(self, old: str, new: str) -> None:
        """A conversation follows its other party's new name."""
        view = self.views.get(QUERY_PREFIX + old)
        if view is None or QUERY_PREFIX + new in self.views:
            return
        self.views = {(QUERY_PREFIX + new if n == view.name else n): v for n, v in self.views.items()}
        if self.current == view.name:
            self.current = QUERY_PREFIX + new
        view.name = QUERY_PREFIX + new

    def summary(self) -> list[tuple[int, View]]:
        """Views with news, numbered as ``/window`` counts: what a status line lists."""
        return [(n, v) for n, v in enumerate(self.views.values(), 1) if v.unread or v.mentions]
