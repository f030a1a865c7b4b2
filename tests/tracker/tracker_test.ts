/**
 * Tests of the tracking database (lib/tracker/tracker.ts) on real SQLite files: migrations (from
 * an empty file and from the original tool's database), the diff rule over real scans,
 * missing folders, the one-run-at-a-time lock held by another process, crash safety, and
 * the original documentation's queries through the `sqlite3` command-line tool.
 *
 * @module
 */

import { localDeviceId } from "../../lib/target/device.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { type FolderSnapshot } from "../../lib/source/snapshot.ts";
import { scanFolders } from "../../lib/source/walk.ts";
import { type BatchRecord, SCHEMA_VERSION, Tracker } from "../../lib/tracker/tracker.ts";
import { UploadError } from "../../lib/core/errors.ts";
import { formatStatus } from "../../lib/cli/status_text.ts";
import type { DiffOptions } from "../../lib/plan/diff.ts";
import { DEFAULT_CONFIG, markerNames } from "../../config.ts";
import { generateTree, T1, T2, tempDir, writeTree } from "../../support/tree.ts";

const MARKERS = markerNames(DEFAULT_CONFIG);
const SQLITE3 = "/usr/bin/sqlite3";
const TRACKER_URL = import.meta.resolve("../../lib/tracker/tracker.ts");

const ORIGINAL_FOLDER_COLUMNS = [
  "folder_path",
  "folder_name",
  "last_modified",
  "file_count",
  "file_hash",
  "upload_status",
  "upload_timestamp",
  "error_message",
  "retry_count",
  "created_at",
  "updated_at",
];
const ORIGINAL_BATCH_COLUMNS = [
  "batch_id",
  "batch_name",
  "total_folders",
  "successful_uploads",
  "failed_uploads",
  "start_time",
  "end_time",
  "status",
  "created_at",
];

function diffOptions(overrides: Partial<DiffOptions> = {}): DiffOptions {
  return { nowMs: Date.now(), minAgeMs: 3_000, maxRetries: 3, ...overrides };
}

/** All unit snapshots of a tree; fails on any scan problem. */
async function scan(base: string): Promise<FolderSnapshot[]> {
  const out: FolderSnapshot[] = [];
  for await (const item of scanFolders(base, { markerNames: MARKERS })) {
    if (item.kind === "problem") assert.fail(`${item.problem.path}: ${item.problem.reason}`);
    if (item.kind === "folder") out.push(item.snapshot);
  }
  return out;
}

/** Runs the sqlite3 command-line tool on `db` and returns its output lines. */
async function sqlite3(db: string, sql: string): Promise<string[]> {
  const out = await new Deno.Command(SQLITE3, { args: [db, sql], stdout: "piped", stderr: "piped" })
    .output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `sqlite3 failed: ${stderr}`);
  assert.equal(stderr, "");
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l !== "");
}

function columns(tracker: Tracker, table: string): string[] {
  return (tracker.db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[])
    .map((c) => c.name);
}

function tables(tracker: Tracker): string[] {
  return (tracker.db.prepare(
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
  ).all() as { name: string }[]).map((t) => t.name);
}

/** Every folder row as a plain object, in path order. */
function folderRows(tracker: Tracker): Record<string, unknown>[] {
  return (tracker.db.prepare("SELECT * FROM folder_status ORDER BY folder_path").all() as Record<
    string,
    unknown
  >[]).map((r) => ({ ...r }));
}

function batch(id: string, runId: number, total: number, start: number): BatchRecord {
  return {
    batchId: id,
    batchName: id,
    runId,
    totalFolders: total,
    startTime: new Date(start),
    endTime: new Date(start + 2_500),
    status: "completed",
  };
}

function isLocked(error: unknown, pid?: number): boolean {
  assert.ok(error instanceof UploadError, `not an UploadError: ${error}`);
  assert.equal(error.kind, "locked");
  if (pid !== undefined) assert.match(error.message, new RegExp(`process ${pid} on `));
  return true;
}

Deno.test("Tracker.open: migrates an empty file to the current schema", async () => {
  using dir = tempDir();
  for (const name of ["new.db", "zero-bytes.db"]) {
    const path = join(dir.path, name);
    if (name === "zero-bytes.db") Deno.writeFileSync(path, new Uint8Array());
    const tracker = Tracker.open(path);
    try {
      assert.equal(tracker.schemaVersion(), SCHEMA_VERSION);
      assert.deepEqual(tables(tracker), [
        "folder_status",
        "meta",
        "objects",
        "problems",
        "remote_rows",
        "runs",
        "upload_batches",
        "verify_orphans",
      ]);
      const folderColumns = columns(tracker, "folder_status");
      assert.deepEqual(
        folderColumns.slice(0, ORIGINAL_FOLDER_COLUMNS.length),
        ORIGINAL_FOLDER_COLUMNS,
      );
      for (
        const added of [
          "base_path",
          "folder_key",
          "uploaded_hash",
          "next_attempt_at",
          "last_seen_run",
          "settling",
          "content_hash",
          "missing_since",
        ]
      ) assert.ok(folderColumns.includes(added), `folder_status.${added}`);
      const batchColumns = columns(tracker, "upload_batches");
      assert.deepEqual(
        batchColumns.slice(0, ORIGINAL_BATCH_COLUMNS.length),
        ORIGINAL_BATCH_COLUMNS,
      );
      assert.equal(
        (tracker.db.prepare("PRAGMA journal_mode").get() as { journal_mode: string }).journal_mode,
        "wal",
      );
    } finally {
      tracker.close();
    }
    // Opening again changes nothing.
    const again = Tracker.open(path);
    assert.equal(again.schemaVersion(), SCHEMA_VERSION);
    again.close();
    assert.deepEqual(await sqlite3(path, "PRAGMA integrity_check"), ["ok"]);
    assert.deepEqual(await sqlite3(path, "SELECT value FROM meta WHERE key = 'schema_version'"), [
      String(SCHEMA_VERSION),
    ]);
  }
});

Deno.test("Tracker.open: refuses what it cannot use, with the path and kind config", () => {
  using dir = tempDir();
  const garbage = join(dir.path, "garbage.db");
  Deno.writeTextFileSync(garbage, "this is not a database, just text ".repeat(100));
  const newer = join(dir.path, "newer.db");
  const db = new DatabaseSync(newer);
  db.exec("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)");
  db.exec("INSERT INTO meta VALUES ('schema_version', '99')");
  db.close();
  const noDir = join(dir.path, "no", "such", "dir", "upload_tracker.db");
  for (
    const [path, words] of [[garbage, /not a database/], [newer, /schema version 99/], [
      noDir,
      /no[\/ ]such/i,
    ]] as const
  ) {
    assert.throws(() => Tracker.open(path), (error) => {
      assert.ok(error instanceof UploadError, `${path}: ${error}`);
      assert.equal(error.kind, "config", path);
      assert.ok(error.message.includes(path.replace(/\.db$/, "")), error.message);
      assert.match(error.message, words);
      return true;
    });
  }
  // A refused open leaves the lock free.
  Deno.removeSync(garbage);
  Tracker.open(garbage).close();
});

/** Builds an original tool's database by hand with the sqlite3 tool. */
async function makeOriginalDatabase(path: string, folderA: string, folderB: string) {
  await sqlite3(
    path,
    `CREATE TABLE folder_status (
      folder_path TEXT PRIMARY KEY, folder_name TEXT, last_modified REAL, file_count INTEGER,
      file_hash TEXT, upload_status TEXT DEFAULT 'pending', upload_timestamp TIMESTAMP,
      error_message TEXT, retry_count INTEGER DEFAULT 0,
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
    CREATE TABLE upload_batches (
      batch_id TEXT PRIMARY KEY, batch_name TEXT, total_folders INTEGER,
      successful_uploads INTEGER DEFAULT 0, failed_uploads INTEGER DEFAULT 0,
      start_time TIMESTAMP, end_time TIMESTAMP, status TEXT DEFAULT 'running',
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
    INSERT INTO folder_status VALUES ('${folderA}', 'Batch54', 1717346590.5, 4,
      'd41d8cd98f00b204e9800998ecf8427e', 'success', '2025-06-02 16:50:00.123456', NULL, 0,
      '2025-06-02 16:49:00', '2025-06-02 16:50:00');
    INSERT INTO folder_status VALUES ('${folderB}', 'Batch55', 1717347912.0, 2,
      '0cc175b9c0f1b6a831c399e269772661', 'failed', NULL, 'Invalid JSON in stats.json', 2,
      '2025-06-02 17:10:00', '2025-06-02 17:11:00');
    INSERT INTO upload_batches VALUES ('b-1', 'batch_20250602_165000', 2, 1, 1,
      '2025-06-02 16:50:00', '2025-06-02 16:51:00', 'completed', '2025-06-02 16:50:00');
    INSERT INTO upload_batches VALUES ('b-2', 'batch_20250602_171000', 1, 0, 0,
      '2025-06-02 17:10:00', NULL, 'running', '2025-06-02 17:10:00');`,
  );
}

Deno.test("Tracker.open: upgrades an original tool's database in place, rows kept", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, {
    "Batch54/stats.json": { json: { result: "PASS" }, mtime: T1 },
    "Batch55/stats.json": { text: "{not json", mtime: T1 },
    "Batch56/a.jpg": { bytes: 10, mtime: T2 },
  });
  const path = join(dir.path, "upload_tracker.db");
  await makeOriginalDatabase(path, join(base, "Batch54"), join(base, "Batch55"));
  const originalSelect = `SELECT ${ORIGINAL_FOLDER_COLUMNS.join(", ")} FROM folder_status ` +
    `ORDER BY folder_path; SELECT ${ORIGINAL_BATCH_COLUMNS.join(", ")} FROM upload_batches ` +
    "ORDER BY batch_id";
  const before = await sqlite3(path, originalSelect);
  const failedQuery = "SELECT folder_name, error_message FROM folder_status " +
    "WHERE upload_status='failed';";
  assert.deepEqual(await sqlite3(path, failedQuery), ["Batch55|Invalid JSON in stats.json"]);

  // --status on an original database: read-only, nothing migrated, still a report.
  const reader = Tracker.open(path, { readOnly: true, lock: false });
  try {
    assert.equal(reader.schemaVersion(), 0);
    const report = reader.status();
    assert.equal(report.total, 2);
    assert.deepEqual(report.byStatus, { failed: 1, success: 1 });
    assert.equal(report.recentBatches[0].batchName, "batch_20250602_171000");
    assert.equal(report.lastRun, null);
  } finally {
    reader.close();
  }
  assert.deepEqual(await sqlite3(path, originalSelect), before, "read-only open wrote");

  const tracker = Tracker.open(path);
  try {
    assert.equal(tracker.schemaVersion(), SCHEMA_VERSION);
    assert.ok(columns(tracker, "folder_status").includes("folder_key"));
    assert.ok(columns(tracker, "upload_batches").includes("run_id"));
    assert.deepEqual(tables(tracker), [
      "folder_status",
      "meta",
      "objects",
      "problems",
      "remote_rows",
      "runs",
      "upload_batches",
      "verify_orphans",
    ]);
  } finally {
    tracker.close();
  }
  assert.deepEqual(await sqlite3(path, originalSelect), before, "original columns changed");
  assert.deepEqual(
    await sqlite3(path, "SELECT folder_key, uploaded_hash, settling FROM folder_status"),
    [
      "||0",
      "||0",
    ],
  );
  assert.deepEqual(await sqlite3(path, failedQuery), ["Batch55|Invalid JSON in stats.json"]);

  // The first run closes the original's dangling batch and adopts its rows.
  const again = Tracker.open(path);
  try {
    const runId = again.startRun(base, "upload", new Date(T2));
    assert.deepEqual(
      await sqlite3(path, "SELECT batch_id, status, end_time FROM upload_batches ORDER BY 1"),
      ["b-1|completed|2025-06-02 16:51:00", `b-2|interrupted|${new Date(T2).toISOString()}`],
    );
    const decisions = again.applyScan(await scan(base), runId, base, diffOptions());
    // Fingerprints differ from the original's hashes: uploaded once more, retries forgotten.
    assert.deepEqual(decisions.map((d) => [d.snapshot.key, d.change, d.status, d.upload]), [
      ["Batch54", "changed", "pending", true],
      ["Batch55", "changed", "pending", true],
      ["Batch56", "new", "pending", true],
    ]);
    const rows = folderRows(again);
    assert.deepEqual(rows.map((r) => [r.folder_key, r.retry_count, r.error_message]), [
      ["Batch54", 0, null],
      ["Batch55", 0, null],
      ["Batch56", 0, null],
    ]);
    assert.equal(rows[0].created_at, "2025-06-02 16:49:00", "created_at kept");
  } finally {
    again.close();
  }
  assert.deepEqual(await sqlite3(path, "PRAGMA integrity_check"), ["ok"]);
});

Deno.test("Tracker: the original tool's relative-path rows become the scanned folders' rows", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, {
    "Batch54/stats.json": { json: { result: "PASS" }, mtime: T1 },
    "Batch55/stats.json": { json: { result: "" }, mtime: T1 },
    "Batch56/a.jpg": { bytes: 10, mtime: T2 },
  });
  const path = join(dir.path, "upload_tracker.db");
  // As the original tool left it when run as `python upload.py data`: paths relative to
  // where it ran, batch times as Unix seconds.
  await makeOriginalDatabase(path, "data/Batch54", "./data/Batch55/");
  await sqlite3(
    path,
    "UPDATE upload_batches SET start_time = 1748883000, end_time = 1748883060.5 " +
      "WHERE batch_id = 'b-1'",
  );
  const tracker = Tracker.open(path);
  try {
    const run = tracker.startRun(base, "upload");
    const decisions = tracker.applyScan(await scan(base), run, base, diffOptions());
    assert.deepEqual(decisions.map((d) => [d.snapshot.key, d.change]), [
      ["Batch54", "changed"],
      ["Batch55", "changed"],
      ["Batch56", "new"],
    ]);
    const report = tracker.status();
    assert.equal(report.total, 3, "one row per folder, not one per tool");
    assert.deepEqual(
      folderRows(tracker).map((r) => [r.folder_path, r.created_at]),
      [
        [join(base, "Batch54"), "2025-06-02 16:49:00"],
        [join(base, "Batch55"), "2025-06-02 17:10:00"],
        [join(base, "Batch56"), folderRows(tracker)[2].created_at as string],
      ],
    );
    const original = report.recentBatches.find((b) => b.batchName === "batch_20250602_165000")!;
    assert.equal(original.durationSeconds, 60.5);
    const text = formatStatus(report);
    assert.doesNotMatch(text, /NaN/);
    assert.match(text, /batch_20250602_165000: 1\/2 successful, 1 failed \(completed, 60\.5 s/);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.applyScan: the diff rule over real scans of a real tree", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  const tree = generateTree(base, { folders: 60, nested: true, perLine: 20, keys: true });
  const tracker = Tracker.open(join(dir.path, "upload_tracker.db"));
  try {
    // First scan: every unit is new and pending, and to be uploaded.
    const run1 = tracker.startRun(base, "upload");
    const first = tracker.applyScan(await scan(base), run1, base, diffOptions());
    assert.equal(first.length, tree.units);
    assert.deepEqual(first.map((d) => d.snapshot.key), tree.keys);
    assert.ok(first.every((d) => d.change === "new" && d.status === "pending" && d.upload));
    assert.deepEqual(tracker.status().byStatus, { pending: tree.units });
    const row = folderRows(tracker).find((r) => r.folder_key === first[0].snapshot.key)!;
    assert.equal(row.folder_path, first[0].snapshot.path);
    assert.equal(row.folder_name, first[0].snapshot.name);
    assert.equal(row.file_hash, first[0].snapshot.fingerprint);
    assert.equal(row.file_count, first[0].snapshot.files.length);
    assert.equal(row.last_modified, first[0].snapshot.newestMtimeMs / 1000);
    assert.equal(row.base_path, base);
    assert.equal(row.last_seen_run, run1);

    // The server acknowledged everything.
    const start = Date.now();
    tracker.startBatch("b1", "batch_1", run1, first.length, new Date(start));
    tracker.recordBatch(
      batch("b1", run1, first.length, start),
      first.map((d) => ({ path: d.snapshot.path, fingerprint: d.snapshot.fingerprint, ok: true })),
    );
    tracker.finishRun(run1, "completed", { uploaded: first.length }, true);
    assert.deepEqual(tracker.status().byStatus, { success: tree.units });
    const afterUpload = folderRows(tracker);
    assert.ok(afterUpload.every((r) => r.uploaded_hash === r.file_hash && r.upload_timestamp));

    // Second scan of the unchanged tree: nothing to do, nothing written.
    const run2 = tracker.startRun(base, "upload");
    const second = tracker.applyScan(await scan(base), run2, base, diffOptions());
    assert.ok(second.every((d) => d.change === "unchanged" && d.status === "success"));
    assert.equal(second.filter((d) => d.upload).length, 0);
    assert.deepEqual(folderRows(tracker), afterUpload);

    // One folder failed twice, then changes: only it is changed, with its retries reset.
    const target = second[7].snapshot;
    tracker.recordFolderFailures([{ path: target.path, error: "Cannot parse stats.json: x" }]);
    tracker.recordFolderFailures([{ path: target.path, error: "Cannot parse stats.json: y" }]);
    const failedRow = folderRows(tracker).find((r) => r.folder_path === target.path)!;
    assert.equal(failedRow.upload_status, "failed");
    assert.equal(failedRow.retry_count, 2);
    writeTree(target.path, { "2025-06-02 16:44:00.jpg": { bytes: 50, mtime: T1 } });
    const run3 = tracker.startRun(base, "upload");
    const third = tracker.applyScan(await scan(base), run3, base, diffOptions());
    const changed = third.filter((d) => d.change !== "unchanged");
    assert.deepEqual(changed.map((d) => [d.snapshot.key, d.change, d.upload]), [
      [target.key, "changed", true],
    ]);
    assert.equal(third.filter((d) => d.upload).length, 1);
    const resetRow = folderRows(tracker).find((r) => r.folder_path === target.path)!;
    assert.equal(resetRow.upload_status, "pending");
    assert.equal(resetRow.retry_count, 0);
    assert.equal(resetRow.error_message, null);
    assert.equal(resetRow.file_hash, changed[0].snapshot.fingerprint);
    assert.equal(resetRow.file_count, target.files.length + 1);
    assert.equal(resetRow.uploaded_hash, target.fingerprint, "what was uploaded is remembered");

    // A folder written to just now is settling: tracked, counted, not uploaded yet.
    const fresh = third[3].snapshot;
    writeTree(fresh.path, { "new.jpg": { bytes: 5, mtime: Date.now() } });
    const run4 = tracker.startRun(base, "upload");
    const fourth = tracker.applyScan(await scan(base), run4, base, diffOptions());
    const settling = fourth.filter((d) => d.settling);
    assert.deepEqual(settling.map((d) => [d.snapshot.key, d.change, d.upload]), [
      [fresh.key, "changed", false],
    ]);
    assert.equal(tracker.status().settling, 1);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.recordBatch: a folder changed during its upload stays pending", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}", mtime: T1 } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    const run = tracker.startRun(base, "upload");
    const [before] = tracker.applyScan(await scan(base), run, base, diffOptions());
    // The folder changes while its batch is in flight, and a rescan records that.
    writeTree(base, { "A/a.jpg": { bytes: 10, mtime: T2 } });
    const [during] = tracker.applyScan(await scan(base), run, base, diffOptions());
    assert.equal(during.change, "changed");
    tracker.recordBatch(batch("b1", run, 1, T2), [
      { path: before.snapshot.path, fingerprint: before.snapshot.fingerprint, ok: true },
    ]);
    const [row] = folderRows(tracker);
    assert.equal(row.upload_status, "pending");
    assert.equal(row.uploaded_hash, before.snapshot.fingerprint);
    assert.equal(row.file_hash, during.snapshot.fingerprint);
    const [next] = tracker.applyScan(await scan(base), run + 1, base, diffOptions());
    assert.deepEqual([next.change, next.upload], ["unchanged", true]);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.recordBatch: failures count until maxRetries, success clears them", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}" }, "B/stats.json": { text: "[]" } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    const run = tracker.startRun(base, "upload");
    let decisions = tracker.applyScan(await scan(base), run, base, diffOptions());
    const [a, b] = decisions.map((d) => d.snapshot);
    for (let attempt = 1; attempt <= 3; attempt++) {
      tracker.recordBatch(batch(`b${attempt}`, run, 2, T1 + attempt * 10_000), [
        { path: a.path, fingerprint: a.fingerprint, ok: true },
        { path: b.path, fingerprint: b.fingerprint, ok: false, error: "22P02: invalid input" },
      ]);
      const rowB = folderRows(tracker)[1];
      assert.deepEqual(
        [rowB.upload_status, rowB.retry_count, rowB.error_message],
        ["failed", attempt, "22P02: invalid input"],
      );
      decisions = tracker.applyScan(await scan(base), run, base, diffOptions());
      assert.deepEqual(decisions.map((d) => d.upload), [false, attempt < 3], `attempt ${attempt}`);
    }
    const batches = tracker.db.prepare(
      "SELECT batch_id, total_folders, successful_uploads, failed_uploads, status, run_id " +
        "FROM upload_batches ORDER BY batch_id",
    ).all().map((r) => ({ ...r }));
    assert.deepEqual(
      batches,
      [1, 2, 3].map((n) => ({
        batch_id: `b${n}`,
        total_folders: 2,
        successful_uploads: 1,
        failed_uploads: 1,
        status: "completed",
        run_id: run,
      })),
    );
    // Success after failures: the retries and the message go.
    tracker.recordBatch(batch("b4", run, 1, T2), [
      { path: b.path, fingerprint: b.fingerprint, ok: true },
    ]);
    const rowB = folderRows(tracker)[1];
    assert.deepEqual([rowB.upload_status, rowB.retry_count, rowB.error_message], [
      "success",
      0,
      null,
    ]);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker passes: folders gone from disk are counted missing, never deleted", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, {
    "A/stats.json": { text: "{}" },
    "B/stats.json": { text: "{}" },
    "C/x.jpg": { bytes: 1 },
  });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  const pass = async (runId: number) => {
    tracker.beginPass(base, runId);
    const decisions = tracker.applyScan(await scan(base), runId, base, diffOptions());
    return { decisions, missing: tracker.endPass() };
  };
  try {
    const run1 = tracker.startRun(base, "upload");
    assert.deepEqual((await pass(run1)).missing, { count: 0, sample: [] });

    Deno.removeSync(join(base, "B"), { recursive: true });
    const run2 = tracker.startRun(base, "upload");
    assert.deepEqual((await pass(run2)).missing, { count: 1, sample: [join(base, "B")] });
    assert.equal(folderRows(tracker).length, 3, "the row of the missing folder stays");
    const report = tracker.status();
    assert.equal(report.missing, 1);
    assert.deepEqual(report.missingSample, [join(base, "B")]);

    // A walk that did not finish marks nothing.
    const run3 = tracker.startRun(base, "upload");
    tracker.beginPass(base, run3);
    tracker.abandonPass();
    assert.equal(tracker.status().missing, 1);

    writeTree(base, { "B/stats.json": { text: "{}" } });
    const run4 = tracker.startRun(base, "upload");
    const back = await pass(run4);
    assert.equal(back.decisions.find((d) => d.snapshot.key === "B")!.change, "unchanged");
    assert.deepEqual(back.missing, { count: 0, sample: [] });
    assert.equal(tracker.status().missing, 0);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker passes: a base that is gone counts all its folders as missing", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}" }, "B/x.jpg": { bytes: 1 } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    const run = tracker.startRun(base, "upload");
    tracker.beginPass(base, run);
    tracker.applyScan(await scan(base), run, base, diffOptions());
    tracker.endPass();
    Deno.renameSync(base, join(dir.path, "renamed"));
    const report = tracker.status();
    assert.equal(report.missing, 2);
    assert.deepEqual(report.goneBases, [base]);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.applyScan: rescanning an unchanged tree writes no row", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}" }, "B/x.jpg": { bytes: 1 } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    const run1 = tracker.startRun(base, "upload");
    tracker.beginPass(base, run1);
    tracker.applyScan(await scan(base), run1, base, diffOptions());
    tracker.endPass();
    const changes = () =>
      Number((tracker.db.prepare("SELECT total_changes() AS n").get() as { n: number }).n);
    const before = changes();
    const run2 = tracker.startRun(base, "upload");
    const afterStart = changes();
    tracker.beginPass(base, run2);
    tracker.applyScan(await scan(base), run2, base, diffOptions());
    assert.deepEqual(tracker.endPass(), { count: 0, sample: [] });
    assert.ok(afterStart > before, "the run itself is recorded");
    assert.equal(changes(), afterStart, "no folder row was written by the rescan");
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.applyScan: a path twice in one chunk is decided once, by its last sighting", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}" }, "B/x.jpg": { bytes: 1 } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    const run = tracker.startRun(base, "watch");
    const [a, b] = await scan(base);
    const later = { ...a, fingerprint: "other" };
    // New folders named twice (an event and a walk of the tree holding them), and a
    // tracked one twice: no UNIQUE conflict, one row each, the last snapshot recorded.
    const first = tracker.applyScan([a, b, later, b], run, base, diffOptions({ minAgeMs: 0 }));
    assert.deepEqual(first.map((d) => d.upload), [false, false, true, true]);
    const again = tracker.applyScan([b, b], run, base, diffOptions({ minAgeMs: 0 }));
    assert.deepEqual(again.map((d) => [d.change, d.upload]), [["unchanged", false], [
      "unchanged",
      true,
    ]]);
    const rows = tracker.db.prepare(
      "SELECT folder_path, file_hash FROM folder_status ORDER BY folder_path",
    ).all() as { folder_path: string; file_hash: string }[];
    assert.deepEqual(rows.map((r) => [r.folder_path, r.file_hash]), [
      [a.path, "other"],
      [b.path, b.fingerprint],
    ]);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.useTarget: a new target re-queues what was uploaded, and counts only that", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}" }, "B/stats.json": { text: "{bad" } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    assert.equal(tracker.useTarget("embedded#device_test"), 0, "the first target");
    const run = tracker.startRun(base, "upload");
    const [a, b] = tracker.applyScan(await scan(base), run, base, diffOptions({ minAgeMs: 0 }));
    // B failed locally (its stats.json): never uploaded anywhere.
    tracker.recordFolderFailures([{ path: b.snapshot.path, error: "Cannot parse" }]);
    assert.equal(tracker.useTarget("pg#device_test"), 0, "local failures are not uploads");
    tracker.recordBatch(batch("b1", run, 1, T1), [
      { path: a.snapshot.path, fingerprint: a.snapshot.fingerprint, ok: true },
    ]);
    assert.equal(tracker.useTarget("pg#device_test"), 0, "the same target");
    assert.equal(tracker.useTarget("other#device_test"), 1);
    const rows = folderRows(tracker);
    assert.deepEqual(rows.map((r) => [r.upload_status, r.retry_count]), [
      ["pending", 0],
      ["pending", 0],
    ]);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.moveBase: a moved base keeps every folder's status, nothing is new", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, { "A/stats.json": { text: "{}" }, "L/B/x.jpg": { bytes: 1 } });
  const tracker = Tracker.open(join(dir.path, "t.db"));
  try {
    const run = tracker.startRun(base, "upload");
    const snaps = await scan(base);
    tracker.applyScan(snaps, run, base, diffOptions());
    tracker.recordBatch(
      batch("b1", run, 2, T1),
      snaps.map((s) => ({ path: s.path, fingerprint: s.fingerprint, ok: true })),
    );
    const moved = join(dir.path, "moved");
    Deno.renameSync(base, moved);
    assert.deepEqual(tracker.moveBase(base, moved), { moved: 2, replaced: 0 });
    const decisions = tracker.applyScan(await scan(moved), run, moved, diffOptions());
    assert.deepEqual(decisions.map((d) => [d.snapshot.key, d.change, d.upload]), [
      ["A", "unchanged", false],
      ["L/B", "unchanged", false],
    ]);
    assert.throws(() => tracker.moveBase(base, moved), /Nothing is tracked under/);
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.startRun: runs and batches a killed process left running are interrupted", () => {
  using dir = tempDir();
  const path = join(dir.path, "t.db");
  const crashed = Tracker.open(path);
  const run1 = crashed.startRun("/data", "upload", new Date(T1));
  crashed.startBatch("b-done", "batch_done", run1, 1, new Date(T1));
  crashed.recordBatch(batch("b-done", run1, 1, T1), []);
  crashed.startBatch("b-open", "batch_open", run1, 5, new Date(T1 + 5_000));
  crashed.close(); // as if killed: nothing finished

  const tracker = Tracker.open(path);
  try {
    const run2 = tracker.startRun("/data", "upload", new Date(T2));
    assert.ok(run2 > run1);
    const batches = tracker.db.prepare(
      "SELECT batch_id, status, end_time FROM upload_batches ORDER BY batch_id",
    ).all().map((r) => ({ ...r }));
    assert.deepEqual(batches, [
      { batch_id: "b-done", status: "completed", end_time: new Date(T1 + 2_500).toISOString() },
      { batch_id: "b-open", status: "interrupted", end_time: new Date(T2).toISOString() },
    ]);
    const runs = tracker.db.prepare("SELECT run_id, status, pid FROM runs ORDER BY run_id").all()
      .map((r) => ({ ...r }));
    assert.deepEqual(runs, [
      { run_id: run1, status: "interrupted", pid: Deno.pid },
      { run_id: run2, status: "running", pid: Deno.pid },
    ]);
    assert.equal(tracker.status().lastRun?.runId, run2);
    tracker.abandonBatch("b-done", "failed", new Date(T2));
    assert.equal(
      tracker.status().recentBatches.find((b) => b.batchName === "batch_done")?.status,
      "failed",
    );
  } finally {
    tracker.close();
  }
});

Deno.test("Tracker.deviceId: made once and kept; a preferred id wins and is kept", () => {
  using dir = tempDir();
  const path = join(dir.path, "t.db");
  let tracker = Tracker.open(path);
  const made = tracker.deviceId();
  // The machine's own default id, the same one quick upload uses without a tracker.
  assert.equal(made, localDeviceId());
  assert.match(made, /^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(tracker.deviceId(), made);
  tracker.close();
  tracker = Tracker.open(path);
  assert.equal(tracker.deviceId(), made);
  const preferred = "6f1c0b0e-1d2a-4c3b-9e8f-0a1b2c3d4e5f";
  assert.equal(tracker.deviceId(preferred), preferred);
  assert.equal(tracker.deviceId(), preferred);
  tracker.close();
});

/** Reads lines from a child's output stream. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, nl);
      rest = rest.slice(nl + 1);
    }
  }
  if (rest !== "") yield rest;
}

/** Starts `deno eval code` in another process; resolves once it printed `wanted` lines. */
async function startChild(code: string, wanted: (line: string) => boolean) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const out = lines(child.stdout);
  let seen = 0;
  for await (const line of out) {
    seen++;
    if (wanted(line)) break;
  }
  return {
    pid: child.pid,
    seen,
    async kill(): Promise<Deno.CommandStatus> {
      child.kill("SIGKILL");
      const status = await child.status;
      for await (const _ of out) {
        // Drain what the child wrote before it died.
      }
      return status;
    },
    async failure(): Promise<string> {
      await child.status;
      return await stderr;
    },
    stderr,
  };
}

Deno.test("Tracker.open: another process holding the lock refuses at once, naming it", async () => {
  using dir = tempDir();
  const path = join(dir.path, "upload_tracker.db");
  const code = `import { Tracker } from ${JSON.stringify(TRACKER_URL)};
Tracker.open(${JSON.stringify(path)}, { command: "holder-test" });
console.log("ready");
setInterval(() => {}, 60_000);`;
  let ready = false;
  const holder = await startChild(code, (line) => (ready = line === "ready"));
  try {
    if (!ready) assert.fail(`The holder did not start: ${await holder.failure()}`);
    const started = performance.now();
    assert.throws(() => Tracker.open(path), (error) => {
      isLocked(error, holder.pid);
      assert.match((error as Error).message, /holder-test/);
      assert.ok((error as Error).message.includes(path));
      return true;
    });
    assert.ok(performance.now() - started < 1_000, "the refusal waited");
    // A read-only report without the lock is still possible.
    const reader = Tracker.open(path, { readOnly: true, lock: false });
    assert.equal(reader.schemaVersion(), SCHEMA_VERSION);
    reader.close();
  } finally {
    const status = await holder.kill();
    assert.equal(status.signal, "SIGKILL");
    await holder.stderr;
  }
  // The lock died with its process: no stale lock file blocks the next run.
  assert.ok(Deno.statSync(`${path}.lock`).isFile);
  const next = Tracker.open(path);
  next.startRun(null, "upload");
  next.close();
  assert.deepEqual(await sqlite3(path, "PRAGMA integrity_check"), ["ok"]);
});

Deno.test("Tracker.open: a second open in the same process is refused too, until closed", () => {
  using dir = tempDir();
  const path = join(dir.path, "t.db");
  const first = Tracker.open(path);
  try {
    assert.throws(() => Tracker.open(path), (error) => isLocked(error, Deno.pid));
  } finally {
    first.close();
  }
  Tracker.open(path).close();
});

Deno.test("Tracker: kill -9 in the middle of writing leaves whole chunks and an intact file", async () => {
  using dir = tempDir();
  const path = join(dir.path, "upload_tracker.db");
  const chunk = 500;
  const code = `import { Tracker } from ${JSON.stringify(TRACKER_URL)};
const t = Tracker.open(${JSON.stringify(path)});
const run = t.startRun("/base", "upload");
for (let c = 0; ; c++) {
  const snaps = Array.from({ length: ${chunk} }, (_, i) => ({
    path: "/base/F" + c + "_" + i, key: "F" + c + "_" + i, name: "F" + c + "_" + i,
    files: [{ name: "stats.json", size: 10, mtimeMs: 0 }], fingerprint: "h" + i, newestMtimeMs: 0,
  }));
  t.applyScan(snaps, run, "/base", { nowMs: Date.now(), minAgeMs: 0, maxRetries: 3 });
  console.log("chunk " + c);
}`;
  const writer = await startChild(code, (line) => line === "chunk 4");
  await new Promise((resolve) => setTimeout(resolve, 50));
  const status = await writer.kill();
  const stderr = await writer.stderr;
  assert.equal(status.signal, "SIGKILL", stderr);
  assert.ok(writer.seen >= 5, `The writer did not get going: ${stderr}`);

  assert.deepEqual(await sqlite3(path, "PRAGMA integrity_check"), ["ok"]);
  const tracker = Tracker.open(path);
  try {
    const count = Number(
      (tracker.db.prepare("SELECT count(*) AS n FROM folder_status").get() as { n: number }).n,
    );
    assert.ok(count >= 5 * chunk, `only ${count} rows`);
    assert.equal(count % chunk, 0, `a chunk was half written: ${count} rows`);
    tracker.startRun("/base", "upload");
    assert.equal(tracker.status().lastRun?.status, "running");
    assert.equal(
      (tracker.db.prepare("SELECT status FROM runs WHERE run_id = 1").get() as { status: string })
        .status,
      "interrupted",
    );
  } finally {
    tracker.close();
  }
});

Deno.test("sqlite3 tool: the original documentation's queries give the expected rows", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, {
    "Batch54/stats.json": { json: { result: "PASS" } },
    "Batch55/stats.json": { text: "{broken" },
    "Batch56/stats.json": { json: { result: "" } },
  });
  const path = join(dir.path, "upload_tracker.db");
  const tracker = Tracker.open(path);
  try {
    const run = tracker.startRun(base, "upload");
    const [b54, b55, b56] = tracker.applyScan(await scan(base), run, base, diffOptions())
      .map((d) => d.snapshot);
    tracker.recordFolderFailures([{
      path: b55.path,
      error: `Cannot parse ${join(b55.path, "stats.json")}: Unexpected token b`,
    }]);
    for (let n = 1; n <= 6; n++) {
      const outcomes = [{ path: b54.path, fingerprint: b54.fingerprint, ok: true }];
      if (n === 6) {
        outcomes.push(
          {
            path: b56.path,
            fingerprint: b56.fingerprint,
            ok: false,
            error: "22P05: unsupported Unicode escape sequence",
          } as typeof outcomes[0],
        );
      }
      tracker.recordBatch(
        batch(`batch_00${n}`, run, outcomes.length, T1 + n * 60_000),
        outcomes,
      );
    }
    // While the tracker is open (WAL), and after it is closed.
    for (const close of [false, true]) {
      if (close) tracker.close();
      assert.deepEqual(
        (await sqlite3(
          path,
          "SELECT folder_name, error_message FROM folder_status WHERE upload_status='failed';",
        )).sort(),
        [
          `Batch55|Cannot parse ${join(b55.path, "stats.json")}: Unexpected token b`,
          "Batch56|22P05: unsupported Unicode escape sequence",
        ],
      );
      assert.deepEqual(
        await sqlite3(
          path,
          "SELECT batch_name, successful_uploads, failed_uploads FROM upload_batches " +
            "ORDER BY start_time DESC LIMIT 5;",
        ),
        ["batch_006|1|1", "batch_005|1|0", "batch_004|1|0", "batch_003|1|0", "batch_002|1|0"],
      );
      assert.deepEqual(await sqlite3(path, "PRAGMA integrity_check"), ["ok"]);
    }
  } finally {
    tracker.close();
  }
  const reader = Tracker.open(path, { readOnly: true, lock: false });
  try {
    const report = reader.status({ batches: 2 });
    assert.deepEqual(report.byStatus, { failed: 2, success: 1 });
    assert.deepEqual(report.recentBatches.map((b) => [b.batchName, b.durationSeconds]), [
      ["batch_006", 2.5],
      ["batch_005", 2.5],
    ]);
    assert.equal(report.recentBatches[0].foldersPerSecond, 1);
    assert.deepEqual(report.recentFailures.map((f) => f.folderName).sort(), ["Batch55", "Batch56"]);
  } finally {
    reader.close();
  }
});
