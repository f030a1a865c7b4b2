/**
 * Where images and reports go and what they are called there: `--objects-to
 * s3://BUCKET/PREFIX` parsed, the object key of each file
 * (`PREFIX/<device_id>/<folder_key>/<file name>`), its percent-encoded request path, its
 * Content-Type, and the URL a row gives it. Pure functions, no request.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";

/** Where objects go: the bucket and the key prefix of `s3://BUCKET/PREFIX`. */
export interface StorageLocation {
  /** The bucket name. */
  bucket: string;
  /** The key prefix without leading or trailing `/`; empty when none. */
  prefix: string;
}

/** The longest object key S3 accepts, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;

const UTF8 = new TextEncoder();

const USAGE_HINT = "Expected s3://BUCKET/PREFIX, e.g. --objects-to s3://lab-images/raw " +
  "(PREFIX may be empty: s3://lab-images)";

/**
 * Parses `--objects-to` (alias `--images-to`): `s3://BUCKET/PREFIX`. The prefix is taken
 * literally (no percent-decoding); leading and trailing `/` are dropped.
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
    throw new UploadError("usage", `Invalid --objects-to ${shown}: it must start with s3://`, {
      hint: USAGE_HINT,
    });
  }
  const bucket = match[1];
  if (bucket === "") {
    throw new UploadError("usage", `Invalid --objects-to ${shown}: the bucket name is missing`, {
      hint: USAGE_HINT,
    });
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(bucket)) {
    throw new UploadError(
      "usage",
      `Invalid --objects-to ${shown}: bucket name ${JSON.stringify(bucket)} must be 1 to 63 ` +
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
        `Invalid --objects-to ${shown}: the prefix has a control character`,
        {
          hint: USAGE_HINT,
        },
      );
    }
    const bad = prefix.split("/").find((s) => s === "" || s === "." || s === "..");
    if (bad !== undefined) {
      throw new UploadError(
        "usage",
        `Invalid --objects-to ${shown}: the prefix has an empty, "." or ".." part`,
        { hint: USAGE_HINT },
      );
    }
  }
  return { bucket, prefix };
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

/**
 * One path segment (a bucket name, a part of a key) encoded as {@linkcode encodeKeyPath}
 * encodes each part.
 *
 * @example
 * ```ts
 * encodeSegment("it's"); // "it%27s"
 * ```
 */
export function encodeSegment(segment: string): string {
  return encodeURIComponent(segment).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
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
  ".pdf": "application/pdf",
};

/**
 * How a stored object is named in a row: its public URL, or its key alone (private
 * buckets).
 */
export type ObjectUrlForm = "public" | "key";

/**
 * What a row says of a stored object. `public`: for a Supabase Storage S3 endpoint
 * (`https://<ref>.supabase.co/storage/v1/s3`), the public-bucket URL
 * `https://<ref>.supabase.co/storage/v1/object/public/<bucket>/<key>`, as the authors'
 * uploader wrote it; for any other endpoint its path-style URL `<endpoint>/<bucket>/<key>`.
 * The key's parts are percent-encoded ({@linkcode encodeKeyPath}). `key`: the key itself.
 *
 * @example
 * ```ts
 * objectUrl("https://abcd.supabase.co/storage/v1/s3", "pdfs", "d1/B 1/r.pdf", "public");
 * // "https://abcd.supabase.co/storage/v1/object/public/pdfs/d1/B%201/r.pdf"
 * objectUrl("http://127.0.0.1:9000", "lab", "d1/B1/a.jpg", "public");
 * // "http://127.0.0.1:9000/lab/d1/B1/a.jpg"
 * objectUrl("http://127.0.0.1:9000", "lab", "d1/B1/a.jpg", "key"); // "d1/B1/a.jpg"
 * ```
 */
export function objectUrl(
  endpoint: string,
  bucket: string,
  key: string,
  form: ObjectUrlForm,
): string {
  if (form === "key") return key;
  const base = endpoint.replace(/\/+$/, "");
  const supabase = /^(https?:\/\/[^/]+)\/storage\/v1\/s3$/i.exec(base);
  const path = `${encodeSegment(bucket)}/${encodeKeyPath(key)}`;
  return supabase ? `${supabase[1]}/storage/v1/object/public/${path}` : `${base}/${path}`;
}

/**
 * The Content-Type for a file name, by extension (any case).
 *
 * @example
 * ```ts
 * contentTypeOf("a.JPG"); // "image/jpeg"
 * ```
 */
export function contentTypeOf(name: string): string {
  const dot = name.lastIndexOf(".");
  return (dot >= 0 && CONTENT_TYPES[name.slice(dot).toLowerCase()]) || "application/octet-stream";
}
