/**
 * The local tracking database (SQLite through `node:sqlite`): which folders exist, what
 * was uploaded, what failed and why, and one row per upload batch. Keeps the original
 * tool's `folder_status` and `upload_batches` tables and column names, so the queries in
 * its documentation keep working, and adds what resuming and change detection need.
 *
 * One run at a time per database: {@linkcode Tracker.open} with `lock: true` takes an OS
 * file lock (flock) that dies with its process, so a killed run never blocks the next.
 *
 * {@linkcode Tracker} is the one entry point; the work is done by:
 *
 * - db.ts: the connection, its statements, transactions and faults;
 * - open.ts: the lock, a damaged file moved aside, the connection's settings;
 * - migrations.ts: the schema and its migrations;
 * - scan.ts: a scan's chunk decided and written ({@linkcode Tracker.applyScan});
 * - passes.ts: complete walks (missing folders), problems met, moved bases;
 * - batches.ts: runs, batches and folder outcomes;
 * - objects.ts: the images stored (`--images-to`);
 * - remote.ts: the server's rows read by `--verify`;
 * - meta.ts: device id and target;
 * - owed.ts: markers owed;
 * - status.ts: the `--status` report;
 * - recorder.ts: {@linkcode RunRecorder}, what a run records, and {@linkcode NoTracker}.
 *
 * @module
 */

import type { DatabaseSync } from "node:sqlite";
import type { DiffOptions } from "../plan/diff.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import { messageOf, type RunStatus, UploadError } from "../core/errors.ts";
import { readStatus, type StatusOptions, type StatusReport } from "./status.ts";
import type { HeldLock } from "./lock.ts";
import { trackerFault } from "./faults.ts";
import { TrackerDb } from "./db.ts";
import { acquireLock, moveAside, openDatabase } from "./open.ts";
import { migrate, schemaVersion } from "./migrations.ts";
import { applyScan, LegacyRows, type ScanDecision } from "./scan.ts";
import * as passes from "./passes.ts";
import * as batches from "./batches.ts";
import type { BatchRecord, FolderOutcome } from "./batches.ts";
import * as objects from "./objects.ts";
import * as remote from "./remote.ts";
import * as meta from "./meta.ts";
import * as owed from "./owed.ts";
import type { OwedMarker } from "./owed.ts";
import type { FolderCounts, RunRecorder } from "./recorder.ts";

export type { FailureEntry, StatusOptions, StatusReport } from "./status.ts";
export { SCHEMA_VERSION } from "./migrations.ts";
export type { ScanDecision } from "./scan.ts";
export type { BatchRecord, FolderOutcome } from "./batches.ts";
export type { OwedMarker } from "./owed.ts";
export { acquireLock, type LockHolder } from "./open.ts";
export { NoTracker, type RunRecorder } from "./recorder.ts";

/** Settings for {@linkcode Tracker.open}. */
export interface TrackerOpenOptions {
  /** Take the one-run-at-a-time lock (a run that writes). Default `true`. */
  lock?: boolean;
  /** Open without creating or migrating (for `--status` on a missing file). Default `false`. */
  readOnly?: boolean;
  /** What to record as the lock holder's command. */
  command?: string;
  /**
   * Move the database file (and its `-wal` and `-shm` files) aside first, to
   * `<path>.damaged-<time>`, and start a new one (`--rebuild-tracker`): the device id is
   * kept when the old file still tells it. Default `false`.
   */
  moveAside?: boolean;
}

/** The local tracking database. */
export class Tracker implements RunRecorder {
  /** The database file (`:memory:` for one in memory). */
  readonly path: string;
  /** The SQLite connection (for reading it directly; writes go through the methods). */
  readonly db: DatabaseSync;
  /** A tracker records what it is told: always `true` (see {@linkcode NoTracker}). */
  readonly recording = true;
  /** Where {@linkcode TrackerOpenOptions.moveAside} moved the old file, if it did. */
  movedAside: string | null = null;
  #db: TrackerDb;
  #lock: HeldLock | null = null;
  #pass: passes.WalkPass | null = null;
  #legacy = new LegacyRows();

  private constructor(db: TrackerDb) {
    this.#db = db;
    this.path = db.path;
    this.db = db.db;
  }

  /**
   * Opens (creating and migrating as needed) the tracking database at `path`.
   *
   * @throws {UploadError} kind `locked` when another live process holds the lock, naming it;
   * kind `config` when the file cannot be opened or is not a tracking database.
   */
  static open(path: string, options: TrackerOpenOptions = {}): Tracker {
    const lock = options.lock ?? true;
    let held: HeldLock | null = null;
    if (lock && path !== ":memory:") held = acquireLock(`${path}.lock`, options.command);
    let aside: { to: string; deviceId?: string } | null = null;
    let db: DatabaseSync;
    try {
      if (options.moveAside && path !== ":memory:") {
        try {
          aside = moveAside(path);
        } catch (error) {
          throw trackerFault(path, error) ?? error;
        }
      }
      db = openDatabase(path, options.readOnly ?? false);
    } catch (error) {
      held?.release();
      throw error;
    }
    const tracker = new Tracker(new TrackerDb(path, db));
    tracker.#lock = held;
    try {
      if (!options.readOnly) migrate(tracker.#db);
      tracker.movedAside = aside?.to ?? null;
      if (aside?.deviceId) tracker.setMeta("device_id", aside.deviceId);
    } catch (error) {
      tracker.close();
      if (error instanceof UploadError) throw error;
      throw trackerFault(path, error) ??
        new UploadError(
          "config",
          `Cannot prepare tracking database ${path}: ${messageOf(error)}`,
          { subject: path, cause: error },
        );
    }
    return tracker;
  }

  /** The schema version recorded in the database (0 for an empty file). */
  schemaVersion(): number {
    return schemaVersion(this.#db);
  }

  /**
   * Runs `fn` in one transaction; rolls back and rethrows when it throws. First checks that
   * the file is still the one opened (see {@linkcode checkFile}).
   *
   * @throws {UploadError} kind `config` for a fault of the file or its disk (see
   * lib/tracker/faults.ts), else what `fn` threw.
   */
  transaction<T>(fn: () => T): T {
    return this.#db.transaction(fn);
  }

  /**
   * Checks that the tracking database is still at its path as opened: one deleted or
   * replaced meanwhile would take what this run records with it, silently.
   *
   * @throws {UploadError} kind `config` naming the file, when it was deleted or replaced.
   */
  checkFile(): void {
    this.#db.checkFile();
  }

  /** Reads a meta value. */
  getMeta(key: string): string | undefined {
    return meta.getMeta(this.#db, key);
  }

  /** Writes a meta value. */
  setMeta(key: string, value: string): void {
    meta.setMeta(this.#db, key, value);
  }

  /**
   * This device's id: `preferred` when given (and then remembered), else the id kept in
   * the tracker, else the machine's default id (`localDeviceId`), kept from now on.
   */
  deviceId(preferred?: string): string {
    return meta.deviceId(this.#db, preferred);
  }

  /**
   * Records the start of a run and closes the books on runs and batches that a killed
   * process left `running` (this process holds the lock, so they are dead).
   */
  startRun(basePath: string | null, mode: string, now = new Date()): number {
    return batches.startRun(this.#db, { basePath, mode, now });
  }

  /**
   * Records every run and batch still marked `running` as interrupted, for a process that
   * quits at once (a second Ctrl-C) without waiting for its batches. Call it only while
   * holding the lock: every running row is then this process's or a dead one's. Their
   * folders stay pending.
   */
  markInterrupted(now = new Date()): void {
    batches.markInterrupted(this.#db, now);
  }

  /** Records how a run ended. `scanComplete` says the whole tree was walked. */
  finishRun(
    runId: number,
    status: RunStatus,
    summary: unknown,
    scanComplete: boolean,
    now = new Date(),
  ): void {
    batches.finishRun(this.#db, runId, { status, summary, scanComplete, now });
  }

  /**
   * Starts a complete walk of `base`: the rows {@linkcode applyScan} sees from now on are
   * remembered (a bit per row, no write), so {@linkcode endPass} can tell which tracked
   * folders the walk did not find.
   */
  beginPass(base: string, runId: number): void {
    this.#pass = passes.WalkPass.begin(this.#db, base, runId);
  }

  /** Forgets the walk started by {@linkcode beginPass} (it did not see the whole tree). */
  abandonPass(): void {
    this.#pass = null;
  }

  /**
   * Ends the walk started by {@linkcode beginPass}: tracked folders under its base that it
   * did not see are marked missing (never deleted), folders seen again lose the mark, and
   * problems it no longer met are forgotten. When every tracked folder was seen (the usual
   * case) this costs two counts, no scan of the table.
   *
   * @returns how many folders under the base are missing, and the first few paths.
   */
  endPass(now = new Date(), limit = 10): { count: number; sample: string[] } {
    const pass = this.#pass;
    if (!pass) return { count: 0, sample: [] };
    this.#pass = null;
    return pass.end(this.#db, now, limit);
  }

  /**
   * Applies the diff rule to a chunk of scanned folders in one transaction and returns a
   * decision per folder, in order. New folders are inserted as pending, changed ones are
   * reset to pending with retry_count 0; an unchanged one is written only when something
   * about it moved (its settling flag, its base, a missing mark), so rescanning an
   * unchanged tree writes nothing. A path given more than once (a folder named by a
   * file-system event and found again by a walk in the same chunk) is decided once, by its
   * last snapshot: the earlier ones come back as superseded (nothing to upload or hold back).
   */
  applyScan(
    snapshots: readonly FolderSnapshot[],
    runId: number,
    basePath: string | null,
    options: DiffOptions & { dryRun?: boolean; remote?: boolean },
  ): ScanDecision[] {
    const pass = this.#pass !== null && this.#pass.base === basePath ? this.#pass : null;
    return applyScan(this.#db, snapshots, {
      ...options,
      runId,
      basePath,
      pass,
      legacy: this.#legacy,
    });
  }

  /** Failed folders that reached `maxRetries` and are no longer retried until they change. */
  countExhausted(maxRetries: number): number {
    return batches.countExhausted(this.#db, maxRetries);
  }

  /**
   * Keys of the folders under `base` found on disk, a page at a time in the table's own
   * order: those after `after` (a position returned before; 0 for the first page).
   */
  baseKeys(base: string, after: number, limit: number): { keys: string[]; next: number } {
    return remote.baseKeys(this.#db, base, after, limit);
  }

  /** Forgets the server rows a previous `--verify` read, before reading them again. */
  clearRemote(): void {
    remote.clearRemote(this.#db);
  }

  /** Adds rows read from the server (key, content hash) in one transaction. */
  addRemote(rows: readonly [string, string | null][]): void {
    remote.addRemote(this.#db, rows);
  }

  /**
   * Compares folders recorded as uploaded under `base` with the server's rows read by
   * {@linkcode addRemote}: one whose row is gone, or holds other content, is pending again.
   *
   * @returns how many were missing on the server and how many differed.
   */
  requeueFromRemote(base: string, when = new Date()): { missing: number; changed: number } {
    return remote.requeueFromRemote(this.#db, base, when);
  }

  /**
   * Ends a `--verify` run: server rows of this device with no folder on disk under `base`
   * are recorded as orphans (listed by `--status --json`, never deleted), the rows read are
   * forgotten, and what the verify found is kept for `--status`.
   */
  finishVerify(
    base: string,
    report: Record<string, unknown>,
    limit = 10,
  ): { orphans: number; sample: string[] } {
    return remote.finishVerify(this.#db, base, report, limit);
  }

  /** Inserts a batch row with status `running` before its statement is sent. */
  startBatch(batchId: string, batchName: string, runId: number, total: number, start: Date): void {
    batches.startBatch(this.#db, { batchId, batchName, runId, total, start });
  }

  /**
   * Records a batch's outcome in one transaction: acknowledged folders become `success`
   * with the fingerprint taken before they were read; failed ones become `failed` with
   * their message and one more retry counted.
   */
  recordBatch(batch: BatchRecord, outcomes: readonly FolderOutcome[]): void {
    batches.recordBatch(this.#db, batch, outcomes);
  }

  /** Marks a batch that never got an answer (interrupted, server gone). Its folders stay pending. */
  abandonBatch(batchId: string, status: "interrupted" | "failed", end = new Date()): void {
    batches.abandonBatch(this.#db, batchId, { status, when: end });
  }

  /**
   * Records folders that failed before reaching the server (e.g. a broken stats.json);
   * with `markers`, their failed.json is written next (see {@linkcode BatchRecord.markers}).
   */
  recordFolderFailures(
    failures: readonly { path: string; error: string }[],
    when = new Date(),
    options: { markers?: boolean } = {},
  ): void {
    batches.recordFolderFailures(this.#db, failures, { when, markers: options.markers });
  }

  /**
   * Remembers markers that could not be written (a read-only card, a full disk), so later
   * runs write them once the folder can be written, without sending the row again. One
   * transaction.
   */
  oweMarkers(owedMarkers: readonly OwedMarker[]): void {
    owed.oweMarkers(this.#db, owedMarkers);
  }

  /** Forgets owed markers that have now been written. One transaction. */
  markersWritten(paths: readonly string[]): void {
    owed.markersWritten(this.#db, paths);
  }

  /**
   * Markers owed by earlier outcomes that still describe their folder (a folder changed
   * since, or gone, is left out: its next outcome writes a new one), by path, after
   * `after`, at most `limit`.
   */
  owedMarkers(limit: number, after = ""): OwedMarker[] {
    return owed.owedMarkers(this.#db, limit, after);
  }

  /** How many markers are owed (see {@linkcode owedMarkers}). */
  countOwedMarkers(): number {
    return owed.countOwedMarkers(this.#db);
  }

  /**
   * Records folders whose files changed while their content did not (a `touch`, a copy that
   * reset modification times): the server already holds their row, so they become
   * `success` with the new fingerprint and nothing is sent.
   */
  recordAdopted(
    entries: readonly { path: string; fingerprint: string; contentHash: string }[],
    when = new Date(),
  ): void {
    batches.recordAdopted(this.#db, entries, when);
  }

  /**
   * Remembers folders or files the scan of `base` could not read, so `--status` lists them
   * until a complete scan no longer meets them.
   */
  recordProblems(
    base: string | null,
    runId: number,
    problems: readonly { path: string; reason: string }[],
    when = new Date(),
  ): void {
    passes.recordProblems(this.#db, problems, { base, runId, when });
  }

  /**
   * Remembers symbolic links the scan of `base` did not follow (links to folders, loops),
   * so each is reported once and `--status` lists them until a complete scan no longer
   * meets them.
   *
   * @returns the links met for the first time (those to report).
   */
  recordSkipped(
    base: string | null,
    runId: number,
    skipped: readonly { path: string; reason: string }[],
    when = new Date(),
  ): { path: string; reason: string }[] {
    return passes.recordSkipped(this.#db, skipped, { base, runId, when });
  }

  /**
   * Tells the tracker that the base folder `from` now lives at `to` (a renamed folder, a
   * disk mounted elsewhere): every folder tracked under `from` keeps its status, key and
   * fingerprint under the new path, so a scan of `to` finds them unchanged and sends
   * nothing. Folders already tracked under `to` (a scan of it made before this) give way to
   * the moved ones. One transaction.
   *
   * @returns how many folders moved, and how many earlier entries under `to` were replaced.
   * @throws {UploadError} kind `usage` when nothing is tracked under `from`.
   */
  moveBase(from: string, to: string): { moved: number; replaced: number } {
    return passes.moveBase(this.#db, from, to);
  }

  /**
   * Whether the image `name` of a folder is recorded as stored under `key` with this size
   * and MD5 (`--images-to`): then it is not put again.
   */
  objectStored(folderPath: string, name: string, key: string, size: number, md5: string): boolean {
    return objects.objectStored(this.#db, folderPath, { name, key, size, md5 });
  }

  /** Whether an image is recorded as stored under `key` with this size (for a dry run's count). */
  objectKnown(folderPath: string, name: string, key: string, size: number): boolean {
    return objects.objectKnown(this.#db, folderPath, { name, key, size });
  }

  /** Records the images of a folder as stored, before its row is written. One transaction. */
  recordObjects(
    folderPath: string,
    stored: readonly { name: string; key: string; size: number; md5: string }[],
    when = new Date(),
  ): void {
    objects.recordObjects(this.#db, folderPath, stored, when);
  }

  /** The base folders tracked folders were found under, deepest first. */
  knownBases(): string[] {
    return passes.knownBases(this.#db);
  }

  /** The tracked folders by state, for the device's health record. */
  folderCounts(maxRetries: number): FolderCounts {
    const status = this.status({ limit: 0, batches: 0, maxRetries });
    return {
      failed: status.byStatus.failed ?? 0,
      exhausted: status.exhaustedTotal,
      pending: status.byStatus.pending ?? 0,
      settling: status.settling,
      markersOwed: status.markersOwedTotal,
    };
  }

  /** The report behind `--status` (see lib/tracker/status.ts). */
  status(options: StatusOptions = {}): StatusReport {
    try {
      return readStatus(this.db, this.path, this.schemaVersion(), options);
    } catch (error) {
      throw this.#db.fault(error);
    }
  }

  /**
   * Records which server rows go to. When it differs from the one recorded before, every
   * folder uploaded elsewhere becomes pending again, so the new target gets all of them;
   * failed folders get their retries back, as the new target may take them.
   *
   * @returns how many folders recorded as uploaded elsewhere are pending again (0 when the
   * target is the same or new; failed folders are not counted: they were never uploaded).
   */
  useTarget(targetId: string): number {
    return meta.useTarget(this.#db, targetId);
  }

  /** Closes the database and releases the lock. */
  close(): void {
    this.#db.close();
    this.#lock?.release();
    this.#lock = null;
  }
}
