/**
 * The server side of the VPN mode: one TUN device for every VPN session,
 * the address pool, and the routing between them. A packet read from the
 * device goes to the session holding its destination; a packet from a
 * session must come from that session's granted address (else it is
 * dropped as spoofed) and goes to the session holding its destination (so
 * clients reach each other through the server) or, for any other
 * destination, into the device, where the server's kernel routes it.
 *
 * @example
 * ```ts
 * import { VpnService } from "./vpn_server.ts";
 * import { parseCidr } from "../protocol/packet.ts";
 * const vpn = await VpnService.start({ device: "cl0", addresses: [parseCidr("10.8.0.1/24")] });
 * // TunnelServer.start({ ..., vpn }) hands it every OPEN 0x02.
 * await vpn.close();
 * ```
 * @module
 */

import type { PendingOpen } from "./pending_open.ts";
import type { Logger } from "../base/log.ts";
import { openConfiguredDevice, removeAddresses } from "./netdev.ts";
import {
  type Cidr,
  contains,
  formatAddress,
  inspectPacket,
  networkOf,
} from "../protocol/packet.ts";
import { VpnStats } from "./stats.ts";
import { TunDevice } from "./tun.ts";
import { readDevicePackets, VpnLink, type VpnLinkEnd } from "./vpn_link.ts";
import { AddressPool } from "./vpn_pool.ts";

/** Keepalive of VPN sessions when none is configured (vpn.md: 25 s in VPN mode). */
export const VPN_DEFAULT_KEEPALIVE_MS = 25_000;

/** What the server's VPN mode needs; times in milliseconds. */
export interface VpnServiceOptions {
  /** TUN device name. */
  device: string;
  /** The server's tunnel addresses, at most one per family; their networks are the pool. */
  addresses: Cidr[];
  mtu?: number;
  /** PING a silent VPN client after this long (default 25 s); 0 turns it off. */
  keepaliveMs?: number;
  idleTimeoutMs?: number;
  logger?: Logger;
}

/** A VPN session admitted by the pool: OPEN_OK is already on its way. */
export interface AdmittedLink {
  link: VpnLink;
  /** The granted addresses, for logs. */
  addresses: string[];
}

/** The server's TUN device, pool and packet routing. */
export class VpnService {
  readonly stats: VpnStats = new VpnStats();
  readonly device: TunDevice;
  readonly pool: AddressPool<VpnLink>;
  #options: VpnServiceOptions;
  #created: boolean;
  #networks: Cidr[];
  #links = new Set<VpnLink>();
  #reader: Promise<void>;
  #closing: Promise<void> | null = null;

  private constructor(device: TunDevice, created: boolean, options: VpnServiceOptions) {
    this.device = device;
    this.#created = created;
    this.#options = options;
    this.pool = new AddressPool(options.addresses);
    this.#networks = options.addresses.map(networkOf);
    this.#reader = this.#readDevice();
  }

  /**
   * Creates (or opens) the device, gives it the addresses and MTU and
   * brings it up. Throws {@linkcode TunError} saying what is missing.
   */
  static async start(options: VpnServiceOptions): Promise<VpnService> {
    const { device, created } = await openConfiguredDevice(
      options.device,
      options.addresses,
      options.mtu,
    );
    return new VpnService(device, created, options);
  }

  /** The device and its addresses, for the startup log. */
  describe(): string {
    return `${this.device.name} ${
      this.#options.addresses.map((c) => `${formatAddress(c.address)}/${c.prefix}`).join(" ")
    }`;
  }

  /**
   * Claims the addresses a VPN OPEN asks for and accepts it in the same
   * step (OPEN_OK goes out before any packet). Returns the ERROR 2 message
   * instead, leaving the OPEN for the caller to refuse, when an address may
   * not be had.
   */
  admit(open: PendingOpen): AdmittedLink | { refused: string } {
    if (open.target.kind !== "vpn") throw new TypeError("not a VPN OPEN");
    const wanted = open.target.addresses;
    const refused = this.pool.refusal(wanted);
    if (refused !== null) return { refused };
    const link: VpnLink = new VpnLink(open.acceptVpn(), {
      stats: this.stats,
      keepaliveMs: this.#options.keepaliveMs ?? VPN_DEFAULT_KEEPALIVE_MS,
      idleTimeoutMs: this.#options.idleTimeoutMs,
      onPacket: (packet) => this.#fromLink(link, packet),
      onEnd: () => {
        // The address is free the moment the session ends, however it ends.
        this.pool.release(link);
        if (this.#links.delete(link)) this.stats.sessionsOpen--;
      },
    });
    // Checked just above, in the same synchronous step: nothing can have taken them since.
    this.pool.claim(link, wanted);
    this.#links.add(link);
    this.stats.sessionsOpen++;
    return { link, addresses: wanted.map((c) => formatAddress(c.address)) };
  }

  /** Sends CLOSE to every VPN session (they end at once; clients reconnect). */
  closeSessions(): Promise<VpnLinkEnd[]> {
    return Promise.all([...this.#links].map((link) => link.close()));
  }

  /**
   * Ends every session, closes the device (removing it if this process
   * created it). Idempotent: every call resolves when it is all done.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.closeSessions();
      this.device.close();
      await this.#reader;
      if (!this.#created) await removeAddresses(this.device.name, this.#options.addresses);
    })();
    return this.#closing;
  }

  /** A packet from a session: anti-spoofing, then another session or the device. */
  #fromLink(link: VpnLink, packet: Uint8Array): void {
    const info = inspectPacket(packet);
    if (!info) return this.stats.drop("malformed");
    if (this.pool.ownerOf(packet, info.sourceOffset, info.family) !== link) {
      return this.stats.drop("spoofed");
    }
    const peer = this.pool.ownerOf(packet, info.destinationOffset, info.family);
    if (peer) {
      const plaintext = new Uint8Array(1 + packet.byteLength);
      plaintext.set(packet, 1);
      peer.sendPacket(plaintext);
      return;
    }
    const destination = packet.subarray(
      info.destinationOffset,
      info.destinationOffset +
        (info.family === 4 ? 4 : 16),
    );
    const own = this.pool.ownOf(info.family);
    const inPool = this.#networks.some((n) => contains(n, destination));
    if (inPool && own && !destination.every((b, i) => b === own.address[i])) {
      // A tunnel address nobody holds: the kernel would only send it back to us.
      return this.stats.drop("no_route");
    }
    if (!this.device.write(packet)) this.stats.drop("queue_full");
  }

  /** Packets the server's kernel routes into the device go to the session holding the destination. */
  #readDevice(): Promise<void> {
    return readDevicePackets(this.device, this.#options.logger, (packet, plaintext) => {
      const info = inspectPacket(packet);
      if (!info) {
        this.stats.drop("malformed");
        return;
      }
      const link = this.pool.ownerOf(packet, info.destinationOffset, info.family);
      if (!link) {
        this.stats.drop("no_route");
        return;
      }
      link.sendPacket(plaintext);
    });
  }
}
