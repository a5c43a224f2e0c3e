import assert from "node:assert/strict";
import {
  CipherState,
  counterNonce,
  forgetPsk,
  importEphemeral,
  NNpsk0Handshake,
  PROTOCOL_NAME,
} from "../lib/protocol/noise.ts";
import type { CryptoProvider, MaybePromise } from "../lib/protocol/crypto/provider.ts";
import { AuthenticationError } from "../lib/base/errors.ts";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { fromHex, toHex } from "./helpers.ts";
import { openssl, opensslMissing, providers, webcrypto } from "./providers.ts";

interface VectorFile {
  vectors: {
    protocol_name: string;
    init_prologue: string;
    init_psks: string[];
    init_ephemeral: string;
    resp_ephemeral: string;
    handshake_hash: string;
    messages: { payload: string; ciphertext: string }[];
  }[];
}

const vectors: VectorFile = JSON.parse(
  await Deno.readTextFile(
    new URL("./vectors/noise-nnpsk0-25519-aesgcm-sha256.json", import.meta.url),
  ),
);
const prologue = new TextEncoder().encode("cipherlink/2");

/** Runs the public vector with `initiator` and `responder` computing each side. */
async function runVector(initiator: CryptoProvider, responder: CryptoProvider): Promise<void> {
  for (const v of vectors.vectors) {
    assert.equal(v.protocol_name, PROTOCOL_NAME);
    const psk = fromHex(v.init_psks[0]);
    const vectorPrologue = fromHex(v.init_prologue);
    const init = await NNpsk0Handshake.create("initiator", psk, vectorPrologue, {
      provider: initiator,
      ephemeral: await importEphemeral(fromHex(v.init_ephemeral), initiator),
    });
    const resp = await NNpsk0Handshake.create("responder", psk, vectorPrologue, {
      provider: responder,
      ephemeral: await importEphemeral(fromHex(v.resp_ephemeral), responder),
    });
    const [m1, m2, ...transport] = v.messages;

    const msg1 = await init.writeMessage1(fromHex(m1.payload));
    assert.equal(toHex(msg1), m1.ciphertext);
    assert.equal(toHex(await resp.readMessage1(msg1)), m1.payload);

    const msg2 = await resp.writeMessage2(fromHex(m2.payload));
    assert.equal(toHex(msg2), m2.ciphertext);
    assert.equal(toHex(await init.readMessage2(msg2)), m2.payload);

    assert.equal(toHex(await init.handshakeHash()), v.handshake_hash);
    assert.equal(toHex(await resp.handshakeHash()), v.handshake_hash);

    const [iSend, iRecv] = await init.split();
    const [rRecv, rSend] = await resp.split();
    const empty = new Uint8Array(0);
    for (const [i, m] of transport.entries()) {
      const [sender, receiver] = i % 2 === 0 ? [iSend, rRecv] : [rSend, iRecv];
      const sealed = await sender.encryptWithAd(empty, fromHex(m.payload));
      assert.equal(toHex(sealed), m.ciphertext, `transport message ${i}`);
      assert.equal(toHex(await receiver.decryptWithAd(empty, sealed)), m.payload);
    }
  }
}

for (const provider of providers) {
  Deno.test(`noise (${provider.name}): the public cacophony vector is reproduced byte for byte`, () =>
    runVector(provider, provider));
}

Deno.test({
  name: "noise (mixed): the vector with a Web Crypto initiator and an OpenSSL responder, and back",
  ignore: openssl === null,
  async fn() {
    await runVector(webcrypto, openssl!);
    await runVector(openssl!, webcrypto);
  },
});

for (const provider of providers) {
  Deno.test(`noise (${provider.name}): a different psk fails message 1 with AuthenticationError`, async () => {
    const options = { provider };
    const init = await NNpsk0Handshake.create(
      "initiator",
      new Uint8Array(32).fill(1),
      prologue,
      options,
    );
    const resp = await NNpsk0Handshake.create(
      "responder",
      new Uint8Array(32).fill(2),
      prologue,
      options,
    );
    const message1 = await init.writeMessage1();
    await assert.rejects(async () => await resp.readMessage1(message1), AuthenticationError);
  });

  Deno.test(`noise (${provider.name}): rekey on both sides keeps them in step; one-sided rekey fails`, async () => {
    const key = new Uint8Array(32).fill(9);
    const a = CipherState.fromKey(key, provider);
    const b = CipherState.fromKey(key, provider);
    const ad = new Uint8Array(0);
    const msg = Uint8Array.of(1, 2, 3);
    assert.deepEqual(await b.decryptWithAd(ad, await a.encryptWithAd(ad, msg)), msg);
    a.rekey();
    b.rekey();
    assert.deepEqual(await b.decryptWithAd(ad, await a.encryptWithAd(ad, msg)), msg);
    a.rekey();
    await assert.rejects(b.decryptWithAd(ad, await a.encryptWithAd(ad, msg)), AuthenticationError);
    assert.equal(b.nonce, 2, "a failed decryption does not advance the counter");
  });

  Deno.test(`noise (${provider.name}): a low-order ephemeral key in message 2 is refused`, async () => {
    const psk = new Uint8Array(32).fill(4);
    const init = await NNpsk0Handshake.create("initiator", psk, prologue, { provider });
    await init.writeMessage1();
    // The all-zero point: X25519 with it is all zeros whatever the private key.
    const forged = new Uint8Array(32 + 16);
    await assert.rejects(async () => await init.readMessage2(forged), AuthenticationError);
  });
}

Deno.test({
  name:
    "noise (openssl): the handshake and the transport are synchronous (plain values, no promise)",
  ignore: openssl === null,
  fn() {
    const provider = openssl!;
    const psk = new Uint8Array(32).fill(7);
    const plain = <T>(value: MaybePromise<T>): T => {
      assert.ok(!(value instanceof Promise), "a promise from the synchronous provider");
      return value;
    };
    const init = plain(NNpsk0Handshake.create("initiator", psk, prologue, { provider }));
    const resp = plain(NNpsk0Handshake.create("responder", psk, prologue, { provider }));
    plain(resp.readMessage1(plain(init.writeMessage1())));
    plain(init.readMessage2(plain(resp.writeMessage2())));
    const [send] = plain(init.split());
    const [receive] = plain(resp.split());
    assert.ok(send.sync && receive.sync);
    // sealAt writes into the caller's frame buffer; openAt decrypts in place.
    const frame = new Uint8Array(5 + 3 + 16);
    const header = Uint8Array.of(2, 0, 0, 0, 19);
    frame.set(header);
    const sealed = send.sealAt(
      send.claimNonce(),
      header,
      Uint8Array.of(1, 2, 3),
      frame.subarray(5),
    );
    assert.equal(sealed.byteOffset, 5);
    const opened = receive.openAt(receive.nonce, header, frame.subarray(5), frame.subarray(5, 8));
    assert.deepEqual([...opened], [1, 2, 3]);
    receive.advance();
    // A tampered frame is refused and the output is wiped.
    frame.set(header);
    send.sealAt(send.claimNonce(), header, Uint8Array.of(4, 5, 6), frame.subarray(5));
    frame[6] ^= 1;
    const out = new Uint8Array(3);
    assert.throws(
      () => receive.openAt(receive.nonce, header, frame.subarray(5), out),
      AuthenticationError,
    );
    assert.deepEqual([...out], [0, 0, 0]);
    send.dispose();
    receive.dispose();
    assert.throws(() => send.sealAt(0, header, new Uint8Array(1)), TypeError);
  },
});

Deno.test("noise: the synchronous methods refuse an asynchronous provider", () => {
  const cs = CipherState.fromKey(new Uint8Array(32), webcrypto);
  assert.equal(cs.sync, false);
  assert.throws(() => cs.sealAt(0, new Uint8Array(0), new Uint8Array(1)), TypeError);
});

/**
 * A provider that forwards to `inner` and keeps every secret it hands out
 * (HKDF outputs, DH outputs), to check the handshake wipes them after use.
 */
function recording(inner: CryptoProvider): { provider: CryptoProvider; secrets: Uint8Array[] } {
  const secrets: Uint8Array[] = [];
  const keep = async (value: MaybePromise<Uint8Array>) => {
    const bytes = await value;
    secrets.push(bytes);
    return bytes;
  };
  return {
    secrets,
    provider: {
      ...inner,
      name: inner.name,
      sync: false,
      hkdf: (salt, ikm, length) => keep(inner.hkdf(salt, ikm, length)),
      x25519: (local, remote) => keep(inner.x25519(local, remote)),
    },
  };
}

Deno.test("noise: DH outputs, HKDF outputs and chaining keys are zeroed once used", async () => {
  for (const inner of providers) {
    const psk = crypto.getRandomValues(new Uint8Array(32));
    const a = recording(inner), b = recording(inner);
    const init = await NNpsk0Handshake.create("initiator", psk, prologue, { provider: a.provider });
    const resp = await NNpsk0Handshake.create("responder", psk, prologue, { provider: b.provider });
    await resp.readMessage1(await init.writeMessage1());
    await init.readMessage2(await resp.writeMessage2());
    const [send] = await init.split();
    const [receive] = await resp.split();
    // The transport still works: the keys were imported before the wipe.
    const sealed = await send.encryptWithAd(new Uint8Array(0), Uint8Array.of(42));
    assert.deepEqual([...await receive.decryptWithAd(new Uint8Array(0), sealed)], [42]);
    const secrets = [...a.secrets, ...b.secrets];
    assert.ok(secrets.length >= 8, `${inner.name}: ${secrets.length} secrets seen`);
    for (const [i, secret] of secrets.entries()) {
      assert.ok(secret.every((x) => x === 0), `${inner.name}: secret ${i} was not zeroed`);
    }
    forgetPsk(psk);
  }
});

Deno.test("noise: forgetPsk zeroes the cached handshake prefix; a changed key buffer gets a new one", async () => {
  const psk = crypto.getRandomValues(new Uint8Array(32));
  const { provider, secrets } = recording(webcrypto);
  await NNpsk0Handshake.create("responder", psk, prologue, { provider });
  const prefixHkdf = secrets[0];
  assert.ok(prefixHkdf.every((x) => x === 0), "the prefix's HKDF output is wiped");
  // Same key object, same bytes: the cached prefix, no HKDF call.
  await NNpsk0Handshake.create("responder", psk, prologue, { provider });
  assert.equal(secrets.length, 1);
  // The bytes changed in place: the stale prefix is not used.
  psk[0] ^= 1;
  await NNpsk0Handshake.create("responder", psk, prologue, { provider });
  assert.equal(secrets.length, 2);
  // And a handshake under the changed key still completes.
  const init = await NNpsk0Handshake.create("initiator", psk, prologue);
  const resp = await NNpsk0Handshake.create("responder", psk, prologue);
  await resp.readMessage1(await init.writeMessage1());
  forgetPsk(psk);
  await NNpsk0Handshake.create("responder", psk, prologue, { provider });
  assert.equal(secrets.length, 3, "forgotten: computed again");
});

if (opensslMissing) Deno.test({ name: opensslMissing, ignore: true, fn() {} });

Deno.test("noise: counter nonces are 4 zero bytes and the counter as u64 big-endian", () => {
  for (const n of [0, 1, 255, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 5, Number.MAX_SAFE_INTEGER]) {
    assert.deepEqual(counterNonce(n), counterNonce(BigInt(n)), `${n}`);
    const view = new DataView(counterNonce(n).buffer);
    assert.equal(view.getUint32(0), 0);
    assert.equal(view.getBigUint64(4), BigInt(n));
  }
});

/** A provider that forwards to `inner` and counts AES keys and X25519 keys not yet disposed. */
function counting(inner: CryptoProvider): { provider: CryptoProvider; live: () => number } {
  let live = 0;
  const track = async <T extends { dispose(): void }>(made: MaybePromise<T>): Promise<T> => {
    const value = await made;
    live++;
    const dispose = value.dispose.bind(value);
    let done = false;
    value.dispose = () => {
      if (!done) live--;
      done = true;
      dispose();
    };
    return value;
  };
  return {
    live: () => live,
    provider: {
      ...inner,
      sync: false,
      aeadKey: (key) => track(inner.aeadKey(key)),
      generateX25519: () => track(inner.generateX25519()),
      importX25519: (key) => track(inner.importX25519(key)),
    },
  };
}

Deno.test("noise: every key a handshake makes is released, whether it succeeds or fails", async () => {
  for (const inner of providers) {
    const { provider, live } = counting(inner);
    const psk = crypto.getRandomValues(new Uint8Array(32));
    // Success: split() leaves only the four transport keys, released by their owners.
    {
      using init = await NNpsk0Handshake.create("initiator", psk, prologue, { provider });
      using resp = await NNpsk0Handshake.create("responder", psk, prologue, { provider });
      await resp.readMessage1(await init.writeMessage1());
      await init.readMessage2(await resp.writeMessage2());
      const states = [...await init.split(), ...await resp.split()];
      // Each key is in use (an async provider imports it in the background).
      await Promise.all(states.map((cs) => cs.encryptAt(0, new Uint8Array(0), new Uint8Array(0))));
      assert.equal(live(), 4, `${inner.name}: only the transport keys after split`);
      for (const cs of states) cs.dispose();
    }
    assert.equal(live(), 0, `${inner.name}: after a complete handshake`);
    // Failure: a wrong key fails message 1; dispose releases the rest.
    {
      using init = await NNpsk0Handshake.create("initiator", psk, prologue, { provider });
      using resp = await NNpsk0Handshake.create("responder", psk.map((x) => x ^ 1), prologue, {
        provider,
      });
      const message1 = await init.writeMessage1();
      await assert.rejects(async () => await resp.readMessage1(message1), AuthenticationError);
      assert.ok(live() > 0);
    }
    assert.equal(live(), 0, `${inner.name}: after a failed handshake`);
  }
});

Deno.test("channel: a handshake that fails releases its keys at once (no wait for GC)", async () => {
  for (const inner of providers) {
    const { provider, live } = counting(inner);
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const accepted = listener.accept();
      const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
      const server = await accepted;
      const wrong = crypto.getRandomValues(new Uint8Array(32));
      const right = crypto.getRandomValues(new Uint8Array(32));
      const results = await Promise.allSettled([
        SecureChannel.handshake(client, wrong, "initiator", { provider }),
        SecureChannel.handshake(server, right, "responder", { provider }).finally(() =>
          server.close()
        ),
      ]);
      assert.ok(results.every((r) => r.status === "rejected"), `${inner.name}: both failed`);
      assert.equal(live(), 0, `${inner.name}: keys still held after the failure`);
      client.close();
    } finally {
      listener.close();
    }
  }
});
