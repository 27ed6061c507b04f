"""A broker as a front door of a cluster (``--cluster nats://...``, issue 17): the chat core's room events go
to one replicated JetStream stream, and come back from it, with its positions, to every front door alike.

- **Out:** each ``chat.Append`` the core makes is published to ``chat.room.<room>`` under its log id
  (``Nats-Msg-Id``: a resend through any front door is stored once).  One sender's events go one at a time,
  so a retry through a leader election cannot put a person's lines out of order; different senders'
  go side by side.  The log's answer acks the request (``ChatCore.confirmed``) or refuses it
  (``refused``: ``unavailable``).
- **Back:** the stream RePublishes what it stores to ``feed.room.<room>``; ``cluster_feed`` puts each room in
  order (its ``prev`` chain), fills holes from the stream, and the core keeps and publishes each event
  (``ChatCore.applied``) on this broker's PUB, as a single broker does.

- **Names:** a name is claimed in the key-value bucket ``chat_names`` (its value: the front door's id) before
  a hello or nick is answered.  Each front door holds a lease, its key in ``chat_doors``, renewed every
  ``LEASE_RENEW_S`` and gone ``LEASE_S`` after the last renewal (the bucket's age limit): a name whose front
  door has no lease is free, and is taken over by compare-and-set on its revision (two front doors trying
  at once: one wins).  A client resuming after its front door died waits for that lease to go.

Not yet a whole cluster (docs/scaling.md): ``who``, ``rooms`` and DMs are still this front door's own, and a
dead front door's members are not announced as gone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import zmq

from chat import Append, ChatCore, Claim, Output, ReadLog, Release
from cluster_feed import FEED_PREFIX, LOG_PREFIX, ClusterFeed, Fetch
from messages import ErrorCode
from nats_bridge import Acked, Dropped, Failed, KvResult, Message, NatsBridge, Status, Stored

log = logging.getLogger("chat-broker")

#: The stream every room's events are in.
STREAM = "CHAT"
#: History reads walking the log at once (each holds up to --max-history events): more are refused
#: (``unavailable``, retry later), so what history requests can make a front door hold is bounded.
MAX_READS = 64
#: The key-value buckets of names and of front doors' leases.
NAMES, DOORS = "chat_names", "chat_doors"
#: A front door's lease: gone this long after its last renewal (the doors bucket's age limit) ...
LEASE_S = 3.0
#: ... and renewed this often.
LEASE_RENEW_S = 1.0
#: How long a resuming client's claim waits for the lease of the front door that had its name to go.
RESUME_WAIT_S = LEASE_S + 1.5
#: How long a history read asks the log again for a step it did not answer (a leader election takes ~5 s).
READ_RETRY_S = 10.0
#: How long a front door waits at start for NATS and its stream before it gives up.
START_TIMEOUT_S = 20.0


def stream_config(replicas: int) -> dict:
    """One stream for every room (a stream per room costs NATS a share of a core per idle room), file
    storage, ``replicas`` copies, ten minutes of deduplication (the resend window clients are promised), and
    RePublish, whose ``Nats-Last-Sequence`` header is the room's ``prev``."""
    return {
        "name": STREAM,
        "subjects": [LOG_PREFIX + ">"],
        "num_replicas": replicas,
        "storage": "file",
        "duplicate_window": 600,
        "republish": {"src": LOG_PREFIX + ">", "dest": FEED_PREFIX + ">"},
    }


class ClusterUnavailable(RuntimeError):
    """NATS, or the stream, could not be reached at start."""


@dataclass
class _Claiming:
    """A claim of a name on its way: which step's answer it waits for, what it found."""

    claim: Claim
    deadline: float  # until when a resuming client's claim waits for another front door's lease to go
    step: str = "create"  # "create", "get" (who has it), "door" (is that door alive), "take" (compare-and-set)
    holder: str = ""
    revision: int = 0
    attempts: int = 0

    @property
    def key(self) -> str:
        return name_key(self.claim.folded)


def name_key(folded: str) -> str:
    """A name as a key-value key (which allows fewer characters than a name, and no final dot)."""
    return folded.encode().hex()


class FrontDoor:
    """The broker's side of the cluster: the bridge, the appends awaiting the log, the feed coming back."""

    def __init__(self, ctx: zmq.Context, servers: list[str], core: ChatCore, replicas: int = 3) -> None:
        if importlib.util.find_spec("nats") is None:
            raise ClusterUnavailable("nats-py is not installed (pip install 'zmq-chat[cluster]')")
        self.core = core
        self.bridge = NatsBridge(ctx, servers)
        self.feed = ClusterFeed()
        self.sent: dict[int, Append] = {}  # bridge token -> the append it carries
        self.fetches: dict[int, Fetch] = {}  # bridge token -> the fetch it carries
        #: bridge token -> a history read walking the log: the read, the events it found so far (seq, prev,
        #: bytes), and until when a step the log did not answer is asked again (an election: ~5 s)
        self.reads: dict[int, tuple[ReadLog, list[tuple[int, int, bytes]], float]] = {}
        self.waiting_reads: list[tuple[float, ReadLog, list[tuple[int, int, bytes]], float]] = []
        self.queues: dict[str, deque[Append]] = {}  # per sender: the first is with the log, the rest wait
        #: The bytes of the events in ``queues``: the broker reads no requests past ``--max-unstored-bytes``
        #: (NATS down, an election), so what the log has not answered is bounded like what a disk has not.
        self.pending_bytes = 0
        self.connected = ""  # the NATS server we are connected to ("": none)
        self.replicas = replicas
        self.door_id = os.urandom(8).hex()
        self.claims: dict[int, _Claiming] = {}  # bridge token -> the claim waiting for that answer
        self.waiting_claims: list[tuple[float, _Claiming]] = []  # (when to look again, claim): resuming
        self.held: dict[str, int] = {}  # folded name -> the revision of our claim on it
        self.next_renewal = 0.0

    @property
    def sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        """What the broker's poller watches."""
        return self.bridge.sock, self.bridge.feed

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Connect, make (or update) the stream, subscribe to its feed; returns the history id (when the
        stream was made), or raises ``ClusterUnavailable``."""
        deadline = time.monotonic() + timeout
        token, error = None, ""
        poller = zmq.Poller()
        poller.register(self.bridge.sock, zmq.POLLIN)
        while time.monotonic() < deadline:
            poller.poll(100)
            for event in self.bridge.answers():
                if isinstance(event, Status):
                    self._status(event)
                    if event.state == "closed":
                        raise ClusterUnavailable(event.detail or "the connection to NATS closed")
                    if event.state == "connected" and token is None:
                        token = self.bridge.stream(stream_config(self.replicas))
                elif isinstance(event, KvResult) and event.token == token:
                    if event.error is None:
                        history_id = f"nats:{STREAM}:{(event.value or b'').decode()}"
                        self._make_buckets(deadline)
                        self.bridge.subscribe(FEED_PREFIX + ">")
                        return history_id
                    # JetStream may be electing a leader (a node just restarted): ask again, until the deadline.
                    error = event.error
                    time.sleep(0.5)  # starting up: nothing else to do meanwhile
                    token = self.bridge.stream(stream_config(self.replicas))
        raise ClusterUnavailable(f"no stream {STREAM} in {timeout:g} s" + (f": {error}" if error else ""))

    def _make_buckets(self, deadline: float) -> None:
        """The names and leases buckets (made by the first front door, found by the others), and our lease."""
        orders = [
            lambda: self.bridge.kv_bucket({"bucket": NAMES, "history": 1, "replicas": self.replicas}),
            lambda: self.bridge.kv_bucket({"bucket": DOORS, "history": 1, "ttl": LEASE_S, "replicas": self.replicas}),
            lambda: self.bridge.kv("put", DOORS, self.door_id),
        ]
        for order in orders:
            token, error = order(), "no answer"
            while time.monotonic() < deadline:
                answer = self._answer_to(token, deadline)
                if answer is not None and answer.error is None:
                    break
                error = answer.error if answer is not None else error
                time.sleep(0.5)  # starting up: JetStream may be electing a leader
                token = order()
            else:
                raise ClusterUnavailable(f"cannot make the key-value buckets: {error}")
        self.next_renewal = time.monotonic() + LEASE_RENEW_S

    def _answer_to(self, token: int, deadline: float) -> KvResult | None:
        """Wait (at start only) for the answer to ``token``."""
        while time.monotonic() < deadline:
            if self.bridge.sock.poll(100):
                for event in self.bridge.answers():
                    if isinstance(event, KvResult) and event.token == token:
                        return event
                    if isinstance(event, Status):
                        self._status(event)
        return None

    def due(self) -> float:
        """When ``tick`` next has something to do: renew our lease, look again for a resuming claim."""
        return min([self.next_renewal, *(at for at, _ in self.waiting_claims), *(w[0] for w in self.waiting_reads)])

    def tick(self, now: float) -> None:
        if now >= self.next_renewal:
            self.bridge.kv("put", DOORS, self.door_id)  # the answer is not awaited: the next renewal is
            self.next_renewal = now + LEASE_RENEW_S
        if self.waiting_reads and min(w[0] for w in self.waiting_reads) <= now:
            due_reads = [w for w in self.waiting_reads if w[0] <= now]
            self.waiting_reads = [w for w in self.waiting_reads if w[0] > now]
            for _, read, found, until in due_reads:
                self._walk(read, found, until)
        due = [claiming for at, claiming in self.waiting_claims if at <= now]
        if due:
            self.waiting_claims = [(at, claiming) for at, claiming in self.waiting_claims if at > now]
            for claiming in due:
                self._ask(claiming, "door", self.bridge.kv("get", DOORS, claiming.holder))

    def claim(self, claim: Claim, now: float) -> None:
        """Claim ``claim.folded`` for a hello or nick here: ``ChatCore.claimed`` hears how it went."""
        claiming = _Claiming(claim, now + (RESUME_WAIT_S if claim.resume else 0.0))
        self._ask(claiming, "create", self.bridge.kv("create", NAMES, claiming.key, self.door_id.encode()))

    def release(self, release: Release) -> None:
        revision = self.held.pop(release.folded, 0)
        if revision:
            self.bridge.kv("delete", NAMES, name_key(release.folded), revision=revision)

    def _ask(self, claiming: _Claiming, step: str, token: int) -> None:
        claiming.step = step
        self.claims[token] = claiming

    def _claim_answered(self, answer: KvResult, now: float) -> list[Output]:
        """The next step of a claim: who has the name, whether that front door lives, take it over."""
        claiming = self.claims.pop(answer.token)
        step, error = claiming.step, answer.error
        if (error is None and step in ("create", "take")) or (step == "get" and answer.value == self.door_id.encode()):
            self.held[claiming.claim.folded] = answer.revision
            return self.core.claimed(claiming.claim.peer, claiming.claim.folded, None, now)
        if step == "create" and error == "exists":
            self._ask(claiming, "get", self.bridge.kv("get", NAMES, claiming.key))
        elif step == "get" and error is None:  # another front door's: is it alive?
            claiming.holder, claiming.revision = (answer.value or b"").decode(), answer.revision
            self._ask(claiming, "door", self.bridge.kv("get", DOORS, claiming.holder))
        elif step == "door" and error is None:  # alive: taken, unless a resuming client waits for it to go
            if now >= claiming.deadline:
                return self.core.claimed(claiming.claim.peer, claiming.claim.folded, ErrorCode.NAME_TAKEN, now)
            self.waiting_claims.append((now + 0.5, claiming))
        elif step == "door" and error == "not_found":  # its front door is gone: take it over
            update = self.bridge.kv("update", NAMES, claiming.key, self.door_id.encode(), claiming.revision)
            self._ask(claiming, "take", update)
        elif error in ("not_found", "wrong_revision") and claiming.attempts < 3:  # it changed meanwhile: again
            claiming.attempts += 1
            self._ask(claiming, "create", self.bridge.kv("create", NAMES, claiming.key, self.door_id.encode()))
        else:
            code = ErrorCode.NAME_TAKEN if error in ("not_found", "wrong_revision") else ErrorCode.UNAVAILABLE
            log.warning("cluster: the claim of a name ended at %s: %s", step, error)
            return self.core.claimed(claiming.claim.peer, claiming.claim.folded, code, now)
        return []

    def append(self, append: Append) -> None:
        """Hand ``append`` to the log, behind its sender's earlier ones."""
        queue = self.queues.setdefault(append.sender, deque())
        queue.append(append)
        self.pending_bytes += len(append.payload)
        if len(queue) == 1:
            self._publish(append)

    def read(self, read: ReadLog) -> list[Output]:
        """Answer a ``history`` request from the log: walk the room's subject from ``read.after`` (or refuse
        it, past ``MAX_READS`` walks at once)."""
        if len(self.reads) + len(self.waiting_reads) >= MAX_READS:
            return self.core.read_refused(read)
        self._walk(read, [], time.monotonic() + READ_RETRY_S)
        return []

    def _walk(self, read: ReadLog, found: list[tuple[int, int, bytes]], until: float) -> None:
        after = found[-1][0] if found else read.after
        self.reads[self.bridge.next(STREAM, LOG_PREFIX + read.room, after)] = (read, found, until)

    def _read_on(self, event: Stored | Failed, now: float) -> list[Output]:
        """One more event for a history read (its ``prev`` is the one before: the walk follows the room), or
        the end of it: the room has no more, or the read has ``limit``.  A step the log did not answer (no
        leader just now) is asked again a little later, until ``READ_RETRY_S``; then the reply is what was
        found, marked as not the end."""
        read, found, until = self.reads.pop(event.token)
        if isinstance(event, Stored):
            found.append((event.seq, found[-1][0] if found else read.after, event.data))
            if len(found) < read.limit and (event.seq < read.head or not read.head):
                self._walk(read, found, until)
                return []
            return self.core.history_read(read, found, ended=bool(read.head) and event.seq >= read.head)
        if event.reason == "not_found":
            return self.core.history_read(read, found, ended=True)
        if now < until:
            self.waiting_reads.append((now + 0.2, read, found, until))
            return []
        return self.core.history_read(read, found, ended=False)

    def _publish(self, append: Append) -> None:
        token = self.bridge.publish(LOG_PREFIX + append.room, append.payload, append.log_id)
        self.sent[token] = append

    def pending(self) -> int:
        """Appends not yet answered by the log."""
        return sum(map(len, self.queues.values()))

    def handle(self, now: float) -> list[Output]:
        """Everything the bridge has for us: answers first, then the feed."""
        out: list[Output] = []
        for event in self.bridge.events():
            if isinstance(event, Message):
                ready, fetches = self.feed.message(event.subject, event.headers, event.data)
                self._applied(ready, out)
                self._fetch(fetches)
            elif isinstance(event, Acked | Failed) and event.token in self.sent:
                out += self._answered(event, now)
            elif isinstance(event, Stored | Failed) and event.token in self.fetches:
                self._filled(event, out)
            elif isinstance(event, Stored | Failed) and event.token in self.reads:
                out += self._read_on(event, now)
            elif isinstance(event, KvResult) and event.token in self.claims:
                out += self._claim_answered(event, now)
            elif isinstance(event, Dropped):
                log.warning("the loop fell behind the cluster's feed: %d events to fetch again", event.count)
                self._fetch(self.feed.dropped())
            elif isinstance(event, Status):
                self._status(event)
                if event.state == "connected":  # what was republished while we were away: fetched
                    self._fetch(self.feed.dropped())
        return out

    def _answered(self, event: Acked | Failed, now: float) -> list[Output]:
        append = self.sent.pop(event.token)
        queue = self.queues[append.sender]
        queue.popleft()
        self.pending_bytes -= len(append.payload)
        if queue:
            self._publish(queue[0])
        else:
            del self.queues[append.sender]
        if isinstance(event, Acked):
            return self.core.confirmed(append, event.seq, now)
        log.warning("the cluster's log did not store an event of %s: %s", append.room, event.reason)
        return self.core.refused(append, event.reason)

    def _filled(self, event: Stored | Failed, out: list[Output]) -> None:
        fetch = self.fetches.pop(event.token)
        if isinstance(event, Stored):
            ready, fetches = self.feed.stored(fetch, event.seq, event.data)
        elif event.reason == "not_found":
            ready, fetches = self.feed.missing(fetch)
        else:
            ready, fetches = [], self.feed.failed(fetch)
        self._applied(ready, out)
        self._fetch(fetches)

    def _applied(self, ready: list, out: list[Output]) -> None:
        for event in ready:
            out += self.core.applied(event.room, event.seq, event.prev, event.data)

    def _fetch(self, fetches: list[Fetch]) -> None:
        for fetch in fetches:
            self.fetches[self.bridge.next(STREAM, fetch.subject, fetch.after)] = fetch

    def _status(self, event: Status) -> None:
        if event.state == "connected":
            self.connected = event.detail
            log.info("cluster: connected to NATS at %s", event.detail)
        elif event.state in ("disconnected", "closed"):
            self.connected = ""
            log.warning("cluster: %s from NATS %s", event.state, event.detail)
        else:
            log.warning("cluster: %s", event.detail)

    def close(self) -> None:
        self.bridge.close()
