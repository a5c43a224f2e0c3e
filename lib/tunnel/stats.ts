/**
 * Counters of a tunnel endpoint (server or client listener): what the
 * sessions, handshakes, OPENs and drains did. Rendering them for Prometheus
 * is ops/prometheus.ts's job.
 *
 * Byte counts include the sessions still open, so a scrape sees a long
 * transfer move, not only finished sessions.
 *
 * @example
 * ```ts
 * import { TunnelStats } from "./stats.ts";
 * const stats = new TunnelStats();
 * stats.handshake("ok", 0.004);
 * stats.open("ok");
 * ```
 * @module
 */

import { ERROR_CODES, ErrorCode, errorCodeInfo, KeepaliveTimeoutError } from "../base/errors.ts";
import type { Session, SessionSummary } from "./session.ts";

/** How a handshake ended. */
export type HandshakeOutcome = "ok" | "bad_key" | "timeout" | "malformed";
export const HANDSHAKE_OUTCOMES: readonly HandshakeOutcome[] = [
  "ok",
  "bad_key",
  "timeout",
  "malformed",
];

/** How an OPEN ended: "ok" or the label of the ERROR code (base/errors.ts, ERROR_CODES). */
export type OpenOutcome = "ok" | typeof ERROR_CODES[keyof typeof ERROR_CODES]["label"];
/** Every OPEN outcome, in the order the metrics list them. */
export const OPEN_OUTCOMES: readonly OpenOutcome[] = [
  "ok",
  ...Object.values(ERROR_CODES).map((info) => info.label),
];

/** The OPEN outcome for an ERROR code (a code the protocol does not define counts as internal). */
export function openOutcomeFor(code: number): OpenOutcome {
  return errorCodeInfo(code)?.label ?? ERROR_CODES[ErrorCode.internal].label;
}

/** Upper bounds (seconds) of the handshake duration histogram. */
export const HANDSHAKE_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
];

/** A cumulative histogram. */
export class Histogram {
  readonly bounds: readonly number[];
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = bounds.map(() => 0);
  }
  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (value <= this.bounds[i]) this.counts[i]++;
  }
}

/** Why a VPN packet was dropped instead of forwarded. */
export type VpnDropReason =
  | "malformed"
  | "spoofed"
  | "queue_full"
  | "no_route"
  | "not_connected";
/** Every drop reason, in the order metrics list them. */
export const VPN_DROP_REASONS: readonly VpnDropReason[] = [
  "malformed",
  "spoofed",
  "queue_full",
  "no_route",
  "not_connected",
];

/**
 * VPN counters (vpn.md section 2). "in" is what came from the tunnel's peer,
 * "out" what was sent to it. Drop reasons: malformed (version or length
 * fields), spoofed (source on a server, destination on a client), queue_full
 * (the session's send queue was full), no_route (a server packet for a
 * tunnel address no session holds), not_connected (a client packet while
 * the client is reconnecting).
 */
export class VpnStats {
  packetsIn = 0;
  packetsOut = 0;
  bytesIn = 0;
  bytesOut = 0;
  sessionsOpen = 0;
  dropped: Record<VpnDropReason, number> = Object.fromEntries(
    VPN_DROP_REASONS.map((r) => [r, 0]),
  ) as Record<VpnDropReason, number>;

  /** Counts a dropped packet. */
  drop(reason: VpnDropReason): void {
    this.dropped[reason]++;
  }
}

/** The counters of one endpoint. */
export class TunnelStats {
  /** VPN counters, where this endpoint runs VPN mode. */
  vpn: VpnStats | null = null;
  connectionsAccepted = 0;
  connectionsRejectedBusy = 0;
  /** Unauthenticated connections dropped to make room in the pending-handshake budget. */
  connectionsEvicted = 0;
  handshakes: Record<HandshakeOutcome, number> = { ok: 0, bad_key: 0, timeout: 0, malformed: 0 };
  handshakeSeconds = new Histogram(HANDSHAKE_BUCKETS);
  opens: Record<OpenOutcome, number> = Object.fromEntries(
    OPEN_OUTCOMES.map((o) => [o, 0]),
  ) as Record<
    OpenOutcome,
    number
  >;
  sessionsOpen = 0;
  sessionsTotal = 0;
  bytesIn = 0;
  bytesOut = 0;
  rekeysSent = 0;
  rekeysReceived = 0;
  keepaliveDrops = 0;
  /** Sessions that ended on their own while draining. */
  sessionsDrained = 0;
  /** Sessions still open at the drain's deadline (or a second signal), ended with ERROR 6. */
  sessionsDrainAborted = 0;
  /** Accepted connections closed unserved by the drain (still before their session). */
  connectionsDrainRefused = 0;
  #live = new Set<Session>();
  #drainStarted: number | null = null;
  #drainEnded: number | null = null;
  #drainLate = false;

  /** The drain began (SIGTERM): sessions ending from now on count as drained. */
  drainStarted(): void {
    this.#drainStarted ??= performance.now();
  }

  /** The drain's deadline passed: sessions ending from now on were ended by it. */
  drainDeadline(): void {
    this.#drainLate = true;
  }

  /** The drain is over. */
  drainEnded(): void {
    this.#drainEnded ??= performance.now();
  }

  /** Seconds the drain took (so far, while it runs); 0 before one began. */
  get drainSeconds(): number {
    if (this.#drainStarted === null) return 0;
    return ((this.#drainEnded ?? performance.now()) - this.#drainStarted) / 1000;
  }

  /** Handshakes completed (and OPEN received, on a server). */
  get handshakesOk(): number {
    return this.handshakes.ok;
  }
  /** Handshakes that failed on a bad key or malformed input. */
  get handshakesFailed(): number {
    return this.handshakes.bad_key + this.handshakes.malformed;
  }
  /** Handshakes dropped at the handshake timeout. */
  get handshakesTimedOut(): number {
    return this.handshakes.timeout;
  }

  /** Counts a handshake; `seconds` is recorded for successful ones. */
  handshake(outcome: HandshakeOutcome, seconds?: number): void {
    this.handshakes[outcome]++;
    if (outcome === "ok" && seconds !== undefined) this.handshakeSeconds.observe(seconds);
  }

  /** Counts an OPEN outcome. */
  open(outcome: OpenOutcome): void {
    this.opens[outcome]++;
  }

  /** A session began carrying data. */
  sessionStarted(session: Session): void {
    this.sessionsOpen++;
    this.sessionsTotal++;
    this.#live.add(session);
  }

  /** A session ended; its totals move into the counters. */
  sessionEnded(session: Session, summary: SessionSummary): void {
    this.#live.delete(session);
    this.sessionsOpen--;
    this.bytesIn += summary.bytesIn;
    this.bytesOut += summary.bytesOut;
    this.rekeysSent += summary.rekeysSent;
    this.rekeysReceived += summary.rekeysReceived;
    if (summary.error instanceof KeepaliveTimeoutError) this.keepaliveDrops++;
    if (this.#drainStarted !== null) {
      if (this.#drainLate) this.sessionsDrainAborted++;
      else this.sessionsDrained++;
    }
  }

  /** Bytes so far, open sessions included. */
  liveBytes(): { in: number; out: number } {
    let bytesIn = this.bytesIn;
    let bytesOut = this.bytesOut;
    for (const session of this.#live) {
      bytesIn += session.bytes.in;
      bytesOut += session.bytes.out;
    }
    return { in: bytesIn, out: bytesOut };
  }
}
