/**
 * Lock waits: who holds the lock a statement of this run waits for. Two read-only queries,
 * each one statement with no session state (so they work through a transaction pooler):
 *
 * - {@linkcode buildLockWaitStatement} finds this run's statements that wait on a lock (by
 *   text they carry: the batch header, the schema step's comment) and the sessions in their
 *   way (`pg_blocking_pids`);
 * - {@linkcode buildLockHoldersStatement}, after the server's `lock_timeout` cancelled a
 *   statement (55P03), lists the sessions holding or queueing for locks on the tables
 *   that conflict with a write.
 *
 * {@linkcode LockWatch} runs the first one through another session while a statement has
 * been in flight for a few seconds, so a batch stuck behind a lock says what it waits on.
 * The rest is pure: SQL text, parsing the one-line JSON reply, the sentences.
 *
 * @module
 */

import type { LockHolder } from "../sink.ts";
import type { StatementReply } from "./psql.ts";
import { sqlLiteral, tableRef } from "./quote.ts";

export type { LockHolder };

/** What a lock query found. */
export interface LockReport {
  /** Ids of the tracked statements found waiting on a lock, and how long each waited. */
  waiting: { id: string; waitedMs: number }[];
  /** Sessions in the way. */
  holders: LockHolder[];
  /** The server's `lock_timeout` for this role (`0` is none). */
  lockTimeout: string | null;
}

/** A statement in flight, found on the server by text it carries (all of `parts`). */
export interface TrackedStatement {
  id: string;
  parts: string[];
}

/** Longest statement text of a holder kept in a message. */
const QUERY_CHARS = 160;

/** Lock modes that conflict with the RowExclusiveLock an INSERT or UPDATE takes. */
const WRITE_CONFLICTS = [
  "ShareLock",
  "ShareRowExclusiveLock",
  "ExclusiveLock",
  "AccessExclusiveLock",
];

/** The `pg_locks.relation` values of the upload table and its `devices` table. */
function relations(table: string): string {
  const ref = tableRef(table);
  return `array[to_regclass(${ref.regclass}), to_regclass(${ref.devicesRegclass})]::oid[]`;
}

/** The JSON of the holders listed in CTE `holder_pids` (column `pid`). */
function holdersJson(table: string): string {
  return `coalesce((select json_agg(json_build_object(
    'pid', h.pid, 'user', a.usename, 'application', nullif(a.application_name, ''),
    'state', a.state,
    'seconds', round(extract(epoch from clock_timestamp() - coalesce(a.xact_start, a.query_start))),
    'query', left(regexp_replace(a.query, '\\s+', ' ', 'g'), ${QUERY_CHARS}),
    'modes', coalesce((select json_agg(distinct l.mode) from pg_locks l
      where l.pid = h.pid and l.relation = any(${relations(table)})), '[]'::json)
  ) order by h.pid) from holder_pids h left join pg_stat_activity a on a.pid = h.pid), '[]'::json)`;
}

/**
 * The query that finds which tracked statements wait on a lock, and who holds it: one
 * read-only statement returning one line of JSON (read it with {@linkcode parseLockReport}).
 * A statement is found by the text it carries (every part of `parts`), among the sessions
 * of the same role.
 *
 * @example
 * ```ts
 * buildLockWaitStatement([{ id: "batch_1", parts: ['"upload_batch":"batch_1"'] }], "device_test");
 * ```
 */
export function buildLockWaitStatement(
  tracked: readonly TrackedStatement[],
  table: string,
): string {
  return `with tracked as (
  select t.id, array(select jsonb_array_elements_text(t.parts)) as parts
  from jsonb_to_recordset(${sqlLiteral(JSON.stringify(tracked))}::jsonb) as t(id text, parts jsonb)
), waiting as (
  select t.id, a.pid, pg_blocking_pids(a.pid) as blockers,
    round(extract(epoch from clock_timestamp() - a.query_start) * 1000) as waited_ms
  from pg_stat_activity a join tracked t
    on (select bool_and(position(p in a.query) > 0) from unnest(t.parts) p)
  where a.wait_event_type = 'Lock' and a.pid <> pg_backend_pid() and a.usename = current_user
), holder_pids as (
  select distinct unnest(blockers) as pid from waiting
)
select json_build_object(
  'waiting', coalesce((select json_agg(json_build_object('id', id, 'waited_ms', waited_ms))
    from waiting), '[]'::json),
  'holders', ${holdersJson(table)},
  'lock_timeout', current_setting('lock_timeout')
)::text`;
}

/**
 * The query that lists the sessions in the way of a write to the tables, for a statement
 * the server's `lock_timeout` already cancelled: sessions holding or queueing for a lock on
 * the tables that conflicts with a write, and sessions idle in a transaction that wrote to
 * them (their row locks). One read-only statement, one line of JSON
 * ({@linkcode parseLockReport}; `waiting` is empty).
 */
export function buildLockHoldersStatement(table: string, application: string): string {
  const conflicts = WRITE_CONFLICTS.map((m) => sqlLiteral(m)).join(", ");
  return `with holder_pids as (
  select distinct l.pid from pg_locks l left join pg_stat_activity a on a.pid = l.pid
  where l.relation = any(${relations(table)}) and l.pid <> pg_backend_pid()
    and (l.mode in (${conflicts})
      or (l.granted and l.mode = 'RowExclusiveLock' and a.state like 'idle in transaction%'
        and a.application_name is distinct from ${sqlLiteral(application)}))
)
select json_build_object(
  'waiting', '[]'::json,
  'holders', ${holdersJson(table)},
  'lock_timeout', current_setting('lock_timeout')
)::text`;
}

function textOrNull(value: unknown): string | null {
  return typeof value === "string" && value !== "" ? value : null;
}

/**
 * Reads the reply of {@linkcode buildLockWaitStatement} or
 * {@linkcode buildLockHoldersStatement}; undefined for a reply that is not theirs.
 * A statement the server hides from this role (`<insufficient privilege>`) reads as null.
 */
export function parseLockReport(rows: readonly string[]): LockReport | undefined {
  if (rows.length !== 1) return undefined;
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(rows[0]);
  } catch {
    return undefined; // not the lock query's reply: the caller says nothing
  }
  if (!value || !Array.isArray(value.waiting) || !Array.isArray(value.holders)) return undefined;
  const waiting = (value.waiting as Record<string, unknown>[]).map((w) => ({
    id: String(w.id),
    waitedMs: Number(w.waited_ms) || 0,
  }));
  const holders = (value.holders as Record<string, unknown>[]).map((h): LockHolder => {
    const query = textOrNull(h.query);
    return {
      pid: Number(h.pid),
      user: textOrNull(h.user),
      application: textOrNull(h.application),
      state: textOrNull(h.state),
      seconds: typeof h.seconds === "number" ? h.seconds : null,
      query: query === "<insufficient privilege>" ? null : query,
      modes: Array.isArray(h.modes) ? h.modes.map(String) : [],
    };
  });
  return { waiting, holders, lockTimeout: textOrNull(value.lock_timeout) };
}

/**
 * One holder as a phrase: pid, then what the server shows of it.
 *
 * @example
 * ```ts
 * describeHolder({ pid: 42, user: "lab", application: "psql", state: "idle in transaction",
 *   seconds: 41, query: "lock table device_test", modes: ["AccessExclusiveLock"] });
 * // 'pid 42 (lab, psql, idle in transaction for 41 s, AccessExclusiveLock: lock table device_test)'
 * ```
 */
export function describeHolder(h: LockHolder): string {
  const who = [h.user, h.application].filter((x) => x !== null);
  if (h.state !== null) who.push(h.seconds !== null ? `${h.state} for ${h.seconds} s` : h.state);
  if (h.modes.length > 0) who.push(h.modes.join("/"));
  const query = h.query !== null ? `: ${h.query}` : "";
  return who.length > 0 || query ? `pid ${h.pid} (${who.join(", ")}${query})` : `pid ${h.pid}`;
}

/**
 * The sessions in the way, as a clause: `held by pid 42 (...)`, the first three named, or
 * a clause saying the server did not tell.
 */
export function describeHolders(holders: readonly LockHolder[]): string {
  if (holders.length === 0) return "the server does not show who holds it";
  const named = holders.slice(0, 3).map(describeHolder).join("; ");
  const more = holders.length > 3 ? ` and ${holders.length - 3} more` : "";
  return `held by ${named}${more}`;
}

/**
 * The sentence for statements waiting on a lock: what waits, how long, on which table, and
 * who holds it.
 *
 * @example
 * ```ts
 * lockWaitMessage(["batch_1"], 12_000, "device_test", []);
 * // "batch_1 has waited 12 s for a lock on device_test; the server does not show who holds it"
 * ```
 */
export function lockWaitMessage(
  subjects: readonly string[],
  waitedMs: number,
  table: string,
  holders: readonly LockHolder[],
): string {
  const what = subjects.length === 1
    ? `${subjects[0]} has`
    : `${subjects.length} statements (${subjects.slice(0, 3).join(", ")}${
      subjects.length > 3 ? ", ..." : ""
    }) have`;
  return `${what} waited ${Math.round(waitedMs / 1000)} s for a lock on ${table}; ` +
    describeHolders(holders);
}

/** Settings of {@linkcode LockWatch}. */
export interface LockWatchOptions {
  /** Runs one statement on a session other than the ones waiting (a pooled idle one). */
  exec: (sql: string) => Promise<StatementReply>;
  /** The upload table (its `devices` table is watched too). */
  table: string;
  /** Told what the waiting statements wait on. */
  onReport: (report: LockReport, subjects: string[]) => void;
  /** A statement is looked for after it has been in flight this long (ms). Default 5,000. */
  afterMs?: number;
  /** Looks again this often while statements stay in flight (ms). Default 5,000. */
  everyMs?: number;
  /** The same holders are reported again after this long (ms). Default 30,000. */
  repeatMs?: number;
  now?: () => number;
}

/** A statement being watched; {@linkcode LockWatch.track} returns it. */
export interface WatchedStatement {
  /** Whether a look found it waiting on a lock. */
  readonly sawLock: boolean;
  /** What the last look found in its way, when it found it waiting. */
  readonly holders: readonly LockHolder[];
  /** Stops watching it (its reply came). */
  done(): void;
}

interface Entry extends TrackedStatement {
  subject: string;
  startedAt: number;
  sawLock: boolean;
  holders: LockHolder[];
}

/**
 * Watches this run's statements in flight: once one has been in flight for `afterMs`, it
 * runs {@linkcode buildLockWaitStatement} through `exec` every `everyMs` while any is in
 * flight, and reports the statements found waiting with the sessions in their way (again
 * when the holders change, or after `repeatMs`). A look that fails (no session to be had,
 * a refused query) says nothing: the watch is advice, the statements go on regardless.
 */
export class LockWatch {
  readonly #options: LockWatchOptions;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #looking: Promise<void> | undefined;
  #lastLook = 0;
  #lastReport = { text: "", at: 0 };
  #seq = 0;
  #closed = false;

  constructor(options: LockWatchOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** Starts watching a statement about to be sent, found on the server by all of `parts`. */
  track(subject: string, parts: string[]): WatchedStatement {
    const entry: Entry = {
      id: `s${++this.#seq}`,
      parts,
      subject,
      startedAt: this.#now(),
      sawLock: false,
      holders: [],
    };
    this.#entries.set(entry.id, entry);
    this.#schedule();
    return {
      get sawLock() {
        return entry.sawLock;
      },
      get holders() {
        return entry.holders;
      },
      done: () => {
        this.#entries.delete(entry.id);
        if (this.#entries.size === 0) this.#cancel();
      },
    };
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Stops watching. A look in progress is waited for up to `graceMs` (default 2,000): one
   * stuck on a session that cannot connect must not hold up the end of a run.
   */
  async close(graceMs = 2_000): Promise<void> {
    this.#closed = true;
    this.#cancel();
    if (this.#looking === undefined) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#looking,
      new Promise<void>((resolve) => timer = setTimeout(resolve, graceMs)),
    ]);
    clearTimeout(timer);
  }

  #cancel(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(): void {
    if (this.#closed || this.#timer !== undefined || this.#looking || this.#entries.size === 0) {
      return;
    }
    const afterMs = this.#options.afterMs ?? 5_000;
    const everyMs = this.#options.everyMs ?? 5_000;
    const oldest = Math.min(...[...this.#entries.values()].map((e) => e.startedAt));
    const due = Math.max(oldest + afterMs, this.#lastLook + everyMs);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#looking = this.#look().finally(() => {
        this.#looking = undefined;
        this.#schedule();
      });
    }, Math.max(0, due - this.#now()));
  }

  async #look(): Promise<void> {
    const now = this.#now();
    const afterMs = this.#options.afterMs ?? 5_000;
    const due = [...this.#entries.values()].filter((e) => now - e.startedAt >= afterMs);
    if (due.length === 0) return;
    this.#lastLook = now;
    let report: LockReport | undefined;
    try {
      const tracked = due.map((e) => ({ id: e.id, parts: e.parts }));
      const reply = await this.#options.exec(buildLockWaitStatement(tracked, this.#options.table));
      report = reply.ok ? parseLockReport(reply.rows) : undefined;
    } catch (_error) {
      // No session to look with (too many connections, the server gone): the statements'
      // own outcome will say what happened; the watch has nothing to add.
      return;
    }
    if (report === undefined || report.waiting.length === 0 || this.#closed) return;
    const subjects: string[] = [];
    for (const w of report.waiting) {
      const entry = this.#entries.get(w.id);
      if (!entry) continue;
      entry.sawLock = true;
      entry.holders = report.holders;
      if (!subjects.includes(entry.subject)) subjects.push(entry.subject);
    }
    if (subjects.length === 0) return;
    const text = `${subjects.join(",")} ${report.holders.map((h) => h.pid).join(",")}`;
    const repeatMs = this.#options.repeatMs ?? 30_000;
    if (text === this.#lastReport.text && now - this.#lastReport.at < repeatMs) return;
    this.#lastReport = { text, at: now };
    this.#options.onReport(report, subjects);
  }
}
