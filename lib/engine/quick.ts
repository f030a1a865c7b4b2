/**
 * Quick upload (`deno task quick`): named folders, or paths streamed on stdin, through the
 * engine without a walk. Each folder is keyed relative to `--base`, else to the deepest
 * base the tracker knows holding it, else by its own name; it is recorded in the tracking
 * database when one exists, so a later `deno task upload` does not send it again.
 *
 * @module
 */

import { resolve } from "node:path";
import type { Connector } from "../target/connect.ts";
import { runEngine } from "./engine.ts";
import type { RunResult } from "../core/events.ts";
import type { IdentitySetup } from "../target/identity.ts";
import { newCounters } from "../core/events.ts";
import { sendTo, walkConfig } from "./upload.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import type { FolderSource } from "../source/sources.ts";
import { pathSource } from "../source/paths.ts";
import type { CallerOptions, TargetOptions } from "./options.ts";
import type { Tracker } from "../tracker/tracker.ts";

export { folderKeyFor } from "../source/paths.ts";
export { readLines } from "../core/lines.ts";

/** Settings of {@linkcode runQuickUpload}: the run's options, the target, and how to key. */
export interface QuickOptions extends CallerOptions, TargetOptions {
  /** Where rows go; opened on the first batch, closed by the caller. */
  connector: Connector;
  /**
   * Nothing configured the id: before the first batch, settle it against the named
   * folders' markers and the server's rows of them (folders named on the command line;
   * paths read from stdin cannot be looked at twice and keep the candidate).
   */
  settleDevice?: boolean;
  /** The tracking database to record folders in, or null to record nothing. */
  tracker?: Tracker | null;
  /** Keys are relative to this directory; null keys each folder as described above. */
  base?: string | null;
}

/**
 * Uploads the folders in `paths` (an array, or an async stream such as stdin's lines), as
 * they come, in batches of up to `config.batchSize`.
 *
 * Never throws for one folder's problem: a missing path, a non-folder, a folder that is no
 * upload unit or outside `base`, a bad stats.json, a folder still being written, or a row
 * the server refuses fail that folder alone.
 */
export function runQuickUpload(
  paths: Iterable<string> | AsyncIterable<string>,
  options: QuickOptions,
): Promise<RunResult> {
  const tracker = options.tracker ?? null;
  const base = options.base ? resolve(options.base) : null;
  const sourceOptions = {
    base,
    trackedBases: tracker?.knownBases() ?? [],
    chunk: Math.max(1, options.config.batchSize),
  };
  const walk = walkConfig(options.config);
  const source = pathSource(paths, walk, sourceOptions);
  const named = Array.isArray(paths) ? paths as string[] : null;
  const identity: IdentitySetup | undefined = options.settleDevice && named
    ? {
      folders: () => namedFolders(pathSource(named, walk, { ...sourceOptions, chunk: 1000 })),
      adopt: false,
      base: base ?? "the named folders",
      successMarker: options.config.successMarker,
      legacyMarkers: options.config.legacyMarkers,
    }
    : undefined;
  return runEngine(source, {
    ...options,
    ...sendTo(options.connector, { ...options, identity }),
    mode: "quick",
    tracker,
    base,
    folderEvents: true,
  });
}

/** The snapshots of a path source's folders, its events left unsaid (a look ahead). */
async function* namedFolders(source: FolderSource): AsyncGenerator<FolderSnapshot[]> {
  const context = {
    signal: new AbortController().signal,
    emit: () => {},
    counters: newCounters(),
  };
  for await (const items of source(context)) {
    const folders: FolderSnapshot[] = [];
    for (const item of items) if (item.kind === "folder") folders.push(item.snapshot);
    yield folders;
  }
}

/**
 * The tracker a quick upload may record its folders in: the tracker's recorded target must
 * be this one (or none yet), else the manager would skip folders its own target never got.
 *
 * @returns the tracker to use (null when it tracks another target) and, then, why.
 */
export function trackerForTarget(
  tracker: Tracker,
  targetId: string,
): { tracker: Tracker | null; otherTarget?: string } {
  const previous = tracker.getMeta("target");
  if (previous !== undefined && previous !== targetId) {
    return { tracker: null, otherTarget: previous.replace(/#[^#]*$/, "") };
  }
  tracker.useTarget(targetId);
  return { tracker };
}
