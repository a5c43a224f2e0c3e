/**
 * The multi-tunnel config file (`--config FILE`, `cipherlink check-config FILE`):
 * JSON with `//` and `/* *\/` comments and trailing commas, listing server
 * and client tunnels, each with its own key, target, rules and limits.
 *
 * Parsing and validation are strict: unknown fields, wrong types, bad
 * `HOST:PORT` values, duplicate names and clashing listen addresses are all
 * errors. Every error is a {@linkcode ConfigError} whose one-line message
 * names the file and, where it applies, the line and column, the tunnel and
 * the field. The format is documented for users in docs/config.md.
 *
 * @example
 * ```ts
 * import { loadConfig } from "./config.ts";
 * const { config, keys } = await loadConfig("/etc/cipherlink/tunnels.json");
 * for (const tunnel of config.tunnels) console.log(tunnel.name, keys.get(tunnel.name)!.key.length);
 * ```
 * @module
 */

import {
  DEFAULT_DRAIN_TIMEOUT_SECONDS,
  DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
  DEFAULT_MAX_CONNS,
  MAX_CONNECTION_COUNT,
} from "../base/defaults.ts";
import { dirname, resolve } from "node:path";
import { AllowList, AllowRuleError } from "../tunnel/allow.ts";
import { DEFAULT_REKEY_BYTES } from "../protocol/channel.ts";
import { locateLibcrypto } from "../protocol/crypto/locate.ts";
import { CRYPTO_PROVIDERS, type CryptoProviderName } from "../protocol/crypto/provider.ts";
import { CipherlinkError, UsageError } from "../base/errors.ts";
import { type LoadedKey, loadKey } from "../protocol/keys.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../base/log.ts";
import {
  type JsonObject,
  JsonSyntaxError,
  type JsonValue,
  lineAndColumn,
  parseJsonc,
} from "../base/jsonc.ts";
import { parseOptions } from "../base/options.ts";
import {
  DEFAULT_HELLO_TIMEOUT_MS,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_PENDING_PER_SOURCE,
} from "../tunnel/pending.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../protocol/hostport.ts";
import { DEFAULT_TUN_MTU, MAX_TUN_MTU, MIN_TUN_MTU } from "../tunnel/netdev.ts";
import { type Cidr, parseCidr } from "../protocol/packet.ts";
import { checkDeviceName } from "../tunnel/tun.ts";

/**
 * A config file that cannot be read, parsed or validated. The CLI prints the
 * message after `cipherlink: error: ` and exits 1.
 */
export class ConfigError extends CipherlinkError {
  /** The config file as given. */
  readonly file: string;
  /** The tunnel's name, or `#N` (1-based) when it has no valid name; absent for file-level errors. */
  readonly tunnel?: string;
  /** The field, as a path such as `listen`, `allow[2]` or `log.level`. */
  readonly field?: string;
  /** What is wrong, without the location. */
  readonly detail: string;

  constructor(
    file: string,
    detail: string,
    where: { tunnel?: string; field?: string; line?: number; column?: number } = {},
  ) {
    const position = where.line === undefined ? "" : ` line ${where.line}, column ${where.column}:`;
    const tunnel = where.tunnel === undefined
      ? ""
      : ` tunnel ${where.tunnel.startsWith("#") ? where.tunnel : `"${where.tunnel}"`}:`;
    const field = where.field === undefined ? "" : ` field "${where.field}":`;
    super(`config ${file}:${position}${tunnel}${field} ${detail}`);
    this.file = file;
    this.tunnel = where.tunnel;
    this.field = where.field;
    this.detail = detail;
  }
}

/** Settings every tunnel has; times in milliseconds. */
interface TunnelBase {
  name: string;
  /** Where it accepts connections; null for a VPN client, which accepts none. */
  listen: HostPort | null;
  /** The key file's path, resolved against the config file's folder. */
  key: string;
  maxConns: number;
  handshakeTimeoutMs: number;
  keepaliveMs: number;
  drainTimeoutMs: number;
  /** `drainDelay` when given; absent, the supervisor's default applies. */
  drainDelayMs?: number;
  rekeyBytes: number;
  /** The crypto provider (`--crypto`); the wire is the same with either. */
  crypto: CryptoProviderName;
  /** openssl only: the libcrypto path, resolved against the config file's folder. */
  libcrypto?: string;
}

/** A server listener: accepts tunnels and serves echo, `forward` or `allow`ed targets. */
export interface ServerTunnelConfig extends TunnelBase {
  role: "server";
  forward?: HostPort;
  /** `--allow` rules, already checked by {@linkcode AllowList.parse}. */
  allow: string[];
  idleTimeoutMs: number;
  /** Connections whose message 1 has not verified yet (see lib/tunnel/pending.ts). */
  maxPending: number;
  /** The share of maxPending one source address may hold. */
  maxPendingPerSource: number;
  /** Deadline for a complete message 1. */
  helloTimeoutMs: number;
  /** VPN mode (`tun`, `tunAddresses`, `tunMtu`): absent when off. */
  vpn?: TunSettings;
}

/** A VPN device's settings, as `--tun`, `--tun-address`, `--tun-mtu` and `--route` give them. */
export interface TunSettings {
  device: string;
  addresses: Cidr[];
  mtu: number;
  /** Client only: networks routed through the device. */
  routes: Cidr[];
}

/** A client listener: a port forward or a SOCKS5 proxy into a Cipherlink server. */
export interface ClientTunnelConfig extends TunnelBase {
  role: "client";
  /** "vpn": a VPN client (`tun`, `tunAddresses`, `routes`, `tunMtu`), with no `listen`. */
  mode: "forward" | "socks" | "vpn";
  server: HostPort;
  /** Forward mode: the address to OPEN; absent means the server's own service. */
  connect?: HostPort;
  /** VPN mode's device settings. */
  vpn?: TunSettings;
}

/** One validated tunnel. */
export type TunnelConfig = ServerTunnelConfig | ClientTunnelConfig;

/** A validated config file. */
export interface Config {
  /** The file as given. */
  file: string;
  tunnels: TunnelConfig[];
  /** Log settings; the command line's --log-level/--log-format win over them. */
  log: { level?: LogLevel; format?: LogFormat };
}

// ---------------------------------------------------------------------------
// JSON with comments (base/jsonc.ts), errors as ConfigError

/**
 * Parses JSON with comments and trailing commas (base/jsonc.ts: duplicate
 * keys are errors). Throws {@linkcode ConfigError} with the line and column.
 *
 * @example
 * ```ts
 * parseJsonWithComments('{ "a": [1, 2,], // note\n }', "x.json"); // { a: [1, 2] }
 * ```
 */
export function parseJsonWithComments(text: string, file: string): JsonValue {
  try {
    return parseJsonc(text);
  } catch (err) {
    if (!(err instanceof JsonSyntaxError)) throw err;
    const { line, column } = lineAndColumn(text, err.offset);
    throw new ConfigError(file, err.message, { line, column });
  }
}

// ---------------------------------------------------------------------------
// Validation

/** Longest timer setTimeout honours (2^31 - 1 ms); longer ones would fire at once. */
export const MAX_SECONDS = 2_147_483;

/**
 * The one check on a number of seconds, for the command line and the config
 * file alike: what is wrong with `value`, or null when it is a duration from
 * 0 to {@linkcode MAX_SECONDS}.
 */
export function secondsProblem(value: unknown): string | null {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 && value <= MAX_SECONDS
    ? null
    : `must be a number of seconds from 0 to ${MAX_SECONDS}`;
}
const COMMON_FIELDS = [
  "name",
  "role",
  "listen",
  "key",
  "maxConns",
  "handshakeTimeout",
  "keepalive",
  "drainTimeout",
  "drainDelay",
  "rekeyBytes",
  "crypto",
  "libcrypto",
];
const ROLE_FIELDS = {
  server: [
    ...COMMON_FIELDS,
    "forward",
    "allow",
    "idleTimeout",
    "maxPending",
    "maxPendingPerSource",
    "helloTimeout",
    "tun",
    "tunAddresses",
    "tunMtu",
  ],
  client: [
    ...COMMON_FIELDS,
    "mode",
    "server",
    "connect",
    "tun",
    "tunAddresses",
    "tunMtu",
    "routes",
  ],
} as const;
const TOP_FIELDS = ["tunnels", "log"];
const LOG_FIELDS = ["level", "format"];
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

type Fail = (field: string | undefined, detail: string) => never;

function describe(value: JsonValue): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return `'${value}'`;
  return String(value);
}

function isObject(value: JsonValue | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Reads the fields of one JSON object, failing with the field's name. */
class Fields {
  constructor(readonly object: JsonObject, readonly fail: Fail) {}

  has(name: string): boolean {
    return Object.hasOwn(this.object, name);
  }

  rejectUnknown(allowed: readonly string[], otherRole?: readonly string[], role?: string): void {
    for (const name of Object.keys(this.object)) {
      if (allowed.includes(name)) continue;
      if (otherRole?.includes(name)) {
        this.fail(name, `is not a field of a ${role} tunnel`);
      }
      this.fail(name, `unknown field; allowed here: ${allowed.join(", ")}`);
    }
  }

  string(name: string): string | undefined {
    if (!this.has(name)) return undefined;
    const value = this.object[name];
    if (typeof value !== "string") this.fail(name, `must be a string, not ${describe(value)}`);
    return value;
  }

  requiredString(name: string, what: string): string {
    const value = this.string(name);
    if (value === undefined) this.fail(name, `is missing (${what})`);
    if (value === "") this.fail(name, "must not be empty");
    return value;
  }

  hostPort(name: string, allowPortZero = false): HostPort | undefined {
    const text = this.string(name);
    if (text === undefined) return undefined;
    try {
      return parseHostPort(text, allowPortZero);
    } catch (err) {
      return this.fail(name, (err as Error).message);
    }
  }

  requiredHostPort(name: string, what: string, allowPortZero = false): HostPort {
    if (!this.has(name)) this.fail(name, `is missing (${what})`);
    return this.hostPort(name, allowPortZero)!;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[]): T | undefined {
    const text = this.string(name);
    if (text === undefined) return undefined;
    if (!(allowed as readonly string[]).includes(text)) {
      this.fail(name, `must be one of ${allowed.map((a) => `"${a}"`).join(", ")}, not '${text}'`);
    }
    return text as T;
  }

  /** Seconds as a JSON number; resolves milliseconds. */
  seconds(name: string, fallback: number): number {
    if (!this.has(name)) return fallback * 1000;
    const value = this.object[name];
    const problem = secondsProblem(value);
    if (problem) this.fail(name, `${problem}, not ${describe(value)}`);
    return (value as number) * 1000;
  }

  integer(name: string, fallback: number, min: number, max: number): number {
    if (!this.has(name)) return fallback;
    const value = this.object[name];
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      this.fail(name, `must be a whole number from ${min} to ${max}, not ${describe(value)}`);
    }
    return value;
  }
}

/**
 * Validates the text of a config file (no file access: key files are
 * checked by {@linkcode loadTunnelKeys}). Relative key paths are resolved
 * against the folder of `file`. Throws {@linkcode ConfigError}.
 */
export function parseConfig(text: string, file: string): Config {
  const root = parseJsonWithComments(text, file);
  if (!isObject(root)) {
    throw new ConfigError(
      file,
      `must hold a JSON object with a "tunnels" list, not ${describe(root)}`,
    );
  }
  const top: Fields = new Fields(root, (field, detail) => {
    throw new ConfigError(file, detail, { field });
  });
  top.rejectUnknown(TOP_FIELDS);
  const list = root.tunnels;
  if (!Array.isArray(list) || list.length === 0) {
    top.fail(
      "tunnels",
      list === undefined
        ? "is missing (the list of tunnels)"
        : "must be a non-empty list of tunnels",
    );
  }
  const folder = dirname(file);
  const tunnels = list.map((entry, index) => parseTunnel(entry, index, file, folder));
  checkDistinct(tunnels, file);
  return { file, tunnels, log: parseLog(root.log, file) };
}

function parseLog(value: JsonValue | undefined, file: string): Config["log"] {
  if (value === undefined) return {};
  const fail: Fail = (field, detail) => {
    throw new ConfigError(file, detail, { field: field ? `log.${field}` : "log" });
  };
  if (!isObject(value)) fail(undefined, `must be an object, not ${describe(value)}`);
  const fields = new Fields(value, fail);
  fields.rejectUnknown(LOG_FIELDS);
  return { level: fields.oneOf("level", LOG_LEVELS), format: fields.oneOf("format", LOG_FORMATS) };
}

function parseTunnel(entry: JsonValue, index: number, file: string, folder: string): TunnelConfig {
  let label = `#${index + 1}`;
  const fail: Fail = (field, detail) => {
    throw new ConfigError(file, detail, { tunnel: label, field });
  };
  if (!isObject(entry)) fail(undefined, `must be an object, not ${describe(entry)}`);
  const fields = new Fields(entry, fail);
  const name = fields.requiredString("name", "a unique name for logs and errors");
  if (!NAME_PATTERN.test(name)) {
    fail(
      "name",
      `'${name}' must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  label = name;
  const role = fields.oneOf("role", ["server", "client"] as const);
  if (role === undefined) fail("role", `is missing ("server" or "client")`);
  const other = role === "server" ? ROLE_FIELDS.client : ROLE_FIELDS.server;
  fields.rejectUnknown(ROLE_FIELDS[role], other, role);
  const mode = role === "client"
    ? fields.oneOf("mode", ["forward", "socks", "vpn"] as const) ?? "forward"
    : undefined;
  if (mode === "vpn" && fields.has("listen")) {
    fail("listen", "has no meaning in vpn mode (a VPN client accepts no connections)");
  }
  const base: TunnelBase = {
    name,
    listen: mode === "vpn"
      ? null
      : fields.requiredHostPort("listen", "HOST:PORT to accept connections on", true),
    key: resolve(folder, fields.requiredString("key", "the path of the key file")),
    maxConns: fields.integer("maxConns", DEFAULT_MAX_CONNS, 1, MAX_CONNECTION_COUNT),
    handshakeTimeoutMs: fields.seconds("handshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT_SECONDS),
    keepaliveMs: fields.seconds("keepalive", 0),
    drainTimeoutMs: fields.seconds("drainTimeout", DEFAULT_DRAIN_TIMEOUT_SECONDS),
    rekeyBytes: fields.integer("rekeyBytes", DEFAULT_REKEY_BYTES, 1, DEFAULT_REKEY_BYTES),
    ...parseCrypto(fields, folder),
  };
  if (fields.has("drainDelay")) base.drainDelayMs = fields.seconds("drainDelay", 0);
  if (role === "server") {
    return {
      ...base,
      role,
      forward: fields.hostPort("forward"),
      allow: parseAllow(fields),
      idleTimeoutMs: fields.seconds("idleTimeout", 0),
      maxPending: fields.integer("maxPending", DEFAULT_MAX_PENDING, 1, MAX_CONNECTION_COUNT),
      maxPendingPerSource: fields.integer(
        "maxPendingPerSource",
        DEFAULT_MAX_PENDING_PER_SOURCE,
        1,
        MAX_CONNECTION_COUNT,
      ),
      helloTimeoutMs: fields.seconds("helloTimeout", DEFAULT_HELLO_TIMEOUT_MS / 1000),
      ...optional("vpn", parseTun(fields, "server")),
    };
  }
  const connect = fields.hostPort("connect");
  if (mode === "socks" && connect) {
    fail("connect", "has no meaning in socks mode (each SOCKS request names its target)");
  }
  if (mode === "vpn" && connect) fail("connect", "has no meaning in vpn mode");
  if (mode !== "vpn") {
    const stray = ["tun", "tunAddresses", "tunMtu", "routes"].find((f) => fields.has(f));
    if (stray) fail(stray, `is a field of vpn mode (mode is "${mode}")`);
  }
  return {
    ...base,
    role,
    mode: mode!,
    server: fields.requiredHostPort("server", "HOST:PORT of the Cipherlink server"),
    connect,
    ...optional("vpn", mode === "vpn" ? parseTun(fields, "client") : undefined),
  };
}

/** `{ [name]: value }`, or nothing when the value is undefined (tunnels list only fields that are set). */
function optional<K extends string, V>(name: K, value: V | undefined): { [key in K]?: V } {
  return value === undefined ? {} : { [name]: value } as { [key in K]: V };
}

/** `tun`, `tunAddresses`, `tunMtu` (and a client's `routes`); undefined without `tun` on a server. */
function parseTun(fields: Fields, role: "server" | "client"): TunSettings | undefined {
  if (!fields.has("tun")) {
    const stray = ["tunAddresses", "tunMtu", "routes"].find((f) => fields.has(f));
    if (stray) fields.fail(stray, `needs "tun" (the VPN device's name)`);
    if (role === "client") fields.fail("tun", "is missing (the VPN device's name)");
    return undefined;
  }
  const device = fields.requiredString("tun", "the VPN device's name");
  try {
    checkDeviceName(device);
  } catch (err) {
    fields.fail("tun", (err as Error).message);
  }
  const cidrs = (name: string): Cidr[] => {
    if (!fields.has(name)) return [];
    const value = fields.object[name];
    if (!Array.isArray(value)) fields.fail(name, `must be a list of CIDRs, not ${describe(value)}`);
    return value.map((item, i) => {
      if (typeof item !== "string") {
        fields.fail(`${name}[${i}]`, `must be a CIDR string, not ${describe(item)}`);
      }
      try {
        return parseCidr(item, "it");
      } catch (err) {
        return fields.fail(`${name}[${i}]`, (err as Error).message);
      }
    });
  };
  const addresses = cidrs("tunAddresses");
  if (addresses.length === 0) {
    fields.fail("tunAddresses", "is missing (one IPv4 and/or one IPv6 CIDR)");
  }
  if (
    addresses.length > 2 || (addresses.length === 2 && addresses[0].family === addresses[1].family)
  ) {
    fields.fail("tunAddresses", "takes at most one IPv4 and one IPv6 address");
  }
  return {
    device,
    addresses,
    mtu: fields.integer("tunMtu", DEFAULT_TUN_MTU, MIN_TUN_MTU, MAX_TUN_MTU),
    routes: cidrs("routes"),
  };
}

/** `crypto` (default webcrypto; CIPHERLINK_CRYPTO does not apply to files) and `libcrypto`. */
function parseCrypto(
  fields: Fields,
  folder: string,
): { crypto: CryptoProviderName; libcrypto?: string } {
  const crypto = fields.oneOf("crypto", CRYPTO_PROVIDERS) ?? "webcrypto";
  const libcrypto = fields.string("libcrypto");
  if (libcrypto === undefined) return { crypto };
  if (crypto !== "openssl") fields.fail("libcrypto", 'has no meaning unless "crypto" is "openssl"');
  if (libcrypto === "") fields.fail("libcrypto", "must not be empty");
  return { crypto, libcrypto: resolve(folder, libcrypto) };
}

function parseAllow(fields: Fields): string[] {
  if (!fields.has("allow")) return [];
  const value = fields.object.allow;
  if (!Array.isArray(value)) {
    fields.fail("allow", `must be a list of rules, not ${describe(value)}`);
  }
  return value.map((rule, i) => {
    if (typeof rule !== "string") {
      fields.fail(`allow[${i}]`, `must be a rule string, not ${describe(rule)}`);
    }
    try {
      AllowList.parse([rule]);
    } catch (err) {
      // The rule's own words, without the command line option's name: here the field names it.
      fields.fail(
        `allow[${i}]`,
        err instanceof AllowRuleError ? err.detail : (err as Error).message,
      );
    }
    return rule;
  });
}

const WILDCARD_HOSTS = ["0.0.0.0", "::", ""];

/** Names are unique; no two tunnels listen on the same port of overlapping addresses. */
function checkDistinct(tunnels: TunnelConfig[], file: string): void {
  const seen = new Map<string, TunnelConfig>();
  for (const tunnel of tunnels) {
    if (seen.has(tunnel.name)) {
      throw new ConfigError(file, `the name '${tunnel.name}' is used by more than one tunnel`, {
        tunnel: tunnel.name,
        field: "name",
      });
    }
    const listen = tunnel.listen;
    const clash = listen &&
      [...seen.values()].find(({ listen: other }) =>
        other && other.port !== 0 && other.port === listen.port &&
        (other.host === listen.host ||
          WILDCARD_HOSTS.includes(other.host) || WILDCARD_HOSTS.includes(listen.host))
      );
    if (clash) {
      throw new ConfigError(
        file,
        `${formatHostPort(listen)} overlaps the listen address of tunnel "${clash.name}" (${
          formatHostPort(clash.listen!)
        })`,
        { tunnel: tunnel.name, field: "listen" },
      );
    }
    seen.set(tunnel.name, tunnel);
  }
}

// ---------------------------------------------------------------------------
// Files

/** Reads and validates a config file (not its key files). Throws {@linkcode ConfigError}. */
export async function readConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound
      ? "the file does not exist"
      : err instanceof Deno.errors.PermissionDenied || err instanceof Deno.errors.NotCapable
      ? "the file cannot be read (permission denied)"
      : `the file cannot be read: ${(err as Error).message}`;
    throw new ConfigError(file, why);
  }
  return parseConfig(text, file);
}

/**
 * Loads every tunnel's key file, by tunnel name. A missing or malformed key
 * throws {@linkcode ConfigError} naming the tunnel and the field `key`.
 */
export async function loadTunnelKeys(config: Config): Promise<Map<string, LoadedKey>> {
  const keys = new Map<string, LoadedKey>();
  for (const tunnel of config.tunnels) {
    try {
      keys.set(tunnel.name, await loadKey(tunnel.key));
    } catch (err) {
      throw new ConfigError(config.file, (err as Error).message, {
        tunnel: tunnel.name,
        field: "key",
      });
    }
  }
  return keys;
}

/** {@linkcode readConfig} and {@linkcode loadTunnelKeys}: everything a start needs. */
export async function loadConfig(
  file: string,
): Promise<{ config: Config; keys: Map<string, LoadedKey> }> {
  const config = await readConfig(file);
  return { config, keys: await loadTunnelKeys(config) };
}

/**
 * Throws {@linkcode ConfigError} for the first openssl tunnel whose libcrypto
 * is not there (its `libcrypto` path, or nothing found where one is searched).
 */
export function checkCryptoLibraries(config: Config): void {
  for (const tunnel of config.tunnels) {
    if (tunnel.crypto !== "openssl") continue;
    // The Windows loader resolves a bare DLL name itself: nothing to look at here.
    if (tunnel.libcrypto === undefined && Deno.build.os === "windows") continue;
    const { path, tried } = locateLibcrypto(tunnel.libcrypto);
    let found = false;
    try {
      found = path !== undefined && Deno.statSync(path).isFile;
    } catch {
      // missing or unreadable: not found
    }
    if (!found) {
      throw new ConfigError(
        config.file,
        `no OpenSSL 3 libcrypto at ${tried.join(", ")}`,
        { tunnel: tunnel.name, field: tunnel.libcrypto === undefined ? "crypto" : "libcrypto" },
      );
    }
  }
}

/**
 * `cipherlink check-config FILE`: validates the file and loads its key
 * files without starting anything. Prints `config FILE: ok (N tunnels)` and
 * resolves 0; a bad file throws {@linkcode ConfigError} (the CLI exits 1),
 * a bad command line {@linkcode UsageError} (exit 2). Key files readable by
 * others are warned about on stderr. A tunnel with `"crypto": "openssl"`
 * needs its libcrypto to exist (it is not loaded: check-config has no FFI).
 */
export async function checkConfigCommand(
  args: string[],
  io: { stdout(text: string): void; stderr(text: string): void },
  helpText: string,
): Promise<number> {
  const { values, positionals } = parseOptions("check-config", args, {
    help: { type: "boolean", short: "h" },
  }, { allowPositionals: true });
  if (values.help) {
    io.stdout(helpText);
    return 0;
  }
  if (positionals.length !== 1) {
    throw new UsageError(
      positionals.length === 0 ? "check-config needs a FILE" : "check-config takes one FILE",
    );
  }
  const file = positionals[0];
  const { config, keys } = await loadConfig(file);
  checkCryptoLibraries(config);
  for (const tunnel of config.tunnels) {
    const warning = keys.get(tunnel.name)?.warning;
    if (warning) {
      io.stderr(`cipherlink: warning: config ${file}: tunnel "${tunnel.name}": ${warning}\n`);
    }
  }
  const count = config.tunnels.length;
  io.stdout(`config ${file}: ok (${count} ${count === 1 ? "tunnel" : "tunnels"})\n`);
  return 0;
}
