/**
 * This device's row in `devices`: what to do to it (insert it, or set its configured name
 * or type), the statements, the name and type read from the server where they are not
 * configured, and the error for a devices table that needs values the uploader has not.
 *
 * @module
 */

import { UploadError } from "../../../core/errors.ts";
import { isNotNullRefusal, isPermissionRefusal } from "../../../core/policy.ts";
import type { DeviceInfo } from "../../columns.ts";
import type { StatementError } from "../psql.ts";
import { quoteIdent, sqlLiteral, tableRef } from "../quote.ts";
import type { TablePolicies } from "./checks.ts";
import type { RelationState, SchemaInspection } from "./inspect.ts";
import { describePermissionError, displayNames } from "./permissions.ts";
import { type Exec, runStep, type StepContext, stepError } from "./step.ts";

/** What the device row's steps need: the target, and which values the server decides. */
export interface DeviceContext extends StepContext {
  /** Name and type not configured: what the server holds for this device wins. */
  fromServer?: { name?: boolean; type?: boolean };
}

/** Which of this tool's columns the devices table has. */
export interface DeviceColumns {
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

/** What the device's row in `devices` needs: created, or its configured name or type set. */
export interface DeviceRowPlan {
  insert: boolean;
  name: boolean;
  type: boolean;
}

/**
 * What to do to the device's row: insert it when absent; else set the configured name or
 * type where the row holds another (a value taken from the server never rewrites it).
 */
export function planDeviceRow(
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
export async function deviceFromServer(
  exec: Exec,
  inspection: SchemaInspection,
  options: DeviceContext,
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
    const rows = await runStep(exec, sql, "device name", options, inspection.statementTimeout);
    const latest = rows.length === 1 ? JSON.parse(rows[0]) as Record<string, unknown> : null;
    name ??= textOf(latest?.name);
    type ??= textOf(latest?.type);
  }
  return { id: device.id, name: name ?? device.name, type: type ?? device.type };
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
  options: DeviceContext,
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
export async function writeDeviceRow(
  exec: Exec,
  inspection: SchemaInspection,
  device: DeviceInfo,
  plan: DeviceRowPlan,
  options: StepContext & { policies: TablePolicies[]; timeout: string },
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
  if (isPermissionRefusal(reply.sqlstate)) {
    throw describePermissionError(reply, {
      table: displayNames(options.table).devices,
      targetDisplay: options.targetDisplay,
      role: inspection.role,
      policies: options.policies,
      subject: "schema",
    });
  }
  const column = isNotNullRefusal(reply.sqlstate)
    ? /null value in column "([^"]+)"/.exec(reply.message)?.[1]
    : undefined;
  if (column !== undefined) throw deviceRowError(inspection, device, [column], options, reply);
  throw stepError(reply, "device row", options, options.timeout);
}
