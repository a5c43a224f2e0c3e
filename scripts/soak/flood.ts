/**
 * The attacker of the pre-authentication flood (issue 9, finding 2), as its
 * own process so that its thousands of sockets neither share the soak's file
 * descriptor limit nor its event loop. For `--seconds` it keeps `--sockets`
 * connections open to the server without the key: even-numbered ones send
 * nothing, odd-numbered ones drip a message 1 header and then one byte a
 * second. Each one the server closes is reopened after a random pause of
 * up to 250 ms (without it, sockets opened together are cut together and
 * come back as one burst that overflows the kernel's accept queue: a
 * connection-rate flood, which is the firewall's and SYN cookies' business,
 * not this test's). Prints one JSON
 * line at the end: `{"opened", "cut", "failedToConnect", "peakOpen"}`.
 *
 *   deno run --allow-net flood.ts --port PORT --sockets 2000 --seconds 12
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    port: { type: "string" },
    sockets: { type: "string", default: "2000" },
    seconds: { type: "string", default: "12" },
  },
});
const port = Number(values.port);
const sockets = Number(values.sockets);
const end = Date.now() + Number(values.seconds) * 1000;
const header = Uint8Array.of(2, 0, 0, 0, 0, 0, 0, 0, 48);
let opened = 0;
let cut = 0;
let failedToConnect = 0;
let open = 0;
let peakOpen = 0;

async function hold(dripping: boolean): Promise<void> {
  const buffer = new Uint8Array(256);
  while (Date.now() < end) {
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
    } catch {
      failedToConnect++;
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    opened++;
    open++;
    peakOpen = Math.max(peakOpen, open);
    let sent = 0;
    const drip = dripping
      ? setInterval(() => {
        const byte = sent < header.byteLength ? header.subarray(sent, sent + 1) : Uint8Array.of(7);
        sent++;
        conn.write(byte).catch(() => {});
      }, 1000)
      : undefined;
    const bound = setTimeout(() => {
      try {
        conn.close();
      } catch {
        // closed already
      }
    }, Math.max(1, end - Date.now()));
    let closedByServer = true;
    try {
      while ((await conn.read(buffer)) !== null) { /* the server never answers without the key */ }
    } catch {
      closedByServer = Date.now() < end;
    }
    clearInterval(drip);
    clearTimeout(bound);
    open--;
    if (closedByServer && Date.now() < end) cut++;
    try {
      conn.close();
    } catch {
      // closed already
    }
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 250));
  }
}

const holders: Promise<void>[] = [];
for (let i = 0; i < sockets; i++) {
  holders.push(hold(i % 2 === 1));
  if (i % 200 === 199) await new Promise((resolve) => setTimeout(resolve, 50));
}
await Promise.all(holders);
console.log(JSON.stringify({ opened, cut, failedToConnect, peakOpen }));
Deno.exit(0);
