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
  markerNames,
  type StatusInput,
  type TestStatus,
  type UploaderConfig,
} from "./config.ts";
export {
  decideOutcome,
  type ErrorKind,
  EXIT,
  exitCodeFor,
  type RunStatus,
  UploadError,
} from "./lib/errors.ts";
export { actionFor, classifySqlstate, type ErrorAction } from "./lib/policy.ts";
export {
  type FolderSnapshot,
  isImageName,
  scanFolders,
  type ScanItem,
  type ScanOptions,
  type ScanProblem,
  snapshotFolder,
} from "./lib/scan.ts";
export { type FileEntry, fingerprintFiles } from "./lib/fingerprint.ts";
export { decideFolder, type DiffDecision } from "./lib/diff.ts";
export { type StatusReport, Tracker } from "./lib/tracker.ts";
export { buildRow, readStats } from "./lib/folder.ts";
export {
  buildUpsertScript,
  buildUpsertStatement,
  type DeviceInfo,
  sqlLiteral,
  type UploadRow,
} from "./lib/sql.ts";
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
} from "./lib/schema.ts";
export { checkPsql, type PsqlConnection, PsqlSession } from "./lib/psql.ts";
export { connectionFromUrl, resolveTarget, type TargetSpec } from "./lib/target.ts";
export { type Connector, connectorFor } from "./lib/connect.ts";
export { startEmbedded } from "./lib/embedded.ts";
export { backoffDelay } from "./lib/retry.ts";
export { writeMarker } from "./lib/markers.ts";
export {
  type EngineEvent,
  newCounters,
  type RunCounters,
  type RunMode,
  type RunResult,
} from "./lib/events.ts";
export { type EngineOptions, runEngine } from "./lib/engine.ts";
export { type FolderSource, pathSource, type SourceItem, treeSource } from "./lib/sources.ts";
export { runUpload, type UploadOptions } from "./lib/pipeline.ts";
export { runWatch, type WatchOptions } from "./lib/watch.ts";
export { Reporter } from "./lib/progress.ts";
export { formatStatus } from "./lib/report.ts";
export { folderKeyFor, type QuickOptions, runQuickUpload } from "./lib/quick.ts";
export { localDeviceId, nameBasedUuid } from "./lib/device.ts";
export {
  buildHealthUpsert,
  type HealthCounts,
  type HealthRecord,
  healthRef,
  HealthReporter,
} from "./lib/health.ts";
export {
  buildFleetQuery,
  type FleetDevice,
  fleetJson,
  type FleetReport,
  readFleet,
  renderFleet,
} from "./lib/fleet.ts";
export { buildIsolationSql, describeDeviceRefusal } from "./lib/device_policies.ts";
export { TOOL_VERSION } from "./lib/version.ts";
