/**
 * The remote schema: `devices` and the upload table (`device_test`), created, upgraded
 * from the original scripts' shape, inspected, and explained when a role may not change it.
 *
 * Before the first batch {@linkcode ensureSchema} runs ONE read-only statement that
 * inspects the catalog ({@linkcode buildInspectStatement}, one line of JSON). When the
 * schema is complete that is all, plus the device row's upsert when the row is absent or
 * stale: a role that does not own the tables needs no CREATE or ALTER. When a piece is
 * missing, ONE `DO` block ({@linkcode buildSchemaStatements}) creates or upgrades
 * everything; a `DO` block is one statement and so one transaction, which makes the
 * upgrade of an existing table all or nothing, also through a transaction pooler. No
 * statement depends on session state (no `SET`, no temp tables, no transaction left open).
 *
 * {@linkcode printSchemaSql} is the same DDL plus the grants of a least-privilege role, as a
 * script an owner runs once.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import { buildHealthDdl, healthRef } from "../../fleet/health.ts";
import { describeDeviceRefusal, isolationSection } from "../../fleet/isolation.ts";
import { classifySqlstate } from "../../core/policy.ts";
import type { StatementError, StatementReply } from "./psql.ts";
import { checkDevice, quoteIdent, sqlLiteral, type TableRef, tableRef } from "./quote.ts";
import type { DeviceInfo } from "../columns.ts";

/** Where the hints of this module send the user for the owner's SQL. */
export const PRINT_SCHEMA_COMMAND = "deno task upload --print-schema";

/** How often a caller should retry a schema step the server cancelled (57014) in all. */
export const SCHEMA_TIMEOUT_ATTEMPTS = 3;

/** Options for {@linkcode buildSchemaStatements}. */
export interface SchemaOptions {
  /** Target table, optionally schema-qualified (`schema.table`); neither part may hold a dot. */
  table: string;
  /**
   * This device: its row is upserted in `devices`, and it adopts the rows whose device_id
   * is null. Without one, such rows go to {@linkcode UNKNOWN_DEVICE}.
   */
  device?: DeviceInfo;
}

/** Options for {@linkcode ensureSchema}. */
export interface EnsureSchemaOptions {
  /** Target table, as for {@linkcode SchemaOptions.table}. */
  table: string;
  /**
   * This device. Its name and type are the configured ones, or (see `fromServer`) only what
   * to use when the server holds none.
   */
  device: DeviceInfo;
  /** The target as shown to the user (host, port, database). */
  targetDisplay: string;
  /**
   * Name and type not configured: what the server holds for this device wins (its
   * `devices` row, else its latest row of the upload table), and the devices row is never
   * rewritten for them. Default: both configured.
   */
  fromServer?: { name?: boolean; type?: boolean };
  /**
   * Settles the device id before anything is written (a new tracker, see lib/target/identity.ts):
   * called once after the first inspection with it and a way to run a query; returns the
   * id to use.
   */
  identify?: (
    inspection: SchemaInspection,
    query: (sql: string) => Promise<string[]>,
  ) => Promise<string>;
}

/** The commands an `INSERT ... ON CONFLICT DO UPDATE` needs row-level security policies for. */
export type PolicyCommand = "INSERT" | "SELECT" | "UPDATE";

/** Row-level security of one table as it applies to the connecting role. */
export interface TablePolicies {
  /** The table, as the catalog names it (`device_test`, `lab.devices`). */
  table: string;
  /** Row-level security is enabled on the table. */
  rlsEnabled: boolean;
  /** It applies to this role (not the owner unless forced, not a superuser or BYPASSRLS role). */
  rlsApplies: boolean;
  /** Commands with no permissive policy for this role (empty when RLS does not apply). */
  missing: PolicyCommand[];
}

/** What {@linkcode ensureSchema} did. */
export interface SchemaResult {
  /** The upload table did not exist and was created. */
  created: boolean;
  /** An existing table was changed (columns, keys, constraints, rows re-keyed). */
  upgraded: boolean;
  /** Duplicate rows of one folder kept under `<key> (duplicate <id>)` by this upgrade. */
  rekeyed: number;
  /** What the inspection found missing before the schema step (empty when complete). */
  missingBefore: string[];
  /** The connecting role (`current_user`). */
  role: string;
  /** Row-level security of the upload table and `devices`, for {@linkcode describePermissionError}. */
  policies: TablePolicies[];
  /** The device as the run uses it: the settled id, the name and type from the server or config. */
  device: DeviceInfo;
  /** What the run should warn about (a piece the role may not add but uploads do without). */
  notes: string[];
}

/** A column as the inspection reports it. */
export interface ColumnState {
  /** `format_type` of the column, e.g. `uuid`, `text[]`. */
  type: string;
  notNull: boolean;
  hasDefault: boolean;
  /** An identity or generated column: it gets a value without a default. */
  identity: boolean;
}

/** A unique index, with the constraint it backs if any. */
export interface UniqueState {
  /** The index's name. */
  index: string;
  /** The unique or primary key constraint's name, or null for a bare unique index. */
  constraint: string | null;
  primary: boolean;
  /** Valid, not partial, no expressions: usable by `ON CONFLICT (columns)`. */
  usable: boolean;
  /** Key columns in order (expression columns left out). */
  columns: string[];
}

/** A foreign key of the table. */
export interface ForeignKeyState {
  name: string;
  columns: string[];
  /** The referenced table as the catalog names it. */
  references: string;
  /** It references the `devices` table beside the upload table. */
  referencesDevices: boolean;
}

/** A row-level security policy. */
export interface PolicyState {
  name: string;
  command: "ALL" | "SELECT" | "INSERT" | "UPDATE" | "DELETE";
  permissive: boolean;
  /** It applies to the connecting role (PUBLIC or a role it is a member of). */
  applies: boolean;
}

/** One table as the inspection reports it. */
export interface RelationState {
  /** The table as the catalog names it. */
  name: string;
  /** The connecting role owns it (directly or through a role it has). */
  owner: boolean;
  rls: boolean;
  forceRls: boolean;
  columns: Record<string, ColumnState>;
  unique: UniqueState[];
  foreignKeys: ForeignKeyState[];
  /** `has_table_privilege(current_user, ...)`. */
  privileges: { select: boolean; insert: boolean; update: boolean };
  policies: PolicyState[];
  /** The trigger deriving folder_key for inserts without one (the original tools') is there. */
  folderKeyTrigger: boolean;
}

/** What {@linkcode buildInspectStatement}'s one line of JSON says, parsed. */
export interface SchemaInspection {
  role: string;
  /** Superuser or BYPASSRLS: row-level security never applies. */
  bypassRls: boolean;
  /** `current_setting('statement_timeout')`, e.g. `0` or `30ms`. */
  statementTimeout: string;
  /** The schema the tables are (or would be created) in; null when none is usable. */
  schema: string | null;
  schemaExists: boolean;
  schemaUsage: boolean;
  schemaCreate: boolean;
  genRandomUuid: boolean;
  /** The upload table, or null when it does not exist (or is not visible). */
  table: RelationState | null;
  devices: RelationState | null;
  /**
   * This device's row in `devices` as JSON (`to_jsonb` of the row), null when absent, and
   * undefined when it could not be read (no table, no `id` column, or no SELECT privilege).
   */
  deviceRow: Record<string, unknown> | null | undefined;
}

/** The nil UUID: owner of the rows that had no device_id when no device adopts them. */
export const UNKNOWN_DEVICE: DeviceInfo = {
  id: "00000000-0000-0000-0000-000000000000",
  name: "unknown (rows written without a device id)",
  type: "unknown",
};

/** Columns of the upload table as an existing table gets them added: nullable, defaults where given. */
const TABLE_COLUMNS = [
  ["id", "uuid default gen_random_uuid()"],
  ["created_at", "timestamptz default now()"],
  ["updated_at", "timestamptz default now()"],
  ["device_id", "uuid"],
  ["device_name", "text"],
  ["device_type", "text"],
  ["folder_key", "text"],
  ["folder_name", "text"],
  ["images", "text[] default '{}'"],
  ["image_objects", "text[]"],
  ["test_results", "jsonb"],
  ["test_status", "text"],
  ["test_date", "timestamptz"],
  ["upload_batch", "text"],
  ["metadata", "jsonb"],
  ["data_type", "text default 'image_analysis'"],
] as const;

/** Columns the data pass fills, so they can be NOT NULL afterwards. */
const NOT_NULL_COLUMNS = [
  "id",
  "created_at",
  "updated_at",
  "device_id",
  "folder_key",
  "folder_name",
  "images",
] as const;

/** Defaults the upgrade sets when a column has none. */
const COLUMN_DEFAULTS = [
  ["id", "gen_random_uuid()"],
  ["created_at", "now()"],
  ["updated_at", "now()"],
  ["images", "'{}'"],
  ["data_type", "'image_analysis'"],
] as const;

/** Columns of `devices` the upgrade adds when missing (the uploader writes only those present). */
const DEVICE_COLUMNS = [
  ["name", "text"],
  ["type", "text"],
  ["created_at", "timestamptz default now()"],
  ["updated_at", "timestamptz default now()"],
] as const;

/** Arbitrary constant: the transaction-scoped advisory lock that serializes schema changes. */
const SCHEMA_LOCK_KEY = "7305245915382616901";

/** Wraps a PL/pgSQL body in a dollar quote whose tag does not occur in the body. */
function doBlock(declare: string, body: string): string {
  let tag = "$uploader$";
  for (let n = 1; body.includes(tag) || declare.includes(tag); n++) tag = `$uploader${n}$`;
  return `do ${tag}\ndeclare\n${declare}\nbegin\n${body}\nend\n${tag};`;
}

/** PL/pgSQL: the attnum of column `name` of `rel` into variable `into`. */
function attnumInto(into: string, rel: string, name: string): string {
  return `  select a.attnum into ${into} from pg_catalog.pg_attribute a where a.attrelid = ${rel}` +
    ` and a.attname = ${sqlLiteral(name)} and a.attnum > 0 and not a.attisdropped;`;
}

/** PL/pgSQL condition: `t` has a usable unique index on exactly {device_id, folder_key}. */
const KEY_USABLE = `exists (select 1 from pg_catalog.pg_index i where i.indrelid = t` +
  ` and i.indisunique and i.indisvalid and i.indpred is null and i.indexprs is null` +
  ` and i.indnkeyatts = 2 and ((i.indkey[0] = att_device and i.indkey[1] = att_key)` +
  ` or (i.indkey[0] = att_key and i.indkey[1] = att_device)))`;

/** PL/pgSQL condition: `t` has a foreign key (device_id) to `d`. */
const FK_PRESENT = `exists (select 1 from pg_catalog.pg_constraint c where c.conrelid = t` +
  ` and c.contype = 'f' and c.confrelid = d and c.conkey = array[att_device])`;

/** SQL `values` list of text tuples, one per line. */
function valuesList(rows: ReadonlyArray<readonly string[]>, indent: string): string {
  return rows.map((row) => `(${row.map(sqlLiteral).join(", ")})`).join(`,\n${indent}`);
}

/** PL/pgSQL: adds each missing column of `columns` to the table held by variable `rel`. */
function addMissingColumns(rel: string, columns: ReadonlyArray<readonly [string, string]>): string {
  return `  for r in select v.name, v.type from (values\n` +
    `      ${valuesList(columns, "      ")}\n` +
    `    ) v(name, type) where not exists (select 1 from pg_catalog.pg_attribute a\n` +
    `      where a.attrelid = ${rel} and a.attname = v.name and a.attnum > 0 and not a.attisdropped)\n` +
    `  loop\n` +
    `    execute format('alter table %s add column %I %s', ${rel}, r.name, r.type);\n` +
    `  end loop;`;
}

/** Which of this tool's columns the devices table has. */
interface DeviceColumns {
  name: boolean;
  type: boolean;
  updatedAt: boolean;
}

/** The device row's insert: id, and name and type where the table has them. */
function deviceInsert(devicesSql: string, device: DeviceInfo, columns: DeviceColumns): string {
  const names = ["id"];
  const values = [`${sqlLiteral(device.id)}::uuid`];
  for (const [column, value] of [["name", device.name], ["type", device.type]] as const) {
    if (!columns[column]) continue;
    names.push(column);
    values.push(sqlLiteral(value));
  }
  return `insert into ${devicesSql} (${names.join(", ")})\n` +
    `values (${values.join(", ")}) on conflict (id) do nothing;`;
}

/** A plain UPDATE of the device row's configured name and type (never an insert). */
function deviceUpdate(
  devicesSql: string,
  device: DeviceInfo,
  change: { name: boolean; type: boolean },
  columns: DeviceColumns,
): string {
  const sets: string[] = [];
  if (change.name) sets.push(`name = ${sqlLiteral(device.name)}`);
  if (change.type) sets.push(`type = ${sqlLiteral(device.type)}`);
  if (columns.updatedAt) sets.push("updated_at = now()");
  return `update ${devicesSql} set ${sets.join(", ")} where id = ${sqlLiteral(device.id)}::uuid;`;
}

/**
 * PL/pgSQL: this device's row in `devices` unless it is there. A devices table with NOT NULL
 * columns of its own refuses it: the row is then left to the lab ({@linkcode ensureSchema}
 * names the INSERT to run), and the rest of the schema step goes on.
 */
function deviceRegistration(devicesSql: string, device: DeviceInfo): string {
  const id = `${sqlLiteral(device.id)}::uuid`;
  return `  if not exists (select 1 from ${devicesSql} x where x.id = ${id}) then\n` +
    `    begin\n` +
    `      insert into ${devicesSql} (id, name, type) values (${id}, ${sqlLiteral(device.name)}, ${
      sqlLiteral(device.type)
    });\n` +
    `    exception when not_null_violation or check_violation or foreign_key_violation then\n` +
    `      -- Columns of the lab's own: the uploader asks for the row instead.\n` +
    `      null;\n` +
    `    end;\n` +
    `  end if;\n`;
}

/** The function behind the trigger that derives folder_key for inserts without one. */
export const FOLDER_KEY_FUNCTION = "uploader_folder_key";

/**
 * PL/pgSQL: the trigger that gives an insert without folder_key (the original tools' own,
 * which know nothing of it) the folder's name as its key, as the upgrade keyed their rows.
 * It fires only for such rows (`when (new.folder_key is null)`), so the uploader's own
 * inserts never call it. Variable `nsp` receives the table's schema.
 */
function folderKeyTrigger(): string {
  const fn = sqlLiteral(FOLDER_KEY_FUNCTION);
  const body = sqlLiteral("begin new.folder_key := new.folder_name; return new; end");
  return `  -- Inserts without folder_key (the original tools' own) take the folder's name as key.\n` +
    `  select n.nspname into nsp from pg_catalog.pg_class c\n` +
    `    join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = t;\n` +
    `  if to_regprocedure(format('%I.%I()', nsp, ${fn})) is null then\n` +
    `    execute format('create function %I.%I() returns trigger language plpgsql as %L',\n` +
    `      nsp, ${fn}, ${body});\n` +
    `  end if;\n` +
    `  if not exists (select 1 from pg_catalog.pg_trigger g join pg_catalog.pg_proc f\n` +
    `      on f.oid = g.tgfoid where g.tgrelid = t and not g.tgisinternal and f.proname = ${fn}) then\n` +
    `    execute format('create trigger %I before insert on %s for each row '\n` +
    `      'when (new.folder_key is null) execute function %I.%I()', ${fn}, t, nsp, ${fn});\n` +
    `  end if;\n`;
}

/**
 * The statement that creates or upgrades the schema: ONE `DO` block, so one transaction,
 * all or nothing. Running it again is harmless; on a complete schema it changes nothing
 * and takes no lock on the tables (its checks read the catalog).
 *
 * - takes a transaction-scoped advisory lock, so two uploaders never change the schema at once;
 * - makes sure `gen_random_uuid()` exists (built in since PostgreSQL 13; `pgcrypto` is
 *   created only when it is missing);
 * - creates `devices` when missing, else adds its missing `name`, `type`, `created_at`,
 *   `updated_at` columns and a unique key on `id`; upserts the device's row;
 * - creates the upload table in its current shape, or upgrades an existing one:
 *   adds the missing columns (`folder_key`, `image_objects`, ...); drops every unique
 *   constraint or unique index whose key includes folder_name but not folder_key (the
 *   original scripts' `unique (folder_name, device_id)`); when rows may need it (no key
 *   (device_id, folder_key) yet, or a nullable key column), registers the device ids in
 *   use in `devices`, pauses the table's own enabled triggers (the original's
 *   `update_updated_at_column` would stamp every row with now()), and in ONE update gives
 *   rows without a device_id to the device, fills folder_key from folder_name and keeps
 *   the newest row of each (device_id, folder_key) under the key and the older ones under
 *   `<key> (duplicate <id>)`, then resumes the triggers; finally sets NOT NULL and defaults,
 *   the primary key, the foreign key to `devices` and the unique key (device_id, folder_key).
 *   No row is deleted; CHECK constraints and triggers are kept.
 *
 * It returns no rows; the number of re-keyed rows is read afterwards with
 * {@linkcode buildRekeyCountStatement}.
 *
 * @returns one statement (an array for callers that run each in turn).
 * @throws UploadError `config` for an invalid table name or a device id that is no UUID.
 *
 * @example
 * ```ts
 * const [ddl] = buildSchemaStatements({
 *   table: "device_test",
 *   device: { id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a", name: "pi-7", type: "image_analyzer" },
 * });
 * ```
 */
export function buildSchemaStatements(options: SchemaOptions): string[] {
  const adopting = options.device ?? UNKNOWN_DEVICE;
  checkDevice(adopting);
  const ref = tableRef(options.table);
  return [schemaBlock(ref, options.device)];
}

/**
 * PL/pgSQL: the upgrade's one pass over the rows: rows without a device_id go to the
 * adopting device, folder_key is filled from folder_name, and the newest row of each
 * (device_id, folder_key) keeps the key while older ones are kept under
 * `<key> (duplicate <id>)`. A uuid id left null gets one; ids of other types are kept.
 */
function rekeyRows(
  t: string,
  dev: string,
  keepName: (column: "device_name" | "device_type", value: string) => string,
  adopting: DeviceInfo,
  uuidIds: boolean,
): string {
  const newId = uuidIds ? "coalesce(x.id, gen_random_uuid())" : "x.id";
  return `    with ranked as (\n` +
    `      select x.ctid as rid, ${newId} as new_id,\n` +
    `        coalesce(x.folder_key, x.folder_name, '(unnamed)') as base,\n` +
    `        row_number() over (\n` +
    `          partition by coalesce(x.device_id, ${dev}),\n` +
    `            coalesce(x.folder_key, x.folder_name, '(unnamed)')\n` +
    `          order by x.updated_at desc nulls last, x.created_at desc nulls last,\n` +
    `            x.id desc nulls last) as n\n` +
    `      from ${t} x\n` +
    `    )\n` +
    `    update ${t} x set\n` +
    (uuidIds ? `      id = rk.new_id,\n` : "") +
    `      device_id = coalesce(x.device_id, ${dev}),\n` +
    `      device_name = ${keepName("device_name", adopting.name)},\n` +
    `      device_type = ${keepName("device_type", adopting.type)},\n` +
    `      folder_key = case when rk.n > 1\n` +
    `        then rk.base || ' (duplicate ' || rk.new_id::text || ')' else rk.base end,\n` +
    `      folder_name = coalesce(x.folder_name, x.folder_key, '(unnamed)'),\n` +
    `      images = coalesce(x.images, '{}'),\n` +
    `      created_at = coalesce(x.created_at, x.updated_at, now()),\n` +
    `      updated_at = coalesce(x.updated_at, x.created_at, now())\n` +
    `    from ranked rk\n` +
    `    where x.ctid = rk.rid and (rk.n > 1 ${uuidIds ? "or x.id is null " : ""}` +
    `or x.device_id is null\n` +
    `      or x.folder_key is null or x.folder_name is null or x.images is null\n` +
    `      or x.created_at is null or x.updated_at is null);\n`;
}

function schemaBlock(ref: TableRef, device: DeviceInfo | undefined): string {
  const t = ref.sql;
  const D = ref.devicesSql;
  const adopting = device ?? UNKNOWN_DEVICE;
  const dev = `${sqlLiteral(adopting.id)}::uuid`;

  const declare = `  t regclass;\n  d regclass;\n  att_device smallint;\n  att_key smallint;\n` +
    `  att_name smallint;\n  r record;\n  p integer;\n  paused text[] := '{}';\n` +
    `  paused_always boolean[] := '{}';\n  nsp name;\n  id_uuid boolean;`;

  const devicesPart = `  d := to_regclass(${ref.devicesRegclass});\n` +
    `  if d is null then\n` +
    `    create table ${D} (\n` +
    `      id uuid primary key,\n` +
    `      name text,\n` +
    `      type text,\n` +
    `      created_at timestamptz not null default now(),\n` +
    `      updated_at timestamptz not null default now()\n` +
    `    );\n` +
    `    d := to_regclass(${ref.devicesRegclass});\n` +
    `  end if;\n` +
    `${addMissingColumns("d", DEVICE_COLUMNS)}\n` +
    `  if not exists (select 1 from pg_catalog.pg_index i join pg_catalog.pg_attribute a\n` +
    `      on a.attrelid = i.indrelid and a.attnum = i.indkey[0]\n` +
    `      where i.indrelid = d and i.indisunique and i.indisvalid and i.indpred is null\n` +
    `      and i.indexprs is null and i.indnkeyatts = 1 and a.attname = 'id') then\n` +
    `    if exists (select 1 from pg_catalog.pg_constraint c where c.conrelid = d and c.contype = 'p') then\n` +
    `      alter table ${D} add unique (id);\n` +
    `    else\n` +
    `      alter table ${D} add primary key (id);\n` +
    `    end if;\n` +
    `  end if;\n` +
    (device ? deviceRegistration(D, device) : "");

  const createTable = `  t := to_regclass(${ref.regclass});\n` +
    `  if t is null then\n` +
    `    create table ${t} (\n` +
    `      id uuid primary key default gen_random_uuid(),\n` +
    `      created_at timestamptz not null default now(),\n` +
    `      updated_at timestamptz not null default now(),\n` +
    `      device_id uuid not null references ${D} (id),\n` +
    `      device_name text,\n` +
    `      device_type text,\n` +
    `      folder_key text not null,\n` +
    `      folder_name text not null,\n` +
    `      images text[] not null default '{}',\n` +
    `      image_objects text[],\n` +
    `      test_results jsonb,\n` +
    `      test_status text,\n` +
    `      test_date timestamptz,\n` +
    `      upload_batch text,\n` +
    `      metadata jsonb,\n` +
    `      data_type text default 'image_analysis',\n` +
    `      unique (device_id, folder_key)\n` +
    `    );\n` +
    `    t := to_regclass(${ref.regclass});\n` +
    folderKeyTrigger() +
    `    return;\n` +
    `  end if;`;

  const keyIndexes = (where: string) =>
    `select i.indexrelid::regclass::text as idx, c.conname from pg_catalog.pg_index i\n` +
    `      left join pg_catalog.pg_constraint c on c.conindid = i.indexrelid and c.conrelid = t\n` +
    `        and c.contype = 'u'\n` +
    `      where i.indrelid = t and i.indisunique and not i.indisprimary and ${where}`;
  const dropIndex = `    if r.conname is not null then\n` +
    `      execute format('alter table %s drop constraint %I', t, r.conname);\n` +
    `    else\n` +
    `      execute format('drop index %s', r.idx);\n` +
    `    end if;`;
  const inKey = (att: string) =>
    `exists (select 1 from generate_series(0, i.indnkeyatts - 1) k where i.indkey[k] = ${att})`;

  const nullable = NOT_NULL_COLUMNS.map(sqlLiteral).join(", ");
  const keepName = device
    ? (column: "device_name" | "device_type", value: string) =>
      `case when x.device_id is null then coalesce(x.${column}, ${
        sqlLiteral(value)
      }) else x.${column} end`
    : (column: "device_name" | "device_type") => `x.${column}`;

  const upgrade = `${addMissingColumns("t", TABLE_COLUMNS)}\n` +
    `${attnumInto("att_device", "t", "device_id")}\n` +
    `${attnumInto("att_key", "t", "folder_key")}\n` +
    `${attnumInto("att_name", "t", "folder_name")}\n` +
    `  -- Unique keys by folder name (the original scripts' (folder_name, device_id)) refuse two\n` +
    `  -- folders of one name in different places, and the adoption of rows below.\n` +
    `  for r in ${keyIndexes(`${inKey("att_name")} and not ${inKey("att_key")}`)} loop\n` +
    `${dropIndex}\n` +
    `  end loop;\n` +
    `  if not ${KEY_USABLE} or exists (select 1 from pg_catalog.pg_attribute a\n` +
    `      where a.attrelid = t and a.attname in (${nullable}) and a.attnum > 0\n` +
    `      and not a.attisdropped and not a.attnotnull) then\n` +
    `    lock table ${t} in access exclusive mode;\n` +
    `    -- Uniqueness is checked row by row: a key present now would refuse the re-keying's\n` +
    `    -- intermediate states. It is added again below.\n` +
    `    for r in ${keyIndexes(`${inKey("att_device")} and ${inKey("att_key")}`)} loop\n` +
    `  ${dropIndex.replaceAll("\n", "\n  ")}\n` +
    `    end loop;\n` +
    `    if not ${FK_PRESENT} then\n` +
    `      insert into ${D} (id) select distinct x.device_id from ${t} x\n` +
    `      where x.device_id is not null on conflict (id) do nothing;\n` +
    `    end if;\n` +
    (device ? "" : `    if exists (select 1 from ${t} x where x.device_id is null) then\n` +
      `      insert into ${D} (id, name, type) values (${dev}, ${
        sqlLiteral(UNKNOWN_DEVICE.name)
      }, ${sqlLiteral(UNKNOWN_DEVICE.type)})\n` +
      `      on conflict (id) do nothing;\n` +
      `    end if;\n`) +
    `    -- The table's own triggers (the original's update_updated_at_column) would stamp\n` +
    `    -- every row with now(): paused for this pass, which changes no row's content.\n` +
    `    for r in select g.tgname, g.tgenabled from pg_catalog.pg_trigger g\n` +
    `        where g.tgrelid = t and not g.tgisinternal and g.tgenabled in ('O', 'A') loop\n` +
    `      execute format('alter table %s disable trigger %I', t, r.tgname);\n` +
    `      paused := paused || r.tgname::text;\n` +
    `      paused_always := paused_always || (r.tgenabled = 'A');\n` +
    `    end loop;\n` +
    `    -- Ids of other types (a bigint identity of Supabase's Table Editor) stay as they are.\n` +
    `    select a.atttypid = 'uuid'::regtype into id_uuid from pg_catalog.pg_attribute a\n` +
    `      where a.attrelid = t and a.attname = 'id' and a.attnum > 0 and not a.attisdropped;\n` +
    `    if id_uuid then\n` +
    rekeyRows(t, dev, keepName, adopting, true) +
    `    else\n` +
    rekeyRows(t, dev, keepName, adopting, false) +
    `    end if;\n` +
    `    for p in 1 .. coalesce(array_length(paused, 1), 0) loop\n` +
    `      execute format('alter table %s enable %s trigger %I', t,\n` +
    `        case when paused_always[p] then 'always' else '' end, paused[p]);\n` +
    `    end loop;\n` +
    `  end if;\n` +
    `  for r in select v.name, v.value from (values\n` +
    `      ${valuesList(COLUMN_DEFAULTS, "      ")}\n` +
    `    ) v(name, value) join pg_catalog.pg_attribute a on a.attrelid = t and a.attname = v.name\n` +
    `    where a.attnum > 0 and not a.attisdropped and not a.atthasdef and a.attidentity = ''\n` +
    `      and a.attgenerated = '' and (v.name <> 'id' or a.atttypid = 'uuid'::regtype)\n` +
    `  loop\n` +
    `    execute format('alter table %s alter column %I set default %s', t, r.name, r.value);\n` +
    `  end loop;\n` +
    `  for r in select a.attname from pg_catalog.pg_attribute a where a.attrelid = t\n` +
    `    and a.attname in (${nullable}) and a.attnum > 0 and not a.attisdropped\n` +
    `    and not a.attnotnull\n` +
    `  loop\n` +
    `    execute format('alter table %s alter column %I set not null', t, r.attname);\n` +
    `  end loop;\n` +
    `  if not exists (select 1 from pg_catalog.pg_constraint c where c.conrelid = t and c.contype = 'p') then\n` +
    `    alter table ${t} add primary key (id);\n` +
    `  end if;\n` +
    `  if not ${FK_PRESENT} then\n` +
    `    alter table ${t} add foreign key (device_id) references ${D} (id);\n` +
    `  end if;\n` +
    `  if not ${KEY_USABLE} then\n` +
    `    alter table ${t} add unique (device_id, folder_key);\n` +
    `  end if;\n` +
    folderKeyTrigger().trimEnd();

  const body = `  -- One schema change at a time; the lock ends with this transaction.\n` +
    `  perform pg_advisory_xact_lock(${SCHEMA_LOCK_KEY});\n` +
    `  if to_regprocedure('gen_random_uuid()') is null then\n` +
    `    create extension if not exists pgcrypto;\n` +
    `  end if;\n` +
    `${devicesPart}` +
    `${buildHealthDdl(ref)}\n` +
    `${createTable}\n` +
    upgrade;
  return doBlock(declare, body);
}

/**
 * A statement returning one line of JSON, `{"rekeyed":N}`: the rows of the upload table
 * kept under `<key> (duplicate <their id>)`. Read it with {@linkcode parseRekeyReply}.
 * It scans the table: run it only after an upgrade that re-keyed rows.
 *
 * @throws UploadError `config` for an invalid table name.
 */
export function buildRekeyCountStatement(table: string): string {
  const ref = tableRef(table);
  return `select format('{"rekeyed":%s}', count(*)) from ${ref.sql} x\n` +
    `where x.folder_key like ('% (duplicate ' || x.id::text || ')');`;
}

/**
 * The re-keyed row count from the reply of {@linkcode buildRekeyCountStatement}, or
 * `undefined` when the rows are not that statement's report.
 *
 * @example
 * ```ts
 * parseRekeyReply(['{"rekeyed":3}']); // 3
 * parseRekeyReply([]);                 // undefined
 * ```
 */
export function parseRekeyReply(rows: readonly string[]): number | undefined {
  if (rows.length !== 1 || !rows[0].startsWith('{"rekeyed":')) return undefined;
  const value = (JSON.parse(rows[0]) as { rekeyed: unknown }).rekeyed;
  return typeof value === "number" ? value : undefined;
}

/** SQL: one table's state as JSON, for the inspection. `rel` and `devices` are regclass expressions. */
function relationJson(rel: string, devices: string): string {
  const columnsOf = (indexAlias: string) =>
    `(select coalesce(json_agg(a.attname order by k), '[]') from generate_series(0, ${indexAlias}.indnkeyatts - 1) k\n` +
    `          join pg_catalog.pg_attribute a on a.attrelid = ${indexAlias}.indrelid and a.attnum = ${indexAlias}.indkey[k])`;
  return `case when ${rel} is null then null else (\n` +
    `    select json_build_object(\n` +
    `      'name', ${rel}::text,\n` +
    `      'owner', pg_has_role(c.relowner, 'USAGE'),\n` +
    `      'rls', c.relrowsecurity,\n` +
    `      'force_rls', c.relforcerowsecurity,\n` +
    `      'columns', (select coalesce(json_object_agg(a.attname, json_build_object(\n` +
    `          'type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,\n` +
    `          'has_default', a.atthasdef,\n` +
    `          'identity', a.attidentity <> '' or a.attgenerated <> '')), '{}')\n` +
    `        from pg_catalog.pg_attribute a where a.attrelid = ${rel} and a.attnum > 0\n` +
    `        and not a.attisdropped),\n` +
    `      'unique', (select coalesce(json_agg(json_build_object(\n` +
    `          'index', ic.relname, 'constraint', con.conname, 'primary', i.indisprimary,\n` +
    `          'usable', i.indisvalid and i.indpred is null and i.indexprs is null,\n` +
    `          'columns', ${columnsOf("i")}) order by ic.relname), '[]')\n` +
    `        from pg_catalog.pg_index i join pg_catalog.pg_class ic on ic.oid = i.indexrelid\n` +
    `        left join pg_catalog.pg_constraint con on con.conindid = i.indexrelid\n` +
    `          and con.conrelid = i.indrelid and con.contype in ('u', 'p')\n` +
    `        where i.indrelid = ${rel} and i.indisunique),\n` +
    `      'foreign_keys', (select coalesce(json_agg(json_build_object(\n` +
    `          'name', f.conname, 'references', f.confrelid::regclass::text,\n` +
    `          'references_devices', f.confrelid = ${devices},\n` +
    `          'columns', (select coalesce(json_agg(a.attname order by k.n), '[]')\n` +
    `            from unnest(f.conkey) with ordinality k(attnum, n) join pg_catalog.pg_attribute a\n` +
    `            on a.attrelid = f.conrelid and a.attnum = k.attnum)) order by f.conname), '[]')\n` +
    `        from pg_catalog.pg_constraint f where f.conrelid = ${rel} and f.contype = 'f'),\n` +
    `      'privileges', json_build_object(\n` +
    `        'select', has_table_privilege(${rel}, 'SELECT'),\n` +
    `        'insert', has_table_privilege(${rel}, 'INSERT'),\n` +
    `        'update', has_table_privilege(${rel}, 'UPDATE')),\n` +
    `      'policies', (select coalesce(json_agg(json_build_object(\n` +
    `          'name', p.polname,\n` +
    `          'command', case p.polcmd when 'r' then 'SELECT' when 'a' then 'INSERT'\n` +
    `            when 'w' then 'UPDATE' when 'd' then 'DELETE' else 'ALL' end,\n` +
    `          'permissive', p.polpermissive,\n` +
    `          'applies', 0::oid = any (p.polroles) or exists (select 1 from unnest(p.polroles) pr\n` +
    `            where pr <> 0 and pg_has_role(current_user, pr, 'MEMBER')))\n` +
    `          order by p.polname), '[]')\n` +
    `        from pg_catalog.pg_policy p where p.polrelid = ${rel}),\n` +
    `      'folder_key_trigger', exists (select 1 from pg_catalog.pg_trigger g\n` +
    `        join pg_catalog.pg_proc f on f.oid = g.tgfoid where g.tgrelid = ${rel}\n` +
    `        and not g.tgisinternal and f.proname = ${sqlLiteral(FOLDER_KEY_FUNCTION)}))\n` +
    `    from pg_catalog.pg_class c where c.oid = ${rel}) end`;
}

/**
 * ONE read-only statement that inspects the catalog and returns one line of JSON (read it
 * with {@linkcode parseInspection}): the role, whether it bypasses row-level security, the
 * server's statement_timeout, the schema and the role's USAGE/CREATE on it, whether
 * gen_random_uuid() exists, and for the upload table and `devices` each: ownership,
 * row-level security (enabled, forced, policies and whether each applies to the role),
 * columns (type, NOT NULL, default), unique indexes and the constraints they back, foreign
 * keys, and the role's SELECT/INSERT/UPDATE privileges; finally this device's row in
 * `devices` as JSON when the role may read it. It reads no table but `devices` (one row
 * by its key, through `query_to_xml`, so the statement parses when the table is absent)
 * and takes no lock beyond those of a plain read.
 *
 * @throws UploadError `config` for an invalid table name or a device id that is no UUID.
 */
export function buildInspectStatement(table: string, device: DeviceInfo): string {
  checkDevice(device);
  const ref = tableRef(table);
  // An unqualified name: the schema of the table search_path finds, else where it would be created.
  const schema = ref.schema === undefined
    ? `coalesce((select ns.nspname from pg_catalog.pg_class c join pg_catalog.pg_namespace ns\n` +
      `    on ns.oid = c.relnamespace where c.oid = to_regclass(${ref.regclass})), current_schema())`
    : sqlLiteral(ref.schema);
  // A qualified name in a schema the role may not use makes to_regclass fail: guard it.
  const regclass = (literal: string) =>
    ref.schema === undefined
      ? `to_regclass(${literal})`
      : `case when has_schema_privilege(${schema}, 'USAGE') then to_regclass(${literal}) end`;
  const rowQuery = `select encode(convert_to(to_jsonb(x)::text, 'UTF8'), 'hex') as j ` +
    `from %s x where x.id = %L`;
  return `with s as (\n` +
    `  select ${schema}::text as nsp\n` +
    `), n as (\n` +
    `  select s.nsp, exists (select 1 from pg_catalog.pg_namespace ns where ns.nspname = s.nsp)\n` +
    `    as nsp_exists from s\n` +
    `), target as (\n` +
    `  select n.*,\n` +
    `    case when n.nsp_exists then ${regclass(ref.regclass)} end as t,\n` +
    `    case when n.nsp_exists then ${regclass(ref.devicesRegclass)} end as d\n` +
    `  from n\n` +
    `)\n` +
    `select json_build_object(\n` +
    `  'role', current_user::text,\n` +
    `  'bypass_rls', (select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles r\n` +
    `    where r.rolname = current_user),\n` +
    `  'statement_timeout', current_setting('statement_timeout'),\n` +
    `  'schema', target.nsp,\n` +
    `  'schema_exists', target.nsp_exists,\n` +
    `  'schema_usage', case when target.nsp_exists then has_schema_privilege(target.nsp, 'USAGE')\n` +
    `    else false end,\n` +
    `  'schema_create', case when target.nsp_exists then has_schema_privilege(target.nsp, 'CREATE')\n` +
    `    else false end,\n` +
    `  'gen_random_uuid', to_regprocedure('gen_random_uuid()') is not null,\n` +
    `  'table', ${relationJson("target.t", "target.d")},\n` +
    `  'devices', ${relationJson("target.d", "target.d")},\n` +
    `  'device_row_hex', case when target.d is not null\n` +
    `      and has_table_privilege(target.d, 'SELECT')\n` +
    `      and exists (select 1 from pg_catalog.pg_attribute a where a.attrelid = target.d\n` +
    `        and a.attname = 'id' and a.attnum > 0 and not a.attisdropped)\n` +
    `    then coalesce(substring(query_to_xml(format(${sqlLiteral(rowQuery)}, target.d, ${
      sqlLiteral(device.id)
    }),\n` +
    `      false, true, '')::text from '<j>([0-9a-f]*)</j>'), '') end\n` +
    `)::text from target;`;
}

function fail(what: string): never {
  throw new UploadError("fatal", `Unexpected reply to the schema inspection: ${what}`);
}

function bool(value: unknown, what: string): boolean {
  if (typeof value !== "boolean") fail(`${what} is not a boolean`);
  return value;
}

function str(value: unknown, what: string): string {
  if (typeof value !== "string") fail(`${what} is not a string`);
  return value;
}

function strings(value: unknown, what: string): string[] {
  if (!Array.isArray(value)) fail(`${what} is not a list`);
  return value.map((v, i) => str(v, `${what}[${i}]`));
}

function list(value: unknown, what: string): Record<string, unknown>[] {
  if (!Array.isArray(value)) fail(`${what} is not a list`);
  return value.map((v, i) => object(v, `${what}[${i}]`));
}

function object(value: unknown, what: string): Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    fail(`${what} is not an object`);
  }
  return value as Record<string, unknown>;
}

const COMMANDS = new Set(["ALL", "SELECT", "INSERT", "UPDATE", "DELETE"]);

function parseRelation(value: unknown, what: string): RelationState | null {
  if (value === null) return null;
  const o = object(value, what);
  const columns: Record<string, ColumnState> = {};
  for (const [name, c] of Object.entries(object(o.columns, `${what}.columns`))) {
    const column = object(c, `${what}.columns.${name}`);
    columns[name] = {
      type: str(column.type, `${what}.columns.${name}.type`),
      notNull: bool(column.not_null, `${what}.columns.${name}.not_null`),
      hasDefault: bool(column.has_default, `${what}.columns.${name}.has_default`),
      identity: bool(column.identity, `${what}.columns.${name}.identity`),
    };
  }
  const privileges = object(o.privileges, `${what}.privileges`);
  return {
    name: str(o.name, `${what}.name`),
    owner: bool(o.owner, `${what}.owner`),
    rls: bool(o.rls, `${what}.rls`),
    forceRls: bool(o.force_rls, `${what}.force_rls`),
    columns,
    unique: list(o.unique, `${what}.unique`).map((u, i) => ({
      index: str(u.index, `${what}.unique[${i}].index`),
      constraint: u.constraint === null ? null : str(u.constraint, `${what}.unique[${i}]`),
      primary: bool(u.primary, `${what}.unique[${i}].primary`),
      usable: bool(u.usable, `${what}.unique[${i}].usable`),
      columns: strings(u.columns, `${what}.unique[${i}].columns`),
    })),
    foreignKeys: list(o.foreign_keys, `${what}.foreign_keys`).map((f, i) => ({
      name: str(f.name, `${what}.foreign_keys[${i}].name`),
      columns: strings(f.columns, `${what}.foreign_keys[${i}].columns`),
      references: str(f.references, `${what}.foreign_keys[${i}].references`),
      referencesDevices: f.references_devices === true,
    })),
    privileges: {
      select: bool(privileges.select, `${what}.privileges.select`),
      insert: bool(privileges.insert, `${what}.privileges.insert`),
      update: bool(privileges.update, `${what}.privileges.update`),
    },
    policies: list(o.policies, `${what}.policies`).map((p, i) => {
      const command = str(p.command, `${what}.policies[${i}].command`);
      if (!COMMANDS.has(command)) fail(`${what}.policies[${i}].command is ${command}`);
      return {
        name: str(p.name, `${what}.policies[${i}].name`),
        command: command as PolicyState["command"],
        permissive: bool(p.permissive, `${what}.policies[${i}].permissive`),
        applies: bool(p.applies, `${what}.policies[${i}].applies`),
      };
    }),
    folderKeyTrigger: bool(o.folder_key_trigger, `${what}.folder_key_trigger`),
  };
}

function decodeHex(hex: string): string {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return new TextDecoder().decode(bytes);
}

/**
 * Parses the reply of {@linkcode buildInspectStatement}.
 *
 * @throws UploadError `fatal` when the rows are not the statement's one line of JSON.
 */
export function parseInspection(rows: readonly string[]): SchemaInspection {
  if (rows.length !== 1) fail(`${rows.length} rows`);
  let raw: unknown;
  try {
    raw = JSON.parse(rows[0]);
  } catch (error) {
    // Not JSON: the reply is not the inspection's. Report it as such, with the parser's word.
    fail(`not JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  const o = object(raw, "reply");
  const hex = o.device_row_hex;
  let deviceRow: Record<string, unknown> | null | undefined;
  if (hex === null) deviceRow = undefined;
  else if (str(hex, "device_row_hex") === "") deviceRow = null;
  else deviceRow = object(JSON.parse(decodeHex(hex as string)), "device row");
  return {
    role: str(o.role, "role"),
    bypassRls: o.bypass_rls === true,
    statementTimeout: str(o.statement_timeout, "statement_timeout"),
    schema: o.schema === null ? null : str(o.schema, "schema"),
    schemaExists: bool(o.schema_exists, "schema_exists"),
    schemaUsage: bool(o.schema_usage, "schema_usage"),
    schemaCreate: bool(o.schema_create, "schema_create"),
    genRandomUuid: bool(o.gen_random_uuid, "gen_random_uuid"),
    table: parseRelation(o.table, "table"),
    devices: parseRelation(o.devices, "devices"),
    deviceRow,
  };
}

/** Names for messages: the table as configured and the devices table beside it. */
function displayNames(table: string): { table: string; devices: string } {
  const ref = tableRef(table);
  return {
    table,
    devices: ref.schema === undefined ? "devices" : `${ref.schema}.devices`,
  };
}

function sameColumns(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join("\0") === [...b].sort().join("\0");
}

/** The table has a usable unique key on exactly {device_id, folder_key}. */
function hasUpsertKey(rel: RelationState): boolean {
  return rel.unique.some((u) => u.usable && sameColumns(u.columns, ["device_id", "folder_key"]));
}

/** Unique keys by folder name: key includes folder_name but not folder_key (primary keys aside). */
function legacyKeys(rel: RelationState): UniqueState[] {
  return rel.unique.filter((u) =>
    !u.primary && u.columns.includes("folder_name") && !u.columns.includes("folder_key")
  );
}

/** Rows may need the upgrade's data pass: no upsert key, or a key column that may be null. */
function needsRekey(rel: RelationState): boolean {
  const deviceId = rel.columns.device_id;
  const folderKey = rel.columns.folder_key;
  return !hasUpsertKey(rel) || !deviceId?.notNull || !folderKey?.notNull;
}

/**
 * What the schema lacks for uploads to work, in words for the user, e.g. `column
 * folder_key of device_test` or `unique key (device_id, folder_key) on device_test`.
 * Empty when the schema is complete. Refinements the upgrade also makes (NOT NULL on
 * timestamps, defaults, `devices.name`) are not listed: uploads work without them.
 *
 * @example
 * ```ts
 * findMissing(parseInspection(reply.rows), "device_test"); // [] when complete
 * ```
 */
export function findMissing(inspection: SchemaInspection, table: string): string[] {
  const names = displayNames(table);
  const missing: string[] = [];
  const rel = inspection.table;
  const devices = inspection.devices;
  if (!inspection.genRandomUuid && (rel === null || !rel.columns.id?.hasDefault)) {
    missing.push("function gen_random_uuid() (extension pgcrypto)");
  }
  if (devices === null) {
    missing.push(`table ${names.devices}`);
  } else if (!devices.columns.id) {
    missing.push(`column id of ${names.devices}`);
  } else if (!devices.unique.some((u) => u.usable && sameColumns(u.columns, ["id"]))) {
    missing.push(`primary key (id) on ${names.devices}`);
  }
  if (rel === null) {
    missing.push(`table ${names.table}`);
    return missing;
  }
  for (const [column] of TABLE_COLUMNS) {
    if (!rel.columns[column]) missing.push(`column ${column} of ${names.table}`);
  }
  const id = rel.columns.id;
  if (id && !id.hasDefault && !id.identity) {
    missing.push(
      id.type === "uuid"
        ? `default gen_random_uuid() of ${names.table}.id`
        : `a default of ${names.table}.id (of type ${id.type}: make it an identity column)`,
    );
  }
  for (const column of ["device_id", "folder_key"]) {
    if (rel.columns[column] && !rel.columns[column].notNull) {
      missing.push(`NOT NULL on ${names.table}.${column}`);
    }
  }
  for (const legacy of legacyKeys(rel)) {
    const what = legacy.constraint === null
      ? `unique index ${legacy.index}`
      : `unique constraint ${legacy.constraint}`;
    missing.push(`removal of ${what} (${legacy.columns.join(", ")}) on ${names.table}`);
  }
  if (!hasUpsertKey(rel)) missing.push(`unique key (device_id, folder_key) on ${names.table}`);
  const fk = rel.foreignKeys.some((f) =>
    f.referencesDevices && sameColumns(f.columns, ["device_id"])
  );
  if (!fk) missing.push(`foreign key ${names.table} (device_id) references ${names.devices} (id)`);
  return missing;
}

/** The upsert's commands (INSERT, SELECT, UPDATE) with no permissive policy for the role. */
function missingPolicies(rel: RelationState): PolicyCommand[] {
  const needed: PolicyCommand[] = ["INSERT", "SELECT", "UPDATE"];
  return needed.filter((command) =>
    !rel.policies.some((p) =>
      p.permissive && p.applies && (p.command === command || p.command === "ALL")
    )
  );
}

/**
 * Row-level security of the upload table and `devices` as it applies to the role.
 *
 * @example
 * ```ts
 * policiesOf(inspection); // [{ table: "device_test", rlsEnabled: true, rlsApplies: true, missing: ["SELECT"] }, ...]
 * ```
 */
export function policiesOf(inspection: SchemaInspection): TablePolicies[] {
  const out: TablePolicies[] = [];
  for (const rel of [inspection.table, inspection.devices]) {
    if (rel === null) continue;
    const applies = rel.rls && !inspection.bypassRls && (!rel.owner || rel.forceRls);
    out.push({
      table: rel.name,
      rlsEnabled: rel.rls,
      rlsApplies: applies,
      missing: applies ? missingPolicies(rel) : [],
    });
  }
  return out;
}

/** What the device's row in `devices` needs: created, or its configured name or type set. */
interface DeviceRowPlan {
  insert: boolean;
  name: boolean;
  type: boolean;
}

/**
 * What to do to the device's row: insert it when absent; else set the configured name or
 * type where the row holds another (a value taken from the server never rewrites it).
 */
function planDeviceRow(
  inspection: SchemaInspection,
  device: DeviceInfo,
  fromServer: { name?: boolean; type?: boolean },
): DeviceRowPlan {
  const row = inspection.deviceRow;
  if (row === null || row === undefined) return { insert: true, name: false, type: false };
  const columns = inspection.devices?.columns ?? {};
  return {
    insert: false,
    name: !fromServer.name && columns.name !== undefined && row.name !== device.name,
    type: !fromServer.type && columns.type !== undefined && row.type !== device.type,
  };
}

/** Privileges the role lacks for uploading, in words, e.g. `INSERT on device_test`. */
function missingPrivileges(
  inspection: SchemaInspection,
  table: string,
  plan: DeviceRowPlan,
): string[] {
  const names = displayNames(table);
  const out: string[] = [];
  const rel = inspection.table;
  if (rel) {
    const lacking = (["select", "insert", "update"] as const).filter((p) => !rel.privileges[p]);
    if (lacking.length > 0) {
      out.push(`${lacking.map((p) => p.toUpperCase()).join(", ")} on ${names.table}`);
    }
  }
  const devices = inspection.devices;
  if (devices) {
    const lacking: string[] = [];
    if (!devices.privileges.select) lacking.push("SELECT");
    if (plan.insert && inspection.deviceRow === null && !devices.privileges.insert) {
      lacking.push("INSERT");
    }
    if ((plan.name || plan.type) && !devices.privileges.update) lacking.push("UPDATE");
    if (lacking.length > 0) out.push(`${lacking.join(", ")} on ${names.devices}`);
  }
  return out;
}

function grantHint(inspection: SchemaInspection, table: string): string {
  const names = displayNames(table);
  const role = quoteIdent(inspection.role);
  return `Have an owner grant them: grant usage on schema ${
    inspection.schema === null ? "<schema>" : quoteIdent(inspection.schema)
  } to ${role}; grant select, insert, update on ${tableRef(table).sql}, ${
    tableRef(table).devicesSql
  } to ${role}; ` +
    `or run the SQL printed by \`${PRINT_SCHEMA_COMMAND}\` once (it also creates or upgrades ` +
    `${names.table} and ${names.devices})`;
}

/** The 57014 reply of a schema statement as an error the caller may retry a few times. */
function timeoutError(
  reply: { sqlstate: string; message: string },
  step: string,
  options: EnsureSchemaOptions,
  statementTimeout: string | undefined,
): UploadError {
  const limit = statementTimeout ? ` (statement_timeout ${statementTimeout})` : "";
  return new UploadError(
    "timeout",
    `The server cancelled the schema ${step} for ${options.table} on ${options.targetDisplay}` +
      `${limit}: ${reply.sqlstate}: ${reply.message}`,
    { subject: "schema", sqlstate: reply.sqlstate },
  );
}

/**
 * Whether an error is a schema step the server cancelled (57014, usually its
 * statement_timeout): retryable a few times ({@linkcode SCHEMA_TIMEOUT_ATTEMPTS}); when it
 * persists, report {@linkcode schemaTimeoutError}.
 */
export function isSchemaTimeout(error: unknown): error is UploadError {
  return error instanceof UploadError && error.kind === "timeout" && error.sqlstate === "57014" &&
    error.subject === "schema";
}

/**
 * The configuration error for a schema step the server kept cancelling: it names
 * statement_timeout and how to get past it.
 *
 * @example
 * ```ts
 * throw schemaTimeoutError(lastError, { table: "device_test", targetDisplay, attempts: 3 });
 * ```
 */
export function schemaTimeoutError(
  error: UploadError,
  options: { table: string; targetDisplay: string; attempts: number },
): UploadError {
  return new UploadError(
    "config",
    `Cannot prepare table ${options.table} on ${options.targetDisplay}: the server's ` +
      `statement_timeout cancelled the schema step ${options.attempts} times (${error.message})`,
    {
      subject: "schema",
      sqlstate: "57014",
      cause: error,
      hint: `Raise statement_timeout for the uploading role (alter role <role> set ` +
        `statement_timeout = '5min'), or have an owner run the SQL printed by ` +
        `\`${PRINT_SCHEMA_COMMAND}\` once where no such limit applies`,
    },
  );
}

/** An error reply of a schema statement as an UploadError naming the step. */
function stepError(
  reply: StatementError,
  step: string,
  options: EnsureSchemaOptions,
  statementTimeout?: string,
): UploadError {
  if (reply.sqlstate === "57014") return timeoutError(reply, step, options, statementTimeout);
  return new UploadError(
    classifySqlstate(reply.sqlstate) === "transient" ? "transient" : "config",
    `Cannot prepare table ${options.table} on ${options.targetDisplay} (${step}): ` +
      `${reply.sqlstate}: ${reply.message}`,
    { subject: "schema", sqlstate: reply.sqlstate },
  );
}

/** Runs one schema statement and returns its rows; an error reply is thrown (see stepError). */
async function run(
  exec: (sql: string) => Promise<StatementReply>,
  sql: string,
  step: string,
  options: EnsureSchemaOptions,
  statementTimeout?: string,
): Promise<string[]> {
  const reply = await exec(sql);
  if (reply.ok) return reply.rows;
  throw stepError(reply, step, options, statementTimeout);
}

/** A string that says something: non-empty text, else undefined. */
function textOf(value: unknown): string | undefined {
  return typeof value === "string" && value.trim() !== "" ? value : undefined;
}

/**
 * The statement reading this device's name and type from its latest row of the upload
 * table (one line of JSON, or no row), or null when the table lacks those columns.
 */
function latestDeviceQuery(inspection: SchemaInspection, table: string, id: string): string | null {
  const columns = inspection.table?.columns ?? {};
  if (!columns.device_id || !columns.device_name || !columns.device_type) return null;
  if (!inspection.table?.privileges.select) return null;
  return `select json_build_object('name', x.device_name, 'type', x.device_type)::text\n` +
    `from ${tableRef(table).sql} x where x.device_id = ${sqlLiteral(id)}::uuid\n` +
    `  and (x.device_name is not null or x.device_type is not null)\n` +
    (columns.updated_at ? `order by x.updated_at desc nulls last ` : "") + `limit 1;`;
}

/**
 * The device's name and type where they are not configured: what the server holds (its
 * `devices` row, else its latest row of the upload table), else the given fallbacks.
 */
async function deviceFromServer(
  exec: (sql: string) => Promise<StatementReply>,
  inspection: SchemaInspection,
  options: EnsureSchemaOptions,
  device: DeviceInfo,
): Promise<DeviceInfo> {
  const want = options.fromServer ?? {};
  if (!want.name && !want.type) return device;
  const row = inspection.deviceRow ?? null;
  let name = want.name ? textOf(row?.name) ?? textOf(row?.device_name) : device.name;
  let type = want.type ? textOf(row?.type) ?? textOf(row?.device_type) : device.type;
  const sql = name === undefined || type === undefined
    ? latestDeviceQuery(inspection, options.table, device.id)
    : null;
  if (sql !== null) {
    const rows = await run(exec, sql, "device name", options, inspection.statementTimeout);
    const latest = rows.length === 1 ? JSON.parse(rows[0]) as Record<string, unknown> : null;
    name ??= textOf(latest?.name);
    type ??= textOf(latest?.type);
  }
  return { id: device.id, name: name ?? device.name, type: type ?? device.type };
}

/** Pieces uploads work without, added when the role owns the table (else a warning). */
function findRefinements(inspection: SchemaInspection, table: string): string[] {
  const rel = inspection.table;
  if (rel === null || rel.folderKeyTrigger || !rel.columns.folder_key) return [];
  return [
    `the trigger giving inserts without folder_key (the original tools') their folder's ` +
    `name as key, on ${table}`,
  ];
}

/**
 * Makes sure the remote schema is in place and this device registered, doing as little
 * as it can: ONE read-only inspection; the device id settled (`identify`) and its name and
 * type read from the server where they are not configured; when something is missing,
 * ONE `DO` block that creates or upgrades everything in one transaction (then a count of
 * re-keyed rows after an upgrade, and a second inspection to confirm); the device row
 * inserted when absent, and its configured name or type set when they changed (a row the
 * lab made is otherwise used as it is). A role that does not own the tables needs no
 * CREATE or ALTER once the schema is complete. Row-level security that would refuse the
 * uploads is found here, before the first batch.
 *
 * @param exec runs one statement and returns its reply; a lost connection is thrown as
 *   UploadError `transient` and propagates.
 * @throws UploadError `config` (exit 2) when a piece is missing and the role may not add
 *   it (naming each piece and pointing at `deno task upload --print-schema`), when the
 *   role lacks a privilege, USAGE on the schema or a row-level security policy, when the
 *   device's row cannot be made (naming the columns and the INSERT to run), or the DDL
 *   fails; what `identify` throws; `timeout` with sqlstate 57014 and subject `schema` when
 *   the server cancelled a statement (see {@linkcode isSchemaTimeout}); `fatal` for a
 *   reply that is not the inspection's.
 *
 * @example
 * ```ts
 * const result = await ensureSchema((sql) => session.run(sql), {
 *   table: "device_test", device, targetDisplay: "db.example.com:5432/postgres",
 * });
 * ```
 */
export async function ensureSchema(
  exec: (sql: string) => Promise<StatementReply>,
  options: EnsureSchemaOptions,
): Promise<SchemaResult> {
  const inspect = async (device: DeviceInfo, timeout?: string) =>
    parseInspection(
      await run(exec, buildInspectStatement(options.table, device), "inspection", options, timeout),
    );
  let device = options.device;
  let before = await inspect(device);
  const timeout = before.statementTimeout;
  checkSchemaUsage(before, options);
  if (options.identify) {
    const id = await options.identify(
      before,
      (sql) => run(exec, sql, "device lookup", options, timeout),
    );
    if (id !== device.id) {
      device = { ...device, id };
      before = await inspect(device, timeout);
    }
  }
  device = await deviceFromServer(exec, before, options, device);
  const missingBefore = findMissing(before, options.table);
  const refinements = findRefinements(before, options.table);
  const ddl = missingBefore.length > 0 || (refinements.length > 0 && before.table?.owner === true);
  let after = before;
  let rekeyed = 0;
  if (ddl) {
    rekeyed = await createOrUpgrade(exec, before, missingBefore, { ...options, device });
    after = await inspect(device, timeout);
    const still = findMissing(after, options.table);
    if (still.length > 0) {
      throw new UploadError(
        "config",
        `Cannot prepare table ${options.table} on ${options.targetDisplay}: still missing ` +
          `after the schema step: ${still.join("; ")}`,
        { subject: "schema", hint: `Compare with the SQL printed by \`${PRINT_SCHEMA_COMMAND}\`` },
      );
    }
  }
  const plan = planDeviceRow(after, device, options.fromServer ?? {});
  const lacking = missingPrivileges(after, options.table, plan);
  if (lacking.length > 0) {
    throw new UploadError(
      "config",
      `Cannot upload to ${options.table} on ${options.targetDisplay}: role ${after.role} ` +
        `lacks ${lacking.join("; ")}`,
      { subject: "schema", sqlstate: "42501", hint: grantHint(after, options.table) },
    );
  }
  const policies = policiesOf(after);
  checkPolicies(after, policies, plan, options);
  await writeDeviceRow(exec, after, device, plan, { ...options, policies, timeout });
  return {
    created: before.table === null,
    upgraded: before.table !== null && ddl,
    rekeyed,
    missingBefore,
    role: after.role,
    policies,
    device,
    notes: ddl
      ? []
      : refinements.map((r) =>
        `${options.table} lacks ${r}, and role ${after.role} may not add it: the original ` +
        `tools' inserts are refused there (have an owner run the SQL printed by ` +
        `\`${PRINT_SCHEMA_COMMAND}\`)`
      ),
  };
}

/** @throws UploadError `config` when the role may not use the schema. */
function checkSchemaUsage(inspection: SchemaInspection, options: EnsureSchemaOptions): void {
  if (inspection.schemaUsage) return;
  const schema = inspection.schema === null ? "(no schema of search_path)" : inspection.schema;
  throw new UploadError(
    "config",
    `Cannot prepare table ${options.table} on ${options.targetDisplay}: role ` +
      `${inspection.role} has no USAGE privilege on schema ${schema}` +
      (inspection.schemaExists || inspection.schema === null ? "" : " (it does not exist)"),
    { subject: "schema", hint: grantHint(inspection, options.table) },
  );
}

/**
 * Runs the DDL that creates or upgrades the schema.
 *
 * @returns the rows an upgrade re-keyed.
 */
async function createOrUpgrade(
  exec: (sql: string) => Promise<StatementReply>,
  before: SchemaInspection,
  missingBefore: string[],
  options: EnsureSchemaOptions,
): Promise<number> {
  const names = displayNames(options.table);
  const timeout = before.statementTimeout;
  const [ddl] = buildSchemaStatements({ table: options.table, device: options.device });
  const reply = await exec(ddl);
  if (!reply.ok && reply.sqlstate === "42501") {
    throw new UploadError(
      "config",
      `Cannot prepare table ${options.table} on ${options.targetDisplay}: role ` +
        `${before.role} may not add what is missing (${reply.sqlstate}: ${reply.message}); ` +
        `missing: ${missingBefore.join("; ")}`,
      {
        subject: "schema",
        sqlstate: reply.sqlstate,
        hint: `Have an owner of ${names.table} run the SQL printed by ` +
          `\`${PRINT_SCHEMA_COMMAND}\` once (psql or the Supabase SQL editor); the uploader ` +
          `then needs no CREATE or ALTER`,
      },
    );
  }
  if (!reply.ok) throw stepError(reply, "create or upgrade", options, timeout);
  if (before.table === null || !needsRekey(before.table)) return 0;
  const rows = await run(
    exec,
    buildRekeyCountStatement(options.table),
    "re-key count",
    options,
    timeout,
  );
  return parseRekeyReply(rows) ?? 0;
}

/** An example policy granting `command` on `table` to `roleSql`, as SQL text. */
function policyExample(table: string, command: PolicyCommand, roleSql: string): string {
  const clause = command === "INSERT"
    ? "with check (true)"
    : command === "SELECT"
    ? "using (true)"
    : "using (true) with check (true)";
  return `create policy ${quoteIdent(`uploader_${command.toLowerCase()}`)} on ${
    quoteIdent(baseName(table))
  } for ${command.toLowerCase()} to ${roleSql} ${clause}`;
}

/**
 * Refuses, before the first batch, row-level security that would refuse the uploads: the
 * upload table needs permissive INSERT, SELECT and UPDATE policies for the role (an
 * `INSERT ... ON CONFLICT DO UPDATE` checks all three, UPDATE only once a row changes);
 * `devices` needs SELECT, INSERT when the device's row is to be made, UPDATE when it is
 * to be changed.
 *
 * @throws UploadError `config` (42501) naming each table and command that lacks a policy.
 */
function checkPolicies(
  inspection: SchemaInspection,
  policies: readonly TablePolicies[],
  plan: DeviceRowPlan,
  options: EnsureSchemaOptions,
): void {
  const names = displayNames(options.table);
  const needed = new Map<string, PolicyCommand[]>([
    [inspection.table?.name ?? "", ["INSERT", "SELECT", "UPDATE"]],
    [inspection.devices?.name ?? "", [
      "SELECT",
      ...(plan.insert ? ["INSERT" as const] : []),
      ...(plan.name || plan.type ? ["UPDATE" as const] : []),
    ]],
  ]);
  const lacking: [string, PolicyCommand[]][] = [];
  for (const p of policies) {
    const missing = p.missing.filter((c) => needed.get(p.table)?.includes(c));
    if (p.rlsApplies && missing.length > 0) lacking.push([p.table, missing]);
  }
  if (lacking.length === 0) return;
  const roleSql = quoteIdent(inspection.role);
  const examples = lacking.flatMap(([table, commands]) =>
    commands.map((c) => policyExample(table, c, roleSql))
  );
  throw new UploadError(
    "config",
    `Row-level security on ${options.targetDisplay} would refuse the uploads of role ` +
      `${inspection.role}: no permissive policy for ${
        lacking.map(([table, commands]) => `${table}: ${commands.join(", ")}`).join("; ")
      } (an INSERT ... ON CONFLICT DO UPDATE needs INSERT, SELECT and UPDATE on ` +
      `${names.table}; ${names.devices} needs SELECT, and INSERT for this device's first row)`,
    {
      subject: "schema",
      sqlstate: "42501",
      hint: `Add the policies, narrowed to your rows as needed, e.g. ${examples.join("; ")}; ` +
        `the SQL printed by \`${PRINT_SCHEMA_COMMAND} --role ${inspection.role}\` has ` +
        `commented examples`,
    },
  );
}

/** Columns of `devices` the uploader cannot fill: NOT NULL, no default, not its own. */
function requiredDeviceColumns(devices: RelationState | null): string[] {
  if (devices === null) return [];
  const own = new Set(["id", "name", "type"]);
  return Object.entries(devices.columns)
    .filter(([name, c]) => c.notNull && !c.hasDefault && !c.identity && !own.has(name))
    .map(([name]) => name)
    .sort();
}

/** The refusal to make a device row the lab's devices table needs more for. */
function deviceRowError(
  inspection: SchemaInspection,
  device: DeviceInfo,
  columns: string[],
  options: EnsureSchemaOptions,
  server?: StatementError,
): UploadError {
  const names = displayNames(options.table);
  const own = inspection.devices?.columns ?? {};
  const insert: [string, string][] = [["id", sqlLiteral(device.id)]];
  if (own.name) insert.push(["name", sqlLiteral(device.name)]);
  if (own.type) insert.push(["type", sqlLiteral(device.type)]);
  for (const c of columns) insert.push([quoteIdent(c), `<${c}>`]);
  const sql = `insert into ${tableRef(options.table).devicesSql} (${
    insert.map(([c]) => c).join(", ")
  }) values (${insert.map(([, v]) => v).join(", ")})`;
  const plural = columns.length > 1;
  return new UploadError(
    "config",
    `Cannot register device ${device.id} in ${names.devices} on ${options.targetDisplay}: ` +
      `column${plural ? "s" : ""} ${columns.join(", ")} ${plural ? "are" : "is"} NOT NULL ` +
      `without a default, and the uploader has no value for ${plural ? "them" : "it"}` +
      (server ? ` (${server.sqlstate}: ${server.message})` : ""),
    {
      subject: "schema",
      sqlstate: server?.sqlstate,
      hint: `Insert the device's row once, with your values (psql or the Supabase SQL editor): ` +
        `${sql}; the uploader then uses it as it is`,
    },
  );
}

/**
 * Makes the device's row when it is absent, or sets its configured name or type; a row
 * that is there is otherwise left as it is.
 *
 * @throws UploadError `config` naming the columns and the INSERT to run when the devices
 *   table needs values the uploader does not have; as {@linkcode describePermissionError}
 *   for a refusal.
 */
async function writeDeviceRow(
  exec: (sql: string) => Promise<StatementReply>,
  inspection: SchemaInspection,
  device: DeviceInfo,
  plan: DeviceRowPlan,
  options: EnsureSchemaOptions & { policies: TablePolicies[]; timeout: string },
): Promise<void> {
  if (!plan.insert && !plan.name && !plan.type) return;
  const devicesSql = tableRef(options.table).devicesSql;
  const columns = inspection.devices?.columns ?? {};
  const own = {
    name: columns.name !== undefined,
    type: columns.type !== undefined,
    updatedAt: columns.updated_at !== undefined,
  };
  if (plan.insert) {
    const required = requiredDeviceColumns(inspection.devices);
    if (required.length > 0) throw deviceRowError(inspection, device, required, options);
  }
  const sql = plan.insert
    ? deviceInsert(devicesSql, device, own)
    : deviceUpdate(devicesSql, device, plan, own);
  const reply = await exec(sql);
  if (reply.ok) return;
  if (reply.sqlstate === "42501") {
    throw describePermissionError(reply, {
      table: displayNames(options.table).devices,
      targetDisplay: options.targetDisplay,
      role: inspection.role,
      policies: options.policies,
      subject: "schema",
    });
  }
  const column = reply.sqlstate === "23502"
    ? /null value in column "([^"]+)"/.exec(reply.message)?.[1]
    : undefined;
  if (column !== undefined) throw deviceRowError(inspection, device, [column], options, reply);
  throw stepError(reply, "device row", options, options.timeout);
}

/** Context for {@linkcode describePermissionError}. */
export interface PermissionContext {
  /** The table being written, as configured. */
  table: string;
  /** The target as shown to the user. */
  targetDisplay: string;
  /** The connecting role, when known (e.g. {@linkcode SchemaResult.role}). */
  role?: string;
  /** Row-level security as the inspection found it ({@linkcode SchemaResult.policies}). */
  policies?: readonly TablePolicies[];
  /** Subject of the error (batch name, `schema`). */
  subject?: string;
}

/** The unqualified, unquoted last part of a table name. */
function baseName(name: string): string {
  const last = name.split(".").at(-1) ?? name;
  return last.replace(/^"(.*)"$/, "$1").replaceAll('""', '"');
}

/**
 * Turns a 42501 refusal (permission denied, row-level security, must be owner) into a
 * configuration error that says which table, which role, and what to grant or which
 * row-level security policies the upsert needs (INSERT, SELECT and UPDATE: an `INSERT ...
 * ON CONFLICT DO UPDATE` checks all three; those the inspection found missing are named).
 * The message carries the SQLSTATE and the server's words.
 *
 * @example
 * ```ts
 * describePermissionError(
 *   { sqlstate: "42501", message: 'new row violates row-level security policy for table "device_test"' },
 *   { table: "device_test", targetDisplay: "db:5432/postgres", role: "uploader" },
 * ).message;
 * ```
 */
export function describePermissionError(
  reply: { sqlstate: string; message: string },
  ctx: PermissionContext,
): UploadError {
  const device = describeDeviceRefusal(reply, ctx);
  if (device !== undefined) return device;
  const server = `${reply.sqlstate}: ${reply.message}`;
  const named = reply.message.match(/(?:table|relation) "?([^"\s]+)"?/)?.[1];
  const table = named ?? ctx.table;
  const role = ctx.role ? `role ${ctx.role}` : "the connecting role";
  const roleSql = ctx.role ? quoteIdent(ctx.role) : "<role>";
  const options = { subject: ctx.subject, sqlstate: reply.sqlstate };
  const printHint = `the SQL printed by \`${PRINT_SCHEMA_COMMAND}\``;

  if (/row-level security/i.test(reply.message)) {
    const state = ctx.policies?.find((p) => baseName(p.table) === baseName(table));
    const missing = state?.missing ?? [];
    const known = state !== undefined && state.rlsApplies && missing.length > 0;
    const lacking = known ? `; missing for ${role}: ${missing.join(", ")}` : "";
    const examples = (known ? missing : ["INSERT", "SELECT", "UPDATE"] as PolicyCommand[]).map(
      (command) => policyExample(table, command, roleSql),
    );
    return new UploadError(
      "config",
      `Row-level security on ${table} (${ctx.targetDisplay}) refused the upsert of ${role}: ` +
        `it needs permissive INSERT, SELECT and UPDATE policies for that role ` +
        `(INSERT ... ON CONFLICT DO UPDATE checks all three)${lacking} (${server})`,
      {
        ...options,
        hint: `Add the policies, narrowed to your rows as needed, e.g. ${
          examples.join("; ")
        }; ${printHint} has commented examples`,
      },
    );
  }
  if (/must be owner/i.test(reply.message)) {
    return new UploadError(
      "config",
      `${role[0].toUpperCase()}${role.slice(1)} does not own ${table} on ${ctx.targetDisplay} ` +
        `and may not change its schema (${server})`,
      {
        ...options,
        hint: `Have an owner run ${printHint} once; the uploader then needs no CREATE or ALTER`,
      },
    );
  }
  if (/create temporary tables/i.test(reply.message)) {
    return new UploadError(
      "config",
      `${role[0].toUpperCase()}${role.slice(1)} may not create temporary tables on ` +
        `${ctx.targetDisplay}; each batch is copied into one, dropped at its commit (${server})`,
      {
        ...options,
        hint: `Have an owner run \`grant temporary on database <database> to ${roleSql}\``,
      },
    );
  }
  const schema = reply.message.match(/permission denied for schema "?([^"\s]+)"?/)?.[1];
  if (schema !== undefined) {
    return new UploadError(
      "config",
      `Permission denied on schema ${schema} for ${role} on ${ctx.targetDisplay} (${server})`,
      {
        ...options,
        hint: `Have an owner grant usage on schema ${
          quoteIdent(schema)
        } to ${roleSql}, or run ${printHint}`,
      },
    );
  }
  return new UploadError(
    "config",
    `Permission denied writing ${table} on ${ctx.targetDisplay} for ${role} (${server})`,
    {
      ...options,
      hint: `The uploading role needs USAGE on the schema and SELECT, INSERT and UPDATE on ` +
        `${ctx.table} and devices (grant select, insert, update on ${
          quoteIdent(baseName(ctx.table))
        }, devices to ${roleSql}); ${printHint} grants exactly that. With row-level security ` +
        `enabled it also needs INSERT, SELECT and UPDATE policies for that role`,
    },
  );
}

/** Options for {@linkcode printSchemaSql}. */
export interface PrintSchemaOptions {
  /** Target table, as for {@linkcode SchemaOptions.table}. */
  table: string;
  /** The uploading role the grants are for. Default: the placeholder `uploader`. */
  role?: string;
  /**
   * The device that adopts rows without a device_id (and whose row is registered), as an
   * upload by that device would. Without one, such rows go to {@linkcode UNKNOWN_DEVICE}.
   */
  device?: DeviceInfo;
  /** Also print per-device write isolation (lib/fleet/isolation.ts). Default false. */
  isolateDevices?: boolean;
}

/** The placeholder role of {@linkcode printSchemaSql}. */
export const PLACEHOLDER_ROLE = "uploader";

/**
 * The complete, idempotent SQL an owner runs once, in psql (`psql -v ON_ERROR_STOP=1 -f
 * schema.sql`) or Supabase's SQL editor: no psql meta-commands or variables. It checks
 * gen_random_uuid(), creates or upgrades both tables in one transaction (the statement of
 * {@linkcode buildSchemaStatements}), grants the uploading role exactly USAGE on the
 * schema and SELECT, INSERT, UPDATE on the two tables, and shows commented-out row-level
 * security policies for that role. Running it again changes nothing.
 *
 * @throws UploadError `config` for an invalid table or role name or device id.
 *
 * @example
 * ```ts
 * console.log(printSchemaSql({ table: "device_test", role: "lab_uploader" }));
 * ```
 */
export function printSchemaSql(options: PrintSchemaOptions): string {
  const ref = tableRef(options.table);
  const roleName = options.role ?? PLACEHOLDER_ROLE;
  const role = quoteIdent(roleName);
  const placeholder = options.role === undefined;
  if (options.device) checkDevice(options.device);
  const [ddl] = buildSchemaStatements({ table: options.table, device: options.device });
  const t = ref.sql;
  const d = ref.devicesSql;
  const adoption = options.device
    ? `rows without a device_id go to\n--    device ${options.device.id}`
    : `rows without a device_id go to\n--    the placeholder device ${UNKNOWN_DEVICE.id}`;
  const header = [
    `-- Schema of the folder uploader: ${t} and ${d}.`,
    `--`,
    `-- Run it once as the owner of the tables (or a role that may create them), in psql`,
    `-- (psql -v ON_ERROR_STOP=1 -f schema.sql) or in Supabase's SQL editor. Running it again`,
    `-- is harmless: each step checks the catalog first.`,
    `--`,
    `-- 1. One statement (a DO block: one transaction, all of it or none) creates both tables, or`,
    `--    upgrades a table of the original scripts' shape: adds folder_key and image_objects,`,
    `--    replaces the unique key by folder name with unique (device_id, folder_key), keeps`,
    `--    every row (${adoption};`,
    `--    older duplicates of one folder are kept as "<folder> (duplicate <id>)"), and keeps the`,
    `--    table's triggers and CHECK constraints; adds the trigger uploader_folder_key, which`,
    `--    keys inserts without folder_key (the original tools' own) by the folder's name.`,
    `--    It also creates ${healthRef(ref).sql} (one row per device: each run's health, read`,
    `--    by deno task fleet), or adds the columns an older one lacks.`,
    `-- 2. Grants the uploading role what it needs, and nothing else: USAGE on the schema,`,
    `--    SELECT, INSERT and UPDATE on both tables, TEMPORARY on the database (PUBLIC usually`,
    `--    has it already; each batch is copied into a temporary table dropped at its commit,`,
    `--    and without it batches go as single statements at about twice the server's CPU).`,
    `--    It needs no CREATE or ALTER afterwards. The same three on ${healthRef(ref).sql}.`,
    placeholder
      ? `--    "${PLACEHOLDER_ROLE}" is a placeholder: replace it everywhere below with the role the\n` +
        `--    uploader connects as (or print this again with that role), or create it first:\n` +
        `--      create role ${PLACEHOLDER_ROLE} login password '...';`
      : `--    The role is ${role}.`,
    `-- 3. Row-level security: commented-out examples at the end.`,
    ...(options.isolateDevices
      ? [`-- 4. Per-device write isolation (row-level security by device_roles): at the very end.`]
      : []),
  ].join("\n");
  const usage = ref.schema === undefined
    ? `-- USAGE on the schema holding ${t}:\n` +
      `do $uploader$\n` +
      `begin\n` +
      `  execute format('grant usage on schema %I to %I', (select n.nspname\n` +
      `    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace\n` +
      `    where c.oid = to_regclass(${ref.regclass})), ${sqlLiteral(roleName)});\n` +
      `end\n` +
      `$uploader$;`
    : `grant usage on schema ${quoteIdent(ref.schema)} to ${role};`;
  const policy = (table: string, label: string) => {
    const name = (command: string) => quoteIdent(`${roleName}_${label}_${command}`);
    return [
      `-- alter table ${table} enable row level security;`,
      `-- create policy ${name("select")} on ${table} for select to ${role} using (true);`,
      `-- create policy ${name("insert")} on ${table} for insert to ${role} with check (true);`,
      `-- create policy ${name("update")} on ${table} for update to ${role}`,
      `--   using (true) with check (true);`,
    ].join("\n");
  };
  return [
    header,
    "",
    "-- 1. Tables: create, or upgrade in one transaction.",
    ddl,
    "",
    "-- 2. Privileges of the uploading role.",
    usage,
    `grant select, insert, update on table ${t}, ${d} to ${role};`,
    `grant select, insert, update on table ${healthRef(ref).sql} to ${role};`,
    `do $uploader$\n` +
    `begin\n` +
    `  execute format('grant temporary on database %I to %I', current_database(), ` +
    `${sqlLiteral(roleName)});\n` +
    `exception when insufficient_privilege then\n` +
    `  raise notice 'TEMPORARY not granted (%): batches go as single statements', sqlerrm;\n` +
    `end\n` +
    `$uploader$;`,
    "",
    "-- 3. Row-level security (optional). With it enabled, the uploader's",
    "-- INSERT ... ON CONFLICT DO UPDATE needs a permissive policy for each of INSERT, SELECT",
    "-- and UPDATE on each table; without all three it is refused. Narrow the conditions as",
    "-- you need (e.g. to the device ids this role uploads for).",
    policy(t, ref.name),
    policy(d, "devices"),
    policy(healthRef(ref).sql, "health"),
    "",
    ...(options.isolateDevices ? [isolationSection(options.table, roleName)] : []),
  ].join("\n");
}
