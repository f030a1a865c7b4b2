/**
 * Fault: the PostgreSQL server goes away during an upload. Stopped (immediate shutdown)
 * for a few seconds and started again, the run rides it out and exits 0 with the exact
 * table. Kept down past `--give-up-after`, the run stops with exit code 3, the folders not
 * acknowledged stay pending (never failed, never charged a retry), and a later run
 * completes them.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, startPostgres } from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import {
  assertTableMatches,
  assertTrackerComplete,
  delay,
  describeExit,
  expectedRows,
  runUploader,
  startUploader,
  tableRows,
  trackerState,
  withTempDir,
} from "../../support/run.ts";

/** A commit the server acknowledged survives its immediate shutdown (not so with it off). */
const DURABLE = { synchronous_commit: "on" };

function slowArgs(data: string, dbPath: string, extra: string[] = []): string[] {
  return [
    data,
    "--db-path",
    dbPath,
    "--min-age",
    "0",
    "--batch-size",
    "20",
    "--parallel",
    "2",
    "--batch-delay",
    "0.03",
    ...extra,
  ];
}

Deno.test({
  name: "server stopped and started mid-run: exit 0 and the exact table",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres({ conf: DURABLE });
    try {
      await withTempDir("fault_server_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 1200, seed: 11 });
        const p = startUploader(slowArgs(data, dbPath), { env: { SUPABASE_DB_URL: pg.url } });
        await p.waitFor(() => p.events.filter((e) => e.event === "batch_done").length >= 3);
        await pg.stop("immediate");
        await delay(3000);
        await pg.start();
        const exit = await p.done;
        assert.equal(exit.code, 0, describeExit(exit));
        const summary = exit.events.find((e) => e.event === "summary")!;
        assert.ok(Number(summary.retries) > 0, "the outage was never noticed");
        assert.equal(summary.failed, 0);
        const expected = expectedRows(data);
        assert.equal(expected.rows.size, tree.units);
        assertTableMatches(await tableRows(pg), expected.rows);
        assertTrackerComplete(trackerState(dbPath), expected.rows.keys());
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "server down past --give-up-after: exit 3, folders pending, a later run completes",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres({ conf: DURABLE });
    try {
      await withTempDir("fault_giveup_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 800, seed: 12 });
        const env = { SUPABASE_DB_URL: pg.url };

        const p = startUploader(slowArgs(data, dbPath, ["--give-up-after", "3"]), { env });
        await p.waitFor(() => p.events.filter((e) => e.event === "batch_done").length >= 2);
        await pg.stop("fast");
        const exit = await p.done;
        assert.equal(exit.code, 3, describeExit(exit));
        let state = trackerState(dbPath);
        assert.equal(state.integrity, "ok");
        const success = state.folders.filter((f) => f.status === "success").length;
        const pending = state.folders.filter((f) => f.status === "pending").length;
        assert.ok(success >= 40, `only ${success} folders uploaded before the outage`);
        assert.ok(pending > 0 || state.folders.length < tree.units, "nothing left to send");
        assert.equal(success + pending, state.folders.length, "folders failed for an outage");
        assert.ok(state.folders.every((f) => f.retryCount === 0), "an outage charged a folder");
        assert.ok(!state.batchStatuses.includes("running"), "a batch left running");
        assert.equal(state.runStatuses.at(-1), "unreachable");

        // Still down, from the start this time (the schema step): exit 3, nothing changes.
        const again = await runUploader(
          [data, "--db-path", dbPath, "--min-age", "0", "--give-up-after", "1"],
          { env },
        );
        assert.equal(again.code, 3, describeExit(again));
        state = trackerState(dbPath);
        assert.equal(state.folders.filter((f) => f.status === "success").length, success);
        assert.ok(state.folders.every((f) => f.retryCount === 0));

        await pg.start();
        const done = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], { env });
        assert.equal(done.code, 0, describeExit(done));
        const expected = expectedRows(data);
        assertTableMatches(await tableRows(pg), expected.rows);
        assertTrackerComplete(trackerState(dbPath), expected.rows.keys());
      });
    } finally {
      await pg.close();
    }
  },
});
