/**
 * The command line as a process: keygen, exit codes, error lines, help, the
 * environment defaults, one-shot and pipe mode against a real server, and
 * clean shutdown on SIGTERM/SIGINT.
 * @module
 */

import assert from "node:assert/strict";
import { runCipherlink, startDaemon, tempKey } from "./process.ts";
import { randomBytes, sha256Hex } from "./helpers.ts";

const USAGE_LINE = /^usage: cipherlink/m;

Deno.test("cli: keygen writes a 0600 key, prints its fingerprint and never the key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const format of ["raw", "hex", "base64"]) {
      const path = `${dir}/nested/${format}.key`;
      const result = await runCipherlink(["keygen", "--out", path, "--format", format]);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`${path}`));
      assert.match(result.stdout, /fingerprint SHA256:[A-Za-z0-9+/]{16}\n/);
      const info = await Deno.stat(path);
      assert.equal(info.mode! & 0o777, 0o600);
      const contents = await Deno.readFile(path);
      const text = new TextDecoder().decode(contents).trim();
      if (format === "raw") assert.equal(contents.byteLength, 32);
      else assert.ok(!result.stdout.includes(text), "the key is not printed");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: keygen refuses to overwrite without --force (exit 1) and overwrites with it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/k.key`;
    assert.equal((await runCipherlink(["keygen", "--out", path])).code, 0);
    const before = await Deno.readFile(path);
    const refused = await runCipherlink(["keygen", "--out", path]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^cipherlink: error: .*already exists.*--force/);
    assert.deepEqual(await Deno.readFile(path), before);
    const forced = await runCipherlink(["keygen", "--out", path, "--force"]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.notDeepEqual(await Deno.readFile(path), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: usage errors exit 2 with the usage line", async () => {
  for (
    const args of [
      [],
      ["frobnicate"],
      ["server", "--bogus"],
      ["client", "--max-conns", "lots"],
      ["server", "--listen", "nowhere"],
      ["server", "--log-level", "loud"],
      ["keygen", "--format", "pem"],
      ["server", "--allow", "10.0.0.0/33:*"],
    ]
  ) {
    const result = await runCipherlink(args);
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    assert.match(result.stderr, /^cipherlink: error: /);
    assert.match(result.stderr, USAGE_LINE);
    assert.equal(result.stdout, "");
  }
});

Deno.test("regression: the CLI refuses the seconds the config file refuses (one validator), and new pre-auth options are checked", async () => {
  for (
    const args of [
      ["server", "--idle-timeout", "1e10"],
      ["server", "--handshake-timeout", "2147484"],
      ["client", "--keepalive", "Infinity"],
      ["server", "--hello-timeout=-1"],
      ["server", "--max-pending", "0"],
      ["server", "--max-pending-per-source", "x"],
    ]
  ) {
    const result = await runCipherlink(args);
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    assert.match(result.stderr, /^cipherlink: error: --[a-z-]+ takes /);
  }
  const help = await runCipherlink(["server", "--help"]);
  assert.match(help.stdout, /--max-pending N .*\n.*default 4096/);
  assert.match(help.stdout, /--hello-timeout SECS .*default 1\)/);
});

Deno.test("cli: --help and --version print to stdout and exit 0", async () => {
  for (
    const args of [["--help"], ["server", "--help"], ["client", "--help"], ["keygen", "--help"]]
  ) {
    const result = await runCipherlink(args);
    assert.equal(result.code, 0);
    assert.match(result.stdout, /usage: cipherlink/);
  }
  const version = await runCipherlink(["--version"]);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^cipherlink \d+\.\d+\.\d+/);
});

Deno.test("cli: a missing key file is one error line naming it and the keygen command (exit 1)", async () => {
  const result = await runCipherlink(["client", "--key", "/nonexistent/dir/k.key", "hi"]);
  assert.equal(result.code, 1);
  assert.equal(
    result.stderr,
    "cipherlink: error: key file /nonexistent/dir/k.key does not exist; create one with: cipherlink keygen --out /nonexistent/dir/k.key\n",
  );
});

Deno.test("cli: a malformed or wrong-length key file is rejected with the accepted formats (exit 1)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const contents of ["short", "ab".repeat(31), "z".repeat(64)]) {
      const path = `${dir}/bad.key`;
      await Deno.writeTextFile(path, contents, { mode: 0o600 });
      const result = await runCipherlink(["server", "--key", path, "--listen", "127.0.0.1:0"]);
      assert.equal(result.code, 1);
      assert.match(
        result.stderr,
        new RegExp(
          `^cipherlink: error: key file ${path} is malformed: .*32 raw bytes, 64 hex characters, or the base64`,
        ),
      );
      assert.equal(result.stderr.trim().split("\n").length, 1);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: one-shot and pipe mode round trips through a real server; SIGTERM exits 0", async () => {
  const key = await tempKey();
  const server = await startDaemon(["server", "--key", key.path, "--listen", "127.0.0.1:0"]);
  try {
    const address = `127.0.0.1:${server.port}`;
    const oneShot = await runCipherlink([
      "client",
      "--key",
      key.path,
      "--server",
      address,
      "hello",
      "wire",
    ]);
    assert.equal(oneShot.code, 0, oneShot.stderr);
    assert.equal(oneShot.stdout, "hello wire");

    const payload = randomBytes(3 * 1024 * 1024 + 7);
    const piped = await runCipherlink(["client", "--key", key.path, "--server", address], {
      stdin: payload,
    });
    assert.equal(piped.code, 0, piped.stderr);
    assert.equal(await sha256Hex(piped.stdoutBytes), await sha256Hex(payload));

    const empty = await runCipherlink(["client", "--key", key.path, "--server", address], {
      stdin: new Uint8Array(0),
    });
    assert.equal(empty.code, 0, empty.stderr);
    assert.equal(empty.stdoutBytes.byteLength, 0);
  } finally {
    assert.equal(await server.stop("SIGTERM"), 0);
    await key.cleanup();
  }
  assert.ok(server.lines.some((l) => l.includes("stopped")));
});

Deno.test("cli: the environment supplies the key path and server address; options win", async () => {
  const key = await tempKey();
  const server = await startDaemon(["server", "--listen", "127.0.0.1:0"], {
    CIPHERLINK_KEY_FILE: key.path,
  });
  try {
    const env = {
      CIPHERLINK_KEY_FILE: key.path,
      CIPHERLINK_SERVER_HOST: "127.0.0.1",
      CIPHERLINK_SERVER_PORT: String(server.port),
    };
    const viaEnv = await runCipherlink(["client", "ping"], { env });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.equal(viaEnv.stdout, "ping");
    const optionWins = await runCipherlink(["client", "--server", "127.0.0.1:1", "ping"], { env });
    assert.equal(optionWins.code, 1);
    assert.match(
      optionWins.stderr,
      /^cipherlink: error: cannot connect to the server at 127\.0\.0\.1:1/,
    );
  } finally {
    await server.stop();
    await key.cleanup();
  }
});

Deno.test("cli: a wrong key fails with 'authentication failed' and exit 1; the server keeps serving", async () => {
  const good = await tempKey();
  const bad = await tempKey();
  const server = await startDaemon(["server", "--key", good.path, "--listen", "127.0.0.1:0"]);
  try {
    const address = `127.0.0.1:${server.port}`;
    const result = await runCipherlink([
      "client",
      "--key",
      bad.path,
      "--server",
      address,
      "secret",
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^cipherlink: error: authentication failed: /);
    assert.equal(result.stdout, "");
    const after = await runCipherlink([
      "client",
      "--key",
      good.path,
      "--server",
      address,
      "still here",
    ]);
    assert.equal(after.stdout, "still here");
  } finally {
    await server.stop("SIGINT");
    await good.cleanup();
    await bad.cleanup();
  }
});

Deno.test("cli: a key file readable by group or others is warned about", async () => {
  const key = await tempKey();
  await Deno.chmod(key.path, 0o644);
  const server = await startDaemon(["server", "--key", key.path, "--listen", "127.0.0.1:0"]);
  try {
    assert.ok(
      server.lines.some((l) => /readable by group or others.*chmod 600/.test(l)),
      server.lines.join("\n"),
    );
  } finally {
    await server.stop();
    await key.cleanup();
  }
});

Deno.test("cli: an ERROR from the server (target refused by policy) fails the client with exit 1", async () => {
  const key = await tempKey();
  const server = await startDaemon(["server", "--key", key.path, "--listen", "127.0.0.1:0"]);
  try {
    const result = await runCipherlink([
      "client",
      "--key",
      key.path,
      "--server",
      `127.0.0.1:${server.port}`,
      "--connect",
      "127.0.0.1:9",
      "hi",
    ]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /^cipherlink: error: server error 2 \(refused by the server's policy\)/,
    );
  } finally {
    await server.stop();
    await key.cleanup();
  }
});
