/**
 * The client side of one tunnel session: connect to a server, run the
 * handshake under a deadline, and OPEN a target. `forward()` is the Python
 * prototype's one round trip.
 *
 * @example
 * ```ts
 * import { connect, forward } from "./client.ts";
 * const key = crypto.getRandomValues(new Uint8Array(32));
 * const server = { host: "127.0.0.1", port: 8888 };
 * const reply = await forward(new TextEncoder().encode("hi"), { server, key });
 * const session = await connect({ server, key }); // a Session: readable + writable
 * ```
 * @module
 */

import { DEFAULT_HANDSHAKE_TIMEOUT_SECONDS } from "../base/defaults.ts";
import { SecureChannel } from "../protocol/channel.ts";
import { closeQuietly } from "../protocol/conn.ts";
import type { CryptoProvider } from "../protocol/crypto/provider.ts";
import { CipherlinkError, TimeoutError } from "../base/errors.ts";
import { Session, type SessionOptions } from "./session.ts";
import { SERVICE_TARGET, type Target } from "../protocol/target.ts";
import { formatHostPort, type HostPort } from "../protocol/hostport.ts";

/** Where and how to connect; times in milliseconds. */
export interface ConnectOptions extends SessionOptions {
  server: HostPort;
  key: Uint8Array;
  /** The server's own service (default) or an address for OPEN 0x01. */
  target?: Target | HostPort;
  handshakeTimeoutMs?: number;
  rekeyBytes?: number;
  /** Who computes the cryptography (default: Web Crypto; see lib/protocol/crypto/select.ts). */
  provider?: CryptoProvider;
}

/** Default client handshake deadline. */
export const CLIENT_HANDSHAKE_TIMEOUT_MS = DEFAULT_HANDSHAKE_TIMEOUT_SECONDS * 1000;

/**
 * Connects, completes the handshake and sends OPEN. The returned session's
 * `opened` settles with the server's answer; data may be written at once.
 */
export async function connect(options: ConnectOptions): Promise<Session> {
  // Message 1 is made before the connection: the server gives a new
  // connection about a second (--hello-timeout) to deliver it, and a client
  // busy with many handshakes at once (a port forward's burst) could
  // otherwise connect long before its own crypto gets to message 1.
  const hello = await SecureChannel.prepareHello(options.key, {
    rekeyBytes: options.rekeyBytes,
    provider: options.provider,
  });
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({
      hostname: options.server.host,
      port: options.server.port,
    });
  } catch (err) {
    hello.dispose();
    throw new CipherlinkError(
      `cannot connect to the server at ${formatHostPort(options.server)}: ${
        (err as Error).message
      }`,
    );
  }
  conn.setNoDelay(true);
  let timedOut = false;
  const deadline = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, options.handshakeTimeoutMs ?? CLIENT_HANDSHAKE_TIMEOUT_MS);
  try {
    const channel = await hello.run(conn);
    return Session.open(channel, options.target ?? SERVICE_TARGET, options);
  } catch (err) {
    if (timedOut) {
      throw new TimeoutError(
        "the server did not complete the handshake in time",
      );
    }
    closeQuietly(conn);
    throw err;
  } finally {
    clearTimeout(deadline);
  }
}

/**
 * One round trip: sends `data`, half-closes, and resolves everything the
 * server sent before its CLOSE.
 */
export async function forward(
  data: Uint8Array,
  options: ConnectOptions,
): Promise<Uint8Array> {
  const session = await connect(options);
  const writer = session.writable.getWriter();
  const sending = (async () => {
    if (data.byteLength > 0) await writer.write(data);
    await writer.close();
  })();
  sending.catch(() => {});
  const chunks: Uint8Array[] = [];
  for await (const chunk of session.readable) chunks.push(chunk);
  await sending;
  const summary = await session.ended;
  if (summary.error) throw summary.error;
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}
