/**
 * The applications at either end of the broken network, as processes that
 * run inside a namespace (`ip netns exec`). They report on stdout as JSON.
 *
 *   netapp.ts sink --listen HOST:PORT     each connection: read to EOF, answer its SHA-256 hex
 *   netapp.ts send --connect HOST:PORT --bytes N
 *                                         send N random bytes, EOF, read the answer:
 *                                         {"bytes", "sent": sha, "answer": sha, "ms"}
 *   netapp.ts hold --connect HOST:PORT    one echo round trip ({"ready": true}), then wait
 *                                         for the connection to end: {"ended", "ms"}
 * @module
 */

import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { parseHostPort } from "../../lib/protocol/hostport.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    listen: { type: "string" },
    connect: { type: "string" },
    bytes: { type: "string", default: "0" },
  },
});

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

const say = (record: Record<string, unknown>) => console.log(JSON.stringify(record));

switch (positionals[0]) {
  case "sink": {
    const { host, port } = parseHostPort(values.listen!, true);
    const listener = Deno.listen({ hostname: host, port });
    Deno.addSignalListener("SIGTERM", () => listener.close());
    console.error(`listening on ${host}:${(listener.addr as Deno.NetAddr).port}`);
    for await (const conn of listener) {
      (async () => {
        const hash = createHash("sha256");
        const buffer = new Uint8Array(256 * 1024);
        try {
          for (;;) {
            const n = await conn.read(buffer);
            if (n === null) break;
            hash.update(buffer.subarray(0, n));
          }
          await writeAll(conn, new TextEncoder().encode(hash.digest("hex") + "\n"));
        } catch {
          // The sender went away: nothing to answer.
        } finally {
          conn.close();
        }
      })();
    }
    break;
  }
  case "send": {
    const { host, port } = parseHostPort(values.connect!);
    const total = Number(values.bytes);
    const started = performance.now();
    const conn = await Deno.connect({ hostname: host, port });
    const hash = createHash("sha256");
    const chunk = new Uint8Array(256 * 1024);
    const answer = (async () => {
      const parts: Uint8Array[] = [];
      const buffer = new Uint8Array(1024);
      try {
        for (;;) {
          const n = await conn.read(buffer);
          if (n === null) break;
          parts.push(buffer.slice(0, n));
        }
      } catch {
        // Reported as a missing answer.
      }
      return new TextDecoder().decode(new Uint8Array(parts.flatMap((p) => [...p]))).trim();
    })();
    let sent = 0;
    try {
      while (sent < total) {
        const piece = chunk.subarray(0, Math.min(chunk.byteLength, total - sent));
        for (let at = 0; at < piece.byteLength; at += 65536) {
          crypto.getRandomValues(piece.subarray(at, Math.min(at + 65536, piece.byteLength)));
        }
        hash.update(piece);
        await writeAll(conn, piece);
        sent += piece.byteLength;
      }
      await conn.closeWrite();
    } catch (err) {
      say({ error: (err as Error).message, bytes: sent });
    }
    say({
      bytes: sent,
      sent: hash.digest("hex"),
      answer: await answer,
      ms: Math.round(performance.now() - started),
    });
    conn.close();
    break;
  }
  case "hold": {
    const { host, port } = parseHostPort(values.connect!);
    const conn = await Deno.connect({ hostname: host, port });
    await writeAll(conn, new TextEncoder().encode("ping"));
    const buffer = new Uint8Array(64);
    let got = 0;
    while (got < 4) {
      const n = await conn.read(buffer);
      if (n === null) break;
      got += n;
    }
    say({ ready: got === 4 });
    const since = performance.now();
    let ended = "eof";
    try {
      while (await conn.read(buffer) !== null) { /* until the tunnel drops it */ }
    } catch {
      ended = "reset";
    }
    say({ ended, ms: Math.round(performance.now() - since) });
    conn.close();
    break;
  }
  default:
    console.error("usage: netapp.ts sink|send|hold …");
    Deno.exit(2);
}
