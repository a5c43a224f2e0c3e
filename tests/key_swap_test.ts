/**
 * A SIGHUP key swap (ops/supervisor.ts swapKey over tunnel/key_slot.ts),
 * against a real TunnelServer and LocalForwarder on 127.0.0.1: the old key's
 * bytes are zero once the swap is done; a handshake that began under the old
 * key completes under it first (never on zeroed bytes); sessions open before
 * the swap go on; new sessions use the new key; the old and the all-zero key
 * are refused.
 * @module
 */

import assert from "node:assert/strict";
import { AuthenticationError } from "../lib/base/errors.ts";
import { closeQuietly } from "../lib/protocol/conn.ts";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { SERVICE_TARGET } from "../lib/protocol/target.ts";
import { connect, forward } from "../lib/tunnel/client.ts";
import { LocalForwarder } from "../lib/tunnel/forwarder.ts";
import { KeySlot } from "../lib/tunnel/key_slot.ts";
import { Session } from "../lib/tunnel/session.ts";
import { swapKey } from "../lib/ops/supervisor.ts";
import { Logger } from "../lib/base/log.ts";
import { randomBytes } from "./helpers.ts";
import { within } from "./process.ts";
import { startServer } from "./server_fixture.ts";

const LOCAL = "127.0.0.1";
const WAIT_MS = 10_000;
const encoder = new TextEncoder();

/** Resolves once `ready()` holds, checking every 10 ms; fails naming `what` after WAIT_MS. */
async function until(what: string, ready: () => boolean): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${WAIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const isZero = (bytes: Uint8Array) => bytes.every((b) => b === 0);

/** One echo round trip on an open session. */
async function roundTrip(session: Session, text: string): Promise<void> {
  await session.write(encoder.encode(text));
  assert.deepEqual(await within(session.read(), WAIT_MS, `echo of ${text}`), encoder.encode(text));
}

Deno.test("key slot: replace resolves at once without loans, after the last loan otherwise; a replaced key cannot return", async () => {
  const a = randomBytes(32), b = randomBytes(32), c = randomBytes(32);
  const keys = new KeySlot(a);
  await keys.replace(b); // nothing had `a`
  assert.equal(keys.current, b);
  let release!: () => void;
  const loan = keys.withKey((key) => {
    assert.equal(key, b);
    return new Promise<void>((resolve) => (release = resolve));
  });
  let retired = false;
  const replaced = keys.replace(c).then(() => (retired = true));
  await Promise.resolve();
  assert.equal(retired, false, "b is still lent");
  assert.equal(keys.current, c, "new loans get c at once");
  release();
  await loan;
  await within(replaced, WAIT_MS, "b retired");
  assert.throws(() => keys.replace(a), TypeError);
  assert.throws(() => keys.replace(c), TypeError);
});

Deno.test("key swap: the server's old key is zeroed after a handshake begun under it; open sessions go on, new ones use the new key", async () => {
  const oldKey = randomBytes(32);
  const oldCopy = oldKey.slice(); // what a client that still has the old key holds
  const newKey = randomBytes(32);
  const { server, address } = await startServer({}, oldKey);
  const open = await connect({ server: address, key: oldCopy });
  const early = await Deno.connect({ hostname: LOCAL, port: address.port });
  try {
    await roundTrip(open, "before the swap");
    // `early` is accepted and waits for its message 1 under the old key.
    await until("the early connection accepted", () => server.stats.connectionsAccepted >= 2);
    let zeroed = false;
    const swapped = swapKey(server, oldKey, newKey).then(() => (zeroed = true));
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(zeroed, false, "not zeroed while a handshake may still read it");
    assert.ok(!isZero(oldKey));

    // The early connection's message 1 (old key) arrives after the swap: it is verified
    // under the old key, not under zeros, and its session works.
    const hello = await SecureChannel.prepareHello(oldCopy);
    const late = Session.open(
      await within(hello.run(early), WAIT_MS, "early handshake"),
      SERVICE_TARGET,
    );
    await within(late.opened, WAIT_MS, "OPEN_OK for the early connection");
    await roundTrip(late, "begun before the swap");

    await within(swapped, WAIT_MS, "the swap's end");
    assert.ok(isZero(oldKey), "the old key's bytes are zero");

    await roundTrip(open, "after the swap");
    assert.deepEqual(
      await within(
        forward(encoder.encode("new"), { server: address, key: newKey }),
        WAIT_MS,
        "new key",
      ),
      encoder.encode("new"),
    );
    for (const [name, key] of [["old", oldCopy], ["all-zero", new Uint8Array(32)]] as const) {
      await assert.rejects(
        within(forward(encoder.encode("x"), { server: address, key }), WAIT_MS, `${name} key`),
        AuthenticationError,
        `the ${name} key is refused`,
      );
    }
    await open.closeWrite();
    await late.closeWrite();
    await within(Promise.all([open.ended, late.ended]), WAIT_MS, "sessions end");
  } finally {
    closeQuietly(early);
    await server.shutdown({ delay: false });
  }
});

Deno.test("key swap: a client tunnel's old key is zeroed and its new sessions use the new key", async () => {
  const oldKey = randomBytes(32);
  const newKey = randomBytes(32);
  const { server, address } = await startServer({}, newKey);
  const forwarder = LocalForwarder.start({
    listen: { host: LOCAL, port: 0 },
    mode: "forward",
    connect: { server: address, key: oldKey },
    logger: new Logger("error"),
  });
  try {
    await within(swapKey(forwarder, oldKey, newKey), WAIT_MS, "the swap");
    assert.ok(isZero(oldKey), "the old key's bytes are zero");
    const conn = await Deno.connect({ hostname: LOCAL, port: forwarder.addr.port });
    try {
      await conn.write(encoder.encode("through"));
      const buffer = new Uint8Array(16);
      const n = await within(conn.read(buffer), WAIT_MS, "echo through the forwarder");
      assert.equal(new TextDecoder().decode(buffer.subarray(0, n ?? 0)), "through");
    } finally {
      closeQuietly(conn);
    }
  } finally {
    await forwarder.shutdown({ delay: false });
    await server.shutdown({ delay: false });
  }
});
