/**
 * Where users already are: the CLI run as a user runs it against a real PostgreSQL 15 with
 * the limits and mistakes met in the field.
 *
 * - A short `statement_timeout` on the role: batches split, a row that still times out
 *   fails alone naming 57014 and the server's setting, the rest land, exit 1, and
 *   `--status` lists the failures. A very short timeout is no outage.
 * - Large stats.json files under the upload task's own V8 heap limits, with the peak RSS
 *   printed; a file over the limit fails alone before it is parsed.
 * - Quick upload keyed by a folder's name alone: two folders of the same name in one run,
 *   or in two runs, never overwrite each other; with the tracker, the tracked key is used.
 * - A wrong URL (closed port, a host that does not resolve) gives up in the short connect
 *   window with exit 3 and a hint. An outage after the first connection (`--give-up-after`)
 *   is covered by tests/fault_server_test.ts.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../support/postgres.ts";
import { generateTree, removeTree, T1, writeTree } from "../support/tree.ts";
import { buildSchemaStatements } from "../lib/schema.ts";
import { runMeasured } from "../bench/proc.ts";
import {
  type CliResult,
  describeRun,
  jsonEvents,
  REPO_ROOT,
  runUploadCli,
  summaryOf,
  UPLOAD_SCRIPT,
} from "./support/cli.ts";
import { trackerState } from "./support/run.ts";

const QUICK_SCRIPT = join(REPO_ROOT, "scripts", "quick_upload.ts");
const DEVICE_ID = "3a8e4c1d-2b7f-4e90-9c1a-5d6e7f8a9b0c";

/** The upload task's V8 flags (deno.json), so memory is measured as users run it. */
const TASK_V8_FLAGS = "--v8-flags=--max-semi-space-size=4,--max-old-space-size=192";

function roleUrl(pg: PgServer, role: string, password: string): string {
  return `postgresql://${role}:${password}@${pg.host}:${pg.port}/uploads`;
}

/** Runs the upload manager with `args` (`--json` added) against `url`. */
function upload(args: string[], url: string, timeoutMs = 120_000): Promise<CliResult> {
  return runUploadCli([...args, "--json"], {
    env: { SUPABASE_DB_URL: url, DEVICE_ID },
    timeoutMs,
  });
}

/** Runs the quick upload with `args` (`--json` added) against `url`, in `cwd`. */
function quick(args: string[], url: string, cwd: string): Promise<CliResult> {
  return runUploadCli([...args, "--json"], {
    script: QUICK_SCRIPT,
    env: { SUPABASE_DB_URL: url, DEVICE_ID },
    cwd,
  });
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** Creates the uploader's tables as an owner would, before a restricted role uploads. */
async function createTables(pg: PgServer): Promise<void> {
  for (
    const sql of buildSchemaStatements({
      table: "device_test",
      device: { id: DEVICE_ID, name: "lab", type: "image_analyzer" },
    })
  ) await pg.psql(sql);
}

/** `folder_key -> test_results text` of every row. */
async function rowsByKey(pg: PgServer): Promise<Map<string, string>> {
  const out = await pg.psql(
    "select coalesce(json_object_agg(folder_key, test_results::text), '{}') from device_test",
  );
  return new Map(Object.entries(JSON.parse(out) as Record<string, string>));
}

async function withDir(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = Deno.makeTempDirSync({ prefix });
  try {
    await fn(dir);
  } finally {
    removeTree(dir);
  }
}

/** A TCP port nothing listens on (bound once, then released). */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

// 7. A wrong URL ------------------------------------------------------------------------

Deno.test("wrong URL: closed port and unresolvable host give up in the connect window, exit 3", async () => {
  await withDir("adopt_url_", async (dir) => {
    const data = join(dir, "data");
    writeTree(data, {
      "Batch1/stats.json": { json: { result: "PASS" } },
      "Batch2/a.jpg": { bytes: 10 },
    });
    const port = closedPort();
    const cases = [
      {
        name: "closed port",
        url: `postgresql://loader:pw@127.0.0.1:${port}/uploads`,
        at: `${port}`,
      },
      {
        name: "unresolvable host",
        url: "postgresql://loader:pw@nonexistent.invalid:5432/uploads",
        at: "nonexistent.invalid",
      },
    ];
    const runs = cases.map(async (c, i) => {
      const dbPath = join(dir, `tracker${i}.db`);
      const started = performance.now();
      const result = await upload(
        [data, "--db-path", dbPath, "--min-age", "0", "--connect-timeout", "3"],
        c.url,
        60_000,
      );
      return { c, dbPath, result, seconds: (performance.now() - started) / 1000 };
    });
    // The default window, on the closed port, alongside.
    const defaultRun = (async () => {
      const started = performance.now();
      const result = await upload(
        [data, "--db-path", join(dir, "tracker-default.db"), "--min-age", "0"],
        cases[0].url,
        90_000,
      );
      return { result, seconds: (performance.now() - started) / 1000 };
    })();
    for (const { c, dbPath, result, seconds } of await Promise.all(runs)) {
      console.log(`${c.name}: exit ${result.code} after ${seconds.toFixed(1)} s`);
      assert.equal(result.code, 3, `${c.name}: ${describeRun(result)}`);
      assert.ok(seconds < 15, `${c.name}: took ${seconds.toFixed(1)} s`);
      assert.match(result.stderr, /unreachable/i, c.name);
      assert.ok(result.stderr.includes(c.at), `${c.name}: names ${c.at}: ${result.stderr}`);
      assert.match(result.stderr, /check the host and port/i, c.name);
      assert.ok(!result.stderr.includes(":pw@"), "password printed");
      const state = trackerState(dbPath);
      assert.deepEqual(state.folders.filter((f) => f.status === "success"), []);
    }
    const def = await defaultRun;
    console.log(
      `closed port, default window: exit ${def.result.code} after ${def.seconds.toFixed(1)} s`,
    );
    assert.equal(def.result.code, 3, describeRun(def.result));
    assert.ok(def.seconds < 35, `default window took ${def.seconds.toFixed(1)} s`);
    assert.ok(!exists(join(data, "Batch1", "success.json")));
    assert.ok(!exists(join(data, "Batch2", "success.json")));
  });
});
