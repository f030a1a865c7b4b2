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

import { Committer } from "../commit/committer.ts";
import { decideOutcome, UploadError } from "../core/errors.ts";
import type { HealthReporter } from "../fleet/health.ts";
import type { EngineEvent, RunResult } from "../core/events.ts";
import { Planner, SettleQueue, type SettlingFolder } from "../plan/planner.ts";
import { Run } from "./run.ts";
import { type RunOptions, type RunSettings, settingsOf } from "./options.ts";
import { sleep } from "../core/retry.ts";
import { snapshotFolder } from "../source/snapshot.ts";
import type { FolderSource, SourceItem } from "../source/sources.ts";
import { countOtherDevices, finishVerify, readRemote, type RemoteReport } from "./verify.ts";
import type { RowSink, SinkFactory } from "../sink/sink.ts";

/**
 * Runs folders from `source` through the planner and the committer until the source ends
 * (or, in watch mode, until the run is stopped).
 *
 * Never throws for a folder's problem: those are counted, recorded and reported. An error
 * that stops the run (unreachable server, refused permission, a bug) is in the result.
 */
export async function runEngine(source: FolderSource, options: RunOptions): Promise<RunResult> {
  const settings = settingsOf(options);
  const run = new Run(settings);
  const sink = settings.traits.sends ? requireSink(settings.sink)(sinkContext(run)) : null;
  run.emit({
    event: "run_start",
    mode: settings.mode,
    base: settings.base,
    target: sink?.display ?? null,
    embedded: sink?.embedded ?? false,
    tracker: settings.traits.records ? settings.tracker.path : null,
  });
  const detach = listen(run, settings);
  const committer = sink ? new Committer(run, { sink }) : null;
  const settle = new SettleQueue();
  const planner = new Planner(run, {
    sink: committer ? (batch) => committer.submit(batch) : null,
    settle,
    roomFor: committer ? (bytes) => committer.roomFor(bytes) : undefined,
  });
  // Each run that sends rows records its device's health at its end; a watch also as it goes.
  const health = sink ? settings.health?.(run, sink) ?? null : null;
  const stopBeats = settings.traits.endless
    ? health?.heartbeat(settings.healthEveryMs, run.stop.signal, () => ({
      outcome: "running",
      exitCode: null,
      ended: false,
    }))
    : undefined;
  try {
    await work(run, source, { planner, settle, sink });
  } catch (error) {
    run.fail(error);
  } finally {
    await stopBeats?.();
    await committer?.drain(run.stopped ? settings.stopGraceMs : settings.graceMs);
    await run.markers?.drain();
    await sink?.close();
    detach();
  }
  run.counters.settling += settle.size;
  return await concludeRun(run, health);
}

/** The stages a run's work goes through. */
interface Stages {
  planner: Planner;
  settle: SettleQueue;
  sink: RowSink | null;
}

/** A run's work: the device settled, `--verify`'s reading of the server, then the feed. */
async function work(run: Run, source: FolderSource, stages: Stages): Promise<void> {
  const { sink } = stages;
  const base = run.base;
  let remote: RemoteReport | null = null;
  // An id still to settle is settled when the sink opens, before the first batch is
  // written; object keys (`--images-to`) carry it, so then before anything is planned.
  if (sink?.settlesDevice && run.objects) await sink.open();
  if (run.settings.verify && sink && run.records && base !== null) {
    remote = await readRemote(run, sink, base);
    run.verifying = true;
  }
  await feed(run, source, stages.planner, stages.settle);
  if (remote && sink && base !== null && run.completedPass && !run.stopping) {
    const others = await countOtherDevices(run, sink, base);
    finishVerify(run, base, remote, others);
  }
}

/** Ties the run to its stop signals; returns what unties it. */
function listen(run: Run, settings: RunSettings): () => void {
  const onInterrupt = () => run.interrupt();
  const onFinish = () => run.finish();
  settings.signal?.addEventListener("abort", onInterrupt, { once: true });
  settings.finishSignal?.addEventListener("abort", onFinish, { once: true });
  if (settings.signal?.aborted) run.interrupt();
  else if (settings.finishSignal?.aborted) run.finish();
  return () => {
    settings.signal?.removeEventListener("abort", onInterrupt);
    settings.finishSignal?.removeEventListener("abort", onFinish);
  };
}

/**
 * Ends a run after it drained: its outcome decided, recorded in the tracker, the device's
 * health reported (not when the server stayed away: that would only make the run wait
 * once more).
 */
async function concludeRun(run: Run, health: HealthReporter | null): Promise<RunResult> {
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
  if (run.records) {
    try {
      exhausted = run.tracker.countExhausted(run.config.maxRetries);
      markersOwed = run.tracker.countOwedMarkers();
      run.tracker.finishRun(
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
    runId: run.records ? run.runId : null,
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
): Promise<void> {
  const inbox = new Inbox<SourceItem[]>(TAKE_ITEMS);
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

  const linger = run.settings.lingerMs;
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
      await planner.take(next.item.concat(...inbox.takeReady(TAKE_ITEMS - next.item.length)));
      pending = true;
    } else if (next.kind === "end") {
      await planner.flush();
      pending = false;
      deadline = now + run.settings.settleDeadlineMs;
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

/** The most folders the engine's loop takes at once (one tracker transaction). */
const TAKE_ITEMS = 1024;

/** An item's weight in the inbox: an array counts its elements. */
function weightOf(item: unknown): number {
  return Array.isArray(item) ? item.length : 1;
}

/**
 * A bounded queue between the source (filling it) and the engine's loop (emptying it). Its
 * capacity counts elements, not arrays: a source that hands over small chunks lets as many
 * folders wait as one that hands over large ones, and the loop can take them in one go.
 */
class Inbox<T> {
  readonly #capacity: number;
  #items: T[] = [];
  #weight = 0;
  #ended = false;
  #error: unknown = undefined;
  #wakeTaker: (() => void) | null = null;
  #wakePutter: (() => void) | null = null;

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  /** Adds an item, waiting while the queue is full (or until `signal` aborts). */
  async put(item: T, signal: AbortSignal): Promise<void> {
    while (this.#items.length > 0 && this.#weight >= this.#capacity && !signal.aborted) {
      await wait(signal, null, (wake) => this.#wakePutter = wake);
    }
    this.#items.push(item);
    this.#weight += weightOf(item);
    this.#wake();
  }

  /** Items already waiting, up to about `max` elements in all (each item an array). */
  takeReady(max: number): T[] {
    const taken: T[] = [];
    let count = 0;
    while (this.#items.length > 0 && count < max) {
      const item = this.#items.shift()!;
      taken.push(item);
      count += weightOf(item);
      this.#weight -= weightOf(item);
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
      this.#weight -= weightOf(item);
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
