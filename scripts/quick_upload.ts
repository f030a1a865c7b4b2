/**
 * `deno task quick <folder>... | -`: upload the named folders (or the paths piped in on
 * stdin) at once, without scanning a tree. The command is lib/cli/quick_command.ts.
 *
 * @module
 */

import { runMain } from "../lib/cli/main.ts";
import { quickCommand } from "../lib/cli/quick_command.ts";

if (import.meta.main) await runMain((argv) => quickCommand(argv, Deno.env.toObject()));
