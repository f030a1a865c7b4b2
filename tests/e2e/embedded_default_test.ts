/**
 * Out of the box: with nothing configured (no SUPABASE_DB_URL, DATABASE_URL, PGHOST or
 * PGSERVICE), `deno task upload` on a copy of examples/data uses the embedded database
 * and says so in its first line; `deno task sql` then shows one row per unit folder; a
 * second run writes nothing.
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { describeRun, REPO_ROOT, runUploadCli } from "../../support/cli.ts";
import { removeTree, setMtime, T1 } from "../../support/tree.ts";

const SQL = join(REPO_ROOT, "scripts", "sql.ts");
const EXAMPLES = join(REPO_ROOT, "examples", "data");

/** The unit folders of examples/data and the status the default rule gives them. */
const EXPECTED = [
  ["Batch54", "passed"], // stats.json with a result, images and a PDF
  ["Batch55", "failed"], // empty result
  ["Batch56", "pending"], // images only
  ["Batch57", "pending"], // a PDF report and notes, no image or stats: a unit (reportOnlyUnits)
  ["Line2/Batch12", "passed"], // nested
  ["Line2/Batch13", "failed"], // stats.json only, null result
  ["Line2/Batch14 (O'Brien rerun)", "passed"], // a quote in the name
];

/** Copies examples/data without marker files, every file's mtime set to T1 (settled). */
function copyExamples(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const entry of Deno.readDirSync(from)) {
    if (entry.name.startsWith(".")) continue;
    if (entry.name === "success.json" || entry.name === "failed.json") continue;
    const src = join(from, entry.name);
    const dst = join(to, entry.name);
    if (entry.isDirectory) copyExamples(src, dst);
    else if (entry.isFile) {
      Deno.copyFileSync(src, dst);
      setMtime(dst, T1);
    }
  }
}

/** `deno task sql -c "<sql>"` in `dir`; returns stdout. */
async function sql(dir: string, args: string[]): Promise<string> {
  const result = await runUploadCli(args, { script: SQL, cwd: dir });
  assert.equal(result.code, 0, describeRun(result));
  return result.stdout;
}

/** The tracker's batch count and the table's state, to show a run wrote nothing. */
async function state(dir: string) {
  const tracker = new DatabaseSync(join(dir, "upload_tracker.db"), { readOnly: true });
  let batches: number;
  let statuses: string;
  try {
    batches = Number(
      (tracker.prepare("SELECT count(*) AS n FROM upload_batches").get() as { n: number }).n,
    );
    statuses = JSON.stringify(
      tracker.prepare(
        "SELECT folder_key, upload_status, uploaded_hash FROM folder_status ORDER BY 1",
      ).all(),
    );
  } finally {
    tracker.close();
  }
  const table = await sql(dir, [
    "-XAt",
    "-c",
    "select folder_key, updated_at, upload_batch, metadata->>'content_hash' " +
    "from device_test order by 1",
  ]);
  return { batches, statuses, table };
}

Deno.test("embedded default: upload examples with nothing configured, read them with sql", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "embedded_default_test_" });
  try {
    copyExamples(EXAMPLES, join(dir, "examples", "data"));
    // runUploadCli gives the child a clean environment: no database is configured.
    const first = await runUploadCli(["examples/data"], { cwd: dir });
    assert.equal(first.code, 0, describeRun(first));
    const firstLine = first.stdout.split("\n")[0];
    assert.match(firstLine, /embedded/i);
    assert.match(firstLine, /upload_tracker\.pgdata/);
    assert.match(firstLine, /SUPABASE_DB_URL/, "the first line says how to point at Supabase");

    const count = await sql(dir, ["-c", "select count(*) from device_test"]);
    const number = /^\s*(\d+)\s*$/m.exec(count);
    assert.ok(number, count);
    assert.equal(Number(number[1]), EXPECTED.length);
    const rows = await sql(dir, [
      "-XAt",
      "-c",
      "select folder_key, test_status from device_test order by 1",
    ]);
    assert.deepEqual(rows.trim().split("\n"), EXPECTED.map(([k, s]) => `${k}|${s}`));

    const before = await state(dir);
    assert.ok(before.batches >= 1);
    const second = await runUploadCli(["examples/data"], { cwd: dir });
    assert.equal(second.code, 0, describeRun(second));
    assert.match(second.stdout.split("\n")[0], /embedded/i);
    const after = await state(dir);
    assert.equal(after.batches, before.batches, "no batch sent by the second run");
    assert.equal(after.statuses, before.statuses);
    assert.equal(after.table, before.table, "no row written by the second run");
  } finally {
    removeTree(dir);
  }
});
