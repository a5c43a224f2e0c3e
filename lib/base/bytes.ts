/**
 * Byte-array helpers used across the layers, the tests and the scripts:
 * joining parts into one new array, and comparing two arrays' contents.
 *
 * @example
 * ```ts
 * import { concat, equalBytes } from "./bytes.ts";
 * const joined = concat([Uint8Array.of(1, 2), Uint8Array.of(3)]);
 * equalBytes(joined, Uint8Array.of(1, 2, 3)); // true
 * ```
 * @module
 */

/** The parts joined, in a new array (always a copy, even of a single part). */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const part of parts) total += part.byteLength;
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/**
 * Whether `a` and `b` hold the same bytes. Not constant-time: for tests,
 * settings and public values, never for comparing secrets a peer chose.
 */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
