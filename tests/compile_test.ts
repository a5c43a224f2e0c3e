/**
 * `deno task compile` says why `deno compile` failed: the failed download of
 * the `denort` runtime, not only the step it was in ("Writing deno compile
 * executable to temporary file …").
 * @module
 */

import assert from "node:assert/strict";
import { compileFailureCause } from "../scripts/compile/cause.ts";

const SCRIPT = new URL("../scripts/compile.ts", import.meta.url).pathname;
const PROXY = "http://127.0.0.1:1";

function environmentWithout(name: string): Record<string, string> {
  const env = Deno.env.toObject();
  delete env[name];
  return env;
}

/** What deno compile 2.9.6 printed here when it could not download denort. */
const DOWNLOAD_FAILED = `Check main.ts
Compile main.ts to file:///tmp/x
Download https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip
error: Writing deno compile executable to temporary file '/tmp/x.tmp-b6af16a2f3b07d00'

Caused by:
    0: Setting up base binary.
    1: error sending request for url (https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): client error (Connect): dns error: failed to lookup address information: Name or service not known
    2: client error (Connect)
    3: dns error
    4: failed to lookup address information: Name or service not known

Stack backtrace:
   0: <unknown>
`;

Deno.test("compile: the cause of a failure is the failed download, named with its URL and reason", () => {
  assert.equal(
    compileFailureCause(DOWNLOAD_FAILED),
    "Writing deno compile executable to temporary file '/tmp/x.tmp-b6af16a2f3b07d00': " +
      "error sending request for url (https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip): " +
      "client error (Connect): dns error: failed to lookup address information: Name or service not known",
  );
  assert.equal(
    compileFailureCause('error: Module not found "file:///x.ts".\n'),
    'Module not found "file:///x.ts".',
  );
  assert.equal(
    compileFailureCause("error: Writing it\n\nCaused by:\n    0: No space left on device\n"),
    "Writing it: No space left on device",
  );
});

Deno.test("compile: deno task compile with the denort download blocked prints that download's failure", async () => {
  const out = await Deno.makeTempDir();
  try {
    const result = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-write",
        "--allow-run",
        "--allow-env",
        SCRIPT,
        "--target",
        "x86_64-unknown-linux-gnu",
        "--out",
        out,
      ],
      // A proxy nobody listens on: the download fails at once, network or not.
      env: { ...environmentWithout("DENORT_BIN"), HTTPS_PROXY: PROXY, https_proxy: PROXY },
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(result.stderr);
    if (result.code === 0) {
      // denort was in Deno's cache already: nothing was downloaded, nothing failed.
      await Deno.stat(`${out}/cipherlink-x86_64-unknown-linux-gnu`);
      return;
    }
    assert.equal(result.code, 1);
    const lines = stderr.trim().split("\n");
    assert.equal(lines.length, 1, stderr);
    assert.match(lines[0], /^compile: deno compile could not build x86_64-unknown-linux-gnu/);
    assert.match(lines[0], /error sending request for url \(https:\/\/\S+denort\S+\)/);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
