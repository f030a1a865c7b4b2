/**
 * Fault: the tracking database's own disk and file. The tracker on a full file system (a
 * 1 MiB tmpfs), on a read-only mount, immutable (`chattr +i`), truncated, overwritten with
 * random bytes, deleted or replaced while a run uses it. Each ends the run with exit 2 and
 * one line naming the file, the cause and the command that recovers, never a stack trace;
 * the recovery then works: the same command once the disk is writable again, and
 * `--rebuild-tracker` for a damaged file (moved aside, rebuilt from the server without
 * sending a row). Mounting and chattr need root; without it those cases are skipped.
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
  startUploader,
  tableRows,
  trackerState,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";

function sh(cmd: string, ...args: string[]): { ok: boolean; text: string } {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  return { ok: out.success, text: text.trim() };
}

function must(cmd: string, ...args: string[]): void {
  const out = sh(cmd, ...args);
  if (!out.ok) throw new Error(`${cmd} ${args.join(" ")}: ${out.text}`);
}

/** Whether this process may mount (root with CAP_SYS_ADMIN, as in CI here). */
function canMount(): boolean {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
  const dir = Deno.makeTempDirSync({ prefix: "mount_probe_" });
  try {
    if (!sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).ok) return false;
    must("umount", dir);
    return true;
  } finally {
    Deno.removeSync(dir);
  }
}

/** Whether `chattr +i` works on the file system holding `dir` (root, a file system with flags). */
function canChattr(dir: string): boolean {
  if (Deno.uid() !== 0) return false;
  const probe = join(dir, "chattr_probe");
  Deno.writeTextFileSync(probe, "x");
  const ok = sh("chattr", "+i", probe).ok;
  if (ok) must("chattr", "-i", probe);
  Deno.removeSync(probe);
  return ok;
}

const SERVER = hasPostgres();
const MOUNTS = SERVER && canMount();

/** Runs an upload of `data` on tracker `db` (with `--json`). */
function upload(pg: PgServer, data: string, db: string, ...more: string[]): Promise<UploaderExit> {
  return runUploader([data, "--db-path", db, "--min-age", "0", "--no-markers", ...more], {
    env: { SUPABASE_DB_URL: pg.url },
  });
}

/**
 * Asserts a configuration error about tracker `db`: exit 2, a line naming the file and
 * matching `cause`, the error event's kind `config`, and no stack trace anywhere.
 */
function assertTrackerError(exit: UploaderExit, db: string, cause: RegExp): string {
  assert.equal(exit.code, 2, describeExit(exit));
  const line = exit.stderr.split("\n").find((l) => l.startsWith("Error: "));
  assert.ok(line, describeExit(exit));
  assert.ok(line.includes(`Tracking database ${db} `), line);
  assert.match(line, cause);
  assert.doesNotMatch(exit.stderr + exit.stdout, /^\s+at |Uncaught|errcode/m, exit.stderr);
  if (exit.events.length > 0) { // run with --json
    const event = exit.events.find((e) => e.event === "error") ??
      exit.events.find((e) => e.event === "summary");
    assert.equal(event?.error_kind ?? event?.kind, "config", JSON.stringify(event));
  }
  return line;
}

/** The upload completes: exit 0, the exact table, a complete tracker. */
async function assertCompletes(pg: PgServer, data: string, db: string): Promise<UploaderExit> {
  const exit = await upload(pg, data, db);
  assert.equal(exit.code, 0, describeExit(exit));
  const expected = expectedRows(data);
  assertTableMatches(await tableRows(pg), expected.rows);
  assertTrackerComplete(trackerState(db), expected.rows.keys());
  return exit;
}

Deno.test({
  name: "tracker on a full disk (1 MiB tmpfs), a read-only mount, immutable: exit 2, one " +
    "line naming file, cause and recovery; the same command works once it is writable",
  ignore: !MOUNTS,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_tracker_disk_", async (dir) => {
        const data = join(dir, "data");
        generateTree(data, { folders: 6_000, seed: 91 });

        await t.step("full disk, twice, then room again", async () => {
          const small = join(dir, "small");
          Deno.mkdirSync(small);
          must("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small);
          try {
            const db = join(small, "upload_tracker.db");
            const first = await upload(pg, data, db);
            assertTrackerError(first, db, /the disk holding it is full; free space there/);
            // Still full: refused the same way, before anything else (the lock's record
            // included), without a stack trace.
            const second = await upload(pg, data, db);
            assertTrackerError(second, db, /the disk holding it is full/);
            must("mount", "-o", "remount,size=64m", small);
            await assertCompletes(pg, data, db);
          } finally {
            must("umount", small);
          }
        });

        await t.step("read-only mount, then read-write again", async () => {
          const home = join(dir, "home");
          const mounted = join(dir, "mounted");
          Deno.mkdirSync(home);
          Deno.mkdirSync(mounted);
          const db = join(mounted, "upload_tracker.db");
          must("mount", "--bind", home, mounted);
          try {
            await assertCompletes(pg, data, db);
            generateTree(join(data, "more"), { folders: 20, seed: 92 });
            must("mount", "-o", "remount,bind,ro", mounted);
            const refused = await upload(pg, data, db);
            assertTrackerError(refused, db, /it is read-only .*mount -o remount,rw/);
            must("mount", "-o", "remount,bind,rw", mounted);
            await assertCompletes(pg, data, db);
          } finally {
            must("umount", mounted);
          }
        });

        await t.step("immutable file (chattr +i)", async () => {
          const db = join(dir, "immutable.db");
          await assertCompletes(pg, data, db);
          if (!canChattr(dir)) {
            console.log("chattr +i is not supported here: the immutable case is not run");
            return;
          }
          generateTree(join(data, "more2"), { folders: 20, seed: 93 });
          must("chattr", "+i", db);
          try {
            const refused = await upload(pg, data, db);
            assertTrackerError(refused, db, /it is read-only .*chattr -i/);
          } finally {
            must("chattr", "-i", db);
          }
          await assertCompletes(pg, data, db);
        });
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "a damaged tracker (truncated, random bytes): exit 2 naming --rebuild-tracker, which " +
    "moves it aside and rebuilds it from the server without sending a row",
  ignore: !SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_tracker_damaged_", async (dir) => {
        const data = join(dir, "data");
        generateTree(data, { folders: 1_000, seed: 94 });
        const damages: [string, (db: string) => void, RegExp][] = [
          ["truncated", (db) => Deno.truncateSync(db, 20_000), /malformed/],
          [
            "random bytes",
            (db) => Deno.writeFileSync(db, crypto.getRandomValues(new Uint8Array(65_536))),
            /not a database/,
          ],
        ];
        for (const [label, damage, words] of damages) {
          await t.step(label, async () => {
            const db = join(dir, `${label.replace(" ", "_")}.db`);
            await assertCompletes(pg, data, db);
            for (const side of ["-wal", "-shm"]) {
              if (existsSync(db + side)) Deno.removeSync(db + side); // a closed tracker has none
            }
            damage(db);
            const refused = await upload(pg, data, db);
            assertTrackerError(refused, db, words);
            assertTrackerError(refused, db, /is damaged .*--rebuild-tracker/);
            // --verify alone cannot read it either, and says the same.
            assertTrackerError(await upload(pg, data, db, "--verify"), db, /--rebuild-tracker/);
            const status = await runUploader(["--status", "--db-path", db], { json: false });
            assertTrackerError(status, db, /damaged/);

            const rebuilt = await upload(pg, data, db, "--verify", "--rebuild-tracker");
            assert.equal(rebuilt.code, 0, describeExit(rebuilt));
            const summary = rebuilt.events.find((e) => e.event === "summary")!;
            assert.equal(summary.uploaded, 0, "rows were sent again");
            assert.equal(summary.adopted, expectedRows(data).rows.size, JSON.stringify(summary));
            const aside = [...Deno.readDirSync(dir)].map((e) => e.name)
              .filter((n) => n.startsWith(`${label.replace(" ", "_")}.db.damaged-`))
              .filter((n) => !/-(wal|shm)$/.test(n));
            assert.equal(aside.length, 1, `moved aside: ${aside}`);
            assertTrackerComplete(trackerState(db), expectedRows(data).rows.keys());
            const again = await upload(pg, data, db);
            assert.equal(again.code, 0, describeExit(again));
            assert.equal(again.events.find((e) => e.event === "summary")!.queued, 0);
          });
        }
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "a tracker deleted or replaced during a run: noticed, exit 2; --verify rebuilds it",
  ignore: !SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_tracker_gone_", async (dir) => {
        const data = join(dir, "data");
        generateTree(data, { folders: 2_000, seed: 95 });
        const changes: [string, (db: string) => void, RegExp][] = [
          ["deleted", (db) => Deno.removeSync(db), /was deleted during the run.*--verify/],
          [
            "replaced",
            (db) => {
              Deno.copyFileSync(db, `${db}.copy`);
              Deno.renameSync(`${db}.copy`, db);
            },
            /was replaced by another file during the run/,
          ],
        ];
        for (const [label, change, words] of changes) {
          await t.step(label, async () => {
            await pg.psql("drop table if exists device_test");
            const db = join(dir, `${label}.db`);
            const p = startUploader([
              data,
              "--db-path",
              db,
              "--min-age",
              "0",
              "--no-markers",
              "--batch-size",
              "50",
              "--parallel",
              "1",
              "--batch-delay",
              "0.05",
            ], { env: { SUPABASE_DB_URL: pg.url } });
            await p.waitFor((e) => e.event === "batch_done");
            change(db);
            const exit = await p.done;
            assertTrackerError(exit, db, words);
            assert.ok(existsSync(join(dir, `${label}.db.lock`)));
            const sent = (await tableRows(pg)).rows.length;
            assert.ok(sent > 0 && sent < expectedRows(data).rows.size, `${sent} rows sent`);
            const verify = await upload(pg, data, db, "--verify");
            assert.equal(verify.code, 0, describeExit(verify));
            const summary = verify.events.find((e) => e.event === "summary")!;
            // The rows already on the server are adopted, the rest sent.
            assert.equal(summary.uploaded, expectedRows(data).rows.size - sent);
            assertTableMatches(await tableRows(pg), expectedRows(data).rows);
          });
        }
      });
    } finally {
      await pg.close();
    }
  },
});
