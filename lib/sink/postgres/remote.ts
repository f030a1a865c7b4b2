/**
 * Queries that read what the upload table holds: this device's rows as (folder_key, content
 * hash) for `--verify`, and how many rows of given folders each device holds (a new
 * tracker settling its device id, `--verify` naming other devices). Pure functions, no I/O.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import { checkDevice, sqlLiteral, tableRef } from "./quote.ts";

/**
 * The query `--verify` streams with COPY: this device's rows as (folder_key, content hash).
 *
 * @throws UploadError `config` for an invalid table name or device id.
 *
 * @example
 * ```ts
 * buildRemoteHashesQuery("device_test", "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a");
 * ```
 */
export function buildRemoteHashesQuery(table: string, deviceId: string): string {
  checkDevice({ id: deviceId, name: "", type: "" });
  return `select folder_key, metadata->>'content_hash' from ${tableRef(table).sql} ` +
    `where device_id = ${sqlLiteral(deviceId)}::uuid`;
}

/** Options of {@linkcode buildDeviceCountQuery}. */
export interface DeviceCountOptions {
  /** Target table, optionally schema-qualified (`schema.table`). */
  table: string;
  /** The folders asked about: their keys and their names (the basename of each key). */
  keys: readonly string[];
  /**
   * The table has `folder_key` (else, a table of the original scripts' shape, rows are
   * matched by `folder_name` alone, which the upgrade makes their key).
   */
  hasFolderKey: boolean;
}

/**
 * A statement returning one line of JSON, `{"<device id>": rows, ...}`: how many rows of the
 * given folders each device holds (read it with {@linkcode parseDeviceCounts}). The keys
 * travel in one JSON literal and are joined to the table as a set (a hash join over one scan
 * of the table, or the `folder_name` index the original tools' table has), so a statement
 * costs about one scan however many keys it asks about.
 *
 * @throws UploadError `config` for an invalid table name; `fatal` for no keys.
 *
 * @example
 * ```ts
 * buildDeviceCountQuery({ table: "device_test", keys: ["L1/Batch1"], hasFolderKey: true });
 * ```
 */
export function buildDeviceCountQuery(options: DeviceCountOptions): string {
  if (options.keys.length === 0) throw new UploadError("fatal", "No folder keys to look up");
  const t = tableRef(options.table).sql;
  const match = options.hasFolderKey
    ? "x.folder_name = k.name and x.folder_key = k.key"
    : "x.folder_name = k.key";
  return `with p as (select ${sqlLiteral(JSON.stringify(options.keys))}::jsonb as p),\n` +
    `k as (select distinct e.key, substring(e.key from '[^/]*$') as name\n` +
    `  from p, jsonb_array_elements_text(p.p) as e(key))\n` +
    `select coalesce(json_object_agg(s.d, s.n), '{}')::text from (\n` +
    `  select x.device_id::text as d, count(*) as n from ${t} x join k on ${match}\n` +
    `  where x.device_id is not null\n` +
    `  group by 1) s;`;
}

/**
 * The counts of {@linkcode buildDeviceCountQuery}'s reply, by device id.
 *
 * @throws UploadError `fatal` when the rows are not that statement's one line of JSON.
 *
 * @example
 * ```ts
 * parseDeviceCounts(['{"6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a" : 3}']); // Map { id => 3 }
 * ```
 */
export function parseDeviceCounts(rows: readonly string[]): Map<string, number> {
  let value: unknown;
  try {
    value = rows.length === 1 ? JSON.parse(rows[0]) : undefined;
  } catch (_error) {
    value = undefined; // not the statement's JSON: reported below
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new UploadError(
      "fatal",
      `Unexpected reply to a device count: ${JSON.stringify(rows.slice(0, 3))}`,
    );
  }
  const counts = new Map<string, number>();
  for (const [id, n] of Object.entries(value)) counts.set(id, Number(n));
  return counts;
}
