/**
 * Issue 9's attacks on a server process, for `deno task soak`:
 * - hostile spellings (finding 1): OPENs for the one allowed address written
 *   every way a resolver might read it (octal, hex, fewer parts, a trailing
 *   dot, IPv4-mapped IPv6, international dots, control characters); only
 *   the spellings the server reads as exactly that address may connect, and
 *   the target must see exactly as many connections as the server answered
 *   OPEN_OK;
 * - a pre-authentication flood (finding 2): thousands of idle and dribbling
 *   sockets at once against `--max-conns 50`, while a legitimate client (its
 *   own process) keeps doing handshakes, each of which must finish within 1 s.
 * @module
 */

import { lookup } from "node:dns/promises";
import { connect } from "../../lib/tunnel/client.ts";
import { RemoteError } from "../../lib/base/errors.ts";
import { type LogBook, ms, pool, Rng, type Row, RowBuilder } from "./common.ts";
import { LOOPBACK, sentinel } from "./net.ts";
import {
  helperArgv,
  probeSamples,
  type Proc,
  spawn,
  spawnServer,
  startProbe,
  tempKey,
} from "./proc.ts";

export interface SpellingOptions {
  /** Generated spellings, on top of the fixed list. */
  spellings: number;
  seed: number;
}

/** Spellings a resolver may read as 127.0.0.1 or near it, and other hostile names. */
const FIXED = [
  "127.0.0.1",
  "127.0.0.01",
  "127.0.0.010",
  "0127.0.0.1",
  "127.1",
  "127.0.1",
  "2130706433",
  "017700000001",
  "0x7f000001",
  "0x7f.0.0.1",
  "0X7F.0x0.0x0.0x1",
  "127.0.0.1.",
  "127.000.000.001",
  "127。0。0。1",
  "127．0．0．1",
  "127.0.0.1\u0000.evil",
  "127.0.0.1\n",
  " 127.0.0.1",
  "::ffff:127.0.0.1",
  "::ffff:7f00:1",
  "::",
  "0.0.0.0",
  "0",
  "localhost",
];

function generated(rng: Rng): string {
  const parts = rng.int(1, 4);
  const out: string[] = [];
  for (let i = 0; i < parts; i++) {
    const value = i === 0 ? 127 : rng.int(0, 2) === 0 ? rng.int(0, 255) : i === parts - 1 ? 1 : 0;
    switch (rng.int(0, 3)) {
      case 0:
        out.push(`0${value.toString(8)}`);
        break;
      case 1:
        out.push(`0x${value.toString(16)}`);
        break;
      case 2:
        out.push(`${"0".repeat(rng.int(1, 2))}${value}`);
        break;
      default:
        out.push(String(value));
    }
  }
  return out.join(".") + (rng.int(0, 5) === 0 ? "." : "");
}

/** What the system resolver reads a spelling as (numeric spellings only resolve locally). */
async function systemReading(spelling: string): Promise<string | null> {
  if (!/^[0-9a-fA-FxX.:]+$/.test(spelling) && spelling !== "localhost") return null;
  try {
    const timer = new Promise<null>((resolve) => setTimeout(() => resolve(null), 2000));
    const found = await Promise.race([lookup(spelling, { family: 4 }), timer]);
    return found?.address ?? null;
  } catch {
    return null;
  }
}

/** Sends every spelling as an OPEN under `--allow 127.0.0.1/32:PORT`; one row. */
export async function hostileSpellings(book: LogBook, options: SpellingOptions): Promise<Row[]> {
  const row = new RowBuilder(
    "hostile",
    `hostile spellings: ${FIXED.length + options.spellings} OPENs for 127.0.0.1 written other ways`,
  );
  const key = await tempKey(book);
  const target = sentinel();
  let server: Proc | null = null;
  try {
    server = await spawnServer(book, "spelling server", key.path, [
      "--allow",
      `${LOOPBACK}/32:${target.port}`,
      "--allow",
      `[::/0]:${target.port}`,
      "--log-level",
      "info",
    ], { ready: true });
    const rng = new Rng(options.seed);
    const spellings = [
      ...FIXED,
      ...Array.from({ length: options.spellings }, () => generated(rng)),
    ];
    let admitted = 0;
    let refused = 0;
    let readByTheSystem = 0;
    const port = server.port;
    await pool(spellings.length, 8, async (i) => {
      const spelling = spellings[i];
      row.tried();
      const reading = await systemReading(spelling);
      if (reading === LOOPBACK) readByTheSystem++;
      // The server must admit only what it reads as exactly 127.0.0.1 (or a name resolving to it).
      const mayConnect = spelling === LOOPBACK || spelling === "localhost" ||
        spelling === "::ffff:127.0.0.1" || spelling === "::ffff:7f00:1";
      let outcome: "ok" | "refused" | "other";
      try {
        const session = await connect({
          server: { host: LOOPBACK, port },
          key: key.key,
          target: { host: spelling, port: target.port },
        });
        try {
          await session.opened;
          outcome = "ok";
        } catch (err) {
          outcome = err instanceof RemoteError && err.code === 2 ? "refused" : "other";
        }
        session.abort(6, "done");
        await session.ended;
      } catch (err) {
        row.fail(`${JSON.stringify(spelling)}: ${(err as Error).message}`);
        return;
      }
      if (outcome === "ok") admitted++;
      if (outcome === "refused") refused++;
      row.check(
        mayConnect ? outcome === "ok" : outcome === "refused",
        `${JSON.stringify(spelling)} (system reads ${reading}): ${outcome}`,
      );
    });
    // Every OPEN_OK is one connection to the target, and nothing else reached it.
    const deadline = Date.now() + 5000;
    while (target.connections < admitted && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    row.check(
      target.connections === admitted,
      `the target saw ${target.connections} connections for ${admitted} OPEN_OKs`,
    );
    row.set("admitted", admitted);
    row.set("refused", refused);
    row.set("read_as_loopback_by_the_system", readByTheSystem);
    row.set("target_connections", target.connections);
    row.figures(
      `${admitted} admitted (canonical, mapped, localhost), ${refused} refused with ERROR 2; ` +
        `${readByTheSystem} of them the system resolver reads as 127.0.0.1; ` +
        `target saw ${target.connections} connections`,
    );
  } catch (err) {
    row.fail(`setup: ${(err as Error).message}`);
  } finally {
    await server?.stop();
    await target.close();
    await key.cleanup();
  }
  return [row.done()];
}

export interface PreAuthOptions {
  /** Idle and dribbling sockets held at once (half each). */
  sockets: number;
  seconds: number;
  /** The legitimate client's deadline for every handshake. */
  goalMs: number;
}

/** The flood against `--max-conns 50` with a probe measuring handshakes; one row. */
export async function preAuthFlood(book: LogBook, options: PreAuthOptions): Promise<Row[]> {
  const row = new RowBuilder(
    "hostile",
    `pre-auth flood: ${options.sockets} idle and dribbling sockets at once for ${options.seconds} s, --max-conns 50`,
  );
  const key = await tempKey(book);
  let server: Proc | null = null;
  let probe: Proc | null = null;
  let flood: Proc | null = null;
  try {
    server = await spawnServer(book, "pre-auth server", key.path, [
      "--max-conns",
      "50",
      "--log-level",
      "info",
    ], { ready: true });
    probe = await startProbe(book, "pre-auth probe", server.port, key.path);
    const start = Date.now();
    flood = await spawn(
      book,
      "pre-auth attacker",
      helperArgv("flood", [
        "--port",
        String(server.port),
        "--sockets",
        String(options.sockets),
        "--seconds",
        String(options.seconds),
      ]),
    );
    const code = await flood.exited;
    const end = Date.now();
    const summaryLine = flood.out.find((l) => l.startsWith("{"));
    row.check(code === 0 && summaryLine !== undefined, `the attacker exited with ${code}`);
    const attack = summaryLine
      ? JSON.parse(summaryLine) as {
        opened: number;
        cut: number;
        failedToConnect: number;
        peakOpen: number;
      }
      : { opened: 0, cut: 0, failedToConnect: 0, peakOpen: 0 };
    row.tried(attack.opened);
    row.check(
      attack.peakOpen >= options.sockets,
      `only ${attack.peakOpen} attacking sockets were open at once`,
    );
    const samples = probeSamples(probe, start, end);
    row.check(samples.length > 0, "the legitimate client made no request during the attack");
    for (const s of samples.filter((s) => s.error)) row.fail(`legitimate client: ${s.error}`);
    const handshakes = samples.flatMap((s) => s.handshakeMs ?? []);
    const worst = Math.max(0, ...handshakes);
    row.check(
      worst <= options.goalMs,
      `a legitimate handshake took ${ms(worst)} (goal ${ms(options.goalMs)})`,
    );
    const crash = server.lines.find((l) => /uncaught|panicked/i.test(l));
    row.check(!crash, `the server logged a crash: ${crash}`);
    const logLines = server.lines.filter((l) => /handshake|unauthenticated/.test(l)).length;
    row.set("attacker_connections", attack.opened);
    row.set("attacker_peak_open", attack.peakOpen);
    row.set("cut_by_server", attack.cut);
    row.set("legit_handshakes", handshakes.length);
    row.set("legit_handshake_max_ms", worst);
    row.set("server_log_lines_about_them", logLines);
    row.figures(
      `${attack.opened} attacking connections (${attack.peakOpen} open at once, ${attack.cut} cut by the ` +
        `server); legit: ${handshakes.length} handshakes, all OK, max ${ms(worst)} (goal ${
          ms(options.goalMs)
        }); ${logLines} server log lines about them`,
    );
  } catch (err) {
    row.fail(`setup: ${(err as Error).message}`);
  } finally {
    await flood?.stop();
    await probe?.stop();
    await server?.stop();
    await key.cleanup();
  }
  return [row.done()];
}
