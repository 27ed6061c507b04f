"""The hot path (plain ``msg`` requests decoded as ``messages.PlainMsg`` and accepted by
``ChatCore._plain_msgs``) against the general path: for any sequence of requests, alone or in
batches, both must answer and publish exactly the same."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from store import MemoryStore

PEER, OTHER = b"peer-a", b"peer-b"

# Requests that exercise every way out of the hot path: rooms not joined and not valid, resent
# ids, texts over the broker's limit and the protocol's, an empty text, ``me``, other types.
rooms = st.sampled_from(["general", "dev", "nowhere", "Bad Room", ""])
texts = st.sampled_from(["hi", "", "x" * 30, "y" * 31, "z" * (m.MAX_TEXT_CHARS + 1), "é😀"])
ids = st.sampled_from(["1", "2", "3", "", "i" * (m.MAX_ID_CHARS + 1)])
plain = st.builds(lambda r, t, i: {"type": "msg", "room": r, "text": t, "id": i}, rooms, texts, ids)
other = st.sampled_from(
    [
        {"type": "join", "room": "dev"},
        {"type": "leave", "room": "dev"},
        {"type": "msg", "room": "general", "text": "me too", "id": "4", "me": True},
        {"type": "msg", "room": "general", "text": 5, "id": "5"},
        {"type": "msg", "room": "general", "id": "6"},
        {"type": "ping"},
        {"type": "bye"},
        {"type": "hello", "user": "alice"},
        {"type": "hello", "user": "bob"},
        7,
    ]
)
requests = st.lists(st.one_of(plain, plain, plain, other), min_size=1, max_size=40)
batch_sizes = st.lists(st.integers(1, 8), min_size=1, max_size=20)


class RecordingStore(MemoryStore):
    """Keeps what it is given, so the two paths' stores can be compared."""

    persistent = True

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[str, int, list[bytes]]] = []

    def run(self, room: str, seq: int, holder: Any) -> list[bytes]:
        holder.unsealed = events = []
        self.runs.append((room, seq, events))
        return events

    @property
    def rows(self) -> list[tuple[str, int, bytes]]:
        return [(room, first + i, event) for room, first, events in self.runs for i, event in enumerate(events)]


def core(rate_limit: float) -> ChatCore:
    config = ChatConfig(rate_limit=rate_limit, rate_burst=5, max_text=30, dedupe_per_user=3, dedupe_total=6)
    store = RecordingStore()
    store.history_id = "h"  # the same in both cores
    c = ChatCore(config, store, epoch="e", now=0.0)
    c.handle(PEER, [msgspec.json.encode({"type": "hello", "user": "alice"})], 0.0)
    c.handle(OTHER, [msgspec.json.encode({"type": "hello", "user": "carol", "rooms": ["general", "dev"]})], 0.0)
    return c


def seen(out: list[Reply | Publish]) -> list[tuple[str, Any]]:
    """What each peer and topic got, one event per entry (batch frames opened), in order."""
    got = []
    for o in out:
        where = o.peer.decode() if type(o) is Reply else o.topic.decode()
        got += [(where, event) for event in m.feed_events(o.payload)]
    return sorted(got, key=lambda pair: pair[0])  # stable: each peer's and topic's own order is kept


def general(env: Any) -> bytes:
    """``env`` encoded so the typed decoder refuses it (an unknown field), forcing the general path."""
    return msgspec.json.encode({**env, "unknown": 0} if type(env) is dict else env)


@settings(max_examples=300, deadline=None)
@given(requests, batch_sizes, st.sampled_from([0.0, 2.0]))
def test_the_hot_path_answers_exactly_as_the_general_path(reqs: list, sizes: list[int], rate: float) -> None:
    fast, slow = core(rate), core(rate)
    fast_out: list = []
    slow_out: list = []
    at, now = 0, 0.0
    for size in sizes * len(reqs):
        chunk = reqs[at : at + size]
        if not chunk:
            break
        now += 0.25
        frame = chunk[0] if len(chunk) == 1 else chunk
        fast_out += fast.handle(PEER, [msgspec.json.encode(frame)], now)
        if len(chunk) == 1:
            slow_out += slow.handle(PEER, [general(chunk[0])], now)
        else:
            slow_out += slow.handle(PEER, [b"[" + b",".join(general(env) for env in chunk) + b"]"], now)
        at += size
    assert seen(fast_out) == seen(slow_out)
    assert fast.said.windows == slow.said.windows and fast.said.size == slow.said.size
    assert {n: (r.seq, list(r.history)) for n, r in fast.rooms.items()} == {
        n: (r.seq, list(r.history)) for n, r in slow.rooms.items()
    }
    assert fast.store.rows == slow.store.rows


def test_plain_msgs_are_decoded_typed_and_anything_else_as_json() -> None:
    one = {"type": "msg", "room": "general", "text": "hi", "id": "1"}
    assert type(m.decode_frame([msgspec.json.encode(one)])) is m.PlainMsg
    assert [type(v) for v in m.decode_frame([msgspec.json.encode([one, one])])] == [m.PlainMsg, m.PlainMsg]
    for env in ({**one, "me": True}, {**one, "text": ""}, {**one, "extra": 1}, {"type": "ping"}):
        assert type(m.decode_frame([msgspec.json.encode(env)])) is dict
    assert [type(v) for v in m.decode_frame([msgspec.json.encode([one, {"type": "ping"}])])] == [dict, dict]
