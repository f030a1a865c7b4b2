/**
 * Per-device write isolation (`--print-schema --isolate-devices`, lib/fleet/isolation.ts)
 * against a real server, each device's role connecting through pgbouncer in transaction
 * mode as a lab's devices would:
 *
 * - each role uploads its own device's folders (rows and health record land);
 * - device A's role is refused B's rows, by the uploader (exit 2, 42501, the error naming
 *   the role and device B) and by hand (an insert, an upsert on B's key, moving its own
 *   row to B: 42501 naming B; an update of B's rows finds none), and B's rows stay as
 *   they were;
 * - a role assigned two devices writes both.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { describeDeviceRefusal } from "../../lib/fleet/isolation.ts";
import { PsqlSession, type StatementReply } from "../../lib/sink/postgres/psql.ts";
import { describePermissionError, printSchemaSql } from "../../lib/sink/postgres/schema.ts";
import { connectionFromUrl } from "../../lib/target/target.ts";
import { hasPgbouncer, startPgbouncer } from "../../support/pgbouncer.ts";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_PASSWORD,
} from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import { describeExit, runUploader, withTempDir } from "../../support/run.ts";

const A = "a0000000-0000-4000-8000-00000000000a";
const B = "b0000000-0000-4000-8000-00000000000b";
const C = "c0000000-0000-4000-8000-00000000000c";
const D = "d0000000-0000-4000-8000-00000000000d";

const ROLES = { lab_a: "a-secret", lab_b: "b-secret", lab_cd: "cd-secret" };

Deno.test("describeDeviceRefusal: the server's refusal becomes a configuration error with the fix", () => {
  const reply = {
    sqlstate: "42501",
    message: `Row-level security: role lab_a may not write rows of device ${B}; its devices ` +
      `in device_roles: ${A}, ${C}`,
  };
  const error = describeDeviceRefusal(reply, { targetDisplay: "db:5432/postgres" })!;
  assert.equal(error.kind, "config");
  assert.equal(error.sqlstate, "42501");
  assert.match(error.message, new RegExp(`^Role lab_a may not write the rows of device ${B}`));
  assert.match(error.message, new RegExp(`device_roles assigns it only ${A}, ${C}`));
  assert.match(error.hint!, new RegExp(`values \\('lab_a', '${B}'\\)`));
  assert.match(error.hint!, /DEVICE_ID/);
  // describePermissionError hands such a refusal to it, and others not.
  assert.equal(
    describePermissionError(reply, { table: "device_test", targetDisplay: "t" }).message,
    error.message.replace("db:5432/postgres", "t"),
  );
  assert.equal(
    describeDeviceRefusal({ sqlstate: "42501", message: "permission denied for table x" }, {
      targetDisplay: "t",
    }),
    undefined,
  );
  const none = describeDeviceRefusal({
    ...reply,
    message: reply.message.replace(`${A}, ${C}`, "none"),
  }, { targetDisplay: "t" })!;
  assert.match(none.message, /assigns it no device/);
});

Deno.test("printSchemaSql --isolate-devices: the mapping, the refusal and two policies per table", () => {
  const sql = printSchemaSql({ table: "lab.device_test", role: "uploader", isolateDevices: true });
  assert.match(sql, /^-- 4\. Per-device write isolation/m);
  assert.match(sql, /create table "lab"\."device_roles" \(/);
  for (const table of ['"lab"."device_test"', '"lab"."devices"', '"lab"."device_health"']) {
    assert.ok(sql.includes(`alter table ${table} enable row level security;`), table);
    assert.ok(sql.includes(`create policy "device_isolation" on ${table} as permissive`), table);
    assert.ok(sql.includes(`create policy "device_isolation_guard" on ${table} as restrictive`));
  }
  assert.doesNotMatch(printSchemaSql({ table: "device_test" }), /device_roles/);
});

/** Runs one statement as `url`'s role on a session of its own. */
async function runAs(url: string, sql: string): Promise<StatementReply> {
  const session = await PsqlSession.start(connectionFromUrl(url));
  try {
    return await session.run(sql);
  } finally {
    await session.close();
  }
}

/** The rows of `device` as one text, to see that nothing touched them. */
async function rowsOf(pg: PgServer, device: string): Promise<string> {
  return await pg.psql(
    `select count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' order by folder_key)), '')
     from device_test t where device_id = '${device}'`,
  );
}

async function countOf(pg: PgServer, sql: string): Promise<number> {
  return Number((await pg.psql(sql)).trim());
}

Deno.test({
  name: "per-device isolation through pgbouncer: a role writes only its assigned devices",
  ignore: !hasPostgres() || !hasPgbouncer(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const pg = await startPostgres();
    try {
      const sql = printSchemaSql({ table: "device_test", role: "uploader", isolateDevices: true });
      await pg.psql("create role uploader nologin");
      await pg.psql(sql);
      await pg.psql(sql); // running it again is harmless
      for (const [role, password] of Object.entries(ROLES)) {
        await pg.psql(`create role ${role} login password '${password}' in role uploader`);
      }
      await pg.psql(
        `insert into device_roles (role_name, device_id) values
         ('lab_a', '${A}'), ('lab_b', '${B}'), ('lab_cd', '${C}'), ('lab_cd', '${D}')`,
      );
      const bouncer = await startPgbouncer(pg, {
        poolMode: "transaction",
        poolSize: 2,
        users: { tester: TEST_PASSWORD, ...ROLES },
      });
      try {
        await withTempDir("isolation_", async (dir) => {
          const upload = (role: keyof typeof ROLES, device: string, name: string) => {
            const data = join(dir, name);
            return runUploader(
              [data, "--db-path", join(dir, `${name}.db`), "--min-age", "0", "--no-markers"],
              { env: { SUPABASE_DB_URL: bouncer.url(role, ROLES[role]), DEVICE_ID: device } },
            );
          };
          const trees: Record<string, number> = {};
          for (const [name, seed] of [["a", 1], ["b", 2], ["b2", 3], ["c", 4], ["d", 5]] as const) {
            trees[name] = generateTree(join(dir, name), { folders: 30, seed }).units;
          }

          await t.step("each role uploads its own device's folders", async () => {
            for (const [role, device, name] of [["lab_a", A, "a"], ["lab_b", B, "b"]] as const) {
              const run = await upload(role, device, name);
              assert.equal(run.code, 0, describeExit(run));
              assert.deepEqual(run.events.filter((e) => e.event === "warning"), []);
              const rows = `select count(*) from device_test where device_id = '${device}'`;
              assert.equal(await countOf(pg, rows), trees[name]);
              const health = `select count(*) from device_health where device_id = '${device}' ` +
                `and outcome = 'completed' and uploaded = ${trees[name]}`;
              assert.equal(await countOf(pg, health), 1, `health of ${device}`);
            }
          });

          await t.step("A's role is refused B's rows: 42501 naming the device", async () => {
            const before = await rowsOf(pg, B);
            const healthBefore = await pg.psql(
              `select * from device_health where device_id = '${B}'`,
            );
            const run = await upload("lab_a", B, "b2");
            assert.equal(run.code, 2, describeExit(run));
            const summary = run.events.find((e) => e.event === "summary")!;
            assert.equal(summary.sqlstate, "42501");
            assert.equal(summary.error_kind, "config");
            assert.match(
              String(summary.error),
              new RegExp(
                `^Role lab_a may not write the rows of device ${B} .*: device_roles ` +
                  `assigns it only ${A} \\(42501: Row-level security: role lab_a may not write`,
              ),
            );
            assert.match(String(summary.hint), new RegExp(`values \\('lab_a', '${B}'\\)`));
            // The health report is refused alike; the error above already says why.
            assert.deepEqual(run.events.filter((e) => e.event === "warning"), []);
            assert.equal(await rowsOf(pg, B), before, "B's rows untouched");
            assert.equal(
              await pg.psql(`select * from device_health where device_id = '${B}'`),
              healthBefore,
              "B's health untouched",
            );

            const url = bouncer.url("lab_a", ROLES.lab_a);
            const refusals = [
              `insert into device_test (device_id, folder_key, folder_name) values ('${B}', 'x', 'x')`,
              `insert into device_test (device_id, folder_key, folder_name) values ('${B}', 'y', 'y')
               on conflict do nothing`,
              `update device_test set device_id = '${B}' where device_id = '${A}'`,
              `insert into device_health (device_id) values ('${B}')
               on conflict (device_id) do update set outcome = 'forged'`,
              `insert into devices (id, name) values ('${B}', 'forged')
               on conflict (id) do update set name = 'forged'`,
            ];
            for (const statement of refusals) {
              const reply = await runAs(url, statement);
              assert.ok(!reply.ok, statement);
              assert.equal(reply.sqlstate, "42501", statement);
              assert.match(
                reply.message,
                new RegExp(`role lab_a may not write rows of device ${B}`),
              );
            }
            // An upsert on the key of one of B's existing rows is refused before it looks.
            const key = (await pg.psql(
              `select folder_key from device_test where device_id = '${B}' order by 1 limit 1`,
            )).trim();
            const upsert = await runAs(
              url,
              `insert into device_test (device_id, folder_key, folder_name) values ('${B}', '${key}', 'x')
               on conflict (device_id, folder_key) do update set folder_name = 'overwritten'`,
            );
            assert.equal(upsert.ok ? "ok" : upsert.sqlstate, "42501");
            // B's rows are not even visible to A's role: an update finds none.
            const update = await runAs(
              url,
              `update device_test set folder_name = 'overwritten' where device_id = '${B}'`,
            );
            assert.ok(update.ok && update.rowCount === 0, JSON.stringify(update));
            const seen = await runAs(url, "select count(distinct device_id) from device_test");
            assert.deepEqual(seen.ok && seen.rows, ["1"]);
            assert.equal(await rowsOf(pg, B), before, "B's rows untouched");
          });

          await t.step("a role assigned two devices writes both", async () => {
            for (const [device, name] of [[C, "c"], [D, "d"]] as const) {
              const run = await upload("lab_cd", device, name);
              assert.equal(run.code, 0, describeExit(run));
              const rows = `select count(*) from device_test where device_id = '${device}'`;
              assert.equal(await countOf(pg, rows), trees[name]);
              const health = `select count(*) from device_health where device_id = '${device}'`;
              assert.equal(await countOf(pg, health), 1);
            }
            const reply = await runAs(
              bouncer.url("lab_cd", ROLES.lab_cd),
              `update device_test set device_id = '${A}' where device_id = '${C}'`,
            );
            assert.equal(reply.ok ? "ok" : reply.sqlstate, "42501", "but not a third one");
          });
        });
      } finally {
        await bouncer.close();
      }
    } finally {
      await pg.close();
    }
  },
});
