/**
 * The README's single-machine walkthrough ("Trying it on one machine") runs
 * as written: its shell blocks, in order, in one bash, in a copy of the
 * checkout. Only the example ports are swapped for free ones (other tests
 * run at the same time), and after each command that starts a listener in
 * the background the script waits for its port, as a reader waits for the
 * `listening on` line.
 * @module
 */

import assert from "node:assert/strict";
import { copyCheckout, freePort, runArgv } from "./process.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** The shell lines of the walkthrough section, in order. */
async function walkthroughLines(): Promise<string[]> {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const start = readme.indexOf("## Trying it on one machine");
  assert.ok(start >= 0, "the README has a single-machine walkthrough");
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end);
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  return blocks.flatMap((b) => b.split("\n")).filter((l) => l.trim() !== "");
}

Deno.test({
  name: "walkthrough: the README's single-machine walkthrough runs as written on 127.0.0.1",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const lines = await walkthroughLines();
    // Every port the walkthrough listens on gets a free one; others (the refused :22) stay.
    const ports = new Map<string, string>();
    for (const line of lines) {
      for (
        const m of line.matchAll(/(?:--listen|--socks) 127\.0\.0\.1:(\d+)|http\.server (\d+)/g)
      ) {
        const port = m[1] ?? m[2];
        if (!ports.has(port)) ports.set(port, String(freePort()));
      }
    }
    const withPorts = (line: string) =>
      line.replace(
        /(127\.0\.0\.1:|http\.server )(\d+)/g,
        (text: string, prefix: string, port: string) =>
          ports.has(port) ? prefix + ports.get(port) : text,
      );
    const script = ["set -u"];
    for (const line of lines.map(withPorts)) {
      script.push(`echo '$ ${line.replaceAll("'", "'\\''")}'`, line);
      if (!line.trimEnd().endsWith("&")) continue;
      // The port this background command listens on: --listen, --socks or http.server.
      const port = /(?:--listen|--socks) 127\.0\.0\.1:(\d+)|http\.server (\d+)/.exec(line);
      assert.ok(port, `which port does "${line}" listen on?`);
      script.push(
        `for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/${
          port[1] ?? port[2]
        }) 2>/dev/null && break; sleep 0.1; done`,
      );
    }
    const dir = await Deno.makeTempDir({ prefix: "cipherlink-walkthrough-" });
    try {
      await copyCheckout(dir);
      const result = await runArgv(["bash", "-c", script.join("\n")], { cwd: dir });
      const out = result.stdout;
      const err = result.stderr;
      const transcript = `${out}\n--- stderr ---\n${err}`;
      assert.equal(result.code, 0, transcript);
      const made = /fingerprint (SHA256:\S+)/.exec(out);
      assert.ok(made, transcript);
      assert.match(
        out,
        new RegExp(`\\$ \\./cipherlink fingerprint\\n${made[1].replace("+", "\\+")}\\n`),
      );
      assert.match(out, /hello through the tunnel/);
      assert.equal(out.match(/<!DOCTYPE HTML>/gi)?.length, 2, transcript);
      assert.match(
        err,
        /cipherlink: error: server error 2 \(refused by the server's policy\): target 127\.0\.0\.1:22 is not allowed/,
      );
      // The last line stopped everything: every port is free again.
      for (const port of ports.values()) {
        await assert.rejects(
          Deno.connect({ hostname: "127.0.0.1", port: Number(port) }),
          Deno.errors.ConnectionRefused,
          `port ${port} is still open:\n${transcript}`,
        );
      }
      await Deno.stat(`${dir}/keys/shared_key.key`);
    } finally {
      // Whatever the script left running in its folder.
      for await (const entry of Deno.readDir("/proc")) {
        if (!/^\d+$/.test(entry.name)) continue;
        try {
          if ((await Deno.readLink(`/proc/${entry.name}/cwd`)).startsWith(dir)) {
            Deno.kill(Number(entry.name), "SIGKILL");
          }
        } catch {
          // Gone, or not ours.
        }
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
