/**
 * Draining on shutdown: give open sessions a deadline to finish, then end
 * the rest. Shared by the server and the client's local listeners.
 *
 * @example
 * ```ts
 * import { drain } from "./drain.ts";
 * const sessions = [Promise.resolve()];
 * await drain(sessions, 10_000, () => console.log("ending the rest"));
 * ```
 * @module
 */

/**
 * Resolves once every promise in `done` settled. If that takes longer than
 * `timeoutMs`, calls `endTheRest` (which must make them settle) and waits.
 * Resolves whether the deadline was met.
 */
export async function drain(
  done: Promise<unknown>[],
  timeoutMs: number,
  endTheRest: () => void,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"late">((
    resolve,
  ) => (timer = setTimeout(() => resolve("late"), timeoutMs)));
  const all = Promise.allSettled(done);
  const inTime = await Promise.race([all.then(() => "done" as const), deadline]) === "done";
  clearTimeout(timer);
  if (!inTime) {
    endTheRest();
    await all;
  }
  return inTime;
}
