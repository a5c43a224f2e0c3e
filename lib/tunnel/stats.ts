/**
 * Counters of a tunnel endpoint (server or client listener), and their
 * rendering in the Prometheus text exposition format.
 *
 * Byte counts include the sessions still open, so a scrape sees a long
 * transfer move, not only finished sessions.
 *
 * @example
 * ```ts
 * import { renderMetrics, TunnelStats } from "./stats.ts";
 * const stats = new TunnelStats();
 * stats.handshake("ok", 0.004);
 * console.log(renderMetrics([{ stats, labels: { role: "server" } }]));
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
const OPEN_OUTCOMES: readonly OpenOutcome[] = [
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

/** One endpoint's stats and the labels that tell it apart. */
export interface MetricsSource {
  stats: TunnelStats;
  labels: Record<string, string>;
}

interface Family {
  name: string;
  type: "counter" | "gauge" | "histogram";
  help: string;
  samples: string[];
}

type AddSample = (
  name: string,
  type: Family["type"],
  help: string,
  labels: Record<string, string>,
  value: number,
) => void;

function addVpn(vpn: VpnStats, labels: Record<string, string>, add: AddSample): void {
  add("cipherlink_vpn_sessions_open", "gauge", "VPN sessions open now.", labels, vpn.sessionsOpen);
  const packetsHelp = "VPN packets carried: in from the tunnel's peer, out to it.";
  add(
    "cipherlink_vpn_packets_total",
    "counter",
    packetsHelp,
    { ...labels, direction: "in" },
    vpn.packetsIn,
  );
  add(
    "cipherlink_vpn_packets_total",
    "counter",
    "",
    { ...labels, direction: "out" },
    vpn.packetsOut,
  );
  const bytesHelp = "VPN packet bytes carried: in from the tunnel's peer, out to it.";
  add(
    "cipherlink_vpn_bytes_total",
    "counter",
    bytesHelp,
    { ...labels, direction: "in" },
    vpn.bytesIn,
  );
  add("cipherlink_vpn_bytes_total", "counter", "", { ...labels, direction: "out" }, vpn.bytesOut);
  for (const reason of VPN_DROP_REASONS) {
    add(
      "cipherlink_vpn_packets_dropped_total",
      "counter",
      "VPN packets dropped by reason: malformed, spoofed, queue_full, no_route, not_connected.",
      { ...labels, reason },
      vpn.dropped[reason],
    );
  }
}

function labelText(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"')}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

/**
 * Renders every source in the Prometheus text format (version 0.0.4): one
 * HELP and TYPE line per metric family, then its samples.
 */
export function renderMetrics(sources: MetricsSource[]): string {
  const families = new Map<string, Family>();
  const add = (
    name: string,
    type: Family["type"],
    help: string,
    labels: Record<string, string>,
    value: number,
    suffix = "",
  ) => {
    let family = families.get(name);
    if (!family) families.set(name, family = { name, type, help, samples: [] });
    if (!family.help) family.help = help;
    family.samples.push(`${name}${suffix}${labelText(labels)} ${value}`);
  };
  for (const { stats, labels } of sources) {
    const bytes = stats.liveBytes();
    add(
      "cipherlink_connections_accepted_total",
      "counter",
      "TCP connections accepted.",
      labels,
      stats.connectionsAccepted,
    );
    add(
      "cipherlink_connections_rejected_total",
      "counter",
      "Connections refused at --max-conns (server: key holders answered ERROR 4; client: closed at once).",
      { ...labels, reason: "max_conns" },
      stats.connectionsRejectedBusy,
    );
    add("cipherlink_sessions_open", "gauge", "Sessions open now.", labels, stats.sessionsOpen);
    add(
      "cipherlink_sessions_total",
      "counter",
      "Sessions opened since start.",
      labels,
      stats.sessionsTotal,
    );
    add(
      "cipherlink_bytes_total",
      "counter",
      "Tunnelled plaintext bytes, received from and sent to the peer.",
      {
        ...labels,
        direction: "in",
      },
      bytes.in,
    );
    add("cipherlink_bytes_total", "counter", "", { ...labels, direction: "out" }, bytes.out);
    for (const outcome of HANDSHAKE_OUTCOMES) {
      add(
        "cipherlink_handshakes_total",
        "counter",
        "Handshakes by outcome: ok, bad_key, timeout, malformed.",
        { ...labels, outcome },
        stats.handshakes[outcome],
      );
    }
    for (const outcome of OPEN_OUTCOMES) {
      add(
        "cipherlink_opens_total",
        "counter",
        "OPEN requests by outcome: ok or the ERROR code's name.",
        { ...labels, outcome },
        stats.opens[outcome],
      );
    }
    add("cipherlink_rekeys_total", "counter", "REKEYs sent and received.", {
      ...labels,
      direction: "sent",
    }, stats.rekeysSent);
    add(
      "cipherlink_rekeys_total",
      "counter",
      "",
      { ...labels, direction: "received" },
      stats.rekeysReceived,
    );
    add(
      "cipherlink_keepalive_drops_total",
      "counter",
      "Sessions dropped because the peer answered no PING.",
      labels,
      stats.keepaliveDrops,
    );
    if (stats.vpn) addVpn(stats.vpn, labels, add);
    add(
      "cipherlink_drain_sessions_total",
      "counter",
      "Sessions that ended during a drain: finished on their own, or aborted (ERROR 6) at its deadline.",
      { ...labels, outcome: "finished" },
      stats.sessionsDrained,
    );
    add(
      "cipherlink_drain_sessions_total",
      "counter",
      "",
      { ...labels, outcome: "aborted" },
      stats.sessionsDrainAborted,
    );
    add(
      "cipherlink_drain_refused_total",
      "counter",
      "Accepted connections the drain closed before their session began.",
      labels,
      stats.connectionsDrainRefused,
    );
    add(
      "cipherlink_drain_duration_seconds",
      "gauge",
      "Time since SIGTERM began the drain, or its total once over; 0 before.",
      labels,
      stats.drainSeconds,
    );
    const histogram = stats.handshakeSeconds;
    const name = "cipherlink_handshake_duration_seconds";
    const help =
      "Time from accepting a connection to a completed handshake (and OPEN, on a server).";
    histogram.bounds.forEach((bound, i) => {
      add(
        name,
        "histogram",
        help,
        { ...labels, le: String(bound) },
        histogram.counts[i],
        "_bucket",
      );
    });
    add(name, "histogram", help, { ...labels, le: "+Inf" }, histogram.count, "_bucket");
    add(name, "histogram", help, labels, histogram.sum, "_sum");
    add(name, "histogram", help, labels, histogram.count, "_count");
  }
  let out = "";
  for (const family of families.values()) {
    out += `# HELP ${family.name} ${
      family.help || family.name
    }\n# TYPE ${family.name} ${family.type}\n`;
    out += family.samples.join("\n") + "\n";
  }
  return out;
}
