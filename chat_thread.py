"""The network thread of a client whose screen has an event loop of its own (the window's Tk, the full screen's
Textual): it owns the ``ChatClient`` (ZeroMQ sockets stay in one thread, so nothing needs a lock), runs a
console on it, takes the screen's requests from an inproc PAIR and hands back what to show through ``post``,
a callable that is safe to call from this thread (a ``queue.Queue.put``, Textual's ``post_message``).

The screen's thread binds the PAIR's receiving end and passes it in; from ``start()`` on only this thread uses
it (the thread start is the memory barrier ZeroMQ asks for when a socket changes threads).  Each request is
two frames, a kind and its text, which the console's ``handle`` acts on.
"""

from __future__ import annotations

import argparse
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

import cli
import messages as m
from client import ChatClient, ChatError
from session import Event


@dataclass(frozen=True, slots=True)
class Connected:
    """The session started: its name, and the broker's inbox."""

    user: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class Refused:
    """No session: the broker refused the name (``code``), or never answered (``timeout``)."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The thread is done: bye said, ``undelivered`` messages never acknowledged (or it crashed: ``error``)."""

    undelivered: int = 0
    error: str | None = None


class ScreenConsole(Protocol):
    """What the thread needs of the console it runs (``gui.GuiConsole``, ``tui.TuiConsole``)."""

    def on_event(self, event: Event) -> None: ...
    def show(self, text: str) -> None: ...
    def handle(self, kind: str, arg: str) -> bool: ...  # one request from the screen; False: leave
    def publish(self) -> None: ...  # tell the screen what changed
    def closing(self) -> None: ...  # the goodbye starts


class ChatThread(threading.Thread):
    """Connects, then runs the chat until the console says to leave (``/quit``, the screen closing)."""

    def __init__(
        self,
        name: str,
        args: argparse.Namespace,
        inbox: zmq.Socket,
        post: Callable[[Any], None],
        ctx: zmq.Context,
        console: Callable[[ChatClient], ScreenConsole],
    ) -> None:
        super().__init__(name="chat-network", daemon=True)
        self.user_name = name
        self.args = args
        self.inbox = inbox
        self.post = post
        self.ctx = ctx
        self.make_console = console

    def run(self) -> None:
        closed: Closed | None = None
        try:
            closed = self._run()
        except Exception:  # a crash here would leave a screen that silently stopped chatting
            closed = Closed(error="internal error: " + traceback.format_exc().strip().splitlines()[-1])
        finally:
            self.inbox.close(linger=0)
            if closed is not None:
                self.post(closed)

    def _run(self) -> Closed | None:
        """The chat, then how it ended; None when there was no session (``Refused`` said why)."""
        conn = cli.connection(self.args)
        client = ChatClient(self.user_name, rooms=self.args.room or [m.DEFAULT_ROOM], context=self.ctx, **conn)
        try:
            client.connect(timeout=self.args.timeout)
        except ChatError as exc:
            client.close(flush_timeout=0)
            self.post(Refused(exc.code, exc.detail))
            return None
        except TimeoutError as exc:
            client.close(flush_timeout=0)
            self.post(Refused("timeout", f"{exc} ({cli.no_broker_hint(conn)})"))
            return None
        self.post(Connected(client.user or self.user_name, client.router_endpoint))
        console = self.make_console(client)
        console.show(f"[system] connected to {client.router_endpoint} as {client.user}; /help lists the commands")
        client.poller.register(self.inbox, zmq.POLLIN)
        try:
            self._loop(client, console)
        finally:
            client.poller.unregister(self.inbox)
            console.closing()
            for event in client.close():  # says bye; shows late acks and errors
                self._handle(console, event)
            console.publish()
        return Closed(undelivered=len(client.undelivered))

    def _loop(self, client: ChatClient, console: ScreenConsole) -> None:
        console.publish()
        while True:
            for event in client.poll(1.0):
                self._handle(console, event)
            while True:
                try:
                    kind, arg = (f.decode("utf-8", "replace") for f in self.inbox.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if not console.handle(kind, arg):
                    return
            console.publish()

    @staticmethod
    def _handle(console: ScreenConsole, event: Event) -> None:
        try:
            console.on_event(event)
        except Exception:  # one odd event must not end the session
            last = traceback.format_exc().strip().splitlines()[-1]
            console.show(f"[error] internal error while showing an event: {last}")
