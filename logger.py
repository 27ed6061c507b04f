"""The chat logger: follows the feed and appends every event as one JSON line.

It is a read-only ``ChatClient`` (no session, no name): it subscribes to the
feed, takes the broker's ``rooms`` snapshot, puts each room's events in ``seq``
order and fills any gap from the broker's ``history`` (after a slow spell, a
broker restart, or its own restart: it resumes from what its file holds), so
the file holds each event once, in order per room.

    python logger.py --host broker.example --out chat.jsonl
    python logger.py --room general --room dev          # to stdout
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import messages as m
from client import ChatClient, add_endpoint_args, connection, room_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-logger", description="Append every chat feed event to a file, one JSON object per line."
    )
    add_endpoint_args(parser)
    parser.add_argument("--out", metavar="FILE", help="file to append to (default: standard output)")
    parser.add_argument(
        "--room", action="append", type=room_name, metavar="ROOM", help="log only ROOM; repeat for more (default: all)"
    )
    parser.add_argument("--heartbeats", action="store_true", help="also log the broker's sys/ heartbeats")
    return parser.parse_args(argv)


def resume_positions(path: Path, rooms: list[str] | None = None) -> dict[str, int]:
    """Each room's last seq already in the file, so a restarted logger goes on without gaps or repeats.

    A torn last line (the logger was killed in the middle of writing it) is cut off; lines that are
    not feed events are skipped.  Reads the whole file once, at start.
    """
    positions: dict[str, int] = {}
    if not path.exists():
        return positions
    with open(path, "r+b") as f:
        good = 0  # offset just past the last complete line
        for line in f:
            if not line.endswith(b"\n"):
                break
            good += len(line)
            for event in m.feed_events(line):
                room, seq = event.get("room"), event.get("seq")
                if type(room) is str and type(seq) is int and (rooms is None or room in rooms):
                    positions[room] = max(seq, positions.get(room, 0))
        f.truncate(good)
    return positions


def follow(client: ChatClient, out: IO[bytes], heartbeats: bool = False) -> None:
    """Write events until interrupted; each line is flushed as it is written."""
    for event in client.events():
        kind = event["type"]
        if kind == "status":
            print(f"chat-logger: {event['state']}", file=sys.stderr, flush=True)
        elif "seq" in event or (kind == "heartbeat" and heartbeats):  # feed events, not replies
            out.write(m.encode(event) + b"\n")
            out.flush()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the logger as cleanly as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        conn = connection(args)
    except (OSError, ValueError) as exc:
        print(f"chat-logger: {exc}", file=sys.stderr)
        return 2
    pub = conn["pub"]
    rooms = args.room
    for room in rooms or []:
        if not m.valid_room(room):
            print(f"chat-logger: {room!r} is not a valid room name", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    positions = resume_positions(Path(args.out), rooms) if args.out else {}
    client = ChatClient(None, rooms=rooms, positions=positions, **conn)
    with open(args.out, "ab") if args.out else contextlib.nullcontext(sys.stdout.buffer) as out:
        try:
            client.connect(timeout=3600 * 24 * 365)  # a logger waits for its broker
            where = ", ".join(f"#{r}" for r in rooms) if rooms else "all rooms"
            resumed = f", resuming {len(positions)} rooms from {args.out}" if positions else ""
            print(f"chat-logger: following {where} on {pub}{resumed}", file=sys.stderr, flush=True)
            follow(client, out, args.heartbeats)
        except KeyboardInterrupt:
            pass
        finally:
            client.close(flush_timeout=0)
            seq = client.sequencer
            print(
                f"chat-logger: stopped; {seq.filled} events were fetched from history, {seq.lost} were lost",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
