/**
 * Object storage for a folder's images (`--images-to s3://BUCKET/PREFIX`): puts each image
 * over the S3 protocol into any S3-compatible store, Supabase Storage's S3 endpoint
 * (`https://<project-ref>.supabase.co/storage/v1/s3`, path-style) included.
 *
 * Each image becomes the object `PREFIX/<device_id>/<folder_key>/<file name>`. Requests are
 * signed with AWS Signature Version 4 (aws4fetch) and sent with `fetch`; this module owns
 * the retries: 429, 503 and `SlowDown` pause the whole store for the server's `Retry-After`,
 * 500/502/504 and network errors back off with jitter, and a store that stays unreachable
 * past the deadline ends as `unreachable`. Objects go up in parallel under two limits shared
 * by every folder: requests in flight and bytes held in memory.
 *
 * Credentials live in private fields and are removed from every message this module
 * builds; they never travel in a URL.
 *
 * ```ts
 * const store = storeFromEnv(Deno.env.toObject(), "s3://lab-images/raw");
 * if (store) {
 *   const { objects } = await putFolderObjects(store, snapshot, { deviceId });
 *   // all objects are stored: now the folder's row may be written
 * }
 * ```
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { AwsV4Signer } from "aws4fetch";
import { DEFAULT_CONFIG } from "../../config.ts";
import { type ErrorKind, messageOf, UploadError } from "../core/errors.ts";
import { backoffDelay, type BackoffOptions, sleep } from "../core/retry.ts";
import { isImageName } from "../source/snapshot.ts";

/** Where objects go: the bucket and the key prefix of `s3://BUCKET/PREFIX`. */
export interface StorageLocation {
  /** The bucket name. */
  bucket: string;
  /** The key prefix without leading or trailing `/`; empty when none. */
  prefix: string;
}

/** How to reach the store and who to be there. Secrets stay inside the store object. */
export interface StoreSettings extends StorageLocation {
  /** Base URL of the S3 API, without a trailing `/` (may have a path, as Supabase's has). */
  endpoint: string;
  /** Signing region (Supabase: the project's region, e.g. `eu-central-1`). */
  region: string;
  /** `AWS_ACCESS_KEY_ID`. */
  accessKeyId: string;
  /** `AWS_SECRET_ACCESS_KEY`. */
  secretAccessKey: string;
  /** `AWS_SESSION_TOKEN`, for temporary credentials. */
  sessionToken?: string;
}

/** Tuning of an {@linkcode ObjectStore}. */
export interface ObjectStoreOptions {
  /** Requests in flight at once, across all folders. Default 8. */
  concurrency?: number;
  /**
   * Bytes of file content held in memory at once, across all folders. A file larger than
   * this goes alone. Default 64 MiB.
   */
  maxBytesInFlight?: number;
  /**
   * How long a request keeps retrying transient failures (from its first failure) before
   * the store counts as unreachable, in ms. Default 300,000 (config `giveUpAfterSeconds`).
   */
  giveUpAfterMs?: number;
  /** The backoff schedule between retries. Default: 500 ms doubling to 30 s, ±50 % jitter. */
  backoff?: BackoffOptions;
  /**
   * How the payload is signed: `unsigned` sends `UNSIGNED-PAYLOAD` (integrity still checked
   * by the server through Content-MD5); `sha256` hashes every body into the signature.
   * Default `unsigned`.
   */
  payloadSigning?: "unsigned" | "sha256";
  /**
   * Time allowed for one request, in ms, plus one second per 64 KiB of body (a slow uplink
   * must still get a large image through). Default 30,000.
   */
  requestTimeoutMs?: number;
  /** Called before each retry, so a caller can log `attempt n` with the reason. */
  onRetry?: (event: RetryEvent) => void;
}

/** One retry of a storage request. */
export interface RetryEvent {
  /** The object key, or `""` for a bucket request. */
  key: string;
  /** 1 for the first retry. */
  attempt: number;
  /** The wait before this retry, in ms. */
  waitMs: number;
  /** Why the previous attempt failed (e.g. `HTTP 503 SlowDown: Please reduce your request rate`). */
  reason: string;
}

/** What a HEAD request tells about an object. */
export interface ObjectHead {
  /** Size in bytes (`Content-Length`). */
  size: number;
  /** The ETag without quotes (an MD5 hex digest for single-part uploads). */
  etag: string;
  /** The MD5 hex digest this module stored as `x-amz-meta-md5`, when present. */
  md5?: string;
}

/** A folder as {@linkcode putFolderObjects} needs it (a scan snapshot fits). */
export interface FolderFiles {
  /** The folder's absolute path. */
  path: string;
  /** The folder's key: its path relative to the base, `/`-separated. */
  key: string;
  /** The folder's direct files. */
  files: readonly { name: string; size: number; mtimeMs: number }[];
}

/** Options of {@linkcode putFolderObjects}. */
export interface PutFolderOptions {
  /** This device's id: the second part of every key. */
  deviceId: string;
  /**
   * The tracker's word on whether this image, with this size and MD5 (hex), is already
   * stored under its key. `true` skips it without a request.
   */
  isStored?: (name: string, size: number, md5: string) => boolean;
  /**
   * Whether to ask the store (HEAD) before putting an image the tracker does not know as
   * stored. Default: `true` without `isStored`, `false` with it (the tracker is trusted;
   * a PUT of an identical object is harmless).
   */
  headBeforePut?: boolean;
  /** Image extensions, lower case with the dot. Default: the config's. */
  imageExtensions?: readonly string[];
  /** Stops the folder's requests; the call then throws kind `interrupted`. */
  signal?: AbortSignal;
}

/** One image of a folder after {@linkcode putFolderObjects}. */
export interface StoredObject {
  /** The file name. */
  name: string;
  /** The object key. */
  key: string;
  /** Bytes stored. */
  size: number;
  /** MD5 hex digest of the bytes. */
  md5: string;
  /** `true` when this call put it; `false` when it was already stored. */
  put: boolean;
}

/** The outcome of {@linkcode putFolderObjects}. */
export interface FolderObjects {
  /** Every image of the folder, in name order. */
  objects: StoredObject[];
}

/** What {@linkcode planFolderObjects} says would be put. */
export interface FolderObjectPlan {
  /** Every image of the folder with its key and size, in name order. */
  objects: { name: string; key: string; size: number }[];
  /** The sum of their sizes. */
  bytes: number;
}

/** The longest object key S3 accepts, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;

const DEFAULT_CONCURRENCY = 8;
const DEFAULT_BYTES_IN_FLIGHT = 64 * 1024 * 1024;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const UTF8 = new TextEncoder();

const USAGE_HINT = "Expected s3://BUCKET/PREFIX, e.g. --images-to s3://lab-images/raw " +
  "(PREFIX may be empty: s3://lab-images)";

const SUPABASE_HINT = "For Supabase Storage: Project Settings > Storage > S3 access keys; " +
  "set AWS_ENDPOINT_URL=https://<project-ref>.supabase.co/storage/v1/s3 and AWS_REGION to " +
  "the project's region (e.g. eu-central-1)";

/**
 * Parses `--images-to` (`s3://BUCKET/PREFIX`). The prefix is taken literally (no
 * percent-decoding); leading and trailing `/` are dropped.
 *
 * @example
 * ```ts
 * parseImagesTo("s3://lab-images/raw/2025/"); // { bucket: "lab-images", prefix: "raw/2025" }
 * parseImagesTo("s3://lab-images"); // { bucket: "lab-images", prefix: "" }
 * ```
 *
 * @throws {UploadError} kind `usage` naming what is wrong with the value.
 */
export function parseImagesTo(value: string): StorageLocation {
  const shown = JSON.stringify(value);
  const match = /^s3:\/\/([^/]*)(?:\/(.*))?$/is.exec(value.trim());
  if (!match) {
    throw new UploadError("usage", `Invalid --images-to ${shown}: it must start with s3://`, {
      hint: USAGE_HINT,
    });
  }
  const bucket = match[1];
  if (bucket === "") {
    throw new UploadError("usage", `Invalid --images-to ${shown}: the bucket name is missing`, {
      hint: USAGE_HINT,
    });
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(bucket)) {
    throw new UploadError(
      "usage",
      `Invalid --images-to ${shown}: bucket name ${JSON.stringify(bucket)} must be 1 to 63 ` +
        `letters, digits, dots, hyphens or underscores`,
      { hint: USAGE_HINT },
    );
  }
  const prefix = (match[2] ?? "").replace(/^\/+|\/+$/g, "");
  if (prefix !== "") {
    // deno-lint-ignore no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(prefix)) {
      throw new UploadError(
        "usage",
        `Invalid --images-to ${shown}: the prefix has a control character`,
        {
          hint: USAGE_HINT,
        },
      );
    }
    const bad = prefix.split("/").find((s) => s === "" || s === "." || s === "..");
    if (bad !== undefined) {
      throw new UploadError(
        "usage",
        `Invalid --images-to ${shown}: the prefix has an empty, "." or ".." part`,
        { hint: USAGE_HINT },
      );
    }
  }
  return { bucket, prefix };
}

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

/**
 * The object key of one image: `PREFIX/<device_id>/<folder_key>/<file name>` (no PREFIX
 * part when it is empty).
 *
 * @example
 * ```ts
 * objectKey("raw", "d1", "Batch 54", "a.jpg"); // "raw/d1/Batch 54/a.jpg"
 * ```
 *
 * @throws {UploadError} kind `folder` when a part is empty, `.` or `..`, the name has a
 * `/`, or the key is longer than {@linkcode MAX_KEY_BYTES}.
 */
export function objectKey(
  prefix: string,
  deviceId: string,
  folderKey: string,
  name: string,
): string {
  const parts = [deviceId, ...folderKey.split("/"), name];
  if (name.includes("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new UploadError(
      "folder",
      `Cannot name an object for ${JSON.stringify(name)} in folder ${
        JSON.stringify(folderKey)
      }: a key part is empty, "." or ".."`,
      { subject: folderKey },
    );
  }
  const key = prefix === "" ? parts.join("/") : `${prefix}/${parts.join("/")}`;
  const bytes = UTF8.encode(key).length;
  if (bytes > MAX_KEY_BYTES) {
    throw new UploadError(
      "folder",
      `Cannot store ${JSON.stringify(name)}: its object key is ${bytes} bytes long, over ` +
        `S3's limit of ${MAX_KEY_BYTES}`,
      { subject: folderKey },
    );
  }
  return key;
}

/**
 * Percent-encodes a key for the request path the way SigV4 canonicalises S3 paths: every
 * byte except `A-Z a-z 0-9 - . _ ~` becomes `%XX` (upper case), `/` separates segments.
 * The path sent is then its own canonical form, so servers that sign the raw path and
 * servers that re-encode the decoded key agree.
 *
 * @example
 * ```ts
 * encodeKeyPath("a b/it's+#?.jpg"); // "a%20b/it%27s%2B%23%3F.jpg"
 * ```
 */
export function encodeKeyPath(key: string): string {
  return key.split("/").map(encodeSegment).join("/");
}

function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/**
 * Whether a stored object holds exactly these bytes: same size, and the MD5 equal to the
 * single-part ETag or to the `x-amz-meta-md5` this module writes. A multipart ETag
 * (`<hex>-<parts>`) never matches, so such an object is put again.
 *
 * @example
 * ```ts
 * isSameObject({ size: 3, etag: "900150983cd24fb0d6963f7d28e17f72" }, 3, "900150983cd24fb0d6963f7d28e17f72"); // true
 * ```
 */
export function isSameObject(head: ObjectHead | null, size: number, md5: string): boolean {
  if (head === null || head.size !== size) return false;
  const want = md5.toLowerCase();
  return head.etag.toLowerCase() === want || head.md5?.toLowerCase() === want;
}

/**
 * The `<Code>` and `<Message>` of an S3 error body (XML), entities decoded. A body that is
 * not S3 XML (an HTML page from a proxy) gives its first line of text as the message.
 *
 * @example
 * ```ts
 * parseS3Error("<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>");
 * // { code: "SlowDown", message: "Reduce your rate" }
 * ```
 */
export function parseS3Error(body: string): { code?: string; message?: string } {
  const code = /<Code>([^<]*)<\/Code>/.exec(body)?.[1];
  const message = /<Message>([^<]*)<\/Message>/.exec(body)?.[1];
  if (code !== undefined || message !== undefined) {
    return {
      code: code === undefined ? undefined : decodeXml(code).trim(),
      message: message === undefined ? undefined : decodeXml(message).trim(),
    };
  }
  const text = body.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
  return { message: text === "" ? undefined : text.slice(0, 200) };
}

function decodeXml(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|amp|lt|gt|quot|apos);/gi, (all, entity: string) => {
    const e = entity.toLowerCase();
    if (e === "amp") return "&";
    if (e === "lt") return "<";
    if (e === "gt") return ">";
    if (e === "quot") return '"';
    if (e === "apos") return "'";
    const n = e.startsWith("#x") ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
    return Number.isFinite(n) && n <= 0x10ffff ? String.fromCodePoint(n) : all;
  });
}

const TRANSIENT_CODES = new Set([
  "SlowDown",
  "RequestTimeout",
  "InternalError",
  "ServiceUnavailable",
  "OperationAborted",
  "BadDigest",
  "XAmzContentSHA256Mismatch",
  "IncompleteBody",
]);

const CONFIG_CODES = new Set([
  "SignatureDoesNotMatch",
  "InvalidAccessKeyId",
  "AccessDenied",
  "NoSuchBucket",
  "AuthorizationHeaderMalformed",
  "InvalidRegion",
  "InvalidToken",
  "ExpiredToken",
  "TokenRefreshRequired",
  "RequestTimeTooSkewed",
  "InvalidBucketName",
  "PermanentRedirect",
  "AllAccessDisabled",
  "AccountProblem",
  "InvalidSecurity",
]);

/**
 * What a storage reply means for the run, from its HTTP status and S3 error code:
 * `transient` (429, 500, 502, 503, 504, `SlowDown`, `RequestTimeout`, a digest mismatch:
 * retried), `config` (401, 403, redirects, 405, 501, a missing bucket, wrong credentials
 * or region: exit 2), else `folder` (this object cannot be stored as it is, e.g.
 * `EntityTooLarge`, `InvalidKey`).
 *
 * @example
 * ```ts
 * classifyStorageReply(503, "SlowDown"); // "transient"
 * classifyStorageReply(403, "SignatureDoesNotMatch"); // "config"
 * classifyStorageReply(400, "EntityTooLarge"); // "folder"
 * ```
 */
export function classifyStorageReply(status: number, code?: string): ErrorKind {
  if (code !== undefined && TRANSIENT_CODES.has(code)) return "transient";
  if (code !== undefined && CONFIG_CODES.has(code)) return "config";
  if (code === "NoSuchKey") return "folder";
  if (status === 408 || status === 429 || status === 500 || status === 502) return "transient";
  if (status === 503 || status === 504) return "transient";
  if (status >= 300 && status < 400) return "config";
  if (status === 401 || status === 403 || status === 405 || status === 501) return "config";
  // A 404 on a PUT or a bucket request: the endpoint's path or the bucket is wrong.
  if (status === 404) return "config";
  if (status >= 500) return "transient";
  return "folder";
}

/**
 * The wait a `Retry-After` header asks for, in ms: delay-seconds or an HTTP date.
 *
 * @example
 * ```ts
 * parseRetryAfter("3", 0); // 3000
 * parseRetryAfter("Wed, 21 Oct 2015 07:28:05 GMT", Date.parse("Wed, 21 Oct 2015 07:28:00 GMT")); // 5000
 * ```
 *
 * @returns `undefined` when the header is missing or unreadable.
 */
export function parseRetryAfter(
  value: string | null | undefined,
  nowMs: number,
): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - nowMs);
}

/**
 * A short reason for a failed `fetch` (refused, reset, DNS, timeout), without the URL.
 */
export function describeNetworkError(error: unknown): string {
  if (error instanceof DOMException && error.name === "TimeoutError") return "no answer in time";
  const texts: string[] = [];
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 4; depth++) {
    texts.push(e.message);
    e = e.cause;
  }
  const all = texts.join(" | ");
  if (/connection refused|os error 111/i.test(all)) return "connection refused";
  if (/connection reset|os error 104/i.test(all)) return "connection reset";
  if (/dns error|failed to lookup|name or service not known|no address/i.test(all)) {
    return "host name not found (DNS)";
  }
  if (/closed before message completed|connection closed|broken pipe|unexpected eof/i.test(all)) {
    return "connection closed by the server";
  }
  if (/certificate|tls|handshake/i.test(all)) return `TLS failure: ${lastReason(all)}`;
  return lastReason(all) || "network error";
}

function lastReason(text: string): string {
  const last = text.split(" | ").pop() ?? "";
  return last.replace(/\b(?:https?):\/\/\S+/g, "").split("): ").pop()!.trim();
}

/** Replaces every occurrence of a secret in `text` with `***`. */
export function redactSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const s of secrets) {
    if (s !== undefined && s.length >= 4) out = out.split(s).join("***");
  }
  return out;
}

/** A config error's advice, by S3 error code. */
function configHint(code: string | undefined, status: number, bucket: string): string {
  switch (code) {
    case "SignatureDoesNotMatch":
      return "Check AWS_SECRET_ACCESS_KEY and AWS_REGION (Supabase: the project's region)";
    case "InvalidAccessKeyId":
      return "Check AWS_ACCESS_KEY_ID: the store does not know this access key";
    case "AccessDenied":
    case "AllAccessDisabled":
      return `Check that the access key may write to bucket ${bucket}, and AWS_REGION`;
    case "NoSuchBucket":
    case "InvalidBucketName":
      return `Create the bucket ${bucket} first (Supabase: Storage > New bucket) or fix --images-to`;
    case "ExpiredToken":
    case "InvalidToken":
    case "TokenRefreshRequired":
      return "AWS_SESSION_TOKEN is expired or invalid: get new temporary credentials";
    case "RequestTimeTooSkewed":
      return "This machine's clock is off by more than 15 minutes: synchronise it (NTP)";
    case "AuthorizationHeaderMalformed":
    case "InvalidRegion":
    case "PermanentRedirect":
      return "Check AWS_REGION and AWS_ENDPOINT_URL";
  }
  if (status >= 300 && status < 400) return "Check AWS_REGION and AWS_ENDPOINT_URL";
  if (status === 404 || status === 405 || status === 501) {
    return `Check AWS_ENDPOINT_URL: it must be the S3 API's base URL. ${SUPABASE_HINT}`;
  }
  return `Check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL. ${SUPABASE_HINT}`;
}

/** A request's failure as the retry loop sees it. */
interface Failure {
  kind: ErrorKind;
  /** `HTTP 503 SlowDown: message`, or a network reason. */
  reason: string;
  status?: number;
  code?: string;
  /** ms the server asked to wait. */
  retryAfterMs?: number;
  /** Whether the whole store pauses (rate limiting). */
  throttle: boolean;
}

/** Counts requests and bytes in flight; waiters are served first come, first served. */
class Budget {
  #slots: number;
  #bytes: number;
  readonly maxBytes: number;
  #queue: { bytes: number; grant: () => void }[] = [];

  constructor(slots: number, bytes: number) {
    this.#slots = slots;
    this.#bytes = bytes;
    this.maxBytes = bytes;
  }

  /** Waits for a slot and `bytes` (at most the whole budget); returns the release. */
  acquire(bytes: number, signal?: AbortSignal): Promise<() => void> {
    const want = Math.min(Math.max(0, bytes), this.maxBytes);
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const entry = {
        bytes: want,
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          let released = false;
          resolve(() => {
            if (released) return;
            released = true;
            this.#slots += 1;
            this.#bytes += want;
            this.#drain();
          });
        },
      };
      const onAbort = () => {
        const at = this.#queue.indexOf(entry);
        if (at >= 0) this.#queue.splice(at, 1);
        this.#drain();
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(entry);
      this.#drain();
    });
  }

  #drain(): void {
    while (this.#queue.length > 0) {
      const next = this.#queue[0];
      if (this.#slots < 1 || this.#bytes < next.bytes) return;
      this.#queue.shift();
      this.#slots -= 1;
      this.#bytes -= next.bytes;
      next.grant();
    }
  }
}

/**
 * An S3 bucket (path-style) with a key prefix. Holds the credentials in private fields;
 * {@linkcode display} is safe to print. Every request retries transient failures itself.
 */
export class ObjectStore {
  /** The bucket. */
  readonly bucket: string;
  /** The key prefix, without leading or trailing `/`. */
  readonly prefix: string;
  /** The S3 API base URL. */
  readonly endpoint: string;
  /** The signing region. */
  readonly region: string;
  #accessKeyId: string;
  #secretAccessKey: string;
  #sessionToken: string | undefined;
  #signingKeys = new Map<string, ArrayBuffer>();
  #budget: Budget;
  #giveUpAfterMs: number;
  #backoff: BackoffOptions;
  #payloadSigning: "unsigned" | "sha256";
  #requestTimeoutMs: number;
  #onRetry: ((event: RetryEvent) => void) | undefined;
  #pausedUntil = 0;

  constructor(settings: StoreSettings, options: ObjectStoreOptions = {}) {
    this.bucket = settings.bucket;
    this.prefix = settings.prefix;
    this.endpoint = settings.endpoint.replace(/\/+$/, "");
    this.region = settings.region;
    this.#accessKeyId = settings.accessKeyId;
    this.#secretAccessKey = settings.secretAccessKey;
    this.#sessionToken = settings.sessionToken;
    this.#budget = new Budget(
      Math.max(1, Math.floor(options.concurrency ?? DEFAULT_CONCURRENCY)),
      Math.max(1, Math.floor(options.maxBytesInFlight ?? DEFAULT_BYTES_IN_FLIGHT)),
    );
    this.#giveUpAfterMs = options.giveUpAfterMs ??
      DEFAULT_CONFIG.giveUpAfterSeconds * 1000;
    this.#backoff = options.backoff ?? {};
    this.#payloadSigning = options.payloadSigning ?? "unsigned";
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#onRetry = options.onRetry;
  }

  /** `s3://bucket/prefix at <endpoint>`: no secret. */
  get display(): string {
    const where = this.prefix === "" ? this.bucket : `${this.bucket}/${this.prefix}`;
    return `s3://${where} at ${this.endpoint}`;
  }

  /** The most bytes of file content held in memory at once. */
  get maxBytesInFlight(): number {
    return this.#budget.maxBytes;
  }

  /** The object key of an image: see {@linkcode objectKey}. */
  keyFor(deviceId: string, folderKey: string, name: string): string {
    return objectKey(this.prefix, deviceId, folderKey, name);
  }

  /** The `s3://bucket/key` form of a key, for messages. */
  uriOf(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  /**
   * Checks that the bucket exists and the credentials work (HEAD on the bucket). Useful
   * once before a run, to fail early with exit 2. A key that may only put objects (no
   * `s3:ListBucket`) is refused here although puts would work: skip the check for it.
   *
   * @throws {UploadError} kind `config`, `unreachable` or `interrupted`.
   */
  async checkAccess(signal?: AbortSignal): Promise<void> {
    const res = await this.#request("HEAD", undefined, { signal, allowStatus: [] });
    await res.body?.cancel();
  }

  /**
   * What the store holds under `key`, or `null` when nothing.
   *
   * @throws {UploadError} kind `config` (refused credentials, missing bucket),
   * `unreachable` or `interrupted`.
   */
  async head(key: string, signal?: AbortSignal): Promise<ObjectHead | null> {
    const res = await this.#request("HEAD", key, { signal, allowStatus: [404] });
    await res.body?.cancel();
    if (res.status === 404) return null;
    const etag = (res.headers.get("etag") ?? "").replace(/^W\//, "").replace(/"/g, "");
    const size = Number(res.headers.get("content-length") ?? "-1");
    const md5 = res.headers.get("x-amz-meta-md5") ?? undefined;
    return { size, etag, md5 };
  }

  /**
   * Puts `body` under `key`, replacing what is there. Sends Content-MD5 (the server checks
   * the bytes) and stores the MD5 as `x-amz-meta-md5`. Outside {@linkcode putFolderObjects},
   * hold a {@linkcode ObjectStore.reserve} for the body so the store's limits still hold.
   *
   * @returns the ETag the store answered, without quotes.
   * @throws {UploadError} kind `folder` (the store refused this object: status, code and
   * its message), `config`, `unreachable` or `interrupted`.
   */
  async put(
    key: string,
    body: Uint8Array<ArrayBuffer>,
    options: { md5?: string; contentType?: string; signal?: AbortSignal } = {},
  ): Promise<string> {
    const md5 = options.md5 ?? createHash("md5").update(body).digest("hex");
    const headers: Record<string, string> = {
      "content-md5": hexToBase64(md5),
      "content-type": options.contentType ?? contentTypeOf(key),
      "x-amz-meta-md5": md5,
    };
    if (this.#payloadSigning === "sha256") {
      headers["x-amz-content-sha256"] = createHash("sha256").update(body).digest("hex");
    }
    const res = await this.#request("PUT", key, {
      body,
      headers,
      signal: options.signal,
      allowStatus: [],
    });
    await res.body?.cancel();
    return (res.headers.get("etag") ?? "").replace(/"/g, "");
  }

  /**
   * The bytes stored under `key` (for verification and tests).
   *
   * @throws {UploadError} kind `folder` when there is no such object, else as
   * {@linkcode head}.
   */
  async get(key: string, signal?: AbortSignal): Promise<Uint8Array<ArrayBuffer>> {
    const res = await this.#request("GET", key, { signal, allowStatus: [] });
    return new Uint8Array(await res.arrayBuffer());
  }

  /**
   * Waits for a request slot and `bytes` of the memory budget, shared by every folder.
   * Used by {@linkcode putFolderObjects}; call the returned function to give them back.
   */
  reserve(bytes: number, signal?: AbortSignal): Promise<() => void> {
    return this.#budget.acquire(bytes, signal);
  }

  #secrets(): string[] {
    return [this.#secretAccessKey, this.#sessionToken, this.#accessKeyId].filter(
      (s): s is string => s !== undefined,
    );
  }

  /** Sends one signed request, retrying transient failures until the deadline. */
  async #request(
    method: "GET" | "HEAD" | "PUT",
    key: string | undefined,
    options: {
      body?: Uint8Array<ArrayBuffer>;
      headers?: Record<string, string>;
      signal?: AbortSignal;
      /** Statuses besides 2xx returned to the caller instead of failing. */
      allowStatus: number[];
    },
  ): Promise<Response> {
    const path = key === undefined
      ? `/${encodeSegment(this.bucket)}`
      : `/${encodeSegment(this.bucket)}/${encodeKeyPath(key)}`;
    const url = `${this.endpoint}${path}`;
    const subject = key === undefined ? `s3://${this.bucket}` : this.uriOf(key);
    const bodyBytes = options.body?.length ?? 0;
    const timeoutMs = this.#requestTimeoutMs + Math.ceil(bodyBytes / 65536) * 1000;
    let firstFailureAt: number | undefined;
    for (let attempt = 1;; attempt++) {
      this.#throwIfAborted(options.signal, subject);
      const pause = this.#pausedUntil - Date.now();
      if (pause > 0) {
        await sleep(pause, options.signal);
        this.#throwIfAborted(options.signal, subject);
      }
      let failure = await this.#attempt(method, url, options, timeoutMs);
      if (failure instanceof Response) return failure;
      if (method === "HEAD" && failure.code === undefined && failure.kind !== "transient") {
        failure = await this.#explainHead(url, options, failure, timeoutMs);
      }
      if (failure.kind !== "transient") {
        throw this.#replyError(failure, method, subject);
      }
      const now = Date.now();
      firstFailureAt ??= now;
      const waitMs = Math.max(backoffDelay(attempt, this.#backoff), failure.retryAfterMs ?? 0);
      if (failure.throttle) this.#pausedUntil = Math.max(this.#pausedUntil, now + waitMs);
      if (now + waitMs - firstFailureAt > this.#giveUpAfterMs) {
        const seconds = Math.round((now - firstFailureAt) / 1000);
        const asked =
          failure.retryAfterMs !== undefined && now + failure.retryAfterMs - firstFailureAt >
              this.#giveUpAfterMs
            ? ` (it asked to wait ${Math.ceil(failure.retryAfterMs / 1000)} s more)`
            : "";
        throw new UploadError(
          "unreachable",
          this.#redact(
            `Object storage ${this.display} unreachable: ${method} ${subject} still failing ` +
              `after ${attempt} attempts in ${seconds} s${asked}: ${failure.reason}`,
          ),
          {
            subject,
            hint: "Check AWS_ENDPOINT_URL and the network; the images and rows not stored " +
              "stay pending and go up on the next run",
          },
        );
      }
      this.#onRetry?.({ key: key ?? "", attempt, waitMs, reason: failure.reason });
      await sleep(waitMs, options.signal);
    }
  }

  /** One try: the response when it is a success (or allowed), else what failed. */
  async #attempt(
    method: string,
    url: string,
    options: {
      body?: Uint8Array<ArrayBuffer>;
      headers?: Record<string, string>;
      signal?: AbortSignal;
      allowStatus: number[];
    },
    timeoutMs: number,
  ): Promise<Response | Failure> {
    const signer = new AwsV4Signer({
      method,
      url,
      headers: options.headers,
      body: options.body,
      accessKeyId: this.#accessKeyId,
      secretAccessKey: this.#secretAccessKey,
      sessionToken: this.#sessionToken,
      service: "s3",
      region: this.region,
      cache: this.#signingKeys,
    });
    const signed = await signer.sign();
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    let res: Response;
    try {
      res = await fetch(signed.url, {
        method,
        headers: signed.headers,
        body: options.body,
        signal,
        redirect: "manual",
      });
    } catch (error) {
      if (options.signal?.aborted) {
        return { kind: "interrupted", reason: "interrupted", throttle: false };
      }
      const reason = timeout.aborted
        ? `no answer within ${Math.round(timeoutMs / 1000)} s`
        : describeNetworkError(error);
      return { kind: "transient", reason, throttle: false };
    }
    if ((res.status >= 200 && res.status < 300) || options.allowStatus.includes(res.status)) {
      return res;
    }
    let text = "";
    try {
      text = method === "HEAD" ? "" : await res.text();
    } catch (error) {
      return {
        kind: "transient",
        reason: `HTTP ${res.status}, then ${describeNetworkError(error)}`,
        throttle: false,
      };
    }
    const parsed = parseS3Error(text);
    // A HEAD answer has no body: a 404 on the bucket itself means there is no such bucket.
    const code = parsed.code ??
      (method === "HEAD" && res.status === 404 && !options.allowStatus.includes(404)
        ? "NoSuchBucket"
        : undefined);
    const message = parsed.message;
    const kind = classifyStorageReply(res.status, code);
    const throttle = res.status === 429 || res.status === 503 || code === "SlowDown";
    const words = [code, message].filter((w) => w !== undefined && w !== "").join(": ");
    return {
      kind,
      status: res.status,
      code,
      reason: `HTTP ${res.status} ${words || res.statusText || "(no message)"}`.trim(),
      retryAfterMs: parseRetryAfter(res.headers.get("retry-after"), Date.now()),
      throttle,
    };
  }

  /**
   * A HEAD answer has no body, so a refusal comes without the S3 code that says why
   * (SignatureDoesNotMatch or InvalidAccessKeyId?). One GET of the first byte gets it.
   */
  async #explainHead(
    url: string,
    options: { signal?: AbortSignal },
    failure: Failure,
    timeoutMs: number,
  ): Promise<Failure> {
    const detail = await this.#attempt("GET", url, {
      headers: { range: "bytes=0-0" },
      signal: options.signal,
      allowStatus: [],
    }, timeoutMs);
    if (detail instanceof Response) {
      await detail.body?.cancel();
      return failure;
    }
    return detail.code !== undefined && detail.kind === failure.kind ? detail : failure;
  }

  #replyError(failure: Failure, method: string, subject: string): UploadError {
    if (failure.kind === "interrupted") return this.#interrupted(subject);
    if (failure.kind === "config") {
      return new UploadError(
        "config",
        this.#redact(
          `Object storage ${this.display} refused ${method} ${subject}: ${failure.reason}`,
        ),
        { subject, hint: configHint(failure.code, failure.status ?? 0, this.bucket) },
      );
    }
    return new UploadError(
      "folder",
      this.#redact(`Object storage refused ${method} ${subject}: ${failure.reason}`),
      { subject },
    );
  }

  #throwIfAborted(signal: AbortSignal | undefined, subject: string): void {
    if (signal?.aborted) throw this.#interrupted(subject);
  }

  #interrupted(subject: string): UploadError {
    return new UploadError("interrupted", `Interrupted while storing ${subject}`, { subject });
  }

  #redact(text: string): string {
    return redactSecrets(text, this.#secrets());
  }
}

function hexToBase64(hex: string): string {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

const CONTENT_TYPES: Record<string, string> = {
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".png": "image/png",
  ".gif": "image/gif",
  ".bmp": "image/bmp",
  ".webp": "image/webp",
  ".tif": "image/tiff",
  ".tiff": "image/tiff",
};

/** The Content-Type for a file name, by extension (any case). */
export function contentTypeOf(name: string): string {
  const dot = name.lastIndexOf(".");
  return (dot >= 0 && CONTENT_TYPES[name.slice(dot).toLowerCase()]) || "application/octet-stream";
}

function imagesOf(
  folder: FolderFiles,
  extensions: readonly string[],
): { name: string; size: number }[] {
  return folder.files
    .filter((f) => isImageName(f.name, extensions))
    .map((f) => ({ name: f.name, size: f.size }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * What {@linkcode putFolderObjects} would put for a folder, from its snapshot alone (no
 * file read, no request): for `--dry-run`.
 *
 * @throws {UploadError} kind `folder` when an image cannot be named as an object.
 */
export function planFolderObjects(
  location: StorageLocation,
  folder: FolderFiles,
  options: { deviceId: string; imageExtensions?: readonly string[] },
): FolderObjectPlan {
  const extensions = options.imageExtensions ?? DEFAULT_CONFIG.imageExtensions;
  const objects = imagesOf(folder, extensions).map((f) => ({
    name: f.name,
    key: objectKey(location.prefix, options.deviceId, folder.key, f.name),
    size: f.size,
  }));
  return { objects, bytes: objects.reduce((sum, o) => sum + o.size, 0) };
}

/** How bad an error is for a folder's outcome: the worst one is thrown. */
const SEVERITY: Partial<Record<ErrorKind, number>> = {
  interrupted: 5,
  config: 4,
  unreachable: 3,
  transient: 2,
  folder: 1,
};

/**
 * Puts every image of one folder (extensions from the config, any case) into the store,
 * in parallel within the store's limits, skipping images already stored: those the
 * tracker vouches for through `isStored`, else (with `headBeforePut`) those whose stored
 * size and MD5 match. A changed image (same name, new bytes) replaces its object.
 *
 * Resolves only when every image is stored, so the folder's row can be written after it;
 * on the first failure the folder's remaining images are not started.
 *
 * @throws {UploadError} kind `folder` naming the file: it vanished or cannot be read, its
 * key is invalid, or the store refused it (HTTP status, S3 code and the store's message);
 * kind `config` when the store refuses the credentials or the bucket is missing; kind
 * `unreachable` when the store stayed unreachable past the deadline; kind `interrupted`
 * when `signal` aborted.
 */
export async function putFolderObjects(
  store: ObjectStore,
  folder: FolderFiles,
  options: PutFolderOptions,
): Promise<FolderObjects> {
  const extensions = options.imageExtensions ?? DEFAULT_CONFIG.imageExtensions;
  const images = imagesOf(folder, extensions);
  const keys = images.map((f) => store.keyFor(options.deviceId, folder.key, f.name));
  const headFirst = options.headBeforePut ?? options.isStored === undefined;
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const results: (StoredObject | undefined)[] = new Array(images.length);
  const errors: UploadError[] = [];

  async function one(index: number): Promise<void> {
    const { name, size } = images[index];
    const key = keys[index];
    let release: () => void;
    try {
      release = await store.reserve(size, signal);
    } catch {
      // The folder stopped (a sibling failed or the caller aborted) while this image
      // waited for its turn; the outcome is decided below from `errors` and the signal.
      return;
    }
    try {
      const bytes = await readImage(folder, name);
      const md5 = createHash("md5").update(bytes).digest("hex");
      let put = true;
      if (options.isStored?.(name, bytes.length, md5)) {
        put = false;
      } else if (headFirst && isSameObject(await store.head(key, signal), bytes.length, md5)) {
        put = false;
      }
      if (put) {
        await store.put(key, bytes, { md5, contentType: contentTypeOf(name), signal });
      }
      results[index] = { name, key, size: bytes.length, md5, put };
    } catch (error) {
      const wrapped = error instanceof UploadError && error.kind !== "folder"
        ? error
        : new UploadError(
          "folder",
          `Cannot store image ${JSON.stringify(name)} of ${folder.path}: ${
            lowerFirst(messageOf(error))
          }`,
          { subject: join(folder.path, name), cause: error },
        );
      if (!(wrapped.kind === "interrupted" && !options.signal?.aborted)) errors.push(wrapped);
      stop.abort();
    } finally {
      release();
    }
  }

  await Promise.all(images.map((_, i) => one(i)));
  if (options.signal?.aborted) {
    throw new UploadError("interrupted", `Interrupted while storing the images of ${folder.path}`, {
      subject: folder.path,
    });
  }
  if (errors.length > 0) {
    throw errors.reduce((a, b) => ((SEVERITY[b.kind] ?? 0) > (SEVERITY[a.kind] ?? 0) ? b : a));
  }
  return { objects: results as StoredObject[] };
}

function lowerFirst(text: string): string {
  return text.length > 1 && /^[A-Z][a-z]/.test(text) ? text[0].toLowerCase() + text.slice(1) : text;
}

async function readImage(folder: FolderFiles, name: string): Promise<Uint8Array<ArrayBuffer>> {
  const file = join(folder.path, name);
  try {
    return await Deno.readFile(file);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "it vanished before it could be read"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : error instanceof Deno.errors.IsADirectory
      ? "it is a directory"
      : messageOf(error);
    throw new UploadError("folder", `Cannot read it: ${reason}`, {
      subject: file,
      cause: error,
    });
  }
}
