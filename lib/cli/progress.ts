/**
 * Output of a run: a live progress line on a terminal, a plain line every few seconds
 * otherwise, or one JSON object per line (`--json`) for pipelines. Reads the engine's
 * counters and prints its events (worded in `event_lines.ts`) and its summary
 * (`summary.ts`); the engine itself never prints.
 *
 * @module
 */

import type { EngineEvent, RunCounters, RunResult } from "../core/events.ts";
import { managerLine, otherDevicesLine, type StepLine } from "./event_lines.ts";
import { oneLine, progressLine } from "./format.ts";
import { quickSummaryEvent, quickSummaryLines, summaryEvent, summaryLines } from "./summary.ts";

export { formatBytes, formatDuration, oneLine, plural, progressLine } from "./format.ts";
export { quickStepLines, type StepLine } from "./event_lines.ts";

/** Where and how to print. */
export interface ReporterOptions {
  /** NDJSON events on stdout; human lines go to stderr. */
  json?: boolean;
  /** No progress and no per-event lines; errors and the summary still print. */
  quiet?: boolean;
  /** Whether stderr is a terminal (live line) or not (a line every `intervalMs`). */
  tty?: boolean;
  /** Milliseconds between plain progress lines. Default 5000 (250 on a terminal). */
  intervalMs?: number;
  /** Sinks, for tests. Default: Deno.stdout / Deno.stderr. */
  out?: (text: string) => void;
  err?: (text: string) => void;
  /** The clock. */
  now?: () => number;
}

const encoder = new TextEncoder();

function writeAll(file: { writeSync(p: Uint8Array): number }, text: string): void {
  const bytes = encoder.encode(text);
  let off = 0;
  while (off < bytes.length) off += file.writeSync(bytes.subarray(off));
}

/** Prints a run's events, progress and summary. */
export class Reporter {
  #opts: Required<Omit<ReporterOptions, "out" | "err" | "now">>;
  #out: (text: string) => void;
  #err: (text: string) => void;
  #now: () => number;
  #counters: RunCounters | null = null;
  #timer: ReturnType<typeof setInterval> | undefined;
  #started = 0;
  #liveShown = false;
  #shownError: string | undefined;

  constructor(options: ReporterOptions = {}) {
    const tty = options.tty ?? false;
    this.#opts = {
      json: options.json ?? false,
      quiet: options.quiet ?? false,
      tty,
      intervalMs: options.intervalMs ?? (tty ? 250 : 5000),
    };
    this.#out = options.out ?? ((t) => writeAll(Deno.stdout, t));
    this.#err = options.err ?? ((t) => writeAll(Deno.stderr, t));
    this.#now = options.now ?? Date.now;
  }

  /** Prints an informational line (stdout, or stderr when JSON owns stdout). */
  info(line: string): void {
    if (this.#opts.quiet) return;
    this.#clearLive();
    if (this.#opts.json) this.#err(line + "\n");
    else this.#out(line + "\n");
  }

  /** Prints a warning or error line on stderr (even when quiet). */
  warn(line: string): void {
    this.#clearLive();
    this.#err(line + "\n");
  }

  /**
   * Prints the error that ends a command: one `Error:` line, then its `Hint:` line when it
   * has one. The same error again (the run's stopping event, then its result) prints
   * nothing, so every stopping error shows once. Printed even when quiet.
   */
  error(error: { message: string; hint?: string }): void {
    const message = oneLine(error.message);
    if (this.#shownError === message) return;
    this.#shownError = message;
    this.warn(`Error: ${message}`);
    if (error.hint) this.warn(`Hint: ${oneLine(error.hint)}`);
  }

  /** Prints one JSON event line (only in JSON mode). */
  json(value: Record<string, unknown>): void {
    if (this.#opts.json) this.#out(JSON.stringify(value) + "\n");
  }

  /** Starts the periodic progress output for these counters. */
  start(counters: RunCounters): void {
    this.#counters = counters;
    this.#started = this.#now();
    if (this.#opts.quiet || this.#opts.json && !this.#opts.tty) return;
    this.#timer = setInterval(() => this.#tick(), this.#opts.intervalMs);
  }

  #tick(): void {
    if (!this.#counters) return;
    const line = progressLine(this.#counters, this.#now() - this.#started);
    if (this.#opts.tty) {
      const cols = Deno.stderr.isTerminal() ? Deno.consoleSize().columns : 120;
      this.#err(`\r\x1b[2K${line.slice(0, Math.max(20, cols - 1))}`);
      this.#liveShown = true;
    } else {
      this.#err(line + "\n");
    }
  }

  #clearLive(): void {
    if (this.#liveShown) {
      this.#err("\r\x1b[2K");
      this.#liveShown = false;
    }
  }

  /** Stops the progress output. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#clearLive();
  }

  /** Turns an event into output. */
  event(e: EngineEvent): void {
    this.json(e as unknown as Record<string, unknown>);
    // An error is printed once, as soon as it stops the run; the summary follows.
    if (e.event === "stopping" && e.kind !== undefined) {
      this.error({ message: e.reason, hint: e.hint });
      return;
    }
    for (const line of [managerLine(e), otherDevicesLine(e)]) if (line) this.line(line);
  }

  /** Prints an event's line: progress, progress about trouble, or a warning. */
  line(line: StepLine): void {
    if (line.level === "info") this.info(line.text);
    else if (line.level === "notice" && this.#opts.quiet) return;
    else {
      this.#clearLive();
      if (this.#opts.json) this.#err(line.text + "\n");
      else this.warn(line.text);
    }
  }

  /** Prints the end of a run: the summary line(s), and the summary event in JSON mode. */
  summary(result: RunResult, mode: string): void {
    this.stop();
    this.json(summaryEvent(result, mode));
    this.#printSummary(summaryLines(result, mode), result.exitCode);
  }

  /** Prints the end of a quick upload: its summary line, and the summary event in JSON mode. */
  quickSummary(result: RunResult): void {
    this.stop();
    this.json(quickSummaryEvent(result));
    this.#printSummary(quickSummaryLines(result), result.exitCode);
  }

  #printSummary(lines: string[], exitCode: number): void {
    if (this.#opts.quiet && exitCode === 0) return;
    for (const l of lines) {
      if (this.#opts.json) this.#err(l + "\n");
      else this.#out(l + "\n");
    }
  }
}
