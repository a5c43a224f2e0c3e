/**
 * Hand-made wire bytes for the tests and the soak: a frame header, or a
 * whole frame, with any field values, valid or not (lib/protocol/frame.ts
 * only encodes valid ones). Nothing here is used by the program.
 * @module
 */

import { HEADER_SIZE, PROTOCOL_VERSION } from "../lib/protocol/frame.ts";

/** A 9-byte frame header with any `version`, `nonceSize` and `dataSize`. */
export function rawHeader(version: number, nonceSize: number, dataSize: number): Uint8Array {
  const header = new Uint8Array(HEADER_SIZE);
  const view = new DataView(header.buffer);
  view.setUint8(0, version);
  view.setUint32(1, nonceSize);
  view.setUint32(5, dataSize);
  return header;
}

/**
 * A whole frame: a header, `nonce`, then `data`. The header's fields follow
 * the bytes (version 2) unless `fields` makes one of them lie.
 */
export function rawFrame(
  nonce: Uint8Array,
  data: Uint8Array,
  fields: { version?: number; nonceSize?: number; dataSize?: number } = {},
): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + nonce.byteLength + data.byteLength);
  out.set(
    rawHeader(
      fields.version ?? PROTOCOL_VERSION,
      fields.nonceSize ?? nonce.byteLength,
      fields.dataSize ?? data.byteLength,
    ),
  );
  out.set(nonce, HEADER_SIZE);
  out.set(data, HEADER_SIZE + nonce.byteLength);
  return out;
}
