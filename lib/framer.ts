/**
 * The exact-read framer: turns a byte stream (a TCP connection's `readable`)
 * into whole frames, reading through one reused buffer with a BYOB reader.
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
 * const frames = new FrameReader(conn.readable);
 * const frame = await frames.next(0, 48); // a handshake frame, or null at EOF
 * ```
 * @module
 */

import { TruncationError } from "./errors.ts";
import { HEADER_SIZE, MAX_FRAME_SIZE, parseHeader } from "./frame.ts";

/** One frame, as views into the reader's buffer. */
export interface Frame {
  /** The 9 header bytes: the associated data of a transport frame. */
  header: Uint8Array;
  nonce: Uint8Array;
  data: Uint8Array;
}

/** Buffer size of an idle connection; grows to one full frame when needed. */
export const INITIAL_READ_CAPACITY = 4096;
/** Room for one largest frame plus the start of the next. */
const FULL_READ_CAPACITY = MAX_FRAME_SIZE + 4096;

/** Reads whole frames from a byte stream through one reused buffer. */
export class FrameReader {
  #reader: ReadableStreamBYOBReader;
  #buffer: ArrayBuffer;
  #start = 0;
  #end = 0;
  #consumed = 0;
  #eof = false;
  #initialCapacity: number;

  /**
   * @param readable a byte stream (`Deno.Conn.readable` is one)
   * @param initialCapacity first buffer size; it grows to one full frame
   */
  constructor(
    readable: ReadableStream<Uint8Array>,
    initialCapacity = INITIAL_READ_CAPACITY,
  ) {
    this.#reader = readable.getReader({ mode: "byob" });
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

  /** Stops reading; the underlying stream is cancelled. */
  async cancel(): Promise<void> {
    try {
      await this.#reader.cancel();
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
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await this.#reader.read(
          new Uint8Array(this.#buffer, this.#end),
          { min: count - (this.#end - this.#start) },
        );
      } catch (err) {
        throw new TruncationError(
          `the connection failed before the peer's CLOSE (${
            err instanceof Error ? err.message : String(err)
          })`,
        );
      }
      if (result.value) {
        this.#buffer = result.value.buffer as ArrayBuffer;
        this.#end += result.value.byteLength;
      } else {
        this.#buffer = new ArrayBuffer(this.#buffer.byteLength);
      }
      if (result.done) this.#eof = true;
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
