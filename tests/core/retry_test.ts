/**
 * The retry helper with a fake clock and sleep: the schedule is pinned wait by wait, so a
 * change to the backoff (its start, its doubling, its cap, the jitter, the deadline rule)
 * fails here.
 */

import assert from "node:assert/strict";
import {
  backoffDelay,
  FailureClock,
  type GiveUp,
  retry,
  type RetryOptions,
} from "../../lib/core/retry.ts";

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

class Flaky extends Error {}

/** Options with the fake time, retrying Flaky errors, no jitter. */
function options(time: ReturnType<typeof fakeTime>, extra: Partial<RetryOptions> = {}) {
  const gaveUp: GiveUp[] = [];
  const base: RetryOptions = {
    subject: "batch_1",
    classify: (e) => ({ retry: e instanceof Flaky }),
    giveUp: (e, why) => {
      gaveUp.push(why);
      return new Error(`gave up: ${(e as Error).message}`);
    },
    interrupted: () => new Error("interrupted"),
    now: time.now,
    sleep: time.sleep,
    random: () => 0.5, // jitter factor exactly 1
    ...extra,
  };
  return { options: base, gaveUp };
}

Deno.test("backoffDelay: 0.5 s doubling, capped at 30 s, jitter within ±50 %", () => {
  const waits = Array.from({ length: 9 }, (_, i) => backoffDelay(i + 1, {}, () => 0.5));
  assert.deepEqual(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(1, {}, () => 0), 250);
  assert.equal(backoffDelay(1, {}, () => 0.999999), 750);
  assert.equal(
    backoffDelay(7, {}, () => 0.999999),
    30000,
    "jitter never lifts a wait past the cap",
  );
  assert.equal(backoffDelay(3, { initialMs: 100, maxMs: 1000, jitter: 0 }), 400);
});

Deno.test("retry: succeeds after failures, waiting the schedule, and reports each retry", async () => {
  const time = fakeTime();
  const notices: string[] = [];
  const { options: o } = options(time, {
    onRetry: (n) => notices.push(`${n.subject} ${n.attempt} ${n.delayMs} ${n.reason}`),
  });
  let calls = 0;
  const result = await retry((n) => {
    calls++;
    assert.equal(n, calls);
    if (calls <= 4) throw new Flaky(`lost ${calls}`);
    return Promise.resolve("ok");
  }, o);
  assert.equal(result, "ok");
  assert.deepEqual(time.waits, [500, 1000, 2000, 4000]);
  assert.deepEqual(notices, [
    "batch_1 1 500 lost 1",
    "batch_1 2 1000 lost 2",
    "batch_1 3 2000 lost 3",
    "batch_1 4 4000 lost 4",
  ]);
});

Deno.test("retry: an error it does not retry is thrown at once, as it is", async () => {
  const time = fakeTime();
  const { options: o } = options(time);
  const refused = new Error("23514: check violated");
  await assert.rejects(() => retry(() => Promise.reject(refused), o), (e) => e === refused);
  assert.deepEqual(time.waits, []);
});

Deno.test("retry: the last attempt comes at the deadline, not a backoff step after it", async () => {
  const time = fakeTime();
  const { options: o, gaveUp } = options(time, { deadlineMs: 10_000 });
  await assert.rejects(() => retry(() => Promise.reject(new Flaky("refused")), o), /gave up/);
  // 500 + 1000 + 2000 + 4000 = 7500; the next wait (8000) is cut to the 2500 left.
  assert.deepEqual(time.waits, [500, 1000, 2000, 4000, 2500]);
  assert.deepEqual(gaveUp, [{ attempts: 6, elapsedMs: 10_000, deadline: true }]);
});

Deno.test("retry: a wait the service asks for is honoured, or gives up when it passes the deadline", async () => {
  const time = fakeTime();
  const { options: o, gaveUp } = options(time, {
    deadlineMs: 60_000,
    classify: (e) =>
      e instanceof Flaky ? { retry: true, afterMs: Number(e.message) } : { retry: false },
  });
  const asks = ["5000", "100", "90000"];
  await assert.rejects(() => retry(() => Promise.reject(new Flaky(asks.shift()!)), o), /gave up/);
  assert.deepEqual(time.waits, [5000, 1000]);
  assert.deepEqual(gaveUp, [{ attempts: 3, elapsedMs: 6000, deadline: true, askedMs: 90000 }]);
});

Deno.test("retry: at most `attempts` tries, then giveUp (the deadline not reached)", async () => {
  const time = fakeTime();
  const { options: o, gaveUp } = options(time, { attempts: 3 });
  let calls = 0;
  await assert.rejects(() => retry(() => (calls++, Promise.reject(new Flaky("57014"))), o));
  assert.equal(calls, 3);
  assert.deepEqual(time.waits, [500, 1000]);
  assert.deepEqual(gaveUp, [{ attempts: 3, elapsedMs: 1500, deadline: false }]);
});

Deno.test("retry: a shared clock times the streak across callers; a success ends it", async () => {
  const time = fakeTime();
  const clock = new FailureClock();
  const { options: o, gaveUp } = options(time, { deadlineMs: 3000, clock });
  // Another caller has been failing for 2.9 s already.
  clock.failed(time.now());
  time.advance(2900);
  await assert.rejects(() => retry(() => Promise.reject(new Flaky("down")), o));
  assert.deepEqual(time.waits, [100], "only what was left of the shared window is waited");
  assert.equal(gaveUp[0].elapsedMs, 3000);

  const fresh = new FailureClock();
  fresh.failed(time.now());
  await retry(() => Promise.resolve(1), { ...o, clock: fresh });
  assert.equal(fresh.since, null);
  assert.equal(fresh.answered, true);
});

Deno.test("retry: the deadline may depend on whether the service ever answered", async () => {
  const time = fakeTime();
  const clock = new FailureClock();
  const deadlineMs = (c: FailureClock) => c.answered ? 300_000 : 2000;
  const { options: o } = options(time, { deadlineMs, clock });
  await assert.rejects(() => retry(() => Promise.reject(new Flaky("refused")), o));
  assert.deepEqual(time.waits, [500, 1000, 500], "never reached: the short window");
});

Deno.test("retry: an abort ends the loop with the caller's interrupted error", async () => {
  const time = fakeTime();
  const stop = new AbortController();
  const { options: o } = options(time, {
    signal: stop.signal,
    sleep: (ms) => {
      time.waits.push(ms);
      stop.abort();
      return Promise.resolve();
    },
  });
  let calls = 0;
  await assert.rejects(
    () => retry(() => (calls++, Promise.reject(new Flaky("x"))), o),
    /interrupted/,
  );
  assert.equal(calls, 1);
  stop.abort();
  await assert.rejects(() => retry(() => Promise.resolve(1), o), /interrupted/);
});

Deno.test("retry: a failure of another sort times its own streak, one attempt counter for both", async () => {
  const time = fakeTime();
  const clock = new FailureClock();
  const locks = new FailureClock();
  class Blocked extends Error {}
  const { options: o, gaveUp } = options(time, {
    clock,
    deadlineMs: 60_000,
    classify: (e) =>
      e instanceof Blocked
        ? { retry: true, streak: { clock: locks, deadlineMs: 4000 } }
        : { retry: e instanceof Flaky },
  });
  let calls = 0;
  await assert.rejects(() =>
    retry(() => (calls++, Promise.reject(calls === 1 ? new Flaky("lost") : new Blocked("lock"))), o)
  );
  // 500 after the lost connection; the lock streak begins 500 ms in: 1000, 2000, then the
  // 1000 left of its 4 s (its own deadline, not the outage's 60 s); attempts count on.
  assert.deepEqual(time.waits, [500, 1000, 2000, 1000]);
  assert.equal(calls, 5);
  assert.deepEqual(gaveUp, [{ attempts: 5, elapsedMs: 4000, deadline: true }]);
  assert.equal(clock.since, 1_000_000, "the outage streak is the first failure's");
  assert.equal(locks.since, 1_000_500);
});
