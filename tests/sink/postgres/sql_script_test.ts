/**
 * The COPY upsert script (buildUpsertScript): COPY text escaping, and against a real server
 * the same rows as the jsonb statement (hostile text, stats text with its own layout,
 * strict rows, image_objects), with standard_conforming_strings on and off; a refused row,
 * and a staging table the role may not create, answer with their SQLSTATE and leave the
 * session usable.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../../lib/core/errors.ts";
import {
  type PsqlConnection,
  PsqlSession,
  type StatementReply,
} from "../../../lib/sink/postgres/psql.ts";
import {
  buildUpsertScript,
  buildUpsertStatement,
  parseUpsertReply,
} from "../../../lib/sink/postgres/upsert.ts";
import { copyField, textArrayLiteral } from "../../../lib/sink/postgres/copy_text.ts";
import type { DeviceInfo, UploadRow } from "../../../lib/sink/columns.ts";
import { rowToJsonWithStats } from "../../../lib/sink/payload.ts";
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

const OPTIONS = { table: "device_test", device: DEVICE, batchName: "batch_1" };

function socketConnection(pg: PgServer, database = TEST_DATABASE, user = TEST_USER) {
  const conn: PsqlConnection = {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", user, "-d", database],
    env: {},
    display: `${pg.socketDir}:${pg.port}/${database}`,
  };
  return conn;
}

async function ok(session: PsqlSession, sql: string, script = false): Promise<string[]> {
  const reply: StatementReply = await session.run(sql, { timeoutMs: 60_000, script });
  if (!reply.ok) {
    assert.fail(`failed: ${reply.sqlstate} ${reply.message}\n${reply.stderr ?? ""}`);
  }
  return reply.rows;
}

/** Text meant to break a lexer: quotes, psql meta-commands, COPY's escapes and markers. */
const NASTY = [
  "it's",
  '"quoted"',
  "$$dollar$$",
  "-- comment",
  "/* open",
  "\\",
  "\\.",
  "\\endif",
  "\\if true",
  "\\N",
  "a\tb",
  "line\nbreak",
  "cr\rlf",
  ":var :'var'",
  "`echo hi`",
  "{braces}",
  "é ü 中文 😀",
  "\u2028",
  ",",
  "",
];

/** A row whose every text field holds some of {@linkcode NASTY}, with its JSON text. */
function nastyRow(i: number, overrides: Partial<UploadRow> = {}): { row: UploadRow; json: string } {
  const pick = (k: number) => NASTY[(i + k) % NASTY.length];
  const key = `k${i} ${pick(0)}/${pick(1)}`;
  const row: UploadRow = {
    folder_key: key,
    folder_name: `${pick(2)} ${i}`,
    images: [`${pick(3)}.jpg`, `${pick(4)}.png`, pick(5)],
    test_results: null,
    test_status: i % 3 === 0 ? "pending" : "passed",
    test_date: i % 4 === 0 ? null : "2025-06-02T16:42:55.123Z",
    metadata: {
      folder_hash: `fh-${i}`,
      content_hash: `ch-${i}`,
      files_processed: [pick(6), pick(7), "stats.json"],
      source_path: `/data/${key}`,
      note: pick(8) + pick(9),
    },
    ...overrides,
  };
  // The stats file's own text: its layout, escapes and digits travel as they are.
  const stats = i % 5 === 0 ? null : `{\n\t"result": ${JSON.stringify(pick(10))},\r\n` +
    `  "big": 12345678901234567890123, "tiny": 1e-400,\n  "path": "C:\\\\runs\\\\${i}",\n` +
    `  "nested": {"a": [1, 2.50, "${pick(11).replace(/[\\"\n\r\t]/g, "")}"]}\n}\n`;
  return { row, json: rowToJsonWithStats(row, stats) };
}

Deno.test("copyField escapes backslash, newline, carriage return and tab; null is \\N", () => {
  assert.equal(copyField(null), "\\N");
  assert.equal(copyField("plain 'text' \"q\""), "plain 'text' \"q\"");
  assert.equal(copyField("a\\b\tc\nd\re"), "a\\\\b\\tc\\nd\\re");
  assert.equal(copyField("\\N"), "\\\\N");
  assert.equal(copyField("\\."), "\\\\.");
});

Deno.test("textArrayLiteral quotes every element", () => {
  assert.equal(textArrayLiteral([]), "{}");
  assert.equal(
    textArrayLiteral(["a", 'b "c"', "d\\e", "NULL", ""]),
    '{"a","b \\"c\\"","d\\\\e","NULL",""}',
  );
});

Deno.test("buildUpsertScript: one transaction, data lines start with a backslash", () => {
  const rows = [nastyRow(1), nastyRow(2)];
  const script = buildUpsertScript(rows.map((r) => r.row), OPTIONS, rows.map((r) => r.json));
  assert.match(script, /^begin;\n\\if :ERROR\n\\else\ncreate temp table upload_rows \(/);
  assert.match(
    script,
    /on commit drop;\n\\if :ERROR\n\\else\n\\set VERBOSITY verbose\ncopy pg_temp\.upload_rows from stdin;\n/,
  );
  const lines = script.split("\n");
  const from = lines.indexOf("copy pg_temp.upload_rows from stdin;") + 1;
  const to = lines.indexOf("\\.");
  assert.equal(to - from, 2, "one line per row");
  assert.equal(lines[to + 1], "\\set VERBOSITY default");
  for (const line of lines.slice(from, to)) assert.ok(line.startsWith("\\{"), line);
  assert.ok(script.endsWith("\\if :ERROR\n\\else\ncommit;\n\\endif\n\\endif\n\\endif\n"));
});

Deno.test("buildUpsertScript refuses what buildUpsertStatement refuses, and a JSON text of another row", () => {
  const { row, json } = nastyRow(1);
  assert.throws(
    () => buildUpsertScript([], OPTIONS),
    (e) => e instanceof UploadError && e.kind === "fatal",
  );
  assert.throws(
    () => buildUpsertScript([row, row], OPTIONS),
    (e) => e instanceof UploadError && e.kind === "fatal",
  );
  assert.throws(
    () => buildUpsertScript([{ ...row, folder_name: "x\0" }], OPTIONS),
    (e) => e instanceof UploadError && e.kind === "data",
  );
  assert.throws(
    () => buildUpsertScript([{ ...row, folder_name: "other" }], OPTIONS, [json]),
    (e) => e instanceof UploadError && e.kind === "fatal" && /does not match/.test(e.message),
  );
});

/** Every column the upsert writes, per row, as one JSON text sorted by key. */
async function readBack(session: PsqlSession, table: string): Promise<string[]> {
  return await ok(
    session,
    `select json_build_array(device_id, device_name, device_type, folder_key, folder_name,
       images, test_results, test_status, test_date, upload_batch, metadata, data_type,
       image_objects)::text from ${table} order by folder_key collate "C"`,
  );
}

Deno.test({
  name: "buildUpsertScript writes what buildUpsertStatement writes (scs on and off)",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await pg.psql(
        "create database scs_off; alter database scs_off set standard_conforming_strings = off",
      );
      for (const database of [TEST_DATABASE, "scs_off"]) {
        await t.step(database, async () => {
          const session = await PsqlSession.start(socketConnection(pg, database));
          try {
            for (const table of ["device_test", "device_test_b"]) {
              for (const sql of buildSchemaStatements({ table, device: DEVICE })) {
                await ok(session, sql);
              }
            }
            const built = Array.from(
              { length: 120 },
              (_, i) =>
                nastyRow(
                  i,
                  i % 7 === 0 ? { image_objects: [`s3://b/${NASTY[i % NASTY.length]}`] } : {},
                ),
            );
            const rows = built.map((b) => b.row);
            const json = built.map((b) => b.json);
            for (let start = 0; start < rows.length; start += 50) {
              const part = rows.slice(start, start + 50);
              const partJson = json.slice(start, start + 50);
              const script = buildUpsertScript(part, OPTIONS, partJson);
              assert.deepEqual(parseUpsertReply(await ok(session, script, true)), {
                inserted: part.length,
                updated: 0,
              });
              const statement = buildUpsertStatement(
                part,
                { ...OPTIONS, table: "device_test_b" },
                partJson,
              );
              assert.deepEqual(parseUpsertReply(await ok(session, statement)), {
                inserted: part.length,
                updated: 0,
              });
            }
            const a = await readBack(session, "device_test");
            assert.equal(a.length, rows.length);
            assert.deepEqual(a, await readBack(session, "device_test_b"));
            // Exact digits of the stats text survive.
            assert.deepEqual(
              await ok(
                session,
                "select count(*) from device_test where test_results->>'big' = '12345678901234567890123'",
              ),
              [String(rows.length - 24)],
            );

            // Unchanged re-send writes nothing; a changed row is updated.
            const again = buildUpsertScript(
              rows.slice(0, 50),
              { ...OPTIONS, batchName: "b2" },
              json.slice(0, 50),
            );
            assert.deepEqual(parseUpsertReply(await ok(session, again, true)), {
              inserted: 0,
              updated: 0,
            });
            const changed = { ...rows[3], metadata: { ...rows[3].metadata, content_hash: "v2" } };
            assert.deepEqual(
              parseUpsertReply(await ok(session, buildUpsertScript([changed], OPTIONS), true)),
              { inserted: 0, updated: 1 },
            );
            assert.deepEqual(
              await ok(session, "select count(*) from pg_class where relname = 'upload_rows'"),
              ["0"],
            );
            assert.doesNotMatch(session.stderrTail(), /WARNING|ERROR|invalid/);
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

Deno.test({
  name: "buildUpsertScript: strict rows never overwrite another folder's row",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const session = await PsqlSession.start(socketConnection(pg));
    try {
      for (const sql of buildSchemaStatements({ table: "device_test", device: DEVICE })) {
        await ok(session, sql);
      }
      const { row } = nastyRow(1);
      const first = {
        ...row,
        folder_key: "Batch1",
        metadata: { ...row.metadata, source_path: "/a/Batch1" },
      };
      assert.deepEqual(
        parseUpsertReply(await ok(session, buildUpsertScript([first], OPTIONS), true)),
        {
          inserted: 1,
          updated: 0,
        },
      );
      const other = {
        ...first,
        strict: true,
        metadata: { ...first.metadata, source_path: "/b/Batch1", content_hash: "other" },
      };
      const fresh = { ...first, folder_key: "Batch2", strict: true };
      assert.deepEqual(
        parseUpsertReply(await ok(session, buildUpsertScript([other, fresh], OPTIONS), true)),
        { inserted: 1, updated: 0, conflicts: [["Batch1", "/a/Batch1"]] },
      );
    } finally {
      await session.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "buildUpsertScript: refusals answer with their SQLSTATE and the session goes on",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await pg.psql(
        "create role uploader login; grant all on schema public to uploader; " +
          `revoke temporary on database ${TEST_DATABASE} from public`,
      );
      const owner = await PsqlSession.start(socketConnection(pg));
      try {
        for (const sql of buildSchemaStatements({ table: "device_test", device: DEVICE })) {
          await ok(owner, sql);
        }
        await ok(owner, "grant select, insert, update on device_test, devices to uploader");
        await ok(owner, `grant temporary on database ${TEST_DATABASE} to ${TEST_USER}`);

        await t.step("a value the insert refuses: 22xxx, then the next batch lands", async () => {
          const bad = nastyRow(3, { test_date: "not a date" });
          const reply = await owner.run(buildUpsertScript([bad.row], OPTIONS, [bad.json]), {
            script: true,
          });
          assert.ok(!reply.ok);
          assert.equal(reply.sqlstate.slice(0, 2), "22");
          const good = nastyRow(4);
          assert.deepEqual(
            parseUpsertReply(
              await ok(owner, buildUpsertScript([good.row], OPTIONS, [good.json]), true),
            ),
            { inserted: 1, updated: 0 },
          );
          assert.deepEqual(await ok(owner, "select count(*) from device_test"), ["1"]);
        });
        await t.step(
          "a refused begin: its SQLSTATE, not 42P01 from a table dropped at once",
          async () => {
            // A begin cancelled on a loaded server (statement_timeout) left the create to run
            // outside a transaction, its table dropped at once: the script answered 42P01.
            // Here the begin is replaced by a statement that always fails.
            const rows = [nastyRow(8), nastyRow(9)];
            const script = buildUpsertScript(
              rows.map((r) => r.row),
              OPTIONS,
              rows.map((r) => r.json),
            );
            const reply = await owner.run(script.replace(/^begin;/, "select 1/0;"), {
              script: true,
              timeoutMs: 30_000,
            });
            assert.ok(!reply.ok);
            assert.equal(reply.sqlstate, "22012", `${reply.sqlstate}: ${reply.message}`);
            assert.deepEqual(await ok(owner, "select count(*) from device_test"), ["1"]);
            assert.deepEqual(await ok(owner, "select to_regclass('pg_temp.upload_rows') is null"), [
              "t",
            ]);
          },
        );
        await t.step("a COPY cut short by statement_timeout: 57014, not 25P02", async () => {
          const big = Array.from({ length: 400 }, (_, i) => nastyRow(100 + i));
          for (const b of big) {
            // About 40 KB of stats per row: 16 MB for the COPY to read.
            const stats = { trace: "x".repeat(40_000), i: b.row.folder_key };
            b.row.test_results = stats;
            b.json = JSON.stringify({ ...JSON.parse(b.json), test_results: stats });
          }
          await ok(owner, "set statement_timeout = '20ms'");
          const reply = await owner.run(
            buildUpsertScript(big.map((b) => b.row), OPTIONS, big.map((b) => b.json)),
            { script: true, timeoutMs: 60_000 },
          );
          await ok(owner, "reset statement_timeout");
          assert.ok(!reply.ok);
          assert.equal(reply.sqlstate, "57014", `${reply.sqlstate}: ${reply.message}`);
          assert.match(reply.message, /statement timeout/);
          assert.deepEqual(await ok(owner, "select count(*) from device_test"), ["1"]);
        });
      } finally {
        await owner.close();
      }

      await t.step(
        "no TEMP privilege: 42501 from the create; the rows are never run as SQL",
        async () => {
          const session = await PsqlSession.start(socketConnection(pg, TEST_DATABASE, "uploader"));
          try {
            const rows = [nastyRow(5), nastyRow(6), nastyRow(7)];
            const reply = await session.run(
              buildUpsertScript(rows.map((r) => r.row), OPTIONS, rows.map((r) => r.json)),
              { script: true, timeoutMs: 30_000 },
            );
            assert.ok(!reply.ok);
            assert.equal(reply.sqlstate, "42501");
            assert.match(reply.message, /temporary/);
            assert.deepEqual(await ok(session, "select 'alive', current_user"), ["alive|uploader"]);
            assert.equal(session.alive, true);
          } finally {
            await session.close();
          }
          assert.deepEqual(await pg.psql("select count(*) from device_test"), "1\n");
        },
      );
    } finally {
      await pg.close();
    }
  },
});
