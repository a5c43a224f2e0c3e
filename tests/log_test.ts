/**
 * Logger escaping (issue 9, finding 9): a client-chosen string in a log
 * field (a target name, a peer's error text) cannot forge a second line or
 * drive the terminal, in the text format and in the JSON format.
 * @module
 */

import assert from "node:assert/strict";
import { Logger } from "../lib/base/log.ts";

const HOSTILE = [
  "evil\x1b[2J\x1b[31mred",
  "a\nINFO  forged line",
  "tab\there",
  "c1\u0085\u009bx",
  "sep\u2028x",
  "del\x7f",
];
// deno-lint-ignore no-control-regex
const ANY_CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

for (const format of ["text", "json"] as const) {
  Deno.test(`regression: ${format} logs escape control characters in client-chosen fields`, () => {
    const lines: string[] = [];
    const log = new Logger("info", format, (line) => lines.push(line));
    for (const value of HOSTILE) log.warn("open refused by policy", { target: value });
    assert.equal(lines.length, HOSTILE.length);
    for (const [i, line] of lines.entries()) {
      assert.ok(!ANY_CONTROL.test(line), `raw control character in ${JSON.stringify(line)}`);
      if (format === "json") {
        assert.equal(JSON.parse(line).target, HOSTILE[i], "JSON still carries the exact value");
      }
    }
  });
}

Deno.test("log: plain values stay unquoted in the text format", () => {
  const lines: string[] = [];
  new Logger("info", "text", (line) => lines.push(line)).info("x", { peer: "127.0.0.1:5" });
  assert.match(lines[0], / peer=127\.0\.0\.1:5$/);
});
