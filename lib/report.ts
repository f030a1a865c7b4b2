/**
 * The `--status` report, as text. The numbers come from {@linkcode Tracker.status};
 * this file only lays them out, in the original tool's shape plus batch analytics.
 *
 * @module
 */

import type { StatusReport } from "./tracker.ts";

/** Renders the status report as the lines a person reads. */
export function formatStatus(report: StatusReport): string {
  const lines: string[] = [];
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
  for (const p of report.missingSample) lines.push(`    ${p}`);
  if (report.missing > report.missingSample.length) {
    lines.push(`    ... and ${report.missing - report.missingSample.length} more`);
  }
  if (report.lastRun) {
    const r = report.lastRun;
    lines.push(`Last run: #${r.runId} ${r.mode}, ${r.status}, started ${r.startedAt}`);
  }
  lines.push("");
  lines.push("Recent batches:");
  if (report.recentBatches.length === 0) lines.push("  (none)");
  for (const b of report.recentBatches) {
    const timing = b.durationSeconds === null
      ? "unfinished"
      : `${b.durationSeconds.toFixed(1)} s${
        b.foldersPerSecond === null ? "" : `, ${b.foldersPerSecond} folders/s`
      }`;
    lines.push(
      `  ${b.batchName}: ${b.successful}/${b.total} successful` +
        (b.failed > 0 ? `, ${b.failed} failed` : "") + ` (${b.status}, ${timing})`,
    );
  }
  lines.push("");
  lines.push("Recent failures:");
  if (report.recentFailures.length === 0) lines.push("  (none)");
  for (const f of report.recentFailures) {
    lines.push(`  ${f.folderPath}`);
    lines.push(`    ${f.error.replace(/\n/g, " ")}`);
  }
  return lines.join("\n") + "\n";
}
