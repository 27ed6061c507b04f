"""A front door's history reads from the cluster's log (``front_door.FrontDoor.read``), with a stand-in for the
NATS bridge: the log answers one event per step, so a walk replies in chunks, and a client asking again
(its patience shorter than the walk) joins its walk instead of starting one more.

Found by the 5-minute cluster soak: every restarted front door had its clients' fills walking the log,
each client asked again every 1.5 s, every new request started a new walk, and 30 walks shared the log
until none finished within a client's patience: both loggers stopped for minutes."""

from __future__ import annotations

import itertools

import msgspec
import pytest
import zmq

pytest.importorskip("nats")

from chat import ChatConfig, ChatCore, ReadLog, Reply
from front_door import LOG_PREFIX, MAX_READS, READ_CHUNK, FrontDoor
from nats_bridge import Failed, Stored

A, B = b"peer-a", b"peer-b"


class Bridge:
    """What a front door asks of the bridge, recorded; its answers are handed in by the test."""

    def __init__(self) -> None:
        self.tokens = itertools.count(1)
        self.steps: dict[int, tuple[str, int]] = {}  # token -> (subject, after)
        self.answers: list = []

    def next(self, stream: str, subject: str, after: int) -> int:
        token = next(self.tokens)
        self.steps[token] = (subject, after)
        return token

    def kv(self, *order: object, **options: object) -> int:
        return next(self.tokens)  # a lease renewal: not awaited

    def events(self) -> list:
        answers, self.answers = self.answers, []
        return answers


def event(room: str) -> bytes:
    return msgspec.json.encode({"type": "msg", "room": room, "user": "x", "text": "t", "id": "i", "seq": 0, "prev": 0})


@pytest.fixture
def door() -> FrontDoor:
    core = ChatCore(ChatConfig(), epoch="e", clustered=True)
    return FrontDoor(zmq.Context.instance(), [], core, bridge=Bridge())  # type: ignore[arg-type]


def answer(door: FrontDoor, now: float = 0.0, seq_of=lambda after: after + 3) -> list:
    """The log answers every step waiting: the room's next event, 3 positions on (other rooms between)."""
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    for token, (subject, after) in list(bridge.steps.items()):
        del bridge.steps[token]
        bridge.answers.append(Stored(token, seq_of(after), subject, event(subject[len(LOG_PREFIX) :])))
    return door.handle(now)


def replies(out: list) -> list[dict]:
    return [msgspec.json.decode(o.payload) for o in out if isinstance(o, Reply)]


def walk_until_reply(door: FrontDoor, now: float = 0.0) -> list[dict]:
    for _ in range(READ_CHUNK + 5):
        if got := replies(answer(door, now)):
            return got
    raise AssertionError("no reply")


def test_a_walk_replies_after_a_chunk_with_more(door: FrontDoor) -> None:
    door.read(ReadLog(A, "general", 10, 1000, 100_000, "h1"))
    (reply,) = walk_until_reply(door)
    assert len(reply["events"]) == READ_CHUNK and reply["more"] is True
    seqs = [e["seq"] for e in reply["events"]]
    assert seqs == list(range(13, 13 + 3 * READ_CHUNK, 3))
    assert [e["prev"] for e in reply["events"]] == [10, *seqs[:-1]]  # the walk follows the room
    assert door.walks == {} and door.reads == {}


def test_the_same_client_asking_again_joins_its_walk(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.read(ReadLog(A, "general", 10, 1000, 100_000, "fill.1"))
    for _ in range(5):
        answer(door)
    assert door.read(ReadLog(A, "general", 10, 1000, 100_000, "fill.2")) == []  # its patience ran out
    assert len(bridge.steps) == 1 and len(door.walks) == 1  # no second walk
    (reply,) = walk_until_reply(door)
    assert len(reply["events"]) == READ_CHUNK  # the first five steps count: one walk, one reply


def test_asking_from_elsewhere_drops_the_old_walk(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.read(ReadLog(A, "general", 10, 1000, 100_000, "fill.1"))
    old = dict(bridge.steps)
    door.read(ReadLog(A, "general", 400, 1000, 100_000, "fill.2"))
    bridge.answers = [Stored(token, 999, subject, event("general")) for token, (subject, _) in old.items()]
    for token in old:
        del bridge.steps[token]
    assert door.handle(0.0) == []  # the old walk's answer is for nobody
    (reply,) = walk_until_reply(door)
    assert reply["events"][0]["prev"] == 400


def test_a_walk_stops_where_the_front_doors_memory_begins(door: FrontDoor) -> None:
    door.read(ReadLog(A, "general", 10, 1000, 100_000, "h1", kept_from=20))
    (reply,) = walk_until_reply(door)
    assert [e["seq"] for e in reply["events"]] == [13, 16, 19, 22] and reply["more"] is True


def test_the_walks_reply_ends_at_the_rooms_head(door: FrontDoor) -> None:
    door.read(ReadLog(A, "general", 10, 1000, 19, "h1"))
    (reply,) = walk_until_reply(door)
    assert [e["seq"] for e in reply["events"]] == [13, 16, 19] and "more" not in reply


def test_a_step_the_log_did_not_answer_is_asked_again_then_given_up(door: FrontDoor) -> None:
    bridge: Bridge = door.bridge  # type: ignore[assignment]
    door.read(ReadLog(A, "general", 10, 1000, 100_000, "h1"))
    answer(door)  # one event found
    (token,) = bridge.steps
    del bridge.steps[token]
    bridge.answers = [Failed(token, "timeout")]
    assert door.handle(0.0) == [] and not bridge.steps
    door.tick(0.2)  # a little later
    assert len(bridge.steps) == 1  # asked again
    (token,) = bridge.steps
    del bridge.steps[token]
    bridge.answers = [Failed(token, "timeout")]
    (reply,) = replies(door.handle(1e9))  # long past READ_RETRY_S: what was found, not the room's end
    assert [e["seq"] for e in reply["events"]] == [13] and reply["seq"] > 13


def test_more_walks_than_the_bound_are_refused(door: FrontDoor) -> None:
    for i in range(MAX_READS):
        assert door.read(ReadLog(A, f"room{i}", 10, 1000, 100_000, "h")) == []
    (error,) = replies(door.read(ReadLog(B, "general", 10, 1000, 100_000, "h2")))
    assert (error["code"], error["id"]) == ("unavailable", "h2")
