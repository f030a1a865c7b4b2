/**
 * A run's options, in one object: {@linkcode RunOptions} is what the upload manager, quick
 * upload and `--watch` hand the engine (each adds only what its source needs, see
 * lib/engine/upload.ts, quick.ts and watch.ts); {@linkcode settingsOf} fills every default
 * once, and {@linkcode traitsOf} says once what each mode does, so no stage compares mode
 * names or checks for a missing tracker.
 *
 * @module
 */

import type { UploaderConfig } from "../../config.ts";
import type { EngineEvent, RunCounters, RunMode } from "../core/events.ts";
import { newCounters } from "../core/events.ts";
import type { HealthReporter } from "../fleet/health.ts";
import { HEALTH_EVERY_MS } from "../fleet/health.ts";
import type { ObjectStore } from "../objects/storage.ts";
import type { RowSink, SinkFactory } from "../sink/sink.ts";
import { NoTracker, type RunRecorder } from "../tracker/recorder.ts";
import type { Connector } from "../target/connect.ts";
import type { DeviceSource, IdentitySetup } from "../target/identity.ts";
import type { Run } from "./run.ts";

/** Where a run stores images (`--images-to`). */
export interface ObjectsSetup {
  /** The object store. */
  store: ObjectStore;
  /** This device's id: part of every object key. */
  deviceId: string;
}

/** What a mode does. */
export interface ModeTraits {
  /** Rows go to a sink (not in a scan or a dry run). */
  readonly sends: boolean;
  /** The run, its folders and batches are recorded in the tracker (not in a dry run). */
  readonly records: boolean;
  /** Folders that are due are read and built into rows (not in a scan, which only records). */
  readonly reads: boolean;
  /** success.json / failed.json may be written (only when rows are sent). */
  readonly writesMarkers: boolean;
  /** The run lasts until it is stopped (`--watch`): folders settle as long as it lasts. */
  readonly endless: boolean;
  /** The prefix of its batches' names. */
  readonly batchPrefix: "batch" | "quick";
}

const TRAITS: Readonly<Record<RunMode, ModeTraits>> = {
  upload: traits(true, true, true, false, "batch"),
  "scan-only": traits(false, true, false, false, "batch"),
  "dry-run": traits(false, false, true, false, "batch"),
  quick: traits(true, true, true, false, "quick"),
  watch: traits(true, true, true, true, "batch"),
};

function traits(
  sends: boolean,
  records: boolean,
  reads: boolean,
  endless: boolean,
  batchPrefix: "batch" | "quick",
): ModeTraits {
  return Object.freeze({ sends, records, reads, writesMarkers: sends, endless, batchPrefix });
}

/** What `mode` does. */
export function traitsOf(mode: RunMode): ModeTraits {
  return TRAITS[mode];
}

/** The options of a run of the engine (`runEngine`). */
export interface RunOptions {
  /** The run's settings. */
  config: UploaderConfig;
  /** What the run does: upload, scan-only, dry-run, quick or watch. */
  mode: RunMode;
  /** The tracking database, or null to record nothing (quick upload without one). */
  tracker: RunRecorder | null;
  /** The base the run is about (recorded with the run), or null. */
  base: string | null;
  /**
   * Makes the run's row sink (where rows go); required when the mode sends rows. A sink
   * that settles the device id (`RowSink.settlesDevice`) is opened before anything is
   * planned when object keys carry the id.
   */
  sink?: SinkFactory;
  /** Makes the run's health reporter (lib/fleet/health.ts), given its sink; none: no record. */
  health?: (run: Run, sink: RowSink) => HealthReporter;
  /** This device's id (the sink may settle another: see `RowSink.settlesDevice`). */
  deviceId: string;
  /** Write success.json / failed.json. Default true (never in a scan or a dry run). */
  markers?: boolean;
  /** Store images before their rows (`--images-to`). */
  objects?: ObjectsSetup | null;
  /** Reconcile with the server's rows first (`--verify`; needs a tracker and a base). */
  verify?: boolean;
  /** Send the per-folder step events (quick upload's step lines). Default false. */
  folderEvents?: boolean;
  /** Aborting interrupts the run: no new batch starts, in-flight ones get `graceMs`. */
  signal?: AbortSignal;
  /** Aborting ends the run gracefully (SIGTERM in watch mode): the batch in flight finishes. */
  finishSignal?: AbortSignal;
  /** Receives every event of the run. */
  onEvent?: (event: EngineEvent) => void;
  /** Counters to update (so a progress display can read them). */
  counters?: RunCounters;
  /** How long in-flight batches may finish after an interruption. Default 10 s. */
  graceMs?: number;
  /**
   * How long the batches in flight may finish after a graceful stop (`finishSignal`).
   * Default 40 s: within the 60 s a service manager gives (the README's unit).
   */
  stopGraceMs?: number;
  /**
   * How long, once the source has ended, folders still being written are waited for.
   * Default: twice the settle time, at least 1 s. In watch mode they are waited for as
   * long as the run lasts.
   */
  settleDeadlineMs?: number;
  /** A partial batch is sent after the source was quiet this long (ms). Default 100. */
  lingerMs?: number;
  /** How often a `--watch` records its health on the server (ms). Default 60,000. */
  healthEveryMs?: number;
  /** The clock. Default Date.now. */
  now?: () => number;
}

/** {@linkcode RunOptions} with every default filled, and what the mode does. */
export interface RunSettings extends
  Readonly<
    Required<Omit<RunOptions, "sink" | "health" | "signal" | "finishSignal" | "tracker">>
  > {
  /** Where the run records; a {@linkcode NoTracker} when there is no tracking database. */
  readonly tracker: RunRecorder;
  /** What the mode does. */
  readonly traits: ModeTraits;
  /** As in {@linkcode RunOptions}. */
  readonly sink?: SinkFactory;
  /** As in {@linkcode RunOptions}. */
  readonly health?: (run: Run, sink: RowSink) => HealthReporter;
  /** As in {@linkcode RunOptions}. */
  readonly signal?: AbortSignal;
  /** As in {@linkcode RunOptions}. */
  readonly finishSignal?: AbortSignal;
}

/** `options` with every default filled, once. */
export function settingsOf(options: RunOptions): RunSettings {
  const traits = traitsOf(options.mode);
  const settleMs = options.config.minAgeSeconds * 1000;
  return {
    ...options,
    traits,
    tracker: options.tracker ?? new NoTracker(),
    markers: traits.writesMarkers && (options.markers ?? true),
    objects: options.objects ?? null,
    verify: options.verify ?? false,
    folderEvents: options.folderEvents ?? false,
    onEvent: options.onEvent ?? (() => {}),
    counters: options.counters ?? newCounters(),
    graceMs: options.graceMs ?? 10_000,
    stopGraceMs: options.stopGraceMs ?? 40_000,
    settleDeadlineMs: traits.endless
      ? Infinity
      : options.settleDeadlineMs ?? Math.max(2 * settleMs, 1000),
    lingerMs: options.lingerMs ?? 100,
    healthEveryMs: options.healthEveryMs ?? HEALTH_EVERY_MS,
    now: options.now ?? Date.now,
  };
}

/**
 * What a configuration of the engine (the upload manager, quick upload, `--watch`) takes
 * from its caller: {@linkcode RunOptions} without what the configuration decides itself
 * (its mode, base, sink, health record and step events) or types its own way (the tracker).
 */
export type CallerOptions = Omit<
  RunOptions,
  "mode" | "base" | "sink" | "health" | "folderEvents" | "tracker"
>;

/** What a run writing to a PostgreSQL target adds. */
export interface TargetOptions {
  /** Where rows go; opened on the first batch, closed by the caller. */
  connector?: Connector;
  /** Where `deviceId` came from. Default `config`. */
  deviceSource?: DeviceSource;
  /** Nothing configured the id: settle it before the first batch. */
  identity?: IdentitySetup;
  /** Client-side statement timeout (ms). Default 10 minutes. */
  statementTimeoutMs?: number;
}
