/**
 * Opening the tracking database: the one-run-at-a-time lock (`<db>.lock`, an OS file lock
 * that dies with its process, see lib/tracker/lock.ts) and who holds it, a damaged file
 * moved aside (`--rebuild-tracker`), and the SQLite connection with its settings.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { hostname } from "node:os";
import { messageOf, UploadError } from "../core/errors.ts";
import { fileIdentity } from "./db.ts";
import { trackerFault } from "./faults.ts";
import { type HeldLock, tryLock } from "./lock.ts";

/**
 * Opens the SQLite connection: a 5 s busy timeout and, for writing, WAL with
 * `synchronous = NORMAL`, checkpointed every 32 MB of log rather than SQLite's 4 MB: a first
 * upload's inserts land on index pages all over the file, and each checkpoint writes a page
 * once however many transactions touched it since the last.
 *
 * @throws {UploadError} kind `config` naming the file when it cannot be opened.
 */
export function openDatabase(path: string, readOnly: boolean): DatabaseSync {
  try {
    const db = new DatabaseSync(path, { readOnly });
    try {
      db.exec("PRAGMA busy_timeout = 5000");
      if (!readOnly) {
        db.exec("PRAGMA journal_mode = WAL");
        db.exec("PRAGMA synchronous = NORMAL");
        db.exec("PRAGMA wal_autocheckpoint = 8192");
      }
    } catch (error) {
      db.close();
      throw error;
    }
    return db;
  } catch (error) {
    throw trackerFault(path, error) ??
      new UploadError("config", `Cannot open tracking database ${path}: ${messageOf(error)}`, {
        subject: path,
        cause: error,
      });
  }
}

/**
 * Moves a tracking database and its `-wal` / `-shm` files aside to `<path>.damaged-<time>`,
 * reading its device id first when it can still be read. Null when there was no file.
 */
export function moveAside(path: string): { to: string; deviceId?: string } | null {
  if (fileIdentity(path) === null) return null;
  let deviceId: string | undefined;
  try {
    const old = new DatabaseSync(path, { readOnly: true });
    try {
      const row = old.prepare("SELECT value FROM meta WHERE key = 'device_id'").get() as
        | { value: string }
        | undefined;
      deviceId = row?.value;
    } finally {
      old.close();
    }
  } catch (_error) {
    // Too damaged to tell: the new tracker finds the device id as a new one does.
  }
  const to = `${path}.damaged-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  Deno.renameSync(path, to);
  for (const suffix of ["-wal", "-shm"]) {
    try {
      Deno.renameSync(path + suffix, to + suffix);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return { to, deviceId };
}

/** Who holds a tracker lock, as written into the lock file. */
export interface LockHolder {
  /** The holder's process id. */
  pid: number;
  /** The machine it runs on. */
  host: string;
  /** What it runs (`upload`, `quick`, ...). */
  command: string;
  /** Since when it holds the lock (ISO-8601). */
  since: string;
}

/**
 * Takes the tracking database's lock (`<db>.lock`, see lib/tracker/lock.ts) without waiting, and
 * records who holds it.
 *
 * @throws {UploadError} kind `locked` naming the holder when another process has it.
 */
export function acquireLock(lockPath: string, command = "upload"): HeldLock {
  const dbPath = lockPath.replace(/\.lock$/, "");
  let lock: HeldLock;
  try {
    lock = takeLock(lockPath);
  } catch (error) {
    // The lock file beside it cannot be made (a read-only or full disk): the tracker's fault.
    const cause = error instanceof UploadError && error.kind === "config" ? error.cause : undefined;
    throw (cause !== undefined && trackerFault(dbPath, cause)) || error;
  }
  const holder: LockHolder = {
    pid: Deno.pid,
    host: hostname(),
    command,
    since: new Date().toISOString(),
  };
  try {
    lock.record({ ...holder });
  } catch (error) {
    // A full disk refuses even the few bytes of the record: the tracker cannot be written.
    lock.release();
    throw trackerFault(dbPath, error) ?? error;
  }
  return lock;
}

/** Takes the lock, or throws the refusal naming its holder. */
function takeLock(lockPath: string): HeldLock {
  return tryLock(lockPath, (info) => {
    const holder = info
      ? `process ${info.pid} on ${info.host} (${info.command}, since ${info.since})`
      : "another process"; // the holder may not have written its details yet
    return new UploadError(
      "locked",
      `Tracking database ${lockPath.replace(/\.lock$/, "")} is in use by ${holder}`,
      { subject: lockPath, hint: "Wait for that run to finish, or use another --db-path" },
    );
  });
}
