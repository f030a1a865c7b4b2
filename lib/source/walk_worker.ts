/**
 * A walker thread: walks the subfolders of the base that the main thread hands it
 * ({@linkcode walkSubfolders}) and posts their items back in chunks, at most a few chunks
 * ahead of what the main thread has taken (so memory stays flat). The walk's system calls
 * then run beside the tracker, row building and psql.
 *
 * Protocol: main -> worker `{type: "start", ...WalkRequest}`, then `{type: "names", names}`
 * (one per `want`) or `{type: "end"}` (no more names), and one `{type: "ack"}` per chunk
 * taken; worker -> main `{type: "want"}` when it is short of names, `{type: "items",
 * items}` ..., then `{type: "done"}` or `{type: "error", message, notFound}`.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import type { ScanItem } from "./snapshot.ts";
import { walkSubfolders } from "./walk.ts";

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
}

/** Messages the worker receives. */
export type ToWalker =
  | ({ type: "start" } & WalkRequest)
  | { type: "names"; names: string[] }
  | { type: "end" }
  | { type: "ack" };

/** Messages the worker posts. */
export type FromWalker =
  | { type: "want" }
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

async function walk(request: WalkRequest): Promise<void> {
  credits = request.window;
  try {
    const chunks = walkSubfolders(request.base, names(), {
      imageExtensions: request.imageExtensions,
      reportExtensions: request.reportExtensions,
      statsFileName: request.statsFileName,
      markerNames: new Set(request.markerNames ?? []),
      streamDirBytes: request.streamDirBytes,
      chunk: request.chunk,
    });
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
  } else if (message.type === "start") {
    walk(message);
    return;
  }
  wakeUp();
};
