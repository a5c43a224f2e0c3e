/**
 * The body of an ERROR message (protocol-v2.md, section 3): one code byte,
 * then the sender's reason as UTF-8, cut to a bounded length. Sessions and
 * VPN links both speak it, so its encoding and reading live here once.
 *
 * @example
 * ```ts
 * import { encodeErrorBody, remoteErrorOf } from "./error_body.ts";
 * const body = encodeErrorBody(2, "target db:5432 is not allowed");
 * remoteErrorOf(body).code; // 2
 * ```
 * @module
 */

import { FrameHeaderError, ProtocolError, RemoteError } from "../base/errors.ts";

/** The most bytes of reason text an ERROR we send carries. */
export const MAX_ERROR_TEXT_BYTES = 1024;

/** An ERROR body: `code`, then `message` as UTF-8 cut to {@linkcode MAX_ERROR_TEXT_BYTES}. */
export function encodeErrorBody(code: number, message: string): Uint8Array {
  const text = new TextEncoder().encode(message).subarray(0, MAX_ERROR_TEXT_BYTES);
  const body = new Uint8Array(1 + text.byteLength);
  body[0] = code;
  body.set(text, 1);
  return body;
}

/**
 * Whether a failure to receive is answered with ERROR 1 before the end: a
 * frame that arrived whole but broke the rules may be; a bad frame header
 * is dropped without a word (protocol section 1), as is anything else.
 */
export function answeredAsViolation(err: unknown): err is ProtocolError {
  return err instanceof ProtocolError && !(err instanceof FrameHeaderError);
}

/** The error a received ERROR body reports (code 0 when the body is empty). */
export function remoteErrorOf(body: Uint8Array): RemoteError {
  const text = new TextDecoder().decode(body.subarray(1));
  return new RemoteError(body[0] ?? 0, text || "no message");
}
