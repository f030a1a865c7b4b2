/**
 * The user's defaults. Edit this file to change what a run does when no flag or
 * environment variable says otherwise. Precedence: command-line flag, then environment
 * variable, then this file.
 *
 * @module
 */

/** What the test-status rule sees of a folder. */
export interface StatusInput {
  /** The parsed stats.json, or `null` when the folder has none. */
  stats: unknown;
  /** Image file names in the folder, sorted. */
  images: readonly string[];
}

/** The test_status stored with each row. */
export type TestStatus = "passed" | "failed" | "pending";

/** The user's configuration. */
export interface UploaderConfig {
  /** Folders per upsert statement (`--batch-size`). */
  batchSize: number;
  /** Upper bound on the bytes of one upsert statement; a batch closes when it is reached. */
  maxBatchBytes: number;
  /** Runs that may retry a folder refused for its data before it is left failed (`--max-retries`). */
  maxRetries: number;
  /** Long-lived psql sessions writing in parallel (`--parallel`). */
  parallel: number;
  /** Seconds a folder's newest file must be old before the folder is uploaded (`--min-age`). */
  minAgeSeconds: number;
  /** Seconds to keep retrying a server that went away before giving up (`--give-up-after`). */
  giveUpAfterSeconds: number;
  /**
   * Seconds a run that has not reached the server yet keeps trying before giving up
   * (`--connect-timeout`): a wrong host or port says so quickly.
   */
  connectTimeoutSeconds: number;
  /** Pause between batches, for small shared databases (`--batch-delay`). */
  batchDelaySeconds: number;
  /** Image extensions, lower case with the dot. */
  imageExtensions: readonly string[];
  /** The statistics file a test writes. */
  statsFileName: string;
  /** Marker written after a successful upload. */
  successMarker: string;
  /** Marker written after a failed upload. */
  failedMarker: string;
  /** Marker names written by the original tool; ignored by change detection, never removed. */
  legacyMarkers: readonly string[];
  /** Tracking database path (`--db-path`). */
  dbPath: string;
  /** Name of this device in the `devices` table (env `DEVICE_NAME`). */
  deviceName: string;
  /** Type of this device (env `DEVICE_TYPE`). */
  deviceType: string;
  /** Fixed device id (env `DEVICE_ID`); when empty a UUID is made once and kept in the tracker. */
  deviceId: string;
  /** Target table. */
  table: string;
  /** The rule deciding each row's test_status. */
  testStatus: (input: StatusInput) => TestStatus;
}

/**
 * The default test-status rule: no stats.json means the test is still pending; a
 * non-empty `result` field means it passed; anything else failed.
 */
export function defaultTestStatus({ stats }: StatusInput): TestStatus {
  if (stats === null || stats === undefined) return "pending";
  if (typeof stats === "object" && !Array.isArray(stats)) {
    const result = (stats as Record<string, unknown>).result;
    if (result !== undefined && result !== null && result !== "" && result !== false) {
      if (Array.isArray(result) && result.length === 0) return "failed";
      if (
        typeof result === "object" && !Array.isArray(result) && Object.keys(result).length === 0
      ) {
        return "failed";
      }
      return "passed";
    }
  }
  return "failed";
}

/** The shipped defaults. */
export const DEFAULT_CONFIG: Readonly<UploaderConfig> = Object.freeze({
  batchSize: 500,
  maxBatchBytes: 4 * 1024 * 1024,
  maxRetries: 3,
  parallel: 4,
  minAgeSeconds: 3,
  giveUpAfterSeconds: 300,
  connectTimeoutSeconds: 20,
  batchDelaySeconds: 0,
  imageExtensions: [".jpg", ".jpeg", ".png", ".gif", ".bmp"],
  statsFileName: "stats.json",
  successMarker: "success.json",
  failedMarker: "failed.json",
  legacyMarkers: ["upload_success.json", "upload_failed.json"],
  dbPath: "upload_tracker.db",
  deviceName: "",
  deviceType: "image_analyzer",
  deviceId: "",
  table: "device_test",
  testStatus: defaultTestStatus,
});

/** All marker file names, current and legacy. */
export function markerNames(
  config: Pick<UploaderConfig, "successMarker" | "failedMarker" | "legacyMarkers">,
): Set<string> {
  return new Set([config.successMarker, config.failedMarker, ...config.legacyMarkers]);
}
