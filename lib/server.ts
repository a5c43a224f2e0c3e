/**
 * The Cipherlink server: accepts tunnel connections, runs the handshake under
 * a deadline, admits OPENs by policy, and serves each session with echo, the
 * fixed forward target, or an allowed address. Enforces `--max-conns` and
 * drains on shutdown.
 *
 * @example
 * ```ts
 * import { TunnelServer } from "./server.ts";
 * import { Logger } from "./log.ts";
 * const server = await TunnelServer.start({
 *   listen: { host: "127.0.0.1", port: 0 },
 *   key: crypto.getRandomValues(new Uint8Array(32)),
 *   logger: new Logger("info"),
 * });
 * console.log(server.addr.port);
 * await server.shutdown();
 * ```
 * @module
 */

import { lookup } from "node:dns/promises";
import { AllowList } from "./allow.ts";
import { ReplayGuard, SecureChannel } from "./channel.ts";
import { closeQuietly } from "./conn.ts";
import type { CryptoProvider } from "./crypto/provider.ts";
import { webcrypto } from "./crypto/webcrypto.ts";
import { drain } from "./drain.ts";
import {
  AuthenticationError,
  CipherlinkError,
  ErrorCode,
  LegacyProtocolError,
  ProtocolError,
  TruncationError,
} from "./errors.ts";
import { Logger } from "./log.ts";
import { receiveOpen, Session, type SessionOptions, type SessionSummary } from "./session.ts";
import { echo, splice } from "./splice.ts";
import { openOutcomeFor, TunnelStats } from "./stats.ts";
import { formatHostPort, type HostPort, parseIPv4, parseIPv6, type Target } from "./target.ts";

/** Everything the server needs; times in milliseconds. */
export interface ServerOptions {
  listen: HostPort;
  key: Uint8Array;
  /** Target of OPEN 0x00; echo when absent. */
  forward?: HostPort;
  allow?: AllowList;
  maxConns?: number;
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
  keepaliveMs?: number;
  drainTimeoutMs?: number;
  rekeyBytes?: number;
  logger?: Logger;
  /** Who computes the cryptography (default: Web Crypto; see lib/crypto/select.ts). */
  provider?: CryptoProvider;
}

/** How long the server waits for a target to accept its connection. */
export const UPSTREAM_CONNECT_TIMEOUT_MS = 10_000;

interface Connection {
  conn: Deno.TcpConn;
  session: Session | null;
  done: Promise<void>;
}

/** A running server. */
export class TunnelServer {
  /** The bound address, with the real port. */
  readonly addr: Deno.NetAddr;
  /** Counters for logs and the metrics endpoint. */
  readonly stats: TunnelStats = new TunnelStats();
  /** Resolves when the accept loop has stopped. */
  readonly stopped: Promise<void>;

  #listener: Deno.TcpListener;
  #options: Required<Omit<ServerOptions, "forward">> & { forward?: HostPort };
  #sessionOptions: SessionOptions;
  #connections = new Map<number, Connection>();
  /** Message 1s seen: a replayed one is refused before any crypto. */
  #replays = new ReplayGuard();
  #nextId = 0;
  #draining = false;

  private constructor(listener: Deno.TcpListener, options: ServerOptions) {
    this.#listener = listener;
    this.addr = listener.addr;
    this.#options = {
      allow: new AllowList([]),
      maxConns: 100,
      handshakeTimeoutMs: 5000,
      idleTimeoutMs: 0,
      keepaliveMs: 0,
      drainTimeoutMs: 10000,
      rekeyBytes: 2 ** 30,
      logger: new Logger(),
      provider: webcrypto,
      ...options,
    };
    this.#sessionOptions = {
      keepaliveMs: this.#options.keepaliveMs,
      idleTimeoutMs: this.#options.idleTimeoutMs,
    };
    this.stopped = this.#acceptLoop();
  }

  /** Binds and starts accepting; logs `listening on HOST:PORT`. */
  static start(options: ServerOptions): Promise<TunnelServer> {
    const listener = Deno.listen({
      hostname: options.listen.host,
      port: options.listen.port,
      transport: "tcp",
    });
    const server = new TunnelServer(listener, options);
    server.#log.info(
      `listening on ${formatHostPort({ host: server.addr.hostname, port: server.addr.port })}`,
      {
        service: options.forward ? `forward ${formatHostPort(options.forward)}` : "echo",
        crypto: server.#options.provider.name,
      },
    );
    return Promise.resolve(server);
  }

  /** Whether shutdown() has begun. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Replaces the key for connections accepted from now on; open sessions keep theirs. */
  setKey(key: Uint8Array): void {
    this.#options.key = key;
  }

  /**
   * Stops accepting, lets open sessions finish for up to the drain timeout,
   * then ends the rest with ERROR 6.
   */
  async shutdown(): Promise<void> {
    if (this.#draining) return await this.stopped;
    this.#draining = true;
    this.#listener.close();
    await this.stopped;
    for (const { conn, session } of this.#connections.values()) {
      if (!session) closeQuietly(conn);
    }
    const open = [...this.#connections.values()];
    if (open.length > 0) {
      this.#log.info("draining", {
        sessions: open.length,
        drain_timeout_ms: this.#options.drainTimeoutMs,
      });
    }
    await drain(open.map((c) => c.done), this.#options.drainTimeoutMs, () => {
      for (const { session } of this.#connections.values()) {
        session?.abort(ErrorCode.internal, "server shutting down");
      }
    });
    this.#log.info("stopped");
  }

  get #log(): Logger {
    return this.#options.logger;
  }

  async #acceptLoop(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.#draining || err instanceof Deno.errors.BadResource) return;
        this.#log.error("accept failed", { error: (err as Error).message });
        continue;
      }
      this.stats.connectionsAccepted++;
      if (this.#connections.size >= this.#options.maxConns) {
        this.stats.connectionsRejectedBusy++;
        closeQuietly(conn);
        this.#log.warn("connection refused: max-conns reached", {
          peer: peerOf(conn),
          max_conns: this.#options.maxConns,
          refused_total: this.stats.connectionsRejectedBusy,
        });
        continue;
      }
      const id = ++this.#nextId;
      const entry: Connection = {
        conn,
        session: null,
        done: Promise.resolve(),
      };
      this.#connections.set(id, entry);
      entry.done = this.#serve(id, entry).finally(() => this.#connections.delete(id));
    }
  }

  async #serve(id: number, entry: Connection): Promise<void> {
    const { conn } = entry;
    const peer = peerOf(conn);
    conn.setNoDelay(true);
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      closeQuietly(conn);
    }, this.#options.handshakeTimeoutMs);
    let channel: SecureChannel;
    let target: Target;
    const started = performance.now();
    try {
      channel = await SecureChannel.handshake(
        conn,
        this.#options.key,
        "responder",
        {
          rekeyBytes: this.#options.rekeyBytes,
          replays: this.#replays,
          provider: this.#options.provider,
        },
      );
      target = await receiveOpen(channel);
    } catch (err) {
      if (!timedOut) closeQuietly(conn);
      this.#logHandshakeFailure(id, peer, timedOut ? "timeout" : err);
      return;
    } finally {
      clearTimeout(deadline);
    }
    if (this.#draining) {
      await this.#reject(channel, ErrorCode.internal, "server shutting down");
      return;
    }
    const seconds = (performance.now() - started) / 1000;
    this.stats.handshake("ok", seconds);
    this.#log.debug("handshake ok", { session: id, peer, ms: Math.round(seconds * 1000) });
    const summary = await this.#dispatch(id, peer, channel, target, entry);
    if (summary) this.#logSessionEnd(id, peer, summary);
  }

  async #dispatch(
    id: number,
    peer: string,
    channel: SecureChannel,
    target: Target,
    entry: Connection,
  ): Promise<SessionSummary | null> {
    let upstream: Deno.TcpConn | null = null;
    let targetText = "echo";
    if (target.kind === "address" || this.#options.forward) {
      const wanted = target.kind === "address" ? target : this.#options.forward!;
      targetText = formatHostPort(wanted);
      let host: string | null = wanted.host;
      if (target.kind === "address") {
        host = await this.#options.allow.decide(wanted.host, wanted.port);
        if (host === null) {
          this.#log.warn("open refused by policy", { session: id, peer, target: targetText });
          await this.#reject(channel, ErrorCode.refused, `target ${targetText} is not allowed`);
          return null;
        }
      }
      try {
        upstream = await connectUpstream(host, wanted.port);
        upstream.setNoDelay(true);
      } catch (err) {
        const timedOut = err instanceof DOMException && err.name === "TimeoutError";
        this.#log.warn("target unreachable", {
          session: id,
          peer,
          target: targetText,
          error: timedOut ? "connect timed out" : (err as Error).message,
        });
        // The SOCKS client maps "refused" to reply 0x05, anything else to 0x04.
        const why = err instanceof Deno.errors.ConnectionRefused
          ? `connection refused by ${targetText}`
          : `cannot reach ${targetText}`;
        await this.#reject(
          channel,
          timedOut ? ErrorCode.timedOut : ErrorCode.unreachable,
          timedOut ? `timed out connecting to ${targetText}` : why,
        );
        return null;
      }
    }
    let session: Session;
    try {
      session = await Session.accept(channel, this.#sessionOptions);
    } catch {
      if (upstream) closeQuietly(upstream);
      channel.close();
      return null;
    }
    entry.session = session;
    this.stats.open("ok");
    this.stats.sessionStarted(session);
    this.#log.info("session open", { session: id, peer, target: targetText });
    const summary = upstream ? await splice(session, upstream) : await echo(session);
    this.stats.sessionEnded(session, summary);
    return summary;
  }

  /** Answers an OPEN with ERROR `code`, counting the outcome. */
  #reject(channel: SecureChannel, code: number, message: string): Promise<void> {
    this.stats.open(openOutcomeFor(code));
    return Session.reject(channel, code, message);
  }

  #logHandshakeFailure(id: number, peer: string, failure: unknown): void {
    if (failure === "timeout") {
      this.stats.handshake("timeout");
      this.#log.info("handshake timed out", { session: id, peer });
      return;
    }
    this.stats.handshake(failure instanceof AuthenticationError ? "bad_key" : "malformed");
    const reason = failure instanceof Error ? failure.message : String(failure);
    if (failure instanceof LegacyProtocolError) {
      this.#log.warn(
        "dropped a legacy version-1 packet (the Python prototype format)",
        { session: id, peer },
      );
    } else if (
      failure instanceof AuthenticationError || failure instanceof ProtocolError
    ) {
      this.#log.info("handshake failed", { session: id, peer, error: reason });
    } else if (
      failure instanceof TruncationError || failure instanceof CipherlinkError
    ) {
      this.#log.debug("connection ended during handshake", {
        session: id,
        peer,
        error: reason,
      });
    } else {
      this.#log.info("handshake failed", { session: id, peer, error: reason });
    }
  }

  #logSessionEnd(id: number, peer: string, summary: SessionSummary): void {
    const fields = {
      session: id,
      peer,
      bytes_in: summary.bytesIn,
      bytes_out: summary.bytesOut,
      rekeys_sent: summary.rekeysSent,
      rekeys_received: summary.rekeysReceived,
      outcome: summary.error ? "error" : "ok",
      error: summary.error?.message,
    };
    if (summary.error) this.#log.warn("session end", fields);
    else this.#log.info("session end", fields);
  }
}

/**
 * Connects to a target. A name is resolved the way the system does it
 * (/etc/hosts included) and every address is tried in turn, so `localhost`
 * works whether it lists ::1 or 127.0.0.1 first. One deadline covers all.
 */
async function connectUpstream(host: string, port: number): Promise<Deno.TcpConn> {
  const signal = AbortSignal.timeout(UPSTREAM_CONNECT_TIMEOUT_MS);
  if (parseIPv4(host) || parseIPv6(host)) {
    return await Deno.connect({ hostname: host, port, signal });
  }
  const addresses = await lookup(host, { all: true, verbatim: true });
  let failure: unknown = new Deno.errors.NotFound(`${host} has no address`);
  for (const { address } of addresses) {
    try {
      return await Deno.connect({ hostname: address, port, signal });
    } catch (err) {
      failure = err;
      if (signal.aborted) break;
    }
  }
  throw failure;
}

function peerOf(conn: Deno.Conn): string {
  const addr = conn.remoteAddr as Deno.NetAddr;
  return formatHostPort({ host: addr.hostname, port: addr.port });
}
