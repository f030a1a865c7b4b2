/**
 * Markers owed: a `success.json` or `failed.json` that could not be written when its
 * folder's outcome was recorded (a read-only card, a full disk) is kept in
 * `folder_status.marker_owed`, and written by a later run without sending the row again.
 *
 * @module
 */

import type { FailedMarker, SuccessMarker } from "../commit/markers.ts";
import type { TrackerDb } from "./db.ts";

/** A marker file a folder is owed: it could not be written when its outcome was recorded. */
export interface OwedMarker {
  /** The folder's path. */
  path: string;
  /** The marker's content, as it was to be written. */
  marker: SuccessMarker | FailedMarker;
}

/** Where an owed marker still describes its folder: same outcome, folder on disk. */
const OWED = "FROM folder_status WHERE marker_owed IS NOT NULL AND missing_since IS NULL AND " +
  "upload_status = json_extract(marker_owed, '$.status')";

/** Remembers markers that could not be written. One statement. */
export function oweMarkers(db: TrackerDb, owed: readonly OwedMarker[]): void {
  if (owed.length === 0) return;
  db.stmt(
    "UPDATE folder_status SET marker_owed = o.m FROM (SELECT value ->> 0 AS p, value ->> 1 " +
      "AS m FROM json_each(?)) AS o WHERE folder_status.folder_path = o.p",
  ).run(JSON.stringify(owed.map((o) => [o.path, JSON.stringify(o.marker)])));
}

/** Forgets owed markers that have now been written. One statement. */
export function markersWritten(db: TrackerDb, paths: readonly string[]): void {
  if (paths.length === 0) return;
  db.stmt(
    "UPDATE folder_status SET marker_owed = NULL " +
      "WHERE folder_path IN (SELECT value FROM json_each(?))",
  ).run(JSON.stringify(paths));
}

/** Owed markers that still describe their folder, by path, after `after`, at most `limit`. */
export function owedMarkers(db: TrackerDb, limit: number, after: string): OwedMarker[] {
  const rows = db.stmt(
    `SELECT folder_path, marker_owed ${OWED} AND folder_path > ? ORDER BY folder_path LIMIT ?`,
  ).all(after, limit) as { folder_path: string; marker_owed: string }[];
  return rows.map((r) => ({ path: r.folder_path, marker: JSON.parse(r.marker_owed) }));
}

/** How many markers are owed (see {@linkcode owedMarkers}). */
export function countOwedMarkers(db: TrackerDb): number {
  return Number((db.stmt(`SELECT count(*) AS n ${OWED}`).get() as { n: number }).n);
}
