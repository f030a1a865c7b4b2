/**
 * Numbers, sizes, durations and counters as the human output writes them.
 *
 * @module
 */

import type { RunCounters } from "../core/events.ts";

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
