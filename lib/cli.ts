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

import { parseArgs } from "node:util";
import { AllowList } from "./allow.ts";
import { DEFAULT_REKEY_BYTES } from "./channel.ts";
import { connect, type ConnectOptions, forward as _forward } from "./client.ts";
import { checkConfigCommand } from "./config.ts";
import {
  CRYPTO_ENV,
  CRYPTO_PROVIDERS,
  type CryptoProvider,
  type CryptoProviderName,
  DEFAULT_CRYPTO_PROVIDER,
  loadCryptoProvider,
} from "./crypto/select.ts";
import { CipherlinkError, UsageError } from "./errors.ts";
import { LocalForwarder } from "./forwarder.ts";
import { DEFAULT_KEY_PATH, generateKeyFile, KEY_FORMATS, type KeyFormat, loadKey } from "./keys.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, Logger, type LogLevel } from "./log.ts";
import { serveMetrics } from "./metrics.ts";
import { TunnelServer } from "./server.ts";
import { runConfig } from "./supervisor.ts";
import { formatHostPort, type HostPort, parseHostPort } from "./target.ts";

/** The program version. */
export const VERSION = "0.2.0";
/** Exit codes of the CLI contract. */
export const ExitCode = { ok: 0, failure: 1, usage: 2 } as const;

const USAGE =
  "usage: cipherlink <keygen|server|client|check-config> [options]   (cipherlink --help for more)";

const HELP = {
  main: `cipherlink ${VERSION}: an encrypted TCP tunnel and proxy around one pre-shared key

${USAGE}

commands:
  keygen    write a fresh 32-byte key file
  server    accept tunnels: echo service, a fixed forward target, allowed addresses
  client    one session (MESSAGE or stdin/stdout), a port forward, or a SOCKS5 proxy
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
  server: `usage: cipherlink server [options]

  --listen HOST:PORT          where to accept tunnels (default 0.0.0.0:8888; port 0 picks one)
  --key PATH                  the shared key (default ${DEFAULT_KEY_PATH})
  --forward HOST:PORT         target of the server's own service (default: echo)
  --allow RULE                targets clients may ask for: HOST:PORT, HOST:*, *:PORT,
                              CIDR:PORT or CIDR:* (HOST may hold * wildcards); repeatable
  --max-conns N               concurrent tunnel connections (default 100)
  --handshake-timeout SECS    time to complete the handshake and OPEN (default 5)
  --idle-timeout SECS         close sessions silent for this long (default 0: off)
  --keepalive SECS            PING after this much silence; drop after 3 unanswered (default 0: off)
  --drain-timeout SECS        on SIGINT/SIGTERM, time open sessions get to finish (default 10)
  --rekey-bytes N             plaintext bytes sent under one key before REKEY (default 2^30)
  --crypto PROVIDER           webcrypto (default) or openssl (OpenSSL 3 libcrypto, faster)
  --libcrypto PATH            the libcrypto for --crypto openssl (default: searched)
  --metrics HOST:PORT         serve GET /metrics (Prometheus) and GET /healthz there
  --log-level LEVEL           debug, info (default), warn, error
  --log-format FORMAT         text (default) or json
  --config FILE               run every tunnel of a config file instead (docs/config.md);
                              SIGHUP reloads it; only --log-level/--log-format may be added
`,
  client: `usage: cipherlink client [options] [MESSAGE...]

  --server HOST:PORT          the Cipherlink server (default 127.0.0.1:8888)
  --key PATH                  the shared key (default ${DEFAULT_KEY_PATH})
  --connect HOST:PORT         ask the server for this target instead of its own service
  --listen HOST:PORT          port forward: each local connection becomes a session
  --socks HOST:PORT           SOCKS5 proxy (CONNECT; IPv4, IPv6, domain names)
  --max-conns N               concurrent local connections (default 100)
  --keepalive SECS            PING after this much silence; drop after 3 unanswered (default 0: off)
  --drain-timeout SECS        on SIGINT/SIGTERM, time open sessions get to finish (default 10)
  --rekey-bytes N             plaintext bytes sent under one key before REKEY (default 2^30)
  --handshake-timeout SECS    time the server gets to answer the handshake (default 5)
  --crypto PROVIDER           webcrypto (default) or openssl (OpenSSL 3 libcrypto, faster)
  --libcrypto PATH            the libcrypto for --crypto openssl (default: searched)
  --metrics HOST:PORT         with --listen/--socks: serve GET /metrics and GET /healthz there
  --log-level LEVEL, --log-format FORMAT   as for the server
  --config FILE               run every tunnel of a config file instead (docs/config.md);
                              SIGHUP reloads it; only --log-level/--log-format may be added

Without --listen/--socks: with MESSAGE, sends it, prints the reply, exits after the
server's CLOSE; without MESSAGE, pipes stdin/stdout through one session (usable as an
ssh ProxyCommand with --connect %h:%p).
`,
  "check-config": `usage: cipherlink check-config FILE

Validates a --config FILE (JSON; // and /* */ comments and trailing commas allowed) and
loads every tunnel's key file, without starting anything. Prints
"config FILE: ok (N tunnels)" and exits 0; otherwise prints one error line naming the
file, the tunnel and the field, and exits 1. The format is in docs/config.md.
`,
};

const commonOptions = {
  key: { type: "string" },
  "log-level": { type: "string" },
  "log-format": { type: "string" },
  keepalive: { type: "string" },
  "max-conns": { type: "string" },
  "drain-timeout": { type: "string" },
  "rekey-bytes": { type: "string" },
  "handshake-timeout": { type: "string" },
  metrics: { type: "string" },
  crypto: { type: "string" },
  libcrypto: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

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
  try {
    const [command, ...rest] = args;
    switch (command) {
      case "keygen":
        return await keygen(rest, io);
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
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (err) {
    if (err instanceof UsageError || isParseArgsError(err)) {
      io.stderr(`cipherlink: error: ${(err as Error).message}\n${USAGE}\n`);
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
  if (text.trim() === "" || !Number.isFinite(value) || value < 0) {
    throw new UsageError(`--${name} takes a number of seconds, not '${text}'`);
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

function defaultServerAddress(fallbackHost: string): string {
  const host = env("CIPHERLINK_SERVER_HOST") ?? fallbackHost;
  const port = env("CIPHERLINK_SERVER_PORT") ?? "8888";
  return formatHostPort({ host, port: Number(port) });
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

async function readKey(
  path: string | undefined,
  log: Logger,
): Promise<Uint8Array> {
  const keyPath = path ?? env("CIPHERLINK_KEY_FILE") ?? DEFAULT_KEY_PATH;
  const { key, warning } = await loadKey(keyPath);
  if (warning) log.warn(warning);
  return key;
}

async function keygen(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      out: { type: "string" },
      format: { type: "string" },
      force: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
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

function help(io: Io, command: keyof typeof HELP): number {
  io.stdout(HELP[command]);
  return ExitCode.ok;
}

/** Resolves when SIGINT or SIGTERM arrives; the returned function unhooks it. */
function onShutdownSignal(): { signal: Promise<string>; remove(): void } {
  let remove = () => {};
  const signal = new Promise<string>((resolve) => {
    const handlers = (["SIGINT", "SIGTERM"] as const).map((name) => {
      const handler = () => resolve(name);
      Deno.addSignalListener(name, handler);
      return [name, handler] as const;
    });
    remove = () => handlers.forEach(([name, handler]) => Deno.removeSignalListener(name, handler));
  });
  return { signal, remove: () => remove() };
}

async function server(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      ...commonOptions,
      listen: { type: "string" },
      forward: { type: "string" },
      allow: { type: "string", multiple: true },
      "idle-timeout": { type: "string" },
      config: { type: "string" },
    },
  });
  if (values.help) return help(io, "server");
  if (values.config !== undefined) return await runConfig(values.config, values);
  const log = logger(values);
  const options = {
    listen: parseHostPort(
      values.listen ?? defaultServerAddress("0.0.0.0"),
      true,
    ),
    forward: values.forward === undefined ? undefined : parseHostPort(values.forward),
    allow: AllowList.parse(values.allow ?? []),
    maxConns: integer("max-conns", values["max-conns"], 100, 1, 1_000_000),
    handshakeTimeoutMs: seconds(
      "handshake-timeout",
      values["handshake-timeout"],
      5,
    ),
    idleTimeoutMs: seconds("idle-timeout", values["idle-timeout"], 0),
    keepaliveMs: seconds("keepalive", values.keepalive, 0),
    drainTimeoutMs: seconds("drain-timeout", values["drain-timeout"], 10),
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
  const key = await readKey(values.key, log);
  const shutdown = onShutdownSignal();
  let running: TunnelServer;
  try {
    running = await TunnelServer.start({ ...options, key });
  } catch (err) {
    shutdown.remove();
    throw new CipherlinkError(
      `cannot listen on ${formatHostPort(options.listen)}: ${(err as Error).message}`,
    );
  }
  const endpoint = metricsAddress &&
    serveMetrics(metricsAddress, {
      sources: () => [{ stats: running.stats, labels: { role: "server" } }],
      healthy: () => !running.draining,
    }, log);
  const name = await shutdown.signal;
  log.info("shutting down", { signal: name });
  await running.shutdown();
  await endpoint?.shutdown();
  shutdown.remove();
  return ExitCode.ok;
}

async function client(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      ...commonOptions,
      server: { type: "string" },
      connect: { type: "string" },
      listen: { type: "string" },
      socks: { type: "string" },
      config: { type: "string" },
    },
  });
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
  const log = logger(values);
  const connectOptions: Omit<ConnectOptions, "key"> = {
    server: parseHostPort(values.server ?? defaultServerAddress("127.0.0.1")),
    target: values.connect === undefined ? undefined : parseHostPort(values.connect),
    keepaliveMs: seconds("keepalive", values.keepalive, 0),
    handshakeTimeoutMs: seconds(
      "handshake-timeout",
      values["handshake-timeout"],
      5,
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
  const maxConns = integer("max-conns", values["max-conns"], 100, 1, 1_000_000);
  const drainTimeoutMs = seconds("drain-timeout", values["drain-timeout"], 10);
  const listen = values.listen ?? values.socks;
  const listenAddress: HostPort | undefined = listen === undefined
    ? undefined
    : parseHostPort(listen, true);
  const metricsAddress = values.metrics === undefined
    ? undefined
    : parseHostPort(values.metrics, true);
  if (metricsAddress && !listenAddress) throw new UsageError("--metrics needs --listen or --socks");
  const key = await readKey(values.key, log);
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
    const name = await shutdown.signal;
    log.info("shutting down", { signal: name });
    await forwarder.shutdown();
    await endpoint?.shutdown();
    shutdown.remove();
    return ExitCode.ok;
  }
  return positionals.length > 0
    ? await oneShot(new TextEncoder().encode(positionals.join(" ")), options)
    : await pipe(options);
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
