/**
 * What the object store answered, read: S3 error bodies parsed, the one decision of what
 * an HTTP status and S3 code mean for the run ({@linkcode classifyStorageReply}),
 * `Retry-After`, network failures worded without their URL, and the errors and hints the
 * store's refusals become. Pure functions, no request.
 *
 * @module
 */

import { type ErrorKind, UploadError } from "../core/errors.ts";

/** Where Supabase Storage's S3 keys and endpoint are found: the hint of configuration errors. */
export const SUPABASE_HINT = "For Supabase Storage: Project Settings > Storage > S3 access keys; " +
  "set AWS_ENDPOINT_URL=https://<project-ref>.supabase.co/storage/v1/s3 and AWS_REGION to " +
  "the project's region (e.g. eu-central-1)";

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
 * `EntityTooLarge`, `InvalidKey`). The one place an HTTP status decides an error's kind.
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
 *
 * @example
 * ```ts
 * describeNetworkError(new TypeError("fetch failed", { cause: new Error("Connection refused (os error 111)") }));
 * // "connection refused"
 * ```
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

/**
 * Replaces every occurrence of a secret in `text` with `***`.
 *
 * @example
 * ```ts
 * redactSecrets("key AKIA1 secret s3cr3t", ["s3cr3t"]); // "key AKIA1 secret ***"
 * ```
 */
export function redactSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const s of secrets) {
    if (s !== undefined && s.length >= 4) out = out.split(s).join("***");
  }
  return out;
}

/** One failed request, as the store's retry loop sees it. */
export interface StorageFailure {
  /** What it means: `transient` is retried; `config`, `folder` and `interrupted` are not. */
  kind: ErrorKind;
  /** `HTTP 503 SlowDown: message`, or a network reason. */
  reason: string;
  /** The HTTP status, when the store answered. */
  status?: number;
  /** The S3 error code, when known. */
  code?: string;
  /** ms the server asked to wait (`Retry-After`). */
  retryAfterMs?: number;
  /** Whether the whole store pauses (rate limiting: 429, 503, `SlowDown`). */
  throttle: boolean;
}

/** A refused reply, as {@linkcode replyFailure} reads it. */
export interface RefusedReply {
  /** The request's method: a HEAD answer has no body. */
  method: string;
  status: number;
  statusText: string;
  /** The body's text (empty for a HEAD). */
  body: string;
  /** The `Retry-After` header, if any. */
  retryAfter: string | null;
  /** Now, in ms since the epoch (for a `Retry-After` date). */
  nowMs: number;
}

/**
 * What a refused reply means: its kind (by {@linkcode classifyStorageReply}), whether it
 * throttles the whole store, the wait it asks for, and its reason text.
 *
 * @example
 * ```ts
 * replyFailure({
 *   method: "PUT", status: 503, statusText: "", retryAfter: "2", nowMs: 0,
 *   body: "<Error><Code>SlowDown</Code><Message>Busy</Message></Error>",
 * });
 * // { kind: "transient", status: 503, code: "SlowDown", reason: "HTTP 503 SlowDown: Busy",
 * //   retryAfterMs: 2000, throttle: true }
 * ```
 */
export function replyFailure(reply: RefusedReply): StorageFailure {
  const parsed = parseS3Error(reply.body);
  // A HEAD answer has no body. A 404 refused (not one the caller takes as "no such object")
  // comes from a HEAD on the bucket itself: there is no such bucket.
  const code = parsed.code ??
    (reply.method === "HEAD" && reply.status === 404 ? "NoSuchBucket" : undefined);
  const words = [code, parsed.message].filter((w) => w !== undefined && w !== "").join(": ");
  return {
    kind: classifyStorageReply(reply.status, code),
    status: reply.status,
    code,
    reason: `HTTP ${reply.status} ${words || reply.statusText || "(no message)"}`.trim(),
    retryAfterMs: parseRetryAfter(reply.retryAfter, reply.nowMs),
    throttle: reply.status === 429 || reply.status === 503 || code === "SlowDown",
  };
}

/** A request that got no reply: a network failure (retried), or the caller's abort. */
export function networkFailure(
  error: unknown,
  how: { aborted: boolean; timedOutAfterMs?: number },
): StorageFailure {
  if (how.aborted) return { kind: "interrupted", reason: "interrupted", throttle: false };
  const reason = how.timedOutAfterMs !== undefined
    ? `no answer within ${Math.round(how.timedOutAfterMs / 1000)} s`
    : describeNetworkError(error);
  return { kind: "transient", reason, throttle: false };
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

/** The store a refusal came from, for its error: what may be shown, and how to redact. */
export interface RefusingStore {
  /** `s3://bucket/prefix at <endpoint>`. */
  display: string;
  bucket: string;
  /** Removes the store's secrets from a text. */
  redact: (text: string) => string;
}

/** A request on `subject` (`s3://bucket/key`) by `method`, for error messages. */
export interface RequestSubject {
  method: string;
  subject: string;
}

/** The error a failure that is not retried becomes: `config`, `folder` or `interrupted`. */
export function refusalError(
  failure: StorageFailure,
  store: RefusingStore,
  request: RequestSubject,
): UploadError {
  const { method, subject } = request;
  if (failure.kind === "interrupted") return interruptedError(subject);
  if (failure.kind === "config") {
    return new UploadError(
      "config",
      store.redact(
        `Object storage ${store.display} refused ${method} ${subject}: ${failure.reason}`,
      ),
      { subject, hint: configHint(failure.code, failure.status ?? 0, store.bucket) },
    );
  }
  return new UploadError(
    "folder",
    store.redact(`Object storage refused ${method} ${subject}: ${failure.reason}`),
    { subject },
  );
}

/**
 * The error of a request that kept failing past the deadline: kind `unreachable`, with
 * the attempts, the time, the wait the server asked for when that was why, and the last
 * failure's reason.
 */
export function unreachableError(
  failure: StorageFailure,
  store: RefusingStore,
  request: RequestSubject & { attempts: number; elapsedMs: number; askedMs?: number },
): UploadError {
  const { method, subject } = request;
  const seconds = Math.round(request.elapsedMs / 1000);
  const asked = request.askedMs !== undefined
    ? ` (it asked to wait ${Math.ceil(request.askedMs / 1000)} s more)`
    : "";
  return new UploadError(
    "unreachable",
    store.redact(
      `Object storage ${store.display} unreachable: ${method} ${subject} still failing ` +
        `after ${request.attempts} attempts in ${seconds} s${asked}: ${failure.reason}`,
    ),
    {
      subject,
      hint: "Check AWS_ENDPOINT_URL and the network; the images and rows not stored " +
        "stay pending and go up on the next run",
    },
  );
}

/** The error of a request stopped by its signal. */
export function interruptedError(subject: string): UploadError {
  return new UploadError("interrupted", `Interrupted while storing ${subject}`, { subject });
}
