/**
 * The server's rows as `--verify` reads them into the tracker (`remote_rows`), what they
 * mean for the folders recorded as uploaded (gone or different: pending again), and the
 * server rows without a folder on disk (`verify_orphans`, listed, never deleted).
 *
 * @module
 */

import { iso, type TrackerDb } from "./db.ts";
import { setMeta } from "./meta.ts";

/** The server's content hash per key, as the last `--verify` read them. */
export function remoteHashes(db: TrackerDb, keys: readonly string[]): Map<string, string | null> {
  const rows = db.stmt(
    "SELECT folder_key, content_hash FROM remote_rows " +
      "WHERE folder_key IN (SELECT value FROM json_each(?))",
  ).all(JSON.stringify(keys)) as { folder_key: string; content_hash: string | null }[];
  return new Map(rows.map((r) => [r.folder_key, r.content_hash ?? ""]));
}

/**
 * Keys of the folders under `base` found on disk, a page at a time in the table's own
 * order: those after `after` (a position returned before; 0 for the first page).
 */
export function baseKeys(
  db: TrackerDb,
  base: string,
  after: number,
  limit: number,
): { keys: string[]; next: number } {
  const rows = db.stmt(
    "SELECT rowid AS r, folder_key FROM folder_status WHERE rowid > ? AND base_path = ? " +
      "AND missing_since IS NULL AND folder_key IS NOT NULL ORDER BY rowid LIMIT ?",
  ).all(after, base, limit) as { r: number; folder_key: string }[];
  return { keys: rows.map((r) => r.folder_key), next: Number(rows.at(-1)?.r ?? after) };
}

/** Forgets the server rows a previous `--verify` read, before reading them again. */
export function clearRemote(db: TrackerDb): void {
  db.stmt("DELETE FROM remote_rows").run();
}

/** Adds rows read from the server (key, content hash) in one transaction. */
export function addRemote(db: TrackerDb, rows: readonly [string, string | null][]): void {
  if (rows.length === 0) return;
  db.transaction(() => {
    db.stmt(
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
export function requeueFromRemote(
  db: TrackerDb,
  base: string,
  when = new Date(),
): { missing: number; changed: number } {
  return db.transaction(() => {
    const text = iso(when);
    const missing = db.stmt(
      "UPDATE folder_status SET upload_status = 'pending', retry_count = 0, updated_at = ? " +
        "WHERE base_path = ? AND upload_status = 'success' AND NOT EXISTS " +
        "(SELECT 1 FROM remote_rows r WHERE r.folder_key = folder_status.folder_key)",
    ).run(text, base);
    const changed = db.stmt(
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
export function finishVerify(
  db: TrackerDb,
  base: string,
  report: Record<string, unknown>,
  limit = 10,
): { orphans: number; sample: string[] } {
  return db.transaction(() => {
    db.stmt("DELETE FROM verify_orphans").run();
    db.stmt(
      // Uncorrelated, so SQLite builds the set of keys on disk once: a correlated
      // NOT EXISTS would scan the base's rows again for every server row.
      "INSERT INTO verify_orphans (folder_key) SELECT r.folder_key FROM remote_rows r " +
        "WHERE r.folder_key NOT IN (SELECT f.folder_key FROM folder_status f " +
        "WHERE f.base_path = ? AND f.missing_since IS NULL AND f.folder_key IS NOT NULL)",
    ).run(base);
    db.stmt("DELETE FROM remote_rows").run();
    const orphans = Number(
      (db.stmt("SELECT count(*) AS n FROM verify_orphans").get() as { n: number }).n,
    );
    const sample = (db.stmt(
      "SELECT folder_key FROM verify_orphans ORDER BY folder_key LIMIT ?",
    ).all(limit) as { folder_key: string }[]).map((r) => r.folder_key);
    setMeta(db, "last_verify", JSON.stringify({ ...report, base, orphans }));
    return { orphans, sample };
  });
}
