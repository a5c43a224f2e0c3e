/**
 * The library surface (lib/mod.ts): a program can run a server and do the
 * prototype's one round trip, and a session, with nothing but mod.ts.
 * @module
 */

import assert from "node:assert/strict";
import { AuthenticationError, connect, forward, Logger, TunnelServer } from "../lib/mod.ts";
import { runArgv } from "./process.ts";

Deno.test("mod: forward() does one encrypted round trip through an in-process TunnelServer", async () => {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const server = await TunnelServer.start({
    listen: { host: "127.0.0.1", port: 0 },
    key,
    logger: new Logger("error"),
  });
  try {
    const address = { host: "127.0.0.1", port: server.addr.port };
    const reply = await forward(new TextEncoder().encode("hello, library"), {
      server: address,
      key,
    });
    assert.equal(new TextDecoder().decode(reply), "hello, library");

    const session = await connect({ server: address, key });
    const writer = session.writable.getWriter();
    await writer.write(Uint8Array.of(1, 2, 3));
    await writer.close();
    const chunks: number[] = [];
    for await (const chunk of session.readable) chunks.push(...chunk);
    assert.deepEqual(chunks, [1, 2, 3]);
    assert.equal((await session.ended).error, null);

    await assert.rejects(
      forward(Uint8Array.of(9), { server: address, key: new Uint8Array(32) }),
      AuthenticationError,
    );
  } finally {
    await server.shutdown();
  }
});

Deno.test("mod: the usage example in lib/mod.ts type-checks and runs (deno test --doc)", async () => {
  const run = await runArgv([
    Deno.execPath(),
    "test",
    "--doc",
    "--allow-net=127.0.0.1",
    new URL("../lib/mod.ts", import.meta.url).pathname,
  ], { ms: 60_000 });
  const output = run.stdout + run.stderr;
  assert.equal(run.code, 0, output);
  assert.match(output, /1 passed/, output);
});
