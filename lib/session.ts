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
 * import { SecureChannel } from "./channel.ts";
 * import { Session } from "./session.ts";
 * import { SERVICE_TARGET } from "./target.ts";
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

import { MessageType, type SecureChannel } from "./channel.ts";
import {
  CipherlinkError,
  ErrorCode,
  FrameHeaderError,
  IdleTimeoutError,
  KeepaliveTimeoutError,
  ProtocolError,
  RemoteError,
  TruncationError,
} from "./errors.ts";
import { MAX_DATA_BODY } from "./frame.ts";
import { decodeTarget, encodeTarget, type HostPort, type Target } from "./target.ts";

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
export const QUIET_READ_SIZE = 4096;
/** Received bytes a session queues for a reader that is not reading. */
export const READ_QUEUE_BYTES = 4 * MAX_DATA_BODY;
/** Unanswered PINGs after which the peer is considered gone. */
export const KEEPALIVE_MISSES = 3;
const MAX_PING_BODY = 8;
/** How long a last frame may take to leave before the connection is closed anyway. */
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
  if (message.type !== MessageType.open) {
    throw new ProtocolError(
      `the first message must be OPEN, not type ${message.type}`,
    );
  }
  // The channel applies REKEY itself; before OPEN it is still a frame other than OPEN.
  if (channel.rekeys.received > 0) {
    throw new ProtocolError("the first message must be OPEN, not REKEY");
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
  /** DATA from the peer; closes at its CLOSE, errors on any failure. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Data to the peer; close() sends CLOSE. */
  readonly writable: WritableStream<Uint8Array>;
  /** Client side: resolves at OPEN_OK, rejects with the server's ERROR. */
  readonly opened: Promise<void>;
  /** Resolves when the session ended, cleanly or not. */
  readonly ended: Promise<SessionSummary>;

  #readController!: ReadableStreamDefaultController<Uint8Array>;
  #resolveOpened!: () => void;
  #rejectOpened!: (err: Error) => void;
  #resolveEnded!: (summary: SessionSummary) => void;
  #awaitingOpenOk: boolean;
  #sentClose = false;
  #receivedClose = false;
  #finished = false;
  #inFlight: Promise<void>[] = [];
  #bytesIn = 0;
  #bytesOut = 0;
  #lastReceived = Date.now();
  #lastActivity = Date.now();
  #receiving = false;
  #unansweredPings = 0;
  /** PINGs this side sent that no PONG has answered yet (their bodies are all empty). */
  #pingsAwaitingPong = 0;
  /** The PONG being sent: no further frame is read until it is on the wire. */
  #pong: Promise<void> | null = null;
  #timer: ReturnType<typeof setInterval> | undefined;
  /** Set while a failed write waits for the peer's last words (see #writeFailed). */
  #readingLastWords: Promise<void> | null = null;

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
    this.readable = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.#readController = controller;
        },
        pull: () => this.#pull(),
        cancel: () => this.abort(ErrorCode.internal, "the reader went away"),
      },
      new ByteLengthQueuingStrategy({ highWaterMark: READ_QUEUE_BYTES }),
    );
    this.writable = new WritableStream<Uint8Array>({
      write: (chunk) => this.#write(chunk),
      close: () => this.closeWrite(),
      abort: () => this.abort(ErrorCode.internal, "the local side of the stream failed"),
    });
    this.#startTimers(options);
  }

  /** Client side: sends OPEN for `target` and returns the session at once. */
  static open(
    channel: SecureChannel,
    target: Target | HostPort,
    options: SessionOptions = {},
  ): Session {
    const session = new Session(channel, true, options);
    session.#track(channel.send(MessageType.open, encodeTarget(target)));
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
      await channel.send(MessageType.error, errorBody(code, message));
      await channel.flush();
    } catch {
      // The peer may be gone already; closing is all that is left.
    } finally {
      channel.close();
    }
  }

  /** Bytes of DATA received and sent so far. */
  get bytes(): { in: number; out: number } {
    return { in: this.#bytesIn, out: this.#bytesOut };
  }

  /**
   * Sends everything `source` yields as DATA, then CLOSE. Reads straight into
   * the plaintext buffers (type byte at offset 0), so no copy is made.
   */
  async pumpFrom(source: ReadableStream<Uint8Array>): Promise<void> {
    const reader = source.getReader({ mode: "byob" });
    // One buffer, handed back by each BYOB read and reused: Web Crypto has
    // copied a plaintext by the time sendPlaintext returns. It is small while
    // the source is quiet (an idle session's pending read holds 4 KiB) and a
    // full frame while data flows, so bulk data goes out in 64 KiB frames and
    // interactive data in small ones, without waiting to fill a frame.
    let buffer = new ArrayBuffer(1 + QUIET_READ_SIZE);
    try {
      for (;;) {
        if (this.#inFlight.length >= MAX_FRAMES_IN_FLIGHT) await this.#settleOldest();
        const capacity = buffer.byteLength - 1;
        const { value, done } = await reader.read(new Uint8Array(buffer, 1, capacity));
        if (done || !value) break;
        const plaintext = new Uint8Array(value.buffer, 0, 1 + value.byteLength);
        plaintext[0] = MessageType.data;
        this.#bytesOut += value.byteLength;
        this.#sendData(plaintext);
        buffer = value.buffer as ArrayBuffer;
        if (value.byteLength === capacity && capacity < MAX_DATA_BODY) {
          buffer = new ArrayBuffer(1 + MAX_DATA_BODY);
        } else if (value.byteLength < QUIET_READ_SIZE && capacity > QUIET_READ_SIZE) {
          buffer = new ArrayBuffer(1 + QUIET_READ_SIZE);
        }
      }
    } catch (err) {
      // A failed send (awaited in #settleOldest) is #writeFailed's to report.
      if (!this.#finished && !this.#readingLastWords) {
        this.abort(ErrorCode.internal, "reading the local stream failed");
      }
      throw err;
    } finally {
      reader.releaseLock();
    }
    await this.closeWrite();
  }

  /** Sends CLOSE after every queued DATA: a half-close, like TCP FIN. */
  async closeWrite(): Promise<void> {
    if (this.#sentClose || this.#finished) return;
    this.#sentClose = true;
    // Frames reach the wire in order: once CLOSE is written, all DATA is.
    await this.#track(this.channel.send(MessageType.close));
    this.#inFlight = [];
    this.#maybeFinish();
  }

  /**
   * Ends the session at once: sends ERROR `code` (best effort) and closes
   * the connection. Readers and writers see the error.
   */
  abort(code: number, message: string, cause?: Error): void {
    if (this.#finished) return;
    const goodbye = this.channel.send(MessageType.error, errorBody(code, message))
      .then(() => this.channel.flush());
    this.#finish(cause ?? new CipherlinkError(message), this.#closeAfter(goodbye));
  }

  /** Closes the connection without a word: for peers that broke the protocol. */
  drop(error: Error): void {
    // A failed write is waiting for the peer's last frames, which end the
    // session with the peer's reason; a caller's drop must not pre-empt them.
    if (this.#readingLastWords) return;
    this.#drop(error);
  }

  #drop(error: Error): void {
    if (this.#finished) return;
    this.channel.close();
    this.#finish(error);
  }

  #write(chunk: Uint8Array): Promise<void> | void {
    for (let at = 0; at < chunk.byteLength; at += MAX_DATA_BODY) {
      const piece = chunk.subarray(at, at + MAX_DATA_BODY);
      const plaintext = new Uint8Array(1 + piece.byteLength);
      plaintext[0] = MessageType.data;
      plaintext.set(piece, 1);
      this.#bytesOut += piece.byteLength;
      this.#sendData(plaintext);
    }
    if (this.#inFlight.length > MAX_FRAMES_IN_FLIGHT) {
      return this.#settleOldest();
    }
  }

  #sendData(plaintext: Uint8Array): Promise<void> {
    if (this.#sentClose || this.#finished) {
      const refused = Promise.reject(new CipherlinkError("the session is closed for writing"));
      // Callers may drop it (pumpFrom, #write): data after the end is simply not
      // sent, and must not become an unhandled rejection that ends the process.
      refused.catch(() => {});
      return refused;
    }
    this.#lastActivity = Date.now();
    const sent = this.#track(this.channel.sendPlaintext(plaintext));
    this.#inFlight.push(sent);
    return sent;
  }

  /** Watches a send: a failed write ends the session. */
  #track(sent: Promise<void>): Promise<void> {
    sent.catch((err) => this.#writeFailed(err));
    return sent;
  }

  /**
   * A write failed, typically because the peer answered ERROR and closed
   * while we were still sending (a refused target with data already queued).
   * What the peer said is the real reason: read what remains of the
   * connection first, and report the write failure only if no ERROR (or
   * other end) arrives within WRITE_FAILURE_GRACE_MS.
   */
  #writeFailed(err: unknown): void {
    if (this.#finished || this.#readingLastWords) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((
      resolve,
    ) => (timer = setTimeout(resolve, WRITE_FAILURE_GRACE_MS)));
    // A reader already waiting on the channel will see the peer's frames
    // itself; otherwise read them here (one receiver at a time).
    const reading = this.#receiving ? this.ended.then(() => {}) : this.#readLastWords();
    this.#readingLastWords = Promise.race([reading, deadline]).then(() => {
      clearTimeout(timer);
      this.#readingLastWords = null;
      this.#fail(err);
    });
  }

  async #readLastWords(): Promise<void> {
    this.#receiving = true;
    try {
      while (!this.#finished) {
        const message = await this.channel.receive();
        if (!message) return;
        this.#handle(message.type, message.body);
      }
    } catch {
      // The connection failed: the write failure stands.
    } finally {
      this.#receiving = false;
    }
  }

  async #settleOldest(): Promise<void> {
    while (this.#inFlight.length > MAX_FRAMES_IN_FLIGHT - 1) {
      await this.#inFlight.shift();
    }
  }

  async #pull(): Promise<void> {
    if (this.#readingLastWords) await this.#readingLastWords;
    while (!this.#finished) {
      // At most one PONG is outstanding: a peer that PINGs and never reads
      // stalls its own stream instead of growing a queue here.
      if (this.#pong) await this.#pong;
      let message;
      this.#receiving = true;
      try {
        message = await this.channel.receive();
      } catch (err) {
        this.#fail(err);
        return;
      } finally {
        this.#receiving = false;
      }
      if (!message) return this.#fail(new TruncationError());
      this.#lastReceived = this.#lastActivity = Date.now();
      this.#unansweredPings = 0;
      const delivered = this.#handle(message.type, message.body);
      if (delivered) return;
    }
  }

  /** Handles one message; true when the reader got something (data or end). */
  #handle(type: number, body: Uint8Array): boolean {
    switch (type) {
      case MessageType.data:
        if (this.#awaitingOpenOk) return this.#violation("DATA before OPEN_OK");
        if (this.#receivedClose) return this.#violation("DATA after CLOSE");
        if (body.byteLength === 0) return this.#violation("empty DATA");
        this.#bytesIn += body.byteLength;
        this.#readController.enqueue(body);
        return true;
      case MessageType.close:
        if (body.byteLength !== 0) return this.#violation("CLOSE with a body");
        if (this.#awaitingOpenOk) {
          return this.#violation("CLOSE before OPEN_OK");
        }
        if (this.#receivedClose) return this.#violation("a second CLOSE");
        this.#receivedClose = true;
        this.#readController.close();
        this.#maybeFinish();
        if (!this.#finished) this.#serviceControlAfterClose();
        return true;
      case MessageType.ping:
        if (body.byteLength > MAX_PING_BODY) {
          return this.#violation("PING body over 8 bytes");
        }
        this.#pong = this.#track(this.channel.send(MessageType.pong, body))
          .catch(() => {}) // #track ended the session; the reader just stops waiting
          .finally(() => (this.#pong = null));
        return false;
      case MessageType.pong:
        // Our PINGs (keepalive) carry an empty body; a PONG must echo one of them.
        if (this.#pingsAwaitingPong === 0) return this.#violation("PONG without a PING");
        if (body.byteLength !== 0) return this.#violation("PONG body differs from the PING's");
        this.#pingsAwaitingPong--;
        return false;
      case MessageType.openOk:
        if (body.byteLength !== 0) return this.#violation("OPEN_OK with a body");
        if (!this.#awaitingOpenOk) return this.#violation("unexpected OPEN_OK");
        this.#awaitingOpenOk = false;
        this.#resolveOpened();
        return false;
      case MessageType.error: {
        const code = body[0] ?? 0;
        const text = new TextDecoder().decode(body.subarray(1));
        this.channel.close();
        this.#finish(new RemoteError(code, text || "no message"));
        return true;
      }
      default:
        return this.#violation(`unexpected message type ${type}`);
    }
  }

  /**
   * After the peer's CLOSE nobody reads the stream, but PINGs and ERRORs may
   * still come while we send: keep reading them until the session ends.
   */
  async #serviceControlAfterClose(): Promise<void> {
    if (this.#readingLastWords) await this.#readingLastWords;
    while (!this.#finished) {
      if (this.#pong) await this.#pong;
      let message;
      this.#receiving = true;
      try {
        message = await this.channel.receive();
      } catch (err) {
        return this.#fail(err);
      } finally {
        this.#receiving = false;
      }
      if (!message) return this.#fail(new TruncationError());
      this.#lastReceived = this.#lastActivity = Date.now();
      this.#unansweredPings = 0;
      this.#handle(message.type, message.body);
    }
  }

  #violation(detail: string): true {
    const error = new ProtocolError(detail);
    this.abort(ErrorCode.protocolViolation, detail, error);
    return true;
  }

  #fail(err: unknown): void {
    if (this.#finished) return;
    const error = err instanceof Error ? err : new Error(String(err));
    // A bad frame header is dropped without a word (protocol section 1); a
    // frame that arrived whole but broke the rules may be answered ERROR 1.
    if (error instanceof ProtocolError && !(error instanceof FrameHeaderError)) {
      this.abort(ErrorCode.protocolViolation, "protocol violation", error);
    } else this.#drop(error);
  }

  #maybeFinish(): void {
    if (this.#sentClose && this.#receivedClose && !this.#finished) {
      this.#finish(null, this.#closeAfter(this.channel.flush()));
    }
  }

  /**
   * Closes the connection once `flushing` is done, or after a short grace
   * period for a peer that stopped reading: a last frame (CLOSE, ERROR) is
   * delivered before `ended` resolves, so a process may exit right after.
   */
  #closeAfter(flushing: Promise<unknown>): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise((resolve) => (timer = setTimeout(resolve, GOODBYE_GRACE_MS)));
    return Promise.race([flushing.catch(() => {}), grace]).then(() => {
      clearTimeout(timer);
      this.channel.close();
    });
  }

  #finish(error: Error | null, closed: Promise<void> = Promise.resolve()): void {
    if (this.#finished) return;
    this.#finished = true;
    clearInterval(this.#timer);
    if (error) {
      this.#rejectOpened(error);
      try {
        this.#readController.error(error);
      } catch {
        // Already closed: the reader saw a clean end before the failure.
      }
    }
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
    const tick = Math.min(
      ...[keepaliveMs, idleTimeoutMs].filter((ms) => ms > 0),
    );
    if (!Number.isFinite(tick)) return;
    this.#timer = setInterval(() => {
      const now = Date.now();
      if (idleTimeoutMs > 0 && now - this.#lastActivity >= idleTimeoutMs) {
        return this.abort(
          ErrorCode.timedOut,
          "idle timeout",
          new IdleTimeoutError("idle timeout: no traffic"),
        );
      }
      // A reader that is not reading (backpressure) cannot see the peer's
      // frames, so silence only counts against the peer while we listen.
      if (
        keepaliveMs > 0 && this.#receiving &&
        now - this.#lastReceived >= keepaliveMs
      ) {
        if (this.#unansweredPings >= KEEPALIVE_MISSES) {
          return this.abort(
            ErrorCode.timedOut,
            "keepalive timeout",
            new KeepaliveTimeoutError(
              `keepalive: the peer answered none of ${KEEPALIVE_MISSES} PINGs`,
            ),
          );
        }
        this.#unansweredPings++;
        this.#pingsAwaitingPong++;
        this.#lastReceived = now;
        this.#track(this.channel.send(MessageType.ping));
      }
    }, tick / 4 > 50 ? tick / 4 : tick);
  }
}

function errorBody(code: number, message: string): Uint8Array {
  const text = new TextEncoder().encode(message).subarray(0, 1024);
  return Uint8Array.of(code, ...text);
}
