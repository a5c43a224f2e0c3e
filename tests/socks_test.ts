/**
 * The SOCKS5 server side (lib/tunnel/socks.ts, RFC 1928) over real TCP on
 * 127.0.0.1: NO AUTH negotiation, CONNECT with IPv4, IPv6 and domain
 * addresses, refusal of other methods, commands and address types, and the
 * mapping from a tunnel's ERROR codes to SOCKS5 reply codes.
 * @module
 */

import assert from "node:assert/strict";
import { readExactly, readToEnd, rejectsWith } from "./helpers.ts";
import {
  acceptSocks,
  replySocks,
  SocksError,
  SocksReply,
  socksReplyFor,
} from "../lib/tunnel/socks.ts";
import { RemoteError } from "../lib/base/errors.ts";
import { writeAll } from "../lib/protocol/conn.ts";
import { parseIPv6 } from "../lib/protocol/address.ts";

const encoder = new TextEncoder();

/** A SOCKS client socket and the server-side socket it is connected to, on 127.0.0.1. */
interface Pair {
  client: Deno.TcpConn;
  server: Deno.TcpConn;
}

/** Runs `body` with a fresh TCP pair, closing both ends afterwards. */
async function withPair(body: (pair: Pair) => Promise<void>): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let pair: Pair;
  try {
    const [client, server] = await Promise.all([
      Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      listener.accept(),
    ]);
    pair = { client, server };
  } finally {
    listener.close();
  }
  const closeBoth = () => {
    for (const conn of [pair.client, pair.server]) {
      try {
        conn.close();
      } catch {
        // The test closed it already.
      }
    }
  };
  // Bounds a broken implementation: a side waiting for bytes that never come
  // fails when its socket is closed under it, instead of hanging the suite.
  const watchdog = setTimeout(closeBoth, 5000);
  try {
    await body(pair);
  } finally {
    clearTimeout(watchdog);
    closeBoth();
  }
}

/** The reply replySocks sends: version 5, `code`, bound address 0.0.0.0:0. */
function replyBytes(code: number): Uint8Array {
  return Uint8Array.of(5, code, 0, 1, 0, 0, 0, 0, 0, 0);
}

/** A CONNECT (or other command) request for ATYP + address + port. */
function request(command: number, addressType: number, address: number[], port: number) {
  return Uint8Array.of(5, command, 0, addressType, ...address, port >> 8, port & 0xff);
}

const domain = (name: string) => {
  const bytes = encoder.encode(name);
  return [bytes.byteLength, ...bytes];
};

/**
 * Plays a well-behaved client: greets offering `methods`, waits for the
 * method choice, then sends `requestBytes`. Resolves the method choice.
 */
async function client(conn: Deno.Conn, methods: number[], requestBytes: Uint8Array) {
  await writeAll(conn, Uint8Array.of(5, methods.length, ...methods));
  const choice = await readExactly(conn, 2);
  if (choice[1] === 0x00) await writeAll(conn, requestBytes);
  return choice;
}

Deno.test("socks: NO AUTH is chosen, CONNECT to IPv4 is read, and the success reply is sent", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    const [choice, target] = await Promise.all([
      // A client that also offers username/password still gets NO AUTH.
      client(socksClient, [0x02, 0x00], request(1, 1, [127, 0, 0, 1], 8080)),
      acceptSocks(server),
    ]);
    assert.deepEqual(choice, Uint8Array.of(5, 0x00));
    assert.deepEqual(target, { host: "127.0.0.1", port: 8080 });
    await replySocks(server, SocksReply.succeeded);
    assert.deepEqual(await readExactly(socksClient, 10), replyBytes(0x00));
  });
});

Deno.test("socks: CONNECT to an IPv6 address is read as that address", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    const address = parseIPv6("2001:db8::42")!;
    const [, target] = await Promise.all([
      client(socksClient, [0x00], request(1, 4, address, 443)),
      acceptSocks(server),
    ]);
    assert.ok(target);
    assert.equal(target.port, 443);
    assert.deepEqual(parseIPv6(target.host), address);
  });
});

Deno.test("socks: CONNECT to a domain name is read as that name", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    const [, target] = await Promise.all([
      client(socksClient, [0x00], request(1, 3, domain("db.internal"), 5432)),
      acceptSocks(server),
    ]);
    assert.deepEqual(target, { host: "db.internal", port: 5432 });
  });
});

Deno.test("socks: a request that arrives one byte per write is still read whole", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    const bytes = [
      ...Uint8Array.of(5, 1, 0x00),
      ...request(1, 3, domain("slow.example"), 80),
    ];
    const trickle = async () => {
      for (const byte of bytes) await writeAll(socksClient, Uint8Array.of(byte));
    };
    const [, target] = await Promise.all([trickle(), acceptSocks(server)]);
    assert.deepEqual(target, { host: "slow.example", port: 80 });
    assert.deepEqual(await readExactly(socksClient, 2), Uint8Array.of(5, 0x00));
  });
});

Deno.test("socks: a client offering only username/password gets 0xFF and is refused", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    await writeAll(socksClient, Uint8Array.of(5, 1, 0x02));
    // No request follows: a server that accepted the method would hit EOF.
    await socksClient.closeWrite();
    await assert.rejects(acceptSocks(server), SocksError);
    assert.deepEqual(await readExactly(socksClient, 2), Uint8Array.of(5, 0xff));
  });
});

Deno.test("socks: a client offering no method at all gets 0xFF", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    await writeAll(socksClient, Uint8Array.of(5, 0));
    await socksClient.closeWrite();
    await assert.rejects(acceptSocks(server), SocksError);
    assert.deepEqual(await readExactly(socksClient, 2), Uint8Array.of(5, 0xff));
  });
});

Deno.test("socks: BIND and UDP ASSOCIATE are answered 0x07 (command not supported)", async () => {
  for (const command of [2, 3]) {
    await withPair(async ({ client: socksClient, server }) => {
      const [, target] = await Promise.all([
        client(socksClient, [0x00], request(command, 1, [127, 0, 0, 1], 9000)),
        acceptSocks(server),
      ]);
      assert.equal(target, null, `command ${command} must not yield a target`);
      assert.deepEqual(await readExactly(socksClient, 10), replyBytes(0x07), `command ${command}`);
    });
  }
});

Deno.test("socks: an unsupported command's whole request is consumed before the reply", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    // Domain address: the server must read its length byte, name and port,
    // so that the byte after the request is the next thing it would read.
    const [, target] = await Promise.all([
      client(socksClient, [0x00], request(2, 3, domain("bind.example"), 21)),
      acceptSocks(server),
    ]);
    assert.equal(target, null);
    assert.deepEqual(await readExactly(socksClient, 10), replyBytes(0x07));
    await writeAll(socksClient, Uint8Array.of(0x5a));
    assert.deepEqual(await readExactly(server, 1), Uint8Array.of(0x5a));
  });
});

Deno.test("socks: an unknown address type is answered 0x08 (address type not supported)", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    const [, target] = await Promise.all([
      client(socksClient, [0x00], request(1, 2, [1, 2, 3, 4], 80)),
      acceptSocks(server),
    ]);
    assert.equal(target, null);
    assert.deepEqual(await readExactly(socksClient, 10), replyBytes(0x08));
  });
});

Deno.test("socks: a SOCKS4 client is refused without any reply", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    await writeAll(socksClient, Uint8Array.of(4, 1, 0, 80, 127, 0, 0, 1, 0));
    await rejectsWith(acceptSocks(server), SocksError, /version 4/);
    server.close();
    assert.deepEqual(await readToEnd(socksClient), new Uint8Array(0));
  });
});

Deno.test("socks: a client that hangs up mid-request is a SocksError", async () => {
  await withPair(async ({ client: socksClient, server }) => {
    await writeAll(socksClient, Uint8Array.of(5, 1, 0x00, 5, 1, 0, 1, 127));
    await socksClient.closeWrite();
    await assert.rejects(acceptSocks(server), SocksError);
  });
});

Deno.test("socks: tunnel errors map to SOCKS5 reply codes", () => {
  assert.equal(socksReplyFor(new RemoteError(2, "db.internal:5432 is not allowed")), 0x02);
  assert.equal(
    socksReplyFor(new RemoteError(3, "127.0.0.1:9 connection refused")),
    0x05,
  );
  assert.equal(socksReplyFor(new RemoteError(3, "Connection Refused (os error 111)")), 0x05);
  assert.equal(socksReplyFor(new RemoteError(3, "no route to host")), 0x04);
  assert.equal(socksReplyFor(new RemoteError(3, "name does not resolve")), 0x04);
  for (const code of [1, 4, 5, 6]) {
    assert.equal(socksReplyFor(new RemoteError(code, "connection refused")), 0x01, `code ${code}`);
  }
  assert.equal(socksReplyFor(new Error("connection refused")), 0x01, "not a RemoteError");
  assert.equal(socksReplyFor("weird"), 0x01);
});

Deno.test("socks: reply codes are those of RFC 1928 section 6", () => {
  assert.deepEqual(SocksReply, {
    succeeded: 0x00,
    generalFailure: 0x01,
    notAllowed: 0x02,
    networkUnreachable: 0x03,
    hostUnreachable: 0x04,
    connectionRefused: 0x05,
    ttlExpired: 0x06,
    commandNotSupported: 0x07,
    addressTypeNotSupported: 0x08,
  });
});
