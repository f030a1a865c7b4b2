/**
 * The psql session protocol against a real server, and how psql is started
 * (lib/sink/postgres/spawn.ts: outside the caller's process group, the version check, the
 * interactive psql). The SQLSTATE table and the statement text checks have their own
 * tests: policy_test.ts, psql_text_test.ts.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../../lib/core/errors.ts";
import {
  type PsqlConnection,
  PsqlSession,
  type StatementReply,
} from "../../../lib/sink/postgres/psql.ts";
import {
  checkPsql,
  detachmentMethod,
  outsideGroup,
  runPsqlInteractive,
} from "../../../lib/sink/postgres/spawn.ts";
import { classifySqlstate } from "../../../lib/core/policy.ts";
import { sqlLiteral } from "../../../lib/sink/postgres/quote.ts";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_DATABASE,
  TEST_PASSWORD,
  TEST_USER,
} from "../../../support/postgres.ts";

const NO_SERVER = !hasPostgres();

/** A TCP connection with the password in the environment, as lib/target builds them. */
function tcpConnection(pg: PgServer, options: { password?: string; database?: string } = {}) {
  const database = options.database ?? TEST_DATABASE;
  return {
    args: ["-d", `postgresql://${TEST_USER}@${pg.host}:${pg.port}/${database}`],
    env: { PGPASSWORD: options.password ?? TEST_PASSWORD },
    display: `${pg.host}:${pg.port}/${database}`,
  } satisfies PsqlConnection;
}

/** A Unix-socket connection (trust) as any role. */
function socketConnection(pg: PgServer, user: string): PsqlConnection {
  return {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", user, "-d", TEST_DATABASE],
    env: {},
    display: `${pg.socketDir}:${pg.port}/${TEST_DATABASE}`,
  };
}

function assertOk(reply: StatementReply): asserts reply is Extract<StatementReply, { ok: true }> {
  assert.ok(reply.ok, `expected ok, got ${JSON.stringify(reply)}`);
}

function assertError(
  reply: StatementReply,
): asserts reply is Extract<StatementReply, { ok: false }> {
  assert.ok(!reply.ok, `expected an error, got ${JSON.stringify(reply)}`);
}

async function assertUploadError(
  promise: Promise<unknown>,
  kind: string,
  pattern?: RegExp,
): Promise<UploadError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof UploadError, `expected UploadError, got ${error}`);
    assert.equal(error.kind, kind, `kind of: ${error.message}`);
    if (pattern) assert.match(error.message, pattern);
    return error;
  }
  assert.fail(`expected an UploadError of kind ${kind}`);
}

Deno.test("outsideGroup: a child in a session of its own, by Deno's detached or by setsid", async () => {
  const stat = (pid: number) =>
    Deno.readTextFileSync(`/proc/${pid}/stat`).replace(/^.*\) /, "").split(" ");
  const [, , ourGroup, ourSession] = stat(Deno.pid);
  for (const method of ["detached", "setsid", "none"] as const) {
    const child = outsideGroup("sleep", { args: ["30"], stdin: "null" }, method).spawn();
    try {
      // setsid runs sleep in its own place: the pid is sleep's once it has started.
      let fields = stat(child.pid);
      for (
        let i = 0;
        i < 100 && !/\(sleep\)/.test(Deno.readTextFileSync(`/proc/${child.pid}/stat`));
        i++
      ) {
        await new Promise((r) => setTimeout(r, 10));
        fields = stat(child.pid);
      }
      const [, , group, session] = fields;
      if (method === "none") {
        assert.equal(group, ourGroup, method);
      } else {
        assert.equal(Number(group), child.pid, `${method}: leads its own group`);
        assert.notEqual(session, ourSession, `${method}: in a session of its own`);
      }
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
  }
});

Deno.test("PsqlSession.start: a psql killed by a signal while it connects is transient, not config", async () => {
  // A server that accepts and never answers: psql waits in its connection, then gets
  // SIGTERM as a service manager stopping every process of the unit sends it.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })();
  try {
    const starting = PsqlSession.start({
      args: ["-h", "127.0.0.1", "-p", String(port), "-U", "nobody", "-d", "nowhere"],
      env: {},
      display: `127.0.0.1:${port}`,
    }, { connectTimeoutSeconds: 30 });
    let psql: number | undefined;
    for (let i = 0; i < 500 && psql === undefined; i++) {
      await new Promise((r) => setTimeout(r, 10));
      for (const entry of Deno.readDirSync("/proc")) {
        if (!/^\d+$/.test(entry.name)) continue;
        try {
          const cmd = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
          if (cmd.includes("psql") && cmd.includes(String(port))) psql = Number(entry.name);
        } catch (_error) {
          // exited while listed
        }
      }
    }
    assert.ok(psql !== undefined, "psql did not start");
    Deno.kill(psql, "SIGTERM");
    await assertUploadError(starting, "transient", /Cannot connect to 127\.0\.0\.1:\d+/);
  } finally {
    listener.close();
    for (const conn of held) conn.close();
    await accepting.catch(() => {/* closed with the listener */});
  }
});

Deno.test("checkPsql returns the version and explains a missing psql", async () => {
  const version = await checkPsql();
  assert.match(version, /^psql \(PostgreSQL\) \d+/);
  const error = await assertUploadError(checkPsql("/nonexistent/psql"), "config", /not found/);
  assert.match(error.hint ?? "", /apt-get install postgresql-client/);
  assert.match(error.hint ?? "", /brew install libpq/);
  await assertUploadError(
    PsqlSession.start({ args: [], env: {}, display: "x" }, { psqlPath: "/nonexistent/psql" }),
    "config",
  );
});

Deno.test({
  name: "PsqlSession speaks the reply protocol with a real server",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    const session = await PsqlSession.start(tcpConnection(pg));
    try {
      await t.step("psql runs outside this process's group and session", () => {
        // /proc/PID/stat: "pid (comm) state ppid pgrp session ..."
        const stat = (pid: number) =>
          Deno.readTextFileSync(`/proc/${pid}/stat`).replace(/^.*\) /, "").split(" ");
        const [, , ourGroup, ourSession] = stat(Deno.pid);
        const [, , group, sessionId] = stat(session.pid);
        assert.equal(Number(group), session.pid, "psql leads a group of its own");
        assert.notEqual(group, ourGroup);
        assert.notEqual(sessionId, ourSession);
        assert.equal(detachmentMethod(), "detached");
      });
      await t.step("ok replies carry rows and the row count", async () => {
        let reply = await session.run("select generate_series(1, 3)");
        assertOk(reply);
        assert.deepEqual(reply.rows, ["1", "2", "3"]);
        assert.equal(reply.rowCount, 3);
        reply = await session.run("select 1, 'a b', null::text, true;");
        assertOk(reply);
        assert.deepEqual(reply.rows, ["1|a b||t"]);
        reply = await session.run("create table t (k text primary key, v int)");
        assertOk(reply);
        assert.deepEqual(reply.rows, []);
        reply = await session.run("insert into t values ('a', 1), ('b', 2), ('c', 3)");
        assertOk(reply);
        assert.equal(reply.rowCount, 3);
        reply = await session.run("update t set v = v + 1 where k <> 'a'");
        assertOk(reply);
        assert.equal(reply.rowCount, 2);
        reply = await session.run("select k from t where false");
        assertOk(reply);
        assert.deepEqual(reply.rows, []);
        assert.equal(reply.rowCount, 0);
      });

      await t.step("error replies carry SQLSTATE and message", async () => {
        let reply = await session.run("select 1/0");
        assertError(reply);
        assert.equal(reply.sqlstate, "22012");
        assert.equal(reply.message, "division by zero");
        reply = await session.run("select * from missing_table");
        assertError(reply);
        assert.equal(reply.sqlstate, "42P01");
        assert.equal(reply.message, 'relation "missing_table" does not exist');
        assert.equal(classifySqlstate(reply.sqlstate), "config");
      });

      await t.step("messages with quotes, backslashes and newlines come back exactly", async () => {
        const messages = [
          "it's",
          "line one\nline two",
          "ends with a quote'",
          "'",
          "''",
          "back\\slash",
          "E'not an escape'",
          "\n",
          "trailing newline\n",
          "",
          "  leading spaces",
          "tab\there",
          "looks like a trailer: @@reply-0 ok 1",
          "non-ASCII: é 中文 😀",
          "quote at line end'\n'quote at line start",
          "backslash at line end\\\nnext",
        ];
        for (const message of messages) {
          const reply = await session.run(
            `do $t$ begin raise exception using message = ${
              sqlLiteral(message)
            }, errcode = '22023'; end $t$`,
          );
          assertError(reply);
          assert.equal(reply.sqlstate, "22023");
          assert.equal(reply.message, message);
        }
        const ok = await session.run("select 'still in sync'");
        assertOk(ok);
        assert.deepEqual(ok.rows, ["still in sync"]);
      });

      await t.step("DETAIL and HINT go to stderr and do not confuse the parser", async () => {
        const reply = await session.run("insert into t values ('a', 9)");
        assertError(reply);
        assert.equal(reply.sqlstate, "23505");
        assert.match(reply.message, /duplicate key value violates unique constraint "t_pkey"/);
        assert.match(reply.stderr ?? "", /DETAIL: {2}Key \(k\)=\(a\) already exists\./);
        assert.match(session.stderrTail(), /DETAIL: {2}Key \(k\)=\(a\) already exists\./);
        const hinted = await session.run(
          "do $$ begin raise exception 'boom' using detail = 'the detail', hint = 'the hint'; end $$",
        );
        assertError(hinted);
        assert.equal(hinted.sqlstate, "P0001");
        assert.equal(hinted.message, "boom");
        assert.match(hinted.stderr ?? "", /DETAIL: {2}the detail\nHINT: {2}the hint/);
        assert.doesNotMatch(hinted.stderr ?? "", /duplicate key/, "stderr is per statement");
        const after = await session.run("select count(*) from t");
        assertOk(after);
        assert.deepEqual(after.rows, ["3"]);
      });

      await t.step("a flood of NOTICEs on stderr is drained", async () => {
        const reply = await session.run(
          "do $$ begin for i in 1..20000 loop raise notice 'notice number % with some padding text', i; end loop; end $$",
        );
        assertOk(reply);
        const tail = session.stderrTail();
        assert.ok(tail.length <= 4096 + 200, `tail is bounded: ${tail.length}`);
        assert.match(tail, /notice number 20000/);
      });

      await t.step("many statements in a row, and concurrent calls queue in order", async () => {
        for (let i = 0; i < 1000; i++) {
          const reply = await session.run(`select ${i}`);
          assertOk(reply);
          assert.deepEqual(reply.rows, [String(i)]);
        }
        const replies = await Promise.all(
          Array.from(
            { length: 300 },
            (_, i) => session.run(i % 7 === 3 ? "select 1/0" : `select ${i}`),
          ),
        );
        replies.forEach((reply, i) => {
          if (i % 7 === 3) assertError(reply);
          else {
            assertOk(reply);
            assert.deepEqual(reply.rows, [String(i)]);
          }
        });
      });

      await t.step("large statements and large results pass through", async () => {
        const big = "x".repeat(4 * 1024 * 1024);
        let reply = await session.run(`select length(${sqlLiteral(big)})`);
        assertOk(reply);
        assert.deepEqual(reply.rows, ["4194304"]);
        reply = await session.run("select g, repeat('y', 100) from generate_series(1, 50000) g");
        assertOk(reply);
        assert.equal(reply.rows.length, 50000);
        assert.equal(reply.rows[49999], `50000|${"y".repeat(100)}`);
      });

      await t.step(
        "a statement that is not exactly one is refused before psql sees it",
        async () => {
          await assertUploadError(session.run("select 1; select 2"), "fatal", /more than one/);
          await assertUploadError(session.run("select 'open"), "fatal", /unterminated/);
          assert.ok(session.alive);
          assertOk(await session.run("select 1"));
        },
      );

      await t.step("the timeout option kills psql and the session is dead", async () => {
        const other = await PsqlSession.start(tcpConnection(pg));
        const started = Date.now();
        await assertUploadError(
          other.run("select pg_sleep(20)", { timeoutMs: 300 }),
          "timeout",
          /No reply within 0\.3 s .*client's own statement timeout/,
        );
        assert.ok(Date.now() - started < 5000);
        assert.equal(other.alive, false);
        await assertUploadError(other.run("select 1"), "transient", /closed/);
        await other.close();
      });

      await t.step("a server-side statement timeout is a 57014 reply", async () => {
        await pg.psql(
          "create role shorty login; alter role shorty set statement_timeout = '200ms'",
        );
        const short = await PsqlSession.start(socketConnection(pg, "shorty"));
        try {
          const reply = await short.run("select pg_sleep(5)");
          assertError(reply);
          assert.equal(reply.sqlstate, "57014");
          assert.equal(classifySqlstate(reply.sqlstate), "timeout");
          assert.equal(short.statementTimeout, "200ms", "the probe read the server's setting");
          assertOk(await short.run("select 1"));
          const denied = await short.run("insert into t values ('z', 0)");
          assertError(denied);
          assert.equal(denied.sqlstate, "42501");
          assert.equal(classifySqlstate(denied.sqlstate), "config");
        } finally {
          await short.close();
        }
      });

      await t.step("runPsqlInteractive returns psql's exit code", async () => {
        const conn = tcpConnection(pg);
        assert.equal(
          await runPsqlInteractive(conn, ["-X", "-q", "-o", "/dev/null", "-c", "select 1"]),
          0,
        );
        assert.equal(
          await runPsqlInteractive(conn, ["-X", "-q", "-c", "select 1/0"]),
          1,
          "(the ERROR line above is expected)",
        );
        await assertUploadError(
          runPsqlInteractive(conn, [], { psqlPath: "/nonexistent/psql" }),
          "config",
          /not found/,
        );
      });

      await t.step("the session reports itself to the server as folder-uploader", async () => {
        const out = await pg.psql(
          "select count(*) from pg_stat_activity where application_name = 'folder-uploader'",
        );
        assert.ok(Number(out.trim()) >= 1);
      });
    } finally {
      await session.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "PsqlSession start failures are classified and never show the password",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres({
      maxConnections: 3,
      conf: { superuser_reserved_connections: "0" },
    });
    try {
      await t.step("wrong password: config", async () => {
        const error = await assertUploadError(
          PsqlSession.start(tcpConnection(pg, { password: "wrong-secret-value" })),
          "config",
          /password authentication failed/,
        );
        assert.doesNotMatch(error.message, /wrong-secret-value/);
        assert.doesNotMatch(error.message, new RegExp(TEST_PASSWORD));
      });
      await t.step("missing database or role: config", async () => {
        await assertUploadError(
          PsqlSession.start(tcpConnection(pg, { database: "nowhere" })),
          "config",
          /database "nowhere" does not exist/,
        );
        await assertUploadError(
          PsqlSession.start(socketConnection(pg, "nobody")),
          "config",
          /role "nobody" does not exist/,
        );
      });
      await t.step(
        "no password anywhere: config, without a prompt reading the script",
        async () => {
          const error = await assertUploadError(
            PsqlSession.start({ ...tcpConnection(pg), env: {} }),
            "config",
            /no password supplied/,
          );
          assert.doesNotMatch(error.message, /Password for user/);
          assert.equal(
            error.hint,
            "Check the password in the database URL (or PGPASSWORD / ~/.pgpass)",
          );
        },
      );
      await t.step("refused: transient", async () => {
        const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const port = (listener.addr as Deno.NetAddr).port;
        listener.close();
        const error = await assertUploadError(
          PsqlSession.start({
            args: ["-h", "127.0.0.1", "-p", String(port), "-U", TEST_USER, "-d", TEST_DATABASE],
            env: {},
            display: `127.0.0.1:${port}`,
          }),
          "transient",
          /Connection refused/,
        );
        assert.match(error.message, /^Cannot connect to 127\.0\.0\.1:\d+: /);
      });
      await t.step("too many connections: transient", async () => {
        const held = [
          await PsqlSession.start(tcpConnection(pg)),
          await PsqlSession.start(tcpConnection(pg)),
          await PsqlSession.start(tcpConnection(pg)),
        ];
        try {
          await assertUploadError(
            PsqlSession.start(tcpConnection(pg)),
            "transient",
            /too many clients/,
          );
        } finally {
          await Promise.all(held.map((session) => session.close()));
        }
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "PsqlSession: a lost connection is transient and kills the session",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await t.step("backend terminated while idle: next statement throws", async () => {
        const session = await PsqlSession.start(tcpConnection(pg));
        try {
          assertOk(await session.run("select 1"));
          await pg.psql(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'folder-uploader'",
          );
          const error = await assertUploadError(session.run("select 2"), "transient", /lost/);
          assert.match(error.message, /terminating connection due to administrator command/);
          assert.equal(session.alive, false);
          assert.equal(session.exitCode, 2, "psql exits with code 2 after a lost connection");
          await assertUploadError(session.run("select 3"), "transient");
        } finally {
          await session.close();
        }
      });

      await t.step("backend terminated mid-statement: the statement throws", async () => {
        const session = await PsqlSession.start(tcpConnection(pg));
        try {
          const running = session.run("select pg_sleep(30)");
          await new Promise((resolve) => setTimeout(resolve, 300));
          await pg.psql(
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'folder-uploader' and pid <> pg_backend_pid()",
          );
          await assertUploadError(running, "transient", /lost/);
          assert.equal(session.alive, false);
        } finally {
          await session.close();
        }
      });

      await t.step("server stopped (immediate) and started again", async () => {
        const session = await PsqlSession.start(tcpConnection(pg));
        try {
          await pg.stop("immediate");
          await assertUploadError(session.run("select 1"), "transient");
          assert.equal(session.alive, false);
          await assertUploadError(PsqlSession.start(tcpConnection(pg)), "transient", /refused/);
          await pg.start();
          const fresh = await PsqlSession.start(tcpConnection(pg));
          assertOk(await fresh.run("select 1"));
          await fresh.close();
        } finally {
          await session.close();
        }
      });

      await t.step("kill() ends psql and in-flight calls throw transient", async () => {
        const session = await PsqlSession.start(tcpConnection(pg));
        const running = session.run("select pg_sleep(30)");
        const queued = session.run("select 1");
        await new Promise((resolve) => setTimeout(resolve, 200));
        await session.kill();
        await assertUploadError(running, "transient");
        await assertUploadError(queued, "transient");
        assert.equal(session.alive, false);
      });
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "PsqlSession throughput: 500-row insert statements (measured, printed)",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const session = await PsqlSession.start(tcpConnection(pg));
    try {
      assertOk(await session.run("create table bench (k text primary key, payload text)"));
      const rowsPerStatement = 500;
      const statements = 80;
      const padding = "p".repeat(380);
      let bytes = 0;
      const started = performance.now();
      for (let s = 0; s < statements; s++) {
        const values = [];
        for (let r = 0; r < rowsPerStatement; r++) {
          values.push(`(${sqlLiteral(`k${s}-${r}`)}, ${sqlLiteral(padding)})`);
        }
        const sql = `insert into bench (k, payload) values ${values.join(",")}`;
        bytes += sql.length;
        const reply = await session.run(sql);
        assertOk(reply);
        assert.equal(reply.rowCount, rowsPerStatement);
      }
      const seconds = (performance.now() - started) / 1000;
      const rows = rowsPerStatement * statements;
      console.log(
        `  one session: ${rows} rows in ${statements} statements, ${seconds.toFixed(2)} s: ` +
          `${Math.round(rows / seconds)} rows/s, ${
            (bytes / seconds / 1e6).toFixed(1)
          } MB/s of SQL, ` +
          `${(seconds / statements * 1000).toFixed(1)} ms/statement`,
      );
      const tiny = performance.now();
      for (let i = 0; i < 2000; i++) assertOk(await session.run("select 1"));
      const perStatement = (performance.now() - tiny) / 2000;
      console.log(`  round trip of a trivial statement: ${(perStatement * 1000).toFixed(0)} µs`);
    } finally {
      await session.close();
      await pg.close();
    }
  },
});
