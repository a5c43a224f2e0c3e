/**
 * The kinds of value a setting takes (seconds, a whole number in a range, one
 * of a few words, HOST:PORT, a CIDR, an `--allow` rule, a path, a device or
 * tunnel name): for each, the one check that the command line and the config
 * file both use, read from the command line's text or from a config file's
 * JSON value. Command-line mistakes are {@linkcode UsageError}s that name the
 * option; config mistakes are {@linkcode ValueProblem}s that the config
 * parser places in the file, the tunnel and the field.
 *
 * @example
 * ```ts
 * import { count, seconds } from "./values.ts";
 * seconds.fromText("1.5", "keepalive"); // 1500 (milliseconds)
 * count(1, 10).fromJson(3); // 3
 * // count(1, 10).fromText("11", "max-conns") throws
 * // UsageError("--max-conns takes a whole number from 1 to 10, not '11'")
 * ```
 * @module
 */

import { MAX_SECONDS } from "../base/defaults.ts";
import { UsageError } from "../base/errors.ts";
import type { JsonValue } from "../base/jsonc.ts";
import { formatHostPort, type HostPort, parseHostPort } from "../protocol/hostport.ts";
import { type Cidr, formatCidr, parseCidr } from "../protocol/packet.ts";
import { AllowRuleError, parseRule } from "../tunnel/allow.ts";
import { checkDeviceName } from "../tunnel/tun.ts";

/**
 * What is wrong with a config file's value, in the words that follow
 * `field "NAME": ` (the config parser adds the location). `index` is the
 * item of a list it is about.
 */
export class ValueProblem extends Error {
  /** The list item the problem is in, when the value is a list. */
  readonly index?: number;
  constructor(detail: string, index?: number) {
    super(detail);
    this.index = index;
  }
}

/** One kind of value: how the command line and a config file spell it, and its one check. */
export interface ValueKind<T> {
  /** The value of `--flag TEXT`; throws {@linkcode UsageError} naming the option. */
  fromText(text: string, flag: string): T;
  /** The value of a config field; throws {@linkcode ValueProblem}. */
  fromJson(value: JsonValue): T;
  /** How help and the docs show a value of this kind (seconds as seconds, not milliseconds). */
  show(value: T): string;
  /** What a config file's list of these holds, for "must be a list of …"; absent: no lists. */
  plural?: string;
}

/** A JSON value in an error message: strings quoted, lists and objects named. */
export function describe(value: JsonValue): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "an object";
  if (typeof value === "string") return `'${value}'`;
  return String(value);
}

function jsonString(value: JsonValue): string {
  if (typeof value !== "string") throw new ValueProblem(`must be a string, not ${describe(value)}`);
  return value;
}

/** Problem of a config string whose parser throws a UsageError in its own words. */
function parsedString<T>(value: JsonValue, parse: (text: string) => T): T {
  const text = jsonString(value);
  try {
    return parse(text);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    throw new ValueProblem(err.message);
  }
}

const SECONDS_RANGE = `a number of seconds from 0 to ${MAX_SECONDS}`;

/** Whether `value` is a duration setTimeout honours: 0 to {@linkcode MAX_SECONDS} seconds. */
function validSeconds(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 &&
    value <= MAX_SECONDS;
}

/** A duration in seconds (decimals allowed, 0 often meaning off); the value is in milliseconds. */
export const seconds: ValueKind<number> = {
  fromText(text, flag) {
    const value = Number(text);
    if (text.trim() === "" || !validSeconds(value)) {
      throw new UsageError(`--${flag} takes ${SECONDS_RANGE}, not '${text}'`);
    }
    return value * 1000;
  },
  fromJson(value) {
    if (!validSeconds(value)) {
      throw new ValueProblem(`must be ${SECONDS_RANGE}, not ${describe(value)}`);
    }
    return value * 1000;
  },
  show: (ms) => String(ms / 1000),
};

/** A whole number from `min` to `max` (connections, bytes, an MTU). */
export function count(min: number, max: number): ValueKind<number> & { min: number; max: number } {
  const range = `a whole number from ${min} to ${max}`;
  return {
    min,
    max,
    fromText(text, flag) {
      const value = Number(text);
      if (!/^\d+$/.test(text) || value < min || value > max) {
        throw new UsageError(`--${flag} takes ${range}, not '${text}'`);
      }
      return value;
    },
    fromJson(value) {
      if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
        throw new ValueProblem(`must be ${range}, not ${describe(value)}`);
      }
      return value;
    },
    show: String,
  };
}

/** One of a few words (a log level, a crypto provider, a mode). */
export function oneOf<T extends string>(
  allowed: readonly T[],
): ValueKind<T> & { allowed: readonly T[] } {
  const known = allowed as readonly string[];
  return {
    allowed,
    fromText(text, flag) {
      if (!known.includes(text)) {
        throw new UsageError(`--${flag} takes one of ${allowed.join(", ")}, not '${text}'`);
      }
      return text as T;
    },
    fromJson(value) {
      const text = jsonString(value);
      if (!known.includes(text)) {
        throw new ValueProblem(
          `must be one of ${allowed.map((a) => `"${a}"`).join(", ")}, not '${text}'`,
        );
      }
      return text as T;
    },
    show: (value) => value,
  };
}

/** `HOST:PORT` (IPv6 in brackets); port 0 ("pick one") only where a listener takes it. */
export function hostPort(allowPortZero: boolean): ValueKind<HostPort> {
  return {
    fromText: (text) => parseHostPort(text, allowPortZero),
    fromJson: (value) => parsedString(value, (text) => parseHostPort(text, allowPortZero)),
    show: formatHostPort,
  };
}

/** A file path; a config file's must not be empty (it is resolved against the file's folder). */
export const path: ValueKind<string> = {
  fromText: (text) => text,
  fromJson(value) {
    const text = jsonString(value);
    if (text === "") throw new ValueProblem("must not be empty");
    return text;
  },
  show: (value) => value,
};

/** `ADDRESS/PREFIX`, IPv4 or IPv6 (a tunnel address, a route). */
export const cidr: ValueKind<Cidr> = {
  fromText: (text, flag) => parseCidr(text, `--${flag}`),
  fromJson: (value) => {
    if (typeof value !== "string") {
      throw new ValueProblem(`must be a CIDR string, not ${describe(value)}`);
    }
    return parsedString(value, (text) => parseCidr(text, "it"));
  },
  show: formatCidr,
  plural: "CIDRs",
};

/** One `--allow` rule, checked; the value is the rule's text (AllowList.parse takes it). */
export const allowRule: ValueKind<string> = {
  fromText(text) {
    parseRule(text);
    return text;
  },
  fromJson(value) {
    if (typeof value !== "string") {
      throw new ValueProblem(`must be a rule string, not ${describe(value)}`);
    }
    try {
      parseRule(value);
    } catch (err) {
      // The rule's own words, without the option's name: the field names it here.
      if (err instanceof AllowRuleError) throw new ValueProblem(err.detail);
      throw err;
    }
    return value;
  },
  show: (value) => value,
  plural: "rules",
};

/**
 * A TUN device's name, checked by the device layer's own rule before
 * anything starts: a command line's is a usage error, a config file's is
 * found by check-config.
 */
export const deviceName: ValueKind<string> = {
  fromText: (text, flag) => checkedDeviceName(text, (why) => new UsageError(`--${flag}: ${why}`)),
  fromJson(value) {
    const name = jsonString(value);
    if (name === "") throw new ValueProblem("must not be empty");
    return checkedDeviceName(name, (why) => new ValueProblem(why));
  },
  show: (value) => value,
};

/** `name` when the device layer accepts it; else its reason, as the error `fail` makes. */
function checkedDeviceName(name: string, fail: (why: string) => Error): string {
  try {
    checkDeviceName(name);
  } catch (err) {
    throw fail((err as Error).message);
  }
  return name;
}

const TUNNEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A config tunnel's name: what logs and errors call it. */
export const tunnelName: ValueKind<string> = {
  fromText(text, flag) {
    if (!TUNNEL_NAME.test(text)) throw new UsageError(`--${flag}: ${nameProblem(text)}`);
    return text;
  },
  fromJson(value) {
    const name = jsonString(value);
    if (name === "") throw new ValueProblem("must not be empty");
    if (!TUNNEL_NAME.test(name)) throw new ValueProblem(nameProblem(name));
    return name;
  },
  show: (value) => value,
};

function nameProblem(name: string): string {
  return `'${name}' must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`;
}

/** An on/off switch (`--help`); config files have none. */
export const flag: ValueKind<boolean> = {
  fromText: () => true,
  fromJson(value) {
    if (typeof value !== "boolean") {
      throw new ValueProblem(`must be true or false, not ${describe(value)}`);
    }
    return value;
  },
  show: String,
};
