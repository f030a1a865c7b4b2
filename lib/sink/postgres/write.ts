/**
 * The write path: one batch of rows written through pooled sessions, each folder's outcome
 * returned. What an error does is the policy's call ({@linkcode actionFor}): transient
 * trouble and lock waits are retried with backoff through lib/core/retry.ts; a batch refused
 * for its data or cut short by a statement timeout is split in halves until the rows at
 * fault are found, and they fail alone with the server's words; anything else stops the run.
 *
 * What a run's batches share is one {@linkcode WriteState} with three documented fields;
 * the settings are fixed once the target opened ({@linkcode WriteSettings}); sessions,
 * signals, reports and the clock come in as {@linkcode WriteEdges}, so a fake runner and a
 * fake clock drive every branch in tests.
 *
 * @module
 */

import { messageOf, UploadError } from "../../core/errors.ts";
import { actionFor, isTempTableRefusal } from "../../core/policy.ts";
import {
  type BackoffOptions,
  FailureClock,
  type GiveUp,
  retry,
  type RetryNotice,
} from "../../core/retry.ts";
import { unreachableHint } from "../../target/target.ts";
import type { DeviceInfo } from "../columns.ts";
import type { SinkItem, WriteResult } from "../sink.ts";
import type { LockWatch } from "./locks.ts";
import type { StatementRunner } from "./pool.ts";
import type { StatementOk } from "./psql.ts";
import { explainReply, lockGiveUp, runWatched } from "./replies.ts";
import type { TablePolicies } from "./schema/checks.ts";
import { buildUpsertScript, buildUpsertStatement, parseUpsertReply } from "./upsert.ts";

/** What every batch of a run is written with, fixed once the target opened. */
export interface WriteSettings {
  /** Target table, optionally schema-qualified. */
  readonly table: string;
  /** The device the rows are written for (as the schema step settled it). */
  readonly device: DeviceInfo;
  /** The target as shown to the user, for messages and hints. */
  readonly targetDisplay: string;
  /**
   * Give up when the server stays unreachable this long (ms), once it has answered; also
   * when a statement keeps being refused a lock (55P03) this long.
   */
  readonly giveUpAfterMs: number;
  /**
   * Give up when a run that has never reached the server fails this long (ms): a wrong
   * host or port should not take the whole `giveUpAfterMs` to say so. Default 15 s.
   */
  readonly connectWindowMs?: number;
  /** Per-statement timeout on the client side (ms); none when absent. */
  readonly statementTimeoutMs?: number;
  /** The backoff schedule (lib/core/retry.ts's default when absent). */
  readonly backoff?: BackoffOptions;
}

/**
 * What the batches of one run share and may change while several are in flight. Nothing
 * else is shared between them.
 */
export class WriteState {
  /**
   * Batches go as psql scripts that COPY their rows into a staging table
   * (`buildUpsertScript`, about half the server CPU per row), else as one statement each
   * (`buildUpsertStatement`). Turned off once, for the rest of the run, when the role may
   * not create temporary tables. A batch reads it once, before it builds its SQL.
   */
  copyRows: boolean;
  /**
   * The connecting role and the tables' row-level security as the schema step found them,
   * named in permission errors; undefined until then.
   */
  access: { role: string; policies: TablePolicies[] } | undefined;
  /**
   * The streak of transient failures against the server and whether it ever answered in
   * this run: one clock, so parallel batches give up together and a success anywhere ends
   * the streak.
   */
  readonly clock: FailureClock;

  constructor(options: { copyRows: boolean; clock?: FailureClock }) {
    this.copyRows = options.copyRows;
    this.access = undefined;
    this.clock = options.clock ?? new FailureClock();
  }
}

/** Where sessions come from: a pool that hands out runners and takes them back. */
export interface RunnerSource {
  /** A live runner; start failures are thrown (`transient`, `config`). */
  acquire(): Promise<StatementRunner>;
  /** Takes a runner back (a dead one is dropped). */
  release(runner: StatementRunner): void;
}

/** Where the write path meets the rest of the run. */
export interface WriteEdges {
  readonly pool: RunnerSource;
  /**
   * Watches statements in flight for lock waits (reported as `lock_wait`). None: no watch
   * (the embedded database, whose one session cannot wait for another).
   */
  readonly locks?: LockWatch;
  /** Aborted when the run abandons its statements: nothing is retried any more. */
  readonly signal: AbortSignal;
  /** Aborted when the run is stopping: statements in flight finish, failures are not retried. */
  readonly stopping?: AbortSignal;
  /** Told before each retry. */
  readonly onRetry?: (notice: RetryNotice) => void;
  /** Told once when COPY is given up for single statements. */
  readonly onWarning?: (message: string) => void;
  /** Clock, sleep and random source of the retries (tests). */
  readonly now?: () => number;
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly random?: () => number;
}

/** The write path of a run: its settings, its shared state, its edges. */
export interface WritePath {
  readonly settings: WriteSettings;
  readonly state: WriteState;
  readonly edges: WriteEdges;
}

/** A lock wait (the server answered: no outage, a deadline of its own). */
function isBlocked(error: unknown): error is UploadError {
  return error instanceof UploadError && error.kind === "blocked";
}

/**
 * Runs `fn` on a pooled session. Errors the policy retries (`transient`: connection
 * refused or lost, too many connections, a server restarting, serialization failures; and
 * `blocked`: a lock wait) are retried after a backoff, a transient one on a fresh session,
 * a lock wait on the same one; everything else is thrown to the caller.
 *
 * @throws {UploadError} `unreachable` once transient failures have lasted past the deadline
 *   (the short connect window while the server never answered in this run, else
 *   `giveUpAfterMs`, the streak shared by the run's batches); `blocked` once this call's
 *   lock waits have lasted `giveUpAfterMs`; `interrupted` when the run abandons its
 *   statements or is stopping; whatever `fn` throws that is not retried.
 */
export function withSession<T>(
  path: WritePath,
  subject: string,
  fn: (runner: StatementRunner) => Promise<T>,
): Promise<T> {
  const { settings, state, edges } = path;
  const lockWaits = new FailureClock();
  return retry(() => attemptOnSession(path, subject, fn), {
    subject,
    clock: state.clock,
    classify: (error) => {
      if (actionFor(error, 1) !== "retry") return { retry: false };
      if (!isBlocked(error)) return { retry: true };
      state.clock.succeeded(); // the server answered
      return { retry: true, streak: { clock: lockWaits, deadlineMs: settings.giveUpAfterMs } };
    },
    deadlineMs: (clock) =>
      clock.answered
        ? settings.giveUpAfterMs
        : Math.min(settings.giveUpAfterMs, settings.connectWindowMs ?? 15_000),
    backoff: settings.backoff,
    signal: edges.signal,
    giveUp: (error, why) =>
      isBlocked(error)
        ? lockGiveUp(error, subject, Math.round(why.elapsedMs / 1000))
        : unreachableError(error, subject, why, path),
    interrupted: () =>
      new UploadError("interrupted", `Interrupted before ${subject} was written`, { subject }),
    onRetry: edges.onRetry,
    reasonOf: messageOf,
    now: edges.now,
    sleep: edges.sleep,
    random: edges.random,
  });
}

/** One attempt of {@linkcode withSession}: a runner from the pool, `fn`, the runner back. */
async function attemptOnSession<T>(
  path: WritePath,
  subject: string,
  fn: (runner: StatementRunner) => Promise<T>,
): Promise<T> {
  const { pool, signal, stopping } = path.edges;
  let runner: StatementRunner | undefined;
  try {
    runner = await pool.acquire();
    const result = await fn(runner);
    pool.release(runner);
    return result;
  } catch (error) {
    const again = actionFor(error, 1) === "retry";
    if (runner) {
      // The next attempt starts a fresh psql, except after a lock wait: that session is fine.
      if (again && !isBlocked(error)) runner.kill();
      pool.release(runner); // a dead session is dropped by the pool
    }
    if (again && (signal.aborted || stopping?.aborted)) {
      // The run abandoned its statements (killing their sessions), or it is stopping (a
      // service manager's stop may have signalled psql too): no outage to retry or
      // report; the folders stay pending for the next run.
      throw new UploadError("interrupted", `Interrupted while ${subject} was written`, {
        subject,
      });
    }
    throw error;
  }
}

/** The error that stops the run once the server stayed unreachable past the deadline. */
function unreachableError(
  error: unknown,
  subject: string,
  why: GiveUp,
  path: WritePath,
): UploadError {
  const display = path.settings.targetDisplay;
  const seconds = Math.round(why.elapsedMs / 1000);
  const message = path.state.clock.answered
    ? `Server ${display} unreachable for ${seconds} s, giving up: ${messageOf(error)}`
    : `Server ${display} unreachable: no connection in ${seconds} s of trying: ${messageOf(error)}`;
  return new UploadError("unreachable", message, {
    subject,
    hint: (error as UploadError).hint ?? unreachableHint(display),
  });
}

/**
 * Writes a batch of rows in one upsert (a COPY script, or a statement once `copyRows` is
 * off) and returns each folder's outcome. A batch refused for its data or cut short by a
 * statement timeout is split in halves until the rows at fault are isolated; they fail
 * alone with the server's SQLSTATE and message and the rest land. Transient failures and
 * lock waits are retried ({@linkcode withSession}).
 *
 * @throws {UploadError} what stops the run: `config` (a refused permission, a read-only
 *   database), `unreachable`, `blocked` past the deadline, `interrupted`, `fatal`.
 */
export async function writeBatch<T extends SinkItem>(
  items: T[],
  batchName: string,
  path: WritePath,
): Promise<WriteResult<T>> {
  const result: WriteResult<T> = { outcomes: [], inserted: 0, updated: 0, statements: 0 };
  await writePart(items, batchName, path, result);
  return result;
}

async function writePart<T extends SinkItem>(
  items: T[],
  batchName: string,
  path: WritePath,
  result: WriteResult<T>,
): Promise<void> {
  if (items.length === 0) return;
  let error: unknown;
  try {
    // Read once: another batch may turn copyRows off while this one is in flight.
    const copy = path.state.copyRows;
    const reply = await sendPart(items, batchName, path, copy, result);
    if (!(reply instanceof UploadError)) return acknowledge(items, reply, result);
    if (copy && isTempTableRefusal(reply.sqlstate, reply.message)) {
      // A role without TEMP on the database: the same rows as one statement instead. Batches
      // in flight at the same time are refused alike; the first one to come back warns.
      if (path.state.copyRows) giveUpCopy(path, reply);
      return writePart(items, batchName, path, result);
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
      await writePart(items.slice(0, half), batchName, path, result);
      await writePart(items.slice(half), batchName, path, result);
      return;
    }
    case "fail":
      result.outcomes.push({ item: items[0], ok: false, error: refusalOf(items[0], error) });
      return;
    default:
      throw error;
  }
}

/**
 * Sends one part of a batch on a pooled session (retried as {@linkcode withSession} says)
 * and returns the server's acknowledgment, or its refusal as the error the policy acts on.
 */
async function sendPart<T extends SinkItem>(
  items: T[],
  batchName: string,
  path: WritePath,
  copy: boolean,
  result: WriteResult<T>,
): Promise<StatementOk | UploadError> {
  const { settings } = path;
  const rows = items.map((i) => i.row);
  const texts = items.map((i) => i.json);
  const options = { table: settings.table, device: settings.device, batchName };
  const sql = copy
    ? buildUpsertScript(rows, options, texts, items.map((i) => i.rawSpan))
    : buildUpsertStatement(rows, options, texts);
  // Text the statement carries (its header), by which the lock watch finds it.
  const parts = [`"upload_batch":${JSON.stringify(batchName)}`, settings.device.id];
  return await withSession(path, batchName, async (runner) => {
    result.statements++;
    const { reply, watched } = await runWatched(runner, sql, {
      timeoutMs: settings.statementTimeoutMs,
      script: copy,
    }, { path, subject: batchName, parts });
    if (reply.ok) return reply;
    const refused = await explainReply(reply, batchName, path, runner, watched);
    if (actionFor(refused, items.length) === "retry") throw refused;
    return refused;
  });
}

/** Records an acknowledged part: its counts, and each folder's outcome. */
function acknowledge<T extends SinkItem>(
  items: T[],
  reply: StatementOk,
  result: WriteResult<T>,
): void {
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
}

/** COPY given up for the rest of the run: the role may not create temporary tables. */
function giveUpCopy(path: WritePath, refusal: UploadError): void {
  path.state.copyRows = false;
  path.edges.onWarning?.(
    `${path.settings.targetDisplay} refuses temporary tables to this role (${refusal.sqlstate}): ` +
      "each batch goes as one statement instead, which costs the server about twice the " +
      "CPU per row; `grant temporary on database ...` to the role restores the faster way",
  );
}

/** Why a single row failed, naming its folder. */
function refusalOf(item: SinkItem, error: unknown): string {
  const e = error as UploadError;
  // Text PostgreSQL cannot store is found before sending; its message names the value.
  return e.sqlstate === undefined && e.kind === "data"
    ? e.message
    : `Server refused the row for ${item.row.folder_key}: ${e.message}`;
}
