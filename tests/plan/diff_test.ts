/**
 * Tests of the tracker's diff rule (lib/plan/diff.ts): one table row per case of
 * {@linkcode decideFolder}, in the style of restic's `fileChanged` tests.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  decideFolder,
  type DiffDecision,
  type DiffOptions,
  type SeenState,
  type TrackedState,
} from "../../lib/plan/diff.ts";

const NOW = Date.UTC(2025, 5, 2, 12, 0, 0, 500);
const OPTIONS: DiffOptions = { nowMs: NOW, minAgeMs: 3_000, maxRetries: 3 };
const OLD = NOW - 86_400_000;

const SEEN: SeenState = { fingerprint: "f1", key: "Line2/Batch12", newestMtimeMs: OLD };

function tracked(overrides: Partial<TrackedState> = {}): TrackedState {
  return {
    fileHash: "f1",
    folderKey: "Line2/Batch12",
    status: "success",
    retryCount: 0,
    ...overrides,
  };
}

interface Case {
  name: string;
  tracked: TrackedState | undefined;
  seen?: Partial<SeenState>;
  options?: Partial<DiffOptions>;
  want: DiffDecision;
}

const CASES: Case[] = [
  // New folders.
  {
    name: "new folder",
    tracked: undefined,
    want: { change: "new", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "new folder still settling",
    tracked: undefined,
    seen: { newestMtimeMs: NOW - 1_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  // Changed folders: back to pending, retries forgotten.
  {
    name: "uploaded folder whose fingerprint changed",
    tracked: tracked({ fileHash: "f0" }),
    want: { change: "changed", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "failed folder (retries used up) whose fingerprint changed",
    tracked: tracked({ fileHash: "f0", status: "failed", retryCount: 3 }),
    want: { change: "changed", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "changed fingerprint, still settling",
    tracked: tracked({ fileHash: "f0" }),
    seen: { newestMtimeMs: NOW },
    want: { change: "changed", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "same fingerprint under another key (base path moved)",
    tracked: tracked({ folderKey: "Batch12" }),
    want: { change: "changed", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "row from the original tool without a key, same fingerprint",
    tracked: tracked({ folderKey: null }),
    want: { change: "unchanged", status: "success", retryCount: 0, settling: false, upload: false },
  },
  {
    name: "row from the original tool, other hash",
    tracked: tracked({ folderKey: null, fileHash: "original-md5" }),
    want: { change: "changed", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  // Unchanged folders keep their status.
  {
    name: "unchanged success stays success, not uploaded",
    tracked: tracked(),
    want: { change: "unchanged", status: "success", retryCount: 0, settling: false, upload: false },
  },
  {
    name: "unchanged pending is uploaded (an interrupted run resumes)",
    tracked: tracked({ status: "pending" }),
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "unchanged pending, still settling",
    tracked: tracked({ status: "pending" }),
    seen: { newestMtimeMs: NOW - 2_999 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "settle time just passed",
    tracked: tracked({ status: "pending" }),
    seen: { newestMtimeMs: NOW - 3_000 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "--min-age 0: nothing settles, a folder dated slightly in the future included",
    tracked: tracked({ status: "pending" }),
    seen: { newestMtimeMs: NOW + 30_000 },
    options: { minAgeMs: 0 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "mtime slightly in the future (clock skew) counts as settling",
    tracked: tracked({ status: "pending" }),
    seen: { newestMtimeMs: NOW + 59_999 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "mtime far in the future (a device clock gone wrong) does not hold the folder back",
    tracked: tracked({ status: "pending" }),
    seen: { newestMtimeMs: NOW + 365 * 86_400_000 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "no settle time: a folder from this very millisecond is uploaded",
    tracked: tracked({ status: "pending" }),
    seen: { newestMtimeMs: NOW },
    options: { minAgeMs: 0 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "old mtimes (a cp -a copy) but file events just now: settling",
    tracked: undefined,
    seen: { newestMtimeMs: NOW - 86_400_000, changedAtMs: NOW - 500 },
    want: { change: "new", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "old mtimes, the last file event a settle time ago: uploaded",
    tracked: undefined,
    seen: { newestMtimeMs: NOW - 86_400_000, changedAtMs: NOW - 3_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "unchanged success, settling (touched in the same second): still not uploaded",
    tracked: tracked(),
    seen: { newestMtimeMs: NOW },
    want: { change: "unchanged", status: "success", retryCount: 0, settling: true, upload: false },
  },
  // Failed folders: retried while under maxRetries and due.
  {
    name: "failed once, under maxRetries: retried",
    tracked: tracked({ status: "failed", retryCount: 1 }),
    want: { change: "unchanged", status: "failed", retryCount: 1, settling: false, upload: true },
  },
  {
    name: "failed maxRetries - 1 times: retried",
    tracked: tracked({ status: "failed", retryCount: 2 }),
    want: { change: "unchanged", status: "failed", retryCount: 2, settling: false, upload: true },
  },
  {
    name: "failed maxRetries times: left failed",
    tracked: tracked({ status: "failed", retryCount: 3 }),
    want: { change: "unchanged", status: "failed", retryCount: 3, settling: false, upload: false },
  },
  {
    name: "failed more than maxRetries times: left failed",
    tracked: tracked({ status: "failed", retryCount: 7 }),
    want: { change: "unchanged", status: "failed", retryCount: 7, settling: false, upload: false },
  },
  {
    name: "maxRetries 0: a failed folder is never retried",
    tracked: tracked({ status: "failed", retryCount: 0 }),
    options: { maxRetries: 0 },
    want: { change: "unchanged", status: "failed", retryCount: 0, settling: false, upload: false },
  },
  {
    name: "failed, below its retries, but settling: waits",
    tracked: tracked({ status: "failed", retryCount: 1 }),
    seen: { newestMtimeMs: NOW - 10 },
    want: { change: "unchanged", status: "failed", retryCount: 1, settling: true, upload: false },
  },
  {
    name: "not ready (--ready-when), changed within the ready timeout: waits though settled",
    tracked: undefined,
    seen: { ready: false, newestMtimeMs: NOW - 10_000 },
    options: { readyTimeoutMs: 60_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "not ready, unchanged past the ready timeout: goes as it is",
    tracked: undefined,
    seen: { ready: false, newestMtimeMs: NOW - 60_000 },
    options: { readyTimeoutMs: 60_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "not ready, a file-system event within the ready timeout: waits",
    tracked: tracked({ status: "pending" }),
    seen: { ready: false, newestMtimeMs: OLD, changedAtMs: NOW - 5_000 },
    options: { readyTimeoutMs: 60_000 },
    want: { change: "unchanged", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "ready and settled: goes, whatever the ready timeout",
    tracked: undefined,
    seen: { ready: true, newestMtimeMs: NOW - 10_000 },
    options: { readyTimeoutMs: 60_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "ready but its newest file is younger than the settle time: settles",
    tracked: undefined,
    seen: { ready: true, newestMtimeMs: NOW - 1_000 },
    options: { readyTimeoutMs: 60_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: true, upload: false },
  },
  {
    name: "not ready, dated far ahead of this clock: not held for years",
    tracked: undefined,
    seen: { ready: false, newestMtimeMs: NOW + 86_400_000 },
    options: { readyTimeoutMs: 60_000 },
    want: { change: "new", status: "pending", retryCount: 0, settling: false, upload: true },
  },
  {
    name: "unknown status: kept, not uploaded",
    tracked: tracked({ status: "uploading" }),
    want: {
      change: "unchanged",
      status: "uploading",
      retryCount: 0,
      settling: false,
      upload: false,
    },
  },
];

Deno.test("decideFolder: every case", async (t) => {
  for (const c of CASES) {
    await t.step(c.name, () => {
      const got = decideFolder(c.tracked, { ...SEEN, ...c.seen }, { ...OPTIONS, ...c.options });
      assert.deepEqual(got, c.want);
    });
  }
});

Deno.test("decideFolder: pure (same answer twice, inputs untouched)", () => {
  const row = tracked({ status: "failed", retryCount: 1 });
  const copy = structuredClone(row);
  const a = decideFolder(row, SEEN, OPTIONS);
  const b = decideFolder(row, SEEN, OPTIONS);
  assert.deepEqual(a, b);
  assert.deepEqual(row, copy);
});
