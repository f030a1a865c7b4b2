/**
 * The tracking database's schema: its version, and the migrations that bring a database
 * (empty, or made by the original tool's scripts) to it, one transaction each.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import type { TrackerDb } from "./db.ts";

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

/** The schema version recorded in the database (0 for an empty file). */
export function schemaVersion(db: TrackerDb): number {
  const hasMeta = db.prepare(
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
  ).get();
  if (!hasMeta) return 0;
  const row = db.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get() as
    | { value: string }
    | undefined;
  return row ? Number(row.value) : 0;
}

/**
 * Brings the database to {@linkcode SCHEMA_VERSION}, one migration per transaction.
 *
 * @throws {UploadError} kind `config` when the database is newer than this program.
 */
export function migrate(db: TrackerDb): void {
  db.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)");
  let version = schemaVersion(db);
  if (version > SCHEMA_VERSION) {
    throw new UploadError(
      "config",
      `Tracking database ${db.path} has schema version ${version}, newer than this program's ${SCHEMA_VERSION}`,
      { subject: db.path, hint: "Use a newer version of the uploader with this database" },
    );
  }
  while (version < SCHEMA_VERSION) {
    const next = version + 1;
    db.transaction(() => {
      db.exec(MIGRATIONS[next]);
      db.prepare(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) " +
          "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      ).run(String(next));
    });
    version = next;
  }
}
