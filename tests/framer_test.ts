/**
 * The exact-read framer (lib/protocol/framer.ts) over BYOB byte streams: frames split
 * at every possible point (one byte at a time, seeded random splits), many
 * frames in one read, clean EOF versus truncation, and bad headers rejected
 * after exactly 9 bytes, with nothing beyond the header read or allocated.
 * Streams come from lib/protocol/conn.ts readableOf over a scripted source, and over
 * real TCP on 127.0.0.1.
 * @module
 */

import { concat } from "../lib/base/bytes.ts";
import assert from "node:assert/strict";
import { rejectsWith } from "./helpers.ts";
import fc from "npm:fast-check@3";
import { type Frame, FrameReader, INITIAL_READ_CAPACITY } from "../lib/protocol/framer.ts";
import { HEADER_SIZE, MAX_DATA_SIZE, MAX_FRAME_SIZE } from "../lib/protocol/frame.ts";
import { LegacyProtocolError, ProtocolError, TruncationError } from "../lib/base/errors.ts";
import { type Readable, readableOf, writeAll } from "../lib/protocol/conn.ts";
import { rawFrame } from "../support/wire.ts";

/** The framer's buffer may grow to one largest frame plus this much. */
const FULL_READ_CAPACITY = MAX_FRAME_SIZE + 4096;

/** The random splits' fast-check seed: a failure reruns, and shrinks, the same way. */
const SPLITS_SEED = 1;

/**
 * `size` reproducible bytes, different for each `salt`: the content only has
 * to tell frames and offsets apart, so a hash of the position does.
 */
function saltedBytes(salt: number, size: number): Uint8Array {
  const mixed = Math.imul(salt + 1, 0x85ebca6b);
  return Uint8Array.from({ length: size }, (_, i) => (Math.imul(i + 1, 0x9e3779b1) ^ mixed) >>> 24);
}

interface ExpectedFrame {
  nonce: Uint8Array;
  data: Uint8Array;
}

/**
 * A `Readable` that hands out `data` in chunks whose sizes `chunkSize`
 * decides, and records how many bytes were pulled, how many reads were
 * made, and the largest buffer it was offered (the framer's buffer).
 */
class ScriptedSource implements Readable {
  pulled = 0;
  reads = 0;
  largestOffer = 0;
  #data: Uint8Array;
  #chunkSize: () => number;
  #failure: Error | null;

  constructor(data: Uint8Array, chunkSize: () => number, failure: Error | null = null) {
    this.#data = data;
    this.#chunkSize = chunkSize;
    this.#failure = failure;
  }

  read(into: Uint8Array): Promise<number | null> {
    this.reads++;
    this.largestOffer = Math.max(this.largestOffer, into.byteLength);
    if (this.pulled >= this.#data.byteLength) {
      return this.#failure ? Promise.reject(this.#failure) : Promise.resolve(null);
    }
    const count = Math.min(
      into.byteLength,
      this.#data.byteLength - this.pulled,
      Math.max(1, this.#chunkSize()),
    );
    into.set(this.#data.subarray(this.pulled, this.pulled + count));
    this.pulled += count;
    return Promise.resolve(count);
  }
}

/** Reads frames until clean EOF; copies each (the framer's views are reused). */
async function readAllFrames(frames: FrameReader, nonceSize: number): Promise<ExpectedFrame[]> {
  const out: ExpectedFrame[] = [];
  for (;;) {
    const frame: Frame | null = await frames.next(nonceSize, 0);
    if (frame === null) return out;
    out.push({ nonce: frame.nonce.slice(), data: frame.data.slice() });
  }
}

/**
 * A transport frame's size and content salt: mostly small, some crossing the
 * initial buffer, a few at the limit or empty. Kept as numbers so that a
 * failure prints (and shrinks) short; {@link framesOf} makes the frames.
 */
const frameSpec = fc.record({
  salt: fc.nat(),
  size: fc.oneof(
    { weight: 12, arbitrary: fc.integer({ min: 16, max: 215 }) },
    { weight: 6, arbitrary: fc.integer({ min: 16, max: 9015 }) },
    { weight: 1, arbitrary: fc.constant(MAX_DATA_SIZE) },
    { weight: 1, arbitrary: fc.constant(0) },
  ),
});

/** The frames `specs` describe. */
function framesOf(specs: { salt: number; size: number }[]): ExpectedFrame[] {
  return specs.map(({ salt, size }) => ({
    nonce: saltedBytes(salt, 12),
    data: saltedBytes(salt + 1, size),
  }));
}

/** Read sizes mixing tiny splits, header-sized splits and reads larger than a frame. */
const readSizes = fc.array(
  fc.oneof(
    { weight: 3, arbitrary: fc.integer({ min: 1, max: 9 }) },
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 1000 }) },
    { weight: 3, arbitrary: fc.integer({ min: 1, max: 3 * MAX_FRAME_SIZE }) },
  ),
  { minLength: 1, maxLength: 100 },
);

function wireOf(frames: ExpectedFrame[]): Uint8Array {
  return concat(frames.map((f) => rawFrame(f.nonce, f.data)));
}

function assertSameFrames(actual: ExpectedFrame[], expected: ExpectedFrame[], label: string) {
  assert.equal(actual.length, expected.length, `${label}: frame count`);
  for (const [i, frame] of expected.entries()) {
    assert.deepEqual(actual[i].nonce, frame.nonce, `${label}: nonce of frame ${i}`);
    assert.deepEqual(actual[i].data, frame.data, `${label}: data of frame ${i}`);
  }
}

Deno.test("framer: frames fed one byte at a time come out whole and in order", async () => {
  const expected = [
    ...Array.from({ length: 10 }, (_, i) => ({
      nonce: saltedBytes(2 * i, 12),
      data: saltedBytes(2 * i + 1, 16 + i * 37),
    })),
    // Larger than the initial buffer: the framer must grow while bytes trickle in.
    { nonce: saltedBytes(20, 12), data: saltedBytes(21, INITIAL_READ_CAPACITY + 500) },
    { nonce: saltedBytes(22, 12), data: new Uint8Array(0) },
    { nonce: saltedBytes(24, 12), data: saltedBytes(25, 16) },
  ];
  const wire = wireOf(expected);
  const source = new ScriptedSource(wire, () => 1);
  const frames = new FrameReader(readableOf(source));
  assertSameFrames(await readAllFrames(frames, 12), expected, "one byte at a time");
  assert.equal(source.pulled, wire.byteLength);
});

Deno.test("framer: seeded random splits of random frames reproduce every frame", async () => {
  // A failure prints the seed and the shrunk frames and read sizes.
  const splits = fc.asyncProperty(
    fc.array(frameSpec, { minLength: 1, maxLength: 20 }),
    readSizes,
    async (specs, sizes) => {
      const expected = framesOf(specs);
      let read = 0;
      const source = new ScriptedSource(wireOf(expected), () => sizes[read++ % sizes.length]);
      const frames = new FrameReader(readableOf(source));
      assertSameFrames(await readAllFrames(frames, 12), expected, "random splits");
      assert.ok(
        source.largestOffer <= FULL_READ_CAPACITY,
        `the buffer grew to ${source.largestOffer}, past its fixed limit`,
      );
    },
  );
  await fc.assert(splits, { seed: SPLITS_SEED, numRuns: 25 });
});

Deno.test("framer: many frames delivered in one read are all handed out without reading again", async () => {
  // As many frames (at most 56 bytes each) as fit the reader's first buffer.
  const expected = Array.from({ length: Math.floor(INITIAL_READ_CAPACITY / 56) }, (_, i) => ({
    nonce: saltedBytes(2 * i, 12),
    data: saltedBytes(2 * i + 1, 16 + (i % 20)),
  }));
  const wire = wireOf(expected);
  assert.ok(wire.byteLength < INITIAL_READ_CAPACITY, "the test needs all frames to fit one read");
  const source = new ScriptedSource(wire, () => Number.MAX_SAFE_INTEGER);
  const frames = new FrameReader(readableOf(source));

  const first = await frames.next(12, 0);
  assert.ok(first);
  assert.equal(source.reads, 1, "the first frame came from a single read");
  assert.equal(frames.buffered, wire.byteLength - (HEADER_SIZE + 12 + 16));
  const rest = [{ nonce: first.nonce.slice(), data: first.data.slice() }];
  for (let i = 1; i < expected.length; i++) {
    const frame = await frames.next(12, 0);
    assert.ok(frame, `frame ${i}`);
    rest.push({ nonce: frame.nonce.slice(), data: frame.data.slice() });
  }
  assert.equal(source.reads, 1, "every frame came out of the first read's bytes");
  assertSameFrames(rest, expected, "one read");
  assert.equal(await frames.next(12, 0), null);
  assert.equal(source.reads, 2, "only the end of stream needed another read");
});

Deno.test("framer: a frame's header, nonce and data are views of the exact wire bytes", async () => {
  const nonce = Uint8Array.from({ length: 12 }, (_, i) => i + 1);
  const data = Uint8Array.from({ length: 20 }, (_, i) => 0xa0 + i);
  const wire = rawFrame(nonce, data);
  const frames = new FrameReader(readableOf(new ScriptedSource(wire, () => 1000)));
  const frame = await frames.next(12, 16);
  assert.ok(frame);
  assert.deepEqual(frame.header, wire.subarray(0, HEADER_SIZE));
  assert.deepEqual(frame.nonce, nonce);
  assert.deepEqual(frame.data, data);
});

Deno.test("framer: a stream that ends between frames is a clean EOF (null), and stays so", async () => {
  const [specs] = fc.sample(fc.array(frameSpec, { minLength: 3, maxLength: 3 }), {
    seed: 3,
    numRuns: 1,
  });
  const expected = framesOf(specs).map((f) => ({ ...f, data: f.data.subarray(0, 100) }));
  const frames = new FrameReader(readableOf(new ScriptedSource(wireOf(expected), () => 50)));
  for (let i = 0; i < expected.length; i++) assert.ok(await frames.next(12, 0), `frame ${i}`);
  assert.equal(await frames.next(12, 0), null);
  assert.equal(await frames.next(12, 0), null);
});

Deno.test("framer: an empty stream is a clean EOF", async () => {
  const frames = new FrameReader(readableOf(new ScriptedSource(new Uint8Array(0), () => 1)));
  assert.equal(await frames.next(0, 48), null);
});

Deno.test("framer: EOF inside a frame's header, nonce or data is a TruncationError", async () => {
  const whole = rawFrame(saltedBytes(1, 12), saltedBytes(2, 100));
  const good = rawFrame(saltedBytes(3, 12), saltedBytes(4, 30));
  for (const cut of [1, 5, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 6, whole.byteLength - 1]) {
    for (const chunk of [1, 4096]) {
      const wire = concat([good, whole.subarray(0, cut)]);
      const frames = new FrameReader(readableOf(new ScriptedSource(wire, () => chunk)));
      assert.ok(await frames.next(12, 16), `cut ${cut}: the whole first frame is still delivered`);
      await assert.rejects(frames.next(12, 16), TruncationError, `cut at ${cut}, chunk ${chunk}`);
    }
  }
});

Deno.test("framer: a failing read is reported as a TruncationError, not a clean end", async () => {
  const wire = rawFrame(new Uint8Array(12), new Uint8Array(40)).subarray(0, 30);
  const source = new ScriptedSource(wire, () => 7, new Error("connection reset"));
  const frames = new FrameReader(readableOf(source));
  await rejectsWith(frames.next(12, 16), TruncationError, /connection reset/);
});

/** Headers that must be refused, each with the error class it must raise. */
const badHeaders: {
  name: string;
  fields: Parameters<typeof rawFrame>[2];
  error: typeof ProtocolError;
}[] = [
  { name: "version 3", fields: { version: 3 }, error: ProtocolError },
  { name: "version 1 (legacy)", fields: { version: 1 }, error: LegacyProtocolError },
  { name: "nonce_size 0 where 12 is expected", fields: { nonceSize: 0 }, error: ProtocolError },
  { name: "nonce_size 24", fields: { nonceSize: 24 }, error: ProtocolError },
  { name: "data_size 65536", fields: { dataSize: 65536 }, error: ProtocolError },
  { name: "data_size 0xFFFFFFFF", fields: { dataSize: 0xffffffff }, error: ProtocolError },
  { name: "data_size 15, below the tag", fields: { dataSize: 15 }, error: ProtocolError },
  { name: "data_size 0, below the tag", fields: { dataSize: 0 }, error: ProtocolError },
];

Deno.test("framer: a bad header is rejected after exactly 9 bytes, nothing more read or allocated", async () => {
  // What follows the header is plenty of bytes the framer must never touch.
  const body = saltedBytes(5, 70000);
  for (const { name, fields, error } of badHeaders) {
    const wire = rawFrame(body.subarray(0, 12), body.subarray(12), fields);
    for (const [split, chunkSize] of [["one byte", 1], ["header-sized", HEADER_SIZE]] as const) {
      const source = new ScriptedSource(wire, () => chunkSize);
      const frames = new FrameReader(readableOf(source));
      await assert.rejects(frames.next(12, 16), error, `${name}, ${split} reads`);
      assert.equal(source.pulled, HEADER_SIZE, `${name}, ${split} reads: bytes pulled`);
      assert.ok(
        source.largestOffer <= INITIAL_READ_CAPACITY,
        `${name}: the buffer grew to ${source.largestOffer} before the header was judged`,
      );
      await frames.cancel();
    }
  }
});

Deno.test("framer: a bad header after a good frame is judged on its own 9 bytes", async () => {
  const good = rawFrame(saltedBytes(9, 12), saltedBytes(10, 64));
  const bad = rawFrame(new Uint8Array(12), new Uint8Array(5000), { dataSize: 0xffffffff });
  const source = new ScriptedSource(concat([good, bad]), () => 1);
  const frames = new FrameReader(readableOf(source));
  assert.ok(await frames.next(12, 16));
  await assert.rejects(frames.next(12, 16), ProtocolError);
  assert.equal(source.pulled, good.byteLength + HEADER_SIZE);
  await frames.cancel();
});

Deno.test("framer: handshake frames are checked against nonce_size 0 and their own minimum", async () => {
  const message1 = new Uint8Array(48).fill(1);
  const frames = new FrameReader(
    readableOf(new ScriptedSource(rawFrame(new Uint8Array(0), message1), () => 13)),
  );
  const frame = await frames.next(0, 48);
  assert.ok(frame);
  assert.equal(frame.nonce.byteLength, 0);
  assert.deepEqual(frame.data, message1);

  const short = new FrameReader(
    readableOf(new ScriptedSource(rawFrame(new Uint8Array(0), new Uint8Array(47)), () => 13)),
  );
  await assert.rejects(short.next(0, 48), ProtocolError);
  await short.cancel();
});

Deno.test("framer: a largest frame grows the buffer only to its fixed limit", async () => {
  const expected = [
    { nonce: saltedBytes(1, 12), data: saltedBytes(2, MAX_DATA_SIZE) },
    { nonce: saltedBytes(3, 12), data: saltedBytes(4, MAX_DATA_SIZE) },
  ];
  const source = new ScriptedSource(wireOf(expected), () => Number.MAX_SAFE_INTEGER);
  assertSameFrames(await readAllFrames(new FrameReader(readableOf(source)), 12), expected, "max");
  assert.ok(source.largestOffer > INITIAL_READ_CAPACITY, "the buffer did grow for a big frame");
  assert.ok(source.largestOffer <= FULL_READ_CAPACITY, `buffer of ${source.largestOffer} bytes`);
});

/** A connected pair of TCP sockets on 127.0.0.1. */
async function tcpPair(): Promise<{ client: Deno.TcpConn; server: Deno.TcpConn }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const [client, server] = await Promise.all([
      Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      listener.accept(),
    ]);
    return { client, server };
  } finally {
    listener.close();
  }
}

Deno.test("framer: frames over real TCP arrive whole, EOF is clean, and the socket stays writable", async () => {
  const { client, server } = await tcpPair();
  try {
    const [specs] = fc.sample(fc.array(frameSpec, { minLength: 12, maxLength: 12 }), {
      seed: 21,
      numRuns: 1,
    });
    const expected = framesOf(specs);
    const wire = wireOf(expected);
    const writer = (async () => {
      // Odd-sized writes so that frames straddle TCP segments.
      for (let at = 0; at < wire.byteLength; at += 777) {
        await writeAll(client, wire.subarray(at, Math.min(wire.byteLength, at + 777)));
      }
      await client.closeWrite();
    })();
    const frames = new FrameReader(readableOf(server));
    const received = await readAllFrames(frames, 12);
    await writer;
    assertSameFrames(received, expected, "tcp");
    // readableOf must not have closed the socket at EOF: the half-close
    // still lets the reading side answer.
    await writeAll(server, new TextEncoder().encode("ack"));
    server.close();
    const reply = new Uint8Array(3);
    let got = 0;
    while (got < 3) {
      const n = await client.read(reply.subarray(got));
      assert.ok(n !== null, "the answer after EOF arrived");
      got += n;
    }
    assert.equal(new TextDecoder().decode(reply), "ack");
  } finally {
    for (const conn of [client, server]) {
      try {
        conn.close();
      } catch {
        // Closed above.
      }
    }
  }
});

Deno.test("framer: a TCP peer that closes inside a frame is a TruncationError", async () => {
  const { client, server } = await tcpPair();
  try {
    const frame = rawFrame(new Uint8Array(12), new Uint8Array(500));
    await writeAll(client, frame.subarray(0, 200));
    client.close();
    const frames = new FrameReader(readableOf(server));
    await assert.rejects(frames.next(12, 16), TruncationError);
  } finally {
    server.close();
  }
});
