/**
 * Runs the tunnels of a config file in one process (`cipherlink server
 * --config FILE` or `cipherlink client --config FILE`): a TunnelServer or a
 * LocalForwarder per tunnel, each logging with a `tunnel` field.
 *
 * reload() (SIGHUP; cli/config_mode.ts wires the signals) re-reads the file.
 * An invalid file is logged and changes nothing. Otherwise new tunnels start, removed ones stop accepting and drain, a
 * tunnel whose key (file path or contents) is all that changed gets the new
 * key for new sessions while open ones go on, and a tunnel with any other
 * change is drained and started again (at once: no drain delay on a reload).
 * shutdown() (SIGINT/SIGTERM) drains every tunnel (each keeps accepting for
 * its drain delay first); endNow() (a second signal) ends every session at once.
 *
 * @example
 * ```ts
 * import { Supervisor } from "./supervisor.ts";
 * const supervisor = await Supervisor.start("tunnels.json");
 * console.log(supervisor.addresses());
 * await supervisor.reload(); // what SIGHUP does
 * await supervisor.shutdown();
 * ```
 * @module
 */

import { AllowList } from "../tunnel/allow.ts";
import {
  type ClientTunnelConfig,
  type Config,
  ConfigError,
  loadConfig,
  type ServerTunnelConfig,
  type TunnelConfig,
  type TunSettings,
} from "./config.ts";
import { drainDelayFor, type ShutdownOptions } from "../tunnel/drain.ts";
import { equalBytes } from "../base/bytes.ts";
import { LocalForwarder } from "../tunnel/forwarder.ts";
import { type CryptoProvider, loadCryptoProvider } from "../protocol/crypto/select.ts";
import { fingerprint, type LoadedKey } from "../protocol/keys.ts";
import { forgetPsk } from "../protocol/noise.ts";
import {
  type LogFields,
  type LogFormat,
  Logger,
  type LogLevel,
  type LogSink,
} from "../base/log.ts";
import type { TunnelStats } from "../tunnel/stats.ts";
import type { MetricsSource } from "./prometheus.ts";
import { TunnelServer } from "../tunnel/server.ts";
import { formatHostPort } from "../protocol/hostport.ts";
import { TunError } from "../tunnel/tun.ts";
import { VpnClient } from "../tunnel/vpn_client.ts";
import { VpnService } from "../tunnel/vpn_server.ts";

/** What the supervisor needs of a running tunnel. */
interface Runner {
  /** The bound address; null for a VPN client, which accepts no connections. */
  readonly addr: Deno.NetAddr | null;
  /** Resolves once the listener is closed and the accept loop ended. */
  readonly stopped: Promise<void>;
  shutdown(options?: ShutdownOptions): Promise<void>;
  endNow(): Promise<void>;
  /** New handshakes use `key`; resolves once none reads the replaced key any more. */
  setKey(key: Uint8Array): Promise<void>;
  readonly stats: TunnelStats;
}

/**
 * Gives `runner` the key `next` for new handshakes, and zeroes `old` (and
 * its cached handshake prefix) once no handshake reads it any more, which
 * is when the returned promise resolves. Open sessions go on: they hold
 * keys derived in their handshakes, never the key itself.
 */
export function swapKey(
  runner: Pick<Runner, "setKey">,
  old: Uint8Array,
  next: Uint8Array,
): Promise<void> {
  return runner.setKey(next).then(() => {
    forgetPsk(old);
    old.fill(0);
  });
}

interface Running {
  config: TunnelConfig;
  key: Uint8Array;
  runner: Runner;
  log: Logger;
}

/** A logger that adds `tunnel=NAME` to every event of one tunnel. */
class TunnelLogger extends Logger {
  #base: Logger;
  #tunnel: string;

  constructor(base: Logger, tunnel: string) {
    super(base.level, base.format);
    this.#base = base;
    this.#tunnel = tunnel;
  }

  override debug(event: string, fields: LogFields = {}): void {
    this.#base.debug(event, { tunnel: this.#tunnel, ...fields });
  }
  override info(event: string, fields: LogFields = {}): void {
    this.#base.info(event, { tunnel: this.#tunnel, ...fields });
  }
  override warn(event: string, fields: LogFields = {}): void {
    this.#base.warn(event, { tunnel: this.#tunnel, ...fields });
  }
  override error(event: string, fields: LogFields = {}): void {
    this.#base.error(event, { tunnel: this.#tunnel, ...fields });
  }
}

/** Log settings from the command line; they win over the file's `log`. */
export interface SupervisorOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where log lines go (stderr by default); tests capture them. */
  sink?: LogSink;
  /** Whether /healthz is served (--metrics): the default drain delay applies only then. */
  healthServed?: boolean;
}

/** Everything but the key path: what decides between a key swap and a restart. */
function settingsOf(tunnel: TunnelConfig): string {
  return JSON.stringify({ ...tunnel, key: undefined });
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The tunnels of one config file, running. */
export class Supervisor {
  /** The config file as given. */
  readonly file: string;
  /** The process-wide logger (events without a `tunnel` field). */
  readonly log: Logger;
  #logSettings: Config["log"];
  #running = new Map<string, Running>();
  #draining = new Set<Promise<void>>();
  /** Tunnels still draining: for endNow(), and their drain metrics. */
  #drainingTunnels = new Set<Running>();
  #healthServed = false;
  #queue: Promise<unknown> = Promise.resolve();
  #queuedReload: Promise<boolean> | null = null;
  #shutdown: Promise<void> | null = null;
  #reloads = 0;

  private constructor(file: string, log: Logger, logSettings: Config["log"]) {
    this.file = file;
    this.log = log;
    this.#logSettings = logSettings;
  }

  /**
   * Reads and validates the file, loads every key, and starts every tunnel.
   * Throws {@linkcode ConfigError} (after stopping what it started) when the
   * file is invalid or a tunnel cannot listen.
   */
  static async start(file: string, options: SupervisorOptions = {}): Promise<Supervisor> {
    const { config, keys } = await loadConfig(file);
    const log = new Logger(
      options.level ?? config.log.level ?? "info",
      options.format ?? config.log.format ?? "text",
      options.sink,
    );
    const supervisor = new Supervisor(file, log, config.log);
    supervisor.#healthServed = options.healthServed ?? false;
    log.info("config loaded", { config: file, tunnels: config.tunnels.length });
    try {
      for (const tunnel of config.tunnels) await supervisor.#start(tunnel, keys.get(tunnel.name)!);
    } catch (err) {
      await supervisor.shutdown();
      throw err;
    }
    return supervisor;
  }

  /** The bound address of every running tunnel, by name. */
  addresses(): Map<string, Deno.NetAddr> {
    return new Map(
      [...this.#running].flatMap(([name, { runner }]) =>
        runner.addr ? [[name, runner.addr] as const] : []
      ),
    );
  }

  /**
   * Re-reads the file and applies it (what SIGHUP does). Resolves false when
   * the file was invalid (nothing changed) or a tunnel failed to start (the
   * others were applied); both are logged. Reloads run one at a time.
   */
  reload(): Promise<boolean> {
    if (this.#shutdown) return Promise.resolve(false);
    if (this.#queuedReload) return this.#queuedReload;
    const run = this.#queue.then(() => {
      this.#queuedReload = null;
      return this.#reloadNow();
    });
    this.#queuedReload = run;
    this.#queue = run.catch(() => {});
    return run;
  }

  /** The counters of the running tunnels and of those still draining, by role and tunnel name. */
  metricsSources(): MetricsSource[] {
    // A draining tunnel is shown (its drain counters) unless one of that name is shown already.
    const shown = new Map(this.#running);
    for (const tunnel of this.#drainingTunnels) {
      if (!shown.has(tunnel.config.name)) shown.set(tunnel.config.name, tunnel);
    }
    return [...shown.values()].map(({ config, runner }) => ({
      stats: runner.stats,
      labels: { role: config.role, tunnel: config.name },
    }));
  }

  /** Whether shutdown() has begun (the health check answers 503 then). */
  get draining(): boolean {
    return this.#shutdown !== null;
  }

  /** Stops every tunnel: stop accepting, drain open sessions, end the rest. */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.#queue.then(async () => {
      for (const running of [...this.#running.values()]) this.#stop(running, { delay: true });
      await Promise.all(this.#draining);
    });
    return this.#shutdown;
  }

  /** Ends every drain at once (a second SIGINT/SIGTERM), shutting down if not yet. */
  endNow(): Promise<void> {
    const shutdown = this.shutdown();
    for (const running of this.#running.values()) running.runner.endNow();
    for (const { runner } of this.#drainingTunnels) runner.endNow();
    return shutdown;
  }

  async #start(tunnel: TunnelConfig, loaded: LoadedKey): Promise<void> {
    const log = new TunnelLogger(this.log, tunnel.name);
    if (loaded.warning) log.warn(loaded.warning);
    let provider: CryptoProvider;
    try {
      provider = loadCryptoProvider(tunnel.crypto, tunnel.libcrypto);
    } catch (err) {
      throw new ConfigError(this.file, messageOf(err), {
        tunnel: tunnel.name,
        field: tunnel.libcrypto === undefined ? "crypto" : "libcrypto",
      });
    }
    let runner: Runner;
    try {
      runner = tunnel.role === "server"
        ? await startServer(tunnel, loaded.key, log, {
          provider,
          drainDelayMs: drainDelayFor(tunnel.drainDelayMs, this.#healthServed),
        })
        : tunnel.vpn
        ? await startVpnClient(tunnel, tunnel.vpn, loaded.key, log, provider)
        : LocalForwarder.start({
          listen: tunnel.listen!,
          mode: tunnel.mode as "forward" | "socks",
          connect: {
            server: tunnel.server,
            key: loaded.key,
            target: tunnel.connect,
            keepaliveMs: tunnel.keepaliveMs,
            handshakeTimeoutMs: tunnel.handshakeTimeoutMs,
            rekeyBytes: tunnel.rekeyBytes,
            provider,
          },
          maxConns: tunnel.maxConns,
          drainTimeoutMs: tunnel.drainTimeoutMs,
          drainDelayMs: drainDelayFor(tunnel.drainDelayMs, this.#healthServed),
          logger: log,
        });
    } catch (err) {
      if (err instanceof TunError || !tunnel.listen) {
        throw new ConfigError(this.file, messageOf(err), { tunnel: tunnel.name, field: "tun" });
      }
      throw new ConfigError(
        this.file,
        `cannot listen on ${formatHostPort(tunnel.listen)}: ${messageOf(err)}`,
        { tunnel: tunnel.name, field: "listen" },
      );
    }
    this.#running.set(tunnel.name, { config: tunnel, key: loaded.key, runner, log });
  }

  /**
   * Begins draining (after the drain delay only when `delay`: a reload has no
   * 503 to show first); resolves once its listener is closed (its port is free).
   */
  #stop(running: Running, options: ShutdownOptions = { delay: false }): Promise<void> {
    this.#running.delete(running.config.name);
    const { runner } = running;
    this.#drainingTunnels.add(running);
    const drained = runner.shutdown(options).catch((err) => {
      running.log.error("shutdown failed", { error: messageOf(err) });
    });
    this.#draining.add(drained);
    drained.finally(() => {
      this.#draining.delete(drained);
      this.#drainingTunnels.delete(running);
    });
    return runner.stopped;
  }

  async #reloadNow(): Promise<boolean> {
    if (this.#shutdown) return false;
    const reload = ++this.#reloads;
    let loaded: Awaited<ReturnType<typeof loadConfig>>;
    try {
      loaded = await loadConfig(this.file);
    } catch (err) {
      this.log.error("config reload failed; the running tunnels are unchanged", {
        reload,
        error: messageOf(err),
      });
      return false;
    }
    const { config, keys } = loaded;
    if (JSON.stringify(config.log) !== JSON.stringify(this.#logSettings)) {
      this.log.warn("the log settings changed; they apply after a restart");
    }
    const wanted = new Map(config.tunnels.map((tunnel) => [tunnel.name, tunnel]));
    const counts = { added: 0, removed: 0, restarted: 0, key_changed: 0, failed: 0 };
    const toStart: TunnelConfig[] = [];
    const closing: Promise<void>[] = [];
    for (const running of [...this.#running.values()]) {
      const next = wanted.get(running.config.name);
      if (!next) {
        running.log.info("tunnel removed from the config; draining");
        closing.push(this.#stop(running));
        counts.removed++;
      } else if (settingsOf(next) !== settingsOf(running.config)) {
        running.log.info("tunnel settings changed; draining and starting again");
        closing.push(this.#stop(running));
        toStart.push(next);
        counts.restarted++;
      } else {
        const { key, warning } = keys.get(next.name)!;
        running.config = next;
        if (!equalBytes(key, running.key)) {
          // Zeroed once a handshake that began under it (at most the handshake timeout) is over.
          swapKey(running.runner, running.key, key);
          running.key = key;
          if (warning) running.log.warn(warning);
          running.log.info("key changed; new sessions use it", {
            fingerprint: await fingerprint(key),
          });
          counts.key_changed++;
        }
      }
    }
    for (const tunnel of config.tunnels) {
      if (this.#running.has(tunnel.name) || toStart.includes(tunnel)) continue;
      toStart.push(tunnel);
      counts.added++;
    }
    // Listeners first: a restarted or renamed tunnel may reuse its old port.
    await Promise.all(closing);
    for (const tunnel of toStart) {
      try {
        await this.#start(tunnel, keys.get(tunnel.name)!);
      } catch (err) {
        this.log.error("tunnel failed to start; the next reload tries again", {
          tunnel: tunnel.name,
          error: messageOf(err),
        });
        counts.failed++;
      }
    }
    this.log.info("config reloaded", { reload, tunnels: this.#running.size, ...counts });
    return counts.failed === 0;
  }
}

/** A server tunnel, with its VPN device when `tun` is set (the server closes it on shutdown). */
async function startServer(
  tunnel: ServerTunnelConfig,
  key: Uint8Array,
  log: Logger,
  { provider, drainDelayMs }: { provider: CryptoProvider; drainDelayMs: number },
): Promise<Runner> {
  const vpn = tunnel.vpn
    ? await VpnService.start({
      device: tunnel.vpn.device,
      addresses: tunnel.vpn.addresses,
      mtu: tunnel.vpn.mtu,
      keepaliveMs: tunnel.vpn.keepaliveMs,
      idleTimeoutMs: tunnel.idleTimeoutMs,
      logger: log,
    })
    : undefined;
  let server: TunnelServer;
  try {
    server = await TunnelServer.start({
      listen: tunnel.listen!,
      key,
      forward: tunnel.forward,
      allow: AllowList.parse(tunnel.allow),
      maxConns: tunnel.maxConns,
      handshakeTimeoutMs: tunnel.handshakeTimeoutMs,
      idleTimeoutMs: tunnel.idleTimeoutMs,
      maxPending: tunnel.maxPending,
      maxPendingPerSource: tunnel.maxPendingPerSource,
      helloTimeoutMs: tunnel.helloTimeoutMs,
      keepaliveMs: tunnel.keepaliveMs,
      drainTimeoutMs: tunnel.drainTimeoutMs,
      drainDelayMs,
      rekeyBytes: tunnel.rekeyBytes,
      logger: log,
      provider,
      vpn,
    });
  } catch (err) {
    await vpn?.close();
    throw err;
  }
  if (!vpn) return server;
  // A restart (SIGHUP) may create the same device again: only once the old one is gone.
  return {
    addr: server.addr,
    stats: server.stats,
    setKey: (key) => server.setKey(key),
    shutdown: (options) => server.shutdown(options),
    endNow: () => server.endNow(),
    stopped: server.stopped.then(() => vpn.close()),
  };
}

/** A VPN client tunnel: its `stopped` resolves once its device is gone. */
async function startVpnClient(
  tunnel: ClientTunnelConfig,
  settings: TunSettings,
  key: Uint8Array,
  log: Logger,
  provider: CryptoProvider,
): Promise<Runner> {
  const client = await VpnClient.start({
    server: tunnel.server,
    key,
    device: settings.device,
    addresses: settings.addresses,
    routes: settings.routes,
    mtu: settings.mtu,
    keepaliveMs: settings.keepaliveMs,
    handshakeTimeoutMs: tunnel.handshakeTimeoutMs,
    rekeyBytes: tunnel.rekeyBytes,
    channel: { provider },
    logger: log,
  });
  log.info("vpn device up", { device: client.describe() });
  let stopped: Promise<void> | null = null;
  client.done.then((error) => {
    if (error && !stopped) log.error("vpn client stopped", { error: error.message });
  });
  const shutdown = () => stopped ??= client.shutdown();
  return {
    addr: null,
    stats: client.stats,
    setKey: (next) => client.setKey(next),
    shutdown,
    endNow: shutdown,
    get stopped() {
      return stopped ?? client.done.then(() => {});
    },
  };
}
