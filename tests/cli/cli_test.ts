/**
 * The upload command as a user meets it: flag parsing (pure), usage and configuration
 * errors (exit 2, one `Error:` line and one `Hint:` line), an unreachable server (exit 3,
 * folders left pending), `--status` and `--status --json` over a tracker built by a real
 * run, and the database password kept out of every output, the tracker and the markers.
 * The URL travels in SUPABASE_DB_URL unless a test is about `--db-url` itself.
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { DEFAULT_CONFIG } from "../../config.ts";
import { parseUploadCommand } from "../../lib/cli/commands.ts";
import { flagsOf } from "../../lib/cli/flags.ts";
import { SIGNAL_COPIES_MS, StopRequests } from "../../lib/cli/signals.ts";
import { uploadHelp } from "../../lib/cli/help.ts";
import { UploadError } from "../../lib/core/errors.ts";
import { type CliResult, describeRun, runUploadCli, summaryOf } from "../../support/cli.ts";
import { hasPostgres, startPostgres, TEST_PASSWORD } from "../../support/postgres.ts";
import { generateTree, removeTree, tempDir, writeTree } from "../../support/tree.ts";

const NO_SERVER = !hasPostgres();

Deno.test("StopRequests: copies of one signal are one request; a later one quits", () => {
  // Ctrl-C in a terminal under `deno task`: the group's SIGINT and the task's forward.
  const ctrlC = new StopRequests();
  assert.equal(ctrlC.take("SIGINT", 10_000), "interrupt");
  assert.equal(ctrlC.take("SIGINT", 10_001), "same");
  assert.equal(ctrlC.take("SIGINT", 10_000 + SIGNAL_COPIES_MS - 1), "same");
  // A second press, later: quit at once.
  assert.equal(ctrlC.take("SIGINT", 10_000 + SIGNAL_COPIES_MS), "quit");
  // systemd stopping `deno task upload --watch`: SIGTERM to the whole group, twice over.
  const stop = new StopRequests({ finishOnTerm: true });
  assert.equal(stop.take("SIGTERM", 0), "finish");
  assert.equal(stop.take("SIGTERM", 2), "same");
  assert.equal(stop.take("SIGINT", 5_000), "quit");
  // Without --watch SIGTERM interrupts like Ctrl-C.
  assert.equal(new StopRequests().take("SIGTERM", 0), "interrupt");
});

function usageError(fn: () => unknown): UploadError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof UploadError, String(error));
    return error;
  }
  assert.fail("expected a usage error");
}

/** Asserts exit 2 with exactly one `Error:` line and one `Hint:` line on stderr. */
function assertUsageExit(run: CliResult, what: string): void {
  assert.equal(run.code, 2, `${what}: ${describeRun(run)}`);
  const lines = run.stderr.split("\n").filter((l) => l.trim() !== "");
  const errors = lines.filter((l) => l.startsWith("Error: "));
  const hints = lines.filter((l) => l.startsWith("Hint: "));
  assert.equal(errors.length, 1, `${what}: ${run.stderr}`);
  assert.equal(hints.length, 1, `${what}: ${run.stderr}`);
  assert.ok(!run.stderr.includes("    at "), `${what}: a stack trace was printed\n${run.stderr}`);
}

// ---------------------------------------------------------------------------------------
// Flag parsing (pure)

Deno.test("parseUploadCommand: defaults", () => {
  const cmd = parseUploadCommand(["data"], {});
  assert.equal(cmd.basePath, join(Deno.cwd(), "data"));
  assert.equal(cmd.markers, true);
  assert.equal(cmd.json, false);
  assert.equal(cmd.scanOnly || cmd.status || cmd.dryRun || cmd.help, false);
  assert.equal(cmd.dbUrl, undefined);
  assert.equal(cmd.config.batchSize, DEFAULT_CONFIG.batchSize);
  assert.equal(cmd.config.maxRetries, DEFAULT_CONFIG.maxRetries);
  assert.equal(cmd.config.dbPath, join(Deno.cwd(), DEFAULT_CONFIG.dbPath));
  assert.equal(cmd.watch, false);
  assert.equal(cmd.movedFrom, null);
  assert.equal(cmd.config.connectTimeoutSeconds, DEFAULT_CONFIG.connectTimeoutSeconds);
});

Deno.test("parseUploadCommand: --rebuild-tracker is --verify on a new tracker", () => {
  for (const argv of [["data", "--rebuild-tracker"], ["data", "--verify", "--rebuild-tracker"]]) {
    const cmd = parseUploadCommand(argv, {});
    assert.equal(cmd.rebuildTracker, true);
    assert.equal(cmd.verify, true);
  }
  assert.equal(parseUploadCommand(["data"], {}).rebuildTracker, false);
  for (const other of ["--watch", "--dry-run", "--scan-only", "--status"]) {
    const error = usageError(() => parseUploadCommand(["data", "--rebuild-tracker", other], {}));
    assert.equal(error.kind, "usage");
    assert.match(error.message, /--rebuild-tracker/);
  }
});

Deno.test("parseUploadCommand: --objects-to and its alias --images-to; --images-as, --url-form, --ready-when, --ready-timeout", () => {
  const a = parseUploadCommand(["data", "--objects-to", "s3://lab/raw"], {});
  const b = parseUploadCommand(["data", "--images-to", "s3://lab/raw"], {});
  const c = parseUploadCommand(["data"], { UPLOAD_IMAGES_TO: "s3://lab/raw" });
  assert.deepEqual([a.imagesTo, b.imagesTo, c.imagesTo], Array(3).fill("s3://lab/raw"));
  assert.equal(
    parseUploadCommand(["data", "--objects-to", "s3://l", "--images-to", "s3://l"], {}).imagesTo,
    "s3://l",
    "both names, one value",
  );
  const both = usageError(() =>
    parseUploadCommand(["data", "--objects-to", "s3://a", "--images-to", "s3://b"], {})
  );
  assert.match(both.message, /--objects-to and --images-to give different values/);
  assert.match(
    usageError(() => parseUploadCommand(["data", "--images-to", "x"], {})).message,
    /Invalid --objects-to "x"/,
  );

  const urls = parseUploadCommand(
    ["data", "--objects-to", "s3://l", "--images-as", "urls", "--url-form", "key"],
    {},
  );
  assert.deepEqual([urls.config.imagesAs, urls.config.urlForm], ["urls", "key"]);
  assert.deepEqual(
    [a.config.imagesAs, a.config.urlForm, a.config.readyWhen],
    ["names", "public", ""],
  );
  assert.equal(
    parseUploadCommand(["data", "--images-as", "urls"], { UPLOAD_IMAGES_TO: "s3://l" }).config
      .imagesAs,
    "urls",
  );
  assert.match(
    usageError(() => parseUploadCommand(["data", "--images-as", "urls"], {})).message,
    /--images-as urls needs --objects-to/,
  );
  const bad = usageError(() => parseUploadCommand(["data", "--images-as", "links"], {}));
  assert.match(bad.message, /Invalid value for --images-as: "links"/);
  assert.match(bad.hint ?? "", /names or urls/);
  assert.match(
    usageError(() => parseUploadCommand(["data", "--url-form", "signed"], {})).message,
    /--url-form/,
  );

  const ready = parseUploadCommand(["data", "--ready-when", "*.pdf", "--ready-timeout", "90"], {});
  assert.deepEqual([ready.config.readyWhen, ready.config.readyTimeoutSeconds], ["*.pdf", 90]);
  assert.match(
    usageError(() => parseUploadCommand(["data", "--ready-timeout", "9"], {})).message,
    /--ready-timeout needs --ready-when/,
  );
  assert.equal(
    parseUploadCommand(["data", "--ready-timeout", "9"], {}, {
      ...DEFAULT_CONFIG,
      readyWhen: "*.pdf",
    })
      .config.readyTimeoutSeconds,
    9,
    "a readiness rule from config.ts is enough",
  );
  assert.match(
    usageError(() => parseUploadCommand(["data", "--ready-when", "x/*.pdf"], {})).message,
    /--ready-when "x\/\*\.pdf": it matches file names/,
  );
});

Deno.test("parseUploadCommand: relative paths are the caller's (INIT_CWD under deno task)", () => {
  const env = { INIT_CWD: "/home/lab/site" };
  const cmd = parseUploadCommand(["data", "--db-path", "t.db", "--moved-from", "../old"], env);
  assert.equal(cmd.basePath, "/home/lab/site/data");
  assert.equal(cmd.config.dbPath, "/home/lab/site/t.db");
  assert.equal(cmd.movedFrom, "/home/lab/old");
  assert.equal(parseUploadCommand(["."], env).basePath, "/home/lab/site");
  assert.equal(parseUploadCommand(["/abs"], env).basePath, "/abs");
  assert.equal(
    parseUploadCommand(["d"], { ...env, UPLOAD_DB_PATH: "x.db" }).config.dbPath,
    "/home/lab/site/x.db",
  );
});

Deno.test("parseUploadCommand: every flag lands in the settings", () => {
  const cmd = parseUploadCommand([
    "my data/",
    "--batch-size",
    "50",
    "--max-retries",
    "0",
    "--db-path",
    "/tmp/t.db",
    "--db-url",
    "postgresql://h/db",
    "--parallel",
    "3",
    "--min-age",
    "0.5",
    "--give-up-after",
    "2",
    "--batch-delay",
    "1.5",
    "--connect-timeout",
    "4",
    "--no-markers",
    "--json",
    "-q",
  ], {});
  assert.equal(cmd.basePath, join(Deno.cwd(), "my data"));
  assert.equal(cmd.config.connectTimeoutSeconds, 4);
  assert.equal(cmd.config.batchSize, 50);
  assert.equal(cmd.config.maxRetries, 0);
  assert.equal(cmd.config.dbPath, "/tmp/t.db");
  assert.equal(cmd.dbUrl, "postgresql://h/db");
  assert.equal(cmd.config.parallel, 3);
  assert.equal(cmd.config.minAgeSeconds, 0.5);
  assert.equal(cmd.config.giveUpAfterSeconds, 2);
  assert.equal(cmd.config.batchDelaySeconds, 1.5);
  assert.equal(cmd.markers, false);
  assert.equal(cmd.json, true);
  assert.equal(cmd.quiet, true);
});

Deno.test("parseUploadCommand: flag over environment over config.ts", () => {
  const env = { BATCH_SIZE: "70", MAX_RETRIES: "9", UPLOAD_DB_PATH: "env.db" };
  const fromEnv = parseUploadCommand(["d"], env);
  assert.equal(fromEnv.config.batchSize, 70);
  assert.equal(fromEnv.config.maxRetries, 9);
  assert.equal(fromEnv.config.dbPath, join(Deno.cwd(), "env.db"));
  const fromFlag = parseUploadCommand(["d", "--batch-size", "5", "--db-path", "flag.db"], env);
  assert.equal(fromFlag.config.batchSize, 5);
  assert.equal(fromFlag.config.dbPath, join(Deno.cwd(), "flag.db"));
  assert.equal(fromFlag.config.maxRetries, 9);
  // The defaults object itself is never changed.
  assert.equal(DEFAULT_CONFIG.batchSize, 500);
});

Deno.test("parseUploadCommand: usage errors carry a one-line hint", () => {
  const cases: string[][] = [
    ["d", "--bogus"],
    [],
    ["a", "b"],
    ["d", "--batch-size", "0"],
    ["d", "--batch-size", "1.5"],
    ["d", "--batch-size", "abc"],
    ["d", "--batch-size", ""],
    ["d", "--parallel", "65"],
    ["d", "--max-retries", "-1"],
    ["d", "--min-age", "-1"],
    ["d", "--give-up-after", "soon"],
    ["d", "--db-url", ""],
    ["d", "--db-path", ""],
    ["d", "--status", "--scan-only"],
    ["d", "--scan-only", "--dry-run"],
    ["d", "--batch-size"],
    [""],
    ["  "],
    ["d", "--watch", "--dry-run"],
    ["d", "--rescan-every", "60"],
    ["d", "--watch", "--rescan-every", "0"],
    ["d", "--moved-from", ""],
    ["d", "--connect-timeout", "-2"],
  ];
  for (const argv of cases) {
    const error = usageError(() => parseUploadCommand(argv, {}));
    assert.equal(error.kind, "usage", argv.join(" "));
    assert.ok(error.hint && !error.hint.includes("\n"), `${argv.join(" ")}: ${error.hint}`);
    assert.ok(!error.message.includes("\n"), argv.join(" "));
  }
});

Deno.test("parseUploadCommand: --status and --help need no base path", () => {
  assert.equal(parseUploadCommand(["--status"], {}).status, true);
  assert.equal(parseUploadCommand(["--help"], {}).help, true);
  assert.equal(parseUploadCommand(["-h", "--scan-only", "--dry-run"], {}).help, true);
});

Deno.test("parseUploadCommand: a bad environment variable is a configuration error", () => {
  for (const env of [{ BATCH_SIZE: "lots" }, { DEVICE_ID: "not-a-uuid" }]) {
    const error = usageError(() => parseUploadCommand(["d"], env));
    assert.equal(error.kind, "config");
    assert.ok(error.hint);
  }
});

Deno.test("uploadHelp documents every flag and the exit codes", () => {
  const help = uploadHelp();
  for (const flag of [...flagsOf("upload").map((f) => `--${f.name}`), "SUPABASE_DB_URL"]) {
    assert.ok(help.includes(flag), flag);
  }
  assert.match(help, /0 all done/);
  assert.match(help, /3 target unreachable/);
});

// ---------------------------------------------------------------------------------------
// The CLI as a subprocess

Deno.test("CLI: --help exits 0", async () => {
  const run = await runUploadCli(["--help"]);
  assert.equal(run.code, 0, describeRun(run));
  assert.match(run.stdout, /Usage: deno task upload/);
});

Deno.test("CLI: usage errors exit 2 with one Error line and one Hint line", async () => {
  using dir = tempDir();
  const cases: string[][] = [
    ["--bogus", "x"],
    [],
    ["x", "--batch-size", "0"],
    ["x", "--status", "--scan-only"],
    [join(dir.path, "does-not-exist")],
    ["--status", "--db-path", join(dir.path, "missing.db")],
  ];
  for (const args of cases) {
    const run = await runUploadCli(args, { cwd: dir.path });
    assertUsageExit(run, args.join(" "));
  }
});

Deno.test("CLI: a bad database URL exits 2 and never echoes the password", async () => {
  using dir = tempDir();
  writeTree(dir.path, { "data/B1/stats.json": { json: { result: "PASS" } } });
  const urls = [
    "mysql://user:hunter22pw@db.example.com/db",
    "postgresql://user:hunter22pw/x@db.example.com/db",
    "postgresql://user:100%hunter22pw@db.example.com/db",
    "hunter22pw",
  ];
  for (const url of urls) {
    const run = await runUploadCli([join(dir.path, "data"), "--db-path", join(dir.path, "t.db")], {
      env: { SUPABASE_DB_URL: url },
      cwd: dir.path,
    });
    assertUsageExit(run, url);
    assert.ok(!(run.stdout + run.stderr).includes("hunter22pw"), `${url}\n${describeRun(run)}`);
  }
});

/** Every file under `root` (markers, tracker, WAL) that holds `needle`, as relative paths. */
function filesContaining(root: string, needle: string): string[] {
  const found: string[] = [];
  const bytes = new TextEncoder().encode(needle);
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory) walk(path);
      else if (e.isFile && contains(Deno.readFileSync(path), bytes)) found.push(path);
    }
  };
  walk(root);
  return found;
}

function contains(haystack: Uint8Array, needle: Uint8Array): boolean {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test({
  name: "CLI: a wrong password exits 2 at once (not retried as unreachable), folders pending",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    using dir = tempDir();
    try {
      generateTree(join(dir.path, "data"), { folders: 12 });
      const db = join(dir.path, "t.db");
      const wrong = "wrong-password-77";
      const url = pg.url.replace(TEST_PASSWORD, wrong);
      const started = Date.now();
      const run = await runUploadCli(
        [join(dir.path, "data"), "--db-path", db, "--give-up-after", "120"],
        { env: { SUPABASE_DB_URL: url }, cwd: dir.path },
      );
      assert.equal(run.code, 2, describeRun(run));
      assert.ok(Date.now() - started < 60_000, "an authentication failure was retried");
      assert.match(run.stderr, /password authentication failed/);
      assert.ok(!(run.stdout + run.stderr).includes(wrong), describeRun(run));
      assert.deepEqual(filesContaining(dir.path, wrong), []);
      const sqlite = new DatabaseSync(db, { readOnly: true });
      try {
        const row = sqlite.prepare(
          "SELECT count(*) AS n FROM folder_status WHERE upload_status <> 'pending'",
        ).get() as { n: number };
        assert.equal(Number(row.n), 0);
      } finally {
        sqlite.close();
      }
    } finally {
      await pg.close();
    }
  },
});

Deno.test("CLI: an unreachable server exits 3 and leaves the folders pending", async () => {
  using dir = tempDir();
  generateTree(join(dir.path, "data"), { folders: 30 });
  const db = join(dir.path, "t.db");
  const secret = "unreachable-secret-42";
  const url = `postgresql://tester:${secret}@127.0.0.1:${freePort()}/uploads`;
  const started = Date.now();
  const run = await runUploadCli(
    [join(dir.path, "data"), "--db-path", db, "--give-up-after", "2", "--json"],
    { env: { SUPABASE_DB_URL: url }, cwd: dir.path },
  );
  assert.equal(run.code, 3, describeRun(run));
  assert.ok(Date.now() - started < 60_000, "gave up too late");
  assert.equal(summaryOf(run).uploaded, 0);
  assert.match(run.stderr, /unreachable/i);
  const sqlite = new DatabaseSync(db, { readOnly: true });
  try {
    const rows = sqlite.prepare(
      "SELECT upload_status AS s, count(*) AS n FROM folder_status GROUP BY 1",
    ).all() as { s: string; n: number }[];
    assert.deepEqual(rows.map((r) => [r.s, Number(r.n)]), [["pending", 27]]);
  } finally {
    sqlite.close();
  }
  assert.ok(!(run.stdout + run.stderr).includes(secret), describeRun(run));
  assert.deepEqual(filesContaining(dir.path, secret), []);
});

Deno.test({
  name: "CLI: the password is nowhere in output, tracker or markers; --status reports the run",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    const dir = Deno.makeTempDirSync({ prefix: "cli_test_" });
    try {
      const data = join(dir, "data");
      const db = join(dir, "t.db");
      generateTree(data, { folders: 60, nested: true, perLine: 20 });
      writeTree(data, {
        "Broken/stats.json": { text: "{" },
        "Broken/a.jpg": { bytes: 3 },
      });
      const env = { SUPABASE_DB_URL: pg.url };
      const run = await runUploadCli([data, "--db-path", db, "--json"], { env, cwd: dir });
      assert.equal(run.code, 1, describeRun(run));
      const summary = summaryOf(run);
      assert.equal(summary.uploaded, 54);
      assert.equal(summary.failed, 1);

      await t.step("no password anywhere", async () => {
        // The same run once more with --db-url (a warning, still no password printed).
        Deno.writeTextFileSync(join(data, "Broken", "stats.json"), '{"result": "PASS"}');
        const viaFlag = await runUploadCli(
          [data, "--db-path", db, "--db-url", pg.url, "--min-age", "0"],
          { cwd: dir },
        );
        assert.equal(viaFlag.code, 0, describeRun(viaFlag));
        assert.match(viaFlag.stderr, /process list/);
        for (const r of [run, viaFlag]) {
          assert.ok(!(r.stdout + r.stderr).includes(TEST_PASSWORD), describeRun(r));
        }
        assert.deepEqual(filesContaining(dir, TEST_PASSWORD), []);
        // The server saw the uploader's sessions under its application name, which proves
        // the run reached it with the password that now appears nowhere.
        assert.equal((await pg.psql("select count(*) from device_test")).trim(), "55");
        // Put the broken file back for the status steps.
        Deno.writeTextFileSync(join(data, "Broken", "stats.json"), "{");
        const again = await runUploadCli([data, "--db-path", db, "--min-age", "0"], {
          env,
          cwd: dir,
        });
        assert.equal(again.code, 1, describeRun(again));
      });

      await t.step("--status prints the totals, batches and failures", async () => {
        const status = await runUploadCli(["--status", "--db-path", db], { cwd: dir });
        assert.equal(status.code, 0, describeRun(status));
        assert.match(status.stdout, /Total folders tracked: 55/);
        assert.match(status.stdout, /success: 54/);
        assert.match(status.stdout, /failed: 1/);
        assert.match(status.stdout, /Recent batches:\n {2}batch_/);
        assert.ok(status.stdout.includes(join(data, "Broken")), status.stdout);
        assert.ok(!status.stdout.includes(TEST_PASSWORD));
      });

      await t.step("--status --json is one JSON object with the same numbers", async () => {
        const status = await runUploadCli(["--status", "--db-path", db, "--json"], { cwd: dir });
        assert.equal(status.code, 0, describeRun(status));
        const lines = status.stdout.trim().split("\n");
        assert.equal(lines.length, 1, status.stdout);
        const report = JSON.parse(lines[0]);
        assert.equal(report.total, 55);
        assert.deepEqual(report.byStatus, { failed: 1, success: 54 });
        assert.equal(report.missing, 0);
        assert.ok(report.recentBatches.length >= 1);
        const first = report.recentBatches.at(-1);
        assert.equal(typeof first.durationSeconds, "number");
        assert.equal(report.recentFailures.length, 1);
        assert.equal(report.recentFailures[0].folderPath, join(data, "Broken"));
        assert.match(report.recentFailures[0].error, /stats\.json/);
        assert.equal(report.lastRun.mode, "upload");
      });

      await t.step("--status counts folders gone from disk", async () => {
        removeTree(join(data, "Line1"));
        const scan = await runUploadCli([data, "--db-path", db, "--scan-only"], { cwd: dir });
        assert.equal(scan.code, 0, describeRun(scan)); // a scan uploads nothing, so fails nothing
        const status = await runUploadCli(["--status", "--db-path", db, "--json"], { cwd: dir });
        const report = JSON.parse(status.stdout);
        assert.equal(report.missing, 18);
      });
    } finally {
      try {
        await pg.close();
      } finally {
        removeTree(dir);
      }
    }
  },
});
