/**
 * `--allow` rules (lib/tunnel/allow.ts): parsing each syntax of the CLI contract
 * (`HOST:PORT`, `HOST:*`, `*:PORT`, `CIDR:PORT`, `CIDR:*`, bracketed IPv6),
 * refusing malformed rules, and deciding targets: name wildcards, IPv4/IPv6
 * networks, ports, and names admitted by a network rule only through what
 * the server's own resolver answers (a fake one here: no DNS in tests).
 * @module
 */

import assert from "node:assert/strict";
import { AllowList, parseRule, type Resolver } from "../lib/tunnel/allow.ts";
import { ErrorCode, UsageError } from "../lib/base/errors.ts";

/** The addresses a decision lets the server dial, or null when it refuses. */
async function admitted(allow: AllowList, host: string, port: number): Promise<string[] | null> {
  const decision = await allow.decide(host, port);
  return decision.allowed ? decision.addresses : null;
}

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

Deno.test("allow: a wildcard matches within one label, anchored, case-insensitive; names resolve once", async () => {
  const resolver = fakeResolver({
    "db.internal": ["10.0.0.5"],
    "web-1.example.com": ["192.0.2.80"],
  });
  const allow = AllowList.parse(["*.internal:5432", "web-*.example.com:80"], resolver);
  assert.deepEqual(await admitted(allow, "db.internal", 5432), ["10.0.0.5"]);
  assert.deepEqual(
    await admitted(allow, "DB.Internal", 5432),
    ["10.0.0.5"],
    "names are lower-cased",
  );
  assert.deepEqual(await admitted(allow, "web-1.example.com", 80), ["192.0.2.80"]);
  assert.equal(await admitted(allow, "a.b.internal", 5432), null, "* stays within one label");
  assert.equal(await admitted(allow, "internal", 5432), null, "the dot is literal");
  assert.equal(await admitted(allow, "dbxinternal", 5432), null, "the dot is not a regex dot");
  assert.equal(await admitted(allow, "db.internal.evil.test", 5432), null, "anchored at the end");
  assert.equal(await admitted(allow, "evilweb-1.example.com", 80), null, "anchored at the start");
  assert.deepEqual(resolver.asked, ["db.internal", "db.internal", "web-1.example.com"]);
});

Deno.test("allow: a rule admits only its port, * admits every port", async () => {
  const allow = AllowList.parse(
    ["db.internal:5432", "cache.internal:*", "*:443"],
    fakeResolver({
      "db.internal": ["10.0.0.5"],
      "cache.internal": ["10.0.0.6"],
      "anything.example": ["192.0.2.1"],
    }),
  );
  assert.deepEqual(await admitted(allow, "db.internal", 5432), ["10.0.0.5"]);
  assert.equal(await admitted(allow, "db.internal", 5433), null);
  assert.deepEqual(await admitted(allow, "cache.internal", 1), ["10.0.0.6"]);
  assert.deepEqual(await admitted(allow, "cache.internal", 65535), ["10.0.0.6"]);
  assert.deepEqual(await admitted(allow, "anything.example", 443), ["192.0.2.1"]);
  assert.equal(await admitted(allow, "anything.example", 80), null);
  assert.deepEqual(
    await admitted(allow, "192.0.2.7", 443),
    ["192.0.2.7"],
    "*:443 admits addresses",
  );
});

Deno.test("allow: an empty list refuses everything with ERROR 2", async () => {
  const allow = AllowList.parse([], fakeResolver({ "db.internal": ["10.0.0.1"] }));
  assert.equal(await admitted(allow, "db.internal", 5432), null);
  const decision = await allow.decide("127.0.0.1", 80);
  assert.ok(!decision.allowed && decision.code === ErrorCode.refused);
});

Deno.test("allow: IPv4 networks admit addresses inside them, at any prefix length", async () => {
  const allow = AllowList.parse(["10.0.0.0/8:*", "192.168.0.0/20:443", "127.0.0.1:7"]);
  assert.deepEqual(await admitted(allow, "10.255.3.4", 22), ["10.255.3.4"]);
  assert.equal(await admitted(allow, "11.0.0.1", 22), null);
  assert.deepEqual(await admitted(allow, "192.168.15.255", 443), ["192.168.15.255"], "inside /20");
  assert.equal(await admitted(allow, "192.168.16.0", 443), null, "just past /20");
  assert.equal(await admitted(allow, "192.168.1.1", 80), null, "wrong port");
  assert.deepEqual(await admitted(allow, "127.0.0.1", 7), ["127.0.0.1"]);
  assert.equal(await admitted(allow, "127.0.0.2", 7), null, "a bare address is a /32");
  assert.deepEqual(
    await admitted(allow, "::ffff:10.0.0.1", 22),
    ["10.0.0.1"],
    "an IPv4-mapped IPv6 address is the IPv4 address it carries",
  );
});

Deno.test("allow: 0.0.0.0/0 admits every IPv4 address but not the unspecified one, and no IPv6", async () => {
  const allow = AllowList.parse(["0.0.0.0/0:80"]);
  assert.deepEqual(await admitted(allow, "203.0.113.9", 80), ["203.0.113.9"]);
  assert.equal(await admitted(allow, "::1", 80), null);
  assert.equal(await admitted(allow, "0.0.0.0", 80), null);
});

Deno.test("allow: IPv6 networks admit addresses in any textual form, dialled in one canonical form", async () => {
  const allow = AllowList.parse(["[fd00::/8]:443", "[2001:db8::/33]:*", "[::1]:8080"]);
  assert.deepEqual(await admitted(allow, "fd12:3456::1", 443), ["fd12:3456::1"]);
  assert.deepEqual(await admitted(allow, "fd00:0:0:0:0:0:0:1", 443), ["fd00::1"]);
  assert.equal(await admitted(allow, "fe80::1", 443), null);
  assert.equal(await admitted(allow, "fd00::1", 80), null, "wrong port");
  assert.ok(await admitted(allow, "2001:db8:7fff::1", 1), "inside /33");
  assert.equal(await admitted(allow, "2001:db8:8000::1", 1), null, "just past /33");
  assert.deepEqual(await admitted(allow, "::1", 8080), ["::1"]);
  assert.equal(await admitted(allow, "::2", 8080), null);
  assert.equal(await admitted(allow, "10.0.0.1", 443), null, "IPv4 is not matched by IPv6");
});

Deno.test("regression: [::/0] admits neither IPv4-mapped addresses nor the unspecified address", async () => {
  const allow = AllowList.parse(["[::/0]:*"]);
  for (const host of ["::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:7f00:1", "::"]) {
    assert.equal(await admitted(allow, host, 22), null, host);
  }
  assert.ok(await admitted(allow, "2001:db8::1", 22));
  const v4 = AllowList.parse(["127.0.0.0/8:*", "[::ffff:10.0.0.0/104]:*"]);
  assert.deepEqual(await admitted(v4, "::ffff:127.0.0.1", 22), ["127.0.0.1"]);
  assert.deepEqual(
    await admitted(v4, "10.1.2.3", 22),
    ["10.1.2.3"],
    "a mapped rule is an IPv4 rule",
  );
});

Deno.test("regression: non-canonical IPv4 spellings are refused with ERROR 2 saying why, never read as decimal", async () => {
  const resolver = fakeResolver({});
  const allow = AllowList.parse(["127.0.0.10/32:*", "10.10.0.0/16:*", "*:22"], resolver);
  for (
    const host of [
      "127.0.0.010",
      "10.010.0.1",
      "0x7f.0.0.1",
      "127.1",
      "2130706433",
      "017700000001",
      "127.0.0.1.",
      "1.2.3.4.5",
      "127。0。0。1",
      "bad\nname",
    ]
  ) {
    const decision = await allow.decide(host, 22);
    assert.ok(!decision.allowed, host);
    assert.equal(decision.code, ErrorCode.refused, host);
    assert.match(decision.reason, /not a canonical IPv4 address|not a host name/, host);
  }
  assert.deepEqual(resolver.asked, [], "none of them reached a resolver");
  assert.deepEqual(await admitted(allow, "127.0.0.10", 1), ["127.0.0.10"]);
});

Deno.test("regression: a wildcard made of digits, dots and * is refused and points to CIDR", () => {
  for (const text of ["192.168.1.*:22", "10.*:*", "*.*.*.*:80", "1*:22"]) {
    assert.throws(() => parseRule(text), (err: unknown) => {
      assert.ok(err instanceof UsageError && /CIDR/.test(err.message), String(err));
      return true;
    });
  }
  assert.ok(parseRule("*:22"));
  assert.ok(parseRule("host-*.example:22"));
});

Deno.test("regression: 192.168.1.0/24 does not admit 192.168.1.attacker.example unless it resolves inside", async () => {
  const resolver = fakeResolver({ "192.168.1.attacker.example": ["203.0.113.66"] });
  const allow = AllowList.parse(["192.168.1.0/24:22"], resolver);
  assert.equal(await admitted(allow, "192.168.1.attacker.example", 22), null);
  const pattern = AllowList.parse(["db-*.example:22"], resolver);
  assert.equal(await admitted(pattern, "db-1.attacker.example", 22), null);
});

Deno.test("allow: an address is not admitted by a name pattern, and is never resolved", async () => {
  const resolver = fakeResolver({});
  const allow = AllowList.parse(["*.internal:*", "f*:*"], resolver);
  assert.equal(await admitted(allow, "10.0.0.1", 22), null);
  assert.equal(await admitted(allow, "fd00::1", 22), null, "a pattern never matches IPv6 text");
  assert.deepEqual(resolver.asked, []);
});

Deno.test("allow: a network-only rule admits a name only through the resolver, with the addresses inside", async () => {
  const resolver = fakeResolver({
    "db.corp": ["192.0.2.1", "10.1.2.3", "10.9.9.9"],
    "nip.test": ["198.51.100.5"],
    "v6.corp": ["2001:db8:0:0:0:0:0:5", "fd00:0:0:0:0:0:0:5"],
  });
  const allow = AllowList.parse(["10.0.0.0/8:22", "[fd00::/8]:22"], resolver);
  assert.deepEqual(await admitted(allow, "db.corp", 22), ["10.1.2.3", "10.9.9.9"]);
  assert.deepEqual(await admitted(allow, "v6.corp", 22), ["fd00:0:0:0:0:0:0:5"]);
  assert.equal(await admitted(allow, "nip.test", 22), null, "resolving outside the network");
  assert.equal(await admitted(allow, "unknown.corp", 22), null, "a name that does not resolve");
  assert.deepEqual(resolver.asked, ["db.corp", "v6.corp", "nip.test", "unknown.corp"]);
});

Deno.test("allow: the resolver is not asked when the port rules out every rule", async () => {
  const resolver = fakeResolver({ "db.corp": ["10.1.2.3"] });
  const allow = AllowList.parse(["10.0.0.0/8:22", "*.internal:80"], resolver);
  assert.equal(await admitted(allow, "db.corp", 80), null);
  assert.deepEqual(resolver.asked, []);
});

Deno.test("allow: a lookup that fails or times out is ERROR 3 or 5, not a hang", async () => {
  const { ResolveTimeoutError } = await import("../lib/tunnel/resolve.ts");
  const slow = AllowList.parse(
    ["*.internal:*"],
    () => Promise.reject(new ResolveTimeoutError("slow")),
  );
  const late = await slow.decide("db.internal", 1);
  assert.ok(!late.allowed && late.code === ErrorCode.timedOut);
  const broken = AllowList.parse(["*.internal:*"], () => Promise.reject(new Error("broken")));
  const failed = await broken.decide("db.internal", 1);
  assert.ok(!failed.allowed && failed.code === ErrorCode.unreachable);
});
