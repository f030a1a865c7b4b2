/**
 * The engine: one path for every way folders arrive.
 *
 * ```
 * source ──> planner ──────────────────> committer ──────────────────> events
 *  walk       diff against the tracker,    row upsert -> tracker record   (rendered by
 *  paths      settle queue, batches         -> markers                     lib/cli/progress.ts)
 *  fs events  bounded by exact bytes
 * ```
 *
 * The upload manager, quick upload and `--watch` are configurations of {@linkcode runEngine}:
 * they differ in their source and a few settings, never in how a batch is written or
 * recorded. The run's state lives in one {@linkcode Run}; whatever is thrown, the batches
 * in flight are drained (or abandoned after a grace period), markers are flushed, sessions
 * closed and the run recorded, in `finally`.
 *
 * @module
 */

import type { UploaderConfig } from "../../config.ts";
import { Committer } from "../commit/committer.ts";
import { decideOutcome, UploadError } from "../core/errors.ts";
import { HEALTH_EVERY_MS, type HealthReporter } from "../fleet/health.ts";
import {
  type EngineEvent,
  newCounters,
  type RunCounters,
  type RunMode,
  type RunResult,
} from "../core/events.ts";
import { Planner, SettleQueue, type SettlingFolder } from "../plan/planner.ts";
import { type ObjectsSetup, Run } from "./run.ts";
import { sleep } from "../core/retry.ts";
import { snapshotFolder } from "../source/snapshot.ts";
import type { FolderSource, SourceItem } from "../source/sources.ts";
import type { Tracker } from "../tracker/tracker.ts";
import { countOtherDevices, finishVerify, readRemote, type RemoteReport } from "./verify.ts";
import type { RowSink, SinkFactory } from "../sink/sink.ts";

/** Settings of {@linkcode runEngine}. */
export interface EngineOptions {
  /** The run's settings. */
  config: UploaderConfig;
  /** What the run does: upload, scan-only, dry-run, quick or watch. */
  mode: RunMode;
  /** The tracking database, or null (quick upload without one). */
  tracker: Tracker | null;
  /** The base the run is about (recorded with the run), or null. */
  base: string | null;
  /**
   * Makes the run's row sink (where rows go); required unless the mode sends nothing
   * (scan-only, dry-run). A sink that settles the device id (`RowSink.settlesDevice`) is
   * opened before anything is planned when object keys carry the id.
   */
  sink?: SinkFactory;
  /** Makes the run's health reporter (lib/fleet/health.ts), given its sink; none: no record. */
  health?: (run: Run, sink: RowSink) => HealthReporter;
  /** This device's id (the sink may settle another: see `RowSink.settlesDevice`). */
  deviceId: string;
  /** Write success.json / failed.json. Default true. */
  markers?: boolean;
  /** Store images before their rows (`--images-to`). */
  objects?: ObjectsSetup | null;
  /** Reconcile with the server's rows first (`--verify`; needs a tracker and a base). */
  verify?: boolean;
  /** Send the per-folder step events (quick upload). Default false. */
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
   * Default: twice the settle time, at least 1 s. Ignored in watch mode (they are waited for
   * as long as the run lasts).
   */
  settleDeadlineMs?: number;
  /** A partial batch is sent after the source was quiet this long (ms). Default 100. */
  lingerMs?: number;
  /** How often a `--watch` records its health on the server (ms). Default 60,000. */
  healthEveryMs?: number;
  /** The clock. */
  now?: () => number;
}

/**
 * Runs folders from `source` through the planner and the committer until the source ends
 * (or, in watch mode, until the run is stopped).
 *
 * Never throws for a folder's problem: those are counted, recorded and reported. An error
 * that stops the run (unreachable server, refused permission, a bug) is in the result.
 */
export async function runEngine(source: FolderSource, options: EngineOptions): Promise<RunResult> {
  const counters = options.counters ?? newCounters();
  const run = new Run({
    config: options.config,
    mode: options.mode,
    tracker: options.tracker,
    base: options.base,
    deviceId: options.deviceId,
    markers: options.markers,
    objects: options.objects,
    folderEvents: options.folderEvents,
    onEvent: options.onEvent,
    counters,
    now: options.now,
  });
  const sends = options.mode !== "scan-only" && options.mode !== "dry-run";
  const sink = sends ? requireSink(options.sink)(sinkContext(run)) : null;
  run.emit({
    event: "run_start",
    mode: options.mode,
    base: options.base,
    target: sink?.display ?? null,
    embedded: sink?.embedded ?? false,
    tracker: options.tracker && options.mode !== "dry-run" ? options.tracker.path : null,
  });
  const onInterrupt = () => run.interrupt();
  const onFinish = () => run.finish();
  options.signal?.addEventListener("abort", onInterrupt, { once: true });
  options.finishSignal?.addEventListener("abort", onFinish, { once: true });
  if (options.signal?.aborted) run.interrupt();
  else if (options.finishSignal?.aborted) run.finish();

  const committer = sink ? new Committer(run, { sink }) : null;
  const settle = new SettleQueue();
  const planner = new Planner(run, {
    sink: committer ? (batch) => committer.submit(batch) : null,
    settle,
    roomFor: committer ? (bytes) => committer.roomFor(bytes) : undefined,
  });
  // Each run that sends rows records its device's health at its end; a watch also as it goes.
  const health = sink ? options.health?.(run, sink) ?? null : null;
  const stopBeats = options.mode === "watch"
    ? health?.heartbeat(options.healthEveryMs ?? HEALTH_EVERY_MS, run.stop.signal, () => ({
      outcome: "running",
      exitCode: null,
      ended: false,
    }))
    : undefined;

  try {
    let remote: RemoteReport | null = null;
    // An id still to settle is settled when the sink opens, before the first batch is
    // written; object keys (`--images-to`) carry it, so then before anything is planned.
    if (sink?.settlesDevice && options.objects) await sink.open();
    if (options.verify && sink && run.tracker && run.runId !== null && options.base) {
      remote = await readRemote(run, sink, options.base);
      run.verifying = true;
    }
    await feed(run, source, planner, settle, options);
    if (remote && sink && run.completedPass && !run.stopping) {
      const others = await countOtherDevices(run, sink, options.base!);
      finishVerify(run, options.base!, remote, others);
    }
  } catch (error) {
    run.fail(error);
  } finally {
    await stopBeats?.();
    await committer?.drain(
      run.stopped ? options.stopGraceMs ?? 40_000 : options.graceMs ?? 10_000,
    );
    await run.markers?.drain();
    await sink?.close();
    options.signal?.removeEventListener("abort", onInterrupt);
    options.finishSignal?.removeEventListener("abort", onFinish);
  }
  counters.settling += settle.size;
  return await concludeRun(run, options, health);
}

/**
 * Ends a run after it drained: its outcome decided, recorded in the tracker, the device's
 * health reported (not when the server stayed away: that would only make the run wait
 * once more).
 */
async function concludeRun(
  run: Run,
  options: EngineOptions,
  health: HealthReporter | null,
): Promise<RunResult> {
  const counters = run.counters;
  const outcome = () =>
    decideOutcome({
      error: run.error,
      interrupted: run.interrupted,
      stopped: run.stopped,
      failed: counters.failed + counters.unreadable,
    });
  let { status, exitCode } = outcome();
  const durationMs = run.now() - run.startedAt;
  let exhausted = 0;
  let markersOwed = 0;
  if (run.runId !== null) {
    try {
      exhausted = run.tracker!.countExhausted(options.config.maxRetries);
      markersOwed = run.tracker!.countOwedMarkers();
      run.tracker!.finishRun(
        run.runId,
        status,
        { ...counters, duration_ms: durationMs },
        run.completedPass,
        new Date(run.now()),
      );
    } catch (error) {
      // The tracker's file or disk failed at the very end (deleted, full): the run says so.
      run.fail(error);
      ({ status, exitCode } = outcome());
    }
  }
  if (status !== "unreachable") await health?.report({ outcome: status, exitCode, ended: true });
  return {
    counters,
    exitCode,
    status,
    durationMs,
    error: run.error,
    runId: run.runId,
    exhausted,
    markersOwed,
  };
}

/** The sink factory of a run that sends rows; a missing one is a bug in the caller. */
function requireSink(sink: SinkFactory | undefined): SinkFactory {
  if (!sink) throw new UploadError("fatal", "No target to upload to");
  return sink;
}

/** What a run gives its sink: its events, counters, stop signal, clock; the settled device. */
function sinkContext(run: Run) {
  return {
    emit: (e: EngineEvent) => run.emit(e),
    counters: run.counters,
    signal: run.stop.signal,
    onDevice: (device: { id: string }) => run.useDevice(device.id),
    now: run.now,
  };
}

/**
 * The engine's loop: takes chunks from the source as they come, looks again at settling
 * folders when they are due, sends a partial batch when the source goes quiet, and after
 * the source ends waits (up to the settle deadline) for the folders still being written.
 */
async function feed(
  run: Run,
  source: FolderSource,
  planner: Planner,
  settle: SettleQueue,
  options: EngineOptions,
): Promise<void> {
  const inbox = new Inbox<SourceItem[]>(4);
  const context = {
    signal: run.stop.signal,
    emit: (e: EngineEvent) => run.emit(e),
    counters: run.counters,
    activity: run.activity,
  };
  (async () => {
    try {
      for await (const chunk of source(context)) {
        if (run.stopping) break;
        await inbox.put(chunk, run.stop.signal);
      }
      inbox.end();
    } catch (error) {
      inbox.end(error);
    }
  })();

  const watch = options.mode === "watch";
  const linger = options.lingerMs ?? 100;
  const minAgeMs = run.config.minAgeSeconds * 1000;
  let pending = false; // a partial batch may wait in the planner
  let deadline: number | null = null; // set once the source has ended
  let waitReported = false;
  while (!run.stopping) {
    const now = run.now();
    const due = settle.nextDue();
    if (due !== null && due <= now) {
      await revisit(run, planner, settle.take(now));
      pending = true;
      continue;
    }
    let waitMs: number | null = due === null ? null : due - now;
    if (deadline !== null) {
      if (settle.size === 0) break;
      if (now >= deadline) {
        await planner.giveUp(settle.take(now, true));
        break;
      }
      waitMs = Math.min(waitMs ?? Infinity, deadline - now);
      if (!waitReported) {
        run.emit({ event: "settle_wait", folders: settle.size, wait_ms: Math.round(waitMs) });
        waitReported = true;
      }
    }
    if (deadline !== null) {
      await sleep(waitMs ?? 0, run.stop.signal); // the source has ended: only settling is left
      continue;
    }
    if (pending) waitMs = Math.min(waitMs ?? Infinity, linger);
    const next = await inbox.next(waitMs, run.stop.signal);
    if (next.kind === "item") {
      // What else has arrived goes with it: one tracker transaction per ~1,000 folders.
      await planner.take(next.item.concat(...inbox.takeReady(1024 - next.item.length)));
      pending = true;
    } else if (next.kind === "end") {
      await planner.flush();
      pending = false;
      deadline = watch
        ? Infinity
        : now + (options.settleDeadlineMs ?? Math.max(2 * minAgeMs, 1000));
    } else if (next.kind === "quiet" && pending && (settle.nextDue() ?? Infinity) > run.now()) {
      await planner.flush();
      pending = false;
    }
  }
  if (!run.stopping) await planner.flush();
}

/** Looks again at settling folders that are due, as revisits (counted once already). */
async function revisit(run: Run, planner: Planner, due: SettlingFolder[]): Promise<void> {
  const items: SourceItem[] = [];
  const markers = run.markerNames();
  for (const f of due) {
    const again = snapshotFolder(f.path, {
      key: f.key,
      imageExtensions: run.config.imageExtensions,
      reportExtensions: run.config.reportOnlyUnits ? run.config.reportExtensions : [],
      statsFileName: run.config.statsFileName,
      markerNames: markers,
    });
    // A folder that vanished while it settled is not there to send; a later complete
    // scan reports it missing.
    if (again.kind !== "folder") continue;
    items.push({
      kind: "folder",
      snapshot: again.snapshot,
      base: f.base,
      force: f.force,
      strict: f.strict,
    });
  }
  await planner.take(items, true);
}

/** What {@linkcode Inbox.next} found. */
type Next<T> = { kind: "item"; item: T } | { kind: "end" } | { kind: "quiet" } | {
  kind: "stopped";
};

/** A bounded queue between the source (filling it) and the engine's loop (emptying it). */
class Inbox<T> {
  readonly #capacity: number;
  #items: T[] = [];
  #ended = false;
  #error: unknown = undefined;
  #wakeTaker: (() => void) | null = null;
  #wakePutter: (() => void) | null = null;

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  /** Adds an item, waiting while the queue is full (or until `signal` aborts). */
  async put(item: T, signal: AbortSignal): Promise<void> {
    while (this.#items.length >= this.#capacity && !signal.aborted) {
      await wait(signal, null, (wake) => this.#wakePutter = wake);
    }
    this.#items.push(item);
    this.#wake();
  }

  /** Items already waiting, up to about `max` elements in all (each item an array). */
  takeReady(max: number): T[] {
    const taken: T[] = [];
    let count = 0;
    while (this.#items.length > 0 && count < max) {
      const item = this.#items.shift()!;
      taken.push(item);
      count += Array.isArray(item) ? item.length : 1;
    }
    if (taken.length > 0) {
      const wake = this.#wakePutter;
      this.#wakePutter = null;
      wake?.();
    }
    return taken;
  }

  /** No more items; with an error, the taker gets it once the items before it are taken. */
  end(error?: unknown): void {
    this.#ended = true;
    this.#error = error;
    this.#wake();
  }

  #wake(): void {
    const wake = this.#wakeTaker;
    this.#wakeTaker = null;
    wake?.();
  }

  /**
   * The next item; `end` once the source ended; `quiet` when nothing came within `waitMs`
   * (null waits as long as it takes); `stopped` when `signal` aborts.
   *
   * @throws what the source threw, after the items it produced before.
   */
  async next(waitMs: number | null, signal: AbortSignal): Promise<Next<T>> {
    if (this.#items.length === 0 && !this.#ended && !signal.aborted) {
      await wait(signal, waitMs, (wake) => this.#wakeTaker = wake);
      this.#wakeTaker = null;
    }
    if (this.#items.length > 0) {
      const item = this.#items.shift()!;
      const wake = this.#wakePutter;
      this.#wakePutter = null;
      wake?.();
      return { kind: "item", item };
    }
    if (signal.aborted) return { kind: "stopped" };
    if (this.#ended) {
      if (this.#error !== undefined) {
        const error = this.#error;
        this.#error = undefined;
        throw error;
      }
      return { kind: "end" };
    }
    return { kind: "quiet" };
  }
}

/**
 * Waits until woken (through the function handed to `register`), `ms` pass (null: no
 * limit) or `signal` aborts; leaves no timer or listener behind.
 */
function wait(
  signal: AbortSignal,
  ms: number | null,
  register: (wake: () => void) => void,
): Promise<void> {
  return new Promise<void>((resolve) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    register(done);
    signal.addEventListener("abort", done, { once: true });
    if (ms !== null && Number.isFinite(ms)) timer = setTimeout(done, Math.max(0, ms));
  });
}
