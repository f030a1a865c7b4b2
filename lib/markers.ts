/**
 * Marker files: `success.json` or `failed.json` in a folder after its outcome, written
 * atomically (a hidden temp file, then rename) with the other marker and the older
 * `upload_*.json` names removed. Markers never carry secrets: only the folder, the
 * outcome, the batch and the time.
 *
 * @module
 */

import { join } from "node:path";
import type { UploaderConfig } from "../config.ts";

/** The content of a success marker. */
export interface SuccessMarker {
  status: "success";
  folder_name: string;
  folder_key: string;
  upload_time: string;
  upload_batch: string;
  images_uploaded: number;
  test_status: string;
  folder_hash: string;
}

/** The content of a failure marker. */
export interface FailedMarker {
  status: "failed";
  folder_name: string;
  folder_key: string;
  failed_time: string;
  error: string;
  retry_count?: number;
}

/** Marker names the writer needs. */
export type MarkerConfig = Pick<UploaderConfig, "successMarker" | "failedMarker" | "legacyMarkers">;

/**
 * Writes the marker for a folder's outcome and removes the opposite and legacy markers.
 *
 * @throws the file-system error when the folder is read-only, full or gone; callers report
 * it for that folder and go on (the upload itself already counted).
 */
export function writeMarker(
  folderPath: string,
  marker: SuccessMarker | FailedMarker,
  config: MarkerConfig,
): void {
  const name = marker.status === "success" ? config.successMarker : config.failedMarker;
  const other = marker.status === "success" ? config.failedMarker : config.successMarker;
  const target = join(folderPath, name);
  const temp = join(folderPath, `.${name}.${Deno.pid}.tmp`);
  try {
    Deno.writeTextFileSync(temp, JSON.stringify(marker, null, 2) + "\n");
    Deno.renameSync(temp, target);
  } catch (error) {
    try {
      Deno.removeSync(temp);
    } catch {
      // The temp file was never created or is already gone; the original error matters.
    }
    throw error;
  }
  for (const stale of [other, ...config.legacyMarkers]) {
    try {
      Deno.removeSync(join(folderPath, stale));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
}
