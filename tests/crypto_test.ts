/**
 * The crypto providers: the short differential run (the soak runs a million
 * cases), each provider's checks at its edges, and how the openssl provider
 * is found, refused and granted.
 * @module
 */

import assert from "node:assert/strict";
import { differential } from "../scripts/soak/differential.ts";
import { AuthenticationError, CryptoLibraryError } from "../lib/base/errors.ts";
import { loadCryptoProvider } from "../lib/protocol/crypto/select.ts";
import { libcryptoPathsFor } from "../lib/cli/ffi_grant.ts";
import { locateLibcrypto } from "../lib/protocol/crypto/locate.ts";
import type { AeadKey } from "../lib/protocol/crypto/provider.ts";
import { openssl, opensslMissing, providers, webcrypto } from "./providers.ts";

const needsOpenssl = { ignore: openssl === null };

Deno.test({
  name:
    "crypto: 3,000 seeded AES-GCM cases sealed by each provider open under the other; tampering is refused",
  ...needsOpenssl,
  async fn() {
    for (const [a, b] of [[openssl!, webcrypto], [webcrypto, openssl!]]) {
      const rows = await differential({ cases: 1500, primitiveCases: 250, seed: 7, a, b });
      for (const row of rows) {
        assert.equal(row.failed, 0, `${row.tried}: ${row.failures.join("; ")}`);
        assert.ok(row.count > 0);
      }
      assert.ok(Number(rows[0].data.tampered) > 100, "tampered cases ran");
    }
  },
});

for (const provider of providers) {
  Deno.test(`crypto (${provider.name}): wrong sizes are refused before any call`, async () => {
    await assert.rejects(async () => await provider.aeadKey(new Uint8Array(31)), RangeError);
    const key = await provider.aeadKey(new Uint8Array(32));
    try {
      const nonce = new Uint8Array(12);
      const none = new Uint8Array(0);
      await assert.rejects(async () => await key.seal(new Uint8Array(11), none, none), RangeError);
      await assert.rejects(
        async () => await key.seal(nonce, none, new Uint8Array(4), new Uint8Array(19)),
        RangeError,
      );
      await assert.rejects(
        async () => await key.open(nonce, none, new Uint8Array(15)),
        AuthenticationError,
      );
      await assert.rejects(
        async () => await provider.x25519(await provider.generateX25519(), new Uint8Array(33)),
        RangeError,
      );
    } finally {
      key.dispose();
    }
  });
}

Deno.test({
  name:
    "crypto (openssl): outputs that partly overlap their input are refused; exact in-place works",
  ...needsOpenssl,
  fn() {
    const key = openssl!.aeadKey(new Uint8Array(32).fill(1)) as AeadKey;
    const nonce = new Uint8Array(12);
    const none = new Uint8Array(0);
    const buffer = new Uint8Array(64);
    const plaintext = buffer.subarray(0, 16);
    assert.throws(() => key.seal(nonce, none, plaintext, buffer.subarray(8, 40)), RangeError);
    buffer.fill(3, 0, 16);
    const sealed = key.seal(nonce, none, plaintext, buffer.subarray(0, 32)) as Uint8Array;
    const reference = key.seal(nonce, none, new Uint8Array(16).fill(3)) as Uint8Array;
    assert.deepEqual([...sealed], [...reference]);
    const opened = key.open(nonce, none, sealed, buffer.subarray(0, 16)) as Uint8Array;
    assert.deepEqual([...opened], new Array(16).fill(3));
    key.dispose();
    assert.throws(() => key.seal(nonce, none, plaintext), TypeError);
  },
});

Deno.test("crypto: webcrypto needs nothing; an explicit --libcrypto that is not libcrypto 3 is a clear error", () => {
  assert.equal(loadCryptoProvider("webcrypto"), webcrypto);
  for (
    const [path, why] of [
      ["/nonexistent/libcrypto.so.3", /cannot open shared object file|No such file/],
      ["/etc/hostname", /invalid ELF header|file too short|cannot load/],
    ] as const
  ) {
    assert.throws(
      () => loadCryptoProvider("openssl", path),
      (err: unknown) =>
        err instanceof CryptoLibraryError &&
        err.message.startsWith(`--crypto openssl cannot load ${path}: `) && why.test(err.message),
    );
  }
});

Deno.test("crypto: when no libcrypto is found the error names every path tried and how to fix it", () => {
  const tried = ["/nowhere/a/libcrypto.so.3", "/nowhere/b/libcrypto.so.3"];
  assert.throws(
    () => loadCryptoProvider("openssl", undefined, () => tried),
    (err: unknown) =>
      err instanceof CryptoLibraryError && err.message.includes(tried.join(", ")) &&
      /--libcrypto PATH/.test(err.message) && /libssl3/.test(err.message),
  );
});

Deno.test("crypto: the launcher's grant names the library only when openssl is asked for", async () => {
  const found = locateLibcrypto().path;
  assert.deepEqual(libcryptoPathsFor(["server", "--listen", "127.0.0.1:0"]), []);
  assert.deepEqual(libcryptoPathsFor(["client", "--crypto", "webcrypto", "hi"]), []);
  assert.deepEqual(
    libcryptoPathsFor(["client", "--crypto=openssl", "--libcrypto", "/opt/x/libcrypto.so.3"]),
    ["/opt/x/libcrypto.so.3"],
  );
  assert.deepEqual(
    libcryptoPathsFor(["server", "--crypto", "openssl"]),
    found === undefined ? [] : [found],
  );
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-test-" });
  try {
    const file = `${dir}/tunnels.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        tunnels: [
          { name: "a", role: "server", listen: "127.0.0.1:0", key: "k" },
          {
            name: "b",
            role: "server",
            listen: "127.0.0.1:0",
            key: "k",
            crypto: "openssl",
            libcrypto: "lib/libcrypto.so.3",
          },
        ],
      }),
    );
    assert.deepEqual(libcryptoPathsFor(["server", "--config", file]), [
      `${dir}/lib/libcrypto.so.3`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

if (opensslMissing) Deno.test({ name: opensslMissing, ignore: true, fn() {} });
