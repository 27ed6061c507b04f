"""Topic, nick and away end to end: a real broker process (with its database), the ChatClient library and
the console as processes.  Every wait is for an expected event or line, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import WAIT, Harness, free_port

import messages as m
from client import ChatClient
from session import Acked, Event

pytestmark = pytest.mark.timeout(60)


def wait_event(client: ChatClient, match: Callable[[Event], bool], timeout: float = WAIT) -> Event:
    """The first event ``match`` accepts, polling the client until the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll(0.1):
            if match(event):
                return event
    raise AssertionError("timed out waiting for an event")


def test_topic_nick_and_away_through_the_library_and_a_broker_restart(harness: Harness) -> None:
    ends = {"router": f"tcp://127.0.0.1:{free_port()}", "pub": f"tcp://127.0.0.1:{free_port()}"}
    db = str(harness.tmp_path / "chat.db")
    broker = harness.broker(db=db, **ends)
    with (
        ChatClient("alice", router=broker.router, pub=broker.pub, context=harness.ctx) as alice,
        ChatClient("bob", router=broker.router, pub=broker.pub, context=harness.ctx) as bob,
    ):
        alice.connect()
        bob.connect()
        alice.topic("general", "release on Friday")
        event = wait_event(bob, lambda e: isinstance(e, m.TopicEvent))
        assert (event.user, event.topic) == ("alice", "release on Friday")

        alice.nick("alicia")
        wait_event(alice, lambda e: isinstance(e, m.Renamed))
        event = wait_event(bob, lambda e: isinstance(e, m.NickEvent))
        assert (event.user, event.name) == ("alice", "alicia")

        alice.away("lunch")
        wait_event(alice, lambda e: isinstance(e, m.Away))
        bob.dm("alicia", "back soon?")
        acked = wait_event(bob, lambda e: isinstance(e, Acked))
        assert acked.ack.away == "lunch"

        broker.kill()  # SIGKILL, with the session's state only in the broker's memory
        broker = harness.broker(db=db, **ends)
        wait_event(alice, lambda e: isinstance(e, m.Welcome))
        assert alice.user == "alicia"  # back under the new name
        wait_event(bob, lambda e: isinstance(e, m.Welcome))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # alicia's away is said again just after her hello: ask till it shows
            bob.who("general")
            who = wait_event(bob, lambda e: isinstance(e, m.Who))
            if who.away:
                break
        assert who.away == {"alicia": "lunch"}  # said again to the new broker run

    with ChatClient("carol", router=broker.router, pub=broker.pub, context=harness.ctx) as carol:
        joined = carol.connect()
        assert isinstance(joined, m.Welcome)
        event = wait_event(carol, lambda e: isinstance(e, m.Joined))
        assert event.topic == "release on Friday"  # kept with the room's history, across the restart


def test_the_console_sets_a_topic_renames_and_goes_away(harness: Harness) -> None:
    broker = harness.broker()
    bob = harness.client(broker, "bob")
    alice = harness.client(broker, "alice")
    alice.send("/topic plans for today\n")
    bob.expect(r"\[topic\] alice set the topic: plans for today$")
    alice.send("/nick alicia\n")
    alice.expect(r"\[system\] you are now known as alicia$")
    bob.expect(r"\[nick\] alice is now known as alicia$")
    alice.send("/away lunch\n")
    alice.expect(r"\[system\] you are marked as away: lunch$")
    bob.send("/msg alicia back soon?\n")
    bob.expect(r"\[dm -> alicia\] back soon\? \(alicia is away: lunch\)$")
    alice.expect(r"\[dm\] bob: back soon\?$")
    bob.send("/names\n")
    bob.expect(r"\[who\] #general: alicia \(away\), bob \(2\)$")
    alice.send("/back\n")
    alice.expect(r"\[system\] you are back$")
