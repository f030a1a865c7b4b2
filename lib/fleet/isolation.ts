/**
 * Per-device write isolation: row-level security under which a role may insert and update
 * only the rows of the devices assigned to it, in the upload table, `devices` and the
 * health table. The owner fills the mapping, `device_roles (role_name, device_id)`, one
 * row per role and device; `--print-schema --isolate-devices` prints the SQL
 * ({@linkcode buildIsolationSql}).
 *
 * For each of the three tables, two policies FOR ALL TO PUBLIC:
 *
 * - a permissive one: a role listed in `device_roles` may see and write the rows of its
 *   devices;
 * - a restrictive one: a listed role may see and write nothing else, whatever other
 *   permissive policies say (one written earlier for the whole uploading role, say). A
 *   role not listed is left to the other policies.
 *
 * A listed role writing another device's row is refused by the server itself with 42501
 * and a message naming the role, the device and the devices it has (a function the
 * policies call only then), so any client gets the reason, and the uploader turns it into
 * a configuration error with the fix ({@linkcode describeDeviceRefusal}). The list of a
 * role's devices is read once per statement (an uncorrelated subquery), so the policies
 * cost a hash probe per row. Reading `device_roles` is granted to PUBLIC, and its own
 * policy lets each role see only its own rows.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import { isPermissionRefusal } from "../core/policy.ts";
import { healthRef } from "./health.ts";
import { quoteIdent, sqlLiteral, tableRef } from "../sink/postgres/quote.ts";

/** The mapping table's own name; it lives in the upload table's schema. */
export const DEVICE_ROLES_TABLE = "device_roles";

/** The function the policies call to refuse a write, naming the device. */
export const REFUSE_FUNCTION = "uploader_refuse_device";

/** The policies' names on each table. */
export const ISOLATION_POLICIES = {
  permissive: "device_isolation",
  restrictive: "device_isolation_guard",
} as const;

/** Quoted names of the objects of the isolation in the schema of `table`. */
interface IsolationNames {
  /** The mapping table, quoted. */
  roles: string;
  /** The mapping table for messages. */
  rolesDisplay: string;
  /** The refusal function, quoted. */
  refuse: string;
  /** The three tables with the column holding the device id. */
  tables: { sql: string; column: string }[];
}

function isolationNames(table: string): IsolationNames {
  const ref = tableRef(table);
  const prefix = ref.schema === undefined ? "" : `${quoteIdent(ref.schema)}.`;
  return {
    roles: `${prefix}${quoteIdent(DEVICE_ROLES_TABLE)}`,
    rolesDisplay: ref.schema === undefined
      ? DEVICE_ROLES_TABLE
      : `${ref.schema}.${DEVICE_ROLES_TABLE}`,
    refuse: `${prefix}${quoteIdent(REFUSE_FUNCTION)}`,
    tables: [
      { sql: ref.sql, column: "device_id" },
      { sql: ref.devicesSql, column: "id" },
      { sql: healthRef(table).sql, column: "device_id" },
    ],
  };
}

/** The two policies of one table, as statements (dropped first, so a re-run updates them). */
function tablePolicies(names: IsolationNames, t: { sql: string; column: string }): string[] {
  const col = quoteIdent(t.column);
  const mine = `array(select r.device_id from ${names.roles} r where r.role_name = current_user)`;
  const listed = `cardinality(${mine}) > 0`;
  const refuse = `${names.refuse}(${col}, ${mine})`;
  const permissive = quoteIdent(ISOLATION_POLICIES.permissive);
  const restrictive = quoteIdent(ISOLATION_POLICIES.restrictive);
  return [
    `alter table ${t.sql} enable row level security;`,
    `drop policy if exists ${permissive} on ${t.sql};`,
    `create policy ${permissive} on ${t.sql} as permissive for all to public\n` +
    `    using (${col} = any (${mine}))\n` +
    `    with check (${col} = any (${mine}) or (${listed} and ${refuse}));`,
    `drop policy if exists ${restrictive} on ${t.sql};`,
    `create policy ${restrictive} on ${t.sql} as restrictive for all to public\n` +
    `    using (not ${listed} or ${col} = any (${mine}))\n` +
    `    with check (not ${listed} or ${col} = any (${mine}) or ${refuse});`,
  ];
}

/**
 * The SQL that turns per-device isolation on (or updates it), as ONE `DO` block: one
 * transaction, so the tables are never left with row-level security on and the policies
 * half made. Run after the schema SQL (the tables must exist); running it again is
 * harmless. It creates `device_roles` when missing (with row-level security: each role
 * sees its own rows; SELECT for PUBLIC), the refusal function, and the two policies on
 * each of the three tables.
 *
 * @throws UploadError `config` for an invalid table name.
 *
 * @example
 * ```ts
 * const sql = buildIsolationSql("device_test"); // do $isolate$ ...
 * ```
 */
export function buildIsolationSql(table: string): string {
  if (/\$(refuse|isolate)\$/.test(table)) {
    // The dollar quotes below would end inside the name.
    throw new UploadError("config", `Invalid table name for the isolation SQL: ${table}`);
  }
  const names = isolationNames(table);
  const own = quoteIdent("device_roles_own");
  const message = `format('Row-level security: role %s may not write rows of device %s; ` +
    `its devices in ${
      names.rolesDisplay.replaceAll("'", "''").replaceAll("%", "%%")
    }: %s', current_user, device, ` +
    `coalesce(nullif(array_to_string(assigned, ', '), ''), 'none'))`;
  const statements = [
    `if to_regclass(${sqlLiteral(names.roles)}) is null then`,
    `  create table ${names.roles} (`,
    `    role_name text not null,`,
    `    device_id uuid not null,`,
    `    primary key (role_name, device_id)`,
    `  );`,
    `end if;`,
    `alter table ${names.roles} enable row level security;`,
    `drop policy if exists ${own} on ${names.roles};`,
    `create policy ${own} on ${names.roles} for select to public using (role_name = current_user);`,
    `grant select on table ${names.roles} to public;`,
    `create or replace function ${names.refuse}(device uuid, assigned uuid[]) returns boolean`,
    `  language plpgsql set search_path = pg_catalog as $refuse$`,
    `begin`,
    `  raise exception using errcode = 'insufficient_privilege', message = ${message},`,
    `    hint = ${
      sqlLiteral(
        `Assign the device to the role in ${names.rolesDisplay} (role_name, device_id), ` +
          "or check the device id the client uses",
      )
    };`,
    `end`,
    `$refuse$;`,
    `grant execute on function ${names.refuse}(uuid, uuid[]) to public;`,
    ...names.tables.flatMap((t) => tablePolicies(names, t)),
  ];
  const body = statements.map((line) => `  ${line.replaceAll("\n", "\n  ")}`).join("\n");
  return `do $isolate$\nbegin\n${body}\nend\n$isolate$;`;
}

/** Context of a refused write, for {@linkcode describeDeviceRefusal}. */
export interface RefusalContext {
  /** The target as shown to the user. */
  targetDisplay: string;
  /** Subject of the error (batch name, `schema`). */
  subject?: string;
}

/**
 * The configuration error for a write the isolation refused (the server's message from
 * the refusal function), naming the role, the device and the devices the role has, with
 * the two ways out; undefined for any other refusal.
 *
 * @example
 * ```ts
 * describeDeviceRefusal({
 *   sqlstate: "42501",
 *   message: "Row-level security: role lab_a may not write rows of device 2b1c...; its devices in device_roles: 6f1c...",
 * }, { targetDisplay: "db:5432/postgres" })?.message;
 * ```
 */
export function describeDeviceRefusal(
  reply: { sqlstate: string; message: string },
  ctx: RefusalContext,
): UploadError | undefined {
  const match = reply.message.match(
    /role (.+) may not write rows of device ([0-9a-fA-F-]{36}); its devices in (\S+): (.*)$/s,
  );
  if (!isPermissionRefusal(reply.sqlstate) || match === null) return undefined;
  const [, role, device, table, assigned] = match;
  const has = assigned.trim() === "none" ? "no device" : `only ${assigned.trim()}`;
  return new UploadError(
    "config",
    `Role ${role} may not write the rows of device ${device} on ${ctx.targetDisplay}: ` +
      `${table} assigns it ${has} (${reply.sqlstate}: ${reply.message})`,
    {
      subject: ctx.subject,
      sqlstate: reply.sqlstate,
      hint: `If this device is ${device}, have the owner assign it: insert into ${table} ` +
        `(role_name, device_id) values (${sqlLiteral(role)}, '${device}'); otherwise set ` +
        `DEVICE_ID to this device's own id (a copied SD card carries another device's id)`,
    },
  );
}

/**
 * The part of `--print-schema --isolate-devices` after the schema and grants: what the
 * isolation does, how to give each device its own role, and {@linkcode buildIsolationSql}.
 *
 * @param role the uploading (group) role the schema SQL granted to.
 * @throws UploadError `config` for an invalid table or role name.
 */
export function isolationSection(table: string, role: string): string {
  const names = isolationNames(table);
  const group = quoteIdent(role);
  const [upload, devices, health] = names.tables.map((t) => t.sql);
  return [
    `-- 4. Per-device write isolation. Row-level security on ${upload}, ${devices} and`,
    `--    ${health}: a role listed in ${names.roles} may see, insert and update only the rows of`,
    `--    the devices listed for it there; any other write is refused (42501) with a message`,
    `--    naming the role and the device. Roles not listed there are left to other policies.`,
    `--    One statement (one transaction); running it again is harmless.`,
    `--`,
    `--    Then give each device a login role of its own, a member of ${group}, and its device id:`,
    `--      create role lab_pi7 login password '...' in role ${group};`,
    `--      insert into ${names.roles} (role_name, device_id)`,
    `--        values ('lab_pi7', '<the DEVICE_ID of that device>');`,
    `--    A role may be listed with several devices. Revoke a device by deleting its row.`,
    `--    Roles other than the owner that read these tables (a dashboard, deno task fleet)`,
    `--    need a policy of their own once row-level security is on, e.g.`,
    `--      create policy fleet_read on ${health} for select to monitor using (true);`,
    buildIsolationSql(table),
    "",
  ].join("\n");
}
