/**
 * Typed errors for every way a Cipherlink connection can fail.
 *
 * Callers branch on the class (`instanceof ProtocolError`), never on message
 * text. Each class carries the wording the CLI prints after
 * `cipherlink: error: `, so the layers below decide what the user is told.
 *
 * @example
 * ```ts
 * import { ProtocolError } from "./errors.ts";
 * try {
 *   throw new ProtocolError("unexpected frame type 9");
 * } catch (err) {
 *   if (err instanceof ProtocolError) console.error(err.message);
 * }
 * ```
 * @module
 */

/** Base class of all Cipherlink errors. */
export class CipherlinkError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The peer broke the wire protocol: a bad header, a wrong counter, a frame
 * that is not allowed at this point. Printed as `protocol violation: …`.
 */
export class ProtocolError extends CipherlinkError {
  constructor(detail: string, options?: ErrorOptions) {
    super(`protocol violation: ${detail}`, options);
  }
}

/**
 * A frame header that fails its checks (version, nonce_size, data_size):
 * the connection is dropped after those 9 bytes, with no reply.
 */
export class FrameHeaderError extends ProtocolError {}

/**
 * A version-1 packet: the Python prototype's PyNaCl SecretBox format, which
 * this version does not speak. Named separately so logs can say so.
 */
export class LegacyProtocolError extends FrameHeaderError {
  constructor() {
    super(
      "version-1 packet (the legacy Python prototype format) is not supported; upgrade the peer to protocol version 2",
    );
  }
}

/**
 * A handshake or transport message did not decrypt: a wrong key, a tampered
 * byte, or garbage. Printed as `authentication failed: …`.
 */
export class AuthenticationError extends CipherlinkError {
  constructor(detail: string, options?: ErrorOptions) {
    super(`authentication failed: ${detail}`, options);
  }
}

/** The TCP stream ended before the peer's CLOSE: the data may be cut short. */
export class TruncationError extends CipherlinkError {
  constructor(detail = "the connection ended before the peer's CLOSE") {
    super(`stream truncated: ${detail}`);
  }
}

/** A deadline passed (handshake, idle, keepalive). */
export class TimeoutError extends CipherlinkError {}

/** The peer answered none of the keepalive PINGs. */
export class KeepaliveTimeoutError extends TimeoutError {}

/** No frame crossed in either direction for the idle timeout. */
export class IdleTimeoutError extends TimeoutError {}

/** The peer sent an ERROR frame; `code` is the protocol's ERROR code. */
export class RemoteError extends CipherlinkError {
  readonly code: number;
  constructor(code: number, detail: string) {
    super(`server error ${code} (${errorCodeName(code)}): ${detail}`);
    this.code = code;
  }
}

/** A key file is missing, unreadable or malformed. */
export class KeyFileError extends CipherlinkError {}

/**
 * A crypto provider cannot be used: libcrypto not found, too old, or a call
 * into it failed. The CLI exits 1 with the message (what was tried).
 */
export class CryptoLibraryError extends CipherlinkError {}

/** The command line was wrong; the CLI exits 2. */
export class UsageError extends CipherlinkError {}

/**
 * A target host that the server will not act on as spelled (a non-canonical
 * IPv4 literal, a non-ASCII name): answered with ERROR 2 and this message.
 */
export class TargetError extends CipherlinkError {}

/** ERROR frame codes from the protocol, section 3. */
export const ErrorCode = {
  protocolViolation: 1,
  refused: 2,
  unreachable: 3,
  busy: 4,
  timedOut: 5,
  internal: 6,
} as const;

/** Human name of an ERROR code, for messages and logs. */
export function errorCodeName(code: number): string {
  switch (code) {
    case ErrorCode.protocolViolation:
      return "protocol violation";
    case ErrorCode.refused:
      return "refused by the server's policy";
    case ErrorCode.unreachable:
      return "target unreachable";
    case ErrorCode.busy:
      return "server busy";
    case ErrorCode.timedOut:
      return "timed out";
    case ErrorCode.internal:
      return "internal error";
    default:
      return "unknown error code";
  }
}
