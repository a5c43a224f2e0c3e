/**
 * The `webcrypto` provider: Deno's Web Crypto (`crypto.subtle`), the default
 * and the portable one (no native library). Asynchronous: every method but
 * randomBytes returns a promise.
 *
 * Web Crypto copies its inputs when a call starts, so callers may reuse or
 * zero their buffers as soon as a method has returned its promise.
 *
 * @module
 */

import { concat } from "../../base/bytes.ts";
import { AuthenticationError } from "../../base/errors.ts";
import {
  AEAD_KEY_SIZE,
  AEAD_NONCE_SIZE,
  AEAD_TAG_SIZE,
  type AeadKey,
  checkInput,
  checkSize,
  type CryptoProvider,
  isAllZero,
  SHA256_SIZE,
  X25519_SIZE,
  type X25519KeyPair,
} from "./provider.ts";

const subtle = crypto.subtle;
const EMPTY = new Uint8Array(0);

/** PKCS #8 prefix of a raw X25519 private key (RFC 8410). */
const X25519_PKCS8_PREFIX = Uint8Array.of(
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
);

class WebAeadKey implements AeadKey {
  #key: CryptoKey | null;
  constructor(key: CryptoKey) {
    this.#key = key;
  }

  seal(
    nonce: Uint8Array,
    ad: Uint8Array,
    plaintext: Uint8Array,
    out?: Uint8Array,
  ): Promise<Uint8Array> {
    checkSize("an AES-GCM nonce", nonce, AEAD_NONCE_SIZE);
    checkInput("associated data", ad);
    checkInput("a plaintext", plaintext);
    if (out) checkSize("the output", out, plaintext.byteLength + AEAD_TAG_SIZE);
    return subtle.encrypt(this.#params(nonce, ad), this.#live(), plaintext as BufferSource)
      .then((sealed) => place(new Uint8Array(sealed), out));
  }

  open(
    nonce: Uint8Array,
    ad: Uint8Array,
    ciphertext: Uint8Array,
    out?: Uint8Array,
  ): Promise<Uint8Array> {
    checkSize("an AES-GCM nonce", nonce, AEAD_NONCE_SIZE);
    checkInput("associated data", ad);
    checkInput("a ciphertext", ciphertext);
    if (ciphertext.byteLength < AEAD_TAG_SIZE) {
      return Promise.reject(new AuthenticationError("a message shorter than its tag"));
    }
    if (out) checkSize("the output", out, ciphertext.byteLength - AEAD_TAG_SIZE);
    return subtle.decrypt(this.#params(nonce, ad), this.#live(), ciphertext as BufferSource)
      .then(
        (plain) => place(new Uint8Array(plain), out),
        (err) => {
          throw new AuthenticationError("a message did not decrypt", { cause: err });
        },
      );
  }

  dispose(): void {
    this.#key = null;
  }

  #live(): CryptoKey {
    if (!this.#key) throw new TypeError("the AES-GCM key was disposed");
    return this.#key;
  }

  #params(nonce: Uint8Array, ad: Uint8Array): AesGcmParams {
    return { name: "AES-GCM", iv: nonce as BufferSource, additionalData: ad as BufferSource };
  }
}

function place(result: Uint8Array, out?: Uint8Array): Uint8Array {
  if (!out) return result;
  out.set(result);
  result.fill(0);
  return out;
}

class WebKeyPair implements X25519KeyPair {
  readonly publicKey: Uint8Array;
  #privateKey: CryptoKey | null;
  constructor(privateKey: CryptoKey, publicKey: Uint8Array) {
    this.#privateKey = privateKey;
    this.publicKey = publicKey;
  }
  /** The private half; throws after dispose(). */
  get privateKey(): CryptoKey {
    if (!this.#privateKey) throw new TypeError("the X25519 key was disposed");
    return this.#privateKey;
  }
  dispose(): void {
    this.#privateKey = null;
  }
}

/** The Web Crypto provider (a singleton: it holds no state). */
export const webcrypto: CryptoProvider = {
  name: "webcrypto",
  sync: false,

  async aeadKey(key: Uint8Array): Promise<AeadKey> {
    checkSize("an AES-256-GCM key", key, AEAD_KEY_SIZE);
    const imported = await subtle.importKey("raw", key as BufferSource, "AES-GCM", false, [
      "encrypt",
      "decrypt",
    ]);
    return new WebAeadKey(imported);
  },

  async sha256(...parts: Uint8Array[]): Promise<Uint8Array> {
    for (const part of parts) checkInput("hash input", part);
    const joined = parts.length === 1 ? parts[0] : concat(parts);
    const digest = subtle.digest("SHA-256", joined as BufferSource);
    if (parts.length > 1) joined.fill(0); // copied by digest(); it may hold key-derived bytes
    return new Uint8Array(await digest);
  },

  async hkdf(salt: Uint8Array, ikm: Uint8Array, length: number): Promise<Uint8Array> {
    checkInput("an HKDF salt", salt);
    checkInput("HKDF input", ikm);
    if (!(Number.isInteger(length) && length > 0 && length <= 255 * SHA256_SIZE)) {
      throw new RangeError(`HKDF output length ${length}`);
    }
    const key = await subtle.importKey("raw", ikm as BufferSource, "HKDF", false, ["deriveBits"]);
    const bits = await subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: salt as BufferSource, info: EMPTY },
      key,
      length * 8,
    );
    return new Uint8Array(bits);
  },

  async generateX25519(): Promise<X25519KeyPair> {
    // Not extractable: the private half never leaves Web Crypto.
    const pair = await subtle.generateKey({ name: "X25519" }, false, [
      "deriveBits",
    ]) as CryptoKeyPair;
    const publicKey = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
    return new WebKeyPair(pair.privateKey, publicKey);
  },

  async importX25519(privateKey: Uint8Array): Promise<X25519KeyPair> {
    checkSize("an X25519 private key", privateKey, X25519_SIZE);
    const pkcs8 = concat([X25519_PKCS8_PREFIX, privateKey]);
    const key = await subtle.importKey("pkcs8", pkcs8 as BufferSource, { name: "X25519" }, true, [
      "deriveBits",
    ]);
    pkcs8.fill(0);
    const jwk = await subtle.exportKey("jwk", key);
    const x = (jwk.x ?? "").replaceAll("-", "+").replaceAll("_", "/");
    const publicKey = Uint8Array.from(
      atob(x + "=".repeat((4 - x.length % 4) % 4)),
      (c) => c.charCodeAt(0),
    );
    return new WebKeyPair(key, publicKey);
  },

  async x25519(local: X25519KeyPair, remotePublic: Uint8Array): Promise<Uint8Array> {
    if (!(local instanceof WebKeyPair)) {
      throw new TypeError("an X25519 key pair from another provider");
    }
    checkSize("an X25519 public key", remotePublic, X25519_SIZE);
    let shared: Uint8Array;
    try {
      const remote = await subtle.importKey(
        "raw",
        remotePublic as BufferSource,
        { name: "X25519" },
        false,
        [],
      );
      shared = new Uint8Array(
        await subtle.deriveBits({ name: "X25519", public: remote }, local.privateKey, 256),
      );
    } catch (err) {
      // Web Crypto refuses low-order points (an all-zero shared secret).
      throw new AuthenticationError("the peer's ephemeral key is invalid", { cause: err });
    }
    if (isAllZero(shared)) throw new AuthenticationError("the peer's ephemeral key is invalid");
    return shared;
  },

  randomBytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    // getRandomValues fills at most 65536 bytes a call.
    for (let at = 0; at < length; at += 65536) {
      crypto.getRandomValues(out.subarray(at, Math.min(length, at + 65536)));
    }
    return out;
  },
};
