/**
 * Runs, batches and folder outcomes as the tracker records them: one `runs` row per run,
 * one `upload_batches` row per batch (the original tool's table and columns), and each
 * folder's status after its batch (`success` with the fingerprint taken before it was
 * read, or `failed` with its message and one more retry counted).
 *
 * @module
 */

import type { RunStatus } from "../core/errors.ts";
import { iso, type TrackerDb } from "./db.ts";
import { markersWritten } from "./owed.ts";

/** One folder's outcome within a batch, for `Tracker.recordBatch`. */
export interface FolderOutcome {
  /** The folder's path (the tracker's key). */
  path: string;
  /** The fingerprint taken before the folder was read. */
  fingerprint: string;
  /** The content hash of the row sent (what the server now holds when `ok`). */
  contentHash?: string;
  /** Where the folder's images were stored (`s3://bucket/prefix`), when they were. */
  objectsDest?: string;
  /** Whether the server acknowledged the folder's row. */
  ok: boolean;
  /** Why it failed, naming the file or the server's SQLSTATE. */
  error?: string;
}

/** A batch as recorded in `upload_batches`. */
export interface BatchRecord {
  /** The batch's id in the tracker (`<run>-<n>`). */
  batchId: string;
  /** Its name, as progress shows it (`batch_<time>_<n>`). */
  batchName: string;
  /** The run that sent it. */
  runId: number;
  /** Folders in the batch. */
  totalFolders: number;
  /** When its statement was sent. */
  startTime: Date;
  /** When its answer came. */
  endTime: Date;
  /** `failed` when no folder of it was acknowledged. */
  status: "completed" | "failed" | "interrupted";
  /** The statement's size in bytes. */
  bytes?: number;
  /**
   * The folders' markers are written after this record: a marker still owed from an
   * earlier outcome is settled by the new one (if that write fails, it is owed anew).
   */
  markers?: boolean;
}

/** Runs and batches left `running` (by this process or a dead one) become interrupted. */
function closeRunning(db: TrackerDb, now: Date): void {
  db.stmt("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE status = 'running'")
    .run(iso(now));
  db.stmt(
    "UPDATE upload_batches SET status = 'interrupted', end_time = ? WHERE status = 'running'",
  ).run(iso(now));
}

/** Records the start of a run, closing the books on runs a killed process left running. */
export function startRun(
  db: TrackerDb,
  run: { basePath: string | null; mode: string; now: Date },
): number {
  return db.transaction(() => {
    closeRunning(db, run.now);
    const row = db.stmt(
      "INSERT INTO runs (base_path, mode, pid, started_at) VALUES (?, ?, ?, ?) RETURNING run_id",
    ).get(run.basePath, run.mode, Deno.pid, iso(run.now)) as { run_id: number };
    return Number(row.run_id);
  });
}

/** Records every run and batch still `running` as interrupted. One transaction. */
export function markInterrupted(db: TrackerDb, now: Date): void {
  db.transaction(() => closeRunning(db, now));
}

/** Records how a run ended. */
export function finishRun(
  db: TrackerDb,
  runId: number,
  end: { status: RunStatus; summary: unknown; scanComplete: boolean; now: Date },
): void {
  db.checkFile();
  db.stmt(
    "UPDATE runs SET status = ?, ended_at = ?, summary = ?, scan_complete = ? WHERE run_id = ?",
  ).run(end.status, iso(end.now), JSON.stringify(end.summary), end.scanComplete ? 1 : 0, runId);
}

/** Inserts a batch row with status `running`. */
export function startBatch(
  db: TrackerDb,
  batch: { batchId: string; batchName: string; runId: number; total: number; start: Date },
): void {
  db.stmt(
    "INSERT INTO upload_batches (batch_id, batch_name, total_folders, start_time, status, run_id, created_at) " +
      "VALUES (?, ?, ?, ?, 'running', ?, ?)",
  ).run(
    batch.batchId,
    batch.batchName,
    batch.total,
    iso(batch.start),
    batch.runId,
    iso(batch.start),
  );
}

/** Acknowledged folders (a JSON array of [path, fingerprint, content hash, objects dest]). */
const ACKED = "FROM (SELECT value ->> 0 AS p, value ->> 1 AS h, value ->> 2 AS c, " +
  "value ->> 3 AS d FROM json_each(?)) AS o WHERE folder_status.folder_path = o.p";

/**
 * One pass over a batch's acknowledged folders: those still as scanned become success; those
 * rescanned with another fingerprint meanwhile keep their status (pending), their upload noted.
 */
const ACK = "UPDATE folder_status SET " +
  "upload_status = CASE WHEN folder_status.file_hash = o.h THEN 'success' ELSE upload_status END, " +
  "error_message = CASE WHEN folder_status.file_hash = o.h THEN NULL ELSE error_message END, " +
  "retry_count = CASE WHEN folder_status.file_hash = o.h THEN 0 ELSE retry_count END, " +
  "uploaded_hash = o.h, content_hash = o.c, objects_dest = COALESCE(o.d, objects_dest), " +
  `upload_timestamp = ?1, updated_at = ?1 ${ACKED}`;

const UPSERT_BATCH =
  "INSERT INTO upload_batches (batch_id, batch_name, total_folders, successful_uploads, " +
  "failed_uploads, start_time, end_time, status, run_id, bytes, created_at) " +
  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id) DO UPDATE SET " +
  "total_folders = excluded.total_folders, successful_uploads = excluded.successful_uploads, " +
  "failed_uploads = excluded.failed_uploads, end_time = excluded.end_time, " +
  "status = excluded.status, bytes = excluded.bytes";

/** Records a batch's outcome and its folders' in one transaction. */
export function recordBatch(
  db: TrackerDb,
  batch: BatchRecord,
  outcomes: readonly FolderOutcome[],
): void {
  const ack = db.stmt(ACK);
  const endText = iso(batch.endTime);
  db.transaction(() => {
    let failed = 0;
    const done: [string, string, string | null, string | null][] = [];
    for (const o of outcomes) {
      if (o.ok) {
        done.push([o.path, o.fingerprint, o.contentHash ?? null, o.objectsDest ?? null]);
      } else {
        failed++;
        markFailed(db, o.path, o.error ?? "Unknown error", endText);
      }
    }
    if (done.length > 0) {
      ack.run(endText, JSON.stringify(done));
    }
    // The markers are written next: one owed from before is settled by them.
    if (batch.markers) settleOwed(db, outcomes.map((o) => o.path));
    db.stmt(UPSERT_BATCH).run(
      batch.batchId,
      batch.batchName,
      batch.totalFolders,
      done.length,
      failed,
      iso(batch.startTime),
      endText,
      batch.status,
      batch.runId,
      batch.bytes ?? null,
      iso(batch.startTime),
    );
  });
}

/** Forgets the owed markers of `paths`, whose new markers are about to be written. */
function settleOwed(db: TrackerDb, paths: readonly string[]): void {
  db.stmt(
    "UPDATE folder_status SET marker_owed = NULL WHERE marker_owed IS NOT NULL AND " +
      "folder_path IN (SELECT value FROM json_each(?))",
  ).run(JSON.stringify(paths));
}

/** Marks a batch that never got an answer; its folders stay pending. */
export function abandonBatch(
  db: TrackerDb,
  batchId: string,
  end: { status: "interrupted" | "failed"; when: Date },
): void {
  db.stmt("UPDATE upload_batches SET status = ?, end_time = ? WHERE batch_id = ?")
    .run(end.status, iso(end.when), batchId);
}

/** Records folders that failed before reaching the server. One transaction. */
export function recordFolderFailures(
  db: TrackerDb,
  failures: readonly { path: string; error: string }[],
  options: { when: Date; markers?: boolean },
): void {
  if (failures.length === 0) return;
  const text = iso(options.when);
  db.transaction(() => {
    for (const f of failures) markFailed(db, f.path, f.error, text);
    // Their failed.json is written next: a marker owed from before is settled by it.
    if (options.markers) markersWritten(db, failures.map((f) => f.path));
  });
}

function markFailed(db: TrackerDb, path: string, error: string, when: string): void {
  db.stmt(
    "UPDATE folder_status SET upload_status = 'failed', error_message = ?, " +
      "retry_count = COALESCE(retry_count, 0) + 1, updated_at = ? WHERE folder_path = ?",
  ).run(error, when, path);
}

/** Records folders whose files changed but whose content did not as `success`. */
export function recordAdopted(
  db: TrackerDb,
  entries: readonly { path: string; fingerprint: string; contentHash: string }[],
  when: Date,
): void {
  if (entries.length === 0) return;
  db.stmt(
    "UPDATE folder_status SET upload_status = 'success', uploaded_hash = o.h, " +
      "content_hash = o.c, error_message = NULL, retry_count = 0, updated_at = ? " +
      "FROM (SELECT value ->> 0 AS p, value ->> 1 AS h, value ->> 2 AS c FROM json_each(?)) " +
      "AS o WHERE folder_status.folder_path = o.p AND folder_status.file_hash = o.h",
  ).run(iso(when), JSON.stringify(entries.map((e) => [e.path, e.fingerprint, e.contentHash])));
}

/** Failed folders that reached `maxRetries` and are no longer retried until they change. */
export function countExhausted(db: TrackerDb, maxRetries: number): number {
  const row = db.stmt(
    "SELECT count(*) AS n FROM folder_status WHERE upload_status = 'failed' AND retry_count >= ?",
  ).get(maxRetries) as { n: number };
  return Number(row.n);
}
