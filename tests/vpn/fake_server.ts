/**
 * A hostile VPN server for the client's anti-spoofing test, run inside a
 * test namespace: it accepts one Cipherlink client, grants its VPN OPEN,
 * and sends it IPv4/UDP packets given on the command line, some addressed
 * to the client's tunnel address and some to another of its addresses.
 *
 * Usage: fake_server.ts KEYFILE LISTEN_HOST PORT SRC UDP_PORT DST:TEXT...
 * Prints "listening" once it accepts and "sent" after the packets.
 * @module
 */

import { SecureChannel } from "../../lib/protocol/channel.ts";
import { MessageType } from "../../lib/protocol/messages.ts";
import { loadKey } from "../../lib/protocol/keys.ts";
import { parseCidr } from "../../lib/protocol/packet.ts";
import { decodeTarget } from "../../lib/protocol/target.ts";

const [keyFile, host, port, source, udpPort, ...packets] = Deno.args;
const { key } = await loadKey(keyFile);
const listener = Deno.listen({ hostname: host, port: Number(port) });
console.log("listening");
const conn = await listener.accept();
const channel = await SecureChannel.handshake(conn, key, "responder");
const open = await channel.receive();
if (open?.type !== MessageType.open || decodeTarget(open.body).kind !== "vpn") {
  throw new Error("expected a VPN OPEN");
}
await channel.send(MessageType.openOk);

/** An IPv4/UDP packet with a valid header checksum (UDP checksum 0: none). */
function udp(src: string, dst: string, text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const p = new Uint8Array(28 + payload.byteLength);
  const view = new DataView(p.buffer);
  p[0] = 0x45;
  view.setUint16(2, p.byteLength);
  p[8] = 64;
  p[9] = 17;
  p.set(parseCidr(`${src}/32`).address, 12);
  p.set(parseCidr(`${dst}/32`).address, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += view.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  view.setUint16(10, ~sum & 0xffff);
  view.setUint16(20, 40000);
  view.setUint16(22, Number(udpPort));
  view.setUint16(24, 8 + payload.byteLength);
  p.set(payload, 28);
  return p;
}

for (const spec of packets) {
  const [dst, text] = spec.split(":");
  await channel.send(MessageType.data, udp(source, dst, text));
}
await channel.flush();
console.log("sent");
// Hold the session until the client goes away.
while (await channel.receive().catch(() => null) !== null) { /* PINGs, packets */ }
channel.close();
listener.close();
