/**
 * Operations: the metrics endpoint (Prometheus text format, checked with
 * promtool), /healthz through a drain, and JSON logs with stable fields.
 * @module
 */

import assert from "node:assert/strict";
import { runCipherlink, startDaemon, tempKey } from "./process.ts";

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

async function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  return { code, output: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

const metricsPort = (line: string) =>
  Number(/metrics on http:\/\/\S*:(\d+)\/metrics/.exec(line)![1]);

Deno.test("metrics: counters move as sessions happen and the output passes promtool", async () => {
  const key = await tempKey();
  const wrong = await tempKey();
  const server = await startDaemon([
    "server",
    "--key",
    key.path,
    "--listen",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
  ]);
  try {
    const port = metricsPort(await server.waitForLine(/metrics on /));
    const before = await scrape(port);
    assert.equal(before.status, 200);
    assert.match(before.type, /^text\/plain; version=0\.0\.4/);
    assert.equal(sample(before.body, 'cipherlink_sessions_total{role="server"}'), 0);

    const address = `127.0.0.1:${server.port}`;
    const ok = await runCipherlink([
      "client",
      "--key",
      key.path,
      "--server",
      address,
      "twelve bytes",
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    const bad = await runCipherlink(["client", "--key", wrong.path, "--server", address, "x"]);
    assert.equal(bad.code, 1);
    const refused = await runCipherlink([
      "client",
      "--key",
      key.path,
      "--server",
      address,
      "--connect",
      "127.0.0.1:9",
      "x",
    ]);
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
    await server.stop();
    await key.cleanup();
    await wrong.cleanup();
  }
});

Deno.test("metrics: /healthz is 200 while accepting and 503 while draining", async () => {
  const key = await tempKey();
  const server = await startDaemon([
    "server",
    "--key",
    key.path,
    "--listen",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
    "--drain-timeout",
    "30",
  ]);
  try {
    const port = metricsPort(await server.waitForLine(/metrics on /));
    assert.deepEqual(await scrape(port, "/healthz").then((r) => [r.status, r.body]), [200, "ok\n"]);
    // Hold a session open (pipe mode waits on stdin) so the drain has something to wait for.
    const holder = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../main.ts", import.meta.url).pathname,
        "client",
        "--key",
        key.path,
        "--server",
        `127.0.0.1:${server.port}`,
      ],
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
    const result = await holder.output();
    assert.equal(result.code, 0);
  } finally {
    assert.equal(await server.stop(), 0);
    await key.cleanup();
  }
});

Deno.test("logs: --log-format json gives one JSON object per line with stable fields", async () => {
  const key = await tempKey();
  const server = await startDaemon([
    "server",
    "--key",
    key.path,
    "--listen",
    "127.0.0.1:0",
    "--log-format",
    "json",
  ]);
  try {
    const reply = await runCipherlink([
      "client",
      "--key",
      key.path,
      "--server",
      `127.0.0.1:${server.port}`,
      "hi",
    ]);
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
    await server.stop();
    await key.cleanup();
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
