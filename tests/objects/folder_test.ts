/**
 * A folder's images and reports planned and compared (lib/objects/folder.ts), without a
 * server; putting them into a real S3 server is tests/objects/storage_test.ts.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { isSameObject, objectsDestination, planFolderObjects } from "../../lib/objects/folder.ts";

const ENCODER = new TextEncoder();

function md5(bytes: Uint8Array): string {
  return createHash("md5").update(bytes).digest("hex");
}

Deno.test("isSameObject: same size and MD5 as the single-part ETag or the stored md5", () => {
  const sum = md5(ENCODER.encode("abc"));
  assert.equal(isSameObject({ size: 3, etag: sum }, 3, sum), true);
  assert.equal(isSameObject({ size: 3, etag: sum.toUpperCase() }, 3, sum), true);
  assert.equal(isSameObject({ size: 4, etag: sum }, 3, sum), false);
  assert.equal(isSameObject({ size: 3, etag: `${sum}-2` }, 3, sum), false);
  assert.equal(isSameObject({ size: 3, etag: `${sum}-2`, md5: sum }, 3, sum), true);
  assert.equal(isSameObject(null, 3, sum), false);
});

Deno.test("planFolderObjects: the images (any case), then the reports, and the bytes a dry run would put", () => {
  const plan = planFolderObjects({ bucket: "b", prefix: "raw" }, {
    path: "/data/Batch 1",
    key: "Batch 1",
    files: [
      { name: "stats.json", size: 10, mtimeMs: 0 },
      { name: "b.PNG", size: 200, mtimeMs: 0 },
      { name: "a.jpg", size: 100, mtimeMs: 0 },
      { name: "report.pdf", size: 5000, mtimeMs: 0 },
    ],
  }, { deviceId: "dev" });
  assert.deepEqual(plan, {
    objects: [
      { name: "a.jpg", kind: "image", key: "raw/dev/Batch 1/a.jpg", size: 100 },
      { name: "b.PNG", kind: "image", key: "raw/dev/Batch 1/b.PNG", size: 200 },
      { name: "report.pdf", kind: "report", key: "raw/dev/Batch 1/report.pdf", size: 5000 },
    ],
    bytes: 5300,
  });
  // Reports left out when their extensions are none.
  const images = planFolderObjects({ bucket: "b", prefix: "" }, {
    path: "/data/B",
    key: "B",
    files: [{ name: "a.jpg", size: 1, mtimeMs: 0 }, { name: "r.PDF", size: 2, mtimeMs: 0 }],
  }, { deviceId: "dev", reportExtensions: [] });
  assert.deepEqual(images.objects.map((o) => o.name), ["a.jpg"]);
  const both = planFolderObjects({ bucket: "b", prefix: "" }, {
    path: "/data/B",
    key: "B",
    files: [{ name: "a.jpg", size: 1, mtimeMs: 0 }, { name: "r.PDF", size: 2, mtimeMs: 0 }],
  }, { deviceId: "dev" });
  assert.deepEqual(both.objects.map((o) => [o.name, o.kind]), [["a.jpg", "image"], [
    "r.PDF",
    "report",
  ]]);
});

Deno.test("objectsDestination: the store, and the report extensions when reports are stored", () => {
  const display = "s3://lab/raw at https://x.supabase.co/storage/v1/s3";
  assert.equal(objectsDestination(display, []), display, "images only: as recorded before");
  assert.equal(objectsDestination(display, [".pdf"]), `${display}; reports .pdf`);
  assert.notEqual(
    objectsDestination(display, [".pdf"]),
    objectsDestination(display, [".pdf", ".html"]),
  );
});
