/**
 * The folder walk: a streaming, depth-first scan of a base path that yields one snapshot
 * per upload unit (a folder that directly holds an image or the stats file) and one
 * problem per folder it cannot read.
 *
 * Memory grows with the depth of the tree, never with its size or with the width of one
 * directory: a small directory is listed in one synchronous call (the fast path), a wide
 * one (its `st_size` at least {@linkcode ScanOptions.streamDirBytes}) is read as a stream
 * and its subfolders are walked as their entries arrive, so at most one listing per level
 * is open and no list of a wide directory's names is ever held.
 *
 * @module
 */

import { basename, dirname, resolve } from "node:path";
import {
  childPath,
  describeEntry,
  describeFsError,
  isImageName,
  type ScanItem,
  type ScanOptions,
  snapshotOf,
  unitExtensions,
} from "./snapshot.ts";

/** Options for {@linkcode scanFolderChunks}. */
export interface ChunkScanOptions extends ScanOptions {
  /** Items per chunk (the last one may be shorter). Default 256. */
  chunk?: number;
}

/** The default of {@linkcode ScanOptions.streamDirBytes}: 32 KiB. */
export const STREAM_DIR_BYTES = 32 * 1024;

/**
 * The part (0 .. `count` - 1) a subfolder of the base belongs to when `count` walkers
 * share the tree: a hash of its name (FNV-1a, then murmur3's finaliser), so each walker
 * decides alone, as the names arrive, without listing or sorting them first.
 *
 * @example
 * ```ts
 * partitionOf("Batch54", 1); // 0
 * partitionOf("Batch54", 2) === partitionOf("Batch54", 2); // always the same part
 * ```
 */
export function partitionOf(name: string, count: number): number {
  if (count <= 1) return 0;
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) % count;
}

/** A directory being walked whose subfolder names were all read in one call. */
interface ListFrame {
  kind: "list";
  dir: string;
  /** Key prefix of its subfolders ("" below a base that is not a unit). */
  prefix: string;
  /** Its subfolders to visit (sorted), and the next one. */
  names: string[];
  next: number;
}

/** A wide directory being walked while its listing is read. */
interface StreamFrame {
  kind: "stream";
  dir: string;
  /** Its own key ("" for the base). */
  key: string;
  prefix: string;
  entries: AsyncIterator<Deno.DirEntry>;
  isRoot: boolean;
  /** Whether this walker reports the directory itself (its snapshot, its bad names). */
  owns: boolean;
  /** Whether an image or the stats file has been seen in it so far. */
  isUnit: boolean;
}

type Frame = ListFrame | StreamFrame;

/** The resolved options and state of one walk. */
class Walk {
  readonly root: string;
  readonly rootName: string;
  readonly extensions: readonly string[];
  readonly statsName: string;
  readonly markers: ReadonlySet<string>;
  readonly part: { index: number; count: number } | undefined;
  readonly streamBytes: number;
  readonly stack: Frame[] = [];
  /** Items found and not yet handed out. */
  out: ScanItem[] = [];

  constructor(root: string, options: ScanOptions) {
    this.root = root;
    this.rootName = basename(root);
    this.extensions = unitExtensions(options);
    this.statsName = options.statsFileName ?? "stats.json";
    this.markers = options.markerNames ?? new Set<string>();
    const part = options.partition;
    this.part = part && part.count > 1 ? part : undefined;
    this.streamBytes = options.streamDirBytes ?? STREAM_DIR_BYTES;
  }

  problem(path: string, reason: string): void {
    this.out.push({ kind: "problem", problem: { path, reason } });
  }

  /** Reports a link to a folder or a link loop below the base (links are never followed). */
  link(dir: string, name: string): void {
    const path = this.child(dir, name);
    const reason = describeLink(path);
    if (reason !== null) this.out.push({ kind: "skipped", path, reason });
  }

  /** Whether a file name makes its folder a unit. */
  isUnitFile(name: string): boolean {
    return name === this.statsName || isImageName(name, this.extensions);
  }

  /** Whether this walker walks the base's subfolder `name`. */
  ownsChild(name: string): boolean {
    return this.part === undefined || partitionOf(name, this.part.count) === this.part.index;
  }

  child(dir: string, name: string): string {
    return childPath(dir, name);
  }

  /** Whether a directory of this size is read as a stream. */
  streams(size: number): boolean {
    return size === 0 || size >= this.streamBytes;
  }

  /** Starts the walk at the base (stat'ed by the caller: it may be a symlink). */
  async start(info: Deno.FileInfo): Promise<void> {
    const owns = this.part === undefined || this.part.index === 0;
    if (!this.streams(info.size)) {
      this.listDir(this.root, "", true, owns);
      return;
    }
    // Keys below a base that is a unit start with its name, so that must be known before
    // the first subfolder is walked: a first pass over the listing looks for a unit file.
    const isUnit = await this.hasUnitFile(this.root);
    this.openStream(this.root, "", true, owns, isUnit);
  }

  /** Walks into a subfolder found in a listing. */
  visit(dir: string, key: string): void {
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(dir);
    } catch (error) {
      this.problem(dir, describeFsError(error));
      return;
    }
    // Replaced by a link since the listing: links below the base are never followed.
    if (info.isSymlink) return;
    if (!info.isDirectory) {
      this.problem(dir, "Not a directory");
      return;
    }
    if (this.streams(info.size)) this.openStream(dir, key, false, true, false);
    else this.listDir(dir, key, false, true);
  }

  /** The fast path: one synchronous listing, then the snapshot, then the subfolders. */
  listDir(dir: string, key: string, isRoot: boolean, owns: boolean): void {
    const subdirs: string[] = [];
    const fileNames: string[] = [];
    let isUnit = false;
    let badNames: string[] | undefined;
    let links: string[] | undefined;
    let statsEntry: Deno.DirEntry | undefined;
    try {
      for (const entry of Deno.readDirSync(dir)) {
        const name = entry.name;
        if (name.charCodeAt(0) === 46 /* . */) continue;
        if (name === this.statsName && !entry.isFile) statsEntry = entry;
        if (entry.isSymlink) {
          if (name !== this.statsName && (!isRoot || this.ownsChild(name))) {
            (links ??= []).push(name);
          }
        } else if (name.includes("\uFFFD")) {
          (badNames ??= []).push(name);
        } else if (entry.isDirectory) {
          if (!isRoot || this.ownsChild(name)) subdirs.push(name);
        } else if (entry.isFile) {
          fileNames.push(name);
          if (!isUnit && this.isUnitFile(name)) isUnit = true;
        }
      }
    } catch (error) {
      this.problem(dir, describeFsError(error));
      return;
    }
    for (const name of (owns && badNames) || []) this.badName(dir, name);
    for (const name of links ?? []) this.link(dir, name);
    const statsNotFile = statsEntry && describeEntry(this.child(dir, this.statsName), statsEntry);
    if ((isUnit || statsNotFile) && owns) this.snapshot(dir, key, fileNames, statsNotFile);
    if (subdirs.length > 0) {
      subdirs.sort();
      this.stack.push({
        kind: "list",
        dir,
        prefix: this.prefixBelow(key, isRoot, isUnit),
        names: subdirs,
        next: 0,
      });
    }
  }

  /** The key prefix of a directory's subfolders. */
  prefixBelow(key: string, isRoot: boolean, isUnit: boolean): string {
    // Below a base that is itself a unit, keys start with the base's name, as they would
    // from its parent: the base's key and a subfolder of the same name cannot collide.
    return isRoot && isUnit ? this.rootName : key;
  }

  openStream(dir: string, key: string, isRoot: boolean, owns: boolean, isUnit: boolean): void {
    this.stack.push({
      kind: "stream",
      dir,
      key,
      prefix: this.prefixBelow(key, isRoot, isUnit),
      entries: Deno.readDir(dir)[Symbol.asyncIterator](),
      isRoot,
      owns,
      isUnit,
    });
  }

  /** Ends a wide directory whose listing failed part way: reports it, closes it. */
  async streamFailed(frame: StreamFrame, error: unknown): Promise<null> {
    this.stack.pop();
    this.problem(frame.dir, describeFsError(error));
    await closeListing(frame);
    return null;
  }

  /** Walks into a wide directory's entry, or notes what it is. */
  takeEntry(frame: StreamFrame, entry: Deno.DirEntry): void {
    const name = entry.name;
    if (name.charCodeAt(0) === 46 /* . */) return;
    // A stats file that is no regular file makes the folder a unit that fails, saying why.
    if (name === this.statsName && !entry.isFile) frame.isUnit = true;
    if (entry.isSymlink) {
      if (name !== this.statsName && (!frame.isRoot || this.ownsChild(name))) {
        this.link(frame.dir, name);
      }
      return;
    }
    if (name.includes("\uFFFD")) {
      if (frame.owns) this.badName(frame.dir, name);
    } else if (entry.isDirectory) {
      if (frame.isRoot && !this.ownsChild(name)) return;
      const key = frame.prefix === "" ? name : `${frame.prefix}/${name}`;
      this.visit(this.child(frame.dir, name), key);
    } else if (entry.isFile && !frame.isUnit && this.isUnitFile(name)) {
      frame.isUnit = true;
    }
  }

  badName(dir: string, name: string): void {
    // The name came back with U+FFFD in place of its bad bytes: it cannot be addressed.
    this.problem(this.child(dir, name), "Name is not valid UTF-8");
  }

  /** Whether a directory directly holds an image or the stats file (stops at the first). */
  async hasUnitFile(dir: string): Promise<boolean> {
    try {
      for await (const entry of Deno.readDir(dir)) {
        const name = entry.name;
        if (name.charCodeAt(0) === 46 || !entry.isFile || name.includes("\uFFFD")) continue;
        if (this.isUnitFile(name)) return true;
      }
    } catch {
      // The walk's own listing of `dir`, next, meets the same error and reports it.
      return false;
    }
    return false;
  }

  /**
   * The snapshot of a wide unit: its file names were not kept while its subfolders were
   * walked, so they are read again (one more pass over the listing, for this rare case).
   */
  async snapshotWide(dir: string, key: string): Promise<void> {
    const fileNames: string[] = [];
    let isUnit = false;
    let statsNotFile: string | undefined;
    try {
      for await (const entry of Deno.readDir(dir)) {
        const name = entry.name;
        if (name === this.statsName && !entry.isFile) {
          statsNotFile = describeEntry(this.child(dir, name), entry);
        }
        if (name.charCodeAt(0) === 46 || !entry.isFile || name.includes("\uFFFD")) continue;
        fileNames.push(name);
        if (!isUnit && this.isUnitFile(name)) isUnit = true;
      }
    } catch (error) {
      this.problem(dir, describeFsError(error));
      return;
    }
    if (isUnit || statsNotFile) this.snapshot(dir, key, fileNames, statsNotFile);
  }

  /** Stats a unit's files and adds its snapshot (or the problem that stopped it). */
  snapshot(dir: string, key: string, fileNames: readonly string[], statsNotFile?: string): void {
    this.out.push(snapshotOf(dir, fileNames, {
      key: key === "" ? this.rootName : key,
      markers: this.markers,
      statsNotFile,
    }));
  }
}

/**
 * Why a symbolic link below the base is worth a word: it leads to a folder (links are not
 * followed, so what is there is not uploaded through it), or round in a loop. Null for a
 * link to a file or to nothing.
 */
function describeLink(path: string): string | null {
  try {
    if (!Deno.statSync(path).isDirectory) return null;
    const target = Deno.realPathSync(path);
    const here = Deno.realPathSync(dirname(path));
    return here === target || here.startsWith(`${target}/`)
      ? "Symbolic link loop (to a folder above it): not followed"
      : "Symbolic link to a folder: not followed, nothing is uploaded through it";
  } catch (error) {
    return /loop|too many levels|os error 40\b/i.test(String(error))
      ? "Symbolic link loop: not followed"
      : null; // a link to nothing, or gone since the listing
  }
}

/** Closes a wide directory's listing (after an error or an early stop). */
async function closeListing(frame: StreamFrame): Promise<void> {
  try {
    await frame.entries.return?.();
  } catch {
    // Closing a listing that already failed can fail again; the first error is reported.
  }
}

/**
 * Walks `base` depth-first and yields its items in chunks: a snapshot for every upload
 * unit and a problem for every folder that cannot be read (see {@linkcode scanFolders}).
 * The walk runs between chunks only as far as the caller takes them.
 *
 * @throws {Deno.errors.NotFound} when `base` itself does not exist (other errors about
 * `base` are yielded as a problem).
 */
export async function* scanFolderChunks(
  base: string,
  options: ChunkScanOptions = {},
): AsyncGenerator<ScanItem[]> {
  const root = resolve(base);
  const chunk = Math.max(1, options.chunk ?? 256);
  // The base is the one path followed when it is a symlink (as `find -H` does): the user
  // named it. Links below it are never followed.
  const rootInfo = Deno.statSync(root);
  if (!rootInfo.isDirectory) {
    yield [{ kind: "problem", problem: { path: root, reason: "Not a directory" } }];
    return;
  }
  const walk = new Walk(root, options);
  try {
    await walk.start(rootInfo);
    while (walk.stack.length > 0 && !options.signal?.aborted) {
      if (walk.out.length >= chunk) {
        yield walk.out;
        walk.out = [];
      }
      const top = walk.stack[walk.stack.length - 1];
      if (top.kind === "stream") {
        // One await per entry of a wide directory; everything else runs synchronously.
        const next = await top.entries.next().catch((error) => walk.streamFailed(top, error));
        if (next === null) continue;
        if (!next.done) {
          walk.takeEntry(top, next.value);
        } else {
          walk.stack.pop();
          if (top.isUnit && top.owns) await walk.snapshotWide(top.dir, top.key);
        }
      } else if (top.next < top.names.length) {
        const name = top.names[top.next++];
        walk.visit(walk.child(top.dir, name), top.prefix === "" ? name : `${top.prefix}/${name}`);
      } else {
        walk.stack.pop();
      }
    }
    if (walk.out.length > 0 && !options.signal?.aborted) yield walk.out;
  } finally {
    // Stopped early (abort, or the caller left): close the listings still open.
    for (const frame of walk.stack) if (frame.kind === "stream") await closeListing(frame);
  }
}

/**
 * Walks `base` depth-first and yields a snapshot for every upload unit and a problem for
 * every folder that cannot be read. Hidden entries (a name starting with `.`) are skipped;
 * symbolic links are never followed, so a link loop cannot hang it. Small directories are
 * walked in name order, each unit before its subfolders; a wide directory's subfolders come
 * in the order the file system lists them, and the directory itself after them.
 *
 * @example
 * ```ts
 * for await (const item of scanFolders("data")) {
 *   if (item.kind === "folder") console.log(item.snapshot.key, item.snapshot.fingerprint);
 * }
 * ```
 *
 * @throws {Deno.errors.NotFound} when `base` itself does not exist (other errors about
 * `base` are yielded as a problem).
 */
export async function* scanFolders(
  base: string,
  options: ScanOptions = {},
): AsyncGenerator<ScanItem> {
  // One item per chunk: the walk goes no further than the caller has taken.
  for await (const items of scanFolderChunks(base, { ...options, chunk: 1 })) {
    for (const item of items) {
      if (options.signal?.aborted) return;
      yield item;
    }
  }
}
