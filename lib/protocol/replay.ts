/**
 * The server's replay policy for handshake message 1: an ephemeral key seen
 * before is refused before any cryptography is spent on it.
 *
 * @example
 * ```ts
 * import { ReplayGuard } from "./replay.ts";
 * const guard = new ReplayGuard(1024);
 * const ephemeral = crypto.getRandomValues(new Uint8Array(32));
 * guard.reserve(ephemeral); // true: new
 * guard.reserve(ephemeral); // false: a replay
 * ```
 * @module
 */

/**
 * Remembers the ephemeral public keys of the last `capacity` message 1s a
 * responder accepted. A client makes a fresh ephemeral key per handshake, so
 * a key seen twice is a recorded message 1 played again: refusing it up front
 * keeps a replay flood from costing a key exchange each.
 *
 * A key is reserved synchronously, before the first await of the handshake,
 * so copies of one message 1 arriving together cannot all pass the check
 * while the first is still being verified; one that fails verification
 * releases its reservation.
 */
export class ReplayGuard {
  #seen = new Set<string>();
  #capacity: number;
  constructor(capacity = 65536) {
    this.#capacity = capacity;
  }
  /** Whether this ephemeral key was reserved before. */
  has(ephemeral: Uint8Array): boolean {
    return this.#seen.has(keyOf(ephemeral));
  }
  /** Reserves the key; false when it was already reserved (a replay). */
  reserve(ephemeral: Uint8Array): boolean {
    const key = keyOf(ephemeral);
    if (this.#seen.has(key)) return false;
    if (this.#seen.size >= this.#capacity) {
      this.#seen.delete(this.#seen.values().next().value!);
    }
    this.#seen.add(key);
    return true;
  }
  /** Forgets a reservation whose message 1 did not verify. */
  release(ephemeral: Uint8Array): void {
    this.#seen.delete(keyOf(ephemeral));
  }
  /** Records the key (as {@linkcode reserve}, ignoring whether it was new). */
  add(ephemeral: Uint8Array): void {
    this.reserve(ephemeral);
  }
}

function keyOf(ephemeral: Uint8Array): string {
  return String.fromCharCode(...ephemeral);
}
