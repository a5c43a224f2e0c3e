/**
 * Test fixtures that run Cipherlink as real processes: one-off commands with
 * their output, and long-running server/client daemons whose readiness is the
 * `listening on HOST:PORT` log line (never a fixed sleep).
 * @module
 */

import { cipherlinkArgvWith, denoRunArgs, freePort, tempKeyFile } from "../support/process.ts";

/** A free loopback port (support/process.ts). */
export { freePort };

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

/** Output of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Uint8Array;
}

/** Runs `cipherlink ARGS` to completion, feeding `stdin` if given. */
export async function runCipherlink(
  args: string[],
  options: { stdin?: Uint8Array; env?: Record<string, string>; cwd?: string } = {},
): Promise<RunResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs(TEST_PERMISSIONS, args),
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
  const { code, stdout, stderr } = await child.output();
  await feeding;
  return {
    code,
    stdout: decoder.decode(stdout),
    stderr: decoder.decode(stderr),
    stdoutBytes: stdout,
  };
}

/** A running server or client daemon. */
export interface Daemon {
  process: Deno.ChildProcess;
  port: number;
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
 * Starts `cipherlink ARGS` and resolves once it logged `listening on …`,
 * with the real port. Rejects if it exits first.
 */
export async function startDaemon(args: string[], env?: Record<string, string>): Promise<Daemon> {
  const process = new Deno.Command(Deno.execPath(), {
    args: denoRunArgs(TEST_PERMISSIONS, args),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env,
  }).spawn();
  const lines: string[] = [];
  const waiters: {
    pattern: RegExp;
    resolve: (line: string) => void;
    reject: (err: Error) => void;
  }[] = [];
  let ended = false;
  const endedWithout = (pattern: RegExp) =>
    new Error(`process ended without a line matching ${pattern}:\n${lines.join("\n")}`);
  const drained = (async () => {
    let pending = "";
    for await (const chunk of process.stderr.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      const parts = pending.split("\n");
      pending = parts.pop()!;
      for (const line of parts) {
        lines.push(line);
        for (const w of waiters.filter((w) => w.pattern.test(line))) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
    ended = true;
    for (const w of waiters.splice(0)) w.reject(endedWithout(w.pattern));
  })();
  const waitForLine = (pattern: RegExp, ms = LINE_DEADLINE_MS): Promise<string> => {
    const seen = lines.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    if (ended) return Promise.reject(endedWithout(pattern));
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (line: string) => (clearTimeout(timer), resolve(line)),
        reject: (err: Error) => (clearTimeout(timer), reject(err)),
      };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        reject(new Error(`no line matching ${pattern} within ${ms} ms:\n${lines.join("\n")}`));
      }, ms);
      waiters.push(waiter);
    });
  };
  const status = process.status;
  const ready = await Promise.race([
    waitForLine(/listening on /),
    status.then((s) => {
      throw new Error(`cipherlink ${args.join(" ")} exited with ${s.code}:\n${lines.join("\n")}`);
    }),
  ]);
  const port = Number(/listening on \S*:(\d+)/.exec(ready)![1]);
  return {
    process,
    port,
    lines,
    waitForLine,
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        process.kill(signal);
      } catch {
        // Already exited.
      }
      const { code } = await status;
      await drained;
      return code;
    },
  };
}

/** A temporary folder with a fresh raw key in it. */
export function tempKey(): Promise<{ dir: string; path: string; cleanup(): Promise<void> }> {
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
 * `promise`, or a rejection naming `what` after `ms`: the deadline every
 * test wait gets, so a regression fails the test instead of hanging CI.
 *
 * @example
 * ```ts
 * const n = await within(conn.read(buffer), 5000, "the echoed byte");
 * ```
 */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
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
