/**
 * `deno task fleet [--stale DURATION] [--json]`: every device's health, read from the
 * server the uploader writes to; with `--stale`, exit 1 when a device has been silent
 * longer than that.
 *
 * @module
 */

import { EXIT } from "../lib/core/errors.ts";
import { requireEmbeddedData, runMain, warnPasswordInArgs } from "../lib/cli/main.ts";
import { connectorFor } from "../lib/target/connect.ts";
import { fleetExitCode, fleetJson, readFleet, renderFleet } from "../lib/fleet/report.ts";
import { parseFleetCommand } from "../lib/cli/commands.ts";
import { fleetHelp } from "../lib/cli/help.ts";
import { checkPsql } from "../lib/sink/postgres/psql.ts";
import { resolveTarget } from "../lib/target/target.ts";

async function main(argv: string[]): Promise<number> {
  const env = Deno.env.toObject();
  const cmd = parseFleetCommand(argv, env);
  if (cmd.help) {
    console.log(fleetHelp());
    return EXIT.OK;
  }
  warnPasswordInArgs(cmd.dbUrl, { warn: console.error });
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: cmd.dbPath, env });
  // Opening a folder that does not exist would create an empty database.
  requireEmbeddedData(
    spec,
    "Set SUPABASE_DB_URL (or pass --db-url) to read the fleet's server, or pass " +
      "--db-path of the tracking database beside the embedded one",
  );
  await checkPsql();
  const connector = connectorFor(spec, env, { maxConnections: 1 });
  try {
    const report = await readFleet(await connector.open(), cmd.config.table);
    const options = { now: report.serverNow, target: connector.display, staleMs: cmd.staleMs };
    if (cmd.json) console.log(JSON.stringify(fleetJson(report, options)));
    else Deno.stdout.writeSync(new TextEncoder().encode(renderFleet(report, options)));
    return fleetExitCode(report, options);
  } finally {
    await connector.close();
  }
}

if (import.meta.main) await runMain(main);
