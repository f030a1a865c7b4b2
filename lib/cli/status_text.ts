/**
 * The `--status` report, as text. The numbers come from {@linkcode Tracker.status};
 * this file only lays them out, in the original tool's shape plus batch analytics,
 * failures (retried and given up), unreadable and missing folders, and the last verify.
 *
 * @module
 */

import type { FailureEntry, StatusReport } from "../tracker/tracker.ts";

/** Renders the status report as the lines a person reads. */
export function formatStatus(report: StatusReport): string {
  const lines: string[] = [];
  totals(lines, report);
  lastRuns(lines, report);
  batches(lines, report);
  lines.push("");
  lines.push("Recent failures (retried by the next runs):");
  if (report.failuresTotal === 0) lines.push("  (none)");
  list(lines, report.recentFailures, report.failuresTotal, failure);
  section(
    lines,
    report.exhaustedTotal,
    "Failed for good (retries used up; retried once their files change):",
    () => list(lines, report.exhausted, report.exhaustedTotal, failure),
  );
  section(
    lines,
    report.markersOwedTotal,
    "Markers owed (the folder could not be written; the next runs write them):",
    () =>
      list(
        lines,
        report.markersOwed,
        report.markersOwedTotal,
        (m) => [`  ${m.path} (${m.marker} marker)`],
      ),
  );
  section(
    lines,
    report.problemsTotal,
    "Unreadable (reported by every scan until fixed):",
    () =>
      list(lines, report.problems, report.problemsTotal, (p) => [`  ${p.path}`, `    ${p.reason}`]),
  );
  section(
    lines,
    report.skippedTotal,
    "Not followed (symbolic links to folders; links are never followed):",
    () =>
      list(lines, report.skipped, report.skippedTotal, (p) => [`  ${p.path}`, `    ${p.reason}`]),
  );
  return lines.join("\n") + "\n";
}

/** A titled section, when it has entries. */
function section(lines: string[], total: number, title: string, fill: () => void): void {
  if (total === 0) return;
  lines.push("");
  lines.push(title);
  fill();
}

/** The counts by status, settling and missing folders, and bases that are gone. */
function totals(lines: string[], report: StatusReport): void {
  lines.push(`Upload status (${report.dbPath})`);
  lines.push(`Total folders tracked: ${report.total}`);
  const order = ["success", "pending", "failed"];
  const keys = [
    ...order.filter((k) => k in report.byStatus),
    ...Object.keys(report.byStatus).filter((k) => !order.includes(k)).sort(),
  ];
  for (const k of keys) lines.push(`  ${k}: ${report.byStatus[k]}`);
  if (keys.length === 0) lines.push("  (nothing tracked yet)");
  if (report.settling > 0) lines.push(`  still being written (settling): ${report.settling}`);
  lines.push(`  missing on disk: ${report.missing}`);
  list(lines, report.missingSample, report.missing, (p) => [`    ${p}`]);
  for (const base of report.goneBases) {
    lines.push(
      `    base folder ${base} is gone (moved? run 'deno task upload NEW --moved-from ${base}')`,
    );
  }
}

/** The last run and the last verify. */
function lastRuns(lines: string[], report: StatusReport): void {
  if (report.lastRun) {
    const r = report.lastRun;
    lines.push(`Last run: #${r.runId} ${r.mode}, ${r.status}, started ${r.startedAt}`);
  }
  if (!report.lastVerify) return;
  const v = report.lastVerify;
  lines.push(
    `Last verify: ${v.at} against ${v.rows} server rows: ${v.missing_on_server} missing and ` +
      `${v.changed_on_server} changed there (sent again), ${v.adopted} adopted, ` +
      `${v.orphans} orphan rows with no folder on disk`,
  );
  list(lines, report.orphans, report.orphansTotal, (k) => [`    ${k}`]);
  const others = Array.isArray(v.other_devices)
    ? v.other_devices as { device_id: string; folders: number }[]
    : [];
  if (others.length > 0) {
    lines.push(
      `  Folders with rows under other device ids: ${
        others.map((d) => `${d.device_id} (${d.folders})`).join(", ")
      }`,
    );
  }
}

/** The recent batches with their duration and rate. */
function batches(lines: string[], report: StatusReport): void {
  lines.push("");
  lines.push("Recent batches:");
  if (report.recentBatches.length === 0) lines.push("  (none)");
  for (const b of report.recentBatches) {
    const timing = b.endTime === null
      ? "unfinished"
      : b.durationSeconds === null
      ? "duration unknown"
      : `${b.durationSeconds.toFixed(1)} s${
        b.foldersPerSecond === null ? "" : `, ${b.foldersPerSecond} folders/s`
      }`;
    lines.push(
      `  ${b.batchName}: ${b.successful}/${b.total} successful` +
        (b.failed > 0 ? `, ${b.failed} failed` : "") + ` (${b.status}, ${timing})`,
    );
  }
}

/** A failed folder's lines. */
function failure(f: FailureEntry): string[] {
  return [
    `  ${f.folderPath} (failed ${f.retryCount} time${f.retryCount === 1 ? "" : "s"})`,
    `    ${f.error.replace(/\n/g, " ")}`,
  ];
}

/** Adds a list's entries, and how many more there are when it was cut. */
function list<T>(lines: string[], items: readonly T[], total: number, show: (t: T) => string[]) {
  for (const item of items) lines.push(...show(item));
  if (total > items.length) {
    lines.push(`  ... and ${total - items.length} more (--status --json lists them all)`);
  }
}
