/**
 * The upload manager's run (`deno task upload BASE`): the walk of a base folder through
 * the engine, as an upload, a scan that only records (`--scan-only`) or a dry run.
 *
 * @module
 */

import { markerNames, type UploaderConfig } from "../../config.ts";
import type { Connector } from "../target/connect.ts";
import { runEngine } from "./engine.ts";
import type { CallerOptions, RunOptions, TargetOptions } from "./options.ts";
import { reporterForRun } from "../fleet/health.ts";
import { postgresSink } from "../sink/postgres/sink.ts";
import { messageOf, UploadError } from "../core/errors.ts";
import type { RunResult } from "../core/events.ts";
import type { IdentitySetup } from "../target/identity.ts";
import { scanFolderChunks } from "../source/walk.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import { treeSource, type WalkConfig } from "../source/sources.ts";
import type { Tracker } from "../tracker/tracker.ts";

export { newCounters, type RunCounters, type RunResult } from "../core/events.ts";

/** What a manager run does. */
export type ManagerMode = "upload" | "scan-only" | "dry-run";

/** Settings of {@linkcode runUpload}: the run's options and the base to walk. */
export interface UploadOptions extends CallerOptions, TargetOptions {
  /** The base folder, absolute (its real path, so a symlinked base is the same base). */
  basePath: string;
  /** The tracking database. */
  tracker: Tracker;
  /** What the run does; `upload` needs a `connector`. */
  mode: ManagerMode;
  /** Walk the tree on worker threads, in parallel with the rest. Default true. */
  scanInWorker?: boolean;
}

/**
 * Scans `basePath`, and in `upload` mode uploads every new or changed folder.
 *
 * Never throws for a folder's problem; those are counted, recorded and reported.
 *
 * @throws {UploadError} `usage` when the base path is not a readable folder (before
 *   anything is recorded).
 */
export function runUpload(options: UploadOptions): Promise<RunResult> {
  checkBase(options.basePath);
  return runEngine(
    treeSource(options.basePath, walkConfig(options.config, options.connector), {
      inWorker: options.scanInWorker,
    }),
    {
      ...options,
      base: options.basePath,
      ...(options.mode === "upload" && options.connector ? sendTo(options.connector, options) : {}),
    },
  );
}

/**
 * The engine's sink and health record for a run that writes to the PostgreSQL target of
 * `connector` (opened on the first batch, closed by its owner).
 */
export function sendTo(
  connector: Connector,
  options: TargetOptions & Pick<RunOptions, "config" | "deviceId">,
): Required<Pick<RunOptions, "sink" | "health">> {
  return {
    sink: postgresSink(connector, {
      config: options.config,
      deviceId: options.deviceId,
      deviceSource: options.deviceSource,
      identity: options.identity,
      statementTimeoutMs: options.statementTimeoutMs,
    }),
    health: (run, sink) => reporterForRun(run, { connector, sink }),
  };
}

/**
 * How a run on `basePath` settles a device id nothing configured (a new tracker): a walk
 * of the tree for the id its markers record and the folders to ask the server about.
 */
export function treeIdentity(
  basePath: string,
  config: UploaderConfig,
  adopt: boolean,
): IdentitySetup {
  const walk = walkConfig(config);
  return {
    folders: () => treeFolders(basePath, walk),
    adopt,
    base: basePath,
    successMarker: config.successMarker,
    legacyMarkers: config.legacyMarkers,
  };
}

/** The upload units under `base`, in chunks, as the run's own walk keys them. */
async function* treeFolders(base: string, walk: WalkConfig): AsyncGenerator<FolderSnapshot[]> {
  for await (const items of scanFolderChunks(base, { ...walk, chunk: 1000 })) {
    const folders: FolderSnapshot[] = [];
    for (const item of items) if (item.kind === "folder") folders.push(item.snapshot);
    yield folders;
  }
}

/**
 * What the walk needs from the configuration, and from the target it feeds: the embedded
 * database (a thread of this process, and its busiest) gets one walker, not two. A second
 * walker there only competes with it for the cores and adds a heap of its own: a first
 * run of 20,000 flat folders peaked 20-25 MB lower with one, and was no slower.
 */
export function walkConfig(
  config: UploaderConfig,
  target?: Pick<Connector, "embedded">,
): WalkConfig {
  return {
    imageExtensions: config.imageExtensions,
    reportExtensions: config.reportOnlyUnits ? config.reportExtensions : [],
    statsFileName: config.statsFileName,
    markerNames: markerNames(config),
    ...(target?.embedded ? { walkers: 1 } : {}),
  };
}

/**
 * Checks that the base path is a readable folder.
 *
 * @throws {UploadError} `usage` naming the path and the reason.
 */
export function checkBase(basePath: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(basePath);
  } catch (error) {
    throw new UploadError("usage", `Cannot read base path ${basePath}: ${messageOf(error)}`, {
      subject: basePath,
      hint: "Give the folder that holds the test folders (deno task upload <base_path>)",
    });
  }
  if (!info.isDirectory) {
    throw new UploadError("usage", `Not a directory: ${basePath}`, {
      subject: basePath,
      hint: "Give the folder that holds the test folders, not a file in it",
    });
  }
}
