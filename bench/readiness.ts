/**
 * What `--ready-when` saves a watched device: a simulated device (support/device.ts) writes
 * overlapping test runs, images 8 s apart and the PDF report last, into a folder watched by
 * `deno task upload --watch --min-age 3`, with and without `--ready-when '*.pdf'`; a trigger
 * logs every write of the table. Prints the writes, and how many were of a folder without its
 * report or with images still missing.
 *
 * ```sh
 * deno run -A bench/readiness.ts [--runs 4] [--gap-ms 8000]
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { startPostgres } from "../support/postgres.ts";
import { writeTree } from "../support/tree.ts";
import { delay, runUploader, startUploader } from "../support/run.ts";
import { deviceRuns, simulateDevice } from "../support/device.ts";

const DEVICE = "5a8e1f2b-3c4d-4e5f-9a0b-1c2d3e4f5a6b";

const WRITE_LOG = `
create table write_log (folder_key text, images int, reports jsonb);
grant insert on write_log to public;
create function log_write() returns trigger language plpgsql security definer as $fn$
begin
  insert into write_log values (new.folder_key, cardinality(new.images), new.metadata->'reports');
  return new;
end
$fn$;
create trigger log_write after insert or update on device_test
  for each row execute function log_write();
`;

/** One watched simulation; returns its counts as a line. */
async function measure(ready: boolean, runs: number, gapMs: number): Promise<string> {
  const pg = await startPostgres();
  const dir = Deno.makeTempDirSync({ prefix: "bench_readiness_" });
  try {
    const data = join(dir, "data");
    writeTree(data, { "Init/stats.json": { json: { result: [[1, 2, 3]] } } });
    const db = join(dir, "t.db");
    const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE };
    await runUploader([data, "--db-path", db, "--min-age", "0"], { env });
    await pg.psql(WRITE_LOG);
    const watcher = startUploader([
      data,
      ...["--db-path", db, "--watch", "--min-age", "3", "--rescan-every", "60"],
      ...(ready ? ["--ready-when", "*.pdf"] : []),
    ], { env });
    try {
      await watcher.waitFor((e) => e.event === "watching", 60_000);
      await simulateDevice(data, deviceRuns(runs, { gapMs, staggerMs: 5_000 }));
      await delay(15_000);
      const counts = await pg.psql(
        "select count(*) || ' writes, ' || count(*) filter (where reports is null) || " +
          "' without the report, ' || count(*) filter (where images < 3) || " +
          "' with images missing' from write_log where folder_key <> 'Init'",
      );
      return `${ready ? "with" : "without"} --ready-when: ${runs} folders, ${counts.trim()}`;
    } finally {
      watcher.signal("SIGTERM");
      await watcher.done;
    }
  } finally {
    await pg.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "4" },
    "gap-ms": { type: "string", default: "8000" },
  },
});
for (const ready of [false, true]) {
  console.log(await measure(ready, Number(values.runs), Number(values["gap-ms"])));
}
