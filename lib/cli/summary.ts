/**
 * The end of a run in words and as the `summary` event: what was scanned, uploaded,
 * failed, held back or left owed, for the upload manager and for quick upload.
 *
 * @module
 */

import type { RunCounters, RunResult } from "../core/events.ts";
import { formatBytes, formatDuration, plural } from "./format.ts";

/** The `summary` event of an upload manager run. */
export function summaryEvent(result: RunResult, mode: string): Record<string, unknown> {
  const c = result.counters;
  return {
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
  };
}

/** The first lines of an upload manager run's summary: what it scanned and sent. */
function countLines(result: RunResult, mode: string): string[] {
  const c = result.counters;
  const took = formatDuration(result.durationMs);
  if (mode === "scan-only") {
    return [
      `Scanned ${plural(c.scanned, "folder")} in ${took}: ${c.new} new, ${c.changed} changed, ` +
      `${c.unchanged} unchanged, ${c.missing} missing, ${c.unreadable} unreadable`,
    ];
  }
  if (mode === "dry-run") {
    return [
      `Dry run: ${plural(c.scanned, "folder")} scanned in ${took}; would upload ${
        plural(c.queued - c.failed - c.adopted, "folder")
      } (${formatBytes(c.bytes)}); ${c.failed} would fail; nothing was written`,
    ];
  }
  return [
    `Scanned ${plural(c.scanned, "folder")} (${c.new} new, ${c.changed} changed, ` +
    `${c.unchanged} unchanged) in ${took}`,
    `Uploaded ${plural(c.uploaded, "folder")} in ${plural(c.batches, "batch", "batches")} ` +
    `(${c.inserted} inserted, ${c.updated} updated, ${
      c.uploaded - c.inserted - c.updated
    } already up to date); ${c.failed} failed`,
  ];
}

/** The lines of an upload manager run's summary. */
export function summaryLines(result: RunResult, mode: string): string[] {
  const c = result.counters;
  const lines = countLines(result, mode);
  lines.push(...objectLines(c, mode === "dry-run"));
  if (c.adopted > 0) {
    lines.push(`${plural(c.adopted, "folder")} changed on disk but not in content: nothing sent`);
  }
  if (c.settling > 0) {
    lines.push(`${plural(c.settling, "folder")} still being written, left for the next run`);
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
  return lines;
}

/** The `summary` event of a quick upload. */
export function quickSummaryEvent(result: RunResult): Record<string, unknown> {
  const c = result.counters;
  return {
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
  };
}

/** The lines of a quick upload's summary. */
export function quickSummaryLines(result: RunResult): string[] {
  const c = result.counters;
  const folders = c.given - c.duplicates;
  const lines = [
    folders === 0 ? "No folders given" : `Uploaded ${c.uploaded} of ${plural(folders, "folder")} ` +
      `(${c.inserted} inserted, ${c.updated} updated, ` +
      `${c.uploaded - c.inserted - c.updated} already up to date); ${c.failed} failed`,
  ];
  lines.push(...objectLines(c, false));
  lines.push(...markerLines(result));
  if (result.status === "interrupted") {
    lines.push("Interrupted: folders not yet acknowledged were not uploaded");
  }
  return lines;
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

/** The summary line about images and reports put into object storage, when there were any. */
function objectLines(c: RunCounters, dryRun: boolean): string[] {
  if (c.objects + c.objectsSkipped === 0) return [];
  const verb = dryRun ? "Would store" : "Stored";
  return [
    `${verb} ${plural(c.objects, "file")} (${formatBytes(c.objectBytes)}) in object storage; ` +
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
