/**
 * One run at a time: an exclusive operating-system lock (flock) on a lock file, which dies
 * with its process, so a killed run never blocks the next. The file also holds a small
 * JSON record of who holds it, read back to name the holder when a second run is refused.
 * The file itself is never deleted: deleting a lock file races with its next user.
 *
 * Used for the tracking database (`<db>.lock`) and the embedded database (`<pgdata>.lock`).
 *
 * @module
 */

import { messageOf, UploadError } from "../core/errors.ts";

/** A lock this process holds. */
export interface HeldLock {
  /** The record the file held before it was taken (a crashed holder leaves its own). */
  readonly previous: Record<string, unknown> | null;
  /** Writes this holder's record into the file. */
  record(holder: Record<string, unknown>): void;
  /** Empties the record (nobody holds it) and releases the lock. Safe to call twice. */
  release(): void;
}

/**
 * Takes the exclusive lock on `path` without waiting.
 *
 * @param refuse builds the error thrown when another live process holds it, from that
 *   holder's record (null when it wrote none).
 * @throws {UploadError} what `refuse` returns (usually kind `locked`); kind `config` when
 *   the lock file cannot be opened or locked.
 */
export function tryLock(
  path: string,
  refuse: (holder: Record<string, unknown> | null) => UploadError,
): HeldLock {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
  } catch (error) {
    throw new UploadError("config", `Cannot open lock file ${path}: ${messageOf(error)}`, {
      subject: path,
      cause: error,
    });
  }
  let locked: boolean;
  try {
    locked = file.tryLockSync(true);
  } catch (error) {
    file.close();
    throw new UploadError("config", `Cannot lock ${path}: ${messageOf(error)}`, {
      subject: path,
      cause: error,
    });
  }
  const previous = readRecord(file);
  if (!locked) {
    file.close();
    throw refuse(previous);
  }
  let open = true;
  return {
    previous,
    record(holder) {
      file.truncateSync(0);
      file.seekSync(0, Deno.SeekMode.Start);
      const bytes = new TextEncoder().encode(JSON.stringify(holder) + "\n");
      let written = 0;
      while (written < bytes.length) written += file.writeSync(bytes.subarray(written));
    },
    release() {
      if (!open) return;
      open = false;
      try {
        file.truncateSync(0);
      } catch (_error) {
        // A disk gone read-only keeps the stale record; the lock itself goes with the file
        // handle, and the next holder overwrites the record.
      }
      file.close();
    },
  };
}

/** The JSON record in a lock file, or null when it is empty, torn or foreign. */
function readRecord(file: Deno.FsFile): Record<string, unknown> | null {
  const buffer = new Uint8Array(4096);
  const n = file.readSync(buffer) ?? 0;
  file.seekSync(0, Deno.SeekMode.Start);
  if (n === 0) return null;
  try {
    const value = JSON.parse(new TextDecoder().decode(buffer.subarray(0, n)));
    return value !== null && typeof value === "object" ? value : null;
  } catch (_error) {
    // A torn or foreign record: no record; the lock itself still decides.
    return null;
  }
}
