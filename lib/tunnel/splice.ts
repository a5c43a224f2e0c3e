/**
 * Session services: echo, and splicing a session to a plain TCP connection
 * (the server's forward target, or a client's local application).
 *
 * Both directions run at once and carry half-closes through: the TCP side's
 * EOF becomes CLOSE, the peer's CLOSE becomes a TCP FIN (`closeWrite`).
 * Backpressure crosses too: nothing is read from one side faster than the
 * other side accepts it. Plain pumps over the connection, no web streams.
 *
 * @example
 * ```ts
 * import { splice } from "./splice.ts";
 * // session: a Session from Session.open or Session.accept
 * // const upstream = await Deno.connect({ hostname: "127.0.0.1", port: 6379 });
 * // await splice(session, upstream);
 * ```
 * @module
 */

import { closeQuietly, type Connection } from "../protocol/conn.ts";
import type { Session, SessionSummary } from "./session.ts";

/**
 * Echo service: every DATA comes back in order; the peer's CLOSE is answered
 * with CLOSE after the echoes.
 */
export async function echo(session: Session): Promise<SessionSummary> {
  try {
    for (let body; (body = await session.read()) !== null;) await session.write(body);
    await session.closeWrite();
  } catch {
    // The session ended with an error: `ended` reports it.
  }
  return await session.ended;
}

/**
 * Splices a session and a TCP connection until both directions are done or
 * either fails; closes the TCP connection at the end. Resolves how the
 * session ended.
 */
export async function splice(session: Session, conn: Connection): Promise<SessionSummary> {
  // A failed session ends both directions at once: closing the socket wakes
  // a read that would otherwise wait for a local application that is idle.
  session.ended.then(({ error }) => error && closeQuietly(conn));
  const toTunnel = session.pumpFrom(conn);
  const fromTunnel = session.pumpTo(conn).then(() => conn.closeWrite());
  const outcome = await Promise.allSettled([toTunnel, fromTunnel]);
  const failure = outcome.find((o): o is PromiseRejectedResult => o.status === "rejected");
  if (failure) {
    session.drop(
      failure.reason instanceof Error ? failure.reason : new Error(String(failure.reason)),
    );
  }
  closeQuietly(conn);
  return await session.ended;
}
