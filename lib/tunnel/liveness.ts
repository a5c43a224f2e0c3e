/**
 * The liveness clock a session and a VPN link share: the idle timeout (no
 * frame either way for that long) and keepalive (after that much silence
 * from the peer, PING; after KEEPALIVE_MISSES unanswered, the peer is gone).
 *
 * @example
 * ```ts
 * import { Liveness } from "./liveness.ts";
 * const liveness = new Liveness();
 * liveness.start(25_000, 0, {
 *   listening: () => true,
 *   expired: (reason) => console.log(reason),
 *   ping: () => {},
 * });
 * liveness.heard(); // a frame came from the peer
 * liveness.stop();
 * ```
 * @module
 */

import { IdleTimeoutError, KeepaliveTimeoutError, type TimeoutError } from "../base/errors.ts";

/** PINGs left unanswered before keepalive gives up on the peer. */
export const KEEPALIVE_MISSES = 3;

/** What the timer asks of its owner. */
export interface LivenessHooks {
  /** Whether the owner is reading frames now: silence only counts while it is. */
  listening(): boolean;
  /**
   * The session is over: no frame either way for the idle timeout ("idle
   * timeout", an IdleTimeoutError), or KEEPALIVE_MISSES PINGs went
   * unanswered ("keepalive timeout", a KeepaliveTimeoutError). `reason` is
   * the text of the ERROR 5 the owner sends, `error` what it ends with.
   */
  expired(reason: string, error: TimeoutError): void;
  /** Send one PING (empty body). */
  ping(): void;
}

/** The clock and timer of one session or VPN link. */
export class Liveness {
  #lastReceived = Date.now();
  #lastActivity = Date.now();
  #unansweredPings = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  /** A frame arrived from the peer: it is alive, and the session is active. */
  heard(): void {
    this.#lastReceived = this.#lastActivity = Date.now();
    this.#unansweredPings = 0;
  }

  /** A frame was sent: the session is active (keepalive still waits for the peer). */
  active(): void {
    this.#lastActivity = Date.now();
  }

  /** Starts the timer; 0 turns a check off, and with both off there is no timer. */
  start(keepaliveMs: number, idleTimeoutMs: number, hooks: LivenessHooks): void {
    const tick = Math.min(...[keepaliveMs, idleTimeoutMs].filter((ms) => ms > 0));
    if (!Number.isFinite(tick)) return;
    this.#timer = setInterval(() => {
      const now = Date.now();
      if (idleTimeoutMs > 0 && now - this.#lastActivity >= idleTimeoutMs) {
        return hooks.expired("idle timeout", new IdleTimeoutError("idle timeout: no traffic"));
      }
      if (keepaliveMs > 0 && hooks.listening() && now - this.#lastReceived >= keepaliveMs) {
        if (this.#unansweredPings >= KEEPALIVE_MISSES) {
          return hooks.expired(
            "keepalive timeout",
            new KeepaliveTimeoutError(
              `keepalive: the peer answered none of ${KEEPALIVE_MISSES} PINGs`,
            ),
          );
        }
        this.#unansweredPings++;
        this.#lastReceived = now;
        hooks.ping();
      }
    }, tick / 4 > 50 ? tick / 4 : tick);
  }

  /** Stops the timer (idempotent). */
  stop(): void {
    clearInterval(this.#timer);
  }
}
