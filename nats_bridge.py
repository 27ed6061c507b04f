"""A front door's way to NATS (issue 17): nats-py in a thread of its own, spoken to over an inproc PAIR.

The broker is one ZeroMQ poller loop; nats-py runs only on asyncio.  So, as libzmq keeps its sockets in an
I/O thread of its own, the bridge keeps the NATS connection in one: its thread runs an asyncio loop and
shares nothing with the broker's but messages on a PAIR socket, which the broker's poller watches like any
other.  The loop never blocks on NATS and no lock is needed.

Orders (the loop's end, ``NatsBridge``), each one msgpack frame:

- ``publish``: a JetStream publish under a ``Nats-Msg-Id``.  A publish that gets no answer (the stream has
  no leader during an election, which took ~5 s on nats-server 2.9) is sent again under the same id until
  ``retry_s``; the stream stores it once.  Publishes leave in the order given, but a retried one can land
  behind later ones: a caller that needs an order (one person's lines) keeps one outstanding per order.
  Answer: ``Acked`` (with the stream sequence and whether it was a duplicate) or ``Failed``.  At most
  ``MAX_IN_FLIGHT`` are outstanding; later ones wait in the bridge.
- ``subscribe``: a core NATS subscription; each message comes back as ``Message`` (subject, headers,
  payload) on a socket of its own, ``feed``, that holds at most ``feed_frames``: what the loop does not read
  in time is dropped here and counted (``Dropped``), never queued without bound.  Answers come on ``sock``,
  which nothing but answers fills (as many as the orders), so a flood on the feed never holds one back.
- ``next``: the first message stored in a stream on a subject after a position (what fills a hole in a
  room's chain); answer ``Stored``, or ``Failed`` with reason ``not_found``.  ``last``: the newest message on
  a subject, answered the same way.
- ``heads``: every subject of a stream under a prefix, with the position of its last message (at most
  ``MAX_LISTED``); answer ``KvEntries`` (subject, empty value, position).
- ``kv_list``: every live key of a bucket matching a pattern, with its value and revision (at most
  ``MAX_LISTED``); answer ``KvEntries``.
- ``watch``: every key of a bucket matching a pattern, then each change to one, as ``Changed`` on ``feed``
  (an ordered consumer: in the bucket's order); a ``Changed`` with no key says the keys that were there are
  all told.  Dropped like any feed message (``Dropped``: watch again); ``Failed`` if the watch ends.
  ``unwatch`` stops it.
- ``kv_purge``: clear a key's messages up to a revision (a delete marker) from a bucket; answer ``KvResult``.
- ``stream``, ``kv_bucket``: create (or update) a stream or a key-value bucket (a stream's answer holds
  when it was made).  ``kv``: create, update
  (compare-and-set on the revision), delete or get one key; answer ``KvResult``.

- ``listen``/``unlisten``: a core NATS subscription whose messages are requests to answer (a dm forwarded by
  another front door); each comes as ``Request`` on ``sock`` (few, and bounded by the senders' own limits),
  answered by ``respond``.  ``request``: a core NATS request; answer ``Replied``, or ``Failed`` with reason
  ``no_responders`` (nobody listens on the subject) or ``timeout``.

``Status`` says when the connection is up, down (nats-py reconnects on its own, to any server given) or
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from typing import Any

import msgspec
import zmq

#: How long a publish is retried (under its one Nats-Msg-Id) while the stream answers nothing.
RETRY_S = 15.0
#: JetStream publishes outstanding at once (each costs the bridge a future and its payload).
MAX_IN_FLIGHT = 1_000
#: Subscription messages the bridge may have queued for the loop before it drops them.
FEED_FRAMES = 10_000
#: How long a stopping bridge lets its connection drain before it closes it.
DRAIN_S = 2.0
#: A watch silent this long asks whether its consumer still exists (nats-py's ordered consumer, made again
#: after a node died, can fail to be made and then waits silently for ever).
WATCH_CHECK_S = 5.0
#: JetStream's error code for a compare-and-set that found another revision.
WRONG_LAST_SEQUENCE = 10071
#: Keys one ``kv_list`` answer holds at most (a roster of a room, the front doors' leases).
MAX_LISTED = 100_000

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_bridges = itertools.count(1)


class Acked(msgspec.Struct, array_like=True, tag="acked"):
    token: int
    seq: int
    duplicate: bool


class Failed(msgspec.Struct, array_like=True, tag="failed"):
    token: int
    reason: str


class Stored(msgspec.Struct, array_like=True, tag="stored"):
    token: int
    seq: int
    subject: str
    data: bytes


class Message(msgspec.Struct, array_like=True, tag="msg"):
    subject: str
    headers: dict[str, str]
    data: bytes


class KvResult(msgspec.Struct, array_like=True, tag="kv"):
    token: int
    revision: int  # 0: none (the error says why)
    value: bytes | None
    error: str | None  # "exists", "wrong_revision", "not_found", or what NATS said


class KvEntries(msgspec.Struct, array_like=True, tag="kv_list"):
    token: int
    entries: list[tuple[str, bytes, int]]  # (key, value, revision)
    error: str | None


class Changed(msgspec.Struct, array_like=True, tag="changed"):
    token: int  # the watch's
    key: str  # "": the keys that were there when the watch began are all told
    value: bytes | None  # None: deleted
    revision: int


class Request(msgspec.Struct, array_like=True, tag="request"):
    subject: str
    reply: str  # where ``respond`` sends the answer
    data: bytes


class Replied(msgspec.Struct, array_like=True, tag="replied"):
    token: int
    data: bytes


class Dropped(msgspec.Struct, array_like=True, tag="dropped"):
    count: int  # subscription messages dropped since the last Dropped: the loop read too slowly


class Status(msgspec.Struct, array_like=True, tag="status"):
    state: str  # "connected", "disconnected", "closed", "error"
    detail: str


Event = Acked | Failed | Stored | Message | KvResult | KvEntries | Changed | Request | Replied | Dropped | Status
_decode_event = msgspec.msgpack.Decoder(Event).decode


class NatsBridge:
    """The loop's end: orders go out on ``sock``; ``events()`` reads what came back.  Register ``sock`` and
    ``feed`` in the loop's poller for POLLIN."""

    def __init__(
        self, ctx: zmq.Context, servers: list[str], name: str = "chat-broker", feed_frames: int = FEED_FRAMES
    ) -> None:
        endpoint = f"inproc://nats-bridge-{next(_bridges)}"
        self.sock = ctx.socket(zmq.PAIR)
        self.feed = ctx.socket(zmq.PAIR)
        for sock in (self.sock, self.feed):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)  # orders: bounded by the loop (its own in-flight bounds)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # answers: as many as the orders
        # An inproc pipe holds the sum of both ends' marks (unbounded if either is 0): the bridge's feed_frames.
        self.feed.setsockopt(zmq.RCVHWM, 1)
        self.sock.bind(endpoint)
        self.feed.bind(endpoint + "-feed")
        self._tokens = itertools.count(1)
        self._thread = threading.Thread(
            target=_serve, args=(ctx, endpoint, servers, name, feed_frames), name="nats-bridge", daemon=True
        )
        self._thread.start()

    def publish(self, subject: str, payload: bytes, msg_id: str, retry_s: float = RETRY_S) -> int:
        """A JetStream publish; returns the token its ``Acked`` or ``Failed`` will carry."""
        token = next(self._tokens)
        self.sock.send(_encode(["publish", token, subject, payload, msg_id, retry_s]))
        return token

    def next(self, stream: str, subject: str, after: int) -> int:
        """Ask for the first message of ``stream`` on ``subject`` stored after position ``after``."""
        token = next(self._tokens)
        self.sock.send(_encode(["next", token, stream, subject, after]))
        return token

    def last(self, stream: str, subject: str) -> int:
        """Ask for the newest message of ``stream`` on ``subject`` (answered as ``next`` is)."""
        token = next(self._tokens)
        self.sock.send(_encode(["next", token, stream, subject, -1]))
        return token

    def subscribe(self, subject: str) -> None:
        self.sock.send(_encode(["subscribe", subject]))

    def listen(self, subject: str) -> None:
        """Requests on ``subject`` come as ``Request`` events until ``unlisten``."""
        self.sock.send(_encode(["listen", subject]))

    def unlisten(self, subject: str) -> None:
        self.sock.send(_encode(["unlisten", subject]))

    def request(self, subject: str, data: bytes, timeout: float) -> int:
        """A core NATS request; returns the token its ``Replied`` or ``Failed`` will carry."""
        token = next(self._tokens)
        self.sock.send(_encode(["request", token, subject, data, timeout]))
        return token

    def respond(self, reply: str, data: bytes) -> None:
        """Answer a ``Request`` (not awaited: a lost answer is the requester's timeout)."""
        self.sock.send(_encode(["respond", reply, data]))

    def stream(self, config: dict[str, Any]) -> int:
        """Create or update a stream (``nats.js.api.StreamConfig`` fields); answered by a ``KvResult``."""
        token = next(self._tokens)
        self.sock.send(_encode(["stream", token, config]))
        return token

    def kv_bucket(self, config: dict[str, Any]) -> int:
        """Create a key-value bucket (``nats.js.api.KeyValueConfig`` fields); answered by a ``KvResult``."""
        token = next(self._tokens)
        self.sock.send(_encode(["kv_bucket", token, config]))
        return token

    def kv(self, op: str, bucket: str, key: str, value: bytes = b"", revision: int = 0) -> int:
        """``op``: "create" (fails if the key lives), "update" (only at ``revision``), "put" (whatever is
        there), "delete" (at ``revision``, or any if 0), "get".
        """
        token = next(self._tokens)
        self.sock.send(_encode(["kv", token, op, bucket, key, value, revision]))
        return token

    def heads(self, stream: str, prefix: str) -> int:
        """Every subject of ``stream`` under ``prefix`` and its last position (``KvEntries``)."""
        token = next(self._tokens)
        self.sock.send(_encode(["heads", token, stream, prefix]))
        return token

    def kv_purge(self, bucket: str, key: str, revision: int) -> int:
        """Clear ``key``'s messages up to ``revision`` (its delete marker) from ``bucket``; a later one stays."""
        token = next(self._tokens)
        self.sock.send(_encode(["kv_purge", token, bucket, key, revision]))
        return token

    def kv_list(self, bucket: str, pattern: str) -> int:
        """Every live key of ``bucket`` matching ``pattern`` (a NATS subject pattern: ``>``, ``room.*``)."""
        token = next(self._tokens)
        self.sock.send(_encode(["kv_list", token, bucket, pattern]))
        return token

    def watch(self, bucket: str, pattern: str) -> int:
        """Follow the keys of ``bucket`` matching ``pattern``: ``Changed`` events, until ``unwatch``."""
        token = next(self._tokens)
        self.sock.send(_encode(["watch", token, bucket, pattern]))
        return token

    def unwatch(self, token: int) -> None:
        self.sock.send(_encode(["unwatch", token]))

    def events(self) -> list[Event]:
        """Every answer waiting, then every feed message waiting, without blocking."""
        return self.answers() + _read_all(self.feed)

    def answers(self) -> list[Event]:
        """Every answer (and ``Status``, ``Dropped``) waiting, without blocking."""
        return _read_all(self.sock)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the bridge (its connection drains and closes) and wait for its thread."""
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send(_encode(["stop"]))
        self._thread.join(timeout)
        self.sock.close(linger=0)
        self.feed.close(linger=0)


def _read_all(sock: zmq.Socket) -> list[Event]:
    out = []
    while True:
        try:
            out.append(_decode_event(sock.recv(zmq.NOBLOCK)))
        except zmq.Again:
            return out


# --- the bridge's thread ---------------------------------------------------------------------------


def _serve(ctx: zmq.Context, endpoint: str, servers: list[str], name: str, feed_frames: int) -> None:
    asyncio.run(_Bridge(ctx, endpoint, feed_frames).run(servers, name))


class _Bridge:
    def __init__(self, ctx: zmq.Context, endpoint: str, feed_frames: int) -> None:
        self.sock = ctx.socket(zmq.PAIR)
        self.feed = ctx.socket(zmq.PAIR)
        for sock in (self.sock, self.feed):
            sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # answers: no more than the orders
        self.feed.setsockopt(zmq.SNDHWM, feed_frames)
        self.sock.connect(endpoint)
        self.feed.connect(endpoint + "-feed")
        self.dropped = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.listening: dict[str, Any] = {}  # subject -> its subscription (``listen``)
        self.watches: dict[int, asyncio.Task[None]] = {}  # token -> the task following a bucket (``watch``)
        self.buckets: dict[str, Any] = {}  # name -> its handle (``_bucket``)

    def tell(self, event: Event) -> None:
        """An answer or a status: never dropped, never blocks (the answer socket has no high-water mark)."""
        self.sock.send(msgspec.msgpack.encode(event))

    def _say_dropped(self) -> None:
        if self.dropped:
            self.tell(Dropped(self.dropped))
            self.dropped = 0

    async def run(self, servers: list[str], name: str) -> None:
        import nats  # only a front door needs it (pip install nats-py)

        async def disconnected() -> None:
            self.tell(Status("disconnected", ""))

        async def reconnected() -> None:
            self.tell(Status("connected", self.nc.connected_url.netloc))

        async def closed() -> None:
            self.tell(Status("closed", ""))

        async def error(exc: Exception) -> None:
            self.tell(Status("error", str(exc) or type(exc).__name__))

        try:
            self.nc = await nats.connect(
                servers=servers,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=2,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                closed_cb=closed,
                error_cb=error,
            )
        except Exception as exc:  # whatever it was, the loop hears it and the thread ends
            self.tell(Status("closed", f"cannot connect to {', '.join(servers)}: {exc}"))
            self.sock.close()
            self.feed.close()
            return
        self.js = self.nc.jetstream()
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tell(Status("connected", self.nc.connected_url.netloc))
        readable = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.getsockopt(zmq.FD), readable.set)
        try:
            while await self._orders(readable):
                pass
        finally:
            loop.remove_reader(self.sock.getsockopt(zmq.FD))
            for task in self.tasks:
                task.cancel()
            with contextlib.suppress(Exception):  # bounded: a consumer being made again can hold a drain for 30 s
                await asyncio.wait_for(self.nc.drain(), DRAIN_S)
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.sock.close()
            self.feed.close()

    async def _orders(self, readable: asyncio.Event) -> bool:
        """Take every order waiting (ZeroMQ's FD is edge-triggered: read until EAGAIN); False on stop."""
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            order = _decode(self.sock.recv())
            if order[0] == "stop":
                return False
            if order[0] == "subscribe":
                await self.nc.subscribe(order[1], cb=self._on_message)
            elif order[0] == "listen" and order[1] not in self.listening:
                self.listening[order[1]] = await self.nc.subscribe(order[1], cb=self._on_request)
            elif order[0] == "unlisten" and order[1] in self.listening:
                with contextlib.suppress(Exception):  # the connection may be down: its subscription goes anyway
                    await self.listening.pop(order[1]).unsubscribe()
            elif order[0] == "respond":
                with contextlib.suppress(Exception):  # not awaited by anyone: the requester times out
                    await self.nc.publish(order[1], order[2])
            elif order[0] == "unwatch" and order[1] in self.watches:
                self.watches.pop(order[1]).cancel()
            elif order[0] in ("listen", "unlisten", "unwatch"):
                pass  # already so
            else:
                task = asyncio.create_task(getattr(self, "_" + order[0])(*order[1:]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                if order[0] == "watch":
                    self.watches[order[1]] = task
        readable.clear()
        self._say_dropped()  # what was dropped since the last feed message that got through
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(readable.wait(), 0.5)  # and look again: an edge may have come meanwhile
        return True

    async def _bucket(self, name: str) -> Any:
        """A key-value bucket's handle, looked up once (each lookup is a round trip to the stream: it made
        every roster change and lease renewal take two)."""
        kv = self.buckets.get(name)
        if kv is None:
            kv = self.buckets[name] = await self.js.key_value(name)
        return kv

    async def _on_message(self, msg: Any) -> None:
        self._to_feed(Message(msg.subject, dict(msg.headers or {}), msg.data))

    def _to_feed(self, event: Message | Changed) -> None:
        """A subscription message or a watched change to the loop, or dropped (counted, and said on the
        answer socket) if the loop has ``feed_frames`` of them unread."""
        try:
            self.feed.send(msgspec.msgpack.encode(event), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return
        self._say_dropped()

    async def _watch(self, token: int, bucket: str, pattern: str) -> None:
        from nats.errors import TimeoutError
        from nats.js.kv import KV_DEL, KV_PURGE

        try:
            kv = await self._bucket(bucket)
            watcher = await kv.watch(pattern)
            try:
                while True:
                    try:
                        entry = await watcher.updates(timeout=WATCH_CHECK_S)
                    except TimeoutError:
                        await watcher._sub.consumer_info()  # raises if the consumer is gone: watched again
                        continue
                    if entry is None:
                        self._to_feed(Changed(token, "", None, 0))
                        continue
                    gone = entry.operation in (KV_DEL, KV_PURGE)
                    self._to_feed(Changed(token, entry.key, None if gone else entry.value or b"", entry.revision or 0))
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watch ended: the loop hears it (and watches again)
            self.tell(Failed(token, str(exc) or type(exc).__name__))
        finally:
            self.watches.pop(token, None)

    async def _on_request(self, msg: Any) -> None:
        self.tell(Request(msg.subject, msg.reply or "", msg.data))

    async def _request(self, token: int, subject: str, data: bytes, timeout: float) -> None:
        from nats.errors import NoRespondersError, TimeoutError

        try:
            reply = await self.nc.request(subject, data, timeout=timeout)
        except NoRespondersError:
            self.tell(Failed(token, "no_responders"))
        except (TimeoutError, asyncio.TimeoutError):
            self.tell(Failed(token, "timeout"))
        except Exception as exc:  # the connection down, ...: an answer, whatever went wrong
            self.tell(Failed(token, str(exc) or type(exc).__name__))
        else:
            self.tell(Replied(token, reply.data))

    async def _publish(self, token: int, subject: str, payload: bytes, msg_id: str, retry_s: float) -> None:
        from nats.errors import NoRespondersError, TimeoutError
        from nats.js.errors import NoStreamResponseError

        deadline = time.monotonic() + retry_s
        async with self.in_flight:
            while True:
                try:
                    ack = await self.js.publish(subject, payload, timeout=2, headers={"Nats-Msg-Id": msg_id})
                    self.tell(Acked(token, ack.seq, bool(ack.duplicate)))
                    return
                except (NoRespondersError, NoStreamResponseError, TimeoutError) as exc:
                    if time.monotonic() > deadline:  # no leader, or no NATS, for that long
                        self.tell(Failed(token, f"unavailable: {type(exc).__name__}"))
                        return
                    await asyncio.sleep(0.2)
                except Exception as exc:  # the stream refused it: one answer, no retry
                    self.tell(Failed(token, str(exc) or type(exc).__name__))
                    return

    async def _next(self, token: int, stream: str, subject: str, after: int) -> None:
        from nats.js.errors import NotFoundError

        try:
            if after < 0:  # ``last``
                msg = await self.js.get_msg(stream, subject=subject)
            else:
                msg = await self.js.get_msg(stream, seq=after + 1, subject=subject, next=True)
        except NotFoundError:
            self.tell(Failed(token, "not_found"))
        except Exception as exc:  # an answer, whatever went wrong (no leader: the caller asks again)
            self.tell(Failed(token, str(exc) or type(exc).__name__))
        else:
            self.tell(Stored(token, msg.seq or 0, msg.subject or subject, msg.data or b""))

    async def _stream(self, token: int, config: dict[str, Any]) -> None:
        from nats.js.api import RePublish, StorageType, StreamConfig

        config = dict(config)  # StreamConfig's own fields; the two that are objects there, built here
        if "republish" in config:
            config["republish"] = RePublish(**config["republish"])
        if "storage" in config:
            config["storage"] = StorageType(config["storage"])
        await self._answer(token, self._add_stream(StreamConfig(**config)))

    async def _add_stream(self, config: Any) -> tuple[int, bytes | None]:
        from nats.js.errors import BadRequestError

        try:
            info = await self.js.add_stream(config)
        except BadRequestError:  # it exists, made otherwise (another --cluster-replicas): it is left as it is
            info = await self.js.stream_info(config.name)
        return 1, str(info.created or config.name).encode()  # when it was made: names the history it holds

    async def _kv_bucket(self, token: int, config: dict[str, Any]) -> None:
        from nats.js.api import KeyValueConfig

        async def create() -> tuple[int, bytes | None]:
            await self.js.create_key_value(KeyValueConfig(**config))
            return 1, None

        await self._answer(token, create())

    async def _kv(self, token: int, op: str, bucket: str, key: str, value: bytes, revision: int) -> None:
        async def run() -> tuple[int, bytes | None]:
            kv = await self._bucket(bucket)
            if op == "create":
                return await kv.create(key, value), None
            if op == "update":
                return await kv.update(key, value, last=revision), None
            if op == "put":
                return await kv.put(key, value), None
            if op == "delete":
                await kv.delete(key, last=revision or None)
                return 1, None
            entry = await kv.get(key)
            return entry.revision or 0, entry.value

        await self._answer(token, run(), op)

    async def _kv_purge(self, token: int, bucket: str, key: str, revision: int) -> None:
        async def run() -> tuple[int, bytes | None]:
            await self.js.purge_stream(f"KV_{bucket}", seq=revision + 1, subject=f"$KV.{bucket}.{key}")
            return revision, None

        await self._answer(token, run())

    async def _heads(self, token: int, stream: str, prefix: str) -> None:
        heads: list[tuple[str, bytes, int]] = []
        try:
            info = await self.js.stream_info(stream, subjects_filter=prefix + ">")
            for subject in list(info.state.subjects or {})[:MAX_LISTED]:
                last = await self.js.get_msg(stream, subject=subject)
                heads.append((subject, b"", last.seq or 0))
        except Exception as exc:  # an answer, whatever went wrong (what was found so far with it)
            self.tell(KvEntries(token, heads, str(exc) or type(exc).__name__))
        else:
            self.tell(KvEntries(token, heads, None))

    async def _kv_list(self, token: int, bucket: str, pattern: str) -> None:
        entries: list[tuple[str, bytes, int]] = []
        try:
            kv = await self._bucket(bucket)
            watcher = await kv.watch(pattern, ignore_deletes=True, inactive_threshold=5.0)
            try:
                while len(entries) < MAX_LISTED:
                    entry = await watcher.updates(timeout=2.0)
                    if entry is None:  # the live keys are all there
                        break
                    if entry.operation is None:
                        entries.append((entry.key, entry.value or b"", entry.revision or 0))
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
        except Exception as exc:  # an answer, whatever went wrong
            self.tell(KvEntries(token, [], str(exc) or type(exc).__name__))
        else:
            self.tell(KvEntries(token, entries, None))

    async def _answer(self, token: int, work: Any, op: str = "") -> None:
        from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

        try:
            revision, value = await work
        except KeyNotFoundError:
            self.tell(KvResult(token, 0, None, "not_found"))
        except (KeyWrongLastSequenceError, APIError) as exc:
            if not isinstance(exc, KeyWrongLastSequenceError) and exc.err_code != WRONG_LAST_SEQUENCE:
                self.tell(KvResult(token, 0, None, str(exc) or type(exc).__name__))
                return
            # Create finds the key alive; update or delete, a newer revision (nats-py says it so for a delete).
            self.tell(KvResult(token, 0, None, "exists" if op == "create" else "wrong_revision"))
        except Exception as exc:  # an answer, whatever went wrong
            self.tell(KvResult(token, 0, None, str(exc) or type(exc).__name__))
        else:
            self.tell(KvResult(token, revision, value, None))
