/**
 * Port forwarding with real processes on 127.0.0.1: full-duplex bulk
 * transfers, half-closes in both directions, many concurrent connections,
 * rekeying, keepalive, idle timeout, drain on SIGTERM, backpressure, limits
 * and upstream refusal.
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { startTunnel, type Tunnel, within } from "./process.ts";
import { randomBytes, sha256Hex } from "./helpers.ts";
import { concat } from "../lib/base/bytes.ts";

const MiB = 1024 * 1024;
/** No single read in these tests may wait longer: a regression fails instead of hanging. */
const READ_DEADLINE_MS = 30_000;

/** `conn.read(buffer)` (a reset reads as EOF) under READ_DEADLINE_MS. */
function readSome(conn: Deno.Conn, buffer: Uint8Array, what: string): Promise<number | null> {
  return within(conn.read(buffer).catch(() => null), READ_DEADLINE_MS, what);
}

/** A deterministic stream of `total` bytes: a random MiB stamped with its index. */
function* pattern(total: number, seed = randomBytes(MiB)): Generator<Uint8Array> {
  for (let at = 0, index = 0; at < total; at += MiB, index++) {
    const chunk = seed.slice(0, Math.min(MiB, total - at));
    new DataView(chunk.buffer).setUint32(0, index);
    yield chunk;
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

/** Reads to EOF; resolves the byte count and SHA-256. */
async function drainAndHash(conn: Deno.Conn): Promise<{ bytes: number; sha: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  let bytes = 0;
  for (;;) {
    const n = await readSome(conn, buffer, "the forwarded stream");
    if (n === null) return { bytes, sha: hash.digest("hex") };
    hash.update(buffer.subarray(0, n));
    bytes += n;
  }
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await readSome(conn, buffer, "the forwarded stream");
    if (n === null) break;
    parts.push(buffer.slice(0, n));
  }
  return concat(parts);
}

function hashOf(chunks: Iterable<Uint8Array>): string {
  const hash = createHash("sha256");
  for (const c of chunks) hash.update(c);
  return hash.digest("hex");
}

/** A forward tunnel: server (with `serverArgs`) and a --listen client. */
function tunnel(serverArgs: string[], clientArgs: string[] = []): Promise<Tunnel> {
  return startTunnel(["--listen", "127.0.0.1:0", ...clientArgs], { server: serverArgs });
}

const connectTo = (port: number) => Deno.connect({ hostname: "127.0.0.1", port });

Deno.test("forward: 200 MiB each way at once arrives intact (SHA-256)", async () => {
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const t = await tunnel(["--forward", `127.0.0.1:${target.addr.port}`]);
  try {
    const size = 200 * MiB;
    const upSeed = randomBytes(MiB);
    const downSeed = randomBytes(MiB);
    const targetSide = (async () => {
      const conn = await target.accept();
      const [received] = await Promise.all([
        drainAndHash(conn),
        (async () => {
          for (const chunk of pattern(size, downSeed)) await writeAll(conn, chunk);
          await conn.closeWrite();
        })(),
      ]);
      conn.close();
      return received;
    })();
    const app = await connectTo(t.port);
    const [appReceived] = await Promise.all([
      drainAndHash(app),
      (async () => {
        for (const chunk of pattern(size, upSeed)) await writeAll(app, chunk);
        await app.closeWrite();
      })(),
    ]);
    app.close();
    const targetReceived = await targetSide;
    assert.equal(targetReceived.bytes, size);
    assert.equal(targetReceived.sha, hashOf(pattern(size, upSeed)));
    assert.equal(appReceived.bytes, size);
    assert.equal(appReceived.sha, hashOf(pattern(size, downSeed)));
  } finally {
    target.close();
    await t.stop();
  }
});

Deno.test("forward: half-close in each direction is carried through", async () => {
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const t = await tunnel(["--forward", `127.0.0.1:${target.addr.port}`]);
  const encoder = new TextEncoder();
  try {
    // 1. The application sends, shuts down its write side, then reads the whole reply.
    const request = randomBytes(300_000);
    const replyFromTarget = (async () => {
      const conn = await target.accept();
      const got = await readAll(conn); // ends only when the app's FIN came through
      await writeAll(conn, encoder.encode(`got ${got.byteLength} bytes ${await sha256Hex(got)}`));
      conn.close();
    })();
    const app = await connectTo(t.port);
    await writeAll(app, request);
    await app.closeWrite();
    const reply = new TextDecoder().decode(await readAll(app));
    app.close();
    await replyFromTarget;
    assert.equal(reply, `got ${request.byteLength} bytes ${await sha256Hex(request)}`);

    // 2. The target finishes first; the application still sends after seeing EOF.
    const late = randomBytes(100_000);
    const targetSide = (async () => {
      const conn = await target.accept();
      await writeAll(conn, encoder.encode("banner"));
      await conn.closeWrite();
      const got = await readAll(conn);
      conn.close();
      return got;
    })();
    const app2 = await connectTo(t.port);
    assert.equal(new TextDecoder().decode(await readAll(app2)), "banner");
    await writeAll(app2, late);
    await app2.closeWrite();
    const got = await targetSide;
    app2.close();
    assert.equal(await sha256Hex(got), await sha256Hex(late));
  } finally {
    target.close();
    await t.stop();
  }
});

Deno.test("forward: 200 concurrent connections each echo their own payload", async () => {
  const t = await tunnel(["--max-conns", "250"], ["--max-conns", "250"]);
  try {
    const results = await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const payload = randomBytes(1000 + i * 211);
        const conn = await connectTo(t.port);
        const [echoed] = await Promise.all([
          readAll(conn),
          writeAll(conn, payload).then(() => conn.closeWrite()),
        ]);
        conn.close();
        return (await sha256Hex(echoed)) === (await sha256Hex(payload));
      }),
    );
    assert.equal(results.filter(Boolean).length, 200);
  } finally {
    await t.stop();
  }
});

Deno.test("forward: rekeying every 4 KiB over 20 MiB keeps the stream intact", async () => {
  const t = await tunnel(["--rekey-bytes", "4096", "--log-level", "info"], [
    "--rekey-bytes",
    "4096",
  ]);
  try {
    const payload = randomBytes(20 * MiB);
    const conn = await connectTo(t.port);
    const [echoed] = await Promise.all([
      drainAndHash(conn),
      writeAll(conn, payload).then(() => conn.closeWrite()),
    ]);
    conn.close();
    assert.equal(echoed.bytes, payload.byteLength);
    assert.equal(echoed.sha, await sha256Hex(payload));
    const end = await t.server.waitForLine(/session end/);
    const sent = Number(/rekeys_sent=(\d+)/.exec(end)![1]);
    const received = Number(/rekeys_received=(\d+)/.exec(end)![1]);
    // A key may protect at most 4 KiB, but a frame goes out whole: so every
    // frame after the first of a key starts a new key. At most 64 KiB frames
    // means at least one REKEY per 64 KiB each way (the default: none at all).
    const atLeast = (20 * MiB) / 65536 - 1;
    assert.ok(sent >= atLeast, `server sent ${sent} REKEYs`);
    assert.ok(received >= atLeast, `server received ${received} REKEYs`);
  } finally {
    await t.stop();
  }
});

Deno.test("forward: keepalive drops a client that was stopped with SIGSTOP", async () => {
  const t = await tunnel(["--keepalive", "0.2"], ["--keepalive", "0.2"]);
  try {
    const conn = await connectTo(t.port);
    await writeAll(conn, Uint8Array.of(42));
    const one = new Uint8Array(1);
    assert.equal(await readSome(conn, one, "the echoed byte"), 1); // the session is up and echoed
    t.client.process.kill("SIGSTOP");
    try {
      const line = await t.server.waitForLine(/session end.*keepalive/);
      assert.match(line, /answered none of 3 PINGs/);
    } finally {
      t.client.process.kill("SIGCONT");
    }
    conn.close();
  } finally {
    await t.stop();
  }
});

Deno.test("forward: --idle-timeout closes a silent session and the application sees EOF", async () => {
  const t = await tunnel(["--idle-timeout", "0.3"]);
  try {
    const conn = await connectTo(t.port);
    await writeAll(conn, Uint8Array.of(1, 2, 3));
    const buffer = new Uint8Array(16);
    assert.equal(await readSome(conn, buffer, "the echoed bytes"), 3);
    // Nothing more is sent; the server ends the session and the local connection closes.
    const next = await readSome(conn, buffer, "EOF after the idle timeout");
    assert.equal(next, null);
    conn.close();
    assert.match(await t.server.waitForLine(/session end/), /idle timeout/);
  } finally {
    await t.stop();
  }
});

/**
 * Sends SIGTERM to one end while a transfer is in flight, then finishes the
 * transfer: with --drain-timeout 20 not a byte may be lost, and the process
 * exits 0 afterwards.
 */
async function drainOnSigterm(side: "server" | "client"): Promise<void> {
  const drainArgs = ["--drain-timeout", "20"];
  const t = side === "server" ? await tunnel(drainArgs) : await tunnel([], drainArgs);
  const daemon = t[side];
  try {
    const payload = randomBytes(16 * MiB);
    const conn = await connectTo(t.port);
    const first = new Uint8Array(MiB);
    await writeAll(conn, payload.subarray(0, MiB));
    // Once the first echoed bytes are back, the session is surely open.
    const firstCount = (await readSome(conn, first, "the first echoed bytes"))!;
    daemon.process.kill("SIGTERM");
    await daemon.waitForLine(/shutting down/);
    const rest = drainAndHash(conn);
    await writeAll(conn, payload.subarray(MiB));
    await conn.closeWrite();
    const result = await rest;
    conn.close();
    assert.equal(firstCount + result.bytes, payload.byteLength);
    assert.deepEqual(first.subarray(0, firstCount), payload.subarray(0, firstCount));
    assert.equal(
      result.sha,
      createHash("sha256").update(payload.subarray(firstCount)).digest("hex"),
    );
    assert.equal(await daemon.stop(), 0);
  } finally {
    await t.stop();
  }
}

Deno.test("forward: SIGTERM drains a transfer in flight without losing a byte; exit 0", () =>
  drainOnSigterm("server"));

Deno.test("forward: the client's --max-conns closes excess local connections at once and logs them", async () => {
  const t = await tunnel([], ["--max-conns", "2"]);
  try {
    const held = [await connectTo(t.port), await connectTo(t.port)];
    // Both sessions are open once each has echoed a byte.
    for (const conn of held) {
      await writeAll(conn, Uint8Array.of(7));
      assert.equal(await readSome(conn, new Uint8Array(1), "the echoed byte"), 1);
    }
    const excess = await connectTo(t.port);
    assert.equal(await readSome(excess, new Uint8Array(1), "EOF of the excess connection"), null);
    excess.close();
    assert.match(
      await t.client.waitForLine(/local connection refused/),
      /max_conns=2 refused_total=1/,
    );
    for (const conn of held) conn.close();
  } finally {
    await t.stop();
  }
});

Deno.test("forward: an upstream refusal (ERROR 3) closes the local connection and is logged", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = closed.addr.port;
  closed.close();
  const t = await tunnel(["--forward", `127.0.0.1:${deadPort}`]);
  try {
    const conn = await connectTo(t.port);
    await writeAll(conn, new TextEncoder().encode("anyone there?"));
    assert.equal(await readSome(conn, new Uint8Array(16), "EOF after the refusal"), null);
    conn.close();
    assert.match(
      await t.server.waitForLine(/target unreachable/),
      new RegExp(`127\\.0\\.0\\.1:${deadPort}`),
    );
    assert.match(
      await t.client.waitForLine(/session end/),
      /server error 3 \(target unreachable\)/,
    );
  } finally {
    await t.stop();
  }
});

Deno.test("forward: SIGTERM to the client drains its sessions too, then it exits 0", () =>
  drainOnSigterm("client"));
