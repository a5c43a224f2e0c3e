/**
 * What `deno compile` said when it failed, in one line: its own error line
 * is often only the step ("Writing deno compile executable to temporary
 * file …"), while the reason (the failed download of `denort`, a disk that
 * is full) is in the "Caused by:" list below it.
 *
 * @example
 * ```ts
 * import { compileFailureCause } from "./cause.ts";
 * compileFailureCause("error: Writing …\n\nCaused by:\n    0: Setting up base binary.\n    1: error sending request for url (https://dl.deno.land/…): dns error");
 * // "Writing …: error sending request for url (https://dl.deno.land/…): dns error"
 * ```
 * @module
 */

/**
 * The error line of `deno compile`'s stderr joined with its most telling
 * cause: the first one that names a URL (the download), else the last one.
 */
export function compileFailureCause(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.trim()).filter((l) => l);
  const errorLine = lines.find((l) => /^error:/i.test(l))?.replace(/^error:\s*/i, "") ??
    lines.at(-1) ?? "no output";
  const causedBy = lines.findIndex((l) => /^Caused by:$/i.test(l));
  if (causedBy < 0) return errorLine;
  const backtrace = lines.findIndex((l) => /^Stack backtrace:$/i.test(l));
  const causes = lines.slice(causedBy + 1, backtrace > causedBy ? backtrace : undefined)
    .map((l) => /^\d+:\s*(.*)$/.exec(l)?.[1])
    .filter((c): c is string => c !== undefined);
  const telling = causes.find((c) => /https?:\/\//.test(c)) ?? causes.at(-1);
  return telling ? `${errorLine}: ${telling}` : errorLine;
}
