/**
 * Interoperability with an independent implementation of the wire protocol:
 * tests/interop/cipherlink_peer.py, a Python peer written from
 * shared/spec/protocol-v2.md and the public Noise test vector alone (see its
 * header). It reproduces the vector, then talks to our server and our client
 * as real processes in both directions: echo of edge sizes and megabytes,
 * REKEY both ways, PING/PONG, wrong keys, the forward target and ERROR 2.
 * @module
 */

import assert from "node:assert/strict";
import { openssl, opensslMissing } from "./providers.ts";
import { cipherlinkArgv, type Daemon, runArgv, spawnDaemon } from "./process.ts";
import { randomBytes, sha256Hex, toHex } from "./helpers.ts";
import { concat } from "../lib/base/bytes.ts";
import { writeAll } from "../lib/protocol/conn.ts";

const PEER = new URL("./interop/cipherlink_peer.py", import.meta.url).pathname;
const VECTOR = new URL("./vectors/noise-nnpsk0-25519-aesgcm-sha256.json", import.meta.url).pathname;
const PYTHON_CANDIDATES = ["python3", "/usr/bin/python3"];
/** A bound against hangs for one process run, never a pacing. */
const RUN_TIMEOUT_MS = 20_000;
const decoder = new TextDecoder();

let pythonLookup: Promise<string> | undefined;

/**
 * The first python3 that can `import cryptography` (as its resolved executable);
 * rejects naming the package to install.
 */
function python(): Promise<string> {
  pythonLookup ??= (async () => {
    for (const candidate of PYTHON_CANDIDATES) {
      try {
        // The interpreter's own path: it skips launcher shims (pyenv) on every later run.
        const { code, stdout } = await runArgv(
          [candidate, "-c", "import sys, cryptography; print(sys.executable)"],
          { ms: RUN_TIMEOUT_MS },
        );
        const executable = stdout.trim();
        if (code === 0) return executable || candidate;
      } catch {
        // Not installed under this name.
      }
    }
    throw new Error(
      `no Python 3 with the 'cryptography' package (tried ${PYTHON_CANDIDATES.join(", ")}); ` +
        "install it with: apt-get install python3-cryptography",
    );
  })();
  return pythonLookup;
}

/** `cipherlink ARGS`, run from source, as an argv. */
const ours = cipherlinkArgv;

/** `python3 cipherlink_peer.py ARGS` as an argv. */
async function peer(args: string[]): Promise<string[]> {
  return [await python(), PEER, ...args];
}

/** `python3 cipherlink_peer.py client --server SERVER --key KEY ARGS` as an argv. */
function peerClient(server: Daemon, key: string, ...args: string[]): Promise<string[]> {
  return peer(["client", "--server", server.address, "--key", key, ...args]);
}

/** `cipherlink client --server SERVER --key KEY ARGS`, run from source, as an argv. */
function ourClient(server: Daemon, key: string, ...args: string[]): string[] {
  return ours(["client", "--server", server.address, "--key", key, ...args]);
}

interface Result {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

/** Runs argv to completion (within RUN_TIMEOUT_MS), feeding stdin while the output is collected. */
async function run(argv: string[], stdin?: Uint8Array): Promise<Result> {
  const { code, stdoutBytes, stderr } = await runArgv(argv, { stdin, ms: RUN_TIMEOUT_MS });
  return { code, stdout: stdoutBytes, stderr };
}

/** Two unrelated keys, each as raw, hex and base64 files, in a temp folder. */
interface Keys {
  raw: string;
  hex: string;
  base64: string;
  wrong: string;
  cleanup(): Promise<void>;
}

async function makeKeys(): Promise<Keys> {
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-interop-" });
  const key = crypto.getRandomValues(new Uint8Array(32));
  const write = async (name: string, data: Uint8Array | string) => {
    const path = `${dir}/${name}`;
    if (typeof data === "string") await Deno.writeTextFile(path, data, { mode: 0o600 });
    else await Deno.writeFile(path, data, { mode: 0o600 });
    return path;
  };
  return {
    raw: await write("shared.key", key),
    hex: await write("shared.hex", toHex(key) + "\n"),
    base64: await write("shared.b64", btoa(String.fromCharCode(...key)) + "\n"),
    wrong: await write("wrong.key", crypto.getRandomValues(new Uint8Array(32))),
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}

/** `rekeys sent A, received B` from a peer's summary line. */
function rekeyCounts(text: string): { sent: number; received: number } {
  const match = /rekeys sent (\d+), received (\d+)/.exec(text);
  assert.ok(match, `no rekey summary in:\n${text}`);
  return { sent: Number(match[1]), received: Number(match[2]) };
}

/**
 * Runs `fn` with fresh keys and a server, ours (raw key file) or the Python
 * peer's (hex key file), started with `args` plus --listen and --key; stops
 * the server and removes the keys after.
 */
async function withServer(
  side: "ours" | "peer",
  args: string[],
  fn: (server: Daemon, keys: Keys) => Promise<void>,
): Promise<void> {
  const keys = await makeKeys();
  try {
    const argv = side === "ours"
      ? ours(["server", "--listen", "127.0.0.1:0", "--key", keys.raw, ...args])
      : await peer(["server", "--listen", "127.0.0.1:0", "--key", keys.hex, ...args]);
    const server = await spawnDaemon(argv);
    try {
      await fn(server, keys);
    } finally {
      await server.stop();
    }
  } finally {
    await keys.cleanup();
  }
}

Deno.test("interop: the Python peer reproduces the Noise NNpsk0 test vector", async () => {
  const result = await run(await peer(["selftest", "--vector", VECTOR]));
  assert.equal(result.code, 0, result.stderr);
  assert.match(decoder.decode(result.stdout), /^selftest ok: .*handshake hash reproduced/);
});

Deno.test("interop: Python client -> our server echoes 0, 1, 65518, 65519 bytes and 3 MiB; PING", async () => {
  await withServer("ours", [], async (server, keys) => {
    for (const size of [0, 1, 65518, 65519, 3 * 1024 * 1024 + 3]) {
      const payload = randomBytes(size);
      const result = await run(
        await peerClient(server, keys.base64),
        payload,
      );
      assert.equal(result.code, 0, `${size} bytes: ${result.stderr}`);
      assert.equal(result.stdout.byteLength, size);
      assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload), `${size} bytes`);
      assert.match(result.stderr, /session closed cleanly/);
    }
    const payload = randomBytes(100_000);
    const pinged = await run(
      await peerClient(server, keys.hex, "--ping"),
      payload,
    );
    assert.equal(pinged.code, 0, pinged.stderr);
    assert.match(pinged.stderr, /PONG ok/);
    assert.equal(await sha256Hex(pinged.stdout), await sha256Hex(payload));
  });
});

Deno.test("interop: Python client -> our server with --rekey-bytes 4096 on both sides", async () => {
  await withServer("ours", ["--rekey-bytes", "4096"], async (server, keys) => {
    const payload = randomBytes(2 * 1024 * 1024 + 11);
    const result = await run(
      await peerClient(server, keys.raw, "--rekey-bytes", "4096"),
      payload,
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload));
    const rekeys = rekeyCounts(result.stderr);
    assert.ok(rekeys.sent > 1, `the peer sent REKEYs: ${result.stderr}`);
    assert.ok(rekeys.received > 1, `our server sent REKEYs: ${result.stderr}`);
  });
});

Deno.test("interop: Python client with a wrong key fails; our server logs the handshake failure", async () => {
  await withServer("ours", [], async (server, keys) => {
    const result = await run(
      await peerClient(server, keys.wrong),
      new TextEncoder().encode("secret"),
    );
    assert.equal(result.code, 1);
    assert.match(result.stderr, /cipherlink-peer: error: authentication failed/);
    assert.equal(result.stdout.byteLength, 0);
    await server.waitForLine(/handshake failed/);
    assert.ok(!server.lines.some((l) => /session open/.test(l)), server.lines.join("\n"));
  });
});

Deno.test("interop: Python client -> our server --forward reaches the target and comes back", async () => {
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  let targetConn: Deno.TcpConn | undefined;
  const atTarget = (async () => {
    const conn = await target.accept();
    targetConn = conn;
    const chunks: Uint8Array[] = [];
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      const chunk = buffer.slice(0, n);
      chunks.push(chunk);
      await writeAll(conn, chunk);
    }
    conn.close();
    targetConn = undefined;
    return concat(chunks);
  })();
  try {
    await withServer(
      "ours",
      ["--forward", `127.0.0.1:${target.addr.port}`],
      async (server, keys) => {
        const payload = randomBytes(300_000);
        const result = await run(
          await peerClient(server, keys.hex),
          payload,
        );
        assert.equal(result.code, 0, result.stderr);
        assert.equal(await sha256Hex(await atTarget), await sha256Hex(payload), "at the target");
        assert.equal(
          await sha256Hex(result.stdout),
          await sha256Hex(payload),
          "back at the client",
        );
      },
    );
  } finally {
    target.close();
    try {
      targetConn?.close();
    } catch {
      // Already closed.
    }
    await atTarget.catch(() => {});
  }
});

Deno.test("interop: Python client OPEN 0x01 to a target our server does not allow gets ERROR 2", async () => {
  await withServer("ours", [], async (server, keys) => {
    const result = await run(
      await peerClient(server, keys.raw, "--connect", "127.0.0.1:9"),
      new TextEncoder().encode("hi"),
    );
    assert.equal(result.code, 1);
    assert.match(result.stderr, /error: server sent ERROR 2 \(refused by the server's policy\)/);
    assert.equal(result.stdout.byteLength, 0);
  });
});

Deno.test("interop: our client -> Python server: one-shot message and 3 MiB pipe mode", async () => {
  await withServer("peer", [], async (server, keys) => {
    const oneShot = await run(
      ourClient(server, keys.raw, "hello", "world"),
    );
    assert.equal(oneShot.code, 0, oneShot.stderr);
    assert.equal(decoder.decode(oneShot.stdout), "hello world");

    const payload = randomBytes(3 * 1024 * 1024 + 5);
    const piped = await run(
      ourClient(server, keys.base64),
      payload,
    );
    assert.equal(piped.code, 0, piped.stderr);
    assert.equal(await sha256Hex(piped.stdout), await sha256Hex(payload));

    const empty = await run(
      ourClient(server, keys.raw),
      new Uint8Array(0),
    );
    assert.equal(empty.code, 0, empty.stderr);
    assert.equal(empty.stdout.byteLength, 0);
    await server.waitForLine(/session closed cleanly: echoed 3145733 bytes/);
  });
});

Deno.test("interop: our client -> Python server with --rekey-bytes 4096 on both sides", async () => {
  await withServer("peer", ["--rekey-bytes", "4096"], async (server, keys) => {
    const payload = randomBytes(2 * 1024 * 1024 + 13);
    const result = await run(
      ourClient(server, keys.raw, "--rekey-bytes", "4096"),
      payload,
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload));
    const summary = await server.waitForLine(/session closed cleanly: echoed 2097165 bytes/);
    const rekeys = rekeyCounts(summary);
    assert.ok(rekeys.sent > 1, `the peer sent REKEYs: ${summary}`);
    assert.ok(rekeys.received > 1, `our client sent REKEYs: ${summary}`);
  });
});

Deno.test("interop: our client with a wrong key against the Python server: authentication failed", async () => {
  await withServer("peer", [], async (server, keys) => {
    const result = await run(
      ourClient(server, keys.wrong, "secret"),
    );
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^cipherlink: error: authentication failed: /m);
    assert.equal(result.stdout.byteLength, 0);
    await server.waitForLine(/handshake failed: cannot decrypt message 1/);
  });
});

Deno.test({
  name:
    "interop (openssl): Python client -> our server --crypto openssl: edge sizes, 3 MiB, REKEY every 4 KiB",
  ignore: openssl === null,
  async fn() {
    await withServer(
      "ours",
      ["--crypto", "openssl", "--rekey-bytes", "4096"],
      async (server, keys) => {
        await server.waitForLine(/listening on .*crypto=openssl/);
        for (const size of [0, 1, 65518, 65519, 3 * 1024 * 1024 + 3]) {
          const payload = randomBytes(size);
          const result = await run(
            await peerClient(server, keys.base64, "--rekey-bytes", "4096"),
            payload,
          );
          assert.equal(result.code, 0, `${size} bytes: ${result.stderr}`);
          assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload), `${size} bytes`);
          if (size > 8192) {
            const rekeys = rekeyCounts(result.stderr);
            assert.ok(rekeys.sent > 1 && rekeys.received > 1, result.stderr);
          }
        }
      },
    );
  },
});

Deno.test({
  name:
    "interop (openssl): our client --crypto openssl -> Python server: one-shot, 3 MiB pipe, REKEY every 4 KiB",
  ignore: openssl === null,
  async fn() {
    await withServer("peer", ["--rekey-bytes", "4096"], async (server, keys) => {
      const oneShot = await run(
        ourClient(server, keys.raw, "--crypto", "openssl", "hello", "openssl"),
      );
      assert.equal(oneShot.code, 0, oneShot.stderr);
      assert.equal(decoder.decode(oneShot.stdout), "hello openssl");
      const payload = randomBytes(3 * 1024 * 1024 + 5);
      const piped = await run(
        ourClient(server, keys.hex, "--crypto", "openssl", "--rekey-bytes", "4096"),
        payload,
      );
      assert.equal(piped.code, 0, piped.stderr);
      assert.equal(await sha256Hex(piped.stdout), await sha256Hex(payload));
      const summary = await server.waitForLine(/session closed cleanly: echoed 3145733 bytes/);
      const rekeys = rekeyCounts(summary);
      assert.ok(rekeys.sent > 1 && rekeys.received > 1, summary);
    });
  },
});

if (opensslMissing) Deno.test({ name: opensslMissing, ignore: true, fn() {} });
