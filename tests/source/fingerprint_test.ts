/**
 * Tests of folder fingerprints (lib/source/fingerprint.ts): the pure function, and a table of
 * every way a real folder on disk can change, in the style of restic's `fileChanged`
 * tests: each case mutates a fresh folder and says whether the fingerprint must move.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { compareNames, type FileEntry, fingerprintFiles } from "../../lib/source/fingerprint.ts";
import { snapshotFolder } from "../../lib/source/snapshot.ts";
import { DEFAULT_CONFIG, markerNames } from "../../config.ts";
import { setMtime, T1, T2, T3, tempDir, type TreeSpec, writeTree } from "../../support/tree.ts";

const MARKERS = markerNames(DEFAULT_CONFIG);

const FILES: FileEntry[] = [
  { name: "stats.json", size: 298, mtimeMs: 1717346575000 },
  { name: "2025-06-02 16:42:55.jpg", size: 332, mtimeMs: 1717346575123 },
];

Deno.test("fingerprintFiles: a pinned value, so a silent change of the algorithm shows", () => {
  // md5("2\n" + name \0 size \0 mtime "\n" per file in name order), computed independently.
  assert.equal(fingerprintFiles(FILES), "165dee0896a0e0e78b85bdc81adfacfc");
  assert.equal(fingerprintFiles([]), "897316929176464ebc9ad085f31e7284"); // md5("0\n")
});

Deno.test("fingerprintFiles: stable across calls and input order; input not mutated", () => {
  const copy = structuredClone(FILES);
  const a = fingerprintFiles(FILES);
  assert.equal(fingerprintFiles(FILES), a);
  assert.equal(fingerprintFiles([...FILES].reverse()), a);
  assert.equal(fingerprintFiles(FILES, new Set()), a);
  assert.deepEqual(FILES, copy);
  assert.match(a, /^[0-9a-f]{32}$/);
});

Deno.test("fingerprintFiles: each field and the count matter, sub-millisecond parts do not", () => {
  const base = fingerprintFiles(FILES);
  const table: [string, FileEntry[], boolean][] = [
    ["same", structuredClone(FILES), false],
    ["mtime + 0.9 ms", FILES.map((f) => ({ ...f, mtimeMs: f.mtimeMs + 0.9 })), false],
    ["mtime + 1 ms", [{ ...FILES[0], mtimeMs: FILES[0].mtimeMs + 1 }, FILES[1]], true],
    ["size + 1", [{ ...FILES[0], size: 299 }, FILES[1]], true],
    ["renamed", [{ ...FILES[0], name: "stats.JSON" }, FILES[1]], true],
    ["one removed", [FILES[0]], true],
    ["duplicated entry", [...FILES, FILES[0]], true],
    ["fields swapped", [{ ...FILES[0], size: 1717346575000, mtimeMs: 298 }, FILES[1]], true],
    ["name/size boundary", [{ ...FILES[0], name: "stats.json2", size: 98 }, FILES[1]], true],
  ];
  for (const [label, files, changed] of table) {
    assert.equal(fingerprintFiles(files) !== base, changed, label);
  }
});

Deno.test("fingerprintFiles: excluded names are left out entirely", () => {
  const withMarker = [...FILES, { name: "success.json", size: 50, mtimeMs: 1 }];
  assert.equal(fingerprintFiles(withMarker, MARKERS), fingerprintFiles(FILES));
  assert.notEqual(fingerprintFiles(withMarker), fingerprintFiles(FILES));
});

Deno.test("compareNames: code-unit order, independent of locale", () => {
  const names = ["b", "B", "a", "ä", "Z", "10", "9", "a b"];
  const sorted = names.map((name) => ({ name })).sort(compareNames).map((e) => e.name);
  assert.deepEqual(sorted, ["10", "9", "B", "Z", "a", "a b", "b", "ä"]);
});

/** The folder every on-disk case starts from. */
const START: TreeSpec = {
  "F/stats.json": { text: '{"result":"PASS"}', mtime: T1 },
  "F/2025-06-02 16:42:55.jpg": { bytes: 332, mtime: T2 },
  "F/2025-06-02 16:43:10.jpg": { bytes: 332, mtime: T2 },
};

interface Case {
  name: string;
  /** Extra entries written before the first snapshot. */
  setup?: TreeSpec;
  /** The change made to folder `F` (its path) between the two snapshots. */
  change: (folder: string) => void;
  /** Whether the fingerprint must differ. */
  changed: boolean;
}

const jpg = "2025-06-02 16:42:55.jpg";

const CASES: Case[] = [
  { name: "nothing", change: () => {}, changed: false },
  {
    name: "files read (atime moves)",
    change: (f) => {
      Deno.readFileSync(join(f, "stats.json"));
      Deno.readFileSync(join(f, jpg));
    },
    changed: false,
  },
  {
    name: "touched to the same mtime",
    change: (f) => setMtime(join(f, "stats.json"), T1),
    changed: false,
  },
  {
    name: "file added",
    change: (f) => writeTree(f, { "2025-06-02 16:44:00.jpg": { bytes: 10, mtime: T1 } }),
    changed: true,
  },
  {
    name: "non-image file added",
    change: (f) => writeTree(f, { "2025-06-02 16:42.pdf": { bytes: 125, mtime: T1 } }),
    changed: true,
  },
  {
    name: "empty file added",
    change: (f) => writeTree(f, { "notes.txt": { mtime: T1 } }),
    changed: true,
  },
  { name: "file removed", change: (f) => Deno.removeSync(join(f, jpg)), changed: true },
  {
    name: "resized, same mtime",
    change: (f) => writeTree(f, { "stats.json": { text: '{"result":"PASS!"}', mtime: T1 } }),
    changed: true,
  },
  {
    name: "truncated to zero, same mtime",
    change: (f) => writeTree(f, { [jpg]: { bytes: 0, mtime: T2 } }),
    changed: true,
  },
  {
    name: "re-timed +1 ms",
    change: (f) => setMtime(join(f, "stats.json"), T1 + 1),
    changed: true,
  },
  {
    name: "re-timed -1 ms",
    change: (f) => setMtime(join(f, jpg), T2 - 1),
    changed: true,
  },
  {
    name: "re-timed by 2 s (FAT rounding)",
    change: (f) => setMtime(join(f, jpg), T2 + 2_000),
    changed: true,
  },
  {
    name: "re-timed by an hour (daylight saving shift)",
    change: (f) => setMtime(join(f, jpg), T2 + 3_600_000),
    changed: true,
  },
  {
    name: "renamed",
    change: (f) => Deno.renameSync(join(f, jpg), join(f, "2025-06-02 16:42:56.jpg")),
    changed: true,
  },
  {
    name: "renamed, case only",
    change: (f) => Deno.renameSync(join(f, jpg), join(f, "2025-06-02 16:42:55.JPG")),
    changed: true,
  },
  {
    name: "replaced by a directory of the same name",
    change: (f) => {
      Deno.removeSync(join(f, jpg));
      Deno.mkdirSync(join(f, jpg));
    },
    changed: true,
  },
  {
    // Metadata only, like restic and rclone: same size and mtime means unchanged.
    name: "same size, same mtime, new content (not detected by design)",
    change: (f) => {
      const path = join(f, jpg);
      Deno.writeFileSync(path, new Uint8Array(332).fill(1));
      setMtime(path, T2);
    },
    changed: false,
  },
  {
    name: "subfolder added (only direct files count)",
    change: (f) => writeTree(f, { "Retake/a.jpg": { bytes: 5, mtime: T3 } }),
    changed: false,
  },
  {
    name: "hidden file added",
    change: (f) => writeTree(f, { ".DS_Store": { bytes: 6, mtime: T3 } }),
    changed: false,
  },
  {
    name: "symlink added",
    change: (f) => Deno.symlinkSync(jpg, join(f, "link.jpg")),
    changed: false,
  },
  ...[...MARKERS].map((marker): Case => ({
    name: `${marker} appears`,
    change: (f) => writeTree(f, { [marker]: { text: '{"status":"ok"}', mtime: T3 } }),
    changed: false,
  })),
  ...[...MARKERS].map((marker): Case => ({
    name: `${marker} changes size and time`,
    setup: { [`F/${marker}`]: { text: "{}", mtime: T2 } },
    change: (f) => writeTree(f, { [marker]: { text: '{"status":"again"}', mtime: T3 } }),
    changed: false,
  })),
  ...[...MARKERS].map((marker): Case => ({
    name: `${marker} vanishes`,
    setup: { [`F/${marker}`]: { text: "{}", mtime: T2 } },
    change: (f) => Deno.removeSync(join(f, marker)),
    changed: false,
  })),
  {
    name: "marker replaced by the other marker",
    setup: { "F/failed.json": { text: "{}", mtime: T2 } },
    change: (f) => {
      Deno.removeSync(join(f, "failed.json"));
      writeTree(f, { "success.json": { text: "{}", mtime: T3 } });
    },
    changed: false,
  },
  {
    name: "a name like a marker in another case (Success.json) appears",
    change: (f) => writeTree(f, { "Success.json": { text: "{}", mtime: T3 } }),
    changed: true,
  },
];

Deno.test("fingerprint of a real folder: every way it can change", async (t) => {
  using dir = tempDir();
  for (const [i, c] of CASES.entries()) {
    await t.step(c.name, () => {
      const root = join(dir.path, String(i));
      writeTree(root, { ...START, ...c.setup });
      const folder = join(root, "F");
      const before = snapshotFolder(folder, { markerNames: MARKERS });
      assert.equal(before.kind, "folder");
      c.change(folder);
      const after = snapshotFolder(folder, { markerNames: MARKERS });
      assert.equal(after.kind, "folder");
      if (before.kind !== "folder" || after.kind !== "folder") return;
      assert.equal(
        after.snapshot.fingerprint !== before.snapshot.fingerprint,
        c.changed,
        `${c.name}: fingerprint ${c.changed ? "should" : "should not"} change`,
      );
    });
  }
});

Deno.test("fingerprint of a real folder: the same on every snapshot, and on a copy", () => {
  using dir = tempDir();
  writeTree(dir.path, { ...START, "G/": {} });
  const folder = join(dir.path, "F");
  const first = snapshotFolder(folder, { markerNames: MARKERS });
  const second = snapshotFolder(folder, { markerNames: MARKERS });
  assert.deepEqual(first, second);
  // A copy elsewhere with the same names, sizes and times has the same fingerprint.
  const copy = join(dir.path, "Copy");
  writeTree(
    dir.path,
    Object.fromEntries(
      Object.entries(START).map(([k, v]) => [k.replace(/^F\//, "Copy/"), v]),
    ),
  );
  const copied = snapshotFolder(copy, { markerNames: MARKERS });
  assert.equal(
    copied.kind === "folder" && copied.snapshot.fingerprint,
    first.kind === "folder" && first.snapshot.fingerprint,
  );
});
