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

/** One payload field of a row: its name and its value's JSON text. */
export interface FieldText {
  readonly name: string;
  readonly json: string;
}

/**
 * The payload fields a row carries, in {@linkcode TableColumns.payload} order, each with its
 * value's JSON text: every `always` field (null when the row has no value), a flag only when
 * true, an optional field only when the row has it. The field `hole`, when given, is listed
 * with an empty text and its value is not serialized (a large stats value the caller has as
 * text already).
 */
export function payloadFields(
  row: object,
  columns: TableColumns = UPLOAD_COLUMNS,
  hole?: string,
): FieldText[] {
  const fields: FieldText[] = [];
  for (const f of columns.payload) {
    if (f.presence !== "always" && !carries(row, f)) continue;
    if (f.name === hole) {
      fields.push({ name: f.name, json: "" });
      continue;
    }
    const value = f.presence === "flag" ? true : valueOf(row, f.name) ?? null;
    fields.push({ name: f.name, json: JSON.stringify(value) });
  }
  return fields;
}

/** The JSON object of payload fields, in their order. */
export function joinPayload(fields: readonly FieldText[]): string {
  return `{${fields.map((f) => `${JSON.stringify(f.name)}:${f.json}`).join(",")}}`;
}

/**
 * {@linkcode joinPayload} as the text before and after the value of field `around`:
 * `before + <its JSON> + after` is the whole text.
 *
 * @throws UploadError `fatal` when the fields lack `around`.
 */
export function splitPayload(fields: readonly FieldText[], around: string): [string, string] {
  const at = fields.findIndex((f) => f.name === around);
  if (at < 0) throw new UploadError("fatal", `No payload field ${around}`);
  const whole = joinPayload(fields.slice(0, at + 1));
  const before = whole.slice(0, whole.length - 1 - fields[at].json.length);
  const after = fields.slice(at + 1).map((f) => `,${JSON.stringify(f.name)}:${f.json}`).join("");
  return [before, `${after}}`];
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
  return joinPayload(payloadFields(row, columns));
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
  if (columns.raw === undefined) throw new UploadError("fatal", "No raw column declared");
  const [before, after] = splitPayload(payloadFields(row, columns, columns.raw), columns.raw);
  return `${before}${statsText ?? "null"}${after}`;
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
