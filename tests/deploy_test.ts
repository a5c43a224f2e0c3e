/**
 * The systemd units in deploy/: systemd itself accepts them, they carry the
 * hardening the README promises, and their command lines (run from source
 * with the unit's narrowed Deno permissions) really serve traffic.
 * @module
 */

import assert from "node:assert/strict";
import { runCipherlink } from "./process.ts";

const DEPLOY = new URL("../deploy/", import.meta.url).pathname;
const MAIN = new URL("../main.ts", import.meta.url).pathname;
const LAUNCHER = new URL("../cipherlink", import.meta.url).pathname;
const UNITS = ["cipherlink-server.service", "cipherlink-client.service"];

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
      const result = await new Deno.Command("systemd-analyze", {
        args: ["verify", "--man=no", `${dir}/${name}`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const output = new TextDecoder().decode(result.stdout) +
        new TextDecoder().decode(result.stderr);
      const ours = output.split("\n").filter((l) => l.includes(name));
      assert.deepEqual(ours, [], output);
      assert.equal(result.code, 0, output);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deploy: the units are hardened and hold no capability", async () => {
  for (const name of UNITS) {
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

Deno.test("deploy: the server unit's source command line serves with only its narrowed permissions", async () => {
  const credentials = await Deno.makeTempDir();
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const unit = await Deno.readTextFile(DEPLOY + "cipherlink-server.service");
  const line = /^#ExecStart=(.*)$/m.exec(unit)![1]
    .replaceAll("%d", credentials)
    .replace("/usr/bin/deno", Deno.execPath())
    .replace("/opt/cipherlink/main.ts", MAIN)
    .replace("--listen 0.0.0.0:8888", "--listen 127.0.0.1:0")
    .replace("--forward 127.0.0.1:6379", `--forward 127.0.0.1:${target.addr.port}`);
  const [program, ...args] = line.split(" ");
  assert.ok(
    args.includes(`--allow-read=${credentials}/shared.key`),
    "read access is limited to the key",
  );
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
  } finally {
    server.kill("SIGTERM");
    await server.status;
    await stderr.cancel();
    target.close();
    await Deno.remove(credentials, { recursive: true });
  }
});
