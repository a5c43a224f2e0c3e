/**
 * A refused target is reported as the server's ERROR, never as the broken
 * pipe that follows it: with data already queued (ssh, rsync and pipes send
 * at once), the client's write can fail after the server answered ERROR 2
 * and closed. Real processes over 127.0.0.1: pipe mode, one-shot, the port
 * forward and the SOCKS5 proxy, each many times (the failure was a race).
 * @module
 */

import assert from "node:assert/strict";
import {
  freePort,
  runCipherlink,
  startServerProcess,
  startTunnel,
  waitForLineWithin,
} from "./process.ts";

/** Runs of each case: the old code failed about a quarter of them. */
const RUNS = 16;
const QUEUED = new Uint8Array(200_000);

/** Runs `task` for 0..count-1, `width` at a time. */
async function inBatches(count: number, width: number, task: (i: number) => Promise<void>) {
  for (let start = 0; start < count; start += width) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + width); i++) batch.push(task(i));
    await Promise.all(batch);
  }
}

Deno.test("refusal: pipe mode and one-shot with data queued report the server's ERROR 2, not a broken pipe", async () => {
  // No --allow: every OPEN 0x01 is refused with ERROR 2.
  const served = await startServerProcess();
  try {
    const common = served.clientArgs("--connect", `127.0.0.1:${freePort()}`);
    await inBatches(RUNS, 4, async (i) => {
      const result = i % 4 === 3
        ? await runCipherlink([...common, "x".repeat(100_000)])
        : await runCipherlink(common, { stdin: QUEUED });
      assert.equal(result.code, 1, result.stderr);
      assert.match(
        result.stderr,
        /^cipherlink: error: server error 2 \(refused by the server's policy\): target .* is not allowed\n$/,
      );
    });
  } finally {
    await served.stop();
  }
});

Deno.test("refusal: the port forward logs the server's ERROR 2 for sessions whose data was already flowing, and no 'session open'", async () => {
  const tunnel = await startTunnel([
    "--connect",
    `127.0.0.1:${freePort()}`,
    "--listen",
    "127.0.0.1:0",
  ]);
  const forwarder = tunnel.client;
  try {
    await inBatches(RUNS, 4, async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: forwarder.port });
      // The write may fail once the forwarder closes: what matters is what it reports.
      const writing = conn.write(QUEUED).catch(() => 0);
      const buffer = new Uint8Array(1024);
      try {
        while ((await conn.read(buffer)) !== null) {
          // Nothing is expected; read to the end.
        }
      } catch {
        // A reset is an end too.
      }
      await writing;
      conn.close();
    });
    const ended = () => forwarder.lines.filter((l) => /session end/.test(l));
    await waitForLineWithin(forwarder, new RegExp(`session end local=${RUNS} `), 10_000);
    for (let local = 1; local <= RUNS; local++) {
      const line = await waitForLineWithin(forwarder, new RegExp(`session end local=${local} `));
      assert.match(line, /error="?server error 2 \(refused by the server's policy\)/, line);
    }
    assert.equal(ended().length, RUNS);
    assert.deepEqual(forwarder.lines.filter((l) => /session open/.test(l)), []);
  } finally {
    await tunnel.stop();
  }
});

Deno.test("refusal: a SOCKS5 request with data right behind it gets reply 0x02 (not allowed) and the log says ERROR 2", async () => {
  const tunnel = await startTunnel(["--socks", "127.0.0.1:0"]);
  const socks = tunnel.client;
  try {
    const port = freePort();
    await inBatches(RUNS / 2, 4, async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: socks.port });
      // Greeting (no auth), CONNECT 127.0.0.1:port, then data at once.
      const request = Uint8Array.of(5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff);
      const writing = (async () => {
        await conn.write(request);
        await conn.write(QUEUED);
      })().catch(() => {});
      const reply = new Uint8Array(12);
      let got = 0;
      while (got < reply.length) {
        const n = await conn.read(reply.subarray(got));
        if (n === null) break;
        got += n;
      }
      await writing;
      conn.close();
      assert.deepEqual([...reply.subarray(0, 2)], [5, 0], "method: no authentication");
      assert.deepEqual([...reply.subarray(2, 4)], [5, 2], "reply 0x02: not allowed by the ruleset");
    });
    const line = await waitForLineWithin(socks, /tunnel open failed|session end/);
    assert.match(line, /server error 2/);
    assert.ok(!socks.lines.some((l) => /Broken pipe|session open/.test(l)), socks.lines.join("\n"));
  } finally {
    await tunnel.stop();
  }
});
