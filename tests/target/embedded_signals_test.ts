/**
 * The embedded database never blocks the main thread, and a start can be abandoned at any
 * moment: timers keep firing while a new database is created (PGlite runs on a worker);
 * an abort during the start rejects within a second with kind `interrupted` and leaves no
 * lock, no socket directory and no half-made database folder; an abort while an existing
 * database opens leaves it usable; `stop()` twice is harmless and `stop({ force: true })`
 * keeps what was acknowledged. At the command line, Ctrl-C twice while the embedded
 * database is being created ends the uploader within a second with exit code 130.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { UploadError } from "../../lib/core/errors.ts";
import type { PsqlConnection } from "../../lib/sink/postgres/psql.ts";
import { type EmbeddedServer, startEmbedded } from "../../lib/target/embedded.ts";
import { EmbeddedWorker, WorkerEnded, WorkerFailed } from "../../lib/target/embedded_thread.ts";
import { REPO_ROOT } from "../../support/cli.ts";
import { generateTree } from "../../support/tree.ts";

const DECODER = new TextDecoder();

/** Runs `fn` with a fresh temp directory that is removed afterwards, whatever happens. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "embedded_signals_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `psql -XAt -c sql`, stopping on error; returns stdout, throws with stderr on failure. */
async function psql(connection: PsqlConnection, sql: string): Promise<string> {
  const output = await new Deno.Command("psql", {
    args: ["-XAt", "-v", "ON_ERROR_STOP=1", ...connection.args, "-c", sql],
    env: connection.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (output.code !== 0) {
    throw new Error(`psql exited with ${output.code}: ${DECODER.decode(output.stderr)}`);
  }
  return DECODER.decode(output.stdout).trim();
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Waits until the lock file beside `dataDir` names its holder (written once the lock is
 * taken and the socket directory made, before PGlite starts); returns that socket dir.
 */
async function waitForLockRecord(dataDir: string, timeoutMs = 30_000): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    try {
      const text = await Deno.readTextFile(`${dataDir}.lock`);
      if (text.trim() !== "") return JSON.parse(text).socketDir;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    await delay(5);
  }
  throw new Error(`No lock record for ${dataDir} within ${timeoutMs} ms`);
}

/**
 * Whether the folder's lock is free within 2 s. Test files share one process under
 * `--parallel`, and a child another file is starting holds a copy of each of this
 * process's descriptors until it runs its program (the lock file's too, for a moment).
 */
async function lockFreeSoon(dataDir: string): Promise<boolean> {
  const deadline = performance.now() + 2_000;
  while (!lockIsFree(dataDir)) {
    if (performance.now() > deadline) return false;
    await delay(10);
  }
  return true;
}

/** Whether this process can take the folder's lock (nobody holds it); releases it again. */
function lockIsFree(dataDir: string): boolean {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(`${dataDir}.lock`, { read: true, write: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return true; // never taken
    throw error;
  }
  try {
    const free = file.tryLockSync(true);
    if (free) file.unlockSync();
    return free;
  } finally {
    file.close();
  }
}

/** What an abandoned start ended with: its error (or the server, when it won the race). */
interface AbortOutcome {
  error?: unknown;
  server?: EmbeddedServer;
  /** From the abort to the settled start. */
  settleMs: number;
  socketDir: string;
}

/** Starts `dataDir` and aborts `afterMs` after the lock record appears. */
async function abortedStart(dataDir: string, afterMs: number): Promise<AbortOutcome> {
  const controller = new AbortController();
  const start = startEmbedded(dataDir, { signal: controller.signal });
  // Observed before the abort so a rejection is never unhandled.
  const settled = start.then(
    (server) => ({ server }),
    (error) => ({ error }),
  );
  // A start that ends before it records its lock (it failed) says why, not a timeout.
  const early = settled.then((outcome) => {
    throw new Error(
      `The start ended before its lock record appeared: ${
        "error" in outcome ? outcome.error : "it succeeded"
      }`,
    );
  });
  early.catch(() => {});
  const socketDir = await Promise.race([waitForLockRecord(dataDir), early]);
  await delay(afterMs);
  const abortedAt = performance.now();
  controller.abort();
  const outcome = await settled;
  return { ...outcome, settleMs: performance.now() - abortedAt, socketDir };
}

Deno.test("embedded signals: timers on the main thread keep firing while a database is created", async () => {
  await withTempDir(async (tmp) => {
    const gaps: number[] = [];
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      gaps.push(now - last);
      last = now;
    }, 50);
    let server: EmbeddedServer;
    const started = performance.now();
    try {
      server = await startEmbedded(`${tmp}/db`);
    } finally {
      clearInterval(timer);
    }
    const duration = performance.now() - started;
    try {
      gaps.push(performance.now() - last);
      // Were the creation on the main thread, one gap would last the whole creation, and so
      // it did while the template's unpacking never gave the event loop a turn. The bound
      // is half the start (at least 1 s): a machine busy with other tests stretches the
      // creation and the gaps alike.
      const worst = Math.max(...gaps);
      const bound = Math.max(1000, duration * 0.5);
      assert.ok(
        worst < bound,
        `the main thread stalled for ${Math.round(worst)} ms of a ${Math.round(duration)} ms start`,
      );
      assert.ok(
        gaps.length >= duration / 50 / 4,
        `${gaps.length} ticks in ${Math.round(duration)} ms`,
      );
      assert.equal(await psql(server.connection, "select 1"), "1");
    } finally {
      await server.stop();
    }
  });
});

Deno.test("embedded signals: an abort while a database is created leaves nothing; the next start creates it", async () => {
  await withTempDir(async (tmp) => {
    const dataDir = `${tmp}/db`;
    // At once, during initdb, and later in the creation (how far it got depends on the
    // machine; a start that already finished is stopped and counted out).
    for (const afterMs of [0, 300, 1200]) {
      assert.ok(await lockFreeSoon(dataDir), "the last stop released the lock");
      const outcome = await abortedStart(dataDir, afterMs);
      if (outcome.server) {
        await outcome.server.stop();
        await Deno.remove(dataDir, { recursive: true });
        continue;
      }
      const error = outcome.error;
      assert.ok(
        error instanceof UploadError && error.kind === "interrupted",
        `abort after ${afterMs} ms: ${error}`,
      );
      assert.equal(error.subject, dataDir);
      assert.ok(outcome.settleMs < 1000, `rejected ${Math.round(outcome.settleMs)} ms after`);
      assert.ok(await lockFreeSoon(dataDir), "the lock is released");
      assert.equal(await exists(outcome.socketDir), false, "the socket dir is removed");
      assert.equal(await exists(`${dataDir}.creating`), false, "no half-made database");
      if (await exists(dataDir)) {
        // The creation had finished (the abort came while the server started): the folder
        // is a whole database, not a half-made one.
        assert.ok(await exists(`${dataDir}/PG_VERSION`));
      }
    }
    const server = await startEmbedded(dataDir);
    try {
      await psql(server.connection, "create table t (n int); insert into t values (7)");
    } finally {
      await server.stop();
    }
    const again = await startEmbedded(dataDir);
    try {
      assert.equal(await psql(again.connection, "select n from t"), "7");
    } finally {
      await again.stop();
    }
  });
});

Deno.test("embedded signals: an abort while an existing database opens leaves it usable", async () => {
  await withTempDir(async (tmp) => {
    const dataDir = `${tmp}/db`;
    const first = await startEmbedded(dataDir);
    try {
      await psql(first.connection, "create table kept (n int)");
      await psql(first.connection, "insert into kept select generate_series(1, 1000)");
    } finally {
      await first.stop();
    }
    for (const afterMs of [0, 40, 120, 250]) {
      assert.ok(await lockFreeSoon(dataDir), "the last stop released the lock");
      const outcome = await abortedStart(dataDir, afterMs);
      if (outcome.server) {
        await outcome.server.stop();
      } else {
        const error = outcome.error;
        assert.ok(error instanceof UploadError && error.kind === "interrupted", `${error}`);
        assert.ok(outcome.settleMs < 1000, `rejected ${Math.round(outcome.settleMs)} ms after`);
        assert.ok(await lockFreeSoon(dataDir), "the lock is released");
        assert.equal(await exists(outcome.socketDir), false, "the socket dir is removed");
      }
      assert.ok(await exists(`${dataDir}/PG_VERSION`), "an existing database is never removed");
      assert.ok(await lockFreeSoon(dataDir));
      const server = await startEmbedded(dataDir);
      try {
        assert.equal(
          await psql(server.connection, "select count(*), sum(n) from kept"),
          "1000|500500",
          `after an abort ${afterMs} ms into the start`,
        );
        await psql(server.connection, `insert into kept values (0)`);
        await psql(server.connection, `delete from kept where n = 0`);
      } finally {
        await server.stop();
      }
    }
  });
});

Deno.test("embedded signals: an aborted signal refuses the start before it takes anything", async () => {
  await withTempDir(async (tmp) => {
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(
      () => startEmbedded(`${tmp}/db`, { signal: controller.signal }),
      (error) => error instanceof UploadError && error.kind === "interrupted",
    );
    assert.deepEqual([...Deno.readDirSync(tmp)], []);
  });
});

Deno.test("embedded signals: stop() twice is harmless; stop({ force }) keeps acknowledged rows", async () => {
  await withTempDir(async (tmp) => {
    const dataDir = `${tmp}/db`;
    const server = await startEmbedded(dataDir);
    await psql(server.connection, "create table t (n int)");
    await psql(server.connection, "insert into t select generate_series(1, 100)");
    const [a, b] = [server.stop(), server.stop()];
    await Promise.all([a, b]);
    await server.stop();
    assert.equal(await exists(server.socketDir), false);
    assert.ok(await lockFreeSoon(dataDir));

    const forced = await startEmbedded(dataDir);
    await psql(forced.connection, "insert into t select generate_series(101, 200)");
    const before = performance.now();
    await forced.stop({ force: true });
    assert.ok(performance.now() - before < 1000, "a forced stop does not wait");
    await forced.stop();
    assert.equal(await exists(forced.socketDir), false);
    assert.ok(await lockFreeSoon(dataDir));

    const reopened = await startEmbedded(dataDir);
    try {
      assert.equal(await psql(reopened.connection, "select count(*), sum(n) from t"), "200|20100");
    } finally {
      await reopened.stop();
    }
  });
});

Deno.test({
  name: "embedded signals: Ctrl-C while the uploader creates its database exits 130 at once",
  // The child's own output streams stay open until it exits; they are read to the end.
  async fn() {
    await withTempDir(async (tmp) => {
      const tree = join(tmp, "data");
      generateTree(tree, { folders: 20, seed: 5 });
      const dbPath = join(tmp, "t.db");
      const pgdata = join(tmp, "t.pgdata");
      const run = () => {
        const env: Record<string, string> = { NO_COLOR: "1" };
        for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG"]) {
          const value = Deno.env.get(name);
          if (value !== undefined) env[name] = value;
        }
        // No SUPABASE_DB_URL, DATABASE_URL, PGHOST or PGSERVICE: the embedded default.
        return new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            "--quiet",
            "--config",
            join(REPO_ROOT, "deno.json"),
            join(REPO_ROOT, "scripts", "upload_manager.ts"),
            tree,
            "--db-path",
            dbPath,
            "--min-age",
            "0",
          ],
          cwd: tmp,
          env,
          clearEnv: true,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      };

      const child = run();
      const output = Promise.all([
        new Response(child.stdout).text(),
        new Response(child.stderr).text(),
      ]);
      let secondAt = 0;
      try {
        // The database is being created once its `.creating` folder exists.
        const deadline = performance.now() + 60_000;
        while (!(await exists(`${pgdata}.creating`))) {
          if (performance.now() > deadline) throw new Error("The creation never started");
          await delay(10);
        }
        await delay(200);
        child.kill("SIGINT");
        await delay(100);
        secondAt = performance.now();
        // The first Ctrl-C abandons the start, so the uploader may have ended already.
        try {
          child.kill("SIGINT");
        } catch (error) {
          if (!(error instanceof TypeError)) throw error;
        }
      } catch (error) {
        try {
          child.kill("SIGKILL");
        } catch (_gone) {
          // Already exited: the original error is the one to report.
        }
        throw error;
      }
      const status = await child.status;
      const exitedAfter = performance.now() - secondAt;
      const [stdout, stderr] = await output;
      const described = `exit ${status.code}\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`;
      assert.match(stdout + stderr, /embedded/i, described);
      assert.equal(status.code, 130, described);
      // At once: the interrupted start is abandoned, nothing is uploaded, and the exit does
      // not wait for the creation. The bound leaves room for a loaded machine's process
      // teardown (up to 2.9 s seen at load 8).
      assert.doesNotMatch(stdout, /Uploaded [1-9]/, described);
      assert.ok(exitedAfter < 5000, `exited ${Math.round(exitedAfter)} ms after the second Ctrl-C`);

      // The next run creates the database from scratch and uploads everything.
      const next = await run().output();
      const text = DECODER.decode(next.stdout) + DECODER.decode(next.stderr);
      assert.equal(next.code, 0, text);
      assert.equal(await exists(`${pgdata}.creating`), false);
      assert.ok(await exists(`${pgdata}/PG_VERSION`));
    });
  },
});

Deno.test("embedded signals: a worker that dies fails its request at once, and the stop after it too", async () => {
  await withTempDir(async (tmp) => {
    const module = join(tmp, "dies.ts");
    await Deno.writeTextFile(module, `throw new Error("the worker's code cannot load");\n`);
    const logged: string[] = [];
    const worker = new EmbeddedWorker((line) => logged.push(line), new URL(`file://${module}`));
    const started = performance.now();
    await assert.rejects(
      worker.request({ type: "stop" }, "stopped", { timeoutMs: 60_000 }),
      (error) => error instanceof WorkerFailed && error.stage === "crash",
    );
    // The cleanup's stop after a failed open: the worker is gone, so no 60 s wait.
    await assert.rejects(
      worker.request({ type: "stop" }, "stopped", { timeoutMs: 60_000 }),
      WorkerEnded,
    );
    assert.ok(performance.now() - started < 10_000, "both requests ended without waiting");
    worker.terminate();
  });
});
