/**
 * Errors that say what the server said, against a real PostgreSQL 15: a lock another
 * session holds (with the server's lock_timeout: retried as a lock wait, holder named,
 * exit 3 past --give-up-after, never "unreachable"; without it: the progress output says
 * what the batch waits on within seconds, also through pgbouncer in transaction mode), a
 * read-only database (exit 2, saying so and what to point at), and TLS (the uploader's
 * own sslmode=require meeting a server without TLS, by URL and by PGHOST alike; a URL's
 * sslmode=disable meeting a server that takes only TLS). Every stopping error prints
 * once: one `Error:` line, then its `Hint:` line.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_PASSWORD,
} from "../../support/postgres.ts";
import { hasPgbouncer, startPgbouncer } from "../../support/pgbouncer.ts";
import { generateTree } from "../../support/tree.ts";
import {
  describeExit,
  runUploader,
  startUploader,
  tableRows,
  trackerState,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";

const NO_SERVER = !hasPostgres();

/** A psql session holding a lock in an open transaction until {@linkcode release}. */
class LockHolder {
  readonly pid: number;
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;

  private constructor(child: Deno.ChildProcess, pid: number) {
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.pid = pid;
  }

  /** Opens a session on the server's socket, runs `lockSql` in a transaction it leaves open. */
  static async open(pg: PgServer, lockSql: string): Promise<LockHolder> {
    const child = new Deno.Command("psql", {
      args: ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", pg.socketDir, "-p", String(pg.port)],
      env: { PGUSER: "tester", PGDATABASE: "uploads", PGAPPNAME: "lab-console" },
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const writer = child.stdin.getWriter();
    // The pid first: the lock statement stays the session's last query, as the server shows.
    await writer.write(
      new TextEncoder().encode(`select pg_backend_pid();\nbegin;\n${lockSql};\n`),
    );
    writer.releaseLock();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!/^\d+\n/m.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`The lock holder exited: ${text}`);
      text += value;
    }
    reader.releaseLock();
    // Keep reading so psql never blocks on a full pipe.
    (async () => {
      for await (const _ of child.stdout) { /* drained */ }
    })().catch(() => {/* psql ended: nothing left to drain */});
    const holder = new LockHolder(child, Number(/^(\d+)$/m.exec(text)![1]));
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const held = await pg.psql(
        `select count(*) from pg_locks where pid = ${holder.pid} and granted and mode = 'AccessExclusiveLock'`,
      );
      if (Number(held.trim()) > 0) return holder;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error("The lock holder did not get its lock");
  }

  /** Commits the transaction (the lock goes) and waits for psql to exit. */
  async release(): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode("commit;\n"));
      await this.#stdin.close();
    } catch (_error) {
      // psql already gone (the test failed before): its exit below is all that matters.
    }
    await this.#child.status;
  }
}

/**
 * Asserts what a stopping error prints: one `Error:` line matching `error`, one `Hint:`
 * line matching `hint` right below it, no `Stopping:` line, and the target's source only
 * at the end of the first line.
 */
function assertOneError(exit: UploaderExit, error: RegExp, hint: RegExp): void {
  const lines = exit.stderr.split("\n").filter((l) => l.trim() !== "");
  const errors = lines.filter((l) => l.startsWith("Error: "));
  assert.equal(errors.length, 1, describeExit(exit));
  assert.match(errors[0], error);
  const at = lines.indexOf(errors[0]);
  assert.match(lines[at + 1] ?? "", /^Hint: /, describeExit(exit));
  assert.match(lines[at + 1], hint);
  assert.equal(lines.filter((l) => l.startsWith("Hint: ")).length, 1, describeExit(exit));
  assert.ok(!lines.some((l) => l.startsWith("Stopping:")), describeExit(exit));
  for (const l of lines) {
    if (l.includes("(from $")) assert.match(l, /^Uploading to [^$]+ \(from \$[A-Z_]+\)$/, l);
  }
}

function url(pg: PgServer, params = "", host = "127.0.0.1"): string {
  return `postgresql://tester:${TEST_PASSWORD}@${host}:${pg.port}/uploads${params}`;
}

const LOCK_TABLE = "lock table device_test in access exclusive mode";
const LOCK_TIMEOUT = "?options=-c%20lock_timeout%3D300ms";

/** Uploads a generated tree once, so the schema and rows exist; returns its unit count. */
async function firstUpload(pg: PgServer, data: string, dbPath: string): Promise<number> {
  const tree = generateTree(data, { folders: 20, seed: 19 });
  const first = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
    env: { SUPABASE_DB_URL: url(pg) },
  });
  assert.equal(first.code, 0, describeExit(first));
  return tree.units;
}

Deno.test({
  name:
    "lock_timeout: a lock wait is retried as one, naming the holder; past the deadline exit 3, never unreachable",
  ignore: NO_SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_errors_lock_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        let units = await firstUpload(pg, data, dbPath);
        const args = [data, "--db-path", dbPath, "--min-age", "0"];
        const env = { SUPABASE_DB_URL: url(pg, LOCK_TIMEOUT) };

        // (a) Held past --give-up-after: exit 3 as a lock wait, folders stay pending.
        let holder = await LockHolder.open(pg, LOCK_TABLE);
        const more = generateTree(join(data, "More"), { folders: 10, seed: 20 }).units;
        units += more;
        const gaveUp = await runUploader([...args, "--give-up-after", "3"], { env });
        await holder.release();
        assert.equal(gaveUp.code, 3, describeExit(gaveUp));
        const holderText = (pid: number) =>
          `held by pid ${pid} \\(tester, lab-console, idle in transaction for \\d+ s, ` +
          `AccessExclusiveLock: ${LOCK_TABLE};\\)`;
        assertOneError(
          gaveUp,
          new RegExp(
            `^Error: Gave up on batch_\\S+ after \\d+ s of lock waits: Waiting for a lock on ` +
              `device_test, ${
                holderText(holder.pid)
              }; the server's lock_timeout \\(300ms\\) ended this ` +
              `try: 55P03: canceling statement due to lock timeout$`,
          ),
          new RegExp(`pg_terminate_backend\\(${holder.pid}\\)`),
        );
        const everything = gaveUp.stdout + gaveUp.stderr;
        assert.doesNotMatch(everything, /unreachable|Check the host/i);
        const retries = gaveUp.events.filter((e) => e.event === "retry");
        assert.ok(retries.length >= 2, describeExit(gaveUp));
        for (const r of retries) {
          assert.match(String(r.reason), /^Waiting for a lock on device_test/);
        }
        const summary = gaveUp.events.find((e) => e.event === "summary")!;
        assert.equal(summary.error_kind, "blocked");
        const state = trackerState(dbPath);
        assert.equal(state.runStatuses.at(-1), "blocked");
        const pending = state.folders.filter((f) => f.path.includes("/More/"));
        assert.equal(pending.length, more);
        assert.ok(pending.every((f) => f.status === "pending" && f.retryCount === 0), "pending");

        // (b) Released while the run retries: the run completes, exit 0, every row there.
        holder = await LockHolder.open(pg, LOCK_TABLE);
        units += generateTree(join(data, "Even more"), { folders: 5, seed: 21 }).units;
        const p = startUploader([...args, "--give-up-after", "120"], { env });
        const retry = await p.waitFor((e) => e.event === "retry", 60_000);
        assert.match(
          String(retry.reason),
          new RegExp(`^Waiting for a lock on device_test, ${holderText(holder.pid)}`),
        );
        await holder.release();
        const done = await p.done;
        assert.equal(done.code, 0, describeExit(done));
        assert.doesNotMatch(done.stdout + done.stderr, /unreachable|Error:/i);
        const table = await tableRows(pg);
        assert.equal(table.rows.length, units);
        assert.equal(table.duplicates, 0);
      });
    } finally {
      await pg.close();
    }
  },
});

/** Holds the table, runs the uploader without lock_timeout, expects a lock_wait within 30 s. */
async function assertLockWaitReported(
  pg: PgServer,
  dir: string,
  target: string,
  seed: number,
): Promise<number> {
  const data = join(dir, "data");
  const dbPath = join(dir, "tracker.db");
  const holder = await LockHolder.open(pg, LOCK_TABLE);
  const units = generateTree(join(data, `Batch ${seed}`), { folders: 8, seed }).units;
  const p = startUploader([data, "--db-path", dbPath, "--min-age", "0"], {
    env: { SUPABASE_DB_URL: target },
  });
  try {
    const wait = await p.waitFor((e) => e.event === "lock_wait", 30_000);
    const holders = wait.holders as { pid: number; query: string; state: string }[];
    assert.equal(holders[0]?.pid, holder.pid, JSON.stringify(wait));
    assert.equal(holders[0].query, `${LOCK_TABLE};`);
    assert.equal(holders[0].state, "idle in transaction");
    assert.ok(Number(wait.waited_ms) >= 4_000, JSON.stringify(wait));
  } finally {
    await holder.release();
  }
  const done = await p.done;
  assert.equal(done.code, 0, describeExit(done));
  assert.match(
    done.stderr,
    new RegExp(
      `^Waiting for a lock: batch_\\S+ has waited \\d+ s for a lock on device_test; held by ` +
        `pid ${holder.pid} \\(tester, lab-console, idle in transaction for \\d+ s, ` +
        `AccessExclusiveLock: ${LOCK_TABLE};\\)$`,
      "m",
    ),
  );
  assert.doesNotMatch(done.stdout + done.stderr, /unreachable|Error:/i);
  return units;
}

Deno.test({
  name:
    "no lock_timeout: a batch stuck behind a lock says what it waits on, direct and through pgbouncer",
  ignore: NO_SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_errors_wait_", async (dir) => {
        let units = await firstUpload(pg, join(dir, "data"), join(dir, "tracker.db"));
        units += await assertLockWaitReported(pg, dir, url(pg), 31);
        if (hasPgbouncer()) {
          // Transaction pooling: the look runs on whichever server connection is free.
          const bouncer = await startPgbouncer(pg, { poolSize: 3 });
          try {
            units += await assertLockWaitReported(pg, dir, bouncer.url(), 32);
          } finally {
            await bouncer.close();
          }
        }
        const table = await tableRows(pg);
        assert.equal(table.rows.length, units);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "read-only database: exit 2 saying so and what to point at, for a table that exists and a new one",
  ignore: NO_SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await withTempDir("fault_errors_ro_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        let units = await firstUpload(pg, data, dbPath);
        await pg.psql("alter database uploads set default_transaction_read_only = on");
        units += generateTree(join(data, "More"), { folders: 5, seed: 40 }).units;
        const ro = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
          env: { SUPABASE_DB_URL: url(pg) },
        });
        assert.equal(ro.code, 2, describeExit(ro));
        assertOneError(
          ro,
          new RegExp(
            `^Error: The database 127\\.0\\.0\\.1:${pg.port}/uploads is read-only: new ` +
              `transactions are read-only: default_transaction_read_only is on for database ` +
              // A batch's staging table is the first write it tries (its COPY path).
              `uploads \\(25006: cannot execute CREATE TABLE in a read-only transaction\\)$`,
          ),
          /read-only mode of a project over its disk quota.*`set default_transaction_read_only = off; alter database uploads reset default_transaction_read_only`/,
        );
        const state = trackerState(dbPath);
        assert.ok(
          state.folders.filter((f) => f.path.includes("/More/")).every((f) =>
            f.status === "pending"
          ),
        );

        // A database where the tables are still to be made: the schema step says the same.
        await pg.psql("create database fresh", { database: "postgres" });
        await pg.psql("alter database fresh set default_transaction_read_only = on", {
          database: "postgres",
        });
        const fresh = await runUploader(
          [data, "--db-path", join(dir, "fresh.db"), "--min-age", "0"],
          { env: { SUPABASE_DB_URL: url(pg).replace(/uploads$/, "fresh") } },
        );
        assert.equal(fresh.code, 2, describeExit(fresh));
        assertOneError(
          fresh,
          /^Error: The database 127\.0\.0\.1:\d+\/fresh is read-only: .* for database fresh \(25006: cannot execute CREATE TABLE in a read-only transaction\)$/,
          /alter database fresh reset default_transaction_read_only/,
        );

        // The hint's own SQL, run in that database, makes it writable again: everything lands.
        const fix = /`([^`]+)`/.exec(ro.stderr.split("\n").find((l) => l.startsWith("Hint: "))!)!;
        await pg.psql(fix[1]);
        const again = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
          env: { SUPABASE_DB_URL: url(pg) },
        });
        assert.equal(again.code, 0, describeExit(again));
        assert.equal((await tableRows(pg)).rows.length, units);
      });
    } finally {
      await pg.close();
    }
  },
});

/**
 * A name for this machine that the uploader does not take for local (so it adds
 * sslmode=require), and the `listen_addresses` the server needs for it: the host name when
 * it resolves to a loopback address, else the first non-loopback IPv4 address.
 */
async function remoteLookingHost(): Promise<{ host: string; listen: string } | null> {
  const run = async (cmd: string, args: string[]) => {
    try {
      const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
      return out.success ? new TextDecoder().decode(out.stdout) : "";
    } catch (_error) {
      return ""; // the tool is missing: that way of finding a name does not apply
    }
  };
  const name = Deno.hostname();
  const resolved = (await run("getent", ["ahostsv4", name])).split(/\s+/)[0] ?? "";
  if (resolved.startsWith("127.")) return { host: name, listen: "'127.0.0.1'" };
  const address = (await run("hostname", ["-I"])).split(/\s+/)
    .find((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a) && !a.startsWith("127."));
  return address ? { host: address, listen: `'127.0.0.1,${address}'` } : null;
}

const REMOTE = NO_SERVER ? null : await remoteLookingHost();

/** Gives the server a self-signed certificate, turns TLS on, and takes only TLS over TCP. */
async function requireTls(pg: PgServer): Promise<void> {
  const crt = join(pg.dataDir, "server.crt");
  const key = join(pg.dataDir, "server.key");
  const made = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=uploader-test",
      "-keyout",
      key,
      "-out",
      crt,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(made.success, new TextDecoder().decode(made.stderr));
  const owner = Deno.statSync(pg.dataDir);
  for (const file of [crt, key]) {
    Deno.chmodSync(file, 0o600);
    if (Deno.uid() === 0) Deno.chownSync(file, owner.uid, owner.gid);
  }
  const hba = join(pg.dataDir, "pg_hba.conf");
  const lines = Deno.readTextFileSync(hba).split("\n")
    .map((l) => l.replace(/^host(\s)/, "hostssl$1"));
  Deno.writeTextFileSync(hba, lines.join("\n"));
  await pg.psql("alter system set ssl = on");
  await pg.psql("select pg_reload_conf()");
  // The reload is asynchronous: wait until a TCP session is encrypted.
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    // The password in the environment: another test looks for it in every process's argv.
    const out = await new Deno.Command("psql", {
      args: [
        "-X",
        "-At",
        "-d",
        url(pg, "?sslmode=require").replace(`:${TEST_PASSWORD}@`, "@"),
        "-c",
        "select 1",
      ],
      env: { PGPASSWORD: TEST_PASSWORD },
      stdout: "piped",
      stderr: "null",
    }).output();
    if (out.success) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("TLS did not come up on the test server");
}

Deno.test({
  name:
    "TLS: the uploader's sslmode=require on a server without TLS says so, by URL and PGHOST alike",
  ignore: NO_SERVER || REMOTE === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const remote = REMOTE!;
    const pg = await startPostgres({
      conf: { listen_addresses: remote.listen },
    });
    try {
      // The default pg_hba takes 127.0.0.1 only: open it for the other address.
      if (!remote.listen.endsWith("'127.0.0.1'")) {
        Deno.writeTextFileSync(
          join(pg.dataDir, "pg_hba.conf"),
          `host all all ${remote.host}/32 scram-sha-256\n`,
          { append: true },
        );
        await pg.psql("select pg_reload_conf()");
      }
      await withTempDir("fault_errors_tls_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        let units = generateTree(data, { folders: 6, seed: 50 }).units;
        const args = [data, "--db-path", dbPath, "--min-age", "0"];
        const noTls =
          /^Error: Cannot connect to .*: .*server does not support SSL, but SSL was required$/;

        const byUrl = await runUploader(args, {
          env: { SUPABASE_DB_URL: url(pg, "", remote.host) },
        });
        assert.equal(byUrl.code, 2, describeExit(byUrl));
        assertOneError(
          byUrl,
          noTls,
          /^Hint: The uploader asked for TLS \(sslmode=require\) because the host is not this machine.*add \?sslmode=disable to the URL/,
        );

        // PGHOST naming the same host gets the same default, and the same advice.
        const libpq = {
          PGHOST: remote.host,
          PGPORT: String(pg.port),
          PGUSER: "tester",
          PGPASSWORD: TEST_PASSWORD,
          PGDATABASE: "uploads",
        };
        const byEnv = await runUploader(args, { env: libpq });
        assert.equal(byEnv.code, 2, describeExit(byEnv));
        assertOneError(byEnv, noTls, /set PGSSLMODE=disable/);
        assert.doesNotMatch(byEnv.stdout + byEnv.stderr, new RegExp(TEST_PASSWORD));

        // The fix the hints give works, both ways.
        const disabled = await runUploader(args, {
          env: { SUPABASE_DB_URL: url(pg, "?sslmode=disable", remote.host) },
        });
        assert.equal(disabled.code, 0, describeExit(disabled));
        units += generateTree(join(data, "More"), { folders: 2, seed: 51 }).units;
        const envDisabled = await runUploader(args, {
          env: { ...libpq, PGSSLMODE: "disable" },
        });
        assert.equal(envDisabled.code, 0, describeExit(envDisabled));
        assert.equal((await tableRows(pg)).rows.length, units);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "TLS: a server taking only TLS, and a URL saying sslmode=disable, gets the hint; the default works",
  ignore: NO_SERVER || REMOTE === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const remote = REMOTE!;
    const pg = await startPostgres({ conf: { listen_addresses: remote.listen } });
    try {
      if (!remote.listen.endsWith("'127.0.0.1'")) {
        Deno.writeTextFileSync(
          join(pg.dataDir, "pg_hba.conf"),
          `host all all ${remote.host}/32 scram-sha-256\n`,
          { append: true },
        );
      }
      await requireTls(pg);
      await withTempDir("fault_errors_tls_only_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        const units = generateTree(data, { folders: 6, seed: 60 }).units;
        const args = [data, "--db-path", dbPath, "--min-age", "0"];
        const refused = await runUploader(args, {
          env: { SUPABASE_DB_URL: url(pg, "?sslmode=disable", remote.host) },
        });
        assert.equal(refused.code, 2, describeExit(refused));
        assertOneError(
          refused,
          /^Error: Cannot connect to .*no pg_hba\.conf entry for host .*, no encryption$/,
          /^Hint: The server takes only TLS connections and the URL says sslmode=disable: remove it/,
        );
        // Without sslmode the uploader asks for TLS itself (the host is not this machine).
        const tls = await runUploader(args, {
          env: { SUPABASE_DB_URL: url(pg, "", remote.host) },
        });
        assert.equal(tls.code, 0, describeExit(tls));
        assert.equal((await tableRows(pg)).rows.length, units);
      });
    } finally {
      await pg.close();
    }
  },
});
