/**
 * The S3 client's retries (lib/objects/store.ts through lib/core/retry.ts) with a fake
 * `fetch` and a fake clock, no server: every wait is pinned, so a change to the schedule,
 * to Retry-After, to the store-wide pause on throttling or to the deadline rule fails here.
 * And its limits: requests and bytes in flight. The same client against a real S3 server is tests/objects/storage_test.ts.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../lib/core/errors.ts";
import { ObjectStore, type ObjectStoreOptions, type RetryEvent } from "../../lib/objects/store.ts";

/** An S3 error reply. */
function s3Error(status: number, code: string, headers: Record<string, string> = {}): Response {
  const body = `<?xml version="1.0"?><Error><Code>${code}</Code><Message>said ${code}</Message>` +
    "</Error>";
  return new Response(body, { status, headers: { "content-type": "application/xml", ...headers } });
}

/** A store over a fake fetch answering from `replies` in order (then 200), on a fake clock. */
function fakeStore(
  replies: (() => Response | Promise<Response>)[],
  options: ObjectStoreOptions = {},
) {
  let t = 1_000_000;
  const waits: number[] = [];
  const requests: { method: string; path: string; at: number }[] = [];
  const retries: RetryEvent[] = [];
  const queue = [...replies];
  const fakeFetch = (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(input instanceof Request ? input.url : input);
    requests.push({ method: init?.method ?? "GET", path: url.pathname, at: t });
    const next = queue.shift();
    return Promise.resolve(next ? next() : new Response("", { status: 200 }));
  };
  const store = new ObjectStore({
    bucket: "b",
    prefix: "p",
    endpoint: "http://store.invalid",
    region: "eu-central-1",
    accessKeyId: "AKIAFAKE",
    secretAccessKey: "fake/secret+key",
  }, {
    fetch: fakeFetch as typeof fetch,
    clock: {
      now: () => t,
      sleep: (ms, signal) => {
        waits.push(ms);
        if (signal?.aborted) return Promise.resolve();
        t += ms;
        return Promise.resolve();
      },
    },
    random: () => 0.5, // jitter factor exactly 1
    onRetry: (event) => retries.push(event),
    ...options,
  });
  return { store, waits, requests, retries, now: () => t };
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

const BODY = new Uint8Array([1, 2, 3]);

Deno.test("ObjectStore retries: the default schedule is 0.5 s doubling, each retry reported", async () => {
  const fake = fakeStore([
    () => s3Error(500, "InternalError"),
    () => s3Error(502, "BadGateway"),
    () => s3Error(504, "GatewayTimeout"),
    () => s3Error(500, "InternalError"),
  ]);
  await fake.store.put("p/d/f/a.jpg", BODY);
  assert.deepEqual(fake.waits, [500, 1000, 2000, 4000]);
  assert.equal(fake.requests.length, 5);
  assert.deepEqual(
    fake.retries.map((r) => `${r.key} ${r.attempt} ${r.waitMs} ${r.reason}`),
    [
      "p/d/f/a.jpg 1 500 HTTP 500 InternalError: said InternalError",
      "p/d/f/a.jpg 2 1000 HTTP 502 BadGateway: said BadGateway",
      "p/d/f/a.jpg 3 2000 HTTP 504 GatewayTimeout: said GatewayTimeout",
      "p/d/f/a.jpg 4 4000 HTTP 500 InternalError: said InternalError",
    ],
  );
});

Deno.test("ObjectStore retries: the store's backoff option shapes the waits, capped per wait", async () => {
  const fake = fakeStore(Array(5).fill(() => s3Error(503, "ServiceUnavailable")), {
    backoff: { initialMs: 100, maxMs: 400 },
  });
  await fake.store.put("k", BODY);
  assert.deepEqual(fake.waits, [100, 200, 400, 400, 400]);
});

Deno.test("ObjectStore retries: Retry-After lengthens a wait, never shortens it", async () => {
  const fake = fakeStore([
    () => s3Error(503, "SlowDown", { "retry-after": "3" }),
    () => s3Error(503, "SlowDown", { "retry-after": "0" }),
  ], { backoff: { initialMs: 100 } });
  await fake.store.put("k", BODY);
  assert.deepEqual(fake.waits, [3000, 200]);
});

Deno.test("ObjectStore retries: a throttling reply pauses every request of the store; a 500 pauses none", async () => {
  for (
    const [reply, paused] of [[s3Error(503, "SlowDown", { "retry-after": "2" }), true], [
      s3Error(500, "InternalError"),
      false,
    ]] as const
  ) {
    let other: Promise<unknown> | undefined;
    const fake = fakeStore([() => reply.clone()], {
      backoff: { initialMs: 100 },
      // The other request starts while the first waits to retry.
      onRetry: () => other ??= fake.store.head("other"),
    });
    const started = fake.now();
    await fake.store.put("first", BODY);
    await other;
    const otherRequest = fake.requests.find((r) => r.path.endsWith("/other"))!;
    if (paused) {
      assert.deepEqual(fake.waits, [2000, 2000], "the other request waited out the pause first");
      assert.ok(otherRequest.at >= started + 2000);
    } else {
      assert.deepEqual(fake.waits, [100], "no pause: only the failed request waited");
      assert.ok(otherRequest.at <= started + 100);
    }
  }
});

Deno.test("ObjectStore retries: the last attempt comes at the deadline, a backoff wait cut to it", async () => {
  const fake = fakeStore(Array(10).fill(() => s3Error(500, "InternalError")), {
    giveUpAfterMs: 1000,
    backoff: { initialMs: 800, maxMs: 800, jitter: 0 },
  });
  const error = await rejects(fake.store.put("k", BODY));
  assert.deepEqual(fake.waits, [800, 200], "the second wait is cut to what is left");
  assert.equal(fake.requests.length, 3);
  assert.equal(error.kind, "unreachable");
  assert.equal(
    error.message,
    "Object storage s3://b/p at http://store.invalid unreachable: PUT s3://b/k still failing " +
      "after 3 attempts in 1 s: HTTP 500 InternalError: said InternalError",
  );
  assert.match(error.hint ?? "", /AWS_ENDPOINT_URL/);
});

Deno.test("ObjectStore retries: a Retry-After past the deadline gives up at once, saying so", async () => {
  const fake = fakeStore([
    () => s3Error(503, "SlowDown", { "retry-after": "3600" }),
  ], { giveUpAfterMs: 5000 });
  const error = await rejects(fake.store.put("k", BODY));
  assert.deepEqual(fake.waits, []);
  assert.equal(fake.requests.length, 1);
  assert.equal(error.kind, "unreachable");
  assert.match(error.message, /after 1 attempts in 0 s \(it asked to wait 3600 s more\)/);
});

Deno.test("ObjectStore retries: a refusal is not retried; network errors are", async () => {
  const refused = fakeStore([() => s3Error(403, "SignatureDoesNotMatch")]);
  const error = await rejects(refused.store.put("k", BODY));
  assert.equal(error.kind, "config");
  assert.equal(refused.requests.length, 1);
  assert.deepEqual(refused.waits, []);

  const dropped = fakeStore([() => {
    throw new TypeError("fetch failed", {
      cause: new Error("tcp connect error: Connection refused (os error 111)"),
    });
  }]);
  await dropped.store.put("k", BODY);
  assert.deepEqual(dropped.retries.map((r) => r.reason), ["connection refused"]);
  assert.deepEqual(dropped.waits, [500]);
});

Deno.test("ObjectStore retries: an abort during a wait ends the request as interrupted", async () => {
  const aborter = new AbortController();
  const fake = fakeStore(Array(10).fill(() => s3Error(503, "SlowDown")), {
    onRetry: (event) => {
      if (event.attempt === 2) aborter.abort();
    },
  });
  const error = await rejects(fake.store.put("k", BODY, { signal: aborter.signal }));
  assert.equal(error.kind, "interrupted");
  assert.equal(error.message, "Interrupted while storing s3://b/k");
  assert.equal(fake.requests.length, 2);
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
