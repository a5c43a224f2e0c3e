/**
 * A broken network between two network namespaces that the soak creates and
 * removes itself: `cl-soak-PID-c` (client side, 10.231.0.2) and `cl-soak-PID-s`
 * (server side, 10.231.0.1). Those addresses exist only inside the two
 * namespaces; nothing here touches the host's own network.
 *
 * The link is a veth pair shaped with `tc qdisc … netem` where the kernel has
 * netem. Where it does not (CONFIG_NET_SCH_NETEM unset), the link is a pair
 * of TUN devices joined by a relay in this process that drops and delays
 * packets the same way (a userspace netem on lib/tunnel/tun.ts, the VPN mode's
 * TUN devices).
 * @module
 */

import { TunDevice } from "../../lib/tunnel/tun.ts";
import { Rng } from "./common.ts";

/** Names carry this process's id, so two soaks on one machine never share a namespace. */
export const CLIENT_NS = `cl-soak-${Deno.pid}-c`;
export const SERVER_NS = `cl-soak-${Deno.pid}-s`;
/** Link device names (at most 15 characters). */
const CLIENT_DEV = `cls${Deno.pid}c`;
const SERVER_DEV = `cls${Deno.pid}s`;
export const CLIENT_ADDR = "10.231.0.2";
export const SERVER_ADDR = "10.231.0.1";
const PREFIX = 24;

/** Loss and delay, applied to each direction. */
export interface Impairment {
  lossPercent: number;
  delayMs: number;
}

/** A link between the namespaces whose impairment can change on the fly. */
export interface Link {
  /** "netem" (kernel qdisc) or "userspace netem over TUN". */
  kind: string;
  set(impairment: Impairment): Promise<void>;
  close(): Promise<void>;
}

async function run(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(args[0], {
    args: args.slice(1),
    stdout: "null",
    stderr: "piped",
  })
    .output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
}

async function must(args: string[]): Promise<void> {
  const { code, stderr } = await run(args);
  if (code !== 0) throw new Error(`${args.join(" ")}: ${stderr}`);
}

/** Removes this soak's namespaces, and those of earlier soaks that are no longer running. */
export async function removeNamespaces(): Promise<void> {
  for (const ns of [CLIENT_NS, SERVER_NS]) await run(["ip", "netns", "del", ns]);
  const listed = await new Deno.Command("ip", {
    args: ["netns", "list"],
    stdout: "piped",
    stderr: "null",
  })
    .output().catch(() => null);
  for (const line of new TextDecoder().decode(listed?.stdout ?? new Uint8Array()).split("\n")) {
    const stale = /^(cl-soak-(\d+)-[cs])\b/.exec(line);
    if (!stale) continue;
    const alive = await Deno.stat(`/proc/${stale[2]}`).then(() => true, () => false);
    if (!alive) await run(["ip", "netns", "del", stale[1]]);
  }
}

/**
 * Creates the namespaces and the link. Throws with the reason when the
 * machine does not allow it (not root, no `ip`, namespaces forbidden).
 */
export async function createLink(seed: number): Promise<Link> {
  await removeNamespaces();
  await must(["ip", "netns", "add", CLIENT_NS]);
  try {
    await must(["ip", "netns", "add", SERVER_NS]);
    for (const ns of [CLIENT_NS, SERVER_NS]) {
      await must(["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    const veth = await vethWithNetem();
    if (veth) return veth;
    return await tunRelay(seed);
  } catch (err) {
    await removeNamespaces();
    throw err;
  }
}

async function address(ns: string, dev: string, addr: string): Promise<void> {
  await must(["ip", "-n", ns, "addr", "add", `${addr}/${PREFIX}`, "dev", dev]);
  await must(["ip", "-n", ns, "link", "set", dev, "up"]);
}

/** veth + tc netem, or null when the kernel has no netem qdisc. */
async function vethWithNetem(): Promise<Link | null> {
  await must([
    "ip",
    "link",
    "add",
    CLIENT_DEV,
    "netns",
    CLIENT_NS,
    "type",
    "veth",
    "peer",
    "name",
    SERVER_DEV,
    "netns",
    SERVER_NS,
  ]);
  const ends = [[CLIENT_NS, CLIENT_DEV], [SERVER_NS, SERVER_DEV]];
  const probe = await run([
    "ip",
    "netns",
    "exec",
    CLIENT_NS,
    "tc",
    "qdisc",
    "add",
    "dev",
    CLIENT_DEV,
    "root",
    "netem",
    "delay",
    "0ms",
  ]);
  if (probe.code !== 0) {
    await run(["ip", "-n", CLIENT_NS, "link", "del", CLIENT_DEV]);
    return null;
  }
  await address(CLIENT_NS, CLIENT_DEV, CLIENT_ADDR);
  await address(SERVER_NS, SERVER_DEV, SERVER_ADDR);
  return {
    kind: "tc netem on a veth pair",
    async set({ lossPercent, delayMs }) {
      for (const [ns, dev] of ends) {
        await must([
          "ip",
          "netns",
          "exec",
          ns,
          "tc",
          "qdisc",
          "replace",
          "dev",
          dev,
          "root",
          "netem",
          "loss",
          `${lossPercent}%`,
          "delay",
          `${delayMs}ms`,
        ]);
      }
    },
    async close() {
      await removeNamespaces();
    },
  };
}

/** Two TUN devices, one in each namespace, joined by a lossy, delaying relay. */
async function tunRelay(seed: number): Promise<Link> {
  const devices: TunDevice[] = [];
  try {
    devices.push(TunDevice.open(CLIENT_DEV), TunDevice.open(SERVER_DEV));
    await must(["ip", "link", "set", CLIENT_DEV, "netns", CLIENT_NS]);
    await must(["ip", "link", "set", SERVER_DEV, "netns", SERVER_NS]);
    await address(CLIENT_NS, CLIENT_DEV, CLIENT_ADDR);
    await address(SERVER_NS, SERVER_DEV, SERVER_ADDR);
  } catch (err) {
    for (const device of devices) device.close();
    throw err;
  }
  let impairment: Impairment = { lossPercent: 0, delayMs: 0 };
  const rng = new Rng(seed);
  const forward = async (from: TunDevice, to: TunDevice) => {
    const buffer = new Uint8Array(65536);
    const queue: { due: number; packet: Uint8Array }[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const flush = () => {
      timer = undefined;
      const now = performance.now();
      while (queue.length && queue[0].due <= now) to.write(queue.shift()!.packet);
      if (queue.length) timer = setTimeout(flush, Math.max(0, queue[0].due - now));
    };
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      if (rng.next() * 100 < impairment.lossPercent) continue;
      if (impairment.delayMs <= 0 && queue.length === 0) {
        to.write(buffer.subarray(0, n));
        continue;
      }
      // The delay is the same for every packet, so the queue stays in order.
      queue.push({ due: performance.now() + impairment.delayMs, packet: buffer.slice(0, n) });
      if (!timer) timer = setTimeout(flush, impairment.delayMs);
    }
    clearTimeout(timer);
  };
  const relays = Promise.all([forward(devices[0], devices[1]), forward(devices[1], devices[0])]);
  return {
    kind: "userspace netem over TUN (this kernel has no netem qdisc)",
    set(next) {
      impairment = next;
      return Promise.resolve();
    },
    async close() {
      for (const device of devices) device.close();
      await relays;
      await removeNamespaces();
    },
  };
}
