/**
 * A client's OPEN that the server has received and not yet answered. It
 * holds the connection, so the server's code reads "receive the OPEN;
 * decide; accept or reject" without handing a raw channel around. A pending
 * open is answered exactly once: OPEN_OK through {@linkcode PendingOpen.accept}
 * (or {@linkcode PendingOpen.acceptVpn}), or an ERROR through
 * {@linkcode PendingOpen.reject}; a second answer is a programming error and
 * throws {@linkcode OpenAnsweredError}. One never answered is closed by
 * {@linkcode PendingOpen.close} (also `using`), so an error path cannot leak
 * the connection.
 *
 * @example
 * ```ts
 * import { PendingOpen } from "./pending_open.ts";
 * import { ErrorCode } from "../base/errors.ts";
 * declare const channel: import("../protocol/channel.ts").SecureChannel;
 * using open = await PendingOpen.receive(channel);
 * if (open.target.kind === "vpn") {
 *   await open.reject(ErrorCode.refused, "VPN mode is not enabled on this server");
 * } else {
 *   const session = await open.accept();
 *   await session.closeWrite();
 * }
 * ```
 * @module
 */

import type { SecureChannel } from "../protocol/channel.ts";
import { MessageType } from "../protocol/messages.ts";
import type { Target } from "../protocol/target.ts";
import { receiveOpen, Session, type SessionOptions } from "./session.ts";

/** A second answer to one OPEN (or an answer after close()): a bug in the caller. */
export class OpenAnsweredError extends Error {
  override name = "OpenAnsweredError";
}

/** A received OPEN waiting for its one answer. */
export class PendingOpen {
  /** What the client asked for. */
  readonly target: Target;
  #channel: SecureChannel | null;

  private constructor(channel: SecureChannel, target: Target) {
    this.#channel = channel;
    this.target = target;
  }

  /**
   * Waits for the client's OPEN on a fresh channel. Throws as
   * {@linkcode receiveOpen} does; the channel is then the caller's to close.
   */
  static async receive(channel: SecureChannel): Promise<PendingOpen> {
    return new PendingOpen(channel, await receiveOpen(channel));
  }

  /** Whether the OPEN was answered (or closed unanswered). */
  get answered(): boolean {
    return this.#channel === null;
  }

  /** Answers OPEN_OK and returns the established session. */
  async accept(options: SessionOptions = {}): Promise<Session> {
    const channel = this.#answer();
    try {
      return await Session.accept(channel, options);
    } catch (err) {
      channel.close();
      throw err;
    }
  }

  /**
   * Answers OPEN_OK for a VPN session and hands over the channel its link
   * runs on. OPEN_OK is queued before this returns, so no packet the link
   * sends can overtake it; a failed write ends the link, not this call.
   */
  acceptVpn(): SecureChannel {
    const channel = this.#answer();
    channel.send(MessageType.openOk).catch(() => {});
    return channel;
  }

  /** Answers ERROR `code` with `message` and closes the connection. */
  async reject(code: number, message: string): Promise<void> {
    await Session.reject(this.#answer(), code, message);
  }

  /** Closes the connection without an answer unless it was answered; idempotent. */
  close(): void {
    const channel = this.#channel;
    this.#channel = null;
    channel?.close();
  }

  /** {@linkcode PendingOpen.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #answer(): SecureChannel {
    const channel = this.#channel;
    if (!channel) throw new OpenAnsweredError("this OPEN was already answered or closed");
    this.#channel = null;
    return channel;
  }
}
