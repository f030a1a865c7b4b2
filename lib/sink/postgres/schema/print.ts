/**
 * `--print-schema`: the complete, idempotent SQL an owner runs once (the schema's DDL, the
 * grants of a least-privilege role, commented row-level security examples, and with
 * `--isolate-devices` the per-device write isolation).
 *
 * @module
 */

import { healthRef } from "../../../fleet/health.ts";
import { isolationSection } from "../../../fleet/isolation.ts";
import type { DeviceInfo } from "../../columns.ts";
import { checkDevice, quoteIdent, sqlLiteral, type TableRef, tableRef } from "../quote.ts";
import { buildSchemaStatements, UNKNOWN_DEVICE } from "./ddl.ts";

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
  if (options.device) checkDevice(options.device);
  const [ddl] = buildSchemaStatements({ table: options.table, device: options.device });
  const t = ref.sql;
  const d = ref.devicesSql;
  const header = printHeader(ref, options, role);
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

/** The comment at the top of the owner's SQL: what each part does, for which role. */
function printHeader(ref: TableRef, options: PrintSchemaOptions, role: string): string {
  const t = ref.sql;
  const d = ref.devicesSql;
  const placeholder = options.role === undefined;
  const adoption = options.device
    ? `rows without a device_id go to\n--    device ${options.device.id}`
    : `rows without a device_id go to\n--    the placeholder device ${UNKNOWN_DEVICE.id}`;
  return [
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
}
