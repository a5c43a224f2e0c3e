/**
 * The multi-tunnel config file: JSON-with-comments parsing, validation errors
 * that name the file, tunnel and field, key file checks, `check-config` as a
 * process, and `server --config` running several tunnels in one process with
 * SIGHUP reloads (add, remove, re-key, restart, invalid file).
 * @module
 */

import assert from "node:assert/strict";
import { connect, forward } from "../lib/tunnel/client.ts";
import { AuthenticationError } from "../lib/base/errors.ts";
import {
  ConfigError,
  loadConfig,
  parseConfig,
  parseJsonWithComments,
  type ServerTunnelConfig,
} from "../lib/ops/config.ts";
import { type Daemon, freePort, runCipherlink, startDaemon, waitForLineWithin } from "./process.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const FILE = "/etc/cipherlink/tunnels.json";

/** Parses `text` as FILE and returns the ConfigError it must throw. */
function configError(text: string): ConfigError {
  try {
    parseConfig(text, FILE);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
    return err;
  }
  assert.fail(`no error for:\n${text}`);
}

/** A config text with one tunnel built from `fields` after a valid first tunnel. */
function withSecondTunnel(fields: Record<string, unknown>): string {
  return JSON.stringify({
    tunnels: [
      { name: "echo", role: "server", listen: "127.0.0.1:7001", key: "a.key" },
      fields,
    ],
  });
}

const redis = {
  name: "redis",
  role: "server",
  listen: "0.0.0.0:8888",
  key: "redis.key",
  forward: "127.0.0.1:6379",
};

Deno.test("config: comments, trailing commas and defaults parse into tunnels; keys resolve next to the file", () => {
  const config = parseConfig(
    `// tunnels of this host
    {
      "tunnels": [
        /* the cache */
        { "name": "redis", "role": "server", "listen": "0.0.0.0:8888", "key": "keys/redis.key",
          "forward": "127.0.0.1:6379", "allow": ["*.internal:5432",], "idleTimeout": 1.5, },
        { "name": "pg", "role": "client", "listen": "127.0.0.1:5433", // local side
          "server": "db.example:8889", "key": "/abs/pg.key", "connect": "127.0.0.1:5432" },
      ],
      "log": { "level": "warn", "format": "json" },
    }`,
    FILE,
  );
  assert.equal(config.tunnels.length, 2);
  const [server, client] = config.tunnels;
  assert.equal(server.role, "server");
  assert.deepEqual(server.listen, { host: "0.0.0.0", port: 8888 });
  assert.equal(server.key, "/etc/cipherlink/keys/redis.key");
  assert.deepEqual((server as ServerTunnelConfig).forward, { host: "127.0.0.1", port: 6379 });
  assert.deepEqual((server as ServerTunnelConfig).allow, ["*.internal:5432"]);
  assert.equal((server as ServerTunnelConfig).idleTimeoutMs, 1500);
  assert.equal(server.maxConns, 100);
  assert.equal(server.handshakeTimeoutMs, 5000);
  assert.equal(server.drainTimeoutMs, 10000);
  assert.equal(server.rekeyBytes, 2 ** 30);
  assert.deepEqual(client, {
    name: "pg",
    role: "client",
    mode: "forward",
    listen: { host: "127.0.0.1", port: 5433 },
    server: { host: "db.example", port: 8889 },
    connect: { host: "127.0.0.1", port: 5432 },
    key: "/abs/pg.key",
    maxConns: 100,
    handshakeTimeoutMs: 5000,
    keepaliveMs: 0,
    drainTimeoutMs: 10000,
    rekeyBytes: 2 ** 30,
    crypto: "webcrypto",
  });
  assert.deepEqual(config.log, { level: "warn", format: "json" });
});

Deno.test('config: "crypto" picks the provider per tunnel; "libcrypto" resolves next to the file', () => {
  const config = parseConfig(
    JSON.stringify({
      tunnels: [
        { name: "a", role: "server", listen: "127.0.0.1:1", key: "k", crypto: "openssl" },
        {
          name: "b",
          role: "server",
          listen: "127.0.0.1:2",
          key: "k",
          crypto: "openssl",
          libcrypto: "lib/libcrypto.so.3",
        },
        { name: "c", role: "server", listen: "127.0.0.1:3", key: "k", crypto: "webcrypto" },
      ],
    }),
    FILE,
  );
  assert.deepEqual(
    config.tunnels.map((t) => [t.crypto, t.libcrypto]),
    [["openssl", undefined], ["openssl", "/etc/cipherlink/lib/libcrypto.so.3"], [
      "webcrypto",
      undefined,
    ]],
  );
});

Deno.test("config: comment markers inside strings are text, and escapes decode", () => {
  const value = parseJsonWithComments(
    String
      .raw`{ "a": "http://x/*y*/", "b": "// no comment", "c": "q\"\\\u00e9\n", /* c */ "d": [] }`,
    FILE,
  );
  assert.deepEqual({ ...(value as object) }, {
    a: "http://x/*y*/",
    b: "// no comment",
    c: 'q"\\\u00e9\n',
    d: [],
  });
});

Deno.test("config: syntax errors name the file with the line and column", () => {
  const cases: [string, string][] = [
    [
      '{\n  "tunnels": []\n  "log": {}\n}',
      `config ${FILE}: line 3, column 3: expected ',' or '}' after the value of "tunnels", found '"'`,
    ],
    [
      '{\n  /* never closed\n  "tunnels": []\n}',
      `config ${FILE}: line 2, column 3: a /* comment is never closed with */`,
    ],
    [
      '{ "tunnels": [], "tunnels": [] }',
      `config ${FILE}: line 1, column 18: field "tunnels" appears twice`,
    ],
    ['{ "tunnels": [tru] }', `config ${FILE}: line 1, column 15: expected a value, found 't'`],
    ["", `config ${FILE}: line 1, column 1: the file is empty; expected a JSON object`],
  ];
  for (const [text, message] of cases) assert.equal(configError(text).message, message);
});

Deno.test("config: validation errors name the file, the tunnel and the field", () => {
  const cases: [string, string][] = [
    [
      withSecondTunnel({ ...redis, forward: "127.0.0.1" }),
      `config ${FILE}: tunnel "redis": field "forward": '127.0.0.1' is not HOST:PORT`,
    ],
    [
      withSecondTunnel({ ...redis, forwrd: "127.0.0.1:1" }),
      `config ${FILE}: tunnel "redis": field "forwrd": unknown field; allowed here: name, role, listen, key, maxConns, handshakeTimeout, keepalive, drainTimeout, drainDelay, rekeyBytes, crypto, libcrypto, forward, allow, idleTimeout, maxPending, maxPendingPerSource, helloTimeout, tun, tunAddresses, tunMtu`,
    ],
    [
      withSecondTunnel({ ...redis, name: "echo", listen: "127.0.0.1:7002" }),
      `config ${FILE}: tunnel "echo": field "name": the name 'echo' is used by more than one tunnel`,
    ],
    [
      withSecondTunnel({ ...redis, connect: "10.0.0.1:22" }),
      `config ${FILE}: tunnel "redis": field "connect": is not a field of a server tunnel`,
    ],
    [
      withSecondTunnel({ ...redis, allow: ["*:22", "10.0.0.0/33:*"] }),
      `config ${FILE}: tunnel "redis": field "allow[1]": '10.0.0.0/33:*': '10.0.0.0/33' is neither a host name pattern nor an IP network`,
    ],
    [
      withSecondTunnel({ ...redis, name: undefined }),
      `config ${FILE}: tunnel #2: field "name": is missing (a unique name for logs and errors)`,
    ],
    [
      withSecondTunnel({ ...redis, role: "relay" }),
      `config ${FILE}: tunnel "redis": field "role": must be one of "server", "client", not 'relay'`,
    ],
    [
      withSecondTunnel({ ...redis, idleTimeout: -1 }),
      `config ${FILE}: tunnel "redis": field "idleTimeout": must be a number of seconds from 0 to 2147483, not -1`,
    ],
    [
      withSecondTunnel({ ...redis, maxConns: "10" }),
      `config ${FILE}: tunnel "redis": field "maxConns": must be a whole number from 1 to 1000000, not '10'`,
    ],
    [
      withSecondTunnel({ ...redis, listen: "127.0.0.1:7001" }),
      `config ${FILE}: tunnel "redis": field "listen": 127.0.0.1:7001 overlaps the listen address of tunnel "echo" (127.0.0.1:7001)`,
    ],
    [
      withSecondTunnel({
        name: "web",
        role: "client",
        mode: "socks",
        listen: "127.0.0.1:1080",
        server: "h:1",
        key: "k",
        connect: "a:1",
      }),
      `config ${FILE}: tunnel "web": field "connect": has no meaning in socks mode (each SOCKS request names its target)`,
    ],
    [
      withSecondTunnel({ name: "web", role: "client", listen: "127.0.0.1:1080", key: "k" }),
      `config ${FILE}: tunnel "web": field "server": is missing (HOST:PORT of the Cipherlink server)`,
    ],
    [
      withSecondTunnel({ ...redis, crypto: "nacl" }),
      `config ${FILE}: tunnel "redis": field "crypto": must be one of "webcrypto", "openssl", not 'nacl'`,
    ],
    [
      withSecondTunnel({ ...redis, libcrypto: "/usr/lib/libcrypto.so.3" }),
      `config ${FILE}: tunnel "redis": field "libcrypto": has no meaning unless "crypto" is "openssl"`,
    ],
    [
      JSON.stringify({ tunnels: [] }),
      `config ${FILE}: field "tunnels": must be a non-empty list of tunnels`,
    ],
    [
      JSON.stringify({ tunnels: [redis], logging: {} }),
      `config ${FILE}: field "logging": unknown field; allowed here: tunnels, log`,
    ],
    [
      JSON.stringify({ tunnels: [redis], log: { level: "loud" } }),
      `config ${FILE}: field "log.level": must be one of "debug", "info", "warn", "error", not 'loud'`,
    ],
  ];
  for (const [text, message] of cases) assert.equal(configError(text).message, message);
  const error = configError(withSecondTunnel({ ...redis, forward: "127.0.0.1" }));
  assert.equal(error.file, FILE);
  assert.equal(error.tunnel, "redis");
  assert.equal(error.field, "forward");
});

Deno.test("config: a missing or malformed key file is an error naming the tunnel and field 'key'", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-config-" });
  try {
    const file = `${dir}/tunnels.json`;
    await Deno.writeFile(`${dir}/good.key`, crypto.getRandomValues(new Uint8Array(32)), {
      mode: 0o600,
    });
    await Deno.writeTextFile(`${dir}/bad.key`, "not a key", { mode: 0o600 });
    const tunnels = (second: string) =>
      JSON.stringify({
        tunnels: [
          { name: "a", role: "server", listen: "127.0.0.1:0", key: "good.key" },
          { name: "b", role: "server", listen: "127.0.0.1:0", key: second },
        ],
      });

    await Deno.writeTextFile(file, tunnels("missing.key"));
    await assert.rejects(loadConfig(file), {
      name: "ConfigError",
      message:
        `config ${file}: tunnel "b": field "key": key file ${dir}/missing.key does not exist; create one with: cipherlink keygen --out ${dir}/missing.key`,
    });

    await Deno.writeTextFile(file, tunnels("bad.key"));
    await assert.rejects(
      loadConfig(file),
      (err: Error) =>
        err instanceof ConfigError && err.tunnel === "b" && err.field === "key" &&
        err.message.startsWith(
          `config ${file}: tunnel "b": field "key": key file ${dir}/bad.key is malformed`,
        ),
    );

    await Deno.writeTextFile(file, tunnels("good.key"));
    const { config, keys } = await loadConfig(file);
    assert.equal(config.tunnels.length, 2);
    assert.equal(keys.get("b")!.key.byteLength, 32);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A temporary folder for config files and key files. */
async function configDir(): Promise<{
  dir: string;
  file: string;
  /** Writes a fresh random key to NAME.key; resolves its bytes. */
  key(name: string): Promise<Uint8Array>;
  write(config: unknown): Promise<void>;
  cleanup(): Promise<void>;
}> {
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-config-" });
  const file = `${dir}/tunnels.json`;
  return {
    dir,
    file,
    async key(name) {
      const bytes = crypto.getRandomValues(new Uint8Array(32));
      await Deno.writeFile(`${dir}/${name}.key`, bytes, { mode: 0o600 });
      return bytes;
    },
    write: (config) =>
      Deno.writeTextFile(
        file,
        `// written by config_test.ts\n${JSON.stringify(config, null, 2)}\n`,
      ),
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}

Deno.test("config: check-config prints ok (exit 0), or one error line (exit 1), without starting", async () => {
  const files = await configDir();
  try {
    await files.key("a");
    // A port taken by someone else: check-config must not try to bind it.
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      await files.write({
        tunnels: [
          { name: "a", role: "server", listen: `127.0.0.1:${taken.addr.port}`, key: "a.key" },
          { name: "b", role: "client", listen: "127.0.0.1:0", server: "127.0.0.1:1", key: "a.key" },
        ],
      });
      const ok = await runCipherlink(["check-config", files.file]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout, `config ${files.file}: ok (2 tunnels)\n`);
      assert.equal(ok.stderr, "");
    } finally {
      taken.close();
    }

    await files.write({
      tunnels: [{ name: "a", role: "server", listen: "127.0.0.1:0", key: "a.key", forward: "x" }],
    });
    const bad = await runCipherlink(["check-config", files.file]);
    assert.equal(bad.code, 1);
    assert.equal(
      bad.stderr,
      `cipherlink: error: config ${files.file}: tunnel "a": field "forward": 'x' is not HOST:PORT\n`,
    );
    assert.equal(bad.stdout, "");

    const noFile = await runCipherlink(["check-config"]);
    assert.equal(noFile.code, 2);
    assert.match(noFile.stderr, /^cipherlink: error: check-config needs a FILE\n/);
  } finally {
    await files.cleanup();
  }
});

Deno.test("config: a tunnel that cannot listen stops the start with exit 1 naming it", async () => {
  const files = await configDir();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    await files.key("a");
    const address = `127.0.0.1:${taken.addr.port}`;
    await files.write({
      tunnels: [
        { name: "first", role: "server", listen: "127.0.0.1:0", key: "a.key" },
        { name: "second", role: "server", listen: address, key: "a.key" },
      ],
    });
    const result = await runCipherlink(["server", "--config", files.file]);
    assert.equal(result.code, 1);
    const lines = result.stderr.trimEnd().split("\n");
    assert.match(
      lines.at(-1)!,
      new RegExp(
        `^cipherlink: error: config ${files.file}: tunnel "second": field "listen": cannot listen on ${address}: `,
      ),
    );
    assert.ok(lines.some((l) => /stopped tunnel=first/.test(l)), "the started tunnel was stopped");
  } finally {
    taken.close();
    await files.cleanup();
  }
});

/** A TCP service on 127.0.0.1 that answers `TAG:` + everything it read, then closes. */
function taggedService(tag: string): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = new Set<Promise<void>>();
  const loop = (async () => {
    for await (const conn of listener) {
      const done = (async () => {
        try {
          const received = await readAll(conn);
          await writeAll(conn, encoder.encode(`${tag}:${decoder.decode(received)}`));
        } catch {
          // The peer went away; nothing to answer.
        } finally {
          conn.close();
        }
      })();
      serving.add(done);
      done.finally(() => serving.delete(done));
    }
  })();
  return {
    port: listener.addr.port,
    async close() {
      listener.close();
      await loop;
      await Promise.all(serving);
    },
  };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
    parts.push(buffer.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.byteLength, 0));
  let at = 0;
  for (const part of parts) out.set(part, at), at += part.byteLength;
  return out;
}

/** One round trip through a server tunnel, in this process. */
async function viaServer(port: number, key: Uint8Array, text: string): Promise<string> {
  const reply = await forward(encoder.encode(text), {
    server: { host: "127.0.0.1", port },
    key,
    handshakeTimeoutMs: 2000,
  });
  return decoder.decode(reply);
}

/** One plain TCP round trip through a client tunnel's local port. */
async function viaClientTunnel(port: number, text: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await writeAll(conn, encoder.encode(text));
    await conn.closeWrite();
    return decoder.decode(await readAll(conn));
  } finally {
    conn.close();
  }
}

/** The port a tunnel logged in its `listening on` line (text format). */
async function portOf(daemon: Daemon, tunnel: string): Promise<number> {
  const line = await waitForLineWithin(
    daemon,
    new RegExp(`listening on 127\\.0\\.0\\.1:\\d+ tunnel=${tunnel} `),
  );
  return Number(/listening on 127\.0\.0\.1:(\d+)/.exec(line)![1]);
}

Deno.test("config: one process runs two server tunnels and a client tunnel, each with its own key", async () => {
  const files = await configDir();
  const target = taggedService("target");
  let daemon: Daemon | null = null;
  try {
    const keyA = await files.key("a");
    const keyB = await files.key("b");
    const portA = freePort();
    await files.write({
      tunnels: [
        { name: "a", role: "server", listen: `127.0.0.1:${portA}`, key: "a.key" },
        {
          name: "b",
          role: "server",
          listen: "127.0.0.1:0",
          key: "b.key",
          forward: `127.0.0.1:${target.port}`,
        },
        {
          name: "c",
          role: "client",
          listen: "127.0.0.1:0",
          server: `127.0.0.1:${portA}`,
          key: "a.key",
        },
      ],
      log: { format: "json" },
    });
    daemon = await startDaemon(["server", "--config", files.file]);
    const ports = new Map<string, number>();
    for (const name of ["a", "b", "c"]) {
      const line = await waitForLineWithin(
        daemon,
        new RegExp(`"msg":"listening on [^"]+","tunnel":"${name}"`),
      );
      const record = JSON.parse(line) as { msg: string };
      ports.set(name, Number(/:(\d+)$/.exec(record.msg)![1]));
    }
    assert.equal(ports.get("a"), portA);

    assert.equal(await viaServer(portA, keyA, "to a"), "to a");
    assert.equal(await viaServer(ports.get("b")!, keyB, "to b"), "target:to b");
    assert.equal(await viaClientTunnel(ports.get("c")!, "through c"), "through c");
    // Each tunnel has its own key: a's key does not open b.
    await assert.rejects(viaServer(ports.get("b")!, keyA, "wrong key"), AuthenticationError);
  } finally {
    if (daemon) assert.equal(await daemon.stop("SIGTERM"), 0);
    await target.close();
    await files.cleanup();
  }
  for (const name of ["a", "b", "c"]) {
    assert.ok(
      daemon!.lines.some((l) => l.includes(`"msg":"stopped","tunnel":"${name}"`)),
      `tunnel ${name} stopped:\n${daemon!.lines.join("\n")}`,
    );
  }
});

Deno.test("config: SIGHUP adds, removes, re-keys and restarts tunnels; an invalid file changes nothing", async (t) => {
  const files = await configDir();
  const first = taggedService("first");
  const second = taggedService("second");
  let daemon: Daemon | null = null;
  try {
    const keyA = await files.key("a");
    const keyD = await files.key("d");
    const portA = freePort();
    const portB = freePort();
    const a = { name: "a", role: "server", listen: `127.0.0.1:${portA}`, key: "a.key" };
    const b = {
      name: "b",
      role: "server",
      listen: `127.0.0.1:${portB}`,
      key: "a.key",
      forward: `127.0.0.1:${first.port}`,
    };
    const c = {
      name: "c",
      role: "client",
      listen: "127.0.0.1:0",
      server: `127.0.0.1:${portA}`,
      key: "a.key",
    };
    await files.write({ tunnels: [a, b, c] });
    daemon = await startDaemon(["server", "--config", files.file]);
    const running = daemon;
    const portC = await portOf(running, "c");
    await portOf(running, "b");
    let reloads = 0;
    /** Sends SIGHUP and resolves the line that ends that reload. */
    const reload = async (): Promise<string> => {
      reloads++;
      running.process.kill("SIGHUP");
      return await waitForLineWithin(
        running,
        new RegExp(`config reload(ed|.*failed).* reload=${reloads} `),
      );
    };

    await t.step("an invalid file is logged and the running tunnels stay", async () => {
      await files.write({ tunnels: [a, { ...b, forward: "nowhere" }, c] });
      const line = await reload();
      assert.match(
        line,
        /ERROR config reload failed.*tunnel \\"b\\": field \\"forward\\": 'nowhere' is not HOST:PORT/,
      );
      assert.equal(await viaServer(portA, keyA, "still a"), "still a");
      assert.equal(await viaServer(portB, keyA, "still b"), "first:still b");
    });

    let portD = 0;
    await t.step("a new tunnel starts and serves", async () => {
      const d = { name: "d", role: "server", listen: "127.0.0.1:0", key: "d.key" };
      await files.write({ tunnels: [a, b, c, d] });
      assert.match(await reload(), /config reloaded .*added=1 removed=0 restarted=0 key_changed=0/);
      portD = await portOf(running, "d");
      assert.equal(await viaServer(portD, keyD, "to d"), "to d");
    });

    await t.step("a removed tunnel drains and its port stops accepting", async () => {
      await files.write({ tunnels: [a, b, c] });
      assert.match(await reload(), /config reloaded .*added=0 removed=1 restarted=0 key_changed=0/);
      await waitForLineWithin(running, /stopped tunnel=d/);
      await assert.rejects(
        Deno.connect({ hostname: "127.0.0.1", port: portD }),
        Deno.errors.ConnectionRefused,
      );
      assert.equal(await viaServer(portA, keyA, "a unaffected"), "a unaffected");
    });

    await t.step(
      "a changed key applies to new sessions; an open session keeps its key",
      async () => {
        const open = await connect({ server: { host: "127.0.0.1", port: portA }, key: keyA });
        const writer = open.writable.getWriter();
        const reader = open.readable.getReader();
        const echoOf = async (text: string): Promise<string> => {
          await writer.write(encoder.encode(text));
          let got = "";
          while (got.length < text.length) {
            const { value, done } = await reader.read();
            if (done) break;
            got += decoder.decode(value);
          }
          return got;
        };
        assert.equal(await echoOf("before"), "before");

        const newKey = await files.key("a2");
        await files.write({ tunnels: [{ ...a, key: "a2.key" }, b, { ...c, key: "a2.key" }] });
        assert.match(
          await reload(),
          /config reloaded .*added=0 removed=0 restarted=0 key_changed=2/,
        );
        await assert.rejects(viaServer(portA, keyA, "old key"), AuthenticationError);
        assert.equal(await viaServer(portA, newKey, "new key"), "new key");
        // The client tunnel c now opens its sessions to a with the new key as well.
        assert.equal(await viaClientTunnel(portC, "c re-keyed"), "c re-keyed");
        assert.equal(await echoOf("after"), "after");
        await writer.close();
        assert.equal((await reader.read()).done, true);
        assert.equal((await open.ended).error, null);
        assert.ok(running.lines.some((l) => /key changed; new sessions use it tunnel=a /.test(l)));
        assert.ok(
          !running.lines.some((l) => /settings changed.*tunnel=a /.test(l)),
          "a not restarted",
        );
      },
    );

    await t.step("a changed forward target restarts the tunnel on its port", async () => {
      await files.write({
        tunnels: [{ ...a, key: "a2.key" }, { ...b, forward: `127.0.0.1:${second.port}` }, {
          ...c,
          key: "a2.key",
        }],
      });
      assert.match(await reload(), /config reloaded .*added=0 removed=0 restarted=1 key_changed=0/);
      assert.equal(await viaServer(portB, keyA, "to b"), "second:to b");
    });
  } finally {
    if (daemon) assert.equal(await daemon.stop("SIGTERM"), 0);
    await first.close();
    await second.close();
    await files.cleanup();
  }
});
