/**
 * The upload table's columns (`device_test`), declared once. Everything that depends on the
 * table's shape is made from {@linkcode UPLOAD_COLUMNS}: the {@linkcode UploadRow} type, the
 * JSON a row travels as and its field order ({@linkcode rowToJson}), the batch header, and in
 * the PostgreSQL sink the `jsonb_to_recordset` type list, the COPY staging table and its
 * casts, the insert and `ON CONFLICT` lists, the CREATE TABLE and upgrade DDL, the NOT NULL
 * columns, the defaults and the schema checks. A new column is one entry of
 * {@linkcode UPLOAD_COLUMN_LIST}.
 *
 * Each column says:
 *
 * - its SQL type, NOT NULL, default, primary key and reference, as the table is created;
 * - who owns it ({@linkcode ColumnOwner}): this tool writes it, this tool keeps what another
 *   tool wrote, or the server fills it;
 * - how its value travels ({@linkcode ColumnTravel}): in each row's payload, in the batch
 *   header (one value for the batch), as a constant of the tool, or not at all;
 * - for a rewrite of an existing row (`ON CONFLICT ... DO UPDATE`), the value it gets: by
 *   default the new one (`excluded.<name>`) for the tool's columns, the old one where there
 *   is one for kept columns; the merge rules (images keeping their storage URLs, metadata
 *   keeping other keys, a test_status set by hand) are SQL expressions of their own.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";

/**
 * Who decides a column's value:
 * - `tool`: this tool writes it, and rewrites it with the row;
 * - `kept`: this tool fills it in new rows and keeps what another tool wrote there;
 * - `server`: the server fills it (a default); the tool never sends it.
 */
export type ColumnOwner = "tool" | "kept" | "server";

/**
 * How a column's value reaches the server:
 * - `row`: in each row's payload (its JSON text);
 * - `header`: in the batch header, one value for every row of the batch;
 * - `constant`: a constant of the tool ({@linkcode ColumnSpec.constant});
 * - `none`: not sent (the server fills it).
 */
export type ColumnTravel = "row" | "header" | "constant" | "none";

/** What a `row` column holds in an {@linkcode UploadRow}. */
export type RowValue = "string" | "string | null" | "string[]" | "json" | "object";

/** Where a `header` column's value comes from ({@linkcode HeaderValues}). */
export type HeaderSource = keyof HeaderValues;

/** One column of the upload table. */
export interface ColumnSpec {
  /** The column's name: a plain lower-case identifier. */
  readonly name: string;
  /** What it holds, for the reader. */
  readonly doc: string;
  /** SQL type as created, e.g. `uuid`, `text[]`. */
  readonly type: string;
  /** NOT NULL (an upgraded table gets it once the upgrade's data pass filled the column). */
  readonly notNull?: boolean;
  /** Default as SQL, e.g. `now()`. */
  readonly default?: string;
  /** The primary key. */
  readonly primaryKey?: boolean;
  /** References the `devices` table beside the upload table (its `id`). */
  readonly references?: "devices";
  /** Who decides its value. */
  readonly owner: ColumnOwner;
  /** How its value reaches the server. */
  readonly travel: ColumnTravel;
  /** A `row` column's value in an {@linkcode UploadRow}. */
  readonly value?: RowValue;
  /** A `row` column that travels only when a row carries it; absent leaves the column as it is. */
  readonly optional?: boolean;
  /**
   * A `row` column (JSON) whose value may travel as the text it was read from (the stats
   * file's own digits and key order), see {@linkcode rowToJsonWithStats}. At most one.
   */
  readonly raw?: boolean;
  /** A `header` column's value. */
  readonly header?: HeaderSource;
  /** A `constant` column's value, as SQL. */
  readonly constant?: string;
  /** What an insert writes, as SQL over the typed row `i`, when not the value as it travels. */
  readonly insert?: string;
  /**
   * What a rewrite sets, as SQL over the row there (`t`) and the new one (`excluded`);
   * null: never rewritten. Default by owner: `excluded.<name>` (tool), `coalesce(t.<name>,
   * excluded.<name>)` (kept), never (server); key columns are never rewritten.
   */
  readonly update?: string | null;
}

/**
 * A flag a row may carry in its payload, never stored: boolean, sent only when true. The
 * upsert gives it its meaning (see `strict` in lib/sink/postgres/upsert.ts).
 */
export interface RowFlag {
  /** The flag's name in the payload. */
  readonly name: string;
  /** What it means. */
  readonly doc: string;
}

/** The values of the batch header. */
export interface HeaderValues {
  /** This device's id. */
  deviceId: string;
  /** Its name. */
  deviceName: string;
  /** Its type. */
  deviceType: string;
  /** The batch's name. */
  batchName: string;
}

/** One field of a row's payload, in {@linkcode TableColumns.payload} order. */
export interface PayloadField {
  /** The field's name (its column's, or the flag's). */
  readonly name: string;
  /** SQL type of the field as the payload is unpacked (`boolean` for a flag). */
  readonly type: string;
  /**
   * `always`: every row carries it (null when empty); `flag`: a {@linkcode RowFlag}, sent
   * only when true; `optional`: sent only when the row carries it.
   */
  readonly presence: "always" | "flag" | "optional";
  /** Its column, or undefined for a flag. */
  readonly column?: ColumnSpec;
}

/** A table declaration with what every generated list reads from it. */
export interface TableColumns {
  /** Every column, in declaration order (the order of CREATE TABLE). */
  readonly columns: readonly ColumnSpec[];
  /** The flags a row's payload may carry. */
  readonly flags: readonly RowFlag[];
  /** The upsert's conflict key (unique in the table). */
  readonly key: readonly string[];
  /**
   * A row's payload fields in their fixed order: the `row` columns every row carries (in
   * declaration order), then the flags, then the optional `row` columns.
   */
  readonly payload: readonly PayloadField[];
  /** The `raw` field's name, if a column is raw. */
  readonly raw: string | undefined;
  /**
   * The payload field whose text always starts with `{` (the first `object` column): the
   * COPY staging table's first column (see lib/sink/postgres/upsert.ts).
   */
  readonly lead: string;
  /** The `header` columns in declaration order. */
  readonly header: readonly ColumnSpec[];
}

/**
 * Checks a declaration and derives its lists.
 *
 * @throws UploadError `fatal` for a declaration that cannot work: a duplicate name, a `row`
 *   column without a value, a `header` column without a source, a `constant` column without
 *   a value, a server column that travels, more than one raw column, a key column that is
 *   not declared, or no `object` column to lead the COPY lines.
 */
export function defineColumns(
  columns: readonly ColumnSpec[],
  flags: readonly RowFlag[],
  key: readonly string[],
): TableColumns {
  const names = new Set<string>();
  // Names go into SQL text bare (`i.folder_key`): plain lower-case identifiers only.
  for (const c of [...columns, ...flags]) {
    if (!/^[a-z_][a-z0-9_]*$/.test(c.name)) throw declarationError(`${c.name} is not a plain name`);
    if (names.has(c.name)) throw declarationError(`${c.name} is declared twice`);
    names.add(c.name);
  }
  for (const c of columns) checkColumn(c);
  for (const k of key) {
    if (!columns.some((c) => c.name === k)) throw declarationError(`key column ${k} is missing`);
  }
  const rows = columns.filter((c) => c.travel === "row");
  const raws = rows.filter((c) => c.raw);
  if (raws.length > 1) throw declarationError("more than one raw column");
  const payload: PayloadField[] = [
    ...rows.filter((c) => !c.optional).map((column) => field(column, "always")),
    ...flags.map((f): PayloadField => ({ name: f.name, type: "boolean", presence: "flag" })),
    ...rows.filter((c) => c.optional).map((column) => field(column, "optional")),
  ];
  const lead = payload.find((f) => f.presence === "always" && f.column?.value === "object");
  if (lead === undefined) throw declarationError("no object column to lead COPY lines");
  return Object.freeze({
    columns: Object.freeze([...columns]),
    flags: Object.freeze([...flags]),
    key: Object.freeze([...key]),
    payload: Object.freeze(payload),
    raw: raws[0]?.name,
    lead: lead.name,
    header: Object.freeze(columns.filter((c) => c.travel === "header")),
  });
}

function field(column: ColumnSpec, presence: PayloadField["presence"]): PayloadField {
  return { name: column.name, type: column.type, presence, column };
}

function checkColumn(c: ColumnSpec): void {
  if (c.travel === "row" && c.value === undefined) throw declarationError(`${c.name} has no value`);
  if (c.travel === "header" && c.header === undefined) {
    throw declarationError(`${c.name} has no header source`);
  }
  if (c.travel === "constant" && c.constant === undefined) {
    throw declarationError(`${c.name} has no constant`);
  }
  if (c.owner === "server" && c.travel !== "none") {
    throw declarationError(`${c.name} is filled by the server and cannot travel`);
  }
  if (c.raw && (c.travel !== "row" || c.value !== "json")) {
    throw declarationError(`${c.name} is raw but not a JSON row column`);
  }
}

function declarationError(why: string): UploadError {
  return new UploadError("fatal", `Invalid column declaration: ${why}`);
}

/**
 * SQL: the file name an entry of `images` stands for, as bytes. The tool writes bare file
 * names; the original authors' REST uploader wrote public storage URLs ending in the
 * percent-encoded name (a bare name where an image's upload failed). An entry holding a
 * `/` is a URL: its last segment, percent-decoded; other entries are names as they are.
 * Compared as bytes, so a `%` sequence that is not UTF-8 never fails the statement.
 */
export function imageNameBytes(entry: string): string {
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
 * SQL: the images of a rewritten row. Each of the folder's images sent by name keeps the
 * entry the row already has for it (a storage URL the original uploader wrote); new images
 * are names. An image sent as its own URL (`--images-as urls`) is that URL.
 */
const MERGED_IMAGES =
  `case when not exists (select 1 from unnest(t.images) o where strpos(o, '/') > 0)\n` +
  `      then excluded.images\n` +
  `      else array(select coalesce(case when strpos(e.n, '/') = 0 then (select o\n` +
  `        from unnest(t.images) o where strpos(o, '/') > 0\n` +
  `        and ${imageNameBytes("o")} = convert_to(e.n, 'UTF8') limit 1) end, e.n)\n` +
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
 * The columns of `device_test`, in CREATE TABLE order. Compatible with the original
 * scripts' table, plus `folder_key` (the identity with `device_id`), `image_objects` and
 * `pdf_url` (the authors' later table has it too).
 */
export const UPLOAD_COLUMN_LIST = [
  {
    name: "id",
    doc: "The row's id",
    type: "uuid",
    primaryKey: true,
    notNull: true,
    default: "gen_random_uuid()",
    owner: "server",
    travel: "none",
  },
  {
    name: "created_at",
    doc: "When the row was made",
    type: "timestamptz",
    notNull: true,
    default: "now()",
    owner: "server",
    travel: "none",
  },
  {
    name: "updated_at",
    doc: "When the row's content last changed: a rewrite moves it, an unchanged re-send does not",
    type: "timestamptz",
    notNull: true,
    default: "now()",
    owner: "server",
    travel: "none",
    update: "now()",
  },
  {
    name: "device_id",
    doc: "The device the row belongs to",
    type: "uuid",
    notNull: true,
    references: "devices",
    owner: "tool",
    travel: "header",
    header: "deviceId",
  },
  {
    name: "device_name",
    doc: "The device's name",
    type: "text",
    owner: "tool",
    travel: "header",
    header: "deviceName",
  },
  {
    name: "device_type",
    doc: "The device's type, e.g. `image_analyzer`",
    type: "text",
    owner: "tool",
    travel: "header",
    header: "deviceType",
  },
  {
    name: "folder_key",
    doc: "Folder path relative to the base path, `/`-separated: the identity with the device",
    type: "text",
    notNull: true,
    owner: "tool",
    travel: "row",
    value: "string",
  },
  {
    name: "folder_name",
    doc: "The folder's own name (basename)",
    type: "text",
    notNull: true,
    owner: "tool",
    travel: "row",
    value: "string",
  },
  {
    name: "images",
    doc:
      "Image file names in the folder, sorted (a rewrite keeps storage URLs of images still there)",
    type: "text[]",
    notNull: true,
    default: "'{}'",
    owner: "tool",
    travel: "row",
    value: "string[]",
    insert: "coalesce(i.images, '{}')",
    update: MERGED_IMAGES,
  },
  {
    name: "image_objects",
    doc: "Object-storage keys of the images (`--objects-to`); absent: the column is left as it is",
    type: "text[]",
    owner: "tool",
    travel: "row",
    value: "string[]",
    optional: true,
  },
  {
    name: "pdf_url",
    doc: "URL of the folder's first report stored with `--objects-to` (`--url-form`), null " +
      "without a report; absent: the column is left as it is",
    type: "text",
    owner: "tool",
    travel: "row",
    value: "string | null",
    optional: true,
  },
  {
    name: "test_results",
    doc: "stats.json content, or null when the folder has none",
    type: "jsonb",
    owner: "tool",
    travel: "row",
    value: "json",
    raw: true,
  },
  {
    name: "test_status",
    doc: "Outcome of the config's test-status rule (a rewrite keeps one set by hand)",
    type: "text",
    owner: "tool",
    travel: "row",
    value: "string",
    update: KEPT_STATUS,
  },
  {
    name: "test_date",
    doc: "ISO 8601 timestamp: the newest device time stamp in the images' (else the " +
      "reports') names, else stats.json's mtime, else the newest image's; or null",
    type: "timestamptz",
    owner: "tool",
    travel: "row",
    value: "string | null",
  },
  {
    name: "upload_batch",
    doc: "The batch that last wrote the row",
    type: "text",
    owner: "tool",
    travel: "header",
    header: "batchName",
  },
  {
    name: "metadata",
    doc: "folder_hash, content_hash, total_images, files_processed, upload_timestamp and more " +
      "(a rewrite keeps other tools' keys)",
    type: "jsonb",
    owner: "tool",
    travel: "row",
    value: "object",
    update: MERGED_METADATA,
  },
  {
    name: "data_type",
    doc: "`image_analysis` (another tool's value is kept)",
    type: "text",
    default: "'image_analysis'",
    owner: "kept",
    travel: "constant",
    constant: "'image_analysis'",
  },
] as const satisfies readonly ColumnSpec[];

/** The flags a row's payload may carry. */
export const UPLOAD_ROW_FLAGS = [
  {
    name: "strict",
    doc: "The key is only the folder's name (a quick upload with no base): the row may be " +
      "written only when it holds no other folder's data (`metadata.source_path` differs)",
  },
] as const satisfies readonly RowFlag[];

/** `device_test` as every generated list reads it. */
export const UPLOAD_COLUMNS: TableColumns = defineColumns(
  UPLOAD_COLUMN_LIST,
  UPLOAD_ROW_FLAGS,
  ["device_id", "folder_key"],
);

/** The TypeScript type of a {@linkcode RowValue}. */
export type ValueOf<V> = V extends "string" ? string
  : V extends "string | null" ? string | null
  : V extends "string[]" ? string[]
  : V extends "object" ? Record<string, unknown>
  : unknown;

/** The `row` columns of a declaration. */
export type RowColumnOf<C extends readonly ColumnSpec[]> = Extract<C[number], { travel: "row" }>;

/** An intersection of object types as one object type. */
export type Flatten<T> = { [K in keyof T]: T[K] };

/**
 * The row type of a declaration: each `row` column as a field ({@linkcode ColumnSpec.value};
 * optional columns optional), each flag an optional boolean.
 */
export type RowOf<C extends readonly ColumnSpec[], F extends readonly RowFlag[]> = Flatten<
  & {
    -readonly [K in RowColumnOf<C> as K extends { optional: true } ? never : K["name"]]: ValueOf<
      K["value"]
    >;
  }
  & {
    -readonly [K in RowColumnOf<C> as K extends { optional: true } ? K["name"] : never]?: ValueOf<
      K["value"]
    >;
  }
  & { -readonly [K in F[number] as K["name"]]?: boolean }
>;

/**
 * One folder's row in `device_test`, as built from a folder snapshot: the `row` columns of
 * {@linkcode UPLOAD_COLUMN_LIST} (their `doc` says what each holds) and the flags of
 * {@linkcode UPLOAD_ROW_FLAGS}.
 */
export type UploadRow = RowOf<typeof UPLOAD_COLUMN_LIST, typeof UPLOAD_ROW_FLAGS>;

/** The device the rows belong to. */
export interface DeviceInfo {
  /** UUID of this device. */
  id: string;
  /** Human name (may be empty). */
  name: string;
  /** Device type, e.g. `image_analyzer`. */
  type: string;
}
