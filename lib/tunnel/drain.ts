/**
 * Draining on shutdown, in the order load balancers need: first a delay in
 * which the listener still accepts (so a health check sees the 503 before
 * connections are refused), then a deadline for every accepted connection
 * to finish, then ending the rest. Shared by the server and the client's
 * local listeners; a second signal cuts both waits short.
 *
 * @example
 * ```ts
 * import { drain, pause } from "./drain.ts";
 * const hurry = new AbortController();
 * await pause(2_000, hurry.signal); // still accepting
 * const sessions = [Promise.resolve()];
 * await drain(sessions, 10_000, () => console.log("ending the rest"), hurry.signal);
 * ```
 * @module
 */

import { closeQuietly } from "../protocol/conn.ts";
import { ErrorCode } from "../base/errors.ts";
import type { Logger } from "../base/log.ts";
import type { Session } from "./session.ts";
import type { TunnelStats } from "./stats.ts";

/**
 * How long a listener keeps accepting after SIGTERM when a `/healthz`
 * endpoint is served (`--drain-delay`, config `drainDelay`), in seconds:
 * time for a balancer checking every 200 ms to see the 503 several times.
 */
export const DEFAULT_DRAIN_DELAY_SECONDS = 2;

/**
 * The drain delay in milliseconds for an explicit setting (or none): without
 * a health endpoint no balancer can see the drain coming, so the listener
 * closes at once unless a delay was asked for.
 */
export function drainDelayFor(explicitMs: number | undefined, healthServed: boolean): number {
  return explicitMs ?? (healthServed ? DEFAULT_DRAIN_DELAY_SECONDS * 1000 : 0);
}

/** How a listener's shutdown() drains. */
export interface ShutdownOptions {
  /** Keep accepting for the drain delay first (default true; a config reload passes false). */
  delay?: boolean;
}

/** Resolves after `ms`, or at once when `hurry` aborts. */
export function pause(ms: number, hurry: AbortSignal): Promise<void> {
  if (ms <= 0 || hurry.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      hurry.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    hurry.addEventListener("abort", done);
  });
}

/**
 * Resolves once every promise in `done` settled. If that takes longer than
 * `timeoutMs`, or `hurry` aborts first, calls `endTheRest` (which must make
 * them settle) and waits. Resolves whether they finished on their own.
 */
export async function drain(
  done: Promise<unknown>[],
  timeoutMs: number,
  endTheRest: () => void,
  hurry?: AbortSignal,
): Promise<boolean> {
  const all = Promise.allSettled(done);
  const finished = new AbortController();
  const stop = hurry ? AbortSignal.any([hurry, finished.signal]) : finished.signal;
  const inTime = await Promise.race([
    all.then(() => true),
    pause(timeoutMs, stop).then(() => false),
  ]);
  finished.abort(); // ends the pause's timer when the sessions won
  if (!inTime) {
    endTheRest();
    await all;
  }
  return inTime;
}

/** An accepted connection as the drain sees it. */
export interface Accepted {
  conn: Deno.Conn;
  /** Null until the session carries data. */
  session: Session | null;
  /** Settles when the connection is done with. */
  done: Promise<void>;
}

/** What {@linkcode drainListener} drives. */
export interface DrainPlan {
  /** Keep accepting this long first (0: close the listener at once). */
  delayMs: number;
  /** Then the time accepted connections get to finish. */
  timeoutMs: number;
  /** Aborting it ends the delay and the deadline at once. */
  hurry: AbortSignal;
  /** Closes the listener and resolves once the accept loop ended. */
  closeListener(): Promise<void>;
  /** The connections accepted and not yet done. */
  accepted(): Iterable<Accepted>;
  /** The ERROR 6 message for sessions open at the deadline. */
  abortMessage: string;
  stats: TunnelStats;
  log: Logger;
}

/**
 * The whole drain of one listener: delay (still accepting), close, serve
 * what was accepted until the deadline, then abort open sessions with ERROR
 * 6 and close connections that had none yet (counted as refused). Counts
 * and logs the outcome.
 */
export async function drainListener(plan: DrainPlan): Promise<void> {
  const { stats, log } = plan;
  stats.drainStarted();
  log.info("draining", {
    sessions: [...plan.accepted()].length,
    accepting_ms: plan.delayMs,
    drain_timeout_ms: plan.timeoutMs,
  });
  await pause(plan.delayMs, plan.hurry);
  await plan.closeListener();
  const open = [...plan.accepted()];
  if (plan.delayMs > 0) log.info("listener closed", { sessions: open.length });
  await drain(open.map((c) => c.done), plan.timeoutMs, () => {
    stats.drainDeadline();
    for (const { conn, session } of plan.accepted()) {
      if (session) session.abort(ErrorCode.internal, plan.abortMessage);
      else {
        stats.connectionsDrainRefused++;
        closeQuietly(conn);
      }
    }
  }, plan.hurry);
  stats.drainEnded();
  log.info("stopped", {
    sessions_drained: stats.sessionsDrained,
    sessions_aborted: stats.sessionsDrainAborted,
    connections_refused: stats.connectionsDrainRefused,
    drain_ms: Math.round(stats.drainSeconds * 1000),
  });
}
