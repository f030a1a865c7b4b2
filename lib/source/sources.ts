/**
 * Where folders come from: the walk of a base folder, or a list of paths (arguments or
 * stdin). Each source turns what it finds into {@linkcode SourceItem}s in chunks; the
 * engine feeds them to one planner, whatever their source. File-system events (`--watch`)
 * are a source too: lib/source/watch.ts.
 *
 * @module
 */

import { basename, isAbsolute, relative, resolve, sep as SEPARATOR } from "node:path";
import type { UploaderConfig } from "../../config.ts";
import { messageOf, UploadError } from "../core/errors.ts";
import type { EngineEvent, RunCounters } from "../core/events.ts";
import {
  type FolderSnapshot,
  isUploadUnit,
  scanFolderChunks,
  scanFoldersInWorker,
  type ScanItem,
  snapshotFolder,
} from "./scan.ts";

/** One thing a source found. */
export type SourceItem =
  | {
    kind: "folder";
    snapshot: FolderSnapshot;
    /** The base the folder's key is relative to, or null when it is keyed by its name. */
    base: string | null;
    /** Upload it even when the tracker says it is unchanged (a folder named on purpose). */
    force: boolean;
    /**
     * Its key is only its name: another folder of the same name may claim the same row, so
     * the server refuses to let one overwrite the other.
     */
    strict: boolean;
  }
  /** A folder or file the walk could not read. */
  | { kind: "problem"; path: string; reason: string; base: string | null }
  /** A symbolic link to a folder, or a link loop, the walk did not follow. */
  | { kind: "skipped"; path: string; reason: string; base: string | null }
  /** A named path that cannot be uploaded (missing, not a folder, no upload unit). */
  | { kind: "rejected"; path: string; key: string | null; error: string }
  /** A complete walk of `base` starts: tracked folders it does not find are missing. */
  | { kind: "pass_start"; base: string }
  /** The walk of `base` ended; `complete` when it saw the whole tree. */
  | { kind: "pass_end"; base: string; complete: boolean };

/** What a source may use while it runs. */
export interface SourceContext {
  signal: AbortSignal;
  emit: (event: EngineEvent) => void;
  counters: RunCounters;
  /** Where a source that sees changes as they happen (`--watch`) notes them. */
  activity?: ActivityLog;
}

/**
 * When file-system events last named each folder (`--watch`), so a folder copied with its
 * old modification times (`cp -a`, rsync, a file manager) settles from its last event, not
 * from its files' dates, and is never sent half copied. Entries older than `horizonMs` can
 * no longer hold a folder back and are dropped as new ones come, so the log stays small.
 */
export class ActivityLog {
  readonly #at = new Map<string, number>();
  readonly #horizonMs: number;

  constructor(horizonMs: number) {
    this.#horizonMs = horizonMs;
  }

  /** Notes a change in folder `path` at `ms`. */
  note(path: string, ms: number): void {
    this.#at.delete(path); // re-inserted last: the map stays in time order
    this.#at.set(path, ms);
    for (const [old, at] of this.#at) {
      if (at >= ms - this.#horizonMs) break;
      this.#at.delete(old);
    }
  }

  /** When a change in folder `path` was last noted, if within the horizon. */
  lastAt(path: string): number | undefined {
    return this.#at.get(path);
  }
}

/** A source: a stream of item chunks. It ends when it has nothing more, or when `signal` aborts. */
export type FolderSource = (context: SourceContext) => AsyncIterable<SourceItem[]>;

/** What the walk needs from the configuration. */
export type WalkConfig = Pick<UploaderConfig, "imageExtensions" | "statsFileName"> & {
  markerNames: ReadonlySet<string>;
};

/**
 * The walk of `base`: every upload unit under it, as a complete pass (so tracked folders
 * it no longer finds are marked missing).
 *
 * @throws {UploadError} `usage` when `base` cannot be walked at all.
 */
export function treeSource(
  base: string,
  config: WalkConfig,
  options: { inWorker?: boolean; chunk?: number } = {},
): FolderSource {
  return async function* (context) {
    yield [{ kind: "pass_start", base }];
    const walkOptions = {
      imageExtensions: config.imageExtensions,
      statsFileName: config.statsFileName,
      markerNames: config.markerNames,
      signal: context.signal,
    };
    const chunks = options.inWorker === false
      ? scanFolderChunks(base, { ...walkOptions, chunk: options.chunk })
      : scanFoldersInWorker(base, walkOptions);
    try {
      for await (const chunk of chunks) yield chunk.map((item) => fromScan(item, base));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        throw new UploadError("usage", `Cannot read base path ${base}: ${messageOf(error)}`, {
          subject: base,
        });
      }
      throw error;
    }
    yield [{ kind: "pass_end", base, complete: !context.signal.aborted }];
  };
}

/** A scan item as a source item of the walk of `base`. */
export function fromScan(item: ScanItem, base: string): SourceItem {
  switch (item.kind) {
    case "folder":
      return { kind: "folder", snapshot: item.snapshot, base, force: false, strict: false };
    case "skipped":
      return { kind: "skipped", path: item.path, reason: item.reason, base };
    default:
      return { kind: "problem", path: item.problem.path, reason: item.problem.reason, base };
  }
}

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
      error: `Not an upload unit: ${path} holds no image and no ${config.statsFileName}`,
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
 * Splits a text stream into trimmed, non-empty lines (a trailing `\r` is dropped, so
 * CRLF input works). Used for `deno task quick -`.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      const line = rest.slice(0, nl).replace(/\r$/, "");
      rest = rest.slice(nl + 1);
      if (line.trim() !== "") yield line;
    }
  }
  const last = rest.replace(/\r$/, "");
  if (last.trim() !== "") yield last;
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
