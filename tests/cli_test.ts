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

Deno.test("cli: every usage error is one line in our words, with a suggestion where one is close, then the usage line", async () => {
  const cases: [string[], string][] = [
    [["client", "--sever", "127.0.0.1:1"], "unknown option --sever; did you mean --server?"],
    [["client", "--allow", "*:80"], "--allow is a server option; client does not take it"],
    [["server", "--connect", "a:1"], "--connect is a client option; server does not take it"],
    [
      ["client", "--keepalive", "-1"],
      "--keepalive takes a number of seconds from 0 to 2147483, not '-1'",
    ],
    [
      ["server", "--drain-timeout", "-5"],
      "--drain-timeout takes a number of seconds from 0 to 2147483, not '-5'",
    ],
    [["server", "--lisen", "127.0.0.1:0"], "unknown option --lisen; did you mean --listen?"],
    [["keygen", "--fromat", "hex"], "unknown option --fromat; did you mean --format?"],
    [["keygen", "--force=yes"], "--force takes no value"],
    [["client", "--key"], "--key needs a value"],
    [["server", "--frobnicate"], "unknown option --frobnicate"],
    [
      ["server", "listen", "127.0.0.1:0"],
      "server takes no arguments besides options, got 'listen'; did you mean --listen?",
    ],
    [["sever"], "unknown command 'sever'; did you mean server?"],
    [["check-config", "--bogus"], "unknown option --bogus"],
    [
      ["server", "--allow", "nowhere"],
      "--allow 'nowhere' is not HOST:PORT, HOST:*, *:PORT, CIDR:PORT or CIDR:*",
    ],
  ];
  for (const [args, message] of cases) {
    const result = await runCipherlink(args);
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    const lines = result.stderr.split("\n");
    assert.equal(lines.length, 3, `two lines and a final newline:\n${result.stderr}`);
    assert.equal(lines[0], `cipherlink: error: ${message}`);
    assert.match(lines[1], /^usage: cipherlink /);
    if (args[0] !== "sever") assert.match(lines[1], new RegExp(`^usage: cipherlink ${args[0]}`));
    assert.equal(result.stdout, "");
  }
});

Deno.test("cli: a bad environment value is a usage error that names the variable", async () => {
  const cases: [Record<string, string>, string[], string][] = [
    [
      { CIPHERLINK_SERVER_PORT: "abc" },
      ["client", "hi"],
      "CIPHERLINK_SERVER_PORT='abc' is not a port number (1 to 65535)",
    ],
    [
      { CIPHERLINK_SERVER_PORT: "70000" },
      ["server"],
      "CIPHERLINK_SERVER_PORT='70000' is not a port number (0 to 65535)",
    ],
    [
      { CIPHERLINK_SERVER_HOST: "two words" },
      ["client", "hi"],
      "CIPHERLINK_SERVER_HOST='two words' is not a host name or IP address",
    ],
  ];
  for (const [env, args, message] of cases) {
    const result = await runCipherlink(args, { env });
    assert.equal(result.code, 2, result.stderr);
    assert.equal(result.stderr.split("\n")[0], `cipherlink: error: ${message}`);
  }
  const missing = await runCipherlink(["client", "hi"], {
    env: { CIPHERLINK_KEY_FILE: "/nonexistent/k.key" },
  });
  assert.equal(missing.code, 1);
  assert.match(
    missing.stderr,
    /key file \/nonexistent\/k\.key does not exist.*CIPHERLINK_KEY_FILE/,
  );
});

Deno.test("cli: fingerprint prints the fingerprint keygen printed, for raw, hex and base64 files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const format of ["raw", "hex", "base64"]) {
      const path = `${dir}/${format}.key`;
      const made = await runCipherlink(["keygen", "--out", path, "--format", format]);
      const printed = /fingerprint (SHA256:\S+)/.exec(made.stdout)![1];
      const shown = await runCipherlink(["fingerprint", "--key", path]);
      assert.equal(shown.code, 0, shown.stderr);
      assert.equal(shown.stdout, `${printed}\n`);
      const viaEnv = await runCipherlink(["fingerprint"], { env: { CIPHERLINK_KEY_FILE: path } });
      assert.equal(viaEnv.stdout, `${printed}\n`);
    }
    const missing = await runCipherlink(["fingerprint", "--key", `${dir}/none.key`]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^cipherlink: error: key file .*none\.key does not exist; create/);
    await Deno.writeTextFile(`${dir}/bad.key`, "nope");
    const malformed = await runCipherlink(["fingerprint", "--key", `${dir}/bad.key`]);
    assert.equal(malformed.code, 1);
    assert.match(malformed.stderr, /^cipherlink: error: key file .*bad\.key is malformed/);
    assert.equal(malformed.stdout, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: --key naming a directory suggests a key file inside it, and that suggestion works", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const result = await runCipherlink(["client", "--key", dir, "hi"]);
    assert.equal(result.code, 1);
    const hint = /create one with: cipherlink (keygen .*)$/m.exec(result.stderr);
    assert.ok(hint, result.stderr);
    const keygen = await runCipherlink(hint[1].split(" "));
    assert.equal(keygen.code, 0, keygen.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: hints name the program the way the user ran it (./cipherlink from a checkout)", async () => {
  const root = new URL("../", import.meta.url).pathname;
  // From a shell, as the README has it (Deno.Command would pass an absolute path as $0).
  const result = await new Deno.Command("bash", {
    args: ["-c", "./cipherlink client --key /nonexistent/k.key hi"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(
    new TextDecoder().decode(result.stderr),
    "cipherlink: error: key file /nonexistent/k.key does not exist; create one with: ./cipherlink keygen --out /nonexistent/k.key\n",
  );
});

Deno.test("cli: --help names every option --config accepts, and each is accepted with --config", async () => {
  for (const command of ["server", "client"]) {
    const help = (await runCipherlink([command, "--help"])).stdout;
    const line = /SIGHUP reloads it; only (.*) may be added/.exec(help);
    assert.ok(line, help);
    assert.match(line[1], /--log-level/);
    assert.match(line[1], /--log-format/);
    assert.match(line[1], /--metrics/);
  }
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/k.key`, crypto.getRandomValues(new Uint8Array(32)), {
      mode: 0o600,
    });
    await Deno.writeTextFile(
      `${dir}/c.json`,
      `{ "tunnels": [{ "name": "a", "role": "server", "listen": "127.0.0.1:0", "key": "k.key" }] }`,
    );
    const server = await startDaemon([
      "server",
      "--config",
      `${dir}/c.json`,
      "--log-level",
      "info",
      "--log-format",
      "text",
      "--metrics",
      "127.0.0.1:0",
    ]);
    assert.equal(await server.stop(), 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: the launcher refuses a path with a comma (Deno would read it as two permission paths)", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const result = await new Deno.Command("bash", {
    args: ["-c", "./cipherlink fingerprint --key 'k.key,/etc/passwd'"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(result.code, 1);
  assert.equal(
    new TextDecoder().decode(result.stderr),
    "cipherlink: error: cannot run with a path that contains a comma: k.key,/etc/passwd\n",
  );
  assert.equal(result.stdout.length, 0);
});
