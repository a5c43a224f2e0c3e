/**
 * The exact-read framer: turns a byte source (a `Deno.Conn`, read with
 * `conn.read` straight into one reused buffer) into whole frames.
 *
 * The header is parsed and checked before the body is read, so an attacker's
 * `data_size` never decides an allocation: the buffer only ever grows to the
 * protocol's fixed frame limit. Frames handed out are views into that buffer
 * and stay valid only until the next call to {@linkcode FrameReader.next}.
 *
 * @example
 * ```ts
 * import { FrameReader } from "./framer.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const frames = new FrameReader(conn);
 * const frame = await frames.next(0, 48); // a handshake frame, or null at EOF
 * ```
 * @module
 */

import { type Readable, sourceOf } from "./conn.ts";
import { TruncationError } from "../base/errors.ts";
import { HEADER_SIZE, MAX_FRAME_SIZE, parseHeader } from "./frame.ts";

/** One frame, as views into the reader's buffer. */
export interface Frame {
  /** The 9 header bytes: the associated data of a transport frame. */
  header: Uint8Array;
  nonce: Uint8Array;
  data: Uint8Array;
}

/** Buffer size of an idle connection; grows to one full frame when needed. */
export const INITIAL_READ_CAPACITY = 1024;
/** Room for one largest frame plus the start of the next. */
const FULL_READ_CAPACITY = MAX_FRAME_SIZE + 4096;

/** Reads whole frames from a byte source through one reused buffer. */
export class FrameReader {
  #source: Readable;
  #cancel: () => Promise<void>;
  #buffer: ArrayBuffer;
  #start = 0;
  #end = 0;
  #consumed = 0;
  #eof = false;
  #initialCapacity: number;

  /**
   * @param source what to read: a `Deno.Conn` (read directly, the fast
   *   path) or a byte stream (read with a BYOB reader)
   * @param initialCapacity first buffer size; it grows to one full frame
   */
  constructor(
    source: Readable | ReadableStream<Uint8Array>,
    initialCapacity = INITIAL_READ_CAPACITY,
  ) {
    if (source instanceof ReadableStream) {
      const stream = sourceOf(source);
      this.#source = stream;
      this.#cancel = () => stream.cancel();
    } else {
      this.#source = source;
      // A connection is its owner's to close: nothing to release here.
      this.#cancel = () => Promise.resolve();
    }
    this.#initialCapacity = initialCapacity;
    this.#buffer = new ArrayBuffer(initialCapacity);
  }

  /** Bytes received but not yet handed out as frames. */
  get buffered(): number {
    return this.#end - this.#start - this.#consumed;
  }

  /**
   * Reads the next frame. Resolves `null` on a clean end of stream between
   * frames; throws {@linkcode TruncationError} when the stream ends inside a
   * frame, and the errors of {@linkcode parseHeader} for a bad header (after
   * exactly 9 bytes of it were examined).
   */
  async next(
    expectedNonceSize: number,
    minDataSize: number,
  ): Promise<Frame | null> {
    const previous = this.#consumed;
    this.#start += previous;
    this.#consumed = 0;
    if (this.#start === this.#end) {
      this.#start = this.#end = 0;
      // Back to a small buffer once traffic is small again, so an idle
      // connection does not keep a full frame's worth of memory.
      if (previous < this.#initialCapacity && this.#buffer.byteLength > this.#initialCapacity) {
        this.#buffer = new ArrayBuffer(this.#initialCapacity);
      }
    }
    if (!await this.#fill(HEADER_SIZE)) return null;
    const { nonceSize, dataSize } = parseHeader(
      new Uint8Array(this.#buffer, this.#start, HEADER_SIZE),
      expectedNonceSize,
      minDataSize,
    );
    const total = HEADER_SIZE + nonceSize + dataSize;
    if (!await this.#fill(total)) {
      throw new TruncationError("the connection ended inside a frame");
    }
    const at = this.#start;
    this.#consumed = total;
    return {
      header: new Uint8Array(this.#buffer, at, HEADER_SIZE),
      nonce: new Uint8Array(this.#buffer, at + HEADER_SIZE, nonceSize),
      data: new Uint8Array(
        this.#buffer,
        at + HEADER_SIZE + nonceSize,
        dataSize,
      ),
    };
  }

  /** Stops reading; a stream source is cancelled, a connection is left to its owner. */
  async cancel(): Promise<void> {
    try {
      await this.#cancel();
    } catch {
      // Already closed or errored: nothing left to release.
    }
  }

  /**
   * Makes `count` bytes available from #start. Returns false when the stream
   * ended with nothing buffered; throws TruncationError when it ended with a
   * partial frame.
   */
  async #fill(count: number): Promise<boolean> {
    while (this.#end - this.#start < count) {
      if (this.#eof) return this.#endOfStream();
      this.#makeRoom(count);
      let got: number | null;
      try {
        got = await this.#source.read(new Uint8Array(this.#buffer, this.#end));
      } catch (err) {
        throw new TruncationError(
          `the connection failed before the peer's CLOSE (${
            err instanceof Error ? err.message : String(err)
          })`,
        );
      }
      if (got === null) this.#eof = true;
      else this.#end += got;
    }
    return true;
  }

  #endOfStream(): boolean {
    if (this.#end === this.#start) return false;
    throw new TruncationError("the connection ended inside a frame");
  }

  /** Ensures the buffer has room for `count` bytes from #start. */
  #makeRoom(count: number): void {
    const capacity = this.#buffer.byteLength;
    if (capacity - this.#start >= count && this.#end < capacity) return;
    const pending = new Uint8Array(
      this.#buffer,
      this.#start,
      this.#end - this.#start,
    );
    if (capacity >= count && capacity > pending.byteLength) {
      new Uint8Array(this.#buffer).copyWithin(0, this.#start, this.#end);
    } else {
      const grown = new ArrayBuffer(Math.max(count, FULL_READ_CAPACITY));
      new Uint8Array(grown).set(pending);
      this.#buffer = grown;
    }
    this.#end -= this.#start;
    this.#start = 0;
  }
}
