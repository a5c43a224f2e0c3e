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

/**
 * The system resolver (getaddrinfo through `node:dns`), bounded by
 * `timeoutMs`. Answers are canonicalised (IPv4-mapped IPv6 becomes IPv4) and
 * the unspecified address is dropped, in the resolver's order.
 */
export async function systemResolver(
  name: string,
  timeoutMs = RESOLVE_TIMEOUT_MS,
): Promise<string[]> {
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
      lookup(name, { all: true, verbatim: true }).catch(() => []),
      deadline,
    ]);
    return canonicalAddresses(found.map((f) => f.address));
  } finally {
    clearTimeout(timer);
  }
}

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
  const signal = AbortSignal.timeout(timeoutMs);
  let failure: unknown = new Deno.errors.NotFound("the target has no address");
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
  throw failure;
}
