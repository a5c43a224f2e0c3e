/**
 * Network device setup for the VPN mode with iproute2's `ip` command, as
 * wg-quick does: addresses, MTU, link state and routes of a TUN device.
 * (The device itself is opened in lib/tunnel/tun.ts.)
 *
 * @example
 * ```ts
 * import { addRoute, configureDevice } from "./netdev.ts";
 * import { parseCidr } from "../protocol/packet.ts";
 * await configureDevice("cl0", [parseCidr("10.8.0.2/24")], 1400);
 * await addRoute("cl0", parseCidr("10.9.0.0/16"));
 * ```
 * @module
 */

import { type Cidr, formatCidr, networkOf } from "../protocol/packet.ts";
import { TunDevice, TunError } from "./tun.ts";

/** Default MTU of a VPN device. */
export const DEFAULT_TUN_MTU = 1400;
/** Smallest MTU accepted: IPv6's minimum link MTU. */
export const MIN_TUN_MTU = 1280;
/** Largest MTU accepted: a packet must fit one DATA message. */
export const MAX_TUN_MTU = 65518;

async function ip(args: string[]): Promise<{ ok: boolean; stderr: string }> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("ip", { args, stdin: "null", stdout: "null", stderr: "piped" })
      .output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new TunError(
        "VPN mode needs iproute2's `ip` command on PATH (apt-get install iproute2)",
      );
    }
    if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
      throw new TunError("VPN mode needs Deno's --allow-run=ip permission");
    }
    throw err;
  }
  return { ok: out.success, stderr: new TextDecoder().decode(out.stderr).trim() };
}

async function must(args: string[]): Promise<void> {
  const { ok, stderr } = await ip(args);
  if (!ok) throw new TunError(`ip ${args.join(" ")} failed: ${stderr}`);
}

/** Whether a network device of that name exists now. */
export function deviceExists(name: string): boolean {
  try {
    Deno.statSync(`/sys/class/net/${name}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Gives the device its addresses and MTU and brings it up. No link-local
 * IPv6 address is generated (a point-to-point tunnel has no use for it, and
 * the server would count its router solicitations as spoofed), and IPv6
 * addresses skip duplicate address detection, so they work at once.
 */
export async function configureDevice(
  name: string,
  addresses: readonly Cidr[],
  mtu: number,
): Promise<void> {
  // Older kernels lack addrgenmode; the device still works, with a link-local address.
  await ip(["link", "set", "dev", name, "addrgenmode", "none"]);
  for (const cidr of addresses) {
    const extra = cidr.family === 6 ? ["nodad"] : [];
    await must(["addr", "replace", formatCidr(cidr), "dev", name, ...extra]);
  }
  await must(["link", "set", "dev", name, "mtu", String(mtu), "up"]);
}

/**
 * Opens (or creates) the TUN device `name` and configures it with
 * {@linkcode configureDevice}, closing it again if that fails. `created` says
 * whether the device did not exist before, so its owner removes it at the end.
 */
export async function openConfiguredDevice(
  name: string,
  addresses: readonly Cidr[],
  mtu = DEFAULT_TUN_MTU,
): Promise<{ device: TunDevice; created: boolean }> {
  const existed = deviceExists(name);
  const device = TunDevice.open(name);
  try {
    await configureDevice(name, addresses, mtu);
  } catch (err) {
    device.close();
    throw err;
  }
  return { device, created: !existed };
}

/** Removes addresses given by configureDevice (for a device that outlives us). */
export async function removeAddresses(name: string, addresses: readonly Cidr[]): Promise<void> {
  for (const cidr of addresses) await ip(["addr", "del", formatCidr(cidr), "dev", name]);
}

/** Routes a network through the device (replacing an existing route to it). */
export async function addRoute(name: string, route: Cidr): Promise<void> {
  await must(["route", "replace", formatCidr(networkOf(route)), "dev", name]);
}

/** Removes a route through the device; a route already gone is fine. */
export async function removeRoute(name: string, route: Cidr): Promise<void> {
  await ip(["route", "del", formatCidr(networkOf(route)), "dev", name]);
}
