/**
 * The folder walk: a streaming, depth-first scan of a base path that yields one snapshot
 * per upload unit (a folder that directly holds an image or the stats file) and one
 * problem per folder it cannot read. It never holds the list of all folders: memory grows
 * with the depth of the tree, not its size.
 *
 * @module
 */

import { basename, join, resolve } from "node:path";
import { compareNames, type FileEntry, fingerprintFiles } from "./fingerprint.ts";

/** What the scan knows of one upload unit. */
export interface FolderSnapshot {
  /** The folder's absolute path. */
  path: string;
  /**
   * The path relative to the base, `/`-separated. When the base is itself a unit, keys are
   * relative to its parent (its own key is its name; its subfolders' start with it).
   */
  key: string;
  /** The folder's own name. */
  name: string;
  /** Direct regular files (hidden ones left out), sorted by name. Marker files included. */
  files: FileEntry[];
  /** md5 of the files' names, sizes and mtimes, marker files left out. */
  fingerprint: string;
  /** The newest mtime among the files that count for the fingerprint (ms since epoch). */
  newestMtimeMs: number;
}

/** A folder or file the scan could not read. */
export interface ScanProblem {
  /** The path that could not be read. */
  path: string;
  /** Why, in words. */
  reason: string;
}

/** One item of the scan's output. */
export type ScanItem =
  | { kind: "folder"; snapshot: FolderSnapshot }
  | { kind: "problem"; problem: ScanProblem };

/** Options for {@linkcode scanFolders}. */
export interface ScanOptions {
  /** Image extensions, lower case with the dot. Default: `.jpg .jpeg .png .gif .bmp`. */
  imageExtensions?: readonly string[];
  /** The statistics file name. Default `stats.json`. */
  statsFileName?: string;
  /** File names left out of the fingerprint (marker files). Default: none. */
  markerNames?: ReadonlySet<string>;
  /** Checked between folders; when aborted the scan stops early. */
  signal?: AbortSignal;
  /**
   * Walk only part of the tree, for parallel walkers: the base's subfolders whose index
   * (in name order) modulo `count` is `index`; the base folder itself belongs to part 0.
   * Default: the whole tree.
   */
  partition?: { index: number; count: number };
}

const DEFAULT_IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif", ".bmp"];

/** Whether a file name has one of the image extensions (any case). */
export function isImageName(name: string, extensions: readonly string[]): boolean {
  const dot = name.lastIndexOf(".");
  if (dot <= 0) return false;
  return extensions.includes(name.slice(dot).toLowerCase());
}

/**
 * Walks `base` depth-first in name order and yields a snapshot for every upload unit and
 * a problem for every folder that cannot be read. Hidden entries (a name starting with
 * `.`) are skipped; symbolic links are never followed, so a link loop cannot hang it.
 *
 * @throws {Deno.errors.NotFound} when `base` itself does not exist (other errors about
 * `base` are yielded as a problem).
 */
export function* scanFolders(base: string, options: ScanOptions = {}): Generator<ScanItem> {
  const root = resolve(base);
  const extensions = options.imageExtensions ?? DEFAULT_IMAGE_EXTENSIONS;
  const statsName = options.statsFileName ?? "stats.json";
  const markers = options.markerNames ?? new Set<string>();
  const part = options.partition && options.partition.count > 1 ? options.partition : undefined;
  // The base is the one path followed when it is a symlink (as `find -H` does): the user
  // named it. Links below it are never followed.
  const rootInfo = Deno.statSync(root);
  if (!rootInfo.isDirectory) {
    yield { kind: "problem", problem: { path: root, reason: "Not a directory" } };
    return;
  }
  // One frame per directory level being walked: its sorted subdirectory names and the
  // index of the next one to visit. Memory grows with depth and the widest directory's
  // names, never with the whole tree.
  interface Frame {
    dir: string;
    key: string;
    subdirs: string[];
    next: number;
  }
  const stack: Frame[] = [];
  let pending: { dir: string; key: string } | null = { dir: root, key: "" };
  while (pending !== null || stack.length > 0) {
    if (options.signal?.aborted) return;
    if (pending === null) {
      const top = stack[stack.length - 1];
      if (top.next >= top.subdirs.length) {
        stack.pop();
        continue;
      }
      const name = top.subdirs[top.next++];
      pending = { dir: join(top.dir, name), key: top.key === "" ? name : `${top.key}/${name}` };
    }
    const { dir, key } = pending;
    pending = null;
    const subdirs: string[] = [];
    const fileNames: string[] = [];
    let isUnit = false;
    const badNames: string[] = [];
    try {
      for (const entry of Deno.readDirSync(dir)) {
        const name = entry.name;
        if (name.charCodeAt(0) === 46 /* . */ || entry.isSymlink) continue;
        if (name.includes("\uFFFD")) {
          badNames.push(name);
          continue;
        }
        if (entry.isDirectory) {
          subdirs.push(name);
        } else if (entry.isFile) {
          fileNames.push(name);
          if (!isUnit && (name === statsName || isImageName(name, extensions))) isUnit = true;
        }
      }
    } catch (error) {
      yield { kind: "problem", problem: { path: dir, reason: describeFsError(error) } };
      continue;
    }
    let ownsDir = true;
    let children = subdirs;
    if (part && dir === root) {
      ownsDir = part.index === 0;
      children.sort();
      children = children.filter((_, i) => i % part.count === part.index);
    }
    if (ownsDir) {
      for (const name of badNames) {
        yield {
          kind: "problem",
          problem: { path: join(dir, name), reason: "Name is not valid UTF-8" },
        };
      }
    }
    if (children.length > 0) {
      children.sort();
      // Below a base that is itself a unit, keys start with the base's name, as they would
      // from its parent: the base's key and a subfolder of the same name cannot collide.
      const frameKey = dir === root && isUnit ? basename(root) : key;
      stack.push({ dir, key: frameKey, subdirs: children, next: 0 });
    }
    if (!isUnit || !ownsDir) continue;

    const files: FileEntry[] = [];
    let vanished = false;
    for (const name of fileNames) {
      try {
        const info = Deno.lstatSync(join(dir, name));
        if (!info.isFile) continue;
        files.push({ name, size: info.size, mtimeMs: Math.trunc(info.mtime?.getTime() ?? 0) });
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) continue; // vanished since the listing
        yield {
          kind: "problem",
          problem: { path: join(dir, name), reason: describeFsError(error) },
        };
        vanished = true;
        break;
      }
    }
    if (vanished) continue;
    files.sort(compareNames);
    let newest = 0;
    for (const f of files) if (!markers.has(f.name) && f.mtimeMs > newest) newest = f.mtimeMs;
    yield {
      kind: "folder",
      snapshot: {
        path: dir,
        key: key === "" ? basename(root) : key,
        name: basename(dir),
        files,
        fingerprint: fingerprintFiles(files, markers),
        newestMtimeMs: newest,
      },
    };
  }
}

/**
 * Takes a snapshot of one folder without walking below it, or returns a problem when it
 * cannot be read. `key` defaults to the folder's name.
 */
export function snapshotFolder(
  path: string,
  options: ScanOptions & { key?: string } = {},
): ScanItem {
  const dir = resolve(path);
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(dir); // the named folder may be a symlink; what is inside is not followed
  } catch (error) {
    return { kind: "problem", problem: { path: dir, reason: describeFsError(error) } };
  }
  if (!info.isDirectory) {
    return { kind: "problem", problem: { path: dir, reason: "Not a directory" } };
  }
  const markers = options.markerNames ?? new Set<string>();
  const files: FileEntry[] = [];
  try {
    for (const entry of Deno.readDirSync(dir)) {
      if (entry.name.startsWith(".") || !entry.isFile) continue;
      try {
        const st = Deno.lstatSync(join(dir, entry.name));
        files.push({
          name: entry.name,
          size: st.size,
          mtimeMs: Math.trunc(st.mtime?.getTime() ?? 0),
        });
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) continue;
        throw error;
      }
    }
  } catch (error) {
    return { kind: "problem", problem: { path: dir, reason: describeFsError(error) } };
  }
  files.sort(compareNames);
  let newest = 0;
  for (const f of files) if (!markers.has(f.name) && f.mtimeMs > newest) newest = f.mtimeMs;
  return {
    kind: "folder",
    snapshot: {
      path: dir,
      key: options.key ?? basename(dir),
      name: basename(dir),
      files,
      fingerprint: fingerprintFiles(files, markers),
      newestMtimeMs: newest,
    },
  };
}

/** Whether a snapshot is an upload unit: it holds an image or the stats file. */
export function isUploadUnit(
  snapshot: Pick<FolderSnapshot, "files">,
  options: Pick<ScanOptions, "imageExtensions" | "statsFileName"> = {},
): boolean {
  const extensions = options.imageExtensions ?? DEFAULT_IMAGE_EXTENSIONS;
  const statsName = options.statsFileName ?? "stats.json";
  return snapshot.files.some((f) => f.name === statsName || isImageName(f.name, extensions));
}

/** Turns a file-system error into a short reason ("Permission denied", "Vanished"). */
export function describeFsError(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "Vanished during the scan";
  if (error instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (error instanceof Deno.errors.NotADirectory) return "Not a directory";
  if (error instanceof Error) return error.message;
  return String(error);
}

/** Options for {@linkcode scanFoldersInWorker}. */
export interface WorkerScanOptions extends ScanOptions {
  /** Items per chunk. Default 256. */
  chunk?: number;
  /** Chunks each worker may walk ahead. Default 8. */
  window?: number;
  /** Walkers in parallel, each taking a share of the base's subfolders. Default 2. */
  workers?: number;
}

/**
 * {@linkcode scanFolders} on a worker thread, yielding its items in chunks. The walk runs
 * in parallel with whatever the caller does with the chunks, a bounded number of chunks
 * ahead. Stops (and ends the worker) when `signal` aborts or the caller stops iterating.
 *
 * @throws {Deno.errors.NotFound} when `base` does not exist; Error for a failed walk.
 */
export async function* scanFoldersInWorker(
  base: string,
  options: WorkerScanOptions = {},
): AsyncGenerator<ScanItem[]> {
  type Message =
    | { type: "items"; items: ScanItem[] }
    | { type: "done" }
    | { type: "error"; message: string; notFound: boolean };
  const count = Math.max(1, options.workers ?? 2);
  const inbox: { from: Worker; message: Message }[] = [];
  let notify: (() => void) | null = null;
  const arrive = (from: Worker, message: Message) => {
    inbox.push({ from, message });
    const n = notify;
    notify = null;
    n?.();
  };
  const workers: Worker[] = [];
  const onAbort = () => {
    const n = notify;
    notify = null;
    n?.();
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (let index = 0; index < count; index++) {
      const worker = new Worker(new URL("./scan_worker.ts", import.meta.url).href, {
        type: "module",
      });
      worker.onmessage = (event: MessageEvent<Message>) => arrive(worker, event.data);
      worker.onerror = (event: ErrorEvent) => {
        event.preventDefault();
        arrive(worker, { type: "error", message: event.message, notFound: false });
      };
      workers.push(worker);
      worker.postMessage({
        type: "start",
        base,
        imageExtensions: options.imageExtensions,
        statsFileName: options.statsFileName,
        markerNames: [...(options.markerNames ?? [])],
        chunk: options.chunk ?? 256,
        window: options.window ?? 8,
        partition: { index, count },
      });
    }
    let running = count;
    while (running > 0 && !options.signal?.aborted) {
      if (inbox.length === 0) {
        await new Promise<void>((resolve) => (notify = resolve));
        continue;
      }
      const { from, message } = inbox.shift()!;
      if (message.type === "done") {
        running--;
        continue;
      }
      if (message.type === "error") {
        if (message.notFound) throw new Deno.errors.NotFound(message.message);
        throw new Error(`Cannot walk ${base}: ${message.message}`);
      }
      from.postMessage({ type: "ack" });
      yield message.items;
    }
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    for (const worker of workers) worker.terminate();
  }
}
