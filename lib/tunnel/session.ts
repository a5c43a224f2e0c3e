/**
 * A tunnel session over a secure channel: OPEN, then a full-duplex byte
 * stream of DATA with half-closes (CLOSE), PING/PONG, ERROR, keepalive and
 * idle timeout. The whole state machine of a session lives here.
 *
 * States, per direction: open -> CLOSE sent (we write no more) and open ->
 * CLOSE received (the peer writes no more). The session ends cleanly once
 * both CLOSEs have crossed; any error, ERROR frame or truncation aborts it.
 *
 * @example
 * ```ts
 * import { SecureChannel } from "../protocol/channel.ts";
 * import { Session } from "./session.ts";
 * import { SERVICE_TARGET } from "../protocol/target.ts";
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const psk = await Deno.readFile("keys/shared_key.key");
 * const session = Session.open(await SecureChannel.handshake(conn, psk, "initiator"), SERVICE_TARGET);
 * const writer = session.writable.getWriter();
 * await writer.write(new TextEncoder().encode("hello"));
 * await writer.close();
 * for await (const chunk of session.readable) console.log(chunk);
 * ```
 * @module
 */

import { Liveness } from "./liveness.ts";
import { type SecureChannel } from "../protocol/channel.ts";
import { MAX_PING_BODY, MessageType } from "../protocol/messages.ts";
import { CipherlinkError, ErrorCode, ProtocolError, TruncationError } from "../base/errors.ts";
import { type Readable, sourceOf, type Writable, writeAll } from "../protocol/conn.ts";
import { MAX_DATA_BODY } from "../protocol/frame.ts";
import { answeredAsViolation, encodeErrorBody, remoteErrorOf } from "../protocol/error_body.ts";
import { concat } from "../base/bytes.ts";
import { decodeTarget, encodeTarget, type Target } from "../protocol/target.ts";
import { type HostPort } from "../protocol/hostport.ts";

/** Session settings. Times are in milliseconds; 0 turns a timer off. */
export interface SessionOptions {
  /** Send PING after this much silence from the peer; drop after 3 unanswered. */
  keepaliveMs?: number;
  /** Abort when no frame crossed in either direction for this long. */
  idleTimeoutMs?: number;
}

/** Frames a session may have encrypting or waiting for the wire at once. */
export const MAX_FRAMES_IN_FLIGHT = 4;
/** Read size of a quiet source; it grows to a full frame while data flows. */
export const QUIET_READ_SIZE = 1024;
/**
 * How long a last frame (CLOSE, ERROR) may take to leave before the
 * connection is closed anyway. `ended` resolves only after it left (or
 * this passed), so a process may exit right after.
 */
const GOODBYE_GRACE_MS = 1000;
/**
 * After a failed write, how long the session looks for the peer's reason (an
 * ERROR already on its way) before it reports the write failure itself.
 */
const WRITE_FAILURE_GRACE_MS = 1000;

/**
 * Waits for the client's OPEN, the first transport message, and decodes its
 * target. Throws {@linkcode ProtocolError} for anything else.
 */
export async function receiveOpen(channel: SecureChannel): Promise<Target> {
  const message = await channel.receive();
  if (!message) {
    throw new TruncationError("the client closed the connection before OPEN");
  }
  // The channel applies REKEY itself; before OPEN it is still a frame other than OPEN.
  if (channel.rekeys.received > 0) {
    throw new ProtocolError("the first message must be OPEN, not REKEY");
  }
  if (message.type !== MessageType.open) {
    throw new ProtocolError(
      `the first message must be OPEN, not type ${message.type}`,
    );
  }
  return decodeTarget(message.body);
}

/** How a session ended, for logs and metrics. */
export interface SessionSummary {
  bytesIn: number;
  bytesOut: number;
  rekeysSent: number;
  rekeysReceived: number;
  error: Error | null;
}

/** One tunnel session: a duplex plaintext byte stream over a channel. */
export class Session {
  readonly channel: SecureChannel;
  /** Client side: resolves at OPEN_OK, rejects with the server's ERROR. */
  readonly opened: Promise<void>;
  /** Resolves when the session ended, cleanly or not. */
  readonly ended: Promise<SessionSummary>;

  #readable: ReadableStream<Uint8Array> | null = null;
  #writable: WritableStream<Uint8Array> | null = null;
  #resolveOpened!: () => void;
  #rejectOpened!: (err: Error) => void;
  #resolveEnded!: (summary: SessionSummary) => void;
  #awaitingOpenOk: boolean;
  #sentClose = false;
  #receivedClose = false;
  #finished = false;
  #error: Error | null = null;
  #bytesIn = 0;
  #bytesOut = 0;
  #liveness = new Liveness();
  #receiving = false;
  /** Set while a failed write waits for the peer's last words (see #writeFailed). */
  #lastWords: { error: unknown; timer: ReturnType<typeof setTimeout> } | null = null;
  /** PINGs this side sent that no PONG has answered yet (their bodies are all empty). */
  #pingsAwaitingPong = 0;
  /** The PONG being sent: no further frame is read until it is on the wire. */
  #pong: Promise<void> | null = null;
  // The receiver's hand-off: a body held for read(), or pumpTo's sink.
  #mailbox: Uint8Array | null = null;
  #sink: Writable | null = null;
  #taken: (() => void) | null = null;
  #wakeReader: (() => void) | null = null;
  #pumpDone: { resolve: () => void; reject: (err: Error) => void } | null = null;

  private constructor(
    channel: SecureChannel,
    awaitingOpenOk: boolean,
    options: SessionOptions,
  ) {
    this.channel = channel;
    this.#awaitingOpenOk = awaitingOpenOk;
    this.opened = new Promise((resolve, reject) => {
      this.#resolveOpened = resolve;
      this.#rejectOpened = reject;
    });
    this.opened.catch(() => {});
    if (!awaitingOpenOk) this.#resolveOpened();
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
    channel.onWriteFailure = (err) => this.#writeFailed(err);
    this.#startTimers(options);
    this.#receiveLoop();
  }

  /** Client side: sends OPEN for `target` and returns the session at once. */
  static open(
    channel: SecureChannel,
    target: Target | HostPort,
    options: SessionOptions = {},
  ): Session {
    const session = new Session(channel, true, options);
    channel.post(Uint8Array.of(MessageType.open, ...encodeTarget(target)));
    return session;
  }

  /**
   * Server side, after {@linkcode receiveOpen}: answers OPEN_OK and returns
   * the established session.
   */
  static async accept(
    channel: SecureChannel,
    options: SessionOptions = {},
  ): Promise<Session> {
    await channel.send(MessageType.openOk);
    return new Session(channel, false, options);
  }

  /** Server side: answers OPEN with ERROR `code` and closes the connection. */
  static async reject(
    channel: SecureChannel,
    code: number,
    message: string,
  ): Promise<void> {
    try {
      await channel.send(MessageType.error, encodeErrorBody(code, message));
      await channel.flush();
    } catch {
      // The peer may be gone already; closing is all that is left.
    } finally {
      channel.close();
    }
  }

  /**
   * DATA from the peer as a stream; closes at its CLOSE, errors on any
   * failure. Made on first use: the data path (pumpFrom/pumpTo) needs none.
   */
  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const body = await this.read();
        if (body === null) controller.close();
        else controller.enqueue(body);
      },
      cancel: () => this.abort(ErrorCode.internal, "the reader went away"),
    }, { highWaterMark: 0 });
  }

  /** Data to the peer as a stream; close() sends CLOSE. Made on first use. */
  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= new WritableStream<Uint8Array>({
      write: (chunk) => this.write(chunk),
      close: () => this.closeWrite(),
      abort: () => this.abort(ErrorCode.internal, "the local side of the stream failed"),
    });
  }

  /** Bytes of DATA received and sent so far. */
  get bytes(): { in: number; out: number } {
    return { in: this.#bytesIn, out: this.#bytesOut };
  }

  /**
   * The next DATA body from the peer, or null once its CLOSE arrived; throws
   * the session's error. One reader at a time; the body is the caller's.
   */
  async read(): Promise<Uint8Array | null> {
    for (;;) {
      if (this.#error) throw this.#error;
      const body = this.#mailbox;
      if (body) {
        this.#mailbox = null;
        // A synchronous provider lends its large bodies until the next frame.
        const own = this.channel.lendsBodies ? body.slice() : body;
        this.#wakeReceiver();
        return own;
      }
      if (this.#receivedClose) return null;
      await new Promise<void>((resolve) => (this.#wakeReader = resolve));
    }
  }

  /**
   * Writes every DATA body to `sink` until the peer's CLOSE (resolves) or a
   * failure (rejects). The receiver writes each body itself before it takes
   * the next frame, so a slow sink slows the peer through TCP flow control.
   */
  async pumpTo(sink: Writable): Promise<void> {
    if (this.#sink) throw new Error("the session is already being read");
    for (let body; (body = this.#mailbox) !== null && !this.#error;) {
      this.#mailbox = null;
      await this.#writeToSink(sink, body);
    }
    if (this.#error) throw this.#error;
    this.#sink = sink;
    const done = new Promise<void>((resolve, reject) => (this.#pumpDone = { resolve, reject }));
    this.#wakeReceiver();
    if (this.#receivedClose) this.#pumpDone?.resolve();
    await done;
  }

  /**
   * Sends everything `source` yields as DATA, then CLOSE. Reads straight into
   * one reused plaintext buffer (type byte at offset 0): the seal copies it
   * before post() returns.
   */
  async pumpFrom(source: Readable | ReadableStream<Uint8Array>): Promise<void> {
    const stream = source instanceof ReadableStream ? sourceOf(source) : null;
    const input = stream ?? (source as Readable);
    // Small while the source is quiet (an idle session's pending read holds
    // 4 KiB) and a full frame while data flows, so bulk data goes out in
    // 64 KiB frames and interactive data in small ones, without waiting to
    // fill a frame.
    let buffer = new Uint8Array(1 + QUIET_READ_SIZE);
    try {
      for (;;) {
        const room = this.channel.roomFor(MAX_FRAMES_IN_FLIGHT);
        if (room) await room;
        if (this.#sentClose || this.#finished || this.#lastWords) break;
        const capacity = buffer.byteLength - 1;
        const count = await input.read(buffer.subarray(1));
        if (count === null) break;
        if (count === 0) continue;
        if (this.#sentClose || this.#finished || this.#lastWords) break;
        buffer[0] = MessageType.data;
        this.#bytesOut += count;
        this.#liveness.active();
        this.channel.post(buffer.subarray(0, 1 + count));
        if (count === capacity && capacity < MAX_DATA_BODY) {
          buffer = new Uint8Array(1 + MAX_DATA_BODY);
        } else if (count < QUIET_READ_SIZE && capacity > QUIET_READ_SIZE) {
          buffer = new Uint8Array(1 + QUIET_READ_SIZE);
        }
      }
    } catch (err) {
      if (!this.#finished) this.abort(ErrorCode.internal, "reading the local stream failed");
      throw err;
    } finally {
      stream?.release();
    }
    await this.closeWrite();
  }

  /**
   * Sends `chunk` as DATA (split into frames); resolves when there is room
   * for more (backpressure). Rejects once the session is closed for writing.
   */
  write(chunk: Uint8Array): Promise<void> {
    if (this.#sentClose || this.#finished) {
      return Promise.reject(
        this.#error ?? new CipherlinkError("the session is closed for writing"),
      );
    }
    for (let at = 0; at < chunk.byteLength; at += MAX_DATA_BODY) {
      const piece = chunk.subarray(at, at + MAX_DATA_BODY);
      const plaintext = new Uint8Array(1 + piece.byteLength);
      plaintext[0] = MessageType.data;
      plaintext.set(piece, 1);
      this.#bytesOut += piece.byteLength;
      this.channel.post(plaintext);
    }
    this.#liveness.active();
    return this.channel.roomFor(MAX_FRAMES_IN_FLIGHT) ?? Promise.resolve();
  }

  /** Sends CLOSE after every queued DATA: a half-close, like TCP FIN. */
  async closeWrite(): Promise<void> {
    if (this.#sentClose || this.#finished) return;
    this.#sentClose = true;
    // Frames reach the wire in order: once CLOSE is written, all DATA is.
    try {
      await this.channel.send(MessageType.close);
    } catch {
      return; // the failure ended the session already (onWriteFailure)
    }
    this.#maybeFinish();
  }

  /**
   * Ends the session at once: sends ERROR `code` (best effort) and closes
   * the connection. Readers and writers see the error.
   */
  abort(code: number, message: string, cause?: Error): void {
    if (this.#finished) return;
    this.channel.post(errorPlaintext(code, message));
    this.#finish(
      cause ?? new CipherlinkError(message),
      this.channel.closeAfter(this.channel.flush(), GOODBYE_GRACE_MS),
    );
  }

  /** Closes the connection without a word: for peers that broke the protocol. */
  drop(error: Error): void {
    // A failed write is waiting for the peer's last frames, which end the
    // session with the peer's reason; a caller's drop must not pre-empt them.
    if (this.#finished || this.#lastWords) return;
    this.channel.close();
    this.#finish(error);
  }

  /**
   * The session's one receiver, from construction to the end: handles every
   * message, and hands each DATA body to the sink of pumpTo (written before
   * the next frame is taken) or to read() (held until taken). After the
   * peer's CLOSE it keeps reading control messages (PING, ERROR).
   */
  async #receiveLoop(): Promise<void> {
    while (!this.#finished) {
      if (this.#pong) {
        await this.#pong.catch(() => {}); // a failed write ended the session already
        this.#pong = null;
        continue;
      }
      let message;
      this.#receiving = true;
      try {
        message = await this.channel.receive();
      } catch (err) {
        return this.#fail(this.#lastWords?.error ?? err);
      } finally {
        this.#receiving = false;
      }
      if (!message) return this.#fail(this.#lastWords?.error ?? new TruncationError());
      this.#liveness.heard();
      const body = this.#handle(message.type, message.body);
      if (body === null) {
        this.#wakeReader?.();
        this.#pumpDone?.resolve();
      } else if (body !== undefined && !this.#finished) {
        if (this.#sink) {
          await this.#writeToSink(this.#sink, body);
        } else {
          this.#mailbox = body;
          this.#wakeReader?.();
          await new Promise<void>((resolve) => (this.#taken = resolve));
        }
      }
    }
  }

  async #writeToSink(sink: Writable, body: Uint8Array): Promise<void> {
    try {
      await writeAll(sink, body);
    } catch (err) {
      this.abort(
        ErrorCode.internal,
        "writing to the local side failed",
        err instanceof Error ? err : undefined,
      );
    }
  }

  /** Lets the receiver go on once read() or pumpTo took the held body. */
  #wakeReceiver(): void {
    const taken = this.#taken;
    this.#taken = null;
    taken?.();
  }

  /**
   * Handles one message: DATA's body, null for CLOSE, undefined for a
   * control message (or a violation, which ends the session).
   */
  #handle(type: number, body: Uint8Array): Uint8Array | null | undefined {
    switch (type) {
      case MessageType.data:
        if (this.#awaitingOpenOk) return this.#violation("DATA before OPEN_OK");
        if (this.#receivedClose) return this.#violation("DATA after CLOSE");
        if (body.byteLength === 0) return this.#violation("empty DATA");
        this.#bytesIn += body.byteLength;
        return body;
      case MessageType.close:
        if (this.#awaitingOpenOk) {
          return this.#violation("CLOSE before OPEN_OK");
        }
        if (this.#receivedClose) return this.#violation("a second CLOSE");
        if (body.byteLength !== 0) return this.#violation("CLOSE with a body");
        this.#receivedClose = true;
        this.#maybeFinish();
        return null;
      case MessageType.ping:
        if (body.byteLength > MAX_PING_BODY) {
          return this.#violation("PING body over 8 bytes");
        }
        // At most one PONG is outstanding: the receiver reads nothing more
        // until it is on the wire, so a peer that PINGs and never reads
        // stalls its own stream instead of growing a queue here.
        this.#pong = this.channel.send(MessageType.pong, body);
        return undefined;
      case MessageType.pong:
        // Our PINGs (keepalive) carry an empty body; a PONG must echo one of them.
        if (this.#pingsAwaitingPong === 0) return this.#violation("PONG without a PING");
        if (body.byteLength !== 0) return this.#violation("PONG body differs from the PING's");
        this.#pingsAwaitingPong--;
        return undefined;
      case MessageType.openOk:
        if (!this.#awaitingOpenOk) return this.#violation("unexpected OPEN_OK");
        if (body.byteLength !== 0) return this.#violation("OPEN_OK with a body");
        this.#awaitingOpenOk = false;
        this.#resolveOpened();
        return undefined;
      case MessageType.error: {
        this.channel.close();
        this.#finish(remoteErrorOf(body));
        return undefined;
      }
      default:
        return this.#violation(`unexpected message type ${type}`);
    }
  }

  #violation(detail: string): undefined {
    const error = new ProtocolError(detail);
    this.abort(ErrorCode.protocolViolation, detail, error);
    return undefined;
  }

  /**
   * A write failed, typically because the peer answered ERROR and closed
   * while we were still sending (a refused target with data already queued).
   * What the peer said is the real reason: the receiver keeps reading, and
   * the write failure is reported only if no ERROR arrives first (the end of
   * the connection, or WRITE_FAILURE_GRACE_MS, whichever comes first).
   */
  #writeFailed(err: unknown): void {
    if (this.#finished || this.#lastWords) return;
    const timer = setTimeout(() => this.#fail(err), WRITE_FAILURE_GRACE_MS);
    this.#lastWords = { error: err, timer };
  }

  #fail(err: unknown): void {
    if (this.#finished) return;
    if (this.#lastWords) {
      clearTimeout(this.#lastWords.timer);
      this.#lastWords = null;
    }
    const error = err instanceof Error ? err : new Error(String(err));
    if (answeredAsViolation(error)) {
      this.abort(ErrorCode.protocolViolation, "protocol violation", error);
    } else this.drop(error);
  }

  #maybeFinish(): void {
    if (this.#sentClose && this.#receivedClose && !this.#finished) {
      this.#finish(null, this.channel.closeAfter(this.channel.flush(), GOODBYE_GRACE_MS));
    }
  }

  #finish(error: Error | null, closed: Promise<void> = Promise.resolve()): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#liveness.stop();
    if (this.#lastWords) clearTimeout(this.#lastWords.timer);
    if (error) {
      this.#error = error;
      this.#rejectOpened(error);
      // A reader waiting on a quiet peer sees the error now, not at the close.
      this.channel.interrupt(error);
      this.#mailbox = null;
      this.#pumpDone?.reject(error);
    }
    this.#wakeReader?.();
    this.#wakeReceiver();
    // A clean end needs both CLOSEs, and CLOSE before OPEN_OK is a violation:
    // so without an error, `opened` has already resolved.
    closed.then(() =>
      this.#resolveEnded({
        bytesIn: this.#bytesIn,
        bytesOut: this.#bytesOut,
        rekeysSent: this.channel.rekeys.sent,
        rekeysReceived: this.channel.rekeys.received,
        error,
      })
    );
  }

  #startTimers({ keepaliveMs = 0, idleTimeoutMs = 0 }: SessionOptions): void {
    this.#liveness.start(keepaliveMs, idleTimeoutMs, {
      // A reader that is not reading (backpressure) cannot see the peer's
      // frames, so silence only counts against the peer while we listen.
      listening: () => this.#receiving,
      expired: (reason, error) => this.abort(ErrorCode.timedOut, reason, error),
      ping: () => {
        this.#pingsAwaitingPong++;
        this.channel.post(Uint8Array.of(MessageType.ping));
      },
    });
  }
}

function errorPlaintext(code: number, message: string): Uint8Array {
  return concat([Uint8Array.of(MessageType.error), encodeErrorBody(code, message)]);
}
