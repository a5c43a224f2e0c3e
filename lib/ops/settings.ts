/**
 * The settings table: every setting of `server` and `client` once, with its
 * command-line option (and the commands that take it), its config-file field
 * (and the roles that have it), the environment variables that supply it,
 * its default, its kind of value (which holds the bounds and the one parser
 * the command line and the config file share), its `--help` line and its
 * line in docs/config.md. The CLI's option tables and help, the config
 * parser's field lists and the docs' tables are all made from it, so a
 * setting added here is known to all of them.
 *
 * @example
 * ```ts
 * import { argValue, SETTINGS } from "./settings.ts";
 * console.log(SETTINGS.maxConns.cli?.commands, SETTINGS.maxConns.default); // [server, client] 100
 * argValue({ "max-conns": "20" }, SETTINGS.maxConns); // 20; without the option: 100
 * ```
 * @module
 */

import {
  DEFAULT_DRAIN_TIMEOUT_SECONDS,
  DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
  DEFAULT_LISTEN_HOST,
  DEFAULT_MAX_CONNS,
  DEFAULT_SERVER_HOST,
  DEFAULT_SERVER_PORT,
  MAX_CONNECTION_COUNT,
} from "../base/defaults.ts";
import { LOG_FORMATS, LOG_LEVELS } from "../base/log.ts";
import { DEFAULT_REKEY_BYTES, MAX_REKEY_BYTES } from "../protocol/channel.ts";
import { CRYPTO_ENV } from "../protocol/crypto/select.ts";
import { CRYPTO_PROVIDERS, DEFAULT_CRYPTO_PROVIDER } from "../protocol/crypto/provider.ts";
import { DEFAULT_KEY_PATH } from "../protocol/keys.ts";
import { DEFAULT_DRAIN_DELAY_SECONDS } from "../tunnel/drain.ts";
import { DEFAULT_TUN_MTU, MAX_TUN_MTU, MIN_TUN_MTU } from "../tunnel/netdev.ts";
import {
  DEFAULT_HELLO_TIMEOUT_MS,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_PENDING_PER_SOURCE,
} from "../tunnel/pending.ts";
import { VPN_DEFAULT_KEEPALIVE_MS } from "../tunnel/vpn_server.ts";
import {
  allowRule,
  cidr,
  count,
  deviceName,
  flag,
  hostPort,
  oneOf,
  path,
  seconds,
  tunnelName,
  type ValueKind,
} from "./values.ts";

/** The commands that run tunnels; a config tunnel's `role` is one of them too. */
export type Command = "server" | "client";
/** Both commands, or both roles. */
const BOTH: readonly Command[] = ["server", "client"];

/** A text that may differ between the commands (or roles). */
export type PerCommand = string | Readonly<Partial<Record<Command, string>>>;

/** The text of `text` for `command`; undefined when it has none there. */
export function forCommand(text: PerCommand | undefined, command: Command): string | undefined {
  return typeof text === "string" || text === undefined ? text : text[command];
}

/** A setting's command-line option. */
export interface CliOption {
  /** The commands that take it. */
  commands: readonly Command[];
  /** The value's placeholder in help (`SECS`, `HOST:PORT`); absent for a switch. */
  metavar?: string;
  /** A one-letter alias (`-h`). */
  short?: string;
  /** Whether it may be repeated (its values form a list). */
  multiple?: boolean;
  /**
   * The help line's text, per command where it differs; `{default}` stands
   * for the default ({@linkcode helpDefault}); `\n` continues on the next
   * line. Absent: not listed (`--help`).
   */
  help?: PerCommand;
  /** Whether `--config FILE` may be given with it (the settings that are not per tunnel). */
  withConfig?: boolean;
}

/** A setting's config-file field. */
export interface ConfigField {
  /** The field's name. */
  key: string;
  /** Where it sits: in each tunnel (default) or in the top-level `log` object. */
  section?: "tunnel" | "log";
  /** The roles (`"role"`) whose tunnels have it. */
  roles: readonly Command[];
  /** "yes" (missing is an error), "vpn mode", or (default) "no", per role where it differs. */
  required?: PerCommand;
  /** What belongs there, for the "is missing (…)" error of a required field. */
  missing?: string;
  /** The docs' "meaning" column, per role where it differs. */
  doc: PerCommand;
  /** The docs' "default" column when not just the default: `{default}` stands for it. */
  docDefault?: PerCommand;
}

/** One setting: see the module's description. */
export interface Setting<T, D extends T | undefined = T | undefined> {
  /** The option's long name without dashes (a config-only field: the field's name). */
  name: string;
  /** Its kind of value, with the bounds and the parser. */
  kind: ValueKind<T>;
  /**
   * The value without the option or field, in the kind's unit (milliseconds
   * for seconds); undefined: none, or a rule that `helpDefault` states and
   * the CLI applies (drain-delay), or one the environment supplies (`env`).
   */
  default: D;
  /** How help shows the default when not as the value (`2^30`, a rule). */
  helpDefault?: string;
  /** The command line's option; absent: config files only. */
  cli?: CliOption;
  /** The config file's field; absent: command line only. */
  config?: ConfigField;
  /** The environment variables that supply its default, in {@linkcode ENVIRONMENT}. */
  env?: readonly string[];
}

/** Any setting, whatever its value's type. */
export type AnySetting = Setting<unknown, unknown>;

function setting<T, D extends T | undefined>(entry: Setting<T, D>): Setting<T, D> {
  return entry;
}

/** A default in seconds as the value the seconds kind makes (milliseconds). */
const secondsDefault = (value: number) => value * 1000;

/**
 * Every setting of `server` and `client`, in the order of a config tunnel's
 * fields (the order the config errors list them in); the command-line-only
 * ones last. The help's order is {@linkcode HELP_ORDER}.
 */
export const SETTINGS = {
  name: setting({
    name: "name",
    kind: tunnelName,
    default: undefined,
    config: {
      key: "name",
      roles: BOTH,
      required: "yes",
      missing: "a unique name for logs and errors",
      doc:
        "unique in the file; 1 to 64 letters, digits, `.`, `_` or `-`. It appears in every log line (`tunnel=NAME`) and in errors",
    },
  }),
  role: setting({
    name: "role",
    kind: oneOf(BOTH),
    default: undefined,
    config: {
      key: "role",
      roles: BOTH,
      required: "yes",
      missing: '"server" or "client"',
      doc: '`"server"` or `"client"`',
    },
  }),
  listen: setting({
    name: "listen",
    kind: hostPort(true),
    default: undefined,
    env: ["CIPHERLINK_SERVER_HOST", "CIPHERLINK_SERVER_PORT"],
    cli: {
      commands: BOTH,
      metavar: "HOST:PORT",
      help: {
        server:
          `where to accept tunnels (default ${DEFAULT_LISTEN_HOST}:${DEFAULT_SERVER_PORT}; port 0 picks one)`,
        client: "port forward: each local connection becomes a session",
      },
    },
    config: {
      key: "listen",
      roles: BOTH,
      required: "yes",
      missing: "HOST:PORT to accept connections on",
      doc:
        '`HOST:PORT` to accept connections on; port 0 picks a free port (logged in `listening on`); not in a `"vpn"` client',
    },
  }),
  key: setting({
    name: "key",
    kind: path,
    default: DEFAULT_KEY_PATH,
    env: ["CIPHERLINK_KEY_FILE"],
    cli: { commands: BOTH, metavar: "PATH", help: "the shared key (default {default})" },
    config: {
      key: "key",
      roles: BOTH,
      required: "yes",
      missing: "the path of the key file",
      doc:
        "path of the key file; a relative path starts at the config file's folder, not the working directory",
      docDefault: "",
    },
  }),
  maxConns: setting({
    name: "max-conns",
    kind: count(1, MAX_CONNECTION_COUNT),
    default: DEFAULT_MAX_CONNS,
    cli: {
      commands: BOTH,
      metavar: "N",
      help: {
        server:
          "concurrent authenticated connections; past it a client\nholding the key is answered ERROR 4, busy (default {default})",
        client: "concurrent local connections (default {default})",
      },
    },
    config: {
      key: "maxConns",
      roles: BOTH,
      doc:
        "server: concurrent authenticated sessions, past it a key holder gets ERROR 4 (busy); client: concurrent local connections",
    },
  }),
  handshakeTimeout: setting({
    name: "handshake-timeout",
    kind: seconds,
    default: secondsDefault(DEFAULT_HANDSHAKE_TIMEOUT_SECONDS),
    cli: {
      commands: BOTH,
      metavar: "SECS",
      help: {
        server: "time to complete the handshake and OPEN (default {default})",
        client: "time the server gets to answer the handshake (default {default})",
      },
    },
    config: {
      key: "handshakeTimeout",
      roles: BOTH,
      doc:
        "server: a connection must finish the handshake and OPEN by then; client: the server must answer by then",
    },
  }),
  keepalive: setting({
    name: "keepalive",
    kind: seconds,
    default: 0,
    cli: {
      commands: BOTH,
      metavar: "SECS",
      help: "PING after this much silence; drop after 3 unanswered (default {default}: off)",
    },
    config: {
      key: "keepalive",
      roles: BOTH,
      doc:
        `send PING after this much silence; drop the peer after 3 unanswered; a VPN tunnel without it uses ${
          VPN_DEFAULT_KEEPALIVE_MS / 1000
        } (0 turns it off there too)`,
      docDefault: "{default} (off)",
    },
  }),
  drainTimeout: setting({
    name: "drain-timeout",
    kind: seconds,
    default: secondsDefault(DEFAULT_DRAIN_TIMEOUT_SECONDS),
    cli: {
      commands: BOTH,
      metavar: "SECS",
      help: {
        server:
          "then stop accepting; time every accepted connection gets to\nfinish before ERROR 6 (default {default}); a second signal ends at once",
        client: "as for the server, for local connections (default {default})",
      },
    },
    config: {
      key: "drainTimeout",
      roles: BOTH,
      doc:
        "when the tunnel stops (shutdown, removed, restarted), how long open sessions may finish",
    },
  }),
  drainDelay: setting({
    name: "drain-delay",
    kind: seconds,
    default: undefined,
    helpDefault: `${DEFAULT_DRAIN_DELAY_SECONDS} with --metrics, else 0`,
    cli: {
      commands: BOTH,
      metavar: "SECS",
      help: {
        server:
          "on SIGINT/SIGTERM, keep accepting this long while /healthz\nanswers 503 (default {default})",
        client: "as for the server, for local connections (default {default})",
      },
    },
    config: {
      key: "drainDelay",
      roles: BOTH,
      doc:
        `on SIGINT/SIGTERM, how long the listener keeps accepting first; default ${DEFAULT_DRAIN_DELAY_SECONDS} with \`--metrics\` (so /healthz shows 503), else 0`,
      docDefault: "see meaning",
    },
  }),
  rekeyBytes: setting({
    name: "rekey-bytes",
    kind: count(1, MAX_REKEY_BYTES),
    default: DEFAULT_REKEY_BYTES,
    helpDefault: `2^${Math.log2(DEFAULT_REKEY_BYTES)}`,
    cli: {
      commands: BOTH,
      metavar: "N",
      help: "plaintext bytes sent under one key before REKEY (default {default})",
    },
    config: {
      key: "rekeyBytes",
      roles: BOTH,
      doc: `a key carries fewer plaintext bytes than this, its REKEY message included (1 to 2^${
        Math.log2(MAX_REKEY_BYTES)
      })`,
    },
  }),
  crypto: setting({
    name: "crypto",
    kind: oneOf(CRYPTO_PROVIDERS),
    default: DEFAULT_CRYPTO_PROVIDER,
    env: [CRYPTO_ENV],
    cli: {
      commands: BOTH,
      metavar: "PROVIDER",
      help: "webcrypto (default) or openssl (OpenSSL 3 libcrypto, faster)",
    },
    config: {
      key: "crypto",
      roles: BOTH,
      doc:
        '`"webcrypto"` or `"openssl"`, the crypto provider (see [Crypto providers](../README.md#crypto-providers)); `CIPHERLINK_CRYPTO` does not apply to files',
    },
  }),
  libcrypto: setting({
    name: "libcrypto",
    kind: path,
    default: undefined,
    cli: {
      commands: BOTH,
      metavar: "PATH",
      help: "the libcrypto for --crypto openssl (default: searched)",
    },
    config: {
      key: "libcrypto",
      roles: BOTH,
      doc:
        'with `"crypto": "openssl"` only: the OpenSSL 3 libcrypto to load; a relative path starts at the config file\'s folder',
      docDefault: "searched",
    },
  }),
  forward: setting({
    name: "forward",
    kind: hostPort(false),
    default: undefined,
    cli: {
      commands: ["server"],
      metavar: "HOST:PORT",
      help: "target of the server's own service (default: echo)",
    },
    config: {
      key: "forward",
      roles: ["server"],
      doc:
        "`HOST:PORT` of the server's own service (what a client gets without asking for an address); without it the service is an echo",
      docDefault: "echo",
    },
  }),
  allow: setting({
    name: "allow",
    kind: allowRule,
    default: undefined,
    cli: {
      commands: ["server"],
      metavar: "RULE",
      multiple: true,
      help:
        "targets clients may ask for: HOST:PORT, HOST:*, *:PORT,\nCIDR:PORT or CIDR:* (HOST may hold * wildcards); repeatable",
    },
    config: {
      key: "allow",
      roles: ["server"],
      doc:
        "the addresses clients may ask for, as the `--allow` rules: `HOST:PORT`, `HOST:*`, `*:PORT`, `CIDR:PORT`, `CIDR:*` (HOST may hold `*`)",
      docDefault: "`[]`",
    },
  }),
  idleTimeout: setting({
    name: "idle-timeout",
    kind: seconds,
    default: 0,
    cli: {
      commands: ["server"],
      metavar: "SECS",
      help: "close sessions silent for this long (default {default}: off)",
    },
    config: {
      key: "idleTimeout",
      roles: ["server"],
      doc: "close a session with no traffic in either direction for that long",
      docDefault: "{default} (off)",
    },
  }),
  maxPending: setting({
    name: "max-pending",
    kind: count(1, MAX_CONNECTION_COUNT),
    default: DEFAULT_MAX_PENDING,
    cli: {
      commands: ["server"],
      metavar: "N",
      help:
        "connections still before a verified message 1; past it the\noldest is dropped (default {default})",
    },
    config: {
      key: "maxPending",
      roles: ["server"],
      doc:
        `connections whose message 1 has not arrived yet (1 to ${MAX_CONNECTION_COUNT}); when full, the oldest of the source holding the most is dropped`,
    },
  }),
  maxPendingPerSource: setting({
    name: "max-pending-per-source",
    kind: count(1, MAX_CONNECTION_COUNT),
    default: DEFAULT_MAX_PENDING_PER_SOURCE,
    cli: {
      commands: ["server"],
      metavar: "N",
      help: "the share of --max-pending one source address may hold\n(default {default})",
    },
    config: {
      key: "maxPendingPerSource",
      roles: ["server"],
      doc: "how many of those one source address may hold; past it that source's oldest is dropped",
    },
  }),
  helloTimeout: setting({
    name: "hello-timeout",
    kind: seconds,
    default: DEFAULT_HELLO_TIMEOUT_MS,
    cli: {
      commands: ["server"],
      metavar: "SECS",
      help: "time a new connection has to send message 1 (default {default})",
    },
    config: {
      key: "helloTimeout",
      roles: ["server"],
      doc: "seconds a new connection has to deliver its complete message 1",
    },
  }),
  mode: setting({
    name: "mode",
    kind: oneOf(["forward", "socks", "vpn"] as const),
    default: "forward",
    config: {
      key: "mode",
      roles: ["client"],
      doc:
        '`"forward"`: every local connection becomes a session; `"socks"`: a SOCKS5 proxy (the request names a target); `"vpn"`: a VPN client (no `listen`)',
    },
  }),
  server: setting({
    name: "server",
    kind: hostPort(false),
    default: undefined,
    env: ["CIPHERLINK_SERVER_HOST", "CIPHERLINK_SERVER_PORT"],
    cli: {
      commands: ["client"],
      metavar: "HOST:PORT",
      help: `the Cipherlink server (default ${DEFAULT_SERVER_HOST}:${DEFAULT_SERVER_PORT})`,
    },
    config: {
      key: "server",
      roles: ["client"],
      required: "yes",
      missing: "HOST:PORT of the Cipherlink server",
      doc: "`HOST:PORT` of the Cipherlink server",
    },
  }),
  connect: setting({
    name: "connect",
    kind: hostPort(false),
    default: undefined,
    cli: {
      commands: ["client"],
      metavar: "HOST:PORT",
      help: "ask the server for this target instead of its own service",
    },
    config: {
      key: "connect",
      roles: ["client"],
      doc:
        "forward mode only: the address to ask the server for; without it, the server's own service",
      docDefault: "none",
    },
  }),
  socks: setting({
    name: "socks",
    kind: hostPort(true),
    default: undefined,
    cli: {
      commands: ["client"],
      metavar: "HOST:PORT",
      help: "SOCKS5 proxy (CONNECT; IPv4, IPv6, domain names)",
    },
  }),
  tun: setting({
    name: "tun",
    kind: deviceName,
    default: undefined,
    cli: {
      commands: BOTH,
      metavar: "NAME",
      help: {
        server: "VPN mode: also carry IP packets through the TUN device NAME",
        client: "VPN mode: carry IP packets through the TUN device NAME",
      },
    },
    config: {
      key: "tun",
      roles: BOTH,
      required: { server: "no", client: "vpn mode" },
      missing: "the VPN device's name",
      doc: {
        server:
          "VPN mode: the TUN device's name (as `--tun`); clients' VPN sessions are served on the same `listen` port as the others",
        client: "the TUN device's name (as `--tun`)",
      },
      docDefault: { server: "none (off)", client: "" },
    },
  }),
  tunAddresses: setting({
    name: "tun-address",
    kind: cidr,
    default: undefined,
    cli: {
      commands: BOTH,
      metavar: "CIDR",
      multiple: true,
      help: {
        server:
          "the server's tunnel address; its network is the clients' pool\n(one IPv4 and one IPv6 at most; repeat for both)",
        client: "the client's tunnel address (one IPv4 and one IPv6 at most)",
      },
    },
    config: {
      key: "tunAddresses",
      roles: BOTH,
      required: { server: "no", client: "vpn mode" },
      missing: "one IPv4 and/or one IPv6 CIDR",
      doc: {
        server:
          "the server's tunnel addresses, a list of one IPv4 and/or one IPv6 CIDR (as `--tun-address`); their networks are the clients' pool",
        client: "the client's tunnel addresses: one IPv4 and/or one IPv6 CIDR (as `--tun-address`)",
      },
      docDefault: { server: "(with `tun`)", client: "" },
    },
  }),
  tunMtu: setting({
    name: "tun-mtu",
    kind: count(MIN_TUN_MTU, MAX_TUN_MTU),
    default: DEFAULT_TUN_MTU,
    cli: { commands: BOTH, metavar: "N", help: "the device's MTU (default {default})" },
    config: {
      key: "tunMtu",
      roles: BOTH,
      doc: {
        server: `the device's MTU, ${MIN_TUN_MTU} to ${MAX_TUN_MTU}`,
        client: `vpn mode: the device's MTU, ${MIN_TUN_MTU} to ${MAX_TUN_MTU}`,
      },
    },
  }),
  routes: setting({
    name: "route",
    kind: cidr,
    default: undefined,
    cli: {
      commands: ["client"],
      metavar: "CIDR",
      multiple: true,
      help: "with --tun: route this network through the tunnel; repeatable",
    },
    config: {
      key: "routes",
      roles: ["client"],
      doc:
        "vpn mode: networks (CIDRs) routed through the device once the server accepted (as `--route`)",
      docDefault: "`[]`",
    },
  }),
  logLevel: setting({
    name: "log-level",
    kind: oneOf(LOG_LEVELS),
    default: "info",
    cli: {
      commands: BOTH,
      metavar: "LEVEL",
      help: "debug, info (default), warn, error",
      withConfig: true,
    },
    config: {
      key: "level",
      section: "log",
      roles: BOTH,
      doc: LOG_LEVELS.map((level) => `\`"${level}"\``).join(", "),
    },
  }),
  logFormat: setting({
    name: "log-format",
    kind: oneOf(LOG_FORMATS),
    default: "text",
    cli: {
      commands: BOTH,
      metavar: "FORMAT",
      help: "text (default) or json",
      withConfig: true,
    },
    config: {
      key: "format",
      section: "log",
      roles: BOTH,
      doc: LOG_FORMATS.map((format) => `\`"${format}"\``).join(" or "),
    },
  }),
  metrics: setting({
    name: "metrics",
    kind: hostPort(true),
    default: undefined,
    cli: {
      commands: BOTH,
      metavar: "HOST:PORT",
      help: {
        server: "serve GET /metrics (Prometheus) and GET /healthz there",
        client: "with --listen/--socks/--tun: serve GET /metrics and GET /healthz",
      },
      withConfig: true,
    },
  }),
  config: setting({
    name: "config",
    kind: path,
    default: undefined,
    cli: {
      commands: BOTH,
      metavar: "FILE",
      help:
        "run every tunnel of a config file instead (docs/config.md);\nSIGHUP reloads it; only {withConfig} may be added",
      withConfig: true,
    },
  }),
  help: setting({
    name: "help",
    kind: flag,
    default: false,
    cli: { commands: BOTH, short: "h" },
  }),
} as const;

/** The settings in table order. */
export const ALL_SETTINGS: readonly AnySetting[] = Object.values(SETTINGS);

/**
 * The order of the option lines in `server --help` and `client --help`
 * (by option name): the most used first.
 */
export const HELP_ORDER: Readonly<Record<Command, readonly string[]>> = {
  server: [
    "listen",
    "key",
    "forward",
    "allow",
    "max-conns",
    "max-pending",
    "max-pending-per-source",
    "hello-timeout",
    "handshake-timeout",
    "idle-timeout",
    "keepalive",
    "drain-delay",
    "drain-timeout",
    "rekey-bytes",
    "crypto",
    "libcrypto",
    "tun",
    "tun-address",
    "tun-mtu",
    "metrics",
    "log-level",
    "log-format",
    "config",
  ],
  client: [
    "server",
    "key",
    "connect",
    "listen",
    "socks",
    "max-conns",
    "keepalive",
    "drain-delay",
    "drain-timeout",
    "rekey-bytes",
    "handshake-timeout",
    "crypto",
    "libcrypto",
    "tun",
    "tun-address",
    "route",
    "tun-mtu",
    "metrics",
    "log-level",
    "log-format",
    "config",
  ],
};

/** An environment variable and the default it supplies. */
export interface EnvironmentVariable {
  name: string;
  /** The README's "default it sets" column. */
  doc: string;
}

/** The environment variables of `server` and `client` (keygen and fingerprint read the key's). */
export const ENVIRONMENT: readonly EnvironmentVariable[] = [
  {
    name: "CIPHERLINK_KEY_FILE",
    doc:
      `the key path of every command (\`--key\`, and \`keygen --out\`); otherwise \`${DEFAULT_KEY_PATH}\`, relative to the current directory`,
  },
  {
    name: "CIPHERLINK_SERVER_HOST",
    doc:
      `the host of the client's \`--server\` (else \`${DEFAULT_SERVER_HOST}\`) and of the server's \`--listen\` (else \`${DEFAULT_LISTEN_HOST}\`)`,
  },
  {
    name: "CIPHERLINK_SERVER_PORT",
    doc:
      `the port of the client's \`--server\` and of the server's \`--listen\` (else ${DEFAULT_SERVER_PORT})`,
  },
  {
    name: CRYPTO_ENV,
    doc: `the crypto provider of \`server\` and \`client\` (${
      CRYPTO_PROVIDERS.map((name) => `\`${name}\``).join(" or ")
    }, see [Crypto providers](#crypto-providers)); else \`${DEFAULT_CRYPTO_PROVIDER}\``,
  },
];

/** The default of `setting` as help shows it; undefined when it has none. */
export function helpDefault(setting: AnySetting): string | undefined {
  if (setting.helpDefault !== undefined) return setting.helpDefault;
  return setting.default === undefined ? undefined : setting.kind.show(setting.default);
}

/** The settings of `command`'s command line, in table order. */
export function cliSettings(command: Command): AnySetting[] {
  return ALL_SETTINGS.filter((s) => s.cli?.commands.includes(command));
}

/** The fields of a `role` tunnel, in table order (the order config errors list them in). */
export function tunnelFields(role: Command): AnySetting[] {
  return ALL_SETTINGS.filter((s) =>
    s.config && (s.config.section ?? "tunnel") === "tunnel" && s.config.roles.includes(role)
  );
}

/** The fields of the config file's `log` object. */
export function logFields(): AnySetting[] {
  return ALL_SETTINGS.filter((s) => s.config?.section === "log");
}

/** The options `--config FILE` may be combined with. */
export function withConfigOptions(): string[] {
  return ALL_SETTINGS.filter((s) => s.cli?.withConfig).map((s) => s.name);
}

/** parseArgs' table for `command`: every option of the settings table that it takes. */
export function optionTable(
  command: Command,
): Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> {
  return Object.fromEntries(
    cliSettings(command).map((s) => {
      const cli = s.cli!;
      return [s.name, {
        type: cli.metavar === undefined ? "boolean" : "string",
        ...(cli.short ? { short: cli.short } : {}),
        ...(cli.multiple ? { multiple: true } : {}),
      }];
    }),
  );
}

/** Width of the option column in help: text starts at column 30. */
const HELP_COLUMN = 28;

/** The option lines of `command --help`, in {@linkcode HELP_ORDER}. */
export function helpLines(command: Command): string {
  const byName = new Map(cliSettings(command).map((s) => [s.name, s]));
  const indent = " ".repeat(HELP_COLUMN + 2);
  const withConfig = withConfigOptions().filter((name) => name !== "config").map((n) => `--${n}`)
    .join(", ");
  return HELP_ORDER[command].map((name) => {
    const s = byName.get(name);
    const text = s && forCommand(s.cli!.help, command);
    if (!s || text === undefined) throw new Error(`help: --${name} is not a ${command} option`);
    const shown = text.replaceAll("{default}", helpDefault(s) ?? "none")
      .replaceAll("{withConfig}", withConfig);
    const option = `--${name} ${s.cli!.metavar ?? ""}`.trimEnd();
    const [first, ...rest] = shown.split("\n");
    return [`  ${option.padEnd(HELP_COLUMN)}${first}`, ...rest.map((line) => indent + line)]
      .join("\n") + "\n";
  }).join("");
}

/** What parseArgs returns for a command line made from {@linkcode optionTable}. */
export type ArgValues = Readonly<
  Record<string, string | boolean | (string | boolean)[] | undefined>
>;

/**
 * The value of `setting` on a command line: its option's text parsed by its
 * kind (a UsageError naming the option when it is wrong), else
 * its default.
 */
export function argValue<T, D extends T | undefined>(
  values: ArgValues,
  setting: Setting<T, D>,
): T | D {
  const raw = values[setting.name];
  if (raw === undefined) return setting.default;
  if (typeof raw !== "string") throw new TypeError(`--${setting.name} is not a single value`);
  return setting.kind.fromText(raw, setting.name);
}

/** The value of `setting`'s option when the command line has it; undefined, not the default, when not. */
export function argGiven<T>(values: ArgValues, setting: Setting<T>): T | undefined {
  return values[setting.name] === undefined ? undefined : argValue(values, setting);
}

/** The values of a repeatable option, each parsed by the setting's kind; none: an empty list. */
export function argList<T>(values: ArgValues, setting: Setting<T>): T[] {
  const raw = values[setting.name];
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) throw new TypeError(`--${setting.name} is not a list`);
  return raw.map((text) => setting.kind.fromText(String(text), setting.name));
}
