/**
 * The key an endpoint starts new handshakes with, lent to each handshake
 * for as long as it may still read the key bytes. When the key is replaced
 * (a SIGHUP key swap), {@linkcode KeySlot.replace} resolves once every loan
 * of the old key has come back: from then on nothing reads it, so its owner
 * may zero it without a handshake ever running on a zeroed key (which would
 * admit anyone who knows the all-zero key). Open sessions never need the
 * key: they hold keys derived in their handshake.
 *
 * @example
 * ```ts
 * import { KeySlot } from "./key_slot.ts";
 * const old = crypto.getRandomValues(new Uint8Array(32));
 * const keys = new KeySlot(old);
 * const handshake = keys.withKey(async (key) => key.byteLength); // reads `old`
 * const retired = keys.replace(crypto.getRandomValues(new Uint8Array(32)));
 * await handshake;
 * await retired; // no loan of `old` is out: it may be zeroed
 * old.fill(0);
 * ```
 * @module
 */

/** The current key of an endpoint and the loans of the keys it replaced. */
export class KeySlot {
  #current: Uint8Array;
  /** Loans out, per key object; a key is here only while lent. */
  #loans = new Map<Uint8Array, number>();
  /** Replaced keys, each with the resolver of its replace() promise until its loans are back. */
  #retired = new WeakMap<Uint8Array, (() => void) | null>();

  /** `key`: the key new handshakes use until {@linkcode KeySlot.replace}. */
  constructor(key: Uint8Array) {
    this.#current = key;
  }

  /** The key new handshakes use now. */
  get current(): Uint8Array {
    return this.#current;
  }

  /**
   * Lends the current key to `use` until the promise it returns settles;
   * `use` must not read the key after that (a handshake: until its Noise
   * state is made from it).
   */
  async withKey<T>(use: (key: Uint8Array) => Promise<T>): Promise<T> {
    const key = this.#current;
    this.#loans.set(key, (this.#loans.get(key) ?? 0) + 1);
    try {
      return await use(key);
    } finally {
      const left = this.#loans.get(key)! - 1;
      if (left > 0) this.#loans.set(key, left);
      else {
        this.#loans.delete(key);
        this.#retired.get(key)?.();
        if (this.#retired.has(key)) this.#retired.set(key, null);
      }
    }
  }

  /**
   * Makes `next` the key of new handshakes; resolves once no handshake reads
   * the key it replaced (at once when none had it). A replaced key may be
   * zeroed then, so it can never be made current again: that throws.
   */
  replace(next: Uint8Array): Promise<void> {
    const old = this.#current;
    if (next === old || this.#retired.has(next)) {
      throw new TypeError("a key that is in use or was replaced cannot be made current again");
    }
    this.#current = next;
    if (!this.#loans.has(old)) {
      this.#retired.set(old, null);
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#retired.set(old, resolve));
  }
}
