/**
 * An in-process TunnelServer on 127.0.0.1 with a fresh key and a captured
 * log, a recording forward target, and a recording (optionally tampering)
 * relay, for tests that drive the protocol by hand. Tests await log lines
 * (bounded, so a missing line fails instead of hanging), never sleep.
 * @module
 */

import { closeQuietly, writeAll } from "../lib/protocol/conn.ts";
import { Logger } from "../lib/base/log.ts";
import { type ServerOptions, TunnelServer } from "../lib/tunnel/server.ts";
import type { HostPort } from "../lib/protocol/hostport.ts";
import { randomBytes } from "./helpers.ts";
import { LineLog } from "./process.ts";

const LOCAL = "127.0.0.1";

/**
 * Collects a logger's lines (at the server's default level); tests await the
 * lines they expect, each within 5 s unless they name their own bound.
 */
export class LogCapture extends LineLog {
  readonly logger: Logger;

  constructor() {
    super(null, 5000);
    this.logger = new Logger("info", "text", (line) => this.add(line));
  }
}

/** A started in-process server and what a test needs to reach it. */
export interface Fixture {
  server: TunnelServer;
  log: LogCapture;
  key: Uint8Array;
  address: HostPort;
}

/** A TunnelServer on 127.0.0.1 (with a fresh key unless given), once it logged `listening on`. */
export async function startServer(
  options: Omit<ServerOptions, "listen" | "key"> = {},
  key: Uint8Array = randomBytes(32),
): Promise<Fixture> {
  const log = new LogCapture();
  const server = await TunnelServer.start({
    listen: { host: LOCAL, port: 0 },
    key,
    logger: log.logger,
    ...options,
  });
  await log.waitFor(/listening on /);
  return { server, log, key, address: { host: LOCAL, port: server.addr.port } };
}

/**
 * A listener on 127.0.0.1 that hands every connection to `serve`; `idle()`
 * awaits the connections so far, `close()` stops accepting and awaits them.
 */
abstract class LoopbackService {
  readonly #listener = Deno.listen({ hostname: LOCAL, port: 0 });
  readonly #served: Promise<void>[] = [];
  // Accepting starts at once; the first serve() call waits for a connection,
  // so it always runs after the subclass's constructor.
  readonly #accepting: Promise<void> = this.#accept();

  get address(): HostPort {
    return { host: LOCAL, port: this.#listener.addr.port };
  }

  /** Resolves once every connection so far has ended. */
  async idle(): Promise<void> {
    await Promise.all(this.#served);
  }

  async close(): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    this.closing();
    await this.idle();
  }

  /** Serves one accepted connection to its end. */
  protected abstract serve(conn: Deno.TcpConn): Promise<void>;

  /** Called once the listener is closed, before the connections are awaited. */
  protected closing(): void {}

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // closed
      }
      this.#served.push(this.serve(conn));
    }
  }
}

/**
 * A forward target on 127.0.0.1 that records what each connection sent and
 * echoes it back, or stays silent (answers nothing, waits for EOF).
 */
export class Upstream extends LoopbackService {
  readonly received: Uint8Array[][] = [];
  readonly #echo: boolean;
  readonly #open = new Set<Deno.TcpConn>();

  constructor(mode: "echo" | "silent" = "echo") {
    super();
    this.#echo = mode === "echo";
  }

  /** Connections still open are cut: a silent target would otherwise wait forever. */
  protected override closing(): void {
    for (const conn of this.#open) closeQuietly(conn);
  }

  protected serve(conn: Deno.TcpConn): Promise<void> {
    const chunks: Uint8Array[] = [];
    this.received.push(chunks);
    this.#open.add(conn);
    return this.#serve(conn, chunks);
  }

  async #serve(conn: Deno.TcpConn, chunks: Uint8Array[]): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        chunks.push(buffer.slice(0, n));
        if (this.#echo) await writeAll(conn, buffer.subarray(0, n));
      }
      await conn.closeWrite();
    } catch {
      // Reset or closed by close(): the connection is over either way.
    } finally {
      this.#open.delete(conn);
      closeQuietly(conn);
    }
  }
}

/** One byte a {@link Relay} changes in flight: its direction ("up" is client to server), offset and XOR mask. */
export interface Flip {
  direction: "up" | "down";
  offset: number;
  mask: number;
}

/** Copies `from` to `to`, XORing the byte at `flip` (if any), records what it passed on, then half-closes. */
async function relayOneWay(
  from: Deno.TcpConn,
  to: Deno.TcpConn,
  record: Uint8Array[],
  flip: { offset: number; mask: number } | null,
): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  let passed = 0;
  try {
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      const chunk = buffer.slice(0, n);
      if (flip !== null && flip.offset >= passed && flip.offset < passed + n) {
        chunk[flip.offset - passed] ^= flip.mask;
      }
      passed += n;
      record.push(chunk);
      await writeAll(to, chunk);
    }
    await to.closeWrite();
  } catch {
    closeQuietly(from);
    closeQuietly(to);
  }
}

/**
 * A TCP relay on 127.0.0.1 in front of `targetPort`: records both directions
 * of every connection it carries, and may change one byte in flight.
 */
export class Relay extends LoopbackService {
  readonly recordings: { up: Uint8Array[]; down: Uint8Array[] }[] = [];
  readonly #targetPort: number;
  readonly #flip: Flip | null;

  constructor(targetPort: number, flip: Flip | null = null) {
    super();
    this.#targetPort = targetPort;
    this.#flip = flip;
  }

  protected serve(client: Deno.TcpConn): Promise<void> {
    const recording = { up: [], down: [] };
    this.recordings.push(recording);
    return this.#relay(client, recording);
  }

  async #relay(client: Deno.TcpConn, recording: { up: Uint8Array[]; down: Uint8Array[] }) {
    const server = await Deno.connect({ hostname: LOCAL, port: this.#targetPort });
    const flipIn = (direction: Flip["direction"]) =>
      this.#flip?.direction === direction ? this.#flip : null;
    await Promise.all([
      relayOneWay(client, server, recording.up, flipIn("up")),
      relayOneWay(server, client, recording.down, flipIn("down")),
    ]);
    closeQuietly(client);
    closeQuietly(server);
  }
}
