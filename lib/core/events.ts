/**
 * What a run reports: live counters (read by progress output) and typed events (turned into
 * text, progress lines or NDJSON by lib/cli/progress.ts). The engine never prints.
 *
 * @module
 */

import type { RunStatus, UploadError } from "./errors.ts";
import type { LockHolder } from "../sink/sink.ts";

/** Live counts of a run. */
export interface RunCounters {
  /** Upload units the sources found (scanned, named or reported by the file system). */
  scanned: number;
  /** Paths given to a quick upload (command line or stdin), duplicates included. */
  given: number;
  /** Paths given again and skipped. */
  duplicates: number;
  /** Folders recorded in the tracking database (0 without one). */
  recorded: number;
  /** New to the tracker. */
  new: number;
  /** Changed since the last scan. */
  changed: number;
  /** Unchanged since the last scan. */
  unchanged: number;
  /** Folders that could not be read. */
  unreadable: number;
  /** Symbolic links to folders and link loops the walk did not follow. */
  skipped: number;
  /** Folders still being written when the run ended (left for the next run). */
  settling: number;
  /** Folders queued for upload in this run (new, changed, pending, retried). */
  queued: number;
  /** Folders the server acknowledged. */
  uploaded: number;
  /** Folders whose files changed but whose content matched what the server holds: nothing sent. */
  adopted: number;
  /** Rows the server inserted. */
  inserted: number;
  /** Rows the server rewrote because their content changed. */
  updated: number;
  /** Folders that failed (unreadable, bad stats.json, refused by the server). */
  failed: number;
  /** Marker files that could not be written (now owed: a later run writes them). */
  markerErrors: number;
  /** Markers owed by earlier runs that this run wrote. */
  markersCaughtUp: number;
  /** Bytes of row data sent (or, in a dry run, that would be sent). */
  bytes: number;
  /** Batches finished. */
  batches: number;
  /** Transient failures retried. */
  retries: number;
  /** Images put into object storage (`--images-to`; in a dry run: that would be put). */
  objects: number;
  /** Images already stored, not put again. */
  objectsSkipped: number;
  /** Bytes of images put (or that would be). */
  objectBytes: number;
  /** Tracked folders the last complete scan did not find on disk. */
  missing: number;
}

/** A fresh set of zero counters. */
export function newCounters(): RunCounters {
  return {
    scanned: 0,
    given: 0,
    duplicates: 0,
    recorded: 0,
    new: 0,
    changed: 0,
    unchanged: 0,
    unreadable: 0,
    skipped: 0,
    settling: 0,
    queued: 0,
    uploaded: 0,
    adopted: 0,
    inserted: 0,
    updated: 0,
    failed: 0,
    markerErrors: 0,
    markersCaughtUp: 0,
    bytes: 0,
    batches: 0,
    retries: 0,
    objects: 0,
    objectsSkipped: 0,
    objectBytes: 0,
    missing: 0,
  };
}

/** What a run does. */
export type RunMode = "upload" | "scan-only" | "dry-run" | "quick" | "watch";

/**
 * Everything a run tells its caller, as it goes. Events marked "folder step" are sent only
 * when the run was asked for them (quick upload prints the original script's step lines
 * from them); the others always are.
 */
export type EngineEvent =
  | {
    event: "run_start";
    mode: RunMode;
    base: string | null;
    target: string | null;
    embedded: boolean;
    /** The tracking database folders are recorded in, or null. */
    tracker: string | null;
  }
  | { event: "problem"; path: string; reason: string }
  /** A symbolic link the walk did not follow (reported the first time it is met). */
  | { event: "skipped"; path: string; reason: string }
  /** Folder step: a named folder is being looked at. */
  | { event: "folder_start"; path: string }
  | { event: "folder_skipped"; path: string; reason: string }
  /** Folder step: what the folder holds. */
  | {
    event: "folder_found";
    path: string;
    key: string;
    images: number;
    stats: boolean;
    /** Report files (PDFs) in the folder. */
    reports: number;
  }
  /** Folder step: its row is built. */
  | { event: "folder_read"; path: string; key: string; stats: boolean; test_status: string }
  | { event: "folder_failed"; path: string; key: string | null; error: string }
  /** Folder step: acknowledged by the server. */
  | { event: "folder_uploaded"; path: string; key: string; batch: string }
  /** Folder step: a batch is about to be written. */
  | { event: "inserting"; batch: string; table: string; folders: number }
  /** Folder step: a marker file was written. */
  | { event: "marker_written"; path: string; key: string; marker: string }
  | { event: "marker_error"; path: string; error: string }
  /** Markers earlier runs could not write, written now (and how many are still owed). */
  | { event: "markers_caught_up"; written: number; owed: number }
  | {
    event: "batch_done";
    batch: string;
    folders: number;
    ok: number;
    failed: number;
    inserted: number;
    updated: number;
    bytes: number;
    duration_ms: number;
  }
  | { event: "retry"; subject: string; attempt: number; delay_ms: number; reason: string }
  | { event: "schema"; table: string; rekeyed: number }
  | {
    event: "device";
    /** The device id the run uses. */
    device_id: string;
    /** Where it came from: config, tracker, markers, machine or adopted. */
    source: string;
    name: string;
    type: string;
    /** With `adopted`: this tree's rows the server held under it. */
    held?: number;
  }
  | { event: "settle_wait"; folders: number; wait_ms: number }
  | { event: "missing"; count: number; sample: string[] }
  | {
    event: "verify";
    /** Rows of this device on the server. */
    rows: number;
    /** Folders recorded as uploaded whose row was gone: sent again. */
    missing_on_server: number;
    /** Folders recorded as uploaded whose row held other content: sent again. */
    changed_on_server: number;
    /** Folders whose row already held their content: recorded, nothing sent. */
    adopted: number;
    /** Server rows with no folder on disk (kept; listed by --status --json). */
    orphans: number;
    orphan_sample: string[];
    /** Other device ids holding rows of this tree's folders, with how many (most first). */
    other_devices: { device_id: string; folders: number }[];
  }
  | { event: "watching"; base: string; rescan_every_s: number; file_events: boolean }
  | { event: "warning"; message: string }
  /**
   * Statements of this run wait for a lock another session holds (seen after a few seconds
   * of waiting, or after the server's lock_timeout cancelled one). `holders` are the
   * sessions in the way, as far as the server shows them.
   */
  | {
    event: "lock_wait";
    /** The batches or step waiting. */
    subjects: string[];
    /** How long the longest of them has waited. */
    waited_ms: number;
    holders: LockHolder[];
    /** The same as one sentence. */
    message: string;
  }
  /**
   * The run stops: because of an error (`kind` and `hint` set, the same error the summary
   * carries), or because it was interrupted or asked to stop (`reason` only).
   */
  | { event: "stopping"; reason: string; kind?: string; hint?: string };

/** How a run ended. */
export interface RunResult {
  /** What the run counted, at its end. */
  counters: RunCounters;
  /** The exit code the run calls for: 0, 1 (some folders failed), 2, 3 or 130 (see `EXIT`). */
  exitCode: number;
  /** How the run ended, as recorded in the tracker. */
  status: RunStatus;
  /** How long the run took, in milliseconds. */
  durationMs: number;
  /** The error that stopped the run early, if one did. */
  error?: UploadError;
  /** The tracker's run id, when the run was recorded. */
  runId: number | null;
  /** Folders failed earlier that reached --max-retries and are no longer retried. */
  exhausted: number;
  /** Folders whose marker is owed (could not be written; a later run writes it). */
  markersOwed: number;
}
