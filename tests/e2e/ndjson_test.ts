/**
 * `--json` for pipelines, manager and quick upload: every stdout line is one JSON object,
 * the human lines go to stderr, the last stdout line is the `summary` event, and its
 * counts are exact for a tree with known new, changed, unchanged and failing folders.
 * Runs the real CLIs into the embedded default database.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type CliResult, describeRun, REPO_ROOT, runUploadCli } from "../../support/cli.ts";
import { removeTree, T1, T2, writeTree } from "../../support/tree.ts";

const QUICK = join(REPO_ROOT, "scripts", "quick_upload.ts");

const MANAGER_EVENTS = new Set([
  "run_start",
  "problem",
  "folder_failed",
  "marker_error",
  "batch_done",
  "retry",
  "schema",
  "device",
  "settle_wait",
  "missing",
  "lock_wait",
  "stopping",
  "summary",
]);

const QUICK_EVENTS = new Set([
  "run_start",
  "folder_start",
  "folder_skipped",
  "settle_wait",
  "folder_found",
  "folder_read",
  "folder_failed",
  "inserting",
  "folder_uploaded",
  "marker_written",
  "marker_error",
  "batch_done",
  "retry",
  "schema",
  "lock_wait",
  "device",
  "stopping",
  "summary",
]);

/** Parses every stdout line (each must be a JSON object) and checks the stream's shape. */
function ndjson(result: CliResult, names: Set<string>): Record<string, unknown>[] {
  const lines = result.stdout.split("\n");
  assert.equal(lines.pop(), "", "stdout ends with a newline");
  const events = lines.map((line, i) => {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new Error(
        `stdout line ${i + 1} is not JSON (${error}): ${line}\n${describeRun(result)}`,
      );
    }
    assert.ok(value !== null && typeof value === "object" && !Array.isArray(value), line);
    const event = (value as Record<string, unknown>).event;
    assert.ok(typeof event === "string" && names.has(event), `unknown event in: ${line}`);
    return value as Record<string, unknown>;
  });
  assert.ok(events.length >= 2, describeRun(result));
  assert.equal(events[0].event, "run_start");
  assert.equal(events.at(-1)!.event, "summary", "the last line is the summary");
  assert.equal(events.filter((e) => e.event === "summary").length, 1);
  // Human lines went to stderr, none of them JSON.
  assert.notEqual(result.stderr.trim(), "");
  for (const line of result.stderr.split("\n")) assert.ok(!line.startsWith("{"), line);
  return events;
}

Deno.test("json: manager and quick upload print NDJSON with exact summary counts", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "ndjson_test_" });
  const data = join(dir, "data");
  const pass = { result: "PASS", particle_count: 1 };
  try {
    writeTree(data, {
      "A/stats.json": { json: pass },
      "A/2025-06-02 16:42:55.jpg": { bytes: 50 },
      "B/stats.json": { json: pass },
      "C/stats.json": { json: { result: "" } },
      "C/img.png": { bytes: 20 },
      "D/only.jpg": { bytes: 30 },
      "E/stats.json": { json: pass },
      "E/e.bmp": { bytes: 10 },
      "NotAUnit/report.txt": { bytes: 10 },
    });
    const first = await runUploadCli([data, "--json"], { cwd: dir });
    assert.equal(first.code, 0, describeRun(first));
    const s1 = ndjson(first, MANAGER_EVENTS).at(-1)!;
    assert.deepEqual(
      pick(s1, ["status", "exit_code", "scanned", "new", "modified", "unchanged", "uploaded"]),
      {
        status: "completed",
        exit_code: 0,
        scanned: 5,
        new: 5,
        modified: 0,
        unchanged: 0,
        uploaded: 5,
      },
    );
    assert.equal(s1.inserted, 5);
    assert.equal(s1.failed, 0);

    writeTree(data, {
      // B: new content -> rewritten; C: broken stats.json -> fails; E: only touched ->
      // re-read, and its content matches what the server holds: nothing is sent.
      "B/stats.json": { json: { result: "", particle_count: 2 }, mtime: T2 },
      "C/stats.json": { text: "{ not json", mtime: T2 },
      "E/stats.json": { json: pass, mtime: T2 },
      // F: new; G: new with a broken stats.json.
      "F/stats.json": { json: pass, mtime: T1 },
      "G/stats.json": { text: "", mtime: T1 },
    });
    const second = await runUploadCli([data, "--json"], { cwd: dir });
    assert.equal(second.code, 1, describeRun(second));
    const events = ndjson(second, MANAGER_EVENTS);
    const s2 = events.at(-1)!;
    assert.deepEqual(
      pick(s2, [
        "mode",
        "status",
        "exit_code",
        "scanned",
        "new",
        "modified",
        "changed",
        "unchanged",
        "queued",
        "uploaded",
        "inserted",
        "updated",
        "failed",
        "unreadable",
        "settling",
        "missing",
        "adopted",
      ]),
      {
        mode: "upload",
        status: "completed",
        exit_code: 1,
        scanned: 7,
        new: 2,
        modified: 3,
        changed: 5,
        unchanged: 2,
        queued: 5,
        uploaded: 2,
        inserted: 1,
        updated: 1,
        failed: 2,
        unreadable: 0,
        settling: 0,
        missing: 0,
        adopted: 1,
      },
    );
    assert.deepEqual(
      events.filter((e) => e.event === "folder_failed").map((e) => e.key).sort(),
      ["C", "G"],
    );
    const batches = events.filter((e) => e.event === "batch_done");
    assert.equal(batches.reduce((n, b) => n + Number(b.ok), 0), 2);
    assert.equal(s2.batches, batches.length);

    // Quick upload with --json: F again (unchanged on the server), G (still broken), a
    // duplicate and A.
    const quick = await runUploadCli(["data/F", "data/G", "data/F/", "data/A", "--json"], {
      script: QUICK,
      cwd: dir,
    });
    assert.equal(quick.code, 1, describeRun(quick));
    const qEvents = ndjson(quick, QUICK_EVENTS);
    const q = qEvents.at(-1)!;
    assert.deepEqual(
      pick(q, [
        "mode",
        "status",
        "exit_code",
        "given",
        "duplicates",
        "uploaded",
        "inserted",
        "updated",
        "failed",
        "recorded",
        "batches",
      ]),
      {
        mode: "quick",
        status: "completed",
        exit_code: 1,
        given: 4,
        duplicates: 1,
        uploaded: 2,
        inserted: 0,
        updated: 0,
        failed: 1,
        recorded: 3,
        batches: 1,
      },
    );
    assert.deepEqual(
      qEvents.filter((e) => e.event === "folder_uploaded").map((e) => e.key),
      ["F", "A"],
    );
    assert.deepEqual(qEvents.filter((e) => e.event === "folder_failed").map((e) => e.key), ["G"]);

    // A pipeline: paths on stdin, events out; the only failure is the path that is missing.
    const piped = await runUploadCli(["-", "--json", "--quiet"], {
      script: QUICK,
      cwd: dir,
      stdin: `${join(data, "B")}\n${join(data, "missing")}\n`,
    });
    assert.equal(piped.code, 1, describeRun(piped));
    const p = piped.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(p.at(-1).event, "summary");
    assert.equal(p.at(-1).uploaded, 1);
    assert.equal(p.at(-1).failed, 1);
  } finally {
    removeTree(dir);
  }
});

function pick(o: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.map((k) => [k, o[k]]));
}
