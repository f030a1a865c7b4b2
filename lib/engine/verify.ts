/**
 * `--verify`: reconciling the tracker with the table. The server's rows of this device are
 * streamed as (folder_key, content hash) by the sink (`RowSink.readRemote`) into the
 * tracker's `remote_rows` (never all in memory); folders recorded as uploaded whose row is gone or
 * holds other content become pending again; and during the walk that follows, a folder
 * whose row already holds its content is adopted without being sent (a lost tracker is
 * rebuilt this way). Server rows with no folder on disk are reported, never deleted.
 *
 * @module
 */

import type { Run } from "./run.ts";
import type { RowSink } from "../sink/sink.ts";

/** Folder keys asked about per query. */
const CHUNK = 10_000;

/** What the first half of a verify found. */
export interface RemoteReport {
  /** Rows of this device on the server. */
  rows: number;
  /** Folders recorded as uploaded whose row is missing: pending again. */
  missingOnServer: number;
  /** Folders recorded as uploaded whose row holds other content: pending again. */
  changedOnServer: number;
}

/**
 * Reads this device's rows from the server into the tracker and re-queues what the server
 * lacks. Call before the walk of `base` (whose folders are then compared by content).
 *
 * @throws {UploadError} as `RowSink.readRemote` does (a connection that fails, a refusal).
 */
export async function readRemote(run: Run, sink: RowSink, base: string): Promise<RemoteReport> {
  const tracker = run.tracker;
  tracker.clearRemote();
  const rows = await sink.readRemote((chunk) => tracker.addRemote(chunk), run.stop.signal);
  const requeued = tracker.requeueFromRemote(base, new Date(run.now()));
  return { rows, missingOnServer: requeued.missing, changedOnServer: requeued.changed };
}

/**
 * Rows of this tree's folders on the server under other device ids than this one (a fork
 * an older version made, or another device using the same folder names), by id, most
 * first. Asks about the tracked folders on disk under `base`, a page of keys at a time.
 *
 * @throws {UploadError} as `RowSink.otherDevices` does (the server refused, or went away).
 */
export async function countOtherDevices(
  run: Run,
  sink: RowSink,
  base: string,
): Promise<{ device_id: string; folders: number }[]> {
  const tracker = run.tracker;
  const totals = new Map<string, number>();
  for (let after = 0;;) {
    const page = tracker.baseKeys(base, after, CHUNK);
    if (page.keys.length === 0) break;
    after = page.next;
    for (const [id, n] of await sink.otherDevices(page.keys)) {
      totals.set(id, (totals.get(id) ?? 0) + n);
    }
    if (run.stopping) break;
  }
  return [...totals].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([device_id, folders]) => ({ device_id, folders }));
}

/**
 * Ends a verify after the walk: records orphans (server rows with no folder on disk), the
 * other device ids holding rows of the tree's folders, and what was found, and reports it.
 */
export function finishVerify(
  run: Run,
  base: string,
  remote: RemoteReport,
  otherDevices: { device_id: string; folders: number }[] = [],
): void {
  const tracker = run.tracker;
  const report = {
    at: new Date(run.now()).toISOString(),
    rows: remote.rows,
    missing_on_server: remote.missingOnServer,
    changed_on_server: remote.changedOnServer,
    adopted: run.counters.adopted,
    other_devices: otherDevices,
  };
  const orphans = tracker.finishVerify(base, report);
  run.emit({
    event: "verify",
    rows: remote.rows,
    missing_on_server: remote.missingOnServer,
    changed_on_server: remote.changedOnServer,
    adopted: run.counters.adopted,
    orphans: orphans.orphans,
    orphan_sample: orphans.sample,
    other_devices: otherDevices,
  });
}
