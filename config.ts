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
  /** Report file names in the folder (PDFs by default), sorted. */
  reports?: readonly string[];
}

/**
 * The test_status stored with each row. The rule gives `passed`, `failed` or `pending`;
 * `incomplete` is a folder sent without the file `--ready-when` waits for.
 */
export type TestStatus = "passed" | "failed" | "pending" | "incomplete";

/** What a row's `images` holds (`--images-as`). */
export type ImagesAs = "names" | "urls";

/** How a stored object is named in a row (`--url-form`). */
export type UrlForm = "public" | "key";

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
  /**
   * Report extensions, lower case with the dot (the device's PDF report). Reports are
   * stored with the images (`--objects-to`) and the row's `pdf_url` names the first one.
   */
  reportExtensions: readonly string[];
  /**
   * Whether a folder holding a report and nothing else (no image, no stats file) is an
   * upload unit, as the authors' latest uploader has it (their report archive folder).
   */
  reportOnlyUnits: boolean;
  /** The statistics file a test writes. */
  statsFileName: string;
  /** Marker written after a successful upload. */
  successMarker: string;
  /** Marker written after a failed upload. */
  failedMarker: string;
  /** Marker names of the original tools; ignored by change detection, never removed. */
  legacyMarkers: readonly string[];
  /** Tracking database path (`--db-path`). */
  dbPath: string;
  /**
   * Name of this device (env `DEVICE_NAME`). Empty: the name the server holds for it (its
   * `devices` row, else its latest row), else the host name.
   */
  deviceName: string;
  /** Type of this device (env `DEVICE_TYPE`). Empty: the server's, else `image_analyzer`. */
  deviceType: string;
  /** Fixed device id (env `DEVICE_ID`); when empty a UUID is made once and kept in the tracker. */
  deviceId: string;
  /** Target table. */
  table: string;
  /** The rule deciding each row's test_status. */
  testStatus: (input: StatusInput) => TestStatus;
  /**
   * The rule reading the device's time stamp from a file name, in ms since the epoch, or
   * null when the name carries none. A row's test_date is the newest stamp among its
   * images (else its reports), else the modification time of stats.json, else of the
   * newest image.
   */
  fileNameTime: (name: string) => number | null;
  /**
   * What a row's `images` holds (`--images-as`): `names`, the file names; `urls`, each
   * stored object's URL in the `--url-form` (needs `--objects-to`).
   */
  imagesAs: ImagesAs;
  /**
   * How a stored object is named in `pdf_url` and, with `--images-as urls`, in `images`
   * (`--url-form`): `public`, its public URL (a Supabase project's
   * `<project>/storage/v1/object/public/<bucket>/<key>`; another store's path-style
   * `<endpoint>/<bucket>/<key>`); `key`, the object key alone, for private buckets.
   */
  urlForm: UrlForm;
  /**
   * A file-name glob (`*`, `?`, `[...]`, any case) that marks a folder complete
   * (`--ready-when`), e.g. `*.pdf`: until a file matching it exists, a folder is held back.
   * Empty: no readiness rule, the settle time alone decides.
   */
  readyWhen: string;
  /**
   * Seconds a folder without its `readyWhen` file may stay unchanged before it is sent as
   * it is, with test_status `incomplete` (`--ready-timeout`); it is sent again once the
   * file appears.
   */
  readyTimeoutSeconds: number;
}

/**
 * The default test-status rule: no stats.json means the test is still pending; a
 * non-empty `result` field means it passed; anything else failed.
 */
export function defaultTestStatus({ stats }: StatusInput): Exclude<TestStatus, "incomplete"> {
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

/**
 * The default time-stamp rule: the device names its files by the local time it wrote them,
 * `YYYY-MM-DD HH:MM:SS` (images) or `YYYY-MM-DD HH:MM` (reports), optionally followed by
 * more (`.jpg`, `_2.jpg`). The time is read in this machine's time zone (`TZ`); a name
 * without such a prefix, or with an impossible date, gives null.
 *
 * @example
 * ```ts
 * deviceFileNameTime("2025-06-02 16:42:55.jpg"); // 2025-06-02T16:42:55 local time, in ms
 * deviceFileNameTime("photo.jpg"); // null
 * ```
 */
export function deviceFileNameTime(name: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})[ T_](\d{2})[:.-](\d{2})(?:[:.-](\d{2}))?(?!\d)/.exec(name);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map((part) => Number(part ?? 0));
  const date = new Date(y, mo - 1, d, h, mi, s);
  const same = date.getFullYear() === y && date.getMonth() === mo - 1 && date.getDate() === d &&
    date.getHours() === h && date.getMinutes() === mi && date.getSeconds() === s;
  return same ? date.getTime() : null;
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
  reportExtensions: [".pdf"],
  reportOnlyUnits: true,
  statsFileName: "stats.json",
  successMarker: "success.json",
  failedMarker: "failed.json",
  legacyMarkers: ["upload_success.json", "upload_failed.json"],
  dbPath: "upload_tracker.db",
  deviceName: "",
  deviceType: "",
  deviceId: "",
  table: "device_test",
  testStatus: defaultTestStatus,
  fileNameTime: deviceFileNameTime,
  imagesAs: "names",
  urlForm: "public",
  readyWhen: "",
  readyTimeoutSeconds: 300,
});

/** All marker file names, current and legacy. */
export function markerNames(
  config: Pick<UploaderConfig, "successMarker" | "failedMarker" | "legacyMarkers">,
): Set<string> {
  return new Set([config.successMarker, config.failedMarker, ...config.legacyMarkers]);
}
