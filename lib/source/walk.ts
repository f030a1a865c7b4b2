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
 * The walk runs on one thread ({@linkcode scanFolderChunks}) or shared: one thread lists the
 * base and hands its subfolders out ({@linkcode listBaseChunks}), walker threads walk them
 * ({@linkcode walkSubfolders}); lib/source/walkers.ts puts the two together.
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

/**
 * Where {@linkcode listBaseChunks} puts the base's subfolders, to be walked elsewhere: each
 * name once, as its listing reaches it.
 */
export interface SubfolderFeed {
  /** Takes the subfolder `name` of the base (its key is its name). */
  add(name: string): void;
  /** Undefined while there is room for more names, else resolves when there is. */
  full(): Promise<void> | undefined;
}

/** The default of {@linkcode ScanOptions.streamDirBytes}: 32 KiB. */
export const STREAM_DIR_BYTES = 32 * 1024;

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
  /**
   * The next entry, asked for before the current one is walked, so the listing's read
   * overlaps the walk below it (a failure is held as a value until it is taken).
   */
  ahead: Promise<IteratorResult<Deno.DirEntry> | { failed: unknown }>;
  isRoot: boolean;
  /** Whether an image or the stats file has been seen in it so far. */
  isUnit: boolean;
}

type Frame = ListFrame | StreamFrame;

/** The resolved options and state of one walk. */
class Walk {
  readonly root: string;
  readonly rootName: string;
  readonly statsName: string;
  readonly markers: ReadonlySet<string>;
  readonly streamBytes: number;
  readonly options: ScanOptions;
  /** Where the base's subfolders go when they are walked elsewhere. */
  readonly feed: SubfolderFeed | undefined;
  /** Whether a file name makes its folder a unit. */
  readonly isUnitFile: (name: string) => boolean;
  readonly stack: Frame[] = [];
  /** Items found and not yet handed out. */
  out: ScanItem[] = [];

  constructor(root: string, options: ScanOptions, feed?: SubfolderFeed) {
    this.root = root;
    this.rootName = basename(root);
    this.statsName = options.statsFileName ?? "stats.json";
    this.markers = options.markerNames ?? new Set<string>();
    this.streamBytes = options.streamDirBytes ?? STREAM_DIR_BYTES;
    this.options = options;
    this.feed = feed;
    this.isUnitFile = unitFileTest(options);
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

  child(dir: string, name: string): string {
    return childPath(dir, name);
  }

  /** Whether a directory of this size is read as a stream. */
  streams(size: number): boolean {
    return size === 0 || size >= this.streamBytes;
  }

  /** Starts the walk at the base (stat'ed by the caller: it may be a symlink). */
  async start(info: Deno.FileInfo): Promise<void> {
    if (!this.streams(info.size)) {
      this.listDir(this.root, "", true);
      return;
    }
    // Keys below a base that is a unit start with its name, so that must be known before
    // the first subfolder is walked: a first pass over the listing looks for a unit file
    // (unless the subfolders are handed out: their walkers' owner adds the prefix).
    const isUnit = !this.feed && await baseIsUnit(this.root, this.options);
    this.openStream(this.root, "", true, isUnit);
  }

  /** A subfolder found in a listing: walked now, or handed out when it is the base's. */
  subfolder(dir: string, name: string, prefix: string, isRoot: boolean): void {
    if (isRoot && this.feed) this.feed.add(name);
    else this.visit(this.child(dir, name), prefix === "" ? name : `${prefix}/${name}`);
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
    if (this.streams(info.size)) this.openStream(dir, key, false, false);
    else this.listDir(dir, key, false);
  }

  /** The fast path: one synchronous listing, then the snapshot, then the subfolders. */
  listDir(dir: string, key: string, isRoot: boolean): void {
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
          if (name !== this.statsName) (links ??= []).push(name);
        } else if (name.includes("\uFFFD")) {
          (badNames ??= []).push(name);
        } else if (entry.isDirectory) {
          subdirs.push(name);
        } else if (entry.isFile) {
          fileNames.push(name);
          if (!isUnit && this.isUnitFile(name)) isUnit = true;
        }
      }
    } catch (error) {
      this.problem(dir, describeFsError(error));
      return;
    }
    for (const name of badNames ?? []) this.badName(dir, name);
    for (const name of links ?? []) this.link(dir, name);
    const statsNotFile = statsEntry && describeEntry(this.child(dir, this.statsName), statsEntry);
    if (isUnit || statsNotFile) this.snapshot(dir, key, fileNames, statsNotFile);
    if (subdirs.length > 0) {
      subdirs.sort();
      if (isRoot && this.feed) {
        for (const name of subdirs) this.feed.add(name);
        return;
      }
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
    return isRoot && isUnit && !this.feed ? this.rootName : key;
  }

  openStream(dir: string, key: string, isRoot: boolean, isUnit: boolean): void {
    const entries = Deno.readDir(dir)[Symbol.asyncIterator]();
    this.stack.push({
      kind: "stream",
      dir,
      key,
      prefix: this.prefixBelow(key, isRoot, isUnit),
      entries,
      ahead: readAhead(entries),
      isRoot,
      isUnit,
    });
  }

  /** Ends a wide directory whose listing failed part way: reports it, closes it. */
  async streamFailed(frame: StreamFrame, error: unknown): Promise<void> {
    this.stack.pop();
    this.problem(frame.dir, describeFsError(error));
    await closeListing(frame);
  }

  /** Walks into a wide directory's entry, or notes what it is. */
  takeEntry(frame: StreamFrame, entry: Deno.DirEntry): void {
    const name = entry.name;
    if (name.charCodeAt(0) === 46 /* . */) return;
    // A stats file that is no regular file makes the folder a unit that fails, saying why.
    if (name === this.statsName && !entry.isFile) frame.isUnit = true;
    if (entry.isSymlink) {
      if (name !== this.statsName) this.link(frame.dir, name);
      return;
    }
    if (name.includes("\uFFFD")) {
      this.badName(frame.dir, name);
    } else if (entry.isDirectory) {
      this.subfolder(frame.dir, name, frame.prefix, frame.isRoot);
    } else if (entry.isFile && !frame.isUnit && this.isUnitFile(name)) {
      frame.isUnit = true;
    }
  }

  /**
   * Walks until the stack is empty, yielding each full chunk of items (what is left is
   * the caller's to hand out). A listing of the base with a feed waits while it is full.
   */
  async *drain(chunk: number, signal: AbortSignal | undefined): AsyncGenerator<ScanItem[]> {
    while (this.stack.length > 0 && !signal?.aborted) {
      if (this.out.length >= chunk) {
        yield this.out;
        this.out = [];
      }
      const top = this.stack[this.stack.length - 1];
      if (top.kind === "stream") {
        const full = top.isRoot ? this.feed?.full() : undefined;
        if (full) await full;
        // One await per entry of a wide directory; everything else runs synchronously.
        const next = await top.ahead;
        if ("failed" in next) {
          await this.streamFailed(top, next.failed);
          continue;
        }
        if (!next.done) {
          top.ahead = readAhead(top.entries);
          this.takeEntry(top, next.value);
        } else {
          this.stack.pop();
          if (top.isUnit) await this.snapshotWide(top.dir, top.key);
        }
      } else if (top.next < top.names.length) {
        this.subfolder(top.dir, top.names[top.next++], top.prefix, false);
      } else {
        this.stack.pop();
      }
    }
  }

  /** Closes the listings still open (the walk stopped early: an abort, or its caller left). */
  async close(): Promise<void> {
    for (const frame of this.stack) if (frame.kind === "stream") await closeListing(frame);
  }

  badName(dir: string, name: string): void {
    // The name came back with U+FFFD in place of its bad bytes: it cannot be addressed.
    this.problem(this.child(dir, name), "Name is not valid UTF-8");
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
 * Whether the folder `dir` directly holds an image or the stats file (one pass over its
 * listing, as a stream, stopping at the first): whether keys below it start with its name.
 * False when it cannot be listed (the walk's own listing meets the same error and reports
 * it).
 */
export async function baseIsUnit(dir: string, options: ScanOptions = {}): Promise<boolean> {
  const isUnitFile = unitFileTest(options);
  try {
    for await (const entry of Deno.readDir(dir)) {
      const name = entry.name;
      if (name.charCodeAt(0) === 46 || !entry.isFile || name.includes("\uFFFD")) continue;
      if (isUnitFile(name)) return true;
    }
  } catch {
    return false;
  }
  return false;
}

/** The test of a file name that makes its folder a unit, for these options. */
function unitFileTest(options: ScanOptions): (name: string) => boolean {
  const extensions = unitExtensions(options);
  const statsName = options.statsFileName ?? "stats.json";
  return (name) => name === statsName || isImageName(name, extensions);
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

/** Asks a listing for its next entry; a failure becomes a value, never an unhandled rejection. */
function readAhead(
  entries: AsyncIterator<Deno.DirEntry>,
): Promise<IteratorResult<Deno.DirEntry> | { failed: unknown }> {
  return entries.next().catch((failed: unknown) => ({ failed }));
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
    yield* walk.drain(chunk, options.signal);
    if (walk.out.length > 0 && !options.signal?.aborted) yield walk.out;
  } finally {
    await walk.close();
  }
}

/**
 * The base's own part of a shared walk: lists `root` (stat'ed by the caller as `info`) and
 * yields what it finds there (the base's snapshot when it is a unit, its bad names and
 * links), handing every subfolder to `feed` instead of walking it. Keys below the base
 * are its subfolders' names: when the base is a unit ({@linkcode baseIsUnit}) the caller
 * puts the base's name before them.
 */
export async function* listBaseChunks(
  root: string,
  info: Deno.FileInfo,
  feed: SubfolderFeed,
  options: ChunkScanOptions = {},
): AsyncGenerator<ScanItem[]> {
  const walk = new Walk(root, options, feed);
  try {
    await walk.start(info);
    yield* walk.drain(Math.max(1, options.chunk ?? 256), options.signal);
    if (walk.out.length > 0 && !options.signal?.aborted) yield walk.out;
  } finally {
    await walk.close();
  }
}

/** Items that make a chunk of their own at the end of a batch of names. */
export const BATCH_END_ITEMS = 32;

/**
 * Walks the named subfolders of `root` (each batch of names as it arrives; a folder's key
 * is its path below `root`) and yields their items in chunks, as
 * {@linkcode scanFolderChunks} does for a whole tree: full chunks, and at the end of a
 * batch what it found once that is at least {@linkcode BATCH_END_ITEMS} (fewer wait for
 * the next batch: one small folder per batch must not make a chunk each).
 */
export async function* walkSubfolders(
  root: string,
  batches: AsyncIterable<readonly string[]>,
  options: ChunkScanOptions = {},
): AsyncGenerator<ScanItem[]> {
  const chunk = Math.max(1, options.chunk ?? 256);
  const walk = new Walk(root, options);
  try {
    for await (const names of batches) {
      for (const name of names) {
        if (options.signal?.aborted) return;
        walk.visit(walk.child(root, name), name);
        yield* walk.drain(chunk, options.signal);
      }
      // Handed on at the batch's end: a walker holding many items ahead of the main thread
      // held about 90 MB more at the peak of a 50,000-folder upload.
      if (walk.out.length >= Math.min(chunk, BATCH_END_ITEMS) && !options.signal?.aborted) {
        yield walk.out;
        walk.out = [];
      }
    }
    if (walk.out.length > 0 && !options.signal?.aborted) yield walk.out;
  } finally {
    await walk.close();
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
