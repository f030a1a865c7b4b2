/**
 * The store's replies read (lib/objects/replies.ts): S3 error bodies, what a status and
 * code mean, Retry-After, network failures, secrets redacted.
 */

import assert from "node:assert/strict";
import {
  classifyStorageReply,
  describeNetworkError,
  parseRetryAfter,
  parseS3Error,
  redactSecrets,
  replyFailure,
} from "../../lib/objects/replies.ts";

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

Deno.test("replyFailure: kind, throttling, the wait asked for and the reason of a refused reply", () => {
  const reply = (status: number, body: string, method = "PUT", retryAfter: string | null = null) =>
    replyFailure({ method, status, statusText: "", body, retryAfter, nowMs: 0 });
  assert.deepEqual(
    reply(503, "<Error><Code>SlowDown</Code><Message>Busy</Message></Error>", "PUT", "2"),
    {
      kind: "transient",
      status: 503,
      code: "SlowDown",
      reason: "HTTP 503 SlowDown: Busy",
      retryAfterMs: 2000,
      throttle: true,
    },
  );
  assert.equal(reply(429, "").throttle, true);
  assert.equal(reply(500, "<Error><Code>InternalError</Code></Error>").throttle, false);
  // A HEAD answer has no body: a refused 404 there is a missing bucket.
  const head = reply(404, "", "HEAD");
  assert.equal(head.code, "NoSuchBucket");
  assert.equal(head.kind, "config");
  assert.equal(reply(404, "", "PUT").code, undefined);
  assert.equal(reply(400, "").reason, "HTTP 400 (no message)");
});
