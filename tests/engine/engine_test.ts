/**
 * The engine without a server: runEngine over real folders and a real tracker file, with a
 * fake row sink that answers at once (refusing the rows the test names, or throwing what
 * stops a run). What reaches the sink, what the tracker keeps and the run's outcome.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_CONFIG, type UploaderConfig } from "../../config.ts";
import { UploadError } from "../../lib/core/errors.ts";
import type { EngineEvent, RunMode } from "../../lib/core/events.ts";
import { runEngine } from "../../lib/engine/engine.ts";
import { traitsOf } from "../../lib/engine/options.ts";
import { walkConfig } from "../../lib/engine/upload.ts";
import type { DeviceInfo } from "../../lib/sink/columns.ts";
import type { OpenedSink, RowSink, SinkItem, WriteResult } from "../../lib/sink/sink.ts";
import { treeSource } from "../../lib/source/sources.ts";
import { Tracker } from "../../lib/tracker/tracker.ts";
import { tempDir, type TreeSpec, writeTree } from "../../support/tree.ts";

const DEVICE: DeviceInfo = { id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a", name: "pi", type: "t" };
const OLD = Date.now() - 3_600_000;

/** A sink that answers every write at once: rows of `refuse` fail, `throws` stops the run. */
class InstantSink implements RowSink {
  readonly display = "fake target";
  readonly embedded = false;
  readonly settlesDevice = false;
  opened = false;
  readonly batches: string[][] = [];
  refuse = new Set<string>();
  throws: UploadError | null = null;
  closed = false;

  open(): Promise<OpenedSink> {
    this.opened = true;
    return Promise.resolve({ device: DEVICE });
  }

  write<T extends SinkItem>(items: T[]): Promise<WriteResult<T>> {
    if (this.throws) return Promise.reject(this.throws);
    this.batches.push(items.map((i) => i.row.folder_key));
    const outcomes = items.map((item) =>
      this.refuse.has(item.row.folder_key)
        ? { item, ok: false, error: `Server refused the row for ${item.row.folder_key}` }
        : { item, ok: true }
    );
    const refused = outcomes.filter((o) => !o.ok).length;
    return Promise.resolve({
      outcomes,
      inserted: items.length - refused,
      updated: 0,
      statements: 1,
    });
  }

  readRemote(): Promise<number> {
    return Promise.resolve(0);
  }

  otherDevices(): Promise<Map<string, number>> {
    return Promise.resolve(new Map());
  }

  abandon(): void {}

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

/** `count` finished folders (stats.json, one image) under a temp base. */
function base(count: number): { path: string; [Symbol.dispose](): void } {
  const dir = tempDir("engine_test_");
  const spec: TreeSpec = {};
  for (let i = 0; i < count; i++) {
    spec[`Batch${i}/stats.json`] = { json: { result: "PASS", n: i }, mtime: OLD };
    spec[`Batch${i}/a.jpg`] = { bytes: 10, mtime: OLD };
  }
  writeTree(dir.path, spec);
  return dir;
}

interface Go {
  mode?: RunMode;
  config?: Partial<UploaderConfig>;
  tracker?: Tracker | null;
  sink?: InstantSink;
  signal?: AbortSignal;
}

/** One run of the engine over the tree at `path`. */
async function go(path: string, options: Go = {}) {
  const config = { ...DEFAULT_CONFIG, batchSize: 2, ...options.config };
  const sink = options.sink ?? new InstantSink();
  const events: EngineEvent[] = [];
  const mode = options.mode ?? "upload";
  const result = await runEngine(treeSource(path, walkConfig(config)), {
    config,
    mode,
    tracker: options.tracker ?? null,
    base: path,
    sink: traitsOf(mode).sends ? () => sink : undefined,
    deviceId: DEVICE.id,
    markers: false,
    signal: options.signal,
    onEvent: (e) => events.push(e),
  });
  return { result, sink, events };
}

Deno.test("runEngine: every folder reaches the sink once, in batches of batchSize", async () => {
  using dir = base(5);
  const { result, sink } = await go(dir.path);
  assert.equal(result.exitCode, 0);
  assert.equal(result.status, "completed");
  assert.equal(result.counters.uploaded, 5);
  assert.deepEqual(sink.batches.map((b) => b.length).sort(), [1, 2, 2]);
  assert.deepEqual(sink.batches.flat().sort(), ["Batch0", "Batch1", "Batch2", "Batch3", "Batch4"]);
  assert.equal(sink.closed, true);
  assert.equal(result.runId, null, "no tracker: nothing recorded");
});

Deno.test("runEngine: a refused row fails its folder alone (exit 1); a re-run sends only it", async () => {
  using dir = base(4);
  using db = tempDir("engine_db_");
  const tracker = Tracker.open(join(db.path, "t.db"));
  try {
    const sink = new InstantSink();
    sink.refuse.add("Batch2");
    const first = await go(dir.path, { tracker, sink });
    assert.equal(first.result.exitCode, 1);
    assert.equal(first.result.counters.uploaded, 3);
    assert.equal(first.result.counters.failed, 1);
    assert.ok(
      first.events.some((e) => e.event === "folder_failed" && /Batch2/.test(String(e.error))),
    );
    const again = await go(dir.path, { tracker });
    assert.equal(again.result.exitCode, 0);
    assert.deepEqual(again.sink.batches.flat(), ["Batch2"], "only the failed folder again");
    const third = await go(dir.path, { tracker });
    assert.deepEqual(third.sink.batches, [], "nothing changed: nothing sent");
    assert.equal(third.result.counters.unchanged, 4);
  } finally {
    tracker.close();
  }
});

Deno.test("runEngine: an error that stops the run ends it with its exit code, recorded", async () => {
  using dir = base(3);
  using db = tempDir("engine_db_");
  const tracker = Tracker.open(join(db.path, "t.db"));
  try {
    const sink = new InstantSink();
    sink.throws = new UploadError("unreachable", "Cannot reach the database server: refused");
    const { result, events } = await go(dir.path, { tracker, sink });
    assert.equal(result.exitCode, 3);
    assert.equal(result.status, "unreachable");
    assert.match(result.error?.message ?? "", /Cannot reach/);
    assert.equal(events.filter((e) => e.event === "stopping").length, 1, "said once");
    assert.equal(tracker.status({ limit: 0 }).byStatus.uploaded ?? 0, 0);
  } finally {
    tracker.close();
  }
});

Deno.test("runEngine: an interrupted run sends nothing and ends with 130", async () => {
  using dir = base(3);
  const stop = new AbortController();
  stop.abort();
  const { result, sink } = await go(dir.path, { signal: stop.signal });
  assert.equal(result.exitCode, 130);
  assert.deepEqual(sink.batches, []);
});

Deno.test("runEngine: a scan records without a sink; a dry run neither sends nor records", async () => {
  using dir = base(3);
  using db = tempDir("engine_db_");
  const tracker = Tracker.open(join(db.path, "t.db"));
  try {
    const dry = await go(dir.path, { tracker, mode: "dry-run" });
    assert.equal(dry.result.exitCode, 0);
    assert.equal(dry.result.runId, null);
    assert.equal(tracker.status({ limit: 0 }).total, 0, "a dry run records nothing");
    const scan = await go(dir.path, { tracker, mode: "scan-only" });
    assert.equal(scan.result.exitCode, 0);
    assert.notEqual(scan.result.runId, null);
    assert.equal(tracker.status({ limit: 0 }).byStatus.pending, 3);
    assert.deepEqual(scan.sink.batches, []);
  } finally {
    tracker.close();
  }
});

Deno.test("runEngine: a folder still being written is waited for, then sent", async () => {
  using dir = base(1);
  writeTree(dir.path, { "Fresh/stats.json": { json: { result: "PASS" }, mtime: Date.now() } });
  const { result, sink, events } = await go(dir.path, { config: { minAgeSeconds: 1 } });
  assert.equal(result.exitCode, 0);
  assert.ok(events.some((e) => e.event === "settle_wait"), "the end of the source waits for it");
  assert.deepEqual(sink.batches.flat().sort(), ["Batch0", "Fresh"]);
});

Deno.test("traitsOf: what each mode does", () => {
  const table = Object.fromEntries(
    (["upload", "scan-only", "dry-run", "quick", "watch"] as const).map((m) => {
      const t = traitsOf(m);
      return [m, [t.sends, t.records, t.reads, t.writesMarkers, t.endless, t.batchPrefix]];
    }),
  );
  assert.deepEqual(table, {
    upload: [true, true, true, true, false, "batch"],
    "scan-only": [false, true, false, false, false, "batch"],
    "dry-run": [false, false, true, false, false, "batch"],
    quick: [true, true, true, true, false, "quick"],
    watch: [true, true, true, true, true, "batch"],
  });
});
