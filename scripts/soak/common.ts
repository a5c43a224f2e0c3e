/**
 * What every soak suite shares: the result row, the log book that keeps every
 * process's output for the key-hygiene check, seeded randomness, latency
 * figures, deadlines and bounded concurrency.
 * @module
 */

import { concat } from "../../lib/base/bytes.ts";
import prand, { type RandomGenerator } from "npm:pure-rand@6.1.0";

/** The deadline on a wait (support/process.ts), for the soak's modules. */
export { within } from "../../support/process.ts";

/** One line of the soak table. */
export interface Row {
  suite: string;
  /** What was tried, in a few words. */
  tried: string;
  /** How many inputs, connections, sessions or transfers. */
  count: number;
  /** How many of them broke a property (0 to pass). */
  failed: number;
  /** What failed, one short line each (at most a few are kept). */
  failures: string[];
  /** The measurements, in a few words. */
  figures: string;
  /** Set when the machine forbids the suite; the row then neither passes nor fails. */
  skipped?: string;
  /** Machine-readable figures for bench/results/soak.json and the tests. */
  data: Record<string, number | string | boolean | null>;
}

/** Builds rows and keeps failure lists short. */
export class RowBuilder {
  #row: Row;
  constructor(suite: string, tried: string) {
    this.#row = { suite, tried, count: 0, failed: 0, failures: [], figures: "", data: {} };
  }
  /** Counts `n` attempts. */
  tried(n = 1): void {
    this.#row.count += n;
  }
  /** Counts one failed attempt with its reason. */
  fail(reason: string): void {
    this.#row.failed++;
    // SOAK_KEEP_FAILURES=N keeps more reasons, for debugging a failing suite.
    const keep = Number(Deno.env.get("SOAK_KEEP_FAILURES") ?? 5);
    if (this.#row.failures.length < keep) this.#row.failures.push(reason);
    else if (this.#row.failures.length === keep) this.#row.failures.push("…");
  }
  /** Records a property that must hold; a false one counts as a failure. */
  check(ok: boolean, reason: string): boolean {
    if (!ok) this.fail(reason);
    return ok;
  }
  set(key: string, value: number | string | boolean | null): void {
    this.#row.data[key] = value;
  }
  figures(text: string): void {
    this.#row.figures = text;
  }
  skip(note: string): void {
    this.#row.skipped = note;
  }
  get count(): number {
    return this.#row.count;
  }
  done(): Row {
    return this.#row;
  }
}

/**
 * Every byte any process (or in-process logger) of the soak wrote, by source,
 * so the key-hygiene suite can grep all of it for the key.
 */
export class LogBook {
  readonly sources = new Map<string, Uint8Array[]>();
  /** The keys in use: each log is searched for all of them. */
  readonly keys: Uint8Array[] = [];

  append(source: string, bytes: Uint8Array): void {
    let list = this.sources.get(source);
    if (!list) this.sources.set(source, list = []);
    list.push(bytes.slice());
  }

  appendText(source: string, text: string): void {
    this.append(source, new TextEncoder().encode(text + "\n"));
  }

  /** All output of one source. */
  bytesOf(source: string): Uint8Array {
    return concat(this.sources.get(source) ?? []);
  }

  get totalBytes(): number {
    let total = 0;
    for (const list of this.sources.values()) for (const b of list) total += b.byteLength;
    return total;
  }
}

/**
 * The soak's one seeded generator outside fast-check's own arbitraries:
 * fast-check's pure-rand (xoroshiro128+), so every run with one --seed is
 * the same.
 */
export class Rng {
  readonly #generator: RandomGenerator;
  constructor(seed: number) {
    this.#generator = prand.xoroshiro128plus(seed);
  }
  /** A float in [0, 1). */
  next(): number {
    return this.int(0, 0xffffffff) / 4294967296;
  }
  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return prand.unsafeUniformIntDistribution(min, max, this.#generator);
  }
  /** `n` bytes, four from each 32-bit draw. */
  bytes(n: number): Uint8Array {
    const words = new Uint32Array(Math.ceil(n / 4));
    for (let i = 0; i < words.length; i++) words[i] = this.#generator.unsafeNext();
    return new Uint8Array(words.buffer, 0, n);
  }
}

/** `size` random bytes from the CSPRNG (fast; for payloads whose hash is checked). */
export function randomBytes(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let at = 0; at < size; at += 65536) {
    crypto.getRandomValues(out.subarray(at, Math.min(size, at + 65536)));
  }
  return out;
}

/** Latency figures in milliseconds. */
export interface Latency {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

export function latency(samples: number[]): Latency {
  if (samples.length === 0) return { n: 0, p50: NaN, p99: NaN, max: NaN };
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { n: sorted.length, p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] };
}

export function ms(value: number): string {
  if (!Number.isFinite(value)) return "–";
  return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
}

export function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** Resolves after `delayMs`: for pacing an attack or a probe, never for waiting on a result. */
export function pause(delayMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, delayMs));
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` at once. */
export async function pool(
  count: number,
  concurrency: number,
  task: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
}

/** The class name of a thrown value, for outcome histograms. */
export function errorName(err: unknown): string {
  if (err instanceof Error) return err.name || err.constructor.name;
  return typeof err;
}

/** Adds one to `histogram[key]`. */
export function bump(histogram: Record<string, number>, key: string, by = 1): void {
  histogram[key] = (histogram[key] ?? 0) + by;
}

/** `{a: 1, b: 2}` as "a 1, b 2", largest first. */
export function histogramText(histogram: Record<string, number>): string {
  return Object.entries(histogram).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`)
    .join(", ");
}

export const MiB = 1024 * 1024;
