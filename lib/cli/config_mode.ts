/**
 * The CLI's `--config FILE` mode of `server` and `client`: checks that the
 * command line names nothing a config file sets, then runs the file's
 * tunnels under the supervisor (ops/supervisor.ts) until SIGINT/SIGTERM,
 * reloading them on SIGHUP.
 *
 * @example
 * ```ts
 * import { runConfig } from "./config_mode.ts";
 * const exitCode = await runConfig("tunnels.json", { "log-level": "info" });
 * ```
 * @module
 */

import { UsageError } from "../base/errors.ts";
import { serveMetrics } from "../ops/metrics.ts";
import { argGiven, type ArgValues, SETTINGS, withConfigOptions } from "../ops/settings.ts";
import { drainOnSignal, onShutdownSignal } from "../ops/signals.ts";
import { Supervisor } from "../ops/supervisor.ts";

/** The command-line options `--config` mode takes (the settings table's); every other one is a usage error. */
export const CONFIG_OPTIONS: readonly string[] = withConfigOptions();

/**
 * The CLI's `--config FILE` mode for `server` and `client`: the only other
 * options it takes are {@linkcode CONFIG_OPTIONS} (--log-level and
 * --log-format win over the file's `log`; --metrics serves every tunnel). Runs until SIGINT/SIGTERM, reloading on SIGHUP; resolves
 * the exit code. Throws {@linkcode UsageError} for a bad command line and
 * `ConfigError` (ops/config.ts) for a bad file or a tunnel that cannot listen.
 */
export async function runConfig(
  file: string,
  values: ArgValues,
  positionals: string[] = [],
): Promise<number> {
  const other = Object.keys(values).find((name) =>
    values[name] !== undefined && !CONFIG_OPTIONS.includes(name)
  );
  if (other) {
    throw new UsageError(
      `--config cannot be combined with --${other} (each tunnel's settings live in the file)`,
    );
  }
  if (positionals.length > 0) throw new UsageError("MESSAGE cannot be combined with --config");
  const level = argGiven(values, SETTINGS.logLevel);
  const format = argGiven(values, SETTINGS.logFormat);
  const metrics = argGiven(values, SETTINGS.metrics);

  let supervisor: Supervisor | null = null;
  let hangupDuringStart = false;
  const reload = (running: Supervisor) =>
    running.reload().catch((err) => {
      running.log.error("config reload failed", {
        error: err instanceof Error ? err.message : String(err),
      });
    });
  const onHangup = () => {
    if (supervisor) reload(supervisor);
    else hangupDuringStart = true;
  };
  const signals = onShutdownSignal();
  Deno.addSignalListener("SIGHUP", onHangup);
  try {
    supervisor = await Supervisor.start(file, {
      level,
      format,
      healthServed: metrics !== undefined,
    });
    const running = supervisor;
    const endpoint = metrics
      ? serveMetrics(metrics, {
        sources: () => running.metricsSources(),
        healthy: () => !running.draining,
      }, running.log)
      : null;
    if (hangupDuringStart) reload(supervisor);
    await drainOnSignal(signals, supervisor, supervisor.log, endpoint);
    return 0;
  } finally {
    Deno.removeSignalListener("SIGHUP", onHangup);
    signals.remove();
  }
}
