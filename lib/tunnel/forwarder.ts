/**
 * The client's local listeners: port forwarding (`--listen`) and the SOCKS5
 * proxy (`--socks`). Every accepted local connection becomes its own tunnel
 * session, spliced to the local socket; `--max-conns` caps them and shutdown
 * drains them (accepting on for the drain delay, then a deadline).
 *
 * @example
 * ```ts
 * import { LocalForwarder } from "./forwarder.ts";
 * const forwarder = LocalForwarder.start({
 *   listen: { host: "127.0.0.1", port: 7000 },
 *   mode: "forward",
 *   connect: { server: { host: "127.0.0.1", port: 8888 }, key: new Uint8Array(32) },
 * });
 * await forwarder.shutdown();
 * ```
 * @module
 */

import { DEFAULT_DRAIN_TIMEOUT_SECONDS, DEFAULT_MAX_CONNS } from "../base/defaults.ts";
import { connect, type ConnectOptions } from "./client.ts";
import { KeySlot } from "./key_slot.ts";
import { closeQuietly } from "../protocol/conn.ts";
import { webcrypto } from "../protocol/crypto/webcrypto.ts";
import { drainListener, type ShutdownOptions } from "./drain.ts";
import { DrainableListener, logSessionEnd, peerOf } from "./listener.ts";
import {
  AuthenticationError,
  ErrorCode,
  ProtocolError,
  RemoteError,
  TimeoutError,
  TruncationError,
} from "../base/errors.ts";
import { Logger } from "../base/log.ts";
import type { Session } from "./session.ts";
import {
  acceptSocks,
  isLoopbackHost,
  replySocks,
  SOCKS_NEGOTIATION_TIMEOUT_MS,
  SOCKS_OPEN_TIMEOUT_MS,
  SocksError,
  SocksReply,
  socksReplyFor,
} from "./socks.ts";
import { splice } from "./splice.ts";
import { openOutcomeFor, TunnelStats } from "./stats.ts";
import { formatHostPort, type HostPort } from "../protocol/hostport.ts";

/** Local listener settings; times in milliseconds. */
export interface ForwarderOptions {
  listen: HostPort;
  /** "forward": every connection opens `connect.target`; "socks": the SOCKS request decides. */
  mode: "forward" | "socks";
  connect: ConnectOptions;
  maxConns?: number;
  drainTimeoutMs?: number;
  /** How long shutdown() keeps accepting before it closes the listener (default 0). */
  drainDelayMs?: number;
  /** SOCKS mode: the deadline for negotiation and request (default SOCKS_NEGOTIATION_TIMEOUT_MS). */
  socksNegotiationTimeoutMs?: number;
  /** SOCKS mode: the deadline for the server's OPEN_OK (default SOCKS_OPEN_TIMEOUT_MS). */
  socksOpenTimeoutMs?: number;
  logger?: Logger;
}

interface Local {
  conn: Deno.TcpConn;
  session: Session | null;
  done: Promise<void>;
  /** splice() closed the connection: closing it again would throw (and build an error) per session. */
  closed: boolean;
}

/** A running local listener. */
export class LocalForwarder {
  readonly addr: Deno.NetAddr;
  /** Counters for logs and the metrics endpoint. */
  readonly stats: TunnelStats = new TunnelStats();
  readonly stopped: Promise<void>;
  #listening: DrainableListener;
  #options: Omit<ForwarderOptions, "connect">;
  /** How to reach the server; the key lives only in #keys. */
  #connect: Omit<ConnectOptions, "key">;
  #keys: KeySlot;
  #log: Logger;
  #locals = new Map<number, Local>();
  #nextId = 0;

  private constructor(listener: Deno.TcpListener, options: ForwarderOptions) {
    this.addr = listener.addr;
    const { connect: { key, ...connectOptions }, ...rest } = options;
    this.#options = rest;
    this.#connect = connectOptions;
    this.#keys = new KeySlot(key);
    this.#log = options.logger ?? new Logger();
    this.#listening = new DrainableListener(listener, {
      accepted: (conn) => this.#accepted(conn),
      failed: (err) => this.#log.error("accept failed", { error: err.message }),
    }, (delay, hurry) => this.#drain(delay, hurry));
    this.stopped = this.#listening.stopped;
  }

  /** Binds and starts accepting; logs `listening on HOST:PORT`. */
  static start(options: ForwarderOptions): LocalForwarder {
    const listener = Deno.listen({
      hostname: options.listen.host,
      port: options.listen.port,
      transport: "tcp",
    });
    const forwarder = new LocalForwarder(listener, options);
    if (options.mode === "socks" && !isLoopbackHost(options.listen.host)) {
      forwarder.#log.warn(
        "the SOCKS5 proxy listens beyond this machine and SOCKS5 has no authentication: " +
          "anyone who can reach it can use the tunnel with your key",
        { listen: formatHostPort(options.listen) },
      );
    }
    const { host, port } = options.connect.server;
    forwarder.#log.info(
      `listening on ${
        formatHostPort({
          host: forwarder.addr.hostname,
          port: forwarder.addr.port,
        })
      }`,
      {
        mode: options.mode,
        server: formatHostPort({ host, port }),
        crypto: (options.connect.provider ?? webcrypto).name,
      },
    );
    return forwarder;
  }

  /** Whether shutdown() has begun. */
  get draining(): boolean {
    return this.#listening.draining;
  }

  /**
   * Replaces the key for sessions opened from now on; open sessions keep
   * theirs. Resolves once no handshake reads the replaced key any more: its
   * owner may zero it then.
   */
  setKey(key: Uint8Array): Promise<void> {
    return this.#keys.replace(key);
  }

  /**
   * Drains: `draining` turns true at once (/healthz answers 503), the
   * listener keeps accepting for the drain delay (unless `delay: false`),
   * then closes; every local connection accepted by then is served for up
   * to the drain timeout; then the rest are ended (ERROR 6 for sessions).
   * Calling it again returns the same drain.
   */
  shutdown(options: ShutdownOptions = {}): Promise<void> {
    return this.#listening.shutdown(options);
  }

  /** Ends a drain at once (a second SIGTERM/SIGINT): no more delay, no more deadline. */
  endNow(): Promise<void> {
    return this.#listening.endNow();
  }

  #drain(delay: boolean, hurry: AbortSignal): Promise<void> {
    return drainListener({
      delayMs: delay ? this.#options.drainDelayMs ?? 0 : 0,
      timeoutMs: this.#options.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_SECONDS * 1000,
      hurry,
      closeListener: () => this.#listening.close(),
      accepted: () => this.#locals.values(),
      abortMessage: "client shutting down",
      stats: this.stats,
      log: this.#log,
    });
  }

  #accepted(conn: Deno.TcpConn): void {
    const maxConns = this.#options.maxConns ?? DEFAULT_MAX_CONNS;
    this.stats.connectionsAccepted++;
    if (this.#locals.size >= maxConns) {
      this.stats.connectionsRejectedBusy++;
      closeQuietly(conn);
      this.#log.warn("local connection refused: max-conns reached", {
        max_conns: maxConns,
        refused_total: this.stats.connectionsRejectedBusy,
      });
      return;
    }
    const id = ++this.#nextId;
    const local: Local = { conn, session: null, done: Promise.resolve(), closed: false };
    this.#locals.set(id, local);
    local.done = this.#serve(id, local).finally(() => {
      if (!local.closed) closeQuietly(conn);
      this.#locals.delete(id);
    });
  }

  async #serve(id: number, local: Local): Promise<void> {
    const { conn } = local;
    const peer = peerOf(conn);
    conn.setNoDelay(true);
    let target = this.#connect.target;
    if (this.#options.mode === "socks") {
      // A local application that stalls mid-negotiation is closed, not waited for.
      const negotiation = setTimeout(
        () => closeQuietly(conn),
        this.#options.socksNegotiationTimeoutMs ?? SOCKS_NEGOTIATION_TIMEOUT_MS,
      );
      try {
        const request = await acceptSocks(conn);
        if (!request) return;
        target = request;
      } catch (err) {
        this.#log.info("socks negotiation failed", {
          local: id,
          peer,
          error: err instanceof SocksError ? err.message : String(err),
        });
        return;
      } finally {
        clearTimeout(negotiation);
      }
    }
    const targetText = target && "host" in target ? formatHostPort(target) : "service";
    let session: Session;
    const started = performance.now();
    try {
      session = await this.#keys.withKey((key) => connect({ ...this.#connect, key, target }));
      this.stats.handshake("ok", (performance.now() - started) / 1000);
      session.opened.then(
        () => this.stats.open("ok"),
        (err) => err instanceof RemoteError && this.stats.open(openOutcomeFor(err.code)),
      );
      if (this.#options.mode === "socks") {
        const limitMs = this.#options.socksOpenTimeoutMs ?? SOCKS_OPEN_TIMEOUT_MS;
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            const error = new TimeoutError(`the server did not answer OPEN within ${limitMs} ms`);
            session.abort(ErrorCode.timedOut, "no answer to OPEN", error);
            reject(error);
          }, limitMs);
        });
        try {
          await Promise.race([session.opened, late]);
        } finally {
          clearTimeout(timer);
        }
        await replySocks(conn, SocksReply.succeeded);
      }
    } catch (err) {
      if (err instanceof AuthenticationError) this.stats.handshake("bad_key");
      else if (err instanceof TimeoutError) this.stats.handshake("timeout");
      else if (err instanceof ProtocolError || err instanceof TruncationError) {
        this.stats.handshake("malformed");
      }
      this.#log.warn("tunnel open failed", {
        local: id,
        peer,
        target: targetText,
        error: (err as Error).message,
      });
      if (this.#options.mode === "socks") {
        await replySocks(conn, socksReplyFor(err)).catch(() => {});
      }
      return;
    }
    local.session = session;
    this.stats.sessionStarted(session);
    // Open once the server said OPEN_OK: a refused target ends in "session end" with its ERROR.
    session.opened.then(
      () => this.#log.info("session open", { local: id, peer, target: targetText }),
      () => {},
    );
    const summary = await splice(session, conn);
    local.closed = true;
    this.stats.sessionEnded(session, summary);
    logSessionEnd(this.#log, { local: id, peer, target: targetText }, summary);
  }
}
