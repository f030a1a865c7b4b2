/**
 * The folder walk: a streaming, depth-first scan of a base path that yields one snapshot
 * per upload unit (a folder that directly holds an image or the stats file) and one
 * problem per folder it cannot read. It never holds the list of all folders: memory grows
 * with the depth of the tree, not its size.
 *
 * @module
 */

import { basename, join, relative, resolve, sep as SEPARATOR } from "node:path";
import { compareNames, type FileEntry, fingerprintFiles } from "./fingerprint.ts";

/** What the scan knows of one upload unit. */
export interface FolderSnapshot {
  /** The folder's absolute path. */
  path: string;
  /** The path relative to the base, `/`-separated; the base's own name when the base is the unit. */
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
  // The base is the one path followed when it is a symlink (as `find -H` does): the user
  // named it. Links below it are never followed.
  const rootInfo = Deno.statSync(root);
  if (!rootInfo.isDirectory) {
    yield { kind: "problem", problem: { path: root, reason: "Not a directory" } };
    return;
  }
  // Each stack entry is a directory still to read. Children are pushed in reverse name
  // order so they are visited in name order.
  const stack: string[] = [root];
  while (stack.length > 0) {
    if (options.signal?.aborted) return;
    const dir = stack.pop()!;
    let entries: Deno.DirEntry[];
    try {
      entries = Array.from(Deno.readDirSync(dir));
    } catch (error) {
      yield { kind: "problem", problem: { path: dir, reason: describeFsError(error) } };
      continue;
    }
    const subdirs: string[] = [];
    const fileNames: string[] = [];
    let isUnit = false;
    for (const entry of entries) {
      if (entry.name.startsWith(".")) continue;
      if (entry.isSymlink) continue;
      if (entry.name.includes("\uFFFD")) {
        yield {
          kind: "problem",
          problem: { path: join(dir, entry.name), reason: "Name is not valid UTF-8" },
        };
        continue;
      }
      if (entry.isDirectory) {
        subdirs.push(entry.name);
      } else if (entry.isFile) {
        fileNames.push(entry.name);
        if (!isUnit && (entry.name === statsName || isImageName(entry.name, extensions))) {
          isUnit = true;
        }
      }
    }
    subdirs.sort();
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(join(dir, subdirs[i]));
    if (!isUnit) continue;

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
    const key = dir === root ? basename(root) : relative(root, dir).split(SEPARATOR).join("/");
    yield {
      kind: "folder",
      snapshot: {
        path: dir,
        key,
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
