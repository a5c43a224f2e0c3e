/**
 * IP packets and tunnel addresses for the VPN mode: CIDR parsing, the
 * checks every received packet passes (version nibble, header length fields
 * against the body's length), and the source and destination addresses the
 * anti-spoofing rules look at. Pure functions over bytes; no allocation on
 * the packet path except the address keys.
 *
 * @example
 * ```ts
 * import { inspectPacket, parseCidr } from "./packet.ts";
 * const net = parseCidr("10.8.0.1/24"); // { family: 4, address: [10,8,0,1], prefix: 24 }
 * const info = inspectPacket(new Uint8Array(20)); // null: version nibble 0
 * ```
 * @module
 */

import { UsageError } from "../base/errors.ts";
import { formatIPv6, parseIPv4, parseIPv6 } from "./address.ts";
import type { Cidr, IpFamily } from "./vpn_open.ts";

export type { Cidr, IpFamily } from "./vpn_open.ts";

/** Smallest IPv4 header. */
export const IPV4_HEADER_MIN = 20;
/** The fixed IPv6 header. */
export const IPV6_HEADER = 40;

/** Address length in bytes of a family. */
export function addressLength(family: IpFamily): number {
  return family === 4 ? 4 : 16;
}

/**
 * Parses `ADDRESS/PREFIX` (IPv4 or IPv6). Throws {@linkcode UsageError}
 * naming `what` (the option) when malformed.
 */
export function parseCidr(text: string, what = "a CIDR"): Cidr {
  const match = /^([^/\s]+)\/(\d{1,3})$/.exec(text);
  if (match) {
    const v4 = parseIPv4(match[1]);
    const v6 = v4 ? null : parseIPv6(match[1]);
    const prefix = Number(match[2]);
    if (v4 && prefix <= 32) return { family: 4, address: Uint8Array.from(v4), prefix };
    if (v6 && prefix <= 128) return { family: 6, address: Uint8Array.from(v6), prefix };
  }
  throw new UsageError(
    `${what} takes ADDRESS/PREFIX (such as 10.8.0.2/24 or fd00::2/64), not '${text}'`,
  );
}

/** Formats an address of 4 or 16 bytes (IPv6 in the RFC 5952 form, as `ip` prints it). */
export function formatAddress(address: Uint8Array): string {
  return address.byteLength === 4 ? Array.from(address).join(".") : formatIPv6(address);
}

/** Formats `ADDRESS/PREFIX`. */
export function formatCidr(cidr: Cidr): string {
  return `${formatAddress(cidr.address)}/${cidr.prefix}`;
}

/** The network part of a CIDR (host bits zeroed), as a new CIDR. */
export function networkOf(cidr: Cidr): Cidr {
  const address = cidr.address.slice();
  for (let bit = cidr.prefix; bit < address.byteLength * 8; bit++) {
    address[bit >> 3] &= ~(0x80 >> (bit & 7));
  }
  return { family: cidr.family, address, prefix: cidr.prefix };
}

/** Whether `address` (4 or 16 bytes) lies inside `network`. */
export function contains(network: Cidr, address: Uint8Array): boolean {
  if (address.byteLength !== network.address.byteLength) return false;
  const full = network.prefix >> 3;
  for (let i = 0; i < full; i++) if (address[i] !== network.address[i]) return false;
  const rest = network.prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (address[full] & mask) === (network.address[full] & mask);
}

/** Whether two addresses are the same bytes. */
export function sameAddress(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * A map key for an address: the IPv4 address as a number, the IPv6 address
 * as a string of its 16 bytes. Cheap enough to build per packet.
 */
export function addressKey(bytes: Uint8Array, offset: number, family: IpFamily): number | string {
  if (family === 4) {
    return ((bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) |
      bytes[offset + 3]) >>> 0;
  }
  return String.fromCharCode(...bytes.subarray(offset, offset + 16));
}

/** What a valid packet is: its family and where its addresses are. */
export interface PacketInfo {
  family: IpFamily;
  /** Offset of the source address in the packet; the destination follows it. */
  sourceOffset: number;
  /** Offset of the destination address. */
  destinationOffset: number;
}

const V4: PacketInfo = { family: 4, sourceOffset: 12, destinationOffset: 16 };
const V6: PacketInfo = { family: 6, sourceOffset: 8, destinationOffset: 24 };

/**
 * Checks a packet as vpn.md requires: the version nibble is 4 or 6 and the
 * header's length fields agree with the body's length (IPv4: IHL of at
 * least 5 words within the packet, total length equal to the body; IPv6:
 * 40 bytes plus the payload length equal to the body). Returns where its
 * addresses are, or null for a malformed packet.
 */
export function inspectPacket(packet: Uint8Array): PacketInfo | null {
  if (packet.byteLength < 1) return null;
  const version = packet[0] >> 4;
  if (version === 4) {
    if (packet.byteLength < IPV4_HEADER_MIN) return null;
    const headerLength = (packet[0] & 0x0f) * 4;
    const totalLength = (packet[2] << 8) | packet[3];
    if (headerLength < IPV4_HEADER_MIN || headerLength > packet.byteLength) return null;
    return totalLength === packet.byteLength ? V4 : null;
  }
  if (version === 6) {
    if (packet.byteLength < IPV6_HEADER) return null;
    const payloadLength = (packet[4] << 8) | packet[5];
    return IPV6_HEADER + payloadLength === packet.byteLength ? V6 : null;
  }
  return null;
}
