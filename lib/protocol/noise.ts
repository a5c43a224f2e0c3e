/**
 * Noise `NNpsk0_25519_AESGCM_SHA256` (Noise spec revision 34): CipherState,
 * SymmetricState and the two-message NNpsk0 HandshakeState, over a crypto
 * provider (lib/protocol/crypto/): Web Crypto by default, or OpenSSL.
 *
 * Only what Cipherlink needs is here: one pattern, one cipher suite. All
 * cryptography is the provider's; nothing is implemented in JavaScript.
 *
 * Synchronous and asynchronous providers share one implementation: each
 * handshake step is a generator that yields only the promises an
 * asynchronous provider returns, and {@linkcode drive} runs it. With a
 * synchronous provider (OpenSSL) nothing is ever yielded, so the handshake
 * methods return plain values and a handshake costs no event-loop turn; with
 * Web Crypto they return promises. `await` works on both.
 *
 * Key hygiene: DH outputs, HKDF outputs, superseded chaining keys and the
 * ephemeral private key are zeroed or released as soon as they are used.
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

import { concat } from "../base/bytes.ts";
import { AuthenticationError } from "../base/errors.ts";
import {
  AEAD_KEY_SIZE,
  AEAD_NONCE_SIZE,
  AEAD_TAG_SIZE,
  type AeadKey,
  type CryptoProvider,
  type MaybePromise,
  SHA256_SIZE,
  X25519_SIZE,
  type X25519KeyPair,
} from "./crypto/provider.ts";
import { webcrypto } from "./crypto/webcrypto.ts";
import { KEY_SIZE } from "./keys.ts";

/** The protocol name, exactly 32 bytes, so it is also the initial hash. */
export const PROTOCOL_NAME = "Noise_NNpsk0_25519_AESGCM_SHA256";
const HASH_LEN = SHA256_SIZE;
const DH_LEN = X25519_SIZE;
/** The nonce reserved for REKEY; never used for a message. */
const REKEY_NONCE = 2n ** 64n - 1n;
/** Counters are JavaScript numbers; no connection comes near this. */
const MAX_COUNTER = Number.MAX_SAFE_INTEGER;
const EMPTY = new Uint8Array(0);

/** The 12-byte AES-GCM nonce for counter `n`: 4 zero bytes, then n as u64 BE. */
export function counterNonce(
  n: number | bigint,
  target: Uint8Array = new Uint8Array(AEAD_NONCE_SIZE),
): Uint8Array {
  const view = new DataView(target.buffer, target.byteOffset, AEAD_NONCE_SIZE);
  view.setUint32(0, 0);
  if (typeof n === "bigint") {
    view.setBigUint64(4, n);
  } else {
    // A safe integer: its high and low 32 bits, without a BigInt per call.
    view.setUint32(4, Math.floor(n / 2 ** 32));
    view.setUint32(8, n >>> 0);
  }
  return target;
}

/** A computation that yields the promises it waits on (see {@linkcode drive}). */
export type Steps<T> = Generator<Promise<unknown>, T, unknown>;

/** One provider result inside Steps: yielded only when it is a promise. */
function* wait<T>(value: MaybePromise<T>): Steps<T> {
  return value instanceof Promise ? (yield value) as T : value;
}

/** Two provider results inside Steps, awaited together when either is a promise. */
function* both<A, B>(a: MaybePromise<A>, b: MaybePromise<B>): Steps<[A, B]> {
  if (!(a instanceof Promise) && !(b instanceof Promise)) return [a, b];
  return (yield Promise.all([a, b])) as [A, B];
}

/**
 * Runs `steps`: synchronously to the end while nothing is yielded (a plain
 * value, or a synchronous throw), and from the first yielded promise on as
 * an async function (a promise, or a rejection).
 */
export function drive<T>(steps: Steps<T>): MaybePromise<T> {
  let step = steps.next();
  if (step.done) return step.value;
  return (async () => {
    while (!step.done) {
      let result: unknown;
      try {
        result = await step.value;
      } catch (err) {
        step = steps.throw(err);
        continue;
      }
      step = steps.next(result);
    }
    return step.value;
  })();
}

/**
 * A Noise CipherState: an AES-256-GCM key and the counter `n`.
 *
 * Two ways in:
 * - `encryptAt`/`decryptAt` (and `encryptWithAd`/`decryptWithAd`) return
 *   promises with every provider. With an asynchronous provider the counter
 *   is claimed synchronously when a call starts, so several encryptions can
 *   be in flight at once and still use consecutive nonces.
 * - When {@linkcode CipherState.sync} is true, `sealAt`/`openAt` return the
 *   result directly and can write it into the caller's buffer (the frame
 *   being built): no promise, no copy. They throw with an async provider.
 *
 * REKEY takes effect synchronously for every call started afterwards; calls
 * started before it keep the old key.
 */
export class CipherState {
  /** The provider computing this state's AES-GCM. */
  readonly provider: CryptoProvider;
  /** The key once imported (always, with a synchronous provider). */
  #key: AeadKey | null = null;
  /** An asynchronous import or REKEY still running. */
  #pending: Promise<AeadKey> | null = null;
  /** Nonce scratch for the synchronous path (inputs are read before return). */
  #nonce = new Uint8Array(AEAD_NONCE_SIZE);
  #n = 0;

  private constructor(provider: CryptoProvider, key: MaybePromise<AeadKey>) {
    this.provider = provider;
    this.#install(key);
  }

  /**
   * A CipherState with key `k` and n = 0. `k` is read before this returns;
   * the caller keeps ownership of it (and may zero it).
   */
  static fromKey(k: Uint8Array, provider: CryptoProvider = webcrypto): CipherState {
    return new CipherState(provider, provider.aeadKey(k));
  }

  /** True when sealAt/openAt may be used (the provider is synchronous). */
  get sync(): boolean {
    return this.provider.sync;
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
    try {
      return this.encryptAt(this.claimNonce(), ad, plaintext);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Decrypts under the next counter; rejects with {@linkcode AuthenticationError}
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
    if (this.sync) return settle(() => this.sealAt(n, ad, plaintext));
    return this.#run("seal", n, ad, plaintext);
  }

  /**
   * Decrypts with an explicit counter without advancing n (see advance()).
   * The inputs are read before this returns, so the caller may reuse its
   * buffer at once. Rejects with {@linkcode AuthenticationError}.
   */
  decryptAt(n: number, ad: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    if (this.sync) return settle(() => this.openAt(n, ad, ciphertext));
    return this.#run("open", n, ad, ciphertext);
  }

  /**
   * Synchronous providers only: encrypts with counter `n` (claimed with
   * claimNonce) and returns ciphertext || tag, written into `out` when given
   * (exactly plaintext length + 16 bytes, not overlapping the plaintext).
   */
  sealAt(n: number, ad: Uint8Array, plaintext: Uint8Array, out?: Uint8Array): Uint8Array {
    return this.#syncKey().seal(counterNonce(n, this.#nonce), ad, plaintext, out) as Uint8Array;
  }

  /**
   * Synchronous providers only: decrypts with counter `n` without advancing
   * the counter; throws {@linkcode AuthenticationError}. Writes into `out`
   * when given (exactly ciphertext length - 16 bytes).
   */
  openAt(n: number, ad: Uint8Array, ciphertext: Uint8Array, out?: Uint8Array): Uint8Array {
    return this.#syncKey().open(counterNonce(n, this.#nonce), ad, ciphertext, out) as Uint8Array;
  }

  /** Marks `count` counters as used by decryptAt/openAt calls the caller made. */
  advance(count = 1): void {
    this.#n += count;
  }

  /**
   * Noise REKEY: k = first 32 bytes of ENCRYPT(k, 2^64-1, empty, zeros[32]).
   * Takes effect synchronously for every call started afterwards.
   */
  rekey(): void {
    const nonce = counterNonce(REKEY_NONCE);
    if (this.sync) {
      const old = this.#syncKey();
      const sealed = old.seal(nonce, EMPTY, new Uint8Array(AEAD_KEY_SIZE)) as Uint8Array;
      try {
        this.#install(this.provider.aeadKey(sealed.subarray(0, AEAD_KEY_SIZE)));
      } finally {
        sealed.fill(0);
        old.dispose();
      }
      return;
    }
    // Calls already started keep the old key object, so it is not disposed.
    const current = this.#key ?? this.#pending!;
    this.#install(
      Promise.resolve(current).then(async (k) => {
        const sealed = await k.seal(nonce, EMPTY, new Uint8Array(AEAD_KEY_SIZE));
        try {
          return await this.provider.aeadKey(sealed.subarray(0, AEAD_KEY_SIZE));
        } finally {
          sealed.fill(0);
        }
      }),
    );
  }

  /** Releases the key (native contexts are freed and cleansed). Idempotent. */
  dispose(): void {
    this.#key?.dispose();
    this.#key = null;
    this.#pending?.then((k) => k.dispose(), () => {});
    this.#pending = null;
  }

  #install(key: MaybePromise<AeadKey>): void {
    if (!(key instanceof Promise)) {
      this.#key = key;
      this.#pending = null;
      return;
    }
    key.catch(() => {}); // observed by every call that waits on it
    this.#key = null;
    this.#pending = key;
    key.then((k) => {
      if (this.#pending === key) {
        this.#key = k;
        this.#pending = null;
      }
    }, () => {});
  }

  #syncKey(): AeadKey {
    if (!this.sync) {
      throw new TypeError(`the ${this.provider.name} provider is not synchronous`);
    }
    if (!this.#key) throw new TypeError("the CipherState was disposed");
    return this.#key;
  }

  #run(op: "seal" | "open", n: number, ad: Uint8Array, input: Uint8Array): Promise<Uint8Array> {
    const nonce = counterNonce(n);
    // The provider reads its inputs when the call starts; when the key is not
    // imported yet (right after a REKEY) copy them here instead.
    if (this.#key) return this.#key[op](nonce, ad, input) as Promise<Uint8Array>;
    if (!this.#pending) return Promise.reject(new TypeError("the CipherState was disposed"));
    const adCopy = ad.slice();
    const inputCopy = input.slice();
    return this.#pending.then((k) => k[op](nonce, adCopy, inputCopy));
  }
}

/** fn()'s result as a promise, its throw as a rejection. */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Encrypts under cs's next counter, inside Steps. */
function* encryptNext(cs: CipherState, ad: Uint8Array, plaintext: Uint8Array): Steps<Uint8Array> {
  const n = cs.claimNonce();
  return cs.sync ? cs.sealAt(n, ad, plaintext) : yield* wait(cs.encryptAt(n, ad, plaintext));
}

/** Decrypts under cs's next counter (advancing it on success), inside Steps. */
function* decryptNext(cs: CipherState, ad: Uint8Array, ciphertext: Uint8Array): Steps<Uint8Array> {
  const n = cs.nonce;
  const plaintext = cs.sync
    ? cs.openAt(n, ad, ciphertext)
    : yield* wait(cs.decryptAt(n, ad, ciphertext));
  cs.advance();
  return plaintext;
}

/**
 * Noise SymmetricState: chaining key, handshake hash, and the CipherState.
 *
 * Two shortcuts that change no byte: the key a MixKey produces is imported
 * only when something is encrypted or decrypted with it (in `e, ee` the
 * first MixKey's key is replaced unused), and the hash of the handshake's
 * last ciphertext is computed only if the final handshake hash is asked for
 * (nothing after Split needs it).
 */
class SymmetricState {
  readonly provider: CryptoProvider;
  ck: Uint8Array;
  h: Uint8Array;
  #cipher: CipherState | null = null;
  /** A MixKey's key not imported yet (zeroed once it is, or once replaced). */
  #pendingKey: Uint8Array | null = null;
  /** The last message's ciphertext, not yet mixed into h. */
  #tail: Uint8Array | null = null;

  constructor(provider: CryptoProvider, ck: Uint8Array, h: Uint8Array) {
    this.provider = provider;
    this.ck = ck;
    this.h = h;
  }

  /** The state right after InitializeSymmetric(PROTOCOL_NAME). */
  static initial(provider: CryptoProvider): SymmetricState {
    const name = new TextEncoder().encode(PROTOCOL_NAME);
    if (name.byteLength !== HASH_LEN) {
      throw new Error("protocol names other than 32 bytes are not supported here");
    }
    return new SymmetricState(provider, name.slice(), name);
  }

  *mixHash(data: Uint8Array): Steps<void> {
    this.h = yield* wait(this.provider.sha256(this.h, data));
  }

  *mixKey(ikm: Uint8Array): Steps<void> {
    const out = yield* wait(this.provider.hkdf(this.ck, ikm, 2 * HASH_LEN));
    this.#takeChainingKey(out);
    this.#setCipher(out.subarray(HASH_LEN, 2 * HASH_LEN));
    out.fill(0);
  }

  /** The `e` token with a psk: MixHash(e) and MixKey(e), computed at once (they are independent). */
  *mixEphemeral(publicKey: Uint8Array): Steps<void> {
    const [h, out] = yield* both(
      this.provider.sha256(this.h, publicKey),
      this.provider.hkdf(this.ck, publicKey, 2 * HASH_LEN),
    );
    this.h = h;
    this.#takeChainingKey(out);
    this.#setCipher(out.subarray(HASH_LEN, 2 * HASH_LEN));
    out.fill(0);
  }

  *mixKeyAndHash(ikm: Uint8Array): Steps<void> {
    const out = yield* wait(this.provider.hkdf(this.ck, ikm, 3 * HASH_LEN));
    this.#takeChainingKey(out);
    try {
      yield* this.mixHash(out.subarray(HASH_LEN, 2 * HASH_LEN));
      this.#setCipher(out.subarray(2 * HASH_LEN, 3 * HASH_LEN));
    } finally {
      out.fill(0);
    }
  }

  /** EncryptAndHash; `last`: the hash of the result is left for finalHash(). */
  *encryptAndHash(plaintext: Uint8Array, last = false): Steps<Uint8Array> {
    const cipher = this.#takeCipher();
    const ciphertext = cipher ? yield* encryptNext(cipher, this.h, plaintext) : plaintext;
    if (last) this.#tail = ciphertext;
    else yield* this.mixHash(ciphertext);
    return ciphertext;
  }

  /** DecryptAndHash; `last` as for encryptAndHash. */
  *decryptAndHash(ciphertext: Uint8Array, last = false): Steps<Uint8Array> {
    const cipher = this.#takeCipher();
    const plaintext = cipher ? yield* decryptNext(cipher, this.h, ciphertext) : ciphertext;
    if (last) this.#tail = ciphertext.slice();
    else yield* this.mixHash(ciphertext);
    return plaintext;
  }

  /** h with the last message mixed in: the final handshake hash. */
  *finalHash(): Steps<Uint8Array> {
    if (this.#tail) {
      const tail = this.#tail;
      this.#tail = null;
      yield* this.mixHash(tail);
    }
    return this.h;
  }

  *split(): Steps<[CipherState, CipherState]> {
    const out = yield* wait(this.provider.hkdf(this.ck, EMPTY, 2 * HASH_LEN));
    try {
      return [
        CipherState.fromKey(out.subarray(0, HASH_LEN), this.provider),
        CipherState.fromKey(out.subarray(HASH_LEN, 2 * HASH_LEN), this.provider),
      ];
    } finally {
      out.fill(0);
      this.dispose();
    }
  }

  /** Zeroes the chaining key and releases the handshake CipherState. */
  dispose(): void {
    this.ck.fill(0);
    this.#pendingKey?.fill(0);
    this.#pendingKey = null;
    this.#cipher?.dispose();
    this.#cipher = null;
  }

  #takeChainingKey(out: Uint8Array): void {
    this.ck.fill(0);
    this.ck = out.slice(0, HASH_LEN);
  }

  /** Keeps a copy of the new key; the old key and cipher are released. */
  #setCipher(key: Uint8Array): void {
    this.#pendingKey?.fill(0);
    this.#pendingKey = key.slice();
    this.#cipher?.dispose();
    this.#cipher = null;
  }

  /** The current CipherState, imported now if its key is still pending. */
  #takeCipher(): CipherState | null {
    if (this.#pendingKey) {
      try {
        this.#cipher = CipherState.fromKey(this.#pendingKey, this.provider);
      } finally {
        this.#pendingKey.fill(0);
        this.#pendingKey = null;
      }
    }
    return this.#cipher;
  }
}

/** An X25519 key pair with its raw public key (a provider's key pair). */
export type EphemeralKey = X25519KeyPair;

/** Generates a fresh X25519 ephemeral key pair. */
export function generateEphemeral(
  provider: CryptoProvider = webcrypto,
): MaybePromise<EphemeralKey> {
  return provider.generateX25519();
}

/**
 * Imports a fixed X25519 private key (32 bytes): for test vectors only; real
 * handshakes always use {@linkcode generateEphemeral}.
 */
export function importEphemeral(
  privateKey: Uint8Array,
  provider: CryptoProvider = webcrypto,
): MaybePromise<EphemeralKey> {
  return provider.importX25519(privateKey);
}

function* dh(
  provider: CryptoProvider,
  local: EphemeralKey,
  remotePublic: Uint8Array,
): Steps<Uint8Array> {
  try {
    return yield* wait(provider.x25519(local, remotePublic));
  } catch (err) {
    if (err instanceof AuthenticationError) throw err;
    throw new AuthenticationError("the peer's ephemeral key is invalid", { cause: err });
  }
}

/** (ck, h) after the prologue and the psk token: the same for every handshake under one key. */
interface PskPrefix {
  psk: Uint8Array;
  prologue: Uint8Array;
  state: MaybePromise<{ ck: Uint8Array; h: Uint8Array }>;
}

/** Per key object (see NNpsk0Handshake.create). */
const pskPrefixes = new WeakMap<Uint8Array, PskPrefix>();

/** Zeroes an entry's copy of the key and its derived (ck, h). */
function zeroPrefix(entry: PskPrefix): void {
  entry.psk.fill(0);
  const wipe = (s: { ck: Uint8Array; h: Uint8Array }) => {
    s.ck.fill(0);
    s.h.fill(0);
  };
  if (entry.state instanceof Promise) entry.state.then(wipe, () => {});
  else wipe(entry.state);
}

/** Once a key object is garbage, its cached prefix is zeroed (a backstop to forgetPsk). */
const prefixWiper = new FinalizationRegistry<PskPrefix>(zeroPrefix);

/**
 * Zeroes and drops the cached handshake prefix of `psk` (call it when a key
 * is retired, e.g. on a key swap). Harmless for a key never used.
 */
export function forgetPsk(psk: Uint8Array): void {
  const entry = pskPrefixes.get(psk);
  if (!entry) return;
  pskPrefixes.delete(psk);
  prefixWiper.unregister(entry);
  zeroPrefix(entry);
}

function* pskPrefix(
  provider: CryptoProvider,
  psk: Uint8Array,
  prologue: Uint8Array,
): Steps<{ ck: Uint8Array; h: Uint8Array }> {
  const same = (a: Uint8Array, b: Uint8Array) =>
    a.byteLength === b.byteLength && a.every((x, i) => x === b[i]);
  const cached = pskPrefixes.get(psk);
  if (cached && same(cached.psk, psk) && same(cached.prologue, prologue)) {
    return yield* wait(cached.state);
  }
  if (cached) forgetPsk(psk); // the buffer's bytes changed: the old prefix is stale
  const compute = function* (): Steps<{ ck: Uint8Array; h: Uint8Array }> {
    const s = SymmetricState.initial(provider);
    yield* s.mixHash(prologue);
    yield* s.mixKeyAndHash(psk);
    // The psk token's k is never used: message 1's "e" replaces it.
    const state = { ck: s.ck.slice(), h: s.h };
    s.dispose();
    return state;
  };
  const state = drive(compute());
  const entry: PskPrefix = { psk: psk.slice(), prologue: prologue.slice(), state };
  pskPrefixes.set(psk, entry);
  prefixWiper.register(psk, entry, entry);
  if (state instanceof Promise) {
    state.then((value) => {
      if (entry.state === state) entry.state = value;
    }, () => {
      if (pskPrefixes.get(psk) === entry) pskPrefixes.delete(psk);
    });
  }
  return yield* wait(state);
}

/** Which side of the handshake this is. */
export type Role = "initiator" | "responder";

/** Options of {@linkcode NNpsk0Handshake.create}. */
export interface HandshakeOptions {
  /** Who computes the cryptography (default: Web Crypto). */
  provider?: CryptoProvider;
  /** A fixed ephemeral key, for test vectors; left out, a fresh one is made. */
  ephemeral?: EphemeralKey;
}

/**
 * The NNpsk0 handshake: `-> psk, e` then `<- e, ee`. Message payloads are
 * optional (Cipherlink sends empty ones); `split()` returns
 * [initiator->responder, responder->initiator] CipherStates.
 *
 * Every method returns a plain value with a synchronous provider and a
 * promise with an asynchronous one (see {@linkcode drive}); errors are
 * thrown or rejected accordingly, so use `await` (in a `try`).
 */
export class NNpsk0Handshake {
  readonly role: Role;
  readonly provider: CryptoProvider;
  #state: SymmetricState;
  /** The responder's is made only when message 2 is written (see create). */
  #e: EphemeralKey | null;
  #re: Uint8Array | null = null;
  #step = 0;

  private constructor(
    role: Role,
    provider: CryptoProvider,
    state: SymmetricState,
    e: EphemeralKey | null,
  ) {
    this.role = role;
    this.provider = provider;
    this.#state = state;
    this.#e = e;
  }

  /** Starts a handshake (see {@linkcode HandshakeOptions}). */
  static create(
    role: Role,
    psk: Uint8Array,
    prologue: Uint8Array,
    options: HandshakeOptions = {},
  ): MaybePromise<NNpsk0Handshake> {
    return drive(NNpsk0Handshake.#create(role, psk, prologue, options));
  }

  static *#create(
    role: Role,
    psk: Uint8Array,
    prologue: Uint8Array,
    options: HandshakeOptions,
  ): Steps<NNpsk0Handshake> {
    if (psk.byteLength !== KEY_SIZE) throw new RangeError(`the psk must be ${KEY_SIZE} bytes`);
    const provider = options.provider ?? webcrypto;
    // The prologue and the psk token are the same for every handshake under
    // one key: their (ck, h) is computed once and reused, which halves the
    // crypto a wrong-key message 1 costs the responder.
    const prefix = yield* pskPrefix(provider, psk, prologue);
    // A responder makes its key pair only for a message 1 that decrypted:
    // garbage and wrong keys cost it no key generation.
    const e = options.ephemeral ??
      (role === "initiator" ? yield* wait(provider.generateX25519()) : null);
    const state = new SymmetricState(provider, prefix.ck.slice(), prefix.h.slice());
    return new NNpsk0Handshake(role, provider, state, e);
  }

  /**
   * The final handshake hash h (after message 2), computed on demand: nothing
   * in Cipherlink needs it (it is for channel binding and the test vector).
   */
  handshakeHash(): MaybePromise<Uint8Array> {
    return drive(this.#state.finalHash());
  }

  /** Initiator: message 1 = e.pub || ENCRYPT(payload). */
  writeMessage1(payload: Uint8Array = EMPTY): MaybePromise<Uint8Array> {
    return this.#run("initiator", 0, this.#writeMessage1(payload));
  }

  /** Responder: reads message 1, returns its payload. */
  readMessage1(message: Uint8Array): MaybePromise<Uint8Array> {
    return this.#run("responder", 0, this.#readMessage1(message));
  }

  /** Responder: message 2 = e.pub || ENCRYPT(payload). */
  writeMessage2(payload: Uint8Array = EMPTY): MaybePromise<Uint8Array> {
    return this.#run("responder", 1, this.#writeMessage2(payload));
  }

  /** Initiator: reads message 2, returns its payload. */
  readMessage2(message: Uint8Array): MaybePromise<Uint8Array> {
    return this.#run("initiator", 1, this.#readMessage2(message));
  }

  /**
   * After both messages: [initiator->responder, responder->initiator]. The
   * handshake's secrets (chaining key, ephemeral private key) are released.
   */
  split(): MaybePromise<[CipherState, CipherState]> {
    if (this.#step !== 2) {
      throw new Error("split() before the handshake finished");
    }
    this.#e?.dispose();
    this.#e = null;
    return drive(this.#state.split());
  }

  /**
   * Releases what the handshake holds (ephemeral private key, chaining key,
   * the handshake's AES key): at once, so a flood of failed handshakes holds
   * no native memory until a garbage collection. Idempotent; after split()
   * nothing is left to release. `using hs = …` calls it on every exit.
   */
  dispose(): void {
    this.#e?.dispose();
    this.#e = null;
    this.#state.dispose();
  }

  /** {@linkcode NNpsk0Handshake.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  *#writeMessage1(payload: Uint8Array): Steps<Uint8Array> {
    const s = this.#state;
    const e = yield* this.#ephemeral();
    yield* s.mixEphemeral(e.publicKey);
    return concat([e.publicKey, yield* s.encryptAndHash(payload)]);
  }

  *#readMessage1(message: Uint8Array): Steps<Uint8Array> {
    const s = this.#state;
    checkLength(message);
    const re = message.slice(0, DH_LEN);
    this.#re = re;
    yield* s.mixEphemeral(re);
    return yield* s.decryptAndHash(message.subarray(DH_LEN));
  }

  *#writeMessage2(payload: Uint8Array): Steps<Uint8Array> {
    const s = this.#state;
    const e = yield* this.#ephemeral();
    // ee does not depend on the e token's hashing: the two run at once.
    const [shared] = yield* both(
      drive(dh(this.provider, e, this.#re!)),
      drive(s.mixEphemeral(e.publicKey)),
    );
    try {
      yield* s.mixKey(shared);
    } finally {
      shared.fill(0);
    }
    return concat([e.publicKey, yield* s.encryptAndHash(payload, true)]);
  }

  *#readMessage2(message: Uint8Array): Steps<Uint8Array> {
    const s = this.#state;
    checkLength(message);
    const re = message.slice(0, DH_LEN);
    const e = yield* this.#ephemeral();
    const [shared] = yield* both(drive(dh(this.provider, e, re)), drive(s.mixEphemeral(re)));
    try {
      yield* s.mixKey(shared);
    } finally {
      shared.fill(0);
    }
    return yield* s.decryptAndHash(message.subarray(DH_LEN), true);
  }

  *#ephemeral(): Steps<EphemeralKey> {
    return this.#e ??= yield* wait(this.provider.generateX25519());
  }

  /** Checks the step synchronously, then runs it. */
  #run<T>(role: Role, step: number, steps: Steps<T>): MaybePromise<T> {
    if (this.role !== role || this.#step !== step) {
      throw new Error(`handshake step out of order for the ${this.role}`);
    }
    this.#step++;
    return drive(steps);
  }
}

function checkLength(message: Uint8Array): void {
  if (message.byteLength < DH_LEN + AEAD_TAG_SIZE) {
    throw new AuthenticationError("handshake message too short");
  }
}
