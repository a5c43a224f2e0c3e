/**
 * A crypto provider's own ceiling on this machine: AES-256-GCM seal and
 * open of full data-path frames in one process, with as many calls in
 * flight as the data path allows (MAX_FRAMES_IN_FLIGHT), so the tunnel's
 * throughput can be read as a fraction of what its crypto alone could do.
 * @module
 */

import { MAX_PLAINTEXT_SIZE, TAG_SIZE } from "../../lib/protocol/frame.ts";
import { CipherState } from "../../lib/protocol/noise.ts";
import { MAX_FRAMES_IN_FLIGHT } from "../../lib/tunnel/session.ts";
import type { CryptoProvider } from "../../lib/protocol/crypto/provider.ts";

/** What one ceiling run measured. */
export interface CeilingRun {
  /** Plaintext MB (10^6 B) per second, each byte sealed once and opened once. */
  sealOpenMBps: number;
  frameBytes: number;
  depth: number;
}

/**
 * Seals and opens `MAX_PLAINTEXT_SIZE`-byte frames for `seconds`, `depth`
 * chains at a time (each chain: seal, then open what it sealed).
 */
export async function measureCeiling(
  seconds: number,
  provider?: CryptoProvider,
  depth = MAX_FRAMES_IN_FLIGHT,
): Promise<CeilingRun> {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const sender = CipherState.fromKey(key, provider);
  const receiver = CipherState.fromKey(key, provider);
  const plaintext = crypto.getRandomValues(new Uint8Array(MAX_PLAINTEXT_SIZE));
  const ad = new Uint8Array(9);
  // Warm up (key import, JIT) outside the clock.
  const n0 = sender.claimNonce();
  await receiver.decryptAt(n0, ad, await sender.encryptAt(n0, ad, plaintext));
  let frames = 0;
  const started = performance.now();
  const until = started + seconds * 1000;
  const chain = async () => {
    while (performance.now() < until) {
      const n = sender.claimNonce();
      const sealed = await sender.encryptAt(n, ad, plaintext);
      if (sealed.byteLength !== MAX_PLAINTEXT_SIZE + TAG_SIZE) throw new Error("bad seal");
      await receiver.decryptAt(n, ad, sealed);
      frames++;
    }
  };
  await Promise.all(Array.from({ length: depth }, chain));
  const elapsed = (performance.now() - started) / 1000;
  sender.dispose();
  receiver.dispose();
  return {
    sealOpenMBps: (frames * MAX_PLAINTEXT_SIZE) / elapsed / 1e6,
    frameBytes: MAX_PLAINTEXT_SIZE,
    depth,
  };
}
