/**
 * Object storage (`--images-to`) through its entry point (lib/objects/storage.ts): the
 * client against a real S3-compatible server (s3rver, which verifies SigV4 signatures)
 * over real HTTP: every image lands byte-identical under keys full of specials, a second
 * put puts nothing, a changed image replaces its object, 503/429/dropped connections injected by a proxy are
 * retried, a 4xx fails the folder with the server's words, a store that stays down ends
 * as `unreachable`, wrong credentials are a configuration error, and no credential ever
 * shows in an error. The pure parts are in keys_test.ts, replies_test.ts, env_test.ts and
 * folder_test.ts; the client's retries with a fake fetch and clock in store_test.ts.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { AwsV4Signer } from "aws4fetch";
import { exitCodeFor, UploadError } from "../../lib/core/errors.ts";
import {
  encodeKeyPath,
  type FolderFiles,
  isSameObject,
  ObjectStore,
  type ObjectStoreOptions,
  putFolderObjects,
  type RetryEvent,
} from "../../lib/objects/storage.ts";
import { type S3Server, startS3Server } from "../../support/s3.ts";
import { type FaultProxy, s3ErrorReply, startFaultProxy } from "../../support/fault_http_proxy.ts";

const ENCODER = new TextEncoder();

/** File names that exercise SigV4's canonical URI encoding. */
const SPECIAL_NAMES = [
  "2025-06-02 16:42:55.jpg",
  `it's "quoted".png`,
  "hash#1 ?query %41 +plus &amp=;,.JPG",
  "Größe ü €ß 日本 😀.jpeg",
  "(paren)!*~$@.gif",
];

function md5(bytes: Uint8Array): string {
  return createHash("md5").update(bytes).digest("hex");
}

function randomBytes(size: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(out.subarray(i, i + 65536));
  return out;
}

/** Writes `files` into a new folder `key` below `base`; returns the folder as putFolderObjects takes it. */
function makeFolder(base: string, key: string, files: Record<string, Uint8Array>): FolderFiles {
  const path = join(base, ...key.split("/"));
  Deno.mkdirSync(path, { recursive: true });
  for (const [name, bytes] of Object.entries(files)) Deno.writeFileSync(join(path, name), bytes);
  return snapshotOf(path, key);
}

function snapshotOf(path: string, key: string): FolderFiles {
  const files = [...Deno.readDirSync(path)]
    .filter((e) => e.isFile)
    .map((e) => {
      const st = Deno.statSync(join(path, e.name));
      return { name: e.name, size: st.size, mtimeMs: st.mtime?.getTime() ?? 0 };
    });
  return { path, key, files };
}

function storeFor(
  s3: { endpoint: string; bucket: string; accessKeyId: string; secretAccessKey: string },
  prefix: string,
  options: ObjectStoreOptions = {},
  overrides: { secretAccessKey?: string; accessKeyId?: string; endpoint?: string } = {},
): ObjectStore {
  return new ObjectStore({
    bucket: s3.bucket,
    prefix,
    endpoint: overrides.endpoint ?? s3.endpoint,
    region: "eu-central-1",
    accessKeyId: overrides.accessKeyId ?? s3.accessKeyId,
    secretAccessKey: overrides.secretAccessKey ?? s3.secretAccessKey,
  }, { backoff: { initialMs: 50, maxMs: 500 }, ...options });
}

async function rejects(promise: Promise<unknown>): Promise<UploadError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof UploadError, `not an UploadError: ${error}`);
    return error;
  }
  assert.fail("expected a rejection");
}

/** Every thrown error's text must be free of every credential. */
function assertNoSecret(error: UploadError, secrets: string[]): void {
  const text = `${error.message}\n${error.hint ?? ""}\n${error.subject ?? ""}\n${
    error.stack ?? ""
  }`;
  for (const s of secrets) assert.ok(!text.includes(s), `a credential leaked into: ${text}`);
}

// ---------------------------------------------------------------- against a real server

interface Env {
  s3: S3Server;
  base: string;
  secrets: string[];
}

async function withServer(fn: (env: Env) => Promise<void>): Promise<void> {
  const s3 = await startS3Server({ secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" });
  const base = await Deno.makeTempDir({ prefix: "storage-test-" });
  try {
    await fn({ s3, base, secrets: [s3.secretAccessKey, s3.accessKeyId] });
  } finally {
    await s3.close();
    await Deno.remove(base, { recursive: true });
  }
}

async function withProxy(s3: S3Server, fn: (proxy: FaultProxy) => Promise<void>): Promise<void> {
  const proxy = await startFaultProxy({ hostname: s3.host, port: s3.port });
  try {
    await fn(proxy);
  } finally {
    await proxy.close();
  }
}

Deno.test("putFolderObjects: every image and report lands byte-identical under keys full of specials", async () => {
  await withServer(async ({ s3, base }) => {
    const files: Record<string, Uint8Array> = {
      "stats.json": ENCODER.encode('{"result":"ok"}'),
      "report.pdf": randomBytes(1000),
      "big.PNG": randomBytes(3 * 1024 * 1024 + 17),
      "empty.bmp": new Uint8Array(0),
    };
    SPECIAL_NAMES.forEach((name, i) => (files[name] = randomBytes(1000 * (i + 1))));
    const folder = makeFolder(base, "2025/Batch 54 'ü' #1 %", files);
    const store = storeFor(s3, "raw images/lab #1", {
      concurrency: 4,
      maxBytesInFlight: 1024 * 1024,
    });
    const result = await putFolderObjects(store, folder, { deviceId: "dev-1" });
    const images = Object.keys(files).filter((n) => /\.(jpe?g|png|gif|bmp)$/i.test(n)).sort();
    // The images in name order, then the report (stored with them since reports are).
    assert.deepEqual(result.objects.map((o) => o.name), [...images, "report.pdf"]);
    assert.equal(result.objects.at(-1)!.kind, "report");
    for (const object of result.objects) {
      assert.equal(object.key, `raw images/lab #1/dev-1/2025/Batch 54 'ü' #1 %/${object.name}`);
      assert.equal(object.put, true);
      const stored = await store.get(object.key);
      assert.equal(stored.length, files[object.name].length, object.name);
      assert.equal(md5(stored), md5(files[object.name]), object.name);
      assert.equal(object.md5, md5(files[object.name]));
      assert.equal(object.size, files[object.name].length);
      const head = await store.head(object.key);
      assert.ok(head && isSameObject(head, object.size, object.md5), object.name);
    }
    assert.equal(
      await store.head("raw images/lab #1/dev-1/2025/Batch 54 'ü' #1 %/stats.json"),
      null,
    );

    // The same with the payload hashed into the signature.
    const signed = storeFor(s3, "signed", { payloadSigning: "sha256" });
    const again = await putFolderObjects(signed, folder, { deviceId: "dev-1" });
    for (const object of again.objects) {
      assert.equal(md5(await signed.get(object.key)), object.md5, object.name);
    }
  });
});

Deno.test("the server checks signatures over the canonical URI: a request signed for another key is refused", async () => {
  await withServer(async ({ s3 }) => {
    const url = (key: string) => `${s3.endpoint}/${s3.bucket}/${encodeKeyPath(key)}`;
    const signer = new AwsV4Signer({
      method: "PUT",
      url: url("a b.jpg"),
      body: new Uint8Array(1),
      accessKeyId: s3.accessKeyId,
      secretAccessKey: s3.secretAccessKey,
      service: "s3",
      region: "eu-central-1",
    });
    const signed = await signer.sign();
    const ok = await fetch(signed.url, {
      method: "PUT",
      headers: signed.headers,
      body: new Uint8Array(1),
    });
    await ok.body?.cancel();
    assert.equal(ok.status, 200);
    const forged = await fetch(url("a+b.jpg"), {
      method: "PUT",
      headers: signed.headers,
      body: new Uint8Array(1),
    });
    const text = await forged.text();
    assert.equal(forged.status, 403);
    assert.match(text, /SignatureDoesNotMatch/);
  });
});

Deno.test("a second put of the same folder puts nothing (HEAD + ETag, or the tracker's isStored)", async () => {
  await withServer(async ({ s3, base }) => {
    const folder = makeFolder(base, "Batch 1", {
      "a.jpg": randomBytes(5000),
      [SPECIAL_NAMES[1]]: randomBytes(7000),
      [SPECIAL_NAMES[3]]: randomBytes(9000),
    });
    await withProxy(s3, async (proxy) => {
      const store = storeFor(s3, "p", {}, { endpoint: proxy.endpoint });
      const first = await putFolderObjects(store, folder, { deviceId: "d" });
      assert.ok(first.objects.every((o) => o.put));
      assert.equal(proxy.log.filter((r) => r.method === "PUT").length, 3);

      const before = proxy.log.length;
      const second = await putFolderObjects(store, folder, { deviceId: "d" });
      assert.ok(second.objects.every((o) => !o.put), "nothing put again");
      const requests = proxy.log.slice(before);
      assert.deepEqual(requests.map((r) => r.method), ["HEAD", "HEAD", "HEAD"]);

      const known = new Map(first.objects.map((o) => [o.name, `${o.size}:${o.md5}`]));
      const mark = proxy.log.length;
      const third = await putFolderObjects(store, folder, {
        deviceId: "d",
        isStored: (name, size, sum) => known.get(name) === `${size}:${sum}`,
      });
      assert.ok(third.objects.every((o) => !o.put));
      assert.equal(proxy.log.length, mark, "the tracker's word needs no request");
    });
  });
});

Deno.test("a changed image (same name, new bytes) replaces its object", async () => {
  await withServer(async ({ s3, base }) => {
    const name = SPECIAL_NAMES[2];
    const folder = makeFolder(base, "Batch 2", {
      [name]: randomBytes(4000),
      "b.gif": randomBytes(10),
    });
    const store = storeFor(s3, "");
    const first = await putFolderObjects(store, folder, { deviceId: "d" });
    const changed = randomBytes(4000); // same size: only the MD5 tells
    Deno.writeFileSync(join(folder.path, name), changed);
    const stale = new Map(first.objects.map((o) => [o.name, o.md5]));
    const second = await putFolderObjects(store, snapshotOf(folder.path, folder.key), {
      deviceId: "d",
    });
    const byName = new Map(second.objects.map((o) => [o.name, o]));
    assert.equal(byName.get(name)!.put, true);
    assert.equal(byName.get("b.gif")!.put, false);
    assert.notEqual(byName.get(name)!.md5, stale.get(name));
    assert.equal(md5(await store.get(byName.get(name)!.key)), md5(changed));

    // With the tracker's callback, which only knows the old MD5, the new bytes go up too.
    Deno.writeFileSync(join(folder.path, name), randomBytes(4001));
    const third = await putFolderObjects(store, snapshotOf(folder.path, folder.key), {
      deviceId: "d",
      isStored: (n, _size, sum) => stale.get(n) === sum,
    });
    const obj = third.objects.find((o) => o.name === name)!;
    assert.equal(obj.put, true);
    assert.equal(md5(await store.get(obj.key)), obj.md5);
  });
});

Deno.test("503 with Retry-After, 429 SlowDown and dropped connections are retried and charge nothing", async () => {
  await withServer(async ({ s3, base, secrets }) => {
    const folder = makeFolder(base, "Batch 3", {
      "a.jpg": randomBytes(2000),
      "b.jpg": randomBytes(3000),
      [SPECIAL_NAMES[0]]: randomBytes(100),
    });
    await withProxy(s3, async (proxy) => {
      const retries: RetryEvent[] = [];
      const store = storeFor(s3, "p", {
        concurrency: 2,
        onRetry: (event) => retries.push(event),
        giveUpAfterMs: 20_000,
      }, { endpoint: proxy.endpoint });
      const isPut = (r: { method: string }) => r.method === "PUT";
      proxy.inject({
        match: isPut,
        times: 2,
        action: {
          kind: "respond",
          ...s3ErrorReply(503, "SlowDown", "Please reduce your request rate.", {
            "retry-after": "1",
          }),
        },
      });
      proxy.inject({
        match: isPut,
        times: 1,
        action: { kind: "respond", ...s3ErrorReply(429, "SlowDown", "Too many requests") },
      });
      proxy.inject({ match: isPut, times: 1, action: { kind: "drop" } });
      const started = Date.now();
      const result = await putFolderObjects(store, folder, { deviceId: "d" });
      assert.ok(Date.now() - started >= 1000, "Retry-After: 1 was honoured");
      assert.ok(result.objects.every((o) => o.put));
      for (const object of result.objects) {
        assert.equal(md5(await store.get(object.key)), object.md5);
      }
      const outcomes = proxy.log.filter(isPut).map((r) => r.outcome);
      assert.deepEqual(outcomes.filter((o) => o !== "forward"), [
        "respond 503",
        "respond 503",
        "respond 429",
        "drop",
      ]);
      assert.equal(outcomes.filter((o) => o === "forward").length, 3);
      assert.equal(retries.length, 4);
      assert.ok(
        retries.some((r) => /HTTP 503 SlowDown: Please reduce your request rate/.test(r.reason)),
      );
      assert.ok(retries.some((r) => /HTTP 429 SlowDown/.test(r.reason)));
      assert.ok(retries.some((r) => /connection/.test(r.reason)), JSON.stringify(retries));
      assert.ok(retries.filter((r) => r.reason.includes("503")).every((r) => r.waitMs >= 1000));
      for (const r of retries) assert.ok(!secrets.some((s) => r.reason.includes(s)));
    });
  });
});

Deno.test("a 4xx fails the folder naming the file, the status and the server's message", async () => {
  await withServer(async ({ s3, base, secrets }) => {
    const folder = makeFolder(base, "Batch 4", {
      "small.jpg": randomBytes(100),
      "huge one.jpg": randomBytes(300_000),
    });
    await withProxy(s3, async (proxy) => {
      const store = storeFor(s3, "p", {}, { endpoint: proxy.endpoint });
      proxy.inject({
        match: (r) => r.method === "PUT" && r.contentLength > 200_000,
        times: Infinity,
        action: {
          kind: "respond",
          ...s3ErrorReply(413, "EntityTooLarge", "The object exceeded the maximum allowed size"),
        },
      });
      const error = await rejects(putFolderObjects(store, folder, { deviceId: "d" }));
      assert.equal(error.kind, "folder");
      assert.equal(exitCodeFor(error), 1);
      assert.match(error.message, /"huge one\.jpg"/);
      assert.match(
        error.message,
        /HTTP 413 EntityTooLarge: The object exceeded the maximum allowed size/,
      );
      assert.ok(error.message.includes(folder.path));
      assert.equal(error.subject, join(folder.path, "huge one.jpg"));
      assert.equal(proxy.log.filter((r) => r.outcome === "respond 413").length, 1, "not retried");
      assertNoSecret(error, secrets);
    });
  });
});

Deno.test("an image that vanished or cannot be read fails the folder naming the file", async () => {
  await withServer(async ({ s3, base }) => {
    const folder = makeFolder(base, "Batch 5", {
      "here.jpg": randomBytes(10),
      "gone.jpg": randomBytes(10),
    });
    Deno.removeSync(join(folder.path, "gone.jpg"));
    const store = storeFor(s3, "p");
    const error = await rejects(putFolderObjects(store, folder, { deviceId: "d" }));
    assert.equal(error.kind, "folder");
    assert.match(
      error.message,
      /Cannot store image "gone\.jpg" of .*Batch 5: cannot read it: it vanished/,
    );
    assert.equal(error.subject, join(folder.path, "gone.jpg"));
  });
});

Deno.test("wrong credentials and a missing bucket are configuration errors (exit 2) that leak nothing", async () => {
  await withServer(async ({ s3, base, secrets }) => {
    const folder = makeFolder(base, "Batch 6", { "a.jpg": randomBytes(10) });
    const wrongSecret = "WRONG/secret+value-123456";
    const cases: [ObjectStore, RegExp, RegExp][] = [
      [
        storeFor(s3, "p", {}, { secretAccessKey: wrongSecret }),
        /HTTP 403 SignatureDoesNotMatch/,
        /AWS_SECRET_ACCESS_KEY and AWS_REGION/,
      ],
      [
        storeFor(s3, "p", {}, { accessKeyId: "AKIAUNKNOWNKEY000" }),
        /HTTP 403 InvalidAccessKeyId/,
        /AWS_ACCESS_KEY_ID/,
      ],
      [
        storeFor({ ...s3, bucket: "no-such-bucket" }, "p"),
        /HTTP 404 NoSuchBucket/,
        /Create the bucket no-such-bucket/,
      ],
    ];
    for (const [store, message, hint] of cases) {
      for (const headBeforePut of [true, false]) {
        const error = await rejects(
          putFolderObjects(store, folder, { deviceId: "d", headBeforePut }),
        );
        assert.equal(error.kind, "config", error.message);
        assert.equal(exitCodeFor(error), 2);
        assert.match(error.message, message);
        assert.match(error.hint ?? "", hint);
        assertNoSecret(error, [...secrets, wrongSecret, "AKIAUNKNOWNKEY000"]);
      }
      const check = await rejects(store.checkAccess());
      assert.equal(check.kind, "config");
      assertNoSecret(check, [...secrets, wrongSecret, "AKIAUNKNOWNKEY000"]);
    }
    await storeFor(s3, "p").checkAccess();
  });
});

Deno.test("a store that stays down (connection refused) past the deadline ends as unreachable", async () => {
  await withServer(async ({ s3, base, secrets }) => {
    const folder = makeFolder(base, "Batch 7", {
      "a.jpg": randomBytes(10),
      "b.jpg": randomBytes(10),
    });
    await s3.stop();
    const store = storeFor(s3, "p", { giveUpAfterMs: 1500 });
    const started = Date.now();
    const error = await rejects(putFolderObjects(store, folder, { deviceId: "d" }));
    const elapsed = Date.now() - started;
    assert.equal(error.kind, "unreachable", error.message);
    assert.equal(exitCodeFor(error), 3);
    assert.match(error.message, /connection refused/);
    assert.match(error.hint ?? "", /AWS_ENDPOINT_URL/);
    assert.ok(elapsed >= 1000 && elapsed < 10_000, `gave up after ${elapsed} ms`);
    assertNoSecret(error, secrets);

    // Back up within the deadline: the same call succeeds.
    const patient = storeFor(s3, "p", { giveUpAfterMs: 20_000 });
    const putting = putFolderObjects(patient, folder, { deviceId: "d" });
    await new Promise((r) => setTimeout(r, 700));
    await s3.start();
    const result = await putting;
    assert.ok(result.objects.every((o) => o.put));
  });
});

Deno.test("Retry-After past the deadline gives up at once as unreachable", async () => {
  await withServer(async ({ s3, base }) => {
    const folder = makeFolder(base, "Batch 8", { "a.jpg": randomBytes(10) });
    await withProxy(s3, async (proxy) => {
      proxy.inject({
        times: Infinity,
        action: {
          kind: "respond",
          ...s3ErrorReply(503, "SlowDown", "Busy", { "retry-after": "3600" }),
        },
      });
      const store = storeFor(s3, "p", { giveUpAfterMs: 5_000 }, { endpoint: proxy.endpoint });
      const started = Date.now();
      const error = await rejects(
        putFolderObjects(store, folder, { deviceId: "d", headBeforePut: false }),
      );
      assert.equal(error.kind, "unreachable");
      assert.match(error.message, /asked to wait 3600 s/);
      assert.ok(Date.now() - started < 3_000);
    });
  });
});

Deno.test("an aborted signal ends the folder as interrupted", async () => {
  await withServer(async ({ s3, base }) => {
    const folder = makeFolder(base, "Batch 9", {
      "a.jpg": randomBytes(10),
      "b.jpg": randomBytes(10),
    });
    await withProxy(s3, async (proxy) => {
      proxy.inject({
        times: Infinity,
        action: {
          kind: "respond",
          ...s3ErrorReply(503, "SlowDown", "Busy", { "retry-after": "30" }),
        },
      });
      const store = storeFor(s3, "p", { giveUpAfterMs: 60_000 }, { endpoint: proxy.endpoint });
      const aborter = new AbortController();
      setTimeout(() => aborter.abort(), 300);
      const started = Date.now();
      const error = await rejects(
        putFolderObjects(store, folder, { deviceId: "d", signal: aborter.signal }),
      );
      assert.equal(error.kind, "interrupted");
      assert.equal(exitCodeFor(error), 130);
      assert.ok(Date.now() - started < 5_000);
    });
  });
});

Deno.test({
  name: "rclone and this client agree on keys with specials (rclone puts, HEAD finds it)",
  ignore: new Deno.Command("sh", { args: ["-c", "command -v rclone"] }).outputSync().code !== 0,
  fn: async () => {
    await withServer(async ({ s3, base }) => {
      const folder = makeFolder(
        base,
        "rc",
        Object.fromEntries(SPECIAL_NAMES.map((n) => [n, ENCODER.encode(n)])),
      );
      const out = await new Deno.Command("rclone", {
        args: ["copy", folder.path, `s3test:${s3.bucket}/rc-prefix/d/rc`],
        env: s3.rcloneEnv("s3test"),
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const store = storeFor(s3, "rc-prefix");
      const result = await putFolderObjects(store, folder, { deviceId: "d" });
      assert.deepEqual(result.objects.map((o) => o.put), SPECIAL_NAMES.map(() => false));
    });
  },
});
