/**
 * `--allow` rules: which targets a client may ask for with OPEN `0x01`.
 *
 * A rule is `HOST:PORT`, `HOST:*`, `*:PORT`, `CIDR:PORT` or `CIDR:*`. HOST is
 * a name pattern where `*` stands for any run of characters within one DNS
 * label (a lone `*` for any host), or an IP address; CIDR is an IPv4 or IPv6
 * network (IPv6 may be bracketed: `[fd00::/8]:*`). A pattern made only of
 * digits, dots and `*` is refused: it looks like an address range but would
 * match names; write a CIDR.
 *
 * The target is first read with {@linkcode canonicalHost} (non-canonical
 * spellings are refused), then: an address is matched against the networks
 * (IPv4-mapped IPv6 as IPv4; the unspecified address never); a name is
 * resolved once, by the same resolver the connect uses, and the decision
 * carries the addresses that were checked, which are all the server may dial.
 *
 * @example
 * ```ts
 * import { AllowList } from "./allow.ts";
 * const allow = AllowList.parse(["*.internal:5432", "10.0.0.0/8:*"]);
 * await allow.decide("10.1.2.3", 22); // { allowed: true, addresses: ["10.1.2.3"] }
 * await allow.decide("example.com", 80); // { allowed: false, code: 2, reason: "…" }
 * ```
 * @module
 */

import { ErrorCode, TargetError, UsageError } from "../base/errors.ts";
import { type Resolver, ResolveTimeoutError, systemResolver } from "./resolve.ts";
import {
  canonicalHost,
  isUnspecified,
  parseIPv4,
  parseIPv6,
  printable,
} from "../protocol/address.ts";
import { formatHostPort } from "../protocol/hostport.ts";

export type { Resolver } from "./resolve.ts";

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

/**
 * What the server may do with an OPEN: dial these addresses (in order), or
 * answer ERROR `code` with `reason`.
 */
export type Decision =
  | { allowed: true; addresses: string[] }
  | { allowed: false; code: number; reason: string };

/** The pattern of a lone `*`: any host, names and addresses alike. */
const ANY_HOST = /^.*$/s;

/**
 * A malformed `--allow` rule. `detail` names the rule and what is wrong with
 * it, without the option's name, so a config file can name its own field.
 */
export class AllowRuleError extends UsageError {
  readonly detail: string;
  constructor(detail: string) {
    super(`--allow ${detail}`);
    this.detail = detail;
  }
}

/** Parses one `--allow` rule; throws {@linkcode AllowRuleError}. */
export function parseRule(text: string): AllowRule {
  const bracketed = /^\[([^\]]+)\]:(\*|\d{1,5})$/.exec(text);
  const plain = /^(.+):(\*|\d{1,5})$/.exec(text);
  const match = bracketed ?? plain;
  if (!match) {
    throw new AllowRuleError(
      `'${text}' is not HOST:PORT, HOST:*, *:PORT, CIDR:PORT or CIDR:*`,
    );
  }
  const [, host, portText] = match;
  const port = portText === "*" ? "*" : Number(portText);
  if (port !== "*" && (port < 1 || port > 65535)) {
    throw new AllowRuleError(`'${text}': port must be 1 to 65535 or *`);
  }
  const network = parseNetwork(host);
  if (network) return { text, port, pattern: null, network };
  if (
    host.includes("/") || host.includes(":") || !/^[A-Za-z0-9*._-]+$/.test(host)
  ) {
    throw new AllowRuleError(
      `'${text}': '${host}' is neither a host name pattern nor an IP network`,
    );
  }
  if (host !== "*" && /^[0-9.*]+$/.test(host)) {
    throw new AllowRuleError(
      `'${text}': '${host}' looks like an address range but would match names; ` +
        `write a CIDR such as 192.168.1.0/24`,
    );
  }
  if (host === "*") return { text, port, pattern: ANY_HOST, network: null };
  // * stays within one label: 192.168.1.* must not admit 192.168.1.attacker.example.
  const source = host.split("*").map((part) => part.replace(/[.]/g, "\\."))
    .join("[a-z0-9_-]*");
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
  // Targets in ::ffff:0:0/96 are matched as the IPv4 addresses they carry; so are such rules.
  const mapped = bytes.length === 16 && prefix >= 96 &&
    bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? { bytes: bytes.slice(12), prefix: prefix - 96 } : { bytes, prefix };
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

/** The server's set of `--allow` rules. */
export class AllowList {
  readonly rules: readonly AllowRule[];
  #resolve: Resolver;

  constructor(rules: AllowRule[], resolver: Resolver = systemResolver) {
    this.rules = rules;
    this.#resolve = resolver;
  }

  /** Parses rule texts; throws {@linkcode UsageError} for a bad one. */
  static parse(texts: string[], resolver?: Resolver): AllowList {
    return new AllowList(texts.map(parseRule), resolver);
  }

  /**
   * Decides a target: the addresses the server may connect to, each one
   * checked, or the ERROR to answer. Never throws.
   */
  async decide(host: string, port: number): Promise<Decision> {
    const shown = formatHostPort({ host: printable(host), port });
    const refused = (reason = `target ${shown} is not allowed`): Decision => ({
      allowed: false,
      code: ErrorCode.refused,
      reason,
    });
    let target;
    try {
      target = canonicalHost(host);
    } catch (err) {
      if (err instanceof TargetError) return refused(`target refused: ${err.message}`);
      throw err;
    }
    const rules = this.rules.filter((r) => r.port === "*" || r.port === port);
    if (rules.length === 0) return refused();
    if (target.kind !== "name") {
      if (isUnspecified(target)) {
        return refused(`target ${shown} is the unspecified address, which is never a target`);
      }
      const bytes = target.bytes;
      return rules.some((r) => r.network ? inNetwork(bytes, r.network) : r.pattern === ANY_HOST)
        ? { allowed: true, addresses: [target.text] }
        : refused();
    }
    const byName = rules.some((r) => r.pattern?.test(target.text));
    const networks = rules.flatMap((r) => (r.network ? [r.network] : []));
    if (!byName && networks.length === 0) return refused();
    let addresses: string[];
    try {
      addresses = await this.#resolve(target.text);
    } catch (err) {
      if (err instanceof ResolveTimeoutError) {
        return { allowed: false, code: ErrorCode.timedOut, reason: `resolving ${shown} timed out` };
      }
      return { allowed: false, code: ErrorCode.unreachable, reason: `cannot resolve ${shown}` };
    }
    if (byName) {
      return addresses.length > 0
        ? { allowed: true, addresses }
        : { allowed: false, code: ErrorCode.unreachable, reason: `cannot resolve ${shown}` };
    }
    const inside = addresses.filter((address) => {
      const bytes = parseIPv4(address) ?? parseIPv6(address);
      return bytes !== null && networks.some((n) => inNetwork(bytes, n));
    });
    return inside.length > 0 ? { allowed: true, addresses: inside } : refused();
  }
}
