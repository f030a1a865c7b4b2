/**
 * Fault: marker files cannot be written — the folders sit on a full file system (a tiny
 * tmpfs filled to the last byte), on a read-only mount, or a folder has a directory where
 * its success.json would go. Each folder's marker failure is reported for that folder;
 * the upload itself still counts (row present, tracker success), the run exits 0 and
 * nothing crashes. Once the folders can be written again (space freed, the mount writable
 * again) the next run writes every owed marker without sending a row, and the original
 * tool's upload_success.json files are kept throughout. Mounting needs root (CAP_SYS_ADMIN); without it those cases are
 * skipped and the directory case still runs.
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import {
  assertTableMatches,
  assertTrackerComplete,
  describeExit,
  expectedRows,
  runUploader,
  tableRows,
  trackerState,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";

async function run(cmd: string, args: string[]): Promise<{ ok: boolean; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  return { ok: out.success, stderr: new TextDecoder().decode(out.stderr).trim() };
}

async function mount(args: string[]): Promise<void> {
  const out = await run("mount", args);
  if (!out.ok) throw new Error(`mount ${args.join(" ")}: ${out.stderr}`);
}

async function umount(path: string): Promise<void> {
  const out = await run("umount", [path]);
  if (!out.ok) {
    const lazy = await run("umount", ["-l", path]);
    if (!lazy.ok) throw new Error(`umount ${path}: ${out.stderr}; ${lazy.stderr}`);
  }
}

/** Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, as in CI here). */
async function canMount(): Promise<boolean> {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
  const dir = await Deno.makeTempDir({ prefix: "mount_probe_" });
  try {
    if (!(await run("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir])).ok) return false;
    await umount(dir);
    return true;
  } finally {
    await Deno.remove(dir);
  }
}

const MOUNTS = hasPostgres() && (await canMount());

/** Gives every unit under `data` the original tool's upload_success.json, as its uploads left. */
function withOriginalMarkers(data: string): void {
  for (const key of expectedRows(data).rows.keys()) {
    Deno.writeTextFileSync(
      join(data, key, "upload_success.json"),
      JSON.stringify({ folder_name: key, summary: "kept from the original tool" }),
    );
  }
}

/** Fills the file system holding `dir` until a write fails with "no space". */
function fill(dir: string): void {
  const file = Deno.openSync(join(dir, "filler.bin"), { write: true, create: true });
  const chunk = new Uint8Array(4096);
  try {
    for (;;) file.writeSync(chunk);
  } catch (error) {
    if (!/no space|ENOSPC|os error 28/i.test(String(error))) throw error;
  } finally {
    file.close();
  }
  // Also the last partial page.
  const small = Deno.openSync(join(dir, "filler2.bin"), { write: true, create: true });
  try {
    for (;;) small.writeSync(new Uint8Array(1));
  } catch (error) {
    if (!/no space|ENOSPC|os error 28/i.test(String(error))) throw error;
  } finally {
    small.close();
  }
}

/**
 * After the folders became writable again: a run sends nothing, writes every owed marker
 * (the one the first upload should have written, naming its batch), keeps the original
 * tool's markers, and nothing is owed any more.
 */
async function assertMarkersCaughtUp(
  pg: PgServer,
  data: string,
  dbPath: string,
  first: UploaderExit,
): Promise<void> {
  const expected = expectedRows(data);
  const status = await runUploader(["--status", "--db-path", dbPath]); // --json added
  const report = JSON.parse(status.stdout);
  assert.equal(report.markersOwedTotal, expected.rows.size, status.stdout.slice(0, 2000));
  assert.equal(report.markersOwed.length, expected.rows.size);
  const text = await runUploader(["--status", "--db-path", dbPath], { json: false });
  assert.match(text.stdout, /Markers owed \(the folder could not be written/);
  const again = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
    env: { SUPABASE_DB_URL: pg.url },
  });
  assert.equal(again.code, 0, describeExit(again));
  const summary = again.events.find((e) => e.event === "summary")!;
  assert.equal(summary.queued, 0, "a row was sent again");
  assert.equal(summary.uploaded, 0, "a row was sent again");
  assert.equal(summary.markers_caught_up, expected.rows.size, JSON.stringify(summary));
  assert.equal(summary.markers_owed, 0, JSON.stringify(summary));
  const batches = new Set(
    first.events.filter((e) => e.event === "batch_done").map((e) => String(e.batch)),
  );
  for (const key of expected.rows.keys()) {
    const marker = JSON.parse(Deno.readTextFileSync(join(data, key, "success.json")));
    assert.equal(marker.folder_key, key);
    assert.ok(batches.has(marker.upload_batch), `${key}: ${marker.upload_batch}`);
  }
  for (const key of [...expected.rows.keys()].slice(0, 5)) {
    assert.ok(existsSync(join(data, key, "upload_success.json")), `${key}: the original's marker`);
  }
  const later = await runUploader(["--status", "--db-path", dbPath]);
  assert.equal(JSON.parse(later.stdout).markersOwedTotal, 0);
}

/** Uploads `data` and checks: exit 0, every row and tracker entry, marker errors as listed. */
async function uploadExpectingMarkerErrors(
  pg: PgServer,
  data: string,
  dbPath: string,
  failing: (key: string) => boolean,
): Promise<UploaderExit> {
  const exit = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
    env: { SUPABASE_DB_URL: pg.url },
  });
  assert.equal(exit.code, 0, describeExit(exit));
  const expected = expectedRows(data);
  assert.ok(expected.rows.size > 0);
  assertTableMatches(await tableRows(pg), expected.rows);
  assertTrackerComplete(trackerState(dbPath), expected.rows.keys());
  const errors = exit.events.filter((e) => e.event === "marker_error");
  const wantFailing = [...expected.rows.keys()].filter(failing).map((k) => join(data, k)).sort();
  assert.deepEqual(errors.map((e) => String(e.path)).sort(), wantFailing);
  for (const e of errors) {
    // The message names the folder.
    assert.ok(String(e.error).includes(String(e.path)), String(e.error));
  }
  const summary = exit.events.find((e) => e.event === "summary")!;
  assert.equal(summary.marker_errors, wantFailing.length);
  assert.equal(summary.markers_owed, wantFailing.length);
  assert.equal(summary.uploaded, expected.rows.size);
  for (const key of expected.rows.keys()) {
    const has = (() => {
      try {
        return Deno.lstatSync(join(data, key, "success.json")).isFile;
      } catch {
        return false;
      }
    })();
    assert.equal(has, !failing(key), `success.json in ${key}`);
  }
  return exit;
}

Deno.test({
  name: "markers on a full file system: reported per folder, the uploads still count",
  ignore: !MOUNTS,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_full_", async (dir) => {
        const data = join(dir, "full");
        Deno.mkdirSync(data);
        await mount(["-t", "tmpfs", "-o", "size=2m", "tmpfs", data]);
        try {
          generateTree(data, { folders: 40, seed: 81 });
          withOriginalMarkers(data);
          fill(data);
          const db = join(dir, "tracker.db");
          const first = await uploadExpectingMarkerErrors(pg, data, db, () => true);
          // Space again: the markers owed are written, no row is sent.
          Deno.removeSync(join(data, "filler.bin"));
          Deno.removeSync(join(data, "filler2.bin"));
          await assertMarkersCaughtUp(pg, data, db, first);
        } finally {
          await umount(data);
        }
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "markers on a read-only mount: reported per folder, the uploads still count",
  ignore: !MOUNTS,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_ro_", async (dir) => {
        const source = join(dir, "source");
        const data = join(dir, "readonly");
        generateTree(source, { folders: 40, seed: 82 });
        withOriginalMarkers(source);
        Deno.mkdirSync(data);
        await mount(["--bind", source, data]);
        try {
          await mount(["-o", "remount,bind,ro", data]);
          const db = join(dir, "tracker.db");
          const first = await uploadExpectingMarkerErrors(pg, data, db, () => true);
          // The card writable again: the markers owed are written, no row is sent.
          await mount(["-o", "remount,bind,rw", data]);
          await assertMarkersCaughtUp(pg, data, db, first);
        } finally {
          await umount(data);
        }
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "a directory where success.json goes: that folder's marker fails alone",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_marker_dir_", async (dir) => {
        const data = join(dir, "data");
        const tree = generateTree(data, { folders: 30, seed: 83, keys: true });
        const blocked = new Set(tree.keys!.slice(3, 6));
        for (const key of blocked) {
          Deno.mkdirSync(join(data, key, "success.json"));
          Deno.writeTextFileSync(join(data, key, "success.json", "keep.txt"), "not empty");
        }
        await uploadExpectingMarkerErrors(
          pg,
          data,
          join(dir, "tracker.db"),
          (key) => blocked.has(key),
        );
        // A second run finds nothing changed: the failed markers do not cause re-uploads.
        const again = await runUploader([data, "--db-path", join(dir, "tracker.db")], {
          env: { SUPABASE_DB_URL: pg.url },
        });
        assert.equal(again.code, 0, describeExit(again));
        const summary = again.events.find((e) => e.event === "summary")!;
        assert.equal(summary.queued, 0);
      });
    } finally {
      await pg.close();
    }
  },
});
