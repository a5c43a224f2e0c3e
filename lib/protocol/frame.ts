/**
 * The frame codec: the 9-byte header every Cipherlink frame starts with, and
 * the limits that decide a frame from its header alone.
 *
 * Layout (big-endian): `version u8 | nonce_size u32 | data_size u32`, then
 * `nonce_size` bytes of nonce and `data_size` bytes of data.
 *
 * @example
 * ```ts
 * import { encodeHeader, parseHeader, HEADER_SIZE } from "./frame.ts";
 * const header = new Uint8Array(HEADER_SIZE);
 * encodeHeader(header, 12, 100);
 * const { dataSize } = parseHeader(header, 12, 16); // 100
 * ```
 * @module
 */

import { FrameHeaderError, LegacyProtocolError } from "../base/errors.ts";

/** The protocol version this implementation speaks. */
export const PROTOCOL_VERSION = 2;
/** The version of the Python prototype's SecretBox packet. */
export const LEGACY_VERSION = 1;
/** Bytes in a frame header. */
export const HEADER_SIZE = 9;
/** nonce_size of handshake frames. */
export const HANDSHAKE_NONCE_SIZE = 0;
/** nonce_size of transport frames. */
export const TRANSPORT_NONCE_SIZE = 12;
/** Largest data field: the Noise message limit. */
export const MAX_DATA_SIZE = 65535;
/** AES-GCM tag length. */
export const TAG_SIZE = 16;
/** Largest transport plaintext: type byte plus body. */
export const MAX_PLAINTEXT_SIZE = MAX_DATA_SIZE - TAG_SIZE;
/** Largest DATA body: the plaintext limit less the type byte. */
export const MAX_DATA_BODY = MAX_PLAINTEXT_SIZE - 1;
/** Largest whole frame on the wire. */
export const MAX_FRAME_SIZE = HEADER_SIZE + TRANSPORT_NONCE_SIZE +
  MAX_DATA_SIZE;

/** What a header announces. */
export interface FrameHeader {
  nonceSize: number;
  dataSize: number;
}

/**
 * Writes a version-2 header into the first 9 bytes of `target`.
 *
 * @example
 * ```ts
 * const h = new Uint8Array(9);
 * encodeHeader(h, 0, 48); // handshake frame of 48 data bytes
 * ```
 */
export function encodeHeader(
  target: Uint8Array,
  nonceSize: number,
  dataSize: number,
): void {
  if (dataSize > MAX_DATA_SIZE) {
    throw new RangeError(`data_size ${dataSize} exceeds ${MAX_DATA_SIZE}`);
  }
  const view = new DataView(target.buffer, target.byteOffset, HEADER_SIZE);
  view.setUint8(0, PROTOCOL_VERSION);
  view.setUint32(1, nonceSize);
  view.setUint32(5, dataSize);
}

/**
 * Checks a header against what the connection expects at this point and
 * returns its sizes. Throws {@linkcode FrameHeaderError} (or
 * {@linkcode LegacyProtocolError} for a version-1 packet) so that the caller
 * drops the connection before reading or allocating anything more.
 *
 * @param header at least 9 bytes
 * @param expectedNonceSize 0 during the handshake, 12 afterwards
 * @param minDataSize the smallest data field allowed (16 where an AEAD tag
 *   must be present)
 * @example
 * ```ts
 * parseHeader(Uint8Array.of(2, 0, 0, 0, 12, 0, 0, 0, 17), 12, 16);
 * ```
 */
export function parseHeader(
  header: Uint8Array,
  expectedNonceSize: number,
  minDataSize: number,
): FrameHeader {
  const view = new DataView(header.buffer, header.byteOffset, HEADER_SIZE);
  const version = view.getUint8(0);
  if (version === LEGACY_VERSION) throw new LegacyProtocolError();
  if (version !== PROTOCOL_VERSION) {
    throw new FrameHeaderError(`unsupported protocol version ${version}`);
  }
  const nonceSize = view.getUint32(1);
  if (nonceSize !== expectedNonceSize) {
    throw new FrameHeaderError(
      `nonce_size ${nonceSize} where ${expectedNonceSize} was expected`,
    );
  }
  const dataSize = view.getUint32(5);
  if (dataSize > MAX_DATA_SIZE) {
    throw new FrameHeaderError(
      `data_size ${dataSize} exceeds the limit of ${MAX_DATA_SIZE}`,
    );
  }
  if (dataSize < minDataSize) {
    throw new FrameHeaderError(
      `data_size ${dataSize} is below the minimum of ${minDataSize}`,
    );
  }
  return { nonceSize, dataSize };
}
