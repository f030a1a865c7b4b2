/**
 * A refused statement said fully, and the lock watch around a statement in flight: a lock
 * wait (55P03, or a timeout of a statement the watch saw waiting) names the sessions in the
 * way; a read-only database (25006) says why it is read-only; a permission refusal (42501)
 * says what to grant; any other refusal becomes the error the policy acts on.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import {
  classifySqlstate,
  isLockTimeout,
  isPermissionRefusal,
  isReadOnlyRefusal,
  isStatementTimeout,
  SQLSTATE,
} from "../../core/policy.ts";
import type { LockHolder } from "../sink.ts";
import {
  buildLockHoldersStatement,
  describeHolders,
  parseLockReport,
  type WatchedStatement,
} from "./locks.ts";
import type { StatementRunner } from "./pool.ts";
import type { StatementError, StatementReply } from "./psql.ts";
import { parseReadOnlyFacts, READ_ONLY_STATEMENT, readOnlyError } from "./readonly.ts";
import { describePermissionError } from "./schema/permissions.ts";
import { APPLICATION_NAME } from "./spawn.ts";
import type { WritePath } from "./write.ts";

/** The error that stops the run after a statement was refused a lock past the deadline. */
export function lockGiveUp(error: UploadError, subject: string, seconds: number): UploadError {
  return new UploadError(
    "blocked",
    `Gave up on ${subject} after ${seconds} s of lock waits: ${error.message}`,
    { subject, sqlstate: error.sqlstate, hint: error.hint, cause: error },
  );
}

/** What to do about a lock another session holds: let it finish, or end it. */
function lockHint(table: string, holders: readonly LockHolder[]): string {
  const pid = holders[0]?.pid;
  const end = pid !== undefined
    ? `select pg_terminate_backend(${pid})`
    : "pg_terminate_backend(pid) (pg_locks and pg_stat_activity show the pid)";
  return `Another session holds a lock on ${table}: let its transaction finish (commit or ` +
    `roll back), or end it as the table's owner or a superuser with ${end}. Folders stay ` +
    `pending; the next run sends them`;
}

/**
 * The error for a statement that waited for a lock until the server's `lock_timeout`
 * (55P03) or a statement timeout ended it: `blocked`, naming the sessions in the way. Asks
 * the server who holds locks on the tables when the watch did not see it (one query on the
 * same session; a failure leaves the holders unnamed).
 */
export async function lockWaitError(
  reply: { sqlstate: string; message: string },
  subject: string,
  path: WritePath,
  options: { runner?: StatementRunner; seen?: readonly LockHolder[] },
): Promise<UploadError> {
  let holders = options.seen ?? [];
  let lockTimeout: string | null = null;
  if (holders.length === 0 && options.runner?.alive) {
    try {
      const check = await options.runner.run(
        buildLockHoldersStatement(path.settings.table, APPLICATION_NAME),
        { timeoutMs: 10_000 },
      );
      const report = check.ok ? parseLockReport(check.rows) : undefined;
      holders = report?.holders ?? [];
      lockTimeout = report?.lockTimeout ?? null;
    } catch (_error) {
      // The check is advice: a session lost meanwhile leaves the holders unnamed, and the
      // retry meets the loss itself.
    }
  }
  const limit = isLockTimeout(reply.sqlstate)
    ? `the server's lock_timeout${lockTimeout ? ` (${lockTimeout})` : ""} ended this try`
    : "a statement timeout ended this try";
  return new UploadError(
    "blocked",
    `Waiting for a lock on ${path.settings.table}, ${describeHolders(holders)}; ${limit}: ` +
      `${reply.sqlstate}: ${reply.message}`,
    { subject, sqlstate: reply.sqlstate, hint: lockHint(path.settings.table, holders) },
  );
}

/** The error for a write refused as read-only (25006), with what the server says of why. */
async function readOnlyRefusal(
  reply: { sqlstate: string; message: string },
  subject: string,
  path: WritePath,
  runner: StatementRunner,
): Promise<UploadError> {
  let facts;
  try {
    const check = await runner.run(READ_ONLY_STATEMENT, { timeoutMs: 10_000 });
    facts = check.ok ? parseReadOnlyFacts(check.rows) : undefined;
  } catch (_error) {
    // The check is advice: without it the error names the refusal alone.
  }
  return readOnlyError(reply, { targetDisplay: path.settings.targetDisplay, subject }, facts);
}

/**
 * An error reply as the UploadError the policy acts on, asking the server what it needs to
 * say more: who holds the lock of a 55P03, why the database is read-only for a 25006.
 * A statement the watch saw waiting on a lock that then timed out is a lock wait too.
 */
export async function explainReply(
  reply: StatementError,
  subject: string,
  path: WritePath,
  runner: StatementRunner,
  watched?: WatchedStatement,
): Promise<UploadError> {
  if (isLockTimeout(reply.sqlstate) || (isStatementTimeout(reply.sqlstate) && watched?.sawLock)) {
    return await lockWaitError(reply, subject, path, { runner, seen: watched?.holders });
  }
  if (isReadOnlyRefusal(reply.sqlstate)) {
    return await readOnlyRefusal(reply, subject, path, runner);
  }
  return replyError(reply, subject, path, runner);
}

/**
 * Runs one statement with the lock watch on it: `parts` is text the statement carries, by
 * which the watch finds it on the server. A client-side timeout of a statement the watch
 * saw waiting on a lock is thrown as `blocked` (retried), not as a timeout (split).
 */
export async function runWatched(
  runner: StatementRunner,
  sql: string,
  options: { timeoutMs?: number; script?: boolean },
  watch: { path: WritePath; subject: string; parts: string[] },
): Promise<{ reply: StatementReply; watched?: WatchedStatement }> {
  const watched = watch.path.edges.locks?.track(watch.subject, watch.parts);
  try {
    return { reply: await runner.run(sql, options), watched };
  } catch (error) {
    if (watched?.sawLock && error instanceof UploadError && error.kind === "timeout") {
      throw await lockWaitError(
        { sqlstate: SQLSTATE.statementTimeout, message: error.message },
        watch.subject,
        watch.path,
        { seen: watched.holders },
      );
    }
    throw error;
  } finally {
    watched?.done();
  }
}

/**
 * Turns an error reply into an UploadError whose kind the policy acts on. A statement
 * timeout names the server's `statement_timeout` when the session knows it.
 */
export function replyError(
  reply: StatementError,
  subject: string,
  path: WritePath,
  runner?: StatementRunner,
): UploadError {
  const kind = classifySqlstate(reply.sqlstate);
  if (isPermissionRefusal(reply.sqlstate)) {
    return describePermissionError(reply, {
      table: path.settings.table,
      targetDisplay: path.settings.targetDisplay,
      subject,
      role: path.state.access?.role,
      policies: path.state.access?.policies,
    });
  }
  const limit = kind === "timeout" && runner?.statementTimeout && runner.statementTimeout !== "0"
    ? ` (the server's statement_timeout is ${runner.statementTimeout})`
    : "";
  return new UploadError(kind, `${reply.sqlstate}: ${reply.message}${limit}`, {
    subject,
    sqlstate: reply.sqlstate,
  });
}
