/**
 * `deno task compile`: standalone executables in dist/ for x86_64 and aarch64
 * Linux, macOS and Windows, with Cipherlink's narrowed permissions baked in,
 * and dist/SHA256SUMS.
 *
 * `deno compile` needs the `denort` runtime of each target, which it
 * downloads. Where it cannot (no network), set DENORT_BIN to a local denort
 * binary: then only the target that binary runs on is built. Without either,
 * this says so in one line and exits non-zero.
 * @module
 */

import { isAbsolute } from "node:path";
import { parseArgs } from "node:util";
import { compileFailureCause } from "./compile/cause.ts";

/** Every target the release ships. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
] as const;

/**
 * What the executables may do: the network (tunnels, metrics), read key and
 * config files, write key files (keygen), and read the three variables.
 */
export const PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env=CIPHERLINK_KEY_FILE,CIPHERLINK_SERVER_HOST,CIPHERLINK_SERVER_PORT",
];

function hostTarget(): string {
  const arch = Deno.build.arch;
  switch (Deno.build.os) {
    case "linux":
      return `${arch}-unknown-linux-gnu`;
    case "darwin":
      return `${arch}-apple-darwin`;
    case "windows":
      return `${arch}-pc-windows-msvc`;
    default:
      return `${arch}-${Deno.build.os}`;
  }
}

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

const { values } = parseArgs({
  args: Deno.args,
  options: { target: { type: "string", multiple: true }, out: { type: "string", default: "dist" } },
});
const denort = Deno.env.get("DENORT_BIN");
const targets = values.target ?? (denort ? [hostTarget()] : [...TARGETS]);
const root = new URL("../", import.meta.url).pathname;
/** Where the executables go: --out, relative to the repository unless absolute. */
const outDir = isAbsolute(values.out) ? values.out : `${root}${values.out}`;
await Deno.mkdir(outDir, { recursive: true });

const built: string[] = [];
for (const target of targets) {
  const name = `cipherlink-${target}${target.includes("windows") ? ".exe" : ""}`;
  const output = `${outDir}/${name}`;
  const result = await new Deno.Command(Deno.execPath(), {
    args: [
      "compile",
      "--quiet",
      ...PERMISSIONS,
      "--target",
      target,
      "--output",
      output,
      `${root}main.ts`,
    ],
    stdout: "inherit",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (!result.success) {
    const detail = compileFailureCause(new TextDecoder().decode(result.stderr));
    console.error(
      `compile: deno compile could not build ${target}${
        denort
          ? ` with DENORT_BIN=${denort}`
          : " (it downloads the denort runtime; set DENORT_BIN to a local one)"
      }: ${detail}`,
    );
    Deno.exit(1);
  }
  built.push(name);
  console.log(`compile: ${values.out}/${name}`);
}
const sums = await Promise.all(
  built.map(async (name) => `${await sha256(`${outDir}/${name}`)}  ${name}`),
);
await Deno.writeTextFile(`${outDir}/SHA256SUMS`, sums.join("\n") + "\n");
console.log(`compile: ${values.out}/SHA256SUMS (${built.length} executables)`);
