/**
 * TunnelServer policies over real TCP on 127.0.0.1: frame header checks
 * (legacy version 1, nonce_size, data_size), the handshake timeout,
 * max-conns, OPEN 0x01 against the allow rules, and graceful shutdown.
 * @module
 */

import { concat } from "../lib/base/bytes.ts";
import assert from "node:assert/strict";
import { AllowList } from "../lib/tunnel/allow.ts";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { MessageType } from "../lib/protocol/messages.ts";
import { connect, forward } from "../lib/tunnel/client.ts";
import { closeQuietly, writeAll } from "../lib/protocol/conn.ts";
import { ErrorCode, RemoteError } from "../lib/base/errors.ts";
import type { Session } from "../lib/tunnel/session.ts";
import type { HostPort } from "../lib/protocol/hostport.ts";
import { randomBytes, readToEnd } from "./helpers.ts";
import { startServer, Upstream } from "./server_fixture.ts";
import { rawHeader } from "../support/wire.ts";

const LOCAL = "127.0.0.1";
const encoder = new TextEncoder();

/** Connects as a raw client, sends `bytes` (if any), and resolves what came back before the close. */
async function rawExchange(port: number, bytes?: Uint8Array): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: LOCAL, port });
  try {
    if (bytes) await writeAll(conn, bytes);
    return await readToEnd(conn, { resetEnds: true });
  } finally {
    closeQuietly(conn);
  }
}

/** A session that echoed one round trip, so the server holds it as open. */
async function establishedSession(address: HostPort, key: Uint8Array, idleTimeoutMs = 0) {
  const session = await connect({ server: address, key, idleTimeoutMs });
  const writer = session.writable.getWriter();
  const reader = session.readable.getReader();
  await writer.write(encoder.encode("ping"));
  assert.deepEqual((await reader.read()).value, encoder.encode("ping"));
  return { session, writer, reader };
}

/** Half-closes a session and reads it to its clean end. */
async function finish(
  { session, writer, reader }: Awaited<ReturnType<typeof establishedSession>>,
): Promise<void> {
  await writer.close();
  assert.equal((await reader.read()).done, true);
  assert.equal((await session.ended).error, null);
}

/** A port on 127.0.0.1 that nothing listens on (bound once, then released). */
function closedPort(): number {
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

Deno.test("header: a version-1 packet is dropped after its 9 header bytes; the default-level log names the legacy Python prototype format", async () => {
  const { server, log, address } = await startServer({ handshakeTimeoutMs: 10_000 });
  try {
    assert.equal(log.logger.level, "info", "the server's default log level");
    // The prototype's SecretBox packet: version 1, a 24-byte nonce, the box.
    const reply = await rawExchange(address.port, rawHeader(1, 24, 40));
    assert.equal(reply.byteLength, 0, "no reply");
    assert.equal(server.stats.handshakesTimedOut, 0, "dropped on the header, not by the timeout");
    assert.equal(server.stats.handshakesFailed, 1);
    const line = await log.waitFor(/legacy/);
    assert.match(line, /version-1/);
    assert.match(line, /Python prototype/);
  } finally {
    await server.shutdown();
  }
});

Deno.test("header: a wrong version or nonce_size, or a data_size over 65535 or under a message 1, is dropped; the server keeps serving", async () => {
  const { server, key, log, address } = await startServer({ handshakeTimeoutMs: 10_000 });
  try {
    const cases: [Uint8Array, RegExp][] = [
      [rawHeader(3, 0, 48), /unsupported protocol version 3/],
      [rawHeader(2, 12, 48), /nonce_size 12 where 0 was expected/],
      [rawHeader(2, 0, 65536), /data_size 65536 exceeds the limit of 65535/],
      [rawHeader(2, 0, 0xffffffff), /data_size 4294967295 exceeds/],
      [rawHeader(2, 0, 47), /data_size 47 is below the minimum of 48/],
    ];
    for (const [i, [bytes, reason]] of cases.entries()) {
      assert.equal((await rawExchange(address.port, bytes)).byteLength, 0, `${reason}: no reply`);
      assert.equal(server.stats.handshakesFailed, i + 1, `${reason}: counted as failed`);
      assert.match(await log.waitFor(reason), /handshake failed/);
    }
    assert.equal(server.stats.handshakesTimedOut, 0, "each dropped on its header");
    const payload = randomBytes(1000);
    assert.deepEqual(await forward(payload, { server: address, key }), payload);
  } finally {
    await server.shutdown();
  }
});

Deno.test("header: a bad transport frame header, before OPEN or inside a session, is dropped without a reply", async () => {
  const { server, key, log, address } = await startServer();
  try {
    // Before OPEN: a transport frame must carry a 12-byte nonce.
    let conn = await Deno.connect({ hostname: LOCAL, port: address.port });
    let channel = await SecureChannel.handshake(conn, key, "initiator");
    try {
      await writeAll(conn, rawHeader(2, 0, 17));
      assert.equal(await channel.receive(), null, "closed without a frame");
    } finally {
      channel.close();
    }
    assert.match(await log.waitFor(/handshake failed/), /nonce_size 0 where 12 was expected/);

    // Inside a session: an oversized data_size ends it without an ERROR frame.
    conn = await Deno.connect({ hostname: LOCAL, port: address.port });
    channel = await SecureChannel.handshake(conn, key, "initiator");
    try {
      await channel.send(MessageType.open, Uint8Array.of(0));
      assert.equal((await channel.receive())?.type, MessageType.openOk);
      await channel.flush();
      await writeAll(conn, rawHeader(2, 12, 65536));
      await conn.closeWrite();
      assert.equal(await channel.receive(), null, "closed without an ERROR frame");
    } finally {
      channel.close();
    }
    assert.match(await log.waitFor(/session end/), /data_size 65536 exceeds/);
  } finally {
    await server.shutdown();
  }
});

Deno.test("OPEN first: a DATA before OPEN is dropped; no session is counted and nothing connects upstream", async () => {
  const upstream = new Upstream("echo");
  const { server, key, log, address } = await startServer({ forward: upstream.address });
  try {
    const conn = await Deno.connect({ hostname: LOCAL, port: address.port });
    const channel = await SecureChannel.handshake(conn, key, "initiator");
    try {
      await channel.send(MessageType.data, encoder.encode("no OPEN first"));
      await conn.closeWrite();
      assert.equal(await channel.receive(), null, "closed without a frame");
    } finally {
      channel.close();
    }
    assert.match(await log.waitFor(/handshake failed/), /the first message must be OPEN/);
    assert.equal(server.stats.handshakesOk, 0);
    assert.equal(server.stats.sessionsTotal, 0);
    // The first connection upstream ever sees is the legitimate one.
    const payload = randomBytes(100);
    assert.deepEqual(await forward(payload, { server: address, key }), payload);
  } finally {
    await server.shutdown();
    await upstream.close();
  }
  assert.equal(upstream.received.length, 1);
});

Deno.test("handshake timeout: a silent client and one that sent half a header are dropped at 200 ms and free their slot", async () => {
  const { server, key, log, address } = await startServer({
    handshakeTimeoutMs: 200,
    maxConns: 1,
  });
  try {
    for (const [i, sent] of [undefined, rawHeader(2, 0, 48).subarray(0, 5)].entries()) {
      const what = sent ? "half a header" : "silent";
      const started = performance.now();
      assert.equal((await rawExchange(address.port, sent)).byteLength, 0, `${what}: no reply`);
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 150 && elapsed < 2000, `${what}: dropped after ${elapsed} ms`);
      await log.waitForCount(/handshake timed out/, i + 1);
      assert.equal(server.stats.handshakesTimedOut, i + 1);
      // maxConns is 1: this only works if the timed-out connection let go of its slot.
      const payload = randomBytes(100);
      assert.deepEqual(await forward(payload, { server: address, key }), payload, what);
    }
    assert.equal(server.stats.connectionsRejectedBusy, 0);
  } finally {
    await server.shutdown();
  }
});

Deno.test("max-conns: with maxConns 2 a third key holder is answered ERROR 4 (busy) and counted; silent sockets take no slot; a freed slot serves again", async () => {
  const { server, key, log, address } = await startServer({
    maxConns: 2,
    handshakeTimeoutMs: 10_000,
    helloTimeoutMs: 10_000,
  });
  const silent: Deno.TcpConn[] = [];
  try {
    // Unauthenticated sockets first: they wait in the pending budget, not in max-conns.
    for (let i = 0; i < 5; i++) {
      silent.push(await Deno.connect({ hostname: LOCAL, port: address.port }));
    }
    const first = await establishedSession(address, key);
    const second = await establishedSession(address, key);
    const third = await connect({ server: address, key });
    await assert.rejects(third.opened, (err) => {
      assert.ok(err instanceof RemoteError && err.code === ErrorCode.busy, String(err));
      assert.match(err.message, /busy/);
      return true;
    });
    assert.equal(server.stats.connectionsRejectedBusy, 1);
    assert.equal(server.stats.handshakesTimedOut, 0);
    assert.match(await log.waitFor(/max-conns reached/), /max_conns=2/);

    await finish(first);
    await log.waitFor(/session end/);
    const payload = randomBytes(100);
    assert.deepEqual(await forward(payload, { server: address, key }), payload);
    assert.equal(server.stats.connectionsRejectedBusy, 1);
    await finish(second);
  } finally {
    silent.forEach(closeQuietly);
    await server.shutdown();
  }
});

Deno.test("OPEN 0x01: refused without an allow rule (ERROR 2), unreachable with a rule to a closed port (ERROR 3), carried to an allowed listener", async () => {
  const upstream = new Upstream("echo");
  const unreachable = { host: LOCAL, port: closedPort() };
  const payload = randomBytes(5000);
  const expectRemoteError = async (session: Session, code: number) => {
    await assert.rejects(session.opened, (err) => {
      assert.ok(err instanceof RemoteError, String(err));
      assert.equal(err.code, code);
      return true;
    });
    assert.ok((await session.ended).error instanceof RemoteError);
  };
  const strict = await startServer();
  try {
    const session = await connect({
      server: strict.address,
      key: strict.key,
      target: upstream.address,
    });
    await expectRemoteError(session, ErrorCode.refused);
    assert.match(await strict.log.waitFor(/open refused by policy/), /target=127\.0\.0\.1:/);
  } finally {
    await strict.server.shutdown();
  }
  const open = await startServer({
    allow: AllowList.parse([`${LOCAL}:${upstream.address.port}`, `${LOCAL}:${unreachable.port}`]),
  });
  try {
    const session = await connect({ server: open.address, key: open.key, target: unreachable });
    await expectRemoteError(session, ErrorCode.unreachable);
    assert.match(await open.log.waitFor(/target unreachable/), new RegExp(`:${unreachable.port}`));

    const reply = await forward(payload, {
      server: open.address,
      key: open.key,
      target: upstream.address,
    });
    assert.deepEqual(reply, payload);
    assert.equal(open.server.stats.sessionsTotal, 1);
  } finally {
    await open.server.shutdown();
    await upstream.close();
  }
  assert.equal(upstream.received.length, 1, "only the allowed OPEN reached the listener");
  assert.deepEqual(concat(upstream.received[0]), payload);
});

Deno.test("shutdown: a session in flight finishes within drainTimeoutMs while new connections are refused", async () => {
  const { server, key, log, address } = await startServer({ drainTimeoutMs: 5000 });
  const { session, writer, reader } = await establishedSession(address, key);
  const started = performance.now();
  const stopping = server.shutdown();
  try {
    assert.equal(server.draining, true);
    await server.stopped; // the accept loop has let go of the listening socket
    await assert.rejects(
      Deno.connect({ hostname: LOCAL, port: address.port }),
      Deno.errors.ConnectionRefused,
    );
    const rest = randomBytes(200_000);
    const writing = writer.write(rest).then(() => writer.close());
    const chunks: Uint8Array[] = [];
    for (let read; !(read = await reader.read()).done;) chunks.push(read.value);
    await writing;
    assert.deepEqual(concat(chunks), rest, "the rest of the echo arrived whole");
    assert.equal((await session.ended).error, null);
  } finally {
    await stopping;
  }
  assert.ok(performance.now() - started < 5000, "shutdown did not wait out the drain timeout");
  assert.match(await log.waitFor(/draining/), /sessions=1/);
  assert.match(await log.waitFor(/session end/), /outcome=ok/);
});

Deno.test("shutdown: a session still open at drainTimeoutMs is ended with ERROR 6", async () => {
  const { server, key, log, address } = await startServer({ drainTimeoutMs: 200 });
  // The client's idle timeout only bounds the test: it would end the session
  // with a TimeoutError of its own if the server never sent ERROR 6.
  const { session, reader } = await establishedSession(address, key, 3000);
  const started = performance.now();
  const stopping = server.shutdown();
  try {
    await assert.rejects(reader.read(), (err) => {
      assert.ok(err instanceof RemoteError, String(err));
      assert.equal(err.code, ErrorCode.internal);
      assert.match(err.message, /server shutting down/);
      return true;
    });
    assert.ok(performance.now() - started >= 150, "the session had its drain time first");
    assert.ok((await session.ended).error instanceof RemoteError);
  } finally {
    await stopping;
  }
  assert.match(await log.waitFor(/session end/), /outcome=error/);
});
