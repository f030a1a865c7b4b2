/**
 * Reports (PDFs), report-only folders, device time stamps, image URLs and the readiness
 * rule, through the uploader as a user runs it, against a real PostgreSQL and a real
 * S3-compatible server (s3rver, checking SigV4 signatures):
 *
 * - `--objects-to` stores every report beside the images under the same key scheme, before
 *   the row; `pdf_url` holds its URL, metadata every report's; a re-run puts nothing;
 *   `--images-to` is the same flag;
 * - a tree shaped like the authors' own data folder (support/upstream.ts) uploads with every
 *   folder accounted for, its report archive (nine PDFs, nothing else) included, `pending`;
 *   test_date is the capture time the file names carry;
 * - `--images-as urls`: rows hold the objects' URLs as the authors' uploader wrote them, and
 *   rows that uploader wrote are adopted as they stand;
 * - `--ready-when '*.pdf'`: in a normal run a folder without its report waits, one past
 *   `--ready-timeout` goes `incomplete` and is sent again once complete; under `--watch`, a
 *   simulated device writing images 8 s apart and the report last gets each folder written
 *   exactly once, complete.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { type S3Server, withPgAndS3 } from "../../support/s3.ts";
import { writeTree } from "../../support/tree.ts";
import {
  percentEncode,
  publicUrl,
  UPSTREAM_DDL,
  UPSTREAM_DEVICE,
  upstreamRowsSql,
  writeUpstreamTree,
} from "../../support/upstream.ts";
import { storeFromEnv } from "../../lib/objects/storage.ts";
import { deviceRuns, simulateDevice } from "../../support/device.ts";
import { REPO_ROOT, runUploadCli } from "../../support/cli.ts";
import {
  delay,
  describeExit,
  runUploader,
  startUploader,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";

const DEVICE = "5a8e1f2b-3c4d-4e5f-9a0b-1c2d3e4f5a6b";
const OLD = Date.UTC(2025, 5, 2, 18, 0, 0);

function summary(exit: UploaderExit): Record<string, unknown> {
  const s = exit.events.findLast((e) => e.event === "summary");
  assert.ok(s, describeExit(exit));
  return s;
}

/** Bytes that differ per seed. */
function bytes(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (seed * 31 + i * 7 + (i >> 8)) & 0xff;
  return out;
}

/** Every row as JSON, by folder_key. */
async function rows(pg: PgServer): Promise<Map<string, Record<string, unknown>>> {
  const out = await pg.psql(
    "select coalesce(json_object_agg(folder_key, to_jsonb(t)), '{}') from device_test t",
  );
  return new Map(Object.entries(JSON.parse(out.trim()) as Record<string, Record<string, unknown>>));
}

/** Every row as JSON, by folder_name, less the columns named. */
async function rowsByName(
  pg: PgServer,
  drop: string[] = [],
): Promise<Map<string, Record<string, unknown>>> {
  const minus = drop.map((c) => ` - '${c}'`).join("");
  const out = await pg.psql(
    `select coalesce(json_object_agg(folder_name, to_jsonb(t)${minus}), '{}') from device_test t`,
  );
  return new Map(Object.entries(JSON.parse(out.trim()) as Record<string, Record<string, unknown>>));
}

function withServers(
  fn: (pg: PgServer, s3: S3Server, dir: string) => Promise<void>,
): Promise<void> {
  return withPgAndS3("reports_test_", fn);
}

/** The files of the reports tree, by `folder/name`. */
function writeReportsTree(data: string): Map<string, Uint8Array> {
  const files = new Map<string, Uint8Array>();
  const add = (path: string, content: Uint8Array) => {
    files.set(path, content);
    writeTree(data, { [path]: { bytes: content, mtime: OLD } });
  };
  writeTree(data, {
    "Batch 1/stats.json": { json: { result: [[1, 2, 3]] }, mtime: OLD },
    "Plain/stats.json": { json: { result: [] }, mtime: OLD },
  });
  add("Batch 1/2025-06-02 16:42:55.jpg", bytes(1, 3000));
  add("Batch 1/2025-06-02 16:43:10.jpg", bytes(2, 2000));
  add("Batch 1/2025-06-02 16:44.pdf", bytes(3, 5000));
  add("Batch2/2025-06-03 09:12:01.png", bytes(4, 1000));
  add("Batch2/2025-06-03 09:20.pdf", bytes(5, 4000));
  add("Batch2/2025-06-03 09:30.PDF", bytes(6, 4100));
  for (let k = 1; k <= 3; k++) add(`Archive/2025-06-0${k} 09:30.pdf`, bytes(10 + k, 2048));
  return files;
}

/** A path-style URL of the s3rver object `key`, as `--url-form public` writes it. */
function s3Url(s3: S3Server, key: string): string {
  return `${s3.endpoint}/${s3.bucket}/${key.split("/").map(percentEncode).join("/")}`;
}

Deno.test({
  name:
    "reports: PDFs stored byte-identical beside the images, pdf_url and metadata name them, a re-run puts nothing; --images-to is the same flag",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServers(async (pg, s3, dir) => {
      const data = join(dir, "data");
      const files = writeReportsTree(data);
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, TZ: "UTC", ...s3.env() };
      const args = [data, "--db-path", db, "--min-age", "0"];

      const dry = await runUploader([...args, "--objects-to", "s3://images/raw", "--dry-run"], {
        env,
      });
      assert.equal(dry.code, 0, describeExit(dry));
      assert.equal(summary(dry).objects, files.size, "images and reports counted");

      const first = await runUploader([...args, "--objects-to", "s3://images/raw"], { env });
      assert.equal(first.code, 0, describeExit(first));
      assert.equal(summary(first).objects, files.size);
      assert.equal(summary(first).uploaded, 4, "the report-only folder is a unit");
      const store = storeFromEnv(s3.env(), "s3://images/raw")!;
      for (const [path, content] of files) {
        const key = `raw/${DEVICE}/${path}`;
        assert.deepEqual(await store.get(key), content, key);
      }
      const table = await rows(pg);
      const b1 = table.get("Batch 1")!;
      const pdfKey = `raw/${DEVICE}/Batch 1/2025-06-02 16:44.pdf`;
      assert.equal(b1.pdf_url, s3Url(s3, pdfKey));
      assert.equal(
        b1.pdf_url,
        `${s3.endpoint}/images/raw/${DEVICE}/Batch%201/2025-06-02%2016%3A44.pdf`,
      );
      // The public URL serves the stored bytes.
      const served = new Uint8Array(await (await fetch(b1.pdf_url as string)).arrayBuffer());
      assert.deepEqual(served, files.get("Batch 1/2025-06-02 16:44.pdf"));
      assert.deepEqual(b1.images, ["2025-06-02 16:42:55.jpg", "2025-06-02 16:43:10.jpg"]);
      assert.deepEqual(b1.image_objects, [
        `raw/${DEVICE}/Batch 1/2025-06-02 16:42:55.jpg`,
        `raw/${DEVICE}/Batch 1/2025-06-02 16:43:10.jpg`,
      ]);
      assert.equal(b1.test_date, "2025-06-02T16:43:10+00:00", "the newest image's stamp");
      const b2 = table.get("Batch2")!;
      const b2meta = b2.metadata as Record<string, unknown>;
      assert.deepEqual(b2meta.reports, ["2025-06-03 09:20.pdf", "2025-06-03 09:30.PDF"]);
      assert.deepEqual(b2meta.report_urls, [
        s3Url(s3, `raw/${DEVICE}/Batch2/2025-06-03 09:20.pdf`),
        s3Url(s3, `raw/${DEVICE}/Batch2/2025-06-03 09:30.PDF`),
      ]);
      assert.equal(b2.pdf_url, (b2meta.report_urls as string[])[0], "the first report");
      const archive = table.get("Archive")!;
      assert.equal(archive.test_status, "pending");
      assert.deepEqual(archive.images, []);
      assert.deepEqual(archive.image_objects, []);
      assert.equal((archive.metadata as Record<string, unknown>).reports instanceof Array, true);
      assert.equal(archive.test_date, "2025-06-03T09:30:00+00:00", "the newest report's stamp");
      assert.equal(table.get("Plain")!.pdf_url, null, "no report: null");
      assert.equal(
        table.get("Plain")!.test_date,
        new Date(OLD).toISOString().replace(
          ".000Z",
          "+00:00",
        ),
      );

      // Nothing changed: nothing is put, nothing written; the old flag name means the same.
      const again = await runUploader([...args, "--images-to", "s3://images/raw"], { env });
      assert.equal(again.code, 0, describeExit(again));
      assert.equal(summary(again).objects, 0);
      assert.equal(summary(again).uploaded, 0);

      // A report rewritten: only its object is put again, and the row stays right.
      const changed = bytes(99, 5100);
      Deno.writeFileSync(join(data, "Batch 1", "2025-06-02 16:44.pdf"), changed);
      const third = await runUploader([...args, "--objects-to", "s3://images/raw"], { env });
      assert.equal(third.code, 0, describeExit(third));
      assert.equal(summary(third).objects, 1);
      assert.deepEqual(await store.get(pdfKey), changed);
      assert.equal((await rows(pg)).get("Batch 1")!.pdf_url, b1.pdf_url);

      // A tracker and table as a version that stored only images left them: the reports of
      // folders already uploaded go up on the next run, the images are not put again.
      const tracker = new DatabaseSync(db);
      try {
        tracker.prepare("UPDATE folder_status SET objects_dest = ? WHERE objects_dest IS NOT NULL")
          .run(store.display);
        tracker.exec("DELETE FROM objects WHERE lower(name) LIKE '%.pdf'");
      } finally {
        tracker.close();
      }
      await pg.psql(
        "update device_test set pdf_url = null, " +
          "metadata = (metadata - 'report_urls') || '{\"content_hash\": \"old\"}'",
      );
      const upgraded = await runUploader([...args, "--objects-to", "s3://images/raw"], { env });
      assert.equal(upgraded.code, 0, describeExit(upgraded));
      assert.equal(summary(upgraded).objects, 6, "the six reports");
      assert.equal(summary(upgraded).objects_skipped, 3, "the three images, known stored");
      const relinked = await rows(pg);
      assert.equal(relinked.get("Batch 1")!.pdf_url, b1.pdf_url);
      assert.equal(relinked.get("Archive")!.pdf_url, archive.pdf_url);

      // Both names with different values: a usage error that costs nothing.
      const both = await runUploader(
        [...args, "--objects-to", "s3://images/raw", "--images-to", "s3://images/other"],
        { env },
      );
      assert.equal(both.code, 2, describeExit(both));
      assert.match(both.stderr, /--objects-to and --images-to give different values/);
    });
  },
});

Deno.test({
  name:
    "the authors' data folder: every folder accounted for, the report archive pending, test_date from the file names",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("reports_upstream_", async (dir) => {
        const data = join(dir, "data");
        const tree = writeUpstreamTree(data, { markers: false });
        const db = join(dir, "t.db");
        const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, TZ: "UTC" };
        // A quick upload of the archive alone names it in its events like any folder.
        const archivePath = join(data, tree.archive.name);
        const quick = await runUploadCli(
          [archivePath, "--base", data, "--db-path", join(dir, "none.db"), "--json"],
          { script: join(REPO_ROOT, "scripts", "quick_upload.ts"), env },
        );
        assert.equal(quick.code, 0, `${quick.stdout}\n${quick.stderr}`);
        const events = quick.stdout.trim().split("\n").map((l) => JSON.parse(l));
        const found = events.find((e) => e.event === "folder_found");
        assert.deepEqual(
          [found?.key, found?.images, found?.stats, found?.reports],
          [tree.archive.name, 0, false, 9],
        );
        assert.ok(
          events.some((e) => e.event === "folder_uploaded" && e.key === tree.archive.name),
          quick.stdout,
        );
        const run = await runUploader([data, "--db-path", db, "--min-age", "0"], { env });
        assert.equal(run.code, 0, describeExit(run));
        assert.equal(summary(run).uploaded, 34, describeExit(run));
        const table = await rows(pg);
        assert.deepEqual(
          [...table.keys()].sort(),
          [...tree.batches.map((f) => f.name), tree.archive.name].sort(),
        );
        const archive = table.get(tree.archive.name)!;
        assert.equal(archive.test_status, "pending");
        assert.deepEqual((archive.metadata as Record<string, unknown>).reports, tree.archive.pdfs);
        assert.equal(archive.test_date, "2025-06-09T09:30:00+00:00");
        for (const f of tree.batches) {
          const row = table.get(f.name)!;
          const newest = f.images.map((i) => i.name).sort().at(-1);
          const expected = newest
            ? `${newest.slice(0, 10)}T${newest.slice(11, 19)}+00:00`
            : f.pdfs.length > 0
            ? `${f.pdfs[0].slice(0, 10)}T${f.pdfs[0].slice(11, 16)}:00+00:00`
            : new Date(OLD).toISOString().replace(".000Z", "+00:00");
          assert.equal(row.test_date, expected, f.name);
        }
        // --status counts it with the others.
        const status = await runUploader(["--status", "--db-path", db], { env });
        assert.equal(status.code, 0, describeExit(status));
        const report = JSON.parse(status.stdout.trim().split("\n").at(-1)!);
        assert.equal(report.total, 34, status.stdout);
        assert.deepEqual(report.byStatus, { success: 34 }, status.stdout);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "--images-as urls: rows the authors' uploader wrote are adopted as they stand, new rows hold the objects' URLs as theirs did, a rewrite too",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServers(async (pg, s3, dir) => {
      const data = join(dir, "data");
      const tree = writeUpstreamTree(data);
      await pg.psql(UPSTREAM_DDL + upstreamRowsSql(tree));
      const before = await rowsByName(pg);
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: UPSTREAM_DEVICE, TZ: "UTC", ...s3.env() };
      const args = [data, "--db-path", db, "--min-age", "0", "--objects-to", "s3://images"];

      const refused = await runUploader([data, "--db-path", db, "--images-as", "urls"], { env });
      assert.equal(refused.code, 2, describeExit(refused));
      assert.match(refused.stderr, /--images-as urls needs --objects-to/);

      const run = await runUploader([...args, "--images-as", "urls"], { env });
      assert.equal(run.code, 0, describeExit(run));
      assert.equal(summary(run).uploaded, 34, describeExit(run));
      assert.equal(summary(run).updated, 0, "no row of theirs rewritten");
      const after = await rowsByName(pg);
      const kept = await rowsByName(pg, ["folder_key", "image_objects"]);
      const url = (folder: string, name: string) =>
        s3Url(s3, `${UPSTREAM_DEVICE}/${folder}/${name}`);
      for (const f of [...tree.batches, tree.archive]) {
        const row = after.get(f.name)!;
        if (f.hasRow) {
          assert.deepEqual(kept.get(f.name), before.get(f.name), `${f.name}: adopted as it stands`);
          continue;
        }
        assert.deepEqual(row.images, f.images.map((i) => url(f.name, i.name)), f.name);
        assert.deepEqual(
          row.image_objects,
          f.images.map((i) => `${UPSTREAM_DEVICE}/${f.name}/${i.name}`),
        );
        assert.equal(row.pdf_url, f.pdfs.length > 0 ? url(f.name, f.pdfs[0]) : null, f.name);
        // The same shape as theirs: only the project part differs.
        if (f.images.length > 0) {
          const theirs = publicUrl("images", UPSTREAM_DEVICE, f.name, f.images[0].name);
          assert.equal(
            (row.images as string[])[0].slice(s3.endpoint.length),
            theirs.slice(theirs.indexOf("/storage/v1/object/public") + 25),
          );
        }
      }

      // A changed folder of theirs: rewritten with the objects' URLs, their hand-set status kept.
      const b30 = tree.batches.find((f) => f.name === "Batch30")!;
      assert.ok(b30.hasRow && b30.incomplete);
      const added = "2025-06-02 23:59:59.jpg";
      writeTree(data, { [`Batch30/${added}`]: { bytes: 46_100, mtime: OLD } });
      const again = await runUploader([...args, "--images-as", "urls"], { env });
      assert.equal(again.code, 0, describeExit(again));
      assert.equal(summary(again).updated, 1, describeExit(again));
      const row = (await rows(pg)).get("Batch30")!;
      const names = [added, ...b30.images.map((i) => i.name)];
      assert.deepEqual(row.images, names.map((n) => url("Batch30", n)));
      assert.equal(row.test_status, "incomplete");
      assert.equal(row.notes, before.get("Batch30")!.notes);
      const store = storeFromEnv(s3.env(), "s3://images")!;
      assert.equal(
        (await store.get(`${UPSTREAM_DEVICE}/Batch30/${added}`))?.length,
        46_100,
        "stored before the row",
      );
    });
  },
});

Deno.test({
  name:
    "--ready-when '*.pdf' in a normal run: a fresh folder without its report waits, one past --ready-timeout goes incomplete, both sent again complete",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("reports_ready_", async (dir) => {
        const data = join(dir, "data");
        const now = Date.now();
        writeTree(data, {
          "Old/stats.json": { json: { result: [[1, 1, 1]] }, mtime: OLD },
          "Old/2025-06-02 16:42:55.jpg": { bytes: 100, mtime: OLD },
          "Fresh/2025-06-02 17:00:00.jpg": { bytes: 100, mtime: now },
          "Done/2025-06-02 18:00:00.jpg": { bytes: 100, mtime: OLD },
          "Done/2025-06-02 18:05.pdf": { bytes: 100, mtime: OLD },
        });
        const db = join(dir, "t.db");
        const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, TZ: "UTC" };
        const args = [
          data,
          ...["--db-path", db, "--min-age", "1", "--ready-when", "*.pdf", "--ready-timeout", "30"],
        ];
        const first = await runUploader(args, { env });
        assert.equal(first.code, 0, describeExit(first));
        assert.equal(summary(first).uploaded, 2, describeExit(first));
        assert.equal(summary(first).settling, 1, "Fresh waits for its report");
        let table = await rows(pg);
        assert.deepEqual([...table.keys()].sort(), ["Done", "Old"]);
        assert.equal(table.get("Old")!.test_status, "incomplete", "past the timeout: as it is");
        assert.equal(table.get("Done")!.test_status, "pending");
        const status = await runUploader(["--status", "--db-path", db], { env });
        assert.match(status.stdout + status.stderr, /settling|still being written/i);

        // The reports arrive (settled); both folders go, complete, with the rule's status.
        const written = Date.now() - 5_000;
        writeTree(data, {
          "Old/2025-06-02 16:50.pdf": { bytes: 100, mtime: written },
          "Fresh/2025-06-02 17:10.pdf": { bytes: 100, mtime: written },
        });
        const second = await runUploader(args, { env });
        assert.equal(second.code, 0, describeExit(second));
        assert.equal(summary(second).uploaded, 2, describeExit(second));
        assert.equal(summary(second).inserted, 1);
        assert.equal(summary(second).updated, 1);
        table = await rows(pg);
        assert.equal(table.get("Old")!.test_status, "passed", "the incomplete row completed");
        assert.equal(table.get("Fresh")!.test_status, "pending");
        assert.equal(table.size, 3);
        const third = await runUploader(args, { env });
        assert.equal(summary(third).uploaded, 0, "nothing left to send");

        // A folder named to quick upload that is still without its report fails, saying so.
        writeTree(data, { "Named/2025-06-02 19:00:00.jpg": { bytes: 100, mtime: Date.now() } });
        const quick = await runUploadCli(
          [
            join(data, "Named"),
            "--base",
            data,
            "--db-path",
            join(dir, "none.db"),
            "--min-age",
            "1",
            "--ready-when",
            "*.pdf",
            "--json",
          ],
          { script: join(REPO_ROOT, "scripts", "quick_upload.ts"), env },
        );
        assert.equal(quick.code, 1, `${quick.stdout}\n${quick.stderr}`);
        const failed = quick.stdout.trim().split("\n").map((l) => JSON.parse(l))
          .find((e) => e.event === "folder_failed");
        assert.match(
          String(failed?.error),
          /^Not complete yet: it holds no file matching --ready-when "\*\.pdf" and changed less than 300 s ago/,
        );
      });
    } finally {
      await pg.close();
    }
  },
});

/** A log of every write of device_test's rows: folder, images, reports, status. */
const WRITE_LOG = `
create table write_log (folder_key text, images int, reports jsonb, status text,
  at timestamptz default clock_timestamp());
grant insert, select on write_log to public;
create function log_write() returns trigger language plpgsql security definer as $fn$
begin
  insert into write_log (folder_key, images, reports, status)
  values (new.folder_key, cardinality(new.images), new.metadata->'reports', new.test_status);
  return new;
end
$fn$;
create trigger log_write after insert or update on device_test
  for each row execute function log_write();
`;

Deno.test({
  name:
    "--watch --ready-when '*.pdf': a device writing images 8 s apart and the report last gets each folder written exactly once, complete",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("reports_watch_", async (dir) => {
        const data = join(dir, "data");
        writeTree(data, { "Init/stats.json": { json: { result: [[1, 2, 3]] }, mtime: OLD } });
        const db = join(dir, "t.db");
        const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, TZ: "UTC" };
        const init = await runUploader([data, "--db-path", db, "--min-age", "0"], { env });
        assert.equal(init.code, 0, describeExit(init));
        await pg.psql(WRITE_LOG);

        const watcher = startUploader([
          data,
          ...["--db-path", db, "--watch", "--min-age", "3", "--rescan-every", "60"],
          ...["--ready-when", "*.pdf"],
        ], { env });
        try {
          await watcher.waitFor((e) => e.event === "watching", 60_000);
          const runs = deviceRuns(4, { gapMs: 8_000, staggerMs: 5_000 });
          await simulateDevice(data, runs);
          // Every folder lands complete; then a while longer for any late second write.
          const deadline = performance.now() + 60_000;
          for (;;) {
            const count = await pg.psql(
              "select count(*) from device_test where jsonb_array_length(metadata->'reports') = 1",
            );
            if (Number(count.trim()) === runs.length) break;
            if (watcher.exited) assert.fail(describeExit(await watcher.done));
            if (performance.now() > deadline) assert.fail(`Only ${count.trim()} folders landed`);
            await delay(200);
          }
          await delay(8_000);
          const log = JSON.parse(
            (await pg.psql(
              "select coalesce(json_agg(json_build_array(folder_key, images, reports, status) " +
                "order by at), '[]') from write_log",
            )).trim(),
          ) as [string, number, string[] | null, string][];
          for (const run of runs) {
            const writes = log.filter(([key]) => key === run.folder);
            assert.equal(writes.length, 1, `${run.folder} written once: ${JSON.stringify(writes)}`);
            const [, images, reports, status] = writes[0];
            assert.equal(images, 3, `${run.folder}: all its images`);
            assert.deepEqual(reports, [run.writes.at(-1)!.name]);
            assert.notEqual(status, "incomplete");
          }
          assert.equal(log.length, runs.length, "nothing else written");
          const table = await rows(pg);
          for (const run of runs) {
            const row = table.get(run.folder)!;
            assert.deepEqual(
              row.images,
              run.writes.filter((w) => w.name.endsWith(".jpg")).map((w) => w.name),
            );
            assert.deepEqual(
              row.test_results,
              run.writes.find((w) => w.name === "stats.json")!.json,
            );
          }
        } finally {
          watcher.signal("SIGTERM");
          const exit = await watcher.done;
          assert.equal(exit.code, 0, describeExit(exit));
        }
      });
    } finally {
      await pg.close();
    }
  },
});
