/**
 * `--allow` rules (lib/allow.ts): parsing each syntax of the CLI contract
 * (`HOST:PORT`, `HOST:*`, `*:PORT`, `CIDR:PORT`, `CIDR:*`, bracketed IPv6),
 * refusing malformed rules, and deciding targets: name wildcards, IPv4/IPv6
 * networks, ports, and names admitted by a network rule only through what
 * the server's own resolver answers (a fake one here: no DNS in tests).
 * @module
 */

import assert from "node:assert/strict";
import { AllowList, parseRule, type Resolver } from "../lib/allow.ts";
import { UsageError } from "../lib/errors.ts";

/** A resolver that answers from a table and records every name it was asked. */
function fakeResolver(table: Record<string, string[]>): Resolver & { asked: string[] } {
  const asked: string[] = [];
  const resolve = (name: string) => {
    asked.push(name);
    return Promise.resolve(table[name] ?? []);
  };
  return Object.assign(resolve, { asked });
}

Deno.test("allow: HOST:PORT is a name pattern bound to one port", () => {
  const rule = parseRule("db.internal:5432");
  assert.equal(rule.port, 5432);
  assert.equal(rule.network, null);
  assert.ok(rule.pattern?.test("db.internal"));
  assert.equal(rule.text, "db.internal:5432");
});

Deno.test("allow: HOST:* and *:PORT parse to any-port and any-host rules", () => {
  const anyPort = parseRule("db.internal:*");
  assert.equal(anyPort.port, "*");
  assert.ok(anyPort.pattern?.test("db.internal"));
  const anyHost = parseRule("*:443");
  assert.equal(anyHost.port, 443);
  assert.ok(anyHost.pattern?.test("anything.example"));
});

Deno.test("allow: CIDR:PORT and CIDR:* parse to networks, bare IPs to single hosts", () => {
  assert.deepEqual(parseRule("10.0.0.0/8:22").network, { bytes: [10, 0, 0, 0], prefix: 8 });
  assert.equal(parseRule("10.0.0.0/8:22").port, 22);
  assert.equal(parseRule("192.168.0.0/16:*").port, "*");
  assert.deepEqual(parseRule("127.0.0.1:7").network, { bytes: [127, 0, 0, 1], prefix: 32 });
  assert.equal(parseRule("127.0.0.1:7").pattern, null);
});

Deno.test("allow: bracketed IPv6 addresses and networks parse", () => {
  const network = parseRule("[fd00::/8]:*");
  assert.equal(network.port, "*");
  assert.equal(network.network?.prefix, 8);
  assert.deepEqual(network.network?.bytes, [0xfd, ...new Array(15).fill(0)]);
  const single = parseRule("[::1]:8080");
  assert.equal(single.port, 8080);
  assert.equal(single.network?.prefix, 128);
});

Deno.test("allow: malformed rules are a UsageError quoting the rule", () => {
  const bad = [
    "",
    "db.internal", // no port
    "db.internal:",
    ":80",
    "db.internal:0",
    "db.internal:65536",
    "db.internal:http",
    "db internal:80",
    "db$.internal:80",
    "10.0.0.0/33:80",
    "10.0.0.0/8/8:80",
    "10.0.0.0/:80",
    "10.0.0.0/x:80",
    "[fd00::/129]:*",
    "[::1:80",
    "[not-an-ip]/8:*",
    "example.com/8:*",
  ];
  for (const text of bad) {
    assert.throws(() => parseRule(text), (err: unknown) => {
      assert.ok(err instanceof UsageError, JSON.stringify(text));
      assert.ok(err.message.includes(`'${text}'`), err.message);
      return true;
    });
  }
  assert.throws(() => AllowList.parse(["db.internal:5432", "bad rule:1"]), UsageError);
});

Deno.test("allow: a wildcard name matches any run of characters, anchored, case-insensitive", async () => {
  const resolver = fakeResolver({});
  const allow = AllowList.parse(["*.internal:5432", "web-*.example.com:80"], resolver);
  assert.equal(await allow.decide("db.internal", 5432), "db.internal");
  assert.equal(await allow.decide("a.b.internal", 5432), "a.b.internal");
  assert.equal(await allow.decide("DB.Internal", 5432), "DB.Internal");
  assert.equal(await allow.decide("web-1.example.com", 80), "web-1.example.com");
  assert.equal(await allow.decide("internal", 5432), null, "the dot is literal");
  assert.equal(await allow.decide("dbxinternal", 5432), null, "the dot is not a regex dot");
  assert.equal(await allow.decide("db.internal.evil.test", 5432), null, "anchored at the end");
  assert.equal(await allow.decide("evilweb-1.example.com", 80), null, "anchored at the start");
  assert.deepEqual(resolver.asked, [], "name rules never need the resolver");
});

Deno.test("allow: a rule admits only its port, * admits every port", async () => {
  const allow = AllowList.parse(
    ["db.internal:5432", "cache.internal:*", "*:443"],
    fakeResolver({}),
  );
  assert.equal(await allow.decide("db.internal", 5432), "db.internal");
  assert.equal(await allow.decide("db.internal", 5433), null);
  assert.equal(await allow.decide("cache.internal", 1), "cache.internal");
  assert.equal(await allow.decide("cache.internal", 65535), "cache.internal");
  assert.equal(await allow.decide("anything.example", 443), "anything.example");
  assert.equal(await allow.decide("anything.example", 80), null);
  assert.equal(await allow.decide("192.0.2.7", 443), "192.0.2.7", "*:443 admits addresses too");
});

Deno.test("allow: an empty list refuses everything", async () => {
  const allow = AllowList.parse([], fakeResolver({ "db.internal": ["10.0.0.1"] }));
  assert.equal(await allow.decide("db.internal", 5432), null);
  assert.equal(await allow.decide("127.0.0.1", 80), null);
});

Deno.test("allow: IPv4 networks admit addresses inside them, at any prefix length", async () => {
  const allow = AllowList.parse(["10.0.0.0/8:*", "192.168.0.0/20:443", "127.0.0.1:7"]);
  assert.equal(await allow.decide("10.255.3.4", 22), "10.255.3.4");
  assert.equal(await allow.decide("11.0.0.1", 22), null);
  assert.equal(await allow.decide("192.168.15.255", 443), "192.168.15.255", "inside /20");
  assert.equal(await allow.decide("192.168.16.0", 443), null, "just past /20");
  assert.equal(await allow.decide("192.168.1.1", 80), null, "wrong port");
  assert.equal(await allow.decide("127.0.0.1", 7), "127.0.0.1");
  assert.equal(await allow.decide("127.0.0.2", 7), null, "a bare address is a /32");
  assert.equal(await allow.decide("::ffff:10.0.0.1", 22), null, "IPv6 is not matched by IPv4");
});

Deno.test("allow: 0.0.0.0/0 admits every IPv4 address and no IPv6 one", async () => {
  const allow = AllowList.parse(["0.0.0.0/0:80"]);
  assert.equal(await allow.decide("203.0.113.9", 80), "203.0.113.9");
  assert.equal(await allow.decide("::1", 80), null);
});

Deno.test("allow: IPv6 networks admit addresses in any textual form", async () => {
  const allow = AllowList.parse(["[fd00::/8]:443", "[2001:db8::/33]:*", "[::1]:8080"]);
  assert.equal(await allow.decide("fd12:3456::1", 443), "fd12:3456::1");
  // The form decodeTarget produces for ATYP 4: eight uncompressed groups.
  assert.equal(await allow.decide("fd00:0:0:0:0:0:0:1", 443), "fd00:0:0:0:0:0:0:1");
  assert.equal(await allow.decide("fe80::1", 443), null);
  assert.equal(await allow.decide("fd00::1", 80), null, "wrong port");
  assert.equal(await allow.decide("2001:db8:7fff::1", 1), "2001:db8:7fff::1", "inside /33");
  assert.equal(await allow.decide("2001:db8:8000::1", 1), null, "just past /33");
  assert.equal(await allow.decide("::1", 8080), "::1");
  assert.equal(await allow.decide("::2", 8080), null);
  assert.equal(await allow.decide("10.0.0.1", 443), null, "IPv4 is not matched by IPv6");
});

Deno.test("allow: an address is not admitted by a name pattern that does not match it", async () => {
  const resolver = fakeResolver({});
  const allow = AllowList.parse(["*.internal:*"], resolver);
  assert.equal(await allow.decide("10.0.0.1", 22), null);
  assert.deepEqual(resolver.asked, [], "an address is never resolved");
});

Deno.test("allow: a network-only rule admits a name only through the resolver, returning its address", async () => {
  const resolver = fakeResolver({
    "db.corp": ["192.0.2.1", "10.1.2.3", "10.9.9.9"],
    "10.0.0.1.nip.test": ["198.51.100.5"],
    "v6.corp": ["2001:db8::5", "fd00::5"],
  });
  const allow = AllowList.parse(["10.0.0.0/8:22", "[fd00::/8]:22"], resolver);
  assert.equal(
    await allow.decide("db.corp", 22),
    "10.1.2.3",
    "the first resolved address inside the network, not the name",
  );
  assert.equal(await allow.decide("v6.corp", 22), "fd00::5");
  assert.equal(
    await allow.decide("10.0.0.1.nip.test", 22),
    null,
    "a name that looks like an address in the network, resolving outside it",
  );
  assert.equal(await allow.decide("unknown.corp", 22), null, "a name that does not resolve");
  assert.deepEqual(resolver.asked, ["db.corp", "v6.corp", "10.0.0.1.nip.test", "unknown.corp"]);
});

Deno.test("allow: the resolver is not asked when the port rules out every network rule", async () => {
  const resolver = fakeResolver({ "db.corp": ["10.1.2.3"] });
  const allow = AllowList.parse(["10.0.0.0/8:22", "*.internal:80"], resolver);
  assert.equal(await allow.decide("db.corp", 80), null);
  assert.deepEqual(resolver.asked, []);
});

Deno.test("allow: a name rule that matches wins without resolving, and returns the name", async () => {
  const resolver = fakeResolver({ "db.internal": ["192.0.2.1"] });
  const allow = AllowList.parse(["10.0.0.0/8:*", "db.internal:5432"], resolver);
  assert.equal(await allow.decide("db.internal", 5432), "db.internal");
  assert.deepEqual(resolver.asked, []);
  assert.equal(
    await allow.decide("db.internal", 22),
    null,
    "on another port only the network rule applies",
  );
  assert.deepEqual(resolver.asked, ["db.internal"]);
});
