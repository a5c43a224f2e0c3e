/**
 * Scale-out behind a real HAProxy: two `cipherlink server` processes behind
 * HAProxy running deploy/haproxy.cfg's defaults, frontend and backend (only
 * the addresses and the global section are the test's), a `cipherlink client
 * --listen` forwarding to the HAProxy frontend, and hashed echo sessions at
 * 20 at a time while each server is restarted once (SIGTERM, wait for exit,
 * start, wait until HAProxy reports it UP). Not one session may be lost or
 * corrupted, and both servers must have carried sessions.
 *
 * CIPHERLINK_HAPROXY_RUNS=5 repeats the whole scenario (fresh processes each
 * time) and CIPHERLINK_HAPROXY_SESSIONS sets the sessions per run (default
 * 400); each run prints one `haproxy run` JSON line with its numbers.
 * Skipped, saying so, where no haproxy executable is found.
 * @module
 */

import assert from "node:assert/strict";
import { closeQuietly, writeAll } from "../lib/protocol/conn.ts";
import { randomBytes, sha256Hex } from "./helpers.ts";
import { type Daemon, freePort, runArgv, startDaemon, tempKey } from "./process.ts";

const DEPLOY_CONFIG = new URL("../deploy/haproxy.cfg", import.meta.url).pathname;
const SESSION_BYTES = 256 * 1024;
const CONCURRENCY = 20;
/** Bound on one session, so a stuck one fails the run instead of hanging it. */
const SESSION_BOUND_MS = 60_000;
/** Bound on waiting for HAProxy to see a server change state. */
const STATE_BOUND_MS = 15_000;

function envNumber(name: string, fallback: number): number {
  const text = Deno.env.get(name);
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer`);
  return value;
}

/** The haproxy executable: PATH first, then Debian's /usr/sbin (not on every PATH). */
function findHaproxy(): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/usr/local/sbin"];
  for (const dir of dirs.filter((d) => d !== "")) {
    try {
      const path = `${dir}/haproxy`;
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not here
    }
  }
  return null;
}

/**
 * deploy/haproxy.cfg with the test's addresses: its defaults, frontend and
 * backend sections as they are (timeouts, retries, redispatch, checks),
 * `bind` on the test's port, one `server` line per test server (tunnel port
 * and --metrics port), and a global section with only a stats socket.
 */
export function haproxyConfigFor(
  deployText: string,
  frontendPort: number,
  servers: { name: string; port: number; metricsPort: number }[],
  statsSocket: string,
): string {
  const out = [
    "global",
    "    maxconn 2000",
    `    stats socket ${statsSocket} mode 600 level admin`,
  ];
  let section = "";
  let bound = false;
  let serversWritten = false;
  for (const line of deployText.split("\n")) {
    const header = /^(\w+)\b/.exec(line);
    if (header) section = header[1];
    if (section === "global") continue;
    const directive = line.trim();
    if (directive.startsWith("bind ")) {
      out.push(`    bind 127.0.0.1:${frontendPort}`);
      bound = true;
    } else if (directive.startsWith("server ")) {
      if (serversWritten) continue;
      for (const s of servers) {
        out.push(`    server ${s.name} 127.0.0.1:${s.port} port ${s.metricsPort}`);
      }
      serversWritten = true;
    } else {
      out.push(line);
    }
  }
  assert.ok(bound && serversWritten, "deploy/haproxy.cfg has no bind or server line");
  return out.join("\n") + "\n";
}

/** HAProxy's view of each server of the backend: true when UP. */
async function serverStates(socket: string): Promise<Map<string, boolean>> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    await writeAll(conn, new TextEncoder().encode("show servers state cipherlink\n"));
    let text = "";
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const states = new Map<string, boolean>();
    for (const line of text.split("\n")) {
      const fields = line.trim().split(/\s+/);
      // be_id be_name srv_id srv_name srv_addr srv_op_state …; op state 2 is RUNNING.
      if (fields.length > 6 && fields[1] === "cipherlink") states.set(fields[3], fields[5] === "2");
    }
    return states;
  } finally {
    closeQuietly(conn);
  }
}

/** Polls HAProxy's stats socket until `name` is UP (`up`) or not; fails after a bound. */
async function waitForState(socket: string, name: string, up: boolean): Promise<void> {
  const deadline = performance.now() + STATE_BOUND_MS;
  let last: Map<string, boolean> | string = "no answer yet";
  while (performance.now() < deadline) {
    try {
      last = await serverStates(socket);
      if (last.get(name) === up) return;
    } catch (err) {
      last = (err as Error).message; // the socket is not there yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    `HAProxy did not report ${name} ${up ? "UP" : "DOWN"} within ${STATE_BOUND_MS} ms: ${
      typeof last === "string" ? last : JSON.stringify([...last])
    }`,
  );
}

type Outcome = "ok" | "lost" | "corrupted";

/** One session through the client's forward: send the bytes, half-close, hash the echo. */
async function hashedSession(port: number, payload: Uint8Array): Promise<Outcome> {
  const want = await sha256Hex(payload);
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
  } catch {
    return "lost";
  }
  const timer = setTimeout(() => closeQuietly(conn), SESSION_BOUND_MS);
  try {
    const sending = (async () => {
      await writeAll(conn, payload);
      await conn.closeWrite();
    })();
    sending.catch(() => {});
    const received = new Uint8Array(SESSION_BYTES + 1);
    let got = 0;
    for (;;) {
      const n = await conn.read(received.subarray(got, Math.min(got + 65536, received.length)));
      if (n === null) break;
      got += n;
      if (got > SESSION_BYTES) return "corrupted";
    }
    await sending;
    if (got < SESSION_BYTES) return "lost";
    return await sha256Hex(received.subarray(0, got)) === want ? "ok" : "corrupted";
  } catch {
    return "lost";
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

interface RunResult {
  sessions: number;
  lost: number;
  corrupted: number;
  /** "session open" lines per server, over both of its processes. */
  perServer: Record<string, number>;
  /** Per restart: sessions in flight at SIGTERM and the server's own drain counts. */
  restarts: { server: string; inFlight: number; stopped: string; downtimeMs: number }[];
  seconds: number;
}

interface ServerSlot {
  name: string;
  port: number;
  metricsPort: number;
  daemon: Daemon;
  /** Every log line of the earlier processes of this slot. */
  earlier: string[];
}

async function startServerProcess(keyPath: string, port = 0, metricsPort = 0): Promise<Daemon> {
  return await startDaemon([
    "server",
    "--key",
    keyPath,
    "--listen",
    `127.0.0.1:${port}`,
    "--metrics",
    `127.0.0.1:${metricsPort}`,
  ]);
}

/** The whole scenario once: fresh servers, HAProxy and client; every process ended after. */
async function rollingRestart(haproxy: string, minSessions: number): Promise<RunResult> {
  const key = await tempKey();
  const slots: ServerSlot[] = [];
  let balancer: Deno.ChildProcess | null = null;
  const balancerOutput: string[] = [];
  let client: Daemon | null = null;
  const started = performance.now();
  try {
    for (const name of ["cipherlink1", "cipherlink2"]) {
      const daemon = await startServerProcess(key.path);
      const metrics = await daemon.waitForLine(/metrics on /);
      const metricsPort = Number(/metrics on http:\/\/\S*:(\d+)\//.exec(metrics)![1]);
      slots.push({ name, port: daemon.port, metricsPort, daemon, earlier: [] });
    }
    const socket = `${key.dir}/haproxy.sock`;
    const frontendPort = freePort();
    const configPath = `${key.dir}/haproxy.cfg`;
    await Deno.writeTextFile(
      configPath,
      haproxyConfigFor(await Deno.readTextFile(DEPLOY_CONFIG), frontendPort, slots, socket),
    );
    balancer = new Deno.Command(haproxy, {
      args: ["-db", "-f", configPath],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const collect = async (stream: ReadableStream<Uint8Array>) => {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) {
        balancerOutput.push(text);
      }
    };
    const balancerLogs = Promise.all([collect(balancer.stdout), collect(balancer.stderr)]);
    balancerLogs.catch(() => {});
    for (const slot of slots) await waitForState(socket, slot.name, true);

    client = await startDaemon([
      "client",
      "--key",
      key.path,
      "--server",
      `127.0.0.1:${frontendPort}`,
      "--listen",
      "127.0.0.1:0",
    ]);
    const clientPort = client.port;

    // One random pool; each session sends the 256 KiB at its own offset, so
    // no two sessions send the same bytes and a mix-up shows in the hash.
    const pool = randomBytes(4 * SESSION_BYTES);
    const payloadFor = (i: number) => {
      const offset = (i * 7919) % (pool.length - SESSION_BYTES);
      return pool.subarray(offset, offset + SESSION_BYTES);
    };
    const counts: Record<Outcome, number> = { ok: 0, lost: 0, corrupted: 0 };
    const finished = () => counts.ok + counts.lost + counts.corrupted;
    /** Restart marks waiting for that many finished sessions. */
    const marks: { count: number; reached: () => void }[] = [];
    const reached = (count: number) =>
      new Promise<void>((resolve) => {
        if (finished() >= count) resolve();
        else marks.push({ count, reached: resolve });
      });
    let next = 0;
    let inFlight = 0;
    let restartsDone = false;
    const restarts: RunResult["restarts"] = [];
    const worker = async () => {
      while (next < minSessions || !restartsDone) {
        const i = next++;
        inFlight++;
        const outcome = await hashedSession(clientPort, payloadFor(i));
        inFlight--;
        counts[outcome]++;
        for (const mark of marks.filter((m) => finished() >= m.count)) {
          marks.splice(marks.indexOf(mark), 1);
          mark.reached();
        }
      }
    };
    const load = Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const restarter = (async () => {
      try {
        for (const [index, slot] of slots.entries()) {
          // Restart once a fifth (then two fifths) of the sessions are done, under full load.
          // (Sessions are bounded by SESSION_BOUND_MS each, so the count keeps moving.)
          await reached(Math.floor((minSessions * (index + 1)) / 5));
          const at = inFlight;
          const t0 = performance.now();
          const code = await slot.daemon.stop("SIGTERM");
          assert.equal(
            code,
            0,
            `${slot.name} exited with ${code}:\n${slot.daemon.lines.join("\n")}`,
          );
          const stopped = slot.daemon.lines.find((l) => / stopped sessions_drained=/.test(l)) ??
            "no stopped line";
          slot.earlier.push(...slot.daemon.lines);
          slot.daemon = await startServerProcess(key.path, slot.port, slot.metricsPort);
          await slot.daemon.waitForLine(/metrics on /);
          await waitForState(socket, slot.name, true);
          restarts.push({
            server: slot.name,
            inFlight: at,
            stopped,
            downtimeMs: Math.round(performance.now() - t0),
          });
        }
      } finally {
        restartsDone = true;
      }
    })();
    await Promise.all([load, restarter]);
    const perServer: Record<string, number> = {};
    for (const slot of slots) {
      perServer[slot.name] = [...slot.earlier, ...slot.daemon.lines]
        .filter((l) => /session open/.test(l)).length;
    }
    return {
      sessions: next,
      lost: counts.lost,
      corrupted: counts.corrupted,
      perServer,
      restarts,
      seconds: Math.round((performance.now() - started) / 100) / 10,
    };
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\nHAProxy said:\n${balancerOutput.join("")}`,
      { cause: err },
    );
  } finally {
    await client?.stop();
    for (const slot of slots) await slot.daemon.stop();
    if (balancer) {
      try {
        balancer.kill("SIGTERM");
      } catch {
        // already gone
      }
      await balancer.status;
    }
    await key.cleanup();
  }
}

const HAPROXY = findHaproxy();
if (HAPROXY === null) {
  console.warn(
    "haproxy_test: SKIPPED: no haproxy executable in PATH, /usr/sbin or /usr/local/sbin " +
      "(Debian: apt-get install haproxy; .ci/run installs it)",
  );
}

Deno.test({
  name:
    "haproxy: deploy/haproxy.cfg is valid for haproxy -c and has the settings the README describes",
  ignore: HAPROXY === null,
  fn: async () => {
    const text = await Deno.readTextFile(DEPLOY_CONFIG);
    const directives = text.split("\n").map((l) =>
      l.replace(/#.*/, "").trim().replace(/\s+/g, " ")
    );
    for (
      const wanted of [
        "mode tcp",
        "retries 3",
        "option redispatch 1",
        "timeout client 1h",
        "timeout server 1h",
        "option httpchk GET /healthz",
        "http-check expect status 200",
        "default-server check inter 200ms fall 1 rise 2 port 9108",
      ]
    ) {
      assert.ok(directives.includes(wanted), `deploy/haproxy.cfg lacks "${wanted}"`);
    }
    const check = await runArgv([HAPROXY!, "-c", "-f", DEPLOY_CONFIG]);
    assert.equal(check.code, 0, check.stdout + check.stderr);
  },
});

Deno.test({
  name:
    "haproxy: each server restarted once under load behind HAProxy; 0 sessions lost or corrupted",
  ignore: HAPROXY === null,
  fn: async () => {
    const runs = envNumber("CIPHERLINK_HAPROXY_RUNS", 1);
    const minSessions = envNumber("CIPHERLINK_HAPROXY_SESSIONS", 400);
    const results: RunResult[] = [];
    for (let run = 1; run <= runs; run++) {
      const result = await rollingRestart(HAPROXY!, minSessions);
      results.push(result);
      console.log(`haproxy run ${run}/${runs} ${JSON.stringify(result)}`);
    }
    for (const [i, result] of results.entries()) {
      const run = `run ${i + 1}: ${JSON.stringify(result)}`;
      assert.ok(result.sessions >= minSessions, run);
      assert.equal(result.lost, 0, `sessions lost in ${run}`);
      assert.equal(result.corrupted, 0, `sessions corrupted in ${run}`);
      for (const [name, count] of Object.entries(result.perServer)) {
        assert.ok(count > 0, `${name} carried no session in ${run}`);
      }
      assert.equal(result.restarts.length, 2, run);
      for (const restart of result.restarts) {
        assert.ok(restart.inFlight > 0, `${restart.server} was not restarted under load: ${run}`);
        // The drain served everything it accepted: nothing ended by its deadline.
        assert.match(restart.stopped, /sessions_aborted=0/, run);
        assert.match(restart.stopped, /connections_refused=0/, run);
      }
    }
  },
});
