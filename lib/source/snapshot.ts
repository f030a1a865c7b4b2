/**
 * What the scan knows of a folder: its snapshot (the files it directly holds, their sizes
 * and mtimes, the fingerprint), taken from a listing. The walk of a tree (`walk.ts`), the
 * watch (`watch.ts`) and named folders (`paths.ts`) all make snapshots here, the same way.
 *
 * @module
 */

import { basename, resolve } from "node:path";
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
  /**
   * When file-system events last named the folder (ms, this machine's clock), when that is
   * known (`--watch`): settling counts from the later of this and `newestMtimeMs`.
   */
  changedAtMs?: number;
  /**
   * `false` when the run's readiness rule (`--ready-when`) waits for a file this folder
   * does not hold yet (set by the planner); absent: ready.
   */
  ready?: boolean;
  /**
   * What the entry named like the stats file is when it is no regular file ("a FIFO", "a
   * directory", ...): the folder cannot be uploaded as it is, and fails saying so.
   */
  statsNotFile?: string;
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
  | { kind: "problem"; problem: ScanProblem }
  /** A symbolic link to a folder, or a link loop: not followed, and said so. */
  | { kind: "skipped"; path: string; reason: string };

/** Options for {@linkcode scanFolders}. */
export interface ScanOptions {
  /** Image extensions, lower case with the dot. Default: `.jpg .jpeg .png .gif .bmp`. */
  imageExtensions?: readonly string[];
  /** The statistics file name. Default `stats.json`. */
  statsFileName?: string;
  /**
   * Extensions of reports that make a folder an upload unit on their own (lower case with
   * the dot; config `reportOnlyUnits`). Default: none.
   */
  reportExtensions?: readonly string[];
  /** File names left out of the fingerprint (marker files). Default: none. */
  markerNames?: ReadonlySet<string>;
  /** Checked between folders; when aborted the scan stops early. */
  signal?: AbortSignal;
  /**
   * A directory whose size (`st_size`) is at least this many bytes, or 0 (the file system
   * does not say), is read as a stream instead of in one call. 32 KiB is about 1,500
   * entries on ext4, tmpfs and btrfs. Default {@linkcode STREAM_DIR_BYTES}.
   */
  streamDirBytes?: number;
}

/** The image extensions when none are given. */
export const DEFAULT_IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif", ".bmp"];

/**
 * Whether a file name has one of the extensions (any case): an image's, or a report's.
 *
 * @example
 * ```ts
 * isImageName("a.JPG", [".jpg"]); // true
 * isImageName("2025-06-02 16:42.pdf", [".pdf"]); // true
 * ```
 */
export function isImageName(name: string, extensions: readonly string[]): boolean {
  const dot = name.lastIndexOf(".");
  if (dot <= 0) return false;
  return extensions.includes(name.slice(dot).toLowerCase());
}

/**
 * Takes a snapshot of one folder without walking below it, or returns a problem when it
 * cannot be read. `key` defaults to the folder's name. Names that are not valid UTF-8
 * cannot be addressed and are left out.
 */
export function snapshotFolder(
  path: string,
  options: ScanOptions & { key?: string } = {},
): Exclude<ScanItem, { kind: "skipped" }> {
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
  const statsName = options.statsFileName ?? "stats.json";
  const names: string[] = [];
  let statsNotFile: string | undefined;
  try {
    for (const entry of Deno.readDirSync(dir)) {
      const name = entry.name;
      if (name === statsName && !entry.isFile) {
        statsNotFile = describeEntry(childPath(dir, name), entry);
      }
      if (name.startsWith(".") || !entry.isFile || name.includes("\uFFFD")) continue;
      names.push(name);
    }
  } catch (error) {
    return { kind: "problem", problem: { path: dir, reason: describeFsError(error) } };
  }
  return snapshotOf(dir, names, {
    key: options.key ?? basename(dir),
    markers: options.markerNames ?? new Set<string>(),
    statsNotFile,
  });
}

/** `name` in the folder `dir` (absolute and normalised, so a plain join is enough). */
export function childPath(dir: string, name: string): string {
  return dir === "/" ? `/${name}` : `${dir}/${name}`;
}

/**
 * A unit's snapshot from its file names as listed: each is stat'ed (one that vanished since
 * the listing, or is no longer a regular file, is left out), sorted and fingerprinted. A
 * file that exists but cannot be stat'ed is a problem: the folder cannot be fingerprinted.
 */
export function snapshotOf(
  dir: string,
  fileNames: readonly string[],
  options: { key: string; markers: ReadonlySet<string>; statsNotFile?: string },
): Exclude<ScanItem, { kind: "skipped" }> {
  const files: FileEntry[] = [];
  for (const name of fileNames) {
    const path = childPath(dir, name);
    try {
      const info = Deno.lstatSync(path);
      if (!info.isFile) continue;
      files.push({ name, size: info.size, mtimeMs: Math.trunc(info.mtime?.getTime() ?? 0) });
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue; // vanished since the listing
      return { kind: "problem", problem: { path, reason: describeFsError(error) } };
    }
  }
  files.sort(compareNames);
  let newest = 0;
  for (const f of files) if (!options.markers.has(f.name) && f.mtimeMs > newest) newest = f.mtimeMs;
  return {
    kind: "folder",
    snapshot: {
      path: dir,
      key: options.key,
      name: basename(dir),
      files,
      fingerprint: fingerprintFiles(files, options.markers),
      newestMtimeMs: newest,
      ...(options.statsNotFile ? { statsNotFile: options.statsNotFile } : {}),
    },
  };
}

/**
 * What a directory entry that should be a regular file is instead ("a FIFO", "a directory",
 * "a symbolic link"), in words.
 */
export function describeEntry(path: string, entry: Deno.DirEntry): string {
  if (entry.isSymlink) return "a symbolic link (links are not followed)";
  if (entry.isDirectory) return "a directory";
  try {
    const info = Deno.lstatSync(path);
    if (info.isFifo) return "a FIFO";
    if (info.isSocket) return "a socket";
    if (info.isCharDevice || info.isBlockDevice) return "a device";
  } catch (_error) {
    // Gone since the listing: still no regular file.
  }
  return "not a regular file";
}

/**
 * Whether a snapshot is an upload unit: it holds an image, the stats file (one that is no
 * regular file too: the folder then fails, saying so) or a report (with `reportExtensions`).
 */
export function isUploadUnit(
  snapshot: Pick<FolderSnapshot, "files" | "statsNotFile">,
  options: Pick<ScanOptions, "imageExtensions" | "statsFileName" | "reportExtensions"> = {},
): boolean {
  if (snapshot.statsNotFile) return true;
  const extensions = unitExtensions(options);
  const statsName = options.statsFileName ?? "stats.json";
  return snapshot.files.some((f) => f.name === statsName || isImageName(f.name, extensions));
}

/** The extensions of files that make a folder a unit: the images', and reports' when they count. */
export function unitExtensions(
  options: Pick<ScanOptions, "imageExtensions" | "reportExtensions">,
): readonly string[] {
  const images = options.imageExtensions ?? DEFAULT_IMAGE_EXTENSIONS;
  const reports = options.reportExtensions ?? [];
  return reports.length === 0 ? images : [...images, ...reports];
}

/** Turns a file-system error into a short reason ("Permission denied", "Vanished"). */
export function describeFsError(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "Vanished during the scan";
  if (error instanceof Deno.errors.PermissionDenied) return "Permission denied";
  if (error instanceof Deno.errors.NotADirectory) return "Not a directory";
  if (error instanceof Error) return error.message;
  return String(error);
}
