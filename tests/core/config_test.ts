/**
 * Tests of the user's defaults (config.ts): the default test-status rule and the marker
 * names.
 *
 * @module
 */

import assert from "node:assert/strict";
import { DEFAULT_CONFIG, defaultTestStatus, markerNames, type TestStatus } from "../../config.ts";

Deno.test("defaultTestStatus: no stats pending, non-empty result passed, else failed", async (t) => {
  const table: [string, unknown, TestStatus][] = [
    ["no stats.json (null)", null, "pending"],
    ["undefined stats", undefined, "pending"],
    ['result "PASS"', { result: "PASS" }, "passed"],
    ['result "FAIL" (non-empty: the rule only asks for a value)', { result: "FAIL" }, "passed"],
    ["result 0", { result: 0 }, "passed"],
    ["result true", { result: true }, "passed"],
    ["result a non-empty list", { result: ["ok"] }, "passed"],
    ["result a non-empty object", { result: { verdict: "ok" } }, "passed"],
    ['result ""', { result: "" }, "failed"],
    ["result null", { result: null }, "failed"],
    ["result false", { result: false }, "failed"],
    ["result missing", { test_id: "T-1", particle_count: 3 }, "failed"],
    ["result []", { result: [] }, "failed"],
    ["result {}", { result: {} }, "failed"],
    ["empty object", {}, "failed"],
    ["stats is an array", [{ result: "PASS" }], "failed"],
    ["stats is an empty array", [], "failed"],
    ["stats is a string", "PASS", "failed"],
    ["stats is a number", 42, "failed"],
  ];
  for (const [name, stats, want] of table) {
    await t.step(name, () => {
      assert.equal(defaultTestStatus({ stats, images: [] }), want);
      // Images do not change the verdict.
      assert.equal(defaultTestStatus({ stats, images: ["a.jpg", "b.png"] }), want);
    });
  }
});

Deno.test("markerNames: current and legacy markers", () => {
  assert.deepEqual(
    [...markerNames(DEFAULT_CONFIG)].sort(),
    ["failed.json", "success.json", "upload_failed.json", "upload_success.json"],
  );
  assert.deepEqual(
    [...markerNames({ successMarker: "ok", failedMarker: "bad", legacyMarkers: [] })].sort(),
    ["bad", "ok"],
  );
});

Deno.test("DEFAULT_CONFIG: frozen, with the defaults the design documents", () => {
  assert.ok(Object.isFrozen(DEFAULT_CONFIG));
  assert.equal(DEFAULT_CONFIG.statsFileName, "stats.json");
  assert.ok(DEFAULT_CONFIG.minAgeSeconds >= 2 && DEFAULT_CONFIG.minAgeSeconds <= 5);
  assert.ok(DEFAULT_CONFIG.batchSize > 0 && DEFAULT_CONFIG.maxRetries >= 0);
  assert.equal(DEFAULT_CONFIG.batchDelaySeconds, 0);
  for (const ext of DEFAULT_CONFIG.imageExtensions) assert.match(ext, /^\.[a-z]+$/);
});
