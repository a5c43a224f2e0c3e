/**
 * One VPN session over a secure channel, after OPEN_OK, on either side:
 * DATA messages carry one IP packet each, PING/PONG keep the link alive,
 * CLOSE and ERROR end it. Packets are datagrams: when too many are waiting
 * for the connection (a slow TCP path), new ones are dropped and counted
 * instead of queued, so the memory a link holds is bounded by constants.
 *
 * The link knows nothing about devices or addresses: the side that owns it
 * checks each received packet in `onPacket` and hands packets to send to
 * {@linkcode VpnLink.sendPacket}.
 *
 * @example
 * ```ts
 * import { VpnLink } from "./vpn_link.ts";
 * declare const channel: import("../protocol/channel.ts").SecureChannel;
 * const link = new VpnLink(channel, { onPacket: (packet) => console.log(packet.byteLength) });
 * const end = await link.run(); // { error: null } after a clean CLOSE
 * ```
 * @module
 */

import { type SecureChannel } from "../protocol/channel.ts";
import { MAX_PING_BODY, MessageType } from "../protocol/messages.ts";
import { answeredAsViolation, encodeErrorBody, remoteErrorOf } from "../protocol/error_body.ts";
import { CipherlinkError, ErrorCode, ProtocolError, TruncationError } from "../base/errors.ts";
import { Liveness } from "./liveness.ts";
import { VpnStats } from "./stats.ts";
import type { TunDevice } from "./tun.ts";
import type { Logger } from "../base/log.ts";
import { MAX_DATA_BODY } from "../protocol/frame.ts";

/** Packets a link may have waiting for the connection before it drops new ones. */
export const MAX_QUEUED_PACKETS = 256;
/** Bytes of packets a link may have waiting before it drops new ones. */
export const MAX_QUEUED_BYTES = 1024 * 1024;
/** How long a closing link waits for the peer's CLOSE. */
const CLOSE_GRACE_MS = 2000;

/** Settings of a link; times in milliseconds, 0 turns a timer off. */
export interface VpnLinkOptions {
  /** Gets each received DATA body: one packet, not yet checked. */
  onPacket(packet: Uint8Array): void;
  /** Counters shared with the endpoint. */
  stats?: VpnStats;
  /** Called once, the moment the link ends (before the connection is closed). */
  onEnd?(end: VpnLinkEnd): void;
  keepaliveMs?: number;
  idleTimeoutMs?: number;
}

/** How a link ended: null for a clean CLOSE in both directions. */
export interface VpnLinkEnd {
  error: Error | null;
}

/** A VPN session's message loop and bounded send queue. */
export class VpnLink {
  readonly channel: SecureChannel;
  readonly stats: VpnStats;
  #options: VpnLinkOptions;
  /** Packets this link received from and sent to its peer. */
  packets: { in: number; out: number } = { in: 0, out: 0 };
  #queuedPackets = 0;
  #queuedBytes = 0;
  #sentClose = false;
  #ended: VpnLinkEnd | null = null;
  #resolveEnd!: (end: VpnLinkEnd) => void;
  #end: Promise<VpnLinkEnd>;
  #liveness = new Liveness();
  #running = false;

  constructor(channel: SecureChannel, options: VpnLinkOptions) {
    this.channel = channel;
    this.#options = options;
    this.stats = options.stats ?? new VpnStats();
    this.#end = new Promise((resolve) => (this.#resolveEnd = resolve));
  }

  /** Whether the link has ended. */
  get ended(): boolean {
    return this.#ended !== null;
  }

  /**
   * Queues one packet for the peer. `plaintext` holds the DATA type byte at
   * offset 0 and the packet after it; it is copied before this returns, so
   * the caller may reuse its buffer. Returns false when the packet was
   * dropped (queue full, or the link is closing) and counts it.
   */
  sendPacket(plaintext: Uint8Array): boolean {
    if (this.#ended || this.#sentClose) {
      this.stats.drop("not_connected");
      return false;
    }
    const size = plaintext.byteLength;
    if (this.#queuedPackets >= MAX_QUEUED_PACKETS || this.#queuedBytes + size > MAX_QUEUED_BYTES) {
      this.stats.drop("queue_full");
      return false;
    }
    plaintext[0] = MessageType.data;
    this.#queuedPackets++;
    this.#queuedBytes += size;
    this.#liveness.active();
    this.stats.packetsOut++;
    this.packets.out++;
    this.stats.bytesOut += size - 1;
    this.channel.sendPlaintext(plaintext).then(() => {
      this.#queuedPackets--;
      this.#queuedBytes -= size;
    }, (err) => this.#finish(err));
    return true;
  }

  /**
   * Runs the receive loop until the link ends; resolves how it ended. Call
   * once. The connection is closed when it resolves.
   */
  run(): Promise<VpnLinkEnd> {
    if (this.#running) throw new Error("VpnLink.run() called twice");
    this.#running = true;
    this.#startTimer();
    this.#receiveLoop();
    return this.#end;
  }

  /**
   * Ends the link cleanly: CLOSE, then the peer's CLOSE (or a short grace
   * period), then the connection is closed. Resolves how it ended.
   */
  close(): Promise<VpnLinkEnd> {
    if (!this.#ended && !this.#sentClose) {
      this.#sentClose = true;
      this.channel.send(MessageType.close).catch((err) => this.#finish(err));
      const grace = setTimeout(
        () => this.#finish(new TruncationError("the peer did not answer CLOSE in time")),
        CLOSE_GRACE_MS,
      );
      this.#end.finally(() => clearTimeout(grace));
    }
    return this.#end;
  }

  /** Ends the link at once with ERROR `code` (best effort). */
  abort(code: number, message: string, cause?: Error): void {
    if (this.#ended) return;
    const body = encodeErrorBody(code, message);
    const goodbye = this.channel.send(MessageType.error, body).then(() => this.channel.flush());
    this.#finish(cause ?? new CipherlinkError(message), goodbye);
  }

  async #receiveLoop(): Promise<void> {
    while (!this.#ended) {
      let message;
      try {
        message = await this.channel.receive();
      } catch (err) {
        if (answeredAsViolation(err)) {
          this.abort(ErrorCode.protocolViolation, "protocol violation", err);
        } else this.#finish(err);
        return;
      }
      if (this.#ended) return;
      if (!message) return this.#finish(new TruncationError());
      this.#liveness.heard();
      const { type, body } = message;
      switch (type) {
        case MessageType.data:
          if (body.byteLength === 0) return this.#violation("empty DATA");
          this.stats.packetsIn++;
          this.packets.in++;
          this.stats.bytesIn += body.byteLength;
          this.#options.onPacket(body);
          break;
        case MessageType.ping:
          if (body.byteLength > MAX_PING_BODY) return this.#violation("PING body over 8 bytes");
          this.channel.send(MessageType.pong, body).catch((err) => this.#finish(err));
          break;
        case MessageType.pong:
          break;
        case MessageType.close:
          // A VPN session ends as a whole: answer CLOSE with CLOSE, then it is over.
          if (!this.#sentClose) {
            this.#sentClose = true;
            this.channel.send(MessageType.close).catch(() => {});
          }
          this.#finish(null, this.channel.flush());
          return;
        case MessageType.error:
          this.#finish(remoteErrorOf(body));
          return;
        default:
          return this.#violation(`unexpected message type ${type} in a VPN session`);
      }
    }
  }

  #violation(detail: string): void {
    this.abort(ErrorCode.protocolViolation, detail, new ProtocolError(detail));
  }

  #startTimer(): void {
    this.#liveness.start(this.#options.keepaliveMs ?? 0, this.#options.idleTimeoutMs ?? 0, {
      listening: () => true,
      expired: (reason, error) => this.abort(ErrorCode.timedOut, reason, error),
      ping: () => {
        this.channel.send(MessageType.ping).catch((err) => this.#finish(err));
      },
    });
  }

  /** Ends the link once: closes the connection after `flushing` (or a grace period). */
  #finish(err: unknown, flushing: Promise<unknown> = Promise.resolve()): void {
    if (this.#ended) return;
    const error = err === null ? null : err instanceof Error ? err : new Error(String(err));
    this.#ended = { error };
    this.#liveness.stop();
    this.#options.onEnd?.(this.#ended);
    this.channel.closeAfter(flushing, CLOSE_GRACE_MS).then(() => this.#resolveEnd(this.#ended!));
  }
}

/**
 * Reads packets from `device` until it closes, or fails (logged on `log`),
 * through one reused buffer, handing each to `deliver` as `packet` and as
 * `plaintext`: the packet behind one spare byte, what
 * {@linkcode VpnLink.sendPacket} takes. `deliver` must not keep either.
 */
export async function readDevicePackets(
  device: TunDevice,
  log: Logger | undefined,
  deliver: (packet: Uint8Array, plaintext: Uint8Array) => void,
): Promise<void> {
  const buffer = new Uint8Array(1 + MAX_DATA_BODY);
  const into = buffer.subarray(1);
  for (;;) {
    let n: number | null;
    try {
      n = await device.read(into);
    } catch (err) {
      log?.error("vpn device read failed", {
        device: device.name,
        error: (err as Error).message,
      });
      return;
    }
    if (n === null) return;
    deliver(into.subarray(0, n), buffer.subarray(0, 1 + n));
  }
}
