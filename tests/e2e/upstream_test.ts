/**
 * Migrating from the original tools, tried as users do it, against a real PostgreSQL 15:
 *
 * - a device's identity survives the loss of its tracker (the id travels in success.json;
 *   without markers, rows of the tree under another id stop the run, or are taken over with
 *   `--adopt-device`; `--verify` names the other ids);
 * - the authors' latest `device_test`, filled as their REST uploader fills it (storage URLs
 *   in `images`, `metadata.image_urls`, `pdf_url`, hand-set `incomplete`, `device_name`
 *   'TEST'), and a data folder shaped like theirs with their markers: unchanged folders are
 *   adopted as they stand, a changed folder's row keeps what the tool does not own, their
 *   own INSERT still works after the upgrade, their markers are never touched;
 * - tables of other shapes: a `devices` table with NOT NULL columns of its own, a
 *   `device_test` made in Supabase's Table Editor (bigint identity id, RLS on), and RLS with
 *   the policies Supabase's templates give (checked before the first batch).
 *
 * The fixtures are built from the facts in support/upstream.ts.
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres, TEST_USER } from "../../support/postgres.ts";
import { removeTree, type TreeSpec, writeTree } from "../../support/tree.ts";
import { buildSchemaStatements, printSchemaSql } from "../../lib/sink/postgres/schema.ts";
import { PsqlSession } from "../../lib/sink/postgres/psql.ts";
import {
  buildUpsertScript,
  buildUpsertStatement,
  parseUpsertReply,
} from "../../lib/sink/postgres/upsert.ts";
import type { UploadRow } from "../../lib/sink/columns.ts";
import {
  type CliResult,
  describeRun,
  exists,
  jsonEvents,
  REPO_ROOT,
  runUploadCli,
  summaryOf,
} from "../../support/cli.ts";
import {
  restInsertSql,
  UPSTREAM_DDL,
  UPSTREAM_DEVICE,
  UPSTREAM_NAME,
  UPSTREAM_TYPE,
  type UpstreamFolder,
  upstreamRowsSql,
  writeUpstreamTree,
} from "../../support/upstream.ts";

const NO_SERVER = !hasPostgres();
const DEVICE_X = "5b0a7e2c-3d41-4f8a-9e6b-1c2d3e4f5a6b";
const DEVICE_Y = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/** Runs the upload manager with `args` (`--json` added) against `url` with `env`. */
function upload(args: string[], url: string, env: Record<string, string> = {}): Promise<CliResult> {
  return runUploadCli([...args, "--json"], { env: { SUPABASE_DB_URL: url, ...env } });
}

/** Runs SQL as the superuser; its output without the trailing newline. */
async function sql(pg: PgServer, text: string, options?: { database?: string }): Promise<string> {
  return (await pg.psql(text, options)).trim();
}

/** A URL for `role` (password `pw`) on the test server. */
function roleUrl(pg: PgServer, role: string): string {
  return `postgresql://${role}:pw@${pg.host}:${pg.port}/uploads`;
}

async function withDir(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix });
  try {
    await fn(dir);
  } finally {
    removeTree(dir);
  }
}

/** A plain tree of `n` folders, each with a stats.json and an image. */
function plainTree(root: string, n: number): string[] {
  const spec: TreeSpec = {};
  const names: string[] = [];
  for (let i = 1; i <= n; i++) {
    const name = `Batch${i}`;
    names.push(name);
    spec[`${name}/stats.json`] = { json: { result: i % 3 === 0 ? [] : [[1, 2, 3]], n: i } };
    spec[`${name}/2025-06-02 16:${String(i % 60).padStart(2, "0")}:00.jpg`] = { bytes: 100 + i };
  }
  writeTree(root, spec);
  return names;
}

/** `folder_name -> number of rows` and the device ids in use. */
async function rowCounts(pg: PgServer): Promise<{ perFolder: Map<string, number>; ids: string[] }> {
  const out = await sql(
    pg,
    `select json_build_object(
       'folders', (select coalesce(json_object_agg(folder_name, n), '{}') from
         (select folder_name, count(*) n from device_test group by 1) s),
       'ids', (select coalesce(json_agg(distinct device_id::text), '[]') from device_test))`,
  );
  const parsed = JSON.parse(out) as { folders: Record<string, number>; ids: string[] };
  return { perFolder: new Map(Object.entries(parsed.folders)), ids: parsed.ids.sort() };
}

function trackerMeta(dbPath: string, key: string): string | undefined {
  const db = new DatabaseSync(dbPath);
  try {
    const row = db.prepare("SELECT value FROM meta WHERE key = ?").get(key) as
      | { value: string }
      | undefined;
    return row?.value;
  } finally {
    db.close();
  }
}

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(Deno.readTextFileSync(path));
}

/** Every row of the table as JSON (the columns given), keyed by folder_name. */
async function rowsByName(
  pg: PgServer,
  drop: string[] = [],
): Promise<Map<string, Record<string, unknown>>> {
  const minus = drop.map((c) => ` - '${c}'`).join("");
  const out = await sql(
    pg,
    `select coalesce(json_object_agg(folder_name, to_jsonb(t)${minus}), '{}') from device_test t`,
  );
  return new Map(Object.entries(JSON.parse(out) as Record<string, Record<string, unknown>>));
}

// 1. A device never forks ----------------------------------------------------------------

Deno.test({
  name: "identity: a lost tracker takes the device id back from success.json; one row per folder",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("upstream_id_", async (dir) => {
        const data = join(dir, "data");
        const names = plainTree(data, 33);
        const first = await upload(
          [data, "--db-path", join(dir, "a.db"), "--min-age", "0"],
          pg.url,
          { DEVICE_ID: DEVICE_X },
        );
        assert.equal(first.code, 0, describeRun(first));
        assert.equal(summaryOf(first).inserted, 33);
        for (const name of names) {
          assert.equal(readJson(join(data, name, "success.json")).device_id, DEVICE_X, name);
        }

        // A new SD card: a new tracker, no DEVICE_ID.
        const second = await upload(
          [data, "--db-path", join(dir, "b.db"), "--min-age", "0"],
          pg.url,
        );
        assert.equal(second.code, 0, describeRun(second));
        const summary = summaryOf(second);
        assert.equal(summary.inserted, 0, describeRun(second));
        assert.equal(summary.updated, 0);
        const device = jsonEvents(second).find((e) => e.event === "device");
        assert.deepEqual(
          [device?.device_id, device?.source],
          [DEVICE_X, "markers"],
          describeRun(second),
        );
        assert.match(second.stderr, new RegExp(`Device id ${DEVICE_X}.*success\\.json`));
        const counts = await rowCounts(pg);
        assert.deepEqual(counts.ids, [DEVICE_X]);
        assert.equal(counts.perFolder.size, 33);
        assert.ok([...counts.perFolder.values()].every((n) => n === 1), "one row per folder");
        assert.equal(trackerMeta(join(dir, "b.db"), "device_id"), DEVICE_X);

        // Quick upload without a tracker or DEVICE_ID reads the same markers.
        writeTree(data, { "Batch1/stats.json": { json: { result: [[5, 5, 5]] } } });
        const quick = await runUploadCli([join(data, "Batch1"), "--base", data, "--json"], {
          script: join(REPO_ROOT, "scripts", "quick_upload.ts"),
          env: { SUPABASE_DB_URL: pg.url },
          cwd: dir,
        });
        assert.equal(quick.code, 0, describeRun(quick));
        assert.deepEqual([summaryOf(quick).inserted, summaryOf(quick).updated], [0, 1]);
        assert.deepEqual((await rowCounts(pg)).ids, [DEVICE_X]);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "identity: no markers and rows under another id: exit 2 naming DEVICE_ID=...; --adopt-device takes it; --verify names other ids",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("upstream_fork_", async (dir) => {
        const data = join(dir, "data");
        plainTree(data, 33);
        const first = await upload(
          [data, "--db-path", join(dir, "a.db"), "--min-age", "0", "--no-markers"],
          pg.url,
          { DEVICE_ID: DEVICE_X },
        );
        assert.equal(first.code, 0, describeRun(first));
        const devicesBefore = await sql(pg, "select count(*) from devices");

        const refused = await upload(
          [data, "--db-path", join(dir, "b.db"), "--min-age", "0"],
          pg.url,
        );
        assert.equal(refused.code, 2, describeRun(refused));
        assert.ok(refused.stderr.includes(`DEVICE_ID=${DEVICE_X}`), refused.stderr);
        assert.match(refused.stderr, /--adopt-device/);
        assert.match(refused.stderr, /33 folders/);
        assert.equal(summaryOf(refused).error_kind, "config");
        assert.equal(await sql(pg, "select count(*) from device_test"), "33", "nothing written");
        assert.equal(await sql(pg, "select count(*) from devices"), devicesBefore);
        assert.equal(trackerMeta(join(dir, "b.db"), "device_id"), undefined, "no id kept");

        // The same run again is refused again: the refusal kept no guess.
        const again = await upload(
          [data, "--db-path", join(dir, "b.db"), "--min-age", "0"],
          pg.url,
        );
        assert.equal(again.code, 2, describeRun(again));

        const adopted = await upload(
          [data, "--db-path", join(dir, "b.db"), "--min-age", "0", "--adopt-device"],
          pg.url,
        );
        assert.equal(adopted.code, 0, describeRun(adopted));
        assert.equal(summaryOf(adopted).inserted, 0);
        const device = jsonEvents(adopted).find((e) => e.event === "device");
        assert.deepEqual([device?.device_id, device?.source], [DEVICE_X, "adopted"]);
        assert.equal(trackerMeta(join(dir, "b.db"), "device_id"), DEVICE_X);
        const counts = await rowCounts(pg);
        assert.deepEqual(counts.ids, [DEVICE_X]);
        assert.ok([...counts.perFolder.values()].every((n) => n === 1), "one row per folder");

        // Another device id configured on purpose (an old fork), then a verify from a new
        // tracker names the copies under the other id.
        const fork = await upload(
          [data, "--db-path", join(dir, "c.db"), "--min-age", "0", "--no-markers"],
          pg.url,
          { DEVICE_ID: DEVICE_Y },
        );
        assert.equal(fork.code, 0, describeRun(fork));
        const verify = await upload(
          [data, "--db-path", join(dir, "d.db"), "--min-age", "0", "--verify"],
          pg.url,
          { DEVICE_ID: DEVICE_X },
        );
        assert.equal(verify.code, 0, describeRun(verify));
        const report = jsonEvents(verify).find((e) => e.event === "verify")!;
        assert.equal(report.adopted, 33);
        assert.deepEqual(report.other_devices, [{ device_id: DEVICE_Y, folders: 33 }]);
        assert.ok(verify.stderr.includes(DEVICE_Y), verify.stderr);
        assert.match(verify.stderr, /33 folders .*other device/);
        const status = await runUploadCli(["--status", "--db-path", join(dir, "d.db")]);
        assert.equal(status.code, 0, describeRun(status));
        assert.ok(
          status.stdout.includes(`Folders with rows under other device ids: ${DEVICE_Y} (33)`),
          status.stdout,
        );
      });
    } finally {
      await pg.close();
    }
  },
});

// 2. The authors' latest table --------------------------------------------------------

/** The folders a row was written for, and those without one. */
function split(folders: UpstreamFolder[]): { rows: UpstreamFolder[]; none: UpstreamFolder[] } {
  return { rows: folders.filter((f) => f.hasRow), none: folders.filter((f) => !f.hasRow) };
}

/** Bytes of every upload_*.json marker under the tree, by path. */
function oldMarkers(root: string, folders: UpstreamFolder[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of folders) {
    for (const name of ["upload_success.json", "upload_failed.json"]) {
      const path = join(root, f.name, name);
      if (exists(path)) out.set(path, Deno.readTextFileSync(path));
    }
  }
  return out;
}

Deno.test({
  name:
    "the authors' latest table: unchanged rows adopted as they stand, their markers kept, a changed row keeps what the tool does not own",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await withDir("upstream_rows_", async (dir) => {
        const data = join(dir, "data");
        const tree = writeUpstreamTree(data);
        await sql(pg, UPSTREAM_DDL + upstreamRowsSql(tree));
        const all = [...tree.batches, tree.archive];
        const { rows, none } = split(tree.batches);
        const before = await rowsByName(pg);
        const markersBefore = oldMarkers(data, all);
        assert.equal(markersBefore.size, 34);
        const db = join(dir, "tracker.db");

        await t.step(
          "first run without DEVICE_ID: nothing rewritten, missing rows added",
          async () => {
            const run = await upload([data, "--db-path", db, "--min-age", "0"], pg.url);
            assert.equal(run.code, 0, describeRun(run));
            const summary = summaryOf(run);
            assert.equal(summary.updated, 0, describeRun(run));
            assert.equal(summary.inserted, none.length);
            // 33 batches and the report archive, a unit as in their latest uploader.
            assert.equal(summary.uploaded, 34);
            const device = jsonEvents(run).find((e) => e.event === "device");
            assert.deepEqual([device?.device_id, device?.source], [UPSTREAM_DEVICE, "markers"]);
            const after = await rowsByName(pg, ["folder_key", "image_objects"]);
            for (const f of [...rows, tree.archive]) {
              assert.deepEqual(after.get(f.name), before.get(f.name), `${f.name} rewritten`);
            }
            for (const f of none) {
              const row = after.get(f.name)!;
              assert.ok(row, `${f.name} inserted`);
              assert.deepEqual(
                [row.device_id, row.device_name, row.device_type],
                [UPSTREAM_DEVICE, UPSTREAM_NAME, UPSTREAM_TYPE],
                "the device's name and type as the server holds them",
              );
            }
            const counts = await rowCounts(pg);
            assert.ok([...counts.perFolder.values()].every((n) => n === 1), "one row per folder");
            assert.deepEqual(counts.ids, [UPSTREAM_DEVICE]);
            assert.equal(
              await sql(
                pg,
                "select coalesce(name, '(null)') || '|' || count(*) over () from devices",
              ),
              "(null)|1",
              "their devices row as it was",
            );
            assert.deepEqual(oldMarkers(data, all), markersBefore, "their markers untouched");
            for (const f of tree.batches) {
              assert.equal(
                readJson(join(data, f.name, "success.json")).device_id,
                UPSTREAM_DEVICE,
                f.name,
              );
            }
            const again = await upload([data, "--db-path", db, "--min-age", "0"], pg.url);
            assert.equal(again.code, 0, describeRun(again));
            assert.equal(summaryOf(again).queued, 0, "nothing to send the second time");
          },
        );

        await t.step(
          "changed folders: rewritten, keeping URLs, metadata, notes, status",
          async () => {
            const b23 = tree.batches.find((f) => f.name === "Batch23")!;
            const b30 = tree.batches.find((f) => f.name === "Batch30")!;
            const b27 = tree.batches.find((f) => f.name === "Batch27")!;
            assert.ok(b23.incomplete && b30.incomplete && !b27.incomplete);
            const mtime = Date.UTC(2025, 5, 3, 9, 0, 0);
            writeTree(data, {
              "Batch23/stats.json": { json: { result: [[1, 1, 1]], mean: [[2, 2, 2]] }, mtime },
              "Batch30/2025-06-02 23:59:59.jpg": { bytes: 46_100, mtime },
              "Batch27/stats.json": { json: { result: [[9, 9, 9]] }, mtime },
            });
            const run = await upload([data, "--db-path", db, "--min-age", "0"], pg.url);
            assert.equal(run.code, 0, describeRun(run));
            assert.equal(summaryOf(run).updated, 3, describeRun(run));
            const after = await rowsByName(pg);
            for (const f of [b23, b30, b27]) {
              const old = before.get(f.name)!;
              const row = after.get(f.name)!;
              for (
                const column of ["id", "created_at", "pdf_url", "notes", "data", "device_name"]
              ) {
                assert.deepEqual(row[column], old[column], `${f.name}.${column} kept`);
              }
              assert.equal(row.test_status, old.test_status, `${f.name}: status kept`);
              const meta = row.metadata as Record<string, unknown>;
              const oldMeta = old.metadata as Record<string, unknown>;
              assert.deepEqual(meta.image_urls, oldMeta.image_urls, `${f.name}: image_urls kept`);
              assert.equal(meta.pdf_url, oldMeta.pdf_url);
              assert.equal(typeof meta.content_hash, "string", "the tool's own metadata added");
            }
            assert.equal(after.get("Batch23")!.test_status, "incomplete");
            assert.deepEqual(
              (after.get("Batch23")!.test_results as Record<string, unknown>).result,
              [[1, 1, 1]],
            );
            // Batch30: its three stored images keep their URLs; the new one is a bare name, in
            // the order of the file names (it sorts first).
            assert.deepEqual(after.get("Batch30")!.images, [
              "2025-06-02 23:59:59.jpg",
              ...(before.get("Batch30")!.images as string[]),
            ]);
            assert.equal(after.get("Batch27")!.test_status, "passed", "a computed status moves");
            assert.deepEqual(oldMarkers(data, all), markersBefore, "their markers untouched");
          },
        );

        await t.step("their REST uploader's own INSERT still works after the upgrade", async () => {
          const fresh: UpstreamFolder = {
            ...tree.batches[3],
            name: "Batch99",
            hasRow: true,
            incomplete: false,
          };
          await sql(pg, restInsertSql(fresh));
          assert.equal(
            await sql(pg, "select folder_key from device_test where folder_name = 'Batch99'"),
            "Batch99",
          );
          // Their insert of a folder already stored is refused, as it always was; their CHECK
          // on test_status still allows 'incomplete' and refuses anything else.
          await assert.rejects(sql(pg, restInsertSql({ ...fresh })), /duplicate key/);
          await sql(
            pg,
            "update device_test set test_status = 'incomplete' where folder_name = 'Batch99'",
          );
          await assert.rejects(
            sql(pg, "update device_test set test_status = 'bogus' where folder_name = 'Batch99'"),
            /device_test_test_status_check/,
          );
        });
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "the authors' latest table, their markers gone: exit 2 names their id; with DEVICE_ID one row per folder",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("upstream_nomark_", async (dir) => {
        const data = join(dir, "data");
        const tree = writeUpstreamTree(data, { markers: false });
        await sql(pg, UPSTREAM_DDL + upstreamRowsSql(tree));
        const before = await sql(
          pg,
          "select md5(string_agg(t::text, ',' order by id)) from device_test t",
        );
        const db = join(dir, "tracker.db");
        const refused = await upload([data, "--db-path", db, "--min-age", "0"], pg.url);
        assert.equal(refused.code, 2, describeRun(refused));
        assert.ok(refused.stderr.includes(`DEVICE_ID=${UPSTREAM_DEVICE}`), refused.stderr);
        assert.equal(
          await sql(pg, "select md5(string_agg(t::text, ',' order by id)) from device_test t"),
          before,
          "the table as it was: not even upgraded",
        );
        const run = await upload([data, "--db-path", db, "--min-age", "0"], pg.url, {
          DEVICE_ID: UPSTREAM_DEVICE,
        });
        assert.equal(run.code, 0, describeRun(run));
        assert.equal(summaryOf(run).updated, 0);
        const counts = await rowCounts(pg);
        assert.equal(counts.perFolder.size, 34);
        assert.ok([...counts.perFolder.values()].every((n) => n === 1), "one row per folder");
      });
    } finally {
      await pg.close();
    }
  },
});

// 3. Tables of other shapes ----------------------------------------------------------

Deno.test({
  name:
    "devices with NOT NULL columns of its own: the lab's row used as it is; without it, the INSERT to run",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("upstream_devices_", async (dir) => {
        const data = join(dir, "data");
        plainTree(data, 3);
        await sql(
          pg,
          `create table devices (id uuid primary key, device_name text not null,
             owner_id uuid not null, created_at timestamptz default now());
           insert into devices (id, device_name, owner_id) values
             ('${DEVICE_X}', 'Line 2 analyser', '11111111-2222-4333-8444-555555555555');`,
        );
        const row = () =>
          sql(pg, `select to_jsonb(d)::text from devices d where id = '${DEVICE_X}'`);
        const labRow = await row();
        const ok = await upload([data, "--db-path", join(dir, "a.db"), "--min-age", "0"], pg.url, {
          DEVICE_ID: DEVICE_X,
        });
        assert.equal(ok.code, 0, describeRun(ok));
        assert.equal(summaryOf(ok).inserted, 3);
        const after = JSON.parse(await row());
        const lab = JSON.parse(labRow);
        for (const [key, value] of Object.entries(lab)) {
          assert.deepEqual(after[key], value, `devices.${key} kept`);
        }
        assert.equal(
          await sql(pg, `select distinct device_name from device_test`),
          "Line 2 analyser",
          "the name the lab gave the device",
        );

        const refused = await upload(
          [data, "--db-path", join(dir, "b.db"), "--min-age", "0"],
          pg.url,
          { DEVICE_ID: DEVICE_Y },
        );
        assert.equal(refused.code, 2, describeRun(refused));
        assert.match(refused.stderr, /owner_id/);
        assert.match(refused.stderr, /device_name/);
        const insert = /insert into "devices" \([^)]*\) values \([^)]*\)/.exec(refused.stderr);
        assert.ok(insert, `the INSERT to run: ${refused.stderr}`);
        assert.ok(insert[0].includes(DEVICE_Y), insert[0]);
        assert.doesNotMatch(refused.stderr, /23502/, "no bare server error: it was foreseen");
        // The lab runs it, with its values, and the device uploads.
        await sql(
          pg,
          insert[0].replace(/<[^>]*device_name[^>]*>/, "'Line 3'").replace(
            /<[^>]*owner_id[^>]*>/,
            "'11111111-2222-4333-8444-555555555555'",
          ),
        );
        const third = await upload(
          [data, "--db-path", join(dir, "b.db"), "--min-age", "0"],
          pg.url,
          { DEVICE_ID: DEVICE_Y },
        );
        assert.equal(third.code, 0, describeRun(third));
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "a device_test made in Supabase's Table Editor (bigint identity id, RLS on): empty, and with rows typed by hand",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await sql(
        pg,
        `create role dash login password 'pw';
         grant create on schema public to dash;`,
      );
      const editorTable = `create table device_test (
           id int8 generated by default as identity primary key,
           created_at timestamptz not null default now(),
           folder_name text,
           device_id uuid,
           test_results jsonb,
           images text[],
           test_status text
         );
         alter table device_test enable row level security;`;
      await withDir("upstream_editor_", async (dir) => {
        const data = join(dir, "data");
        plainTree(data, 4);
        await t.step("empty", async () => {
          await sql(pg, `create database empty_editor owner dash`);
          await sql(pg, `set role dash; ${editorTable}`, { database: "empty_editor" });
          const url = roleUrl(pg, "dash").replace("/uploads", "/empty_editor");
          const run = await upload([data, "--db-path", join(dir, "a.db"), "--min-age", "0"], url, {
            DEVICE_ID: DEVICE_X,
          });
          assert.equal(run.code, 0, describeRun(run));
          assert.equal(summaryOf(run).inserted, 4);
          assert.equal(
            await sql(pg, "select min(pg_typeof(id)::text) || ' ' || count(*) from device_test", {
              database: "empty_editor",
            }),
            "bigint 4",
          );
        });
        await t.step("with rows typed by hand", async () => {
          await sql(pg, `create database typed_editor owner dash`);
          await sql(
            pg,
            `set role dash; ${editorTable}
             insert into device_test (folder_name, device_id, test_status) values
               ('Batch1', null, 'passed'), ('Batch1', null, 'failed'),
               ('Batch2', '${DEVICE_X}', 'passed'), ('Notes', null, null);`,
            { database: "typed_editor" },
          );
          const url = roleUrl(pg, "dash").replace("/uploads", "/typed_editor");
          const run = await upload([data, "--db-path", join(dir, "b.db"), "--min-age", "0"], url, {
            DEVICE_ID: DEVICE_X,
          });
          assert.equal(run.code, 0, describeRun(run));
          const keys = await sql(
            pg,
            "select string_agg(id || ':' || folder_key, ',' order by id) from device_test",
            { database: "typed_editor" },
          );
          const ids = keys.split(",");
          assert.deepEqual(ids.slice(0, 4), [
            "1:Batch1 (duplicate 1)",
            "2:Batch1",
            "3:Batch2",
            "4:Notes",
          ], "every hand-typed row kept, with its id");
          assert.equal(ids.length, 4 + 2, "Batch3 and Batch4 added");
        });
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "row-level security with Supabase's template policies (INSERT, SELECT): refused before the first batch, naming what is missing",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      await sql(pg, "create role lab login password 'pw'");
      await sql(pg, printSchemaSql({ table: "device_test", role: "lab" }));
      await sql(
        pg,
        `alter table device_test enable row level security;
         create policy "Enable insert for authenticated users only" on device_test
           for insert to lab with check (true);
         create policy "Enable read access for all users" on device_test for select using (true);
         alter table devices enable row level security;
         create policy "Enable read access for all users" on devices for select using (true);`,
      );
      await withDir("upstream_rls_", async (dir) => {
        const data = join(dir, "data");
        plainTree(data, 3);
        const url = roleUrl(pg, "lab");
        const db = join(dir, "a.db");
        const refused = await upload([data, "--db-path", db, "--min-age", "0"], url, {
          DEVICE_ID: DEVICE_X,
        });
        assert.equal(refused.code, 2, describeRun(refused));
        assert.match(refused.stderr, /device_test.*UPDATE/s);
        assert.match(refused.stderr, /devices.*INSERT/s);
        assert.match(refused.stderr, /create policy/);
        assert.equal(await sql(pg, "select count(*) from device_test"), "0", "nothing written");
        await sql(
          pg,
          `create policy up on device_test for update to lab using (true) with check (true);
           create policy ins on devices for insert to lab with check (true);`,
        );
        const run = await upload([data, "--db-path", db, "--min-age", "0"], url, {
          DEVICE_ID: DEVICE_X,
        });
        assert.equal(run.code, 0, describeRun(run));
        writeTree(data, { "Batch1/stats.json": { json: { result: [[7, 7, 7]] } } });
        const changed = await upload([data, "--db-path", db, "--min-age", "0"], url, {
          DEVICE_ID: DEVICE_X,
        });
        assert.equal(changed.code, 0, describeRun(changed));
        assert.equal(summaryOf(changed).updated, 1);
      });
    } finally {
      await pg.close();
    }
  },
});

// The upsert against rows another tool wrote ----------------------------------------

/** A psql session on the test server's socket, as the superuser. */
async function session(pg: PgServer, database = "uploads"): Promise<PsqlSession> {
  return await PsqlSession.start({
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", TEST_USER, "-d", database],
    env: {},
    display: "test server",
  });
}

/** A row as the upload manager builds it for a folder of `images` and `stats`. */
function ourRow(key: string, images: string[], stats: unknown, hash: string): UploadRow {
  return {
    folder_key: key,
    folder_name: key,
    images,
    test_results: stats,
    test_status: "passed",
    test_date: "2025-06-02T16:42:55.000Z",
    metadata: { content_hash: hash, computed_test_status: "passed", total_images: images.length },
  };
}

Deno.test({
  name:
    "upsert: another tool's rows matched by stats value and decoded image names (non-ASCII, any hex case, stray %); rewrites keep what the tool does not own",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const url = (name: string) =>
      `https://x.supabase.co/storage/v1/object/public/images/${DEVICE_X}/F/${name}`;
    try {
      for (const script of [false, true]) {
        const database = script ? "script" : "statement";
        await sql(pg, `create database ${database}`);
        const db = await session(pg, database);
        try {
          const device = { id: DEVICE_X, name: "TEST", type: "image_analyzer" };
          for (const ddl of buildSchemaStatements({ table: "device_test", device })) {
            assert.ok((await db.run(ddl)).ok);
          }
          assert.ok((await db.run("alter table device_test add column notes text")).ok);
          // Rows as the original uploader wrote them: URLs, a bare name for a failed upload,
          // numbers written as 1.0, lower-case escapes, a stray %, a hand-set status.
          const foreign = [
            ["F1", [url("%c3%a9t%c3%a9%201.jpg")], '{"a": 1.0, "b": [1, 2]}', "passed"],
            ["F2", [url("x.jpg"), "y.jpg"], '{"r": []}', "failed"],
            ["F3", [url("%ZZ%2.jpg")], "null", "pending"],
            ["F4", [url("x.jpg"), url("gone.jpg")], '{"r": [1]}', "incomplete"],
          ] as const;
          for (const [key, images, stats, status] of foreign) {
            const reply = await db.run(
              `insert into device_test (device_id, folder_key, folder_name, images, test_results,
                 test_status, metadata, data_type, notes)
               values ('${DEVICE_X}', '${key}', '${key}', array[${
                images.map((i) => `'${i}'`).join(", ")
              }], '${stats}'::jsonb, '${status}', '{"image_urls": ["kept"], "folder_hash": "theirs"}',
                 'pdf_report', 'by hand')`,
            );
            assert.ok(reply.ok, reply.ok ? "" : reply.message);
          }
          const table = async () => {
            const reply = await db.run(
              "select json_object_agg(folder_key, to_jsonb(t))::text from device_test t",
            );
            assert.ok(reply.ok);
            return new Map(Object.entries(JSON.parse(reply.rows[0]) as Record<string, unknown>));
          };
          const was = await table();
          const rows = [
            ourRow("F1", ["été 1.jpg"], { b: [1, 2], a: 1 }, "h1"),
            ourRow("F2", ["x.jpg", "y.jpg"], { r: [] }, "h2"),
            ourRow("F3", ["%ZZ%2.jpg"], null, "h3"),
            ourRow("F4", ["x.jpg", "z.jpg"], { r: [2] }, "h4"),
          ];
          const options = { table: "device_test", device, batchName: "b1" };
          const build = script ? buildUpsertScript : buildUpsertStatement;
          const reply = await db.run(build(rows, options), { script, timeoutMs: 60_000 });
          assert.ok(reply.ok, reply.ok ? "" : reply.message);
          assert.deepEqual(parseUpsertReply(reply.rows), { inserted: 0, updated: 1 }, database);
          const now = await table();
          for (const key of ["F1", "F2", "F3"]) {
            assert.deepEqual(now.get(key), was.get(key), `${database}: ${key} left as it stands`);
          }
          // deno-lint-ignore no-explicit-any
          const f4 = now.get("F4") as any;
          assert.deepEqual(f4.images, [url("x.jpg"), "z.jpg"], "the stored image keeps its URL");
          assert.equal(f4.test_status, "incomplete", "a hand-set status is kept");
          assert.equal(f4.data_type, "pdf_report");
          assert.equal(f4.notes, "by hand");
          assert.deepEqual(f4.metadata.image_urls, ["kept"]);
          assert.equal(f4.metadata.content_hash, "h4");
          assert.deepEqual(f4.test_results, { r: [2] });

          // The tool's own rows: a status someone changed by hand stays; its own moves.
          const own = [ourRow("O1", [], { r: [1] }, "o1"), ourRow("O2", [], { r: [1] }, "o2")];
          assert.ok((await db.run(build(own, options), { script, timeoutMs: 60_000 })).ok);
          assert.ok(
            (await db.run("update device_test set test_status = 'failed' where folder_key = 'O1'"))
              .ok,
          );
          const changed = own.map((r) => ({
            ...r,
            test_status: "pending",
            metadata: {
              ...r.metadata,
              content_hash: `${r.metadata.content_hash}b`,
              computed_test_status: "pending",
            },
          }));
          const second = await db.run(build(changed, options), { script, timeoutMs: 60_000 });
          assert.ok(second.ok);
          assert.deepEqual(parseUpsertReply(second.rows), { inserted: 0, updated: 2 });
          const statuses = await db.run(
            "select string_agg(folder_key || '=' || test_status, ',' order by folder_key) from device_test where folder_key like 'O%'",
          );
          assert.ok(statuses.ok);
          assert.deepEqual(statuses.rows, ["O1=failed,O2=pending"], database);
        } finally {
          await db.close();
        }
      }
    } finally {
      await pg.close();
    }
  },
});
