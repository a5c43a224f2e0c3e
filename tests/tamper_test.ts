/**
 * Authentication and tampering over real TCP on 127.0.0.1: a wrong key on
 * either side, a replayed handshake, a recorded session replayed with one bit
 * flipped at every byte (towards the server and towards the client), and the
 * same flips made in flight on live sessions by a relay in the middle. No
 * tampered or replayed frame may make the server connect upstream, count a
 * session, or deliver data.
 * @module
 */

import { concat } from "../lib/base/bytes.ts";
import assert from "node:assert/strict";
import { forward } from "../lib/tunnel/client.ts";
import { closeQuietly, readableOf, writeAll } from "../lib/protocol/conn.ts";
import {
  AuthenticationError,
  ProtocolError,
  RemoteError,
  TimeoutError,
  TruncationError,
} from "../lib/base/errors.ts";
import {
  encodeHeader,
  HANDSHAKE_NONCE_SIZE,
  HEADER_SIZE,
  TAG_SIZE,
} from "../lib/protocol/frame.ts";
import { FrameReader } from "../lib/protocol/framer.ts";
import { NNpsk0Handshake } from "../lib/protocol/noise.ts";
import { PROLOGUE } from "../lib/protocol/channel.ts";
import { randomBytes, readToEnd } from "./helpers.ts";
import { type Flip as RelayFlip, Relay, startServer, Upstream } from "./server_fixture.ts";

const LOCAL = "127.0.0.1";
/** Handshake messages: a 32-byte ephemeral key and an empty payload's tag. */
const HANDSHAKE_DATA = 32 + TAG_SIZE;
const HANDSHAKE_FRAME = HEADER_SIZE + HANDSHAKE_DATA;
/** DATA payload of the recorded and the live sessions. */
const PAYLOAD_SIZE = 16;
/** How many tamper cases run at once. */
const BATCH = 12;

/** Runs `run` for every item, `width` at a time. */
async function inBatches<T>(items: T[], width: number, run: (item: T) => Promise<void>) {
  for (let at = 0; at < items.length; at += width) {
    await Promise.all(items.slice(at, at + width).map(run));
  }
}

/** The bit a test flips at byte `offset`: a different one from byte to byte. */
const flipMask = (offset: number) => 1 << (offset % 8);

function flipped(bytes: Uint8Array, offset: number): Uint8Array {
  const copy = bytes.slice();
  copy[offset] ^= flipMask(offset);
  return copy;
}

/** A named frame's byte range in a recorded stream. */
interface Span {
  name: string;
  start: number;
  end: number;
}

/** Splits a recorded stream into its frames, which must be exactly `names`. */
function frameSpans(stream: Uint8Array, names: string[]): Span[] {
  const spans: Span[] = [];
  let at = 0;
  while (at < stream.byteLength) {
    const view = new DataView(stream.buffer, stream.byteOffset + at, HEADER_SIZE);
    const end = at + HEADER_SIZE + view.getUint32(1) + view.getUint32(5);
    spans.push({ name: names[spans.length], start: at, end });
    at = end;
  }
  assert.equal(at, stream.byteLength, "the recording ends on a frame boundary");
  assert.equal(spans.length, names.length, `frames: ${names.join(", ")}`);
  return spans;
}

/** The kind of a client failure, for a summary of what the flips caused. */
function kindOf(err: unknown): string {
  for (
    const kind of [AuthenticationError, ProtocolError, TruncationError, TimeoutError, RemoteError]
  ) {
    if (err instanceof kind) return kind.name;
  }
  return err instanceof Error ? err.name : String(err);
}

const spanAt = (spans: Span[], offset: number) =>
  spans.find((s) => offset >= s.start && offset < s.end)!;

/** Which byte of which direction a relay flips: "up" is client to server. */
type Flip = Omit<RelayFlip, "mask">;

/** Sends `bytes` as a raw client, half-closes, and resolves all the server sent before it closed. */
async function replay(port: number, bytes: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: LOCAL, port });
  try {
    try {
      await writeAll(conn, bytes);
      await conn.closeWrite();
    } catch {
      // Dropped while we were still writing: what we read tells the rest.
    }
    return await readToEnd(conn, { resetEnds: true });
  } finally {
    closeQuietly(conn);
  }
}

/** A genuine session's two byte streams: message 1, OPEN, DATA, CLOSE and the answers. */
interface Recording {
  key: Uint8Array;
  up: Uint8Array;
  down: Uint8Array;
  upSpans: Span[];
  downSpans: Span[];
}

/** Records one genuine forward() of PAYLOAD_SIZE bytes through an echo server. */
async function recordSession(): Promise<Recording> {
  const key = randomBytes(32);
  const { server } = await startServer({}, key);
  const relay = new Relay(server.addr.port);
  try {
    const payload = randomBytes(PAYLOAD_SIZE);
    assert.deepEqual(await forward(payload, { server: relay.address, key }), payload);
  } finally {
    await relay.close();
    await server.shutdown();
  }
  const up = concat(relay.recordings[0].up);
  const down = concat(relay.recordings[0].down);
  return {
    key,
    up,
    down,
    upSpans: frameSpans(up, ["message 1", "OPEN", "DATA", "CLOSE"]),
    downSpans: frameSpans(down, ["message 2", "OPEN_OK", "DATA", "CLOSE"]),
  };
}

/**
 * What a server may answer a replayed or tampered client stream: nothing, or
 * message 2 and then at most one more frame that is not an OPEN_OK (an ERROR
 * carries at least a code byte, so its data_size is above OPEN_OK's 17).
 */
function assertNothingPastHandshake(reply: Uint8Array, what: string): void {
  if (reply.byteLength === 0) return;
  const header = new Uint8Array(HEADER_SIZE);
  encodeHeader(header, HANDSHAKE_NONCE_SIZE, HANDSHAKE_DATA);
  assert.deepEqual(reply.subarray(0, HEADER_SIZE), header, `${what}: a handshake frame`);
  const rest = reply.subarray(HANDSHAKE_FRAME);
  if (rest.byteLength === 0) return;
  const view = new DataView(rest.buffer, rest.byteOffset);
  const dataSize = view.getUint32(5);
  assert.ok(dataSize > 1 + TAG_SIZE, `${what}: no OPEN_OK after message 2`);
  assert.equal(rest.byteLength, HEADER_SIZE + view.getUint32(1) + dataSize, `${what}: one frame`);
}

Deno.test("wrong key: the client gets AuthenticationError; the server logs it, counts no session, never connects upstream", async () => {
  const upstream = new Upstream("echo");
  const key = randomBytes(32);
  const { server, log, address } = await startServer({ forward: upstream.address }, key);
  try {
    await assert.rejects(
      forward(randomBytes(100), { server: address, key: randomBytes(32) }),
      AuthenticationError,
    );
    assert.match(await log.waitFor(/handshake failed/), /the client does not hold the same key/);
    assert.equal(server.stats.handshakesFailed, 1);
    assert.equal(server.stats.handshakesOk, 0);
    assert.equal(server.stats.sessionsTotal, 0);

    // The right key works, and is the first connection upstream ever saw
    // (the kernel queues connections in order: an earlier one would be first).
    const payload = randomBytes(100);
    assert.deepEqual(await forward(payload, { server: address, key }), payload);
    assert.equal(upstream.received.length, 1);
    assert.deepEqual(concat(upstream.received[0]), payload);
    assert.equal(server.stats.sessionsTotal, 1);
  } finally {
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("wrong key: a server holding another key makes the client say the server does not hold the same key", async () => {
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const impostor = (async () => {
    const conn = await listener.accept();
    try {
      const frames = new FrameReader(readableOf(conn));
      const hello = await frames.next(HANDSHAKE_NONCE_SIZE, HANDSHAKE_DATA);
      assert.ok(hello, "the client sent message 1");
      const handshake = await NNpsk0Handshake.create("responder", randomBytes(32), PROLOGUE);
      // Another key cannot read message 1; answer with its own message 2 regardless.
      await assert.rejects(
        async () => await handshake.readMessage1(hello.data.slice()),
        AuthenticationError,
      );
      const message2 = await handshake.writeMessage2();
      const frame = new Uint8Array(HEADER_SIZE + message2.byteLength);
      encodeHeader(frame, HANDSHAKE_NONCE_SIZE, message2.byteLength);
      frame.set(message2, HEADER_SIZE);
      await writeAll(conn, frame);
      assert.equal(
        await frames.next(HANDSHAKE_NONCE_SIZE, 0),
        null,
        "the client sent nothing more",
      );
    } finally {
      closeQuietly(conn);
    }
  })();
  try {
    await assert.rejects(
      forward(randomBytes(10), {
        server: { host: LOCAL, port: listener.addr.port },
        key: randomBytes(32),
      }),
      (err) => {
        assert.ok(err instanceof AuthenticationError);
        assert.match(err.message, /the server does not hold the same key/);
        return true;
      },
    );
  } finally {
    await impostor;
    listener.close();
  }
});

Deno.test("replayed handshake: a whole recorded client stream gets message 2, then is dropped at OPEN; nothing goes upstream", async () => {
  const recording = await recordSession();
  const upstream = new Upstream("echo");
  const { server, log, address } = await startServer({
    forward: upstream.address,
  }, recording.key);
  try {
    const reply = await replay(address.port, recording.up);
    assert.equal(reply.byteLength, HANDSHAKE_FRAME, "message 2 and nothing else");
    assertNothingPastHandshake(reply, "replay");
    assert.notDeepEqual(
      reply,
      recording.down.subarray(0, HANDSHAKE_FRAME),
      "a fresh message 2, not the recorded one",
    );
    assert.match(await log.waitFor(/handshake failed/), /did not decrypt/);
    assert.equal(server.stats.handshakesOk, 0);
    assert.equal(server.stats.sessionsTotal, 0);
  } finally {
    await server.shutdown();
    await upstream.close();
  }
  assert.equal(upstream.received.length, 0, "no upstream connection");
});

Deno.test("replay: the recorded client frames with one bit flipped at any byte are dropped, nothing goes upstream, and the server keeps serving", async () => {
  const recording = await recordSession();
  const upstream = new Upstream("echo");
  const { server, address } = await startServer({ forward: upstream.address }, recording.key);
  try {
    const offsets = [...recording.up.keys()];
    await inBatches(offsets, BATCH, async (offset) => {
      const frame = spanAt(recording.upSpans, offset).name;
      const what = `flip at ${offset} (${frame})`;
      const reply = await replay(address.port, flipped(recording.up, offset));
      if (frame === "message 1") {
        assert.equal(reply.byteLength, 0, `${what}: an unreadable message 1 gets no answer at all`);
      } else assertNothingPastHandshake(reply, what);
    });
    assert.equal(server.stats.handshakesFailed, offsets.length, "every replay failed");
    assert.equal(server.stats.handshakesTimedOut, 0, "each was dropped, none waited out");
    assert.equal(server.stats.handshakesOk, 0);
    assert.equal(server.stats.sessionsTotal, 0);

    const payload = randomBytes(1000);
    assert.deepEqual(await forward(payload, { server: address, key: recording.key }), payload);
    assert.equal(upstream.received.length, 1, "only the legitimate client reached upstream");
    assert.deepEqual(concat(upstream.received[0]), payload);
  } finally {
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("replay: a fake server replaying a recorded server stream, intact or flipped at any byte, fails the client", async () => {
  const recording = await recordSession();
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const server = { host: LOCAL, port: listener.addr.port };
  /** Answers one client's message 1 with `reply`, then waits for it to go. */
  const serveOnce = async (reply: Uint8Array) => {
    const conn = await listener.accept();
    try {
      const hello = new Uint8Array(HANDSHAKE_FRAME);
      for (let at = 0; at < hello.byteLength;) {
        const n = await conn.read(hello.subarray(at));
        assert.ok(n !== null, "the client sent message 1");
        at += n;
      }
      await writeAll(conn, reply);
      await conn.closeWrite();
      await readToEnd(conn, { resetEnds: true });
    } finally {
      closeQuietly(conn);
    }
  };
  try {
    const cases: (number | null)[] = [null, ...recording.down.keys()];
    for (const offset of cases) {
      const reply = offset === null ? recording.down : flipped(recording.down, offset);
      const what = offset === null
        ? "intact replay"
        : `flip at ${offset} (${spanAt(recording.downSpans, offset).name})`;
      const served = serveOnce(reply);
      const failure = await forward(randomBytes(PAYLOAD_SIZE), {
        server,
        key: recording.key,
      }).then(() => assert.fail(`${what}: the client accepted it`), (err: unknown) => err);
      await served;
      if (offset !== null && offset < 5) {
        // version and nonce_size: the header alone condemns the frame.
        assert.ok(failure instanceof ProtocolError, `${what}: ${failure}`);
      } else if (offset !== null && offset < HEADER_SIZE) {
        // data_size: too large, too small, or reaching into bytes that never come.
        assert.ok(
          failure instanceof ProtocolError || failure instanceof AuthenticationError ||
            failure instanceof TruncationError,
          `${what}: ${failure}`,
        );
      } else {
        // Message 2 answers another ephemeral key (and may be tampered too).
        assert.ok(failure instanceof AuthenticationError, `${what}: ${failure}`);
        assert.match(failure.message, /the server does not hold the same key/);
      }
    }
  } finally {
    listener.close();
  }
});

/**
 * One live session through a relay that flips one bit in flight; resolves
 * the client's failure and what the server and its upstream saw.
 */
async function liveTamper(key: Uint8Array, flip: Flip) {
  const upstream = new Upstream("echo");
  const { server, log } = await startServer({
    forward: upstream.address,
    handshakeTimeoutMs: 500,
    idleTimeoutMs: 500,
    drainTimeoutMs: 1000,
  }, key);
  const relay = new Relay(server.addr.port, { ...flip, mask: flipMask(flip.offset) });
  const payload = randomBytes(PAYLOAD_SIZE);
  let failure: unknown = null;
  try {
    await forward(payload, {
      server: relay.address,
      key,
      handshakeTimeoutMs: 1000,
      idleTimeoutMs: 500,
    });
  } catch (err) {
    failure = err;
  } finally {
    await relay.close();
    await server.shutdown();
    await upstream.close();
  }
  return {
    failure,
    payload,
    stats: server.stats,
    upstream: upstream.received.map(concat),
    cleanEnds: log.lines.filter((l) => /session end .*outcome=ok/.test(l)).length,
  };
}

Deno.test("live tamper: one bit flipped in flight at any byte of the client's frames fails the session, and nothing tampered goes upstream", async () => {
  const recording = await recordSession();
  const failures = new Set<string>();
  await inBatches([...recording.up.keys()], BATCH, async (offset) => {
    const frame = spanAt(recording.upSpans, offset).name;
    const what = `flip at ${offset} (${frame})`;
    const seen = await liveTamper(recording.key, { direction: "up", offset });
    assert.ok(seen.failure instanceof Error, `${what}: the client must fail`);
    failures.add(kindOf(seen.failure));
    assert.equal(seen.cleanEnds, 0, `${what}: no session ended cleanly`);
    if (frame === "message 1" || frame === "OPEN") {
      assert.equal(seen.stats.handshakesOk, 0, `${what}: no handshake completed`);
      assert.equal(seen.stats.sessionsTotal, 0, `${what}: no session counted`);
      assert.deepEqual(seen.upstream, [], `${what}: no upstream connection`);
    } else if (frame === "DATA") {
      for (const got of seen.upstream) {
        assert.equal(got.byteLength, 0, `${what}: upstream got no data`);
      }
    } else {
      // Only CLOSE was hit: the genuine DATA before it may have been passed on.
      for (const got of seen.upstream) {
        if (got.byteLength > 0) assert.deepEqual(got, seen.payload, `${what}: only genuine data`);
      }
    }
  });
  assert.ok(failures.has("AuthenticationError"), `failures seen: ${[...failures]}`);
});

Deno.test("live tamper: one bit flipped in flight at any byte of the server's frames fails the client, which returns no data", async () => {
  const recording = await recordSession();
  const failures = new Set<string>();
  await inBatches([...recording.down.keys()], BATCH, async (offset) => {
    const frame = spanAt(recording.downSpans, offset).name;
    const what = `flip at ${offset} (${frame})`;
    const seen = await liveTamper(recording.key, { direction: "down", offset });
    assert.ok(seen.failure instanceof Error, `${what}: the client must fail, not return data`);
    failures.add(kindOf(seen.failure));
    if (frame === "message 2") {
      assert.equal(seen.stats.sessionsTotal, 0, `${what}: the client never sent OPEN`);
      assert.deepEqual(seen.upstream, [], `${what}: no upstream connection`);
    }
  });
  assert.ok(failures.has("AuthenticationError"), `failures seen: ${[...failures]}`);
  assert.ok(failures.has("ProtocolError"), `failures seen: ${[...failures]}`);
});
