"""The protocol module on its own: request validation, error envelopes, topics, endpoints, safe_text."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cli
import messages as m
from messages import ErrorCode, ProtocolError
from safe_text import safe_text


def frame(env: Any) -> list[bytes]:
    return [msgspec.json.encode(env)]


def error_of(frames: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        m.parse_request(frames)
    return info.value


def code_of(env: Any) -> ErrorCode:
    return error_of(frame(env)).code


# --- valid requests: only the checked fields come back ------------------------------------

VALID = [
    ({"type": "hello", "user": "alice"}, {"type": "hello", "user": "alice"}),
    (
        {"type": "hello", "user": "Al_ice.9-x", "rooms": ["general", "dev"]},
        {"type": "hello", "user": "Al_ice.9-x", "rooms": ["general", "dev"]},
    ),
    ({"type": "join", "room": "dev"}, {"type": "join", "room": "dev"}),
    ({"type": "leave", "room": "dev-2_x"}, {"type": "leave", "room": "dev-2_x"}),
    (
        {"type": "msg", "room": "general", "text": "hi", "id": "1"},
        {"type": "msg", "room": "general", "text": "hi", "id": "1"},
    ),
    (
        {"type": "msg", "room": "general", "text": "waves", "id": "1", "me": True},
        {"type": "msg", "room": "general", "text": "waves", "id": "1", "me": True},
    ),
    ({"type": "dm", "to": "bob", "text": "psst", "id": "d1"}, {"type": "dm", "to": "bob", "text": "psst", "id": "d1"}),
    (
        {"type": "dm", "to": "bob", "text": "nods", "id": "d1", "me": False},
        {"type": "dm", "to": "bob", "text": "nods", "id": "d1", "me": False},
    ),
    ({"type": "who", "room": "general"}, {"type": "who", "room": "general"}),
    ({"type": "history", "room": "general"}, {"type": "history", "room": "general"}),
    (
        {"type": "history", "room": "general", "after": 0, "limit": m.MAX_HISTORY_LIMIT},
        {"type": "history", "room": "general", "after": 0, "limit": m.MAX_HISTORY_LIMIT},
    ),
    ({"type": "ping"}, {"type": "ping"}),
    ({"type": "bye"}, {"type": "bye"}),
    ({"type": "rooms"}, {"type": "rooms"}),
    (
        {"type": "topic", "room": "dev", "topic": "plans", "id": "t1"},
        {"type": "topic", "room": "dev", "topic": "plans", "id": "t1"},
    ),
    (
        {"type": "topic", "room": "dev", "topic": "", "id": "t2"},
        {"type": "topic", "room": "dev", "topic": "", "id": "t2"},
    ),
    ({"type": "nick", "name": "bob"}, {"type": "nick", "name": "bob"}),
    ({"type": "away", "reason": "lunch", "id": "a1"}, {"type": "away", "reason": "lunch", "id": "a1"}),
    ({"type": "away"}, {"type": "away"}),
]


@pytest.mark.parametrize(("env", "expected"), VALID, ids=[e["type"] for e, _ in VALID])
def test_valid_request_returns_its_checked_fields(env: dict, expected: dict) -> None:
    assert m.parse_request(frame(env)) == expected


@pytest.mark.parametrize(("env", "expected"), VALID, ids=[e["type"] for e, _ in VALID])
def test_unknown_extra_fields_are_dropped(env: dict, expected: dict) -> None:
    noisy = {**env, "extra": 1, "nested": {"a": [1, 2]}, "user_agent": "x"}
    if env["type"] in ("ping", "bye", "join", "leave", "who", "history"):
        noisy["user"] = "mallory"  # a field of another request type is just as unknown here
    assert m.parse_request(frame(noisy)) == expected


def test_every_request_type_is_covered_by_the_valid_cases() -> None:
    assert {env["type"] for env, _ in VALID} == set(m.REQUESTS)


def test_parse_request_returns_a_new_dict() -> None:
    env = {"type": "ping"}
    result = m.parse_request(frame(env))
    result["x"] = 1
    assert m.parse_request(frame(env)) == {"type": "ping"}


def test_hello_drops_repeated_rooms_keeping_order() -> None:
    req = m.parse_request(frame({"type": "hello", "user": "a", "rooms": ["dev", "general", "dev"]}))
    assert req["rooms"] == ["dev", "general"]


def test_hello_with_empty_room_list_is_valid() -> None:
    assert m.parse_request(frame({"type": "hello", "user": "a", "rooms": []}))["rooms"] == []


def test_null_optional_field_counts_as_absent() -> None:
    assert m.parse_request(frame({"type": "history", "room": "general", "after": None})) == {
        "type": "history",
        "room": "general",
    }


def test_longest_name_and_room_are_accepted() -> None:
    assert m.parse_request(frame({"type": "hello", "user": "a" * 32}))["user"] == "a" * 32
    assert m.parse_request(frame({"type": "join", "room": "r" * 32}))["room"] == "r" * 32


def test_longest_id_is_accepted() -> None:
    env = {"type": "msg", "room": "general", "text": "hi", "id": "i" * m.MAX_ID_CHARS}
    assert m.parse_request(frame(env))["id"] == "i" * m.MAX_ID_CHARS


# --- bad_json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"{", b"{'type': 'ping'}", b"NaN", b"1e400", b"[" * 2000],
    ids=["empty", "text", "truncated", "single-quotes", "nan", "infinity", "too-deep"],
)
def test_not_json_is_bad_json(data: bytes) -> None:
    assert error_of([data]).code is ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe{}", b'{"type": "ping", "x": "\xc3"}', b'{"type": "msg", "text": "\xed\xa0\x80"}', b'"\\ud800"'],
    ids=["bom-ish", "truncated-sequence", "encoded-surrogate", "escaped-lone-surrogate"],
)
def test_invalid_utf8_is_bad_json(data: bytes) -> None:
    assert error_of([data]).code is ErrorCode.BAD_JSON


def test_bad_json_error_has_no_id() -> None:
    assert "id" not in error_of([b'{"id": "x", ']).envelope()


# --- bad_envelope -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 2, 3])
def test_not_exactly_one_frame_is_bad_envelope(count: int) -> None:
    assert error_of(frame({"type": "ping"}) * count).code is ErrorCode.BAD_ENVELOPE


@pytest.mark.parametrize("value", [[1, 2], "ping", 42, 1.5, True, None], ids=repr)
def test_non_object_is_bad_envelope(value: Any) -> None:
    assert code_of(value) is ErrorCode.BAD_ENVELOPE


@pytest.mark.parametrize("env", [{}, {"type": None}, {"type": 7}, {"type": ["ping"]}, {"kind": "ping"}], ids=repr)
def test_missing_or_non_string_type_is_bad_envelope(env: dict) -> None:
    assert code_of(env) is ErrorCode.BAD_ENVELOPE


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"type": "hello"}, "user"),
        ({"type": "join"}, "room"),
        ({"type": "leave"}, "room"),
        ({"type": "msg", "text": "hi", "id": "1"}, "room"),
        ({"type": "msg", "room": "general", "id": "1"}, "text"),
        ({"type": "msg", "room": "general", "text": "hi"}, "id"),
        ({"type": "dm", "text": "hi", "id": "1"}, "to"),
        ({"type": "dm", "to": "bob", "id": "1"}, "text"),
        ({"type": "dm", "to": "bob", "text": "hi"}, "id"),
        ({"type": "who"}, "room"),
        ({"type": "history"}, "room"),
        ({"type": "hello", "user": None}, "user"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["type"],
)
def test_missing_required_field_is_bad_envelope(env: dict, missing: str) -> None:
    error = error_of(frame(env))
    assert error.code is ErrorCode.BAD_ENVELOPE
    assert repr(missing) in error.detail


# --- unknown_type -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["teleport", "welcome", "ack", "error", "PING", "", "hello "])
def test_unknown_type(kind: str) -> None:
    assert code_of({"type": kind}) is ErrorCode.UNKNOWN_TYPE


def test_unknown_type_detail_is_bounded() -> None:
    assert len(error_of(frame({"type": "x" * 10_000})).detail) < 100


# --- bad_field ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"type": "hello", "user": 42},
        {"type": "hello", "user": "ok", "rooms": "general"},
        {"type": "hello", "user": "ok", "rooms": {"general": 1}},
        {"type": "hello", "user": "ok", "rooms": [1]},
        {"type": "join", "room": ["general"]},
        {"type": "msg", "room": "general", "text": "", "id": "1"},
        {"type": "msg", "room": "general", "text": ["hi"], "id": "1"},
        {"type": "msg", "room": "general", "text": "hi", "id": 5},
        {"type": "msg", "room": "general", "text": "hi", "id": ""},
        {"type": "msg", "room": "general", "text": "hi", "id": "i" * (m.MAX_ID_CHARS + 1)},
        {"type": "msg", "room": "general", "text": "hi", "id": "1", "me": 1},
        {"type": "msg", "room": "general", "text": "hi", "id": "1", "me": "yes"},
        {"type": "dm", "to": 3, "text": "hi", "id": "1"},
        {"type": "history", "room": "general", "after": -1},
        {"type": "history", "room": "general", "after": 1.5},
        {"type": "history", "room": "general", "after": True},
        {"type": "history", "room": "general", "after": "3"},
        {"type": "history", "room": "general", "limit": 0},
        {"type": "history", "room": "general", "limit": m.MAX_HISTORY_LIMIT + 1},
        {"type": "history", "room": "general", "limit": False},
    ],
    ids=repr,
)
def test_wrong_type_or_value_is_bad_field(env: dict) -> None:
    assert code_of(env) is ErrorCode.BAD_FIELD


# --- bad_name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "two words",
        ".dot",
        "-dash",
        "a" * 33,
        "évé",
        "a/b",
        "evil\x1b[2J",
        "tab\t",
        "new\nline",
        "system",
        "SYSTEM",
        "Broker",
        "server",
        "admin",
    ],
    ids=repr,
)
def test_bad_user_name_is_bad_name(name: str) -> None:
    assert code_of({"type": "hello", "user": name}) is ErrorCode.BAD_NAME
    assert code_of({"type": "dm", "to": name, "text": "hi", "id": "1"}) is ErrorCode.BAD_NAME


@pytest.mark.parametrize("name", ["systems", "admin2", "_admin", "a", "A.b-c_9", "0"])
def test_names_near_the_reserved_ones_are_fine(name: str) -> None:
    assert m.parse_request(frame({"type": "hello", "user": name}))["user"] == name


@pytest.mark.parametrize(
    "room",
    ["", "General", "a/b", "has space", "-dev", "_dev", "r" * 33, "dév", "dev.", "room/", "\u202egeneral"],
    ids=repr,
)
def test_bad_room_name_is_bad_name(room: str) -> None:
    for env in (
        {"type": "join", "room": room},
        {"type": "leave", "room": room},
        {"type": "who", "room": room},
        {"type": "history", "room": room},
        {"type": "msg", "room": room, "text": "hi", "id": "1"},
        {"type": "hello", "user": "ok", "rooms": ["general", room]},
    ):
        assert code_of(env) is ErrorCode.BAD_NAME, env


# --- too_large ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["msg", "dm"])
def test_text_of_max_chars_passes(kind: str) -> None:
    env = {"type": kind, "room": "general", "to": "bob", "text": "x" * m.MAX_TEXT_CHARS, "id": "1"}
    assert len(m.parse_request(frame(env))["text"]) == m.MAX_TEXT_CHARS


@pytest.mark.parametrize("kind", ["msg", "dm"])
def test_text_one_over_max_chars_is_too_large(kind: str) -> None:
    env = {"type": kind, "room": "general", "to": "bob", "text": "x" * (m.MAX_TEXT_CHARS + 1), "id": "1"}
    assert code_of(env) is ErrorCode.TOO_LARGE


def test_text_limit_counts_code_points_not_bytes() -> None:
    env = {"type": "msg", "room": "general", "text": "😀" * m.MAX_TEXT_CHARS, "id": "1"}
    assert m.parse_request(frame(env))["text"] == "😀" * m.MAX_TEXT_CHARS


# --- too_many_rooms -----------------------------------------------------------------------


def test_hello_with_max_rooms_passes() -> None:
    rooms = [f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION)]
    assert m.parse_request(frame({"type": "hello", "user": "a", "rooms": rooms}))["rooms"] == rooms


def test_hello_with_too_many_rooms_is_too_many_rooms() -> None:
    rooms = [f"r{i}" for i in range(m.MAX_ROOMS_PER_SESSION + 1)]
    assert code_of({"type": "hello", "user": "a", "rooms": rooms}) is ErrorCode.TOO_MANY_ROOMS


# --- the error envelope -------------------------------------------------------------------


def test_error_envelope_has_type_code_and_detail() -> None:
    env = error_of(frame({"type": "teleport"})).envelope()
    assert env["type"] == "error"
    assert env["code"] == "unknown_type"
    assert isinstance(env["detail"], str)
    assert env["detail"]


@pytest.mark.parametrize(
    "env",
    [
        {"type": "teleport", "id": "abc"},
        {"type": 7, "id": "abc"},
        {"type": "msg", "room": "general", "text": "", "id": "abc"},
        {"type": "msg", "room": "Bad", "text": "hi", "id": "abc"},
        {"type": "msg", "room": "general", "text": "x" * (m.MAX_TEXT_CHARS + 1), "id": "abc"},
        {"type": "msg", "room": "general", "id": "abc"},
        {"type": "dm", "to": "system", "text": "hi", "id": "abc"},
    ],
    ids=lambda e: e["type"] if isinstance(e["type"], str) else "non-string-type",
)
def test_error_envelope_echoes_a_valid_id(env: dict) -> None:
    assert error_of(frame(env)).envelope()["id"] == "abc"


@pytest.mark.parametrize("bad_id", [5, "", "i" * (m.MAX_ID_CHARS + 1), ["abc"], {"id": "abc"}, True, None], ids=repr)
def test_error_envelope_does_not_echo_an_invalid_id(bad_id: Any) -> None:
    error = error_of(frame({"type": "msg", "room": "general", "text": "", "id": bad_id}))
    assert error.msg_id is None
    assert "id" not in error.envelope()


def test_error_codes_are_their_wire_strings() -> None:
    assert str(ErrorCode.TOO_LARGE) == "too_large"
    assert msgspec.json.decode(m.encode(ProtocolError(ErrorCode.BAD_NAME, "d").envelope()))["code"] == "bad_name"


# --- encoding -----------------------------------------------------------------------------


def test_encode_is_one_line_of_utf8() -> None:
    data = m.encode({"type": "msg", "text": "line1\nline2 😀"})
    assert b"\n" not in data
    assert msgspec.json.decode(data)["text"] == "line1\nline2 😀"


def test_decode_returns_the_value() -> None:
    assert m.decode(b'{"a": [1, "b"]}') == {"a": [1, "b"]}


# --- topics -------------------------------------------------------------------------------


def test_room_topic() -> None:
    assert m.room_topic("general") == b"room/general/"


def test_room_topic_of_a_prefix_room_does_not_prefix_the_longer_one() -> None:
    assert not m.room_topic("general").startswith(m.room_topic("gen"))


@pytest.mark.parametrize("room", ["general", "dev", "a", "r-1_x", "r" * 32])
def test_room_of_topic_inverts_room_topic(room: str) -> None:
    assert m.room_of_topic(m.room_topic(room)) == room


@pytest.mark.parametrize("topic", [b"sys/", b"", b"room", b"room/general", b"other/general/", b"sys/x/"])
def test_room_of_topic_is_none_for_other_topics(topic: bytes) -> None:
    assert m.room_of_topic(topic) is None


# --- endpoints ----------------------------------------------------------------------------


def test_endpoints_default_ports() -> None:
    assert cli.endpoints("localhost") == ("tcp://localhost:5555", "tcp://localhost:5556")


def test_endpoints_ipv4() -> None:
    assert cli.endpoints("10.0.0.7") == ("tcp://10.0.0.7:5555", "tcp://10.0.0.7:5556")


@pytest.mark.parametrize("host", ["::1", "fe80::1", "2001:db8::42"])
def test_endpoints_bracket_a_bare_ipv6_host(host: str) -> None:
    assert cli.endpoints(host) == (f"tcp://[{host}]:5555", f"tcp://[{host}]:5556")


def test_endpoints_keep_an_already_bracketed_ipv6_host() -> None:
    assert cli.endpoints("[::1]") == ("tcp://[::1]:5555", "tcp://[::1]:5556")


def test_endpoints_explicit_router_and_pub_win() -> None:
    assert cli.endpoints("h", "ipc:///tmp/in", "ipc:///tmp/out") == ("ipc:///tmp/in", "ipc:///tmp/out")


def test_endpoints_explicit_router_only() -> None:
    assert cli.endpoints("h", router="inproc://x") == ("inproc://x", "tcp://h:5556")


def test_endpoints_explicit_pub_only() -> None:
    assert cli.endpoints("::1", pub="inproc://y") == ("tcp://[::1]:5555", "inproc://y")


# --- safe_text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["hello", "", "café naïve Ærø", "😀👍🏽 🇫🇷 1️⃣ ❤️", "日本語のテキスト", "Привет", "a b", "100% <b>&amp;</b> \\x1b"],
    ids=repr,
)
def test_safe_text_leaves_plain_unicode_unchanged(text: str) -> None:
    assert safe_text(text) == text


def test_safe_text_escapes_an_ansi_escape_sequence() -> None:
    assert safe_text("\x1b[2Jgone") == "\\x1b[2Jgone"


def test_safe_text_escapes_osc_title_sequence() -> None:
    assert safe_text("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x08", "\x7f"], ids=repr)
def test_safe_text_escapes_c0_and_del(char: str) -> None:
    assert safe_text(f"a{char}b") == f"a\\x{ord(char):02x}b"


@pytest.mark.parametrize("char", ["\x80", "\x85", "\x9b", "\x9d", "\x9f"], ids=repr)
def test_safe_text_escapes_c1_controls(char: str) -> None:
    assert safe_text(f"a{char}b") == f"a\\x{ord(char):02x}b"


@pytest.mark.parametrize(
    "char", ["\u202e", "\u202a", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c"]
)
def test_safe_text_escapes_bidi_controls(char: str) -> None:
    assert safe_text(f"abc{char}def") == f"abc\\u{ord(char):04x}def"


def test_safe_text_trojan_source_is_visible() -> None:
    assert safe_text("user\u202etxt.exe") == "user\\u202etxt.exe"


def test_safe_text_escapes_newline_and_carriage_return() -> None:
    assert safe_text("hi\nbob: fake\rx") == "hi\\x0abob: fake\\x0dx"


def test_safe_text_escapes_line_and_paragraph_separators() -> None:
    assert safe_text("a\u2028b\u2029c") == "a\\u2028b\\u2029c"


def test_safe_text_turns_tab_into_spaces() -> None:
    assert safe_text("a\tb") == "a    b"


@pytest.mark.parametrize("char", ["\xa0", "\u2003", "\u3000", "\u202f"], ids=repr)
def test_safe_text_turns_unusual_spaces_into_a_space(char: str) -> None:
    assert safe_text(f"a{char}b") == "a b"


def test_safe_text_output_is_always_printable() -> None:
    hostile = "".join(chr(c) for c in range(0x00, 0x250)) + "\u202e\u2066\u2028\ufeff\U000e0001"
    assert safe_text(hostile).isprintable()


@pytest.mark.parametrize(
    "text", ["👨\u200d👩\u200d👧", "🏳️\u200d🌈", "می\u200cخواهم"], ids=["family", "rainbow-flag", "zwnj"]
)
def test_safe_text_leaves_joiners_in_emoji_and_scripts_unchanged(text: str) -> None:
    assert safe_text(text) == text


def test_safe_text_keeps_printable_text_around_escapes() -> None:
    assert safe_text("é\x1b😀") == "é\\x1b😀"


@pytest.mark.parametrize("topic", [b"room/", b"room/a/b/", b"room/\xff/"], ids=repr)
def test_room_of_topic_is_none_for_malformed_room_topics(topic: bytes) -> None:
    assert m.room_of_topic(topic) is None


def test_batch_frames_keep_order_and_bounds() -> None:
    payloads = [msgspec.json.encode({"type": "msg", "n": i, "text": "x" * (i % 7)}) for i in range(50)]
    frames = m.batch_frames(payloads, limit=200, max_count=4)
    assert [e["n"] for f in frames for e in m.feed_events(f)] == list(range(50))
    assert all(len(f) <= 200 and len(m.feed_events(f)) <= 4 for f in frames)
    assert m.batch_frames(payloads[:1]) == payloads[:1]  # one envelope is never an array
    big = b'{"type":"msg","text":"' + b"y" * 300 + b'"}'
    assert m.batch_frames([big, payloads[0]], limit=200) == [big, payloads[0]]  # too big to share: alone


def test_batch_frames_fill_exactly_up_to_the_limit() -> None:
    payloads = [b'{"type":"a"}'] * 10  # 12 bytes each: 2 in an array = 1 + 12 + 1 + 12 + 1 = 27 bytes
    assert [len(f) for f in m.batch_frames(payloads, limit=27)] == [27] * 5
    assert [len(f) for f in m.batch_frames(payloads, limit=26)] == [12] * 10


def _greedy_frames(payloads: list[bytes], limit: int, max_count: int) -> list[bytes]:
    """batch_frames written plainly: fill each frame as far as the limits let, in order."""
    frames: list[list[bytes]] = [[]]
    for payload in payloads:
        current = frames[-1]
        size = sum(map(len, current)) + len(current) + 1  # the array: brackets and commas
        if current and (size + 1 + len(payload) > limit or len(current) == max_count):
            frames.append(current := [])
        current.append(payload)
    return [f[0] if len(f) == 1 else b"[" + b",".join(f) + b"]" for f in frames]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=60),
    st.integers(min_value=2, max_value=400),
    st.integers(min_value=0, max_value=8),
)
def test_batch_frames_are_the_greedy_split(payloads: list[bytes], limit: int, max_count: int) -> None:
    assert m.batch_frames(payloads, limit, max_count) == _greedy_frames(payloads, limit, max_count)


# --- the Structs the broker encodes once per message ------------------------------------


@pytest.mark.parametrize(
    ("struct", "same_dict"),
    [
        (
            m.MsgEvent(room="general", user="alice", text="hi", id="1", seq=7, ts=1.5),
            {"type": "msg", "room": "general", "user": "alice", "text": "hi", "id": "1", "seq": 7, "ts": 1.5},
        ),
        (
            m.MsgEvent(room="general", user="alice", text="waves", id="2", me=True, seq=8, ts=2.5),
            {
                "type": "msg",
                "room": "general",
                "user": "alice",
                "text": "waves",
                "id": "2",
                "me": True,
                "seq": 8,
                "ts": 2.5,
            },
        ),
        (
            m.JoinEvent(room="r", user="bob", seq=1, ts=0.0),
            {"type": "join", "room": "r", "user": "bob", "seq": 1, "ts": 0.0},
        ),
        (
            m.LeaveEvent(room="r", user="bob", reason="timeout", seq=2, ts=3.0),
            {"type": "leave", "room": "r", "user": "bob", "reason": "timeout", "seq": 2, "ts": 3.0},
        ),
        (m.Ack(id="1", room="general", seq=7), {"type": "ack", "id": "1", "room": "general", "seq": 7}),
        (m.Ack(id="d1", to="bob"), {"type": "ack", "id": "d1", "to": "bob"}),
    ],
)
def test_an_event_struct_encodes_to_the_bytes_of_the_dict_it_stands_for(struct: Any, same_dict: dict) -> None:
    assert m.encode(struct) == m.encode(same_dict)  # same keys, same order; an unset field is left out


def test_a_newer_brokers_room_events_are_read_as_other_events_not_dropped() -> None:
    """A room event of an unknown type keeps its room and place (``OtherEvent``); a ``history`` holding one keeps
    its known events in ``events`` and the rest in ``others``; a ``joined`` keeps its known recent history;
    an unknown envelope that is no room event is still skipped."""
    poll = {"type": "poll", "room": "general", "user": "bob", "seq": 4, "prev": 3, "ts": 1.0}
    msg = {"type": "msg", "room": "general", "user": "bob", "text": "t", "id": "i", "seq": 3, "prev": 2, "ts": 1.0}
    assert m.read_envelopes(msgspec.json.encode(poll)) == [m.OtherEvent(type="poll", room="general", seq=4, prev=3)]
    [history] = m.read_envelopes(msgspec.json.encode({"type": "history", "room": "general", "events": [msg, poll]}))
    assert isinstance(history, m.History) and [e.seq for e in history.events] == [3]
    assert [e.seq for e in history.others] == [4]
    [joined] = m.read_envelopes(msgspec.json.encode({"type": "joined", "room": "general", "history": [msg, poll]}))
    assert isinstance(joined, m.Joined) and [e.seq for e in joined.history] == [3]
    assert m.read_envelopes(b'[{"type":"sparkle","at":1},' + msgspec.json.encode(msg) + b"]")[0].seq == 3
