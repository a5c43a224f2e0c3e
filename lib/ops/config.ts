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

import { dirname, resolve } from "node:path";
import { locateLibcrypto } from "../protocol/crypto/locate.ts";
import type { CryptoProviderName } from "../protocol/crypto/provider.ts";
import { CipherlinkError, UsageError } from "../base/errors.ts";
import { type LoadedKey, loadKey } from "../protocol/keys.ts";
import type { LogFormat, LogLevel } from "../base/log.ts";
import {
  type JsonObject,
  JsonSyntaxError,
  type JsonValue,
  lineAndColumn,
  parseJsonc,
} from "../base/jsonc.ts";
import { parseOptions } from "../base/options.ts";
import { formatHostPort, type HostPort } from "../protocol/hostport.ts";
import type { Cidr } from "../protocol/packet.ts";
import { VPN_DEFAULT_KEEPALIVE_MS } from "../tunnel/vpn_server.ts";
import { logFields, type Setting, SETTINGS, tunnelFields } from "./settings.ts";
import { describe, ValueProblem } from "./values.ts";

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
  /** `--allow` rules, each checked (lib/tunnel/allow.ts parses them again to serve). */
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
  /**
   * The VPN sessions' keepalive: the tunnel's `keepalive` when given (0 turns
   * it off, as `--keepalive 0` does), else the VPN mode's default.
   */
  keepaliveMs: number;
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

/** The fields of a server and of a client tunnel, as the settings table lists them. */
const ROLE_FIELDS = {
  server: tunnelFields("server").map((setting) => setting.config!.key),
  client: tunnelFields("client").map((setting) => setting.config!.key),
};
const TOP_FIELDS = ["tunnels", "log"];
const LOG_FIELDS = logFields().map((setting) => setting.config!.key);

type Fail = (field: string | undefined, detail: string) => never;

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

  /** Whether the object has `setting`'s field. */
  hasSetting(setting: Setting<unknown>): boolean {
    return this.has(setting.config!.key);
  }

  /** The field of `setting`, parsed by its kind; absent: its default. */
  value<T, D extends T | undefined>(setting: Setting<T, D>): T | D {
    const key = setting.config!.key;
    if (!this.has(key)) return setting.default;
    return this.parse(key, () => setting.kind.fromJson(this.object[key]));
  }

  /** The field of a setting that must be there: its "is missing" error says what belongs there. */
  required<T>(setting: Setting<T>): T {
    const { key, missing } = setting.config!;
    if (!this.has(key)) this.fail(key, `is missing (${missing})`);
    return this.value(setting)!;
  }

  /** A list field: each item parsed by the setting's kind; absent: an empty list. */
  list<T>(setting: Setting<T>): T[] {
    const key = setting.config!.key;
    if (!this.has(key)) return [];
    const value = this.object[key];
    if (!Array.isArray(value)) {
      this.fail(key, `must be a list of ${setting.kind.plural}, not ${describe(value)}`);
    }
    return value.map((item, i) => this.parse(`${key}[${i}]`, () => setting.kind.fromJson(item)));
  }

  private parse<T>(field: string, read: () => T): T {
    try {
      return read();
    } catch (err) {
      if (err instanceof ValueProblem) this.fail(field, err.message);
      throw err;
    }
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
  // Absent fields stay absent: the command line's --log-level/--log-format may still set them.
  return {
    level: fields.hasSetting(SETTINGS.logLevel) ? fields.value(SETTINGS.logLevel) : undefined,
    format: fields.hasSetting(SETTINGS.logFormat) ? fields.value(SETTINGS.logFormat) : undefined,
  };
}

function parseTunnel(entry: JsonValue, index: number, file: string, folder: string): TunnelConfig {
  let label = `#${index + 1}`;
  const fail: Fail = (field, detail) => {
    throw new ConfigError(file, detail, { tunnel: label, field });
  };
  if (!isObject(entry)) fail(undefined, `must be an object, not ${describe(entry)}`);
  const fields = new Fields(entry, fail);
  const name = fields.required(SETTINGS.name);
  label = name;
  const role = fields.required(SETTINGS.role);
  const other = role === "server" ? ROLE_FIELDS.client : ROLE_FIELDS.server;
  fields.rejectUnknown(ROLE_FIELDS[role], other, role);
  const mode = role === "client" ? fields.value(SETTINGS.mode) : undefined;
  if (mode === "vpn" && fields.hasSetting(SETTINGS.listen)) {
    fail("listen", "has no meaning in vpn mode (a VPN client accepts no connections)");
  }
  const base: TunnelBase = {
    name,
    listen: mode === "vpn" ? null : fields.required(SETTINGS.listen),
    key: resolve(folder, fields.required(SETTINGS.key)),
    maxConns: fields.value(SETTINGS.maxConns),
    handshakeTimeoutMs: fields.value(SETTINGS.handshakeTimeout),
    keepaliveMs: fields.value(SETTINGS.keepalive),
    drainTimeoutMs: fields.value(SETTINGS.drainTimeout),
    rekeyBytes: fields.value(SETTINGS.rekeyBytes),
    ...parseCrypto(fields, folder),
  };
  const drainDelayMs = fields.value(SETTINGS.drainDelay);
  if (drainDelayMs !== undefined) base.drainDelayMs = drainDelayMs;
  if (role === "server") {
    return {
      ...base,
      role,
      forward: fields.value(SETTINGS.forward),
      allow: fields.list(SETTINGS.allow),
      idleTimeoutMs: fields.value(SETTINGS.idleTimeout),
      maxPending: fields.value(SETTINGS.maxPending),
      maxPendingPerSource: fields.value(SETTINGS.maxPendingPerSource),
      helloTimeoutMs: fields.value(SETTINGS.helloTimeout),
      ...optional("vpn", parseTun(fields, "server")),
    };
  }
  const connect = fields.value(SETTINGS.connect);
  if (mode === "socks" && connect) {
    fail("connect", "has no meaning in socks mode (each SOCKS request names its target)");
  }
  if (mode === "vpn" && connect) fail("connect", "has no meaning in vpn mode");
  if (mode !== "vpn") {
    const stray = VPN_FIELDS.find((setting) => fields.hasSetting(setting));
    if (stray) fail(stray.config!.key, `is a field of vpn mode (mode is "${mode}")`);
  }
  return {
    ...base,
    role,
    mode: mode!,
    server: fields.required(SETTINGS.server),
    connect,
    ...optional("vpn", mode === "vpn" ? parseTun(fields, "client") : undefined),
  };
}

/** The fields of VPN mode: `tun` and the ones that need it. */
const VPN_FIELDS = [SETTINGS.tun, SETTINGS.tunAddresses, SETTINGS.tunMtu, SETTINGS.routes];

/** `{ [name]: value }`, or nothing when the value is undefined (tunnels list only fields that are set). */
function optional<K extends string, V>(name: K, value: V | undefined): { [key in K]?: V } {
  return value === undefined ? {} : { [name]: value } as { [key in K]: V };
}

/** `tun`, `tunAddresses`, `tunMtu` (and a client's `routes`); undefined without `tun` on a server. */
function parseTun(fields: Fields, role: "server" | "client"): TunSettings | undefined {
  if (!fields.hasSetting(SETTINGS.tun)) {
    const stray = VPN_FIELDS.slice(1).find((setting) => fields.hasSetting(setting));
    if (stray) fields.fail(stray.config!.key, `needs "tun" (the VPN device's name)`);
    if (role === "client") fields.required(SETTINGS.tun);
    return undefined;
  }
  const device = fields.required(SETTINGS.tun);
  const addresses = fields.list(SETTINGS.tunAddresses);
  if (addresses.length === 0) {
    fields.fail("tunAddresses", `is missing (${SETTINGS.tunAddresses.config!.missing})`);
  }
  if (
    addresses.length > 2 || (addresses.length === 2 && addresses[0].family === addresses[1].family)
  ) {
    fields.fail("tunAddresses", "takes at most one IPv4 and one IPv6 address");
  }
  return {
    device,
    addresses,
    mtu: fields.value(SETTINGS.tunMtu),
    routes: fields.list(SETTINGS.routes),
    keepaliveMs: fields.hasSetting(SETTINGS.keepalive)
      ? fields.value(SETTINGS.keepalive)
      : VPN_DEFAULT_KEEPALIVE_MS,
  };
}

/** `crypto` (default webcrypto; CIPHERLINK_CRYPTO does not apply to files) and `libcrypto`. */
function parseCrypto(
  fields: Fields,
  folder: string,
): { crypto: CryptoProviderName; libcrypto?: string } {
  const crypto = fields.value(SETTINGS.crypto);
  const libcrypto = fields.value(SETTINGS.libcrypto);
  if (libcrypto === undefined) return { crypto };
  if (crypto !== "openssl") fields.fail("libcrypto", 'has no meaning unless "crypto" is "openssl"');
  return { crypto, libcrypto: resolve(folder, libcrypto) };
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
