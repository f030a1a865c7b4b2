/**
 * The write path to the server: a pool of long-lived psql sessions, the schema step, and
 * one function that writes a batch of rows and returns each folder's outcome — retrying
 * transient failures with backoff, splitting batches the server refuses for their data
 * until the bad folders are found, and giving up when the server stays unreachable.
 *
 * @module
 */

import { messageOf, UploadError } from "../../core/errors.ts";
import { type PsqlConnection, PsqlSession, type StatementReply } from "./psql.ts";
import { actionFor, classifySqlstate } from "../../core/policy.ts";
import { backoffDelay, type BackoffOptions, sleep } from "../../core/retry.ts";
import { buildUpsertScript, buildUpsertStatement, parseUpsertReply } from "./upsert.ts";
import type { UploadRow } from "../columns.ts";
import {
  describePermissionError,
  ensureSchema as prepareSchema,
  isSchemaTimeout,
  SCHEMA_TIMEOUT_ATTEMPTS,
  schemaTimeoutError,
  type TablePolicies,
} from "./schema.ts";
import { unreachableHint } from "../../target/target.ts";
import {
  buildLockHoldersStatement,
  describeHolders,
  type LockHolder,
  lockWaitMessage,
  LockWatch,
  parseLockReport,
  type WatchedStatement,
} from "./locks.ts";
import { parseReadOnlyFacts, READ_ONLY_STATEMENT, readOnlyError } from "./readonly.ts";
import { APPLICATION_NAME } from "./spawn.ts";
import {
  type DeviceSource,
  type IdentitySetup,
  identityTable,
  type ResolvedIdentity,
  resolveIdentity,
} from "../../target/identity.ts";
import type { DeviceInfo } from "../columns.ts";
import type { Connector } from "../../target/connect.ts";
import type { UploaderConfig } from "../../../config.ts";

/** Something that runs one statement at a time: a psql session, or a stand-in in tests. */
export interface StatementRunner {
  readonly alive: boolean;
  /** The server's `statement_timeout` setting, when known (for messages). */
  readonly statementTimeout?: string;
  /** Runs one statement, or with `script` a psql script (see `RunOptions` in lib/sink/postgres/psql.ts). */
  run(sql: string, options?: { timeoutMs?: number; script?: boolean }): Promise<StatementReply>;
  close(): Promise<void>;
  kill(): void;
}

/** Starts a statement runner. */
export type RunnerFactory = () => Promise<StatementRunner>;

/** A factory of psql sessions for a connection. */
export function psqlFactory(
  connection: PsqlConnection,
  options: { connectTimeoutSeconds?: number } = {},
): RunnerFactory {
  return () => PsqlSession.start(connection, options);
}

/** Up to `size` runners, started on demand, dead ones dropped. */
export class SessionPool {
  #factory: RunnerFactory;
  #idle: StatementRunner[] = [];
  #all = new Set<StatementRunner>();

  constructor(factory: RunnerFactory) {
    this.#factory = factory;
  }

  /** An idle live runner, or a newly started one. Start failures are thrown as they come. */
  async acquire(): Promise<StatementRunner> {
    while (this.#idle.length > 0) {
      const runner = this.#idle.pop()!;
      if (runner.alive) return runner;
      this.#all.delete(runner);
    }
    const runner = await this.#factory();
    this.#all.add(runner);
    return runner;
  }

  /** Returns a runner; a dead one is dropped (the next acquire starts a fresh one). */
  release(runner: StatementRunner): void {
    if (runner.alive) this.#idle.push(runner);
    else this.#all.delete(runner);
  }

  /** Closes every runner, waiting for each to exit. */
  async close(): Promise<void> {
    const all = [...this.#all];
    this.#all.clear();
    this.#idle = [];
    await Promise.allSettled(all.map((r) => r.close()));
  }

  /** Kills every runner at once (abandoning statements in flight). */
  kill(): void {
    for (const r of this.#all) r.kill();
    this.#all.clear();
    this.#idle = [];
  }
}

/** A retry about to happen, for progress output. */
export interface RetryNotice {
  /** Batch or step being retried. */
  subject: string;
  attempt: number;
  delayMs: number;
  reason: string;
}

/** Shared state of the write path within one run. */
export interface WriteContext {
  pool: SessionPool;
  /** How psql reaches the target (for a COPY outside the pool). */
  connection?: PsqlConnection;
  table: string;
  device: { id: string; name: string; type: string };
  /** Display name of the target, for hints. */
  targetDisplay: string;
  /** The connecting role and the tables' row-level security, once the schema step read them. */
  access?: { role: string; policies: TablePolicies[] };
  /**
   * Give up when the server stays unreachable this long (ms), once it has answered; also
   * when a statement keeps being refused a lock (55P03) this long.
   */
  giveUpAfterMs: number;
  /**
   * Watches statements in flight for lock waits (reported as `lock_wait`). None: no watch
   * (the embedded database, whose one session cannot wait for another).
   */
  locks?: LockWatch;
  /**
   * Give up when a run that has never reached the server fails this long (ms): a wrong
   * host or port should not take the whole `giveUpAfterMs` to say so. Default 15 s.
   */
  connectWindowMs?: number;
  /** Per-statement timeout on the client side (ms); none when 0. */
  statementTimeoutMs?: number;
  /**
   * Send each batch as a psql script that COPYs its rows into a staging table
   * (`buildUpsertScript`, about half the server CPU per row) rather than as one statement
   * (`buildUpsertStatement`). Needs runners that take scripts and a server that takes
   * `COPY FROM STDIN` (the embedded PGlite does not). Default false.
   */
  copyRows?: boolean;
  /** Told once when `copyRows` is turned off because the role may not use it. */
  onWarning?: (message: string) => void;
  backoff?: BackoffOptions;
  /** Aborted when the run abandons its statements: nothing is retried any more. */
  signal: AbortSignal;
  /** Aborted when the run is stopping: statements in flight finish, failures are not retried. */
  stopping?: AbortSignal;
  onRetry?: (notice: RetryNotice) => void;
  /**
   * When the current streak of transient failures began, and whether the server ever
   * answered in this run (shared by parallel batches).
   */
  health: { failingSince: number | null; answered: boolean };
  now?: () => number;
}

/** One folder's row inside a batch. */
export interface BatchItem {
  /** Tracker key (the folder path). */
  path: string;
  row: UploadRow;
  /** The row as JSON text, made by `rowToJson` (sent as it is; also bounds batch bytes). */
  json: string;
}

/** A folder's result from the server. */
export interface ItemOutcome<T extends BatchItem = BatchItem> {
  item: T;
  ok: boolean;
  error?: string;
}

/** What the server said about a written batch. */
export interface WriteResult<T extends BatchItem = BatchItem> {
  outcomes: ItemOutcome<T>[];
  inserted: number;
  updated: number;
  statements: number;
}

/**
 * Runs `fn` on a pooled session. Errors the policy retries (`transient`: connection
 * refused or lost, too many connections, a server restarting, serialization failures)
 * are retried on a fresh session with backoff; everything else is thrown to the caller.
 *
 * @throws {UploadError} `unreachable` once failures have lasted past the deadline (the
 *   short connect window while the server never answered in this run, else
 *   `giveUpAfterMs`), `interrupted` when the run is aborted, and whatever `fn` throws that
 *   is not retried.
 */
async function withSession<T>(
  ctx: WriteContext,
  subject: string,
  fn: (runner: StatementRunner) => Promise<T>,
): Promise<T> {
  const now = ctx.now ?? Date.now;
  let attempt = 0;
  let blockedSince: number | null = null;
  while (true) {
    if (ctx.signal.aborted) {
      throw new UploadError("interrupted", `Interrupted before ${subject} was written`, {
        subject,
      });
    }
    let runner: StatementRunner | undefined;
    try {
      runner = await ctx.pool.acquire();
      const result = await fn(runner);
      ctx.pool.release(runner);
      ctx.health.failingSince = null;
      ctx.health.answered = true;
      return result;
    } catch (error) {
      const retry = actionFor(error, 1) === "retry";
      const blocked = error instanceof UploadError && error.kind === "blocked";
      if (runner) {
        // The next attempt starts a fresh psql, except after a lock wait: that session is fine.
        if (retry && !blocked) runner.kill();
        ctx.pool.release(runner); // a dead session is dropped by the pool
      }
      if (!retry) throw error;
      if (ctx.signal.aborted || ctx.stopping?.aborted) {
        // The run abandoned its statements (killing their sessions), or it is stopping (a
        // service manager's stop may have signalled psql too): no outage to retry or
        // report; the folders stay pending for the next run.
        throw new UploadError("interrupted", `Interrupted while ${subject} was written`, {
          subject,
        });
      }
      const t = now();
      if (blocked) {
        // The server answered: a lock wait is no outage, and has a deadline of its own.
        ctx.health.failingSince = null;
        ctx.health.answered = true;
        blockedSince ??= t;
        if (t - blockedSince >= ctx.giveUpAfterMs) {
          throw lockGiveUp(error, subject, Math.round((t - blockedSince) / 1000));
        }
        attempt++;
        const delayMs = Math.min(
          backoffDelay(attempt, ctx.backoff),
          ctx.giveUpAfterMs - (t - blockedSince),
        );
        ctx.onRetry?.({ subject, attempt, delayMs, reason: messageOf(error) });
        await sleep(delayMs, ctx.signal);
        continue;
      }
      ctx.health.failingSince ??= t;
      const window = ctx.health.answered
        ? ctx.giveUpAfterMs
        : Math.min(ctx.giveUpAfterMs, ctx.connectWindowMs ?? 15_000);
      if (t - ctx.health.failingSince >= window) {
        const seconds = Math.round((t - ctx.health.failingSince) / 1000);
        throw new UploadError(
          "unreachable",
          ctx.health.answered
            ? `Server ${ctx.targetDisplay} unreachable for ${seconds} s, giving up: ${
              messageOf(error)
            }`
            : `Server ${ctx.targetDisplay} unreachable: no connection in ${seconds} s of ` +
              `trying: ${messageOf(error)}`,
          { subject, hint: (error as UploadError).hint ?? unreachableHint(ctx.targetDisplay) },
        );
      }
      attempt++;
      // The wait never reaches past the deadline: the last attempt comes at the deadline,
      // not up to a whole backoff step later.
      const remainingMs = window - (t - ctx.health.failingSince);
      const delayMs = Math.min(backoffDelay(attempt, ctx.backoff), remainingMs);
      ctx.onRetry?.({ subject, attempt, delayMs, reason: messageOf(error) });
      await sleep(delayMs, ctx.signal);
    }
  }
}

/** The error that stops the run after a statement was refused a lock past the deadline. */
function lockGiveUp(error: UploadError, subject: string, seconds: number): UploadError {
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
async function lockWaitError(
  reply: { sqlstate: string; message: string },
  subject: string,
  ctx: WriteContext,
  options: { runner?: StatementRunner; seen?: readonly LockHolder[] },
): Promise<UploadError> {
  let holders = options.seen ?? [];
  let lockTimeout: string | null = null;
  if (holders.length === 0 && options.runner?.alive) {
    try {
      const check = await options.runner.run(
        buildLockHoldersStatement(ctx.table, APPLICATION_NAME),
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
  const limit = reply.sqlstate === "55P03"
    ? `the server's lock_timeout${lockTimeout ? ` (${lockTimeout})` : ""} ended this try`
    : "a statement timeout ended this try";
  return new UploadError(
    "blocked",
    `Waiting for a lock on ${ctx.table}, ${describeHolders(holders)}; ${limit}: ` +
      `${reply.sqlstate}: ${reply.message}`,
    { subject, sqlstate: reply.sqlstate, hint: lockHint(ctx.table, holders) },
  );
}

/** The error for a write refused as read-only (25006), with what the server says of why. */
async function readOnlyRefusal(
  reply: { sqlstate: string; message: string },
  subject: string,
  ctx: WriteContext,
  runner: StatementRunner,
): Promise<UploadError> {
  let facts;
  try {
    const check = await runner.run(READ_ONLY_STATEMENT, { timeoutMs: 10_000 });
    facts = check.ok ? parseReadOnlyFacts(check.rows) : undefined;
  } catch (_error) {
    // The check is advice: without it the error names the refusal alone.
  }
  return readOnlyError(reply, { targetDisplay: ctx.targetDisplay, subject }, facts);
}

/**
 * An error reply as the UploadError the policy acts on, asking the server what it needs to
 * say more: who holds the lock of a 55P03, why the database is read-only for a 25006.
 * A statement the watch saw waiting on a lock that then timed out is a lock wait too.
 */
async function explainReply(
  reply: StatementReply & { ok: false },
  subject: string,
  ctx: WriteContext,
  runner: StatementRunner,
  watched?: WatchedStatement,
): Promise<UploadError> {
  if (reply.sqlstate === "55P03" || (reply.sqlstate === "57014" && watched?.sawLock)) {
    return await lockWaitError(reply, subject, ctx, { runner, seen: watched?.holders });
  }
  if (reply.sqlstate === "25006") return await readOnlyRefusal(reply, subject, ctx, runner);
  return replyError(reply, subject, ctx, runner);
}

/**
 * Runs one statement with the lock watch on it: `parts` is text the statement carries, by
 * which the watch finds it on the server. A client-side timeout of a statement the watch
 * saw waiting on a lock is thrown as `blocked` (retried), not as a timeout (split).
 */
async function runWatched(
  runner: StatementRunner,
  sql: string,
  options: { timeoutMs?: number; script?: boolean },
  watch: { ctx: WriteContext; subject: string; parts: string[] },
): Promise<{ reply: StatementReply; watched?: WatchedStatement }> {
  const watched = watch.ctx.locks?.track(watch.subject, watch.parts);
  try {
    return { reply: await runner.run(sql, options), watched };
  } catch (error) {
    if (watched?.sawLock && error instanceof UploadError && error.kind === "timeout") {
      throw await lockWaitError(
        { sqlstate: "57014", message: error.message },
        watch.subject,
        watch.ctx,
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
function replyError(
  reply: StatementReply & { ok: false },
  subject: string,
  ctx: WriteContext,
  runner?: StatementRunner,
): UploadError {
  const kind = classifySqlstate(reply.sqlstate);
  if (reply.sqlstate === "42501") {
    return describePermissionError(reply, {
      table: ctx.table,
      targetDisplay: ctx.targetDisplay,
      subject,
      role: ctx.access?.role,
      policies: ctx.access?.policies,
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

/** How the schema step settles the device (see `schema.ts` `EnsureSchemaOptions`). */
export interface DeviceSettlement {
  /** Name and type not configured: the server's values win. */
  fromServer?: { name?: boolean; type?: boolean };
  /** Settles an id nothing configured (a new tracker): see lib/target/identity.ts. */
  identity?: IdentitySetup;
}

/**
 * Creates or upgrades the remote schema and registers this device (see `schema.ts`
 * `ensureSchema`); `ctx.device` becomes the device as settled there. Idempotent. A schema
 * step the server cancels (57014) is retried a few times, then reported as a
 * configuration error naming statement_timeout.
 *
 * @returns how many duplicate rows of an original-shape table were re-keyed, what the run
 *   should warn about, and how an unconfigured id was settled (null when none was).
 */
export async function ensureSchema(
  ctx: WriteContext,
  settle: DeviceSettlement = {},
): Promise<{ rekeyed: number; notes: string[]; identity: ResolvedIdentity | null }> {
  // Transient refusals (deadlock, too many connections, shutdown) are retried here like a
  // lost connection, and lock waits (55P03) as such; a read-only database (25006) stops the
  // run saying so; a statement timeout (57014) goes back to the schema step, which names it.
  // The comment lets the lock watch find the statement on the server.
  const tag = `/* ${APPLICATION_NAME} schema ${ctx.device.id} */`;
  const exec = (sql: string) =>
    withSession(ctx, "schema", async (runner) => {
      const { reply, watched } = await runWatched(runner, `${tag}\n${sql}`, {}, {
        ctx,
        subject: "schema",
        parts: [tag],
      });
      if (reply.ok) return reply;
      if (
        reply.sqlstate === "55P03" || reply.sqlstate === "25006" ||
        (reply.sqlstate === "57014" && watched?.sawLock)
      ) throw await explainReply(reply, "schema", ctx, runner, watched);
      if (reply.sqlstate !== "57014" && classifySqlstate(reply.sqlstate) === "transient") {
        throw replyError(reply, "schema", ctx);
      }
      return reply;
    });
  let identity: ResolvedIdentity | null = null;
  const setup = settle.identity;
  const options = {
    table: ctx.table,
    device: ctx.device,
    targetDisplay: ctx.targetDisplay,
    fromServer: settle.fromServer,
    identify: setup
      ? async (inspection: Parameters<typeof identityTable>[0], query: QueryFn) => {
        identity = await resolveIdentity(query, identityTable(inspection, ctx.table), {
          ...setup,
          candidate: ctx.device.id,
          folders: setup.folders(),
        });
        return identity.id;
      }
      : undefined,
  };
  for (let attempt = 1;; attempt++) {
    try {
      const result = await prepareSchema(exec, options);
      ctx.access = { role: result.role, policies: result.policies };
      ctx.device = result.device;
      return { rekeyed: result.rekeyed, notes: result.notes, identity };
    } catch (error) {
      if (!isSchemaTimeout(error)) throw error;
      if (attempt >= SCHEMA_TIMEOUT_ATTEMPTS) {
        throw schemaTimeoutError(error, { ...options, attempts: attempt });
      }
      const delayMs = backoffDelay(attempt, ctx.backoff);
      ctx.onRetry?.({ subject: "schema", attempt, delayMs, reason: error.message });
      await sleep(delayMs, ctx.signal);
    }
  }
}

/**
 * Writes a batch of rows in one upsert (a statement, or a script with `copyRows`) and
 * returns each folder's outcome. What an error does is the policy's call
 * ({@linkcode actionFor}): a batch refused for its data or cut short by a statement timeout
 * is split in halves until the rows at fault are isolated; they fail alone with the
 * server's SQLSTATE and message and the rest land. Transient failures are retried; anything else stops the run (thrown).
 */
export async function writeBatch<T extends BatchItem>(
  items: T[],
  batchName: string,
  ctx: WriteContext,
): Promise<WriteResult<T>> {
  const result: WriteResult<T> = { outcomes: [], inserted: 0, updated: 0, statements: 0 };
  await writePart(items, batchName, ctx, result);
  return result;
}

async function writePart<T extends BatchItem>(
  items: T[],
  batchName: string,
  ctx: WriteContext,
  result: WriteResult<T>,
): Promise<void> {
  if (items.length === 0) return;
  let error: unknown;
  try {
    // Read once: another batch may turn copyRows off while this one is in flight.
    const copy = ctx.copyRows === true;
    const build = copy ? buildUpsertScript : buildUpsertStatement;
    const sql = build(items.map((i) => i.row), {
      table: ctx.table,
      device: ctx.device,
      batchName,
    }, items.map((i) => i.json));
    // Text the statement carries (its header), by which the lock watch finds it.
    const parts = [`"upload_batch":${JSON.stringify(batchName)}`, ctx.device.id];
    const reply = await withSession(ctx, batchName, async (runner) => {
      result.statements++;
      const { reply, watched } = await runWatched(runner, sql, {
        timeoutMs: ctx.statementTimeoutMs,
        script: copy,
      }, { ctx, subject: batchName, parts });
      if (reply.ok) return reply;
      const refused = await explainReply(reply, batchName, ctx, runner, watched);
      if (actionFor(refused, items.length) === "retry") throw refused;
      return refused;
    });
    if (!(reply instanceof UploadError)) {
      const counts = parseUpsertReply(reply.rows);
      result.inserted += counts.inserted;
      result.updated += counts.updated;
      const held = new Map(counts.conflicts ?? []);
      for (const item of items) {
        const holder = held.get(item.row.folder_key);
        if (holder === undefined) result.outcomes.push({ item, ok: true });
        else {
          result.outcomes.push({
            item,
            ok: false,
            error: `Key ${item.row.folder_key} already holds the row of another folder ` +
              `(${holder}); not overwritten. Upload with --base (or from the tracked base) so ` +
              `the key is the folder's path, not only its name`,
          });
        }
      }
      return;
    }
    if (copy && mayNotCreateTempTables(reply)) {
      // A role without TEMP on the database: the same rows as one statement instead. Batches
      // in flight at the same time are refused alike; the first one to come back warns.
      if (!ctx.copyRows) return writePart(items, batchName, ctx, result);
      ctx.copyRows = false;
      ctx.onWarning?.(
        `${ctx.targetDisplay} refuses temporary tables to this role (${reply.sqlstate}): ` +
          "each batch goes as one statement instead, which costs the server about twice the " +
          "CPU per row; `grant temporary on database ...` to the role restores the faster way",
      );
      return writePart(items, batchName, ctx, result);
    }
    error = reply;
  } catch (thrown) {
    // V8 serializes recursively: a value nested too deeply to turn into JSON is this
    // row's data problem, found the way the server's refusals are.
    error = thrown instanceof RangeError
      ? new UploadError("data", `Cannot build the upsert: ${thrown.message}`)
      : thrown;
  }
  switch (actionFor(error, items.length)) {
    case "split": {
      const half = Math.ceil(items.length / 2);
      await writePart(items.slice(0, half), batchName, ctx, result);
      await writePart(items.slice(half), batchName, ctx, result);
      return;
    }
    case "fail": {
      const e = error as UploadError;
      const key = items[0].row.folder_key;
      // Text PostgreSQL cannot store is found before sending; its message names the value.
      const message = e.sqlstate === undefined && e.kind === "data"
        ? e.message
        : `Server refused the row for ${key}: ${e.message}`;
      result.outcomes.push({ item: items[0], ok: false, error: message });
      return;
    }
    default:
      throw error;
  }
}

/** A refusal of the staging table that `copyRows` needs (42501 on CREATE TEMP TABLE). */
function mayNotCreateTempTables(error: UploadError): boolean {
  return error.sqlstate === "42501" && /temporary tables/i.test(error.message);
}

/** Runs one query and returns its rows (errors thrown). */
type QueryFn = (sql: string) => Promise<string[]>;

/** What the write side reports, as run events. */
export type WriterEvent =
  | { event: "retry"; subject: string; attempt: number; delay_ms: number; reason: string }
  | { event: "schema"; table: string; rekeyed: number }
  | { event: "warning"; message: string }
  | {
    event: "lock_wait";
    subjects: string[];
    waited_ms: number;
    holders: LockHolder[];
    message: string;
  }
  | {
    event: "device";
    device_id: string;
    source: string;
    name: string;
    type: string;
    held?: number;
  };

/** The device type when neither config nor the server gives one. */
export const DEFAULT_DEVICE_TYPE = "image_analyzer";

/** Settings of {@linkcode LazyWriter}. */
export interface LazyWriterOptions {
  /** Where rows go. */
  connector: Connector;
  /** Table, device name and type, give-up deadlines. */
  config: Pick<
    UploaderConfig,
    "table" | "deviceName" | "deviceType" | "giveUpAfterSeconds" | "connectTimeoutSeconds"
  >;
  /** This device's id (nothing configured it: only the candidate, see `identity`). */
  deviceId: string;
  /** Where `deviceId` came from. Default `config`. */
  deviceSource?: DeviceSource;
  /** Settles an id nothing configured before anything is written (lib/target/identity.ts). */
  identity?: IdentitySetup;
  /** Told the device the run uses once the schema step settled it. */
  onDevice?: (device: DeviceInfo) => void;
  /** Client-side statement timeout (ms). Default 10 minutes. */
  statementTimeoutMs?: number;
  /** Counts retries (the run's counters). */
  counters: { retries: number };
  /** Receives a `retry` event before each retry and a `schema` event once it is ready. */
  emit: (event: WriterEvent) => void;
  /** Aborting gives up opening the target (an embedded database's first start). */
  signal?: AbortSignal;
  now?: () => number;
}

/**
 * The write side of a run, opened on first use: starts the target (the embedded server
 * included), the session pool, and prepares the schema, once, however many batches ask.
 */
export class LazyWriter {
  #options: LazyWriterOptions;
  #abort = new AbortController();
  #pool: SessionPool | undefined;
  #locks: LockWatch | undefined;
  #opening: Promise<WriteContext> | undefined;

  constructor(options: LazyWriterOptions) {
    this.#options = options;
  }

  /** Whether the target was opened in this run (an embedded database started, say). */
  get opened(): boolean {
    return this.#pool !== undefined;
  }

  /** The write context, opening the target and preparing the schema on the first call. */
  open(): Promise<WriteContext> {
    this.#opening ??= (async () => {
      const o = this.#options;
      const connection = await o.connector.open(o.signal);
      const pool = new SessionPool(psqlFactory(connection));
      this.#pool = pool;
      // PGlite serves one session at a time: nothing there can wait for another's lock.
      this.#locks = o.connector.embedded ? undefined : this.#lockWatch(pool);
      const context: WriteContext = {
        pool,
        locks: this.#locks,
        connection,
        table: o.config.table,
        device: {
          id: o.deviceId,
          name: o.config.deviceName || Deno.hostname(),
          type: o.config.deviceType || DEFAULT_DEVICE_TYPE,
        },
        targetDisplay: o.connector.display,
        giveUpAfterMs: o.config.giveUpAfterSeconds * 1000,
        connectWindowMs: o.config.connectTimeoutSeconds * 1000,
        statementTimeoutMs: o.statementTimeoutMs ?? 600_000,
        // PGlite's socket loses its protocol state on COPY FROM STDIN.
        copyRows: !o.connector.embedded,
        signal: this.#abort.signal,
        stopping: o.signal,
        health: { failingSince: null, answered: false },
        onRetry: (n) => {
          o.counters.retries++;
          o.emit({
            event: "retry",
            subject: n.subject,
            attempt: n.attempt,
            delay_ms: n.delayMs,
            reason: n.reason,
          });
        },
        onWarning: (message) => o.emit({ event: "warning", message }),
        now: o.now,
      };
      const schema = await ensureSchema(context, {
        fromServer: { name: !o.config.deviceName, type: !o.config.deviceType },
        identity: o.identity,
      });
      o.emit({ event: "schema", table: o.config.table, rekeyed: schema.rekeyed });
      for (const message of schema.notes) o.emit({ event: "warning", message });
      const device = context.device;
      o.onDevice?.(device);
      o.emit({
        event: "device",
        device_id: device.id,
        source: schema.identity?.source ?? o.deviceSource ?? "config",
        name: device.name,
        type: device.type,
        ...(schema.identity?.held !== undefined ? { held: schema.identity.held } : {}),
      });
      return context;
    })();
    return this.#opening;
  }

  /** The lock watch of a run: looks through a pooled session, reports `lock_wait` events. */
  #lockWatch(pool: SessionPool): LockWatch {
    const o = this.#options;
    const watch: LockWatch = new LockWatch({
      table: o.config.table,
      exec: async (sql) => {
        const runner = await pool.acquire();
        try {
          return await runner.run(sql, { timeoutMs: 10_000 });
        } finally {
          // A session that came after the run closed its pool would be left running.
          if (watch.closed) runner.kill();
          else pool.release(runner);
        }
      },
      onReport: (report, subjects) => {
        const waitedMs = Math.max(0, ...report.waiting.map((w) => w.waitedMs));
        o.emit({
          event: "lock_wait",
          subjects,
          waited_ms: waitedMs,
          holders: report.holders,
          message: lockWaitMessage(subjects, waitedMs, o.config.table, report.holders),
        });
      },
      now: o.now,
    });
    return watch;
  }

  /** Abandons statements in flight: stops retries and kills every psql session. */
  abandon(): void {
    this.#abort.abort();
    void this.#locks?.close(); // stops its timer now; a look in progress ends with the pool
    this.#pool?.kill();
  }

  /** Closes the lock watch and the sessions (the connector is closed by its owner). */
  async close(): Promise<void> {
    await this.#locks?.close();
    await this.#pool?.close();
  }
}
