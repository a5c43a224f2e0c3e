/**
 * The SOCKS5 proxy end to end with real processes on 127.0.0.1: curl talks to
 * `cipherlink client --socks`, which tunnels to `cipherlink server --allow …`,
 * which fetches from a local HTTP server. Covers domain names (ATYP 3) and
 * IPv4 literals (ATYP 1), policy refusals, and how an unreachable target maps
 * to a SOCKS5 reply code.
 * @module
 */

import assert from "node:assert/strict";
import {
  type Daemon,
  freePort,
  runArgv,
  startTunnel,
  type Tunnel,
  waitForLineWithin,
} from "./process.ts";
import { randomBytes, sha256Hex } from "./helpers.ts";

const CURL = "/usr/bin/curl";
const BLOB_SIZE = 4 * 1024 * 1024;

/** SOCKS5 reply codes (RFC 1928) and the names curl's `%{proxy_error}` gives them. */
const SOCKS_REPLY = {
  notAllowed: { code: 2, name: "SOCKS5_REPLY_NOT_ALLOWED" },
  hostUnreachable: { code: 4, name: "SOCKS5_REPLY_HOST_UNREACHABLE" },
  connectionRefused: { code: 5, name: "SOCKS5_REPLY_CONNECTION_REFUSED" },
} as const;

/** curl's exit code for "the proxy handshake failed" (CURLE_PROXY). */
const CURLE_PROXY = 97;

interface CurlResult {
  code: number;
  body: Uint8Array;
  /** What `-w` printed after the body (only when the body went elsewhere). */
  stdout: string;
  stderr: string;
}

async function curl(args: string[]): Promise<CurlResult> {
  try {
    await Deno.stat(CURL);
  } catch {
    throw new Error(`${CURL} is missing; install it with: apt-get install -y curl`);
  }
  // --max-time only bounds a broken run; a healthy one takes milliseconds.
  const { code, stdoutBytes, stdout, stderr } = await runArgv([
    CURL,
    "--silent",
    "--show-error",
    "--max-time",
    "20",
    ...args,
  ]);
  return { code, body: stdoutBytes, stdout, stderr };
}

/**
 * Asks curl for `url` through the proxy and asserts it failed in the SOCKS
 * handshake with `expected`. curl reports the reply code on stderr
 * ("… SOCKS5 connection to HOST. (CODE)") in every version; `%{proxy_error}`
 * names it too, in versions that know that variable (7.88 does not).
 */
async function assertSocksFailure(
  proxyOption: "--socks5" | "--socks5-hostname",
  socksPort: number,
  url: string,
  expected: { code: number; name: string },
): Promise<void> {
  const result = await curl([
    proxyOption,
    `127.0.0.1:${socksPort}`,
    "--output",
    "/dev/null",
    "--write-out",
    "%{proxy_error}",
    url,
  ]);
  assert.equal(result.code, CURLE_PROXY, `curl ${url}: ${result.stderr}`);
  const reply = /SOCKS5 connection to .*\((\d+)\)/.exec(result.stderr);
  assert.ok(reply, `curl names the SOCKS5 reply code: ${result.stderr}`);
  assert.equal(Number(reply[1]), expected.code, `${url}: ${result.stderr}`);
  if (result.stdout !== "") assert.equal(result.stdout, expected.name);
}

interface Proxy {
  httpPort: number;
  socksPort: number;
  blobSha: string;
  server: Daemon;
  socks: Daemon;
}

/**
 * Runs `body` with an HTTP server serving a random 4 MiB `/blob`, a Cipherlink
 * server with the `--allow` rules `allow(httpPort)` gives, and a SOCKS client
 * in front of it; tears everything down afterwards, even on failure.
 */
async function withProxy(
  allow: (httpPort: number) => string[],
  body: (proxy: Proxy) => Promise<void>,
): Promise<void> {
  const blob = randomBytes(BLOB_SIZE);
  const blobSha = await sha256Hex(blob);
  const { promise: listening, resolve: onListen } = Promise.withResolvers<Deno.NetAddr>();
  const http = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen },
    (request) =>
      new URL(request.url).pathname === "/blob"
        ? new Response(blob as Uint8Array<ArrayBuffer>, {
          headers: { "content-type": "application/octet-stream" },
        })
        : new Response("not found", { status: 404 }),
  );
  let tunnel: Tunnel | undefined;
  try {
    const httpPort = (await listening).port;
    const rules = allow(httpPort).flatMap((rule) => ["--allow", rule]);
    tunnel = await startTunnel(["--socks", "127.0.0.1:0"], { server: rules });
    const { server, client: socks } = tunnel;
    await body({ httpPort, socksPort: socks.port, blobSha, server, socks });
  } finally {
    await tunnel?.stop();
    await http.shutdown();
  }
}

Deno.test("socks: curl --socks5-hostname fetches 4 MiB from localhost, admitted by a name rule", async () => {
  await withProxy((httpPort) => [`localhost:${httpPort}`], async (proxy) => {
    const result = await curl([
      "--socks5-hostname",
      `127.0.0.1:${proxy.socksPort}`,
      `http://localhost:${proxy.httpPort}/blob`,
      "--output",
      "-",
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.body.byteLength, BLOB_SIZE);
    assert.equal(await sha256Hex(result.body), proxy.blobSha);
    // The name reached the server unresolved (ATYP 3) and matched the name rule.
    const target = `target=localhost:${proxy.httpPort}`;
    assert.ok(
      proxy.server.lines.some((l) => l.includes("session open") && l.includes(target)),
      proxy.server.lines.join("\n"),
    );
    await waitForLineWithin(proxy.server, new RegExp(`session end .*outcome=ok`));
  });
});

Deno.test("socks: curl --socks5 sends an IPv4 literal (ATYP 1), admitted by a CIDR rule", async () => {
  await withProxy(() => ["127.0.0.0/8:*"], async (proxy) => {
    const result = await curl([
      "--socks5",
      `127.0.0.1:${proxy.socksPort}`,
      `http://127.0.0.1:${proxy.httpPort}/blob`,
      "--output",
      "-",
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.body.byteLength, BLOB_SIZE);
    assert.equal(await sha256Hex(result.body), proxy.blobSha);
    const target = `target=127.0.0.1:${proxy.httpPort}`;
    assert.ok(
      proxy.server.lines.some((l) => l.includes("session open") && l.includes(target)),
      proxy.server.lines.join("\n"),
    );
  });
});

Deno.test("socks: a target outside every --allow rule is SOCKS5 'not allowed' (curl exit 97) and logged", async () => {
  await withProxy((httpPort) => [`localhost:${httpPort}`], async (proxy) => {
    // The HTTP server is up, so only policy can turn these away: the literal
    // does not match the name rule, and no rule names the other port.
    const literal = `127.0.0.1:${proxy.httpPort}`;
    const otherPort = `localhost:${freePort()}`;
    await assertSocksFailure(
      "--socks5",
      proxy.socksPort,
      `http://${literal}/blob`,
      SOCKS_REPLY.notAllowed,
    );
    await assertSocksFailure(
      "--socks5-hostname",
      proxy.socksPort,
      `http://${otherPort}/blob`,
      SOCKS_REPLY.notAllowed,
    );
    for (const target of [literal, otherPort]) {
      const escaped = target.replaceAll(".", "\\.");
      await waitForLineWithin(
        proxy.server,
        new RegExp(`WARN +open refused by policy .*target=${escaped}(\\s|$)`),
      );
      await waitForLineWithin(
        proxy.socks,
        new RegExp(`tunnel open failed .*target=${escaped} .*error 2 \\(refused`),
      );
    }
    assert.ok(!proxy.server.lines.some((l) => l.includes("session open")));
  });
});

Deno.test("socks: an unreachable allowed target maps to 'connection refused' or 'host unreachable'", async () => {
  const deadPort = freePort();
  await withProxy(() => [`127.0.0.0/8:${deadPort}`], async (proxy) => {
    // ECONNREFUSED: the server says "connection refused by …" in ERROR 3.
    await assertSocksFailure(
      "--socks5",
      proxy.socksPort,
      `http://127.0.0.1:${deadPort}/`,
      SOCKS_REPLY.connectionRefused,
    );
    await waitForLineWithin(
      proxy.server,
      new RegExp(`target unreachable .*target=127\\.0\\.0\\.1:${deadPort} .*[Rr]efused`),
    );
    // Any other connect error is "host unreachable". 127.255.255.255 is the
    // loopback network's broadcast address: the kernel fails connect() with
    // ENETUNREACH at once, and no packet leaves the host.
    await assertSocksFailure(
      "--socks5",
      proxy.socksPort,
      `http://127.255.255.255:${deadPort}/`,
      SOCKS_REPLY.hostUnreachable,
    );
    await waitForLineWithin(
      proxy.server,
      new RegExp(`target unreachable .*target=127\\.255\\.255\\.255:${deadPort} `),
    );
  });
});
