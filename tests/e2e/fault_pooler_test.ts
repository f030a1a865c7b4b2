/**
 * Fault: a transaction-mode pooler (pgbouncer, as Supabase's port 6543) between the
 * uploader and the server. Four psql sessions share two server connections, so any
 * session state (SET, prepared statements, temp tables, an open transaction) would leak
 * or vanish between statements. The table must come out exact, on the first upload and
 * on a later one that rewrites changed folders, and across a server restart behind the
 * pooler.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, startPostgres } from "../../support/postgres.ts";
import { hasPgbouncer, startPgbouncer } from "../../support/pgbouncer.ts";
import { generateTree } from "../../support/tree.ts";
import {
  assertTableMatches,
  assertTrackerComplete,
  delay,
  describeExit,
  expectedRows,
  runUploader,
  seededRandom,
  startUploader,
  tableRows,
  trackerState,
  withTempDir,
} from "../../support/run.ts";

Deno.test({
  name: "pgbouncer in transaction mode: --parallel 4 through 2 server connections, exact table",
  ignore: !hasPostgres() || !hasPgbouncer(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      const bouncer = await startPgbouncer(pg, { poolMode: "transaction", poolSize: 2 });
      try {
        const pools = await bouncer.admin("SHOW POOLS");
        assert.match(pools, /^uploads\|tester\|.*\|transaction$/m);
        await withTempDir("fault_pooler_", async (dir) => {
          const data = join(dir, "data");
          const dbPath = join(dir, "tracker.db");
          const tree = generateTree(data, { folders: 2200, seed: 31, keys: true });
          const env = { SUPABASE_DB_URL: bouncer.url() };
          const args = [data, "--db-path", dbPath, "--min-age", "0", "--parallel", "4"];

          const first = await runUploader([...args, "--batch-size", "25"], { env });
          assert.equal(first.code, 0, describeExit(first));
          let expected = expectedRows(data);
          assert.equal(expected.rows.size, tree.units);
          assertTableMatches(await tableRows(pg), expected.rows);
          assertTrackerComplete(trackerState(dbPath), expected.rows.keys());

          // Change some folders: the second run rewrites exactly those rows.
          const rand = seededRandom(32);
          const changed = new Set<string>();
          while (changed.size < 100) changed.add(tree.keys![Math.floor(rand() * tree.units)]);
          for (const key of changed) {
            const file = join(data, key, "stats.json");
            Deno.writeTextFileSync(file, JSON.stringify({ result: "PASS", rerun: key }));
            Deno.utimeSync(file, new Date(2024, 0, 1), new Date(2024, 0, 1));
          }
          const second = await runUploader([...args, "--batch-size", "10"], { env });
          assert.equal(second.code, 0, describeExit(second));
          const summary = second.events.find((e) => e.event === "summary")!;
          assert.equal(summary.updated, changed.size);
          assert.equal(summary.inserted, 0);
          expected = expectedRows(data);
          assertTableMatches(await tableRows(pg), expected.rows);
          assertTrackerComplete(trackerState(dbPath), expected.rows.keys());

          // The server restarts behind the pooler mid-run: pgbouncer's errors are retried.
          generateTree(join(data, "Later"), { folders: 500, seed: 33 });
          const p = startUploader([...args, "--batch-size", "10", "--batch-delay", "0.03"], {
            env,
          });
          await p.waitFor(() => p.events.filter((e) => e.event === "batch_done").length >= 3);
          await pg.stop("fast");
          await delay(2000);
          await pg.start();
          const third = await p.done;
          assert.equal(third.code, 0, describeExit(third));
          const thirdSummary = third.events.find((e) => e.event === "summary")!;
          assert.ok(Number(thirdSummary.retries) > 0, "the restart was never noticed");
          expected = expectedRows(data);
          assertTableMatches(await tableRows(pg), expected.rows);
          assertTrackerComplete(trackerState(dbPath), expected.rows.keys());
        });
      } finally {
        await bouncer.close();
      }
    } finally {
      await pg.close();
    }
  },
});
