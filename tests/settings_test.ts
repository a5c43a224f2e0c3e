/**
 * The settings table (lib/ops/settings.ts) against what it feeds: the CLI's
 * options and `--help`, the config parser's fields, defaults and bounds, and
 * the generated tables of docs/config.md and the README.
 */

import assert from "node:assert/strict";
import { main } from "../lib/cli/cli.ts";
import { ConfigError, parseConfig, type ServerTunnelConfig } from "../lib/ops/config.ts";
import {
  ALL_SETTINGS,
  type AnySetting,
  cliSettings,
  type Command,
  ENVIRONMENT,
  HELP_ORDER,
  helpDefault,
  SETTINGS,
  tunnelFields,
} from "../lib/ops/settings.ts";
import { count, oneOf, seconds } from "../lib/ops/values.ts";
import { VPN_DEFAULT_KEEPALIVE_MS } from "../lib/tunnel/vpn_server.ts";
import { MAX_SECONDS } from "../lib/base/defaults.ts";
import { startDaemon, tempKey, within } from "./process.ts";
import { GENERATED_FILES, generatedTables, markedTables, tableCells } from "../scripts/docs.ts";

const COMMANDS: Command[] = ["server", "client"];
const FILE = "/etc/cipherlink/tunnels.json";

/** Runs the CLI in this process; resolves its exit code and output. */
async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: (text) => void (stdout += text),
    stderr: (text) => void (stderr += text),
  });
  return { code, stdout, stderr };
}

/** The option blocks of `COMMAND --help`: option name -> its line and continuation lines. */
async function helpBlocks(command: Command): Promise<Map<string, string>> {
  const { code, stdout } = await cli([command, "--help"]);
  assert.equal(code, 0);
  const blocks = new Map<string, string>();
  let current: string | null = null;
  for (const line of stdout.split("\n")) {
    const option = /^ {2}--([a-z-]+)/.exec(line);
    if (option) {
      assert.ok(!blocks.has(option[1]), `--${option[1]} is listed twice in ${command} --help`);
      current = option[1];
      blocks.set(current, line);
    } else if (current && /^ {30}\S/.test(line)) {
      blocks.set(current, `${blocks.get(current)} ${line.trim()}`);
    } else {
      current = null;
    }
  }
  return blocks;
}

function tunnel(role: Command, fields: Record<string, unknown>): string {
  const base = role === "server"
    ? { name: "t", role, listen: "127.0.0.1:0", key: "k.key" }
    : { name: "t", role, listen: "127.0.0.1:0", key: "k.key", server: "127.0.0.1:1" };
  return JSON.stringify({ tunnels: [{ ...base, ...fields }] });
}

function configProblem(text: string): string {
  try {
    parseConfig(text, FILE);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.detail;
  }
  assert.fail(`no error for ${text}`);
}

Deno.test("settings: every setting has a command-line option, a config field or both, and names are unique", () => {
  const names = new Set<string>();
  const keys = new Set<string>();
  for (const setting of ALL_SETTINGS) {
    assert.ok(setting.cli || setting.config, `${setting.name} is neither an option nor a field`);
    assert.ok(!names.has(setting.name), `two settings are called ${setting.name}`);
    names.add(setting.name);
    if (setting.config) {
      const key = `${setting.config.section ?? "tunnel"}.${setting.config.key}`;
      assert.ok(!keys.has(key), `two settings have the field ${key}`);
      keys.add(key);
      assert.ok(setting.config.roles.length > 0, `${key} is in no role`);
      const required = [setting.config.required].flat();
      if (required.some((r) => r !== undefined && r !== "no")) {
        assert.ok(setting.config.missing, `${key} is required but has no "missing" text`);
      }
    }
  }
});

Deno.test("settings: --help lists every option of server and client exactly once, in HELP_ORDER", async () => {
  for (const command of COMMANDS) {
    const listed = [...(await helpBlocks(command)).keys()];
    const expected = cliSettings(command).filter((s) => s.cli!.help !== undefined).map((s) =>
      s.name
    );
    assert.deepEqual([...listed].sort(), [...expected].sort(), `${command} --help`);
    assert.deepEqual(listed, HELP_ORDER[command]);
  }
});

Deno.test("settings: every option the table gives a command is accepted by it, and no other", async () => {
  for (const command of COMMANDS) {
    for (const setting of ALL_SETTINGS.filter((s) => s.cli)) {
      const takes = setting.cli!.commands.includes(command);
      const option = setting.cli!.metavar === undefined ? [`--${setting.name}`] : [
        `--${setting.name}`,
        "x",
      ];
      // A known option passes the check and the one after it is the error; an unknown one is.
      const { code, stderr } = await cli([command, ...option, "--zz-no-such-option"]);
      assert.equal(code, 2, `${command} --${setting.name}: ${stderr}`);
      const refused = stderr.startsWith(`cipherlink: error: --${setting.name} is `) ||
        stderr.startsWith(`cipherlink: error: unknown option --${setting.name}`);
      assert.equal(refused, !takes, `${command} --${setting.name}: ${stderr}`);
      if (takes) assert.match(stderr, /unknown option --zz-no-such-option/);
    }
  }
});

Deno.test("settings: the defaults --help shows are the table's", async () => {
  for (const command of COMMANDS) {
    const blocks = await helpBlocks(command);
    for (const setting of cliSettings(command)) {
      const block = blocks.get(setting.name);
      const shown = helpDefault(setting);
      if (block === undefined || shown === undefined) continue;
      if (typeof setting.default === "string" && setting.kind !== SETTINGS.key.kind) {
        // a word among the choices: "webcrypto (default) or openssl"
        assert.match(block, new RegExp(`\\b${setting.default} \\(default\\)`), block);
      } else {
        assert.ok(block.includes(`default ${shown}`), `${command} --${setting.name}: ${block}`);
      }
    }
  }
  const server = await helpBlocks("server");
  assert.match(server.get("max-pending")!, /default 4096\)/);
  assert.match(server.get("rekey-bytes")!, /default 2\^30\)/);
  assert.match(server.get("drain-delay")!, /default 2 with --metrics, else 0\)/);
});

Deno.test("settings: a config tunnel without optional fields gets the table's defaults", () => {
  const [server] = parseConfig(tunnel("server", {}), FILE).tunnels as ServerTunnelConfig[];
  const expected: [AnySetting, unknown][] = [
    [SETTINGS.maxConns, server.maxConns],
    [SETTINGS.handshakeTimeout, server.handshakeTimeoutMs],
    [SETTINGS.keepalive, server.keepaliveMs],
    [SETTINGS.drainTimeout, server.drainTimeoutMs],
    [SETTINGS.drainDelay, server.drainDelayMs],
    [SETTINGS.rekeyBytes, server.rekeyBytes],
    [SETTINGS.crypto, server.crypto],
    [SETTINGS.idleTimeout, server.idleTimeoutMs],
    [SETTINGS.maxPending, server.maxPending],
    [SETTINGS.maxPendingPerSource, server.maxPendingPerSource],
    [SETTINGS.helloTimeout, server.helloTimeoutMs],
  ];
  for (const [setting, actual] of expected) assert.equal(actual, setting.default, setting.name);
  // The numbers themselves, so that a changed default is a visible decision.
  assert.deepEqual(
    [server.maxConns, server.handshakeTimeoutMs, server.drainTimeoutMs, server.rekeyBytes],
    [100, 5000, 10000, 2 ** 30],
  );
  assert.deepEqual([server.maxPending, server.helloTimeoutMs], [4096, 1000]);
  const vpn = parseConfig(
    tunnel("client", {
      listen: undefined,
      mode: "vpn",
      tun: "cl0",
      tunAddresses: ["10.8.0.2/24"],
    }),
    FILE,
  ).tunnels[0];
  assert.equal(vpn.role === "client" && vpn.vpn?.mtu, SETTINGS.tunMtu.default);
});

Deno.test("settings: the command line and a config file take the same bounds, with one message each", async () => {
  for (const setting of ALL_SETTINGS) {
    if (!setting.cli?.metavar || !setting.config || setting.config.section === "log") continue;
    const role = setting.config.roles[0];
    const command = setting.cli.commands.find((c) => c === role) ?? setting.cli.commands[0];
    const kind = setting.kind as unknown;
    let highest: number;
    if (kind === seconds) highest = MAX_SECONDS;
    else if ("max" in (kind as object)) highest = (kind as ReturnType<typeof count>).max;
    else continue;
    const other = setting.name.startsWith("tun")
      ? { tun: "cl0", tunAddresses: ["10.8.0.1/24"] }
      : {};
    const cliArgs = setting.name.startsWith("tun")
      ? ["--tun", "cl0", "--tun-address", "10.8.0.1/24"]
      : [];
    // past the bound: refused by both, naming the same range
    const past = highest + 1;
    const fromFile = configProblem(tunnel(role, { ...other, [setting.config.key]: past }));
    const fromCli = await cli([command, ...cliArgs, `--${setting.name}`, String(past)]);
    assert.equal(fromCli.code, 2, fromCli.stderr);
    const range = /(a (?:whole )?number (?:of seconds )?from \S+ to \d+)/.exec(fromFile)?.[1];
    assert.ok(range, fromFile);
    assert.ok(
      fromCli.stderr.includes(`--${setting.name} takes ${range}, not '${past}'`),
      `${setting.name}: ${fromCli.stderr} vs ${fromFile}`,
    );
    assert.equal(fromFile, `must be ${range}, not ${past}`);
    // at the bound: accepted by the file
    parseConfig(tunnel(role, { ...other, [setting.config.key]: highest }), FILE);
  }
});

Deno.test("settings: the value kinds read text and JSON alike", () => {
  assert.equal(seconds.fromText("1.5", "x"), 1500);
  assert.equal(seconds.fromJson(1.5), 1500);
  assert.throws(() => seconds.fromText(" ", "x"), /--x takes a number of seconds/);
  assert.throws(() => seconds.fromJson("1"), /must be a number of seconds .*, not '1'/);
  const words = oneOf(["a", "b"] as const);
  assert.throws(() => words.fromText("c", "w"), /^UsageError: --w takes one of a, b, not 'c'$/);
  assert.throws(() => words.fromJson("c"), /must be one of "a", "b", not 'c'/);
  assert.throws(() => words.fromJson(1), /must be a string, not 1/);
  assert.throws(() => count(1, 9).fromText("1e1", "n"), /--n takes a whole number from 1 to 9/);
  assert.throws(() => count(1, 9).fromJson(1.5), /must be a whole number from 1 to 9, not 1.5/);
});

Deno.test("settings: config files know every field of the table, and only those", () => {
  for (const role of COMMANDS) {
    const fields = tunnelFields(role).map((s) => s.config!.key);
    const detail = configProblem(tunnel(role, { notAField: 1 }));
    assert.equal(detail, `unknown field; allowed here: ${fields.join(", ")}`);
  }
});

Deno.test("settings: the environment variables the settings name are the ones the help and README list", async () => {
  const named = new Set(ALL_SETTINGS.flatMap((s) => s.env ?? []));
  assert.deepEqual([...named].sort(), ENVIRONMENT.map((v) => v.name).sort());
  const { stdout } = await cli(["--help"]);
  for (const variable of ENVIRONMENT) assert.ok(stdout.includes(variable.name), variable.name);
});

Deno.test("settings: the committed docs' option tables are what deno task docs makes", async () => {
  const tables = generatedTables();
  const seen = new Set<string>();
  for (const file of GENERATED_FILES) {
    const text = await Deno.readTextFile(new URL(`../${file}`, import.meta.url));
    for (const [name, table] of Object.entries(markedTables(text))) {
      assert.ok(tables[name], `${file}: no generated table is called ${name}`);
      assert.deepEqual(
        tableCells(table),
        tableCells(tables[name]),
        `${file}: table ${name} is out of date: run deno task docs`,
      );
      seen.add(name);
    }
  }
  assert.deepEqual([...seen].sort(), Object.keys(tables).sort(), "a generated table has no place");
  // Each config field appears in a generated table.
  const documented = Object.values(tables).join("\n");
  for (const setting of ALL_SETTINGS.filter((s) => s.config)) {
    assert.ok(documented.includes(`| \`${setting.config!.key}\` |`), setting.config!.key);
  }
});

Deno.test("settings: a server started with no options runs with the table's defaults", async () => {
  const key = await tempKey();
  // Only the address comes from the environment (never a fixed port); everything else is default.
  const server = await startDaemon(["server"], {
    CIPHERLINK_KEY_FILE: key.path,
    CIPHERLINK_SERVER_HOST: "127.0.0.1",
    CIPHERLINK_SERVER_PORT: "0",
  });
  try {
    const listening = server.lines.find((line) => line.includes("listening on"))!;
    // log format text, level info; echo service (no --forward); the default crypto provider
    assert.match(listening, /^\S+Z INFO +listening on 127\.0\.0\.1:\d+ /);
    assert.match(listening, / service=echo /);
    assert.ok(listening.includes(`crypto=${SETTINGS.crypto.default}`), listening);
    // A connection that never sends message 1 is closed after the default hello timeout,
    // well before the handshake timeout would end it.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    const started = performance.now();
    const read = await within(conn.read(new Uint8Array(1)), 10_000, "the server closing");
    const elapsed = performance.now() - started;
    conn.close();
    assert.equal(read, null);
    assert.ok(elapsed >= SETTINGS.helloTimeout.default - 50, `closed after ${elapsed} ms`);
    assert.ok(elapsed < SETTINGS.handshakeTimeout.default, `closed after ${elapsed} ms`);
  } finally {
    await server.stop();
    await key.cleanup();
  }
});

Deno.test("settings: the README's VPN options table names the table's VPN options, bounds and defaults", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const section = readme.slice(readme.indexOf("## VPN mode"), readme.indexOf("### Walkthrough"));
  for (const setting of [SETTINGS.tun, SETTINGS.tunAddresses, SETTINGS.routes, SETTINGS.tunMtu]) {
    assert.ok(section.includes(`| \`--${setting.name} ${setting.cli!.metavar}\``), setting.name);
  }
  const mtu = SETTINGS.tunMtu.kind as ReturnType<typeof count>;
  assert.ok(
    section.includes(`${mtu.min} to ${mtu.max} (default ${SETTINGS.tunMtu.default})`),
    "the --tun-mtu row",
  );
  assert.ok(section.includes(`defaults to ${VPN_DEFAULT_KEEPALIVE_MS / 1000}`), "--keepalive row");
});
