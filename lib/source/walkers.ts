/**
 * The folder walk shared between threads: a lister thread lists a wide base once and sends
 * its subfolders' names here in batches (a small base is listed here, in one call); this
 * thread hands them out to walker threads (`walk_worker.ts` both), each asking for the next
 * batch when it is short, so the work spreads however the tree is shaped; every thread
 * works a bounded number of chunks ahead of what this thread takes, and this thread does
 * no walking of its own.
 *
 * @module
 */

import { basename, resolve } from "node:path";
import type { ScanItem, ScanOptions } from "./snapshot.ts";
import { baseIsUnit, listBaseChunks, STREAM_DIR_BYTES } from "./walk.ts";
import type { FromWalker, ToWalker, WalkRequest } from "./walk_worker.ts";

/** Options for {@linkcode scanFoldersInWorker}. */
export interface WorkerScanOptions extends ScanOptions {
  /** Items per chunk. Default 256. */
  chunk?: number;
  /** Chunks each worker may walk ahead. Default 8. */
  window?: number;
  /** Walker threads (besides the lister). Default 2. */
  workers?: number;
}

/**
 * Names per batch handed to a walker, from a wide base. Each batch costs four messages
 * between the threads (listed, handed out, room for more, want more) and ends a chunk;
 * 256 instead of 64 made the first upload of 50,000 flat folders 6-9 % faster.
 */
const BATCH = 256;
/** Batches listed ahead of the walkers' asking, at most. */
const NAMES_AHEAD = 4;
/**
 * How long the first walker walks (from its first request for names) before the others
 * start, if the walk still has work for them.
 */
const MORE_WALKERS_AFTER_MS = 100;

/**
 * {@linkcode scanFolders} on worker threads, yielding their items in chunks: the lister
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
  const walk = new SharedWalk(root, info, options);
  try {
    for (;;) {
      const items = await walk.next();
      if (items === null) break;
      // Keys below the base come unprefixed; the lister says whether the base is a unit
      // (they then start with its name).
      yield prefixKeys(items, root, (await walk.unit) ? `${basename(root)}/` : "");
    }
  } finally {
    walk.stop();
  }
}

/** The state of one shared walk: the threads, the names not handed out, what arrived. */
class SharedWalk {
  readonly #root: string;
  readonly #options: WorkerScanOptions;
  /** The lister thread; none for a small base, listed here in one call. */
  readonly #lister: Worker | null;
  readonly #workers: Worker[] = [];
  /** Walkers that asked for names while there were none. */
  readonly #waiting: Worker[] = [];
  readonly #batches: string[][] = [];
  #listed = false;
  #running: number;
  /** Items to hand out, with the thread to acknowledge (none: this thread's own). */
  readonly #inbox: { items: ScanItem[]; from?: Worker }[] = [];
  #failure: Error | null = null;
  #wake: (() => void) | null = null;
  /** Whether the base is a unit, once the lister knows. */
  readonly unit: Promise<boolean>;
  #setUnit!: (unit: boolean) => void;

  constructor(root: string, info: Deno.FileInfo, options: WorkerScanOptions) {
    this.#root = root;
    this.#options = options;
    this.unit = new Promise((resolve) => (this.#setUnit = resolve));
    const count = Math.max(1, options.workers ?? 2);
    this.#running = 2; // the listing and the first walker
    options.signal?.addEventListener("abort", () => this.#notify(), { once: true });
    const wide = info.size === 0 || info.size >= (options.streamDirBytes ?? STREAM_DIR_BYTES);
    this.#lister = wide ? this.#startWorker("list") : null;
    this.#startWorker("start");
    // The other walkers start only for a walk that lasts: a tree of a few folders (the
    // examples, a device's first day) is walked before they would have loaded, and each
    // costs a heap of its own.
    this.#more = count - 1;
    if (!wide) this.#listHere(info);
  }

  /** Walkers still to start, and the timer that starts them. */
  #more: number;
  #moreWalkers: ReturnType<typeof setTimeout> | undefined;

  /** The first walker is ready: the others start once it has walked a while. */
  #walkerReady(): void {
    if (this.#more === 0 || this.#moreWalkers !== undefined) return;
    this.#moreWalkers = setTimeout(() => this.#startMore(), MORE_WALKERS_AFTER_MS);
  }

  #startMore(): void {
    const count = this.#more;
    this.#more = 0;
    if (this.#workers.length === 0 || (this.#listed && this.#batches.length === 0)) return;
    for (let i = 0; i < count; i++) {
      this.#running++;
      this.#startWorker("start");
    }
  }

  /**
   * Lists a small base on this thread (one call; no thread is worth starting for it): its
   * subfolders go to the walkers one by one, each maybe a large subtree.
   */
  async #listHere(info: Deno.FileInfo): Promise<void> {
    baseIsUnit(this.#root, this.#options).then((unit) => this.#setUnit(unit));
    const feed = {
      add: (name: string) => this.#receive(null, { type: "names", names: [name] }),
      full: () => undefined,
    };
    try {
      for await (const items of listBaseChunks(this.#root, info, feed, this.#options)) {
        this.#inbox.push({ items });
        this.#notify();
      }
      this.#receive(null, { type: "done" });
    } catch (error) {
      this.#receive(null, { type: "error", message: String(error), notFound: false });
    }
  }

  #startWorker(role: "list" | "start"): Worker {
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
    const request: WalkRequest = {
      base: this.#root,
      imageExtensions: options.imageExtensions,
      reportExtensions: options.reportExtensions,
      statsFileName: options.statsFileName,
      markerNames: [...(options.markerNames ?? [])],
      streamDirBytes: options.streamDirBytes,
      chunk: options.chunk ?? 256,
      window: options.window ?? 8,
      namesAhead: NAMES_AHEAD,
      batch: BATCH,
    };
    this.#send(worker, { type: role, ...request });
    return worker;
  }

  #send(worker: Worker, message: ToWalker): void {
    worker.postMessage(message);
  }

  /** A message from `worker`, or from this thread's own listing (null). */
  #receive(worker: Worker | null, message: FromWalker): void {
    switch (message.type) {
      case "want":
        if (worker) this.#handOut(worker);
        this.#walkerReady();
        break;
      case "names":
        this.#batches.push(message.names);
        this.#handOut(this.#waiting.shift());
        break;
      case "unit":
        this.#setUnit(message.unit);
        break;
      case "items":
        this.#inbox.push({ items: message.items, from: worker ?? undefined });
        break;
      case "done":
        this.#running--;
        if (worker === this.#lister) { // the listing's end, here or on its thread
          this.#listed = true;
          for (const waiting of this.#waiting.splice(0)) this.#handOut(waiting);
        }
        break;
      case "error":
        this.#failure ??= message.notFound
          ? new Deno.errors.NotFound(message.message)
          : new Error(`Cannot walk ${this.#root}: ${message.message}`);
        this.#setUnit(false);
    }
    this.#notify();
  }

  /** Gives `worker` the next batch of names, the end when all are out, else keeps it waiting. */
  #handOut(worker: Worker | undefined): void {
    if (worker === undefined) return;
    const batch = this.#batches.shift();
    if (batch !== undefined) {
      this.#send(worker, { type: "names", names: batch });
      if (this.#lister) this.#send(this.#lister, { type: "room" });
    } else if (this.#listed) {
      this.#send(worker, { type: "end" });
    } else {
      this.#waiting.push(worker);
    }
  }

  /** The next items, acknowledged to their thread; null once every thread is done. */
  async next(): Promise<ScanItem[] | null> {
    for (;;) {
      if (this.#failure) throw this.#failure;
      if (this.#options.signal?.aborted) return null;
      const arrived = this.#inbox.shift();
      if (arrived) {
        if (arrived.from) this.#send(arrived.from, { type: "ack" });
        return arrived.items;
      }
      if (this.#running === 0) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Ends every thread (a listing still open is closed with its thread). */
  stop(): void {
    clearTimeout(this.#moreWalkers);
    for (const worker of this.#workers) worker.terminate();
    this.#workers.length = 0;
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
