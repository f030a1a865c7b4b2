/**
 * The upload run: scan -> diff -> build rows -> batch -> write -> record -> markers.
 * Streams: folders are diffed in chunks as the walk finds them and batches are written
 * while the walk goes on, so memory does not grow with the tree. The core never prints;
 * it reports through typed events and a counters object.
 *
 * @module
 */

import { markerNames, type UploaderConfig } from "../config.ts";
import { EXIT, messageOf, UploadError } from "./errors.ts";
import { buildRow } from "./folder.ts";
import { type FailedMarker, MarkerWriter, type SuccessMarker } from "./markers.ts";
import {
  type FolderSnapshot,
  scanFolderChunks,
  scanFoldersInWorker,
  snapshotFolder,
} from "./scan.ts";
import { sleep } from "./retry.ts";
import type { ScanDecision, Tracker } from "./tracker.ts";
import type { Connector } from "./connect.ts";
import { type BatchItem, LazyWriter, writeBatch } from "./writer.ts";

/** Live counts of a run, read by progress output. */
export interface RunCounters {
  /** Upload units found by the scan. */
  scanned: number;
  /** New to the tracker. */
  new: number;
  /** Changed since the last scan. */
  changed: number;
  /** Unchanged since the last scan. */
  unchanged: number;
  /** Folders that could not be read. */
  unreadable: number;
  /** Folders left for later because their newest file is too young. */
  settling: number;
  /** Folders queued for upload in this run (new, changed, pending, retried). */
  queued: number;
  /** Folders the server acknowledged. */
  uploaded: number;
  /** Rows the server inserted. */
  inserted: number;
  /** Rows the server rewrote because their content changed. */
  updated: number;
  /** Folders that failed (bad stats.json, refused by the server). */
  failed: number;
  /** Marker files that could not be written. */
  markerErrors: number;
  /** Bytes of row data sent (or, in a dry run, that would be sent). */
  bytes: number;
  /** Batches finished. */
  batches: number;
  /** Transient failures retried. */
  retries: number;
  /** Tracked folders the scan did not find on disk. */
  missing: number;
}

/** A fresh set of zero counters. */
export function newCounters(): RunCounters {
  return {
    scanned: 0,
    new: 0,
    changed: 0,
    unchanged: 0,
    unreadable: 0,
    settling: 0,
    queued: 0,
    uploaded: 0,
    inserted: 0,
    updated: 0,
    failed: 0,
    markerErrors: 0,
    bytes: 0,
    batches: 0,
    retries: 0,
    missing: 0,
  };
}

/** What the pipeline tells its caller as it goes. */
export type PipelineEvent =
  | { event: "run_start"; mode: RunMode; base: string; target: string | null; embedded: boolean }
  | { event: "problem"; path: string; reason: string }
  | { event: "folder_failed"; path: string; key: string; error: string }
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
  | { event: "settle_wait"; folders: number; wait_ms: number }
  | { event: "missing"; count: number; sample: string[] }
  | { event: "stopping"; reason: string };

/** What the run does. */
export type RunMode = "upload" | "scan-only" | "dry-run";

/** Settings of {@linkcode runUpload}. */
export interface UploadOptions {
  basePath: string;
  config: UploaderConfig;
  tracker: Tracker;
  mode: RunMode;
  /** Where rows go; required in `upload` mode. */
  connector?: Connector;
  /** This device's id (from the tracker or config). */
  deviceId: string;
  /** Write success.json / failed.json. Default true. */
  markers?: boolean;
  /** Aborting stops the scan and, after `graceMs`, the batches in flight. */
  signal?: AbortSignal;
  onEvent?: (event: PipelineEvent) => void;
  /** Counters to update (so a progress display can read them). */
  counters?: RunCounters;
  /** How long in-flight batches may finish after an abort. Default 10 s. */
  graceMs?: number;
  /** Folders diffed per tracker transaction. Default 1000. */
  chunkSize?: number;
  /** Client-side statement timeout (ms). Default 10 minutes. */
  statementTimeoutMs?: number;
  /** Longest the run waits at the end for settling folders to settle. Default: min-age. */
  settleWaitMs?: number;
  /** Walk the tree on a worker thread, in parallel with the rest. Default true. */
  scanInWorker?: boolean;
  /** The clock. */
  now?: () => number;
}

/** How a run ended. */
export interface RunResult {
  counters: RunCounters;
  exitCode: number;
  status: "completed" | "failed" | "interrupted" | "unreachable";
  durationMs: number;
  /** The error that stopped the run early, if one did. */
  error?: UploadError;
  runId: number | null;
  /** Folders failed earlier that reached --max-retries and are no longer retried. */
  exhausted: number;
}

const MAX_SETTLE_REVISITS = 10_000;

/**
 * Runs a scan, and in `upload` mode uploads every new or changed folder.
 *
 * Never throws for a folder's problem; those are counted, recorded and reported. Throws
 * only for what stops the whole run before it starts (e.g. the base path is missing).
 */
export async function runUpload(options: UploadOptions): Promise<RunResult> {
  const { config, tracker, mode } = options;
  const now = options.now ?? Date.now;
  const started = now();
  const counters = options.counters ?? newCounters();
  const emit = options.onEvent ?? (() => {});
  const markers = markerNames(config);
  const writeMarkers = (options.markers ?? true) && mode === "upload";
  const dryRun = mode === "dry-run";
  const chunkSize = options.chunkSize ?? 1000;
  const basePath = options.basePath;

  // Fail before recording a run when the base path is not there.
  try {
    if (!Deno.statSync(basePath).isDirectory) {
      throw new UploadError("usage", `Not a directory: ${basePath}`, { subject: basePath });
    }
  } catch (error) {
    if (error instanceof UploadError) throw error;
    throw new UploadError("usage", `Cannot read base path ${basePath}: ${messageOf(error)}`, {
      subject: basePath,
    });
  }

  const runId = dryRun ? null : tracker.startRun(basePath, mode, new Date(started));
  emit({
    event: "run_start",
    mode,
    base: basePath,
    target: options.connector?.display ?? null,
    embedded: options.connector?.embedded ?? false,
  });

  // The run's own abort: the caller's signal, or a fatal error in a batch.
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

  // The write side, opened on the first batch.
  const writer = new LazyWriter({
    connector: options.connector ?? NO_CONNECTOR,
    config,
    deviceId: options.deviceId,
    statementTimeoutMs: options.statementTimeoutMs,
    counters,
    emit,
    now,
  });

  const runStamp = new Date(started).toISOString().replace(/[-:]/g, "").replace("T", "_").slice(
    0,
    15,
  );
  let batchSeq = 0;
  const inflight = new Set<Promise<void>>();
  let lastBatchAt = 0;

  const failFolder = (snap: FolderSnapshot, error: string) => {
    counters.failed++;
    emit({ event: "folder_failed", path: snap.path, key: snap.key, error });
  };

  const markFailedLocally = async (pairs: { snap: FolderSnapshot; error: string }[]) => {
    if (pairs.length === 0) return;
    if (!dryRun) {
      tracker.recordFolderFailures(pairs.map((p) => ({ path: p.snap.path, error: p.error })));
    }
    for (const p of pairs) {
      failFolder(p.snap, p.error);
      if (writeMarkers) {
        await putMarker(p.snap, {
          status: "failed",
          folder_name: p.snap.name,
          folder_key: p.snap.key,
          failed_time: new Date(now()).toISOString(),
          error: p.error,
        });
      }
    }
  };

  const markerWriter = new MarkerWriter(config, {
    onError: (path, error) => {
      counters.markerErrors++;
      emit({
        event: "marker_error",
        path,
        error: `Cannot write marker in ${path}: ${messageOf(error)}`,
      });
    },
  });
  const putMarker = (snap: FolderSnapshot, marker: SuccessMarker | FailedMarker) =>
    markerWriter.write(snap.path, marker, snap.files.map((f) => f.name));

  const processBatch = async (items: BatchItem[], snaps: Map<string, FolderSnapshot>) => {
    batchSeq++;
    const batchName = `batch_${runStamp}_${String(batchSeq).padStart(4, "0")}`;
    const batchId = `${runId}-${batchSeq}`;
    const bytes = items.reduce((s, i) => s + i.json.length, 0);
    const context = await writer.open();
    const startedAt = new Date(now());
    tracker.startBatch(batchId, batchName, runId!, items.length, startedAt);
    let result;
    try {
      result = await writeBatch(items, batchName, context);
    } catch (error) {
      tracker.abandonBatch(batchId, stop.signal.aborted ? "interrupted" : "failed");
      throw error;
    }
    const endedAt = new Date(now());
    const okCount = result.outcomes.filter((o) => o.ok).length;
    tracker.recordBatch(
      {
        batchId,
        batchName,
        runId: runId!,
        totalFolders: items.length,
        startTime: startedAt,
        endTime: endedAt,
        status: okCount === items.length ? "completed" : okCount === 0 ? "failed" : "completed",
        bytes,
      },
      result.outcomes.map((o) => ({
        path: o.item.path,
        fingerprint: snaps.get(o.item.path)!.fingerprint,
        ok: o.ok,
        error: o.error,
      })),
    );
    counters.batches++;
    counters.inserted += result.inserted;
    counters.updated += result.updated;
    counters.bytes += bytes;
    for (const o of result.outcomes) {
      const snap = snaps.get(o.item.path)!;
      if (o.ok) {
        counters.uploaded++;
        if (writeMarkers) {
          await putMarker(snap, {
            status: "success",
            folder_name: snap.name,
            folder_key: snap.key,
            upload_time: endedAt.toISOString(),
            upload_batch: batchName,
            images_uploaded: o.item.row.images.length,
            test_status: o.item.row.test_status,
            folder_hash: snap.fingerprint,
          });
        }
      } else {
        failFolder(snap, o.error ?? "Refused by the server");
        if (writeMarkers) {
          await putMarker(snap, {
            status: "failed",
            folder_name: snap.name,
            folder_key: snap.key,
            failed_time: endedAt.toISOString(),
            error: o.error ?? "Refused by the server",
          });
        }
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

  const dispatch = async (items: BatchItem[], snaps: Map<string, FolderSnapshot>) => {
    while (inflight.size >= Math.max(1, config.parallel)) await Promise.race(inflight);
    if (fatal || stop.signal.aborted) return;
    if (config.batchDelaySeconds > 0 && lastBatchAt > 0) {
      const wait = lastBatchAt + config.batchDelaySeconds * 1000 - now();
      await sleep(wait, stop.signal);
      if (stop.signal.aborted) return;
    }
    lastBatchAt = now();
    const p: Promise<void> = processBatch(items, snaps)
      .catch((error) => {
        const e = error instanceof UploadError
          ? error
          : new UploadError("fatal", messageOf(error), { cause: error });
        if (e.kind !== "interrupted" && !fatal) {
          fatal = e;
          emit({ event: "stopping", reason: e.message });
        }
        stop.abort();
      })
      .finally(() => inflight.delete(p));
    inflight.add(p);
  };

  // The batch being filled.
  let items: BatchItem[] = [];
  let itemSnaps = new Map<string, FolderSnapshot>();
  let itemBytes = 0;
  let itemKeys = new Set<string>();
  const flush = async () => {
    if (items.length === 0) return;
    const batch = items;
    const snaps = itemSnaps;
    items = [];
    itemSnaps = new Map();
    itemKeys = new Set();
    itemBytes = 0;
    await dispatch(batch, snaps);
  };

  const settlingLater: FolderSnapshot[] = [];
  const handleDecisions = async (decisions: ScanDecision[], revisit = false) => {
    const localFailures: { snap: FolderSnapshot; error: string }[] = [];
    for (const d of decisions) {
      if (revisit) {
        if (d.settling) continue;
      } else if (d.change === "new") counters.new++;
      else if (d.change === "changed") counters.changed++;
      else counters.unchanged++;
      if (!revisit && d.settling) {
        counters.settling++;
        if (settlingLater.length < MAX_SETTLE_REVISITS) settlingLater.push(d.snapshot);
      }
      if (!d.upload || mode === "scan-only") continue;
      counters.queued++;
      let built;
      try {
        built = buildRow(d.snapshot, config, new Date(now()));
      } catch (error) {
        localFailures.push({ snap: d.snapshot, error: messageOf(error) });
        continue;
      }
      if (dryRun) {
        counters.bytes += built.json.length;
        continue;
      }
      const bytes = built.json.length;
      if (
        items.length > 0 &&
        (items.length >= config.batchSize || itemBytes + bytes > config.maxBatchBytes ||
          itemKeys.has(built.row.folder_key))
      ) {
        await flush();
      }
      itemKeys.add(built.row.folder_key);
      items.push({ path: d.snapshot.path, row: built.row, json: built.json });
      itemSnaps.set(d.snapshot.path, d.snapshot);
      itemBytes += bytes;
    }
    await markFailedLocally(localFailures);
    if (items.length >= config.batchSize) await flush();
  };

  const diffOptions = () => ({
    nowMs: now(),
    minAgeMs: config.minAgeSeconds * 1000,
    maxRetries: config.maxRetries,
  });

  let scanComplete = false;
  try {
    let chunk: FolderSnapshot[] = [];
    const scanOptions = {
      imageExtensions: config.imageExtensions,
      statsFileName: config.statsFileName,
      markerNames: markers,
      signal: stop.signal,
    };
    const scan = options.scanInWorker === false
      ? scanFolderChunks(basePath, scanOptions)
      : scanFoldersInWorker(basePath, scanOptions);
    walk: for await (const items of scan) {
      for (const item of items) {
        if (item.kind === "problem") {
          counters.unreadable++;
          emit({ event: "problem", path: item.problem.path, reason: item.problem.reason });
          continue;
        }
        counters.scanned++;
        chunk.push(item.snapshot);
        if (chunk.length >= chunkSize) {
          await handleDecisions(tracker.applyScan(chunk, runId ?? 0, basePath, {
            ...diffOptions(),
            dryRun,
          }));
          chunk = [];
          // Let replies from psql be read between chunks.
          await new Promise((r) => setTimeout(r, 0));
          if (fatal || stop.signal.aborted) break walk;
        }
      }
    }
    if (chunk.length > 0 && !fatal && !stop.signal.aborted) {
      await handleDecisions(tracker.applyScan(chunk, runId ?? 0, basePath, {
        ...diffOptions(),
        dryRun,
      }));
    }
    scanComplete = !stop.signal.aborted && !fatal;

    // Folders that were still being written get one more look once they have settled.
    if (scanComplete && mode !== "scan-only" && settlingLater.length > 0) {
      const youngest = Math.max(...settlingLater.map((s) => s.newestMtimeMs));
      const limit = options.settleWaitMs ?? config.minAgeSeconds * 1000;
      const wait = Math.min(limit, youngest + config.minAgeSeconds * 1000 - now() + 50);
      emit({ event: "settle_wait", folders: settlingLater.length, wait_ms: Math.max(0, wait) });
      await sleep(wait, stop.signal);
      const fresh: FolderSnapshot[] = [];
      for (const snap of settlingLater) {
        const again = snapshotFolder(snap.path, {
          key: snap.key,
          imageExtensions: config.imageExtensions,
          statsFileName: config.statsFileName,
          markerNames: markers,
        });
        if (again.kind === "folder") fresh.push(again.snapshot);
      }
      if (!stop.signal.aborted && fresh.length > 0) {
        const before = counters.settling;
        const decisions = tracker.applyScan(fresh, runId ?? 0, basePath, {
          ...diffOptions(),
          dryRun,
        });
        // Re-count: these folders were counted once already by the scan.
        const stillSettling = decisions.filter((d) => d.settling).length;
        counters.settling = before - fresh.length + stillSettling;
        await handleDecisions(decisions, true);
      }
    }
    await flush();
  } catch (error) {
    if (!(error instanceof UploadError)) throw error;
    fatal ??= error;
  }

  // Wait for batches in flight; after an abort, only for the grace period.
  if (stop.signal.aborted && inflight.size > 0) {
    const grace = options.graceMs ?? 10_000;
    const timedOut = await Promise.race([
      Promise.allSettled([...inflight]).then(() => false),
      sleep(grace).then(() => true),
    ]);
    if (timedOut) {
      writer.abandon();
      await Promise.allSettled([...inflight]);
    }
  } else {
    await Promise.allSettled([...inflight]);
  }
  await markerWriter.drain();
  await writer.close();
  options.signal?.removeEventListener("abort", onAbort);

  if (scanComplete && runId !== null && mode !== "dry-run") {
    const missing = tracker.missing(basePath, runId);
    counters.missing = missing.count;
    if (missing.count > 0) emit({ event: "missing", count: missing.count, sample: missing.sample });
  }

  const exhausted = dryRun ? 0 : countExhausted(tracker, config.maxRetries);
  const interrupted = options.signal?.aborted ?? false;
  let status: RunResult["status"];
  let exitCode: number;
  if (fatal?.kind === "unreachable" || fatal?.kind === "transient") {
    status = "unreachable";
    exitCode = EXIT.UNREACHABLE;
  } else if (fatal && fatal.kind !== "interrupted") {
    status = "failed";
    exitCode = fatal.kind === "config" || fatal.kind === "usage" ? EXIT.USAGE : EXIT.SOME_FAILED;
  } else if (interrupted) {
    status = "interrupted";
    exitCode = EXIT.INTERRUPTED;
  } else {
    status = "completed";
    exitCode = counters.failed > 0 || counters.unreadable > 0 ? EXIT.SOME_FAILED : EXIT.OK;
  }
  const durationMs = now() - started;
  if (runId !== null) {
    tracker.finishRun(
      runId,
      status,
      { ...counters, duration_ms: durationMs },
      scanComplete,
      new Date(now()),
    );
  }
  return {
    counters,
    exitCode,
    status,
    durationMs,
    error: fatal && fatal.kind !== "interrupted" ? fatal : undefined,
    runId,
    exhausted,
  };
}

/** The connector of a run that uploads nothing (scan-only, dry run): never opened. */
const NO_CONNECTOR: Connector = {
  display: "",
  embedded: false,
  id: "",
  open: () => Promise.reject(new UploadError("fatal", "No target to upload to")),
  close: () => Promise.resolve(),
};

function countExhausted(tracker: Tracker, maxRetries: number): number {
  const row = tracker.db.prepare(
    "SELECT count(*) AS n FROM folder_status WHERE upload_status = 'failed' AND retry_count >= ?",
  ).get(maxRetries) as { n: number };
  return Number(row.n);
}
