/**
 * The schema inspection: ONE read-only statement ({@linkcode buildInspectStatement}) that
 * reads the catalog and returns one line of JSON: the role, the schema and its privileges,
 * and for the upload table and `devices` their columns, keys, privileges and row-level
 * security; parsed by {@linkcode parseInspection}.
 *
 * @module
 */

import { UploadError } from "../../../core/errors.ts";
import type { DeviceInfo } from "../../columns.ts";
import { checkDevice, sqlLiteral, tableRef } from "../quote.ts";
import { FOLDER_KEY_FUNCTION } from "./ddl.ts";

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
