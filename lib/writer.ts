/**
 * The write path to the server: a pool of long-lived psql sessions, the schema step, and
 * one function that writes a batch of rows and returns each folder's outcome — retrying
 * transient failures with backoff, splitting batches the server refuses for their data
 * until the bad folders are found, and giving up when the server stays unreachable.
 *
 * @module
 */

import { messageOf, UploadError } from "./errors.ts";
import { classifySqlstate, type PsqlConnection, PsqlSession, type StatementReply } from "./psql.ts";
import { backoffDelay, type BackoffOptions, sleep } from "./retry.ts";
import { buildUpsertStatement, parseUpsertReply, type UploadRow } from "./sql.ts";
import {
  describePermissionError,
  ensureSchema as prepareSchema,
  isSchemaTimeout,
  SCHEMA_TIMEOUT_ATTEMPTS,
  schemaTimeoutError,
} from "./schema.ts";
import { unreachableHint } from "./target.ts";
import type { Connector } from "./connect.ts";
import type { UploaderConfig } from "../config.ts";

/** Something that runs one statement at a time: a psql session, or a stand-in in tests. */
export interface StatementRunner {
  readonly alive: boolean;
  run(sql: string, options?: { timeoutMs?: number }): Promise<StatementReply>;
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
  table: string;
  device: { id: string; name: string; type: string };
  /** Display name of the target, for hints. */
  targetDisplay: string;
  /** Give up when the server stays unreachable this long (ms). */
  giveUpAfterMs: number;
  /** Per-statement timeout on the client side (ms); none when 0. */
  statementTimeoutMs?: number;
  backoff?: BackoffOptions;
  signal: AbortSignal;
  onRetry?: (notice: RetryNotice) => void;
  /** When the current streak of transient failures began (shared by parallel batches). */
  health: { failingSince: number | null };
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
export interface ItemOutcome {
  item: BatchItem;
  ok: boolean;
  error?: string;
}

/** What the server said about a written batch. */
export interface WriteResult {
  outcomes: ItemOutcome[];
  inserted: number;
  updated: number;
  statements: number;
}

/**
 * Runs `fn` on a pooled session, retrying transient failures (connection refused or
 * lost, too many connections, server shutting down, serialization failures) with backoff.
 *
 * @throws {UploadError} `unreachable` once failures have lasted past the deadline,
 * `interrupted` when the run is aborted, `config` for permission or schema problems.
 */
async function withSession<T>(
  ctx: WriteContext,
  subject: string,
  fn: (runner: StatementRunner) => Promise<T>,
): Promise<T> {
  const now = ctx.now ?? Date.now;
  let attempt = 0;
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
      return result;
    } catch (error) {
      if (runner) {
        if (!(error instanceof UploadError && error.kind === "transient")) {
          ctx.pool.release(runner);
        } else {
          runner.kill();
          ctx.pool.release(runner);
        }
      }
      if (!(error instanceof UploadError) || error.kind !== "transient") throw error;
      const t = now();
      ctx.health.failingSince ??= t;
      if (t - ctx.health.failingSince >= ctx.giveUpAfterMs) {
        throw new UploadError(
          "unreachable",
          `Server ${ctx.targetDisplay} unreachable for ${
            Math.round((t - ctx.health.failingSince) / 1000)
          } s, giving up: ${error.message}`,
          { subject, hint: unreachableHint(ctx.targetDisplay), cause: error },
        );
      }
      attempt++;
      const delayMs = backoffDelay(attempt, ctx.backoff);
      ctx.onRetry?.({ subject, attempt, delayMs, reason: error.message });
      await sleep(delayMs, ctx.signal);
    }
  }
}

/** Turns an error reply into an UploadError of the right kind. */
function replyError(reply: StatementReply & { ok: false }, subject: string, ctx: WriteContext) {
  const kind = classifySqlstate(reply.sqlstate);
  if (reply.sqlstate === "42501") {
    return describePermissionError(reply, {
      table: ctx.table,
      targetDisplay: ctx.targetDisplay,
      subject,
    });
  }
  return new UploadError(
    kind === "data" ? "data" : kind,
    `${reply.sqlstate}: ${reply.message}`,
    { subject, sqlstate: reply.sqlstate },
  );
}

/**
 * Creates or upgrades the remote schema and registers this device (see `schema.ts`
 * `ensureSchema`). Idempotent. A schema step the server cancels (57014) is retried a few
 * times, then reported as a configuration error naming statement_timeout.
 *
 * @returns how many duplicate rows of an original-shape table were re-keyed.
 */
export async function ensureSchema(ctx: WriteContext): Promise<{ rekeyed: number }> {
  // Transient refusals (deadlock, too many connections, shutdown) are retried here like a
  // lost connection; a statement timeout (57014) goes back to the schema step, which names it.
  const exec = (sql: string) =>
    withSession(ctx, "schema", async (runner) => {
      const reply = await runner.run(sql);
      if (
        !reply.ok && reply.sqlstate !== "57014" && classifySqlstate(reply.sqlstate) === "transient"
      ) throw replyError(reply, "schema", ctx);
      return reply;
    });
  const options = { table: ctx.table, device: ctx.device, targetDisplay: ctx.targetDisplay };
  for (let attempt = 1;; attempt++) {
    try {
      const result = await prepareSchema(exec, options);
      return { rekeyed: result.rekeyed };
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
 * Writes a batch of rows in one upsert statement and returns each folder's outcome.
 * A batch refused for its data is split in halves until the bad rows are isolated; they
 * fail with the server's SQLSTATE and message, the rest land. A statement timeout splits
 * the batch too (smaller statements finish sooner) without charging any folder.
 */
export async function writeBatch(
  items: BatchItem[],
  batchName: string,
  ctx: WriteContext,
): Promise<WriteResult> {
  const result: WriteResult = { outcomes: [], inserted: 0, updated: 0, statements: 0 };
  await writePart(items, batchName, ctx, result);
  return result;
}

async function writePart(
  items: BatchItem[],
  batchName: string,
  ctx: WriteContext,
  result: WriteResult,
): Promise<void> {
  if (items.length === 0) return;
  let sql: string;
  try {
    sql = buildUpsertStatement(items.map((i) => i.row), {
      table: ctx.table,
      device: ctx.device,
      batchName,
    }, items.map((i) => i.json));
  } catch (error) {
    // Text PostgreSQL cannot store, or a value nested too deeply to serialize (RangeError):
    // find the row(s) the same way the server's refusals are.
    const unstorable = error instanceof UploadError && error.kind === "data";
    if (!unstorable && !(error instanceof RangeError)) throw error;
    if (items.length === 1) {
      const message = unstorable
        ? error.message
        : `Cannot build the upsert for ${items[0].row.folder_key}: ${messageOf(error)}`;
      result.outcomes.push({ item: items[0], ok: false, error: message });
      return;
    }
    const half = Math.ceil(items.length / 2);
    await writePart(items.slice(0, half), batchName, ctx, result);
    await writePart(items.slice(half), batchName, ctx, result);
    return;
  }
  const outcome = await withSession(ctx, batchName, async (runner) => {
    result.statements++;
    const reply = await runner.run(sql, { timeoutMs: ctx.statementTimeoutMs });
    if (reply.ok) return { reply } as const;
    const error = replyError(reply, batchName, ctx);
    if (error.kind === "data") return { reply, error } as const;
    if (reply.sqlstate === "57014" && items.length > 1) {
      return { reply, error, split: true } as const;
    }
    throw error;
  });
  if (outcome.reply.ok) {
    const counts = parseUpsertReply(outcome.reply.rows);
    result.inserted += counts.inserted;
    result.updated += counts.updated;
    for (const item of items) result.outcomes.push({ item, ok: true });
    return;
  }
  if (items.length === 1) {
    result.outcomes.push({
      item: items[0],
      ok: false,
      error: `Server refused the row for ${items[0].row.folder_key}: ${messageOf(outcome.error)}`,
    });
    return;
  }
  const half = Math.ceil(items.length / 2);
  await writePart(items.slice(0, half), batchName, ctx, result);
  await writePart(items.slice(half), batchName, ctx, result);
}

/** What the write side reports, as run events. */
export type WriterEvent =
  | { event: "retry"; subject: string; attempt: number; delay_ms: number; reason: string }
  | { event: "schema"; table: string; rekeyed: number };

/** Settings of {@linkcode LazyWriter}. */
export interface LazyWriterOptions {
  /** Where rows go. */
  connector: Connector;
  /** Table, device name and type, give-up deadline. */
  config: Pick<UploaderConfig, "table" | "deviceName" | "deviceType" | "giveUpAfterSeconds">;
  /** This device's id. */
  deviceId: string;
  /** Client-side statement timeout (ms). Default 10 minutes. */
  statementTimeoutMs?: number;
  /** Counts retries (the run's counters). */
  counters: { retries: number };
  /** Receives a `retry` event before each retry and a `schema` event once it is ready. */
  emit: (event: WriterEvent) => void;
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
  #opening: Promise<WriteContext> | undefined;

  constructor(options: LazyWriterOptions) {
    this.#options = options;
  }

  /** The write context, opening the target and preparing the schema on the first call. */
  open(): Promise<WriteContext> {
    this.#opening ??= (async () => {
      const o = this.#options;
      const connection = await o.connector.open();
      this.#pool = new SessionPool(psqlFactory(connection));
      const context: WriteContext = {
        pool: this.#pool,
        table: o.config.table,
        device: {
          id: o.deviceId,
          name: o.config.deviceName || Deno.hostname(),
          type: o.config.deviceType,
        },
        targetDisplay: o.connector.display,
        giveUpAfterMs: o.config.giveUpAfterSeconds * 1000,
        statementTimeoutMs: o.statementTimeoutMs ?? 600_000,
        signal: this.#abort.signal,
        health: { failingSince: null },
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
        now: o.now,
      };
      const schema = await ensureSchema(context);
      o.emit({ event: "schema", table: o.config.table, rekeyed: schema.rekeyed });
      return context;
    })();
    return this.#opening;
  }

  /** Abandons statements in flight: stops retries and kills every psql session. */
  abandon(): void {
    this.#abort.abort();
    this.#pool?.kill();
  }

  /** Closes the sessions (the connector is closed by its owner). */
  async close(): Promise<void> {
    await this.#pool?.close();
  }
}
