/**
 * The planner without a server: real folders on disk, no tracker, a fake batch sink and a
 * fixed clock. Batches close at the batch size, at the byte bound and when a key would
 * repeat; folders still being written wait in the settle queue in due order; folders
 * named on purpose that never settle fail; a dry run counts bytes and sends nothing; a bad
 * stats.json fails its folder alone.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_CONFIG, type UploaderConfig } from "../../config.ts";
import { type EngineEvent, newCounters, type RunMode } from "../../lib/core/events.ts";
import { Run } from "../../lib/engine/run.ts";
import { settingsOf } from "../../lib/engine/options.ts";
import { type PlannedBatch, Planner, SettleQueue } from "../../lib/plan/planner.ts";
import { snapshotFolder } from "../../lib/source/snapshot.ts";
import type { SourceItem } from "../../lib/source/sources.ts";
import { tempDir, type TreeSpec, writeTree } from "../../support/tree.ts";

const NOW = Date.UTC(2025, 5, 2, 12, 0, 0);
const OLD = NOW - 3_600_000;

/** A planner over a run with no tracker, its batches, events and settle queue. */
function planner(config: Partial<UploaderConfig> = {}, mode: RunMode = "upload") {
  const batches: PlannedBatch[] = [];
  const events: EngineEvent[] = [];
  const run = new Run(settingsOf({
    config: { ...DEFAULT_CONFIG, ...config },
    mode,
    tracker: null,
    base: null,
    deviceId: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a",
    markers: false,
    counters: newCounters(),
    onEvent: (e) => events.push(e),
    now: () => NOW,
  }));
  const settle = new SettleQueue();
  const sink = mode === "dry-run" ? null : (batch: PlannedBatch) => {
    batches.push(batch);
    return Promise.resolve();
  };
  return { run, batches, events, settle, planner: new Planner(run, { sink, settle }) };
}

/** Folders `name -> stats` written under a temp dir, as source items of one base. */
function folders(root: string, spec: Record<string, unknown>, mtime = OLD): SourceItem[] {
  const tree: TreeSpec = {};
  for (const [name, stats] of Object.entries(spec)) {
    tree[`${name}/stats.json`] = typeof stats === "string"
      ? { text: stats, mtime }
      : { json: stats, mtime };
  }
  writeTree(root, tree);
  return Object.keys(spec).map((name) => {
    const found = snapshotFolder(join(root, name), { key: name });
    assert.equal(found.kind, "folder");
    return {
      kind: "folder" as const,
      snapshot: (found as Extract<typeof found, { kind: "folder" }>).snapshot,
      base: root,
      force: false,
      strict: false,
    };
  });
}

Deno.test("planner: batches close at the batch size; flush sends the rest", async () => {
  using dir = tempDir("planner_size_");
  const p = planner({ batchSize: 3 });
  const items = folders(
    dir.path,
    Object.fromEntries(
      Array.from({ length: 7 }, (_, i) => [`Batch${i}`, { result: [i] }]),
    ),
  );
  await p.planner.take(items);
  assert.deepEqual(p.batches.map((b) => b.items.length), [3, 3]);
  await p.planner.flush();
  assert.deepEqual(p.batches.map((b) => b.items.length), [3, 3, 1]);
  assert.deepEqual(p.batches.flatMap((b) => b.items.map((i) => i.row.folder_key)), [
    "Batch0",
    "Batch1",
    "Batch2",
    "Batch3",
    "Batch4",
    "Batch5",
    "Batch6",
  ]);
  for (const b of p.batches) {
    assert.equal(b.bytes, b.items.reduce((sum, i) => sum + i.bytes, 0), "bytes add up");
  }
  assert.equal(p.run.counters.queued, 7);
  assert.equal(p.run.counters.new, 7);
});

Deno.test("planner: a batch closes before its bytes would pass the bound; a large row goes alone", async () => {
  using dir = tempDir("planner_bytes_");
  const p = planner({ batchSize: 100, maxBatchBytes: 2_000 });
  const big = { trace: "x".repeat(1_500) };
  const items = folders(dir.path, { A: { result: [1] }, B: big, C: { result: [2] }, D: big });
  await p.planner.take(items);
  await p.planner.flush();
  const keys = p.batches.map((b) => b.items.map((i) => i.row.folder_key));
  assert.deepEqual(keys, [["A"], ["B"], ["C"], ["D"]]);
  for (const b of p.batches) assert.ok(b.items.length === 1 || b.bytes <= 2_000);
});

Deno.test("planner: the same key twice never shares a batch", async () => {
  using dir = tempDir("planner_dup_");
  const p = planner({ batchSize: 10 });
  const [a] = folders(join(dir.path, "one"), { Batch1: { result: [1] } });
  const [b] = folders(join(dir.path, "two"), { Batch1: { result: [2] } });
  await p.planner.take([a]);
  await p.planner.take([b]);
  await p.planner.flush();
  assert.deepEqual(p.batches.map((x) => x.items.length), [1, 1]);
});

Deno.test("planner: a folder still being written waits in the settle queue, due in order", async () => {
  using dir = tempDir("planner_settle_");
  const p = planner({ minAgeSeconds: 3 });
  const fresh = folders(dir.path, { Late: { result: [1] } }, NOW - 1_000);
  const older = folders(dir.path, { Early: { result: [2] } }, NOW - 2_500);
  const settled = folders(dir.path, { Done: { result: [3] } }, OLD);
  await p.planner.take([...fresh, ...older, ...settled]);
  await p.planner.flush();
  assert.deepEqual(p.batches.flatMap((b) => b.items.map((i) => i.row.folder_key)), ["Done"]);
  assert.equal(p.settle.size, 2);
  // Due when its newest file is min-age old (plus a margin for the clock's tick).
  assert.equal(p.settle.nextDue(), NOW - 2_500 + 3_000 + 50);
  assert.deepEqual(p.settle.take(NOW + 600).map((f) => f.key), ["Early"]);
  assert.deepEqual(p.settle.take(NOW + 5_000).map((f) => f.key), ["Late"]);
  assert.equal(p.settle.size, 0);
});

Deno.test("planner: folders named on purpose that never settle fail; the others are counted", async () => {
  const p = planner();
  const base = { base: null, strict: false, dueAt: NOW };
  await p.planner.giveUp([
    { path: "/data/named", key: "named", force: true, ...base },
    { path: "/data/walked", key: "walked", force: false, ...base },
  ]);
  assert.equal(p.run.counters.settling, 1);
  assert.equal(p.run.counters.failed, 1);
  const failed = p.events.filter((e) => e.event === "folder_failed");
  assert.equal(failed.length, 1);
  assert.match(JSON.stringify(failed[0]), /Still being written/);
});

Deno.test("planner: a dry run counts the bytes it would send and sends nothing", async () => {
  using dir = tempDir("planner_dry_");
  const p = planner({}, "dry-run");
  await p.planner.take(folders(dir.path, { A: { result: [1] }, B: { result: [] } }));
  await p.planner.flush();
  assert.equal(p.batches.length, 0);
  assert.equal(p.run.counters.queued, 2);
  assert.ok(p.run.counters.bytes > 100, `bytes ${p.run.counters.bytes}`);
});

Deno.test("planner: a broken stats.json fails its folder alone, named", async () => {
  using dir = tempDir("planner_bad_");
  const p = planner();
  await p.planner.take(folders(dir.path, { Good: { result: [1] }, Bad: "{ not json" }));
  await p.planner.flush();
  assert.deepEqual(p.batches.flatMap((b) => b.items.map((i) => i.row.folder_key)), ["Good"]);
  const failed = p.events.filter((e) => e.event === "folder_failed");
  assert.equal(failed.length, 1);
  const event = failed[0] as Extract<EngineEvent, { event: "folder_failed" }>;
  assert.equal(event.key, "Bad");
  assert.match(event.error, /stats\.json/);
  assert.equal(p.run.counters.failed, 1);
});
