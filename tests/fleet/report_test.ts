/**
 * `deno task fleet` (lib/fleet/report.ts, scripts/fleet.ts) against a real server holding five
 * devices: one fresh, one silent for two days with failing folders, one watching, one
 * that never reported (rows only), one that reported but has no rows yet, plus rows of the
 * placeholder device the original scripts' rows were given (never listed).
 *
 * The report read from the server is rendered with a fixed clock and pinned by snapshot
 * files in tests/snapshots/ (fleet.txt, fleet_stale.txt, fleet.json). After an intended
 * change, rewrite them with `UPDATE_SNAPSHOTS=1 deno test --allow-all tests/fleet/report_test.ts`
 * and review the diff. The script itself is run as a user runs it, for its exit codes.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  buildFleetQuery,
  fleetExitCode,
  fleetJson,
  formatAge,
  parseDuration,
  readFleet,
  renderFleet,
} from "../../lib/fleet/report.ts";
import { buildSchemaStatements, UNKNOWN_DEVICE } from "../../lib/sink/postgres/schema.ts";
import { connectionFromUrl } from "../../lib/target/target.ts";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { type CliResult, REPO_ROOT, runUploadCli } from "../../support/cli.ts";

const UPDATE = Deno.env.get("UPDATE_SNAPSHOTS") === "1";
const SNAPSHOTS = join(REPO_ROOT, "tests", "snapshots");
const FLEET = join(REPO_ROOT, "scripts", "fleet.ts");

/** The fixed clock of the snapshots. */
const NOW = "2025-06-02T12:00:00Z";
const TARGET = "db.example.com:5432/postgres (from $SUPABASE_DB_URL)";

const FRESH = "1a000000-0000-4000-8000-000000000001";
const SILENT = "2b000000-0000-4000-8000-000000000002";
const WATCHING = "3c000000-0000-4000-8000-000000000003";
const ROWS_ONLY = "4d000000-0000-4000-8000-000000000004";
const NO_ROWS = "5e000000-0000-4000-8000-000000000005";

/** Rows of `device`: `count` folders, the newest written at `newest`. */
function rows(device: string, count: number, newest: string): string {
  return `insert into device_test (device_id, folder_key, folder_name, created_at, updated_at)
    select '${device}', 'Batch' || g, 'Batch' || g,
      timestamptz '${newest}' - (g - 1) * interval '1 hour',
      timestamptz '${newest}' - (g - 1) * interval '1 hour'
    from generate_series(1, ${count}) g;`;
}

const FIXTURE = `
insert into devices (id, name, type) values
  ('${FRESH}', 'pi-7', 'image_analyzer'), ('${SILENT}', 'pi-8', 'image_analyzer'),
  ('${WATCHING}', 'lab-pc', 'image_analyzer'), ('${ROWS_ONLY}', null, null),
  ('${UNKNOWN_DEVICE.id}', 'unknown', 'unknown');
insert into device_health (device_id, device_name, host_name, tool_version, mode, outcome,
  exit_code, run_started_at, run_ended_at, reported_at, uploaded, failed, exhausted, pending,
  settling, markers_owed) values
  ('${FRESH}', 'pi-7', 'pi7.lab', '1.0.0', 'upload', 'completed', 0,
   '2025-06-02T11:54:30Z', '2025-06-02T11:55:00Z', '2025-06-02T11:55:00Z', 120, 0, 0, 0, 0, 0),
  ('${SILENT}', 'pi-8', 'pi8.lab', '1.0.0', 'upload', 'completed', 1,
   '2025-05-31T07:58:00Z', '2025-05-31T08:00:00Z', '2025-05-31T08:00:00Z', 12, 40, 3, 2, 1, 5),
  ('${WATCHING}', 'lab-pc', 'labpc', '1.0.0', 'watch', 'running', null,
   '2025-06-01T06:00:00Z', null, '2025-06-02T11:59:20Z', 5000, 0, 0, 4, 4, 0),
  ('${NO_ROWS}', 'new-pi', 'newpi', '1.0.0', 'quick', 'failed', 2,
   '2025-06-02T10:59:58Z', '2025-06-02T11:00:00Z', '2025-06-02T11:00:00Z', 0, 0, 0, 0, 0, 0);
${rows(FRESH, 3, "2025-06-02T09:58:00Z")}
${rows(SILENT, 2, "2025-05-31T07:59:00Z")}
${rows(WATCHING, 5, "2025-06-02T11:30:00Z")}
${rows(ROWS_ONLY, 1, "2025-05-20T00:00:00Z")}
${rows(UNKNOWN_DEVICE.id, 4, "2024-01-01T00:00:00Z")}
`;

/** Compares `actual` with a snapshot file (or rewrites it with UPDATE_SNAPSHOTS=1). */
function matchSnapshot(name: string, actual: string): void {
  const path = join(SNAPSHOTS, name);
  if (UPDATE) {
    Deno.writeTextFileSync(path, actual);
    return;
  }
  let expected: string;
  try {
    expected = Deno.readTextFileSync(path);
  } catch (error) {
    throw new Error(`Missing snapshot ${path} (${error}); create it with UPDATE_SNAPSHOTS=1`);
  }
  assert.equal(
    actual,
    expected,
    `${name} changed; if intended, run UPDATE_SNAPSHOTS=1 deno test --allow-all ` +
      "tests/fleet/report_test.ts and review the diff",
  );
}

Deno.test("parseDuration and formatAge: the forms --stale takes and the ages printed", () => {
  const cases: [string, number][] = [
    ["24h", 86_400_000],
    ["90m", 5_400_000],
    ["90min", 5_400_000],
    ["1h30m", 5_400_000],
    ["1h 30m", 5_400_000],
    ["2d", 172_800_000],
    ["1w", 604_800_000],
    ["45s", 45_000],
    ["3600", 3_600_000],
    ["1.5h", 5_400_000],
  ];
  for (const [text, ms] of cases) assert.equal(parseDuration("--stale", text), ms, text);
  for (const bad of ["", "h", "24x", "-1h", "0", "0h", "24h!", "h24"]) {
    assert.throws(() => parseDuration("--stale", bad), (e: Error & { kind?: string }) => {
      assert.equal(e.kind, "usage", bad);
      assert.match(e.message, /^Invalid duration for --stale: /);
      return true;
    });
  }
  const ages: [number, string][] = [
    [0, "0 s"],
    [59_999, "59 s"],
    [60_000, "1 min"],
    [3_599_000, "59 min"],
    [3_600_000, "1 h"],
    [3 * 3_600_000 + 5 * 60_000, "3 h 5 min"],
    [47 * 3_600_000 + 59 * 60_000, "47 h 59 min"],
    [48 * 3_600_000, "2 d"],
    [52 * 3_600_000 + 10 * 60_000, "2 d 4 h"],
    [-5_000, "0 s"],
  ];
  for (const [ms, text] of ages) assert.equal(formatAge(ms), text, String(ms));
});

/** Starts a server holding the fixture. */
async function fixtureServer(): Promise<PgServer> {
  const pg = await startPostgres();
  try {
    await pg.psql(buildSchemaStatements({ table: "device_test" })[0]);
    await pg.psql(FIXTURE);
    return pg;
  } catch (error) {
    await pg.close();
    throw error;
  }
}

Deno.test({
  name: "fleet: the report read from the server, rendered with a fixed clock, matches snapshots",
  ignore: !hasPostgres(),
  async fn() {
    const pg = await fixtureServer();
    try {
      const report = await readFleet(connectionFromUrl(pg.url), "device_test");
      assert.ok(Math.abs(report.serverNow - Date.now()) < 60_000, "the server's clock");
      assert.deepEqual(
        report.devices.map((d) => d.deviceId),
        [WATCHING, NO_ROWS, FRESH, SILENT, ROWS_ONLY],
        "by name, the placeholder device left out",
      );
      const now = Date.parse(NOW);
      const all = { now, target: TARGET };
      const stale = { ...all, staleMs: parseDuration("--stale", "24h") };
      matchSnapshot("fleet.txt", renderFleet(report, all));
      matchSnapshot("fleet_stale.txt", renderFleet(report, stale));
      matchSnapshot("fleet.json", JSON.stringify(fleetJson(report, stale), null, 2) + "\n");
      assert.equal(fleetExitCode(report, all), 0);
      assert.equal(fleetExitCode(report, stale), 1);
      const quiet = { ...all, staleMs: parseDuration("--stale", "30d") };
      assert.equal(fleetExitCode(report, quiet), 0);
      assert.equal(
        renderFleet(report, quiet),
        `No device silent for more than 30 d on ${TARGET} (5 devices)\n`,
      );
      assert.match(buildFleetQuery("lab.device_test"), /from "lab"\."device_health"/);
    } finally {
      await pg.close();
    }
  },
});

function fleet(args: string[], url: string): Promise<CliResult> {
  return runUploadCli(args, { script: FLEET, env: { SUPABASE_DB_URL: url } });
}

Deno.test({
  name: "fleet: the script's lines, --json, and exit codes (1 for a silent device, 2, 3)",
  ignore: !hasPostgres(),
  async fn() {
    const pg = await fixtureServer();
    try {
      // The fixture moved to the present, as the server's clock measures.
      await pg.psql(`
        update device_health set reported_at = reported_at + (now() - '${NOW}'),
          run_started_at = run_started_at + (now() - '${NOW}'),
          run_ended_at = run_ended_at + (now() - '${NOW}');
        update device_test set updated_at = updated_at + (now() - '${NOW}');`);
      const all = await fleet([], pg.url);
      assert.equal(all.code, 0, all.stderr);
      const lines = all.stdout.trimEnd().split("\n");
      assert.match(
        lines[0],
        /^5 devices on \S*127\.0\.0\.1:\d+\/uploads\b.*:$/,
      );
      assert.match(lines[1], /^DEVICE {2,}ID {2,}LAST SEEN {2,}LAST OUTCOME {2,}ROWS {2,}FAILING/);
      assert.deepEqual(
        lines.slice(2).map((l) => l.split(/\s{2,}/).slice(0, 2)),
        [["lab-pc", WATCHING], ["new-pi", NO_ROWS], ["pi-7", FRESH], ["pi-8", SILENT], [
          "(no name)",
          ROWS_ONLY,
        ]],
      );
      assert.match(lines[4], /pi-7 +\S+ +5 min ago +completed, exit 0 +3 +0 +0 +2 h 2 min ago$/);

      const stale = await fleet(["--stale", "24h"], pg.url);
      assert.equal(stale.code, 1, stale.stderr);
      const staleLines = stale.stdout.trimEnd().split("\n");
      assert.match(staleLines[0], /^2 of 5 devices on .* silent for more than 24 h:$/);
      assert.deepEqual(staleLines.slice(2).map((l) => l.split(/\s{2,}/)[0]), ["pi-8", "(no name)"]);

      const json = await fleet(["--json", "--stale", "24h"], pg.url);
      assert.equal(json.code, 1, json.stderr);
      const doc = JSON.parse(json.stdout);
      assert.deepEqual([doc.total, doc.silent, doc.stale_after_s], [5, 2, 86_400]);
      assert.deepEqual(doc.devices.map((d: { device_id: string }) => d.device_id), [
        SILENT,
        ROWS_ONLY,
      ]);
      assert.equal(doc.devices[0].failed, 40);

      const none = await fleet(["--stale", "30d"], pg.url);
      assert.equal(none.code, 0, none.stderr);
      assert.match(none.stdout, /^No device silent for more than 30 d on .* \(5 devices\)\n$/);

      const bad = await fleet(["--stale", "soon"], pg.url);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /^Error: Invalid duration for --stale: "soon"\nHint: /);
      assert.equal((await fleet(["--verbose"], pg.url)).code, 2);

      await pg.psql("drop table device_health");
      const missing = await fleet([], pg.url);
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(
        missing.stderr,
        /^Error: No fleet to report on .*device_health.*does not exist/m,
      );
      assert.match(missing.stderr, /^Hint: Devices record their health in device_health/m);
    } finally {
      await pg.close();
    }
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    const gone = await fleet([], `postgresql://tester@127.0.0.1:${port}/uploads`);
    assert.equal(gone.code, 3, gone.stderr);
  },
});
