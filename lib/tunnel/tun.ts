/**
 * TUN devices through Deno's FFI to libc: every native call of the VPN mode
 * lives in this module. A device is opened with `open("/dev/net/tun")` and
 * `ioctl(TUNSETIFF, IFF_TUN | IFF_NO_PI)`, so each read or write is exactly
 * one IP packet. The descriptor is nonblocking: reads that find nothing wait
 * in `poll` on a worker thread (a nonblocking FFI call), so the event loop
 * never blocks, and a self-pipe wakes that poll when the device is closed.
 *
 * Linux only; elsewhere, and without `/dev/net/tun` or the right to create
 * devices (root or CAP_NET_ADMIN), {@linkcode TunDevice.open} throws a
 * {@linkcode TunError} that says what is missing.
 *
 * @example
 * ```ts
 * import { TunDevice } from "./tun.ts";
 * const tun = TunDevice.open("cl0");
 * const packet = new Uint8Array(65536);
 * const n = await tun.read(packet); // one IP packet, or null once closed
 * tun.close();
 * ```
 * @module
 */

import { CipherlinkError } from "../base/errors.ts";

/** TUN could not be used here; the message says what is missing. */
export class TunError extends CipherlinkError {}

/** Longest interface name Linux accepts (IFNAMSIZ less the NUL). */
export const MAX_DEVICE_NAME = 15;

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
/** _IOW('T', 202, int) */
const TUNSETIFF = 0x400454can;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
/** sizeof(struct ifreq) on Linux. */
const IFREQ_SIZE = 40;
const IFREQ_FLAGS_OFFSET = 16;
const POLLIN = 0x1;
/** sizeof(struct pollfd). */
const POLLFD_SIZE = 8;
/** Packets read in a row before the reader lets the event loop run. */
const READ_BURST = 32;
const EINTR = 4;
const ENOENT = 2;
const EPERM = 1;
const EACCES = 13;
const EAGAIN = 11;
const EBUSY = 16;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let libc: Libc | null = null;

/** Loads libc once per process; throws {@linkcode TunError} where that cannot work. */
function loadLibc(): Libc {
  if (libc) return libc;
  if (Deno.build.os !== "linux") {
    throw new TunError(`VPN mode (--tun) needs Linux; this system is ${Deno.build.os}`);
  }
  try {
    libc = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  } catch (err) {
    if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
      throw new TunError("VPN mode (--tun) needs Deno's --allow-ffi permission");
    }
    throw new TunError(`cannot load libc.so.6 for TUN access: ${(err as Error).message}`);
  }
  return libc;
}

function errno(c: Libc): number {
  const where = c.__errno_location();
  return where === null ? 0 : new Deno.UnsafePointerView(where).getInt32();
}

function describe(c: Libc, code: number): string {
  const text = c.strerror(code);
  return text === null ? `errno ${code}` : Deno.UnsafePointerView.getCString(text);
}

/** Throws {@linkcode TunError} unless `name` can be a Linux interface name. */
export function checkDeviceName(name: string): void {
  if (
    !/^[A-Za-z0-9_.-]+$/.test(name) || name.length > MAX_DEVICE_NAME || name === "." ||
    name === ".."
  ) {
    throw new TunError(
      `'${name}' is not a device name (1 to ${MAX_DEVICE_NAME} of A-Z a-z 0-9 _ . -)`,
    );
  }
}

/** An open TUN device: one IP packet per read and per write. */
export class TunDevice {
  /** The interface name. */
  readonly name: string;
  #c: Libc;
  #fd: number;
  /** Self-pipe: [read end, write end]; a byte in it wakes a pending poll. */
  #wake: [number, number];
  #pollfds = new Uint8Array(2 * POLLFD_SIZE);
  #polling = false;
  /** Reads in a row that found a packet; every READ_BURST the reader yields through poll. */
  #burst = 0;
  #closed = false;
  /** Packets the kernel would not take (write failed). */
  writeFailures = 0;

  private constructor(c: Libc, name: string, fd: number, wake: [number, number]) {
    this.#c = c;
    this.name = name;
    this.#fd = fd;
    this.#wake = wake;
    const view = new DataView(this.#pollfds.buffer);
    view.setInt32(0, fd, true);
    view.setInt16(4, POLLIN, true);
    view.setInt32(POLLFD_SIZE, wake[0], true);
    view.setInt16(POLLFD_SIZE + 4, POLLIN, true);
  }

  /**
   * Creates the TUN device `name` (or attaches to it where it already exists
   * as a TUN device). A device this process created disappears when it is
   * closed. Throws {@linkcode TunError} saying what is missing.
   */
  static open(name: string): TunDevice {
    checkDeviceName(name);
    const c = loadLibc();
    const fd = c.open(new TextEncoder().encode("/dev/net/tun\0"), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      const code = errno(c);
      if (code === ENOENT) {
        throw new TunError(
          "/dev/net/tun does not exist (load the tun module: modprobe tun; in a container, pass the device in)",
        );
      }
      if (code === EPERM || code === EACCES) {
        throw new TunError(
          "cannot open /dev/net/tun: permission denied (VPN mode needs root or CAP_NET_ADMIN)",
        );
      }
      throw new TunError(`cannot open /dev/net/tun: ${describe(c, code)}`);
    }
    const ifreq = new Uint8Array(IFREQ_SIZE);
    ifreq.set(new TextEncoder().encode(name));
    new DataView(ifreq.buffer).setUint16(IFREQ_FLAGS_OFFSET, IFF_TUN | IFF_NO_PI, true);
    if (c.ioctl(fd, TUNSETIFF, ifreq) < 0) {
      const code = errno(c);
      c.close(fd);
      if (code === EPERM || code === EACCES) {
        throw new TunError(
          `cannot create TUN device ${name}: permission denied (VPN mode needs root or CAP_NET_ADMIN)`,
        );
      }
      if (code === EBUSY) {
        throw new TunError(`cannot use device ${name}: it is in use or is not a TUN device`);
      }
      throw new TunError(`cannot create TUN device ${name}: ${describe(c, code)}`);
    }
    const pipe = new Int32Array(2);
    if (c.pipe2(new Uint8Array(pipe.buffer), O_NONBLOCK | O_CLOEXEC) < 0) {
      const code = errno(c);
      c.close(fd);
      throw new TunError(`cannot create a pipe for device ${name}: ${describe(c, code)}`);
    }
    return new TunDevice(c, name, fd, [pipe[0], pipe[1]]);
  }

  /** Whether close() has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Reads the next packet into `into` and resolves its length, or null once
   * the device is closed. A packet longer than `into` is cut by the kernel;
   * callers pass a buffer larger than the MTU and drop what fills it.
   */
  async read(into: Uint8Array): Promise<number | null> {
    if (into.byteLength === 0) throw new RangeError("read needs a non-empty buffer");
    while (!this.#closed) {
      if (++this.#burst >= READ_BURST) {
        // A device that always has a packet would never let the event loop
        // run (sends, timers): go through poll, which returns at once but
        // on another thread, once per burst.
        this.#burst = 0;
        await this.#poll();
        continue;
      }
      const n = Number(this.#c.read(this.#fd, into, BigInt(into.byteLength)));
      if (n >= 0) {
        if (n > into.byteLength) {
          throw new TunError(`read returned ${n} bytes for ${into.byteLength}`);
        }
        return n;
      }
      const code = errno(this.#c);
      if (code === EINTR) continue;
      if (code !== EAGAIN) {
        throw new TunError(`reading ${this.name} failed: ${describe(this.#c, code)}`);
      }
      this.#burst = 0;
      await this.#poll();
    }
    return null;
  }

  /**
   * Waits until the device is readable or closed. poll runs on another
   * thread, so its errno is not ours to read; a failure (EINTR) just loops.
   */
  async #poll(): Promise<void> {
    this.#polling = true;
    try {
      await this.#c.poll(this.#pollfds, 2n, -1);
    } finally {
      this.#polling = false;
    }
    if (this.#closed) this.#release();
  }

  /**
   * Writes one packet into the kernel. Returns false (and counts it) when
   * the kernel refused it: a TUN write does not wait, so there is nothing to
   * queue; the packet is dropped like a router would.
   */
  write(packet: Uint8Array): boolean {
    if (this.#closed || packet.byteLength === 0) return false;
    for (;;) {
      const n = Number(this.#c.write(this.#fd, packet, BigInt(packet.byteLength)));
      if (n === packet.byteLength) return true;
      if (n < 0 && errno(this.#c) === EINTR) continue;
      this.writeFailures++;
      return false;
    }
  }

  /**
   * Closes the device (idempotent): a pending read resolves null. A device
   * this process created is removed by the kernel with its addresses and routes.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#polling) {
      // The poll thread still uses the descriptors: wake it; read() releases them.
      this.#c.write(this.#wake[1], Uint8Array.of(1), 1n);
    } else {
      this.#release();
    }
  }

  #release(): void {
    if (this.#fd < 0) return;
    for (const fd of [this.#fd, ...this.#wake]) this.#c.close(fd);
    this.#fd = -1;
  }
}
