"""Property tests of ChatCore (chat.py), with no sockets and no clock.

Two halves:

* ``test_any_json_in_any_field_*``: arbitrary JSON in every field of every request type (and unknown
  types, extra fields, batches of 1-256 and empty or oversized arrays), from several peers, mixed with
  valid traffic and ``tick`` calls while the clock moves.  Nothing may raise or be caught as
  ``internal``, every error code is a documented one, replies go only where they may, and the core's
  books balance after every step.
* ``FaultyNetwork``: clients saying hello/join/leave/msg/dm/bye while acks get lost, messages are
  resent with the same id, ids are reused for other content, the clock jumps (forwards and a little
  back), sessions time out, and the broker restarts cleanly or crashes before a commit.  An acked
  message is in its room's history exactly once, under the seq its ack named, and a persistent
  store never gives a seq twice.

``tests/sansio/test_fuzz.py`` fuzzes the same entry points with smaller, mostly plausible inputs; this file
goes wider on the values and deeper on delivery faults.

Each bug these tests found is kept twice: as an ``@example`` of the property it breaks, and as a plain
test named after what must hold (``test_history_*``, ``test_a_batch_*``), so a failure reads clearly.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import chat
import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from store import MemoryStore, SqliteStore

DOCUMENTED_CODES = {code.value for code in m.ErrorCode} - {m.ErrorCode.INTERNAL.value}
REPLY_TYPES = {"welcome", "joined", "left", "ack", "who", "history", "pong", "rooms", "error", "dm", "renamed", "away"}


def config_without_rate_limits(**overrides: Any) -> ChatConfig:
    """A config with every rate limit off (the per-connection one, and per-source ones if chat.py has them)."""
    off = {
        f.name: 0.0
        for f in dataclasses.fields(ChatConfig)
        if "rate" in f.name and "burst" not in f.name and isinstance(f.default, (int, float))
    }
    return ChatConfig(**{**off, **overrides})


def config(**values: Any) -> ChatConfig:
    """A config without rate limits, with those of ``values`` that this ChatConfig has."""
    names = {f.name for f in dataclasses.fields(ChatConfig)}
    return config_without_rate_limits(**{name: value for name, value in values.items() if name in names})


def encode(value: Any) -> bytes:
    """JSON text of any value, big integers included (msgspec writes only 64-bit ones)."""
    return json.dumps(value, separators=(",", ":")).encode()


def decode_envelopes(payload: bytes) -> list[dict[str, Any]]:
    """A reply or event frame -> its envelopes; each must be a JSON object with a string type."""
    value = msgspec.json.decode(payload)
    envelopes = value if type(value) is list else [value]
    assert envelopes, f"a frame with no envelope in it: {payload!r}"
    for env in envelopes:
        assert type(env) is dict and type(env.get("type")) is str, payload
    return envelopes


# --- strategies: arbitrary JSON, with the values that hurt ------------------------------------

ALMOST_NAMES = [
    "alice",
    "Alice",
    "ALICE",
    "bob",
    "carol",
    "alice ",
    " alice",
    "al ice",
    "alic\u0435",  # Cyrillic e
    "\u212aelvin",  # Kelvin sign: casefolds to k
    "stra\u00dfe",  # casefolds to "strasse"
    "\u01c5",  # titlecase digraph
    "a" * 32,
    "a" * 33,
    ".alice",
    "-bob",
    "_x",
    "x.",
    "SYSTEM",
    "Admin",
    "general",
    "General",
    "dev",
    "d/ev",
    "g\u00e9n\u00e9ral",
    "room\n",
    "",
    "0",
    "a-b_c",
    "\x00",
    "\ud800",  # a lone surrogate: json.dumps escapes it, the core must refuse it as bad_json
    "\u202eevil",
]
BIG_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63), -(2**63) - 1, -(2**70), 10**40, -1, 0, 1]

strings = (
    st.text(max_size=30)
    | st.sampled_from(ALMOST_NAMES)
    | st.builds(lambda char, n: char * n, st.characters(), st.sampled_from([64, 65, 3999, 4000, 4001, 20_000]))
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(BIG_INTS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.5, 2.0**63, 1.0])
    | strings
)
REQUEST_FIELDS = sorted({name for fields in m.REQUESTS.values() for name in fields})
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from([*REQUEST_FIELDS, "type"]) | st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)

NAMES = ["alice", "Alice", "bob", "BOB", "carol", "dave"]
ROOMS = ["general", "dev", "ops", "qa", "r1", "r2"]
IDS = ["1", "2", "3", "x" * 64]
#: Values a field often takes, so that sessions, rooms and resends happen among the junk.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "user": st.sampled_from(NAMES),
    "to": st.sampled_from(NAMES),
    "room": st.sampled_from(ROOMS),
    "rooms": st.lists(st.sampled_from(ROOMS), max_size=4),
    "text": st.sampled_from(["hi", "yo", "\x1b[2J", "😀"]),
    "id": st.sampled_from(IDS),
    "me": st.booleans(),
    "resume": st.booleans(),
    "after": st.integers(0, 12) | st.sampled_from([m.MAX_SEQ, m.MAX_SEQ - 5, m.MAX_SEQ + 1]),
    "limit": st.integers(1, 5) | st.sampled_from([m.MAX_HISTORY_LIMIT, m.MAX_HISTORY_LIMIT + 1]),
    "name": st.sampled_from(NAMES),
    "topic": st.sampled_from(["", "plans", "\x1b[2J", "x" * m.MAX_TOPIC_CHARS, "x" * (m.MAX_TOPIC_CHARS + 1)]),
    "reason": st.sampled_from(["", "lunch", "x" * (m.MAX_AWAY_CHARS + 1)]),
}
UNKNOWN_TYPES = ["welcome", "error", "ack", "joined", "Hello", "hello ", "", "msg\x00", "history2"]


@st.composite
def junk_envelopes(draw: st.DrawFn) -> Any:
    """A request of any type (or none), each of its fields plausible, arbitrary or missing, plus other fields."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)  # not even an object, most of the time
    kind = draw(st.sampled_from(sorted(m.REQUESTS)) | st.sampled_from(UNKNOWN_TYPES) | json_values)
    env: dict[str, Any] = {} if draw(st.integers(0, 29)) == 0 else {"type": kind}
    own = m.REQUESTS.get(kind, {}) if type(kind) is str else {}
    for name in REQUEST_FIELDS:  # every field of every type: the request's own ones most often
        roll = draw(st.integers(0, 9))
        if (name in own and roll < 8) or roll == 0:
            env[name] = draw(PLAUSIBLE[name] if roll < 5 else json_values)
    env.update(draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "type"), json_values, max_size=2)))
    return env


@st.composite
def valid_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A request the core should accept (if the session state allows it)."""
    kind = draw(st.sampled_from(sorted(m.REQUESTS)))
    env: dict[str, Any] = {"type": kind}
    for name, (_, required) in m.REQUESTS[kind].items():
        if required or draw(st.booleans()):
            value = draw(PLAUSIBLE[name])
            if name == "after":
                value = draw(st.integers(0, 12))
            elif name == "limit":
                value = draw(st.integers(1, 5))
            env[name] = value
    return env


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """A JSON array of 1-256 envelopes (some repeated), or an empty or oversized one."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return b"[]"
    if shape == 1:
        env = draw(valid_envelopes())
        return encode([env] * draw(st.sampled_from([m.MAX_BATCH_REQUESTS + 1, 1000])))
    pool = draw(st.lists(junk_envelopes() | valid_envelopes(), min_size=1, max_size=6))
    length = draw(st.integers(1, 8) | st.sampled_from([m.MAX_BATCH_REQUESTS - 1, m.MAX_BATCH_REQUESTS]))
    return encode(list(itertools.islice(itertools.cycle(pool), length)))


RAW_FRAMES = [
    b"",
    b"null",
    b"[",
    b"{",
    b"\xff\xfe",
    b'{"type":"ping"}\n{"type":"ping"}',
    b'{"type":"ping","x":1e400}',  # out of a float's range
    b'{"type":"msg","room":"general","text":"\\ud800","id":"1"}',  # a lone surrogate
    b"[" * 5000 + b"]" * 5000,  # deeper than the recursion limit
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


@st.composite
def frames(draw: st.DrawFn) -> list[bytes]:
    """What one inbox message from a peer may be: one frame almost always."""
    shape = draw(st.integers(0, 19))
    if shape < 8:
        return [encode(draw(junk_envelopes()))]
    if shape < 14:
        return [encode(draw(valid_envelopes()))]
    if shape < 17:
        return [draw(batches())]
    if shape < 18:
        return [draw(st.sampled_from(RAW_FRAMES) | st.binary(max_size=30))]
    return draw(st.lists(st.binary(max_size=10), max_size=3).filter(lambda f: len(f) != 1))


#: Peers, the CURVE key each authenticated with and its address: two share a key (one bound to "bob"),
#: two an address, so the per-key and per-source limits have something to count.
PEERS: list[tuple[bytes, str | None, str | None]] = [
    (b"p0", None, "10.0.0.1"),
    (b"p1", None, "10.0.0.1"),
    (b"p2", None, "10.0.0.2"),
    (b"p3", None, None),
    (b"k0", "KEY-A", "10.0.0.3"),
    (b"k1", "KEY-A", "10.0.0.4"),
    (b"k2", "KEY-B", "10.0.0.1"),
]
BINDINGS = {"KEY-B": "bob"}
#: One step: a peer's inbox message, time passing (``tick``), or the disk filling up or coming back (the
#: broker sets ``ChatCore.unavailable``); then the broker commits, or not yet (it commits once a loop).
TICK, DISK = -1, -2
COMMIT = st.integers(0, 3).map(bool)
STEP = (
    st.tuples(st.integers(0, len(PEERS) - 1), frames(), COMMIT)
    | st.tuples(st.just(TICK), st.sampled_from([0.0, 0.3, 1.0, 2.5, 6.0, 100.0]), COMMIT)
    | st.tuples(st.just(DISK), st.booleans(), COMMIT)
)


# --- what every output and every state must satisfy -------------------------------------------


class Books:
    """What the test has seen of one core's output: the feed per topic, and each published msg."""

    def __init__(self) -> None:
        self.last_seq: dict[bytes, int] = {}
        self.msgs: dict[tuple[str, int], dict[str, Any]] = {}  # (room, seq) -> the published msg event

    def check(self, core: ChatCore, out: Any, sender: bytes | None, batch: bool, rate_limited_ok: bool) -> None:
        """The outputs of one ``handle`` (``sender`` the peer) or ``tick`` (``sender`` None)."""
        assert type(out) is list
        for item in out:
            assert type(item) in (Reply, Publish), item
            assert type(item.payload) is bytes and b"\n" not in item.payload
            envelopes = decode_envelopes(item.payload)
            if type(item) is Publish:
                self.check_publish(item, envelopes)
                continue
            assert sender is not None, "tick replies to nobody"
            if item.peer != sender:  # only a dm goes to anyone else: to its recipient, who is live
                assert [env["type"] for env in envelopes] == ["dm"], envelopes
                recipient = core.sessions.get(item.peer)
                assert recipient is not None and recipient.user == envelopes[0]["to"], envelopes
                continue
            assert batch or type(msgspec.json.decode(item.payload)) is dict  # no array for a lone request
            for env in envelopes:
                self.check_reply(env, rate_limited_ok)

    def check_publish(self, item: Publish, envelopes: list[dict[str, Any]]) -> None:
        assert len(envelopes) == 1  # the core publishes one event a frame; the broker batches them
        event = envelopes[0]
        if item.topic == m.SYS_TOPIC:
            assert event["type"] in ("heartbeat", "shutdown")
            return
        assert item.topic == m.room_topic(event["room"]), (item.topic, event)
        if event["type"] == "head":  # not an event: the room's newest seq, as published so far
            assert event["seq"] == self.last_seq.get(item.topic, 0), (item.topic, event)
            return
        assert event["type"] in ("join", "leave", "msg", "topic", "nick")
        # Per room, every seq once, consecutive from 1, whatever came in.
        assert event["seq"] == self.last_seq.get(item.topic, 0) + 1, (item.topic, event)
        self.last_seq[item.topic] = event["seq"]
        if event["type"] in ("msg", "topic"):
            self.msgs[event["room"], event["seq"]] = event

    def check_reply(self, env: dict[str, Any], rate_limited_ok: bool) -> None:
        assert env["type"] in REPLY_TYPES, env
        if "id" in env:
            assert type(env["id"]) is str and 1 <= len(env["id"]) <= m.MAX_ID_CHARS, env
        if env["type"] == "error":
            assert env["code"] in DOCUMENTED_CODES, env  # `internal` would mean a crash was caught
            assert rate_limited_ok or env["code"] != "rate_limited", env
            assert type(env["detail"]) is str
        elif env["type"] == "ack" and "seq" in env:  # a msg's ack names the event it got (now, or before)
            event = self.msgs.get((env["room"], env["seq"]))
            if event is None or event["type"] == "topic":  # a topic's: the event that set it (0: never set)
                assert env["seq"] == 0 or event is not None, env
            else:
                assert event["id"] == env["id"], (env, event)
        elif env["type"] in ("history", "joined"):
            events = env["events"] if env["type"] == "history" else env["history"]
            seqs = [event["seq"] for event in events]
            if seqs:  # contiguous, of this room, none past its seq
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
                assert seqs[-1] <= env["seq"], env
            assert all(event["room"] == env["room"] for event in events)


def check_state(core: ChatCore) -> None:
    """The core's own books balance: sessions, names, rooms, members, histories, counters."""
    cfg = core.config
    assert len(core.by_name) == len(core.sessions)
    for peer, session in core.sessions.items():
        assert session.peer == peer
        assert session.folded == session.user.casefold()
        assert core.by_name[session.folded] is session
        assert len(session.rooms) <= cfg.max_rooms_per_session
        for name in session.rooms:
            assert session.folded in core.rooms[name].folded, (session.user, name)
    keys = Counter(session.key for session in core.sessions.values() if session.key is not None)
    assert core.sessions_per_key == keys
    assert len(core.rooms) <= cfg.max_rooms
    assert not set(core.rooms) & set(core.resting)
    for name, room in core.rooms.items():
        assert room.name == name and room.feed == m.room_topic(name)
        assert room.users == sorted(room.users, key=str.casefold)  # display order, kept as people come and go
        assert room.folded == [user.casefold() for user in room.users]
        assert len(set(room.folded)) == len(room.folded)
        for user, folded in zip(room.users, room.folded, strict=True):
            holder = core.by_name.get(folded)  # members are live sessions, in the room by their own books
            assert holder is not None and holder.user == user and name in holder.rooms, (name, user)
        assert len(room.history) <= cfg.history_kept
        events = [msgspec.json.decode(payload) for payload in room.history]
        assert all(event["room"] == name for event in events)
        seqs = [event["seq"] for event in events]
        assert seqs == list(range(room.seq - len(seqs) + 1, room.seq + 1)), (name, room.seq, seqs)
    check_new_books(core)


def check_new_books(core: ChatCore) -> None:
    """The books chat.py keeps since the hardening (connections, sources, history bytes, id windows, crashes
    caught): checked where the core has them."""
    cfg = core.config
    if hasattr(core, "internal_errors"):  # a crash caught anywhere (a tick's too, which replies to nobody)
        assert not core.internal_errors, dict(core.internal_errors)
    peers, sources = getattr(core, "peers", None), getattr(core, "sources", None)
    if isinstance(peers, dict) and isinstance(sources, dict):
        for session in core.sessions.values():
            assert peers[session.peer] is session.conn
        for name, source in sources.items():
            assert source.name == name
            mine = [s for s in core.sessions.values() if s.conn.source is source]
            assert source.peers == sum(conn.source is source for conn in peers.values()), name
            assert source.sessions == len(mine), name
            assert source.rooms == sum(len(s.rooms) for s in mine), name
            assert source.sessions <= (cfg.max_sessions_per_source or source.sessions)
            assert source.rooms <= (cfg.max_rooms_per_source or source.rooms)
        assert all(any(conn.source is source for source in sources.values()) for conn in peers.values())
    if hasattr(core, "history_bytes"):
        overhead = chat.EVENT_OVERHEAD
        for room in core.rooms.values():
            assert room.bytes == sum(len(payload) + overhead for payload in room.history), room.name
            assert room.bytes <= cfg.history_bytes_per_room or len(room.history) <= 1, room.name
        assert core.history_bytes == sum(room.bytes for room in core.rooms.values())
    said = getattr(core, "said", None)
    windows = getattr(said, "windows", None)
    if isinstance(said, chat.SaidWindows) and isinstance(windows, dict) and hasattr(said, "size"):
        assert said.size == sum(len(window) + 1 for window in windows.values())
        assert said.size <= said.total
        assert all(len(window) <= said.per_user for window in windows.values())


def check_history_is_complete(core: ChatCore, now: float = 0.0) -> None:
    """With a database, ``history`` reaches back to every room's first event: paged from 0, it gives each
    seq from 1 to the room's seq exactly once (asked before the commit too: the broker commits once a loop)."""
    for name in [*core.rooms, *core.resting]:
        seqs: list[int] = []
        while True:
            request = {"type": "history", "room": name, "after": seqs[-1] if seqs else 0, "limit": 500}
            [reply] = [msgspec.json.decode(o.payload) for o in core.handle(b"probe", [encode(request)], now)]
            assert reply["type"] == "history", reply
            events = reply["events"]
            seqs += [event["seq"] for event in events]
            assert reply.get("more") is None or (reply["more"] is True and events), reply
            if not reply.get("more") and len(events) < request["limit"]:
                break
        assert seqs == list(range(1, reply["seq"] + 1)), (name, reply["seq"], seqs)


# --- 1. any JSON in any field -------------------------------------------------------------------

CONFIGS = {
    "roomy": dict(history_on_join=50),
    "tight": dict(
        max_rooms=3,
        history_kept=4,
        history_on_join=2,
        max_history=3,
        max_sessions_per_key=1,
        max_sessions_per_source=2,
        max_rooms_per_source=4,
        max_reply_bytes=1024,
    ),
    # Few ids remembered, for a short time: the windows fill, age and are forgotten (or refuse: unavailable).
    "forgetful": dict(dedupe_per_user=2, dedupe_total=4, dedupe_age=3.0, history_kept=8, history_on_join=3),
}


def drive(core: ChatCore, steps: list[tuple[int, Any, bool]], rate_limited_ok: bool) -> None:
    books = Books()
    now = 0.0
    check_state(core)
    for who, what, commit in steps:
        if who == DISK:
            if hasattr(core, "unavailable"):
                core.unavailable = "disk full" if what else None
            continue
        if who == TICK:
            now += what
            out = core.tick(now)
            books.check(core, out, None, False, rate_limited_ok)
        else:
            peer, key, address = PEERS[who]
            out = core.handle(peer, what, now, key, address)
            is_batch = len(what) == 1 and what[0].lstrip()[:1] == b"["
            books.check(core, out, peer, is_batch, rate_limited_ok)
        if getattr(core, "unavailable", None):  # nothing can be stored: nothing happens in any room
            assert all(type(o) is Reply or o.topic == m.SYS_TOPIC for o in out), out
        check_state(core)
        if core.store.persistent and not rate_limited_ok:
            check_history_is_complete(core)
        if commit:
            core.commit()
            check_state(core)


def frame_of(*envs: dict[str, Any]) -> list[bytes]:
    return [encode(envs[0] if len(envs) == 1 else list(envs))]


HELLO = {"type": "hello", "user": "alice"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    config_name=st.sampled_from(sorted(CONFIGS)),
    persistent=st.booleans(),
    steps=st.lists(STEP, min_size=1, max_size=25),
)
# Bugs this test found, each as its smallest case (see also the named tests below):
# `after` near the largest seq overflowed itertools.islice: a ValueError out of handle (fixed since, kept).
@example(
    config_name="roomy",
    persistent=False,
    steps=[(0, frame_of(HELLO), True), (0, frame_of({"type": "history", "room": "general", "after": m.MAX_SEQ}), True)],
)
# A batch whose requests have no reply (bye) got an empty array `[]` as a reply frame.
@example(config_name="roomy", persistent=False, steps=[(0, frame_of({"type": "bye"}, {"type": "bye"}), True)])
# Events trimmed from memory before their commit were missing from `history` until it.
@example(
    config_name="tight",
    persistent=True,
    steps=[
        (0, frame_of(HELLO, *({"type": "msg", "room": "general", "text": "t", "id": str(i)} for i in range(4))), False)
    ],
)
# A history reply cut to --max-history (below the limit asked) said no `more`: "nothing more after them".
@example(
    config_name="tight",
    persistent=True,
    steps=[
        (0, frame_of(HELLO, *({"type": "msg", "room": "general", "text": "t", "id": str(i)} for i in range(3))), True)
    ],
)
def test_any_json_in_any_field_never_breaks_the_core(config_name: str, persistent: bool, steps: list) -> None:
    store = SqliteStore(":memory:") if persistent else MemoryStore()
    core = ChatCore(config(**CONFIGS[config_name]), store=store, epoch="e", bindings=BINDINGS)
    drive(core, steps, rate_limited_ok=False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(STEP, min_size=1, max_size=25))
def test_any_json_in_any_field_never_breaks_the_core_with_the_default_limits(steps: list) -> None:
    drive(ChatCore(ChatConfig(), epoch="e", bindings=BINDINGS), steps, rate_limited_ok=True)


# --- the bugs found, as plain tests with clear names ----------------------------------------------


def test_history_after_the_largest_seq_is_answered() -> None:
    core = ChatCore(config(), epoch="e")
    core.handle(b"p0", frame_of(HELLO), 0.0)
    for after in (m.MAX_SEQ, m.MAX_SEQ - 50):
        out = core.handle(b"p0", frame_of({"type": "history", "room": "general", "after": after}), 0.0)
        reply = msgspec.json.decode(out[0].payload)
        assert reply["type"] == "history" and reply["events"] == [] and reply["seq"] == 1, reply


def test_a_batch_with_nothing_to_answer_gets_no_reply_frame() -> None:
    """`bye` has no reply (protocol.md); a batch of them must not cost the client an empty array frame."""
    core = ChatCore(config(), epoch="e")
    core.handle(b"p0", frame_of(HELLO), 0.0)
    out = core.handle(b"p0", frame_of({"type": "bye"}, {"type": "bye"}), 0.0)
    assert [o for o in out if type(o) is Reply] == []


def test_history_before_the_commit_has_the_events_trimmed_from_memory() -> None:
    """The broker handles many messages, then commits: a `history` among them must not skip the events that
    were trimmed from memory (past --history-kept, or the room's byte bound) but are not on disk yet."""
    core = ChatCore(config(history_kept=4, history_on_join=2), store=SqliteStore(":memory:"), epoch="e")
    says = [{"type": "msg", "room": "general", "text": "t", "id": str(i)} for i in range(4)]
    core.handle(b"p0", frame_of(HELLO, *says), 0.0)  # seqs 1-5: the join and 4 messages; 1 is out of memory
    out = core.handle(b"p1", frame_of({"type": "history", "room": "general", "after": 0}), 0.0)
    reply = msgspec.json.decode(out[0].payload)
    assert [event["seq"] for event in reply["events"]] == [1, 2, 3, 4, 5], reply


def test_history_cut_to_max_history_says_more() -> None:
    """protocol.md: "Without `more`, if `events` has fewer than `limit` entries, there is nothing more after
    them."  A reply cut to the broker's --max-history must therefore say `more` (or not be cut)."""
    core = ChatCore(config(max_history=3), epoch="e")
    says = [{"type": "msg", "room": "general", "text": "t", "id": str(i)} for i in range(3)]
    core.handle(b"p0", frame_of(HELLO, *says), 0.0)  # seqs 1-4
    out = core.handle(b"p1", frame_of({"type": "history", "room": "general", "after": 0, "limit": 5}), 0.0)
    reply = msgspec.json.decode(out[0].payload)
    assert len(reply["events"]) == 4 or reply.get("more") is True, reply


# --- 2. delivery under faults ---------------------------------------------------------------------

CLIENT_NAMES = {"alice": ["alice", "Alice", "ALICE"], "bob": ["bob", "Bob"], "carol": ["carol"]}
CLIENTS = sorted(CLIENT_NAMES)
FAULT_ROOMS = ["general", "dev"]
MAX_CLOCK = 400.0  # stay inside the 10 minutes an id is remembered for (contract: id_reused)


@dataclasses.dataclass
class Said:
    """A msg or dm the core acked (whether or not the client got the ack)."""

    user: str  # the client (canonical name)
    env: dict[str, Any]  # the request, id included
    ack: dict[str, Any]


class FaultyNetwork(RuleBasedStateMachine):
    """Clients talk while acks get lost, ids are resent and reused, the clock jumps and the broker restarts.

    The broker's contract is modelled as it runs: ``handle`` (or ``tick``), then ``commit``, then what was
    handled is sent.  A crash drops what was handled but not committed, and nobody ever saw it.
    """

    @initialize(persistent=st.booleans())
    def start(self, persistent: bool) -> None:
        self.dir = tempfile.mkdtemp(prefix="chat-props-")
        self.persistent = persistent
        self.store = self.open_store()
        self.config = config_without_rate_limits(heartbeat=1.0, session_timeout=5.0)
        self.now = 0.0
        self.generation = 0
        self.core = ChatCore(self.config, store=self.store, now=self.now)
        self.books = Books()
        self.ids = itertools.count()
        self.said: dict[tuple[str, str], Said] = {}  # (client, id) -> acked, still remembered by the core
        self.pending: list[tuple[str, dict[str, Any]]] = []  # sent, never acked (lost in a crash)
        self.peers = {name: f"{name}-0".encode() for name in CLIENTS}
        self.history_id = self.store.history_id

    def open_store(self) -> MemoryStore | SqliteStore:
        return SqliteStore(Path(self.dir) / "chat.db") if self.persistent else MemoryStore()

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if isinstance(store, SqliteStore):
            store.db.close()
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- talking to the core -------------------------------------------------------------------

    def send(self, client: str, *envs: dict[str, Any], batch: bool = False) -> tuple[list[dict], list[Any]]:
        """Handle, commit, check; returns the client's replies (envelopes) and all outputs."""
        peer = self.peers[client]
        frame = encode(list(envs)) if batch else encode(envs[0])
        assert batch or len(envs) == 1
        out = self.core.handle(peer, [frame], self.now)
        self.core.commit()
        self.books.check(self.core, out, peer, batch, rate_limited_ok=False)
        mine = [env for o in out if type(o) is Reply and o.peer == peer for env in decode_envelopes(o.payload)]
        return mine, out

    def session_of(self, client: str) -> chat.Session | None:
        return self.core.sessions.get(self.peers[client])

    def ensure_session(self, client: str, rooms: list[str], variant: int = 0) -> None:
        """Say hello (again) in the rooms given: what a client does after a timeout or a restart."""
        session = self.session_of(client)
        names = CLIENT_NAMES[client]
        user = session.user if session is not None else names[variant % len(names)]
        mine, _ = self.send(client, {"type": "hello", "user": user, "rooms": rooms})
        assert mine[0]["type"] == "welcome", mine
        assert self.session_of(client) is not None

    def say(self, client: str, env: dict[str, Any], batch: bool) -> None:
        """A msg or dm that is new: acked once, published once (msg) or delivered once (dm)."""
        mine, out = self.send(client, env, batch=batch)
        delivered = [o for o in out if type(o) is Reply and o.peer != self.peers[client]]
        delivered += [r for r in mine if r["type"] == "dm"]  # a dm to oneself
        [reply] = [r for r in mine if r["type"] != "dm"]
        published = [e for o in out if type(o) is Publish for e in decode_envelopes(o.payload)]
        if reply["type"] == "error":
            assert not published and not delivered
            assert reply["code"] in ("not_in_room", "no_such_user", "no_session"), reply
            assert reply["id"] == env["id"]
            return
        assert reply["type"] == "ack" and reply["id"] == env["id"], reply
        if env["type"] == "msg":
            assert [(e["type"], e["id"], e["seq"]) for e in published] == [("msg", env["id"], reply["seq"])]
            assert reply["room"] == env["room"]
        else:
            assert not published
            to = self.core.by_name[env["to"].casefold()]
            assert reply["to"] == to.user
            assert len(delivered) == 1
        self.said[client, env["id"]] = Said(client, env, reply)

    def next_id(self) -> str:
        return f"m{next(self.ids)}"

    # --- rules ---------------------------------------------------------------------------------

    @rule(
        client=st.sampled_from(CLIENTS),
        variant=st.integers(0, 2),
        rooms=st.lists(st.sampled_from(FAULT_ROOMS), max_size=2, unique=True),
    )
    def hello(self, client: str, variant: int, rooms: list[str]) -> None:
        self.ensure_session(client, rooms, variant)

    @rule(client=st.sampled_from(CLIENTS), room=st.sampled_from(FAULT_ROOMS))
    def join(self, client: str, room: str) -> None:
        mine, _ = self.send(client, {"type": "join", "room": room})
        assert mine[0]["type"] == ("joined" if self.session_of(client) else "error"), mine

    @rule(client=st.sampled_from(CLIENTS), room=st.sampled_from(FAULT_ROOMS))
    def leave(self, client: str, room: str) -> None:
        self.send(client, {"type": "leave", "room": room})

    @rule(client=st.sampled_from(CLIENTS))
    def ping(self, client: str) -> None:
        mine, _ = self.send(client, {"type": "ping"})
        assert [(r["type"], r["epoch"], r["session"]) for r in mine] == [
            ("pong", self.core.epoch, self.session_of(client) is not None)
        ]

    @rule(client=st.sampled_from(CLIENTS))
    def bye(self, client: str) -> None:
        mine, _ = self.send(client, {"type": "bye"})
        assert mine == [] and self.session_of(client) is None

    @rule(
        client=st.sampled_from(CLIENTS),
        room=st.sampled_from(FAULT_ROOMS),
        text=st.sampled_from(["hi", "yo"]),
        me=st.booleans(),
        batch=st.booleans(),
        ready=st.integers(0, 3).map(bool),
    )
    def msg(self, client: str, room: str, text: str, me: bool, batch: bool, ready: bool) -> None:
        """A new message (mostly from a client in the room); its ack may be lost on the way back (the
        client then resends it: ``resend``)."""
        if ready:
            self.ensure_session(client, [room])
        env: dict[str, Any] = {"type": "msg", "room": room, "text": text, "id": self.next_id()}
        if me:
            env["me"] = True
        self.say(client, env, batch)

    @rule(
        client=st.sampled_from(CLIENTS),
        to=st.sampled_from(CLIENTS),
        variant=st.integers(0, 2),
        ready=st.integers(0, 3).map(bool),
    )
    def dm(self, client: str, to: str, variant: int, ready: bool) -> None:
        if ready:
            self.ensure_session(to, [])
            self.ensure_session(client, [])
        name = CLIENT_NAMES[to][variant % len(CLIENT_NAMES[to])]
        self.say(client, {"type": "dm", "to": name, "text": "psst", "id": self.next_id()}, batch=False)

    @precondition(lambda self: self.said)
    @rule(data=st.data(), twice=st.booleans(), variant=st.integers(0, 2))
    def resend(self, data: st.DataObject, twice: bool, variant: int) -> None:
        """The ack was lost: the client (after a new hello if it must) sends the same request again."""
        said = data.draw(st.sampled_from(sorted(self.said.values(), key=lambda s: s.env["id"])))
        if said.env["type"] == "msg":
            self.ensure_session(said.user, [said.env["room"]], variant)
        elif self.session_of(said.user) is None:
            self.ensure_session(said.user, [], variant)
        envs = [said.env, said.env] if twice else [said.env]
        mine, out = self.send(said.user, *envs, batch=twice)
        assert mine == [said.ack] * len(envs), (said, mine)  # the same ack, as often as asked
        assert not [o for o in out if type(o) is Publish or o.peer != self.peers[said.user]], out

    @precondition(lambda self: self.said)
    @rule(data=st.data(), change=st.sampled_from(["text", "me", "room", "kind"]))
    def reuse(self, data: st.DataObject, change: str) -> None:
        """The same id for another request (otherwise valid): id_reused, and nothing done."""
        said = data.draw(st.sampled_from(sorted(self.said.values(), key=lambda s: s.env["id"])))
        env = dict(said.env)
        if change == "kind":
            if env["type"] == "msg":
                env = {"type": "dm", "to": CLIENT_NAMES[said.user][0], "text": env["text"], "id": env["id"]}
            else:
                env = {"type": "msg", "room": "general", "text": env["text"], "id": env["id"]}
        elif change == "text":
            env["text"] += "!"
        elif change == "me":
            env["me"] = not env.get("me", False)
        elif env["type"] == "msg":
            env["room"] = next(room for room in FAULT_ROOMS if room != env["room"])
        else:
            env["to"] = next(name for name in CLIENTS if name != env["to"].casefold())
        rooms = [env["room"]] if env["type"] == "msg" else []
        self.ensure_session(said.user, rooms)
        if env["type"] == "dm" and env["to"].casefold() not in self.core.by_name:
            self.ensure_session(env["to"].casefold(), [])  # the recipient is live: only the id is wrong
            self.ensure_session(said.user, rooms)
        mine, out = self.send(said.user, env)
        assert not [o for o in out if type(o) is Publish or o.peer != self.peers[said.user]], out
        assert [(r["type"], r.get("code"), r.get("id")) for r in mine] == [("error", "id_reused", env["id"])], mine

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), batch=st.booleans())
    def resend_pending(self, data: st.DataObject, batch: bool) -> None:
        """A message whose request was lost in a crash (never committed, never acked) is sent again: it is new."""
        client, env = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        self.ensure_session(client, [env["room"]])
        self.say(client, env, batch)
        assert (client, env["id"]) in self.said

    @rule(seconds=st.sampled_from([0.2, 1.0, 3.0, 6.0, 30.0, -0.5, -2.0]))
    def clock_jumps(self, seconds: float) -> None:
        """Time passes (silent sessions end with a leave), or a front end's clock steps back a little."""
        self.now = min(MAX_CLOCK, max(0.0, self.now + seconds))
        out = self.core.tick(self.now)
        self.core.commit()
        self.books.check(self.core, out, None, False, rate_limited_ok=False)
        for event in (e for o in out if type(o) is Publish for e in decode_envelopes(o.payload)):
            assert event["type"] in ("heartbeat", "head", "leave")
            assert event["type"] != "leave" or event["reason"] == "timeout"

    @precondition(lambda self: hasattr(self.core, "unavailable"))
    @rule(client=st.sampled_from(CLIENTS), room=st.sampled_from(FAULT_ROOMS), data=st.data())
    def disk_full_for_a_while(self, client: str, room: str, data: st.DataObject) -> None:
        """The broker cannot store (it sets ``unavailable``): writes get ``unavailable`` and change nothing,
        reads still work, no session times out; then the disk is back."""
        user = CLIENT_NAMES[client][0]
        writes = [
            {"type": "hello", "user": user, "rooms": [room]},
            {"type": "join", "room": room},
            {"type": "leave", "room": room},
            {"type": "msg", "room": room, "text": "full", "id": self.next_id()},
            {"type": "dm", "to": user, "text": "full", "id": self.next_id()},
            {"type": "bye"},
        ]
        reads = [{"type": "ping"}, {"type": "rooms"}, {"type": "history", "room": room}]
        seqs = {name: room.seq for name, room in self.core.rooms.items()}
        sessions = {peer: (s.user, list(s.rooms)) for peer, s in self.core.sessions.items()}
        self.core.unavailable = "disk full"
        try:
            for env in data.draw(st.lists(st.sampled_from(writes + reads), min_size=1, max_size=5)):
                session = self.session_of(client)
                mine, out = self.send(client, env)
                assert not [o for o in out if type(o) is Publish or o.peer != self.peers[client]], out
                if env in writes:  # refused: unavailable (or, without a session, maybe no_session first)
                    codes = {"unavailable"} if session is not None else {"unavailable", "no_session"}
                    assert [r["type"] for r in mine] == ["error"] and mine[0]["code"] in codes, (env, mine)
                else:
                    assert [r["type"] for r in mine] == [env["type"].replace("ping", "pong")], (env, mine)
            out = self.core.tick(self.now + 2 * self.config.session_timeout)
            self.books.check(self.core, out, None, False, rate_limited_ok=False)
            assert all(o.topic == m.SYS_TOPIC for o in out), out  # nobody timed out: their leave could not be kept
        finally:
            self.core.unavailable = None
        assert {name: room.seq for name, room in self.core.rooms.items()} == seqs
        assert {peer: (s.user, list(s.rooms)) for peer, s in self.core.sessions.items()} == sessions

    @rule(new_routing_ids=st.booleans())
    def restart(self, new_routing_ids: bool) -> None:
        """The broker stops cleanly (everything committed) and a new one starts over the same store."""
        self.core.commit()
        if not self.persistent:
            self.store = self.open_store()  # memory dies with the process: a new store, a new history
        self.reborn(new_routing_ids)

    @rule(
        client=st.sampled_from(CLIENTS),
        room=st.sampled_from(FAULT_ROOMS),
        new_routing_ids=st.booleans(),
    )
    def crash_before_commit(self, client: str, room: str, new_routing_ids: bool) -> None:
        """A message is handled, then the broker dies before its commit: nobody saw it, the client resends."""
        env = {"type": "msg", "room": room, "text": "lost", "id": self.next_id()}
        self.ensure_session(client, [room])
        self.core.handle(self.peers[client], [encode(env)], self.now)  # no commit: the ack is never sent
        if isinstance(self.store, SqliteStore):
            self.store.db.close()  # what was not committed dies with the process
        self.store = self.open_store()
        self.pending.append((client, env))
        self.reborn(new_routing_ids)

    def reborn(self, new_routing_ids: bool) -> None:
        old_epoch = self.core.epoch
        self.core = ChatCore(self.config, store=self.store, now=self.now)
        assert self.core.epoch != old_epoch
        assert self.core.sessions == {}
        if self.persistent:
            assert self.store.history_id == self.history_id  # the same history: seqs go on
            self.said = {k: s for k, s in self.said.items() if s.env["type"] == "msg"}  # dms are not stored
        else:
            assert self.store.history_id != self.history_id  # a new history: seqs start over
            self.history_id = self.store.history_id
            self.books = Books()
            self.said = {}
        if new_routing_ids:
            self.generation += 1
            self.peers = {name: f"{name}-{self.generation}".encode() for name in CLIENTS}

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        check_state(self.core)

    @invariant()
    def every_acked_msg_is_in_history_once_under_its_seq(self) -> None:
        """Read through the protocol (history, paged), from a peer with no session."""
        seen: Counter[tuple[str, str]] = Counter()
        where: dict[tuple[str, str], tuple[str, int]] = {}
        for room in FAULT_ROOMS:
            after = 0
            while True:
                request = encode({"type": "history", "room": room, "after": after})
                out = self.core.handle(b"checker", [request], self.now)
                [reply] = [msgspec.json.decode(o.payload) for o in out]
                assert reply["type"] == "history", reply
                events = reply["events"]
                for event in events:
                    assert event["room"] == room and event["seq"] > after
                    if event["type"] == "msg":
                        key = (event["user"].casefold(), event["id"])
                        seen[key] += 1
                        where[key] = (room, event["seq"])
                if not events or (len(events) < m.DEFAULT_HISTORY_LIMIT and not reply.get("more")):
                    break
                after = events[-1]["seq"]
        assert all(count == 1 for count in seen.values()), [k for k, n in seen.items() if n > 1]
        for (client, msg_id), said in self.said.items():
            if said.env["type"] == "msg":
                assert where.get((client, msg_id)) == (said.ack["room"], said.ack["seq"]), (
                    said,
                    where.get((client, msg_id)),
                )

    @invariant()
    def history_reaches_back_to_seq_1(self) -> None:
        if self.persistent:
            check_history_is_complete(self.core, self.now)

    @invariant()
    def feed_seqs_never_repeat(self) -> None:
        """Across restarts of a persistent store, each room's feed went on from its last seq (Books checks each
        event); and the core's rooms are where the feed left them."""
        for room in self.core.rooms.values():
            assert room.seq == self.books.last_seq.get(room.feed, 0), (room.name, room.seq)


FaultyNetwork.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_faulty_network = FaultyNetwork.TestCase
