/**
 * Each device's health on the server: one row per device in `device_health` (beside the
 * upload table), upserted by every run that sends rows at its end, and about once a
 * minute by a `--watch`. `deno task fleet` reads it (lib/fleet/report.ts).
 *
 * The record is one `INSERT ... ON CONFLICT (device_id) DO UPDATE` with every value inside
 * one JSON literal: no session state, so it works through a transaction pooler. Times are
 * the server's (`now()`, and the run's start as `now()` minus its duration), so a device
 * whose clock is wrong (a Raspberry Pi before NTP) still reports when it was seen.
 *
 * The table is part of the schema (created and upgraded with the others, printed by
 * `--print-schema`, granted to the uploading role); a database whose schema predates it
 * gets it from the first report that finds it missing. The report never decides a run's
 * outcome: a refusal, a missing privilege or a lost connection is one warning, and the
 * run's exit code stays what its folders made it.
 *
 * @module
 */

import type { Connector } from "../target/connect.ts";
import { messageOf, type RunStatus } from "../core/errors.ts";
import { isMissingTableOrColumn, isPermissionRefusal } from "../core/policy.ts";
import type { RunCounters, RunMode } from "../core/events.ts";
import { PsqlSession, type StatementError } from "../sink/postgres/psql.ts";
import { sleep } from "../core/retry.ts";
import {
  checkDevice,
  quoteIdent,
  sqlLiteral,
  type TableRef,
  tableRef,
} from "../sink/postgres/quote.ts";
import type { Run } from "../engine/run.ts";
import type { FolderCounts } from "../tracker/recorder.ts";
import { TOOL_VERSION } from "../core/version.ts";

/** The health table's own name; it lives in the upload table's schema. */
export const HEALTH_TABLE = "device_health";

/** How often a `--watch` reports its health (ms). */
export const HEALTH_EVERY_MS = 60_000;

/** Where the hints of this module send an owner. */
const PRINT_SCHEMA_COMMAND = "deno task upload --print-schema";

/** Arbitrary constant: the transaction-scoped advisory lock serializing the table's creation. */
const HEALTH_LOCK_KEY = "7305245915382616902";

/** The health table beside `table`, quoted for SQL text. */
export interface HealthRef {
  /** Quoted, possibly schema-qualified name. */
  sql: string;
  /** `to_regclass(...)` argument: the quoted name as a literal. */
  regclass: string;
  /** The name for messages (`device_health`, `lab.device_health`). */
  display: string;
}

/**
 * The health table in the schema of the upload table `table` (a name, or its
 * {@linkcode TableRef}).
 *
 * @throws UploadError `config` for an invalid table name.
 *
 * @example
 * ```ts
 * healthRef("lab.device_test").sql; // "lab"."device_health"
 * ```
 */
export function healthRef(table: string | TableRef): HealthRef {
  const ref = typeof table === "string" ? tableRef(table) : table;
  const prefix = ref.schema === undefined ? "" : `${quoteIdent(ref.schema)}.`;
  const sql = `${prefix}${quoteIdent(HEALTH_TABLE)}`;
  return {
    sql,
    regclass: sqlLiteral(sql),
    display: ref.schema === undefined ? HEALTH_TABLE : `${ref.schema}.${HEALTH_TABLE}`,
  };
}

/**
 * Columns of the health table: name, type as created, type as added to an older table.
 * `outcome` is a run status (completed, failed, interrupted, stopped, unreachable) or
 * `running` while a `--watch` goes on; the counts are the tracker's at the time of the
 * report (`uploaded`: acknowledged by the server in this run).
 */
const HEALTH_COLUMNS: ReadonlyArray<readonly [string, string]> = [
  ["device_id", "uuid"],
  ["device_name", "text"],
  ["host_name", "text"],
  ["tool_version", "text"],
  ["mode", "text"],
  ["outcome", "text"],
  ["exit_code", "integer"],
  ["run_started_at", "timestamptz"],
  ["run_ended_at", "timestamptz"],
  ["reported_at", "timestamptz not null default now()"],
  ["uploaded", "integer not null default 0"],
  ["failed", "integer not null default 0"],
  ["exhausted", "integer not null default 0"],
  ["pending", "integer not null default 0"],
  ["settling", "integer not null default 0"],
  ["markers_owed", "integer not null default 0"],
];

/** Columns the report writes from its JSON record, with their SQL types. */
const RECORD_COLUMNS: ReadonlyArray<readonly [string, string]> = [
  ["device_id", "uuid"],
  ["device_name", "text"],
  ["host_name", "text"],
  ["tool_version", "text"],
  ["mode", "text"],
  ["outcome", "text"],
  ["exit_code", "integer"],
  ["uploaded", "integer"],
  ["failed", "integer"],
  ["exhausted", "integer"],
  ["pending", "integer"],
  ["settling", "integer"],
  ["markers_owed", "integer"],
];

/**
 * PL/pgSQL: a nested block that creates the health table when it is missing and adds the
 * columns an older one lacks; for the body of a `DO` block (the schema step's, or
 * {@linkcode buildHealthSchemaStatement}'s). It declares its own variables and takes its
 * own transaction-scoped advisory lock.
 *
 * @throws UploadError `config` for an invalid table name.
 */
export function buildHealthDdl(table: string | TableRef): string {
  const h = healthRef(table);
  const created = HEALTH_COLUMNS.map(([name, type]) =>
    `        ${quoteIdent(name)} ${name === "device_id" ? `${type} primary key` : type}`
  ).join(",\n");
  const values = HEALTH_COLUMNS.map(([name, type]) => `(${sqlLiteral(name)}, ${sqlLiteral(type)})`)
    .join(",\n        ");
  return `  -- The per-device health record (${h.display}), read by deno task fleet.\n` +
    `  declare\n` +
    `    health regclass;\n` +
    `    col record;\n` +
    `  begin\n` +
    `    perform pg_advisory_xact_lock(${HEALTH_LOCK_KEY});\n` +
    `    health := to_regclass(${h.regclass});\n` +
    `    if health is null then\n` +
    `      create table ${h.sql} (\n${created}\n      );\n` +
    `      health := to_regclass(${h.regclass});\n` +
    `    end if;\n` +
    `    for col in select v.name, v.type from (values\n        ${values}\n` +
    `      ) v(name, type) where not exists (select 1 from pg_catalog.pg_attribute a\n` +
    `        where a.attrelid = health and a.attname = v.name and a.attnum > 0\n` +
    `        and not a.attisdropped)\n` +
    `    loop\n` +
    `      execute format('alter table %s add column %I %s', health, col.name, col.type);\n` +
    `    end loop;\n` +
    `  end;`;
}

/**
 * ONE `DO` block (one transaction) that creates or upgrades the health table alone: what
 * a report runs when it finds the table or a column missing.
 *
 * @throws UploadError `config` for an invalid table name.
 */
export function buildHealthSchemaStatement(table: string): string {
  const body = buildHealthDdl(table);
  let tag = "$health$";
  for (let n = 1; body.includes(tag); n++) tag = `$health${n}$`;
  return `do ${tag}\nbegin\n${body}\nend\n${tag};`;
}

/** One health report, as the device sends it. */
export interface HealthRecord {
  deviceId: string;
  deviceName: string;
  hostName: string;
  /** The uploader's version ({@linkcode TOOL_VERSION}). */
  version: string;
  mode: RunMode;
  /** How the run ended, or `running` (a `--watch` reporting as it goes). */
  outcome: RunStatus | "running";
  /** The run's exit code; null while it runs. */
  exitCode: number | null;
  /** How long the run has lasted (ms): its start is the server's now() minus this. */
  elapsedMs: number;
  /** The run has ended: its end is the server's now(). */
  ended: boolean;
  counts: HealthCounts;
}

/** The counts of a health report. */
export interface HealthCounts {
  /** Folders the server acknowledged in this run. */
  uploaded: number;
  /** Folders failing now (the tracker's `failed`, those that used up their retries included). */
  failed: number;
  /** Failing folders that used up their retries and wait for a change. */
  exhausted: number;
  /** Folders not uploaded yet (settling ones included). */
  pending: number;
  /** Pending folders still being written when last seen. */
  settling: number;
  /** Marker files owed to folders (written by a later run). */
  markersOwed: number;
}

/**
 * The health report's statement: one upsert by device id, every value in one JSON
 * literal, the times the server's own.
 *
 * @throws UploadError `config` for an invalid table name or a device id that is no UUID;
 *   `data` for text PostgreSQL cannot store (a NUL in the device name).
 *
 * @example
 * ```ts
 * buildHealthUpsert("device_test", record); // insert into "device_health" as h ...
 * ```
 */
export function buildHealthUpsert(table: string, record: HealthRecord): string {
  checkDevice({ id: record.deviceId, name: record.deviceName, type: "" });
  const h = healthRef(table);
  const c = record.counts;
  const json = JSON.stringify({
    device_id: record.deviceId,
    device_name: record.deviceName,
    host_name: record.hostName,
    tool_version: record.version,
    mode: record.mode,
    outcome: record.outcome,
    exit_code: record.exitCode,
    elapsed_ms: Math.max(0, Math.round(record.elapsedMs)),
    ended: record.ended,
    uploaded: c.uploaded,
    failed: c.failed,
    exhausted: c.exhausted,
    pending: c.pending,
    settling: c.settling,
    markers_owed: c.markersOwed,
  });
  const names = RECORD_COLUMNS.map(([name]) => name);
  const written = [...names, "run_started_at", "run_ended_at", "reported_at"];
  const definition = [...RECORD_COLUMNS, ["elapsed_ms", "bigint"], ["ended", "boolean"]]
    .map(([name, type]) => `${name} ${type}`).join(", ");
  return `insert into ${h.sql} as h (${written.join(", ")})\n` +
    `select ${names.map((n) => `r.${n}`).join(", ")},\n` +
    `  now() - r.elapsed_ms * interval '1 millisecond',\n` +
    `  case when r.ended then now() end,\n` +
    `  now()\n` +
    `from jsonb_to_record(${sqlLiteral(json)}::jsonb) as r(${definition})\n` +
    `on conflict (device_id) do update set\n  ` +
    written.filter((n) => n !== "device_id").map((n) => `${n} = excluded.${n}`).join(",\n  ");
}

/**
 * The counts of a report: the tracker's state (failing, exhausted, pending, settling
 * folders), else, without a tracker (a quick upload), this run's.
 */
export function healthCounts(
  tracked: FolderCounts | null,
  counters: RunCounters,
): HealthCounts {
  if (tracked === null) {
    return {
      uploaded: counters.uploaded,
      failed: counters.failed + counters.unreadable,
      exhausted: 0,
      pending: counters.settling,
      settling: counters.settling,
      markersOwed: 0,
    };
  }
  return { uploaded: counters.uploaded, ...tracked };
}

/** Settings of a {@linkcode HealthReporter}. */
export interface HealthReporterOptions {
  /** Where the run writes; the report opens its own short session there. */
  connector: Connector;
  /** The upload table (the health table lives beside it). */
  table: string;
  /** This device. */
  device: () => { id: string; name: string };
  mode: RunMode;
  /** Whether a report may connect now (false: an embedded database the run never opened). */
  mayConnect: () => boolean;
  /** The counts at the time of a report. */
  counts: () => HealthCounts;
  /** Told once per distinct reason when a report cannot be recorded. */
  warn: (message: string) => void;
  /** When the run started (ms since the epoch, the run's clock). */
  startedAt: number;
  now?: () => number;
  /** Seconds a report waits for a connection. Default 5. */
  connectTimeoutSeconds?: number;
  /** Milliseconds a report waits for each statement. Default 10,000. */
  statementTimeoutMs?: number;
}

/** How a run stands for one report. */
export interface HealthState {
  outcome: RunStatus | "running";
  exitCode: number | null;
  ended: boolean;
}

/** Sends a run's health reports. Never throws; a report that fails is a warning. */
export class HealthReporter {
  readonly #o: HealthReporterOptions;
  readonly #warned = new Set<string>();

  constructor(options: HealthReporterOptions) {
    this.#o = options;
  }

  /**
   * Records the device's health now: one upsert on a session of its own (connect within
   * 5 s, the statement within 10 s). A missing table or column is created or added once
   * (when the role may) and the upsert sent again.
   *
   * @returns whether the record was written; a failure was reported through `warn`.
   */
  async report(state: HealthState): Promise<boolean> {
    const o = this.#o;
    if (!o.mayConnect()) return false;
    let deviceId = "(unknown)";
    let session: PsqlSession | undefined;
    try {
      const device = o.device();
      deviceId = device.id;
      const sql = buildHealthUpsert(o.table, this.#record(device, state));
      const timeoutMs = o.statementTimeoutMs ?? 10_000;
      session = await PsqlSession.start(await o.connector.open(), {
        connectTimeoutSeconds: o.connectTimeoutSeconds ?? 5,
      });
      let reply = await session.run(sql, { timeoutMs });
      if (!reply.ok && isMissingTableOrColumn(reply.sqlstate)) {
        const ddl = await session.run(buildHealthSchemaStatement(o.table), { timeoutMs });
        if (!ddl.ok) return this.#refused(deviceId, ddl);
        reply = await session.run(sql, { timeoutMs });
      }
      if (!reply.ok) return this.#refused(deviceId, reply);
      return true;
    } catch (error) {
      // The report must never end the run: whatever stopped it is the warning.
      this.#warn(deviceId, messageOf(error));
      return false;
    } finally {
      await session?.close();
    }
  }

  /**
   * Reports `state()` every `everyMs` until `signal` aborts or the returned stop is called
   * (which waits for a report in flight).
   */
  heartbeat(everyMs: number, signal: AbortSignal, state: () => HealthState): () => Promise<void> {
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const loop = (async () => {
      while (!stop.signal.aborted) {
        await sleep(everyMs, stop.signal);
        if (stop.signal.aborted) break;
        await this.report(state());
      }
    })();
    return async () => {
      stop.abort();
      signal.removeEventListener("abort", onAbort);
      await loop;
    };
  }

  #record(device: { id: string; name: string }, state: HealthState): HealthRecord {
    const o = this.#o;
    const now = o.now ?? Date.now;
    return {
      deviceId: device.id,
      deviceName: device.name,
      hostName: Deno.hostname(),
      version: TOOL_VERSION,
      mode: o.mode,
      outcome: state.outcome,
      exitCode: state.exitCode,
      elapsedMs: now() - o.startedAt,
      ended: state.ended,
      counts: o.counts(),
    };
  }

  #refused(deviceId: string, reply: StatementError): false {
    const grant = isPermissionRefusal(reply.sqlstate)
      ? `; have an owner run the SQL printed by \`${PRINT_SCHEMA_COMMAND}\` once (it creates ` +
        `${healthRef(this.#o.table).display} and grants the uploading role INSERT and UPDATE on it)`
      : "";
    this.#warn(deviceId, `${reply.sqlstate}: ${reply.message}${grant}`);
    return false;
  }

  #warn(deviceId: string, reason: string): void {
    if (this.#warned.has(reason)) return;
    this.#warned.add(reason);
    this.#o.warn(
      `Health of device ${deviceId} not recorded in ${healthRef(this.#o.table).display} on ` +
        `${this.#o.connector.display} (the upload itself is not affected): ${reason}`,
    );
  }
}

/** What {@linkcode reporterForRun} needs besides the run. */
export interface RunHealthOptions {
  /** Where the run writes. */
  connector: Connector;
  /** The run's row sink: an embedded database is reported to only once it was opened. */
  sink: { readonly opened: boolean };
}

/**
 * The health reporter of an engine run: counts from its tracker (else its counters),
 * warnings as run events (none once an error stopped the run: that error is the news), an
 * embedded database reported to only when the run opened it.
 */
export function reporterForRun(run: Run, options: RunHealthOptions): HealthReporter {
  return new HealthReporter({
    connector: options.connector,
    table: run.config.table,
    // The run's id as settled when the sink opened (a new tracker may take another back).
    device: () => ({ id: run.deviceId, name: run.config.deviceName || Deno.hostname() }),
    mode: run.mode,
    mayConnect: () => !options.connector.embedded || options.sink.opened,
    counts: () =>
      healthCounts(
        run.records ? run.tracker.folderCounts(run.config.maxRetries) : null,
        run.counters,
      ),
    // A run stopped by an error has said why; a report failing with it would say it again.
    warn: (message) => {
      if (!run.error) run.emit({ event: "warning", message });
    },
    startedAt: run.startedAt,
    now: run.now,
  });
}
