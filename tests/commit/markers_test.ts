/**
 * Marker files (lib/commit/markers.ts) on a real folder: written atomically, the opposite marker
 * removed, the original tool's markers kept, and a marker that tells the same as the one
 * in the folder left as it is (its modification time too). The marker writer, without a
 * server: a failure reported through onError, drain waiting for every write, and its
 * concurrency held (by a write function that waits until the test lets it finish).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_CONFIG } from "../../config.ts";
import {
  type FailedMarker,
  type MarkerWrite,
  MarkerWriter,
  sameMarker,
  type SuccessMarker,
  writeMarker,
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

const FAILED: FailedMarker = {
  status: "failed",
  folder_name: "B1",
  folder_key: "L/B1",
  failed_time: "2025-06-02T16:50:00.000Z",
  error: "Cannot parse stats.json: unexpected end of input at line 3",
  retry_count: 1,
};

/** The folder's file names. */
function namesIn(folder: string): string[] {
  return [...Deno.readDirSync(folder)].map((e) => e.name).sort();
}

Deno.test("writeMarker and writeMarkerAsync: the marker is replaced whole, no temp file left", async () => {
  using dir = tempDir();
  const folder = join(dir.path, "B1");
  // An older, longer marker: a write in place would leave its tail behind.
  writeTree(folder, { "success.json": { text: JSON.stringify({ note: "x".repeat(4096) }) } });
  writeMarker(folder, SUCCESS, DEFAULT_CONFIG);
  assert.deepEqual(JSON.parse(Deno.readTextFileSync(join(folder, "success.json"))), SUCCESS);
  assert.deepEqual(namesIn(folder), ["success.json"]);
  const later = { ...SUCCESS, folder_hash: "fedcba9876543210fedcba9876543210" };
  assert.equal(await writeMarkerAsync(folder, later, DEFAULT_CONFIG), true);
  assert.deepEqual(JSON.parse(Deno.readTextFileSync(join(folder, "success.json"))), later);
  assert.deepEqual(namesIn(folder), ["success.json"]);
});

Deno.test("writeMarker and writeMarkerAsync: a failed write throws, leaves no temp file, and keeps the opposite marker", async () => {
  using dir = tempDir();
  const folder = join(dir.path, "B1");
  // The marker's name is taken by a folder: the rename onto it fails.
  writeTree(folder, { "failed.json": { text: "{}" }, "success.json/keep": { text: "k" } });
  assert.throws(() => writeMarker(folder, SUCCESS, DEFAULT_CONFIG));
  await assert.rejects(writeMarkerAsync(folder, SUCCESS, DEFAULT_CONFIG));
  assert.deepEqual(namesIn(folder), ["failed.json", "success.json"]);
  assert.deepEqual(namesIn(join(folder, "success.json")), ["keep"]);
});

Deno.test("MarkerWriter: writes each outcome's marker, removes the opposite one, keeps the original tool's, skips one saying the same", async () => {
  using dir = tempDir();
  const a = join(dir.path, "A");
  const b = join(dir.path, "B");
  writeTree(a, { "failed.json": { text: "{}" }, "upload_failed.json": { text: "{}" } });
  writeTree(b, { "success.json": { text: JSON.stringify(SUCCESS) } });
  setMtime(join(b, "success.json"), T1);
  const written: string[] = [];
  const errors: string[] = [];
  const writer = new MarkerWriter(DEFAULT_CONFIG, {
    onError: (path, error) => errors.push(`${path}: ${error}`),
    onWritten: (path, name, marker) => written.push(`${path} ${name} ${marker.status}`),
  });
  await writer.write(a, SUCCESS, namesIn(a));
  const again = { ...SUCCESS, upload_time: "2025-07-01T00:00:00.000Z", upload_batch: "b9" };
  await writer.write(b, again, new Set(namesIn(b)));
  await writer.drain();
  assert.deepEqual(errors, []);
  assert.deepEqual(written, [`${a} success.json success`], "B's marker said the same already");
  assert.deepEqual(namesIn(a), ["success.json", "upload_failed.json"]);
  assert.equal(Deno.statSync(join(b, "success.json")).mtime!.getTime(), T1, "B's not rewritten");

  await writer.write(a, FAILED, namesIn(a));
  await writer.drain();
  assert.deepEqual(namesIn(a), ["failed.json", "upload_failed.json"]);
  assert.deepEqual(JSON.parse(Deno.readTextFileSync(join(a, "failed.json"))), FAILED);
});

Deno.test("MarkerWriter: a failed write is reported through onError for its folder, never thrown", async () => {
  using dir = tempDir();
  const here = join(dir.path, "here");
  const gone = join(dir.path, "gone");
  writeTree(here, { "stats.json": { text: "{}" } });
  const errors: { path: string; error: unknown; marker: SuccessMarker | FailedMarker }[] = [];
  const writer = new MarkerWriter(DEFAULT_CONFIG, {
    onError: (path, error, marker) => errors.push({ path, error, marker }),
  });
  await writer.write(gone, FAILED);
  await writer.write(here, SUCCESS);
  await writer.drain();
  assert.equal(errors.length, 1);
  assert.equal(errors[0].path, gone);
  assert.ok(errors[0].error instanceof Deno.errors.NotFound, String(errors[0].error));
  assert.deepEqual(errors[0].marker, FAILED);
  assert.deepEqual(namesIn(here), ["stats.json", "success.json"]);
});

/** A write function whose writes end only when the test says so, counting those in flight. */
function heldWrites() {
  const held: { path: string; finish: (ok: boolean) => void }[] = [];
  let inFlight = 0;
  let most = 0;
  const write: MarkerWrite = (path) =>
    new Promise<boolean>((resolve, reject) => {
      inFlight++;
      most = Math.max(most, inFlight);
      held.push({
        path,
        finish: (ok) => {
          inFlight--;
          if (ok) resolve(true);
          else reject(new Error(`Disk full: ${path}`));
        },
      });
    });
  return { write, held, most: () => most, inFlight: () => inFlight };
}

/** Lets queued promise callbacks run. */
const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("MarkerWriter: at most `concurrency` writes at once; write() waits for a slot, in order", async () => {
  const writes = heldWrites();
  const writer = new MarkerWriter(DEFAULT_CONFIG, {
    concurrency: 2,
    onError: () => {},
    write: writes.write,
  });
  const started: string[] = [];
  const queued = ["/f1", "/f2", "/f3", "/f4", "/f5"].map((path) =>
    writer.write(path, SUCCESS).then(() => started.push(path))
  );
  await tick();
  assert.deepEqual(started, ["/f1", "/f2"], "the third waits for a slot");
  assert.equal(writes.inFlight(), 2);
  writes.held[1].finish(true);
  await tick();
  assert.deepEqual(started, ["/f1", "/f2", "/f3"]);
  writes.held[0].finish(false); // a failed write frees its slot too
  await tick();
  assert.deepEqual(started, ["/f1", "/f2", "/f3", "/f4"]);
  while (writes.held.length < 5 || writes.inFlight() > 0) {
    for (const h of writes.held) h.finish(true);
    await tick();
  }
  await Promise.all(queued);
  assert.equal(writes.most(), 2);
  assert.deepEqual(writes.held.map((h) => h.path), ["/f1", "/f2", "/f3", "/f4", "/f5"]);
});

Deno.test("MarkerWriter: drain waits for every write, failed ones included", async () => {
  const writes = heldWrites();
  const errors: string[] = [];
  const written: string[] = [];
  const writer = new MarkerWriter(DEFAULT_CONFIG, {
    concurrency: 8,
    onError: (path) => errors.push(path),
    onWritten: (path) => written.push(path),
    write: writes.write,
  });
  for (const path of ["/a", "/b", "/c"]) await writer.write(path, SUCCESS);
  let drained = false;
  const draining = writer.drain().then(() => (drained = true));
  await tick();
  assert.equal(drained, false);
  writes.held[0].finish(true);
  writes.held[2].finish(false);
  await tick();
  assert.equal(drained, false, "one write still runs");
  writes.held[1].finish(true);
  await draining;
  assert.deepEqual(written.sort(), ["/a", "/b"]);
  assert.deepEqual(errors, ["/c"]);
});

Deno.test("MarkerWriter: many real folders with a small concurrency all get their marker", async () => {
  using dir = tempDir();
  let inFlight = 0;
  let most = 0;
  const writer = new MarkerWriter(DEFAULT_CONFIG, {
    concurrency: 3,
    onError: (path, error) => assert.fail(`${path}: ${error}`),
    write: async (...args) => {
      most = Math.max(most, ++inFlight);
      try {
        return await writeMarkerAsync(...args);
      } finally {
        inFlight--;
      }
    },
  });
  const folders = Array.from({ length: 40 }, (_, i) => join(dir.path, `F${i}`));
  for (const f of folders) Deno.mkdirSync(f);
  for (const f of folders) await writer.write(f, { ...SUCCESS, folder_name: f }, []);
  await writer.drain();
  assert.ok(most <= 3 && most >= 1, `${most} at once`);
  for (const f of folders) {
    assert.equal(JSON.parse(Deno.readTextFileSync(join(f, "success.json"))).folder_name, f);
  }
});

Deno.test("MarkerWriter: the markers are written on their own thread, while the main thread is busy", async () => {
  using dir = tempDir();
  const folders = Array.from({ length: 300 }, (_, i) => join(dir.path, `F${i}`));
  for (const f of folders) Deno.mkdirSync(f);
  const writer = new MarkerWriter(DEFAULT_CONFIG, {
    concurrency: 1000,
    directMarkers: 0,
    onError: (path, error) => assert.fail(`${path}: ${error}`),
  });
  for (const f of folders) await writer.write(f, { ...SUCCESS, folder_name: f }, []);
  await tick(); // the last ones are sent at the end of this turn
  // The main thread now blocks; the markers must still land (their writes run elsewhere).
  const missing = new Set(folders.map((f) => join(f, "success.json")));
  const until = Date.now() + 20_000;
  while (missing.size > 0 && Date.now() < until) {
    for (const file of missing) {
      try {
        if (Deno.statSync(file).isFile) missing.delete(file);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
    }
  }
  assert.equal(missing.size, 0, "markers not written while the main thread was busy");
  await writer.drain();
  for (const f of folders) {
    assert.equal(JSON.parse(Deno.readTextFileSync(join(f, "success.json"))).folder_name, f);
  }
});
