/**
 * Each device's health record (`device_health`, lib/fleet/health.ts), against real servers:
 *
 * - every run that sends rows records it at its end, through pgbouncer in transaction
 *   mode: outcome, exit code, counts from the tracker, version, host name, server times;
 *   one row per device, rewritten by each run; a dry run writes none;
 * - a `--watch` records it as it goes (`running`), then its end (`stopped`, exit 0);
 * - it is part of the schema: created with the tables, printed and granted by
 *   `--print-schema`, created or upgraded by the first report that finds it missing;
 * - it never fails a run: a role refused INSERT on it, or a missing table the role may
 *   not create, costs one warning and the run's exit code stays its folders'.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_CONFIG } from "../../config.ts";
import { connectorFor } from "../../lib/target/connect.ts";
import {
  buildHealthSchemaStatement,
  buildHealthUpsert,
  type HealthRecord,
  healthRef,
} from "../../lib/fleet/health.ts";
import { buildSchemaStatements, printSchemaSql } from "../../lib/sink/postgres/schema.ts";
import { Tracker } from "../../lib/tracker/tracker.ts";
import { TOOL_VERSION } from "../../lib/core/version.ts";
import { runWatch } from "../../lib/engine/watch.ts";
import { hasPgbouncer, startPgbouncer } from "../../support/pgbouncer.ts";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree, writeTree } from "../../support/tree.ts";
import {
  delay,
  describeExit,
  runUploader,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";

const NO_SERVER = !hasPostgres();
const DEVICE = "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a";

/** The health row of `device` as JSON (null when there is none). */
async function healthOf(pg: PgServer, device = DEVICE): Promise<Record<string, unknown> | null> {
  const out = await pg.psql(
    `select coalesce((select row_to_json(h) from device_health h where device_id = '${device}'),
       'null')`,
  );
  return JSON.parse(out);
}

function warnings(exit: UploaderExit): string[] {
  return exit.events.filter((e) => e.event === "warning").map((e) => String(e.message));
}

Deno.test("buildHealthUpsert: one statement, every value in one JSON literal, server times", () => {
  const record: HealthRecord = {
    deviceId: DEVICE,
    deviceName: `pi's "7" \\ $$ :'x'`,
    hostName: "host\nname",
    version: TOOL_VERSION,
    mode: "watch",
    outcome: "running",
    exitCode: null,
    elapsedMs: 1234.6,
    ended: false,
    counts: { uploaded: 1, failed: 2, exhausted: 1, pending: 3, settling: 1, markersOwed: 0 },
  };
  const sql = buildHealthUpsert("lab.device_test", record);
  assert.match(sql, /^insert into "lab"\."device_health" as h \(/);
  assert.equal(sql.match(/::jsonb/g)?.length, 1, "one JSON literal");
  assert.match(sql, /now\(\) - r\.elapsed_ms \* interval '1 millisecond'/);
  assert.match(sql, /on conflict \(device_id\) do update set/);
  assert.doesNotMatch(sql, /^\s*(set|reset|prepare|begin)\b|create temp/im, "no session state");
  assert.ok(!sql.includes(";"), "one statement");
  assert.ok(!sql.includes("pi's"), "the name only inside the JSON literal, quoted");
  assert.throws(
    () => buildHealthUpsert("device_test", { ...record, deviceId: "not-a-uuid" }),
    /not a UUID/,
  );
  assert.equal(healthRef("device_test").sql, '"device_health"');
  assert.match(buildHealthSchemaStatement("device_test"), /^do \$health\$\n/);
});

Deno.test({
  name: "health: each run records its device's health through pgbouncer (transaction mode)",
  ignore: NO_SERVER || !hasPgbouncer(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      const bouncer = await startPgbouncer(pg, { poolMode: "transaction", poolSize: 2 });
      try {
        await withTempDir("health_", async (dir) => {
          const data = join(dir, "data");
          const db = join(dir, "tracker.db");
          const tree = generateTree(data, { folders: 120, seed: 5 });
          writeTree(data, { "Bad/stats.json": { text: "{not json" } });
          const env = { SUPABASE_DB_URL: bouncer.url(), DEVICE_ID: DEVICE, DEVICE_NAME: "pi-7" };
          const args = [data, "--db-path", db, "--min-age", "0", "--no-markers"];

          const first = await runUploader(args, { env });
          assert.equal(first.code, 1, describeExit(first));
          assert.deepEqual(warnings(first), []);
          const h1 = (await healthOf(pg))!;
          assert.ok(h1, "a health row");
          assert.deepEqual(
            [h1.device_name, h1.host_name, h1.tool_version, h1.mode, h1.outcome, h1.exit_code],
            ["pi-7", Deno.hostname(), TOOL_VERSION, "upload", "completed", 1],
          );
          assert.deepEqual(
            [h1.uploaded, h1.failed, h1.exhausted, h1.pending, h1.settling, h1.markers_owed],
            [tree.units, 1, 0, 0, 0, 0],
          );
          const started = Date.parse(String(h1.run_started_at));
          const ended = Date.parse(String(h1.run_ended_at));
          assert.ok(started <= ended && ended - started < first.durationMs + 1000, "run times");
          assert.equal(h1.reported_at, h1.run_ended_at, "the final report is the run's end");
          assert.ok(Math.abs(Date.now() - ended) < 60_000, "server time, just now");

          // The folder fixed: the next run's record replaces the first (one row per device).
          writeTree(data, { "Bad/stats.json": { json: { result: "PASS" } } });
          const second = await runUploader(args, { env });
          assert.equal(second.code, 0, describeExit(second));
          const h2 = (await healthOf(pg))!;
          assert.deepEqual(
            [h2.outcome, h2.exit_code, h2.uploaded, h2.failed, h2.pending],
            ["completed", 0, 1, 0, 0],
          );
          assert.ok(Date.parse(String(h2.reported_at)) > ended);

          // Nothing to upload: the device still reports (it was seen), uploaded 0.
          const third = await runUploader(args, { env });
          assert.equal(third.code, 0, describeExit(third));
          const h3 = (await healthOf(pg))!;
          assert.equal(h3.uploaded, 0);
          assert.ok(Date.parse(String(h3.reported_at)) > Date.parse(String(h2.reported_at)));

          // A dry run writes nothing anywhere, the health record included.
          const dry = await runUploader([...args, "--dry-run"], { env });
          assert.equal(dry.code, 0, describeExit(dry));
          assert.equal((await healthOf(pg))!.reported_at, h3.reported_at);
          assert.equal((await pg.psql("select count(*) from device_health")).trim(), "1");
        });
      } finally {
        await bouncer.close();
      }
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "health: a refusal is one warning and never fails a run; a missing table is made",
  ignore: NO_SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("health_refused_", async (dir) => {
        const data = join(dir, "data");
        const db = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 20, seed: 9 });
        // The owner prepares the schema; the role owns nothing and may not create.
        await pg.psql(
          printSchemaSql({ table: "device_test", role: "lab" }).replace(
            /^/,
            "create role lab login password 'lab-secret';\n",
          ),
        );
        const lab = pg.url.replace("tester:tester-secret@", "lab:lab-secret@");
        const env = { SUPABASE_DB_URL: lab, DEVICE_ID: DEVICE };
        const args = [data, "--db-path", db, "--min-age", "0", "--no-markers"];

        await pg.psql("revoke insert, update on device_health from lab");
        const refused = await runUploader(args, { env });
        assert.equal(refused.code, 0, describeExit(refused));
        assert.equal(refused.events.find((e) => e.event === "summary")?.uploaded, tree.units);
        const [warning, ...more] = warnings(refused);
        assert.deepEqual(more, [], "one warning");
        assert.match(
          warning,
          new RegExp(`^Health of device ${DEVICE} not recorded in device_health`),
        );
        assert.match(warning, /the upload itself is not affected/);
        assert.match(warning, /42501: permission denied for table device_health/);
        assert.match(warning, /deno task upload --print-schema/);
        assert.equal(await healthOf(pg), null);

        // The table gone (a schema from before it), and the role may not create it.
        await pg.psql("drop table device_health");
        writeTree(data, { "New/stats.json": { json: { result: "PASS" } } });
        const missing = await runUploader(args, { env });
        assert.equal(missing.code, 0, describeExit(missing));
        assert.equal(missing.events.find((e) => e.event === "summary")?.uploaded, 1);
        assert.match(warnings(missing).join("\n"), /42501: permission denied for schema public/);

        // An owner's run makes it; the role's next run records.
        await pg.psql(buildSchemaStatements({ table: "device_test" })[0]);
        assert.equal(
          (await pg.psql("select to_regclass('device_health') is not null")).trim(),
          "t",
          "the schema step creates the health table",
        );
        await pg.psql("grant select, insert, update on device_health to lab");
        const granted = await runUploader(args, { env });
        assert.equal(granted.code, 0, describeExit(granted));
        assert.deepEqual(warnings(granted), []);
        assert.equal((await healthOf(pg))?.outcome, "completed");

        // An older table lacking a column is upgraded by the first report (as the owner).
        await pg.psql("alter table device_health drop column markers_owed");
        const owner = await runUploader(args, { env: { ...env, SUPABASE_DB_URL: pg.url } });
        assert.equal(owner.code, 0, describeExit(owner));
        assert.deepEqual(warnings(owner), []);
        assert.equal((await healthOf(pg))?.markers_owed, 0);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "health: a --watch reports as it runs (running), then its end (stopped, exit 0)",
  ignore: NO_SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("health_watch_", async (dir) => {
        const data = join(dir, "data");
        generateTree(data, { folders: 3, seed: 2 });
        const tracker = Tracker.open(join(dir, "tracker.db"));
        const connector = connectorFor({ kind: "url", url: pg.url, source: "test" }, {});
        const finish = new AbortController();
        const watching = runWatch({
          basePath: data,
          config: { ...DEFAULT_CONFIG, minAgeSeconds: 0, deviceName: "watcher" },
          tracker,
          connector,
          deviceId: DEVICE,
          markers: false,
          rescanEverySeconds: 3600,
          finishSignal: finish.signal,
          healthEveryMs: 300,
        });
        try {
          const seen: string[] = [];
          const deadline = Date.now() + 30_000;
          while (seen.length < 2 && Date.now() < deadline) {
            const h = await healthOf(pg).catch(() => null); // the table may not exist yet
            const at = String(h?.reported_at);
            if (h?.outcome === "running" && h.uploaded === 3 && !seen.includes(at)) seen.push(at);
            await delay(100);
          }
          assert.equal(seen.length, 2, "two heartbeats while watching");
          const h = (await healthOf(pg))!;
          assert.deepEqual(
            [h.mode, h.exit_code, h.run_ended_at, h.pending, h.device_name],
            ["watch", null, null, 0, "watcher"],
          );
        } finally {
          finish.abort();
        }
        const result = await watching;
        tracker.close();
        await connector.close();
        assert.equal(result.exitCode, 0);
        const end = (await healthOf(pg))!;
        assert.deepEqual([end.outcome, end.exit_code], ["stopped", 0]);
        assert.equal(end.reported_at, end.run_ended_at);
      });
    } finally {
      await pg.close();
    }
  },
});
