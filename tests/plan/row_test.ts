/**
 * Folder -> row (lib/plan/row.ts): what buildRow reads and what it puts in each column, the
 * content hash that decides remote rewrites, and every way a stats.json can be unusable
 * (each failing with a `folder` error that names the file and the reason). Real files in
 * a temp dir; no server.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  DEFAULT_CONFIG,
  markerNames,
  type StatusInput,
  type UploaderConfig,
} from "../../config.ts";
import { UploadError } from "../../lib/core/errors.ts";
import { buildRow, MAX_STATS_BYTES, readStats } from "../../lib/plan/row.ts";
import { rowStatementBytes } from "../../lib/sink/postgres/quote.ts";
import { type FolderSnapshot, snapshotFolder } from "../../lib/source/snapshot.ts";
import { setMtime, T1, T2, T3, tempDir, type TreeSpec, writeTree } from "../../support/tree.ts";

const NOW = new Date(Date.UTC(2025, 5, 2, 16, 42, 55, 0));

function snap(path: string, key = "Run"): FolderSnapshot {
  const item = snapshotFolder(path, { key, markerNames: markerNames(DEFAULT_CONFIG) });
  assert.equal(item.kind, "folder", JSON.stringify(item));
  return (item as { kind: "folder"; snapshot: FolderSnapshot }).snapshot;
}

function folderError(fn: () => unknown): UploadError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof UploadError, `expected an UploadError, got ${error}`);
    return error;
  }
  assert.fail("expected buildRow to throw");
}

function build(spec: TreeSpec, config: UploaderConfig = DEFAULT_CONFIG) {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, spec);
  return buildRow(snap(path), config, NOW);
}

Deno.test("buildRow fills every column from the snapshot and stats.json", () => {
  const stats = { result: "PASS", particle_count: 12, nested: { a: [1, 2.5, null] } };
  const built = build({
    "stats.json": { json: stats, mtime: T2 },
    "b.JPG": { bytes: 10, mtime: T1 },
    "a.png": { bytes: 20, mtime: T3 },
    "c.jpeg": { bytes: 30, mtime: T1 },
    "report.pdf": { bytes: 40, mtime: T1 },
    "notes.txt": { text: "x", mtime: T1 },
    "success.json": { text: "{}", mtime: T3 },
    "upload_failed.json": { text: "{}", mtime: T3 },
    ".hidden.jpg": { bytes: 1, mtime: T3 },
  });
  const row = built.row;
  assert.equal(row.folder_key, "Run");
  assert.equal(row.folder_name, "Run");
  assert.deepEqual(row.images, ["a.png", "b.JPG", "c.jpeg"]);
  assert.deepEqual(row.test_results, stats);
  assert.equal(row.test_status, "passed");
  assert.equal(row.test_date, new Date(T2).toISOString());
  assert.match(String(row.metadata.folder_hash), /^[0-9a-f]{32}$/);
  assert.match(String(row.metadata.content_hash), /^[0-9a-f]{32}$/);
  assert.equal(row.metadata.total_images, 3);
  assert.deepEqual(row.metadata.files_processed, [
    "a.png",
    "b.JPG",
    "c.jpeg",
    "notes.txt",
    "report.pdf",
    "stats.json",
  ]);
  assert.equal(row.metadata.upload_timestamp, NOW.toISOString());
  assert.match(String(row.metadata.source_path), /\/Run$/);
  // The JSON text means the row, and carries the stats file's own text unchanged.
  assert.deepEqual(JSON.parse(built.json), JSON.parse(JSON.stringify(row)));
  assert.ok(built.json.includes(`"test_results":${JSON.stringify(stats, null, 2)},`));
  assert.equal(built.bytes, rowStatementBytes(built.json));
});

Deno.test("buildRow: no stats.json -> pending, test_date from the newest image", () => {
  const { row } = build({
    "x.jpg": { bytes: 1, mtime: T1 },
    "y.gif": { bytes: 1, mtime: T3 },
    "z.bmp": { bytes: 1, mtime: T2 },
  });
  assert.equal(row.test_results, null);
  assert.equal(row.test_status, "pending");
  assert.equal(row.test_date, new Date(T3).toISOString());
  assert.deepEqual(row.images, ["x.jpg", "y.gif", "z.bmp"]);
});

Deno.test("buildRow: the default status rule over result values", () => {
  const cases: [unknown, string][] = [
    [{ result: "PASS" }, "passed"],
    [{ result: "FAIL" }, "passed"], // non-empty result: the original rule
    [{ result: "" }, "failed"],
    [{ result: null }, "failed"],
    [{ result: false }, "failed"],
    [{ result: [] }, "failed"],
    [{ result: {} }, "failed"],
    [{}, "failed"],
    [[1, 2], "failed"],
    ["text", "failed"],
    [42, "failed"],
    // A stats.json holding `null` reads as "no statistics": pending, like no file.
    [null, "pending"],
  ];
  for (const [stats, status] of cases) {
    const { row } = build({ "stats.json": { json: stats } });
    assert.equal(row.test_status, status, JSON.stringify(stats));
    assert.deepEqual(row.test_results, stats);
  }
});

Deno.test("buildRow uses the config's status rule and marker names", () => {
  const config: UploaderConfig = {
    ...DEFAULT_CONFIG,
    successMarker: "done.json",
    testStatus: ({ stats, images }: StatusInput) =>
      images.length > 1 && stats !== null ? "passed" : "failed",
  };
  const { row } = build({
    "stats.json": { json: {} },
    "a.jpg": { bytes: 1 },
    "b.jpg": { bytes: 1 },
    "done.json": { text: "{}" },
  }, config);
  assert.equal(row.test_status, "passed");
  assert.deepEqual(row.metadata.files_processed, ["a.jpg", "b.jpg", "stats.json"]);
});

Deno.test("content_hash ignores mtimes and markers but follows content, names and sizes", () => {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, {
    "stats.json": { json: { result: "PASS" }, mtime: T1 },
    "a.jpg": { bytes: 10, mtime: T1 },
  });
  const hash = () => String(buildRow(snap(path), DEFAULT_CONFIG, NOW).row.metadata.content_hash);
  const fingerprint = () => snap(path).fingerprint;
  const h0 = hash();
  const f0 = fingerprint();

  // touch: the fingerprint moves (the folder is re-read), the content hash does not.
  setMtime(join(path, "stats.json"), T3);
  setMtime(join(path, "a.jpg"), T2);
  assert.notEqual(fingerprint(), f0);
  assert.equal(hash(), h0);

  // A marker appears: neither moves.
  const f1 = fingerprint();
  Deno.writeTextFileSync(join(path, "success.json"), "{}");
  assert.equal(fingerprint(), f1);
  assert.equal(hash(), h0);

  // Same size, other content in stats.json: the hash moves.
  Deno.writeTextFileSync(join(path, "stats.json"), JSON.stringify({ result: "FAIL" }, null, 2));
  const h1 = hash();
  assert.notEqual(h1, h0);

  // An image's size changes.
  Deno.writeFileSync(join(path, "a.jpg"), new Uint8Array(11));
  const h2 = hash();
  assert.notEqual(h2, h1);

  // A file is added, then renamed.
  Deno.writeFileSync(join(path, "b.jpg"), new Uint8Array(1));
  const h3 = hash();
  assert.notEqual(h3, h2);
  Deno.renameSync(join(path, "b.jpg"), join(path, "c.jpg"));
  assert.notEqual(hash(), h3);
});

Deno.test("content_hash is md5 of the stats bytes, NUL, each file's name and size, then the options", () => {
  // Pinned from its definition: a hash that moved between versions would rewrite every row
  // the server holds on the next changed scan.
  using dir = tempDir();
  const path = join(dir.path, "Run");
  const stats = '{"result": "PASS"}';
  writeTree(path, {
    "stats.json": { text: stats, mtime: T1 },
    "a.jpg": { bytes: 10, mtime: T2 },
    "r.pdf": { bytes: 7, mtime: T2 },
  });
  const md5 = (text: string) => createHash("md5").update(text).digest("hex");
  const files = "a.jpg\x0010\nr.pdf\x007\nstats.json\x00" + stats.length + "\n";
  const plain = buildRow(snap(path), DEFAULT_CONFIG, NOW).row.metadata.content_hash;
  assert.equal(plain, md5(stats + "\0" + files));
  const config = { ...DEFAULT_CONFIG, reportExtensions: [".pdf"] };
  const all = buildRow(snap(path), config, NOW, {
    imageObjects: ["o1", "o2"],
    imageUrls: ["u1"],
    reportUrls: ["p1"],
    incomplete: true,
  }).row.metadata.content_hash;
  assert.equal(
    all,
    md5(
      stats + "\0" + files + "objects\0o1\0o2" + "\0image urls\0u1" + "\0report urls\0p1" +
        "\0incomplete",
    ),
  );
});

Deno.test("content_hash is the same for the same content in another folder", () => {
  using dir = tempDir();
  const spec: TreeSpec = {
    "stats.json": { json: { result: "PASS" }, mtime: T1 },
    "a.jpg": { bytes: 10, mtime: T1 },
  };
  writeTree(join(dir.path, "A"), spec);
  writeTree(join(dir.path, "B"), { ...spec, "a.jpg": { bytes: 10, mtime: T3 } });
  const a = buildRow(snap(join(dir.path, "A"), "A"), DEFAULT_CONFIG, NOW).row;
  const b = buildRow(snap(join(dir.path, "B"), "B"), DEFAULT_CONFIG, NOW).row;
  assert.equal(a.metadata.content_hash, b.metadata.content_hash);
  assert.notEqual(a.metadata.folder_hash, b.metadata.folder_hash);
});

/** Unusable stats.json files and what the error must say besides the file's path. */
const BAD: [string, TreeSpec[string], RegExp][] = [
  ["invalid JSON", { text: '{"result": "PASS",' }, /Cannot parse/],
  ["trailing garbage", { text: '{"result": "PASS"} x' }, /Cannot parse/],
  ["empty", { text: "" }, /empty/],
  ["only blanks", { text: "  \n\t\r\n" }, /empty/],
  ["only a BOM", { bytes: new Uint8Array([0xef, 0xbb, 0xbf]) }, /empty/],
  ["Latin-1 bytes", {
    bytes: new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xe9, 0x22, 0x7d]),
  }, /UTF-8/],
  ["an escaped NUL", { text: '{"a": "x\\u0000y"}' }, /NUL/],
  ["an escaped NUL in a key", { text: '{"k\\u0000": 1}' }, /NUL/],
  [
    "a raw NUL byte in a string",
    { bytes: new TextEncoder().encode('{"a": "x\0y"}') },
    /Cannot (parse|upload)/,
  ],
  ["a lone high surrogate", { text: '{"a": "\\ud800"}' }, /surrogate/],
  ["a lone low surrogate in a key", { text: '{"\\uDC00x": 1}' }, /surrogate/],
  ["a reversed pair", { text: '["\\udc00\\ud800"]' }, /surrogate/],
];

for (const [what, entry, reason] of BAD) {
  Deno.test(`buildRow refuses a stats.json with ${what}, naming the file`, () => {
    using dir = tempDir();
    const path = join(dir.path, "Bad folder's name");
    writeTree(path, { "stats.json": entry, "a.jpg": { bytes: 1 } });
    const error = folderError(() => buildRow(snap(path), DEFAULT_CONFIG, NOW));
    assert.equal(error.kind, "folder", error.message);
    assert.equal(error.subject, path);
    assert.ok(error.message.includes(join(path, "stats.json")), error.message);
    assert.match(error.message, reason);
  });
}

Deno.test("buildRow accepts a BOM, valid surrogate pairs and escaped text that is not NUL", () => {
  const bom = build({ "stats.json": { bytes: new TextEncoder().encode('\ufeff{"result":"ok"}') } });
  assert.deepEqual(bom.row.test_results, { result: "ok" });
  const emoji = build({
    "stats.json": { text: '{"note": "\\ud83e\\uddea \\u00e9", "z": "\\\\u0000"}' },
  });
  assert.deepEqual(emoji.row.test_results, { note: "🧪 é", z: "\\u0000" });
});

Deno.test("buildRow fails a folder whose stats.json vanished after the scan", () => {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, { "stats.json": { json: { result: "PASS" } }, "a.jpg": { bytes: 1 } });
  const snapshot = snap(path);
  Deno.removeSync(join(path, "stats.json"));
  const error = folderError(() => buildRow(snapshot, DEFAULT_CONFIG, NOW));
  assert.equal(error.kind, "folder");
  assert.equal(error.subject, path);
  assert.ok(error.message.includes(join(path, "stats.json")), error.message);
  assert.match(error.message, /vanished/);
});

Deno.test("buildRow fails a folder whose stats.json became a directory after the scan", () => {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, { "stats.json": { json: {} } });
  const snapshot = snap(path);
  Deno.removeSync(join(path, "stats.json"));
  Deno.mkdirSync(join(path, "stats.json"));
  const error = folderError(() => buildRow(snapshot, DEFAULT_CONFIG, NOW));
  assert.equal(error.kind, "folder");
  assert.ok(error.message.includes(join(path, "stats.json")), error.message);
});

Deno.test("readStats returns the parsed value and the raw bytes", () => {
  using dir = tempDir();
  writeTree(dir.path, { "stats.json": { text: '{"a": 1.50}' } });
  const read = readStats(dir.path, "stats.json");
  assert.deepEqual(read.value, { a: 1.5 });
  assert.equal(new TextDecoder().decode(read.bytes), '{"a": 1.50}');
});

Deno.test("readStats: a stats.json over the size limit fails its folder, naming the file", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const big = new Uint8Array(MAX_STATS_BYTES + 1).fill(0x20);
    big[0] = 0x5b; // "[" ... " " ... a JSON text too large to be a test's statistics
    Deno.writeFileSync(join(dir, "stats.json"), big);
    assert.throws(() => readStats(dir, "stats.json"), (error: unknown) => {
      assert.ok(error instanceof UploadError && error.kind === "folder");
      assert.match(error.message, /stats\.json.*16 MiB/);
      return true;
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("buildRow: reports listed in metadata; with their URLs, pdf_url is the first and the hash moves", () => {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, {
    "stats.json": { json: { result: "PASS" }, mtime: T1 },
    "a.jpg": { bytes: 3, mtime: T1 },
    "2025-06-02 16:50.PDF": { bytes: 5, mtime: T1 },
    "2025-06-02 16:44.pdf": { bytes: 4, mtime: T1 },
  });
  const plain = buildRow(snap(path), DEFAULT_CONFIG, NOW).row;
  assert.deepEqual(plain.metadata.reports, ["2025-06-02 16:44.pdf", "2025-06-02 16:50.PDF"]);
  assert.equal("pdf_url" in plain, false, "no store: pdf_url not sent");
  assert.equal(plain.metadata.report_urls, undefined);
  const urls = ["https://x/r1.pdf", "https://x/r2.pdf"];
  const stored =
    buildRow(snap(path), DEFAULT_CONFIG, NOW, { imageObjects: ["k/a.jpg"], reportUrls: urls })
      .row;
  assert.equal(stored.pdf_url, urls[0]);
  assert.deepEqual(stored.metadata.report_urls, urls);
  assert.deepEqual(stored.images, ["a.jpg"], "names by default");
  assert.notEqual(stored.metadata.content_hash, plain.metadata.content_hash);
  const asUrls = buildRow(snap(path), DEFAULT_CONFIG, NOW, {
    imageObjects: ["k/a.jpg"],
    imageUrls: ["https://x/a.jpg"],
    reportUrls: urls,
  }).row;
  assert.deepEqual(asUrls.images, ["https://x/a.jpg"]);
  assert.deepEqual(asUrls.image_objects, ["k/a.jpg"], "image_objects unchanged");
  assert.equal(asUrls.metadata.images_as, "urls");
  assert.notEqual(asUrls.metadata.content_hash, stored.metadata.content_hash);
  // A folder with no report gets pdf_url null once a store is configured.
  writeTree(join(dir.path, "NoReport"), { "b.jpg": { bytes: 1, mtime: T1 } });
  const none = buildRow(snap(join(dir.path, "NoReport")), DEFAULT_CONFIG, NOW, { reportUrls: [] });
  assert.equal(none.row.pdf_url, null);
  assert.equal(none.row.metadata.reports, undefined);
});

Deno.test("buildRow: test_date from the device's time stamps in the names, else the mtimes", () => {
  using dir = tempDir();
  const config: UploaderConfig = {
    ...DEFAULT_CONFIG,
    // The rule reads UTC here so the test holds in any time zone.
    fileNameTime: (name) => {
      const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2})(?::(\d{2}))?/.exec(name);
      return m ? Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] ?? 0)) : null;
    },
  };
  const at = (path: string) => buildRow(snap(path), config, NOW).row.test_date;
  writeTree(join(dir.path, "Images"), {
    "stats.json": { json: { result: "PASS" }, mtime: T3 },
    "2025-06-02 16:16:31.jpg": { bytes: 1, mtime: T3 },
    "2025-06-02 16:28:18.jpg": { bytes: 1, mtime: T1 },
    "2025-06-02 16:30.pdf": { bytes: 1, mtime: T1 },
  });
  assert.equal(at(join(dir.path, "Images")), "2025-06-02T16:28:18.000Z", "the newest image");
  writeTree(join(dir.path, "Reports"), {
    "2025-06-01 09:30.pdf": { bytes: 1, mtime: T3 },
    "2025-06-09 09:30.pdf": { bytes: 1, mtime: T3 },
  });
  assert.equal(at(join(dir.path, "Reports")), "2025-06-09T09:30:00.000Z", "the newest report");
  writeTree(join(dir.path, "NoStamps"), {
    "stats.json": { json: { result: "PASS" }, mtime: T2 },
    "photo.jpg": { bytes: 1, mtime: T3 },
  });
  assert.equal(at(join(dir.path, "NoStamps")), new Date(T2).toISOString(), "stats.json's mtime");
});

Deno.test("deviceFileNameTime: the device's YYYY-MM-DD HH:MM[:SS] names in local time, else null", () => {
  assert.equal(
    DEFAULT_CONFIG.fileNameTime("2025-06-02 16:42:55.jpg"),
    new Date(2025, 5, 2, 16, 42, 55).getTime(),
  );
  assert.equal(
    DEFAULT_CONFIG.fileNameTime("2025-06-02 16:42.pdf"),
    new Date(2025, 5, 2, 16, 42).getTime(),
  );
  assert.equal(
    DEFAULT_CONFIG.fileNameTime("2025-06-02_16-42-55_2.jpg"),
    new Date(2025, 5, 2, 16, 42, 55).getTime(),
  );
  for (
    const name of [
      "photo.jpg",
      "2025-13-02 16:42:55.jpg",
      "2025-02-30 10:00.pdf",
      "x2025-06-02 16:42.pdf",
      "2025-06-02 16:4.jpg",
    ]
  ) {
    assert.equal(DEFAULT_CONFIG.fileNameTime(name), null, name);
  }
});

Deno.test("buildRow: incomplete (--ready-timeout passed) is the status and what the rule gave", () => {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, { "stats.json": { json: { result: "PASS" }, mtime: T1 } });
  const complete = buildRow(snap(path), DEFAULT_CONFIG, NOW).row;
  const row = buildRow(snap(path), DEFAULT_CONFIG, NOW, { incomplete: true }).row;
  assert.equal(row.test_status, "incomplete");
  assert.equal(row.metadata.computed_test_status, "incomplete");
  assert.notEqual(row.metadata.content_hash, complete.metadata.content_hash);
});

Deno.test("buildRow: with a store, a folder without a report has the content hash it had before reports were stored", () => {
  using dir = tempDir();
  const path = join(dir.path, "Run");
  writeTree(path, { "a.jpg": { bytes: 3, mtime: T1 } });
  const before = buildRow(snap(path), DEFAULT_CONFIG, NOW, { imageObjects: ["k/a.jpg"] }).row;
  const now = buildRow(snap(path), DEFAULT_CONFIG, NOW, {
    imageObjects: ["k/a.jpg"],
    reportUrls: [],
  }).row;
  assert.equal(now.metadata.content_hash, before.metadata.content_hash);
  assert.equal(now.pdf_url, null);
});
