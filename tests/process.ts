/**
 * Test fixtures that run Cipherlink (or any program) as real processes:
 * one-off commands with their output under a deadline (`runArgv`,
 * `runCipherlink`); long-running daemons whose readiness is the `listening on
 * HOST:PORT` log line, never a fixed sleep (`spawnDaemon`, `startDaemon`); a
 * server, or a server and a client, with a temporary key (`startServerProcess`,
 * `startTunnel`); and `LineLog`, the bounded wait for a log line that every
 * process fixture of the tests uses.
 * @module
 */

import {
  cipherlinkArgvWith,
  freePort,
  type TempKeyFile,
  tempKeyFile,
  within,
} from "../support/process.ts";

/** A free loopback port, and the deadline for any wait (support/process.ts). */
export { freePort, within };

const decoder = new TextDecoder();

/** How long a test waits for a log line unless it names its own bound. */
export const LINE_DEADLINE_MS = 20_000;

/** The permissions the launcher would grant, plus what tests need. */
const TEST_PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  // --crypto openssl: the tests run the program directly; the launcher's
  // narrowed grant is tested through ./cipherlink itself.
  "--allow-ffi",
];

/** How long a one-off command may run unless it names its own bound. */
export const RUN_DEADLINE_MS = 120_000;

/** Output of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Uint8Array;
}

/** How to run a one-off command. */
export interface RunOptions {
  /** Fed to its stdin, which is then closed; no stdin at all unless given. */
  stdin?: Uint8Array;
  env?: Record<string, string>;
  cwd?: string;
  /** It is killed, and the run rejects, after this long (default RUN_DEADLINE_MS). */
  ms?: number;
}

/**
 * Runs `argv` (any program) to completion, feeding `options.stdin` if given.
 * Rejects, after killing it, if it has not exited within `options.ms`: a
 * bound against a hang, never a pacing.
 */
export async function runArgv(argv: string[], options: RunOptions = {}): Promise<RunResult> {
  const [command, ...args] = argv;
  const child = new Deno.Command(command, {
    args,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
    cwd: options.cwd,
  }).spawn();
  // The child may exit before it read all its input (a refused session): a
  // broken pipe on its stdin is not the test's failure; its exit code says.
  const feeding = options.stdin
    ? (async () => {
      const writer = child.stdin.getWriter();
      await writer.write(options.stdin);
      await writer.close();
    })().catch((err) => {
      if (!(err instanceof Deno.errors.BrokenPipe)) throw err;
    })
    : Promise.resolve();
  const output = child.output();
  try {
    const { code, stdout, stderr } = await within(
      output,
      options.ms ?? RUN_DEADLINE_MS,
      argv.join(" "),
    );
    await feeding;
    return {
      code,
      stdout: decoder.decode(stdout),
      stderr: decoder.decode(stderr),
      stdoutBytes: stdout,
    };
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await output.catch(() => {});
    await feeding.catch(() => {});
  }
}

/** Runs `cipherlink ARGS` from source to completion (see {@link runArgv}). */
export function runCipherlink(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return runArgv(cipherlinkArgv(args), options);
}

/** `promtool check metrics` on `text` (needs prometheus installed): its exit code and output. */
export async function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await runArgv(["promtool", "check", "metrics"], {
    stdin: new TextEncoder().encode(text),
  });
  return { code, output: stdout + stderr };
}

/**
 * Lines of a log (a process's stderr, or a logger's output fed with
 * {@link LineLog.add}), and waits for them: every wait has a deadline and
 * fails, with the lines so far, when it passes or the log ends first.
 */
export class LineLog {
  /** Every line so far. */
  readonly lines: string[] = [];
  /** Resolves when the stream (if any) has ended. */
  readonly drained: Promise<void>;
  readonly #defaultMs: number;
  readonly #waiters = new Set<{
    pattern: RegExp;
    resolve: (line: string) => void;
    reject: (err: Error) => void;
  }>();
  readonly #reader: ReadableStreamDefaultReader<string> | null;
  #ended = false;

  /**
   * A log read from `stream` to its end (or, with `null`, fed by
   * {@link LineLog.add}); waits default to `defaultMs`.
   */
  constructor(stream: ReadableStream<Uint8Array> | null, defaultMs = LINE_DEADLINE_MS) {
    this.#defaultMs = defaultMs;
    this.#reader = stream ? stream.pipeThrough(new TextDecoderStream()).getReader() : null;
    this.drained = this.#reader ? this.#drain(this.#reader) : Promise.resolve();
  }

  /** Records one line and resolves the waits it matches. */
  add(line: string): void {
    this.lines.push(line);
    for (const waiter of [...this.#waiters]) {
      if (!waiter.pattern.test(line)) continue;
      this.#waiters.delete(waiter);
      waiter.resolve(line);
    }
  }

  /**
   * Resolves the `count`-th line (the first unless told) matching `pattern`,
   * past or future. Rejects when the log ends without it or after `ms`.
   */
  async waitFor(pattern: RegExp, ms = this.#defaultMs, count = 1): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const seen = this.lines.filter((line) => pattern.test(line));
      if (seen.length >= count) return seen[count - 1];
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no line matching ${pattern} within ${ms} ms:\n${this.lines.join("\n")}`);
      }
      await this.#next(pattern, left);
    }
  }

  /** Resolves once `count` lines match `pattern`, each awaited within `ms`. */
  async waitForCount(pattern: RegExp, count: number, ms = this.#defaultMs): Promise<void> {
    while (this.lines.filter((line) => pattern.test(line)).length < count) {
      await this.#next(pattern, ms);
    }
  }

  /**
   * Waits for the stream's end for up to `ms`, then stops reading: a
   * grandchild that inherited the stream must not keep the test waiting.
   */
  async close(ms = 2000): Promise<void> {
    await within(this.drained, ms, "the log's end").catch(() => this.#reader?.cancel());
    await this.drained;
  }

  #endedWithout(pattern: RegExp): Error {
    return new Error(`the log ended without a line matching ${pattern}:\n${this.lines.join("\n")}`);
  }

  #next(pattern: RegExp, ms: number): Promise<string> {
    if (this.#ended) return Promise.reject(this.#endedWithout(pattern));
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (line: string) => (clearTimeout(timer), resolve(line)),
        reject: (err: Error) => (clearTimeout(timer), reject(err)),
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new Error(`no line matching ${pattern} within ${ms} ms:\n${this.lines.join("\n")}`));
      }, ms);
      this.#waiters.add(waiter);
    });
  }

  async #drain(reader: ReadableStreamDefaultReader<string>): Promise<void> {
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: "", done: true }));
      if (done) break;
      pending += value;
      const parts = pending.split("\n");
      pending = parts.pop()!;
      for (const line of parts) this.add(line);
    }
    if (pending) this.add(pending);
    this.#ended = true;
    for (const waiter of [...this.#waiters]) {
      this.#waiters.delete(waiter);
      waiter.reject(this.#endedWithout(waiter.pattern));
    }
  }
}

/** A running server or client daemon. */
export interface Daemon {
  process: Deno.ChildProcess;
  /** The port of its `listening on HOST:PORT` line. */
  port: number;
  /** `127.0.0.1:PORT`, for `--server` and `--connect`. */
  address: string;
  /** Its stderr. */
  log: LineLog;
  /** Every stderr line so far (the stream keeps being drained). */
  lines: string[];
  /**
   * Resolves the first stderr line matching `pattern`, including past ones.
   * Rejects, with the lines so far, when the process ends without such a
   * line or after `ms` (default LINE_DEADLINE_MS): a bound against a hang,
   * never a pacing.
   */
  waitForLine(pattern: RegExp, ms?: number): Promise<string>;
  /** Sends a signal and resolves the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
}

/**
 * Starts `argv` (any program that logs `listening on HOST:PORT` to stderr
 * when ready: cipherlink, or the interop peer) and resolves once it logged
 * that line, with the real port. Rejects, and ends the process, if it exits
 * first or is not ready within `readyMs`.
 */
export async function spawnDaemon(
  argv: string[],
  options: { env?: Record<string, string>; readyMs?: number } = {},
): Promise<Daemon> {
  const [command, ...args] = argv;
  const process = new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: options.env,
  }).spawn();
  const log = new LineLog(process.stderr);
  const status = process.status;
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    try {
      process.kill(signal);
    } catch {
      // Already exited.
    }
    const { code } = await status;
    await log.drained;
    return code;
  };
  try {
    const ready = await Promise.race([
      log.waitFor(/listening on \S*:\d+/, options.readyMs),
      status.then((s) => {
        throw new Error(`${argv.join(" ")} exited with ${s.code}:\n${log.lines.join("\n")}`);
      }),
    ]);
    const port = Number(/listening on \S*:(\d+)/.exec(ready)![1]);
    return {
      process,
      port,
      address: `127.0.0.1:${port}`,
      log,
      lines: log.lines,
      waitForLine: (pattern, ms) => log.waitFor(pattern, ms),
      stop,
    };
  } catch (err) {
    await stop("SIGKILL");
    throw err;
  }
}

/**
 * Starts `cipherlink ARGS` from source and resolves once it logged
 * `listening on …`, with the real port (see {@link spawnDaemon}).
 */
export function startDaemon(args: string[], env?: Record<string, string>): Promise<Daemon> {
  return spawnDaemon(cipherlinkArgv(args), { env });
}

/** A temporary key file: its folder, path, the key, and how to remove them. */
export type TempKey = TempKeyFile;

/** A cipherlink server process on 127.0.0.1 with its key. */
export interface ServerProcess {
  key: TempKey;
  server: Daemon;
  /** The server's `127.0.0.1:PORT`. */
  address: string;
  /** `client --key KEY --server ADDRESS ...args`: a client of this server. */
  clientArgs(...args: string[]): string[];
  /**
   * Stops the client (if any), then the server with `signal` (SIGTERM unless
   * told); removes the key unless it was given. Resolves the server's exit code.
   */
  stop(signal?: Deno.Signal): Promise<number>;
}

/** A server process and a client process in front of it. */
export interface Tunnel extends ServerProcess {
  client: Daemon;
  /** The client's listening port (its --listen or --socks). */
  port: number;
}

/** What {@link startServerProcess} and {@link startTunnel} start. */
export interface TunnelOptions {
  /** Server arguments after `--key KEY --listen 127.0.0.1:0`. */
  server?: string[];
  /** A key of the caller's (kept by stop()); a fresh temporary one unless given. */
  key?: TempKey;
}

/**
 * `cipherlink server --key KEY --listen 127.0.0.1:0 ...options.server` with a
 * fresh temporary key (unless given), once it is listening.
 */
export async function startServerProcess(options: TunnelOptions = {}): Promise<ServerProcess> {
  const key = options.key ?? await tempKey();
  const removeKey = options.key ? () => Promise.resolve() : () => key.cleanup();
  let server: Daemon;
  try {
    server = await startDaemon([
      "server",
      "--key",
      key.path,
      "--listen",
      "127.0.0.1:0",
      ...options.server ?? [],
    ]);
  } catch (err) {
    await removeKey();
    throw err;
  }
  return {
    key,
    server,
    address: server.address,
    clientArgs: (...args) => ["client", "--key", key.path, "--server", server.address, ...args],
    async stop(signal?: Deno.Signal) {
      const code = await server.stop(signal);
      await removeKey();
      return code;
    },
  };
}

/**
 * A server ({@link startServerProcess}) and `cipherlink client --key KEY
 * --server SERVER ...client` (whose arguments name its mode, e.g. `--listen
 * 127.0.0.1:0` or `--socks 127.0.0.1:0`), both listening.
 */
export async function startTunnel(
  client: string[],
  options: TunnelOptions = {},
): Promise<Tunnel> {
  const served = await startServerProcess(options);
  let daemon: Daemon;
  try {
    daemon = await startDaemon(served.clientArgs(...client));
  } catch (err) {
    await served.stop();
    throw err;
  }
  return {
    ...served,
    client: daemon,
    port: daemon.port,
    async stop(signal?: Deno.Signal) {
      await daemon.stop();
      return await served.stop(signal);
    },
  };
}

/** A temporary folder with a fresh raw key in it. */
export function tempKey(): Promise<TempKey> {
  return tempKeyFile("cipherlink-test-");
}

/**
 * The argv that runs `cipherlink ARGS` from source (the deno executable
 * first), for spawning with other stdio or handing to another program such
 * as ssh's ProxyCommand.
 */
export function cipherlinkArgv(args: string[]): string[] {
  return cipherlinkArgvWith(TEST_PERMISSIONS, args);
}

/** `daemon.waitForLine(pattern, ms)`: kept for the tests that name their bound. */
export function waitForLineWithin(
  daemon: Daemon,
  pattern: RegExp,
  ms = 5000,
): Promise<string> {
  return daemon.waitForLine(pattern, ms);
}

/**
 * Copies what the launcher runs (the launcher, main.ts, deno.json, deno.lock
 * and lib/ with its subfolders) into `dir`: a checkout with no .deno/ and no
 * keys/, as a fresh clone has.
 */
export async function copyCheckout(dir: string): Promise<void> {
  const root = new URL("../", import.meta.url).pathname;
  await Deno.mkdir(dir, { recursive: true });
  for (const file of ["cipherlink", "main.ts", "deno.json", "deno.lock"]) {
    await Deno.copyFile(`${root}${file}`, `${dir}/${file}`);
  }
  await Deno.chmod(`${dir}/cipherlink`, 0o755);
  const copyTree = async (from: string, to: string): Promise<void> => {
    await Deno.mkdir(to, { recursive: true });
    for await (const entry of Deno.readDir(from)) {
      if (entry.isDirectory) await copyTree(`${from}/${entry.name}`, `${to}/${entry.name}`);
      else await Deno.copyFile(`${from}/${entry.name}`, `${to}/${entry.name}`);
    }
  };
  await copyTree(`${root}lib`, `${dir}/lib`);
}
