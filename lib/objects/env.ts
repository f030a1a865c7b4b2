/**
 * The object store a run uses, from its environment: `--images-to` (else
 * `$UPLOAD_IMAGES_TO`) and the standard AWS variables for credentials, region and
 * endpoint. A malformed value is a usage or configuration error that never echoes a
 * secret.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import { parseImagesTo } from "./keys.ts";
import { SUPABASE_HINT } from "./replies.ts";
import { ObjectStore, type ObjectStoreOptions } from "./store.ts";

/**
 * The store named by `imagesTo` (else `$UPLOAD_IMAGES_TO`) with credentials from the
 * standard variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
 * `AWS_SESSION_TOKEN`, `AWS_REGION` (else `AWS_DEFAULT_REGION`, else `us-east-1`),
 * `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (else AWS's regional endpoint).
 *
 * @returns `null` when neither `imagesTo` nor `UPLOAD_IMAGES_TO` is set (images stay local).
 * @throws {UploadError} kind `usage` for a malformed destination; kind `config` for missing
 * credentials or a malformed endpoint URL (never echoing a secret).
 */
export function storeFromEnv(
  env: Record<string, string | undefined>,
  imagesTo?: string,
  options: ObjectStoreOptions = {},
): ObjectStore | null {
  const destination = imagesTo ?? env.UPLOAD_IMAGES_TO;
  if (destination === undefined || destination.trim() === "") return null;
  const location = parseImagesTo(destination);
  const missing = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].filter((k) => !env[k]);
  if (missing.length > 0) {
    throw new UploadError(
      "config",
      `Storing images in s3://${location.bucket} needs credentials: ${missing.join(" and ")} ${
        missing.length === 1 ? "is" : "are"
      } not set`,
      { hint: SUPABASE_HINT },
    );
  }
  const region = env.AWS_REGION || env.AWS_DEFAULT_REGION || "us-east-1";
  const rawEndpoint = env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL ||
    `https://s3.${region}.amazonaws.com`;
  return new ObjectStore({
    ...location,
    endpoint: parseEndpoint(rawEndpoint),
    region,
    accessKeyId: env.AWS_ACCESS_KEY_ID!,
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY!,
    sessionToken: env.AWS_SESSION_TOKEN || undefined,
  }, options);
}

/**
 * Checks an endpoint URL and returns it without a trailing `/`.
 *
 * @example
 * ```ts
 * parseEndpoint("https://abcd.supabase.co/storage/v1/s3/"); // "https://abcd.supabase.co/storage/v1/s3"
 * ```
 *
 * @throws {UploadError} kind `config` when it is not an http(s) URL, or carries a user,
 * a password, a query or a fragment (the value is not echoed: it might hold a secret).
 */
export function parseEndpoint(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UploadError("config", "AWS_ENDPOINT_URL is not a URL", { hint: SUPABASE_HINT });
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new UploadError("config", "AWS_ENDPOINT_URL must start with https:// or http://", {
      hint: SUPABASE_HINT,
    });
  }
  if (url.username || url.password) {
    throw new UploadError(
      "config",
      "AWS_ENDPOINT_URL must not hold a user or password: use AWS_ACCESS_KEY_ID and " +
        "AWS_SECRET_ACCESS_KEY",
      { hint: SUPABASE_HINT },
    );
  }
  if (url.search || url.hash) {
    throw new UploadError("config", "AWS_ENDPOINT_URL must not have a query or a fragment", {
      hint: SUPABASE_HINT,
    });
  }
  return `${url.origin}${url.pathname.replace(/\/+$/, "")}`;
}
