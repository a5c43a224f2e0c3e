/**
 * The listening machinery the tunnel server and the client's local listener
 * share: the accept loop (accept errors logged by the owner, a closed
 * listener ending the loop), and the shutdown state around the drain
 * (`draining` at once, one drain however often shutdown() is called, and
 * endNow() to cut its delay and deadline short). What each does with a
 * connection, and how it drains, stays with its owner.
 *
 * @example
 * ```ts
 * import { DrainableListener } from "./listener.ts";
 * const listening = new DrainableListener(
 *   Deno.listen({ hostname: "127.0.0.1", port: 0 }),
 *   { accepted: (conn) => conn.close(), failed: () => {} },
 *   async () => await listening.close(),
 * );
 * await listening.shutdown({ delay: false });
 * ```
 * @module
 */

import type { Logger } from "../base/log.ts";
import { formatHostPort } from "../protocol/hostport.ts";
import type { ShutdownOptions } from "./drain.ts";
import type { SessionSummary } from "./session.ts";

/** What the accept loop does with what accept() gives it. */
export interface AcceptHandlers {
  /** Takes one accepted connection (synchronously: serving it is the owner's own promise). */
  accepted(conn: Deno.TcpConn): void;
  /** An accept() failed while the listener is open; the loop goes on once this resolves. */
  failed(err: Error): Promise<void> | void;
  /**
   * Yield to the event loop every this many accepts, so that under a flood
   * of connections reads still get their turn (never, when unset).
   */
  yieldEvery?: number;
}

/** A TCP listener with its accept loop and its drain-on-shutdown state. */
export class DrainableListener {
  /** The bound address, with the real port. */
  readonly addr: Deno.NetAddr;
  /** Resolves when the accept loop has stopped. */
  readonly stopped: Promise<void>;
  #listener: Deno.TcpListener;
  #closed = false;
  #draining = false;
  #shutdown: Promise<void> | null = null;
  /** Aborted by endNow(): the drain's delay and deadline end at once. */
  #hurry = new AbortController();
  #drain: (delay: boolean, hurry: AbortSignal) => Promise<void>;

  /**
   * Starts accepting on `listener`. `drain` runs once, on the first
   * shutdown(): `delay` says whether to keep accepting for the drain delay,
   * `hurry` aborts when endNow() is called; it closes the listener with
   * {@linkcode close} when it is time.
   */
  constructor(
    listener: Deno.TcpListener,
    handlers: AcceptHandlers,
    drain: (delay: boolean, hurry: AbortSignal) => Promise<void>,
  ) {
    this.#listener = listener;
    this.addr = listener.addr;
    this.#drain = drain;
    this.stopped = this.#acceptLoop(handlers);
  }

  /** Whether shutdown() has begun. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Starts the drain (once; later calls return the same one). */
  shutdown(options: ShutdownOptions = {}): Promise<void> {
    this.#draining = true;
    this.#shutdown ??= this.#drain(options.delay ?? true, this.#hurry.signal);
    return this.#shutdown;
  }

  /** Ends a drain at once (a second SIGTERM/SIGINT): no more delay, no more deadline. */
  endNow(): Promise<void> {
    this.#hurry.abort();
    return this.shutdown();
  }

  /** Stops accepting; resolves when the accept loop has stopped. */
  close(): Promise<void> {
    this.#closed = true;
    this.#listener.close();
    return this.stopped;
  }

  async #acceptLoop(handlers: AcceptHandlers): Promise<void> {
    for (let count = 1;; count++) {
      if (handlers.yieldEvery && count % handlers.yieldEvery === 0) {
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.#closed || err instanceof Deno.errors.BadResource) return;
        await handlers.failed(err as Error);
        continue;
      }
      handlers.accepted(conn);
    }
  }
}

/**
 * Logs `session end`: `who` (the session's id, peer, target) then the
 * summary's byte and REKEY counts and outcome; at warn when it ended with an
 * error, else at info.
 */
export function logSessionEnd(
  log: Logger,
  who: Record<string, string | number>,
  summary: SessionSummary,
): void {
  const fields = {
    ...who,
    bytes_in: summary.bytesIn,
    bytes_out: summary.bytesOut,
    rekeys_sent: summary.rekeysSent,
    rekeys_received: summary.rekeysReceived,
    outcome: summary.error ? "error" : "ok",
    error: summary.error?.message,
  };
  if (summary.error) log.warn("session end", fields);
  else log.info("session end", fields);
}

/** `HOST:PORT` of a connection's remote end, for logs. */
export function peerOf(conn: Deno.Conn): string {
  const addr = conn.remoteAddr as Deno.NetAddr;
  return formatHostPort({ host: addr.hostname, port: addr.port });
}
