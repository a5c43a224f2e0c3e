/**
 * Noise `NNpsk0_25519_AESGCM_SHA256` (Noise spec revision 34) on Web Crypto:
 * CipherState, SymmetricState and the two-message NNpsk0 HandshakeState.
 *
 * Only what Cipherlink needs is here: one pattern, one cipher suite. All
 * cryptography is `crypto.subtle`; nothing is implemented in JavaScript.
 *
 * @example
 * ```ts
 * import { NNpsk0Handshake } from "./noise.ts";
 * const psk = crypto.getRandomValues(new Uint8Array(32));
 * const prologue = new TextEncoder().encode("cipherlink/2");
 * const client = await NNpsk0Handshake.create("initiator", psk, prologue);
 * const server = await NNpsk0Handshake.create("responder", psk, prologue);
 * await server.readMessage1(await client.writeMessage1());
 * await client.readMessage2(await server.writeMessage2());
 * const [send, receive] = await client.split(); // client -> server, server -> client
 * ```
 * @module
 */

import { AuthenticationError } from "./errors.ts";

/** The protocol name, exactly 32 bytes, so it is also the initial hash. */
export const PROTOCOL_NAME = "Noise_NNpsk0_25519_AESGCM_SHA256";
const HASH_LEN = 32;
const DH_LEN = 32;
const KEY_LEN = 32;
/** The nonce reserved for REKEY; never used for a message. */
const REKEY_NONCE = 2n ** 64n - 1n;
/** Counters are JavaScript numbers; no connection comes near this. */
const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

const subtle = crypto.subtle;

/** The 12-byte AES-GCM nonce for counter `n`: 4 zero bytes, then n as u64 BE. */
export function counterNonce(
  n: number | bigint,
  target = new Uint8Array(12),
): Uint8Array {
  const view = new DataView(target.buffer, target.byteOffset, 12);
  view.setUint32(0, 0);
  view.setBigUint64(4, BigInt(n));
  return target;
}

function importAesKey(raw: Uint8Array): Promise<CryptoKey> {
  return subtle.importKey("raw", raw as BufferSource, "AES-GCM", false, [
    "encrypt",
    "decrypt",
  ]);
}

async function sha256(...parts: Uint8Array[]): Promise<Uint8Array> {
  return new Uint8Array(
    await subtle.digest("SHA-256", concat(...parts) as BufferSource),
  );
}

/**
 * Noise HKDF: `count` (2 or 3) outputs of HASHLEN bytes. Noise's HKDF is
 * RFC 5869 HKDF with the chaining key as salt and an empty info (its
 * outputs are T(1), T(2), T(3)), so Web Crypto computes it in one call.
 */
async function hkdf(chainingKey: Uint8Array, ikm: Uint8Array, count: 2 | 3): Promise<Uint8Array[]> {
  const key = await subtle.importKey("raw", ikm as BufferSource, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: chainingKey as BufferSource, info: new Uint8Array(0) },
    key,
    count * HASH_LEN * 8,
  );
  return Array.from({ length: count }, (_, i) => new Uint8Array(bits, i * HASH_LEN, HASH_LEN));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

/**
 * A Noise CipherState: an AES-256-GCM key and the counter `n`.
 *
 * The counter is claimed synchronously when a call starts, so several
 * encryptions can be in flight at once and still use consecutive nonces.
 * REKEY swaps the key promise synchronously too: calls started after it use
 * the new key, calls started before it keep the old one.
 */
export class CipherState {
  #key: Promise<CryptoKey>;
  /** The key once imported: lets a call start (and copy its input) at once. */
  #ready: CryptoKey | null = null;
  #n = 0;

  private constructor(key: Promise<CryptoKey>) {
    this.#key = key;
    this.#watch(key);
  }

  /** A CipherState with key `k` and n = 0. */
  static fromKey(k: Uint8Array): CipherState {
    return new CipherState(importAesKey(k));
  }

  /** The counter the next message will use. */
  get nonce(): number {
    return this.#n;
  }

  /**
   * Encrypts under the next counter. Resolves ciphertext || tag.
   *
   * @example
   * ```ts
   * const cs = CipherState.fromKey(new Uint8Array(32));
   * const sealed = await cs.encryptWithAd(new Uint8Array(0), Uint8Array.of(1, 2));
   * ```
   */
  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array> {
    return this.encryptAt(this.claimNonce(), ad, plaintext);
  }

  /**
   * Decrypts under the next counter; throws {@linkcode AuthenticationError}
   * when the tag does not verify. The counter advances only on success.
   */
  async decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    const n = this.#n;
    const plaintext = await this.decryptAt(n, ad, ciphertext);
    this.#n = n + 1;
    return plaintext;
  }

  /** Takes the next counter value for a call the caller makes itself. */
  claimNonce(): number {
    if (this.#n >= MAX_COUNTER) {
      throw new RangeError("nonce space exhausted; the connection must end");
    }
    return this.#n++;
  }

  /**
   * Encrypts with an explicit counter (one claimed with claimNonce). The
   * inputs are read before this returns, so the caller may reuse them.
   */
  encryptAt(n: number, ad: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array> {
    return this.#run("encrypt", n, ad, plaintext).then((sealed) => new Uint8Array(sealed));
  }

  /**
   * Decrypts with an explicit counter without advancing n (see advance()).
   * The inputs are read before this returns, so the caller may reuse its
   * buffer at once. Rejects with {@linkcode AuthenticationError}.
   */
  decryptAt(n: number, ad: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    return this.#run("decrypt", n, ad, ciphertext).then(
      (plain) => new Uint8Array(plain),
      (err) => {
        throw new AuthenticationError("a message did not decrypt", { cause: err });
      },
    );
  }

  /** Marks `count` counters as used by decryptAt calls the caller made. */
  advance(count = 1): void {
    this.#n += count;
  }

  /**
   * Noise REKEY: k = first 32 bytes of ENCRYPT(k, 2^64-1, empty, zeros[32]).
   * Takes effect synchronously for every call started afterwards.
   */
  rekey(): void {
    const next = this.#key.then(async (k) => {
      const sealed = await subtle.encrypt(
        {
          name: "AES-GCM",
          iv: counterNonce(REKEY_NONCE) as BufferSource,
          additionalData: new Uint8Array(0),
        },
        k,
        new Uint8Array(KEY_LEN),
      );
      return importAesKey(new Uint8Array(sealed, 0, KEY_LEN));
    });
    this.#key = next;
    this.#ready = null;
    this.#watch(next);
  }

  #watch(key: Promise<CryptoKey>): void {
    key.then((k) => {
      if (this.#key === key) this.#ready = k;
    }, () => {});
  }

  #run(
    op: "encrypt" | "decrypt",
    n: number,
    ad: Uint8Array,
    input: Uint8Array,
  ): Promise<ArrayBuffer> {
    const params = {
      name: "AES-GCM",
      iv: counterNonce(n) as BufferSource,
      additionalData: ad as BufferSource,
    };
    // Web Crypto copies its inputs when the call starts; when the key is not
    // imported yet (right after a REKEY) copy them here instead.
    if (this.#ready) return subtle[op](params, this.#ready, input as BufferSource);
    const adCopy = ad.slice();
    const inputCopy = input.slice();
    return this.#key.then((k) =>
      subtle[op](
        { ...params, additionalData: adCopy as BufferSource },
        k,
        inputCopy as BufferSource,
      )
    );
  }
}

/** Noise SymmetricState: chaining key, handshake hash, and the CipherState. */
class SymmetricState {
  ck: Uint8Array;
  h: Uint8Array;
  #cipher: CipherState | null = null;

  constructor(protocolName: string) {
    const name = new TextEncoder().encode(protocolName);
    if (name.byteLength !== HASH_LEN) {
      throw new Error(
        "protocol names other than 32 bytes are not supported here",
      );
    }
    this.h = name;
    this.ck = name.slice();
  }

  async mixHash(data: Uint8Array): Promise<void> {
    this.h = await sha256(this.h, data);
  }

  async mixKey(ikm: Uint8Array): Promise<void> {
    const [ck, tempK] = await hkdf(this.ck, ikm, 2);
    this.ck = ck;
    this.#cipher = CipherState.fromKey(tempK);
  }

  async mixKeyAndHash(ikm: Uint8Array): Promise<void> {
    const [ck, tempH, tempK] = await hkdf(this.ck, ikm, 3);
    this.ck = ck;
    await this.mixHash(tempH);
    this.#cipher = CipherState.fromKey(tempK);
  }

  async encryptAndHash(plaintext: Uint8Array): Promise<Uint8Array> {
    const ciphertext = this.#cipher
      ? await this.#cipher.encryptWithAd(this.h, plaintext)
      : plaintext;
    await this.mixHash(ciphertext);
    return ciphertext;
  }

  async decryptAndHash(ciphertext: Uint8Array): Promise<Uint8Array> {
    const plaintext = this.#cipher
      ? await this.#cipher.decryptWithAd(this.h, ciphertext)
      : ciphertext;
    await this.mixHash(ciphertext);
    return plaintext;
  }

  async split(): Promise<[CipherState, CipherState]> {
    const [k1, k2] = await hkdf(this.ck, new Uint8Array(0), 2);
    return [CipherState.fromKey(k1), CipherState.fromKey(k2)];
  }
}

/** An X25519 key pair with its raw public key. */
export interface EphemeralKey {
  privateKey: CryptoKey;
  publicKey: Uint8Array;
}

/** Generates a fresh X25519 ephemeral key pair. */
export async function generateEphemeral(): Promise<EphemeralKey> {
  // Not extractable: the private half never leaves Web Crypto; the public
  // half is always exportable.
  const pair = await subtle.generateKey({ name: "X25519" }, false, [
    "deriveBits",
  ]) as CryptoKeyPair;
  return {
    privateKey: pair.privateKey,
    publicKey: new Uint8Array(await subtle.exportKey("raw", pair.publicKey)),
  };
}

/**
 * Imports a fixed X25519 private key (32 bytes): for test vectors only; real
 * handshakes always use {@linkcode generateEphemeral}.
 */
export async function importEphemeral(
  privateKey: Uint8Array,
): Promise<EphemeralKey> {
  const pkcs8 = concat(
    Uint8Array.of(
      0x30,
      0x2e,
      0x02,
      0x01,
      0x00,
      0x30,
      0x05,
      0x06,
      0x03,
      0x2b,
      0x65,
      0x6e,
      0x04,
      0x22,
      0x04,
      0x20,
    ),
    privateKey,
  );
  const key = await subtle.importKey(
    "pkcs8",
    pkcs8 as BufferSource,
    { name: "X25519" },
    true,
    [
      "deriveBits",
    ],
  );
  const jwk = await subtle.exportKey("jwk", key);
  const x = (jwk.x ?? "").replaceAll("-", "+").replaceAll("_", "/");
  return {
    privateKey: key,
    publicKey: Uint8Array.from(
      atob(x + "=".repeat((4 - x.length % 4) % 4)),
      (c) => c.charCodeAt(0),
    ),
  };
}

async function dh(
  local: EphemeralKey,
  remotePublic: Uint8Array,
): Promise<Uint8Array> {
  try {
    const remote = await subtle.importKey(
      "raw",
      remotePublic as BufferSource,
      { name: "X25519" },
      false,
      [],
    );
    return new Uint8Array(
      await subtle.deriveBits(
        { name: "X25519", public: remote },
        local.privateKey,
        DH_LEN * 8,
      ),
    );
  } catch (err) {
    // Web Crypto refuses low-order points (an all-zero shared secret).
    throw new AuthenticationError("the peer's ephemeral key is invalid", {
      cause: err,
    });
  }
}

/** (ck, h) after the prologue and the psk token, per key object (see create). */
const pskPrefixes = new WeakMap<
  Uint8Array,
  { psk: Uint8Array; prologue: Uint8Array; state: Promise<{ ck: Uint8Array; h: Uint8Array }> }
>();

function pskPrefix(
  psk: Uint8Array,
  prologue: Uint8Array,
): Promise<{ ck: Uint8Array; h: Uint8Array }> {
  const same = (a: Uint8Array, b: Uint8Array) =>
    a.byteLength === b.byteLength && a.every((x, i) => x === b[i]);
  const cached = pskPrefixes.get(psk);
  if (cached && same(cached.psk, psk) && same(cached.prologue, prologue)) return cached.state;
  const state = (async () => {
    const s = new SymmetricState(PROTOCOL_NAME);
    await s.mixHash(prologue);
    await s.mixKeyAndHash(psk);
    return { ck: s.ck, h: s.h };
  })();
  pskPrefixes.set(psk, { psk: psk.slice(), prologue: prologue.slice(), state });
  return state;
}

/** Which side of the handshake this is. */
export type Role = "initiator" | "responder";

/**
 * The NNpsk0 handshake: `-> psk, e` then `<- e, ee`. Message payloads are
 * optional (Cipherlink sends empty ones); `split()` returns
 * [initiator->responder, responder->initiator] CipherStates.
 */
export class NNpsk0Handshake {
  readonly role: Role;
  #state: SymmetricState;
  #psk: Uint8Array;
  /** The responder's is made only when message 2 is written (see create). */
  #e: EphemeralKey | null;
  #re: Uint8Array | null = null;
  #step = 0;

  private constructor(role: Role, psk: Uint8Array, e: EphemeralKey | null) {
    this.role = role;
    this.#state = new SymmetricState(PROTOCOL_NAME);
    this.#psk = psk;
    this.#e = e;
  }

  /**
   * Starts a handshake. `ephemeral` is for test vectors; leave it out and a
   * fresh key pair is generated.
   */
  static async create(
    role: Role,
    psk: Uint8Array,
    prologue: Uint8Array,
    ephemeral?: EphemeralKey,
  ): Promise<NNpsk0Handshake> {
    if (psk.byteLength !== 32) throw new RangeError("the psk must be 32 bytes");
    // A responder makes its key pair only for a message 1 that decrypted:
    // garbage and wrong keys cost it no key generation.
    const hs = new NNpsk0Handshake(
      role,
      psk,
      ephemeral ?? (role === "initiator" ? await generateEphemeral() : null),
    );
    // The prologue and the psk token are the same for every handshake under
    // one key: their (ck, h) is computed once and reused, which halves the
    // crypto a wrong-key message 1 costs the responder. The psk token's own
    // k is never used (message 1's "e" replaces it before any encryption).
    const prefix = await pskPrefix(psk, prologue);
    hs.#state.ck = prefix.ck.slice();
    hs.#state.h = prefix.h.slice();
    return hs;
  }

  /** The handshake hash h (final after message 2). */
  get handshakeHash(): Uint8Array {
    return this.#state.h;
  }

  /** Initiator: message 1 = e.pub || ENCRYPT(payload). */
  async writeMessage1(
    payload: Uint8Array = new Uint8Array(0),
  ): Promise<Uint8Array> {
    this.#expect("initiator", 0);
    const s = this.#state;
    const e = await this.#ephemeral();
    await s.mixHash(e.publicKey);
    await s.mixKey(e.publicKey);
    return concat(e.publicKey, await s.encryptAndHash(payload));
  }

  /** Responder: reads message 1, returns its payload. */
  async readMessage1(message: Uint8Array): Promise<Uint8Array> {
    this.#expect("responder", 0);
    const s = this.#state;
    this.#checkLength(message);
    const re = message.slice(0, DH_LEN);
    this.#re = re;
    await s.mixHash(re);
    await s.mixKey(re);
    return await s.decryptAndHash(message.subarray(DH_LEN));
  }

  /** Responder: message 2 = e.pub || ENCRYPT(payload). */
  async writeMessage2(
    payload: Uint8Array = new Uint8Array(0),
  ): Promise<Uint8Array> {
    this.#expect("responder", 1);
    const s = this.#state;
    const e = await this.#ephemeral();
    await s.mixHash(e.publicKey);
    await s.mixKey(e.publicKey);
    await s.mixKey(await dh(e, this.#re!));
    return concat(e.publicKey, await s.encryptAndHash(payload));
  }

  /** Initiator: reads message 2, returns its payload. */
  async readMessage2(message: Uint8Array): Promise<Uint8Array> {
    this.#expect("initiator", 1);
    const s = this.#state;
    this.#checkLength(message);
    const re = message.slice(0, DH_LEN);
    await s.mixHash(re);
    await s.mixKey(re);
    await s.mixKey(await dh(await this.#ephemeral(), re));
    return await s.decryptAndHash(message.subarray(DH_LEN));
  }

  /** After both messages: [initiator->responder, responder->initiator]. */
  split(): Promise<[CipherState, CipherState]> {
    if (this.#step !== 2) {
      throw new Error("split() before the handshake finished");
    }
    return this.#state.split();
  }

  async #ephemeral(): Promise<EphemeralKey> {
    return this.#e ??= await generateEphemeral();
  }

  #expect(role: Role, step: number): void {
    if (this.role !== role || this.#step !== step) {
      throw new Error(`handshake step out of order for the ${this.role}`);
    }
    this.#step++;
  }

  #checkLength(message: Uint8Array): void {
    if (message.byteLength < DH_LEN + 16) {
      throw new AuthenticationError("handshake message too short");
    }
  }
}
