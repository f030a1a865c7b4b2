/**
 * Named folders as a source (`deno task quick`): paths given as arguments or read from
 * stdin as they arrive, each checked, snapshotted and keyed.
 *
 * @module
 */

import { basename, isAbsolute, relative, resolve, sep as SEPARATOR } from "node:path";
import { messageOf, UploadError } from "../core/errors.ts";
import { isUploadUnit, snapshotFolder } from "./snapshot.ts";
import type { FolderSource, SourceContext, SourceItem, WalkConfig } from "./sources.ts";

/** Settings of {@linkcode pathSource}. */
export interface PathSourceOptions {
  /** Key folders relative to this directory (`--base`); one outside it is rejected. */
  base: string | null;
  /** Bases the tracker knows, deepest first: a folder under one is keyed relative to it. */
  trackedBases?: readonly string[];
  /** Paths taken per chunk. Default 256. */
  chunk?: number;
}

/**
 * Named folders: each path is checked (it exists, is a folder, holds an image or the stats
 * file) and snapshotted; its key is relative to `base`, else to the deepest tracked base
 * holding it, else its own name. A path named twice is taken once. Always uploaded
 * (`force`), whatever the tracker says.
 */
export function pathSource(
  paths: Iterable<string> | AsyncIterable<string>,
  config: WalkConfig,
  options: PathSourceOptions,
): FolderSource {
  const chunk = options.chunk ?? 256;
  return async function* (context) {
    const seen = new Set<string>();
    const take = (given: string): SourceItem | null => {
      context.counters.given++;
      const item = namedFolder(given, config, options, seen, context);
      return item;
    };
    if (Symbol.iterator in paths) {
      let items: SourceItem[] = [];
      for (const given of paths as Iterable<string>) {
        if (context.signal.aborted) return;
        const item = take(given);
        if (item) items.push(item);
        if (items.length >= chunk) {
          yield items;
          items = [];
        }
      }
      if (items.length > 0) yield items;
      return;
    }
    for await (const lines of chunkedByTime(paths as AsyncIterable<string>, chunk, 20)) {
      if (context.signal.aborted) return;
      const items = lines.map(take).filter((i): i is SourceItem => i !== null);
      if (items.length > 0) yield items;
    }
  };
}

/** Checks and snapshots one named folder. Null for a path named before. */
function namedFolder(
  given: string,
  config: WalkConfig,
  options: PathSourceOptions,
  seen: Set<string>,
  context: SourceContext,
): SourceItem | null {
  const path = resolve(given);
  let real = path;
  try {
    real = Deno.realPathSync(path);
  } catch (_error) {
    // Missing or unreadable: the checks below report it; the plain path identifies it.
  }
  if (seen.has(real)) {
    context.counters.duplicates++;
    context.emit({ event: "folder_skipped", path, reason: "given more than once" });
    return null;
  }
  seen.add(real);
  context.emit({ event: "folder_start", path });
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(real);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? `No such folder: ${path}`
      : `Cannot read ${path}: ${messageOf(error)}`;
    return { kind: "rejected", path, key: null, error: reason };
  }
  if (!info.isDirectory) {
    return { kind: "rejected", path, key: null, error: `Not a directory: ${path}` };
  }
  let keyed: { key: string; base: string | null };
  try {
    keyed = keyFor(real, options.base, options.trackedBases ?? []);
  } catch (error) {
    return { kind: "rejected", path, key: null, error: messageOf(error) };
  }
  const item = snapshotFolder(real, { ...config, key: keyed.key });
  if (item.kind === "problem") {
    return {
      kind: "rejected",
      path,
      key: keyed.key,
      error: `Cannot read ${item.problem.path}: ${item.problem.reason}`,
    };
  }
  if (!isUploadUnit(item.snapshot, config)) {
    return {
      kind: "rejected",
      path,
      key: keyed.key,
      error: `Not an upload unit: ${path} holds no image${
        (config.reportExtensions ?? []).length > 0 ? ", no report" : ""
      } and no ${config.statsFileName}`,
    };
  }
  return {
    kind: "folder",
    snapshot: item.snapshot,
    base: keyed.base,
    force: true,
    strict: keyed.base === null,
  };
}

/** A named folder's key and the base it is relative to. */
function keyFor(
  path: string,
  base: string | null,
  trackedBases: readonly string[],
): { key: string; base: string | null } {
  if (base !== null) return { key: folderKeyFor(path, base), base: resolve(base) };
  for (const tracked of trackedBases) {
    if (isInside(path, tracked)) return { key: folderKeyFor(path, tracked), base: tracked };
  }
  return { key: folderKeyFor(path, null), base: null };
}

/** Whether `path` is `dir` or lies below it. */
function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/**
 * The key a folder is uploaded under: its own name, or with `base` its path relative to
 * `base`, `/`-separated (the base's own name when the folder is the base), as the walk of
 * `base` keys it.
 *
 * @throws {UploadError} kind `folder` when the folder is outside `base`.
 *
 * @example
 * ```ts
 * folderKeyFor("/data/Line2/Batch12", null); // "Batch12"
 * folderKeyFor("/data/Line2/Batch12", "/data"); // "Line2/Batch12"
 * ```
 */
export function folderKeyFor(path: string, base: string | null): string {
  const dir = resolve(path);
  if (base === null) return basename(dir);
  const root = resolve(base);
  const rel = relative(root, dir);
  if (rel === "") return basename(root);
  if (rel === ".." || rel.startsWith(`..${SEPARATOR}`) || isAbsolute(rel)) {
    throw new UploadError("folder", `Folder ${dir} is outside --base ${root}`, { subject: dir });
  }
  return rel.split(SEPARATOR).join("/");
}

/**
 * Groups an async stream into arrays: what arrives within `ms` of the first item of a
 * group, up to `max` items. A stream read as it arrives (stdin) is then handled in
 * groups, yet a lone item waits no longer than `ms`.
 */
export async function* chunkedByTime<T>(
  items: AsyncIterable<T>,
  max: number,
  ms: number,
): AsyncGenerator<T[]> {
  // A group abandoned mid-read (the run stopped) leaves the read pending: on an open stdin
  // it may never end, so nothing here waits for it.
  const iterator = items[Symbol.asyncIterator]();
  let pending: Promise<IteratorResult<T>> | null = null;
  for (;;) {
    const first = await (pending ?? iterator.next());
    pending = null;
    if (first.done) return;
    const group = [first.value];
    const deadline = Date.now() + ms;
    while (group.length < max) {
      pending = iterator.next();
      const left = deadline - Date.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const next = left <= 0 ? null : await Promise.race([
        pending,
        new Promise<null>((r) => timer = setTimeout(() => r(null), left)),
      ]);
      clearTimeout(timer);
      if (next === null) break; // `pending` starts the next group
      pending = null;
      if (next.done) {
        yield group;
        return;
      }
      group.push(next.value);
    }
    yield group;
  }
}
