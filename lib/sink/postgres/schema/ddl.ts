/**
 * The schema's DDL: ONE `DO` block ({@linkcode buildSchemaStatements}) that creates
 * `devices`, the health table and the upload table, or upgrades an existing upload table
 * from the original scripts' shape, in one transaction. The upload table's columns, their
 * types, NOT NULL and defaults come from its declaration (lib/sink/columns.ts). No
 * statement depends on session state (no `SET`, no temp tables, no transaction left open).
 *
 * @module
 */

import { buildHealthDdl } from "../../../fleet/health.ts";
import { type DeviceInfo, type TableColumns, UPLOAD_COLUMNS } from "../../columns.ts";
import { checkDevice, sqlLiteral, type TableRef, tableRef } from "../quote.ts";

/** Options for {@linkcode buildSchemaStatements}. */
export interface SchemaOptions {
  /** Target table, optionally schema-qualified (`schema.table`); neither part may hold a dot. */
  table: string;
  /**
   * This device: its row is upserted in `devices`, and it adopts the rows whose device_id
   * is null. Without one, such rows go to {@linkcode UNKNOWN_DEVICE}.
   */
  device?: DeviceInfo;
  /** The upload table's columns. Default: `device_test`'s. */
  columns?: TableColumns;
}

/** The nil UUID: owner of the rows that had no device_id when no device adopts them. */
export const UNKNOWN_DEVICE: DeviceInfo = {
  id: "00000000-0000-0000-0000-000000000000",
  name: "unknown (rows written without a device id)",
  type: "unknown",
};

/**
 * The upload table's columns as an existing table gets them added: `[name, type]`, nullable,
 * with their defaults.
 */
export function upgradeColumns(columns: TableColumns): [string, string][] {
  return columns.columns.map((
    c,
  ) => [c.name, c.default ? `${c.type} default ${c.default}` : c.type]);
}

/** The NOT NULL columns: the upgrade's data pass fills them, then sets NOT NULL. */
export function notNullColumns(columns: TableColumns): string[] {
  return columns.columns.filter((c) => c.notNull).map((c) => c.name);
}

/** `[name, default]` of the columns with a default: the upgrade sets one where it is missing. */
export function columnDefaults(columns: TableColumns): [string, string][] {
  return columns.columns.filter((c) => c.default !== undefined).map((c) => [c.name, c.default!]);
}

/**
 * The column definitions of CREATE TABLE, one per line, and the unique key: type, primary
 * key (else NOT NULL), the reference to `devices`, the default.
 */
export function createColumns(columns: TableColumns, devicesSql: string, indent: string): string {
  const lines = columns.columns.map((c) => {
    let line = `${c.name} ${c.type}`;
    if (c.primaryKey) line += " primary key";
    else if (c.notNull) line += " not null";
    if (c.references === "devices") line += ` references ${devicesSql} (id)`;
    if (c.default !== undefined) line += ` default ${c.default}`;
    return line;
  });
  lines.push(`unique (${columns.key.join(", ")})`);
  return lines.map((line) => `${indent}${line}`).join(",\n");
}

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
function addMissingColumns(
  rel: string,
  columns: ReadonlyArray<readonly [string, string]>,
): string {
  return `  for r in select v.name, v.type from (values\n` +
    `      ${valuesList(columns, "      ")}\n` +
    `    ) v(name, type) where not exists (select 1 from pg_catalog.pg_attribute a\n` +
    `      where a.attrelid = ${rel} and a.attname = v.name and a.attnum > 0 and not a.attisdropped)\n` +
    `  loop\n` +
    `    execute format('alter table %s add column %I %s', ${rel}, r.name, r.type);\n` +
    `  end loop;`;
}

/**
 * PL/pgSQL: this device's row in `devices` unless it is there. A devices table with NOT NULL
 * columns of its own refuses it: the row is then left to the lab (`ensureSchema` names the
 * INSERT to run), and the rest of the schema step goes on.
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
  return [schemaBlock(ref, options.device, options.columns ?? UPLOAD_COLUMNS)];
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

/** The variables of the schema's `DO` block. */
const DECLARE = `  t regclass;\n  d regclass;\n  att_device smallint;\n  att_key smallint;\n` +
  `  att_name smallint;\n  r record;\n  p integer;\n  paused text[] := '{}';\n` +
  `  paused_always boolean[] := '{}';\n  nsp name;\n  id_uuid boolean;`;

function schemaBlock(ref: TableRef, device: DeviceInfo | undefined, columns: TableColumns): string {
  const body = `  -- One schema change at a time; the lock ends with this transaction.\n` +
    `  perform pg_advisory_xact_lock(${SCHEMA_LOCK_KEY});\n` +
    `  if to_regprocedure('gen_random_uuid()') is null then\n` +
    `    create extension if not exists pgcrypto;\n` +
    `  end if;\n` +
    `${devicesPart(ref, device)}` +
    `${buildHealthDdl(ref)}\n` +
    `${createTablePart(ref, columns)}\n` +
    upgradePart(ref, device, columns);
  return doBlock(DECLARE, body);
}

/** PL/pgSQL: `devices` created, or its missing columns and key added; this device's row. */
function devicesPart(ref: TableRef, device: DeviceInfo | undefined): string {
  const D = ref.devicesSql;
  return `  d := to_regclass(${ref.devicesRegclass});\n` +
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
}

/** PL/pgSQL: the upload table created in its current shape when missing (then done). */
function createTablePart(ref: TableRef, columns: TableColumns): string {
  return `  t := to_regclass(${ref.regclass});\n` +
    `  if t is null then\n` +
    `    create table ${ref.sql} (\n` +
    `${createColumns(columns, ref.devicesSql, "      ")}\n` +
    `    );\n` +
    `    t := to_regclass(${ref.regclass});\n` +
    folderKeyTrigger() +
    `    return;\n` +
    `  end if;`;
}

/** PL/pgSQL: the unique indexes of `t` matching `where`, with the constraint each backs. */
function keyIndexes(where: string): string {
  return `select i.indexrelid::regclass::text as idx, c.conname from pg_catalog.pg_index i\n` +
    `      left join pg_catalog.pg_constraint c on c.conindid = i.indexrelid and c.conrelid = t\n` +
    `        and c.contype = 'u'\n` +
    `      where i.indrelid = t and i.indisunique and not i.indisprimary and ${where}`;
}

/** PL/pgSQL: drops the constraint or index of loop record `r`. */
const DROP_INDEX = `    if r.conname is not null then\n` +
  `      execute format('alter table %s drop constraint %I', t, r.conname);\n` +
  `    else\n` +
  `      execute format('drop index %s', r.idx);\n` +
  `    end if;`;

/** PL/pgSQL condition: column attnum `att` is a key column of index `i`. */
function inKey(att: string): string {
  return `exists (select 1 from generate_series(0, i.indnkeyatts - 1) k where i.indkey[k] = ${att})`;
}

/**
 * PL/pgSQL: an existing upload table upgraded: missing columns added, unique keys by folder
 * name dropped, the rows' data pass when the key or a NOT NULL is missing, then defaults,
 * NOT NULL, the primary key, the foreign key, the unique key and the folder_key trigger.
 */
function upgradePart(ref: TableRef, device: DeviceInfo | undefined, columns: TableColumns): string {
  const t = ref.sql;
  const nullable = notNullColumns(columns).map(sqlLiteral).join(", ");
  return `${addMissingColumns("t", upgradeColumns(columns))}\n` +
    `${attnumInto("att_device", "t", "device_id")}\n` +
    `${attnumInto("att_key", "t", "folder_key")}\n` +
    `${attnumInto("att_name", "t", "folder_name")}\n` +
    `  -- Unique keys by folder name (the original scripts' (folder_name, device_id)) refuse two\n` +
    `  -- folders of one name in different places, and the adoption of rows below.\n` +
    `  for r in ${keyIndexes(`${inKey("att_name")} and not ${inKey("att_key")}`)} loop\n` +
    `${DROP_INDEX}\n` +
    `  end loop;\n` +
    `  if not ${KEY_USABLE} or exists (select 1 from pg_catalog.pg_attribute a\n` +
    `      where a.attrelid = t and a.attname in (${nullable}) and a.attnum > 0\n` +
    `      and not a.attisdropped and not a.attnotnull) then\n` +
    dataPass(ref, device) +
    `  end if;\n` +
    `  for r in select v.name, v.value from (values\n` +
    `      ${valuesList(columnDefaults(columns), "      ")}\n` +
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
    `    alter table ${t} add foreign key (device_id) references ${ref.devicesSql} (id);\n` +
    `  end if;\n` +
    `  if not ${KEY_USABLE} then\n` +
    `    alter table ${t} add unique (${columns.key.join(", ")});\n` +
    `  end if;\n` +
    folderKeyTrigger().trimEnd();
}

/**
 * PL/pgSQL: the upgrade's data pass, under an exclusive lock: the key (device_id,
 * folder_key) dropped while rows are re-keyed, the device ids in use registered, the table's
 * own triggers paused, the rows filled and re-keyed ({@linkcode rekeyRows}), the triggers
 * resumed.
 */
function dataPass(ref: TableRef, device: DeviceInfo | undefined): string {
  const t = ref.sql;
  const D = ref.devicesSql;
  const adopting = device ?? UNKNOWN_DEVICE;
  const dev = `${sqlLiteral(adopting.id)}::uuid`;
  const keepName = device
    ? (column: "device_name" | "device_type", value: string) =>
      `case when x.device_id is null then coalesce(x.${column}, ${
        sqlLiteral(value)
      }) else x.${column} end`
    : (column: "device_name" | "device_type") => `x.${column}`;
  return `    lock table ${t} in access exclusive mode;\n` +
    `    -- Uniqueness is checked row by row: a key present now would refuse the re-keying's\n` +
    `    -- intermediate states. It is added again below.\n` +
    `    for r in ${keyIndexes(`${inKey("att_device")} and ${inKey("att_key")}`)} loop\n` +
    `  ${DROP_INDEX.replaceAll("\n", "\n  ")}\n` +
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
    `    end loop;\n`;
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
