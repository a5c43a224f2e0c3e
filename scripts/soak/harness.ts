/**
 * In-process peers over in-memory connections, shaped like the real ones:
 * an echo server that does what TunnelServer does for OPEN 0x00 (handshake
 * and OPEN under a deadline, then echo with an idle timeout), and a client
 * that does what `cipherlink client MESSAGE` does.
 * @module
 */

import { concat, equalBytes } from "../../lib/base/bytes.ts";
import { SecureChannel } from "../../lib/protocol/channel.ts";
import { closeQuietly, type Connection } from "../../lib/protocol/conn.ts";
import { ErrorCode } from "../../lib/base/errors.ts";
import { receiveOpen, Session } from "../../lib/tunnel/session.ts";
import { echo } from "../../lib/tunnel/splice.ts";
import { SERVICE_TARGET } from "../../lib/protocol/target.ts";

/** Deadlines of the in-process peers (short: they stand in for the real ones). */
export interface Limits {
  handshakeMs: number;
  idleMs: number;
}

/** How the server side of one connection ended. */
export interface ServerResult {
  /** The handshake completed and a valid OPEN was accepted. */
  opened: boolean;
  /** null for a clean end; "deadline" when the handshake deadline closed it. */
  error: unknown;
}

/** TunnelServer's path for one connection, with the echo service. */
export async function serveEcho(
  conn: Connection,
  psk: Uint8Array,
  limits: Limits,
): Promise<ServerResult> {
  let timedOut = false;
  const deadline = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, limits.handshakeMs);
  let channel: SecureChannel;
  try {
    channel = await SecureChannel.handshake(conn, psk, "responder");
    const target = await receiveOpen(channel);
    if (target.kind !== "service") {
      await Session.reject(channel, ErrorCode.refused, "not allowed");
      return { opened: false, error: "refused" };
    }
  } catch (err) {
    if (!timedOut) closeQuietly(conn);
    return { opened: false, error: timedOut ? "deadline" : err };
  } finally {
    clearTimeout(deadline);
  }
  let session: Session;
  try {
    session = await Session.accept(channel, { idleTimeoutMs: limits.idleMs });
  } catch (err) {
    channel.close();
    return { opened: true, error: err };
  }
  const summary = await echo(session);
  return { opened: true, error: summary.error };
}

/** What the client side of one connection saw. */
export interface ClientResult {
  received: Uint8Array;
  error: unknown;
}

/**
 * The one-shot client: handshake under a deadline, OPEN 0x00, send `payload`,
 * CLOSE, and collect everything until the server's CLOSE.
 */
export async function runClient(
  conn: Connection,
  psk: Uint8Array,
  payload: Uint8Array,
  limits: Limits,
): Promise<ClientResult> {
  let timedOut = false;
  const deadline = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, limits.handshakeMs);
  let session: Session;
  try {
    const channel = await SecureChannel.handshake(conn, psk, "initiator");
    session = Session.open(channel, SERVICE_TARGET, { idleTimeoutMs: limits.idleMs });
  } catch (err) {
    if (!timedOut) closeQuietly(conn);
    return { received: new Uint8Array(0), error: timedOut ? "deadline" : err };
  } finally {
    clearTimeout(deadline);
  }
  const writer = session.writable.getWriter();
  const sending = writer.write(payload).then(() => writer.close());
  sending.catch(() => {});
  const chunks: Uint8Array[] = [];
  let readError: unknown = null;
  try {
    for await (const chunk of session.readable) chunks.push(chunk.slice());
  } catch (err) {
    readError = err;
  }
  const summary = await session.ended;
  return { received: concat(chunks), error: summary.error ?? readError };
}

/** Whether `part` is a prefix of `whole`. */
export function isPrefix(part: Uint8Array, whole: Uint8Array): boolean {
  return part.byteLength <= whole.byteLength &&
    equalBytes(part, whole.subarray(0, part.byteLength));
}
