/**
 * The `./cipherlink` launcher as a new user meets it: a copy of the checkout
 * with no `.deno/` and no `deno` on PATH (only Node, npm and the system's
 * tools). The launcher must end up as the Deno process itself, so signals
 * sent to its PID work: SIGTERM stops the server (port closed, exit 0) and
 * SIGHUP reloads a config file. Also: the narrowed permissions it passes.
 * @module
 */

import assert from "node:assert/strict";
import { basename, dirname } from "node:path";
import { copyCheckout, LineLog, runArgv } from "./process.ts";

/** npm may fetch Deno (tens of MB) on the first run: a generous bound. */
const FIRST_RUN_MS = 240_000;

/** A PATH with everything of ours except `deno` (dirs holding it are mirrored without it). */
async function pathWithoutDeno(scratch: string): Promise<string> {
  const dirs: string[] = [];
  for (const [i, dir] of (Deno.env.get("PATH") ?? "").split(":").entries()) {
    if (!dir) continue;
    let hasDeno = false;
    try {
      await Deno.lstat(`${dir}/deno`);
      hasDeno = true;
    } catch {
      // No deno here: keep the folder as it is.
    }
    if (!hasDeno) {
      dirs.push(dir);
      continue;
    }
    const mirror = `${scratch}/path${i}`;
    await Deno.mkdir(mirror);
    for await (const entry of Deno.readDir(dir)) {
      if (entry.name !== "deno") {
        await Deno.symlink(`${dir}/${entry.name}`, `${mirror}/${entry.name}`);
      }
    }
    dirs.push(mirror);
  }
  const path = dirs.join(":");
  const probe = await runArgv(["bash", "-c", "command -v deno; command -v npm"], {
    env: { PATH: path },
  });
  const found = probe.stdout;
  assert.doesNotMatch(found, /deno/, "the test PATH must not hold deno");
  assert.match(found, /npm/, "the launcher's fallback needs npm on PATH");
  return path;
}

/** A copy of what the launcher runs, in `scratch/name`: no .deno/, no keys/. */
async function checkoutCopy(scratch: string, name: string): Promise<string> {
  const dir = `${scratch}/${name}`;
  await copyCheckout(dir);
  return dir;
}

interface Launched {
  process: Deno.ChildProcess;
  lines: string[];
  waitFor(pattern: RegExp, ms: number): Promise<string>;
  exited: Promise<number>;
}

/** Starts `./cipherlink ARGS` in `dir` with `path` as PATH, collecting stderr lines. */
function launch(dir: string, path: string, args: string[]): Launched {
  const process = new Deno.Command(`${dir}/cipherlink`, {
    args,
    cwd: dir,
    // The rest of the environment stays: npm may need its proxy and CA settings.
    env: { PATH: path },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log = new LineLog(process.stderr);
  const exited = process.status.then(async (s) => {
    await log.drained;
    return s.code;
  });
  const waitFor = (pattern: RegExp, ms: number) => log.waitFor(pattern, ms);
  return { process, lines: log.lines, waitFor, exited };
}

/** The program the process runs, and its command line. */
async function processOf(pid: number): Promise<{ exe: string; argv: string[] }> {
  const exe = await Deno.readLink(`/proc/${pid}/exe`);
  const argv = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0").filter((a) => a);
  return { exe, argv };
}

async function portIsClosed(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return false;
  } catch (err) {
    return err instanceof Deno.errors.ConnectionRefused;
  }
}

/** Exit code within `ms`, or a failure saying the process is still running. */
async function exitWithin(launched: Launched, ms: number): Promise<number> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      launched.process.kill("SIGKILL");
      reject(new Error(`still running ${ms} ms after the signal:\n${launched.lines.join("\n")}`));
    }, ms);
  });
  try {
    return await Promise.race([launched.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Kills what is still running inside `scratch` (by working directory): with
 * a launcher that does not pass signals on, the Deno it started outlives it.
 */
async function killLeftovers(scratch: string): Promise<void> {
  for await (const entry of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(entry.name) || Number(entry.name) === Deno.pid) continue;
    try {
      const cwd = await Deno.readLink(`/proc/${entry.name}/cwd`);
      if (cwd.startsWith(scratch)) Deno.kill(Number(entry.name), "SIGKILL");
    } catch {
      // Gone already, or not ours to look at.
    }
  }
}

async function writeKey(path: string): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  await Deno.writeFile(path, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
}

Deno.test({
  name:
    "launcher: with no deno on PATH and no .deno/, it installs Deno once, becomes the Deno process, and SIGTERM/SIGHUP reach it",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const scratch = await Deno.makeTempDir({ prefix: "cipherlink-launcher-" });
    try {
      const path = await pathWithoutDeno(scratch);
      const dir = await checkoutCopy(scratch, "checkout");
      await writeKey(`${dir}/keys/server.key`);

      await t.step(
        "first run: installs into .deno/ saying so once; SIGTERM closes the port, exit 0",
        async () => {
          const server = launch(dir, path, [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "keys/server.key",
          ]);
          const ready = await server.waitFor(/listening on /, FIRST_RUN_MS);
          const port = Number(/:(\d+)/.exec(ready.slice(ready.indexOf("listening on")))![1]);
          assert.equal(
            server.lines.filter((l) => /installing Deno/.test(l)).length,
            1,
            server.lines.join("\n"),
          );
          const { exe, argv } = await processOf(server.process.pid);
          assert.equal(basename(exe), "deno", `the launcher's PID runs ${exe}, not deno`);
          assert.ok(exe.startsWith(`${dir}/.deno/`), `${exe} is the copy in .deno/`);
          assert.ok(
            argv.includes("--allow-read=keys/server.key"),
            `reads only the key: ${argv.join(" ")}`,
          );
          server.process.kill("SIGTERM");
          assert.equal(await exitWithin(server, 30_000), 0, server.lines.join("\n"));
          assert.ok(await portIsClosed(port), `port ${port} is still open after SIGTERM`);
        },
      );

      await t.step(
        "second run: uses .deno/ without a word; SIGHUP in config mode reloads",
        async () => {
          const config = `${dir}/tunnels.json`;
          const tunnel = (name: string) =>
            `{ "name": "${name}", "role": "server", "listen": "127.0.0.1:0", "key": "keys/server.key" }`;
          await Deno.writeTextFile(config, `{ "tunnels": [${tunnel("a")}] }`);
          const server = launch(dir, path, ["server", "--config", config]);
          await server.waitFor(/listening on /, 60_000);
          assert.deepEqual(server.lines.filter((l) => /installing/.test(l)), []);
          assert.equal(basename((await processOf(server.process.pid)).exe), "deno");
          await Deno.writeTextFile(config, `{ "tunnels": [${tunnel("a")}, ${tunnel("b")}] }`);
          server.process.kill("SIGHUP");
          assert.match(await server.waitFor(/config reload/, 30_000), /config reloaded .*added=1/);
          server.process.kill("SIGTERM");
          assert.equal(await exitWithin(server, 30_000), 0, server.lines.join("\n"));
        },
      );

      await t.step(
        "the default key path is the program's (keygen, then fingerprint, no options)",
        async () => {
          await Deno.remove(`${dir}/keys`, { recursive: true });
          const keygen = launch(dir, path, ["keygen"]);
          assert.equal(await exitWithin(keygen, 60_000), 0, keygen.lines.join("\n"));
          const printed = launch(dir, path, ["fingerprint"]);
          assert.equal(await exitWithin(printed, 60_000), 0, printed.lines.join("\n"));
          await Deno.stat(`${dir}/keys/shared_key.key`);
        },
      );
    } finally {
      await killLeftovers(scratch);
      await Deno.remove(scratch, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "launcher: where .deno/ cannot be installed, npx supplies Deno and the launcher still becomes it",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const scratch = await Deno.makeTempDir({ prefix: "cipherlink-launcher-" });
    try {
      const path = await pathWithoutDeno(scratch);
      const dir = await checkoutCopy(scratch, "checkout");
      // A .deno that is not an install (a plain file): nothing can go there.
      await Deno.writeTextFile(`${dir}/.deno`, "");
      await writeKey(`${dir}/k.key`);
      const server = launch(dir, path, ["server", "--listen", "127.0.0.1:0", "--key", "k.key"]);
      const ready = await server.waitFor(/listening on /, FIRST_RUN_MS);
      const port = Number(/:(\d+)/.exec(ready.slice(ready.indexOf("listening on")))![1]);
      const { exe } = await processOf(server.process.pid);
      assert.equal(basename(exe), "deno", `the launcher's PID runs ${exe}, not deno`);
      server.process.kill("SIGTERM");
      assert.equal(await exitWithin(server, 30_000), 0, server.lines.join("\n"));
      assert.ok(await portIsClosed(port), `port ${port} is still open after SIGTERM`);
    } finally {
      await killLeftovers(scratch);
      await Deno.remove(scratch, { recursive: true });
    }
  },
});
