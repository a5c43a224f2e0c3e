/**
 * The `openssl` provider: OpenSSL 3's libcrypto through Deno FFI
 * (lib/protocol/crypto/libcrypto.ts holds every native call). Synchronous: every
 * method returns its result directly, so sealing a frame or running a whole
 * handshake costs no event-loop turn.
 *
 * AES-256-GCM keeps one EVP_CIPHER_CTX per key (a CipherState is one
 * direction of one connection), re-initialised with each nonce; HKDF is RFC
 * 5869 over the one-shot HMAC(); SHA-256 is EVP_Digest; X25519 keys are
 * EVP_PKEYs freed when disposed.
 *
 * @module
 */

import { concat } from "../../base/bytes.ts";
import { AEAD_TAG_SIZE, type AeadKey, type CryptoProvider, SHA256_SIZE } from "./provider.ts";
import type { GcmContext, Libcrypto, X25519Key } from "./libcrypto.ts";
import type { X25519KeyPair } from "./provider.ts";

class OpenSslAeadKey implements AeadKey {
  readonly #ctx: GcmContext;
  constructor(ctx: GcmContext) {
    this.#ctx = ctx;
  }
  seal(nonce: Uint8Array, ad: Uint8Array, plaintext: Uint8Array, out?: Uint8Array): Uint8Array {
    const target = out ?? new Uint8Array(plaintext.byteLength + AEAD_TAG_SIZE);
    this.#ctx.seal(nonce, ad, plaintext, target);
    return target;
  }
  open(nonce: Uint8Array, ad: Uint8Array, ciphertext: Uint8Array, out?: Uint8Array): Uint8Array {
    const target = out ?? new Uint8Array(Math.max(0, ciphertext.byteLength - AEAD_TAG_SIZE));
    this.#ctx.open(nonce, ad, ciphertext, target);
    return target;
  }
  dispose(): void {
    this.#ctx.free();
  }
}

class OpenSslKeyPair implements X25519KeyPair {
  readonly key: X25519Key;
  constructor(key: X25519Key) {
    this.key = key;
  }
  get publicKey(): Uint8Array {
    return this.key.publicKey;
  }
  dispose(): void {
    this.key.free();
  }
}

/** The openssl provider over a loaded libcrypto (see lib/protocol/crypto/select.ts). */
export function opensslProvider(lib: Libcrypto): CryptoProvider {
  return {
    name: "openssl",
    sync: true,
    aeadKey: (key) => new OpenSslAeadKey(lib.newGcm(key)),
    sha256(...parts) {
      const joined = parts.length === 1 ? parts[0] : concat(parts);
      try {
        return lib.sha256(joined);
      } finally {
        if (parts.length > 1) joined.fill(0); // may hold key-derived bytes
      }
    },
    hkdf(salt, ikm, length) {
      if (!(Number.isInteger(length) && length > 0 && length <= 255 * SHA256_SIZE)) {
        throw new RangeError(`HKDF output length ${length}`);
      }
      const prk = lib.hmacSha256(salt, ikm);
      const out = new Uint8Array(Math.ceil(length / SHA256_SIZE) * SHA256_SIZE);
      const block = new Uint8Array(SHA256_SIZE + 1);
      try {
        let previous = new Uint8Array(0);
        for (let i = 1, at = 0; at < length; i++, at += SHA256_SIZE) {
          // T(i) = HMAC(prk, T(i-1) || i)
          const input = block.subarray(0, previous.byteLength + 1);
          input.set(previous);
          input[previous.byteLength] = i;
          const t = lib.hmacSha256(prk, input);
          out.set(t, at);
          t.fill(0);
          previous = out.subarray(at, at + SHA256_SIZE);
        }
        return out.length === length ? out : out.slice(0, length);
      } finally {
        prk.fill(0);
        block.fill(0);
        if (out.length !== length) out.fill(0);
      }
    },
    generateX25519: () => new OpenSslKeyPair(lib.x25519Generate()),
    importX25519: (privateKey) => new OpenSslKeyPair(lib.x25519Import(privateKey)),
    x25519(local, remotePublic) {
      if (!(local instanceof OpenSslKeyPair)) {
        throw new TypeError("an X25519 key pair from another provider");
      }
      return local.key.derive(remotePublic);
    },
    randomBytes: (length) => lib.randomBytes(length),
  };
}
