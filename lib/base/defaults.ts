/**
 * Defaults and bounds that the command line, config files and the library
 * classes share (the tables of cli.md): each stated once, here.
 *
 * @example
 * ```ts
 * import { DEFAULT_MAX_CONNS } from "./defaults.ts";
 * console.log(`--max-conns defaults to ${DEFAULT_MAX_CONNS}`);
 * ```
 * @module
 */

/** `--max-conns` / `maxConns`: concurrent sessions (server) or local connections (client). */
export const DEFAULT_MAX_CONNS = 100;

/** The largest `--max-conns` and `--max-pending` (and their config keys) accept. */
export const MAX_CONNECTION_COUNT = 1_000_000;

/** `--handshake-timeout` / `handshakeTimeout`, in seconds, on both ends. */
export const DEFAULT_HANDSHAKE_TIMEOUT_SECONDS = 5;

/** `--drain-timeout` / `drainTimeout`, in seconds, on both ends. */
export const DEFAULT_DRAIN_TIMEOUT_SECONDS = 10;

/**
 * The longest duration in seconds any timer setting takes: setTimeout holds
 * at most 2^31 - 1 ms, and a longer timer would fire at once.
 */
export const MAX_SECONDS = 2_147_483;

/** The port of `--listen` and `--server` when neither an option nor the environment names one. */
export const DEFAULT_SERVER_PORT = 8888;

/** The host the server listens on unless `--listen` or CIPHERLINK_SERVER_HOST names one. */
export const DEFAULT_LISTEN_HOST = "0.0.0.0";

/** The server a client connects to unless `--server` or CIPHERLINK_SERVER_HOST names one. */
export const DEFAULT_SERVER_HOST = "127.0.0.1";
