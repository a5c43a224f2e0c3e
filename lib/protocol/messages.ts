/**
 * The types of the transport plaintexts (`type || body`, protocol-v2.md
 * section 3): what the channel carries for the sessions and VPN links.
 *
 * @example
 * ```ts
 * import { MessageType } from "./messages.ts";
 * const ping = Uint8Array.of(MessageType.ping);
 * ```
 * @module
 */

/** Transport plaintext types (protocol section 3). */
export const MessageType = {
  open: 1,
  openOk: 2,
  data: 3,
  close: 4,
  ping: 5,
  pong: 6,
  rekey: 7,
  error: 8,
} as const;

/** The longest PING body (protocol section 3); PONG echoes it. */
export const MAX_PING_BODY = 8;
