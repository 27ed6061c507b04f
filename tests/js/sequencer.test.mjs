// Runs the shared feed sequencer vectors (tests/vectors/sequencer.json) on static/chat.js's FeedSequencer,
// the port of sequencer.FeedSequencer that tests/sansio/test_sequencer_vectors.py runs them on.
//
//   node tests/js/sequencer.test.mjs [VECTORS]
//
// chat.js is the page's script, a browser IIFE: it is loaded in a vm context whose window, document,
// WebSocket and timers are inert stand-ins (it starts the page when loaded; nothing here runs it), and
// only what it leaves in window.zmqChat is used.  Prints one line per case that fails (its name, the
// step, what was expected and what came out) and a summary; exits 1 on any mismatch.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import vm from "node:vm";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));

/** Anything at all: every property is another one, calling or constructing gives another one. */
function inert() {
  return new Proxy(function () {}, {
    get(target, key) {
      if (key === Symbol.toPrimitive) return () => "";
      if (key === Symbol.iterator) return function* () {};
      if (key === "then") return undefined; // not a promise
      return inert();
    },
    set: () => true,
    apply: () => inert(),
    construct: () => inert(),
  });
}

/** chat.js's window.zmqChat, loaded without a page. */
export function loadChat(path = here("../../static/chat.js")) {
  const window = {};
  const context = vm.createContext({
    window,
    document: inert(),
    location: { protocol: "http:", host: "localhost", reload() {} },
    sessionStorage: { getItem: () => null, setItem() {}, removeItem() {} },
    WebSocket: class {
      send() {}
      close() {}
    },
    setInterval: () => 0,
    setTimeout: () => 0,
    clearInterval() {},
    clearTimeout() {},
    console,
  });
  vm.runInContext(readFileSync(path, "utf8"), context, { filename: path });
  if (!window.zmqChat || typeof window.zmqChat.FeedSequencer !== "function") {
    throw new Error(`${path} left no window.zmqChat.FeedSequencer`);
  }
  return window.zmqChat;
}

/** One case's steps on a new sequencer: [{delivered, fetch} per step, {lost, filled}]. */
export function runCase(FeedSequencer, vector) {
  const rooms = new Set(vector.steps.filter((step) => "room" in step).map((step) => step.room));
  const multi = rooms.size > 1;
  const s = new FeedSequencer(vector.unknown_baseline ?? null);
  const event = (room, seq, prev) => {
    if (Array.isArray(seq)) [seq, prev] = seq; // a fill's [seq, prev]
    const e = { type: "msg", room, user: "u", text: "t", id: "i", seq };
    if (prev !== undefined) e.prev = prev;
    return e;
  };
  const outs = vector.steps.map((step) => {
    let ready = [];
    let fetch = null;
    switch (step.op) {
      case "push":
        [ready, fetch] = s.push(event(step.room, step.seq, step.prev));
        break;
      case "expect":
        [ready, fetch] = s.expect(step.room, step.head);
        break;
      case "fill":
        [ready, fetch] = s.fill(
          step.room,
          step.events.map((seq) => event(step.room, seq)),
          step.head,
          step.more,
        );
        break;
      case "reset":
        s.reset();
        break;
      case "forget":
        s.forget(step.room);
        break;
      default:
        throw new Error(`unknown op ${JSON.stringify(step.op)}`);
    }
    // Array.from: an array of this realm (chat.js's arrays have the vm context's Array.prototype).
    return { delivered: Array.from(ready, (e) => (multi ? [e.room, e.seq] : e.seq)), fetch };
  });
  return [outs, { lost: s.lost, filled: s.filled }];
}

function main() {
  const path = process.argv[2] || here("../vectors/sequencer.json");
  const { cases } = JSON.parse(readFileSync(path, "utf8"));
  const { FeedSequencer } = loadChat();
  const failures = [];
  for (const vector of cases) {
    let outs, counters;
    try {
      [outs, counters] = runCase(FeedSequencer, vector);
    } catch (error) {
      failures.push(`${vector.name}: threw ${error.stack || error}`);
      continue;
    }
    const step = vector.steps.findIndex((s, i) => !isDeepStrictEqual(outs[i], s.out));
    if (step >= 0) {
      const { out, ...op } = vector.steps[step];
      failures.push(
        `${vector.name}: step ${step} ${JSON.stringify(op)}: expected ${JSON.stringify(out)}, got ${JSON.stringify(outs[step])}`,
      );
    } else if (!isDeepStrictEqual(counters, { lost: vector.lost, filled: vector.filled })) {
      const expected = { lost: vector.lost, filled: vector.filled };
      failures.push(`${vector.name}: at the end expected ${JSON.stringify(expected)}, got ${JSON.stringify(counters)}`);
    }
  }
  for (const failure of failures) console.log(`FAIL ${failure}`);
  console.log(`${cases.length - failures.length} of ${cases.length} sequencer cases pass on static/chat.js`);
  process.exitCode = failures.length || cases.length === 0 ? 1 : 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
