/**
 * Issue 9, finding 3: an authenticated client that sends PINGs and never
 * reads. A server that answered each PING by queueing a PONG grew about
 * 1 KiB per PING without bound; now at most one PONG is outstanding and
 * further PINGs wait in the socket, so the server's resident memory stays
 * within a constant however many PINGs come. The client sends them all at
 * once, the server's RSS is sampled for a measurement window while nobody
 * reads, then the client reads: every PING must have been answered, in
 * order, with its own body.
 * @module
 */

import { Buffer } from "node:buffer";
import { createCipheriv } from "node:crypto";
import { SecureChannel } from "../../lib/protocol/channel.ts";
import { MessageType } from "../../lib/protocol/messages.ts";
import {
  encodeHeader,
  HEADER_SIZE,
  TAG_SIZE,
  TRANSPORT_NONCE_SIZE,
} from "../../lib/protocol/frame.ts";
import { type LogBook, MiB, mib, pause, type Row, RowBuilder } from "./common.ts";
import { connectLoopback, LOOPBACK, writeAll } from "./net.ts";
import { cipherlinkArgv, type Proc, spawn, tempKey } from "./proc.ts";
import { equalBytes } from "../../lib/base/bytes.ts";

/** The bound on the server's RSS growth during the flood, whatever the PING count. */
export const PING_FLOOD_RSS_BOUND = 32 * MiB;

export interface PingFloodOptions {
  /** PINGs sent without reading. */
  pings: number;
  /** How long the server's memory is sampled while nobody reads. */
  observeMs: number;
}

/** Runs the flood against its own server process; one row. */
export async function pingFlood(book: LogBook, options: PingFloodOptions): Promise<Row[]> {
  const row = new RowBuilder(
    "hostile",
    `PING flood: ${options.pings} PINGs from an authenticated client that does not read`,
  );
  const key = await tempKey(book);
  let server: Proc | null = null;
  let channel: SecureChannel | null = null;
  try {
    server = await spawn(
      book,
      "ping-flood server",
      cipherlinkArgv(["server", "--listen", `${LOOPBACK}:0`, "--key", key.path]),
      { ready: true },
    );
    const client = await floodingClient(server.port, key.key);
    channel = client.channel;
    const before = await server.rss();
    let peak = before;
    const sent = options.pings;
    const flood = client.sealPings(sent);
    const sending = (async () => {
      for (let at = 0; at < flood.byteLength; at += MiB) {
        await writeAll(client.tcp, flood.subarray(at, at + MiB));
      }
    })();
    sending.catch(() => {});
    const until = Date.now() + options.observeMs;
    while (Date.now() < until) {
      peak = Math.max(peak, await server.rss());
      await pause(100);
    }
    const growth = peak - before;
    row.tried(options.pings);
    row.check(
      growth <= PING_FLOOD_RSS_BOUND,
      `the server grew ${mib(growth)} (bound ${mib(PING_FLOOD_RSS_BOUND)})`,
    );
    // Now read: every PING is answered, in order, with its own body.
    let answered = 0;
    const deadline = setTimeout(() => channel?.close(), 60_000);
    try {
      while (answered < sent) {
        const message = await channel.receive();
        if (!message) break;
        if (message.type !== MessageType.pong) continue;
        const expected = bodyOf(answered);
        if (!equalBytes(message.body, expected)) {
          row.fail(`PONG ${answered} carried another PING's body`);
          break;
        }
        answered++;
      }
    } finally {
      clearTimeout(deadline);
    }
    row.check(answered === sent, `${answered} of ${sent} PINGs answered once the client read`);
    await sending;
    row.set("pings", sent);
    row.set("rss_growth_bytes", growth);
    row.set("rss_bound_bytes", PING_FLOOD_RSS_BOUND);
    row.set("answered", answered);
    row.figures(
      `server RSS grew ${mib(growth)} while the client did not read (bound ${
        mib(PING_FLOOD_RSS_BOUND)
      }, any count); all ${answered} answered in order once it read`,
    );
  } catch (err) {
    row.fail(`flood stopped: ${(err as Error).message}`);
  } finally {
    channel?.close();
    await server?.stop();
    await key.cleanup();
  }
  return [row.done()];
}

/** The 8-byte body of PING number `i`. */
export function bodyOf(i: number): Uint8Array {
  const body = new Uint8Array(8);
  new DataView(body.buffer).setUint32(4, i);
  return body;
}

/**
 * An opened session (OPEN 0x00 answered) whose client -> server key is
 * known to the caller, so a flood of PINGs can be sealed with node:crypto
 * at memory speed instead of one Web Crypto call each. The key is taken by
 * watching this process's AES-GCM key imports during the handshake: the
 * server must run in another process.
 */
export async function floodingClient(
  port: number,
  psk: Uint8Array,
): Promise<{ channel: SecureChannel; tcp: Deno.TcpConn; sealPings(count: number): Uint8Array }> {
  const subtle = crypto.subtle;
  const importKey = subtle.importKey;
  const aesKeys: Uint8Array[] = [];
  subtle.importKey = ((...args: Parameters<SubtleCrypto["importKey"]>) => {
    const [format, data, algorithm] = args;
    const name = typeof algorithm === "string" ? algorithm : algorithm.name;
    if (format === "raw" && name === "AES-GCM") {
      aesKeys.push(new Uint8Array((data as Uint8Array).slice()));
    }
    return importKey.apply(subtle, args);
  }) as SubtleCrypto["importKey"];
  const tcp = await connectLoopback(port);
  let channel: SecureChannel;
  try {
    channel = await SecureChannel.handshake(tcp, psk, "initiator");
  } finally {
    subtle.importKey = importKey;
  }
  // Split() imports the two transport keys last; the first encrypts client -> server.
  const sendKey = aesKeys[aesKeys.length - 2];
  await channel.send(MessageType.open, Uint8Array.of(0));
  const ok = await channel.receive();
  if (ok?.type !== MessageType.openOk) throw new Error("the server did not open the session");
  let next = 1; // OPEN used counter 0
  return {
    channel,
    tcp,
    sealPings(count: number): Uint8Array {
      const frameSize = HEADER_SIZE + TRANSPORT_NONCE_SIZE + 1 + 8 + TAG_SIZE;
      const out = new Uint8Array(count * frameSize);
      const plaintext = new Uint8Array(9);
      plaintext[0] = MessageType.ping;
      for (let i = 0; i < count; i++) {
        const frame = out.subarray(i * frameSize, (i + 1) * frameSize);
        encodeHeader(frame, TRANSPORT_NONCE_SIZE, 9 + TAG_SIZE);
        const nonce = frame.subarray(HEADER_SIZE, HEADER_SIZE + TRANSPORT_NONCE_SIZE);
        new DataView(nonce.buffer, nonce.byteOffset, 12).setBigUint64(4, BigInt(next++));
        plaintext.set(bodyOf(i), 1);
        const cipher = createCipheriv("aes-256-gcm", sendKey, nonce);
        cipher.setAAD(frame.subarray(0, HEADER_SIZE));
        const sealed = Buffer.concat([
          cipher.update(plaintext),
          cipher.final(),
          cipher.getAuthTag(),
        ]);
        frame.set(sealed, HEADER_SIZE + TRANSPORT_NONCE_SIZE);
      }
      return out;
    },
  };
}
