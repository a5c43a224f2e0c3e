/**
 * The systemd units in deploy/: systemd itself accepts them (the release
 * units with the launcher standing in for the executable, the checkout units
 * as shipped but for the checkout's place), they carry the hardening the
 * README promises, the checkout variants differ from the release units only
 * in how they start, and the checkout command line (the launcher, with its
 * narrowed Deno permissions) really serves traffic.
 * @module
 */

import assert from "node:assert/strict";
import { runArgv, runCipherlink } from "./process.ts";

const DEPLOY = new URL("../deploy/", import.meta.url).pathname;
const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const LAUNCHER = `${ROOT}/cipherlink`;
const UNITS = ["cipherlink-server.service", "cipherlink-client.service"];
const CHECKOUT_UNITS = UNITS.map((name) => name.replace(".service", "-checkout.service"));
/** Where the checkout units expect the checkout. */
const CHECKOUT = "/opt/cipherlink";

/** `systemd-analyze verify` of one unit file: its output and exit code. */
async function verify(path: string): Promise<{ code: number; output: string }> {
  const result = await runArgv(["systemd-analyze", "verify", "--man=no", path]);
  return { code: result.code, output: result.stdout + result.stderr };
}

function directives(unit: string): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const line of unit.split("\n")) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (match) found.set(match[1], [...(found.get(match[1]) ?? []), match[2]]);
  }
  return found;
}

Deno.test("deploy: systemd-analyze verifies both units without complaint", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const name of UNITS) {
      // verify checks that ExecStart's program exists: point it at the launcher.
      const unit = (await Deno.readTextFile(DEPLOY + name)).replaceAll(
        "/usr/local/bin/cipherlink",
        LAUNCHER,
      );
      await Deno.writeTextFile(`${dir}/${name}`, unit);
      const { code, output } = await verify(`${dir}/${name}`);
      const ours = output.split("\n").filter((l) => l.includes(name));
      assert.deepEqual(ours, [], output);
      assert.equal(code, 0, output);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deploy: the checkout units verify as shipped, given the checkout where they expect it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const name of CHECKOUT_UNITS) {
      const shipped = await Deno.readTextFile(DEPLOY + name);
      // The README's command, `systemd-analyze verify /opt/cipherlink/deploy/NAME`,
      // with this checkout in the place of /opt/cipherlink.
      assert.match(shipped, new RegExp(`systemd-analyze verify ${CHECKOUT}/deploy/${name}`));
      await Deno.writeTextFile(`${dir}/${name}`, shipped.replaceAll(CHECKOUT, ROOT));
      const { code, output } = await verify(`${dir}/${name}`);
      assert.deepEqual(output.split("\n").filter((l) => l.includes(name)), [], output);
      assert.equal(code, 0, output);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deploy: a checkout unit is its release unit but for how it starts", async () => {
  const comparable = (unit: string) =>
    unit.slice(unit.indexOf("[Unit]")).split("\n").filter((l) =>
      !/^(ExecStart|CacheDirectory|Environment=DENO_DIR)=|^#/.test(l)
    );
  for (const [i, name] of UNITS.entries()) {
    const release = await Deno.readTextFile(DEPLOY + name);
    const checkout = await Deno.readTextFile(DEPLOY + CHECKOUT_UNITS[i]);
    assert.deepEqual(comparable(checkout), comparable(release), CHECKOUT_UNITS[i]);
    const args = (unit: string, program: string) =>
      directives(unit).get("ExecStart")![0].replace(program, "");
    assert.equal(
      args(checkout, `${CHECKOUT}/cipherlink`),
      args(release, "/usr/local/bin/cipherlink"),
    );
  }
});

Deno.test("deploy: the units are hardened and hold no capability", async () => {
  for (const name of [...UNITS, ...CHECKOUT_UNITS]) {
    const unit = directives(await Deno.readTextFile(DEPLOY + name));
    assert.deepEqual(unit.get("DynamicUser"), ["yes"], name);
    assert.deepEqual(unit.get("ProtectSystem"), ["strict"], name);
    assert.deepEqual(unit.get("NoNewPrivileges"), ["yes"], name);
    assert.deepEqual(unit.get("CapabilityBoundingSet"), [""], name);
    assert.deepEqual(unit.get("AmbientCapabilities"), [""], name);
    assert.equal(unit.get("MemoryDenyWriteExecute"), undefined, `${name}: V8 needs W^X off`);
    assert.match(unit.get("ExecStart")![0], /--key %d\/shared\.key/);
    assert.deepEqual(unit.get("LoadCredential"), ["shared.key:/etc/cipherlink/shared.key"]);
  }
});

Deno.test("deploy: the server checkout unit's command line serves with only the key readable, and stops on SIGTERM", async () => {
  const credentials = await Deno.makeTempDir();
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const unit = await Deno.readTextFile(DEPLOY + "cipherlink-server-checkout.service");
  const line = directives(unit).get("ExecStart")![0]
    .replaceAll("%d", credentials)
    .replace(CHECKOUT, ROOT)
    .replace("--listen 0.0.0.0:8888", "--listen 127.0.0.1:0")
    .replace("--forward 127.0.0.1:6379", `--forward 127.0.0.1:${target.addr.port}`);
  const [program, ...args] = line.split(" ");
  assert.equal(program, LAUNCHER);
  await Deno.writeFile(`${credentials}/shared.key`, crypto.getRandomValues(new Uint8Array(32)), {
    mode: 0o600,
  });
  const server = new Deno.Command(program, { args, stdout: "null", stderr: "piped" }).spawn();
  const stderr = server.stderr.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let seen = "";
    while (!/listening on \S*:(\d+)/.test(seen)) {
      const { value, done } = await stderr.read();
      assert.ok(!done, `the server exited:\n${seen}`);
      seen += value;
    }
    // The launcher became Deno, with read access to the key alone.
    const argv = (await Deno.readTextFile(`/proc/${server.pid}/cmdline`)).split("\0");
    assert.ok(argv.includes(`--allow-read=${credentials}/shared.key`), argv.join(" "));
    assert.ok(!argv.includes("--allow-read"), "no blanket read access");
    assert.ok(!argv.some((a) => a.startsWith("--allow-write")), "no write access");
    const port = /listening on \S*:(\d+)/.exec(seen)![1];
    const upstream = (async () => {
      const conn = await target.accept();
      const buffer = new Uint8Array(64);
      const n = (await conn.read(buffer))!;
      await conn.write(buffer.subarray(0, n).reverse());
      conn.close();
    })();
    const reply = await runCipherlink([
      "client",
      "--key",
      `${credentials}/shared.key`,
      "--server",
      `127.0.0.1:${port}`,
      "abc",
    ]);
    await upstream;
    assert.equal(reply.stdout, "cba", reply.stderr);
    server.kill("SIGTERM");
    assert.equal((await server.status).code, 0);
  } finally {
    try {
      server.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await server.status;
    await stderr.cancel();
    target.close();
    await Deno.remove(credentials, { recursive: true });
  }
});
