// zmq-chat in the browser.  Speaks the chat protocol (docs/protocol.md) itself over the
// gateway's WebSocket: every frame sent is one request envelope, every frame received is one
// reply or one feed payload (an envelope or an array of them).  Plain JavaScript, no build step.
//
// Safety rule: text from the network is only ever put in the page with textContent (via el()),
// never as HTML, and control/bidi characters are shown as visible escapes (safeText).
//
// The page has a view per room and per private conversation ("query"), like the console's views.py;
// the typed commands, Tab completion and long-line splitting are ports of commands.py, and the mention
// rule is display.mentions: tests/test_web_page.py checks that both languages agree.
"use strict";

(() => {
  const DEFAULT_ROOM = "general";
  const MAX_HISTORY_LIMIT = 500;
  const MAX_HELD_PER_ROOM = 10000;
  // What held events may cost (sequencer.py's bounds and estimate): per room and for all rooms together.
  const MAX_HELD_BYTES_PER_ROOM = 16 * 1024 * 1024;
  const MAX_HELD_BYTES = 64 * 1024 * 1024;
  const HELD_OVERHEAD = 400;
  const MAX_TEXT_CHARS = 4000; // messages.MAX_TEXT_CHARS: a longer line goes as several messages
  const MAX_NOTE_CHARS = 300; // messages.MAX_TOPIC_CHARS and MAX_AWAY_CHARS
  const MAX_LINES = 2000; // lines a view keeps (views.MAX_LINES); older ones scroll away for good
  const MAX_TYPED = 100; // typed lines ArrowUp brings back
  const MISSED_HEARTBEATS = 3; // heartbeats missed before the page says the connection is lost
  const FILL_RETRY_MS = 3000;
  const ACK_TIMEOUT_MS = 3000; // an unacknowledged message is sent again (same id; the broker drops repeats)
  const MAX_UNACKED = 1000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 8000;
  // Away is not an event (nobody is told when someone goes or comes back): the current room's who is
  // asked again this often, quietly, so its away marks do not go stale; and on switching to a room.
  const AWAY_REFRESH_MS = 60000;
  const AWAY_REFRESH_ON_SWITCH_MS = 10000;
  const NOTICE_EVERY_MS = 3000; // "sending too fast" and the like: one line per this long, not one per message
  // Errors that say "not now" rather than "never": the request is kept (or, for hello, asked again).
  const RETRY_CODES = new Set(["rate_limited", "unavailable"]);
  const QUERY = "@"; // a private conversation's view is "@" + the other's name (case-folded); rooms never start so
  const APP_TITLE = "zmq-chat";
  // --- protocol helpers (ports of sequencer.FeedSequencer and safe_text.safe_text) -----------

  /** Did a history reply bring all the broker has after what was asked?  Not when it says more (cut at
   *  its byte budget), nor when its last event is short of the room's head seq (cut at limit); an empty
   *  reply is complete: the broker has nothing after `after`.  (sequencer.history_complete) */
  function historyComplete(events, head, more) {
    return !more && (events.length === 0 || events[events.length - 1].seq >= head);
  }

  /** What holding an event costs, estimated as sequencer._cost does: its text at up to 4 bytes a character. */
  function heldCost(event) {
    return HELD_OVERHEAD + (typeof event.text === "string" ? 4 * event.text.length : 0);
  }

  /** The position of the room's event before this one: its prev (protocol 2), or seq - 1 without one. */
  function prevOf(event) {
    return typeof event.prev === "number" && event.prev < event.seq ? event.prev : event.seq - 1;
  }

  /** Puts each room's feed events in seq order, exactly once; says "fetch history after N" on a hole.
   *  An event follows the last one delivered when its prev is that one's seq (a cluster's seqs skip).
   *  The rules are sequencer.FeedSequencer's: both run the vectors in tests/vectors/sequencer.json. */
  class FeedSequencer {
    constructor(unknownBaseline = null) {
      this.unknownBaseline = unknownBaseline;
      this.last = new Map(); // room -> last seq delivered
      this.held = new Map(); // room -> Map(seq -> event)
      this.chain = new Map(); // room -> Map(prev -> seq), of the held events
      this.heldBytes = new Map(); // room -> what its held events cost (estimated, as sequencer.py does)
      this.totalBytes = 0;
      this.lost = 0; // events skipped because the broker no longer had them
      this.filled = 0; // events that came from history, not the feed
    }
    /** The broker says room's last seq is head: first sight sets the baseline, ahead means fetch;
     *  behind is only a reply older than feed events already here.  A broker whose history started
     *  over says so with a new history_id, and the caller calls reset() first. */
    expect(room, head) {
      if (!this.last.has(room)) this.last.set(room, head);
      let [ready, fetch] = this.settle(room);
      if (fetch === null && head > this.last.get(room)) fetch = this.last.get(room);
      return [ready, fetch];
    }
    forget(room) {
      this.last.delete(room);
      this.letGo(room);
    }
    reset() {
      this.last.clear();
      this.held.clear();
      this.chain.clear();
      this.heldBytes.clear();
      this.totalBytes = 0;
    }
    letGo(room) {
      this.held.delete(room);
      this.chain.delete(room);
      this.totalBytes -= this.heldBytes.get(room) || 0;
      this.heldBytes.delete(room);
    }
    count(room, cost) {
      this.heldBytes.set(room, (this.heldBytes.get(room) || 0) + cost);
      this.totalBytes += cost;
    }
    push(event) {
      const room = event.room;
      const seq = event.seq;
      let last = this.last.get(room);
      if (last === undefined) {
        if (this.unknownBaseline === null) {
          this.hold(room, event); // no baseline yet: wait for the joined reply
          return [[], null];
        }
        last = this.unknownBaseline;
        this.last.set(room, last);
      }
      if (seq <= last) return [[], null]; // already delivered
      if (!this.held.has(room) && prevOf(event) === last) {
        this.last.set(room, seq);
        return [[event], null];
      }
      this.hold(room, event);
      return this.settle(room);
    }
    /** A history reply for room arrived: its events, the room's head seq, its more.  Complete (see
     *  historyComplete): a hole it did not fill is gone for good, so it is skipped.  Not complete: ask
     *  again after the last event it brought. */
    fill(room, events, head, more = false) {
      if (!this.last.has(room)) return [[], null];
      const held = this.held.get(room) || new Map();
      // The history's word on a position is the last: a feed event it disagrees with (its prev) goes.
      for (const event of events) {
        if (held.has(event.seq) && prevOf(held.get(event.seq)) !== prevOf(event)) this.drop(room, event.seq);
      }
      const fresh = events.filter((e) => e.seq > this.last.get(room) && !held.has(e.seq));
      this.filled += fresh.length;
      for (const event of fresh) this.hold(room, event);
      let [ready, fetch] = this.settle(room);
      if (!historyComplete(events, head, more)) {
        const reached = events.length > 0 ? events[events.length - 1].seq : this.last.get(room);
        return [ready, Math.max(reached, this.last.get(room))];
      }
      while (fetch !== null) {
        // The broker no longer keeps what we missed up to its head: skip that hole rather than wait forever.
        // A hole past the head (the reply is older than what the feed brought) is asked again.
        const held = this.held.get(room);
        const skipPast = Math.min(prevOf(held.get(Math.min(...held.keys()))), head);
        if (skipPast <= this.last.get(room)) break;
        this.skipPast(room, skipPast);
        let later;
        [later, fetch] = this.settle(room);
        ready = ready.concat(later);
      }
      return [ready, fetch];
    }
    hold(room, event) {
      if (!this.held.has(room)) this.held.set(room, new Map());
      const held = this.held.get(room);
      if (held.has(event.seq)) return;
      held.set(event.seq, event);
      if (!this.chain.has(room)) this.chain.set(room, new Map());
      this.chain.get(room).set(prevOf(event), event.seq);
      this.count(room, heldCost(event));
      if (held.size > MAX_HELD_PER_ROOM) {
        const oldest = Math.min(...held.keys());
        if (this.last.has(room)) this.skipPast(room, prevOf(held.get(oldest)));
        else this.drop(room, oldest); // no baseline yet: fetched again once there is one
      }
      // Past a byte bound the newest held events go: the room's first hole stays, and its fill brings them.
      while (this.heldBytes.get(room) > MAX_HELD_BYTES_PER_ROOM && held.size > 1) {
        this.drop(room, Math.max(...held.keys()));
      }
      while (this.totalBytes > MAX_HELD_BYTES) {
        let largest = null;
        for (const [name, bytes] of this.heldBytes) {
          if (largest === null || bytes > this.heldBytes.get(largest)) largest = name;
        }
        const most = this.held.get(largest);
        if (!most || most.size <= 1) break;
        this.drop(largest, Math.max(...most.keys()));
      }
    }
    drop(room, seq) {
      const event = this.held.get(room).get(seq);
      this.held.get(room).delete(seq);
      const chain = this.chain.get(room);
      if (chain && chain.get(prevOf(event)) === seq) chain.delete(prevOf(event));
      this.count(room, -heldCost(event));
      return event;
    }
    /** Take everything up to position as delivered (the broker no longer has it); lost counts positions. */
    skipPast(room, position) {
      const last = this.last.get(room);
      this.lost += Math.max(0, position - last);
      this.last.set(room, Math.max(last, position));
    }
    settle(room) {
      const held = this.held.get(room);
      if (!held || held.size === 0) return [[], null];
      const chain = this.chain.get(room) || new Map();
      let last = this.last.get(room);
      const ready = [];
      while (chain.has(last)) {
        const seq = chain.get(last);
        ready.push(this.drop(room, seq));
        last = seq;
      }
      this.last.set(room, last);
      for (const seq of [...held.keys()]) if (seq <= last) this.drop(room, seq); // duplicates of what was delivered
      if (held.size > 0) return [ready, last];
      this.letGo(room);
      return [ready, null];
    }
  }

  const UNSAFE = /[\p{C}\p{Zl}\p{Zp}\p{Zs}\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;

  /** Another user's text, with control, format and bidi characters shown as escapes (\x1b, \u202e).
   *  Zero-width (non-)joiners stay: emoji sequences and Persian or Indic text need them. */
  function safeText(text) {
    return String(text).replace(UNSAFE, (ch) => {
      if (ch === " " || ch === "\u200c" || ch === "\u200d") return ch;
      if (ch === "\t") return "    ";
      if (/\p{Zs}/u.test(ch)) return " ";
      const code = ch.codePointAt(0);
      return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0") : "\\u" + code.toString(16).padStart(4, "0");
    });
  }


  // --- typed lines: commands, completion, splitting (ports of commands.py) ---------------------

  /** Every command, in the order /help lists them (commands.COMMANDS).  `takes` says what follows it. */
  const COMMANDS = [
    { words: ["msg"], takes: "name text", usage: "/msg NAME TEXT", help: "private message to NAME (nobody else sees it, not even loggers)" },
    { words: ["query"], takes: "name text?", usage: "/query NAME [TEXT]", help: "open a private conversation with NAME" },
    { words: ["me"], takes: "text", usage: "/me ACTION", help: "say an action: * alice waves" },
    { words: ["join"], takes: "room", usage: "/join ROOM", help: "join ROOM and make it current (or switch to it if you are in it)" },
    { words: ["leave", "part"], takes: "room?", usage: "/leave [ROOM], /part", help: "leave ROOM (default: the current room)" },
    { words: ["who", "names"], takes: "room?", usage: "/who [ROOM], /names", help: "who is in ROOM (default: the current room)" },
    { words: ["rooms"], takes: "", usage: "/rooms", help: "the rooms you are in" },
    { words: ["topic"], takes: "text?", usage: "/topic [TEXT]", help: "show the current room's topic, or set it (/topic - clears it)" },
    { words: ["nick"], takes: "name", usage: "/nick NAME", help: "change your name" },
    { words: ["away"], takes: "text?", usage: "/away [REASON]", help: "mark yourself away (without a reason: back)" },
    { words: ["back"], takes: "", usage: "/back", help: "you are back" },
    { words: ["window", "win"], takes: "number", usage: "/window N", help: "switch to view N (rooms, then private conversations)" },
    { words: ["clear"], takes: "", usage: "/clear", help: "clear the current view" },
    { words: ["help"], takes: "", usage: "/help", help: "this help" },
    { words: ["quit", "exit"], takes: "", usage: "/quit, /exit", help: "leave the chat" },
  ];
  const BY_WORD = new Map(COMMANDS.flatMap((spec) => spec.words.map((word) => [word, spec])));
  const COMMAND_WORDS = COMMANDS.flatMap((spec) => spec.words.map((word) => "/" + word));
  const ROOM_ARGUMENT = new Set(["/join", "/leave", "/part", "/who", "/names"]);
  const NAME_ARGUMENT = new Set(["/msg", "/query", "/nick"]);
  const HELP = [
    "Commands:",
    "TEXT — say TEXT in the current room (or to the other, in a private conversation)",
    ...COMMANDS.map((spec) => `${spec.usage} — ${spec.help}`),
    "//TEXT — say TEXT starting with a slash",
    "Tab completes commands, #rooms and names (again: the next one); ↑ brings back what you typed.",
  ];

  /** A command typed wrong: the message says how it is typed (commands.Usage). */
  class Usage extends Error {}

  /** One typed line -> {name, arg, text} (name "say" for plain text), null for a blank line; throws Usage.
   *  The same answers as commands.parse. */
  function parse(line) {
    line = line.replace(/[\r\n]+$/, "");
    if (!line.trim()) return null;
    if (!line.startsWith("/") || line.startsWith("//")) {
      return { name: "say", arg: "", text: line.startsWith("//") ? line.slice(1) : line };
    }
    const [word, rest0] = partition(line.slice(1));
    const spec = BY_WORD.get(word.toLowerCase());
    if (spec === undefined) throw new Usage(`unknown command /${word.slice(0, 40)}; /help lists the commands`);
    const rest = rest0.trim();
    const name = spec.words[0];
    if (spec.takes === "" || spec.takes === "text?") return { name, arg: "", text: rest };
    if (spec.takes === "text") {
      if (!rest) throw new Usage(`usage: ${spec.usage}`);
      return { name, arg: "", text: rest };
    }
    const [first, text] = partition(rest);
    if (spec.takes.startsWith("room")) {
      const room = first.replace(/^#+/, "").toLowerCase();
      if (!room && spec.takes === "room") throw new Usage(`usage: ${spec.usage}`);
      return { name, arg: room, text: "" };
    }
    if (spec.takes === "number") {
      if (!/^[0-9]+$/.test(first)) throw new Usage(`usage: ${spec.usage}`);
      return { name, arg: first, text: "" };
    }
    if (!first || (spec.takes === "name text" && !text.trim())) throw new Usage(`usage: ${spec.usage}`);
    return { name, arg: first, text: text.trim() };
  }

  /** Python's str.partition(" "): before the first space, and after it ("" if none). */
  function partition(text) {
    const at = text.indexOf(" ");
    return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + 1)];
  }

  /** What Tab may put in place of the word ending at the cursor (commands.complete): a command after "/"
   *  at the start, a room after "#" or as the argument of a room command, else a name (of `names`; at the
   *  start of a line "NAME: ", as chat clients address someone).  -> {start, candidates} */
  function complete(beforeCursor, names, rooms, me) {
    const start = /\S*$/.exec(beforeCursor).index;
    const typed = beforeCursor.slice(start);
    const folded = typed.toLowerCase();
    const head = beforeCursor.slice(0, start);
    const first = head.trim() ? head.split(" ", 1)[0].toLowerCase() : "";
    if (!head.trim() && typed.startsWith("/")) {
      return { start, candidates: COMMAND_WORDS.filter((w) => w.startsWith(folded)) };
    }
    if (typed.startsWith("#") || ROOM_ARGUMENT.has(first)) {
      const bare = folded.replace(/^#+/, "");
      return { start, candidates: rooms.filter((r) => r.startsWith(bare)).map((r) => "#" + r) };
    }
    const others = names.filter((n) => n.toLowerCase().startsWith(folded) && n !== me);
    if (!head.trim()) return { start, candidates: first ? others : others.map((n) => n + ": ") };
    return { start, candidates: others };
  }

  /** `text` as messages of at most `limit` characters (code points, as the broker counts) each, cut at
   *  the last space before the limit, or hard in a longer word (commands.split_text). */
  function splitText(text, limit = MAX_TEXT_CHARS) {
    const chars = Array.from(text);
    if (chars.length <= limit) return [text];
    const parts = [];
    let at = 0;
    while (chars.length - at > limit) {
      let cut = chars.lastIndexOf(" ", at + limit) - at; // str.rfind(" ", 0, limit + 1)
      if (cut <= 0) cut = limit;
      parts.push(chars.slice(at, at + cut).join(""));
      at += cut;
      while (chars[at] === " ") at += 1;
    }
    if (at < chars.length || parts.length === 0) parts.push(chars.slice(at).join(""));
    return parts;
  }

  /** Does `text` name `me` as a word, in any case (display.mentions)?  Names hold ". -", so those do
   *  not end a word: "alice.b" and "alice-2" are someone else. */
  function mentionPattern(me) {
    const name = me.replace(/[.*+?^${}()|[\]\\-]/g, "\\$&");
    return new RegExp(`(?<![\\p{L}\\p{N}_.\\-])${name}(?![\\p{L}\\p{N}_\\-])`, "giu");
  }

  function mentions(text, me) {
    return Boolean(me) && mentionPattern(me).test(text);
  }

  // --- DOM helpers: text only ------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** An element with a class and children; strings become text nodes, never markup. */
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function userClass(name) {
    let h = 0;
    for (const ch of String(name).toLowerCase()) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return "user u" + (h % 8);
  }

  function clock(ts) {
    const d = ts ? new Date(ts * 1000) : new Date();
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  const byName = (a, b) => a.toLowerCase().localeCompare(b.toLowerCase());
  const fold = (name) => String(name).toLowerCase();
  /** document.hidden, strictly: a stand-in document (the Node tests') is never "hidden". */
  const pageHidden = () => document.hidden === true;

  // --- state ---------------------------------------------------------------------------------

  /** A message id nobody can predict: 16 random bytes (128 bits), base64url (22 characters).  Ids must
   *  not be guessable from the feed: someone who took our name after our connection dropped could
   *  otherwise send other text under our next ids, and our resends would be acked as repeats. */
  function nextId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const S = {
    ws: null,
    wsOpen: false,
    wsEverOpen: false,
    backoff: BACKOFF_MIN_MS,
    name: null, // the name we want; null until picked (after /nick: the new one)
    user: null, // the name the broker welcomed; null while there is no session
    welcomed: false, // ever welcomed: errors then no longer go to the name prompt
    retryUntil: 0, // until when name_taken means "our old session has not ended yet"
    epoch: null,
    historyId: null, // which history our seqs belong to: a new one means they are void
    heartbeat: 1.0,
    sessionTimeout: 5.0,
    shutdown: false,
    lastHeard: 0,
    lastPing: 0,
    lastHello: 0,
    link: null,
    wanted: [DEFAULT_ROOM], // rooms we want to be in (sent in hello), in order
    views: new Map(), // room, or QUERY + folded name -> view (see roomView, queryView), in the order opened
    joined: new Set(), // rooms the broker confirmed for this session
    current: null, // the key of the view shown
    switchOnJoin: new Set(),
    seq: new FeedSequencer(),
    fills: new Map(), // room -> when history was asked to fill a gap
    catchUp: new Map(), // room -> when to check for events missed right after joining
    unacked: new Map(), // id -> request
    sentAt: new Map(), // id -> when last sent, oldest first
    joining: new Map(), // join request id -> room, until joined or refused
    pending: new Map(), // id -> the greyed line of a message not yet on the feed (or, for a dm, not acked)
    asked: new Map(), // id -> what a topic/nick/away request was, until its answer
    seen: new Map(), // room -> Map(seq -> ts) of the last events shown, to recognise them after a restart
    noticed: new Map(), // notice kind -> when it was last shown
    whoAt: new Map(), // room -> when its members (and their away marks) were last asked or told
    quietWho: new Map(), // room -> who replies to take without a line (the page's own refreshes)
    away: "", // our own away reason ("": here)
    unseen: 0, // messages that came while the tab was hidden (the title shows them)
    unseenMentions: 0, // of those, the ones that named us, and private messages
    askedNotify: false, // notification permission asked (once per page, on a user's gesture)
    typed: [], // lines typed, oldest first, for ArrowUp
    recall: null, // index in typed of the line ArrowUp brought back
    tab: null, // the completion being cycled: {start, candidates, index, after, value, caret}
  };

  const isQuery = (key) => typeof key === "string" && key.startsWith(QUERY);
  const currentView = () => (S.current === null ? null : S.views.get(S.current) || null);
  /** The current view's room, or null in a private conversation or none. */
  const currentRoom = () => (S.current !== null && !isQuery(S.current) ? S.current : null);
  const myName = () => S.user || S.name; // our name, also while a reconnect has no session yet

  // --- sending -------------------------------------------------------------------------------

  function send(env) {
    if (!S.wsOpen) return false;
    S.ws.send(JSON.stringify(env));
    return true;
  }

  function sendHello() {
    S.lastHello = Date.now();
    const hello = { type: "hello", user: S.name, rooms: S.wanted };
    if (S.hadSession) hello.resume = true; // coming back: our joins are no news to the others
    send(hello);
  }

  /** A msg or dm: kept until its ack, resent after ACK_TIMEOUT_MS or a new session. */
  function request(env, me) {
    if (S.unacked.size >= MAX_UNACKED) {
      errorLine(`${MAX_UNACKED} messages are waiting for the chat server; try again later (queue_full)`);
      return null;
    }
    env.id = nextId();
    if (me) env.me = true;
    S.unacked.set(env.id, env);
    S.sentAt.set(env.id, Date.now());
    if (S.user !== null) send(env); // without a session it waits for the next welcome
    return env.id;
  }

  /** A one-off request (topic, nick, away): not resent, so only with a session; its answer or error
   *  comes back with its id. */
  function ask(env, what) {
    if (S.user === null) {
      errorLine("not connected to the chat server just now; try again in a moment");
      return;
    }
    env.id = nextId();
    S.asked.set(env.id, what);
    if (S.asked.size > 100) S.asked.delete(S.asked.keys().next().value); // answers lost with a connection
    send(env);
  }

  function resend(id, now) {
    S.sentAt.delete(id);
    S.sentAt.set(id, now); // to the back: sentAt stays oldest first
    send(S.unacked.get(id));
  }

  function say(room, text, me) {
    for (const part of splitText(text)) {
      const id = request({ type: "msg", room, text: part }, me);
      if (id === null) return;
      const line = msgLine({ user: myName(), text: part, me }, "pending");
      S.pending.set(id, line);
      append(room, line);
    }
  }

  /** A private message (in parts, if long): its line waits greyed in the conversation until the ack. */
  function sendDm(to, text, me) {
    const view = queryView(to);
    for (const part of splitText(text)) {
      const id = request({ type: "dm", to, text: part }, me);
      if (id === null) return;
      const line = msgLine({ user: myName(), text: part, me }, "pending");
      S.pending.set(id, line);
      append(view.key, line);
    }
  }

  // --- the connection ------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/ws");
    S.ws = ws;
    ws.onopen = () => {
      S.wsOpen = S.wsEverOpen = true;
      S.backoff = BACKOFF_MIN_MS;
      S.lastHeard = Date.now();
      if (S.name) {
        // A new WebSocket is a new broker session: say hello again, with every room we were in.
        S.user = null;
        S.retryUntil = Date.now() + (S.sessionTimeout + 3 * S.heartbeat + 1) * 1000;
        sendHello();
      }
      refresh();
    };
    ws.onmessage = (msg) => {
      S.lastHeard = Date.now();
      let value;
      try {
        value = JSON.parse(msg.data);
      } catch {
        return;
      }
      for (const env of Array.isArray(value) ? value : [value]) {
        if (env && typeof env === "object" && typeof env.type === "string") handle(env);
      }
      // Housekeeping on traffic too, not only on timers: background tabs throttle timers.
      housekeeping();
    };
    ws.onclose = (event) => {
      if (S.ws !== ws) return;
      if (event.code === 1008 || event.code === 1011 || event.code === 1013) {
        // The gateway closed us on purpose (a slow consumer, its own error): say why, then reconnect.
        systemLine(`the gateway closed the connection: ${safeText(event.reason || String(event.code))}`);
      }
      S.wsOpen = false;
      S.user = null;
      S.joined.clear();
      S.joining.clear();
      S.fills.clear();
      S.catchUp.clear();
      const delay = S.backoff * (0.75 + Math.random() / 2);
      S.backoff = Math.min(BACKOFF_MAX_MS, S.backoff * 2);
      setTimeout(connect, delay);
      refresh();
    };
  }

  // --- incoming ------------------------------------------------------------------------------

  function handle(env) {
    switch (env.type) {
      case "welcome":
        return onWelcome(env);
      case "joined":
        return onJoined(env);
      case "left":
        return onLeft(env.room);
      case "ack":
        return onAck(env);
      case "error":
        return onError(env);
      case "history":
        return onHistory(env);
      case "pong":
        sawEpoch(env.epoch);
        if (env.session === false && S.user !== null) loseSession(); // the broker timed us out
        return;
      case "dm":
        return onDm(env);
      case "who":
        return onWho(env);
      case "renamed":
        return onRenamed(env);
      case "away":
        return onAway(env);
      case "heartbeat":
        return sawEpoch(env.epoch);
      case "shutdown":
        S.shutdown = true;
        return;
      case "msg":
      case "join":
      case "leave":
      case "topic":
      case "nick":
      case "head":
        return onFeed(env);
      default:
        return; // newer than this page: ignored, as the protocol asks
    }
  }

  function onWelcome(env) {
    S.hadSession = true;
    if (S.user !== null) return; // a repeated hello answered again
    if (typeof env.heartbeat === "number" && env.heartbeat > 0) S.heartbeat = env.heartbeat;
    if (typeof env.session_timeout === "number") S.sessionTimeout = env.session_timeout;
    sawHistory(env.history_id);
    sawEpoch(env.epoch);
    S.user = env.user;
    S.name = env.user;
    S.shutdown = false;
    const resumed = S.welcomed;
    S.welcomed = true;
    saveName();
    $("login").hidden = true;
    $("app").hidden = false;
    document.body.classList.add("signed-in");
    if (resumed) {
      const now = Date.now();
      for (const id of [...S.sentAt.keys()]) resend(id, now); // what the lost session never acknowledged
      if (S.away) ask({ type: "away", reason: S.away }, "/away"); // a new session starts out here
    } else {
      systemLine(`signed in as ${S.user}; /help lists the commands, Tab completes names`);
      $("input").focus();
    }
  }

  /** This tab signs in again as S.name after a reload (sessionStorage); a new tab offers the name
   *  last used (localStorage). */
  function saveName() {
    try {
      sessionStorage.setItem("zmq-chat", JSON.stringify({ name: S.name, rooms: S.wanted }));
      localStorage.setItem("zmq-chat-name", S.name);
    } catch {
      /* storage may be disabled */
    }
  }

  function onJoined(env) {
    const room = env.room;
    if (typeof room !== "string" || typeof env.seq !== "number") return;
    S.joined.add(room);
    if (!S.wanted.includes(room)) {
      S.wanted.push(room);
      saveName(); // a reload comes back to this room too
    }
    const view = roomView(room);
    const first = view.log.childElementCount === 0;
    view.topic = typeof env.topic === "string" ? env.topic : "";
    view.away = awayMap(env.away);
    S.whoAt.set(room, Date.now());
    setUsers(room, Array.isArray(env.users) ? env.users : []);
    for (const [id, r] of [...S.joining]) if (r === room) S.joining.delete(id);
    // Back in a room after a reconnect: what we missed comes as ordinary events (fetched by seq).
    const rejoin = S.seq.last.has(room);
    if (rejoin && S.historyId === null && startedOver(room, env)) {
      // A broker with no database lost the room: its seqs start again at 1, and all it has is new to us.
      S.seq.forget(room);
      S.seq.last.set(room, 0);
      S.seen.delete(room);
    }
    if (!rejoin && Array.isArray(env.history)) {
      for (const event of env.history) {
        if (!event || typeof event.seq !== "number") continue;
        remember(event);
        if (event.type === "msg") append(room, msgLine(event, "history"));
      }
    }
    if (first && view.topic) append(room, noticeLine("topic", `topic: ${safeText(view.topic)}`));
    deliver(room, ...S.seq.expect(room, env.seq));
    // Our subscription and this join raced; one catch-up fetch closes a hole no later event would show.
    S.catchUp.set(room, Date.now() + S.heartbeat * 1000);
    if (S.switchOnJoin.has(room) || S.current === null) {
      S.switchOnJoin.delete(room);
      switchTo(room);
    } else if (room === S.current) {
      renderHead();
    }
    renderRooms();
  }

  /** The broker's {NAME: REASON} of members who are away, keyed by folded name. */
  function awayMap(away) {
    const map = new Map();
    if (away && typeof away === "object") {
      for (const [name, why] of Object.entries(away)) if (typeof why === "string") map.set(fold(name), why);
    }
    return map;
  }

  /** A broker that says no history_id: after its restart, did the room go on (a database) or start
   *  over (none)?  The events it still has tell: the same seq with the same ts is the same event.
   *  With nothing to compare, a broker behind us started over. */
  function startedOver(room, env) {
    const seen = S.seen.get(room);
    for (const event of Array.isArray(env.history) ? env.history : []) {
      if (event && seen && seen.has(event.seq)) return seen.get(event.seq) !== event.ts;
    }
    return env.seq < S.seq.last.get(room);
  }

  function remember(event) {
    let seen = S.seen.get(event.room);
    if (!seen) S.seen.set(event.room, (seen = new Map()));
    seen.set(event.seq, event.ts);
    if (seen.size > 200) seen.delete(seen.keys().next().value);
  }

  /** A history reply to a fill: the sequencer decides from its events, the room's head seq and more
   *  whether it is complete (a hole it did not fill is gone for good) or to ask again after it. */
  function onHistory(env) {
    const room = env.room;
    if (!S.fills.has(room)) return;
    S.fills.delete(room);
    const events = (Array.isArray(env.events) ? env.events : []).filter((e) => e && typeof e.seq === "number");
    const head = typeof env.seq === "number" ? env.seq : 0; // as messages.History reads it
    deliver(room, ...S.seq.fill(room, events, head, env.more === true));
  }

  function onLeft(room) {
    S.joined.delete(room);
    for (const [id, r] of [...S.joining]) if (r === room) S.joining.delete(id);
    S.wanted = S.wanted.filter((r) => r !== room);
    S.seq.forget(room);
    S.seen.delete(room);
    S.fills.delete(room);
    S.catchUp.delete(room);
    S.whoAt.delete(room);
    S.quietWho.delete(room);
    closeView(room);
    systemLine(`you left #${room}`);
    saveName();
  }

  function onAck(env) {
    S.asked.delete(env.id); // a topic: its feed event says it
    const req = S.unacked.get(env.id);
    S.unacked.delete(env.id);
    S.sentAt.delete(env.id);
    const line = S.pending.get(env.id);
    if (req && req.type === "dm") {
      // No feed event follows a private message: the ack is all, so its line is sent now.
      const to = typeof env.to === "string" ? env.to : req.to;
      if (line) {
        S.pending.delete(env.id);
        line.classList.remove("pending");
      }
      const view = queryView(to);
      if (S.current !== view.key) echoDm(to, req); // typed elsewhere (/msg): say it went
      if (typeof env.away === "string") {
        const why = `${to} is away: ${safeText(env.away)}`;
        append(view.key, noticeLine("away", why));
        if (S.current !== view.key) systemLine(why, "away");
      }
      return;
    }
    if (line) line.classList.replace("pending", "sent"); // its feed event replaces it
  }

  /** "[dm → bob] text" in the current view, for a private message sent from it; a click opens it. */
  function echoDm(to, req) {
    const text = el("span", "text", safeText(req.text));
    const head = req.me ? `[dm → ${to}] * ${myName()} ` : `[dm → ${to}] `;
    const line = el("li", "dm out", el("time", null, clock()), head, text);
    line.dataset.query = fold(to);
    line.title = `open the conversation with ${to}`;
    append(S.current, line);
  }

  /** A line at most every NOTICE_EVERY_MS per kind, so that a burst of refusals is one line. */
  function notice(kind, text) {
    const now = Date.now();
    if (now - (S.noticed.get(kind) || 0) < NOTICE_EVERY_MS) return;
    S.noticed.set(kind, now);
    errorLine(text);
  }

  function onError(env) {
    const code = env.code;
    const id = env.id;
    const detail = safeText(env.detail || "");
    if (code === "no_session" && S.welcomed) {
      if (S.user !== null) loseSession(); // the message stays unacknowledged and is resent after the welcome
      return;
    }
    if (S.user === null && S.name && id === undefined) {
      // The answer to our hello (or to a ping while we wait for one).
      if (code === "name_taken" && Date.now() < S.retryUntil) return; // our old session is still ending
      if (RETRY_CODES.has(code) || code === "internal") {
        // Not now: housekeeping says hello again in a moment.
        if (S.welcomed) notice(code, `${detail} (${code}); trying again`);
        else $("login-error").textContent = `${detail} (${code}); trying again…`;
        return;
      }
      showLogin(`${detail} (${code})`);
      return;
    }
    if (code === "id_reused" && S.unacked.has(id)) {
      // Someone used this id for something else (our name, another connection): the same message under a new id.
      const req = S.unacked.get(id);
      const fresh = nextId();
      S.unacked.delete(id);
      S.sentAt.delete(id);
      req.id = fresh;
      S.unacked.set(fresh, req);
      S.sentAt.set(fresh, Date.now());
      const line = S.pending.get(id);
      if (line) {
        S.pending.delete(id);
        S.pending.set(fresh, line);
      }
      if (S.user !== null) send(req); // else the next welcome sends it
      return;
    }
    if (RETRY_CODES.has(code) && S.unacked.has(id)) {
      // Kept, and resent after ACK_TIMEOUT_MS.
      const why = code === "rate_limited" ? "sending too fast" : detail;
      notice(code, `${why}; the message will be sent again in a moment (${code})`);
      return;
    }
    if (RETRY_CODES.has(code) && id === undefined) {
      notice(code, `${detail} (${code})`); // a ping, a history fill: asked again by housekeeping
      return;
    }
    if (S.unacked.has(id)) {
      S.unacked.delete(id);
      S.sentAt.delete(id);
      const line = S.pending.get(id);
      if (line) {
        S.pending.delete(id);
        line.classList.replace("pending", "failed");
        line.append(el("span", "why", ` — not sent: ${code}`));
      }
    } else if (S.joining.has(id)) {
      S.switchOnJoin.delete(S.joining.get(id)); // a join that was refused
      S.joining.delete(id);
    }
    const what = S.asked.get(id);
    S.asked.delete(id);
    errorLine(`${what ? what + ": " : ""}${detail} (${code})`);
  }

  function onFeed(event) {
    const room = event.room;
    if (typeof room !== "string" || typeof event.seq !== "number") return;
    if (event.type === "head") {
      // Not an event: the room's newest seq, told with the heartbeat.  Behind it, we missed events: fetch them.
      if (S.seq.last.has(room)) deliver(room, ...S.seq.expect(room, event.seq));
      return;
    }
    if (!S.wanted.includes(room) && ![...S.joining.values()].includes(room)) return; // a room we left
    deliver(room, ...S.seq.push(event));
  }

  function deliver(room, ready, fetchAfter) {
    for (const event of ready) show(event);
    if (fetchAfter !== null && fetchAfter !== undefined && !S.fills.has(room)) {
      S.fills.set(room, Date.now());
      send({ type: "history", room, after: fetchAfter, limit: MAX_HISTORY_LIMIT });
    }
  }

  /** The broker's history is not the one our seqs came from (a new database, or none): start over. */
  function sawHistory(historyId) {
    if (typeof historyId !== "string") return;
    if (S.historyId !== null && historyId !== S.historyId) {
      S.seq.reset();
      S.seen.clear();
      S.fills.clear();
      S.catchUp.clear();
    }
    S.historyId = historyId;
  }

  function sawEpoch(epoch) {
    if (typeof epoch !== "string" || epoch === S.epoch) return;
    const restarted = S.epoch !== null;
    S.epoch = epoch;
    if (!restarted) return;
    // A new broker run knows no session of ours.  Its rooms go on where they were (or, with no
    // database, start over): re-joining tells which, and fetches what we missed.
    S.fills.clear();
    for (const view of S.views.values()) {
      if (view.kind === "room") append(view.key, el("li", "divider", "the chat server restarted"));
    }
    if (S.user !== null) loseSession();
  }

  function loseSession() {
    S.user = null;
    S.joined.clear();
    S.catchUp.clear();
    S.retryUntil = Date.now() + (S.sessionTimeout + 3 * S.heartbeat + 1) * 1000;
    sendHello();
  }

  function onDm(env) {
    if (typeof env.user !== "string") return;
    const view = queryView(env.user);
    append(view.key, msgLine(env), true, true); // a private message counts as a mention, as in views.py
    notifyAbout(view, `${env.user} (private)`, env);
  }

  /** Ask a room's members again without a line in the log (see AWAY_REFRESH_MS). */
  function refreshWho(room) {
    if (S.user === null || !S.joined.has(room)) return;
    S.whoAt.set(room, Date.now());
    S.quietWho.set(room, (S.quietWho.get(room) || 0) + 1);
    send({ type: "who", room });
  }

  function onWho(env) {
    const users = Array.isArray(env.users) ? env.users.filter((u) => typeof u === "string") : [];
    const quiet = S.quietWho.get(env.room) || 0;
    if (quiet > 1) S.quietWho.set(env.room, quiet - 1);
    else S.quietWho.delete(env.room);
    const away = awayMap(env.away);
    const view = S.views.get(env.room);
    if (view && view.kind === "room" && S.joined.has(env.room)) {
      view.away = away;
      setUsers(env.room, users);
    }
    S.whoAt.set(env.room, Date.now());
    if (quiet) return;
    const named = users.map((u) => (away.has(fold(u)) ? `${u} (away)` : u));
    systemLine(`#${env.room}: ${named.length ? named.join(", ") : "nobody"} (${named.length})`, "who");
  }

  /** Our /nick went through: from now on we are env.user (in hello after a reconnect too). */
  function onRenamed(env) {
    if (typeof env.user !== "string") return;
    S.asked.delete(env.id);
    const was = S.user;
    S.user = S.name = env.user;
    saveName();
    for (const view of S.views.values()) if (view.kind === "room" && was) renameMember(view, was, env.user);
    S.link = null; // the banner names us: say it again
    refresh();
    renderMembers();
    systemLine(`you are now known as ${env.user}`);
  }

  function onAway(env) {
    S.asked.delete(env.id);
    S.away = typeof env.reason === "string" ? env.reason : "";
    // Nobody tells us our own away state in the member lists until the next who or join: set it here.
    for (const view of S.views.values()) {
      if (view.kind !== "room" || !S.user) continue;
      if (S.away) view.away.set(fold(S.user), S.away);
      else view.away.delete(fold(S.user));
    }
    renderMembers();
    systemLine(S.away ? `you are marked as away: ${safeText(S.away)}` : "you are back");
  }

  // --- showing events ------------------------------------------------------------------------

  /** A message line: time, coloured name, text; our name in someone else's text is marked. */
  function msgLine(event, extra) {
    const cls = "msg" + (event.me ? " me" : "") + (extra ? " " + extra : "");
    const user = el("span", userClass(event.user), event.user);
    const shown = safeText(event.text);
    const said = event.user !== myName() && mentions(shown, myName());
    const text = el("span", "text", ...(said ? marked(shown, myName()) : [shown]));
    const line = event.me
      ? el("li", cls, el("time", null, clock(event.ts)), "* ", user, " ", text)
      : el("li", cls, el("time", null, clock(event.ts)), user, ": ", text);
    if (said) line.classList.add("mention");
    return line;
  }

  /** `text` as text nodes, with each mention of `name` in a <mark> (still text: no markup from the network). */
  function marked(text, name) {
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(mentionPattern(name))) {
      parts.push(text.slice(at, match.index), el("mark", null, match[0]));
      at = match.index + match[0].length;
    }
    parts.push(text.slice(at));
    return parts.filter((part) => part !== "");
  }

  function noticeLine(kind, text, ts) {
    return el("li", "notice " + kind, el("time", null, clock(ts)), text);
  }

  function show(event) {
    const room = event.room;
    remember(event);
    const mine = event.user === myName(); // user is null while reconnecting; our events still are ours
    const view = S.views.get(room);
    if (event.type === "msg") {
      if (mine && S.unacked.has(event.id)) {
        // As good as the ack, which follows the same commit and can be lost with the broker's connection:
        // a resend to a broker that kept nothing would publish it twice.
        S.unacked.delete(event.id);
        S.sentAt.delete(event.id);
      }
      const pending = S.pending.get(event.id);
      if (pending && mine) {
        pending.remove();
        S.pending.delete(event.id);
      }
      const line = msgLine(event);
      const said = line.classList.contains("mention");
      append(room, line, !mine, said);
      if (said && view) notifyAbout(view, `${event.user} in #${room}`, event);
    } else if (event.type === "join" || event.type === "leave") {
      if (view) {
        const others = view.users.filter((u) => fold(u) !== fold(event.user));
        if (event.type === "leave") view.away.delete(fold(event.user));
        setUsers(room, event.type === "join" ? others.concat([event.user]) : others);
      }
      if (mine || event.resumed) return; // our own join/leave is said by the room list; a resumed join is no news
      const place = room === DEFAULT_ROOM ? "chat" : "room";
      const text =
        event.type === "join"
          ? `${event.user} joined the ${place}`
          : `${event.user} left the ${place}${event.reason === "timeout" ? " (timed out)" : ""}`;
      append(room, noticeLine(event.type, text, event.ts));
    } else if (event.type === "topic") {
      const topic = typeof event.topic === "string" ? event.topic : "";
      if (view) view.topic = topic;
      if (room === S.current) renderHead();
      const text = topic ? `[topic] ${event.user} set the topic: ${safeText(topic)}` : `[topic] ${event.user} cleared the topic`;
      append(room, noticeLine("topic", text, event.ts));
    } else if (event.type === "nick" && typeof event.name === "string") {
      if (view) renameMember(view, event.user, event.name);
      renameQuery(event.user, event.name);
      append(room, noticeLine("nick", `[nick] ${event.user} is now known as ${event.name}`, event.ts));
    }
  }

  /** A mention or private message while the tab is hidden: a notification, if the browser has them
   *  and the user allowed them.  A click on it brings the conversation up. */
  function notifyAbout(view, title, event) {
    if (!pageHidden() || typeof Notification === "undefined") return;
    try {
      if (Notification.permission !== "granted") return;
      const body = (event.me ? `* ${event.user} ` : "") + safeText(event.text).slice(0, 200);
      const note = new Notification(title, { body, tag: view.key });
      note.onclick = () => {
        window.focus();
        if (S.views.has(view.key)) switchTo(view.key);
        note.close();
      };
    } catch {
      /* no Notification constructor here (Android Chrome wants a service worker): the title still counts */
    }
  }

  /** Asked once, on a user's gesture (signing in, joining): browsers ignore or penalise asking unprompted. */
  function askNotifications() {
    if (S.askedNotify || typeof Notification === "undefined") return;
    S.askedNotify = true;
    try {
      if (Notification.permission !== "default") return;
      const answer = Notification.requestPermission();
      if (answer && typeof answer.catch === "function") answer.catch(() => {});
    } catch {
      /* unavailable (an insecure origin, an old browser): no notifications, nothing else changes */
    }
  }

  // --- views -----------------------------------------------------------------------------------

  function newLog(attribute, value) {
    const log = el("ol", "log");
    log.dataset[attribute] = value;
    log.hidden = true;
    $("messages").append(log);
    return log;
  }

  function roomView(room) {
    let view = S.views.get(room);
    if (!view) {
      view = { kind: "room", key: room, name: room, log: newLog("room", room), users: [], away: new Map(), topic: "", unread: 0, mentions: 0 };
      S.views.set(room, view);
    }
    return view;
  }

  /** The private conversation with `name` (opened if need be, not switched to). */
  function queryView(name) {
    const key = QUERY + fold(name);
    let view = S.views.get(key);
    if (!view) {
      view = { kind: "query", key, name, log: newLog("query", fold(name)), users: [], away: new Map(), topic: "", unread: 0, mentions: 0 };
      S.views.set(key, view);
      renderRooms();
    }
    view.name = name; // as the broker spells it, the latest
    return view;
  }

  function closeView(key) {
    const view = S.views.get(key);
    if (view) {
      view.log.remove();
      S.views.delete(key);
    }
    if (S.current === key) {
      const rooms = [...S.views.values()].filter((v) => v.kind === "room").map((v) => v.key);
      switchTo(rooms.includes(DEFAULT_ROOM) ? DEFAULT_ROOM : rooms[0] || [...S.views.keys()][0] || null);
    }
    renderRooms();
  }

  /** Views in the order the lists show them (and /window counts): rooms, then conversations. */
  function viewOrder() {
    const rooms = S.wanted.filter((room) => S.views.has(room));
    const queries = [...S.views.values()].filter((v) => v.kind === "query").map((v) => v.key);
    return rooms.concat(queries);
  }

  function viewLabel(key) {
    const view = S.views.get(key);
    return isQuery(key) ? "@" + (view ? view.name : key.slice(1)) : "#" + key;
  }

  function renameMember(view, old, name) {
    const others = view.users.filter((u) => fold(u) !== fold(old) && fold(u) !== fold(name));
    const was = view.users.some((u) => fold(u) === fold(old));
    const away = view.away.get(fold(old));
    view.away.delete(fold(old));
    if (away !== undefined) view.away.set(fold(name), away);
    if (was) setUsers(view.key, others.concat([name]));
  }

  /** Someone we talk to privately changed their name: the conversation follows them. */
  function renameQuery(old, name) {
    const oldKey = QUERY + fold(old);
    const newKey = QUERY + fold(name);
    const view = S.views.get(oldKey);
    if (!view || oldKey === newKey || S.views.has(newKey)) return;
    S.views.delete(oldKey);
    view.key = newKey;
    view.name = name;
    view.log.dataset.query = fold(name);
    S.views.set(newKey, view);
    append(newKey, noticeLine("nick", `[nick] ${old} is now known as ${name}`));
    if (S.current === oldKey) switchTo(newKey);
    else renderRooms();
  }

  /** Append a line to a view (null: the current one, or a log for "no view"), keeping the view
   *  scrolled to the end if it was.  `counts`: a message from someone else (unread, and the title
   *  count while the tab is hidden); `mention`: it named us, or was private. */
  function append(key, line, counts = false, mention = false) {
    const view = key === null ? null : S.views.get(key);
    const log = view ? view.log : noViewLog();
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    log.append(line);
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    if (counts) noteActivity(view, mention);
    if (atBottom && !log.hidden) box.scrollTop = box.scrollHeight;
  }

  function noteActivity(view, mention) {
    if (view && view.key !== S.current) {
      view.unread += 1;
      if (mention) view.mentions += 1;
      renderRooms();
    }
    if (pageHidden()) {
      S.unseen += 1;
      if (mention) S.unseenMentions += 1;
      renderTitle();
    }
  }

  function noViewLog() {
    let log = document.querySelector('.log[data-room=""]');
    if (!log) {
      log = newLog("room", "");
      log.hidden = S.current !== null;
    }
    return log;
  }

  function systemLine(text, cls) {
    append(S.current, el("li", "system" + (cls ? " " + cls : ""), el("time", null, clock()), text));
  }

  function errorLine(text) {
    append(S.current, el("li", "error", el("time", null, clock()), "error: " + text));
  }

  function setUsers(room, users) {
    const view = roomView(room);
    view.users = [...new Set(users)].sort(byName);
    if (room === S.current) renderMembers();
  }

  function renderMembers() {
    const view = currentView();
    let users = [];
    if (view && view.kind === "room") users = view.users;
    else if (view) users = [myName(), view.name].filter(Boolean);
    const away = view ? view.away : new Map();
    $("members").replaceChildren(
      ...users.map((u) => {
        const why = away.get(fold(u));
        const li = el("li", (u === myName() ? "self " : "") + userClass(u), u);
        li.dataset.user = u;
        if (why !== undefined) {
          li.classList.add("away");
          li.append(el("span", "tag", "away"));
          li.title = why ? `away: ${safeText(why)}` : "away";
        } else if (u !== myName()) {
          li.title = "talk privately";
        }
        return li;
      }),
    );
    const count = users.length ? String(users.length) : "";
    $("member-count").textContent = count ? `(${count})` : "";
    $("members-badge").textContent = count;
    $("members-badge").hidden = !count;
  }

  function roomItem(key, label, dataName, dataValue, closeTitle) {
    const view = S.views.get(key);
    const unread = view && view.unread ? el("span", "unread" + (view.mentions ? " mention" : ""), String(view.unread)) : null;
    const name = el("button", "room", label, unread);
    name.type = "button";
    name.dataset[dataName] = dataValue;
    const leave = el("button", "leave", "×");
    leave.type = "button";
    leave.dataset.leave = key;
    leave.title = closeTitle;
    leave.setAttribute("aria-label", closeTitle);
    return el("li", key === S.current ? "current" : "", name, leave);
  }

  function renderRooms() {
    $("rooms").replaceChildren(
      ...S.wanted.map((room) => {
        const li = roomItem(room, "#" + room, "room", room, `leave #${room}`);
        if (!S.joined.has(room)) li.classList.add("joining");
        return li;
      }),
    );
    const queries = [...S.views.values()].filter((v) => v.kind === "query");
    $("queries").replaceChildren(
      ...queries.map((v) => roomItem(v.key, "@" + v.name, "query", fold(v.name), `close the conversation with ${v.name}`)),
    );
    // The drawer's button says when something happened in another view, red when it named us.
    let unread = 0;
    let hot = false;
    for (const view of S.views.values()) {
      if (view.key === S.current) continue;
      unread += view.unread;
      hot = hot || view.mentions > 0;
    }
    const badge = $("rooms-badge");
    badge.textContent = unread ? String(unread) : "";
    badge.hidden = !unread;
    badge.classList.toggle("hot", hot);
  }

  function renderHead() {
    const view = currentView();
    $("room-title").textContent = S.current === null ? "no room — /join one" : viewLabel(S.current);
    const topic = $("room-topic");
    const text = !view ? "" : view.kind === "query" ? "private conversation" : safeText(view.topic);
    topic.textContent = text;
    topic.title = text;
    topic.hidden = !text;
    topic.classList.remove("open");
  }

  function renderTitle() {
    const place = S.current === null ? "" : viewLabel(S.current) + " · ";
    let count = "";
    if (S.unseen) count = S.unseenMentions ? `(${S.unseen}, @${S.unseenMentions}) ` : `(${S.unseen}) `;
    document.title = count + place + APP_TITLE;
  }

  function switchTo(key) {
    S.current = key;
    for (const [k, view] of S.views) view.log.hidden = k !== key;
    const none = document.querySelector('.log[data-room=""]');
    const view = currentView();
    if (none) {
      none.hidden = key !== null;
      if (view) view.log.append(...none.children); // said before there was a view (the greeting): now in the first
    }
    if (view) view.unread = view.mentions = 0;
    if (view && view.kind === "room" && Date.now() - (S.whoAt.get(key) || 0) > AWAY_REFRESH_ON_SWITCH_MS) refreshWho(key);
    renderHead();
    $("input").placeholder = key === null ? "/join ROOM" : `Message ${viewLabel(key)}`;
    renderMembers();
    renderRooms();
    renderTitle();
    closeDrawers();
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  // --- drawers (narrow screens: rooms and members slide in over the conversation) -------------

  const DRAWERS = ["rooms", "members"];

  function toggleDrawer(which) {
    const pane = $(which + "-pane");
    const open = !pane.classList.contains("open");
    closeDrawers();
    if (!open) return;
    pane.classList.add("open");
    $(which + "-toggle").setAttribute("aria-expanded", "true");
    $("scrim").hidden = false;
    pane.focus({ preventScroll: true });
  }

  function closeDrawers() {
    for (const which of DRAWERS) {
      $(which + "-pane").classList.remove("open");
      $(which + "-toggle").setAttribute("aria-expanded", "false");
    }
    $("scrim").hidden = true;
  }

  const drawerOpen = () => DRAWERS.some((which) => $(which + "-pane").classList.contains("open"));

  // --- the connection banner -----------------------------------------------------------------

  function linkState() {
    if (!S.wsOpen) return S.wsEverOpen ? "offline" : "connecting";
    if (!S.name) return "ready";
    if (S.shutdown) return "shutdown";
    if (Date.now() - S.lastHeard > S.heartbeat * MISSED_HEARTBEATS * 1000) return "lost";
    if (S.user === null) return S.welcomed ? "rejoining" : "connecting";
    return "ok";
  }

  const BANNER = {
    connecting: ["connecting", "Connecting…"],
    ready: ["ok", "Connected — pick a name"],
    offline: ["lost", "Connection to the gateway lost — reconnecting…"],
    shutdown: ["lost", "The chat server stopped — waiting for it to come back…"],
    lost: ["lost", "Connection to the chat server lost — reconnecting…"],
    rejoining: ["lost", "Connection lost — signing in again…"],
  };

  function refresh() {
    const state = linkState();
    if (state === S.link) return;
    const before = S.link;
    S.link = state;
    const [cls, text] = state === "ok" ? ["ok", `Connected as ${S.user}`] : BANNER[state];
    const banner = $("status");
    banner.className = "status " + cls;
    banner.textContent = text;
    banner.title = text;
    if (S.welcomed && before !== null && BANNER[before] && BANNER[before][0] === "lost" && state === "ok") {
      systemLine("connection restored");
    } else if (S.welcomed && cls === "lost" && before === "ok") {
      systemLine(text);
    }
  }

  // --- timers --------------------------------------------------------------------------------

  function housekeeping() {
    const now = Date.now();
    const beat = S.heartbeat * 1000;
    if (S.wsOpen && now - S.lastPing >= beat) {
      S.lastPing = now;
      send({ type: "ping" });
    }
    if (S.wsOpen && S.name && S.user === null && now - S.lastHello >= Math.max(1000, beat)) {
      sendHello(); // unanswered (the gateway drops requests while the broker is away): ask again
    }
    if (S.user !== null) {
      for (const [id, sent] of [...S.sentAt]) {
        if (now - sent < ACK_TIMEOUT_MS) break; // oldest first: the rest are younger
        resend(id, now);
      }
    }
    for (const [room, due] of [...S.catchUp]) {
      if (now >= due) {
        S.catchUp.delete(room);
        deliver(room, [], S.seq.last.get(room));
      }
    }
    const shown = currentRoom();
    if (shown !== null && !pageHidden() && now - (S.whoAt.get(shown) || 0) > AWAY_REFRESH_MS) refreshWho(shown);
    for (const [room, asked] of [...S.fills]) {
      if (now - asked > FILL_RETRY_MS) {
        S.fills.delete(room);
        if (S.seq.last.has(room)) deliver(room, [], S.seq.last.get(room));
      }
    }
    refresh();
  }

  // --- typing --------------------------------------------------------------------------------

  function onLine(line) {
    let command;
    try {
      command = parse(line);
    } catch (error) {
      if (!(error instanceof Usage)) throw error;
      return errorLine(safeText(error.message));
    }
    if (command !== null) run(command);
  }

  /** What a typed command does to this page's views (commands.py only says what was typed). */
  function run({ name, arg, text }) {
    const room = currentRoom();
    const view = currentView();
    switch (name) {
      case "say":
      case "me":
        if (view && view.kind === "query") return sendDm(view.name, text, name === "me");
        if (room === null) return errorLine("you are in no room; /join one");
        return say(room, text, name === "me");
      case "msg":
        return sendDm(arg, text, false);
      case "query":
        switchTo(queryView(arg).key);
        if (text) sendDm(arg, text, false);
        return;
      case "join":
        askNotifications();
        return joinRoom(arg);
      case "leave":
        if (!arg && view && view.kind === "query") return closeView(view.key); // /leave in a conversation closes it
        if (!(arg || room)) return errorLine("usage: /leave ROOM");
        return send({ type: "leave", room: arg || room });
      case "who":
        if (!(arg || room)) return errorLine("usage: /who ROOM");
        return send({ type: "who", room: arg || room });
      case "rooms":
        return systemLine(
          "rooms: " + (S.wanted.map((r) => "#" + r + (r === S.current ? " (current)" : "")).join(", ") || "none"),
        );
      case "topic":
        return topicCommand(room, text);
      case "nick":
        return ask({ type: "nick", name: arg }, "/nick");
      case "away":
      case "back": {
        const reason = name === "away" ? text : "";
        if (Array.from(reason).length > MAX_NOTE_CHARS) return errorLine(`a reason is at most ${MAX_NOTE_CHARS} characters`);
        return ask({ type: "away", reason }, "/away");
      }
      case "window": {
        const key = viewOrder()[Number(arg) - 1];
        return key === undefined ? errorLine(`no view ${arg}; there are ${viewOrder().length}`) : switchTo(key);
      }
      case "clear":
        if (view) view.log.replaceChildren();
        else noViewLog().replaceChildren();
        return;
      case "help":
        for (const line of HELP) systemLine(line, "help");
        return;
      case "quit":
        return quit();
    }
  }

  function topicCommand(room, text) {
    if (room === null) return errorLine("topics are a room's; switch to a room first");
    if (!text) {
      const topic = S.views.get(room).topic;
      return systemLine(topic ? `topic of #${room}: ${safeText(topic)}` : `#${room} has no topic; /topic TEXT sets one`);
    }
    const topic = text === "-" ? "" : text; // "/topic -" clears it
    if (Array.from(topic).length > MAX_NOTE_CHARS) return errorLine(`a topic is at most ${MAX_NOTE_CHARS} characters`);
    ask({ type: "topic", room, topic }, "/topic");
  }

  function joinRoom(room) {
    if (!room) return errorLine("usage: /join ROOM");
    if (S.joined.has(room)) return switchTo(room);
    const id = nextId();
    S.joining.set(id, room);
    S.switchOnJoin.add(room);
    send({ type: "join", room, id });
  }

  function quit() {
    send({ type: "bye" });
    try {
      sessionStorage.removeItem("zmq-chat");
    } catch {
      /* ignore */
    }
    location.reload(); // a clean page; this WebSocket's session has ended
  }

  function showLogin(error) {
    S.name = null;
    S.welcomed = false;
    $("app").hidden = true;
    $("login").hidden = false;
    document.body.classList.remove("signed-in");
    $("login-error").textContent = error || "";
    $("login-button").disabled = false;
    $("name").focus();
    refresh();
  }

  // --- the input line: Tab completion, typed-line history ------------------------------------

  /** Names Tab offers: the current room's members; for /msg and /query everyone we know of. */
  function completionNames(before) {
    const first = before.trimStart().split(" ", 1)[0].toLowerCase();
    const view = currentView();
    if (NAME_ARGUMENT.has(first) && before.trimStart().includes(" ")) {
      const all = new Map();
      for (const v of S.views.values()) for (const u of v.kind === "room" ? v.users : [v.name]) all.set(fold(u), u);
      return [...all.values()].sort(byName);
    }
    if (!view) return [];
    return view.kind === "room" ? view.users : [view.name];
  }

  /** Tab: complete the word at the cursor; Tab again: the next candidate (Shift-Tab: the previous).
   *  False when there is nothing to complete, so that Tab in an empty input still moves the focus. */
  function onTab(input, backwards) {
    let tab = S.tab;
    if (!tab || tab.value !== input.value || tab.caret !== input.selectionStart) {
      const before = input.value.slice(0, input.selectionStart);
      const { start, candidates } = complete(before, completionNames(before), S.wanted, myName());
      if (!candidates.length || input.value === "") return input.value !== ""; // empty: Tab moves the focus
      tab = S.tab = { start, candidates, index: -1, after: input.value.slice(input.selectionEnd) };
    }
    const n = tab.candidates.length;
    if (tab.index < 0) tab.index = backwards ? n - 1 : 0; // Shift-Tab first: the last candidate
    else tab.index = (tab.index + (backwards ? n - 1 : 1)) % n;
    let word = tab.candidates[tab.index];
    if (!word.endsWith(" ") && !tab.after.startsWith(" ")) word += " ";
    const head = input.value.slice(0, tab.start) + word;
    input.value = head + tab.after;
    input.setSelectionRange(head.length, head.length);
    tab.value = input.value;
    tab.caret = head.length;
    return true;
  }

  /** ArrowUp/ArrowDown: the lines typed before, as in a terminal; only from an empty or recalled line. */
  function onRecall(input, older) {
    const recalled = S.recall !== null && input.value === S.typed[S.recall];
    if (input.value !== "" && !recalled) return false;
    if (!recalled) S.recall = older ? S.typed.length : null;
    if (S.recall === null) return false;
    S.recall = older ? Math.max(0, S.recall - 1) : S.recall + 1;
    if (S.recall >= S.typed.length) {
      S.recall = null;
      input.value = "";
    } else {
      input.value = S.typed[S.recall];
    }
    const end = input.value.length;
    input.setSelectionRange(end, end);
    return true;
  }

  // --- wiring --------------------------------------------------------------------------------

  function start() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("name").value.trim();
      if (!name) return;
      askNotifications(); // a user's gesture: the one moment a browser lets a page ask
      S.name = name;
      S.retryUntil = 0;
      $("login-error").textContent = "";
      $("login-button").disabled = true;
      sendHello(); // or, if the WebSocket is not open yet, onopen says it
      refresh();
    });
    $("send-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("input");
      const line = input.value;
      input.value = "";
      S.tab = null;
      S.recall = null;
      if (line.trim() && S.typed[S.typed.length - 1] !== line) {
        S.typed.push(line);
        if (S.typed.length > MAX_TYPED) S.typed.shift();
      }
      onLine(line);
    });
    $("input").addEventListener("keydown", (e) => {
      const input = e.target;
      if (e.key === "Tab" && !e.altKey && !e.ctrlKey && !e.metaKey) {
        if (onTab(input, e.shiftKey)) e.preventDefault();
      } else if ((e.key === "ArrowUp" || e.key === "ArrowDown") && !e.shiftKey && !e.altKey) {
        if (onRecall(input, e.key === "ArrowUp")) e.preventDefault();
      }
    });
    $("join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      askNotifications();
      const input = $("join-room");
      joinRoom(input.value.trim().replace(/^#/, "").toLowerCase());
      input.value = "";
    });
    const onViewList = (e) => {
      const button = e.target.closest("button");
      if (!button) return;
      const { leave, room, query } = button.dataset;
      if (leave && isQuery(leave)) closeView(leave);
      else if (leave) send({ type: "leave", room: leave });
      else if (room && S.views.has(room)) switchTo(room);
      else if (query && S.views.has(QUERY + query)) switchTo(QUERY + query);
    };
    $("rooms").addEventListener("click", onViewList);
    $("queries").addEventListener("click", onViewList);
    $("members").addEventListener("click", (e) => {
      const li = e.target.closest("li");
      if (!li || li.dataset.user === myName()) return;
      switchTo(queryView(li.dataset.user).key);
      $("input").focus();
    });
    $("messages").addEventListener("click", (e) => {
      const line = e.target.closest("li.dm");
      if (line && line.dataset.query && S.views.has(QUERY + line.dataset.query)) switchTo(QUERY + line.dataset.query);
    });
    $("room-topic").addEventListener("click", (e) => e.currentTarget.classList.toggle("open"));
    for (const which of DRAWERS) $(which + "-toggle").addEventListener("click", () => toggleDrawer(which));
    // A tap anywhere outside an open drawer (on the scrim, the header) closes it; so does Escape.
    document.addEventListener("click", (e) => {
      if (drawerOpen() && !e.target.closest(".drawer, .toggle")) closeDrawers();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape" || !drawerOpen()) return;
      const which = DRAWERS.find((w) => $(w + "-pane").classList.contains("open"));
      closeDrawers();
      $(which + "-toggle").focus();
    });
    // A drawer left open as the window widens would leave its scrim over the page.
    if (typeof window.matchMedia === "function") {
      window.matchMedia("(max-width: 980px)").addEventListener("change", closeDrawers);
      window.matchMedia("(max-width: 700px)").addEventListener("change", closeDrawers);
    }
    document.addEventListener("visibilitychange", () => {
      if (pageHidden()) return;
      S.unseen = S.unseenMentions = 0;
      renderTitle();
    });
    try {
      const saved = JSON.parse(sessionStorage.getItem("zmq-chat") || "null");
      if (saved && typeof saved.name === "string") {
        // A reload: sign in again as before.  Our previous session may still be ending.
        S.name = saved.name;
        $("name").value = saved.name;
        if (Array.isArray(saved.rooms)) S.wanted = saved.rooms.filter((r) => typeof r === "string");
        S.retryUntil = Date.now() + (S.sessionTimeout + 4) * 1000;
      } else {
        $("name").value = localStorage.getItem("zmq-chat-name") || "";
      }
    } catch {
      /* no storage: pick a name */
    }
    renderRooms();
    connect();
    setInterval(housekeeping, 100);
  }

  // For tests and curious people in the devtools console; nothing here reads it back.
  window.zmqChat = { FeedSequencer, safeText, parse, complete, splitText, mentions, COMMAND_WORDS, HELP, state: S };
  start();
})();
