/**
 * Suite 1 over real TCP: thousands of hostile first bytes against a server
 * process, while a legitimate client keeps using it. The server must answer
 * none of them past message 2, end each within the handshake timeout (those
 * whose header is bad at once), never connect upstream, and keep serving.
 * @module
 */

import { concat, equalBytes } from "../../lib/base/bytes.ts";
import { forward } from "../../lib/tunnel/client.ts";
import { SERVICE_TARGET } from "../../lib/protocol/target.ts";
import {
  bump,
  histogramText,
  type LogBook,
  ms,
  pause,
  pool,
  Rng,
  type Row,
  RowBuilder,
  within,
} from "./common.ts";
import { mutateAt, MUTATION_KINDS } from "./memory.ts";
import {
  connectLoopback,
  drain,
  echoTarget,
  LOOPBACK,
  Proxy,
  recorder,
  sentinel,
  writeAll,
} from "./net.ts";
import { spawnServer, tempKey } from "./proc.ts";
import { rawHeader } from "../../support/wire.ts";

/** One hostile connection. */
interface Input {
  kind: string;
  bytes: Uint8Array;
  /** The server must not send a single byte back. */
  silent: boolean;
  /** The header alone condemns it: the server must close well before the timeout. */
  quick: boolean;
}

/** The deterministic list of hostile inputs for `count` and `seed`. */
function inputs(count: number, seed: number, recorded: Uint8Array): Input[] {
  const rng = new Rng(seed);
  const message1 = recorded.subarray(0, 57);
  const list: Input[] = [];
  // Message 1 broken at every byte: silence (a server that cannot decrypt it says nothing).
  for (let at = 0; at < 57; at++) {
    for (const kind of MUTATION_KINDS) {
      const transform = mutateAt(kind, at, rng.int(1, 255));
      const bytes = concat(transform(message1.slice()));
      // Its last byte duplicated (or a copy of it inserted) leaves message 1
      // whole, with one byte after it: a replay.
      const intact = (kind === "duplicate" || transform.insertedCopy === true) && at === 56;
      list.push({ kind: `message 1 ${kind}`, bytes, silent: !intact, quick: false });
    }
  }
  // The whole recorded session with OPEN broken at every byte (and as is): a replay at best.
  for (let at = 57; at < 96; at++) {
    for (const kind of MUTATION_KINDS) {
      const bytes = concat(mutateAt(kind, at, rng.int(1, 255))(recorded.slice()));
      list.push({ kind: `OPEN ${kind}`, bytes, silent: false, quick: false });
    }
  }
  const makers: (() => Input)[] = [
    () => ({ kind: "replay", bytes: recorded, silent: false, quick: false }),
    () => ({
      kind: "random bytes",
      bytes: rng.bytes(rng.int(0, 300)),
      silent: true,
      quick: false,
    }),
    () => ({
      kind: "random message 1",
      bytes: concat([rawHeader(2, 0, 48), rng.bytes(48)]),
      silent: true,
      quick: true,
    }),
    () => ({
      kind: "huge data_size",
      bytes: rawHeader(2, rng.int(0, 1) * 12, rng.int(65536, 0xffffffff)),
      silent: true,
      quick: true,
    }),
    () => ({
      kind: "wrong nonce_size",
      bytes: rawHeader(2, [12, 1, 0xffffffff, rng.int(1, 0xffffffff)][rng.int(0, 3)], 48),
      silent: true,
      quick: true,
    }),
    () => ({
      kind: "bad version",
      bytes: concat([rawHeader([0, 1, 3, 255][rng.int(0, 3)], 0, 48), rng.bytes(48)]),
      silent: true,
      quick: true,
    }),
    () => ({
      kind: "message 1 cut short",
      bytes: message1.subarray(0, rng.int(1, 56)),
      silent: true,
      quick: false,
    }),
  ];
  while (list.length < count) list.push(makers[rng.int(0, makers.length - 1)]());
  return list.slice(0, Math.max(count, 0));
}

export interface TcpFuzzOptions {
  inputs: number;
  seed: number;
  /** The server's --handshake-timeout, in seconds. */
  handshakeTimeout: number;
}

/** Runs the TCP fuzz against a fresh server process. */
export async function fuzzOverTcp(book: LogBook, options: TcpFuzzOptions): Promise<Row> {
  const row = new RowBuilder(
    "fuzz",
    "TCP: hostile first bytes (mutated/replayed/random/extreme/truncated) against a server process",
  );
  const key = await tempKey(book);
  const nobody = sentinel();
  const echo = echoTarget();
  const timeoutMs = options.handshakeTimeout * 1000;
  const server = await spawnServer(book, "fuzz-tcp server", key.path, [
    "--forward",
    `${LOOPBACK}:${nobody.port}`,
    "--allow",
    `${LOOPBACK}:${echo.port}`,
    "--handshake-timeout",
    String(options.handshakeTimeout),
    "--max-conns",
    "2000",
    "--log-level",
    "debug",
  ], { ready: true });
  const serverAddress = { host: LOOPBACK, port: server.port };
  const legit = { ok: 0, failed: 0 };
  const legitRoundTrip = async (): Promise<void> => {
    const payload = crypto.getRandomValues(new Uint8Array(512));
    try {
      const reply = await within(
        forward(payload, {
          server: serverAddress,
          key: key.key,
          target: { host: LOOPBACK, port: echo.port },
        }),
        10_000,
        "a legitimate round trip",
      );
      if (equalBytes(reply, payload)) legit.ok++;
      else throw new Error("the echo differs");
    } catch (err) {
      legit.failed++;
      row.fail(`legitimate round trip failed: ${(err as Error).message}`);
    }
  };
  try {
    // A real session, recorded on the wire: its message 1 is what replays reuse.
    const chunks: Uint8Array[] = [];
    const tap = new Proxy(server.port);
    tap.next = recorder(chunks);
    await forward(new TextEncoder().encode("recorded session"), {
      server: { host: LOOPBACK, port: tap.port },
      key: key.key,
      target: SERVICE_TARGET,
    });
    await tap.close();
    const recorded = concat(chunks);
    const upstreamBefore = nobody.connections; // the recorded session itself: 1
    const rssBefore = await server.rss();

    const list = inputs(options.inputs, options.seed, recorded);
    const kinds: Record<string, number> = {};
    let worstMs = 0;
    let worstQuickMs = 0;
    let running = true;
    const checker = (async () => {
      while (running) {
        await legitRoundTrip();
        await pause(200);
      }
    })();
    await pool(list.length, 64, async (i) => {
      const input = list[i];
      bump(kinds, input.kind);
      row.tried();
      let conn: Deno.TcpConn;
      try {
        conn = await connectLoopback(server.port);
      } catch (err) {
        row.fail(`${input.kind}: cannot connect: ${(err as Error).message}`);
        return;
      }
      const sent = input.bytes.byteLength ? writeAll(conn, input.bytes).catch(() => {}) : null;
      const result = await drain(conn, timeoutMs + 3000);
      await sent;
      conn.close();
      worstMs = Math.max(worstMs, result.ms);
      if (input.quick) worstQuickMs = Math.max(worstQuickMs, result.ms);
      row.check(result.end !== "bound", `${input.kind}: still open after ${ms(result.ms)}`);
      row.check(
        result.ms <= timeoutMs + 1500,
        `${input.kind}: ended after ${ms(result.ms)} (timeout ${timeoutMs} ms)`,
      );
      if (input.quick) {
        row.check(result.ms < timeoutMs / 2, `${input.kind}: a bad header took ${ms(result.ms)}`);
      }
      if (input.silent) {
        row.check(result.bytes === 0, `${input.kind}: the server answered ${result.bytes} bytes`);
      } else {
        // At most message 2 (one 57-byte frame) to a replay: never a transport frame.
        row.check(result.bytes <= 57, `${input.kind}: the server sent ${result.bytes} bytes`);
      }
    });
    running = false;
    await checker;
    await legitRoundTrip();
    const upstream = nobody.connections - upstreamBefore;
    row.check(upstream === 0, `the server connected upstream ${upstream} times for hostile input`);
    const exited = await Promise.race([server.exited, Promise.resolve(null)]);
    row.check(exited === null, "the server process exited");
    const crash = server.lines.find((l) => /uncaught|panicked|RUST_BACKTRACE/i.test(l));
    row.check(!crash, `the server logged a crash: ${crash}`);
    const rssAfter = await server.rss();
    row.set("tcp_inputs", list.length);
    row.set("upstream_connections", upstream);
    row.set("legit_ok", legit.ok);
    row.set("legit_failed", legit.failed);
    row.set("worst_close_ms", Math.round(worstMs));
    row.set("worst_bad_header_close_ms", Math.round(worstQuickMs));
    row.set("handshake_timeout_ms", timeoutMs);
    row.set("server_rss_before", rssBefore);
    row.set("server_rss_after", rssAfter);
    row.figures(
      `upstream connections 0 of ${list.length}; every one closed ≤ ${ms(worstMs)} ` +
        `(timeout ${timeoutMs} ms; bad headers ≤ ${ms(worstQuickMs)}); ` +
        `${legit.ok} legitimate round trips meanwhile, ${legit.failed} failed; ` +
        `server RSS ${(rssBefore / 1048576).toFixed(0)} → ${(rssAfter / 1048576).toFixed(0)} MiB`,
    );
    row.set("kinds", histogramText(kinds));
  } catch (err) {
    row.fail(`TCP fuzz stopped: ${(err as Error).message}`);
  } finally {
    await server.stop();
    await nobody.close();
    await echo.close();
    await key.cleanup();
  }
  return row.done();
}
