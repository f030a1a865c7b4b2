/**
 * Marker files (lib/commit/markers.ts) on a real folder: written atomically, the opposite marker
 * removed, the original tool's markers kept, and a marker that tells the same as the one
 * in the folder left as it is (its modification time too).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_CONFIG } from "../../config.ts";
import {
  type FailedMarker,
  sameMarker,
  type SuccessMarker,
  writeMarkerAsync,
} from "../../lib/commit/markers.ts";
import { setMtime, T1, tempDir, writeTree } from "../../support/tree.ts";

const SUCCESS = {
  status: "success",
  folder_name: "B1",
  folder_key: "L/B1",
  device_id: "3f0e6a9e-8d4b-4a59-9d7e-2b1c5a7f9e10",
  upload_time: "2025-06-02T16:50:00.000Z",
  upload_batch: "batch_20250602_165000_0001",
  images_uploaded: 2,
  test_status: "passed",
  folder_hash: "0123456789abcdef0123456789abcdef",
} as SuccessMarker;

Deno.test("sameMarker: the same outcome of the same content, whenever and in which batch", () => {
  const later = { ...SUCCESS, upload_time: "2025-06-03T00:00:00.000Z", upload_batch: "b2" };
  assert.equal(sameMarker({ ...SUCCESS }, { ...later }), true);
  assert.equal(sameMarker({ ...SUCCESS }, { ...SUCCESS, folder_hash: "other" }), false);
  assert.equal(sameMarker({ ...SUCCESS }, { ...SUCCESS, test_status: "failed" }), false);
  const failed: FailedMarker = {
    status: "failed",
    folder_name: "B1",
    folder_key: "L/B1",
    failed_time: "t1",
    error: "Cannot parse",
    retry_count: 1,
  };
  assert.equal(sameMarker({ ...failed }, { ...failed, failed_time: "t2", retry_count: 2 }), true);
  assert.equal(sameMarker({ ...failed }, { ...failed, error: "Other" }), false);
  assert.equal(sameMarker({ ...failed }, { ...SUCCESS }), false);
});

Deno.test("writeMarkerAsync: opposite marker removed, the original tool's kept, same one left", async () => {
  using dir = tempDir();
  const folder = join(dir.path, "B1");
  writeTree(folder, {
    "stats.json": { text: "{}" },
    "failed.json": { text: "{}" },
    "upload_success.json": { text: '{"summary":"the original tool"}' },
    "upload_failed.json": { text: "{}" },
  });
  const names = () => new Set([...Deno.readDirSync(folder)].map((e) => e.name));
  assert.equal(await writeMarkerAsync(folder, SUCCESS, DEFAULT_CONFIG, names()), true);
  assert.deepEqual([...names()].sort(), [
    "stats.json",
    "success.json",
    "upload_failed.json",
    "upload_success.json",
  ]);
  const marker = join(folder, "success.json");
  assert.deepEqual(JSON.parse(Deno.readTextFileSync(marker)), SUCCESS);
  setMtime(marker, T1);
  const again = { ...SUCCESS, upload_time: "2025-07-01T00:00:00.000Z", upload_batch: "b9" };
  assert.equal(await writeMarkerAsync(folder, again, DEFAULT_CONFIG, names()), false);
  assert.equal(Deno.statSync(marker).mtime!.getTime(), T1, "rewritten");
  const changed = { ...again, folder_hash: "fedcba9876543210fedcba9876543210" };
  assert.equal(await writeMarkerAsync(folder, changed, DEFAULT_CONFIG, names()), true);
  assert.equal(JSON.parse(Deno.readTextFileSync(marker)).folder_hash, changed.folder_hash);
});
