/**
 * VPN mode pieces on their own: packet checks, CIDRs, the OPEN 0x02 codec,
 * the address pool, reconnect delays, a server without VPN mode, the
 * bounded send queue over real TCP, and the errors without permission.
 * @module
 */

import assert from "node:assert/strict";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { MessageType } from "../lib/protocol/messages.ts";
import { ConfigError, parseConfig } from "../lib/ops/config.ts";
import { ProtocolError, UsageError } from "../lib/base/errors.ts";
import {
  contains,
  formatAddress,
  formatCidr,
  inspectPacket,
  networkOf,
  parseCidr,
} from "../lib/protocol/packet.ts";
import { decodeTarget, encodeTarget } from "../lib/protocol/target.ts";
import { reconnectDelay } from "../lib/tunnel/vpn_client.ts";
import { MAX_QUEUED_PACKETS, VpnLink } from "../lib/tunnel/vpn_link.ts";
import { decodeVpnOpen, encodeVpnOpen } from "../lib/protocol/vpn_open.ts";
import { AddressPool } from "../lib/tunnel/vpn_pool.ts";
import { VPN_DEFAULT_KEEPALIVE_MS } from "../lib/tunnel/vpn_server.ts";
import { runCipherlink } from "./process.ts";
import { startServer } from "./server_fixture.ts";

/** An IPv4 packet of `size` bytes from `src` to `dst` with consistent length fields. */
function ipv4(src: string, dst: string, size = 28): Uint8Array {
  const p = new Uint8Array(size);
  p[0] = 0x45;
  p[2] = size >> 8;
  p[3] = size & 0xff;
  p[9] = 17;
  p.set(parseCidr(`${src}/32`).address, 12);
  p.set(parseCidr(`${dst}/32`).address, 16);
  return p;
}

/** An IPv6 packet with `payload` bytes after the fixed header. */
function ipv6(src: string, dst: string, payload = 8): Uint8Array {
  const p = new Uint8Array(40 + payload);
  p[0] = 0x60;
  p[4] = payload >> 8;
  p[5] = payload & 0xff;
  p.set(parseCidr(`${src}/128`).address, 8);
  p.set(parseCidr(`${dst}/128`).address, 24);
  return p;
}

Deno.test("packet: valid IPv4 and IPv6 packets give their address offsets", () => {
  assert.deepEqual(inspectPacket(ipv4("10.0.0.1", "10.0.0.2")), {
    family: 4,
    sourceOffset: 12,
    destinationOffset: 16,
  });
  assert.deepEqual(inspectPacket(ipv6("fd00::1", "fd00::2")), {
    family: 6,
    sourceOffset: 8,
    destinationOffset: 24,
  });
  // IPv4 with options: IHL 6 words.
  const options = ipv4("10.0.0.1", "10.0.0.2", 32);
  options[0] = 0x46;
  assert.ok(inspectPacket(options));
});

Deno.test("packet: wrong version nibbles and disagreeing length fields are malformed", () => {
  assert.equal(inspectPacket(new Uint8Array(0)), null);
  for (const version of [0, 1, 5, 7, 15]) {
    const p = ipv4("10.0.0.1", "10.0.0.2");
    p[0] = (version << 4) | 5;
    assert.equal(inspectPacket(p), null, `version ${version}`);
  }
  const short = ipv4("10.0.0.1", "10.0.0.2");
  assert.equal(inspectPacket(short.subarray(0, 19)), null, "shorter than a header");
  const totalTooBig = ipv4("10.0.0.1", "10.0.0.2");
  totalTooBig[3] += 1;
  assert.equal(inspectPacket(totalTooBig), null, "total length past the body");
  const totalTooSmall = ipv4("10.0.0.1", "10.0.0.2");
  totalTooSmall[3] -= 1;
  assert.equal(inspectPacket(totalTooSmall), null, "total length short of the body");
  const ihlSmall = ipv4("10.0.0.1", "10.0.0.2");
  ihlSmall[0] = 0x44;
  assert.equal(inspectPacket(ihlSmall), null, "IHL under 5");
  const ihlBig = ipv4("10.0.0.1", "10.0.0.2");
  ihlBig[0] = 0x4f;
  assert.equal(inspectPacket(ihlBig), null, "IHL past the body");
  const v6 = ipv6("fd00::1", "fd00::2");
  assert.equal(inspectPacket(v6.subarray(0, 39)), null, "IPv6 shorter than its header");
  assert.equal(inspectPacket(v6.subarray(0, 47)), null, "IPv6 payload length past the body");
  const v6long = new Uint8Array(49);
  v6long.set(v6);
  assert.equal(inspectPacket(v6long), null, "IPv6 body longer than the payload length");
});

Deno.test("packet: CIDR parsing, formatting and containment", () => {
  assert.equal(formatCidr(parseCidr("10.8.0.1/24")), "10.8.0.1/24");
  assert.equal(formatCidr(parseCidr("fd08:0:0::1/64")), "fd08::1/64");
  assert.equal(formatCidr(networkOf(parseCidr("10.8.3.77/22"))), "10.8.0.0/22");
  assert.equal(formatAddress(parseCidr("2001:db8:0:0:1:0:0:1/128").address), "2001:db8::1:0:0:1");
  for (const bad of ["10.8.0.1", "10.8.0.1/33", "fd00::1/129", "10.8.0/24", "x/8", "10.8.0.1/-1"]) {
    assert.throws(() => parseCidr(bad, "--tun-address"), UsageError, bad);
  }
  const net = parseCidr("10.8.0.0/23");
  assert.ok(contains(net, Uint8Array.of(10, 8, 1, 255)));
  assert.ok(!contains(net, Uint8Array.of(10, 8, 2, 0)));
  assert.ok(!contains(net, new Uint8Array(16)), "another family is never inside");
});

Deno.test("vpn OPEN 0x02: encodes and decodes both families; malformed bodies are protocol errors", () => {
  const addresses = [parseCidr("10.8.0.2/24"), parseCidr("fd08::2/64")];
  const body = encodeVpnOpen(addresses);
  assert.deepEqual(
    Array.from(body.subarray(0, 8)),
    [2, 2, 1, 10, 8, 0, 2, 24],
  );
  assert.equal(body.byteLength, 2 + 6 + 18);
  assert.deepEqual(decodeVpnOpen(body), addresses);
  assert.deepEqual(decodeTarget(body), { kind: "vpn", addresses });
  assert.deepEqual(encodeTarget({ kind: "vpn", addresses }), body);
  const bad: [string, number[]][] = [
    ["no count", [2]],
    ["count 0", [2, 0]],
    ["count 3", [2, 3, 1, 10, 0, 0, 1, 8, 1, 10, 0, 0, 2, 8, 1, 10, 0, 0, 3, 8]],
    ["cut short", [2, 1, 1, 10, 8, 0]],
    ["trailing byte", [2, 1, 1, 10, 8, 0, 2, 24, 0]],
    ["domain ATYP", [2, 1, 3, 1, 97, 8]],
    ["prefix /33", [2, 1, 1, 10, 8, 0, 2, 33]],
    ["two IPv4", [2, 2, 1, 10, 8, 0, 2, 24, 1, 10, 8, 0, 3, 24]],
  ];
  for (const [what, bytes] of bad) {
    assert.throws(() => decodeTarget(Uint8Array.from(bytes)), ProtocolError, what);
  }
});

Deno.test("address pool: only free addresses inside the network, not the server's own, freed on release", () => {
  const pool = new AddressPool<string>([parseCidr("10.8.0.1/24"), parseCidr("fd08::1/64")]);
  const ask = (owner: string, ...cidrs: string[]) =>
    pool.claim(owner, cidrs.map((c) => parseCidr(c)));
  assert.equal(ask("a", "10.8.0.2/24", "fd08::2/64"), null);
  assert.equal(ask("b", "10.8.0.2/24"), "10.8.0.2 is in use by another client");
  assert.equal(ask("b", "10.8.0.3/24", "fd08::2/64"), "fd08::2 is in use by another client");
  assert.equal(pool.size, 2, "a refused claim takes nothing, not even its free address");
  assert.equal(ask("b", "10.8.0.1/24"), "10.8.0.1 is the server's own address");
  assert.equal(
    ask("b", "10.8.1.3/24"),
    "10.8.1.3 is outside the server's tunnel network 10.8.0.0/24",
  );
  assert.equal(ask("b", "10.8.0.0/24"), "10.8.0.0 is the network's address");
  assert.equal(ask("b", "10.8.0.255/24"), "10.8.0.255 is the broadcast address");
  assert.equal(ask("b", "fd09::2/64"), "fd09::2 is outside the server's tunnel network fd08::/64");
  const packet = ipv4("10.8.0.2", "10.8.0.1");
  assert.equal(pool.ownerOf(packet, 12, 4), "a");
  assert.equal(pool.ownerOf(ipv6("fd08::2", "fd08::1"), 8, 6), "a");
  pool.release("a");
  assert.equal(pool.size, 0);
  assert.equal(pool.ownerOf(packet, 12, 4), undefined);
  assert.equal(ask("b", "10.8.0.2/24"), null, "free again once released");
  const v4only = new AddressPool<string>([parseCidr("10.8.0.1/24")]);
  assert.equal(
    v4only.claim("c", [parseCidr("fd08::2/64")]),
    "fd08::2: this server has no IPv6 tunnel network",
  );
});

Deno.test("reconnect delay: 1 s doubling to 30 s, each within 20% jitter", () => {
  const low = () => 0, high = () => 0.999999;
  const bases = [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
  bases.forEach((base, i) => {
    assert.equal(reconnectDelay(i + 1, () => 0.5), base);
    assert.equal(reconnectDelay(i + 1, low), base * 0.8);
    assert.ok(reconnectDelay(i + 1, high) <= base * 1.2);
  });
  assert.equal(reconnectDelay(1000, () => 0.5), 30000);
});

Deno.test("a server without VPN mode answers OPEN 0x02 with ERROR 2", async () => {
  const { server, key, address, log } = await startServer();
  try {
    const conn = await Deno.connect({ hostname: address.host, port: address.port });
    const channel = await SecureChannel.handshake(conn, key, "initiator");
    await channel.send(MessageType.open, encodeVpnOpen([parseCidr("10.8.0.2/24")]));
    const reply = await channel.receive();
    assert.equal(reply?.type, MessageType.error);
    assert.equal(reply!.body[0], 2);
    assert.equal(
      new TextDecoder().decode(reply!.body.subarray(1)),
      "VPN mode is not enabled on this server",
    );
    channel.close();
    await log.waitFor(/vpn open refused/);
    assert.equal(server.stats.opens.refused, 1);
  } finally {
    await server.shutdown();
  }
});

Deno.test("vpn link: a peer that does not read makes the sender drop packets, not queue them", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const key = crypto.getRandomValues(new Uint8Array(32));
  const accepted = listener.accept();
  const clientConn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const serverConn = await accepted;
  listener.close();
  const [sender, receiver] = await Promise.all([
    SecureChannel.handshake(clientConn, key, "initiator"),
    SecureChannel.handshake(serverConn, key, "responder"),
  ]);
  const link = new VpnLink(sender, { onPacket: () => {} });
  const ended = link.run();
  const plaintext = new Uint8Array(1 + 1400);
  let accepted_ = 0;
  // Far more than the socket buffers and the queue hold; the receiver reads nothing.
  for (let i = 0; i < 20_000; i++) {
    if (link.sendPacket(plaintext)) accepted_++;
    if (i % 200 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  assert.ok(link.stats.dropped.queue_full > 0, "nothing was dropped");
  assert.equal(accepted_ + link.stats.dropped.queue_full, 20_000);
  assert.ok(
    accepted_ < 20_000 - MAX_QUEUED_PACKETS,
    `accepted ${accepted_} of 20000 with a peer that does not read`,
  );
  // The receiver starts reading: what was accepted arrives, in order, and the link is still up.
  let got = 0;
  while (got < accepted_) {
    const message = await receiver.receive();
    assert.equal(message?.type, MessageType.data);
    assert.equal(message!.body.byteLength, 1400);
    got++;
  }
  assert.equal(link.ended, false);
  await receiver.send(MessageType.close);
  assert.deepEqual(await ended, { error: null });
  receiver.close();
});

Deno.test("VPN mode says what is missing: no --allow-ffi, or not root", async () => {
  // A key anyone may read (the unprivileged run below must get as far as the device).
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-vpn-" });
  await Deno.chmod(dir, 0o777);
  const keyPath = `${dir}/shared.key`;
  await Deno.writeFile(keyPath, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o644 });
  await Deno.chmod(keyPath, 0o644);
  const args = [
    "server",
    "--listen",
    "127.0.0.1:0",
    "--key",
    keyPath,
    "--tun",
    "clnope0",
    "--tun-address",
    "10.8.0.1/24",
  ];
  try {
    await missingRights(args, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function missingRights(args: string[], dir: string): Promise<void> {
  const main = new URL("../main.ts", import.meta.url).pathname;
  // Everything the command needs except FFI.
  const without = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--quiet",
      "--no-prompt",
      "--allow-net",
      "--allow-read",
      "--allow-run",
      main,
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const noFfi = { code: without.code, stderr: new TextDecoder().decode(without.stderr) };
  assert.equal(noFfi.code, 1, noFfi.stderr);
  assert.match(
    noFfi.stderr,
    /^cipherlink: error: VPN mode \(--tun\) needs Deno's --allow-ffi permission$/m,
  );
  const usage = await runCipherlink(["client", "--tun-address", "10.8.0.2/24"]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--tun-address needs --tun/);
  // A device name the kernel would refuse is a usage error, found before anything starts.
  const badName = await runCipherlink(["server", "--tun", "a/b", "--tun-address", "10.8.0.1/24"]);
  assert.equal(badName.code, 2, badName.stderr);
  assert.match(badName.stderr, /^cipherlink: error: --tun: 'a\/b' is not a device name/m);
  if (Deno.uid() !== 0) return;
  // As an unprivileged user (root drops to nobody), TUNSETIFF is refused.
  const out = await new Deno.Command("setpriv", {
    args: [
      "--reuid=65534",
      "--regid=65534",
      "--clear-groups",
      "--inh-caps=-all",
      Deno.execPath(),
      "run",
      "--quiet",
      "--allow-all",
      main,
      ...args,
    ],
    env: { DENO_DIR: `${dir}/deno`, HOME: dir },
    stdout: "piped",
    stderr: "piped",
  }).output().catch(() => null);
  if (!out) return;
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 1, stderr);
  assert.match(stderr, /cipherlink: error: .*(needs root or CAP_NET_ADMIN)/);
}

Deno.test("config: VPN fields of server and client tunnels, and their errors", () => {
  const file = "/etc/cipherlink/vpn.json";
  const parse = (tunnel: Record<string, unknown>) =>
    parseConfig(JSON.stringify({ tunnels: [{ name: "t", key: "k", ...tunnel }] }), file).tunnels[0];
  const server = parse({
    role: "server",
    listen: "0.0.0.0:8888",
    tun: "cl0",
    tunAddresses: ["10.8.0.1/24", "fd08::1/64"],
    tunMtu: 1300,
  });
  assert.equal(server.role, "server");
  assert.deepEqual(server.role === "server" && server.vpn, {
    device: "cl0",
    addresses: [parseCidr("10.8.0.1/24"), parseCidr("fd08::1/64")],
    mtu: 1300,
    routes: [],
    keepaliveMs: VPN_DEFAULT_KEEPALIVE_MS,
  });
  const client = parse({
    role: "client",
    mode: "vpn",
    server: "vpn.example.net:8888",
    tun: "cl1",
    tunAddresses: ["10.8.0.2/24"],
    routes: ["10.9.0.0/16"],
  });
  assert.equal(client.listen, null);
  assert.deepEqual(client.role === "client" && client.vpn?.routes, [parseCidr("10.9.0.0/16")]);
  // keepalive as on the command line: absent, the VPN default; 0, off; else as given.
  for (const [keepalive, want] of [[undefined, VPN_DEFAULT_KEEPALIVE_MS], [0, 0], [7, 7000]]) {
    const tunnel = parse({
      role: "client",
      mode: "vpn",
      server: "s:1",
      tun: "cl1",
      tunAddresses: ["10.8.0.2/24"],
      ...(keepalive === undefined ? {} : { keepalive }),
    });
    assert.equal(tunnel.vpn?.keepaliveMs, want, `keepalive ${keepalive}`);
  }
  const errors: [Record<string, unknown>, string][] = [
    [
      {
        role: "client",
        mode: "vpn",
        listen: "127.0.0.1:1",
        server: "s:1",
        tun: "a",
        tunAddresses: ["10.8.0.2/24"],
      },
      'field "listen": has no meaning in vpn mode (a VPN client accepts no connections)',
    ],
    [
      { role: "client", mode: "vpn", server: "s:1", tunAddresses: ["10.8.0.2/24"] },
      'field "tunAddresses": needs "tun" (the VPN device\'s name)',
    ],
    [
      { role: "client", mode: "vpn", server: "s:1", tun: "a" },
      'field "tunAddresses": is missing (one IPv4 and/or one IPv6 CIDR)',
    ],
    [
      { role: "client", listen: "127.0.0.1:1", server: "s:1", routes: ["10.9.0.0/16"] },
      'field "routes": is a field of vpn mode (mode is "forward")',
    ],
    [
      { role: "server", listen: "0.0.0.0:1", tun: "a", tunAddresses: ["10.8.0.1"] },
      'field "tunAddresses[0]": it takes ADDRESS/PREFIX',
    ],
    [
      { role: "server", listen: "0.0.0.0:1", tun: "a/b", tunAddresses: ["10.8.0.1/24"] },
      "field \"tun\": 'a/b' is not a device name",
    ],
    [
      { role: "server", listen: "0.0.0.0:1", tun: "a", tunAddresses: ["10.8.0.1/24"], tunMtu: 100 },
      'field "tunMtu": must be a whole number from 1280 to 65518',
    ],
  ];
  for (const [tunnel, message] of errors) {
    assert.throws(() => parse(tunnel), (err: Error) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.ok(err.message.includes(`tunnel "t": ${message}`), err.message);
      return true;
    });
  }
});

Deno.test("docs/protocol.md: the worked VPN OPEN body is what the codec writes", async () => {
  const text = await Deno.readTextFile(new URL("../docs/protocol.md", import.meta.url));
  const shown = /```\n(02 02 [0-9a-f ]+)\n```/.exec(text)?.[1];
  assert.ok(shown, "no VPN OPEN example in docs/protocol.md");
  const body = encodeVpnOpen([parseCidr("10.8.0.2/24"), parseCidr("fd08::2/64")]);
  assert.equal(
    shown.replace(/\s+/g, ""),
    Array.from(body, (b) => b.toString(16).padStart(2, "0")).join(""),
  );
});
