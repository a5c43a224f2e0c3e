/**
 * `cipherlink client --connect HOST:PORT` in pipe mode as ssh's ProxyCommand,
 * with real processes on 127.0.0.1: stdin/stdout carry the stream, stdin's
 * EOF half-closes it while the reply keeps flowing, a ProxyCommand killed the
 * way ssh kills it on exit releases the server's session and the target, and
 * a real OpenSSH client logs in to a real sshd through the tunnel (needs
 * openssh-server and openssh-client).
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  cipherlinkArgv,
  freePort,
  LineLog,
  runArgv,
  type ServerProcess,
  startServerProcess,
  waitForLineWithin,
  within,
} from "./process.ts";
import { randomBytes, sha256Hex } from "./helpers.ts";

const SSHD = "/usr/sbin/sshd";
const SSH = "/usr/bin/ssh";
const SSH_KEYGEN = "/usr/bin/ssh-keygen";
const encoder = new TextEncoder();

/** What the banner-and-hash service saw of its one connection. */
interface Seen {
  bytes: number;
  sha: string;
}

/**
 * A one-connection TCP service shaped like an ssh server's first moves: it
 * sends `banner`, reads until EOF, then replies with the SHA-256 (hex and a
 * newline) of what it read, and closes. The reply can only exist if the
 * peer half-closed and kept reading.
 */
function bannerHashService(banner: string): {
  port: number;
  seen: Promise<Seen>;
  close(): void;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const seen = (async () => {
    const conn = await listener.accept();
    try {
      await writeAll(conn, encoder.encode(banner));
      const hash = createHash("sha256");
      const buffer = new Uint8Array(256 * 1024);
      let bytes = 0;
      for (let n; (n = await conn.read(buffer)) !== null;) {
        hash.update(buffer.subarray(0, n));
        bytes += n;
      }
      const sha = hash.digest("hex");
      await writeAll(conn, encoder.encode(`${sha}\n`));
      return { bytes, sha };
    } finally {
      conn.close();
    }
  })();
  return {
    port: listener.addr.port,
    seen,
    close: () => listener.close(),
  };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

Deno.test("proxycommand: pipe mode carries banner, 6 MiB up, and the reply sent after stdin's EOF", async () => {
  const banner = "SSH-2.0-banner-hash-service\r\n";
  const service = bannerHashService(banner);
  let served: ServerProcess | undefined;
  try {
    served = await startServerProcess({ server: ["--allow", `127.0.0.1:${service.port}`] });
    const server = served.server;
    const upload = randomBytes(6 * 1024 * 1024 + 5);
    const result = await runArgv(
      cipherlinkArgv(served.clientArgs("--connect", `127.0.0.1:${service.port}`)),
      { stdin: upload, ms: 20_000 },
    );
    const seen = await within(service.seen, 5000, "the service's reply");
    // The service saw stdin's EOF and every byte before it; the EOF was a
    // half-close, since the reply it sent afterwards still reached stdout
    // before the client exited 0.
    assert.equal(seen.bytes, upload.byteLength);
    assert.equal(seen.sha, await sha256Hex(upload));
    assert.equal(result.stdout, `${banner}${seen.sha}\n`);
    assert.equal(result.code, 0, result.stderr);
    assert.doesNotMatch(result.stderr, /error/);
    await waitForLineWithin(
      server,
      new RegExp(`session end .*bytes_in=${upload.byteLength} .*outcome=ok`),
    );
  } finally {
    service.close();
    await served?.stop();
    await service.seen.catch(() => {});
  }
});

async function endProxyCommandWith(signal: "SIGHUP" | "SIGKILL"): Promise<void> {
  // The target sends a banner, then only listens: nothing it does would end
  // the session, so the server must end it when the tunnel dies.
  const banner = "SSH-2.0-idle-target\r\n";
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" });
  const targetEnded = (async () => {
    const conn = await listener.accept();
    try {
      await writeAll(conn, encoder.encode(banner));
      const buffer = new Uint8Array(65536);
      while (await conn.read(buffer) !== null) {
        // Discard; only the end matters.
      }
      return "eof";
    } catch {
      return "reset";
    } finally {
      conn.close();
    }
  })();
  let served: ServerProcess | undefined;
  let client: Deno.ChildProcess | undefined;
  let clientLog: LineLog | undefined;
  try {
    served = await startServerProcess({ server: ["--allow", `127.0.0.1:${listener.addr.port}`] });
    const server = served.server;
    const [command, ...args] = cipherlinkArgv(
      served.clientArgs("--connect", `127.0.0.1:${listener.addr.port}`),
    );
    client = new Deno.Command(command, { args, stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
    clientLog = new LineLog(client.stderr, 5000);
    const stdout = client.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let received = "";
    while (received.length < banner.length) {
      const { value, done } = await stdout.read();
      if (done) break;
      received += value;
    }
    await stdout.cancel();
    assert.equal(received, banner, "the session is up before the client is killed");

    client.kill(signal);
    if (signal === "SIGHUP") {
      // Hung up like ssh does: a clean end, CLOSE both ways, exit 0.
      assert.equal((await client.status).code, 0);
      assert.equal(await within(targetEnded, 5000, "the target's connection ends"), "eof");
      await waitForLineWithin(server, /session end .*outcome=ok/);
    } else {
      // Killed outright: the server sees a truncated stream and lets the target go.
      assert.equal((await client.status).signal, "SIGKILL");
      assert.match(
        await within(targetEnded, 5000, "the target's connection ends"),
        /^(eof|reset)$/,
      );
      await waitForLineWithin(server, /session end .*outcome=error error="stream truncated/);
    }
  } finally {
    if (client) {
      await client.stdin.close().catch(() => {});
      try {
        client.kill("SIGKILL");
      } catch {
        // Already exited.
      }
      await client.status;
      await clientLog?.close();
    }
    listener.close();
    // Killed outright: if this test failed, the server may be the stuck part.
    await served?.stop("SIGKILL");
    await targetEnded.catch(() => {});
  }
}

Deno.test("proxycommand: SIGHUP (ssh ending its ProxyCommand) closes the session cleanly, exit 0", () =>
  endProxyCommandWith("SIGHUP"));

Deno.test("proxycommand: a ProxyCommand killed outright ends the server's session and the target's connection", () =>
  endProxyCommandWith("SIGKILL"));

/** Fails with the package to install when an OpenSSH program is missing. */
async function requireOpenSsh(): Promise<void> {
  const programs = [[SSHD, "openssh-server"], [SSH, "openssh-client"], [
    SSH_KEYGEN,
    "openssh-client",
  ]];
  for (const [path, pkg] of programs) {
    try {
      await Deno.stat(path);
    } catch {
      throw new Error(`${path} is missing; install it with: apt-get install -y ${pkg}`);
    }
  }
}

/** Runs a helper program to completion; asserts it succeeded; resolves its stdout. */
async function run(command: string, args: string[]): Promise<string> {
  const { code, stdout, stderr } = await runArgv([command, ...args], { ms: 20_000 });
  assert.equal(code, 0, `${command} ${args.join(" ")}: ${stderr}`);
  return stdout;
}

/** Single-quotes `word` for the POSIX shell ssh runs ProxyCommand with. */
function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** A foreground sshd on 127.0.0.1 and its log. */
interface Sshd {
  port: number;
  log: LineLog;
  stop(): Promise<void>;
}

/**
 * Starts `sshd -D -e` with a throwaway config in `dir` that admits only
 * `userPublicKey`; resolves once it logged "Server listening".
 */
async function startSshd(dir: string, userPublicKey: string): Promise<Sshd> {
  const port = freePort();
  await run(SSH_KEYGEN, ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/host_key`]);
  await Deno.writeTextFile(`${dir}/authorized_keys`, userPublicKey, { mode: 0o600 });
  await Deno.writeTextFile(
    `${dir}/sshd_config`,
    [
      "ListenAddress 127.0.0.1",
      `Port ${port}`,
      `HostKey ${dir}/host_key`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      `PidFile ${dir}/sshd.pid`,
      "UsePAM no",
      "StrictModes no",
      "PermitRootLogin prohibit-password",
      "PubkeyAuthentication yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      // VERBOSE: sshd logs a connection that closes without a disconnect message.
      "LogLevel VERBOSE",
      "",
    ].join("\n"),
  );
  // The privilege-separation directory sshd insists on when it runs as root.
  if (Deno.uid() === 0) await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const process = new Deno.Command(SSHD, {
    args: ["-D", "-e", "-f", `${dir}/sshd_config`],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const log = new LineLog(process.stderr, 5000);
  const stop = async () => {
    try {
      process.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    await process.status;
    await log.close();
  };
  const exited = process.status.then((status) => {
    throw new Error(`sshd exited with ${status.code} before listening:\n${log.lines.join("\n")}`);
  });
  exited.catch(() => {});
  try {
    await Promise.race([log.waitFor(/Server listening on 127\.0\.0\.1 port/), exited]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, log, stop };
}

Deno.test("proxycommand: a real ssh logs in to a real sshd through the tunnel", async () => {
  await requireOpenSsh();
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-ssh-" });
  let sshd: Sshd | undefined;
  let served: ServerProcess | undefined;
  try {
    await run(SSH_KEYGEN, ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/user_key`]);
    sshd = await startSshd(dir, await Deno.readTextFile(`${dir}/user_key.pub`));
    served = await startServerProcess({ server: ["--allow", `127.0.0.1:${sshd.port}`] });
    const server = served.server;
    const proxyCommand = [
      ...cipherlinkArgv(served.clientArgs()).map(shellQuote),
      "--connect",
      "%h:%p",
    ].join(" ");
    const user = (await run("id", ["-un"])).trim();
    const ssh = await runArgv(
      [
        SSH,
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        `ProxyCommand=${proxyCommand}`,
        "-i",
        `${dir}/user_key`,
        "-p",
        String(sshd.port),
        `${user}@127.0.0.1`,
        "echo tunnelled-ok",
      ],
      { ms: 20_000 },
    );
    assert.equal(ssh.code, 0, `ssh: ${ssh.stderr}\nsshd:\n${sshd.log.lines.join("\n")}`);
    assert.equal(ssh.stdout, "tunnelled-ok\n");
    // It went through the tunnel: the server opened the session to sshd
    // (ssh never connects by itself when it has a ProxyCommand)...
    const target = `target=127.0.0.1:${sshd.port}`;
    assert.ok(
      server.lines.some((l) => l.includes("session open") && l.includes(target)),
      server.lines.join("\n"),
    );
    await sshd.log.waitFor(/Accepted publickey for \S+ from 127\.0\.0\.1 /);
    // ...and both ends let go once ssh was done. ssh SIGHUPs its ProxyCommand
    // as it exits, so the session may end truncated rather than with CLOSE.
    await waitForLineWithin(server, /session end .*outcome=(ok|error)/);
    await sshd.log.waitFor(/(Disconnected from|Connection closed by|Connection reset by) /);
  } finally {
    await served?.stop();
    await sshd?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
