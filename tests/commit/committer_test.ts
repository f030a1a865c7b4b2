/**
 * The committer (lib/commit/committer.ts) with a fake row sink, without a server: the slots
 * (`parallel`) and the byte budget honoured, a batch recorded only after the sink
 * acknowledged it, the pause between batches, draining with and without a grace period, a
 * failing write stopping the run, and images stored before their rows (against an
 * in-process S3 stub). Folders are real directories; the tracker is a stand-in that
 * records what it is told, typed by the real one's methods.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { DEFAULT_CONFIG, markerNames, type UploaderConfig } from "../../config.ts";
import { Committer } from "../../lib/commit/committer.ts";
import { UploadError } from "../../lib/core/errors.ts";
import { type EngineEvent, newCounters } from "../../lib/core/events.ts";
import { Run } from "../../lib/engine/run.ts";
import { settingsOf } from "../../lib/engine/options.ts";
import { ObjectStore } from "../../lib/objects/storage.ts";
import type { PlannedBatch, PlannedItem } from "../../lib/plan/planner.ts";
import { buildRow } from "../../lib/plan/row.ts";
import type { OpenedSink, RowSink, SinkItem, WriteResult } from "../../lib/sink/sink.ts";
import { snapshotFolder } from "../../lib/source/snapshot.ts";
import type { RunRecorder } from "../../lib/tracker/recorder.ts";

const DEVICE = { id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a", name: "pi", type: "t" };

/** Waits until `done()` holds, looking every few ms (generous: the machine may be loaded). */
async function until(done: () => boolean, what: string, limitMs = 10_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!done()) {
    if (Date.now() > end) assert.fail(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Lets pending promise callbacks and timers of 0 ms run. */
function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 20));
}

/** One write the fake sink received, answered when the test says. */
interface Call {
  items: PlannedItem[];
  batchName: string;
  seq: number;
  startedAt: number;
  answer: (refused?: Set<string>) => void;
  fail: (error: unknown) => void;
}

/** A row sink whose writes the test answers one by one (or at once with `auto`). */
class FakeSink implements RowSink {
  readonly display = "fake target";
  readonly embedded = false;
  readonly settlesDevice = false;
  opened = false;
  abandoned = false;
  auto = false;
  calls: Call[] = [];
  inFlight = 0;
  maxInFlight = 0;
  /** Shared with the S3 stub: the order of what reached either. */
  order: { seq: number };

  constructor(order = { seq: 0 }) {
    this.order = order;
  }

  open(): Promise<OpenedSink> {
    this.opened = true;
    return Promise.resolve({ device: DEVICE });
  }

  write<T extends SinkItem>(items: T[], batchName: string): Promise<WriteResult<T>> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return new Promise<WriteResult<T>>((resolve, reject) => {
      const call: Call = {
        items: items as unknown as PlannedItem[],
        batchName,
        seq: ++this.order.seq,
        startedAt: performance.now(),
        answer: (refused = new Set()) =>
          resolve({
            outcomes: items.map((item) =>
              refused.has(item.path)
                ? { item, ok: false, error: `Server refused the row for ${item.row.folder_key}` }
                : { item, ok: true }
            ),
            inserted: items.length - refused.size,
            updated: 0,
            statements: 1,
          }),
        fail: reject,
      };
      this.calls.push(call);
      if (this.auto) call.answer();
    }).finally(() => this.inFlight--);
  }

  readRemote(): Promise<number> {
    return Promise.resolve(0);
  }

  otherDevices(): Promise<Map<string, number>> {
    return Promise.resolve(new Map());
  }

  abandon(): void {
    this.abandoned = true;
    for (const call of this.calls) {
      call.fail(new UploadError("interrupted", `Interrupted while ${call.batchName} was written`));
    }
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

type TrackerCalls = Pick<
  RunRecorder,
  | "recording"
  | "startRun"
  | "startBatch"
  | "recordBatch"
  | "abandonBatch"
  | "objectStored"
  | "recordObjects"
>;

/** A tracker that records which of its methods the committer called, with what. */
function recordingTracker() {
  const calls: { method: string; args: unknown[] }[] = [];
  const log = (method: string) => (...args: unknown[]) => {
    calls.push({ method, args });
  };
  const stub: TrackerCalls = {
    recording: true,
    startRun: (...args) => (calls.push({ method: "startRun", args }), 1),
    startBatch: log("startBatch"),
    recordBatch: log("recordBatch"),
    abandonBatch: log("abandonBatch"),
    objectStored: () => false,
    recordObjects: log("recordObjects"),
  };
  const methods = () => calls.map((c) => c.method);
  return { tracker: stub as unknown as RunRecorder, calls, methods };
}

/** `count` unit folders under a temp directory: stats.json and one image each. */
function makeFolders(count: number, images = ["a.jpg"]): { dir: string; paths: string[] } {
  const dir = Deno.makeTempDirSync({ prefix: "committer_test_" });
  const paths: string[] = [];
  const old = new Date(Date.now() - 3_600_000);
  for (let i = 0; i < count; i++) {
    const path = join(dir, `Batch${i}`);
    Deno.mkdirSync(path);
    Deno.writeTextFileSync(join(path, "stats.json"), `{"result": "PASS", "n": ${i}}`);
    for (const name of images) Deno.writeFileSync(join(path, name), new Uint8Array([i, 1, 2, 3]));
    for (const f of ["stats.json", ...images]) Deno.utimeSync(join(path, f), old, old);
    paths.push(path);
  }
  return { dir, paths };
}

/** The planned item of a folder, as the planner makes it. */
function planned(path: string, config: UploaderConfig, objectsPrefix?: string): PlannedItem {
  const scan = snapshotFolder(path, {
    key: path.split("/").at(-1),
    imageExtensions: config.imageExtensions,
    statsFileName: config.statsFileName,
    markerNames: markerNames(config),
  });
  if (scan.kind !== "folder") throw new Error(`not a folder: ${path}`);
  const snapshot = scan.snapshot;
  const imageObjects = objectsPrefix === undefined ? undefined : snapshot.files
    .filter((f) => f.name.endsWith(".jpg"))
    .map((f) => `${objectsPrefix}/${DEVICE.id}/${snapshot.key}/${f.name}`);
  const built = buildRow(snapshot, config, new Date(), { imageObjects });
  return {
    path,
    row: built.row,
    json: built.json,
    snapshot,
    contentHash: String(built.row.metadata.content_hash),
    bytes: built.bytes,
  };
}

function batch(items: PlannedItem[], bytes?: number): PlannedBatch {
  return { items, bytes: bytes ?? items.reduce((sum, i) => sum + i.bytes, 0) };
}

interface Setup {
  config?: Partial<UploaderConfig>;
  markers?: boolean;
  budgetBytes?: number;
  sink?: FakeSink;
}

function setup(options: Setup = {}) {
  const config = { ...DEFAULT_CONFIG, ...options.config };
  const events: EngineEvent[] = [];
  const { tracker, calls, methods } = recordingTracker();
  const run = new Run(settingsOf({
    config,
    mode: "upload",
    tracker,
    base: "/data",
    deviceId: DEVICE.id,
    markers: options.markers ?? false,
    counters: newCounters(),
    onEvent: (e) => events.push(e),
  }));
  const sink = options.sink ?? new FakeSink();
  const committer = new Committer(run, { sink, budgetBytes: options.budgetBytes });
  return { config, run, sink, committer, events, calls, methods };
}

Deno.test("committer: at most `parallel` batches in flight; submit waits for a free slot", async () => {
  const { dir, paths } = makeFolders(5);
  try {
    const s = setup({ config: { parallel: 2 } });
    const batches = paths.map((p) => batch([planned(p, s.config)]));
    await s.committer.submit(batches[0]);
    await s.committer.submit(batches[1]);
    let third = false;
    const pending = s.committer.submit(batches[2]).then(() => third = true);
    await until(() => s.sink.calls.length === 2, "two writes");
    await settle();
    assert.equal(third, false, "the third batch waits for a slot");
    assert.equal(s.sink.calls.length, 2);
    s.sink.calls[0].answer();
    await pending;
    await until(() => s.sink.calls.length === 3, "the third write");
    s.sink.auto = true;
    for (const c of s.sink.calls.slice(1)) c.answer();
    await s.committer.submit(batches[3]);
    await s.committer.submit(batches[4]);
    await s.committer.drain(10_000);
    assert.equal(s.sink.calls.length, 5);
    assert.equal(s.sink.maxInFlight, 2);
    assert.equal(s.run.counters.uploaded, 5);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("committer: batches wait for their bytes; one larger than the budget goes alone", async () => {
  const { dir, paths } = makeFolders(4);
  try {
    const s = setup({ config: { parallel: 8 }, budgetBytes: 100 });
    const [a, b, c, d] = paths.map((p) => planned(p, s.config));
    await s.committer.submit(batch([a], 60));
    let second = false;
    const waiting = s.committer.submit(batch([b], 60)).then(() => second = true);
    let room = false;
    const roomFor = s.committer.roomFor(50).then(() => room = true);
    await until(() => s.sink.calls.length === 1, "the first write");
    await settle();
    assert.equal(second, false, "60 + 60 bytes do not fit in 100");
    assert.equal(room, false, "nor do 50 more");
    s.sink.calls[0].answer();
    await waiting;
    await until(() => s.sink.calls.length === 2, "the second write");
    await settle();
    assert.equal(room, false, "60 in flight and 50 more do not fit in 100");
    // Larger than the whole budget: it goes once nothing else is in flight.
    let big = false;
    const bigSubmit = s.committer.submit(batch([c], 150)).then(() => big = true);
    await settle();
    assert.equal(big, false);
    s.sink.calls[1].answer();
    await roomFor;
    await bigSubmit;
    await until(() => s.sink.calls.length === 3, "the large write");
    assert.equal(s.sink.inFlight, 1, "it goes alone");
    s.sink.calls[2].answer();
    s.sink.auto = true;
    await s.committer.submit(batch([d], 10));
    await s.committer.drain(10_000);
    assert.equal(s.sink.maxInFlight, 1);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("committer: a batch is recorded only after the sink acknowledged it", async () => {
  const { dir, paths } = makeFolders(3);
  try {
    const s = setup({ markers: true });
    const items = paths.map((p) => planned(p, s.config));
    await s.committer.submit(batch(items));
    await until(() => s.sink.calls.length === 1, "the write");
    await settle();
    assert.deepEqual(s.methods(), ["startRun", "startBatch"], "nothing recorded yet");
    assert.ok(!s.events.some((e) => e.event === "folder_uploaded" || e.event === "batch_done"));
    await s.run.markers!.drain();
    assert.throws(() => Deno.statSync(join(paths[0], "success.json")), "no marker yet");

    s.sink.calls[0].answer(new Set([paths[2]]));
    await s.committer.drain(10_000);
    await s.run.markers!.drain();
    assert.deepEqual(s.methods(), ["startRun", "startBatch", "recordBatch"]);
    const [record, outcomes] = s.calls[2].args as [
      { status: string; totalFolders: number },
      { path: string; ok: boolean; contentHash: string; fingerprint: string }[],
    ];
    assert.equal(record.status, "completed");
    assert.equal(record.totalFolders, 3);
    assert.deepEqual(outcomes.map((o) => [o.path, o.ok]), [
      [paths[0], true],
      [paths[1], true],
      [paths[2], false],
    ]);
    assert.equal(outcomes[0].contentHash, items[0].contentHash);
    assert.equal(outcomes[0].fingerprint, items[0].snapshot.fingerprint);
    assert.ok(Deno.statSync(join(paths[0], "success.json")).isFile);
    assert.ok(Deno.statSync(join(paths[2], "failed.json")).isFile);
    assert.deepEqual(
      s.events.filter((e) => e.event.startsWith("folder_") || e.event === "batch_done")
        .map((e) => e.event),
      ["folder_failed", "batch_done"],
      "quick upload's step events are off; a failure and the batch are reported",
    );
    assert.deepEqual([s.run.counters.uploaded, s.run.counters.failed], [2, 1]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("committer: the next batch starts the batch delay after the previous one started", async () => {
  const { dir, paths } = makeFolders(3);
  try {
    const s = setup({ config: { batchDelaySeconds: 0.25, parallel: 4 } });
    s.sink.auto = true;
    for (const p of paths) await s.committer.submit(batch([planned(p, s.config)]));
    await s.committer.drain(10_000);
    const starts = s.sink.calls.map((c) => c.startedAt);
    assert.equal(starts.length, 3);
    for (let i = 1; i < starts.length; i++) {
      // A lower bound only: a loaded machine may start later, never sooner.
      assert.ok(starts[i] - starts[i - 1] >= 240, `gap ${starts[i] - starts[i - 1]} ms`);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("committer: drain waits for every batch while the run goes on, whatever the grace", async () => {
  const { dir, paths } = makeFolders(2);
  try {
    const s = setup();
    for (const p of paths) await s.committer.submit(batch([planned(p, s.config)]));
    await until(() => s.sink.calls.length === 2, "two writes");
    let drained = false;
    const draining = s.committer.drain(10).then(() => drained = true);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(drained, false, "the grace is for a stopping run only");
    for (const c of s.sink.calls) c.answer();
    await draining;
    assert.equal(s.sink.abandoned, false);
    assert.equal(s.methods().filter((m) => m === "recordBatch").length, 2);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("committer: a stopping run gives batches in flight the grace, then abandons them", async () => {
  const { dir, paths } = makeFolders(2);
  try {
    // Within the grace: the batch finishes and is recorded.
    const s = setup();
    await s.committer.submit(batch([planned(paths[0], s.config)]));
    await until(() => s.sink.calls.length === 1, "the write");
    s.run.interrupt();
    setTimeout(() => s.sink.calls[0].answer(), 30);
    await s.committer.drain(10_000);
    assert.equal(s.sink.abandoned, false);
    assert.deepEqual(s.methods(), ["startRun", "startBatch", "recordBatch"]);

    // Past the grace: abandoned, nothing recorded, the batch left interrupted.
    const t = setup();
    await t.committer.submit(batch([planned(paths[1], t.config)]));
    await until(() => t.sink.calls.length === 1, "the write");
    t.run.interrupt();
    await t.committer.drain(50);
    assert.equal(t.sink.abandoned, true);
    assert.deepEqual(t.methods(), ["startRun", "startBatch", "abandonBatch"]);
    assert.equal(t.calls[2].args[1], "interrupted");
    assert.equal(t.run.counters.uploaded, 0);
    // A stopping run starts no batch.
    await t.committer.submit(batch([planned(paths[0], t.config)]));
    assert.equal(t.sink.calls.length, 1);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("committer: a failing write stops the run; its folders are not recorded", async () => {
  const { dir, paths } = makeFolders(3);
  try {
    const s = setup();
    await s.committer.submit(batch([planned(paths[0], s.config)]));
    await until(() => s.sink.calls.length === 1, "the write");
    s.sink.calls[0].fail(new UploadError("unreachable", "Server fake unreachable for 300 s"));
    await until(() => s.run.stopping, "the run to stop");
    assert.equal(s.run.error?.kind, "unreachable");
    await s.committer.drain(10_000);
    assert.deepEqual(s.methods(), ["startRun", "startBatch", "abandonBatch"]);
    assert.equal(s.calls[2].args[1], "failed");
    await s.committer.submit(batch([planned(paths[1], s.config)]));
    await settle();
    assert.equal(s.sink.calls.length, 1, "nothing more is sent");
    assert.ok(s.events.some((e) => e.event === "stopping" && e.kind === "unreachable"));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

/** An S3 stub on 127.0.0.1: HEAD is 404, PUT is stored (or refused for one name). */
function s3Stub(order: { seq: number }, refuse: string) {
  const puts: { key: string; seq: number }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const key = decodeURIComponent(new URL(req.url).pathname.replace(/^\/images\//, ""));
    await req.body?.cancel();
    if (req.method === "HEAD") return new Response(null, { status: 404 });
    if (key.endsWith(refuse)) {
      return new Response(
        "<Error><Code>EntityTooLarge</Code><Message>Your proposed upload is too large</Message></Error>",
        { status: 400 },
      );
    }
    puts.push({ key, seq: ++order.seq });
    return new Response(null, { status: 200, headers: { etag: '"e"' } });
  });
  const store = new ObjectStore({
    bucket: "images",
    prefix: "runs",
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    region: "eu-central-1",
    accessKeyId: "AKIATEST",
    secretAccessKey: "secret",
  }, { giveUpAfterMs: 5_000 });
  return { store, puts, close: () => server.shutdown() };
}

Deno.test("committer: images are stored before their rows; a folder whose image is refused fails alone", async () => {
  const { dir, paths } = makeFolders(3, ["a.jpg", "b.jpg"]);
  const order = { seq: 0 };
  const s3 = s3Stub(order, "Batch1/b.jpg");
  try {
    const s = setup({ sink: new FakeSink(order) });
    s.sink.auto = true;
    (s.run as { objects: unknown }).objects = { store: s3.store, deviceId: DEVICE.id };
    const items = paths.map((p) => planned(p, s.config, "runs"));
    await s.committer.submit(batch(items));
    await s.committer.drain(10_000);
    assert.equal(s.sink.calls.length, 1);
    const written = s.sink.calls[0];
    assert.deepEqual(written.items.map((i) => i.path), [paths[0], paths[2]], "Batch1 held back");
    const stored = s3.puts.map((p) => p.key).sort();
    assert.deepEqual(stored.filter((k) => !k.includes("Batch1")), [
      `runs/${DEVICE.id}/Batch0/a.jpg`,
      `runs/${DEVICE.id}/Batch0/b.jpg`,
      `runs/${DEVICE.id}/Batch2/a.jpg`,
      `runs/${DEVICE.id}/Batch2/b.jpg`,
    ]);
    assert.ok(s3.puts.every((p) => p.seq < written.seq), "every object before the row");
    const [, outcomes] = s.calls.find((c) => c.method === "recordBatch")!.args as [
      unknown,
      { path: string; ok: boolean; error?: string }[],
    ];
    const failed = outcomes.find((o) => o.path === paths[1])!;
    assert.equal(failed.ok, false);
    assert.match(failed.error!, /Cannot store image "b\.jpg" of .*Batch1/);
    assert.equal(outcomes.filter((o) => o.ok).length, 2);
    assert.equal(s.run.error, undefined, "a refused object fails its folder, not the run");
  } finally {
    await s3.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
