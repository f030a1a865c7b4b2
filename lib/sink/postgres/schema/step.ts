/**
 * A schema step's statements and their errors: one statement run and its refusal named
 * (which step, which table, the server's words), and the statement timeout (57014) that the
 * caller retries a few times before naming `statement_timeout`.
 *
 * @module
 */

import { UploadError } from "../../../core/errors.ts";
import { isStatementTimeout, schemaRefusalKind, SQLSTATE } from "../../../core/policy.ts";
import type { StatementError, StatementReply } from "../psql.ts";
import { PRINT_SCHEMA_COMMAND } from "./permissions.ts";

/** What a schema step's errors name: the table and the target. */
export interface StepContext {
  /** The upload table, as configured. */
  table: string;
  /** The target as shown to the user. */
  targetDisplay: string;
}

/** Runs one statement and returns its reply (a lost connection is thrown). */
export type Exec = (sql: string) => Promise<StatementReply>;

/** How often a caller should retry a schema step the server cancelled (57014) in all. */
export const SCHEMA_TIMEOUT_ATTEMPTS = 3;

/** The 57014 reply of a schema statement as an error the caller may retry a few times. */
function timeoutError(
  reply: { sqlstate: string; message: string },
  step: string,
  options: StepContext,
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
  return error instanceof UploadError && error.kind === "timeout" &&
    isStatementTimeout(error.sqlstate) &&
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
      sqlstate: SQLSTATE.statementTimeout,
      cause: error,
      hint: `Raise statement_timeout for the uploading role (alter role <role> set ` +
        `statement_timeout = '5min'), or have an owner run the SQL printed by ` +
        `\`${PRINT_SCHEMA_COMMAND}\` once where no such limit applies`,
    },
  );
}

/**
 * An error reply of a schema statement as an UploadError naming the step: `timeout` for a
 * statement the server cancelled (57014), else as `schemaRefusalKind` (lib/core/policy.ts).
 */
export function stepError(
  reply: StatementError,
  step: string,
  options: StepContext,
  statementTimeout?: string,
): UploadError {
  if (isStatementTimeout(reply.sqlstate)) {
    return timeoutError(reply, step, options, statementTimeout);
  }
  return new UploadError(
    schemaRefusalKind(reply.sqlstate),
    `Cannot prepare table ${options.table} on ${options.targetDisplay} (${step}): ` +
      `${reply.sqlstate}: ${reply.message}`,
    { subject: "schema", sqlstate: reply.sqlstate },
  );
}

/**
 * Runs one schema statement and returns its rows; an error reply is thrown
 * ({@linkcode stepError}).
 */
export async function runStep(
  exec: Exec,
  sql: string,
  step: string,
  options: StepContext,
  statementTimeout?: string,
): Promise<string[]> {
  const reply = await exec(sql);
  if (reply.ok) return reply.rows;
  throw stepError(reply, step, options, statementTimeout);
}
