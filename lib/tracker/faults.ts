/**
 * The tracking database's own troubles: the disk holding it full, the file read-only or
 * immutable, damaged, or deleted or replaced while a run uses it. Each becomes a
 * configuration error (exit 2) whose one line names the file, the cause and the command
 * that recovers, so none reaches the user as a stack trace or as "some folders failed".
 *
 * @module
 */

import { messageOf, UploadError } from "../core/errors.ts";

/** What went wrong with the tracking database's file or disk. */
export type TrackerFaultKind = "full" | "read-only" | "damaged" | "unreadable";

/** SQLite's primary result codes for the faults (extended codes keep them in the low byte). */
const SQLITE_CODES: Record<number, TrackerFaultKind> = {
  8: "read-only", // SQLITE_READONLY
  10: "unreadable", // SQLITE_IOERR
  11: "damaged", // SQLITE_CORRUPT
  13: "full", // SQLITE_FULL
  14: "unreadable", // SQLITE_CANTOPEN
  26: "damaged", // SQLITE_NOTADB
};

/** The same faults as SQLite and the operating system word them. */
const PATTERNS: [RegExp, TrackerFaultKind][] = [
  [/database or disk is full|no space left on device|os error 28\b/i, "full"],
  [/readonly database|read-only file system|os error 30\b/i, "read-only"],
  [/operation not permitted|os error 1\b|permission denied|os error 13\b/i, "read-only"],
  [/malformed|not a database|database corrupt/i, "damaged"],
  [/disk i\/o error|unable to open database file|os error 5\b/i, "unreadable"],
];

/**
 * Which tracker fault an error is (by SQLite's result code when it carries one, else by
 * its words), or null when it is none of them.
 *
 * @example
 * ```ts
 * classifyTrackerFault(new Error("database or disk is full")); // "full"
 * classifyTrackerFault(new Error("UNIQUE constraint failed: folder_status.folder_path")); // null
 * ```
 */
export function classifyTrackerFault(error: unknown): TrackerFaultKind | null {
  const code = (error as { errcode?: unknown } | null)?.errcode;
  if (typeof code === "number" && SQLITE_CODES[code & 0xff]) return SQLITE_CODES[code & 0xff];
  const message = messageOf(error);
  for (const [pattern, kind] of PATTERNS) if (pattern.test(message)) return kind;
  return null;
}

/** What SQLite or the system said, without what the message names anyway. */
function detail(error: unknown): string {
  return messageOf(error).replace(/^Error: /, "");
}

/**
 * The configuration error for a fault of the tracking database at `path`, or null when
 * `error` is not one (a bug, a constraint: thrown as it is).
 */
export function trackerFault(path: string, error: unknown): UploadError | null {
  if (error instanceof UploadError) return null;
  const kind = classifyTrackerFault(error);
  if (kind === null) return null;
  const again = "run the same command again";
  const messages: Record<TrackerFaultKind, string> = {
    "full": `Tracking database ${path} cannot be written: the disk holding it is full; ` +
      `free space there (or move it with --db-path) and ${again}`,
    "read-only":
      `Tracking database ${path} cannot be written: it is read-only (${
        detail(error)
      }); make it writable (a read-only mount: mount -o remount,rw; its permissions: ` +
      `chmod u+w; an immutable flag: chattr -i) and ${again}`,
    "damaged": `Tracking database ${path} is damaged (${detail(error)}): ` +
      `run the same command with --rebuild-tracker, which moves it aside and rebuilds it ` +
      `from the server`,
    "unreadable": `Tracking database ${path} cannot be read or written (${detail(error)}): ` +
      `check the disk holding it, then ${again}`,
  };
  return new UploadError("config", messages[kind], { subject: path, cause: error });
}

/**
 * The configuration error for a tracking database deleted, or replaced by another file,
 * while a run was using it: what the run recorded went with the old file.
 */
export function trackerGone(path: string, how: "deleted" | "replaced"): UploadError {
  const message = how === "deleted"
    ? `Tracking database ${path} was deleted during the run, with what the run recorded: ` +
      `run the same command with --verify to rebuild it from the server`
    : `Tracking database ${path} was replaced by another file during the run: run the same ` +
      `command with --verify, which reconciles the new file with the server`;
  return new UploadError("config", message, { subject: path });
}
