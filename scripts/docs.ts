/**
 * `deno task docs`: writes the option tables of docs/config.md (the config
 * fields of every tunnel, of server and client tunnels, of `log`) and the
 * README's environment-variable table from the settings table
 * (lib/ops/settings.ts), between `<!-- BEGIN settings:NAME -->` and
 * `<!-- END settings:NAME -->` markers; the prose around them is
 * hand-written. tests/settings_test.ts fails when the committed files differ
 * from what this makes. `--check` only reports the difference.
 *
 * @example
 * ```sh
 * deno task docs           # rewrite the tables, then deno fmt them
 * deno task docs --check   # exit 1 if a table is out of date
 * ```
 * @module
 */

import {
  type AnySetting,
  type Command,
  ENVIRONMENT,
  forCommand,
  logFields,
  tunnelFields,
} from "../lib/ops/settings.ts";

/** The files that hold generated tables, relative to the repository. */
export const GENERATED_FILES = ["docs/config.md", "README.md"] as const;

/** A table's markers: its name, and the rows it holds. */
type Rows = string[][];

function row(cells: string[]): string {
  return `| ${cells.join(" | ")} |`;
}

/** A markdown table (deno fmt pads it afterwards; the test compares cells, not padding). */
export function markdownTable(header: string[], rows: Rows): string {
  return [row(header), row(header.map(() => "---")), ...rows.map(row)].join("\n");
}

/** Whether a field is the same for both roles (it goes in the "every tunnel" table). */
function everyTunnel(setting: AnySetting): boolean {
  const config = setting.config!;
  return config.roles.length === 2 && typeof config.doc === "string" &&
    (config.required === undefined || typeof config.required === "string");
}

/** A setting's default as the docs show it: the value in JSON (seconds in seconds). */
function shownDefault(setting: AnySetting, role: Command): string {
  const value = setting.default === undefined
    ? ""
    : typeof setting.default === "string"
    ? `\`${JSON.stringify(setting.default)}\``
    : `\`${setting.kind.show(setting.default)}\``;
  const template = forCommand(setting.config!.docDefault, role);
  return template === undefined ? value : template.replaceAll("{default}", value);
}

function fieldRow(setting: AnySetting, role: Command, withRequired: boolean): string[] {
  const config = setting.config!;
  return [
    `\`${config.key}\``,
    ...(withRequired ? [forCommand(config.required, role) ?? "no"] : []),
    shownDefault(setting, role),
    forCommand(config.doc, role) ?? "",
  ];
}

function fieldTable(settings: AnySetting[], role: Command): string {
  const withRequired = settings.some((s) =>
    (forCommand(s.config!.required, role) ?? "no") !== "no"
  );
  const header = ["field", ...(withRequired ? ["required"] : []), "default", "meaning"];
  return markdownTable(header, settings.map((s) => fieldRow(s, role, withRequired)));
}

/** Every generated table by marker name. */
export function generatedTables(): Record<string, string> {
  return {
    "every-tunnel": fieldTable(tunnelFields("server").filter(everyTunnel), "server"),
    "server-tunnel": fieldTable(
      tunnelFields("server").filter((s) => !everyTunnel(s)),
      "server",
    ),
    "client-tunnel": fieldTable(
      tunnelFields("client").filter((s) => !everyTunnel(s)),
      "client",
    ),
    "log": fieldTable(logFields(), "server"),
    "environment": markdownTable(
      ["variable", "default it sets"],
      ENVIRONMENT.map((variable) => [`\`${variable.name}\``, variable.doc]),
    ),
  };
}

const MARKERS = /<!-- BEGIN settings:([a-z-]+) -->\n+([\s\S]*?)\n+<!-- END settings:\1 -->/g;

/** `text` with every marked table replaced by the generated one; throws for an unknown name. */
export function withGeneratedTables(text: string, tables = generatedTables()): string {
  return text.replace(MARKERS, (_, name: string) => {
    const table = tables[name];
    if (table === undefined) throw new Error(`no generated table is called '${name}'`);
    return `<!-- BEGIN settings:${name} -->\n\n${table}\n\n<!-- END settings:${name} -->`;
  });
}

/** The marked tables of `text`, by name. */
export function markedTables(text: string): Record<string, string> {
  return Object.fromEntries([...text.matchAll(MARKERS)].map((m) => [m[1], m[2]]));
}

/** A table's cells without the padding deno fmt adds, for comparing. */
export function tableCells(table: string): string[][] {
  return table.trim().split("\n").map((line) =>
    line.trim().replace(/^\||\|$/g, "").split(/(?<!\\)\|/).map((cell) => {
      const trimmed = cell.trim();
      return /^:?-+:?$/.test(trimmed) ? "---" : trimmed;
    })
  );
}

if (import.meta.main) {
  const check = Deno.args.includes("--check");
  const root = new URL("../", import.meta.url);
  let stale = 0;
  for (const file of GENERATED_FILES) {
    const url = new URL(file, root);
    const text = await Deno.readTextFile(url);
    const tables = generatedTables();
    const marked = markedTables(text);
    const differs = Object.entries(marked).some(([name, table]) =>
      JSON.stringify(tableCells(table)) !== JSON.stringify(tableCells(tables[name] ?? ""))
    );
    if (!differs) continue;
    stale++;
    if (check) {
      console.error(`${file}: a generated table is out of date (run deno task docs)`);
      continue;
    }
    await Deno.writeTextFile(url, withGeneratedTables(text, tables));
    const fmt = await new Deno.Command(Deno.execPath(), { args: ["fmt", url.pathname] }).output();
    if (!fmt.success) throw new Error(`deno fmt ${file} failed`);
    console.log(`${file}: tables rewritten`);
  }
  if (check && stale > 0) Deno.exit(1);
}
