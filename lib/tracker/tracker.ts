/**
 * The local tracking database (SQLite through `node:sqlite`): which folders exist, what
 * was uploaded, what failed and why, and one row per upload batch. Keeps the original
 * tool's `folder_status` and `upload_batches` tables and column names, so the queries in
 * its documentation keep working, and adds what resuming and change detection need.
 *
 * One run at a time per database: {@linkcode Tracker.open} with `lock: true` takes an OS
 * file lock (flock) that dies with its process, so a killed run never blocks the next.
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import { hostname } from "node:os";
import {
  decideFolder,
  type DiffDecision,
  type DiffOptions,
  type TrackedState,
} from "../plan/diff.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import { messageOf, type RunStatus, UploadError } from "../core/errors.ts";
import { localDeviceId } from "../target/device.ts";
import { readStatus, type StatusOptions, type StatusReport } from "./status.ts";
import { type HeldLock, tryLock } from "./lock.ts";
import type { FailedMarker, SuccessMarker } from "../commit/markers.ts";
import { trackerFault, trackerGone } from "./faults.ts";

export type { FailureEntry, StatusOptions, StatusReport } from "./status.ts";

/** The schema version this code writes. */
export const SCHEMA_VERSION = 5;

/**
 * Migrations, keyed by the version they bring the database to. Each runs in one
 * transaction; the original tool's tables (version 1) are created only when missing, so
 * a database made by the original scripts is upgraded in place.
 */
const MIGRATIONS: Record<number, string> = {
  1: `
    CREATE TABLE IF NOT EXISTS folder_status (
      folder_path TEXT PRIMARY KEY,
      folder_name TEXT,
      last_modified REAL,
      file_count INTEGER,
      file_hash TEXT,
      upload_status TEXT DEFAULT 'pending',
      upload_timestamp TEXT,
      error_message TEXT,
      retry_count INTEGER DEFAULT 0,
      created_at TEXT DEFAULT CURRENT_TIMESTAMP,
      updated_at TEXT DEFAULT CURRENT_TIMESTAMP
    );
    CREATE TABLE IF NOT EXISTS upload_batches (
      batch_id TEXT PRIMARY KEY,
      batch_name TEXT,
      total_folders INTEGER,
      successful_uploads INTEGER DEFAULT 0,
      failed_uploads INTEGER DEFAULT 0,
      start_time TEXT,
      end_time TEXT,
      status TEXT DEFAULT 'running',
      created_at TEXT DEFAULT CURRENT_TIMESTAMP
    );
  `,
  2: `
    ALTER TABLE folder_status ADD COLUMN base_path TEXT;
    ALTER TABLE folder_status ADD COLUMN folder_key TEXT;
    ALTER TABLE folder_status ADD COLUMN uploaded_hash TEXT;
    ALTER TABLE folder_status ADD COLUMN next_attempt_at INTEGER;
    ALTER TABLE folder_status ADD COLUMN last_seen_run INTEGER;
    ALTER TABLE folder_status ADD COLUMN settling INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS folder_status_status ON folder_status (upload_status);
    CREATE INDEX IF NOT EXISTS folder_status_seen ON folder_status (base_path, last_seen_run);
    ALTER TABLE upload_batches ADD COLUMN run_id INTEGER;
    ALTER TABLE upload_batches ADD COLUMN bytes INTEGER;
    CREATE INDEX IF NOT EXISTS upload_batches_start ON upload_batches (start_time);
    CREATE TABLE IF NOT EXISTS runs (
      run_id INTEGER PRIMARY KEY AUTOINCREMENT,
      base_path TEXT,
      mode TEXT NOT NULL,
      pid INTEGER,
      started_at TEXT NOT NULL,
      ended_at TEXT,
      status TEXT NOT NULL DEFAULT 'running',
      scan_complete INTEGER NOT NULL DEFAULT 0,
      summary TEXT
    );
  `,
  3: `
    ALTER TABLE folder_status ADD COLUMN content_hash TEXT;
    ALTER TABLE folder_status ADD COLUMN missing_since TEXT;
    CREATE TABLE IF NOT EXISTS problems (
      path TEXT PRIMARY KEY,
      base_path TEXT,
      reason TEXT NOT NULL,
      first_seen TEXT NOT NULL,
      last_seen TEXT NOT NULL,
      last_seen_run INTEGER
    );
    CREATE INDEX IF NOT EXISTS problems_base ON problems (base_path);
  `,
  4: `
    ALTER TABLE folder_status ADD COLUMN objects_dest TEXT;
    CREATE TABLE IF NOT EXISTS remote_rows (
      folder_key TEXT PRIMARY KEY,
      content_hash TEXT
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS verify_orphans (
      folder_key TEXT PRIMARY KEY
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS objects (
      folder_path TEXT NOT NULL,
      name TEXT NOT NULL,
      object_key TEXT NOT NULL,
      size INTEGER NOT NULL,
      md5 TEXT NOT NULL,
      stored_at TEXT NOT NULL,
      PRIMARY KEY (folder_path, name)
    );
  `,
  5: `
    ALTER TABLE problems ADD COLUMN kind TEXT NOT NULL DEFAULT 'unreadable';
    ALTER TABLE folder_status ADD COLUMN marker_owed TEXT;
    CREATE INDEX IF NOT EXISTS folder_status_owed ON folder_status (folder_path)
      WHERE marker_owed IS NOT NULL;
  `,
};

/** Settings for {@linkcode Tracker.open}. */
export interface TrackerOpenOptions {
  /** Take the one-run-at-a-time lock (a run that writes). Default `true`. */
  lock?: boolean;
  /** Open without creating or migrating (for `--status` on a missing file). Default `false`. */
  readOnly?: boolean;
  /** What to record as the lock holder's command. */
  command?: string;
  /**
   * Move the database file (and its `-wal` and `-shm` files) aside first, to
   * `<path>.damaged-<time>`, and start a new one (`--rebuild-tracker`): the device id is
   * kept when the old file still tells it. Default `false`.
   */
  moveAside?: boolean;
}

/** One folder's outcome within a batch, for {@linkcode Tracker.recordBatch}. */
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
  batchId: string;
  batchName: string;
  runId: number;
  totalFolders: number;
  startTime: Date;
  endTime: Date;
  status: "completed" | "failed" | "interrupted";
  bytes?: number;
  /**
   * The folders' markers are written after this record: a marker still owed from an
   * earlier outcome is settled by the new one (if that write fails, it is owed anew).
   */
  markers?: boolean;
}

/** A marker file a folder is owed: it could not be written when its outcome was recorded. */
export interface OwedMarker {
  /** The folder's path. */
  path: string;
  /** The marker's content, as it was to be written. */
  marker: SuccessMarker | FailedMarker;
}

/** A decision for one scanned folder, with the snapshot it was made for. */
export interface ScanDecision extends DiffDecision {
  snapshot: FolderSnapshot;
  /** The content hash of the row the server last acknowledged for this folder, if any. */
  uploadedContent: string | null;
  /** Where its images were last stored (`--images-to`), if ever. */
  objectsDest: string | null;
  /**
   * With `--verify`: the content hash the server holds for this key (null: no row there);
   * undefined otherwise.
   */
  remoteContent?: string | null;
}

interface FolderRow {
  rowid: number;
  folder_path: string;
  file_hash: string | null;
  folder_key: string | null;
  upload_status: string | null;
  retry_count: number | null;
  settling: number | null;
  missing_since: string | null;
  base_path: string | null;
  content_hash: string | null;
  objects_dest: string | null;
}

/** A complete walk of one base in progress: which tracked rows it has seen. */
interface Pass {
  base: string;
  runId: number;
  /** Bit per rowid of the rows seen. */
  seen: Uint8Array;
  /** How many distinct rows are marked in `seen`. */
  seenCount: number;
}

/** ISO-8601 UTC text, the tracker's time format. */
function iso(date: Date): string {
  return date.toISOString();
}

/** The tracked rows of a chunk's folder paths (a JSON array). */
const SCAN_SELECT =
  "SELECT rowid, folder_path, file_hash, folder_key, upload_status, retry_count, settling, " +
  "missing_since, base_path, content_hash, objects_dest FROM folder_status " +
  "WHERE folder_path IN (SELECT value FROM json_each(?))";

/** New folders of a chunk as pending: ?1 now, ?2 base, ?3 run, ?4 a JSON array of tuples. */
const SCAN_INSERT =
  "INSERT INTO folder_status (folder_path, folder_name, last_modified, file_count, file_hash, " +
  "upload_status, retry_count, created_at, updated_at, base_path, folder_key, last_seen_run, " +
  "settling) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, " +
  "'pending', 0, ?1, ?1, ?2, value ->> 5, ?3, value ->> 6 FROM json_each(?4) RETURNING rowid";

/** A changed folder back to pending with a fresh retry count. */
const SCAN_RESET =
  "UPDATE folder_status SET folder_name = ?, last_modified = ?, file_count = ?, file_hash = ?, " +
  "upload_status = 'pending', retry_count = 0, error_message = NULL, " +
  "updated_at = ?, base_path = COALESCE(?, base_path), folder_key = ?, last_seen_run = ?, " +
  "settling = ?, missing_since = NULL WHERE folder_path = ?";

/** Unchanged folders whose settling flag, base or missing mark moved. */
const SCAN_TOUCH = "UPDATE folder_status SET settling = ?, base_path = COALESCE(?, base_path), " +
  "missing_since = NULL WHERE folder_path IN (SELECT value FROM json_each(?))";

/** The local tracking database. */
export class Tracker {
  readonly path: string;
  readonly db: DatabaseSync;
  #lock: HeldLock | null = null;
  #statements = new Map<string, StatementSync>();
  #pass: Pass | null = null;
  /** The file's device and inode when it was opened (null: in memory, or not a file). */
  #fileId: string | null = null;
  /** Where {@linkcode TrackerOpenOptions.moveAside} moved the old file, if it did. */
  movedAside: string | null = null;

  private constructor(path: string, db: DatabaseSync) {
    this.path = path;
    this.db = db;
    if (path !== ":memory:") this.#fileId = fileIdentity(path);
  }

  /**
   * Opens (creating and migrating as needed) the tracking database at `path`.
   *
   * @throws {UploadError} kind `locked` when another live process holds the lock, naming it;
   * kind `config` when the file cannot be opened or is not a tracking database.
   */
  static open(path: string, options: TrackerOpenOptions = {}): Tracker {
    const lock = options.lock ?? true;
    let held: HeldLock | null = null;
    if (lock && path !== ":memory:") held = acquireLock(`${path}.lock`, options.command);
    let aside: { to: string; deviceId?: string } | null = null;
    if (options.moveAside && path !== ":memory:") {
      try {
        aside = moveAside(path);
      } catch (error) {
        held?.release();
        throw trackerFault(path, error) ?? error;
      }
    }
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path, { readOnly: options.readOnly ?? false });
      db.exec("PRAGMA busy_timeout = 5000");
      if (!options.readOnly) {
        db.exec("PRAGMA journal_mode = WAL");
        db.exec("PRAGMA synchronous = NORMAL");
      }
    } catch (error) {
      held?.release();
      throw trackerFault(path, error) ??
        new UploadError("config", `Cannot open tracking database ${path}: ${messageOf(error)}`, {
          subject: path,
          cause: error,
        });
    }
    const tracker = new Tracker(path, db);
    tracker.#lock = held;
    try {
      if (!options.readOnly) tracker.#migrate();
      tracker.movedAside = aside?.to ?? null;
      if (aside?.deviceId) tracker.setMeta("device_id", aside.deviceId);
    } catch (error) {
      tracker.close();
      if (error instanceof UploadError) throw error;
      throw trackerFault(path, error) ??
        new UploadError(
          "config",
          `Cannot prepare tracking database ${path}: ${messageOf(error)}`,
          { subject: path, cause: error },
        );
    }
    return tracker;
  }

  /** The schema version recorded in the database (0 for an empty file). */
  schemaVersion(): number {
    const hasMeta = this.#prepare(
      "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
    ).get();
    if (!hasMeta) return 0;
    const row = this.#prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as
      | { value: string }
      | undefined;
    return row ? Number(row.value) : 0;
  }

  #migrate(): void {
    this.#exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)");
    let version = this.schemaVersion();
    if (version > SCHEMA_VERSION) {
      throw new UploadError(
        "config",
        `Tracking database ${this.path} has schema version ${version}, newer than this program's ${SCHEMA_VERSION}`,
        { subject: this.path, hint: "Use a newer version of the uploader with this database" },
      );
    }
    while (version < SCHEMA_VERSION) {
      const next = version + 1;
      this.transaction(() => {
        this.#exec(MIGRATIONS[next]);
        this.#prepare(
          "INSERT INTO meta (key, value) VALUES ('schema_version', ?) " +
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        ).run(String(next));
      });
      version = next;
    }
  }

  /**
   * Runs `fn` in one transaction; rolls back and rethrows when it throws. First checks that
   * the file is still the one opened (see {@linkcode checkFile}).
   *
   * @throws {UploadError} kind `config` for a fault of the file or its disk (see
   * lib/tracker/faults.ts), else what `fn` threw.
   */
  transaction<T>(fn: () => T): T {
    this.checkFile();
    this.#exec("BEGIN IMMEDIATE");
    try {
      const result = fn();
      this.#exec("COMMIT");
      return result;
    } catch (error) {
      try {
        if (this.db.isTransaction) this.db.exec("ROLLBACK");
      } catch (_rollback) {
        // A disk that refused the commit may refuse the rollback too; the first error says why.
      }
      throw this.#fault(error);
    }
  }

  /**
   * Checks that the tracking database is still at its path as opened: one deleted or
   * replaced meanwhile would take what this run records with it, silently.
   *
   * @throws {UploadError} kind `config` naming the file, when it was deleted or replaced.
   */
  checkFile(): void {
    if (this.#fileId === null) return;
    const now = fileIdentity(this.path);
    if (now === this.#fileId) return;
    throw trackerGone(this.path, now === null ? "deleted" : "replaced");
  }

  /** The error to throw for `error`, met while using the database. */
  #fault(error: unknown): unknown {
    if (error instanceof UploadError) return error;
    try {
      // A file deleted or replaced under the run explains whatever SQLite says next.
      this.checkFile();
    } catch (gone) {
      return gone;
    }
    return trackerFault(this.path, error) ?? error;
  }

  #exec(sql: string): void {
    try {
      this.db.exec(sql);
    } catch (error) {
      throw this.#fault(error);
    }
  }

  /** A prepared statement whose errors name the tracking database (see {@linkcode #fault}). */
  #prepare(sql: string): StatementSync {
    let stmt: StatementSync;
    try {
      stmt = this.db.prepare(sql);
    } catch (error) {
      throw this.#fault(error);
    }
    const fault = (error: unknown) => this.#fault(error);
    return new Proxy(stmt, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          try {
            return value.apply(target, args);
          } catch (error) {
            throw fault(error);
          }
        };
      },
    });
  }

  #stmt(sql: string): StatementSync {
    let stmt = this.#statements.get(sql);
    if (!stmt) {
      stmt = this.#prepare(sql);
      this.#statements.set(sql, stmt);
    }
    return stmt;
  }

  /** Reads a meta value. */
  getMeta(key: string): string | undefined {
    const row = this.#stmt("SELECT value FROM meta WHERE key = ?").get(key) as
      | { value: string }
      | undefined;
    return row?.value;
  }

  /** Writes a meta value. */
  setMeta(key: string, value: string): void {
    this.#stmt(
      "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ).run(key, value);
  }

  /**
   * This device's id: `preferred` when given (and then remembered), else the id kept in
   * the tracker, else the machine's default id ({@linkcode localDeviceId}), kept from now on.
   */
  deviceId(preferred?: string): string {
    if (preferred) {
      this.setMeta("device_id", preferred);
      return preferred;
    }
    const kept = this.getMeta("device_id");
    if (kept) return kept;
    const id = localDeviceId();
    this.setMeta("device_id", id);
    return id;
  }

  /**
   * Records the start of a run and closes the books on runs and batches that a killed
   * process left `running` (this process holds the lock, so they are dead).
   */
  startRun(basePath: string | null, mode: string, now = new Date()): number {
    return this.transaction(() => {
      this.#stmt("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE status = 'running'")
        .run(iso(now));
      this.#stmt(
        "UPDATE upload_batches SET status = 'interrupted', end_time = ? WHERE status = 'running'",
      ).run(iso(now));
      const row = this.#stmt(
        "INSERT INTO runs (base_path, mode, pid, started_at) VALUES (?, ?, ?, ?) RETURNING run_id",
      ).get(basePath, mode, Deno.pid, iso(now)) as { run_id: number };
      return Number(row.run_id);
    });
  }

  /**
   * Records every run and batch still marked `running` as interrupted, for a process that
   * quits at once (a second Ctrl-C) without waiting for its batches. Call it only while
   * holding the lock: every running row is then this process's or a dead one's. Their
   * folders stay pending.
   */
  markInterrupted(now = new Date()): void {
    this.transaction(() => {
      this.#stmt("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE status = 'running'")
        .run(iso(now));
      this.#stmt(
        "UPDATE upload_batches SET status = 'interrupted', end_time = ? WHERE status = 'running'",
      ).run(iso(now));
    });
  }

  /** Records how a run ended. `scanComplete` says the whole tree was walked. */
  finishRun(
    runId: number,
    status: RunStatus,
    summary: unknown,
    scanComplete: boolean,
    now = new Date(),
  ): void {
    this.checkFile();
    this.#stmt(
      "UPDATE runs SET status = ?, ended_at = ?, summary = ?, scan_complete = ? WHERE run_id = ?",
    ).run(status, iso(now), JSON.stringify(summary), scanComplete ? 1 : 0, runId);
  }

  /**
   * Starts a complete walk of `base`: the rows {@linkcode applyScan} sees from now on are
   * remembered (a bit per row, no write), so {@linkcode endPass} can tell which tracked
   * folders the walk did not find.
   */
  beginPass(base: string, runId: number): void {
    const top = this.#stmt("SELECT max(rowid) AS n FROM folder_status").get() as { n: number };
    this.#pass = {
      base,
      runId,
      seen: new Uint8Array(Math.ceil((Number(top.n ?? 0) + 1) / 8) + 1024),
      seenCount: 0,
    };
  }

  #markSeen(rowid: number): void {
    const pass = this.#pass!;
    const byte = rowid >>> 3;
    if (byte >= pass.seen.length) {
      const grown = new Uint8Array(Math.max(byte + 1, pass.seen.length * 2));
      grown.set(pass.seen);
      pass.seen = grown;
    }
    const bit = 1 << (rowid & 7);
    if ((pass.seen[byte] & bit) === 0) {
      pass.seen[byte] |= bit;
      pass.seenCount++;
    }
  }

  /** Forgets the walk started by {@linkcode beginPass} (it did not see the whole tree). */
  abandonPass(): void {
    this.#pass = null;
  }

  /**
   * Ends the walk started by {@linkcode beginPass}: tracked folders under its base that it
   * did not see are marked missing (never deleted), folders seen again lose the mark, and
   * problems it no longer met are forgotten. When every tracked folder was seen (the usual
   * case) this costs two counts, no scan of the table.
   *
   * @returns how many folders under the base are missing, and the first few paths.
   */
  endPass(now = new Date(), limit = 10): { count: number; sample: string[] } {
    const pass = this.#pass;
    if (!pass) return { count: 0, sample: [] };
    this.#pass = null;
    const present = this.#stmt(
      "SELECT count(*) AS n FROM folder_status WHERE base_path = ? AND missing_since IS NULL",
    ).get(pass.base) as { n: number };
    if (Number(present.n) > pass.seenCount) {
      const gone: number[] = [];
      const rows = this.#stmt(
        "SELECT rowid FROM folder_status WHERE base_path = ? AND missing_since IS NULL",
      ).iterate(pass.base) as Iterable<{ rowid: number }>;
      for (const { rowid } of rows) {
        const byte = rowid >>> 3;
        if (byte >= pass.seen.length || (pass.seen[byte] & (1 << (rowid & 7))) === 0) {
          gone.push(rowid);
        }
      }
      if (gone.length > 0) {
        this.#stmt(
          "UPDATE folder_status SET missing_since = ? WHERE rowid IN (SELECT value FROM json_each(?))",
        ).run(iso(now), JSON.stringify(gone));
      }
    }
    this.#stmt("DELETE FROM problems WHERE base_path = ? AND last_seen_run < ?")
      .run(pass.base, pass.runId);
    const count = this.#stmt(
      "SELECT count(*) AS n FROM folder_status WHERE base_path = ? AND missing_since IS NOT NULL",
    ).get(pass.base) as { n: number };
    const sample = this.#stmt(
      "SELECT folder_path FROM folder_status WHERE base_path = ? AND missing_since IS NOT NULL " +
        "ORDER BY folder_path LIMIT ?",
    ).all(pass.base, limit) as { folder_path: string }[];
    return { count: Number(count.n), sample: sample.map((r) => r.folder_path) };
  }

  /**
   * Applies the diff rule to a chunk of scanned folders in one transaction and returns a
   * decision per folder, in order. New folders are inserted as pending, changed ones are
   * reset to pending with retry_count 0; an unchanged one is written only when something
   * about it moved (its settling flag, its base, a missing mark), so rescanning an
   * unchanged tree writes nothing. A path given more than once (a folder named by a
   * file-system event and found again by a walk in the same chunk) is decided once, by its
   * last snapshot: the earlier ones come back as superseded (nothing to upload or hold back).
   */
  applyScan(
    snapshots: readonly FolderSnapshot[],
    runId: number,
    basePath: string | null,
    options: DiffOptions & { dryRun?: boolean; remote?: boolean },
  ): ScanDecision[] {
    const remote = options.remote ? this.#remoteHashes(snapshots.map((s) => s.key)) : null;
    const select = this.#stmt(SCAN_SELECT);
    const insert = this.#stmt(SCAN_INSERT);
    const reset = this.#stmt(SCAN_RESET);
    const touch = this.#stmt(SCAN_TOUCH);
    const nowText = iso(new Date(options.nowMs));
    const pass = this.#pass !== null && this.#pass.base === basePath;
    const apply = () => {
      const out: ScanDecision[] = [];
      const rows = new Map<string, FolderRow>();
      const found = select.all(JSON.stringify(snapshots.map((s) => s.path))) as unknown[];
      for (const row of found as FolderRow[]) rows.set(row.folder_path, row);
      if (!options.dryRun && this.#adoptLegacy(snapshots, rows) > 0) {
        const adopted = select.all(JSON.stringify(snapshots.map((s) => s.path))) as unknown[];
        for (const row of adopted as FolderRow[]) rows.set(row.folder_path, row);
      }
      const fresh: unknown[][] = [];
      const touchedSettled: string[] = [];
      const touchedSettling: string[] = [];
      const last = new Map<string, number>();
      snapshots.forEach((s, i) => last.set(s.path, i));
      for (let i = 0; i < snapshots.length; i++) {
        const snap = snapshots[i];
        const row = rows.get(snap.path);
        const tracked: TrackedState | undefined = row && {
          fileHash: row.file_hash ?? "",
          folderKey: row.folder_key,
          status: row.upload_status ?? "pending",
          retryCount: Number(row.retry_count ?? 0),
        };
        const decision = decideFolder(tracked, {
          fingerprint: snap.fingerprint,
          key: snap.key,
          newestMtimeMs: snap.newestMtimeMs,
          changedAtMs: snap.changedAtMs,
        }, options);
        if (last.get(snap.path) !== i) {
          out.push({
            ...decision,
            settling: false,
            upload: false,
            snapshot: snap,
            uploadedContent: null,
            objectsDest: null,
          });
          continue;
        }
        out.push({
          ...decision,
          snapshot: snap,
          uploadedContent: row?.content_hash ?? null,
          objectsDest: row?.objects_dest ?? null,
          ...(remote ? { remoteContent: remote.get(snap.key) ?? null } : {}),
        });
        if (options.dryRun) continue;
        if (row && pass) this.#markSeen(Number(row.rowid));
        const settling = decision.settling ? 1 : 0;
        if (decision.change === "new") {
          fresh.push([
            snap.path,
            snap.name,
            snap.newestMtimeMs / 1000,
            snap.files.length,
            snap.fingerprint,
            snap.key,
            settling,
          ]);
        } else if (decision.change === "changed") {
          reset.run(
            snap.name,
            snap.newestMtimeMs / 1000,
            snap.files.length,
            snap.fingerprint,
            nowText,
            basePath,
            snap.key,
            runId,
            settling,
            snap.path,
          );
        } else if (
          Number(row!.settling ?? 0) !== settling || row!.missing_since !== null ||
          (basePath !== null && row!.base_path !== basePath)
        ) {
          (settling ? touchedSettling : touchedSettled).push(snap.path);
        }
      }
      if (fresh.length > 0) {
        const ids = insert.all(nowText, basePath, runId, JSON.stringify(fresh)) as {
          rowid: number;
        }[];
        if (pass) { for (const { rowid } of ids) this.#markSeen(Number(rowid)); }
      }
      const base = basePath;
      if (touchedSettled.length > 0) touch.run(0, base, JSON.stringify(touchedSettled));
      if (touchedSettling.length > 0) touch.run(1, base, JSON.stringify(touchedSettling));
      return out;
    };
    return options.dryRun ? apply() : this.transaction(apply);
  }

  /**
   * The original tool's rows whose folder path is relative (to wherever it was run from),
   * by folder name; loaded once, emptied as they are adopted. Null until looked at.
   */
  #legacy: Map<string, { rowid: number; path: string }[]> | null = null;

  /**
   * Gives the original tool's rows with a relative folder path (`data/Batch54`) the absolute
   * path of the folder they name, when a scan meets it, so one folder is one row (not one
   * per tool). A relative path names a folder whose path ends with it.
   *
   * @returns how many rows were adopted.
   */
  #adoptLegacy(snapshots: readonly FolderSnapshot[], rows: Map<string, FolderRow>): number {
    if (this.#legacy === null) {
      this.#legacy = new Map();
      const found = this.#stmt(
        "SELECT rowid, folder_path FROM folder_status WHERE base_path IS NULL AND " +
          "folder_key IS NULL AND substr(folder_path, 1, 1) <> '/'",
      ).all() as { rowid: number; folder_path: string }[];
      for (const r of found) {
        const path = r.folder_path.replace(/^(\.\/)+/, "").replace(/\/+$/, "");
        const name = path.slice(path.lastIndexOf("/") + 1);
        const list = this.#legacy.get(name) ?? [];
        list.push({ rowid: Number(r.rowid), path });
        this.#legacy.set(name, list);
      }
    }
    if (this.#legacy.size === 0) return 0;
    const move = this.#stmt("UPDATE folder_status SET folder_path = ? WHERE rowid = ?");
    let adopted = 0;
    for (const snap of snapshots) {
      const candidates = rows.has(snap.path) ? undefined : this.#legacy.get(snap.name);
      const match = candidates?.findIndex((c) => snap.path.endsWith(`/${c.path}`)) ?? -1;
      if (match < 0) continue;
      move.run(snap.path, candidates![match].rowid);
      candidates!.splice(match, 1);
      if (candidates!.length === 0) this.#legacy.delete(snap.name);
      adopted++;
    }
    return adopted;
  }

  /** Failed folders that reached `maxRetries` and are no longer retried until they change. */
  countExhausted(maxRetries: number): number {
    const row = this.#stmt(
      "SELECT count(*) AS n FROM folder_status WHERE upload_status = 'failed' AND retry_count >= ?",
    ).get(maxRetries) as { n: number };
    return Number(row.n);
  }

  /** The server's content hash per key, as the last `--verify` read them. */
  #remoteHashes(keys: readonly string[]): Map<string, string | null> {
    const rows = this.#stmt(
      "SELECT folder_key, content_hash FROM remote_rows " +
        "WHERE folder_key IN (SELECT value FROM json_each(?))",
    ).all(JSON.stringify(keys)) as { folder_key: string; content_hash: string | null }[];
    return new Map(rows.map((r) => [r.folder_key, r.content_hash ?? ""]));
  }

  /**
   * Keys of the folders under `base` found on disk, a page at a time in the table's own
   * order: those after `after` (a position returned before; 0 for the first page).
   */
  baseKeys(base: string, after: number, limit: number): { keys: string[]; next: number } {
    const rows = this.#stmt(
      "SELECT rowid AS r, folder_key FROM folder_status WHERE rowid > ? AND base_path = ? " +
        "AND missing_since IS NULL AND folder_key IS NOT NULL ORDER BY rowid LIMIT ?",
    ).all(after, base, limit) as { r: number; folder_key: string }[];
    return { keys: rows.map((r) => r.folder_key), next: Number(rows.at(-1)?.r ?? after) };
  }

  /** Forgets the server rows a previous `--verify` read, before reading them again. */
  clearRemote(): void {
    this.#stmt("DELETE FROM remote_rows").run();
  }

  /** Adds rows read from the server (key, content hash) in one transaction. */
  addRemote(rows: readonly [string, string | null][]): void {
    if (rows.length === 0) return;
    this.transaction(() => {
      this.#stmt(
        "INSERT OR REPLACE INTO remote_rows (folder_key, content_hash) " +
          "SELECT value ->> 0, value ->> 1 FROM json_each(?)",
      ).run(JSON.stringify(rows));
    });
  }

  /**
   * Compares folders recorded as uploaded under `base` with the server's rows read by
   * {@linkcode addRemote}: one whose row is gone, or holds other content, is pending again.
   *
   * @returns how many were missing on the server and how many differed.
   */
  requeueFromRemote(base: string, when = new Date()): { missing: number; changed: number } {
    return this.transaction(() => {
      const text = iso(when);
      const missing = this.#stmt(
        "UPDATE folder_status SET upload_status = 'pending', retry_count = 0, updated_at = ? " +
          "WHERE base_path = ? AND upload_status = 'success' AND NOT EXISTS " +
          "(SELECT 1 FROM remote_rows r WHERE r.folder_key = folder_status.folder_key)",
      ).run(text, base);
      const changed = this.#stmt(
        "UPDATE folder_status SET upload_status = 'pending', retry_count = 0, updated_at = ? " +
          "FROM remote_rows r WHERE r.folder_key = folder_status.folder_key AND " +
          "folder_status.base_path = ? AND folder_status.upload_status = 'success' AND " +
          "folder_status.content_hash IS NOT r.content_hash",
      ).run(text, base);
      return { missing: Number(missing.changes), changed: Number(changed.changes) };
    });
  }

  /**
   * Ends a `--verify` run: server rows of this device with no folder on disk under `base`
   * are recorded as orphans (listed by `--status --json`, never deleted), the rows read are
   * forgotten, and what the verify found is kept for `--status`.
   */
  finishVerify(
    base: string,
    report: Record<string, unknown>,
    limit = 10,
  ): { orphans: number; sample: string[] } {
    return this.transaction(() => {
      this.#stmt("DELETE FROM verify_orphans").run();
      this.#stmt(
        // Uncorrelated, so SQLite builds the set of keys on disk once: a correlated
        // NOT EXISTS would scan the base's rows again for every server row.
        "INSERT INTO verify_orphans (folder_key) SELECT r.folder_key FROM remote_rows r " +
          "WHERE r.folder_key NOT IN (SELECT f.folder_key FROM folder_status f " +
          "WHERE f.base_path = ? AND f.missing_since IS NULL AND f.folder_key IS NOT NULL)",
      ).run(base);
      this.#stmt("DELETE FROM remote_rows").run();
      const orphans = Number(
        (this.#stmt("SELECT count(*) AS n FROM verify_orphans").get() as { n: number }).n,
      );
      const sample = (this.#stmt(
        "SELECT folder_key FROM verify_orphans ORDER BY folder_key LIMIT ?",
      ).all(limit) as { folder_key: string }[]).map((r) => r.folder_key);
      this.setMeta("last_verify", JSON.stringify({ ...report, base, orphans }));
      return { orphans, sample };
    });
  }

  /** Inserts a batch row with status `running` before its statement is sent. */
  startBatch(batchId: string, batchName: string, runId: number, total: number, start: Date): void {
    this.#stmt(
      "INSERT INTO upload_batches (batch_id, batch_name, total_folders, start_time, status, run_id, created_at) " +
        "VALUES (?, ?, ?, ?, 'running', ?, ?)",
    ).run(batchId, batchName, total, iso(start), runId, iso(start));
  }

  /**
   * Records a batch's outcome in one transaction: acknowledged folders become `success`
   * with the fingerprint taken before they were read; failed ones become `failed` with
   * their message and one more retry counted.
   */
  recordBatch(batch: BatchRecord, outcomes: readonly FolderOutcome[]): void {
    // Acknowledged folders in two statements per batch: those still as scanned become
    // success; those rescanned with another fingerprint meanwhile keep their pending status.
    const acked = "FROM (SELECT value ->> 0 AS p, value ->> 1 AS h, value ->> 2 AS c, " +
      "value ->> 3 AS d FROM json_each(?)) AS o WHERE folder_status.folder_path = o.p";
    const ok = this.#stmt(
      "UPDATE folder_status SET upload_status = 'success', uploaded_hash = o.h, " +
        "content_hash = o.c, objects_dest = COALESCE(o.d, objects_dest), upload_timestamp = ?, " +
        `error_message = NULL, retry_count = 0, updated_at = ? ${acked} ` +
        "AND folder_status.file_hash = o.h",
    );
    const settleMarkers = batch.markers
      ? this.#stmt(
        "UPDATE folder_status SET marker_owed = NULL WHERE marker_owed IS NOT NULL AND " +
          "folder_path IN (SELECT value FROM json_each(?))",
      )
      : null;
    const okStale = this.#stmt(
      "UPDATE folder_status SET uploaded_hash = o.h, content_hash = o.c, " +
        "objects_dest = COALESCE(o.d, objects_dest), upload_timestamp = ?, " +
        `updated_at = ? ${acked} AND folder_status.file_hash IS NOT o.h`,
    );
    const endText = iso(batch.endTime);
    this.transaction(() => {
      let failed = 0;
      const done: [string, string, string | null, string | null][] = [];
      for (const o of outcomes) {
        if (o.ok) {
          done.push([o.path, o.fingerprint, o.contentHash ?? null, o.objectsDest ?? null]);
        } else {
          failed++;
          this.#markFailed(o.path, o.error ?? "Unknown error", endText);
        }
      }
      const successful = done.length;
      if (successful > 0) {
        const pairs = JSON.stringify(done);
        ok.run(endText, endText, pairs);
        okStale.run(endText, endText, pairs);
      }
      settleMarkers?.run(JSON.stringify(outcomes.map((o) => o.path)));
      this.#stmt(
        "INSERT INTO upload_batches (batch_id, batch_name, total_folders, successful_uploads, " +
          "failed_uploads, start_time, end_time, status, run_id, bytes, created_at) " +
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id) DO UPDATE SET " +
          "total_folders = excluded.total_folders, successful_uploads = excluded.successful_uploads, " +
          "failed_uploads = excluded.failed_uploads, end_time = excluded.end_time, " +
          "status = excluded.status, bytes = excluded.bytes",
      ).run(
        batch.batchId,
        batch.batchName,
        batch.totalFolders,
        successful,
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

  /** Marks a batch that never got an answer (interrupted, server gone). Its folders stay pending. */
  abandonBatch(batchId: string, status: "interrupted" | "failed", end = new Date()): void {
    this.#stmt("UPDATE upload_batches SET status = ?, end_time = ? WHERE batch_id = ?")
      .run(status, iso(end), batchId);
  }

  /**
   * Records folders that failed before reaching the server (e.g. a broken stats.json);
   * with `markers`, their failed.json is written next (see {@linkcode BatchRecord.markers}).
   */
  recordFolderFailures(
    failures: readonly { path: string; error: string }[],
    when = new Date(),
    options: { markers?: boolean } = {},
  ): void {
    if (failures.length === 0) return;
    const text = iso(when);
    this.transaction(() => {
      for (const f of failures) this.#markFailed(f.path, f.error, text);
      // Their failed.json is written next: a marker owed from before is settled by it.
      if (options.markers) this.markersWritten(failures.map((f) => f.path));
    });
  }

  #markFailed(path: string, error: string, when: string): void {
    this.#stmt(
      "UPDATE folder_status SET upload_status = 'failed', error_message = ?, " +
        "retry_count = COALESCE(retry_count, 0) + 1, updated_at = ? WHERE folder_path = ?",
    ).run(error, when, path);
  }

  /**
   * Remembers markers that could not be written (a read-only card, a full disk), so later
   * runs write them once the folder can be written, without sending the row again. One
   * transaction.
   */
  oweMarkers(owed: readonly OwedMarker[]): void {
    if (owed.length === 0) return;
    this.#stmt(
      "UPDATE folder_status SET marker_owed = o.m FROM (SELECT value ->> 0 AS p, value ->> 1 " +
        "AS m FROM json_each(?)) AS o WHERE folder_status.folder_path = o.p",
    ).run(JSON.stringify(owed.map((o) => [o.path, JSON.stringify(o.marker)])));
  }

  /** Forgets owed markers that have now been written. One transaction. */
  markersWritten(paths: readonly string[]): void {
    if (paths.length === 0) return;
    this.#stmt(
      "UPDATE folder_status SET marker_owed = NULL " +
        "WHERE folder_path IN (SELECT value FROM json_each(?))",
    ).run(JSON.stringify(paths));
  }

  /** Where an owed marker still describes its folder: same outcome, folder on disk. */
  static readonly #OWED =
    "FROM folder_status WHERE marker_owed IS NOT NULL AND missing_since IS NULL AND " +
    "upload_status = json_extract(marker_owed, '$.status')";

  /**
   * Markers owed by earlier outcomes that still describe their folder (a folder changed
   * since, or gone, is left out: its next outcome writes a new one), by path, after
   * `after`, at most `limit`.
   */
  owedMarkers(limit: number, after = ""): OwedMarker[] {
    const rows = this.#stmt(
      `SELECT folder_path, marker_owed ${Tracker.#OWED} AND folder_path > ? ` +
        "ORDER BY folder_path LIMIT ?",
    ).all(after, limit) as { folder_path: string; marker_owed: string }[];
    return rows.map((r) => ({ path: r.folder_path, marker: JSON.parse(r.marker_owed) }));
  }

  /** How many markers are owed (see {@linkcode owedMarkers}). */
  countOwedMarkers(): number {
    return Number((this.#stmt(`SELECT count(*) AS n ${Tracker.#OWED}`).get() as { n: number }).n);
  }

  /**
   * Records folders whose files changed while their content did not (a `touch`, a copy that
   * reset modification times): the server already holds their row, so they become
   * `success` with the new fingerprint and nothing is sent.
   */
  recordAdopted(
    entries: readonly { path: string; fingerprint: string; contentHash: string }[],
    when = new Date(),
  ): void {
    if (entries.length === 0) return;
    const text = iso(when);
    this.#stmt(
      "UPDATE folder_status SET upload_status = 'success', uploaded_hash = o.h, " +
        "content_hash = o.c, error_message = NULL, retry_count = 0, updated_at = ? " +
        "FROM (SELECT value ->> 0 AS p, value ->> 1 AS h, value ->> 2 AS c FROM json_each(?)) " +
        "AS o WHERE folder_status.folder_path = o.p AND folder_status.file_hash = o.h",
    ).run(text, JSON.stringify(entries.map((e) => [e.path, e.fingerprint, e.contentHash])));
  }

  /**
   * Remembers folders or files the scan of `base` could not read, so `--status` lists them
   * until a complete scan no longer meets them.
   */
  recordProblems(
    base: string | null,
    runId: number,
    problems: readonly { path: string; reason: string }[],
    when = new Date(),
  ): void {
    if (problems.length === 0) return;
    const text = iso(when);
    const upsert = this.#upsertProblem();
    this.transaction(() => {
      for (const p of problems) upsert.run(p.path, base, p.reason, text, text, runId, "unreadable");
    });
  }

  #upsertProblem(): StatementSync {
    return this.#stmt(
      "INSERT INTO problems (path, base_path, reason, first_seen, last_seen, last_seen_run, " +
        "kind) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET " +
        "reason = excluded.reason, base_path = excluded.base_path, " +
        "last_seen = excluded.last_seen, last_seen_run = excluded.last_seen_run, " +
        "kind = excluded.kind",
    );
  }

  /**
   * Remembers symbolic links the scan of `base` did not follow (links to folders, loops),
   * so each is reported once and `--status` lists them until a complete scan no longer
   * meets them.
   *
   * @returns the links met for the first time (those to report).
   */
  recordSkipped(
    base: string | null,
    runId: number,
    skipped: readonly { path: string; reason: string }[],
    when = new Date(),
  ): { path: string; reason: string }[] {
    if (skipped.length === 0) return [];
    const text = iso(when);
    const upsert = this.#upsertProblem();
    return this.transaction(() => {
      const known = new Set(
        (this.#stmt(
          "SELECT path FROM problems WHERE kind = 'skipped' AND path IN " +
            "(SELECT value FROM json_each(?))",
        ).all(JSON.stringify(skipped.map((s) => s.path))) as { path: string }[]).map((r) => r.path),
      );
      for (const s of skipped) upsert.run(s.path, base, s.reason, text, text, runId, "skipped");
      return skipped.filter((s) => !known.has(s.path));
    });
  }

  /**
   * Tells the tracker that the base folder `from` now lives at `to` (a renamed folder, a
   * disk mounted elsewhere): every folder tracked under `from` keeps its status, key and
   * fingerprint under the new path, so a scan of `to` finds them unchanged and sends
   * nothing. Folders already tracked under `to` (a scan of it made before this) give way to
   * the moved ones. One transaction.
   *
   * @returns how many folders moved, and how many earlier entries under `to` were replaced.
   * @throws {UploadError} kind `usage` when nothing is tracked under `from`.
   */
  moveBase(from: string, to: string): { moved: number; replaced: number } {
    return this.transaction(() => {
      const under = "(folder_path = ?1 OR substr(folder_path, 1, length(?1) + 1) = ?1 || '/')";
      const moving = Number(
        (this.#stmt(`SELECT count(*) AS n FROM folder_status WHERE ${under}`).get(from) as {
          n: number;
        }).n,
      );
      if (moving === 0) {
        throw new UploadError("usage", `Nothing is tracked under ${from}`, {
          subject: from,
          hint: "Give the base path earlier runs used; 'deno task upload --status' lists the " +
            "tracked folders",
        });
      }
      const replaced = this.#stmt(
        `DELETE FROM folder_status WHERE ${under.replaceAll("?1", "?2")} AND ` +
          `?1 || substr(folder_path, length(?2) + 1) IN (SELECT folder_path FROM folder_status WHERE ${under})`,
      ).run(from, to);
      this.#stmt(
        "UPDATE folder_status SET folder_path = ?2 || substr(folder_path, length(?1) + 1), " +
          "base_path = CASE WHEN base_path = ?1 OR substr(base_path, 1, length(?1) + 1) = " +
          "?1 || '/' THEN ?2 || substr(base_path, length(?1) + 1) ELSE base_path END, " +
          "missing_since = NULL " +
          `WHERE ${under}`,
      ).run(from, to);
      this.#stmt(
        "UPDATE OR REPLACE problems SET path = ?2 || substr(path, length(?1) + 1), " +
          "base_path = ?2 WHERE base_path = ?1",
      ).run(from, to);
      const underObjects = under.replaceAll("folder_path", "objects.folder_path");
      this.#stmt(
        "UPDATE OR REPLACE objects SET folder_path = ?2 || substr(folder_path, length(?1) + 1) " +
          `WHERE ${underObjects}`,
      ).run(from, to);
      return { moved: moving, replaced: Number(replaced.changes) };
    });
  }

  /**
   * Whether the image `name` of a folder is recorded as stored under `key` with this size
   * and MD5 (`--images-to`): then it is not put again.
   */
  objectStored(folderPath: string, name: string, key: string, size: number, md5: string): boolean {
    const row = this.#stmt(
      "SELECT object_key, size, md5 FROM objects WHERE folder_path = ? AND name = ?",
    ).get(folderPath, name) as { object_key: string; size: number; md5: string } | undefined;
    return row !== undefined && row.object_key === key && Number(row.size) === size &&
      row.md5 === md5;
  }

  /** Whether an image is recorded as stored under `key` with this size (for a dry run's count). */
  objectKnown(folderPath: string, name: string, key: string, size: number): boolean {
    const row = this.#stmt(
      "SELECT object_key, size FROM objects WHERE folder_path = ? AND name = ?",
    ).get(folderPath, name) as { object_key: string; size: number } | undefined;
    return row !== undefined && row.object_key === key && Number(row.size) === size;
  }

  /** Records the images of a folder as stored, before its row is written. One transaction. */
  recordObjects(
    folderPath: string,
    objects: readonly { name: string; key: string; size: number; md5: string }[],
    when = new Date(),
  ): void {
    if (objects.length === 0) return;
    const upsert = this.#stmt(
      "INSERT INTO objects (folder_path, name, object_key, size, md5, stored_at) " +
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (folder_path, name) DO UPDATE SET " +
        "object_key = excluded.object_key, size = excluded.size, md5 = excluded.md5, " +
        "stored_at = excluded.stored_at",
    );
    const text = iso(when);
    this.transaction(() => {
      for (const o of objects) upsert.run(folderPath, o.name, o.key, o.size, o.md5, text);
    });
  }

  /** The base folders tracked folders were found under, deepest first. */
  knownBases(): string[] {
    const rows = this.#stmt(
      "SELECT DISTINCT base_path FROM folder_status WHERE base_path IS NOT NULL",
    ).all() as { base_path: string }[];
    return rows.map((r) => r.base_path).sort((a, b) => b.length - a.length);
  }

  /** The report behind `--status` (see lib/tracker/status.ts). */
  status(options: StatusOptions = {}): StatusReport {
    try {
      return readStatus(this.db, this.path, this.schemaVersion(), options);
    } catch (error) {
      throw this.#fault(error);
    }
  }

  /**
   * Records which server rows go to. When it differs from the one recorded before, every
   * folder uploaded elsewhere becomes pending again, so the new target gets all of them;
   * failed folders get their retries back, as the new target may take them.
   *
   * @returns how many folders recorded as uploaded elsewhere are pending again (0 when the
   * target is the same or new; failed folders are not counted: they were never uploaded).
   */
  useTarget(targetId: string): number {
    return this.transaction(() => {
      const previous = this.getMeta("target");
      this.setMeta("target", targetId);
      if (previous === undefined || previous === targetId) return 0;
      const uploaded = this.#stmt(
        "UPDATE folder_status SET upload_status = 'pending', retry_count = 0 " +
          "WHERE upload_status = 'success'",
      ).run();
      this.#stmt(
        "UPDATE folder_status SET upload_status = 'pending', retry_count = 0 " +
          "WHERE upload_status = 'failed'",
      ).run();
      return Number(uploaded.changes);
    });
  }

  /** Closes the database and releases the lock. */
  close(): void {
    this.#statements.clear();
    if (this.db.isOpen) this.db.close();
    this.#lock?.release();
    this.#lock = null;
  }
}

/**
 * Moves a tracking database and its `-wal` / `-shm` files aside to `<path>.damaged-<time>`,
 * reading its device id first when it can still be read. Null when there was no file.
 */
function moveAside(path: string): { to: string; deviceId?: string } | null {
  if (fileIdentity(path) === null) return null;
  let deviceId: string | undefined;
  try {
    const old = new DatabaseSync(path, { readOnly: true });
    try {
      const row = old.prepare("SELECT value FROM meta WHERE key = 'device_id'").get() as
        | { value: string }
        | undefined;
      deviceId = row?.value;
    } finally {
      old.close();
    }
  } catch (_error) {
    // Too damaged to tell: the new tracker finds the device id as a new one does.
  }
  const to = `${path}.damaged-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  Deno.renameSync(path, to);
  for (const suffix of ["-wal", "-shm"]) {
    try {
      Deno.renameSync(path + suffix, to + suffix);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return { to, deviceId };
}

/** A file's device and inode, or null when it does not exist (or cannot be stat'ed). */
function fileIdentity(path: string): string | null {
  try {
    const info = Deno.statSync(path);
    return `${info.dev}:${info.ino}`;
  } catch (_error) {
    return null; // gone (or unreadable: the next statement says why)
  }
}

/** Who holds a tracker lock, as written into the lock file. */
export interface LockHolder {
  pid: number;
  host: string;
  command: string;
  since: string;
}

/**
 * Takes the tracking database's lock (`<db>.lock`, see lib/tracker/lock.ts) without waiting, and
 * records who holds it.
 *
 * @throws {UploadError} kind `locked` naming the holder when another process has it.
 */
export function acquireLock(lockPath: string, command = "upload"): HeldLock {
  const dbPath = lockPath.replace(/\.lock$/, "");
  let lock: HeldLock;
  try {
    lock = takeLock(lockPath);
  } catch (error) {
    // The lock file beside it cannot be made (a read-only or full disk): the tracker's fault.
    const cause = error instanceof UploadError && error.kind === "config" ? error.cause : undefined;
    throw (cause !== undefined && trackerFault(dbPath, cause)) || error;
  }
  const holder: LockHolder = {
    pid: Deno.pid,
    host: hostname(),
    command,
    since: new Date().toISOString(),
  };
  try {
    lock.record({ ...holder });
  } catch (error) {
    // A full disk refuses even the few bytes of the record: the tracker cannot be written.
    lock.release();
    throw trackerFault(dbPath, error) ?? error;
  }
  return lock;
}

/** Takes the lock, or throws the refusal naming its holder. */
function takeLock(lockPath: string): HeldLock {
  return tryLock(lockPath, (info) => {
    const holder = info
      ? `process ${info.pid} on ${info.host} (${info.command}, since ${info.since})`
      : "another process"; // the holder may not have written its details yet
    return new UploadError(
      "locked",
      `Tracking database ${lockPath.replace(/\.lock$/, "")} is in use by ${holder}`,
      { subject: lockPath, hint: "Wait for that run to finish, or use another --db-path" },
    );
  });
}
