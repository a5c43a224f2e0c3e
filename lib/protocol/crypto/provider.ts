/**
 * The crypto provider interface: every primitive the protocol needs
 * (AES-256-GCM with associated data, X25519, SHA-256, HKDF-SHA-256, random
 * bytes) behind one small interface, so the Noise code above it does not care
 * who computes them.
 *
 * A provider is either synchronous (`sync: true`: every method returns its
 * result directly, never a promise; the OpenSSL provider) or asynchronous
 * (`sync: false`: methods may return promises; Web Crypto). Callers that
 * want to use both write `MaybePromise` code (see lib/protocol/noise.ts's `drive`).
 *
 * Errors: a tag that does not verify, or an X25519 result that is all zero
 * (a low-order peer key), is an {@linkcode AuthenticationError}, thrown or
 * rejected the same way by every provider.
 *
 * @module
 */

/** A result that is a plain value from a synchronous provider, else a promise. */
export type MaybePromise<T> = T | Promise<T>;

/** The names `--crypto` accepts. */
export const CRYPTO_PROVIDERS = ["webcrypto", "openssl"] as const;

/** One of {@linkcode CRYPTO_PROVIDERS}. */
export type CryptoProviderName = typeof CRYPTO_PROVIDERS[number];

/** The provider used when nothing else is asked for. */
export const DEFAULT_CRYPTO_PROVIDER: CryptoProviderName = "webcrypto";

/** AES-256-GCM key length. */
export const AEAD_KEY_SIZE = 32;
/** AES-256-GCM nonce length (Noise: 4 zero bytes and a 64-bit counter). */
export const AEAD_NONCE_SIZE = 12;
/** AES-256-GCM tag length. */
export const AEAD_TAG_SIZE = 16;
/** X25519 public keys, private keys and shared secrets. */
export const X25519_SIZE = 32;
/** SHA-256 output length. */
export const SHA256_SIZE = 32;
/**
 * Largest plaintext, ciphertext or associated data one call accepts: far above
 * the protocol's 64 KiB frames, below every native `int` length.
 */
export const MAX_CRYPTO_INPUT = 2 ** 24;

/**
 * An AES-256-GCM key ready for use. Both methods read their inputs before
 * they return (a caller may reuse its buffers at once) and write
 * `ciphertext || tag` or the plaintext into `out` when given (it must be
 * exactly the output's length and must not overlap the input), else into a
 * new array.
 */
export interface AeadKey {
  /** Encrypts: returns ciphertext || tag (plaintext length + 16). */
  seal(
    nonce: Uint8Array,
    ad: Uint8Array,
    plaintext: Uint8Array,
    out?: Uint8Array,
  ): MaybePromise<Uint8Array>;
  /** Decrypts and verifies; an AuthenticationError when the tag is wrong. */
  open(
    nonce: Uint8Array,
    ad: Uint8Array,
    ciphertext: Uint8Array,
    out?: Uint8Array,
  ): MaybePromise<Uint8Array>;
  /** Releases the key (native memory is cleansed); later calls throw. */
  dispose(): void;
}

/** An X25519 key pair: the raw public key and a provider-owned private half. */
export interface X25519KeyPair {
  /** The 32-byte public key. */
  readonly publicKey: Uint8Array;
  /** Releases the private key; later use throws. */
  dispose(): void;
}

/** Everything the protocol's cryptography needs. */
export interface CryptoProvider {
  /** The `--crypto` name of this provider. */
  readonly name: CryptoProviderName;
  /** True when every method returns plain values (no promise, ever). */
  readonly sync: boolean;
  /** Imports a 32-byte AES-256-GCM key (the caller keeps and may zero its buffer). */
  aeadKey(key: Uint8Array): MaybePromise<AeadKey>;
  /** SHA-256 of the concatenation of `parts`. */
  sha256(...parts: Uint8Array[]): MaybePromise<Uint8Array>;
  /**
   * RFC 5869 HKDF-SHA-256 with an empty info: `length` bytes (at most 255 *
   * 32) of T(1) || T(2) || … (Noise's HKDF outputs when length is 64 or 96).
   */
  hkdf(salt: Uint8Array, ikm: Uint8Array, length: number): MaybePromise<Uint8Array>;
  /** A fresh X25519 key pair. */
  generateX25519(): MaybePromise<X25519KeyPair>;
  /** An X25519 key pair from a fixed private key: for test vectors only. */
  importX25519(privateKey: Uint8Array): MaybePromise<X25519KeyPair>;
  /**
   * X25519(local private, remote public): 32 bytes. A result of all zeros (a
   * low-order remote key) is an AuthenticationError.
   */
  x25519(local: X25519KeyPair, remotePublic: Uint8Array): MaybePromise<Uint8Array>;
  /** `length` cryptographically random bytes. */
  randomBytes(length: number): Uint8Array;
}

/** Throws a RangeError unless `bytes` is exactly `size` long. */
export function checkSize(what: string, bytes: Uint8Array, size: number): void {
  if (bytes.byteLength !== size) {
    throw new RangeError(`${what} must be ${size} bytes, not ${bytes.byteLength}`);
  }
}

/** Throws a RangeError when `bytes` is longer than one call accepts. */
export function checkInput(what: string, bytes: Uint8Array): void {
  if (bytes.byteLength > MAX_CRYPTO_INPUT) {
    throw new RangeError(`${what} of ${bytes.byteLength} bytes is over ${MAX_CRYPTO_INPUT}`);
  }
}

/** Whether every byte is zero, in time that does not depend on where a non-zero one is. */
export function isAllZero(bytes: Uint8Array): boolean {
  let acc = 0;
  for (let i = 0; i < bytes.byteLength; i++) acc |= bytes[i];
  return acc === 0;
}
