/**
 * `deno task demo`: the main job end to end on loopback with a throwaway key.
 * An echo server, a client round trip through a wire tap that records every
 * byte, and an account of the frames that crossed the wire.
 * @module
 */

import { forward } from "../lib/tunnel/client.ts";
import { concat } from "../lib/base/bytes.ts";
import { closeQuietly, readableOf, writableOf } from "../lib/protocol/conn.ts";
import { HEADER_SIZE } from "../lib/protocol/frame.ts";
import { fingerprint } from "../lib/protocol/keys.ts";
import { Logger } from "../lib/base/log.ts";
import { TunnelServer } from "../lib/tunnel/server.ts";

const MESSAGE = "Hello from the Cipherlink demo: this sentence is the secret.";

/** Records both directions of one TCP connection passing through it. */
function startTap(targetPort: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const recorded = { toServer: [] as Uint8Array[], toClient: [] as Uint8Array[] };
  const done = (async () => {
    const inbound = await listener.accept();
    listener.close();
    const outbound = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
    const copy = async (from: Deno.TcpConn, to: Deno.TcpConn, log: Uint8Array[]) => {
      const tee = new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          log.push(chunk.slice());
          controller.enqueue(chunk);
        },
      });
      await readableOf(from).pipeThrough(tee).pipeTo(writableOf(to)).catch(() => {});
      await to.closeWrite().catch(() => {});
    };
    await Promise.all([
      copy(inbound, outbound, recorded.toServer),
      copy(outbound, inbound, recorded.toClient),
    ]);
    closeQuietly(inbound);
    closeQuietly(outbound);
  })();
  return { port: (listener.addr as Deno.NetAddr).port, recorded, done };
}

function describeFrames(label: string, bytes: Uint8Array): string[] {
  const lines: string[] = [];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  while (at + HEADER_SIZE <= bytes.byteLength) {
    const version = view.getUint8(at);
    const nonceSize = view.getUint32(at + 1);
    const dataSize = view.getUint32(at + 5);
    const kind = nonceSize === 0 ? "handshake" : "transport";
    const counter = nonceSize === 12 ? ` counter=${view.getBigUint64(at + HEADER_SIZE + 4)}` : "";
    lines.push(
      `  ${label} ${kind.padEnd(9)} version=${version} nonce_size=${nonceSize} data_size=${
        String(dataSize).padStart(3)
      }${counter}`,
    );
    at += HEADER_SIZE + nonceSize + dataSize;
  }
  return lines;
}

function contains(haystack: Uint8Array, needle: Uint8Array): boolean {
  outer: for (let i = 0; i + needle.byteLength <= haystack.byteLength; i++) {
    for (let j = 0; j < needle.byteLength; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

const key = crypto.getRandomValues(new Uint8Array(32));
const server = await TunnelServer.start({
  listen: { host: "127.0.0.1", port: 0 },
  key,
  logger: new Logger("warn"),
});
const tap = startTap(server.addr.port);

console.log("Cipherlink demo: an echo server and one client round trip on 127.0.0.1");
console.log(`  throwaway key ${await fingerprint(key)} (the key itself is never printed)`);
console.log(`  echo server on 127.0.0.1:${server.addr.port}, wire tap on 127.0.0.1:${tap.port}`);
console.log(`  client sends: ${JSON.stringify(MESSAGE)}\n`);

const reply = new TextDecoder().decode(
  await forward(new TextEncoder().encode(MESSAGE), {
    server: { host: "127.0.0.1", port: tap.port },
    key,
  }),
);
await tap.done;
await server.shutdown();

const up = concat(tap.recorded.toServer);
const down = concat(tap.recorded.toClient);
console.log("What crossed the wire (every frame: 9-byte header, nonce, ciphertext):");
for (const line of describeFrames("client -> server", up)) console.log(line);
for (const line of describeFrames("server -> client", down)) console.log(line);
const secret = new TextEncoder().encode(MESSAGE);
const leaked = contains(up, secret) || contains(down, secret);
console.log(`\n  bytes on the wire: ${up.byteLength} up, ${down.byteLength} down`);
console.log(`  plaintext seen on the wire: ${leaked ? "YES (this is a bug)" : "no"}`);
console.log(`  client received: ${JSON.stringify(reply)}`);
const ok = reply === MESSAGE && !leaked;
console.log(ok ? "\ndemo: ok" : "\ndemo: FAILED");
Deno.exit(ok ? 0 : 1);
