/**
 * The numbers behind `--status`, read from the tracking database: counts by status,
 * recent batches with their rate, failures (retried and given up), unreadable folders,
 * missing folders and gone bases, and what the last `--verify` found. Read-only; an
 * original tool's database (no newer tables yet) gives what it can.
 *
 * @module
 */

import type { DatabaseSync } from "node:sqlite";

/** A failed folder, as `--status` lists it. */
export interface FailureEntry {
  /** The folder's path. */
  folderPath: string;
  /** Its name. */
  folderName: string;
  /** The last error, naming the file or the server's SQLSTATE. */
  error: string;
  /** When it last failed. */
  when: string;
  /** Runs that failed it since its files last changed. */
  retryCount: number;
}

/** Counts and lists of a tracking database, for `--status`. Lists hold `limit` entries at most. */
export interface StatusReport {
  /** The tracking database's file. */
  dbPath: string;
  /** Tracked folders. */
  total: number;
  /** Tracked folders by `upload_status` (`success`, `pending`, `failed`). */
  byStatus: Record<string, number>;
  /** Pending folders whose newest file was too young to upload when last seen. */
  settling: number;
  /** Tracked folders gone from disk: not found by the last complete scan, or under a base that is gone. */
  missing: number;
  /** The first few missing folders' paths. */
  missingSample: string[];
  /** Base folders that no longer exist (moved or renamed? see `--moved-from`). */
  goneBases: string[];
  /** The last batches, newest first, with their rate. */
  recentBatches: {
    batchName: string;
    successful: number;
    failed: number;
    total: number;
    status: string;
    startTime: string;
    endTime: string | null;
    durationSeconds: number | null;
    foldersPerSecond: number | null;
  }[];
  /** Failed folders the next runs retry (retry count below --max-retries), newest first. */
  recentFailures: FailureEntry[];
  /** How many folders the next runs retry. */
  failuresTotal: number;
  /** Failed folders that used up their retries and wait for a change, newest first. */
  exhausted: FailureEntry[];
  /** How many folders used up their retries. */
  exhaustedTotal: number;
  /** Folders or files the last scans could not read. */
  problems: { path: string; reason: string; since: string }[];
  /** How many there are. */
  problemsTotal: number;
  /** Symbolic links to folders, and link loops, the last scans did not follow. */
  skipped: { path: string; reason: string; since: string }[];
  /** How many there are. */
  skippedTotal: number;
  /** What the last `--verify` found (when it ran, rows read, re-queued, orphans), if one ran. */
  lastVerify: Record<string, unknown> | null;
  /** Server rows of this device with no folder on disk, as the last `--verify` found them. */
  orphans: string[];
  /** How many there are. */
  orphansTotal: number;
  /** Folders whose marker could not be written (read-only, full disk): a later run writes it. */
  markersOwed: { path: string; marker: string }[];
  /** How many markers are owed. */
  markersOwedTotal: number;
  /** The last run recorded, if any. */
  lastRun: {
    runId: number;
    mode: string;
    status: string;
    startedAt: string;
    endedAt: string | null;
  } | null;
}

/** Settings of {@linkcode Tracker.status}. */
export interface StatusOptions {
  /** Most entries per list (failures, exhausted, problems, missing); null for all. Default 10. */
  limit?: number | null;
  /** Recent batches listed. Default 5. */
  batches?: number;
  /** The retry limit that separates retried failures from exhausted ones. Default 3. */
  maxRetries?: number;
}

/** A parameter of a status query. */
type Param = string | number;

/** Runs the queries of one report on one database. */
class StatusReader {
  readonly #db: DatabaseSync;
  /** The LIMIT of every list (-1: no limit). */
  readonly #cap: number;

  constructor(db: DatabaseSync, cap: number) {
    this.#db = db;
    this.#cap = cap;
  }

  count(sql: string, ...params: Param[]): number {
    return Number((this.#db.prepare(sql).get(...params) as { n: number }).n);
  }

  all<T>(sql: string, ...params: Param[]): T[] {
    return this.#db.prepare(sql).all(...params) as T[];
  }

  /** A list query's rows, cut at the report's limit (its last parameter). */
  list<T>(sql: string, ...params: Param[]): T[] {
    return this.all<T>(`${sql} LIMIT ?`, ...params, this.#cap);
  }

  byStatus(): { byStatus: Record<string, number>; total: number } {
    const byStatus: Record<string, number> = {};
    let total = 0;
    const rows = this.all<{ s: string; n: number }>(
      "SELECT COALESCE(upload_status, 'pending') AS s, count(*) AS n FROM folder_status " +
        "GROUP BY 1 ORDER BY 1",
    );
    for (const row of rows) {
      byStatus[row.s] = Number(row.n);
      total += Number(row.n);
    }
    return { byStatus, total };
  }

  /** Folders not found by the last complete scan, or under a base that is gone. */
  missing(goneBases: string[]): { missing: number; missingSample: string[] } {
    const where = "FROM folder_status WHERE missing_since IS NOT NULL OR base_path IN " +
      "(SELECT value FROM json_each(?))";
    const gone = JSON.stringify(goneBases);
    return {
      missing: this.count(`SELECT count(*) AS n ${where}`, gone),
      missingSample: this.list<{ p: string }>(
        `SELECT folder_path AS p ${where} ORDER BY folder_path`,
        gone,
      ).map((r) => r.p),
    };
  }

  /** Tracked base folders that no longer exist on disk. */
  goneBases(): string[] {
    const bases = this.all<{ base_path: string }>(
      "SELECT DISTINCT base_path FROM folder_status WHERE base_path IS NOT NULL",
    );
    return bases.map((b) => b.base_path).filter((base) => {
      try {
        return !Deno.statSync(base).isDirectory;
      } catch (error) {
        // Gone (or unreadable, which a run would report): its folders count as missing.
        return error instanceof Deno.errors.NotFound;
      }
    });
  }

  recentBatches(limit: number): StatusReport["recentBatches"] {
    return this.all<{
      batch_name: string;
      successful_uploads: number;
      failed_uploads: number;
      total_folders: number;
      status: string;
      start_time: string | number;
      end_time: string | number | null;
    }>(
      "SELECT batch_name, successful_uploads, failed_uploads, total_folders, status, start_time, " +
        "end_time FROM upload_batches ORDER BY start_time DESC, batch_id DESC LIMIT ?",
      limit,
    ).map((b) => {
      const start = timeMs(b.start_time);
      const end = timeMs(b.end_time);
      const duration = start !== null && end !== null ? (end - start) / 1000 : null;
      const done = Number(b.successful_uploads ?? 0) + Number(b.failed_uploads ?? 0);
      return {
        batchName: b.batch_name,
        successful: Number(b.successful_uploads ?? 0),
        failed: Number(b.failed_uploads ?? 0),
        total: Number(b.total_folders ?? 0),
        status: b.status,
        startTime: String(b.start_time),
        endTime: b.end_time === null ? null : String(b.end_time),
        durationSeconds: duration,
        foldersPerSecond: duration && duration > 0 ? Math.round(done / duration) : null,
      };
    });
  }

  /** Failed folders below (`exhausted` false) or at `maxRetries`, newest first, and their count. */
  failures(maxRetries: number, exhausted: boolean): { items: FailureEntry[]; total: number } {
    const where = "FROM folder_status WHERE upload_status = 'failed' AND " +
      `COALESCE(retry_count, 0) ${exhausted ? ">=" : "<"} ?`;
    const items = this.list<{
      folder_path: string;
      folder_name: string;
      error_message: string | null;
      updated_at: string;
      retry_count: number | null;
    }>(
      "SELECT folder_path, folder_name, error_message, updated_at, retry_count " +
        `${where} ORDER BY updated_at DESC, folder_path`,
      maxRetries,
    ).map((f) => ({
      folderPath: f.folder_path,
      folderName: f.folder_name,
      error: f.error_message ?? "",
      when: f.updated_at,
      retryCount: Number(f.retry_count ?? 0),
    }));
    return { items, total: this.count(`SELECT count(*) AS n ${where}`, maxRetries) };
  }

  /** Problems of one kind (`unreadable`, or `skipped`: links not followed); all of them before schema 5. */
  problems(kind: string | null): { items: StatusReport["problems"]; total: number } {
    const where = kind === null ? "" : " WHERE kind = ?";
    const params = kind === null ? [] : [kind];
    const items = this.list<{ path: string; reason: string; first_seen: string }>(
      `SELECT path, reason, first_seen FROM problems${where} ORDER BY path`,
      ...params,
    ).map((p) => ({ path: p.path, reason: p.reason, since: p.first_seen }));
    return { items, total: this.count(`SELECT count(*) AS n FROM problems${where}`, ...params) };
  }

  lastVerify(): { lastVerify: Record<string, unknown> | null; orphans: string[]; total: number } {
    const meta = this.all<{ value: string }>("SELECT value FROM meta WHERE key = 'last_verify'");
    return {
      lastVerify: meta.length > 0 ? JSON.parse(meta[0].value) : null,
      orphans: this.list<{ folder_key: string }>(
        "SELECT folder_key FROM verify_orphans ORDER BY folder_key",
      ).map((r) => r.folder_key),
      total: this.count("SELECT count(*) AS n FROM verify_orphans"),
    };
  }

  /** Folders owed a marker that still describes them (see `Tracker.owedMarkers`). */
  markersOwed(): { items: StatusReport["markersOwed"]; total: number } {
    const where = "FROM folder_status WHERE marker_owed IS NOT NULL AND missing_since IS NULL " +
      "AND upload_status = json_extract(marker_owed, '$.status')";
    const items = this.list<{ folder_path: string; status: string }>(
      `SELECT folder_path, upload_status AS status ${where} ORDER BY folder_path`,
    ).map((r) => ({ path: r.folder_path, marker: r.status === "success" ? "success" : "failed" }));
    return { items, total: this.count(`SELECT count(*) AS n ${where}`) };
  }

  lastRun(): StatusReport["lastRun"] {
    const hasRuns = this.all("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'");
    if (hasRuns.length === 0) return null;
    const [last] = this.all<{
      run_id: number;
      mode: string;
      status: string;
      started_at: string;
      ended_at: string | null;
    }>("SELECT run_id, mode, status, started_at, ended_at FROM runs ORDER BY run_id DESC LIMIT 1");
    return last
      ? {
        runId: Number(last.run_id),
        mode: last.mode,
        status: last.status,
        startedAt: last.started_at,
        endedAt: last.ended_at,
      }
      : null;
  }
}

/**
 * A time as the tracker holds it, in ms since the epoch: ISO-8601 or SQLite text, or, in the
 * original tool's rows, Unix seconds (or ms) as a number; null when it is none of these.
 *
 * @example
 * ```ts
 * timeMs("2025-06-02T16:50:00.000Z"); // 1748883000000
 * timeMs(1748883000.5); // 1748883000500
 * timeMs("soon"); // null
 * ```
 */
export function timeMs(value: string | number | null | undefined): number | null {
  if (value === null || value === undefined || value === "") return null;
  const n = typeof value === "number" ? value : /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (Number.isFinite(n)) return n > 1e11 ? n : n * 1000;
  const parsed = Date.parse(String(value));
  return Number.isNaN(parsed) ? null : parsed;
}

/**
 * The report behind `--status` for a tracking database at schema `version` (older ones
 * lack tables: their parts of the report are empty).
 */
export function readStatus(
  db: DatabaseSync,
  path: string,
  version: number,
  options: StatusOptions = {},
): StatusReport {
  const limit = options.limit === undefined ? 10 : options.limit;
  const maxRetries = options.maxRetries ?? 3;
  const r = new StatusReader(db, limit ?? -1); // SQLite: a negative LIMIT means no limit
  const goneBases = version >= 2 ? r.goneBases() : [];
  const failures = r.failures(maxRetries, false);
  const exhausted = r.failures(maxRetries, true);
  const none = { items: [], total: 0 };
  const problems = version >= 3 ? r.problems(version >= 5 ? "unreadable" : null) : none;
  const skipped = version >= 5 ? r.problems("skipped") : none;
  const verify = version >= 4 ? r.lastVerify() : { lastVerify: null, orphans: [], total: 0 };
  const owed = version >= 5 ? r.markersOwed() : { items: [], total: 0 };
  return {
    dbPath: path,
    ...r.byStatus(),
    settling: version >= 2
      ? r.count(
        "SELECT count(*) AS n FROM folder_status WHERE settling = 1 AND upload_status = 'pending'",
      )
      : 0,
    ...(version >= 3 ? r.missing(goneBases) : { missing: 0, missingSample: [] }),
    goneBases,
    recentBatches: r.recentBatches(options.batches ?? 5),
    recentFailures: failures.items,
    failuresTotal: failures.total,
    exhausted: exhausted.items,
    exhaustedTotal: exhausted.total,
    problems: problems.items,
    problemsTotal: problems.total,
    skipped: skipped.items,
    skippedTotal: skipped.total,
    lastVerify: verify.lastVerify,
    orphans: verify.orphans,
    orphansTotal: verify.total,
    markersOwed: owed.items,
    markersOwedTotal: owed.total,
    lastRun: r.lastRun(),
  };
}
