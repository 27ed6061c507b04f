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

- **Dms:** a front door listens (core NATS) on ``chat.dm.<name key>`` for each name it holds; a dm to someone
  not here is a request on that subject (``ChatCore.forwarded`` hears the answer; nobody listening:
  ``no_such_user``), answered by the front door that has them (``ChatCore.deliver``).

- **History** older than what the front door saw, and the recent past (and topic) a ``join`` shows of a room
  it has not seen: ``cluster_reads``.  **Who is where** (``who`` and ``joined``, a dead front door's members
  told gone): ``cluster_roster``; a ``join`` goes to the log only once the roster has the member.

- **Rooms:** at start, the log's rooms and their last positions (``heads``), so ``rooms`` and ``join`` know
  rooms this front door has seen nothing of yet.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

import msgspec
import zmq

from chat import JOIN_EVENT, TOPIC_EVENT, Append, ChatCore, Claim, DmAnswer, Forward, Output, Release
from cluster_feed import FEED_PREFIX, LOG_PREFIX, STREAM, ClusterFeed, Fetch
from cluster_reads import TOPICS, LogReads
from cluster_roster import DOOR_SCAN_S, DOORS, MEMBERS, Roster, member_key, name_key
from messages import ErrorCode
from nats_bridge import (
    Acked,
    Changed,
    Dropped,
    Failed,
    KvEntries,
    KvResult,
    Message,
    NatsBridge,
    Replied,
    Request,
    Status,
    Stored,
)

log = logging.getLogger("chat-broker")

#: The key-value bucket of names (``cluster_roster`` has the leases' and the members').
NAMES = "chat_names"
#: A front door's lease: gone this long after its last renewal (the doors bucket's age limit) ...
LEASE_S = 3.0
#: ... and renewed this often.
LEASE_RENEW_S = 1.0
#: How long a resuming client's claim waits for the lease of the front door that had its name to go.
RESUME_WAIT_S = LEASE_S + 1.5
#: Where a front door listens for dms to each name it holds: ``chat.dm.<name key>`` (core NATS, not stored).
DM_PREFIX = "chat.dm."
#: How long a dm waits for the recipient's front door to answer (``unavailable`` after that).
FORWARD_TIMEOUT_S = 2.0
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
    absent: int = 0  # how often the holder's lease was found gone: twice, 0.5 s apart, before it is taken over

    @property
    def key(self) -> str:
        return name_key(self.claim.folded)


class FrontDoor:
    """The broker's side of the cluster: the bridge, the appends awaiting the log, the feed coming back."""

    def __init__(
        self, ctx: zmq.Context, servers: list[str], core: ChatCore, replicas: int = 3, bridge: NatsBridge | None = None
    ) -> None:
        if importlib.util.find_spec("nats") is None:
            raise ClusterUnavailable("nats-py is not installed (pip install 'zmq-chat[cluster]')")
        self.core = core
        self.bridge = bridge or NatsBridge(ctx, servers)  # given: a test's stand-in
        self.feed = ClusterFeed()
        self.sent: dict[int, Append] = {}  # bridge token -> the append it carries
        self.fetches: dict[int, Fetch] = {}  # bridge token -> the fetch it carries
        self.reads = LogReads(self.bridge, core)  # history older than this front door's memory
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
        self.forwards: dict[int, Forward] = {}  # bridge token -> a dm on its way to another front door
        self.roster = Roster(self.bridge, core, self.door_id)  # who is where; which front doors live
        self.next_renewal = 0.0
        self.renewal: int | None = None  # the token of the lease renewal on its way, and when it was sent
        self.renewal_sent = 0.0
        self.renewals_failed = 0  # in a row (said once a streak)
        self.heads: int | None = None  # the token of the listing of the log's rooms asked at start
        self.parked: dict[str, Append] = {}  # member key -> a join waiting for the roster to have the member
        self.parting: set[int] = set()  # a clean stop: the tokens of our names' and lease's deletes

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
                        self.heads = self.bridge.heads(STREAM, LOG_PREFIX)  # the rooms it has: answered later
                        return history_id
                    # JetStream may be electing a leader (a node just restarted): ask again, until the deadline.
                    error = event.error
                    time.sleep(0.5)  # starting up: nothing else to do meanwhile
                    token = self.bridge.stream(stream_config(self.replicas))
        if not self.connected:
            raise ClusterUnavailable(f"no NATS server answered in {timeout:g} s (are they running, at those URLs?)")
        raise ClusterUnavailable(f"no stream {STREAM} in {timeout:g} s" + (f": {error}" if error else ""))

    def _make_buckets(self, deadline: float) -> None:
        """The buckets of names, leases and the roster (made by the first front door, found by the others), and
        our lease."""
        orders = [
            lambda: self.bridge.kv_bucket({"bucket": NAMES, "history": 1, "replicas": self.replicas}),
            lambda: self.bridge.kv_bucket({"bucket": DOORS, "history": 1, "ttl": LEASE_S, "replicas": self.replicas}),
            lambda: self.bridge.kv_bucket({"bucket": MEMBERS, "history": 1, "replicas": self.replicas}),
            lambda: self.bridge.kv_bucket({"bucket": TOPICS, "history": 1, "replicas": self.replicas}),
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
        self.roster.next_door_scan = time.monotonic() + DOOR_SCAN_S
        self.roster.watch()

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
        """When ``tick`` next has something to do: renew our lease, look again for a resuming claim, list the
        leases, ask the log again for a history step."""
        claims = (at for at, _ in self.waiting_claims)
        return min([self.next_renewal, self.roster.due(), self.reads.due(), *claims])

    def tick(self, now: float) -> None:
        if now >= self.next_renewal:  # one at a time; one unanswered for a renewal period is let go
            if self.renewal is None or now >= self.renewal_sent + 2 * LEASE_RENEW_S:
                self.renewal, self.renewal_sent = self.bridge.kv("put", DOORS, self.door_id), now
            self.next_renewal = now + LEASE_RENEW_S
        self.roster.tick(now)
        self.reads.tick(now)
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
            self.bridge.unlisten(DM_PREFIX + name_key(release.folded))

    def leave(self) -> None:
        """A clean stop: our names are freed and our lease deleted now, not 3 s after the last renewal, so
        people moving to another front door get their names at once, and the others sweep our members (those
        who do not come back elsewhere are told gone).  ``pending`` counts the answers."""
        for folded, revision in list(self.held.items()):
            self.parting.add(self.bridge.kv("delete", NAMES, name_key(folded), revision=revision))
        self.held.clear()
        self.parting.add(self.bridge.kv("delete", DOORS, self.door_id))
        self.next_renewal = float("inf")

    def _hold(self, folded: str, revision: int) -> None:
        """The name is ours in the cluster: dms to it, from any front door, come here."""
        self.held[folded] = revision
        self.bridge.listen(DM_PREFIX + name_key(folded))

    def _renewed(self, answer: KvResult, now: float) -> None:
        """A renewal that failed (an election of the leases' bucket) is tried again soon, not in a second: the
        lease lasts 3 s, and others take a name over once they find it gone twice."""
        self.renewal = None
        if answer.error is None:
            if self.renewals_failed:
                log.info("cluster: our lease is renewed again (after %d tries)", self.renewals_failed)
            self.renewals_failed = 0
            return
        if not self.renewals_failed:  # once a streak (an election: every 0.25 s for seconds)
            log.warning("cluster: our lease was not renewed (%s); trying again", answer.error)
        self.renewals_failed += 1
        self.next_renewal = min(self.next_renewal, now + 0.25)

    def forward(self, forward: Forward) -> None:
        """A dm to someone not here: to whichever front door listens for their name (nobody: no such user)."""
        token = self.bridge.request(DM_PREFIX + name_key(forward.folded), forward.event, FORWARD_TIMEOUT_S)
        self.forwards[token] = forward

    def _forward_answered(self, event: Replied | Failed, now: float) -> list[Output]:
        forward = self.forwards.pop(event.token)
        if isinstance(event, Replied):
            return self.core.forwarded(forward, event.data, now)
        if event.reason == "no_responders":
            return self.core.forwarded(forward, None, now)
        return self.core.forwarded(forward, msgspec.json.encode(DmAnswer(error=ErrorCode.UNAVAILABLE.value)), now)

    def _deliver(self, request: Request) -> list[Output]:
        """Another front door's dm for a name we hold: to its session, and our answer back."""
        try:
            folded = bytes.fromhex(request.subject[len(DM_PREFIX) :]).decode()
        except ValueError:
            return []  # not a name's subject: nothing of ours
        answer, out = self.core.deliver(folded, request.data)
        if request.reply:
            self.bridge.respond(request.reply, answer)
        return out

    def _ask(self, claiming: _Claiming, step: str, token: int) -> None:
        claiming.step = step
        self.claims[token] = claiming

    def _claim_answered(self, answer: KvResult, now: float) -> list[Output]:
        """The next step of a claim: who has the name, whether that front door lives, take it over."""
        claiming = self.claims.pop(answer.token)
        step, error = claiming.step, answer.error
        if (error is None and step in ("create", "take")) or (step == "get" and answer.value == self.door_id.encode()):
            self._hold(claiming.claim.folded, answer.revision)
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
        elif step == "door" and error == "not_found" and claiming.absent == 0:  # gone?  Look again in a while:
            claiming.absent += 1  # a renewal lost in an election must not cost a live front door a name
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

    def _publish(self, append: Append) -> None:
        """To the log; but a ``join`` only once the roster has the member (its sender's later events wait behind
        it): a front door killed between the two would leave a join in the log that no sweep ever answers
        with a leave, as nobody knew the member was there."""
        key = member_key(append.room, append.sender)
        if append.payload.startswith(JOIN_EVENT) and not self.roster.settled(key):
            self.parked[key] = append
            return
        token = self.bridge.publish(LOG_PREFIX + append.room, append.payload, append.log_id)
        self.sent[token] = append

    def _unpark(self) -> None:
        """Joins whose member the roster now has go to the log."""
        for key in [key for key in self.parked if self.roster.settled(key)]:
            self._publish(self.parked.pop(key))

    def pending(self) -> int:
        """Appends not yet answered by the log, roster changes not yet by its bucket, and (stopping) the deletes
        of our names and lease."""
        return sum(map(len, self.queues.values())) + self.roster.pending() + len(self.parting)

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
            elif isinstance(event, Stored | Failed | KvResult) and self.reads.owns(event.token):
                out += self.reads.answered(event, now)
            elif isinstance(event, KvResult) and event.token in self.claims:
                out += self._claim_answered(event, now)
            elif isinstance(event, KvResult) and event.token == self.renewal:
                self._renewed(event, now)
            elif isinstance(event, KvResult) and event.token in self.parting:
                self.parting.discard(event.token)
            elif isinstance(event, KvEntries) and event.token == self.heads:
                self._learned(event)
            elif isinstance(event, KvResult | KvEntries | Failed) and self.roster.owns(event.token):
                out += self.roster.answered(event, now)
                if self.parked:
                    self._unpark()
            elif isinstance(event, Changed):
                self.roster.changed(event, now)
            elif isinstance(event, Replied | Failed) and event.token in self.forwards:
                out += self._forward_answered(event, now)
            elif isinstance(event, Request) and event.subject.startswith(DM_PREFIX):
                out += self._deliver(event)
            elif isinstance(event, Dropped):
                log.warning("the loop fell behind the cluster's feed: %d events to fetch again", event.count)
                self._fetch(self.feed.dropped())
                self.roster.rewatch(now)  # its changes come the same way: it may have missed some
            elif isinstance(event, Status):
                self._status(event)
                if event.state == "connected":  # what was republished while we were away: fetched
                    self._fetch(self.feed.dropped())
                    self.roster.rewatch(now)
        return out

    def _learned(self, answer: KvEntries) -> None:
        """The log's rooms and their last positions (asked at start): ``rooms`` and ``join`` know them."""
        self.heads = None
        if answer.error is not None:
            log.warning(
                "cluster: the log's rooms were not all listed (%s); the others show as they speak", answer.error
            )
        heads = {
            subject[len(LOG_PREFIX) :]: seq for subject, _, seq in answer.entries if subject.startswith(LOG_PREFIX)
        }
        self.core.learned(heads)
        log.info("cluster: the log has %d rooms", len(heads))

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
            if append.payload.startswith(TOPIC_EVENT) and not event.duplicate:  # the cluster's copy (not awaited)
                self.bridge.kv("put", TOPICS, name_key(append.room), b"%d " % event.seq + append.payload)
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
            out += self.core.applied(event.room, event.seq, event.prev, event.data, time.monotonic())
        if ready:  # the rooms followed are bounded like those the core keeps (in memory, and at rest)
            self.feed.trim(self.core.config.max_rooms + self.core.config.max_resting_rooms, self.core.rooms)

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
