/**
 * Name resolution and upstream connects for the server: one resolver (the
 * system's, /etc/hosts included) under a deadline, whose answers are read
 * with {@linkcode canonicalHost}; and a connect that only ever dials address
 * literals, so the server reaches exactly the addresses it checked and never
 * hands a client's spelling to another resolver.
 *
 * @example
 * ```ts
 * import { connectAddresses, systemResolver } from "./resolve.ts";
 * const addresses = await systemResolver("localhost"); // ["127.0.0.1", ...]
 * const conn = await connectAddresses(addresses, 5432);
 * ```
 * @module
 */

import { lookup } from "node:dns/promises";
import { TimeoutError } from "../base/errors.ts";
import { canonicalHost, isUnspecified } from "../protocol/address.ts";

/** Resolves a canonical host name to canonical address literals (none: it has no address). */
export type Resolver = (name: string) => Promise<string[]>;

/** How long a name lookup may take (the rule check's and the connect's: they are one lookup). */
export const RESOLVE_TIMEOUT_MS = 5_000;
/** How long the server waits for a target to accept its connection. */
export const UPSTREAM_CONNECT_TIMEOUT_MS = 10_000;

/** A lookup that did not finish within {@linkcode RESOLVE_TIMEOUT_MS}. */
export class ResolveTimeoutError extends TimeoutError {}

/** Looks a name up, every address in the resolver's order; an error means no address. */
export type Lookup = (name: string) => Promise<string[]>;

/** getaddrinfo through `node:dns` (/etc/hosts included). */
const systemLookup: Lookup = async (name) =>
  (await lookup(name, { all: true, verbatim: true })).map((found) => found.address);

/**
 * A {@linkcode Resolver} over `lookupAll`, bounded by `timeoutMs`: past it
 * the answer is {@linkcode ResolveTimeoutError}. Answers are canonicalised
 * (IPv4-mapped IPv6 becomes IPv4) and the unspecified address is dropped,
 * in the lookup's order; a failed lookup is an empty answer.
 */
export function boundedResolver(
  lookupAll: Lookup,
  timeoutMs: number = RESOLVE_TIMEOUT_MS,
): Resolver {
  return async (name) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new ResolveTimeoutError(`resolving ${name} took over ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      const found = await Promise.race([
        // getaddrinfo cannot be cancelled: a slow lookup finishes in the background, unused.
        lookupAll(name).catch(() => []),
        deadline,
      ]);
      return canonicalAddresses(found);
    } finally {
      clearTimeout(timer);
    }
  };
}

/** The system resolver (getaddrinfo) under {@linkcode RESOLVE_TIMEOUT_MS}. */
export const systemResolver: Resolver = boundedResolver(systemLookup);

/** Canonical literals of `addresses`, without duplicates, unspecified or unparsable ones. */
export function canonicalAddresses(addresses: string[]): string[] {
  const out: string[] = [];
  for (const address of addresses) {
    try {
      const host = canonicalHost(address);
      if (host.kind !== "name" && !isUnspecified(host) && !out.includes(host.text)) {
        out.push(host.text);
      }
    } catch {
      // not an address literal: ignored
    }
  }
  return out;
}

/**
 * Connects to the first of `addresses` (literals only) that accepts, in
 * order; one deadline covers all attempts. Throws the last failure.
 */
export async function connectAddresses(
  addresses: string[],
  port: number,
  timeoutMs = UPSTREAM_CONNECT_TIMEOUT_MS,
): Promise<Deno.TcpConn> {
  // Not AbortSignal.timeout: its timer (and the signal) would outlive a quick connect by
  // the whole deadline, for every session; this one is cleared at once.
  const deadline = new AbortController();
  const { signal } = deadline;
  const timer = setTimeout(
    () => deadline.abort(new DOMException("the connect timed out", "TimeoutError")),
    timeoutMs,
  );
  // Made only when needed: an error (its stack trace) per session costs the session rate.
  let failure: unknown = null;
  try {
    for (const address of addresses) {
      const host = canonicalHost(address);
      if (host.kind === "name") throw new TypeError(`not an address literal: ${address}`);
      try {
        return await Deno.connect({ hostname: host.text, port, signal });
      } catch (err) {
        failure = err;
        if (signal.aborted) break;
      }
    }
  } finally {
    clearTimeout(timer);
  }
  throw failure ?? new Deno.errors.NotFound("the target has no address");
}
