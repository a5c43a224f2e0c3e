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

const MAIN = new URL("../main.ts", import.meta.url).pathname;
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
        const { success, stdout } = await new Deno.Command(candidate, {
          args: ["-c", "import sys, cryptography; print(sys.executable)"],
          stdin: "null",
          stdout: "piped",
          stderr: "null",
        }).output();
        const executable = decoder.decode(stdout).trim();
        if (success) return executable || candidate;
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

/** `deno run -A main.ts ARGS` as an argv. */
function ours(args: string[]): string[] {
  return [Deno.execPath(), "run", "-A", MAIN, ...args];
}

/** `python3 cipherlink_peer.py ARGS` as an argv. */
async function peer(args: string[]): Promise<string[]> {
  return [await python(), PEER, ...args];
}

interface Result {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

/** Runs argv to completion, feeding stdin while the output is collected. */
async function run(argv: string[], stdin?: Uint8Array): Promise<Result> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), RUN_TIMEOUT_MS);
  try {
    const child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
      signal: abort.signal,
    }).spawn();
    const output = child.output();
    if (stdin) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(stdin);
        await writer.close();
      } catch {
        // The child exited without reading everything (e.g. a failed handshake).
      }
    }
    const { code, stdout, stderr } = await output;
    const text = decoder.decode(stderr);
    if (abort.signal.aborted) {
      throw new Error(`${argv.join(" ")} did not finish within ${RUN_TIMEOUT_MS} ms:\n${text}`);
    }
    return { code, stdout, stderr: text };
  } finally {
    clearTimeout(timer);
  }
}

/** A running server (ours or the peer), ready once it logged `listening on`. */
interface Daemon {
  port: number;
  address: string;
  lines: string[];
  /** The first stderr line matching `pattern`, past or future; rejects after `ms`. */
  waitForLine(pattern: RegExp, ms?: number): Promise<string>;
  stop(): Promise<void>;
}

async function startDaemon(argv: string[]): Promise<Daemon> {
  const process = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const waiters = new Set<{ pattern: RegExp; resolve: (line: string) => void }>();
  let ended = false;
  const drained = (async () => {
    let pending = "";
    for await (const chunk of process.stderr.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      const parts = pending.split("\n");
      pending = parts.pop()!;
      for (const line of parts) {
        lines.push(line);
        for (const waiter of [...waiters]) {
          if (waiter.pattern.test(line)) {
            waiters.delete(waiter);
            waiter.resolve(line);
          }
        }
      }
    }
    if (pending) lines.push(pending);
    ended = true;
  })();
  const status = process.status;

  const waitForLine = async (pattern: RegExp, ms = 10_000): Promise<string> => {
    const seen = lines.find((line) => pattern.test(line));
    if (seen !== undefined) return seen;
    if (ended) throw new Error(`process ended without a line matching ${pattern}`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const waiter = { pattern, resolve: (_line: string) => {} };
    try {
      return await Promise.race([
        new Promise<string>((resolve) => {
          waiter.resolve = resolve;
          waiters.add(waiter);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(`no line matching ${pattern} within ${ms} ms:\n${lines.join("\n")}`),
              ),
            ms,
          );
        }),
      ]);
    } finally {
      waiters.delete(waiter);
      clearTimeout(timer);
    }
  };

  const stop = async () => {
    try {
      process.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    await status;
    await drained;
  };

  try {
    const ready = await Promise.race([
      waitForLine(/listening on \S*:\d+/, 15_000),
      status.then((s) => {
        throw new Error(`${argv.join(" ")} exited with ${s.code}:\n${lines.join("\n")}`);
      }),
    ]);
    const port = Number(/listening on \S*:(\d+)/.exec(ready)![1]);
    return { port, address: `127.0.0.1:${port}`, lines, waitForLine, stop };
  } catch (error) {
    await stop();
    throw error;
  }
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

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) {
    crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
  }
  return out;
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(data))));
}

/** `rekeys sent A, received B` from a peer's summary line. */
function rekeyCounts(text: string): { sent: number; received: number } {
  const match = /rekeys sent (\d+), received (\d+)/.exec(text);
  assert.ok(match, `no rekey summary in:\n${text}`);
  return { sent: Number(match[1]), received: Number(match[2]) };
}

/** Runs `fn` with our server started with `args` (plus --listen and --key). */
async function withOurServer(
  keys: Keys,
  args: string[],
  fn: (server: Daemon) => Promise<void>,
): Promise<void> {
  const server = await startDaemon(
    ours(["server", "--listen", "127.0.0.1:0", "--key", keys.raw, ...args]),
  );
  try {
    await fn(server);
  } finally {
    await server.stop();
  }
}

/** Runs `fn` with the Python peer's server started with `args`. */
async function withPeerServer(
  keys: Keys,
  args: string[],
  fn: (server: Daemon) => Promise<void>,
): Promise<void> {
  const server = await startDaemon(
    await peer(["server", "--listen", "127.0.0.1:0", "--key", keys.hex, ...args]),
  );
  try {
    await fn(server);
  } finally {
    await server.stop();
  }
}

Deno.test("interop: the Python peer reproduces the Noise NNpsk0 test vector", async () => {
  const result = await run(await peer(["selftest", "--vector", VECTOR]));
  assert.equal(result.code, 0, result.stderr);
  assert.match(decoder.decode(result.stdout), /^selftest ok: .*handshake hash reproduced/);
});

Deno.test("interop: Python client -> our server echoes 0, 1, 65518, 65519 bytes and 3 MiB; PING", async () => {
  const keys = await makeKeys();
  try {
    await withOurServer(keys, [], async (server) => {
      for (const size of [0, 1, 65518, 65519, 3 * 1024 * 1024 + 3]) {
        const payload = randomBytes(size);
        const result = await run(
          await peer(["client", "--server", server.address, "--key", keys.base64]),
          payload,
        );
        assert.equal(result.code, 0, `${size} bytes: ${result.stderr}`);
        assert.equal(result.stdout.byteLength, size);
        assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload), `${size} bytes`);
        assert.match(result.stderr, /session closed cleanly/);
      }
      const payload = randomBytes(100_000);
      const pinged = await run(
        await peer(["client", "--server", server.address, "--key", keys.hex, "--ping"]),
        payload,
      );
      assert.equal(pinged.code, 0, pinged.stderr);
      assert.match(pinged.stderr, /PONG ok/);
      assert.equal(await sha256Hex(pinged.stdout), await sha256Hex(payload));
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test("interop: Python client -> our server with --rekey-bytes 4096 on both sides", async () => {
  const keys = await makeKeys();
  try {
    await withOurServer(keys, ["--rekey-bytes", "4096"], async (server) => {
      const payload = randomBytes(2 * 1024 * 1024 + 11);
      const result = await run(
        await peer([
          "client",
          "--server",
          server.address,
          "--key",
          keys.raw,
          "--rekey-bytes",
          "4096",
        ]),
        payload,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload));
      const rekeys = rekeyCounts(result.stderr);
      assert.ok(rekeys.sent > 1, `the peer sent REKEYs: ${result.stderr}`);
      assert.ok(rekeys.received > 1, `our server sent REKEYs: ${result.stderr}`);
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test("interop: Python client with a wrong key fails; our server logs the handshake failure", async () => {
  const keys = await makeKeys();
  try {
    await withOurServer(keys, [], async (server) => {
      const result = await run(
        await peer(["client", "--server", server.address, "--key", keys.wrong]),
        new TextEncoder().encode("secret"),
      );
      assert.equal(result.code, 1);
      assert.match(result.stderr, /cipherlink-peer: error: authentication failed/);
      assert.equal(result.stdout.byteLength, 0);
      await server.waitForLine(/handshake failed/);
      assert.ok(!server.lines.some((l) => /session open/.test(l)), server.lines.join("\n"));
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test("interop: Python client -> our server --forward reaches the target and comes back", async () => {
  const keys = await makeKeys();
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
      for (let off = 0; off < n;) off += await conn.write(chunk.subarray(off));
    }
    conn.close();
    targetConn = undefined;
    const all = new Uint8Array(chunks.reduce((sum, c) => sum + c.byteLength, 0));
    let offset = 0;
    for (const c of chunks) {
      all.set(c, offset);
      offset += c.byteLength;
    }
    return all;
  })();
  try {
    await withOurServer(keys, ["--forward", `127.0.0.1:${target.addr.port}`], async (server) => {
      const payload = randomBytes(300_000);
      const result = await run(
        await peer(["client", "--server", server.address, "--key", keys.hex]),
        payload,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(await sha256Hex(await atTarget), await sha256Hex(payload), "at the target");
      assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload), "back at the client");
    });
  } finally {
    target.close();
    try {
      targetConn?.close();
    } catch {
      // Already closed.
    }
    await atTarget.catch(() => {});
    await keys.cleanup();
  }
});

Deno.test("interop: Python client OPEN 0x01 to a target our server does not allow gets ERROR 2", async () => {
  const keys = await makeKeys();
  try {
    await withOurServer(keys, [], async (server) => {
      const result = await run(
        await peer([
          "client",
          "--server",
          server.address,
          "--key",
          keys.raw,
          "--connect",
          "127.0.0.1:9",
        ]),
        new TextEncoder().encode("hi"),
      );
      assert.equal(result.code, 1);
      assert.match(result.stderr, /error: server sent ERROR 2 \(refused by the server's policy\)/);
      assert.equal(result.stdout.byteLength, 0);
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test("interop: our client -> Python server: one-shot message and 3 MiB pipe mode", async () => {
  const keys = await makeKeys();
  try {
    await withPeerServer(keys, [], async (server) => {
      const oneShot = await run(
        ours(["client", "--server", server.address, "--key", keys.raw, "hello", "world"]),
      );
      assert.equal(oneShot.code, 0, oneShot.stderr);
      assert.equal(decoder.decode(oneShot.stdout), "hello world");

      const payload = randomBytes(3 * 1024 * 1024 + 5);
      const piped = await run(
        ours(["client", "--server", server.address, "--key", keys.base64]),
        payload,
      );
      assert.equal(piped.code, 0, piped.stderr);
      assert.equal(await sha256Hex(piped.stdout), await sha256Hex(payload));

      const empty = await run(
        ours(["client", "--server", server.address, "--key", keys.raw]),
        new Uint8Array(0),
      );
      assert.equal(empty.code, 0, empty.stderr);
      assert.equal(empty.stdout.byteLength, 0);
      await server.waitForLine(/session closed cleanly: echoed 3145733 bytes/);
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test("interop: our client -> Python server with --rekey-bytes 4096 on both sides", async () => {
  const keys = await makeKeys();
  try {
    await withPeerServer(keys, ["--rekey-bytes", "4096"], async (server) => {
      const payload = randomBytes(2 * 1024 * 1024 + 13);
      const result = await run(
        ours(["client", "--server", server.address, "--key", keys.raw, "--rekey-bytes", "4096"]),
        payload,
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(await sha256Hex(result.stdout), await sha256Hex(payload));
      const summary = await server.waitForLine(/session closed cleanly: echoed 2097165 bytes/);
      const rekeys = rekeyCounts(summary);
      assert.ok(rekeys.sent > 1, `the peer sent REKEYs: ${summary}`);
      assert.ok(rekeys.received > 1, `our client sent REKEYs: ${summary}`);
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test("interop: our client with a wrong key against the Python server: authentication failed", async () => {
  const keys = await makeKeys();
  try {
    await withPeerServer(keys, [], async (server) => {
      const result = await run(
        ours(["client", "--server", server.address, "--key", keys.wrong, "secret"]),
      );
      assert.equal(result.code, 1);
      assert.match(result.stderr, /^cipherlink: error: authentication failed: /m);
      assert.equal(result.stdout.byteLength, 0);
      await server.waitForLine(/handshake failed: cannot decrypt message 1/);
    });
  } finally {
    await keys.cleanup();
  }
});

Deno.test({
  name:
    "interop (openssl): Python client -> our server --crypto openssl: edge sizes, 3 MiB, REKEY every 4 KiB",
  ignore: openssl === null,
  async fn() {
    const keys = await makeKeys();
    try {
      await withOurServer(
        keys,
        ["--crypto", "openssl", "--rekey-bytes", "4096"],
        async (server) => {
          await server.waitForLine(/listening on .*crypto=openssl/);
          for (const size of [0, 1, 65518, 65519, 3 * 1024 * 1024 + 3]) {
            const payload = randomBytes(size);
            const result = await run(
              await peer([
                "client",
                "--server",
                server.address,
                "--key",
                keys.base64,
                "--rekey-bytes",
                "4096",
              ]),
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
    } finally {
      await keys.cleanup();
    }
  },
});

Deno.test({
  name:
    "interop (openssl): our client --crypto openssl -> Python server: one-shot, 3 MiB pipe, REKEY every 4 KiB",
  ignore: openssl === null,
  async fn() {
    const keys = await makeKeys();
    try {
      await withPeerServer(keys, ["--rekey-bytes", "4096"], async (server) => {
        const client = ["client", "--server", server.address, "--crypto", "openssl"];
        const oneShot = await run(ours([...client, "--key", keys.raw, "hello", "openssl"]));
        assert.equal(oneShot.code, 0, oneShot.stderr);
        assert.equal(decoder.decode(oneShot.stdout), "hello openssl");
        const payload = randomBytes(3 * 1024 * 1024 + 5);
        const piped = await run(
          ours([...client, "--key", keys.hex, "--rekey-bytes", "4096"]),
          payload,
        );
        assert.equal(piped.code, 0, piped.stderr);
        assert.equal(await sha256Hex(piped.stdout), await sha256Hex(payload));
        const summary = await server.waitForLine(/session closed cleanly: echoed 3145733 bytes/);
        const rekeys = rekeyCounts(summary);
        assert.ok(rekeys.sent > 1 && rekeys.received > 1, summary);
      });
    } finally {
      await keys.cleanup();
    }
  },
});

if (opensslMissing) Deno.test({ name: opensslMissing, ignore: true, fn() {} });
