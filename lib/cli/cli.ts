/**
 * The command line: `keygen`, `server`, `client`, help and version, with the
 * options, defaults, environment variables and exit codes of the CLI
 * contract. Returns an exit code instead of exiting, so tests can call it.
 *
 * @example
 * ```ts
 * import { main } from "./cli.ts";
 * Deno.exit(await main(["keygen", "--out", "keys/demo.key"]));
 * ```
 * @module
 */

import {
  DEFAULT_DRAIN_TIMEOUT_SECONDS,
  DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
  DEFAULT_MAX_CONNS,
  MAX_CONNECTION_COUNT,
} from "../base/defaults.ts";
import { AllowList } from "../tunnel/allow.ts";
import { DEFAULT_REKEY_BYTES } from "../protocol/channel.ts";
import { connect, type ConnectOptions } from "../tunnel/client.ts";
import { checkConfigCommand, MAX_SECONDS, secondsProblem } from "../ops/config.ts";
import {
  CRYPTO_ENV,
  CRYPTO_PROVIDERS,
  type CryptoProvider,
  type CryptoProviderName,
  DEFAULT_CRYPTO_PROVIDER,
  loadCryptoProvider,
} from "../protocol/crypto/select.ts";
import { DEFAULT_DRAIN_DELAY_SECONDS, drainDelayFor } from "../tunnel/drain.ts";
import { CipherlinkError, KeyFileError, UsageError } from "../base/errors.ts";
import { LocalForwarder } from "../tunnel/forwarder.ts";
import {
  DEFAULT_KEY_PATH,
  fingerprint as keyFingerprint,
  generateKeyFile,
  KEY_FORMATS,
  type KeyFormat,
  loadKey,
} from "../protocol/keys.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, Logger, type LogLevel } from "../base/log.ts";
import { serveMetrics } from "../ops/metrics.ts";
import { drainOnSignal, onShutdownSignal } from "../ops/signals.ts";
import { type OptionTable, parseOptions, suggestion, type ValuesOf } from "../base/options.ts";
import { TunnelServer } from "../tunnel/server.ts";
import {
  DEFAULT_HELLO_TIMEOUT_MS,
  DEFAULT_MAX_PENDING,
  DEFAULT_MAX_PENDING_PER_SOURCE,
} from "../tunnel/pending.ts";
import { CONFIG_OPTIONS, runConfig } from "./config_mode.ts";
import { type Cidr, parseCidr } from "../protocol/packet.ts";
import { DEFAULT_TUN_MTU, MAX_TUN_MTU, MIN_TUN_MTU } from "../tunnel/netdev.ts";
import { VpnClient, type VpnClientOptions } from "../tunnel/vpn_client.ts";
import { VpnService } from "../tunnel/vpn_server.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../protocol/hostport.ts";

/** The program version. */
export const VERSION = "0.2.0";
/** The port of the server address when neither an option nor the environment names one. */
const DEFAULT_SERVER_PORT = 8888;
/** Exit codes of the CLI contract. */
export const ExitCode = { ok: 0, failure: 1, usage: 2 } as const;

const COMMANDS = ["keygen", "fingerprint", "server", "client", "check-config"] as const;
const USAGE = `usage: cipherlink <${COMMANDS.join("|")}> [options]   (cipherlink --help for more)`;
/** What --config may be combined with, for the help text. */
const CONFIG_EXTRAS = CONFIG_OPTIONS.filter((name) => name !== "config").map((name) => `--${name}`)
  .join(", ");

const HELP = {
  main: `cipherlink ${VERSION}: an encrypted TCP tunnel and proxy around one pre-shared key

${USAGE}

commands:
  keygen              write a fresh 32-byte key file
  fingerprint         print a key file's fingerprint (compare keys without showing them)
  server              accept tunnels: echo service, a fixed forward target, allowed addresses, VPN (--tun)
  client              one session (MESSAGE or stdin/stdout), a port forward, a SOCKS5 proxy, or a VPN (--tun)
  check-config FILE   validate a --config file and its key files without starting

cipherlink COMMAND --help shows a command's options.
environment: CIPHERLINK_KEY_FILE, CIPHERLINK_SERVER_HOST, CIPHERLINK_SERVER_PORT,
  CIPHERLINK_CRYPTO supply defaults.
exit codes: 0 success, 1 failure at run time, 2 usage error.
`,
  keygen: `usage: cipherlink keygen [--out PATH] [--format raw|hex|base64] [--force]

  --out PATH        where to write the key (default ${DEFAULT_KEY_PATH}); file mode 0600
  --format FORMAT   raw (default), hex or base64
  --force           overwrite an existing file
Prints the path and the key's fingerprint; never the key.
`,
  fingerprint: `usage: cipherlink fingerprint [--key PATH]

  --key PATH        the key file (default ${DEFAULT_KEY_PATH}); raw, hex or base64
Prints the key's fingerprint, the same SHA256:… string keygen printed when it made the key,
so two hosts can check that they hold the same key without showing it.
`,
  server: `usage: cipherlink server [options]

  --listen HOST:PORT          where to accept tunnels (default 0.0.0.0:${DEFAULT_SERVER_PORT}; port 0 picks one)
  --key PATH                  the shared key (default ${DEFAULT_KEY_PATH})
  --forward HOST:PORT         target of the server's own service (default: echo)
  --allow RULE                targets clients may ask for: HOST:PORT, HOST:*, *:PORT,
                              CIDR:PORT or CIDR:* (HOST may hold * wildcards); repeatable
  --max-conns N               concurrent authenticated connections; past it a client
                              holding the key is answered ERROR 4, busy (default ${DEFAULT_MAX_CONNS})
  --max-pending N             connections still before a verified message 1; past it the
                              oldest is dropped (default ${DEFAULT_MAX_PENDING})
  --max-pending-per-source N  the share of --max-pending one source address may hold
                              (default ${DEFAULT_MAX_PENDING_PER_SOURCE})
  --hello-timeout SECS        time a new connection has to send message 1 (default ${
    DEFAULT_HELLO_TIMEOUT_MS / 1000
  })
  --handshake-timeout SECS    time to complete the handshake and OPEN (default ${DEFAULT_HANDSHAKE_TIMEOUT_SECONDS})
  --idle-timeout SECS         close sessions silent for this long (default 0: off)
  --keepalive SECS            PING after this much silence; drop after 3 unanswered (default 0: off)
  --drain-delay SECS          on SIGINT/SIGTERM, keep accepting this long while /healthz
                              answers 503 (default ${DEFAULT_DRAIN_DELAY_SECONDS} with --metrics, else 0)
  --drain-timeout SECS        then stop accepting; time every accepted connection gets to
                              finish before ERROR 6 (default ${DEFAULT_DRAIN_TIMEOUT_SECONDS}); a second signal ends at once
  --rekey-bytes N             plaintext bytes sent under one key before REKEY (default 2^30)
  --crypto PROVIDER           webcrypto (default) or openssl (OpenSSL 3 libcrypto, faster)
  --libcrypto PATH            the libcrypto for --crypto openssl (default: searched)
  --tun NAME                  VPN mode: also carry IP packets through the TUN device NAME
  --tun-address CIDR          the server's tunnel address; its network is the clients' pool
                              (one IPv4 and one IPv6 at most; repeat for both)
  --tun-mtu N                 the device's MTU (default ${DEFAULT_TUN_MTU})
  --metrics HOST:PORT         serve GET /metrics (Prometheus) and GET /healthz there
  --log-level LEVEL           debug, info (default), warn, error
  --log-format FORMAT         text (default) or json
  --config FILE               run every tunnel of a config file instead (docs/config.md);
                              SIGHUP reloads it; only ${CONFIG_EXTRAS} may be added
`,
  client: `usage: cipherlink client [options] [MESSAGE...]

  --server HOST:PORT          the Cipherlink server (default 127.0.0.1:${DEFAULT_SERVER_PORT})
  --key PATH                  the shared key (default ${DEFAULT_KEY_PATH})
  --connect HOST:PORT         ask the server for this target instead of its own service
  --listen HOST:PORT          port forward: each local connection becomes a session
  --socks HOST:PORT           SOCKS5 proxy (CONNECT; IPv4, IPv6, domain names)
  --max-conns N               concurrent local connections (default ${DEFAULT_MAX_CONNS})
  --keepalive SECS            PING after this much silence; drop after 3 unanswered (default 0: off)
  --drain-delay SECS, --drain-timeout SECS   as for the server, for local connections
  --rekey-bytes N             plaintext bytes sent under one key before REKEY (default 2^30)
  --handshake-timeout SECS    time the server gets to answer the handshake (default ${DEFAULT_HANDSHAKE_TIMEOUT_SECONDS})
  --crypto PROVIDER           webcrypto (default) or openssl (OpenSSL 3 libcrypto, faster)
  --libcrypto PATH            the libcrypto for --crypto openssl (default: searched)
  --tun NAME                  VPN mode: carry IP packets through the TUN device NAME
  --tun-address CIDR          the client's tunnel address (one IPv4 and one IPv6 at most)
  --route CIDR                with --tun: route this network through the tunnel; repeatable
  --tun-mtu N                 the device's MTU (default ${DEFAULT_TUN_MTU})
  --metrics HOST:PORT         with --listen/--socks/--tun: serve GET /metrics and GET /healthz
  --log-level LEVEL, --log-format FORMAT   as for the server
  --config FILE               run every tunnel of a config file instead (docs/config.md);
                              SIGHUP reloads it; only ${CONFIG_EXTRAS} may be added

Without --listen/--socks: with MESSAGE, sends it, prints the reply, exits after the
server's CLOSE; without MESSAGE, pipes stdin/stdout through one session (usable as an
ssh ProxyCommand with --connect %h:%p).
With --tun (root or CAP_NET_ADMIN): a VPN client that reconnects with backoff until
SIGINT/SIGTERM; --keepalive defaults to 25 there.
`,
  "check-config": `usage: cipherlink check-config FILE

Validates a --config FILE (JSON; // and /* */ comments and trailing commas allowed) and
loads every tunnel's key file, without starting anything. Prints
"config FILE: ok (N tunnels)" and exits 0; otherwise prints one error line naming the
file, the tunnel and the field, and exits 1. The format is in docs/config.md.
`,
};

const vpnOptions = {
  tun: { type: "string" },
  "tun-address": { type: "string", multiple: true },
  "tun-mtu": { type: "string" },
} as const;

/** The VPN options of a command line, checked: null without --tun. */
function vpnSettings(
  values: { tun?: string; "tun-address"?: string[]; "tun-mtu"?: string; route?: string[] },
): { device: string; addresses: Cidr[]; mtu: number; routes: Cidr[] } | null {
  if (values.tun === undefined) {
    for (const name of ["tun-address", "tun-mtu", "route"] as const) {
      if (values[name] !== undefined) throw new UsageError(`--${name} needs --tun`);
    }
    return null;
  }
  const addresses = (values["tun-address"] ?? []).map((text) => parseCidr(text, "--tun-address"));
  if (addresses.length === 0) throw new UsageError("--tun needs --tun-address CIDR");
  if (
    addresses.length > 2 ||
    (addresses.length === 2 && addresses[0].family === addresses[1].family)
  ) {
    throw new UsageError("--tun-address takes at most one IPv4 and one IPv6 address");
  }
  const mtu = integer("tun-mtu", values["tun-mtu"], DEFAULT_TUN_MTU, MIN_TUN_MTU, MAX_TUN_MTU);
  const routes = (values.route ?? []).map((text) => parseCidr(text, "--route"));
  return { device: values.tun, addresses, mtu, routes };
}

const commonOptions = {
  key: { type: "string" },
  "log-level": { type: "string" },
  "log-format": { type: "string" },
  keepalive: { type: "string" },
  "max-conns": { type: "string" },
  "drain-timeout": { type: "string" },
  "drain-delay": { type: "string" },
  "rekey-bytes": { type: "string" },
  "handshake-timeout": { type: "string" },
  metrics: { type: "string" },
  crypto: { type: "string" },
  libcrypto: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Every command's options; usage errors use them all to say where an option belongs. */
const OPTION_TABLES = {
  keygen: {
    out: { type: "string" },
    format: { type: "string" },
    force: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
  fingerprint: {
    key: { type: "string" },
    help: { type: "boolean", short: "h" },
  },
  server: {
    ...commonOptions,
    listen: { type: "string" },
    forward: { type: "string" },
    allow: { type: "string", multiple: true },
    "idle-timeout": { type: "string" },
    "max-pending": { type: "string" },
    "max-pending-per-source": { type: "string" },
    "hello-timeout": { type: "string" },
    config: { type: "string" },
    ...vpnOptions,
  },
  client: {
    ...commonOptions,
    server: { type: "string" },
    connect: { type: "string" },
    listen: { type: "string" },
    socks: { type: "string" },
    config: { type: "string" },
    ...vpnOptions,
    route: { type: "string", multiple: true },
  },
} as const satisfies Record<string, OptionTable>;

type TableCommand = keyof typeof OPTION_TABLES;

/** Parses one command's options; every mistake is a one-line UsageError. */
function parseCommand<C extends TableCommand>(
  command: C,
  args: string[],
  allowPositionals = false,
): { values: ValuesOf<(typeof OPTION_TABLES)[C]>; positionals: string[] } {
  const otherCommands = Object.fromEntries(
    Object.entries(OPTION_TABLES).filter(([name]) => name !== command),
  );
  return parseOptions(command, args, OPTION_TABLES[command], { allowPositionals, otherCommands });
}

/** Where output goes; tests replace it. */
export interface Io {
  stdout(text: string): void;
  stderr(text: string): void;
}

const encoder = new TextEncoder();
const processIo: Io = {
  stdout: (text) => Deno.stdout.writeSync(encoder.encode(text)),
  stderr: (text) => Deno.stderr.writeSync(encoder.encode(text)),
};

/** Runs the CLI; resolves the exit code. */
export async function main(
  args: string[],
  io: Io = processIo,
): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case "keygen":
        return await keygen(rest, io);
      case "fingerprint":
        return await fingerprintCommand(rest, io);
      case "server":
        return await server(rest, io);
      case "client":
        return await client(rest, io);
      case "check-config":
        return await checkConfigCommand(rest, io, HELP["check-config"]);
      case "--version":
      case "-V":
        io.stdout(`cipherlink ${VERSION} (protocol 2)\n`);
        return ExitCode.ok;
      case "--help":
      case "-h":
      case "help":
        io.stdout(HELP.main);
        return ExitCode.ok;
      case undefined:
        throw new UsageError("no command given");
      default: {
        const close = suggestion(command.replace(/^-+/, ""), COMMANDS);
        throw new UsageError(
          `unknown command '${command}'${close ? `; did you mean ${close}?` : ""}`,
        );
      }
    }
  } catch (err) {
    if (err instanceof UsageError || isParseArgsError(err)) {
      io.stderr(`cipherlink: error: ${(err as Error).message}\n${usageLine(command)}\n`);
      return ExitCode.usage;
    }
    const message = err instanceof CipherlinkError
      ? err.message
      : err instanceof Error
      ? err.message
      : String(err);
    io.stderr(`cipherlink: error: ${message}\n`);
    return ExitCode.failure;
  }
}

/** The usage line of `command` (with where to find more), or the program's. */
function usageLine(command: string | undefined): string {
  if (command === undefined || !Object.hasOwn(HELP, command) || command === "main") return USAGE;
  const first = HELP[command as keyof typeof HELP].split("\n")[0];
  return `${first}   (cipherlink ${command} --help for more)`;
}

function isParseArgsError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return err instanceof TypeError && typeof code === "string" &&
    code.startsWith("ERR_PARSE_ARGS");
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: the defaults stand
  }
}

function seconds(
  name: string,
  text: string | undefined,
  fallback: number,
): number {
  if (text === undefined) return fallback * 1000;
  const value = Number(text);
  // The same bound as the config file's: longer timers would fire at once.
  if (text.trim() === "" || secondsProblem(value)) {
    throw new UsageError(
      `--${name} takes a number of seconds from 0 to ${MAX_SECONDS}, not '${text}'`,
    );
  }
  return value * 1000;
}

function integer(
  name: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new UsageError(
      `--${name} takes a whole number from ${min} to ${max}, not '${text}'`,
    );
  }
  return value;
}

function oneOf<T extends string>(
  name: string,
  text: string | undefined,
  allowed: readonly T[],
  fallback: T,
): T {
  if (text === undefined) return fallback;
  if (!(allowed as readonly string[]).includes(text)) {
    throw new UsageError(
      `--${name} takes one of ${allowed.join(", ")}, not '${text}'`,
    );
  }
  return text as T;
}

function logger(
  values: { "log-level"?: string; "log-format"?: string },
): Logger {
  return new Logger(
    oneOf<LogLevel>("log-level", values["log-level"], LOG_LEVELS, "info"),
    oneOf<LogFormat>("log-format", values["log-format"], LOG_FORMATS, "text"),
  );
}

/**
 * The server address from CIPHERLINK_SERVER_HOST/_PORT and the defaults. A
 * bad value is a usage error that names its variable.
 */
function defaultServerAddress(fallbackHost: string, allowPortZero = false): HostPort {
  const hostVar = env("CIPHERLINK_SERVER_HOST");
  const portVar = env("CIPHERLINK_SERVER_PORT");
  let port = DEFAULT_SERVER_PORT;
  if (portVar !== undefined) {
    port = Number(portVar);
    const lowest = allowPortZero ? 0 : 1;
    if (!/^\d{1,5}$/.test(portVar) || port < lowest || port > 65535) {
      throw new UsageError(
        `CIPHERLINK_SERVER_PORT='${portVar}' is not a port number (${lowest} to 65535)`,
      );
    }
  }
  const host = hostVar ?? fallbackHost;
  try {
    return parseHostPort(formatHostPort({ host, port }), allowPortZero);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    throw new UsageError(`CIPHERLINK_SERVER_HOST='${hostVar}' is not a host name or IP address`);
  }
}

/**
 * The crypto provider of --crypto (else CIPHERLINK_CRYPTO, else webcrypto),
 * loaded now so a missing libcrypto fails before anything starts.
 */
function cryptoProvider(values: { crypto?: string; libcrypto?: string }): CryptoProvider {
  const fromEnv = env(CRYPTO_ENV);
  let name: CryptoProviderName;
  if (values.crypto !== undefined || !fromEnv) {
    name = oneOf("crypto", values.crypto, CRYPTO_PROVIDERS, DEFAULT_CRYPTO_PROVIDER);
  } else if ((CRYPTO_PROVIDERS as readonly string[]).includes(fromEnv)) {
    name = fromEnv as CryptoProviderName;
  } else {
    throw new UsageError(
      `${CRYPTO_ENV} takes one of ${CRYPTO_PROVIDERS.join(", ")}, not '${fromEnv}'`,
    );
  }
  if (values.libcrypto !== undefined && name !== "openssl") {
    throw new UsageError("--libcrypto has no meaning without --crypto openssl");
  }
  return loadCryptoProvider(name, values.libcrypto);
}

/**
 * How the user runs Cipherlink, for hints such as the keygen command: the
 * launcher says how it was invoked (./cipherlink); a compiled executable is
 * `cipherlink`.
 */
function programName(): string {
  return env("CIPHERLINK_ARGV0") || "cipherlink";
}

/** Loads the key from --key, CIPHERLINK_KEY_FILE or the default path. */
async function readKey(
  path: string | undefined,
  warn: (warning: string) => void,
): Promise<Uint8Array> {
  const fromEnv = path === undefined ? env("CIPHERLINK_KEY_FILE") : undefined;
  const keyPath = path ?? fromEnv ?? DEFAULT_KEY_PATH;
  try {
    const { key, warning } = await loadKey(keyPath, programName());
    if (warning) warn(warning);
    return key;
  } catch (err) {
    if (err instanceof KeyFileError && fromEnv !== undefined) {
      throw new KeyFileError(`${err.message} (the path comes from CIPHERLINK_KEY_FILE)`);
    }
    throw err;
  }
}

async function keygen(args: string[], io: Io): Promise<number> {
  const { values } = parseCommand("keygen", args);
  if (values.help) return help(io, "keygen");
  const path = values.out ?? env("CIPHERLINK_KEY_FILE") ?? DEFAULT_KEY_PATH;
  const format = oneOf<KeyFormat>("format", values.format, KEY_FORMATS, "raw");
  const { fingerprint } = await generateKeyFile(
    path,
    format,
    values.force ?? false,
  );
  io.stdout(
    `wrote a new ${format} key to ${path} (mode 0600)\nfingerprint ${fingerprint}\n`,
  );
  return ExitCode.ok;
}

/** `fingerprint`: names an existing key without showing it. */
async function fingerprintCommand(args: string[], io: Io): Promise<number> {
  const { values } = parseCommand("fingerprint", args);
  if (values.help) return help(io, "fingerprint");
  const key = await readKey(
    values.key,
    (warning) => io.stderr(`cipherlink: warning: ${warning}\n`),
  );
  io.stdout(`${await keyFingerprint(key)}\n`);
  return ExitCode.ok;
}

function help(io: Io, command: keyof typeof HELP): number {
  io.stdout(HELP[command]);
  return ExitCode.ok;
}

/** `--drain-delay`: as given, else the default when /healthz is served. */
function drainDelay(values: { "drain-delay"?: string; metrics?: string }): number {
  const given = values["drain-delay"];
  return drainDelayFor(
    given === undefined ? undefined : seconds("drain-delay", given, 0),
    values.metrics !== undefined,
  );
}

async function server(args: string[], io: Io): Promise<number> {
  const { values } = parseCommand("server", args);
  if (values.help) return help(io, "server");
  if (values.config !== undefined) return await runConfig(values.config, values);
  const log = logger(values);
  const options = {
    listen: values.listen === undefined
      ? defaultServerAddress("0.0.0.0", true)
      : parseHostPort(values.listen, true),
    forward: values.forward === undefined ? undefined : parseHostPort(values.forward),
    allow: AllowList.parse(values.allow ?? []),
    maxConns: integer("max-conns", values["max-conns"], DEFAULT_MAX_CONNS, 1, MAX_CONNECTION_COUNT),
    handshakeTimeoutMs: seconds(
      "handshake-timeout",
      values["handshake-timeout"],
      DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
    ),
    idleTimeoutMs: seconds("idle-timeout", values["idle-timeout"], 0),
    maxPending: integer(
      "max-pending",
      values["max-pending"],
      DEFAULT_MAX_PENDING,
      1,
      MAX_CONNECTION_COUNT,
    ),
    maxPendingPerSource: integer(
      "max-pending-per-source",
      values["max-pending-per-source"],
      DEFAULT_MAX_PENDING_PER_SOURCE,
      1,
      MAX_CONNECTION_COUNT,
    ),
    helloTimeoutMs: seconds(
      "hello-timeout",
      values["hello-timeout"],
      DEFAULT_HELLO_TIMEOUT_MS / 1000,
    ),
    keepaliveMs: seconds("keepalive", values.keepalive, 0),
    drainTimeoutMs: seconds(
      "drain-timeout",
      values["drain-timeout"],
      DEFAULT_DRAIN_TIMEOUT_SECONDS,
    ),
    drainDelayMs: drainDelay(values),
    rekeyBytes: integer(
      "rekey-bytes",
      values["rekey-bytes"],
      DEFAULT_REKEY_BYTES,
      1,
      DEFAULT_REKEY_BYTES,
    ),
    logger: log,
    provider: cryptoProvider(values),
  };
  const metricsAddress = values.metrics === undefined
    ? undefined
    : parseHostPort(values.metrics, true);
  const vpnSetting = vpnSettings(values);
  const key = await readKey(values.key, (warning) => log.warn(warning));
  const vpn = vpnSetting
    ? await VpnService.start({
      ...vpnSetting,
      keepaliveMs: values.keepalive === undefined ? undefined : options.keepaliveMs,
      idleTimeoutMs: options.idleTimeoutMs,
      logger: log,
    })
    : undefined;
  const shutdown = onShutdownSignal();
  let running: TunnelServer;
  try {
    running = await TunnelServer.start({ ...options, key, vpn });
  } catch (err) {
    shutdown.remove();
    await vpn?.close();
    throw new CipherlinkError(
      `cannot listen on ${formatHostPort(options.listen)}: ${(err as Error).message}`,
    );
  }
  const endpoint = metricsAddress &&
    serveMetrics(metricsAddress, {
      sources: () => [{ stats: running.stats, labels: { role: "server" } }],
      healthy: () => !running.draining,
    }, log);
  await drainOnSignal(shutdown, running, log, endpoint);
  return ExitCode.ok;
}

async function client(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand("client", args, true);
  if (values.help) return help(io, "client");
  if (values.config !== undefined) return await runConfig(values.config, values, positionals);
  if (values.listen && values.socks) {
    throw new UsageError("--listen and --socks cannot be combined");
  }
  if ((values.listen || values.socks) && positionals.length > 0) {
    throw new UsageError("MESSAGE cannot be combined with --listen or --socks");
  }
  if (values.socks && values.connect) {
    throw new UsageError("--connect has no meaning with --socks");
  }
  const vpnSetting = vpnSettings(values);
  if (vpnSetting) {
    const other = ["listen", "socks", "connect"].find((name) =>
      values[name as "listen"] !== undefined
    );
    if (other) throw new UsageError(`--tun cannot be combined with --${other}`);
    if (positionals.length > 0) throw new UsageError("MESSAGE cannot be combined with --tun");
  }
  const log = logger(values);
  const connectOptions: Omit<ConnectOptions, "key"> = {
    server: values.server === undefined
      ? defaultServerAddress("127.0.0.1")
      : parseHostPort(values.server),
    target: values.connect === undefined ? undefined : parseHostPort(values.connect),
    keepaliveMs: seconds("keepalive", values.keepalive, 0),
    handshakeTimeoutMs: seconds(
      "handshake-timeout",
      values["handshake-timeout"],
      DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
    ),
    rekeyBytes: integer(
      "rekey-bytes",
      values["rekey-bytes"],
      DEFAULT_REKEY_BYTES,
      1,
      DEFAULT_REKEY_BYTES,
    ),
    provider: cryptoProvider(values),
  };
  const maxConns = integer(
    "max-conns",
    values["max-conns"],
    DEFAULT_MAX_CONNS,
    1,
    MAX_CONNECTION_COUNT,
  );
  const drainTimeoutMs = seconds(
    "drain-timeout",
    values["drain-timeout"],
    DEFAULT_DRAIN_TIMEOUT_SECONDS,
  );
  const delayMs = drainDelay(values);
  const listen = values.listen ?? values.socks;
  const listenAddress: HostPort | undefined = listen === undefined
    ? undefined
    : parseHostPort(listen, true);
  const metricsAddress = values.metrics === undefined
    ? undefined
    : parseHostPort(values.metrics, true);
  if (metricsAddress && !listenAddress && !vpnSetting) {
    throw new UsageError("--metrics needs --listen, --socks or --tun");
  }
  const key = await readKey(values.key, (warning) => log.warn(warning));
  if (vpnSetting) {
    return await vpnClient({
      ...vpnSetting,
      server: connectOptions.server,
      key,
      keepaliveMs: values.keepalive === undefined ? undefined : connectOptions.keepaliveMs,
      handshakeTimeoutMs: connectOptions.handshakeTimeoutMs,
      rekeyBytes: connectOptions.rekeyBytes,
      channel: { provider: connectOptions.provider },
      logger: log,
    }, metricsAddress);
  }
  const options: ConnectOptions = { ...connectOptions, key };
  if (listenAddress) {
    const shutdown = onShutdownSignal();
    let forwarder: LocalForwarder;
    try {
      forwarder = LocalForwarder.start({
        listen: listenAddress,
        mode: values.socks ? "socks" : "forward",
        connect: options,
        maxConns,
        drainTimeoutMs,
        drainDelayMs: delayMs,
        logger: log,
      });
    } catch (err) {
      shutdown.remove();
      throw new CipherlinkError(
        `cannot listen on ${formatHostPort(listenAddress)}: ${(err as Error).message}`,
      );
    }
    const endpoint = metricsAddress &&
      serveMetrics(metricsAddress, {
        sources: () => [{ stats: forwarder.stats, labels: { role: "client" } }],
        healthy: () => !forwarder.draining,
      }, log);
    await drainOnSignal(shutdown, forwarder, log, endpoint);
    return ExitCode.ok;
  }
  return positionals.length > 0
    ? await oneShot(new TextEncoder().encode(positionals.join(" ")), options)
    : await pipe(options);
}

/**
 * VPN mode: runs until SIGINT/SIGTERM (CLOSE, routes and device removed,
 * exit 0) or until the first connection is refused (exit 1).
 */
async function vpnClient(
  options: VpnClientOptions,
  metricsAddress: HostPort | undefined,
): Promise<number> {
  const log = options.logger!;
  const shutdown = onShutdownSignal();
  let running: VpnClient;
  try {
    running = await VpnClient.start(options);
  } catch (err) {
    shutdown.remove();
    throw err;
  }
  log.info("vpn device up", { device: running.describe() });
  const endpoint = metricsAddress &&
    serveMetrics(metricsAddress, {
      sources: () => [{ stats: running.stats, labels: { role: "client" } }],
      healthy: () => running.connected,
    }, log);
  try {
    const outcome = await Promise.race([
      shutdown.signal.then((name) => ({ name })),
      running.done.then((error) => ({ error })),
    ]);
    if ("name" in outcome) log.info("shutting down", { signal: outcome.name });
    await running.shutdown();
    if ("error" in outcome && outcome.error) throw outcome.error;
    return ExitCode.ok;
  } finally {
    await endpoint?.shutdown();
    shutdown.remove();
  }
}

/** MESSAGE mode: send, half-close, copy the reply to stdout until CLOSE. */
async function oneShot(
  message: Uint8Array,
  options: ConnectOptions,
): Promise<number> {
  const session = await connect(options);
  const sending = (async () => {
    await session.write(message);
    await session.closeWrite();
  })();
  sending.catch(() => {});
  await session.pumpTo(Deno.stdout);
  await sending;
  const { error } = await session.ended;
  if (error) throw error;
  return ExitCode.ok;
}

/** Pipe mode: stdin into the tunnel, the tunnel to stdout; stdin EOF half-closes. */
async function pipe(options: ConnectOptions): Promise<number> {
  const session = await connect(options);
  // ssh ends its ProxyCommand with SIGHUP when the connection is done: take
  // it as the end of stdin, so the session still closes cleanly (CLOSE both
  // ways) instead of the server seeing a truncated stream.
  let hangUp = () => {};
  const hungUp = new Promise<null>((resolve) => (hangUp = () => resolve(null)));
  Deno.addSignalListener("SIGHUP", hangUp);
  const stdin = { read: (into: Uint8Array) => Promise.race([Deno.stdin.read(into), hungUp]) };
  try {
    const upload = session.pumpFrom(stdin);
    upload.catch(() => {});
    await session.pumpTo(Deno.stdout);
    await upload;
    const { error } = await session.ended;
    if (error) throw error;
    return ExitCode.ok;
  } finally {
    Deno.removeSignalListener("SIGHUP", hangUp);
  }
}
