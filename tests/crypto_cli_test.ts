/**
 * `--crypto openssl` everywhere a session runs, as real processes: the
 * server, the client's one-shot and pipe modes, `--listen`, `--socks`,
 * config-file tunnels, CIPHERLINK_CRYPTO, every pairing of providers on the
 * two ends, and the launcher's narrowed FFI grant.
 * @module
 */

import assert from "node:assert/strict";
import {
  type Daemon,
  freePort,
  runArgv,
  runCipherlink,
  type ServerProcess,
  startDaemon,
  startServerProcess,
  type TempKey,
  tempKey,
  waitForLineWithin,
} from "./process.ts";
import { MAIN } from "../support/process.ts";
import { randomBytes, readExactly, readToEnd, sha256Hex } from "./helpers.ts";
import { openssl, opensslMissing } from "./providers.ts";

const LOCAL = "127.0.0.1";
const LAUNCHER = new URL("../cipherlink", import.meta.url).pathname;
const ignore = openssl === null;

/** Runs `run` with a server on `key` started with `args`; the server must exit 0. */
async function withServer(
  key: TempKey,
  args: string[],
  run: (served: ServerProcess) => Promise<void>,
): Promise<void> {
  const served = await startServerProcess({ key, server: args });
  try {
    await run(served);
  } finally {
    assert.equal(await served.stop(), 0);
  }
}

/** Writes `payload` to a TCP port, half-closes, and resolves everything read back. */
async function roundTrip(port: number, payload: Uint8Array, socks?: number): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: LOCAL, port });
  try {
    if (socks !== undefined) await socksConnect(conn, socks);
    const sending = (async () => {
      for (let at = 0; at < payload.byteLength;) {
        at += await conn.write(payload.subarray(at, at + 65536));
      }
      await conn.closeWrite();
    })();
    const back = await readToEnd(conn);
    await sending;
    return back;
  } finally {
    conn.close();
  }
}

/** SOCKS5 NO AUTH, CONNECT 127.0.0.1:port; throws unless the reply is success. */
async function socksConnect(conn: Deno.Conn, port: number): Promise<void> {
  await conn.write(Uint8Array.of(5, 1, 0));
  assert.deepEqual([...await readExactly(conn, 2)], [5, 0]);
  await conn.write(Uint8Array.of(5, 1, 0, 1, 127, 0, 0, 1, port >> 8, port & 0xff));
  const reply = await readExactly(conn, 10);
  assert.equal(reply[1], 0, `SOCKS reply ${reply[1]}`);
}

/** A plain TCP echo service (the target of --allow / SOCKS tests). */
function echoService(): { port: number; close(): void } {
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        try {
          await conn.readable.pipeTo(conn.writable);
        } catch {
          // the test closed it
        }
      })();
    }
  })().catch(() => {});
  return { port: listener.addr.port, close: () => listener.close() };
}

Deno.test({
  name: "crypto cli: every pairing of providers, in one-shot and pipe mode (and CIPHERLINK_CRYPTO)",
  ignore,
  async fn() {
    const key = await tempKey();
    try {
      for (const serverCrypto of ["openssl", "webcrypto"]) {
        await withServer(key, ["--crypto", serverCrypto], async ({ server, clientArgs }) => {
          await waitForLineWithin(server, new RegExp(`listening on .*crypto=${serverCrypto}`));
          for (const clientCrypto of ["openssl", "webcrypto"]) {
            const oneShot = await runCipherlink(
              clientArgs("--crypto", clientCrypto, "hello", clientCrypto),
            );
            assert.equal(oneShot.code, 0, oneShot.stderr);
            assert.equal(oneShot.stdout, `hello ${clientCrypto}`);
            const payload = randomBytes(3 * 1024 * 1024 + 7);
            const piped = await runCipherlink(clientArgs("--rekey-bytes", "65536"), {
              stdin: payload,
              env: { CIPHERLINK_CRYPTO: clientCrypto },
            });
            assert.equal(piped.code, 0, piped.stderr);
            assert.equal(
              await sha256Hex(piped.stdoutBytes),
              await sha256Hex(payload),
              `${clientCrypto} client -> ${serverCrypto} server`,
            );
          }
        });
      }
    } finally {
      await key.cleanup();
    }
  },
});

Deno.test({
  name: "crypto cli: client --listen and --socks with --crypto openssl carry 2 MiB both ways",
  ignore,
  async fn() {
    const key = await tempKey();
    const target = echoService();
    try {
      await withServer(
        key,
        ["--allow", `${LOCAL}:${target.port}`, "--crypto", "webcrypto"],
        async ({ clientArgs }) => {
          for (const mode of ["--listen", "--socks"]) {
            const client = await startDaemon(clientArgs(mode, `${LOCAL}:0`, "--crypto", "openssl"));
            try {
              await waitForLineWithin(client, /listening on .*crypto=openssl/);
              const payload = randomBytes(2 * 1024 * 1024 + 1);
              const back = await roundTrip(
                client.port,
                payload,
                mode === "--socks" ? target.port : undefined,
              );
              assert.equal(await sha256Hex(back), await sha256Hex(payload), mode);
            } finally {
              assert.equal(await client.stop(), 0);
            }
          }
        },
      );
    } finally {
      target.close();
      await key.cleanup();
    }
  },
});

Deno.test({
  name: 'crypto cli: config-file tunnels with "crypto": "openssl" (a server and a client tunnel)',
  ignore,
  async fn() {
    const key = await tempKey();
    let daemon: Daemon | null = null;
    try {
      const serverPort = freePort();
      const file = `${key.dir}/tunnels.json`;
      await Deno.writeTextFile(
        file,
        JSON.stringify({
          tunnels: [
            {
              name: "s",
              role: "server",
              listen: `${LOCAL}:${serverPort}`,
              key: "shared.key",
              crypto: "openssl",
            },
            {
              name: "c",
              role: "client",
              listen: `${LOCAL}:0`,
              server: `${LOCAL}:${serverPort}`,
              key: "shared.key",
              crypto: "openssl",
            },
          ],
        }),
      );
      const check = await runCipherlink(["check-config", file]);
      assert.equal(check.code, 0, check.stderr);
      daemon = await startDaemon(["client", "--config", file]);
      await waitForLineWithin(daemon, /listening on .*tunnel=s .*crypto=openssl/);
      const line = await waitForLineWithin(daemon, /listening on .*tunnel=c .*crypto=openssl/);
      const port = Number(/listening on \S*:(\d+)/.exec(line)![1]);
      const payload = randomBytes(1024 * 1024 + 3);
      assert.equal(await sha256Hex(await roundTrip(port, payload)), await sha256Hex(payload));
    } finally {
      if (daemon) assert.equal(await daemon.stop(), 0);
      await key.cleanup();
    }
  },
});

Deno.test({
  name:
    "crypto cli: ./cipherlink grants FFI for --crypto openssl; a bad --libcrypto is one error line, exit 1",
  ignore,
  async fn() {
    const key = await tempKey();
    try {
      await withServer(key, ["--crypto", "openssl"], async ({ clientArgs }) => {
        const launched = await runArgv([LAUNCHER, ...clientArgs("--crypto", "openssl", "hi")]);
        assert.equal(launched.code, 0, launched.stderr);
        assert.equal(launched.stdout, "hi");
        const bad = await runArgv([
          LAUNCHER,
          ...clientArgs(
            "--crypto",
            "openssl",
            "--libcrypto",
            "/nonexistent/libcrypto.so.3",
            "hi",
          ),
        ]);
        assert.equal(bad.code, 1);
        assert.match(
          bad.stderr,
          /^cipherlink: error: --crypto openssl cannot load \/nonexistent\/libcrypto\.so\.3: .+\n$/,
        );
        // Without openssl the launcher grants no FFI at all: the provider cannot load.
        const noFfi = await runArgv([
          Deno.execPath(),
          "run",
          "--no-prompt",
          "--allow-net",
          "--allow-read",
          "--allow-env",
          MAIN,
          ...clientArgs("--crypto", "openssl", "hi"),
        ]);
        assert.equal(noFfi.code, 1);
        assert.match(noFfi.stderr, /cipherlink: error: .*ffi/i);
      });
    } finally {
      await key.cleanup();
    }
  },
});

Deno.test("crypto cli: a config tunnel whose libcrypto cannot load fails check-config and stops the start, naming the tunnel and field", async () => {
  const key = await tempKey();
  try {
    const file = `${key.dir}/tunnels.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        tunnels: [{
          name: "fast",
          role: "server",
          listen: `${LOCAL}:0`,
          key: "shared.key",
          crypto: "openssl",
          libcrypto: "missing/libcrypto.so.3",
        }],
      }),
    );
    const check = await runCipherlink(["check-config", file]);
    assert.equal(check.code, 1, check.stderr);
    assert.equal(
      check.stderr,
      `cipherlink: error: config ${file}: tunnel "fast": field "libcrypto": no OpenSSL 3 libcrypto at ${key.dir}/missing/libcrypto.so.3\n`,
    );
    const result = await runCipherlink(["server", "--config", file]);
    assert.equal(result.code, 1, result.stderr);
    assert.match(
      result.stderr,
      /cipherlink: error: config .*: tunnel "fast": field "libcrypto": --crypto openssl cannot load .*missing\/libcrypto\.so\.3: /,
    );
  } finally {
    await key.cleanup();
  }
});

if (opensslMissing) Deno.test({ name: opensslMissing, ignore: true, fn() {} });
