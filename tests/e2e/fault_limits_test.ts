/**
 * Fault: the server's limits. A role with a tiny `statement_timeout` and a trigger that
 * makes full batches too slow: batches are retried in smaller pieces, no folder is
 * charged. Every connection slot taken by idle sessions for a few seconds: the uploader
 * retries until slots free up, no folder is charged, and the retries say why.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import {
  assertTableMatches,
  assertTrackerComplete,
  delay,
  describeExit,
  expectedRows,
  startUploader,
  tableRows,
  trackerState,
  withTempDir,
} from "../../support/run.ts";
import { buildSchemaStatements } from "../../lib/sink/postgres/schema.ts";

const DEVICE_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

function roleUrl(pg: PgServer, role: string, password: string): string {
  return `postgresql://${role}:${password}@${pg.host}:${pg.port}/uploads`;
}

async function rollbacks(pg: PgServer): Promise<number> {
  const out = await pg.psql(
    "select xact_rollback from pg_stat_database where datname = 'uploads'",
  );
  return Number(out.trim());
}

Deno.test({
  name: "statement_timeout on the role: batches split and retried, no folder charged",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_timeout_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 330, seed: 21 });
        // The table exists before the role gets its timeout, with a trigger that makes a
        // full batch of 50 rows take 200 ms and a batch of 10 about 40 ms.
        for (
          const sql of buildSchemaStatements({
            table: "device_test",
            device: { id: DEVICE_ID, name: "lab", type: "image_analyzer" },
          })
        ) await pg.psql(sql);
        await pg.psql(
          `create role slow login password 'slow-pass';
           grant usage, create on schema public to slow;
           grant select, insert, update on device_test, devices to slow;
           create function slow_insert() returns trigger language plpgsql as $$
           begin perform pg_sleep(0.004); return new; end $$;
           create trigger slow_insert before insert on device_test
             for each row execute function slow_insert();
           alter role slow set statement_timeout = '100ms'`,
        );
        const before = await rollbacks(pg);
        const exit = await startUploader(
          [data, "--db-path", dbPath, "--min-age", "0", "--batch-size", "50", "--parallel", "2"],
          { env: { SUPABASE_DB_URL: roleUrl(pg, "slow", "slow-pass"), DEVICE_ID } },
        ).done;
        assert.equal(exit.code, 0, describeExit(exit));
        const summary = exit.events.find((e) => e.event === "summary")!;
        assert.equal(summary.failed, 0);
        assert.ok(
          (await rollbacks(pg)) - before >= 1,
          "no statement was cancelled by the timeout: the test did not test it",
        );
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

/** An idle psql session holding one connection slot. */
interface Hog {
  release(): Promise<void>;
}

/**
 * Opens a psql session and proves it is connected by a query answered on its own
 * connection (polling pg_stat_activity would take a slot itself).
 */
async function holdConnection(url: string): Promise<Hog> {
  // The password in the environment: another test looks for it in every process's argv.
  const bare = new URL(url);
  const password = decodeURIComponent(bare.password);
  bare.password = "";
  const child = new Deno.Command("psql", {
    args: ["-X", "-q", "-A", "-t", "-d", bare.href],
    env: { PGPASSWORD: password },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const writer = child.stdin.getWriter();
  const reader = child.stdout.getReader();
  const release = async () => {
    await writer.close().catch(() => {/* psql already exited */});
    await reader.cancel();
    await child.status;
    await stderr;
  };
  await writer.write(new TextEncoder().encode("select 'held';\n"));
  let text = "";
  while (!text.includes("held")) {
    const { value, done } = await reader.read();
    if (done) {
      await release();
      throw new Error(`An idle session could not connect: ${await stderr}`);
    }
    text += new TextDecoder().decode(value);
  }
  return { release };
}

Deno.test({
  name: "all connection slots taken for a few seconds: retried, no folder charged",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    // 8 slots, 3 reserved for superusers: ordinary roles get 5.
    const pg = await startPostgres({ maxConnections: 8 });
    const hogs: Hog[] = [];
    const release = async () => {
      for (const h of hogs.splice(0)) await h.release();
    };
    try {
      await pg.psql(
        `create role hog login password 'hog-pass';
         create role loader login password 'loader-pass';
         grant usage, create on schema public to loader`,
      );
      await withTempDir("fault_slots_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 400, seed: 22 });
        // No other connection may open meanwhile: a slot counts as reserved whenever only
        // three are free, whoever holds the others.
        for (let i = 0; i < 5; i++) hogs.push(await holdConnection(roleUrl(pg, "hog", "hog-pass")));
        const p = startUploader(
          [data, "--db-path", dbPath, "--min-age", "0", "--batch-size", "25", "--parallel", "2"],
          { env: { SUPABASE_DB_URL: roleUrl(pg, "loader", "loader-pass") } },
        );
        await p.waitFor((e) => e.event === "retry", 30_000);
        await delay(2500);
        await release();
        const exit = await p.done;
        assert.equal(exit.code, 0, describeExit(exit));
        const retries = exit.events.filter((e) => e.event === "retry");
        assert.ok(retries.length >= 1);
        for (const r of retries) {
          // The server's own refusal travels to the user.
          assert.match(String(r.reason), /too many clients|remaining connection slots/i);
        }
        const summary = exit.events.find((e) => e.event === "summary")!;
        assert.equal(summary.failed, 0);
        const expected = expectedRows(data);
        assert.equal(expected.rows.size, tree.units);
        assertTableMatches(await tableRows(pg), expected.rows);
        assertTrackerComplete(trackerState(dbPath), expected.rows.keys());
      });
    } finally {
      await release();
      await pg.close();
    }
  },
});
