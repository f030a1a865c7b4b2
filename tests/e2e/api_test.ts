/**
 * The library API (mod.ts): `deno doc --lint` finds every exported symbol documented and
 * every type it refers to exported; a program importing mod.ts alone uploads a tree, then
 * named folders, to the embedded default and reads the tracker back.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { REPO_ROOT } from "../../support/cli.ts";
import { tempDir, writeTree } from "../../support/tree.ts";
import {
  connectorFor,
  DEFAULT_CONFIG,
  EXIT,
  resolveTarget,
  runQuickUpload,
  runUpload,
  TOOL_VERSION,
  Tracker,
} from "../../mod.ts";

Deno.test("mod.ts: deno doc --lint reports no problem in the public API", async () => {
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--lint", "mod.ts"],
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(result.stdout) + new TextDecoder().decode(result.stderr);
  const problems = text.split("\n").filter((line) => /^error\[/.test(line));
  assert.deepEqual(problems, [], text);
  assert.equal(result.code, 0, text);
});

Deno.test("mod.ts: a program embedding the tool uploads a tree and named folders, then reads the tracker", async () => {
  using dir = tempDir();
  const base = join(dir.path, "data");
  writeTree(base, {
    "Batch1/stats.json": { json: { result: "PASS" } },
    "Batch2/stats.json": { json: { result: "FAIL" } },
    "Later/Batch3/stats.json": { json: { result: "PASS" } },
  });
  // Nothing configured: no URL or libpq variable, so rows go to the embedded database.
  const env: Record<string, string> = {};
  const dbPath = join(dir.path, "upload_tracker.db");
  const config = { ...DEFAULT_CONFIG };
  const tracker = Tracker.open(dbPath);
  const connector = connectorFor(resolveTarget({ dbPath, env }), env);
  try {
    assert.equal(connector.embedded, true);
    const upload = await runUpload({
      basePath: Deno.realPathSync(base),
      config,
      tracker,
      mode: "upload",
      connector,
      deviceId: tracker.deviceId(),
    });
    assert.equal(upload.exitCode, EXIT.OK, JSON.stringify(upload));
    assert.equal(upload.counters.uploaded, 3);

    writeTree(base, { "Batch4/stats.json": { json: { result: "PASS" } } });
    const quick = await runQuickUpload([join(base, "Batch4")], {
      config,
      connector,
      deviceId: tracker.deviceId(),
      tracker,
    });
    assert.equal(quick.exitCode, EXIT.OK, JSON.stringify(quick));
    assert.equal(quick.counters.uploaded, 1);

    const status = tracker.status();
    assert.equal(status.total, 4);
    assert.equal(status.byStatus.success, 4);
    assert.match(TOOL_VERSION, /^\d+\.\d+\.\d+$/);
  } finally {
    await connector.close();
    tracker.close();
  }
});
