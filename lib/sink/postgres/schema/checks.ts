/**
 * The schema checks: what the inspection found missing for uploads to work
 * ({@linkcode findMissing}, from the table's column declaration), the privileges and the
 * row-level security policies the role lacks, each refused before the first batch with
 * a configuration error that says what to grant or run.
 *
 * @module
 */

import { UploadError } from "../../../core/errors.ts";
import { SQLSTATE } from "../../../core/policy.ts";
import { type TableColumns, UPLOAD_COLUMNS } from "../../columns.ts";
import { quoteIdent, tableRef } from "../quote.ts";
import type { DeviceRowPlan } from "./devices.ts";
import type { RelationState, SchemaInspection, UniqueState } from "./inspect.ts";
import { displayNames, policyExample, PRINT_SCHEMA_COMMAND } from "./permissions.ts";
import type { StepContext } from "./step.ts";

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

function sameColumns(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join("\0") === [...b].sort().join("\0");
}

/** The table has a usable unique key on exactly the upsert's key, {device_id, folder_key}. */
function hasUpsertKey(rel: RelationState, columns: TableColumns = UPLOAD_COLUMNS): boolean {
  return rel.unique.some((u) => u.usable && sameColumns(u.columns, columns.key));
}

/** Unique keys by folder name: key includes folder_name but not folder_key (primary keys aside). */
function legacyKeys(rel: RelationState): UniqueState[] {
  return rel.unique.filter((u) =>
    !u.primary && u.columns.includes("folder_name") && !u.columns.includes("folder_key")
  );
}

/** Rows may need the upgrade's data pass: no upsert key, or a key column that may be null. */
export function needsRekey(rel: RelationState): boolean {
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
export function findMissing(
  inspection: SchemaInspection,
  table: string,
  columns: TableColumns = UPLOAD_COLUMNS,
): string[] {
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
  for (const { name } of columns.columns) {
    if (!rel.columns[name]) missing.push(`column ${name} of ${names.table}`);
  }
  const id = rel.columns.id;
  if (id && !id.hasDefault && !id.identity) {
    missing.push(
      id.type === "uuid"
        ? `default gen_random_uuid() of ${names.table}.id`
        : `a default of ${names.table}.id (of type ${id.type}: make it an identity column)`,
    );
  }
  for (const column of columns.key) {
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
  if (!hasUpsertKey(rel, columns)) {
    missing.push(`unique key (${columns.key.join(", ")}) on ${names.table}`);
  }
  for (const c of columns.columns.filter((c) => c.references === "devices")) {
    const fk = rel.foreignKeys.some((f) => f.referencesDevices && sameColumns(f.columns, [c.name]));
    if (!fk) {
      missing.push(`foreign key ${names.table} (${c.name}) references ${names.devices} (id)`);
    }
  }
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

/** Pieces uploads work without, added when the role owns the table (else a warning). */
export function findRefinements(inspection: SchemaInspection, table: string): string[] {
  const rel = inspection.table;
  if (rel === null || rel.folderKeyTrigger || !rel.columns.folder_key) return [];
  return [
    `the trigger giving inserts without folder_key (the original tools') their folder's ` +
    `name as key, on ${table}`,
  ];
}

/** Privileges the role lacks for uploading, in words, e.g. `INSERT on device_test`. */
export function missingPrivileges(
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

export function grantHint(inspection: SchemaInspection, table: string): string {
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

/** @throws UploadError `config` when the role may not use the schema. */
export function checkSchemaUsage(inspection: SchemaInspection, options: StepContext): void {
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
 * Refuses, before the first batch, row-level security that would refuse the uploads: the
 * upload table needs permissive INSERT, SELECT and UPDATE policies for the role (an
 * `INSERT ... ON CONFLICT DO UPDATE` checks all three, UPDATE only once a row changes);
 * `devices` needs SELECT, INSERT when the device's row is to be made, UPDATE when it is
 * to be changed.
 *
 * @throws UploadError `config` (42501) naming each table and command that lacks a policy.
 */
export function checkPolicies(
  inspection: SchemaInspection,
  policies: readonly TablePolicies[],
  plan: DeviceRowPlan,
  options: StepContext,
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
      sqlstate: SQLSTATE.permission,
      hint: `Add the policies, narrowed to your rows as needed, e.g. ${examples.join("; ")}; ` +
        `the SQL printed by \`${PRINT_SCHEMA_COMMAND} --role ${inspection.role}\` has ` +
        `commented examples`,
    },
  );
}
