/**
 * Finding 1 of issue 9: the server must act on the address it checked. A
 * property test compares canonicalHost (lib/protocol/address.ts) with the system's own
 * readings of generated IPv4 spellings (decimal, octal and hex parts, one to
 * five of them, leading zeros, overflow, a trailing dot): Python's
 * `socket.inet_aton` (the C library's parser) for every spelling and
 * getaddrinfo through `node:dns` for each one that parser accepts. Whatever
 * the system reads as an address, canonicalHost either reads the same
 * address or refuses it; it never passes it on as a name. Then the same over
 * real TCP: a server under `--allow 127.0.0.1/32` refuses `127.0.0.01`.
 * @module
 */

import assert from "node:assert/strict";
import { lookup } from "node:dns/promises";
import fc from "npm:fast-check@3";
import { runArgv } from "./process.ts";
import { AllowList } from "../lib/tunnel/allow.ts";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { RemoteError } from "../lib/base/errors.ts";
import { TunnelServer } from "../lib/tunnel/server.ts";
import { Session } from "../lib/tunnel/session.ts";
import { Logger } from "../lib/base/log.ts";
import { canonicalHost } from "../lib/protocol/address.ts";

/** One part of an IPv4 spelling, in one of the radixes inet_aton reads. */
const part = fc.tuple(
  fc.oneof(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 2 ** 32 + 5 })),
  fc.constantFrom("dec", "dec", "oct", "hex", "HEX", "zeros"),
).map(([value, style]) => {
  switch (style) {
    case "oct":
      return `0${value.toString(8)}`;
    case "hex":
      return `0x${value.toString(16)}`;
    case "HEX":
      return `0X${value.toString(16).toUpperCase()}`;
    case "zeros":
      return `00${value}`;
    default:
      return String(value);
  }
});

const spelling = fc.oneof(
  fc.tuple(
    fc.array(part, { minLength: 1, maxLength: 5 }),
    fc.constantFrom("", "", "", "."),
  ).map(([parts, tail]) => parts.join(".") + tail),
  fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 })
    .map((bytes) => bytes.join(".")),
);

/** The C library's inet_aton reading of each spelling: dotted quad, or null. */
async function inetAton(spellings: string[]): Promise<(string | null)[]> {
  const script = `
import socket, sys, json
out = []
for line in json.load(sys.stdin):
    try:
        out.append(socket.inet_ntoa(socket.inet_aton(line)))
    except (OSError, ValueError):
        out.append(None)
print(json.dumps(out))
`;
  const { code, stdout, stderr } = await runArgv(["python3", "-c", script], {
    stdin: new TextEncoder().encode(JSON.stringify(spellings)),
  });
  assert.equal(code, 0, `python3 failed: ${stderr}`);
  return JSON.parse(stdout);
}

Deno.test("regression: canonicalHost reads every generated IPv4 spelling as the system does, or refuses it", async () => {
  const spellings = [
    "127.0.0.010",
    "10.010.0.1",
    "0x7f.1",
    "2130706433",
    "127.1",
    "127.0.0.1",
    ...fc.sample(spelling, { numRuns: 3000, seed: 9 }),
  ];
  const readings = await inetAton(spellings);
  let accepted = 0;
  let refused = 0;
  const systemReads = readings.filter((r) => r !== null).length;
  for (const [i, text] of spellings.entries()) {
    const system = readings[i];
    let ours: ReturnType<typeof canonicalHost> | null = null;
    try {
      ours = canonicalHost(text);
    } catch {
      refused++;
    }
    if (ours === null) continue;
    assert.notEqual(
      ours.kind,
      "name",
      `'${text}' was passed on as a name (system reads ${system})`,
    );
    assert.equal(ours.kind, "ipv4", text);
    assert.equal(ours.text, system, `'${text}': ours ${ours.text}, inet_aton ${system}`);
    assert.equal(ours.text, text, `'${text}' was accepted but is not canonical`);
    const [resolved] = await lookup(text, { all: true });
    assert.equal(resolved.address, ours.text, `'${text}': getaddrinfo read ${resolved.address}`);
    accepted++;
  }
  // Both outcomes must actually occur, or the generator tests nothing.
  assert.ok(
    accepted > 100 && refused > 100 && systemReads - accepted > 100,
    `accepted ${accepted}, refused ${refused}, read by the system ${systemReads}`,
  );
  // Where inet_aton reads an address, getaddrinfo reads the same one.
  for (const [i, text] of spellings.entries()) {
    if (readings[i] === null || i % 10 !== 0) continue;
    const [resolved] = await lookup(text, { all: true });
    assert.equal(resolved.address, readings[i], text);
  }
});

Deno.test("regression: over TCP, OPEN 127.0.0.01 under --allow 127.0.0.1/32 gets ERROR 2 and reaches nothing", async () => {
  const upstream = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let reached = 0;
  const accepting = (async () => {
    for await (const conn of upstream) {
      reached++;
      conn.close();
    }
  })();
  const port = (upstream.addr as Deno.NetAddr).port;
  const key = crypto.getRandomValues(new Uint8Array(32));
  const server = await TunnelServer.start({
    listen: { host: "127.0.0.1", port: 0 },
    key,
    allow: AllowList.parse([`127.0.0.1/32:${port}`]),
    logger: new Logger("error"),
  });
  try {
    for (const host of ["127.0.0.01", "0x7f.0.0.1", "127.1", "2130706433"]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
      const channel = await SecureChannel.handshake(conn, key, "initiator");
      const session = Session.open(channel, { host, port });
      await assert.rejects(session.opened, (err: unknown) => {
        assert.ok(err instanceof RemoteError && err.code === 2, String(err));
        assert.match(err.message, /not a canonical IPv4 address/);
        return true;
      });
      await session.ended;
    }
    assert.equal(reached, 0, "the target was reached through a non-canonical spelling");
  } finally {
    await server.shutdown();
    upstream.close();
    await accepting.catch(() => {});
  }
});

Deno.test("regression: HOST:PORT on the command line and in config files refuses the spellings the server refuses", async () => {
  const { parseHostPort } = await import("../lib/protocol/hostport.ts");
  const { UsageError } = await import("../lib/base/errors.ts");
  for (const text of ["127.0.0.010:22", "0x7f.1:22", "2130706433:80", "127。0。0。1:22", "a b:1"]) {
    assert.throws(() => parseHostPort(text), UsageError, text);
  }
  for (const text of ["127.0.0.1:22", "db.internal:5432", "[::1]:8888", "localhost:0"]) {
    assert.ok(parseHostPort(text, true), text);
  }
});
