/**
 * Suite 3: many sessions through a port-forward tunnel (client --listen, server
 * --forward), in waves that hold over a thousand open at once. Each carries a
 * random payload framed as `length u32 | payload | SHA-256(payload)`: the far
 * end checks the hash, and echoes every byte back for the sender to check too.
 * Server memory is sampled before, throughout, and after.
 * @module
 */

import { createHash } from "node:crypto";
import { closeQuietly } from "../../lib/protocol/conn.ts";
import {
  type LogBook,
  MiB,
  mib,
  pause,
  randomBytes,
  type Row,
  RowBuilder,
  within,
} from "./common.ts";
import { connectLoopback, CountingTarget, LOOPBACK, writeAll } from "./net.ts";
import { type Proc, spawnClient, spawnServer, tempKey } from "./proc.ts";
import { equalBytes } from "../../lib/base/bytes.ts";

export interface LoadOptions {
  sessions: number;
  /** Sessions opened together and held until all of them are established. */
  wave: number;
  maxPayload: number;
  /** How long after the last session memory gets to come back down. */
  settleMs: number;
  /**
   * Whether the server must give back a quarter of its growth within
   * settleMs. V8 and malloc return memory on their own schedule (V8's memory
   * reducer, glibc's arenas), so only the full soak's five idle minutes can
   * demand it; the quick variant demands that idle memory does not grow.
   */
  requireGiveBack: boolean;
}

/** The far end: checks each stream's own SHA-256 and echoes everything back. */
function checkingTarget(verdicts: { ok: number; bad: number }): CountingTarget {
  return new CountingTarget(async (conn) => {
    const buffer = new Uint8Array(65536);
    const hash = createHash("sha256");
    const head = new Uint8Array(4);
    const tail = new Uint8Array(32);
    let length = -1;
    let received = 0;
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      const chunk = buffer.subarray(0, n);
      for (let i = 0; i < n; i++) {
        // Byte by byte only at the edges; the payload is hashed in runs.
        if (received < 4) {
          head[received++] = chunk[i];
          if (received === 4) length = new DataView(head.buffer).getUint32(0);
          continue;
        }
        const payloadLeft = 4 + length - received;
        if (payloadLeft > 0) {
          const run = Math.min(payloadLeft, n - i);
          hash.update(chunk.subarray(i, i + run));
          received += run;
          i += run - 1;
          continue;
        }
        const at = received - 4 - length;
        if (at < 32) tail[at] = chunk[i];
        received++;
      }
      await writeAll(conn, chunk);
    }
    await conn.closeWrite();
    const expected = new Uint8Array(hash.digest());
    const whole = received === 4 + length + 32;
    if (whole && equalBytes(expected, tail)) verdicts.ok++;
    else verdicts.bad++;
  });
}

/** How far above its sampled peak an idle server's memory may be measured without having grown. */
const SAMPLING_MARGIN = 8 * MiB;

/** Samples a process's resident memory until stopped. */
function sampleRss(proc: Proc): { stop(): Promise<number> } {
  let peak = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      peak = Math.max(peak, await proc.rss());
      await pause(250); // sampling period
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return peak;
    },
  };
}

/** A load run whose sessions are done; its server idles until `settle`. */
export interface LoadRun {
  /** Waits (bounded) for server memory to come back down, stops everything, and resolves the row. */
  settle(): Promise<Row>;
}

/** Runs the load suite's sessions; the memory verdict comes from `settle()`. */
export async function load(book: LogBook, options: LoadOptions): Promise<LoadRun> {
  const row = new RowBuilder(
    "load",
    `${options.sessions} sessions through a port forward, ${options.wave} held open at once, random payloads ≤ ${
      options.maxPayload / 1024
    } KiB, SHA-256 checked at both ends`,
  );
  const key = await tempKey(book);
  const verdicts = { ok: 0, bad: 0 };
  const target = checkingTarget(verdicts);
  let server: Proc | null = null;
  let client: Proc | null = null;
  const cleanup = async () => {
    await client?.stop();
    await server?.stop();
    await target.close();
    await key.cleanup();
  };
  const started = performance.now();
  try {
    const maxConns = String(options.wave * 2 + 100);
    server = await spawnServer(book, "load server", key.path, [
      "--forward",
      `${LOOPBACK}:${target.port}`,
      "--max-conns",
      maxConns,
    ], { ready: true });
    client = await spawnClient(book, "load client", `${LOOPBACK}:${server.port}`, key.path, [
      "--listen",
      `${LOOPBACK}:0`,
      "--max-conns",
      maxConns,
    ], { ready: true });
    const rssBefore = await server.rss();
    const sampler = sampleRss(server);
    const localPort = client.port;
    const outcome = { ok: 0, lost: 0, changed: 0, failed: 0 };
    let bytes = 0;
    let peakEstablished = 0;
    /** Server memory at the end of each wave: a leak would ratchet it up. */
    const afterWave: number[] = [];

    /** One session; resolves once established, then finishes after `go`. */
    const session = async (size: number, go: Promise<void>, established: () => void) => {
      const payload = randomBytes(size);
      const stream = new Uint8Array(4 + size + 32);
      new DataView(stream.buffer).setUint32(0, size);
      stream.set(payload, 4);
      stream.set(new Uint8Array(createHash("sha256").update(payload).digest()), 4 + size);
      const sentHash = createHash("sha256").update(stream).digest("hex");
      let conn: Deno.TcpConn | null = null;
      let announced = false;
      try {
        conn = await connectLoopback(localPort);
        const open = conn;
        // Four bytes out and back: the session is up end to end.
        await writeAll(open, stream.subarray(0, 4));
        const first = new Uint8Array(4);
        let got = 0;
        while (got < 4) {
          const n = await open.read(first.subarray(got));
          if (n === null) throw new Error("closed before the first echo");
          got += n;
        }
        announced = true;
        established();
        await go;
        const echoed = createHash("sha256").update(first);
        const reading = (async () => {
          const buffer = new Uint8Array(65536);
          let total = 4;
          for (;;) {
            const n = await open.read(buffer);
            if (n === null) return total;
            echoed.update(buffer.subarray(0, n));
            total += n;
          }
        })();
        await writeAll(open, stream.subarray(4));
        await open.closeWrite();
        const total = await within(reading, 120_000, "an echo");
        bytes += total;
        if (total !== stream.byteLength) outcome.lost++;
        else if (echoed.digest("hex") !== sentHash) outcome.changed++;
        else outcome.ok++;
      } catch (err) {
        outcome.failed++;
        row.fail(`session of ${size} B: ${(err as Error).message}`);
        if (!announced) established();
      } finally {
        if (conn) closeQuietly(conn);
      }
    };

    const sizes = (() => {
      const out: number[] = [];
      for (let i = 0; i < options.sessions; i++) {
        // Mostly small, some up to the maximum: a long tail like real traffic.
        const r = Math.random();
        out.push(Math.max(1, Math.floor(r * r * r * options.maxPayload)));
      }
      return out;
    })();
    for (let from = 0; from < sizes.length; from += options.wave) {
      const wave = sizes.slice(from, from + options.wave);
      let release!: () => void;
      const go = new Promise<void>((resolve) => (release = resolve));
      let up = 0;
      let allUp!: () => void;
      const everyoneUp = new Promise<void>((resolve) => (allUp = resolve));
      const established = () => {
        up++;
        if (up === wave.length) allUp();
      };
      const running = Promise.all(wave.map(async (size, i) => {
        // Connect at 1000 a second (batches of 100): a burst of a whole wave
        // at once measures handshake queueing, not the tunnel.
        await pause(Math.floor(i / 100) * 100);
        await session(size, go, established);
      }));
      await within(everyoneUp, 180_000, "a wave to be established").catch((err) =>
        row.fail(err.message)
      );
      peakEstablished = Math.max(peakEstablished, target.open);
      release();
      await running;
      row.tried(wave.length);
      afterWave.push(await server.rss());
    }
    const seconds = (performance.now() - started) / 1000;
    const rssPeak = await sampler.stop();
    const loadEnded = performance.now();
    row.check(outcome.lost === 0, `${outcome.lost} sessions lost bytes`);
    row.check(outcome.changed === 0, `${outcome.changed} sessions had changed or reordered bytes`);
    row.check(verdicts.bad === 0, `${verdicts.bad} payloads failed their SHA-256 at the far end`);
    row.check(
      verdicts.ok === options.sessions,
      `${verdicts.ok} of ${options.sessions} payloads checked at the far end`,
    );
    row.check(
      peakEstablished >= Math.min(options.wave, options.sessions),
      `only ${peakEstablished} sessions were open at once`,
    );
    // A leak grows memory wave after wave; reuse levels off after the first
    // waves warm the heap up. So: the later half of the waves may not end
    // much above the earlier half (with at least four waves to compare).
    const half = Math.ceil(afterWave.length / 2);
    const earlier = Math.max(0, ...afterWave.slice(0, half));
    const later = Math.max(0, ...afterWave.slice(half));
    const leakChecked = afterWave.length >= 4;
    if (leakChecked) {
      row.check(
        later <= earlier * 1.1 + 8 * MiB,
        `server memory kept growing from wave to wave: ${afterWave.map(mib).join(", ")}`,
      );
    }
    const firstWave = afterWave[0] ?? 0;
    const lastWave = afterWave[afterWave.length - 1] ?? 0;
    row.set("sessions_ok", outcome.ok);
    row.set("lost", outcome.lost);
    row.set("changed", outcome.changed);
    row.set("far_end_ok", verdicts.ok);
    row.set("peak_open", peakEstablished);
    row.set("bytes_each_way", bytes);
    row.set("seconds", Math.round(seconds));
    row.set("server_rss_before", rssBefore);
    row.set("server_rss_peak", rssPeak);
    row.set("server_rss_first_wave", firstWave);
    row.set("server_rss_last_wave", lastWave);
    const idleServer = server;
    return {
      async settle() {
        // Memory must come back down once the sessions are gone. V8 collects
        // an idle heap lazily (its memory reducer starts tens of seconds into
        // the quiet) and malloc keeps part of what is freed for reuse, so
        // the server sits idle while other suites run, and then gets a
        // bounded while more to give back at least a quarter of its growth.
        let rssAfter = await idleServer.rss();
        const backDown = () => rssAfter <= rssBefore + (rssPeak - rssBefore) * 0.75;
        while (!backDown() && performance.now() < loadEnded + options.settleMs) {
          await pause(500); // sampling period
          rssAfter = await idleServer.rss();
        }
        const idleSeconds = Math.round((performance.now() - loadEnded) / 1000);
        // The peak is sampled every 250 ms, so the true one can be missed,
        // and a collection while idle maps fresh pages before it frees old
        // ones (seen: 3 MiB above the sampled peak on a loaded machine). A
        // leak while idle grows past that margin; the waves check the rest.
        row.check(
          rssAfter <= rssPeak + SAMPLING_MARGIN,
          `server memory grew while idle: ${mib(rssAfter)} after, ${mib(rssPeak)} at peak`,
        );
        if (options.requireGiveBack) {
          row.check(
            backDown(),
            `server memory stayed up: ${mib(rssAfter)} after, ${mib(rssPeak)} at peak`,
          );
        }
        row.set("server_rss_after", rssAfter);
        row.set("server_idle_seconds", idleSeconds);
        row.figures(
          `${outcome.ok} intact (lost ${outcome.lost}, changed ${outcome.changed}); ` +
            `${peakEstablished} open at once; ${mib(bytes)} each way in ${
              Math.round(seconds)
            } s; ` +
            `server RSS ${mib(rssBefore)} → peak ${mib(rssPeak)} → ${
              mib(rssAfter)
            } after ${idleSeconds} s idle ` +
            `(end of each wave ${
              leakChecked
                ? `${mib(earlier)} max in the first half, ${mib(later)} in the second`
                : `${mib(firstWave)} to ${mib(lastWave)}`
            })`,
        );
        await cleanup();
        return row.done();
      },
    };
  } catch (err) {
    row.fail(`load stopped: ${(err as Error).message}`);
    await cleanup();
    return { settle: () => Promise.resolve(row.done()) };
  }
}
