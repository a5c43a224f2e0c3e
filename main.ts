/**
 * Cipherlink's entry point: `deno run main.ts <command> …` (the `./cipherlink`
 * launcher and the compiled executables run this).
 * @module
 */

import { main } from "./lib/cli/cli.ts";

if (import.meta.main) Deno.exit(await main(Deno.args));
