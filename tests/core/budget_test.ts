/** The one limiter: slots and bytes granted in order, a large request alone, aborts. */

import assert from "node:assert/strict";
import { Budget } from "../../lib/core/budget.ts";

/** Lets queued promise callbacks run. */
const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("Budget: slots are granted in order of request", async () => {
  const budget = new Budget(2);
  const order: string[] = [];
  const a = await budget.acquire();
  const b = await budget.acquire();
  const c = budget.acquire().then((r) => (order.push("c"), r));
  const d = budget.acquire().then((r) => (order.push("d"), r));
  await tick();
  assert.deepEqual(order, []);
  assert.equal(budget.slotsInUse, 2);
  b();
  b(); // a second release does nothing
  await tick();
  assert.deepEqual(order, ["c"]);
  a();
  await tick();
  assert.deepEqual(order, ["c", "d"]);
  (await c)();
  (await d)();
  assert.equal(budget.slotsInUse, 0);
});

Deno.test("Budget: bytes bound what is held; a request over the whole budget goes alone", async () => {
  const budget = new Budget(Infinity, 100);
  const small = await budget.acquire({ bytes: 60 });
  let big = false;
  const large = budget.acquire({ bytes: 500 }).then((r) => (big = true, r));
  let after = false;
  const later = budget.acquire({ bytes: 10 }).then((r) => (after = true, r));
  await tick();
  assert.equal(big, false, "waits while anything is held");
  assert.equal(after, false, "first come, first served: no overtaking the large one");
  small();
  await tick();
  assert.equal(big, true);
  assert.equal(budget.bytesInUse, 100);
  (await large)();
  await tick();
  assert.equal(after, true);
  (await later)();
  assert.equal(budget.bytesInUse, 0);
});

Deno.test("Budget: room() waits for bytes and takes nothing", async () => {
  const budget = new Budget(1, 10);
  const held = await budget.acquire({ bytes: 8 });
  let roomy = false;
  const room = budget.room(5).then(() => roomy = true);
  await tick();
  assert.equal(roomy, false);
  held();
  await room;
  assert.equal(budget.bytesInUse, 0);
  assert.equal(budget.slotsInUse, 0);
});

Deno.test("Budget: an aborted wait takes nothing and lets the next one through", async () => {
  const budget = new Budget(1);
  const held = await budget.acquire();
  const stop = new AbortController();
  const aborted = budget.acquire({}, stop.signal);
  let next = false;
  const waiting = budget.acquire().then((r) => (next = true, r));
  stop.abort(new Error("stopped"));
  await assert.rejects(aborted, /stopped/);
  held();
  await tick();
  assert.equal(next, true);
  (await waiting)();
  await assert.rejects(budget.acquire({}, stop.signal), /stopped/);
});
