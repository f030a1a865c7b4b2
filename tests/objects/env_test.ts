/** The object store from the environment (lib/objects/env.ts): destination, credentials, endpoint. */

import assert from "node:assert/strict";
import { exitCodeFor, UploadError } from "../../lib/core/errors.ts";
import { parseEndpoint, storeFromEnv } from "../../lib/objects/env.ts";

/** Every thrown error's text must be free of every credential. */
function assertNoSecret(error: UploadError, secrets: string[]): void {
  const text = `${error.message}\n${error.hint ?? ""}\n${error.subject ?? ""}\n${
    error.stack ?? ""
  }`;
  for (const s of secrets) assert.ok(!text.includes(s), `a credential leaked into: ${text}`);
}

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
