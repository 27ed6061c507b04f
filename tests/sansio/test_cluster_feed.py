"""A front door's feed from the log (``cluster_feed.py``): each room in order, once, holes filled by walking
the room's subject in the stream, with a stream simulated here (the real one: ``test_cluster_feed_nats.py``)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster_feed import FEED_PREFIX, ClusterFeed, Fetch, LogEvent


def republished(room: str, seq: int, prev: int, data: bytes = b"x") -> tuple[str, dict[str, str], bytes]:
    return f"feed.room.{room}", {"Nats-Sequence": str(seq), "Nats-Last-Sequence": str(prev)}, data


class Stream:
    """The log: (room, seq, data) in position order, and what ``next`` answers."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, bytes]] = []

    def add(self, room: str, data: bytes = b"x") -> tuple[str, int, int, bytes]:
        seq = len(self.events) + 1
        prev = max((s for r, s, _ in self.events if r == room), default=0)
        self.events.append((room, seq, data))
        return room, seq, prev, data

    def answer(self, feed: ClusterFeed, fetch: Fetch) -> tuple[list[LogEvent], list[Fetch]]:
        found = [(s, d) for r, s, d in self.events if r == fetch.room and s > fetch.after]
        return feed.stored(fetch, *found[0]) if found else feed.missing(fetch)


def test_in_order_events_pass_at_once_and_a_room_starts_at_its_first_events_prev() -> None:
    feed = ClusterFeed()
    ready, fetches = feed.message(*republished("a", 7, 3))  # a front door that started late: 3 is history
    assert ready == [LogEvent("a", 7, 3, b"x")] and fetches == []
    assert feed.message(*republished("a", 9, 7)) == ([LogEvent("a", 9, 7, b"x")], [])
    assert feed.message(*republished("a", 9, 7)) == ([], [])  # a copy: once
    assert feed.message("feed.room.a", {}, b"junk") == ([], [])  # no positions: not a stored event


def test_a_hole_is_filled_by_walking_the_rooms_subject_until_the_chain_closes() -> None:
    stream, feed = Stream(), ClusterFeed()
    a1, _b2, a3, a4, a5 = (stream.add(room) for room in "abaaa")  # b2: another room between
    assert feed.message(*republished(*a1[:3]))[0] == [LogEvent(*a1)]
    ready, fetches = feed.message(*republished(*a5[:3]))  # a3 and a4 were dropped
    assert ready == [] and fetches == [Fetch("a", a1[1])]
    assert feed.message(*republished(*a5[:3])) == ([], [])  # one fetch per room at a time
    ready, fetches = stream.answer(feed, fetches[0])
    assert ready == [LogEvent(*a3)] and fetches == [Fetch("a", a3[1])]
    ready, fetches = stream.answer(feed, fetches[0])
    assert ready == [LogEvent(*a4), LogEvent(*a5)] and fetches == []
    assert feed.message(*republished(*a4[:3])) == ([], [])  # the late copy of what was fetched: once


def test_after_a_drop_every_room_is_checked_once_and_a_gone_hole_is_skipped() -> None:
    stream, feed = Stream(), ClusterFeed()
    a1, b2, a3 = stream.add("a"), stream.add("b"), stream.add("a")
    feed.message(*republished(*a1[:3]))
    feed.message(*republished(*b2[:3]))
    fetches = feed.dropped()  # a3 was dropped, and nothing later of room a will show the hole
    assert sorted(fetches, key=lambda f: f.room) == [Fetch("a", a1[1]), Fetch("b", b2[1])]
    # A checked room's walk goes on to the stream's end, where the stream has nothing more.
    assert stream.answer(feed, Fetch("a", a1[1])) == ([LogEvent(*a3)], [Fetch("a", a3[1])])
    assert stream.answer(feed, Fetch("a", a3[1])) == ([], [])
    assert stream.answer(feed, Fetch("b", b2[1])) == ([], [])
    # A message on the feed whose chain the stream does not have (forged by a stray publisher, or deleted
    # since): walking the stream finds nothing after the room's last event, so it goes, unpublished, and the
    # room's chain goes on from what the stream has.
    ready, fetches = feed.message(*republished("a", 1_000_000, 10))
    assert ready == [] and fetches == [Fetch("a", a3[1])]
    assert feed.missing(fetches[0]) == ([], [])
    a4 = stream.add("a")
    assert feed.message(*republished(*a4[:3])) == ([LogEvent(*a4)], [])
    assert feed.message(*republished("a", 2**64, 2**64 - 1)) == ([], [])  # not a stream position at all


@settings(max_examples=200, deadline=None)
@given(
    rooms=st.lists(st.sampled_from("abc"), min_size=1, max_size=40),
    kept=st.lists(st.booleans(), min_size=40, max_size=40),
    order=st.randoms(use_true_random=False),
    answer_late=st.booleans(),
)
def test_whatever_the_feed_drops_each_room_comes_out_in_order_once(rooms, kept, order, answer_late):
    """The bridge drops any feed messages (and says so) and delivers the rest (in order: one subscription),
    fetches are answered at any time and in any order: each room's events from the first one seen come out
    once, in the stream's order."""
    stream, feed = Stream(), ClusterFeed()
    log = [stream.add(room, f"{i}".encode()) for i, room in enumerate(rooms)]
    arriving = [event for event, keep in zip(log, kept, strict=False) if keep]  # in the stream's order, as NATS
    out: list[LogEvent] = []
    pending: list[Fetch] = []

    def answer_one() -> None:
        ready, more = stream.answer(feed, pending.pop(order.randrange(len(pending))))
        out.extend(ready)
        pending.extend(more)

    for event in arriving:
        ready, fetches = feed.message(*republished(*event))
        out.extend(ready)
        pending.extend(fetches)
        if pending and not answer_late:
            answer_one()
    if len(arriving) < len(log):
        pending += feed.dropped()
    while pending:
        answer_one()
    first_seen: dict[str, int] = {}
    for room, seq, _, _ in arriving:
        first_seen[room] = min(seq, first_seen.get(room, seq))
    for room in set(rooms):
        got = [(e.seq, e.prev, e.data) for e in out if e.room == room]
        start = first_seen.get(room)
        want = [] if start is None else [(s, p, d) for r, s, p, d in log if r == room]
        # What came before the first event seen is history a front door reads on demand, not feed; a room
        # whose first seen event was not its first may still get the earlier ones if a fetch found them.
        assert got == [w for w in want if w[0] >= (got[0][0] if got else 0)]
        if start is not None:  # seen: everything from (at latest) the first event seen, to the room's last
            assert got[0][0] <= start and got[-1] == want[-1]


def msg(user: str, msg_id: str) -> bytes:
    return b'{"type":"msg","room":"r","user":"%s","text":"t","id":"%s","seq":0,"prev":0}' % (
        user.encode(),
        msg_id.encode(),
    )


def test_a_message_the_stream_republished_again_elsewhere_is_handed_on_once() -> None:
    """What a 5-minute cluster soak saw on nats-server 2.9.10 with a stream leader killed mid-write: a message
    stored at 51 came again at 52 (prev 51, a position the stream did not keep), and the room's next event
    at 55 named 51 as its prev.  Loggers logged the message twice; now the copy is not handed on, and 55
    follows 51 for everyone."""
    stream, feed = Stream(), ClusterFeed()
    assert feed.message(*republished("r", 51, 50, msg("Bob", "a")))[0] == [LogEvent("r", 51, 50, msg("Bob", "a"))]
    assert feed.message(*republished("r", 52, 51, msg("bob", "a"))) == ([], [])  # the copy (names fold)
    stream.events = [("r", 51, msg("Bob", "a")), ("r", 55, msg("carol", "b"))]
    ready, fetches = feed.message(*republished("r", 55, 51, msg("carol", "b")))
    assert ready == [] and fetches == [Fetch("r", 52)]  # 55 does not follow 52 as far as the feed knows
    ready, fetches = stream.answer(feed, fetches[0])  # the stream: after 52 comes 55
    assert ready == [LogEvent("r", 55, 51, msg("carol", "b"))] and fetches == []
    assert feed.message(*republished("r", 56, 55, msg("carol", "c")))[0] == [LogEvent("r", 56, 55, msg("carol", "c"))]
    assert feed.repeated == 1


def test_the_rooms_followed_are_bounded_the_quietest_forgotten_first_unless_someone_is_here() -> None:
    feed = ClusterFeed()
    for seq, room, prev in [(1, "a", 0), (2, "b", 0), (3, "c", 0), (4, "d", 0), (5, "a", 1)]:
        feed.message(FEED_PREFIX + room, {"Nats-Sequence": str(seq), "Nats-Last-Sequence": str(prev)}, b"{}")
    feed.trim(2, keep={"b"})  # b has a member here; a spoke last; c and d were quiet longest
    assert list(feed.handed) == ["b", "a"] and set(feed.sequencer.last) == {"a", "b"}
    # A forgotten room is followed again from its next event.
    ready, fetches = feed.message(FEED_PREFIX + "c", {"Nats-Sequence": "9", "Nats-Last-Sequence": "3"}, b"{}")
    assert [e.seq for e in ready] == [9] and not fetches
