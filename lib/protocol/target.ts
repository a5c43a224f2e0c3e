/**
 * OPEN targets: the body of an OPEN message (`HOST:PORT` strings are
 * hostport.ts's, IP addresses address.ts's).
 *
 * `0x00` asks for the server's own service; `0x01 ATYP ADDR PORT` names a
 * host the SOCKS5 way (ATYP 1 IPv4, 3 domain name, 4 IPv6); `0x02` asks for
 * a VPN session (its codec is lib/protocol/vpn_open.ts).
 *
 * @example
 * ```ts
 * import { decodeTarget, encodeTarget } from "./target.ts";
 * import { parseHostPort } from "./hostport.ts";
 * const body = encodeTarget(parseHostPort("example.internal:5432"));
 * decodeTarget(body); // { kind: "address", host: "example.internal", port: 5432 }
 * ```
 * @module
 */

import { ProtocolError, UsageError } from "../base/errors.ts";
import { formatIPv6, parseIPv4, parseIPv6 } from "./address.ts";
import type { HostPort } from "./hostport.ts";
import { type Cidr, decodeVpnOpen, encodeVpnOpen, VPN_TARGET_TYPE } from "./vpn_open.ts";

/** What an OPEN asks for. */
export type Target =
  | { kind: "service" }
  | { kind: "address"; host: string; port: number }
  /** VPN mode (`0x02`, lib/protocol/vpn_open.ts): the tunnel addresses the client asks for. */
  | { kind: "vpn"; addresses: Cidr[] };

/** The server's own service (echo or its fixed forward). */
export const SERVICE_TARGET: Target = { kind: "service" };

/** ATYP of an IPv4 address (4 bytes), shared by OPEN targets and SOCKS5 requests. */
export const ATYP_IPV4 = 1;
/** ATYP of a host name (a length byte, then the name). */
export const ATYP_DOMAIN = 3;
/** ATYP of an IPv6 address (16 bytes). */
export const ATYP_IPV6 = 4;
/** Bytes of a port (big-endian u16). */
export const PORT_SIZE = 2;

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
