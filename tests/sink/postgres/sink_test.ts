/**
 * The PostgreSQL row sink (lib/sink/postgres/sink.ts) against a real server, through its
 * interface only: it opens lazily (schema ready, device settled, events reported), writes
 * batches (a CHECK constraint bisected, counts, equal rows not rewritten), retries a killed
 * backend on a new session, and reads this device's rows back for `--verify`.
 */

import assert from "node:assert/strict";
import { rowToJson } from "../../../lib/sink/payload.ts";
import { items, keysOf } from "../../../support/rows.ts";
import type { SinkContext, SinkEvent } from "../../../lib/sink/sink.ts";
import { postgresSink } from "../../../lib/sink/postgres/sink.ts";
import type { PsqlConnection } from "../../../lib/sink/postgres/psql.ts";
import type { Connector } from "../../../lib/target/connect.ts";
import {
  hasPostgres,
  type PgServer,
  startPostgres,
  TEST_DATABASE,
  TEST_USER,
} from "../../../support/postgres.ts";

const NO_SERVER = !hasPostgres();
const DEVICE_ID = "0f0e0d0c-0b0a-4909-8807-060504030201";
const CONFIG = {
  table: "device_test",
  deviceName: "writer-test",
  deviceType: "t",
  giveUpAfterSeconds: 30,
  connectTimeoutSeconds: 10,
};

function connector(pg: PgServer): Connector {
  const connection: PsqlConnection = {
    args: ["-h", pg.socketDir, "-p", String(pg.port), "-U", TEST_USER, "-d", TEST_DATABASE],
    env: {},
    display: `${pg.socketDir}:${pg.port}/${TEST_DATABASE}`,
  };
  return {
    display: connection.display,
    embedded: false,
    id: "test",
    open: () => Promise.resolve(connection),
    close: () => Promise.resolve(),
  };
}

function context(): SinkContext & { events: SinkEvent[] } {
  const events: SinkEvent[] = [];
  return {
    events,
    emit: (e) => events.push(e),
    counters: { retries: 0 },
    signal: new AbortController().signal,
    now: Date.now,
  };
}

Deno.test({
  name: "postgresSink against PostgreSQL: opened once, bisect on a CHECK constraint, counts, " +
    "no rewrite of equal rows, this device's rows read back",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const ctx = context();
    const sink = postgresSink(connector(pg), { config: CONFIG, deviceId: DEVICE_ID })(ctx);
    try {
      assert.equal(sink.opened, false, "nothing touched before the first use");
      const [opened, again] = await Promise.all([sink.open(), sink.open()]);
      assert.deepEqual(opened, again);
      assert.deepEqual(opened.device, { id: DEVICE_ID, name: "writer-test", type: "t" });
      assert.deepEqual(ctx.events.map((e) => e.event), ["schema", "device"], "opened once");
      assert.deepEqual(ctx.events[0], { event: "schema", table: "device_test", rekeyed: 0 });

      await pg.psql(
        "alter table device_test add constraint no_poison check (folder_name !~ '^poison')",
      );
      const keys = keysOf(40);
      keys[3] = "poison-a";
      keys[31] = "poison-b";
      const first = await sink.write(items(keys), "batch_1");
      for (const o of first.outcomes) {
        assert.equal(o.ok, !o.item.row.folder_key.startsWith("poison"), o.item.row.folder_key);
      }
      const poisoned = first.outcomes.find((o) => o.item.row.folder_key === "poison-a")!;
      assert.match(poisoned.error!, /23514.*no_poison/);
      assert.equal(first.inserted, 38);
      assert.equal((await pg.psql("select count(*) from device_test")).trim(), "38");

      const good = keys.filter((k) => !k.startsWith("poison"));
      const unchanged = await sink.write(items(good), "batch_2");
      assert.deepEqual([unchanged.inserted, unchanged.updated], [0, 0]);
      assert.equal(
        (await pg.psql("select count(*) from device_test where upload_batch = 'batch_2'")).trim(),
        "0",
      );
      const changed = items(good.slice(0, 3));
      for (const c of changed) {
        c.row.metadata = { content_hash: "new" };
        c.json = rowToJson(c.row); // the JSON text is what travels
      }
      const third = await sink.write(changed, "batch_3");
      assert.deepEqual([third.inserted, third.updated], [0, 3]);

      const read: [string, string | null][] = [];
      const rows = await sink.readRemote(
        (chunk) => read.push(...chunk),
        new AbortController().signal,
      );
      assert.equal(rows, 38);
      assert.deepEqual(
        read.find(([key]) => key === good[0]),
        [good[0], "new"],
      );
      const other = crypto.randomUUID();
      await pg.psql(`insert into devices (id) values ('${other}')`);
      await pg.psql(
        `insert into device_test (device_id, folder_key, folder_name) ` +
          `values ('${other}', '${good[1]}', '${good[1]}')`,
      );
      assert.deepEqual(
        await sink.otherDevices([good[0], good[1], "nowhere"]),
        new Map([[other, 1]]),
        "rows of these folders under other ids, this device's left out",
      );
    } finally {
      await sink.close();
      await pg.close();
    }
  },
});

Deno.test({
  name: "postgresSink against PostgreSQL: a killed backend is retried on a new session",
  ignore: NO_SERVER,
  async fn() {
    const pg = await startPostgres();
    const ctx = context();
    const sink = postgresSink(connector(pg), {
      config: CONFIG,
      deviceId: DEVICE_ID,
      backoff: { initialMs: 10, maxMs: 50, jitter: 0 },
    })(ctx);
    try {
      await sink.open();
      // Every session the pool holds is terminated behind its back.
      await pg.psql(
        "select pg_terminate_backend(pid) from pg_stat_activity " +
          "where application_name = 'folder-uploader'",
      );
      const result = await sink.write(items(keysOf(20)), "b1");
      assert.ok(result.outcomes.every((o) => o.ok));
      assert.equal(result.inserted, 20);
      assert.ok(ctx.counters.retries >= 1, "the lost session was not noticed");
      assert.ok(ctx.events.some((e) => e.event === "retry" && e.subject === "b1"));
      assert.equal((await pg.psql("select count(*) from device_test")).trim(), "20");
    } finally {
      await sink.close();
      await pg.close();
    }
  },
});
