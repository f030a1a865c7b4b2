/**
 * The PostgreSQL row sink: {@linkcode postgresSink} makes a run's {@linkcode RowSink} that
 * writes through a pool of long-lived psql sessions. It opens on first use: the target is
 * started (the embedded database included), the schema made ready and the device settled
 * (prepare.ts), once, however many batches ask. Batches go through write.ts; `--verify`
 * reads through a COPY of its own (copy.ts) and the device count query (remote.ts).
 *
 * @module
 */

import type { UploaderConfig } from "../../../config.ts";
import { UploadError } from "../../core/errors.ts";
import type { BackoffOptions } from "../../core/retry.ts";
import type { Connector } from "../../target/connect.ts";
import type { DeviceSource, IdentitySetup } from "../../target/identity.ts";
import type {
  OpenedSink,
  RowSink,
  SinkContext,
  SinkFactory,
  SinkItem,
  WriteResult,
} from "../sink.ts";
import { copyOut } from "./copy.ts";
import { lockWaitMessage, LockWatch } from "./locks.ts";
import { psqlFactory, type RunnerFactory, SessionPool } from "./pool.ts";
import { type PreparedTarget, prepareTarget } from "./prepare.ts";
import type { PsqlConnection } from "./psql.ts";
import { buildDeviceCountQuery, buildRemoteHashesQuery, parseDeviceCounts } from "./remote.ts";
import { writeBatch, type WriteEdges, type WritePath, WriteState } from "./write.ts";

/** The device type when neither config nor the server gives one. */
export const DEFAULT_DEVICE_TYPE = "image_analyzer";

/** Rows of `readRemote` handed over at once. */
const REMOTE_CHUNK = 10_000;

/** Settings of {@linkcode postgresSink}. */
export interface PostgresSinkSettings {
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
  /** Client-side statement timeout (ms). Default 10 minutes. */
  statementTimeoutMs?: number;
  /** The backoff of retries. Default lib/core/retry.ts's. */
  backoff?: BackoffOptions;
  /** How sessions start on the opened connection. Default: psql sessions. */
  runners?: (connection: PsqlConnection) => RunnerFactory;
}

/**
 * A factory of PostgreSQL row sinks on `connector` (closed by its owner, not by the sink).
 *
 * @example
 * ```ts
 * const sink = postgresSink(connector, { config, deviceId })(context);
 * const result = await sink.write(items, "batch_1");
 * await sink.close();
 * ```
 */
export function postgresSink(connector: Connector, settings: PostgresSinkSettings): SinkFactory {
  return (context) => new PostgresSink(connector, settings, context);
}

/** What opening settled. */
interface Opened {
  path: WritePath;
  connection: PsqlConnection;
}

/** Rows written by psql sessions to a PostgreSQL table. */
class PostgresSink implements RowSink {
  readonly #connector: Connector;
  readonly #settings: PostgresSinkSettings;
  readonly #context: SinkContext;
  readonly #abort = new AbortController();
  #pool: SessionPool | undefined;
  #locks: LockWatch | undefined;
  #opening: Promise<Opened> | undefined;

  constructor(connector: Connector, settings: PostgresSinkSettings, context: SinkContext) {
    this.#connector = connector;
    this.#settings = settings;
    this.#context = context;
  }

  get display(): string {
    return this.#connector.display;
  }

  get embedded(): boolean {
    return this.#connector.embedded;
  }

  get settlesDevice(): boolean {
    return this.#settings.identity !== undefined;
  }

  get opened(): boolean {
    return this.#pool !== undefined;
  }

  async open(): Promise<OpenedSink> {
    return { device: (await this.#open()).path.settings.device };
  }

  async write<T extends SinkItem>(items: T[], batchName: string): Promise<WriteResult<T>> {
    return await writeBatch(items, batchName, (await this.#open()).path);
  }

  async readRemote(
    onRows: (rows: [string, string | null][]) => void,
    signal: AbortSignal,
  ): Promise<number> {
    const { path, connection } = await this.#open();
    let chunk: [string, string | null][] = [];
    const rows = await copyOut(
      connection,
      buildRemoteHashesQuery(path.settings.table, path.settings.device.id),
      (columns) => {
        chunk.push([columns[0] ?? "", columns[1]]);
        if (chunk.length >= REMOTE_CHUNK) {
          onRows(chunk);
          chunk = [];
        }
      },
      { signal },
    );
    if (chunk.length > 0) onRows(chunk);
    return rows;
  }

  async otherDevices(keys: readonly string[]): Promise<Map<string, number>> {
    const { path } = await this.#open();
    const sql = buildDeviceCountQuery({ table: path.settings.table, keys, hasFolderKey: true });
    const own = path.settings.device.id.toLowerCase();
    const runner = await this.#pool!.acquire();
    try {
      const reply = await runner.run(sql, { timeoutMs: path.settings.statementTimeoutMs });
      if (!reply.ok) {
        throw new UploadError(
          "config",
          `Cannot count rows under other device ids: ${reply.sqlstate}: ${reply.message}`,
          { subject: "verify", sqlstate: reply.sqlstate },
        );
      }
      const others = new Map<string, number>();
      for (const [id, n] of parseDeviceCounts(reply.rows)) {
        if (id.toLowerCase() !== own) others.set(id, n);
      }
      return others;
    } finally {
      this.#pool!.release(runner);
    }
  }

  abandon(): void {
    this.#abort.abort();
    void this.#locks?.close(); // stops its timer now; a look in progress ends with the pool
    this.#pool?.kill();
  }

  async close(): Promise<void> {
    await this.#locks?.close();
    await this.#pool?.close();
  }

  #open(): Promise<Opened> {
    this.#opening ??= this.#start();
    return this.#opening;
  }

  /** Starts the target and the pool, prepares the schema, settles the device. */
  async #start(): Promise<Opened> {
    const s = this.#settings;
    const config = s.config;
    const connection = await this.#connector.open(this.#context.signal);
    const pool = new SessionPool((s.runners ?? ((c) => psqlFactory(c)))(connection));
    this.#pool = pool;
    // PGlite serves one session at a time: nothing there can wait for another's lock.
    this.#locks = this.#connector.embedded ? undefined : this.#lockWatch(pool);
    const draft: WritePath = {
      settings: {
        table: config.table,
        device: {
          id: s.deviceId,
          name: config.deviceName || Deno.hostname(),
          type: config.deviceType || DEFAULT_DEVICE_TYPE,
        },
        targetDisplay: this.#connector.display,
        giveUpAfterMs: config.giveUpAfterSeconds * 1000,
        connectWindowMs: config.connectTimeoutSeconds * 1000,
        statementTimeoutMs: s.statementTimeoutMs ?? 600_000,
        backoff: s.backoff,
      },
      // PGlite's socket loses its protocol state on COPY FROM STDIN.
      state: new WriteState({ copyRows: !this.#connector.embedded }),
      edges: this.#edges(pool),
    };
    const prepared = await prepareTarget(draft, {
      fromServer: { name: !config.deviceName, type: !config.deviceType },
      identity: s.identity,
    });
    draft.state.access = prepared.access;
    this.#report(prepared);
    const settings = Object.freeze({ ...draft.settings, device: prepared.device });
    return { path: { ...draft, settings }, connection };
  }

  /** The write path's edges: the pool, the run's signals, its retry and warning events. */
  #edges(pool: SessionPool): WriteEdges {
    const c = this.#context;
    return {
      pool,
      locks: this.#locks,
      signal: this.#abort.signal,
      stopping: c.signal,
      onRetry: (n) => {
        c.counters.retries++;
        c.emit({
          event: "retry",
          subject: n.subject,
          attempt: n.attempt,
          delay_ms: n.delayMs,
          reason: n.reason,
        });
      },
      onWarning: (message) => c.emit({ event: "warning", message }),
      now: c.now,
    };
  }

  /** Reports what opening settled: the schema, its warnings, the device. */
  #report(prepared: PreparedTarget): void {
    const c = this.#context;
    c.emit({ event: "schema", table: this.#settings.config.table, rekeyed: prepared.rekeyed });
    for (const message of prepared.notes) c.emit({ event: "warning", message });
    const device = prepared.device;
    c.onDevice?.(device);
    c.emit({
      event: "device",
      device_id: device.id,
      source: prepared.identity?.source ?? this.#settings.deviceSource ?? "config",
      name: device.name,
      type: device.type,
      ...(prepared.identity?.held !== undefined ? { held: prepared.identity.held } : {}),
    });
  }

  /** The lock watch of a run: looks through a pooled session, reports `lock_wait` events. */
  #lockWatch(pool: SessionPool): LockWatch {
    const table = this.#settings.config.table;
    const c = this.#context;
    const watch: LockWatch = new LockWatch({
      table,
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
        c.emit({
          event: "lock_wait",
          subjects,
          waited_ms: waitedMs,
          holders: report.holders,
          message: lockWaitMessage(subjects, waitedMs, table, report.holders),
        });
      },
      now: c.now,
    });
    return watch;
  }
}
