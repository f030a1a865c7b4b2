/**
 * `--verify`: reconciling the tracker with the table. The server's rows of this device are
 * streamed as (folder_key, content hash) with `COPY ... TO STDOUT` into the tracker's
 * `remote_rows` (never all in memory); folders recorded as uploaded whose row is gone or
 * holds other content become pending again; and during the walk that follows, a folder
 * whose row already holds its content is adopted without being sent (a lost tracker is
 * rebuilt this way). Server rows with no folder on disk are reported, never deleted.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import { copyOut } from "../sink/postgres/copy.ts";
import type { Run } from "./run.ts";
import {
  buildDeviceCountQuery,
  buildRemoteHashesQuery,
  parseDeviceCounts,
} from "../sink/postgres/remote.ts";
import type { WriteContext } from "../sink/postgres/writer.ts";

/** Rows handed to the tracker per transaction. */
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
 * @throws {UploadError} as {@linkcode copyOut} does (a connection that fails, a refusal).
 */
export async function readRemote(
  run: Run,
  context: WriteContext,
  base: string,
): Promise<RemoteReport> {
  const tracker = run.tracker!;
  if (!context.connection) throw new UploadError("fatal", "No connection to verify against");
  tracker.clearRemote();
  let chunk: [string, string | null][] = [];
  const rows = await copyOut(
    context.connection,
    buildRemoteHashesQuery(context.table, context.device.id),
    (columns) => {
      chunk.push([columns[0] ?? "", columns[1]]);
      if (chunk.length >= CHUNK) {
        tracker.addRemote(chunk);
        chunk = [];
      }
    },
    { signal: run.stop.signal },
  );
  tracker.addRemote(chunk);
  const requeued = tracker.requeueFromRemote(base, new Date(run.now()));
  return { rows, missingOnServer: requeued.missing, changedOnServer: requeued.changed };
}

/**
 * Rows of this tree's folders on the server under other device ids than this one (a fork
 * an older version made, or another device using the same folder names), by id, most
 * first. Asks about the tracked folders on disk under `base`, a page of keys at a time.
 *
 * @throws {UploadError} as a query of the write context does (the server refused, or went away).
 */
export async function countOtherDevices(
  run: Run,
  context: WriteContext,
  base: string,
): Promise<{ device_id: string; folders: number }[]> {
  const tracker = run.tracker!;
  const totals = new Map<string, number>();
  const own = context.device.id.toLowerCase();
  for (let after = 0;;) {
    const page = tracker.baseKeys(base, after, CHUNK);
    if (page.keys.length === 0) break;
    after = page.next;
    const sql = buildDeviceCountQuery({
      table: context.table,
      keys: page.keys,
      hasFolderKey: true,
    });
    const runner = await context.pool.acquire();
    try {
      const reply = await runner.run(sql, { timeoutMs: context.statementTimeoutMs });
      if (!reply.ok) {
        throw new UploadError(
          "config",
          `Cannot count rows under other device ids: ${reply.sqlstate}: ${reply.message}`,
          { subject: "verify", sqlstate: reply.sqlstate },
        );
      }
      for (const [id, n] of parseDeviceCounts(reply.rows)) {
        if (id.toLowerCase() !== own) totals.set(id, (totals.get(id) ?? 0) + n);
      }
    } finally {
      context.pool.release(runner);
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
  const tracker = run.tracker!;
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
