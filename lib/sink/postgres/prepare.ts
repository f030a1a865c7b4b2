/**
 * The schema step on the write path's sessions, before the first batch: the remote schema
 * created or upgraded and this device settled (schema/ensure.ts), each statement retried as
 * a batch's are ({@linkcode withSession}: outages, lock waits, a read-only database said
 * so), and a step the server cancels (57014) retried a few times through lib/core/retry.ts,
 * then reported as a configuration error naming `statement_timeout`.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import {
  isLockTimeout,
  isReadOnlyRefusal,
  isStatementTimeout,
  isTransientSqlstate,
} from "../../core/policy.ts";
import { retry } from "../../core/retry.ts";
import {
  type IdentitySetup,
  identityTable,
  type ResolvedIdentity,
  resolveIdentity,
} from "../../target/identity.ts";
import type { DeviceInfo } from "../columns.ts";
import type { StatementReply } from "./psql.ts";
import { explainReply, replyError, runWatched } from "./replies.ts";
import type { TablePolicies } from "./schema/checks.ts";
import { ensureSchema, type SchemaResult } from "./schema/ensure.ts";
import type { SchemaInspection } from "./schema/inspect.ts";
import { isSchemaTimeout, SCHEMA_TIMEOUT_ATTEMPTS, schemaTimeoutError } from "./schema/step.ts";
import { APPLICATION_NAME } from "./spawn.ts";
import { withSession, type WritePath } from "./write.ts";

/** How the schema step settles the device (see `EnsureSchemaOptions` in schema/ensure.ts). */
export interface DeviceSettlement {
  /** Name and type not configured: the server's values win. */
  fromServer?: { name?: boolean; type?: boolean };
  /** Settles an id nothing configured (a new tracker): see lib/target/identity.ts. */
  identity?: IdentitySetup;
}

/** What the schema step settled. */
export interface PreparedTarget {
  /** The device the run writes for: the settled id, the name and type from server or config. */
  device: DeviceInfo;
  /** The connecting role and the tables' row-level security (for `WriteState.access`). */
  access: { role: string; policies: TablePolicies[] };
  /** Duplicate rows of an original-shape table the upgrade re-keyed. */
  rekeyed: number;
  /** What the run should warn about. */
  notes: string[];
  /** How an unconfigured id was settled, or null when none was to settle. */
  identity: ResolvedIdentity | null;
}

/**
 * Creates or upgrades the remote schema and registers this device, on the write path's
 * sessions (its settings' device is the candidate). Idempotent.
 *
 * @throws {UploadError} as `ensureSchema` (schema/ensure.ts) and {@linkcode withSession};
 *   `config` with SQLSTATE 57014 once the server cancelled the step
 *   {@linkcode SCHEMA_TIMEOUT_ATTEMPTS} times; `interrupted` when the run abandons.
 */
export async function prepareTarget(
  path: WritePath,
  settle: DeviceSettlement = {},
): Promise<PreparedTarget> {
  const { settings, edges } = path;
  let identity: ResolvedIdentity | null = null;
  const setup = settle.identity;
  const options = {
    table: settings.table,
    device: settings.device,
    targetDisplay: settings.targetDisplay,
    fromServer: settle.fromServer,
    identify: setup
      ? async (inspection: SchemaInspection, query: (sql: string) => Promise<string[]>) => {
        identity = await resolveIdentity(query, identityTable(inspection, settings.table), {
          ...setup,
          candidate: settings.device.id,
          folders: setup.folders(),
        });
        return identity.id;
      }
      : undefined,
  };
  // A cancelled step is no outage: it has a clock of its own, no deadline, three attempts.
  const result: SchemaResult = await retry(() => ensureSchema(schemaExec(path), options), {
    subject: "schema",
    attempts: SCHEMA_TIMEOUT_ATTEMPTS,
    classify: (error) => ({ retry: isSchemaTimeout(error) }),
    backoff: settings.backoff,
    signal: edges.signal,
    giveUp: (error, why) =>
      schemaTimeoutError(error as UploadError, { ...options, attempts: why.attempts }),
    interrupted: () =>
      new UploadError("interrupted", "Interrupted before schema was written", {
        subject: "schema",
      }),
    onRetry: edges.onRetry,
    now: edges.now,
    sleep: edges.sleep,
    random: edges.random,
  });
  return {
    device: result.device,
    access: { role: result.role, policies: result.policies },
    rekeyed: result.rekeyed,
    notes: result.notes,
    identity,
  };
}

/**
 * How the schema step runs a statement: on a pooled session with the lock watch on it
 * (a comment it carries lets the watch find it on the server). Transient refusals
 * (deadlock, too many connections, shutdown) are retried like a lost connection, and lock
 * waits (55P03) as such; a read-only database (25006) stops the run saying so; a statement
 * timeout (57014) goes back to the schema step, which names it.
 */
function schemaExec(path: WritePath): (sql: string) => Promise<StatementReply> {
  const tag = `/* ${APPLICATION_NAME} schema ${path.settings.device.id} */`;
  return (sql) =>
    withSession(path, "schema", async (runner) => {
      const { reply, watched } = await runWatched(runner, `${tag}\n${sql}`, {}, {
        path,
        subject: "schema",
        parts: [tag],
      });
      if (reply.ok) return reply;
      if (
        isLockTimeout(reply.sqlstate) || isReadOnlyRefusal(reply.sqlstate) ||
        (isStatementTimeout(reply.sqlstate) && watched?.sawLock)
      ) throw await explainReply(reply, "schema", path, runner, watched);
      if (isTransientSqlstate(reply.sqlstate)) throw replyError(reply, "schema", path);
      return reply;
    });
}
