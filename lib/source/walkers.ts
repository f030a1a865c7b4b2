/**
 * The folder walk on worker threads (`walk_worker.ts`): the base's subfolders shared
 * between walkers by a hash of their names, each walking its part a bounded number of
 * chunks ahead of the main thread.
 *
 * @module
 */

import type { ScanItem, ScanOptions } from "./snapshot.ts";

/** Options for {@linkcode scanFoldersInWorker}. */
export interface WorkerScanOptions extends ScanOptions {
  /** Items per chunk. Default 256. */
  chunk?: number;
  /** Chunks each worker may walk ahead. Default 8. */
  window?: number;
  /** Walkers in parallel, each taking a share of the base's subfolders. Default 2. */
  workers?: number;
}

/**
 * {@linkcode scanFolders} on worker threads, yielding their items in chunks. The walk runs
 * in parallel with whatever the caller does with the chunks, a bounded number of chunks
 * ahead; each worker walks the base's subfolders of its part ({@linkcode partitionOf}).
 * Stops (and ends the workers) when `signal` aborts or the caller stops iterating.
 *
 * @throws {Deno.errors.NotFound} when `base` does not exist; Error for a failed walk.
 */
export async function* scanFoldersInWorker(
  base: string,
  options: WorkerScanOptions = {},
): AsyncGenerator<ScanItem[]> {
  type Message =
    | { type: "items"; items: ScanItem[] }
    | { type: "done" }
    | { type: "error"; message: string; notFound: boolean };
  const count = Math.max(1, options.workers ?? 2);
  const inbox: { from: Worker; message: Message }[] = [];
  let notify: (() => void) | null = null;
  const arrive = (from: Worker, message: Message) => {
    inbox.push({ from, message });
    const n = notify;
    notify = null;
    n?.();
  };
  const workers: Worker[] = [];
  const onAbort = () => {
    const n = notify;
    notify = null;
    n?.();
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    for (let index = 0; index < count; index++) {
      const worker = new Worker(new URL("./walk_worker.ts", import.meta.url).href, {
        type: "module",
      });
      worker.onmessage = (event: MessageEvent<Message>) => arrive(worker, event.data);
      worker.onerror = (event: ErrorEvent) => {
        event.preventDefault();
        arrive(worker, { type: "error", message: event.message, notFound: false });
      };
      workers.push(worker);
      worker.postMessage({
        type: "start",
        base,
        imageExtensions: options.imageExtensions,
        reportExtensions: options.reportExtensions,
        statsFileName: options.statsFileName,
        markerNames: [...(options.markerNames ?? [])],
        streamDirBytes: options.streamDirBytes,
        chunk: options.chunk ?? 256,
        window: options.window ?? 8,
        partition: { index, count },
      });
    }
    let running = count;
    while (running > 0 && !options.signal?.aborted) {
      if (inbox.length === 0) {
        await new Promise<void>((resolve) => (notify = resolve));
        continue;
      }
      const { from, message } = inbox.shift()!;
      if (message.type === "done") {
        running--;
        continue;
      }
      if (message.type === "error") {
        if (message.notFound) throw new Deno.errors.NotFound(message.message);
        throw new Error(`Cannot walk ${base}: ${message.message}`);
      }
      from.postMessage({ type: "ack" });
      yield message.items;
    }
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    for (const worker of workers) worker.terminate();
  }
}
