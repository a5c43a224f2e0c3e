/**
 * The pre-shared key (lib/protocol/keys.ts): parsing the three key file formats
 * (protocol v2, section 4), loading files with their error messages and the
 * permission warning, writing new key files (cli.md, `keygen`), and the
 * fingerprint that names a key without revealing it.
 * @module
 */

import assert from "node:assert/strict";
import {
  encodeKey,
  fingerprint,
  generateKeyFile,
  KEY_FORMATS,
  loadKey,
  parseKey,
} from "../lib/protocol/keys.ts";
import { KeyFileError } from "../lib/base/errors.ts";
import { toHex } from "./helpers.ts";

const text = (s: string) => new TextEncoder().encode(s);
const base64Of = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes));

/** A key with every kind of byte a parser might trip on: NUL, CR, LF, high bytes. */
const KEY = Uint8Array.from({ length: 32 }, (_, i) => (i * 73 + 0x0a) & 0xff);

/** Runs `body` with a fresh temporary folder, removed afterwards. */
async function withTempDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-keys-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function writeKeyFile(path: string, bytes: Uint8Array, mode = 0o600): Promise<void> {
  await Deno.writeFile(path, bytes);
  await Deno.chmod(path, mode);
}

async function modeOf(path: string): Promise<number> {
  return ((await Deno.stat(path)).mode ?? 0) & 0o777;
}

Deno.test("keys: 32 raw bytes are the key", () => {
  assert.deepEqual(parseKey(KEY), KEY);
});

Deno.test("keys: 32 raw bytes plus a newline are the key", () => {
  assert.deepEqual(parseKey(Uint8Array.of(...KEY, 0x0a)), KEY);
});

Deno.test("keys: a raw key whose last byte is 0x0d survives a trailing newline", () => {
  const endsInCarriageReturn = Uint8Array.of(...KEY.subarray(0, 31), 0x0d);
  assert.deepEqual(parseKey(endsInCarriageReturn), endsInCarriageReturn);
  assert.deepEqual(parseKey(Uint8Array.of(...endsInCarriageReturn, 0x0a)), endsInCarriageReturn);
});

Deno.test("keys: a raw key whose last byte is 0x0a is taken whole, not as 31 bytes + newline", () => {
  const endsInNewline = Uint8Array.of(...KEY.subarray(0, 31), 0x0a);
  assert.deepEqual(parseKey(endsInNewline), endsInNewline);
});

Deno.test("keys: 64 hex characters in either case, with or without a newline", () => {
  const hex = toHex(KEY);
  for (const form of [hex, hex + "\n", hex.toUpperCase(), hex.toUpperCase() + "\n"]) {
    assert.deepEqual(parseKey(text(form)), KEY, JSON.stringify(form));
  }
});

Deno.test("keys: base64 of 32 bytes, with or without a newline", () => {
  const b64 = base64Of(KEY);
  assert.equal(b64.length, 44);
  assert.deepEqual(parseKey(text(b64)), KEY);
  assert.deepEqual(parseKey(text(b64 + "\n")), KEY);
});

Deno.test("keys: 31 or 33 raw bytes without a trailing newline are rejected", () => {
  assert.equal(parseKey(KEY.subarray(0, 31)), null);
  const thirtyThree = Uint8Array.of(...KEY, 0x41);
  assert.equal(parseKey(thirtyThree), null);
});

Deno.test("keys: 63 or 65 hex characters are rejected, so are non-hex characters", () => {
  const hex = toHex(KEY);
  assert.equal(parseKey(text(hex.slice(0, 63))), null);
  assert.equal(parseKey(text(hex.slice(0, 63) + "\n")), null);
  assert.equal(parseKey(text(hex + "0")), null);
  assert.equal(parseKey(text(hex + "0\n")), null);
  assert.equal(parseKey(text("g" + hex.slice(1))), null);
});

Deno.test("keys: malformed base64 and base64 of the wrong length are rejected", () => {
  const b64 = base64Of(KEY);
  assert.equal(parseKey(text(b64.slice(0, 43))), null, "padding missing");
  assert.equal(parseKey(text("!" + b64.slice(1))), null, "character outside the alphabet");
  assert.equal(parseKey(text(base64Of(KEY.subarray(0, 31)))), null, "31 bytes");
  assert.equal(parseKey(text(base64Of(Uint8Array.of(...KEY, 1)))), null, "33 bytes");
  assert.equal(parseKey(text(b64 + "\n\n")), null, "two newlines");
});

Deno.test("keys: an empty file, or a lone newline, is rejected", () => {
  assert.equal(parseKey(new Uint8Array(0)), null);
  assert.equal(parseKey(text("\n")), null);
});

Deno.test("keys: parseKey returns a copy, not a view of the input", () => {
  const input = KEY.slice();
  const key = parseKey(input);
  assert.ok(key);
  input.fill(0);
  assert.deepEqual(key, KEY);
});

Deno.test("keys: loadKey reads every format written by encodeKey", async () => {
  await withTempDir(async (dir) => {
    for (const format of KEY_FORMATS) {
      const path = `${dir}/${format}.key`;
      await writeKeyFile(path, encodeKey(KEY, format));
      const loaded = await loadKey(path);
      assert.deepEqual(loaded.key, KEY, format);
      assert.equal(loaded.warning, null, format);
    }
  });
});

Deno.test("keys: a missing key file names the file and the keygen command that creates it", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/nowhere/shared_key.key`;
    await assert.rejects(loadKey(path), (err: unknown) => {
      assert.ok(err instanceof KeyFileError);
      assert.ok(err.message.includes(path), err.message);
      assert.ok(err.message.includes(`cipherlink keygen --out ${path}`), err.message);
      return true;
    });
  });
});

Deno.test("keys: a malformed key file names the file and lists the accepted formats", async () => {
  await withTempDir(async (dir) => {
    const cases: [string, Uint8Array][] = [
      ["short", KEY.subarray(0, 31)],
      ["empty", new Uint8Array(0)],
      ["hex63", text(toHex(KEY).slice(0, 63))],
      ["large", new Uint8Array(4096)],
    ];
    for (const [name, bytes] of cases) {
      const path = `${dir}/${name}.key`;
      await writeKeyFile(path, bytes);
      await assert.rejects(loadKey(path), (err: unknown) => {
        assert.ok(err instanceof KeyFileError, name);
        assert.ok(err.message.includes(path), `${name}: ${err.message}`);
        assert.match(err.message, /malformed/, name);
        assert.match(err.message, /32 raw bytes/, name);
        assert.match(err.message, /64 hex/, name);
        assert.match(err.message, /base64/, name);
        return true;
      });
    }
  });
});

Deno.test("keys: a folder in place of the key file is a KeyFileError", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(loadKey(dir), KeyFileError);
  });
});

Deno.test("keys: a group- or other-readable key file loads with a chmod warning, 0600 without", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/shared_key.key`;
    for (const mode of [0o640, 0o604, 0o644, 0o660]) {
      await writeKeyFile(path, KEY, mode);
      const loaded = await loadKey(path);
      assert.deepEqual(loaded.key, KEY);
      assert.ok(loaded.warning, `mode ${mode.toString(8)} gave no warning`);
      assert.ok(loaded.warning.includes(path), loaded.warning);
      assert.ok(loaded.warning.includes(`chmod 600 ${path}`), loaded.warning);
      assert.ok(loaded.warning.includes(mode.toString(8)), loaded.warning);
    }
    for (const mode of [0o600, 0o400]) {
      await writeKeyFile(path, KEY, mode);
      assert.equal((await loadKey(path)).warning, null, `mode ${mode.toString(8)}`);
    }
  });
});

Deno.test("keys: generateKeyFile writes a loadable key with mode 0600 in each format", async () => {
  await withTempDir(async (dir) => {
    const keys: string[] = [];
    for (const format of KEY_FORMATS) {
      const path = `${dir}/${format}.key`;
      const { fingerprint: printed } = await generateKeyFile(path, format, false);
      assert.equal(await modeOf(path), 0o600, format);
      const bytes = await Deno.readFile(path);
      const { key, warning } = await loadKey(path);
      assert.equal(warning, null, format);
      assert.equal(
        printed,
        await fingerprint(key),
        `${format}: the fingerprint is of the key written`,
      );
      if (format === "raw") assert.equal(bytes.byteLength, 32);
      if (format === "hex") assert.match(new TextDecoder().decode(bytes), /^[0-9a-f]{64}\n$/);
      if (format === "base64") {
        assert.match(new TextDecoder().decode(bytes), /^[A-Za-z0-9+/]{43}=\n$/);
      }
      keys.push(toHex(key));
    }
    assert.equal(new Set(keys).size, keys.length, "every key is fresh");
  });
});

Deno.test("keys: generateKeyFile refuses to overwrite an existing file without force", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/shared_key.key`;
    await writeKeyFile(path, KEY);
    await assert.rejects(generateKeyFile(path, "raw", false), (err: unknown) => {
      assert.ok(err instanceof KeyFileError);
      assert.ok(err.message.includes(path), err.message);
      assert.match(err.message, /already exists/);
      assert.match(err.message, /--force/);
      return true;
    });
    assert.deepEqual(await Deno.readFile(path), KEY, "the old key is untouched");
  });
});

Deno.test("keys: generateKeyFile with force replaces the key and tightens the mode to 0600", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/shared_key.key`;
    await writeKeyFile(path, KEY, 0o644);
    const { fingerprint: printed } = await generateKeyFile(path, "hex", true);
    const { key } = await loadKey(path);
    assert.notDeepEqual(key, KEY);
    assert.equal(printed, await fingerprint(key));
    assert.equal(await modeOf(path), 0o600);
  });
});

Deno.test("keys: generateKeyFile creates missing parent folders", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/a/b/c/shared_key.key`;
    await generateKeyFile(path, "base64", false);
    assert.ok((await Deno.stat(`${dir}/a/b/c`)).isDirectory);
    assert.equal((await loadKey(path)).key.byteLength, 32);
  });
});

Deno.test("keys: the fingerprint is SHA256: + base64 of the first 12 bytes of SHA-256(key)", async () => {
  const print = await fingerprint(KEY);
  assert.match(print, /^SHA256:[A-Za-z0-9+/]{16}$/);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", KEY));
  assert.equal(print, "SHA256:" + base64Of(digest.subarray(0, 12)));
  assert.equal(await fingerprint(KEY.slice()), print, "the same key, the same fingerprint");
  const other = KEY.slice();
  other[0] ^= 1;
  assert.notEqual(await fingerprint(other), print, "one bit changes it");
});

Deno.test("keys: the fingerprint reveals no encoding of the key", async () => {
  for (const key of [KEY, new Uint8Array(32), new Uint8Array(32).fill(0xff)]) {
    const body = (await fingerprint(key)).slice("SHA256:".length);
    const encodings = [
      toHex(key),
      toHex(key).toUpperCase(),
      base64Of(key),
      String.fromCharCode(...key),
    ];
    for (const encoding of encodings) {
      assert.ok(!encoding.includes(body), "a piece of the key's encoding is the fingerprint");
      assert.ok(!body.includes(encoding), "the fingerprint holds the key's encoding");
    }
    assert.notEqual(body, base64Of(key.subarray(0, 12)), "the fingerprint is hashed, not cut");
  }
});
