/**
 * The write path (lib/sink/postgres/writer.ts): bisecting batches the server refuses for their data,
 * retry classification (transient -> backoff and a fresh session; data -> bisect, never
 * retried; permission and schema problems -> configuration errors; a server gone past
 * the deadline -> unreachable), the session pool, and the same against a real server.
 *
 * Most tests here use a fake StatementRunner. That is deliberate and limited to this file:
 * they are unit tests of pure control flow (which statements are sent, in which order,
 * what each folder's outcome is), where a fake server can answer any SQLSTATE on cue.
 * Whether real SQL does what the fake pretends is proven by the tests at the end of this
 * file and by tests/e2e/upload_test.ts, against a real PostgreSQL.
 */

import { rowToJson } from "../../../lib/sink/columns.ts";
import assert from "node:assert/strict";
import { exitCodeFor, UploadError } from "../../../lib/core/errors.ts";
import type { PsqlConnection, StatementReply } from "../../../lib/sink/postgres/psql.ts";
import type { UploadRow } from "../../../lib/sink/columns.ts";
import {
  type BatchItem,
  ensureSchema,
  psqlFactory,
  type RetryNotice,
  SessionPool,
  type StatementRunner,
  writeBatch,
  type WriteContext,
} from "../../../lib/sink/postgres/writer.ts";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_DATABASE,
  TEST_USER,
} from "../../../support/postgres.ts";

const NO_SERVER = !hasPostgres();
const DEVICE = { id: "0f0e0d0c-0b0a-4909-8807-060504030201", name: "writer-test", type: "t" };

function row(key: string, extra: Partial<UploadRow> = {}): UploadRow {
  return {
    folder_key: key,
    folder_name: key.split("/").pop()!,
    images: [],
    test_results: { key },
    test_status: "failed",
    test_date: null,
    metadata: { content_hash: `hash-${key}` },
    ...extra,
  };
}

function items(keys: string[]): BatchItem[] {
  return keys.map((key) => {
    const r = row(key);
    return { path: `/data/${key}`, row: r, json: rowToJson(r) };
  });
}

function keysOf(n: number, prefix = "f"): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(4, "0")}`);
}

/** The folder_keys inside an upsert statement's JSON payload (reads sqlLiteral's quoting). */
function payloadKeys(sql: string): string[] {
  const match = /select (E?)'((?:[^'\\]|''|\\.)*)'::jsonb as p/s.exec(sql);
  assert.ok(match, `no payload in ${sql.slice(0, 200)}`);
  let body = match[2].replaceAll("''", "'");
  if (match[1] === "E") body = body.replace(/\\(.)/gs, "$1");
  return (JSON.parse(body) as { rows: { folder_key: string }[] }).rows.map((r) => r.folder_key);
}

/** What the fake server answers for one statement. */
type Answer = StatementReply | UploadError;

/** A fake psql session: answers each statement through `answer`; records what it got. */
class FakeRunner implements StatementRunner {
  alive = true;
  closed = false;
  killed = false;
  readonly #server: FakeServer;

  constructor(server: FakeServer) {
    this.#server = server;
  }

  run(sql: string): Promise<StatementReply> {
    if (!this.alive) {
      return Promise.reject(new UploadError("transient", "The fake session is closed"));
    }
    const keys = sql.includes("::jsonb as p") ? payloadKeys(sql) : [];
    this.#server.statements.push(keys);
    const answer = this.#server.answer(keys, this.#server.statements.length, sql);
    if (answer instanceof UploadError) {
      if (answer.kind === "transient") this.alive = false; // as a lost psql session is
      return Promise.reject(answer);
    }
    return Promise.resolve(answer);
  }

  close(): Promise<void> {
    this.closed = true;
    this.alive = false;
    return Promise.resolve();
  }

  kill(): void {
    this.killed = true;
    this.alive = false;
  }
}

/** The fake server behind every FakeRunner of a test. */
class FakeServer {
  /** The folder_keys of each statement received, in order. */
  statements: string[][] = [];
  runners: FakeRunner[] = [];
  answer: (keys: string[], n: number, sql: string) => Answer;

  constructor(answer: (keys: string[], n: number, sql: string) => Answer) {
    this.answer = answer;
  }

  factory = (): Promise<StatementRunner> => {
    const runner = new FakeRunner(this);
    this.runners.push(runner);
    return Promise.resolve(runner);
  };
}

function ok(keys: string[]): StatementReply {
  return { ok: true, rows: [`{"inserted":${keys.length},"updated":0}`], rowCount: 1 };
}

function refused(sqlstate: string, message: string): StatementReply {
  return { ok: false, rows: [], sqlstate, message };
}

/** A server that refuses (with `sqlstate`) every statement holding one of `bad`. */
function refusing(bad: Set<string>, sqlstate = "23514") {
  return (keys: string[]): Answer =>
    keys.some((k) => bad.has(k))
      ? refused(
        sqlstate,
        `new row for relation "device_test" violates check constraint "no_poison"`,
      )
      : ok(keys);
}

function context(
  server: FakeServer,
  options: { giveUpAfterMs?: number; now?: () => number; signal?: AbortSignal } = {},
) {
  const retries: RetryNotice[] = [];
  const ctx: WriteContext = {
    pool: new SessionPool(server.factory),
    table: "device_test",
    device: DEVICE,
    targetDisplay: "fake@127.0.0.1:1/db",
    giveUpAfterMs: options.giveUpAfterMs ?? 60_000,
    backoff: { initialMs: 1, maxMs: 4, jitter: 0 },
    signal: options.signal ?? new AbortController().signal,
    health: { failingSince: null, answered: true },
    onRetry: (n) => retries.push(n),
    now: options.now,
  };
  return { ctx, retries };
}

async function thrown(promise: Promise<unknown>): Promise<UploadError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof UploadError, `expected an UploadError, got ${error}`);
    return error;
  }
  assert.fail("expected a rejection");
}

function outcomeMap(result: Awaited<ReturnType<typeof writeBatch>>) {
  const map = new Map<string, { ok: boolean; error?: string }>();
  for (const o of result.outcomes) {
    assert.ok(!map.has(o.item.row.folder_key), `two outcomes for ${o.item.row.folder_key}`);
    map.set(o.item.row.folder_key, { ok: o.ok, error: o.error });
  }
  return map;
}

// ---------------------------------------------------------------------------------------
// Bisect

Deno.test("writeBatch: a clean batch is one statement", async () => {
  const server = new FakeServer((keys) => ok(keys));
  const { ctx, retries } = context(server);
  const batch = items(keysOf(50));
  const result = await writeBatch(batch, "b1", ctx);
  assert.equal(result.statements, 1);
  assert.equal(result.inserted, 50);
  assert.equal(result.outcomes.length, 50);
  assert.ok(result.outcomes.every((o) => o.ok));
  assert.deepEqual(server.statements, [keysOf(50)]);
  assert.equal(retries.length, 0);
  await ctx.pool.close();
});

Deno.test("writeBatch: one refused row among 64 is found in 13 statements", async () => {
  const keys = keysOf(64);
  const server = new FakeServer(refusing(new Set([keys[37]])));
  const { ctx, retries } = context(server);
  const result = await writeBatch(items(keys), "b1", ctx);
  const map = outcomeMap(result);
  assert.equal(map.size, 64);
  for (const key of keys) assert.equal(map.get(key)!.ok, key !== keys[37], key);
  const error = map.get(keys[37])!.error!;
  assert.match(error, /23514/);
  assert.match(error, /no_poison/);
  assert.ok(error.includes(keys[37]), error);
  // 1 + 2 per halving (64 -> 1 is six halvings).
  assert.equal(result.statements, 13);
  assert.equal(result.inserted, 63);
  assert.equal(retries.length, 0, "data errors are never retried");
  // Every good row was acknowledged by exactly one successful statement.
  const acknowledged = server.statements.filter((s) => !s.includes(keys[37])).flat();
  assert.deepEqual(acknowledged.sort(), keys.filter((k) => k !== keys[37]).sort());
  await ctx.pool.close();
});

Deno.test("writeBatch: several refused rows, and a batch where every row is refused", async () => {
  const keys = keysOf(100);
  const bad = new Set([keys[0], keys[50], keys[51], keys[99]]);
  const server = new FakeServer(refusing(bad, "23505"));
  const { ctx } = context(server);
  const map = outcomeMap(await writeBatch(items(keys), "b1", ctx));
  for (const key of keys) assert.equal(map.get(key)!.ok, !bad.has(key), key);
  for (const key of bad) assert.match(map.get(key)!.error!, /23505/);

  const all = keysOf(8, "x");
  const server2 = new FakeServer(refusing(new Set(all), "22P02"));
  const { ctx: ctx2 } = context(server2);
  const result = await writeBatch(items(all), "b2", ctx2);
  assert.ok(result.outcomes.every((o) => !o.ok));
  assert.equal(result.statements, 15); // the whole tree: 8 + 4 + 2 + 1
  await ctx.pool.close();
  await ctx2.pool.close();
});

Deno.test("writeBatch: a row PostgreSQL cannot store is isolated without being sent", async () => {
  const keys = keysOf(8);
  const batch = items(keys);
  const bad = row(keys[5], { test_results: { note: "\ud800" } });
  batch[5] = { path: "/data/bad", row: bad, json: rowToJson(bad) };
  const server = new FakeServer((k) => ok(k));
  const { ctx } = context(server);
  const result = await writeBatch(batch, "b1", ctx);
  const map = outcomeMap(result);
  for (const key of keys) assert.equal(map.get(key)!.ok, key !== keys[5], key);
  assert.match(map.get(keys[5])!.error!, /surrogate/);
  assert.ok(!server.statements.flat().includes(keys[5]), "the bad row was sent");
  assert.deepEqual(server.statements.flat().sort(), keys.filter((k) => k !== keys[5]).sort());
  await ctx.pool.close();
});

// ---------------------------------------------------------------------------------------
// Retry classification

Deno.test("writeBatch: a lost connection is retried on a fresh session, charging no folder", async () => {
  const server = new FakeServer((keys, n) =>
    n <= 2 ? new UploadError("transient", "Connection to fake lost: server closed") : ok(keys)
  );
  const { ctx, retries } = context(server);
  const result = await writeBatch(items(keysOf(10)), "b1", ctx);
  assert.ok(result.outcomes.every((o) => o.ok));
  assert.equal(result.outcomes.length, 10);
  assert.deepEqual(retries.map((r) => r.attempt), [1, 2]);
  assert.ok(retries.every((r) => r.subject === "b1" && /lost/.test(r.reason)));
  // The two dead sessions were killed and replaced.
  assert.equal(server.runners.length, 3);
  assert.ok(server.runners[0].killed && server.runners[1].killed);
  assert.equal(ctx.health.failingSince, null, "a success ends the failing streak");
  await ctx.pool.close();
});

Deno.test("writeBatch: transient SQLSTATEs in a reply are retried, not bisected", async () => {
  for (const sqlstate of ["40001", "40P01", "53300", "57P01", "08006"]) {
    const server = new FakeServer((keys, n) => n === 1 ? refused(sqlstate, "try again") : ok(keys));
    const { ctx, retries } = context(server);
    const result = await writeBatch(items(keysOf(6)), "b1", ctx);
    assert.ok(result.outcomes.every((o) => o.ok), sqlstate);
    assert.equal(retries.length, 1, sqlstate);
    assert.deepEqual(server.statements.map((s) => s.length), [6, 6], sqlstate);
    await ctx.pool.close();
  }
});

/** The reply of the lock holders query: one session holding the table in a transaction. */
const HOLDERS_REPLY: StatementReply = {
  ok: true,
  rowCount: 1,
  rows: [JSON.stringify({
    waiting: [],
    holders: [{
      pid: 4242,
      user: "lab",
      application: "psql",
      state: "idle in transaction",
      seconds: 41,
      query: "lock table device_test in access exclusive mode",
      modes: ["AccessExclusiveLock"],
    }],
    lock_timeout: "1s",
  })],
};

const LOCK_TIMEOUT = refused("55P03", "canceling statement due to lock timeout");

Deno.test("writeBatch: a lock_timeout (55P03) is a lock wait: retried on the same session, holder named", async () => {
  const server = new FakeServer((keys, n, sql) =>
    sql.includes("holder_pids") ? HOLDERS_REPLY : n === 1 ? LOCK_TIMEOUT : ok(keys)
  );
  const { ctx, retries } = context(server);
  ctx.health.answered = false;
  const result = await writeBatch(items(keysOf(6)), "b1", ctx);
  assert.ok(result.outcomes.every((o) => o.ok));
  // Not split, not a new session: the same batch again on the same psql.
  assert.deepEqual(server.statements.map((s) => s.length), [6, 0, 6]);
  assert.equal(server.runners.length, 1);
  assert.equal(server.runners[0].killed, false);
  assert.equal(retries.length, 1);
  assert.match(
    retries[0].reason,
    /^Waiting for a lock on device_test, held by pid 4242 \(lab, psql, idle in transaction for 41 s, AccessExclusiveLock: lock table device_test in access exclusive mode\); the server's lock_timeout \(1s\) ended this try: 55P03: /,
  );
  assert.doesNotMatch(retries[0].reason, /unreachable/i);
  // The server answered: no outage streak began.
  assert.equal(ctx.health.failingSince, null);
  assert.equal(ctx.health.answered, true);
  await ctx.pool.close();
});

Deno.test("writeBatch: a lock held past the deadline stops as blocked (exit 3), never unreachable", async () => {
  let clock = 1_000_000;
  const server = new FakeServer((_keys, _n, sql) => {
    if (sql.includes("holder_pids")) return HOLDERS_REPLY;
    clock += 700;
    return LOCK_TIMEOUT;
  });
  const { ctx, retries } = context(server, { giveUpAfterMs: 3_000, now: () => clock });
  const error = await thrown(writeBatch(items(keysOf(4)), "b1", ctx));
  assert.equal(error.kind, "blocked");
  assert.equal(exitCodeFor(error), 3);
  assert.match(
    error.message,
    /^Gave up on b1 after \d+ s of lock waits: Waiting for a lock on device_test, held by pid 4242/,
  );
  assert.doesNotMatch(`${error.message} ${error.hint}`, /unreachable|network|host and port/i);
  assert.match(error.hint ?? "", /pg_terminate_backend\(4242\)/);
  assert.ok(retries.length >= 3, `${retries.length} retries`);
  assert.equal(server.runners.length, 1, "a lock wait keeps its session");
  await ctx.pool.close();
});

Deno.test("writeBatch: a read-only database (25006) stops as a configuration error saying why", async () => {
  const facts = (recovery: boolean, source: string | null) => ({
    ok: true as const,
    rowCount: 1,
    rows: [JSON.stringify({
      recovery,
      default_read_only: !recovery,
      source,
      database: "uploads",
      role: "lab",
    })],
  });
  const cases = [
    {
      facts: facts(false, "database"),
      message: /default_transaction_read_only is on for database uploads/,
      hint:
        /set default_transaction_read_only = off; alter database uploads reset default_transaction_read_only/,
    },
    {
      facts: facts(false, "user"),
      message: /for role lab/,
      hint:
        /set default_transaction_read_only = off; alter role lab reset default_transaction_read_only/,
    },
    { facts: facts(true, null), message: /the server is a standby/, hint: /primary/ },
  ];
  for (const c of cases) {
    const server = new FakeServer((_keys, _n, sql) =>
      sql.includes("pg_is_in_recovery")
        ? c.facts
        : refused("25006", "cannot execute INSERT in a read-only transaction")
    );
    const { ctx, retries } = context(server);
    const error = await thrown(writeBatch(items(keysOf(3)), "b1", ctx));
    assert.equal(error.kind, "config");
    assert.equal(exitCodeFor(error), 2);
    assert.match(error.message, /^The database fake@127\.0\.0\.1:1\/db is read-only: /);
    assert.match(error.message, c.message);
    assert.match(error.message, /25006: cannot execute INSERT in a read-only transaction/);
    assert.match(error.hint ?? "", c.hint);
    assert.equal(retries.length, 0);
    assert.deepEqual(server.statements.map((s) => s.length), [3, 0], "no bisect, one check");
    await ctx.pool.close();
  }
});

Deno.test("writeBatch: a statement timeout splits the batch without charging folders", async () => {
  // The fake server times out on any statement of more than 4 rows.
  const server = new FakeServer((keys) =>
    keys.length > 4 ? refused("57014", "canceling statement due to statement timeout") : ok(keys)
  );
  const { ctx } = context(server);
  const result = await writeBatch(items(keysOf(16)), "b1", ctx);
  assert.equal(result.outcomes.length, 16);
  assert.ok(result.outcomes.every((o) => o.ok));
  assert.deepEqual(server.statements.map((s) => s.length), [16, 8, 4, 4, 8, 4, 4]);
  await ctx.pool.close();
});

Deno.test("writeBatch: a server down past the deadline gives up as unreachable", async () => {
  let clock = 1_000_000;
  const server = new FakeServer(() => {
    clock += 700;
    return new UploadError("transient", "Cannot connect: Connection refused");
  });
  const { ctx, retries } = context(server, { giveUpAfterMs: 3_000, now: () => clock });
  const error = await thrown(writeBatch(items(keysOf(5)), "b1", ctx));
  assert.equal(error.kind, "unreachable");
  assert.match(error.message, /giving up/);
  assert.ok(error.hint, "an unreachable error carries a hint");
  assert.ok(retries.length >= 3 && retries.length <= 6, `${retries.length} retries`);
  await ctx.pool.close();
});

Deno.test("writeBatch: a failing streak is shared, so parallel batches give up together", async () => {
  const server = new FakeServer(() => new UploadError("transient", "Connection refused"));
  const { ctx } = context(server, { giveUpAfterMs: 1_000, now: () => 0 });
  ctx.health.failingSince = -5_000; // another batch has been failing for a while
  const error = await thrown(writeBatch(items(keysOf(2)), "b2", ctx));
  assert.equal(error.kind, "unreachable");
  assert.equal(server.statements.length, 1, "gave up after the first failure");
  await ctx.pool.close();
});

Deno.test("writeBatch: permission and schema errors stop the run as configuration errors", async () => {
  for (const [sqlstate, pattern] of [["42501", /Permission denied/], ["42P01", /42P01/]] as const) {
    const server = new FakeServer(() =>
      refused(sqlstate, "permission denied for table device_test")
    );
    const { ctx, retries } = context(server);
    const error = await thrown(writeBatch(items(keysOf(4)), "b1", ctx));
    assert.equal(error.kind, "config", sqlstate);
    assert.match(error.message, pattern);
    assert.equal(server.statements.length, 1, `${sqlstate} was retried or bisected`);
    assert.equal(retries.length, 0);
    if (sqlstate === "42501") assert.match(error.hint!, /policies|INSERT/);
    await ctx.pool.close();
  }
});

Deno.test("writeBatch: an aborted run sends nothing more", async () => {
  const abort = new AbortController();
  abort.abort();
  const server = new FakeServer((keys) => ok(keys));
  const { ctx } = context(server, { signal: abort.signal });
  const error = await thrown(writeBatch(items(keysOf(3)), "b1", ctx));
  assert.equal(error.kind, "interrupted");
  assert.equal(server.statements.length, 0);
  await ctx.pool.close();
});

Deno.test("ensureSchema: a refused schema statement is a configuration error naming the table", async () => {
  const server = new FakeServer(() => refused("42501", "permission denied for schema public"));
  const { ctx } = context(server);
  const error = await thrown(ensureSchema(ctx));
  assert.equal(error.kind, "config");
  assert.match(error.message, /device_test/);
  await ctx.pool.close();
});

// ---------------------------------------------------------------------------------------
// Session pool

Deno.test("SessionPool reuses idle sessions and drops dead ones", async () => {
  const server = new FakeServer((keys) => ok(keys));
  const pool = new SessionPool(server.factory);
  const a = await pool.acquire();
  const b = await pool.acquire();
  assert.notEqual(a, b);
  pool.release(a);
  assert.equal(await pool.acquire(), a, "an idle session is reused");
  (a as FakeRunner).alive = false;
  pool.release(a);
  pool.release(b);
  assert.equal(await pool.acquire(), b);
  const c = await pool.acquire();
  assert.ok(c !== a && c !== b, "a dead session is never handed out again");
  pool.release(c);
  pool.release(b);
  await pool.close();
  assert.ok(server.runners.filter((r) => r !== a).every((r) => r.closed));
});

// ---------------------------------------------------------------------------------------
// Against a real server

function socketConnection(pg: PgServer): PsqlConnection {
  return {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", TEST_USER, "-d", TEST_DATABASE],
    env: {},
    display: `${pg.socketDir}:${pg.port}/${TEST_DATABASE}`,
  };
}

Deno.test({
  name:
    "writeBatch against PostgreSQL: bisect on a CHECK constraint, counts, no rewrite of equal rows",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const pool = new SessionPool(psqlFactory(socketConnection(pg)));
    try {
      const ctx: WriteContext = {
        pool,
        table: "device_test",
        device: DEVICE,
        targetDisplay: "test server",
        giveUpAfterMs: 30_000,
        statementTimeoutMs: 60_000,
        signal: new AbortController().signal,
        health: { failingSince: null, answered: true },
      };
      const ready = { rekeyed: 0, notes: [], identity: null };
      assert.deepEqual(await ensureSchema(ctx), ready);
      assert.deepEqual(await ensureSchema(ctx), ready, "ensureSchema is idempotent");
      await pg.psql(
        "alter table device_test add constraint no_poison check (folder_name !~ '^poison')",
      );
      const keys = keysOf(40);
      keys[3] = "poison-a";
      keys[31] = "poison-b";
      const first = await writeBatch(items(keys), "batch_1", ctx);
      const map = outcomeMap(first);
      for (const key of keys) assert.equal(map.get(key)!.ok, !key.startsWith("poison"), key);
      assert.match(map.get("poison-a")!.error!, /23514.*no_poison/);
      assert.equal(first.inserted, 38);
      assert.equal((await pg.psql("select count(*) from device_test")).trim(), "38");

      const good = keys.filter((k) => !k.startsWith("poison"));
      const again = await writeBatch(items(good), "batch_2", ctx);
      assert.deepEqual([again.inserted, again.updated], [0, 0]);
      assert.equal(
        (await pg.psql("select count(*) from device_test where upload_batch = 'batch_2'")).trim(),
        "0",
      );
      const changed = items(good.slice(0, 3));
      for (const c of changed) {
        c.row.metadata = { content_hash: "new" };
        c.json = rowToJson(c.row); // the JSON text is what travels
      }
      const third = await writeBatch(changed, "batch_3", ctx);
      assert.deepEqual([third.inserted, third.updated], [0, 3]);
    } finally {
      await pool.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "writeBatch against PostgreSQL: a killed backend is retried on a new session",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const pool = new SessionPool(psqlFactory(socketConnection(pg)));
    try {
      const retries: RetryNotice[] = [];
      const ctx: WriteContext = {
        pool,
        table: "device_test",
        device: DEVICE,
        targetDisplay: "test server",
        giveUpAfterMs: 30_000,
        statementTimeoutMs: 60_000,
        backoff: { initialMs: 10, maxMs: 50, jitter: 0 },
        signal: new AbortController().signal,
        health: { failingSince: null, answered: true },
        onRetry: (n) => retries.push(n),
      };
      await ensureSchema(ctx);
      // Every session the pool holds is terminated behind its back.
      await pg.psql(
        "select pg_terminate_backend(pid) from pg_stat_activity " +
          "where application_name = 'folder-uploader'",
      );
      const result = await writeBatch(items(keysOf(20)), "b1", ctx);
      assert.ok(result.outcomes.every((o) => o.ok));
      assert.equal(result.inserted, 20);
      assert.ok(retries.length >= 1, "the lost session was not noticed");
      assert.equal((await pg.psql("select count(*) from device_test")).trim(), "20");
    } finally {
      await pool.close();
      await pg.close();
    }
  },
});
