/**
 * A fleet at once: `--devices` uploaders (default 20), each with its own tree of
 * `--folders` folders (default 5,000), its own tracking database and `DEVICE_ID`, started
 * together against one local PostgreSQL through pgbouncer in transaction mode (as
 * Supabase's port 6543). With `--isolate`, the owner first runs `--print-schema
 * --isolate-devices`, and each device connects as its own role assigned its own device
 * (pgbouncer then pools per role). Without it, all share the superuser role and the first
 * runs create the schema, as first uploads do.
 *
 * Prints: wall time from the first start to the last exit, every exit code, the server's
 * CPU seconds (the postmaster's process tree, backends included) and pgbouncer's, the rows
 * (total, distinct keys, per device) and the health lines (one per device, each with the
 * device's folders uploaded and nothing failing or pending), then the time of the fleet
 * query on that table and, with `--million`, on a million rows.
 *
 * ```
 * deno run -A bench/fleet.ts [--devices 20] [--folders 5000] [--pool 4] [--isolate] [--million]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { readFleet } from "../lib/fleet/report.ts";
import { printSchemaSql } from "../lib/sink/postgres/schema.ts";
import { connectionFromUrl } from "../lib/target/target.ts";
import { startPgbouncer } from "../support/pgbouncer.ts";
import { startPostgres, TEST_PASSWORD } from "../support/postgres.ts";
import { generateTree } from "../support/tree.ts";
import { cpuSeconds, treeCpuSeconds } from "./proc.ts";

const REPO = new URL("../", import.meta.url).pathname;
/** The flags of `deno task upload` (deno.json), so each device runs as a user's does. */
const TASK = [
  "run",
  "--v8-flags=--max-semi-space-size=4,--max-old-space-size=192,--wasm-num-compilation-tasks=1",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-run",
  "--allow-sys",
  "--allow-net",
  join(REPO, "scripts", "upload_manager.ts"),
];

const { values } = parseArgs({
  options: {
    devices: { type: "string", default: "20" },
    folders: { type: "string", default: "5000" },
    pool: { type: "string", default: "4" },
    isolate: { type: "boolean", default: false },
    million: { type: "boolean", default: false },
  },
});
const DEVICES = Number(values.devices);
const FOLDERS = Number(values.folders);

function deviceId(i: number): string {
  return `00000000-0000-4000-8000-${String(i + 1).padStart(12, "0")}`;
}

/** The pid of the pgbouncer serving `port` (its command line names its own config). */
function pgbouncerPid(): number | undefined {
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (cmdline.startsWith("/usr/sbin/pgbouncer\0") && cmdline.includes("/pgb-")) {
        return Number(entry.name);
      }
    } catch {
      // Gone between the listing and the read.
    }
  }
  return undefined;
}

async function query(pg: { psql(sql: string): Promise<string> }, sql: string): Promise<string> {
  return (await pg.psql(sql)).trim();
}

const work = Deno.makeTempDirSync({ prefix: "bench_fleet_" });
const pg = await startPostgres({ maxConnections: DEVICES * 2 + 20 });
try {
  const users: Record<string, string> = { tester: TEST_PASSWORD };
  if (values.isolate) {
    await pg.psql("create role uploader nologin");
    await pg.psql(printSchemaSql({ table: "device_test", role: "uploader", isolateDevices: true }));
    for (let i = 0; i < DEVICES; i++) {
      const role = `dev_${i + 1}`;
      users[role] = `${role}-secret`;
      await pg.psql(
        `create role ${role} login password '${users[role]}' in role uploader;
         insert into device_roles (role_name, device_id) values ('${role}', '${deviceId(i)}')`,
      );
    }
  }
  const bouncer = await startPgbouncer(pg, {
    poolMode: "transaction",
    poolSize: Number(values.pool),
    users,
  });
  try {
    const t0 = performance.now();
    let units = 0;
    for (let i = 0; i < DEVICES; i++) {
      units = generateTree(join(work, `d${i}`), { folders: FOLDERS, seed: i + 1, nonUnitEvery: 0 })
        .units;
    }
    console.log(`${DEVICES} trees of ${units} units in ${Math.round(performance.now() - t0)} ms`);

    const postmaster = Number(
      Deno.readTextFileSync(join(pg.dataDir, "postmaster.pid")).split("\n")[0],
    );
    const bouncerPid = pgbouncerPid();
    const serverBefore = treeCpuSeconds(postmaster)!;
    const bouncerBefore = bouncerPid ? cpuSeconds(bouncerPid) ?? 0 : 0;
    const started = performance.now();
    const runs = Array.from({ length: DEVICES }, (_, i) => {
      const role = values.isolate ? `dev_${i + 1}` : "tester";
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          ...TASK,
          join(work, `d${i}`),
          "--db-path",
          join(work, `d${i}.db`),
          "--min-age",
          "0",
          "--no-markers",
          "--quiet",
        ],
        env: { SUPABASE_DB_URL: bouncer.url(role, users[role]), DEVICE_ID: deviceId(i) },
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      return child.output().then((out) => ({
        code: out.code,
        ms: performance.now() - started,
        stderr: new TextDecoder().decode(out.stderr),
      }));
    });
    const results = await Promise.all(runs);
    const wallMs = performance.now() - started;
    await new Promise((r) => setTimeout(r, 500)); // backends of the last sessions exit
    const serverCpu = treeCpuSeconds(postmaster)! - serverBefore;
    const bouncerCpu = bouncerPid ? (cpuSeconds(bouncerPid) ?? 0) - bouncerBefore : NaN;

    const rows = await query(pg, "select count(*) from device_test");
    const keys = await query(pg, "select count(distinct (device_id, folder_key)) from device_test");
    const perDevice = await query(
      pg,
      `select string_agg(distinct n::text, ',') from (select count(*) n from device_test
       group by device_id) c`,
    );
    const health = await query(pg, "select count(*) from device_health");
    const healthy = await query(
      pg,
      `select count(*) from device_health where outcome = 'completed' and exit_code = 0
       and uploaded = ${units} and failed = 0 and pending = 0 and settling = 0`,
    );
    const q0 = performance.now();
    const report = await readFleet(connectionFromUrl(pg.url), "device_test");
    const fleetMs = performance.now() - q0;

    console.log(
      `mode: ${values.isolate ? "a role per device, isolation on" : "one role"}, ` +
        `pgbouncer transaction pooling, pool_size ${values.pool}`,
    );
    console.log(`exit codes: ${[...new Set(results.map((r) => r.code))].join(",")}`);
    for (const r of results.filter((r) => r.code !== 0)) console.log(r.stderr.slice(-2000));
    console.log(
      `wall: ${(wallMs / 1000).toFixed(1)} s (first device done at ${
        (Math.min(...results.map((r) => r.ms)) / 1000).toFixed(1)
      } s)`,
    );
    console.log(`server CPU: ${serverCpu.toFixed(1)} s; pgbouncer CPU: ${bouncerCpu.toFixed(1)} s`);
    console.log(
      `rows: ${rows} (expected ${DEVICES * units}), distinct keys ${keys}, per device ${perDevice}`,
    );
    console.log(`health lines: ${health}, of which complete and clean: ${healthy}`);
    console.log(`fleet query: ${report.devices.length} devices in ${fleetMs.toFixed(0)} ms`);

    if (values.million) {
      const extra = 1_000_000 - Number(rows);
      await pg.psql(
        `insert into devices (id) values ('99999999-0000-4000-8000-000000000000');
         insert into device_test (device_id, folder_key, folder_name)
         select '99999999-0000-4000-8000-000000000000', 'k' || g, 'k' || g
         from generate_series(1, ${extra}) g; vacuum analyze device_test;`,
      );
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        await readFleet(connectionFromUrl(pg.url), "device_test");
        times.push(performance.now() - t);
      }
      console.log(
        `fleet query on 1,000,000 rows: ${times.map((t) => t.toFixed(0)).join(", ")} ms`,
      );
    }
  } finally {
    await bouncer.close();
  }
} finally {
  await pg.close();
  Deno.removeSync(work, { recursive: true });
}
