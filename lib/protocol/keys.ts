/**
 * The pre-shared key: reading key files in their three formats, writing new
 * ones, and the fingerprint that names a key without revealing it.
 *
 * @example
 * ```ts
 * import { generateKeyFile, loadKey, fingerprint } from "./keys.ts";
 * await generateKeyFile("keys/shared_key.key", "raw", false);
 * const { key, warning } = await loadKey("keys/shared_key.key");
 * console.log(await fingerprint(key)); // SHA256:…
 * ```
 * @module
 */

import { KeyFileError } from "../base/errors.ts";

/** Key length in bytes. */
export const KEY_SIZE = 32;
/** Where the key lives unless told otherwise (the Python prototype's path). */
export const DEFAULT_KEY_PATH = "keys/shared_key.key";
/** The file formats a key can be written in. */
export type KeyFormat = "raw" | "hex" | "base64";
export const KEY_FORMATS: readonly KeyFormat[] = ["raw", "hex", "base64"];
/** Key files are never larger than this; anything bigger is rejected unread. */
const MAX_KEY_FILE_SIZE = 128;

const ACCEPTED =
  "a key file holds 32 raw bytes, 64 hex characters, or the base64 of 32 bytes, optionally followed by a newline";

/** A loaded key and, when the file is readable by others, a warning line. */
export interface LoadedKey {
  key: Uint8Array;
  warning: string | null;
}

/**
 * Reads and parses a key file. Throws {@linkcode KeyFileError} with one line
 * that names the file and says how to make one; `program` is how the user
 * runs Cipherlink (`./cipherlink` from a checkout), for that hint.
 */
export async function loadKey(path: string, program = "cipherlink"): Promise<LoadedKey> {
  const howToCreate = (file: string) => `create one with: ${program} keygen --out ${file}`;
  let info: Deno.FileInfo;
  let bytes: Uint8Array;
  try {
    info = await Deno.stat(path);
    if (info.isDirectory) {
      // keygen cannot write a file where a folder is: suggest a file inside it.
      const inside = `${path.replace(/\/+$/, "")}/${DEFAULT_KEY_PATH.split("/").pop()}`;
      throw new KeyFileError(
        `key file ${path} is a directory; give the key file's path, or ${howToCreate(inside)}`,
      );
    }
    if (!info.isFile) {
      throw new KeyFileError(
        `key file ${path} is not a regular file; ${howToCreate(path)}`,
      );
    }
    if (info.size > MAX_KEY_FILE_SIZE) {
      throw new KeyFileError(
        `key file ${path} is malformed (${info.size} bytes): ${ACCEPTED}`,
      );
    }
    bytes = await Deno.readFile(path);
  } catch (err) {
    if (err instanceof KeyFileError) throw err;
    if (err instanceof Deno.errors.NotFound) {
      throw new KeyFileError(
        `key file ${path} does not exist; ${howToCreate(path)}`,
      );
    }
    if (err instanceof Deno.errors.PermissionDenied) {
      throw new KeyFileError(
        `key file ${path} cannot be read (permission denied)`,
      );
    }
    throw new KeyFileError(
      `key file ${path} cannot be read: ${(err as Error).message}`,
    );
  }
  const key = parseKey(bytes);
  // parseKey made its own copy: the file's bytes (raw, hex or base64 of the key) go now.
  bytes.fill(0);
  if (!key) {
    throw new KeyFileError(`key file ${path} is malformed: ${ACCEPTED}`);
  }
  const mode = info.mode ?? 0;
  const warning = (mode & 0o077) !== 0
    ? `key file ${path} is readable by group or others (mode ${
      (mode & 0o777).toString(8)
    }); run: chmod 600 ${path}`
    : null;
  return { key, warning };
}

/**
 * Parses key file contents: 32 raw bytes, 64 hex characters or base64 of 32
 * bytes, each optionally followed by one newline. Returns null otherwise.
 *
 * @example
 * ```ts
 * parseKey(new TextEncoder().encode("00".repeat(32) + "\n"))?.length; // 32
 * ```
 */
export function parseKey(bytes: Uint8Array): Uint8Array | null {
  if (bytes.byteLength === KEY_SIZE) return bytes.slice();
  // Raw key + "\n" first: a key whose last byte is 0x0d must not lose it as a "\r".
  if (bytes.byteLength === KEY_SIZE + 1 && bytes[KEY_SIZE] === 0x0a) {
    return bytes.slice(0, KEY_SIZE);
  }
  const body = stripNewline(bytes);
  if (body.byteLength === KEY_SIZE && body.byteLength !== bytes.byteLength) {
    return body.slice();
  }
  const text = new TextDecoder().decode(body);
  if (/^[0-9a-fA-F]{64}$/.test(text)) {
    return Uint8Array.from(text.match(/../g)!, (h) => parseInt(h, 16));
  }
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const decoded = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    if (decoded.byteLength === KEY_SIZE) return decoded;
  }
  return null;
}

function stripNewline(bytes: Uint8Array): Uint8Array {
  let end = bytes.byteLength;
  if (bytes[end - 1] === 0x0a) end--;
  if (end < bytes.byteLength && bytes[end - 1] === 0x0d) end--;
  return bytes.subarray(0, end);
}

/** Encodes a key for a file in `format`. */
export function encodeKey(key: Uint8Array, format: KeyFormat): Uint8Array {
  switch (format) {
    case "raw":
      return key.slice();
    case "hex":
      return new TextEncoder().encode(
        Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("") + "\n",
      );
    case "base64":
      return new TextEncoder().encode(btoa(String.fromCharCode(...key)) + "\n");
  }
}

/**
 * `SHA256:` + base64 of the first 12 bytes of SHA-256(key): names a key in
 * logs and output without revealing it.
 */
export async function fingerprint(key: Uint8Array): Promise<string> {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", key as BufferSource),
  );
  return "SHA256:" + btoa(String.fromCharCode(...digest.subarray(0, 12)));
}

/**
 * Writes a fresh key from the system CSPRNG to `path` with mode 0600,
 * creating parent folders. Refuses to overwrite unless `force`.
 */
export async function generateKeyFile(
  path: string,
  format: KeyFormat,
  force: boolean,
): Promise<{ fingerprint: string }> {
  const key = crypto.getRandomValues(new Uint8Array(KEY_SIZE));
  const write = () =>
    Deno.writeFile(path, encodeKey(key, format), { mode: 0o600, createNew: !force });
  try {
    try {
      await write();
    } catch (err) {
      // Create the folders only when they are missing: the launcher lets keygen
      // write the key file alone when its folder exists.
      const slash = path.lastIndexOf("/");
      if (!(err instanceof Deno.errors.NotFound) || slash <= 0) throw err;
      await Deno.mkdir(path.slice(0, slash), { recursive: true });
      await write();
    }
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      throw new KeyFileError(
        `${path} already exists; pass --force to overwrite it`,
      );
    }
    throw new KeyFileError(`cannot write ${path}: ${(err as Error).message}`);
  }
  // writeFile's mode applies only to new files; an overwritten one keeps its old mode.
  await Deno.chmod(path, 0o600);
  return { fingerprint: await fingerprint(key) };
}
