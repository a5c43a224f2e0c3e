/**
 * The README's VPN walkthrough, run word for word: its shell blocks
 * (marked `<!-- vpn-walkthrough: STEP -->`) with only the namespace names,
 * veth names and key path swapped for ones unique to this process.
 * @module
 */

import assert from "node:assert/strict";
import { NsProcess, run } from "./vpn_fixture.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const README = await Deno.readTextFile(`${ROOT}README.md`);

/** The walkthrough's blocks by step name. */
function walkthrough(): Map<string, string> {
  const blocks = new Map<string, string>();
  for (const m of README.matchAll(/<!-- vpn-walkthrough: (\w+) -->\s*```sh\n([\s\S]*?)```/g)) {
    blocks.set(m[1], m[2]);
  }
  return blocks;
}

const canRun = Deno.build.os === "linux" &&
  (await run("ip", ["netns", "list"]).then((o) => o.code === 0, () => false)) &&
  (await Deno.stat("/dev/net/tun").then(() => true, () => false));
if (!canRun) console.warn("vpn_readme_test: skipped: needs Linux, ip netns and /dev/net/tun");

Deno.test({
  name: "README: the VPN walkthrough on two namespaces works as written",
  ignore: !canRun,
}, async () => {
  const blocks = walkthrough();
  assert.deepEqual([...blocks.keys()], ["setup", "server", "client", "check", "cleanup"]);
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-readme-" });
  const id = Deno.pid % 100000;
  const names: [string, string][] = [
    ["vpn-server", `cl-vpn-${Deno.pid}-ws`],
    ["vpn-client", `cl-vpn-${Deno.pid}-wc`],
    ["veth-s", `clw${id}s`],
    ["veth-c", `clw${id}c`],
    ["/tmp/vpn-demo.key", `${dir}/vpn-demo.key`],
  ];
  const ours = (text: string) => names.reduce((t, [from, to]) => t.replaceAll(from, to), text);
  const bash = async (step: string) => {
    const out = await run("bash", [
      "-euo",
      "pipefail",
      "-c",
      `cd ${ROOT}\n${ours(blocks.get(step)!)}`,
    ]);
    assert.equal(out.code, 0, `${step}:\n${out.stdout}${out.stderr}`);
    return out.stdout;
  };
  /** A one-line `ip netns exec NS COMMAND…` block as a process in that namespace. */
  const daemon = (step: string) => {
    const words = ours(blocks.get(step)!).trim().split(/\s+/);
    assert.deepEqual(words.slice(0, 3), ["ip", "netns", "exec"], step);
    return new NsProcess(words[3], [
      "bash",
      "-c",
      `cd ${ROOT} && exec ${words.slice(4).join(" ")}`,
    ]);
  };
  const processes: NsProcess[] = [];
  try {
    await bash("setup");
    const server = daemon("server");
    processes.push(server);
    await server.waitForLine(/listening on 10\.55\.0\.1:8888/);
    const client = daemon("client");
    processes.push(client);
    await client.waitForLine(/vpn connected/);
    const checked = await bash("check");
    assert.match(checked, /3 packets transmitted, 3 received/);
    assert.match(checked, /inet 10\.8\.0\.2\/24/);
    assert.equal(await client.stop("SIGINT"), 0, client.log());
    assert.equal(await server.stop("SIGINT"), 0, server.log());
  } finally {
    for (const p of processes) await p.stop("SIGKILL").catch(() => {});
    await bash("cleanup").catch(() => {});
    for (const [from, to] of names.slice(0, 2)) {
      if (from.startsWith("vpn-")) await run("ip", ["netns", "del", to]);
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
