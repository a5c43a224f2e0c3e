/**
 * In-memory connection pairs for in-process fuzzing: two ends of a fake TCP
 * connection (read, write, half-close, close) with an optional transform on
 * each direction that flips, drops, duplicates or inserts a byte at one
 * offset of the stream, or splits it into chunks at chosen offsets.
 * @module
 */

import type { Connection } from "../../lib/protocol/conn.ts";

/** Rewrites one direction of a stream, chunk by chunk, keeping its own offset. */
export type StreamTransform = (chunk: Uint8Array) => Uint8Array[];

/** One end of an in-memory connection. */
export class MemoryEnd implements Connection {
  peer!: MemoryEnd;
  /** Bytes written by this end so far (before any transform). */
  written = 0;
  #inbox: Uint8Array[] = [];
  #inboxEnded = false;
  #closed = false;
  #wake: (() => void) | null = null;
  #transform: StreamTransform | null;

  constructor(transform: StreamTransform | null) {
    this.#transform = transform;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async read(into: Uint8Array): Promise<number | null> {
    for (;;) {
      if (this.#closed) throw new Deno.errors.BadResource("the connection is closed");
      const next = this.#inbox[0];
      if (next) {
        const n = Math.min(next.byteLength, into.byteLength);
        into.set(next.subarray(0, n));
        if (n === next.byteLength) this.#inbox.shift();
        else this.#inbox[0] = next.subarray(n);
        return n;
      }
      if (this.#inboxEnded) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  write(bytes: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    if (this.peer.#closed || this.peer.#inboxEnded) {
      return Promise.reject(new Deno.errors.ConnectionReset("the peer closed the connection"));
    }
    this.written += bytes.byteLength;
    const chunks = this.#transform ? this.#transform(bytes.slice()) : [bytes.slice()];
    for (const chunk of chunks) if (chunk.byteLength > 0) this.peer.#deliver(chunk);
    return Promise.resolve(bytes.byteLength);
  }

  closeWrite(): Promise<void> {
    this.peer.#end();
    return Promise.resolve();
  }

  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("closed twice");
    this.#closed = true;
    this.#inbox = [];
    this.#wakeUp();
    this.peer.#end();
  }

  #deliver(chunk: Uint8Array): void {
    if (this.#closed) return;
    this.#inbox.push(chunk);
    this.#wakeUp();
  }

  #end(): void {
    this.#inboxEnded = true;
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}

/**
 * A connected pair: what `a` writes `b` reads (through `aToB`), and the other
 * way round.
 */
export function memoryPair(
  aToB: StreamTransform | null = null,
  bToA: StreamTransform | null = null,
): [MemoryEnd, MemoryEnd] {
  const a = new MemoryEnd(aToB);
  const b = new MemoryEnd(bToA);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/** A one-byte mutation of a stream. */
export type MutationKind = "flip" | "drop" | "duplicate" | "insert";
export const MUTATION_KINDS: readonly MutationKind[] = ["flip", "drop", "duplicate", "insert"];

/**
 * A transform that applies one mutation at stream offset `at`: XOR the byte
 * with `value` (non-zero), drop it, write it twice, or insert `value` before it.
 */
export function mutateAt(
  kind: MutationKind,
  at: number,
  value: number,
): StreamTransform & { insertedCopy?: boolean } {
  let offset = 0;
  const transform: StreamTransform & { insertedCopy?: boolean } = (chunk) => {
    const start = offset;
    offset += chunk.byteLength;
    if (at < start || at >= offset) return [chunk];
    const i = at - start;
    switch (kind) {
      case "flip":
        chunk[i] ^= value || 0xff;
        return [chunk];
      case "drop":
        return [chunk.subarray(0, i), chunk.subarray(i + 1)];
      case "duplicate":
        return [chunk.subarray(0, i + 1), chunk.subarray(i)];
      case "insert":
        // Inserting a copy of the byte that follows is the same as duplicating it.
        transform.insertedCopy = value === chunk[i];
        return [chunk.subarray(0, i), Uint8Array.of(value), chunk.subarray(i)];
    }
  };
  return transform;
}

/** A transform that cuts the stream into separate chunks at each offset in `cuts`. */
export function splitAt(cuts: readonly number[]): StreamTransform {
  const sorted = [...cuts].sort((x, y) => x - y);
  let offset = 0;
  return (chunk) => {
    const start = offset;
    offset += chunk.byteLength;
    const out: Uint8Array[] = [];
    let from = 0;
    for (const cut of sorted) {
      if (cut <= start || cut >= offset) continue;
      out.push(chunk.subarray(from, cut - start));
      from = cut - start;
    }
    out.push(chunk.subarray(from));
    return out;
  };
}

/** A transform that delivers the stream one byte at a time. */
export function byteByByte(): StreamTransform {
  return (chunk) => Array.from(chunk, (_, i) => chunk.subarray(i, i + 1));
}
