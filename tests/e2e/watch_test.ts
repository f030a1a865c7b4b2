/**
 * `deno task upload BASE --watch` against a real PostgreSQL server, through the real
 * script in its own process group (`--json`):
 *
 * - a new folder lands (the delay from its last write to its row is printed);
 * - a half-written folder is not sent half done; an edit is re-sent;
 * - a tree moved into the base lands, its nested folders included;
 * - a second `upload` on the same tracker is refused (exit 2), naming the watching process;
 * - SIGTERM finishes the batch in flight and exits 0 with nothing pending; SIGINT exits 130;
 * - a folder created while the server is down lands once it is back, and the process
 *   never exits meanwhile;
 * - the periodic rescan (`--rescan-every`) finds folders whose file events were missed, and
 *   a base that went away is waited for;
 * - trees copied in with `cp -a` (500 folders, nested and flat, three times each), `mkdir -p`
 *   chains, a rename inside the base and a directory replaced by another all land exactly,
 *   each folder sent once, and the watch keeps running.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { existsSync } from "node:fs";
import { DatabaseSync } from "node:sqlite";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import {
  GENERATED_MTIME,
  generateTree,
  removeTree,
  type TreeSpec,
  writeTree,
} from "../../support/tree.ts";
import {
  assertTableMatches,
  delay,
  describeExit,
  dropSlowInserts,
  expectedRows,
  REPO_ROOT,
  runUploader,
  slowInserts,
  startUploader,
  type TableRow,
  tableRows,
  trackerState,
  type UploaderProcess,
  waitForActiveUpsert,
} from "../../support/run.ts";

const STATS = { json: { result: "PASS", value: 1 } };
const OLD = Date.now() - 3_600_000;

/**
 * Writes `spec` under `root` as a device does: each file dated when it is written
 * (writeTree's default is a fixed past time, which would count as long settled).
 */
function writeNow(root: string, spec: TreeSpec): void {
  const now = Date.now();
  writeTree(
    root,
    Object.fromEntries(Object.entries(spec).map(([k, v]) => [k, { mtime: now, ...v }])),
  );
}

/** Runs `fn` with a fresh server and a temp directory, both removed afterwards. */
async function withServer(fn: (pg: PgServer, dir: string) => Promise<void>): Promise<void> {
  const pg = await startPostgres();
  const dir = Deno.makeTempDirSync({ prefix: "watch_test_" });
  try {
    await fn(pg, dir);
  } finally {
    removeTree(dir);
    await pg.close();
  }
}

/** Starts `upload DATA --watch --min-age 1 --rescan-every S --json` on tracker `db`. */
function startWatch(
  pg: PgServer,
  data: string,
  db: string,
  rescanEvery = 60,
): UploaderProcess {
  return startUploader(
    [data, "--db-path", db, "--watch", "--min-age", "1", "--rescan-every", String(rescanEvery)],
    { env: { SUPABASE_DB_URL: pg.url } },
  );
}

/** This table's row with `key`, or undefined (also while the table does not exist yet). */
async function rowOf(pg: PgServer, key: string): Promise<TableRow | undefined> {
  try {
    return (await tableRows(pg)).rows.find((r) => r.key === key);
  } catch (error) {
    if (/does not exist/.test(String(error))) return undefined;
    throw error;
  }
}

/**
 * Polls the server until the row of `key` exists and satisfies `pred`; returns it with
 * the time it was first seen. Fails when `watcher` exits first or `timeoutMs` passes.
 */
async function waitForRow(
  pg: PgServer,
  watcher: UploaderProcess,
  key: string,
  pred: (row: TableRow) => boolean = () => true,
  timeoutMs = 20_000,
): Promise<{ row: TableRow; at: number }> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const row = await rowOf(pg, key);
    if (row && pred(row)) return { row, at: performance.now() };
    if (watcher.exited) {
      throw new Error(`The watch exited before ${key} landed: ${describeExit(await watcher.done)}`);
    }
    if (performance.now() > deadline) {
      throw new Error(
        `No row for ${key} in ${timeoutMs} ms (last seen: ${JSON.stringify(row)})\n` +
          `events: ${JSON.stringify(watcher.events.slice(-10))}`,
      );
    }
    await delay(50);
  }
}

/** Whether the row of `key` was rewritten after its insert (updated_at moved). */
async function rewritten(pg: PgServer, key: string): Promise<boolean> {
  const out = await pg.psql(
    `select updated_at > created_at from device_test where folder_key = '${key}'`,
  );
  return out.trim() === "t";
}

Deno.test({
  name: "watch: new, half-written, edited and moved-in folders land; a second run is " +
    "refused; SIGTERM finishes the batch in flight and exits 0",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, { "Init/stats.json": { ...STATS, mtime: OLD } });
      const db = join(dir, "t.db");
      const watcher = startWatch(pg, data, db);
      try {
        await watcher.waitFor((e) => e.event === "watching", 30_000);
        await waitForRow(pg, watcher, "Init");

        // A new folder lands: from its last write to its row being visible.
        writeNow(data, { "New/stats.json": STATS, "New/a.jpg": { bytes: 8 } });
        const written = performance.now();
        const landed = await waitForRow(pg, watcher, "New");
        const newMs = Math.round(landed.at - written);
        console.log(`watch: a new folder's row visible ${newMs} ms after its last write`);
        assert.deepEqual(landed.row.images, ["a.jpg"]);
        assert.deepEqual(landed.row.testResults, STATS.json);
        assert.ok(newMs < 8_000, `took ${newMs} ms (--min-age 1)`);

        // A half-written folder: stats.json, then 300 ms later an image. One row, both.
        writeNow(data, { "Half/stats.json": STATS });
        await delay(300);
        writeNow(data, { "Half/b.jpg": { bytes: 8 } });
        const halfWritten = performance.now();
        const half = await waitForRow(pg, watcher, "Half");
        console.log(
          `watch: a folder written in two steps visible ${
            Math.round(half.at - halfWritten)
          } ms after its last write`,
        );
        assert.deepEqual(half.row.images, ["b.jpg"], "the first row seen has the image");
        assert.deepEqual(half.row.testResults, STATS.json);
        assert.equal(await rewritten(pg, "Half"), false, "never sent half done, then fixed");

        // An edit is re-sent.
        writeNow(data, { "New/stats.json": { json: { result: "PASS", value: 2 } } });
        const edited = performance.now();
        const again = await waitForRow(
          pg,
          watcher,
          "New",
          (r) => (r.testResults as { value?: number }).value === 2,
        );
        console.log(
          `watch: an edit visible ${Math.round(again.at - edited)} ms after the write`,
        );
        assert.equal(await rewritten(pg, "New"), true);

        // A tree moved in from outside the base (written elsewhere, then published by mv):
        // the folder below the moved directory lands too, long before the 60 s rescan.
        writeNow(join(dir, "staging"), { "Moved/Run1/stats.json": STATS });
        Deno.renameSync(join(dir, "staging", "Moved"), join(data, "Moved"));
        const moved = performance.now();
        const run1 = await waitForRow(pg, watcher, "Moved/Run1", undefined, 15_000);
        console.log(
          `watch: a folder inside a directory moved in visible ${
            Math.round(run1.at - moved)
          } ms after the mv`,
        );

        // A cron run meanwhile is refused, naming the watching process.
        const cron = await runUploader([data, "--db-path", db, "--min-age", "0"], {
          env: { SUPABASE_DB_URL: pg.url },
        });
        assert.equal(cron.code, 2, describeExit(cron));
        const refusal = cron.events.find((e) => e.event === "error" || e.event === "summary");
        assert.ok(refusal, describeExit(cron));
        assert.match(String(refusal.message ?? refusal.error), /in use by process \d+/);
        assert.ok(
          String(refusal.message ?? refusal.error).includes(`process ${watcher.pid} `),
          JSON.stringify(refusal),
        );
        assert.match(String(refusal.message ?? refusal.error), /watch/);
        assert.equal(refusal.exit_code, 2);
        assert.ok(!watcher.exited, "the watch goes on");

        // SIGTERM while a batch is in flight: it finishes, the process exits 0.
        await slowInserts(pg, 2);
        writeNow(data, { "Last/stats.json": STATS });
        await waitForActiveUpsert(pg);
        watcher.signal("SIGTERM");
        const exit = await watcher.done;
        assert.equal(exit.code, 0, describeExit(exit));
        await dropSlowInserts(pg);
        assert.ok(await rowOf(pg, "Last"), "the batch in flight was finished");
        const state = trackerState(db);
        assert.equal(state.integrity, "ok");
        const notDone = state.folders.filter((f) => f.status !== "success");
        assert.deepEqual(notDone, [], "nothing left pending");
        assert.deepEqual(
          state.folders.map((f) => f.key).sort(),
          ["Half", "Init", "Last", "Moved/Run1", "New"],
        );
        assert.ok(!state.batchStatuses.includes("running"), "a batch left running");
        assert.equal(state.runStatuses.at(-1), "stopped");
        const summary = exit.events.find((e) => e.event === "summary");
        assert.equal(summary?.exit_code, 0, describeExit(exit));
        const table = await tableRows(pg);
        assert.equal(table.duplicates, 0);
      } finally {
        await watcher.kill();
      }
    });
  },
});

Deno.test({
  name: "watch: a folder created while the server is down lands after it; SIGINT exits 130",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, { "Init/stats.json": { ...STATS, mtime: OLD } });
      const db = join(dir, "t.db");
      const watcher = startWatch(pg, data, db);
      try {
        await watcher.waitFor((e) => e.event === "watching", 30_000);
        await waitForRow(pg, watcher, "Init");

        await pg.stop();
        writeNow(data, { "During/stats.json": STATS, "During/c.png": { bytes: 8 } });
        // Settled (1 s) and tried against the stopped server, several times.
        await delay(4_000);
        assert.ok(!watcher.exited, "the watch exited during the outage");
        await pg.start();
        const back = performance.now();
        const landed = await waitForRow(pg, watcher, "During", undefined, 40_000);
        console.log(
          `watch: a folder made during a 4 s outage visible ${
            Math.round(landed.at - back)
          } ms after the server came back`,
        );
        assert.deepEqual(landed.row.images, ["c.png"]);
        assert.ok(!watcher.exited);
        const retries = watcher.events.filter((e) => e.event === "retry").length;
        assert.ok(retries > 0, "the outage was retried");

        watcher.signal("SIGINT");
        const exit = await watcher.done;
        assert.equal(exit.code, 130, describeExit(exit));
        const state = trackerState(db);
        assert.equal(state.integrity, "ok");
        assert.deepEqual(state.folders.filter((f) => f.status !== "success"), []);
        assert.equal(state.runStatuses.at(-1), "interrupted");
      } finally {
        await watcher.kill();
      }
    });
  },
});

Deno.test({
  name: "watch: the periodic rescan finds folders whose file events were missed",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, { "Init/stats.json": { ...STATS, mtime: OLD } });
      const db = join(dir, "t.db");
      const watcher = startWatch(pg, data, db, 2);
      try {
        const watching = await watcher.waitFor((e) => e.event === "watching", 30_000);
        assert.equal(watching.rescan_every_s, 2);
        await waitForRow(pg, watcher, "Init");

        // The base replaced at its path, as when a USB disk is unmounted and mounted
        // again: the file-system events watch the old directory, so nothing names what is
        // written in the new one; only the rescan finds it.
        Deno.renameSync(data, join(dir, "data.old"));
        Deno.mkdirSync(data);
        await delay(1_000); // whatever the move itself raised has been handled
        writeNow(data, { "Remounted/Run2/stats.json": STATS });
        const written = performance.now();
        const landed = await waitForRow(pg, watcher, "Remounted/Run2", undefined, 15_000);
        console.log(
          `watch --rescan-every 2: a folder no file event named visible ${
            Math.round(landed.at - written)
          } ms after its last write`,
        );

        // The base gone for a while (unmounted with its mount point): the watch waits for
        // it, and what is written once it is back lands.
        Deno.renameSync(data, join(dir, "data.gone"));
        await watcher.waitFor(
          (e) => e.event === "warning" && /is gone/.test(String(e.message)),
          15_000,
        );
        Deno.mkdirSync(data);
        writeNow(data, { "Back/Run3/stats.json": STATS });
        await waitForRow(pg, watcher, "Back/Run3", undefined, 15_000);
        watcher.signal("SIGTERM");
        const exit = await watcher.done;
        assert.equal(exit.code, 0, describeExit(exit));
      } finally {
        await watcher.kill();
      }
    });
  },
});

/** Runs a command (cp, mkdir, mv) and fails the test when it fails. */
function sh(cmd: string, ...args: string[]): void {
  const out = new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).outputSync();
  assert.ok(out.success, `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

/**
 * Polls until the table holds a row for every unit folder under `data`, as on disk (extra
 * rows are those of folders moved away, which are never deleted); fails when the watch exits
 * first or `timeoutMs` passes.
 */
async function waitForTree(
  pg: PgServer,
  watcher: UploaderProcess,
  data: string,
  timeoutMs = 60_000,
): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const want = expectedRows(data).rows;
    const table = await tableRows(pg).catch(() => ({ rows: [] as TableRow[], duplicates: 0 }));
    const rows = table.rows.filter((r) => want.has(r.key));
    try {
      assertTableMatches({ rows, duplicates: table.duplicates }, want);
      return want.size;
    } catch (error) {
      if (watcher.exited) {
        throw new Error(`The watch exited: ${describeExit(await watcher.done)}`);
      }
      if (performance.now() > deadline) throw error;
    }
    await delay(250);
  }
}

Deno.test({
  name: "watch: trees copied in (cp -a, 500 folders, nested and flat, 3 times each), mkdir -p " +
    "chains, a rename and a replaced directory land exactly, each folder sent once",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServer(async (pg, dir) => {
      const data = join(dir, "data");
      writeTree(data, { "Init/stats.json": { ...STATS, mtime: OLD } });
      // Old modification times, as a USB stick's folders have: cp -a keeps them.
      generateTree(join(dir, "nested"), { folders: 500, nested: true, perLine: 50, seed: 2 });
      generateTree(join(dir, "flat"), { folders: 500, seed: 3 });
      // The replacement: other content, written a day later.
      generateTree(join(dir, "nested-v2"), {
        folders: 500,
        nested: true,
        perLine: 50,
        seed: 4,
        mtime: GENERATED_MTIME + 86_400_000,
      });
      const db = join(dir, "t.db");
      // A rescan every 3 s walks the base while events bring the same folders.
      const watcher = startWatch(pg, data, db, 3);
      try {
        await watcher.waitFor((e) => e.event === "watching", 30_000);
        await waitForRow(pg, watcher, "Init");
        for (let i = 1; i <= 3; i++) {
          for (const kind of ["nested", "flat"]) {
            const started = performance.now();
            sh("cp", "-a", join(dir, kind), join(data, `${kind}${i}`));
            const rows = await waitForTree(pg, watcher, data);
            console.log(
              `watch: cp -a of a 500-folder ${kind} tree (copy ${i}) landed in ${
                Math.round(performance.now() - started)
              } ms (${rows} rows in all)`,
            );
          }
        }
        // mkdir -p chains, each run folder written as a device does.
        for (let n = 1; n <= 5; n++) {
          sh("mkdir", "-p", join(data, "2026-12", `day0${n}`, `run${n}`));
          writeNow(join(data, "2026-12", `day0${n}`, `run${n}`), { "stats.json": STATS });
        }
        sh("mkdir", "-p", join(data, "x", "y", "z"));
        writeNow(join(data, "x", "y", "z"), { "stats.json": STATS, "a.jpg": { bytes: 8 } });
        await waitForTree(pg, watcher, data);
        // A rename inside the base, and a directory replaced by another of other content.
        sh("mv", join(data, "flat1"), join(data, "flat1-renamed"));
        sh("mv", join(data, "nested2"), join(dir, "nested2.old"));
        sh("cp", "-a", join(dir, "nested-v2"), join(data, "nested2"));
        const total = await waitForTree(pg, watcher, data);
        assert.ok(!watcher.exited, "the watch goes on");
        const stops = watcher.events.filter((e) => e.event === "stopping" || e.event === "error");
        assert.deepEqual(stops, []);
        assert.deepEqual(watcher.events.filter((e) => e.event === "folder_failed"), []);

        watcher.signal("SIGTERM");
        const exit = await watcher.done;
        assert.equal(exit.code, 0, describeExit(exit));
        const summary = exit.events.find((e) => e.event === "summary")!;
        const replaced = expectedRows(join(data, "nested2")).rows.size;
        const renamed = expectedRows(join(data, "flat1-renamed")).rows.size;
        // Every folder was sent once: the renamed ones under their new keys, the replaced
        // ones rewritten once with the new content; none was sent half copied and again.
        // (`total` counts the renamed folders under their new keys; their old keys were
        // inserted before the rename.)
        assert.equal(summary.inserted, total + renamed, JSON.stringify(summary));
        assert.equal(summary.updated, replaced, JSON.stringify(summary));
        assert.equal(summary.uploaded, total + renamed + replaced, JSON.stringify(summary));
        const state = trackerState(db);
        assert.equal(state.integrity, "ok");
        const onDisk = state.folders.filter((f) => !f.path.includes("/flat1/"));
        assert.deepEqual(onDisk.filter((f) => f.status !== "success").slice(0, 5), []);
        assert.ok(renamed > 0);
      } finally {
        await watcher.kill();
      }
    });
  },
});

/** The README's systemd unit, as systemd reads it (`#` starts a comment only at a line's start). */
interface Unit {
  /** `[Service]` settings, by name. */
  service: Map<string, string>;
  /** The unit file's text. */
  text: string;
}

/** Reads the systemd unit shown in README.md. */
function readmeUnit(): Unit {
  const readme = Deno.readTextFileSync(join(REPO_ROOT, "README.md"));
  const block = readme.match(/```ini\n# \/etc\/systemd\/system\/[^\n]+\n([\s\S]*?)```/);
  assert.ok(block, "README.md shows no systemd unit");
  const service = new Map<string, string>();
  let section = "";
  for (const line of block[1].split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const header = line.match(/^\[(\w+)\]$/);
    if (header) section = header[1];
    else if (section === "Service") {
      const eq = line.indexOf("=");
      service.set(line.slice(0, eq), line.slice(eq + 1));
    }
  }
  return { service, text: block[1] };
}

/** Every process descending from `pid` (psql sessions included, whatever their group). */
function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    let stat: string;
    try {
      stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
    } catch (_error) {
      continue; // exited while listed
    }
    const ppid = Number(stat.replace(/^.*\) /, "").split(" ")[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry.name));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const stack = [pid];
  while (stack.length > 0) {
    for (const child of children.get(stack.pop()!) ?? []) {
      out.push(child);
      stack.push(child);
    }
  }
  return out;
}

/** Sends `signal` to each pid that still exists. */
function signalEach(pids: readonly number[], signal: Deno.Signal): void {
  for (const pid of pids) {
    try {
      Deno.kill(pid, signal);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
}

/**
 * Stops `unit`'s process as systemd would with `killMode` (control-group: the signal to
 * every process of the unit; mixed: to the main process, SIGKILL to the rest once it has
 * exited), or as `kill -TERM -- -PGID` does (`group`). Past TimeoutStopSec everything gets
 * SIGKILL, as systemd does. Returns the exit and whether it needed the SIGKILL.
 */
async function stopUnit(
  unit: Unit,
  p: UploaderProcess,
  how: "group" | "mixed" | "control-group",
): Promise<{ exit: Awaited<UploaderProcess["done"]>; killed: boolean }> {
  const signal = (unit.service.get("KillSignal") ?? "SIGTERM") as Deno.Signal;
  const timeoutMs = Number(unit.service.get("TimeoutStopSec") ?? "90") * 1000;
  const all = [p.pid, ...descendants(p.pid)];
  if (how === "group") p.signalGroup(signal);
  else if (how === "mixed") p.signal(signal);
  else signalEach(all, signal);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) =>
    timer = setTimeout(() => resolve("late"), timeoutMs)
  );
  const first = await Promise.race([p.done, late]);
  clearTimeout(timer);
  const killed = first === "late";
  if (killed) signalEach([p.pid, ...descendants(p.pid)], "SIGKILL");
  const exit = await p.done;
  signalEach(all, "SIGKILL"); // what is left of the unit goes once its main process is gone
  return { exit, killed };
}

/** The latest run recorded in tracker `db`, or undefined (read while the watch holds it). */
function latestRun(db: string): { id: number; status: string; mode: string } | undefined {
  try {
    const sqlite = new DatabaseSync(db, { readOnly: true });
    try {
      const row = sqlite.prepare(
        "SELECT run_id AS id, status, mode FROM runs ORDER BY run_id DESC LIMIT 1",
      ).get() as { id: number; status: string; mode: string } | undefined;
      return row ? { ...row, id: Number(row.id) } : undefined;
    } finally {
      sqlite.close();
    }
  } catch (_error) {
    return undefined; // not created yet
  }
}

Deno.test({
  name: "watch under the README's systemd unit: SIGTERM to the group of `deno task upload " +
    "--watch`, 10 times at different moments, each exit 0, nothing lost",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const unit = readmeUnit();
    for (const [name, value] of unit.service) {
      assert.ok(!value.includes("#"), `${name}=${value}: systemd takes no comment after a value`);
    }
    assert.equal(unit.service.get("KillSignal"), "SIGTERM");
    const killMode = unit.service.get("KillMode") ?? "control-group";
    assert.ok(["mixed", "control-group"].includes(killMode), killMode);
    const exec = unit.service.get("ExecStart")!.split(/\s+/);
    assert.deepEqual(exec.slice(1, 3), ["task", "upload"]);
    await withServer(async (pg, dir) => {
      // systemd's own parser, where it is installed, takes every line of the unit.
      if (existsSync("/usr/bin/systemd-analyze")) {
        const file = join(dir, "folder-uploader.service");
        Deno.writeTextFileSync(file, unit.text.replace(exec[0], Deno.execPath()));
        const out = new Deno.Command("/usr/bin/systemd-analyze", {
          args: ["verify", file],
          stdout: "piped",
          stderr: "piped",
        }).outputSync();
        const said = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
        assert.equal(said.trim(), "", `systemd-analyze verify: ${said}`);
      } else console.log("systemd-analyze is not installed: the unit's syntax is not verified");
      const data = join(dir, "data");
      const db = join(dir, "upload_tracker.db");
      writeTree(data, { "Init/stats.json": { ...STATS, mtime: OLD } });
      // The unit's command line, with this machine's deno, the test's base and tracker.
      const argv = exec.map((arg, i) =>
        i === 0 ? Deno.execPath() : arg === "/data" ? data : exec[i - 1] === "--db-path" ? db : arg
      );
      // Batches of the initial pass take a while on the server, so stops meet them in flight.
      await slowInserts(pg, 0.004);
      const moments = ["started", "in flight", "idle"] as const;
      const deliveries = ["group", killMode as "mixed" | "control-group", "control-group"] as const;
      for (let i = 0; i < 10; i++) {
        const moment = moments[i % moments.length];
        const how = deliveries[Math.floor(i / 3) % deliveries.length];
        // Written while the service was down: the next start's initial pass sends them.
        generateTree(join(data, `day${i}`), { folders: 400, seed: 100 + i });
        const before = latestRun(db)?.id ?? 0;
        const p = startUploader([], { argv, env: { SUPABASE_DB_URL: pg.url } });
        try {
          const deadline = Date.now() + 60_000;
          while ((latestRun(db)?.id ?? 0) <= before) {
            if (p.exited) assert.fail(`The service exited: ${describeExit(await p.done)}`);
            assert.ok(Date.now() < deadline, "the service did not start its run in 60 s");
            await delay(20);
          }
          if (moment === "in flight") await waitForActiveUpsert(pg);
          if (moment === "idle") await waitForTree(pg, p, data);
          const started = performance.now();
          const { exit, killed } = await stopUnit(unit, p, how);
          const what = `stop ${i} (${moment}, ${how})`;
          assert.ok(!killed, `${what}: needed SIGKILL after TimeoutStopSec`);
          assert.equal(exit.code, 0, `${what}: ${describeExit(exit)}`);
          assert.doesNotMatch(exit.stderr, /Retrying|Error:|syntax error|Interrupted/, exit.stderr);
          console.log(
            `${what}: exit 0 ${Math.round(performance.now() - started)} ms after SIGTERM`,
          );
          const state = trackerState(db);
          assert.equal(state.integrity, "ok");
          assert.ok(!state.batchStatuses.includes("running"), `${what}: a batch left running`);
          assert.equal(state.runStatuses.at(-1), "stopped", what);
          const onServer = new Set((await tableRows(pg)).rows.map((r) => r.key));
          const lost = state.folders.filter((f) => f.status === "success" && !onServer.has(f.key!));
          assert.deepEqual(lost, [], `${what}: recorded as uploaded, not on the server`);
        } finally {
          await p.kill();
        }
      }
      await dropSlowInserts(pg);
      const last = await runUploader([data, "--db-path", db], { env: { SUPABASE_DB_URL: pg.url } });
      assert.equal(last.code, 0, describeExit(last));
      assertTableMatches(await tableRows(pg), expectedRows(data).rows);
    });
  },
});
