"""The feed sequencer's rules, one definition for both clients: ``tests/vectors/sequencer.json``.

Every case runs here on ``sequencer.FeedSequencer``, and on ``static/chat.js``'s port of it through
``tests/js/sequencer.test.mjs`` in Node.  The vectors say what comes out; see their ``about``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import messages as m
import sequencer
from sequencer import FeedSequencer

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "sequencer.json").read_text())
CASES: list[dict[str, Any]] = VECTORS["cases"]
NODE_TEST = ROOT / "tests" / "js" / "sequencer.test.mjs"


def event(room: str, seq: int | list[int], prev: int | None = None) -> m.MsgEvent:
    """A vector's event: its seq, and its prev if it has one (``[seq, prev]`` in a fill's events)."""
    if isinstance(seq, list):
        seq, prev = seq
    if prev is None:
        return m.MsgEvent(room=room, user="u", text="t", id="i", seq=seq)
    return m.MsgEvent(room=room, user="u", text="t", id="i", seq=seq, prev=prev)


def run_case(case: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The case's steps on a new sequencer: ``{delivered, fetch}`` per step, then ``{lost, filled}``."""
    multi = len({step["room"] for step in case["steps"] if "room" in step}) > 1
    s = FeedSequencer(unknown_baseline=case.get("unknown_baseline"))
    outs = []
    for step in case["steps"]:
        ready: list[Any] = []
        fetch = None
        match step["op"]:
            case "push":
                ready, fetch = s.push(event(step["room"], step["seq"], step.get("prev")))
            case "expect":
                ready, fetch = s.expect(step["room"], step["head"])
            case "fill":
                replied = [event(step["room"], seq) for seq in step["events"]]
                ready, fetch = s.fill(step["room"], replied, step["head"], step["more"])
            case "reset":
                s.reset()
            case "forget":
                s.forget(step["room"])
            case op:
                raise AssertionError(f"unknown op {op!r}")
        outs.append({"delivered": [[e.room, e.seq] if multi else e.seq for e in ready], "fetch": fetch})
    return outs, {"lost": s.lost, "filled": s.filled}


def test_the_vectors_are_well_formed() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) == len(set(names)) > 0
    ops = {step["op"] for case in CASES for step in case["steps"]}
    assert ops == {"push", "expect", "fill", "reset", "forget"}
    for case in CASES:
        assert {"lost", "filled"} <= case.keys()
        assert all(set(step["out"]) == {"delivered", "fetch"} for step in case["steps"])


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_python_sequencer_follows_the_vectors(case: dict[str, Any]) -> None:
    outs, counters = run_case(case)
    for i, (step, out) in enumerate(zip(case["steps"], outs, strict=True)):
        op = {k: v for k, v in step.items() if k != "out"}
        assert out == step["out"], f"step {i} {op}"
    assert counters == {"lost": case["lost"], "filled": case["filled"]}


def test_history_complete_is_the_rule_the_vectors_state() -> None:
    complete = sequencer.history_complete
    assert complete([], 9, more=False)  # the broker has nothing after `after`
    assert not complete([], 9, more=True)
    assert complete([event("r", 9)], 9, more=False)
    assert not complete([event("r", 9)], 9, more=True)  # cut at the reply's byte budget
    assert not complete([event("r", 8)], 9, more=False)  # cut at limit, short of head


def test_the_page_holds_as_many_events_per_room_as_the_python_client() -> None:
    js = (ROOT / "static" / "chat.js").read_text()
    assert re.search(rf"^\s*const MAX_HELD_PER_ROOM = {sequencer.MAX_HELD_PER_ROOM};", js, re.M)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_chat_js_sequencer_follows_the_vectors() -> None:
    """static/chat.js's FeedSequencer, loaded in Node, on the same vectors."""
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run([node, str(NODE_TEST)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(CASES)} of {len(CASES)} sequencer cases pass" in done.stdout
