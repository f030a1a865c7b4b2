/**
 * `deno task upload <base_path>`: scan a tree of test folders and upload new or changed
 * ones, keep watching it (`--watch`), or report status. The command is
 * lib/cli/upload_command.ts.
 *
 * @module
 */

import { runMain } from "../lib/cli/main.ts";
import { uploadCommand } from "../lib/cli/upload_command.ts";

if (import.meta.main) await runMain((argv) => uploadCommand(argv, Deno.env.toObject()));
