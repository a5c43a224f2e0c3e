/**
 * The server's resolver (lib/tunnel/resolve.ts) over an injected lookup: a
 * lookup that never answers ends in ResolveTimeoutError at the deadline
 * (the production 5 s one included), and answers in time are canonicalised.
 * @module
 */

import assert from "node:assert/strict";
import { within } from "../support/process.ts";
import {
  boundedResolver,
  type Lookup,
  RESOLVE_TIMEOUT_MS,
  ResolveTimeoutError,
  systemResolver,
} from "../lib/tunnel/resolve.ts";

/** A lookup that never answers (getaddrinfo stuck on a dead DNS server), recording names. */
function stuckLookup(): Lookup & { asked: string[] } {
  const asked: string[] = [];
  const lookup = (name: string) => {
    asked.push(name);
    return new Promise<string[]>(() => {});
  };
  return Object.assign(lookup, { asked });
}

/** What `promise` settles to, or a failure naming `what` after `ms`: a bound, not a wait. */
function settledWithin<T>(
  ms: number,
  what: string,
  promise: Promise<T>,
): Promise<{ value?: T; error?: unknown }> {
  return within(promise.then((value) => ({ value }), (error) => ({ error })), ms, what);
}

Deno.test("resolve: a lookup that never answers fails with ResolveTimeoutError at the deadline", async () => {
  const lookup = stuckLookup();
  const started = performance.now();
  const { error } = await settledWithin(
    5_000,
    "a 100 ms resolve deadline",
    boundedResolver(lookup, 100)("stuck.example"),
  );
  const elapsed = performance.now() - started;
  assert.ok(error instanceof ResolveTimeoutError, `ResolveTimeoutError, got ${error}`);
  assert.match(error.message, /resolving stuck\.example took over 100 ms/);
  assert.ok(elapsed >= 95, `not before the deadline (${elapsed.toFixed(0)} ms)`);
  assert.deepEqual(lookup.asked, ["stuck.example"]);
});

Deno.test("resolve: the default deadline is RESOLVE_TIMEOUT_MS (5 s)", async () => {
  assert.equal(RESOLVE_TIMEOUT_MS, 5_000);
  const { error } = await settledWithin(
    RESOLVE_TIMEOUT_MS + 5_000,
    "the default resolve deadline",
    boundedResolver(stuckLookup())("stuck.example"),
  );
  assert.ok(error instanceof ResolveTimeoutError, `ResolveTimeoutError, got ${error}`);
  assert.match(error.message, new RegExp(`took over ${RESOLVE_TIMEOUT_MS} ms`));
});

Deno.test("resolve: answers in time are canonical, without duplicates or the unspecified address", async () => {
  const resolve = boundedResolver(() =>
    Promise.resolve(["::ffff:192.0.2.1", "192.0.2.1", "0.0.0.0", "2001:DB8::1", "not-an-ip", "::"])
  );
  assert.deepEqual(await resolve("mixed.example"), ["192.0.2.1", "2001:db8::1"]);
  const failing = boundedResolver(() => Promise.reject(new Error("ENOTFOUND")));
  assert.deepEqual(await failing("missing.example"), []);
});

Deno.test("resolve: the system resolver answers localhost from /etc/hosts in time", async () => {
  const { value, error } = await settledWithin(
    RESOLVE_TIMEOUT_MS + 1_000,
    "resolving localhost",
    systemResolver("localhost"),
  );
  assert.equal(error, undefined, `no failure, got ${error}`);
  assert.ok(value?.includes("127.0.0.1") || value?.includes("::1"), `loopback: ${value}`);
});
