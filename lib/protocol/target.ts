/**
 * OPEN targets: the body of an OPEN message, and `HOST:PORT` strings.
 *
 * `0x00` asks for the server's own service; `0x01 ATYP ADDR PORT` names a
 * host the SOCKS5 way (ATYP 1 IPv4, 3 domain name, 4 IPv6); `0x02` asks for
 * a VPN session (its codec is lib/protocol/vpn_open.ts).
 *
 * @example
 * ```ts
 * import { encodeTarget, decodeTarget, parseHostPort } from "./target.ts";
 * const body = encodeTarget(parseHostPort("example.internal:5432"));
 * decodeTarget(body); // { kind: "address", host: "example.internal", port: 5432 }
 * ```
 * @module
 */

import { ProtocolError, TargetError, UsageError } from "../base/errors.ts";
import { escapeControl } from "../base/log.ts";
import { type Cidr, decodeVpnOpen, encodeVpnOpen, VPN_TARGET_TYPE } from "./vpn_open.ts";

/** What an OPEN asks for. */
export type Target =
  | { kind: "service" }
  | { kind: "address"; host: string; port: number }
  /** VPN mode (`0x02`, lib/protocol/vpn_open.ts): the tunnel addresses the client asks for. */
  | { kind: "vpn"; addresses: Cidr[] };

/** A host and port, as given on the command line. */
export interface HostPort {
  host: string;
  port: number;
}

/** The server's own service (echo or its fixed forward). */
export const SERVICE_TARGET: Target = { kind: "service" };

/** ATYP of an IPv4 address (4 bytes), shared by OPEN targets and SOCKS5 requests. */
export const ATYP_IPV4 = 1;
/** ATYP of a host name (a length byte, then the name). */
export const ATYP_DOMAIN = 3;
/** ATYP of an IPv6 address (16 bytes). */
export const ATYP_IPV6 = 4;
/** Bytes of an IPv4 address. */
export const IPV4_SIZE = 4;
/** Bytes of an IPv6 address. */
export const IPV6_SIZE = 16;
/** Bytes of a port (big-endian u16). */
export const PORT_SIZE = 2;

/**
 * Parses `HOST:PORT`, `[IPv6]:PORT`. Throws {@linkcode UsageError}, also for
 * a host that {@linkcode canonicalHost} refuses (`127.0.0.010`, `127。0。0。1`).
 *
 * @example
 * ```ts
 * parseHostPort("[::1]:8888"); // { host: "::1", port: 8888 }
 * ```
 */
export function parseHostPort(text: string, allowPortZero = false): HostPort {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (
    !match || port > 65535 || (port === 0 && !allowPortZero) ||
    (match[1] !== undefined && !parseIPv6(match[1]))
  ) {
    throw new UsageError(`'${text}' is not HOST:PORT`);
  }
  const host = match[1] ?? match[2];
  // The same reading the server applies to targets: no spelling resolvers disagree on.
  try {
    canonicalHost(host);
  } catch (err) {
    if (err instanceof TargetError) throw new UsageError(`'${text}': ${err.message}`);
    throw err;
  }
  return { host, port };
}

/** Formats a host and port, bracketing IPv6. */
export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Encodes a target as an OPEN body. */
export function encodeTarget(target: Target | HostPort): Uint8Array {
  if ("kind" in target && target.kind === "service") return Uint8Array.of(0);
  if ("kind" in target && target.kind === "vpn") return encodeVpnOpen(target.addresses);
  const { host, port } = target as HostPort;
  const ipv4 = parseIPv4(host);
  const ipv6 = ipv4 ? null : parseIPv6(host);
  let address: Uint8Array;
  if (ipv4) address = Uint8Array.of(ATYP_IPV4, ...ipv4);
  else if (ipv6) address = Uint8Array.of(ATYP_IPV6, ...ipv6);
  else {
    const name = new TextEncoder().encode(host);
    if (name.byteLength < 1 || name.byteLength > 255) {
      throw new UsageError(`host name '${host}' must be 1 to 255 bytes`);
    }
    address = Uint8Array.of(ATYP_DOMAIN, name.byteLength, ...name);
  }
  return Uint8Array.of(1, ...address, port >> 8, port & 0xff);
}

/** Decodes an OPEN body; throws {@linkcode ProtocolError} when malformed. */
export function decodeTarget(body: Uint8Array): Target {
  if (body.byteLength === 1 && body[0] === 0) return SERVICE_TARGET;
  if (body[0] === VPN_TARGET_TYPE) return { kind: "vpn", addresses: decodeVpnOpen(body) };
  if (body[0] !== 1 || body.byteLength < 2) {
    throw new ProtocolError("malformed OPEN target");
  }
  const decoded = decodeSocksAddress(body.subarray(1));
  if (!decoded || decoded.length !== body.byteLength - 1) {
    throw new ProtocolError("malformed OPEN target");
  }
  return { kind: "address", host: decoded.host, port: decoded.port };
}

/**
 * Decodes `ATYP ADDR PORT` (shared with SOCKS5 requests). Returns null when
 * the bytes are incomplete or malformed; `length` is how many were used.
 */
export function decodeSocksAddress(
  bytes: Uint8Array,
): { host: string; port: number; length: number } | null {
  let host: string;
  let at: number;
  switch (bytes[0]) {
    case ATYP_IPV4:
      if (bytes.byteLength < 7) return null;
      host = Array.from(bytes.subarray(1, 5)).join(".");
      at = 5;
      break;
    case ATYP_IPV6:
      if (bytes.byteLength < 19) return null;
      host = formatIPv6(bytes.subarray(1, 17));
      at = 17;
      break;
    case ATYP_DOMAIN: {
      const length = bytes[1];
      if (!length || bytes.byteLength < 2 + length + 2) return null;
      try {
        host = new TextDecoder("utf-8", { fatal: true }).decode(
          bytes.subarray(2, 2 + length),
        );
      } catch {
        return null;
      }
      at = 2 + length;
      break;
    }
    default:
      return null;
  }
  return { host, port: (bytes[at] << 8) | bytes[at + 1], length: at + 2 };
}

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
