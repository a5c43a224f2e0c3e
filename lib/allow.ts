/**
 * `--allow` rules: which targets a client may ask for with OPEN `0x01`.
 *
 * A rule is `HOST:PORT`, `HOST:*`, `*:PORT`, `CIDR:PORT` or `CIDR:*`. HOST is
 * a name pattern where `*` stands for any run of characters, or an IP
 * address; CIDR is an IPv4 or IPv6 network (IPv6 may be bracketed:
 * `[fd00::/8]:*`). Name patterns match the name the client asked for; IP and
 * CIDR rules match the address the server will actually connect to, after
 * the server resolved the name itself, so a name cannot smuggle a client into
 * a network that only a CIDR rule guards.
 *
 * @example
 * ```ts
 * import { AllowList } from "./allow.ts";
 * const allow = AllowList.parse(["*.internal:5432", "10.0.0.0/8:*"]);
 * await allow.decide("db.internal", 5432); // "db.internal"
 * await allow.decide("example.com", 80); // null: refused
 * ```
 * @module
 */

import { UsageError } from "./errors.ts";
import { parseIPv4, parseIPv6 } from "./target.ts";

interface Network {
  bytes: number[];
  prefix: number;
}

/** One parsed rule. */
export interface AllowRule {
  text: string;
  port: number | "*";
  /** A name pattern (may be `*`), or null for an address rule. */
  pattern: RegExp | null;
  /** An IP network, or null for a name rule. */
  network: Network | null;
}

/** Resolves a name to IP addresses; the default uses DNS. */
export type Resolver = (name: string) => Promise<string[]>;

/** Parses one `--allow` rule; throws {@linkcode UsageError}. */
export function parseRule(text: string): AllowRule {
  const bracketed = /^\[([^\]]+)\]:(\*|\d{1,5})$/.exec(text);
  const plain = /^(.+):(\*|\d{1,5})$/.exec(text);
  const match = bracketed ?? plain;
  if (!match) {
    throw new UsageError(
      `--allow '${text}' is not HOST:PORT, HOST:*, *:PORT, CIDR:PORT or CIDR:*`,
    );
  }
  const [, host, portText] = match;
  const port = portText === "*" ? "*" : Number(portText);
  if (port !== "*" && (port < 1 || port > 65535)) {
    throw new UsageError(`--allow '${text}': port must be 1 to 65535 or *`);
  }
  const network = parseNetwork(host);
  if (network) return { text, port, pattern: null, network };
  if (
    host.includes("/") || host.includes(":") || !/^[A-Za-z0-9*._-]+$/.test(host)
  ) {
    throw new UsageError(
      `--allow '${text}': '${host}' is neither a host name pattern nor an IP network`,
    );
  }
  const source = host.split("*").map((part) => part.replace(/[.]/g, "\\."))
    .join(".*");
  return { text, port, pattern: new RegExp(`^${source}$`, "i"), network: null };
}

function parseNetwork(text: string): Network | null {
  const [address, prefixText, extra] = text.split("/");
  if (extra !== undefined) return null;
  const bytes = parseIPv4(address) ?? parseIPv6(address);
  if (!bytes) return null;
  const prefix = prefixText === undefined ? bytes.length * 8 : Number(prefixText);
  if (!/^\d+$/.test(prefixText ?? "0") || prefix > bytes.length * 8) {
    return null;
  }
  return { bytes, prefix };
}

function inNetwork(address: number[], network: Network): boolean {
  if (address.length !== network.bytes.length) return false;
  let bits = network.prefix;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((address[i] & mask) !== (network.bytes[i] & mask)) return false;
  }
  return true;
}

async function dnsResolver(name: string): Promise<string[]> {
  if (name.toLowerCase() === "localhost") return ["127.0.0.1", "::1"];
  const found = await Promise.allSettled([
    Deno.resolveDns(name, "A"),
    Deno.resolveDns(name, "AAAA"),
  ]);
  return found.flatMap((r) => (r.status === "fulfilled" ? r.value : []));
}

/** The server's set of `--allow` rules. */
export class AllowList {
  readonly rules: readonly AllowRule[];
  #resolve: Resolver;

  constructor(rules: AllowRule[], resolver: Resolver = dnsResolver) {
    this.rules = rules;
    this.#resolve = resolver;
  }

  /** Parses rule texts; throws {@linkcode UsageError} for a bad one. */
  static parse(texts: string[], resolver?: Resolver): AllowList {
    return new AllowList(texts.map(parseRule), resolver);
  }

  /**
   * Decides a target. Resolves the host to connect to (the name itself when
   * a name rule admits it, or an address a CIDR rule admits), or null when
   * no rule allows it.
   */
  async decide(host: string, port: number): Promise<string | null> {
    const rules = this.rules.filter((r) => r.port === "*" || r.port === port);
    if (rules.length === 0) return null;
    const literal = parseIPv4(host) ?? parseIPv6(host);
    if (literal) {
      return rules.some((r) => r.network ? inNetwork(literal, r.network) : r.pattern!.test(host))
        ? host
        : null;
    }
    if (rules.some((r) => r.pattern?.test(host))) return host;
    const networks = rules.flatMap((r) => (r.network ? [r.network] : []));
    if (networks.length === 0) return null;
    for (const address of await this.#resolve(host)) {
      const bytes = parseIPv4(address) ?? parseIPv6(address);
      if (bytes && networks.some((n) => inNetwork(bytes, n))) return address;
    }
    return null;
  }
}
