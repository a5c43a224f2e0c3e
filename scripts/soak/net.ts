/**
 * TCP pieces of the soak, all on 127.0.0.1: upstream targets that count
 * their connections (a sentinel nobody may reach, an echo, a hashing sink),
 * a proxy that records or mutates what a client sends, and bounded reads.
 * @module
 */

import { closeQuietly } from "../../lib/protocol/conn.ts";
import type { StreamTransform } from "./memory.ts";
import { concat } from "../../lib/base/bytes.ts";

export const LOOPBACK = "127.0.0.1";

export function connectLoopback(port: number): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname: LOOPBACK, port });
}

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

/** What a connection delivered until it ended. */
export interface Drained {
  bytes: number;
  /** The first bytes (up to 64 KiB), for checks on short replies. */
  head: Uint8Array;
  /** "eof", "reset" (a read error) or "bound" (still open when the bound passed). */
  end: "eof" | "reset" | "bound";
  ms: number;
}

/** Reads until EOF or error, or until `boundMs` passed (then closes). */
export async function drain(conn: Deno.Conn, boundMs: number): Promise<Drained> {
  const started = performance.now();
  const buffer = new Uint8Array(65536);
  const head: Uint8Array[] = [];
  let bytes = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let bounded = false;
  timer = setTimeout(() => {
    bounded = true;
    closeQuietly(conn);
  }, boundMs);
  let end: Drained["end"] = "eof";
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      if (bytes < 65536) head.push(buffer.slice(0, Math.min(n, 65536 - bytes)));
      bytes += n;
    }
  } catch {
    end = "reset";
  } finally {
    clearTimeout(timer);
    timer = undefined;
  }
  if (bounded) end = "bound";
  return { bytes, head: concat(head), end, ms: performance.now() - started };
}

/** A listener that counts connections; `serve` decides what each gets. */
export class CountingTarget {
  readonly listener: Deno.TcpListener;
  readonly port: number;
  connections = 0;
  open = 0;
  peakOpen = 0;
  #conns = new Set<Deno.TcpConn>();
  #tasks = new Set<Promise<void>>();
  #loop: Promise<void>;

  constructor(serve: (conn: Deno.TcpConn) => Promise<void>) {
    const listener = Deno.listen({ hostname: LOOPBACK, port: 0 });
    this.listener = listener;
    this.port = listener.addr.port;
    this.#loop = (async () => {
      for (;;) {
        let conn: Deno.TcpConn;
        try {
          conn = await listener.accept();
        } catch {
          return;
        }
        this.connections++;
        this.open++;
        this.peakOpen = Math.max(this.peakOpen, this.open);
        this.#conns.add(conn);
        const task = serve(conn).catch(() => {}).finally(() => {
          this.open--;
          this.#conns.delete(conn);
          closeQuietly(conn);
          this.#tasks.delete(task);
        });
        this.#tasks.add(task);
      }
    })();
  }

  async close(): Promise<void> {
    closeQuietly(this.listener);
    await this.#loop;
    for (const conn of this.#conns) closeQuietly(conn);
    await Promise.all([...this.#tasks]);
  }
}

/** A target nobody may reach: it holds what it gets, and counts. */
export function sentinel(): CountingTarget {
  return new CountingTarget(async (conn) => {
    const buffer = new Uint8Array(4096);
    while (await conn.read(buffer) !== null) { /* keep it open, count it */ }
  });
}

/** An echo target with half-close: it writes back what it reads, then FIN. */
export function echoTarget(): CountingTarget {
  return new CountingTarget(async (conn) => {
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      await writeAll(conn, buffer.subarray(0, n));
    }
    await conn.closeWrite();
  });
}

/**
 * A proxy in front of `upstreamPort` that runs what the client sends through
 * `transform` (a mutation, or a recorder) and passes replies unchanged.
 * One connection at a time uses `next` transform, set per trial.
 */
export class Proxy {
  readonly listener: Deno.TcpListener;
  readonly port: number;
  next: StreamTransform | null = null;
  #tasks = new Set<Promise<void>>();
  #loop: Promise<void>;

  constructor(upstreamPort: number) {
    const listener = Deno.listen({ hostname: LOOPBACK, port: 0 });
    this.listener = listener;
    this.port = listener.addr.port;
    this.#loop = (async () => {
      for (;;) {
        let down: Deno.TcpConn;
        try {
          down = await listener.accept();
        } catch {
          return;
        }
        const transform = this.next;
        const task = this.#relay(down, upstreamPort, transform).finally(() =>
          this.#tasks.delete(task)
        );
        this.#tasks.add(task);
      }
    })();
  }

  async #relay(down: Deno.TcpConn, port: number, transform: StreamTransform | null): Promise<void> {
    let up: Deno.TcpConn;
    try {
      up = await connectLoopback(port);
    } catch {
      closeQuietly(down);
      return;
    }
    const pump = async (from: Deno.TcpConn, to: Deno.TcpConn, t: StreamTransform | null) => {
      const buffer = new Uint8Array(65536);
      try {
        for (;;) {
          const n = await from.read(buffer);
          if (n === null) break;
          const chunk = buffer.slice(0, n);
          for (const piece of t ? t(chunk) : [chunk]) {
            if (piece.byteLength) await writeAll(to, piece);
          }
        }
        await to.closeWrite();
      } catch {
        closeQuietly(from);
        closeQuietly(to);
      }
    };
    await Promise.all([pump(down, up, transform), pump(up, down, null)]);
    closeQuietly(down);
    closeQuietly(up);
  }

  async close(): Promise<void> {
    closeQuietly(this.listener);
    await this.#loop;
    await Promise.all([...this.#tasks]);
  }
}

/** A transform that keeps a copy of everything that passes. */
export function recorder(into: Uint8Array[]): StreamTransform {
  return (chunk) => {
    into.push(chunk.slice());
    return [chunk];
  };
}
