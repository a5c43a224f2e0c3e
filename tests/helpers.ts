/**
 * Shared test helpers: hex, hashing, random bytes, typed-rejection asserts,
 * and reading a connection to its end or by exact counts.
 * @module
 */

import assert from "node:assert/strict";
import { concat } from "../lib/base/bytes.ts";

/** Decodes lowercase or uppercase hex. */
export function fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
}

/** Encodes bytes as lowercase hex. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** SHA-256 of `bytes` as hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource)));
}

/** `size` random bytes (getRandomValues is capped at 64 KiB per call). */
export function randomBytes(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += 65536) {
    crypto.getRandomValues(out.subarray(at, Math.min(size, at + 65536)));
  }
  return out;
}

/**
 * Asserts that `promise` rejects with an instance of `type` (a typed error,
 * never a timeout or an unrelated failure) whose message matches `message`.
 */
export async function rejectsWith(
  promise: Promise<unknown>,
  type: abstract new (...args: never[]) => Error,
  message: RegExp,
): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof type, String(err));
    assert.match(err.message, message);
    return true;
  });
}

/**
 * Reads `conn` until its end and resolves everything it read. A failing read
 * (a reset, or a close by the test's own bound) ends it too when `resetEnds`;
 * otherwise it rejects.
 */
export async function readToEnd(
  conn: Deno.Conn,
  { resetEnds = false }: { resetEnds?: boolean } = {},
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await (resetEnds ? conn.read(buffer).catch(() => null) : conn.read(buffer));
    if (n === null) return concat(chunks);
    chunks.push(buffer.slice(0, n));
  }
}

/** Reads exactly `count` bytes from `conn`; rejects at an earlier EOF. */
export async function readExactly(conn: Deno.Conn, count: number): Promise<Uint8Array> {
  const out = new Uint8Array(count);
  for (let at = 0; at < count;) {
    const n = await conn.read(out.subarray(at));
    if (n === null) throw new Error(`EOF after ${at} of ${count} bytes`);
    at += n;
  }
  return out;
}
