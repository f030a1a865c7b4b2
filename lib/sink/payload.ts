/**
 * The JSON a row travels as, made from the column declaration (columns.ts): the payload
 * fields in their fixed order ({@linkcode rowToJson}), the stats file's own text spliced in
 * as the raw field without serializing its value again ({@linkcode rowToJsonWithStats}), and
 * the batch header ({@linkcode headerToJson}).
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import {
  type HeaderValues,
  type PayloadField,
  type TableColumns,
  UPLOAD_COLUMNS,
} from "./columns.ts";

/** A row's field by name (the declaration decides which exist). */
function valueOf(row: object, name: string): unknown {
  return (row as Record<string, unknown>)[name];
}

/** Whether a row carries an optional field or flag. */
export function carries(row: object, f: PayloadField): boolean {
  const value = valueOf(row, f.name);
  return f.presence === "flag" ? value === true : value !== undefined;
}

/**
 * The payload fields `fields` a row carries, as one object in their order (JSON.stringify
 * keeps it: the names are plain identifiers): every `always` field (null when the row has
 * no value), a flag only when true, an optional field only when the row has it.
 */
function payloadObject(row: object, fields: readonly PayloadField[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of fields) {
    if (f.presence === "always") out[f.name] = valueOf(row, f.name) ?? null;
    else if (carries(row, f)) out[f.name] = f.presence === "flag" ? true : valueOf(row, f.name);
  }
  return out;
}

/**
 * The JSON text of a row's payload ({@linkcode rowToJson}) as the text before and after the
 * value of field `around`, one every row carries: `before + <its value's JSON> + after` is
 * the whole text. That value itself is not serialized (a large stats value the caller has
 * as text already).
 *
 * @throws UploadError `fatal` when `around` is not a field every row carries.
 */
export function payloadAround(
  row: object,
  around: string,
  columns: TableColumns = UPLOAD_COLUMNS,
): [string, string] {
  const split = splitAround(columns, around);
  const head = JSON.stringify(payloadObject(row, split.before));
  const tail = JSON.stringify(payloadObject(row, split.after));
  return [
    head === "{}" ? `{${split.key}:` : `${head.slice(0, -1)},${split.key}:`,
    tail === "{}" ? "}" : `,${tail.slice(1)}`,
  ];
}

/** A declaration's payload fields before and after one field, and that field's JSON key. */
interface Split {
  before: readonly PayloadField[];
  after: readonly PayloadField[];
  key: string;
}

/** Splits by declaration and field, made once (every row of a run asks). */
const splits = new WeakMap<TableColumns, Map<string, Split>>();

function splitAround(columns: TableColumns, around: string): Split {
  let byField = splits.get(columns);
  if (byField === undefined) splits.set(columns, byField = new Map());
  let split = byField.get(around);
  if (split === undefined) {
    const at = columns.payload.findIndex((f) => f.name === around && f.presence === "always");
    if (at < 0) throw new UploadError("fatal", `No payload field ${around} every row carries`);
    split = {
      before: columns.payload.slice(0, at),
      after: columns.payload.slice(at + 1),
      key: JSON.stringify(around),
    };
    byField.set(around, split);
  }
  return split;
}

/**
 * The JSON text of a row as it travels in an upsert: the payload fields in a fixed order
 * ({@linkcode TableColumns.payload}), no stray properties; a missing value is null.
 *
 * @example
 * ```ts
 * rowToJson(row); // '{"folder_key":"L1/Batch54","folder_name":"Batch54",...}'
 * ```
 */
export function rowToJson(row: object, columns: TableColumns = UPLOAD_COLUMNS): string {
  return JSON.stringify(payloadObject(row, columns.payload));
}

/**
 * {@linkcode rowToJson} with the raw field (`test_results`) spliced in as the stats file's
 * own JSON text, which must be one valid JSON value (it was parsed): the file's digits,
 * escapes and key order travel as they are, and a large file is not serialized again. A
 * null text is JSON null.
 *
 * @example
 * ```ts
 * rowToJsonWithStats({ ...row, test_results: null }, '{"result": "PASS"}');
 * ```
 */
export function rowToJsonWithStats(
  row: object,
  statsText: string | null,
  columns: TableColumns = UPLOAD_COLUMNS,
): string {
  return rowJsonAndRaw(row, statsText, columns).json;
}

/** {@linkcode rowToJsonWithStats}, with where the raw field's text sits in it. */
export interface RowJson {
  /** The row's JSON text. */
  json: string;
  /** Start and end (exclusive) of the raw field's value in `json`. */
  rawSpan: readonly [number, number];
}

/**
 * {@linkcode rowToJsonWithStats} and the span of the raw field's text in it, so a writer
 * that sends the field on its own (COPY) takes it out without serializing the row again.
 */
export function rowJsonAndRaw(
  row: object,
  statsText: string | null,
  columns: TableColumns = UPLOAD_COLUMNS,
): RowJson {
  if (columns.raw === undefined) throw new UploadError("fatal", "No raw column declared");
  const [before, after] = payloadAround(row, columns.raw, columns);
  const raw = statsText ?? "null";
  return { json: `${before}${raw}${after}`, rawSpan: [before.length, before.length + raw.length] };
}

/**
 * The batch header's JSON text: the `header` columns in declaration order, each with its
 * value from `values`.
 *
 * @example
 * ```ts
 * headerToJson({ deviceId, deviceName: "pi-7", deviceType: "image_analyzer", batchName: "b1" });
 * // '{"device_id":"...","device_name":"pi-7","device_type":"image_analyzer","upload_batch":"b1"}'
 * ```
 */
export function headerToJson(values: HeaderValues, columns: TableColumns = UPLOAD_COLUMNS): string {
  const header: Record<string, string> = {};
  for (const c of columns.header) header[c.name] = values[c.header!];
  return JSON.stringify(header);
}
