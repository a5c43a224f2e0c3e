/**
 * The crypto providers, differentially: seeded random AES-256-GCM cases
 * (key, nonce, AD, plaintext of 0..65535 bytes) sealed by each provider and
 * opened by the other, both ways, the two ciphertexts byte-equal; tampered
 * tags, AD, ciphertexts and nonces refused by both; and X25519 (public keys,
 * shared secrets, low-order points), HKDF and SHA-256 compared on random
 * inputs. Case shapes come from fast-check (seeded, so a failure reruns with
 * the same --seed); the bytes are slices of one seeded pool, at random
 * (unaligned) offsets.
 * @module
 */

import { equalBytes } from "../../lib/base/bytes.ts";
import fc from "npm:fast-check@3";
import type { AeadKey, CryptoProvider, X25519KeyPair } from "../../lib/protocol/crypto/provider.ts";
import { AuthenticationError } from "../../lib/base/errors.ts";
import { locateLibcrypto } from "../../lib/protocol/crypto/locate.ts";
import { loadCryptoProvider } from "../../lib/protocol/crypto/select.ts";
import { webcrypto } from "../../lib/protocol/crypto/webcrypto.ts";
import { Rng, type Row, RowBuilder } from "./common.ts";

/** What to run. */
export interface DifferentialOptions {
  /** AEAD cases (each: 2 seals, 2 opens; 1 in 8 also tampered). */
  cases: number;
  /** X25519 / HKDF / SHA-256 cases (each checks all three). */
  primitiveCases: number;
  seed: number;
  /** The two providers compared. */
  a: CryptoProvider;
  b: CryptoProvider;
  /** Cases run concurrently (asynchronous providers pipeline their calls). */
  batch?: number;
}

const POOL_SIZE = (1 << 20) + 65536;
const MAX_PLAINTEXT = 65535;
const TAMPERS = ["tag", "ad", "ciphertext", "nonce"] as const;

/** A deterministic byte pool from the seed: the source of every input. */
function pool(seed: number): Uint8Array {
  return new Rng(seed).bytes(POOL_SIZE);
}

/** Plaintext lengths: edges, then log-uniform over 0..65535 (every size class gets cases). */
const lengthArb = fc.oneof(
  { weight: 1, arbitrary: fc.constantFrom(0, 1, 15, 16, 17, 31, 32, 33, 4095, 4096, 65518, 65535) },
  {
    weight: 15,
    arbitrary: fc.tuple(fc.integer({ min: 0, max: 16 }), fc.nat()).map(([bits, r]) =>
      Math.min(MAX_PLAINTEXT, r % (2 ** bits))
    ),
  },
);

const caseArb = fc.record({
  key: fc.nat(POOL_SIZE - 32),
  nonce: fc.nat(POOL_SIZE - 12),
  ad: fc.nat(POOL_SIZE - 2048),
  adLength: fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 0, max: 64 }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 2048 }) },
  ),
  plaintext: fc.nat(POOL_SIZE - MAX_PLAINTEXT),
  length: lengthArb,
  /** Where the seal lands: a new array, or inside a frame buffer at this offset. */
  frameOffset: fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 13 })),
  tamper: fc.oneof(
    { weight: 7, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.constantFrom(...TAMPERS) },
  ),
  tamperAt: fc.nat(),
  bit: fc.integer({ min: 0, max: 7 }),
});
type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

/** Resolves true when `run` fails with AuthenticationError (thrown or rejected). */
async function refuses(run: () => unknown): Promise<boolean> {
  try {
    await run();
    return false;
  } catch (err) {
    return err instanceof AuthenticationError;
  }
}

function flip(bytes: Uint8Array, at: number, bit: number): Uint8Array {
  const copy = bytes.slice();
  copy[at % copy.byteLength] ^= 1 << bit;
  return copy;
}

/** Seal, cross-open and (maybe) tamper one case; returns the reasons it failed. */
async function aeadCase(bytes: Uint8Array, c: Case, a: CryptoProvider, b: CryptoProvider) {
  const failures: string[] = [];
  const key = bytes.subarray(c.key, c.key + 32);
  const nonce = bytes.subarray(c.nonce, c.nonce + 12);
  const ad = bytes.subarray(c.ad, c.ad + c.adLength);
  const plaintext = bytes.subarray(c.plaintext, c.plaintext + c.length);
  const keys: AeadKey[] = [];
  try {
    const ka = await a.aeadKey(key);
    keys.push(ka);
    const kb = await b.aeadKey(key);
    keys.push(kb);
    const out = c.frameOffset < 0
      ? undefined
      : new Uint8Array(c.frameOffset + c.length + 16).subarray(c.frameOffset);
    const [sealedA, sealedB] = await Promise.all([
      ka.seal(nonce, ad, plaintext, out),
      kb.seal(nonce, ad, plaintext),
    ]);
    if (!equalBytes(sealedA, sealedB)) failures.push(`${c.length} B: the ciphertexts differ`);
    const [openedByB, openedByA] = await Promise.all([
      kb.open(nonce, ad, sealedA),
      ka.open(nonce, ad, sealedB),
    ]);
    if (!equalBytes(openedByB, plaintext)) {
      failures.push(`${c.length} B: ${b.name} opened ${a.name}'s wrong`);
    }
    if (!equalBytes(openedByA, plaintext)) {
      failures.push(`${c.length} B: ${a.name} opened ${b.name}'s wrong`);
    }
    if (c.tamper) {
      let badNonce = nonce, badAd = ad, badSealed = sealedA;
      if (c.tamper === "tag") {
        badSealed = flip(sealedA, c.length + (c.tamperAt % 16), c.bit);
      } else if (c.tamper === "ciphertext" && c.length > 0) {
        badSealed = flip(sealedA, c.tamperAt % c.length, c.bit);
      } else if (c.tamper === "ad" && c.adLength > 0) {
        badAd = flip(ad, c.tamperAt, c.bit);
      } else if (c.tamper === "ad") {
        badAd = Uint8Array.of(c.bit); // AD added where there was none
      } else {
        badNonce = flip(nonce, c.tamperAt, c.bit);
      }
      for (const [who, k] of [[a.name, ka], [b.name, kb]] as const) {
        if (!await refuses(() => k.open(badNonce, badAd, badSealed))) {
          failures.push(`${c.length} B: ${who} accepted a tampered ${c.tamper}`);
        }
      }
    }
  } catch (err) {
    failures.push(`${c.length} B: ${(err as Error).message}`);
  } finally {
    for (const k of keys) k.dispose();
  }
  return failures;
}

/** Points of small order on Curve25519 (and non-canonical encodings of them). */
const LOW_ORDER = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
  "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
].map((hex) => Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16)));

const primitiveArb = fc.record({
  privateA: fc.nat(POOL_SIZE - 32),
  privateB: fc.nat(POOL_SIZE - 32),
  stranger: fc.nat(POOL_SIZE - 32),
  salt: fc.nat(POOL_SIZE - 4096),
  saltLength: fc.integer({ min: 0, max: 100 }),
  ikm: fc.nat(POOL_SIZE - 4096),
  ikmLength: fc.integer({ min: 0, max: 200 }),
  okmLength: fc.oneof(fc.constantFrom(32, 64, 96), fc.integer({ min: 1, max: 255 * 32 })),
  hashInput: fc.nat(POOL_SIZE - 8192),
  hashLength: fc.integer({ min: 0, max: 8192 }),
  split: fc.nat(),
});
type PrimitiveCase = typeof primitiveArb extends fc.Arbitrary<infer T> ? T : never;

/** Both refuse it, or both give the same bytes. */
async function sameX25519(
  a: CryptoProvider,
  pa: X25519KeyPair,
  b: CryptoProvider,
  pb: X25519KeyPair,
  remote: Uint8Array,
): Promise<boolean> {
  const outcome = async (p: CryptoProvider, k: X25519KeyPair) => {
    try {
      return await p.x25519(k, remote);
    } catch (err) {
      if (err instanceof AuthenticationError) return null;
      throw err;
    }
  };
  const [x, y] = await Promise.all([outcome(a, pa), outcome(b, pb)]);
  return x === null ? y === null : y !== null && equalBytes(x, y);
}

async function primitiveCase(
  bytes: Uint8Array,
  c: PrimitiveCase,
  a: CryptoProvider,
  b: CryptoProvider,
): Promise<string[]> {
  const failures: string[] = [];
  const pairs: X25519KeyPair[] = [];
  try {
    const privA = bytes.subarray(c.privateA, c.privateA + 32);
    const privB = bytes.subarray(c.privateB, c.privateB + 32);
    const [aA, bA, aB, bB] = await Promise.all([
      a.importX25519(privA),
      b.importX25519(privA),
      a.importX25519(privB),
      b.importX25519(privB),
    ]);
    pairs.push(aA, bA, aB, bB);
    if (!equalBytes(aA.publicKey, bA.publicKey)) failures.push("X25519 public keys differ");
    const [ab, ba] = await Promise.all([a.x25519(aA, bB.publicKey), b.x25519(bB, aA.publicKey)]);
    if (!equalBytes(ab, ba)) failures.push("X25519 shared secrets differ");
    const stranger = bytes.subarray(c.stranger, c.stranger + 32);
    if (!await sameX25519(a, aA, b, bA, stranger)) {
      failures.push("X25519 of a random point differs");
    }
    const low = LOW_ORDER[c.split % LOW_ORDER.length];
    if (!await refuses(() => a.x25519(aA, low)) || !await refuses(() => b.x25519(bA, low))) {
      failures.push("a low-order point was accepted");
    }
    const salt = bytes.subarray(c.salt, c.salt + c.saltLength);
    const ikm = bytes.subarray(c.ikm, c.ikm + c.ikmLength);
    const [ha, hb] = await Promise.all([
      a.hkdf(salt, ikm, c.okmLength),
      b.hkdf(salt, ikm, c.okmLength),
    ]);
    if (!equalBytes(ha, hb)) failures.push(`HKDF of ${c.okmLength} bytes differs`);
    const input = bytes.subarray(c.hashInput, c.hashInput + c.hashLength);
    const cut = c.hashLength === 0 ? 0 : c.split % c.hashLength;
    const [sa, sb] = await Promise.all([
      a.sha256(input.subarray(0, cut), input.subarray(cut)),
      b.sha256(input),
    ]);
    if (!equalBytes(sa, sb)) failures.push(`SHA-256 of ${c.hashLength} bytes differs`);
  } catch (err) {
    failures.push(`primitives: ${(err as Error).message}`);
  } finally {
    for (const p of pairs) p.dispose();
  }
  return failures;
}

/** Runs `count` cases of `arb` through `check`, `batch` at a time, seeded per batch. */
async function runCases<T>(
  row: RowBuilder,
  arb: fc.Arbitrary<T>,
  count: number,
  seed: number,
  batch: number,
  check: (c: T) => Promise<string[]>,
): Promise<void> {
  for (let done = 0, round = 0; done < count; round++) {
    const size = Math.min(batch, count - done);
    const cases = fc.sample(arb, { seed: seed * 1_000_003 + round, numRuns: size });
    const results = await Promise.all(cases.map(check));
    for (const failures of results) {
      row.tried();
      if (failures.length > 0) row.fail(`seed ${seed} batch ${round}: ${failures.join("; ")}`);
    }
    done += size;
  }
}

/**
 * The soak suite: openssl against webcrypto, or one skipped row where no
 * libcrypto 3 can be found.
 */
export function cryptoProviders(
  options: Omit<DifferentialOptions, "a" | "b">,
): Promise<Row[]> {
  const located = locateLibcrypto();
  if (located.path === undefined) {
    const row = new RowBuilder("crypto", "openssl and webcrypto providers, differentially");
    row.skip(`no OpenSSL 3 libcrypto found (tried ${located.tried.join(", ")})`);
    return Promise.resolve([row.done()]);
  }
  return differential({ ...options, a: loadCryptoProvider("openssl"), b: webcrypto });
}

/** The suite: one row for the AEAD cases, one for the other primitives. */
export async function differential(options: DifferentialOptions): Promise<Row[]> {
  const { a, b, seed } = options;
  const batch = options.batch ?? 64;
  const bytes = pool(seed);
  const pair = `${a.name} and ${b.name}`;

  const aead = new RowBuilder(
    "crypto",
    `AES-256-GCM: sealed by each of ${pair}, opened by the other; tampered ones refused`,
  );
  const started = performance.now();
  let tampered = 0, plaintextBytes = 0;
  await runCases(aead, caseArb, options.cases, seed, batch, (c) => {
    if (c.tamper) tampered++;
    plaintextBytes += c.length;
    return aeadCase(bytes, c, a, b);
  });
  const seconds = (performance.now() - started) / 1000;
  aead.set("cases", aead.count);
  aead.set("tampered", tampered);
  aead.set("plaintext_mib", Math.round(plaintextBytes / 2 ** 20));
  aead.set("seconds", Math.round(seconds));
  aead.figures(
    `seed ${seed}; ${tampered} tampered (tag, AD, ciphertext, nonce); ${
      Math.round(plaintextBytes / 2 ** 20)
    } MiB sealed per provider in ${Math.round(seconds)} s`,
  );

  const primitives = new RowBuilder(
    "crypto",
    `X25519, HKDF-SHA-256, SHA-256: ${pair} agree (low-order points refused by both)`,
  );
  await runCases(
    primitives,
    primitiveArb,
    options.primitiveCases,
    seed + 1,
    batch,
    (c) => primitiveCase(bytes, c, a, b),
  );
  primitives.figures(
    `seed ${seed}; each case: keys, DH, a random point, a low-order point, HKDF, SHA-256`,
  );
  return [aead.done(), primitives.done()];
}
