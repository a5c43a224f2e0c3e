/**
 * For the `./cipherlink` launcher: prints the libcrypto paths a `server` or
 * `client` command line will open with the openssl provider (comma-separated,
 * as `--allow-ffi=` takes them), so the launcher grants FFI for exactly those
 * and nothing else. Prints an empty line when the command does not ask for
 * openssl (--crypto, CIPHERLINK_CRYPTO, or a tunnel of its --config file), or
 * when no library can be found (the program then says what it tried).
 *
 * Run as `deno run --allow-read --allow-env=CIPHERLINK_CRYPTO,LD_LIBRARY_PATH
 * lib/cli/ffi_grant.ts COMMAND ARGS…`. The search list itself is
 * lib/protocol/crypto/locate.ts, shared with the program.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseConfig } from "../ops/config.ts";
import { locateLibcrypto } from "../protocol/crypto/locate.ts";
import { CRYPTO_ENV } from "../protocol/crypto/select.ts";

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** The libcrypto paths `args` (COMMAND and its options) will dlopen. */
export function libcryptoPathsFor(args: string[]): string[] {
  const { values } = parseArgs({
    args: args.slice(1),
    strict: false,
    allowPositionals: true,
    options: {
      crypto: { type: "string" },
      libcrypto: { type: "string" },
      config: { type: "string" },
    },
  });
  const wanted: (string | undefined)[] = [];
  if (typeof values.config === "string") {
    try {
      const config = parseConfig(Deno.readTextFileSync(values.config), values.config);
      for (const tunnel of config.tunnels) {
        if (tunnel.crypto === "openssl") wanted.push(tunnel.libcrypto);
      }
    } catch {
      // an unreadable or invalid file: the program reports it
    }
  } else if ((values.crypto ?? env(CRYPTO_ENV)) === "openssl") {
    wanted.push(typeof values.libcrypto === "string" ? values.libcrypto : undefined);
  }
  const paths = wanted.map((p) => locateLibcrypto(p).path).filter((p) => p !== undefined);
  return [...new Set(paths)];
}

if (import.meta.main) {
  console.log(libcryptoPathsFor(Deno.args).join(","));
}
