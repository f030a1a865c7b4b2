/**
 * Folder uploader: the public library API. Scan a tree of test folders, track them in
 * SQLite, and upload new or changed ones to PostgreSQL through psql.
 *
 * @example
 * ```ts
 * import { DEFAULT_CONFIG, runUpload, Tracker, connectorFor, resolveTarget } from "./mod.ts";
 * const tracker = Tracker.open("upload_tracker.db");
 * const spec = resolveTarget({ dbPath: "upload_tracker.db", env: Deno.env.toObject() });
 * const result = await runUpload({
 *   basePath: "data", config: { ...DEFAULT_CONFIG }, tracker, mode: "upload",
 *   connector: connectorFor(spec, Deno.env.toObject()), deviceId: tracker.deviceId(),
 * });
 * tracker.close();
 * ```
 *
 * @module
 */

export {
  DEFAULT_CONFIG,
  defaultTestStatus,
  type ImagesAs,
  markerNames,
  type StatusInput,
  type TestStatus,
  type UploaderConfig,
  type UrlForm,
} from "./config.ts";
export {
  decideOutcome,
  type ErrorKind,
  EXIT,
  exitCodeFor,
  type RunStatus,
  UploadError,
} from "./lib/core/errors.ts";
export { actionFor, classifySqlstate, type ErrorAction } from "./lib/core/policy.ts";
export {
  type FolderSnapshot,
  isImageName,
  type ScanItem,
  type ScanOptions,
  type ScanProblem,
  snapshotFolder,
} from "./lib/source/snapshot.ts";
export { scanFolders } from "./lib/source/walk.ts";
export { type FileEntry, fingerprintFiles } from "./lib/source/fingerprint.ts";
export { decideFolder, type DiffDecision } from "./lib/plan/diff.ts";
export { type StatusReport, Tracker } from "./lib/tracker/tracker.ts";
export { buildRow, readStats } from "./lib/plan/row.ts";
export {
  buildUpsertScript,
  buildUpsertStatement,
  type UpsertOptions,
} from "./lib/sink/postgres/upsert.ts";
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
export { rowToJson } from "./lib/sink/payload.ts";
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
export { sqlLiteral } from "./lib/sink/postgres/quote.ts";
export {
  buildSchemaStatements,
  describePermissionError,
  ensureSchema,
  type EnsureSchemaOptions,
  isSchemaTimeout,
  type PermissionContext,
  type PrintSchemaOptions,
  printSchemaSql,
  type SchemaResult,
  schemaTimeoutError,
  type TablePolicies,
} from "./lib/sink/postgres/schema.ts";
export { checkPsql, type PsqlConnection, PsqlSession } from "./lib/sink/postgres/psql.ts";
export { connectionFromUrl, resolveTarget, type TargetSpec } from "./lib/target/target.ts";
export { type Connector, connectorFor } from "./lib/target/connect.ts";
export { startEmbedded } from "./lib/target/embedded.ts";
export { backoffDelay } from "./lib/core/retry.ts";
export { writeMarker } from "./lib/commit/markers.ts";
export {
  type EngineEvent,
  newCounters,
  type RunCounters,
  type RunMode,
  type RunResult,
} from "./lib/core/events.ts";
export { runEngine } from "./lib/engine/engine.ts";
export type { RunOptions } from "./lib/engine/options.ts";
export { type FolderSource, type SourceItem, treeSource } from "./lib/source/sources.ts";
export { pathSource } from "./lib/source/paths.ts";
export { runUpload, type UploadOptions } from "./lib/engine/upload.ts";
export { runWatch, type WatchOptions } from "./lib/engine/watch.ts";
export { Reporter } from "./lib/cli/progress.ts";
export { formatStatus } from "./lib/cli/status_text.ts";
export { folderKeyFor, type QuickOptions, runQuickUpload } from "./lib/engine/quick.ts";
export { localDeviceId, nameBasedUuid } from "./lib/target/device.ts";
export {
  buildHealthUpsert,
  type HealthCounts,
  type HealthRecord,
  healthRef,
  HealthReporter,
} from "./lib/fleet/health.ts";
export {
  buildFleetQuery,
  type FleetDevice,
  fleetJson,
  type FleetReport,
  readFleet,
  renderFleet,
} from "./lib/fleet/report.ts";
export { buildIsolationSql, describeDeviceRefusal } from "./lib/fleet/isolation.ts";
export { TOOL_VERSION } from "./lib/core/version.ts";
