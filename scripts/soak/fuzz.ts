/**
 * Suite 1, in process: fuzzing the frame codec, the framer, the handshake and
 * the transport state machine with seeded generators (fast-check), over
 * in-memory connections. Every input either works as the model says or fails
 * with a typed error; nothing escapes, nothing hangs, nothing allocates what
 * a header asks for.
 * @module
 */

import { concat, equalBytes } from "../../lib/base/bytes.ts";
import fc from "npm:fast-check@3";
import { PROLOGUE, SecureChannel } from "../../lib/protocol/channel.ts";
import { MessageType } from "../../lib/protocol/messages.ts";
import { readableOf } from "../../lib/protocol/conn.ts";
import {
  AuthenticationError,
  CipherlinkError,
  FrameHeaderError,
  LegacyProtocolError,
  ProtocolError,
  RemoteError,
  TruncationError,
} from "../../lib/base/errors.ts";
import { MAX_DATA_SIZE, MAX_FRAME_SIZE, parseHeader } from "../../lib/protocol/frame.ts";
import { FrameReader } from "../../lib/protocol/framer.ts";
import { NNpsk0Handshake } from "../../lib/protocol/noise.ts";
import { Session } from "../../lib/tunnel/session.ts";
import { SERVICE_TARGET } from "../../lib/protocol/target.ts";
import {
  bump,
  errorName,
  histogramText,
  pool,
  Rng,
  type Row,
  RowBuilder,
  within,
} from "./common.ts";
import { isPrefix, type Limits, runClient, serveEcho } from "./harness.ts";
import {
  byteByByte,
  memoryPair,
  mutateAt,
  MUTATION_KINDS,
  splitAt,
  type StreamTransform,
} from "./memory.ts";
import { rawHeader } from "../../support/wire.ts";

/** How many inputs of each kind; see planFuzz. */
export interface FuzzPlan {
  seed: number;
  headers: number;
  framerStreams: number;
  oversized: number;
  handshakeMessages: number;
  mutationPasses: number;
  modelSequences: number;
}

/** Splits a total input budget between the generators. */
export function planFuzz(total: number, seed: number, quick: boolean): FuzzPlan {
  const fixed = {
    oversized: Math.round(total * 0.02),
    handshakeMessages: quick ? 300 : 6000,
    mutationPasses: quick ? 1 : 3,
    modelSequences: quick ? 150 : 2500,
  };
  // Sessions: ~1,450 per mutation pass, ~370 split runs, two model sequences each.
  const used = fixed.oversized + fixed.handshakeMessages + fixed.mutationPasses * 1450 + 370 +
    fixed.modelSequences * 2;
  const rest = Math.max(0, total - used);
  return {
    seed,
    headers: rest - Math.round(rest * 0.1),
    framerStreams: Math.round(rest * 0.1),
    ...fixed,
  };
}

/**
 * Deadlines of the in-process peers. Mutated sessions may wait for a byte
 * that never comes, so theirs are short (a deadline is a failure outcome
 * there anyway); sessions that must succeed get room for a busy machine.
 */
const LIMITS: Limits = { handshakeMs: 400, idleMs: 400 };
const ROOMY: Limits = { handshakeMs: 5000, idleMs: 5000 };
/** A trial that takes this long has hung: real peers end it long before. */
const TRIAL_BOUND_MS = 5000;

/** Counts errors that escaped every handler while the fuzzers ran. */
export class EscapeTrap {
  escapes: string[] = [];
  #onRejection = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    this.escapes.push(`unhandled rejection: ${describe(event.reason)}`);
  };
  #onError = (event: ErrorEvent) => {
    event.preventDefault();
    this.escapes.push(`uncaught error: ${describe(event.error)}`);
  };
  install(): void {
    globalThis.addEventListener("unhandledrejection", this.#onRejection);
    globalThis.addEventListener("error", this.#onError);
  }
  remove(): void {
    globalThis.removeEventListener("unhandledrejection", this.#onRejection);
    globalThis.removeEventListener("error", this.#onError);
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** Errors a peer may end with: ours, or the connection's own. */
function isTyped(err: unknown): boolean {
  if (err === null || err === "deadline" || err === "refused") return true;
  return err instanceof CipherlinkError || isConnectionError(err);
}

function isConnectionError(err: unknown): boolean {
  return err instanceof Deno.errors.BadResource || err instanceof Deno.errors.ConnectionReset ||
    err instanceof Deno.errors.BrokenPipe || err instanceof Deno.errors.Interrupted;
}

// ---------------------------------------------------------------- headers

/** What a header must decide, computed independently of parseHeader. */
function headerModel(
  bytes: Uint8Array,
  nonceSize: number,
  minData: number,
): "ok" | "legacy" | "bad" {
  const view = new DataView(bytes.buffer, bytes.byteOffset, 9);
  const version = view.getUint8(0);
  if (version === 1) return "legacy";
  if (version !== 2) return "bad";
  if (view.getUint32(1) !== nonceSize) return "bad";
  const data = view.getUint32(5);
  return data > 65535 || data < minData ? "bad" : "ok";
}

const CONTEXTS = [[0, 48], [12, 17], [12, 16], [0, 0]] as const;

const U32_EXTREMES = [
  0,
  1,
  11,
  12,
  13,
  15,
  16,
  17,
  47,
  48,
  65535,
  65536,
  0x00ffffff,
  0x01000000,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 32 - 2,
  2 ** 32 - 1,
];

const u32Extremes = fc.oneof(fc.constantFrom(...U32_EXTREMES), fc.nat({ max: 0xffffffff }));

/**
 * Random headers, cheap to generate: three random fields, and a selector
 * that swaps some of them for version 2 or for extreme sizes, so that every
 * branch of the check gets its share.
 */
const headerArb = fc.tuple(
  fc.nat(255),
  fc.nat({ max: 0xffffffff }),
  fc.nat({ max: 0xffffffff }),
  fc.nat(63),
).map(([version, nonce, data, selector]) =>
  rawHeader(
    selector & 1 ? 2 : selector & 2 ? 1 : version,
    selector & 4 ? U32_EXTREMES[nonce % U32_EXTREMES.length] : selector & 8 ? nonce % 13 : nonce,
    selector & 16 ? U32_EXTREMES[data % U32_EXTREMES.length] : selector & 32 ? data % 70000 : data,
  )
);

/** parseHeader agrees with the model on random and extreme headers, and only throws its own errors. */
function fuzzHeaders(plan: FuzzPlan, row: RowBuilder): void {
  const outcomes: Record<string, number> = {};
  const result = fc.check(
    fc.property(headerArb, fc.constantFrom(...CONTEXTS), (bytes, [nonceSize, minData]) => {
      const expected = headerModel(bytes, nonceSize, minData);
      bump(outcomes, expected);
      try {
        const parsed = parseHeader(bytes, nonceSize, minData);
        const view = new DataView(bytes.buffer, bytes.byteOffset, 9);
        return expected === "ok" && parsed.nonceSize === nonceSize &&
          parsed.dataSize === view.getUint32(5) && parsed.dataSize <= MAX_DATA_SIZE;
      } catch (err) {
        if (expected === "legacy") return err instanceof LegacyProtocolError;
        return expected === "bad" && err instanceof FrameHeaderError &&
          !(err instanceof LegacyProtocolError);
      }
    }),
    { numRuns: plan.headers, seed: plan.seed },
  );
  row.tried(result.numRuns);
  if (result.failed) {
    row.fail(`header codec: counterexample ${JSON.stringify(result.counterexample)}`);
  }
  row.set("header_inputs", result.numRuns);
  row.set("header_outcomes", histogramText(outcomes));
}

// ---------------------------------------------------------------- framer

/** A segment of a generated stream: a frame (possibly malformed) or garbage. */
type Segment =
  | { kind: "frame"; version: number; nonceSize: number; dataSize: number; fill: number }
  | { kind: "garbage"; bytes: Uint8Array };

function segmentArb(expectedNonce: number): fc.Arbitrary<Segment> {
  const frame = (
    version: fc.Arbitrary<number>,
    nonce: fc.Arbitrary<number>,
    data: fc.Arbitrary<number>,
  ) =>
    fc.record({
      kind: fc.constant("frame" as const),
      version,
      nonceSize: nonce,
      dataSize: data,
      fill: fc.nat(255),
    });
  return fc.oneof(
    { weight: 8, arbitrary: frame(fc.constant(2), fc.constant(expectedNonce), fc.nat(120)) },
    {
      weight: 1,
      arbitrary: frame(
        fc.constant(2),
        fc.constant(expectedNonce),
        fc.oneof(fc.integer({ min: 65500, max: 65535 }), fc.integer({ min: 4000, max: 5000 })),
      ),
    },
    {
      weight: 1,
      arbitrary: frame(fc.constantFrom(0, 1, 3, 255), fc.constant(expectedNonce), fc.nat(60)),
    },
    { weight: 1, arbitrary: frame(fc.constant(2), fc.constantFrom(0, 12, 13, 4096), fc.nat(60)) },
    { weight: 1, arbitrary: frame(fc.constant(2), fc.constant(expectedNonce), u32Extremes) },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant("garbage" as const),
        bytes: fc.uint8Array({ maxLength: 24 }),
      }),
    },
  );
}

/** Writes a segment; frames announce their sizes, and carry at most what fits a real frame. */
function materialize(segment: Segment): Uint8Array {
  if (segment.kind === "garbage") return segment.bytes;
  const body = Math.min(segment.nonceSize + segment.dataSize, 12 + MAX_DATA_SIZE);
  const out = new Uint8Array(9 + body);
  out.set(rawHeader(segment.version, segment.nonceSize, segment.dataSize));
  out.set(FILL.subarray(segment.fill, segment.fill + body), 9);
  return out;
}

/** Body bytes for generated frames: a fixed pseudo-random run, entered at a random offset. */
const FILL = new Rng(7).bytes(12 + MAX_DATA_SIZE + 256);

type StreamEnd = "eof" | "truncated" | "legacy" | "header";

/** The reference framer: what FrameReader must produce from `stream`. */
function referenceFrames(
  stream: Uint8Array,
  nonceSize: number,
  minData: number,
): { frames: [number, number][]; end: StreamEnd } {
  const frames: [number, number][] = [];
  let at = 0;
  for (;;) {
    const left = stream.byteLength - at;
    if (left === 0) return { frames, end: "eof" };
    if (left < 9) return { frames, end: "truncated" };
    const verdict = headerModel(stream.subarray(at, at + 9), nonceSize, minData);
    if (verdict === "legacy") return { frames, end: "legacy" };
    if (verdict === "bad") return { frames, end: "header" };
    const total = 9 + nonceSize +
      new DataView(stream.buffer, stream.byteOffset + at + 5, 4).getUint32(0);
    if (left < total) return { frames, end: "truncated" };
    frames.push([at, total]);
    at += total;
  }
}

/** Largest buffer the framer may ever hold, whatever the headers say. */
const FRAMER_BUFFER_LIMIT = MAX_FRAME_SIZE + 4096;

async function framerRun(
  stream: Uint8Array,
  cuts: number[],
  nonceSize: number,
  minData: number,
): Promise<string | null> {
  const expected = referenceFrames(stream, nonceSize, minData);
  const [writer, readerEnd] = memoryPair(splitAt(cuts));
  if (stream.byteLength > 0) await writer.write(stream);
  await writer.closeWrite();
  const reader = new FrameReader(readableOf(readerEnd));
  let index = 0;
  let end: StreamEnd;
  try {
    for (;;) {
      const frame = await reader.next(nonceSize, minData);
      if (!frame) {
        end = "eof";
        break;
      }
      const want = expected.frames[index++];
      if (!want) return "a frame the reference does not see";
      const got = concat([frame.header, frame.nonce, frame.data]);
      if (!equalBytes(got, stream.subarray(want[0], want[0] + want[1]))) {
        return `frame ${index - 1} differs from the stream`;
      }
      if (frame.data.buffer.byteLength > FRAMER_BUFFER_LIMIT) {
        return `buffer grew to ${frame.data.buffer.byteLength} bytes`;
      }
    }
  } catch (err) {
    if (err instanceof LegacyProtocolError) end = "legacy";
    else if (err instanceof FrameHeaderError) end = "header";
    else if (err instanceof TruncationError) end = "truncated";
    else return `unexpected ${describe(err)}`;
  } finally {
    await reader.cancel();
  }
  if (index !== expected.frames.length) {
    return `${index} frames where the reference has ${expected.frames.length}`;
  }
  return end === expected.end ? null : `ended "${end}" where the reference says "${expected.end}"`;
}

/** FrameReader matches the reference framer on random streams cut at random points. */
async function fuzzFramer(plan: FuzzPlan, row: RowBuilder): Promise<void> {
  const ends: Record<string, number> = {};
  let frames = 0;
  const arb = fc.constantFrom(...CONTEXTS).chain(([nonceSize, minData]) =>
    fc.record({
      context: fc.constant([nonceSize, minData] as const),
      segments: fc.array(segmentArb(nonceSize), { maxLength: 6 }),
      cuts: fc.array(fc.nat(), { maxLength: 8 }),
    })
  );
  const result = await fc.check(
    fc.asyncProperty(arb, async ({ context: [nonceSize, minData], segments, cuts }) => {
      const stream = concat(segments.map(materialize));
      const reference = referenceFrames(stream, nonceSize, minData);
      bump(ends, reference.end);
      frames += reference.frames.length;
      const problem = await framerRun(
        stream,
        cuts.map((c) => c % (stream.byteLength + 1)),
        nonceSize,
        minData,
      );
      if (problem) throw new Error(problem);
    }),
    { numRuns: plan.framerStreams, seed: plan.seed + 1 },
  );
  row.tried(result.numRuns);
  if (result.failed) {
    row.fail(
      `framer: ${result.errorInstance instanceof Error ? result.errorInstance.message : ""}`,
    );
  }
  row.set("framer_streams", result.numRuns);
  row.set("framer_frames", frames);
  row.set("framer_ends", histogramText(ends));
}

/**
 * A header announcing a huge or wrong size, then silence: FrameReader must
 * reject it from the 9 bytes alone, without waiting for (or making room for)
 * the body it announces.
 */
async function fuzzOversized(plan: FuzzPlan, row: RowBuilder): Promise<void> {
  const samples = fc.sample(
    fc.tuple(
      fc.constantFrom(...CONTEXTS),
      fc.oneof(
        fc.integer({ min: 65536, max: 0xffffffff }),
        fc.constantFrom(65536, 2 ** 31, 2 ** 32 - 1),
      ),
      fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 0xffffffff })),
    ),
    { numRuns: plan.oversized, seed: plan.seed + 2 },
  );
  let rejected = 0;
  for (const [[nonceSize, minData], dataSize, nonceOverride] of samples) {
    const announcedNonce = nonceOverride === -1 || nonceOverride === nonceSize
      ? nonceSize
      : nonceOverride;
    const [writer, readerEnd] = memoryPair();
    await writer.write(rawHeader(2, announcedNonce, dataSize)); // and never more, never EOF
    const reader = new FrameReader(readableOf(readerEnd));
    row.tried();
    try {
      await within(reader.next(nonceSize, minData), 2000, "an oversized header");
      row.fail(`a header with data_size ${dataSize} was accepted`);
    } catch (err) {
      if (err instanceof FrameHeaderError) rejected++;
      else row.fail(`oversized header: ${describe(err)}`);
    } finally {
      await reader.cancel();
    }
  }
  row.set("oversized_rejected_at_once", rejected);
}

// ---------------------------------------------------------------- handshake

/** Random and mutated Noise messages 1 and 2 never pass, and fail only with AuthenticationError. */
async function fuzzHandshakeMessages(
  plan: FuzzPlan,
  psk: Uint8Array,
  row: RowBuilder,
): Promise<void> {
  const messageArb = fc.oneof(
    fc.uint8Array({ maxLength: 200 }),
    fc.uint8Array({ minLength: 48, maxLength: 48 }),
    fc.uint8Array({ minLength: 32, maxLength: 32 }),
  );
  const samples = fc.sample(fc.tuple(messageArb, fc.boolean()), {
    numRuns: plan.handshakeMessages,
    seed: plan.seed + 3,
  });
  // Every position of a real message 1, each way of breaking it.
  const initiator = await NNpsk0Handshake.create("initiator", psk, PROLOGUE);
  const message1 = await initiator.writeMessage1();
  const rng = new Rng(plan.seed);
  const mutated: Uint8Array[] = [];
  for (let at = 0; at < message1.byteLength; at++) {
    for (const kind of MUTATION_KINDS) {
      const transform = mutateAt(kind, at, rng.int(1, 255));
      mutated.push(concat(transform(message1.slice())));
    }
  }
  const control = await NNpsk0Handshake.create("responder", psk, PROLOGUE);
  row.check(
    await Promise.resolve().then(() => control.readMessage1(message1)).then(
      () => true,
      () => false,
    ),
    "the unmutated message 1 was refused",
  );
  let refused = 0;
  const tryOne = async (message: Uint8Array, asMessage2: boolean) => {
    row.tried();
    try {
      if (asMessage2) {
        const hs = await NNpsk0Handshake.create("initiator", psk, PROLOGUE);
        await hs.writeMessage1();
        await hs.readMessage2(message);
      } else {
        const hs = await NNpsk0Handshake.create("responder", psk, PROLOGUE);
        await hs.readMessage1(message);
      }
      row.fail(`a ${message.byteLength}-byte forged message ${asMessage2 ? 2 : 1} was accepted`);
    } catch (err) {
      if (err instanceof AuthenticationError) refused++;
      else row.fail(`handshake message: ${describe(err)}`);
    }
  };
  await pool(samples.length, 8, (i) => tryOne(samples[i][0], samples[i][1]));
  await pool(mutated.length, 8, (i) => tryOne(mutated[i], false));
  row.set("handshake_messages_refused", refused);
}

// ---------------------------------------------------------------- sessions

/** Where each frame of the first exchange sits in each direction's stream. */
interface Layout {
  clientToServer: number;
  serverToClient: number;
  /** client -> server: message 1 and OPEN end here; the server must not have opened before. */
  openEnd: number;
}

const PAYLOAD = new TextEncoder().encode("0123456789abcdef");

async function measureLayout(psk: Uint8Array): Promise<Layout> {
  const [client, server] = memoryPair();
  const [c, s] = await Promise.all([
    runClient(client, psk, PAYLOAD, ROOMY),
    serveEcho(server, psk, ROOMY),
  ]);
  if (c.error || s.error || !equalBytes(c.received, PAYLOAD)) {
    throw new Error(`the unmutated session failed: ${describe(c.error ?? s.error)}`);
  }
  // message 1: 9 + 48; OPEN 0x00: 9 + 12 + 2 + 16.
  return { clientToServer: client.written, serverToClient: server.written, openEnd: 57 + 39 };
}

interface TrialReport {
  problem: string | null;
  serverError: string;
  clientError: string;
}

async function sessionTrial(
  psk: Uint8Array,
  c2s: StreamTransform | null,
  s2c: StreamTransform | null,
  limits = LIMITS,
): Promise<
  { client: Awaited<ReturnType<typeof runClient>>; server: Awaited<ReturnType<typeof serveEcho>> }
> {
  const [client, server] = memoryPair(c2s, s2c);
  const [c, s] = await within(
    Promise.all([runClient(client, psk, PAYLOAD, limits), serveEcho(server, psk, limits)]),
    TRIAL_BOUND_MS + limits.handshakeMs,
    "a fuzzed session",
  );
  return { client: c, server: s };
}

/**
 * One byte flipped, dropped, duplicated or inserted at every position of the
 * first frames, in each direction: the mutated session fails on at least one
 * side, with typed errors, never delivers a changed byte, and never gets an
 * OPEN accepted when the mutation sits in message 1 or OPEN.
 */
async function fuzzMutatedSessions(
  plan: FuzzPlan,
  psk: Uint8Array,
  layout: Layout,
  row: RowBuilder,
): Promise<void> {
  const rng = new Rng(plan.seed + 4);
  const trials: {
    direction: "c2s" | "s2c";
    kind: typeof MUTATION_KINDS[number];
    at: number;
    value: number;
  }[] = [];
  for (let pass = 0; pass < plan.mutationPasses; pass++) {
    for (const kind of MUTATION_KINDS) {
      for (let at = 0; at < layout.clientToServer; at++) {
        trials.push({ direction: "c2s", kind, at, value: rng.int(1, 255) });
      }
      for (let at = 0; at < layout.serverToClient; at++) {
        trials.push({ direction: "s2c", kind, at, value: rng.int(1, 255) });
      }
    }
  }
  const serverEnds: Record<string, number> = {};
  const clientEnds: Record<string, number> = {};
  await pool(trials.length, 32, async (i) => {
    const t = trials[i];
    const transform = mutateAt(t.kind, t.at, t.value);
    row.tried();
    const where = `${t.kind} at ${t.direction} byte ${t.at}`;
    let outcome;
    try {
      outcome = await sessionTrial(
        psk,
        t.direction === "c2s" ? transform : null,
        t.direction === "s2c" ? transform : null,
      );
    } catch (err) {
      row.fail(`${where}: ${describe(err)}`);
      return;
    }
    const { client, server } = outcome;
    bump(serverEnds, server.error === null ? "ok" : errorLabel(server.error));
    bump(clientEnds, client.error === null ? "ok" : errorLabel(client.error));
    // A byte duplicated after the last frame lies past the end of the session
    // (and inserting a copy of the last byte is the same duplication).
    const duplicated = t.kind === "duplicate" ||
      (t.kind === "insert" && transform.insertedCopy === true);
    const pastTheEnd = duplicated &&
      t.at === (t.direction === "c2s" ? layout.clientToServer : layout.serverToClient) - 1;
    if (!pastTheEnd) {
      row.check(
        server.error !== null || client.error !== null,
        `${where}: both sides ended cleanly`,
      );
    }
    row.check(isPrefix(client.received, PAYLOAD), `${where}: the client received changed bytes`);
    row.check(isTyped(server.error), `${where}: server ended with ${describe(server.error)}`);
    row.check(isTyped(client.error), `${where}: client ended with ${describe(client.error)}`);
    // (Duplicating the last byte of OPEN leaves OPEN intact and adds a byte after it.)
    if (t.direction === "c2s" && t.at < layout.openEnd - (duplicated ? 1 : 0)) {
      row.check(!server.opened, `${where}: the server accepted OPEN`);
    }
  });
  row.set("mutation_trials", trials.length);
  row.set("mutation_server_ends", histogramText(serverEnds));
  row.set("mutation_client_ends", histogramText(clientEnds));
}

function errorLabel(err: unknown): string {
  return typeof err === "string" ? err : errorName(err);
}

/** The same session cut into chunks at every boundary (and byte by byte) still works exactly. */
async function fuzzSplitSessions(psk: Uint8Array, layout: Layout, row: RowBuilder): Promise<void> {
  const trials: { c2s: StreamTransform | null; s2c: StreamTransform | null; what: string }[] = [];
  for (let at = 1; at < layout.clientToServer; at++) {
    trials.push({ c2s: splitAt([at]), s2c: null, what: `c2s split at ${at}` });
  }
  for (let at = 1; at < layout.serverToClient; at++) {
    trials.push({ c2s: null, s2c: splitAt([at]), what: `s2c split at ${at}` });
  }
  trials.push({ c2s: byteByByte(), s2c: byteByByte(), what: "byte by byte" });
  await pool(trials.length, 32, async (i) => {
    const t = trials[i];
    row.tried();
    try {
      const { client, server } = await sessionTrial(psk, t.c2s, t.s2c, ROOMY);
      row.check(
        client.error === null && server.error === null && equalBytes(client.received, PAYLOAD),
        `${t.what}: ${describe(client.error ?? server.error ?? "echo differs")}`,
      );
    } catch (err) {
      row.fail(`${t.what}: ${describe(err)}`);
    }
  });
  row.set("split_trials", trials.length);
}

// ---------------------------------------------------------------- state machine model

interface Message {
  type: number;
  body: Uint8Array;
}

const bytesArb = (max: number) => fc.uint8Array({ maxLength: max });

/** Messages a hostile peer might send after the handshake, valid or not. */
const messageArb: fc.Arbitrary<Message> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      type: fc.constant(3),
      body: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ type: fc.constant(3), body: fc.constant(new Uint8Array(0)) }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ type: fc.constant(4), body: fc.constant(new Uint8Array(0)) }),
  },
  { weight: 2, arbitrary: fc.record({ type: fc.constant(5), body: bytesArb(12) }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constant(6), body: bytesArb(8) }) },
  { weight: 1, arbitrary: fc.record({ type: fc.constantFrom(1, 2), body: bytesArb(4) }) },
  {
    weight: 1,
    arbitrary: fc.record({
      type: fc.constant(7),
      body: fc.uint8Array({ minLength: 1, maxLength: 4 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      type: fc.constant(8),
      body: fc.tuple(fc.nat(9), bytesArb(20)).map(([c, t]) => concat([Uint8Array.of(c), t])),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ type: fc.constantFrom(0, 9, 10, 128, 255), body: bytesArb(4) }),
  },
);

/** Messages of a session that keeps the rules, ending with CLOSE. */
const wellFormedArb: fc.Arbitrary<Message[]> = fc.array(
  fc.oneof(
    fc.record({ type: fc.constant(3), body: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
    fc.record({ type: fc.constant(5), body: bytesArb(8) }),
    fc.record({ type: fc.constant(6), body: bytesArb(8) }),
  ),
  { maxLength: 8 },
).map((messages) => [...messages, { type: 4, body: new Uint8Array(0) }]);

/** What the receiving side must do with a sequence of messages. */
interface Expected {
  /** Bytes it must echo (server) or deliver (client), in order. */
  data: Uint8Array;
  pongs: Uint8Array[];
  /** PONGs that must come: those for PINGs before the peer's CLOSE (later ones race the end). */
  requiredPongs: number;
  /**
   * "clean": both CLOSEs; "violation": ERROR 1; "remote": it got ERROR; "eof":
   * the stream just ended; "late": a violation or ERROR after the peer's
   * CLOSE, which a server that finished its echo first never reads.
   */
  end: "clean" | "violation" | "remote" | "eof" | "late";
  /** Server only: it answers OPEN_OK. */
  openOk: boolean;
}

/** The transport rules of the protocol (section 3), as a model. */
function model(messages: Message[], side: "server" | "client"): Expected {
  const data: Uint8Array[] = [];
  const pongs: Uint8Array[] = [];
  let awaitingOpenOk = side === "client";
  let closed = false;
  let openOk = false;
  let start = 0;
  let requiredPongs = 0;
  if (side === "server") {
    const first = messages[0];
    if (!first || first.type !== MessageType.open || !equalBytes(first.body, Uint8Array.of(0))) {
      return { data: new Uint8Array(0), pongs, requiredPongs, end: "eof", openOk: false };
    }
    openOk = true;
    start = 1;
  }
  const result = (end: Expected["end"]): Expected => ({
    data: concat(data),
    pongs,
    requiredPongs,
    end: closed && (end === "violation" || end === "remote") ? "late" : end,
    openOk,
  });
  for (const { type, body } of messages.slice(start)) {
    // A client's session is over once both CLOSEs crossed (its own went first).
    if (side === "client" && closed) break;
    switch (type) {
      case MessageType.data:
        if (awaitingOpenOk || closed || body.byteLength === 0) return result("violation");
        data.push(body);
        break;
      case MessageType.close:
        if (body.byteLength !== 0 || awaitingOpenOk || closed) return result("violation");
        closed = true;
        break;
      case MessageType.ping:
        if (body.byteLength > 8) return result("violation");
        pongs.push(body);
        if (!closed) requiredPongs = pongs.length;
        break;
      case MessageType.pong:
        // The side under test never PINGs here, so every PONG answers nothing.
        return result("violation");
      case MessageType.openOk:
        if (body.byteLength !== 0 || !awaitingOpenOk) return result("violation");
        awaitingOpenOk = false;
        break;
      case MessageType.error:
        return result("remote");
      default:
        return result("violation");
    }
  }
  return result(closed ? "clean" : "eof");
}

/** What the harness peer saw coming back. */
interface Observed {
  data: Uint8Array;
  pongs: Uint8Array[];
  openOk: boolean;
  close: boolean;
  errorCode: number | null;
}

/** Sends `messages` over a real channel as a hostile client, then reads all the server says. */
async function hostileClient(
  channel: SecureChannel,
  messages: Message[],
  keepOpen: boolean,
): Promise<Observed> {
  const seen: Observed = {
    data: new Uint8Array(0),
    pongs: [],
    openOk: false,
    close: false,
    errorCode: null,
  };
  const data: Uint8Array[] = [];
  for (const m of messages) channel.send(m.type, m.body).catch(() => {});
  await channel.flush().catch(() => {});
  if (!keepOpen) await channel.conn.closeWrite().catch(() => {});
  try {
    for (;;) {
      const m = await channel.receive();
      if (!m) break;
      if (m.type === MessageType.data) data.push(m.body.slice());
      else if (m.type === MessageType.pong) seen.pongs.push(m.body.slice());
      else if (m.type === MessageType.openOk) seen.openOk = true;
      else if (m.type === MessageType.close) seen.close = true;
      else if (m.type === MessageType.error) {
        seen.errorCode = m.body[0] ?? null;
        break;
      }
    }
  } catch {
    // The server dropped the connection: what was seen so far is the observation.
  }
  channel.close();
  seen.data = concat(data);
  return seen;
}

/** PONGs answer PINGs in order; at least `required` of them must have come. */
function pongsMatch(got: Uint8Array[], want: Uint8Array[], required: number): boolean {
  if (got.length > want.length || got.length < required) return false;
  return got.every((p, i) => equalBytes(p, want[i]));
}

/** The server's session state machine against random message sequences, checked against the model. */
async function fuzzServerModel(plan: FuzzPlan, psk: Uint8Array, row: RowBuilder): Promise<void> {
  const arb = fc.record({
    first: fc.oneof(
      { weight: 6, arbitrary: fc.constant({ type: 1, body: Uint8Array.of(0) }) },
      { weight: 1, arbitrary: messageArb },
      { weight: 1, arbitrary: fc.record({ type: fc.constant(1), body: bytesArb(8) }) },
    ),
    rest: fc.oneof(fc.array(messageArb, { maxLength: 10 }), wellFormedArb),
    rekeyBytes: fc.oneof(fc.constant(2 ** 30), fc.integer({ min: 1, max: 200 })),
  });
  const cases = fc.sample(arb, { numRuns: plan.modelSequences, seed: plan.seed + 5 });
  const ends: Record<string, number> = {};
  await pool(cases.length, 16, async (i) => {
    const { first, rest, rekeyBytes } = cases[i];
    const messages = [first, ...rest];
    const want = model(messages, "server");
    bump(ends, want.end);
    row.tried();
    const [clientEnd, serverEnd] = memoryPair();
    try {
      const [seen, server] = await within(
        Promise.all([
          SecureChannel.handshake(clientEnd, psk, "initiator", { rekeyBytes }).then((channel) =>
            hostileClient(channel, messages, want.end === "clean" || want.end === "late")
          ),
          serveEcho(serverEnd, psk, ROOMY),
        ]),
        TRIAL_BOUND_MS + ROOMY.handshakeMs,
        "a model sequence",
      );
      const what = `sequence ${messages.map((m) => m.type).join(",")}`;
      row.check(
        seen.openOk === want.openOk,
        `${what}: OPEN_OK ${seen.openOk}, model ${want.openOk}`,
      );
      row.check(isTyped(server.error), `${what}: server ended with ${describe(server.error)}`);
      // The server's CLOSE follows all of its echoes: whoever sees it has them all.
      row.check(
        !seen.close || equalBytes(seen.data, want.data),
        `${what}: CLOSE before all echoes`,
      );
      row.check(isPrefix(seen.data, want.data), `${what}: echoed bytes that were not sent`);
      row.check(
        pongsMatch(seen.pongs, want.pongs, want.end === "clean" ? want.requiredPongs : 0),
        `${what}: wrong PONGs`,
      );
      if (want.end === "clean") {
        row.check(
          seen.close && server.error === null,
          `${what}: a valid session did not end cleanly`,
        );
      } else if (want.end === "violation") {
        row.check(!seen.close, `${what}: CLOSE for a session with a violation`);
        row.check(seen.errorCode === 1, `${what}: no ERROR 1 for a violation (${seen.errorCode})`);
      } else if (want.end === "late") {
        row.check(seen.close || seen.errorCode === 1 || server.error !== null, `${what}: no end`);
      } else {
        row.check(!seen.close && server.error !== null, `${what}: ${want.end} ended cleanly`);
      }
    } catch (err) {
      row.fail(`model sequence: ${describe(err)}`);
    } finally {
      clientEnd.closed || clientEnd.close();
    }
  });
  row.set("model_server_sequences", cases.length);
  row.set("model_server_expected", histogramText(ends));
}

/** The client's session state machine against a hostile server, checked against the model. */
async function fuzzClientModel(plan: FuzzPlan, psk: Uint8Array, row: RowBuilder): Promise<void> {
  const arb = fc.record({
    first: fc.oneof(
      { weight: 5, arbitrary: fc.constant({ type: 2, body: new Uint8Array(0) }) },
      { weight: 1, arbitrary: messageArb },
    ),
    rest: fc.oneof(fc.array(messageArb, { maxLength: 10 }), wellFormedArb),
  });
  const cases = fc.sample(arb, { numRuns: plan.modelSequences, seed: plan.seed + 6 });
  const ends: Record<string, number> = {};
  await pool(cases.length, 16, async (i) => {
    const messages = [cases[i].first, ...cases[i].rest];
    const want = model(messages, "client");
    bump(ends, want.end);
    row.tried();
    const what = `sequence ${messages.map((m) => m.type).join(",")}`;
    const [clientEnd, serverEnd] = memoryPair();
    try {
      const serverSide = SecureChannel.handshake(serverEnd, psk, "responder").then(
        async (channel) => {
          const open = await channel.receive();
          const seen = await hostileClient(channel, messages, want.end === "clean");
          return { open, seen };
        },
      );
      const clientSide = SecureChannel.handshake(clientEnd, psk, "initiator").then(
        async (channel) => {
          const session = Session.open(channel, SERVICE_TARGET);
          const opened = session.opened.then(() => true, () => false);
          await session.writable.close().catch(() => {});
          const chunks: Uint8Array[] = [];
          let readable = "closed";
          try {
            for await (const chunk of session.readable) chunks.push(chunk.slice());
          } catch {
            readable = "errored";
          }
          const summary = await session.ended;
          return {
            data: concat(chunks),
            readable,
            opened: await opened,
            error: summary.error,
          };
        },
      );
      const [server, client] = await within(
        Promise.all([serverSide, clientSide]),
        TRIAL_BOUND_MS + ROOMY.handshakeMs,
        "a client model sequence",
      );
      row.check(
        server.open?.type === MessageType.open,
        `${what}: the client did not send OPEN first`,
      );
      row.check(isTyped(client.error), `${what}: client ended with ${describe(client.error)}`);
      if (want.end === "clean") {
        row.check(
          client.error === null && client.opened && equalBytes(client.data, want.data) &&
            pongsMatch(server.seen.pongs, want.pongs, want.requiredPongs),
          `${what}: a valid session failed (${describe(client.error)})`,
        );
      } else {
        row.check(client.error !== null, `${what}: ended cleanly, the model says ${want.end}`);
        row.check(isPrefix(client.data, want.data), `${what}: delivered bytes that were not sent`);
        if (want.end === "violation") {
          row.check(
            client.error instanceof ProtocolError && server.seen.errorCode === 1,
            `${what}: a violation ended as ${
              describe(client.error)
            }, ERROR ${server.seen.errorCode}`,
          );
        }
        if (want.end === "remote") {
          row.check(
            client.error instanceof RemoteError,
            `${what}: ERROR became ${describe(client.error)}`,
          );
        }
      }
    } catch (err) {
      row.fail(`client model: ${describe(err)}`);
    } finally {
      serverEnd.closed || serverEnd.close();
    }
  });
  row.set("model_client_sequences", cases.length);
  row.set("model_client_expected", histogramText(ends));
}

/** Runs every in-process fuzzer; one row per area. */
export async function fuzzInProcess(plan: FuzzPlan): Promise<Row[]> {
  const psk = crypto.getRandomValues(new Uint8Array(32));
  const trap = new EscapeTrap();
  trap.install();
  const rows: Row[] = [];
  try {
    const timed = async (
      tried: string,
      run: (row: RowBuilder) => Promise<void> | void,
    ): Promise<RowBuilder> => {
      const row = new RowBuilder("fuzz", tried);
      const started = performance.now();
      const before = trap.escapes.length;
      try {
        await run(row);
      } catch (err) {
        row.fail(`fuzzer stopped: ${describe(err)}`);
      }
      for (const escape of trap.escapes.slice(before)) row.fail(escape);
      row.set("seconds", Math.round((performance.now() - started) / 100) / 10);
      rows.push(row.done());
      return row;
    };
    await timed("header codec: random and extreme 9-byte headers vs a model", (row) => {
      fuzzHeaders(plan, row);
      const d = row.done().data;
      row.figures(`${d.header_outcomes}`);
    });
    await timed(
      "framer: random frame streams cut at random points vs a reference framer",
      async (row) => {
        await fuzzFramer(plan, row);
        const d = row.done().data;
        row.figures(
          `${d.framer_frames} frames; ends: ${d.framer_ends}; buffer ≤ ${FRAMER_BUFFER_LIMIT} B`,
        );
      },
    );
    await timed(
      "framer: header announcing 64 KiB to 4 GiB (or a wrong nonce size), then silence",
      async (row) => {
        await fuzzOversized(plan, row);
        row.figures(
          `${row.done().data.oversized_rejected_at_once} rejected from the 9 header bytes`,
        );
      },
    );
    await timed(
      "handshake: random messages 1 and 2; message 1 mutated at every byte",
      async (row) => {
        await fuzzHandshakeMessages(plan, psk, row);
        row.figures(`${row.done().data.handshake_messages_refused} refused (AuthenticationError)`);
      },
    );
    const layout = await measureLayout(psk);
    await timed(
      `sessions: 1 byte flipped/dropped/duplicated/inserted at every position of the first ${layout.clientToServer}+${layout.serverToClient} bytes, both ways`,
      async (row) => {
        await fuzzMutatedSessions(plan, psk, layout, row);
        const d = row.done().data;
        row.figures(`server: ${d.mutation_server_ends}; client: ${d.mutation_client_ends}`);
      },
    );
    await timed(
      "sessions: split into two chunks at every boundary, and byte by byte",
      async (row) => {
        await fuzzSplitSessions(psk, layout, row);
        row.figures("all echoed exactly");
      },
    );
    await timed(
      "transport state machine: random message sequences vs the protocol model (server, client)",
      async (row) => {
        await fuzzServerModel(plan, psk, row);
        await fuzzClientModel(plan, psk, row);
        const d = row.done().data;
        row.figures(`server: ${d.model_server_expected}; client: ${d.model_client_expected}`);
      },
    );
  } finally {
    trap.remove();
  }
  return rows;
}
