/**
 * The SOCKS5 server side (RFC 1928) that `cipherlink client --socks` speaks
 * to local applications: NO AUTH only, CONNECT only (IPv4, IPv6, domain
 * names); BIND and UDP ASSOCIATE are answered "command not supported".
 *
 * @example
 * ```ts
 * import { acceptSocks, replySocks, SocksReply } from "./socks.ts";
 * // conn: a Deno.TcpConn from a local listener
 * // const request = await acceptSocks(conn); // { host, port } or null
 * // await replySocks(conn, SocksReply.succeeded);
 * ```
 * @module
 */

import { type Connection, writeAll } from "../protocol/conn.ts";
import {
  ErrorCode,
  errorCodeInfo,
  RemoteError,
  saysTargetRefused,
  TimeoutError,
} from "../base/errors.ts";
import {
  ATYP_DOMAIN,
  ATYP_IPV4,
  ATYP_IPV6,
  decodeSocksAddress,
  PORT_SIZE,
} from "../protocol/target.ts";
import { type HostPort } from "../protocol/hostport.ts";
import { IPV4_SIZE, IPV6_SIZE } from "../protocol/address.ts";

const VERSION = 5;
const METHOD_NO_AUTH = 0x00;
const METHOD_NONE_ACCEPTABLE = 0xff;
const CMD_CONNECT = 1;

/** SOCKS5 reply codes (RFC 1928 section 6). */
export const SocksReply = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;

/** How long a local application has for method negotiation and its request. */
export const SOCKS_NEGOTIATION_TIMEOUT_MS = 10_000;
/**
 * How long a SOCKS request waits for the server's OPEN_OK: longer than the
 * server's own lookup and connect deadlines, so its ERROR usually comes first.
 */
export const SOCKS_OPEN_TIMEOUT_MS = 20_000;

/** Whether a listen host only takes connections from this machine. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** A SOCKS5 exchange that went wrong before a request was made. */
export class SocksError extends Error {}

async function readExact(conn: Connection, count: number): Promise<Uint8Array> {
  const out = new Uint8Array(count);
  let at = 0;
  while (at < count) {
    const n = await conn.read(out.subarray(at));
    if (n === null) {
      throw new SocksError("the SOCKS client closed the connection");
    }
    at += n;
  }
  return out;
}

/**
 * Runs method negotiation and reads the request. Resolves the CONNECT
 * target, or null after it has answered and refused the request itself
 * (unsupported command or address type); throws {@linkcode SocksError} for a
 * client that does not speak SOCKS5.
 */
export async function acceptSocks(conn: Connection): Promise<HostPort | null> {
  const [version, methodCount] = await readExact(conn, 2);
  if (version !== VERSION) {
    throw new SocksError(`not a SOCKS5 client (version ${version})`);
  }
  const methods = await readExact(conn, methodCount);
  if (!methods.includes(METHOD_NO_AUTH)) {
    await writeAll(conn, Uint8Array.of(VERSION, METHOD_NONE_ACCEPTABLE));
    throw new SocksError(
      "the SOCKS client offers no method we accept (only NO AUTH)",
    );
  }
  await writeAll(conn, Uint8Array.of(VERSION, METHOD_NO_AUTH));
  const [requestVersion, command, , addressType] = await readExact(conn, 4);
  if (requestVersion !== VERSION) {
    throw new SocksError("malformed SOCKS5 request");
  }
  let rest: Uint8Array;
  switch (addressType) {
    case ATYP_IPV4:
      rest = await readExact(conn, IPV4_SIZE + PORT_SIZE);
      break;
    case ATYP_IPV6:
      rest = await readExact(conn, IPV6_SIZE + PORT_SIZE);
      break;
    case ATYP_DOMAIN: {
      const [length] = await readExact(conn, 1);
      rest = Uint8Array.of(length, ...(await readExact(conn, length + PORT_SIZE)));
      break;
    }
    default:
      await replySocks(conn, SocksReply.addressTypeNotSupported);
      return null;
  }
  if (command !== CMD_CONNECT) {
    await replySocks(conn, SocksReply.commandNotSupported);
    return null;
  }
  const address = decodeSocksAddress(Uint8Array.of(addressType, ...rest));
  if (!address) {
    await replySocks(conn, SocksReply.addressTypeNotSupported);
    return null;
  }
  return { host: address.host, port: address.port };
}

/** Sends a reply with an unspecified bound address (0.0.0.0:0). */
export async function replySocks(
  conn: Connection,
  code: number,
): Promise<void> {
  await writeAll(conn, Uint8Array.of(VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0));
}

/**
 * Maps why a tunnel OPEN failed to a SOCKS5 reply code: an ERROR from the
 * server to its code's reply in the ERROR code table (policy refusals "not
 * allowed", unreachable targets "host unreachable", or "refused" when the
 * server's message says so), a local deadline to "TTL expired", anything
 * else to "general failure".
 */
export function socksReplyFor(error: unknown): number {
  if (error instanceof TimeoutError) return SocksReply.ttlExpired;
  if (!(error instanceof RemoteError)) return SocksReply.generalFailure;
  if (error.code === ErrorCode.unreachable && saysTargetRefused(error.detail)) {
    return SocksReply.connectionRefused;
  }
  return errorCodeInfo(error.code)?.socksReply ?? SocksReply.generalFailure;
}
