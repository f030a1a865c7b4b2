/**
 * A folder's images planned and compared (lib/objects/folder.ts), without a server; putting
 * them into a real S3 server is tests/objects/storage_test.ts.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { isSameObject, planFolderObjects } from "../../lib/objects/folder.ts";

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

Deno.test("planFolderObjects: the images (any case) and bytes a dry run would put", () => {
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
      { name: "a.jpg", key: "raw/dev/Batch 1/a.jpg", size: 100 },
      { name: "b.PNG", key: "raw/dev/Batch 1/b.PNG", size: 200 },
    ],
    bytes: 300,
  });
});
