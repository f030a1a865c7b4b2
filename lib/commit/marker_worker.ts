/**
 * The marker thread: writes the markers the main thread sends it, each as
 * {@linkcode writeMarkerAsync} does (temp file, rename, the opposite marker removed, one
 * that tells the same left alone), several at once on the runtime's I/O threads, and
 * answers each message with one result per marker. Off the main thread, the writes run beside the next
 * batches instead of between them.
 *
 * Protocol: main -> worker {@linkcode MarkerRequest}; worker -> main {@linkcode MarkerReply}
 * with the same `seq`.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import type { MarkerJob, MarkerJobResult } from "./marker_thread.ts";
import { type MarkerConfig, writeMarkerAsync } from "./markers.ts";

/** What the main thread sends: markers to write, in order. */
export interface MarkerRequest {
  seq: number;
  config: MarkerConfig;
  jobs: MarkerJob[];
}

/** What the thread answers: one result per job, in the request's order. */
export interface MarkerReply {
  seq: number;
  results: MarkerJobResult[];
}

/** Writes in flight at once for one message: the file calls run on the runtime's I/O threads. */
const CONCURRENCY = 8;

async function writeOne(job: MarkerJob, config: MarkerConfig): Promise<MarkerJobResult> {
  try {
    return { written: await writeMarkerAsync(job.path, job.marker, config, job.present) };
  } catch (error) {
    // Reported to the main thread for this folder, which counts it and owes the marker.
    return {
      error: {
        name: error instanceof Error ? error.name : "Error",
        message: error instanceof Error ? error.message : String(error),
      },
    };
  }
}

/** Writes `jobs`, up to {@linkcode CONCURRENCY} at once; one result per job, in order. */
async function writeAll(jobs: MarkerJob[], config: MarkerConfig): Promise<MarkerJobResult[]> {
  const results: MarkerJobResult[] = new Array(jobs.length);
  let next = 0;
  const lane = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await writeOne(jobs[i], config);
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, jobs.length) }, lane));
  return results;
}

self.onmessage = async (event: MessageEvent<MarkerRequest>) => {
  const { seq, config, jobs } = event.data;
  const reply: MarkerReply = { seq, results: await writeAll(jobs, config) };
  self.postMessage(reply);
};
