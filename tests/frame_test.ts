/**
 * The 9-byte frame header codec (lib/protocol/frame.ts): the wire layout, the limits
 * derived from it, and every rejection rule that decides a frame from its
 * header alone (protocol v2, section 1).
 * @module
 */

import assert from "node:assert/strict";
import {
  encodeHeader,
  HEADER_SIZE,
  MAX_DATA_BODY,
  MAX_DATA_SIZE,
  MAX_FRAME_SIZE,
  MAX_PLAINTEXT_SIZE,
  parseHeader,
  TAG_SIZE,
  TRANSPORT_NONCE_SIZE,
} from "../lib/protocol/frame.ts";
import { LegacyProtocolError, ProtocolError } from "../lib/base/errors.ts";
import { rawHeader } from "../support/wire.ts";

Deno.test("frame: the limits follow from the 65535-byte Noise message and the 16-byte tag", () => {
  assert.equal(HEADER_SIZE, 9);
  assert.equal(TRANSPORT_NONCE_SIZE, 12);
  assert.equal(MAX_DATA_SIZE, 65535);
  assert.equal(TAG_SIZE, 16);
  assert.equal(MAX_PLAINTEXT_SIZE, 65519);
  assert.equal(MAX_DATA_BODY, 65518);
  assert.equal(MAX_FRAME_SIZE, 9 + 12 + 65535);
});

Deno.test("frame: encodeHeader writes version 2, nonce_size and data_size big-endian", () => {
  const header = new Uint8Array(HEADER_SIZE);
  encodeHeader(header, 12, 0x0102);
  assert.deepEqual(header, Uint8Array.of(2, 0, 0, 0, 12, 0, 0, 0x01, 0x02));
  encodeHeader(header, 0, 65535);
  assert.deepEqual(header, Uint8Array.of(2, 0, 0, 0, 0, 0, 0, 0xff, 0xff));
});

Deno.test("frame: encodeHeader writes at the view's offset and touches only 9 bytes", () => {
  const backing = new Uint8Array(20).fill(0xee);
  encodeHeader(backing.subarray(5), 12, 48);
  assert.deepEqual(backing.subarray(0, 5), new Uint8Array(5).fill(0xee));
  assert.deepEqual(backing.subarray(5, 14), Uint8Array.of(2, 0, 0, 0, 12, 0, 0, 0, 48));
  assert.deepEqual(backing.subarray(14), new Uint8Array(6).fill(0xee));
});

Deno.test("frame: encodeHeader refuses a data_size above 65535", () => {
  assert.throws(() => encodeHeader(new Uint8Array(HEADER_SIZE), 12, 65536), RangeError);
});

Deno.test("frame: parseHeader returns the sizes of a valid header, also inside a larger buffer", () => {
  assert.deepEqual(parseHeader(rawHeader(2, 12, 17), 12, 16), { nonceSize: 12, dataSize: 17 });
  assert.deepEqual(parseHeader(rawHeader(2, 0, 48), 0, 48), { nonceSize: 0, dataSize: 48 });
  const backing = new Uint8Array(30);
  backing.set(rawHeader(2, 12, 300), 7);
  assert.deepEqual(parseHeader(backing.subarray(7), 12, 16), { nonceSize: 12, dataSize: 300 });
});

Deno.test("frame: parseHeader reads back what encodeHeader wrote", () => {
  const header = new Uint8Array(HEADER_SIZE);
  for (const [nonceSize, dataSize] of [[0, 0], [0, 48], [12, 16], [12, 65535]]) {
    encodeHeader(header, nonceSize, dataSize);
    assert.deepEqual(parseHeader(header, nonceSize, 0), { nonceSize, dataSize });
  }
});

Deno.test("frame: a version-1 header is a LegacyProtocolError naming the legacy format", () => {
  try {
    parseHeader(rawHeader(1, 24, 100), 12, 16);
    assert.fail("a version-1 header was accepted");
  } catch (error) {
    assert.ok(error instanceof LegacyProtocolError);
    assert.ok(error instanceof ProtocolError, "legacy is a kind of protocol violation");
    assert.match(error.message, /version-1/);
    assert.match(error.message, /legacy/i);
  }
});

Deno.test("frame: versions other than 1 and 2 are a ProtocolError that is not the legacy one", () => {
  for (const version of [0, 3, 255]) {
    try {
      parseHeader(rawHeader(version, 12, 100), 12, 16);
      assert.fail(`version ${version} was accepted`);
    } catch (error) {
      assert.ok(error instanceof ProtocolError, `version ${version}`);
      assert.ok(!(error instanceof LegacyProtocolError), `version ${version}`);
      assert.match(error.message, new RegExp(`version ${version}`));
    }
  }
});

Deno.test("frame: a nonce_size other than the expected one is rejected", () => {
  assert.throws(() => parseHeader(rawHeader(2, 0, 100), 12, 16), ProtocolError);
  assert.throws(() => parseHeader(rawHeader(2, 12, 48), 0, 48), ProtocolError);
  assert.throws(() => parseHeader(rawHeader(2, 11, 100), 12, 16), ProtocolError);
  assert.throws(() => parseHeader(rawHeader(2, 0xffffffff, 100), 12, 16), ProtocolError);
});

Deno.test("frame: data_size 65535 is accepted, 65536 and 0xFFFFFFFF are rejected", () => {
  assert.equal(parseHeader(rawHeader(2, 12, 65535), 12, 16).dataSize, 65535);
  assert.throws(() => parseHeader(rawHeader(2, 12, 65536), 12, 16), ProtocolError);
  assert.throws(() => parseHeader(rawHeader(2, 12, 0xffffffff), 12, 16), ProtocolError);
});

Deno.test("frame: data_size below the minimum is rejected, the minimum itself accepted", () => {
  assert.equal(parseHeader(rawHeader(2, 12, 16), 12, 16).dataSize, 16);
  assert.throws(() => parseHeader(rawHeader(2, 12, 15), 12, 16), ProtocolError);
  assert.throws(() => parseHeader(rawHeader(2, 12, 0), 12, 16), ProtocolError);
  assert.equal(parseHeader(rawHeader(2, 0, 0), 0, 0).dataSize, 0);
});

Deno.test("frame: the version is checked before the sizes", () => {
  // A version-1 packet with nonsense sizes is still reported as legacy, so
  // the log names the real cause.
  assert.throws(
    () => parseHeader(rawHeader(1, 0xffffffff, 0xffffffff), 12, 16),
    LegacyProtocolError,
  );
});
