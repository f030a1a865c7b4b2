/**
 * SQL text: the one quoting function, identifier quoting, table names and the batch upsert
 * statement. Pure functions, no I/O. The schema's own statements live in `schema.ts`.
 *
 * Every value that ends up in SQL text goes through {@linkcode sqlLiteral}, so no value is
 * ever spliced into SQL any other way. A batch of rows travels one of two ways:
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

/** One folder's row in `device_test`, as built from a folder snapshot. */
export interface UploadRow {
  /** Folder path relative to the base path, `/`-separated: the identity with the device. */
  folder_key: string;
  /** The folder's own name (basename). */
  folder_name: string;
  /** Image file names in the folder, sorted. */
  images: string[];
  /** stats.json content, or `null` when the folder has none. */
  test_results: unknown | null;
  /** Outcome of the config's test-status rule. */
  test_status: string;
  /** ISO 8601 timestamp (stats.json mtime, else the newest image's), or `null`. */
  test_date: string | null;
  /** folder_hash, content_hash, total_images, files_processed, upload_timestamp and more. */
  metadata: Record<string, unknown>;
  /**
   * The key is only the folder's name (a quick upload with no base): the row may be written
   * only when it holds no other folder's data (`metadata.source_path` differs). Not stored.
   */
  strict?: boolean;
  /** Object-storage keys of the images (`--images-to`); absent: the column is left as it is. */
  image_objects?: string[];
}

/** The device the rows belong to. */
export interface DeviceInfo {
  /** UUID of this device. */
  id: string;
  /** Human name (may be empty). */
  name: string;
  /** Device type, e.g. `image_analyzer`. */
  type: string;
}

/** Options for {@linkcode buildUpsertStatement}. */
export interface UpsertOptions {
  /** Target table, optionally schema-qualified (`schema.table`); neither part may hold a dot. */
  table: string;
  /** This device. */
  device: DeviceInfo;
  /** Written to `upload_batch` of every inserted or changed row. */
  batchName: string;
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

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Quotes a string as an SQL literal that means the same to the server and to psql's lexer
 * whatever `standard_conforming_strings` says: `'...'` with `'` doubled, or, when the
 * string holds a backslash, `E'...'` with `\` and `'` doubled. The result starts with `E`
 * in that case, so splice it after a space or an operator, never right after a word.
 *
 * @throws UploadError `data` when the string holds a NUL character (PostgreSQL text cannot)
 *   or an unpaired UTF-16 surrogate (not valid UTF-8).
 *
 * @example
 * ```ts
 * sqlLiteral("it's");  // 'it''s'
 * sqlLiteral("a\\b");  // E'a\\\\b'  (that is: E'a\\b')
 * ```
 */
export function sqlLiteral(s: string): string {
  if (s.includes("\0")) {
    throw new UploadError("data", "Cannot quote text for PostgreSQL: it contains a NUL character");
  }
  if (!s.isWellFormed()) {
    throw new UploadError(
      "data",
      "Cannot quote text for PostgreSQL: it contains an unpaired UTF-16 surrogate",
    );
  }
  const quoted = s.replaceAll("'", "''");
  if (!s.includes("\\")) return `'${quoted}'`;
  return `E'${quoted.replaceAll("\\", "\\\\")}'`;
}

/**
 * Quotes one identifier (a table or column name): `"..."` with `"` doubled.
 *
 * @throws UploadError `config` for an empty name or one holding a NUL character.
 *
 * @example
 * ```ts
 * quoteIdent("device_test"); // "device_test"
 * quoteIdent('my "t"');      // "my ""t"""
 * ```
 */
export function quoteIdent(name: string): string {
  if (name === "" || name.includes("\0") || !name.isWellFormed()) {
    throw new UploadError("config", `Invalid SQL identifier: ${JSON.stringify(name)}`);
  }
  return `"${name.replaceAll('"', '""')}"`;
}

/** A table name split into optional schema and name, quoted for SQL text. */
export interface TableRef {
  /** The schema as given (unquoted), or `undefined` for a name resolved by `search_path`. */
  schema: string | undefined;
  /** The table's own name as given (unquoted). */
  name: string;
  /** Quoted, possibly schema-qualified name, for SQL text. */
  sql: string;
  /** `to_regclass(...)` argument: the quoted name as a literal. */
  regclass: string;
  /** The `devices` table in the same schema, quoted. */
  devicesSql: string;
  /** `to_regclass(...)` argument for the devices table. */
  devicesRegclass: string;
}

/**
 * Splits and quotes a table name: `table` or `schema.table`. The `devices` table lives in
 * the same schema.
 *
 * @throws UploadError `config` for more than one dot, an empty part, or an invalid identifier.
 *
 * @example
 * ```ts
 * tableRef("lab.device_test").sql; // "lab"."device_test"
 * tableRef("device_test").devicesSql; // "devices"
 * ```
 */
export function tableRef(table: string): TableRef {
  const parts = table.split(".");
  if (parts.length > 2 || parts.some((part) => part === "")) {
    throw new UploadError(
      "config",
      `Invalid table name ${JSON.stringify(table)}: expected "table" or "schema.table"`,
    );
  }
  const quoted = parts.map(quoteIdent);
  const prefix = quoted.length === 2 ? `${quoted[0]}.` : "";
  const sql = quoted.join(".");
  const devicesSql = `${prefix}${quoteIdent("devices")}`;
  return {
    schema: parts.length === 2 ? parts[0] : undefined,
    name: parts[parts.length - 1],
    sql,
    regclass: sqlLiteral(sql),
    devicesSql,
    devicesRegclass: sqlLiteral(devicesSql),
  };
}

/**
 * Checks that a device id is a UUID before it is spliced into SQL as a literal.
 *
 * @throws UploadError `config` when it is not.
 */
export function checkDevice(device: DeviceInfo): void {
  if (!UUID_PATTERN.test(device.id)) {
    throw new UploadError("config", `Device id is not a UUID: ${JSON.stringify(device.id)}`, {
      hint: "Set DEVICE_ID to a UUID, or leave it empty to have one made",
    });
  }
}

/**
 * Matches a JSON text that may hold a NUL (`\u0000`) or an unpaired surrogate escape
 * (`\ud800`-`\udfff`, which JSON.stringify writes only for lone surrogates): an escape
 * preceded by an even number of backslashes.
 */
const MAY_BE_UNSTORABLE = /(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})/;

/**
 * The JSON text of a row as it travels in an upsert: the fields in a fixed order, no stray
 * properties. Pass texts made by this function to {@linkcode buildUpsertStatement}.
 */
export function rowToJson(row: UploadRow): string {
  return JSON.stringify(payloadRow(row));
}

/** The fields of a row that travel, in a fixed order (no stray properties). */
function payloadRow(row: UploadRow): Record<string, unknown> {
  const payload: Record<string, unknown> = {
    folder_key: row.folder_key,
    folder_name: row.folder_name,
    images: row.images,
    test_results: row.test_results ?? null,
    test_status: row.test_status,
    test_date: row.test_date,
    metadata: row.metadata,
  };
  if (row.strict) payload.strict = true;
  if (row.image_objects !== undefined) payload.image_objects = row.image_objects;
  return payload;
}

/**
 * {@linkcode rowToJson} with `test_results` spliced in as the stats file's own JSON text,
 * which must be one valid JSON value (it was parsed): the file's digits, escapes and key
 * order travel as they are, and a large file is not serialized again.
 *
 * @example
 * ```ts
 * rowToJsonWithStats({ ...row, test_results: null }, '{"result": "PASS"}');
 * ```
 */
export function rowToJsonWithStats(row: UploadRow, statsText: string | null): string {
  const json = rowToJson({ ...row, test_results: null });
  if (statsText === null) return json;
  // Keys and values before test_results are JSON strings, where a `"` is always escaped:
  // the first `,"test_results":null,` is the field itself.
  const field = ',"test_results":null,';
  const at = json.indexOf(field);
  return `${json.slice(0, at)},"test_results":${statsText},${json.slice(at + field.length)}`;
}

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
function checkStorable(value: unknown, row: UploadRow, path: string): void {
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
          subject: row.folder_key,
        });
      }
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) {
        stack.push({ value: v[i], parent: node, step: `[${i}]` });
      }
    } else if (v !== null && typeof v === "object") {
      const entries = Object.entries(v);
      for (let i = entries.length - 1; i >= 0; i--) {
        const [key, item] = entries[i];
        stack.push({ value: item, parent: node, step: `.${key}` });
        stack.push({ value: key, parent: node, step: " key" });
      }
    }
  }
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
  const ref = checkBatch(rows, options, rowJson);
  const rowsText = rowJson !== undefined
    ? rowJson.join(",")
    : rows.map((r) => JSON.stringify(payloadRow(r))).join(",");
  const header = headerJson(options);
  const payloadText = `${header.slice(0, -1)},"rows":[${rowsText}]}`;
  const objects = rows.some((r) => r.image_objects !== undefined);
  const objectsType = objects ? ", image_objects text[]" : "";
  return `with payload as (\n` +
    `  select ${sqlLiteral(payloadText)}::jsonb as p\n` +
    `), input as (\n` +
    `  select r.* from payload, jsonb_to_recordset(payload.p->'rows') as r(\n` +
    `    folder_key text, folder_name text, images text[], test_results jsonb,\n` +
    `    test_status text, test_date timestamptz, metadata jsonb, strict boolean${objectsType})\n` +
    upsertTail(ref, rows);
}

/** The name of the staging table of {@linkcode buildUpsertScript} (in `pg_temp`). */
export const STAGING_TABLE = "upload_rows";

/** Its columns, all text (COPY cannot refuse a text field; the casts are the insert's). */
const STAGING_COLUMNS = [
  "metadata",
  "folder_key",
  "folder_name",
  "images",
  "test_results",
  "test_status",
  "test_date",
  "strict",
  "image_objects",
] as const;

/**
 * The upsert of {@linkcode buildUpsertStatement} as a psql script of one transaction: a
 * temp table dropped at commit, `COPY ... FROM STDIN` of the rows' fields into it (every
 * field text), the same insert reading it (same guard, conflicts and one-line JSON reply,
 * read it with {@linkcode parseUpsertReply}), and `commit`. The header (device, batch
 * name) travels in a JSON literal as in the statement.
 *
 * Send it with the session's `script` option (lib/sink/postgres/psql.ts): the script ends in the last
 * statement it ran, so the reply trailer judges the first failure (the create, the insert
 * or the commit) and a failed script's transaction is rolled back after the reply. Three
 * facts of psql this relies on:
 *
 * - a failed `COPY FROM STDIN` does not set psql's `:ERROR`, so nothing may fail there:
 *   the staging columns are text and the rows' text is valid UTF-8 without NUL;
 * - the copy runs only when the create succeeded (`\if :ERROR`); psql still lexes lines
 *   in a skipped branch, quotes included;
 * - so every data line starts with a backslash before its first character (`\{`, which
 *   COPY reads as `{`; metadata, a JSON object, is the first column): outside COPY, psql takes the line for an unknown meta-command and
 *   discards it whole, whatever quotes it holds, rather than running it as SQL.
 *
 * @throws UploadError as {@linkcode buildUpsertStatement}; `fatal` when a JSON text is not
 *   the one {@linkcode rowToJson} or {@linkcode rowToJsonWithStats} made for its row.
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
): string {
  const ref = checkBatch(rows, options, rowJson);
  const staging = `pg_temp.${STAGING_TABLE}`;
  const parts: string[] = [
    `begin;\n` +
    `create temp table ${STAGING_TABLE} (${
      STAGING_COLUMNS.map((c) => `${c} text`).join(", ")
    }) on commit drop;\n` +
    `\\if :ERROR\n\\else\n` +
    // psql reports a refused COPY only on stderr; verbose, it carries the SQLSTATE there.
    `\\set VERBOSITY verbose\n` +
    `copy ${staging} from stdin;\n`,
  ];
  for (let i = 0; i < rows.length; i++) parts.push(copyLine(rows[i], rowJson?.[i]));
  parts.push(
    `\\.\n` +
      `\\set VERBOSITY default\n` +
      `with payload as (\n` +
      `  select ${sqlLiteral(headerJson(options))}::jsonb as p\n` +
      `), input as (\n` +
      `  select u.folder_key, u.folder_name, u.images::text[] as images,\n` +
      `    u.test_results::jsonb as test_results, u.test_status,\n` +
      `    u.test_date::timestamptz as test_date, u.metadata::jsonb as metadata,\n` +
      `    u.strict::boolean as strict, u.image_objects::text[] as image_objects\n` +
      `  from ${staging} u\n` +
      upsertTail(ref, rows) + `\n` +
      `\\if :ERROR\n\\else\ncommit;\n\\endif\n` +
      `\\endif\n`,
  );
  return parts.join("");
}

/** Checks a batch for {@linkcode buildUpsertStatement} and its kin; returns the table. */
function checkBatch(
  rows: readonly UploadRow[],
  options: UpsertOptions,
  rowJson: readonly string[] | undefined,
): TableRef {
  checkDevice(options.device);
  const ref = tableRef(options.table);
  if (rows.length === 0) throw new UploadError("fatal", "Cannot build an upsert of no rows");
  if (rowJson !== undefined && rowJson.length !== rows.length) {
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
    if (rowJson === undefined) checkStorable(payloadRow(row), row, "row");
    else if (MAY_BE_UNSTORABLE.test(rowJson[i])) checkStorable(JSON.parse(rowJson[i]), row, "row");
  }
  return ref;
}

/** The batch's header: device and batch name, as a JSON object's text. */
function headerJson(options: UpsertOptions): string {
  return JSON.stringify({
    device_id: options.device.id,
    device_name: options.device.name,
    device_type: options.device.type,
    upload_batch: options.batchName,
  });
}

/**
 * SQL: the file name an entry of `images` stands for, as bytes. The tool writes bare file
 * names; the original authors' REST uploader wrote public storage URLs ending in the
 * percent-encoded name (a bare name where an image's upload failed). An entry holding a
 * `/` is a URL: its last segment, percent-decoded; other entries are names as they are.
 * Compared as bytes, so a `%` sequence that is not UTF-8 never fails the statement.
 */
function imageNameBytes(entry: string): string {
  // Split at each `%`: every piece after the first starts with the two hex digits of a byte
  // (else the `%` stood for itself).
  return `case when strpos(${entry}, '/') > 0 then (select string_agg(case when u.n = 1\n` +
    `      then convert_to(u.p, 'UTF8') when u.p ~ '^[0-9A-Fa-f]{2}'\n` +
    `      then decode(left(u.p, 2), 'hex') || convert_to(substr(u.p, 3), 'UTF8')\n` +
    `      else convert_to('%' || u.p, 'UTF8') end, ''::bytea order by u.n)\n` +
    `    from unnest(string_to_array(substring(${entry} from '[^/]*$'), '%')) with ordinality u(p, n))\n` +
    `  else convert_to(${entry}, 'UTF8') end`;
}

/**
 * SQL (in the upsert's DO UPDATE): a row this tool did not write (no content_hash) holds
 * the folder's content when its stats are the same JSON value (no stats: SQL or JSON null)
 * and its images name the same files (URLs ending in those names included): such a row is
 * adopted as it stands.
 */
const SAME_CONTENT =
  `coalesce(t.test_results, 'null'::jsonb) = coalesce(excluded.test_results, 'null'::jsonb)\n` +
  `    and (select array_agg(b order by b) from (select ${
    imageNameBytes("o")
  } as b from unnest(t.images) o) s)\n` +
  `      is not distinct from (select array_agg(convert_to(n, 'UTF8') order by convert_to(n, 'UTF8'))\n` +
  `        from unnest(excluded.images) n)`;

/**
 * SQL: the images of a rewritten row. Each of the folder's images keeps the entry the row
 * already has for it (a storage URL the original uploader wrote); new images are names.
 */
const MERGED_IMAGES =
  `case when not exists (select 1 from unnest(t.images) o where strpos(o, '/') > 0)\n` +
  `      then excluded.images\n` +
  `      else array(select coalesce((select o from unnest(t.images) o where strpos(o, '/') > 0\n` +
  `        and ${imageNameBytes("o")} = convert_to(e.n, 'UTF8') limit 1), e.n)\n` +
  `        from unnest(excluded.images) with ordinality e(n, k) order by e.k) end`;

/**
 * SQL: the test_status of a rewritten row. The tool owns the status it computed; one set
 * by a person is kept: on the tool's rows, a status other than the one it recorded as
 * computed (`metadata.computed_test_status`); on other rows (and the tool's older ones), a
 * status its rule never gives (`incomplete`, ...).
 */
const KEPT_STATUS = `case when t.test_status is null then excluded.test_status\n` +
  `      when t.metadata->>'computed_test_status' is null then case when t.test_status in\n` +
  `        ('pending', 'passed', 'failed') then excluded.test_status else t.test_status end\n` +
  `      when t.test_status is distinct from t.metadata->>'computed_test_status' then t.test_status\n` +
  `      else excluded.test_status end`;

/** SQL: the metadata of a rewritten row: the tool's keys replaced, every other key kept. */
const MERGED_METADATA = `case when jsonb_typeof(t.metadata) = 'object'\n` +
  `      then t.metadata || excluded.metadata else excluded.metadata end`;

/**
 * The rest of an upsert once `payload` (the header as `p`) and `input` (the rows, typed)
 * are open: the strict-row conflicts, the insert and its one-line JSON reply.
 */
function upsertTail(ref: TableRef, rows: readonly UploadRow[]): string {
  const t = ref.sql;
  // Strict rows (keyed by a folder's name alone) may not overwrite a row another folder
  // wrote: such keys are left out and reported. Without strict rows the check is left out.
  const strict = rows.some((r) => r.strict);
  const conflicts = strict
    ? `), conflicts as (\n` +
      `  select i.folder_key, t.metadata->>'source_path' as held_by\n` +
      `  from payload, input i join ${t} t on t.folder_key = i.folder_key\n` +
      `  where i.strict and t.device_id = (payload.p->>'device_id')::uuid\n` +
      `    and t.metadata->>'source_path' is distinct from i.metadata->>'source_path'\n` +
      `    and t.metadata->>'source_path' is not null\n`
    : "";
  const keep = strict
    ? `  where not exists (select 1 from conflicts c where c.folder_key = i.folder_key)\n`
    : "";
  const report = strict
    ? `(select coalesce(json_agg(json_build_array(c.folder_key, c.held_by)), '[]') from conflicts c)`
    : `'[]'::json`;
  // Rows carrying object keys write image_objects; without them the column is left alone.
  const objects = rows.some((r) => r.image_objects !== undefined);
  const objectsColumn = objects ? ", image_objects" : "";
  const objectsValue = objects ? ", i.image_objects" : "";
  const objectsSet = objects ? ", image_objects = excluded.image_objects" : "";
  return conflicts +
    `), written as (\n` +
    `  insert into ${t} as t (device_id, device_name, device_type, folder_key, folder_name,\n` +
    `    images, test_results, test_status, test_date, upload_batch, metadata, data_type` +
    `${objectsColumn})\n` +
    `  select (payload.p->>'device_id')::uuid, payload.p->>'device_name',\n` +
    `    payload.p->>'device_type', i.folder_key, i.folder_name, coalesce(i.images, '{}'),\n` +
    `    i.test_results, i.test_status, i.test_date, payload.p->>'upload_batch', i.metadata,\n` +
    `    'image_analysis'${objectsValue}\n` +
    `  from payload, input i\n` +
    keep +
    `  on conflict (device_id, folder_key) do update set\n` +
    `    device_name = excluded.device_name, device_type = excluded.device_type,\n` +
    `    folder_name = excluded.folder_name, images = ${MERGED_IMAGES},\n` +
    `    test_results = excluded.test_results, test_status = ${KEPT_STATUS},\n` +
    `    test_date = excluded.test_date, upload_batch = excluded.upload_batch,\n` +
    `    metadata = ${MERGED_METADATA},\n` +
    `    data_type = coalesce(t.data_type, excluded.data_type), updated_at = now()` +
    `${objectsSet}\n` +
    `  where t.metadata->>'content_hash' is distinct from excluded.metadata->>'content_hash'\n` +
    `    and (t.metadata->>'content_hash' is not null or not (${SAME_CONTENT}))\n` +
    `  returning (t.xmax = 0) as inserted\n` +
    `)\n` +
    `select json_build_object('inserted', count(*) filter (where inserted),\n` +
    `  'updated', count(*) filter (where not inserted), 'conflicts', ${report})::text\n` +
    `from written;`;
}

/**
 * One row as a line of COPY text for the staging table, with the backslash before its
 * first character that {@linkcode buildUpsertScript} relies on. test_results is the stats
 * text as it travels in the row's JSON (its own digits and key order), not serialized again.
 */
function copyLine(row: UploadRow, json: string | undefined): string {
  const metadata = JSON.stringify(row.metadata);
  let stats: string | null;
  if (json === undefined) {
    stats = row.test_results === null || row.test_results === undefined
      ? null
      : JSON.stringify(row.test_results);
  } else {
    // The JSON text is prefix + stats + suffix, both made from the row's other fields.
    const prefix = `{"folder_key":${JSON.stringify(row.folder_key)},"folder_name":${
      JSON.stringify(row.folder_name)
    },"images":${JSON.stringify(row.images)},"test_results":`;
    const suffix = `,"test_status":${JSON.stringify(row.test_status)},"test_date":${
      JSON.stringify(row.test_date)
    },"metadata":${metadata}${row.strict ? ',"strict":true' : ""}${
      row.image_objects !== undefined ? `,"image_objects":${JSON.stringify(row.image_objects)}` : ""
    }}`;
    if (
      json.length < prefix.length + suffix.length || !json.startsWith(prefix) ||
      !json.endsWith(suffix)
    ) {
      throw new UploadError("fatal", "A row's JSON text does not match the row", {
        subject: row.folder_key,
      });
    }
    const text = json.slice(prefix.length, json.length - suffix.length);
    stats = text === "null" ? null : text;
  }
  // metadata first: a JSON object's text, so every line starts with `\{`.
  return `\\${copyField(metadata)}\t${copyField(row.folder_key)}\t${copyField(row.folder_name)}\t${
    copyField(textArrayLiteral(row.images))
  }\t${copyField(stats)}\t${copyField(row.test_status)}\t${copyField(row.test_date)}\t${
    row.strict ? "t" : "\\N"
  }\t${row.image_objects === undefined ? "\\N" : copyField(textArrayLiteral(row.image_objects))}\n`;
}

/**
 * Escapes a value as one field of COPY's text format: `\N` for null; backslash, newline,
 * carriage return and tab as backslash escapes. Text only (no NUL: PostgreSQL refuses it).
 *
 * @example
 * ```ts
 * copyField("a\tb\\c"); // "a\\tb\\\\c"
 * copyField(null); // "\\N"
 * ```
 */
export function copyField(value: string | null): string {
  if (value === null) return "\\N";
  return /[\\\n\r\t]/.test(value) ? value.replace(/[\\\n\r\t]/g, escapeCopyChar) : value;
}

function escapeCopyChar(c: string): string {
  return c === "\\" ? "\\\\" : c === "\n" ? "\\n" : c === "\r" ? "\\r" : "\\t";
}

/**
 * A PostgreSQL array literal of text elements, each double-quoted with `"` and `\`
 * escaped: what `'...'::text[]` reads back as the same strings.
 *
 * @example
 * ```ts
 * textArrayLiteral(['a "b"', "c"]); // '{"a \\"b\\"","c"}'
 * ```
 */
export function textArrayLiteral(items: readonly string[]): string {
  let out = "{";
  for (let i = 0; i < items.length; i++) {
    if (i > 0) out += ",";
    const item = items[i];
    out += `"${/["\\]/.test(item) ? item.replace(/["\\]/g, "\\$&") : item}"`;
  }
  return `${out}}`;
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

/** UTF-8 length of a string, counting what E'...' quoting doubles (`\` and `'`). */
function quotedUtf8Length(s: string): number {
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x27 || c === 0x5c) bytes += 2;
    else if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 4; // a surrogate pair: one 4-byte character
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * Bytes a row adds to an upsert statement (its JSON, quoted, plus a separator), so
 * callers can bound a batch by bytes: a statement is at most
 * {@linkcode UPSERT_OVERHEAD_BYTES} plus the sum over its rows (device name and batch
 * name longer than a few hundred bytes aside).
 *
 * @example
 * ```ts
 * estimateRowBytes(row); // e.g. 412
 * ```
 */
export function estimateRowBytes(row: UploadRow): number {
  return rowStatementBytes(JSON.stringify(payloadRow(row)));
}

/**
 * Bytes a row's JSON text (as {@linkcode rowToJson} makes it) adds to an upsert statement:
 * its UTF-8 length with the quoting's doubled characters, plus a separator. Exact for
 * text with a backslash, an upper bound otherwise.
 *
 * @example
 * ```ts
 * rowStatementBytes('{"folder_key":"é"}'); // 20
 * ```
 */
export function rowStatementBytes(json: string): number {
  return quotedUtf8Length(json) + 1;
}

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
  /** Target table, as for {@linkcode UpsertOptions.table}. */
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
