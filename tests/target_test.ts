/**
 * OPEN targets and host:port strings (lib/protocol/target.ts, hostport.ts, address.ts): `HOST:PORT` parsing and
 * formatting, the OPEN body codec (protocol v2, section 3: `0x00`, or
 * `0x01 ATYP ADDR PORT` with SOCKS5 encoding) and the IPv4/IPv6 parsers it
 * rests on.
 * @module
 */

import assert from "node:assert/strict";
import {
  decodeSocksAddress,
  decodeTarget,
  encodeTarget,
  SERVICE_TARGET,
  type Target,
} from "../lib/protocol/target.ts";
import { formatHostPort, parseHostPort } from "../lib/protocol/hostport.ts";
import { formatIPv6, parseIPv4, parseIPv6 } from "../lib/protocol/address.ts";
import { ProtocolError, UsageError } from "../lib/base/errors.ts";

Deno.test("target: parseHostPort reads IPv4, names and bracketed IPv6", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:8888"), { host: "127.0.0.1", port: 8888 });
  assert.deepEqual(parseHostPort("db.internal:5432"), { host: "db.internal", port: 5432 });
  assert.deepEqual(parseHostPort("localhost:1"), { host: "localhost", port: 1 });
  assert.deepEqual(parseHostPort("[::1]:8888"), { host: "::1", port: 8888 });
  assert.deepEqual(parseHostPort("[fd00::1:2]:65535"), { host: "fd00::1:2", port: 65535 });
  assert.deepEqual(parseHostPort("[::ffff:127.0.0.1]:80"), { host: "::ffff:127.0.0.1", port: 80 });
});

Deno.test("target: parseHostPort rejects malformed input with a UsageError quoting it", () => {
  const bad = [
    "",
    "host",
    "host:",
    ":80",
    "host:port",
    "host:-1",
    "host:80x",
    "host:65536",
    "host:123456",
    "a b:80",
    "::1:80", // IPv6 must be bracketed
    "[::1]", // no port
    "[::1]80",
    "[::1:80",
    "::1]:80",
    "[1::2::3]:80", // brackets around something that is not IPv6
    "[::::]:80",
    "[1.2.3.4]:80",
    "[example.com]:80",
  ];
  for (const text of bad) {
    assert.throws(() => parseHostPort(text), (err: unknown) => {
      assert.ok(err instanceof UsageError, JSON.stringify(text));
      assert.ok(err.message.includes(`'${text}'`), err.message);
      return true;
    });
  }
});

Deno.test("target: port 0 is refused unless the caller allows it (for --listen)", () => {
  assert.throws(() => parseHostPort("127.0.0.1:0"), UsageError);
  assert.throws(() => parseHostPort("[::1]:0"), UsageError);
  assert.deepEqual(parseHostPort("127.0.0.1:0", true), { host: "127.0.0.1", port: 0 });
  assert.deepEqual(parseHostPort("[::]:0", true), { host: "::", port: 0 });
  assert.throws(() => parseHostPort("127.0.0.1:65536", true), UsageError);
});

Deno.test("target: formatHostPort brackets IPv6 and round-trips through parseHostPort", () => {
  for (const text of ["127.0.0.1:8888", "db.internal:5432", "[::1]:8888", "[fd00::7]:22"]) {
    assert.equal(formatHostPort(parseHostPort(text)), text);
  }
  assert.equal(formatHostPort({ host: "fe80::1", port: 443 }), "[fe80::1]:443");
});

Deno.test("target: the service target encodes as the single byte 0x00 and back", () => {
  assert.deepEqual(encodeTarget(SERVICE_TARGET), Uint8Array.of(0));
  assert.deepEqual(decodeTarget(Uint8Array.of(0)), { kind: "service" });
});

Deno.test("target: an IPv4 target encodes as ATYP 1 and round-trips", () => {
  const body = encodeTarget({ host: "10.1.2.3", port: 443 });
  assert.deepEqual(body, Uint8Array.of(1, 1, 10, 1, 2, 3, 0x01, 0xbb));
  assert.deepEqual(decodeTarget(body), { kind: "address", host: "10.1.2.3", port: 443 });
  const viaTarget: Target = { kind: "address", host: "255.255.255.255", port: 65535 };
  assert.deepEqual(decodeTarget(encodeTarget(viaTarget)), viaTarget);
});

Deno.test("target: an IPv6 target encodes as ATYP 4 and decodes to the same address", () => {
  const body = encodeTarget({ host: "2001:db8::1", port: 22 });
  assert.deepEqual(
    body,
    Uint8Array.of(1, 4, 0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1, 0, 22),
  );
  const decoded = decodeTarget(body);
  assert.equal(decoded.kind, "address");
  if (decoded.kind !== "address") return;
  assert.equal(decoded.port, 22);
  assert.deepEqual(parseIPv6(decoded.host), parseIPv6("2001:db8::1"));
  // What logs show: the RFC 5952 form, bracketed with its port.
  assert.equal(formatHostPort(decoded), "[2001:db8::1]:22");
  // The decoded text is itself an IPv6 literal: encoding it again gives the same body.
  assert.deepEqual(encodeTarget(decoded), body);
});

Deno.test("target: a domain target encodes as ATYP 3 with its length and round-trips", () => {
  const body = encodeTarget({ host: "db.internal", port: 5432 });
  assert.deepEqual(
    body,
    Uint8Array.of(1, 3, 11, ...new TextEncoder().encode("db.internal"), 0x15, 0x38),
  );
  assert.deepEqual(decodeTarget(body), { kind: "address", host: "db.internal", port: 5432 });
  for (const host of ["bücher.example", "a", "x".repeat(255)]) {
    assert.deepEqual(decodeTarget(encodeTarget({ host, port: 1 })), {
      kind: "address",
      host,
      port: 1,
    });
  }
});

Deno.test("target: a host name must be 1 to 255 bytes", () => {
  assert.throws(() => encodeTarget({ host: "", port: 80 }), UsageError);
  assert.throws(() => encodeTarget({ host: "x".repeat(256), port: 80 }), UsageError);
  // 128 two-byte characters: 256 bytes although only 128 characters.
  assert.throws(() => encodeTarget({ host: "ü".repeat(128), port: 80 }), UsageError);
});

Deno.test("target: malformed OPEN bodies are a ProtocolError", () => {
  const name = [...new TextEncoder().encode("example")];
  const bad: [string, number[]][] = [
    ["empty", []],
    ["service with trailing bytes", [0, 0]],
    ["unknown kind", [2]],
    ["address kind without address", [1]],
    ["ATYP 2", [1, 2, 1, 2, 3, 4, 0, 80]],
    ["ATYP 5", [1, 5, 1, 2, 3, 4, 0, 80]],
    ["IPv4 cut short", [1, 1, 10, 0, 0, 1, 0]],
    ["IPv4 with a trailing byte", [1, 1, 10, 0, 0, 1, 0, 80, 9]],
    ["IPv6 cut short", [1, 4, ...new Array(16).fill(0), 0]],
    ["IPv6 with a trailing byte", [1, 4, ...new Array(16).fill(0), 0, 80, 9]],
    ["domain of length 0", [1, 3, 0, 0, 80]],
    ["domain longer than the body", [1, 3, 20, ...name, 0, 80]],
    ["domain without port", [1, 3, name.length, ...name]],
    ["domain with a trailing byte", [1, 3, name.length, ...name, 0, 80, 9]],
    ["domain that is not UTF-8", [1, 3, 2, 0xff, 0xfe, 0, 80]],
  ];
  for (const [label, bytes] of bad) {
    assert.throws(() => decodeTarget(Uint8Array.from(bytes)), ProtocolError, label);
  }
});

Deno.test("target: decodeSocksAddress reports how many bytes the address used", () => {
  assert.deepEqual(decodeSocksAddress(Uint8Array.of(1, 127, 0, 0, 1, 0x1f, 0x90, 0xaa)), {
    host: "127.0.0.1",
    port: 8080,
    length: 7,
  });
  assert.equal(decodeSocksAddress(Uint8Array.of(1, 127, 0, 0, 1, 0x1f)), null);
});

Deno.test("target: parseIPv4 takes four decimal octets of 0 to 255", () => {
  assert.deepEqual(parseIPv4("192.0.2.1"), [192, 0, 2, 1]);
  assert.deepEqual(parseIPv4("0.0.0.0"), [0, 0, 0, 0]);
  for (
    const bad of [
      "",
      "1.2.3",
      "1.2.3.4.5",
      "256.0.0.1",
      "1.2.3.-1",
      "1.2.3.a",
      "1..2.3",
      "1.2.3.4 ",
    ]
  ) {
    assert.equal(parseIPv4(bad), null, JSON.stringify(bad));
  }
});

Deno.test("target: parseIPv6 handles ::, ::1, the full form and compression anywhere", () => {
  assert.deepEqual(parseIPv6("::"), new Array(16).fill(0));
  assert.deepEqual(parseIPv6("::1"), [...new Array(15).fill(0), 1]);
  assert.deepEqual(parseIPv6("1::"), [0, 1, ...new Array(14).fill(0)]);
  const full = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0x01];
  assert.deepEqual(parseIPv6("2001:0db8:0000:0000:0000:0000:0002:0001"), full);
  assert.deepEqual(parseIPv6("2001:db8:0:0:0:0:2:1"), full);
  assert.deepEqual(parseIPv6("2001:db8::2:1"), full);
  assert.deepEqual(parseIPv6("2001:DB8::2:1"), full, "upper case");
  assert.deepEqual(parseIPv6("1:2:3:4:5:6::8"), [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 0, 0, 8]);
});

Deno.test("target: parseIPv6 takes an embedded IPv4 address at the end", () => {
  assert.deepEqual(parseIPv6("::ffff:192.0.2.128"), [
    ...new Array(10).fill(0),
    0xff,
    0xff,
    192,
    0,
    2,
    128,
  ]);
  assert.deepEqual(parseIPv6("64:ff9b::192.0.2.33"), [
    0,
    0x64,
    0xff,
    0x9b,
    ...new Array(8).fill(0),
    192,
    0,
    2,
    33,
  ]);
  assert.deepEqual(parseIPv6("1:2:3:4:5:6:10.0.0.1"), [
    0,
    1,
    0,
    2,
    0,
    3,
    0,
    4,
    0,
    5,
    0,
    6,
    10,
    0,
    0,
    1,
  ]);
  assert.deepEqual(parseIPv6("::1.2.3.4"), [...new Array(12).fill(0), 1, 2, 3, 4]);
});

Deno.test("target: parseIPv6 rejects malformed addresses", () => {
  const bad = [
    "",
    ":",
    ":::",
    "1.2.3.4", // IPv4, not IPv6
    "1:2:3:4:5:6:7", // seven groups, no ::
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7:8::", // :: must stand for at least one group
    "::1:2:3:4:5:6:7:8",
    "1::2::3",
    ":1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:",
    "12345::",
    "g::1",
    "::1.2.3",
    "::1.2.3.256",
    "::1.2.3.4:5", // embedded IPv4 not at the end
    "1.2.3.4::", // embedded IPv4 before ::
    "1:1.2.3.4::5",
    "1:2:3:4:5:6:7:1.2.3.4", // nine groups
    "[::1]",
    "::1%eth0",
  ];
  for (const text of bad) assert.equal(parseIPv6(text), null, JSON.stringify(text));
});

Deno.test("target: formatIPv6 writes the RFC 5952 form, which parseIPv6 reads back", () => {
  const cases: [string, string][] = [
    ["2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["0:0:0:0:0:0:0:0", "::"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["fe80:0:0:0:0:0:0:0", "fe80::"],
    ["0:0:0:0:0:ffff:c000:0201", "::ffff:192.0.2.1"],
    ["2001:DB8:AAAA:0:0:0:0:0", "2001:db8:aaaa::"],
  ];
  for (const [input, expected] of cases) {
    const bytes = Uint8Array.from(parseIPv6(input)!);
    assert.equal(formatIPv6(bytes), expected, input);
    assert.deepEqual(parseIPv6(formatIPv6(bytes)), [...bytes]);
  }
});
