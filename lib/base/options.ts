/**
 * Command-line option parsing with usage errors in Cipherlink's own words:
 * one line per mistake, a "did you mean" where a known option is close, and
 * a note when the option belongs to another command. Works from the option
 * tables alone (the ones `node:util` parseArgs takes), so an option added to
 * a table is known here too.
 *
 * @example
 * ```ts
 * import { parseOptions } from "./options.ts";
 * const table = { key: { type: "string" }, help: { type: "boolean", short: "h" } } as const;
 * const { values } = parseOptions("fingerprint", ["--key", "k.key"], table);
 * // parseOptions("fingerprint", ["--kye", "k"], table) throws
 * // UsageError("unknown option --kye; did you mean --key?")
 * ```
 * @module
 */

import { parseArgs } from "node:util";
import { UsageError } from "./errors.ts";

/** One option as parseArgs describes it. */
export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
}

/** A command's options by long name. */
export type OptionTable = Readonly<Record<string, Readonly<OptionSpec>>>;

/** What else the command line may hold. */
export interface ParseSettings {
  /** Whether the command takes arguments that are not options (MESSAGE, FILE). */
  allowPositionals?: boolean;
  /** The other commands' tables, to say where a misplaced option belongs. */
  otherCommands?: Readonly<Record<string, OptionTable>>;
}

/**
 * Parses `args` against `table` (strictly: parseArgs semantics), after
 * checking them so that every mistake is a {@linkcode UsageError} with one
 * line of our own. A value that starts with `-` is taken when it is a number
 * (`--keepalive -1`), so the option's own check can say what it accepts.
 */
export function parseOptions<T extends OptionTable>(
  command: string,
  args: string[],
  table: T,
  settings: ParseSettings = {},
): { values: ValuesOf<T>; positionals: string[] } {
  const checked = checkArgs(command, args, table, settings);
  const { values, positionals } = parseArgs({
    args: checked,
    options: table as Record<string, OptionSpec>,
    strict: true,
    allowPositionals: settings.allowPositionals ?? false,
  });
  return { values: values as ValuesOf<T>, positionals };
}

/** The values parseArgs returns for a table: strings, booleans, or lists of them. */
export type ValuesOf<T extends OptionTable> = {
  [K in keyof T]?: T[K]["multiple"] extends true
    ? (T[K]["type"] extends "boolean" ? boolean[] : string[])
    : T[K]["type"] extends "boolean" ? boolean
    : string;
};

function checkArgs(
  command: string,
  args: string[],
  table: OptionTable,
  settings: ParseSettings,
): string[] {
  const out: string[] = [];
  const byShort = new Map(
    Object.entries(table).flatMap(([name, spec]) => (spec.short ? [[spec.short, name]] : [])),
  );
  const positional = (arg: string) => {
    if (settings.allowPositionals) return;
    const close = suggestion(arg.replace(/^-+/, ""), Object.keys(table));
    throw new UsageError(
      `${command} takes no arguments besides options, got '${arg}'${
        close ? `; did you mean --${close}?` : ""
      }`,
    );
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      args.slice(i + 1).forEach(positional);
      out.push(...args.slice(i));
      break;
    }
    if (arg.startsWith("--")) {
      const equals = arg.indexOf("=");
      const name = arg.slice(2, equals < 0 ? undefined : equals);
      const spec = table[name];
      if (!spec) throw unknownOption(command, `--${name}`, name, table, settings);
      if (spec.type === "boolean") {
        if (equals >= 0) throw new UsageError(`--${name} takes no value`);
        out.push(arg);
        continue;
      }
      if (equals >= 0) {
        out.push(arg);
        continue;
      }
      const value = args[i + 1];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
      if (value.startsWith("-") && value !== "-" && !/^-\d/.test(value)) {
        throw new UsageError(
          `--${name} needs a value, not the option ${value} (write --${name}=${value} for a value that starts with '-')`,
        );
      }
      out.push(`--${name}=${value}`);
      i++;
      continue;
    }
    if (arg.startsWith("-") && arg !== "-") {
      for (const letter of arg.slice(1)) {
        const name = byShort.get(letter);
        if (!name) throw unknownOption(command, `-${letter}`, letter, table, settings);
        if (table[name].type !== "boolean") {
          throw new UsageError(`-${letter} needs a value: write --${name} VALUE`);
        }
      }
      out.push(arg);
      continue;
    }
    positional(arg);
    out.push(arg);
  }
  return out;
}

function unknownOption(
  command: string,
  written: string,
  name: string,
  table: OptionTable,
  settings: ParseSettings,
): UsageError {
  const owners = Object.entries(settings.otherCommands ?? {})
    .filter(([, other]) => Object.hasOwn(other, name) && name.length > 1)
    .map(([owner]) => owner);
  if (owners.length > 0) {
    return new UsageError(
      `${written} is ${article(owners[0])} ${owners.join("/")} option; ${command} does not take it`,
    );
  }
  const close = suggestion(name, Object.keys(table));
  return new UsageError(
    close ? `unknown option ${written}; did you mean --${close}?` : `unknown option ${written}`,
  );
}

function article(word: string): string {
  return /^[aeiou]/.test(word) ? "an" : "a";
}

/**
 * The known name closest to `name`, if it is close enough to be a typo: at
 * most 2 edits (1 for short names), or `name` begins it unambiguously.
 */
export function suggestion(name: string, known: readonly string[]): string | null {
  if (name.length === 0) return null;
  const prefixed = known.filter((k) => k.startsWith(name));
  if (prefixed.length === 1) return prefixed[0];
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  const limit = name.length <= 4 ? 1 : 2;
  return bestDistance <= limit ? best : null;
}

/** Levenshtein distance with adjacent swaps counted as one edit. */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      rows[i][j] = Math.min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        rows[i][j] = Math.min(rows[i][j], rows[i - 2][j - 2] + 1);
      }
    }
  }
  return rows[a.length][b.length];
}
