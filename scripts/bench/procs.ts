/**
 * Child processes for the benchmark: spawning tunnels with their stderr
 * drained, readiness (a log line or a port that accepts), stopping with a
 * bounded escalation to SIGKILL, and a registry that stops whatever is still
 * running when the benchmark ends, fails or is interrupted. Also reads a
 * process's resident memory from /proc.
 * @module
 */

import { freePort } from "../../support/process.ts";

/** A free loopback port (support/process.ts). */
export { freePort };

const decoder = new TextDecoder();

/** A running child process whose stderr is being drained. */
export class Child {
  readonly name: string;
  readonly process: Deno.ChildProcess;
  readonly pid: number;
  /** The last stderr lines, for error messages. */
  readonly lines: string[] = [];
  readonly status: Promise<Deno.CommandStatus>;
  #exited = false;
  #drained: Promise<void>;
  #waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  #registry: Registry;

  constructor(name: string, process: Deno.ChildProcess, registry: Registry) {
    this.name = name;
    this.process = process;
    this.pid = process.pid;
    this.#registry = registry;
    this.status = process.status.then((status) => {
      this.#exited = true;
      return status;
    });
    this.#drained = this.#drain();
  }

  get exited(): boolean {
    return this.#exited;
  }

  async #drain(): Promise<void> {
    let pending = "";
    try {
      for await (const chunk of this.process.stderr.pipeThrough(new TextDecoderStream())) {
        pending += chunk;
        const parts = pending.split("\n");
        pending = parts.pop()!;
        for (const line of parts) this.#line(line);
      }
    } catch {
      // The pipe broke with the process: what was read is all there is.
    }
    if (pending) this.#line(pending);
  }

  #line(line: string): void {
    this.lines.push(line);
    if (this.lines.length > 200) this.lines.shift();
    for (const waiter of this.#waiters.filter((w) => w.pattern.test(line))) {
      this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
      waiter.resolve(line);
    }
  }

  /** Resolves the first stderr line matching `pattern`; rejects on exit or after `ms`. */
  waitForLine(pattern: RegExp, ms = 10_000): Promise<string> {
    const seen = this.lines.find((line) => pattern.test(line));
    if (seen) return Promise.resolve(seen);
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new Promise<string>((resolve, reject) => {
      this.#waiters.push({ pattern, resolve });
      timer = setTimeout(
        () => reject(this.failure(`no line matching ${pattern} within ${ms} ms`)),
        ms,
      );
      this.status.then((s) => reject(this.failure(`exited with ${s.code} before ${pattern}`)));
    }).finally(() => clearTimeout(timer));
  }

  /** An error naming this process, with its last output. */
  failure(what: string): Error {
    const tail = this.lines.slice(-8).join("\n  ");
    return new Error(`${this.name}: ${what}${tail ? `\n  ${tail}` : ""}`);
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`; awaits the exit. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.#exited) {
      signal(this.process, "SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((resolve) => (timer = setTimeout(resolve, graceMs, "late")));
      if (await Promise.race([this.status, late]) === "late") {
        signal(this.process, "SIGKILL");
      }
      clearTimeout(timer);
    }
    await this.status;
    await this.#drained;
    this.#registry.forget(this);
  }

  /** Kills at once and awaits the exit (interrupt path). */
  async kill(): Promise<void> {
    if (!this.#exited) signal(this.process, "SIGKILL");
    await this.status;
    await this.#drained;
    this.#registry.forget(this);
  }
}

function signal(process: Deno.ChildProcess, name: Deno.Signal): void {
  try {
    process.kill(name);
  } catch {
    // Exited in the meantime.
  }
}

/** Every child started and not yet stopped. */
export class Registry {
  #children = new Set<Child>();

  /** Spawns `argv` with stdin/stdout closed and stderr drained. */
  spawn(name: string, argv: string[], options: { cwd?: string } = {}): Child {
    const [command, ...args] = argv;
    const process = new Deno.Command(command, {
      args,
      cwd: options.cwd,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const child = new Child(name, process, this);
    this.#children.add(child);
    return child;
  }

  forget(child: Child): void {
    this.#children.delete(child);
  }

  /** Stops every child still running, politely then by force. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.#children].map((child) => child.stop()));
  }

  /** Kills every child still running and awaits them. */
  async killAll(): Promise<void> {
    await Promise.all([...this.#children].map((child) => child.kill()));
  }
}

/**
 * Resolves once 127.0.0.1:`port` accepts a TCP connection: a bounded retry
 * loop with a short growing backoff. Rejects if `child` exits first or the
 * port is still closed after `ms`.
 */
export async function waitForPort(port: number, child: Child, ms = 10_000): Promise<void> {
  const deadline = performance.now() + ms;
  let backoff = 5;
  for (;;) {
    if (child.exited) throw child.failure(`exited before 127.0.0.1:${port} accepted`);
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return;
    } catch (err) {
      if (!(err instanceof Deno.errors.ConnectionRefused)) throw err;
    }
    if (performance.now() > deadline) {
      throw child.failure(`127.0.0.1:${port} did not accept within ${ms} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 100);
  }
}

/** Resident memory of a process in KiB (VmRSS in /proc/PID/status). */
export async function rssKiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]);
}

/**
 * Resident memory of a process and all its descendants in KiB: for servers
 * that fork a process per connection (sshd). Shared pages count once per
 * process, so this is an upper bound for forked children.
 */
export async function treeRssKiB(pid: number): Promise<number> {
  let total = await rssKiB(pid);
  const children = await Deno.readTextFile(`/proc/${pid}/task/${pid}/children`).catch(() => "");
  for (const child of children.split(/\s+/).filter((c) => c !== "")) {
    total += await treeRssKiB(Number(child)).catch(() => 0);
  }
  return total;
}

/** Runs a short command and returns stdout + stderr ("" if it cannot run), bounded by `ms`. */
export async function capture(argv: string[], ms = 5000): Promise<string> {
  const [command, ...args] = argv;
  try {
    const output = await new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(ms),
    }).output();
    return decoder.decode(output.stdout) + decoder.decode(output.stderr);
  } catch {
    return "";
  }
}

/** The full path of `name` on PATH, or null. */
export async function which(name: string): Promise<string | null> {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    if (!dir) continue;
    try {
      const info = await Deno.stat(`${dir}/${name}`);
      if (info.isFile && (info.mode ?? 0o111) & 0o111) return `${dir}/${name}`;
    } catch {
      // Not in this folder.
    }
  }
  return null;
}

/** The soft and hard limits on open files of this process (children inherit them). */
export async function openFileLimits(): Promise<{ soft: number; hard: number }> {
  const limits = await Deno.readTextFile(`/proc/${Deno.pid}/limits`);
  const match = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits);
  const parse = (text: string | undefined) =>
    text === undefined || text === "unlimited" ? Infinity : Number(text);
  return { soft: parse(match?.[1]), hard: parse(match?.[2]) };
}

/**
 * Raises this process's soft limit on open files to `wanted` (at most the
 * hard limit) with prlimit(1); children spawned afterwards inherit it.
 * Returns the soft limit in force afterwards.
 */
export async function raiseOpenFileLimit(wanted: number): Promise<number> {
  const { soft, hard } = await openFileLimits();
  if (soft >= wanted) return soft;
  const target = Math.min(wanted, hard);
  const prlimit = await which("prlimit");
  if (prlimit) {
    await capture([
      prlimit,
      "--pid",
      String(Deno.pid),
      `--nofile=${target}:${hard === Infinity ? "unlimited" : hard}`,
    ]);
  }
  return (await openFileLimits()).soft;
}

/** Clock ticks the whole machine spent, from the first line of /proc/stat. */
export interface MachineTicks {
  /** user + nice + system: time spent running processes. */
  processes: number;
  /** Time the hypervisor gave to someone else. */
  steal: number;
  /** Every column: the capacity that passed (all CPUs). */
  total: number;
}

/** The machine's CPU tick counters now. */
export async function machineTicks(): Promise<MachineTicks> {
  const stat = await Deno.readTextFile("/proc/stat");
  const fields = stat.split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , , , steal = 0] = fields;
  return {
    processes: user + nice + system,
    steal,
    total: fields.slice(0, 8).reduce((a, b) => a + b, 0),
  };
}

/** User + system clock ticks of a process (all its threads) so far; 0 once it is gone. */
export async function processTicks(pid: number): Promise<number> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // Fields after the command name, which sits in parentheses and may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]); // utime, stime
  } catch {
    return 0;
  }
}
