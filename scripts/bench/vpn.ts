/**
 * The VPN rows of `deno task bench --vpn` (root only): one iperf3 TCP stream
 * and a ping round trip across Cipherlink's VPN mode (each crypto provider
 * this build has) and across userspace WireGuard (Debian's `wireguard-go`
 * and `wireguard-tools`), each between two network namespaces joined by a
 * veth pair that this module creates and removes, plus the bare veth link as
 * the baseline. Every address (10.98.0.x link, 10.97.0.x tunnels) exists
 * only inside those namespaces.
 * @module
 */

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

/** Names carry this process's id (interface names at most 15 characters). */
const ID = Deno.pid % 100000;
const SERVER_NS = `cl-bench-${Deno.pid}-s`;
const CLIENT_NS = `cl-bench-${Deno.pid}-c`;
const LINK = { server: `clb${ID}s`, client: `clb${ID}c` };
const LINK_ADDRESS = { server: "10.98.0.1", client: "10.98.0.2" };
const TUNNEL_ADDRESS = { server: "10.97.0.1", client: "10.97.0.2" };
const CIPHERLINK_PORT = 8443;
const WIREGUARD_PORT = 51820;

/** One VPN row. */
export interface VpnRow {
  name: string;
  label: string;
  /** Why it did not run, or null. */
  skipped: string | null;
  /** One iperf3 TCP stream, received bytes per second / 10^6. */
  mbPerSecond: number | null;
  /** Ping round trips in microseconds. */
  rttP50Us: number | null;
  rttP99Us: number | null;
  error: string | null;
}

/** The VPN part of the bench's JSON. */
export interface VpnBench {
  seconds: number;
  pings: number;
  rows: VpnRow[];
  /** Cipherlink's single-stream throughput over wireguard-go's, per provider. */
  ratios: Record<string, number | null>;
}

/** Settings of the VPN rows. */
export interface VpnSettings {
  /** iperf3 duration per row. */
  seconds: number;
  /** Pings per row (10 ms apart). */
  pings: number;
  progress(text: string): void;
}

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[]): Promise<Output> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", stdin: "null" })
    .output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

async function must(cmd: string, args: string[]): Promise<string> {
  const out = await run(cmd, args);
  if (out.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${out.stderr.trim()}`);
  return out.stdout;
}

function inNs(ns: string, cmd: string, args: string[]): Promise<string> {
  return must("ip", ["netns", "exec", ns, cmd, ...args]);
}

/** A background process in a namespace; its stderr is kept for errors and readiness. */
class Background {
  readonly child: Deno.ChildProcess;
  text = "";
  #done: Promise<void>;
  /** `text` collects stderr (Cipherlink's log) or stdout (iperf3's). */
  constructor(ns: string, argv: string[], from: "stderr" | "stdout" = "stderr") {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, ...argv],
      stdin: "null",
      stdout: from === "stdout" ? "piped" : "null",
      stderr: from === "stderr" ? "piped" : "null",
    }).spawn();
    this.child = child;
    const stream = from === "stdout" ? child.stdout : child.stderr;
    this.#done = (async () => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this.text += chunk;
      }
    })();
  }

  async waitFor(pattern: RegExp, ms = 30_000): Promise<void> {
    const deadline = Date.now() + ms;
    let exited = false;
    this.child.status.then(() => (exited = true));
    while (!pattern.test(this.text)) {
      if (exited) throw new Error(`exited before ${pattern}:\n${this.text}`);
      if (Date.now() > deadline) throw new Error(`no ${pattern} within ${ms} ms:\n${this.text}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, 10_000);
    await this.child.status;
    clearTimeout(timer);
    await this.#done;
  }
}

async function createNamespaces(): Promise<void> {
  await removeNamespaces();
  for (const ns of [SERVER_NS, CLIENT_NS]) {
    await must("ip", ["netns", "add", ns]);
    await must("ip", ["-n", ns, "link", "set", "lo", "up"]);
  }
  await must("ip", [
    "link",
    "add",
    LINK.server,
    "netns",
    SERVER_NS,
    "type",
    "veth",
    "peer",
    "name",
    LINK.client,
    "netns",
    CLIENT_NS,
  ]);
  for (const side of ["server", "client"] as const) {
    const ns = side === "server" ? SERVER_NS : CLIENT_NS;
    await must("ip", ["-n", ns, "addr", "add", `${LINK_ADDRESS[side]}/24`, "dev", LINK[side]]);
    await must("ip", ["-n", ns, "link", "set", LINK[side], "up"]);
  }
}

async function removeNamespaces(): Promise<void> {
  for (const ns of [SERVER_NS, CLIENT_NS]) await run("ip", ["netns", "del", ns]);
}

/** One iperf3 stream from the client namespace to `address` in the server namespace. */
async function iperf(address: string, seconds: number): Promise<number> {
  const server = new Background(
    SERVER_NS,
    ["iperf3", "-s", "-1", "--forceflush", "-B", address],
    "stdout",
  );
  try {
    await server.waitFor(/Server listening/, 10_000);
    const out = await run("ip", [
      "netns",
      "exec",
      CLIENT_NS,
      "iperf3",
      "-c",
      address,
      "-t",
      String(seconds),
      "-J",
    ]);
    let report: { error?: string; end?: { sum_received?: { bits_per_second: number } } } = {};
    try {
      report = JSON.parse(out.stdout);
    } catch {
      // Reported below with what iperf3 said.
    }
    const bits = report.end?.sum_received?.bits_per_second;
    if (out.code !== 0 || bits === undefined) {
      throw new Error(
        `iperf3 to ${address} failed: ${
          report.error ?? (out.stderr.trim() || out.stdout.slice(0, 200))
        }`,
      );
    }
    return bits / 8 / 1e6;
  } finally {
    await server.stop();
  }
}

/** `count` pings 10 ms apart; p50 and p99 in microseconds. */
async function pings(address: string, count: number): Promise<{ p50: number; p99: number }> {
  const out = await inNs(CLIENT_NS, "ping", [
    "-c",
    String(count),
    "-i",
    "0.01",
    "-W",
    "2",
    address,
  ]);
  const times = [...out.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000)
    .sort((a, b) => a - b);
  if (times.length < count / 2) throw new Error(`only ${times.length} of ${count} pings answered`);
  const at = (q: number) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
  return { p50: at(0.5), p99: at(0.99) };
}

async function measure(
  row: VpnRow,
  address: string,
  settings: VpnSettings,
): Promise<void> {
  // Warm up (JIT, ARP, handshakes) before anything is timed.
  await pings(address, 20);
  const rtt = await pings(address, settings.pings);
  row.rttP50Us = rtt.p50;
  row.rttP99Us = rtt.p99;
  row.mbPerSecond = await iperf(address, settings.seconds);
  settings.progress(
    `  1 stream: ${row.mbPerSecond.toFixed(1)} MB/s; ping p50 ${rtt.p50.toFixed(0)} µs, p99 ${
      rtt.p99.toFixed(0)
    } µs`,
  );
}

function row(name: string, label: string): VpnRow {
  return {
    name,
    label,
    skipped: null,
    mbPerSecond: null,
    rttP50Us: null,
    rttP99Us: null,
    error: null,
  };
}

/** The crypto providers this build's CLI offers (`--crypto` lands with the openssl provider). */
async function providers(): Promise<string[]> {
  const help = await run(Deno.execPath(), ["run", "-A", MAIN, "server", "--help"]);
  return /--crypto/.test(help.stdout) ? ["webcrypto", "openssl"] : ["webcrypto"];
}

async function cipherlinkRow(
  provider: string,
  keyPath: string,
  settings: VpnSettings,
  only: boolean,
): Promise<VpnRow> {
  const result = row(`cipherlink-vpn-${provider}`, `Cipherlink VPN (${provider})`);
  settings.progress(result.label);
  const crypto = only ? [] : ["--crypto", provider];
  const deno = [Deno.execPath(), "run", "--quiet", "--allow-all", MAIN];
  const server = new Background(SERVER_NS, [
    ...deno,
    "server",
    "--listen",
    `${LINK_ADDRESS.server}:${CIPHERLINK_PORT}`,
    "--key",
    keyPath,
    "--tun",
    `clv${ID}s`,
    "--tun-address",
    `${TUNNEL_ADDRESS.server}/24`,
    ...crypto,
  ]);
  let client: Background | null = null;
  try {
    await server.waitFor(/listening on /);
    client = new Background(CLIENT_NS, [
      ...deno,
      "client",
      "--server",
      `${LINK_ADDRESS.server}:${CIPHERLINK_PORT}`,
      "--key",
      keyPath,
      "--tun",
      `clv${ID}c`,
      "--tun-address",
      `${TUNNEL_ADDRESS.client}/24`,
      ...crypto,
    ]);
    await client.waitFor(/vpn connected/);
    await measure(result, TUNNEL_ADDRESS.server, settings);
  } catch (err) {
    result.error = (err as Error).message;
    settings.progress(`  FAILED: ${result.error}`);
  } finally {
    await client?.stop();
    await server.stop();
  }
  return result;
}

async function wireguardRow(tmp: string, settings: VpnSettings): Promise<VpnRow> {
  const result = row("wireguard-go", "WireGuard (wireguard-go)");
  const missing = [];
  for (const program of ["wireguard-go", "wg"]) {
    if ((await run("sh", ["-c", `command -v ${program}`])).code !== 0) missing.push(program);
  }
  if (missing.length) {
    result.skipped = `${
      missing.join(" and ")
    } not installed (apt-get install wireguard-go wireguard-tools)`;
    settings.progress(`${result.label}: skipped (${result.skipped})`);
    return result;
  }
  const version = (await run("wireguard-go", ["--version"])).stdout.trim().split("\n")[0];
  result.label = `WireGuard (${version || "wireguard-go"})`;
  settings.progress(result.label);
  const devices = { server: `wgb${ID}s`, client: `wgb${ID}c` };
  const processes: Background[] = [];
  try {
    const keys: Record<string, { key: string; pub: string }> = {};
    for (const side of ["server", "client"] as const) {
      const key = (await must("wg", ["genkey"])).trim();
      const pub = await new Deno.Command("wg", {
        args: ["pubkey"],
        stdin: "piped",
        stdout: "piped",
      })
        .spawn();
      const writer = pub.stdin.getWriter();
      await writer.write(new TextEncoder().encode(key + "\n"));
      await writer.close();
      keys[side] = { key, pub: decoder.decode((await pub.output()).stdout).trim() };
      await Deno.writeTextFile(`${tmp}/wg-${side}.key`, key + "\n", { mode: 0o600 });
    }
    for (const side of ["server", "client"] as const) {
      const ns = side === "server" ? SERVER_NS : CLIENT_NS;
      const other = side === "server" ? "client" : "server";
      const wg = new Background(ns, [
        "env",
        "WG_PROCESS_FOREGROUND=1",
        "wireguard-go",
        "-f",
        devices[side],
      ]);
      processes.push(wg);
      // The interface exists once wireguard-go is up; wait for it (bounded).
      const deadline = Date.now() + 10_000;
      while ((await run("ip", ["-n", ns, "link", "show", devices[side]])).code !== 0) {
        if (Date.now() > deadline) {
          throw new Error(`wireguard-go did not create ${devices[side]}:\n${wg.text}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await inNs(ns, "wg", [
        "set",
        devices[side],
        "private-key",
        `${tmp}/wg-${side}.key`,
        "listen-port",
        String(WIREGUARD_PORT),
        "peer",
        keys[other].pub,
        "allowed-ips",
        `${TUNNEL_ADDRESS[other]}/32`,
        "endpoint",
        `${LINK_ADDRESS[other]}:${WIREGUARD_PORT}`,
      ]);
      await must("ip", [
        "-n",
        ns,
        "addr",
        "add",
        `${TUNNEL_ADDRESS[side]}/24`,
        "dev",
        devices[side],
      ]);
      await must("ip", ["-n", ns, "link", "set", devices[side], "mtu", "1420", "up"]);
    }
    await measure(result, TUNNEL_ADDRESS.server, settings);
  } catch (err) {
    result.error = (err as Error).message;
    settings.progress(`  FAILED: ${result.error}`);
  } finally {
    for (const side of ["server", "client"] as const) {
      await run("ip", [
        "-n",
        side === "server" ? SERVER_NS : CLIENT_NS,
        "link",
        "del",
        devices[side],
      ]);
    }
    for (const p of processes) await p.stop();
  }
  return result;
}

/** Why the VPN rows cannot run here, or null. */
async function blocker(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "VPN mode is Linux only";
  if (Deno.uid() !== 0) return "needs root (network namespaces and TUN devices)";
  for (const program of ["ip", "iperf3", "ping"]) {
    if ((await run("sh", ["-c", `command -v ${program}`])).code !== 0) {
      return `${program} is not installed`;
    }
  }
  return null;
}

/**
 * Runs the VPN rows: the bare link, Cipherlink's VPN per provider, and
 * wireguard-go, one after another in the same pair of namespaces.
 */
export async function measureVpn(settings: VpnSettings): Promise<VpnBench> {
  const bench: VpnBench = {
    seconds: settings.seconds,
    pings: settings.pings,
    rows: [],
    ratios: {},
  };
  const why = await blocker();
  if (why) {
    settings.progress(`VPN rows: skipped (${why})`);
    bench.rows.push({ ...row("vpn", "VPN rows"), skipped: why });
    return bench;
  }
  const tmp = await Deno.makeTempDir({ prefix: "cipherlink-bench-vpn-" });
  try {
    await createNamespaces();
    const link = row("veth", "veth link, no tunnel (baseline)");
    settings.progress(link.label);
    try {
      await measure(link, LINK_ADDRESS.server, settings);
    } catch (err) {
      link.error = (err as Error).message;
    }
    bench.rows.push(link);
    const keyPath = `${tmp}/shared.key`;
    await Deno.writeFile(keyPath, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const offered = await providers();
    for (const provider of offered) {
      bench.rows.push(await cipherlinkRow(provider, keyPath, settings, offered.length === 1));
    }
    const wireguard = await wireguardRow(tmp, settings);
    bench.rows.push(wireguard);
    for (const r of bench.rows.filter((r) => r.name.startsWith("cipherlink-vpn-"))) {
      bench.ratios[r.name] = r.mbPerSecond !== null && wireguard.mbPerSecond
        ? r.mbPerSecond / wireguard.mbPerSecond
        : null;
    }
  } finally {
    await removeNamespaces();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return bench;
}

/** The VPN rows as a text table. */
export function vpnTable(bench: VpnBench): string {
  const lines = [
    `VPN (one iperf3 TCP stream for ${bench.seconds} s; ${bench.pings} pings 10 ms apart; two namespaces over a veth pair)`,
    "| tunnel | 1 stream MB/s | ping p50 µs | ping p99 µs | throughput vs wireguard-go |",
    "|---|---:|---:|---:|---:|",
  ];
  const fixed = (n: number | null, digits = 0) => (n === null ? "-" : n.toFixed(digits));
  for (const r of bench.rows) {
    if (r.skipped) {
      lines.push(`| ${r.label} | skipped: ${r.skipped} | | | |`);
      continue;
    }
    const ratio = bench.ratios[r.name];
    lines.push(
      `| ${r.label} | ${fixed(r.mbPerSecond, 1)} | ${fixed(r.rttP50Us)} | ${fixed(r.rttP99Us)} | ${
        ratio === undefined ? "" : ratio === null ? "-" : `${ratio.toFixed(2)}x`
      } |` + (r.error ? ` error: ${r.error.split("\n")[0]}` : ""),
    );
  }
  return lines.join("\n");
}
