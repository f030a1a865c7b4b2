/**
 * The run recorder (lib/tracker/recorder.ts): `NoTracker` answers every question as a new,
 * empty `Tracker` does and keeps nothing it is told, and `RunRecorder` names every tracker
 * method the engine, the planner and the committer call (so the engine can hold a recorder
 * instead of a nullable tracker).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { NoTracker, type RunRecorder, Tracker } from "../../lib/tracker/tracker.ts";
import type { FolderSnapshot } from "../../lib/source/snapshot.ts";
import type { DiffOptions } from "../../lib/plan/diff.ts";

const NOW = Date.parse("2025-06-02T16:50:00Z");
const OPTIONS: DiffOptions = { nowMs: NOW, minAgeMs: 3_000, maxRetries: 3 };

function snapshot(name: string, newestMtimeMs = NOW - 60_000): FolderSnapshot {
  return {
    path: `/data/${name}`,
    key: name,
    name,
    files: [{ name: "stats.json", size: 10, mtimeMs: newestMtimeMs }],
    fingerprint: `fp-${name}`,
    newestMtimeMs,
  };
}

/** Every question a run asks, asked of `recorder`. */
function answers(recorder: RunRecorder) {
  recorder.beginPass("/data", 1);
  return {
    meta: recorder.getMeta("device_id"),
    bases: recorder.knownBases(),
    exhausted: recorder.countExhausted(3),
    owed: recorder.owedMarkers(10),
    owedCount: recorder.countOwedMarkers(),
    known: recorder.objectKnown("/data/B1", "a.jpg", "p/d/B1/a.jpg", 3),
    stored: recorder.objectStored("/data/B1", "a.jpg", "p/d/B1/a.jpg", 3, "0".repeat(32)),
    missing: recorder.endPass(new Date(NOW)),
    requeued: recorder.requeueFromRemote("/data", new Date(NOW)),
    keys: recorder.baseKeys("/data", 0, 100),
    scan: recorder.applyScan(
      [snapshot("B1"), snapshot("B2", NOW - 1_000)],
      1,
      "/data",
      { ...OPTIONS, dryRun: true },
    ),
  };
}

Deno.test("NoTracker: every read answers as a new, empty tracker does", () => {
  const tracker = Tracker.open(":memory:");
  try {
    assert.deepEqual(answers(new NoTracker()), answers(tracker));
    const skipped = [{ path: "/data/link", reason: "a link to a folder" }];
    assert.deepEqual(
      new NoTracker().recordSkipped("/data", 1, skipped),
      tracker.recordSkipped("/data", 1, skipped),
      "every link is met for the first time",
    );
    assert.equal(new NoTracker().useTarget("postgres://h/db#t"), tracker.useTarget("x#t"));
  } finally {
    tracker.close();
  }
});

Deno.test("NoTracker: applyScan decides each folder as new, settling ones held back, in order", () => {
  const decisions = new NoTracker().applyScan(
    [snapshot("B1"), snapshot("B2", NOW - 1_000)],
    0,
    null,
    OPTIONS,
  );
  assert.deepEqual(
    decisions.map((d) => [d.snapshot.key, d.change, d.upload, d.settling]),
    [["B1", "new", true, false], ["B2", "new", false, true]],
  );
  for (const d of decisions) {
    assert.equal(d.uploadedContent, null);
    assert.equal(d.objectsDest, null);
  }
});

Deno.test("NoTracker: what it is told is dropped, and it says so", () => {
  const recorder: RunRecorder = new NoTracker();
  assert.equal(recorder.recording, false);
  assert.equal(recorder.path, null);
  const runId = recorder.startRun("/data", "upload", new Date(NOW));
  assert.equal(runId, 0, "an id no tracker hands out");
  recorder.setMeta("device_id", "dev-1");
  recorder.useTarget("postgres://h/db#t");
  recorder.oweMarkers([{
    path: "/data/B1",
    marker: {
      status: "failed",
      folder_name: "B1",
      folder_key: "B1",
      failed_time: "t",
      error: "Bad JSON",
    },
  }]);
  recorder.applyScan([snapshot("B1")], runId, "/data", OPTIONS);
  recorder.recordProblems("/data", runId, [{ path: "/data/x", reason: "unreadable" }]);
  recorder.recordFolderFailures([{ path: "/data/B1", error: "Bad JSON" }]);
  recorder.recordAdopted([{ path: "/data/B1", fingerprint: "fp", contentHash: "c" }]);
  recorder.recordObjects("/data/B1", [{ name: "a.jpg", key: "k", size: 3, md5: "m" }]);
  recorder.startBatch("1-1", "batch_1", runId, 1, new Date(NOW));
  recorder.recordBatch({
    batchId: "1-1",
    batchName: "batch_1",
    runId,
    totalFolders: 1,
    startTime: new Date(NOW),
    endTime: new Date(NOW),
    status: "completed",
  }, [{ path: "/data/B1", fingerprint: "fp", ok: true }]);
  recorder.abandonBatch("1-1", "failed");
  recorder.clearRemote();
  recorder.addRemote([["B1", "c"]]);
  recorder.markersWritten(["/data/B1"]);
  recorder.finishRun(runId, "completed", {}, true);
  assert.deepEqual(recorder.finishVerify("/data", {}), { orphans: 0, sample: [] });
  assert.equal(recorder.getMeta("device_id"), undefined);
  assert.deepEqual(recorder.knownBases(), []);
  assert.equal(recorder.countOwedMarkers(), 0);
  assert.equal(recorder.objectKnown("/data/B1", "a.jpg", "k", 3), false);
  assert.equal(recorder.countExhausted(0), 0);
});

Deno.test("Tracker is a RunRecorder that keeps what it is told", () => {
  const tracker = Tracker.open(":memory:");
  try {
    const recorder: RunRecorder = tracker;
    assert.equal(recorder.recording, true);
    assert.equal(recorder.path, ":memory:");
    const runId = recorder.startRun("/data", "upload", new Date(NOW));
    recorder.applyScan([snapshot("B1")], runId, "/data", OPTIONS);
    assert.deepEqual(recorder.knownBases(), ["/data"]);
  } finally {
    tracker.close();
  }
});

/** Every `tracker.x` / `tracker?.x` / `tracker!.x` in the files of `folder`. */
function trackerCalls(folder: string): Set<string> {
  const calls = new Set<string>();
  for (const entry of Deno.readDirSync(folder)) {
    if (!entry.isFile || !entry.name.endsWith(".ts")) continue;
    const text = Deno.readTextFileSync(join(folder, entry.name));
    for (const m of text.matchAll(/\btracker[!?]?\.(\w+)\b/g)) calls.add(m[1]);
  }
  return calls;
}

Deno.test("RunRecorder names every tracker method the engine, the planner and the committer call", () => {
  const lib = new URL("../../lib/", import.meta.url).pathname;
  const called = new Set(
    ["engine", "plan", "commit"].flatMap((folder) => [...trackerCalls(join(lib, folder))]),
  );
  called.delete("ts"); // the import path "../tracker/tracker.ts"
  const recorder = new NoTracker() as unknown as Record<string, unknown>;
  const missing = [...called].filter((name) => !(name in recorder));
  assert.deepEqual(missing, [], `not in RunRecorder: ${missing.join(", ")}`);
  assert.ok(called.size >= 30, `only ${called.size} calls found: ${[...called].join(", ")}`);
});
