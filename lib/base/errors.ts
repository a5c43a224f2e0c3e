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
  /** The peer's own words after the code (untrusted text). */
  readonly detail: string;
  constructor(code: number, detail: string) {
    super(`server error ${code} (${errorCodeName(code)}): ${detail}`);
    this.code = code;
    this.detail = detail;
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

/** One of the protocol's ERROR codes. */
export type ErrorCodeValue = typeof ErrorCode[keyof typeof ErrorCode];

/**
 * What each ERROR code is called and what it becomes elsewhere: `name` in
 * messages and logs, `label` as the outcome label of the OPEN metrics, and
 * `socksReply`, the RFC 1928 reply a SOCKS5 client gets when its OPEN is
 * answered with this code (0x01 general failure, 0x02 not allowed by the
 * ruleset, 0x04 host unreachable). An ERROR 3 whose detail says the target
 * refused becomes 0x05 instead: see {@linkcode saysTargetRefused}.
 */
export const ERROR_CODES = {
  [ErrorCode.protocolViolation]: {
    name: "protocol violation",
    label: "protocol_violation",
    socksReply: 0x01,
  },
  [ErrorCode.refused]: {
    name: "refused by the server's policy",
    label: "refused",
    socksReply: 0x02,
  },
  [ErrorCode.unreachable]: { name: "target unreachable", label: "unreachable", socksReply: 0x04 },
  [ErrorCode.busy]: { name: "server busy", label: "busy", socksReply: 0x01 },
  [ErrorCode.timedOut]: { name: "timed out", label: "timed_out", socksReply: 0x01 },
  [ErrorCode.internal]: { name: "internal error", label: "internal", socksReply: 0x01 },
} as const satisfies Record<ErrorCodeValue, { name: string; label: string; socksReply: number }>;

/** The entry of `code` in {@linkcode ERROR_CODES}, or null for a code the protocol does not define. */
export function errorCodeInfo(code: number): typeof ERROR_CODES[ErrorCodeValue] | null {
  return Object.hasOwn(ERROR_CODES, code) ? ERROR_CODES[code as ErrorCodeValue] : null;
}

/** Human name of an ERROR code, for messages and logs. */
export function errorCodeName(code: number): string {
  return errorCodeInfo(code)?.name ?? "unknown error code";
}

/**
 * The detail of the ERROR 3 a server sends when the target actively refused
 * the connection (rather than being unreachable).
 */
export function targetRefusedDetail(target: string): string {
  return `connection refused by ${target}`;
}

/**
 * Whether an ERROR 3 detail says the target refused the connection. The wire
 * has one code for both, so the words are all a client has to choose SOCKS
 * reply 0x05 over 0x04; any peer's wording that says "refused" counts.
 */
export function saysTargetRefused(detail: string): boolean {
  return /refused/i.test(detail);
}
