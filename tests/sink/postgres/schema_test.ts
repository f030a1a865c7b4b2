/**
 * The remote schema: pure tests of the inspection's verdicts, the permission errors and
 * the owner's script; and, against real PostgreSQL servers, creation, the upgrade of the
 * original scripts' table (their DDL, rows left by two runs) in one transaction, a role
 * that owns nothing, row-level security, and a statement timeout during the schema step.
 */

import assert from "node:assert/strict";
import { exitCodeFor, UploadError } from "../../../lib/core/errors.ts";
import {
  type PsqlConnection,
  PsqlSession,
  type StatementReply,
} from "../../../lib/sink/postgres/psql.ts";
import {
  buildInspectStatement,
  buildSchemaStatements,
  describePermissionError,
  ensureSchema,
  findMissing,
  isSchemaTimeout,
  parseInspection,
  parseRekeyReply,
  policiesOf,
  printSchemaSql,
  type RelationState,
  type SchemaInspection,
  schemaTimeoutError,
  UNKNOWN_DEVICE,
} from "../../../lib/sink/postgres/schema.ts";
import { buildUpsertStatement, parseUpsertReply } from "../../../lib/sink/postgres/upsert.ts";
import type { DeviceInfo, UploadRow } from "../../../lib/sink/columns.ts";
import { quoteIdent, sqlLiteral } from "../../../lib/sink/postgres/quote.ts";
import { psqlFactory, SessionPool } from "../../../lib/sink/postgres/pool.ts";
import { prepareTarget } from "../../../lib/sink/postgres/prepare.ts";
import { WriteState } from "../../../lib/sink/postgres/write.ts";
import type { RetryNotice } from "../../../lib/core/retry.ts";
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
const OTHER_DEVICE = "0b7b5d2e-9a0c-4c1e-8f53-4d7a5c1e2f30";
const TARGET = "test server";

// ---------------------------------------------------------------------------------------
// Helpers

function connection(pg: PgServer, user = TEST_USER, database = TEST_DATABASE): PsqlConnection {
  return {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", user, "-d", database],
    env: {},
    display: `${user}@${pg.socketDir}:${pg.port}/${database}`,
  };
}

/** A psql session that records every statement it is given. */
async function recordingSession(pg: PgServer, user = TEST_USER, database = TEST_DATABASE) {
  const session = await PsqlSession.start(connection(pg, user, database));
  const statements: string[] = [];
  const exec = (sql: string): Promise<StatementReply> => {
    statements.push(sql);
    return session.run(sql, { timeoutMs: 120_000 });
  };
  return { session, statements, exec };
}

async function ok(session: PsqlSession, sql: string): Promise<string[]> {
  const reply = await session.run(sql, { timeoutMs: 120_000 });
  if (!reply.ok) {
    assert.fail(`statement failed: ${reply.sqlstate} ${reply.message}\n${sql.slice(0, 400)}`);
  }
  return reply.rows;
}

/** Runs a script file with psql -v ON_ERROR_STOP=1 -f, as an owner would. */
async function psqlFile(pg: PgServer, sql: string, database = TEST_DATABASE): Promise<string> {
  const file = await Deno.makeTempFile({ suffix: ".sql" });
  try {
    await Deno.writeTextFile(file, sql);
    const out = await new Deno.Command("psql", {
      args: [
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        file,
        ...connection(pg, TEST_USER, database).args,
      ],
      stdout: "piped",
      stderr: "piped",
      env: { LC_ALL: "C" },
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `psql -f failed: ${stderr}`);
    return stderr;
  } finally {
    await Deno.remove(file);
  }
}

async function rejects(promise: Promise<unknown>): Promise<UploadError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof UploadError, `expected an UploadError, got ${error}`);
    return error;
  }
  assert.fail("expected a rejection");
}

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

function upsertSql(rows: UploadRow[], table = "device_test"): string {
  return buildUpsertStatement(rows, { table, device: DEVICE, batchName: "b1" });
}

/** The original scripts' DDL (devices lacks our `type` column), without rows. */
const ORIGINAL_DDL = `
create table devices (
  id uuid primary key default gen_random_uuid(),
  name text,
  device_type text,
  created_at timestamptz default now()
);
create or replace function update_updated_at_column() returns trigger as $$
begin new.updated_at = now(); return new; end; $$ language plpgsql;
CREATE TABLE public.device_test (
  id uuid not null default gen_random_uuid (),
  created_at timestamp with time zone null default now(),
  updated_at timestamp with time zone null default now(),
  folder_name text not null,
  images text[] null default '{}'::text[],
  pdf_url text null,
  device_id uuid null,
  device_name text null,
  device_type text null,
  test_results jsonb null,
  test_date timestamp with time zone null,
  test_status text null,
  upload_batch text null,
  notes text null,
  metadata jsonb null default '{}'::jsonb,
  data jsonb null,
  data_type text null,
  constraint device_test_pkey primary key (id),
  constraint unique_folder_device unique (folder_name, device_id),
  constraint device_test_device_id_fkey foreign KEY (device_id) references devices (id),
  constraint device_test_test_status_check check (test_status = any (array['pending','passed','failed','incomplete']))
);
CREATE INDEX IF NOT EXISTS idx_device_test_data ON public.device_test USING gin (data);
CREATE INDEX IF NOT EXISTS idx_device_test_data_type ON public.device_test USING btree (data_type);
CREATE INDEX IF NOT EXISTS idx_device_test_device_id ON public.device_test USING btree (device_id);
CREATE INDEX IF NOT EXISTS idx_device_test_folder_name ON public.device_test USING btree (folder_name);
CREATE INDEX IF NOT EXISTS idx_device_test_metadata ON public.device_test USING gin (metadata);
CREATE INDEX IF NOT EXISTS idx_device_test_test_results ON public.device_test USING gin (test_results);
CREATE INDEX IF NOT EXISTS idx_device_test_test_status ON public.device_test USING btree (test_status);
CREATE INDEX IF NOT EXISTS idx_device_test_test_date ON public.device_test USING btree (test_date);
CREATE INDEX IF NOT EXISTS idx_device_test_pdf_url ON public.device_test USING btree (pdf_url);
CREATE TRIGGER update_device_test_updated_at BEFORE UPDATE ON public.device_test
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
`;

const uid = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;

/**
 * Rows as the original uploader leaves them after running twice on a tree without a
 * device id: every folder twice with a NULL device_id (the unique constraint lets NULLs
 * repeat), plus one row of a registered device.
 */
const ORIGINAL_ROWS = `
insert into devices (id, name, device_type) values ('${OTHER_DEVICE}', 'bench-2', 'scanner');
insert into device_test (id, folder_name, device_id, created_at, updated_at, test_status, images, test_results) values
  ('${
  uid(1)
}', 'Batch1', null, '2024-01-01', '2024-01-01', 'passed', '{a.jpg}', '{"result":"PASS"}'),
  ('${
  uid(2)
}', 'Batch1', null, '2024-02-01', '2024-02-01', 'passed', '{a.jpg}', '{"result":"PASS"}'),
  ('${uid(3)}', 'Batch2', null, '2024-01-05', '2024-01-05', 'failed', '{}', '{"result":""}'),
  ('${uid(4)}', 'Batch2', null, '2024-01-06', '2024-01-06', 'incomplete', '{}', null),
  ('${uid(5)}', 'Batch3', null, '2024-01-07', '2024-01-07', 'pending', null, null),
  ('${uid(6)}', 'Batch1', '${OTHER_DEVICE}', '2024-01-08', '2024-01-08', 'passed', '{}', null);
`;

/** Everything an upgrade could change: columns, constraints, indexes, triggers, rows. */
async function snapshot(pg: PgServer, database = TEST_DATABASE): Promise<string> {
  return await pg.psql(
    `select json_build_object(
       'columns', (select json_agg(table_name || '.' || column_name || ':' || data_type || ':' ||
           is_nullable || ':' || coalesce(column_default, '') order by table_name, column_name)
         from information_schema.columns where table_schema = 'public'),
       'constraints', (select json_agg(conrelid::regclass::text || ':' || conname || ':' ||
           pg_get_constraintdef(oid) order by conrelid::regclass::text, conname)
         from pg_constraint where connamespace = 'public'::regnamespace),
       'indexes', (select json_agg(indexdef order by indexname) from pg_indexes
         where schemaname = 'public'),
       'triggers', (select json_agg(tgname || ':' || tgenabled::text order by tgname) from pg_trigger
         where not tgisinternal),
       'rows', (select md5(string_agg(t::text, ',' order by t.id)) from device_test t),
       'devices', (select md5(string_agg(d::text, ',' order by d.id)) from devices d))`,
    { database },
  );
}

async function count(session: PsqlSession, sql: string): Promise<number> {
  return Number((await ok(session, sql))[0]);
}

// ---------------------------------------------------------------------------------------
// Pure

Deno.test("buildSchemaStatements: one DO block; values quoted; dollar tags avoid the body", () => {
  const statements = buildSchemaStatements({ table: 'odd $uploader$ "name"', device: DEVICE });
  assert.equal(statements.length, 1, "one statement, so one transaction");
  assert.match(statements[0], /^do \$uploader1\$/, "a tag that does not occur in the body");
  assert.ok(statements[0].includes(sqlLiteral(DEVICE.name)));
  assert.ok(statements[0].includes(`"odd $uploader$ ""name"""`));
  assert.doesNotMatch(statements[0], /\bset\s+(local\s+)?[a-z_]+\s*(=|to)\b/i, "no SET");
  assert.throws(
    () => buildSchemaStatements({ table: "t", device: { ...DEVICE, id: "1; drop" } }),
    UploadError,
  );
});

Deno.test("parseRekeyReply reads the count's one line of JSON", () => {
  assert.equal(parseRekeyReply(['{"rekeyed":3}']), 3);
  assert.equal(parseRekeyReply([]), undefined);
  assert.equal(parseRekeyReply(["x"]), undefined);
});

function column(notNull = false, hasDefault = false) {
  return { type: "text", notNull, hasDefault, identity: false };
}

/** The upload table as the schema step leaves it. */
function completeTable(): RelationState {
  const columns: RelationState["columns"] = {};
  for (
    const name of [
      "created_at",
      "updated_at",
      "device_name",
      "device_type",
      "folder_name",
      "images",
      "image_objects",
      "test_results",
      "test_status",
      "test_date",
      "upload_batch",
      "metadata",
      "data_type",
      "pdf_url",
    ]
  ) columns[name] = column();
  columns.id = { ...column(true, true), type: "uuid" };
  columns.device_id = column(true);
  columns.folder_key = column(true);
  return {
    name: "device_test",
    owner: false,
    rls: false,
    forceRls: false,
    columns,
    unique: [
      {
        index: "device_test_pkey",
        constraint: "device_test_pkey",
        primary: true,
        usable: true,
        columns: ["id"],
      },
      {
        index: "k",
        constraint: "k",
        primary: false,
        usable: true,
        columns: ["folder_key", "device_id"],
      },
    ],
    foreignKeys: [{
      name: "fk",
      columns: ["device_id"],
      references: "devices",
      referencesDevices: true,
    }],
    privileges: { select: true, insert: true, update: true },
    policies: [],
    folderKeyTrigger: true,
  };
}

function completeInspection(): SchemaInspection {
  return {
    role: "uploader",
    bypassRls: false,
    statementTimeout: "0",
    schema: "public",
    schemaExists: true,
    schemaUsage: true,
    schemaCreate: false,
    genRandomUuid: true,
    table: completeTable(),
    devices: {
      ...completeTable(),
      name: "devices",
      columns: { id: column(true), name: column(), type: column() },
      unique: [{
        index: "devices_pkey",
        constraint: "devices_pkey",
        primary: true,
        usable: true,
        columns: ["id"],
      }],
      foreignKeys: [],
    },
    deviceRow: { id: DEVICE.id, name: DEVICE.name, type: DEVICE.type },
  };
}

Deno.test("findMissing: names each missing piece, and nothing for a complete schema", () => {
  assert.deepEqual(findMissing(completeInspection(), "device_test"), []);
  const cases: [string, (i: SchemaInspection) => void, string[]][] = [
    ["no tables", (i) => {
      i.table = null;
      i.devices = null;
    }, ["table devices", "table device_test"]],
    ["no folder_key or image_objects", (i) => {
      delete i.table!.columns.folder_key;
      delete i.table!.columns.image_objects;
      i.table!.unique = i.table!.unique.filter((u) => u.primary);
    }, [
      "column folder_key of device_test",
      "column image_objects of device_test",
      "unique key (device_id, folder_key) on device_test",
    ]],
    ["the original's name key and nullable device_id", (i) => {
      i.table!.columns.device_id = column(false);
      i.table!.unique.push({
        index: "unique_folder_device",
        constraint: "unique_folder_device",
        primary: false,
        usable: true,
        columns: ["folder_name", "device_id"],
      });
    }, [
      "NOT NULL on device_test.device_id",
      "removal of unique constraint unique_folder_device (folder_name, device_id) on device_test",
    ]],
    ["a partial or invalid key is no key", (i) => {
      i.table!.unique[1].usable = false;
    }, ["unique key (device_id, folder_key) on device_test"]],
    ["a bare unique index by name", (i) => {
      i.table!.unique.push({
        index: "by_name",
        constraint: null,
        primary: false,
        usable: true,
        columns: ["folder_name"],
      });
    }, ["removal of unique index by_name (folder_name) on device_test"]],
    ["no foreign key, no id default", (i) => {
      i.table!.foreignKeys = [];
      i.table!.columns.id = { ...column(true, false), type: "uuid" };
    }, [
      "default gen_random_uuid() of device_test.id",
      "foreign key device_test (device_id) references devices (id)",
    ]],
    ["a bigint identity id (Supabase's Table Editor) needs no default", (i) => {
      i.table!.columns.id = { type: "bigint", notNull: true, hasDefault: false, identity: true };
    }, []],
    ["a bigint id without identity or default", (i) => {
      i.table!.columns.id = { type: "bigint", notNull: true, hasDefault: false, identity: false };
    }, ["a default of device_test.id (of type bigint: make it an identity column)"]],
    ["devices without a key on id", (i) => {
      i.devices!.unique = [];
    }, ["primary key (id) on devices"]],
  ];
  for (const [label, change, expected] of cases) {
    const inspection = completeInspection();
    change(inspection);
    assert.deepEqual(findMissing(inspection, "device_test"), expected, label);
  }
  const qualified = completeInspection();
  qualified.devices = null;
  assert.deepEqual(findMissing(qualified, "lab.device_test"), ["table lab.devices"]);
  // Missing name/type columns of devices are not a reason to change the schema.
  const bare = completeInspection();
  bare.devices!.columns = { id: column(true) };
  assert.deepEqual(findMissing(bare, "device_test"), []);
});

Deno.test("policiesOf: the commands an upsert needs that no permissive policy grants this role", () => {
  const inspection = completeInspection();
  const table = inspection.table!;
  table.rls = true;
  table.policies = [
    { name: "i", command: "INSERT", permissive: true, applies: true },
    { name: "u", command: "UPDATE", permissive: true, applies: true },
    { name: "s_other", command: "SELECT", permissive: true, applies: false },
    { name: "s_restrictive", command: "SELECT", permissive: false, applies: true },
  ];
  assert.deepEqual(policiesOf(inspection)[0], {
    table: "device_test",
    rlsEnabled: true,
    rlsApplies: true,
    missing: ["SELECT"],
  });
  table.policies.push({ name: "all", command: "ALL", permissive: true, applies: true });
  assert.deepEqual(policiesOf(inspection)[0].missing, []);
  table.policies = [];
  table.owner = true;
  assert.deepEqual(policiesOf(inspection)[0], {
    table: "device_test",
    rlsEnabled: true,
    rlsApplies: false,
    missing: [],
  }, "the owner bypasses row-level security unless it is forced");
  table.forceRls = true;
  assert.deepEqual(policiesOf(inspection)[0].missing, ["INSERT", "SELECT", "UPDATE"]);
  inspection.bypassRls = true;
  assert.equal(policiesOf(inspection)[0].rlsApplies, false);
});

Deno.test("describePermissionError: names table, role, what to grant or which policies; keeps the SQLSTATE", () => {
  const ctx = { table: "device_test", targetDisplay: "db:5432/postgres", subject: "batch_1" };
  const rls = describePermissionError(
    {
      sqlstate: "42501",
      message: 'new row violates row-level security policy for table "device_test"',
    },
    {
      ...ctx,
      role: "uploader",
      policies: [{ table: "device_test", rlsEnabled: true, rlsApplies: true, missing: ["SELECT"] }],
    },
  );
  assert.equal(rls.kind, "config");
  assert.equal(rls.sqlstate, "42501");
  assert.equal(rls.subject, "batch_1");
  assert.match(rls.message, /Row-level security on device_test/);
  assert.match(rls.message, /INSERT, SELECT and UPDATE/);
  assert.match(rls.message, /missing for role uploader: SELECT/);
  assert.match(rls.message, /42501: new row violates/);
  assert.match(
    rls.hint!,
    /create policy "uploader_select" on "device_test" for select to "uploader"/,
  );
  assert.doesNotMatch(rls.hint!, /for insert/, "only the missing policy is suggested");

  const unknown = describePermissionError(
    {
      sqlstate: "42501",
      message: 'new row violates row-level security policy for table "device_test"',
    },
    ctx,
  );
  assert.match(unknown.message, /the connecting role/);
  assert.match(unknown.hint!, /for insert .* for select .* for update/);

  const denied = describePermissionError(
    { sqlstate: "42501", message: "permission denied for table device_test" },
    { ...ctx, role: "lab" },
  );
  assert.match(
    denied.message,
    /^Permission denied writing device_test on db:5432\/postgres for role lab/,
  );
  assert.match(denied.message, /42501: permission denied for table device_test/);
  assert.match(denied.hint!, /grant select, insert, update on "device_test", devices to "lab"/);
  assert.doesNotMatch(denied.hint!, /CREATE/, "no CREATE is needed once the schema exists");

  const owner = describePermissionError(
    { sqlstate: "42501", message: "must be owner of table devices" },
    { ...ctx, role: "lab" },
  );
  assert.match(owner.message, /Role lab does not own devices/);
  assert.match(owner.hint!, /deno task upload --print-schema/);

  const schema = describePermissionError(
    { sqlstate: "42501", message: "permission denied for schema lab" },
    ctx,
  );
  assert.match(schema.message, /Permission denied on schema lab/);
  assert.match(schema.hint!, /grant usage on schema "lab"/);
});

Deno.test("printSchemaSql: plain SQL for psql or an SQL editor; exactly the grants; placeholder explained", () => {
  const sql = printSchemaSql({ table: "device_test" });
  const code = sql.split("\n").filter((line) => !line.trimStart().startsWith("--"));
  assert.ok(!code.some((line) => /^\s*\\/.test(line)), "no psql meta-commands");
  assert.ok(!code.some((line) => /(?<![:\w]):['"]?[A-Za-z_]/.test(line)), "no psql variables");
  assert.match(sql, /"uploader" is a placeholder/);
  assert.match(
    sql,
    /grant select, insert, update on table "device_test", "devices" to "uploader";/,
  );
  assert.match(sql, /grant usage on schema %I to %I/);
  assert.doesNotMatch(sql.replace(/^--.*$/gm, ""), /grant (all|create|delete|truncate)/i);
  assert.match(sql, /^-- create policy "uploader_device_test_select" on "device_test" for select/m);
  assert.match(sql, /image_objects text\[\]/);
  assert.match(
    sql,
    new RegExp(UNKNOWN_DEVICE.id),
    "rows without a device go to the placeholder device",
  );

  const named = printSchemaSql({
    table: "lab.device_test",
    role: 'lab "uploader"',
    device: DEVICE,
  });
  assert.match(named, /grant usage on schema "lab" to "lab ""uploader""";/);
  assert.match(named, /on table "lab"."device_test", "lab"."devices" to "lab ""uploader""";/);
  assert.doesNotMatch(named, /is a placeholder/);
  assert.ok(named.includes(DEVICE.id));
  assert.throws(() => printSchemaSql({ table: "t", role: "" }), UploadError);
  assert.throws(() => printSchemaSql({ table: "t", device: { ...DEVICE, id: "x" } }), UploadError);
});

Deno.test("parseInspection refuses a reply that is not the inspection's", () => {
  for (const rows of [[], ["1"], ["{}"], ['{"role": 1}'], ["a", "b"]]) {
    assert.throws(
      () => parseInspection(rows),
      (e) => e instanceof UploadError && e.kind === "fatal",
      JSON.stringify(rows),
    );
  }
});

Deno.test("isSchemaTimeout and schemaTimeoutError: a persisting 57014 becomes a configuration error", () => {
  const cancelled = new UploadError("timeout", "cancelled", {
    subject: "schema",
    sqlstate: "57014",
  });
  assert.ok(isSchemaTimeout(cancelled));
  assert.ok(!isSchemaTimeout(new UploadError("transient", "lost", { subject: "schema" })));
  assert.ok(
    !isSchemaTimeout(new UploadError("timeout", "x", { subject: "b1", sqlstate: "57014" })),
  );
  const error = schemaTimeoutError(cancelled, {
    table: "device_test",
    targetDisplay: TARGET,
    attempts: 3,
  });
  assert.equal(error.kind, "config");
  assert.equal(error.sqlstate, "57014");
  assert.match(error.message, /statement_timeout cancelled the schema step 3 times/);
  assert.match(error.hint!, /statement_timeout/);
  assert.equal(exitCodeFor(error), 2);
});

// ---------------------------------------------------------------------------------------
// Against PostgreSQL

const EXPECTED_COLUMNS = [
  "id|uuid|NO|gen_random_uuid()",
  "created_at|timestamp with time zone|NO|now()",
  "updated_at|timestamp with time zone|NO|now()",
  "device_id|uuid|NO|",
  "device_name|text|YES|",
  "device_type|text|YES|",
  "folder_key|text|NO|",
  "folder_name|text|NO|",
  "images|ARRAY|NO|'{}'::text[]",
  "image_objects|ARRAY|YES|",
  "test_results|jsonb|YES|",
  "test_status|text|YES|",
  "test_date|timestamp with time zone|YES|",
  "upload_batch|text|YES|",
  "metadata|jsonb|YES|",
  "data_type|text|YES|'image_analysis'::text",
  "pdf_url|text|YES|",
].sort();

async function columns(session: PsqlSession, table: string, schema = "public"): Promise<string[]> {
  return await ok(
    session,
    `select column_name || '|' || data_type || '|' || is_nullable || '|' || coalesce(column_default, '')
     from information_schema.columns where table_name = ${sqlLiteral(table)}
     and table_schema = ${sqlLiteral(schema)} order by column_name`,
  );
}

async function uniqueKeys(session: PsqlSession, table: string): Promise<string[]> {
  return await ok(
    session,
    `select pg_get_constraintdef(oid) from pg_constraint where conrelid = to_regclass(${
      sqlLiteral(quoteIdent(table))
    }) and contype = 'u' order by 1`,
  );
}

Deno.test({
  name: "schema: created fresh; a complete schema costs one read-only statement",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    const { session, statements, exec } = await recordingSession(pg);
    const options = { table: "device_test", device: DEVICE, targetDisplay: TARGET };
    try {
      await t.step("fresh create", async () => {
        const result = await ensureSchema(exec, options);
        assert.equal(result.created, true);
        assert.equal(result.upgraded, false);
        assert.equal(result.rekeyed, 0);
        assert.deepEqual(result.missingBefore, ["table devices", "table device_test"]);
        assert.equal(result.role, TEST_USER);
        assert.deepEqual(await columns(session, "device_test"), EXPECTED_COLUMNS);
        assert.deepEqual(await uniqueKeys(session, "device_test"), [
          "UNIQUE (device_id, folder_key)",
        ]);
        assert.deepEqual(
          await ok(session, "select id || '|' || name || '|' || type from devices"),
          [`${DEVICE.id}|${DEVICE.name}|${DEVICE.type}`],
        );
        assert.equal(statements.length, 3, "inspection, DDL, inspection again");
      });

      await t.step("complete: the inspection alone", async () => {
        statements.length = 0;
        const result = await ensureSchema(exec, options);
        assert.deepEqual(
          { ...result, policies: undefined },
          {
            created: false,
            upgraded: false,
            rekeyed: 0,
            missingBefore: [],
            role: TEST_USER,
            policies: undefined,
            device: DEVICE,
            notes: [],
          },
        );
        assert.equal(statements.length, 1);
        assert.equal(statements[0], buildInspectStatement("device_test", DEVICE));
      });

      await t.step("a renamed device: the inspection and the device row's update", async () => {
        statements.length = 0;
        const renamed = { ...DEVICE, name: "pi-8" };
        await ensureSchema(exec, { ...options, device: renamed });
        assert.equal(statements.length, 2);
        assert.match(statements[1], /^update "devices" set name = 'pi-8'/);
        assert.deepEqual(await ok(session, "select name from devices"), ["pi-8"]);
        statements.length = 0;
        await ensureSchema(exec, { ...options, device: renamed });
        assert.equal(statements.length, 1);
      });

      await t.step("name and type not configured: the server's kept, nothing written", async () => {
        statements.length = 0;
        const result = await ensureSchema(exec, {
          ...options,
          device: { ...DEVICE, name: "a-guess", type: "a-guess" },
          fromServer: { name: true, type: true },
        });
        assert.deepEqual(result.device, { ...DEVICE, name: "pi-8" });
        assert.equal(statements.length, 1, "the inspection alone");
        assert.deepEqual(await ok(session, "select name from devices"), ["pi-8"]);
      });

      await t.step("odd and schema-qualified table names", async () => {
        const odd = 'odd $uploader$ "name" \\ x';
        await ensureSchema(exec, { ...options, table: odd });
        const again = await ensureSchema(exec, { ...options, table: odd });
        assert.deepEqual(again.missingBefore, []);
        assert.deepEqual(await uniqueKeys(session, odd), ["UNIQUE (device_id, folder_key)"]);
        await ok(session, 'create schema "Lab 2"');
        const table = "Lab 2.device_test";
        const created = await ensureSchema(exec, { ...options, table });
        assert.deepEqual(created.missingBefore, ["table Lab 2.devices", "table Lab 2.device_test"]);
        assert.deepEqual(await columns(session, "device_test", "Lab 2"), EXPECTED_COLUMNS);
        assert.deepEqual(
          parseUpsertReply(await ok(session, upsertSql([sampleRow("a")], table))),
          { inserted: 1, updated: 0 },
        );
        assert.equal(await count(session, `select count(*) from "Lab 2".devices`), 1);
      });
    } finally {
      await session.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "schema: the original scripts' table (their DDL, rows of two runs) is upgraded in one go",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    await pg.psql(ORIGINAL_DDL + ORIGINAL_ROWS);
    const { session, statements, exec } = await recordingSession(pg);
    try {
      const stampsBefore = await ok(
        session,
        "select id || ' ' || updated_at from device_test order by id",
      );
      const result = await ensureSchema(exec, {
        table: "device_test",
        device: DEVICE,
        targetDisplay: TARGET,
      });
      assert.equal(result.created, false);
      assert.equal(result.upgraded, true);
      assert.equal(result.rekeyed, 2, "the older Batch1 and Batch2 rows of this device");
      for (
        const piece of [
          "column folder_key of device_test",
          "column image_objects of device_test",
          "NOT NULL on device_test.device_id",
          "removal of unique constraint unique_folder_device (folder_name, device_id) on device_test",
          "unique key (device_id, folder_key) on device_test",
        ]
      ) assert.ok(result.missingBefore.includes(piece), `${piece} in ${result.missingBefore}`);

      // Every row kept; rows without a device adopted; the newest of a folder keeps the key.
      assert.deepEqual(
        await ok(
          session,
          "select right(id::text, 1) || '|' || folder_key || '|' || device_id from device_test order by id",
        ),
        [
          `1|Batch1 (duplicate ${uid(1)})|${DEVICE.id}`,
          `2|Batch1|${DEVICE.id}`,
          `3|Batch2 (duplicate ${uid(3)})|${DEVICE.id}`,
          `4|Batch2|${DEVICE.id}`,
          `5|Batch3|${DEVICE.id}`,
          `6|Batch1|${OTHER_DEVICE}`,
        ],
      );
      assert.deepEqual(
        await ok(session, "select id || ' ' || updated_at from device_test order by id"),
        stampsBefore,
        "the upgrade changes no row's updated_at (the table's trigger was paused)",
      );
      assert.equal(
        await count(
          session,
          `select count(*) from device_test where device_name = ${sqlLiteral(DEVICE.name)}`,
        ),
        5,
      );
      assert.equal(
        await count(session, "select count(*) from device_test where images is null"),
        0,
      );

      // Constraints: the name key replaced, CHECK and trigger kept and working.
      assert.deepEqual(await uniqueKeys(session, "device_test"), [
        "UNIQUE (device_id, folder_key)",
      ]);
      assert.deepEqual(
        await ok(
          session,
          "select tgname || ' ' || tgenabled::text from pg_trigger where tgrelid = 'device_test'::regclass and not tgisinternal order by 1",
        ),
        ["update_device_test_updated_at O", "uploader_folder_key O"],
      );
      const bogus = await session.run(
        "update device_test set test_status = 'bogus' where id = " + sqlLiteral(uid(5)),
      );
      assert.ok(!bogus.ok && bogus.sqlstate === "23514", "the CHECK constraint still refuses");
      await ok(session, `update device_test set notes = 'seen' where id = ${sqlLiteral(uid(5))}`);
      assert.equal(
        await count(
          session,
          `select count(*) from device_test where id = ${
            sqlLiteral(uid(5))
          } and updated_at > now() - interval '1 minute'`,
        ),
        1,
        "the trigger still stamps updated_at",
      );
      assert.equal(
        await count(session, "select count(*) from pg_indexes where tablename = 'device_test'"),
        11,
      );

      // devices: our columns added, the original's kept, both devices registered.
      assert.deepEqual(
        await ok(
          session,
          "select id || '|' || coalesce(name, '') || '|' || coalesce(type, '') || '|' || coalesce(device_type, '') from devices order by name",
        ),
        [`${OTHER_DEVICE}|bench-2||scanner`, `${DEVICE.id}|${DEVICE.name}|${DEVICE.type}|`],
      );

      // The original scripts' own INSERT (no folder_key) still goes in, keyed by its name.
      await ok(
        session,
        `insert into device_test (folder_name, device_id, images, test_results, test_status)
         values ('Batch7', ${sqlLiteral(DEVICE.id)}, '{a.jpg}', '{"result":"PASS"}', 'passed')`,
      );
      assert.deepEqual(
        await ok(session, "select folder_key from device_test where folder_name = 'Batch7'"),
        ["Batch7"],
      );
      await ok(session, "delete from device_test where folder_name = 'Batch7'");

      // Uploads: nested folders of one name both land; Batch1 takes over the newest old row.
      const reply = parseUpsertReply(
        await ok(
          session,
          upsertSql([sampleRow("L1/Batch1"), sampleRow("L2/Batch1"), sampleRow("Batch1")]),
        ),
      );
      assert.deepEqual(reply, { inserted: 2, updated: 1 });
      assert.deepEqual(
        await ok(
          session,
          "select right(id::text, 1) from device_test where folder_key = 'Batch1' and device_id = " +
            sqlLiteral(DEVICE.id),
        ),
        ["2"],
      );

      statements.length = 0;
      const again = await ensureSchema(exec, {
        table: "device_test",
        device: DEVICE,
        targetDisplay: TARGET,
      });
      assert.deepEqual([again.upgraded, again.rekeyed, again.missingBefore], [false, 0, []]);
      assert.equal(statements.length, 1, "nothing left to do: the inspection alone");
    } finally {
      await session.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "schema: an upgrade that fails midway leaves the table exactly as it was",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    // A CHECK the adoption of rows without a device violates: it fails after the columns
    // were added, the name key dropped and devices altered, inside the same statement.
    await pg.psql(
      ORIGINAL_DDL + ORIGINAL_ROWS +
        `alter table device_test add constraint poison check (device_id is null or folder_name <> 'Poison');
         insert into device_test (id, folder_name) values ('${uid(9)}', 'Poison');`,
    );
    const { session, exec } = await recordingSession(pg);
    try {
      const before = await snapshot(pg);
      const error = await rejects(
        ensureSchema(exec, { table: "device_test", device: DEVICE, targetDisplay: TARGET }),
      );
      assert.equal(error.kind, "config");
      assert.equal(error.sqlstate, "23514");
      assert.match(error.message, /create or upgrade.*23514.*poison/s);
      assert.equal(await snapshot(pg), before, "all or nothing: nothing changed");

      await pg.psql("alter table device_test drop constraint poison");
      const result = await ensureSchema(exec, {
        table: "device_test",
        device: DEVICE,
        targetDisplay: TARGET,
      });
      assert.equal(result.rekeyed, 2);
      assert.equal(await count(session, "select count(*) from device_test"), 7);
    } finally {
      await session.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "schema: tables upgraded by hand (folder_key all NULL; a leftover name key) are completed",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await t.step(
        "half-upgraded: folder_key added and NULL everywhere, devices altered",
        async () => {
          await pg.psql(
            ORIGINAL_DDL + ORIGINAL_ROWS +
              "alter table device_test add column folder_key text; alter table devices add column type text;",
          );
          const { session, exec } = await recordingSession(pg);
          try {
            const result = await ensureSchema(exec, {
              table: "device_test",
              device: DEVICE,
              targetDisplay: TARGET,
            });
            assert.equal(result.rekeyed, 2);
            assert.equal(
              await count(session, "select count(*) from device_test where folder_key is null"),
              0,
            );
            assert.deepEqual(await uniqueKeys(session, "device_test"), [
              "UNIQUE (device_id, folder_key)",
            ]);
          } finally {
            await session.close();
          }
        },
      );

      await t.step(
        "the key in place but the name key left over refuses nested folders",
        async () => {
          await pg.psql("create database hand");
          await pg.psql(
            ORIGINAL_DDL +
              `alter table device_test add column folder_key text not null;
             alter table device_test alter column device_id set not null;
             alter table device_test add unique (device_id, folder_key);
             alter table device_test add column image_objects text[];
             insert into devices (id, name) values ('${DEVICE.id}', 'x');`,
            { database: "hand" },
          );
          const { session, statements, exec } = await recordingSession(pg, TEST_USER, "hand");
          try {
            await ok(session, upsertSql([sampleRow("L1/Batch1")]));
            const refused = await session.run(upsertSql([sampleRow("L2/Batch1")]));
            assert.ok(!refused.ok && refused.sqlstate === "23505", "the finding, reproduced");
            assert.match(refused.message, /unique_folder_device/);

            const result = await ensureSchema(exec, {
              table: "device_test",
              device: DEVICE,
              targetDisplay: TARGET,
            });
            assert.deepEqual(result.missingBefore, [
              "removal of unique constraint unique_folder_device (folder_name, device_id) on device_test",
            ]);
            assert.equal(result.rekeyed, 0);
            assert.ok(
              !statements.some((s) => s.includes("rekeyed")),
              "no re-key count without a re-key",
            );
            assert.deepEqual(
              parseUpsertReply(await ok(session, upsertSql([sampleRow("L2/Batch1")]))),
              {
                inserted: 1,
                updated: 0,
              },
            );
            assert.deepEqual(await uniqueKeys(session, "device_test"), [
              "UNIQUE (device_id, folder_key)",
            ]);
          } finally {
            await session.close();
          }
        },
      );
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name: "schema: rows without dates, odd names, other devices' duplicates: nothing lost",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const { session, exec } = await recordingSession(pg);
    try {
      await ok(
        session,
        `create table device_test (
          id uuid primary key default gen_random_uuid(),
          created_at timestamptz default now(),
          updated_at timestamptz default now(),
          device_id uuid,
          device_name text,
          device_type text,
          folder_name text,
          images text[],
          test_results jsonb,
          test_status text,
          test_date timestamptz,
          upload_batch text,
          metadata jsonb,
          data_type text default 'image_analysis'
        )`,
      );
      const old = (name: string, device: string | null, updated: string, n: number) =>
        `(${sqlLiteral(uid(n))}::uuid, ${sqlLiteral(name)}, ${
          device === null ? "null" : `${sqlLiteral(device)}::uuid`
        }, ${sqlLiteral(updated)}::timestamptz, ${sqlLiteral(updated)}::timestamptz, '{a.jpg}')`;
      await ok(
        session,
        `insert into device_test (id, folder_name, device_id, created_at, updated_at, images) values
          ${
          [
            old("Batch1", null, "2024-01-01", 1),
            old("Batch1", null, "2024-03-01", 2),
            old("Batch1", null, "2024-02-01", 3),
            old("Batch1", DEVICE.id, "2024-01-15", 4),
            old("Batch2", null, "2024-01-01", 5),
            old("Batch3", OTHER_DEVICE, "2024-01-01", 6),
            old("Batch3", OTHER_DEVICE, "2024-05-01", 7),
            old("it's \\ odd", null, "2024-01-01", 8),
          ].join(",\n")
        }`,
      );
      await ok(
        session,
        `insert into device_test (id, folder_name, images) values ('${uid(9)}', 'NoDates', null)`,
      );
      await ok(
        session,
        "update device_test set updated_at = null, created_at = null where folder_name = 'NoDates'",
      );

      const result = await ensureSchema(exec, {
        table: "device_test",
        device: DEVICE,
        targetDisplay: TARGET,
      });
      assert.equal(result.rekeyed, 4, "3 older Batch1 rows and 1 older Batch3 row");
      assert.deepEqual(await columns(session, "device_test"), EXPECTED_COLUMNS);
      assert.deepEqual(
        await ok(
          session,
          "select right(id::text, 1) || '|' || folder_key || '|' || device_id from device_test order by id",
        ),
        [
          `1|Batch1 (duplicate ${uid(1)})|${DEVICE.id}`,
          `2|Batch1|${DEVICE.id}`,
          `3|Batch1 (duplicate ${uid(3)})|${DEVICE.id}`,
          `4|Batch1 (duplicate ${uid(4)})|${DEVICE.id}`,
          `5|Batch2|${DEVICE.id}`,
          `6|Batch3 (duplicate ${uid(6)})|${OTHER_DEVICE}`,
          `7|Batch3|${OTHER_DEVICE}`,
          `8|it's \\ odd|${DEVICE.id}`,
          `9|NoDates|${DEVICE.id}`,
        ],
      );
      assert.deepEqual(await ok(session, "select id from devices order by id"), [
        OTHER_DEVICE,
        DEVICE.id,
      ]);
      assert.deepEqual(
        await ok(session, "select images::text from device_test where folder_key = 'NoDates'"),
        ["{}"],
      );
      const again = await ensureSchema(exec, {
        table: "device_test",
        device: DEVICE,
        targetDisplay: TARGET,
      });
      assert.deepEqual([again.rekeyed, again.missingBefore], [0, []]);
    } finally {
      await session.close();
      await pg.close();
    }
  },
});

/** Grants on the two tables to `role`, as `table:PRIVILEGE` lines. */
async function grantsOf(pg: PgServer, role: string): Promise<string[]> {
  const out = await pg.psql(
    `select table_name || ':' || privilege_type from information_schema.role_table_grants
     where grantee = ${sqlLiteral(role)} order by 1`,
  );
  return out.trim().split("\n").filter((line) => line !== "");
}

Deno.test({
  name:
    "least privilege: after the owner's SQL (run twice), a role owning nothing, without CREATE, uploads",
  ignore: NO_SERVER,
  async fn(t) {
    const pg = await startPostgres();
    try {
      await pg.psql(ORIGINAL_DDL + ORIGINAL_ROWS + "create role uploader login");
      await t.step(
        "the owner's SQL upgrades the original table, and again changes nothing",
        async () => {
          const sql = printSchemaSql({ table: "device_test" });
          await psqlFile(pg, sql);
          const first = await snapshot(pg);
          await psqlFile(pg, sql);
          assert.equal(await snapshot(pg), first, "the second run changed nothing");
          assert.equal(
            (await pg.psql(
              `select count(*) from device_test where device_id = '${UNKNOWN_DEVICE.id}'`,
            )).trim(),
            "5",
            "rows without a device went to the placeholder device",
          );
          assert.deepEqual(await grantsOf(pg, "uploader"), [
            "device_health:INSERT",
            "device_health:SELECT",
            "device_health:UPDATE",
            "device_test:INSERT",
            "device_test:SELECT",
            "device_test:UPDATE",
            "devices:INSERT",
            "devices:SELECT",
            "devices:UPDATE",
          ]);
          assert.equal(
            (await pg.psql(
              "select has_schema_privilege('uploader', 'public', 'CREATE')::text || ' ' || " +
                "has_schema_privilege('uploader', 'public', 'USAGE')::text || ' ' || " +
                "pg_has_role('uploader', (select relowner from pg_class where oid = 'device_test'::regclass), 'USAGE')::text",
            )).trim(),
            "false true false",
          );
        },
      );

      await t.step(
        "the role: inspection and its device row, then rows through the upsert",
        async () => {
          const { session, statements, exec } = await recordingSession(pg, "uploader");
          try {
            const result = await ensureSchema(exec, {
              table: "device_test",
              device: DEVICE,
              targetDisplay: TARGET,
            });
            assert.deepEqual(
              [result.created, result.upgraded, result.missingBefore, result.role],
              [false, false, [], "uploader"],
            );
            assert.equal(statements.length, 2, "the inspection and the device row; no DDL");
            assert.match(statements[1], /^insert into "devices"/);
            const reply = parseUpsertReply(
              await ok(
                session,
                upsertSql([sampleRow("L1/Batch1"), sampleRow("L2/Batch1"), sampleRow("Batch9")]),
              ),
            );
            assert.deepEqual(reply, { inserted: 3, updated: 0 });
            assert.deepEqual(
              parseUpsertReply(
                await ok(
                  session,
                  upsertSql([sampleRow("Batch9", { metadata: { content_hash: "v2" } })]),
                ),
              ),
              { inserted: 0, updated: 1 },
            );
            statements.length = 0;
            await ensureSchema(exec, {
              table: "device_test",
              device: DEVICE,
              targetDisplay: TARGET,
            });
            assert.equal(statements.length, 1, "a registered device: the inspection alone");
          } finally {
            await session.close();
          }
        },
      );

      await t.step(
        "printed with the device: its row registered, the role runs one statement",
        async () => {
          await pg.psql("create database fresh");
          await pg.psql("create role uploader2 login");
          await psqlFile(
            pg,
            printSchemaSql({ table: "device_test", role: "uploader2", device: DEVICE }),
            "fresh",
          );
          const { session, statements, exec } = await recordingSession(pg, "uploader2", "fresh");
          try {
            const result = await ensureSchema(exec, {
              table: "device_test",
              device: DEVICE,
              targetDisplay: TARGET,
            });
            assert.deepEqual(result.missingBefore, []);
            assert.equal(statements.length, 1);
            assert.deepEqual(parseUpsertReply(await ok(session, upsertSql([sampleRow("a")]))), {
              inserted: 1,
              updated: 0,
            });
          } finally {
            await session.close();
          }
        },
      );
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "a role that does not own an incomplete schema: a configuration error naming what is missing",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      // Exactly what the old hint asked for: SELECT/INSERT/UPDATE and CREATE on the schema.
      await pg.psql(
        ORIGINAL_DDL + ORIGINAL_ROWS +
          `create role lab login;
           grant usage, create on schema public to lab;
           grant select, insert, update on device_test, devices to lab;`,
      );
      const before = await snapshot(pg);
      const { session, exec } = await recordingSession(pg, "lab");
      try {
        const error = await rejects(
          ensureSchema(exec, { table: "device_test", device: DEVICE, targetDisplay: TARGET }),
        );
        assert.equal(error.kind, "config");
        assert.equal(exitCodeFor(error), 2);
        assert.equal(error.sqlstate, "42501");
        assert.match(error.message, /role lab may not add what is missing \(42501: must be owner/);
        assert.match(error.message, /column folder_key of device_test/);
        assert.match(error.message, /column image_objects of device_test/);
        assert.match(error.message, /unique key \(device_id, folder_key\) on device_test/);
        assert.match(error.message, /removal of unique constraint unique_folder_device/);
        assert.match(error.hint!, /deno task upload --print-schema/);
        assert.equal(await snapshot(pg), before, "nothing changed");

        // The owner runs the SQL; the role uploads; then a revoked privilege is named.
        await psqlFile(pg, printSchemaSql({ table: "device_test", role: "lab", device: DEVICE }));
        const result = await ensureSchema(exec, {
          table: "device_test",
          device: DEVICE,
          targetDisplay: TARGET,
        });
        assert.deepEqual(result.missingBefore, []);
        await pg.psql("revoke insert on device_test from lab");
        const lacking = await rejects(
          ensureSchema(exec, { table: "device_test", device: DEVICE, targetDisplay: TARGET }),
        );
        assert.equal(lacking.kind, "config");
        assert.match(lacking.message, /role lab lacks INSERT on device_test/);
        assert.match(
          lacking.hint!,
          /grant select, insert, update on "device_test", "devices" to "lab"/,
        );
        await pg.psql(
          "revoke usage on schema public from lab; revoke usage on schema public from public",
        );
        const noUsage = await rejects(
          ensureSchema(exec, { table: "device_test", device: DEVICE, targetDisplay: TARGET }),
        );
        assert.equal(noUsage.kind, "config");
        assert.match(noUsage.message, /no USAGE privilege on schema/);
      } finally {
        await session.close();
      }
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "row-level security: INSERT and UPDATE policies only -> refused before any batch naming SELECT; all three work",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    try {
      await pg.psql("create role uploader login");
      await psqlFile(
        pg,
        printSchemaSql({ table: "device_test", role: "uploader", device: DEVICE }),
      );
      await pg.psql(
        `alter table device_test enable row level security;
         create policy up_insert on device_test for insert to uploader with check (true);
         create policy up_update on device_test for update to uploader using (true) with check (true);`,
      );
      const { session, exec } = await recordingSession(pg, "uploader");
      try {
        const options = { table: "device_test", device: DEVICE, targetDisplay: TARGET };
        const refused = await rejects(ensureSchema(exec, options));
        assert.equal(refused.kind, "config");
        assert.equal(exitCodeFor(refused), 2);
        assert.match(
          refused.message,
          /Row-level security on test server would refuse the uploads of role uploader: no permissive policy for device_test: SELECT \(/,
        );
        assert.match(
          refused.hint!,
          /create policy "uploader_select" on "device_test" for select to "uploader" using \(true\)/,
        );
        const inspection = parseInspection(
          await ok(session, buildInspectStatement("device_test", DEVICE)),
        );
        const policies = policiesOf(inspection);
        assert.deepEqual(policies, [
          { table: "device_test", rlsEnabled: true, rlsApplies: true, missing: ["SELECT"] },
          { table: "devices", rlsEnabled: false, rlsApplies: false, missing: [] },
        ]);
        // The refusal the check foresaw, as the server gives it.
        const reply = await session.run(upsertSql([sampleRow("a")]));
        assert.ok(!reply.ok, "the upsert is refused without a SELECT policy");
        assert.equal(reply.sqlstate, "42501");
        const error = describePermissionError(reply, {
          table: "device_test",
          targetDisplay: TARGET,
          role: inspection.role,
          policies,
        });
        assert.equal(error.kind, "config");
        assert.equal(error.sqlstate, "42501");
        assert.match(error.message, /Row-level security on device_test/);
        assert.match(error.message, /missing for role uploader: SELECT/);
        assert.match(error.message, /\(42501: /);
        assert.match(
          error.hint!,
          /create policy "uploader_select" on "device_test" for select to "uploader"/,
        );

        await pg.psql("create policy up_select on device_test for select to uploader using (true)");
        const fixed = await ensureSchema(exec, options);
        assert.deepEqual(fixed.policies[0].missing, []);
        assert.deepEqual(parseUpsertReply(await ok(session, upsertSql([sampleRow("a")]))), {
          inserted: 1,
          updated: 0,
        });
        assert.deepEqual(
          parseUpsertReply(
            await ok(session, upsertSql([sampleRow("a", { metadata: { content_hash: "v2" } })])),
          ),
          { inserted: 0, updated: 1 },
        );
      } finally {
        await session.close();
      }
    } finally {
      await pg.close();
    }
  },
});

Deno.test({
  name:
    "statement_timeout during the schema step: a timeout, retried, then a configuration error; nothing changed",
  ignore: NO_SERVER,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await pg.psql(
        ORIGINAL_DDL + ORIGINAL_ROWS +
          `insert into device_test (folder_name, images, test_status, metadata)
           select 'F' || (g % 10000), '{a.jpg,b.jpg}', 'passed', jsonb_build_object('n', g)
           from generate_series(1, 20000) g;
           create role slow login superuser;
           alter role slow set statement_timeout = '30ms';`,
      );
      const before = await snapshot(pg);
      const { session, exec } = await recordingSession(pg, "slow");
      const options = { table: "device_test", device: DEVICE, targetDisplay: TARGET };
      try {
        const error = await rejects(ensureSchema(exec, options));
        assert.ok(isSchemaTimeout(error), `${error.kind} ${error.sqlstate} ${error.message}`);
        assert.equal(error.kind, "timeout");
        assert.match(error.message, /cancelled the schema/);
        assert.match(error.message, /57014/);
        assert.equal(await snapshot(pg), before, "the cancelled upgrade changed nothing");
      } finally {
        await session.close();
      }

      // The write path retries the schema step, then stops with a configuration error (exit 2).
      const pool = new SessionPool(psqlFactory(connection(pg, "slow")));
      const retries: RetryNotice[] = [];
      const path = {
        settings: {
          table: "device_test",
          device: DEVICE,
          targetDisplay: TARGET,
          giveUpAfterMs: 60_000,
          backoff: { initialMs: 10, maxMs: 20, jitter: 0 },
        },
        state: new WriteState({ copyRows: true }),
        edges: {
          pool,
          signal: new AbortController().signal,
          onRetry: (n: RetryNotice) => retries.push(n),
        },
      };
      try {
        const error = await rejects(prepareTarget(path));
        assert.equal(error.kind, "config");
        assert.equal(error.sqlstate, "57014");
        assert.match(error.message, /statement_timeout cancelled the schema step 3 times/);
        assert.equal(exitCodeFor(error), 2);
        assert.equal(retries.length, 2);
        assert.ok(retries.every((r) => r.subject === "schema"));
      } finally {
        await pool.close();
      }
      assert.equal(await snapshot(pg), before);

      // Without the limit the same upgrade goes through.
      await pg.psql("alter role slow reset statement_timeout");
      const owner = await recordingSession(pg, "slow");
      try {
        const result = await ensureSchema(owner.exec, options);
        assert.equal(result.upgraded, true);
        assert.ok(result.rekeyed >= 10_000, `${result.rekeyed}`);
      } finally {
        await owner.session.close();
      }
    } finally {
      await pg.close();
    }
  },
});
