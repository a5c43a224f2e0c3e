/**
 * Suite 5: key hygiene. A key file others can read is warned about (and one
 * only the owner can read is not); the key never shows in any output, at any
 * log level, in either log format, on success or failure. The second row
 * greps everything every soak process wrote for every key in use: raw bytes,
 * hex (both cases), base64 (standard, unpadded, URL-safe), and prefixes.
 * @module
 */

import { freePort } from "../../support/process.ts";
import { forward } from "../../lib/tunnel/client.ts";
import { closeQuietly } from "../../lib/protocol/conn.ts";
import { type LogBook, pause, type Row, RowBuilder } from "./common.ts";
import { LOOPBACK } from "./net.ts";
import { cipherlinkArgv, type Proc, spawn, spawnServer, tempKey } from "./proc.ts";

const LEVELS = ["debug", "info", "warn", "error"] as const;
const FORMATS = ["text", "json"] as const;

/**
 * Waits until something accepts on `port` (for servers at warn/error level,
 * which print no `listening on` line): a readiness check, bounded.
 */
async function acceptsOn(port: number, boundMs = 15_000): Promise<void> {
  const until = performance.now() + boundMs;
  for (;;) {
    try {
      closeQuietly(await Deno.connect({ hostname: LOOPBACK, port }));
      return;
    } catch (err) {
      if (performance.now() > until) throw err;
      await pause(50); // polling interval of the readiness check
    }
  }
}

/** Runs `cipherlink ARGS` to its end; its output goes into the log book. */
async function runOnce(
  book: LogBook,
  name: string,
  args: string[],
): Promise<{ code: number; lines: string[] }> {
  const proc = await spawn(book, name, cipherlinkArgv(args));
  const code = await proc.exited;
  return { code, lines: [...proc.lines, ...proc.out] };
}

/** Permission warnings, and every log level and format exercised with the key in use. */
async function warningsAndLevels(book: LogBook): Promise<Row> {
  const row = new RowBuilder(
    "keys",
    "key files of mode 0644/0640/0604 (raw/hex/base64) and 0600; server and clients at every log level and format, success and failure",
  );
  const cleanups: (() => Promise<void>)[] = [];
  try {
    // Readable by others: warned by server and client, whatever the format.
    for (const [mode, format] of [[0o644, "raw"], [0o640, "hex"], [0o604, "base64"]] as const) {
      const key = await tempKey(book, { mode, format });
      cleanups.push(key.cleanup);
      row.tried();
      const server = await spawnServer(
        book,
        `keys ${format} ${mode.toString(8)} server`,
        key.path,
        [],
        { ready: true },
      );
      const warned = server.lines.find((l) => /readable by group or others/.test(l));
      row.check(
        warned !== undefined,
        `a ${mode.toString(8)} ${format} key file was not warned about`,
      );
      const client = await runOnce(book, `keys ${format} client`, [
        "client",
        "--server",
        `${LOOPBACK}:${server.port}`,
        "--key",
        key.path,
        "hello",
      ]);
      row.check(client.code === 0, `the client with a ${format} key exited ${client.code}`);
      row.check(
        client.lines.some((l) => /readable by group or others/.test(l)),
        `the client did not warn about a ${mode.toString(8)} key file`,
      );
      await server.stop();
    }
    // Owner only: no warning.
    const own = await tempKey(book, { mode: 0o600 });
    cleanups.push(own.cleanup);
    row.tried();
    const quiet = await spawnServer(book, "keys 600 server", own.path, ["--log-level", "debug"], {
      ready: true,
    });
    row.check(
      !quiet.lines.some((l) => /readable by group or others/.test(l)),
      "a 0600 key file was warned about",
    );
    await quiet.stop();

    // Every level and format: a session, a wrong key, a shutdown.
    for (const level of LEVELS) {
      for (const format of FORMATS) {
        row.tried();
        const key = await tempKey(book, { format: level === "debug" ? "hex" : "base64" });
        cleanups.push(key.cleanup);
        const port = freePort();
        let server: Proc | null = null;
        try {
          server = await spawn(
            book,
            `keys server ${level} ${format}`,
            cipherlinkArgv([
              "server",
              "--listen",
              `${LOOPBACK}:${port}`,
              "--key",
              key.path,
              "--log-level",
              level,
              "--log-format",
              format,
            ]),
          );
          await acceptsOn(port);
          /** A client of this server with `keyPath` at this level and format. */
          const client = (keyPath: string, message: string) => [
            "client",
            "--server",
            `${LOOPBACK}:${port}`,
            "--key",
            keyPath,
            "--log-level",
            level,
            "--log-format",
            format,
            message,
          ];
          const payload = new TextEncoder().encode(`level ${level} ${format}`);
          const reply = await forward(payload, { server: { host: LOOPBACK, port }, key: key.key });
          row.check(
            new TextDecoder().decode(reply) === `level ${level} ${format}`,
            "the echo differs",
          );
          const ok = await runOnce(
            book,
            `keys client ${level} ${format}`,
            client(key.path, "round trip"),
          );
          row.check(ok.code === 0, `client at ${level}/${format} exited ${ok.code}`);
          const other = await tempKey(book);
          cleanups.push(other.cleanup);
          const wrong = await runOnce(
            book,
            `keys wrong-key client ${level} ${format}`,
            client(other.path, "wrong"),
          );
          row.check(wrong.code === 1, `a wrong-key client exited ${wrong.code}`);
        } finally {
          await server?.stop();
        }
      }
    }
    // Malformed key files: the error names the file and the formats, never its contents.
    const bad = await tempKey(book, { format: "hex" });
    cleanups.push(bad.cleanup);
    const hex = await Deno.readTextFile(bad.path);
    for (
      const [what, contents] of [
        ["a hex key cut short", hex.slice(0, 63)],
        ["a hex key with junk after it", hex.trim() + " junk\n"],
      ] as const
    ) {
      row.tried();
      await Deno.writeTextFile(bad.path, contents);
      const result = await runOnce(book, `keys malformed (${what})`, [
        "server",
        "--listen",
        `${LOOPBACK}:0`,
        "--key",
        bad.path,
      ]);
      row.check(result.code === 1, `${what}: exit ${result.code}`);
      row.check(result.lines.some((l) => /malformed/.test(l)), `${what}: no "malformed" error`);
    }
    row.figures("warned for 0644/0640/0604 (raw/hex/base64) by server and client; not for 0600");
  } catch (err) {
    row.fail(`stopped: ${(err as Error).message}`);
  } finally {
    for (const cleanup of cleanups) await cleanup();
  }
  return row.done();
}

/** Every encoding of a key a log could leak. */
function leakForms(key: Uint8Array): [string, string][] {
  const hex = Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
  const base64 = btoa(String.fromCharCode(...key));
  const latin1 = String.fromCharCode(...key);
  return [
    ["raw", latin1],
    ["raw (first 16 bytes)", latin1.slice(0, 16)],
    ["hex", hex],
    ["HEX", hex.toUpperCase()],
    ["hex (first 16 bytes)", hex.slice(0, 32)],
    ["base64", base64],
    ["base64 unpadded", base64.replace(/=+$/, "")],
    ["base64url", base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")],
    ["base64 (first 16 chars)", base64.slice(0, 16)],
  ];
}

/** Greps everything the soak's processes wrote for every key in use. */
export function grepForKeys(book: LogBook): Row {
  const row = new RowBuilder(
    "keys",
    "every log and error output of every suite grepped for every key (raw, hex, HEX, base64, base64url, prefixes)",
  );
  let bytes = 0;
  for (const [source, chunks] of book.sources) {
    let text = "";
    for (const chunk of chunks) {
      for (let at = 0; at < chunk.byteLength; at += 8192) {
        text += String.fromCharCode(...chunk.subarray(at, at + 8192));
      }
      bytes += chunk.byteLength;
    }
    for (const key of book.keys) {
      for (const [form, needle] of leakForms(key)) {
        row.tried();
        if (text.includes(needle)) row.fail(`${source}: the key appears (${form})`);
      }
    }
  }
  row.set("sources", book.sources.size);
  row.set("keys", book.keys.length);
  row.set("bytes", bytes);
  const found = row.done().failed;
  row.figures(
    `${book.sources.size} process outputs, ${(bytes / 1048576).toFixed(1)} MiB, ` +
      `${book.keys.length} keys × 9 forms: ${found === 0 ? "no match" : `${found} matches`}`,
  );
  return row.done();
}

/** The key-hygiene suite: warnings and levels first, then the grep over everything. */
export async function keyHygiene(book: LogBook): Promise<Row[]> {
  const first = await warningsAndLevels(book);
  return [first, grepForKeys(book)];
}
