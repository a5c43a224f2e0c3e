/**
 * The OpenSSL 3 libcrypto binding: every native call Cipherlink makes lives
 * in this module, behind safe wrappers (AES-256-GCM contexts, SHA-256,
 * HMAC-SHA-256 over the digest API, X25519 keys, random bytes).
 *
 * FFI is memory-unsafe, so each wrapper checks every length and offset in
 * TypeScript before the call (buffers are exactly the size the call writes,
 * lengths come from the buffers themselves, never from a peer), checks every
 * return code and out-length after it, zeroes each out-parameter before and
 * after use, and frees what it allocates on every path. A
 * FinalizationRegistry frees contexts and keys that were never disposed: a
 * backstop, not the plan.
 *
 * @module
 */

import { AuthenticationError, CryptoLibraryError } from "../../base/errors.ts";
import {
  AEAD_KEY_SIZE,
  AEAD_NONCE_SIZE,
  AEAD_TAG_SIZE,
  checkInput,
  checkSize,
  isAllZero,
  SHA256_SIZE,
  X25519_SIZE,
} from "./provider.ts";

/** The oldest libcrypto accepted: 3.0.0 (OPENSSL_VERSION_NUMBER 0xMNN00PP0). */
export const MIN_OPENSSL_VERSION = 0x30000000n;

const VERSION_SYMBOLS = {
  OpenSSL_version_num: { parameters: [], result: "u64" },
} as const;

const SYMBOLS = {
  ...VERSION_SYMBOLS,
  EVP_aes_256_gcm: { parameters: [], result: "pointer" },
  // (libctx, algorithm name, properties): fetched once, so no call fetches it again
  EVP_MD_fetch: { parameters: ["pointer", "buffer", "pointer"], result: "pointer" },
  EVP_MD_free: { parameters: ["pointer"], result: "void" },
  EVP_MD_CTX_new: { parameters: [], result: "pointer" },
  EVP_MD_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_DigestInit_ex: { parameters: ["pointer", "pointer", "pointer"], result: "i32" },
  EVP_DigestUpdate: { parameters: ["pointer", "buffer", "usize"], result: "i32" },
  // (ctx, md, unsigned int *size)
  EVP_DigestFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  // (ctx, cipher, engine, key, iv, enc)
  EVP_CipherInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  // (ctx, out, int *outl, in, inl)
  EVP_CipherUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  // (ctx, out, int *outl)
  EVP_CipherFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  // (ctx, type, arg, ptr)
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "buffer"], result: "i32" },
  // (data, count, md, unsigned int *size, type, engine)
  EVP_Digest: {
    parameters: ["buffer", "usize", "buffer", "buffer", "pointer", "pointer"],
    result: "i32",
  },
  EVP_PKEY_CTX_new: { parameters: ["pointer", "pointer"], result: "pointer" },
  EVP_PKEY_CTX_free: { parameters: ["pointer"], result: "void" },
  // (type, engine, key, size_t len)
  EVP_PKEY_new_raw_private_key: {
    parameters: ["i32", "pointer", "buffer", "usize"],
    result: "pointer",
  },
  EVP_PKEY_new_raw_public_key: {
    parameters: ["i32", "pointer", "buffer", "usize"],
    result: "pointer",
  },
  // (pkey, pub, size_t *len)
  EVP_PKEY_get_raw_public_key: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_PKEY_free: { parameters: ["pointer"], result: "void" },
  EVP_PKEY_derive_init: { parameters: ["pointer"], result: "i32" },
  EVP_PKEY_derive_set_peer: { parameters: ["pointer", "pointer"], result: "i32" },
  // (ctx, key, size_t *keylen)
  EVP_PKEY_derive: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  RAND_bytes: { parameters: ["buffer", "i32"], result: "i32" },
  RAND_priv_bytes: { parameters: ["buffer", "i32"], result: "i32" },
} as const;

type Symbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const NID_X25519 = 1034;
/** SHA-256's block size: HMAC pads its key to this. */
const HMAC_BLOCK = 64;
/** The algorithm name EVP_MD_fetch takes, NUL-terminated. */
const SHA256_NAME = new TextEncoder().encode("SHA256\0");
const EVP_CTRL_GCM_GET_TAG = 0x10;
const EVP_CTRL_GCM_SET_TAG = 0x11;
/** A zero-length call still gets a valid address (never NULL where OpenSSL reads). */
const NO_BYTES = new Uint8Array(1).subarray(0, 0);

/**
 * An out-parameter cell (int, unsigned int or size_t): 8 bytes,
 * zeroed before every call that writes it and after it is read.
 */
class OutCell {
  readonly bytes = new Uint8Array(8);
  // Native-endian views: C writes an int or unsigned int at the address
  // itself, a size_t over all 8 bytes.
  readonly #int = new Int32Array(this.bytes.buffer, 0, 1);
  readonly #uint = new Uint32Array(this.bytes.buffer, 0, 1);
  readonly #size = new BigUint64Array(this.bytes.buffer, 0, 1);
  /** Zeroes the cell, or stores `value` as a size_t (an in/out length). */
  reset(value = 0): Uint8Array {
    this.#size[0] = value === 0 ? 0n : BigInt(value);
    return this.bytes;
  }
  /** Reads it as an int, then zeroes it. */
  takeInt(): number {
    const value = this.#int[0];
    this.#size[0] = 0n;
    return value;
  }
  /** Reads it as an unsigned int (4) or a size_t (8), then zeroes it. */
  takeSize(width: 4 | 8): number {
    const value = width === 4 ? this.#uint[0] : Number(this.#size[0]);
    this.#size[0] = 0n;
    return value;
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new CryptoLibraryError(`libcrypto: ${what} failed`);
}

/** Throws unless `out` and `input` are the same bytes or do not overlap at all. */
function checkNoPartialOverlap(out: Uint8Array, input: Uint8Array): void {
  if (out.buffer !== input.buffer || input.byteLength === 0) return;
  const a = out.byteOffset, b = input.byteOffset;
  const overlap = a < b + input.byteLength && b < a + out.byteLength;
  if (overlap && a !== b) throw new RangeError("the output partly overlaps the input");
}

/** Why dlopen failed, without the loader's repeated prefixes and the path. */
function dlopenReason(path: string, err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/^(Could not open library: )+/, "").replace(`${path}: `, "");
}

/** "OpenSSL 3.0.13" from OPENSSL_VERSION_NUMBER (0xMNN00PP0). */
function versionText(number: bigint): string {
  const major = number >> 28n, minor = (number >> 20n) & 0xffn, patch = (number >> 4n) & 0xffn;
  return `OpenSSL ${major}.${minor}.${patch}`;
}

/** A loaded libcrypto 3: the only holder of native symbols. */
export class Libcrypto {
  /** The path handed to dlopen. */
  readonly path: string;
  /** The library's version, e.g. "OpenSSL 3.0.13". */
  readonly version: string;
  readonly #lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  readonly #fn: Symbols;
  readonly #aes256gcm: Deno.PointerObject;
  /** SHA-256 fetched once (implicit fetches cost more than the hash of 64 bytes). */
  readonly #sha256: Deno.PointerObject;
  /** One digest context, reused by every HMAC (calls are synchronous: never interleaved). */
  readonly #digest: Deno.PointerObject;
  /** HMAC scratch: the padded key, then the inner hash. */
  readonly #pad = new Uint8Array(HMAC_BLOCK);
  readonly #inner = new Uint8Array(SHA256_SIZE);
  readonly #out = new OutCell();
  readonly #contexts = new FinalizationRegistry<Deno.PointerObject>((ctx) =>
    this.#fn.EVP_CIPHER_CTX_free(ctx)
  );
  readonly #keys = new FinalizationRegistry<Deno.PointerObject>((pkey) =>
    this.#fn.EVP_PKEY_free(pkey)
  );

  private constructor(path: string, lib: Deno.DynamicLibrary<typeof SYMBOLS>, version: string) {
    this.path = path;
    this.#lib = lib;
    this.#fn = lib.symbols;
    this.version = version;
    const aes = this.#fn.EVP_aes_256_gcm();
    const sha = this.#fn.EVP_MD_fetch(null, SHA256_NAME, null);
    const digest = this.#fn.EVP_MD_CTX_new();
    if (!aes || !sha || !digest) {
      if (sha) this.#fn.EVP_MD_free(sha);
      if (digest) this.#fn.EVP_MD_CTX_free(digest);
      lib.close();
      throw new CryptoLibraryError("it has no AES-256-GCM or SHA-256");
    }
    this.#aes256gcm = aes;
    this.#sha256 = sha;
    this.#digest = digest;
  }

  /**
   * Opens `path` with Deno.dlopen and checks its version (>= 3.0) before
   * binding the rest. Throws {@linkcode CryptoLibraryError} saying why.
   */
  static open(path: string): Libcrypto {
    let probe: Deno.DynamicLibrary<typeof VERSION_SYMBOLS>;
    try {
      probe = Deno.dlopen(path, VERSION_SYMBOLS);
    } catch (err) {
      throw new CryptoLibraryError(dlopenReason(path, err), { cause: err });
    }
    let number: bigint;
    try {
      // unsigned long: only the low 32 bits are defined where long is 32-bit.
      number = BigInt(probe.symbols.OpenSSL_version_num()) & 0xffffffffn;
    } finally {
      probe.close();
    }
    const text = versionText(number);
    if (number < MIN_OPENSSL_VERSION) {
      throw new CryptoLibraryError(`it is ${text}; OpenSSL 3.0 or later is needed`);
    }
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch (err) {
      throw new CryptoLibraryError(`${text}: ${dlopenReason(path, err)}`, { cause: err });
    }
    return new Libcrypto(path, lib, text);
  }

  /** A new AES-256-GCM context holding `key` (copied into native memory). */
  newGcm(key: Uint8Array): GcmContext {
    checkSize("an AES-256-GCM key", key, AEAD_KEY_SIZE);
    const ctx = this.#fn.EVP_CIPHER_CTX_new();
    check(ctx !== null, "EVP_CIPHER_CTX_new");
    try {
      check(
        this.#fn.EVP_CipherInit_ex(ctx, this.#aes256gcm, null, key, null, 1) === 1,
        "EVP_CipherInit_ex (key)",
      );
    } catch (err) {
      this.#fn.EVP_CIPHER_CTX_free(ctx);
      throw err;
    }
    const handle = new GcmContext(this, ctx!);
    this.#contexts.register(handle, ctx!, handle);
    return handle;
  }

  /** @internal GcmContext's seal (all checks here, next to the calls). */
  gcmSeal(
    ctx: Deno.PointerObject,
    nonce: Uint8Array,
    ad: Uint8Array,
    plaintext: Uint8Array,
    out: Uint8Array,
  ): void {
    checkSize("an AES-GCM nonce", nonce, AEAD_NONCE_SIZE);
    checkInput("associated data", ad);
    checkInput("a plaintext", plaintext);
    checkSize("the output", out, plaintext.byteLength + AEAD_TAG_SIZE);
    checkNoPartialOverlap(out, plaintext);
    checkNoPartialOverlap(out, ad);
    const fn = this.#fn, cell = this.#out;
    const length = plaintext.byteLength;
    const tag = out.subarray(length);
    check(fn.EVP_CipherInit_ex(ctx, null, null, null, nonce, 1) === 1, "EVP_CipherInit_ex (seal)");
    this.#cipherUpdate(ctx, null, ad, "EVP_CipherUpdate (AD)");
    this.#cipherUpdate(ctx, out, plaintext, "EVP_CipherUpdate (seal)");
    check(
      fn.EVP_CipherFinal_ex(ctx, tag, cell.reset()) === 1 && cell.takeInt() === 0,
      "EVP_CipherFinal_ex (seal)",
    );
    check(
      fn.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AEAD_TAG_SIZE, tag) === 1,
      "EVP_CTRL_GCM_GET_TAG",
    );
  }

  /**
   * One EVP_CipherUpdate of all of `input` (nothing for an empty one): into
   * `out` (checked by the caller to hold as many bytes), or as associated
   * data when `out` is null; the count written must be the input's length.
   */
  #cipherUpdate(
    ctx: Deno.PointerObject,
    out: Uint8Array | null,
    input: Uint8Array,
    what: string,
  ): void {
    const length = input.byteLength;
    if (length === 0) return;
    const cell = this.#out;
    check(
      this.#fn.EVP_CipherUpdate(ctx, out, cell.reset(), input, length) === 1 &&
        cell.takeInt() === length,
      what,
    );
  }

  /** @internal GcmContext's open; zeroes `out` and throws AuthenticationError on a bad tag. */
  gcmOpen(
    ctx: Deno.PointerObject,
    nonce: Uint8Array,
    ad: Uint8Array,
    ciphertext: Uint8Array,
    out: Uint8Array,
  ): void {
    checkSize("an AES-GCM nonce", nonce, AEAD_NONCE_SIZE);
    checkInput("associated data", ad);
    checkInput("a ciphertext", ciphertext);
    if (ciphertext.byteLength < AEAD_TAG_SIZE) {
      throw new AuthenticationError("a message shorter than its tag");
    }
    const length = ciphertext.byteLength - AEAD_TAG_SIZE;
    checkSize("the output", out, length);
    checkNoPartialOverlap(out, ciphertext);
    checkNoPartialOverlap(out, ad);
    // Copied first: an in-place open overwrites the ciphertext, not the tag,
    // but the tag must be handed over before Final either way.
    const tag = ciphertext.slice(length);
    const fn = this.#fn, cell = this.#out;
    check(fn.EVP_CipherInit_ex(ctx, null, null, null, nonce, 0) === 1, "EVP_CipherInit_ex (open)");
    this.#cipherUpdate(ctx, null, ad, "EVP_CipherUpdate (AD)");
    this.#cipherUpdate(ctx, out, ciphertext.subarray(0, length), "EVP_CipherUpdate (open)");
    check(
      fn.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AEAD_TAG_SIZE, tag) === 1,
      "EVP_CTRL_GCM_SET_TAG",
    );
    const verified = fn.EVP_CipherFinal_ex(ctx, NO_BYTES, cell.reset()) === 1;
    const extra = cell.takeInt();
    if (!verified || extra !== 0) {
      out.fill(0); // never hand out unauthenticated plaintext
      throw new AuthenticationError("a message did not decrypt");
    }
  }

  /** @internal Frees a context (OpenSSL cleanses the key schedule). */
  freeGcm(handle: GcmContext, ctx: Deno.PointerObject): void {
    this.#contexts.unregister(handle);
    this.#fn.EVP_CIPHER_CTX_free(ctx);
  }

  /** SHA-256 of `data` in one EVP_Digest call. */
  sha256(data: Uint8Array): Uint8Array {
    checkInput("hash input", data);
    const md = new Uint8Array(SHA256_SIZE);
    const cell = this.#out;
    check(
      this.#fn.EVP_Digest(
            data.byteLength > 0 ? data : NO_BYTES,
            BigInt(data.byteLength),
            md,
            cell.reset(),
            this.#sha256,
            null,
          ) === 1 && cell.takeSize(4) === SHA256_SIZE,
      "EVP_Digest",
    );
    return md;
  }

  /**
   * HMAC-SHA-256(key, data) per RFC 2104, as two digests on the reused
   * context: H((K ^ opad) || H((K ^ ipad) || data)). (OpenSSL's one-shot
   * HMAC() fetches the algorithm on every call and costs twice as much.)
   */
  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
    checkInput("an HMAC key", key);
    checkInput("HMAC input", data);
    const pad = this.#pad, inner = this.#inner;
    try {
      pad.fill(0);
      pad.set(key.byteLength > HMAC_BLOCK ? this.sha256(key) : key);
      for (let i = 0; i < HMAC_BLOCK; i++) pad[i] ^= 0x36;
      this.#digestInto(inner, pad, data);
      for (let i = 0; i < HMAC_BLOCK; i++) pad[i] ^= 0x36 ^ 0x5c;
      const md = new Uint8Array(SHA256_SIZE);
      this.#digestInto(md, pad, inner);
      return md;
    } finally {
      pad.fill(0);
      inner.fill(0);
    }
  }

  /** SHA-256(a || b) into `md` on the reused digest context. */
  #digestInto(md: Uint8Array, a: Uint8Array, b: Uint8Array): void {
    checkSize("a digest output", md, SHA256_SIZE);
    const fn = this.#fn, ctx = this.#digest, cell = this.#out;
    check(fn.EVP_DigestInit_ex(ctx, this.#sha256, null) === 1, "EVP_DigestInit_ex");
    for (const part of [a, b]) {
      if (part.byteLength === 0) continue;
      check(
        fn.EVP_DigestUpdate(ctx, part, BigInt(part.byteLength)) === 1,
        "EVP_DigestUpdate",
      );
    }
    check(
      fn.EVP_DigestFinal_ex(ctx, md, cell.reset()) === 1 && cell.takeSize(4) === SHA256_SIZE,
      "EVP_DigestFinal_ex",
    );
  }

  /**
   * A fresh X25519 key: 32 bytes from OpenSSL's private-key generator, made an
   * EVP_PKEY at once and zeroed (what EVP_PKEY_keygen does inside; this way no
   * `EVP_PKEY **` out-parameter and no raw pointer ever reach JavaScript,
   * which a path-scoped --allow-ffi would not allow anyway).
   */
  x25519Generate(): X25519Key {
    const privateKey = new Uint8Array(X25519_SIZE);
    try {
      check(this.#fn.RAND_priv_bytes(privateKey, X25519_SIZE) === 1, "RAND_priv_bytes");
      return this.x25519Import(privateKey);
    } finally {
      privateKey.fill(0);
    }
  }

  /** An X25519 key from a fixed private key (test vectors). */
  x25519Import(privateKey: Uint8Array): X25519Key {
    checkSize("an X25519 private key", privateKey, X25519_SIZE);
    const pkey = this.#fn.EVP_PKEY_new_raw_private_key(
      NID_X25519,
      null,
      privateKey,
      BigInt(X25519_SIZE),
    );
    check(pkey !== null, "EVP_PKEY_new_raw_private_key");
    return this.#adoptKey(pkey!);
  }

  /** @internal X25519(key, remotePublic); AuthenticationError for a low-order remote key. */
  x25519Derive(pkey: Deno.PointerObject, remotePublic: Uint8Array): Uint8Array {
    checkSize("an X25519 public key", remotePublic, X25519_SIZE);
    const fn = this.#fn, cell = this.#out;
    const peer = fn.EVP_PKEY_new_raw_public_key(
      NID_X25519,
      null,
      remotePublic,
      BigInt(X25519_SIZE),
    );
    check(peer !== null, "EVP_PKEY_new_raw_public_key");
    const ctx = fn.EVP_PKEY_CTX_new(pkey, null);
    const shared = new Uint8Array(X25519_SIZE);
    try {
      check(ctx !== null, "EVP_PKEY_CTX_new");
      check(fn.EVP_PKEY_derive_init(ctx) === 1, "EVP_PKEY_derive_init");
      check(fn.EVP_PKEY_derive_set_peer(ctx, peer) === 1, "EVP_PKEY_derive_set_peer");
      // OpenSSL refuses an all-zero result (a low-order point): that is the peer's fault.
      const ok = fn.EVP_PKEY_derive(ctx, shared, cell.reset(X25519_SIZE)) === 1;
      const length = cell.takeSize(8);
      if (!ok || length !== X25519_SIZE || isAllZero(shared)) {
        shared.fill(0);
        throw new AuthenticationError("the peer's ephemeral key is invalid");
      }
      return shared;
    } finally {
      if (ctx) fn.EVP_PKEY_CTX_free(ctx);
      fn.EVP_PKEY_free(peer);
    }
  }

  /** @internal Frees a key (OpenSSL cleanses the private key). */
  freeKey(handle: X25519Key, pkey: Deno.PointerObject): void {
    this.#keys.unregister(handle);
    this.#fn.EVP_PKEY_free(pkey);
  }

  /** `length` bytes from OpenSSL's CSPRNG. */
  randomBytes(length: number): Uint8Array {
    if (!(Number.isInteger(length) && length >= 0 && length <= 2 ** 31 - 1)) {
      throw new RangeError(`random byte count ${length}`);
    }
    const out = new Uint8Array(length);
    if (length > 0) check(this.#fn.RAND_bytes(out, length) === 1, "RAND_bytes");
    return out;
  }

  /** Closes the library; every context and key must have been disposed. */
  close(): void {
    this.#fn.EVP_MD_CTX_free(this.#digest);
    this.#fn.EVP_MD_free(this.#sha256);
    this.#lib.close();
  }

  #adoptKey(pkey: Deno.PointerObject): X25519Key {
    const fn = this.#fn, cell = this.#out;
    const publicKey = new Uint8Array(X25519_SIZE);
    const ok = fn.EVP_PKEY_get_raw_public_key(pkey, publicKey, cell.reset(X25519_SIZE)) === 1;
    if (!ok || cell.takeSize(8) !== X25519_SIZE) {
      fn.EVP_PKEY_free(pkey);
      throw new CryptoLibraryError("libcrypto: EVP_PKEY_get_raw_public_key failed");
    }
    const handle = new X25519Key(this, pkey, publicKey);
    this.#keys.register(handle, pkey, handle);
    return handle;
  }
}

/** One AES-256-GCM EVP_CIPHER_CTX holding one key, re-initialised with each nonce. */
export class GcmContext {
  readonly #lib: Libcrypto;
  #ctx: Deno.PointerObject | null;
  constructor(lib: Libcrypto, ctx: Deno.PointerObject) {
    this.#lib = lib;
    this.#ctx = ctx;
  }
  /** Writes ciphertext || tag into `out` (plaintext length + 16). */
  seal(nonce: Uint8Array, ad: Uint8Array, plaintext: Uint8Array, out: Uint8Array): void {
    this.#lib.gcmSeal(this.#live(), nonce, ad, plaintext, out);
  }
  /** Writes the plaintext into `out` (ciphertext length - 16); AuthenticationError on a bad tag. */
  open(nonce: Uint8Array, ad: Uint8Array, ciphertext: Uint8Array, out: Uint8Array): void {
    this.#lib.gcmOpen(this.#live(), nonce, ad, ciphertext, out);
  }
  /** Frees the context. Idempotent. */
  free(): void {
    if (this.#ctx) this.#lib.freeGcm(this, this.#ctx);
    this.#ctx = null;
  }
  #live(): Deno.PointerObject {
    if (!this.#ctx) throw new TypeError("the AES-GCM context was freed");
    return this.#ctx;
  }
}

/** One X25519 EVP_PKEY. */
export class X25519Key {
  readonly #lib: Libcrypto;
  #pkey: Deno.PointerObject | null;
  /** The raw public key. */
  readonly publicKey: Uint8Array;
  constructor(lib: Libcrypto, pkey: Deno.PointerObject, publicKey: Uint8Array) {
    this.#lib = lib;
    this.#pkey = pkey;
    this.publicKey = publicKey;
  }
  /** X25519 with `remotePublic`; AuthenticationError for a low-order key. */
  derive(remotePublic: Uint8Array): Uint8Array {
    if (!this.#pkey) throw new TypeError("the X25519 key was freed");
    return this.#lib.x25519Derive(this.#pkey, remotePublic);
  }
  /** Frees the key. Idempotent. */
  free(): void {
    if (this.#pkey) this.#lib.freeKey(this, this.#pkey);
    this.#pkey = null;
  }
}
