/**
 * Picks a crypto provider by name: `webcrypto` (always there) or `openssl`
 * (libcrypto located as lib/protocol/crypto/locate.ts says, or the path given, loaded
 * once per path and version-checked). The only way the layers above get a
 * provider.
 *
 * @example
 * ```ts
 * import { loadCryptoProvider } from "./select.ts";
 * const provider = loadCryptoProvider("openssl"); // throws CryptoLibraryError if absent
 * ```
 * @module
 */

import { CryptoLibraryError } from "../../base/errors.ts";
import { Libcrypto } from "./libcrypto.ts";
import { locateLibcrypto } from "./locate.ts";
import { opensslProvider } from "./openssl.ts";
import type { CryptoProvider, CryptoProviderName } from "./provider.ts";
import { webcrypto } from "./webcrypto.ts";

export { CRYPTO_PROVIDERS, type CryptoProviderName, DEFAULT_CRYPTO_PROVIDER } from "./provider.ts";
export type { CryptoProvider } from "./provider.ts";

/** The environment variable that supplies the default provider (the CLI option wins). */
export const CRYPTO_ENV = "CIPHERLINK_CRYPTO";

/** Loaded libraries by path: each is opened once per process. */
const loaded = new Map<string, CryptoProvider>();

/**
 * The provider called `name`. For `openssl`, `libcrypto` is the library's
 * path (--libcrypto); without it the usual places are searched
 * (`candidates`, for tests, replaces that list). Throws
 * {@linkcode CryptoLibraryError} naming every path tried when none loads.
 */
export function loadCryptoProvider(
  name: CryptoProviderName,
  libcrypto?: string,
  candidates?: () => string[],
): CryptoProvider {
  if (name === "webcrypto") return webcrypto;
  const { path, tried } = locateLibcrypto(libcrypto, candidates);
  if (path === undefined) {
    throw new CryptoLibraryError(
      `--crypto openssl needs OpenSSL 3's libcrypto, and none was found (tried ${
        tried.join(", ")
      }); install OpenSSL 3 (Debian/Ubuntu: libssl3) or name the library with --libcrypto PATH`,
    );
  }
  const cached = loaded.get(path);
  if (cached) return cached;
  let lib: Libcrypto;
  try {
    lib = Libcrypto.open(path);
  } catch (err) {
    throw new CryptoLibraryError(
      `--crypto openssl cannot load ${path}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  const provider = opensslProvider(lib);
  loaded.set(path, provider);
  return provider;
}
