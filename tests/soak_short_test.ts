/**
 * The reliability and security soak, short variant: `deno task soak --quick`
 * runs all five suites (fuzzing, hostile clients, load, faults, key hygiene)
 * against real server and client processes in about a minute and must pass;
 * the tests after the first check each suite's own properties in its results
 * (bench/results/soak.json format). Then the regression tests for the
 * failure modes the soak found: replayed handshakes cost a key exchange each;
 * idle and wrong-key connections cost a key generation each, and wrong keys
 * the whole psk prefix; a reset connection surfaced as a raw OS error; and an
 * upstream reset mid-stream crashed the client with an unhandled rejection.
 * @module
 */

import assert from "node:assert/strict";
import { PROLOGUE, SecureChannel } from "../lib/protocol/channel.ts";
import { ReplayGuard } from "../lib/protocol/replay.ts";
import { forward } from "../lib/tunnel/client.ts";
import { closeQuietly, type Connection, readableOf } from "../lib/protocol/conn.ts";
import { AuthenticationError, ErrorCode, TruncationError } from "../lib/base/errors.ts";
import { NNpsk0Handshake } from "../lib/protocol/noise.ts";
import { Logger } from "../lib/base/log.ts";
import { TunnelServer } from "../lib/tunnel/server.ts";
import { Session } from "../lib/tunnel/session.ts";
import { SERVICE_TARGET } from "../lib/protocol/target.ts";
import { memoryPair } from "../scripts/soak/memory.ts";
import type { Row } from "../scripts/soak/common.ts";
import { randomBytes, readToEnd, rejectsWith } from "./helpers.ts";
import { runArgv } from "./process.ts";

const SOAK = new URL("../scripts/soak.ts", import.meta.url).pathname;
const LOCAL = "127.0.0.1";

interface SoakResult {
  code: number;
  output: string;
  passed: boolean;
  seconds: number;
  rows: Row[];
}

let quickRun: Promise<SoakResult> | null = null;

/** Runs `soak.ts --quick` once for this file; every test reads the same results. */
function quickSoak(): Promise<SoakResult> {
  quickRun ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "cipherlink-soak-test-" });
    try {
      // A bound against a hang only: the quick soak takes about a minute.
      const { code, stdout, stderr } = await runArgv([
        Deno.execPath(),
        "run",
        "--allow-all",
        SOAK,
        "--quick",
        "--json",
        `${dir}/soak.json`,
        "--logs",
        `${dir}/logs`,
      ], { ms: 600_000 });
      const output = stdout + stderr;
      const json = JSON.parse(await Deno.readTextFile(`${dir}/soak.json`));
      return { code, output, passed: json.passed, seconds: json.seconds, rows: json.rows };
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  })();
  return quickRun;
}

function rowsOf(result: SoakResult, suite: string): Row[] {
  const rows = result.rows.filter((r) => r.suite === suite);
  assert.ok(rows.length > 0, `no ${suite} rows`);
  return rows;
}

function row(result: SoakResult, suite: string, tried: RegExp): Row {
  const found = rowsOf(result, suite).find((r) => tried.test(r.tried));
  assert.ok(found, `no ${suite} row matching ${tried}`);
  return found;
}

function assertPassed(rows: Row[]): void {
  for (const r of rows) {
    if (r.skipped) {
      // A part that could not run says so in the test output instead of passing silently.
      console.warn(`SKIPPED ${r.suite}: ${r.tried}: ${r.skipped}`);
      continue;
    }
    assert.equal(r.failed, 0, `${r.suite}: ${r.tried}: ${r.failures.join("; ")}`);
  }
}

Deno.test("soak --quick: all six suites run against real processes and pass within about a minute", async () => {
  const result = await quickSoak();
  assert.equal(result.code, 0, result.output.slice(-4000));
  assert.equal(result.passed, true);
  for (const suite of ["fuzz", "hostile", "load", "faults", "keys", "crypto"]) {
    rowsOf(result, suite);
  }
  assertPassed(result.rows);
  assert.ok(result.seconds < 90, `the quick soak took ${result.seconds} s`);
  assert.match(
    result.output,
    /\| Suite \| What was tried \| How many \| What failed \| Figures \|/,
  );
});

Deno.test("soak --quick fuzzing: 20,000 seeded inputs pass their models; hostile TCP input never reaches upstream and ends within the handshake timeout", async () => {
  const result = await quickSoak();
  const fuzz = rowsOf(result, "fuzz");
  assertPassed(fuzz);
  assert.ok(row(result, "fuzz", /^all fuzzing/).count >= 20_000);
  for (
    const area of [
      /^header codec/,
      /^framer: random/,
      /^framer: header/,
      /^handshake/,
      /^sessions: 1 byte/,
      /^sessions: split/,
      /^transport state machine/,
    ]
  ) {
    assert.ok(row(result, "fuzz", area).count > 0, `${area} ran nothing`);
  }
  const tcp = row(result, "fuzz", /^TCP/).data;
  assert.equal(tcp.upstream_connections, 0);
  assert.ok((tcp.worst_close_ms as number) <= (tcp.handshake_timeout_ms as number) + 1500);
  assert.ok((tcp.worst_bad_header_close_ms as number) < (tcp.handshake_timeout_ms as number) / 2);
  assert.ok((tcp.legit_ok as number) > 0);
  assert.equal(tcp.legit_failed, 0);
});

Deno.test("soak --quick hostile clients: slowloris, idle, replay and wrong-key floods add under 100 ms for the legitimate client, and replays reach nothing", async () => {
  const result = await quickSoak();
  const hostile = rowsOf(result, "hostile");
  assertPassed(hostile);
  for (const attack of [/^slowloris/, /^idle/, /^replay/, /^wrong-key/]) {
    const { data } = row(result, "hostile", attack);
    assert.ok((data.legit_requests as number) > 0, `${attack}: no legitimate request`);
    assert.ok(
      (data.handshake_extra_ms as number) <= 100,
      `${attack}: handshake +${data.handshake_extra_ms} ms`,
    );
    assert.ok(
      (data.round_trip_extra_ms as number) <= 100,
      `${attack}: round trip +${data.round_trip_extra_ms} ms`,
    );
  }
  assert.equal(row(result, "hostile", /^replay/).data.upstream_connections, 0);
  assert.ok((row(result, "hostile", /^slowloris/).data.cut_by_server as number) > 0);
});

Deno.test("soak --quick issue 9 attacks: hostile spellings reach nothing, 2,000 pre-auth sockets lock no key holder out, a PING flood's memory stays bounded", async () => {
  const result = await quickSoak();
  const spellings = row(result, "hostile", /^hostile spellings/);
  assertPassed([spellings]);
  assert.equal(spellings.data.target_connections, spellings.data.admitted);
  assert.ok((spellings.data.refused as number) >= 100);
  const flood = row(result, "hostile", /^pre-auth flood/);
  assertPassed([flood]);
  assert.ok((flood.data.attacker_peak_open as number) >= 2000);
  assert.ok((flood.data.legit_handshakes as number) > 0);
  assert.ok((flood.data.legit_handshake_max_ms as number) <= 1000);
  const pings = row(result, "hostile", /^PING flood/);
  assertPassed([pings]);
  assert.ok((pings.data.rss_growth_bytes as number) <= (pings.data.rss_bound_bytes as number));
  assert.equal(pings.data.answered, pings.data.pings);
});

Deno.test("soak --quick load: 200 sessions, 100 open at once, arrive intact end to end and idle server memory does not grow", async () => {
  const result = await quickSoak();
  const load = rowsOf(result, "load");
  assertPassed(load);
  const { data } = load[0];
  assert.equal(data.sessions_ok, 200);
  assert.equal(data.far_end_ok, 200);
  assert.equal(data.lost, 0);
  assert.equal(data.changed, 0);
  assert.ok((data.peak_open as number) >= 100);
  assert.ok((data.server_rss_after as number) <= (data.server_rss_peak as number));
});

Deno.test("soak --quick faults: server killed, upstream refusing or resetting, SIGTERM drain, lossy network and black hole all end cleanly", async () => {
  const result = await quickSoak();
  const faults = rowsOf(result, "faults");
  assertPassed(faults);
  const killed = row(result, "faults", /^server killed/).data;
  assert.equal(killed.pipe_exit_code, 1);
  assert.match(killed.pipe_error as string, /^cipherlink: error: stream truncated/);
  const drained = row(result, "faults", /^SIGTERM/).data;
  assert.equal(drained.intact, 5);
  assert.equal(drained.exit_code, 0);
  const lossy = faults.find((r) => /loss/.test(r.tried))!;
  if (!lossy.skipped) {
    const hole = row(result, "faults", /^black-holed/).data;
    const interval = (hole.keepalive_s as number) * 1000;
    // One silent interval, then three unanswered PINGs; a tick of slack.
    assert.ok((hole.server_detect_ms as number) <= 4.5 * interval + 1000);
    assert.ok((hole.client_detect_ms as number) <= 4.5 * interval + 1000);
  }
});

Deno.test("soak --quick key hygiene: readable key files are warned about, and no key appears in any output of any suite", async () => {
  const result = await quickSoak();
  const keys = rowsOf(result, "keys");
  assertPassed(keys);
  const grep = row(result, "keys", /grepped/).data;
  assert.ok((grep.sources as number) >= 20, `only ${grep.sources} outputs were grepped`);
  assert.ok((grep.keys as number) >= 10);
});

// ---------------------------------------------------------------- regression tests

/** A connection that keeps a copy of everything written to it. */
function recording(conn: Deno.TcpConn, written: Uint8Array[]): Connection {
  return {
    read: (into) => conn.read(into),
    write: (bytes) => {
      written.push(bytes.slice());
      return conn.write(bytes);
    },
    closeWrite: () => conn.closeWrite(),
    close: () => conn.close(),
  };
}

/** Reads until the peer closes; resolves the byte count and how long it took. */
async function untilClosed(conn: Deno.TcpConn): Promise<{ bytes: number; ms: number }> {
  const started = performance.now();
  const bytes = (await readToEnd(conn, { resetEnds: true })).byteLength;
  return { bytes, ms: performance.now() - started };
}

async function echoServer(lines: string[], handshakeTimeoutMs = 3000): Promise<TunnelServer> {
  return await TunnelServer.start({
    listen: { host: LOCAL, port: 0 },
    key: KEY,
    handshakeTimeoutMs,
    logger: new Logger("debug", "text", (line) => lines.push(line)),
  });
}

const KEY = randomBytes(32);

Deno.test("regression: a replayed message 1 is refused at once, with no answer and no key exchange, and the server keeps serving", async () => {
  const lines: string[] = [];
  const server = await echoServer(lines);
  const address = { host: LOCAL, port: server.addr.port };
  try {
    // A real session, its client bytes recorded.
    const written: Uint8Array[] = [];
    const tcp = await Deno.connect({ hostname: LOCAL, port: address.port });
    const session = Session.open(
      await SecureChannel.handshake(recording(tcp, written), KEY, "initiator"),
      SERVICE_TARGET,
    );
    const message1 = written[0];
    await session.writable.close();
    for await (const _ of session.readable) { /* the server's CLOSE ends it */ }
    assert.equal((await session.ended).error, null);

    // Its message 1 again, as a recorder would send it.
    const replay = await Deno.connect({ hostname: LOCAL, port: address.port });
    await replay.write(message1);
    const answer = await untilClosed(replay);
    replay.close();
    assert.equal(answer.bytes, 0, "no message 2 for a replay");
    assert.ok(answer.ms < 1000, `dropped after ${answer.ms} ms, not at the handshake timeout`);
    assert.ok(lines.some((l) => /message 1 was replayed/.test(l)), lines.join("\n"));

    const payload = randomBytes(1000);
    assert.deepEqual(await forward(payload, { server: address, key: KEY }), payload);
  } finally {
    await server.shutdown();
  }
});

Deno.test("regression: ReplayGuard forgets the oldest ephemeral key beyond its capacity", () => {
  const guard = new ReplayGuard(2);
  const [a, b, c] = [1, 2, 3].map((n) => new Uint8Array(32).fill(n));
  guard.add(a);
  guard.add(b);
  assert.ok(guard.has(a) && guard.has(b));
  guard.add(c);
  assert.ok(!guard.has(a) && guard.has(b) && guard.has(c));
});

Deno.test("regression: idle, dripping and wrong-key connections cost the server no key generation", async () => {
  // A wrong-key message 1, made before counting starts.
  const wrong: Uint8Array[] = [];
  const capture: Connection = {
    read: () => Promise.resolve(null),
    write: (bytes) => (wrong.push(bytes.slice()), Promise.resolve(bytes.byteLength)),
    closeWrite: () => Promise.resolve(),
    close: () => {},
  };
  await assert.rejects(
    SecureChannel.handshake(capture, randomBytes(32), "initiator"),
    AuthenticationError,
  );
  const lines: string[] = [];
  const server = await echoServer(lines, 300);
  const subtle = crypto.subtle;
  const original = subtle.generateKey;
  let generated = 0;
  subtle.generateKey = ((...args: Parameters<SubtleCrypto["generateKey"]>) => {
    generated++;
    return original.apply(subtle, args);
  }) as SubtleCrypto["generateKey"];
  try {
    const hostile = await Promise.all(
      [null, Uint8Array.of(2, 0, 0, 0, 0, 0, 0, 0, 48), wrong[0]].flatMap((first) =>
        Array.from({ length: 10 }, async () => {
          const conn = await Deno.connect({ hostname: LOCAL, port: server.addr.port });
          if (first) await conn.write(first);
          const end = await untilClosed(conn);
          closeQuietly(conn);
          return end.bytes;
        })
      ),
    );
    assert.deepEqual(hostile, new Array(30).fill(0), "the server answered none of them");
    assert.equal(generated, 0, "key pairs generated for connections that never authenticated");

    const payload = randomBytes(100);
    assert.deepEqual(
      await forward(payload, { server: { host: LOCAL, port: server.addr.port }, key: KEY }),
      payload,
    );
    assert.equal(generated, 2, "one key pair for the client, one for the server");
  } finally {
    subtle.generateKey = original;
    await server.shutdown();
  }
});

Deno.test("regression: sending on a connection the peer reset fails as a truncated stream, not a raw OS error", async () => {
  const [clientEnd, serverEnd] = memoryPair();
  const [client, server] = await Promise.all([
    SecureChannel.handshake(clientEnd, KEY, "initiator"),
    SecureChannel.handshake(serverEnd, KEY, "responder"),
  ]);
  server.close();
  await rejectsWith(
    client.send(3, Uint8Array.of(1, 2, 3)),
    TruncationError,
    /^stream truncated: the connection failed before the peer's CLOSE/,
  );
  client.close();
});

Deno.test("regression: local data read after the session ended is dropped, not an uncaught rejection that kills the client", async () => {
  const escaped: unknown[] = [];
  const onRejection = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    escaped.push(event.reason);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  const [clientEnd, serverEnd] = memoryPair();
  const [local, application] = memoryPair();
  try {
    const [client, server] = await Promise.all([
      SecureChannel.handshake(clientEnd, KEY, "initiator"),
      SecureChannel.handshake(serverEnd, KEY, "responder"),
    ]);
    const session = Session.open(client, SERVICE_TARGET);
    // The upstream reset: the session ends while the application still sends.
    session.abort(ErrorCode.internal, "the upstream reset the connection");
    await application.write(randomBytes(100_000));
    await application.closeWrite();
    await session.pumpFrom(readableOf(local)).catch(() => {});
    assert.notEqual((await session.ended).error, null);
    // Rejection tracking runs after the microtasks: give it its turn.
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.deepEqual(escaped.map(String), []);
    server.close();
  } finally {
    globalThis.removeEventListener("unhandledrejection", onRejection);
  }
});

Deno.test("regression: a wrong-key message 1 costs the responder at most 6 Web Crypto calls, and the psk prefix follows the key's bytes", async () => {
  const wrong = await NNpsk0Handshake.create("initiator", randomBytes(32), PROLOGUE);
  const message1 = await wrong.writeMessage1();
  const key = randomBytes(32);
  await NNpsk0Handshake.create("responder", key, PROLOGUE); // the per-key part, done once
  const subtle = crypto.subtle as unknown as Record<string, (...args: unknown[]) => unknown>;
  const methods = [
    "digest",
    "importKey",
    "deriveBits",
    "sign",
    "encrypt",
    "decrypt",
    "generateKey",
  ];
  const originals = methods.map((m) => subtle[m]);
  let calls = 0;
  methods.forEach((m, i) => {
    subtle[m] = (...args: unknown[]) => {
      calls++;
      return originals[i].apply(crypto.subtle, args);
    };
  });
  try {
    const responder = await NNpsk0Handshake.create("responder", key, PROLOGUE);
    await assert.rejects(async () => await responder.readMessage1(message1), AuthenticationError);
  } finally {
    methods.forEach((m, i) => (subtle[m] = originals[i]));
  }
  assert.ok(calls <= 6, `${calls} Web Crypto calls for one wrong-key message 1`);

  // The same array holding another key gets that key's prefix, not a stale one.
  const initiator = await NNpsk0Handshake.create("initiator", key, PROLOGUE);
  const good = await initiator.writeMessage1();
  key.set(randomBytes(32));
  const changed = await NNpsk0Handshake.create("responder", key, PROLOGUE);
  await assert.rejects(async () => await changed.readMessage1(good), AuthenticationError);
});
