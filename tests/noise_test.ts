import assert from "node:assert/strict";
import { CipherState, importEphemeral, NNpsk0Handshake } from "../lib/noise.ts";
import { AuthenticationError } from "../lib/errors.ts";
import { fromHex, toHex } from "./helpers.ts";

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

Deno.test("noise: the public cacophony vector is reproduced byte for byte", async () => {
  for (const v of vectors.vectors) {
    assert.equal(v.protocol_name, "Noise_NNpsk0_25519_AESGCM_SHA256");
    const psk = fromHex(v.init_psks[0]);
    const prologue = fromHex(v.init_prologue);
    const init = await NNpsk0Handshake.create(
      "initiator",
      psk,
      prologue,
      { ephemeral: await importEphemeral(fromHex(v.init_ephemeral)) },
    );
    const resp = await NNpsk0Handshake.create(
      "responder",
      psk,
      prologue,
      { ephemeral: await importEphemeral(fromHex(v.resp_ephemeral)) },
    );
    const [m1, m2, ...transport] = v.messages;

    const msg1 = await init.writeMessage1(fromHex(m1.payload));
    assert.equal(toHex(msg1), m1.ciphertext);
    assert.equal(toHex(await resp.readMessage1(msg1)), m1.payload);

    const msg2 = await resp.writeMessage2(fromHex(m2.payload));
    assert.equal(toHex(msg2), m2.ciphertext);
    assert.equal(toHex(await init.readMessage2(msg2)), m2.payload);

    assert.equal(toHex(init.handshakeHash), v.handshake_hash);
    assert.equal(toHex(resp.handshakeHash), v.handshake_hash);

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
});

Deno.test("noise: a different psk fails message 1 with AuthenticationError", async () => {
  const prologue = new TextEncoder().encode("cipherlink/2");
  const init = await NNpsk0Handshake.create("initiator", new Uint8Array(32).fill(1), prologue);
  const resp = await NNpsk0Handshake.create("responder", new Uint8Array(32).fill(2), prologue);
  const message1 = await init.writeMessage1();
  await assert.rejects(async () => await resp.readMessage1(message1), AuthenticationError);
});

Deno.test("noise: rekey on both sides keeps them in step; one-sided rekey fails", async () => {
  const key = new Uint8Array(32).fill(9);
  const a = CipherState.fromKey(key);
  const b = CipherState.fromKey(key);
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
