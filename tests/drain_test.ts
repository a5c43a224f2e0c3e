/**
 * The drain order on shutdown (issue 10): /healthz turns 503 at once, the
 * listener keeps accepting for the drain delay, every connection accepted
 * before it closes is served to its end (handshake included) within the
 * drain timeout, a second signal ends at once; the drain's metrics; the
 * option and the config key. In-process servers and forwarders over real
 * TCP, and the CLI as a real process for the signals.
 * @module
 */

import assert from "node:assert/strict";
import { SecureChannel } from "../lib/protocol/channel.ts";
import { connect, forward } from "../lib/tunnel/client.ts";
import { closeQuietly } from "../lib/protocol/conn.ts";
import { parseConfig } from "../lib/ops/config.ts";
import { DEFAULT_DRAIN_DELAY_SECONDS, drainDelayFor } from "../lib/tunnel/drain.ts";
import { ErrorCode, RemoteError } from "../lib/base/errors.ts";
import { LocalForwarder } from "../lib/tunnel/forwarder.ts";
import { Session } from "../lib/tunnel/session.ts";
import { renderMetrics } from "../lib/ops/prometheus.ts";
import type { TunnelStats } from "../lib/tunnel/stats.ts";
import { Supervisor } from "../lib/ops/supervisor.ts";
import { SERVICE_TARGET } from "../lib/protocol/target.ts";
import { randomBytes } from "./helpers.ts";
import {
  promtoolCheck,
  runCipherlink,
  startDaemon,
  tempKey,
  waitForLineWithin,
  within,
} from "./process.ts";
import { LogCapture, startServer } from "./server_fixture.ts";

const LOCAL = "127.0.0.1";
const encoder = new TextEncoder();

/** Resolves once `condition()` holds; fails with `what` after `ms` (a bound, not a pacing). */
async function until(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function sample(stats: TunnelStats, series: string): number {
  const body = renderMetrics([{ stats, labels: { role: "server" } }]);
  const line = body.split("\n").find((l) => l.startsWith(series + " "));
  assert.ok(line, `no sample ${series} in:\n${body}`);
  return Number(line.slice(series.length + 1));
}

Deno.test("drain: the listener keeps accepting during the drain delay and serves what it accepts", async () => {
  const { server, key, address } = await startServer({
    drainDelayMs: 30_000,
    drainTimeoutMs: 30_000,
  });
  const stopping = server.shutdown();
  try {
    assert.equal(server.draining, true, "draining (/healthz 503) from the first moment");
    // A whole session, handshake included, accepted after the drain began.
    const payload = randomBytes(100_000);
    assert.deepEqual(await forward(payload, { server: address, key }), payload);
    assert.equal(server.stats.sessionsTotal, 1);
  } finally {
    await within(server.endNow(), 5000, "endNow() ending a 30 s delay");
    await stopping;
  }
  await assert.rejects(
    Deno.connect({ hostname: LOCAL, port: address.port }),
    Deno.errors.ConnectionRefused,
    "the listener is closed once the drain is over",
  );
  assert.equal(server.stats.sessionsDrained, 1);
});

Deno.test("drain: a connection accepted before the listener closed completes its handshake during the drain and is served", async () => {
  const { server, key, address } = await startServer({ drainTimeoutMs: 10_000 });
  const conn = await Deno.connect({ hostname: LOCAL, port: address.port });
  try {
    await until(
      () => server.stats.connectionsAccepted === 1,
      "the server accepting the connection",
    );
    const stopping = server.shutdown();
    await server.stopped; // the listener is closed; this connection is already accepted
    const channel = await SecureChannel.handshake(conn, key, "initiator", {});
    const session = Session.open(channel, SERVICE_TARGET, {});
    const writer = session.writable.getWriter();
    const reader = session.readable.getReader();
    await writer.write(encoder.encode("late handshake"));
    await writer.close();
    const echoed: Uint8Array[] = [];
    for (let read; !(read = await reader.read()).done;) echoed.push(read.value);
    assert.equal(
      new TextDecoder().decode(echoed.length === 1 ? echoed[0] : new Uint8Array()),
      "late handshake",
    );
    assert.equal((await session.ended).error, null, "served to a clean end, not ERROR 6");
    await within(stopping, 5000, "the drain ending once its last session ended");
  } finally {
    closeQuietly(conn);
    await server.shutdown();
  }
  assert.equal(server.stats.sessionsDrained, 1);
  assert.equal(server.stats.sessionsDrainAborted, 0);
  assert.equal(server.stats.connectionsDrainRefused, 0);
});

Deno.test("drain: endNow() (a second signal) ends the delay and the deadline at once with ERROR 6", async () => {
  const { server, key, address, log } = await startServer({
    drainDelayMs: 30_000,
    drainTimeoutMs: 30_000,
  });
  const session = await connect({ server: address, key });
  const reader = session.readable.getReader();
  // An accepted connection that never starts its handshake: refused by the drain.
  const silent = await Deno.connect({ hostname: LOCAL, port: address.port });
  try {
    await until(() => server.stats.connectionsAccepted === 2, "the server accepting both");
    await session.opened;
    const started = performance.now();
    const stopping = server.shutdown();
    await log.waitFor(/draining/);
    await within(server.endNow(), 5000, "endNow() ending the drain");
    await stopping;
    await assert.rejects(reader.read(), (err) => {
      assert.ok(err instanceof RemoteError, String(err));
      assert.equal(err.code, ErrorCode.internal);
      return true;
    });
    assert.ok(performance.now() - started < 5000);
  } finally {
    closeQuietly(silent);
  }
  assert.equal(server.stats.sessionsDrainAborted, 1);
  assert.equal(server.stats.connectionsDrainRefused, 1);
  assert.equal(
    sample(server.stats, 'cipherlink_drain_sessions_total{role="server",outcome="aborted"}'),
    1,
  );
  assert.equal(sample(server.stats, 'cipherlink_drain_refused_total{role="server"}'), 1);
  assert.match(await log.waitFor(/stopped/), /sessions_aborted=1 connections_refused=1/);
});

Deno.test("drain: metrics count drained sessions and the drain's duration, and pass promtool", async () => {
  const { server, key, address } = await startServer({ drainDelayMs: 200 });
  const before = renderMetrics([{ stats: server.stats, labels: { role: "server" } }]);
  assert.match(before, /cipherlink_drain_duration_seconds\{role="server"\} 0\n/);
  const session = await connect({ server: address, key });
  await session.opened;
  const stopping = server.shutdown();
  const writer = session.writable.getWriter();
  await writer.close();
  for await (const _ of session.readable) { /* the echo's end */ }
  await stopping;
  const duration = sample(server.stats, 'cipherlink_drain_duration_seconds{role="server"}');
  assert.ok(duration >= 0.2 && duration < 5, `drain duration ${duration}`);
  assert.equal(
    sample(server.stats, 'cipherlink_drain_sessions_total{role="server",outcome="finished"}'),
    1,
  );
  assert.equal(
    sample(server.stats, 'cipherlink_drain_sessions_total{role="server",outcome="aborted"}'),
    0,
  );
  const check = await promtoolCheck(
    renderMetrics([{ stats: server.stats, labels: { role: "server" } }]),
  );
  assert.equal(check.code, 0, check.output);
});

Deno.test("drain: the client's local listener keeps accepting during its drain delay too", async () => {
  const { server, key, address } = await startServer();
  const log = new LogCapture();
  const forwarder = LocalForwarder.start({
    listen: { host: LOCAL, port: 0 },
    mode: "forward",
    connect: { server: address, key },
    drainDelayMs: 30_000,
    logger: log.logger,
  });
  const port = forwarder.addr.port;
  const stopping = forwarder.shutdown();
  try {
    assert.equal(forwarder.draining, true);
    const conn = await Deno.connect({ hostname: LOCAL, port });
    await conn.write(encoder.encode("during the delay"));
    await conn.closeWrite();
    const buffer = new Uint8Array(64);
    let got = 0;
    for (let n; (n = await conn.read(buffer.subarray(got))) !== null;) got += n;
    conn.close();
    assert.equal(new TextDecoder().decode(buffer.subarray(0, got)), "during the delay");
  } finally {
    await within(forwarder.endNow(), 5000, "endNow() ending the client's delay");
    await stopping;
    await server.shutdown();
  }
  await assert.rejects(Deno.connect({ hostname: LOCAL, port }), Deno.errors.ConnectionRefused);
  assert.equal(forwarder.stats.sessionsDrained, 1);
});

/** Sends `text` through a plain TCP connection to `port`, half-closes, and resolves the reply. */
async function echoThrough(port: number, text: string): Promise<string> {
  const conn = await Deno.connect({ hostname: LOCAL, port });
  try {
    await conn.write(encoder.encode(text));
    await conn.closeWrite();
    const buffer = new Uint8Array(1024);
    let got = 0;
    for (let n; (n = await conn.read(buffer.subarray(got))) !== null;) got += n;
    return new TextDecoder().decode(buffer.subarray(0, got));
  } finally {
    closeQuietly(conn);
  }
}

/**
 * A real process with a 60 s drain delay: after SIGTERM /healthz is 503 and
 * the listener still serves; a second SIGTERM makes it exit 0 at once.
 */
async function secondSignal(side: "server" | "client" | "config"): Promise<void> {
  const key = await tempKey();
  const target = side === "client" ? await startServer({}, await Deno.readFile(key.path)) : null;
  const delay = ["--drain-delay", "60", "--drain-timeout", "60"];
  let args: string[];
  if (side === "server") {
    args = ["server", "--key", key.path, "--listen", "127.0.0.1:0", ...delay];
  } else if (side === "client") {
    const server = `127.0.0.1:${target!.address.port}`;
    args = ["client", "--key", key.path, "--server", server, "--listen", "127.0.0.1:0", ...delay];
  } else {
    const file = `${key.dir}/tunnels.json`;
    const tunnel = { name: "t", role: "server", listen: "127.0.0.1:0", key: key.path };
    await Deno.writeTextFile(file, JSON.stringify({ tunnels: [{ ...tunnel, drainDelay: 60 }] }));
    args = ["server", "--config", file];
  }
  const daemon = await startDaemon([...args, "--metrics", "127.0.0.1:0"]);
  try {
    const metrics = await waitForLineWithin(daemon, /metrics on /);
    const healthz = `http://127.0.0.1:${/:(\d+)\/metrics/.exec(metrics)![1]}/healthz`;
    daemon.process.kill("SIGTERM");
    await waitForLineWithin(daemon, /draining/);
    const health = await fetch(healthz);
    assert.equal(health.status, 503);
    await health.body?.cancel();
    if (side === "client") {
      assert.equal(await echoThrough(daemon.port, "still accepting"), "still accepting");
    } else {
      const during = await runCipherlink([
        "client",
        "--key",
        key.path,
        "--server",
        `127.0.0.1:${daemon.port}`,
        "still accepting",
      ]);
      assert.equal(during.code, 0, during.stderr);
      assert.equal(during.stdout, "still accepting");
    }
    daemon.process.kill("SIGTERM");
    const { code } = await within(daemon.process.status, 10_000, "exit after a second SIGTERM");
    assert.equal(code, 0);
    assert.match(daemon.lines.join("\n"), /second signal/);
  } finally {
    await daemon.stop("SIGKILL");
    await target?.server.shutdown();
    await key.cleanup();
  }
}

Deno.test("drain: server --drain-delay keeps the listener open while /healthz is 503; a second SIGTERM exits 0 at once", () =>
  secondSignal("server"));

Deno.test("drain: client --listen --drain-delay does the same for local connections", () =>
  secondSignal("client"));

Deno.test("drain: server --config with drainDelay does the same", () => secondSignal("config"));

Deno.test("drain: --drain-delay is checked like the other times; the config key drainDelay too", async () => {
  const bad = await runCipherlink(["server", "--drain-delay", "soon"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--drain-delay takes a number of seconds from 0 to 2147483, not 'soon'/);
  const text = (extra: string) =>
    `{ "tunnels": [{ "name": "a", "role": "server", "listen": "127.0.0.1:0", "key": "k"${extra} }] }`;
  assert.equal(parseConfig(text(', "drainDelay": 1.5'), "t.json").tunnels[0].drainDelayMs, 1500);
  assert.equal(parseConfig(text(""), "t.json").tunnels[0].drainDelayMs, undefined);
  assert.throws(
    () => parseConfig(text(', "drainDelay": -1'), "t.json"),
    /field "drainDelay": must be a number of seconds/,
  );
  const help = await runCipherlink(["server", "--help"]);
  assert.match(help.stdout, /--drain-delay SECS/);
  assert.equal(drainDelayFor(undefined, true), DEFAULT_DRAIN_DELAY_SECONDS * 1000);
  assert.equal(drainDelayFor(undefined, false), 0, "no /healthz: nothing to wait for");
  assert.equal(drainDelayFor(500, false), 500, "an explicit delay always applies");
});

Deno.test("drain: a config file's tunnels keep accepting for drainDelay on shutdown, not on a reload; endNow() ends it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-drain-" });
  const key = randomBytes(32);
  await Deno.writeFile(`${dir}/k.key`, key, { mode: 0o600 });
  const tunnel = (name: string) => ({
    name,
    role: "server",
    listen: "127.0.0.1:0",
    key: "k.key",
    drainDelay: 30,
  });
  const file = `${dir}/tunnels.json`;
  await Deno.writeTextFile(file, JSON.stringify({ tunnels: [tunnel("kept"), tunnel("removed")] }));
  const lines: string[] = [];
  const supervisor = await Supervisor.start(file, { sink: (line) => lines.push(line) });
  try {
    const port = (name: string) => supervisor.addresses().get(name)!.port;
    const kept = port("kept");
    const removed = port("removed");
    // A reload has no 503 to show first: the removed tunnel closes at once despite drainDelay.
    await Deno.writeTextFile(file, JSON.stringify({ tunnels: [tunnel("kept")] }));
    assert.equal(await within(supervisor.reload(), 5000, "a reload without the delay"), true);
    await assert.rejects(
      Deno.connect({ hostname: LOCAL, port: removed }),
      Deno.errors.ConnectionRefused,
    );
    const stopping = supervisor.shutdown();
    assert.equal(supervisor.draining, true);
    const server = { host: LOCAL, port: kept };
    assert.deepEqual(
      await forward(encoder.encode("during"), { server, key }),
      encoder.encode("during"),
    );
    const [source, ...others] = supervisor.metricsSources();
    assert.deepEqual(source.labels, { role: "server", tunnel: "kept" }, "shown while draining");
    assert.equal(others.length, 0, "the removed tunnel's drain is over");
    assert.ok(source.stats.drainSeconds > 0);
    await until(() => source.stats.sessionsDrained === 1, "the session counted as drained");
    await within(supervisor.endNow(), 5000, "endNow() ending the 30 s delay");
    await stopping;
    await assert.rejects(
      Deno.connect({ hostname: LOCAL, port: kept }),
      Deno.errors.ConnectionRefused,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${lines.join("\n")}`, { cause: err });
  } finally {
    await supervisor.endNow();
    await Deno.remove(dir, { recursive: true });
  }
});
