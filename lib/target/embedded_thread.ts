/**
 * The embedded database's worker as the main thread sees it ({@linkcode EmbeddedWorker}):
 * one request at a time to lib/target/embedded_worker.ts, its answer or its failure, and
 * an end at any moment (an abort, a timeout, a forced stop). Used by
 * lib/target/embedded.ts.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import type { EmbeddedReply, EmbeddedRequest } from "./embedded_worker.ts";

/** Why a worker request ended without its answer: the worker was ended (abort, force). */
export class WorkerEnded extends Error {}

/** A failure the worker reported, or a worker that died. */
export class WorkerFailed extends Error {
  constructor(readonly stage: "open" | "listen" | "stop" | "crash", message: string) {
    super(message);
  }
}

/** Turns a worker failure into the error `startEmbedded` and `stop()` document. */
export function workerFailure(error: unknown, dir: string, socketPath: string): unknown {
  if (!(error instanceof WorkerFailed)) return error;
  const what = error.stage === "listen"
    ? `Cannot listen on ${socketPath}`
    : error.stage === "stop"
    ? `Cannot stop embedded database ${dir}`
    : `Cannot open embedded database ${dir}`;
  return new UploadError("fatal", `${what}: ${error.message}`, {
    subject: error.stage === "listen" ? socketPath : dir,
    cause: error,
  });
}

/** Options of {@linkcode EmbeddedWorker.request}. */
export interface RequestOptions {
  /** Ends the worker and rejects with {@linkcode WorkerEnded} when it aborts. */
  signal?: AbortSignal;
  /** Ends the worker and rejects with {@linkcode WorkerEnded} after this long. */
  timeoutMs?: number;
}

/** One lib/target/embedded_worker.ts thread: requests to it, answers from it. */
export class EmbeddedWorker {
  #worker: Worker;
  #log: (line: string) => void;
  #ended = false;
  #pending: { expect: EmbeddedReply["type"]; settle: (error?: Error) => void } | null = null;

  /** `module` is the worker's code: lib/target/embedded_worker.ts unless a test names another. */
  constructor(
    log: (line: string) => void,
    module: URL = new URL("./embedded_worker.ts", import.meta.url),
  ) {
    this.#log = log;
    this.#worker = new Worker(module.href, { type: "module" });
    this.#worker.onmessage = (event: MessageEvent<EmbeddedReply>) => {
      const message = event.data;
      if (message.type === "log") this.#log(message.line);
      else if (message.type === "failed") {
        this.#settle(new WorkerFailed(message.stage, message.message));
      } else if (this.#pending?.expect === message.type) this.#settle();
    };
    this.#worker.onerror = (event: ErrorEvent) => {
      // An uncaught error ends the worker; keep it from ending this thread too.
      // The worker is gone either way: a later request (the stop of the cleanup) must
      // fail at once, not wait out its timeout.
      event.preventDefault();
      const failure = new WorkerFailed("crash", event.message);
      if (!this.#pending) this.#log(`Embedded database worker failed: ${event.message}`);
      this.#settle(failure);
      this.#ended = true;
      this.#worker.terminate();
    };
  }

  /**
   * Sends `message` and resolves when the worker answers `expect`.
   *
   * @throws {WorkerFailed} when the worker reports a failure or dies.
   * @throws {WorkerEnded} when the worker is ended (signal, timeout, terminate).
   */
  request(
    message: EmbeddedRequest,
    expect: EmbeddedReply["type"],
    options: RequestOptions = {},
  ): Promise<void> {
    if (this.#ended) return Promise.reject(new WorkerEnded("The worker has ended"));
    const { signal, timeoutMs } = options;
    return new Promise<void>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const onAbort = () => this.terminate();
      this.#pending = {
        expect,
        settle: (error) => {
          this.#pending = null;
          signal?.removeEventListener("abort", onAbort);
          clearTimeout(timer);
          if (error) reject(error);
          else resolve();
        },
      };
      if (signal?.aborted) return this.terminate();
      signal?.addEventListener("abort", onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.#log(
            `The embedded database did not stop within ${timeoutMs / 1000} s: ended it ` +
              `(PostgreSQL replays its WAL at the next start)`,
          );
          this.terminate();
        }, timeoutMs);
      }
      this.#worker.postMessage(message);
    });
  }

  /** Ends the worker at once; a pending request rejects with {@linkcode WorkerEnded}. */
  terminate(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#worker.terminate();
    this.#settle(new WorkerEnded("The worker was ended"));
  }

  #settle(error?: Error): void {
    this.#pending?.settle(error);
  }
}
