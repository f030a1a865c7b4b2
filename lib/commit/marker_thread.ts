/**
 * The main thread's side of the marker thread (marker_worker.ts): sends markers in
 * messages of many and resolves each message's results. The worker starts on the first
 * message and ends with {@linkcode MarkerThread.close}; a worker that dies fails the
 * markers it held (reported for their folders, owed to a later run), and the next message
 * starts a new one.
 *
 * @module
 */

import type { FailedMarker, MarkerConfig, SuccessMarker } from "./markers.ts";
import type { MarkerReply, MarkerRequest } from "./marker_worker.ts";

/** One marker for the thread to write. */
export interface MarkerJob {
  /** The folder. */
  path: string;
  /** What goes into it. */
  marker: SuccessMarker | FailedMarker;
  /** The folder's file names as the scan saw them (undefined: not known). */
  present?: ReadonlySet<string>;
}

/** A marker's outcome: written (false: it already told the same) or the error. */
export type MarkerJobResult = { written: boolean } | { error: { name: string; message: string } };

/** The error a result carries, as the class the file call threw (`Deno.errors.*`) when known. */
export function errorOf(failure: { name: string; message: string }): Error {
  const known = (Deno.errors as unknown as Record<string, ErrorConstructor | undefined>)[
    failure.name
  ];
  return typeof known === "function" ? new known(failure.message) : new Error(failure.message);
}

/** A worker thread writing markers. */
export class MarkerThread {
  readonly #config: MarkerConfig;
  #worker: Worker | null = null;
  #seq = 0;
  readonly #waiting = new Map<
    number,
    { count: number; resolve: (results: MarkerJobResult[]) => void }
  >();

  /** A thread writing markers named by `config`. */
  constructor(config: MarkerConfig) {
    // Only the names cross to the thread (a full configuration holds functions).
    this.#config = {
      successMarker: config.successMarker,
      failedMarker: config.failedMarker,
      legacyMarkers: config.legacyMarkers,
    };
  }

  /** Writes `jobs` on the thread; resolves with one result per job, never rejects. */
  run(jobs: MarkerJob[]): Promise<MarkerJobResult[]> {
    const worker = this.#worker ??= this.#start();
    const seq = ++this.#seq;
    return new Promise((resolve) => {
      this.#waiting.set(seq, { count: jobs.length, resolve });
      const request: MarkerRequest = { seq, config: this.#config, jobs };
      try {
        worker.postMessage(request);
      } catch (error) {
        // A marker that cannot be sent fails like one that cannot be written: owed.
        this.#waiting.delete(seq);
        const failure = { name: "Error", message: `Cannot send markers: ${error}` };
        resolve(jobs.map(() => ({ error: failure })));
      }
    });
  }

  /** Ends the worker once nothing is waiting (a later {@linkcode run} starts a new one). */
  close(): void {
    if (this.#waiting.size > 0) return;
    this.#worker?.terminate();
    this.#worker = null;
  }

  #start(): Worker {
    const worker = new Worker(new URL("./marker_worker.ts", import.meta.url).href, {
      type: "module",
    });
    worker.onmessage = (event: MessageEvent<MarkerReply>) => {
      const waiting = this.#waiting.get(event.data.seq);
      this.#waiting.delete(event.data.seq);
      waiting?.resolve(event.data.results);
    };
    worker.onerror = (event: ErrorEvent) => {
      // Reported per marker below: each of its folders counts a marker error and owes it.
      event.preventDefault();
      const failure = { name: "Error", message: `The marker thread failed: ${event.message}` };
      const waiting = [...this.#waiting.values()];
      this.#waiting.clear();
      worker.terminate();
      if (this.#worker === worker) this.#worker = null;
      for (const w of waiting) {
        w.resolve(Array.from({ length: w.count }, () => ({ error: failure })));
      }
    };
    return worker;
  }
}
