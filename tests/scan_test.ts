/**
 * Tests of the folder walk (lib/scan.ts) against real trees in temp directories: the unit
 * rule, keys, hidden entries, symlinks, unreadable directories, names that are not UTF-8,
 * entries vanishing mid-scan, and a generated tree of 10,000 folders.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type FolderSnapshot,
  isImageName,
  isUploadUnit,
  scanFolders,
  scanFoldersInWorker,
  type ScanItem,
  type ScanOptions,
  type ScanProblem,
  snapshotFolder,
} from "../lib/scan.ts";
import { fingerprintFiles } from "../lib/fingerprint.ts";
import { DEFAULT_CONFIG, markerNames } from "../config.ts";
import { generateTree, T1, T2, T3, tempDir, writeTree } from "../support/tree.ts";

const MARKERS = markerNames(DEFAULT_CONFIG);

interface Scanned {
  items: ScanItem[];
  folders: FolderSnapshot[];
  keys: string[];
  problems: ScanProblem[];
}

/** Runs a whole scan; fails instead of hanging when it yields far more than it should. */
function scanAll(base: string, options: ScanOptions = {}, limit = 1_000): Scanned {
  const items: ScanItem[] = [];
  for (const item of scanFolders(base, options)) {
    items.push(item);
    assert.ok(items.length <= limit, `Scan of ${base} yielded more than ${limit} items`);
  }
  const folders = items.flatMap((i) => i.kind === "folder" ? [i.snapshot] : []);
  const problems = items.flatMap((i) => i.kind === "problem" ? [i.problem] : []);
  return { items, folders, keys: folders.map((f) => f.key), problems };
}

Deno.test("scanFolders: a folder is a unit when it directly holds stats.json or an image", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "StatsOnly/stats.json": { json: { result: "PASS" } },
    "ImageUpper/IMG_0001.JPG": { bytes: 10 },
    "ImageMixed/scan.Png": { bytes: 10 },
    "Bitmap/a.bmp": { bytes: 1 },
    "Gif/a.gif": { bytes: 1 },
    "Jpeg/a.jpeg": { bytes: 1 },
    "PdfOnly/2025-06-03 10:00.pdf": { bytes: 125 },
    "PdfAndNotes/report.pdf": { bytes: 125 },
    "PdfAndNotes/notes.txt": { text: "rejected" },
    "NotAnImage/photo.jpg.txt": { bytes: 3 },
    "NoExtension/jpg": { bytes: 3 },
    "StatsIsADir/stats.json/": {},
    "OtherJson/stats.json.bak": { text: "{}" },
    "Empty/": {},
    "Line2/stats.json": { json: {} },
    "Line2/Batch12/stats.json": { json: {} },
    "Line2/Batch12/2025-06-04 08:30:00.jpeg": { bytes: 20 },
    "Line2/Sub/Deeper/x.jpg": { bytes: 1 },
  });
  const scanned = scanAll(dir.path);
  assert.deepEqual(scanned.problems, []);
  // Depth-first, in name order; nested units are found along with their parents.
  assert.deepEqual(scanned.keys, [
    "Bitmap",
    "Gif",
    "ImageMixed",
    "ImageUpper",
    "Jpeg",
    "Line2",
    "Line2/Batch12",
    "Line2/Sub/Deeper",
    "StatsOnly",
  ]);
  const batch12 = scanned.folders.find((f) => f.key === "Line2/Batch12")!;
  assert.equal(batch12.name, "Batch12");
  assert.equal(batch12.path, join(dir.path, "Line2", "Batch12"));
  assert.deepEqual(batch12.files.map((f) => f.name), ["2025-06-04 08:30:00.jpeg", "stats.json"]);
  // A parent unit lists only its direct files.
  const line2 = scanned.folders.find((f) => f.key === "Line2")!;
  assert.deepEqual(line2.files.map((f) => f.name), ["stats.json"]);
});

Deno.test("scanFolders: custom image extensions and stats file name", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Tiff/a.TIF": { bytes: 1 },
    "Jpg/a.jpg": { bytes: 1 },
    "Results/results.json": { json: {} },
    "Stats/stats.json": { json: {} },
  });
  const scanned = scanAll(dir.path, { imageExtensions: [".tif"], statsFileName: "results.json" });
  assert.deepEqual(scanned.keys, ["Results", "Tiff"]);
});

Deno.test("scanFolders: keys are /-separated paths relative to the base", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "A/B/C/stats.json": { json: {} },
    "Line3/Batch00042/x.jpg": { bytes: 1 },
    "Batch14 (O'Brien rerun)/stats.json": { json: {} },
    "Müller $$ \\ tab\there/stats.json": { json: {} },
    "new\nline/a.png": { bytes: 1 },
  });
  const scanned = scanAll(dir.path);
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual([...scanned.keys].sort(), [
    "A/B/C",
    "Batch14 (O'Brien rerun)",
    "Line3/Batch00042",
    "Müller $$ \\ tab\there",
    "new\nline",
  ]);
  const abc = scanned.folders.find((f) => f.key === "A/B/C")!;
  assert.equal(abc.name, "C");
  assert.equal(abc.path, join(dir.path, "A", "B", "C"));
});

Deno.test("scanFolders: a base that is a unit is keyed by its name, its subfolders below it", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Batch7/stats.json": { json: { result: "PASS" } },
    "Batch7/a.jpg": { bytes: 5 },
    "Batch7/Retake/b.jpg": { bytes: 5 },
    "Batch7/Batch7/c.jpg": { bytes: 5 }, // same name as the base: must not share its key
  });
  const base = join(dir.path, "Batch7");
  for (const given of [base, base + "/", join(base, "Retake", "..")]) {
    const scanned = scanAll(given);
    assert.deepEqual(
      scanned.keys,
      ["Batch7", "Batch7/Batch7", "Batch7/Retake"],
      `base given as ${given}`,
    );
    assert.equal(scanned.folders[0].path, base);
    assert.equal(scanned.folders[0].name, "Batch7");
  }
});

Deno.test("scanFolders: a missing base throws, a file as base is a problem", () => {
  using dir = tempDir();
  writeTree(dir.path, { "file.txt": { text: "x" } });
  assert.throws(() => scanAll(join(dir.path, "nope")), Deno.errors.NotFound);
  const scanned = scanAll(join(dir.path, "file.txt"));
  assert.deepEqual(scanned.problems, [
    { path: join(dir.path, "file.txt"), reason: "Not a directory" },
  ]);
  assert.deepEqual(scanned.folders, []);
});

Deno.test("scanFolders: hidden files and directories are skipped", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    ".hidden/stats.json": { json: {} },
    ".git/objects/ab/stats.json": { json: {} },
    "Visible/.hidden/stats.json": { json: {} },
    "Visible/stats.json": { json: {} },
    "Visible/.DS_Store": { bytes: 6 },
    "Visible/._a.jpg": { bytes: 6 },
    "OnlyHiddenImage/.thumb.jpg": { bytes: 6 },
    "OnlyHiddenStats/.stats.json": { json: {} },
  });
  const scanned = scanAll(dir.path);
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.keys, ["Visible"]);
  assert.deepEqual(scanned.folders[0].files.map((f) => f.name), ["stats.json"]);
});

Deno.test("scanFolders: symlinks are not followed (loops, links to units, linked files)", () => {
  using dir = tempDir();
  using outside = tempDir();
  writeTree(outside.path, { "Elsewhere/stats.json": { json: {} }, "pic.jpg": { bytes: 9 } });
  writeTree(dir.path, {
    "Real/stats.json": { json: {} },
    "Real/a.jpg": { bytes: 3 },
    "Real/linked.jpg": { symlink: join(outside.path, "pic.jpg") },
    "LinkToReal": { symlink: "Real" },
    "LinkOutside": { symlink: join(outside.path, "Elsewhere") },
    "loop": { symlink: "." },
    "Deep/up": { symlink: ".." },
    "Deep/self": { symlink: "../Deep" },
    "OnlyLinkedImage/pic.jpg": { symlink: join(outside.path, "pic.jpg") },
    "OnlyLinkedStats/stats.json": { symlink: "../Real/stats.json" },
    "dangling": { symlink: "does-not-exist" },
  });
  const scanned = scanAll(dir.path, {}, 50);
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.keys, ["Real"]);
  // A linked file is not one of the folder's files either.
  assert.deepEqual(scanned.folders[0].files.map((f) => f.name), ["a.jpg", "stats.json"]);
});

Deno.test("scanFolders: a base given as a symlink to a directory is followed, nothing below", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "real/Batch1/stats.json": { json: {} },
    "real/Loop": { symlink: "." },
    "base": { symlink: "real" },
  });
  const scanned = scanAll(join(dir.path, "base"));
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.keys, ["Batch1"]);
  assert.equal(scanned.folders[0].path, join(dir.path, "base", "Batch1"));
});

/** Whether permission bits stop this process (they do not stop root). */
function permissionsApply(): boolean {
  return Deno.uid() !== 0;
}

/** Scans `base` in a child process run as `nobody`, returning its items. */
async function scanAsNobody(base: string, denoDir: string): Promise<ScanItem[]> {
  const id = await new Deno.Command("id", { args: ["-u", "nobody"] }).output();
  const gid = await new Deno.Command("id", { args: ["-g", "nobody"] }).output();
  assert.ok(id.success, "There is no user nobody");
  Deno.chownSync(
    denoDir,
    Number(new TextDecoder().decode(id.stdout)),
    Number(new TextDecoder().decode(gid.stdout)),
  );
  const code = `import { scanFolders } from ${
    JSON.stringify(import.meta.resolve("../lib/scan.ts"))
  };
for (const item of scanFolders(${JSON.stringify(base)})) console.log(JSON.stringify(item));`;
  const out = await new Deno.Command("runuser", {
    args: [
      "-u",
      "nobody",
      "--",
      "env",
      `DENO_DIR=${denoDir}`,
      `HOME=${denoDir}`,
      "NO_COLOR=1",
      Deno.execPath(),
      "eval",
      "--no-config",
      code,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `Scan as nobody failed: ${stderr}`);
  return new TextDecoder().decode(out.stdout).trim().split("\n").filter((l) => l !== "")
    .map((l) => JSON.parse(l) as ScanItem);
}

Deno.test("scanFolders: an unreadable directory is reported and the scan goes on", async () => {
  using dir = tempDir();
  using denoDir = tempDir("uploader_deno_dir_");
  Deno.chmodSync(dir.path, 0o755);
  writeTree(dir.path, {
    "A/stats.json": { json: {} },
    "Locked/stats.json": { json: {} },
    "Locked/Inner/stats.json": { json: {} },
    "Locked/": { mode: 0o000 },
    // Readable but not searchable: the listing works, the files cannot be stat'ed.
    "NoSearch/stats.json": { json: {} },
    "NoSearch/": { mode: 0o644 },
    "Z/x.jpg": { bytes: 1 },
  });
  let items: ScanItem[];
  if (permissionsApply()) {
    items = scanAll(dir.path).items;
  } else {
    // Root reads everything, so the scan runs as an unprivileged user instead.
    const runuser = await new Deno.Command("sh", { args: ["-c", "command -v runuser"] }).output();
    assert.ok(runuser.success, "Tests run as root and runuser is missing: cannot drop privileges");
    items = await scanAsNobody(dir.path, denoDir.path);
  }
  const summary = items.map((i) =>
    i.kind === "folder"
      ? `folder ${i.snapshot.key}`
      : `problem ${i.problem.path}: ${i.problem.reason}`
  );
  assert.deepEqual(summary, [
    "folder A",
    `problem ${join(dir.path, "Locked")}: Permission denied`,
    `problem ${join(dir.path, "NoSearch", "stats.json")}: Permission denied`,
    "folder Z",
  ]);
});

Deno.test("scanFolders: a name that is not valid UTF-8 is reported, the rest is scanned", async () => {
  using dir = tempDir();
  writeTree(dir.path, { "Bad/stats.json": { json: {} }, "Good/a.jpg": { bytes: 1 } });
  const made = await new Deno.Command("bash", {
    args: [
      "-c",
      "cd \"$1\" && touch Bad/$'\\xff'x.jpg && mkdir $'\\xfe'Dir && touch $'\\xfe'Dir/stats.json",
      "_",
      dir.path,
    ],
  }).output();
  assert.ok(made.success, new TextDecoder().decode(made.stderr));
  const scanned = scanAll(dir.path);
  // Names are checked when their parent is listed: the base's listing comes first.
  assert.deepEqual(scanned.problems, [
    { path: join(dir.path, "\uFFFDDir"), reason: "Name is not valid UTF-8" },
    { path: join(dir.path, "Bad", "\uFFFDx.jpg"), reason: "Name is not valid UTF-8" },
  ]);
  // The folder holding the bad name is still a unit, without the file it cannot name.
  assert.deepEqual(scanned.keys, ["Bad", "Good"]);
  assert.deepEqual(scanned.folders[0].files.map((f) => f.name), ["stats.json"]);
});

Deno.test("scanFolders: a folder removed mid-scan is reported as vanished, the scan goes on", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "A/stats.json": { json: {} },
    "B/stats.json": { json: {} },
    "B/Inner/x.jpg": { bytes: 1 },
    "C/stats.json": { json: {} },
  });
  const summary: string[] = [];
  for (const item of scanFolders(dir.path)) {
    if (item.kind === "folder") {
      summary.push(`folder ${item.snapshot.key}`);
      // B is already on the walk's stack: it was listed with the base.
      if (item.snapshot.key === "A") Deno.removeSync(join(dir.path, "B"), { recursive: true });
    } else {
      summary.push(`problem ${item.problem.path}: ${item.problem.reason}`);
    }
  }
  assert.deepEqual(summary, [
    "folder A",
    `problem ${join(dir.path, "B")}: Vanished during the scan`,
    "folder C",
  ]);
});

Deno.test("scanFolders: a file removed or replaced between listing and stat is left out", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "A/stats.json": { json: {}, mtime: T1 },
    "A/a.jpg": { bytes: 4, mtime: T2 },
    "A/b.jpg": { bytes: 4, mtime: T3 },
    "B/stats.json": { json: {} },
  });
  const realLstat = Deno.lstatSync;
  const gone = join(dir.path, "A", "a.jpg");
  const replaced = join(dir.path, "A", "b.jpg");
  // Step in between the scan's listing of A and its stat of each file.
  Deno.lstatSync = (path: string | URL) => {
    if (path === gone) Deno.removeSync(gone);
    if (path === replaced) {
      Deno.removeSync(replaced);
      Deno.mkdirSync(replaced);
    }
    return realLstat(path);
  };
  let scanned: Scanned;
  try {
    scanned = scanAll(dir.path);
  } finally {
    Deno.lstatSync = realLstat;
  }
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.keys, ["A", "B"]);
  const a = scanned.folders[0];
  assert.deepEqual(a.files.map((f) => f.name), ["stats.json"]);
  assert.equal(a.newestMtimeMs, T1);
  assert.equal(a.fingerprint, fingerprintFiles(a.files, MARKERS));
});

Deno.test("scanFolders: snapshots carry sizes and mtimes; markers are listed, not fingerprinted", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "B/stats.json": { text: "{}", mtime: T1 },
    "B/a.jpg": { bytes: 300, mtime: T2 },
    "B/success.json": { text: '{"ok":true}', mtime: T3 },
  });
  const [snap] = scanAll(dir.path, { markerNames: MARKERS }).folders;
  assert.deepEqual(snap.files, [
    { name: "a.jpg", size: 300, mtimeMs: T2 },
    { name: "stats.json", size: 2, mtimeMs: T1 },
    { name: "success.json", size: 11, mtimeMs: T3 },
  ]);
  assert.equal(snap.newestMtimeMs, T2, "the marker's newer mtime does not count");
  assert.equal(snap.fingerprint, fingerprintFiles(snap.files.slice(0, 2)));
  // Without the marker set the marker counts like any file.
  const [plain] = scanAll(dir.path).folders;
  assert.equal(plain.newestMtimeMs, T3);
  assert.notEqual(plain.fingerprint, snap.fingerprint);
});

Deno.test("scanFolders: an aborted signal stops the walk between folders", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "A/stats.json": { json: {} },
    "B/stats.json": { json: {} },
    "C/stats.json": { json: {} },
  });
  const controller = new AbortController();
  const keys: string[] = [];
  for (const item of scanFolders(dir.path, { signal: controller.signal })) {
    if (item.kind === "folder") keys.push(item.snapshot.key);
    controller.abort();
  }
  assert.deepEqual(keys, ["A"]);
});

Deno.test("snapshotFolder: one folder, no walk below it", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Batch1/stats.json": { text: "{}", mtime: T1 },
    "Batch1/.hidden.jpg": { bytes: 1 },
    "Batch1/Sub/x.jpg": { bytes: 1 },
    "Batch1/link.jpg": { symlink: "Sub/x.jpg" },
    "PdfOnly/a.pdf": { bytes: 3 },
    "file.txt": { text: "x" },
    "linked": { symlink: "Batch1" },
  });
  const item = snapshotFolder(join(dir.path, "Batch1"));
  assert.equal(item.kind, "folder");
  if (item.kind !== "folder") return;
  assert.equal(item.snapshot.key, "Batch1");
  assert.deepEqual(item.snapshot.files, [{ name: "stats.json", size: 2, mtimeMs: T1 }]);
  assert.equal(item.snapshot.newestMtimeMs, T1);

  const keyed = snapshotFolder(join(dir.path, "Batch1"), { key: "Line1/Batch1" });
  assert.equal(keyed.kind === "folder" && keyed.snapshot.key, "Line1/Batch1");
  // A named folder given as a symlink is read through it.
  const linked = snapshotFolder(join(dir.path, "linked"));
  assert.equal(linked.kind === "folder" && linked.snapshot.fingerprint, item.snapshot.fingerprint);
  // Not a unit, but still a snapshot: the caller decides.
  const pdf = snapshotFolder(join(dir.path, "PdfOnly"));
  assert.equal(pdf.kind, "folder");
  assert.equal(pdf.kind === "folder" && isUploadUnit(pdf.snapshot), false);
  assert.equal(isUploadUnit(item.snapshot), true);

  assert.deepEqual(snapshotFolder(join(dir.path, "missing")), {
    kind: "problem",
    problem: { path: join(dir.path, "missing"), reason: "Vanished during the scan" },
  });
  assert.deepEqual(snapshotFolder(join(dir.path, "file.txt")), {
    kind: "problem",
    problem: { path: join(dir.path, "file.txt"), reason: "Not a directory" },
  });
});

Deno.test("isImageName: extensions in any case, nothing else", () => {
  const extensions = DEFAULT_CONFIG.imageExtensions;
  const table: [string, boolean][] = [
    ["a.jpg", true],
    ["a.JPG", true],
    ["2025-06-02 16:42:55.jpeg", true],
    ["a.JpEg", true],
    ["a.png", true],
    ["a.PNG", true],
    ["a.gif", true],
    ["a.bmp", true],
    ["a.b.jpg", true],
    ["a.tiff", false],
    ["a.jpg.txt", false],
    ["a.pdf", false],
    ["jpg", false],
    [".jpg", false],
    ["a.", false],
    ["a", false],
  ];
  for (const [name, expected] of table) {
    assert.equal(isImageName(name, extensions), expected, name);
  }
});

Deno.test("scanFolders: a generated tree of 10,000 folders yields every unit exactly once", () => {
  using dir = tempDir();
  const tree = generateTree(dir.path, { folders: 10_000, nested: true, perLine: 700, keys: true });
  assert.equal(tree.units + tree.nonUnits, 10_000);
  assert.ok(tree.nonUnits > 0 && tree.units > 0);
  const started = performance.now();
  const seen = new Map<string, number>();
  let problems = 0;
  for (const item of scanFolders(dir.path, { markerNames: MARKERS })) {
    if (item.kind === "problem") problems++;
    else seen.set(item.snapshot.key, (seen.get(item.snapshot.key) ?? 0) + 1);
  }
  const elapsed = performance.now() - started;
  assert.equal(problems, 0);
  assert.equal(seen.size, tree.units);
  assert.ok([...seen.values()].every((n) => n === 1), "some unit was yielded twice");
  assert.deepEqual([...seen.keys()].sort(), [...tree.keys!].sort());
  // About 1 s on a laptop; the bound only catches pathological slowness.
  assert.ok(elapsed < 30_000, `Scan of 10,000 folders took ${Math.round(elapsed)} ms`);
});

Deno.test("scanFolders partitions and the worker walk: every unit once, whatever the split", async () => {
  using dir = tempDir();
  generateTree(dir.path, { folders: 600, nested: true, perLine: 50 });
  writeTree(dir.path, { "stats.json": { text: "{}" } }); // the base itself is a unit too
  const keysOf = (items: Iterable<ScanItem>) =>
    [...items].flatMap((i) => i.kind === "folder" ? [i.snapshot.key] : []).sort();
  const whole = keysOf(scanFolders(dir.path));
  for (const count of [2, 3]) {
    const parts = Array.from(
      { length: count },
      (_, index) => keysOf(scanFolders(dir.path, { partition: { index, count } })),
    );
    assert.deepEqual(parts.flat().sort(), whole, `${count} parts`);
    assert.ok(parts[0].includes(whole.find((k) => !k.includes("/"))!), "the base is in part 0");
  }
  for (const workers of [1, 2]) {
    const items: ScanItem[] = [];
    for await (const chunk of scanFoldersInWorker(dir.path, { workers, chunk: 7 })) {
      items.push(...chunk);
    }
    assert.deepEqual(keysOf(items), whole, `${workers} worker(s)`);
  }
});
