/**
 * The benchmark's results: their JSON shape, the metrics and which way is
 * better, Cipherlink's ratio to the best peer, the printed table, and the
 * hand-written SVG bar chart the README shows.
 * @module
 */

import type { Latency, SessionRate, Throughput } from "./load.ts";

/** Server (and client) memory with idle sessions open. */
export interface IdleMemory {
  sessions: number;
  /** Time to open them all, each proven by one round trip. */
  openSeconds: number;
  serverRssBeforeKiB: number;
  serverRssAfterKiB: number;
  /** (after - before) / sessions */
  serverKiBPerSession: number;
  clientRssBeforeKiB: number;
  clientRssAfterKiB: number;
  clientKiBPerSession: number;
}

/** Everything measured for one tunnel (or plain TCP). */
export interface TunnelResult {
  name: string;
  label: string;
  version: string | null;
  /** Why it did not run, when it did not. */
  skipped: string | null;
  throughput1: Throughput | null;
  throughputN: Throughput | null;
  latency: Latency | null;
  sessions: SessionRate | null;
  idle: IdleMemory | null;
  /** Measurement name -> what went wrong. */
  errors: Record<string, string>;
  /** Wall time this tunnel's processes ran, seconds. */
  seconds: number;
  /** CPU that programs outside the benchmark took meanwhile: figures are suspect above ~10%. */
  interference: Interference | null;
}

/** Shares of the machine's CPU capacity (all cores) during one tunnel's measurements. */
export interface Interference {
  /** Used by processes other than the benchmark and the tunnel under test. */
  otherPercent: number;
  /** Taken by the hypervisor. */
  stealPercent: number;
}

/** Settings of the run (the command-line flags). */
export interface Settings {
  seconds: number;
  bytes: number;
  streams: number;
  rtts: number;
  warmupRtts: number;
  sessionsSeconds: number;
  workers: number;
  idleSessions: number;
  only: string[];
}

/** Cipherlink's value over the best peer's. */
export interface Ratio {
  ratio: number;
  cipherlink: number;
  best: number;
  bestPeer: string;
}

/** One issue-13 target of one Cipherlink row: the ratio (or KiB) and whether it is met. */
export interface TargetCheck {
  what: string;
  value: number | null;
  goal: string;
  met: boolean | null;
}

/** A crypto provider's own in-process ceiling, and the tunnel's share of it. */
export interface Ceiling {
  provider: string;
  /** Plaintext bytes, at the data path's frame size, sealed and opened per second in one process. */
  sealOpenMBps: number;
  frameBytes: number;
  depth: number;
  /** One stream's throughput through the tunnel over that ceiling. */
  fraction1: number | null;
  fractionN: number | null;
}

/** The whole JSON file. */
export interface BenchResults {
  schema: 2;
  startedAt: string;
  seconds: number;
  machine: {
    nproc: number;
    cpu: string;
    kernel: string;
    memoryMiB: number;
    openFileLimit: number;
    /** 1, 5 and 15 minute load averages when the run started and when it ended. */
    loadAtStart: number[];
    loadAtEnd: number[];
  };
  versions: Record<string, string>;
  settings: Settings;
  baseline: TunnelResult;
  tunnels: TunnelResult[];
  /** Cipherlink row name -> metric -> its ratio to the best peer. */
  ratios: Record<string, Record<string, Ratio | null>>;
  /** Cipherlink row name -> the issue's targets for it. */
  targets: Record<string, TargetCheck[]>;
  ceilings: Ceiling[];
}

/** One column of the table and one panel of the chart. */
export interface Metric {
  key: string;
  title: string;
  unit: string;
  better: "higher" | "lower";
  digits: number;
  /** The measurement that produces it (the key of TunnelResult.errors). */
  step: string;
  value(result: TunnelResult): number | undefined;
}

/** The metrics, in table order. */
export function metrics(streams: number): Metric[] {
  return [
    {
      key: "throughput1",
      step: "throughput1",
      title: "throughput, 1 stream",
      unit: "MB/s",
      better: "higher",
      digits: 0,
      value: (r) => r.throughput1?.mbPerSecond,
    },
    {
      key: "throughputN",
      step: "throughputN",
      title: `throughput, ${streams} streams`,
      unit: "MB/s",
      better: "higher",
      digits: 0,
      value: (r) => r.throughputN?.mbPerSecond,
    },
    {
      key: "latencyP50",
      step: "latency",
      title: "64-byte round trip, p50",
      unit: "µs",
      better: "lower",
      digits: 0,
      value: (r) => r.latency?.p50Us,
    },
    {
      key: "latencyP99",
      step: "latency",
      title: "64-byte round trip, p99",
      unit: "µs",
      better: "lower",
      digits: 0,
      value: (r) => r.latency?.p99Us,
    },
    {
      key: "sessions",
      step: "sessions",
      title: "new sessions",
      unit: "/s",
      better: "higher",
      digits: 0,
      value: (r) => r.sessions?.perSecond,
    },
    {
      key: "memory",
      step: "memory",
      title: "server memory per idle session",
      unit: "KiB",
      better: "lower",
      digits: 1,
      value: (r) => r.idle?.serverKiBPerSession,
    },
  ];
}

/** Whether the measurement behind `metric` failed, or the tunnel never got that far. */
function failedAt(result: TunnelResult, metric: Metric): boolean {
  return [metric.step, "start", "warmup"].some((step) => step in result.errors);
}

/** Whether a tunnel is one of Cipherlink's rows. */
export function isCipherlink(name: string): boolean {
  return name === "cipherlink" || name.startsWith("cipherlink-");
}

/** Each Cipherlink row's ratio to the best peer, per metric (null without both). */
export function ratios(
  tunnels: TunnelResult[],
  list: Metric[],
): Record<string, Record<string, Ratio | null>> {
  const all: Record<string, Record<string, Ratio | null>> = {};
  for (const ours of tunnels.filter((t) => isCipherlink(t.name) && !t.skipped)) {
    const out: Record<string, Ratio | null> = {};
    for (const metric of list) {
      const mine = metric.value(ours);
      let best: { value: number; name: string } | null = null;
      for (const peer of tunnels) {
        const value = isCipherlink(peer.name) ? undefined : metric.value(peer);
        if (value === undefined || !Number.isFinite(value)) continue;
        const better = metric.better === "higher"
          ? value > (best?.value ?? -Infinity)
          : value < (best?.value ?? Infinity);
        if (better) best = { value, name: peer.name };
      }
      out[metric.key] = mine === undefined || best === null || best.value === 0 ? null : {
        ratio: mine / best.value,
        cipherlink: mine,
        best: best.value,
        bestPeer: best.name,
      };
    }
    all[ours.name] = out;
  }
  return all;
}

/** The issue's targets (issue 13) per provider: [throughput x stunnel, p50 x stunnel, sessions x spiped]. */
const TARGET_GOALS: Record<string, { throughput: number; latency: number; sessions: number }> = {
  "cipherlink-openssl": { throughput: 1.2, latency: 1.3, sessions: 1.5 },
  cipherlink: { throughput: 0.6, latency: 2.0, sessions: 1.0 },
};
/** Memory per idle session, both ends, every provider. */
const TARGET_IDLE_KIB = 32;

/** Checks every Cipherlink row against the issue's targets (same run, same machine). */
export function targets(tunnels: TunnelResult[], streams: number): Record<string, TargetCheck[]> {
  const peer = (name: string) => tunnels.find((t) => t.name === name && !t.skipped);
  const stunnel = peer("stunnel");
  const spiped = peer("spiped");
  const over = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined || b === 0 ? null : a / b;
  const out: Record<string, TargetCheck[]> = {};
  for (const ours of tunnels.filter((t) => isCipherlink(t.name) && !t.skipped)) {
    const goal = TARGET_GOALS[ours.name] ?? TARGET_GOALS.cipherlink;
    const checks: TargetCheck[] = [];
    const atLeast = (what: string, value: number | null, min: number) =>
      checks.push({ what, value, goal: `>= ${min}x`, met: value === null ? null : value >= min });
    const atMost = (what: string, value: number | null, max: number, unit = "x") =>
      checks.push({
        what,
        value,
        goal: `<= ${max}${unit}`,
        met: value === null ? null : value <= max,
      });
    atLeast(
      "1 stream / stunnel4",
      over(ours.throughput1?.mbPerSecond, stunnel?.throughput1?.mbPerSecond),
      goal.throughput,
    );
    atLeast(
      `${streams} streams / stunnel4`,
      over(ours.throughputN?.mbPerSecond, stunnel?.throughputN?.mbPerSecond),
      goal.throughput,
    );
    atMost(
      "round trip p50 / stunnel4",
      over(ours.latency?.p50Us, stunnel?.latency?.p50Us),
      goal.latency,
    );
    atLeast(
      "new sessions / spiped",
      over(ours.sessions?.perSecond, spiped?.sessions?.perSecond),
      goal.sessions,
    );
    atMost(
      "server KiB per idle session",
      ours.idle?.serverKiBPerSession ?? null,
      TARGET_IDLE_KIB,
      " KiB",
    );
    atMost(
      "client KiB per idle session",
      ours.idle?.clientKiBPerSession ?? null,
      TARGET_IDLE_KIB,
      " KiB",
    );
    out[ours.name] = checks;
  }
  return out;
}

/** The targets as lines of text, one Cipherlink row at a time. */
export function targetLines(results: BenchResults): string[] {
  const lines: string[] = [];
  for (const [name, checks] of Object.entries(results.targets)) {
    const label = results.tunnels.find((t) => t.name === name)?.label ?? name;
    const cells = checks.map((c) =>
      `${c.what} ${c.value === null ? "n/a" : c.value.toFixed(2)} (${c.goal}: ${
        c.met === null ? "not measured" : c.met ? "met" : "MISSED"
      })`
    );
    lines.push(`targets, ${label}: ${cells.join("; ")}`);
  }
  for (const c of results.ceilings) {
    lines.push(
      `ceiling, ${c.provider}: seal+open of ${c.frameBytes}-byte frames, ${c.depth} in flight, ` +
        `${c.sealOpenMBps.toFixed(0)} MB/s in one process; Cipherlink (${c.provider}) reaches ` +
        `${
          c.fraction1 === null ? "n/a" : `${(100 * c.fraction1).toFixed(0)}%`
        } of it with 1 stream, ` +
        `${
          c.fractionN === null ? "n/a" : `${(100 * c.fractionN).toFixed(0)}%`
        } with ${results.settings.streams}`,
    );
  }
  return lines;
}

function format(value: number | undefined, digits: number): string {
  if (value === undefined || !Number.isFinite(value)) return "";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** The results table, Markdown-shaped so it reads in a terminal and pastes into the README. */
export function table(results: BenchResults): string {
  const list = metrics(results.settings.streams);
  const header = ["tunnel", ...list.map((m) => `${m.title} (${m.unit})`)];
  const rows: string[][] = [];
  for (const result of [results.baseline, ...results.tunnels]) {
    if (result.skipped) {
      rows.push([result.label, ...list.map(() => "skipped")]);
      continue;
    }
    rows.push([
      result.label,
      ...list.map((m) => {
        const text = format(m.value(result), m.digits);
        if (text) return text;
        if (failedAt(result, m)) return "error";
        return result === results.baseline && m.key === "memory" ? "(no tunnel)" : "n/a";
      }),
    ]);
  }
  for (const [name, byMetric] of Object.entries(results.ratios)) {
    const label = results.tunnels.find((t) => t.name === name)?.label ?? name;
    rows.push([
      `${label} ÷ best peer`,
      ...list.map((m) => {
        const r = byMetric[m.key];
        return r ? `${r.ratio.toFixed(2)}× (${r.bestPeer})` : "n/a";
      }),
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(" | ")} |`;
  const rule = `|${
    widths.map((w, i) => i === 0 ? `${"-".repeat(w + 1)}-` : `${"-".repeat(w + 1)}:`).join("|")
  }|`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}

const COLORS: Record<string, string> = {
  cipherlink: "#2563eb",
  "cipherlink-openssl": "#7c3aed",
  stunnel: "#d97706",
  spiped: "#059669",
  shadowsocks: "#dc2626",
  ssh: "#0891b2",
};

const SHORT_NAMES: Record<string, string> = {
  cipherlink: "CL webcrypto",
  "cipherlink-openssl": "CL openssl",
  stunnel: "stunnel4",
  spiped: "spiped",
  shadowsocks: "shadowsocks",
  ssh: "OpenSSH -L",
};

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

/**
 * A grouped bar chart: one panel per metric (its own scale), one bar per
 * tunnel in a fixed color with its value written next to it, and plain TCP
 * as a baseline line of text. No dependencies: the SVG is written by hand.
 */
export function svg(results: BenchResults): string {
  const list = metrics(results.settings.streams);
  const shown = results.tunnels.filter((t) => !t.skipped);
  const columns = 3;
  const panelWidth = 320;
  const labelWidth = 112;
  const valueWidth = 64;
  const barArea = panelWidth - labelWidth - valueWidth - 16;
  const barHeight = 16;
  const barGap = 6;
  const panelHeight = 58 + Math.max(1, shown.length) * (barHeight + barGap) + 8;
  const left = 16;
  const width = left * 2 + columns * panelWidth;
  // The legend wraps onto as many rows as it needs; the panels start below it.
  const legend: { tunnel: TunnelResult; label: string; x: number; row: number }[] = [];
  let legendX = left;
  let legendRow = 0;
  for (const tunnel of shown) {
    const label = `${SHORT_NAMES[tunnel.name] ?? tunnel.name}: ${tunnel.version ?? tunnel.label}`;
    const entryWidth = 26 + label.length * 5.8;
    if (legendX > left && legendX + entryWidth > width - left) {
      legendX = left;
      legendRow++;
    }
    legend.push({ tunnel, label, x: legendX, row: legendRow });
    legendX += entryWidth;
  }
  const top = 84 + legendRow * 16;
  const height = top + Math.ceil(list.length / columns) * panelHeight + 28 +
    results.ceilings.length * 15;
  const parts: string[] = [];
  const text = (x: number, y: number, content: string, attrs = "") =>
    parts.push(
      `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}"${attrs}>${escapeXml(content)}</text>`,
    );

  parts.push(
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
  );
  text(
    left,
    26,
    "Cipherlink and other encrypted TCP tunnels on 127.0.0.1",
    ` font-size="17" font-weight="600"`,
  );
  const { machine } = results;
  text(
    left,
    46,
    `nproc ${machine.nproc} (${machine.cpu}), ${results.versions.deno}, ${
      results.startedAt.slice(0, 10)
    }, load average ${machine.loadAtStart[0] ?? "?"} at the start — one run of deno task bench`,
    ` font-size="12" fill="#555"`,
  );
  for (const { tunnel, label, x, row } of legend) {
    const color = COLORS[tunnel.name] ?? "#6b7280";
    parts.push(
      `<rect x="${x.toFixed(1)}" y="${
        59 + row * 16
      }" width="10" height="10" rx="2" fill="${color}"/>`,
    );
    text(x + 17, 69 + row * 16, label, ` font-size="11"`);
  }

  list.forEach((metric, index) => {
    const x0 = left + (index % columns) * panelWidth;
    const y0 = top + Math.floor(index / columns) * panelHeight;
    parts.push(
      `<rect x="${x0 + 4}" y="${y0}" width="${panelWidth - 8}" height="${
        panelHeight - 8
      }" rx="6" fill="#f8fafc" stroke="#e2e8f0"/>`,
    );
    text(x0 + 14, y0 + 20, `${metric.title} (${metric.unit})`, ` font-size="13" font-weight="600"`);
    const baseline = format(metric.value(results.baseline), metric.digits);
    text(
      x0 + 14,
      y0 + 37,
      `${metric.better} is better${baseline ? ` · plain TCP: ${baseline}` : ""}`,
      ` font-size="11" fill="#64748b"`,
    );
    const values = shown.map((t) => metric.value(t)).filter((v): v is number =>
      v !== undefined && Number.isFinite(v)
    );
    const max = Math.max(0, ...values);
    shown.forEach((tunnel, row) => {
      const y = y0 + 50 + row * (barHeight + barGap);
      const value = metric.value(tunnel);
      text(x0 + 14, y + barHeight - 4, SHORT_NAMES[tunnel.name] ?? tunnel.name, ` font-size="12"`);
      if (value === undefined || !Number.isFinite(value)) {
        text(
          x0 + labelWidth,
          y + barHeight - 4,
          failedAt(tunnel, metric) ? "error" : "n/a",
          ` font-size="11" fill="#94a3b8"`,
        );
        return;
      }
      const barWidth = max > 0 ? Math.max(1, (value / max) * barArea) : 1;
      const color = COLORS[tunnel.name] ?? "#6b7280";
      parts.push(
        `<rect x="${x0 + labelWidth}" y="${y}" width="${
          barWidth.toFixed(1)
        }" height="${barHeight}" rx="2" fill="${color}"/>`,
      );
      text(
        x0 + labelWidth + barWidth + 5,
        y + barHeight - 4,
        format(value, metric.digits),
        ` font-size="12"${isCipherlink(tunnel.name) ? ` font-weight="600"` : ""}`,
      );
    });
  });
  let footY = height - 12 - results.ceilings.length * 15;
  for (const c of results.ceilings) {
    text(
      left,
      footY,
      `${c.provider}'s own ceiling here: ${c.sealOpenMBps.toFixed(0)} MB/s (seal+open of ` +
        `${c.frameBytes}-byte frames, ${c.depth} in flight, one process); Cipherlink (${c.provider}) ` +
        `reaches ${
          c.fraction1 === null ? "n/a" : `${(100 * c.fraction1).toFixed(0)}%`
        } of it with ` +
        `1 stream, ${c.fractionN === null ? "n/a" : `${(100 * c.fractionN).toFixed(0)}%`} with ` +
        `${results.settings.streams}.`,
      ` font-size="11" fill="#64748b"`,
    );
    footY += 15;
  }
  text(
    left,
    footY,
    `Settings: ${results.settings.seconds} s per throughput row, ${results.settings.rtts} round trips, ` +
      `${results.settings.workers} session workers for ${results.settings.sessionsSeconds} s, ` +
      `${results.settings.idleSessions} idle sessions. MB = 10^6 bytes. Source: bench/results/latest.json`,
    ` font-size="11" fill="#64748b"`,
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif" fill="#0f172a">\n${
    parts.join("\n")
  }\n</svg>\n`;
}
