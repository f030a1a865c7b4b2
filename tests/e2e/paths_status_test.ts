/**
 * Paths, status and pipeline behaviour a user sees from the shell, through the real
 * scripts (`deno task upload` / `deno task quick` and `deno run scripts/...`):
 *
 * - relative paths mean the caller's directory (`INIT_CWD` under `deno task`): the base,
 *   `--db-path`, quick's folders and `--base`; an empty base is refused with exit 2;
 * - a base reached through a symlink is the same base; a renamed base shows as missing in
 *   `--status`, and `--moved-from` moves its entries so nothing is sent again;
 * - `--status` lists folders that used up their retries, says how many more a cut list
 *   has, gives full lists with `--json`, and lists a file name that is not UTF-8;
 * - with `--json`, a usage or configuration error is one JSON `error` event on stdout;
 * - quick upload of folders dated in the future does not stall folder after folder;
 * - an embedded database held by a `sql` session is "in use", exit 2;
 * - summaries say "1 folder" and "1 batch".
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { removeTree, setMtime, writeTree } from "../../support/tree.ts";
import {
  describeRun,
  exists,
  jsonEvents,
  REPO_ROOT,
  runUploadCli,
  summaryOf,
} from "../../support/cli.ts";
import { tableRows, trackerState } from "../../support/run.ts";

const QUICK_SCRIPT = join(REPO_ROOT, "scripts", "quick_upload.ts");
const SQL_SCRIPT = join(REPO_ROOT, "scripts", "sql.ts");
const CONFIG = join(REPO_ROOT, "deno.json");
const PASS_THROUGH = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG"];

/** The environment a child gets: what Deno needs, plus `extra`; nothing else leaks in. */
function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of PASS_THROUGH) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  return { ...env, ...extra };
}

/**
 * Runs `deno task --config <repo>/deno.json <task> ...args` from `cwd`, as a user who
 * typed the task in that folder (deno task runs the script in the repo root and passes
 * `cwd` as `INIT_CWD`).
 */
async function denoTask(
  task: string,
  args: string[],
  options: { cwd: string; env?: Record<string, string> },
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "--config", CONFIG, task, ...args],
    cwd: options.cwd,
    env: childEnv(options.env),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/** Runs `fn` with a fresh server and a temp directory, both removed afterwards. */
async function withServer(fn: (pg: PgServer, dir: string) => Promise<void>): Promise<void> {
  const pg = await startPostgres();
  const dir = Deno.makeTempDirSync({ prefix: "paths_status_" });
  try {
    await fn(pg, dir);
  } finally {
    removeTree(dir);
    await pg.close();
  }
}

/** The `error` event a `--json` run printed, asserting it is stdout's last JSON line. */
function lastErrorEvent(result: { code: number; stdout: string; stderr: string }) {
  const events = jsonEvents(result);
  const last = events.at(-1);
  assert.ok(last, `no JSON line on stdout\n${describeRun(result)}`);
  assert.equal(last.event, "error", describeRun(result));
  return last;
}

/** A `folder_status` listing: every path once, and the sorted paths. */
function trackedPaths(dbPath: string): string[] {
  const paths = trackerState(dbPath).folders.map((f) => f.path);
  assert.equal(new Set(paths).size, paths.length, "a path tracked twice");
  return paths.sort();
}

const STATS = { json: { result: "PASS", value: 1 } };

Deno.test({
  name: "relative paths mean the caller's directory: base, --db-path, quick's folders, --base",
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const caller = join(dir, "caller");
      const data = join(caller, "data");
      writeTree(data, {
        "A/stats.json": STATS,
        "A/a.jpg": { bytes: 10 },
        "B/stats.json": STATS,
        "sub/C/stats.json": STATS,
        "sub/D/d.png": { bytes: 5 },
      });
      const env = { SUPABASE_DB_URL: pg.url };

      // `cd caller && deno task upload data`: the caller's data/, tracker in the caller's dir.
      const first = await denoTask(
        "upload",
        ["data", "--db-path", "t1.db", "--min-age", "0", "--json"],
        { cwd: caller, env },
      );
      assert.equal(first.code, 0, describeRun(first));
      assert.equal(summaryOf(first).uploaded, 4, describeRun(first));
      assert.ok(exists(join(caller, "t1.db")), "the tracker is in the caller's directory");
      assert.ok(!exists(join(REPO_ROOT, "t1.db")), "no tracker in the project root");
      assert.deepEqual((await tableRows(pg)).rows.map((r) => r.key), ["A", "B", "sub/C", "sub/D"]);
      assert.deepEqual(trackedPaths(join(caller, "t1.db")), [
        join(data, "A"),
        join(data, "B"),
        join(data, "sub/C"),
        join(data, "sub/D"),
      ]);

      // `upload .` from a subfolder scans that subfolder only.
      const sub = await denoTask(
        "upload",
        [".", "--db-path", "../../t2.db", "--min-age", "0", "--json"],
        { cwd: join(data, "sub"), env },
      );
      assert.equal(sub.code, 0, describeRun(sub));
      assert.equal(summaryOf(sub).scanned, 2, describeRun(sub));
      assert.deepEqual(trackedPaths(join(caller, "t2.db")), [
        join(data, "sub/C"),
        join(data, "sub/D"),
      ]);
      assert.deepEqual(
        trackerState(join(caller, "t2.db")).folders.map((f) => f.key).sort(),
        ["C", "D"],
      );

      // An empty base is refused, with the JSON error event on stdout.
      const empty = await denoTask("upload", ["", "--db-path", "t3.db", "--json"], {
        cwd: caller,
        env,
      });
      assert.equal(empty.code, 2, describeRun(empty));
      assert.equal(lastErrorEvent(empty).exit_code, 2);
      assert.match(empty.stderr, /Empty base path/);
      assert.ok(!exists(join(caller, "t3.db")), "a refused run creates no tracker");

      // The script run directly, with INIT_CWD set (as deno task sets it).
      const direct = await runUploadCli(
        ["data", "--db-path", "t4.db", "--min-age", "0", "--json"],
        { cwd: REPO_ROOT, env: { ...env, INIT_CWD: caller } },
      );
      assert.equal(direct.code, 0, describeRun(direct));
      assert.equal(summaryOf(direct).scanned, 4, describeRun(direct));
      assert.ok(exists(join(caller, "t4.db")), "INIT_CWD decides where --db-path is");
      assert.ok(!exists(join(REPO_ROOT, "t4.db")));

      // Quick: relative folders, --base and --db-path are the caller's.
      writeTree(data, { "E/stats.json": STATS, "sub/F/f.jpg": { bytes: 3 } });
      const quick = await denoTask(
        "quick",
        [
          "data/E",
          "data/sub/F",
          "--base",
          "data",
          "--db-path",
          "t1.db",
          "--min-age",
          "0",
          "--json",
        ],
        { cwd: caller, env },
      );
      assert.equal(quick.code, 0, describeRun(quick));
      const quickSummary = summaryOf(quick);
      assert.equal(quickSummary.uploaded, 2, describeRun(quick));
      assert.equal(quickSummary.recorded, 2, "recorded in the caller's t1.db");
      const uploadedKeys = jsonEvents(quick).filter((e) => e.event === "folder_uploaded")
        .map((e) => e.key).sort();
      assert.deepEqual(uploadedKeys, ["E", "sub/F"]);

      writeTree(data, { "G/stats.json": STATS });
      const quickDirect = await runUploadCli(
        ["data/G", "--base", "data", "--db-path", "t1.db", "--min-age", "0", "--json"],
        { script: QUICK_SCRIPT, cwd: REPO_ROOT, env: { ...env, INIT_CWD: caller } },
      );
      assert.equal(quickDirect.code, 0, describeRun(quickDirect));
      assert.equal(summaryOf(quickDirect).recorded, 1, describeRun(quickDirect));
      assert.ok((await tableRows(pg)).rows.some((r) => r.key === "G"));
    });
  },
});

Deno.test({
  name: "a base reached through a symlink is the same base: nothing sent twice",
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, { "A/stats.json": STATS, "B/b.jpg": { bytes: 4 }, "C/D/stats.json": STATS });
      Deno.symlinkSync(data, join(dir, "link"));
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url };
      const args = ["--db-path", db, "--min-age", "0", "--json"];

      const first = await runUploadCli([data, ...args], { env });
      assert.equal(first.code, 0, describeRun(first));
      assert.equal(summaryOf(first).uploaded, 3);

      const viaLink = await runUploadCli([join(dir, "link"), ...args], { env });
      assert.equal(viaLink.code, 0, describeRun(viaLink));
      const summary = summaryOf(viaLink);
      assert.deepEqual(
        { new: summary.new, uploaded: summary.uploaded, batches: summary.batches },
        { new: 0, uploaded: 0, batches: 0 },
        describeRun(viaLink),
      );
      // Relative through the link, from the caller's directory, too.
      const relative = await runUploadCli(["link", ...args], {
        env: { ...env, INIT_CWD: dir },
      });
      assert.equal(relative.code, 0, describeRun(relative));
      assert.equal(summaryOf(relative).uploaded, 0);

      assert.deepEqual(trackedPaths(db), [join(data, "A"), join(data, "B"), join(data, "C/D")]);
      const table = await tableRows(pg);
      assert.equal(table.duplicates, 0);
      assert.equal(table.rows.length, 3);
    });
  },
});

Deno.test({
  name: "a renamed base: --status counts it missing and names it; --moved-from sends nothing",
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const old = join(dir, "old");
      const moved = join(dir, "new");
      writeTree(old, { "A/stats.json": STATS, "B/b.jpg": { bytes: 4 }, "C/D/stats.json": STATS });
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url };
      const args = ["--db-path", db, "--min-age", "0", "--json"];

      const first = await runUploadCli([old, ...args], { env });
      assert.equal(first.code, 0, describeRun(first));
      Deno.renameSync(old, moved);

      const status = await runUploadCli(["--status", "--db-path", db, "--json"]);
      assert.equal(status.code, 0, describeRun(status));
      const report = JSON.parse(status.stdout.trim().split("\n").at(-1)!);
      assert.equal(report.missing, 3, status.stdout);
      assert.deepEqual(report.goneBases, [old]);
      const text = await runUploadCli(["--status", "--db-path", db]);
      assert.equal(text.code, 0, describeRun(text));
      assert.match(text.stdout, /missing on disk: 3/);
      assert.ok(text.stdout.includes(`base folder ${old} is gone`), text.stdout);
      assert.ok(text.stdout.includes(`--moved-from ${old}`), text.stdout);

      const move = await runUploadCli([moved, "--moved-from", old, ...args], { env });
      assert.equal(move.code, 0, describeRun(move));
      const summary = summaryOf(move);
      assert.deepEqual(
        { new: summary.new, uploaded: summary.uploaded, batches: summary.batches },
        { new: 0, uploaded: 0, batches: 0 },
        describeRun(move),
      );
      assert.deepEqual(trackedPaths(db), [join(moved, "A"), join(moved, "B"), join(moved, "C/D")]);
      const table = await tableRows(pg);
      assert.equal(table.duplicates, 0);
      assert.deepEqual(table.rows.map((r) => r.key), ["A", "B", "C/D"]);

      const after = await runUploadCli(["--status", "--db-path", db, "--json"]);
      const afterReport = JSON.parse(after.stdout.trim().split("\n").at(-1)!);
      assert.equal(afterReport.missing, 0);
      assert.deepEqual(afterReport.goneBases, []);
    });
  },
});

Deno.test({
  name: "--status lists folders that used up their retries, cut lists say how many more",
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      const spec: Record<string, { text?: string; json?: unknown }> = { "Good/stats.json": STATS };
      for (let i = 0; i < 13; i++) {
        spec[`Bad${String(i).padStart(2, "0")}/stats.json`] = { text: "{ not json" };
      }
      writeTree(data, spec);
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url };
      const args = [data, "--db-path", db, "--min-age", "0", "--max-retries", "1", "--json"];

      const first = await runUploadCli(args, { env });
      assert.equal(first.code, 1, describeRun(first));
      assert.equal(summaryOf(first).failed, 13);
      // A second run does not retry them: they used up --max-retries 1.
      const second = await runUploadCli(args, { env });
      const summary = summaryOf(second);
      assert.equal(summary.exhausted, 13, describeRun(second));
      assert.equal(summary.queued, 0, describeRun(second));

      const text = await runUploadCli(["--status", "--db-path", db, "--max-retries", "1"]);
      assert.equal(text.code, 0, describeRun(text));
      assert.match(text.stdout, /Failed for good \(retries used up/);
      assert.match(text.stdout, /Bad\d\d \(failed 1 time\)/);
      assert.match(text.stdout, /Cannot parse \S+\/stats\.json: /);
      assert.match(text.stdout, /\.\.\. and 3 more \(--status --json lists them all\)/);
      const listed = text.stdout.match(/Bad\d\d \(failed 1 time\)/g) ?? [];
      assert.equal(listed.length, 10, text.stdout);

      const json = await runUploadCli([
        "--status",
        "--db-path",
        db,
        "--max-retries",
        "1",
        "--json",
      ]);
      assert.equal(json.code, 0, describeRun(json));
      const report = JSON.parse(json.stdout.trim().split("\n").at(-1)!);
      assert.equal(report.exhaustedTotal, 13);
      assert.equal(report.exhausted.length, 13, "--status --json has the full list");
      for (const f of report.exhausted) {
        assert.equal(f.retryCount, 1);
        assert.match(f.error, /stats\.json/);
      }
      assert.ok((await tableRows(pg)).rows.some((r) => r.key === "Good"));
    });
  },
});

Deno.test({
  name: "a file name that is not UTF-8: listed with its reason, the rest of its folder uploads",
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, {
        "Odd/stats.json": STATS,
        "Odd/a.jpg": { bytes: 4 },
        "Fine/stats.json": STATS,
      });
      const made = await new Deno.Command("bash", {
        args: ["-c", "printf x > $'bad\\xff.jpg'"],
        cwd: join(data, "Odd"),
      }).output();
      assert.ok(made.success, new TextDecoder().decode(made.stderr));
      const names = [...Deno.readDirSync(join(data, "Odd"))].map((e) => e.name);
      assert.ok(names.some((n) => n.includes("\uFFFD")), `no invalid name made: ${names}`);
      const db = join(dir, "t.db");

      const run = await runUploadCli([data, "--db-path", db, "--min-age", "0", "--json"], {
        env: { SUPABASE_DB_URL: pg.url },
      });
      assert.equal(run.code, 1, describeRun(run));
      const summary = summaryOf(run);
      assert.equal(summary.unreadable, 1, describeRun(run));
      const problem = jsonEvents(run).find((e) => e.event === "problem");
      assert.ok(problem, describeRun(run));
      assert.match(String(problem.reason), /not valid UTF-8/);

      // The readable files of the folder are uploaded: its row exists without the bad name.
      const rows = (await tableRows(pg)).rows;
      const odd = rows.find((r) => r.key === "Odd");
      assert.ok(odd, `no row for Odd: ${JSON.stringify(rows.map((r) => r.key))}`);
      assert.deepEqual(odd.images, ["a.jpg"]);
      assert.ok(rows.some((r) => r.key === "Fine"));

      const json = await runUploadCli(["--status", "--db-path", db, "--json"]);
      const report = JSON.parse(json.stdout.trim().split("\n").at(-1)!);
      assert.equal(report.problemsTotal, 1, json.stdout);
      assert.ok(report.problems[0].path.startsWith(join(data, "Odd") + "/"), json.stdout);
      assert.match(report.problems[0].reason, /not valid UTF-8/);
      const text = await runUploadCli(["--status", "--db-path", db]);
      assert.match(text.stdout, /Unreadable/);
      assert.ok(text.stdout.includes(join(data, "Odd")), text.stdout);
      assert.match(text.stdout, /not valid UTF-8/);

      // Every run says so until it is fixed.
      const again = await runUploadCli([data, "--db-path", db, "--min-age", "0", "--json"], {
        env: { SUPABASE_DB_URL: pg.url },
      });
      assert.equal(again.code, 1, describeRun(again));
    });
  },
});

Deno.test("--json: a usage or configuration error is one JSON error event on stdout", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "paths_status_" });
  try {
    writeTree(join(dir, "data"), { "A/stats.json": STATS });
    const cases: { args: string[]; kind: string; script?: string }[] = [
      { args: ["data", "--batch-size", "0"], kind: "usage" },
      { args: ["data", "--no-such-flag"], kind: "usage" },
      { args: ["missing-folder"], kind: "usage" },
      { args: ["data", "--db-url", "postgresql://user@host:notaport/db"], kind: "config" },
      { args: ["data", "--db-url", "mysql://somewhere/db"], kind: "config" },
      { args: ["data/A", "--min-age", "-1"], kind: "usage", script: QUICK_SCRIPT },
    ];
    for (const c of cases) {
      const result = await runUploadCli([...c.args, "--db-path", "t.db", "--json"], {
        script: c.script,
        env: { INIT_CWD: dir },
      });
      assert.equal(result.code, 2, `${c.args.join(" ")}: ${describeRun(result)}`);
      const lines = result.stdout.trim().split("\n");
      assert.equal(lines.length, 1, `one line on stdout: ${describeRun(result)}`);
      const event = JSON.parse(lines[0]);
      assert.equal(event.event, "error");
      assert.equal(event.exit_code, 2);
      assert.equal(event.kind, c.kind, `${c.args.join(" ")}: ${lines[0]}`);
      assert.equal(typeof event.message, "string");
    }
  } finally {
    removeTree(dir);
  }
});

Deno.test({
  name: "quick upload of folders dated in the future does not stall folder after folder",
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const future = Date.now() + 30_000;
      const tree = (root: string) => {
        writeTree(root, {
          "A/stats.json": { ...STATS, mtime: future },
          "A/a.jpg": { bytes: 4, mtime: future },
          "B/stats.json": { ...STATS, mtime: future },
        });
      };
      tree(join(dir, "slow"));
      const quickDb = ["--db-path", join(dir, "t.db"), "--json"];
      const env = { SUPABASE_DB_URL: pg.url };

      const started = performance.now();
      const settled = await runUploadCli(
        [join(dir, "slow/A"), join(dir, "slow/B"), "--min-age", "2", ...quickDb],
        { script: QUICK_SCRIPT, env, timeoutMs: 60_000 },
      );
      const slowMs = performance.now() - started;
      console.log(`quick, 2 folders 30 s in the future, --min-age 2: ${Math.round(slowMs)} ms`);
      assert.ok(slowMs < 12_000, `took ${Math.round(slowMs)} ms: ${describeRun(settled)}`);
      const waits = jsonEvents(settled).filter((e) => e.event === "settle_wait");
      assert.ok(waits.length <= 1, `waited ${waits.length} times: ${describeRun(settled)}`);
      const s = summaryOf(settled);
      assert.equal(Number(s.uploaded) + Number(s.failed), 2, describeRun(settled));

      tree(join(dir, "now"));
      const start0 = performance.now();
      const now = await runUploadCli(
        [join(dir, "now/A"), join(dir, "now/B"), "--min-age", "0", ...quickDb],
        { script: QUICK_SCRIPT, env, timeoutMs: 60_000 },
      );
      const nowMs = performance.now() - start0;
      console.log(`quick, 2 folders 30 s in the future, --min-age 0: ${Math.round(nowMs)} ms`);
      assert.equal(now.code, 0, describeRun(now));
      assert.equal(summaryOf(now).uploaded, 2, describeRun(now));
      assert.deepEqual(
        jsonEvents(now).filter((e) => e.event === "settle_wait"),
        [],
        "--min-age 0 waits for nothing",
      );
    });
  },
});

Deno.test({
  name: "an embedded database held by a sql session: the upload exits 2 saying it is in use",
  sanitizeResources: false,
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "paths_status_" });
    let holder: Deno.ChildProcess | null = null;
    try {
      const data = join(dir, "data");
      writeTree(data, { "A/stats.json": STATS });
      const db = join(dir, "t.db");
      // The first upload creates the embedded database beside the tracker.
      const first = await runUploadCli([data, "--db-path", db, "--min-age", "0", "--json"], {
        timeoutMs: 90_000,
      });
      assert.equal(first.code, 0, describeRun(first));

      holder = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--quiet",
          SQL_SCRIPT,
          "--db-path",
          db,
          "-XAt",
          "-c",
          "select pg_sleep(8)",
        ],
        cwd: REPO_ROOT,
        env: childEnv(),
        clearEnv: true,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const lockFile = join(dir, "t.pgdata.lock");
      const deadline = Date.now() + 30_000;
      while (!lockHeldBy(lockFile, holder.pid)) {
        assert.ok(Date.now() < deadline, "the sql session did not take the embedded database");
        await new Promise((r) => setTimeout(r, 50));
      }

      writeTree(data, { "B/stats.json": STATS }); // something to send
      const busy = await runUploadCli([data, "--db-path", db, "--min-age", "0", "--json"], {
        timeoutMs: 60_000,
      });
      assert.equal(busy.code, 2, describeRun(busy));
      // The run reaches its summary, which agrees with the exit code and names the holder.
      const summary = summaryOf(busy);
      assert.equal(summary.exit_code, 2, describeRun(busy));
      assert.equal(summary.status, "failed");
      assert.equal(summary.error_kind, "locked");
      assert.equal(summary.failed, 0);
      assert.match(String(summary.error), /in use by another process \(pid \d+/);
      assert.ok(String(summary.error).includes(`pid ${holder.pid}`), String(summary.error));
      assert.match(busy.stderr, /in use/);

      const held = await holder.output();
      holder = null;
      assert.equal(held.code, 0, new TextDecoder().decode(held.stderr));
      // Free again: the pending folder goes now.
      const after = await runUploadCli([data, "--db-path", db, "--min-age", "0", "--json"], {
        timeoutMs: 90_000,
      });
      assert.equal(after.code, 0, describeRun(after));
      assert.equal(summaryOf(after).uploaded, 1, describeRun(after));
    } finally {
      if (holder) {
        holder.kill("SIGKILL");
        await holder.output();
      }
      removeTree(dir);
    }
  },
});

/** Whether the embedded lock file records `pid` as its holder (written once the lock is held). */
function lockHeldBy(path: string, pid: number): boolean {
  try {
    return Deno.readTextFileSync(path).includes(`"pid":${pid}`);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

Deno.test({
  name: 'summaries say "1 folder" and "1 batch"',
  ignore: !hasPostgres(),
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, { "A/stats.json": STATS });
      setMtime(join(data, "A/stats.json"), Date.now() - 60_000);
      const run = await runUploadCli([data, "--db-path", join(dir, "t.db"), "--min-age", "0"], {
        env: { SUPABASE_DB_URL: pg.url },
      });
      assert.equal(run.code, 0, describeRun(run));
      const all = run.stdout + run.stderr;
      assert.match(all, /Scanned 1 folder \(/, all);
      assert.match(all, /Uploaded 1 folder in 1 batch \(/, all);
      assert.doesNotMatch(all, /\b1 (batches|folders)\b/, all);

      writeTree(data, { "B/stats.json": STATS });
      const quick = await runUploadCli([join(data, "B"), "--db-path", join(dir, "t.db")], {
        script: QUICK_SCRIPT,
        env: { SUPABASE_DB_URL: pg.url },
      });
      assert.equal(quick.code, 0, describeRun(quick));
      const quickAll = quick.stdout + quick.stderr;
      assert.match(quickAll, /Uploaded 1 of 1 folder \(/, quickAll);
      assert.doesNotMatch(quickAll, /\b1 (batches|folders)\b/, quickAll);
    });
  },
});
