/**
 * `--images-to`: images go to a real S3-compatible server (s3rver, checking SigV4
 * signatures) before their rows go to a real PostgreSQL, through the uploader as a user
 * runs it. Faults: injected 503s and a 413 through an HTTP proxy, the store stopped mid-run,
 * and a SIGKILL between a batch's objects and its row.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer } from "../../support/postgres.ts";
import { type S3Server, withPgAndS3 } from "../../support/s3.ts";
import { s3ErrorReply, startFaultProxy } from "../../support/fault_http_proxy.ts";
import { writeTree } from "../../support/tree.ts";
import { storeFromEnv } from "../../lib/objects/storage.ts";
import {
  delay,
  describeExit,
  dropSlowInserts,
  runUploader,
  slowInserts,
  startUploader,
  type UploaderExit,
  waitForActiveUpsert,
} from "../../support/run.ts";

const DEVICE = "4f9d2c1a-7b3e-4c5d-8e6f-0a1b2c3d4e5f";

/** Random bytes, the same for the same seed. */
function bytes(seed: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** A tree with awkward names: spaces, quotes, non-ASCII. */
function writeImages(data: string): Map<string, Uint8Array> {
  const images = new Map<string, Uint8Array>();
  const add = (folder: string, name: string, seed: number, size: number) => {
    const content = bytes(seed, size);
    images.set(`${folder}/${name}`, content);
    Deno.mkdirSync(join(data, folder), { recursive: true });
    Deno.writeFileSync(join(data, folder, name), content);
  };
  writeTree(data, {
    "Batch 1 (O'Brien)/stats.json": { json: { result: "PASS" } },
    "Prüfung ü/Lauf 2/stats.json": { json: { result: "" } },
    "Batch3/stats.json": { json: { result: "PASS" } },
    "NoImages/stats.json": { json: { result: "PASS" } },
  });
  add("Batch 1 (O'Brien)", "2025-06-02 16:42:55.jpg", 1, 40_000);
  add("Batch 1 (O'Brien)", 'it\'s a "quote".png', 2, 1_000);
  add("Prüfung ü/Lauf 2", "Bild ä 😀.JPG", 3, 70_000);
  add("Batch3", "a.bmp", 4, 0);
  for (let i = 0; i < 6; i++) add(`Many/F${i}`, `img${i}.gif`, 10 + i, 5_000);
  return images;
}

function rowsWithObjects(pg: PgServer): Promise<Map<string, string[] | null>> {
  return pg.psql(
    "select json_agg(json_build_array(folder_key, image_objects) order by folder_key) " +
      "from device_test",
  ).then((text) => new Map(JSON.parse(text.trim()) as [string, string[] | null][]));
}

function summary(exit: UploaderExit): Record<string, unknown> {
  const s = exit.events.findLast((e) => e.event === "summary");
  assert.ok(s, describeExit(exit));
  return s;
}

function withServers(
  fn: (pg: PgServer, s3: S3Server, dir: string) => Promise<void>,
): Promise<void> {
  return withPgAndS3("images_test_", fn);
}

Deno.test({
  name:
    "images: byte-identical objects under awkward keys, the row points at them, a re-run puts nothing",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServers(async (pg, s3, dir) => {
      const data = join(dir, "data");
      const images = writeImages(data);
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, ...s3.env() };
      const args = [data, "--db-path", db, "--min-age", "0", "--images-to", "s3://images/raw"];

      // A dry run counts what would be put and writes nothing.
      const dry = await runUploader([...args, "--dry-run"], { env });
      assert.equal(dry.code, 0, describeExit(dry));
      assert.equal(summary(dry).objects, images.size);
      const total = [...images.values()].reduce((n, b) => n + b.length, 0);
      assert.equal(summary(dry).object_bytes, total);

      const first = await runUploader(args, { env });
      assert.equal(first.code, 0, describeExit(first));
      assert.equal(summary(first).objects, images.size);
      assert.equal(summary(first).uploaded, 10);
      for (const text of [first.stdout, first.stderr]) {
        assert.ok(!text.includes(s3.secretAccessKey), "the secret was printed");
      }
      for (const file of [db, `${db}-wal`]) {
        let text = "";
        try {
          text = new TextDecoder().decode(Deno.readFileSync(file));
        } catch (error) {
          if (!(error instanceof Deno.errors.NotFound)) throw error;
        }
        assert.ok(!text.includes(s3.secretAccessKey), `the secret is in ${file}`);
      }

      const store = storeFromEnv(s3.env(), "s3://images/raw")!;
      const rows = await rowsWithObjects(pg);
      assert.deepEqual(rows.get("NoImages"), [], "a folder without images has no objects");
      for (const [path, content] of images) {
        const folder = path.slice(0, path.lastIndexOf("/"));
        const name = path.slice(path.lastIndexOf("/") + 1);
        const key = `raw/${DEVICE}/${folder}/${name}`;
        assert.ok(rows.get(folder)?.includes(key), `row ${folder} points at ${key}`);
        assert.deepEqual(await store.get(key), content, key);
      }

      // Nothing changed: nothing is read, nothing is put.
      const again = await runUploader(args, { env });
      assert.equal(again.code, 0, describeExit(again));
      assert.equal(summary(again).objects, 0);
      assert.equal(summary(again).uploaded, 0);

      // One image rewritten at the same size: only its object is replaced; the others of
      // the folder are known to the tracker and not put again.
      const changed = bytes(99, 40_000);
      Deno.writeFileSync(join(data, "Batch 1 (O'Brien)", "2025-06-02 16:42:55.jpg"), changed);
      const third = await runUploader(args, { env });
      assert.equal(third.code, 0, describeExit(third));
      assert.equal(summary(third).objects, 1);
      assert.equal(summary(third).objects_skipped, 1);
      assert.deepEqual(
        await store.get(`raw/${DEVICE}/Batch 1 (O'Brien)/2025-06-02 16:42:55.jpg`),
        changed,
      );
    });
  },
});

Deno.test({
  name: "images: 503s are retried and charge nothing; a 413 fails its folder alone",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServers(async (pg, s3, dir) => {
      const proxy = await startFaultProxy({ hostname: s3.host, port: s3.port });
      try {
        const data = join(dir, "data");
        const images = writeImages(data);
        const db = join(dir, "t.db");
        const env = {
          SUPABASE_DB_URL: pg.url,
          DEVICE_ID: DEVICE,
          ...s3.env(),
          AWS_ENDPOINT_URL: proxy.endpoint,
        };
        proxy.inject({
          match: (r) => r.method === "PUT",
          times: 3,
          action: {
            kind: "respond",
            ...s3ErrorReply(503, "SlowDown", "Please reduce your request rate.", {
              "retry-after": "1",
            }),
          },
        });
        proxy.inject({
          match: (r) => r.method === "PUT" && r.target.includes("img3.gif"),
          times: Infinity,
          action: {
            kind: "respond",
            ...s3ErrorReply(413, "EntityTooLarge", "Your proposed upload exceeds the maximum."),
          },
        });
        const exit = await runUploader(
          [data, "--db-path", db, "--min-age", "0", "--images-to", "s3://images/raw"],
          { env },
        );
        assert.equal(exit.code, 1, describeExit(exit));
        const s = summary(exit);
        assert.equal(s.failed, 1);
        assert.equal(s.uploaded, 9);
        assert.ok(Number(s.retries) >= 3, `retries ${s.retries}`);
        const failed = exit.events.filter((e) => e.event === "folder_failed");
        assert.deepEqual(failed.map((e) => e.key), ["Many/F3"]);
        assert.match(String(failed[0].error), /413/);
        assert.match(String(failed[0].error), /EntityTooLarge|maximum/);
        const rows = await rowsWithObjects(pg);
        assert.ok(!rows.has("Many/F3"), "no row for a folder whose image was refused");
        assert.equal(rows.size, 9);
        assert.equal(images.size, 10);
      } finally {
        await proxy.close();
      }
    });
  },
});

Deno.test({
  name: "images: the store down mid-run ends with exit 3, folders pending; a later run completes",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServers(async (pg, s3, dir) => {
      const data = join(dir, "data");
      writeImages(data);
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, ...s3.env() };
      const args = [data, "--db-path", db, "--min-age", "0", "--images-to", "s3://images/raw"];
      await s3.stop();
      const down = await runUploader([...args, "--give-up-after", "2"], { env });
      assert.equal(down.code, 3, describeExit(down));
      assert.match(down.stderr, /unreachable/i);
      assert.equal(Number(await pg.psql("select count(*) from device_test")), 0);
      await s3.start();
      const up = await runUploader(args, { env });
      assert.equal(up.code, 0, describeExit(up));
      assert.equal(summary(up).uploaded, 10);
    });
  },
});

Deno.test({
  name: "images: SIGKILL after a batch's objects, before its row: the re-run puts nothing again",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await withServers(async (pg, s3, dir) => {
      const data = join(dir, "data");
      const images = writeImages(data);
      const db = join(dir, "t.db");
      const env = { SUPABASE_DB_URL: pg.url, DEVICE_ID: DEVICE, ...s3.env() };
      const args = [data, "--db-path", db, "--min-age", "0", "--images-to", "s3://images/raw"];
      await slowInserts(pg, 30);
      const p = startUploader(args, { env });
      await waitForActiveUpsert(pg, 60_000); // the objects are stored, the row is in flight
      await p.kill();
      // As after a power cut: the statement in flight never commits.
      await pg.psql(
        "select pg_terminate_backend(pid) from pg_stat_activity " +
          "where application_name = 'folder-uploader'",
      );
      await dropSlowInserts(pg);
      await delay(100);
      assert.equal(Number(await pg.psql("select count(*) from device_test")), 0);
      const again = await runUploader(args, { env });
      assert.equal(again.code, 0, describeExit(again));
      const s = summary(again);
      assert.equal(s.objects, 0, "an object stored before the kill was put again");
      assert.equal(s.objects_skipped, images.size);
      assert.equal(s.uploaded, 10);
    });
  },
});
