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
 * import { forward, loadKey, TunnelServer } from "./mod.ts";
 * const { key } = await loadKey("keys/shared_key.key");
 * const server = await TunnelServer.start({ listen: { host: "127.0.0.1", port: 0 }, key });
 * const reply = await forward(new TextEncoder().encode("hello"), {
 *   server: { host: "127.0.0.1", port: server.addr.port },
 *   key,
 * });
 * await server.shutdown();
 * ```
 * @module
 */

export { connect, type ConnectOptions, forward } from "./client.ts";
export { type ServerOptions, TunnelServer } from "./server.ts";
export { type ForwarderOptions, LocalForwarder } from "./forwarder.ts";
export { Session, type SessionSummary } from "./session.ts";
export { MessageType, SecureChannel } from "./channel.ts";
export { fingerprint, generateKeyFile, loadKey, parseKey } from "./keys.ts";
export { AllowList } from "./allow.ts";
export {
  CRYPTO_PROVIDERS,
  type CryptoProvider,
  type CryptoProviderName,
  loadCryptoProvider,
} from "./crypto/select.ts";
export { Logger } from "./log.ts";
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
} from "./errors.ts";
