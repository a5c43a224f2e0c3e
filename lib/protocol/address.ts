/**
 * IP addresses and host names as the server reads them: canonical IPv4 and
 * IPv6 parsing and formatting, and the one reading of a target host that the
 * server checks and then connects to (`canonicalHost`).
 *
 * @example
 * ```ts
 * import { canonicalHost, formatIPv6, parseIPv6 } from "./address.ts";
 * formatIPv6(Uint8Array.from(parseIPv6("0:0::1")!)); // "::1"
 * canonicalHost("::ffff:127.0.0.1"); // { kind: "ipv4", bytes: [127, 0, 0, 1], text: "127.0.0.1" }
 * ```
 * @module
 */

import { TargetError } from "../base/errors.ts";
import { escapeControl } from "../base/log.ts";

/** Bytes of an IPv4 address. */
export const IPV4_SIZE = 4;
/** Bytes of an IPv6 address. */
export const IPV6_SIZE = 16;

/**
 * The four bytes of a canonical dotted IPv4 address (four decimal numbers
 * 0 to 255 without leading zeros), or null. Every other spelling that a
 * resolver might read as IPv4 (`010`, `0x7f`, `127.1`, `2130706433`) is not
 * an address here; {@linkcode canonicalHost} refuses it.
 */
export function parseIPv4(text: string): number[] | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const bytes = parts.map((p) => (/^(?:0|[1-9]\d{0,2})$/.test(p) ? Number(p) : 256));
  return bytes.every((b) => b <= 255) ? bytes : null;
}

/** The sixteen bytes of an IPv6 address (with `::` and a dotted tail), or null. */
export function parseIPv6(text: string): number[] | null {
  if (!text.includes(":")) return null;
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups = (s: string, last: boolean): number[] | null => {
    if (s === "") return [];
    const out: number[] = [];
    const parts = s.split(":");
    for (const [i, part] of parts.entries()) {
      if (last && i === parts.length - 1 && part.includes(".")) {
        const v4 = parseIPv4(part);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9A-Fa-f]{1,4}$/.test(part)) out.push(parseInt(part, 16));
      else return null;
    }
    return out;
  };
  // A dotted IPv4 tail may only end the address, never precede "::".
  const head = groups(halves[0], halves.length === 1);
  const tail = halves.length === 2 ? groups(halves[1], true) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...head, ...new Array(missing).fill(0), ...tail];
  return all.flatMap((g) => [g >> 8, g & 0xff]);
}

/**
 * Formats 16 bytes as an IPv6 address in the RFC 5952 form: lower case, no
 * leading zeros, the longest run of two or more zero groups (the first of
 * equals) as `::`, an IPv4-mapped tail dotted: `::1`, `2001:db8::7`,
 * `::ffff:192.0.2.1`.
 */
export function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < IPV6_SIZE; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8; start++) {
    let length = 0;
    while (start + length < 8 && groups[start + length] === 0) length++;
    if (length > bestLength) {
      bestStart = start;
      bestLength = length;
    }
  }
  const text = (from: number, to: number) =>
    groups.slice(from, to).map((g) => g.toString(16)).join(":");
  // An IPv4-mapped address keeps its dotted tail (RFC 5952, section 5).
  if (bestStart === 0 && bestLength === 5 && groups[5] === 0xffff) {
    return `::ffff:${bytes.subarray(12).join(".")}`;
  }
  if (bestStart < 0) return text(0, 8);
  return `${text(0, bestStart)}::${text(bestStart + bestLength, 8)}`;
}

/** A target host in the one reading the server checks and connects to. */
export type CanonicalHost =
  | { kind: "ipv4"; bytes: number[]; text: string }
  | { kind: "ipv6"; bytes: number[]; text: string }
  | { kind: "name"; text: string };

/** Longest DNS name in text form (RFC 1035), without the trailing dot. */
const MAX_NAME_LENGTH = 253;
/** One DNS label: letters, digits, `-` and `_`, 1 to 63 of them. */
const LABEL = /^[A-Za-z0-9_-]{1,63}$/;
/** A label that resolvers (inet_aton, WHATWG URL) read as a number: decimal, octal or hex. */
const NUMERIC_LABEL = /^(?:\d+|0x[0-9a-f]*)$/i;

/**
 * Reads a target host the one way the server acts on it, or throws
 * {@linkcode TargetError} saying why it is refused:
 * - an IPv6 literal (no zone), with `::ffff:0:0/96` mapped to the IPv4 address it carries;
 * - a canonical dotted IPv4 address;
 * - a host name of ASCII labels (letters, digits, `-`, `_`), lower-cased, a trailing dot dropped.
 *
 * A name whose last label is a number (`127.0.0.010`, `0x7f.1`, `2130706433`,
 * `1.2.3.4.`) is refused: resolvers disagree on what address it means, and the
 * server must connect to exactly what it checked. So is a non-ASCII name
 * (`127。0。0。1`): send its punycode form.
 */
export function canonicalHost(host: string): CanonicalHost {
  if (host.includes(":")) {
    const bytes = parseIPv6(host);
    if (!bytes) throw new TargetError(`'${printable(host)}' is not a valid IPv6 address`);
    if (isMappedIPv4(bytes)) return ipv4(bytes.slice(12));
    return { kind: "ipv6", bytes, text: formatIPv6(Uint8Array.from(bytes)) };
  }
  const v4 = parseIPv4(host);
  if (v4) return ipv4(v4);
  const name = host.endsWith(".") ? host.slice(0, -1) : host;
  const labels = name.split(".");
  if (NUMERIC_LABEL.test(labels[labels.length - 1])) {
    throw new TargetError(
      `'${printable(host)}' is not a canonical IPv4 address (write four decimal numbers ` +
        `0 to 255 without leading zeros, like 10.8.0.1)`,
    );
  }
  if (name.length > MAX_NAME_LENGTH || !labels.every((label) => LABEL.test(label))) {
    throw new TargetError(
      `'${
        printable(host)
      }' is not a host name (ASCII letters, digits, '-' and '_' in dot-separated ` +
        `labels; send an international name in its xn-- form)`,
    );
  }
  return { kind: "name", text: name.toLowerCase() };
}

/** Whether an address is the unspecified one (`0.0.0.0`, `::`), which no OPEN may reach. */
export function isUnspecified(address: CanonicalHost): boolean {
  return address.kind !== "name" && address.bytes.every((b) => b === 0);
}

function ipv4(bytes: number[]): CanonicalHost {
  return { kind: "ipv4", bytes, text: bytes.join(".") };
}

function isMappedIPv4(bytes: number[]): boolean {
  return bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
}

/** A client-chosen string made safe to quote: control characters escaped, at most 64 characters. */
export function printable(text: string): string {
  const escaped = escapeControl(text);
  return escaped.length > 64 ? `${escaped.slice(0, 64)}…` : escaped;
}
