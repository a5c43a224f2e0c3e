/**
 * `deno task soak`: the reliability and security suite, against real server
 * and client processes on 127.0.0.1 (and in network namespaces it creates and
 * removes for the broken-network faults). Prints one table (plain and
 * Markdown) and writes it to bench/results/soak.json; exits 1 if anything
 * failed.
 *
 *   deno task soak              the full run (about 10 minutes on 2 cores)
 *   deno task soak --quick      the short variant the tests run
 *   deno task soak --only fuzz,keys --seed 7 --sessions 2000
 *
 * Suites: fuzz (codec, handshake, state machine; in process and over TCP),
 * hostile (slowloris, idle, replay, wrong-key floods vs a legitimate client's
 * latency; hostile spellings of an allowed address; a pre-authentication
 * flood of thousands of sockets against --max-conns 50; a PING flood from a
 * client that never reads, with the server's RSS growth bounded), load (sessions through a port forward, SHA-256 checked), faults
 * (server killed, upstream refusing/resetting, SIGTERM drain, lossy network,
 * black hole), keys (permission warnings; the key in no output), crypto (the
 * openssl and webcrypto providers differentially: a million seeded AES-GCM
 * cases sealed by each and opened by the other, tampering refused by both;
 * X25519, HKDF and SHA-256 compared).
 * @module
 */

import { parseArgs } from "node:util";
import { LogBook, type Row, RowBuilder } from "./soak/common.ts";
import { faults } from "./soak/faults.ts";
import { fuzzInProcess, planFuzz } from "./soak/fuzz.ts";
import { fuzzOverTcp } from "./soak/fuzz_tcp.ts";
import { hostileClients } from "./soak/hostile.ts";
import { keyHygiene } from "./soak/keys.ts";
import { cryptoProviders } from "./soak/differential.ts";
import { load, type LoadRun } from "./soak/load.ts";
import { pingFlood } from "./soak/pingflood.ts";
import { hostileSpellings, preAuthFlood } from "./soak/preauth.ts";
import { markdownTable, plainTable, verdict } from "./soak/report.ts";

const SUITES = ["fuzz", "hostile", "load", "faults", "keys", "crypto"] as const;
type Suite = typeof SUITES[number];

const HELP = `usage: deno task soak [--quick] [--only SUITES] [--seed N] [scale options]

  --quick                 the short variant (what tests/soak_short_test.ts runs)
  --only fuzz,hostile,load,faults,keys,crypto   run these suites only
  --seed N                seed of every generator (default 1)
  --json PATH             where to write the results (default bench/results/soak.json)
  --no-netns              skip the namespace faults (lossy network, black hole)
  --logs DIR              keep every process's output there (default: a new temporary folder)
scale (full / quick):
  --fuzz-inputs N         in-process fuzz inputs (1000000 / 20000)
  --tcp-inputs N          hostile first bytes against a server process (3000 / 200)
  --slowloris N           slowloris connections (1000 / 50)
  --idle N                connections that send nothing (1000 / 50)
  --replays N             replays of a recorded session (10000 / 500)
  --wrong-key N           wrong-key handshakes (10000 / 300)
  --flood-concurrency N   replay and wrong-key connections at once (32 / 32)
  --spellings N           generated hostile spellings of the allowed address (2000 / 100)
  --preauth-sockets N     idle and dribbling sockets of the pre-auth flood (2000 / 2000)
  --preauth-seconds S     length of the pre-auth flood (12 / 4)
  --pings N               PINGs of the PING flood (400000 / 100000)
  --phase-seconds S       length of each hold attack and of the rest period (12 / 2.5)
  --handshake-timeout S   the attacked servers' --handshake-timeout (5 / 1)
  --sessions N            load sessions (10000 / 200)
  --concurrent N          load sessions open at once (1250 / 100)
  --lossy-mib N           transfer over the lossy network, MiB (100 / 4)
  --keepalive S           keepalive interval for the black hole (1 / 0.5)
  --crypto-cases N        AES-GCM differential cases, openssl vs webcrypto (1000000 / 3000)
  --primitive-cases N     X25519/HKDF/SHA-256 differential cases (100000 / 500)
`;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    seed: { type: "string", default: "1" },
    json: { type: "string", default: "bench/results/soak.json" },
    logs: { type: "string" },
    "no-netns": { type: "boolean", default: false },
    "fuzz-inputs": { type: "string" },
    "tcp-inputs": { type: "string" },
    slowloris: { type: "string" },
    idle: { type: "string" },
    replays: { type: "string" },
    "wrong-key": { type: "string" },
    "flood-concurrency": { type: "string" },
    spellings: { type: "string" },
    "preauth-sockets": { type: "string" },
    "preauth-seconds": { type: "string" },
    pings: { type: "string" },
    "phase-seconds": { type: "string" },
    "handshake-timeout": { type: "string" },
    sessions: { type: "string" },
    concurrent: { type: "string" },
    "lossy-mib": { type: "string" },
    keepalive: { type: "string" },
    "crypto-cases": { type: "string" },
    "primitive-cases": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}

const quick = values.quick;
/** A scale option: the flag if given, else the full or quick default. */
function scale(name: keyof typeof values, full: number, short: number): number {
  const text = values[name];
  if (typeof text !== "string") return quick ? short : full;
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0) {
    console.error(`soak: --${name} takes a number, not '${text}'`);
    Deno.exit(2);
  }
  return value;
}

const seed = Number(values.seed);
const settings = {
  fuzzInputs: scale("fuzz-inputs", 1_000_000, 20_000),
  tcpInputs: scale("tcp-inputs", 3000, 200),
  slowloris: scale("slowloris", 1000, 50),
  idle: scale("idle", 1000, 50),
  replays: scale("replays", 10_000, 500),
  wrongKey: scale("wrong-key", 10_000, 300),
  floodConcurrency: scale("flood-concurrency", 32, 32),
  spellings: scale("spellings", 2000, 100),
  preauthSockets: scale("preauth-sockets", 2000, 2000),
  preauthSeconds: scale("preauth-seconds", 12, 4),
  pings: scale("pings", 400_000, 100_000),
  phaseSeconds: scale("phase-seconds", 12, 2.5),
  handshakeTimeout: scale("handshake-timeout", 5, 1),
  sessions: scale("sessions", 10_000, 200),
  concurrent: scale("concurrent", 1250, 100),
  lossyMiB: scale("lossy-mib", 100, 4),
  keepalive: scale("keepalive", 1, 0.5),
  cryptoCases: scale("crypto-cases", 1_000_000, 3000),
  primitiveCases: scale("primitive-cases", 100_000, 500),
};
const only = new Set<Suite>(
  values.only
    ? values.only.split(",").map((s) => {
      if (!(SUITES as readonly string[]).includes(s)) {
        console.error(`soak: unknown suite '${s}' (${SUITES.join(", ")})`);
        Deno.exit(2);
      }
      return s as Suite;
    })
    : SUITES,
);

const book = new LogBook();
/** Rows in table order: one slot per suite. */
const slots = new Map<Suite, Row[]>(SUITES.map((s) => [s, []]));
const timings: Record<string, number> = {};
const started = performance.now();

async function suite(name: Suite, run: () => Promise<Row[]>): Promise<void> {
  if (!only.has(name)) return;
  const at = performance.now();
  console.error(`soak: ${name} …`);
  try {
    slots.get(name)!.push(...await run());
  } catch (err) {
    const row = new RowBuilder(name, "the suite itself");
    row.fail(`crashed: ${(err as Error).stack ?? err}`);
    slots.get(name)!.push(row.done());
  }
  timings[name] = (timings[name] ?? 0) + Math.round((performance.now() - at) / 1000);
  console.error(`soak: ${name} done in ${timings[name]} s`);
}

// The load runs first: its server then idles through the other suites, and
// its memory is read at the end (V8 gives memory back only after a while).
let loadRun: LoadRun | null = null;
await suite("load", async () => {
  loadRun = await load(book, {
    sessions: settings.sessions,
    wave: settings.concurrent,
    maxPayload: 64 * 1024,
    settleMs: quick ? 45_000 : 300_000,
    requireGiveBack: !quick,
  });
  return [];
});
await suite("fuzz", async () => {
  const plan = planFuzz(settings.fuzzInputs, seed, quick);
  const inProcess = await fuzzInProcess(plan);
  const tcp = await fuzzOverTcp(book, {
    inputs: settings.tcpInputs,
    seed,
    handshakeTimeout: quick ? 1 : 2,
  });
  const all = [...inProcess, tcp];
  const total = new RowBuilder("fuzz", "all fuzzing (seeded; rerun with --seed to reproduce)");
  total.tried(all.reduce((n, r) => n + r.count, 0));
  for (const r of all) for (let i = 0; i < r.failed; i++) total.fail(`${r.tried.split(":")[0]}`);
  total.figures(`seed ${seed}; no exception escaped, every bad input ended as the model says`);
  return [...all, total.done()];
});
await suite("hostile", () =>
  hostileClients(book, {
    slowloris: settings.slowloris,
    idle: settings.idle,
    replays: settings.replays,
    wrongKey: settings.wrongKey,
    phaseSeconds: settings.phaseSeconds,
    handshakeTimeout: settings.handshakeTimeout,
    goalMs: 100,
    floodConcurrency: settings.floodConcurrency,
  }));
await suite("hostile", () => hostileSpellings(book, { spellings: settings.spellings, seed }));
await suite("hostile", () =>
  preAuthFlood(book, {
    sockets: settings.preauthSockets,
    seconds: settings.preauthSeconds,
    goalMs: 1000,
  }));
await suite(
  "hostile",
  () => pingFlood(book, { pings: settings.pings, observeMs: quick ? 2000 : 5000 }),
);
await suite("faults", () =>
  faults(book, {
    seed,
    upstreamConnections: quick ? 5 : 50,
    lossyBytes: Math.round(settings.lossyMiB * 1024 * 1024),
    keepalive: settings.keepalive,
    drainTransfers: quick ? 5 : 20,
    drainBytes: (quick ? 2 : 8) * 1024 * 1024,
    drainTimeout: quick ? 3 : 10,
    noNetns: values["no-netns"] ? "--no-netns was given" : undefined,
  }));
await suite("load", async () => loadRun ? [await (loadRun as LoadRun).settle()] : []);
await suite("keys", () => keyHygiene(book));
await suite("crypto", () =>
  cryptoProviders({
    cases: settings.cryptoCases,
    primitiveCases: settings.primitiveCases,
    seed,
  }));
const rows = SUITES.flatMap((s) => slots.get(s)!);

const seconds = Math.round((performance.now() - started) / 1000);
const passed = rows.every((r) => verdict(r) !== "FAIL");
console.log(plainTable(rows));
console.log();
console.log(markdownTable(rows));
console.log();
console.log(
  `soak ${quick ? "(quick) " : ""}${passed ? "passed" : "FAILED"} in ${seconds} s ` +
    `(${Object.entries(timings).map(([k, v]) => `${k} ${v} s`).join(", ")})`,
);

const logDir = values.logs ?? await Deno.makeTempDir({ prefix: "cipherlink-soak-logs-" });
await Deno.mkdir(logDir, { recursive: true });
for (const source of book.sources.keys()) {
  await Deno.writeFile(`${logDir}/${source.replace(/[^\w.-]+/g, "_")}.log`, book.bytesOf(source));
}
console.log(`logs of every process: ${logDir}`);

const jsonPath = values.json;
const dir = jsonPath.includes("/") ? jsonPath.slice(0, jsonPath.lastIndexOf("/")) : ".";
await Deno.mkdir(dir, { recursive: true });
await Deno.writeTextFile(
  jsonPath,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      quick,
      seed,
      settings,
      seconds,
      timings,
      passed,
      machine: { cores: navigator.hardwareConcurrency, os: Deno.build.os, deno: Deno.version.deno },
      rows,
      markdown: markdownTable(rows),
    },
    null,
    2,
  ) + "\n",
);
Deno.exit(passed ? 0 : 1);
