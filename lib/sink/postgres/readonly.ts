/**
 * A database that refuses writes (SQLSTATE 25006, "cannot execute ... in a read-only
 * transaction"): why it is read-only, read with one query, and what to point at instead.
 * A standby (a read replica) is in recovery; a primary whose new transactions are read-only
 * has `default_transaction_read_only` on (Supabase's read-only mode for a project over its
 * disk quota is this setting).
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";

/** What the server says about its read-only state. */
export interface ReadOnlyFacts {
  /** The server is a standby (`pg_is_in_recovery()`). */
  recovery: boolean;
  /** `default_transaction_read_only` is on. */
  defaultReadOnly: boolean;
  /** Where that setting comes from (`pg_settings.source`: `database`, `user`, `configuration file`, ...). */
  source: string | null;
  database: string;
  role: string;
}

/** The query behind {@linkcode parseReadOnlyFacts}: one read-only statement, one JSON line. */
export const READ_ONLY_STATEMENT = `select json_build_object(
  'recovery', pg_is_in_recovery(),
  'default_read_only', current_setting('default_transaction_read_only') = 'on',
  'source', (select source from pg_settings where name = 'default_transaction_read_only'),
  'database', current_database(),
  'role', current_user
)::text`;

/** Reads the reply of {@linkcode READ_ONLY_STATEMENT}; undefined for any other reply. */
export function parseReadOnlyFacts(rows: readonly string[]): ReadOnlyFacts | undefined {
  if (rows.length !== 1) return undefined;
  try {
    const v = JSON.parse(rows[0]);
    if (typeof v?.recovery !== "boolean") return undefined;
    return {
      recovery: v.recovery,
      defaultReadOnly: v.default_read_only === true,
      source: typeof v.source === "string" ? v.source : null,
      database: String(v.database),
      role: String(v.role),
    };
  } catch {
    return undefined; // not this query's reply: the error names the refusal alone
  }
}

/** Double-quotes an identifier for a hint's SQL when it needs it. */
function ident(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replaceAll('"', '""')}"`;
}

/** Why the database is read-only, and what to do about it, from what the server said. */
function reasonAndHint(facts: ReadOnlyFacts | undefined): { reason: string; hint: string } {
  if (facts?.recovery) {
    return {
      reason: "the server is a standby (a read replica in recovery)",
      hint: "Point the URL at the primary server: on Supabase, the project's own connection " +
        "string (the dashboard's Connect button), not a read replica's",
    };
  }
  if (facts?.defaultReadOnly) {
    const where = facts.source === "database"
      ? `for database ${facts.database}`
      : facts.source === "user"
      ? `for role ${facts.role}`
      : facts.source
      ? `(${facts.source})`
      : "";
    // The first statement lets the owner's own session write, also in that database.
    const fix = `set default_transaction_read_only = off; ` +
      (facts.source === "user"
        ? `alter role ${ident(facts.role)} reset default_transaction_read_only`
        : `alter database ${ident(facts.database)} reset default_transaction_read_only`);
    return {
      reason: `new transactions are read-only: default_transaction_read_only is on ${where}`
        .trimEnd(),
      hint: "On Supabase this is the read-only mode of a project over its disk quota: free " +
        "space or grow the disk (Database settings), then turn read-only mode off. Elsewhere " +
        `an owner runs \`${fix}\`, or point the URL at a database that takes writes`,
    };
  }
  return {
    reason: "the server refuses writes in this session",
    hint: "Point the URL at a primary server that takes writes (not a standby or read replica)",
  };
}

/**
 * The configuration error for a write the server refused as read-only: names the target,
 * why it is read-only (when `facts` tell), the server's own words, and what to point at.
 *
 * @example
 * ```ts
 * readOnlyError({ sqlstate: "25006", message: "cannot execute INSERT in a read-only transaction" },
 *   { targetDisplay: "db:5432/uploads", subject: "batch_1" }, facts);
 * ```
 */
export function readOnlyError(
  reply: { sqlstate: string; message: string },
  context: { targetDisplay: string; subject: string },
  facts: ReadOnlyFacts | undefined,
): UploadError {
  const { reason, hint } = reasonAndHint(facts);
  return new UploadError(
    "config",
    `The database ${context.targetDisplay} is read-only: ${reason} (${reply.sqlstate}: ` +
      `${reply.message})`,
    { subject: context.subject, sqlstate: reply.sqlstate, hint },
  );
}
