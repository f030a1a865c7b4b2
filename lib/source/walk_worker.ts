/**
 * The folder walk in a worker thread: runs {@linkcode scanFolderChunks} and posts its items
 * to the main thread in chunks, at most a few chunks ahead of what the main thread has taken
 * (so memory stays flat). The walk's system calls then use one core while the tracker,
 * row building and psql use the other.
 *
 * Protocol: main -> worker `{type: "start", ...WalkRequest}` then one `{type: "ack"}` per
 * chunk taken; worker -> main `{type: "items", items}` ..., then `{type: "done"}` or
 * `{type: "error", message, notFound}`.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import type { ScanItem } from "./snapshot.ts";
import { scanFolderChunks } from "./walk.ts";

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
  /** This walker's share of the tree. */
  partition?: { index: number; count: number };
}

let credits = 0;
let wake: (() => void) | null = null;

async function post(items: ScanItem[]): Promise<void> {
  while (credits <= 0) await new Promise<void>((resolve) => (wake = resolve));
  credits--;
  self.postMessage({ type: "items", items });
}

async function walk(request: WalkRequest): Promise<void> {
  credits = request.window;
  try {
    const chunks = scanFolderChunks(request.base, {
      imageExtensions: request.imageExtensions,
      reportExtensions: request.reportExtensions,
      statsFileName: request.statsFileName,
      markerNames: new Set(request.markerNames ?? []),
      partition: request.partition,
      streamDirBytes: request.streamDirBytes,
      chunk: request.chunk,
    });
    for await (const items of chunks) await post(items);
    self.postMessage({ type: "done" });
  } catch (error) {
    self.postMessage({
      type: "error",
      message: error instanceof Error ? error.message : String(error),
      notFound: error instanceof Deno.errors.NotFound,
    });
  }
}

self.onmessage = (event: MessageEvent) => {
  const data = event.data as { type: string } & Partial<WalkRequest>;
  if (data.type === "ack") {
    credits++;
    const w = wake;
    wake = null;
    w?.();
  } else if (data.type === "start") {
    walk(data as WalkRequest);
  }
};
