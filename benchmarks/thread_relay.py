"""The original design, kept as a reference to measure against: a TCP relay with a thread per client.

Each client's thread reads newline-delimited lines and writes them to every other client's socket.
No framing beyond the newline, no checks, no names: the cheapest a relay can be, and the design the
broker replaced, because one client that stops reading blocks the broadcast for everyone.

    python benchmarks/thread_relay.py --port 0     # prints "listening on 127.0.0.1:PORT"
    python benchmarks/thread_relay.py --read-size 1024   # reads as the original chat did: recv(1024)

(Whole lines are forwarded as they arrive, several per write when a read brings several, and one
lock keeps two senders' lines from interleaving on a socket.  The read size decides how many: the
default 64 KiB lets a busy sender's lines travel in big writes, which makes this relay much faster
than the original chat, whose recv(1024) carried about ten ~100-byte messages per read.)
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading

GREETING = b"[system] welcome\n"


class Relay:
    def __init__(self, read_size: int = 65536) -> None:
        self.read_size = read_size
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        # A turnstile in front of the lock, so a newcomer gets in under load: CPython's lock is not
        # fair, and busy senders took it back from the accepting thread for tens of seconds.
        self.turnstile = threading.Lock()

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.turnstile, self.lock:  # greeted once in the list: it gets everything after the greeting
                self.clients.append(conn)
                conn.sendall(GREETING)
            threading.Thread(target=self.client, args=(conn,), daemon=True).start()

    def client(self, conn: socket.socket) -> None:
        pending = b""
        try:
            while data := conn.recv(self.read_size):
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut:
                    self.broadcast(conn, pending[:cut])
                    pending = pending[cut:]
        except OSError:
            pass
        finally:
            with self.lock:
                self.clients.remove(conn)
            conn.close()

    def broadcast(self, sender: socket.socket, lines: bytes) -> None:
        with self.turnstile:
            pass  # held by a newcomer waiting for the lock: wait behind it
        with self.lock:
            for other in self.clients:
                if other is not sender:
                    with contextlib.suppress(OSError):  # it is gone; its own thread removes it
                        other.sendall(lines)  # blocks while that client's socket buffer is full


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default: %(default)s)")
    parser.add_argument("--read-size", type=int, default=65536, help="bytes per recv (default: %(default)s)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    listener = socket.create_server((args.host, args.port), backlog=128)
    print(f"listening on {args.host}:{listener.getsockname()[1]}", flush=True)
    try:
        Relay(args.read_size).serve(listener)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
