/**
 * Running until told to stop: the first SIGINT or SIGTERM starts a drain,
 * a later one ends it at once. The CLI's server and client and the config
 * file supervisor all stop this way, so the sequence lives here once.
 *
 * @example
 * ```ts
 * import { drainOnSignal, onShutdownSignal } from "./signals.ts";
 * import { Logger } from "../base/log.ts";
 * const signals = onShutdownSignal();
 * const running = { shutdown: () => Promise.resolve(), endNow: () => {} };
 * await drainOnSignal(signals, running, new Logger());
 * ```
 * @module
 */

import type { Logger } from "../base/log.ts";

/** The hooks on SIGINT and SIGTERM that {@linkcode onShutdownSignal} sets. */
export interface ShutdownSignals {
  /** Resolves with the first signal's name. */
  readonly signal: Promise<string>;
  /** What every later signal calls (ending the drain at once). */
  again(handler: () => void): void;
  /** Unhooks both signals (once; later calls do nothing). */
  remove(): void;
}

/** Something that drains on shutdown() and can be hurried with endNow(). */
export interface Drainable {
  shutdown(): Promise<void>;
  endNow(): unknown;
}

/**
 * Hooks SIGINT and SIGTERM: `signal` resolves when the first arrives; each
 * later one calls what `again` was given. `remove` unhooks.
 */
export function onShutdownSignal(): ShutdownSignals {
  let first: ((name: string) => void) | null = null;
  let repeat = () => {};
  const signal = new Promise<string>((resolve) => (first = resolve));
  const handlers = (["SIGINT", "SIGTERM"] as const).map((name) => {
    const handler = () => {
      if (first) {
        first(name);
        first = null;
      } else repeat();
    };
    Deno.addSignalListener(name, handler);
    return [name, handler] as const;
  });
  let hooked = true;
  return {
    signal,
    again: (handler) => (repeat = handler),
    remove: () => {
      if (!hooked) return;
      hooked = false;
      for (const [name, handler] of handlers) Deno.removeSignalListener(name, handler);
    },
  };
}

/**
 * Waits for the first signal, then drains `running` (a later signal ends the
 * drain at once), then stops the metrics `endpoint` if there is one, and
 * unhooks the signals.
 */
export async function drainOnSignal(
  signals: ShutdownSignals,
  running: Drainable,
  log: Logger,
  endpoint?: { shutdown(): Promise<void> } | null,
): Promise<void> {
  const name = await signals.signal;
  log.info("shutting down", { signal: name });
  signals.again(() => {
    log.info("second signal: ending every session now");
    running.endNow();
  });
  await running.shutdown();
  await endpoint?.shutdown();
  signals.remove();
}
