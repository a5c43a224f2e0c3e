/**
 * The client's local listeners: port forwarding (`--listen`) and the SOCKS5
 * proxy (`--socks`). Every accepted local connection becomes its own tunnel
 * session, spliced to the local socket; `--max-conns` caps them and shutdown
 * drains them.
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

import { connect, type ConnectOptions } from "./client.ts";
import { closeQuietly } from "./conn.ts";
import { webcrypto } from "./crypto/webcrypto.ts";
import { drain } from "./drain.ts";
import {
  AuthenticationError,
  ErrorCode,
  ProtocolError,
  RemoteError,
  TimeoutError,
  TruncationError,
} from "./errors.ts";
import { Logger } from "./log.ts";
import type { Session } from "./session.ts";
import { acceptSocks, replySocks, SocksError, SocksReply, socksReplyFor } from "./socks.ts";
import { splice } from "./splice.ts";
import { openOutcomeFor, TunnelStats } from "./stats.ts";
import { formatHostPort, type HostPort } from "./target.ts";

/** Local listener settings; times in milliseconds. */
export interface ForwarderOptions {
  listen: HostPort;
  /** "forward": every connection opens `connect.target`; "socks": the SOCKS request decides. */
  mode: "forward" | "socks";
  connect: ConnectOptions;
  maxConns?: number;
  drainTimeoutMs?: number;
  logger?: Logger;
}

interface Local {
  conn: Deno.TcpConn;
  session: Session | null;
  done: Promise<void>;
}

/** A running local listener. */
export class LocalForwarder {
  readonly addr: Deno.NetAddr;
  /** Counters for logs and the metrics endpoint. */
  readonly stats: TunnelStats = new TunnelStats();
  readonly stopped: Promise<void>;
  #listener: Deno.TcpListener;
  #options: ForwarderOptions;
  #log: Logger;
  #locals = new Map<number, Local>();
  #nextId = 0;
  #draining = false;

  private constructor(listener: Deno.TcpListener, options: ForwarderOptions) {
    this.#listener = listener;
    this.addr = listener.addr;
    this.#options = options;
    this.#log = options.logger ?? new Logger();
    this.stopped = this.#acceptLoop();
  }

  /** Binds and starts accepting; logs `listening on HOST:PORT`. */
  static start(options: ForwarderOptions): LocalForwarder {
    const listener = Deno.listen({
      hostname: options.listen.host,
      port: options.listen.port,
      transport: "tcp",
    });
    const forwarder = new LocalForwarder(listener, options);
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
    return this.#draining;
  }

  /** Replaces the key for sessions opened from now on; open sessions keep theirs. */
  setKey(key: Uint8Array): void {
    this.#options = { ...this.#options, connect: { ...this.#options.connect, key } };
  }

  /** Stops accepting, drains open sessions, then aborts the rest (ERROR 6). */
  async shutdown(): Promise<void> {
    if (this.#draining) return await this.stopped;
    this.#draining = true;
    this.#listener.close();
    await this.stopped;
    const open = [...this.#locals.values()];
    await drain(open.map((l) => l.done), this.#options.drainTimeoutMs ?? 10000, () => {
      for (const local of this.#locals.values()) {
        if (local.session) local.session.abort(ErrorCode.internal, "client shutting down");
        else closeQuietly(local.conn);
      }
    });
    this.#log.info("stopped");
  }

  async #acceptLoop(): Promise<void> {
    const maxConns = this.#options.maxConns ?? 100;
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
      if (this.#locals.size >= maxConns) {
        this.stats.connectionsRejectedBusy++;
        closeQuietly(conn);
        this.#log.warn("local connection refused: max-conns reached", {
          max_conns: maxConns,
          refused_total: this.stats.connectionsRejectedBusy,
        });
        continue;
      }
      const id = ++this.#nextId;
      const local: Local = { conn, session: null, done: Promise.resolve() };
      this.#locals.set(id, local);
      local.done = this.#serve(id, local).finally(() => {
        closeQuietly(conn);
        this.#locals.delete(id);
      });
    }
  }

  async #serve(id: number, local: Local): Promise<void> {
    const { conn } = local;
    const peer = formatHostPort({
      host: (conn.remoteAddr as Deno.NetAddr).hostname,
      port: (conn.remoteAddr as Deno.NetAddr).port,
    });
    conn.setNoDelay(true);
    let target = this.#options.connect.target;
    if (this.#options.mode === "socks") {
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
      }
    }
    const targetText = target && "host" in target ? formatHostPort(target) : "service";
    let session: Session;
    const started = performance.now();
    try {
      session = await connect({ ...this.#options.connect, target });
      this.stats.handshake("ok", (performance.now() - started) / 1000);
      session.opened.then(
        () => this.stats.open("ok"),
        (err) => err instanceof RemoteError && this.stats.open(openOutcomeFor(err.code)),
      );
      if (this.#options.mode === "socks") {
        await session.opened;
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
    this.#log.info("session open", { local: id, peer, target: targetText });
    const summary = await splice(session, conn);
    this.stats.sessionEnded(session, summary);
    const fields = {
      local: id,
      peer,
      target: targetText,
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
