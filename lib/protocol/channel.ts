/**
 * The secure channel: the Noise handshake over handshake frames, then
 * encrypted transport frames (`type || body` plaintexts) in both directions
 * over one connection.
 *
 * It owns the two CipherStates and everything that touches them: counter
 * nonces carried in the nonce field, the header as associated data, REKEY in
 * both directions. Sends are pipelined: each one claims its counter at once
 * and starts encrypting, while one writer puts the frames on the wire
 * strictly in counter order; frames already sealed go out together in one
 * write through one reused buffer. No web streams: reads go straight from
 * `conn.read` into the framer's buffer.
 *
 * @example
 * ```ts
 * import { SecureChannel } from "./channel.ts";
 * import { MessageType } from "./messages.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const psk = await Deno.readFile("keys/shared_key.key");
 * const channel = await SecureChannel.handshake(conn, psk, "initiator");
 * await channel.send(MessageType.open, Uint8Array.of(0));
 * const reply = await channel.receive(); // { type, body } or null at EOF
 * ```
 * @module
 */

import { AuthenticationError, ProtocolError, TruncationError } from "../base/errors.ts";
import {
  encodeHeader,
  HANDSHAKE_NONCE_SIZE,
  HEADER_SIZE,
  MAX_FRAME_SIZE,
  MAX_PLAINTEXT_SIZE,
  TAG_SIZE,
  TRANSPORT_NONCE_SIZE,
} from "./frame.ts";
import { closeQuietly, type Connection, writeAll } from "./conn.ts";
import { FrameReader } from "./framer.ts";
import { MessageType } from "./messages.ts";
import type { ReplayGuard } from "./replay.ts";
import { type CipherState, counterNonce, NNpsk0Handshake, type Role } from "./noise.ts";
import { type CryptoProvider, X25519_SIZE } from "./crypto/provider.ts";

/** The Noise prologue: binds every handshake to this protocol. */
export const PROLOGUE: Uint8Array = new TextEncoder().encode("cipherlink/2");

/** Default plaintext bytes sent under one key before REKEY: 1 GiB. */
export const DEFAULT_REKEY_BYTES = 2 ** 30;
/**
 * The largest rekeyBytes: a key then carries at most 2^30 - 1 bytes of
 * plaintext, its REKEY message included ("rekey before 2^30 bytes").
 */
export const MAX_REKEY_BYTES = 2 ** 30;
/** The plaintext of a REKEY message: its type byte. */
const REKEY_MESSAGE_SIZE = 1;
/** Smallest handshake message: a public key and an empty payload's tag. */
const MIN_HANDSHAKE_DATA = X25519_SIZE + TAG_SIZE;
/** Smallest transport data field: the type byte and the tag. */
const MIN_TRANSPORT_DATA = 1 + TAG_SIZE;
const FRAME_PREFIX = HEADER_SIZE + TRANSPORT_NONCE_SIZE;
/** Frames read and being decrypted ahead of the receiver. */
export const RECEIVE_WINDOW = 8;

/** One decrypted transport message. */
export interface TransportMessage {
  type: number;
  body: Uint8Array;
}

/** Channel settings. */
export interface ChannelOptions {
  /** A key carries fewer plaintext bytes than this, its REKEY included (at most 2^30). */
  rekeyBytes?: number;
  /**
   * Responder: the ephemeral keys of message 1s accepted before. A message 1
   * that carries one of them is a replay, refused before any crypto is spent.
   */
  replays?: ReplayGuard;
  /** Who computes the cryptography (default: Web Crypto); the wire is the same. */
  provider?: CryptoProvider;
  /**
   * Responder: called once message 1 has fully arrived, before any crypto.
   * The server's pending-handshake budget stops counting the connection
   * then: what remains is bounded work, not a socket held open.
   */
  onHello?: () => void;
}

/** A message 1 made ahead of its connection (one use). */
export interface PreparedHello {
  /** Sends message 1 on `conn`, reads message 2 and returns the ready channel. */
  run(conn: Connection): Promise<SecureChannel>;
  /** Releases the handshake's keys when run() will never be called (the connect failed). */
  dispose(): void;
}

/** A verified message 1: the peer holds the key (or replays a fresh recording it cannot use). */
export interface VerifiedHello {
  /** Sends message 2 and returns the ready channel. */
  complete(): Promise<SecureChannel>;
  /** Releases the handshake's keys when complete() will never be called. */
  dispose(): void;
}

/** A frame claimed and being sealed, waiting for its turn on the wire. */
interface Outgoing {
  /** The counter it is sealed under: decides the nonce field. */
  n: number;
  /** ciphertext || tag once sealed; null while Web Crypto works on it. */
  sealed: Uint8Array | null;
  /** Set when sealing failed. */
  failure: unknown;
}

/** A caller of send() waiting until the `count`th frame is written. */
interface WriteWaiter {
  count: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Most bytes one batched write carries: a few full frames. */
const MAX_BATCH_BYTES = 4 * MAX_FRAME_SIZE;
/** A write buffer this small is kept while quiet; a larger one is let go. */
const QUIET_WRITE_BYTES = 4096;

/** The encrypted, framed transport over one connection. */
export class SecureChannel {
  readonly conn: Connection;
  #frames: FrameReader;
  #send: CipherState;
  #receive: CipherState;
  #rekeyBytes: number;
  #sentUnderKey = 0;
  #rekeysSent = 0;
  #rekeysReceived = 0;
  #closed = false;
  // Sending: frames in counter order, one writer at a time, batched writes.
  #outgoing: Outgoing[] = [];
  #queued = 0;
  #written = 0;
  #writing = false;
  /** Frames sealed and waiting for the writer, laid out as one write. */
  #staging: Uint8Array<ArrayBuffer> | null = null;
  #stagedBytes = 0;
  #stagedFrames = 0;
  /** The buffer of the write in flight, reused as the next staging buffer. */
  #spare: Uint8Array<ArrayBuffer> | null = null;
  /** Where a synchronous provider opens large frames (bodies are lent until the next receive). */
  #plaintextBuffer: Uint8Array<ArrayBuffer> | null = null;
  /** The header being sealed as associated data: the seal copies it before returning. */
  #header = new Uint8Array(HEADER_SIZE);
  #writeFailure: unknown = null;
  #wakeWriter: (() => void) | null = null;
  #writeWaiters: WriteWaiter[] = [];
  #roomWaiter: { below: number; resolve: () => void } | null = null;
  #onWriteFailure: ((err: unknown) => void) | null = null;
  // Receiving: frames read and decrypting ahead of the receiver.
  #readAhead: Promise<void> | null = null;
  #decrypted: Promise<Uint8Array | null>[] = [];
  #wakeReceiver: (() => void) | null = null;
  #wakeReader: (() => void) | null = null;
  /** EOF or the failure that stopped the reader: every later receive() gets it. */
  #ended: Promise<null> | Promise<Uint8Array | null> | null = null;

  private constructor(
    conn: Connection,
    frames: FrameReader,
    send: CipherState,
    receive: CipherState,
    options: ChannelOptions,
  ) {
    this.conn = conn;
    this.#frames = frames;
    this.#send = send;
    this.#receive = receive;
    const rekeyBytes = options.rekeyBytes ?? DEFAULT_REKEY_BYTES;
    if (!(rekeyBytes > 0 && rekeyBytes <= MAX_REKEY_BYTES)) {
      throw new RangeError(`rekeyBytes must be in 1..${MAX_REKEY_BYTES}`);
    }
    this.#rekeyBytes = rekeyBytes;
  }

  /**
   * Runs the NNpsk0 handshake as `role` and returns the ready channel.
   * Throws {@linkcode AuthenticationError} when the peer does not hold the
   * key, {@linkcode ProtocolError} for a malformed frame, and
   * {@linkcode TruncationError} when the connection ends first. It does not
   * close `conn` on failure; the caller does.
   */
  static async handshake(
    conn: Connection,
    psk: Uint8Array,
    role: Role,
    options: ChannelOptions = {},
  ): Promise<SecureChannel> {
    if (role === "initiator") {
      return await (await SecureChannel.prepareHello(psk, options)).run(conn);
    }
    const frames = new FrameReader(conn);
    return await (await SecureChannel.#verifyHello(conn, frames, psk, options)).complete();
  }

  /**
   * The initiator's first half: makes message 1 before there is a
   * connection, so that it goes out the moment the connection is up (a
   * server under a connection flood gives a new connection little time).
   */
  static async prepareHello(psk: Uint8Array, options: ChannelOptions = {}): Promise<PreparedHello> {
    const hs = await NNpsk0Handshake.create("initiator", psk, PROLOGUE, {
      provider: options.provider,
    });
    let hello: Uint8Array;
    try {
      hello = handshakeFrame(await hs.writeMessage1());
    } catch (err) {
      hs.dispose();
      throw err;
    }
    return {
      dispose: () => hs.dispose(),
      run: async (conn) => {
        // The handshake's secrets are released on every exit (split() took what the channel needs).
        using _ = hs;
        const frames = new FrameReader(conn);
        await writeAll(conn, hello);
        const reply = await frames.next(HANDSHAKE_NONCE_SIZE, MIN_HANDSHAKE_DATA);
        if (!reply) {
          throw new AuthenticationError(
            "the server closed the connection during the handshake (does it hold the same key?)",
          );
        }
        try {
          await hs.readMessage2(reply.data);
        } catch (err) {
          throw new AuthenticationError("the server does not hold the same key", {
            cause: err,
          });
        }
        const [send, receive] = await hs.split();
        return new SecureChannel(conn, frames, send, receive, options);
      },
    };
  }

  /**
   * The responder's first half: reads message 1 and verifies it, sending
   * nothing. The server runs it under the short message-1 deadline and the
   * pending-handshake budget, and only then decides, as for a key holder,
   * whether to {@linkcode VerifiedHello.complete} (message 2) at all.
   * Throws as {@linkcode SecureChannel.handshake} does.
   */
  static verifyHello(
    conn: Connection,
    psk: Uint8Array,
    options: ChannelOptions = {},
  ): Promise<VerifiedHello> {
    return SecureChannel.#verifyHello(conn, new FrameReader(conn), psk, options);
  }

  static async #verifyHello(
    conn: Connection,
    frames: FrameReader,
    psk: Uint8Array,
    options: ChannelOptions,
  ): Promise<VerifiedHello> {
    const hello = await frames.next(HANDSHAKE_NONCE_SIZE, MIN_HANDSHAKE_DATA);
    if (!hello) {
      throw new TruncationError(
        "the client closed the connection before the handshake",
      );
    }
    options.onHello?.();
    const ephemeral = hello.data.slice(0, X25519_SIZE);
    // Reserved before the first await: copies sent together are refused here, not verified each.
    if (options.replays && !options.replays.reserve(ephemeral)) {
      throw new AuthenticationError("message 1 was replayed (its ephemeral key was seen before)");
    }
    // The ephemeral key is made once message 1 is here: a connection that
    // sends nothing, or drips bytes, costs the server no crypto.
    let created: NNpsk0Handshake | undefined;
    try {
      created = await NNpsk0Handshake.create("responder", psk, PROLOGUE, {
        provider: options.provider,
      });
      await created.readMessage1(hello.data);
    } catch (err) {
      created?.dispose();
      options.replays?.release(ephemeral);
      throw new AuthenticationError("the client does not hold the same key", {
        cause: err,
      });
    }
    const hs = created;
    return {
      dispose: () => hs.dispose(),
      complete: async () => {
        using _ = hs;
        await writeAll(conn, handshakeFrame(await hs.writeMessage2()));
        const [receive, send] = await hs.split();
        return new SecureChannel(conn, frames, send, receive, options);
      },
    };
  }

  /** REKEYs this side has sent and received. */
  get rekeys(): { sent: number; received: number } {
    return { sent: this.#rekeysSent, received: this.#rekeysReceived };
  }

  /**
   * Sends one message and resolves once its frame has been handed to the
   * connection, in order with every earlier send. Rejects when the
   * connection failed (then every later send does too).
   */
  send(type: number, body: Uint8Array = new Uint8Array(0)): Promise<void> {
    const plaintext = new Uint8Array(1 + body.byteLength);
    plaintext[0] = type;
    plaintext.set(body, 1);
    return this.sendPlaintext(plaintext);
  }

  /**
   * Like {@linkcode send} for a plaintext whose first byte is already the
   * type: saves a copy for callers that read their data in at offset 1.
   */
  sendPlaintext(plaintext: Uint8Array): Promise<void> {
    if (this.#writeFailure) return Promise.reject(this.#writeFailure);
    if (this.#closed) {
      return Promise.reject(
        new TruncationError("the channel was closed before this frame was sent"),
      );
    }
    this.post(plaintext);
    const count = this.#queued;
    return new Promise((resolve, reject) => {
      this.#writeWaiters.push({ count, resolve, reject });
    });
  }

  /**
   * Queues a plaintext (type byte first) for sending without a promise of
   * its own: the data path's way. Sealing starts at once and the caller may
   * reuse `plaintext` as soon as this returns. A failed write is reported
   * through {@linkcode onWriteFailure} and {@linkcode flush}; after one,
   * posts are dropped. Bound what is queued with {@linkcode roomFor}.
   */
  post(plaintext: Uint8Array): void {
    if (plaintext.byteLength < 1 || plaintext.byteLength > MAX_PLAINTEXT_SIZE) {
      throw new RangeError(`plaintext of ${plaintext.byteLength} bytes`);
    }
    // After a failed write, or once close() released the keys, nothing more is sent.
    if (this.#writeFailure || this.#closed) return;
    // Rekey before a frame that would take this key to the limit: a key
    // protects less than rekeyBytes, its closing REKEY message included
    // (so at most 2^30 - 1 bytes, as the protocol requires). A single frame
    // larger than a tiny test limit still goes out whole, under a fresh key.
    if (
      this.#sentUnderKey > 0 &&
      this.#sentUnderKey + plaintext.byteLength + REKEY_MESSAGE_SIZE >= this.#rekeyBytes
    ) {
      // REKEY goes out under the old key; the swap is synchronous, so this
      // frame and every later one is sealed under the new key.
      this.#seal(Uint8Array.of(MessageType.rekey));
      this.#send.rekey();
      this.#sentUnderKey = 0;
      this.#rekeysSent++;
    }
    this.#sentUnderKey += plaintext.byteLength;
    this.#seal(plaintext);
  }

  /** Frames handed to the connection so far. */
  get writtenFrames(): number {
    return this.#written;
  }

  /** Frames queued and not yet handed to the connection. */
  get queuedFrames(): number {
    return this.#queued - this.#written;
  }

  /**
   * Backpressure for {@linkcode post}: null when fewer than `limit` frames
   * are waiting, else a promise that resolves once fewer are (or the
   * connection failed). Only one caller may wait at a time.
   */
  roomFor(limit: number): Promise<void> | null {
    if (this.#queued - this.#written < limit || this.#writeFailure) return null;
    return new Promise((resolve) => (this.#roomWaiter = { below: limit, resolve }));
  }

  /** Called once, with the error, when a write to the connection fails. */
  set onWriteFailure(callback: ((err: unknown) => void) | null) {
    this.#onWriteFailure = callback;
  }

  /**
   * Resolves the next message, handling REKEY itself; `null` when the
   * connection ended cleanly between frames (whether that is a clean end of
   * the session is the caller's call: before CLOSE it is a truncation).
   *
   * Frames are read and decrypted ahead, up to RECEIVE_WINDOW at once, so
   * several decryptions run in parallel while messages come out in order.
   */
  async receive(): Promise<TransportMessage | null> {
    if (this.#receive.sync) return await this.#receiveInline();
    if (!this.#readAhead) this.#readAhead = this.#readFrames();
    for (;;) {
      const plaintext = await this.#takeDecrypted();
      if (plaintext === null) return null;
      const type = plaintext[0];
      if (type === MessageType.rekey) {
        // A bare REKEY was applied by the reader; one with a body is invalid.
        if (plaintext.byteLength !== 1) throw new ProtocolError("REKEY with a body");
        this.#rekeysReceived++;
        continue;
      }
      return { type, body: plaintext.subarray(1) };
    }
  }

  /**
   * Makes the pending and every later receive() fail with `error` at once,
   * dropping what was read ahead: for a session that ended while its reader
   * waits on a quiet peer.
   */
  interrupt(error: Error): void {
    const failed = Promise.reject(error);
    failed.catch(() => {});
    this.#decrypted = [];
    this.#ended = failed;
    this.#wakeReceiver?.();
    this.#wakeReader?.();
  }

  /** Whether a received body is only lent until the next receive() (synchronous providers). */
  get lendsBodies(): boolean {
    return this.#receive.sync;
  }

  /**
   * receive() with a synchronous provider: reads one frame and opens it in
   * place, no read-ahead and no promise per frame. Large bodies are views of
   * one reused buffer, valid until the next call.
   */
  async #receiveInline(): Promise<TransportMessage | null> {
    try {
      for (;;) {
        if (this.#ended) {
          await this.#ended; // rethrows the failure that ended the stream
          return null;
        }
        const frame = await this.#frames.next(TRANSPORT_NONCE_SIZE, MIN_TRANSPORT_DATA);
        if (!frame) {
          this.#ended = Promise.resolve(null);
          return null;
        }
        const expected = this.#receive.nonce;
        if (!nonceIs(frame.nonce, expected)) {
          throw new ProtocolError(`frame counter out of order (expected ${expected})`);
        }
        const size = frame.data.byteLength - TAG_SIZE;
        const plaintext = this.#receive.openAt(
          expected,
          frame.header,
          frame.data,
          size <= QUIET_WRITE_BYTES ? new Uint8Array(size) : this.#lendPlaintext(size),
        );
        if (size <= QUIET_WRITE_BYTES) this.#plaintextBuffer = null; // quiet again: let it go
        this.#receive.advance();
        const type = plaintext[0];
        if (type === MessageType.rekey) {
          if (plaintext.byteLength !== 1) throw new ProtocolError("REKEY with a body");
          this.#receive.rekey();
          this.#rekeysReceived++;
          continue;
        }
        return { type, body: plaintext.subarray(1) };
      }
    } catch (err) {
      if (!this.#ended) {
        this.#ended = Promise.reject(err);
        this.#ended.catch(() => {});
      }
      throw err;
    }
  }

  #lendPlaintext(size: number): Uint8Array {
    this.#plaintextBuffer ??= new Uint8Array(MAX_PLAINTEXT_SIZE);
    return this.#plaintextBuffer.subarray(0, size);
  }

  /** The next decrypted plaintext in order, or null at a clean EOF. */
  async #takeDecrypted(): Promise<Uint8Array | null> {
    while (this.#decrypted.length === 0) {
      if (this.#ended) return await this.#ended;
      await new Promise<void>((resolve) => (this.#wakeReceiver = resolve));
    }
    const next = this.#decrypted.shift()!;
    this.#wakeReader?.();
    return await next;
  }

  #deliver(result: Promise<Uint8Array | null>, final = false): void {
    result.catch(() => {}); // the receiver observes it; nobody may be waiting after a failure
    if (this.#ended) return; // interrupted: nobody will take it
    if (final) this.#ended = result;
    this.#decrypted.push(result);
    this.#wakeReceiver?.();
  }

  /**
   * Reads frames and starts their decryption, staying at most
   * RECEIVE_WINDOW frames ahead of the receiver. A frame that can only be a
   * bare control message (data_size 17) might be REKEY, which changes the key
   * for every later frame: nothing after it is started until it decrypted.
   */
  async #readFrames(): Promise<void> {
    try {
      while (!this.#ended) {
        while (this.#decrypted.length >= RECEIVE_WINDOW && !this.#ended) {
          await new Promise<void>((resolve) => (this.#wakeReader = resolve));
        }
        if (this.#ended) return;
        const frame = await this.#frames.next(TRANSPORT_NONCE_SIZE, MIN_TRANSPORT_DATA);
        if (!frame) return this.#deliver(Promise.resolve(null), true);
        const expected = this.#receive.nonce;
        if (!nonceIs(frame.nonce, expected)) {
          throw new ProtocolError(`frame counter out of order (expected ${expected})`);
        }
        const plaintext = this.#receive.decryptAt(expected, frame.header, frame.data);
        this.#receive.advance();
        this.#deliver(plaintext);
        if (frame.data.byteLength === MIN_TRANSPORT_DATA) {
          const bare = await plaintext;
          if (bare[0] === MessageType.rekey) this.#receive.rekey();
        }
      }
    } catch (err) {
      this.#deliver(Promise.reject(err), true);
    }
  }

  /** Resolves once every queued frame is on the connection; rejects if a write failed. */
  flush(): Promise<void> {
    if (this.#writeFailure) return Promise.reject(this.#writeFailure);
    if (this.#written === this.#queued) return Promise.resolve();
    const count = this.#queued;
    return new Promise((resolve, reject) => this.#writeWaiters.push({ count, resolve, reject }));
  }

  /** Closes the connection (idempotent). Queued frames may be lost. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.conn);
    this.#send.dispose();
    this.#receive.dispose();
  }

  /**
   * Closes the connection once `flushing` (a last frame's way out) settles,
   * or after `graceMs` for a peer that stopped reading, whichever is first.
   * Resolves when it is closed.
   */
  async closeAfter(flushing: Promise<unknown>, graceMs: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise((resolve) => (timer = setTimeout(resolve, graceMs)));
    await Promise.race([flushing.catch(() => {}), grace]);
    clearTimeout(timer);
    this.close();
  }

  /** Whether close() has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Claims the next counter and seals: a synchronous provider seals straight
   * into the staging buffer (no promise, no copy); Web Crypto's seal runs
   * while earlier frames wait, and its result is copied in by the writer.
   */
  #seal(plaintext: Uint8Array): void {
    const n = this.#send.claimNonce();
    const sealedSize = plaintext.byteLength + TAG_SIZE;
    this.#queued++;
    if (this.#send.sync) {
      const at = this.#stage(FRAME_PREFIX + sealedSize);
      const out = this.#staging!;
      encodeHeader(out.subarray(at, at + HEADER_SIZE), TRANSPORT_NONCE_SIZE, sealedSize);
      counterNonce(n, out.subarray(at + HEADER_SIZE, at + FRAME_PREFIX));
      this.#send.sealAt(
        n,
        out.subarray(at, at + HEADER_SIZE),
        plaintext,
        out.subarray(at + FRAME_PREFIX, at + FRAME_PREFIX + sealedSize),
      );
      this.#stagedFrames++;
    } else {
      const item: Outgoing = { n, sealed: null, failure: null };
      encodeHeader(this.#header, TRANSPORT_NONCE_SIZE, sealedSize);
      this.#send.encryptAt(n, this.#header, plaintext).then((sealed) => {
        item.sealed = sealed;
        if (this.#outgoing[0] === item) this.#wakeWriter?.();
      }, (err) => {
        item.failure = err;
        if (this.#outgoing[0] === item) this.#wakeWriter?.();
      });
      this.#outgoing.push(item);
    }
    if (!this.#writing) this.#writeLoop();
  }

  /** Makes room for `size` more bytes in the staging buffer; returns where they go. */
  #stage(size: number): number {
    const at = this.#stagedBytes;
    const needed = at + size;
    const current = this.#staging;
    if (current === null || current.byteLength < needed) {
      let grown = this.#spare !== null && this.#spare.byteLength >= needed ? this.#spare : null;
      if (grown) this.#spare = null;
      // Small frames get a buffer of their size (an idle session keeps none);
      // bulk data a batch-sized one, kept while data flows.
      grown ??= new Uint8Array(
        needed <= QUIET_WRITE_BYTES ? needed : Math.max(needed, MAX_BATCH_BYTES),
      );
      if (current !== null && at > 0) grown.set(current.subarray(0, at));
      this.#staging = grown;
    }
    this.#stagedBytes = needed;
    return at;
  }

  /** Moves the leading frames Web Crypto has sealed into the staging buffer, in order. */
  #stageSealed(): void {
    while (this.#outgoing.length > 0) {
      const sealed = this.#outgoing[0].sealed;
      if (sealed === null) return;
      const item = this.#outgoing.shift()!;
      const at = this.#stage(FRAME_PREFIX + sealed.byteLength);
      const out = this.#staging!;
      encodeHeader(out.subarray(at, at + HEADER_SIZE), TRANSPORT_NONCE_SIZE, sealed.byteLength);
      counterNonce(item.n, out.subarray(at + HEADER_SIZE, at + FRAME_PREFIX));
      out.set(sealed, at + FRAME_PREFIX);
      this.#stagedFrames++;
    }
  }

  /**
   * The one writer: writes everything staged as one write while the next
   * frames are sealed into the other buffer; with Web Crypto it first waits
   * for the oldest frame's seal and takes every later one already done.
   */
  async #writeLoop(): Promise<void> {
    this.#writing = true;
    try {
      for (;;) {
        this.#stageSealed();
        if (this.#stagedFrames === 0) {
          const first = this.#outgoing[0];
          if (first === undefined) break;
          if (first.failure !== null) throw first.failure;
          await new Promise<void>((resolve) => (this.#wakeWriter = resolve));
          this.#wakeWriter = null;
          continue;
        }
        const bytes = this.#staging!.subarray(0, this.#stagedBytes);
        const frames = this.#stagedFrames;
        // Swap: new frames are staged in the spare buffer while this one is written.
        const written = this.#staging!;
        this.#staging = this.#spare;
        this.#spare = null;
        this.#stagedBytes = 0;
        this.#stagedFrames = 0;
        try {
          await writeAll(this.conn, bytes);
        } catch (err) {
          // A reset or closed socket means the stream was cut: say so, like a failed read does.
          throw new TruncationError(
            `the connection failed before the peer's CLOSE (${
              err instanceof Error ? err.message : String(err)
            })`,
          );
        }
        // Only a large buffer is kept, and only while large batches go out:
        // a session whose traffic is small or idle holds no write buffer.
        this.#spare = bytes.byteLength >= QUIET_WRITE_BYTES ? written : null;
        this.#written += frames;
        this.#wakeWaiters();
      }
    } catch (err) {
      this.#failWrites(err);
    } finally {
      this.#writing = false;
    }
  }

  #wakeWaiters(): void {
    while (this.#writeWaiters.length > 0 && this.#writeWaiters[0].count <= this.#written) {
      this.#writeWaiters.shift()!.resolve();
    }
    const room = this.#roomWaiter;
    if (room && this.#queued - this.#written < room.below) {
      this.#roomWaiter = null;
      room.resolve();
    }
  }

  #failWrites(err: unknown): void {
    if (this.#writeFailure) return;
    this.#writeFailure = err;
    this.#outgoing = [];
    this.#staging = this.#spare = null;
    this.#stagedBytes = this.#stagedFrames = 0;
    for (const waiter of this.#writeWaiters.splice(0)) waiter.reject(err);
    const room = this.#roomWaiter;
    this.#roomWaiter = null;
    room?.resolve();
    this.#onWriteFailure?.(err);
  }
}

function handshakeFrame(message: Uint8Array): Uint8Array {
  const frame = new Uint8Array(HEADER_SIZE + message.byteLength);
  encodeHeader(frame, HANDSHAKE_NONCE_SIZE, message.byteLength);
  frame.set(message, HEADER_SIZE);
  return frame;
}

function nonceIs(nonce: Uint8Array, n: number): boolean {
  const view = new DataView(
    nonce.buffer,
    nonce.byteOffset,
    TRANSPORT_NONCE_SIZE,
  );
  return view.getUint32(0) === 0 && view.getBigUint64(4) === BigInt(n);
}
