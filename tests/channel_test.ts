/**
 * The secure channel and sessions end to end over real TCP on 127.0.0.1:
 * echo through TunnelServer at the DATA-frame size edges (frames counted on
 * the wire) and in bulk, many concurrent sessions, the counter rules (gaps
 * and replays), truncation on both sides, REKEY and PING/PONG.
 * @module
 */

import { concat } from "../lib/base/bytes.ts";
import assert from "node:assert/strict";
import { PROLOGUE, SecureChannel } from "../lib/protocol/channel.ts";
import { MessageType } from "../lib/protocol/messages.ts";
import { connect, forward } from "../lib/tunnel/client.ts";
import { closeQuietly, readableOf, writeAll } from "../lib/protocol/conn.ts";
import { ErrorCode, ProtocolError, TruncationError } from "../lib/base/errors.ts";
import {
  encodeHeader,
  HANDSHAKE_NONCE_SIZE,
  HEADER_SIZE,
  MAX_DATA_BODY,
  MAX_DATA_SIZE,
  TAG_SIZE,
  TRANSPORT_NONCE_SIZE,
} from "../lib/protocol/frame.ts";
import { FrameReader } from "../lib/protocol/framer.ts";
import { type CipherState, counterNonce, NNpsk0Handshake } from "../lib/protocol/noise.ts";
import { receiveOpen, Session } from "../lib/tunnel/session.ts";
import type { HostPort } from "../lib/protocol/hostport.ts";
import { randomBytes, rejectsWith, sha256Hex } from "./helpers.ts";
import { Relay, startServer, Upstream } from "./server_fixture.ts";
import { within } from "./process.ts";

const LOCAL = "127.0.0.1";
const MiB = 1024 * 1024;
const encoder = new TextEncoder();
/** data_size of a transport frame carrying `body`: type byte, body, tag. */
const sealedSize = (body: number) => 1 + body + TAG_SIZE;

async function readAll(readable: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of readable) chunks.push(chunk);
  return concat(chunks);
}

/** The header sizes of each frame in a recorded byte stream, which must end on a frame. */
function frameSizes(stream: Uint8Array): { nonceSize: number; dataSize: number }[] {
  const sizes = [];
  let at = 0;
  while (at < stream.byteLength) {
    const view = new DataView(stream.buffer, stream.byteOffset + at, HEADER_SIZE);
    assert.equal(view.getUint8(0), 2, `version byte of the frame at ${at}`);
    const nonceSize = view.getUint32(1);
    const dataSize = view.getUint32(5);
    sizes.push({ nonceSize, dataSize });
    at += HEADER_SIZE + nonceSize + dataSize;
  }
  assert.equal(at, stream.byteLength, "the recording ends on a frame boundary");
  return sizes;
}

/**
 * A client driven by hand from lib/protocol/noise.ts and lib/protocol/frame.ts, so that a test
 * chooses each frame's counter: the lib's channel never skips or repeats one.
 */
class HandDrivenClient {
  readonly conn: Deno.TcpConn;
  readonly #frames: FrameReader;
  readonly #send: CipherState;
  readonly #receive: CipherState;

  private constructor(
    conn: Deno.TcpConn,
    frames: FrameReader,
    send: CipherState,
    receive: CipherState,
  ) {
    this.conn = conn;
    this.#frames = frames;
    this.#send = send;
    this.#receive = receive;
  }

  /** Connects and completes the handshake. */
  static async connect(port: number, key: Uint8Array): Promise<HandDrivenClient> {
    const conn = await Deno.connect({ hostname: LOCAL, port });
    const frames = new FrameReader(readableOf(conn));
    const handshake = await NNpsk0Handshake.create("initiator", key, PROLOGUE);
    const message1 = await handshake.writeMessage1();
    const frame = new Uint8Array(HEADER_SIZE + message1.byteLength);
    encodeHeader(frame, HANDSHAKE_NONCE_SIZE, message1.byteLength);
    frame.set(message1, HEADER_SIZE);
    await writeAll(conn, frame);
    const reply = await frames.next(HANDSHAKE_NONCE_SIZE, 48);
    assert.ok(reply, "the server answered message 1");
    await handshake.readMessage2(reply.data);
    const [send, receive] = await handshake.split();
    return new HandDrivenClient(conn, frames, send, receive);
  }

  /** The wire bytes of `type || body` sealed under counter `n` (not sent). */
  async seal(n: number, type: number, body = new Uint8Array(0)): Promise<Uint8Array> {
    const plaintext = Uint8Array.of(type, ...body);
    const prefix = HEADER_SIZE + TRANSPORT_NONCE_SIZE;
    const frame = new Uint8Array(prefix + plaintext.byteLength + TAG_SIZE);
    encodeHeader(frame, TRANSPORT_NONCE_SIZE, plaintext.byteLength + TAG_SIZE);
    counterNonce(n, frame.subarray(HEADER_SIZE, prefix));
    const sealed = await this.#send.encryptAt(n, frame.subarray(0, HEADER_SIZE), plaintext);
    frame.set(sealed, prefix);
    return frame;
  }

  send(frame: Uint8Array): Promise<void> {
    return writeAll(this.conn, frame);
  }

  /** Replaces the sending key as a REKEY sender does right after sealing its REKEY. */
  rekeySending(): void {
    this.#send.rekey();
  }

  /** The server's next message (its counter checked), or null at EOF. */
  async receive(): Promise<{ type: number; body: Uint8Array } | null> {
    const frame = await this.#frames.next(TRANSPORT_NONCE_SIZE, sealedSize(0));
    if (!frame) return null;
    assert.deepEqual(frame.nonce, counterNonce(this.#receive.nonce), "server counter in order");
    const plaintext = await this.#receive.decryptWithAd(frame.header, frame.data);
    return { type: plaintext[0], body: plaintext.slice(1) };
  }

  close(): void {
    closeQuietly(this.conn);
  }
}

/**
 * Runs `fn` with a lib responder channel and a hand-driven client connected
 * to it over 127.0.0.1 (handshake done); closes both after.
 */
async function withHandDrivenPair(
  fn: (pair: { responder: SecureChannel; client: HandDrivenClient }) => Promise<void>,
): Promise<void> {
  const key = randomBytes(32);
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  let pair: { responder: SecureChannel; client: HandDrivenClient };
  try {
    const accepted = listener.accept().then((conn) =>
      SecureChannel.handshake(conn, key, "responder")
    );
    const client = await HandDrivenClient.connect(listener.addr.port, key);
    pair = { responder: await accepted, client };
  } finally {
    listener.close();
  }
  try {
    await fn(pair);
  } finally {
    pair.client.close();
    pair.responder.close();
  }
}

/** A lib initiator channel to `address` that has sent OPEN 0x00 and received OPEN_OK. */
async function openedChannel(address: HostPort, key: Uint8Array): Promise<SecureChannel> {
  const conn = await Deno.connect({ hostname: address.host, port: address.port });
  const channel = await SecureChannel.handshake(conn, key, "initiator");
  await channel.send(MessageType.open, Uint8Array.of(0));
  assert.equal((await channel.receive())?.type, MessageType.openOk);
  return channel;
}

/**
 * An idle timeout for sessions in tests that expect an error: it only bounds
 * a regression (which would otherwise wait forever) and never fires when the
 * behaviour under test holds.
 */
const BOUND = { idleTimeoutMs: 5000 };

/** Every message type a channel receives until the connection ends (or fails). */
async function typesUntilEnd(channel: SecureChannel): Promise<number[]> {
  const types: number[] = [];
  try {
    for (let message; (message = await channel.receive());) types.push(message.type);
  } catch (err) {
    assert.ok(err instanceof TruncationError, `the end is an EOF or reset, not ${err}`);
  }
  return types;
}

Deno.test("echo: 0, 1 and 65518 bytes take at most one DATA frame, 65519 takes two, all echoed whole", async () => {
  const { server, key } = await startServer();
  const relay = new Relay(server.addr.port);
  try {
    const cases: [number, number[]][] = [
      [0, []],
      [1, [sealedSize(1)]],
      [MAX_DATA_BODY, [MAX_DATA_SIZE]],
      [MAX_DATA_BODY + 1, [MAX_DATA_SIZE, sealedSize(1)]],
    ];
    for (const [size, dataFrames] of cases) {
      const payload = randomBytes(size);
      const reply = await forward(payload, { server: relay.address, key });
      assert.equal(reply.byteLength, size);
      assert.equal(await sha256Hex(reply), await sha256Hex(payload), `${size} bytes echoed`);
      await relay.idle();
      const { up, down } = relay.recordings.at(-1)!;
      const handshake = { nonceSize: HANDSHAKE_NONCE_SIZE, dataSize: 48 };
      const transport = (dataSize: number) => ({ nonceSize: TRANSPORT_NONCE_SIZE, dataSize });
      // Client: message 1, OPEN 0x00, the DATA frames, CLOSE.
      assert.deepEqual(frameSizes(concat(up)), [
        handshake,
        transport(sealedSize(1)),
        ...dataFrames.map(transport),
        transport(sealedSize(0)),
      ], `client frames for ${size} bytes`);
      // Server: message 2, OPEN_OK, the echoes frame for frame, CLOSE.
      assert.deepEqual(frameSizes(concat(down)), [
        handshake,
        transport(sealedSize(0)),
        ...dataFrames.map(transport),
        transport(sealedSize(0)),
      ], `server frames for ${size} bytes`);
    }
  } finally {
    await relay.close().catch(() => {}); // closed already when the test got that far
    await server.shutdown();
  }
});

Deno.test("echo: 8 MiB comes back with the same SHA-256", async () => {
  const { server, key, address } = await startServer();
  try {
    const payload = randomBytes(8 * MiB);
    const reply = await forward(payload, { server: address, key });
    assert.equal(reply.byteLength, payload.byteLength);
    assert.equal(await sha256Hex(reply), await sha256Hex(payload));
  } finally {
    await server.shutdown();
  }
});

Deno.test("echo: 60 concurrent sessions each get their own random payload back", async () => {
  const { server, key, address } = await startServer();
  try {
    const payloads = Array.from(
      { length: 60 },
      (_, i) => randomBytes(i === 0 ? 0 : Math.floor(Math.random() * 150_000)),
    );
    const replies = await Promise.all(payloads.map((p) => forward(p, { server: address, key })));
    for (const [i, reply] of replies.entries()) {
      assert.equal(await sha256Hex(reply), await sha256Hex(payloads[i]), `session ${i}`);
    }
    assert.equal(server.stats.sessionsTotal, 60);
  } finally {
    await server.shutdown();
  }
});

Deno.test("counter: a frame that skips counter 1 is a ProtocolError at the receiving channel", async () => {
  await withHandDrivenPair(async ({ responder, client }) => {
    await client.send(await client.seal(0, MessageType.open, Uint8Array.of(0)));
    await client.send(await client.seal(2, MessageType.data, encoder.encode("n=1 skipped")));
    await client.conn.closeWrite(); // were the frame accepted, nothing would be left to wait for
    assert.deepEqual(await responder.receive(), {
      type: MessageType.open,
      body: Uint8Array.of(0),
    });
    await rejectsWith(responder.receive(), ProtocolError, /counter out of order \(expected 1\)/);
  });
});

Deno.test("counter: a frame repeated with n=0 is a ProtocolError at the receiving channel", async () => {
  await withHandDrivenPair(async ({ responder, client }) => {
    const open = await client.seal(0, MessageType.open, Uint8Array.of(0));
    await client.send(open);
    await client.send(open);
    await client.conn.closeWrite();
    assert.equal((await responder.receive())?.type, MessageType.open);
    await assert.rejects(responder.receive(), /counter out of order \(expected 1\)/);
  });
});

Deno.test("counter: the server answers a gap or a replayed DATA with ERROR 1 and echoes none of it", async () => {
  const { server, key, log } = await startServer();
  try {
    for (const variant of ["gap", "replay"]) {
      const client = await HandDrivenClient.connect(server.addr.port, key);
      try {
        await client.send(await client.seal(0, MessageType.open, Uint8Array.of(0)));
        assert.equal((await client.receive())?.type, MessageType.openOk);
        const first = await client.seal(1, MessageType.data, encoder.encode("first"));
        await client.send(first);
        assert.deepEqual(await client.receive(), {
          type: MessageType.data,
          body: encoder.encode("first"),
        });
        await client.send(
          variant === "gap"
            ? await client.seal(3, MessageType.data, encoder.encode("after a gap"))
            : first,
        );
        await client.conn.closeWrite(); // an accepted frame would be echoed, not waited on
        const answer = await client.receive();
        assert.equal(answer?.type, MessageType.error, `${variant}: ERROR, not an echo`);
        assert.equal(answer.body[0], ErrorCode.protocolViolation);
        assert.equal(await client.receive(), null, `${variant}: then the server closes`);
      } finally {
        client.close();
      }
    }
    assert.match(await log.waitFor(/session end .*expected 2/), /outcome=error/);
    assert.equal(log.lines.filter((l) => /counter out of order/.test(l)).length, 2);
  } finally {
    await server.shutdown();
  }
});

/**
 * A one-connection server on 127.0.0.1 speaking the protocol by hand: it
 * accepts, makes the responder's handshake, takes the OPEN, answers OPEN_OK,
 * then runs `script`. `finished()` awaits the script and closes the listener.
 */
function fakeServer(
  key: Uint8Array,
  script: (channel: SecureChannel, conn: Deno.TcpConn) => Promise<void>,
): { port: number; finished(): Promise<void> } {
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const serving = (async () => {
    const conn = await listener.accept();
    const channel = await SecureChannel.handshake(conn, key, "responder");
    try {
      await receiveOpen(channel);
      await channel.send(MessageType.openOk);
      await script(channel, conn);
    } finally {
      channel.close();
    }
  })();
  return {
    port: listener.addr.port,
    async finished() {
      try {
        await serving;
      } finally {
        listener.close();
      }
    },
  };
}

Deno.test("truncation: the server's TCP EOF before CLOSE errors the client's reader with TruncationError after the data", async () => {
  const key = randomBytes(32);
  const fake = fakeServer(key, async (channel, conn) => {
    await channel.send(MessageType.data, encoder.encode("partial"));
    await conn.closeWrite(); // TCP FIN without a CLOSE frame
    await typesUntilEnd(channel);
  });
  try {
    const session = await connect({
      server: { host: LOCAL, port: fake.port },
      key,
      ...BOUND,
    });
    const reader = session.readable.getReader();
    assert.deepEqual(await reader.read(), { done: false, value: encoder.encode("partial") });
    await assert.rejects(reader.read(), TruncationError);
    assert.ok((await session.ended).error instanceof TruncationError);
  } finally {
    await fake.finished();
  }
});

Deno.test("truncation: an EOF inside a frame fails the client's forward() with TruncationError", async () => {
  const key = randomBytes(32);
  const fake = fakeServer(key, async (channel, conn) => {
    const halfFrame = new Uint8Array(HEADER_SIZE + 5);
    encodeHeader(halfFrame, TRANSPORT_NONCE_SIZE, sealedSize(100));
    await writeAll(conn, halfFrame);
    await conn.closeWrite();
    await typesUntilEnd(channel);
  });
  try {
    await assert.rejects(
      forward(encoder.encode("hello"), {
        server: { host: LOCAL, port: fake.port },
        key,
        ...BOUND,
      }),
      (err) => {
        assert.ok(err instanceof TruncationError);
        assert.match(err.message, /inside a frame/);
        return true;
      },
    );
  } finally {
    await fake.finished();
  }
});

Deno.test("truncation: the client's TCP EOF before CLOSE errors the server session's reader with TruncationError", async () => {
  const key = randomBytes(32);
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const client = (async () => {
    const conn = await Deno.connect({ hostname: LOCAL, port: listener.addr.port });
    const channel = await SecureChannel.handshake(conn, key, "initiator");
    try {
      await channel.send(MessageType.open, Uint8Array.of(0));
      await channel.send(MessageType.data, encoder.encode("partial"));
      await conn.closeWrite();
      await typesUntilEnd(channel);
    } finally {
      channel.close();
    }
  })();
  try {
    const conn = await listener.accept();
    const channel = await SecureChannel.handshake(conn, key, "responder");
    assert.deepEqual(await receiveOpen(channel), { kind: "service" });
    const session = await Session.accept(channel, BOUND);
    const reader = session.readable.getReader();
    assert.deepEqual(await reader.read(), { done: false, value: encoder.encode("partial") });
    await assert.rejects(reader.read(), TruncationError);
    assert.ok((await session.ended).error instanceof TruncationError);
  } finally {
    await client;
    listener.close();
  }
});

/**
 * Opens a session to `address` (OPEN 0x00), sends one DATA, then cuts it with
 * a TCP FIN instead of CLOSE; resolves the message types the server sent
 * until its end.
 */
async function cutSession(address: HostPort, key: Uint8Array): Promise<number[]> {
  const conn = await Deno.connect({ hostname: LOCAL, port: address.port });
  const channel = await SecureChannel.handshake(conn, key, "initiator");
  try {
    await channel.send(MessageType.open, Uint8Array.of(0));
    await channel.send(MessageType.data, encoder.encode("partial"));
    await conn.closeWrite();
    return await typesUntilEnd(channel);
  } finally {
    channel.close();
  }
}

Deno.test("truncation: the echo server ends a session cut by TCP EOF as an error and sends no CLOSE", async () => {
  const { server, key, address, log } = await startServer(BOUND);
  try {
    const types = await cutSession(address, key);
    assert.equal(types[0], MessageType.openOk);
    assert.ok(!types.includes(MessageType.close), `no CLOSE among ${types}`);
    const end = await log.waitFor(/session end/);
    assert.match(end, /outcome=error/);
    assert.match(end, /stream truncated/);
  } finally {
    await server.shutdown();
  }
});

Deno.test("truncation: in forward mode a cut session ends and its silent upstream is closed", async () => {
  const upstream = new Upstream("silent");
  const { server, key, address, log } = await startServer({ forward: upstream.address });
  try {
    assert.ok(!(await cutSession(address, key)).includes(MessageType.close));
    const end = await within(log.waitFor(/session end/), 5000, "session end");
    assert.match(end, /stream truncated/);
    assert.equal(server.stats.sessionsOpen, 0);
    await within(upstream.idle(), 5000, "upstream closed");
    assert.deepEqual(concat(upstream.received[0]), encoder.encode("partial"));
  } finally {
    await server.shutdown();
    await upstream.close();
  }
});

Deno.test("rekey: with rekeyBytes 4096 a 3 MiB echo stays intact and both sides rekey in step", async () => {
  const { server, key, address, log } = await startServer({ rekeyBytes: 4096 });
  try {
    const session = await connect({ server: address, key, rekeyBytes: 4096 });
    const payload = randomBytes(3 * MiB);
    const writing = (async () => {
      const writer = session.writable.getWriter();
      await writer.write(payload);
      await writer.close();
    })();
    const reply = await readAll(session.readable);
    await writing;
    assert.equal((await session.ended).error, null);
    assert.equal(await sha256Hex(reply), await sha256Hex(payload));

    const client = session.channel.rekeys;
    const dataFrames = Math.ceil(payload.byteLength / MAX_DATA_BODY);
    assert.ok(client.sent >= dataFrames, `client sent ${client.sent} REKEYs`);
    assert.ok(client.received >= dataFrames, `client received ${client.received} REKEYs`);
    const end = await log.waitFor(/session end/);
    assert.match(end, /outcome=ok/);
    assert.equal(Number(/rekeys_sent=(\d+)/.exec(end)?.[1]), client.received);
    assert.equal(Number(/rekeys_received=(\d+)/.exec(end)?.[1]), client.sent);
  } finally {
    await server.shutdown();
  }
});

Deno.test("rekey: a REKEY with a body is a ProtocolError at the channel and ERROR 1 from the server", async () => {
  await withHandDrivenPair(async ({ responder, client }) => {
    await client.send(await client.seal(0, MessageType.open, Uint8Array.of(0)));
    await client.send(await client.seal(1, MessageType.rekey, Uint8Array.of(0)));
    await client.conn.closeWrite();
    assert.equal((await responder.receive())?.type, MessageType.open);
    await rejectsWith(responder.receive(), ProtocolError, /REKEY with a body/);
  });

  const { server, key, address } = await startServer();
  try {
    const channel = await openedChannel(address, key);
    try {
      // send() does not rekey its own side: this is a bare REKEY frame with a body.
      await channel.send(MessageType.rekey, Uint8Array.of(0));
      await channel.conn.closeWrite();
      const answer = await channel.receive();
      assert.equal(answer?.type, MessageType.error);
      assert.equal(answer.body[0], ErrorCode.protocolViolation);
      assert.equal(await channel.receive(), null);
      assert.equal(channel.rekeys.received, 0);
    } finally {
      channel.close();
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("ping: the server answers PING with PONG of the same body; a 9-byte PING is ERROR 1", async () => {
  const { server, key, address } = await startServer(BOUND);
  try {
    const channel = await openedChannel(address, key);
    try {
      for (const body of [Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), new Uint8Array(0)]) {
        await channel.send(MessageType.ping, body);
        assert.deepEqual(await channel.receive(), { type: MessageType.pong, body });
      }
      await channel.send(MessageType.data, encoder.encode("still echoing"));
      assert.deepEqual(await channel.receive(), {
        type: MessageType.data,
        body: encoder.encode("still echoing"),
      });
      await channel.send(MessageType.ping, new Uint8Array(9));
      await channel.conn.closeWrite();
      const answer = await channel.receive();
      assert.equal(answer?.type, MessageType.error, "ERROR, not PONG");
      assert.equal(answer.body[0], ErrorCode.protocolViolation);
      assert.equal(await channel.receive(), null);
    } finally {
      channel.close();
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("ping: a client session answers the server's PING with PONG of the same body", async () => {
  const key = randomBytes(32);
  const fake = fakeServer(key, async (channel) => {
    const body = Uint8Array.of(8, 7, 6, 5, 4, 3, 2, 1);
    await channel.send(MessageType.ping, body);
    assert.deepEqual(await channel.receive(), { type: MessageType.pong, body });
    await channel.send(MessageType.close);
    assert.equal((await channel.receive())?.type, MessageType.close);
  });
  try {
    const session = await connect({
      server: { host: LOCAL, port: fake.port },
      key,
      ...BOUND,
    });
    assert.equal((await readAll(session.readable)).byteLength, 0);
    await session.writable.close();
    assert.equal((await session.ended).error, null);
  } finally {
    await fake.finished();
  }
});

Deno.test("regression: REKEY, REKEY, OPEN is refused: the first transport frame must be OPEN", async () => {
  const { server, key, address } = await startServer({ handshakeTimeoutMs: 5000 });
  try {
    const client = await HandDrivenClient.connect(address.port, key);
    await client.send(await client.seal(0, MessageType.rekey));
    client.rekeySending();
    await client.send(await client.seal(1, MessageType.rekey));
    client.rekeySending();
    await client.send(await client.seal(2, MessageType.open, Uint8Array.of(0)));
    const types: number[] = [];
    const bound = setTimeout(() => client.close(), 5000); // a server that accepted would wait on
    try {
      for (let message; (message = await client.receive());) types.push(message.type);
    } catch {
      // a reset ends it too
    }
    clearTimeout(bound);
    client.close();
    assert.ok(!types.includes(MessageType.openOk), `the server answered ${types}`);
    assert.equal(server.stats.sessionsTotal, 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("regression: with --rekey-bytes N a key carries at most N - 1 plaintext bytes, its REKEY included", async () => {
  const { server, key, address } = await startServer();
  const relay = new Relay(address.port);
  const rekeyBytes = 1000;
  try {
    const session = await connect({ server: relay.address, key, rekeyBytes });
    const writer = session.writable.getWriter();
    for (let i = 0; i < 40; i++) await writer.write(randomBytes(99)); // 100-byte plaintexts
    await writer.close();
    await readAll(session.readable);
    assert.equal((await session.ended).error, null);
    await relay.close();
    const frames = frameSizes(concat(relay.recordings[0].up))
      .filter((f) => f.nonceSize === TRANSPORT_NONCE_SIZE)
      .map((f) => f.dataSize - TAG_SIZE);
    // Plaintext sizes: OPEN 2, DATA 100, REKEY 1, and CLOSE 1 last.
    const runs: number[] = [];
    let run = 0;
    for (const [i, size] of frames.entries()) {
      run += size;
      if (size === 1 && i < frames.length - 1) {
        runs.push(run);
        run = 0;
      }
    }
    assert.ok(runs.length >= 3, `only ${runs.length} REKEYs`);
    assert.ok(Math.max(...runs) <= rekeyBytes - 1, `bytes under one key: ${runs}`);
    assert.ok(Math.max(...runs) > rekeyBytes - 102, `keys are used up to the limit: ${runs}`);
  } finally {
    await relay.close().catch(() => {}); // closed already when the test got that far
    await server.shutdown();
  }
});
