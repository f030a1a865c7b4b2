/**
 * Folder uploader: the public library API, for a program that embeds the tool. Scan a tree
 * of test folders, track them in SQLite, and upload new or changed ones to PostgreSQL
 * through psql ({@linkcode runUpload}); or upload named folders at once
 * ({@linkcode runQuickUpload}). The rest of lib/ is internal and may change.
 *
 * @example
 * ```ts
 * import { connectorFor, DEFAULT_CONFIG, resolveTarget, runUpload, Tracker } from "./mod.ts";
 * const env = Deno.env.toObject();
 * const tracker = Tracker.open("upload_tracker.db");
 * const connector = connectorFor(resolveTarget({ dbPath: "upload_tracker.db", env }), env);
 * try {
 *   const result = await runUpload({
 *     basePath: Deno.realPathSync("data"),
 *     config: { ...DEFAULT_CONFIG },
 *     tracker,
 *     mode: "upload",
 *     connector,
 *     deviceId: tracker.deviceId(),
 *   });
 *   console.log(`${result.counters.uploaded} uploaded, exit code ${result.exitCode}`);
 * } finally {
 *   await connector.close();
 *   tracker.close();
 * }
 * ```
 *
 * @module
 */

// Running an upload, a quick upload; what they report.
export {
  type ManagerMode,
  runUpload,
  treeIdentity,
  type UploadOptions,
} from "./lib/engine/upload.ts";
export { type QuickOptions, runQuickUpload, trackerForTarget } from "./lib/engine/quick.ts";
export {
  type EngineEvent,
  newCounters,
  type RunCounters,
  type RunMode,
  type RunResult,
} from "./lib/core/events.ts";
export {
  type ErrorKind,
  EXIT,
  exitCodeFor,
  type RunStatus,
  UploadError,
  type UploadErrorOptions,
} from "./lib/core/errors.ts";
export { TOOL_VERSION } from "./lib/core/version.ts";

// What a run needs: the configuration, the tracking database, the target, the object store.
export {
  DEFAULT_CONFIG,
  defaultTestStatus,
  type ImagesAs,
  type StatusInput,
  type TestStatus,
  type UploaderConfig,
  type UrlForm,
} from "./config.ts";
export {
  type FailureEntry,
  type StatusOptions,
  type StatusReport,
  Tracker,
  type TrackerOpenOptions,
} from "./lib/tracker/tracker.ts";
export { resolveTarget, type TargetSpec } from "./lib/target/target.ts";
export { type Connector, connectorFor } from "./lib/target/connect.ts";
export {
  ObjectStore,
  type ObjectStoreOptions,
  type ObjectUrlForm,
  type RetryEvent,
  storeFromEnv,
} from "./lib/objects/storage.ts";

// Where rows go: the row sink interface, its PostgreSQL implementation, the column table.
export type {
  ItemOutcome,
  LockHolder,
  OpenedSink,
  RowSink,
  SinkContext,
  SinkEvent,
  SinkFactory,
  SinkItem,
  WriteResult,
} from "./lib/sink/sink.ts";
export { postgresSink, type PostgresSinkSettings } from "./lib/sink/postgres/sink.ts";
export {
  type ColumnOwner,
  type ColumnSpec,
  type ColumnTravel,
  type DeviceInfo,
  type Flatten,
  type HeaderSource,
  type HeaderValues,
  type PayloadField,
  type RowColumnOf,
  type RowFlag,
  type RowOf,
  type RowValue,
  type TableColumns,
  UPLOAD_COLUMN_LIST,
  UPLOAD_COLUMNS,
  UPLOAD_ROW_FLAGS,
  type UploadRow,
  type ValueOf,
} from "./lib/sink/columns.ts";

// Types the ones above refer to.
export type {
  CallerOptions,
  ObjectsSetup,
  RunOptions,
  TargetOptions,
} from "./lib/engine/options.ts";
export type { DeviceSource, IdentityMarkers, IdentitySetup } from "./lib/target/identity.ts";
export type { FolderSnapshot } from "./lib/source/snapshot.ts";
export type { FileEntry } from "./lib/source/fingerprint.ts";
export type { ChangeKind, DiffDecision, DiffOptions } from "./lib/plan/diff.ts";
export type { FailedMarker, SuccessMarker } from "./lib/commit/markers.ts";
export type {
  BatchRecord,
  FolderOutcome,
  OwedMarker,
  RunRecorder,
  ScanDecision,
} from "./lib/tracker/tracker.ts";
export type { FolderCounts } from "./lib/tracker/recorder.ts";
export type { PsqlConnection } from "./lib/sink/postgres/psql.ts";
export type { StatementError, StatementOk, StatementReply } from "./lib/sink/postgres/psql.ts";
export type { RunnerFactory, StatementRunner } from "./lib/sink/postgres/pool.ts";
export type { TlsSetting } from "./lib/core/policy.ts";
export type { BackoffOptions } from "./lib/core/retry.ts";
export type { ObjectHead, StorageLocation, StoreSettings } from "./lib/objects/storage.ts";
