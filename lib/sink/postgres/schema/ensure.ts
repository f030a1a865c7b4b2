/**
 * {@linkcode ensureSchema}: the remote schema made ready before the first batch, doing as
 * little as it can. ONE read-only inspection; when the schema is complete that is all, plus
 * the device row's upsert when the row is absent or stale, so a role that does not own the
 * tables needs no CREATE or ALTER. When a piece is missing, ONE `DO` block creates or
 * upgrades everything in one transaction, all or nothing, also through a transaction pooler.
 *
 * @module
 */

import { UploadError } from "../../../core/errors.ts";
import { isPermissionRefusal, SQLSTATE } from "../../../core/policy.ts";
import { type DeviceInfo, type TableColumns, UPLOAD_COLUMNS } from "../../columns.ts";
import {
  checkPolicies,
  checkSchemaUsage,
  findMissing,
  findRefinements,
  grantHint,
  missingPrivileges,
  needsRekey,
  policiesOf,
  type TablePolicies,
} from "./checks.ts";
import { buildRekeyCountStatement, buildSchemaStatements, parseRekeyReply } from "./ddl.ts";
import { deviceFromServer, type DeviceRowPlan, planDeviceRow, writeDeviceRow } from "./devices.ts";
import { buildInspectStatement, parseInspection, type SchemaInspection } from "./inspect.ts";
import { displayNames, PRINT_SCHEMA_COMMAND } from "./permissions.ts";
import { type Exec, runStep, type StepContext, stepError } from "./step.ts";

/** Options for {@linkcode ensureSchema}. */
export interface EnsureSchemaOptions extends StepContext {
  /**
   * This device. Its name and type are the configured ones, or (see `fromServer`) only what
   * to use when the server holds none.
   */
  device: DeviceInfo;
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
  /** The upload table's columns. Default: `device_test`'s. */
  columns?: TableColumns;
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
  /** Row-level security of the upload table and `devices`, for `describePermissionError`. */
  policies: TablePolicies[];
  /** The device as the run uses it: the settled id, the name and type from the server or config. */
  device: DeviceInfo;
  /** What the run should warn about (a piece the role may not add but uploads do without). */
  notes: string[];
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
 *   the server cancelled a statement (see `isSchemaTimeout`); `fatal` for a
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
  exec: Exec,
  options: EnsureSchemaOptions,
): Promise<SchemaResult> {
  const columns = options.columns ?? UPLOAD_COLUMNS;
  const inspect = async (device: DeviceInfo, timeout?: string) =>
    parseInspection(
      await runStep(
        exec,
        buildInspectStatement(options.table, device),
        "inspection",
        options,
        timeout,
      ),
    );
  let device = options.device;
  let before = await inspect(device);
  const timeout = before.statementTimeout;
  checkSchemaUsage(before, options);
  if (options.identify) {
    const id = await options.identify(
      before,
      (sql) => runStep(exec, sql, "device lookup", options, timeout),
    );
    if (id !== device.id) {
      device = { ...device, id };
      before = await inspect(device, timeout);
    }
  }
  device = await deviceFromServer(exec, before, options, device);
  const missingBefore = findMissing(before, options.table, columns);
  const refinements = findRefinements(before, options.table);
  const ddl = missingBefore.length > 0 || (refinements.length > 0 && before.table?.owner === true);
  let after = before;
  let rekeyed = 0;
  if (ddl) {
    rekeyed = await createOrUpgrade(exec, before, missingBefore, { ...options, device });
    after = await inspect(device, timeout);
    checkComplete(findMissing(after, options.table, columns), options);
  }
  const plan = planDeviceRow(after, device, options.fromServer ?? {});
  checkPrivileges(after, plan, options);
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
    notes: ddl ? [] : refinementNotes(refinements, after.role, options.table),
  };
}

/** @throws UploadError `config` naming what the schema step left missing. */
function checkComplete(still: string[], options: StepContext): void {
  if (still.length === 0) return;
  throw new UploadError(
    "config",
    `Cannot prepare table ${options.table} on ${options.targetDisplay}: still missing ` +
      `after the schema step: ${still.join("; ")}`,
    { subject: "schema", hint: `Compare with the SQL printed by \`${PRINT_SCHEMA_COMMAND}\`` },
  );
}

/** @throws UploadError `config` (42501) naming the privileges the role lacks for uploading. */
function checkPrivileges(
  inspection: SchemaInspection,
  plan: DeviceRowPlan,
  options: StepContext,
): void {
  const lacking = missingPrivileges(inspection, options.table, plan);
  if (lacking.length === 0) return;
  throw new UploadError(
    "config",
    `Cannot upload to ${options.table} on ${options.targetDisplay}: role ${inspection.role} ` +
      `lacks ${lacking.join("; ")}`,
    {
      subject: "schema",
      sqlstate: SQLSTATE.permission,
      hint: grantHint(inspection, options.table),
    },
  );
}

/** The warnings for pieces uploads work without that the role may not add. */
function refinementNotes(refinements: string[], role: string, table: string): string[] {
  return refinements.map((r) =>
    `${table} lacks ${r}, and role ${role} may not add it: the original ` +
    `tools' inserts are refused there (have an owner run the SQL printed by ` +
    `\`${PRINT_SCHEMA_COMMAND}\`)`
  );
}

/**
 * Runs the DDL that creates or upgrades the schema.
 *
 * @returns the rows an upgrade re-keyed.
 */
async function createOrUpgrade(
  exec: Exec,
  before: SchemaInspection,
  missingBefore: string[],
  options: EnsureSchemaOptions,
): Promise<number> {
  const names = displayNames(options.table);
  const timeout = before.statementTimeout;
  const [ddl] = buildSchemaStatements({
    table: options.table,
    device: options.device,
    columns: options.columns,
  });
  const reply = await exec(ddl);
  if (!reply.ok && isPermissionRefusal(reply.sqlstate)) {
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
  const rows = await runStep(
    exec,
    buildRekeyCountStatement(options.table),
    "re-key count",
    options,
    timeout,
  );
  return parseRekeyReply(rows) ?? 0;
}
