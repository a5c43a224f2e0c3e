/**
 * Backpressure and memory: a target that stops reading must stall the
 * application writing into the tunnel, with every queue in between bounded,
 * and no byte lost once the target reads again.
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { startTunnel } from "./process.ts";
import { randomBytes } from "./helpers.ts";

const MiB = 1024 * 1024;
/** What the application tries to push: far more than any buffer should hold. */
const OFFERED = 400 * MiB;
/**
 * Bytes that may sit between the writer and the non-reading target: our
 * per-session ceilings (well under 2 MiB per process) plus the kernel's
 * socket buffers on three loopback connections (tcp_wmem/tcp_rmem maxima of
 * 4 MiB and 6 MiB each).
 */
const IN_FLIGHT_LIMIT = 64 * MiB;
/** Resident memory a process may gain while the writer is stalled. */
const RSS_GROWTH_LIMIT = 48 * MiB;
/** No write progress for this long means the writer is stalled. */
const STALL_MS = 1500;

async function residentBytes(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/** Writes all of `bytes`, feeding what was written into `hash`. */
async function writeHashed(
  conn: Deno.Conn,
  bytes: Uint8Array,
  hash: ReturnType<typeof createHash>,
) {
  for (let at = 0; at < bytes.byteLength;) {
    const n = await conn.write(bytes.subarray(at));
    hash.update(bytes.subarray(at, at + n));
    at += n;
  }
  return bytes.byteLength;
}

/**
 * Writes `chunk` repeatedly until one write makes no progress for STALL_MS
 * (the absence of progress cannot be awaited, so this bounded wait is the
 * measurement) or `limit` bytes went through. Resolves the bytes accepted
 * and the write still pending, if any.
 */
async function writeUntilStalled(
  conn: Deno.Conn,
  chunk: Uint8Array,
  limit: number,
  hash: ReturnType<typeof createHash>,
): Promise<{ written: number; pending: Promise<number> | null }> {
  let written = 0;
  while (written < limit) {
    const progress = writeHashed(conn, chunk, hash);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stall = new Promise<"stalled">((
      resolve,
    ) => (timer = setTimeout(() => resolve("stalled"), STALL_MS)));
    const outcome = await Promise.race([progress, stall]);
    clearTimeout(timer);
    if (outcome === "stalled") return { written, pending: progress };
    written += outcome;
  }
  return { written, pending: null };
}

async function readAllHashed(conn: Deno.Conn): Promise<{ total: number; sha: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  let total = 0;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) return { total, sha: hash.digest("hex") };
    hash.update(buffer.subarray(0, n));
    total += n;
  }
}

Deno.test("backpressure: a target that does not read stalls the writer with bounded memory, and nothing is lost", async () => {
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const tunnel = await startTunnel(["--listen", "127.0.0.1:0"], {
    server: ["--forward", `127.0.0.1:${target.addr.port}`],
  });
  const { server, client } = tunnel;
  const pids = { server: server.process.pid, client: client.process.pid };
  try {
    const rssBefore = {
      server: await residentBytes(pids.server),
      client: await residentBytes(pids.client),
    };
    const app = await Deno.connect({ hostname: "127.0.0.1", port: client.port });
    const upstream = await target.accept(); // accepted, but not read from yet
    const chunk = randomBytes(256 * 1024);
    const sent = createHash("sha256");

    const { written, pending } = await writeUntilStalled(app, chunk, OFFERED, sent);
    assert.ok(pending, `the writer never stalled after ${written / MiB} MiB`);
    assert.ok(written < IN_FLIGHT_LIMIT, `${written / MiB} MiB accepted before the stall`);
    for (const side of ["server", "client"] as const) {
      const growth = (await residentBytes(pids[side])) - rssBefore[side];
      assert.ok(growth < RSS_GROWTH_LIMIT, `${side} grew ${growth / MiB} MiB while stalled`);
    }

    // The target reads again: the stalled write completes and more flows.
    const received = readAllHashed(upstream);
    let total = written + await pending;
    for (let i = 0; i < 32; i++) total += await writeHashed(app, chunk, sent);
    await app.closeWrite();
    const result = await received;
    assert.equal(result.total, total);
    assert.equal(result.sha, sent.digest("hex"));
    app.close();
    upstream.close();
  } finally {
    target.close();
    await tunnel.stop();
  }
});
