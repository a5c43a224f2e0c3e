/**
 * Real processes for the soak: `cipherlink server|client` and the soak's own
 * helper scripts, optionally inside a network namespace, with the file
 * descriptor limit raised, their whole output kept in the log book, and
 * readiness taken from the `listening on HOST:PORT` line (never a sleep).
 * @module
 */

import { cipherlinkArgvWith, type TempKeyFile, tempKeyFile } from "../../support/process.ts";
import type { KeyFormat } from "../../lib/protocol/keys.ts";
import type { LogBook } from "./common.ts";
import { LOOPBACK } from "./net.ts";

/** The soak helper scripts' folder. */
export const SOAK_DIR = new URL(".", import.meta.url).pathname;

/** File descriptors a soak process may need (thousands of sockets). */
export const NOFILE = 65536;

/** A running process whose output is being collected. */
export interface Proc {
  name: string;
  process: Deno.ChildProcess;
  pid: number;
  /** The port of its `listening on` line, when it has one. */
  port: number;
  /** stderr lines so far. */
  lines: string[];
  /** stdout lines so far (helpers report on stdout). */
  out: string[];
  /** Resolves the first stderr (or stdout) line matching `pattern`, past ones included. */
  waitForLine(pattern: RegExp, limitMs?: number): Promise<string>;
  /** Resolves when the process exited, with its code. */
  exited: Promise<number>;
  /** Sends `signal` (if still running) and resolves the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
  /** Resident memory now, in bytes (0 once it has exited). */
  rss(): Promise<number>;
  /** Bytes on stdout so far (only counted with `dataStdout`). */
  stdoutBytes(): number;
}

/** How to run one process. */
export interface SpawnOptions {
  /** Run inside this network namespace (`ip netns exec`). */
  netns?: string;
  /** Wait for `listening on HOST:PORT` before resolving. */
  ready?: boolean;
  stdin?: "piped" | "null";
  /** Extra environment. */
  env?: Record<string, string>;
  /** stdout carries data (a pipe-mode client): count it, keep none of it. */
  dataStdout?: boolean;
}

/** The argv of `cipherlink ARGS` from source, with what a server or client needs. */
export function cipherlinkArgv(args: string[]): string[] {
  return cipherlinkArgvWith(["--allow-net", "--allow-read", "--allow-env"], args);
}

/**
 * `cipherlink server --listen HOST:0 --key KEY ...args` (HOST 127.0.0.1
 * unless told), started with {@link spawn}.
 */
export function spawnServer(
  book: LogBook,
  name: string,
  key: string,
  args: string[],
  options: SpawnOptions,
  host = LOOPBACK,
): Promise<Proc> {
  return spawn(
    book,
    name,
    cipherlinkArgv(["server", "--listen", `${host}:0`, "--key", key, ...args]),
    options,
  );
}

/** `cipherlink client --server SERVER --key KEY ...args`, started with {@link spawn}. */
export function spawnClient(
  book: LogBook,
  name: string,
  server: string,
  key: string,
  args: string[],
  options: SpawnOptions,
): Promise<Proc> {
  return spawn(
    book,
    name,
    cipherlinkArgv(["client", "--server", server, "--key", key, ...args]),
    options,
  );
}

/** The argv of a soak helper script (scripts/soak/NAME.ts). */
export function helperArgv(name: string, args: string[]): string[] {
  return [
    Deno.execPath(),
    "run",
    "--quiet",
    "--no-prompt",
    "--allow-net",
    "--allow-read",
    `${SOAK_DIR}${name}.ts`,
    ...args,
  ];
}

/** One attempt of the probe process (scripts/soak/probe.ts), from its JSON line. */
export interface ProbeSample {
  /** When the attempt started (epoch ms). */
  at: number;
  handshakeMs?: number;
  roundTripMs?: number;
  error?: string;
}

/**
 * Starts the probe, the legitimate client measuring a server under attack
 * (one session every 50 ms to 127.0.0.1:`port` with the key at `keyPath`),
 * and resolves once it is ready.
 */
export async function startProbe(
  book: LogBook,
  name: string,
  port: number,
  keyPath: string,
): Promise<Proc> {
  const probe = await spawn(
    book,
    name,
    helperArgv("probe", [
      "--server",
      `${LOOPBACK}:${port}`,
      "--key",
      keyPath,
      "--interval-ms",
      "50",
    ]),
  );
  await probe.waitForLine(/"ready"/);
  return probe;
}

/** The probe's attempts that started between `start` and `end` (epoch ms). */
export function probeSamples(probe: Proc, start: number, end: number): ProbeSample[] {
  return probe.out
    .filter((line) => line.startsWith('{"at"'))
    .map((line) => JSON.parse(line) as ProbeSample)
    .filter((s) => s.at >= start && s.at <= end);
}

/**
 * Starts `argv` under bash with `ulimit -n` raised (to the hard limit when
 * NOFILE is not allowed), optionally in a namespace; every byte it writes is
 * appended to `book` under `name`.
 */
export async function spawn(
  book: LogBook,
  name: string,
  argv: string[],
  options: SpawnOptions = {},
): Promise<Proc> {
  const raise = `ulimit -n ${NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  const wrapped = ["bash", "-c", raise, "soak", ...argv];
  const full = options.netns ? ["ip", "netns", "exec", options.netns, ...wrapped] : wrapped;
  const process = new Deno.Command(full[0], {
    args: full.slice(1),
    stdin: options.stdin ?? "null",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
  }).spawn();
  const lines: string[] = [];
  const out: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  let ended = false;
  const collect = async (stream: ReadableStream<Uint8Array>, into: string[]) => {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      book.append(name, chunk);
      pending += decoder.decode(chunk, { stream: true });
      const parts = pending.split("\n");
      pending = parts.pop()!;
      for (const line of parts) {
        into.push(line);
        for (const w of waiters.filter((w) => w.pattern.test(line))) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
    if (pending) into.push(pending);
  };
  let stdoutBytes = 0;
  const countData = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) stdoutBytes += chunk.byteLength;
  };
  const drained = Promise.all([
    collect(process.stderr, lines),
    options.dataStdout ? countData(process.stdout) : collect(process.stdout, out),
  ])
    .then(() => {
      ended = true;
    });
  const exited = process.status.then(async (s) => {
    await drained;
    return s.code;
  });
  const waitForLine = (pattern: RegExp, limitMs = 20_000): Promise<string> => {
    const seen = lines.find((l) => pattern.test(l)) ?? out.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    if (ended) return Promise.reject(new Error(`${name} ended without a line matching ${pattern}`));
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new Promise<string>((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      waiters.push(waiter);
      timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(new Error(`${name}: no line matching ${pattern} within ${limitMs} ms`));
      }, limitMs);
      exited.then(() => {
        if (!waiters.includes(waiter)) return;
        waiters.splice(waiters.indexOf(waiter), 1);
        clearTimeout(timer);
        reject(new Error(`${name} exited without a line matching ${pattern}:\n${tail(lines)}`));
      });
    });
  };
  let port = 0;
  if (options.ready) {
    try {
      const line = await waitForLine(/listening on /);
      port = Number(/listening on \S*:(\d+)/.exec(line)![1]);
    } catch (err) {
      try {
        process.kill("SIGKILL");
      } catch {
        // It has exited already.
      }
      await exited;
      throw err;
    }
  }
  let done = false;
  exited.then(() => (done = true));
  return {
    name,
    process,
    pid: process.pid,
    port,
    lines,
    out,
    waitForLine,
    exited,
    async stop(signal: Deno.Signal = "SIGTERM") {
      if (!done) {
        try {
          process.kill(signal);
        } catch {
          // It exited meanwhile.
        }
      }
      return await exited;
    },
    stdoutBytes: () => stdoutBytes,
    async rss() {
      if (done) return 0;
      try {
        const status = await Deno.readTextFile(`/proc/${process.pid}/status`);
        return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
      } catch {
        return 0;
      }
    },
  };
}

/** The last lines of a log, for error messages. */
export function tail(lines: string[], count = 8): string {
  return lines.slice(-count).join("\n");
}

/** A temporary folder with a fresh key in it (raw, mode 0600 unless told). */
export async function tempKey(
  book: LogBook,
  options: { mode?: number; format?: KeyFormat } = {},
): Promise<TempKeyFile> {
  const file = await tempKeyFile("cipherlink-soak-", options);
  book.keys.push(file.key);
  return file;
}
