/**
 * Test fixtures that run Cipherlink as real processes: one-off commands with
 * their output, and long-running server/client daemons whose readiness is the
 * `listening on HOST:PORT` log line (never a fixed sleep).
 * @module
 */

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

/** The deno flags the launcher would use, plus what tests need. */
function denoArgs(args: string[]): string[] {
  return [
    "run",
    "--quiet",
    "--no-prompt",
    "--allow-net",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    // --crypto openssl: the tests run the program directly; the launcher's
    // narrowed grant is tested through ./cipherlink itself.
    "--allow-ffi",
    MAIN,
    ...args,
  ];
}

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
    args: denoArgs(args),
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
    cwd: options.cwd,
  }).spawn();
  if (options.stdin) {
    const writer = child.stdin.getWriter();
    await writer.write(options.stdin);
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
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
  /** Resolves the first stderr line matching `pattern`, including past ones. */
  waitForLine(pattern: RegExp): Promise<string>;
  /** Sends a signal and resolves the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
}

/**
 * Starts `cipherlink ARGS` and resolves once it logged `listening on …`,
 * with the real port. Rejects if it exits first.
 */
export async function startDaemon(args: string[], env?: Record<string, string>): Promise<Daemon> {
  const process = new Deno.Command(Deno.execPath(), {
    args: denoArgs(args),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env,
  }).spawn();
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  let ended = false;
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
  })();
  const waitForLine = (pattern: RegExp): Promise<string> => {
    const seen = lines.find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    if (ended) return Promise.reject(new Error(`process ended without a line matching ${pattern}`));
    return new Promise((resolve) => waiters.push({ pattern, resolve }));
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
export async function tempKey(): Promise<{ dir: string; path: string; cleanup(): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-test-" });
  const path = `${dir}/shared.key`;
  await Deno.writeFile(path, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
  return { dir, path, cleanup: () => Deno.remove(dir, { recursive: true }) };
}

/**
 * The argv that runs `cipherlink ARGS` from source (the deno executable
 * first), for spawning with other stdio or handing to another program such
 * as ssh's ProxyCommand.
 */
export function cipherlinkArgv(args: string[]): string[] {
  return [Deno.execPath(), ...denoArgs(args)];
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago (bound, then released),
 * for services that must be told their port in advance or for a target where
 * nothing listens.
 */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/**
 * `daemon.waitForLine(pattern)`, but rejects with the lines so far after
 * `ms`: a bound against a hang when the line never comes, never a pacing.
 */
export async function waitForLineWithin(
  daemon: Daemon,
  pattern: RegExp,
  ms = 5000,
): Promise<string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(`no line matching ${pattern} within ${ms} ms:\n${daemon.lines.join("\n")}`),
        ),
      ms,
    );
  });
  try {
    return await Promise.race([daemon.waitForLine(pattern), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
