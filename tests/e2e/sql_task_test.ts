/**
 * `deno task sql`: psql on the resolved target, run as a user runs it. A real PostgreSQL
 * (URL in SUPABASE_DB_URL, password included) and the embedded database (started for the
 * length of the psql session, refused while another process serves it). The exit code is
 * psql's; the password never shows in any process's argv.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { startEmbedded } from "../../lib/target/embedded.ts";
import { parseSqlCommand } from "../../lib/cli/commands.ts";
import { type CliResult, describeRun, REPO_ROOT, runUploadCli } from "../../support/cli.ts";
import { hasPostgres, startPostgres, TEST_PASSWORD } from "../../support/postgres.ts";
import { removeTree } from "../../support/tree.ts";

const SQL = join(REPO_ROOT, "scripts", "sql.ts");

function sql(
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; stdin?: string } = {},
): Promise<CliResult> {
  return runUploadCli(args, { script: SQL, ...options });
}

/** psql run directly (password in its environment), for the exit code to compare with. */
async function psqlDirect(url: string, args: string[]): Promise<number> {
  const u = new URL(url);
  const password = decodeURIComponent(u.password);
  u.password = "";
  const out = await new Deno.Command("psql", {
    args: ["-d", u.toString(), ...args],
    env: { PGPASSWORD: password },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
  return out.code;
}

/** Every process's argv on this machine that contains `needle` (Linux /proc). */
function argvContaining(needle: string): string[] {
  const hits: string[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name) || Number(entry.name) === Deno.pid) continue;
    try {
      const argv = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`).split("\0").join(" ");
      if (argv.includes(needle)) hits.push(`${entry.name}: ${argv}`);
    } catch (_error) {
      // The process exited while we looked: it has no argv left to leak.
    }
  }
  return hits;
}

Deno.test({
  name: "sql: psql on a server URL; psql's exit code; the password never in argv",
  ignore: !hasPostgres(),
  async fn() {
    const pg = await startPostgres();
    try {
      const env = { SUPABASE_DB_URL: pg.url };
      const ok = await sql(["-XAt", "-c", "select 40 + 2"], { env });
      assert.equal(ok.code, 0, describeRun(ok));
      assert.equal(ok.stdout.trim(), "42");

      // After '--' everything goes to psql, even this program's own flag names.
      const passed = await sql(["--", "-XAt", "-c", "select 'after dashes'"], { env });
      assert.equal(passed.stdout.trim(), "after dashes", describeRun(passed));

      // Statements on stdin, as in an interactive session.
      const piped = await sql(["-XAt"], { env, stdin: "select 7 * 6;\n\\q\n" });
      assert.equal(piped.code, 0, describeRun(piped));
      assert.equal(piped.stdout.trim(), "42");

      for (
        const args of [
          ["-X", "-c", "select 1/0"],
          ["-X", "-v", "ON_ERROR_STOP=1", "-f", "/nonexistent/script.sql"],
          ["-X", "-c", "select 1"],
        ]
      ) {
        const result = await sql(args, { env });
        assert.equal(result.code, await psqlDirect(pg.url, args), `${args.join(" ")}`);
      }
      assert.equal((await sql(["-X", "-c", "select 1/0"], { env })).code, 1);

      // --db-url=URL without a password, the password in PGPASSWORD.
      const u = new URL(pg.url);
      u.password = "";
      const flagged = await sql([`--db-url=${u}`, "-XAt", "-c", "select current_user"], {
        env: { PGPASSWORD: TEST_PASSWORD },
      });
      assert.equal(flagged.code, 0, describeRun(flagged));
      assert.equal(flagged.stdout.trim(), "tester");

      // While a session runs, no process shows the password in its argv.
      const running = sql(["-XAt", "-c", "select pg_sleep(2)"], { env });
      const seen: string[] = [];
      let psqlSeen = false;
      const until = Date.now() + 1500;
      while (Date.now() < until) {
        seen.push(...argvContaining(TEST_PASSWORD));
        psqlSeen ||= argvContaining("select pg_sleep(2)").some((p) => /\bpsql /.test(p));
        await new Promise((r) => setTimeout(r, 100));
      }
      const done = await running;
      assert.equal(done.code, 0, describeRun(done));
      assert.ok(psqlSeen, "the psql process was looked at while it ran");
      assert.deepEqual(seen, []);
      assert.ok(!done.stdout.includes(TEST_PASSWORD) && !done.stderr.includes(TEST_PASSWORD));
    } finally {
      await pg.close();
    }
  },
});

Deno.test("sql: the embedded database, started for the session, refused while in use", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "sql_task_test_" });
  try {
    // Nothing uploaded yet: a clear refusal, and no empty database created.
    const none = await sql(["-XAt", "-c", "select 1"], { cwd: dir });
    assert.equal(none.code, 2, describeRun(none));
    assert.match(none.stderr, /No embedded database/);
    assert.throws(() => Deno.statSync(join(dir, "upload_tracker.pgdata")), Deno.errors.NotFound);

    const server = await startEmbedded(join(dir, "upload_tracker.pgdata"));
    try {
      // Another process serves it: refused (exit 2), not opened twice.
      const busy = await sql(["-XAt", "-c", "select 1"], { cwd: dir });
      assert.equal(busy.code, 2, describeRun(busy));
      assert.match(busy.stderr, /in use/);
    } finally {
      await server.stop();
    }

    const ok = await sql(["-XAt", "-c", "create table t (n int); insert into t values (5)"], {
      cwd: dir,
    });
    assert.equal(ok.code, 0, describeRun(ok));
    const read = await sql(["-XAt", "-c", "select n * 2 from t"], { cwd: dir });
    assert.equal(read.stdout.trim(), "10", describeRun(read));
    const error = await sql(["-X", "-c", "select nope"], { cwd: dir });
    assert.equal(error.code, 1, describeRun(error));

    // The server lived only as long as psql: the folder is free again.
    const again = await startEmbedded(join(dir, "upload_tracker.pgdata"));
    await again.stop();

    // --db-path names another tracking database, and so another embedded folder.
    const other = await sql(["--db-path", join(dir, "other.db"), "-XAt", "-c", "select 1"]);
    assert.equal(other.code, 2, describeRun(other));
    assert.match(other.stderr, /other\.pgdata/);
  } finally {
    removeTree(dir);
  }
});

Deno.test("sql: Ctrl-C during a statement on the embedded database does not hang psql", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "sql_task_test_" });
  try {
    const server = await startEmbedded(join(dir, "upload_tracker.pgdata"));
    await server.stop();
    const env: Record<string, string> = { NO_COLOR: "1" };
    for (const name of ["PATH", "HOME", "DENO_DIR", "TMPDIR"]) {
      const value = Deno.env.get(name);
      if (value !== undefined) env[name] = value;
    }
    const statement = "select pg_sleep(1.5), 'cancel test'";
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        "--config",
        join(REPO_ROOT, "deno.json"),
        SQL,
        "-XAt",
        "-c",
        statement,
      ],
      cwd: dir,
      env,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = child.output();
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    try {
      // Wait for psql to run the statement, then press "Ctrl-C": the terminal sends SIGINT
      // to the whole foreground group, deno and psql alike.
      let psqlPid: number | undefined;
      for (let i = 0; i < 200 && psqlPid === undefined; i++) {
        await new Promise((r) => setTimeout(r, 50));
        const hit = argvContaining("cancel test").find((p) => /\bpsql /.test(p));
        if (hit) psqlPid = Number(hit.split(":")[0]);
      }
      assert.ok(psqlPid, "psql started");
      await new Promise((r) => setTimeout(r, 300));
      Deno.kill(psqlPid, "SIGINT");
      child.kill("SIGINT");
      const out = await output;
      const stderr = new TextDecoder().decode(out.stderr);
      assert.notEqual(out.signal, "SIGKILL", `psql hung after the cancel request:\n${stderr}`);
      // PGlite cannot cancel a running statement: it finishes, and psql ends by itself with
      // its own exit code (1, as after a cancelled statement on a server). On a busy machine
      // the signal may reach psql before it has set up its handler (still connecting): then
      // it dies of it and the task passes that on as 130. Either way nothing hangs.
      assert.ok(
        out.code === 0 || out.code === 1 || out.code === 130,
        `exit ${out.code}: ${stderr}`,
      );
    } finally {
      clearTimeout(timer);
    }
  } finally {
    removeTree(dir);
  }
});

Deno.test("sql: argument parsing keeps psql's arguments as they are", () => {
  const cmd = parseSqlCommand(
    [
      "-h",
      "host",
      "--db-path",
      "a.db",
      "-c",
      "select 1",
      "--db-url=postgresql://x/y",
      "--",
      "--help",
    ],
    {},
  );
  assert.deepEqual(cmd.psqlArgs, ["-h", "host", "-c", "select 1", "--help"]);
  assert.equal(cmd.dbPath, join(Deno.cwd(), "a.db"));
  assert.equal(cmd.dbUrl, "postgresql://x/y");
  assert.equal(cmd.help, false);
  assert.equal(parseSqlCommand(["--help"], {}).help, true);
  assert.equal(
    parseSqlCommand([], { UPLOAD_DB_PATH: "env.db" }).dbPath,
    join(Deno.cwd(), "env.db"),
  );
  assert.equal(parseSqlCommand([], { INIT_CWD: "/srv/lab" }).dbPath, "/srv/lab/upload_tracker.db");
  assert.throws(() => parseSqlCommand(["--db-url"], {}), /Missing value for --db-url/);
});
