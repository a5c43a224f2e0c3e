/**
 * Logging: one line per event on stderr, as text or JSON, filtered by level.
 *
 * Events carry fields (session id, peer, outcome, byte counts) rather than
 * prose, so the JSON form has stable names. Keys never reach a logger: only
 * fingerprints do.
 *
 * @example
 * ```ts
 * import { Logger } from "./log.ts";
 * const log = new Logger("info", "json");
 * log.info("session end", { session: 7, peer: "127.0.0.1:5000", bytes_in: 10 });
 * ```
 * @module
 */

/** Log levels, least severe first. */
export type LogLevel = "debug" | "info" | "warn" | "error";
/** Output formats. */
export type LogFormat = "text" | "json";
export const LOG_LEVELS: readonly LogLevel[] = [
  "debug",
  "info",
  "warn",
  "error",
];
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

/** Values a log field may hold. */
export type LogFields = Record<
  string,
  string | number | boolean | null | undefined
>;

/** Where lines go; stderr unless a test captures them. */
export type LogSink = (line: string) => void;

// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
// deno-lint-ignore no-control-regex
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

/**
 * Escapes control characters (C0, DEL, C1, the Unicode line separators) as
 * `\uXXXX`, so a peer-chosen string (a target name, an error text) cannot
 * forge log lines or drive a terminal.
 */
export function escapeControl(text: string): string {
  return text.replace(CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

const encoder = new TextEncoder();
const stderrSink: LogSink = (line) => {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
};

/** A leveled, formatted logger. */
export class Logger {
  readonly level: LogLevel;
  readonly format: LogFormat;
  #min: number;
  #sink: LogSink;

  constructor(
    level: LogLevel = "info",
    format: LogFormat = "text",
    sink: LogSink = stderrSink,
  ) {
    this.level = level;
    this.format = format;
    this.#min = LOG_LEVELS.indexOf(level);
    this.#sink = sink;
  }

  debug(event: string, fields: LogFields = {}): void {
    this.#emit("debug", event, fields);
  }
  info(event: string, fields: LogFields = {}): void {
    this.#emit("info", event, fields);
  }
  warn(event: string, fields: LogFields = {}): void {
    this.#emit("warn", event, fields);
  }
  error(event: string, fields: LogFields = {}): void {
    this.#emit("error", event, fields);
  }

  #emit(level: LogLevel, event: string, fields: LogFields): void {
    if (LOG_LEVELS.indexOf(level) < this.#min) return;
    const time = new Date().toISOString();
    if (this.format === "json") {
      const record: LogFields = { time, level, msg: event };
      for (const [k, v] of Object.entries(fields)) {
        if (v !== undefined) record[k] = v;
      }
      this.#sink(escapeControl(JSON.stringify(record)));
      return;
    }
    let line = `${time} ${level.toUpperCase().padEnd(5)} ${event}`;
    for (const [k, v] of Object.entries(fields)) {
      if (v === undefined) continue;
      const text = String(v);
      const quoted = /[\s"=]/.test(text) || CONTROL.test(text) || text === "";
      line += ` ${k}=${quoted ? escapeControl(JSON.stringify(text)) : text}`;
    }
    this.#sink(line);
  }
}

/** The window of an {@linkcode EventAggregator}. */
export const AGGREGATE_WINDOW_MS = 10_000;
/** Events an {@linkcode EventAggregator} logs one by one in each window. */
export const AGGREGATE_BURST = 10;

/**
 * Rate-limits events that an unauthenticated peer can cause at will (failed
 * or abandoned handshakes): the first `burst` in each window are logged with
 * their fields, the rest are counted by reason and logged as one summary
 * line when the window ends (they still go out one by one at debug level).
 */
export class EventAggregator {
  readonly #logger: Logger;
  readonly #level: Exclude<LogLevel, "debug">;
  readonly #summary: string;
  readonly #windowMs: number;
  readonly #burst: number;
  #windowEnds = 0;
  #logged = 0;
  #suppressed = new Map<string, number>();
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    logger: Logger,
    level: Exclude<LogLevel, "debug">,
    summary: string,
    windowMs = AGGREGATE_WINDOW_MS,
    burst = AGGREGATE_BURST,
  ) {
    this.#logger = logger;
    this.#level = level;
    this.#summary = summary;
    this.#windowMs = windowMs;
    this.#burst = burst;
  }

  /** Records one `event` with `reason`; logs it unless this window's burst is spent. */
  note(event: string, reason: string, fields: LogFields): void {
    const now = Date.now();
    if (now >= this.#windowEnds) {
      this.flush();
      this.#windowEnds = now + this.#windowMs;
      this.#logged = 0;
    }
    if (this.#logged < this.#burst) {
      this.#logged++;
      this.#logger[this.#level](event, { reason, ...fields });
      return;
    }
    this.#logger.debug(event, { reason, ...fields });
    this.#suppressed.set(reason, (this.#suppressed.get(reason) ?? 0) + 1);
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush(), this.#windowEnds - now);
      Deno.unrefTimer(this.#timer);
    }
  }

  /** Logs the summary of the events counted but not logged, if any. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#suppressed.size === 0) return;
    const fields: LogFields = {};
    let total = 0;
    for (const [reason, count] of this.#suppressed) {
      fields[reason] = count;
      total += count;
    }
    this.#suppressed.clear();
    this.#logger[this.#level](this.#summary, {
      not_logged: total,
      window_ms: this.#windowMs,
      ...fields,
    });
  }
}
