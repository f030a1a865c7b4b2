/** The session pool (lib/sink/postgres/pool.ts) with stand-in runners. */

import assert from "node:assert/strict";
import { SessionPool, type StatementRunner } from "../../../lib/sink/postgres/pool.ts";
import type { StatementReply } from "../../../lib/sink/postgres/psql.ts";

/** A runner that answers nothing but records how it ended. */
class StubRunner implements StatementRunner {
  alive = true;
  closed = false;
  killed = false;

  run(): Promise<StatementReply> {
    return Promise.resolve({ ok: true, rows: [], rowCount: 0 });
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

function stubs() {
  const runners: StubRunner[] = [];
  const factory = () => {
    const runner = new StubRunner();
    runners.push(runner);
    return Promise.resolve(runner);
  };
  return { runners, factory };
}

Deno.test("SessionPool reuses idle sessions and drops dead ones", async () => {
  const { runners, factory } = stubs();
  const pool = new SessionPool(factory);
  const a = await pool.acquire();
  const b = await pool.acquire();
  assert.notEqual(a, b);
  pool.release(a);
  assert.equal(await pool.acquire(), a, "an idle session is reused");
  (a as StubRunner).alive = false;
  pool.release(a);
  pool.release(b);
  assert.equal(await pool.acquire(), b);
  const c = await pool.acquire();
  assert.ok(c !== a && c !== b, "a dead session is never handed out again");
  pool.release(c);
  pool.release(b);
  await pool.close();
  assert.ok(runners.filter((r) => r !== a).every((r) => r.closed));
});

Deno.test("SessionPool.kill kills every session, idle or in use", async () => {
  const { runners, factory } = stubs();
  const pool = new SessionPool(factory);
  const a = await pool.acquire();
  pool.release(await pool.acquire());
  pool.kill();
  assert.ok(runners.every((r) => r.killed));
  assert.notEqual(await pool.acquire(), a, "a fresh session after the kill");
  await pool.close();
});
