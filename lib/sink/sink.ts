/**
 * The row sink: where the committer's batches go. Everything above this interface (the
 * committer, the engine, `--verify`) deals in rows, batches and per-folder outcomes; SQL
 * text, psql sessions, the schema and the server's replies live behind it, in its one
 * implementation today, `lib/sink/postgres/`.
 *
 * A sink is made per run by a {@linkcode SinkFactory}, given the run's {@linkcode SinkContext}
 * (events, counters, the stop signal, the clock). It opens lazily: a run with nothing to
 * send never touches the target.
 *
 * @module
 */

import type { DeviceInfo, UploadRow } from "./columns.ts";

/** One folder's row in a batch. */
export interface SinkItem {
  /** Tracker key (the folder's path). */
  path: string;
  /** The folder's row. */
  row: UploadRow;
  /** The row as JSON text (lib/sink/payload.ts): sent as it is, and what bounds a batch's bytes. */
  json: string;
  /**
   * Where the raw field's value (the stats file's text) sits in `json`, when the row's
   * builder says (`rowJsonAndRaw`); a writer that needs it alone finds it otherwise.
   */
  rawSpan?: readonly [number, number];
}

/** A folder's outcome from the target. */
export interface ItemOutcome<T extends SinkItem = SinkItem> {
  /** The folder's item, as given to `write`. */
  item: T;
  /** The target holds the folder's row (written, or already there unchanged). */
  ok: boolean;
  /** Why the target refused this folder's row (named, with the server's words). */
  error?: string;
}

/** What the target said about a written batch. */
export interface WriteResult<T extends SinkItem = SinkItem> {
  /** One per item, in any order. */
  outcomes: ItemOutcome<T>[];
  /** Rows that did not exist before. */
  inserted: number;
  /** Rows rewritten because their content changed. */
  updated: number;
  /** Statements sent (more than one when a refused batch was split). */
  statements: number;
}

/** What {@linkcode RowSink.open} settled. */
export interface OpenedSink {
  /** The device the rows are written for, as settled when the target opened. */
  device: DeviceInfo;
}

/** A session another client holds a lock with, as the target describes it. */
export interface LockHolder {
  /** Its server process id. */
  pid: number;
  /** Its role, when shown. */
  user: string | null;
  /** Its `application_name`, when set. */
  application: string | null;
  /** `active`, `idle in transaction`, ...; null when the server hides it. */
  state: string | null;
  /** Seconds since its transaction (else its query) began; null when hidden. */
  seconds: number | null;
  /** Its current or last statement, on one line and cut short; null when hidden. */
  query: string | null;
  /** The lock modes it holds or waits for on the tables. */
  modes: string[];
}

/** Events a sink reports through its context (rendered like every run event). */
export type SinkEvent =
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

/** What a run gives its sink. */
export interface SinkContext {
  /** Reports an event of the sink's. */
  emit: (event: SinkEvent) => void;
  /** The run's counters the sink keeps (retries). */
  counters: { retries: number };
  /** Aborted when the run stops: opening the target gives up, no retry starts. */
  signal: AbortSignal;
  /** Told the device the rows are written for, once the target settled it. */
  onDevice?: (device: DeviceInfo) => void;
  /** The run's clock (ms since the epoch). */
  now: () => number;
}

/** Where rows go. */
export interface RowSink {
  /** The target as shown to the user (never a password). */
  readonly display: string;
  /** The target is a database this run serves itself (started on first use). */
  readonly embedded: boolean;
  /**
   * Opening settles the device id (nothing configured it: a new tracker): whoever needs the
   * settled id before the first write (object keys) opens the sink first.
   */
  readonly settlesDevice: boolean;
  /** Whether the target was opened in this run (an embedded database started, say). */
  readonly opened: boolean;
  /**
   * Opens the target and prepares the table, once however many callers ask.
   *
   * @throws {UploadError} what stops the run: `config`, `unreachable`, `interrupted`.
   */
  open(): Promise<OpenedSink>;
  /**
   * Writes one batch (opening the target first if need be) and returns each item's
   * outcome: rows refused for their data fail alone, named; transient trouble is retried.
   *
   * @throws {UploadError} what stops the run (configuration, the target unreachable past
   *   its deadline, an interruption).
   */
  write<T extends SinkItem>(items: T[], batchName: string): Promise<WriteResult<T>>;
  /**
   * Streams this device's rows as `[folder_key, content_hash]` (`--verify`), in chunks, never
   * all in memory (opening the target first if need be); returns how many there were.
   *
   * @throws {UploadError} the target unreachable or refusing the read; `interrupted` when
   *   `signal` aborts.
   */
  readRemote(
    onRows: (rows: [string, string | null][]) => void,
    signal: AbortSignal,
  ): Promise<number>;
  /**
   * How many of the folders with these keys each device id but this one holds rows for.
   *
   * @throws {UploadError} the target refusing the query, or gone.
   */
  otherDevices(keys: readonly string[]): Promise<Map<string, number>>;
  /** Abandons writes in flight at once (their folders stay pending). */
  abandon(): void;
  /** Closes what the sink opened (sessions; the connector is closed by its owner). */
  close(): Promise<void>;
}

/** Makes a run's sink. */
export type SinkFactory = (context: SinkContext) => RowSink;
