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

import { ErrorCode, KeepaliveTimeoutError } from "./errors.ts";
import type { Session, SessionSummary } from "./session.ts";

/** How a handshake ended. */
export type HandshakeOutcome = "ok" | "bad_key" | "timeout" | "malformed";
export const HANDSHAKE_OUTCOMES: readonly HandshakeOutcome[] = [
  "ok",
  "bad_key",
  "timeout",
  "malformed",
];

/** How an OPEN ended: "ok" or the name of the ERROR code. */
export type OpenOutcome =
  | "ok"
  | "protocol_violation"
  | "refused"
  | "unreachable"
  | "busy"
  | "timed_out"
  | "internal";
const OPEN_OUTCOMES: readonly OpenOutcome[] = [
  "ok",
  "protocol_violation",
  "refused",
  "unreachable",
  "busy",
  "timed_out",
  "internal",
];

/** The OPEN outcome for an ERROR code. */
export function openOutcomeFor(code: number): OpenOutcome {
  switch (code) {
    case ErrorCode.protocolViolation:
      return "protocol_violation";
    case ErrorCode.refused:
      return "refused";
    case ErrorCode.unreachable:
      return "unreachable";
    case ErrorCode.busy:
      return "busy";
    case ErrorCode.timedOut:
      return "timed_out";
    default:
      return "internal";
  }
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

/** The counters of one endpoint. */
export class TunnelStats {
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
  #live = new Set<Session>();

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
