"""The chat protocol (version 2: ``PROTOCOL_VERSION``): envelopes, limits, error codes and validation.

This module is the executable half of ``docs/protocol.md``; it opens no sockets.
Both the broker and every client use it, so what one side accepts is exactly
what the other side may send.

Wire format, in one paragraph: the inbox carries one frame per message, a UTF-8
JSON object (the envelope) with a ``type``.  The feed carries two frames, the
topic (``room/NAME/`` or ``sys/``) and the envelope.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import msgspec

PROTOCOL_VERSION = 2
DEFAULT_ROOM = "general"
DEFAULT_ROUTER_PORT = 5555
DEFAULT_PUB_PORT = 5556

# --- Limits (each documented in docs/protocol.md, section "Limits") ---------
#: Largest inbox frame.  The broker sets it as ZMQ_MAXMSGSIZE, so libzmq drops
#: the connection of a peer that sends more, before Python ever sees the bytes.
MAX_FRAME_BYTES = 64 * 1024
#: Longest ``text`` of a ``msg`` or ``dm``, in Unicode code points.
MAX_TEXT_CHARS = 4000
#: Longest room ``topic`` (``/topic``), in Unicode code points.
MAX_TOPIC_CHARS = 300
#: Longest away ``reason`` (``/away``), in Unicode code points.
MAX_AWAY_CHARS = 300
#: Longest client-chosen message ``id``.
MAX_ID_CHARS = 64
#: Rooms one session may be in at once (also the longest ``rooms`` in ``hello``).
MAX_ROOMS_PER_SESSION = 32
#: Most items a ``hello``'s ``rooms`` list may have at all, repeats included (bounds the work one frame costs).
MAX_HELLO_ROOM_ITEMS = 256
#: Largest ``limit`` a ``history`` request may ask for.
MAX_HISTORY_LIMIT = 500
#: Events returned by ``history`` when it gives no ``limit``.
DEFAULT_HISTORY_LIMIT = 100
#: Largest ``seq``/``after`` a request may name: SQLite's INTEGER is signed 64-bit.
MAX_SEQ = 2**63 - 1
#: Most bytes of events one reply (``history``, or ``joined``'s history) carries.  A cut ``history``
#: says ``more: true`` and the client asks again from its last event; ``joined`` keeps the newest.
#: One event always goes, whatever its size, so a reply makes progress.
MAX_REPLY_BYTES = 64 * 1024
#: Most requests one inbox frame may carry as a batch (a JSON array of envelopes).  Bounds the work
#: (and the replies) one frame can cause, like MAX_FRAME_BYTES bounds its size.
MAX_BATCH_REQUESTS = 256
#: Largest batch frame the broker sends (a room's events on the feed, or the replies to a batch): a
#: JSON array of at most this many bytes.  A lone envelope goes alone, whatever its size.  Measured
#: with 10 subscribers, 32 KiB frames cost the broker 7% less CPU per message than 16 KiB (fewer
#: frames to route and write, and fewer for every subscriber to read); 64 KiB saved nothing more.
MAX_BATCH_BYTES = 32 * 1024
#: User names: 1-32 characters, ASCII letters, digits, ``_ . -``, not starting
#: with ``. -``.  Unique among live sessions, compared case-insensitively, so
#: ``Alice`` cannot pose as ``alice``.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,31}")
#: Names no user may take: they would read as messages from the system.
RESERVED_NAMES = frozenset({"system", "broker", "server", "admin"})
#: Room names: 1-32 characters, lower-case ASCII letters, digits, ``_ -``.
#: No ``/``, so a room's topic ``room/NAME/`` is unambiguous.
ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,31}")

SYS_TOPIC = b"sys/"
ROOM_TOPIC_PREFIX = b"room/"


class ErrorCode(str, Enum):
    """The ``code`` of an ``error`` reply.  Clients branch on these, never on ``detail``."""

    BAD_JSON = "bad_json"  # not UTF-8 JSON
    BAD_ENVELOPE = "bad_envelope"  # not one frame, not an object, no type, a required field missing
    UNKNOWN_TYPE = "unknown_type"  # type is not a request this broker knows
    BAD_FIELD = "bad_field"  # a field has the wrong JSON type or an invalid value
    BAD_NAME = "bad_name"  # a user or room name breaks the name rules
    NAME_TAKEN = "name_taken"  # another live session has this name
    SESSION_EXISTS = "session_exists"  # hello under another name on a live session
    NO_SESSION = "no_session"  # the request needs a session; say hello first
    NO_SUCH_USER = "no_such_user"  # dm to a name with no live session
    NOT_IN_ROOM = "not_in_room"  # msg or leave for a room the session is not in
    TOO_MANY_ROOMS = "too_many_rooms"  # join beyond the rooms-per-session limit or the broker's room cap
    TOO_MANY_SESSIONS = "too_many_sessions"  # hello beyond the sessions-per-key limit (CURVE)
    NAME_RESERVED = "name_reserved"  # the name is bound to another key, or this key is bound to another name
    TOO_LARGE = "too_large"  # text longer than MAX_TEXT_CHARS
    RATE_LIMITED = "rate_limited"  # the connection's or the source's token bucket is empty; retry later
    ID_REUSED = "id_reused"  # the id was used lately by this user for a different request; pick a new id
    UNAVAILABLE = "unavailable"  # the broker cannot store anything now (disk full or read-only, or at a memory bound)
    INTERNAL = "internal"  # an unforeseen error while handling this request; it was not done, the broker serves on

    def __str__(self) -> str:
        return self.value


class ProtocolError(Exception):
    """A request the broker refuses; becomes an ``error`` reply."""

    def __init__(self, code: ErrorCode, detail: str, msg_id: str | None = None) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.msg_id = msg_id

    def envelope(self) -> dict[str, Any]:
        env: dict[str, Any] = {"type": "error", "code": self.code.value, "detail": self.detail}
        if self.msg_id is not None:
            env["id"] = self.msg_id
        return env


# --- Encoding -----------------------------------------------------------------

encode = msgspec.json.Encoder().encode
"""Envelope -> bytes.  Compact UTF-8 with no newlines, so one envelope is always one line (the
logger relies on that).  The bytes are at most about 1.5 times their length in memory (1.3 on
average for chat events), so they can be kept as they are (room history, and the acks the dedupe
windows give a resend)."""

_decode_any = msgspec.json.Decoder().decode
#: Every way decoding bytes can fail: malformed JSON, numbers out of range, invalid UTF-8, and
#: nesting deeper than the interpreter's recursion limit (msgspec checks it, so that fails cleanly).
_DECODE_ERRORS = (msgspec.DecodeError, ValueError, RecursionError)


def decode(data: bytes) -> Any:
    """Bytes -> JSON value, or ``ProtocolError(bad_json)``; also rejects invalid UTF-8."""
    try:
        return _decode_any(data)
    except _DECODE_ERRORS as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid UTF-8 JSON: {exc}") from None


# --- What the broker builds once per chat message -------------------------------
# Structs, not dicts: msgspec writes a Struct's keys from bytes it prepared once, where a dict's
# are encoded on every call.  Measured, that saves about 0.2 µs per chat message (its event and its
# ack), some 7% of the broker's work.  The bytes are the same as a dict's with the same fields in
# the same order; an UNSET field is left out.  ``seq`` and ``ts`` are stamped when the event is
# published (``ChatCore._publish``; its hot loop builds plain messages with them).


class MsgEvent(msgspec.Struct, tag_field="type", tag="msg", kw_only=True, gc=False):
    room: str
    user: str
    text: str
    id: str
    me: bool | msgspec.UnsetType = msgspec.UNSET
    seq: int = 0
    prev: int | msgspec.UnsetType = msgspec.UNSET
    ts: float = 0.0


class JoinEvent(msgspec.Struct, tag_field="type", tag="join", kw_only=True, gc=False):
    room: str
    user: str
    resumed: bool | msgspec.UnsetType = msgspec.UNSET  # back after the broker restarted: not news to show
    seq: int = 0
    prev: int | msgspec.UnsetType = msgspec.UNSET
    ts: float = 0.0


class LeaveEvent(msgspec.Struct, tag_field="type", tag="leave", kw_only=True, gc=False):
    room: str
    user: str
    reason: str
    seq: int = 0
    prev: int | msgspec.UnsetType = msgspec.UNSET
    ts: float = 0.0


class TopicEvent(msgspec.Struct, tag_field="type", tag="topic", kw_only=True, gc=False):
    """``user`` set the room's topic to ``topic`` ("" cleared it).  Kept in history like every room event."""

    room: str
    user: str
    topic: str
    seq: int = 0
    prev: int | msgspec.UnsetType = msgspec.UNSET
    ts: float = 0.0


class NickEvent(msgspec.Struct, tag_field="type", tag="nick", kw_only=True, gc=False):
    """``user`` is now called ``name`` (published in each room the user is in)."""

    room: str
    user: str
    name: str
    seq: int = 0
    prev: int | msgspec.UnsetType = msgspec.UNSET
    ts: float = 0.0


#: The room events the broker publishes (``seq`` and ``ts`` set by ``ChatCore._publish``).
RoomEvent = MsgEvent | JoinEvent | LeaveEvent | TopicEvent | NickEvent


class Ack(msgspec.Struct, tag_field="type", tag="ack", kw_only=True, gc=False):
    """The answer to an accepted ``msg`` (``room`` and ``seq`` of its event) or ``dm`` (``to``)."""

    id: str
    room: str | msgspec.UnsetType = msgspec.UNSET
    seq: int | msgspec.UnsetType = msgspec.UNSET
    to: str | msgspec.UnsetType = msgspec.UNSET
    away: str | msgspec.UnsetType = msgspec.UNSET  # a dm to someone away: their reason


# --- What the broker sends, as a client reads it ------------------------------------------
# Every reply and feed envelope a client acts on, typed.  Unknown fields are ignored (a newer broker
# may add some); an envelope of a type this module does not know is skipped by ``read_envelopes``, but for
# a room event (it has a ``room`` and a ``seq``), which is read as an ``OtherEvent``: it counts in its room's
# chain though nothing here shows it.


class Welcome(msgspec.Struct, tag_field="type", tag="welcome", kw_only=True, gc=False):
    user: str
    rooms: list[str] = []
    epoch: str | None = None
    history_id: str | None = None
    heartbeat: float = 1.0
    session_timeout: float = 5.0
    protocol: int = PROTOCOL_VERSION


class Joined(msgspec.Struct, tag_field="type", tag="joined", kw_only=True, gc=False):
    room: str
    users: list[str] = []
    history: list[RoomEvent] = []
    seq: int = 0
    topic: str = ""  # the room's topic ("": none)
    away: dict[str, str] = {}  # members who are away, and why


class Left(msgspec.Struct, tag_field="type", tag="left", kw_only=True, gc=False):
    room: str


class Error(msgspec.Struct, tag_field="type", tag="error", kw_only=True, gc=False):
    code: str
    detail: str = ""
    id: str | None = None


class Who(msgspec.Struct, tag_field="type", tag="who", kw_only=True, gc=False):
    room: str
    users: list[str] = []
    away: dict[str, str] = {}  # members who are away, and why


class Renamed(msgspec.Struct, tag_field="type", tag="renamed", kw_only=True, gc=False):
    """The answer to ``nick``: this session is now ``user`` (it was ``was``)."""

    user: str
    was: str
    id: str | None = None


class Away(msgspec.Struct, tag_field="type", tag="away", kw_only=True, gc=False):
    """The answer to ``away``: this session's away ``reason`` now ("": back)."""

    reason: str = ""
    id: str | None = None


class OtherEvent(msgspec.Struct, kw_only=True, gc=False):
    """A room event of a type this client does not know (a newer broker's).  Kept for its place in the room's
    chain (``seq``, ``prev``): a subscriber that dropped it would see a gap no ``history`` can fill."""

    type: str
    room: str
    seq: int
    prev: int | msgspec.UnsetType = msgspec.UNSET


class History(msgspec.Struct, tag_field="type", tag="history", kw_only=True, gc=False):
    room: str
    events: list[RoomEvent] = []
    seq: int = 0
    more: bool = False
    #: The events of types this client does not know (``read_envelopes`` puts them here, not in ``events``).
    others: list[OtherEvent] = []


class Rooms(msgspec.Struct, tag_field="type", tag="rooms", kw_only=True, gc=False):
    rooms: dict[str, int] = {}
    history_id: str | None = None


class Pong(msgspec.Struct, tag_field="type", tag="pong", kw_only=True, gc=False):
    epoch: str | None = None
    session: bool = False


class Dm(msgspec.Struct, tag_field="type", tag="dm", kw_only=True, gc=False):
    user: str
    to: str
    text: str
    id: str | None = None
    me: bool = False
    ts: float = 0.0


class Heartbeat(msgspec.Struct, tag_field="type", tag="heartbeat", kw_only=True, gc=False):
    epoch: str | None = None
    ts: float = 0.0


class Head(msgspec.Struct, tag_field="type", tag="head", kw_only=True, gc=False):
    """On a room's topic with the heartbeat, for a room that changed lately: its newest ``seq``.  Not an event
    (not stored, not in history): a subscriber behind it has missed events, and fetches them."""

    room: str
    seq: int


class Shutdown(msgspec.Struct, tag_field="type", tag="shutdown", kw_only=True, gc=False):
    epoch: str | None = None
    ts: float = 0.0


#: Everything a client may read: replies on its DEALER, events on its SUB.
Envelope = (
    Welcome
    | Joined
    | Left
    | Ack
    | Error
    | Who
    | Renamed
    | Away
    | History
    | Rooms
    | Pong
    | Dm
    | Heartbeat
    | Head
    | Shutdown
    | RoomEvent
)

_decode_envelopes = msgspec.json.Decoder(Envelope | list[Envelope]).decode


def read_envelopes(payload: bytes) -> list[Envelope]:
    """The envelopes of one frame a client received: one envelope, or a JSON array of them (a batch).

    What it cannot read (not JSON, an unknown type, a field of the wrong type) is skipped, envelope by
    envelope: a client never crashes on what a broker, a relay or anyone between sends it."""
    try:
        value = _decode_envelopes(payload)
    except _DECODE_ERRORS:
        return _read_one_by_one(payload)
    return value if type(value) is list else [value]


def _read_one_by_one(payload: bytes) -> list[Envelope]:
    try:
        value = _decode_any(payload)
    except _DECODE_ERRORS:
        return []
    envelopes = []
    for item in value if type(value) is list else [value]:
        try:
            envelopes.append(msgspec.convert(item, Envelope))
        except (msgspec.ValidationError, ValueError, TypeError):
            envelope = _newer(item)
            if envelope is not None:
                envelopes.append(envelope)
    return envelopes


#: The room event types this module reads; any other with a ``room`` and a ``seq`` is an ``OtherEvent``.
ROOM_EVENT_TYPES = frozenset(
    struct.__struct_config__.tag for struct in (MsgEvent, JoinEvent, LeaveEvent, TopicEvent, NickEvent)
)
#: Every envelope type this module reads.
ENVELOPE_TYPES = frozenset(struct.__struct_config__.tag for struct in Envelope.__args__)
_ENVELOPE_ERRORS = (msgspec.ValidationError, ValueError, TypeError)


def _newer(item: Any) -> OtherEvent | History | Joined | None:
    """What a newer broker sent that ``Envelope`` cannot hold: a room event of an unknown type, or a
    ``history``/``joined`` reply with such events (those are kept apart, or left out of a joined's recent
    history, which sets no chain).  None: not that, skipped."""
    if type(item) is not dict or type(item.get("type")) is not str:
        return None
    kind = item["type"]
    try:
        if kind in ("history", "joined"):
            field = "events" if kind == "history" else "history"
            if type(item.get(field)) is not list:
                return None
            events = [e for e in item[field] if type(e) is dict]
            known = [e for e in events if e.get("type") in ROOM_EVENT_TYPES]
            reply = msgspec.convert({**item, field: known}, History if kind == "history" else Joined)
            if isinstance(reply, History):
                reply.others = [msgspec.convert(e, OtherEvent) for e in events if e.get("type") not in ROOM_EVENT_TYPES]
            return reply
        if kind not in ENVELOPE_TYPES and type(item.get("room")) is str and type(item.get("seq")) is int:
            return msgspec.convert(item, OtherEvent)
    except _ENVELOPE_ERRORS:
        return None
    return None


def batch_frames(payloads: list[bytes], limit: int = MAX_BATCH_BYTES, max_count: int = 0) -> list[bytes]:
    """Encoded envelopes -> frames, in order: several as JSON arrays of at most ``limit`` bytes (and
    ``max_count`` envelopes, if given).

    An envelope that would be alone in its array goes out as itself, so one envelope is never an array.
    """
    count = len(payloads)
    if count <= 1:
        return payloads  # nothing to send is no frame; one envelope goes as itself
    if count <= (max_count or count) and sum(map(len, payloads)) + count + 1 <= limit:
        return [b"[" + b",".join(payloads) + b"]"]  # the common case: all in one frame
    frames: list[bytes] = []
    start = size = 0
    for i, payload in enumerate(payloads):
        if i > start and (size + len(payload) + 2 > limit or i - start == max_count):
            frames.append(_array(payloads[start:i]))
            start, size = i, 0
        size += len(payload) + 1
    frames.append(_array(payloads[start:]))
    return frames


def _array(payloads: list[bytes]) -> bytes:
    return payloads[0] if len(payloads) == 1 else b"[" + b",".join(payloads) + b"]"


def feed_events(payload: bytes) -> list[dict[str, Any]]:
    """The events of one feed frame: one envelope, or a JSON array of them (a batch, in seq order).

    Anything else (not JSON, not objects) yields no events: a subscriber never crashes on the feed.
    """
    try:
        value = _decode_any(payload)
    except _DECODE_ERRORS:
        return []
    if type(value) is dict:
        return [value] if type(value.get("type")) is str else []
    if type(value) is list:
        return [event for event in value if type(event) is dict and type(event.get("type")) is str]
    return []


def room_topic(room: str) -> bytes:
    """The feed topic of a room.  The trailing slash stops ``room/gen/`` matching ``room/general/``."""
    return b"room/" + room.encode() + b"/"


def room_of_topic(topic: bytes) -> str | None:
    """Inverse of :func:`room_topic`; ``None`` for ``sys/`` and anything else."""
    if not (topic.startswith(ROOM_TOPIC_PREFIX) and topic.endswith(b"/")):
        return None
    room = topic[len(ROOM_TOPIC_PREFIX) : -1].decode("ascii", "replace")
    return room if valid_room(room) else None


# --- Field checks -------------------------------------------------------------
# Each takes the raw JSON value and returns the clean value or raises ProtocolError.


Check = Callable[[str, Any], Any]


def _field_error(field: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"{field!r} must be {expected}, got {type(value).__name__}")


def valid_name(value: Any) -> bool:
    return type(value) is str and NAME_RE.fullmatch(value) is not None and value.lower() not in RESERVED_NAMES


def valid_room(value: Any) -> bool:
    return type(value) is str and ROOM_RE.fullmatch(value) is not None


def check_name(field: str, value: Any) -> str:
    if type(value) is not str:
        raise _field_error(field, "a string", value)
    if not valid_name(value):
        raise ProtocolError(
            ErrorCode.BAD_NAME,
            f"{field!r}: a name is 1-32 of A-Z a-z 0-9 _ . - (not starting with . or -), and not reserved",
        )
    return value


def check_room(field: str, value: Any) -> str:
    if type(value) is not str:
        raise _field_error(field, "a string", value)
    if not valid_room(value):
        raise ProtocolError(
            ErrorCode.BAD_NAME, f"{field!r}: a room name is 1-32 of a-z 0-9 _ - (starting with a-z 0-9)"
        )
    return value


def check_rooms(field: str, value: Any) -> list[str]:
    if type(value) is not list:
        raise _field_error(field, "a list of room names", value)
    if len(value) > MAX_HELLO_ROOM_ITEMS:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{field!r} has more than {MAX_HELLO_ROOM_ITEMS} items")
    rooms = list(dict.fromkeys(check_room(field, room) for room in value))  # drop repeats, keep order
    if len(rooms) > MAX_ROOMS_PER_SESSION:
        raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, f"at most {MAX_ROOMS_PER_SESSION} rooms per session")
    return rooms


def check_text(field: str, value: Any) -> str:
    if type(value) is not str:
        raise _field_error(field, "a string", value)
    if not value:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{field!r} must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{field!r} is {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    return value


def _check_note(limit: int) -> Check:
    """A check for a short free text that may be empty (a topic, an away reason)."""

    def check(field: str, value: Any) -> str:
        if type(value) is not str:
            raise _field_error(field, "a string", value)
        if len(value) > limit:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{field!r} is {len(value)} characters; the limit is {limit}")
        return value

    return check


def check_id(field: str, value: Any) -> str:
    if type(value) is not str:
        raise _field_error(field, "a string", value)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{field!r} must be 1-{MAX_ID_CHARS} characters")
    return value


def check_bool(field: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _field_error(field, "true or false", value)
    return value


def check_seq(field: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{field!r} must be an integer from 0 to {MAX_SEQ}")
    return value


def check_limit(field: str, value: Any) -> int:
    if type(value) is not int or not 1 <= value <= MAX_HISTORY_LIMIT:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{field!r} must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    return value


#: Every request type, its fields, their checks and whether they are required.
#: Fields not listed are ignored, so a newer client can talk to an older broker.
REQUESTS: dict[str, dict[str, tuple[Check, bool]]] = {
    "hello": {"user": (check_name, True), "rooms": (check_rooms, False), "resume": (check_bool, False)},
    "join": {"room": (check_room, True)},
    "leave": {"room": (check_room, True)},
    "msg": {"room": (check_room, True), "text": (check_text, True), "id": (check_id, True), "me": (check_bool, False)},
    "dm": {"to": (check_name, True), "text": (check_text, True), "id": (check_id, True), "me": (check_bool, False)},
    "who": {"room": (check_room, True)},
    "history": {"room": (check_room, True), "after": (check_seq, False), "limit": (check_limit, False)},
    "ping": {},
    "bye": {},
    "rooms": {},
    "topic": {"room": (check_room, True), "topic": (_check_note(MAX_TOPIC_CHARS), True), "id": (check_id, True)},
    "nick": {"name": (check_name, True), "id": (check_id, False)},
    "away": {"reason": (_check_note(MAX_AWAY_CHARS), False), "id": (check_id, False)},
}

#: Requests that need no session (everything else answers ``no_session`` before ``hello``).
SESSIONLESS = frozenset({"hello", "history", "ping", "bye", "rooms"})


class PlainMsg(msgspec.Struct, tag_field="type", tag="msg", forbid_unknown_fields=True, gc=False):
    """A ``msg`` request with exactly the fields ``type``, ``room``, ``text`` and ``id``: the shape of
    nearly every inbox envelope, so it is decoded, typed and length-checked in C, with no dict and no
    table of checks.  Anything else (``me``, an unknown field, a bad value) is decoded as plain JSON
    and checked by ``parse_envelope``, which finds the precise error.  The room name is not checked
    here: ``parse_envelope`` checks it, and the chat core only needs to find it among the sender's
    rooms."""

    room: str
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT_CHARS)]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


_decode_plain = msgspec.json.Decoder(PlainMsg | list[PlainMsg]).decode


def decode_frame(frames: list[bytes]) -> Any:
    """One inbox message (the frames after the routing id) -> its value: a ``PlainMsg`` or a list of
    them (the hot path), else the decoded JSON (an envelope, a batch, or anything at all)."""
    if len(frames) != 1:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, f"a request is exactly one frame, got {len(frames)}")
    try:
        return _decode_plain(frames[0])
    except _DECODE_ERRORS:
        return decode(frames[0])


def check_batch(envelopes: list[Any]) -> list[Any]:
    """A batch's envelopes (each still to be checked by ``parse_envelope``), if it is not empty or too long."""
    if not 0 < len(envelopes) <= MAX_BATCH_REQUESTS:
        raise ProtocolError(
            ErrorCode.BAD_ENVELOPE, f"a batch holds 1-{MAX_BATCH_REQUESTS} envelopes, got {len(envelopes)}"
        )
    return envelopes


def parse_request(frames: list[bytes]) -> dict[str, Any]:
    """Validate one inbox message holding one envelope (see ``parse_envelope``)."""
    return parse_envelope(decode_frame(frames))


def request_id(env: Any) -> str | None:
    """The ``id`` every ``error`` about this envelope echoes, whatever its type: only one a ``msg`` could carry."""
    msg_id = env.get("id") if type(env) is dict else None
    return msg_id if type(msg_id) is str and 0 < len(msg_id) <= MAX_ID_CHARS else None


def parse_envelope(env: Any) -> dict[str, Any]:
    """Validate one decoded request envelope.

    Returns a new dict holding ``type`` and only the known, checked fields.
    Raises ``ProtocolError`` with the code a client should see.
    """
    if type(env) is PlainMsg:
        if valid_room(env.room):
            return {"type": "msg", "room": env.room, "text": env.text, "id": env.id}
        env = {"type": "msg", "room": env.room, "text": env.text, "id": env.id}  # for the precise error
    if type(env) is not dict:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, "the envelope must be a JSON object")
    msg_id = request_id(env)
    kind = env.get("type")
    if type(kind) is not str:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, "the envelope needs a string 'type'", msg_id)
    fields = REQUESTS.get(kind)
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {kind[:40]!r}", msg_id)
    request: dict[str, Any] = {"type": kind}
    try:
        for field, (check, required) in fields.items():
            value = env.get(field)
            if value is None:
                if required:
                    raise ProtocolError(ErrorCode.BAD_ENVELOPE, f"{kind!r} needs the field {field!r}")
                continue
            request[field] = check(field, value)
    except ProtocolError as exc:
        exc.msg_id = msg_id
        raise
    return request
