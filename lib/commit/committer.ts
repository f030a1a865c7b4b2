/**
 * The committer: a planned batch -> objects -> the row sink -> the tracker -> markers and
 * events. Up to `parallel` batches are in flight at once, within a budget of statement bytes
 * (one {@linkcode Budget}); a batch starts only while the run is not stopping, its images
 * are stored before its rows are written, and a folder is recorded as uploaded only after
 * the sink acknowledged its row. The committer knows the sink only by its interface
 * (lib/sink/sink.ts).
 *
 * @module
 */

import type { Run } from "../engine/run.ts";
import { Budget } from "../core/budget.ts";
import { sleep } from "../core/retry.ts";
import type { PlannedBatch, PlannedItem } from "../plan/planner.ts";
import { messageOf } from "../core/errors.ts";
import { actionFor } from "../core/policy.ts";
import { objectsDestination, putFolderObjects } from "../objects/storage.ts";
import type { ItemOutcome, RowSink, WriteResult } from "../sink/sink.ts";

/** Settings of a {@linkcode Committer}. */
export interface CommitterOptions {
  /** Where the rows go; opened on the first batch. */
  sink: RowSink;
  /** Statement bytes allowed in flight at once; a larger batch goes alone. Default 24 MiB. */
  budgetBytes?: number;
}

/** Writes batches and records their outcome. */
export class Committer {
  readonly #run: Run;
  readonly #sink: RowSink;
  /** Batches in flight (slots: `parallel`) and their statement bytes. */
  readonly #budget: Budget;
  readonly #inflight = new Set<Promise<void>>();
  #lastStart = 0;

  constructor(run: Run, options: CommitterOptions) {
    this.#run = run;
    this.#sink = options.sink;
    this.#budget = new Budget(
      Math.max(1, run.config.parallel),
      options.budgetBytes ?? 24 * 1024 * 1024,
    );
  }

  /**
   * Starts writing a batch once a slot and enough of the byte budget are free, and after
   * the configured pause since the last batch. Resolves when the batch is under way; its
   * failure stops the run. Does nothing once the run is stopping.
   */
  async submit(batch: PlannedBatch): Promise<void> {
    const run = this.#run;
    const release = await this.#take(batch.bytes, 1);
    if (release === null) return;
    const delayMs = run.config.batchDelaySeconds * 1000;
    if (delayMs > 0 && this.#lastStart > 0) {
      await sleep(this.#lastStart + delayMs - run.now(), run.stop.signal);
    }
    if (run.stopping) return release();
    this.#lastStart = run.now();
    const task: Promise<void> = this.#commit(batch)
      .catch((error) => run.fail(error))
      .finally(() => {
        this.#inflight.delete(task);
        release();
        for (const item of batch.items) {
          if (run.sending.get(item.path) === item.snapshot.fingerprint) {
            run.sending.delete(item.path);
          }
        }
      });
    this.#inflight.add(task);
  }

  /** Waits until `bytes` more fit in the byte budget (a larger request: until nothing is in flight). */
  async roomFor(bytes: number): Promise<void> {
    const release = await this.#take(bytes, 0);
    release?.();
  }

  /**
   * Takes `slots` and `bytes` of the budget once they are free; null when the run stops
   * first (nothing taken).
   */
  async #take(bytes: number, slots: number): Promise<(() => void) | null> {
    const run = this.#run;
    if (run.stopping) return null;
    try {
      return await this.#budget.acquire({ slots, bytes }, run.stop.signal);
    } catch (error) {
      // The run stopped while this waited: nothing was taken, nothing is to be sent.
      if (run.stopping) return null;
      throw error;
    }
  }

  /**
   * Waits for the batches in flight. When the run is stopping they get `graceMs` to finish;
   * after that the sink abandons them and their folders stay pending.
   */
  async drain(graceMs: number): Promise<void> {
    if (this.#inflight.size === 0) return;
    const all = () => Promise.allSettled([...this.#inflight]);
    if (!this.#run.stopping) {
      await all();
      return;
    }
    const graceOver = new AbortController();
    const finished = await Promise.race([
      all().then(() => true),
      sleep(graceMs, graceOver.signal).then(() => false),
    ]);
    graceOver.abort();
    if (!finished) {
      this.#sink.abandon();
      await all();
    }
  }

  /**
   * Puts the images and reports of a batch's folders into object storage (`--objects-to`),
   * recording each folder's objects in the tracker as soon as they are stored (a re-run after a crash
   * puts only what is missing). A folder whose image the store refuses fails alone; an
   * unreachable store, refused credentials or an interruption stop the run (thrown).
   */
  async #storeObjects(
    items: PlannedItem[],
  ): Promise<{ ready: PlannedItem[]; failed: ItemOutcome<PlannedItem>[] }> {
    const run = this.#run;
    const objects = run.objects;
    if (!objects) return { ready: items, failed: [] };
    const tracker = run.tracker;
    const failed: ItemOutcome<PlannedItem>[] = [];
    const ready: PlannedItem[] = [];
    const tasks = items.map(async (item) => {
      // Nothing to store: no image, no report.
      if ((item.row.image_objects?.length ?? 0) === 0 && !item.row.pdf_url) return item;
      const snap = item.snapshot;
      try {
        const done = await putFolderObjects(objects.store, snap, {
          deviceId: objects.deviceId,
          imageExtensions: run.config.imageExtensions,
          reportExtensions: run.config.reportExtensions,
          // Without a tracker the store itself is asked (HEAD) whether an image is there.
          isStored: run.records
            ? (name, size, md5) =>
              tracker.objectStored(
                snap.path,
                name,
                objects.store.keyFor(
                  objects.deviceId,
                  snap.key,
                  name,
                ),
                size,
                md5,
              )
            : undefined,
          signal: run.stop.signal,
        });
        for (const o of done.objects) {
          if (o.put) {
            run.counters.objects++;
            run.counters.objectBytes += o.size;
          } else run.counters.objectsSkipped++;
        }
        if (run.records) tracker.recordObjects(snap.path, done.objects, new Date(run.now()));
        return item;
      } catch (error) {
        if (actionFor(error, 1) !== "fail") throw error;
        failed.push({ item, ok: false, error: messageOf(error) });
        return null;
      }
    });
    const settled = await Promise.allSettled(tasks);
    for (const s of settled) {
      if (s.status === "rejected") throw s.reason;
      if (s.value) ready.push(s.value);
    }
    return { ready, failed };
  }

  async #commit(batch: PlannedBatch): Promise<void> {
    const run = this.#run;
    await this.#sink.open();
    // The target may take seconds to open (an embedded database's first start): a run
    // stopped meanwhile sends nothing.
    if (run.stopping) return;
    const { name, id } = run.nextBatch();
    const items = batch.items;
    const startedAt = new Date(run.now());
    if (run.records) run.tracker.startBatch(id, name, run.runId, items.length, startedAt);
    if (run.folderEvents) {
      run.emit({ event: "inserting", batch: name, table: run.config.table, folders: items.length });
    }
    let result: WriteResult<PlannedItem>;
    try {
      // Images and reports first: a row never points at an object that is not there.
      const stored = await this.#storeObjects(items);
      result = stored.failed.length === items.length
        ? { outcomes: [], inserted: 0, updated: 0, statements: 0 }
        : await this.#sink.write(stored.ready, name);
      result.outcomes.push(...stored.failed);
    } catch (error) {
      if (run.records) run.tracker.abandonBatch(id, run.stopping ? "interrupted" : "failed");
      throw error;
    }
    const endedAt = new Date(run.now());
    const okCount = result.outcomes.filter((o) => o.ok).length;
    this.#record(batch, { id, name, startedAt, endedAt }, result, okCount);
    const counters = run.counters;
    counters.batches++;
    counters.inserted += result.inserted;
    counters.updated += result.updated;
    counters.bytes += batch.bytes;
    await this.#settle(result.outcomes, name, endedAt);
    run.emit({
      event: "batch_done",
      batch: name,
      folders: items.length,
      ok: okCount,
      failed: items.length - okCount,
      inserted: result.inserted,
      updated: result.updated,
      bytes: batch.bytes,
      duration_ms: endedAt.getTime() - startedAt.getTime(),
    });
  }

  /** Records an acknowledged batch in the tracker: each folder's outcome, in one transaction. */
  #record(
    batch: PlannedBatch,
    at: { id: string; name: string; startedAt: Date; endedAt: Date },
    result: WriteResult<PlannedItem>,
    okCount: number,
  ): void {
    const run = this.#run;
    if (!run.records) return;
    const { id, name, startedAt, endedAt } = at;
    const items = batch.items;
    run.tracker.recordBatch(
      {
        batchId: id,
        batchName: name,
        runId: run.runId,
        totalFolders: items.length,
        startTime: startedAt,
        endTime: endedAt,
        status: okCount === 0 && items.length > 0 ? "failed" : "completed",
        bytes: batch.bytes,
        markers: run.markers !== null,
      },
      result.outcomes.map((o) => ({
        path: o.item.path,
        fingerprint: o.item.snapshot.fingerprint,
        contentHash: o.item.contentHash,
        objectsDest: run.objects && o.item.row.image_objects
          ? objectsDestination(run.objects.store.display, run.config.reportExtensions)
          : undefined,
        ok: o.ok,
        error: o.error,
      })),
    );
  }

  /** Counts, reports and marks each folder of an acknowledged batch. */
  async #settle(
    outcomes: ItemOutcome<PlannedItem>[],
    name: string,
    endedAt: Date,
  ): Promise<void> {
    const run = this.#run;
    const counters = run.counters;
    for (const o of outcomes) {
      const item = o.item;
      const snap = item.snapshot;
      if (o.ok) {
        counters.uploaded++;
        if (run.folderEvents) {
          run.emit({ event: "folder_uploaded", path: snap.path, key: snap.key, batch: name });
        }
        await run.successMarker(snap, {
          upload_time: endedAt.toISOString(),
          upload_batch: name,
          images_uploaded: item.row.images.length,
          test_status: item.row.test_status,
        });
      } else {
        const error = o.error ?? "Refused by the server";
        counters.failed++;
        run.emit({ event: "folder_failed", path: snap.path, key: snap.key, error });
        await run.failedMarker(snap, error);
      }
    }
  }
}
