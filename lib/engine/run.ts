/**
 * The state of one run, in one object: its settings, counters, tracker, the stop switch,
 * the error that stopped it, and the few things every stage does the same way (report an
 * event, fail a folder, write a marker). The planner and the committer share this object
 * instead of closures over loose variables.
 *
 * @module
 */

import { markerNames, type UploaderConfig } from "../../config.ts";
import { messageOf, UploadError } from "../core/errors.ts";
import type { EngineEvent, RunCounters, RunMode } from "../core/events.ts";
import { type FailedMarker, MarkerWriter, type SuccessMarker } from "../commit/markers.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import { ActivityLog } from "../source/sources.ts";
import type { ObjectStore } from "../objects/storage.ts";
import type { OwedMarker, Tracker } from "../tracker/tracker.ts";

/** Where a run stores images (`--images-to`). */
export interface ObjectsSetup {
  store: ObjectStore;
  /** This device's id: part of every object key. */
  deviceId: string;
}

/** Settings of a {@linkcode Run}. */
export interface RunSettings {
  config: UploaderConfig;
  mode: RunMode;
  /** Records folders, batches and the run; null records nothing (quick upload without one). */
  tracker: Tracker | null;
  /** The base the run is about (recorded with the run), or null. */
  base: string | null;
  /** This device's id (recorded in success.json); the schema step may settle another. */
  deviceId: string;
  /** Write success.json / failed.json. Default true (never in a dry run or a scan). */
  markers?: boolean;
  /** Send the per-folder step events (quick upload's step lines). Default false. */
  folderEvents?: boolean;
  /** Receives every event. */
  onEvent?: (event: EngineEvent) => void;
  /** Counters to update, so a progress display can read them. */
  counters: RunCounters;
  /** Images go to object storage before their rows (`--images-to`). */
  objects?: ObjectsSetup | null;
  /** The clock. Default Date.now. */
  now?: () => number;
}

/** One run's state, shared by its stages. */
export class Run {
  readonly config: UploaderConfig;
  readonly mode: RunMode;
  readonly tracker: Tracker | null;
  readonly base: string | null;
  readonly counters: RunCounters;
  readonly now: () => number;
  readonly startedAt: number;
  /** The tracker's id of this run, or null when nothing is recorded (dry run, no tracker). */
  readonly runId: number | null;
  /** Whether folder step events are sent. */
  readonly folderEvents: boolean;
  /** This device's id, as settled (see {@linkcode Run.useDevice}). */
  deviceId: string;
  /** Where images go, or null. */
  readonly objects: ObjectsSetup | null;
  /** Writes markers off the hot path; null when markers are off. */
  readonly markers: MarkerWriter | null;
  /** `--verify`: the server's content hashes were read; folders are compared with them. */
  verifying = false;
  /** Set once a walk of the whole base ended (tracked folders it missed are marked missing). */
  completedPass = false;
  /** When file-system events last named each folder (`--watch`): they settle from then. */
  readonly activity: ActivityLog;
  /**
   * Folders packed into a batch and not yet recorded, with the fingerprint they go with: a
   * folder seen again with the same files while its row is on its way is not sent twice.
   */
  readonly sending: Map<string, string> = new Map();
  /** Aborted when the run must stop: the user asked, or an error stopped it. */
  readonly stop: AbortController = new AbortController();
  readonly #onEvent: (event: EngineEvent) => void;
  readonly #stamp: string;
  #error: UploadError | undefined;
  #interrupted = false;
  #stopped = false;
  #batchSeq = 0;

  constructor(settings: RunSettings) {
    this.config = settings.config;
    this.mode = settings.mode;
    this.tracker = settings.tracker;
    this.base = settings.base;
    this.counters = settings.counters;
    this.now = settings.now ?? Date.now;
    this.startedAt = this.now();
    this.folderEvents = settings.folderEvents ?? false;
    this.deviceId = settings.deviceId;
    this.objects = settings.objects ?? null;
    this.#onEvent = settings.onEvent ?? (() => {});
    this.activity = new ActivityLog(this.config.minAgeSeconds * 1000 + 1000);
    const writes = this.mode !== "dry-run" && this.mode !== "scan-only";
    this.markers = writes && (settings.markers ?? true)
      ? new MarkerWriter(this.config, {
        onError: (path, error, marker) => {
          this.counters.markerErrors++;
          this.emit({
            event: "marker_error",
            path,
            error: `Cannot write marker in ${path}: ${messageOf(error)}`,
          });
          // Owed from now on: a later run writes it once the folder can be written.
          this.#recording(() => this.tracker?.oweMarkers([{ path, marker }]));
        },
        onWritten: this.folderEvents
          ? (path, name, marker) =>
            this.emit({ event: "marker_written", path, key: marker.folder_key, marker: name })
          : undefined,
      })
      : null;
    this.runId = this.tracker && this.mode !== "dry-run"
      ? this.tracker.startRun(this.base, this.mode, new Date(this.startedAt))
      : null;
    this.#stamp = new Date(this.startedAt).toISOString().replace(/[-:]/g, "").replace("T", "_")
      .slice(0, 15);
  }

  /**
   * The device the schema step settled: its id goes into success.json and object keys, and
   * is kept in the tracker (except in a dry run).
   */
  useDevice(id: string): void {
    this.deviceId = id;
    if (this.objects) this.objects.deviceId = id;
    if (this.tracker && this.mode !== "dry-run") this.tracker.setMeta("device_id", id);
  }

  /** Reports an event. */
  emit(event: EngineEvent): void {
    this.#onEvent(event);
  }

  /** Whether the run is stopping (no new batch may start). */
  get stopping(): boolean {
    return this.stop.signal.aborted;
  }

  /** The error that stopped the run, if one did. */
  get error(): UploadError | undefined {
    return this.#error;
  }

  /** Whether the user interrupted the run. */
  get interrupted(): boolean {
    return this.#interrupted;
  }

  /** Whether the run was asked to stop gracefully (SIGTERM in watch mode). */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Stops the run because of `error`: the first error wins and is reported once. Anything
   * that is not an {@linkcode UploadError} is a bug or an environment failure (`fatal`);
   * an `interrupted` error only stops.
   */
  fail(error: unknown): void {
    const e = error instanceof UploadError
      ? error
      : new UploadError("fatal", messageOf(error), { cause: error });
    if (e.kind === "interrupted") {
      // Statements abandoned after a graceful stop ran out of time: still that stop.
      if (!this.#stopped) this.#interrupted = true;
    } else if (!this.#error) {
      this.#error = e;
      this.emit({
        event: "stopping",
        reason: e.message,
        kind: e.kind,
        ...(e.hint ? { hint: e.hint } : {}),
      });
    }
    this.stop.abort();
  }

  /** The user asked the run to stop: batches in flight may finish, none starts. */
  interrupt(): void {
    if (this.stopping) return;
    this.#interrupted = true;
    this.emit({ event: "stopping", reason: "interrupted" });
    this.stop.abort();
  }

  /** A graceful stop (SIGTERM in watch mode): like an interrupt, but a normal end. */
  finish(): void {
    if (this.stopping) return;
    this.#stopped = true;
    this.emit({ event: "stopping", reason: "asked to stop" });
    this.stop.abort();
  }

  /** Runs a tracker write off the run's main path; a failure stops the run (not a crash). */
  #recording(write: () => void): void {
    if (this.runId === null) return;
    try {
      write();
    } catch (error) {
      this.fail(error);
    }
  }

  /**
   * Writes the markers earlier runs could not write (a card that was read-only, a disk
   * that was full), without sending their rows again, and removes the opposite marker.
   * Goes in chunks, in path order; a chunk of which nothing could be written means the
   * folders are still not writable, and the rest wait for a later run.
   */
  async catchUpMarkers(chunk = 256): Promise<void> {
    const tracker = this.tracker;
    if (!this.markers || !tracker || this.runId === null) return;
    let after = "";
    let written = 0;
    let done: string[] = [];
    const writer = new MarkerWriter(this.config, {
      onError: () => {/* still owed: the folder is not writable yet */},
      onWritten: (path) => done.push(path),
    });
    try {
      while (!this.stopping) {
        const owed: OwedMarker[] = tracker.owedMarkers(chunk, after);
        if (owed.length === 0) break;
        after = owed[owed.length - 1].path;
        done = [];
        for (const o of owed) {
          await writer.write(o.path, o.marker);
        }
        await writer.flush();
        tracker.markersWritten(done);
        written += done.length;
        if (done.length === 0) break;
      }
    } finally {
      await writer.drain();
    }
    this.counters.markersCaughtUp += written;
    if (written > 0) {
      this.emit({ event: "markers_caught_up", written, owed: tracker.countOwedMarkers() });
    }
  }

  /** The next batch's name and tracker id. */
  nextBatch(): { name: string; id: string } {
    this.#batchSeq++;
    const seq = String(this.#batchSeq).padStart(4, "0");
    const prefix = this.mode === "quick" ? "quick" : "batch";
    return {
      name: `${prefix}_${this.#stamp}_${seq}`,
      id: `${this.runId ?? `${prefix}-${this.startedAt}`}-${this.#batchSeq}`,
    };
  }

  /**
   * Fails folders that never reached the server (a bad stats.json, a path that is no upload
   * unit): counts them, records them in the tracker, reports them and writes their marker.
   */
  async failFolders(
    failures: readonly {
      path: string;
      key: string | null;
      error: string;
      snapshot?: FolderSnapshot;
    }[],
  ): Promise<void> {
    if (failures.length === 0) return;
    const recorded = failures.filter((f) => f.snapshot !== undefined);
    if (this.tracker && this.runId !== null && recorded.length > 0) {
      this.tracker.recordFolderFailures(
        recorded.map((f) => ({ path: f.path, error: f.error })),
        new Date(this.now()),
        { markers: this.markers !== null },
      );
    }
    for (const f of failures) {
      this.counters.failed++;
      this.emit({ event: "folder_failed", path: f.path, key: f.key, error: f.error });
      if (f.snapshot) await this.failedMarker(f.snapshot, f.error);
    }
  }

  /** Writes success.json for an acknowledged folder. */
  async successMarker(
    snap: FolderSnapshot,
    details: Omit<
      SuccessMarker,
      "status" | "folder_name" | "folder_key" | "device_id" | "folder_hash"
    >,
  ): Promise<void> {
    await this.markers?.write(snap.path, {
      status: "success",
      folder_name: snap.name,
      folder_key: snap.key,
      device_id: this.deviceId,
      ...details,
      folder_hash: snap.fingerprint,
    }, snap.files.map((f) => f.name));
  }

  /** Writes failed.json for a failed folder. */
  async failedMarker(snap: FolderSnapshot, error: string): Promise<void> {
    const marker: FailedMarker = {
      status: "failed",
      folder_name: snap.name,
      folder_key: snap.key,
      failed_time: new Date(this.now()).toISOString(),
      error,
    };
    await this.markers?.write(snap.path, marker, snap.files.map((f) => f.name));
  }

  /** The marker names the scan leaves out of fingerprints. */
  markerNames(): Set<string> {
    return markerNames(this.config);
  }
}
