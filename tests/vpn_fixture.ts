/**
 * Test fixture for the VPN mode: network namespaces that the test creates
 * and removes itself (names carry this process's id), joined to a server
 * namespace by veth pairs, and Cipherlink or helper programs run inside
 * them. Every address (10.99.x underlay, 10.100.0.x / fd10::x tunnel) exists
 * only inside these namespaces.
 * @module
 */

import { LineLog, runArgv, type RunResult } from "./process.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Output of a finished command. */
export type Output = Pick<RunResult, "code" | "stdout" | "stderr">;

/** Runs a command to completion, within the one-off run deadline (tests/process.ts). */
export async function run(cmd: string, args: string[], stdin?: Uint8Array): Promise<Output> {
  const { code, stdout, stderr } = await runArgv([cmd, ...args], { stdin });
  return { code, stdout, stderr };
}

async function must(args: string[]): Promise<void> {
  const out = await run("ip", args);
  if (out.code !== 0) throw new Error(`ip ${args.join(" ")}: ${out.stderr.trim()}`);
}

/** Runs `cmd args` inside namespace `ns`. */
export function inNs(ns: string, cmd: string, args: string[], stdin?: Uint8Array): Promise<Output> {
  return run("ip", ["netns", "exec", ns, cmd, ...args], stdin);
}

/** A long-running process inside a namespace whose stderr lines are kept. */
export class NsProcess {
  readonly child: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  readonly #log: LineLog;

  /** `lines` come from stderr (Cipherlink's log) or stdout (the test peers). */
  constructor(ns: string, argv: string[], from: "stderr" | "stdout" = "stderr") {
    this.child = new Deno.Command("ip", {
      args: ["netns", "exec", ns, ...argv],
      stdin: "null",
      stdout: from === "stdout" ? "piped" : "null",
      stderr: from === "stderr" ? "piped" : "inherit",
    }).spawn();
    this.status = this.child.status;
    this.#log = new LineLog(from === "stdout" ? this.child.stdout : this.child.stderr, 15_000);
  }

  /** Every line so far. */
  get lines(): string[] {
    return this.#log.lines;
  }

  /** Cipherlink (from source, all permissions) inside `ns`. */
  static cipherlink(ns: string, args: string[]): NsProcess {
    return new NsProcess(ns, [
      Deno.execPath(),
      "run",
      "--quiet",
      "--no-prompt",
      "--allow-all",
      MAIN,
      ...args,
    ]);
  }

  /**
   * Resolves the `count`-th stderr line matching `pattern` (past ones
   * included); rejects with the log after `ms` or when the process ends.
   */
  waitForLine(pattern: RegExp, ms = 15_000, count = 1): Promise<string> {
    return this.#log.waitFor(pattern, ms, count);
  }

  /** The log so far, for failure messages. */
  log(): string {
    return this.lines.join("\n");
  }

  /** Sends `signal` (if still running) and resolves the exit code once stderr is drained. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    try {
      this.child.kill(signal);
    } catch {
      // Already exited.
    }
    return await this.exit();
  }

  /** Resolves the exit code once the process ended and stderr is drained. */
  async exit(ms = 20_000): Promise<number> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`process still running after ${ms} ms:\n${this.log()}`)),
        ms,
      );
    });
    try {
      const { code } = await Promise.race([this.status, late]);
      await this.#log.drained;
      return code;
    } finally {
      clearTimeout(timer);
    }
  }
}

const PEER = new URL("./vpn/netpeer.py", import.meta.url).pathname;

/** tests/vpn/netpeer.py inside `ns`; its stdout lines are kept. */
export function netPeer(ns: string, args: string[]): NsProcess {
  return new NsProcess(ns, ["python3", PEER, ...args], "stdout");
}

/** Runs tests/vpn/netpeer.py inside `ns` to completion. */
export function netPeerRun(ns: string, args: string[], stdin?: Uint8Array): Promise<Output> {
  return inNs(ns, "python3", [PEER, ...args], stdin);
}

/** A server namespace and client namespaces joined by veth pairs. */
export interface Topology {
  server: string;
  clients: string[];
  /** The server's underlay address as seen from client i. */
  serverAddress(i: number): string;
  remove(): Promise<void>;
}

const PREFIX = `cl-vpn-${Deno.pid}`;

/** Removes namespaces left by earlier runs of this test whose process is gone. */
async function removeStale(): Promise<void> {
  const listed = await run("ip", ["netns", "list"]);
  for (const line of listed.stdout.split("\n")) {
    const stale = /^(cl-vpn-(\d+)-\w+)\b/.exec(line);
    if (!stale) continue;
    const alive = await Deno.stat(`/proc/${stale[2]}`).then(() => true, () => false);
    if (!alive) await run("ip", ["netns", "del", stale[1]]);
  }
}

/**
 * Creates `cl-vpn-PID-s` and `clients` client namespaces `cl-vpn-PID-cN`,
 * client N reaching the server at 10.99.N.1 from 10.99.N.2.
 * Throws when the machine does not allow namespaces (not root, no `ip`).
 */
export async function createTopology(clients: number): Promise<Topology> {
  await removeStale();
  const server = `${PREFIX}-s`;
  const names = Array.from({ length: clients }, (_, i) => `${PREFIX}-c${i + 1}`);
  const created: string[] = [];
  const remove = async () => {
    for (const ns of created.reverse()) await run("ip", ["netns", "del", ns]);
  };
  try {
    for (const ns of [server, ...names]) {
      await must(["netns", "add", ns]);
      created.push(ns);
      await must(["-n", ns, "link", "set", "lo", "up"]);
    }
    for (const [i, ns] of names.entries()) {
      const n = i + 1;
      const [a, b] = [`clv${Deno.pid % 100000}s${n}`, `clv${Deno.pid % 100000}c${n}`];
      await must([
        "link",
        "add",
        a,
        "netns",
        server,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns,
      ]);
      await must(["-n", server, "addr", "add", `10.99.${n}.1/24`, "dev", a]);
      await must(["-n", ns, "addr", "add", `10.99.${n}.2/24`, "dev", b]);
      await must(["-n", server, "link", "set", a, "up"]);
      await must(["-n", ns, "link", "set", b, "up"]);
    }
  } catch (err) {
    await remove();
    throw err;
  }
  return { server, clients: names, serverAddress: (i) => `10.99.${i + 1}.1`, remove };
}

/** Pings once per try until a reply comes or `ms` passes; resolves whether it answered. */
export async function pingUntil(ns: string, address: string, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  const v6 = address.includes(":");
  while (Date.now() < deadline) {
    const out = await inNs(ns, "ping", [...(v6 ? ["-6"] : []), "-c", "1", "-W", "1", address]);
    if (out.code === 0) return true;
  }
  return false;
}

/** Pings `count` times; resolves ping's output (exit code 0 when every packet answered). */
export function ping(ns: string, address: string, count = 3): Promise<Output> {
  const v6 = address.includes(":");
  return inNs(ns, "ping", [
    ...(v6 ? ["-6"] : []),
    "-c",
    String(count),
    "-i",
    "0.2",
    "-W",
    "2",
    address,
  ]);
}
