/**
 * The S3 client: an {@linkcode ObjectStore} signs each request with AWS Signature Version 4
 * (aws4fetch), sends it with `fetch`, and retries transient failures through the one retry
 * helper (lib/core/retry.ts): 429, 503 and `SlowDown` pause the whole store for the wait,
 * at least the server's `Retry-After`; 500/502/504 and network errors back off with
 * jitter; a request still failing at the deadline (or asked to wait past it) ends as
 * `unreachable`. Requests in flight and bytes held in memory are bounded by one
 * {@linkcode Budget} shared by every folder.
 *
 * Credentials live in private fields and are removed from every message built here; they
 * never travel in a URL.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { AwsV4Signer } from "aws4fetch";
import { DEFAULT_CONFIG } from "../../config.ts";
import type { UploadError } from "../core/errors.ts";
import { Budget } from "../core/budget.ts";
import {
  type BackoffOptions,
  type GiveUp,
  retry,
  type RetryOptions,
  sleep,
} from "../core/retry.ts";
import {
  contentTypeOf,
  encodeKeyPath,
  encodeSegment,
  objectKey,
  objectUrl,
  type ObjectUrlForm,
  type StorageLocation,
} from "./keys.ts";
import {
  describeNetworkError,
  interruptedError,
  networkFailure,
  redactSecrets,
  refusalError,
  type RefusingStore,
  replyFailure,
  type StorageFailure,
  unreachableError,
} from "./replies.ts";

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
  /** The `fetch` requests go through (tests). Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** The clock and sleep of retries and pauses (tests). Default: `Date.now` and a timer. */
  clock?: {
    now: () => number;
    sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  };
  /** The jitter's random source, a number in [0, 1) (tests). Default `Math.random`. */
  random?: () => number;
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

const DEFAULT_CONCURRENCY = 8;
const DEFAULT_BYTES_IN_FLIGHT = 64 * 1024 * 1024;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

/** How one request is sent. */
interface RequestOptions {
  body?: Uint8Array<ArrayBuffer>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Statuses besides 2xx returned to the caller instead of failing. */
  allowStatus: number[];
}

/** A transient failure of one attempt, thrown for the retry loop to retry. */
class TransientFailure extends Error {
  readonly failure: StorageFailure;
  constructor(failure: StorageFailure) {
    super(failure.reason);
    this.failure = failure;
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
  #fetch: typeof fetch;
  #now: () => number;
  #sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  #random: (() => number) | undefined;
  /** Until when every request waits (ms since the epoch): the store asked to slow down. */
  #pausedUntil = 0;

  /** A store for `settings` (the secrets are kept private), tuned by `options`. */
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
    this.#fetch = options.fetch ?? fetch;
    this.#now = options.clock?.now ?? Date.now;
    this.#sleep = options.clock?.sleep ?? sleep;
    this.#random = options.random;
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

  /** What a row says of the object `key`: see {@linkcode objectUrl}. */
  urlFor(key: string, form: ObjectUrlForm): string {
    return objectUrl(this.endpoint, this.bucket, key, form);
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
   * the bytes) and stores the MD5 as `x-amz-meta-md5`. Outside `putFolderObjects`, hold a
   * {@linkcode ObjectStore.reserve} for the body so the store's limits still hold.
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
   * Used by `putFolderObjects`; call the returned function to give them back.
   */
  reserve(bytes: number, signal?: AbortSignal): Promise<() => void> {
    return this.#budget.acquire({ slots: 1, bytes }, signal);
  }

  /** What a refusal's error may show, and how secrets are removed from it. */
  get #refusing(): RefusingStore {
    return { display: this.display, bucket: this.bucket, redact: (text) => this.#redact(text) };
  }

  /** Sends one signed request, retrying transient failures until the deadline. */
  #request(
    method: "GET" | "HEAD" | "PUT",
    key: string | undefined,
    options: RequestOptions,
  ): Promise<Response> {
    const path = key === undefined
      ? `/${encodeSegment(this.bucket)}`
      : `/${encodeSegment(this.bucket)}/${encodeKeyPath(key)}`;
    const url = `${this.endpoint}${path}`;
    const subject = key === undefined ? `s3://${this.bucket}` : this.uriOf(key);
    const timeoutMs = this.#requestTimeoutMs +
      Math.ceil((options.body?.length ?? 0) / 65536) * 1000;
    return retry(async () => {
      await this.#waitOutPause(options.signal, subject);
      let failure = await this.#attempt(method, url, options, timeoutMs);
      if (failure instanceof Response) return failure;
      if (method === "HEAD" && failure.code === undefined && failure.kind !== "transient") {
        failure = await this.#explainHead(url, options, failure, timeoutMs);
      }
      if (failure.kind !== "transient") {
        throw refusalError(failure, this.#refusing, { method, subject });
      }
      throw new TransientFailure(failure);
    }, this.#retryOptions(method, key, subject, options.signal));
  }

  /**
   * How {@linkcode #request} retries: transient failures only, waiting at least what the
   * server asked; a throttling reply pauses every request of the store for the wait.
   */
  #retryOptions(
    method: string,
    key: string | undefined,
    subject: string,
    signal: AbortSignal | undefined,
  ): RetryOptions {
    let throttled = false;
    return {
      subject,
      classify: (error) => {
        if (!(error instanceof TransientFailure)) return { retry: false };
        throttled = error.failure.throttle;
        return { retry: true, afterMs: error.failure.retryAfterMs };
      },
      deadlineMs: this.#giveUpAfterMs,
      backoff: this.#backoff,
      signal,
      giveUp: (error: unknown, why: GiveUp): UploadError =>
        unreachableError((error as TransientFailure).failure, this.#refusing, {
          method,
          subject,
          attempts: why.attempts,
          elapsedMs: why.elapsedMs,
          askedMs: why.askedMs,
        }),
      interrupted: () => interruptedError(subject),
      onRetry: (notice) => {
        if (throttled) {
          this.#pausedUntil = Math.max(this.#pausedUntil, this.#now() + notice.delayMs);
        }
        this.#onRetry?.({
          key: key ?? "",
          attempt: notice.attempt,
          waitMs: notice.delayMs,
          reason: notice.reason,
        });
      },
      now: this.#now,
      sleep: this.#sleep,
      random: this.#random,
    };
  }

  /** Waits while the store is paused (a throttling reply to any request). */
  async #waitOutPause(signal: AbortSignal | undefined, subject: string): Promise<void> {
    const pause = this.#pausedUntil - this.#now();
    if (pause <= 0) return;
    await this.#sleep(pause, signal);
    if (signal?.aborted) throw interruptedError(subject);
  }

  /** One try: the response when it is a success (or allowed), else what failed. */
  async #attempt(
    method: string,
    url: string,
    options: RequestOptions,
    timeoutMs: number,
  ): Promise<Response | StorageFailure> {
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
      res = await this.#fetch(signed.url, {
        method,
        headers: signed.headers,
        body: options.body,
        signal,
        redirect: "manual",
      });
    } catch (error) {
      return networkFailure(error, {
        aborted: options.signal?.aborted ?? false,
        timedOutAfterMs: timeout.aborted ? timeoutMs : undefined,
      });
    }
    if ((res.status >= 200 && res.status < 300) || options.allowStatus.includes(res.status)) {
      return res;
    }
    let body = "";
    try {
      body = method === "HEAD" ? "" : await res.text();
    } catch (error) {
      return {
        kind: "transient",
        reason: `HTTP ${res.status}, then ${describeNetworkError(error)}`,
        throttle: false,
      };
    }
    return replyFailure({
      method,
      status: res.status,
      statusText: res.statusText,
      body,
      retryAfter: res.headers.get("retry-after"),
      nowMs: this.#now(),
    });
  }

  /**
   * A HEAD answer has no body, so a refusal comes without the S3 code that says why
   * (SignatureDoesNotMatch or InvalidAccessKeyId?). One GET of the first byte gets it.
   */
  async #explainHead(
    url: string,
    options: { signal?: AbortSignal },
    failure: StorageFailure,
    timeoutMs: number,
  ): Promise<StorageFailure> {
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

  #redact(text: string): string {
    const secrets = [this.#secretAccessKey, this.#sessionToken, this.#accessKeyId];
    return redactSecrets(text, secrets.filter((s): s is string => s !== undefined));
  }
}

function hexToBase64(hex: string): string {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}
