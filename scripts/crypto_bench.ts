/**
 * In-process speed of each crypto provider: AES-256-GCM seal+open MB/s at
 * 64 KiB and 64 B frames (one call at a time, and for Web Crypto also with
 * `--depth` calls in flight, as the data path pipelines them), and complete
 * NNpsk0 handshakes per second (both sides in one process, so each figure
 * is the cost of one initiator plus one responder).
 *
 *   deno run -A scripts/crypto_bench.ts [--seconds 2] [--depth 4] [--json PATH]
 *
 * Uses only `NNpsk0Handshake.create(role, psk, prologue, { provider })` and
 * `CipherState.fromKey(key, provider)`, so the same script measures older
 * trees (where the extra argument is ignored: Web Crypto only).
 * @module
 */

import { cpuUsage } from "node:process";
import { parseArgs } from "node:util";
import { CipherState, NNpsk0Handshake } from "../lib/protocol/noise.ts";

/** Web Crypto calls made so far (every crypto.subtle method is counted). */
let subtleCalls = 0;
for (
  const name of [
    "encrypt",
    "decrypt",
    "digest",
    "importKey",
    "exportKey",
    "deriveBits",
    "generateKey",
  ] as const
) {
  const original = crypto.subtle[name] as (...args: unknown[]) => unknown;
  (crypto.subtle as unknown as Record<string, unknown>)[name] = (...args: unknown[]) => {
    subtleCalls++;
    return original.apply(crypto.subtle, args);
  };
}

interface Provider {
  name: string;
  sync: boolean;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "2" },
    depth: { type: "string", default: "4" },
    json: { type: "string" },
    "webcrypto-only": { type: "boolean", default: false },
  },
});
const seconds = Number(values.seconds);
const depth = Number(values.depth);
const prologue = new TextEncoder().encode("cipherlink/2");

async function providers(): Promise<(Provider | undefined)[]> {
  const list: (Provider | undefined)[] = [undefined]; // the default: Web Crypto
  if (values["webcrypto-only"]) return list;
  const { loadCryptoProvider } = await import("../lib/protocol/crypto/select.ts");
  list.push(loadCryptoProvider("openssl") as Provider);
  return list;
}

/** CPU time (user + system, all threads) per step of the last rate() call, in µs. */
let lastCpuMicros = 0;

/** Runs `step` (which handles `unit` bytes or one item) for about `seconds`; per second. */
async function rate(step: () => unknown, batch: number): Promise<number> {
  // Warm up, then measure.
  for (let i = 0; i < batch; i++) await step();
  let count = 0;
  const cpu = cpuUsage();
  const started = performance.now();
  while (performance.now() - started < seconds * 1000) {
    for (let i = 0; i < batch; i++) {
      const r = step();
      if (r instanceof Promise) await r;
    }
    count += batch;
  }
  const used = cpuUsage(cpu);
  lastCpuMicros = (used.user + used.system) / count;
  return count / ((performance.now() - started) / 1000);
}

function pair(provider?: Provider): [CipherState, CipherState] {
  const key = crypto.getRandomValues(new Uint8Array(32));
  // deno-lint-ignore no-explicit-any
  const from = CipherState.fromKey as (k: Uint8Array, p?: any) => CipherState;
  return [from(key, provider), from(key, provider)];
}

/** seal then open one frame at a time; MB/s of plaintext. */
async function aead(size: number, provider?: Provider): Promise<number> {
  const [send, receive] = pair(provider);
  await send.encryptAt(0, new Uint8Array(5), new Uint8Array(1)); // the key is imported
  const header = new Uint8Array(5);
  const plaintext = crypto.getRandomValues(new Uint8Array(size));
  if (provider?.sync) {
    const sealed = new Uint8Array(size + 16);
    const opened = new Uint8Array(size);
    const perSecond = await rate(() => {
      const n = send.claimNonce();
      send.sealAt(n, header, plaintext, sealed);
      receive.openAt(n, header, sealed, opened);
    }, size > 4096 ? 16 : 1024);
    return perSecond * size / 1e6;
  }
  const perSecond = await rate(async () => {
    const n = send.claimNonce();
    const sealed = await send.encryptAt(n, header, plaintext);
    await receive.decryptAt(n, header, sealed);
  }, size > 4096 ? 4 : 256);
  return perSecond * size / 1e6;
}

/** Web Crypto with `depth` seal+open chains in flight (the data path's pipelining). */
async function aeadPipelined(size: number): Promise<number> {
  const [send, receive] = pair();
  await send.encryptAt(0, new Uint8Array(5), new Uint8Array(1));
  const header = new Uint8Array(5);
  const plaintext = crypto.getRandomValues(new Uint8Array(size));
  const one = async () => {
    const n = send.claimNonce();
    const sealed = await send.encryptAt(n, header, plaintext);
    await receive.decryptAt(n, header, sealed);
  };
  const perSecond = await rate(() => Promise.all(Array.from({ length: depth }, one)), 4);
  return perSecond * depth * size / 1e6;
}

const handshakePsk = crypto.getRandomValues(new Uint8Array(32));

/** One complete handshake, both sides, split included. */
async function oneHandshake(provider?: Provider): Promise<void> {
  // Older trees took a positional ephemeral key here: pass nothing for the default.
  const options = provider ? [{ provider }] : [];
  // deno-lint-ignore no-explicit-any
  const create = NNpsk0Handshake.create as (...args: any[]) => Promise<NNpsk0Handshake>;
  const init = await create("initiator", handshakePsk, prologue, ...options);
  const resp = await create("responder", handshakePsk, prologue, ...options);
  await resp.readMessage1(await init.writeMessage1());
  await init.readMessage2(await resp.writeMessage2());
  const [a, b] = await init.split();
  const [c, d] = await resp.split();
  for (const cs of [a, b, c, d] as (CipherState & { dispose?: () => void })[]) cs.dispose?.();
}

/** Complete handshakes per second. */
function handshakes(provider?: Provider): Promise<number> {
  return rate(() => oneHandshake(provider), 20);
}

/** Web Crypto calls one complete handshake makes (both sides; the per-key prefix cached). */
async function callsPerHandshake(provider?: Provider): Promise<number> {
  await oneHandshake(provider);
  const before = subtleCalls;
  await oneHandshake(provider);
  return subtleCalls - before;
}

const results: Record<string, Record<string, number>> = {};
for (const provider of await providers()) {
  const name = provider?.name ?? "webcrypto";
  const row: Record<string, number> = {
    "seal+open 64 KiB MB/s": await aead(65536, provider),
    "seal+open 64 B MB/s": await aead(64, provider),
  };
  if (!provider?.sync) {
    row[`seal+open 64 KiB MB/s, ${depth} in flight`] = await aeadPipelined(65536);
    row[`seal+open 64 B MB/s, ${depth} in flight`] = await aeadPipelined(64);
  }
  row["handshakes/s"] = await handshakes(provider);
  row["handshake CPU µs"] = lastCpuMicros;
  row["Web Crypto calls per handshake"] = await callsPerHandshake(provider);
  results[name] = row;
  console.log(
    `${name.padEnd(10)} ${
      Object.entries(row).map(([k, v]) => `${k}: ${v.toFixed(v < 10 ? 2 : 0)}`).join(" | ")
    }`,
  );
}
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify(
      {
        date: new Date().toISOString(),
        seconds,
        depth,
        machine: { cores: navigator.hardwareConcurrency, deno: Deno.version.deno },
        results,
      },
      null,
      2,
    ) + "\n",
  );
}
