// zmq-chat in the browser.  Speaks the chat protocol (docs/protocol.md) itself over the
// gateway's WebSocket: every frame sent is one request envelope, every frame received is one
// reply or one feed payload (an envelope or an array of them).  Plain JavaScript, no build step.
//
// Safety rule: text from the network is only ever put in the page with textContent (via el()),
// never as HTML, and control/bidi characters are shown as visible escapes (safeText).
"use strict";

(() => {
  const DEFAULT_ROOM = "general";
  const MAX_HISTORY_LIMIT = 500;
  const MAX_HELD_PER_ROOM = 10000;
  const MISSED_HEARTBEATS = 3; // heartbeats missed before the page says the connection is lost
  const FILL_RETRY_MS = 3000;
  const ACK_TIMEOUT_MS = 3000; // an unacknowledged message is sent again (same id; the broker drops repeats)
  const MAX_UNACKED = 1000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 8000;
  const NOTICE_EVERY_MS = 3000; // "sending too fast" and the like: one line per this long, not one per message
  // Errors that say "not now" rather than "never": the request is kept (or, for hello, asked again).
  const RETRY_CODES = new Set(["rate_limited", "unavailable"]);

  // --- protocol helpers (ports of sequencer.FeedSequencer and safe_text.safe_text) -----------

  /** Did a history reply bring all the broker has after what was asked?  Not when it says more (cut at
   *  its byte budget), nor when its last event is short of the room's head seq (cut at limit); an empty
   *  reply is complete: the broker has nothing after `after`.  (sequencer.history_complete) */
  function historyComplete(events, head, more) {
    return !more && (events.length === 0 || events[events.length - 1].seq >= head);
  }

  /** Puts each room's feed events in seq order, exactly once; says "fetch history after N" on a hole.
   *  The rules are sequencer.FeedSequencer's: both run the vectors in tests/vectors/sequencer.json. */
  class FeedSequencer {
    constructor(unknownBaseline = null) {
      this.unknownBaseline = unknownBaseline;
      this.last = new Map(); // room -> last seq delivered
      this.held = new Map(); // room -> Map(seq -> event)
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
      this.held.delete(room);
    }
    reset() {
      this.last.clear();
      this.held.clear();
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
      if (seq === last + 1 && !this.held.has(room)) {
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
        const skipTo = Math.min(Math.min(...this.held.get(room).keys()), head + 1);
        if (skipTo <= this.last.get(room) + 1) break;
        this.skipTo(room, skipTo);
        let later;
        [later, fetch] = this.settle(room);
        ready = ready.concat(later);
      }
      return [ready, fetch];
    }
    hold(room, event) {
      if (!this.held.has(room)) this.held.set(room, new Map());
      const held = this.held.get(room);
      held.set(event.seq, event);
      if (held.size > MAX_HELD_PER_ROOM) {
        if (this.last.has(room)) this.skipTo(room, Math.min(...held.keys()));
        else held.delete(Math.min(...held.keys())); // no baseline yet: fetched again once there is one
      }
    }
    skipTo(room, first) {
      const last = this.last.get(room);
      this.lost += Math.max(0, first - last - 1);
      this.last.set(room, Math.max(last, first - 1));
    }
    settle(room) {
      const held = this.held.get(room);
      if (!held || held.size === 0) return [[], null];
      let next = this.last.get(room) + 1;
      const ready = [];
      while (held.has(next)) {
        ready.push(held.get(next));
        held.delete(next);
        next += 1;
      }
      this.last.set(room, next - 1);
      for (const seq of [...held.keys()]) if (seq < next) held.delete(seq); // duplicates of what was delivered
      if (held.size > 0) return [ready, this.last.get(room)];
      this.held.delete(room);
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
    name: null, // the name we want; null until picked
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
    rooms: new Map(), // room -> {log, users, unread}
    joined: new Set(), // rooms the broker confirmed for this session
    current: null,
    switchOnJoin: new Set(),
    seq: new FeedSequencer(),
    fills: new Map(), // room -> when history was asked to fill a gap
    catchUp: new Map(), // room -> when to check for events missed right after joining
    unacked: new Map(), // id -> request
    sentAt: new Map(), // id -> when last sent, oldest first
    joining: new Map(), // join request id -> room, until joined or refused
    pending: new Map(), // id -> the greyed line of a message not yet on the feed
    seen: new Map(), // room -> Map(seq -> ts) of the last events shown, to recognise them after a restart
    noticed: new Map(), // notice kind -> when it was last shown
  };

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

  function resend(id, now) {
    S.sentAt.delete(id);
    S.sentAt.set(id, now); // to the back: sentAt stays oldest first
    send(S.unacked.get(id));
  }

  function say(room, text, me) {
    const id = request({ type: "msg", room, text }, me);
    if (id === null) return;
    const line = msgLine({ user: S.user || S.name, text, me }, "pending");
    S.pending.set(id, line);
    append(room, line);
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
      case "ack": {
        const req = S.unacked.get(env.id);
        S.unacked.delete(env.id);
        S.sentAt.delete(env.id);
        if (req && req.type === "dm") dmLine("out", env.to || req.to, req);
        const line = S.pending.get(env.id);
        if (line) line.classList.replace("pending", "sent"); // its feed event replaces it
        return;
      }
      case "error":
        return onError(env);
      case "history":
        return onHistory(env);
      case "pong":
        sawEpoch(env.epoch);
        if (env.session === false && S.user !== null) loseSession(); // the broker timed us out
        return;
      case "dm":
        return dmLine("in", env.user, env);
      case "who": {
        const users = Array.isArray(env.users) ? env.users : [];
        const r = S.rooms.get(env.room);
        if (r && S.joined.has(env.room)) setUsers(env.room, users);
        return systemLine(`#${env.room}: ${users.length ? users.join(", ") : "nobody"} (${users.length})`, "who");
      }
      case "heartbeat":
        return sawEpoch(env.epoch);
      case "shutdown":
        S.shutdown = true;
        return;
      case "msg":
      case "join":
      case "leave":
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
    S.shutdown = false;
    const resumed = S.welcomed;
    S.welcomed = true;
    try {
      sessionStorage.setItem("zmq-chat", JSON.stringify({ name: S.user, rooms: S.wanted }));
    } catch {
      /* storage may be disabled */
    }
    $("me").textContent = "signed in as " + S.user;
    $("login").hidden = true;
    $("app").hidden = false;
    if (resumed) {
      const now = Date.now();
      for (const id of [...S.sentAt.keys()]) resend(id, now); // what the lost session never acknowledged
    } else {
      $("input").focus();
    }
  }

  function onJoined(env) {
    const room = env.room;
    if (typeof room !== "string" || typeof env.seq !== "number") return;
    S.joined.add(room);
    if (!S.wanted.includes(room)) S.wanted.push(room);
    roomView(room);
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
    deliver(room, ...S.seq.expect(room, env.seq));
    // Our subscription and this join raced; one catch-up fetch closes a hole no later event would show.
    S.catchUp.set(room, Date.now() + S.heartbeat * 1000);
    if (S.switchOnJoin.has(room) || S.current === null) {
      S.switchOnJoin.delete(room);
      switchTo(room);
    }
    renderRooms();
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
    const r = S.rooms.get(room);
    if (r) {
      r.log.remove();
      S.rooms.delete(room);
    }
    if (S.current === room) switchTo(S.wanted.includes(DEFAULT_ROOM) ? DEFAULT_ROOM : S.wanted[0] || null);
    renderRooms();
    systemLine(`you left #${room}`);
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
    errorLine(`${safeText(env.detail || "")} (${code})`);
  }

  function onFeed(event) {
    const room = event.room;
    if (typeof room !== "string" || typeof event.seq !== "number") return;
    if (event.type === "head") {
      // Not an event: the room's newest seq, told with the heartbeat.  Behind it, we missed events: fetch them.
      if (S.seq.last.has(room)) deliver(room, ...S.seq.expect(room, event.seq));
      return;
    }
    if (event.type !== "msg" && event.type !== "join" && event.type !== "leave") return; // newer than this page
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
    for (const room of S.rooms.keys()) append(room, el("li", "divider", "the chat server restarted"));
    if (S.user !== null) loseSession();
  }

  function loseSession() {
    S.user = null;
    S.joined.clear();
    S.catchUp.clear();
    S.retryUntil = Date.now() + (S.sessionTimeout + 3 * S.heartbeat + 1) * 1000;
    sendHello();
  }

  // --- showing events ------------------------------------------------------------------------

  function msgLine(event, extra) {
    const cls = "msg" + (event.me ? " me" : "") + (extra ? " " + extra : "");
    const user = el("span", userClass(event.user), event.user);
    const text = el("span", "text", safeText(event.text));
    return event.me
      ? el("li", cls, el("time", null, clock(event.ts)), "* ", user, " ", text)
      : el("li", cls, el("time", null, clock(event.ts)), user, ": ", text);
  }

  function show(event) {
    const room = event.room;
    remember(event);
    const mine = event.user === (S.user || S.name); // user is null while reconnecting; our events still are ours
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
      append(room, msgLine(event), !mine);
    } else if (event.type === "join" || event.type === "leave") {
      const r = S.rooms.get(room);
      if (r) {
        const others = r.users.filter((u) => u.toLowerCase() !== String(event.user).toLowerCase());
        setUsers(room, event.type === "join" ? others.concat([event.user]) : others);
      }
      if (mine || event.resumed) return; // our own join/leave is said by the room list; a resumed join is no news
      const place = room === DEFAULT_ROOM ? "chat" : "room";
      const text =
        event.type === "join"
          ? `${event.user} joined the ${place}`
          : `${event.user} left the ${place}${event.reason === "timeout" ? " (timed out)" : ""}`;
      append(room, el("li", "notice " + event.type, el("time", null, clock(event.ts)), text));
    }
  }

  function dmLine(direction, other, env) {
    const text = el("span", "text", safeText(env.text));
    const who = direction === "in" ? `${other} → you: ` : `you → ${other}: `;
    const line = env.me
      ? el("li", direction, who, "* ", direction === "in" ? other : S.user, " ", text)
      : el("li", direction, who, text);
    $("dms").append(line);
    line.scrollIntoView({ block: "nearest" });
  }

  function roomView(room) {
    let r = S.rooms.get(room);
    if (!r) {
      const log = el("ol", "log");
      log.dataset.room = room;
      log.hidden = true;
      $("messages").append(log);
      r = { log, users: [], unread: 0 };
      S.rooms.set(room, r);
    }
    return r;
  }

  function append(room, line, counts) {
    const r = room === null ? null : S.rooms.get(room);
    const log = r ? r.log : noRoomLog();
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    log.append(line);
    if (r && room !== S.current && counts) {
      r.unread += 1;
      renderRooms();
    }
    if (atBottom && !log.hidden) box.scrollTop = box.scrollHeight;
  }

  function noRoomLog() {
    let log = document.querySelector('.log[data-room=""]');
    if (!log) {
      log = el("ol", "log");
      log.dataset.room = "";
      log.hidden = S.current !== null;
      $("messages").append(log);
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
    const r = roomView(room);
    r.users = [...new Set(users)].sort(byName);
    if (room === S.current) renderMembers();
  }

  function renderMembers() {
    const r = S.current === null ? null : S.rooms.get(S.current);
    const users = r ? r.users : [];
    const list = $("members");
    list.replaceChildren(
      ...users.map((u) => {
        const li = el("li", u === S.user ? "self " + userClass(u) : userClass(u), u);
        li.dataset.user = u;
        if (u !== S.user) li.title = "send a private message";
        return li;
      }),
    );
    $("member-count").textContent = users.length ? `(${users.length})` : "";
  }

  function renderRooms() {
    const list = $("rooms");
    list.replaceChildren(
      ...S.wanted.map((room) => {
        const r = S.rooms.get(room);
        const unread = r && r.unread ? el("span", "unread", String(r.unread)) : null;
        const name = el("button", "room", "#" + room, unread);
        name.type = "button";
        name.dataset.room = room;
        const leave = el("button", "leave", "×");
        leave.type = "button";
        leave.dataset.leave = room;
        leave.title = `leave #${room}`;
        const li = el("li", room === S.current ? "current" : "", name, leave);
        if (!S.joined.has(room)) li.classList.add("joining");
        return li;
      }),
    );
  }

  function switchTo(room) {
    S.current = room;
    for (const [name, r] of S.rooms) r.log.hidden = name !== room;
    const none = document.querySelector('.log[data-room=""]');
    if (none) none.hidden = room !== null;
    const r = room === null ? null : S.rooms.get(room);
    if (r) r.unread = 0;
    $("room-title").textContent = room === null ? "no room — /join one" : "#" + room;
    $("input").placeholder = room === null ? "/join ROOM" : `Message #${room} — /help lists the commands`;
    renderMembers();
    renderRooms();
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

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
    for (const [room, asked] of [...S.fills]) {
      if (now - asked > FILL_RETRY_MS) {
        S.fills.delete(room);
        if (S.seq.last.has(room)) deliver(room, [], S.seq.last.get(room));
      }
    }
    refresh();
  }

  // --- typing --------------------------------------------------------------------------------

  const HELP = [
    "TEXT — say TEXT in the current room",
    "/msg NAME TEXT — private message to NAME (nobody else sees it)",
    "/me ACTION — say an action: * alice waves",
    "/join ROOM — join ROOM and make it current (or switch to it)",
    "/leave [ROOM] — leave ROOM (default: the current room)",
    "/who [ROOM] — who is in ROOM",
    "/rooms — the rooms you are in",
    "/quit — leave the chat",
    "//TEXT — say TEXT starting with a slash",
  ];

  function onLine(line) {
    if (!line.trim()) return;
    if (line.startsWith("/") && !line.startsWith("//")) return onCommand(line);
    const text = line.startsWith("//") ? line.slice(1) : line;
    if (S.current === null) errorLine("you are in no room; /join one");
    else say(S.current, text, false);
  }

  function onCommand(line) {
    const space = line.indexOf(" ");
    const command = (space < 0 ? line : line.slice(0, space)).toLowerCase();
    const rest = space < 0 ? "" : line.slice(space + 1).trim();
    const roomArg = rest.replace(/^#/, "").toLowerCase();
    switch (command) {
      case "/help":
        for (const h of HELP) systemLine(h, "help");
        return;
      case "/msg": {
        const cut = rest.indexOf(" ");
        const name = cut < 0 ? rest : rest.slice(0, cut);
        const text = cut < 0 ? "" : rest.slice(cut + 1);
        if (!name || !text.trim()) errorLine("usage: /msg NAME TEXT");
        else request({ type: "dm", to: name, text }, false);
        return;
      }
      case "/me":
        if (!rest) errorLine("usage: /me ACTION");
        else if (S.current === null) errorLine("you are in no room; /join one");
        else say(S.current, rest, true);
        return;
      case "/join":
        return joinRoom(roomArg);
      case "/leave": {
        const room = roomArg || S.current;
        if (!room) errorLine("usage: /leave ROOM");
        else send({ type: "leave", room });
        return;
      }
      case "/who": {
        const room = roomArg || S.current;
        if (!room) errorLine("usage: /who ROOM");
        else send({ type: "who", room });
        return;
      }
      case "/rooms":
        systemLine("rooms: " + (S.wanted.map((r) => "#" + r + (r === S.current ? " (current)" : "")).join(", ") || "none"));
        return;
      case "/quit":
      case "/exit":
        return quit();
      default:
        errorLine(`unknown command ${safeText(command)}; /help lists the commands`);
    }
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
    $("login-error").textContent = error || "";
    $("login-button").disabled = false;
    $("name").focus();
    refresh();
  }

  // --- wiring --------------------------------------------------------------------------------

  function start() {
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("name").value.trim();
      if (!name) return;
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
      onLine(line);
    });
    $("join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("join-room");
      joinRoom(input.value.trim().replace(/^#/, "").toLowerCase());
      input.value = "";
    });
    $("rooms").addEventListener("click", (e) => {
      const button = e.target.closest("button");
      if (!button) return;
      if (button.dataset.leave) send({ type: "leave", room: button.dataset.leave });
      else if (button.dataset.room && S.rooms.has(button.dataset.room)) switchTo(button.dataset.room);
    });
    $("members").addEventListener("click", (e) => {
      const li = e.target.closest("li");
      if (!li || li.dataset.user === S.user) return;
      const input = $("input");
      input.value = `/msg ${li.dataset.user} `;
      input.focus();
    });
    try {
      const saved = JSON.parse(sessionStorage.getItem("zmq-chat") || "null");
      if (saved && typeof saved.name === "string") {
        // A reload: sign in again as before.  Our previous session may still be ending.
        S.name = saved.name;
        $("name").value = saved.name;
        if (Array.isArray(saved.rooms)) S.wanted = saved.rooms.filter((r) => typeof r === "string");
        S.retryUntil = Date.now() + (S.sessionTimeout + 4) * 1000;
      }
    } catch {
      /* no storage: pick a name */
    }
    renderRooms();
    connect();
    setInterval(housekeeping, 100);
  }

  // For tests and curious people in the devtools console; nothing here reads it back.
  window.zmqChat = { FeedSequencer, safeText, state: S };
  start();
})();
