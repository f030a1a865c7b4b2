/**
 * The error policy: what a server reply or a failure means, and what the run does about it.
 * Every decision between retrying, splitting a batch, failing a folder and stopping the run
 * is made here, from an error's kind; SQLSTATEs and psql's connection messages are read
 * here and nowhere else.
 *
 * @module
 */

import { type ErrorKind, UploadError } from "./errors.ts";

/** What the run does about an error met while writing some rows. */
export type ErrorAction = "retry" | "split" | "fail" | "stop";

/**
 * The one decision point for errors on the write path, by kind:
 *
 * - `transient` (connection lost or refused, too many connections, a server restarting,
 *   serialization failures): `retry` on a fresh session after a backoff; no folder is
 *   charged, and a deadline turns a lasting failure into `unreachable`.
 * - `blocked` (the server's lock_timeout ended a wait for a lock another session holds):
 *   `retry` after a backoff on the same session; no folder is charged, and a deadline of
 *   its own stops the run naming the holder.
 * - `data` (the server refused the rows for their content) and `timeout` (the statement ran
 *   past the server's `statement_timeout` or the client's own limit): `split` a statement
 *   of several rows in halves; a single row `fail`s alone, named.
 * - `folder` (this folder cannot be read or uploaded as it is): `fail` that folder.
 * - anything else (`config`, `usage`, `locked`, `unreachable`, `interrupted`, `fatal`, or an
 *   error that is no {@linkcode UploadError}): `stop` the run.
 *
 * @example
 * ```ts
 * actionFor(new UploadError("data", "23514: check"), 8); // "split"
 * actionFor(new UploadError("timeout", "57014: canceling statement"), 1); // "fail"
 * actionFor(new UploadError("transient", "Connection lost"), 8); // "retry"
 * ```
 */
export function actionFor(error: unknown, rows: number): ErrorAction {
  if (!(error instanceof UploadError)) return "stop";
  switch (error.kind) {
    case "transient":
    case "blocked":
      return "retry";
    case "data":
    case "timeout":
      return rows > 1 ? "split" : "fail";
    case "folder":
      return "fail";
    default:
      return "stop";
  }
}

/**
 * What an SQLSTATE means for the run.
 *
 * - `transient` (retry, restart psql): class 08 (connection), class 53 (too many
 *   connections, out of memory, disk full), 57P01/57P02/57P03/57P05 (server shutting down,
 *   starting up, idle session closed), 40001 and 40P01 (serialization failure, deadlock).
 * - `blocked`: 55P03 (lock not available: `lock_timeout` ended a wait for another
 *   session's lock).
 * - `timeout`: 57014 (statement timeout or a cancelled statement): smaller pieces may fit.
 * - `config` (stop and tell the user): 42501 (permission or row-level security), class 28
 *   (authentication), 3D000 (no such database), 3F000 (no such schema), 25006 (read-only
 *   server or transaction), class 42 (no such table or column, and other errors in the
 *   statement against the schema).
 * - `data` (the rows are refused: bisect): classes 22, 23, 54, XX and anything else.
 *
 * @example
 * ```ts
 * classifySqlstate("23505"); // "data"
 * classifySqlstate("53300"); // "transient"
 * classifySqlstate("55P03"); // "blocked"
 * classifySqlstate("42501"); // "config"
 * ```
 */
export function classifySqlstate(code: string): ErrorKind {
  const sqlClass = code.slice(0, 2);
  switch (code) {
    case "57014":
      return "timeout";
    case "57P01":
    case "57P02":
    case "57P03":
    case "57P05":
    case "40001":
    case "40P01":
      return "transient";
    case "55P03":
      return "blocked";
    case "3D000":
    case "3F000":
    case "25006":
      return "config";
  }
  if (sqlClass === "08" || sqlClass === "53") return "transient";
  if (sqlClass === "28" || sqlClass === "42") return "config";
  return "data";
}

/**
 * The SQLSTATEs the write path, the schema step, the health record and the fleet report
 * act on by name. Every test of a server's SQLSTATE is one of these predicates or
 * {@linkcode classifySqlstate}.
 */
export const SQLSTATE = Object.freeze({
  /** `query_canceled`: a statement timeout (the server's `statement_timeout`) or a cancel. */
  statementTimeout: "57014",
  /** `lock_not_available`: the server's `lock_timeout` ended a wait for another's lock. */
  lockTimeout: "55P03",
  /** `read_only_sql_transaction`: a standby, or `default_transaction_read_only`. */
  readOnly: "25006",
  /** `insufficient_privilege`: a missing grant, a row-level security policy, not the owner. */
  permission: "42501",
  /** `not_null_violation`. */
  notNull: "23502",
  /** `undefined_table`. */
  undefinedTable: "42P01",
  /** `undefined_column`. */
  undefinedColumn: "42703",
  /** `in_failed_sql_transaction`: a statement after a failed one in the same transaction. */
  abortedTransaction: "25P02",
});

/** The server cancelled the statement: its `statement_timeout`, or a cancel request (57014). */
export function isStatementTimeout(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.statementTimeout;
}

/** The server's `lock_timeout` ended a wait for another session's lock (55P03). */
export function isLockTimeout(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.lockTimeout;
}

/** The server refused a write as read-only (25006). */
export function isReadOnlyRefusal(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.readOnly;
}

/** A permission or row-level security refusal (42501). */
export function isPermissionRefusal(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.permission;
}

/**
 * The refusal of the staging table a COPY batch needs: 42501 on `CREATE TEMP TABLE` (a role
 * without TEMPORARY on the database), which a batch gets past by going as one statement.
 */
export function isTempTableRefusal(sqlstate: string | undefined, message: string): boolean {
  return isPermissionRefusal(sqlstate) && /temporary tables/i.test(message);
}

/** A NOT NULL column got no value (23502). */
export function isNotNullRefusal(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.notNull;
}

/** The table a statement names does not exist (42P01). */
export function isMissingTable(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.undefinedTable;
}

/** The table or one of the columns a statement names does not exist (42P01, 42703). */
export function isMissingTableOrColumn(sqlstate: string | undefined): boolean {
  return isMissingTable(sqlstate) || sqlstate === SQLSTATE.undefinedColumn;
}

/**
 * A statement refused because an earlier one of its transaction failed (25P02): the reply
 * of a script names the statement after the one at fault.
 */
export function isAbortedTransaction(sqlstate: string | undefined): boolean {
  return sqlstate === SQLSTATE.abortedTransaction;
}

/** A refusal retried like a lost connection (see {@linkcode classifySqlstate}: `transient`). */
export function isTransientSqlstate(sqlstate: string): boolean {
  return classifySqlstate(sqlstate) === "transient";
}

/**
 * What a refused schema statement (inspection, DDL, device row) means, the statement
 * timeout aside (the schema step retries it, then names `statement_timeout`): `transient`
 * when retried like a lost connection, else `config` (the setup must change).
 */
export function schemaRefusalKind(sqlstate: string): "transient" | "config" {
  return isTransientSqlstate(sqlstate) ? "transient" : "config";
}

/**
 * What a refused connection probe means: `null` when the session works all the same (a
 * statement timeout shorter than the probe), else `transient` or `config` as for a schema
 * statement.
 */
export function probeRefusalKind(sqlstate: string): "transient" | "config" | null {
  return classifySqlstate(sqlstate) === "timeout" ? null : schemaRefusalKind(sqlstate);
}

const TRANSIENT_CONNECT_PATTERNS = [
  /connection refused/i,
  /could not connect/i,
  /timeout expired/i,
  /timed out/i,
  /network is unreachable/i,
  /no route to host/i,
  /host is unreachable/i,
  /cannot assign requested address/i,
  /could not translate host name/i,
  /temporary failure in name resolution/i,
  /too many clients/i,
  /too many connections/i,
  /remaining connection slots are reserved/i,
  /no more connections allowed/i,
  /max client connections reached/i,
  /the database system is (starting up|shutting down|in recovery mode|not yet accepting)/i,
  /server closed the connection unexpectedly/i,
  /connection reset/i,
  /ssl syscall error/i,
  /terminating connection/i,
  /is the server running/i,
];

/**
 * What a failure to connect means, from psql's stderr: `transient` for a refused,
 * unreachable or timed-out connection, too many connections, or a server starting up or
 * shutting down; `config` for everything else (authentication, no such role or
 * database, a malformed URL, SSL settings).
 */
export function classifyConnectFailure(stderr: string): ErrorKind {
  if (
    /password authentication failed|role .* does not exist|database .* does not exist/i.test(stderr)
  ) {
    return "config";
  }
  return TRANSIENT_CONNECT_PATTERNS.some((pattern) => pattern.test(stderr))
    ? "transient"
    : "config";
}

/**
 * What a psql that ran one query and exited unsuccessfully means, from its exit code and
 * stderr: code 2 is psql's "connection failed or lost" (then as
 * {@linkcode classifyConnectFailure}); any other code is a refused query (`config`).
 */
export function psqlExitKind(code: number, stderr: string): ErrorKind {
  return code === 2 ? classifyConnectFailure(stderr) : "config";
}

/**
 * What a psql session that could not connect means: `transient` when the client's own
 * connect timeout ended it or a signal it did not get from the uploader did (a service
 * manager stopping every process: that says nothing about the server), else as
 * {@linkcode classifyConnectFailure} reads psql's stderr.
 */
export function connectFailureKind(
  stderr: string,
  ended: { timedOut: boolean; signalled: boolean },
): ErrorKind {
  return ended.timedOut || ended.signalled ? "transient" : classifyConnectFailure(stderr);
}

/** How a connection came to its TLS setting, for the hints of a failed connection. */
export interface TlsSetting {
  /** The sslmode psql will use, when the URL or the environment says (else libpq's default). */
  mode?: string;
  /** The uploader added `sslmode=require` itself (a host other than this machine). */
  added: boolean;
  /** Where the setting lives: a URL parameter, or libpq's `PGSSLMODE` variable. */
  via: "url" | "env";
}

/**
 * Advice about TLS for a failed connection: the uploader's own `sslmode=require` meeting a
 * server without TLS, or `sslmode=disable` meeting a server that takes only TLS.
 */
function tlsHint(stderr: string, tls: TlsSetting | undefined): string | undefined {
  const where = tls?.via === "env" ? "PGSSLMODE" : "the URL";
  if (tls?.added && /server does not support SSL/i.test(stderr)) {
    const fix = tls.via === "env" ? "set PGSSLMODE=disable" : "add ?sslmode=disable to the URL";
    return `The uploader asked for TLS (sslmode=require) because the host is not this machine, ` +
      `and this server does not offer it: ${fix} to connect without TLS (only over a network ` +
      `you trust)`;
  }
  if (
    tls?.mode === "disable" &&
    /no encryption|SSL (connection )?(is )?required|requires SSL|SSL off/i.test(stderr)
  ) {
    return `The server takes only TLS connections and ${where} says sslmode=disable: remove ` +
      `it (the uploader then asks for sslmode=require), or set sslmode=require`;
  }
  if (tls?.mode === "require" && /no pg_hba\.conf entry.*SSL encryption/i.test(stderr)) {
    return `The server refuses TLS connections from here and ${
      tls.added
        ? "the uploader asked for sslmode=require (the host is not this machine)"
        : `${where} says sslmode=require`
    }: set sslmode=disable in ${where}, or allow hostssl in the server's pg_hba.conf`;
  }
  return undefined;
}

/**
 * Advice for a failed connection, from psql's stderr and how the connection was set up;
 * undefined when there is none to give.
 */
export function connectHint(
  kind: ErrorKind,
  stderr: string,
  conn: { display: string; tls?: TlsSetting },
): string | undefined {
  const display = conn.display;
  const supabase = display.match(/db\.([a-z0-9]+)\.supabase\.co/i);
  if (
    supabase &&
    /network is unreachable|cannot assign requested address|could not translate host name|no route to host/i
      .test(stderr)
  ) {
    return `Supabase's direct host has only an IPv6 address unless the project pays for IPv4. ` +
      `Use the session pooler instead: aws-<region>.pooler.supabase.com:5432 with user ` +
      `postgres.${supabase[1]} (or the transaction pooler on port 6543)`;
  }
  const tls = tlsHint(stderr, conn.tls);
  if (tls) return tls;
  if (/password authentication failed|no password supplied/i.test(stderr)) {
    return "Check the password in the database URL (or PGPASSWORD / ~/.pgpass)";
  }
  if (kind === "transient") {
    return "Check the host and port, that the server runs and accepts TCP connections";
  }
  return undefined;
}
