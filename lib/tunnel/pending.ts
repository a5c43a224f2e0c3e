/**
 * The server's budget for connections that have not yet proved they hold
 * the key (no verified message 1): separate from `--max-conns`, so that
 * unauthenticated sockets can never take a key holder's place.
 *
 * When a source address already holds its share, its own oldest pending
 * connection is dropped to make room; when the whole budget is full, the
 * oldest pending connection of the source holding the most is dropped. A new
 * connection is never the one refused: a legitimate client only has to send
 * its message 1 before its source's next `maxPerSource` connections arrive.
 *
 * @example
 * ```ts
 * import { PendingBudget } from "./pending.ts";
 * const budget = new PendingBudget(4096, 1024);
 * budget.admit(1, "192.0.2.1", () => console.log("dropped 1"));
 * budget.remove(1); // message 1 verified
 * ```
 * @module
 */

/** Default of `--max-pending`: connections in the handshake before message 1 has arrived. */
export const DEFAULT_MAX_PENDING = 4096;
/**
 * Default of `--max-pending-per-source`: the share one source address may
 * hold. By default only the full budget limits it: once full, the source
 * holding the most loses its oldest, which is what keeps the other sources'
 * share fair. A lower cap makes one source churn its own connections sooner.
 */
export const DEFAULT_MAX_PENDING_PER_SOURCE = DEFAULT_MAX_PENDING;
/** Default of `--hello-timeout`: how long a new connection has to deliver message 1. */
export const DEFAULT_HELLO_TIMEOUT_MS = 1000;

interface Entry {
  source: string;
  evict: () => void;
}

/** Pending connections by age and by source. */
export class PendingBudget {
  readonly max: number;
  readonly maxPerSource: number;
  /** Insertion order is age order, for both maps. */
  #all = new Map<number, Entry>();
  #bySource = new Map<string, Set<number>>();
  #evicted = 0;

  constructor(max = DEFAULT_MAX_PENDING, maxPerSource = DEFAULT_MAX_PENDING_PER_SOURCE) {
    if (!(max >= 1 && maxPerSource >= 1)) throw new RangeError("pending budgets must be >= 1");
    this.max = max;
    this.maxPerSource = Math.min(maxPerSource, max);
  }

  /** Connections pending now. */
  get size(): number {
    return this.#all.size;
  }

  /** Connections dropped to make room so far. */
  get evicted(): number {
    return this.#evicted;
  }

  /** How many connections `source` has pending. */
  heldBy(source: string): number {
    return this.#bySource.get(source)?.size ?? 0;
  }

  /**
   * Adds connection `id` from `source`; first drops (calls `evict` of) the
   * connection that must make room, if any.
   */
  admit(id: number, source: string, evict: () => void): void {
    const own = this.#bySource.get(source);
    if (own && own.size >= this.maxPerSource) {
      this.#evict(own.values().next().value!);
    } else if (this.#all.size >= this.max) {
      let greediest: Set<number> | null = null;
      for (const ids of this.#bySource.values()) {
        if (!greediest || ids.size > greediest.size) greediest = ids;
      }
      this.#evict(greediest!.values().next().value!);
    }
    this.#all.set(id, { source, evict });
    const ids = this.#bySource.get(source) ?? new Set<number>();
    ids.add(id);
    this.#bySource.set(source, ids);
  }

  /** Forgets `id` (verified, failed or closed); true if it was pending. */
  remove(id: number): boolean {
    const entry = this.#all.get(id);
    if (!entry) return false;
    this.#all.delete(id);
    const ids = this.#bySource.get(entry.source)!;
    ids.delete(id);
    if (ids.size === 0) this.#bySource.delete(entry.source);
    return true;
  }

  /** Drops the oldest pending connection (to free a file descriptor); false if none. */
  evictOldest(): boolean {
    const oldest = this.#all.keys().next();
    if (oldest.done) return false;
    this.#evict(oldest.value);
    return true;
  }

  #evict(id: number): void {
    const entry = this.#all.get(id)!;
    this.remove(id);
    this.#evicted++;
    entry.evict();
  }
}
