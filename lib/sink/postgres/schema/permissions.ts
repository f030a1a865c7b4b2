/**
 * Refusals explained: a 42501 (permission denied, row-level security, must be owner) as a
 * configuration error naming the table, the role and what to grant or which policies the
 * upsert needs.
 *
 * @module
 */

import { UploadError } from "../../../core/errors.ts";
import { describeDeviceRefusal } from "../../../fleet/isolation.ts";
import { quoteIdent, tableRef } from "../quote.ts";
import type { PolicyCommand, TablePolicies } from "./checks.ts";

/** Where the hints of this module send the user for the owner's SQL. */
export const PRINT_SCHEMA_COMMAND = "deno task upload --print-schema";

/** Names for messages: the table as configured and the devices table beside it. */
export function displayNames(table: string): { table: string; devices: string } {
  const ref = tableRef(table);
  return {
    table,
    devices: ref.schema === undefined ? "devices" : `${ref.schema}.devices`,
  };
}

/** Where the hints send an owner: the SQL `--print-schema` prints. */
const PRINT_HINT = `the SQL printed by \`${PRINT_SCHEMA_COMMAND}\``;

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
export function baseName(name: string): string {
  const last = name.split(".").at(-1) ?? name;
  return last.replace(/^"(.*)"$/, "$1").replaceAll('""', '"');
}

/** An example policy granting `command` on `table` to `roleSql`, as SQL text. */
export function policyExample(table: string, command: PolicyCommand, roleSql: string): string {
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

  if (/row-level security/i.test(reply.message)) {
    return rlsRefusal(reply, { table, role, roleSql }, ctx);
  }
  if (/must be owner/i.test(reply.message)) {
    return new UploadError(
      "config",
      `${role[0].toUpperCase()}${role.slice(1)} does not own ${table} on ${ctx.targetDisplay} ` +
        `and may not change its schema (${server})`,
      {
        ...options,
        hint: `Have an owner run ${PRINT_HINT} once; the uploader then needs no CREATE or ALTER`,
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
        } to ${roleSql}, or run ${PRINT_HINT}`,
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
        }, devices to ${roleSql}); ${PRINT_HINT} grants exactly that. With row-level security ` +
        `enabled it also needs INSERT, SELECT and UPDATE policies for that role`,
    },
  );
}

/**
 * A row-level security refusal: the policies the upsert needs for the role, naming those
 * the inspection found missing.
 */
function rlsRefusal(
  reply: { sqlstate: string; message: string },
  who: { table: string; role: string; roleSql: string },
  ctx: PermissionContext,
): UploadError {
  const { table, role, roleSql } = who;
  const server = `${reply.sqlstate}: ${reply.message}`;
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
      subject: ctx.subject,
      sqlstate: reply.sqlstate,
      hint: `Add the policies, narrowed to your rows as needed, e.g. ${
        examples.join("; ")
      }; ${PRINT_HINT} has commented examples`,
    },
  );
}
