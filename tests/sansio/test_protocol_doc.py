"""docs/protocol.md is the contract clients in other languages are written from: what it says about
error ids and repeated hellos holds in ChatCore, and its examples are what the broker really sends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

import messages as m
from chat import ChatConfig, ChatCore, Publish, Reply
from store import MemoryStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
A, B, C = b"peer-a", b"peer-b", b"peer-c"
LONG_ID = "i" * (m.MAX_ID_CHARS + 1)


def make(**config: Any) -> ChatCore:
    return ChatCore(ChatConfig(**config), epoch="epoch-1", now=0.0)


def send(core: ChatCore, peer: bytes, env: Any, now: float = 0.0) -> list[Reply | Publish]:
    return core.handle(peer, [msgspec.json.encode(env)], now)


def replies(out: list[Reply | Publish], peer: bytes = A) -> list[dict[str, Any]]:
    return [msgspec.json.decode(o.payload) for o in out if type(o) is Reply and o.peer == peer]


def publishes(out: list[Reply | Publish]) -> list[dict[str, Any]]:
    return [msgspec.json.decode(o.payload) for o in out if type(o) is Publish]


def error(out: list[Reply | Publish], peer: bytes = A) -> dict[str, Any]:
    (reply,) = replies(out, peer)
    assert reply["type"] == "error", reply
    return reply


def hello(core: ChatCore, peer: bytes, user: str, **extra: Any) -> list[Reply | Publish]:
    return send(core, peer, {"type": "hello", "user": user, **extra})


# --- every error about a request echoes its valid id ------------------------------------------------


def test_name_taken_echoes_the_hello_id() -> None:
    core = make()
    hello(core, A, "alice")
    assert error(hello(core, B, "ALICE", id="h1"), B) == {
        "type": "error",
        "code": "name_taken",
        "detail": "'ALICE' is taken; choose another name",
        "id": "h1",
    }


def test_session_exists_echoes_the_hello_id() -> None:
    core = make()
    hello(core, A, "alice")
    reply = error(hello(core, A, "carol", id="h2"))
    assert (reply["code"], reply["id"]) == ("session_exists", "h2")


def test_not_in_room_on_leave_echoes_the_id() -> None:
    core = make()
    hello(core, A, "alice")
    reply = error(send(core, A, {"type": "leave", "room": "dev", "id": "l1"}))
    assert (reply["code"], reply["id"]) == ("not_in_room", "l1")


@pytest.mark.parametrize(
    ("env", "code"),
    [
        ({"type": "join", "room": "dev"}, "too_many_rooms"),  # the session is in its one room already
        ({"type": "join", "room": "Dev"}, "bad_name"),
        ({"type": "who", "room": "no/such"}, "bad_name"),
        ({"type": "history", "room": "general", "limit": 0}, "bad_field"),
        ({"type": "history", "room": "general", "after": 1.0}, "bad_field"),
        ({"type": "hello", "user": "alice", "rooms": ["general", "dev"]}, "too_many_rooms"),
        ({"type": "welcome"}, "unknown_type"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["type"],
)
def test_errors_of_every_request_type_echo_the_id(env: dict[str, Any], code: str) -> None:
    core = make(max_rooms_per_session=1)
    hello(core, A, "alice")
    reply = error(send(core, A, {**env, "id": "r-7"}))
    assert (reply["code"], reply["id"]) == (code, "r-7")


def test_requests_without_a_session_echo_the_id() -> None:
    core = make()
    for kind in ("join", "who", "leave"):
        reply = error(send(core, A, {"type": kind, "room": "general", "id": f"{kind}-1"}))
        assert (reply["code"], reply["id"]) == ("no_session", f"{kind}-1")


def test_refused_writes_echo_the_id() -> None:
    core = make()
    hello(core, A, "alice")
    core.unavailable = "disk full"
    for env in ({"type": "bye"}, {"type": "hello", "user": "alice"}, {"type": "dm", "to": "alice", "text": "x"}):
        reply = error(send(core, A, {**env, "id": "w-1"}))
        assert (reply["code"], reply["id"]) == ("unavailable", "w-1")


def test_a_join_with_an_id_succeeds_and_its_reply_does_not_echo_it() -> None:
    core = make()
    hello(core, A, "alice")
    (joined,) = replies(send(core, A, {"type": "join", "room": "dev", "id": "j1"}))
    assert joined["type"] == "joined" and "id" not in joined


@pytest.mark.parametrize("bad_id", [LONG_ID, "", 7, ["j"]], ids=repr)
def test_an_invalid_id_is_never_echoed_and_only_msg_refuses_it(bad_id: Any) -> None:
    core = make()
    hello(core, A, "alice")
    assert "id" not in error(send(core, A, {"type": "leave", "room": "dev", "id": bad_id}))
    (joined,) = replies(send(core, A, {"type": "join", "room": "dev", "id": bad_id}))
    assert joined["type"] == "joined"  # ignored on other requests
    reply = error(send(core, A, {"type": "msg", "room": "general", "text": "hi", "id": bad_id}))
    assert reply["code"] == "bad_field" and "id" not in reply


def test_errors_in_a_batch_echo_each_element_id() -> None:
    core = make()
    hello(core, A, "alice")
    batch = [{"type": "leave", "room": "dev", "id": "b1"}, 5, {"type": "join", "room": "X", "id": "b2"}]
    (frame,) = replies(send(core, A, batch))  # the replies to a batch come back as one array
    assert [(r["code"], r.get("id")) for r in frame] == [
        ("not_in_room", "b1"),
        ("bad_envelope", None),
        ("bad_name", "b2"),
    ]


def test_frame_level_errors_carry_no_id() -> None:
    core = make()
    assert "id" not in error(core.handle(A, [b'{"type":"ping","id":"p1"'], 0.0))  # bad_json
    assert "id" not in error(core.handle(A, [b"", b'{"type":"ping","id":"p1"}'], 0.0))  # two frames
    assert "id" not in error(send(core, A, []))  # an empty batch


# --- hello: repeated, and all or nothing -------------------------------------------------------------


def test_a_repeated_hello_keeps_the_rooms_it_leaves_out() -> None:
    core = make()
    hello(core, A, "alice", rooms=["general", "dev"])
    out = hello(core, A, "Alice", rooms=["dev", "ops"])
    got = replies(out)
    assert got[0] == {**got[0], "type": "welcome", "user": "alice", "rooms": ["dev", "ops"]}
    assert [(r["type"], r["room"]) for r in got[1:]] == [("joined", "dev"), ("joined", "ops")]
    assert [(e["type"], e["room"]) for e in publishes(out)] == [("join", "ops")]  # no leave for general
    assert list(core.sessions[A].rooms) == ["general", "dev", "ops"]


def test_a_repeated_hello_without_rooms_joins_general_and_an_empty_list_changes_nothing() -> None:
    core = make()
    hello(core, A, "alice", rooms=["dev"])
    out = hello(core, A, "alice")
    assert [(e["type"], e["room"]) for e in publishes(out)] == [("join", "general")]
    out = hello(core, A, "alice", rooms=[])
    assert [r["type"] for r in replies(out)] == ["welcome"] and not publishes(out)
    assert list(core.sessions[A].rooms) == ["dev", "general"]


def test_one_bad_room_refuses_the_whole_hello() -> None:
    core = make()
    out = hello(core, A, "alice", rooms=["general", "Dev", "ops"], id="h1")
    assert (error(out)["code"], error(out)["id"]) == ("bad_name", "h1")
    assert not publishes(out) and not core.sessions and not core.rooms
    hello(core, A, "alice", rooms=["general"])
    out = hello(core, A, "alice", rooms=["dev", "bad room"])
    assert error(out)["code"] == "bad_name" and not publishes(out)
    assert list(core.sessions[A].rooms) == ["general"]


# --- the document itself ----------------------------------------------------------------------------

TEXT = DOC.read_text(encoding="utf-8")


def fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", TEXT, re.S | re.M)


def table(header: str) -> list[list[str]]:
    """The rows of the Markdown table under ``header`` (its first line), cells stripped."""
    start = TEXT.index(header + "\n")
    rows = []
    for line in TEXT[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def code(cell: str) -> str:
    found = re.fullmatch(r"`([a-z_]+)`", cell)
    assert found, cell
    return found.group(1)


ENVELOPE_TABLE = "| type | direction | socket | section |"
DOC_TYPES = {code(row[0]) for row in table(ENVELOPE_TABLE)}
FEED_TYPES = {code(row[0]) for row in table(ENVELOPE_TABLE) if row[2].startswith("feed")}


def check_envelope(value: Any) -> None:
    assert type(value) is dict and value.get("type") in DOC_TYPES, value
    for event in value.get("events", []) + value.get("history", []):  # events in history and joined replies
        assert type(event) is dict and event.get("type") in FEED_TYPES, event


def test_every_json_example_parses_and_has_a_documented_type() -> None:
    blocks = fenced("json")
    assert len(blocks) >= 10
    for block in blocks:
        for line in block.splitlines():
            value = json.loads(line)
            for env in value if type(value) is list else [value]:
                check_envelope(env)


def test_the_documented_types_and_error_codes_are_the_protocol() -> None:
    requests = {code(row[0]) for row in table(ENVELOPE_TABLE) if row[1] == "client → broker"}
    assert requests == set(m.REQUESTS)
    assert {code(row[0]) for row in table("| code | meaning |")} == {c.value for c in m.ErrorCode}
    for row in table("| request | fields | needs a session | reply |"):
        kind = code(row[0])
        fields = {f.strip("`?") for f in row[1].split(", ")} - {"—"}
        assert fields - {"id"} == set(m.REQUESTS[kind]) - {"id"}, kind
        assert "id" in fields, kind  # every request may carry an id, which its errors echo
        assert (row[2] == "no") == (kind in m.SESSIONLESS), kind


def transcript() -> list[tuple[str, str, str, Any]]:
    """Section 7 as (who, direction, topic, envelope)."""
    (block,) = fenced("text")
    lines = []
    for line in block.splitlines():
        found = re.fullmatch(r"(alice DEALER|bob DEALER|feed) (->|<-) (?:(\S+/) )?([\[{].*)", line)
        assert found, line
        who, arrow, topic, payload = found.groups()
        lines.append((who.split()[0], arrow, topic or "", json.loads(payload)))
    return lines


def without_ts(value: Any) -> Any:
    if type(value) is dict:
        return {k: without_ts(v) for k, v in value.items() if k != "ts"}
    if type(value) is list:
        return [without_ts(v) for v in value]
    return value


def test_the_session_transcript_is_what_the_core_sends() -> None:
    store = MemoryStore()
    store.history_id = "52d0c3e1a4f9b807"
    core = ChatCore(ChatConfig(), store=store, epoch="9f1c2a7e5b3d4c11", now=0.0)
    peers = {"alice": A, "bob": B}
    names = {A: "alice", B: "bob"}
    hello(core, B, "bob")  # "Bob has said hello already and is in general"
    pending: list[tuple[str, str, str, Any]] = []
    for who, arrow, topic, env in transcript():
        if arrow == "->":
            assert who != "feed"
            out = send(core, peers[who], env)
        elif not pending and topic == "sys/":
            out = core.tick(core.next_heartbeat)
        else:
            out = []
        for o in out:
            if type(o) is Reply:
                pending.append((names[o.peer], "<-", "", msgspec.json.decode(o.payload)))
            else:
                pending.append(("feed", "<-", o.topic.decode(), msgspec.json.decode(o.payload)))
        if arrow == "<-":
            got = pending.pop(0)
            assert got[:3] == (who, arrow, topic) and without_ts(got[3]) == without_ts(env), (got, env)
    assert not pending
