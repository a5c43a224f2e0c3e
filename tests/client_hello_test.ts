/**
 * The client makes its Noise message 1 before it connects, so the server
 * gets it the moment the connection is up, however long the client's own
 * crypto took (regression: a client busy with a burst of handshakes
 * connected first, and the server's 1 s message-1 deadline cut 77 of the
 * full soak's 10,000 legitimate sessions).
 * @module
 */

import assert from "node:assert/strict";
import { AuthenticationError } from "../lib/base/errors.ts";
import type { CryptoProvider } from "../lib/protocol/crypto/provider.ts";
import { webcrypto } from "../lib/protocol/crypto/webcrypto.ts";
import { HEADER_SIZE } from "../lib/protocol/frame.ts";
import { connect } from "../lib/tunnel/client.ts";
import { within } from "./process.ts";

/** How long the stand-in for a busy client takes to make its ephemeral key. */
const SLOW_KEYGEN_MS = 400;

Deno.test("regression: message 1 reaches the server at once after connecting, however long making it took", async () => {
  const slow: CryptoProvider = {
    ...webcrypto,
    generateX25519: async () => {
      await new Promise((resolve) => setTimeout(resolve, SLOW_KEYGEN_MS));
      return await webcrypto.generateX25519();
    },
  };
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    // A stand-in server that only times the first bytes after accept.
    const firstBytes = (async () => {
      const conn = await listener.accept();
      const acceptedAt = performance.now();
      const n = await conn.read(new Uint8Array(HEADER_SIZE));
      const afterMs = performance.now() - acceptedAt;
      conn.close();
      return { n, afterMs };
    })();
    const session = connect({
      server: { host: "127.0.0.1", port: listener.addr.port },
      key: crypto.getRandomValues(new Uint8Array(32)),
      provider: slow,
      handshakeTimeoutMs: 5000,
    });
    const { n, afterMs } = await within(firstBytes, 10_000, "message 1 at the stand-in server");
    // The stand-in closed without answering: what a client sees from a server without its key.
    await assert.rejects(session, AuthenticationError);
    assert.ok(n !== null && n > 0, "the client sent message 1");
    assert.ok(
      afterMs < SLOW_KEYGEN_MS / 2,
      `message 1 came ${Math.round(afterMs)} ms after the connection was accepted`,
    );
  } finally {
    listener.close();
  }
});
