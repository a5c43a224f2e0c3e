/**
 * The tunnels under test and how to run each as a port forward on
 * 127.0.0.1 (local port -> tunnel client -> tunnel server -> target):
 * Cipherlink from source, stunnel4 (TLS), spiped and shadowsocks-libev
 * (ss-tunnel + ss-server, aes-256-gcm). Each knows whether it is installed,
 * its version, and how to start its two processes and wait until they accept.
 * @module
 */

import { type CryptoProviderName, loadCryptoProvider } from "../../lib/protocol/crypto/select.ts";
import { capture, type Child, freePort, type Registry, waitForPort, which } from "./procs.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const LAUNCHER = new URL("../../cipherlink", import.meta.url).pathname;

/** What a tunnel's processes need to know. */
export interface TunnelContext {
  registry: Registry;
  /** A private temporary folder for keys, certificates and configuration. */
  tmp: string;
  /** Where the tunnel server forwards to. */
  targetPort: number;
  /** Connection limit to configure on both sides (idle sessions plus headroom). */
  maxConns: number;
  /** Open-file limit to ask for where a program takes one. */
  fileLimit: number;
}

/** Two running tunnel processes and the local port that enters the tunnel. */
export interface RunningTunnel {
  localPort: number;
  server: Child;
  client: Child;
  /** Stops both processes (client first) and awaits their exit. */
  stop(): Promise<void>;
}

/** Whether a tunnel can run here: its programs and version, or why not. */
export type Detection =
  | { available: true; version: string; programs: Record<string, string> }
  | { available: false; reason: string };

/** One tunnel implementation. */
export interface Tunnel {
  /** Short name for --only, the JSON and the chart. */
  name: string;
  /** What the table calls it. */
  label: string;
  detect(): Promise<Detection>;
  start(ctx: TunnelContext, programs: Record<string, string>): Promise<RunningTunnel>;
}

function running(server: Child, client: Child, localPort: number): RunningTunnel {
  return {
    localPort,
    server,
    client,
    async stop() {
      await client.stop();
      await server.stop();
    },
  };
}

/** Starts the server-side process, then the client-side one; stops the first if the second fails. */
async function startPair(
  startServer: () => Promise<Child>,
  startClient: () => Promise<{ child: Child; port: number }>,
): Promise<RunningTunnel> {
  const server = await startServer();
  try {
    const { child, port } = await startClient();
    return running(server, child, port);
  } catch (err) {
    await server.stop();
    throw err;
  }
}

/** A process to start, and the port it accepts on once it is ready. */
interface Listening {
  name: string;
  argv: string[];
  port: number;
}

/**
 * Starts `server` and waits until its port accepts, then the same for
 * `client`, whose port enters the tunnel; stops the server if the client fails.
 */
function listeningPair(
  ctx: TunnelContext,
  server: Listening,
  client: Listening,
): Promise<RunningTunnel> {
  return startPair(
    () => spawnListening(ctx, server.name, server.argv, server.port),
    async () => ({
      child: await spawnListening(ctx, client.name, client.argv, client.port),
      port: client.port,
    }),
  );
}

/** Spawns and waits for the port to accept; stops the process if it never does. */
async function spawnListening(
  ctx: TunnelContext,
  name: string,
  argv: string[],
  port: number,
): Promise<Child> {
  const child = ctx.registry.spawn(name, argv, { cwd: ctx.tmp });
  try {
    await waitForPort(port, child);
  } catch (err) {
    await child.stop();
    throw err;
  }
  return child;
}

async function writeKey(path: string, bytes = 32): Promise<void> {
  await Deno.writeFile(path, crypto.getRandomValues(new Uint8Array(bytes)), { mode: 0o600 });
}

/**
 * Cipherlink with one crypto provider: `webcrypto` (the default) or
 * `openssl` (OpenSSL 3 through FFI), passed to both processes as --crypto.
 */
function cipherlink(provider: CryptoProviderName): Tunnel {
  return {
    name: provider === "webcrypto" ? "cipherlink" : `cipherlink-${provider}`,
    label: `Cipherlink (${provider})`,
    async detect() {
      const output = await capture([Deno.execPath(), "run", "--quiet", "-A", MAIN, "--version"]);
      const version = /cipherlink (\S+)/.exec(output)?.[1];
      if (!version) return { available: false, reason: `main.ts --version said: ${output.trim()}` };
      if (provider !== "webcrypto") {
        try {
          loadCryptoProvider(provider);
        } catch (err) {
          return { available: false, reason: (err as Error).message };
        }
      }
      return {
        available: true,
        version: `cipherlink ${version} --crypto ${provider}`,
        programs: {},
      };
    },
    async start(ctx) {
      const key = `${ctx.tmp}/cipherlink.key`;
      await writeKey(key);
      const common = [
        "--key",
        key,
        "--max-conns",
        String(ctx.maxConns),
        "--drain-timeout",
        "1",
        "--crypto",
        provider,
      ];
      const spawn = async (name: string, args: string[]) => {
        // Through the launcher, as users run it: its permissions (FFI only
        // for libcrypto with --crypto openssl) and its V8 settings.
        const child = ctx.registry.spawn(name, [LAUNCHER, ...args, ...common], { cwd: ctx.tmp });
        try {
          const line = await child.waitForLine(/listening on /);
          const port = Number(/listening on \S*:(\d+)/.exec(line)?.[1]);
          if (!port) throw child.failure(`no port in '${line}'`);
          return { child, port };
        } catch (err) {
          await child.stop();
          throw err;
        }
      };
      let serverPort = 0;
      return await startPair(
        async () => {
          const server = await spawn("cipherlink server", [
            "server",
            "--listen",
            "127.0.0.1:0",
            "--forward",
            `127.0.0.1:${ctx.targetPort}`,
          ]);
          serverPort = server.port;
          return server.child;
        },
        () =>
          spawn("cipherlink client", [
            "client",
            "--listen",
            "127.0.0.1:0",
            "--server",
            `127.0.0.1:${serverPort}`,
          ]),
      );
    },
  };
}

const stunnel: Tunnel = {
  name: "stunnel",
  label: "stunnel4 (TLS)",
  async detect() {
    const program = (await which("stunnel4")) ?? (await which("stunnel"));
    if (!program) return { available: false, reason: "stunnel4/stunnel not installed" };
    const openssl = await which("openssl");
    if (!openssl) {
      return { available: false, reason: "openssl (for a throwaway certificate) not installed" };
    }
    const output = await capture([program, "-version"]);
    const version = /stunnel (\S+)/.exec(output)?.[1] ?? "?";
    const tls = /Running\s+with (OpenSSL \S+)/.exec(output)?.[1];
    return {
      available: true,
      version: `stunnel ${version}${tls ? ` (${tls})` : ""}`,
      programs: { stunnel: program, openssl },
    };
  },
  async start(ctx, programs) {
    const cert = `${ctx.tmp}/stunnel-cert.pem`;
    const key = `${ctx.tmp}/stunnel-key.pem`;
    await run(programs.openssl, [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-subj",
      "/CN=bench",
      "-days",
      "1",
      "-keyout",
      key,
      "-out",
      cert,
    ]);
    const serverPort = freePort();
    const localPort = freePort();
    const nodelay = "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
    // Logs go to stderr (drained like everyone else's), not also to syslog: without a
    // syslog daemon glibc falls back to /dev/console, a serial port on a VM, and every
    // connection's log lines would cost stunnel milliseconds that have nothing to do with TLS.
    const global = "foreground = yes\npid =\nsyslog = no\n";
    const serverConf = `${ctx.tmp}/stunnel-server.conf`;
    await Deno.writeTextFile(
      serverConf,
      `${global}[bench-server]\naccept = 127.0.0.1:${serverPort}\n` +
        `connect = 127.0.0.1:${ctx.targetPort}\ncert = ${cert}\nkey = ${key}\n${nodelay}`,
    );
    const clientConf = `${ctx.tmp}/stunnel-client.conf`;
    await Deno.writeTextFile(
      clientConf,
      `${global}[bench-client]\nclient = yes\naccept = 127.0.0.1:${localPort}\n` +
        `connect = 127.0.0.1:${serverPort}\nCAfile = ${cert}\nverifyPeer = yes\n${nodelay}`,
    );
    return await listeningPair(
      ctx,
      { name: "stunnel server", argv: [programs.stunnel, serverConf], port: serverPort },
      { name: "stunnel client", argv: [programs.stunnel, clientConf], port: localPort },
    );
  },
};

const spiped: Tunnel = {
  name: "spiped",
  label: "spiped",
  async detect() {
    const program = await which("spiped");
    if (!program) return { available: false, reason: "spiped not installed" };
    const output = await capture([program, "-v"]);
    return {
      available: true,
      version: /spiped \S+/.exec(output)?.[0] ?? "spiped ?",
      programs: { spiped: program },
    };
  },
  async start(ctx, programs) {
    const key = `${ctx.tmp}/spiped.key`;
    await writeKey(key);
    const serverPort = freePort();
    const localPort = freePort();
    const common = ["-k", key, "-F", "-n", String(ctx.maxConns)];
    return await listeningPair(
      ctx,
      {
        name: "spiped -d",
        argv: [
          programs.spiped,
          "-d",
          "-s",
          `[127.0.0.1]:${serverPort}`,
          "-t",
          `[127.0.0.1]:${ctx.targetPort}`,
          ...common,
        ],
        port: serverPort,
      },
      {
        name: "spiped -e",
        argv: [
          programs.spiped,
          "-e",
          "-s",
          `[127.0.0.1]:${localPort}`,
          "-t",
          `[127.0.0.1]:${serverPort}`,
          ...common,
        ],
        port: localPort,
      },
    );
  },
};

const shadowsocks: Tunnel = {
  name: "shadowsocks",
  label: "shadowsocks-libev",
  async detect() {
    const server = await which("ss-server");
    const tunnel = await which("ss-tunnel");
    if (!server || !tunnel) {
      return { available: false, reason: "ss-server/ss-tunnel not installed" };
    }
    const output = await capture([server, "-h"]);
    return {
      available: true,
      version: /shadowsocks-libev \S+/.exec(output)?.[0] ?? "shadowsocks-libev ?",
      programs: { server, tunnel },
    };
  },
  async start(ctx, programs) {
    const password = Array.from(
      crypto.getRandomValues(new Uint8Array(16)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    const serverPort = freePort();
    const localPort = freePort();
    const common = [
      "-k",
      password,
      "-m",
      "aes-256-gcm",
      "-n",
      String(ctx.fileLimit),
      "--no-delay",
    ];
    return await listeningPair(
      ctx,
      {
        name: "ss-server",
        argv: [
          programs.server,
          "-s",
          "127.0.0.1",
          "-p",
          String(serverPort),
          ...common,
        ],
        port: serverPort,
      },
      {
        name: "ss-tunnel",
        argv: [
          programs.tunnel,
          "-s",
          "127.0.0.1",
          "-p",
          String(serverPort),
          "-b",
          "127.0.0.1",
          "-l",
          String(localPort),
          "-L",
          `127.0.0.1:${ctx.targetPort}`,
          ...common,
        ],
        port: localPort,
      },
    );
  },
};

/** Runs a command to completion (bounded); throws with its stderr when it fails. */
async function run(program: string, args: string[]): Promise<void> {
  const done = await new Deno.Command(program, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  if (!done.success) {
    throw new Error(
      `${program} ${args[0]} failed: ${new TextDecoder().decode(done.stderr).trim()}`,
    );
  }
}

/**
 * OpenSSH port forwarding (`ssh -N -L`, aes128-gcm@openssh.com), the tunnel
 * most people reach for first: a throwaway sshd on 127.0.0.1 with its own
 * host key, authorized_keys and config in the temp folder, key auth only.
 * New connections are channels over the one ssh connection (no handshake
 * each), and sshd serves them from a forked per-connection process: its
 * memory row counts that process.
 */
const openssh: Tunnel = {
  name: "ssh",
  label: "OpenSSH (ssh -L)",
  async detect() {
    const sshd = await which("sshd") ?? (await Deno.stat("/usr/sbin/sshd").then(
      () => "/usr/sbin/sshd",
      () => null,
    ));
    const ssh = await which("ssh");
    const keygen = await which("ssh-keygen");
    if (!sshd || !ssh || !keygen) {
      return { available: false, reason: "openssh-server/openssh-client not installed" };
    }
    const output = await capture([ssh, "-V"]);
    return {
      available: true,
      version: /OpenSSH_\S+/.exec(output)?.[0]?.replace(/,$/, "") ?? "OpenSSH ?",
      programs: { sshd, ssh, keygen },
    };
  },
  async start(ctx, programs) {
    const hostKey = `${ctx.tmp}/ssh_host_ed25519_key`;
    const userKey = `${ctx.tmp}/id_ed25519`;
    await run(programs.keygen, ["-q", "-t", "ed25519", "-N", "", "-f", hostKey]);
    await run(programs.keygen, ["-q", "-t", "ed25519", "-N", "", "-f", userKey]);
    const authorized = `${ctx.tmp}/authorized_keys`;
    await Deno.copyFile(`${userKey}.pub`, authorized);
    await Deno.chmod(authorized, 0o600);
    const user = Deno.env.get("USER") ?? (Deno.uid() === 0 ? "root" : "");
    const serverPort = freePort();
    const localPort = freePort();
    const config = `${ctx.tmp}/sshd_config`;
    await Deno.writeTextFile(
      config,
      [
        `ListenAddress 127.0.0.1:${serverPort}`,
        `HostKey ${hostKey}`,
        `AuthorizedKeysFile ${authorized}`,
        `PidFile ${ctx.tmp}/sshd.pid`,
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "Ciphers aes128-gcm@openssh.com",
        `MaxStartups ${ctx.maxConns}`,
        `MaxSessions ${ctx.maxConns}`,
        "LogLevel ERROR",
        "",
      ].join("\n"),
    );
    return await listeningPair(
      ctx,
      // -D: no daemon; -e: log to stderr. sshd insists on its absolute path.
      { name: "sshd", argv: [programs.sshd, "-D", "-e", "-f", config], port: serverPort },
      {
        name: "ssh -L",
        argv: [
          programs.ssh,
          "-N",
          "-T",
          "-F",
          "/dev/null",
          "-i",
          userKey,
          "-p",
          String(serverPort),
          "-c",
          "aes128-gcm@openssh.com",
          "-o",
          "BatchMode=yes",
          "-o",
          "IdentitiesOnly=yes",
          "-o",
          "StrictHostKeyChecking=no",
          "-o",
          `UserKnownHostsFile=${ctx.tmp}/known_hosts`,
          "-o",
          "ExitOnForwardFailure=yes",
          "-L",
          `127.0.0.1:${localPort}:127.0.0.1:${ctx.targetPort}`,
          `${user}@127.0.0.1`,
        ],
        port: localPort,
      },
    );
  },
};

/** Every tunnel, Cipherlink (both crypto providers) first. */
export const TUNNELS: readonly Tunnel[] = [
  cipherlink("webcrypto"),
  cipherlink("openssl"),
  stunnel,
  spiped,
  shadowsocks,
  openssh,
];
