/**
 * Concurrency and signals: a second run on the same tracking database is refused at once
 * (exit 2, naming the holder's pid) while the first completes correctly; SIGINT to the
 * whole process group (Ctrl-C in a terminal, psql children included), SIGTERM to the
 * uploader alone, and a double Ctrl-C all end a run with 130, leave no batch running and
 * nothing recorded that the server does not have, and the next run completes exactly.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import { SIGNAL_COPIES_MS } from "../../lib/cli/signals.ts";
import {
  assertTableMatches,
  assertTrackerComplete,
  delay,
  describeExit,
  dropSlowInserts,
  expectedRows,
  runUploader,
  seededRandom,
  slowInserts,
  startUploader,
  tableRows,
  trackerState,
  type UploaderProcess,
  waitForActiveUpsert,
  withTempDir,
} from "../../support/run.ts";

function slowArgs(data: string, dbPath: string): string[] {
  return [
    data,
    "--db-path",
    dbPath,
    "--min-age",
    "0",
    "--batch-size",
    "10",
    "--parallel",
    "2",
    "--batch-delay",
    "0.05",
  ];
}

async function batchesDone(p: UploaderProcess, n: number): Promise<void> {
  await p.waitFor(() => p.events.filter((e) => e.event === "batch_done").length >= n);
}

/** Runs to the end and checks the exact table and a complete tracker. */
async function assertResumes(pg: PgServer, data: string, dbPath: string): Promise<void> {
  const exit = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
    env: { SUPABASE_DB_URL: pg.url },
  });
  assert.equal(exit.code, 0, describeExit(exit));
  const expected = expectedRows(data);
  assertTableMatches(await tableRows(pg), expected.rows);
  assertTrackerComplete(trackerState(dbPath), expected.rows.keys());
}

/** After an interruption: nothing tracked as uploaded is missing on the server. */
async function assertConsistent(pg: PgServer, dbPath: string): Promise<void> {
  const state = trackerState(dbPath);
  assert.equal(state.integrity, "ok");
  assert.ok(!state.batchStatuses.includes("running"), "a batch left running");
  const onServer = new Set((await tableRows(pg)).rows.map((r) => r.key));
  const lost = state.folders.filter((f) => f.status === "success" && !onServer.has(f.key ?? ""));
  assert.deepEqual(lost, [], "tracked as success but not on the server");
  assert.ok(state.folders.every((f) => f.status !== "failed"), "an interruption failed a folder");
}

Deno.test({
  name: "a second run on the same tracker is refused at once, naming the holder",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_lock_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        generateTree(data, { folders: 500, seed: 71 });
        // How long the uploader takes to start and exit when nothing blocks it (median of 3).
        const startups: number[] = [];
        for (let i = 0; i < 3; i++) {
          const help = await runUploader(["--help"]);
          assert.equal(help.code, 0);
          startups.push(help.durationMs);
        }
        const baseline = startups.sort((a, b) => a - b)[1];

        const first = startUploader(slowArgs(data, dbPath), { env: { SUPABASE_DB_URL: pg.url } });
        await batchesDone(first, 1);
        const second = await runUploader(slowArgs(data, dbPath), {
          env: { SUPABASE_DB_URL: pg.url },
        });
        assert.equal(second.code, 2, describeExit(second));
        assert.ok(second.stderr.includes(String(first.pid)), second.stderr);
        assert.ok(
          second.durationMs < baseline + 1000,
          `refused after ${second.durationMs} ms (start-up alone: ${baseline} ms)`,
        );
        assert.ok(!first.exited, "the first run ended before the second was refused");

        const exit = await first.done;
        assert.equal(exit.code, 0, describeExit(exit));
        const expected = expectedRows(data);
        assertTableMatches(await tableRows(pg), expected.rows);
        const state = trackerState(dbPath);
        assertTrackerComplete(state, expected.rows.keys());
        assert.deepEqual(state.runStatuses, ["completed"], "the refused run left a trace");
      });
    } finally {
      await pg.close();
    }
  },
});

for (
  const { label, interrupt, rowSeconds = 0.01, quits = false } of [
    {
      label: "SIGINT to the process group (Ctrl-C)",
      interrupt: (p: UploaderProcess) => p.signalGroup("SIGINT"),
    },
    {
      label: "SIGTERM to the uploader",
      interrupt: (p: UploaderProcess) => p.signal("SIGTERM"),
    },
    {
      label: "Ctrl-C twice (quit now)",
      // Batches of 10 rows that take 3 s: still in flight at the second press.
      rowSeconds: 0.3,
      quits: true,
      interrupt: async (p: UploaderProcess) => {
        p.signalGroup("SIGINT");
        // A person's second press comes later than the copies of one signal.
        await delay(SIGNAL_COPIES_MS + 300);
        p.signalGroup("SIGINT");
      },
    },
  ]
) {
  Deno.test({
    name: `${label}: exit 130, recorded as interrupted, the next run completes exactly`,
    ignore: !hasPostgres(),
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const pg = await startPostgres();
      try {
        await withTempDir("fault_signal_", async (dir) => {
          const data = join(dir, "data");
          const dbPath = join(dir, "tracker.db");
          generateTree(data, { folders: 600, seed: 72 });
          // Each batch of 10 takes 100 ms on the server: the signal comes mid-statement.
          await slowInserts(pg, rowSeconds);
          const p = startUploader(slowArgs(data, dbPath), { env: { SUPABASE_DB_URL: pg.url } });
          await batchesDone(p, quits ? 1 : 3);
          await waitForActiveUpsert(pg);
          await interrupt(p);
          const exit = await p.done;
          assert.equal(exit.code, 130, describeExit(exit));
          assert.equal(/Interrupted again: quitting now/.test(exit.stderr), quits, exit.stderr);
          assert.doesNotMatch(exit.stderr, /Retrying|syntax error|Error:/);
          await assertConsistent(pg, dbPath);
          const state = trackerState(dbPath);
          assert.ok(state.folders.some((f) => f.status === "pending"), "nothing was left to do");
          assert.equal(state.runStatuses.at(-1), "interrupted");
          await dropSlowInserts(pg);
          await assertResumes(pg, data, dbPath);
          assert.ok(!trackerState(dbPath).runStatuses.includes("running"));
        });
      } finally {
        await pg.close();
      }
    },
  });
}

Deno.test({
  name: "Ctrl-C to the process group of `deno task upload` at 10 moments: each 130, no SQL " +
    "error, no retry, an exact resume",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_task_int_", async (dir) => {
        const data = join(dir, "data");
        generateTree(data, { folders: 2_000, seed: 73 });
        const expected = expectedRows(data);
        const random = seededRandom(73);
        // The moment of the signal: when the run starts (the scan begins), or after some
        // batches, a few milliseconds into the next ones.
        const moments = [0, 1, 2, 3, 5, 7, 9, 12, 15, 19];
        // The table exists from the start (a signal before the schema step leaves none).
        await slowInserts(pg, 0);
        await dropSlowInserts(pg);
        for (const [i, batches] of moments.entries()) {
          const db = join(dir, `tracker${i}.db`);
          await pg.psql("truncate device_test");
          const p = startUploader([
            data,
            "--db-path",
            db,
            "--min-age",
            "0",
            "--batch-size",
            "50",
            "--parallel",
            "2",
            "--batch-delay",
            "0.02",
          ], { env: { SUPABASE_DB_URL: pg.url }, task: true });
          if (batches === 0) await p.waitFor((e) => e.event === "run_start");
          else await batchesDone(p, batches);
          await delay(Math.floor(random() * 30));
          // kill -INT -- -PGID: deno task, the uploader and (were they in it) psql.
          p.signalGroup("SIGINT");
          const exit = await p.done;
          const what = `moment ${i} (after ${batches} batches)`;
          assert.equal(exit.code, 130, `${what}: ${describeExit(exit)}`);
          assert.doesNotMatch(
            exit.stderr,
            /syntax error|Retrying|Error:|Interrupted again/,
            `${what}: ${exit.stderr}`,
          );
          await assertConsistent(pg, db);
          // Every row the server holds is recorded as uploaded (the batches in flight
          // finished and were recorded), so the resume sends exactly the rest.
          const before = trackerState(db).folders.filter((f) => f.status === "success").length;
          const onServer = (await tableRows(pg)).rows.length;
          assert.equal(onServer, before, `${what}: rows on the server vs. recorded`);
          const resume = await runUploader([data, "--db-path", db, "--min-age", "0"], {
            env: { SUPABASE_DB_URL: pg.url },
          });
          assert.equal(resume.code, 0, `${what}: ${describeExit(resume)}`);
          const summary = resume.events.find((e) => e.event === "summary")!;
          assert.equal(summary.uploaded, expected.rows.size - before, JSON.stringify(summary));
          assert.equal(summary.inserted, expected.rows.size - before, JSON.stringify(summary));
          assertTableMatches(await tableRows(pg), expected.rows);
          assertTrackerComplete(trackerState(db), expected.rows.keys());
          console.log(`${what}: 130, ${before} recorded before, ${summary.uploaded} resumed`);
        }
      });
    } finally {
      await pg.close();
    }
  },
});
