/**
 * The tracker's own faults (lib/tracker/faults.ts), pure: which SQLite and system errors
 * are which fault, and the one-line messages naming the file, the cause and the recovery.
 * The real disks and files are driven by tests/e2e/fault_tracker_test.ts.
 */

import assert from "node:assert/strict";
import { classifyTrackerFault, trackerFault, trackerGone } from "../../lib/tracker/faults.ts";
import { UploadError } from "../../lib/core/errors.ts";

Deno.test("classifyTrackerFault: SQLite's codes and words, and the system's", () => {
  const coded = (errcode: number, message: string) =>
    Object.assign(new Error(message), { errcode });
  const cases: [unknown, ReturnType<typeof classifyTrackerFault>][] = [
    [coded(13, "database or disk is full"), "full"],
    [new Error("database or disk is full"), "full"],
    [new Error("No space left on device (os error 28): write '/t.db.lock'"), "full"],
    [coded(8, "attempt to write a readonly database"), "read-only"],
    [coded(1032, "attempt to write a readonly database"), "read-only"], // READONLY_DBMOVED
    [new Error("Read-only file system (os error 30): open '/t.db.lock'"), "read-only"],
    [new Error("Operation not permitted (os error 1)"), "read-only"],
    [coded(11, "database disk image is malformed"), "damaged"],
    [new Error("file is not a database"), "damaged"],
    [coded(26, "file is not a database"), "damaged"],
    [coded(522, "disk I/O error"), "unreadable"], // IOERR_SHORT_READ
    [new Error("unable to open database file"), "unreadable"],
    [new Error("UNIQUE constraint failed: folder_status.folder_path"), null],
    [coded(19, "constraint failed"), null],
    [new Error("os error 13 something"), "read-only"],
    [new Error("os error 130 something"), null],
  ];
  for (const [error, kind] of cases) {
    assert.equal(classifyTrackerFault(error), kind, String((error as Error).message));
  }
});

Deno.test("trackerFault: one line naming the file, the cause and the command that recovers", () => {
  const path = "/home/lab/upload_tracker.db";
  const full = trackerFault(path, new Error("database or disk is full"))!;
  assert.ok(full instanceof UploadError);
  assert.equal(full.kind, "config");
  assert.equal(full.subject, path);
  assert.equal(
    full.message,
    `Tracking database ${path} cannot be written: the disk holding it is full; free space ` +
      "there (or move it with --db-path) and run the same command again",
  );
  const damaged = trackerFault(path, new Error("database disk image is malformed"))!;
  assert.match(
    damaged.message,
    /is damaged \(database disk image is malformed\): run the same command with --rebuild-tracker/,
  );
  assert.match(
    trackerFault(path, new Error("Read-only file system (os error 30)"))!.message,
    /read-only.*remount,rw.*chattr -i/,
  );
  for (const message of [full.message, damaged.message]) assert.doesNotMatch(message, /\n|\.$/);
  assert.equal(trackerFault(path, new Error('near "x": syntax error')), null);
  assert.equal(trackerFault(path, new UploadError("locked", "in use")), null);
  assert.match(trackerGone(path, "deleted").message, /was deleted during the run.*--verify/);
  assert.match(trackerGone(path, "replaced").message, /was replaced by another file/);
});
