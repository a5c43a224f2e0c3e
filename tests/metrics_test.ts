/**
 * Operations: the metrics endpoint (Prometheus text format, checked with
 * promtool), /healthz through a drain, and JSON logs with stable fields.
 * @module
 */

import assert from "node:assert/strict";
import {
  cipherlinkArgv,
  LINE_DEADLINE_MS,
  promtoolCheck,
  runCipherlink,
  startDaemon,
  startServerProcess,
  tempKey,
  within,
} from "./process.ts";

async function scrape(
  port: number,
  path = "/metrics",
): Promise<{ status: number; body: string; type: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return {
    status: response.status,
    body: await response.text(),
    type: response.headers.get("content-type") ?? "",
  };
}

/** The value of one sample line, e.g. `cipherlink_sessions_total{role="server"}`. */
function sample(body: string, series: string): number {
  const line = body.split("\n").find((l) => l.startsWith(series + " "));
  assert.ok(line, `no sample ${series} in:\n${body}`);
  return Number(line.slice(series.length + 1));
}

const metricsPort = (line: string) =>
  Number(/metrics on http:\/\/\S*:(\d+)\/metrics/.exec(line)![1]);

Deno.test("metrics: counters move as sessions happen and the output passes promtool", async () => {
  const wrong = await tempKey();
  const served = await startServerProcess({ server: ["--metrics", "127.0.0.1:0"] });
  const server = served.server;
  try {
    const port = metricsPort(await server.waitForLine(/metrics on /));
    const before = await scrape(port);
    assert.equal(before.status, 200);
    assert.match(before.type, /^text\/plain; version=0\.0\.4/);
    assert.equal(sample(before.body, 'cipherlink_sessions_total{role="server"}'), 0);

    const ok = await runCipherlink(served.clientArgs("twelve bytes"));
    assert.equal(ok.code, 0, ok.stderr);
    const bad = await runCipherlink([
      "client",
      "--key",
      wrong.path,
      "--server",
      served.address,
      "x",
    ]);
    assert.equal(bad.code, 1);
    const refused = await runCipherlink(served.clientArgs("--connect", "127.0.0.1:9", "x"));
    assert.equal(refused.code, 1);
    await server.waitForLine(/open refused by policy/);

    const after = (await scrape(port)).body;
    assert.equal(sample(after, 'cipherlink_sessions_total{role="server"}'), 1);
    assert.equal(sample(after, 'cipherlink_sessions_open{role="server"}'), 0);
    assert.equal(sample(after, 'cipherlink_bytes_total{role="server",direction="in"}'), 12);
    assert.equal(sample(after, 'cipherlink_bytes_total{role="server",direction="out"}'), 12);
    assert.equal(sample(after, 'cipherlink_handshakes_total{role="server",outcome="ok"}'), 2);
    assert.equal(sample(after, 'cipherlink_handshakes_total{role="server",outcome="bad_key"}'), 1);
    assert.equal(sample(after, 'cipherlink_opens_total{role="server",outcome="ok"}'), 1);
    assert.equal(sample(after, 'cipherlink_opens_total{role="server",outcome="refused"}'), 1);
    assert.equal(sample(after, 'cipherlink_handshake_duration_seconds_count{role="server"}'), 2);
    assert.equal(
      sample(after, 'cipherlink_handshake_duration_seconds_bucket{role="server",le="+Inf"}'),
      2,
    );

    const check = await promtoolCheck(after);
    assert.equal(check.code, 0, check.output);
    assert.equal((await scrape(port, "/nope")).status, 404);
  } finally {
    await served.stop();
    await wrong.cleanup();
  }
});

Deno.test("metrics: /healthz is 200 while accepting and 503 while draining", async () => {
  const served = await startServerProcess({
    server: ["--metrics", "127.0.0.1:0", "--drain-timeout", "30"],
  });
  const server = served.server;
  try {
    const port = metricsPort(await server.waitForLine(/metrics on /));
    assert.deepEqual(await scrape(port, "/healthz").then((r) => [r.status, r.body]), [200, "ok\n"]);
    // Hold a session open (pipe mode waits on stdin) so the drain has something to wait for.
    const [command, ...args] = cipherlinkArgv(served.clientArgs());
    const holder = new Deno.Command(command, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    await server.waitForLine(/session open/);
    server.process.kill("SIGTERM");
    await server.waitForLine(/draining/);
    const during = await scrape(port, "/healthz");
    assert.equal(during.status, 503);
    assert.equal(during.body, "draining\n");
    await holder.stdin.close();
    const result = await within(holder.output(), LINE_DEADLINE_MS, "the holding client's exit");
    assert.equal(result.code, 0);
  } finally {
    assert.equal(await served.stop(), 0);
  }
});

Deno.test("logs: --log-format json gives one JSON object per line with stable fields", async () => {
  const served = await startServerProcess({ server: ["--log-format", "json"] });
  const server = served.server;
  try {
    const reply = await runCipherlink(served.clientArgs("hi"));
    assert.equal(reply.code, 0, reply.stderr);
    const end = JSON.parse(await server.waitForLine(/"msg":"session end"/));
    assert.equal(typeof end.time, "string");
    assert.equal(end.level, "info");
    assert.equal(typeof end.session, "number");
    assert.match(end.peer, /^127\.0\.0\.1:\d+$/);
    assert.equal(end.bytes_in, 2);
    assert.equal(end.bytes_out, 2);
    assert.equal(end.outcome, "ok");
  } finally {
    await served.stop();
  }
  for (const line of server.lines.filter((l) => l.trim() !== "")) {
    const record = JSON.parse(line);
    assert.ok(["debug", "info", "warn", "error"].includes(record.level), line);
    assert.equal(typeof record.msg, "string");
  }
});

Deno.test("metrics: a config file's tunnels are labelled by name in one valid exposition", async () => {
  const key = await tempKey();
  const config = `${key.dir}/tunnels.jsonc`;
  await Deno.writeTextFile(
    config,
    `{ // two echo servers in one process
      "tunnels": [
        { "name": "alpha", "role": "server", "listen": "127.0.0.1:0", "key": "${key.path}" },
        { "name": "beta", "role": "server", "listen": "127.0.0.1:0", "key": "${key.path}" },
      ] }`,
  );
  const server = await startDaemon(["server", "--config", config, "--metrics", "127.0.0.1:0"]);
  try {
    const port = metricsPort(await server.waitForLine(/metrics on /));
    const alpha = Number(
      /listening on \S*:(\d+).*tunnel=alpha/.exec(
        await server.waitForLine(/listening on .*tunnel=alpha/),
      )![1],
    );
    await server.waitForLine(/listening on .*tunnel=beta/);
    const reply = await runCipherlink([
      "client",
      "--key",
      key.path,
      "--server",
      `127.0.0.1:${alpha}`,
      "abc",
    ]);
    assert.equal(reply.stdout, "abc", reply.stderr);
    const body = (await scrape(port)).body;
    assert.equal(sample(body, 'cipherlink_sessions_total{role="server",tunnel="alpha"}'), 1);
    assert.equal(sample(body, 'cipherlink_sessions_total{role="server",tunnel="beta"}'), 0);
    const check = await promtoolCheck(body);
    assert.equal(check.code, 0, check.output);
  } finally {
    await server.stop();
    await key.cleanup();
  }
});
