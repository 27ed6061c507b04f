"""FeedSequencer: each room's feed events in seq order, exactly once, with gap fetches."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages as m
import sequencer
from sequencer import FeedSequencer, Sequenced


def ev(seq: int, room: str = "general") -> m.MsgEvent:
    return m.MsgEvent(room=room, user="u", text=f"m{seq}", id="i", seq=seq)


def seqs(events: Sequence[Sequenced]) -> list[int]:
    return [e.seq for e in events]


def started(last: int = 0, room: str = "general") -> FeedSequencer:
    """A client-style sequencer whose ``joined`` said ``last``."""
    seq = FeedSequencer()
    assert seq.expect(room, last) == ([], None)
    return seq


# --- in order and duplicates ----------------------------------------------------------------


def test_in_order_events_are_delivered_at_once() -> None:
    s = started(0)
    for n in range(1, 6):
        assert s.push(ev(n)) == ([ev(n)], None)
    assert s.last["general"] == 5


def test_delivery_starts_after_the_expected_seq() -> None:
    s = started(41)
    assert s.push(ev(42)) == ([ev(42)], None)


def test_duplicate_of_a_delivered_event_is_dropped() -> None:
    s = started(0)
    s.push(ev(1))
    s.push(ev(2))
    assert s.push(ev(1)) == ([], None)
    assert s.push(ev(2)) == ([], None)


def test_events_at_or_before_the_baseline_are_dropped() -> None:
    s = started(10)
    assert s.push(ev(10)) == ([], None)
    assert s.push(ev(3)) == ([], None)


def test_rooms_are_independent() -> None:
    s = started(0, "a")
    s.expect("b", 5)
    s.push(ev(3, "a"))  # a gap in a
    assert s.push(ev(6, "b")) == ([ev(6, "b")], None)


# --- gaps ---------------------------------------------------------------------------------


def test_gap_holds_later_events_and_asks_to_fetch_after_the_last_seq() -> None:
    s = started(0)
    s.push(ev(1))
    assert s.push(ev(3)) == ([], 1)
    assert s.push(ev(4)) == ([], 1)


def test_late_event_closes_the_gap_and_releases_the_held_ones_in_order() -> None:
    s = started(0)
    s.push(ev(1))
    s.push(ev(4))
    s.push(ev(3))
    assert s.push(ev(2)) == ([ev(2), ev(3), ev(4)], None)
    assert s.held == {}


def test_duplicate_of_a_held_event_is_delivered_once() -> None:
    s = started(0)
    s.push(ev(2))
    s.push(ev(2))
    ready, fetch = s.push(ev(1))
    assert seqs(ready) == [1, 2]
    assert fetch is None


def test_fill_delivers_in_order() -> None:
    s = started(0)
    s.push(ev(1))
    s.push(ev(5))
    s.push(ev(6))
    # The reply brings 2..6, the head: 5 and 6 were held already.
    assert s.fill("general", [ev(n) for n in range(2, 7)], 6) == ([ev(n) for n in range(2, 7)], None)
    assert s.last["general"] == 6
    assert s.lost == 0


def test_fill_ignores_events_already_delivered() -> None:
    s = started(0)
    s.push(ev(1))
    s.push(ev(2))
    s.push(ev(4))
    ready, fetch = s.fill("general", [ev(1), ev(2), ev(3), ev(4)], 4)
    assert seqs(ready) == [3, 4]
    assert fetch is None


def test_fill_in_any_order() -> None:
    s = started(0)
    s.push(ev(5))
    ready, _ = s.fill("general", [ev(3), ev(1), ev(4), ev(2)], 5, more=True)
    assert seqs(ready) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("more", [True, False], ids=["cut-by-size", "cut-by-limit"])
def test_incomplete_fill_that_leaves_a_hole_asks_again(more: bool) -> None:
    s = started(0)
    s.push(ev(10))
    ready, fetch = s.fill("general", [ev(1), ev(2)], 10, more)  # short of the head (10) whatever more says
    assert seqs(ready) == [1, 2]
    assert fetch == 2
    assert s.lost == 0


def test_complete_fill_that_cannot_close_the_hole_skips_it_and_counts_lost() -> None:
    s = started(0)
    s.push(ev(1))
    s.push(ev(5))
    s.push(ev(6))
    ready, fetch = s.fill("general", [], 6)
    assert seqs(ready) == [5, 6]
    assert fetch is None
    assert s.lost == 3  # 2, 3 and 4


def test_complete_fill_delivers_what_it_has_then_skips_the_rest_of_the_hole() -> None:
    s = started(0)
    s.push(ev(10))
    ready, fetch = s.fill("general", [ev(1), ev(2), ev(3), ev(10)], 10)  # 4..9 are gone
    assert seqs(ready) == [1, 2, 3, 10]
    assert fetch is None
    assert s.lost == 6


def test_complete_fill_skips_several_holes() -> None:
    s = started(0)
    s.push(ev(3))
    s.push(ev(6))
    ready, fetch = s.fill("general", [], 6)
    assert seqs(ready) == [3, 6]
    assert fetch is None
    assert s.lost == 4  # 1, 2, 4, 5


def test_lost_accumulates_over_fills() -> None:
    s = started(0)
    s.push(ev(3))
    s.fill("general", [], 3)
    s.push(ev(7))
    s.fill("general", [], 7)
    assert s.lost == 2 + 3


def test_fill_with_nothing_held_delivers_nothing() -> None:
    s = started(4)
    assert s.fill("general", [], 4) == ([], None)
    assert s.lost == 0


def test_fill_for_an_unknown_room_is_ignored() -> None:
    s = FeedSequencer()
    assert s.fill("general", [ev(1), ev(2)], 2) == ([], None)
    assert "general" not in s.last


def test_too_many_held_events_skip_the_hole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequencer, "MAX_HELD_PER_ROOM", 3)
    s = started(0)
    for n in (2, 3, 4):
        assert s.push(ev(n)) == ([], 0)
    assert s.push(ev(5)) == ([ev(2), ev(3), ev(4), ev(5)], None)
    assert s.lost == 1


# --- before the baseline is known ---------------------------------------------------------


def test_events_before_expect_are_held() -> None:
    s = FeedSequencer()
    assert s.push(ev(5)) == ([], None)
    assert s.push(ev(6)) == ([], None)
    assert "general" not in s.last


def test_expect_releases_held_events_in_order_and_drops_those_at_or_before_the_baseline() -> None:
    s = FeedSequencer()
    for n in (4, 2, 5, 3, 1):
        s.push(ev(n))
    assert s.expect("general", 2) == ([ev(3), ev(4), ev(5)], None)
    assert s.held == {}
    assert s.last["general"] == 5


def test_expect_with_a_hole_after_the_baseline_asks_to_fetch() -> None:
    s = FeedSequencer()
    s.push(ev(7))
    assert s.expect("general", 4) == ([], 4)


def test_expect_covering_everything_held_delivers_nothing() -> None:
    s = FeedSequencer()
    s.push(ev(1))
    s.push(ev(2))
    assert s.expect("general", 2) == ([], None)
    assert s.held == {}


def test_unknown_baseline_zero_wants_a_new_room_from_its_first_event() -> None:
    s = FeedSequencer(unknown_baseline=0)
    assert s.push(ev(1)) == ([ev(1)], None)
    assert s.push(ev(2)) == ([ev(2)], None)


def test_unknown_baseline_zero_fetches_what_came_before_the_first_event_seen() -> None:
    s = FeedSequencer(unknown_baseline=0)
    assert s.push(ev(3)) == ([], 0)


def test_unknown_baseline_is_per_room() -> None:
    s = FeedSequencer(unknown_baseline=0)
    s.push(ev(1, "a"))
    assert s.push(ev(1, "b")) == ([ev(1, "b")], None)


# --- forget and reset ---------------------------------------------------------------------


def test_forget_drops_the_room_and_what_is_held_for_it() -> None:
    s = started(0)
    s.push(ev(3))
    s.forget("general")
    assert "general" not in s.last
    assert "general" not in s.held


def test_after_forget_events_wait_for_a_new_expect() -> None:
    s = started(0)
    s.push(ev(1))
    s.forget("general")
    assert s.push(ev(2)) == ([], None)
    assert s.expect("general", 1) == ([ev(2)], None)


def test_forget_leaves_other_rooms_alone() -> None:
    s = started(0, "a")
    s.expect("b", 0)
    s.forget("a")
    assert s.push(ev(1, "b")) == ([ev(1, "b")], None)


def test_forget_of_an_unknown_room_is_harmless() -> None:
    FeedSequencer().forget("nowhere")


def test_expect_ahead_of_a_known_room_fetches_what_was_missed() -> None:
    s = started(0)
    s.push(ev(1))
    assert s.expect("general", 5) == ([], 1)  # e.g. re-joined after a reconnect: 2..5 happened meanwhile
    assert s.fill("general", [ev(n) for n in range(2, 6)], 5) == ([ev(n) for n in range(2, 6)], None)


def test_expect_equal_to_what_we_have_asks_for_nothing() -> None:
    s = started(0)
    s.push(ev(1))
    assert s.expect("general", 1) == ([], None)


def test_expect_behind_us_is_a_stale_answer_and_changes_nothing() -> None:
    s = started(0)
    for n in range(1, 50):
        s.push(ev(n))
    # A rooms/joined reply produced before events the feed has already brought us (they travel apart).
    assert s.expect("general", 2) == ([], None)
    assert s.last["general"] == 49
    assert s.push(ev(49)) == ([], None)
    assert s.push(ev(50)) == ([ev(50)], None)


def test_reset_voids_every_seq_when_the_history_started_over() -> None:
    s = started(0)
    for n in range(1, 50):
        s.push(ev(n))
    s.push(ev(60))
    s.reset()
    assert s.last == {} and s.held == {}
    assert s.expect("general", 2) == ([], None)
    assert s.push(ev(3)) == ([ev(3)], None)


def test_events_held_before_expect_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequencer, "MAX_HELD_PER_ROOM", 3)
    s = FeedSequencer()
    for n in range(1, 11):
        s.push(ev(n))
    assert len(s.held["general"]) <= 3


def test_what_is_held_is_bounded_in_bytes_for_all_rooms_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """A feed of big events beyond holes (a relay gone wrong, an observer of many rooms) holds at most
    the byte budget and one event per room more: past it, the newest held events are let go (the fetch
    that fills the hole before them brings them), so nothing is skipped for it."""
    monkeypatch.setattr(sequencer, "MAX_HELD_BYTES", 100_000)
    s = FeedSequencer()
    big = "x" * 4000  # ~16 KB held each
    for room in ("a", "b", "c"):
        s.expect(room, 0)
        for seq in range(2, 40, 2):  # a hole before every event
            event = m.MsgEvent(room=room, user="u", text=big, id=str(seq), seq=seq)
            assert s.push(event) == ([], 0)  # held (or let go), and the hole before it fetched
            assert s.total_bytes <= 100_000 + 3 * sequencer._cost(event)  # the budget, and one event per room
            assert s.total_bytes == sum(s.held_bytes.values())
    assert s.lost == 0 and s.total_bytes <= 100_000 + 3 * 16_400


@given(
    gaps=st.lists(st.integers(1, 50), min_size=1, max_size=60),
    order=st.randoms(use_true_random=False),
    dropped=st.sets(st.integers(0, 59)),
)
def test_a_prev_chain_with_skipping_positions_comes_out_once_in_order_whatever_the_feed_does(
    gaps: list[int], order, dropped: set[int]
) -> None:
    """A cluster's room: positions that skip (``gaps``), linked by ``prev``.  The feed drops some, repeats
    and reorders the rest; one complete history fill then brings everything: each event comes out exactly
    once, in position order, and nothing is counted lost."""
    positions = list(itertools.accumulate(gaps))
    events = [
        m.MsgEvent(room="r", user="u", text="t", id=str(p), seq=p, prev=prev)
        for prev, p in zip([0, *positions], positions, strict=False)
    ]
    fed = [e for i, e in enumerate(events) if i not in dropped]
    fed = fed + fed[: len(fed) // 3]
    order.shuffle(fed)
    s = FeedSequencer()
    out, fetch = s.expect("r", 0)
    for event in fed:
        ready, _ = s.push(event)
        out += ready
    ready, fetch = s.fill("r", events, positions[-1])
    out += ready
    assert [e.seq for e in out] == positions and fetch is None and s.lost == 0
