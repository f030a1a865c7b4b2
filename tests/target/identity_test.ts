/**
 * lib/target/identity.ts without a server: the rule that settles a device id from the server's
 * counts, the ids markers record (this tool's success.json, the original tools' markers),
 * and the count statement's text; the walk and the server together are in
 * tests/e2e/upstream_test.ts.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { decideIdentity, markerDevice, resolveIdentity } from "../../lib/target/identity.ts";
import { buildDeviceCountQuery, parseDeviceCounts } from "../../lib/sink/postgres/remote.ts";
import { UploadError } from "../../lib/core/errors.ts";
import type { FolderSnapshot } from "../../lib/source/snapshot.ts";
import { tempDir, writeTree } from "../../support/tree.ts";

const A = "5b0a7e2c-3d41-4f8a-9e6b-1c2d3e4f5a6b";
const B = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const C = "0b7b5d2e-9a0c-4c1e-8f53-4d7a5c1e2f30";

Deno.test("decideIdentity: rows under the candidate confirm it; rows only under others are a fork", () => {
  const cases: [string, [string, number][], boolean, ReturnType<typeof decideIdentity>][] = [
    ["nothing on the server", [], false, { kind: "unknown" }],
    ["only the candidate", [[A, 3]], false, { kind: "confirmed" }],
    ["the candidate among others", [[B, 30], [A, 1]], false, { kind: "confirmed" }],
    ["the candidate in upper case", [[A.toUpperCase(), 1]], false, { kind: "confirmed" }],
    ["another id", [[B, 33]], false, { kind: "conflict", others: [[B, 33]] }],
    ["another id, adopt", [[B, 33]], true, { kind: "adopt", id: B, rows: 33 }],
    ["two others, most first", [[C, 2], [B, 9]], false, {
      kind: "conflict",
      others: [[B, 9], [C, 2]],
    }],
    ["two others cannot be adopted", [[C, 2], [B, 9]], true, {
      kind: "conflict",
      others: [[B, 9], [C, 2]],
    }],
    ["zero counts say nothing", [[B, 0]], false, { kind: "unknown" }],
  ];
  for (const [label, counts, adopt, want] of cases) {
    assert.deepEqual(decideIdentity(A, new Map(counts), adopt), want, label);
  }
});

function snapshot(path: string, names: string[]): FolderSnapshot {
  return {
    path,
    key: path.split("/").at(-1)!,
    name: path.split("/").at(-1)!,
    files: names.map((name) => ({ name, size: 1, mtimeMs: 0 })),
    fingerprint: "f",
    newestMtimeMs: 0,
  };
}

const MARKERS = {
  successMarker: "success.json",
  legacyMarkers: ["upload_success.json", "upload_failed.json"],
};

Deno.test("markerDevice: success.json's device_id, else the original tools' storage paths", () => {
  using dir = tempDir();
  writeTree(dir.path, {
    "Ours/success.json": { json: { status: "success", device_id: A.toUpperCase() } },
    "Theirs/upload_failed.json": {
      json: {
        image_upload: {
          uploaded_images: [
            { storage_path: "Theirs/a.jpg" }, // the older one-bucket layout: no device
            { storage_path: `${B}/Theirs/b.jpg` },
          ],
        },
      },
    },
    "Both/success.json": { json: { device_id: A } },
    [`Both/upload_success.json`]: {
      json: { image_upload: { uploaded_images: [{ storage_path: `${B}/Both/b.jpg` }] } },
    },
    "Broken/success.json": { text: "{not json" },
    "Other/upload_success.json": {
      json: { image_upload: { uploaded_images: [{ storage_path: `${B}/Elsewhere/b.jpg` }] } },
    },
  });
  const at = (name: string, files: string[]) =>
    markerDevice(snapshot(join(dir.path, name), files), MARKERS);
  assert.equal(at("Ours", ["success.json"]), A);
  assert.equal(at("Theirs", ["upload_failed.json"]), B);
  assert.equal(at("Both", ["success.json", "upload_success.json"]), A, "ours first");
  assert.equal(at("Broken", ["success.json"]), undefined, "a broken marker says nothing");
  assert.equal(at("Other", ["upload_success.json"]), undefined, "another folder's path");
  assert.equal(at("Ours", []), undefined, "only markers the snapshot lists are read");
});

Deno.test("resolveIdentity: markers give the candidate; a conflict names DEVICE_ID=; no table, no query", async () => {
  using dir = tempDir();
  writeTree(dir.path, { "F1/success.json": { json: { device_id: B } } });
  const folders = async function* () {
    yield [
      snapshot(join(dir.path, "F0"), ["a.jpg"]),
      snapshot(join(dir.path, "F1"), ["success.json"]),
    ];
  };
  const asked: string[] = [];
  const table = { name: "device_test", queryable: true, hasFolderKey: true };
  const options = { ...MARKERS, candidate: A, adopt: false, base: "/data", folders: folders() };
  const held = await resolveIdentity(
    (sql) => {
      asked.push(sql);
      return Promise.resolve([`{"${B}": 2}`]);
    },
    table,
    options,
  );
  assert.deepEqual(held, { id: B, source: "markers" });
  assert.equal(asked.length, 1, "one statement for both folders");

  const refused = await resolveIdentity(
    () => Promise.resolve([`{"${C}": 2}`]),
    table,
    { ...options, folders: folders() },
  ).then(() => undefined, (e) => e);
  assert.ok(refused instanceof UploadError);
  assert.equal(refused.kind, "config");
  assert.match(
    refused.message,
    new RegExp(`under device ${C} and none under ${B}, the id the folders' markers record`),
  );
  assert.match(refused.hint!, new RegExp(`DEVICE_ID=${C}`));

  const none = await resolveIdentity(
    () => {
      throw new Error("no query without a table");
    },
    { ...table, queryable: false },
    { ...options, folders: folders() },
  );
  assert.deepEqual(none, { id: B, source: "markers" });
});

Deno.test("buildDeviceCountQuery: the keys in one JSON literal, joined as a set; parseDeviceCounts", () => {
  const sql = buildDeviceCountQuery({
    table: "lab.device_test",
    keys: ["L1/it's", "b\\c"],
    hasFolderKey: true,
  });
  assert.ok(sql.includes(`E'["L1/it''s","b\\\\\\\\c"]'::jsonb`), sql);
  assert.match(
    sql,
    /from "lab"\."device_test" x join k on x\.folder_name = k\.name and x\.folder_key = k\.key/,
  );
  const original = buildDeviceCountQuery({
    table: "device_test",
    keys: ["B1"],
    hasFolderKey: false,
  });
  assert.match(original, /join k on x\.folder_name = k\.key\n/);
  assert.throws(
    () => buildDeviceCountQuery({ table: "t", keys: [], hasFolderKey: true }),
    UploadError,
  );
  assert.deepEqual(parseDeviceCounts([`{"${A}" : 3, "${B}" : 1}`]), new Map([[A, 3], [B, 1]]));
  assert.deepEqual(parseDeviceCounts(["{}"]), new Map());
  assert.throws(() => parseDeviceCounts([]), UploadError);
  assert.throws(() => parseDeviceCounts(["[1]"]), UploadError);
});
