/**
 * The tracker's own settings in its `meta` table: this device's id, and the target its
 * rows go to (a new target re-queues what was uploaded elsewhere).
 *
 * @module
 */

import { localDeviceId } from "../target/device.ts";
import type { TrackerDb } from "./db.ts";

/** Reads a meta value. */
export function getMeta(db: TrackerDb, key: string): string | undefined {
  const row = db.stmt("SELECT value FROM meta WHERE key = ?").get(key) as
    | { value: string }
    | undefined;
  return row?.value;
}

/** Writes a meta value. */
export function setMeta(db: TrackerDb, key: string, value: string): void {
  db.stmt(
    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
  ).run(key, value);
}

/**
 * This device's id: `preferred` when given (and then remembered), else the id kept in
 * the tracker, else the machine's default id ({@linkcode localDeviceId}), kept from now on.
 */
export function deviceId(db: TrackerDb, preferred?: string): string {
  if (preferred) {
    setMeta(db, "device_id", preferred);
    return preferred;
  }
  const kept = getMeta(db, "device_id");
  if (kept) return kept;
  const id = localDeviceId();
  setMeta(db, "device_id", id);
  return id;
}

/**
 * Records which server rows go to; a target other than the one recorded before makes
 * every uploaded or failed folder pending again, with its retries back.
 *
 * @returns how many folders recorded as uploaded elsewhere are pending again.
 */
export function useTarget(db: TrackerDb, targetId: string): number {
  return db.transaction(() => {
    const previous = getMeta(db, "target");
    setMeta(db, "target", targetId);
    if (previous === undefined || previous === targetId) return 0;
    const uploaded = db.stmt(
      "UPDATE folder_status SET upload_status = 'pending', retry_count = 0 " +
        "WHERE upload_status = 'success'",
    ).run();
    db.stmt(
      "UPDATE folder_status SET upload_status = 'pending', retry_count = 0 " +
        "WHERE upload_status = 'failed'",
    ).run();
    return Number(uploaded.changes);
  });
}
