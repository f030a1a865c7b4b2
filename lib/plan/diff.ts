/**
 * The tracker's diff rule: what a scan's snapshot of a folder means for its tracked row.
 * Pure: no I/O, no clock; the caller passes the time in.
 *
 * @module
 */

/** How far in the future a file's mtime may be and still count as "just written". */
export const FUTURE_TOLERANCE_MS = 60_000;

/** The part of a tracked row the rule looks at. */
export interface TrackedState {
  /** Fingerprint recorded by the last scan that saw the folder. */
  fileHash: string;
  /** Key the folder was tracked under. */
  folderKey: string | null;
  /** `pending`, `success` or `failed`. */
  status: string;
  /** Runs that already failed this folder for its data. */
  retryCount: number;
}

/** What the scan saw of the folder. */
export interface SeenState {
  fingerprint: string;
  key: string;
  newestMtimeMs: number;
  /**
   * When file-system events last named the folder (this machine's clock), if they did: a
   * copy that keeps old modification times (`cp -a`, rsync) is still being written then.
   */
  changedAtMs?: number;
  /**
   * `false` when the readiness rule (`--ready-when`) waits for a file the folder does not
   * hold yet; absent or `true`: ready.
   */
  ready?: boolean;
}

/** How a folder compares with its tracked row. */
export type ChangeKind = "new" | "changed" | "unchanged";

/** The rule's verdict for one folder. */
export interface DiffDecision {
  /** New to the tracker, changed since the last scan, or unchanged. */
  change: ChangeKind;
  /** The status to record (unchanged folders keep theirs). */
  status: string;
  /** The retry count to record. */
  retryCount: number;
  /**
   * Its newest file is younger than the settle time, or it is not ready and has changed
   * within the ready timeout: not uploaded now.
   */
  settling: boolean;
  /** This run should upload it. */
  upload: boolean;
}

/** Settings the rule depends on. */
export interface DiffOptions {
  /** The current time in ms. */
  nowMs: number;
  /** The settle time in ms. */
  minAgeMs: number;
  /** Folders failed for their data this many times are not retried until they change. */
  maxRetries: number;
  /**
   * How long a folder that is not ready ({@linkcode SeenState.ready}) is held back after its
   * last change, in ms; past it, it goes as it is. Default: not held back.
   */
  readyTimeoutMs?: number;
}

/**
 * Decides what a scanned folder means for the tracker.
 *
 * - new -> pending; fingerprint (or key) changed -> pending with retry_count reset to 0;
 *   unchanged -> the row keeps its status (a folder uploaded before stays success).
 * - A pending folder is uploaded unless it is still settling; a failed one is retried
 *   while its retry count is below `maxRetries`.
 * - A folder that is not ready settles until `readyTimeoutMs` after its last change.
 *
 * @example
 * ```ts
 * decideFolder(undefined, { fingerprint: "a", key: "B1", newestMtimeMs: 0 },
 *   { nowMs: 10_000, minAgeMs: 3_000, maxRetries: 3 });
 * // { change: "new", status: "pending", retryCount: 0, settling: false, upload: true }
 * ```
 */
export function decideFolder(
  tracked: TrackedState | undefined,
  seen: SeenState,
  options: DiffOptions,
): DiffDecision {
  // A file dated more than a minute ahead of this clock is not being written now: the
  // device's clock was wrong (a Raspberry Pi without a real-time clock). Waiting for the
  // clock to catch up could take years, so such folders count as settled. With no settle
  // time (--min-age 0) nothing is held back, a folder dated slightly ahead included.
  const age = options.nowMs - Math.max(seen.newestMtimeMs, seen.changedAtMs ?? 0);
  const waiting = seen.ready === false && age < (options.readyTimeoutMs ?? 0) &&
    age > -FUTURE_TOLERANCE_MS;
  const settling = waiting ||
    (options.minAgeMs > 0 && age < options.minAgeMs && age > -FUTURE_TOLERANCE_MS);
  if (tracked === undefined) {
    return { change: "new", status: "pending", retryCount: 0, settling, upload: !settling };
  }
  if (tracked.fileHash !== seen.fingerprint || (tracked.folderKey ?? seen.key) !== seen.key) {
    return { change: "changed", status: "pending", retryCount: 0, settling, upload: !settling };
  }
  let upload = false;
  if (!settling) {
    if (tracked.status === "pending") upload = true;
    else if (tracked.status === "failed") {
      upload = tracked.retryCount < options.maxRetries;
    }
  }
  return {
    change: "unchanged",
    status: tracked.status,
    retryCount: tracked.retryCount,
    settling,
    upload,
  };
}
