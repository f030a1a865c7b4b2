/** Where images go and their names (lib/objects/keys.ts): `--images-to`, object keys, SigV4 paths. */

import assert from "node:assert/strict";
import { exitCodeFor, UploadError } from "../../lib/core/errors.ts";
import {
  contentTypeOf,
  encodeKeyPath,
  objectKey,
  objectUrl,
  parseImagesTo,
} from "../../lib/objects/keys.ts";
import { percentEncode, publicUrl, UPSTREAM_DEVICE } from "../../support/upstream.ts";

Deno.test("parseImagesTo: bucket and prefix", () => {
  const cases: [string, { bucket: string; prefix: string }][] = [
    ["s3://lab-images/raw", { bucket: "lab-images", prefix: "raw" }],
    ["s3://lab-images", { bucket: "lab-images", prefix: "" }],
    ["s3://lab-images/", { bucket: "lab-images", prefix: "" }],
    ["s3://lab.images_2/raw/2025/", { bucket: "lab.images_2", prefix: "raw/2025" }],
    ["S3://b/with space/ü#?%", { bucket: "b", prefix: "with space/ü#?%" }],
    [" s3://b/p ", { bucket: "b", prefix: "p" }],
  ];
  for (const [value, want] of cases) assert.deepEqual(parseImagesTo(value), want, value);
});

Deno.test("parseImagesTo: malformed values are usage errors (exit 2) saying what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["lab-images/raw", /must start with s3:\/\//],
    ["https://x.supabase.co/storage/v1/s3", /must start with s3:\/\//],
    ["s3:/bucket", /must start with s3:\/\//],
    ["s3://", /bucket name is missing/],
    ["s3:///prefix", /bucket name is missing/],
    ["s3://bad bucket/p", /bucket name "bad bucket"/],
    ["s3://b/a//c", /empty, "\." or "\.\." part/],
    ["s3://b/a/../c", /empty, "\." or "\.\." part/],
    ["s3://b/a\nb", /control character/],
  ];
  for (const [value, pattern] of cases) {
    assert.throws(() => parseImagesTo(value), (error: unknown) => {
      assert.ok(error instanceof UploadError);
      assert.equal(error.kind, "usage");
      assert.equal(exitCodeFor(error), 2);
      assert.match(error.message, pattern, value);
      assert.match(error.hint ?? "", /s3:\/\/BUCKET\/PREFIX/);
      return true;
    });
  }
});

Deno.test("objectKey: PREFIX/<device>/<folder key>/<name>, validated", () => {
  assert.equal(objectKey("raw", "dev-1", "Batch 54", "a.jpg"), "raw/dev-1/Batch 54/a.jpg");
  assert.equal(objectKey("", "dev-1", "2025/Batch 54", "a.jpg"), "dev-1/2025/Batch 54/a.jpg");
  assert.equal(objectKey("a/b", "d", "f", "ü €.png"), "a/b/d/f/ü €.png");
  for (
    const [folderKey, name] of [["a//b", "x.jpg"], ["a/..", "x.jpg"], ["a", ""], ["a", "b/c.jpg"]]
  ) {
    assert.throws(() => objectKey("p", "d", folderKey, name), (e: unknown) => {
      assert.ok(e instanceof UploadError && e.kind === "folder");
      return true;
    });
  }
  assert.throws(
    () => objectKey("p", "d", "f", "é".repeat(600) + ".jpg"),
    /over S3's limit of 1024/,
  );
});

Deno.test("encodeKeyPath: every byte but unreserved ones percent-encoded, / kept", () => {
  const cases: [string, string][] = [
    ["a b/c.jpg", "a%20b/c.jpg"],
    ['it\'s "q".png', "it%27s%20%22q%22.png"],
    ["#?%+&=;,:@$", "%23%3F%25%2B%26%3D%3B%2C%3A%40%24"],
    ["(x)!*~-._", "%28x%29%21%2A~-._"],
    ["ü€😀", "%C3%BC%E2%82%AC%F0%9F%98%80"],
  ];
  for (const [key, want] of cases) assert.equal(encodeKeyPath(key), want, key);
});

Deno.test("objectUrl: Supabase's public-bucket URL as the authors' uploader wrote it, a path-style URL elsewhere, or the key", () => {
  const supabase = "https://abcdefghijklmnop.supabase.co/storage/v1/s3";
  for (const name of ["2025-06-02 16:42:55.jpg", "2025-06-02 16:42.pdf", "it's ü.png"]) {
    const key = `${UPSTREAM_DEVICE}/Batch54/${name}`;
    const bucket = name.endsWith(".pdf") ? "pdfs" : "images";
    assert.equal(
      objectUrl(supabase, bucket, key, "public"),
      publicUrl(bucket, UPSTREAM_DEVICE, "Batch54", name),
      name,
    );
    assert.equal(
      objectUrl(`${supabase}/`, bucket, key, "public").endsWith(percentEncode(name)),
      true,
    );
    assert.equal(objectUrl(supabase, bucket, key, "key"), key);
  }
  assert.equal(
    objectUrl("http://127.0.0.1:9000", "lab", "raw/d/B 1/a.jpg", "public"),
    "http://127.0.0.1:9000/lab/raw/d/B%201/a.jpg",
  );
  assert.equal(
    objectUrl("https://minio.lab/s3", "lab", "d/B/a.jpg", "public"),
    "https://minio.lab/s3/lab/d/B/a.jpg",
  );
  assert.equal(contentTypeOf("2025-06-02 16:42.PDF"), "application/pdf");
});
