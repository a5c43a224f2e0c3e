/**
 * Suite 4: faults. The server killed mid-transfer; an upstream that refuses
 * or resets; a lossy, slow network between client and server (namespaces and
 * netem) carrying a large transfer; a black-holed peer that keepalive must
 * detect; SIGTERM during transfers that must lose nothing that finishes
 * within the drain time.
 * @module
 */

import { createHash } from "node:crypto";
import { closeQuietly } from "../../lib/protocol/conn.ts";
import {
  type LogBook,
  MiB,
  mib,
  ms,
  pause,
  pool,
  randomBytes,
  type Row,
  RowBuilder,
  within,
} from "./common.ts";
import { connectLoopback, CountingTarget, drain, echoTarget, LOOPBACK, writeAll } from "./net.ts";
import { CLIENT_NS, createLink, type Link, SERVER_ADDR, SERVER_NS } from "./netns.ts";
import { helperArgv, type Proc, spawn, spawnClient, spawnServer, tail, tempKey } from "./proc.ts";
import type { TempKeyFile } from "../../support/process.ts";

export interface FaultOptions {
  seed: number;
  /** Connections per upstream fault. */
  upstreamConnections: number;
  /** Size of the transfer over the lossy network. */
  lossyBytes: number;
  /** Keepalive interval for the black hole, in seconds. */
  keepalive: number;
  /** Transfers in flight at SIGTERM, and their size. */
  drainTransfers: number;
  drainBytes: number;
  /** --drain-timeout for the SIGTERM fault, in seconds. */
  drainTimeout: number;
  /** Skip the namespace faults (with this note) instead of trying. */
  noNetns?: string;
}

/** How long anything may take to notice a fault before it counts as a hang. */
const NOTICE_MS = 5000;

/** Sends `bytes` and reads the echo back; resolves whether it came back intact. */
async function echoTransfer(conn: Deno.TcpConn, bytes: Uint8Array, firstChunk: number) {
  const sent = createHash("sha256").update(bytes).digest("hex");
  const hash = createHash("sha256");
  let received = 0;
  let firstEcho!: () => void;
  const echoing = new Promise<void>((resolve) => (firstEcho = resolve));
  const reading = (async () => {
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      hash.update(buffer.subarray(0, n));
      received += n;
      if (received >= firstChunk) firstEcho();
    }
    firstEcho();
  })();
  reading.catch(() => firstEcho());
  await writeAll(conn, bytes.subarray(0, firstChunk));
  return {
    /** Resolves once the first chunk has come back. */
    echoing,
    async finish(): Promise<{ intact: boolean; received: number; doneAt: number }> {
      await writeAll(conn, bytes.subarray(firstChunk));
      await conn.closeWrite();
      await reading;
      return {
        intact: received === bytes.byteLength && hash.digest("hex") === sent,
        received,
        doneAt: performance.now(),
      };
    },
  };
}

/**
 * Runs one fault scenario for `row` with a fresh key: `run` starts its
 * processes into `procs`, which are stopped last-first at the end (after
 * `beforeStop`, before `afterStop`); an exception is the row's failure
 * ("stopped: …"), never the suite's.
 */
async function scenario(
  book: LogBook,
  row: RowBuilder,
  run: (key: TempKeyFile, procs: Proc[]) => Promise<void>,
  hooks: { beforeStop?: () => Promise<void>; afterStop?: () => Promise<void> } = {},
): Promise<Row> {
  const key = await tempKey(book);
  const procs: Proc[] = [];
  try {
    await run(key, procs);
  } catch (err) {
    row.fail(`stopped: ${(err as Error).message}`);
  } finally {
    await hooks.beforeStop?.();
    for (const proc of procs.reverse()) await proc.stop();
    await hooks.afterStop?.();
    await key.cleanup();
  }
  return row.done();
}

/** Where a tunnel's two ends run: the server's address and each end's namespace, if any. */
interface Placement {
  serverHost: string;
  serverNs?: string;
  clientNs?: string;
}

/** Both ends on 127.0.0.1. */
const ON_LOOPBACK: Placement = { serverHost: LOOPBACK };
/** The server and the client in the two namespaces of the link (see netns.ts). */
const ACROSS_LINK: Placement = {
  serverHost: SERVER_ADDR,
  serverNs: SERVER_NS,
  clientNs: CLIENT_NS,
};

/**
 * A tunnel placed `at`: a server with `serverArgs` and a --listen client
 * (listening on its own 127.0.0.1) with `clientArgs`, both logging at debug.
 */
async function debugTunnel(
  book: LogBook,
  name: string,
  key: string,
  serverArgs: string[],
  clientArgs: string[],
  at: Placement,
): Promise<{ server: Proc; client: Proc }> {
  const server = await spawnServer(
    book,
    `${name} server`,
    key,
    ["--log-level", "debug", ...serverArgs],
    { ready: true, netns: at.serverNs },
    at.serverHost,
  );
  try {
    const client = await spawnClient(
      book,
      `${name} client`,
      `${at.serverHost}:${server.port}`,
      key,
      ["--listen", `${LOOPBACK}:0`, "--log-level", "debug", ...clientArgs],
      { ready: true, netns: at.clientNs },
    );
    return { server, client };
  } catch (err) {
    await server.stop("SIGKILL");
    throw err;
  }
}

/** {@link debugTunnel} on 127.0.0.1. */
function loopbackTunnel(
  book: LogBook,
  name: string,
  key: string,
  serverArgs: string[],
  clientArgs: string[] = [],
): Promise<{ server: Proc; client: Proc }> {
  return debugTunnel(book, name, key, serverArgs, clientArgs, ON_LOOPBACK);
}

/** The server dies (SIGKILL) while a pipe-mode client and a port forward are moving data. */
async function serverKilled(book: LogBook): Promise<Row> {
  const row = new RowBuilder(
    "faults",
    "server killed (SIGKILL) mid-transfer: pipe client, port forward, new connection",
  );
  const key = await tempKey(book);
  let tunnel: { server: Proc; client: Proc } | null = null;
  let pipe: Proc | null = null;
  try {
    tunnel = await loopbackTunnel(book, "kill", key.path, ["--log-format", "json"]);
    const { server, client } = tunnel;
    pipe = await spawnClient(book, "kill pipe client", `${LOOPBACK}:${server.port}`, key.path, [], {
      stdin: "piped",
      dataStdout: true,
    });
    const piping = pipe;
    const writer = piping.process.stdin.getWriter();
    const feeding = (async () => {
      const chunk = randomBytes(64 * 1024);
      try {
        for (;;) await writer.write(chunk);
      } catch {
        // The client exited: its stdin is closed.
      }
    })();
    const app = await connectLoopback(client.port);
    const appTransfer = await echoTransfer(app, randomBytes(64 * MiB), MiB);
    await within(appTransfer.echoing, 30_000, "the forwarded transfer");
    // Until a MiB has come back through the pipe client (polled: a byte count cannot be awaited).
    const moving = performance.now() + 30_000;
    while (piping.stdoutBytes() < MiB) {
      const exited = await Promise.race([
        piping.exited.then(() => true),
        pause(50).then(() => false),
      ]);
      if (exited) throw new Error(`the pipe client exited early: ${tail(piping.lines)}`);
      if (performance.now() > moving) throw new Error("the pipe client moved no data");
    }
    const killedAt = performance.now();
    await server.stop("SIGKILL");

    row.tried();
    const code = await within(piping.exited, NOTICE_MS, "the pipe client to exit").catch(() =>
      null
    );
    const exitMs = performance.now() - killedAt;
    const errorLine = piping.lines.find((l) => l.startsWith("cipherlink: error: ")) ?? "";
    row.check(code === 1, `the pipe client exited with ${code} (expected 1)`);
    row.check(
      /^cipherlink: error: (stream truncated|server error)/.test(errorLine),
      `not a clear error line: "${errorLine || tail(piping.lines, 3)}"`,
    );
    await feeding;

    row.tried();
    const appEnd = await within(
      appTransfer.finish().catch(() => null),
      NOTICE_MS,
      "the forwarded app",
    )
      .catch(() => "hang" as const);
    const appMs = performance.now() - killedAt;
    row.check(appEnd !== "hang", "the local application's connection did not end");
    row.check(
      appEnd === "hang" || appEnd === null || !appEnd.intact,
      "the cut transfer looked complete",
    );
    closeQuietly(app);

    row.tried();
    const late = await connectLoopback(client.port);
    writeAll(late, new TextEncoder().encode("anyone?")).catch(() => {});
    const lateEnd = await drain(late, NOTICE_MS);
    closeQuietly(late);
    row.check(lateEnd.end !== "bound", "a new local connection was left hanging");
    row.check(
      (await Promise.race([client.exited, Promise.resolve(null)])) === null,
      "the port-forward client exited",
    );
    row.set("pipe_exit_code", code);
    row.set("pipe_exit_ms", Math.round(exitMs));
    row.set("pipe_error", errorLine);
    row.set("app_end_ms", Math.round(appMs));
    row.figures(
      `pipe client exit ${code} after ${ms(exitMs)}: "${errorLine}"; ` +
        `forwarded app cut after ${ms(appMs)}; a new connection closed after ${ms(lateEnd.ms)}`,
    );
  } catch (err) {
    row.fail(`stopped: ${(err as Error).message}`);
  } finally {
    await pipe?.stop("SIGKILL");
    await tunnel?.client.stop();
    await tunnel?.server.stop("SIGKILL");
    await key.cleanup();
  }
  return row.done();
}

/** An upstream that refuses, and one that resets mid-stream: every local connection ends promptly. */
async function upstreamFaults(book: LogBook, options: FaultOptions): Promise<Row> {
  const row = new RowBuilder(
    "faults",
    `upstream refusing (${options.upstreamConnections} connections) and resetting mid-stream (${options.upstreamConnections})`,
  );
  const closed = Deno.listen({ hostname: LOOPBACK, port: 0 });
  const deadPort = closed.addr.port;
  closed.close();
  // Reads a little, then closes with data unread: the kernel answers with RST.
  const resetter = new CountingTarget(async (conn) => {
    await conn.read(new Uint8Array(1024));
    conn.close();
  });
  return await scenario(book, row, async (key, procs) => {
    const server = await spawnServer(book, "upstream server", key.path, [
      "--allow",
      `${LOOPBACK}:*`,
      "--log-level",
      "debug",
    ], { ready: true });
    procs.push(server);
    const clientTo = async (name: string, port: number) => {
      const proc = await spawnClient(book, name, `${LOOPBACK}:${server.port}`, key.path, [
        "--connect",
        `${LOOPBACK}:${port}`,
        "--listen",
        `${LOOPBACK}:0`,
        "--log-level",
        "debug",
      ], { ready: true });
      procs.push(proc);
      return proc;
    };
    const refusing = await clientTo("upstream refused client", deadPort);
    const resetting = await clientTo("upstream reset client", resetter.port);
    let worst = 0;
    for (const [proc, size] of [[refusing, 1000], [resetting, 4 * MiB]] as const) {
      await pool(options.upstreamConnections, 10, async () => {
        row.tried();
        const conn = await connectLoopback(proc.port);
        const sending = writeAll(conn, randomBytes(size)).catch(() => {});
        const result = await drain(conn, NOTICE_MS);
        await sending;
        closeQuietly(conn);
        worst = Math.max(worst, result.ms);
        row.check(result.end !== "bound", `${proc.name}: a local connection hung`);
        row.check(result.bytes === 0, `${proc.name}: ${result.bytes} bytes came back`);
      });
    }
    const refusedLogged = refusing.lines.filter((l) => /server error 3/.test(l)).length;
    row.check(
      refusedLogged >= options.upstreamConnections,
      `the client logged ${refusedLogged} refusals (ERROR 3)`,
    );
    const oddOnes = resetting.lines.filter((l) => /tunnel open failed|unreachable/.test(l)).slice(
      0,
      2,
    );
    row.check(
      resetter.connections === options.upstreamConnections,
      `the resetter saw ${resetter.connections} connections; ${
        oddOnes.join(" / ") || "no failure logged"
      }`,
    );
    row.set("worst_close_ms", Math.round(worst));
    row.figures(
      `every local connection closed ≤ ${
        ms(worst)
      }; ${refusedLogged} refusals reported as ERROR 3; ` +
        `${resetter.connections} resets`,
    );
  }, { afterStop: () => resetter.close() });
}

/** A large transfer across a network that loses 5% of packets and delays each by 50 ms, each way. */
async function lossyTransfer(book: LogBook, link: Link, options: FaultOptions): Promise<Row> {
  const row = new RowBuilder(
    "faults",
    `${
      mib(options.lossyBytes)
    } through the tunnel over 5% loss + 50 ms delay each way (${link.kind})`,
  );
  return await scenario(book, row, async (key, procs) => {
    await link.set({ lossPercent: 5, delayMs: 50 });
    const sink = await spawn(
      book,
      "lossy sink",
      helperArgv("netapp", ["sink", "--listen", `${LOOPBACK}:0`]),
      {
        ready: true,
        netns: SERVER_NS,
      },
    );
    procs.push(sink);
    const tunnel = await debugTunnel(
      book,
      "lossy",
      key.path,
      [
        "--forward",
        `${LOOPBACK}:${sink.port}`,
      ],
      [],
      ACROSS_LINK,
    );
    procs.push(tunnel.server, tunnel.client);
    row.tried();
    const sender = await spawn(
      book,
      "lossy sender",
      helperArgv("netapp", [
        "send",
        "--connect",
        `${LOOPBACK}:${tunnel.client.port}`,
        "--bytes",
        String(options.lossyBytes),
      ]),
      { netns: CLIENT_NS },
    );
    procs.push(sender);
    const line = await sender.waitForLine(/"sent"/, 480_000);
    const result = JSON.parse(line) as { bytes: number; sent: string; answer: string; ms: number };
    row.check(result.bytes === options.lossyBytes, `sent ${result.bytes} bytes`);
    row.check(
      result.answer === result.sent,
      `the far end's SHA-256 differs: ${result.answer.slice(0, 16)}`,
    );
    const rate = result.bytes / MiB / (result.ms / 1000);
    row.set("ms", result.ms);
    row.set("mib_per_s", Math.round(rate * 100) / 100);
    row.set("link", link.kind);
    row.figures(
      `intact (SHA-256 at the far end) in ${(result.ms / 1000).toFixed(1)} s, ${
        rate.toFixed(2)
      } MiB/s`,
    );
  }, { beforeStop: () => link.set({ lossPercent: 0, delayMs: 0 }) });
}

/** The network goes black (100% loss): keepalive on both ends must notice within its three PINGs. */
async function blackHole(book: LogBook, link: Link, options: FaultOptions): Promise<Row> {
  const k = options.keepalive;
  const row = new RowBuilder(
    "faults",
    `black-holed peer (100% loss) with --keepalive ${k} on both ends`,
  );
  return await scenario(book, row, async (key, procs) => {
    const tunnel = await debugTunnel(book, "blackhole", key.path, ["--keepalive", String(k)], [
      "--keepalive",
      String(k),
    ], ACROSS_LINK);
    procs.push(tunnel.server, tunnel.client);
    const app = await spawn(
      book,
      "blackhole app",
      helperArgv("netapp", [
        "hold",
        "--connect",
        `${LOOPBACK}:${tunnel.client.port}`,
      ]),
      { netns: CLIENT_NS },
    );
    procs.push(app);
    await app.waitForLine(/"ready":true/, 30_000);
    row.tried(2);
    const dark = performance.now();
    await link.set({ lossPercent: 100, delayMs: 0 });
    // Silence for one interval, then three unanswered PINGs one interval apart.
    const bound = (4 * k + 1) * 1000 + 2000;
    const seen = async (proc: Proc) => {
      const line = await proc.waitForLine(/session end.*keepalive/, bound).catch(() => null);
      return { line, ms: performance.now() - dark };
    };
    const [server, client] = await Promise.all([seen(tunnel.server), seen(tunnel.client)]);
    const ended = await app.waitForLine(/"ended"/, NOTICE_MS).catch(() => null);
    row.check(server.line !== null, `the server did not notice within ${ms(bound)}`);
    row.check(client.line !== null, `the client did not notice within ${ms(bound)}`);
    row.check(ended !== null, "the local application's connection stayed open");
    const intervals = (t: number) => (t / 1000 / k).toFixed(1);
    row.set("server_detect_ms", Math.round(server.ms));
    row.set("client_detect_ms", Math.round(client.ms));
    row.set("keepalive_s", k);
    row.figures(
      `server noticed after ${ms(server.ms)} (${intervals(server.ms)} intervals), client after ` +
        `${ms(client.ms)} (${
          intervals(client.ms)
        }): 1 silent interval + 3 unanswered PINGs; app connection closed`,
    );
  }, { beforeStop: () => link.set({ lossPercent: 0, delayMs: 0 }) });
}

/** Without namespaces: the client process stopped (SIGSTOP) is the black hole. */
async function stoppedPeer(book: LogBook, options: FaultOptions): Promise<Row> {
  const k = options.keepalive;
  const row = new RowBuilder(
    "faults",
    `peer frozen with SIGSTOP (no namespaces), --keepalive ${k}`,
  );
  return await scenario(book, row, async (key, procs) => {
    const tunnel = await loopbackTunnel(book, "sigstop", key.path, ["--keepalive", String(k)], [
      "--keepalive",
      String(k),
    ]);
    procs.push(tunnel.server, tunnel.client);
    const app = await connectLoopback(tunnel.client.port);
    await writeAll(app, Uint8Array.of(1));
    await app.read(new Uint8Array(1));
    row.tried();
    const frozen = performance.now();
    tunnel.client.process.kill("SIGSTOP");
    const line = await tunnel.server.waitForLine(/session end.*keepalive/, (4 * k + 3) * 1000)
      .catch(() => null);
    const took = performance.now() - frozen;
    tunnel.client.process.kill("SIGCONT");
    closeQuietly(app);
    row.check(line !== null, "the server did not notice");
    row.set("server_detect_ms", Math.round(took));
    row.figures(`server noticed after ${ms(took)} (${(took / 1000 / k).toFixed(1)} intervals)`);
  });
}

/** SIGTERM while transfers run: every one that finishes within the drain time is intact. */
async function drainOnSigterm(book: LogBook, options: FaultOptions): Promise<Row> {
  const row = new RowBuilder(
    "faults",
    `SIGTERM during ${options.drainTransfers} transfers of ${
      mib(options.drainBytes)
    } (+1 idle session), --drain-timeout ${options.drainTimeout}`,
  );
  const key = await tempKey(book);
  const echo = echoTarget();
  let tunnel: { server: Proc; client: Proc } | null = null;
  try {
    tunnel = await loopbackTunnel(book, "drain", key.path, [
      "--forward",
      `${LOOPBACK}:${echo.port}`,
      "--drain-timeout",
      String(options.drainTimeout),
    ]);
    const { server, client } = tunnel;
    const conns: Deno.TcpConn[] = [];
    const transfers = await Promise.all(Array.from({ length: options.drainTransfers }, async () => {
      const conn = await connectLoopback(client.port);
      conns.push(conn);
      const transfer = await echoTransfer(conn, randomBytes(options.drainBytes), 256 * 1024);
      await within(transfer.echoing, 30_000, "a transfer to start");
      return transfer;
    }));
    const idle = await connectLoopback(client.port);
    conns.push(idle);
    await writeAll(idle, Uint8Array.of(1));
    await idle.read(new Uint8Array(1));
    const termAt = performance.now();
    server.process.kill("SIGTERM");
    const drainMs = options.drainTimeout * 1000;
    const idleEnd = drain(idle, drainMs + NOTICE_MS);
    const results = await Promise.all(transfers.map((t) => t.finish().catch(() => null)));
    const code = await within(server.exited, drainMs + NOTICE_MS, "the server to exit").catch(() =>
      null
    );
    const exitMs = performance.now() - termAt;
    const idleResult = await idleEnd;
    for (const conn of conns) closeQuietly(conn);
    let intact = 0;
    let slowest = 0;
    for (const result of results) {
      row.tried();
      const within = result !== null && result.doneAt - termAt < drainMs;
      if (result?.intact) {
        intact++;
        slowest = Math.max(slowest, result.doneAt - termAt);
      } else if (within || result === null) {
        row.fail(
          `a transfer lost bytes (${result?.received ?? 0} of ${options.drainBytes} came back)`,
        );
      }
    }
    row.tried();
    row.check(idleResult.end !== "bound", "the idle session was not ended at the drain timeout");
    row.check(
      idleResult.ms >= drainMs - 500 && idleResult.ms <= drainMs + 3000,
      `the idle session ended after ${ms(idleResult.ms)}, not at the drain timeout (${drainMs} ms)`,
    );
    row.check(code === 0, `the server exited with ${code}`);
    row.check(exitMs <= drainMs + 3000, `the server took ${ms(exitMs)} to exit`);
    const told = await client.waitForLine(/server error 6/, NOTICE_MS).catch(() => null);
    row.check(told !== null, "the client was not told (ERROR 6) why the idle session ended");
    row.set("intact", intact);
    row.set("slowest_ms", Math.round(slowest));
    row.set("idle_cut_ms", Math.round(idleResult.ms));
    row.set("exit_code", code);
    row.set("exit_ms", Math.round(exitMs));
    row.figures(
      `${intact} of ${results.length} intact, the last ${
        ms(slowest)
      } after SIGTERM; idle session ` +
        `ended with ERROR 6 at ${ms(idleResult.ms)}; server exit ${code} after ${ms(exitMs)}`,
    );
  } catch (err) {
    row.fail(`stopped: ${(err as Error).message}`);
  } finally {
    await tunnel?.client.stop();
    await tunnel?.server.stop();
    await echo.close();
    await key.cleanup();
  }
  return row.done();
}

/** Runs every fault; one row each. */
export async function faults(book: LogBook, options: FaultOptions): Promise<Row[]> {
  const rows: Row[] = [];
  rows.push(await serverKilled(book));
  rows.push(await upstreamFaults(book, options));
  rows.push(await drainOnSigterm(book, options));
  let link: Link | null = null;
  let why = options.noNetns ?? null;
  if (!why) {
    try {
      link = await createLink(options.seed);
    } catch (err) {
      why = `network namespaces unavailable here (${(err as Error).message.split("\n")[0]})`;
    }
  }
  if (link) {
    try {
      rows.push(await lossyTransfer(book, link, options));
      rows.push(await blackHole(book, link, options));
    } finally {
      await link.close();
    }
  } else {
    const skipped = new RowBuilder(
      "faults",
      "lossy network (5% loss, 50 ms) and black hole in namespaces",
    );
    skipped.skip(why!);
    rows.push(skipped.done());
    rows.push(await stoppedPeer(book, options));
  }
  return rows;
}
