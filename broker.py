"""The chat broker: a ROUTER inbox, a PUB feed, and a thin loop around ``ChatCore``.

One poller loop, no locks (the zguide way).  Everything the broker decides is
decided by ``chat.ChatCore``; this file only moves bytes and time.  With a
database file, the loop puts each batch in the journal (``journal``: one
append to a file, which a kill cannot undo) and sends its acks and events at
once; a writer process (``store_writer``) indexes batches in SQLite later.
With ``--sync full`` the loop instead sends a batch's acks and events when the
writer says (over an ipc PAIR) that the batch is committed and flushed.

    python broker.py                       # tcp://*:5555 inbox, tcp://*:5556 feed
    python broker.py --router ipc:///tmp/chat-in --pub ipc:///tmp/chat-feed
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import zmq

import cli
import keys
import messages as m
import transport
from chat import Append, ChatConfig, ChatCore, Claim, Forward, Member, Output, Publish, ReadLog, ReadRecent, Release
from front_door import ClusterUnavailable, FrontDoor
from store import SYNC_LEVELS, Sealed, SqliteStore, StoreInUse, open_store
from store_writer import Writer

log = logging.getLogger("chat-broker")

# Plain ints: pyzmq's enum flags cost a conversion on every call of the hot loop.  send_multipart is not
# used on the hot path for the same reason: it ORs enum flags per part (measured: 2.7 µs a two-part message,
# against 1.8 µs for two sends with int flags), and every ack and feed frame is one.
NOBLOCK, RCVMORE, SNDMORE = int(zmq.NOBLOCK), int(zmq.RCVMORE), int(zmq.SNDMORE)
#: Most inbox messages handled per wake-up before timers get their turn, so a
#: flood cannot starve heartbeats and session expiry.
DRAIN_LIMIT = 10_000
#: Outputs gathered before one commit and send: the group-commit size.  Small enough that a
#: busy loop still publishes every few hundred microseconds, large enough to amortise the commit.
COMMIT_BATCH = 512
#: Bytes of events handed to the store's writer and not yet in SQLite, at most: past this the loop waits for
#: the disk, so what a slow disk makes the broker hold stays bounded (``--max-unstored-bytes``).
MAX_UNSTORED_BYTES = 16 * 1024 * 1024
#: ... or this many seconds of handling, whichever comes first: a few expensive requests (a batch of
#: history requests) must not hold back everyone's replies until the burst is drained.
FLUSH_AFTER_S = 0.01
#: Logged when the broker stops reading requests until its store catches up (``_read_within_bound``).
STOPPED_READING = "reading no requests until it catches up"
#: How long a stopping broker waits for its writer; past it the writer is killed and the loop commits the rest.
STOP_WAIT_S = 10.0
#: Per-subscriber feed queue, in frames.  At the mark PUB drops that subscriber's
#: frames (never blocks, never slows the others); the subscriber sees a seq gap and
#: fetches what it missed with ``history``.  With frames of at most m.MAX_BATCH_BYTES
#: (32 KiB), a stuck subscriber holds at most ~16 MiB of the broker's memory.
FEED_HWM = 500
#: Per-client reply queue.  At the mark, replies to that client are dropped
#: (ROUTER_MANDATORY turns that into an error we count instead of a block).
INBOX_HWM = 1_000
#: Per-client request queue, in frames (each at most --max-frame, 64 KiB): what one connection can make
#: the broker hold before libzmq stops reading its socket (TCP then pushes back on the sender): 6.4 MiB.
#: A client never needs more: its requests wait in its own DEALER instead.
INBOX_RCVHWM = 100


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/zmq-chat/chat.db``, i.e. ``~/.local/share/zmq-chat/chat.db`` by default."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "zmq-chat" / "chat.db"


def bind_sockets(
    ctx: zmq.Context,
    router_ep: str,
    pub_ep: str,
    feed_hwm: int = FEED_HWM,
    max_frame: int = m.MAX_FRAME_BYTES,
    curve: tuple[bytes, bytes] | None = None,
    reply_hwm: int = INBOX_HWM,
    request_hwm: int = INBOX_RCVHWM,
) -> tuple[zmq.Socket, zmq.Socket]:
    """The inbox and the feed, with every option chosen on purpose; ``curve`` is the broker's (public, secret)."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable/full peers raise, so we drop and count
    # A reconnecting client keeps its session (same routing id).  Not under CURVE: there a connection
    # with another key could take a live session's routing id, and with it the session's replies and dms;
    # without handover libzmq leaves such a connection unread until the first one is gone.
    router.setsockopt(zmq.ROUTER_HANDOVER, 0 if curve is not None else 1)
    router.setsockopt(zmq.MAXMSGSIZE, max_frame)  # oversized frames never reach Python
    router.setsockopt(zmq.SNDHWM, reply_hwm)
    router.setsockopt(zmq.RCVHWM, request_hwm)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, feed_hwm)
    for sock in (router, pub):
        transport.tune_bound(sock)
        if curve is not None:  # both sockets: nothing crosses the wire in clear, the feed included
            transport.curve_server(sock, curve)
    router.bind(router_ep)
    pub.bind(pub_ep)
    return router, pub


class Broker:
    """Owns the sockets and the core; ``run`` is the whole event loop."""

    def __init__(
        self,
        router: zmq.Socket,
        pub: zmq.Socket,
        core: ChatCore,
        secure: bool = False,
        max_unstored_bytes: int = MAX_UNSTORED_BYTES,
        front_door: FrontDoor | None = None,
    ) -> None:
        self.router = router
        #: ``--cluster``: room events go to the cluster's log and come back from it (``front_door``).
        self.front_door = front_door
        self.cluster_errors = 0  # unforeseen exceptions on the cluster's side (``_with_the_cluster``)
        self.max_unstored_bytes = max_unstored_bytes
        self.pub = pub
        self.core = core
        self.secure = secure  # CURVE: read each request's authenticated key (User-Id) from its frame
        self.dropped_replies = 0
        self.poller = zmq.Poller()
        self._reading = False  # whether the poller has the inbox (``_read_within_bound``)
        self._paused_at = -math.inf  # when reading last stopped for the disk: logged at most once a minute
        #: What a failed commit would have announced: sent when the storage works again, never before.
        self.held: list[Output] = []
        #: Outputs waiting for their batch's commit (None: a batch that stored nothing, behind one that did),
        #: oldest first: sent in this order, so no reply or event overtakes one handled before it.
        self.waiting: deque[tuple[Sealed | None, list[Output]]] = deque()
        self.writer: Writer | None = None
        self.written: zmq.Socket | None = None  # the writer says "a batch is done" here
        store = core.store
        if isinstance(store, SqliteStore) and store.file is not None:
            self.writer = Writer(store, router.context, max_unstored_bytes)
            self.written = self.writer.sock
            self.poller.register(self.written, zmq.POLLIN)
        for sock in front_door.sockets if front_door is not None else ():
            self.poller.register(sock, zmq.POLLIN)

    def flush(self, outputs: list[Output]) -> None:
        """Commit, then send: nobody is told of (acked, or shown on the feed) what is not yet durable.

        With a ``Writer`` the commit happens off the loop: the batch is handed over, and its outputs go
        once it is durable: at once if the journal took it (``--sync normal``), else (in order, behind
        earlier ones) when the writer says it is committed (``on_written``).  Without a writer (no database
        file) the commit is here and now.  If a commit fails (a full or read-only disk), its
        outputs are held and the core refuses writes (``unavailable``) until ``retry_storage`` succeeds;
        reads go on meanwhile.  While it is unavailable nothing new needs storing, so what comes out is
        sent as soon as nothing is ahead of it."""
        if self.core.unavailable is not None:
            batch = None
        elif self.writer is None:
            try:
                self.core.commit()
            except sqlite3.Error as exc:
                self._cannot_store(exc, outputs)
                return
            batch = None
        else:
            batch = self.core.seal()
            if batch is not None:
                try:
                    if self.writer.submit(batch):
                        batch = None  # durable in the journal: nothing to wait for
                except OSError as exc:  # the journal could not take it (a full disk)
                    self.writer.idle()
                    self._writer_failed(self._take_answers() or exc, outputs)
                    return
        if batch is None and not self.waiting:
            self.dispatch(outputs)  # nothing to wait for: at once, no thread hop
        else:
            self.waiting.append((batch, outputs))

    def on_written(self) -> None:
        """The writer finished batches: send what each held back, in order, up to one still being written."""
        error = self._take_answers()
        if error is not None:
            self._writer_failed(error)
            return
        while self.waiting:
            batch, outputs = self.waiting[0]
            if batch is not None and batch.result is None:
                return  # still being written
            self.waiting.popleft()
            self.dispatch(outputs)

    def _take_answers(self) -> BaseException | None:
        """Batches the writer answered leave the store's memory, oldest first; the first failure is returned
        (it and the batches after it stay, for ``_writer_failed``)."""
        if self.writer is None:
            return None
        self.writer.collect()
        store = self.core.store
        while store.sealed and store.sealed[0].result is not None:  # type: ignore[union-attr]
            batch = store.sealed[0]  # type: ignore[union-attr]
            if batch.result is not True:
                return batch.result
            store.written(batch)  # type: ignore[union-attr]
        return None

    def settle(self, timeout: float | None = None) -> None:
        """Wait until every batch handed to the writer was committed and its outputs sent (or held), or the
        writer is found dead (then what it had not answered is held, for ``retry_storage``)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        if self.writer is not None:
            self.writer.hand_over(awaited=True)
        while (self.waiting or self.unstored()) and self.written is not None:
            left = max(0, math.ceil(min(0.1, deadline - time.monotonic()) * 1000))
            if self.written.poll(left):
                self.on_written()
                continue
            self._check_writer()
            if time.monotonic() >= deadline:
                return

    def unstored(self) -> int:
        """Bytes of events handed to the writer and not yet known to be in SQLite (a front door: handed to the
        cluster's log and not yet answered)."""
        if self.front_door is not None:
            return self.front_door.pending_bytes
        return getattr(self.core.store, "unstored_bytes", 0)

    def _writer_failed(self, exc: BaseException, outputs: Sequence[Output] = ()) -> None:
        """A batch could not be stored: it and every batch after it go back to pending, the outputs not yet
        sent (those waiting for the writer, and ``outputs``) are held, and writes are refused until
        ``retry_storage`` works.  What the journal has is durable already: its acks went out."""
        if self.writer is not None:
            self.writer.idle()  # later batches were failed without touching the database
        self.core.store.unseal()  # type: ignore[union-attr]
        held = [output for _, waiting in self.waiting for output in waiting]
        self.waiting.clear()
        self._cannot_store(exc, held + list(outputs))

    def _cannot_store(self, exc: BaseException, outputs: list[Output]) -> None:
        self.held += outputs
        self.core.unavailable = f"storage error: {exc}"
        log.error("cannot store (%s): acks held, writes refused with 'unavailable' until it works again", exc)

    def retry_storage(self) -> None:
        """Try the failed commit again (here, on the loop: nothing else is being written); on success send
        what it held and accept writes again."""
        try:
            self.core.commit()
        except sqlite3.Error:
            return
        if self.writer is not None:
            self.writer.recover()
        held, self.held = self.held, []
        self.core.unavailable = None
        log.warning("storage works again: %d held events and replies sent, writes accepted", len(held))
        self.dispatch(held)

    def dispatch(self, outputs: list[Output]) -> None:
        """Feed first, one frame per topic, then the replies.

        Everything one batch produced for a room goes out as one feed frame (a JSON array, in seq
        order) when there is more than one event: one send, and one write per subscriber, instead of
        one per event.  A lone event goes out alone and at once, so batching never adds delay.  The
        feed goes before the replies, so a sender's ack never overtakes its own event.
        """
        batches: dict[bytes, list[bytes]] = {}
        replies = []
        for out in outputs:
            if type(out) is Publish:
                batch = batches.get(out.topic)
                if batch is None:
                    batches[out.topic] = [out.payload]
                else:
                    batch.append(out.payload)
            elif type(out) is Append:
                self.front_door.append(out)  # type: ignore[union-attr]  # only a front door's core makes them
            elif type(out) is ReadLog:
                replies += self.front_door.reads.read(out)  # type: ignore[union-attr]
            elif type(out) is ReadRecent:
                replies += self.front_door.reads.recent(out)  # type: ignore[union-attr]
            elif type(out) is Claim:
                self.front_door.claim(out, time.monotonic())  # type: ignore[union-attr]
            elif type(out) is Release:
                self.front_door.release(out)  # type: ignore[union-attr]
            elif type(out) is Forward:
                self.front_door.forward(out)  # type: ignore[union-attr]
            elif type(out) is Member:
                self.front_door.roster.member(out)  # type: ignore[union-attr]
            else:
                replies.append(out)
        send_feed = self.pub.send
        for topic, payloads in batches.items():
            for frame in m.batch_frames(payloads):
                send_feed(topic, SNDMORE)
                send_feed(frame)
        send = self.router.send
        for peer, payload in replies:
            try:
                send(peer, NOBLOCK | SNDMORE)  # refused whole (nothing queued) if the peer is gone or full
            except zmq.ZMQError:  # peer gone (EHOSTUNREACH) or its queue full (EAGAIN)
                self.dropped_replies += 1
                continue
            send(payload, NOBLOCK)  # the rest of a message whose first part was taken is always taken

    def run(self, stop: transport.StopSignals) -> None:
        """Serve until ``stop`` is requested (SIGINT, SIGTERM): the turn under way ends first."""
        self.poller.register(stop, zmq.POLLIN)
        self.flush(self.core.tick(time.monotonic()))
        while not stop.requested:
            self.turn()

    def turn(self) -> None:
        """One pass of the loop: wait for requests, the writer's answers or the next heartbeat; handle them."""
        core, clock = self.core, time.monotonic
        self._read_within_bound()
        due = core.next_heartbeat if self.front_door is None else min(core.next_heartbeat, self.front_door.due())
        wait_ms = max(0, math.ceil((due - clock()) * 1000))  # pyzmq truncates floats
        ready = dict(self.poller.poll(wait_ms))
        if self.written in ready:
            self.on_written()
        if self.front_door is not None:
            self._with_the_cluster(ready)
        if self.router in ready:
            self.drain()
        now = clock()
        if now >= core.next_heartbeat:
            self._check_writer()
            if self.writer is not None:
                self.writer.hand_over(now)  # what the journal took since the last hand-over
            if core.unavailable is not None:
                self.retry_storage()
            self.flush(core.tick(now))

    def _read_within_bound(self) -> None:
        """Poll the inbox only while the events waiting for SQLite are under ``max_unstored_bytes``.  Past it
        requests wait in libzmq's bounded queues (then TCP pushes back on their senders) until the writer
        catches up, however long that takes: a slow or hung disk costs memory up to the bound and one batch,
        no more.  Heartbeats, expiry and the writer's answers go on meanwhile."""
        reading = self.unstored() < self.max_unstored_bytes
        if reading == self._reading:
            return
        self._reading = reading
        if reading:
            self.poller.register(self.router, zmq.POLLIN)
            return
        self.poller.unregister(self.router)
        if self.writer is not None:
            self.writer.hand_over(awaited=True)  # all of it, now: the writer has to catch up before anything else
        now = time.monotonic()
        if now - self._paused_at >= 60:
            behind = "the cluster's log" if self.front_door is not None else "SQLite"
            log.warning("%s is %d bytes behind: %s", behind, self.unstored(), STOPPED_READING)
        self._paused_at = now

    def _settle_before_stop(self) -> None:
        """``settle``, but a writer that does not answer in ``STOP_WAIT_S`` (a hung disk) is killed, and what
        it had not answered (or what failed) is committed on the loop: a stop always ends."""
        self.settle(STOP_WAIT_S)
        if self.writer is not None and (self.waiting or self.unstored()):
            log.error("the store's writer did not answer in %g s; stopping it, committing on the loop", STOP_WAIT_S)
            self.writer.process.kill()
            self.writer.process.wait()
            self._check_writer()
        if self.core.unavailable is not None:
            self.retry_storage()

    def _with_the_cluster(self, ready: dict) -> None:
        """A front door's turn: its timers, then what the bridge brought.  An unforeseen exception here (what
        NATS sent is not a peer's request, but it is input too) costs what it was handling, not the process."""
        door = self.front_door
        assert door is not None
        try:
            door.tick(time.monotonic())  # its lease, the claims waiting for another front door's to go
            if ready:
                self.flush(door.handle(time.monotonic()))
        except Exception:  # the crash barrier
            self.cluster_errors += 1
            if self.cluster_errors == 1 or self.cluster_errors % 1000 == 0:
                log.exception("cluster: failed on what the bridge brought (%d times so far)", self.cluster_errors)

    def _settle_with_the_log(self) -> None:
        """Stopping a front door: wait (up to ``STOP_WAIT_S``) for the log to answer what was handed to it, the
        leaves of our sessions among it, and send those answers."""
        door, deadline = self.front_door, time.monotonic() + STOP_WAIT_S
        assert door is not None
        door.leave()  # its names free at once, its lease gone: its people find both on another front door
        while door.pending() and time.monotonic() < deadline:
            if door.bridge.sock.poll(100):
                self.dispatch(door.handle(time.monotonic()))

    def _check_writer(self) -> None:
        """If the writer process died (killed, out of memory), what it had not answered failed: the broker
        refuses writes until a commit of its own works, and commits on its loop from then on."""
        if self.writer is None or self.writer.process.poll() is None:
            return
        log.error(
            "the store's writer process ended (%s); committing on the loop from now on", self.writer.process.poll()
        )
        self.writer.abandon()
        self.on_written()  # every batch it had not answered failed: to be stored on the loop
        if self.written in self.poller:
            self.poller.unregister(self.written)
        self.writer = self.written = None

    def drain(self) -> None:
        """Handle what is waiting, without blocking: one poll per burst, one commit per batch."""
        router, core, clock, secure = self.router, self.core, time.monotonic, self.secure
        recv, more, known = router.recv, router.getsockopt, core.peers
        pending: list[Output] = []
        key = address = None
        flush_at = clock() + FLUSH_AFTER_S
        for _ in range(DRAIN_LIMIT):
            try:
                if secure:  # Frame objects carry the ZAP User-Id: the client's z85 public key
                    parts = router.recv_multipart(NOBLOCK, copy=False)
                    key = parts[-1].get("User-Id")
                    peer, frames = parts[0].bytes, [part.bytes for part in parts[1:]]
                    address = None if peer in known else transport.peer_address(parts[-1])
                else:  # recv_multipart, unrolled: a routing id and (almost always) one frame
                    peer = recv(NOBLOCK)
                    if peer in known:
                        frames, address = [recv()], None
                    else:  # a new connection: its source is the address its frames came from
                        frame = recv(copy=False)
                        frames, address = [frame.bytes], transport.peer_address(frame)
                    while more(RCVMORE):
                        frames.append(recv())
            except zmq.Again:
                break
            now = clock()
            pending += core.handle(peer, frames, now, key, address)
            if len(pending) >= COMMIT_BATCH or now >= flush_at:
                self.flush(pending)
                pending = []
                flush_at = now + FLUSH_AFTER_S
                if self.unstored() >= self.max_unstored_bytes:
                    break  # the disk is behind: read no more until it catches up (``_read_within_bound``)
        self.flush(pending)

    def stop(self) -> None:
        self._settle_before_stop()
        self.flush(self.core.shutdown(time.monotonic()))
        self._settle_before_stop()
        if self.front_door is not None:
            self._settle_with_the_log()
            self.front_door.close()
        if self.writer is not None and not self.writer.stop(STOP_WAIT_S):
            log.error("the store's writer did not exit in %g s; killed it, committing what it held here", STOP_WAIT_S)
        unstored = self.core.store.pending
        try:
            self.core.store.close()
        except sqlite3.Error as exc:
            log.error("stopping with %d events that could not be stored (%s); none of them was acked", unstored, exc)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-broker",
        description="The chat broker: clients send to its inbox (ROUTER) and read its feed (PUB).",
    )
    parser.add_argument("--host", default="*", help="interface to bind both sockets on (default: * = all)")
    parser.add_argument(
        "--router",
        metavar="ENDPOINT",
        help=f"inbox endpoint, any ZeroMQ endpoint (default: tcp://HOST:{m.DEFAULT_ROUTER_PORT})",
    )
    parser.add_argument(
        "--pub",
        metavar="ENDPOINT",
        help=f"feed endpoint, any ZeroMQ endpoint (default: tcp://HOST:{m.DEFAULT_PUB_PORT})",
    )
    defaults = ChatConfig()
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=defaults.heartbeat,
        metavar="SECONDS",
        help="seconds between feed heartbeats; clients ping this often (default: %(default)s)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=defaults.session_timeout,
        metavar="SECONDS",
        help="end a session silent this long, publishing its leave (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=defaults.history_on_join,
        metavar="N",
        help="events of room history sent on join (default: %(default)s)",
    )
    parser.add_argument(
        "--history-kept",
        type=int,
        default=defaults.history_kept,
        metavar="N",
        help="events kept per room for history requests (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=defaults.rate_limit,
        metavar="MSGS_PER_S",
        help="requests per second per session, 0 = no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-burst",
        type=float,
        default=defaults.rate_burst,
        metavar="N",
        help="requests a session may send at once before the rate applies (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        default=str(default_db_path()),
        metavar="PATH",
        help="SQLite file for room history and seqs; ':memory:' keeps nothing (default: %(default)s)",
    )
    parser.add_argument(
        "--cluster",
        metavar="URLS",
        help="be a front door of a cluster: room events go to a JetStream stream on these NATS servers "
        "(comma-separated, e.g. nats://h1:4222,nats://h2:4222), not to --db (see docs/scaling.md)",
    )
    parser.add_argument(
        "--cluster-replicas",
        type=int,
        default=3,
        metavar="N",
        help="copies of the stream the cluster keeps, one per NATS node (default: %(default)s)",
    )
    parser.add_argument(
        "--sync",
        choices=SYNC_LEVELS,
        default="normal",
        help="normal: commits survive a broker crash; full: also a power loss, at a disk flush per batch "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-unstored-bytes",
        type=int,
        default=MAX_UNSTORED_BYTES,
        metavar="BYTES",
        help="events accepted and not yet in SQLite (a front door: not yet answered by the cluster's log), at most; "
        "past it the broker waits for the disk (the log) before it reads more requests (default: %(default)s)",
    )
    parser.add_argument(
        "--feed-hwm",
        type=int,
        default=FEED_HWM,
        metavar="N",
        help="feed messages queued per subscriber; past it that subscriber misses events and refetches them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--reply-queue",
        type=int,
        default=INBOX_HWM,
        metavar="FRAMES",
        help="replies queued per client (each at most about 64 KiB); past it that client's replies are dropped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--request-queue",
        type=int,
        default=INBOX_RCVHWM,
        metavar="FRAMES",
        help="requests queued per client (each at most --max-frame); past it libzmq stops reading that client "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--curve",
        metavar="KEYDIR",
        type=Path,
        help="encrypt and authenticate with CurveZMQ, keys from KEYDIR (made by chat-keys; see docs/security.md)",
    )
    parser.add_argument(
        "--max-text",
        type=int,
        default=defaults.max_text,
        metavar="N",
        help="characters per message, at most %(default)s (default: %(default)s)",
    )
    parser.add_argument(
        "--max-frame",
        type=int,
        default=m.MAX_FRAME_BYTES,
        metavar="BYTES",
        help="largest inbox frame; libzmq drops the connection of a peer that sends more (default: %(default)s)",
    )
    parser.add_argument(
        "--max-rooms-per-session",
        type=int,
        default=defaults.max_rooms_per_session,
        metavar="N",
        help="rooms one session may be in, at most %(default)s (default: %(default)s)",
    )
    parser.add_argument(
        "--max-history",
        type=int,
        default=defaults.max_history,
        metavar="N",
        help="events one history reply may carry, at most %(default)s (default: %(default)s)",
    )
    parser.add_argument(
        "--max-sessions-per-key",
        type=int,
        default=defaults.max_sessions_per_key,
        metavar="N",
        help="live sessions per CURVE client key, 0 = no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-rooms",
        type=int,
        default=defaults.max_rooms,
        metavar="N",
        help="rooms held in memory at once; rooms nobody is in are put to rest to make room (default: %(default)s)",
    )
    parser.add_argument(
        "--trusted-source",
        action="append",
        default=[],
        metavar="ADDRESS_OR_KEY",
        help="an IP address or CURVE public key (z85) of a gateway that multiplexes many people, such as chat-web: "
        "each of its connections counts as a source of its own (repeatable)",
    )
    for flag, kind, metavar, text in SOURCE_AND_MEMORY_FLAGS:
        field = flag[2:].replace("-", "_")
        parser.add_argument(flag, type=kind, default=getattr(defaults, field), metavar=metavar, help=text)
    return parser.parse_args(argv)


#: The limits per source and on memory: each flag is the ChatConfig field of the same name.
SOURCE_AND_MEMORY_FLAGS = (
    (
        "--source-rate",
        float,
        "REQS_PER_S",
        "requests per second from one source (CURVE key, else IP address), 0 = no limit (default: %(default)s)",
    ),
    ("--source-burst", float, "N", "requests one source may send at once (default: %(default)s)"),
    ("--max-sessions-per-source", int, "N", "live sessions from one source, 0 = no limit (default: %(default)s)"),
    (
        "--max-rooms-per-source",
        int,
        "N",
        "room memberships of one source's sessions together, 0 = no limit (default: %(default)s)",
    ),
    (
        "--history-bytes-per-room",
        int,
        "BYTES",
        "bytes of events kept in memory per room; older ones are read from the database (default: %(default)s)",
    ),
    (
        "--history-bytes-total",
        int,
        "BYTES",
        "bytes of events kept in memory for all rooms together (default: %(default)s)",
    ),
    (
        "--max-reply-bytes",
        int,
        "BYTES",
        "bytes of events in one history reply; a cut reply says more: true (default: %(default)s)",
    ),
    (
        "--max-resting-rooms",
        int,
        "N",
        "rooms at rest (nobody in them) whose last seq is kept in memory; older ones are read from the database "
        "(default: %(default)s)",
    ),
    (
        "--max-forward-bytes",
        int,
        "BYTES",
        "a front door (--cluster): bytes of dms on their way to other front doors at once; past it they get "
        "'unavailable' (default: %(default)s)",
    ),
    (
        "--max-roster-bytes",
        int,
        "BYTES",
        "a front door (--cluster): bytes of the cluster's roster (the other front doors' room members) it keeps; "
        "past it who and joined list fewer of them (default: %(default)s)",
    ),
    (
        "--dedupe-total",
        int,
        "N",
        "message ids remembered for resends, all users together; at the bound new messages get 'unavailable' "
        "(default: %(default)s)",
    ),
    (
        "--dedupe-age",
        float,
        "SECONDS",
        "an id is remembered at least this long, whatever other users send (default: %(default)s)",
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    router_ep, pub_ep = cli.endpoints(args.host, args.router, args.pub)
    try:
        config = ChatConfig(
            heartbeat=args.heartbeat,
            session_timeout=args.session_timeout,
            history_on_join=args.history,
            history_kept=args.history_kept,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            max_rooms=args.max_rooms,
            max_text=args.max_text,
            max_rooms_per_session=args.max_rooms_per_session,
            max_history=args.max_history,
            max_sessions_per_key=args.max_sessions_per_key,
            trusted_sources=frozenset(args.trusted_source),
            **{
                flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                for flag, *_ in SOURCE_AND_MEMORY_FLAGS
            },
        )
    except ValueError as exc:
        print(f"chat-broker: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="chat-broker: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        store = open_store(":memory:" if args.cluster else args.db, args.sync)  # a cluster's history: its log
    except StoreInUse as exc:
        print(f"chat-broker: the database {args.db} is in use: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError, sqlite3.Error) as exc:
        print(f"chat-broker: cannot open the database {args.db} for writing: {exc}", file=sys.stderr)
        return 1
    open_files = transport.raise_open_files_limit()
    ctx = transport.batch_scheduled(zmq.Context())
    auth = None
    try:
        curve, allowed = None, None
        if args.curve:
            curve = keys.server_keys(args.curve)
            allowed = keys.allowed_keys(args.curve)
            auth = transport.start_authenticator(ctx, args.curve, allowed)
        router, pub = bind_sockets(
            ctx, router_ep, pub_ep, args.feed_hwm, args.max_frame, curve, args.reply_queue, args.request_queue
        )
    except (zmq.ZMQError, OSError, ValueError) as exc:
        print(f"chat-broker: cannot start: {exc}", file=sys.stderr)
        if auth is not None:
            auth.stop()
        ctx.destroy(linger=0)
        store.close()
        return 1
    # Timers run on the monotonic clock (a wall-clock step can neither expire nor freeze sessions);
    # event ts are that clock plus a fixed offset to Unix time taken now.
    core = ChatCore(
        config,
        store,
        now=time.monotonic(),
        wall_offset=time.time() - time.monotonic(),
        bindings=allowed,
        clustered=bool(args.cluster),
    )
    door = None
    if args.cluster:
        try:
            servers = [url.strip() for url in args.cluster.split(",") if url.strip()]
            door = FrontDoor(ctx, servers, core, args.cluster_replicas)
            store.history_id = door.start()  # the cluster's history: every front door names it alike
        except ClusterUnavailable as exc:
            print(f"chat-broker: cannot reach the cluster at {args.cluster}: {exc}", file=sys.stderr)
            if door is not None:
                door.close()
            ctx.destroy(linger=0)
            return 1
    broker = Broker(
        router, pub, core, secure=curve is not None, max_unstored_bytes=args.max_unstored_bytes, front_door=door
    )
    gc.freeze()  # what start-up made (modules, the restored rooms) is never walked by the GC again
    stop = transport.StopSignals()  # before the lines that say it serves: a signal from then on stops it cleanly
    print(f"chat broker (protocol v{m.PROTOCOL_VERSION}, epoch {core.epoch})")
    print(f"  inbox (ROUTER): {router.getsockopt_string(zmq.LAST_ENDPOINT)}")
    print(f"  feed  (PUB):    {pub.getsockopt_string(zmq.LAST_ENDPOINT)}")
    where = f"{args.db} ({len(core.rooms)} rooms, sync={args.sync})" if store.persistent else "memory only"
    if door is not None:
        where = f"the cluster's log, stream {store.history_id} at {door.connected}"
    print(f"  history:        {where}")
    print(f"  security:       {transport.security_mode(curve is not None, allowed)}")
    print(f"  capacity:       about {max(0, open_files - 64):,} connections (open files limit {open_files:,})")
    print("Ctrl-C stops it.", flush=True)
    at_once = False  # asked twice: the journal keeps what was acked, for the next start
    try:
        broker.run(stop)
    except KeyboardInterrupt:  # asked twice before the turn under way ended, which may be cut anywhere
        at_once = True
    finally:
        if not at_once:
            try:
                print("chat broker stopping: storing what is pending (asked again, it stops at once)", flush=True)
                broker.stop()
            except KeyboardInterrupt:
                at_once = True
        if at_once:
            log.warning("asked again to stop: stopping at once")
        router.close()
        pub.close()  # LINGER lets the shutdown event and queued replies go out
        if auth is not None:
            auth.stop()
        if at_once:
            ctx.destroy(linger=0)  # the writer's socket too, which the stop had no time to close
        else:
            ctx.term()
    print(
        f"chat broker stopped ({len(core.sessions)} sessions ended, {broker.dropped_replies} replies undeliverable)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
