/**
 * The layers of lib/ (README, "Development"): every module lives in a layer
 * folder, and imports only from its own layer and the layers below it, with
 * no import cycle between folders; lib/ takes nothing from outside it but the
 * runtime's `node:` modules. The imports are read from Deno's own module graph
 * (`deno info --json`), so type-only and dynamic imports count as well.
 * @module
 */

import assert from "node:assert/strict";
import { runArgv } from "./process.ts";

/** lib/'s layers, bottom first; `mod.ts` at lib/'s top level is above them all. */
const LAYERS = ["base", "protocol", "tunnel", "ops", "cli", "(lib/ top level)"] as const;
const TOP_LEVEL = LAYERS.length - 1;

const LIB = new URL("../lib/", import.meta.url);

/** One module's imports: paths relative to lib/ (or the raw specifier when outside lib/). */
type ImportGraph = ReadonlyMap<string, readonly string[]>;

/** The layer index of a module path relative to lib/, or -1 when it is in no known layer. */
function layerOf(path: string): number {
  const slash = path.indexOf("/");
  if (slash < 0) return TOP_LEVEL;
  return LAYERS.indexOf(path.slice(0, slash) as typeof LAYERS[number]);
}

/** The folder of a module path relative to lib/ ("" for lib/ itself). */
function folderOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "" : path.slice(0, slash);
}

/** Every breach of the layer rules in `graph`, one line each (empty when there is none). */
function layerViolations(graph: ImportGraph): string[] {
  const problems: string[] = [];
  const folderEdges = new Map<string, Set<string>>();
  for (const [from, imports] of graph) {
    const fromLayer = layerOf(from);
    if (fromLayer < 0) {
      problems.push(`${from} is in no layer folder (${LAYERS.slice(0, TOP_LEVEL).join(", ")})`);
      continue;
    }
    for (const to of imports) {
      if (to.startsWith("node:")) continue;
      if (!graph.has(to)) {
        problems.push(`${from} imports ${to}, which is outside lib/`);
        continue;
      }
      const toLayer = layerOf(to);
      if (toLayer > fromLayer) {
        problems.push(
          `${from} (layer ${LAYERS[fromLayer]}) imports ${to} from a layer above it (${
            LAYERS[toLayer]
          })`,
        );
      }
      if (folderOf(from) !== folderOf(to)) {
        const edges = folderEdges.get(folderOf(from)) ?? new Set<string>();
        edges.add(folderOf(to));
        folderEdges.set(folderOf(from), edges);
      }
    }
  }
  const cycle = folderCycle(folderEdges);
  if (cycle) problems.push(`import cycle between folders: ${cycle.join(" -> ")}`);
  return problems;
}

/** One cycle in a graph of folders, as the folders along it (first repeated last), or null. */
function folderCycle(edges: ReadonlyMap<string, ReadonlySet<string>>): string[] | null {
  const done = new Set<string>();
  const path: string[] = [];
  const visit = (folder: string): string[] | null => {
    const at = path.indexOf(folder);
    if (at >= 0) return [...path.slice(at), folder].map((f) => f || "lib");
    if (done.has(folder)) return null;
    path.push(folder);
    for (const next of edges.get(folder) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    path.pop();
    done.add(folder);
    return null;
  };
  for (const folder of edges.keys()) {
    const cycle = visit(folder);
    if (cycle) return cycle;
  }
  return null;
}

/** Every .ts file under lib/, relative to lib/. */
async function libModules(dir = LIB, prefix = ""): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isDirectory) {
      found.push(...await libModules(new URL(`${entry.name}/`, dir), `${prefix}${entry.name}/`));
    } else if (entry.name.endsWith(".ts")) found.push(`${prefix}${entry.name}`);
  }
  return found.sort();
}

/** The import graph of every lib/ module, from `deno info --json` over one file importing them all. */
async function libGraph(): Promise<ImportGraph> {
  const modules = await libModules();
  const dir = await Deno.makeTempDir({ prefix: "cipherlink-layers-" });
  try {
    const entry = `${dir}/all.ts`;
    await Deno.writeTextFile(
      entry,
      modules.map((m) => `import ${JSON.stringify(new URL(m, LIB).href)};\n`).join(""),
    );
    const info = await runArgv([Deno.execPath(), "info", "--json", entry]);
    assert.equal(info.code, 0, info.stderr);
    const parsed = JSON.parse(info.stdout) as {
      modules: {
        specifier: string;
        dependencies?: {
          specifier: string;
          code?: { specifier: string };
          type?: { specifier: string };
        }[];
      }[];
    };
    const relative = (specifier: string) =>
      specifier.startsWith(LIB.href) ? specifier.slice(LIB.href.length) : specifier;
    const graph = new Map<string, string[]>();
    for (const module of parsed.modules) {
      const path = relative(module.specifier);
      if (!modules.includes(path)) continue;
      graph.set(
        path,
        (module.dependencies ?? []).map((d) =>
          relative(d.code?.specifier ?? d.type?.specifier ?? d.specifier)
        ),
      );
    }
    assert.deepEqual([...graph.keys()].sort(), modules, "deno info lists every lib/ module");
    return graph;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("layers: the checker reports an upward import, a folder cycle, a stray folder and an outside import", () => {
  const graph: ImportGraph = new Map([
    ["base/errors.ts", ["tunnel/server.ts"]],
    ["tunnel/server.ts", ["base/errors.ts", "node:net"]],
    ["protocol/noise.ts", ["protocol/crypto/select.ts"]],
    ["protocol/crypto/select.ts", ["protocol/noise.ts"]],
    ["misc/thing.ts", []],
    ["cli/cli.ts", ["npm:left-pad"]],
    ["mod.ts", ["cli/cli.ts", "base/errors.ts"]],
  ]);
  const problems = layerViolations(graph);
  assert.ok(
    problems.includes(
      "base/errors.ts (layer base) imports tunnel/server.ts from a layer above it (tunnel)",
    ),
    problems.join("\n"),
  );
  assert.ok(
    problems.some((p) => p.startsWith("import cycle between folders: ")),
    problems.join("\n"),
  );
  assert.ok(
    problems.includes("misc/thing.ts is in no layer folder (base, protocol, tunnel, ops, cli)"),
  );
  assert.ok(problems.includes("cli/cli.ts imports npm:left-pad, which is outside lib/"));
  assert.equal(problems.length, 4, problems.join("\n"));
});

Deno.test("layers: no lib/ module imports from a layer above its own, and folders have no import cycle", async () => {
  const graph = await libGraph();
  assert.ok(graph.size > 30, `only ${graph.size} modules found in lib/`);
  assert.deepEqual(layerViolations(graph), []);
});

/** The lib/ modules README's module table names (rows whose first cell is a `path.ts`). */
function readmeModules(readme: string): string[] {
  const start = readme.indexOf("Modules in `lib/`");
  assert.ok(start >= 0, 'README has no module table ("Modules in `lib/`")');
  const rows = readme.slice(start).split("\n\n")
    .find((block) => block.startsWith("| module"));
  assert.ok(rows, 'README\'s module table follows "Modules in `lib/`"');
  return rows.split("\n")
    .map((line) => /^\|\s*`([a-z_/]+\.ts)`\s*\|/.exec(line)?.[1])
    .filter((path): path is string => path !== undefined)
    .sort();
}

Deno.test("layers: README's module table names every lib/ module, once, and no other", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const named = readmeModules(readme);
  const modules = await libModules();
  const twice = named.filter((path, i) => named.indexOf(path) !== i);
  assert.deepEqual(twice, [], "named twice in README's module table");
  assert.deepEqual(
    modules.filter((path) => !named.includes(path)),
    [],
    "lib/ modules missing from README's module table",
  );
  assert.deepEqual(
    named.filter((path) => !modules.includes(path)),
    [],
    "README's module table names modules lib/ does not have",
  );
});
