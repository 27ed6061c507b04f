// The page's typed-line helpers, ports of commands.py (parse, complete, split_text) and display.mentions,
// on cases given as JSON; prints what each answered, as JSON.  tests/test_web_page.py writes the cases,
// runs this, and compares the answers with the Python functions' own.
//
//   node tests/js/typed.test.mjs CASES.json
//
// CASES: {"parse": [LINE], "complete": [[BEFORE_CURSOR, NAMES, ROOMS, ME]], "split": [[TEXT, LIMIT]],
//         "mentions": [[TEXT, ME]]}.  A parse that throws commands.Usage answers {"usage": MESSAGE}.

import { readFileSync } from "node:fs";
import { loadChat } from "./sequencer.test.mjs";

const chat = loadChat();
const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));

function parsed(line) {
  try {
    const command = chat.parse(line);
    return command === null ? null : [command.name, command.arg, command.text];
  } catch (error) {
    if (error.constructor.name !== "Usage") throw error;
    return { usage: error.message };
  }
}

// Array.from: arrays of this realm (chat.js's have the vm context's Array.prototype).
const answers = {
  parse: cases.parse.map(parsed),
  complete: cases.complete.map(([before, names, rooms, me]) => {
    const { start, candidates } = chat.complete(before, names, rooms, me);
    return [start, Array.from(candidates)];
  }),
  split: cases.split.map(([text, limit]) => Array.from(chat.splitText(text, limit))),
  mentions: cases.mentions.map(([text, me]) => chat.mentions(text, me)),
};
process.stdout.write(JSON.stringify(answers));
