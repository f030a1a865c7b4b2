/**
 * Output of a run: a live progress line on a terminal, a plain line every few seconds
 * otherwise, or one JSON object per line (`--json`) for pipelines; quick upload's step
 * lines in the original script's words. Reads the engine's counters and turns its events
 * into text; the engine itself never prints.
 *
 * @module
 */

import { describeIdentity, type DeviceSource } from "../target/identity.ts";
import type { UploaderConfig } from "../../config.ts";
import type { EngineEvent, RunCounters, RunResult } from "../core/events.ts";

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

/**
 * A count with its noun, singular or plural.
 *
 * @example
 * ```ts
 * plural(1, "folder"); // "1 folder"
 * plural(2, "batch", "batches"); // "2 batches"
 * ```
 */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Human-readable byte count. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Human-readable duration. */
export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/**
 * A message as one line: the lines of a multi-line message (psql's DETAIL, a second line
 * of a connection error) joined with spaces.
 *
 * @example
 * ```ts
 * oneLine("connection failed: refused\n\tIs the server running?"); // "connection failed: refused Is the server running?"
 * ```
 */
export function oneLine(text: string): string {
  return text.split("\n").map((l) => l.trim()).filter((l) => l !== "").join(" ");
}

/** The one-line progress text. */
export function progressLine(c: RunCounters, elapsedMs: number): string {
  const secs = Math.max(elapsedMs / 1000, 0.001);
  const done = c.uploaded + c.failed;
  const rate = done / secs;
  const parts = [
    `scanned ${c.scanned}`,
    `changed ${c.new + c.changed}`,
    `uploaded ${c.uploaded}`,
    `failed ${c.failed}`,
  ];
  if (c.unreadable > 0) parts.push(`unreadable ${c.unreadable}`);
  if (c.retries > 0) parts.push(`retries ${c.retries}`);
  parts.push(`${rate >= 10 ? Math.round(rate) : rate.toFixed(1)} folders/s`);
  const pending = c.queued - done;
  if (pending > 0 && rate > 0) parts.push(`ETA ${formatDuration((pending / rate) * 1000)}`);
  return parts.join(" | ");
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
    const human = this.#opts.json
      ? (l: string) => this.#err(l + "\n")
      : (l: string) => this.warn(l);
    switch (e.event) {
      case "problem":
        this.#clearLive();
        human(`Cannot read ${e.path}: ${e.reason}`);
        break;
      case "skipped":
        this.#clearLive();
        human(`Skipped ${e.path}: ${e.reason}`);
        break;
      case "folder_failed":
        this.#clearLive();
        human(`Failed ${e.key}: ${e.error}`);
        break;
      case "marker_error":
        this.#clearLive();
        human(e.error);
        break;
      case "markers_caught_up":
        this.info(
          `Wrote ${plural(e.written, "marker")} owed by earlier runs` +
            (e.owed > 0 ? ` (${e.owed} still owed)` : ""),
        );
        break;
      case "retry":
        if (!this.#opts.quiet) {
          this.#clearLive();
          human(
            `Retrying ${e.subject} (attempt ${e.attempt}) in ${
              (e.delay_ms / 1000).toFixed(1)
            } s: ${e.reason}`,
          );
        }
        break;
      case "stopping":
        this.#clearLive();
        // An error is printed once, as soon as it stops the run; the summary follows.
        if (e.kind !== undefined) this.error({ message: e.reason, hint: e.hint });
        else human(`Stopping: ${e.reason}`);
        break;
      case "lock_wait":
        human(`Waiting for a lock: ${e.message}`);
        break;
      case "schema":
        if (e.rekeyed > 0) {
          human(
            `Upgraded ${e.table}: ${e.rekeyed} duplicate rows of the original tool were kept under ` +
              `keys marked "(duplicate ...)"`,
          );
        }
        break;
      case "device": {
        const line = deviceLine(e);
        if (line) this.info(line);
        break;
      }
      case "settle_wait":
        this.info(
          `Waiting up to ${(e.wait_ms / 1000).toFixed(1)} s for ${
            plural(e.folders, "folder")
          } still being written`,
        );
        break;
      case "warning":
        human(`Warning: ${e.message}`);
        break;
      case "verify":
        this.info(
          `Verified against ${plural(e.rows, "server row")}: ${e.missing_on_server} missing ` +
            `and ${e.changed_on_server} changed there (sent again), ${e.adopted} adopted ` +
            `without sending, ${plural(e.orphans, "orphan row")} with no folder on disk` +
            (e.orphan_sample.length > 0 ? ` (${e.orphan_sample.slice(0, 3).join(", ")}...)` : ""),
        );
        if (e.other_devices.length > 0) {
          const folders = e.other_devices.reduce((sum, d) => sum + d.folders, 0);
          human(
            `Warning: ${plural(folders, "folder")} of this tree also have rows under other ` +
              `device ids: ${
                e.other_devices.map((d) => `${d.device_id} (${d.folders})`).join(", ")
              } (another device using the same folder names, or copies an older version ` +
              `made; those rows are not this device's and are never changed or deleted)`,
          );
        }
        break;
      default:
        break;
    }
  }

  /** Prints the end of a run: the summary line(s), and the summary event in JSON mode. */
  summary(result: RunResult, mode: string): void {
    this.stop();
    const c = result.counters;
    this.json({
      event: "summary",
      mode,
      status: result.status,
      exit_code: result.exitCode,
      scanned: c.scanned,
      new: c.new,
      changed: c.new + c.changed,
      modified: c.changed,
      unchanged: c.unchanged,
      queued: c.queued,
      uploaded: c.uploaded,
      inserted: c.inserted,
      updated: c.updated,
      failed: c.failed,
      unreadable: c.unreadable,
      skipped: c.skipped,
      settling: c.settling,
      missing: c.missing,
      marker_errors: c.markerErrors,
      markers_owed: result.markersOwed,
      markers_caught_up: c.markersCaughtUp,
      retries: c.retries,
      bytes: c.bytes,
      batches: c.batches,
      exhausted: result.exhausted,
      adopted: c.adopted,
      objects: c.objects,
      objects_skipped: c.objectsSkipped,
      object_bytes: c.objectBytes,
      duration_ms: result.durationMs,
      ...errorFields(result),
    });
    const lines: string[] = [];
    const took = formatDuration(result.durationMs);
    if (mode === "scan-only") {
      lines.push(
        `Scanned ${plural(c.scanned, "folder")} in ${took}: ${c.new} new, ${c.changed} changed, ` +
          `${c.unchanged} unchanged, ${c.missing} missing, ${c.unreadable} unreadable`,
      );
    } else if (mode === "dry-run") {
      lines.push(
        `Dry run: ${plural(c.scanned, "folder")} scanned in ${took}; would upload ${
          plural(c.queued - c.failed - c.adopted, "folder")
        } (${formatBytes(c.bytes)}); ${c.failed} would fail; nothing was written`,
      );
    } else {
      lines.push(
        `Scanned ${plural(c.scanned, "folder")} (${c.new} new, ${c.changed} changed, ` +
          `${c.unchanged} unchanged) in ${took}`,
      );
      lines.push(
        `Uploaded ${plural(c.uploaded, "folder")} in ${plural(c.batches, "batch", "batches")} ` +
          `(${c.inserted} inserted, ${c.updated} updated, ${
            c.uploaded - c.inserted - c.updated
          } already up to date); ${c.failed} failed`,
      );
    }
    lines.push(...objectLines(c, mode === "dry-run"));
    if (c.adopted > 0) {
      lines.push(
        `${plural(c.adopted, "folder")} changed on disk but not in content: nothing sent`,
      );
    }
    if (c.settling > 0) {
      lines.push(
        `${plural(c.settling, "folder")} still being written, left for the next run`,
      );
    }
    if (c.missing > 0) lines.push(`${plural(c.missing, "tracked folder")} missing on disk`);
    if (c.unreadable > 0) {
      lines.push(
        `${plural(c.unreadable, "folder")} could not be read (see above; --status lists them)`,
      );
    }
    lines.push(...markerLines(result));
    if (result.exhausted > 0) {
      lines.push(
        `${plural(result.exhausted, "folder")} failed the maximum number of times and ` +
          `wait for a change (--status lists them)`,
      );
    }
    if (result.status === "interrupted") {
      lines.push("Interrupted: folders not yet acknowledged stay pending for the next run");
    }
    this.#printSummary(lines, result.exitCode);
  }

  /** Prints the end of a quick upload: its summary line, and the summary event in JSON mode. */
  quickSummary(result: RunResult): void {
    this.stop();
    const c = result.counters;
    this.json({
      event: "summary",
      mode: "quick",
      status: result.status,
      exit_code: result.exitCode,
      given: c.given,
      duplicates: c.duplicates,
      uploaded: c.uploaded,
      inserted: c.inserted,
      updated: c.updated,
      failed: c.failed,
      recorded: c.recorded,
      objects: c.objects,
      objects_skipped: c.objectsSkipped,
      object_bytes: c.objectBytes,
      marker_errors: c.markerErrors,
      markers_owed: result.markersOwed,
      retries: c.retries,
      bytes: c.bytes,
      batches: c.batches,
      duration_ms: result.durationMs,
      ...errorFields(result),
    });
    const folders = c.given - c.duplicates;
    const lines = [
      folders === 0
        ? "No folders given"
        : `Uploaded ${c.uploaded} of ${plural(folders, "folder")} ` +
          `(${c.inserted} inserted, ${c.updated} updated, ` +
          `${c.uploaded - c.inserted - c.updated} already up to date); ${c.failed} failed`,
    ];
    lines.push(...objectLines(c, false));
    lines.push(...markerLines(result));
    if (result.status === "interrupted") {
      lines.push("Interrupted: folders not yet acknowledged were not uploaded");
    }
    this.#printSummary(lines, result.exitCode);
  }

  #printSummary(lines: string[], exitCode: number): void {
    if (this.#opts.quiet && exitCode === 0) return;
    for (const l of lines) {
      if (this.#opts.json) this.#err(l + "\n");
      else this.#out(l + "\n");
    }
  }
}

/** The summary lines about marker files that could not be written, and those still owed. */
function markerLines(result: RunResult): string[] {
  const lines: string[] = [];
  const c = result.counters;
  if (c.markerErrors > 0) {
    lines.push(`${plural(c.markerErrors, "marker file")} could not be written`);
  }
  if (result.markersOwed > 0) {
    lines.push(
      `${plural(result.markersOwed, "folder")} owed a marker (not writable yet; a later run ` +
        `writes it; --status lists them)`,
    );
  }
  return lines;
}

/** The summary line about images put into object storage, when there were any. */
function objectLines(c: RunCounters, dryRun: boolean): string[] {
  if (c.objects + c.objectsSkipped === 0) return [];
  const verb = dryRun ? "Would store" : "Stored";
  return [
    `${verb} ${plural(c.objects, "image")} (${formatBytes(c.objectBytes)}) in object storage; ` +
    `${c.objectsSkipped} already there`,
  ];
}

/** The summary event's fields about the error that stopped a run, if one did. */
function errorFields(result: RunResult): Record<string, unknown> {
  const e = result.error;
  if (!e) return {};
  return {
    error: e.message,
    error_kind: e.kind,
    ...(e.sqlstate ? { sqlstate: e.sqlstate } : {}),
    ...(e.hint ? { hint: e.hint } : {}),
  };
}

/** One human line for an event: `info` lines are progress, `warn` lines always print. */
export interface StepLine {
  level: "info" | "warn";
  text: string;
}

/**
 * The human step lines of a quick upload's event, in the original quick upload script's
 * words (`Processing folder: ...`, `Found 2 images`, `Test status: passed`, ...).
 */
export function quickStepLines(
  e: EngineEvent,
  config: Pick<UploaderConfig, "statsFileName">,
): StepLine[] {
  const info = (text: string): StepLine => ({ level: "info", text });
  const warn = (text: string): StepLine => ({ level: "warn", text });
  switch (e.event) {
    case "folder_start":
      return [info(`Processing folder: ${e.path}`)];
    case "folder_skipped":
      return [info(`Skipped ${e.path}: ${e.reason}`)];
    case "settle_wait":
      return [
        info(
          `Waiting up to ${(e.wait_ms / 1000).toFixed(1)} s for ${
            plural(e.folders, "folder")
          } still being written`,
        ),
      ];
    // Folders of one batch are looked at together: each step line names its folder.
    case "folder_found":
      return [
        info(`  ${e.key}: Found ${plural(e.images, "image")}`),
        info(
          e.stats
            ? `  ${e.key}: Found ${config.statsFileName}`
            : `  ${e.key}: No ${config.statsFileName}`,
        ),
      ];
    case "folder_read":
      return [
        ...(e.stats ? [info(`  ${e.key}: Loaded ${config.statsFileName}`)] : []),
        info(`  ${e.key}: Test status: ${e.test_status}`),
      ];
    case "folder_failed":
      return [warn(`  ${e.key ?? e.path}: Failed: ${e.error}`)];
    case "inserting":
      return [
        info(
          `Inserting into ${e.table}...${
            e.folders > 1 ? ` (${plural(e.folders, "folder")}, ${e.batch})` : ""
          }`,
        ),
      ];
    case "folder_uploaded":
      return [info(`  Success: uploaded ${e.key}`)];
    case "marker_written":
      return [info(`  ${e.key}: Marker written: ${e.marker}`)];
    case "marker_error":
      return [warn(`  ${e.error}`)];
    case "retry":
      return [
        info(
          `Retrying ${e.subject} (attempt ${e.attempt}) in ${
            (e.delay_ms / 1000).toFixed(1)
          } s: ${e.reason}`,
        ),
      ];
    case "schema":
      return e.rekeyed > 0
        ? [
          warn(
            `Upgraded ${e.table}: ${e.rekeyed} duplicate rows of the original tool were kept under ` +
              `keys marked "(duplicate ...)"`,
          ),
        ]
        : [];
    case "device": {
      const line = deviceLine(e);
      return line ? [info(line)] : [];
    }
    case "warning":
      return [warn(`Warning: ${e.message}`)];
    case "lock_wait":
      return [warn(`Waiting for a lock: ${e.message}`)];
    case "stopping":
      // An error that stops the run is printed once, by `Reporter.error`.
      return e.kind !== undefined ? [] : [warn(`Stopping: ${e.reason}`)];
    default:
      return [];
  }
}

/** The line saying how an id nothing configured was settled, or null for a configured one. */
function deviceLine(e: Extract<EngineEvent, { event: "device" }>): string | null {
  if (e.source === "config" || e.source === "tracker") return null;
  return describeIdentity({
    id: e.device_id,
    source: e.source as DeviceSource,
    held: e.held,
  }, null);
}
