/**
 * Cipherlink as a library: embed the tunnel's client or server in a program.
 *
 * `forward(data)` is the Python prototype's one round trip; `connect()`
 * returns a session (a duplex plaintext stream over the encrypted channel);
 * `TunnelServer.start()` runs a server in-process. Either takes
 * `provider: loadCryptoProvider("openssl")` to compute its cryptography with
 * OpenSSL instead of Web Crypto (needs --allow-ffi).
 *
 * @example
 * ```ts
 * import { forward, TunnelServer } from "./mod.ts";
 * // A program would read its key file: `(await loadKey("keys/shared_key.key")).key`.
 * const key = crypto.getRandomValues(new Uint8Array(32));
 * const server = await TunnelServer.start({ listen: { host: "127.0.0.1", port: 0 }, key });
 * // Without `forward`, the server echoes: the reply is what was sent.
 * const reply = await forward(new TextEncoder().encode("hello"), {
 *   server: { host: "127.0.0.1", port: server.addr.port },
 *   key,
 * });
 * if (new TextDecoder().decode(reply) !== "hello") throw new Error("no echo");
 * await server.shutdown({ delay: false });
 * ```
 *
 * `deno test --doc --allow-net lib/mod.ts` runs this example (tests/mod_test.ts does).
 * @module
 */

export { connect, type ConnectOptions, forward } from "./tunnel/client.ts";
export { type ServerOptions, TunnelServer } from "./tunnel/server.ts";
export { type ForwarderOptions, LocalForwarder } from "./tunnel/forwarder.ts";
export { Session, type SessionSummary } from "./tunnel/session.ts";
export { SecureChannel } from "./protocol/channel.ts";
export { MessageType } from "./protocol/messages.ts";
export { fingerprint, generateKeyFile, loadKey, parseKey } from "./protocol/keys.ts";
export { AllowList } from "./tunnel/allow.ts";
export {
  CRYPTO_PROVIDERS,
  type CryptoProvider,
  type CryptoProviderName,
  loadCryptoProvider,
} from "./protocol/crypto/select.ts";
export { Logger } from "./base/log.ts";
export {
  AuthenticationError,
  CipherlinkError,
  CryptoLibraryError,
  ErrorCode,
  KeyFileError,
  ProtocolError,
  RemoteError,
  TimeoutError,
  TruncationError,
} from "./base/errors.ts";
