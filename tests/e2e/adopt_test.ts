/**
 * Where users already are: the CLI run as a user runs it against a real PostgreSQL 15 with
 * the limits and mistakes met in the field.
 *
 * - A short `statement_timeout` on the role: batches split, a row that still times out
 *   fails alone naming 57014 and the server's setting, the rest land, exit 1, and
 *   `--status` lists the failures. A very short timeout is no outage.
 * - Large stats.json files under the upload task's own V8 heap limits, with the peak RSS
 *   printed; a file over the limit fails alone before it is parsed.
 * - Quick upload keyed by a folder's name alone: two folders of the same name in one run,
 *   or in two runs, never overwrite each other; with the tracker, the tracked key is used.
 * - A wrong URL (closed port, a host that does not resolve) gives up in the short connect
 *   window with exit 3 and a hint. An outage after the first connection (`--give-up-after`)
 *   is covered by tests/e2e/fault_server_test.ts.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree, removeTree, writeTree } from "../../support/tree.ts";
import { buildSchemaStatements, printSchemaSql } from "../../lib/sink/postgres/schema.ts";
import { MAX_STATS_BYTES } from "../../lib/plan/row.ts";
import { runMeasured } from "../../bench/proc.ts";
import {
  type CliResult,
  describeRun,
  exists,
  jsonEvents,
  REPO_ROOT,
  runUploadCli,
  summaryOf,
  UPLOAD_SCRIPT,
} from "../../support/cli.ts";
import { TASK_PERMISSIONS, trackerState } from "../../support/run.ts";

const QUICK_SCRIPT = join(REPO_ROOT, "scripts", "quick_upload.ts");
const DEVICE_ID = "3a8e4c1d-2b7f-4e90-9c1a-5d6e7f8a9b0c";

/** The upload task's V8 flags (deno.json), so memory is measured as users run it. */
const TASK_V8_FLAGS = "--v8-flags=--max-semi-space-size=4,--max-old-space-size=192," +
  "--wasm-num-compilation-tasks=1";

function roleUrl(pg: PgServer, role: string, password: string): string {
  return `postgresql://${role}:${password}@${pg.host}:${pg.port}/uploads`;
}

/** Runs the upload manager with `args` (`--json` added) against `url`. */
function upload(args: string[], url: string, timeoutMs = 120_000): Promise<CliResult> {
  return runUploadCli([...args, "--json"], {
    env: { SUPABASE_DB_URL: url, DEVICE_ID },
    timeoutMs,
  });
}

/** Runs the quick upload with `args` (`--json` added) against `url`, in `cwd`. */
function quick(args: string[], url: string, cwd: string): Promise<CliResult> {
  return runUploadCli([...args, "--json"], {
    script: QUICK_SCRIPT,
    env: { SUPABASE_DB_URL: url, DEVICE_ID },
    cwd,
  });
}

/** Creates the uploader's tables as an owner would, before a restricted role uploads. */
async function createTables(pg: PgServer): Promise<void> {
  for (
    const sql of buildSchemaStatements({
      table: "device_test",
      device: { id: DEVICE_ID, name: "lab", type: "image_analyzer" },
    })
  ) await pg.psql(sql);
}

/** `folder_key -> test_results text` of every row. */
async function rowsByKey(pg: PgServer): Promise<Map<string, string>> {
  const out = await pg.psql(
    "select coalesce(json_object_agg(folder_key, test_results::text), '{}') from device_test",
  );
  return new Map(Object.entries(JSON.parse(out) as Record<string, string>));
}

async function withDir(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix });
  try {
    await fn(dir);
  } finally {
    removeTree(dir);
  }
}

/** A TCP port nothing listens on (bound once, then released). */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

// 7. A wrong URL ------------------------------------------------------------------------

Deno.test("wrong URL: closed port and unresolvable host give up in the connect window, exit 3", async () => {
  await withDir("adopt_url_", async (dir) => {
    const data = join(dir, "data");
    writeTree(data, {
      "Batch1/stats.json": { json: { result: "PASS" } },
      "Batch2/a.jpg": { bytes: 10 },
    });
    const port = closedPort();
    const cases = [
      {
        name: "closed port",
        url: `postgresql://loader:pw@127.0.0.1:${port}/uploads`,
        at: `${port}`,
      },
      {
        name: "unresolvable host",
        url: "postgresql://loader:pw@nonexistent.invalid:5432/uploads",
        at: "nonexistent.invalid",
      },
    ];
    const runs = cases.map(async (c, i) => {
      const dbPath = join(dir, `tracker${i}.db`);
      const started = performance.now();
      const result = await upload(
        [data, "--db-path", dbPath, "--min-age", "0", "--connect-timeout", "3"],
        c.url,
        60_000,
      );
      return { c, dbPath, result, seconds: (performance.now() - started) / 1000 };
    });
    // The default window, on the closed port, alongside.
    const defaultRun = (async () => {
      const started = performance.now();
      const result = await upload(
        [data, "--db-path", join(dir, "tracker-default.db"), "--min-age", "0"],
        cases[0].url,
        90_000,
      );
      return { result, seconds: (performance.now() - started) / 1000 };
    })();
    for (const { c, dbPath, result, seconds } of await Promise.all(runs)) {
      console.log(`${c.name}: exit ${result.code} after ${seconds.toFixed(1)} s`);
      assert.equal(result.code, 3, `${c.name}: ${describeRun(result)}`);
      assert.ok(seconds < 15, `${c.name}: took ${seconds.toFixed(1)} s`);
      assert.match(result.stderr, /unreachable/i, c.name);
      assert.ok(result.stderr.includes(c.at), `${c.name}: names ${c.at}: ${result.stderr}`);
      assert.match(result.stderr, /check the host and port/i, c.name);
      assert.ok(!result.stderr.includes(":pw@"), "password printed");
      const state = trackerState(dbPath);
      assert.deepEqual(state.folders.filter((f) => f.status === "success"), []);
    }
    const def = await defaultRun;
    console.log(
      `closed port, default window: exit ${def.result.code} after ${def.seconds.toFixed(1)} s`,
    );
    assert.equal(def.result.code, 3, describeRun(def.result));
    assert.ok(def.seconds < 35, `default window took ${def.seconds.toFixed(1)} s`);
    assert.ok(!exists(join(data, "Batch1", "success.json")));
    assert.ok(!exists(join(data, "Batch2", "success.json")));
  });
});

// 4. Large stats.json files -------------------------------------------------------------

/**
 * Writes a valid stats.json of exactly `size` bytes into each of `folders`: a result, the
 * copy's number and a long `trace` array of small objects, padded with trailing whitespace.
 * The trace is built once and shared (building it per file would take longer than the
 * upload). Returns the trace's length.
 */
function writeBigStats(folders: string[], size: number): number {
  const head = (copy: number) => `{"result":"PASS","copy":${copy},"trace":[`;
  const tail = "]}";
  const parts: string[] = [];
  let length = head(0).length + tail.length;
  let n = 0;
  for (;;) {
    const item = `${n === 0 ? "" : ","}{"t":${n},"v":${(n % 997) / 8}}`;
    if (length + item.length > size) break;
    parts.push(item);
    length += item.length;
    n++;
  }
  parts.push(tail, " ".repeat(size - length));
  const body = new TextEncoder().encode(parts.join(""));
  folders.forEach((folder, copy) => {
    assert.ok(copy < 10, "the copy number is one digit, so every file has the same size");
    Deno.mkdirSync(folder, { recursive: true });
    const file = Deno.openSync(join(folder, "stats.json"), { write: true, create: true });
    try {
      file.writeSync(new TextEncoder().encode(head(copy)));
      let written = 0;
      while (written < body.length) written += file.writeSync(body.subarray(written));
    } finally {
      file.close();
    }
  });
  return n;
}

/** Runs the upload manager as `deno task upload` does (its V8 flags), measuring peak RSS. */
async function uploadMeasured(args: string[], url: string) {
  const env: Record<string, string> = { NO_COLOR: "1", SUPABASE_DB_URL: url, DEVICE_ID };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  const measured = await runMeasured(Deno.execPath(), [
    "run",
    TASK_V8_FLAGS,
    ...TASK_PERMISSIONS,
    "--quiet",
    "--config",
    join(REPO_ROOT, "deno.json"),
    UPLOAD_SCRIPT,
    ...args,
    "--json",
  ], { env, pollMs: 20 });
  return { result: measured as CliResult, peakMb: measured.peakRssKb / 1024, measured };
}

/** Checks the big rows: result and trace length, first and last trace entries. */
async function assertBigRows(pg: PgServer, expected: Map<string, number>): Promise<void> {
  const keys = [...expected.keys()].map((k) => `'${k}'`).join(",");
  const out = await pg.psql(
    `select json_object_agg(folder_key, json_build_array(j->>'result', jsonb_array_length(j->'trace'),
       j->'trace'->0, j->'trace'->-1, test_status))
     from (select folder_key, test_status, test_results j from device_test
           where folder_key in (${keys}) offset 0) rows`,
  );
  const got = JSON.parse(out) as Record<string, [string, number, unknown, unknown, string]>;
  for (const [key, n] of expected) {
    assert.ok(got[key], `${key} missing`);
    const last = n - 1;
    assert.deepEqual(got[key], [
      "PASS",
      n,
      { t: 0, v: 0 },
      { t: last, v: (last % 997) / 8 },
      "passed",
    ]);
  }
}

Deno.test({
  name: "large stats.json: six of 9 MB and six just under 16 MiB land under the task's heap limits",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    // lz4, PostgreSQL's faster TOAST compression, keeps the server's share of the time down;
    // the uploader's memory is what is measured.
    const pg = await startPostgres({ conf: { default_toast_compression: "lz4" } });
    try {
      await withDir("adopt_big_", async (dir) => {
        // Six folders of 9 MB each, and a few ordinary ones.
        const nine = join(dir, "nine");
        const nineRows = new Map<string, number>();
        const nineKeys = [1, 2, 3, 4, 5, 6].map((i) => `Big${i}`);
        const nineTrace = writeBigStats(nineKeys.map((k) => join(nine, k)), 9_000_000);
        for (const key of nineKeys) nineRows.set(key, nineTrace);
        const small = generateTree(nine, { folders: 8, seed: 41 });
        const a = await uploadMeasured(
          [nine, "--db-path", join(dir, "nine.db"), "--min-age", "0"],
          pg.url,
        );
        console.log(
          `6 x 9 MB stats.json: exit ${a.result.code}, peak RSS ${a.peakMb.toFixed(0)} MB ` +
            `(psql peak ${(a.measured.psqlPeakKb / 1024).toFixed(0)} MB), ` +
            `${(a.measured.wallMs / 1000).toFixed(1)} s`,
        );
        assert.equal(a.result.code, 0, describeRun(a.result));
        const aSummary = summaryOf(a.result);
        assert.equal(aSummary.failed, 0);
        assert.equal(aSummary.uploaded, 6 + small.units);
        await assertBigRows(pg, nineRows);
        assert.ok(a.peakMb < 600, `peak RSS ${a.peakMb.toFixed(0)} MB`);
        removeTree(nine);

        // Six just under the 16 MiB limit, one over it (a brace and then NUL bytes, not
        // JSON: refused by its size before it is read), and a few ordinary folders.
        const sixteen = join(dir, "sixteen");
        const sixteenRows = new Map<string, number>();
        const maxKeys = [1, 2, 3, 4, 5, 6].map((i) => `Max${i}`);
        const maxTrace = writeBigStats(
          maxKeys.map((k) => join(sixteen, k)),
          MAX_STATS_BYTES - 1024,
        );
        for (const key of maxKeys) sixteenRows.set(key, maxTrace);
        Deno.mkdirSync(join(sixteen, "TooBig"));
        const tooBig = join(sixteen, "TooBig", "stats.json");
        Deno.writeTextFileSync(tooBig, "{");
        Deno.truncateSync(tooBig, 17 * 1048576);
        const smaller = generateTree(sixteen, { folders: 4, seed: 42, prefix: "Small" });
        const b = await uploadMeasured(
          [sixteen, "--db-path", join(dir, "sixteen.db"), "--min-age", "0"],
          pg.url,
        );
        console.log(
          `6 x 16 MiB - 1 KiB stats.json (+ one of 17 MiB refused): exit ${b.result.code}, ` +
            `peak RSS ${b.peakMb.toFixed(0)} MB ` +
            `(psql peak ${(b.measured.psqlPeakKb / 1024).toFixed(0)} MB), ` +
            `${(b.measured.wallMs / 1000).toFixed(1)} s`,
        );
        assert.equal(b.result.code, 1, describeRun(b.result));
        const failed = jsonEvents(b.result).filter((e) => e.event === "folder_failed");
        assert.deepEqual(
          failed.map((e) => e.path),
          [join(sixteen, "TooBig")],
          describeRun(b.result),
        );
        const message = String(failed[0].error);
        console.log(`over the limit: ${message}`);
        assert.ok(message.includes(tooBig), message);
        assert.match(message, /17\.0 MiB, more than the 16 MiB/);
        const bSummary = summaryOf(b.result);
        assert.equal(bSummary.failed, 1);
        assert.equal(bSummary.uploaded, 6 + smaller.units);
        await assertBigRows(pg, sixteenRows);
        assert.equal(
          Number(await pg.psql("select count(*) from device_test where folder_key = 'TooBig'")),
          0,
        );
        assert.ok(b.peakMb < 600, `peak RSS ${b.peakMb.toFixed(0)} MB`);
      });
    } finally {
      await pg.close();
    }
  },
});

// 5. Quick upload: a folder's identity -------------------------------------------------

/** The row of `key`: its source path, content and batch. */
async function rowOf(
  pg: PgServer,
  key: string,
): Promise<{ source: string; results: unknown; batch: string; count: number }> {
  const out = await pg.psql(
    `select json_build_object('source', max(metadata->>'source_path'),
       'results', max(test_results::text), 'batch', max(upload_batch), 'count', count(*))
     from device_test where folder_key = ${`'${key.replaceAll("'", "''")}'`}`,
  );
  const row = JSON.parse(out);
  return { ...row, results: row.results === null ? null : JSON.parse(row.results) };
}

Deno.test({
  name: "quick: two folders of the same name never overwrite each other, in one run or two",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("adopt_quick_", async (dir) => {
        writeTree(join(dir, "D"), {
          "L2/Batch12/stats.json": { json: { result: "PASS", line: 2 } },
          "L3/Batch12/stats.json": { json: { result: "FAIL", line: 3 } },
          "Y/Batch12/stats.json": { json: { result: "PASS", line: "Y" } },
        });
        const noTracker = join(dir, "none.db");

        // (a) One run, both keyed Batch12: the second is refused, the first row stays.
        const first = await quick(
          ["D/L2/Batch12", "D/L3/Batch12", "--db-path", noTracker],
          pg.url,
          dir,
        );
        assert.equal(first.code, 1, describeRun(first));
        const summary = summaryOf(first);
        assert.equal(summary.uploaded, 1, describeRun(first));
        assert.equal(summary.inserted, 1);
        assert.equal(summary.updated, 0, "the second folder overwrote the first");
        assert.equal(summary.failed, 1);
        const failed = jsonEvents(first).filter((e) => e.event === "folder_failed");
        assert.deepEqual(failed.map((e) => e.path), [join(dir, "D/L3/Batch12")]);
        assert.match(String(failed[0].error), /Batch12/);
        console.log(`same name in one run: ${failed[0].error}`);
        let row = await rowOf(pg, "Batch12");
        assert.equal(row.count, 1);
        assert.equal(row.source, join(dir, "D/L2/Batch12"));
        assert.deepEqual(row.results, { result: "PASS", line: 2 });
        assert.ok(exists(join(dir, "D/L2/Batch12/success.json")));
        assert.ok(!exists(join(dir, "D/L3/Batch12/success.json")), "refused folder marked done");
        assert.ok(!exists(noTracker), "a tracking database was made");

        // (c) A later run with another folder of that name: refused as a conflict naming
        // the folder that holds the key; the row is unchanged.
        const later = await quick(["D/Y/Batch12", "--db-path", noTracker], pg.url, dir);
        assert.equal(later.code, 1, describeRun(later));
        const conflict = jsonEvents(later).filter((e) => e.event === "folder_failed");
        assert.equal(conflict.length, 1, describeRun(later));
        assert.ok(
          String(conflict[0].error).includes(join(dir, "D/L2/Batch12")),
          `the conflict names the holder: ${conflict[0].error}`,
        );
        console.log(`same name in a later run: ${conflict[0].error}`);
        const after = await rowOf(pg, "Batch12");
        assert.deepEqual(after, row, "the row changed");
        assert.ok(!exists(join(dir, "D/Y/Batch12/success.json")));
        assert.equal(summaryOf(later).failed, 1);

        // Quick again of the folder that holds the key: that is its own row, no conflict.
        const again = await quick(["D/L2/Batch12", "--db-path", noTracker], pg.url, dir);
        assert.equal(again.code, 0, describeRun(again));
        row = await rowOf(pg, "Batch12");
        assert.equal(row.source, join(dir, "D/L2/Batch12"));
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "quick: with the manager's tracker a folder keeps its tracked key; no second row",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("adopt_quick_tracked_", async (dir) => {
        const data = join(dir, "D");
        writeTree(data, {
          "Line2/Batch99/stats.json": { json: { result: "PASS" } },
          "Line2/Batch98/a.jpg": { bytes: 10 },
          "Line3/Batch99/stats.json": { json: { result: "" } },
        });
        const tracker = join(dir, "tracker.db");
        const first = await upload([data, "--db-path", tracker, "--min-age", "0"], pg.url);
        assert.equal(first.code, 0, describeRun(first));
        assert.equal(summaryOf(first).inserted, 3);

        // The folder changes, then is sent by quick upload with the same tracker.
        writeTree(data, { "Line2/Batch99/stats.json": { json: { result: "PASS", rerun: 1 } } });
        const q = await quick(["D/Line2/Batch99", "--db-path", tracker], pg.url, dir);
        assert.equal(q.code, 0, describeRun(q));
        const qs = summaryOf(q);
        assert.equal(qs.updated, 1, describeRun(q));
        assert.equal(qs.inserted, 0, "quick made a new row instead of updating the tracked one");
        assert.equal((await rowOf(pg, "Batch99")).count, 0, "a row keyed by the name alone");
        const row = await rowOf(pg, "Line2/Batch99");
        assert.equal(row.count, 1);
        assert.deepEqual(row.results, { result: "PASS", rerun: 1 });

        // The manager afterwards has nothing new to send.
        const next = await upload([data, "--db-path", tracker, "--min-age", "0"], pg.url);
        assert.equal(next.code, 0, describeRun(next));
        const ns = summaryOf(next);
        assert.equal(ns.uploaded, 0, describeRun(next));
        assert.equal(Number(await pg.psql("select count(*) from device_test")), 3);
        assert.equal((await rowOf(pg, "Line2/Batch99")).count, 1);
      });
    } finally {
      await pg.close();
    }
  },
});

// 3. A short statement_timeout ----------------------------------------------------------

/** The `--status --json` report's failure lists (retried and exhausted), as folder paths. */
function statusFailures(result: CliResult): { path: string; error: string }[] {
  const start = result.stdout.indexOf("{");
  const report = JSON.parse(result.stdout.slice(start)) as Record<string, unknown>;
  const lists = [report.recentFailures, report.exhausted].filter(Array.isArray).flat() as {
    folderPath: string;
    error: string;
  }[];
  return lists.map((f) => ({ path: f.folderPath, error: f.error }));
}

Deno.test({
  name: "statement_timeout 120ms: slow rows fail alone naming 57014 and the limit, the rest land",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("adopt_timeout_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 160, seed: 31, keys: true });
        const slow: string[] = [];
        for (let i = 1; i <= 5; i++) {
          slow.push(`Slow${i}`);
          writeTree(data, { [`Slow${i}/stats.json`]: { json: { result: "PASS", i } } });
        }
        await createTables(pg);
        // A row named Slow* takes 300 ms to insert: it never fits in 120 ms, alone or not;
        // every other row takes nothing.
        await pg.psql(
          `create role hurried login password 'hurried-pass';
           grant usage on schema public to hurried;
           grant select, insert, update on device_test, devices to hurried;
           create function slow_row() returns trigger language plpgsql as $$
           begin
             if new.folder_name like 'Slow%' then perform pg_sleep(0.3); end if;
             return new;
           end $$;
           create trigger slow_row before insert on device_test
             for each row execute function slow_row();
           alter role hurried set statement_timeout = '120ms'`,
        );
        const url = roleUrl(pg, "hurried", "hurried-pass");
        const started = performance.now();
        const result = await upload(
          [data, "--db-path", dbPath, "--min-age", "0", "--batch-size", "50", "--parallel", "2"],
          url,
          120_000,
        );
        const seconds = (performance.now() - started) / 1000;
        console.log(`statement_timeout 120ms: exit ${result.code} after ${seconds.toFixed(1)} s`);
        assert.equal(result.code, 1, describeRun(result));
        assert.ok(seconds < 90, `took ${seconds.toFixed(1)} s`);
        assert.doesNotMatch(result.stderr, /unreachable/i);
        const summary = summaryOf(result);
        assert.equal(summary.failed, 5, describeRun(result));
        assert.equal(summary.uploaded, tree.units);
        const failed = jsonEvents(result).filter((e) => e.event === "folder_failed");
        assert.deepEqual(failed.map((e) => String(e.path)).sort(), slow.map((s) => join(data, s)));
        for (const f of failed) {
          assert.match(String(f.error), /57014/, String(f.error));
          assert.match(String(f.error), /statement_timeout is 120ms/, String(f.error));
          assert.ok(String(f.error).includes(String(f.path).split("/").pop()!), String(f.error));
        }
        console.log(`a slow row: ${failed[0].error}`);
        const rows = await rowsByKey(pg);
        assert.equal(rows.size, tree.units);
        for (const key of tree.keys!) assert.ok(rows.has(key), `${key} missing`);
        for (const s of slow) {
          assert.ok(!rows.has(s), `${s} landed`);
          assert.ok(exists(join(data, s, "failed.json")), `${s}/failed.json`);
        }

        // --status lists them, in text and in JSON.
        const status = await runUploadCli(["--status", "--db-path", dbPath]);
        assert.equal(status.code, 0, describeRun(status));
        for (const s of slow) assert.ok(status.stdout.includes(s) || status.stderr.includes(s), s);
        assert.match(status.stdout + status.stderr, /57014/);
        const statusJson = await runUploadCli(["--status", "--json", "--db-path", dbPath]);
        assert.equal(statusJson.code, 0, describeRun(statusJson));
        const listed = statusFailures(statusJson);
        assert.deepEqual(listed.map((f) => f.path).sort(), slow.map((s) => join(data, s)));
        for (const f of listed) assert.match(f.error, /57014/);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "statement_timeout 30ms: no outage; a schema step it cancels is a named configuration error",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("adopt_timeout30_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const tree = generateTree(data, { folders: 150, seed: 32, keys: true });
        await createTables(pg);
        // Every row costs 2 ms: a batch of 50 cannot finish in 30 ms, a few rows can.
        await pg.psql(
          `create role rushed login password 'rushed-pass';
           grant usage on schema public to rushed;
           grant select, insert, update on device_test, devices to rushed;
           create function row_cost() returns trigger language plpgsql as $$
           begin perform pg_sleep(0.002); return new; end $$;
           create trigger row_cost before insert on device_test
             for each row execute function row_cost();
           alter role rushed set statement_timeout = '30ms'`,
        );
        const url = roleUrl(pg, "rushed", "rushed-pass");
        const args = [data, "--db-path", dbPath, "--min-age", "0", "--batch-size", "50"];
        const started = performance.now();
        const result = await upload(args, url, 120_000);
        const seconds = (performance.now() - started) / 1000;
        console.log(`statement_timeout 30ms: exit ${result.code} after ${seconds.toFixed(1)} s`);
        assert.notEqual(result.code, 3, describeRun(result));
        assert.doesNotMatch(result.stderr, /unreachable/i);
        const summary = summaryOf(result);
        const rows = await rowsByKey(pg);
        assert.equal(rows.size, Number(summary.uploaded), "uploaded count vs table");
        if (result.code === 2) {
          // The schema inspection (tens of ms of catalog reads) did not fit: the run stops
          // before any batch, as a configuration error that names the setting and its fix.
          assert.equal(summary.error_kind, "config", describeRun(result));
          assert.equal(summary.sqlstate, "57014", describeRun(result));
          assert.match(String(summary.error), /statement_timeout/);
          assert.match(String(summary.hint), /alter role .* set statement_timeout/);
          assert.equal(rows.size, 0);
          const state = trackerState(dbPath);
          assert.deepEqual(
            state.folders.filter((f) => f.status !== "pending").map((f) => f.path),
            [],
            "folders not sent were marked",
          );
          assert.ok(!exists(join(data, tree.keys![0], "failed.json")));
          assert.ok(!exists(join(data, tree.keys![0], "success.json")));
        } else {
          // The schema step fitted: every folder either landed or failed, and the counts say so.
          assert.equal(
            Number(summary.failed),
            tree.units - rows.size,
            `failed count vs folders missing from the table: ${describeRun(result)}`,
          );
          assert.equal(result.code, Number(summary.failed) > 0 ? 1 : 0, describeRun(result));
        }

        // With the limit raised as the hint says, the same tracker finishes the job.
        await pg.psql("alter role rushed set statement_timeout = '1s'");
        const rerun = await upload(args, url, 120_000);
        assert.equal(rerun.code, 0, describeRun(rerun));
        assert.equal((await rowsByKey(pg)).size, tree.units);
      });
    } finally {
      await pg.close();
    }
  },
});

// A role without TEMP on the database ----------------------------------------------------

Deno.test({
  name: "a role without TEMP on the database: batches go as statements, with one warning",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withDir("adopt_no_temp_", async (dir) => {
        await createTables(pg);
        await pg.psql(
          `create role notemp login password 'notemp-pass';
           revoke temporary on database uploads from public;
           grant usage on schema public to notemp;
           grant select, insert, update on device_test, devices, device_health to notemp;
           grant usage, select on all sequences in schema public to notemp;`,
        );
        const data = join(dir, "data");
        const tree = generateTree(data, { folders: 120, seed: 5 });
        const run = await upload(
          [data, "--db-path", join(dir, "tracker.db"), "--min-age", "0", "--no-markers"],
          roleUrl(pg, "notemp", "notemp-pass"),
        );
        assert.equal(run.code, 0, describeRun(run));
        const summary = summaryOf(run);
        assert.equal(summary.failed, 0, describeRun(run));
        assert.equal(summary.uploaded, tree.units);
        const warnings = jsonEvents(run).filter((e) => e.event === "warning");
        assert.equal(warnings.length, 1, describeRun(run));
        assert.match(String(warnings[0].message), /temporary tables.*42501/s);
        assert.equal(
          Number(await pg.psql("select count(*) from device_test")),
          tree.units,
        );

        // The owner's SQL of --print-schema grants TEMPORARY: the next run copies its rows.
        await pg.psql(printSchemaSql({ table: "device_test", role: "notemp" }));
        const again = await upload(
          [data, "--db-path", join(dir, "tracker2.db"), "--min-age", "0", "--no-markers"],
          roleUrl(pg, "notemp", "notemp-pass"),
        );
        assert.equal(again.code, 0, describeRun(again));
        assert.equal(summaryOf(again).uploaded, tree.units);
        assert.equal(jsonEvents(again).filter((e) => e.event === "warning").length, 0);
      });
    } finally {
      await pg.close();
    }
  },
});
