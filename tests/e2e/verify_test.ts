/**
 * `--verify` against a real PostgreSQL: rows deleted or changed on the server are sent
 * again, a lost tracker is rebuilt without sending a row, a timestamp shift sends nothing
 * and rewrites no marker, and server rows with no folder on disk are reported, not deleted.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, startPostgres } from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import {
  assertTableMatches,
  describeExit,
  expectedRows,
  runUploader,
  tableRows,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";

function summary(exit: UploaderExit): Record<string, unknown> {
  const s = exit.events.findLast((e) => e.event === "summary");
  assert.ok(s, describeExit(exit));
  return s;
}

function verifyEvent(exit: UploaderExit): Record<string, unknown> {
  const v = exit.events.find((e) => e.event === "verify");
  assert.ok(v, `no verify event: ${describeExit(exit)}`);
  return v;
}

Deno.test({
  name:
    "verify: deleted and changed rows are sent again, a lost tracker is rebuilt, orphans reported",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("verify_test_", async (dir) => {
        const data = join(dir, "data");
        const tree = generateTree(data, { folders: 300, seed: 7 });
        const db = join(dir, "t.db");
        const env = { SUPABASE_DB_URL: pg.url };
        const args = [data, "--db-path", db, "--min-age", "0"];
        const first = await runUploader(args, { env });
        assert.equal(first.code, 0, describeExit(first));
        const units = Number(summary(first).uploaded);
        assert.equal(units, tree.units);

        // Nothing drifted: a verify reads every row and sends nothing.
        const clean = await runUploader([...args, "--verify"], { env });
        assert.equal(clean.code, 0, describeExit(clean));
        assert.deepEqual(
          [verifyEvent(clean).rows, verifyEvent(clean).missing_on_server, summary(clean).uploaded],
          [units, 0, 0],
        );

        // Three rows deleted, two changed behind the uploader's back, two foreign rows.
        const keys = (await pg.psql("select folder_key from device_test order by folder_key"))
          .trim().split("\n");
        await pg.psql(
          `delete from device_test where folder_key in ('${keys[0]}', '${keys[1]}', '${keys[2]}');
           update device_test set test_status = 'tampered',
             metadata = metadata || '{"content_hash": "x"}'
             where folder_key in ('${keys[3]}', '${keys[4]}');
           insert into device_test (device_id, folder_key, folder_name, images, metadata)
             select device_id, 'Gone/' || n, n, '{}', '{}'
             from (select device_id from device_test limit 1) d, (values ('a'), ('b')) v(n);`,
        );
        const before = await runUploader(args, { env });
        assert.equal(summary(before).uploaded, 0, "without --verify the drift is not seen");

        const verify = await runUploader([...args, "--verify"], { env });
        assert.equal(verify.code, 0, describeExit(verify));
        const v = verifyEvent(verify);
        assert.equal(v.missing_on_server, 3);
        assert.equal(v.changed_on_server, 2);
        assert.equal(v.orphans, 2);
        assert.deepEqual(v.orphan_sample, ["Gone/a", "Gone/b"]);
        assert.equal(summary(verify).uploaded, 5);
        assert.equal(summary(verify).inserted, 3);
        assert.equal(summary(verify).updated, 2);
        const expected = expectedRows(data);
        const table = await tableRows(pg);
        assert.equal(table.rows.length, units + 2, "orphans are never deleted");
        assertTableMatches(
          { ...table, rows: table.rows.filter((r) => !r.key.startsWith("Gone/")) },
          expected.rows,
        );

        // --status shows the verify; --status --json lists the orphans.
        const status = await runUploader(["--status", "--db-path", db], { env, json: false });
        assert.match(status.stdout, /Last verify: .* 2 orphan rows/);
        const json = await runUploader(["--status", "--db-path", db, "--json"], { env });
        assert.deepEqual(JSON.parse(json.stdout).orphans, ["Gone/a", "Gone/b"]);

        // A lost tracker (a new SD card): rebuilt from the server, nothing sent.
        for (const f of [db, `${db}-wal`, `${db}-shm`]) {
          try {
            Deno.removeSync(f);
          } catch (error) {
            if (!(error instanceof Deno.errors.NotFound)) throw error;
          }
        }
        const rebuilt = await runUploader([...args, "--verify"], { env });
        assert.equal(rebuilt.code, 0, describeExit(rebuilt));
        assert.equal(summary(rebuilt).uploaded, 0, "a row was sent again");
        assert.equal(summary(rebuilt).adopted, units);
        const next = await runUploader(args, { env });
        assert.deepEqual([summary(next).uploaded, summary(next).changed], [0, 0]);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "verify: a shifted mtime (FAT card, daylight saving) sends no row and rewrites no marker",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("verify_shift_", async (dir) => {
        const data = join(dir, "data");
        const tree = generateTree(data, { folders: 60, seed: 3 });
        const db = join(dir, "t.db");
        const env = { SUPABASE_DB_URL: pg.url };
        const args = [data, "--db-path", db, "--min-age", "0"];
        assert.equal((await runUploader(args, { env })).code, 0);
        const unitPaths = [...expectedRows(data).rows.keys()].map((k) => join(data, k));
        assert.equal(unitPaths.length, tree.units);
        const markers = unitPaths.map((p) => join(p, "success.json"));
        const markerTimes = markers.map((m) => Deno.statSync(m).mtime!.getTime());
        // Every file one hour later, as a daylight-saving shift shows it.
        for (const unit of unitPaths) {
          for (const entry of Deno.readDirSync(unit)) {
            if (entry.name === "success.json") continue;
            const file = join(unit, entry.name);
            const t = Deno.statSync(file).mtime!.getTime() + 3_600_000;
            Deno.utimeSync(file, t / 1000, t / 1000);
          }
        }
        const shifted = await runUploader(args, { env });
        assert.equal(shifted.code, 0, describeExit(shifted));
        const s = summary(shifted);
        assert.deepEqual([s.changed, s.uploaded, s.adopted, s.bytes], [
          tree.units,
          0,
          tree.units,
          0,
        ]);
        assert.deepEqual(markers.map((m) => Deno.statSync(m).mtime!.getTime()), markerTimes);
        const again = await runUploader(args, { env });
        assert.deepEqual([summary(again).changed, summary(again).uploaded], [0, 0]);
      });
    } finally {
      await pg.close();
    }
  },
});
