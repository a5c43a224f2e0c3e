/**
 * VPN mode end to end, with real kernels and real packets: a Cipherlink
 * server and clients in network namespaces this test creates and removes
 * (joined by veth pairs), TUN devices on both ends, ping / TCP / raw packets
 * across the tunnel. Skipped, saying why, where namespaces cannot be made.
 * @module
 */

import assert from "node:assert/strict";
import { randomBytes, sha256Hex } from "./helpers.ts";
import { type TempKey, tempKey } from "./process.ts";
import {
  createTopology,
  inNs,
  netPeer,
  netPeerRun,
  NsProcess,
  ping,
  pingUntil,
  run,
  type Topology,
} from "./vpn_fixture.ts";

/** Why namespaces cannot be used here, or null when they can. */
async function namespaceBlocker(): Promise<string | null> {
  if (Deno.build.os !== "linux") return `VPN mode is Linux only (this is ${Deno.build.os})`;
  const probe = `cl-vpn-${Deno.pid}-probe`;
  try {
    const added = await run("ip", ["netns", "add", probe]);
    if (added.code !== 0) return `cannot create network namespaces: ${added.stderr.trim()}`;
    await run("ip", ["netns", "del", probe]);
  } catch (err) {
    return `cannot run ip: ${(err as Error).message}`;
  }
  try {
    await Deno.stat("/dev/net/tun");
  } catch {
    return "/dev/net/tun is missing";
  }
  return null;
}

const blocker = await namespaceBlocker();
if (blocker) console.warn(`vpn_test: skipped: ${blocker}`);

const PORT = "8443";
const METRICS = "127.0.0.1:9100";

function serverArgs(key: string): string[] {
  return [
    "server",
    "--listen",
    `0.0.0.0:${PORT}`,
    "--key",
    key,
    "--tun",
    "clvpn0",
    "--tun-address",
    "10.100.0.1/24",
    "--tun-address",
    "fd10::1/64",
    "--metrics",
    METRICS,
  ];
}

function clientArgs(topology: Topology, i: number, key: string, extra: string[]): string[] {
  return [
    "client",
    "--server",
    `${topology.serverAddress(i)}:${PORT}`,
    "--key",
    key,
    "--keepalive",
    "2",
    ...extra,
  ];
}

async function metric(ns: string, name: string, labels: string): Promise<number> {
  const out = await inNs(ns, "curl", ["-sS", "--max-time", "5", `http://${METRICS}/metrics`]);
  assert.equal(out.code, 0, `scraping metrics in ${ns}: ${out.stderr}`);
  const line = out.stdout.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  assert.ok(line, `no ${name} with ${labels} in:\n${out.stdout}`);
  return Number(line.split(" ").pop());
}

function received(out: { stdout: string }, count: number): boolean {
  return out.stdout.includes(` ${count} received`);
}

/**
 * Runs `body` with a namespace topology of `clients` clients, a fresh key, and
 * a list for the processes it starts; afterwards every process is killed,
 * the namespaces removed and the key deleted, whatever happened.
 */
async function inTopology(
  clients: number,
  body: (env: { topology: Topology; key: TempKey; processes: NsProcess[] }) => Promise<void>,
): Promise<void> {
  const topology = await createTopology(clients);
  const key = await tempKey();
  const processes: NsProcess[] = [];
  try {
    await body({ topology, key, processes });
  } finally {
    for (const p of processes) await p.stop("SIGKILL").catch(() => {});
    await topology.remove();
    await key.cleanup();
  }
}

Deno.test({
  name: "vpn: ping, TCP, two clients, refusal, anti-spoofing and reconnect across namespaces",
  ignore: blocker !== null,
}, async (t) => {
  await inTopology(2, async ({ topology, key, processes }) => {
    const [c1, c2] = topology.clients;
    const start = (ns: string, args: string[]) => {
      const p = NsProcess.cipherlink(ns, args);
      processes.push(p);
      return p;
    };
    // An address behind the server, for --route: the server's kernel owns it.
    await inNs(topology.server, "ip", ["addr", "add", "10.100.9.1/32", "dev", "lo"]);
    let server = start(topology.server, serverArgs(key.path));
    await server.waitForLine(/listening on /);
    const client1 = start(
      c1,
      clientArgs(topology, 0, key.path, [
        "--tun",
        "clvpn1",
        "--tun-address",
        "10.100.0.2/24",
        "--tun-address",
        "fd10::2/64",
        "--route",
        "10.100.9.0/24",
        "--metrics",
        METRICS,
        // Both providers in one tunnel: this client seals with OpenSSL, the server with Web Crypto.
        "--crypto",
        "openssl",
      ]),
    );
    await client1.waitForLine(/vpn connected .*crypto=openssl/);

    await t.step("ping both ways across the tunnel", async () => {
      const out = await ping(c1, "10.100.0.1");
      assert.ok(received(out, 3), `client -> server:\n${out.stdout}${out.stderr}`);
      const back = await ping(topology.server, "10.100.0.2");
      assert.ok(received(back, 3), `server -> client:\n${back.stdout}${back.stderr}`);
    });

    await t.step("IPv6 ping both ways across the tunnel", async () => {
      const out = await ping(c1, "fd10::1");
      assert.ok(received(out, 3), `client -> server:\n${out.stdout}${out.stderr}`);
      const back = await ping(topology.server, "fd10::2");
      assert.ok(received(back, 3), `server -> client:\n${back.stdout}${back.stderr}`);
    });

    await t.step("--route sends a network behind the server through the tunnel", async () => {
      const route = await inNs(c1, "ip", ["route", "show", "10.100.9.0/24"]);
      assert.match(route.stdout, /dev clvpn1/);
      const out = await ping(c1, "10.100.9.1");
      assert.ok(received(out, 3), out.stdout + out.stderr);
    });

    await t.step("a TCP transfer across the tunnel arrives byte for byte", async () => {
      const sink = netPeer(topology.server, ["sink", "10.100.0.1"]);
      const port = await sink.waitForLine(/^\d+$/, 10_000);
      const data = randomBytes(8 * 1024 * 1024);
      const sent = await netPeerRun(c1, ["send", "10.100.0.1", port], data);
      assert.equal(sent.code, 0, sent.stderr);
      const result = await sink.waitForLine(/^\d+ [0-9a-f]{64}$/, 60_000);
      assert.equal(result, `${data.byteLength} ${await sha256Hex(data)}`);
      assert.equal(await sink.exit(), 0);
    });

    const client2 = start(
      c2,
      clientArgs(topology, 1, key.path, ["--tun", "clvpn2", "--tun-address", "10.100.0.3/24"]),
    );
    await client2.waitForLine(/vpn connected/);

    await t.step("two clients ping each other through the server", async () => {
      const out = await ping(c1, "10.100.0.3");
      assert.ok(received(out, 3), `client 1 -> client 2:\n${out.stdout}${out.stderr}`);
      const back = await ping(c2, "10.100.0.2");
      assert.ok(received(back, 3), `client 2 -> client 1:\n${back.stdout}${back.stderr}`);
    });

    await t.step("a client claiming an address in use is refused with ERROR 2", async () => {
      const intruder = start(
        c2,
        clientArgs(topology, 1, key.path, ["--tun", "clvpn3", "--tun-address", "10.100.0.2/24"]),
      );
      assert.equal(await intruder.exit(), 1, intruder.log());
      assert.match(
        intruder.log(),
        /cipherlink: error: server error 2 \(refused by the server's policy\): 10\.100\.0\.2 is in use by another client/,
      );
      const gone = await inNs(c2, "ip", ["link", "show", "clvpn3"]);
      assert.notEqual(gone.code, 0, "the refused client left its device behind");
      await server.waitForLine(/vpn open refused .*10\.100\.0\.2 is in use/);
      // The first holder is undisturbed.
      assert.ok(received(await ping(c1, "10.100.0.1", 1), 1));
    });

    await t.step("a packet with a forged source is not delivered on the server", async () => {
      const listener = netPeer(topology.server, ["udp-listen", "10.100.0.1"]);
      const port = await listener.waitForLine(/^\d+$/, 10_000);
      const spoofedBefore = await metric(
        topology.server,
        "cipherlink_vpn_packets_dropped_total",
        'reason="spoofed"',
      );
      const forged = await netPeerRun(c1, ["raw-udp", "10.100.0.77", "10.100.0.1", port, "forged"]);
      assert.equal(forged.code, 0, forged.stderr);
      for (const text of ["genuine", "stop"]) {
        const sent = await netPeerRun(c1, ["raw-udp", "10.100.0.2", "10.100.0.1", port, text]);
        assert.equal(sent.code, 0, sent.stderr);
      }
      assert.equal(await listener.exit(), 0);
      assert.deepEqual(listener.lines.slice(1), ["genuine", "stop"]);
      const spoofedAfter = await metric(
        topology.server,
        "cipherlink_vpn_packets_dropped_total",
        'reason="spoofed"',
      );
      assert.equal(spoofedAfter - spoofedBefore, 1, "the server counted the forged packet");
      // The VPN families are valid Prometheus text (where promtool is installed).
      const scraped = await inNs(topology.server, "curl", ["-sS", `http://${METRICS}/metrics`]);
      assert.match(scraped.stdout, /cipherlink_vpn_sessions_open\{role="server"\} 2/);
      assert.match(scraped.stdout, /cipherlink_sessions_open\{role="server"\} 2/);
      const lint = await run(
        "promtool",
        ["check", "metrics"],
        new TextEncoder().encode(scraped.stdout),
      )
        .catch(() => null);
      if (lint) assert.equal(lint.code, 0, lint.stdout + lint.stderr);
      // The session survived the drop.
      assert.ok(received(await ping(c1, "10.100.0.1", 1), 1));
    });

    await t.step(
      "the server SIGKILLed and restarted: the same client's ping comes back",
      async () => {
        assert.equal(await server.stop("SIGKILL"), 137);
        server = start(topology.server, serverArgs(key.path));
        await server.waitForLine(/listening on /);
        assert.ok(
          await pingUntil(c1, "10.100.0.1", 60_000),
          `no ping after the restart:\n${client1.log()}`,
        );
        await client1.waitForLine(/vpn connection lost/);
        await client1.waitForLine(/vpn connected/, 1000, 2);
        const status = await Promise.race([client1.status, Promise.resolve(null)]);
        assert.equal(status, null, "the client kept running");
      },
    );

    await t.step(
      "SIGTERM: the client sends CLOSE, removes its routes and device, exits 0",
      async () => {
        assert.equal(await client1.stop("SIGTERM"), 0, client1.log());
        const gone = await inNs(c1, "ip", ["link", "show", "clvpn1"]);
        assert.notEqual(gone.code, 0, "the device is still there");
        const route = await inNs(c1, "ip", ["route", "show", "10.100.9.0/24"]);
        assert.equal(route.stdout.trim(), "");
        await server.waitForLine(/vpn session end .*10\.100\.0\.2.*outcome=ok/, 10_000);
        assert.equal(await client2.stop("SIGTERM"), 0, client2.log());
        assert.equal(await server.stop("SIGTERM"), 0, server.log());
        const serverDevice = await inNs(topology.server, "ip", ["link", "show", "clvpn0"]);
        assert.notEqual(serverDevice.code, 0, "the server's device is still there");
      },
    );
  });
});

Deno.test({
  name: "vpn: server and client VPN tunnels from config files, next to an echo tunnel",
  ignore: blocker !== null,
}, async () => {
  await inTopology(1, async ({ topology, key, processes }) => {
    const [c1] = topology.clients;
    const serverFile = `${key.dir}/server.json`;
    const clientFile = `${key.dir}/client.json`;
    await Deno.writeTextFile(
      serverFile,
      JSON.stringify({
        tunnels: [{
          name: "office",
          role: "server",
          listen: `0.0.0.0:${PORT}`,
          key: key.path,
          tun: "clvpncfg0",
          tunAddresses: ["10.100.0.1/24", "fd10::1/64"],
          tunMtu: 1380,
          crypto: "openssl",
        }],
      }),
    );
    await Deno.writeTextFile(
      clientFile,
      JSON.stringify({
        tunnels: [
          {
            name: "laptop",
            role: "client",
            mode: "vpn",
            server: `${topology.serverAddress(0)}:${PORT}`,
            key: key.path,
            tun: "clvpncfg1",
            tunAddresses: ["10.100.0.2/24", "fd10::2/64"],
            routes: ["10.100.9.0/24"],
          },
          // An echo client on the same server port, in the same process.
          {
            name: "echo",
            role: "client",
            listen: "127.0.0.1:7000",
            server: `${topology.serverAddress(0)}:${PORT}`,
            key: key.path,
          },
        ],
      }),
    );
    const checked = await run(Deno.execPath(), [
      "run",
      "--allow-all",
      new URL("../main.ts", import.meta.url).pathname,
      "check-config",
      clientFile,
    ]);
    assert.equal(checked.code, 0, checked.stderr);
    const server = NsProcess.cipherlink(topology.server, ["server", "--config", serverFile]);
    processes.push(server);
    await server.waitForLine(
      /listening on .*vpn="clvpncfg0 10\.100\.0\.1\/24 fd10::1\/64".*crypto=openssl/,
    );
    const client = NsProcess.cipherlink(c1, ["client", "--config", clientFile]);
    processes.push(client);
    await client.waitForLine(/vpn connected .*tunnel=laptop|tunnel=laptop.*vpn connected/);
    const mtu = await inNs(c1, "ip", ["link", "show", "clvpncfg1"]);
    assert.match(mtu.stdout, /mtu 1400/);
    const serverMtu = await inNs(topology.server, "ip", ["link", "show", "clvpncfg0"]);
    assert.match(serverMtu.stdout, /mtu 1380/);
    assert.ok(received(await ping(c1, "10.100.0.1"), 3));
    assert.ok(received(await ping(c1, "fd10::1"), 3));
    // The echo tunnel works through the same server port.
    const echo = await inNs(c1, "python3", [
      "-c",
      "import socket; s=socket.create_connection(('127.0.0.1',7000)); s.sendall(b'hello'); " +
      "s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())",
    ]);
    assert.equal(echo.stdout.trim(), "hello", echo.stderr);
    // SIGHUP with a changed VPN setting restarts the tunnel with the same device name; the
    // client reconnects on its own.
    const serverConfig = JSON.parse(await Deno.readTextFile(serverFile));
    serverConfig.tunnels[0].tunMtu = 1300;
    await Deno.writeTextFile(serverFile, JSON.stringify(serverConfig));
    server.child.kill("SIGHUP");
    await server.waitForLine(/config reloaded .*restarted=1 .*failed=0/);
    assert.match(
      (await inNs(topology.server, "ip", ["link", "show", "clvpncfg0"])).stdout,
      /mtu 1300/,
    );
    assert.ok(
      await pingUntil(c1, "10.100.0.1", 30_000),
      `no ping after the reload:\n${client.log()}`,
    );
    assert.equal(await client.stop("SIGTERM"), 0, client.log());
    assert.notEqual((await inNs(c1, "ip", ["link", "show", "clvpncfg1"])).code, 0);
    assert.equal(await server.stop("SIGTERM"), 0, server.log());
    assert.notEqual((await inNs(topology.server, "ip", ["link", "show", "clvpncfg0"])).code, 0);
  });
});

Deno.test({
  name:
    "vpn: the client drops packets from the server that are not addressed to its tunnel address",
  ignore: blocker !== null,
}, async () => {
  await inTopology(1, async ({ topology, key, processes }) => {
    const [c1] = topology.clients;
    // Listens on every address of the client's namespace: the tunnel's and the veth's.
    const listener = netPeer(c1, ["udp-listen", "0.0.0.0"]);
    processes.push(listener);
    const port = await listener.waitForLine(/^\d+$/, 10_000);
    const fake = new NsProcess(topology.server, [
      Deno.execPath(),
      "run",
      "--quiet",
      "--allow-all",
      new URL("./vpn/fake_server.ts", import.meta.url).pathname,
      key.path,
      topology.serverAddress(0),
      PORT,
      "10.100.0.1",
      port,
      // To the client's veth address: a server may not reach past the tunnel address.
      "10.99.1.2:forged",
      "10.100.0.2:genuine",
      "10.100.0.2:stop",
    ], "stdout");
    processes.push(fake);
    await fake.waitForLine(/^listening$/);
    const client = NsProcess.cipherlink(
      c1,
      clientArgs(topology, 0, key.path, [
        "--tun",
        "clvpnf1",
        "--tun-address",
        "10.100.0.2/24",
        "--metrics",
        METRICS,
      ]),
    );
    processes.push(client);
    await client.waitForLine(/vpn connected/);
    await fake.waitForLine(/^sent$/);
    assert.equal(await listener.exit(), 0);
    assert.deepEqual(listener.lines.slice(1), ["genuine", "stop"]);
    assert.equal(
      await metric(c1, "cipherlink_vpn_packets_dropped_total", 'reason="spoofed"'),
      1,
      "the client counted the packet for its other address",
    );
    assert.equal(await client.stop("SIGTERM"), 0, client.log());
  });
});
