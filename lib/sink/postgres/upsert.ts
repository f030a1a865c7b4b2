/**
 * The batch upsert: SQL text that inserts or updates a batch of rows in the upload table.
 * Pure functions, no I/O. Every list the statement holds (the `jsonb_to_recordset` types,
 * the staging table and its casts, the insert columns and values, the `ON CONFLICT` updates)
 * is made from the table's column declaration (lib/sink/columns.ts).
 *
 * A batch of rows travels one of two ways:
 *
 * - {@linkcode buildUpsertStatement}: one statement, the rows inside one JSON literal
 *   unpacked by `jsonb_to_recordset`;
 * - {@linkcode buildUpsertScript}: one transaction in a psql script, the rows streamed by
 *   `COPY ... FROM STDIN` (fields escaped by {@linkcode copyField}) into a temp table
 *   dropped at its commit, then the same insert. About half the server CPU per row of the
 *   statement (docs/benchmarks.md); needs a server that takes COPY (PGlite's socket does not).
 *
 * Neither leaves session state behind (no `SET`, no prepared statements, no temp table past
 * the transaction that made it), so both work through a transaction pooler.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import { carries, headerToJson, payloadAround, rowToJson } from "../payload.ts";
import {
  type ColumnSpec,
  type DeviceInfo,
  imageNameBytes,
  type PayloadField,
  type TableColumns,
  UPLOAD_COLUMNS,
  type UploadRow,
} from "../columns.ts";
import { copyField, textArrayLiteral } from "./copy_text.ts";
import { checkDevice, sqlLiteral, type TableRef, tableRef } from "./quote.ts";

/** Options for {@linkcode buildUpsertStatement}. */
export interface UpsertOptions {
  /** Target table, optionally schema-qualified (`schema.table`); neither part may hold a dot. */
  table: string;
  /** This device. */
  device: DeviceInfo;
  /** Written to `upload_batch` of every inserted or changed row. */
  batchName: string;
  /** The table's columns. Default: `device_test`'s. */
  columns?: TableColumns;
}

/** What an upsert statement reports; rows neither inserted nor updated were unchanged. */
export interface UpsertCounts {
  /** Rows that did not exist before. */
  inserted: number;
  /** Rows that existed with a different content_hash and were rewritten. */
  updated: number;
  /**
   * Strict rows not written because their key holds another folder's row: [key, that
   * folder's source_path]. Absent when there are none.
   */
  conflicts?: [string, string][];
}

/** Bytes of an upsert statement besides its rows (SQL text, device, batch name), an upper bound. */
export const UPSERT_OVERHEAD_BYTES = 6144;

/**
 * Matches a JSON text that may hold a NUL (`\u0000`) or an unpaired surrogate escape
 * (`\ud800`-`\udfff`, which JSON.stringify writes only for lone surrogates): an escape
 * preceded by an even number of backslashes.
 */
const MAY_BE_UNSTORABLE = /(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})/;

/** A value still to check, with the step that leads to it from its parent. */
interface StorableNode {
  value: unknown;
  parent: StorableNode | null;
  step: string;
}

/**
 * Throws when a value holds text PostgreSQL cannot store (NUL, unpaired surrogate).
 * Iterative, in document order: a stats.json nested thousands of levels deep must fail
 * or pass on its merits, not overflow the call stack. The path is built only for an error.
 */
function checkStorable(value: unknown, key: string, path: string): void {
  const stack: StorableNode[] = [{ value, parent: null, step: path }];
  while (stack.length > 0) {
    const node = stack.pop()!;
    const v = node.value;
    if (typeof v === "string") {
      if (v.includes("\0") || !v.isWellFormed()) {
        const what = v.includes("\0") ? "a NUL character" : "an unpaired UTF-16 surrogate";
        const steps: string[] = [];
        for (let n: StorableNode | null = node; n; n = n.parent) steps.push(n.step);
        const at = steps.reverse().join("");
        throw new UploadError("data", `Cannot upload ${at}: it contains ${what}`, {
          subject: key,
        });
      }
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) {
        stack.push({ value: v[i], parent: node, step: `[${i}]` });
      }
    } else if (v !== null && typeof v === "object") {
      const entries = Object.entries(v);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [name, item] = entries[i];
        stack.push({ value: item, parent: node, step: `.${name}` });
        stack.push({ value: name, parent: node, step: " key" });
      }
    }
  }
}

/** Items joined by `, `, a new line (starting with `indent`) before one would pass column 96. */
function wrapList(items: readonly string[], indent: string, startColumn = indent.length): string {
  let out = "";
  let column = startColumn;
  for (let i = 0; i < items.length; i++) {
    const item = items[i] + (i < items.length - 1 ? "," : "");
    if (i > 0 && column + 1 + item.length > 96) {
      out += `\n${indent}`;
      column = indent.length;
    } else if (i > 0) {
      out += " ";
      column++;
    }
    out += item;
    column += item.length;
  }
  return out;
}

/** The payload fields a statement of these rows unpacks: optional ones only when carried. */
function unpackedFields(rows: readonly UploadRow[], columns: TableColumns): PayloadField[] {
  return columns.payload.filter((f) =>
    f.presence !== "optional" || rows.some((row) => carries(row, f))
  );
}

/** SQL: what an insert writes in a column, from the typed row `i` or the header `payload.p`. */
function insertValue(c: ColumnSpec): string {
  if (c.insert !== undefined) return c.insert;
  switch (c.travel) {
    case "row":
      return `i.${c.name}`;
    case "header": {
      const text = `payload.p->>${sqlLiteral(c.name)}`;
      return c.type === "text" ? text : `(${text})::${c.type}`;
    }
    default:
      return c.constant!;
  }
}

/** SQL: what a rewrite sets a column to, or null when it is never rewritten. */
function updateValue(c: ColumnSpec, columns: TableColumns): string | null {
  if (columns.key.includes(c.name)) return null;
  if (c.update !== undefined) return c.update;
  if (c.owner === "tool") return `excluded.${c.name}`;
  if (c.owner === "kept") return `coalesce(t.${c.name}, excluded.${c.name})`;
  return null;
}

/**
 * ONE statement that inserts or updates a batch of rows and returns one line of JSON,
 * `{"inserted":N,"updated":N}` (read it with {@linkcode parseUpsertReply}). The rows, the
 * device and the batch name travel inside one JSON literal unpacked with
 * `jsonb_to_recordset`. An existing row of the same (device_id, folder_key) is rewritten
 * only when its `metadata->>'content_hash'` differs, and only then does its updated_at
 * move; rows neither inserted nor updated were unchanged. A row another tool wrote (no
 * content_hash) whose stats and image names match the folder is left as it stands. A
 * rewrite keeps what the tool does not own: other columns, other metadata keys, the
 * storage URLs in `images` of images still there, and a test_status set by hand.
 *
 * `rowJson` are the rows' JSON texts as {@linkcode rowToJson} or `rowToJsonWithStats`
 * (lib/sink/columns.ts) made them, sent as they are; without them they are made here.
 *
 * @throws UploadError `fatal` for an empty batch or one naming a folder_key twice (a bug
 *   in the caller: PostgreSQL refuses to update one row twice in a statement);
 *   `data` (subject: the folder_key) for text PostgreSQL cannot store;
 *   `config` for an invalid table name or device id.
 *
 * @example
 * ```ts
 * const sql = buildUpsertStatement(rows, {
 *   table: "device_test",
 *   device: { id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a", name: "pi-7", type: "image_analyzer" },
 *   batchName: "batch_20250602_164255",
 * });
 * ```
 */
export function buildUpsertStatement(
  rows: readonly UploadRow[],
  options: UpsertOptions,
  rowJson?: readonly string[],
): string {
  const columns = options.columns ?? UPLOAD_COLUMNS;
  const texts = rowJson ?? rows.map((r) => rowToJson(r, columns));
  const ref = checkBatch(rows, options, texts);
  const header = headerJson(options);
  const payloadText = `${header.slice(0, -1)},"rows":[${texts.join(",")}]}`;
  const types = unpackedFields(rows, columns).map((f) => `${f.name} ${f.type}`);
  return `with payload as (\n` +
    `  select ${sqlLiteral(payloadText)}::jsonb as p\n` +
    `), input as (\n` +
    `  select r.* from payload, jsonb_to_recordset(payload.p->'rows') as r(\n` +
    `    ${wrapList(types, "    ")})\n` +
    upsertTail(ref, rows, columns);
}

/** The name of the staging table of {@linkcode buildUpsertScript} (in `pg_temp`). */
export const STAGING_TABLE = "upload_rows";

/**
 * The staging table's columns: every payload field, the one whose text starts with `{`
 * first (see {@linkcode buildUpsertScript}). All text: COPY cannot refuse a text field; the
 * casts are the insert's.
 */
function stagingFields(columns: TableColumns): PayloadField[] {
  const lead = columns.payload.find((f) => f.name === columns.lead)!;
  return [lead, ...columns.payload.filter((f) => f !== lead)];
}

/**
 * The upsert of {@linkcode buildUpsertStatement} as a psql script of one transaction: a
 * temp table dropped at commit, `COPY ... FROM STDIN` of the rows' fields into it (every
 * field text), the same insert reading it (same guard, conflicts and one-line JSON reply,
 * read it with {@linkcode parseUpsertReply}), and `commit`. The header (device, batch
 * name) travels in a JSON literal as in the statement.
 *
 * Send it with the session's `script` option (lib/sink/postgres/psql.ts): the script ends
 * in the last statement it ran, so the reply trailer judges the first failure (the begin,
 * the create, the insert or the commit) and a failed script's transaction is rolled back after the
 * reply. Three facts of psql this relies on:
 *
 * - a failed `COPY FROM STDIN` does not set psql's `:ERROR`, so nothing may fail there:
 *   the staging columns are text and the rows' text is valid UTF-8 without NUL;
 * - the create runs only when the begin succeeded, and the copy only when the create did
 *   (`\if :ERROR` after each); psql still lexes lines in a skipped branch, quotes
 *   included;
 * - so every data line starts with a backslash before its first character (`\{`, which
 *   COPY reads as `{`; metadata, a JSON object, is the first column): outside COPY, psql
 *   takes the line for an unknown meta-command and discards it whole, whatever quotes it
 *   holds, rather than running it as SQL.
 *
 * `rawSpans` say where each row's raw field (the stats file's text) sits in its JSON text,
 * as `rowJsonAndRaw` (lib/sink/payload.ts) gave it; a row without one has it found again.
 *
 * @throws UploadError as {@linkcode buildUpsertStatement}; `fatal` when a JSON text is not
 *   the one `rowToJson` or `rowToJsonWithStats` made for its row.
 *
 * @example
 * ```ts
 * const script = buildUpsertScript(rows, {
 *   table: "device_test",
 *   device: { id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a", name: "pi-7", type: "image_analyzer" },
 *   batchName: "batch_20250602_164255",
 * });
 * ```
 */
export function buildUpsertScript(
  rows: readonly UploadRow[],
  options: UpsertOptions,
  rowJson?: readonly string[],
  rawSpans?: readonly (readonly [number, number] | undefined)[],
): string {
  const columns = options.columns ?? UPLOAD_COLUMNS;
  const texts = rowJson ?? rows.map((r) => rowToJson(r, columns));
  const ref = checkBatch(rows, options, texts);
  const staging = `pg_temp.${STAGING_TABLE}`;
  const fields = stagingFields(columns);
  const casts = fields.map((f) =>
    f.type === "text" ? `u.${f.name}` : `u.${f.name}::${f.type} as ${f.name}`
  );
  const parts: string[] = [
    // A refused begin (a statement timeout on a loaded server) must stop the script too:
    // outside a transaction the table would be dropped as soon as it was made.
    `begin;\n` +
    `\\if :ERROR\n\\else\n` +
    `create temp table ${STAGING_TABLE} (${
      fields.map((f) => `${f.name} text`).join(", ")
    }) on commit drop;\n` +
    `\\if :ERROR\n\\else\n` +
    // psql reports a refused COPY only on stderr; verbose, it carries the SQLSTATE there.
    `\\set VERBOSITY verbose\n` +
    `copy ${staging} from stdin;\n`,
  ];
  for (let i = 0; i < rows.length; i++) {
    parts.push(copyLine(rows[i], texts[i], fields, columns, rawSpans?.[i]));
  }
  parts.push(
    `\\.\n` +
      `\\set VERBOSITY default\n` +
      `with payload as (\n` +
      `  select ${sqlLiteral(headerJson(options))}::jsonb as p\n` +
      `), input as (\n` +
      `  select ${wrapList(casts, "    ", 9)}\n` +
      `  from ${staging} u\n` +
      upsertTail(ref, rows, columns) + `\n` +
      `\\if :ERROR\n\\else\ncommit;\n\\endif\n` +
      `\\endif\n` +
      `\\endif\n`,
  );
  return parts.join("");
}

/** Checks a batch for {@linkcode buildUpsertStatement} and its kin; returns the table. */
function checkBatch(
  rows: readonly UploadRow[],
  options: UpsertOptions,
  rowJson: readonly string[],
): TableRef {
  checkDevice(options.device);
  const ref = tableRef(options.table);
  if (rows.length === 0) throw new UploadError("fatal", "Cannot build an upsert of no rows");
  if (rowJson.length !== rows.length) {
    throw new UploadError("fatal", "Upsert rows and their JSON texts differ in number");
  }
  const keys = new Set<string>();
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i];
    if (keys.has(row.folder_key)) {
      throw new UploadError("fatal", "The same folder_key appears twice in one batch", {
        subject: row.folder_key,
      });
    }
    keys.add(row.folder_key);
    // JSON text shows what a walk would find: NUL and lone surrogates are the only text
    // JSON.stringify writes as \u0000 and \ud800-\udfff escapes. Walk only when one appears
    // (the text, not the row: a row may travel without its parsed stats).
    if (MAY_BE_UNSTORABLE.test(rowJson[i])) {
      checkStorable(JSON.parse(rowJson[i]), row.folder_key, "row");
    }
  }
  return ref;
}

/** The batch's header (device, batch name) as a JSON object's text. */
function headerJson(options: UpsertOptions): string {
  return headerToJson({
    deviceId: options.device.id,
    deviceName: options.device.name,
    deviceType: options.device.type,
    batchName: options.batchName,
  }, options.columns);
}

/**
 * SQL (in the upsert's DO UPDATE): a row this tool did not write (no content_hash) holds
 * the folder's content when its stats are the same JSON value (no stats: SQL or JSON null)
 * and its images name the same files (URLs ending in those names included, on either side:
 * `--images-as urls` sends URLs): such a row is adopted as it stands.
 */
const SAME_CONTENT =
  `coalesce(t.test_results, 'null'::jsonb) = coalesce(excluded.test_results, 'null'::jsonb)\n` +
  `    and (select array_agg(b order by b) from (select ${
    imageNameBytes("o")
  } as b from unnest(t.images) o) s)\n` +
  `      is not distinct from (select array_agg(b order by b) from (select ${
    imageNameBytes("n")
  } as b\n` +
  `        from unnest(excluded.images) n) s)`;

/**
 * SQL: strict rows (keyed by a folder's name alone) may not overwrite a row another folder
 * wrote: such keys are left out of the insert and reported. Empty parts without strict rows.
 */
function strictParts(ref: TableRef, rows: readonly UploadRow[]) {
  if (!rows.some((r) => r.strict)) return { conflicts: "", keep: "", report: `'[]'::json` };
  return {
    conflicts: `), conflicts as (\n` +
      `  select i.folder_key, t.metadata->>'source_path' as held_by\n` +
      `  from payload, input i join ${ref.sql} t on t.folder_key = i.folder_key\n` +
      `  where i.strict and t.device_id = (payload.p->>'device_id')::uuid\n` +
      `    and t.metadata->>'source_path' is distinct from i.metadata->>'source_path'\n` +
      `    and t.metadata->>'source_path' is not null\n`,
    keep: `  where not exists (select 1 from conflicts c where c.folder_key = i.folder_key)\n`,
    report:
      `(select coalesce(json_agg(json_build_array(c.folder_key, c.held_by)), '[]') from conflicts c)`,
  };
}

/**
 * The rest of an upsert once `payload` (the header as `p`) and `input` (the rows, typed)
 * are open: the strict-row conflicts, the insert and its one-line JSON reply. Optional
 * columns (image_objects) are written only when a row carries them; else left alone.
 */
function upsertTail(ref: TableRef, rows: readonly UploadRow[], columns: TableColumns): string {
  const strict = strictParts(ref, rows);
  const carried = new Set(unpackedFields(rows, columns).map((f) => f.name));
  const written = columns.columns.filter((c) =>
    c.travel !== "none" && (!c.optional || carried.has(c.name))
  );
  const updates = columns.columns
    .filter((c) => !c.optional || carried.has(c.name))
    .flatMap((c) => {
      const value = updateValue(c, columns);
      return value === null ? [] : [`${c.name} = ${value}`];
    });
  const into = `  insert into ${ref.sql} as t (`;
  return strict.conflicts +
    `), written as (\n` +
    `${into}${wrapList(written.map((c) => c.name), "    ", into.length)})\n` +
    `  select ${wrapList(written.map(insertValue), "    ", 9)}\n` +
    `  from payload, input i\n` +
    strict.keep +
    `  on conflict (${columns.key.join(", ")}) do update set\n` +
    `    ${updates.join(",\n    ")}\n` +
    `  where t.metadata->>'content_hash' is distinct from excluded.metadata->>'content_hash'\n` +
    `    and (t.metadata->>'content_hash' is not null or not (${SAME_CONTENT}))\n` +
    `  returning (t.xmax = 0) as inserted\n` +
    `)\n` +
    `select json_build_object('inserted', count(*) filter (where inserted),\n` +
    `  'updated', count(*) filter (where not inserted), 'conflicts', ${strict.report})::text\n` +
    `from written;`;
}

/**
 * One row as a line of COPY text for the staging table (`fields` in its column order),
 * with the backslash before its first character that {@linkcode buildUpsertScript} relies
 * on. The raw field (test_results) is the text as it travels in the row's JSON (the stats
 * file's own digits and key order), not serialized again; JSON fields are their JSON text.
 */
function copyLine(
  row: UploadRow,
  json: string,
  fields: readonly PayloadField[],
  columns: TableColumns,
  rawSpan: readonly [number, number] | undefined,
): string {
  let raw: string | undefined;
  if (columns.raw !== undefined && rawSpan !== undefined) {
    raw = json.slice(rawSpan[0], rawSpan[1]);
  } else if (columns.raw !== undefined) {
    // The JSON text is before + raw + after, both made from the row's other fields.
    const [before, after] = payloadAround(row, columns.raw, columns);
    if (
      json.length < before.length + after.length || !json.startsWith(before) ||
      !json.endsWith(after)
    ) {
      throw new UploadError("fatal", "A row's JSON text does not match the row", {
        subject: row.folder_key,
      });
    }
    raw = json.slice(before.length, json.length - after.length);
  }
  const out = fields.map((f) => copyValue(row, f, f.name === columns.raw ? raw : undefined));
  // The lead field first: a JSON object's text, so every line starts with `\{`.
  return `\\${out.join("\t")}\n`;
}

/**
 * One field of a COPY line: `\N` for no value, else its text escaped; a JSON field is its
 * JSON text (`raw`: the text it travels as).
 */
function copyValue(row: UploadRow, f: PayloadField, raw: string | undefined): string {
  if (f.presence === "flag") return carries(row, f) ? "t" : "\\N";
  if (raw !== undefined) return raw === "null" ? "\\N" : copyField(raw);
  const value = (row as Record<string, unknown>)[f.name];
  if (value === undefined || value === null) return "\\N";
  if (f.type === "jsonb") return copyField(JSON.stringify(value));
  if (f.type.endsWith("[]")) return copyField(textArrayLiteral(value as string[]));
  return copyField(String(value));
}

/**
 * Reads the counts from the rows of an upsert statement's reply.
 *
 * @throws UploadError `fatal` when the rows are not the statement's one line of JSON.
 *
 * @example
 * ```ts
 * parseUpsertReply(['{"inserted" : 2, "updated" : 1, "conflicts" : []}']);
 * // { inserted: 2, updated: 1 }
 * ```
 */
export function parseUpsertReply(rows: readonly string[]): UpsertCounts {
  let value: { inserted?: unknown; updated?: unknown; conflicts?: unknown } | undefined;
  try {
    value = rows.length === 1 ? JSON.parse(rows[0]) : undefined;
  } catch (_error) {
    value = undefined; // not the statement's JSON: reported below
  }
  if (
    typeof value?.inserted !== "number" || typeof value.updated !== "number" ||
    (value.conflicts !== undefined && !Array.isArray(value.conflicts))
  ) {
    throw new UploadError(
      "fatal",
      `Unexpected reply to an upsert statement: ${JSON.stringify(rows.slice(0, 3))}`,
    );
  }
  const counts: UpsertCounts = { inserted: value.inserted, updated: value.updated };
  const conflicts = (value.conflicts ?? []) as [string, string][];
  if (conflicts.length > 0) counts.conflicts = conflicts;
  return counts;
}
