/**
 * Server CPU of the ways a batch of rows can reach `device_test`, measured on a private
 * PostgreSQL:
 *
 * - `copy`: `COPY ... FROM STDIN` of the rows straight into the table, one per batch (the
 *   floor: no conflict handling, no reply);
 * - `jsonb`: the uploader's upsert, {@linkcode buildUpsertStatement} (one statement per
 *   batch, the rows in one jsonb literal unpacked by `jsonb_to_recordset`);
 * - `script`: the uploader's COPY upsert, {@linkcode buildUpsertScript} (lib/sink/postgres/upsert.ts): per
 *   batch one transaction, a temp table of text columns dropped at commit, `COPY` into it,
 *   the insert casting the columns (the default methods are copy, jsonb and script);
 * - `staging`: per batch, one transaction: a temp table dropped at commit, `COPY` of the
 *   rows' columns into it, one `INSERT ... SELECT ... ON CONFLICT` with the same guard and
 *   reply as the upsert, `commit`;
 * - `staging-text`: the same, but the staging table holds each row's JSON text (one text
 *   column) and the insert unpacks it with `json_to_record`;
 * - `jsonb-lean`, `json-lean`: one statement per batch as `jsonb`, with the device as
 *   literals and the rows in a bare array unpacked by `jsonb_to_recordset` or
 *   `json_to_recordset` (what of the saving needs no staging table).
 *
 * Each is a script psql reads on stdin, as the uploader's session does. The rows are built
 * by lib/plan/row.ts buildRow from a generated tree. The first load goes into an empty table;
 * the re-send sends the same rows again (all unchanged: the content_hash guard skips them).
 * Server CPU is the postmaster's process tree (backends included) before and after.
 *
 * ```
 * deno run -A bench/upsert_cpu.ts --rows 100000 [--batch 500] [--runs 3] [--methods copy,jsonb,...]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { DEFAULT_CONFIG, markerNames } from "../config.ts";
import { buildRow } from "../lib/plan/row.ts";
import { scanFolders } from "../lib/source/walk.ts";
import { buildSchemaStatements } from "../lib/sink/postgres/schema.ts";
import { buildUpsertScript, buildUpsertStatement } from "../lib/sink/postgres/upsert.ts";
import { rowToJsonWithStats } from "../lib/sink/payload.ts";
import type { UploadRow } from "../lib/sink/columns.ts";
import { sqlLiteral } from "../lib/sink/postgres/quote.ts";
import { connectionFromUrl } from "../lib/target/target.ts";
import { startPostgres } from "../support/postgres.ts";
import { generateTree, removeTree } from "../support/tree.ts";
import { arrayLiteral, COPY_COLUMNS, copyText, psqlExec } from "./floor.ts";
import { runMeasured, treeCpuSeconds } from "./proc.ts";

const TABLE = "device_test";
const DEVICE = {
  id: "0b6f3c1e-7d0a-4c55-9a53-5e2b8c9d1f00",
  name: "bench-cpu",
  type: "image_analyzer",
};
const BATCH_NAME = "batch_upsert_cpu";

/** One way of sending the rows. */
interface Method {
  name: string;
  /** The psql script of the first load (and of the re-send, the same rows again). */
  script: string;
  /** Whether the script replies with the upsert's JSON line per batch. */
  replies: boolean;
}

/** One measured psql run. */
interface Figures {
  serverCpu: number;
  clientCpu: number;
  wallMs: number;
  inserted: number;
  updated: number;
}

function usage(): never {
  console.error(
    "Usage: deno run -A bench/upsert_cpu.ts --rows N [--batch 500] [--runs 3] " +
      "[--methods copy,jsonb,script,jsonb-lean,json-lean,staging,staging-text]",
  );
  Deno.exit(2);
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: "100000" },
    batch: { type: "string", default: String(DEFAULT_CONFIG.batchSize) },
    runs: { type: "string", default: "3" },
    methods: { type: "string", default: "copy,jsonb,script" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) usage();
const ROWS = Number(values.rows);
const BATCH = Number(values.batch);
const RUNS = Number(values.runs);
if (!(ROWS > 0 && BATCH > 0 && RUNS > 0)) usage();
const METHODS = values.methods.split(",");

/** Distinct folders generated on disk; more rows are copies of theirs under other keys. */
const BASE_FOLDERS = 2000;

/**
 * The rows of a generated tree, with their JSON texts as the uploader sends them. Past
 * {@linkcode BASE_FOLDERS}, rows repeat the built ones under new keys (their stats text
 * travels as it is on disk, as buildRow sends it).
 */
async function buildRows(tree: string): Promise<{ rows: UploadRow[]; json: string[] }> {
  generateTree(tree, { folders: Math.min(ROWS, BASE_FOLDERS), nonUnitEvery: 0 });
  const base: { row: UploadRow; json: string; stats: string | null }[] = [];
  const now = new Date();
  for await (
    const item of scanFolders(tree, {
      imageExtensions: DEFAULT_CONFIG.imageExtensions,
      statsFileName: DEFAULT_CONFIG.statsFileName,
      markerNames: markerNames(DEFAULT_CONFIG),
    })
  ) {
    if (item.kind !== "folder") continue;
    const built = buildRow(item.snapshot, DEFAULT_CONFIG, now);
    const stats = built.row.test_results === null
      ? null
      : Deno.readTextFileSync(join(item.snapshot.path, DEFAULT_CONFIG.statsFileName));
    base.push({ row: built.row, json: built.json, stats });
  }
  const rows: UploadRow[] = [];
  const json: string[] = [];
  for (let i = 0; i < ROWS; i++) {
    const b = base[i % base.length];
    const copy = Math.floor(i / base.length);
    if (copy === 0) {
      rows.push(b.row);
      json.push(b.json);
      continue;
    }
    const row: UploadRow = {
      ...b.row,
      folder_key: `${b.row.folder_key}_${copy}`,
      folder_name: `${b.row.folder_name}_${copy}`,
      metadata: { ...b.row.metadata, source_path: `${b.row.metadata.source_path}_${copy}` },
    };
    rows.push(row);
    json.push(rowToJsonWithStats(row, b.stats));
  }
  return { rows, json };
}

function batches<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += BATCH) out.push(items.slice(i, i + BATCH));
  return out;
}

/** `copy`: each batch straight into the table. */
function copyScript(rows: readonly UploadRow[]): string {
  const parts: string[] = [];
  for (const batch of batches(rows)) {
    parts.push(`copy ${TABLE} (${COPY_COLUMNS.join(", ")}) from stdin;\n`);
    for (const row of batch) {
      const fields = [
        DEVICE.id,
        DEVICE.name,
        DEVICE.type,
        row.folder_key,
        row.folder_name,
        arrayLiteral(row.images),
        row.test_results === null ? null : JSON.stringify(row.test_results),
        row.test_status,
        row.test_date,
        BATCH_NAME,
        JSON.stringify(row.metadata),
        "image_analysis",
      ];
      parts.push(fields.map(copyText).join("\t") + "\n");
    }
    parts.push("\\.\n");
  }
  return parts.join("");
}

/** `jsonb`: the uploader's statement per batch. */
function jsonbScript(rows: readonly UploadRow[], json: readonly string[]): string {
  const parts: string[] = [];
  const rowBatches = batches(rows);
  const jsonBatches = batches(json);
  for (let i = 0; i < rowBatches.length; i++) {
    parts.push(
      buildUpsertStatement(rowBatches[i], {
        table: TABLE,
        device: DEVICE,
        batchName: BATCH_NAME,
      }, jsonBatches[i]) + "\n",
    );
  }
  return parts.join("");
}

/** `script`: the uploader's COPY upsert, {@linkcode buildUpsertScript} per batch. */
function scriptScript(rows: readonly UploadRow[], json: readonly string[]): string {
  const rowBatches = batches(rows);
  const jsonBatches = batches(json);
  return rowBatches.map((batch, i) =>
    buildUpsertScript(
      batch,
      { table: TABLE, device: DEVICE, batchName: BATCH_NAME },
      jsonBatches[i],
    )
  ).join("");
}

/** The insert of the staging methods: `input` names the rows' relation. */
function stagingInsert(input: string): string {
  const t = TABLE;
  return `with input as (${input}), written as (\n` +
    `  insert into ${t} as t (device_id, device_name, device_type, folder_key, folder_name,\n` +
    `    images, test_results, test_status, test_date, upload_batch, metadata, data_type)\n` +
    `  select ${sqlLiteral(DEVICE.id)}::uuid, ${sqlLiteral(DEVICE.name)}, ` +
    `${sqlLiteral(DEVICE.type)}, i.folder_key, i.folder_name, coalesce(i.images, '{}'),\n` +
    `    i.test_results, i.test_status, i.test_date, ${sqlLiteral(BATCH_NAME)}, i.metadata,\n` +
    `    'image_analysis'\n` +
    `  from input i\n` +
    `  on conflict (device_id, folder_key) do update set\n` +
    `    device_name = excluded.device_name, device_type = excluded.device_type,\n` +
    `    folder_name = excluded.folder_name, images = excluded.images,\n` +
    `    test_results = excluded.test_results, test_status = excluded.test_status,\n` +
    `    test_date = excluded.test_date, upload_batch = excluded.upload_batch,\n` +
    `    metadata = excluded.metadata, data_type = excluded.data_type, updated_at = now()\n` +
    `  where t.metadata->>'content_hash' is distinct from excluded.metadata->>'content_hash'\n` +
    `  returning (t.xmax = 0) as inserted\n` +
    `)\n` +
    `select json_build_object('inserted', count(*) filter (where inserted),\n` +
    `  'updated', count(*) filter (where not inserted), 'conflicts', '[]'::json)::text\n` +
    `from written;\n`;
}

const INPUT_COLUMNS = "folder_key text, folder_name text, images text[], test_results jsonb, " +
  "test_status text, test_date timestamptz, metadata jsonb, strict boolean";

/** `staging`: per batch a transaction, a temp table of the input columns, COPY, insert. */
function stagingScript(rows: readonly UploadRow[]): string {
  const parts: string[] = [];
  const insert = stagingInsert("select * from upload_input");
  for (const batch of batches(rows)) {
    parts.push(
      `begin;\ncreate temp table upload_input (${INPUT_COLUMNS}) on commit drop;\n` +
        `copy upload_input from stdin;\n`,
    );
    for (const row of batch) {
      const fields = [
        row.folder_key,
        row.folder_name,
        arrayLiteral(row.images),
        row.test_results === null ? null : JSON.stringify(row.test_results),
        row.test_status,
        row.test_date,
        JSON.stringify(row.metadata),
        row.strict ? "t" : null,
      ];
      parts.push(fields.map(copyText).join("\t") + "\n");
    }
    parts.push("\\.\n", insert, "commit;\n");
  }
  return parts.join("");
}

/**
 * `staging-text`: as `staging`, the staging table holding each row's JSON text in a text
 * column (COPY cannot refuse it), unpacked by `json_to_record` in the insert.
 */
function stagingTextScript(json: readonly string[]): string {
  const parts: string[] = [];
  const insert = stagingInsert(
    `select r.* from pg_temp.upload_input u, json_to_record(u.j::json) as r(${INPUT_COLUMNS})`,
  );
  for (const batch of batches(json)) {
    parts.push(
      `begin;\ncreate temp table upload_input (j text) on commit drop;\n` +
        `copy pg_temp.upload_input from stdin;\n`,
    );
    for (const text of batch) parts.push(copyText(text) + "\n");
    parts.push("\\.\n", insert, "commit;\n");
  }
  return parts.join("");
}

/**
 * `jsonb-lean` / `json-lean`: one statement per batch like `jsonb`, but the device and
 * batch name as literals and the literal a bare array of the rows, unpacked by
 * `jsonb_to_recordset` or `json_to_recordset`.
 */
function leanScript(json: readonly string[], type: "json" | "jsonb"): string {
  return batches(json).map((batch) =>
    stagingInsert(
      `select r.* from ${type}_to_recordset(${
        sqlLiteral(`[${batch.join(",")}]`)
      }::${type}) as r(${INPUT_COLUMNS})`,
    )
  ).join("");
}

async function main(): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "upsert_cpu_" });
  const pg = await startPostgres({
    conf: {
      shared_buffers: "'256MB'",
      max_wal_size: "'4GB'",
      checkpoint_timeout: "'30min'",
      // Background work after a load would land in the next measurement.
      autovacuum: "off",
    },
  });
  const stop = () => {
    pg.close().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    const url = pg.url;
    for (const sql of buildSchemaStatements({ table: TABLE, device: DEVICE })) {
      await psqlExec(url, sql);
    }
    const started = performance.now();
    const { rows, json } = await buildRows(join(work, "tree"));
    removeTree(join(work, "tree"));
    console.error(
      `${rows.length} rows built in ${((performance.now() - started) / 1000).toFixed(1)} s; ` +
        `JSON ${(json.reduce((s, t) => s + t.length, 0) / rows.length).toFixed(0)} chars/row`,
    );
    const all: Method[] = [
      { name: "copy", script: copyScript(rows), replies: false },
      { name: "jsonb", script: jsonbScript(rows, json), replies: true },
      { name: "script", script: scriptScript(rows, json), replies: true },
      { name: "staging", script: stagingScript(rows), replies: true },
      { name: "staging-text", script: stagingTextScript(json), replies: true },
      { name: "jsonb-lean", script: leanScript(json, "jsonb"), replies: true },
      { name: "json-lean", script: leanScript(json, "json"), replies: true },
    ];
    const methods = all.filter((m) => METHODS.includes(m.name));
    const postmaster = Number(
      Deno.readTextFileSync(join(pg.dataDir, "postmaster.pid")).split("\n")[0],
    );
    const conn = connectionFromUrl(url);
    const measure = async (method: Method): Promise<Figures> => {
      await psqlExec(url, "checkpoint");
      await new Promise((r) => setTimeout(r, 200));
      const before = treeCpuSeconds(postmaster)!;
      const result = await runMeasured(
        "psql",
        ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", ...conn.args],
        { stdin: method.script, env: { ...conn.env, PGCLIENTENCODING: "UTF8", LC_ALL: "C" } },
      );
      // The backend ends just after psql: let the postmaster reap it.
      await new Promise((r) => setTimeout(r, 200));
      const after = treeCpuSeconds(postmaster)!;
      if (result.code !== 0) {
        throw new Error(`${method.name}: psql exit ${result.code}: ${result.stderr.slice(-2000)}`);
      }
      let inserted = 0;
      let updated = 0;
      for (const line of result.stdout.split("\n")) {
        if (!line.startsWith("{")) continue;
        const reply = JSON.parse(line);
        inserted += reply.inserted;
        updated += reply.updated;
      }
      return {
        serverCpu: after - before,
        clientCpu: result.treeCpuSeconds,
        wallMs: result.wallMs,
        inserted,
        updated,
      };
    };
    const results = new Map<string, Figures[]>();
    const record = (key: string, figures: Figures) => {
      const list = results.get(key) ?? [];
      list.push(figures);
      results.set(key, list);
      console.error(
        `${key}: server ${figures.serverCpu.toFixed(2)} s, psql ${
          figures.clientCpu.toFixed(2)
        } s, wall ${(figures.wallMs / 1000).toFixed(2)} s, inserted ${figures.inserted}, ` +
          `updated ${figures.updated}`,
      );
    };
    for (let run = 1; run <= RUNS; run++) {
      for (const method of methods) {
        await psqlExec(url, `truncate ${TABLE}`);
        const first = await measure(method);
        const count = Number((await psqlExec(url, `select count(*) from ${TABLE}`)).trim());
        if (count !== rows.length) throw new Error(`${method.name}: ${count} rows loaded`);
        if (method.replies && first.inserted !== rows.length) {
          throw new Error(`${method.name}: replies say ${first.inserted} inserted`);
        }
        record(`${method.name} first load`, first);
        if (!method.replies) continue;
        const again = await measure(method);
        if (again.inserted !== 0 || again.updated !== 0) {
          throw new Error(`${method.name}: the re-send wrote rows`);
        }
        record(`${method.name} re-send`, again);
      }
    }
    const median = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    };
    const per1000 = (seconds: number) => (seconds / rows.length * 1000).toFixed(4);
    const floor = results.get("copy first load");
    const floorCpu = floor ? median(floor.map((f) => f.serverCpu)) : undefined;
    console.log(
      `\n${rows.length} rows, batches of ${BATCH}, median of ${RUNS} run(s); ` +
        `PostgreSQL ${(await psqlExec(url, "show server_version")).trim()}\n`,
    );
    console.log(
      "| method | load | server CPU s / 1000 rows | x copy | psql CPU s / 1000 rows | wall s | rows/s |",
    );
    console.log("|---|---|---:|---:|---:|---:|---:|");
    for (const [key, list] of results) {
      const [name, ...load] = key.split(" ");
      const server = median(list.map((f) => f.serverCpu));
      const wall = median(list.map((f) => f.wallMs)) / 1000;
      console.log(
        `| ${name} | ${load.join(" ")} | ${per1000(server)} | ${
          floorCpu ? (server / floorCpu).toFixed(2) : "-"
        } | ${per1000(median(list.map((f) => f.clientCpu)))} | ${wall.toFixed(2)} | ${
          Math.round(rows.length / wall)
        } |`,
      );
    }
  } finally {
    await pg.close();
    await Deno.remove(work, { recursive: true }).catch(() => {
      // Already gone: nothing to clean.
    });
  }
}

if (import.meta.main) await main();
