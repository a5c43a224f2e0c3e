/**
 * Suite 2: hostile clients against one server while a legitimate client (its
 * own process) keeps doing handshakes and round trips. Slowloris, idle
 * connections, replays of a recorded session, wrong-key floods; the
 * legitimate client's latency during each is set against its latency at rest.
 * @module
 */

import { concat, equalBytes } from "../../lib/base/bytes.ts";
import { SecureChannel } from "../../lib/protocol/channel.ts";
import { forward } from "../../lib/tunnel/client.ts";
import type { Connection } from "../../lib/protocol/conn.ts";
import {
  type Latency,
  latency,
  type LogBook,
  ms,
  pause,
  pool,
  type Row,
  RowBuilder,
} from "./common.ts";
import { connectLoopback, drain, LOOPBACK, Proxy, recorder, sentinel, writeAll } from "./net.ts";
import {
  type ProbeSample,
  probeSamples,
  type Proc,
  spawnServer,
  startProbe,
  tempKey,
} from "./proc.ts";

export interface HostileOptions {
  slowloris: number;
  idle: number;
  replays: number;
  wrongKey: number;
  /** How long the slowloris and idle attacks (and the rest period) last. */
  phaseSeconds: number;
  /** The server's --handshake-timeout, in seconds. */
  handshakeTimeout: number;
  /** The latency goal: no legitimate request waits this much longer than at rest. */
  goalMs: number;
  /**
   * Connections the replay and wrong-key floods keep going at once, each
   * starting its next attempt when the last ends. The server is saturated
   * either way; the legitimate client's wait grows with this number.
   */
  floodConcurrency: number;
}

interface Phase {
  name: string;
  start: number;
  end: number;
}

/** Samples of the probe taken while `phase` ran. */
function samplesIn(probe: Proc, phase: Phase): ProbeSample[] {
  return probeSamples(probe, phase.start, phase.end);
}

/** Connections held open for `seconds`, each reopened when the server closes it. */
async function holdConnections(
  port: number,
  count: number,
  seconds: number,
  drip: Uint8Array | null,
): Promise<{ opened: number; cut: number[]; failedToConnect: number }> {
  const end = Date.now() + seconds * 1000;
  const cut: number[] = [];
  let opened = 0;
  let failedToConnect = 0;
  const slot = async () => {
    while (Date.now() < end) {
      let conn: Deno.TcpConn;
      try {
        conn = await connectLoopback(port);
      } catch {
        failedToConnect++;
        await pause(100);
        continue;
      }
      opened++;
      let timer: ReturnType<typeof setInterval> | undefined;
      if (drip) {
        let at = 0;
        const send = () => {
          conn.write(drip.subarray(at % drip.byteLength, at % drip.byteLength + 1)).catch(() => {});
          at++;
        };
        send();
        timer = setInterval(send, 1000); // one byte per second: the attack's pace
      }
      const result = await drain(conn, Math.max(1, end - Date.now()));
      clearInterval(timer);
      try {
        conn.close();
      } catch {
        // closed by drain's bound
      }
      if (result.end !== "bound") cut.push(result.ms);
    }
  };
  // Open them at 1000 a second (batches of 100): fast, but not a single
  // burst whose every connection times out in the same instant.
  const slots: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    slots.push(slot());
    if (i % 100 === 99) await pause(100);
  }
  await Promise.all(slots);
  return { opened, cut, failedToConnect };
}

function latencyText(label: string, during: Latency, rest: Latency): string {
  return `${label} p50 ${ms(during.p50)}, max ${ms(during.max)} (+${
    ms(during.max - rest.p50)
  } over rest p50)`;
}

/** Runs the attacks one after another against one server; one row each, plus the rest row. */
export async function hostileClients(book: LogBook, options: HostileOptions): Promise<Row[]> {
  const rows: Row[] = [];
  const key = await tempKey(book);
  const nobody = sentinel();
  const timeoutMs = options.handshakeTimeout * 1000;
  let server: Proc | null = null;
  let probe: Proc | null = null;
  try {
    server = await spawnServer(book, "hostile server", key.path, [
      "--allow",
      `${LOOPBACK}:${nobody.port}`,
      "--max-conns",
      "2500",
      "--handshake-timeout",
      String(options.handshakeTimeout),
      // The slow clients here are held for the whole handshake timeout, as
      // they were before message 1 had a deadline of its own; the default
      // 1 s deadline is what the pre-auth flood row (preauth.ts) measures.
      // With it, clients that reconnect at once churn 5 times as fast.
      "--hello-timeout",
      String(options.handshakeTimeout),
      "--log-level",
      "info",
    ], { ready: true });
    const port = server.port;

    // A real session to the sentinel, recorded on the wire for the replays.
    const chunks: Uint8Array[] = [];
    const tap = new Proxy(port);
    tap.next = recorder(chunks);
    await forward(new TextEncoder().encode("recorded"), {
      server: { host: LOOPBACK, port: tap.port },
      key: key.key,
      target: { host: LOOPBACK, port: nobody.port },
    });
    await tap.close();
    const recorded = concat(chunks);
    const upstreamBaseline = nobody.connections;

    probe = await startProbe(book, "hostile probe", port, key.path);
    const running = probe;

    const rest: Phase = { name: "rest", start: Date.now(), end: 0 };
    await pause(options.phaseSeconds * 1000); // the rest period is a measurement window
    rest.end = Date.now();
    const restSamples = samplesIn(running, rest);
    const restHs = latency(restSamples.flatMap((s) => s.handshakeMs ?? []));
    const restRtt = latency(restSamples.flatMap((s) => s.roundTripMs ?? []));
    const restRow = new RowBuilder("hostile", "at rest: the legitimate client alone");
    restRow.tried(restSamples.length);
    for (const s of restSamples.filter((s) => s.error)) restRow.fail(`probe: ${s.error}`);
    restRow.figures(
      `handshake p50 ${ms(restHs.p50)}, p99 ${ms(restHs.p99)}, max ${ms(restHs.max)}; ` +
        `round trip p50 ${ms(restRtt.p50)}, p99 ${ms(restRtt.p99)}, max ${ms(restRtt.max)}`,
    );
    restRow.set("handshake_p50_ms", restHs.p50);
    restRow.set("handshake_max_ms", restHs.max);
    restRow.set("round_trip_p50_ms", restRtt.p50);
    restRow.set("round_trip_max_ms", restRtt.max);
    rows.push(restRow.done());

    /** Runs one attack and builds its row from the probe's samples meanwhile. */
    const attack = async (
      tried: string,
      run: (row: RowBuilder) => Promise<string>,
    ): Promise<void> => {
      const row = new RowBuilder("hostile", tried);
      const phase: Phase = { name: tried, start: Date.now(), end: 0 };
      let detail = "";
      try {
        detail = await run(row);
      } catch (err) {
        row.fail(`attack stopped: ${(err as Error).message}`);
      }
      // An attack the server shrugs off quickly (replays are refused before
      // any crypto) may end before the probe's next request: the phase lasts
      // until one request started in it has finished, within a bound.
      const bound = Date.now() + 5000;
      while (samplesIn(running, { ...phase, end: Date.now() }).length === 0 && Date.now() < bound) {
        await pause(20);
      }
      phase.end = Date.now();
      const samples = samplesIn(running, phase);
      for (const s of samples.filter((s) => s.error)) row.fail(`legitimate client: ${s.error}`);
      const hs = latency(samples.flatMap((s) => s.handshakeMs ?? []));
      const rtt = latency(samples.flatMap((s) => s.roundTripMs ?? []));
      row.check(samples.length > 0, "the legitimate client made no request during the attack");
      const hsExtra = hs.max - restHs.p50;
      const rttExtra = rtt.max - restRtt.p50;
      row.check(
        hsExtra <= options.goalMs,
        `a legitimate handshake took ${ms(hs.max)} (${
          ms(hsExtra)
        } over rest p50; goal ${options.goalMs} ms)`,
      );
      row.check(
        rttExtra <= options.goalMs,
        `a legitimate round trip took ${ms(rtt.max)} (${
          ms(rttExtra)
        } over rest p50; goal ${options.goalMs} ms)`,
      );
      row.set("legit_requests", samples.length);
      row.set("handshake_p50_ms", hs.p50);
      row.set("handshake_max_ms", hs.max);
      row.set("handshake_extra_ms", hsExtra);
      row.set("round_trip_p50_ms", rtt.p50);
      row.set("round_trip_max_ms", rtt.max);
      row.set("round_trip_extra_ms", rttExtra);
      row.set("seconds", (phase.end - phase.start) / 1000);
      row.figures(
        `${detail}; legit (${samples.length}): ${latencyText("handshake", hs, restHs)}; ` +
          latencyText("round trip", rtt, restRtt),
      );
      rows.push(row.done());
    };

    const held = async (row: RowBuilder, count: number, drip: Uint8Array | null) => {
      const result = await holdConnections(port, count, options.phaseSeconds, drip);
      row.tried(result.opened);
      row.check(result.failedToConnect === 0, `${result.failedToConnect} connects failed`);
      const worst = Math.max(0, ...result.cut);
      row.check(
        result.cut.length > 0 || options.phaseSeconds < options.handshakeTimeout,
        "the server cut none of them",
      );
      for (const hold of result.cut.filter((h) => h > timeoutMs + 1500)) {
        row.fail(`the server held an unfinished handshake for ${ms(hold)}`);
      }
      row.set("cut_by_server", result.cut.length);
      row.set("longest_hold_ms", Math.round(worst));
      return `${result.cut.length} cut by the server after ≤ ${
        ms(worst)
      } (timeout ${timeoutMs} ms)`;
    };
    // A message 1 header and then random bytes: the server waits for the rest.
    const drip = concat([
      Uint8Array.of(2, 0, 0, 0, 0, 0, 0, 0, 48),
      crypto.getRandomValues(new Uint8Array(48)),
    ]);
    await attack(
      `slowloris: ${options.slowloris} connections sending 1 byte/s for ${options.phaseSeconds} s`,
      (row) => held(row, options.slowloris, drip),
    );
    await attack(
      `idle: ${options.idle} connections that send nothing, for ${options.phaseSeconds} s`,
      (row) => held(row, options.idle, null),
    );
    await attack(
      `replay: ${options.replays} replays of a recorded real session (message 1, OPEN, DATA, CLOSE), ${options.floodConcurrency} at once`,
      async (row) => {
        let answeredMore = 0;
        let answered = 0;
        let worst = 0;
        await pool(options.replays, options.floodConcurrency, async () => {
          row.tried();
          try {
            const conn = await connectLoopback(port);
            writeAll(conn, recorded).catch(() => {});
            const result = await drain(conn, timeoutMs + 3000);
            conn.close();
            worst = Math.max(worst, result.ms);
            if (result.bytes > 57) answeredMore++;
            if (result.bytes > 0) answered++;
            row.check(result.end !== "bound", "a replay was still open past the timeout");
          } catch (err) {
            row.fail(`replay: ${(err as Error).message}`);
          }
        });
        const upstream = nobody.connections - upstreamBaseline;
        row.check(upstream === 0, `the target saw ${upstream} connections from replays`);
        row.check(answeredMore === 0, `${answeredMore} replays got more than message 2`);
        row.set("upstream_connections", upstream);
        row.set("answered_message_2", answered);
        return `target saw ${upstream} connections; ${answered} got message 2 (replays are refused ` +
          `before any crypto once seen), none more; each ended ≤ ${ms(worst)}`;
      },
    );
    await attack(
      `wrong-key flood: ${options.wrongKey} handshakes with wrong keys, ${options.floodConcurrency} at once`,
      async (row) => {
        const messages = await Promise.all(Array.from({ length: 64 }, () => wrongKeyMessage1()));
        let answered = 0;
        let worst = 0;
        await pool(options.wrongKey, options.floodConcurrency, async (i) => {
          row.tried();
          try {
            const conn = await connectLoopback(port);
            writeAll(conn, messages[i % messages.length]).catch(() => {});
            const result = await drain(conn, timeoutMs + 3000);
            conn.close();
            worst = Math.max(worst, result.ms);
            if (result.bytes > 0) answered++;
          } catch (err) {
            row.fail(`wrong key: ${(err as Error).message}`);
          }
        });
        row.check(answered === 0, `${answered} wrong-key handshakes got an answer`);
        row.set("answered", answered);
        return `none answered; each closed ≤ ${ms(worst)}`;
      },
    );
    const after = new RowBuilder("hostile", "after the attacks: the server still serves");
    after.tried();
    const payload = crypto.getRandomValues(new Uint8Array(1000));
    const reply = await forward(payload, { server: { host: LOOPBACK, port }, key: key.key })
      .catch((err) => new TextEncoder().encode(`${(err as Error).message}`));
    after.check(
      equalBytes(reply, payload),
      "the round trip after the attacks failed",
    );
    const crash = server.lines.find((l) => /uncaught|panicked/i.test(l));
    after.check(!crash, `the server logged a crash: ${crash}`);
    after.figures("echo round trip intact; no crash in the server log");
    rows.push(after.done());
  } catch (err) {
    const row = new RowBuilder("hostile", "setup");
    row.fail((err as Error).message);
    rows.push(row.done());
  } finally {
    await probe?.stop();
    await server?.stop();
    await nobody.close();
    await key.cleanup();
  }
  return rows;
}

/** A handshake frame (message 1) made with a random key the server does not hold. */
async function wrongKeyMessage1(): Promise<Uint8Array> {
  const written: Uint8Array[] = [];
  const capture: Connection = {
    read: () => Promise.resolve(null),
    write: (bytes) => {
      written.push(bytes.slice());
      return Promise.resolve(bytes.byteLength);
    },
    closeWrite: () => Promise.resolve(),
    close: () => {},
  };
  await SecureChannel.handshake(capture, crypto.getRandomValues(new Uint8Array(32)), "initiator")
    .catch(() => {}); // it fails at the (absent) reply, after message 1 was written
  return concat(written);
}
