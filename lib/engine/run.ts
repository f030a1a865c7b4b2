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
import type { OwedMarker } from "../tracker/owed.ts";
import type { RunRecorder } from "../tracker/recorder.ts";
import type { ModeTraits, ObjectsSetup, RunSettings } from "./options.ts";

/** One run's state, shared by its stages. */
export class Run {
  /** The run's options, every default filled. */
  readonly settings: RunSettings;
  /** What the run's mode does. */
  readonly traits: ModeTraits;
  readonly config: UploaderConfig;
  readonly mode: RunMode;
  /** Where the run records (a `NoTracker` when there is no tracking database). */
  readonly tracker: RunRecorder;
  /**
   * Whether the run is recorded: the mode records (not a dry run, whose tracker is only
   * read) and there is a tracking database.
   */
  readonly records: boolean;
  readonly base: string | null;
  readonly counters: RunCounters;
  readonly now: () => number;
  readonly startedAt: number;
  /** The tracker's id of this run; 0 when nothing is recorded (see `records`). */
  readonly runId: number;
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
    this.settings = settings;
    this.traits = settings.traits;
    this.config = settings.config;
    this.mode = settings.mode;
    this.tracker = settings.tracker;
    this.records = settings.traits.records && settings.tracker.recording;
    this.base = settings.base;
    this.counters = settings.counters;
    this.now = settings.now;
    this.startedAt = this.now();
    this.folderEvents = settings.folderEvents;
    this.deviceId = settings.deviceId;
    this.objects = settings.objects;
    this.#onEvent = settings.onEvent;
    this.activity = new ActivityLog(this.config.minAgeSeconds * 1000 + 1000);
    this.markers = settings.markers ? this.#markerWriter() : null;
    this.runId = this.records
      ? this.tracker.startRun(this.base, this.mode, new Date(this.startedAt))
      : 0;
    this.#stamp = new Date(this.startedAt).toISOString().replace(/[-:]/g, "").replace("T", "_")
      .slice(0, 15);
  }

  /** The marker writer: a marker it cannot write is owed, and written by a later run. */
  #markerWriter(): MarkerWriter {
    return new MarkerWriter(this.config, {
      onError: (path, error, marker) => {
        this.counters.markerErrors++;
        this.emit({
          event: "marker_error",
          path,
          error: `Cannot write marker in ${path}: ${messageOf(error)}`,
        });
        this.#recording(() => this.tracker.oweMarkers([{ path, marker }]));
      },
      onWritten: this.folderEvents
        ? (path, name, marker) =>
          this.emit({ event: "marker_written", path, key: marker.folder_key, marker: name })
        : undefined,
    });
  }

  /**
   * The device the schema step settled: its id goes into success.json and object keys, and
   * is kept in the tracker (except in a dry run).
   */
  useDevice(id: string): void {
    this.deviceId = id;
    if (this.objects) this.objects.deviceId = id;
    if (this.traits.records) this.tracker.setMeta("device_id", id);
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
    if (!this.records) return;
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
    if (!this.markers || !this.records) return;
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
    const prefix = this.traits.batchPrefix;
    return {
      name: `${prefix}_${this.#stamp}_${seq}`,
      id: `${this.records ? this.runId : `${prefix}-${this.startedAt}`}-${this.#batchSeq}`,
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
    if (this.records && recorded.length > 0) {
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
