/**
 * Continuous mode (`deno task upload BASE --watch`): the engine fed by the watch source
 * (lib/source/watch.ts), until it is stopped.
 *
 * @module
 */

import type { Connector } from "../target/connect.ts";
import type { RunResult } from "../core/events.ts";
import { watchSource } from "../source/watch.ts";
import { runEngine } from "./engine.ts";
import { checkBase, sendTo, type UploadOptions, walkConfig } from "./upload.ts";

/** Settings of {@linkcode runWatch}: an upload's, and how to watch. */
export interface WatchOptions extends Omit<UploadOptions, "mode"> {
  /** Where rows go. */
  connector: Connector;
  /** Seconds between full rescans. */
  rescanEverySeconds: number;
  /** Quiet time (ms) after a file-system event before its folders are looked at. Default 200. */
  debounceMs?: number;
  /** Use file-system events (false: rescans only). Default true. */
  fileEvents?: boolean;
}

/**
 * Uploads the base, then keeps uploading new and changed folders until it is stopped
 * (`finishSignal`: exit 0; `signal`: interrupted, 130). Server outages are ridden out as
 * in a normal run; the run ends early only for what stops any run (refused permissions,
 * the server unreachable past `--give-up-after`).
 *
 * @throws {UploadError} `usage` when the base path is not a readable folder.
 */
export function runWatch(options: WatchOptions): Promise<RunResult> {
  checkBase(options.basePath);
  const source = watchSource(options.basePath, walkConfig(options.config, options.connector), {
    rescanEveryMs: options.rescanEverySeconds * 1000,
    debounceMs: options.debounceMs ?? 200,
    fileEvents: options.fileEvents ?? true,
  });
  return runEngine(source, {
    ...options,
    ...sendTo(options.connector, options),
    mode: "watch",
    base: options.basePath,
  });
}
