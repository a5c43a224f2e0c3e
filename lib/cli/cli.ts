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

import { DEFAULT_LISTEN_HOST, DEFAULT_SERVER_HOST, DEFAULT_SERVER_PORT } from "../base/defaults.ts";
import { AllowList } from "../tunnel/allow.ts";
import { connect, type ConnectOptions } from "../tunnel/client.ts";
import { checkConfigCommand } from "../ops/config.ts";
import {
  CRYPTO_ENV,
  CRYPTO_PROVIDERS,
  type CryptoProvider,
  type CryptoProviderName,
  loadCryptoProvider,
} from "../protocol/crypto/select.ts";
import { drainDelayFor } from "../tunnel/drain.ts";
import { CipherlinkError, KeyFileError, UsageError } from "../base/errors.ts";
import { LocalForwarder } from "../tunnel/forwarder.ts";
import {
  DEFAULT_KEY_PATH,
  fingerprint as keyFingerprint,
  generateKeyFile,
  KEY_FORMATS,
  loadKey,
} from "../protocol/keys.ts";
import { Logger } from "../base/log.ts";
import { serveMetrics } from "../ops/metrics.ts";
import type { MetricsSource } from "../ops/prometheus.ts";
import { type Drainable, drainOnSignal, onShutdownSignal } from "../ops/signals.ts";
import { type OptionTable, parseOptions, suggestion, type ValuesOf } from "../base/options.ts";
import { TunnelServer } from "../tunnel/server.ts";
import { runConfig } from "./config_mode.ts";
import type { Cidr } from "../protocol/packet.ts";
import { VpnClient, type VpnClientOptions } from "../tunnel/vpn_client.ts";
import { VPN_DEFAULT_KEEPALIVE_MS, VpnService } from "../tunnel/vpn_server.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../protocol/hostport.ts";
import {
  argGiven,
  argList,
  argValue,
  type ArgValues,
  ENVIRONMENT,
  helpLines,
  optionTable,
  SETTINGS,
} from "../ops/settings.ts";
import { oneOf } from "../ops/values.ts";

/** The program version. */
export const VERSION = "0.2.0";
/** Exit codes of the CLI contract. */
export const ExitCode = { ok: 0, failure: 1, usage: 2 } as const;

const COMMANDS = ["keygen", "fingerprint", "server", "client", "check-config"] as const;
const USAGE = `usage: cipherlink <${COMMANDS.join("|")}> [options]   (cipherlink --help for more)`;

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
environment: ${ENVIRONMENT.slice(0, -1).map((v) => v.name).join(", ")},
  ${ENVIRONMENT.at(-1)!.name} supply defaults.
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

${helpLines("server")}`,
  client: `usage: cipherlink client [options] [MESSAGE...]

${helpLines("client")}
Without --listen/--socks: with MESSAGE, sends it, prints the reply, exits after the
server's CLOSE; without MESSAGE, pipes stdin/stdout through one session (usable as an
ssh ProxyCommand with --connect %h:%p).
With --tun (root or CAP_NET_ADMIN): a VPN client that reconnects with backoff until
SIGINT/SIGTERM; --keepalive defaults to ${VPN_DEFAULT_KEEPALIVE_MS / 1000} there.
`,
  "check-config": `usage: cipherlink check-config FILE

Validates a --config FILE (JSON; // and /* */ comments and trailing commas allowed) and
loads every tunnel's key file, without starting anything. Prints
"config FILE: ok (N tunnels)" and exits 0; otherwise prints one error line naming the
file, the tunnel and the field, and exits 1. The format is in docs/config.md.
`,
};

/** The VPN options of a command line, checked: null without --tun. */
function vpnSettings(
  values: ArgValues,
): { device: string; addresses: Cidr[]; mtu: number; routes: Cidr[] } | null {
  const device = argValue(values, SETTINGS.tun);
  if (device === undefined) {
    for (const name of ["tun-address", "tun-mtu", "route"] as const) {
      if (values[name] !== undefined) throw new UsageError(`--${name} needs --tun`);
    }
    return null;
  }
  const addresses = argList(values, SETTINGS.tunAddresses);
  if (addresses.length === 0) throw new UsageError("--tun needs --tun-address CIDR");
  if (
    addresses.length > 2 ||
    (addresses.length === 2 && addresses[0].family === addresses[1].family)
  ) {
    throw new UsageError("--tun-address takes at most one IPv4 and one IPv6 address");
  }
  const mtu = argValue(values, SETTINGS.tunMtu);
  const routes = argList(values, SETTINGS.routes);
  return { device, addresses, mtu, routes };
}

const KEYGEN_OPTIONS = {
  out: { type: "string" },
  format: { type: "string" },
  force: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;
const FINGERPRINT_OPTIONS = {
  key: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Every command's options; usage errors use them all to say where an option belongs. */
const OPTION_TABLES: Readonly<Record<string, OptionTable>> = {
  keygen: KEYGEN_OPTIONS,
  fingerprint: FINGERPRINT_OPTIONS,
  server: optionTable("server"),
  client: optionTable("client"),
};

/** Parses one command's options against `table`; every mistake is a one-line UsageError. */
function parseCommand<T extends OptionTable>(
  command: string,
  args: string[],
  table: T,
  allowPositionals = false,
): { values: ValuesOf<T>; positionals: string[] } {
  const otherCommands = Object.fromEntries(
    Object.entries(OPTION_TABLES).filter(([name]) => name !== command),
  );
  return parseOptions(command, args, table, { allowPositionals, otherCommands });
}

/** Parses `server` or `client` options: the settings table's. */
function parseTunnelCommand(
  command: "server" | "client",
  args: string[],
): { values: ArgValues; positionals: string[] } {
  const { values, positionals } = parseCommand(
    command,
    args,
    OPTION_TABLES[command],
    command === "client",
  );
  return { values: values as ArgValues, positionals };
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

function logger(values: ArgValues): Logger {
  return new Logger(argValue(values, SETTINGS.logLevel), argValue(values, SETTINGS.logFormat));
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
function cryptoProvider(values: ArgValues): CryptoProvider {
  const fromEnv = env(CRYPTO_ENV);
  let name: CryptoProviderName;
  if (values.crypto !== undefined || !fromEnv) {
    name = argValue(values, SETTINGS.crypto);
  } else if ((CRYPTO_PROVIDERS as readonly string[]).includes(fromEnv)) {
    name = fromEnv as CryptoProviderName;
  } else {
    throw new UsageError(
      `${CRYPTO_ENV} takes one of ${CRYPTO_PROVIDERS.join(", ")}, not '${fromEnv}'`,
    );
  }
  const libcrypto = argValue(values, SETTINGS.libcrypto);
  if (libcrypto !== undefined && name !== "openssl") {
    throw new UsageError("--libcrypto has no meaning without --crypto openssl");
  }
  return loadCryptoProvider(name, libcrypto);
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
  const { values } = parseCommand("keygen", args, KEYGEN_OPTIONS);
  if (values.help) return help(io, "keygen");
  const path = values.out ?? env("CIPHERLINK_KEY_FILE") ?? DEFAULT_KEY_PATH;
  const format = values.format === undefined
    ? KEY_FORMATS[0]
    : oneOf(KEY_FORMATS).fromText(values.format, "format");
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
  const { values } = parseCommand("fingerprint", args, FINGERPRINT_OPTIONS);
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
function drainDelay(values: ArgValues): number {
  return drainDelayFor(argValue(values, SETTINGS.drainDelay), values.metrics !== undefined);
}

/** `--listen` or `--server`, else the address CIPHERLINK_SERVER_HOST/_PORT and the defaults make. */
function serverAddress(values: ArgValues, command: "server" | "client"): HostPort {
  const setting = command === "server" ? SETTINGS.listen : SETTINGS.server;
  return argValue(values, setting) ??
    (command === "server"
      ? defaultServerAddress(DEFAULT_LISTEN_HOST, true)
      : defaultServerAddress(DEFAULT_SERVER_HOST));
}

async function server(args: string[], io: Io): Promise<number> {
  const { values } = parseTunnelCommand("server", args);
  if (values.help) return help(io, "server");
  const config = argValue(values, SETTINGS.config);
  if (config !== undefined) return await runConfig(config, values);
  const log = logger(values);
  const options = {
    listen: serverAddress(values, "server"),
    forward: argValue(values, SETTINGS.forward),
    allow: AllowList.parse(argList(values, SETTINGS.allow)),
    maxConns: argValue(values, SETTINGS.maxConns),
    handshakeTimeoutMs: argValue(values, SETTINGS.handshakeTimeout),
    idleTimeoutMs: argValue(values, SETTINGS.idleTimeout),
    maxPending: argValue(values, SETTINGS.maxPending),
    maxPendingPerSource: argValue(values, SETTINGS.maxPendingPerSource),
    helloTimeoutMs: argValue(values, SETTINGS.helloTimeout),
    keepaliveMs: argValue(values, SETTINGS.keepalive),
    drainTimeoutMs: argValue(values, SETTINGS.drainTimeout),
    drainDelayMs: drainDelay(values),
    rekeyBytes: argValue(values, SETTINGS.rekeyBytes),
    logger: log,
    provider: cryptoProvider(values),
  };
  const metricsAddress = argValue(values, SETTINGS.metrics);
  const vpnSetting = vpnSettings(values);
  const key = await readKey(argGiven(values, SETTINGS.key), (warning) => log.warn(warning));
  const vpn = vpnSetting
    ? await VpnService.start({
      ...vpnSetting,
      keepaliveMs: values.keepalive === undefined ? undefined : options.keepaliveMs,
      idleTimeoutMs: options.idleTimeoutMs,
      logger: log,
    })
    : undefined;
  return await listenUntilSignal(
    () => TunnelServer.start({ ...options, key, vpn }),
    { listen: options.listen, role: "server", metrics: metricsAddress },
    log,
    async () => await vpn?.close(),
  );
}

async function client(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parseTunnelCommand("client", args);
  if (values.help) return help(io, "client");
  const config = argValue(values, SETTINGS.config);
  if (config !== undefined) return await runConfig(config, values, positionals);
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
    const other = ["listen", "socks", "connect"].find((name) => values[name] !== undefined);
    if (other) throw new UsageError(`--tun cannot be combined with --${other}`);
    if (positionals.length > 0) throw new UsageError("MESSAGE cannot be combined with --tun");
  }
  const log = logger(values);
  const connectOptions: Omit<ConnectOptions, "key"> = {
    server: serverAddress(values, "client"),
    target: argValue(values, SETTINGS.connect),
    keepaliveMs: argValue(values, SETTINGS.keepalive),
    handshakeTimeoutMs: argValue(values, SETTINGS.handshakeTimeout),
    rekeyBytes: argValue(values, SETTINGS.rekeyBytes),
    provider: cryptoProvider(values),
  };
  const maxConns = argValue(values, SETTINGS.maxConns);
  const drainTimeoutMs = argValue(values, SETTINGS.drainTimeout);
  const delayMs = drainDelay(values);
  const listenAddress = argValue(values, SETTINGS.listen) ?? argValue(values, SETTINGS.socks);
  const metricsAddress = argValue(values, SETTINGS.metrics);
  if (metricsAddress && !listenAddress && !vpnSetting) {
    throw new UsageError("--metrics needs --listen, --socks or --tun");
  }
  const key = await readKey(argGiven(values, SETTINGS.key), (warning) => log.warn(warning));
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
    return await listenUntilSignal(
      () =>
        LocalForwarder.start({
          listen: listenAddress,
          mode: values.socks ? "socks" : "forward",
          connect: options,
          maxConns,
          drainTimeoutMs,
          drainDelayMs: delayMs,
          logger: log,
        }),
      { listen: listenAddress, role: "client", metrics: metricsAddress },
      log,
    );
  }
  return positionals.length > 0
    ? await oneShot(new TextEncoder().encode(positionals.join(" ")), options)
    : await pipe(options);
}

/** A listening endpoint the CLI runs until a signal: the server, or a client's --listen/--socks. */
interface ListeningEndpoint extends Drainable {
  readonly stats: MetricsSource["stats"];
  readonly draining: boolean;
}

/**
 * Starts a listening endpoint with SIGINT/SIGTERM already hooked (a signal
 * during the start is not lost), serves its /metrics and /healthz when asked,
 * and runs it until a signal has drained it. A failed start is reported as
 * "cannot listen on", after `undo` released what was set up for it.
 */
async function listenUntilSignal(
  start: () => Promise<ListeningEndpoint> | ListeningEndpoint,
  where: { listen: HostPort; role: "server" | "client"; metrics?: HostPort },
  log: Logger,
  undo: () => Promise<void> = () => Promise.resolve(),
): Promise<number> {
  const shutdown = onShutdownSignal();
  let running: ListeningEndpoint;
  try {
    running = await start();
  } catch (err) {
    shutdown.remove();
    await undo();
    throw new CipherlinkError(
      `cannot listen on ${formatHostPort(where.listen)}: ${(err as Error).message}`,
    );
  }
  const endpoint = where.metrics &&
    serveMetrics(where.metrics, {
      sources: () => [{ stats: running.stats, labels: { role: where.role } }],
      healthy: () => !running.draining,
    }, log);
  await drainOnSignal(shutdown, running, log, endpoint);
  return ExitCode.ok;
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
