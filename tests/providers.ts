/**
 * The crypto providers the tests run under: Web Crypto always, OpenSSL where
 * libcrypto 3 can be found. Where it cannot, the openssl tests are skipped
 * with one clear message; where it is found but fails to load, importing
 * this module throws, so those tests fail instead of hiding the fault.
 * @module
 */

import type { CryptoProvider } from "../lib/protocol/crypto/provider.ts";
import { locateLibcrypto } from "../lib/protocol/crypto/locate.ts";
import { loadCryptoProvider } from "../lib/protocol/crypto/select.ts";
import { webcrypto } from "../lib/protocol/crypto/webcrypto.ts";

const located = locateLibcrypto();

/** Why the openssl tests are skipped, or undefined when they run. */
export const opensslMissing: string | undefined = located.path === undefined
  ? `openssl provider tests skipped: no OpenSSL 3 libcrypto found (tried ${
    located.tried.join(", ")
  }); install libssl3`
  : undefined;

if (opensslMissing) console.warn(opensslMissing);

/** The openssl provider, or null where libcrypto 3 cannot be found. */
export const openssl: CryptoProvider | null = located.path === undefined
  ? null
  : loadCryptoProvider("openssl");

/** Every provider available here, Web Crypto first. */
export const providers: CryptoProvider[] = openssl ? [webcrypto, openssl] : [webcrypto];

export { webcrypto };
