/**
 * PendingOpen over real TCP on 127.0.0.1 (a real client against a channel
 * the test answers by hand): an OPEN is answered exactly once, a second
 * answer throws, reject sends the ERROR the caller named, and an OPEN closed
 * unanswered ends the connection without an answer.
 * @module
 */

import assert from "node:assert/strict";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { connect } from "../lib/tunnel/client.ts";
import { closeQuietly } from "../lib/protocol/conn.ts";
import { ErrorCode, RemoteError } from "../lib/base/errors.ts";
import { OpenAnsweredError, PendingOpen } from "../lib/tunnel/pending_open.ts";
import type { Session } from "../lib/tunnel/session.ts";
import { randomBytes } from "./helpers.ts";
import { within } from "./process.ts";

const LOCAL = "127.0.0.1";
const WAIT_MS = 10_000;

/**
 * A client session asking for `target` and the server's pending OPEN for it;
 * `body` runs with both, and everything is closed afterwards.
 */
async function withOpen(
  target: { host: string; port: number } | undefined,
  body: (client: Session, open: PendingOpen) => Promise<void>,
): Promise<void> {
  const key = randomBytes(32);
  const listener = Deno.listen({ hostname: LOCAL, port: 0 });
  const clientSession = connect({ server: { host: LOCAL, port: listener.addr.port }, key, target });
  const conn = await within(listener.accept(), WAIT_MS, "accept");
  let open: PendingOpen | null = null;
  try {
    const channel = await within(
      SecureChannel.handshake(conn, key, "responder"),
      WAIT_MS,
      "handshake",
    );
    open = await within(PendingOpen.receive(channel), WAIT_MS, "OPEN");
    await body(await within(clientSession, WAIT_MS, "client"), open);
  } finally {
    open?.close();
    closeQuietly(conn); // the channel closed it already unless the handshake failed
    listener.close();
    (await clientSession.catch(() => null))?.abort(ErrorCode.internal, "test over");
  }
}

Deno.test("pending open: accept answers OPEN_OK once; a second answer of either kind throws", async () => {
  await withOpen(undefined, async (client, open) => {
    assert.deepEqual(open.target, { kind: "service" });
    assert.equal(open.answered, false);
    const session = await open.accept();
    assert.equal(open.answered, true);
    await within(client.opened, WAIT_MS, "OPEN_OK at the client");
    assert.throws(() => open.acceptVpn(), OpenAnsweredError);
    await assert.rejects(open.accept(), OpenAnsweredError);
    await assert.rejects(open.reject(ErrorCode.refused, "too late"), OpenAnsweredError);
    // close() after an answer leaves the session's connection alone.
    open.close();
    await client.write(new TextEncoder().encode("still up"));
    assert.deepEqual(
      await within(session.read(), WAIT_MS, "DATA after close()"),
      new TextEncoder().encode("still up"),
    );
    session.abort(ErrorCode.internal, "test over");
  });
});

Deno.test("pending open: reject sends the ERROR code and message the caller named, once", async () => {
  await withOpen({ host: "192.0.2.7", port: 25 }, async (client, open) => {
    assert.deepEqual(open.target, { kind: "address", host: "192.0.2.7", port: 25 });
    await open.reject(ErrorCode.unreachable, "cannot reach 192.0.2.7:25 (test)");
    const error = await within(
      client.opened.then(() => null, (e) => e),
      WAIT_MS,
      "the client's answer",
    );
    assert.ok(error instanceof RemoteError, `a RemoteError, got ${error}`);
    assert.equal(error.code, ErrorCode.unreachable);
    assert.equal(error.detail, "cannot reach 192.0.2.7:25 (test)");
    await assert.rejects(open.reject(ErrorCode.refused, "twice"), OpenAnsweredError);
    await assert.rejects(open.accept(), OpenAnsweredError);
  });
});

Deno.test("pending open: closed unanswered, the connection ends with no answer and cannot be answered", async () => {
  await withOpen(undefined, async (client, open) => {
    open.close();
    assert.equal(open.answered, true);
    const error = await within(
      client.opened.then(() => null, (e) => e),
      WAIT_MS,
      "the client's end",
    );
    assert.ok(error instanceof Error, "the client saw the connection end before an answer");
    assert.ok(!(error instanceof RemoteError), `no ERROR was sent, got ${error}`);
    await assert.rejects(open.accept(), OpenAnsweredError);
  });
});
