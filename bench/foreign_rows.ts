/**
 * What the upsert costs against rows another tool wrote, on a private PostgreSQL: rows as
 * the original authors' REST uploader leaves them (four images each as percent-encoded
 * storage URLs, no content_hash) that match their folders and are adopted as they stand,
 * beside the uploader's own rows re-sent unchanged (the content_hash guard) — the two ways
 * a batch writes nothing. One statement per batch of 500 (`buildUpsertStatement`), timed
 * from the client; the statements run one at a time on one psql session.
 *
 * ```
 * deno run -A bench/foreign_rows.ts [--rows 50000]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startPostgres, TEST_USER } from "../support/postgres.ts";
import { buildSchemaStatements } from "../lib/sink/postgres/schema.ts";
import { buildUpsertStatement, parseUpsertReply } from "../lib/sink/postgres/upsert.ts";
import type { UploadRow } from "../lib/sink/columns.ts";
import { PsqlSession } from "../lib/sink/postgres/psql.ts";

const { values } = parseArgs({ args: Deno.args, options: { rows: { type: "string" } } });
const ROWS = Number(values.rows ?? 50_000);
const BATCH = 500;
const DEVICE = { id: "7d3c2b1a-6f5e-4d4c-8b3a-2f1e0d9c8b7a", name: "TEST", type: "image_analyzer" };

/** The four image names of folder `i`. */
function images(i: number): string[] {
  return [0, 1, 2, 3].map((k) => `2025-06-02 16:${String((i + k) % 60).padStart(2, "0")}:31.jpg`)
    .sort();
}

/** The rows of folders `first`..`last` as the uploader builds them. */
function rows(first: number, last: number, prefix: string): UploadRow[] {
  const out: UploadRow[] = [];
  for (let i = first; i <= last; i++) {
    out.push({
      folder_key: `${prefix}${i}`,
      folder_name: `${prefix}${i}`,
      images: images(i),
      test_results: { result: [[i, 1.5, 2]], mean: [[1, 2, 3]] },
      test_status: "passed",
      test_date: null,
      metadata: { content_hash: `h${i}`, computed_test_status: "passed" },
    });
  }
  return out;
}

/** Sends every batch of `prefix` rows; returns µs per row and the rows written. */
async function sendAll(session: PsqlSession, prefix: string): Promise<[number, number]> {
  let ms = 0;
  let written = 0;
  for (let first = 1; first <= ROWS; first += BATCH) {
    const sql = buildUpsertStatement(rows(first, Math.min(first + BATCH - 1, ROWS), prefix), {
      table: "device_test",
      device: DEVICE,
      batchName: "bench",
    });
    const started = performance.now();
    const reply = await session.run(sql, { timeoutMs: 600_000 });
    ms += performance.now() - started;
    if (!reply.ok) throw new Error(`${reply.sqlstate}: ${reply.message}`);
    const counts = parseUpsertReply(reply.rows);
    written += counts.inserted + counts.updated;
  }
  return [(ms / ROWS) * 1000, written];
}

const pg = await startPostgres();
try {
  for (const sql of buildSchemaStatements({ table: "device_test", device: DEVICE })) {
    await pg.psql(sql);
  }
  // The other tool's rows: percent-encoded public URLs, no content_hash.
  const url = (n: string) =>
    `'https://p.supabase.co/storage/v1/object/public/images/${DEVICE.id}/F' || g || '/' || ` +
    `replace(replace(${n}, ' ', '%20'), ':', '%3A')`;
  const name = (k: number) =>
    `'2025-06-02 16:' || lpad(((g + ${k}) % 60)::text, 2, '0') || ':31.jpg'`;
  await pg.psql(
    `insert into device_test (device_id, folder_key, folder_name, images, test_results,
       test_status, metadata)
     select '${DEVICE.id}', 'F' || g, 'F' || g,
       array(select x from unnest(array[${[0, 1, 2, 3].map((k) => url(name(k))).join(", ")}]) x
         order by x),
       jsonb_build_object('result', jsonb_build_array(jsonb_build_array(g, 1.5, 2)),
         'mean', jsonb_build_array(jsonb_build_array(1, 2, 3))),
       'passed', '{"image_urls": []}'
     from generate_series(1, ${ROWS}) g`,
  );
  const session = await PsqlSession.start({
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", TEST_USER, "-d", "uploads"],
    env: {},
    display: "bench",
  });
  try {
    const [foreign, foreignWritten] = await sendAll(session, "F");
    await sendAll(session, "O"); // the uploader's own rows, first written
    const [own, ownWritten] = await sendAll(session, "O");
    console.log(`${ROWS} rows, batches of ${BATCH}, one session`);
    console.log(
      `| rows sent | µs per row | rows written |\n|---|---:|---:|\n` +
        `| another tool's, matching (adopted as they stand) | ${
          foreign.toFixed(0)
        } | ${foreignWritten} |\n` +
        `| the uploader's own, unchanged | ${own.toFixed(0)} | ${ownWritten} |`,
    );
  } finally {
    await session.close();
  }
} finally {
  await pg.close();
}
