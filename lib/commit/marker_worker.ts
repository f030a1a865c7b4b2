/**
 * The marker thread: writes the markers the main thread sends it, each as
 * {@linkcode writeMarkerChecked} does (temp file, rename, the opposite marker removed, one
 * that tells the same left alone), with plain synchronous file calls, and answers each
 * message with one result per marker. Off the main thread, the writes run beside the next
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
import { type MarkerConfig, writeMarkerChecked } from "./markers.ts";

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

function writeOne(job: MarkerJob, config: MarkerConfig): MarkerJobResult {
  try {
    return { written: writeMarkerChecked(job.path, job.marker, config, job.present) };
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

self.onmessage = (event: MessageEvent<MarkerRequest>) => {
  const { seq, config, jobs } = event.data;
  const reply: MarkerReply = { seq, results: jobs.map((job) => writeOne(job, config)) };
  self.postMessage(reply);
};
