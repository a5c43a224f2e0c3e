/**
 * Issue 9's regression tests that drive a real server over TCP: replayed
 * message 1s sent together, the pre-authentication budget, bounded PONGs,
 * the spec's MUSTs on the first transport frame and on REKEY, and protocol
 * violations the spec's table names. Each test states the behaviour it
 * checks; each failed on the code before the fix.
 * @module
 */

import assert from "node:assert/strict";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { MessageType } from "../lib/protocol/messages.ts";
import { connect, forward } from "../lib/tunnel/client.ts";
import { ErrorCode, ProtocolError } from "../lib/base/errors.ts";
import { type Connection } from "../lib/protocol/conn.ts";
import { closeQuietly } from "../lib/protocol/conn.ts";
import { randomBytes, readToEnd, rejectsWith } from "./helpers.ts";
import { startServer } from "./server_fixture.ts";

const LOCAL = "127.0.0.1";

/** The bytes an initiator writes for message 1 with `key` (its reply never comes). */
export async function message1(key: Uint8Array): Promise<Uint8Array> {
  const written: Uint8Array[] = [];
  const capture: Connection = {
    read: () => Promise.resolve(null),
    write: (bytes) => (written.push(bytes.slice()), Promise.resolve(bytes.byteLength)),
    closeWrite: () => Promise.resolve(),
    close: () => {},
  };
  await SecureChannel.handshake(capture, key, "initiator").catch(() => {});
  return written[0];
}

/** Reads until the peer closes or `boundMs` passes; the byte count. */
async function bytesUntilClosed(conn: Deno.TcpConn, boundMs: number): Promise<number> {
  const timer = setTimeout(() => closeQuietly(conn), boundMs);
  try {
    return (await readToEnd(conn, { resetEnds: true })).byteLength;
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("regression: five copies of one message 1 sent at once get one answer, not five", async () => {
  const { server, key, address } = await startServer({ handshakeTimeoutMs: 2000 });
  try {
    const hello = await message1(key);
    const conns = await Promise.all(
      Array.from({ length: 5 }, () => Deno.connect({ hostname: LOCAL, port: address.port })),
    );
    await Promise.all(conns.map((conn) => conn.write(hello)));
    const answered = await Promise.all(conns.map((conn) => bytesUntilClosed(conn, 4000)));
    conns.forEach(closeQuietly);
    assert.equal(answered.filter((n) => n > 0).length, 1, `answers: ${answered}`);
  } finally {
    await server.shutdown();
  }
});

Deno.test("hardening: a message 1 that fails verification does not block its ephemeral key", async () => {
  const { server, key, address } = await startServer({ handshakeTimeoutMs: 2000 });
  try {
    const good = await message1(key);
    const forged = good.slice();
    forged[forged.length - 1] ^= 1; // same ephemeral key, broken tag
    const bad = await Deno.connect({ hostname: LOCAL, port: address.port });
    await bad.write(forged);
    assert.equal(await bytesUntilClosed(bad, 4000), 0);
    closeQuietly(bad);
    const conn = await Deno.connect({ hostname: LOCAL, port: address.port });
    await conn.write(good);
    const reply = new Uint8Array(9);
    assert.ok((await conn.read(reply)) !== null, "the genuine message 1 got no answer");
    closeQuietly(conn);
  } finally {
    await server.shutdown();
  }
});

Deno.test("regression: 200 idle sockets with max-conns 50 do not lock a key holder out; the oldest are dropped, not the new one", async () => {
  const { server, key, address } = await startServer({
    maxConns: 50,
    maxPendingPerSource: 64,
    handshakeTimeoutMs: 20_000,
    helloTimeoutMs: 20_000,
  });
  const idle: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 200; i++) {
      idle.push(await Deno.connect({ hostname: LOCAL, port: address.port }));
    }
    const started = performance.now();
    const payload = randomBytes(100);
    assert.deepEqual(
      await forward(payload, { server: address, key, handshakeTimeoutMs: 5000 }),
      payload,
    );
    const ms = performance.now() - started;
    assert.ok(ms < 1000, `the key holder's round trip took ${Math.round(ms)} ms`);
    // One source holds at most its share (64 here): the rest were dropped, oldest first.
    assert.ok(
      server.stats.connectionsEvicted >= 200 - 64,
      `evicted ${server.stats.connectionsEvicted}`,
    );
    assert.equal(await bytesUntilClosed(idle[0], 2000), 0, "the oldest idle socket was closed");
  } finally {
    idle.forEach(closeQuietly);
    await server.shutdown();
  }
});

Deno.test("regression: message 1 has its own short deadline: a silent and a dribbling socket are dropped at helloTimeout, not the handshake timeout", async () => {
  const { server, address } = await startServer({
    handshakeTimeoutMs: 20_000,
    helloTimeoutMs: 300,
  });
  try {
    const silent = await Deno.connect({ hostname: LOCAL, port: address.port });
    const dribbling = await Deno.connect({ hostname: LOCAL, port: address.port });
    await dribbling.write(Uint8Array.of(2, 0, 0, 0, 0, 0, 0, 0, 48, 1, 2, 3));
    const started = performance.now();
    const ends = await Promise.all([silent, dribbling].map((c) => bytesUntilClosed(c, 5000)));
    const ms = performance.now() - started;
    assert.deepEqual(ends, [0, 0]);
    assert.ok(
      ms < 3000,
      `dropped after ${Math.round(ms)} ms (hello timeout 300 ms, handshake 20 s)`,
    );
    closeQuietly(silent);
    closeQuietly(dribbling);
  } finally {
    await server.shutdown();
  }
});

Deno.test("hardening: the pending budget drops the oldest of the source that holds the most", async () => {
  const { PendingBudget } = await import("../lib/tunnel/pending.ts");
  const dropped: string[] = [];
  const budget = new PendingBudget(4, 3);
  const add = (id: number, source: string) =>
    budget.admit(id, source, () => dropped.push(`${source}#${id}`));
  add(1, "a");
  add(2, "a");
  add(3, "a");
  add(4, "a"); // a holds its share of 3: its oldest goes
  assert.deepEqual(dropped, ["a#1"]);
  add(5, "b"); // 4 pending: the budget is full now
  assert.deepEqual(dropped, ["a#1"]);
  add(6, "c"); // full: the greediest source (a) loses its oldest
  add(7, "d");
  assert.deepEqual(dropped, ["a#1", "a#2", "a#3"]);
  assert.equal(budget.heldBy("b"), 1, "the lone connection of another source survives");
  assert.ok(budget.remove(5) && !budget.remove(5));
  assert.equal(budget.size, 3);
});

/** An initiator channel to `port` that has sent OPEN 0x00 and received OPEN_OK. */
async function opened(port: number, key: Uint8Array): Promise<SecureChannel> {
  const conn = await Deno.connect({ hostname: LOCAL, port });
  const channel = await SecureChannel.handshake(conn, key, "initiator");
  await channel.send(MessageType.open, Uint8Array.of(0));
  assert.equal((await channel.receive())?.type, MessageType.openOk);
  return channel;
}

/** The next message's type and ERROR code (if it is one), or "eof"; bounded. */
async function nextAnswer(channel: SecureChannel): Promise<string> {
  const bound = setTimeout(() => channel.close(), 5000);
  try {
    const message = await channel.receive();
    if (!message) return "eof";
    return message.type === MessageType.error ? `error ${message.body[0]}` : `type ${message.type}`;
  } catch {
    return "eof";
  } finally {
    clearTimeout(bound);
  }
}

Deno.test("regression: CLOSE with a body, and a PONG that answers no PING, are protocol violations (ERROR 1)", async () => {
  const { server, key, address } = await startServer();
  try {
    const closing = await opened(address.port, key);
    await closing.send(MessageType.close, Uint8Array.of(1));
    assert.equal(await nextAnswer(closing), `error ${ErrorCode.protocolViolation}`);
    closing.close();

    const ponging = await opened(address.port, key);
    await ponging.send(MessageType.pong, Uint8Array.of(1, 2, 3));
    assert.equal(await nextAnswer(ponging), `error ${ErrorCode.protocolViolation}`);
    ponging.close();

    const pinging = await opened(address.port, key);
    await pinging.send(MessageType.ping, Uint8Array.of(7, 7));
    const pong = await pinging.receive();
    assert.equal(pong?.type, MessageType.pong);
    assert.deepEqual([...pong!.body], [7, 7], "a PONG carries the PING's body");
    pinging.close();
  } finally {
    await server.shutdown();
  }
});

Deno.test("regression: an OPEN_OK with a body is a protocol violation at the client", async () => {
  const key = randomBytes(32);
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const serving = (async () => {
    const conn = await listener.accept();
    const channel = await SecureChannel.handshake(conn, key, "responder");
    await channel.receive(); // OPEN
    await channel.send(MessageType.openOk, Uint8Array.of(0));
    const reply = await nextAnswer(channel);
    channel.close();
    return reply;
  })();
  try {
    const session = await connect({ server: { host: LOCAL, port: listener.addr.port }, key });
    await rejectsWith(session.opened, ProtocolError, /OPEN_OK with a body/);
    assert.equal(await serving, `error ${ErrorCode.protocolViolation}`);
  } finally {
    listener.close();
  }
});

/** The kernel's queues of one 127.0.0.1 TCP socket (by its local and remote ports), from /proc/net/tcp. */
async function socketQueues(
  local: number,
  remote: number,
): Promise<{ tx: number; rx: number } | null> {
  const hex = (port: number) => `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  for (const line of (await Deno.readTextFile("/proc/net/tcp")).split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[1]?.endsWith(hex(local)) && fields[2]?.endsWith(hex(remote))) {
      const [tx, rx] = fields[4].split(":").map((h) => parseInt(h, 16));
      return { tx, rx };
    }
  }
  return null;
}

Deno.test({
  name:
    "regression: a client that PINGs and never reads stalls its own stream: the server stops reading while a PONG waits for the wire",
  ignore: Deno.build.os !== "linux", // the kernel's socket queues are read from /proc/net/tcp
  fn: async () => {
    const { bodyOf, floodingClient } = await import("../scripts/soak/pingflood.ts");
    const { startDaemon, tempKey } = await import("./process.ts");
    const keyFile = await tempKey();
    const daemon = await startDaemon(["server", "--listen", `${LOCAL}:0`, "--key", keyFile.path]);
    const address = { host: LOCAL, port: daemon.port };
    let tcp: Deno.TcpConn | null = null;
    try {
      const client = await floodingClient(daemon.port, await Deno.readFile(keyFile.path));
      const channel = client.channel;
      tcp = client.tcp;
      // 200,000 PINGs (9.2 MB): far more PONGs than the sockets between the two can hold.
      const pings = 200_000;
      const flood = client.sealPings(pings);
      let written = 0;
      const writing = (async () => {
        while (written < flood.byteLength) written += await tcp!.write(flood.subarray(written));
      })();
      writing.catch(() => {});
      const clientPort = (tcp.localAddr as Deno.NetAddr).port;
      // Unread PINGs: what the client could not send yet plus what the server did not read.
      let unread = -1;
      let stableSince = Date.now();
      const deadline = Date.now() + 30_000;
      for (;;) {
        const sending = await socketQueues(clientPort, address.port);
        const served = await socketQueues(address.port, clientPort);
        assert.ok(sending && served, "both ends of the connection are in /proc/net/tcp");
        const now = sending.tx + served.rx;
        assert.ok(
          now > 0 || written < flood.byteLength,
          "the server read every PING although none of its PONGs was read",
        );
        if (now !== unread) [unread, stableSince] = [now, Date.now()];
        // Unchanged for 2 s with PINGs still unread: the server waits for its PONG to leave.
        if (now > 0 && written > 0 && Date.now() - stableSince >= 2000) break;
        assert.ok(Date.now() < deadline, `the server kept reading PINGs (${now} bytes unread)`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.ok(unread > 1_000_000, `only ${unread} bytes of PINGs left unread`);
      // Once the client reads, the PINGs are answered in order (the first 5,000 are checked).
      let answered = 0;
      while (answered < 5000) {
        const message = await channel.receive();
        assert.equal(message?.type, MessageType.pong);
        assert.deepEqual(message.body, bodyOf(answered));
        answered++;
      }
    } finally {
      if (tcp) closeQuietly(tcp);
      await daemon.stop();
      await keyFile.cleanup();
    }
  },
});

Deno.test("regression: a SOCKS client that stalls in negotiation is closed at the deadline, and a server that never answers OPEN gets reply 0x06", async () => {
  const { LocalForwarder } = await import("../lib/tunnel/forwarder.ts");
  const { Logger } = await import("../lib/base/log.ts");
  const key = randomBytes(32);
  // A server that completes the handshake and then never answers OPEN.
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const held: SecureChannel[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      held.push(await SecureChannel.handshake(conn, key, "responder"));
    }
  })();
  const forwarder = LocalForwarder.start({
    listen: { host: LOCAL, port: 0 },
    mode: "socks",
    connect: { server: { host: LOCAL, port: listener.addr.port }, key },
    socksNegotiationTimeoutMs: 300,
    socksOpenTimeoutMs: 500,
    logger: new Logger("error"),
  });
  try {
    const stalled = await Deno.connect({ hostname: LOCAL, port: forwarder.addr.port });
    await stalled.write(Uint8Array.of(5)); // half a greeting
    const started = performance.now();
    assert.equal(await bytesUntilClosed(stalled, 5000), 0);
    assert.ok(performance.now() - started < 3000, "the stalled SOCKS client was not closed");
    closeQuietly(stalled);

    const socks = await Deno.connect({ hostname: LOCAL, port: forwarder.addr.port });
    await socks.write(Uint8Array.of(5, 1, 0));
    const method = new Uint8Array(2);
    assert.equal(await socks.read(method), 2);
    await socks.write(Uint8Array.of(5, 1, 0, 1, 127, 0, 0, 1, 0, 80));
    const reply = new Uint8Array(10);
    const bound = setTimeout(() => closeQuietly(socks), 5000);
    const n = await socks.read(reply);
    clearTimeout(bound);
    assert.equal(n, 10, "no SOCKS reply within the bound");
    assert.equal(reply[1], 0x06, `reply code ${reply[1]}`);
    closeQuietly(socks);
  } finally {
    await forwarder.shutdown();
    listener.close();
    held.forEach((c) => c.close());
    await serving.catch(() => {});
  }
});

Deno.test("hardening: client --socks warns unless it listens on a loopback address (SOCKS5 has no authentication)", async () => {
  const { isLoopbackHost } = await import("../lib/tunnel/socks.ts");
  for (const host of ["127.0.0.1", "127.8.9.10", "::1", "localhost"]) {
    assert.ok(isLoopbackHost(host), host);
  }
  for (const host of ["0.0.0.0", "::", "192.0.2.1", "fd00::1", "example.com"]) {
    assert.ok(!isLoopbackHost(host), host);
  }
  // On loopback (the only address tests may bind), no warning.
  const { LocalForwarder } = await import("../lib/tunnel/forwarder.ts");
  const { Logger } = await import("../lib/base/log.ts");
  const lines: string[] = [];
  const forwarder = LocalForwarder.start({
    listen: { host: LOCAL, port: 0 },
    mode: "socks",
    connect: { server: { host: LOCAL, port: 1 }, key: randomBytes(32) },
    logger: new Logger("info", "text", (line) => lines.push(line)),
  });
  await forwarder.shutdown();
  assert.ok(!lines.some((l) => /no authentication/.test(l)), lines.join("\n"));
});

Deno.test("regression: loadKey zeroes the buffer it read the key file into, in every format", async () => {
  const { loadKey, encodeKey } = await import("../lib/protocol/keys.ts");
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-test-" });
  const readFile = Deno.readFile;
  const buffers: Uint8Array[] = [];
  Deno.readFile = (async (...args: Parameters<typeof Deno.readFile>) => {
    const bytes = await readFile(...args);
    buffers.push(bytes);
    return bytes;
  }) as typeof Deno.readFile;
  try {
    for (const format of ["raw", "hex", "base64"] as const) {
      const key = randomBytes(32);
      await Deno.writeFile(`${dir}/${format}.key`, encodeKey(key, format), { mode: 0o600 });
      const loaded = await loadKey(`${dir}/${format}.key`);
      assert.deepEqual(loaded.key, key, format);
      const read = buffers.at(-1)!;
      assert.ok(read.byteLength >= 32 && read.every((b) => b === 0), `${format}: file buffer kept`);
    }
  } finally {
    Deno.readFile = readFile;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("regression: 30 wrong-key handshakes make at most 10 log lines and one summary, not one line each", async () => {
  const { server, log, address } = await startServer();
  const wrong = await message1(randomBytes(32));
  try {
    await Promise.all(Array.from({ length: 30 }, async () => {
      const conn = await Deno.connect({ hostname: LOCAL, port: address.port });
      await conn.write(wrong);
      assert.equal(await bytesUntilClosed(conn, 5000), 0);
      closeQuietly(conn);
    }));
    assert.equal(server.stats.handshakesFailed, 30);
  } finally {
    await server.shutdown();
  }
  const each = log.lines.filter((l) => / handshake failed /.test(l));
  assert.ok(each.length <= 10, `${each.length} lines, one per connection`);
  const summary = log.lines.find((l) => /without a log line each/.test(l));
  assert.ok(summary, log.lines.join("\n"));
  assert.match(summary, new RegExp(`not_logged=${30 - each.length}\\b`));
});
