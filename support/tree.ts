/**
 * Test trees on disk: {@linkcode writeTree} builds a small tree from a literal description
 * with explicit timestamps (restic's `TestCreateFiles`, rclone's fixed `t1..t3`), and
 * {@linkcode generateTree} writes many realistic test-run folders fast, for scan tests,
 * upload tests and the benchmark. Nothing here prints.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { defaultTestStatus } from "../config.ts";

/** A fixed time with a sub-second part: 2024-03-01T10:00:00.123Z (ms since the epoch). */
export const T1: number = Date.UTC(2024, 2, 1, 10, 0, 0, 123);
/** A fixed time after {@linkcode T1}: 2024-03-01T10:05:30.456Z. */
export const T2: number = Date.UTC(2024, 2, 1, 10, 5, 30, 456);
/** A fixed time after {@linkcode T2}: 2024-03-02T08:00:01.789Z. */
export const T3: number = Date.UTC(2024, 2, 2, 8, 0, 1, 789);

/** The default base mtime of {@linkcode generateTree}: 2023-01-02T03:04:05.678Z. */
export const GENERATED_MTIME: number = Date.UTC(2023, 0, 2, 3, 4, 5, 678);

/**
 * One entry of a {@linkcode TreeSpec}. Which fields are set decides what is written:
 *
 * - `text`: a file with this UTF-8 content.
 * - `json`: a file with `JSON.stringify(json, null, 2)` (a stats.json, say).
 * - `bytes`: a file of this many bytes (deterministic filler), or these exact bytes.
 * - `symlink`: a symbolic link with this target (written as is, relative or absolute).
 * - none of these: an empty file, or a directory when the key ends with `/`.
 *
 * `mtime` (ms since the epoch, sub-millisecond parts dropped) defaults to {@linkcode T1}
 * for files; directories keep the time their writing gave them unless `mtime` is set.
 * `mode` is applied after everything else is written, so `{ mode: 0o000 }` on a directory
 * still lets its children be created first. Symlinks take neither.
 */
export interface TreeEntry {
  text?: string;
  json?: unknown;
  bytes?: number | Uint8Array;
  symlink?: string;
  mtime?: number;
  mode?: number;
}

/**
 * A tree as a literal: relative `/`-separated paths to entries. Parent directories are
 * made as needed; a key ending with `/` is a directory.
 *
 * @example
 * ```ts
 * writeTree(root, {
 *   "Batch1/stats.json": { json: { result: "PASS" }, mtime: T1 },
 *   "Batch1/2025-06-02 16:42:55.jpg": { bytes: 10, mtime: T2 },
 *   "Empty/": {},
 *   "loop": { symlink: "." },
 * });
 * ```
 */
export type TreeSpec = Record<string, TreeEntry>;

const encoder = new TextEncoder();

/** Deterministic filler bytes, sliced for `bytes: n` entries. */
function filler(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + 7) & 0xff;
  return out;
}

/**
 * Writes `spec` under `root` (created when missing). File mtimes are set exactly; modes
 * and directory mtimes are applied last, deepest paths first, so writing a child does not
 * move its parent's time afterwards.
 *
 * @throws {Deno.errors.AlreadyExists} when a symlink's path exists.
 */
export function writeTree(root: string, spec: TreeSpec): void {
  Deno.mkdirSync(root, { recursive: true });
  const later: { path: string; entry: TreeEntry; depth: number }[] = [];
  for (const [key, entry] of Object.entries(spec)) {
    const isDir = key.endsWith("/");
    const rel = isDir ? key.slice(0, -1) : key;
    const path = join(root, ...rel.split("/"));
    const depth = rel.split("/").length;
    if (isDir) {
      Deno.mkdirSync(path, { recursive: true });
      if (entry.mtime !== undefined || entry.mode !== undefined) later.push({ path, entry, depth });
      continue;
    }
    Deno.mkdirSync(dirname(path), { recursive: true });
    if (entry.symlink !== undefined) {
      Deno.symlinkSync(entry.symlink, path);
      continue;
    }
    let data: Uint8Array;
    if (entry.text !== undefined) data = encoder.encode(entry.text);
    else if (entry.json !== undefined) data = encoder.encode(JSON.stringify(entry.json, null, 2));
    else if (typeof entry.bytes === "number") data = filler(entry.bytes);
    else data = entry.bytes ?? new Uint8Array();
    Deno.writeFileSync(path, data);
    const mtime = new Date(entry.mtime ?? T1);
    Deno.utimeSync(path, mtime, mtime);
    if (entry.mode !== undefined) later.push({ path, entry: { mode: entry.mode }, depth });
  }
  later.sort((a, b) => b.depth - a.depth);
  for (const { path, entry } of later) {
    if (entry.mtime !== undefined) {
      const mtime = new Date(entry.mtime);
      Deno.utimeSync(path, mtime, mtime);
    }
    if (entry.mode !== undefined) Deno.chmodSync(path, entry.mode);
  }
}

/** Sets a path's atime and mtime to `ms` (ms since the epoch). */
export function setMtime(path: string, ms: number): void {
  const time = new Date(ms);
  Deno.utimeSync(path, time, time);
}

/** A temporary directory removed (permissions restored first) when disposed. */
export interface TempDir extends Disposable {
  /** Absolute path of the directory. */
  readonly path: string;
}

/**
 * Makes a temporary directory for one test; `using dir = tempDir()` removes it at the end
 * of the scope, even when directories inside were made unreadable.
 */
export function tempDir(prefix = "uploader_test_"): TempDir {
  const path = Deno.makeTempDirSync({ prefix });
  return {
    path,
    [Symbol.dispose]() {
      removeTree(path);
    },
  };
}

/**
 * Removes a tree. When permissions stop that (tests not run as root), every directory in
 * it is made writable and searchable again and the removal retried. A missing tree is
 * fine.
 */
export function removeTree(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
    return;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    if (!(error instanceof Deno.errors.PermissionDenied)) throw error;
  }
  restoreModes(path);
  Deno.removeSync(path, { recursive: true });
}

function restoreModes(dir: string): void {
  Deno.chmodSync(dir, 0o755);
  for (const entry of Deno.readDirSync(dir)) {
    // A name that is not UTF-8 comes back lossy and cannot be addressed; tests make those
    // with ordinary modes.
    if (entry.isDirectory && !entry.name.includes("\uFFFD")) {
      restoreModes(join(dir, entry.name));
    }
  }
}

/** Options for {@linkcode generateTree}. */
export interface GenerateOptions {
  /** How many leaf folders to write, units and non-units together. Required. */
  folders: number;
  /** Seed of the pseudo-random choices: the same seed writes byte-identical trees. Default `1`. */
  seed?: number;
  /**
   * The layout. `true`: two levels deep, `Line<n>/Batch<i>` with `perLine` folders per line
   * (the `Line<n>` folders themselves are neither units nor counted). Default `false`, flat:
   * every `Batch<i>` directly under the root, in one wide directory (the users' `data/`).
   */
  nested?: boolean;
  /** Folders per `Line<n>` when `nested`. Default `1000`. */
  perLine?: number;
  /**
   * Base mtime (ms since the epoch). Folder `i`'s files get times from `mtime + i * 60 s`
   * on, with sub-second parts, so every folder is old enough that the settle time never
   * interferes. Default {@linkcode GENERATED_MTIME} (January 2023).
   */
  mtime?: number;
  /**
   * Every `nonUnitEvery`-th folder (`i % nonUnitEvery === nonUnitEvery - 1`) is not an
   * upload unit: it holds only a CSV export, only a `notes.txt`, or nothing, in turn (a
   * folder holding only a PDF report is a unit, config `reportOnlyUnits`). `0` for none.
   * Default `10`.
   */
  nonUnitEvery?: number;
  /** Every `pdfEvery`-th unit also holds a PDF (listed, not interpreted). `0` for none. Default `7`. */
  pdfEvery?: number;
  /** Return the keys of the units written, in writing order. Default `false`. */
  keys?: boolean;
  /** Name prefix of the leaf folders. Default `Batch`. */
  prefix?: string;
}

/** What {@linkcode generateTree} wrote. */
export interface GeneratedTree {
  /** Upload units written (folders holding an image or a stats.json). */
  units: number;
  /** Leaf folders written that are not units (parent `Line<n>` folders not counted). */
  nonUnits: number;
  /** Units holding a stats.json. */
  withStats: number;
  /** Images written, over all units. */
  images: number;
  /** PDFs written (in units). */
  pdfs: number;
  /** Units by the test status the default rule of config.ts gives them. */
  testStatus: { passed: number; failed: number; pending: number };
  /** Unit keys (`/`-separated, relative to the root), when `keys: true` was passed. */
  keys?: string[];
}

/** mulberry32: a small, fast, deterministic PRNG returning floats in [0, 1). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const IMAGE_EXTENSIONS = [".jpg", ".jpg", ".jpeg", ".png", ".JPG", ".PNG", ".bmp", ".gif"];
const RESULTS: { value?: unknown }[] = [
  { value: "PASS" },
  { value: "PASS" },
  { value: "PASS" },
  { value: "" },
  { value: null },
  {}, // no result field at all
];
const IMAGE_BYTES = filler(400);
const PDF_BYTES = encoder.encode(
  "%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
);
const NOTES_BYTES = encoder.encode("Operator notes: sample rejected before imaging.\n");

/** "2025-06-02 16:42:55", the devices' file-name style, in UTC. */
function stamp(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19).replace("T", " ");
}

/** Writes a file and sets its times; measured faster here than open + write + futimens. */
function writeAt(path: string, data: Uint8Array, ms: number): void {
  Deno.writeFileSync(path, data);
  const time = new Date(ms);
  Deno.utimeSync(path, time, time);
}

/** Where {@linkcode generateTree} puts folder `i`, and whether it is a unit. */
interface TreeShape {
  /** `Batch<i>`, zero-padded. */
  name(i: number): string;
  /** The `Line<n>` folder holding folder `i` when nested. */
  line(i: number): string | undefined;
  /** Whether folder `i` is not an upload unit. */
  isNonUnit(i: number): boolean;
}

function shapeOf(options: GenerateOptions): TreeShape {
  const count = options.folders;
  const perLine = Math.max(1, options.perLine ?? 1000);
  const nonUnitEvery = options.nonUnitEvery ?? 10;
  const prefix = options.prefix ?? "Batch";
  const width = Math.max(5, String(Math.max(0, count - 1)).length);
  return {
    name: (i) => prefix + String(i).padStart(width, "0"),
    line: (i) => options.nested ? `Line${Math.floor(i / perLine) + 1}` : undefined,
    isNonUnit: (i) => nonUnitEvery > 0 && i % nonUnitEvery === nonUnitEvery - 1,
  };
}

/**
 * The keys of the units {@linkcode generateTree} writes with these options, in writing
 * order, without writing anything (to reuse a tree written earlier).
 *
 * @example
 * ```ts
 * generatedKeys({ folders: 3 }); // ["Batch00000", "Batch00001", "Batch00002"]
 * generatedKeys({ folders: 11, nested: true, perLine: 5 }).at(-1); // "Line3/Batch00010"
 * ```
 */
export function generatedKeys(options: GenerateOptions): string[] {
  const shape = shapeOf(options);
  const keys: string[] = [];
  for (let i = 0; i < options.folders; i++) {
    if (shape.isNonUnit(i)) continue;
    const line = shape.line(i);
    keys.push(line === undefined ? shape.name(i) : `${line}/${shape.name(i)}`);
  }
  return keys;
}

/**
 * Writes `options.folders` realistic test-run folders under `root` (created when missing):
 * a stats.json shaped like `examples/data/*\/stats.json` whose `result` is "PASS", "",
 * null or missing, zero to three small images (names like `2025-06-02 16:42:55.jpg`,
 * extensions in mixed case), sometimes a PDF; and, every `nonUnitEvery`-th folder, a
 * folder that is not a unit. Content and names follow from the seed; mtimes are fixed and
 * old. Uses synchronous writes: about 100,000 folders in seconds on a local disk.
 *
 * @example
 * ```ts
 * const tree = generateTree(root, { folders: 10_000, nested: true, keys: true });
 * // tree.units === 9_000, tree.keys![0] === "Line1/Batch00000"
 * ```
 */
export function generateTree(root: string, options: GenerateOptions): GeneratedTree {
  const count = options.folders;
  const rand = random(options.seed ?? 1);
  const shape = shapeOf(options);
  const base = options.mtime ?? GENERATED_MTIME;
  const nonUnitEvery = options.nonUnitEvery ?? 10;
  const pdfEvery = options.pdfEvery ?? 7;
  const width = Math.max(5, String(Math.max(0, count - 1)).length);
  const out: GeneratedTree = {
    units: 0,
    nonUnits: 0,
    withStats: 0,
    images: 0,
    pdfs: 0,
    testStatus: { passed: 0, failed: 0, pending: 0 },
  };
  const keys: string[] | undefined = options.keys ? [] : undefined;
  Deno.mkdirSync(root, { recursive: true });
  let madeLine: string | undefined;
  for (let i = 0; i < count; i++) {
    const name = shape.name(i);
    const line = shape.line(i);
    if (line !== undefined && line !== madeLine) {
      madeLine = line;
      Deno.mkdirSync(join(root, line), { recursive: true });
    }
    const key = line === undefined ? name : `${line}/${name}`;
    const dir = line === undefined ? join(root, name) : join(root, line, name);
    Deno.mkdirSync(dir);
    // Sub-second parts differ from folder to folder.
    const t = base + i * 60_000 + ((i * 337) % 1000);

    if (shape.isNonUnit(i)) {
      const kind = Math.floor(i / nonUnitEvery) % 3;
      if (kind === 0) {
        writeAt(join(dir, `${stamp(t).slice(0, 16)}.csv`), NOTES_BYTES, t);
      } else if (kind === 1) {
        writeAt(join(dir, "notes.txt"), NOTES_BYTES, t);
      }
      out.nonUnits++;
      continue;
    }

    const imageCount = Math.floor(rand() * 4);
    const hasStats = imageCount === 0 || rand() < 0.9;
    for (let k = 0; k < imageCount; k++) {
      const ext = IMAGE_EXTENSIONS[Math.floor(rand() * IMAGE_EXTENSIONS.length)];
      const size = 60 + Math.floor(rand() * (IMAGE_BYTES.length - 60));
      writeAt(
        join(dir, stamp(t + k * 15_000) + ext),
        IMAGE_BYTES.subarray(0, size),
        t + k * 15_000,
      );
    }
    out.images += imageCount;
    if (pdfEvery > 0 && out.units % pdfEvery === pdfEvery - 1) {
      writeAt(join(dir, `${stamp(t).slice(0, 16)}.pdf`), PDF_BYTES, t + 1_000);
      out.pdfs++;
    }
    let stats: Record<string, unknown> | null = null;
    if (hasStats) {
      const particles = Math.floor(rand() * 1000);
      const result = RESULTS[Math.floor(rand() * RESULTS.length)];
      stats = {
        test_id: `T-${stamp(t).slice(0, 10).replaceAll("-", "")}-${String(i).padStart(width, "0")}`,
        operator: `lab-${1 + Math.floor(rand() * 5)}`,
        instrument: "IA-200",
        sample: { lot: `L-${String(i % 1000).padStart(3, "0")}`, type: "coating" },
        particle_count: particles,
        mean_intensity: Math.round(rand() * 2550) / 10,
        coverage_pct: Math.round(rand() * 10000) / 100,
        threshold: 128,
      };
      if ("value" in result) stats.result = result.value;
      stats.started = new Date(t).toISOString().slice(0, 19) + "Z";
      writeAt(join(dir, "stats.json"), encoder.encode(JSON.stringify(stats, null, 2)), t + 2_000);
      out.withStats++;
    }
    out.testStatus[defaultTestStatus({ stats, images: [] })]++;
    out.units++;
    keys?.push(key);
  }
  if (keys) out.keys = keys;
  return out;
}
