"""Property tests: no input makes validation or the chat core misbehave, and the core keeps its invariants."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from sequencer import FeedSequencer

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

NAMES = ["alice", "Alice", "bob", "BOB", "carol", "dave", "system", "bad name", ".x", "a" * 33]
ROOMS = ["general", "dev", "ops", "qa", "General", "a/b", "", "r" * 33]
plausible = {
    "user": st.sampled_from(NAMES),
    "to": st.sampled_from(NAMES),
    "room": st.sampled_from(ROOMS),
    "rooms": st.lists(st.sampled_from(ROOMS), max_size=4) | st.lists(st.just("x"), min_size=33, max_size=34),
    "text": st.sampled_from(["hi", "", "x" * m.MAX_TEXT_CHARS, "x" * (m.MAX_TEXT_CHARS + 1), "\x1b[2J", "😀"]),
    "id": st.sampled_from(["1", "abc", "", "i" * 64, "i" * 65]),
    "me": st.booleans(),
    "resume": st.booleans(),
    "after": st.integers(min_value=-2, max_value=30),
    "limit": st.integers(min_value=-1, max_value=m.MAX_HISTORY_LIMIT + 1),
    "name": st.sampled_from(NAMES),
    "topic": st.sampled_from(["", "plans", "x" * (m.MAX_TOPIC_CHARS + 1)]),
    "reason": st.sampled_from(["", "lunch", "x" * (m.MAX_AWAY_CHARS + 1)]),
}
field_names = st.sampled_from([*plausible, "type", "seq", "extra"]) | st.text(max_size=8)


@st.composite
def request_like(draw: st.DrawFn) -> dict[str, Any]:
    """A dict with a real request type, its own fields (often plausible, sometimes junk) and random others."""
    kind = draw(st.sampled_from(sorted(m.REQUESTS)))
    env: dict[str, Any] = {"type": kind}
    for field in m.REQUESTS[kind]:
        if draw(st.integers(0, 9)) < 8:  # sometimes a required field is missing
            env[field] = draw(st.one_of(plausible[field], json_values))
    env.update(draw(st.dictionaries(field_names.filter(lambda k: k != "type"), json_values, max_size=3)))
    return env


def check_parse(frames: list[bytes]) -> None:
    try:
        request = m.parse_request(frames)
    except m.ProtocolError as exc:
        assert isinstance(exc.code, m.ErrorCode)
        env = exc.envelope()
        assert env["type"] == "error"
        assert "id" not in env or (type(env["id"]) is str and 1 <= len(env["id"]) <= m.MAX_ID_CHARS)
        msgspec.json.encode(env)
        return
    assert type(request) is dict
    assert request["type"] in m.REQUESTS
    assert set(request) <= {"type", *m.REQUESTS[request["type"]]}


def check_outputs(out: Any, core: ChatCore) -> None:
    assert type(out) is list
    for item in out:
        assert isinstance(item, (Reply, Publish))
        payload = msgspec.json.decode(item.payload)
        assert b"\n" not in item.payload
        if isinstance(item, Publish):
            assert type(payload) is dict  # the core publishes events one by one; the broker batches them
            assert item.topic in (m.SYS_TOPIC, m.room_topic(payload.get("room", "")))
        envelopes = payload if type(payload) is list else [payload]  # the replies to a batch may be batched
        assert envelopes and all(type(env) is dict and type(env.get("type")) is str for env in envelopes)


# --- parse_request ------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_parse_request_on_any_bytes_returns_a_dict_or_raises_protocol_error(data: bytes) -> None:
    check_parse([data])


@FUZZ
@given(st.lists(st.binary(max_size=50), max_size=4))
def test_parse_request_on_any_frames_returns_a_dict_or_raises_protocol_error(frames: list[bytes]) -> None:
    check_parse(frames)


@FUZZ
@given(json_values)
def test_parse_request_on_any_json_value_returns_a_dict_or_raises_protocol_error(value: Any) -> None:
    check_parse([msgspec.json.encode(value)])


@FUZZ
@given(request_like())
def test_parse_request_on_request_like_dicts_returns_a_dict_or_raises_protocol_error(env: dict) -> None:
    check_parse([msgspec.json.encode(env)])


@FUZZ
@given(request_like())
def test_parse_request_accepts_exactly_what_it_returns(env: dict) -> None:
    """Whatever passes validation passes it again unchanged: the checks are idempotent."""
    try:
        request = m.parse_request([msgspec.json.encode(env)])
    except m.ProtocolError:
        return
    assert m.parse_request([msgspec.json.encode(request)]) == request


# --- ChatCore.handle ----------------------------------------------------------------------


def core_with_a_session() -> ChatCore:
    core = ChatCore(ChatConfig(rate_limit=0.0, source_rate=0.0), epoch="e")
    core.handle(b"A", [b'{"type": "hello", "user": "alice", "rooms": ["general", "dev"]}'], 0.0)
    core.handle(b"B", [b'{"type": "hello", "user": "bob"}'], 0.0)
    return core


@FUZZ
@given(st.sampled_from([b"A", b"B", b"C"]), st.lists(st.binary(max_size=80), max_size=3))
def test_handle_never_raises_on_any_frames(peer: bytes, frames: list[bytes]) -> None:
    core = core_with_a_session()
    check_outputs(core.handle(peer, frames, 1.0), core)


@FUZZ
@given(st.sampled_from([b"A", b"B", b"C"]), json_values)
def test_handle_never_raises_on_any_json_value(peer: bytes, value: Any) -> None:
    core = core_with_a_session()
    check_outputs(core.handle(peer, [msgspec.json.encode(value)], 1.0), core)


@settings(FUZZ, max_examples=150)
@given(st.lists(st.tuples(st.sampled_from([b"A", b"B", b"C"]), request_like()), min_size=1, max_size=6))
def test_handle_never_raises_on_request_like_dicts(requests: list[tuple[bytes, dict]]) -> None:
    core = core_with_a_session()
    for now, (peer, env) in enumerate(requests, start=1):
        check_outputs(core.handle(peer, [msgspec.json.encode(env)], float(now)), core)
        check_outputs(core.tick(float(now)), core)


# --- ChatCore, stateful -------------------------------------------------------------------

PEERS = [b"p0", b"p1", b"p2"]
USERS = ["alice", "Alice", "ALICE", "bob", "Bob", "carol"]
CHAT_ROOMS = ["general", "general", "dev", "ops", "qa"]


class ChatMachine(RuleBasedStateMachine):
    """Random requests from several peers, time moving on; the core's books must always balance."""

    @initialize(
        rate_limit=st.sampled_from([0.0, 2.0]),
        history_kept=st.sampled_from([3, 1000]),
        max_rooms=st.sampled_from([3, 10_000]),
    )
    def start(self, rate_limit: float, history_kept: int, max_rooms: int) -> None:
        config = ChatConfig(
            heartbeat=1.0,
            session_timeout=3.0,
            history_on_join=min(2, history_kept),
            history_kept=history_kept,
            max_rooms=max_rooms,
            rate_limit=rate_limit,
            rate_burst=3.0,
        )
        self.core = ChatCore(config, epoch="e", now=0.0)
        self.now = 0.0
        self.seq: dict[bytes, int] = {}  # last seq seen on each room topic
        self.ids = 0
        self.send(PEERS[0], {"type": "hello", "user": "alice", "rooms": ["general", "dev"]})
        self.send(PEERS[1], {"type": "hello", "user": "bob"})

    def send(self, peer: bytes, env: dict) -> list:
        out = self.core.handle(peer, [msgspec.json.encode(env)], self.now)
        self.check(out)
        return out

    def check(self, out: list) -> None:
        check_outputs(out, self.core)
        for item in out:
            if isinstance(item, Publish) and item.topic != m.SYS_TOPIC:
                event = msgspec.json.decode(item.payload)
                if event["type"] == "head":  # not an event: the room's newest seq, told again
                    assert event["seq"] == self.seq.get(item.topic, 0), (item.topic, event)
                    continue
                assert event["seq"] == self.seq.get(item.topic, 0) + 1, (item.topic, event)
                self.seq[item.topic] = event["seq"]
            elif isinstance(item, Reply):
                for reply in m.feed_events(item.payload):  # one reply, or the batch answering a batch
                    got = [e["seq"] for e in reply.get("events", reply.get("history", []))]
                    assert all(b == a + 1 for a, b in itertools.pairwise(got)), got  # history is contiguous
                    if reply["type"] in ("history", "joined") and reply["room"] in self.core.rooms:
                        assert reply["seq"] == self.core.rooms[reply["room"]].seq

    def next_id(self) -> str:
        self.ids += 1
        return str(self.ids)

    @rule(
        peer=st.sampled_from(PEERS),
        user=st.sampled_from(USERS),
        rooms=st.none() | st.lists(st.sampled_from(CHAT_ROOMS), max_size=3),
    )
    def hello(self, peer: bytes, user: str, rooms: list[str] | None) -> None:
        env: dict[str, Any] = {"type": "hello", "user": user}
        if rooms is not None:
            env["rooms"] = rooms
        self.send(peer, env)

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(CHAT_ROOMS))
    def join(self, peer: bytes, room: str) -> None:
        self.send(peer, {"type": "join", "room": room})

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(CHAT_ROOMS))
    def leave(self, peer: bytes, room: str) -> None:
        self.send(peer, {"type": "leave", "room": room})

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(CHAT_ROOMS), me=st.booleans(), user=st.sampled_from(USERS))
    def msg(self, peer: bytes, room: str, me: bool, user: str) -> None:
        msg_id = self.next_id()
        out = self.send(peer, {"type": "msg", "room": room, "text": "hi", "id": msg_id, "me": me, "user": user})
        session = self.core.sessions.get(peer)
        for event in [msgspec.json.decode(o.payload) for o in out if isinstance(o, Publish)]:
            assert session is not None
            assert event["user"] == session.user  # never the envelope's "user"
            assert event["id"] == msg_id

    @rule(peer=st.sampled_from(PEERS), to=st.sampled_from(USERS))
    def dm(self, peer: bytes, to: str) -> None:
        out = self.send(peer, {"type": "dm", "to": to, "text": "psst", "id": self.next_id()})
        assert not any(isinstance(o, Publish) for o in out)

    @rule(peer=st.sampled_from(PEERS), room=st.sampled_from(CHAT_ROOMS))
    def who(self, peer: bytes, room: str) -> None:
        self.send(peer, {"type": "who", "room": room})

    @rule(
        peer=st.sampled_from(PEERS),
        room=st.sampled_from(CHAT_ROOMS),
        after=st.integers(0, 20),
        limit=st.integers(1, 5),
    )
    def history(self, peer: bytes, room: str, after: int, limit: int) -> None:
        out = self.send(peer, {"type": "history", "room": room, "after": after, "limit": limit})
        reply = msgspec.json.decode(out[0].payload)
        if reply["type"] == "error":  # a session's history request spends a token
            assert reply["code"] == "rate_limited"
            return
        events = reply["events"]
        assert len(events) <= limit
        assert all(e["seq"] > after for e in events)

    @rule(peer=st.sampled_from(PEERS))
    def ping(self, peer: bytes) -> None:
        self.send(peer, {"type": "ping"})

    @rule(peer=st.sampled_from(PEERS))
    def bye(self, peer: bytes) -> None:
        self.send(peer, {"type": "bye"})
        assert peer not in self.core.sessions

    @rule(seconds=st.sampled_from([0.1, 0.3, 1.0, 2.5, 4.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        out = self.core.tick(self.now)
        self.check(out)
        for session in self.core.sessions.values():
            assert self.now - session.last_seen <= self.core.config.session_timeout

    @rule(data=st.data())
    def junk(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(PEERS))
        self.check(self.core.handle(peer, [data.draw(st.binary(max_size=40))], self.now))

    @invariant()
    def names_are_unique_case_insensitively(self) -> None:
        names = [s.user.casefold() for s in self.core.sessions.values()]
        assert len(names) == len(set(names))
        assert set(self.core.by_name) == set(names)
        assert all(self.core.by_name[s.user.casefold()] is s for s in self.core.sessions.values())

    @invariant()
    def sessions_rooms_match_room_members(self) -> None:
        for peer, session in self.core.sessions.items():
            assert session.peer == peer
            for room in session.rooms:
                assert session.user in self.core.rooms[room].users
        for name, room in self.core.rooms.items():
            assert room.users == sorted(room.users, key=str.casefold)  # kept in display order
            assert room.folded == [user.casefold() for user in room.users]
            for key in room.folded:
                holder = self.core.by_name.get(key)
                assert holder is not None
                assert name in holder.rooms

    @invariant()
    def limits_hold(self) -> None:
        assert len(self.core.rooms) <= self.core.config.max_rooms
        for session in self.core.sessions.values():
            assert len(session.rooms) <= m.MAX_ROOMS_PER_SESSION
        for room in self.core.rooms.values():
            assert len(room.history) <= self.core.config.history_kept
            if room.history:
                assert msgspec.json.decode(room.history[-1])["seq"] == room.seq
                assert self.seq[room.feed] == room.seq


ChatMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_chat_machine = ChatMachine.TestCase


# --- FeedSequencer ------------------------------------------------------------------------


@FUZZ
@given(st.data(), st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=5))
def test_sequencer_delivers_each_event_once_in_order_whatever_the_arrival(
    data: st.DataObject, count: int, baseline: int
) -> None:
    events = [m.MsgEvent(room="r", user="u", text="t", id="i", seq=n) for n in range(1, count + 1)]
    arrivals = data.draw(st.lists(st.sampled_from(events), max_size=3 * count))
    expect_at = data.draw(st.integers(0, len(arrivals)))
    seq = FeedSequencer()
    delivered: list[int] = []
    for i, event in enumerate(arrivals):
        if i == expect_at:
            delivered += [e.seq for e in seq.expect("r", baseline)[0]]
        delivered += [e.seq for e in seq.push(event)[0]]
    if expect_at >= len(arrivals):
        delivered += [e.seq for e in seq.expect("r", baseline)[0]]
    # The history reply: everything after the baseline, up to the room's head (count).
    delivered += [e.seq for e in seq.fill("r", [e for e in events if e.seq > baseline], count)[0]]
    assert delivered == list(range(baseline + 1, count + 1))
    assert seq.lost == 0
    assert seq.held == {}
