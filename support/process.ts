/**
 * What the tests, the soak and the benchmark share when they run Cipherlink
 * as real processes: the argv that runs it from source, a free loopback port,
 * a temporary key file, and the deadline every wait on them gets. Each keeps
 * its own process wrapper (their readiness, logging and shutdown rules
 * differ); only these facts live here.
 * @module
 */

import { encodeKey, KEY_SIZE, type KeyFormat } from "../lib/protocol/keys.ts";

/** The program's entry point, run from source. */
export const MAIN = new URL("../main.ts", import.meta.url).pathname;

/**
 * The deno arguments (after the executable) that run `cipherlink ARGS` from
 * source with the given permission flags: tests grant what the launcher would
 * and more, the soak only what a server or client needs.
 */
export function denoRunArgs(permissions: readonly string[], args: string[]): string[] {
  return ["run", "--quiet", "--no-prompt", ...permissions, MAIN, ...args];
}

/** {@link denoRunArgs} with the deno executable first: a whole argv. */
export function cipherlinkArgvWith(permissions: readonly string[], args: string[]): string[] {
  return [Deno.execPath(), ...denoRunArgs(permissions, args)];
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

/** A temporary key file: its folder, path, the key itself, and how to remove them. */
export interface TempKeyFile {
  dir: string;
  path: string;
  key: Uint8Array;
  cleanup(): Promise<void>;
}

/**
 * A temporary folder (named with `prefix`) holding `shared.key`, a fresh
 * random key in `format` (raw unless told) with file mode `mode` (0600 unless
 * told, set explicitly so the umask cannot change it).
 */
export async function tempKeyFile(
  prefix: string,
  options: { mode?: number; format?: KeyFormat } = {},
): Promise<TempKeyFile> {
  const dir = await Deno.makeTempDir({ prefix });
  const path = `${dir}/shared.key`;
  const key = crypto.getRandomValues(new Uint8Array(KEY_SIZE));
  const mode = options.mode ?? 0o600;
  await Deno.writeFile(path, encodeKey(key, options.format ?? "raw"), { mode });
  await Deno.chmod(path, mode);
  return { dir, path, key, cleanup: () => Deno.remove(dir, { recursive: true }) };
}

/**
 * `promise`, or a rejection naming `what` after `ms`: the deadline every
 * wait in the tests, the soak and the benchmark gets, so that a regression
 * fails instead of hanging. A bound, never a pacing.
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
