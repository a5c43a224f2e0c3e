/**
 * The connection interfaces the data path reads and writes (`read(into)`,
 * `write`), `writeAll`, and stream adapters that keep half-closes working:
 * the data path itself uses no web streams, the adapters are for stdin-like
 * sources, the demo and tests.
 *
 * `Deno.Conn.readable` closes the whole socket when it reads EOF, so after a
 * peer's FIN nothing could be written back: fatal for a tunnel that carries
 * half-closes. These streams wrap `conn.read`/`conn.write` instead, and leave
 * closing to the owner. The readable is a byte stream, so a BYOB reader fills
 * the caller's buffer straight from the socket.
 *
 * @example
 * ```ts
 * import { readableOf, writeAll } from "./conn.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const reader = readableOf(conn).getReader({ mode: "byob" });
 * const { value } = await reader.read(new Uint8Array(9), { min: 9 });
 * await writeAll(conn, new Uint8Array(3));
 * ```
 * @module
 */

/** Something to read from: `Deno.Conn`, `Deno.stdin`. */
export interface Readable {
  read(into: Uint8Array): Promise<number | null>;
}

/** Something to write to: `Deno.Conn`, `Deno.stdout`. */
export interface Writable {
  write(bytes: Uint8Array): Promise<number>;
}

/** A TCP-like connection: reads, writes, half-closes and closes. */
export interface Connection extends Readable, Writable {
  closeWrite(): Promise<void>;
  close(): void;
}

/** How much one read asks for when the reader gives no buffer. */
const AUTO_CHUNK = 65536;

/**
 * A byte stream of what `source.read` returns. It ends at EOF without
 * closing `source`, and errors when a read fails.
 */
export function readableOf(source: Readable): ReadableStream<Uint8Array> {
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: AUTO_CHUNK,
    async pull(controller) {
      const request = controller.byobRequest!;
      const view = request.view!;
      const count = await source.read(
        new Uint8Array(view.buffer, view.byteOffset, view.byteLength),
      );
      if (count === null) {
        controller.close();
        request.respond(0);
      } else {
        request.respond(count);
      }
    },
  });
}

/** A byte stream read like a connection, through a BYOB reader. */
export interface StreamSource extends Readable {
  /** Gives the stream back (releases the reader's lock). */
  release(): void;
  /** Cancels the stream. */
  cancel(): Promise<void>;
}

/**
 * Reads a byte stream with `read(into)`, like a connection: for callers that
 * hand the data path a stream (stdin, tests) instead of a `Deno.Conn`.
 */
export function sourceOf(stream: ReadableStream<Uint8Array>): StreamSource {
  const reader = stream.getReader({ mode: "byob" });
  return {
    async read(into) {
      // The reader takes the buffer it is given: lend it a fresh one, copy back.
      const { value, done } = await reader.read(new Uint8Array(into.byteLength));
      if (value && value.byteLength > 0) {
        into.set(value);
        return value.byteLength;
      }
      return done ? null : 0;
    },
    release: () => reader.releaseLock(),
    cancel: () => reader.cancel(),
  };
}

/** Writes all of `bytes`; a single `write` may take less than asked. */
export async function writeAll(
  target: Writable,
  bytes: Uint8Array,
): Promise<void> {
  let at = 0;
  while (at < bytes.byteLength) at += await target.write(bytes.subarray(at));
}

/** A writable stream over `target`; closing it does not close `target`. */
export function writableOf(target: Writable): WritableStream<Uint8Array> {
  return new WritableStream({ write: (chunk) => writeAll(target, chunk) });
}

/** Closes a connection that may already be closed. */
export function closeQuietly(conn: { close(): void }): void {
  try {
    conn.close();
  } catch {
    // Closed already: by the peer's reset, a timeout, or an earlier error.
  }
}
