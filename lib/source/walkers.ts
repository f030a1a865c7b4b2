/**
 * The folder walk shared between threads: this thread lists the base once and hands its
 * subfolders out in batches to walker threads (`walk_worker.ts`), each asking for the next
 * batch when it is short, so the work spreads however the tree is shaped; every walker
 * walks a bounded number of chunks ahead of what this thread takes.
 *
 * @module
 */

import { basename, resolve } from "node:path";
import type { ScanItem, ScanOptions } from "./snapshot.ts";
import { baseIsUnit, listBaseChunks, type SubfolderFeed } from "./walk.ts";
import type { FromWalker, ToWalker } from "./walk_worker.ts";

/** Options for {@linkcode scanFoldersInWorker}. */
export interface WorkerScanOptions extends ScanOptions {
  /** Items per chunk. Default 256. */
  chunk?: number;
  /** Chunks each worker may walk ahead. Default 8. */
  window?: number;
  /** Walker threads. Default 2. */
  workers?: number;
}

/** Names per batch handed to a walker. */
const BATCH = 128;
/** Batches listed ahead of the walkers' asking, at most. */
const QUEUED_BATCHES = 4;

/**
 * {@linkcode scanFolders} on worker threads, yielding their items in chunks: this thread
 * lists the base (and reports what is in it: its own snapshot, bad names, links), the
 * walkers walk its subfolders, in parallel with whatever the caller does with the chunks.
 * Stops (and ends the workers) when `signal` aborts or the caller stops iterating.
 *
 * @throws {Deno.errors.NotFound} when `base` does not exist; Error for a failed walk.
 */
export async function* scanFoldersInWorker(
  base: string,
  options: WorkerScanOptions = {},
): AsyncGenerator<ScanItem[]> {
  const root = resolve(base);
  // The base is the one path followed when it is a symlink (as `find -H` does).
  const info = Deno.statSync(root);
  if (!info.isDirectory) {
    yield [{ kind: "problem", problem: { path: root, reason: "Not a directory" } }];
    return;
  }
  const walk = new SharedWalk(root, options);
  // Keys below the base come unprefixed from the walkers; whether the base is a unit
  // (they then start with its name) is found while they walk.
  const prefix = baseIsUnit(root, options).then((unit) => unit ? `${basename(root)}/` : "");
  const listing = walk.list(info);
  try {
    for (;;) {
      const items = await walk.next();
      if (items === null) break;
      yield prefixKeys(items, root, await prefix);
    }
  } finally {
    walk.stop();
    await listing; // closes the base's listing before the scan returns
  }
}

/** The state of one shared walk: the walkers, the names not handed out, what arrived. */
class SharedWalk implements SubfolderFeed {
  readonly #root: string;
  readonly #options: WorkerScanOptions;
  readonly #workers: Worker[] = [];
  /** Walkers that asked for names while there were none. */
  readonly #waiting: Worker[] = [];
  readonly #batches: string[][] = [];
  #batch: string[] = [];
  #listed = false;
  #running: number;
  /** Items to hand out: the walkers' (with the walker to acknowledge) and the base's own. */
  readonly #inbox: { items: ScanItem[]; from?: Worker }[] = [];
  #failure: Error | null = null;
  #wake: (() => void) | null = null;
  #room: (() => void) | null = null;
  /** Ends the base's listing when the walk stops early. */
  readonly #stopper = new AbortController();

  constructor(root: string, options: WorkerScanOptions) {
    this.#root = root;
    this.#options = options;
    const count = Math.max(1, options.workers ?? 2);
    this.#running = count;
    options.signal?.addEventListener("abort", () => this.#notify(), { once: true });
    for (let index = 0; index < count; index++) this.#startWorker();
  }

  #startWorker(): void {
    const worker = new Worker(new URL("./walk_worker.ts", import.meta.url).href, {
      type: "module",
    });
    worker.onmessage = (event: MessageEvent<FromWalker>) => this.#receive(worker, event.data);
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#receive(worker, { type: "error", message: event.message, notFound: false });
    };
    this.#workers.push(worker);
    const options = this.#options;
    this.#send(worker, {
      type: "start",
      base: this.#root,
      imageExtensions: options.imageExtensions,
      reportExtensions: options.reportExtensions,
      statsFileName: options.statsFileName,
      markerNames: [...(options.markerNames ?? [])],
      streamDirBytes: options.streamDirBytes,
      chunk: options.chunk ?? 256,
      window: options.window ?? 8,
    });
  }

  #send(worker: Worker, message: ToWalker): void {
    worker.postMessage(message);
  }

  #receive(worker: Worker, message: FromWalker): void {
    if (message.type === "want") this.#handOut(worker);
    else if (message.type === "items") this.#inbox.push({ items: message.items, from: worker });
    else if (message.type === "done") this.#running--;
    else if (!this.#failure) {
      this.#failure = message.notFound
        ? new Deno.errors.NotFound(message.message)
        : new Error(`Cannot walk ${this.#root}: ${message.message}`);
    }
    this.#notify();
  }

  /** Gives `worker` the next batch of names, the end when all are out, else keeps it waiting. */
  #handOut(worker: Worker): void {
    const batch = this.#batches.shift();
    if (batch !== undefined) {
      this.#send(worker, { type: "names", names: batch });
      const room = this.#room;
      this.#room = null;
      room?.();
    } else if (this.#listed) {
      this.#send(worker, { type: "end" });
    } else {
      this.#waiting.push(worker);
    }
  }

  /** {@linkcode SubfolderFeed.add}: a subfolder of the base, for the walkers. */
  add(name: string): void {
    this.#batch.push(name);
    if (this.#batch.length >= BATCH) this.#queueBatch();
  }

  /** {@linkcode SubfolderFeed.full}: the listing waits while the walkers are well supplied. */
  full(): Promise<void> | undefined {
    if (this.#batches.length < QUEUED_BATCHES || this.#stopper.signal.aborted) return undefined;
    return new Promise<void>((resolve) => (this.#room = resolve));
  }

  #queueBatch(): void {
    if (this.#batch.length === 0) return;
    this.#batches.push(this.#batch);
    this.#batch = [];
    const waiting = this.#waiting.shift();
    if (waiting) this.#handOut(waiting);
  }

  /** Lists the base: its own items go to the inbox, its subfolders to the walkers. */
  async list(info: Deno.FileInfo): Promise<void> {
    const signal = this.#options.signal
      ? AbortSignal.any([this.#options.signal, this.#stopper.signal])
      : this.#stopper.signal;
    try {
      for await (
        const items of listBaseChunks(this.#root, info, this, { ...this.#options, signal })
      ) {
        this.#inbox.push({ items });
        this.#notify();
      }
    } catch (error) {
      this.#failure ??= error instanceof Error ? error : new Error(String(error));
    } finally {
      this.#queueBatch();
      this.#listed = true;
      for (const worker of this.#waiting.splice(0)) this.#handOut(worker);
      this.#notify();
    }
  }

  /** The next items, acknowledged to their walker; null once every walker is done. */
  async next(): Promise<ScanItem[] | null> {
    for (;;) {
      if (this.#failure) throw this.#failure;
      if (this.#options.signal?.aborted) return null;
      const arrived = this.#inbox.shift();
      if (arrived) {
        if (arrived.from) this.#send(arrived.from, { type: "ack" });
        return arrived.items;
      }
      if (this.#running === 0 && this.#listed) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Ends the walkers and the listing (one waiting for room is let go, and sees the stop). */
  stop(): void {
    for (const worker of this.#workers) worker.terminate();
    this.#workers.length = 0;
    this.#stopper.abort();
    const room = this.#room;
    this.#room = null;
    room?.();
  }
}

/** Puts `prefix` before the key of every folder below `root` (in place). */
function prefixKeys(items: ScanItem[], root: string, prefix: string): ScanItem[] {
  if (prefix === "") return items;
  for (const item of items) {
    if (item.kind === "folder" && item.snapshot.path !== root) {
      item.snapshot.key = prefix + item.snapshot.key;
    }
  }
  return items;
}
