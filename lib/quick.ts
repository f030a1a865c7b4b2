/**
 * Quick upload: named folders (or paths streamed on stdin) go straight to the server, with
 * no tree scan. Uses the manager's write path (LazyWriter, writeBatch), row
 * builder, snapshot and markers, and records each folder in the tracking database when
 * one is given, so a later `deno task upload` does not send it again. Never prints: it
 * reports through typed events, which {@linkcode quickEventLines} turns into the original
 * script's step lines.
 *
 * @module
 */

import { basename, isAbsolute, relative, resolve, sep as SEPARATOR } from "node:path";
import { markerNames, type UploaderConfig } from "../config.ts";
import { EXIT, messageOf, UploadError } from "./errors.ts";
import { buildRow } from "./folder.ts";
import { writeMarker } from "./markers.ts";
import { type FolderSnapshot, isImageName, isUploadUnit, snapshotFolder } from "./scan.ts";
import { sleep } from "./retry.ts";
import type { Connector } from "./connect.ts";
import type { Tracker } from "./tracker.ts";
import { type BatchItem, LazyWriter, writeBatch } from "./writer.ts";

/** What a quick upload reports as it goes. */
export type QuickEvent =
  | {
    event: "run_start";
    mode: "quick";
    base: string | null;
    target: string;
    embedded: boolean;
    /** The tracking database folders are recorded in, or null. */
    tracker: string | null;
  }
  | { event: "folder_start"; path: string }
  | { event: "folder_skipped"; path: string; reason: string }
  | { event: "settle_wait"; path: string; wait_ms: number }
  | { event: "folder_found"; path: string; key: string; images: number; stats: boolean }
  | { event: "folder_read"; path: string; key: string; stats: boolean; test_status: string }
  | { event: "folder_failed"; path: string; key: string | null; error: string }
  | { event: "inserting"; batch: string; table: string; folders: number }
  | { event: "folder_uploaded"; path: string; key: string; batch: string }
  | { event: "marker_written"; path: string; marker: string }
  | { event: "marker_error"; path: string; error: string }
  | {
    event: "batch_done";
    batch: string;
    folders: number;
    ok: number;
    failed: number;
    inserted: number;
    updated: number;
    bytes: number;
    duration_ms: number;
  }
  | { event: "retry"; subject: string; attempt: number; delay_ms: number; reason: string }
  | { event: "schema"; table: string; rekeyed: number }
  | { event: "stopping"; reason: string };

/** Counts of a quick upload. */
export interface QuickCounters {
  /** Paths given (command line or stdin), duplicates included. */
  given: number;
  /** Paths given again and skipped. */
  duplicates: number;
  /** Folders the server acknowledged. */
  uploaded: number;
  /** Rows inserted. */
  inserted: number;
  /** Rows rewritten because their content changed. */
  updated: number;
  /** Folders that failed: missing, not a unit, bad stats.json, refused by the server. */
  failed: number;
  /** Folders recorded in the tracking database. */
  recorded: number;
  /** Bytes of row data sent. */
  bytes: number;
  /** Statements (batches) written. */
  batches: number;
  /** Transient failures retried. */
  retries: number;
  /** Marker files that could not be written. */
  markerErrors: number;
}

/** Settings of {@linkcode runQuickUpload}. */
export interface QuickOptions {
  config: UploaderConfig;
  /** Where rows go; opened on the first batch, closed by the caller. */
  connector: Connector;
  /** This device's id. */
  deviceId: string;
  /** The tracking database to record folders in, or null to record nothing. */
  tracker?: Tracker | null;
  /** Keys are relative to this directory; null keys each folder by its name. Default null. */
  base?: string | null;
  /** Write success.json / failed.json. Default true. */
  markers?: boolean;
  /** Aborting stops taking folders; the batch in flight finishes (or `graceMs` passes). */
  signal?: AbortSignal;
  onEvent?: (event: QuickEvent) => void;
  /** How long a batch in flight may finish after an abort. Default 10 s. */
  graceMs?: number;
  /** Client-side statement timeout (ms). Default 10 minutes. */
  statementTimeoutMs?: number;
  /** Settle rounds per folder before it is sent as it is. Default 20. */
  maxSettleRounds?: number;
  /** The clock. */
  now?: () => number;
}

/** How a quick upload ended. */
export interface QuickResult {
  counters: QuickCounters;
  exitCode: number;
  status: "completed" | "failed" | "interrupted" | "unreachable";
  durationMs: number;
  /** The error that stopped the run early, if one did. */
  error?: UploadError;
  /** The tracker's run id, when folders were recorded. */
  runId: number | null;
}

/** A fresh set of zero counters. */
export function newQuickCounters(): QuickCounters {
  return {
    given: 0,
    duplicates: 0,
    uploaded: 0,
    inserted: 0,
    updated: 0,
    failed: 0,
    recorded: 0,
    bytes: 0,
    batches: 0,
    retries: 0,
    markerErrors: 0,
  };
}

/**
 * The key a folder is uploaded under: its own name, or with `base` its path relative to
 * `base`, `/`-separated (the base's own name when the folder is the base), as the scan of
 * `base` would key it.
 *
 * @throws {UploadError} kind `folder` when the folder is outside `base`.
 *
 * @example
 * ```ts
 * folderKeyFor("/data/Line2/Batch12", null); // "Batch12"
 * folderKeyFor("/data/Line2/Batch12", "/data"); // "Line2/Batch12"
 * ```
 */
export function folderKeyFor(path: string, base: string | null): string {
  const dir = resolve(path);
  if (base === null) return basename(dir);
  const root = resolve(base);
  const rel = relative(root, dir);
  if (rel === "") return basename(root);
  if (rel === ".." || rel.startsWith(`..${SEPARATOR}`) || isAbsolute(rel)) {
    throw new UploadError("folder", `Folder ${dir} is outside --base ${root}`, { subject: dir });
  }
  return rel.split(SEPARATOR).join("/");
}

/**
 * Splits a text stream into trimmed, non-empty lines (a trailing `\r` is dropped, so
 * CRLF input works). Used for `deno task quick -`.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      const line = rest.slice(0, nl).replace(/\r$/, "");
      rest = rest.slice(nl + 1);
      if (line.trim() !== "") yield line;
    }
  }
  const last = rest.replace(/\r$/, "");
  if (last.trim() !== "") yield last;
}

/** Paths waiting to be uploaded, filled by a reader while batches are written. */
class PathQueue {
  #items: string[] = [];
  #ended = false;
  #error: unknown = undefined;
  #wake: (() => void) | null = null;

  push(path: string): void {
    this.#items.push(path);
    this.#notify();
  }

  end(error?: unknown): void {
    this.#ended = true;
    this.#error = error;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Up to `max` paths, waiting for at least one; null once the input has ended and drained. */
  async take(max: number, signal?: AbortSignal): Promise<string[] | null> {
    let waited = false;
    while (this.#items.length === 0 && !this.#ended && !signal?.aborted) {
      waited = true;
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        this.#wake = () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        };
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    }
    // Woken by the first line of a chunk: let the reader queue the rest of that chunk.
    if (waited && !this.#ended) await new Promise((resolve) => setTimeout(resolve, 0));
    if (this.#items.length === 0) {
      if (this.#error !== undefined) throw this.#error;
      return null;
    }
    return this.#items.splice(0, max);
  }
}

interface Prepared {
  snap: FolderSnapshot;
  item: BatchItem;
}

/**
 * Uploads the folders in `paths` (an array, or an async stream such as stdin's lines).
 * Folders are taken as they come, up to `config.batchSize` per upsert statement.
 *
 * Never throws for one folder's problem: a missing path, a non-folder, a folder that is no
 * upload unit or outside `base`, a bad stats.json or a row the server refuses fail that
 * folder alone. Throws only when reading `paths` itself fails.
 */
export async function runQuickUpload(
  paths: Iterable<string> | AsyncIterable<string>,
  options: QuickOptions,
): Promise<QuickResult> {
  const { config } = options;
  const now = options.now ?? Date.now;
  const started = now();
  const emit = options.onEvent ?? (() => {});
  const counters = newQuickCounters();
  const tracker = options.tracker ?? null;
  const base = options.base ? resolve(options.base) : null;
  const markers = markerNames(config);
  const writeMarkers = options.markers ?? true;
  const minAgeMs = config.minAgeSeconds * 1000;
  const maxRounds = options.maxSettleRounds ?? 20;

  const stop = new AbortController();
  let fatal: UploadError | undefined;
  const onAbort = () => {
    if (!stop.signal.aborted) {
      emit({ event: "stopping", reason: "interrupted" });
      stop.abort();
    }
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) onAbort();

  const runId = tracker ? tracker.startRun(base, "quick", new Date(started)) : null;
  emit({
    event: "run_start",
    mode: "quick",
    base,
    target: options.connector.display,
    embedded: options.connector.embedded,
    tracker: tracker?.path ?? null,
  });

  // The reader: fills the queue while batches are written, so a stream is served as it
  // arrives and a long list still goes in full batches.
  const queue = new PathQueue();
  const reading = (async () => {
    try {
      if (Symbol.iterator in paths) {
        // A list: queue it whole, so it goes in full batches.
        for (const path of paths) queue.push(path);
        queue.end();
        return;
      }
      for await (const path of paths) {
        if (stop.signal.aborted) break;
        queue.push(path);
      }
      queue.end();
    } catch (error) {
      queue.end(new UploadError("usage", `Cannot read the folder list: ${messageOf(error)}`));
    }
  })();

  // The write side, opened on the first batch.
  const writer = new LazyWriter({
    connector: options.connector,
    config,
    deviceId: options.deviceId,
    statementTimeoutMs: options.statementTimeoutMs,
    counters,
    emit,
    now,
  });

  const putMarker = (path: string, marker: Parameters<typeof writeMarker>[1]) => {
    if (!writeMarkers) return;
    try {
      writeMarker(path, marker, config);
      emit({
        event: "marker_written",
        path,
        marker: marker.status === "success" ? config.successMarker : config.failedMarker,
      });
    } catch (error) {
      counters.markerErrors++;
      emit({
        event: "marker_error",
        path,
        error: `Cannot write marker in ${path}: ${messageOf(error)}`,
      });
    }
  };

  const failFolder = (path: string, key: string | null, error: string, snap?: FolderSnapshot) => {
    counters.failed++;
    emit({ event: "folder_failed", path, key, error });
    if (snap) {
      if (tracker && runId !== null) {
        tracker.transaction(() => tracker.trackFolder(snap, base, runId, new Date(now())));
        tracker.recordFolderFailures([{ path: snap.path, error }], new Date(now()));
        counters.recorded++;
      }
      putMarker(snap.path, {
        status: "failed",
        folder_name: snap.name,
        folder_key: snap.key,
        failed_time: new Date(now()).toISOString(),
        error,
      });
    }
  };

  const snapshotOptions = {
    imageExtensions: config.imageExtensions,
    statsFileName: config.statsFileName,
    markerNames: markers,
  };

  const seen = new Set<string>();

  /** Checks, snapshots (after the folder settles) and builds one folder's row. */
  const prepare = async (given: string): Promise<Prepared | null> => {
    const path = resolve(given);
    let identity = path;
    try {
      identity = Deno.realPathSync(path);
    } catch (_error) {
      // Missing or unreadable: the checks below report it; the plain path identifies it.
    }
    if (seen.has(identity)) {
      counters.duplicates++;
      emit({ event: "folder_skipped", path, reason: "given more than once" });
      return null;
    }
    seen.add(identity);
    emit({ event: "folder_start", path });
    let key: string;
    try {
      key = folderKeyFor(path, base);
    } catch (error) {
      failFolder(path, null, messageOf(error));
      return null;
    }
    let info: Deno.FileInfo;
    try {
      info = Deno.statSync(path);
    } catch (error) {
      const reason = error instanceof Deno.errors.NotFound
        ? `No such folder: ${path}`
        : `Cannot read ${path}: ${messageOf(error)}`;
      failFolder(path, key, reason);
      return null;
    }
    if (!info.isDirectory) {
      failFolder(path, key, `Not a directory: ${path}`);
      return null;
    }
    let snap: FolderSnapshot | undefined;
    for (let round = 0;; round++) {
      const item = snapshotFolder(path, { ...snapshotOptions, key });
      if (item.kind === "problem") {
        failFolder(path, key, `Cannot read ${item.problem.path}: ${item.problem.reason}`);
        return null;
      }
      snap = item.snapshot;
      if (!isUploadUnit(snap, snapshotOptions)) {
        failFolder(
          path,
          key,
          `Not an upload unit: ${path} holds no image and no ${config.statsFileName}`,
        );
        return null;
      }
      const age = now() - snap.newestMtimeMs;
      if (age >= minAgeMs || round >= maxRounds || stop.signal.aborted) break;
      // Still being written: wait until its newest file is old enough, then look again.
      const wait = Math.min(minAgeMs, minAgeMs - age) + 50;
      emit({ event: "settle_wait", path, wait_ms: wait });
      await sleep(wait, stop.signal);
    }
    if (stop.signal.aborted) return null;
    const stats = snap.files.some((f) => f.name === config.statsFileName);
    emit({
      event: "folder_found",
      path,
      key,
      images: snap.files.filter((f) => isImageName(f.name, config.imageExtensions)).length,
      stats,
    });
    let built;
    try {
      built = buildRow(snap, config, new Date(now()));
    } catch (error) {
      failFolder(path, key, messageOf(error), snap);
      return null;
    }
    emit({ event: "folder_read", path, key, stats, test_status: built.row.test_status });
    return { snap, item: { path: snap.path, row: built.row, json: built.json } };
  };

  const runStamp = new Date(started).toISOString().replace(/[-:]/g, "").replace("T", "_").slice(
    0,
    15,
  );
  let batchSeq = 0;

  /** Writes one batch of prepared folders and records the outcome. */
  const writeOne = async (prepared: Prepared[]) => {
    batchSeq++;
    const batchName = `quick_${runStamp}_${String(batchSeq).padStart(4, "0")}`;
    const batchId = `quick-${runId ?? started}-${batchSeq}`;
    const items = prepared.map((p) => p.item);
    const snaps = new Map(prepared.map((p) => [p.snap.path, p.snap]));
    const bytes = items.reduce((s, i) => s + i.json.length, 0);
    const context = await writer.open();
    const startedAt = new Date(now());
    if (tracker && runId !== null) {
      tracker.transaction(() => {
        for (const p of prepared) tracker.trackFolder(p.snap, base, runId, startedAt);
      });
      tracker.startBatch(batchId, batchName, runId, items.length, startedAt);
    }
    emit({ event: "inserting", batch: batchName, table: config.table, folders: items.length });
    let result;
    try {
      result = await writeBatch(items, batchName, context);
    } catch (error) {
      if (tracker) tracker.abandonBatch(batchId, stop.signal.aborted ? "interrupted" : "failed");
      throw error;
    }
    const endedAt = new Date(now());
    const okCount = result.outcomes.filter((o) => o.ok).length;
    if (tracker && runId !== null) {
      tracker.recordBatch(
        {
          batchId,
          batchName,
          runId,
          totalFolders: items.length,
          startTime: startedAt,
          endTime: endedAt,
          status: okCount === 0 ? "failed" : "completed",
          bytes,
        },
        result.outcomes.map((o) => ({
          path: o.item.path,
          fingerprint: snaps.get(o.item.path)!.fingerprint,
          ok: o.ok,
          error: o.error,
        })),
      );
      counters.recorded += items.length;
    }
    counters.batches++;
    counters.inserted += result.inserted;
    counters.updated += result.updated;
    counters.bytes += bytes;
    for (const o of result.outcomes) {
      const snap = snaps.get(o.item.path)!;
      if (o.ok) {
        counters.uploaded++;
        emit({ event: "folder_uploaded", path: snap.path, key: snap.key, batch: batchName });
        putMarker(snap.path, {
          status: "success",
          folder_name: snap.name,
          folder_key: snap.key,
          upload_time: endedAt.toISOString(),
          upload_batch: batchName,
          images_uploaded: o.item.row.images.length,
          test_status: o.item.row.test_status,
          folder_hash: snap.fingerprint,
        });
      } else {
        counters.failed++;
        const error = o.error ?? "Refused by the server";
        emit({ event: "folder_failed", path: snap.path, key: snap.key, error });
        putMarker(snap.path, {
          status: "failed",
          folder_name: snap.name,
          folder_key: snap.key,
          failed_time: endedAt.toISOString(),
          error,
        });
      }
    }
    emit({
      event: "batch_done",
      batch: batchName,
      folders: items.length,
      ok: okCount,
      failed: items.length - okCount,
      inserted: result.inserted,
      updated: result.updated,
      bytes,
      duration_ms: endedAt.getTime() - startedAt.getTime(),
    });
  };

  // The batch in flight: the loop waits for it or for an abort, whichever comes first, so
  // after an abort it gets a grace period (below) instead of an unbounded wait.
  const aborted = new Promise<void>((resolve) => {
    if (stop.signal.aborted) resolve();
    stop.signal.addEventListener("abort", () => resolve(), { once: true });
  });
  let inflight: Promise<void> | null = null;
  const write = async (prepared: Prepared[]) => {
    inflight = writeOne(prepared).catch((error) => {
      const e = error instanceof UploadError
        ? error
        : new UploadError("fatal", messageOf(error), { cause: error });
      if (e.kind !== "interrupted" && !fatal) {
        fatal = e;
        emit({ event: "stopping", reason: e.message });
      }
      stop.abort();
    });
    await Promise.race([inflight, aborted]);
  };

  try {
    while (!stop.signal.aborted && !fatal) {
      const taken = await queue.take(Math.max(1, config.batchSize), stop.signal);
      if (taken === null) break;
      counters.given += taken.length;
      let batch: Prepared[] = [];
      let keys = new Set<string>();
      for (const path of taken) {
        if (stop.signal.aborted || fatal) break;
        const prepared = await prepare(path);
        if (!prepared) continue;
        let bytes = batch.reduce((s, p) => s + p.item.json.length, 0);
        // One statement cannot write one row twice, and statements stay under the size bound.
        if (
          batch.length > 0 &&
          (keys.has(prepared.item.row.folder_key) ||
            bytes + prepared.item.json.length > config.maxBatchBytes)
        ) {
          await write(batch);
          batch = [];
          keys = new Set();
          bytes = 0;
        }
        batch.push(prepared);
        keys.add(prepared.item.row.folder_key);
      }
      if (batch.length > 0 && !stop.signal.aborted && !fatal) await write(batch);
    }
  } catch (error) {
    if (!(error instanceof UploadError)) throw error;
    fatal ??= error;
  }

  // After an abort, the batch in flight gets a grace period, then its psql is killed.
  if (inflight && stop.signal.aborted) {
    const grace = options.graceMs ?? 10_000;
    const graceOver = new AbortController();
    const timedOut = await Promise.race([
      (inflight as Promise<void>).then(() => false),
      sleep(grace, graceOver.signal).then(() => !graceOver.signal.aborted),
    ]);
    graceOver.abort();
    if (timedOut) {
      writer.abandon();
      await inflight;
    }
  }
  await writer.close();
  options.signal?.removeEventListener("abort", onAbort);
  // After an abort the reader may wait on an open stdin forever: leave it.
  if (!stop.signal.aborted) await reading;

  const interrupted = options.signal?.aborted ?? false;
  let status: QuickResult["status"];
  let exitCode: number;
  if (fatal?.kind === "unreachable" || fatal?.kind === "transient") {
    status = "unreachable";
    exitCode = EXIT.UNREACHABLE;
  } else if (fatal && fatal.kind !== "interrupted") {
    status = "failed";
    exitCode = fatal.kind === "config" || fatal.kind === "usage" || fatal.kind === "locked"
      ? EXIT.USAGE
      : EXIT.SOME_FAILED;
  } else if (interrupted) {
    status = "interrupted";
    exitCode = EXIT.INTERRUPTED;
  } else {
    status = "completed";
    exitCode = counters.failed > 0 ? EXIT.SOME_FAILED : EXIT.OK;
  }
  const durationMs = now() - started;
  if (tracker && runId !== null) {
    tracker.finishRun(runId, status, { ...counters, duration_ms: durationMs }, false, new Date());
  }
  return {
    counters,
    exitCode,
    status,
    durationMs,
    error: fatal && fatal.kind !== "interrupted" ? fatal : undefined,
    runId,
  };
}

/** One human line for an event: `info` lines are progress, `warn` lines always print. */
export interface QuickLine {
  level: "info" | "warn";
  text: string;
}

/**
 * The human step lines of an event, in the original quick upload script's words
 * (`Processing folder: ...`, `Found 2 images`, `Test status: passed`, ...).
 */
export function quickEventLines(
  e: QuickEvent,
  config: Pick<UploaderConfig, "statsFileName">,
): QuickLine[] {
  const info = (text: string): QuickLine => ({ level: "info", text });
  const warn = (text: string): QuickLine => ({ level: "warn", text });
  switch (e.event) {
    case "folder_start":
      return [info(`Processing folder: ${e.path}`)];
    case "folder_skipped":
      return [info(`Skipped ${e.path}: ${e.reason}`)];
    case "settle_wait":
      return [
        info(`  Waiting ${(e.wait_ms / 1000).toFixed(1)} s: the folder is still being written`),
      ];
    case "folder_found":
      return [
        info(`  Found ${e.images} image${e.images === 1 ? "" : "s"}`),
        info(e.stats ? `  Found ${config.statsFileName}` : `  No ${config.statsFileName}`),
      ];
    case "folder_read":
      return [
        ...(e.stats ? [info(`  Loaded ${config.statsFileName}`)] : []),
        info(`  Test status: ${e.test_status}`),
      ];
    case "folder_failed":
      return [warn(`  Failed: ${e.error}`)];
    case "inserting":
      return [
        info(
          `Inserting into ${e.table}...${
            e.folders > 1 ? ` (${e.folders} folders, ${e.batch})` : ""
          }`,
        ),
      ];
    case "folder_uploaded":
      return [info(`  Success: uploaded ${e.key}`)];
    case "marker_written":
      return [info(`  Marker written: ${e.marker}`)];
    case "marker_error":
      return [warn(`  ${e.error}`)];
    case "retry":
      return [
        info(
          `Retrying ${e.subject} (attempt ${e.attempt}) in ${
            (e.delay_ms / 1000).toFixed(1)
          } s: ${e.reason}`,
        ),
      ];
    case "schema":
      return e.rekeyed > 0
        ? [
          warn(
            `Upgraded ${e.table}: ${e.rekeyed} duplicate rows of the original tool were kept under ` +
              `keys marked "(duplicate ...)"`,
          ),
        ]
        : [];
    case "stopping":
      return [warn(`Stopping: ${e.reason}`)];
    default:
      return [];
  }
}
