/**
 * The server's address bookkeeping for VPN sessions: which tunnel address
 * each open session holds. A client gets an address only inside the
 * server's tunnel network of that family, never the server's own (nor, in
 * IPv4 networks of /30 and wider, the network or broadcast address), and
 * never one another open session holds. Addresses are free again the
 * moment their owner is released.
 *
 * @example
 * ```ts
 * import { AddressPool } from "./vpn_pool.ts";
 * import { parseCidr } from "../protocol/packet.ts";
 * const pool = new AddressPool<string>([parseCidr("10.8.0.1/24")]);
 * pool.claim("alice", [parseCidr("10.8.0.2/24")]); // null: granted
 * pool.claim("bob", [parseCidr("10.8.0.2/24")]); // "10.8.0.2 is in use by another client"
 * pool.release("alice");
 * ```
 * @module
 */

import {
  addressKey,
  type Cidr,
  contains,
  formatAddress,
  formatCidr,
  type IpFamily,
  networkOf,
  sameAddress,
} from "../protocol/packet.ts";

/** Who holds which addresses, inside the server's tunnel networks. */
export class AddressPool<Owner> {
  /** The server's own tunnel addresses, at most one per family. */
  readonly own: readonly Cidr[];
  #held = new Map<number | string, Owner>();
  #byOwner = new Map<Owner, (number | string)[]>();

  /** `own`: the server's tunnel addresses with their prefixes (the networks). */
  constructor(own: readonly Cidr[]) {
    for (const family of [4, 6] as const) {
      if (own.filter((c) => c.family === family).length > 1) {
        throw new RangeError(`at most one IPv${family} tunnel address`);
      }
    }
    this.own = own;
  }

  /** The server's own address of a family, if it has that family. */
  ownOf(family: IpFamily): Cidr | undefined {
    return this.own.find((c) => c.family === family);
  }

  /**
   * Grants `wanted` to `owner` when every address may be had, all or none.
   * Returns null when granted, else a message that says which address is
   * refused and why (the body of ERROR 2).
   */
  claim(owner: Owner, wanted: readonly Cidr[]): string | null {
    if (this.#byOwner.has(owner)) return "this session already holds addresses";
    const refused = this.refusal(wanted);
    if (refused !== null) return refused;
    const keys = wanted.map(({ family, address }) => addressKey(address, 0, family));
    for (const key of keys) this.#held.set(key, owner);
    this.#byOwner.set(owner, keys);
    return null;
  }

  /**
   * Why `wanted` may not be claimed now (the body of ERROR 2), or null when
   * every address may be: what {@linkcode AddressPool.claim} checks.
   */
  refusal(wanted: readonly Cidr[]): string | null {
    for (const { family, address } of wanted) {
      const text = formatAddress(address);
      const own = this.ownOf(family);
      if (!own) return `${text}: this server has no IPv${family} tunnel network`;
      const network = networkOf(own);
      if (!contains(network, address)) {
        return `${text} is outside the server's tunnel network ${formatCidr(network)}`;
      }
      if (sameAddress(address, own.address)) return `${text} is the server's own address`;
      if (family === 4 && own.prefix <= 30) {
        if (sameAddress(address, network.address)) return `${text} is the network's address`;
        if (sameAddress(address, broadcastOf(network))) return `${text} is the broadcast address`;
      }
      if (this.#held.has(addressKey(address, 0, family))) {
        return `${text} is in use by another client`;
      }
    }
    return null;
  }

  /** Frees every address `owner` holds (idempotent). */
  release(owner: Owner): void {
    for (const key of this.#byOwner.get(owner) ?? []) this.#held.delete(key);
    this.#byOwner.delete(owner);
  }

  /** The holder of the address at `offset` in `bytes`, if any. */
  ownerOf(bytes: Uint8Array, offset: number, family: IpFamily): Owner | undefined {
    return this.#held.get(addressKey(bytes, offset, family));
  }

  /** Addresses held now. */
  get size(): number {
    return this.#held.size;
  }
}

function broadcastOf(network: Cidr): Uint8Array {
  const address = network.address.slice();
  for (let bit = network.prefix; bit < address.byteLength * 8; bit++) {
    address[bit >> 3] |= 0x80 >> (bit & 7);
  }
  return address;
}
