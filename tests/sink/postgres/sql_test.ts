/**
 * SQL text: quoting unit tests, a fuzz test that round-trips hostile strings through a
 * real server byte for byte (standard_conforming_strings on and off, plain literals and
 * the JSON payload of the upsert), and the upsert's semantics. The statements are built
 * as the write path builds them: from the rows and the JSON texts the planner made
 * (`rowToJson`). The schema's tests are in schema_test.ts, the COPY script's in
 * sql_script_test.ts, the column table's in tests/sink/columns_test.ts.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../../lib/core/errors.ts";
import {
  type PsqlConnection,
  PsqlSession,
  type StatementReply,
} from "../../../lib/sink/postgres/psql.ts";
import {
  buildUpsertStatement as buildFromTexts,
  parseUpsertReply,
  UPSERT_OVERHEAD_BYTES,
  type UpsertOptions,
} from "../../../lib/sink/postgres/upsert.ts";
import { rowStatementBytes } from "../../../lib/sink/postgres/quote.ts";
import type { DeviceInfo, UploadRow } from "../../../lib/sink/columns.ts";
import { rowToJson } from "../../../lib/sink/payload.ts";
import { quoteIdent, sqlLiteral, tableRef } from "../../../lib/sink/postgres/quote.ts";
import { buildSchemaStatements } from "../../../lib/sink/postgres/schema.ts";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_DATABASE,
  TEST_USER,
} from "../../../support/postgres.ts";

const NO_SERVER = !hasPostgres();

const DEVICE: DeviceInfo = {
  id: "6f1c2b8e-2f7c-4a55-9a53-0d6f0c1c9e1a",
  name: "pi-7 's \\ $$ lab",
  type: "image_analyzer",
};

function socketConnection(pg: PgServer, database = TEST_DATABASE): PsqlConnection {
  return {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", TEST_USER, "-d", database],
    env: {},
    display: `${pg.socketDir}:${pg.port}/${database}`,
  };
}

async function ok(session: PsqlSession, sql: string): Promise<string[]> {
  const reply: StatementReply = await session.run(sql, { timeoutMs: 60_000 });
  if (!reply.ok) {
    assert.fail(
      `statement failed: ${reply.sqlstate} ${reply.message}\n${reply.stderr ?? ""}\n${
        sql.slice(0, 500)
      }`,
    );
  }
  return reply.rows;
}

function hex(s: string): string {
  return Array.from(new TextEncoder().encode(s), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------
// Pure unit tests

Deno.test("sqlLiteral doubles quotes and switches to E'' for backslashes", () => {
  assert.equal(sqlLiteral(""), "''");
  assert.equal(sqlLiteral("abc"), "'abc'");
  assert.equal(sqlLiteral("it's"), "'it''s'");
  assert.equal(sqlLiteral("'"), "''''");
  assert.equal(sqlLiteral("a\\b"), "E'a\\\\b'");
  assert.equal(sqlLiteral("\\'"), "E'\\\\'''");
  assert.equal(sqlLiteral("E'x'"), "'E''x'''");
  assert.equal(sqlLiteral("$$ :foo \n\t"), "'$$ :foo \n\t'");
  assert.equal(sqlLiteral("😀é"), "'😀é'");
});

Deno.test("sqlLiteral refuses NUL and unpaired surrogates as data errors", () => {
  for (const bad of ["a\0b", "\0", "x\ud800", "\udc00y"]) {
    assert.throws(
      () => sqlLiteral(bad),
      (error) => error instanceof UploadError && error.kind === "data",
      JSON.stringify(bad),
    );
  }
});

Deno.test("quoteIdent quotes identifiers", () => {
  assert.equal(quoteIdent("device_test"), '"device_test"');
  assert.equal(quoteIdent('my "t"'), '"my ""t"""');
  assert.equal(quoteIdent("Upper Case"), '"Upper Case"');
  assert.throws(() => quoteIdent(""), UploadError);
  assert.throws(() => quoteIdent("a\0"), UploadError);
});

function sampleRow(key: string, overrides: Partial<UploadRow> = {}): UploadRow {
  return {
    folder_key: key,
    folder_name: key.split("/").at(-1) ?? key,
    images: ["2025-06-02 16:42:55.jpg", "b.png"],
    test_results: { result: "ok", score: 0.93, items: [1, 2, 3] },
    test_status: "passed",
    test_date: "2025-06-02T16:42:55.000Z",
    metadata: {
      folder_hash: `fh-${key}`,
      content_hash: `ch-${key}`,
      total_images: 2,
      files_processed: ["2025-06-02 16:42:55.jpg", "b.png", "stats.json"],
      upload_timestamp: "2025-06-02T17:00:00.000Z",
    },
    ...overrides,
  };
}

const UPSERT_OPTIONS = { table: "device_test", device: DEVICE, batchName: "batch_1" };

/** The statement as the write path builds it: the rows with the JSON texts that travel. */
function buildUpsertStatement(rows: UploadRow[], options: UpsertOptions): string {
  return buildFromTexts(rows, options, rows.map((row) => rowToJson(row)));
}

Deno.test("buildUpsertStatement refuses what would fail or misbehave on the server", () => {
  assert.throws(
    () => buildUpsertStatement([], UPSERT_OPTIONS),
    (error) => error instanceof UploadError && error.kind === "fatal",
  );
  assert.throws(
    () => buildUpsertStatement([sampleRow("a"), sampleRow("a")], UPSERT_OPTIONS),
    (error) => error instanceof UploadError && error.kind === "fatal" && error.subject === "a",
  );
  assert.throws(
    () => buildUpsertStatement([sampleRow("a", { images: ["x\0.jpg"] })], UPSERT_OPTIONS),
    (error) =>
      error instanceof UploadError && error.kind === "data" && error.subject === "a" &&
      /NUL/.test(error.message),
  );
  assert.throws(
    () => buildUpsertStatement([sampleRow("b", { test_results: { "k\0": 1 } })], UPSERT_OPTIONS),
    (error) => error instanceof UploadError && error.kind === "data" && error.subject === "b",
  );
  assert.throws(
    () =>
      buildUpsertStatement([sampleRow("a")], {
        ...UPSERT_OPTIONS,
        device: { ...DEVICE, id: "not-a-uuid" },
      }),
    (error) => error instanceof UploadError && error.kind === "config",
  );
  assert.throws(
    () => buildUpsertStatement([sampleRow("a")], { ...UPSERT_OPTIONS, table: "a.b.c" }),
    (error) => error instanceof UploadError && error.kind === "config",
  );
});

Deno.test("buildUpsertStatement: every value travels in one JSON literal", () => {
  const sql = buildUpsertStatement(
    [sampleRow("x'); drop table device_test; --", { folder_name: "\\'" })],
    UPSERT_OPTIONS,
  );
  // Exactly one literal holds the payload; the SQL around it is constant text.
  assert.equal(sql.match(/jsonb_to_recordset/g)?.length, 1);
  assert.ok(!sql.includes("drop table device_test; --'"), "the key is inside the JSON literal");
  assert.match(sql, /^with payload as \(\n {2}select E'/);
});

Deno.test("rowStatementBytes of a row's JSON text is exactly what it adds to a statement", () => {
  const bytes = (s: string) => new TextEncoder().encode(s).length;
  const a = sampleRow("a\\b", { test_results: { "q'uote": "é😀\n" } });
  const b = sampleRow("c'd\\", { images: ["x\\y.jpg", "中文.png"] });
  const one = buildUpsertStatement([a], UPSERT_OPTIONS);
  const two = buildUpsertStatement([a, b], UPSERT_OPTIONS);
  const [jsonA, jsonB] = [rowToJson(a), rowToJson(b)];
  assert.equal(bytes(two) - bytes(one), rowStatementBytes(jsonB));
  assert.ok(
    bytes(two) <= UPSERT_OVERHEAD_BYTES + rowStatementBytes(jsonA) + rowStatementBytes(jsonB),
  );
  // Plain ASCII (the common row, measured by one scan) and each kind of character apart.
  const plain = sampleRow("L1/B1");
  const three = buildUpsertStatement([a, plain], UPSERT_OPTIONS);
  assert.equal(bytes(three) - bytes(one), rowStatementBytes(rowToJson(plain)));
  for (const s of ["ab", "a'b", "a\\b", "é", "中", "😀"]) {
    assert.equal(rowStatementBytes(s), bytes(s.replace(/['\\]/g, "$&$&")) + 1, s);
  }
});

Deno.test("parseUpsertReply reads the one-line JSON reply", () => {
  assert.deepEqual(parseUpsertReply(['{"inserted":2,"updated":1}']), { inserted: 2, updated: 1 });
  assert.deepEqual(
    parseUpsertReply(['{"inserted" : 1, "updated" : 0, "conflicts" : [["B1", "/d/L2/B1"]]}']),
    { inserted: 1, updated: 0, conflicts: [["B1", "/d/L2/B1"]] },
  );
  assert.throws(() => parseUpsertReply([]), UploadError);
  assert.throws(() => parseUpsertReply(["1"]), UploadError);
});

Deno.test("tableRef splits and quotes schema.table; devices lives beside it", () => {
  const plain = tableRef("device_test");
  assert.equal(plain.schema, undefined);
  assert.equal(plain.sql, '"device_test"');
  assert.equal(plain.devicesSql, '"devices"');
  const qualified = tableRef('lab.my "t"');
  assert.equal(qualified.schema, "lab");
  assert.equal(qualified.name, 'my "t"');
  assert.equal(qualified.sql, '"lab"."my ""t"""');
  assert.equal(qualified.devicesSql, '"lab"."devices"');
  assert.equal(qualified.regclass, `'"lab"."my ""t"""'`);
  for (const bad of ["a.b.c", ".t", "s.", ""]) {
    assert.throws(() => tableRef(bad), (e) => e instanceof UploadError && e.kind === "config", bad);
  }
});

// ---------------------------------------------------------------------------------------
// Fuzz: hostile strings through a real server

const PIECES = [
  "'",
  "''",
  "'''",
  "\\",
  "\\\\",
  "\\'",
  "\\\\'",
  "$$",
  "$a$",
  "$uploader$",
  "E'",
  "e'",
  "U&'",
  "\n",
  "\r",
  "\r\n",
  "\t",
  "\f",
  "\v",
  "\b",
  "\x1b[31m",
  "\x7f",
  ":foo",
  ":'foo'",
  ':"foo"',
  ":ERROR",
  ":'LAST_ERROR_MESSAGE'",
  "\\echo x",
  "\\if :ERROR",
  "\\endif",
  "\\q",
  "\\! echo pwned",
  "\n\\echo @@reply-0 ok 1\n",
  ";",
  "--",
  "/*",
  "*/",
  '"',
  '\\"',
  "\\u0000",
  "\\x00",
  "%s",
  "{",
  "}",
  "[",
  ",",
  "NULL",
  "null",
  "é",
  "ß",
  "中文",
  "😀",
  "👩‍🔬",
  "\u2028",
  "\ufeff",
  "\u00a0",
  "a",
  " ",
  "Batch54",
  "2025-06-02 16:42:55.jpg",
];

/** A small deterministic PRNG (mulberry32), so a failure can be reproduced from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomString(random: () => number): string {
  const parts: string[] = [];
  const count = Math.floor(random() * 12);
  for (let i = 0; i < count; i++) {
    const pick = random();
    if (pick < 0.6) {
      parts.push(PIECES[Math.floor(random() * PIECES.length)]);
    } else if (pick < 0.75) {
      parts.push(String.fromCharCode(1 + Math.floor(random() * 31))); // control, no NUL
    } else if (pick < 0.9) {
      // any scalar value except NUL and surrogates
      let cp = 1 + Math.floor(random() * 0x10ffff);
      if (cp >= 0xd800 && cp <= 0xdfff) cp -= 0x800;
      parts.push(String.fromCodePoint(cp));
    } else {
      parts.push(String.fromCharCode(32 + Math.floor(random() * 95)).repeat(1 + random() * 5));
    }
  }
  return parts.join("");
}

function fuzzStrings(seed: number, count: number): string[] {
  const random = prng(seed);
  const strings = ["", "'", "\\", "E'", "\\'", "$$", "\n", "''''", "\\\\'", ":foo"];
  while (strings.length < count) strings.push(randomString(random));
  return strings;
}

async function roundTripLiterals(session: PsqlSession, strings: string[]): Promise<void> {
  const chunk = 250;
  for (let start = 0; start < strings.length; start += chunk) {
    const part = strings.slice(start, start + chunk);
    const values = part.map((s, i) => `(${i}, ${sqlLiteral(s)})`).join(",\n");
    const rows = await ok(
      session,
      `select encode(convert_to(v, 'UTF8'), 'hex') from (values ${values}) as t(n, v) order by n`,
    );
    assert.equal(rows.length, part.length);
    part.forEach((s, i) => {
      assert.equal(rows[i], hex(s), `string ${start + i}: ${JSON.stringify(s)}`);
    });
  }
}

function hostileValue(random: () => number, depth = 0): unknown {
  const pick = random();
  if (depth < 3 && pick < 0.2) {
    const object: Record<string, unknown> = {};
    const n = Math.floor(random() * 4);
    for (let i = 0; i < n; i++) object[randomString(random)] = hostileValue(random, depth + 1);
    return object;
  }
  if (depth < 3 && pick < 0.35) {
    return Array.from({ length: Math.floor(random() * 4) }, () => hostileValue(random, depth + 1));
  }
  if (pick < 0.45) return Math.floor(random() * 2e9) - 1e9;
  if (pick < 0.5) return Math.round(random() * 1e6) / 1e3;
  if (pick < 0.55) return random() < 0.5;
  if (pick < 0.6) return null;
  return randomString(random);
}

function hostileRows(seed: number, count: number): UploadRow[] {
  const random = prng(seed);
  const rows: UploadRow[] = [];
  const keys = new Set<string>();
  while (rows.length < count) {
    const key = `${randomString(random)}/${randomString(random)}`;
    if (keys.has(key)) continue;
    keys.add(key);
    rows.push({
      folder_key: key,
      folder_name: randomString(random),
      images: Array.from({ length: Math.floor(random() * 4) }, () => randomString(random)),
      test_results: random() < 0.2 ? null : hostileValue(random),
      test_status: randomString(random),
      test_date: random() < 0.3 ? null : new Date(1.7e12 + random() * 1e10).toISOString(),
      metadata: {
        folder_hash: randomString(random),
        content_hash: `h${rows.length}`,
        total_images: 1,
        files_processed: [randomString(random)],
        upload_timestamp: new Date(1.7e12).toISOString(),
        note: hostileValue(random),
      },
    });
  }
  return rows;
}

async function readBackRows(session: PsqlSession, table: string): Promise<Map<string, string[]>> {
  const rows = await ok(
    session,
    `select encode(convert_to(folder_key, 'UTF8'), 'hex') || ' ' ||
       encode(convert_to(folder_name, 'UTF8'), 'hex') || ' ' ||
       coalesce((select string_agg(encode(convert_to(x, 'UTF8'), 'hex'), ',' order by o)
                 from unnest(images) with ordinality as u(x, o)), '') || ' ' ||
       encode(convert_to(test_status, 'UTF8'), 'hex') || ' ' ||
       coalesce(to_char(test_date at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), '-') || ' ' ||
       coalesce(test_results::text, '-') || ' ' || metadata::text
     from ${quoteIdent(table)} where upload_batch = 'fuzz'`,
  );
  const map = new Map<string, string[]>();
  for (const line of rows) {
    const fields = line.split(" ");
    const [key, ...rest] = fields.slice(0, 5);
    const tail = line.slice(fields.slice(0, 5).join(" ").length + 1);
    map.set(key, [...rest, tail]);
  }
  return map;
}

function checkRows(expected: UploadRow[], actual: Map<string, string[]>): void {
  assert.equal(actual.size, expected.length);
  for (const row of expected) {
    const got = actual.get(hex(row.folder_key));
    assert.ok(got, `row ${JSON.stringify(row.folder_key)} is missing`);
    const [name, images, status, date, rest] = got;
    const what = JSON.stringify(row.folder_key);
    assert.equal(name, hex(row.folder_name), what);
    assert.equal(images, row.images.map(hex).join(","), what);
    assert.equal(status, hex(row.test_status), what);
    assert.equal(date, row.test_date ?? "-", what);
    // test_results::text and metadata::text are each one line of JSON (jsonb escapes
    // newlines); split them at the boundary by parsing.
    const [results, metadata] = splitTwoJson(rest);
    assert.deepStrictEqual(results, row.test_results, `test_results of ${what}`);
    assert.deepStrictEqual(metadata, row.metadata, `metadata of ${what}`);
  }
}

/** Splits "<json or -> <json>" where both parts are JSON texts from PostgreSQL. */
function splitTwoJson(text: string): [unknown, unknown] {
  if (text.startsWith("- ")) return [null, JSON.parse(text.slice(2))];
  for (let i = text.indexOf(" "); i > 0; i = text.indexOf(" ", i + 1)) {
    try {
      return [JSON.parse(text.slice(0, i)), JSON.parse(text.slice(i + 1))];
    } catch (error) {
      // Not the boundary: a space inside the first JSON text. Try the next one.
      if (!(error instanceof SyntaxError)) throw error;
    }
  }
  throw new Error(`Cannot split ${text}`);
}

Deno.test({
  name: "fuzz: hostile strings round-trip byte for byte (standard_conforming_strings on/off)",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await pg.psql(
        "create database scs_off; alter database scs_off set standard_conforming_strings = off",
      );
      for (
        const [label, database, scs] of [
          ["standard_conforming_strings on", TEST_DATABASE, "on"],
          ["standard_conforming_strings off", "scs_off", "off"],
        ] as const
      ) {
        await t.step(label, async () => {
          const session = await PsqlSession.start(socketConnection(pg, database));
          try {
            assert.deepEqual(await ok(session, "show standard_conforming_strings"), [scs]);
            const seed = scs === "on" ? 1 : 2;
            await roundTripLiterals(session, fuzzStrings(seed, 3000));

            for (
              const statement of buildSchemaStatements({ table: "device_test", device: DEVICE })
            ) {
              await ok(session, statement);
            }
            const rows = hostileRows(seed + 100, 600);
            const options = { ...UPSERT_OPTIONS, batchName: "fuzz" };
            for (let start = 0; start < rows.length; start += 150) {
              const reply = parseUpsertReply(
                await ok(session, buildUpsertStatement(rows.slice(start, start + 150), options)),
              );
              assert.deepEqual(reply, { inserted: 150, updated: 0 });
            }
            checkRows(rows, await readBackRows(session, "device_test"));
            assert.deepEqual(await ok(session, "select name from devices"), [DEVICE.name]);
            assert.doesNotMatch(session.stderrTail(), /WARNING|nonstandard use/);
          } finally {
            await session.close();
          }
        });
      }
    } finally {
      await pg.close();
    }
  },
});

// ---------------------------------------------------------------------------------------
// Upsert semantics

/** Creates the schema as an owner would (the statement of buildSchemaStatements). */
async function createSchema(session: PsqlSession, table = "device_test"): Promise<void> {
  for (const statement of buildSchemaStatements({ table, device: DEVICE })) {
    await ok(session, statement);
  }
}

Deno.test({
  name: "upsert semantics: counts, unchanged rows untouched, odd table names",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    const session = await PsqlSession.start(socketConnection(pg));
    try {
      await createSchema(session);

      await t.step("an odd table name works the same", async () => {
        const table = 'odd $uploader$ "name" \\ x';
        await createSchema(session, table);
        const reply = parseUpsertReply(
          await ok(session, buildUpsertStatement([sampleRow("a")], { ...UPSERT_OPTIONS, table })),
        );
        assert.deepEqual(reply, { inserted: 1, updated: 0 });
      });

      const stamp = async (key: string) =>
        (await ok(
          session,
          `select updated_at::text || '|' || created_at::text || '|' || upload_batch
           from device_test where folder_key = ${sqlLiteral(key)}`,
        ))[0];
      const upsert = async (rows: UploadRow[], batchName: string) =>
        parseUpsertReply(
          await ok(session, buildUpsertStatement(rows, { ...UPSERT_OPTIONS, batchName })),
        );

      await t.step(
        "insert, unchanged, updated counts; updated_at moves only on change",
        async () => {
          const rows = [sampleRow("a/1"), sampleRow("a/2"), sampleRow("b/3")];
          assert.deepEqual(await upsert(rows, "batch_1"), { inserted: 3, updated: 0 });
          const before = await stamp("a/1");
          const beforeOther = await stamp("a/2");

          // Same content hash (a re-send after a crash, a touch): nothing is written.
          const resent = rows.map((row) => ({
            ...row,
            metadata: { ...row.metadata, upload_timestamp: "2030-01-01T00:00:00.000Z" },
          }));
          assert.deepEqual(await upsert(resent, "batch_2"), { inserted: 0, updated: 0 });
          assert.equal(await stamp("a/1"), before, "unchanged row keeps updated_at and batch");

          // One changed, one new, two unchanged.
          const changed = sampleRow("a/1", {
            test_status: "failed",
            metadata: { ...rows[0].metadata, content_hash: "ch-a/1-v2" },
          });
          assert.deepEqual(
            await upsert([changed, rows[1], rows[2], sampleRow("c/4")], "batch_3"),
            { inserted: 1, updated: 1 },
          );
          const after = (await stamp("a/1")).split("|");
          assert.notEqual(after[0], before.split("|")[0], "updated_at moved");
          assert.equal(after[1], before.split("|")[1], "created_at kept");
          assert.equal(after[2], "batch_3");
          assert.equal(await stamp("a/2"), beforeOther);
          assert.deepEqual(
            await ok(session, "select test_status from device_test where folder_key = 'a/1'"),
            ["failed"],
          );
          assert.deepEqual(await ok(session, "select count(*) from device_test"), ["4"]);
        },
      );

      await t.step("a bad value fails the statement with a data SQLSTATE", async () => {
        const reply = await session.run(
          buildUpsertStatement([sampleRow("bad", { test_date: "not a date" })], UPSERT_OPTIONS),
        );
        assert.ok(!reply.ok);
        assert.equal(reply.sqlstate.slice(0, 2), "22");
      });
    } finally {
      await session.close();
      await pg.close();
    }
  },
});
