/**
 * The VPN OPEN target (vpn.md section 1): `0x02 || COUNT (u8, 1..2) ||
 * ADDR...`, each ADDR `ATYP (1: IPv4, 4: IPv6) || address || PREFIX (u8)`,
 * at most one per family: the tunnel addresses a client asks for.
 *
 * @example
 * ```ts
 * import { decodeVpnOpen, encodeVpnOpen } from "./vpn_open.ts";
 * const body = encodeVpnOpen([{ family: 4, address: Uint8Array.of(10, 8, 0, 2), prefix: 24 }]);
 * decodeVpnOpen(body); // [{ family: 4, address: [10, 8, 0, 2], prefix: 24 }]
 * ```
 * @module
 */

import { ProtocolError } from "../base/errors.ts";

/** 4 or 6. */
export type IpFamily = 4 | 6;

/**
 * An address with a prefix length: a tunnel address and the network it lies
 * in (lib/protocol/packet.ts parses, formats and compares them).
 */
export interface Cidr {
  family: IpFamily;
  /** 4 or 16 bytes. */
  address: Uint8Array;
  /** 0..32 or 0..128. */
  prefix: number;
}

/** The first byte of a VPN OPEN body. */
export const VPN_TARGET_TYPE = 0x02;
/** Most addresses one VPN OPEN may carry: one per family. */
export const MAX_VPN_ADDRESSES = 2;
const ATYP_IPV4 = 1;
const ATYP_IPV6 = 4;

/** Encodes a VPN OPEN body; throws RangeError for an empty list or two of one family. */
export function encodeVpnOpen(addresses: readonly Cidr[]): Uint8Array {
  checkFamilies(addresses, (detail) => new RangeError(detail));
  const parts: number[] = [VPN_TARGET_TYPE, addresses.length];
  for (const { family, address, prefix } of addresses) {
    parts.push(family === 4 ? ATYP_IPV4 : ATYP_IPV6, ...address, prefix);
  }
  return Uint8Array.from(parts);
}

/**
 * Decodes a VPN OPEN body (its first byte is 0x02). Throws
 * {@linkcode ProtocolError} unless it holds 1 or 2 well-formed addresses of
 * different families and nothing else.
 */
export function decodeVpnOpen(body: Uint8Array): Cidr[] {
  if (body[0] !== VPN_TARGET_TYPE || body.byteLength < 2) {
    throw new ProtocolError("malformed VPN OPEN target");
  }
  const count = body[1];
  const addresses: Cidr[] = [];
  let at = 2;
  for (let i = 0; i < count; i++) {
    const atyp = body[at];
    const family: IpFamily | null = atyp === ATYP_IPV4 ? 4 : atyp === ATYP_IPV6 ? 6 : null;
    if (family === null) throw new ProtocolError("VPN OPEN: unknown address type");
    const length = family === 4 ? 4 : 16;
    if (at + 1 + length + 1 > body.byteLength) throw new ProtocolError("VPN OPEN: cut short");
    const prefix = body[at + 1 + length];
    if (prefix > length * 8) throw new ProtocolError(`VPN OPEN: prefix /${prefix} too long`);
    addresses.push({ family, address: body.slice(at + 1, at + 1 + length), prefix });
    at += 2 + length;
  }
  if (at !== body.byteLength) throw new ProtocolError("VPN OPEN: trailing bytes");
  checkFamilies(addresses, (detail) => new ProtocolError(`VPN OPEN: ${detail}`));
  return addresses;
}

function checkFamilies(addresses: readonly Cidr[], error: (detail: string) => Error): void {
  if (addresses.length < 1 || addresses.length > MAX_VPN_ADDRESSES) {
    throw error(`1 to ${MAX_VPN_ADDRESSES} addresses, not ${addresses.length}`);
  }
  if (addresses.length === 2 && addresses[0].family === addresses[1].family) {
    throw error("at most one address per family");
  }
}
