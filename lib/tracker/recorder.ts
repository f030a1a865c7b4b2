/**
 * What a run asks of its tracker, as one interface ({@linkcode RunRecorder}), and a
 * tracker that records nothing ({@linkcode NoTracker}) for runs without one (a quick
 * upload with no tracking database): with it, the engine, the planner and the committer
 * can call the recorder always instead of checking for a missing tracker.
 *
 * {@linkcode NoTracker} answers every question as a new, empty tracker would (nothing is
 * known, nothing is owed) and forgets every write. Two answers differ from "no tracker" as
 * callers treat it today, and a caller switching over keeps them by asking `recording`:
 *
 * - `objectStored` always says `false`; `putFolderObjects` asks the store (HEAD) first
 *   when it is given no `isStored`, and trusts `isStored` when given one;
 * - `startRun` returns 0, a run id no tracker hands out (ids start at 1), where callers
 *   use `null` today for "not recorded".
 *
 * @module
 */

import type { RunStatus } from "../core/errors.ts";
import { decideFolder, type DiffOptions } from "../plan/diff.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import type { BatchRecord, FolderOutcome } from "./batches.ts";
import type { OwedMarker } from "./owed.ts";
import type { ScanDecision } from "./scan.ts";

/** The tracked folders by state ({@linkcode RunRecorder.folderCounts}). */
export interface FolderCounts {
  /** Folders whose last upload failed. */
  failed: number;
  /** Failed folders that used up their retries. */
  exhausted: number;
  /** Folders waiting to be uploaded. */
  pending: number;
  /** Folders still being written. */
  settling: number;
  /** Markers owed to folders that could not be written. */
  markersOwed: number;
}

/**
 * What the engine (lib/engine), the planner (lib/plan/planner.ts) and the committer
 * (lib/commit/committer.ts) record in, and read from, the tracker during a run. `Tracker`
 * implements it; so does {@linkcode NoTracker}, which records nothing. See `Tracker` for
 * what each method does.
 */
export interface RunRecorder {
  /** Whether what is recorded is kept: `false` for a recorder that records nothing. */
  readonly recording: boolean;
  /** The tracking database's file, or null when there is none. */
  readonly path: string | null;

  // The run (lib/engine/run.ts, lib/engine/engine.ts).
  /** Records the start of a run; returns its id. */
  startRun(basePath: string | null, mode: string, now?: Date): number;
  /** Records how a run ended. */
  finishRun(
    runId: number,
    status: RunStatus,
    summary: unknown,
    scanComplete: boolean,
    now?: Date,
  ): void;
  /** Reads a setting (`device_id`, `target`). */
  getMeta(key: string): string | undefined;
  /** Writes a setting. */
  setMeta(key: string, value: string): void;
  /** Records the target rows go to; returns how many folders are pending again. */
  useTarget(targetId: string): number;
  /** The base folders tracked folders were found under, deepest first. */
  knownBases(): string[];
  /** Failed folders that used up their retries. */
  countExhausted(maxRetries: number): number;
  /** The tracked folders by state, for the device's health record; null: nothing tracked. */
  folderCounts(maxRetries: number): FolderCounts | null;

  // Markers owed (lib/engine/run.ts).
  /** Remembers markers that could not be written. */
  oweMarkers(owed: readonly OwedMarker[]): void;
  /** Markers owed that still describe their folder, by path. */
  owedMarkers(limit: number, after?: string): OwedMarker[];
  /** Forgets owed markers now written. */
  markersWritten(paths: readonly string[]): void;
  /** How many markers are owed. */
  countOwedMarkers(): number;

  // The scan (lib/plan/planner.ts).
  /** Starts a complete walk of `base`. */
  beginPass(base: string, runId: number): void;
  /** Forgets the walk begun (it did not see the whole tree). */
  abandonPass(): void;
  /** Ends the walk: folders it did not see are missing. */
  endPass(now?: Date, limit?: number): { count: number; sample: string[] };
  /** Decides a chunk of scanned folders (and records them unless `dryRun`). */
  applyScan(
    snapshots: readonly FolderSnapshot[],
    runId: number,
    basePath: string | null,
    options: DiffOptions & { dryRun?: boolean; remote?: boolean },
  ): ScanDecision[];
  /** Remembers what a walk could not read. */
  recordProblems(
    base: string | null,
    runId: number,
    problems: readonly { path: string; reason: string }[],
    when?: Date,
  ): void;
  /** Remembers links a walk did not follow; returns those met for the first time. */
  recordSkipped(
    base: string | null,
    runId: number,
    skipped: readonly { path: string; reason: string }[],
    when?: Date,
  ): { path: string; reason: string }[];
  /** Records folders whose content the server already holds as uploaded. */
  recordAdopted(
    entries: readonly { path: string; fingerprint: string; contentHash: string }[],
    when?: Date,
  ): void;
  /** Records folders that failed before reaching the server. */
  recordFolderFailures(
    failures: readonly { path: string; error: string }[],
    when?: Date,
    options?: { markers?: boolean },
  ): void;

  // Objects (lib/plan/planner.ts, lib/commit/committer.ts).
  /** Whether an image is recorded as stored under `key` with this size. */
  objectKnown(folderPath: string, name: string, key: string, size: number): boolean;
  /** Whether an image is recorded as stored under `key` with this size and MD5. */
  objectStored(folderPath: string, name: string, key: string, size: number, md5: string): boolean;
  /** Records a folder's images as stored. */
  recordObjects(
    folderPath: string,
    objects: readonly { name: string; key: string; size: number; md5: string }[],
    when?: Date,
  ): void;

  // Batches (lib/commit/committer.ts).
  /** Records a batch about to be sent. */
  startBatch(batchId: string, batchName: string, runId: number, total: number, start: Date): void;
  /** Records a batch's outcome and its folders'. */
  recordBatch(batch: BatchRecord, outcomes: readonly FolderOutcome[]): void;
  /** Records a batch that got no answer. */
  abandonBatch(batchId: string, status: "interrupted" | "failed", end?: Date): void;

  // --verify (lib/engine/verify.ts).
  /** Forgets the server rows a previous `--verify` read. */
  clearRemote(): void;
  /** Adds server rows read by `--verify`. */
  addRemote(rows: readonly [string, string | null][]): void;
  /** Makes folders whose server row is gone or different pending again. */
  requeueFromRemote(base: string, when?: Date): { missing: number; changed: number };
  /** Keys of the folders under `base` on disk, a page at a time. */
  baseKeys(base: string, after: number, limit: number): { keys: string[]; next: number };
  /** Ends a `--verify`: orphans recorded, rows read forgotten. */
  finishVerify(
    base: string,
    report: Record<string, unknown>,
    limit?: number,
  ): { orphans: number; sample: string[] };
}

/**
 * A tracker that records nothing: reads answer as an empty tracker would, writes are
 * dropped. For runs without a tracking database.
 *
 * @example
 * ```ts
 * const recorder: RunRecorder = tracker ?? new NoTracker();
 * recorder.recordBatch(batch, outcomes); // kept by a Tracker, dropped by a NoTracker
 * ```
 */
export class NoTracker implements RunRecorder {
  /** Nothing is kept. */
  readonly recording = false;
  /** No file. */
  readonly path = null;

  /** No run is recorded: 0, an id no tracker hands out. */
  startRun(_basePath: string | null, _mode: string, _now?: Date): number {
    return 0;
  }
  /** Drops the run's end. */
  finishRun(): void {}
  /** No settings are kept: always undefined. */
  getMeta(_key: string): string | undefined {
    return undefined;
  }
  /** Drops the setting. */
  setMeta(_key: string, _value: string): void {}
  /** Nothing was uploaded anywhere: 0 folders re-queued. */
  useTarget(_targetId: string): number {
    return 0;
  }
  /** No bases are known. */
  knownBases(): string[] {
    return [];
  }
  /** No folder has failed before. */
  folderCounts(_maxRetries: number): FolderCounts | null {
    return null;
  }
  /** Nothing failed: 0. */
  countExhausted(_maxRetries: number): number {
    return 0;
  }
  /** Drops the owed markers. */
  oweMarkers(_owed: readonly OwedMarker[]): void {}
  /** No marker is owed. */
  owedMarkers(_limit: number, _after?: string): OwedMarker[] {
    return [];
  }
  /** Nothing to forget. */
  markersWritten(_paths: readonly string[]): void {}
  /** No marker is owed. */
  countOwedMarkers(): number {
    return 0;
  }
  /** No pass is kept. */
  beginPass(_base: string, _runId: number): void {}
  /** No pass is kept. */
  abandonPass(): void {}
  /** Nothing is tracked, so nothing is missing. */
  endPass(_now?: Date, _limit?: number): { count: number; sample: string[] } {
    return { count: 0, sample: [] };
  }

  /**
   * Decides every folder as new to the tracker (the diff rule with no tracked row), in
   * order, and writes nothing.
   */
  applyScan(
    snapshots: readonly FolderSnapshot[],
    _runId: number,
    _basePath: string | null,
    options: DiffOptions & { dryRun?: boolean; remote?: boolean },
  ): ScanDecision[] {
    return snapshots.map((snapshot) => ({
      ...decideFolder(undefined, snapshot, options),
      snapshot,
      uploadedContent: null,
      objectsDest: null,
    }));
  }

  /** Drops the problems. */
  recordProblems(): void {}
  /** Nothing is remembered, so every link is met for the first time: all of them. */
  recordSkipped(
    _base: string | null,
    _runId: number,
    skipped: readonly { path: string; reason: string }[],
  ): { path: string; reason: string }[] {
    return [...skipped];
  }
  /** Drops the adopted folders. */
  recordAdopted(): void {}
  /** Drops the failures. */
  recordFolderFailures(): void {}
  /** No image is known. */
  objectKnown(_folderPath: string, _name: string, _key: string, _size: number): boolean {
    return false;
  }
  /** No image is known as stored (see the module's note on `recording`). */
  objectStored(
    _folderPath: string,
    _name: string,
    _key: string,
    _size: number,
    _md5: string,
  ): boolean {
    return false;
  }
  /** Drops the stored images. */
  recordObjects(): void {}
  /** Drops the batch. */
  startBatch(): void {}
  /** Drops the batch's outcome. */
  recordBatch(_batch: BatchRecord, _outcomes: readonly FolderOutcome[]): void {}
  /** Drops the batch. */
  abandonBatch(): void {}
  /** Nothing to forget. */
  clearRemote(): void {}
  /** Drops the server's rows. */
  addRemote(_rows: readonly [string, string | null][]): void {}
  /** Nothing is recorded as uploaded, so nothing is re-queued. */
  requeueFromRemote(_base: string, _when?: Date): { missing: number; changed: number } {
    return { missing: 0, changed: 0 };
  }
  /** No folder is tracked: an empty page, the position unchanged. */
  baseKeys(_base: string, after: number, _limit: number): { keys: string[]; next: number } {
    return { keys: [], next: after };
  }
  /** No server rows were kept, so there are no orphans. */
  finishVerify(
    _base: string,
    _report: Record<string, unknown>,
    _limit?: number,
  ): { orphans: number; sample: string[] } {
    return { orphans: 0, sample: [] };
  }
}
