/**
 * `deno task sql [psql args]`: psql on the database the uploader writes to (a URL,
 * libpq's defaults, or the embedded database, served for the length of the session).
 * The exit code is psql's.
 *
 * @module
 */

import { EXIT } from "../lib/core/errors.ts";
import { parseSqlCommand } from "../lib/cli/commands.ts";
import { requireEmbeddedData, runMain, warnPasswordInArgs } from "../lib/cli/main.ts";
import { sqlHelp } from "../lib/cli/help.ts";
import { connectorFor } from "../lib/target/connect.ts";
import { runPsqlInteractive } from "../lib/sink/postgres/psql.ts";
import { resolveTarget } from "../lib/target/target.ts";

async function main(argv: string[]): Promise<number> {
  const env = Deno.env.toObject();
  const cmd = parseSqlCommand(argv, env);
  if (cmd.help) {
    console.log(sqlHelp());
    return EXIT.OK;
  }
  warnPasswordInArgs(cmd.dbUrl, { warn: console.error });
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: cmd.dbPath, env });
  // Opening a folder that does not exist would create an empty database.
  requireEmbeddedData(
    spec,
    "Run 'deno task upload <base_path>' first (it creates it), pass --db-path of " +
      "the tracking database beside it, or set SUPABASE_DB_URL",
  );
  const connector = connectorFor(spec, env, { maxConnections: 4 });
  try {
    const connection = await connector.open();
    if (Deno.stdin.isTerminal()) console.error(`Connected to ${connector.display}`);
    return await runPsqlInteractive(connection, cmd.psqlArgs);
  } finally {
    await connector.close();
  }
}

if (import.meta.main) await runMain(main);
