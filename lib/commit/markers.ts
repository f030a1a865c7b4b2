/**
 * Marker files: `success.json` or `failed.json` in a folder after its outcome, written
 * atomically (a hidden temp file, then rename) with the other marker removed. The original
 * tools' `upload_success.json` / `upload_failed.json` are never touched (for many folders
 * they are the only local record of the storage URLs their upload made). Markers never
 * carry secrets: only the folder, the device, the outcome, the batch and the time; the
 * success marker's `device_id` lets a new tracker take this device's id back.
 *
 * @module
 */

import { join } from "node:path";
import type { UploaderConfig } from "../../config.ts";
import { Budget, type Release } from "../core/budget.ts";
import { errorOf, type MarkerJob, MarkerThread } from "./marker_thread.ts";

/** The content of a success marker. */
export interface SuccessMarker {
  /** The outcome. */
  status: "success";
  /** The folder's name. */
  folder_name: string;
  /** The folder's key: the row's `folder_key`. */
  folder_key: string;
  /** The device the row belongs to: a new tracker takes its id back from here. */
  device_id: string;
  /** When the row was acknowledged (ISO-8601). */
  upload_time: string;
  /** The batch that sent it. */
  upload_batch: string;
  /** Images the row lists. */
  images_uploaded: number;
  /** The test's status as the row has it. */
  test_status: string;
  /** The fingerprint of the folder's files, taken before it was read. */
  folder_hash: string;
}

/** The content of a failure marker. */
export interface FailedMarker {
  /** The outcome. */
  status: "failed";
  /** The folder's name. */
  folder_name: string;
  /** The folder's key. */
  folder_key: string;
  /** When it failed (ISO-8601). */
  failed_time: string;
  /** Why, naming the file or the server's SQLSTATE. */
  error: string;
  /** Runs that failed it since its files last changed. */
  retry_count?: number;
}

/** Marker names the writer needs. */
export type MarkerConfig = Pick<UploaderConfig, "successMarker" | "failedMarker" | "legacyMarkers">;

/** Where a marker goes, its temp file, and the stale marker to remove. */
function planMarker(
  folderPath: string,
  marker: SuccessMarker | FailedMarker,
  config: MarkerConfig,
  present?: ReadonlySet<string>,
): { target: string; temp: string; text: string; stale: string[] } {
  const name = marker.status === "success" ? config.successMarker : config.failedMarker;
  const other = marker.status === "success" ? config.failedMarker : config.successMarker;
  // Only the opposite marker goes; the original tool's markers are never removed.
  const stale = [other]
    .filter((n) => present === undefined || present.has(n))
    .map((n) => join(folderPath, n));
  return {
    target: join(folderPath, name),
    temp: join(folderPath, `.${name}.${Deno.pid}.tmp`),
    text: JSON.stringify(marker, null, 2) + "\n",
    stale,
  };
}

/**
 * Writes the marker for a folder's outcome and removes the opposite marker (only when in
 * `present`, the folder's file names, when given). The original tools' markers are kept.
 *
 * @throws the file-system error when the folder is read-only, full or gone; callers report
 * it for that folder and go on (the upload itself already counted).
 */
export function writeMarker(
  folderPath: string,
  marker: SuccessMarker | FailedMarker,
  config: MarkerConfig,
  present?: ReadonlySet<string>,
): void {
  const plan = planMarker(folderPath, marker, config, present);
  try {
    Deno.writeTextFileSync(plan.temp, plan.text);
    Deno.renameSync(plan.temp, plan.target);
  } catch (error) {
    try {
      Deno.removeSync(plan.temp);
    } catch {
      // The temp file was never created or is already gone; the original error matters.
    }
    throw error;
  }
  for (const stale of plan.stale) {
    try {
      Deno.removeSync(stale);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
}

/** Writes one marker: {@linkcode writeMarkerAsync}'s signature (tests give their own). */
export type MarkerWrite = (
  folderPath: string,
  marker: SuccessMarker | FailedMarker,
  config: MarkerConfig,
  present?: ReadonlySet<string>,
) => Promise<boolean>;

/** Settings of a {@linkcode MarkerWriter}. */
export interface MarkerWriterOptions {
  /**
   * Writes at once: with `write`, calls in flight (default 16); without, markers queued for
   * the marker thread and not yet written (default 512).
   */
  concurrency?: number;
  /** Called with the folder, the error and the marker that could not be written. */
  onError: (path: string, error: unknown, marker: SuccessMarker | FailedMarker) => void;
  /** Called with the folder, the marker's file name and the marker after each write. */
  onWritten?: (path: string, name: string, marker: SuccessMarker | FailedMarker) => void;
  /**
   * Markers written in this process before the marker thread takes over (default 64): a
   * run of a few folders never starts the thread and its memory.
   */
  directMarkers?: number;
  /**
   * How one marker is written. Default: on the marker thread (marker_worker.ts, as
   * {@linkcode writeMarkerAsync}), many markers per message.
   */
  write?: MarkerWrite;
}

/**
 * Writes markers off the upload's hot path, while the next batches are built and sent: on
 * the marker thread (a worker, sent many markers per message), or, with `write`, one call
 * per marker, up to `concurrency` at once (one {@linkcode Budget} of slots). {@linkcode drain}
 * waits for all of them; a failed write is reported through `onError` for its folder and
 * never throws into the run.
 */
export class MarkerWriter {
  #config: MarkerConfig;
  #slots: Budget;
  #onError: MarkerWriterOptions["onError"];
  #onWritten: MarkerWriterOptions["onWritten"];
  #write: MarkerWrite | null;
  #thread: MarkerThread | null;
  /** Markers not yet sent to the thread, each with its slot. */
  #queued: { job: MarkerJob; release: Release }[] = [];
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #running = new Set<Promise<void>>();
  /** Markers left to write in this process before the thread takes over. */
  #direct: number;
  /** The wait for the direct writes, once the thread took over (they finish first). */
  #handover: Promise<void> | null = null;

  /** A writer of markers named by `config`, tuned by `options`. */
  constructor(config: MarkerConfig, options: MarkerWriterOptions) {
    this.#config = config;
    this.#write = options.write ?? null;
    this.#thread = this.#write === null ? new MarkerThread(config) : null;
    const slots = options.concurrency ?? (this.#thread ? 512 : 16);
    this.#slots = new Budget(Math.max(1, slots));
    this.#onError = options.onError;
    this.#onWritten = options.onWritten;
    this.#direct = this.#thread ? Math.max(0, options.directMarkers ?? 64) : 0;
  }

  /**
   * Queues the marker for a folder. `present` lists the folder's file names as the scan
   * saw them: the opposite marker is removed only when it is among them, sparing a failed
   * unlink (undefined: not known, it is tried). Resolves once the write has started
   * (waiting while `concurrency` writes run).
   */
  async write(
    folderPath: string,
    marker: SuccessMarker | FailedMarker,
    present?: ReadonlySet<string> | readonly string[],
  ): Promise<void> {
    const release = await this.#slots.acquire();
    const names = present === undefined || present instanceof Set ? present : new Set(present);
    if (this.#thread && this.#direct === 0) {
      // The direct writes end before the thread's first: a folder's markers stay in order.
      this.#handover ??= this.flush();
      await this.#handover;
      return this.#enqueue({ path: folderPath, marker, present: names }, release);
    }
    if (this.#thread) this.#direct--;
    const write = this.#write ?? writeMarkerAsync;
    const task: Promise<void> = Promise.resolve()
      .then(() => write(folderPath, marker, this.#config, names))
      .then(
        (written) => this.#written(folderPath, marker, written),
        (error) => this.#onError(folderPath, error, marker),
      )
      .finally(() => {
        release();
        this.#running.delete(task);
      });
    this.#running.add(task);
  }

  /** Waits for every queued write; the marker thread, if any, stays for later writes. */
  async flush(): Promise<void> {
    this.#send();
    while (this.#running.size > 0) await Promise.allSettled([...this.#running]);
  }

  /** Waits for every queued write, then ends the marker thread (a later write starts it). */
  async drain(): Promise<void> {
    await this.flush();
    this.#thread?.close();
  }

  #written(path: string, marker: SuccessMarker | FailedMarker, written: boolean): void {
    if (!written) return;
    const config = this.#config;
    this.#onWritten?.(
      path,
      marker.status === "success" ? config.successMarker : config.failedMarker,
      marker,
    );
  }

  /** Queues a marker for the thread: sent with the others queued in the same turn. */
  #enqueue(job: MarkerJob, release: Release): void {
    this.#queued.push({ job, release });
    if (this.#queued.length >= MARKERS_PER_MESSAGE) this.#send();
    else this.#flushTimer ??= setTimeout(() => this.#send(), 0);
  }

  /** Sends the queued markers to the thread in one message and reports their results. */
  #send(): void {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    const entries = this.#queued;
    if (entries.length === 0 || !this.#thread) return;
    this.#queued = [];
    const task: Promise<void> = this.#thread.run(entries.map((e) => e.job)).then((results) => {
      entries.forEach(({ job, release }, i) => {
        try {
          const result = results[i];
          if ("error" in result) this.#onError(job.path, errorOf(result.error), job.marker);
          else this.#written(job.path, job.marker, result.written);
        } finally {
          release();
        }
      });
    }).finally(() => this.#running.delete(task));
    this.#running.add(task);
  }
}

/** Markers sent to the marker thread in one message, at most. */
const MARKERS_PER_MESSAGE = 256;

/** Marker fields that differ between two writes of the same outcome. */
const VOLATILE = new Set(["upload_time", "upload_batch", "failed_time", "retry_count"]);

/**
 * Whether two markers tell the same: the same outcome of the same content (the fingerprint,
 * key, images and status, or the same error), whenever and in whichever batch.
 *
 * @example
 * ```ts
 * sameMarker(
 *   { status: "failed", folder_key: "B1", error: "Bad JSON", failed_time: "2025-06-01T00:00:00Z" },
 *   { status: "failed", folder_key: "B1", error: "Bad JSON", failed_time: "2025-06-02T00:00:00Z" },
 * ); // true
 * ```
 */
export function sameMarker(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  const lasting = (m: Record<string, unknown>) =>
    JSON.stringify(Object.keys(m).filter((k) => !VOLATILE.has(k)).sort().map((k) => [k, m[k]]));
  return lasting(a) === lasting(b);
}

/** The marker already in the folder under `path`, or null (none, unreadable, not JSON). */
async function readMarker(path: string): Promise<Record<string, unknown> | null> {
  try {
    const value = JSON.parse(await Deno.readTextFile(path));
    return value !== null && typeof value === "object" ? value : null;
  } catch (_error) {
    return null; // no usable marker there: it is written anew
  }
}

/**
 * {@linkcode writeMarker}, asynchronous; and a marker that tells the same as the one the
 * folder already has (`present` names it) is left as it is, so a folder uploaded again
 * without a change keeps its marker and its modification time (`find -newer` pipelines).
 *
 * @returns whether the marker was written.
 */
export async function writeMarkerAsync(
  folderPath: string,
  marker: SuccessMarker | FailedMarker,
  config: MarkerConfig,
  present?: ReadonlySet<string>,
): Promise<boolean> {
  const plan = planMarker(folderPath, marker, config, present);
  const name = marker.status === "success" ? config.successMarker : config.failedMarker;
  const existing = present?.has(name) ? await readMarker(plan.target) : null;
  if (existing !== null && sameMarker(existing, marker as unknown as Record<string, unknown>)) {
    await removeStale(plan.stale);
    return false;
  }
  try {
    await Deno.writeTextFile(plan.temp, plan.text);
    await Deno.rename(plan.temp, plan.target);
  } catch (error) {
    await Deno.remove(plan.temp).catch(() => {
      // The temp file was never created or is already gone; the original error matters.
    });
    throw error;
  }
  await removeStale(plan.stale);
  return true;
}

/** Removes the opposite marker (a missing one is fine). */
async function removeStale(paths: readonly string[]): Promise<void> {
  for (const stale of paths) {
    await Deno.remove(stale).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }
}
