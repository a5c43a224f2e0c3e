/**
 * `deno task bench`: Cipherlink (once per crypto provider: webcrypto,
 * openssl) against the tunnels people use today (stunnel4, spiped,
 * shadowsocks-libev, OpenSSH port forwarding), all on 127.0.0.1 in one run, with
 * plain TCP through the same source and sink as the baseline. Measures
 * throughput (1 and N streams), 64-byte round-trip latency (p50/p99), new
 * sessions per second, and the tunnel server's memory per idle session;
 * checks Cipherlink against issue 13's targets, measures Web Crypto's own
 * in-process ceiling (Cipherlink's share of it), prints one table, writes
 * bench/results/latest.json and latest.svg.
 *
 * Each tunnel's two processes run only for its own measurements (start,
 * measure, stop) so they never compete for the CPU with another tunnel. The
 * source, sink and echo target run inside this process.
 *
 * Usage: deno task bench [--seconds 3] [--bytes 0] [--streams 8] [--rtts 5000]
 *   [--sessions-seconds 3] [--workers 8] [--idle-sessions 1000]
 *   [--only cipherlink,cipherlink-openssl,stunnel,spiped,shadowsocks,ssh] [--out bench/results]
 *
 * The task runs with --allow-all: Deno 2.9 refuses every read under /proc
 * (VmRSS, cpuinfo, open-file limits) to anything less, and a script that
 * spawns programs holds that much power anyway.
 * @module
 */

import { parseArgs } from "node:util";
import {
  closeAll,
  measureLatency,
  measureSessionRate,
  measureThroughput,
  openIdleSessions,
  TargetServer,
} from "./bench/load.ts";
import { within } from "../support/process.ts";
import {
  machineTicks,
  openFileLimits,
  processTicks,
  raiseOpenFileLimit,
  Registry,
  treeRssKiB,
} from "./bench/procs.ts";
import { measureCeiling } from "./bench/ceiling.ts";
import {
  type BenchResults,
  type Ceiling,
  type Interference,
  metrics,
  ratios,
  type Settings,
  svg,
  table,
  targetLines,
  targets,
  type TunnelResult,
} from "./bench/report.ts";
import { type Detection, type RunningTunnel, type Tunnel, TUNNELS } from "./bench/tunnels.ts";
import { measureVpn, type VpnBench, vpnTable } from "./bench/vpn.ts";

const USAGE = `usage: deno task bench [options]

  --seconds S            sending time of each throughput row (default 3)
  --bytes N              stop each throughput stream after N bytes instead (default 0: no cap)
  --streams N            parallel streams of the second throughput row (default 8)
  --rtts N               timed 64-byte round trips for latency (default 5000)
  --warmup-rtts N        untimed round trips before them (default 200)
  --sessions-seconds S   duration of the new-sessions row (default 3)
  --workers N            concurrent workers of the new-sessions row (default 8)
  --idle-sessions N      idle sessions held open for the memory row (default 1000; 0 skips it)
  --only LIST            comma-separated subset of ${TUNNELS.map((t) => t.name).join(",")}
                         (plain TCP always runs as the baseline)
  --out DIR              where latest.json and latest.svg go (default bench/results)
  --vpn                  also the VPN rows (root): Cipherlink's VPN mode against wireguard-go,
                         one iperf3 stream and ping, in two network namespaces (also vpn.json)
  --vpn-pings N          pings per VPN row (default 200)
`;

/** Parallel openers of the idle sessions (a bounded accept backlog, like real clients). */
const IDLE_OPENERS = 32;
/** Share of the CPU taken by other programs above which a row gets a note. */
const INTERFERENCE_NOTE_PERCENT = 10;
/** Warm-up sessions before a tunnel's first measurement (JIT, caches, lazy init). */
const WARMUP_SESSIONS = 32;

function number(name: string, text: string | undefined, fallback: number, min: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || value < min) {
    throw new Error(`--${name} takes a number of at least ${min}, not '${text}'`);
  }
  return value;
}

function parseSettings(
  args: string[],
): (Settings & { out: string; vpn: boolean; vpnPings: number }) | null {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      seconds: { type: "string" },
      bytes: { type: "string" },
      streams: { type: "string" },
      rtts: { type: "string" },
      "warmup-rtts": { type: "string" },
      "sessions-seconds": { type: "string" },
      workers: { type: "string" },
      "idle-sessions": { type: "string" },
      only: { type: "string" },
      out: { type: "string" },
      vpn: { type: "boolean" },
      "vpn-pings": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return null;
  const only = values.only === undefined
    ? TUNNELS.map((t) => t.name)
    : values.only.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const name of only) {
    if (!TUNNELS.some((t) => t.name === name)) {
      throw new Error(
        `--only: unknown tunnel '${name}' (known: ${TUNNELS.map((t) => t.name).join(", ")})`,
      );
    }
  }
  return {
    seconds: number("seconds", values.seconds, 3, 0.1),
    bytes: Math.floor(number("bytes", values.bytes, 0, 0)),
    streams: Math.floor(number("streams", values.streams, 8, 1)),
    rtts: Math.floor(number("rtts", values.rtts, 5000, 1)),
    warmupRtts: Math.floor(number("warmup-rtts", values["warmup-rtts"], 200, 0)),
    sessionsSeconds: number("sessions-seconds", values["sessions-seconds"], 3, 0.1),
    workers: Math.floor(number("workers", values.workers, 8, 1)),
    idleSessions: Math.floor(number("idle-sessions", values["idle-sessions"], 1000, 0)),
    only,
    out: values.out ?? new URL("../bench/results", import.meta.url).pathname,
    vpn: values.vpn ?? false,
    vpnPings: Math.floor(number("vpn-pings", values["vpn-pings"], 200, 1)),
  };
}

function progress(text: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(`${text}\n`));
}

function emptyResult(name: string, label: string, version: string | null): TunnelResult {
  return {
    name,
    label,
    version,
    skipped: null,
    throughput1: null,
    throughputN: null,
    latency: null,
    sessions: null,
    idle: null,
    errors: {},
    seconds: 0,
    interference: null,
  };
}

/**
 * Starts watching the CPU; the returned function measures how much of it
 * went to programs other than this one and `pids` (the tunnel under test,
 * started after the watch began) since.
 */
async function watchCpu(): Promise<(pids: number[]) => Promise<Interference>> {
  const machineBefore = await machineTicks();
  const selfBefore = await processTicks(Deno.pid);
  return async (pids) => {
    const machine = await machineTicks();
    let own = (await processTicks(Deno.pid)) - selfBefore;
    for (const pid of pids) own += await processTicks(pid);
    const capacity = Math.max(1, machine.total - machineBefore.total);
    const other = machine.processes - machineBefore.processes - own;
    return {
      otherPercent: Math.max(0, (100 * other) / capacity),
      stealPercent: (100 * (machine.steal - machineBefore.steal)) / capacity,
    };
  };
}

function describe(interference: Interference | null): string {
  if (!interference) return "";
  const { otherPercent, stealPercent } = interference;
  return `, other programs used ${otherPercent.toFixed(0)}% of the CPU` +
    (stealPercent >= 1 ? `, steal ${stealPercent.toFixed(0)}%` : "");
}

async function machineInfo(): Promise<BenchResults["machine"]> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  let kernel = "unknown";
  try {
    kernel = `${Deno.build.os} ${Deno.osRelease()}`;
  } catch {
    // No --allow-sys: leave it out.
  }
  return {
    nproc: navigator.hardwareConcurrency,
    cpu: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown CPU",
    kernel,
    memoryMiB: Math.round(Number(/^MemTotal:\s+(\d+) kB$/m.exec(meminfo)?.[1] ?? 0) / 1024),
    openFileLimit: (await openFileLimits()).soft,
    loadAtStart: loadAverage(),
    loadAtEnd: [],
  };
}

function loadAverage(): number[] {
  try {
    return Deno.loadavg().map((n) => Math.round(n * 100) / 100);
  } catch {
    return [];
  }
}

/** Runs the measurements against one port; each failure is recorded and the rest go on. */
class Measurer {
  constructor(
    readonly settings: Settings,
    readonly target: TargetServer,
    readonly result: TunnelResult,
  ) {}

  /** Runs one measurement under a bound; afterwards waits for the target's connections to end. */
  async step<T>(name: string, run: () => Promise<T>, boundMs: number): Promise<T | null> {
    try {
      return await within(run(), boundMs, `${this.result.label}: ${name}`);
    } catch (err) {
      const message = (err as Error).message;
      this.result.errors[name] = message;
      progress(`  ${name}: FAILED: ${message}`);
      return null;
    } finally {
      await this.settle();
    }
  }

  /** Waits (bounded) until the tunnel has torn down every connection to the target. */
  async settle(): Promise<void> {
    try {
      await within(this.target.allClosed(), 20_000, "connections to the target closing");
    } catch {
      progress(`  warning: ${this.target.open} connections to the target still open`);
    }
  }

  async throughputRows(port: number): Promise<void> {
    const { seconds, bytes, streams } = this.settings;
    const bound = seconds * 1000 + 90_000;
    this.result.throughput1 = await this.step(
      "throughput1",
      () => measureThroughput(port, this.target, 1, seconds, bytes),
      bound,
    );
    if (this.result.throughput1) {
      progress(`  1 stream: ${this.result.throughput1.mbPerSecond.toFixed(0)} MB/s`);
    }
    this.result.throughputN = await this.step(
      "throughputN",
      () => measureThroughput(port, this.target, streams, seconds, bytes),
      bound,
    );
    if (this.result.throughputN) {
      progress(`  ${streams} streams: ${this.result.throughputN.mbPerSecond.toFixed(0)} MB/s`);
    }
  }

  async latencyRow(port: number): Promise<void> {
    const { rtts, warmupRtts } = this.settings;
    this.result.latency = await this.step(
      "latency",
      () => measureLatency(port, rtts, warmupRtts),
      60_000 + (rtts + warmupRtts) * 20,
    );
    const l = this.result.latency;
    if (l) progress(`  round trip: p50 ${l.p50Us.toFixed(0)} µs, p99 ${l.p99Us.toFixed(0)} µs`);
  }

  async sessionsRow(port: number): Promise<void> {
    const { workers, sessionsSeconds } = this.settings;
    this.result.sessions = await this.step(
      "sessions",
      () => measureSessionRate(port, workers, sessionsSeconds),
      sessionsSeconds * 1000 + 30_000,
    );
    const s = this.result.sessions;
    if (s) {
      progress(
        `  sessions: ${s.perSecond.toFixed(0)}/s (${s.completed} done, ${s.failed} failed, ` +
          `p50 ${s.p50Ms.toFixed(2)} ms each)`,
      );
    }
  }

  async memoryRow(tunnel: RunningTunnel): Promise<void> {
    const count = this.settings.idleSessions;
    this.result.idle = await this.step("memory", async () => {
      const serverBefore = await treeRssKiB(tunnel.server.pid);
      const clientBefore = await treeRssKiB(tunnel.client.pid);
      const started = performance.now();
      const conns = await openIdleSessions(tunnel.localPort, count, IDLE_OPENERS);
      try {
        const openSeconds = (performance.now() - started) / 1000;
        const serverAfter = await treeRssKiB(tunnel.server.pid);
        const clientAfter = await treeRssKiB(tunnel.client.pid);
        return {
          sessions: count,
          openSeconds,
          serverRssBeforeKiB: serverBefore,
          serverRssAfterKiB: serverAfter,
          serverKiBPerSession: (serverAfter - serverBefore) / count,
          clientRssBeforeKiB: clientBefore,
          clientRssAfterKiB: clientAfter,
          clientKiBPerSession: (clientAfter - clientBefore) / count,
        };
      } finally {
        closeAll(conns);
      }
    }, 120_000);
    const m = this.result.idle;
    if (m) {
      progress(
        `  ${count} idle sessions (opened in ${m.openSeconds.toFixed(2)} s): server ` +
          `${m.serverRssBeforeKiB} -> ${m.serverRssAfterKiB} KiB = ${
            m.serverKiBPerSession.toFixed(1)
          } KiB/session; ` +
          `client ${m.clientKiBPerSession.toFixed(1)} KiB/session`,
      );
    }
  }
}

async function measureBaseline(settings: Settings, target: TargetServer): Promise<TunnelResult> {
  const result = emptyResult("tcp", "plain TCP (baseline)", null);
  const started = performance.now();
  const cpu = await watchCpu();
  progress("plain TCP (source -> sink, no tunnel)");
  const measurer = new Measurer(settings, target, result);
  await measurer.latencyRow(target.port);
  await measurer.sessionsRow(target.port);
  await measurer.throughputRows(target.port);
  result.seconds = (performance.now() - started) / 1000;
  result.interference = await cpu([]);
  progress(`  (${result.seconds.toFixed(1)} s${describe(result.interference)})`);
  return result;
}

async function measureTunnel(
  tunnel: Tunnel,
  detection: Detection,
  settings: Settings,
  target: TargetServer,
  registry: Registry,
  tmp: string,
  fileLimit: number,
): Promise<TunnelResult> {
  const result = emptyResult(
    tunnel.name,
    tunnel.label,
    detection.available ? detection.version : null,
  );
  if (!detection.available) {
    result.skipped = detection.reason;
    progress(`${tunnel.label}: skipped (${detection.reason})`);
    return result;
  }
  progress(`${tunnel.label} (${detection.version})`);
  const started = performance.now();
  const cpu = await watchCpu();
  const dir = await Deno.makeTempDir({ dir: tmp, prefix: `${tunnel.name}-` });
  let running: RunningTunnel;
  try {
    running = await tunnel.start({
      registry,
      tmp: dir,
      targetPort: target.port,
      maxConns: settings.idleSessions + 100,
      fileLimit,
    }, detection.programs);
  } catch (err) {
    result.errors.start = (err as Error).message;
    progress(`  start FAILED: ${result.errors.start}`);
    return result;
  }
  try {
    const measurer = new Measurer(settings, target, result);
    // Warm-up: proves the chain end to end and gets lazy initialisation out of the memory row.
    const warm = await measurer.step("warmup", async () => {
      closeAll(await openIdleSessions(running.localPort, WARMUP_SESSIONS, 4));
    }, 30_000);
    if (warm === null) return result;
    if (settings.idleSessions > 0) await measurer.memoryRow(running);
    await measurer.latencyRow(running.localPort);
    await measurer.sessionsRow(running.localPort);
    await measurer.throughputRows(running.localPort);
  } finally {
    result.interference = await cpu([running.server.pid, running.client.pid]);
    await running.stop();
    result.seconds = (performance.now() - started) / 1000;
    progress(`  (${result.seconds.toFixed(1)} s${describe(result.interference)})`);
  }
  return result;
}

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseSettings(args);
  } catch (err) {
    progress(`bench: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (parsed === null) {
    console.log(USAGE);
    return 0;
  }
  const { out, vpn: withVpn, vpnPings, ...settings } = parsed;
  const startedAt = new Date();
  const clock = performance.now();

  // Each idle session holds two sockets in this process and two in each tunnel process.
  const wantedFiles = settings.idleSessions * 2 + 1024;
  const fileLimit = await raiseOpenFileLimit(wantedFiles);
  if (fileLimit < wantedFiles) {
    progress(
      `warning: open-file limit ${fileLimit} < ${wantedFiles} needed for ${settings.idleSessions} idle sessions; ` +
        `raise it (ulimit -n) or lower --idle-sessions`,
    );
  }

  const registry = new Registry();
  const tmp = await Deno.makeTempDir({ prefix: "cipherlink-bench-" });
  const target = new TargetServer();
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    progress("bench: interrupted; stopping the tunnels");
    registry.killAll().finally(() => {
      try {
        Deno.removeSync(tmp, { recursive: true });
      } catch {
        // Best effort on the way out.
      }
      Deno.exit(130);
    });
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  signals.forEach((s) => Deno.addSignalListener(s, onSignal));

  try {
    const machine = await machineInfo();
    const selected = TUNNELS.filter((t) => settings.only.includes(t.name));
    const detections = await Promise.all(selected.map((t) => t.detect()));
    const versions: Record<string, string> = {
      deno: `deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
    };
    selected.forEach((t, i) => {
      const d = detections[i];
      versions[t.name] = d.available ? d.version : `not available: ${d.reason}`;
    });

    const header = [
      `Cipherlink benchmark, ${startedAt.toISOString()}`,
      `machine: nproc ${machine.nproc}, ${machine.cpu}, ${machine.kernel}, ${machine.memoryMiB} MiB RAM, open-file limit ${machine.openFileLimit}`,
      `versions: ${Object.values(versions).join("; ")}`,
      `settings: --seconds ${settings.seconds} --bytes ${settings.bytes} --streams ${settings.streams} ` +
      `--rtts ${settings.rtts} --warmup-rtts ${settings.warmupRtts} --sessions-seconds ${settings.sessionsSeconds} ` +
      `--workers ${settings.workers} --idle-sessions ${settings.idleSessions} --only ${
        settings.only.join(",")
      }`,
    ].join("\n");
    console.log(header);
    if ((machine.loadAtStart[0] ?? 0) > 0.5) {
      console.log(
        `warning: load average ${
          machine.loadAtStart.join(" ")
        } at the start: other work is using ` +
          `the CPU, so the figures will be lower and noisier than on a quiet machine`,
      );
    }
    console.log();

    const baseline = await measureBaseline(settings, target);
    const tunnels: TunnelResult[] = [];
    for (const [i, tunnel] of selected.entries()) {
      tunnels.push(
        await measureTunnel(tunnel, detections[i], settings, target, registry, tmp, fileLimit),
      );
    }

    const vpn: VpnBench | undefined = withVpn
      ? await measureVpn({ seconds: Math.max(settings.seconds, 5), pings: vpnPings, progress })
      : undefined;

    const ceilings: Ceiling[] = [];
    const webcryptoRow = tunnels.find((t) => t.name === "cipherlink" && !t.skipped);
    if (webcryptoRow) {
      progress("Web Crypto's own ceiling (seal+open in this process)");
      const run = await measureCeiling(Math.max(1, settings.seconds));
      const fraction = (mbps: number | undefined) =>
        mbps === undefined ? null : mbps / run.sealOpenMBps;
      ceilings.push({
        provider: "webcrypto",
        ...run,
        fraction1: fraction(webcryptoRow.throughput1?.mbPerSecond),
        fractionN: fraction(webcryptoRow.throughputN?.mbPerSecond),
      });
      progress(`  ${run.sealOpenMBps.toFixed(0)} MB/s`);
    }

    machine.loadAtEnd = loadAverage();
    const results: BenchResults & { vpn?: VpnBench } = {
      schema: 2,
      startedAt: startedAt.toISOString(),
      seconds: (performance.now() - clock) / 1000,
      machine,
      versions,
      settings,
      baseline,
      tunnels,
      ratios: ratios(tunnels, metrics(settings.streams)),
      vpn,
      targets: targets(tunnels, settings.streams),
      ceilings,
    };

    console.log();
    console.log(table(results));
    console.log();
    for (const line of targetLines(results)) console.log(line);
    console.log();
    if (vpn) console.log(vpnTable(vpn) + "\n");
    const notes: string[] = [];
    for (const t of [baseline, ...tunnels]) {
      if (t.skipped) notes.push(`${t.label}: skipped, ${t.skipped}`);
      if (t.interference && t.interference.otherPercent >= INTERFERENCE_NOTE_PERCENT) {
        notes.push(
          `${t.label}: other programs used ${t.interference.otherPercent.toFixed(0)}% of the ` +
            `CPU during its measurements; its figures are likely low`,
        );
      }
      for (const [step, message] of Object.entries(t.errors)) {
        notes.push(`${t.label}: ${step} failed: ${message.split("\n")[0]}`);
      }
    }
    notes.push(
      `MB = 10^6 bytes; memory = (server VmRSS, with its child processes, with ${settings.idleSessions} idle sessions - before) / ${settings.idleSessions}; ` +
        `ratios above 1 are better for throughput and sessions, below 1 for latency and memory.`,
    );
    for (const note of notes) console.log(`note: ${note}`);

    await Deno.mkdir(out, { recursive: true });
    // Three decimals are more than the measurements' precision and keep the file small.
    const rounded = (_key: string, value: unknown) =>
      typeof value === "number" && !Number.isInteger(value)
        ? Math.round(value * 1000) / 1000
        : value;
    await Deno.writeTextFile(`${out}/latest.json`, JSON.stringify(results, rounded, 2) + "\n");
    await Deno.writeTextFile(`${out}/latest.svg`, svg(results));
    if (vpn) {
      const vpnOnly = { startedAt: results.startedAt, machine, versions, vpn };
      await Deno.writeTextFile(`${out}/vpn.json`, JSON.stringify(vpnOnly, rounded, 2) + "\n");
    }
    console.log(
      `wrote ${out}/latest.json and ${out}/latest.svg; the run took ${
        results.seconds.toFixed(1)
      } s`,
    );
    const failed = [baseline, ...tunnels].some((t) => Object.keys(t.errors).length > 0) ||
      (vpn?.rows.some((r) => r.error !== null) ?? false);
    return failed ? 1 : 0;
  } finally {
    await registry.stopAll();
    await target.close();
    signals.forEach((s) => Deno.removeSignalListener(s, onSignal));
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
