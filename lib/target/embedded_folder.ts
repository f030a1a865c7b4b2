/**
 * The embedded database's folder as the main thread keeps it: the lock beside it
 * (`<dataDir>.lock`, which also records the process serving it), the check that it is a
 * PGlite database or can become one, and the making of a new one from the template
 * (unpacked into `<dataDir>.creating`, renamed into place once complete). Used by
 * lib/target/embedded.ts, whose notes tell why.
 *
 * @module
 */

import { dirname } from "node:path";
import { messageOf, UploadError } from "../core/errors.ts";
import { type HeldLock, tryLock } from "../tracker/lock.ts";
import { extractTemplate } from "./embedded_template.ts";
import { WorkerEnded } from "./embedded_thread.ts";

/** Suffix of the folder a new database is made in before it is renamed into place. */
const CREATING_SUFFIX = ".creating";

/** What the lock file records about the process serving a folder. */
export interface ServerLockRecord {
  /** The serving process. */
  pid: number;
  /** Its socket directory (removed by the next start when that process died). */
  socketDir: string;
  /** When it started serving (ISO 8601). */
  startedAt: string;
}

/** What {@linkcode createDatabase} needs besides the folder. */
export interface CreateOptions {
  /** The archive to unpack; undefined for lib/target/embedded_template.tar.br. */
  template: URL | string | undefined;
  /** Abandons the unpacking (and removes what it wrote) when it aborts. */
  signal: AbortSignal | undefined;
}

/**
 * Makes a new database for `dir`: the template (lib/target/embedded_template.ts) unpacked into
 * `<dir>.creating` on this thread, asynchronously, then a rename to `dir`. On any failure
 * or abort the `.creating` folder is removed.
 *
 * @throws {WorkerEnded} when `signal` aborts; {@linkcode UploadError} `fatal` when the
 *   template cannot be read or written out.
 */
export async function createDatabase(dir: string, options: CreateOptions): Promise<void> {
  const staging = `${dir}${CREATING_SUFFIX}`;
  Deno.mkdirSync(staging, { mode: 0o700 });
  try {
    await extractTemplate(staging, { source: options.template, signal: options.signal });
  } catch (error) {
    await removeCreation(staging);
    if (options.signal?.aborted) throw new WorkerEnded("Aborted while unpacking");
    if (error instanceof UploadError) throw error;
    throw new UploadError("fatal", `Cannot create embedded database ${dir}: ${messageOf(error)}`, {
      subject: dir,
      cause: error,
    });
  }
  // An empty folder (the user's, or left by an older version) gives way to the new one.
  try {
    Deno.removeSync(dir);
  } catch (error) {
    ignoreNotFound(error);
  }
  Deno.renameSync(staging, dir);
}

/**
 * Removes a `.creating` folder. Nothing else writes into it: it is unpacked on this thread
 * with the lock held, and every write has finished when the unpacking returns or throws.
 */
async function removeCreation(staging: string): Promise<void> {
  try {
    await Deno.remove(staging, { recursive: true });
  } catch (error) {
    ignoreNotFound(error);
  }
}

/**
 * Removes the `<dir>.creating` folder a killed or failed creation left behind. Called with
 * the lock held, so no other process can be creating it.
 */
export async function removeUnfinishedCreation(dir: string, log: (line: string) => void) {
  const staging = `${dir}${CREATING_SUFFIX}`;
  try {
    await Deno.lstat(staging);
  } catch (error) {
    ignoreNotFound(error);
    return;
  }
  await removeCreation(staging);
  log(`Removed unfinished embedded database ${staging} (its creation was interrupted)`);
}

/** The lock record of a process that served the folder, when it is one. */
export function holderOf(record: Record<string, unknown> | null): ServerLockRecord | null {
  return typeof record?.pid === "number" && typeof record.socketDir === "string" &&
      typeof record.startedAt === "string"
    ? record as unknown as ServerLockRecord
    : null;
}

/**
 * Takes the lock on `<dir>.lock` (see lib/tracker/lock.ts): refused, with the holder's pid, when
 * another process serves the folder.
 */
export function acquireLock(dir: string): HeldLock {
  return tryLock(`${dir}.lock`, (holder) => {
    const who = holder ? ` (pid ${holder.pid}, since ${holder.startedAt})` : "";
    return new UploadError(
      "locked",
      `Embedded database ${dir} is in use by another process${who}`,
      {
        subject: dir,
        hint:
          "Only one process can serve it at a time: wait for that upload or 'deno task sql' session to end",
      },
    );
  });
}

/**
 * Makes sure `dir` is a PGlite database or can become one. Returns true when it has to be
 * created (missing or empty); its parent is then created when missing.
 */
export function checkDataDir(dir: string): boolean {
  let entries: string[];
  try {
    entries = [...Deno.readDirSync(dir)].map((entry) => entry.name);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new UploadError("config", `Cannot read ${dir}: ${messageOf(error)}`, {
        subject: dir,
        cause: error,
      });
    }
    Deno.mkdirSync(dirname(dir), { recursive: true });
    return true;
  }
  if (entries.includes("PG_VERSION")) return false;
  if (entries.length === 0) return true;
  throw new UploadError("config", `Not an embedded database folder: ${dir}`, {
    subject: dir,
    hint: "It is not empty and holds no PG_VERSION file; name an empty or new folder",
  });
}

/** Swallows the one expected failure of removing a file that is already gone. */
export function ignoreNotFound(error: unknown): void {
  if (!(error instanceof Deno.errors.NotFound)) throw error;
}
