/**
 * Tests of the folder walk (lib/source/walk.ts) against real trees in temp directories: the unit
 * rule, keys, hidden entries, symlinks, unreadable directories, names that are not UTF-8,
 * entries vanishing mid-scan, wide directories read as a stream, the walk shared between
 * walker threads, the memory bound, and generated trees.
 *
 * Most trees are scanned twice: with the defaults (small directories are listed in one
 * call) and with every directory read as a stream (`streamDirBytes: 0`), and both scans
 * must give the same items.
 *
 * @module
 */

import assert from "node:assert/strict";
import { walkConfig } from "../../lib/engine/upload.ts";
import { join } from "node:path";
import {
  type FolderSnapshot,
  isImageName,
  isUploadUnit,
  type ScanItem,
  type ScanOptions,
  type ScanProblem,
  snapshotFolder,
} from "../../lib/source/snapshot.ts";
import {
  BATCH_END_ITEMS,
  scanFolderChunks,
  scanFolders,
  STREAM_DIR_BYTES,
} from "../../lib/source/walk.ts";
import { scanFoldersInWorker } from "../../lib/source/walkers.ts";
import { fingerprintFiles } from "../../lib/source/fingerprint.ts";
import { DEFAULT_CONFIG, markerNames } from "../../config.ts";
import { generateTree, T1, T2, T3, type TempDir, tempDir, writeTree } from "../../support/tree.ts";

const MARKERS = markerNames(DEFAULT_CONFIG);
/** Every directory read as a stream, the path wide directories take. */
const STREAMED: ScanOptions = { streamDirBytes: 0 };

interface Scanned {
  items: ScanItem[];
  folders: FolderSnapshot[];
  keys: string[];
  problems: ScanProblem[];
}

/** Runs a whole scan; fails instead of hanging when it yields far more than it should. */
async function scanAll(base: string, options: ScanOptions = {}, limit = 1_000): Promise<Scanned> {
  const items: ScanItem[] = [];
  for await (const item of scanFolders(base, options)) {
    items.push(item);
    assert.ok(items.length <= limit, `Scan of ${base} yielded more than ${limit} items`);
  }
  return summarise(items);
}

function summarise(items: ScanItem[]): Scanned {
  const folders = items.flatMap((i) => i.kind === "folder" ? [i.snapshot] : []);
  const problems = items.flatMap((i) => i.kind === "problem" ? [i.problem] : []);
  return { items, folders, keys: folders.map((f) => f.key), problems };
}

/** Items as sortable lines: the order of a streamed directory is the file system's. */
function canonical(items: readonly ScanItem[]): string[] {
  return items.map((i) => JSON.stringify(i)).sort();
}

/**
 * Scans with the defaults and with every directory streamed, checks that both give the
 * same items (in any order), and returns the default scan.
 */
async function scanBothWays(base: string, options: ScanOptions = {}, limit = 1_000) {
  const listed = await scanAll(base, options, limit);
  const streamed = await scanAll(base, { ...options, ...STREAMED }, limit);
  assert.deepEqual(canonical(streamed.items), canonical(listed.items), "streamed vs listed");
  return listed;
}

/** Unit keys and how many times each was yielded. */
function countKeys(items: Iterable<ScanItem>): Map<string, number> {
  const seen = new Map<string, number>();
  for (const item of items) {
    if (item.kind === "folder") seen.set(item.snapshot.key, (seen.get(item.snapshot.key) ?? 0) + 1);
  }
  return seen;
}

async function workerItems(base: string, options: Parameters<typeof scanFoldersInWorker>[1]) {
  const items: ScanItem[] = [];
  for await (const chunk of scanFoldersInWorker(base, options)) items.push(...chunk);
  return items;
}

/**
 * A temporary directory for a wide tree: in /dev/shm when there is one (tmpfs makes and
 * removes 100,000 folders in about a second; a loaded disk here took a minute), removed
 * with `rm -rf`.
 */
function wideTempDir(): TempDir {
  let parent: string | undefined;
  try {
    if (Deno.statSync("/dev/shm").isDirectory) parent = "/dev/shm";
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const path = Deno.makeTempDirSync({ dir: parent, prefix: "uploader_test_wide_" });
  return {
    path,
    [Symbol.dispose]() {
      const out = new Deno.Command("rm", { args: ["-rf", path], stderr: "piped" }).outputSync();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
    },
  };
}

/** Open file descriptors of this process. */
/**
 * How many of this process's open descriptors name something under `root`: other test
 * files run in the same process at the same time (`--parallel`), so only descriptors of
 * this test's own tree count.
 */
function openFdsUnder(root: string): number {
  let count = 0;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`).startsWith(root)) count++;
    } catch {
      // Closed between the listing and the look: not open any more.
    }
  }
  return count;
}

/**
 * The count of descriptors under `root` once it is back to `expected`, or after 2 s of
 * waiting: a listing's handle is released on Deno's blocking threads, a moment after its
 * iterator returns.
 */
async function settledFdsUnder(root: string, expected: number): Promise<number> {
  const until = Date.now() + 2_000;
  let now = openFdsUnder(root);
  while (now !== expected && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    now = openFdsUnder(root);
  }
  return now;
}

Deno.test("scanFolders: a folder is a unit when it directly holds stats.json or an image", async () => {
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
  const scanned = await scanBothWays(dir.path);
  assert.deepEqual(scanned.problems, []);
  // Small directories: depth-first, in name order; nested units are found with their parents.
  assert.deepEqual(scanned.keys, [
    "Bitmap",
    "Gif",
    "ImageMixed",
    "ImageUpper",
    "Jpeg",
    "Line2",
    "Line2/Batch12",
    "Line2/Sub/Deeper",
    // A stats.json that is a directory: a unit that fails, saying so (never a silent row).
    "StatsIsADir",
    "StatsOnly",
  ]);
  assert.equal(scanned.folders.find((f) => f.key === "StatsIsADir")!.statsNotFile, "a directory");
  const batch12 = scanned.folders.find((f) => f.key === "Line2/Batch12")!;
  assert.equal(batch12.name, "Batch12");
  assert.equal(batch12.path, join(dir.path, "Line2", "Batch12"));
  assert.deepEqual(batch12.files.map((f) => f.name), ["2025-06-04 08:30:00.jpeg", "stats.json"]);
  // A parent unit lists only its direct files.
  const line2 = scanned.folders.find((f) => f.key === "Line2")!;
  assert.deepEqual(line2.files.map((f) => f.name), ["stats.json"]);
});

Deno.test("scanFolders: custom image extensions and stats file name", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Tiff/a.TIF": { bytes: 1 },
    "Jpg/a.jpg": { bytes: 1 },
    "Results/results.json": { json: {} },
    "Stats/stats.json": { json: {} },
  });
  const scanned = await scanBothWays(dir.path, {
    imageExtensions: [".tif"],
    statsFileName: "results.json",
  });
  assert.deepEqual(scanned.keys, ["Results", "Tiff"]);
});

Deno.test("scanFolders: keys are /-separated paths relative to the base", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "A/B/C/stats.json": { json: {} },
    "Line3/Batch00042/x.jpg": { bytes: 1 },
    "Batch14 (O'Brien rerun)/stats.json": { json: {} },
    "Müller $$ \\ tab\there/stats.json": { json: {} },
    "new\nline/a.png": { bytes: 1 },
  });
  const scanned = await scanBothWays(dir.path);
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

Deno.test("scanFolders: a base that is a unit is keyed by its name, its subfolders below it", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Batch7/stats.json": { json: { result: "PASS" } },
    "Batch7/a.jpg": { bytes: 5 },
    "Batch7/Retake/b.jpg": { bytes: 5 },
    "Batch7/Batch7/c.jpg": { bytes: 5 }, // same name as the base: must not share its key
    "Images/Sub/x.jpg": { bytes: 5 },
    "Images/z.png": { bytes: 5 }, // an image alone makes the base a unit too
  });
  const base = join(dir.path, "Batch7");
  for (const given of [base, base + "/", join(base, "Retake", "..")]) {
    const scanned = await scanBothWays(given);
    assert.deepEqual(
      scanned.keys,
      ["Batch7", "Batch7/Batch7", "Batch7/Retake"],
      `base given as ${given}`,
    );
    assert.equal(scanned.folders[0].path, base);
    assert.equal(scanned.folders[0].name, "Batch7");
  }
  // Read as a stream, a base's subfolders are walked while its listing is read: whether it
  // is a unit must be known first, from its files only.
  const streamed = await scanAll(join(dir.path, "Images"), STREAMED);
  assert.deepEqual([...streamed.keys].sort(), ["Images", "Images/Sub"]);
  const images = streamed.folders.find((f) => f.key === "Images")!;
  assert.deepEqual(images.files.map((f) => f.name), ["z.png"]);
});

Deno.test("scanFolders: a missing base throws, a file as base is a problem", async () => {
  using dir = tempDir();
  writeTree(dir.path, { "file.txt": { text: "x" } });
  await assert.rejects(() => scanAll(join(dir.path, "nope")), Deno.errors.NotFound);
  const scanned = await scanBothWays(join(dir.path, "file.txt"));
  assert.deepEqual(scanned.problems, [
    { path: join(dir.path, "file.txt"), reason: "Not a directory" },
  ]);
  assert.deepEqual(scanned.folders, []);
});

Deno.test("scanFolders: hidden files and directories are skipped", async () => {
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
  const scanned = await scanBothWays(dir.path);
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.keys, ["Visible"]);
  assert.deepEqual(scanned.folders[0].files.map((f) => f.name), ["stats.json"]);
});

Deno.test("scanFolders: symlinks are not followed (loops, links to units, linked files)", async () => {
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
  const scanned = await scanBothWays(dir.path, {}, 50);
  assert.deepEqual(scanned.problems, []);
  // A stats.json that is a link is no stats file: its folder is a unit that fails, saying so.
  assert.deepEqual(scanned.keys, ["OnlyLinkedStats", "Real"]);
  assert.equal(scanned.folders[0].statsNotFile, "a symbolic link (links are not followed)");
  assert.deepEqual(scanned.folders[0].files, []);
  // A linked file is not one of the folder's files either.
  assert.deepEqual(scanned.folders[1].files.map((f) => f.name), ["a.jpg", "stats.json"]);
  assert.equal(scanned.folders[1].statsNotFile, undefined);
  // Links to folders and loops are said once each; links to files or to nothing are not.
  const skipped = scanned.items.flatMap((i) => i.kind === "skipped" ? [i] : []);
  const loop = "Symbolic link loop (to a folder above it): not followed";
  const toFolder = "Symbolic link to a folder: not followed, nothing is uploaded through it";
  assert.deepEqual(skipped.map((i) => [i.path.slice(dir.path.length + 1), i.reason]).sort(), [
    ["Deep/self", loop],
    ["Deep/up", loop],
    ["LinkOutside", toFolder],
    ["LinkToReal", toFolder],
    ["loop", loop],
  ]);
});

Deno.test("scanFolders: a stats.json that is a FIFO or a directory makes a unit that says so", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Fifo/a.jpg": { bytes: 3 },
    "Dir/a.jpg": { bytes: 3 },
    "Dir/stats.json/inside.txt": { text: "x" },
    "OnlyFifo/notes.txt": { text: "x" },
  });
  for (const folder of ["Fifo", "OnlyFifo"]) {
    const made = new Deno.Command("mkfifo", { args: [join(dir.path, folder, "stats.json")] })
      .outputSync();
    assert.ok(made.success);
  }
  const scanned = await scanBothWays(dir.path);
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.folders.map((f) => [f.key, f.statsNotFile]), [
    ["Dir", "a directory"],
    ["Fifo", "a FIFO"],
    ["OnlyFifo", "a FIFO"],
  ]);
  const one = snapshotFolder(join(dir.path, "Fifo"));
  assert.equal(one.kind === "folder" && one.snapshot.statsNotFile, "a FIFO");
  assert.equal(one.kind === "folder" && isUploadUnit(one.snapshot), true);
});

Deno.test("scanFolders: a base given as a symlink to a directory is followed, nothing below", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "real/Batch1/stats.json": { json: {} },
    "real/Loop": { symlink: "." },
    "base": { symlink: "real" },
  });
  const scanned = await scanBothWays(join(dir.path, "base"));
  assert.deepEqual(scanned.problems, []);
  assert.deepEqual(scanned.keys, ["Batch1"]);
  assert.equal(scanned.folders[0].path, join(dir.path, "base", "Batch1"));
});

/** Whether permission bits stop this process (they do not stop root). */
function permissionsApply(): boolean {
  return Deno.uid() !== 0;
}

/** Scans `base` in a child process run as `nobody`, returning its items. */
async function scanAsNobody(
  base: string,
  denoDir: string,
  options: ScanOptions,
): Promise<ScanItem[]> {
  const id = await new Deno.Command("id", { args: ["-u", "nobody"] }).output();
  const gid = await new Deno.Command("id", { args: ["-g", "nobody"] }).output();
  assert.ok(id.success, "There is no user nobody");
  Deno.chownSync(
    denoDir,
    Number(new TextDecoder().decode(id.stdout)),
    Number(new TextDecoder().decode(gid.stdout)),
  );
  const code = `import { scanFolders } from ${
    JSON.stringify(import.meta.resolve("../../lib/source/walk.ts"))
  };
for await (const item of scanFolders(${JSON.stringify(base)}, ${JSON.stringify(options)})) {
  console.log(JSON.stringify(item));
}`;
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
  const runuser = await new Deno.Command("sh", { args: ["-c", "command -v runuser"] }).output();
  const summaries: string[][] = [];
  for (const options of [{}, STREAMED]) {
    let items: ScanItem[];
    if (permissionsApply()) {
      items = (await scanAll(dir.path, options)).items;
    } else {
      // Root reads everything, so the scan runs as an unprivileged user instead.
      assert.ok(
        runuser.success,
        "Tests run as root and runuser is missing: cannot drop privileges",
      );
      items = await scanAsNobody(dir.path, denoDir.path, options);
    }
    summaries.push(
      items.map((i) =>
        i.kind === "folder"
          ? `folder ${i.snapshot.key}`
          : i.kind === "problem"
          ? `problem ${i.problem.path}: ${i.problem.reason}`
          : `skipped ${i.path}`
      ),
    );
  }
  const expected = [
    "folder A",
    `problem ${join(dir.path, "Locked")}: Permission denied`,
    `problem ${join(dir.path, "NoSearch", "stats.json")}: Permission denied`,
    "folder Z",
  ];
  assert.deepEqual(summaries[0], expected);
  assert.deepEqual([...summaries[1]].sort(), [...expected].sort(), "streamed");
});

/** Makes `Bad/<0xff>x.jpg` and `<0xfe>Dir/stats.json` under `root`: names that are not UTF-8. */
async function writeBadNames(root: string): Promise<void> {
  const made = await new Deno.Command("bash", {
    args: [
      "-c",
      "cd \"$1\" && touch Bad/$'\\xff'x.jpg && mkdir $'\\xfe'Dir && touch $'\\xfe'Dir/stats.json",
      "_",
      root,
    ],
  }).output();
  assert.ok(made.success, new TextDecoder().decode(made.stderr));
}

Deno.test("scanFolders: a name that is not valid UTF-8 is reported, its folder is still a unit", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Bad/stats.json": { json: {}, mtime: T1 },
    "Bad/b.png": { bytes: 7, mtime: T2 },
    "Good/a.jpg": { bytes: 1 },
  });
  await writeBadNames(dir.path);
  const scanned = await scanBothWays(dir.path);
  // Names are checked when their parent is listed: the base's listing comes first.
  assert.deepEqual(scanned.problems, [
    { path: join(dir.path, "\uFFFDDir"), reason: "Name is not valid UTF-8" },
    { path: join(dir.path, "Bad", "\uFFFDx.jpg"), reason: "Name is not valid UTF-8" },
  ]);
  // The folder holding the bad name is still a unit, with every file it can name.
  assert.deepEqual(scanned.keys, ["Bad", "Good"]);
  const bad = scanned.folders[0];
  assert.deepEqual(bad.files, [
    { name: "b.png", size: 7, mtimeMs: T2 },
    { name: "stats.json", size: 2, mtimeMs: T1 },
  ]);
  assert.equal(bad.fingerprint, fingerprintFiles(bad.files));
  // The same through the walkers, each name reported once.
  for (const workers of [1, 2, 3]) {
    const items = await workerItems(dir.path, { workers, ...STREAMED });
    assert.deepEqual(canonical(items), canonical(scanned.items), `${workers} worker(s)`);
  }
  // snapshotFolder leaves the name out too.
  const one = snapshotFolder(join(dir.path, "Bad"));
  assert.equal(one.kind === "folder" && one.snapshot.fingerprint, bad.fingerprint);
});

Deno.test("scanFolders: a folder removed mid-scan is reported as vanished, the scan goes on", async () => {
  for (const options of [{}, STREAMED]) {
    using dir = tempDir();
    writeTree(dir.path, {
      "A/stats.json": { json: {} },
      "B/stats.json": { json: {} },
      "B/Inner/x.jpg": { bytes: 1 },
      "C/stats.json": { json: {} },
    });
    const summary: string[] = [];
    for await (const item of scanFolders(dir.path, options)) {
      if (item.kind === "folder") {
        summary.push(`folder ${item.snapshot.key}`);
        // B is already known to the walk: it was listed with the base.
        if (summary.length === 1) Deno.removeSync(join(dir.path, "B"), { recursive: true });
      } else if (item.kind === "problem") {
        summary.push(`problem ${item.problem.path}: ${item.problem.reason}`);
      }
    }
    if (options === STREAMED) {
      // Listing order: B comes first (then nothing is missing) or after the removal.
      assert.ok(summary.length === 3 || summary.length === 4, summary.join("; "));
      if (summary[0] !== "folder B") {
        assert.ok(summary.includes(`problem ${join(dir.path, "B")}: Vanished during the scan`));
      }
    } else {
      assert.deepEqual(summary, [
        "folder A",
        `problem ${join(dir.path, "B")}: Vanished during the scan`,
        "folder C",
      ]);
    }
  }
});

Deno.test("scanFolders: a file removed or replaced between listing and stat is left out", async () => {
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
    scanned = await scanAll(dir.path);
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

Deno.test("scanFolders: snapshots carry sizes and mtimes; markers are listed, not fingerprinted", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "B/stats.json": { text: "{}", mtime: T1 },
    "B/a.jpg": { bytes: 300, mtime: T2 },
    "B/success.json": { text: '{"ok":true}', mtime: T3 },
  });
  const [snap] = (await scanBothWays(dir.path, { markerNames: MARKERS })).folders;
  assert.deepEqual(snap.files, [
    { name: "a.jpg", size: 300, mtimeMs: T2 },
    { name: "stats.json", size: 2, mtimeMs: T1 },
    { name: "success.json", size: 11, mtimeMs: T3 },
  ]);
  assert.equal(snap.newestMtimeMs, T2, "the marker's newer mtime does not count");
  assert.equal(snap.fingerprint, fingerprintFiles(snap.files.slice(0, 2)));
  // Without the marker set the marker counts like any file.
  const [plain] = (await scanAll(dir.path)).folders;
  assert.equal(plain.newestMtimeMs, T3);
  assert.notEqual(plain.fingerprint, snap.fingerprint);
});

Deno.test("scanFolders: an aborted signal stops the walk between folders", async () => {
  for (const options of [{}, STREAMED]) {
    using dir = tempDir();
    writeTree(dir.path, {
      "A/stats.json": { json: {} },
      "B/stats.json": { json: {} },
      "C/stats.json": { json: {} },
    });
    const controller = new AbortController();
    const keys: string[] = [];
    for await (const item of scanFolders(dir.path, { ...options, signal: controller.signal })) {
      if (item.kind === "folder") keys.push(item.snapshot.key);
      controller.abort();
    }
    assert.equal(keys.length, 1);
  }
});

Deno.test("scanFolders: stopping early closes the listings still open", async () => {
  using dir = tempDir();
  generateTree(dir.path, { folders: 300, nested: true, perLine: 30 });
  const root = Deno.realPathSync(dir.path);
  const before = openFdsUnder(root);
  let taken = 0;
  for await (const item of scanFolders(dir.path, STREAMED)) {
    if (item.kind === "folder" && ++taken === 5) {
      assert.ok(openFdsUnder(root) >= before + 2, "the base's and a line's listings are open");
      break;
    }
  }
  assert.equal(await settledFdsUnder(root, before), before);
  const controller = new AbortController();
  const chunks = scanFolderChunks(dir.path, { ...STREAMED, chunk: 3, signal: controller.signal });
  await chunks.next();
  controller.abort();
  assert.equal((await chunks.next()).done, true);
  assert.equal(await settledFdsUnder(root, before), before);
});

Deno.test("scanFoldersInWorker: full chunks, whatever the names per batch (a small base hands them out one by one)", async () => {
  using dir = tempDir();
  generateTree(dir.path, { folders: 300 }); // 270 units, in a base listed in one call
  assert.ok(Deno.statSync(dir.path).size < STREAM_DIR_BYTES);
  for (const workers of [1, 2]) {
    const sizes: number[] = [];
    for await (const chunk of scanFoldersInWorker(dir.path, { workers, chunk: 100 })) {
      sizes.push(chunk.length);
    }
    assert.equal(sizes.reduce((a, b) => a + b, 0), 270);
    // Only each walker's last chunk may be short; no walker sends a chunk per folder.
    const short = sizes.filter((n) => n < BATCH_END_ITEMS).length;
    assert.ok(short <= workers, `${workers} walker(s): chunks of ${sizes.join(", ")}`);
  }
});

Deno.test("scanFoldersInWorker: stopping early or aborting ends the walkers and closes the base's listing", async () => {
  using dir = tempDir();
  generateTree(dir.path, { folders: 3_000, keys: true });
  const root = Deno.realPathSync(dir.path);
  const before = openFdsUnder(root);
  for await (const _chunk of scanFoldersInWorker(dir.path, { ...STREAMED, chunk: 5 })) break;
  assert.equal(await settledFdsUnder(root, before), before);
  const controller = new AbortController();
  const chunks = scanFoldersInWorker(dir.path, {
    ...STREAMED,
    chunk: 5,
    signal: controller.signal,
  });
  await chunks.next();
  controller.abort();
  assert.equal((await chunks.next()).done, true);
  assert.equal(await settledFdsUnder(root, before), before);
});

Deno.test("scanFolders: with report extensions (config reportOnlyUnits) a report alone makes a unit, in the walk and its workers", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "118317/2025-06-01 09:30.pdf": { bytes: 10 },
    "118317/2025-06-02 09:30.PDF": { bytes: 10 },
    "Report/notes.txt": { text: "x" },
    "Report/report.pdf": { bytes: 3 },
    "NotesOnly/notes.txt": { text: "x" },
    "Batch1/stats.json": { json: {} },
  });
  const options = { reportExtensions: DEFAULT_CONFIG.reportExtensions };
  assert.deepEqual((await scanBothWays(dir.path, options)).keys, ["118317", "Batch1", "Report"]);
  assert.deepEqual((await scanBothWays(dir.path)).keys, ["Batch1"], "not without them");
  const inWorker = await workerItems(dir.path, options);
  assert.deepEqual([...countKeys(inWorker).keys()].sort(), ["118317", "Batch1", "Report"]);
  const report = snapshotFolder(join(dir.path, "118317"));
  assert.equal(report.kind === "folder" && isUploadUnit(report.snapshot, options), true);
  assert.equal(report.kind === "folder" && isUploadUnit(report.snapshot), false);
  // The engine's walk takes them from the config's switch.
  assert.deepEqual(walkConfig(DEFAULT_CONFIG).reportExtensions, [".pdf"]);
  assert.deepEqual(walkConfig({ ...DEFAULT_CONFIG, reportOnlyUnits: false }).reportExtensions, []);
});

Deno.test("walkConfig: one walker for the embedded database, the default for a server", () => {
  assert.equal(walkConfig(DEFAULT_CONFIG, { embedded: true }).walkers, 1);
  assert.equal(walkConfig(DEFAULT_CONFIG, { embedded: false }).walkers, undefined);
  assert.equal(walkConfig(DEFAULT_CONFIG).walkers, undefined);
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

Deno.test("scanFolders: a generated tree of 10,000 folders yields every unit exactly once", async () => {
  using dir = wideTempDir();
  const tree = generateTree(dir.path, { folders: 10_000, nested: true, perLine: 700, keys: true });
  assert.equal(tree.units + tree.nonUnits, 10_000);
  assert.ok(tree.nonUnits > 0 && tree.units > 0);
  const started = performance.now();
  const items: ScanItem[] = [];
  for await (const chunk of scanFolderChunks(dir.path, { markerNames: MARKERS })) {
    items.push(...chunk);
  }
  const elapsed = performance.now() - started;
  const seen = countKeys(items);
  assert.equal(items.length, seen.size, "only folders, no problems");
  assert.equal(seen.size, tree.units);
  assert.ok([...seen.values()].every((n) => n === 1), "some unit was yielded twice");
  assert.deepEqual([...seen.keys()].sort(), [...tree.keys!].sort());
  // About 1 s on a laptop; the bound only catches pathological slowness.
  assert.ok(elapsed < 30_000, `Scan of 10,000 folders took ${Math.round(elapsed)} ms`);
});

Deno.test("scanFolders: a flat tree (every folder in the base) yields every unit once, with its key", async () => {
  using dir = tempDir();
  const tree = generateTree(dir.path, { folders: 5_000, keys: true });
  assert.ok(
    Deno.statSync(dir.path).size >= STREAM_DIR_BYTES,
    "the base is wide enough to be read as a stream with the defaults",
  );
  const streamed = await scanAll(dir.path, { markerNames: MARKERS }, 10_000);
  const seen = countKeys(streamed.items);
  assert.deepEqual(streamed.problems, []);
  assert.ok([...seen.values()].every((n) => n === 1), "some unit was yielded twice");
  assert.deepEqual([...seen.keys()].sort(), [...tree.keys!].sort());
  for (const f of streamed.folders) assert.equal(f.path, join(dir.path, f.key));
  // The same snapshots as a scan listing the base in one call.
  const listed = await scanAll(
    dir.path,
    { markerNames: MARKERS, streamDirBytes: Infinity },
    10_000,
  );
  assert.deepEqual(canonical(streamed.items), canonical(listed.items));
});

Deno.test("scanFoldersInWorker: a directory of 20,000 subfolders is walked completely, exactly once, by two workers", async () => {
  using dir = wideTempDir();
  const expected: string[] = [];
  const empty = new Uint8Array();
  for (let i = 0; i < 20_000; i++) {
    const name = `Batch${i}`;
    Deno.mkdirSync(join(dir.path, name));
    if (i % 10 !== 0) continue; // an empty folder, not a unit
    Deno.writeFileSync(join(dir.path, name, i % 20 === 0 ? "stats.json" : "a.jpg"), empty);
    expected.push(name);
    if (i % 1000 === 0) {
      Deno.mkdirSync(join(dir.path, name, "Retake"));
      Deno.writeFileSync(join(dir.path, name, "Retake", "b.png"), empty);
      expected.push(`${name}/Retake`);
    }
  }
  writeTree(dir.path, { ".hidden/stats.json": {}, "link": { symlink: "Batch0" } });
  assert.ok(Deno.statSync(dir.path).size >= STREAM_DIR_BYTES, "the base is read as a stream");
  for (const workers of [2, 3]) {
    const all = await workerItems(dir.path, { workers, chunk: 100, window: 2 });
    // The link to Batch0 is said once, by the walker whose part it is in.
    assert.equal(all.filter((i) => i.kind === "skipped").length, 1, `${workers} workers`);
    const items = all.filter((i) => i.kind !== "skipped");
    const seen = countKeys(items);
    assert.equal(items.length, expected.length, `${workers} workers: only units, no problems`);
    assert.ok([...seen.values()].every((n) => n === 1), `${workers} workers: a unit twice`);
    assert.deepEqual([...seen.keys()].sort(), expected.sort(), `${workers} workers`);
  }
});

Deno.test("scanFoldersInWorker: the same items as one thread, whatever the number of walkers, the base a unit too", async () => {
  using dir = tempDir();
  generateTree(join(dir.path, "nested"), { folders: 600, nested: true, perLine: 50 });
  generateTree(join(dir.path, "flat"), { folders: 400 });
  for (const base of [join(dir.path, "nested"), join(dir.path, "flat")]) {
    for (const baseIsUnit of [false, true]) {
      // A subfolder named like the base: its key must not be taken for the base's own.
      const twin = `${base.slice(base.lastIndexOf("/") + 1)}/a.jpg`;
      if (baseIsUnit) writeTree(base, { "stats.json": { text: "{}" }, [twin]: { bytes: 1 } });
      for (const options of [{}, STREAMED]) {
        const whole = (await scanAll(base, options, 1_000)).items;
        const own = whole.some((i) => i.kind === "folder" && i.snapshot.path === base);
        assert.equal(own, baseIsUnit, `${base}: the base's own snapshot`);
        for (const workers of [1, 2, 3]) {
          const items = await workerItems(base, { ...options, workers, chunk: 7 });
          assert.ok([...countKeys(items).values()].every((n) => n === 1), "a unit twice");
          assert.deepEqual(canonical(items), canonical(whole), `${base}, ${workers} worker(s)`);
        }
      }
    }
  }
});

Deno.test("scanFolders: a wide folder that is itself a unit is snapshotted after its subfolders", async () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Wide/stats.json": { json: {}, mtime: T1 },
    "Wide/z.jpg": { bytes: 3, mtime: T3 },
    "Wide/notes.txt": { text: "x", mtime: T2 },
    "Wide/A/a.jpg": { bytes: 1 },
    "Wide/B/b.jpg": { bytes: 1 },
  });
  const scanned = await scanAll(dir.path, STREAMED);
  assert.deepEqual(scanned.problems, []);
  assert.equal(scanned.keys.at(-1), "Wide", "its listing ends after its subfolders");
  assert.deepEqual([...scanned.keys].sort(), ["Wide", "Wide/A", "Wide/B"]);
  const wide = scanned.folders.at(-1)!;
  assert.deepEqual(wide.files.map((f) => f.name), ["notes.txt", "stats.json", "z.jpg"]);
  assert.equal(wide.newestMtimeMs, T3);
});

Deno.test("scanFolders: memory does not grow with the width of one directory", async () => {
  // 100,000 folders in one directory: listed in one call, the names alone overflow a 24 MB
  // heap (the scan used to die with "Fatal JavaScript out of memory" here).
  using dir = wideTempDir();
  const made = await new Deno.Command("bash", {
    args: [
      "-c",
      'cd "$1" && seq -f "Batch%06g" 0 99999 | xargs mkdir && ' +
      "for i in 000000 050000 099999; do touch Batch$i/stats.json; done",
      "_",
      dir.path,
    ],
  }).output();
  assert.ok(made.success, new TextDecoder().decode(made.stderr));
  const code = `import { scanFolders } from ${
    JSON.stringify(import.meta.resolve("../../lib/source/walk.ts"))
  };
const keys = [];
for await (const item of scanFolders(${JSON.stringify(dir.path)})) {
  keys.push(item.kind === "folder" ? item.snapshot.key : "problem");
}
console.log(JSON.stringify(keys.sort()));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", "--v8-flags=--max-old-space-size=24", code],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `The scan failed with a 24 MB heap: ${stderr.slice(-2000)}`);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), [
    "Batch000000",
    "Batch050000",
    "Batch099999",
  ]);
});
