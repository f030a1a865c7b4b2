/**
 * Quick upload end to end: `scripts/quick_upload.ts` run as a user runs it, on a copy of
 * examples/data, into the embedded default database (nothing configured), read back with
 * `scripts/sql.ts`. Covers folders as arguments and on stdin, duplicates, `--base`, a
 * folder that is no upload unit and a missing path (each failing alone), the tracking
 * database used when it exists (the manager then sends none of those folders again) and
 * never created when it does not, and the tracker lock.
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { acquireLock } from "../../lib/tracker/tracker.ts";
import { folderKeyFor, readLines } from "../../lib/engine/quick.ts";
import { localDeviceId, nameBasedUuid } from "../../lib/target/device.ts";
import { parseQuickCommand } from "../../lib/cli/commands.ts";
import { UploadError } from "../../lib/core/errors.ts";
import {
  type CliResult,
  describeRun,
  exists,
  jsonEvents,
  REPO_ROOT,
  runUploadCli,
  summaryOf,
} from "../../support/cli.ts";
import { hasPostgres, startPostgres, TEST_PASSWORD } from "../../support/postgres.ts";
import { removeTree, setMtime, T1, writeTree } from "../../support/tree.ts";

const QUICK = join(REPO_ROOT, "scripts", "quick_upload.ts");
const SQL = join(REPO_ROOT, "scripts", "sql.ts");
const EXAMPLES = join(REPO_ROOT, "examples", "data");

/** Copies examples/data to `dest` without marker files, every file's mtime set to T1. */
function copyExamples(dest: string): void {
  Deno.mkdirSync(dest, { recursive: true });
  const copy = (from: string, to: string) => {
    Deno.mkdirSync(to, { recursive: true });
    for (const entry of Deno.readDirSync(from)) {
      if (entry.name.startsWith(".")) continue;
      if (entry.name === "success.json" || entry.name === "failed.json") continue;
      const src = join(from, entry.name);
      const dst = join(to, entry.name);
      if (entry.isDirectory) copy(src, dst);
      else if (entry.isFile) {
        Deno.copyFileSync(src, dst);
        setMtime(dst, T1);
      }
    }
  };
  copy(EXAMPLES, dest);
}

/** Runs the quick upload CLI in `dir`. */
function quick(dir: string, args: string[], stdin?: string): Promise<CliResult> {
  return runUploadCli(args, { script: QUICK, cwd: dir, stdin });
}

/** Rows of device_test as `folder_key|test_status|upload_batch`, via `deno task sql`. */
async function rows(dir: string): Promise<Map<string, { status: string; batch: string }>> {
  const result = await runUploadCli(
    ["-XAt", "-c", "select folder_key, test_status, upload_batch from device_test order by 1"],
    { script: SQL, cwd: dir },
  );
  assert.equal(result.code, 0, describeRun(result));
  const out = new Map<string, { status: string; batch: string }>();
  for (const line of result.stdout.split("\n").filter((l) => l !== "")) {
    const [key, status, batch] = line.split("|");
    out.set(key, { status, batch });
  }
  return out;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix: "quick_test_" });
  try {
    await fn(dir);
  } finally {
    removeTree(dir);
  }
}

Deno.test("quick: folders as arguments and on stdin, --base, failures alone, no tracker made", async () => {
  await withDir(async (dir) => {
    const data = join(dir, "data");
    copyExamples(data);
    writeTree(join(dir, "elsewhere"), { "Batch90/stats.json": { json: { result: "PASS" } } });
    writeTree(data, { "Notes/notes.txt": { text: "no image, no report, no stats" } });

    // Arguments: a duplicate (spelled differently), a folder that is not a unit, a missing path.
    const first = await quick(dir, [
      "data/Batch54",
      "data/Batch56",
      "./data/Batch54/",
      "data/Notes",
      "data/no-such-folder",
      "--json",
    ]);
    assert.equal(first.code, 1, describeRun(first));
    const events = jsonEvents(first);
    const failed = events.filter((e) => e.event === "folder_failed").map((e) => e.path);
    assert.deepEqual(failed, [join(data, "Notes"), join(data, "no-such-folder")]);
    const summary = summaryOf(first);
    assert.equal(summary.given, 5);
    assert.equal(summary.duplicates, 1);
    assert.equal(summary.uploaded, 2);
    assert.equal(summary.inserted, 2);
    assert.equal(summary.failed, 2);
    assert.equal(summary.recorded, 0);
    let table = await rows(dir);
    assert.deepEqual([...table.keys()], ["Batch54", "Batch56"]);
    assert.equal(table.get("Batch54")!.status, "passed");
    assert.equal(table.get("Batch56")!.status, "pending");
    assert.ok(exists(join(data, "Batch54", "success.json")), "success marker written");
    assert.ok(!exists(join(data, "Notes", "failed.json")), "a non-unit folder is not touched");
    assert.ok(!exists(join(dir, "upload_tracker.db")), "no tracking database created");

    // The same folders again, unchanged: already up to date on the server, and their
    // markers are left as they are, modification time included (a `find -newer` pipeline
    // does not list them again); each step line names the folder it is about.
    const marker = join(data, "Batch54", "success.json");
    setMtime(marker, T1);
    const unchanged = await quick(dir, ["data/Batch54", "data/Batch56"]);
    assert.equal(unchanged.code, 0, describeRun(unchanged));
    assert.match(unchanged.stdout, /0 inserted, 0 updated, 2 already up to date/);
    assert.doesNotMatch(unchanged.stdout + unchanged.stderr, /Marker written/);
    assert.equal(Deno.statSync(marker).mtime!.getTime(), T1, "success.json was rewritten");
    const steps = unchanged.stdout.split("\n").filter((l) =>
      /Found|No stats|Loaded|Test status/.test(l)
    );
    assert.equal(steps.length, 7, unchanged.stdout);
    for (const line of steps) assert.match(line, /^ {2}Batch5[46]: /, unchanged.stdout);

    // stdin: CRLF, blank lines, an absolute path, a name with a quote.
    const second = await quick(
      dir,
      ["-"],
      `data/Line2/Batch12\r\n\n   \n${join(data, "Batch55")}\ndata/Line2/Batch14 (O'Brien rerun)\n`,
    );
    assert.equal(second.code, 0, describeRun(second));
    table = await rows(dir);
    assert.deepEqual([...table.keys()], [
      "Batch12",
      "Batch14 (O'Brien rerun)",
      "Batch54",
      "Batch55",
      "Batch56",
    ]);
    assert.equal(table.get("Batch55")!.status, "failed");

    // --base: keys relative to it; a folder outside it fails alone.
    const third = await quick(dir, [
      "--base",
      "data",
      "data/Line2/Batch13",
      "elsewhere/Batch90",
      "data/Line2/Batch12",
    ]);
    assert.equal(third.code, 1, describeRun(third));
    table = await rows(dir);
    assert.ok(table.has("Line2/Batch13") && table.has("Line2/Batch12"), [...table.keys()].join());
    assert.ok(!table.has("Batch90"), "the folder outside --base is not uploaded");
    assert.equal(table.get("Line2/Batch13")!.status, "failed");
    assert.equal(table.size, 7);

    // Every row of this device, one device id over all runs (no tracker to keep one).
    const ids = await runUploadCli(
      ["-XAt", "-c", "select distinct device_id from device_test"],
      { script: SQL, cwd: dir },
    );
    assert.deepEqual(ids.stdout.trim().split("\n"), [localDeviceId()]);
    assert.ok(!exists(join(dir, "upload_tracker.db")), "still no tracking database");
  });
});

Deno.test("quick: with a tracking database the manager afterwards sends none of them again", async () => {
  await withDir(async (dir) => {
    const data = join(dir, "data");
    copyExamples(data);
    const db = join(dir, "upload_tracker.db");

    const scan = await runUploadCli([data, "--scan-only"], { cwd: dir });
    assert.equal(scan.code, 0, describeRun(scan));

    const q = await quick(dir, ["--base", data, "data/Batch54", "data/Line2/Batch12", "--json"]);
    assert.equal(q.code, 0, describeRun(q));
    assert.equal(summaryOf(q).recorded, 2);
    const tracker = new DatabaseSync(db, { readOnly: true });
    try {
      const tracked = tracker.prepare(
        "SELECT folder_key, upload_status, uploaded_hash = file_hash AS same FROM folder_status " +
          "WHERE upload_status = 'success' ORDER BY 1",
      ).all();
      assert.deepEqual(
        tracked.map((r) => [r.folder_key, r.upload_status, r.same]),
        [["Batch54", "success", 1], ["Line2/Batch12", "success", 1]],
      );
    } finally {
      tracker.close();
    }

    const manager = await runUploadCli([data, "--json"], { cwd: dir });
    assert.equal(manager.code, 0, describeRun(manager));
    const summary = summaryOf(manager);
    // Batch57 holds a report and notes: a unit since report-only folders are (reportOnlyUnits).
    assert.equal(summary.uploaded, 5, "the 7 units less the 2 quick uploads");
    assert.equal(summary.queued, 5);
    const table = await rows(dir);
    assert.equal(table.size, 7);
    assert.match(table.get("Batch54")!.batch, /^quick_/, "not sent again by the manager");
    assert.match(table.get("Line2/Batch12")!.batch, /^quick_/);
    assert.match(table.get("Batch55")!.batch, /^batch_/);

    // A manager run holding the tracker lock: the quick upload is refused and sends nothing.
    writeTree(data, { "Batch99/stats.json": { json: { result: "PASS" } } });
    const lock = acquireLock(`${db}.lock`, "upload (test holding the lock)");
    try {
      const refused = await quick(dir, ["data/Batch99"]);
      assert.equal(refused.code, 2, describeRun(refused));
      assert.match(refused.stderr, /in use by process/);
    } finally {
      lock.release();
    }
    assert.ok(!(await rows(dir)).has("Batch99"));

    // A tracker that records uploads to another database is left alone: recording this
    // upload there would make the manager skip Batch99 on its own target.
    const other = new DatabaseSync(db);
    const target = other.prepare("SELECT value FROM meta WHERE key = 'target'").get()!.value;
    other.prepare(
      "UPDATE meta SET value = 'db.example.com:5432/postgres#device_test' " +
        "WHERE key = 'target'",
    ).run();
    other.close();
    const elsewhere = await quick(dir, ["data/Batch99", "--json"]);
    assert.equal(elsewhere.code, 0, describeRun(elsewhere));
    assert.equal(summaryOf(elsewhere).recorded, 0);
    assert.ok((await rows(dir)).has("Batch99"));
    const after = new DatabaseSync(db, { readOnly: true });
    try {
      assert.equal(
        after.prepare("SELECT count(*) AS n FROM folder_status WHERE folder_key = 'Batch99'")
          .get()!.n,
        0,
      );
      assert.notEqual(target, undefined);
    } finally {
      after.close();
    }
  });
});

Deno.test("quick: stdin is served as it arrives; Ctrl-C ends a waiting run with 130", async () => {
  await withDir(async (dir) => {
    const data = join(dir, "data");
    copyExamples(data);
    const env: Record<string, string> = { NO_COLOR: "1" };
    for (const name of ["PATH", "HOME", "DENO_DIR", "TMPDIR"]) {
      const value = Deno.env.get(name);
      if (value !== undefined) env[name] = value;
    }
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        "--config",
        join(REPO_ROOT, "deno.json"),
        QUICK,
        "-",
        "--json",
      ],
      cwd: dir,
      env,
      clearEnv: true,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const writer = child.stdin.getWriter();
    const lines = readLines(child.stdout)[Symbol.asyncIterator]();
    const kill = setTimeout(() => child.kill("SIGKILL"), 60_000);
    try {
      // One path, stdin left open: the folder is uploaded without waiting for the end.
      await writer.write(new TextEncoder().encode("data/Batch54\n"));
      let uploaded = false;
      while (!uploaded) {
        const next = await lines.next();
        if (next.done) assert.fail(`output ended early: ${await stderr}`);
        uploaded = JSON.parse(next.value).event === "folder_uploaded";
      }
      child.kill("SIGINT");
      const rest: Record<string, unknown>[] = [];
      for (let next = await lines.next(); !next.done; next = await lines.next()) {
        rest.push(JSON.parse(next.value));
      }
      const status = await child.status;
      assert.equal(status.code, 130, await stderr);
      const summary = rest.at(-1)!;
      assert.equal(summary.event, "summary");
      assert.equal(summary.status, "interrupted");
      assert.equal(summary.uploaded, 1);
    } finally {
      clearTimeout(kill);
      await writer.close().catch(() => {});
      await stderr;
    }
    assert.deepEqual([...(await rows(dir)).keys()], ["Batch54"]);
  });
});

Deno.test({
  name: "quick: to a server URL from SUPABASE_DB_URL, with DEVICE_ID, password never printed",
  ignore: !hasPostgres(),
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir(async (dir) => {
        copyExamples(join(dir, "data"));
        const deviceId = "0b6f0a52-8f5e-4b8e-9a51-6c1d2e3f4a5b";
        const result = await runUploadCli(
          ["--base", "data", "data/Line2/Batch14 (O'Brien rerun)", "data/Batch56", "--json"],
          { script: QUICK, cwd: dir, env: { SUPABASE_DB_URL: pg.url, DEVICE_ID: deviceId } },
        );
        assert.equal(result.code, 0, describeRun(result));
        assert.ok(!(result.stdout + result.stderr).includes(TEST_PASSWORD));
        const table = await pg.psql(
          "select device_id, folder_key, test_status, images from device_test order by 2",
        );
        assert.deepEqual(table.trim().split("\n"), [
          `${deviceId}|Batch56|pending|{"2025-06-03 09:12:01.png","2025-06-03 09:12:31.PNG"}`,
          `${deviceId}|Line2/Batch14 (O'Brien rerun)|passed|{"2025-06-05 11:20:00.gif"}`,
        ]);
        assert.ok(!exists(join(dir, "upload_tracker.pgdata")), "the embedded database not used");
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test("quick: folder keys, device id, stdin lines and argument errors", async () => {
  assert.equal(folderKeyFor("/data/Line2/Batch12", null), "Batch12");
  assert.equal(folderKeyFor("/data/Line2/Batch12/", "/data"), "Line2/Batch12");
  assert.equal(folderKeyFor("/data", "/data"), "data");
  assert.throws(
    () => folderKeyFor("/data2/Batch1", "/data"),
    (e) => e instanceof UploadError && e.kind === "folder" && /outside --base/.test(e.message),
  );
  assert.throws(() => folderKeyFor("/Batch1", "/data"), /outside --base/);
  const id = nameBasedUuid("pi-lab-3");
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(nameBasedUuid("pi-lab-3"), id);
  assert.notEqual(nameBasedUuid("pi-lab-4"), id);

  const chunks = ["a/b\r", "\nc", "\n\n  \nd e\n", "last"];
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const c of chunks) controller.enqueue(new TextEncoder().encode(c));
      controller.close();
    },
  });
  const lines: string[] = [];
  for await (const line of readLines(stream)) lines.push(line);
  assert.deepEqual(lines, ["a/b", "c", "d e", "last"]);

  const usage = (argv: string[]) =>
    assert.throws(
      () => parseQuickCommand(argv, {}),
      (e) => e instanceof UploadError && e.kind === "usage",
      argv.join(" "),
    );
  usage([]);
  usage(["-", "data/Batch54"]);
  usage(["data/Batch54", "--min-age", "-1"]);
  usage(["data/Batch54", "--base", ""]);
  usage(["data/Batch54", "--nope"]);
  const cmd = parseQuickCommand(["-", "--base", "data", "--no-markers", "--min-age", "0"], {
    UPLOAD_DB_PATH: "t.db",
  });
  assert.equal(cmd.stdin, true);
  assert.deepEqual(cmd.paths, []);
  assert.equal(cmd.base, join(Deno.cwd(), "data"));
  assert.equal(cmd.markers, false);
  assert.equal(cmd.config.minAgeSeconds, 0);
  assert.equal(cmd.config.dbPath, join(Deno.cwd(), "t.db"));
  // Under deno task, relative paths are the caller's directory.
  const fromTask = parseQuickCommand(["a/B1", "--base", "a"], { INIT_CWD: "/srv/lab" });
  assert.deepEqual([fromTask.paths, fromTask.base], [["/srv/lab/a/B1"], "/srv/lab/a"]);
});
