"""The desktop chat: the console client's chat in a Tkinter window (``python gui.py`` or ``python client.py --gui``).

It is one more front end on the same ``ChatClient``, not a second client:

- A network thread owns the ``ChatClient`` (ZeroMQ sockets are not thread-safe)
  and runs a ``GuiConsole``: the console's own command handling and ``render``
  lines, with its output sent to the window instead of printed.
- The Tk main thread only touches widgets.  Typed lines go to the network thread
  over an inproc PAIR socket registered in the client's poller (as the console's
  reader thread does); what to show comes back on a ``queue.Queue`` that the Tk
  loop drains with ``after`` polling.  No widget is touched from another thread.

Text from others is shown as plain text: ``render`` passes it through
``safe_text``, and a Tk ``Text`` widget interprets no markup.

Test hook: with ``CHAT_GUI_ECHO=1`` every line the window adds to the
conversation is also printed to stdout as it is displayed, and so are changes of
the status line (``[status] ...``), of the member list (``[members] #room: a, b``)
and the name prompt appearing (``[prompt] ...``), so a test can see what the window shows.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import zmq

import cli
import messages as m
from client import ChatClient, ChatError
from console import Console
from display import render, undelivered_line
from session import Event, Rejoined, Status

#: How often the Tk loop drains the queue from the network thread (ms).
POLL_MS = 40
#: Lines kept in the conversation; older ones scroll away for good.
MAX_LINES = 5000
#: Set to 1 to print what the window displays (for tests; see the module docstring).
ECHO_ENV = "CHAT_GUI_ECHO"
#: Seconds to wait for a clean goodbye (bye sent, late acks shown) before the window goes anyway.
CLOSE_GRACE = 4.0

STATUS_TEXT = {
    "lost": "connection lost, reconnecting…",
    "restored": "connection restored",
    "reconnected": "reconnected (the broker restarted)",
    "shutdown": "the broker is shutting down; waiting for it to come back…",
}

Post = Callable[[tuple[Any, ...]], None]


# --- Pure logic (no Tk, no sockets) -----------------------------------------------------------


class Members:
    """Who is in each of our rooms, kept up to date from the events the client gets anyway.

    ``joined`` and ``who`` give the full list; ``join``/``leave`` feed events adjust
    it; ``left`` forgets the room.  No extra requests, so no extra traffic.
    """

    def __init__(self) -> None:
        self.rooms: dict[str, set[str]] = {}

    def update(self, event: Event) -> bool:
        """Apply one event; True if some room's member list changed."""
        match event:
            case m.Joined() | Rejoined():
                joined = event if isinstance(event, m.Joined) else event.joined
                self.rooms[joined.room] = set(joined.users)
                return True
            case m.Left():
                return self.rooms.pop(event.room, None) is not None
            case m.Who() | m.JoinEvent() | m.LeaveEvent() if event.room in self.rooms:
                members = self.rooms[event.room]
                before = set(members)
                if isinstance(event, m.Who):
                    self.rooms[event.room] = members = set(event.users)
                elif isinstance(event, m.JoinEvent):
                    members.add(event.user)
                else:
                    members.discard(event.user)
                return members != before
        return False  # a room we are not in: `who #elsewhere` must not add it

    def of(self, room: str | None) -> list[str]:
        """The members of ``room``, sorted as the broker sorts them (case-insensitively)."""
        return sorted(self.rooms.get(room or "", ()), key=lambda name: (name.casefold(), name))


def line_tag(line: str, me: str | None) -> str:
    """How to colour a conversation line: ``dm``, ``error``, ``notice``, ``self`` or ``message``.

    Decided from the rendered line alone.  That is safe because a line that
    carries another user's text always starts with their name (``bob: ``,
    ``#dev bob: ``, ``* bob``), and names cannot contain brackets, so no one can
    make their text look like a notice or a private message.
    """
    rest = line
    if rest.startswith("#"):
        _room, _, rest = rest.partition(" ")
    if rest.startswith("[dm"):
        return "dm"
    if rest.startswith("[error]"):
        return "error"
    if rest.startswith("[") or line.startswith("Commands:"):
        return "notice"
    if me is not None and (rest.startswith(f"{me}: ") or rest.startswith(f"* {me} ")):
        return "self"
    return "message"


# --- The network thread ----------------------------------------------------------------------


class GuiConsole(Console):
    """The console's command handling and lines, shown in the window instead of printed.

    Lives in the network thread; everything it wants shown goes through ``post``
    (a ``queue.Queue.put``).  Unlike the console, it shows the user's own messages
    (a terminal still has what was typed, a cleared input line does not), as
    they come back from the broker.
    """

    def __init__(self, client: ChatClient, post: Post) -> None:
        super().__init__(client)
        self.post = post
        self.members = Members()
        self._state: tuple[Any, ...] | None = None

    def show(self, line: str) -> None:
        self.post(("line", line, line_tag(line, self.me())))

    def on_event(self, event: Event) -> None:
        me = self.me()
        if isinstance(event, m.MsgEvent) and event.user == me:
            self.show(render(event, me) or "")
        else:
            super().on_event(event)
        if isinstance(event, Status):
            self.post(("status", event.state.value))
        self.members.update(event)
        self.publish_state()

    def on_line(self, line: str) -> bool:
        going_on = super().on_line(line)
        self.publish_state()
        return going_on

    def publish_state(self) -> None:
        """Tell the window the rooms, the current one and its members, when they changed."""
        state = (tuple(self.client.rooms), self.current, tuple(self.members.of(self.current)))
        if state != self._state:
            self._state = state
            self.post(("state", *state))


class Network(threading.Thread):
    """Owns the ``ChatClient``: connects, then runs the chat until /quit or the window closes.

    ``inbox`` is the receiving end of the window's PAIR; it is created in the Tk
    thread but used only here from ``start()`` on (the thread start is the memory
    barrier ZeroMQ asks for when a socket changes threads).
    """

    def __init__(self, name: str, args: argparse.Namespace, inbox: zmq.Socket, post: Post, ctx: zmq.Context) -> None:
        super().__init__(name="chat-network", daemon=True)
        self.user_name = name
        self.args = args
        self.inbox = inbox
        self.post = post
        self.ctx = ctx

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # a crash here would leave a window that silently stopped chatting
            self.post(("failed", "internal error: " + traceback.format_exc().strip().splitlines()[-1], "crash"))
            traceback.print_exc()
        finally:
            self.inbox.close(linger=0)

    def _run(self) -> None:
        rooms = self.args.room or [m.DEFAULT_ROOM]
        client = ChatClient(self.user_name, rooms=rooms, context=self.ctx, **cli.connection(self.args))
        try:
            client.connect(timeout=self.args.timeout)
        except ChatError as exc:
            client.close(flush_timeout=0)
            self.post(("failed", exc.detail, exc.code))
            return
        except TimeoutError as exc:
            client.close(flush_timeout=0)
            self.post(("failed", str(exc), "timeout"))
            return
        self.post(("connected", client.user, client.router_endpoint))
        console = GuiConsole(client, self.post)
        client.poller.register(self.inbox, zmq.POLLIN)
        try:
            self._loop(client, console)
        finally:
            client.poller.unregister(self.inbox)
            for event in client.close():  # says bye; shows late acks and errors
                self._handle(console, event)
            if client.undelivered:
                console.show(undelivered_line(len(client.undelivered)))
            self.post(("closed",))

    def _loop(self, client: ChatClient, console: GuiConsole) -> None:
        while True:
            for event in client.poll(1.0):
                self._handle(console, event)
            while True:
                try:
                    line = self.inbox.recv_string(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if not console.on_line(line):
                    return

    @staticmethod
    def _handle(console: GuiConsole, event: Event) -> None:
        try:
            console.on_event(event)
        except Exception:  # one odd event must not end the session
            traceback.print_exc()


# --- The window (Tk main thread only) ----------------------------------------------------------


class ChatWindow:
    """The window: a name prompt, then rooms | conversation | members, an input line and a status line."""

    def __init__(self, root: Any, args: argparse.Namespace, echo: bool = False) -> None:
        import tkinter as tk
        from tkinter import font as tkfont
        from tkinter import ttk

        self.root = root
        self.args = args
        self.echo = echo
        self.ctx = zmq.Context.instance()
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.network: Network | None = None
        self.pipe: zmq.Socket | None = None  # the sending end of the PAIR to the network thread
        self._addresses = (f"inproc://gui-input-{os.getpid()}-{n}" for n in itertools.count())
        self.user: str | None = None
        self.current: str | None = None
        self.rooms: list[str] = []
        self.was_connected = False
        self.session_live = False  # between "connected" and "closed"/"failed": a bye is owed
        self.closing = False
        self.quit_requested = False  # set by a signal handler; acted on in the Tk loop
        self.destroyed = False
        self.history: list[str] = []
        self.history_pos = 0
        self._status = ""

        root.title("chat")
        root.geometry("900x560")
        root.minsize(560, 320)
        root.protocol("WM_DELETE_WINDOW", self.close)
        style = ttk.Style(root)
        if "clam" in style.theme_names():
            style.theme_use("clam")
        for name in ("TkDefaultFont", "TkTextFont", "TkHeadingFont", "TkMenuFont"):
            tkfont.nametofont(name).configure(size=11)
        self.chat_font = tkfont.nametofont("TkTextFont").copy()
        self.chat_font.configure(size=12)
        bold = self.chat_font.copy()
        bold.configure(weight="bold")
        italic = self.chat_font.copy()
        italic.configure(slant="italic", size=11)
        style.configure("Status.TLabel", padding=(8, 3))
        style.configure("Heading.TLabel", font=tkfont.nametofont("TkHeadingFont"), padding=(2, 4))
        style.configure("Error.TLabel", foreground="#c01c28")

        # The name prompt.
        self.prompt = ttk.Frame(root, padding=40)
        ttk.Label(self.prompt, text="Enter a username:", style="Heading.TLabel").grid(row=0, column=0, sticky="w")
        self.name_entry = ttk.Entry(self.prompt, width=28)
        self.name_entry.grid(row=1, column=0, sticky="we", pady=6)
        self.name_entry.bind("<Return>", lambda _e: self.submit_name())
        ttk.Button(self.prompt, text="Join the chat", command=self.submit_name).grid(row=2, column=0, sticky="w")
        self.prompt_error = ttk.Label(self.prompt, text="", style="Error.TLabel", wraplength=420)
        self.prompt_error.grid(row=3, column=0, sticky="w", pady=8)

        # The chat: rooms | conversation | members, then the input line.
        self.chat = ttk.Frame(root, padding=6)
        self.chat.columnconfigure(1, weight=1)
        self.chat.rowconfigure(1, weight=1)
        ttk.Label(self.chat, text="Rooms", style="Heading.TLabel").grid(row=0, column=0, sticky="w")
        listbox = {"exportselection": False, "activestyle": "none", "relief": "flat", "highlightthickness": 0}
        listbox |= {"selectbackground": "#d0def2", "selectforeground": "black"}
        self.room_list = tk.Listbox(self.chat, width=14, **listbox)
        self.room_list.grid(row=1, column=0, sticky="ns", padx=(0, 6))
        self.room_list.bind("<<ListboxSelect>>", lambda _e: self.pick_room())
        self.where = ttk.Label(self.chat, text="", style="Heading.TLabel")
        self.where.grid(row=0, column=1, sticky="w")
        conversation = ttk.Frame(self.chat)
        conversation.grid(row=1, column=1, sticky="nsew")
        conversation.columnconfigure(0, weight=1)
        conversation.rowconfigure(0, weight=1)
        self.text = tk.Text(
            conversation, wrap="word", state="disabled", font=self.chat_font, relief="flat", padx=8, pady=6
        )
        self.text.configure(spacing1=2, spacing3=2, takefocus=0)
        self.text.grid(row=0, column=0, sticky="nsew")
        scroll = ttk.Scrollbar(conversation, orient="vertical", command=self.text.yview)
        scroll.grid(row=0, column=1, sticky="ns")
        self.text.configure(yscrollcommand=scroll.set)
        self.text.tag_configure("self", foreground="#1a5fb4")
        self.text.tag_configure("dm", foreground="#813d9c", background="#f3e8f8", font=bold)
        self.text.tag_configure("notice", foreground="#6a6a6a", font=italic)
        self.text.tag_configure("error", foreground="#c01c28")
        self.members_label = ttk.Label(self.chat, text="Members", style="Heading.TLabel")
        self.members_label.grid(row=0, column=2, sticky="w")
        self.member_list = tk.Listbox(self.chat, width=16, **listbox)
        self.member_list.grid(row=1, column=2, sticky="ns", padx=(6, 0))
        self.member_list.bind("<Double-Button-1>", lambda _e: self.dm_member())
        line = ttk.Frame(self.chat, padding=(0, 6, 0, 0))
        line.grid(row=2, column=0, columnspan=3, sticky="we")
        line.columnconfigure(1, weight=1)
        self.room_prompt = ttk.Label(line, text="#general ›")
        self.room_prompt.grid(row=0, column=0, padx=(0, 6))
        self.entry = ttk.Entry(line, font=self.chat_font)
        self.entry.grid(row=0, column=1, sticky="we")
        self.entry.bind("<Return>", lambda _e: self.submit_line())
        self.entry.bind("<KP_Enter>", lambda _e: self.submit_line())
        self.entry.bind("<Up>", lambda _e: self.recall(-1))
        self.entry.bind("<Down>", lambda _e: self.recall(1))
        ttk.Button(line, text="Send", command=self.submit_line).grid(row=0, column=2, padx=(6, 0))

        self.status = ttk.Label(root, text="", style="Status.TLabel", relief="sunken", anchor="w")
        self.status.pack(side="bottom", fill="x")

        if args.name:
            self.start(args.name)
        else:
            self.show_prompt("")
        root.after(POLL_MS, self.poll)

    # --- connecting ----------------------------------------------------------------------

    def show_prompt(self, error: str) -> None:
        self.chat.pack_forget()
        self.prompt.pack(fill="both", expand=True)
        self.prompt_error.configure(text=error)
        self.name_entry.select_range(0, "end")  # typing replaces a refused name
        self.name_entry.icursor("end")
        self.name_entry.focus_set()
        self.set_status(error or "not connected")
        self.say_for_test(f"[prompt] Enter a username:{' ' + error if error else ''}")

    def submit_name(self) -> None:
        name = self.name_entry.get().strip()
        if name and self.network is None:
            self.start(name)

    def start(self, name: str) -> None:
        """Connect in the network thread; the window stays live meanwhile."""
        address = next(self._addresses)
        inbox = self.ctx.socket(zmq.PAIR)
        inbox.bind(address)
        self.pipe = self.ctx.socket(zmq.PAIR)
        self.pipe.connect(address)
        self.network = Network(name, self.args, inbox, self.events.put, self.ctx)
        self.prompt_error.configure(text="")
        router, _pub = cli.endpoints(self.args.host, self.args.router, self.args.pub)
        self.set_status(f"connecting to {router} as {name}…")
        self.network.start()

    # --- events from the network thread ----------------------------------------------------

    def poll(self) -> None:
        """Drain the queue the network thread fills; the only way its news reaches the widgets."""
        if self.quit_requested and not self.closing:
            self.close()
        try:
            while not self.destroyed:
                self.handle(self.events.get_nowait())
        except queue.Empty:
            pass
        if not self.destroyed:
            self.root.after(POLL_MS, self.poll)

    def handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "line":
            self.add_line(item[1], item[2])
        elif kind == "state":
            self.set_state(list(item[1]), item[2], list(item[3]))
        elif kind == "status":
            self.set_status(STATUS_TEXT.get(item[1], str(item[1])), alarm=item[1] in ("lost", "shutdown"))
        elif kind == "connected":
            self.user, router = item[1], item[2]
            self.was_connected = self.session_live = True
            self.prompt.pack_forget()
            self.chat.pack(fill="both", expand=True)
            self.root.title(f"chat — {self.user}")
            self.add_line(f"[system] connected to {router} as {self.user}; /help lists the commands", "notice")
            self.set_status(f"connected to {router} as {self.user}")
            self.entry.focus_set()
        elif kind == "failed":
            self._drop_network()
            if self.closing:
                self.destroy()
            else:
                self.show_prompt(f"{item[1]} ({item[2]})")
        elif kind == "closed":
            self._drop_network()
            self.add_line("[system] bye", "notice")
            self.destroy()

    def _drop_network(self) -> None:
        self.session_live = False
        if self.network is not None:
            self.network.join(timeout=1.0)
        self.network = None
        if self.pipe is not None:
            self.pipe.close(linger=0)
            self.pipe = None

    # --- showing -------------------------------------------------------------------------

    def add_line(self, line: str, tag: str) -> None:
        at_bottom = self.text.yview()[1] >= 0.999
        self.text.configure(state="normal")
        self.text.insert("end", line + "\n", (tag,))
        excess = int(self.text.index("end-1c").split(".")[0]) - 1 - MAX_LINES
        if excess > 0:
            self.text.delete("1.0", f"{excess + 1}.0")
        self.text.configure(state="disabled")
        if at_bottom:
            self.text.see("end")
        self.say_for_test(line)

    def set_state(self, rooms: list[str], current: str | None, members: list[str]) -> None:
        self.rooms, self.current = rooms, current
        self.room_list.delete(0, "end")
        for room in rooms:
            self.room_list.insert("end", f"#{room}")
        if current in rooms:
            index = rooms.index(current)
            self.room_list.selection_set(index)
            self.room_list.see(index)
        self.member_list.delete(0, "end")
        for name in members:
            self.member_list.insert("end", name)
            if name == self.user:
                self.member_list.itemconfigure("end", foreground="#1a5fb4")
        place = f"#{current}" if current else "no room"
        self.where.configure(text=place)
        self.room_prompt.configure(text=f"{place} ›")
        self.members_label.configure(text=f"Members ({len(members)})")
        self.root.title(f"chat — {self.user} in {place}")
        self.say_for_test(f"[members] {place}: {', '.join(members)}")

    def set_status(self, text: str, alarm: bool = False) -> None:
        self.status.configure(text=text, foreground="#c01c28" if alarm else "")
        if text != self._status:
            self._status = text
            self.say_for_test(f"[status] {text}")

    def say_for_test(self, line: str) -> None:
        """The CHAT_GUI_ECHO hook: print what was just put on screen, once it is drawn."""
        if self.echo:
            self.root.update_idletasks()
            print(line, flush=True)

    # --- user input ----------------------------------------------------------------------

    def send(self, line: str) -> None:
        if self.pipe is not None:
            try:
                self.pipe.send_string(line, zmq.NOBLOCK)
            except zmq.Again:
                self.add_line("[error] the chat is not keeping up; line dropped", "error")

    def submit_line(self) -> None:
        text = self.entry.get()
        self.entry.delete(0, "end")
        if not text.strip() or self.network is None:
            return
        self.history.append(text)
        self.history_pos = len(self.history)
        for line in text.splitlines():  # a paste of several lines: one message each
            self.send(line)
        if text.strip().lower() in ("/quit", "/exit"):
            self.closing = True
            self.root.after(int(CLOSE_GRACE * 1000), self.destroy)

    def recall(self, step: int) -> str:
        """Up/Down walk through what was typed, like the console's history."""
        if not self.history:
            return "break"
        self.history_pos = max(0, min(len(self.history), self.history_pos + step))
        self.entry.delete(0, "end")
        if self.history_pos < len(self.history):
            self.entry.insert(0, self.history[self.history_pos])
        return "break"

    def pick_room(self) -> None:
        """Clicking a room makes it current, through the console's own /join."""
        chosen = self.room_list.curselection()
        if chosen and self.rooms[chosen[0]] != self.current:
            self.send(f"/join {self.rooms[chosen[0]]}")

    def dm_member(self) -> None:
        chosen = self.member_list.curselection()
        if chosen:
            self.entry.delete(0, "end")
            self.entry.insert(0, f"/msg {self.member_list.get(chosen[0])} ")
            self.entry.focus_set()

    def destroy(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            self.root.destroy()

    def close(self) -> None:
        """Window closed, Ctrl-C or SIGTERM: leave cleanly (bye) if connected, then go."""
        if not self.session_live:  # not connected (yet): nobody to say bye to; a late session times out
            self.destroy()
            return
        if not self.closing:
            self.closing = True
            self.set_status("leaving…")
            self.send("/quit")
            self.root.after(int(CLOSE_GRACE * 1000), self.destroy)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chat-gui", description="Chat through a chat broker, in a window.")
    cli.add_endpoint_args(parser)
    cli.add_session_args(parser, "your user name (asked for in the window if not given)")
    parser.add_argument("--gui", action="store_true", help=argparse.SUPPRESS)  # `client.py --gui` passes its argv on
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import tkinter as tk
    except ImportError:
        print("[error] tkinter is not installed (Debian: apt-get install python3-tk)", file=sys.stderr)
        return 1
    try:
        root = tk.Tk(className="chat")
    except tk.TclError as exc:
        print(f"[error] cannot open a window: {exc}", file=sys.stderr)
        return 1
    echo = os.environ.get(ECHO_ENV) == "1"
    if echo:
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    window = ChatWindow(root, args, echo=echo)

    def on_signal(_signum: int, _frame: Any) -> None:
        window.quit_requested = True  # Tk is not re-entrant: the next poll() closes the window

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    root.mainloop()
    if window.network is not None:  # the window went before the goodbye finished: give it a moment
        window.network.join(timeout=1.0)
    return 0 if window.was_connected else 1


if __name__ == "__main__":
    sys.exit(main())
