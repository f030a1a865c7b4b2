/**
 * Where folders come from: what a source is, and the walk of a base folder as one. Each
 * source turns what it finds into {@linkcode SourceItem}s in chunks; the engine feeds them
 * to one planner, whatever their source. Named paths (arguments or stdin) are a source in
 * `paths.ts`, file-system events (`--watch`) one in `watch.ts`.
 *
 * @module
 */

import type { UploaderConfig } from "../../config.ts";
import { messageOf, UploadError } from "../core/errors.ts";
import type { EngineEvent, RunCounters } from "../core/events.ts";
import type { FolderSnapshot, ScanItem } from "./snapshot.ts";
import { scanFolderChunks } from "./walk.ts";
import { scanFoldersInWorker } from "./walkers.ts";

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
  /** Report extensions that make a folder a unit on their own (empty: they do not). */
  reportExtensions?: readonly string[];
  /** Walker threads of a walk in workers. Default 2. */
  walkers?: number;
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
      reportExtensions: config.reportExtensions,
      statsFileName: config.statsFileName,
      markerNames: config.markerNames,
      signal: context.signal,
    };
    const chunks = options.inWorker === false
      ? scanFolderChunks(base, { ...walkOptions, chunk: options.chunk })
      : scanFoldersInWorker(base, { ...walkOptions, workers: config.walkers });
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
