/**
 * The legitimate client of the hostile-clients suite, as its own process so
 * that the attacks' work does not run on its event loop. Until SIGTERM it
 * opens a session (OPEN 0x00, the echo service), times the handshake and one
 * round trip, closes, and prints one JSON line per attempt:
 * `{"at": epoch ms, "handshakeMs", "roundTripMs", "error"?}`.
 *
 *   deno run --allow-net --allow-read probe.ts --server HOST:PORT --key PATH [--interval-ms 50]
 * @module
 */

import { parseArgs } from "node:util";
import { connect } from "../../lib/tunnel/client.ts";
import { loadKey } from "../../lib/protocol/keys.ts";
import { parseHostPort } from "../../lib/protocol/hostport.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    server: { type: "string" },
    key: { type: "string" },
    "interval-ms": { type: "string", default: "50" },
  },
});
const server = parseHostPort(values.server!);
const { key } = await loadKey(values.key!);
const interval = Number(values["interval-ms"]);
let running = true;
Deno.addSignalListener("SIGTERM", () => (running = false));
const payload = crypto.getRandomValues(new Uint8Array(64));
console.log(JSON.stringify({ ready: true }));

while (running) {
  const started = performance.now();
  const at = Date.now();
  try {
    const session = await connect({ server, key, handshakeTimeoutMs: 10_000 });
    const handshakeMs = performance.now() - started;
    const writer = session.writable.getWriter();
    const reader = session.readable.getReader();
    const sentAt = performance.now();
    await writer.write(payload);
    let got = 0;
    while (got < payload.byteLength) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the echo ended early");
      got += value.byteLength;
    }
    const roundTripMs = performance.now() - sentAt;
    await writer.close();
    while (!(await reader.read()).done) { /* until the server's CLOSE */ }
    const { error } = await session.ended;
    if (error) throw error;
    console.log(JSON.stringify({ at, handshakeMs, roundTripMs }));
  } catch (err) {
    console.log(JSON.stringify({ at, error: (err as Error).message }));
  }
  await new Promise((resolve) => setTimeout(resolve, interval));
}
