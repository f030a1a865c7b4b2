/**
 * The images a folder stored in the object store (`--images-to`), as the tracker records
 * them: one row per image with its key, size and MD5, so a later run puts only what
 * changed.
 *
 * @module
 */

import { iso, type TrackerDb } from "./db.ts";

/** One image as recorded in the `objects` table. */
export interface RecordedObject {
  /** The file name. */
  name: string;
  /** The object key it was stored under. */
  key: string;
  size: number;
  /** MD5 hex digest of its bytes. */
  md5: string;
}

function recorded(
  db: TrackerDb,
  folderPath: string,
  name: string,
): { object_key: string; size: number; md5: string } | undefined {
  return db.stmt(
    "SELECT object_key, size, md5 FROM objects WHERE folder_path = ? AND name = ?",
  ).get(folderPath, name) as { object_key: string; size: number; md5: string } | undefined;
}

/** Whether the image is recorded as stored under `object.key` with this size and MD5. */
export function objectStored(db: TrackerDb, folderPath: string, object: RecordedObject): boolean {
  const row = recorded(db, folderPath, object.name);
  return row !== undefined && row.object_key === object.key && Number(row.size) === object.size &&
    row.md5 === object.md5;
}

/** Whether the image is recorded as stored under `object.key` with this size. */
export function objectKnown(
  db: TrackerDb,
  folderPath: string,
  object: Omit<RecordedObject, "md5">,
): boolean {
  const row = recorded(db, folderPath, object.name);
  return row !== undefined && row.object_key === object.key && Number(row.size) === object.size;
}

/** Records the images of a folder as stored. One transaction. */
export function recordObjects(
  db: TrackerDb,
  folderPath: string,
  objects: readonly RecordedObject[],
  when: Date,
): void {
  if (objects.length === 0) return;
  const upsert = db.stmt(
    "INSERT INTO objects (folder_path, name, object_key, size, md5, stored_at) " +
      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (folder_path, name) DO UPDATE SET " +
      "object_key = excluded.object_key, size = excluded.size, md5 = excluded.md5, " +
      "stored_at = excluded.stored_at",
  );
  const text = iso(when);
  db.transaction(() => {
    for (const o of objects) upsert.run(folderPath, o.name, o.key, o.size, o.md5, text);
  });
}
