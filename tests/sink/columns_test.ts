/**
 * The column table (lib/sink/columns.ts): the payload's fixed order, the raw stats text,
 * the declaration's checks, the real `pdf_url` (optional: written only when a row carries
 * it), and a copy of the declaration with one more, made-up column (`review_url`): every
 * generated list, type text and DDL picks it up —
 * the row type, the payload, the jsonb_to_recordset types, the staging table and its casts,
 * the COPY line, the insert and ON CONFLICT lists, CREATE TABLE, the upgrade, the schema
 * check — and against a real server the column is created, added by an upgrade, and written
 * both ways a batch travels.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../lib/core/errors.ts";
import {
  type ColumnSpec,
  defineColumns,
  type DeviceInfo,
  type RowOf,
  UPLOAD_COLUMN_LIST,
  UPLOAD_COLUMNS,
  UPLOAD_ROW_FLAGS,
  type UploadRow,
} from "../../lib/sink/columns.ts";
import {
  headerToJson,
  rowJsonAndRaw,
  rowToJson,
  rowToJsonWithStats,
} from "../../lib/sink/payload.ts";
import { buildUpsertScript, buildUpsertStatement } from "../../lib/sink/postgres/upsert.ts";
import { buildSchemaStatements } from "../../lib/sink/postgres/schema/ddl.ts";
import { findMissing } from "../../lib/sink/postgres/schema/checks.ts";
import type { RelationState, SchemaInspection } from "../../lib/sink/postgres/schema/inspect.ts";
import { PsqlSession } from "../../lib/sink/postgres/psql.ts";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_DATABASE,
  TEST_USER,
} from "../../support/postgres.ts";

const NO_SERVER = !hasPostgres();

const DEVICE: DeviceInfo = {
  id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a",
  name: "pi-7",
  type: "image_analyzer",
};

function sampleRow(key: string, overrides: Partial<UploadRow> = {}): UploadRow {
  return {
    folder_key: key,
    folder_name: key.split("/").at(-1) ?? key,
    images: ["a.jpg"],
    test_results: { result: "ok" },
    test_status: "passed",
    test_date: "2025-06-02T16:42:55.000Z",
    metadata: { folder_hash: `fh-${key}`, content_hash: `ch-${key}` },
    ...overrides,
  };
}

Deno.test("rowToJson: the payload's fields in their fixed order, flags and optional fields last", () => {
  const plain = JSON.parse(rowToJson(sampleRow("L1/B1")));
  assert.deepEqual(Object.keys(plain), [
    "folder_key",
    "folder_name",
    "images",
    "test_results",
    "test_status",
    "test_date",
    "metadata",
  ]);
  const all = { ...sampleRow("L1/B2"), strict: true, image_objects: ["k/a.jpg"] };
  assert.deepEqual(Object.keys(JSON.parse(rowToJson(all))).slice(-2), ["strict", "image_objects"]);
  // A flag travels only when true; a missing value is null; no stray property travels.
  const odd = { ...sampleRow("L1/B3"), strict: false, extra: 1 } as UploadRow;
  assert.equal(rowToJson(odd), rowToJson(sampleRow("L1/B3")));
  assert.equal(
    JSON.parse(rowToJson({ ...sampleRow("x"), test_results: undefined })).test_results,
    null,
  );
});

Deno.test("rowToJsonWithStats splices the file's own text where rowToJson puts test_results", () => {
  const row = { ...sampleRow("L1/B1"), test_results: null, image_objects: ["k"] };
  const stats = '{ "big": 12345678901234567890,\n "tiny": 1e-400 }';
  const json = rowToJsonWithStats(row, stats);
  assert.ok(json.includes(`"test_results":${stats},`), json);
  assert.deepEqual(
    JSON.parse(json.replace(stats, "null")),
    JSON.parse(rowToJson(row)),
    "everything but the stats as rowToJson makes it",
  );
  assert.equal(rowToJsonWithStats(row, null), rowToJson(row));
});

Deno.test("the stats value is never serialized again: its text travels (memory of a 16 MiB file)", () => {
  const parsed = {
    toJSON() {
      throw new Error("the parsed stats were serialized again");
    },
  };
  const row = { ...sampleRow("L1/B1"), test_results: parsed };
  const json = rowToJsonWithStats(row, '{"a": 1}');
  assert.equal(JSON.parse(json).test_results.a, 1);
  const script = buildUpsertScript(
    [row],
    { table: "device_test", device: DEVICE, batchName: "b" },
    [
      json,
    ],
  );
  assert.match(script, /\t\{"a": 1\}\t/, "the COPY line carries the text");
});

Deno.test("rowJsonAndRaw: the span is the stats text, and COPY lines from it match those found again", () => {
  const row = { ...sampleRow("L1/B1"), test_results: null, image_objects: ["k"] };
  const options = { table: "device_test", device: DEVICE, batchName: "b" };
  for (const stats of ['{"a": 1}', '{ "é": "\\t" }', null]) {
    const { json, rawSpan } = rowJsonAndRaw(row, stats);
    assert.equal(json, rowToJsonWithStats(row, stats));
    assert.equal(json.slice(...rawSpan), stats ?? "null");
    assert.equal(
      buildUpsertScript([row], options, [json], [rawSpan]),
      buildUpsertScript([row], options, [json]),
    );
  }
});

Deno.test("headerToJson: the header columns in declaration order", () => {
  assert.equal(
    headerToJson({ deviceId: DEVICE.id, deviceName: "n", deviceType: "t", batchName: "b1" }),
    `{"device_id":"${DEVICE.id}","device_name":"n","device_type":"t","upload_batch":"b1"}`,
  );
});

Deno.test("defineColumns refuses a declaration that cannot work", () => {
  const base: ColumnSpec[] = [...UPLOAD_COLUMN_LIST];
  const cases: [string, ColumnSpec[], string[]][] = [
    ["twice", [...base, base[6]], ["device_id", "folder_key"]],
    ["no value", [...base, { name: "x", doc: "", type: "text", owner: "tool", travel: "row" }], [
      "device_id",
    ]],
    ["not a plain name", [...base, {
      name: "Pdf Url",
      doc: "",
      type: "text",
      owner: "tool",
      travel: "row",
      value: "string",
    }], ["device_id"]],
    ["cannot travel", [...base, {
      name: "x",
      doc: "",
      type: "text",
      owner: "server",
      travel: "row",
      value: "string",
    }], ["device_id"]],
    ["missing", base, ["device_id", "nope"]],
    ["object column", base.filter((c) => c.name !== "metadata"), ["device_id"]],
  ];
  for (const [why, columns, key] of cases) {
    assert.throws(
      () => defineColumns(columns, UPLOAD_ROW_FLAGS, key),
      (e) => e instanceof UploadError && e.kind === "fatal" && e.message.includes(why),
      why,
    );
  }
});

// ---------------------------------------------------------------------------------------
// pdf_url: declared once, optional

Deno.test("pdf_url: in CREATE TABLE and the upgrade; a statement writes it only when a row carries it", () => {
  const field = UPLOAD_COLUMNS.payload.find((f) => f.name === "pdf_url");
  assert.equal(field?.presence, "optional");
  const [ddl] = buildSchemaStatements({ table: "device_test", device: DEVICE });
  assert.match(ddl, /\n {6}pdf_url text,\n/, "created with the table");
  assert.match(ddl, /\('pdf_url', 'text'\)/, "added by the upgrade when missing");
  const options = { table: "device_test", device: DEVICE, batchName: "b1" };
  const plain = sampleRow("L1/B1");
  assert.doesNotMatch(buildUpsertStatement([plain], options), /pdf_url/, "left as it is");
  const stored = { ...plain, image_objects: [], pdf_url: "https://x/r.pdf" };
  const statement = buildUpsertStatement([stored], options);
  assert.match(statement, /\bpdf_url text\b/, "unpacked");
  assert.match(statement, /\n {4}pdf_url = excluded\.pdf_url\b/, "rewritten with the row");
  const none = { ...plain, image_objects: [], pdf_url: null };
  assert.equal(JSON.parse(rowToJson(none)).pdf_url, null, "no report: null is sent");
  assert.match(buildUpsertStatement([none], options), /pdf_url = excluded\.pdf_url/);
});

// ---------------------------------------------------------------------------------------
// One more column: review_url

/** The declaration with one edit: a reviewer's link. */
const WITH_REVIEW_LIST = [
  ...UPLOAD_COLUMN_LIST,
  {
    name: "review_url",
    doc: "A reviewer's link to the run",
    type: "text",
    owner: "tool",
    travel: "row",
    value: "string | null",
  },
] as const satisfies readonly ColumnSpec[];
const WITH_REVIEW = defineColumns(WITH_REVIEW_LIST, UPLOAD_ROW_FLAGS, UPLOAD_COLUMNS.key);

/** The generated row type has the field (a missing one fails `deno check`). */
type ReviewRow = RowOf<typeof WITH_REVIEW_LIST, typeof UPLOAD_ROW_FLAGS>;

function reviewRow(key: string, url: string | null): ReviewRow {
  return { ...sampleRow(key), review_url: url };
}

const OPTIONS = { table: "device_test", device: DEVICE, batchName: "b1", columns: WITH_REVIEW };

Deno.test("review_url: one declaration entry, and every generated list has it", () => {
  const row = reviewRow("L1/B1", "https://x/r.pdf");
  const json = rowToJson(row, WITH_REVIEW);
  assert.deepEqual(Object.keys(JSON.parse(json)).slice(-2), ["metadata", "review_url"]);
  assert.equal(
    JSON.parse(rowToJsonWithStats(row, '{"a":1}', WITH_REVIEW)).review_url,
    row.review_url,
  );

  const statement = buildUpsertStatement([row], OPTIONS, [json]);
  assert.match(statement, /metadata jsonb, review_url text, strict boolean\)/, "recordset types");
  assert.match(statement, /insert into "device_test" as t \([^)]*\bdata_type, review_url\)/s);
  assert.match(statement, /'image_analysis', i\.review_url\n/, "insert values");
  assert.match(statement, /\n {4}review_url = excluded\.review_url\n/, "ON CONFLICT update");
  assert.doesNotMatch(
    buildUpsertStatement([sampleRow("x")], { ...OPTIONS, columns: undefined }),
    /review_url/,
  );

  const script = buildUpsertScript([row], OPTIONS, [json]);
  assert.match(
    script,
    /create temp table upload_rows \(metadata text, [^)]*test_date text, review_url text, strict/,
  );
  assert.match(
    script,
    /u\.test_date::timestamptz as test_date,\s+u\.review_url,\s+u\.strict::boolean/,
  );
  const line = script.split("\n").find((l) => l.startsWith("\\{"))!.split("\t");
  assert.equal(line.length, WITH_REVIEW.payload.length, "one COPY field per staging column");
  assert.equal(line[7], "https://x/r.pdf", "after metadata (first), folder_key, ..., test_date");

  const [ddl] = buildSchemaStatements({
    table: "device_test",
    device: DEVICE,
    columns: WITH_REVIEW,
  });
  assert.match(
    ddl,
    /\n {6}data_type text default 'image_analysis',\n {6}review_url text,\n {6}unique/,
  );
  assert.match(
    ddl,
    /\('data_type', 'text default ''image_analysis'''\),\n\s+\('review_url', 'text'\)/,
  );
  const [plain] = buildSchemaStatements({ table: "device_test", device: DEVICE });
  assert.doesNotMatch(plain, /review_url/);
});

/** A complete relation as the inspection would report a table of these columns. */
function relation(columns: readonly ColumnSpec[]): RelationState {
  return {
    name: "device_test",
    owner: true,
    rls: false,
    forceRls: false,
    columns: Object.fromEntries(columns.map((c) => [c.name, {
      type: c.type,
      notNull: c.notNull === true,
      hasDefault: c.default !== undefined,
      identity: false,
    }])),
    unique: [{
      index: "k",
      constraint: "k",
      primary: false,
      usable: true,
      columns: ["device_id", "folder_key"],
    }, { index: "p", constraint: "p", primary: true, usable: true, columns: ["id"] }],
    foreignKeys: [{
      name: "f",
      columns: ["device_id"],
      references: "devices",
      referencesDevices: true,
    }],
    privileges: { select: true, insert: true, update: true },
    policies: [],
    folderKeyTrigger: true,
  };
}

Deno.test("review_url: the schema check finds a table without it incomplete", () => {
  const devices = { ...relation([]), name: "devices", unique: [relation([]).unique[1]] };
  devices.columns = { id: { type: "uuid", notNull: true, hasDefault: false, identity: false } };
  const inspection: SchemaInspection = {
    role: "lab",
    bypassRls: false,
    statementTimeout: "0",
    schema: "public",
    schemaExists: true,
    schemaUsage: true,
    schemaCreate: true,
    genRandomUuid: true,
    table: relation(UPLOAD_COLUMN_LIST),
    devices,
    deviceRow: null,
  };
  assert.deepEqual(findMissing(inspection, "device_test"), []);
  assert.deepEqual(findMissing(inspection, "device_test", WITH_REVIEW), [
    "column review_url of device_test",
  ]);
  inspection.table = relation(WITH_REVIEW_LIST);
  assert.deepEqual(findMissing(inspection, "device_test", WITH_REVIEW), []);
});

function connection(pg: PgServer) {
  return {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", TEST_USER, "-d", TEST_DATABASE],
    env: {},
    display: `${pg.socketDir}:${pg.port}/${TEST_DATABASE}`,
  };
}

Deno.test({
  name:
    "review_url against PostgreSQL: added by the upgrade, written by the statement and the script",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const session = await PsqlSession.start(connection(pg));
    const run = async (sql: string, script = false) => {
      const reply = await session.run(sql, { timeoutMs: 60_000, script });
      if (!reply.ok) assert.fail(`${reply.sqlstate}: ${reply.message}`);
      return reply.rows;
    };
    try {
      // Today's table first: the declaration with review_url upgrades it.
      await run(buildSchemaStatements({ table: "device_test", device: DEVICE })[0]);
      await run(
        buildSchemaStatements({ table: "device_test", device: DEVICE, columns: WITH_REVIEW })[0],
      );
      assert.deepEqual(
        await run(
          "select data_type from information_schema.columns where table_name = 'device_test' " +
            "and column_name = 'review_url'",
        ),
        ["text"],
      );
      const a = reviewRow("L1/A", "https://x/a.pdf");
      const b = reviewRow("L1/B", null);
      await run(buildUpsertStatement([a], OPTIONS, [rowToJson(a, WITH_REVIEW)]));
      await run(buildUpsertScript([b], OPTIONS, [rowToJson(b, WITH_REVIEW)]), true);
      assert.deepEqual(
        await run(
          "select folder_key || '=' || coalesce(review_url, '-') from device_test order by 1",
        ),
        ["L1/A=https://x/a.pdf", "L1/B=-"],
      );
      // A rewrite sets it like the tool's other columns.
      const changed = { ...a, review_url: "https://x/a2.pdf", metadata: { content_hash: "new" } };
      await run(buildUpsertScript([changed], OPTIONS, [rowToJson(changed, WITH_REVIEW)]), true);
      assert.deepEqual(
        await run("select review_url from device_test where folder_key = 'L1/A'"),
        ["https://x/a2.pdf"],
      );
    } finally {
      await session.close();
      await pg.close();
    }
  },
});
