/**
 * The benchmark's load, all inside the benchmark process: one target server
 * behind every tunnel (the first byte of a connection picks sink or echo),
 * and the four measurements: throughput, round-trip latency, new sessions per
 * second, and a pile of idle sessions held open.
 * @module
 */

import { within } from "../../support/process.ts";

/** First byte of a connection to the target: discard everything after it. */
export const SINK = 0x53; // "S"
/** First byte of a connection to the target: send everything after it back. */
export const ECHO = 0x45; // "E"
/** Size of the latency and session round-trip messages. */
export const MESSAGE_BYTES = 64;
/** Size of the source's writes and the sink's reads. */
export const CHUNK_BYTES = 1 << 20;
const ECHO_BUFFER_BYTES = 16 << 10;

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.byteLength) at += await conn.write(bytes.subarray(at));
}

/** Reads exactly `count` bytes into `buffer`; throws at EOF. */
async function readExact(conn: Deno.Conn, buffer: Uint8Array, count: number): Promise<void> {
  let at = 0;
  while (at < count) {
    const n = await conn.read(buffer.subarray(at, count));
    if (n === null) throw new Error(`the connection ended after ${at} of ${count} bytes`);
    at += n;
  }
}

function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

async function connect(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  return conn;
}

/**
 * The service behind the tunnels: a connection whose first byte is SINK is
 * read and discarded in 1 MiB reads (counted), one whose first byte is ECHO
 * gets everything back.
 */
export class TargetServer {
  readonly port: number;
  /** Bytes discarded by sink connections so far (mode bytes not counted). */
  sunk = 0;
  #listener: Deno.TcpListener;
  #open = new Set<Deno.TcpConn>();
  #accepting: Promise<void>;
  #waiters = new Set<() => void>();

  constructor() {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
    this.port = this.#listener.addr.port;
    this.#accepting = this.#accept();
  }

  /** Connections currently open. */
  get open(): number {
    return this.#open.size;
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // closed
      }
      this.#open.add(conn);
      this.#serve(conn).catch(() => {}).finally(() => {
        closeQuietly(conn);
        this.#open.delete(conn);
        this.#notify();
      });
    }
  }

  async #serve(conn: Deno.TcpConn): Promise<void> {
    conn.setNoDelay(true);
    let buffer = new Uint8Array(ECHO_BUFFER_BYTES);
    const first = await conn.read(buffer);
    if (first === null || first === 0) return;
    if (buffer[0] === SINK) {
      this.#count(first - 1);
      buffer = new Uint8Array(CHUNK_BYTES);
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) return;
        this.#count(n);
      }
    }
    if (first > 1) await writeAll(conn, buffer.subarray(1, first));
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) return;
      await writeAll(conn, buffer.subarray(0, n));
    }
  }

  #count(bytes: number): void {
    this.sunk += bytes;
    this.#notify();
  }

  #notify(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }

  /** Resolves once `test()` holds; re-checked after every read and close. */
  #until(test: () => boolean): Promise<void> {
    if (test()) return Promise.resolve();
    return new Promise((resolve) => {
      const waiter = () => {
        if (!test()) return;
        this.#waiters.delete(waiter);
        resolve();
      };
      this.#waiters.add(waiter);
    });
  }

  /** Resolves once the sink total reaches `bytes`. */
  sunkAtLeast(bytes: number): Promise<void> {
    return this.#until(() => this.sunk >= bytes);
  }

  /** Resolves once every connection to the target has ended. */
  allClosed(): Promise<void> {
    return this.#until(() => this.#open.size === 0);
  }

  async close(): Promise<void> {
    closeQuietly(this.#listener);
    await this.#accepting;
    for (const conn of this.#open) closeQuietly(conn);
    this.#waiters.clear();
  }
}

/** Result of a throughput row. */
export interface Throughput {
  streams: number;
  bytes: number;
  seconds: number;
  mbPerSecond: number;
}

let sourceChunk: Uint8Array | undefined;

/** 1 MiB of random bytes (nothing on the path compresses, but stay honest). */
function chunk(): Uint8Array {
  if (!sourceChunk) {
    sourceChunk = new Uint8Array(CHUNK_BYTES);
    for (let at = 0; at < CHUNK_BYTES; at += 65536) {
      crypto.getRandomValues(sourceChunk.subarray(at, at + 65536));
    }
  }
  return sourceChunk;
}

/**
 * `streams` connections to `port` write 1 MiB chunks for `seconds` (or until
 * each sent `capBytes`, when not 0); the row's time runs from the first write
 * until the sink has received every byte sent. MB is 10^6 bytes.
 */
export async function measureThroughput(
  port: number,
  target: TargetServer,
  streams: number,
  seconds: number,
  capBytes: number,
): Promise<Throughput> {
  const conns: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < streams; i++) conns.push(await connect(port));
    const data = chunk();
    const before = target.sunk;
    let sent = 0;
    const started = performance.now();
    const deadline = started + seconds * 1000;
    await Promise.all(conns.map(async (conn) => {
      await writeAll(conn, Uint8Array.of(SINK));
      let mine = 0;
      while (performance.now() < deadline && (capBytes === 0 || mine < capBytes)) {
        const piece = capBytes === 0
          ? data
          : data.subarray(0, Math.min(data.byteLength, capBytes - mine));
        await writeAll(conn, piece);
        mine += piece.byteLength;
        sent += piece.byteLength;
      }
    }));
    await within(target.sunkAtLeast(before + sent), 60_000, "the sink receiving all bytes sent");
    const elapsed = (performance.now() - started) / 1000;
    return { streams, bytes: sent, seconds: elapsed, mbPerSecond: sent / elapsed / 1e6 };
  } finally {
    conns.forEach(closeQuietly);
  }
}

/** Result of the latency row, in microseconds. */
export interface Latency {
  rtts: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  maxUs: number;
}

/** The value at quantile `q` (0..1) of sorted `values`, nearest rank. */
export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank];
}

/**
 * One persistent connection to the echo: `warmup` then `rtts` sequential
 * round trips of a 64-byte message, each timed from write to the last byte back.
 */
export async function measureLatency(port: number, rtts: number, warmup: number): Promise<Latency> {
  const conn = await connect(port);
  try {
    const message = crypto.getRandomValues(new Uint8Array(MESSAGE_BYTES));
    const reply = new Uint8Array(MESSAGE_BYTES);
    await writeAll(conn, Uint8Array.of(ECHO));
    const samples: number[] = [];
    for (let i = 0; i < warmup + rtts; i++) {
      const started = performance.now();
      await writeAll(conn, message);
      await readExact(conn, reply, MESSAGE_BYTES);
      const took = performance.now() - started;
      if (i >= warmup) samples.push(took * 1000);
    }
    samples.sort((a, b) => a - b);
    return {
      rtts,
      p50Us: quantile(samples, 0.5),
      p99Us: quantile(samples, 0.99),
      meanUs: samples.reduce((a, b) => a + b, 0) / samples.length,
      maxUs: samples[samples.length - 1],
    };
  } finally {
    closeQuietly(conn);
  }
}

/** One complete short session: connect, one 64-byte round trip, close. */
async function oneSession(port: number, request: Uint8Array, timeoutMs: number): Promise<void> {
  const conn = await connect(port);
  const timer = setTimeout(() => closeQuietly(conn), timeoutMs);
  try {
    await writeAll(conn, request);
    await readExact(conn, new Uint8Array(MESSAGE_BYTES), MESSAGE_BYTES);
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

function sessionRequest(): Uint8Array {
  const request = crypto.getRandomValues(new Uint8Array(1 + MESSAGE_BYTES));
  request[0] = ECHO;
  return request;
}

/** Result of the session-rate row. */
export interface SessionRate {
  workers: number;
  seconds: number;
  completed: number;
  failed: number;
  perSecond: number;
  /** Time of one whole session (connect to close), in milliseconds. */
  p50Ms: number;
  p99Ms: number;
}

/**
 * `workers` loops, each opening a connection to `port`, doing one 64-byte
 * round trip through the echo and closing, for `seconds`.
 */
export async function measureSessionRate(
  port: number,
  workers: number,
  seconds: number,
): Promise<SessionRate> {
  const request = sessionRequest();
  const times: number[] = [];
  let failed = 0;
  let lastError = "";
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(Array.from({ length: workers }, async () => {
    while (performance.now() < deadline) {
      const begun = performance.now();
      try {
        await oneSession(port, request, 10_000);
        times.push(performance.now() - begun);
      } catch (err) {
        failed++;
        lastError = (err as Error).message;
        if (failed > 100 && failed > times.length) return;
      }
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  if (failed > 100 && failed > times.length) {
    throw new Error(`${failed} of ${failed + times.length} sessions failed: ${lastError}`);
  }
  times.sort((a, b) => a - b);
  return {
    workers,
    seconds: elapsed,
    completed: times.length,
    failed,
    perSecond: times.length / elapsed,
    p50Ms: quantile(times, 0.5),
    p99Ms: quantile(times, 0.99),
  };
}

/**
 * Opens `count` connections to `port` (`parallel` at a time), each proven
 * end to end by one 64-byte round trip through the echo, and leaves them
 * open. The caller closes them.
 */
export async function openIdleSessions(
  port: number,
  count: number,
  parallel: number,
): Promise<Deno.TcpConn[]> {
  const request = sessionRequest();
  const conns: Deno.TcpConn[] = [];
  let next = 0;
  let failure: Error | null = null;
  await Promise.all(Array.from({ length: parallel }, async () => {
    const reply = new Uint8Array(MESSAGE_BYTES);
    while (next < count && !failure) {
      next++;
      try {
        const conn = await connect(port);
        conns.push(conn);
        // A stalled tunnel fails the read instead of hanging the benchmark.
        const timer = setTimeout(() => closeQuietly(conn), 15_000);
        try {
          await writeAll(conn, request);
          await readExact(conn, reply, MESSAGE_BYTES);
        } finally {
          clearTimeout(timer);
        }
      } catch (err) {
        failure ??= new Error(
          `opening idle session ${next} of ${count}: ${(err as Error).message}`,
        );
      }
    }
  }));
  if (failure) {
    conns.forEach(closeQuietly);
    throw failure;
  }
  return conns;
}

/** Closes connections opened by {@linkcode openIdleSessions}. */
export function closeAll(conns: Deno.TcpConn[]): void {
  conns.forEach(closeQuietly);
}
