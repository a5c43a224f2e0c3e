/**
 * Renders endpoints' counters (tunnel/stats.ts) in the Prometheus text
 * exposition format (version 0.0.4), for the /metrics endpoint.
 *
 * @example
 * ```ts
 * import { renderMetrics } from "./prometheus.ts";
 * import { TunnelStats } from "../tunnel/stats.ts";
 * const stats = new TunnelStats();
 * stats.handshake("ok", 0.004);
 * console.log(renderMetrics([{ stats, labels: { role: "server" } }]));
 * ```
 * @module
 */

import {
  HANDSHAKE_OUTCOMES,
  OPEN_OUTCOMES,
  type TunnelStats,
  VPN_DROP_REASONS,
  type VpnStats,
} from "../tunnel/stats.ts";

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
