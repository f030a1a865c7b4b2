/**
 * A thread of the shared walk (lib/source/walkers.ts), in one of two roles. A walker walks
 * the subfolders of the base that the main thread hands it ({@linkcode walkSubfolders}); the
 * lister lists the base ({@linkcode listBaseChunks}) and sends its subfolders' names to the
 * main thread in batches, for the walkers, and says whether the base is a unit. Both post
 * their items in chunks, at most a few chunks ahead of what the main thread has taken (so
 * memory stays flat); the listing and the walk's system calls then run beside the tracker,
 * row building and psql.
 *
 * Protocol, a walker: main -> worker `{type: "start", ...WalkRequest}`, then `{type:
 * "names", names}` (one per `want`) or `{type: "end"}` (no more names), and one `{type:
 * "ack"}` per chunk taken; worker -> main `{type: "want"}` when it is short of names,
 * `{type: "items", items}` ..., then `{type: "done"}` or `{type: "error", message,
 * notFound}`.
 *
 * The lister: main -> worker `{type: "list", ...WalkRequest}`, one `{type: "room"}` per
 * batch of names handed on and one `{type: "ack"}` per chunk taken; worker -> main `{type:
 * "unit", unit}` once, `{type: "names", names}` (a few batches ahead of the walkers),
 * `{type: "items", items}`, then `{type: "done"}` or `{type: "error", ...}`.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import type { ScanItem } from "./snapshot.ts";
import {
  baseIsUnit,
  listBaseChunks,
  STREAM_DIR_BYTES,
  type SubfolderFeed,
  walkSubfolders,
} from "./walk.ts";

/** What the main thread asks the worker to walk. */
export interface WalkRequest {
  base: string;
  imageExtensions?: readonly string[];
  reportExtensions?: readonly string[];
  statsFileName?: string;
  markerNames?: string[];
  streamDirBytes?: number;
  /** Items per message. */
  chunk: number;
  /** Messages the worker may post ahead of the main thread. */
  window: number;
  /** The lister's: batches of names it may send ahead of the walkers. */
  namesAhead?: number;
  /** The lister's: names per batch of a wide base (a small one's go one by one). */
  batch?: number;
}

/** Messages the worker receives. */
export type ToWalker =
  | ({ type: "start" } & WalkRequest)
  | ({ type: "list" } & WalkRequest)
  | { type: "names"; names: string[] }
  | { type: "end" }
  | { type: "room" }
  | { type: "ack" };

/** Messages the worker posts. */
export type FromWalker =
  | { type: "want" }
  | { type: "unit"; unit: boolean }
  | { type: "names"; names: string[] }
  | { type: "items"; items: ScanItem[] }
  | { type: "done" }
  | { type: "error"; message: string; notFound: boolean };

function send(message: FromWalker): void {
  self.postMessage(message);
}

let credits = 0;
const batches: string[][] = [];
let ended = false;
let asked = false;
let wake: (() => void) | null = null;

function wakeUp(): void {
  const w = wake;
  wake = null;
  w?.();
}

/** Asks for the next batch of names unless one is on its way or none will come. */
function askForNames(): void {
  if (asked || ended) return;
  asked = true;
  send({ type: "want" });
}

/** The batches of names as they arrive, one asked for ahead of the one being walked. */
async function* names(): AsyncGenerator<string[]> {
  askForNames();
  for (;;) {
    const batch = batches.shift();
    if (batch !== undefined) {
      askForNames();
      yield batch;
    } else if (ended) {
      return;
    } else {
      await new Promise<void>((resolve) => (wake = resolve));
    }
  }
}

async function post(items: ScanItem[]): Promise<void> {
  while (credits <= 0) await new Promise<void>((resolve) => (wake = resolve));
  credits--;
  send({ type: "items", items });
}

function scanOptions(request: WalkRequest) {
  return {
    imageExtensions: request.imageExtensions,
    reportExtensions: request.reportExtensions,
    statsFileName: request.statsFileName,
    markerNames: new Set(request.markerNames ?? []),
    streamDirBytes: request.streamDirBytes,
    chunk: request.chunk,
  };
}

/** Runs one role's chunks to their end, posting each, then says done (or why not). */
async function run(request: WalkRequest, chunks: AsyncIterable<ScanItem[]>): Promise<void> {
  credits = request.window;
  try {
    for await (const items of chunks) await post(items);
    send({ type: "done" });
  } catch (error) {
    send({
      type: "error",
      message: error instanceof Error ? error.message : String(error),
      notFound: error instanceof Deno.errors.NotFound,
    });
  }
}

let namesCredit = 0;

/** The lister's feed: names in batches to the main thread, a few batches ahead at most. */
class NameBatches implements SubfolderFeed {
  #batch: string[] = [];
  readonly #size: number;

  constructor(size: number) {
    this.#size = size;
  }

  add(name: string): void {
    this.#batch.push(name);
    if (this.#batch.length >= this.#size) this.flush();
  }

  full(): Promise<void> | undefined {
    if (namesCredit > 0) return undefined;
    return new Promise<void>((resolve) => (wake = resolve)).then(() => this.full());
  }

  flush(): void {
    if (this.#batch.length === 0) return;
    namesCredit--;
    send({ type: "names", names: this.#batch });
    this.#batch = [];
  }
}

async function* listing(request: WalkRequest): AsyncGenerator<ScanItem[]> {
  const options = scanOptions(request);
  baseIsUnit(request.base, options).then((unit) => send({ type: "unit", unit }));
  const info = Deno.statSync(request.base);
  // A base listed in one call has few subfolders, each maybe a large subtree: one per batch
  // spreads them best. A wide base's go in batches.
  const wide = info.size === 0 || info.size >= (request.streamDirBytes ?? STREAM_DIR_BYTES);
  const feed = new NameBatches(wide ? request.batch ?? 64 : 1);
  namesCredit = request.namesAhead ?? 4;
  yield* listBaseChunks(request.base, info, feed, options);
  feed.flush();
}

self.onmessage = (event: MessageEvent<ToWalker>) => {
  const message = event.data;
  if (message.type === "ack") {
    credits++;
  } else if (message.type === "names") {
    asked = false;
    batches.push(message.names);
  } else if (message.type === "end") {
    asked = false;
    ended = true;
  } else if (message.type === "room") {
    namesCredit++;
  } else if (message.type === "start") {
    run(message, walkSubfolders(message.base, names(), scanOptions(message)));
    return;
  } else if (message.type === "list") {
    run(message, listing(message));
    return;
  }
  wakeUp();
};
