/**
 * The Cipherlink server: accepts tunnel connections, runs the handshake under
 * a deadline, admits OPENs by policy, and serves each session with echo, the
 * fixed forward target, or an allowed address. Enforces `--max-conns` and
 * drains on shutdown: accepting on for the drain delay, then serving every
 * accepted connection to its end until the drain timeout.
 *
 * @example
 * ```ts
 * import { TunnelServer } from "./server.ts";
 * import { Logger } from "../base/log.ts";
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

import {
  DEFAULT_DRAIN_TIMEOUT_SECONDS,
  DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
  DEFAULT_MAX_CONNS,
} from "../base/defaults.ts";
import { AllowList } from "./allow.ts";
import { KeySlot } from "./key_slot.ts";
import { DEFAULT_REKEY_BYTES, SecureChannel } from "../protocol/channel.ts";
import { ReplayGuard } from "../protocol/replay.ts";
import { closeQuietly } from "../protocol/conn.ts";
import type { CryptoProvider } from "../protocol/crypto/provider.ts";
import { webcrypto } from "../protocol/crypto/webcrypto.ts";
import { drainListener, type ShutdownOptions } from "./drain.ts";
import { DrainableListener, logSessionEnd, peerOf } from "./listener.ts";
import {
  AuthenticationError,
  CipherlinkError,
  ErrorCode,
  LegacyProtocolError,
  ProtocolError,
  targetRefusedDetail,
  TimeoutError,
  TruncationError,
} from "../base/errors.ts";
import { EventAggregator, Logger } from "../base/log.ts";
import {
  DEFAULT_HELLO_TIMEOUT_MS,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_PENDING_PER_SOURCE,
  PendingBudget,
} from "./pending.ts";
import { Session, type SessionOptions, type SessionSummary } from "./session.ts";
import { PendingOpen } from "./pending_open.ts";
import { echo, splice } from "./splice.ts";
import { openOutcomeFor, TunnelStats } from "./stats.ts";
import { canonicalHost } from "../protocol/address.ts";
import { formatHostPort, type HostPort } from "../protocol/hostport.ts";
import type { VpnService } from "./vpn_server.ts";
import { connectAddresses, systemResolver } from "./resolve.ts";

/** Everything the server needs; times in milliseconds. */
export interface ServerOptions {
  listen: HostPort;
  key: Uint8Array;
  /** Target of OPEN 0x00; echo when absent. */
  forward?: HostPort;
  allow?: AllowList;
  /** Authenticated connections (message 1 verified); past it a key holder gets ERROR 4. */
  maxConns?: number;
  /** Connections whose message 1 has not verified yet; past it the oldest is dropped. */
  maxPending?: number;
  /** The share of maxPending one source address may hold. */
  maxPendingPerSource?: number;
  /** How long a new connection has to deliver a complete message 1. */
  helloTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
  keepaliveMs?: number;
  drainTimeoutMs?: number;
  /** How long shutdown() keeps accepting before it closes the listener (default 0). */
  drainDelayMs?: number;
  rekeyBytes?: number;
  logger?: Logger;
  /**
   * VPN mode: the device and pool that OPEN 0x02 sessions use (refused
   * without it). shutdown() closes it: its sessions get CLOSE at once.
   */
  vpn?: VpnService;
  /** Who computes the cryptography (default: Web Crypto; see lib/protocol/crypto/select.ts). */
  provider?: CryptoProvider;
}

export { UPSTREAM_CONNECT_TIMEOUT_MS } from "./resolve.ts";

/** Connections accepted in a row before the accept loop lets other events run. */
const ACCEPTS_PER_TURN = 64;

interface Connection {
  conn: Deno.TcpConn;
  session: Session | null;
  done: Promise<void>;
  /** Message 1 verified: it counts against maxConns. */
  authenticated: boolean;
  /** Dropped by the pending budget to make room. */
  evicted: boolean;
}

/** A running server. */
export class TunnelServer {
  /** The bound address, with the real port. */
  readonly addr: Deno.NetAddr;
  /** Counters for logs and the metrics endpoint. */
  readonly stats: TunnelStats = new TunnelStats();
  /** Resolves when the accept loop has stopped. */
  readonly stopped: Promise<void>;

  #listening: DrainableListener;
  #options: Required<Omit<ServerOptions, "forward" | "vpn" | "key">> & {
    forward?: HostPort;
    vpn?: VpnService;
  };
  #sessionOptions: SessionOptions;
  #keys: KeySlot;
  #connections = new Map<number, Connection>();
  /** Message 1s seen: a replayed one is refused before any crypto. */
  #replays = new ReplayGuard();
  #pending: PendingBudget;
  #authenticated = 0;
  #unauthenticated: EventAggregator;
  #nextId = 0;
  /** The --forward host as its one address when it is a literal: canonicalised once, not per session. */
  #forwardLiteral: string[] | null = null;

  private constructor(listener: Deno.TcpListener, { key, ...options }: ServerOptions) {
    this.addr = listener.addr;
    // The key lives only in the slot: a replaced one is referenced by nothing here.
    this.#keys = new KeySlot(key);
    this.#options = {
      allow: new AllowList([]),
      maxConns: DEFAULT_MAX_CONNS,
      maxPending: DEFAULT_MAX_PENDING,
      maxPendingPerSource: DEFAULT_MAX_PENDING_PER_SOURCE,
      helloTimeoutMs: DEFAULT_HELLO_TIMEOUT_MS,
      handshakeTimeoutMs: DEFAULT_HANDSHAKE_TIMEOUT_SECONDS * 1000,
      idleTimeoutMs: 0,
      keepaliveMs: 0,
      drainTimeoutMs: DEFAULT_DRAIN_TIMEOUT_SECONDS * 1000,
      drainDelayMs: 0,
      rekeyBytes: DEFAULT_REKEY_BYTES,
      logger: new Logger(),
      provider: webcrypto,
      ...options,
    };
    this.#pending = new PendingBudget(
      this.#options.maxPending,
      this.#options.maxPendingPerSource,
    );
    this.#unauthenticated = new EventAggregator(
      this.#options.logger,
      "info",
      "unauthenticated connections dropped without a log line each",
    );
    this.#sessionOptions = {
      keepaliveMs: this.#options.keepaliveMs,
      idleTimeoutMs: this.#options.idleTimeoutMs,
    };
    if (options.forward) this.#forwardLiteral = literalAddresses(options.forward.host);
    if (options.vpn) this.stats.vpn = options.vpn.stats;
    this.#listening = new DrainableListener(listener, {
      accepted: (conn) => this.#accepted(conn),
      failed: async (err) => {
        this.#log.error("accept failed", { error: err.message });
        // Out of file descriptors, most likely: free one, and do not spin.
        this.#pending.evictOldest();
        await new Promise((resolve) => setTimeout(resolve, 50));
      },
      // Under a connection flood accept() keeps resolving at once; let the
      // event loop deliver reads (a key holder's message 1) every few accepts,
      // or the newest connections would push it out of the pending budget first.
      yieldEvery: ACCEPTS_PER_TURN,
    }, (delay, hurry) => this.#drain(delay, hurry));
    this.stopped = this.#listening.stopped;
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
        vpn: options.vpn?.describe(),
        crypto: server.#options.provider.name,
      },
    );
    return Promise.resolve(server);
  }

  /** Whether shutdown() has begun. */
  get draining(): boolean {
    return this.#listening.draining;
  }

  /**
   * Replaces the key for handshakes from now on; open sessions keep theirs.
   * Resolves once no handshake reads the replaced key any more (one waiting
   * for its message 1 may still complete under it): its owner may zero it then.
   */
  setKey(key: Uint8Array): Promise<void> {
    return this.#keys.replace(key);
  }

  /**
   * Drains: `draining` turns true at once (so /healthz answers 503), the
   * listener keeps accepting for the drain delay (unless `delay: false`),
   * then closes; every connection accepted by then is served, handshake
   * included, for up to the drain timeout; the rest are then ended (ERROR 6
   * for sessions). Calling it again returns the same drain.
   */
  shutdown(options: ShutdownOptions = {}): Promise<void> {
    return this.#listening.shutdown(options);
  }

  /** Ends a drain at once (a second SIGTERM/SIGINT): no more delay, no more deadline. */
  endNow(): Promise<void> {
    return this.#listening.endNow();
  }

  async #drain(delay: boolean, hurry: AbortSignal): Promise<void> {
    await drainListener({
      delayMs: delay ? this.#options.drainDelayMs : 0,
      timeoutMs: this.#options.drainTimeoutMs,
      hurry,
      closeListener: async () => {
        await this.#listening.close();
        // VPN sessions never end by themselves: CLOSE them now (their clients
        // reconnect) and remove the device, so a restart can create it again.
        await this.#options.vpn?.close();
      },
      accepted: () => this.#connections.values(),
      abortMessage: "server shutting down",
      stats: this.stats,
      log: this.#log,
    });
    this.#unauthenticated.flush();
  }

  get #log(): Logger {
    return this.#options.logger;
  }

  #accepted(conn: Deno.TcpConn): void {
    this.stats.connectionsAccepted++;
    const id = ++this.#nextId;
    const entry: Connection = {
      conn,
      session: null,
      done: Promise.resolve(),
      authenticated: false,
      evicted: false,
    };
    // Never refused here: the pending budget makes room by dropping the oldest of the greediest source.
    this.#pending.admit(id, sourceOf(conn), () => {
      entry.evicted = true;
      this.stats.connectionsEvicted++;
      closeQuietly(conn);
    });
    this.#connections.set(id, entry);
    entry.done = this.#serve(id, entry).finally(() => {
      this.#pending.remove(id);
      if (entry.authenticated) this.#authenticated--;
      this.#connections.delete(id);
    });
  }

  async #serve(id: number, entry: Connection): Promise<void> {
    const peer = peerOf(entry.conn);
    entry.conn.setNoDelay(true);
    const started = performance.now();
    const open = await this.#handshake(id, peer, entry);
    if (!open) return;
    const seconds = (performance.now() - started) / 1000;
    this.stats.handshake("ok", seconds);
    this.#log.debug("handshake ok", { session: id, peer, ms: Math.round(seconds * 1000) });
    // An OPEN the dispatch leaves unanswered (a bug, a throw) closes the connection here.
    using _ = open;
    const summary = await this.#dispatch(id, peer, open, entry);
    if (summary) logSessionEnd(this.#log, { session: id, peer }, summary);
  }

  /**
   * The handshake under its deadlines, then the client's OPEN; null when the
   * connection ended before (logged and counted). A method of its own so that
   * its state (deadlines, the verified message 1) is not kept for the
   * session's life by the caller's frame.
   */
  async #handshake(id: number, peer: string, entry: Connection): Promise<PendingOpen | null> {
    const { conn } = entry;
    let timedOut: "hello" | "handshake" | null = null;
    const helloDeadline = setTimeout(() => {
      timedOut = "hello";
      closeQuietly(conn);
    }, Math.min(this.#options.helloTimeoutMs, this.#options.handshakeTimeoutMs));
    const deadline = setTimeout(() => {
      timedOut ??= "handshake";
      closeQuietly(conn);
    }, this.#options.handshakeTimeoutMs);
    try {
      const hello = await this.#keys.withKey((key) =>
        SecureChannel.verifyHello(conn, key, {
          rekeyBytes: this.#options.rekeyBytes,
          replays: this.#replays,
          provider: this.#options.provider,
          // A complete message 1 is in: from here on it is bounded work, not a held socket.
          onHello: () => {
            clearTimeout(helloDeadline);
            this.#pending.remove(id);
          },
        })
      );
      if (entry.evicted) throw new TruncationError("dropped to make room for newer connections");
      // A key holder is answered even when the server is full: ERROR 4 says why, not silence.
      if (this.#authenticated >= this.#options.maxConns) {
        const channel = await hello.complete();
        this.stats.connectionsRejectedBusy++;
        this.#log.warn("session refused: max-conns reached", {
          session: id,
          peer,
          max_conns: this.#options.maxConns,
          refused_total: this.stats.connectionsRejectedBusy,
        });
        await Session.reject(
          channel,
          ErrorCode.busy,
          `server busy: ${this.#options.maxConns} sessions open (max-conns)`,
        );
        return null;
      }
      entry.authenticated = true;
      this.#authenticated++;
      return await PendingOpen.receive(await hello.complete());
    } catch (err) {
      if (!timedOut) closeQuietly(conn);
      this.#logHandshakeFailure(
        id,
        peer,
        entry.evicted
          ? "evicted"
          : timedOut === "hello"
          ? "hello_timeout"
          : timedOut
          ? "timeout"
          : err,
      );
      return null;
    } finally {
      clearTimeout(helloDeadline);
      clearTimeout(deadline);
    }
  }

  /** Decides on the OPEN: refuse it, or accept it and serve the session to its end. */
  async #dispatch(
    id: number,
    peer: string,
    open: PendingOpen,
    entry: Connection,
  ): Promise<SessionSummary | null> {
    const { target } = open;
    if (target.kind === "vpn") {
      await this.#serveVpn(id, peer, open);
      return null;
    }
    let upstream: Deno.TcpConn | null = null;
    let targetText = "echo";
    if (target.kind === "address" || this.#options.forward) {
      const wanted = target.kind === "address" ? target : this.#options.forward!;
      targetText = formatHostPort(wanted);
      let addresses: string[] | null = null;
      if (target.kind === "address") {
        const decision = await this.#options.allow.decide(wanted.host, wanted.port);
        if (!decision.allowed) {
          this.#log.warn("open refused by policy", {
            session: id,
            peer,
            target: targetText,
            reason: decision.reason,
          });
          await this.#reject(open, decision.code, decision.reason);
          return null;
        }
        addresses = decision.addresses;
      }
      try {
        // The operator's --forward: a literal, or resolved by the same resolver, under its deadline.
        addresses ??= this.#forwardLiteral ?? await resolveForward(wanted.host);
        upstream = await connectAddresses(addresses, wanted.port);
        upstream.setNoDelay(true);
      } catch (err) {
        const timedOut = (err instanceof DOMException && err.name === "TimeoutError") ||
          err instanceof TimeoutError;
        this.#log.warn("target unreachable", {
          session: id,
          peer,
          target: targetText,
          error: timedOut ? "connect timed out" : (err as Error).message,
        });
        // The SOCKS client maps "refused" to reply 0x05, anything else to 0x04.
        const why = err instanceof Deno.errors.ConnectionRefused
          ? targetRefusedDetail(targetText)
          : `cannot reach ${targetText}`;
        await this.#reject(
          open,
          timedOut ? ErrorCode.timedOut : ErrorCode.unreachable,
          timedOut ? `timed out connecting to ${targetText}` : why,
        );
        return null;
      }
    }
    let session: Session;
    try {
      session = await open.accept(this.#sessionOptions);
    } catch {
      if (upstream) closeQuietly(upstream);
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

  /** OPEN 0x02: admits the session into the VPN pool, or refuses it with ERROR 2. */
  async #serveVpn(id: number, peer: string, open: PendingOpen): Promise<void> {
    const vpn = this.#options.vpn;
    const refuse = async (why: string) => {
      this.#log.warn("vpn open refused", { session: id, peer, error: why });
      await this.#reject(open, ErrorCode.refused, why);
    };
    if (!vpn) return await refuse("VPN mode is not enabled on this server");
    const admitted = vpn.admit(open);
    if ("refused" in admitted) return await refuse(admitted.refused);
    const { link, addresses } = admitted;
    this.stats.open("ok");
    // VPN sessions count as sessions; their traffic is in the cipherlink_vpn_* counters.
    this.stats.sessionsOpen++;
    this.stats.sessionsTotal++;
    this.#log.info("vpn session open", { session: id, peer, addresses: addresses.join(" ") });
    const { error } = await link.run();
    this.stats.sessionsOpen--;
    const fields = {
      session: id,
      peer,
      addresses: addresses.join(" "),
      packets_in: link.packets.in,
      packets_out: link.packets.out,
      outcome: error ? "error" : "ok",
      error: error?.message,
    };
    if (error) this.#log.warn("vpn session end", fields);
    else this.#log.info("vpn session end", fields);
  }

  /** Answers an OPEN with ERROR `code`, counting the outcome. */
  #reject(open: PendingOpen, code: number, message: string): Promise<void> {
    this.stats.open(openOutcomeFor(code));
    return open.reject(code, message);
  }

  /**
   * Counts a connection that ended before its OPEN. Those without a verified
   * message 1 are the attacker's to cause at will: they are logged through
   * an aggregator (one line, then a summary per window), never one line each.
   */
  #logHandshakeFailure(id: number, peer: string, failure: unknown): void {
    const fields = { session: id, peer };
    if (failure === "evicted") {
      this.stats.handshake("timeout");
      this.#unauthenticated.note("handshake dropped to make room", "evicted", fields);
      return;
    }
    if (failure === "hello_timeout" || failure === "timeout") {
      this.stats.handshake("timeout");
      this.#unauthenticated.note("handshake timed out", failure, fields);
      return;
    }
    this.stats.handshake(failure instanceof AuthenticationError ? "bad_key" : "malformed");
    const reason = failure instanceof Error ? failure.message : String(failure);
    if (failure instanceof LegacyProtocolError) {
      this.#unauthenticated.note(
        "dropped a legacy version-1 packet (the Python prototype format)",
        "legacy_v1",
        fields,
      );
    } else if (failure instanceof AuthenticationError) {
      this.#unauthenticated.note("handshake failed", "bad_key", { ...fields, error: reason });
    } else if (failure instanceof ProtocolError) {
      this.#unauthenticated.note("handshake failed", "malformed", { ...fields, error: reason });
    } else if (failure instanceof TruncationError || failure instanceof CipherlinkError) {
      this.#log.debug("connection ended during handshake", { ...fields, error: reason });
    } else {
      this.#unauthenticated.note("handshake failed", "failed", { ...fields, error: reason });
    }
  }
}

/** `[host]` canonicalised when it is an address literal; null for a name (or a malformed host). */
function literalAddresses(host: string): string[] | null {
  try {
    const target = canonicalHost(host);
    return target.kind === "name" ? null : [target.text];
  } catch {
    return null; // left to resolveForward, which reports it per session as before
  }
}

/** The addresses of the --forward host: itself if a literal, else what the resolver answers. */
async function resolveForward(host: string): Promise<string[]> {
  const target = canonicalHost(host);
  return target.kind === "name" ? await systemResolver(target.text) : [target.text];
}

/** The source address a pending connection is counted against. */
function sourceOf(conn: Deno.Conn): string {
  return (conn.remoteAddr as Deno.NetAddr).hostname;
}
