/**
 * `deno task fleet`: every device's health, read from the server in one statement
 * ({@linkcode buildFleetQuery}): the health record each run leaves (lib/fleet/health.ts), the
 * device's rows in the upload table (how many, and when the last one arrived), and its
 * name from `devices`. Rendered as one line per device ({@linkcode renderFleet}) or one
 * JSON document ({@linkcode fleetJson}); `--stale DURATION` keeps the devices silent
 * longer than that, and the command then exits 1 when there is any, for cron or a monitor.
 *
 * Ages are measured on the server's clock, which also stamped the records, so a device
 * with a wrong clock cannot look fresh or stale.
 *
 * @module
 */

import { EXIT, UploadError } from "../core/errors.ts";
import { isMissingTable } from "../core/policy.ts";
import { healthRef } from "./health.ts";
import { type PsqlConnection, PsqlSession } from "../sink/postgres/psql.ts";
import { sqlLiteral, tableRef } from "../sink/postgres/quote.ts";
import { UNKNOWN_DEVICE } from "../sink/postgres/schema.ts";

/** One device as the fleet report shows it. */
export interface FleetDevice {
  deviceId: string;
  /** From `devices`, else the name the device last reported; null when neither. */
  name: string | null;
  hostName: string | null;
  version: string | null;
  /** The last run's mode (`upload`, `watch`, `quick`); null when it never reported. */
  mode: string | null;
  /** How the last run ended, or `running`; null when it never reported. */
  outcome: string | null;
  exitCode: number | null;
  runStartedAt: number | null;
  runEndedAt: number | null;
  /** When its last health record arrived (server time, ms since the epoch). */
  reportedAt: number | null;
  /** Its rows in the upload table. */
  rows: number;
  /** When its newest row was written or last changed. */
  lastRowAt: number | null;
  uploaded: number;
  failed: number;
  exhausted: number;
  pending: number;
  settling: number;
  markersOwed: number;
}

/** What {@linkcode buildFleetQuery} returns, parsed. */
export interface FleetReport {
  /** The server's clock when it answered (ms since the epoch). */
  serverNow: number;
  /** Every device with a health record or a row, by name then id. */
  devices: FleetDevice[];
}

/**
 * ONE read-only statement returning one line of JSON: the server's `now()` and, for every
 * device with a health record or a row in `table` (the placeholder device of rows the
 * original scripts left without an id excepted), its health record, its row count and
 * the time of its newest row, and its name in `devices`. It counts the upload table's rows
 * by device, which reads the whole table (about 0.1 s per million rows on a small server).
 *
 * @throws UploadError `config` for an invalid table name.
 */
export function buildFleetQuery(table: string): string {
  const ref = tableRef(table);
  const h = healthRef(table).sql;
  const field = (name: string) => `'${name}', h.${name}`;
  const health = [
    "host_name",
    "tool_version",
    "mode",
    "outcome",
    "exit_code",
    "run_started_at",
    "run_ended_at",
    "reported_at",
    "uploaded",
    "failed",
    "exhausted",
    "pending",
    "settling",
    "markers_owed",
  ].map(field).join(",\n      ");
  return `with h as (\n` +
    `  select * from ${h}\n` +
    `), r as (\n` +
    `  select x.device_id, count(*) as row_count, max(x.updated_at) as last_row_at\n` +
    `  from ${ref.sql} x group by x.device_id\n` +
    `), ids as (\n` +
    `  select h.device_id from h\n` +
    `  union select r.device_id from r where r.device_id <> ${sqlLiteral(UNKNOWN_DEVICE.id)}\n` +
    `), fleet as (\n` +
    `  select i.device_id, coalesce(to_jsonb(d) ->> 'name', h.device_name) as name,\n` +
    `    json_build_object('device_id', i.device_id,\n` +
    `      'name', coalesce(to_jsonb(d) ->> 'name', h.device_name),\n` +
    `      ${health},\n` +
    `      'rows', coalesce(r.row_count, 0), 'last_row_at', r.last_row_at) as o\n` +
    `  from ids i left join h on h.device_id = i.device_id\n` +
    `  left join r on r.device_id = i.device_id\n` +
    `  left join ${ref.devicesSql} d on d.id = i.device_id\n` +
    `)\n` +
    `select json_build_object('now', now(),\n` +
    `  'devices', coalesce(json_agg(f.o order by f.name nulls last, f.device_id), '[]'))\n` +
    `from fleet f`;
}

function time(value: unknown): number | null {
  if (value === null || value === undefined) return null;
  const ms = Date.parse(String(value));
  return Number.isNaN(ms) ? null : ms;
}

function count(value: unknown): number {
  return typeof value === "number" ? value : 0;
}

function text(value: unknown): string | null {
  return typeof value === "string" ? value : null;
}

/**
 * Parses the reply of {@linkcode buildFleetQuery}.
 *
 * @throws UploadError `fatal` when the rows are not the statement's one line of JSON.
 */
export function parseFleetReply(rows: readonly string[]): FleetReport {
  let raw: { now?: unknown; devices?: unknown };
  try {
    if (rows.length !== 1) throw new Error(`${rows.length} rows`);
    raw = JSON.parse(rows[0]);
  } catch (error) {
    // Not the statement's reply: say so, with what it was.
    throw new UploadError("fatal", `Unexpected reply to the fleet query: ${error}`);
  }
  const serverNow = time(raw.now);
  if (serverNow === null || !Array.isArray(raw.devices)) {
    throw new UploadError("fatal", "Unexpected reply to the fleet query: no time or devices");
  }
  const devices = (raw.devices as Record<string, unknown>[]).map((d) => ({
    deviceId: String(d.device_id),
    name: text(d.name),
    hostName: text(d.host_name),
    version: text(d.tool_version),
    mode: text(d.mode),
    outcome: text(d.outcome),
    exitCode: typeof d.exit_code === "number" ? d.exit_code : null,
    runStartedAt: time(d.run_started_at),
    runEndedAt: time(d.run_ended_at),
    reportedAt: time(d.reported_at),
    rows: count(d.rows),
    lastRowAt: time(d.last_row_at),
    uploaded: count(d.uploaded),
    failed: count(d.failed),
    exhausted: count(d.exhausted),
    pending: count(d.pending),
    settling: count(d.settling),
    markersOwed: count(d.markers_owed),
  }));
  return { serverNow, devices };
}

/**
 * Runs the fleet query on a session of its own.
 *
 * @throws UploadError `config` when the server has no health table (or upload table) yet,
 *   or refuses the query; `transient` or `config` from the connection (lib/sink/postgres/psql.ts).
 */
export async function readFleet(
  connection: PsqlConnection,
  table: string,
): Promise<FleetReport> {
  const session = await PsqlSession.start(connection);
  try {
    const reply = await session.run(buildFleetQuery(table), { timeoutMs: 600_000 });
    if (reply.ok) return parseFleetReply(reply.rows);
    const missing = isMissingTable(reply.sqlstate);
    throw new UploadError(
      "config",
      missing
        ? `No fleet to report on ${connection.display}: ${reply.message} (${reply.sqlstate})`
        : `Cannot read the fleet on ${connection.display}: ${reply.sqlstate}: ${reply.message}`,
      {
        sqlstate: reply.sqlstate,
        hint: missing
          ? `Devices record their health in ${
            healthRef(table).display
          } from this version on: the first upload creates it, or an owner runs the SQL printed by ` +
            "`deno task upload --print-schema`"
          : "The reading role needs SELECT on the upload table, devices and " +
            `${healthRef(table).display} (and, with row-level security, a SELECT policy)`,
      },
    );
  } finally {
    await session.close();
  }
}

/** When a device was last heard of: its last health record or its last row. */
export function lastSeen(device: FleetDevice): number | null {
  const times = [device.reportedAt, device.lastRowAt].filter((t): t is number => t !== null);
  return times.length === 0 ? null : Math.max(...times);
}

/** Whether a device has been silent longer than `staleMs` at `now`. */
export function isStale(device: FleetDevice, now: number, staleMs: number): boolean {
  const seen = lastSeen(device);
  return seen === null || now - seen > staleMs;
}

/**
 * A duration as the fleet prints it: `45 s`, `12 min`, `3 h 5 min`, `2 d 3 h`.
 *
 * @example
 * ```ts
 * formatAge(3 * 3600_000 + 5 * 60_000); // "3 h 5 min"
 * ```
 */
export function formatAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  if (h < 48) return min % 60 === 0 ? `${h} h` : `${h} h ${min % 60} min`;
  const d = Math.floor(h / 24);
  return h % 24 === 0 ? `${d} d` : `${d} d ${h % 24} h`;
}

const UNITS: Record<string, number> = { s: 1, m: 60, min: 60, h: 3600, d: 86_400, w: 604_800 };

/**
 * Parses a duration: a number of seconds, or amounts with units `s`, `m` (or `min`), `h`,
 * `d`, `w`, as in `24h`, `90m`, `1h30m`, `2d`.
 *
 * @returns milliseconds.
 * @throws UploadError `usage` naming the flag and the accepted forms.
 *
 * @example
 * ```ts
 * parseDuration("--stale", "1h30m"); // 5400000
 * ```
 */
export function parseDuration(flag: string, value: string): number {
  const trimmed = value.trim().toLowerCase();
  let seconds = 0;
  if (/^\d+(\.\d+)?$/.test(trimmed)) seconds = Number(trimmed);
  else {
    const parts = [...trimmed.matchAll(/(\d+(?:\.\d+)?)\s*(min|[smhdw])/g)];
    const rebuilt = parts.map((p) => p[0].replace(/\s+/g, "")).join("");
    if (parts.length === 0 || rebuilt !== trimmed.replace(/\s+/g, "")) {
      throw new UploadError("usage", `Invalid duration for ${flag}: "${value}"`, {
        hint: `${flag} takes a duration such as 24h, 90m, 1h30m, 2d or a number of seconds`,
      });
    }
    for (const p of parts) seconds += Number(p[1]) * UNITS[p[2]];
  }
  if (!(seconds > 0)) {
    throw new UploadError("usage", `Invalid duration for ${flag}: "${value}"`, {
      hint: `${flag} takes a duration above zero, such as 24h`,
    });
  }
  return Math.round(seconds * 1000);
}

/** Settings of {@linkcode renderFleet} and {@linkcode fleetJson}. */
export interface RenderOptions {
  /** The clock the ages are measured on (the report's server time). */
  now: number;
  /** The target as shown to the user. */
  target: string;
  /** `--stale`: list only the devices silent longer than this (ms). */
  staleMs?: number;
}

/** The devices a report lists: all, or with `staleMs` those silent longer. */
export function listed(report: FleetReport, options: RenderOptions): FleetDevice[] {
  const stale = options.staleMs;
  return stale === undefined
    ? report.devices
    : report.devices.filter((d) => isStale(d, options.now, stale));
}

/** The outcome column: `completed, exit 0`, `watching`, or `-` for a device that never reported. */
function outcomeText(d: FleetDevice): string {
  if (d.outcome === null) return "-";
  if (d.outcome === "running") return d.mode === "watch" ? "watching" : "running";
  const mode = d.mode === "watch" || d.mode === "quick" ? `${d.mode}: ` : "";
  return `${mode}${d.outcome}${d.exitCode === null ? "" : `, exit ${d.exitCode}`}`;
}

function ago(now: number, at: number | null): string {
  return at === null ? "never" : `${formatAge(now - at)} ago`;
}

/** Pads each column of `rows` to its widest cell; numbers right-aligned. */
function table(rows: string[][], numeric: ReadonlySet<number>): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) =>
    r.map((cell, i) => numeric.has(i) ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))
      .join("  ").trimEnd()
  );
}

/**
 * The fleet as text: a heading, then one line per device listed: name, id, last seen,
 * last outcome, rows, failing and pending folders, and how long since its last row.
 *
 * @example
 * ```ts
 * console.log(renderFleet(report, { now: report.serverNow, target: "db:5432/postgres" }));
 * ```
 */
export function renderFleet(report: FleetReport, options: RenderOptions): string {
  const devices = listed(report, options);
  const total = report.devices.length;
  const all = `${total} device${total === 1 ? "" : "s"}`;
  const limit = options.staleMs === undefined ? "" : formatAge(options.staleMs);
  const heading = options.staleMs === undefined
    ? `${all} on ${options.target}`
    : devices.length === 0
    ? `No device silent for more than ${limit} on ${options.target} (${all})`
    : `${devices.length} of ${all} on ${options.target} silent for more than ${limit}`;
  if (devices.length === 0) return `${heading}\n`;
  const rows = [
    ["DEVICE", "ID", "LAST SEEN", "LAST OUTCOME", "ROWS", "FAILING", "PENDING", "LAST ROW"],
    ...devices.map((d) => [
      d.name ?? "(no name)",
      d.deviceId,
      ago(options.now, lastSeen(d)),
      outcomeText(d),
      String(d.rows),
      String(d.failed),
      String(d.pending),
      ago(options.now, d.lastRowAt),
    ]),
  ];
  return `${heading}:\n${table(rows, new Set([4, 5, 6])).join("\n")}\n`;
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/**
 * The fleet as one JSON document for monitoring: the time, the limit, the count of
 * devices, and each device listed with every field of its record, when it was last seen
 * and for how many seconds it has been silent.
 */
export function fleetJson(report: FleetReport, options: RenderOptions): Record<string, unknown> {
  const devices = listed(report, options);
  const stale = options.staleMs;
  return {
    target: options.target,
    now: iso(options.now),
    stale_after_s: stale === undefined ? null : stale / 1000,
    total: report.devices.length,
    silent: stale === undefined ? null : devices.length,
    devices: devices.map((d) => {
      const seen = lastSeen(d);
      return {
        device_id: d.deviceId,
        name: d.name,
        host_name: d.hostName,
        tool_version: d.version,
        mode: d.mode,
        outcome: d.outcome,
        exit_code: d.exitCode,
        run_started_at: iso(d.runStartedAt),
        run_ended_at: iso(d.runEndedAt),
        reported_at: iso(d.reportedAt),
        last_seen: iso(seen),
        silent_s: seen === null ? null : Math.max(0, Math.floor((options.now - seen) / 1000)),
        rows: d.rows,
        last_row_at: iso(d.lastRowAt),
        uploaded: d.uploaded,
        failed: d.failed,
        exhausted: d.exhausted,
        pending: d.pending,
        settling: d.settling,
        markers_owed: d.markersOwed,
      };
    }),
  };
}

/** The exit code of a report: 1 when `--stale` found a silent device, else 0. */
export function fleetExitCode(report: FleetReport, options: RenderOptions): number {
  return options.staleMs !== undefined && listed(report, options).length > 0
    ? EXIT.SOME_FAILED
    : EXIT.OK;
}
