/**
 * The upload path end to end: the real CLI (`deno run scripts/upload_manager.ts` as a
 * subprocess), a real PostgreSQL 15 from support/postgres.ts, real trees on disk.
 * The URL always travels in SUPABASE_DB_URL, never in argv. Every assertion reads the
 * outcome where a user would find it: the table's rows, the tracking database, the marker
 * files, the exit code and the `--json` summary line.
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { buildSchemaStatements } from "../../lib/sink/postgres/schema.ts";
import { describeRun, jsonEvents, runUploadCli, summaryOf } from "../../support/cli.ts";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree, removeTree, T1, T2, type TreeSpec, writeTree } from "../../support/tree.ts";

const NO_SERVER = !hasPostgres();
const IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif", ".bmp"];
const DEVICE_ID = "5d9c7f0e-3b1a-4c2d-9e8f-0a1b2c3d4e5f";

/** A server, a temp dir with `data/` for the tree and a tracking database path. */
interface Setup {
  pg: PgServer;
  dir: string;
  data: string;
  db: string;
}

async function withSetup(fn: (s: Setup) => Promise<void>): Promise<void> {
  const pg = await startPostgres();
  const dir = Deno.makeTempDirSync({ prefix: "upload_test_" });
  try {
    await fn({ pg, dir, data: join(dir, "data"), db: join(dir, "tracker.db") });
  } finally {
    try {
      await pg.close();
    } finally {
      removeTree(dir);
    }
  }
}

/** Runs the upload CLI on the setup's tree with `--json`, the URL in SUPABASE_DB_URL. */
function upload(s: Setup, extra: string[] = [], env: Record<string, string> = {}) {
  return runUploadCli([s.data, "--db-path", s.db, "--json", ...extra], {
    env: { SUPABASE_DB_URL: s.pg.url, ...env },
    cwd: s.dir,
  });
}

/** A row of device_test as the tests read it. */
interface Row {
  id: string;
  device_id: string;
  folder_key: string;
  folder_name: string;
  images: string[];
  test_results: unknown;
  test_status: string;
  test_date: string | null;
  metadata: Record<string, unknown>;
  updated_at: string;
  created_at: string;
  upload_batch: string | null;
  xmin: string;
}

async function readRows(pg: PgServer, table = "device_test"): Promise<Row[]> {
  const out = await pg.psql(
    `select row_to_json(t)::text from (select id, device_id, folder_key, folder_name, images, ` +
      `test_results, test_status, test_date, metadata, updated_at, created_at, upload_batch, ` +
      `xmin::text as xmin from ${table}) t`,
  );
  return out.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Row);
}

function byKey(rows: Row[]): Map<string, Row> {
  const map = new Map<string, Row>();
  for (const r of rows) {
    assert.ok(!map.has(r.folder_key), `two rows for ${JSON.stringify(r.folder_key)}`);
    map.set(r.folder_key, r);
  }
  return map;
}

interface TrackedFolder {
  folder_path: string;
  folder_key: string;
  upload_status: string;
  error_message: string | null;
  retry_count: number;
}

function trackerFolders(db: string): Map<string, TrackedFolder> {
  const sqlite = new DatabaseSync(db, { readOnly: true });
  try {
    const rows = sqlite.prepare(
      "SELECT folder_path, folder_key, upload_status, error_message, retry_count FROM folder_status",
    ).all() as unknown as TrackedFolder[];
    return new Map(rows.map((r) => [r.folder_key, { ...r, retry_count: Number(r.retry_count) }]));
  } finally {
    sqlite.close();
  }
}

function trackerBatchCount(db: string): number {
  const sqlite = new DatabaseSync(db, { readOnly: true });
  try {
    return Number(
      (sqlite.prepare("SELECT count(*) AS n FROM upload_batches").get() as {
        n: number;
      }).n,
    );
  } finally {
    sqlite.close();
  }
}

/** What a unit folder holds, read independently of lib/source/. */
interface Unit {
  key: string;
  name: string;
  path: string;
  files: { name: string; mtimeMs: number }[];
}

function isImage(name: string): boolean {
  const dot = name.lastIndexOf(".");
  return dot > 0 && IMAGE_EXTENSIONS.includes(name.slice(dot).toLowerCase());
}

const MARKERS = new Set(["success.json", "failed.json"]);

/** Every upload unit under `root`: folders directly holding stats.json or an image. */
function walkUnits(root: string, rel = ""): Unit[] {
  const out: Unit[] = [];
  const dir = rel === "" ? root : join(root, rel);
  const files: Unit["files"] = [];
  const subdirs: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.startsWith(".") || e.isSymlink) continue;
    if (e.isDirectory) subdirs.push(e.name);
    else if (e.isFile && !MARKERS.has(e.name)) {
      files.push({ name: e.name, mtimeMs: Deno.statSync(join(dir, e.name)).mtime!.getTime() });
    }
  }
  if (files.some((f) => f.name === "stats.json" || isImage(f.name))) {
    out.push({ key: rel, name: rel.split("/").pop()!, path: dir, files });
  }
  for (const sub of subdirs) out.push(...walkUnits(root, rel === "" ? sub : `${rel}/${sub}`));
  return out;
}

/** The default test-status rule, restated for the generated trees' `result` values. */
function expectedStatus(stats: unknown): string {
  if (stats === null) return "pending";
  const result = (stats as { result?: unknown }).result;
  return typeof result === "string" && result !== "" ? "passed" : "failed";
}

/** The time stamp a file name starts with (`YYYY-MM-DD HH:MM[:SS]`, local time), or null. */
function nameStamp(name: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2})(?::(\d{2}))?/.exec(name);
  if (!m) return null;
  const [y, mo, d, h, mi, sec] = m.slice(1).map((part) => Number(part ?? 0));
  return new Date(y, mo - 1, d, h, mi, sec).getTime();
}

/** Asserts that `row` is exactly what `unit` should have produced. */
function assertRowMatches(row: Row | undefined, unit: Unit): void {
  assert.ok(row, `no row for ${JSON.stringify(unit.key)}`);
  const where = JSON.stringify(unit.key);
  assert.equal(row.folder_name, unit.name, where);
  const images = unit.files.map((f) => f.name).filter(isImage).sort();
  assert.deepEqual(row.images, images, where);
  const statsFile = unit.files.find((f) => f.name === "stats.json");
  const stats = statsFile ? JSON.parse(Deno.readTextFileSync(join(unit.path, "stats.json"))) : null;
  assert.deepEqual(row.test_results, stats, where);
  assert.equal(row.test_status, expectedStatus(stats), where);
  // The device's own time stamp in the image names (`2025-06-02 16:42:55.jpg`, local
  // time) when they carry one, else in the reports' names, else stats.json's mtime, else
  // the newest image's.
  const stampsOf = (files: typeof unit.files) =>
    files.map((f) => nameStamp(f.name)).filter((t) => t !== null);
  const imageStamps = stampsOf(unit.files.filter((f) => isImage(f.name)));
  const stamps = imageStamps.length > 0
    ? imageStamps
    : stampsOf(unit.files.filter((f) => /\.pdf$/i.test(f.name)));
  const dateMs = stamps.length > 0
    ? Math.max(...stamps)
    : statsFile
    ? statsFile.mtimeMs
    : Math.max(...unit.files.filter((f) => isImage(f.name)).map((f) => f.mtimeMs));
  assert.equal(Date.parse(row.test_date!), dateMs, `${where} test_date ${row.test_date}`);
  const m = row.metadata;
  assert.match(String(m.folder_hash), /^[0-9a-f]{32}$/, where);
  assert.match(String(m.content_hash), /^[0-9a-f]{32}$/, where);
  assert.equal(m.total_images, images.length, where);
  assert.deepEqual(
    [...(m.files_processed as string[])].sort(),
    unit.files.map((f) => f.name).sort(),
    where,
  );
  assert.ok(Number.isFinite(Date.parse(String(m.upload_timestamp))), where);
}

function readMarker(path: string, name: string): Record<string, unknown> | null {
  try {
    return JSON.parse(Deno.readTextFileSync(join(path, name)));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

Deno.test({
  name:
    "a generated tree lands as one row per unit; a re-run writes nothing; changes rewrite only " +
    "changed rows",
  ignore: NO_SERVER,
  async fn(t) {
    await withSetup(async (s) => {
      const generated = generateTree(s.data, { folders: 1200, nested: true, perLine: 300 });
      // Deeper nesting, and a unit inside a unit.
      writeTree(s.data, {
        "Deep/a/b/c/Run1/stats.json": { json: { result: "PASS", n: 1.5 }, mtime: T1 },
        "Deep/a/b/c/Run1/img.PNG": { bytes: 10, mtime: T2 },
        "Deep/a/b/c/Run1/inner/z.jpg": { bytes: 20, mtime: T1 },
        "Deep/a/b/c/Run1/inner/a.jpeg": { bytes: 21, mtime: T2 },
        "Deep/a/notes.txt": { text: "not a unit" },
      });
      const units = walkUnits(s.data);
      assert.equal(units.length, generated.units + 2);

      await t.step(
        "first run: every unit uploaded exactly once, tracker and markers agree",
        async () => {
          const run = await upload(s);
          assert.equal(run.code, 0, describeRun(run));
          const summary = summaryOf(run);
          assert.equal(summary.uploaded, units.length);
          assert.equal(summary.inserted, units.length);
          assert.equal(summary.failed, 0);
          const rows = await readRows(s.pg);
          assert.equal(rows.length, units.length);
          const map = byKey(rows);
          for (const unit of units) assertRowMatches(map.get(unit.key), unit);
          const counts = { passed: 0, failed: 0, pending: 0 } as Record<string, number>;
          for (const r of rows) counts[r.test_status]++;
          // generateTree's own tally (the two hand-written units: one passed, one pending).
          assert.deepEqual(counts, {
            passed: generated.testStatus.passed + 1,
            failed: generated.testStatus.failed,
            pending: generated.testStatus.pending + 1,
          });
          assert.equal(new Set(rows.map((r) => r.device_id)).size, 1);

          const tracked = trackerFolders(s.db);
          assert.equal(tracked.size, units.length);
          for (const unit of units) {
            const f = tracked.get(unit.key);
            assert.equal(f?.upload_status, "success", unit.key);
            assert.equal(f?.error_message, null, unit.key);
          }
          for (const unit of units) {
            const marker = readMarker(unit.path, "success.json");
            assert.ok(marker, `no success.json in ${unit.key}`);
            assert.equal(marker.status, "success");
            assert.equal(marker.folder_key, unit.key);
            assert.equal(readMarker(unit.path, "failed.json"), null);
          }
          // Folders that are not units get no marker.
          assert.equal(readMarker(join(s.data, "Deep/a"), "success.json"), null);
          assert.equal(readMarker(join(s.data, "Line1/Batch00009"), "success.json"), null);
        },
      );

      await t.step("second run: nothing written, no connection needed", async () => {
        const before = byKey(await readRows(s.pg));
        const batches = trackerBatchCount(s.db);
        // With the server down, a run that has nothing to upload must still succeed.
        await s.pg.stop();
        let run;
        try {
          run = await upload(s, ["--give-up-after", "1"]);
        } finally {
          await s.pg.start();
        }
        assert.equal(run.code, 0, describeRun(run));
        const summary = summaryOf(run);
        assert.equal(summary.uploaded, 0);
        assert.equal(summary.queued, 0);
        assert.equal(summary.batches, 0);
        assert.equal(summary.unchanged, units.length);
        assert.equal(summary.changed, 0);
        assert.equal(trackerBatchCount(s.db), batches, "run 2 recorded a batch");
        const after = byKey(await readRows(s.pg));
        assert.equal(after.size, before.size);
        for (const [key, row] of before) {
          assert.equal(after.get(key)?.updated_at, row.updated_at, key);
          assert.equal(after.get(key)?.xmin, row.xmin, key);
        }
      });

      await t.step("five changed folders rewrite five rows; a touch rewrites none", async () => {
        const before = byKey(await readRows(s.pg));
        const withStats = units.filter((u) => u.files.some((f) => f.name === "stats.json"));
        const changed = withStats.slice(10, 15);
        for (const unit of changed.slice(0, 4)) {
          const file = join(unit.path, "stats.json");
          const stats = JSON.parse(Deno.readTextFileSync(file));
          stats.particle_count = -1;
          stats.result = "PASS";
          Deno.writeTextFileSync(file, JSON.stringify(stats));
        }
        Deno.writeFileSync(join(changed[4].path, "2099-01-01 00:00:00.jpg"), new Uint8Array(33));
        // Mtime only: the folder is re-read, its content hash stays the same, nothing is sent.
        const touched = withStats[40];
        const later = new Date(Date.now() - 60_000);
        for (const f of touched.files) Deno.utimeSync(join(touched.path, f.name), later, later);

        const run = await upload(s, ["--min-age", "0"]);
        assert.equal(run.code, 0, describeRun(run));
        const summary = summaryOf(run);
        assert.equal(summary.modified, 6);
        assert.equal(summary.uploaded, 5);
        assert.equal(summary.adopted, 1);
        assert.equal(summary.updated, 5);
        assert.equal(summary.inserted, 0);
        const after = byKey(await readRows(s.pg));
        assert.equal(after.size, before.size);
        const changedKeys = new Set(changed.map((u) => u.key));
        for (const [key, row] of before) {
          const now = after.get(key)!;
          if (changedKeys.has(key)) {
            assert.notEqual(now.updated_at, row.updated_at, `${key} was not rewritten`);
            assert.notEqual(now.metadata.content_hash, row.metadata.content_hash, key);
            assert.equal(now.id, row.id, key);
            assert.equal(now.created_at, row.created_at, key);
          } else {
            assert.equal(now.updated_at, row.updated_at, `${key} was rewritten`);
            assert.equal(now.xmin, row.xmin, `${key} was rewritten`);
          }
        }
        for (const unit of walkUnits(s.data).filter((u) => changedKeys.has(u.key))) {
          assertRowMatches(after.get(unit.key), unit);
        }
        assert.equal(
          after.get(touched.key)?.metadata.content_hash,
          before.get(touched.key)?.metadata.content_hash,
        );
        for (const f of trackerFolders(s.db).values()) assert.equal(f.upload_status, "success");
      });
    });
  },
});

Deno.test({
  name: "--no-markers uploads without writing success.json or failed.json",
  ignore: NO_SERVER,
  async fn() {
    await withSetup(async (s) => {
      generateTree(s.data, { folders: 150, nested: true, perLine: 50 });
      writeTree(s.data, { "Broken/stats.json": { text: "{oops" } });
      const run = await upload(s, ["--no-markers"]);
      assert.equal(run.code, 1, describeRun(run));
      const units = walkUnits(s.data);
      assert.equal((await readRows(s.pg)).length, units.length - 1);
      for (const unit of units) {
        assert.equal(readMarker(unit.path, "success.json"), null, unit.key);
        assert.equal(readMarker(unit.path, "failed.json"), null, unit.key);
      }
      assert.equal(trackerFolders(s.db).get("Broken")?.upload_status, "failed");
    });
  },
});

/** Hostile folder names that must arrive as data, byte for byte. */
const HOSTILE_NAMES = [
  "x'); DROP TABLE device_test; --",
  `quote's "double"`,
  "dollar $$ and $tag$ body $tag$",
  "back\\slash \\' \\\\",
  "new\nline",
  "emoji 🧪📷 é ß 漢字",
  "colon :foo :'bar' :\"baz\"",
  "semi; \\echo injected",
];

/** Bad stats.json files and the word their error must carry. */
const BAD_STATS: Record<string, { entry: TreeSpec[string]; reason: RegExp }> = {
  "bad-json": { entry: { text: '{"result": "PASS",' }, reason: /JSON|parse/i },
  "bad-empty": { entry: { text: "" }, reason: /empty/i },
  "bad-blank": { entry: { text: " \n\t " }, reason: /empty/i },
  "bad-latin1": {
    entry: { bytes: new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xe9, 0x22, 0x7d]) },
    reason: /UTF-8/i,
  },
  "bad-nul": { entry: { text: '{"result": "PASS", "note": "a\\u0000b"}' }, reason: /NUL/i },
  "bad-surrogate": {
    entry: { text: '{"result": "PASS", "note": "\\ud800"}' },
    reason: /surrogate/i,
  },
};

Deno.test({
  name: "bad inputs fail alone, hostile names upload as data; failures retry until --max-retries " +
    "and at once when changed",
  ignore: NO_SERVER,
  async fn(t) {
    await withSetup(async (s) => {
      const spec: TreeSpec = {};
      for (let i = 0; i < 20; i++) {
        spec[`good${String(i).padStart(2, "0")}/stats.json`] = { json: { result: "PASS", i } };
        spec[`good${String(i).padStart(2, "0")}/a.jpg`] = { bytes: 10, mtime: T2 };
      }
      for (const name of HOSTILE_NAMES) {
        spec[`${name}/stats.json`] = { json: { result: name, name } };
        spec[`${name}/${name}.png`] = { bytes: 5 };
      }
      for (const [name, bad] of Object.entries(BAD_STATS)) {
        spec[`${name}/stats.json`] = bad.entry;
        spec[`${name}/shot.jpg`] = { bytes: 7 };
      }
      writeTree(s.data, spec);
      const goodCount = 20 + HOSTILE_NAMES.length;
      const badKeys = Object.keys(BAD_STATS);

      await t.step("first run: exit 1, each bad folder failed with its reason", async () => {
        const run = await upload(s, ["--max-retries", "2"]);
        assert.equal(run.code, 1, describeRun(run));
        const summary = summaryOf(run);
        assert.equal(summary.uploaded, goodCount);
        assert.equal(summary.failed, badKeys.length);
        const rows = byKey(await readRows(s.pg));
        assert.equal(rows.size, goodCount);
        for (const name of HOSTILE_NAMES) {
          const row = rows.get(name);
          assert.ok(row, `no row for ${JSON.stringify(name)}`);
          assert.equal(row.folder_name, name);
          assert.deepEqual(row.images, [`${name}.png`]);
          assert.deepEqual(row.test_results, { result: name, name });
        }
        // The injection attempt did nothing: the table and its rows are all still there.
        assert.equal(
          (await s.pg.psql("select count(*) from device_test")).trim(),
          String(goodCount),
        );

        const failedEvents = jsonEvents(run).filter((e) => e.event === "folder_failed");
        assert.deepEqual(failedEvents.map((e) => e.key).sort(), [...badKeys].sort());
        const tracked = trackerFolders(s.db);
        for (const [name, bad] of Object.entries(BAD_STATS)) {
          const f = tracked.get(name)!;
          assert.equal(f.upload_status, "failed", name);
          assert.equal(f.retry_count, 1, name);
          assert.ok(f.error_message?.includes(name), `${name}: ${f.error_message}`);
          assert.match(f.error_message!, bad.reason, name);
          assert.ok(!rows.has(name), `${name} was uploaded`);
          const marker = readMarker(join(s.data, name), "failed.json");
          assert.equal(marker?.status, "failed", name);
          assert.equal(marker?.error, f.error_message, name);
          assert.equal(readMarker(join(s.data, name), "success.json"), null, name);
          // The human line on stderr names the folder.
          assert.ok(run.stderr.includes(name), `stderr does not name ${name}`);
        }
        for (const [key, f] of tracked) {
          if (!badKeys.includes(key)) assert.equal(f.upload_status, "success", key);
        }
      });

      await t.step("second run retries the failed folders (retry 2 of 2)", async () => {
        const run = await upload(s, ["--max-retries", "2"]);
        assert.equal(run.code, 1, describeRun(run));
        const summary = summaryOf(run);
        assert.equal(summary.queued, badKeys.length);
        assert.equal(summary.failed, badKeys.length);
        for (const name of badKeys) assert.equal(trackerFolders(s.db).get(name)?.retry_count, 2);
      });

      await t.step("third run leaves them alone; a changed folder is retried at once", async () => {
        const quiet = await upload(s, ["--max-retries", "2"]);
        const summary = summaryOf(quiet);
        assert.equal(summary.queued, 0, describeRun(quiet));
        assert.equal(summary.exhausted, badKeys.length);
        for (const name of badKeys) assert.equal(trackerFolders(s.db).get(name)?.retry_count, 2);

        Deno.writeTextFileSync(join(s.data, "bad-json", "stats.json"), '{"result": "PASS"}');
        const fixed = await upload(s, ["--max-retries", "2", "--min-age", "0"]);
        const fixedSummary = summaryOf(fixed);
        assert.equal(fixedSummary.queued, 1, describeRun(fixed));
        assert.equal(fixedSummary.uploaded, 1);
        const f = trackerFolders(s.db).get("bad-json")!;
        assert.equal(f.upload_status, "success");
        assert.equal(f.error_message, null);
        assert.equal(readMarker(join(s.data, "bad-json"), "failed.json"), null);
        assert.equal(readMarker(join(s.data, "bad-json"), "success.json")?.status, "success");
        const row = byKey(await readRows(s.pg)).get("bad-json");
        assert.deepEqual(row?.test_results, { result: "PASS" });
      });
    });
  },
});

Deno.test({
  name:
    "a row the server refuses (CHECK constraint) fails alone with SQLSTATE 23514; the rest land",
  ignore: NO_SERVER,
  async fn() {
    await withSetup(async (s) => {
      await s.pg.psql(
        buildSchemaStatements({
          table: "device_test",
          device: { id: DEVICE_ID, name: "lab", type: "image_analyzer" },
        }).join("\n"),
      );
      await s.pg.psql(
        "alter table device_test add constraint no_poison check (folder_name <> 'poison')",
      );
      const spec: TreeSpec = {};
      for (let i = 0; i < 199; i++) {
        spec[`f${String(i).padStart(3, "0")}/stats.json`] = { json: { i } };
      }
      spec["poison/stats.json"] = { json: { result: "PASS" } };
      writeTree(s.data, spec);
      const run = await upload(s, [], { DEVICE_ID });
      assert.equal(run.code, 1, describeRun(run));
      const summary = summaryOf(run);
      assert.equal(summary.uploaded, 199);
      assert.equal(summary.failed, 1);
      const rows = byKey(await readRows(s.pg));
      assert.equal(rows.size, 199);
      assert.ok(!rows.has("poison"));
      const tracked = trackerFolders(s.db);
      const poison = tracked.get("poison")!;
      assert.equal(poison.upload_status, "failed");
      assert.match(poison.error_message!, /23514/);
      assert.match(poison.error_message!, /no_poison/);
      for (const [key, f] of tracked) {
        if (key !== "poison") assert.equal(f.upload_status, "success", key);
      }
      assert.match(readMarker(join(s.data, "poison"), "failed.json")?.error as string, /23514/);
    });
  },
});

Deno.test({
  name: "a table in the original scripts' shape is upgraded with every old row kept",
  ignore: NO_SERVER,
  async fn() {
    await withSetup(async (s) => {
      const otherDevice = "11111111-2222-4333-8444-555555555555";
      await s.pg.psql(`
        create table device_test (
          id uuid default gen_random_uuid() primary key,
          created_at timestamptz default now(),
          updated_at timestamptz default now(),
          device_id uuid null,
          device_name text,
          device_type text,
          folder_name text,
          images text[],
          test_results jsonb,
          test_status text,
          test_date timestamptz,
          upload_batch text,
          metadata jsonb,
          data_type text
        );
        insert into device_test (device_id, folder_name, images, test_results, test_status,
            updated_at, metadata)
        values
          (null, 'Batch1', '{a.jpg}', '{"result":"PASS"}', 'passed', now() - interval '3 days', null),
          (null, 'Batch1', '{a.jpg}', '{"result":"PASS"}', 'passed', now() - interval '2 days', null),
          (null, 'Batch1', '{a.jpg,b.jpg}', '{"result":"PASS"}', 'passed', now() - interval '1 day', null),
          (null, 'Batch2', '{}', '{"result":""}', 'failed', now(), '{"x":1}'),
          (null, 'Batch2', '{}', null, 'pending', now(), null),
          (null, 'OldOnly', null, null, null, null, null),
          ('${otherDevice}', 'Batch1', '{}', null, null, now(), null);
      `);
      const oldIds = (await s.pg.psql("select id from device_test")).trim().split("\n");
      assert.equal(oldIds.length, 7);
      writeTree(s.data, {
        "Batch1/stats.json": { json: { result: "PASS" } },
        "Batch1/a.jpg": { bytes: 3 },
        "Batch3/stats.json": { json: { result: "" } },
        "Batch4/x.png": { bytes: 4 },
      });
      const run = await upload(s, [], { DEVICE_ID });
      assert.equal(run.code, 0, describeRun(run));
      const summary = summaryOf(run);
      const schema = jsonEvents(run).find((e) => e.event === "schema");
      // Batch1 twice and Batch2 once more than one key allows: three duplicates re-keyed.
      assert.equal(schema?.rekeyed, 3);
      assert.match(run.stderr, /duplicate/i);
      const rows = await readRows(s.pg);
      assert.equal(rows.length, oldIds.length + Number(summary.inserted));
      assert.equal(summary.inserted, 2); // Batch3, Batch4; Batch1 took over the old row
      const ids = new Set(rows.map((r) => r.id));
      for (const id of oldIds) assert.ok(ids.has(id), `old row ${id} was lost`);
      const mine = rows.filter((r) => r.device_id === DEVICE_ID);
      const keys = mine.map((r) => r.folder_key).sort();
      assert.equal(keys.filter((k) => k.startsWith("Batch1 (duplicate ")).length, 2);
      assert.equal(keys.filter((k) => k.startsWith("Batch2 (duplicate ")).length, 1);
      for (const k of ["Batch1", "Batch2", "Batch3", "Batch4", "OldOnly"]) {
        assert.equal(keys.filter((x) => x === k).length, 1, `${k} in ${keys}`);
      }
      // The newest old Batch1 row is the one the upload took over.
      const batch1 = mine.find((r) => r.folder_key === "Batch1")!;
      assert.deepEqual(batch1.images, ["a.jpg"]);
      assert.equal(rows.filter((r) => r.device_id === otherDevice).length, 1);
      assert.equal(
        (await s.pg.psql(`select count(*) from devices where id = '${otherDevice}'`)).trim(),
        "1",
      );
      // A second run is quiet and keeps everything.
      const again = await upload(s, [], { DEVICE_ID });
      assert.equal(again.code, 0, describeRun(again));
      assert.equal((await readRows(s.pg)).length, rows.length);
    });
  },
});
