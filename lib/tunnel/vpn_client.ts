/**
 * The client side of the VPN mode: a TUN device with the client's tunnel
 * address(es), one VPN session to the server (OPEN 0x02), the `--route`s
 * through the device once OPEN_OK arrives, and reconnection with backoff
 * (1 s doubling to 30 s, with jitter) whenever the connection is lost. The
 * device stays up across reconnects; packets read from it while there is
 * no session are dropped and counted.
 *
 * Only packets addressed to one of the client's granted addresses are
 * written into the device (anti-spoofing on the client side).
 *
 * @example
 * ```ts
 * import { VpnClient } from "./vpn_client.ts";
 * import { parseCidr } from "../protocol/packet.ts";
 * const client = await VpnClient.start({
 *   server: { host: "192.0.2.1", port: 8888 },
 *   key: crypto.getRandomValues(new Uint8Array(32)),
 *   device: "cl0",
 *   addresses: [parseCidr("10.8.0.2/24")],
 * });
 * await client.shutdown();
 * ```
 * @module
 */

import { KeySlot } from "./key_slot.ts";
import { remoteErrorOf } from "../protocol/error_body.ts";
import { type ChannelOptions, SecureChannel } from "../protocol/channel.ts";
import { MessageType } from "../protocol/messages.ts";
import { CLIENT_HANDSHAKE_TIMEOUT_MS } from "./client.ts";
import { DEFAULT_CRYPTO_PROVIDER } from "../protocol/crypto/provider.ts";
import { closeQuietly } from "../protocol/conn.ts";
import {
  AuthenticationError,
  CipherlinkError,
  ProtocolError,
  RemoteError,
  TimeoutError,
} from "../base/errors.ts";
import { Logger } from "../base/log.ts";
import { addRoute, openConfiguredDevice, removeAddresses, removeRoute } from "./netdev.ts";
import {
  type Cidr,
  formatAddress,
  formatCidr,
  inspectPacket,
  sameAddress,
} from "../protocol/packet.ts";
import { TunnelStats, VpnStats } from "./stats.ts";
import { formatHostPort, type HostPort } from "../protocol/hostport.ts";
import { TunDevice } from "./tun.ts";
import { readDevicePackets, VpnLink } from "./vpn_link.ts";
import { encodeVpnOpen } from "../protocol/vpn_open.ts";
import { VPN_DEFAULT_KEEPALIVE_MS } from "./vpn_server.ts";

/** First reconnect delay. */
export const RECONNECT_FIRST_MS = 1000;
/** Longest reconnect delay. */
export const RECONNECT_MAX_MS = 30_000;
/** Each delay is scaled by a random factor in 1 ± this. */
const RECONNECT_JITTER = 0.2;

/** Everything the VPN client needs; times in milliseconds. */
export interface VpnClientOptions {
  server: HostPort;
  key: Uint8Array;
  device: string;
  /** The client's tunnel addresses, at most one per family. */
  addresses: Cidr[];
  /** Networks routed through the device once the server accepted us. */
  routes?: Cidr[];
  mtu?: number;
  /** Default 25 s; 0 turns it off. */
  keepaliveMs?: number;
  handshakeTimeoutMs?: number;
  rekeyBytes?: number;
  /** More channel settings for every connection (such as the crypto provider). */
  channel?: ChannelOptions;
  logger?: Logger;
}

/** The delay before reconnect attempt `attempt` (1-based), with jitter. */
export function reconnectDelay(attempt: number, random: () => number = Math.random): number {
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** Math.min(attempt - 1, 15));
  return Math.round(base * (1 + RECONNECT_JITTER * (2 * random() - 1)));
}

/** A running VPN client. */
export class VpnClient {
  /** Counters for the metrics endpoint (`vpn` holds the VPN ones). */
  readonly stats: TunnelStats = new TunnelStats();
  readonly device: TunDevice;
  /** Resolves when the client stopped: null after shutdown(), or the error that ended it. */
  readonly done: Promise<Error | null>;
  #options: Omit<VpnClientOptions, "key">;
  /** The key lives only here: a replaced one is referenced by nothing else. */
  #keys: KeySlot;
  #vpn: VpnStats = new VpnStats();
  #created: boolean;
  #link: VpnLink | null = null;
  #stopping = false;
  #wake: () => void = () => {};
  #routed = false;
  #reader: Promise<void>;

  private constructor(
    device: TunDevice,
    created: boolean,
    { key, ...options }: VpnClientOptions,
  ) {
    this.device = device;
    this.#created = created;
    this.#options = options;
    this.#keys = new KeySlot(key);
    this.stats.vpn = this.#vpn;
    this.#reader = this.#readDevice();
    this.done = this.#connectLoop();
  }

  /**
   * Creates and configures the device, then keeps a session to the server.
   * Throws {@linkcode TunError} when the device cannot be made.
   */
  static async start(options: VpnClientOptions): Promise<VpnClient> {
    const { device, created } = await openConfiguredDevice(
      options.device,
      options.addresses,
      options.mtu,
    );
    return new VpnClient(device, created, options);
  }

  get #log(): Logger {
    return this.#options.logger ?? new Logger();
  }

  /**
   * Replaces the key for the next connection; a session that is up keeps its
   * own. Resolves once no handshake reads the replaced key any more: its
   * owner may zero it then.
   */
  setKey(key: Uint8Array): Promise<void> {
    return this.#keys.replace(key);
  }

  /** Whether a session to the server is up now. */
  get connected(): boolean {
    return this.#link !== null && !this.#link.ended;
  }

  /**
   * Stops: CLOSE to the server, routes and device removed. Resolves once
   * everything is down.
   */
  async shutdown(): Promise<void> {
    this.#stopping = true;
    this.#wake();
    await this.#link?.close();
    await this.done;
    for (const route of this.#options.routes ?? []) await removeRoute(this.device.name, route);
    this.device.close();
    await this.#reader;
    if (!this.#created) await removeAddresses(this.device.name, this.#options.addresses);
  }

  async #connectLoop(): Promise<Error | null> {
    let attempt = 0;
    let everConnected = false;
    while (!this.#stopping) {
      attempt++;
      let link: VpnLink;
      try {
        link = await this.#connect();
      } catch (err) {
        const error = err instanceof Error ? err : new Error(String(err));
        // Before the first session, a refusal or a wrong key is a setting to
        // fix, not a network blip: stop and say so. Later, it may be our own
        // old session that the server has not dropped yet: keep trying.
        if (!everConnected && !isTransient(error)) return error;
        if (this.#stopping) break;
        const delay = reconnectDelay(attempt);
        this.#log.warn("vpn connect failed; retrying", {
          server: formatHostPort(this.#options.server),
          attempt,
          retry_in_ms: delay,
          error: error.message,
        });
        await this.#sleep(delay);
        continue;
      }
      if (this.#stopping) {
        link.run();
        await link.close();
        break;
      }
      everConnected = true;
      attempt = 0;
      this.#link = link;
      this.stats.sessionsOpen = 1;
      this.stats.sessionsTotal++;
      this.#vpn.sessionsOpen = 1;
      // Routes go through the device, which outlives every session: added once.
      if (!this.#routed) {
        try {
          await this.#addRoutes();
        } catch (err) {
          link.run();
          await link.close();
          return err as Error;
        }
      }
      this.#log.info("vpn connected", {
        server: formatHostPort(this.#options.server),
        device: this.device.name,
        addresses: this.#options.addresses.map(formatCidr).join(" "),
        crypto: this.#options.channel?.provider?.name ?? DEFAULT_CRYPTO_PROVIDER,
      });
      const { error } = await link.run();
      this.#link = null;
      this.stats.sessionsOpen = 0;
      this.#vpn.sessionsOpen = 0;
      if (this.#stopping) break;
      const delay = reconnectDelay(1);
      this.#log.warn("vpn connection lost; reconnecting", {
        server: formatHostPort(this.#options.server),
        error: error?.message ?? "the server closed the session",
        retry_in_ms: delay,
      });
      attempt = 1;
      await this.#sleep(delay);
    }
    return null;
  }

  async #addRoutes(): Promise<void> {
    for (const route of this.#options.routes ?? []) await addRoute(this.device.name, route);
    this.#routed = true;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Connects, handshakes, OPENs and waits for OPEN_OK; resolves the running link. */
  #connect(): Promise<VpnLink> {
    return this.#keys.withKey((key) => this.#connectWith(key));
  }

  async #connectWith(key: Uint8Array): Promise<VpnLink> {
    const { server } = this.#options;
    const handshakeTimeoutMs = this.#options.handshakeTimeoutMs ?? CLIENT_HANDSHAKE_TIMEOUT_MS;
    let conn: Deno.TcpConn;
    try {
      // A server that does not answer at all must not hold up the next attempt for minutes.
      conn = await Deno.connect({
        hostname: server.host,
        port: server.port,
        signal: AbortSignal.timeout(handshakeTimeoutMs),
      });
    } catch (err) {
      throw new CipherlinkError(
        `cannot connect to the server at ${formatHostPort(server)}: ${(err as Error).message}`,
      );
    }
    conn.setNoDelay(true);
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      closeQuietly(conn);
    }, handshakeTimeoutMs);
    try {
      const channel = await SecureChannel.handshake(conn, key, "initiator", {
        ...this.#options.channel,
        rekeyBytes: this.#options.rekeyBytes,
      });
      await channel.send(MessageType.open, encodeVpnOpen(this.#options.addresses));
      const reply = await channel.receive();
      if (!reply) throw new CipherlinkError("the server closed the connection before OPEN_OK");
      if (reply.type === MessageType.error) {
        throw remoteErrorOf(reply.body);
      }
      if (reply.type !== MessageType.openOk) {
        throw new ProtocolError(`expected OPEN_OK, got message type ${reply.type}`);
      }
      const link = new VpnLink(channel, {
        stats: this.#vpn,
        keepaliveMs: this.#options.keepaliveMs ?? VPN_DEFAULT_KEEPALIVE_MS,
        onPacket: (packet) => this.#fromServer(packet),
      });
      return link;
    } catch (err) {
      closeQuietly(conn);
      if (timedOut) throw new TimeoutError("the server did not complete the handshake in time");
      throw err;
    } finally {
      clearTimeout(deadline);
    }
  }

  /** A packet from the server: only ones for our own addresses enter the device. */
  #fromServer(packet: Uint8Array): void {
    const info = inspectPacket(packet);
    if (!info) return this.#vpn.drop("malformed");
    const length = info.family === 4 ? 4 : 16;
    const destination = packet.subarray(info.destinationOffset, info.destinationOffset + length);
    if (!this.#options.addresses.some((c) => sameAddress(c.address, destination))) {
      return this.#vpn.drop("spoofed");
    }
    if (!this.device.write(packet)) this.#vpn.drop("queue_full");
  }

  /** Packets the kernel routes into the device go to the server while a session is up. */
  #readDevice(): Promise<void> {
    return readDevicePackets(this.device, this.#log, (_packet, plaintext) => {
      const link = this.#link;
      if (!link || link.ended) {
        this.#vpn.drop("not_connected");
        return;
      }
      link.sendPacket(plaintext);
    });
  }

  /** The client's addresses, for logs. */
  describe(): string {
    return `${this.device.name} ${
      this.#options.addresses.map((c) => formatAddress(c.address)).join(" ")
    }`;
  }
}

/** Errors worth retrying before the first session: the network, not the settings. */
function isTransient(error: Error): boolean {
  return !(error instanceof RemoteError) && !(error instanceof AuthenticationError);
}
