/**
 * A scan applied to the tracker: the diff rule (lib/plan/diff.ts) decides each scanned
 * folder against its tracked row, and the rows are written in one transaction per chunk:
 * new folders inserted as pending, changed ones reset to pending, an unchanged one written
 * only when something about it moved. The original tool's rows with a relative path are
 * adopted by the folder they name.
 *
 * @module
 */

import {
  decideFolder,
  type DiffDecision,
  type DiffOptions,
  type TrackedState,
} from "../plan/diff.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import { iso, type TrackerDb } from "./db.ts";
import type { WalkPass } from "./passes.ts";
import { remoteHashes } from "./remote.ts";

/** A decision for one scanned folder, with the snapshot it was made for. */
export interface ScanDecision extends DiffDecision {
  /** The folder as the scan saw it. */
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

/** Settings of {@linkcode applyScan}. */
export interface ApplyScanOptions extends DiffOptions {
  /** Decide only: nothing is written. */
  dryRun?: boolean;
  /** Add what the last `--verify` read from the server (`remoteContent`). */
  remote?: boolean;
  /** The run recording the scan. */
  runId: number;
  /** The base the folders were found under (null: named one by one). */
  basePath: string | null;
  /** The complete walk of `basePath` in progress, if any: it notes the rows it sees. */
  pass: WalkPass | null;
  /** The original tool's rows waiting to be adopted. */
  legacy: LegacyRows;
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

/**
 * Applies the diff rule to a chunk of scanned folders (one transaction unless `dryRun`)
 * and returns a decision per folder, in order. A path given more than once is decided
 * once, by its last snapshot: the earlier ones come back as superseded.
 */
export function applyScan(
  db: TrackerDb,
  snapshots: readonly FolderSnapshot[],
  options: ApplyScanOptions,
): ScanDecision[] {
  const remote = options.remote ? remoteHashes(db, snapshots.map((s) => s.key)) : null;
  const apply = () => {
    const rows = trackedRows(db, snapshots, options);
    const writes = new ScanWrites(db, options);
    const last = new Map<string, number>();
    snapshots.forEach((s, i) => last.set(s.path, i));
    const out = snapshots.map((snap, i): ScanDecision => {
      const row = rows.get(snap.path);
      const decision = decideFolder(trackedState(row), {
        fingerprint: snap.fingerprint,
        key: snap.key,
        newestMtimeMs: snap.newestMtimeMs,
        changedAtMs: snap.changedAtMs,
        ready: snap.ready,
      }, options);
      if (last.get(snap.path) !== i) {
        return {
          ...decision,
          settling: false,
          upload: false,
          snapshot: snap,
          uploadedContent: null,
          objectsDest: null,
        };
      }
      if (!options.dryRun) writes.note(decision, snap, row);
      return {
        ...decision,
        snapshot: snap,
        uploadedContent: row?.content_hash ?? null,
        objectsDest: row?.objects_dest ?? null,
        ...(remote ? { remoteContent: remote.get(snap.key) ?? null } : {}),
      };
    });
    if (!options.dryRun) writes.flush();
    return out;
  };
  return options.dryRun ? apply() : db.transaction(apply);
}

function trackedState(row: FolderRow | undefined): TrackedState | undefined {
  return row && {
    fileHash: row.file_hash ?? "",
    folderKey: row.folder_key,
    status: row.upload_status ?? "pending",
    retryCount: Number(row.retry_count ?? 0),
  };
}

/** The tracked rows of the chunk's paths, the original tool's adopted first (not in a dry run). */
function trackedRows(
  db: TrackerDb,
  snapshots: readonly FolderSnapshot[],
  options: ApplyScanOptions,
): Map<string, FolderRow> {
  const select = db.stmt(SCAN_SELECT);
  const paths = JSON.stringify(snapshots.map((s) => s.path));
  const rows = new Map<string, FolderRow>();
  for (const row of select.all(paths) as unknown[] as FolderRow[]) rows.set(row.folder_path, row);
  if (!options.dryRun && options.legacy.adopt(db, snapshots, rows) > 0) {
    for (const row of select.all(paths) as unknown[] as FolderRow[]) {
      rows.set(row.folder_path, row);
    }
  }
  return rows;
}

/** What a chunk's decisions write: changed rows at once, new and touched ones together. */
class ScanWrites {
  #db: TrackerDb;
  #options: ApplyScanOptions;
  #nowText: string;
  #fresh: unknown[][] = [];
  #touchedSettled: string[] = [];
  #touchedSettling: string[] = [];

  constructor(db: TrackerDb, options: ApplyScanOptions) {
    this.#db = db;
    this.#options = options;
    this.#nowText = iso(new Date(options.nowMs));
  }

  /** Notes (or, for a changed folder, writes) what one folder's decision changes. */
  note(decision: DiffDecision, snap: FolderSnapshot, row: FolderRow | undefined): void {
    const { basePath, runId, pass } = this.#options;
    if (row && pass) pass.markSeen(Number(row.rowid));
    const settling = decision.settling ? 1 : 0;
    if (decision.change === "new") {
      this.#fresh.push([
        snap.path,
        snap.name,
        snap.newestMtimeMs / 1000,
        snap.files.length,
        snap.fingerprint,
        snap.key,
        settling,
      ]);
    } else if (decision.change === "changed") {
      this.#db.stmt(SCAN_RESET).run(
        snap.name,
        snap.newestMtimeMs / 1000,
        snap.files.length,
        snap.fingerprint,
        this.#nowText,
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
      (settling ? this.#touchedSettling : this.#touchedSettled).push(snap.path);
    }
  }

  /** Inserts the new folders and writes the touched ones. */
  flush(): void {
    const { basePath, runId, pass } = this.#options;
    if (this.#fresh.length > 0) {
      const ids = this.#db.stmt(SCAN_INSERT).all(
        this.#nowText,
        basePath,
        runId,
        JSON.stringify(this.#fresh),
      ) as { rowid: number }[];
      if (pass) { for (const { rowid } of ids) pass.markSeen(Number(rowid)); }
    }
    const touch = this.#db.stmt(SCAN_TOUCH);
    if (this.#touchedSettled.length > 0) {
      touch.run(0, basePath, JSON.stringify(this.#touchedSettled));
    }
    if (this.#touchedSettling.length > 0) {
      touch.run(1, basePath, JSON.stringify(this.#touchedSettling));
    }
  }
}

/**
 * The original tool's rows whose folder path is relative (to wherever it was run from),
 * by folder name; loaded once, emptied as they are adopted.
 */
export class LegacyRows {
  #byName: Map<string, { rowid: number; path: string }[]> | null = null;

  /**
   * Gives the original tool's rows with a relative folder path (`data/Batch54`) the
   * absolute path of the folder they name, when a scan meets it, so one folder is one row
   * (not one per tool). A relative path names a folder whose path ends with it.
   *
   * @returns how many rows were adopted.
   */
  adopt(
    db: TrackerDb,
    snapshots: readonly FolderSnapshot[],
    rows: ReadonlyMap<string, unknown>,
  ): number {
    const legacy = this.#load(db);
    if (legacy.size === 0) return 0;
    const move = db.stmt("UPDATE folder_status SET folder_path = ? WHERE rowid = ?");
    let adopted = 0;
    for (const snap of snapshots) {
      const candidates = rows.has(snap.path) ? undefined : legacy.get(snap.name);
      const match = candidates?.findIndex((c) => snap.path.endsWith(`/${c.path}`)) ?? -1;
      if (match < 0) continue;
      move.run(snap.path, candidates![match].rowid);
      candidates!.splice(match, 1);
      if (candidates!.length === 0) legacy.delete(snap.name);
      adopted++;
    }
    return adopted;
  }

  #load(db: TrackerDb): Map<string, { rowid: number; path: string }[]> {
    if (this.#byName !== null) return this.#byName;
    this.#byName = new Map();
    const found = db.stmt(
      "SELECT rowid, folder_path FROM folder_status WHERE base_path IS NULL AND " +
        "folder_key IS NULL AND substr(folder_path, 1, 1) <> '/'",
    ).all() as { rowid: number; folder_path: string }[];
    for (const r of found) {
      const path = r.folder_path.replace(/^(\.\/)+/, "").replace(/\/+$/, "");
      const name = path.slice(path.lastIndexOf("/") + 1);
      const list = this.#byName.get(name) ?? [];
      list.push({ rowid: Number(r.rowid), path });
      this.#byName.set(name, list);
    }
    return this.#byName;
  }
}
