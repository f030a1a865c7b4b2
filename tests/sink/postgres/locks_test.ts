/**
 * Lock waits (lib/sink/postgres/locks.ts): the replies of the lock queries read, the holders described,
 * and the watch that looks while statements stay in flight — with a fake `exec` here; the
 * queries themselves run against a real server in tests/e2e/fault_errors_test.ts.
 */

import assert from "node:assert/strict";
import {
  buildLockHoldersStatement,
  buildLockWaitStatement,
  describeHolder,
  describeHolders,
  type LockHolder,
  lockWaitMessage,
  LockWatch,
  parseLockReport,
} from "../../../lib/sink/postgres/locks.ts";
import type { StatementReply } from "../../../lib/sink/postgres/psql.ts";
import { terminateStatement } from "../../../lib/sink/postgres/psql_text.ts";

const HOLDER: LockHolder = {
  pid: 4242,
  user: "lab",
  application: "psql",
  state: "idle in transaction",
  seconds: 41,
  query: "lock table device_test in access exclusive mode",
  modes: ["AccessExclusiveLock"],
};

function reply(value: unknown): StatementReply {
  return { ok: true, rows: [JSON.stringify(value)], rowCount: 1 };
}

Deno.test("parseLockReport reads the lock queries' one JSON line; hidden queries read as null", () => {
  const report = parseLockReport([JSON.stringify({
    waiting: [{ id: "s1", waited_ms: 6200 }],
    holders: [
      { ...HOLDER },
      {
        pid: 7,
        user: null,
        application: null,
        state: null,
        seconds: null,
        query: "<insufficient privilege>",
        modes: [],
      },
    ],
    lock_timeout: "0",
  })]);
  assert.deepEqual(report, {
    waiting: [{ id: "s1", waitedMs: 6200 }],
    holders: [HOLDER, {
      pid: 7,
      user: null,
      application: null,
      state: null,
      seconds: null,
      query: null,
      modes: [],
    }],
    lockTimeout: "0",
  });
  assert.equal(parseLockReport([]), undefined);
  assert.equal(parseLockReport(["not json"]), undefined);
  assert.equal(parseLockReport(['{"waiting":1}']), undefined);
});

Deno.test("describeHolders names pid, role, state, mode and statement; at most three", () => {
  assert.equal(
    describeHolder(HOLDER),
    "pid 4242 (lab, psql, idle in transaction for 41 s, AccessExclusiveLock: " +
      "lock table device_test in access exclusive mode)",
  );
  assert.equal(
    describeHolder({
      ...HOLDER,
      user: null,
      application: null,
      state: null,
      query: null,
      modes: [],
    }),
    "pid 4242",
  );
  assert.equal(describeHolders([]), "the server does not show who holds it");
  const many = [1, 2, 3, 4, 5].map((pid) => ({ ...HOLDER, pid }));
  assert.match(describeHolders(many), /^held by pid 1 .*; pid 3 \(.*\) and 2 more$/);
  assert.equal(
    lockWaitMessage(["batch_1"], 12_400, "device_test", [HOLDER]),
    `batch_1 has waited 12 s for a lock on device_test; held by ${describeHolder(HOLDER)}`,
  );
  assert.match(
    lockWaitMessage(["b1", "b2"], 5_000, "device_test", []),
    /^2 statements \(b1, b2\) have waited 5 s/,
  );
});

Deno.test("the lock queries are one statement each, for any table name", () => {
  for (const table of ["device_test", "lab.device_test", 'we"ird']) {
    terminateStatement(buildLockWaitStatement([{ id: "s1", parts: ["a'b", "c"] }], table));
    terminateStatement(buildLockHoldersStatement(table, "folder-uploader"));
  }
});

Deno.test("LockWatch looks once a statement is in flight long enough, reports once per holder set", async () => {
  const looked: string[] = [];
  const reports: { subjects: string[]; pids: number[] }[] = [];
  let answer = reply({ waiting: [], holders: [], lock_timeout: "0" });
  const watch = new LockWatch({
    table: "device_test",
    afterMs: 30,
    everyMs: 20,
    repeatMs: 60_000,
    exec: (sql) => {
      looked.push(sql);
      return Promise.resolve(answer);
    },
    onReport: (report, subjects) =>
      reports.push({ subjects, pids: report.holders.map((h) => h.pid) }),
  });
  // A statement answered quickly is never looked for.
  watch.track("fast", ["x"]).done();
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(looked.length, 0);
  // One that stays: looked for, found waiting, reported once while the holder stays.
  const slow = watch.track("batch_1", ['"upload_batch":"batch_1"', "dev"]);
  answer = reply({ waiting: [{ id: "s2", waited_ms: 40 }], holders: [HOLDER], lock_timeout: "0" });
  const deadline = Date.now() + 10_000;
  while (looked.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.ok(looked.length >= 3, `${looked.length} looks`);
  assert.ok(looked[0].includes("batch_1"), looked[0]);
  assert.deepEqual(reports, [{ subjects: ["batch_1"], pids: [4242] }]);
  assert.equal(slow.sawLock, true);
  assert.deepEqual(slow.holders.map((h) => h.pid), [4242]);
  // Another holder: reported again.
  answer = reply({
    waiting: [{ id: "s2", waited_ms: 90 }],
    holders: [{ ...HOLDER, pid: 5151 }],
    lock_timeout: "0",
  });
  while (reports.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(reports[1], { subjects: ["batch_1"], pids: [5151] });
  // Done: no more looks.
  slow.done();
  await watch.close();
  const after = looked.length;
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(looked.length, after);
});

Deno.test("LockWatch says nothing when a look fails", async () => {
  const reports: unknown[] = [];
  const watch = new LockWatch({
    table: "device_test",
    afterMs: 10,
    everyMs: 10,
    exec: () => Promise.reject(new Error("too many connections")),
    onReport: (r) => reports.push(r),
  });
  const s = watch.track("b1", ["b1"]);
  await new Promise((r) => setTimeout(r, 80));
  s.done();
  await watch.close();
  assert.deepEqual(reports, []);
  assert.equal(s.sawLock, false);
});
