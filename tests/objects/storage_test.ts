/**
 * Object storage (`--images-to`): the pure parts (destination parsing, keys, SigV4 path
 * encoding, error classification, Retry-After) by tables, and the client against a real
 * S3-compatible server (s3rver, which verifies SigV4 signatures) over real HTTP: every
 * image lands byte-identical under keys full of specials, a second put puts nothing, a
 * changed image replaces its object, 503/429/dropped connections injected by a proxy are
 * retried, a 4xx fails the folder with the server's words, a store that stays down ends
 * as `unreachable`, wrong credentials are a configuration error, and no credential ever
 * shows in an error.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { AwsV4Signer } from "aws4fetch";
import { exitCodeFor, UploadError } from "../../lib/core/errors.ts";
import {
  classifyStorageReply,
  describeNetworkError,
  encodeKeyPath,
  type FolderFiles,
  isSameObject,
  objectKey,
  ObjectStore,
  type ObjectStoreOptions,
  parseEndpoint,
  parseImagesTo,
  parseRetryAfter,
  parseS3Error,
  planFolderObjects,
  putFolderObjects,
  redactSecrets,
  type RetryEvent,
  storeFromEnv,
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

// ---------------------------------------------------------------- pure parts

Deno.test("parseImagesTo: bucket and prefix", () => {
  const cases: [string, { bucket: string; prefix: string }][] = [
    ["s3://lab-images/raw", { bucket: "lab-images", prefix: "raw" }],
    ["s3://lab-images", { bucket: "lab-images", prefix: "" }],
    ["s3://lab-images/", { bucket: "lab-images", prefix: "" }],
    ["s3://lab.images_2/raw/2025/", { bucket: "lab.images_2", prefix: "raw/2025" }],
    ["S3://b/with space/ü#?%", { bucket: "b", prefix: "with space/ü#?%" }],
    [" s3://b/p ", { bucket: "b", prefix: "p" }],
  ];
  for (const [value, want] of cases) assert.deepEqual(parseImagesTo(value), want, value);
});

Deno.test("parseImagesTo: malformed values are usage errors (exit 2) saying what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["lab-images/raw", /must start with s3:\/\//],
    ["https://x.supabase.co/storage/v1/s3", /must start with s3:\/\//],
    ["s3:/bucket", /must start with s3:\/\//],
    ["s3://", /bucket name is missing/],
    ["s3:///prefix", /bucket name is missing/],
    ["s3://bad bucket/p", /bucket name "bad bucket"/],
    ["s3://b/a//c", /empty, "\." or "\.\." part/],
    ["s3://b/a/../c", /empty, "\." or "\.\." part/],
    ["s3://b/a\nb", /control character/],
  ];
  for (const [value, pattern] of cases) {
    assert.throws(() => parseImagesTo(value), (error: unknown) => {
      assert.ok(error instanceof UploadError);
      assert.equal(error.kind, "usage");
      assert.equal(exitCodeFor(error), 2);
      assert.match(error.message, pattern, value);
      assert.match(error.hint ?? "", /s3:\/\/BUCKET\/PREFIX/);
      return true;
    });
  }
});

Deno.test("objectKey: PREFIX/<device>/<folder key>/<name>, validated", () => {
  assert.equal(objectKey("raw", "dev-1", "Batch 54", "a.jpg"), "raw/dev-1/Batch 54/a.jpg");
  assert.equal(objectKey("", "dev-1", "2025/Batch 54", "a.jpg"), "dev-1/2025/Batch 54/a.jpg");
  assert.equal(objectKey("a/b", "d", "f", "ü €.png"), "a/b/d/f/ü €.png");
  for (
    const [folderKey, name] of [["a//b", "x.jpg"], ["a/..", "x.jpg"], ["a", ""], ["a", "b/c.jpg"]]
  ) {
    assert.throws(() => objectKey("p", "d", folderKey, name), (e: unknown) => {
      assert.ok(e instanceof UploadError && e.kind === "folder");
      return true;
    });
  }
  assert.throws(
    () => objectKey("p", "d", "f", "é".repeat(600) + ".jpg"),
    /over S3's limit of 1024/,
  );
});

Deno.test("encodeKeyPath: every byte but unreserved ones percent-encoded, / kept", () => {
  const cases: [string, string][] = [
    ["a b/c.jpg", "a%20b/c.jpg"],
    ['it\'s "q".png', "it%27s%20%22q%22.png"],
    ["#?%+&=;,:@$", "%23%3F%25%2B%26%3D%3B%2C%3A%40%24"],
    ["(x)!*~-._", "%28x%29%21%2A~-._"],
    ["ü€😀", "%C3%BC%E2%82%AC%F0%9F%98%80"],
  ];
  for (const [key, want] of cases) assert.equal(encodeKeyPath(key), want, key);
});

Deno.test("parseS3Error: code and message, entities decoded; non-XML gives its text", () => {
  assert.deepEqual(
    parseS3Error(
      `<?xml version="1.0"?><Error><Code>EntityTooLarge</Code><Message>Too &quot;big&quot; &amp; &#x27;bad&#39;</Message></Error>`,
    ),
    { code: "EntityTooLarge", message: `Too "big" & 'bad'` },
  );
  assert.deepEqual(parseS3Error("<html><body><h1>502 Bad Gateway</h1></body></html>"), {
    message: "502 Bad Gateway",
  });
  assert.deepEqual(parseS3Error(""), { message: undefined });
});

Deno.test("classifyStorageReply: transient, config or folder", () => {
  const cases: [number, string | undefined, string][] = [
    [503, "SlowDown", "transient"],
    [503, undefined, "transient"],
    [429, undefined, "transient"],
    [500, "InternalError", "transient"],
    [502, undefined, "transient"],
    [504, undefined, "transient"],
    [400, "RequestTimeout", "transient"],
    [400, "BadDigest", "transient"],
    [403, "SignatureDoesNotMatch", "config"],
    [403, "InvalidAccessKeyId", "config"],
    [403, "AccessDenied", "config"],
    [403, "RequestTimeTooSkewed", "config"],
    [403, undefined, "config"],
    [404, "NoSuchBucket", "config"],
    [400, "AuthorizationHeaderMalformed", "config"],
    [301, "PermanentRedirect", "config"],
    [400, "EntityTooLarge", "folder"],
    [413, "EntityTooLarge", "folder"],
    [400, "InvalidKey", "folder"],
    [404, "NoSuchKey", "folder"],
    [400, undefined, "folder"],
  ];
  for (const [status, code, want] of cases) {
    assert.equal(classifyStorageReply(status, code), want, `${status} ${code}`);
  }
});

Deno.test("parseRetryAfter: seconds or an HTTP date", () => {
  const now = Date.parse("Wed, 21 Oct 2015 07:28:00 GMT");
  assert.equal(parseRetryAfter("3", now), 3000);
  assert.equal(parseRetryAfter(" 0 ", now), 0);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:27:00 GMT", now), 0);
  assert.equal(parseRetryAfter("soon", now), undefined);
  assert.equal(parseRetryAfter(null, now), undefined);
});

Deno.test("isSameObject: same size and MD5 as the single-part ETag or the stored md5", () => {
  const sum = md5(ENCODER.encode("abc"));
  assert.equal(isSameObject({ size: 3, etag: sum }, 3, sum), true);
  assert.equal(isSameObject({ size: 3, etag: sum.toUpperCase() }, 3, sum), true);
  assert.equal(isSameObject({ size: 4, etag: sum }, 3, sum), false);
  assert.equal(isSameObject({ size: 3, etag: `${sum}-2` }, 3, sum), false);
  assert.equal(isSameObject({ size: 3, etag: `${sum}-2`, md5: sum }, 3, sum), true);
  assert.equal(isSameObject(null, 3, sum), false);
});

Deno.test("describeNetworkError and redactSecrets", () => {
  const refused = new TypeError("fetch failed", {
    cause: new Error(
      "error sending request for url (http://h/x): tcp connect error: Connection refused (os error 111)",
    ),
  });
  assert.equal(describeNetworkError(refused), "connection refused");
  assert.equal(
    describeNetworkError(
      new TypeError("fetch failed", { cause: new Error("dns error: failed to lookup address") }),
    ),
    "host name not found (DNS)",
  );
  assert.equal(
    redactSecrets("key AKIA1 secret s3cr3t/x+y", ["s3cr3t/x+y", "AKIA1"]),
    "key *** secret ***",
  );
});

Deno.test("storeFromEnv: destination from the flag or UPLOAD_IMAGES_TO; credentials required", () => {
  const creds = {
    AWS_ACCESS_KEY_ID: "AKIAEXAMPLE",
    AWS_SECRET_ACCESS_KEY: "very/secret+key",
    AWS_REGION: "eu-central-1",
    AWS_ENDPOINT_URL: "https://abcd.supabase.co/storage/v1/s3/",
  };
  assert.equal(storeFromEnv(creds), null);
  const store = storeFromEnv({ ...creds, UPLOAD_IMAGES_TO: "s3://env-bucket/p" })!;
  assert.equal(store.bucket, "env-bucket");
  assert.equal(store.endpoint, "https://abcd.supabase.co/storage/v1/s3");
  assert.equal(store.region, "eu-central-1");
  const flagged = storeFromEnv({ ...creds, UPLOAD_IMAGES_TO: "s3://env-bucket/p" }, "s3://flag/x")!;
  assert.equal(flagged.bucket, "flag");
  assert.equal(flagged.display, "s3://flag/x at https://abcd.supabase.co/storage/v1/s3");
  assert.ok(!Deno.inspect(flagged).includes("very/secret+key"));
  assert.ok(!JSON.stringify(flagged).includes("very/secret+key"));
  const aws = storeFromEnv({ AWS_ACCESS_KEY_ID: "a", AWS_SECRET_ACCESS_KEY: "b" }, "s3://b")!;
  assert.equal(aws.endpoint, "https://s3.us-east-1.amazonaws.com");

  const missing = (() => {
    try {
      storeFromEnv({ AWS_SECRET_ACCESS_KEY: "very/secret+key" }, "s3://b/p");
    } catch (error) {
      return error as UploadError;
    }
    assert.fail("expected a config error");
  })();
  assert.equal(missing.kind, "config");
  assert.equal(exitCodeFor(missing), 2);
  assert.match(missing.message, /AWS_ACCESS_KEY_ID is not set/);
  assert.match(missing.hint ?? "", /supabase\.co\/storage\/v1\/s3/);
  assertNoSecret(missing, ["very/secret+key"]);

  for (
    const endpoint of [
      "ftp://x",
      "not a url",
      "https://user:pw-secret@x.example",
      "https://x?token=t0ken",
    ]
  ) {
    assert.throws(() => parseEndpoint(endpoint), (error: unknown) => {
      assert.ok(error instanceof UploadError && error.kind === "config");
      assert.ok(!error.message.includes("pw-secret") && !error.message.includes("t0ken"));
      return true;
    });
  }
});

Deno.test("planFolderObjects: the images (any case) and bytes a dry run would put", () => {
  const plan = planFolderObjects({ bucket: "b", prefix: "raw" }, {
    path: "/data/Batch 1",
    key: "Batch 1",
    files: [
      { name: "stats.json", size: 10, mtimeMs: 0 },
      { name: "b.PNG", size: 200, mtimeMs: 0 },
      { name: "a.jpg", size: 100, mtimeMs: 0 },
      { name: "report.pdf", size: 5000, mtimeMs: 0 },
    ],
  }, { deviceId: "dev" });
  assert.deepEqual(plan, {
    objects: [
      { name: "a.jpg", key: "raw/dev/Batch 1/a.jpg", size: 100 },
      { name: "b.PNG", key: "raw/dev/Batch 1/b.PNG", size: 200 },
    ],
    bytes: 300,
  });
});

Deno.test("ObjectStore.reserve: requests and bytes in flight are bounded; a large file goes alone", async () => {
  const store = new ObjectStore({
    bucket: "b",
    prefix: "",
    endpoint: "http://127.0.0.1:9",
    region: "r",
    accessKeyId: "a",
    secretAccessKey: "s",
  }, { concurrency: 3, maxBytesInFlight: 100 });
  const order: string[] = [];
  const r1 = await store.reserve(60);
  let r2done = false;
  const r2 = store.reserve(60).then((release) => {
    r2done = true;
    order.push("second");
    return release;
  });
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(r2done, false, "60 + 60 bytes exceed a budget of 100");
  r1();
  const release2 = await r2;
  const big = store.reserve(500).then((release) => {
    order.push("big");
    return release;
  });
  const small = store.reserve(1).then((release) => {
    order.push("small");
    return release;
  });
  await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(order, ["second"], "the large file waits for everything in flight");
  release2();
  const releaseBig = await big;
  assert.deepEqual(order, ["second", "big"]);
  releaseBig();
  (await small)();
  assert.deepEqual(order, ["second", "big", "small"]);

  const slots = [await store.reserve(0), await store.reserve(0), await store.reserve(0)];
  const aborter = new AbortController();
  const fourth = store.reserve(0, aborter.signal);
  aborter.abort();
  await assert.rejects(fourth);
  for (const release of slots) release();
});

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

Deno.test("putFolderObjects: every image lands byte-identical under keys full of specials", async () => {
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
    assert.deepEqual(result.objects.map((o) => o.name), images);
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
