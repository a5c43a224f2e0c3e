/**
 * `HOST:PORT` strings, as the command line and config files give them:
 * parsing (hosts read as address.ts's canonicalHost reads them) and
 * formatting (IPv6 bracketed).
 *
 * @example
 * ```ts
 * import { formatHostPort, parseHostPort } from "./hostport.ts";
 * formatHostPort(parseHostPort("[::1]:8888")); // "[::1]:8888"
 * ```
 * @module
 */

import { TargetError, UsageError } from "../base/errors.ts";
import { canonicalHost, parseIPv6 } from "./address.ts";

/** A host and port, as given on the command line. */
export interface HostPort {
  host: string;
  port: number;
}

/**
 * Parses `HOST:PORT`, `[IPv6]:PORT`. Throws {@linkcode UsageError}, also for
 * a host that {@linkcode canonicalHost} refuses (`127.0.0.010`, `127。0。0。1`).
 *
 * @example
 * ```ts
 * parseHostPort("[::1]:8888"); // { host: "::1", port: 8888 }
 * ```
 */
export function parseHostPort(text: string, allowPortZero = false): HostPort {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (
    !match || port > 65535 || (port === 0 && !allowPortZero) ||
    (match[1] !== undefined && !parseIPv6(match[1]))
  ) {
    throw new UsageError(`'${text}' is not HOST:PORT`);
  }
  const host = match[1] ?? match[2];
  // The same reading the server applies to targets: no spelling resolvers disagree on.
  try {
    canonicalHost(host);
  } catch (err) {
    if (err instanceof TargetError) throw new UsageError(`'${text}': ${err.message}`);
    throw err;
  }
  return { host, port };
}

/** Formats a host and port, bracketing IPv6. */
export function formatHostPort({ host, port }: HostPort): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
