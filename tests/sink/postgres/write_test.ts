/**
 * The write path (lib/sink/postgres/write.ts, and the schema step of prepare.ts) without a
 * server: bisecting batches the server refuses for their data, retry classification
 * (transient -> backoff and a fresh session; a lock wait -> backoff on the same session;
 * data -> bisect, never retried; permission and schema problems -> configuration errors; a
 * server gone past the deadline -> unreachable), the retry schedule pinned wait by wait with
 * a fake clock (the connect window, the last attempt at the deadline, the cap), and COPY
 * given up for single statements.
 *
 * The tests use a fake StatementRunner: unit tests of control flow (which statements are
 * sent, in which order, how long is waited, what each folder's outcome is), where a fake
 * server answers any SQLSTATE on cue. Whether real SQL does what the fake pretends is
 * proven by sink_test.ts and tests/e2e/upload_test.ts, against a real PostgreSQL.
 */

import assert from "node:assert/strict";
import { rowToJson } from "../../../lib/sink/payload.ts";
import { exitCodeFor, UploadError } from "../../../lib/core/errors.ts";
import { FailureClock, type RetryNotice } from "../../../lib/core/retry.ts";
import { items, keysOf, row } from "../../../support/rows.ts";
import { SessionPool, type StatementRunner } from "../../../lib/sink/postgres/pool.ts";
import { prepareTarget } from "../../../lib/sink/postgres/prepare.ts";
import type { StatementReply } from "../../../lib/sink/postgres/psql.ts";
import {
  writeBatch,
  type WritePath,
  type WriteSettings,
  WriteState,
} from "../../../lib/sink/postgres/write.ts";
const DEVICE = { id: "0f0e0d0c-0b0a-4909-8807-060504030201", name: "writer-test", type: "t" };

/** The folder_keys inside an upsert statement's JSON payload (reads sqlLiteral's quoting). */
function payloadKeys(sql: string): string[] {
  const match = /select (E?)'((?:[^'\\]|''|\\.)*)'::jsonb as p/s.exec(sql);
  assert.ok(match, `no payload in ${sql.slice(0, 200)}`);
  let body = match[2].replaceAll("''", "'");
  if (match[1] === "E") body = body.replace(/\\(.)/gs, "$1");
  return (JSON.parse(body) as { rows: { folder_key: string }[] }).rows.map((r) => r.folder_key);
}

/** The folder_keys of a COPY script's data lines (each `\{metadata}\tkey\t...`). */
function copyKeys(script: string): string[] {
  return script.split("\n").filter((line) => line.startsWith("\\{")).map((line) =>
    line.split("\t")[1]
  );
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
    const keys = sql.includes("copy pg_temp.upload_rows from stdin")
      ? copyKeys(sql)
      : sql.includes("jsonb_to_recordset(payload.p->'rows')")
      ? payloadKeys(sql)
      : [];
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

/** A fake clock whose sleep moves time forward and records every wait. */
function fakeTime(start = 1_000_000) {
  let t = start;
  const waits: number[] = [];
  return {
    now: () => t,
    sleep: (ms: number) => {
      waits.push(ms);
      t += ms;
      return Promise.resolve();
    },
    advance: (ms: number) => t += ms,
    waits,
  };
}

interface PathOptions {
  giveUpAfterMs?: number;
  connectWindowMs?: number;
  /** The server answered earlier in the run. Default true. */
  answered?: boolean;
  copyRows?: boolean;
  signal?: AbortSignal;
  /** The schedule; default: 1-4 ms without jitter (the schedule tests pin the real one). */
  backoff?: WriteSettings["backoff"];
  time?: ReturnType<typeof fakeTime>;
  /** The jitter's random source. Default 0.5: a factor of exactly 1. */
  random?: () => number;
  stopping?: AbortSignal;
}

/** A write path on the fake server's sessions, its retries and warnings recorded. */
function writePath(server: FakeServer, options: PathOptions = {}) {
  const retries: RetryNotice[] = [];
  const warnings: string[] = [];
  const clock = new FailureClock();
  if (options.answered ?? true) clock.succeeded();
  const pool = new SessionPool(server.factory);
  const time = options.time ?? fakeTime();
  const path: WritePath = {
    settings: {
      table: "device_test",
      device: DEVICE,
      targetDisplay: "fake@127.0.0.1:1/db",
      giveUpAfterMs: options.giveUpAfterMs ?? 60_000,
      connectWindowMs: options.connectWindowMs,
      backoff: options.backoff ?? { initialMs: 1, maxMs: 4, jitter: 0 },
    },
    state: new WriteState({ copyRows: options.copyRows ?? false, clock }),
    edges: {
      pool,
      signal: options.signal ?? new AbortController().signal,
      onRetry: (n) => retries.push(n),
      onWarning: (m) => warnings.push(m),
      now: time.now,
      sleep: time.sleep,
      random: options.random ?? (() => 0.5), // jitter factor exactly 1
      stopping: options.stopping,
    },
  };
  return { path, pool, retries, warnings, time, clock };
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
  const { path, pool, retries } = writePath(server);
  const batch = items(keysOf(50));
  const result = await writeBatch(batch, "b1", path);
  assert.equal(result.statements, 1);
  assert.equal(result.inserted, 50);
  assert.equal(result.outcomes.length, 50);
  assert.ok(result.outcomes.every((o) => o.ok));
  assert.deepEqual(server.statements, [keysOf(50)]);
  assert.equal(retries.length, 0);
  await pool.close();
});

Deno.test("writeBatch: one refused row among 64 is found in 13 statements", async () => {
  const keys = keysOf(64);
  const server = new FakeServer(refusing(new Set([keys[37]])));
  const { path, pool, retries } = writePath(server);
  const result = await writeBatch(items(keys), "b1", path);
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
  await pool.close();
});

Deno.test("writeBatch: several refused rows, and a batch where every row is refused", async () => {
  const keys = keysOf(100);
  const bad = new Set([keys[0], keys[50], keys[51], keys[99]]);
  const server = new FakeServer(refusing(bad, "23505"));
  const { path, pool } = writePath(server);
  const map = outcomeMap(await writeBatch(items(keys), "b1", path));
  for (const key of keys) assert.equal(map.get(key)!.ok, !bad.has(key), key);
  for (const key of bad) assert.match(map.get(key)!.error!, /23505/);

  const all = keysOf(8, "x");
  const server2 = new FakeServer(refusing(new Set(all), "22P02"));
  const { path: path2, pool: pool2 } = writePath(server2);
  const result = await writeBatch(items(all), "b2", path2);
  assert.ok(result.outcomes.every((o) => !o.ok));
  assert.equal(result.statements, 15); // the whole tree: 8 + 4 + 2 + 1
  await pool.close();
  await pool2.close();
});

Deno.test("writeBatch: a row PostgreSQL cannot store is isolated without being sent", async () => {
  const keys = keysOf(8);
  const batch = items(keys);
  const bad = row(keys[5], { test_results: { note: "\ud800" } });
  batch[5] = { path: "/data/bad", row: bad, json: rowToJson(bad) };
  const server = new FakeServer((k) => ok(k));
  const { path, pool } = writePath(server);
  const result = await writeBatch(batch, "b1", path);
  const map = outcomeMap(result);
  for (const key of keys) assert.equal(map.get(key)!.ok, key !== keys[5], key);
  assert.match(map.get(keys[5])!.error!, /surrogate/);
  assert.ok(!server.statements.flat().includes(keys[5]), "the bad row was sent");
  assert.deepEqual(server.statements.flat().sort(), keys.filter((k) => k !== keys[5]).sort());
  await pool.close();
});

// ---------------------------------------------------------------------------------------
// Retry classification

Deno.test("writeBatch: a lost connection is retried on a fresh session, charging no folder", async () => {
  const server = new FakeServer((keys, n) =>
    n <= 2 ? new UploadError("transient", "Connection to fake lost: server closed") : ok(keys)
  );
  const { path, pool, retries } = writePath(server);
  const result = await writeBatch(items(keysOf(10)), "b1", path);
  assert.ok(result.outcomes.every((o) => o.ok));
  assert.equal(result.outcomes.length, 10);
  assert.deepEqual(retries.map((r) => r.attempt), [1, 2]);
  assert.ok(retries.every((r) => r.subject === "b1" && /lost/.test(r.reason)));
  // The two dead sessions were killed and replaced.
  assert.equal(server.runners.length, 3);
  assert.ok(server.runners[0].killed && server.runners[1].killed);
  assert.equal(path.state.clock.since, null, "a success ends the failing streak");
  await pool.close();
});

Deno.test("writeBatch: transient SQLSTATEs in a reply are retried, not bisected", async () => {
  for (const sqlstate of ["40001", "40P01", "53300", "57P01", "08006"]) {
    const server = new FakeServer((keys, n) => n === 1 ? refused(sqlstate, "try again") : ok(keys));
    const { path, pool, retries } = writePath(server);
    const result = await writeBatch(items(keysOf(6)), "b1", path);
    assert.ok(result.outcomes.every((o) => o.ok), sqlstate);
    assert.equal(retries.length, 1, sqlstate);
    assert.deepEqual(server.statements.map((s) => s.length), [6, 6], sqlstate);
    await pool.close();
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
  const { path, pool, retries, clock } = writePath(server, { answered: false });
  const result = await writeBatch(items(keysOf(6)), "b1", path);
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
  assert.equal(clock.since, null);
  assert.equal(clock.answered, true);
  await pool.close();
});

Deno.test("writeBatch: a lock held past the deadline stops as blocked (exit 3), never unreachable", async () => {
  const time = fakeTime();
  const server = new FakeServer((_keys, _n, sql) => {
    if (sql.includes("holder_pids")) return HOLDERS_REPLY;
    time.advance(700);
    return LOCK_TIMEOUT;
  });
  const { path, pool, retries } = writePath(server, { giveUpAfterMs: 3_000, time });
  const error = await thrown(writeBatch(items(keysOf(4)), "b1", path));
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
  await pool.close();
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
    const { path, pool, retries } = writePath(server);
    const error = await thrown(writeBatch(items(keysOf(3)), "b1", path));
    assert.equal(error.kind, "config");
    assert.equal(exitCodeFor(error), 2);
    assert.match(error.message, /^The database fake@127\.0\.0\.1:1\/db is read-only: /);
    assert.match(error.message, c.message);
    assert.match(error.message, /25006: cannot execute INSERT in a read-only transaction/);
    assert.match(error.hint ?? "", c.hint);
    assert.equal(retries.length, 0);
    assert.deepEqual(server.statements.map((s) => s.length), [3, 0], "no bisect, one check");
    await pool.close();
  }
});

Deno.test("writeBatch: a statement timeout splits the batch without charging folders", async () => {
  // The fake server times out on any statement of more than 4 rows.
  const server = new FakeServer((keys) =>
    keys.length > 4 ? refused("57014", "canceling statement due to statement timeout") : ok(keys)
  );
  const { path, pool } = writePath(server);
  const result = await writeBatch(items(keysOf(16)), "b1", path);
  assert.equal(result.outcomes.length, 16);
  assert.ok(result.outcomes.every((o) => o.ok));
  assert.deepEqual(server.statements.map((s) => s.length), [16, 8, 4, 4, 8, 4, 4]);
  await pool.close();
});

Deno.test("writeBatch: a server down past the deadline gives up as unreachable", async () => {
  const time = fakeTime();
  const server = new FakeServer(() => {
    time.advance(700);
    return new UploadError("transient", "Cannot connect: Connection refused");
  });
  const { path, pool, retries } = writePath(server, { giveUpAfterMs: 3_000, time });
  const error = await thrown(writeBatch(items(keysOf(5)), "b1", path));
  assert.equal(error.kind, "unreachable");
  assert.match(error.message, /giving up/);
  assert.ok(error.hint, "an unreachable error carries a hint");
  assert.ok(retries.length >= 3 && retries.length <= 6, `${retries.length} retries`);
  await pool.close();
});

Deno.test("writeBatch: a failing streak is shared, so parallel batches give up together", async () => {
  const server = new FakeServer(() => new UploadError("transient", "Connection refused"));
  const { path, pool, clock, time } = writePath(server, { giveUpAfterMs: 1_000 });
  clock.failed(time.now() - 5_000); // another batch has been failing for a while
  const error = await thrown(writeBatch(items(keysOf(2)), "b2", path));
  assert.equal(error.kind, "unreachable");
  assert.equal(server.statements.length, 1, "gave up after the first failure");
  await pool.close();
});

Deno.test("writeBatch: permission and schema errors stop the run as configuration errors", async () => {
  for (const [sqlstate, pattern] of [["42501", /Permission denied/], ["42P01", /42P01/]] as const) {
    const server = new FakeServer(() =>
      refused(sqlstate, "permission denied for table device_test")
    );
    const { path, pool, retries } = writePath(server);
    const error = await thrown(writeBatch(items(keysOf(4)), "b1", path));
    assert.equal(error.kind, "config", sqlstate);
    assert.match(error.message, pattern);
    assert.equal(server.statements.length, 1, `${sqlstate} was retried or bisected`);
    assert.equal(retries.length, 0);
    if (sqlstate === "42501") assert.match(error.hint!, /policies|INSERT/);
    await pool.close();
  }
});

Deno.test("writeBatch: an aborted run sends nothing more", async () => {
  const abort = new AbortController();
  abort.abort();
  const server = new FakeServer((keys) => ok(keys));
  const { path, pool } = writePath(server, { signal: abort.signal });
  const error = await thrown(writeBatch(items(keysOf(3)), "b1", path));
  assert.equal(error.kind, "interrupted");
  assert.equal(server.statements.length, 0);
  await pool.close();
});

Deno.test("prepareTarget: a refused schema statement is a configuration error naming the table", async () => {
  const server = new FakeServer(() => refused("42501", "permission denied for schema public"));
  const { path, pool } = writePath(server);
  const error = await thrown(prepareTarget(path));
  assert.equal(error.kind, "config");
  assert.match(error.message, /device_test/);
  await pool.close();
});

// ---------------------------------------------------------------------------------------
// The retry schedule, pinned with a fake clock

const LOST = () => new UploadError("transient", "Connection to fake lost: server closed");

Deno.test("schedule: an outage waits 0.5 s doubling to the 30 s cap; the last attempt at the deadline", async () => {
  const server = new FakeServer(LOST);
  const { path, pool, retries, time } = writePath(server, { giveUpAfterMs: 100_000, backoff: {} });
  const error = await thrown(writeBatch(items(keysOf(3)), "b1", path));
  // 91.5 s waited before the ninth wait, cut to the 8.5 s left; the tenth try is the last.
  assert.deepEqual(time.waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 8500]);
  assert.deepEqual(
    retries.map((r) => [r.attempt, r.delayMs]),
    time.waits.map((w, i) => [i + 1, w]),
  );
  assert.equal(server.statements.length, 10);
  assert.equal(error.kind, "unreachable");
  assert.match(error.message, /^Server fake@127\.0\.0\.1:1\/db unreachable for 100 s, giving up: /);
  await pool.close();
});

Deno.test("schedule: the jitter scales each wait within ±50 %", async () => {
  for (const [random, first] of [[0, 250], [0.999999, 750]] as const) {
    const server = new FakeServer(LOST);
    const { path, pool, time } = writePath(server, {
      giveUpAfterMs: 4000,
      backoff: {},
      random: () => random,
    });
    await thrown(writeBatch(items(keysOf(1)), "b1", path));
    assert.equal(time.waits[0], first);
    assert.equal(time.waits[1], first * 2);
    await pool.close();
  }
});

Deno.test("schedule: a server never reached gives up after the connect window, one that answered after give-up-after", async () => {
  const server = new FakeServer(LOST);
  const never = writePath(server, {
    answered: false,
    connectWindowMs: 3_000,
    giveUpAfterMs: 60_000,
    backoff: {},
  });
  const error = await thrown(writeBatch(items(keysOf(2)), "b1", never.path));
  assert.deepEqual(never.time.waits, [500, 1000, 1500]);
  assert.equal(error.kind, "unreachable");
  assert.match(
    error.message,
    /unreachable: no connection in 3 s of trying: Connection to fake lost/,
  );
  await never.pool.close();

  const answered = writePath(server, { connectWindowMs: 3_000, giveUpAfterMs: 8_000, backoff: {} });
  await thrown(writeBatch(items(keysOf(2)), "b1", answered.path));
  assert.deepEqual(answered.time.waits, [500, 1000, 2000, 4000, 500], "the whole give-up-after");
  await answered.pool.close();

  const unset = writePath(server, { answered: false, giveUpAfterMs: 60_000, backoff: {} });
  await thrown(writeBatch(items(keysOf(2)), "b1", unset.path));
  assert.deepEqual(unset.time.waits, [500, 1000, 2000, 4000, 7500], "a 15 s window by default");
  await unset.pool.close();
});

Deno.test("schedule: lock waits follow the same schedule on one session, with a deadline of their own", async () => {
  const server = new FakeServer((_keys, n, sql) =>
    sql.includes("holder_pids") ? HOLDERS_REPLY : n <= 2 ? LOST() : LOCK_TIMEOUT
  );
  const { path, pool, retries, time, clock } = writePath(server, {
    giveUpAfterMs: 10_000,
    backoff: {},
  });
  const error = await thrown(writeBatch(items(keysOf(2)), "b1", path));
  // Two lost sessions (0.5 s, 1 s), then lock waits from 1.5 s on: 2 s, 4 s, then the 4 s
  // left of their own 10 s: the outage's clock stopped when the server answered.
  assert.deepEqual(time.waits, [500, 1000, 2000, 4000, 4000]);
  assert.deepEqual(retries.map((r) => r.attempt), [1, 2, 3, 4, 5]);
  assert.equal(error.kind, "blocked");
  assert.match(error.message, /^Gave up on b1 after 10 s of lock waits: /);
  assert.equal(clock.since, null, "a lock wait is no outage");
  assert.equal(server.runners.length, 3, "two lost sessions replaced, then one kept");
  await pool.close();
});

Deno.test("schedule: a schema step the server cancels (57014) is tried three times, then a configuration error", async () => {
  const server = new FakeServer(() =>
    refused("57014", "canceling statement due to statement timeout")
  );
  const { path, pool, retries, time } = writePath(server, { backoff: {} });
  const error = await thrown(prepareTarget(path));
  assert.deepEqual(time.waits, [500, 1000]);
  assert.deepEqual(retries.map((r) => r.subject), ["schema", "schema"]);
  assert.equal(error.kind, "config");
  assert.equal(error.sqlstate, "57014");
  assert.match(error.message, /statement_timeout cancelled the schema step 3 times/);
  assert.equal(server.statements.length, 3, "one inspection per attempt");
  await pool.close();
});

Deno.test("writeBatch: a run that is stopping or abandons retries nothing more", async () => {
  const stopping = new AbortController();
  const server = new FakeServer(() => {
    stopping.abort(); // a service manager's stop arrives while the batch is in flight
    return LOST();
  });
  const stopped = writePath(server, { stopping: stopping.signal, backoff: {} });
  const error = await thrown(writeBatch(items(keysOf(2)), "b1", stopped.path));
  assert.equal(error.kind, "interrupted");
  assert.equal(error.message, "Interrupted while b1 was written");
  assert.deepEqual(stopped.time.waits, []);
  await stopped.pool.close();

  const abandon = new AbortController();
  const abandoned = writePath(new FakeServer(LOST), { signal: abandon.signal, backoff: {} });
  const path: WritePath = {
    ...abandoned.path,
    edges: {
      ...abandoned.path.edges,
      sleep: (ms) => {
        abandoned.time.waits.push(ms);
        abandon.abort();
        return Promise.resolve();
      },
    },
  };
  const gone = await thrown(writeBatch(items(keysOf(2)), "b2", path));
  assert.equal(gone.message, "Interrupted before b2 was written");
  assert.deepEqual(abandoned.time.waits, [500]);
  await abandoned.pool.close();
});

// ---------------------------------------------------------------------------------------
// COPY

Deno.test("writeBatch: a role without TEMPORARY: batches go as statements, one warning", async () => {
  const server = new FakeServer((keys, _n, sql) =>
    sql.includes("copy pg_temp.upload_rows")
      ? refused("42501", 'permission denied to create temporary tables in database "db"')
      : ok(keys)
  );
  const { path, pool, warnings } = writePath(server, { copyRows: true });
  const [a, b] = await Promise.all([
    writeBatch(items(keysOf(3, "a")), "b1", path),
    writeBatch(items(keysOf(2, "b")), "b2", path),
  ]);
  assert.ok([...a.outcomes, ...b.outcomes].every((o) => o.ok));
  assert.equal(path.state.copyRows, false);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /refuses temporary tables to this role \(42501\)/);
  // Each batch: the refused script, then the statement.
  assert.deepEqual(server.statements.map((s) => s.length).sort(), [2, 2, 3, 3]);
  const later = await writeBatch(items(keysOf(1, "c")), "b3", path);
  assert.equal(later.statements, 1, "later batches go as statements at once");
  await pool.close();
});
