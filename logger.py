"""The chat logger: follows the feed and appends every event as one JSON line.

It is a read-only ``ChatClient`` (no session, no name): it subscribes to the
feed, takes the broker's ``rooms`` snapshot, puts each room's events in ``seq``
order and fills any gap from the broker's ``history`` (after a slow spell, a
broker restart, or its own restart: it resumes from what its file holds), so
the file holds each event once, in order per room.  Beside ``--out FILE`` it
keeps ``FILE.history``, the broker history the file's seqs belong to: if the
broker's history started over while the logger was stopped (a new database, or
none), it logs every room again from its first event instead of skipping seqs
it had seen in the old one.

    python logger.py --host broker.example --out chat.jsonl
    python logger.py --room general --room dev          # to stdout
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import cli
import messages as m
import transport
from client import ChatClient
from session import Status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-logger", description="Append every chat feed event to a file, one JSON object per line."
    )
    cli.add_endpoint_args(parser)
    parser.add_argument("--out", metavar="FILE", help="file to append to (default: standard output)")
    parser.add_argument(
        "--room",
        action="append",
        type=cli.room_name,
        metavar="ROOM",
        help="log only ROOM; repeat for more (default: all)",
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
            for event in m.read_envelopes(line):
                if isinstance(event, m.RoomEvent) and (rooms is None or event.room in rooms):
                    positions[event.room] = max(event.seq, positions.get(event.room, 0))
        f.truncate(good)
    return positions


def history_path(out: Path) -> Path:
    return out.with_name(out.name + ".history")


def saved_history(out: Path) -> tuple[str | None, dict[str, int]]:
    """The broker history id the log's seqs belong to, if the logger saved one, and where the log began
    in each room it knew of then (its first snapshot): a quiet room has no line to resume from."""
    with contextlib.suppress(OSError):
        first, _, rest = history_path(out).read_text().partition("\n")
        starts = m.decode(rest.encode()) if rest.strip() else {}
        if type(starts) is not dict:
            starts = {}
        return first.strip() or None, {r: s for r, s in starts.items() if type(s) is int}
    return None, {}


def save_history(out: Path, history_id: str, starts: dict[str, int] | None = None) -> None:
    """Atomically: a logger killed mid-write leaves the old record or the new one, never half of one."""
    tmp = out.with_name(out.name + ".history.tmp")
    tmp.write_bytes(history_id.encode() + b"\n" + m.encode(starts or {}) + b"\n")
    os.replace(tmp, history_path(out))


def follow(client: ChatClient, out: IO[bytes], heartbeats: bool = False, path: Path | None = None) -> None:
    """Write events until interrupted; each line is flushed as it is written.

    With ``path`` (the log file), the history the events belong to is saved before the first event of
    a history is written, so a restarted logger knows whether its positions still hold.
    """
    saved, starts = saved_history(path) if path else (None, {})
    for event in client.events():
        if path and isinstance(event, m.Rooms) and client.history_id is not None:
            # Where the log begins in every room it knows now, kept until the history starts over.
            fresh = {room: seq for room, seq in client.sequencer.last.items() if room not in starts}
            if fresh or client.history_id != saved:
                starts = {**(starts if client.history_id == saved else {}), **fresh}
                save_history(path, client.history_id, starts)
                saved = client.history_id
        if path and client.history_id is not None and client.history_id != saved:
            save_history(path, client.history_id)
            saved, starts = client.history_id, {}
        if isinstance(event, Status):
            print(f"chat-logger: {event.state}", file=sys.stderr, flush=True)
        elif isinstance(event, m.RoomEvent) or (heartbeats and isinstance(event, m.Heartbeat)):
            out.write(m.encode(event) + b"\n")  # the bytes the broker published, field for field
            out.flush()


#: When a logger that has no answer yet first says so, and how often after that.
FIRST_NOTICE_S = 3.0
WAITING_NOTICE_S = 10.0


def wait_for_broker(client: ChatClient, conn: dict) -> None:
    """A logger waits for its broker as long as it takes, but says so, and what might be wrong."""
    wait = FIRST_NOTICE_S
    while True:
        try:
            client.connect(timeout=wait)
            return
        except TimeoutError:
            hint = (
                "is it running? (a CURVE broker needs --server-key and --key)"
                if conn["curve"] is None
                else "is it running, and are --server-key and --key its and yours?"
            )
            print(
                f"chat-logger: no answer yet from a broker at {', '.join(client.routers)}: {hint}; still waiting",
                file=sys.stderr,
                flush=True,
            )
            wait = WAITING_NOTICE_S


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        conn = cli.connection(args)
    except (OSError, ValueError) as exc:
        print(f"chat-logger: {exc}", file=sys.stderr)
        return 2
    rooms = args.room
    for room in rooms or []:
        if not m.valid_room(room):
            print(f"chat-logger: {room!r} is not a valid room name", file=sys.stderr)
            return 2
    transport.stop_on_sigterm()
    path = Path(args.out) if args.out else None
    positions = resume_positions(path, rooms) if path else {}
    history_id, starts = saved_history(path) if path else (None, {})
    for room, seq in starts.items():  # rooms the log knew of but has no line of
        if rooms is None or room in rooms:
            positions.setdefault(room, seq)
    history_id = history_id if positions else None
    client = ChatClient(None, rooms=rooms, positions=positions, history_id=history_id, **conn)
    with open(args.out, "ab") if args.out else contextlib.nullcontext(sys.stdout.buffer) as out:
        connected = False
        try:
            wait_for_broker(client, conn)
            connected = True
            where = ", ".join(f"#{r}" for r in rooms) if rooms else "all rooms"
            resumed = f", resuming {len(positions)} rooms from {args.out}" if positions else ""
            print(f"chat-logger: following {where} on {client.pub_endpoint}{resumed}", file=sys.stderr, flush=True)
            follow(client, out, args.heartbeats, path)
        except KeyboardInterrupt:
            pass
        finally:
            client.close(flush_timeout=0)
            seq = client.sequencer
            print(
                f"chat-logger: stopped; {seq.filled} events were fetched from history, {seq.lost} were lost"
                if connected
                else "chat-logger: stopped before any broker answered; nothing was logged",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
