/**
 * A folder's images and reports in the object store: which would go up
 * ({@linkcode planFolderObjects}, for `--dry-run`) and putting them all before the folder's
 * row is written ({@linkcode putFolderObjects}), in parallel within the store's limits,
 * skipping those already stored.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { DEFAULT_CONFIG } from "../../config.ts";
import { type ErrorKind, messageOf, UploadError } from "../core/errors.ts";
import { isImageName } from "../source/snapshot.ts";
import { contentTypeOf, objectKey, type StorageLocation } from "./keys.ts";
import type { ObjectHead, ObjectStore } from "./store.ts";

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
  /** Report extensions, lower case with the dot. Default: the config's (`.pdf`). */
  reportExtensions?: readonly string[];
  /** Stops the folder's requests; the call then throws kind `interrupted`. */
  signal?: AbortSignal;
}

/** What a stored file is to its row: an image (`images`) or a report (`pdf_url`). */
export type ObjectKind = "image" | "report";

/** One image or report of a folder after {@linkcode putFolderObjects}. */
export interface StoredObject {
  /** The file name. */
  name: string;
  /** An image or a report. */
  kind: ObjectKind;
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
  /** Every image of the folder, in name order, then every report, in name order. */
  objects: StoredObject[];
}

/** What {@linkcode planFolderObjects} says would be put. */
export interface FolderObjectPlan {
  /**
   * Every image of the folder with its key and size, in name order, then every report, in
   * name order.
   */
  objects: { name: string; kind: ObjectKind; key: string; size: number }[];
  /** The sum of their sizes. */
  bytes: number;
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

/** The extensions of what is stored, from the options or the config. */
interface StoredExtensions {
  imageExtensions?: readonly string[];
  reportExtensions?: readonly string[];
}

/** The files of a folder that are stored: its images, then its reports, each in name order. */
function storedFilesOf(
  folder: FolderFiles,
  options: StoredExtensions,
): { name: string; kind: ObjectKind; size: number }[] {
  const images = options.imageExtensions ?? DEFAULT_CONFIG.imageExtensions;
  const reports = options.reportExtensions ?? DEFAULT_CONFIG.reportExtensions;
  const byName = (a: { name: string }, b: { name: string }) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  const of = (kind: ObjectKind, extensions: readonly string[]) =>
    folder.files
      .filter((f) => isImageName(f.name, extensions))
      .map((f) => ({ name: f.name, kind, size: f.size }))
      .sort(byName);
  // A name both lists claim is an image.
  const stored = of("image", images);
  const taken = new Set(stored.map((f) => f.name));
  return stored.concat(of("report", reports).filter((f) => !taken.has(f.name)));
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
  options: { deviceId: string } & StoredExtensions,
): FolderObjectPlan {
  const objects = storedFilesOf(folder, options).map((f) => ({
    name: f.name,
    kind: f.kind,
    key: objectKey(location.prefix, options.deviceId, folder.key, f.name),
    size: f.size,
  }));
  return { objects, bytes: objects.reduce((sum, o) => sum + o.size, 0) };
}

/**
 * What the tracker records as where a folder's objects went: the store (its `display`),
 * and, when reports are stored too, their extensions. A folder recorded before reports
 * were stored (or under other extensions) then differs, so it is read again and its
 * reports go up; its images, recorded as stored, are not put again.
 *
 * @example
 * ```ts
 * objectsDestination("s3://lab/raw at https://x", [".pdf"]); // "s3://lab/raw at https://x; reports .pdf"
 * objectsDestination("s3://lab/raw at https://x", []); // "s3://lab/raw at https://x"
 * ```
 */
export function objectsDestination(display: string, reportExtensions: readonly string[]): string {
  return reportExtensions.length === 0
    ? display
    : `${display}; reports ${reportExtensions.join(" ")}`;
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
 * Puts every image and report of one folder (extensions from the config, any case) into
 * the store, in parallel within the store's limits, skipping files already stored: those
 * the tracker vouches for through `isStored`, else (with `headBeforePut`) those whose
 * stored size and MD5 match. A changed file (same name, new bytes) replaces its object.
 *
 * Resolves only when every file is stored, so the folder's row can be written after it;
 * on the first failure the folder's remaining files are not started.
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
  const images = storedFilesOf(folder, options);
  const keys = images.map((f) => store.keyFor(options.deviceId, folder.key, f.name));
  const stop = new AbortController();
  const put: FolderPut = {
    store,
    folder,
    options,
    headFirst: options.headBeforePut ?? options.isStored === undefined,
    stop,
    signal: options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal,
    errors: [],
  };
  const results = await Promise.all(
    images.map((image, i) => putImage(put, { ...image, key: keys[i] })),
  );
  if (options.signal?.aborted) {
    throw new UploadError("interrupted", `Interrupted while storing the files of ${folder.path}`, {
      subject: folder.path,
    });
  }
  if (put.errors.length > 0) {
    throw put.errors.reduce((a, b) => (SEVERITY[b.kind] ?? 0) > (SEVERITY[a.kind] ?? 0) ? b : a);
  }
  return { objects: results as StoredObject[] };
}

/** One folder's put in progress, shared by its images. */
interface FolderPut {
  store: ObjectStore;
  folder: FolderFiles;
  options: PutFolderOptions;
  /** Ask the store (HEAD) before a put. */
  headFirst: boolean;
  /** Stops the folder's other images after a failure. */
  stop: AbortController;
  /** The caller's signal and `stop`. */
  signal: AbortSignal;
  /** What failed, for the folder's outcome. */
  errors: UploadError[];
}

/**
 * Stores one image within the store's budget: its object, or undefined when it failed
 * (the failure is in `put.errors` and the folder's other images are stopped) or the folder
 * stopped before its turn.
 */
async function putImage(
  put: FolderPut,
  image: { name: string; kind: ObjectKind; size: number; key: string },
): Promise<StoredObject | undefined> {
  const { store, folder, options, signal } = put;
  const { name, key } = image;
  let release: () => void;
  try {
    release = await store.reserve(image.size, signal);
  } catch {
    // The folder stopped (a sibling failed or the caller aborted) while this image
    // waited for its turn; the outcome is decided by the caller from `errors` and the signal.
    return undefined;
  }
  try {
    const bytes = await readImage(folder, name);
    const md5 = createHash("md5").update(bytes).digest("hex");
    const known = options.isStored?.(name, bytes.length, md5) ||
      (put.headFirst && isSameObject(await store.head(key, signal), bytes.length, md5));
    if (!known) await store.put(key, bytes, { md5, contentType: contentTypeOf(name), signal });
    return { name, kind: image.kind, key, size: bytes.length, md5, put: !known };
  } catch (error) {
    const wrapped = error instanceof UploadError && error.kind !== "folder"
      ? error
      : new UploadError(
        "folder",
        `Cannot store ${image.kind} ${JSON.stringify(name)} of ${folder.path}: ${
          lowerFirst(messageOf(error))
        }`,
        { subject: join(folder.path, name), cause: error },
      );
    if (!(wrapped.kind === "interrupted" && !options.signal?.aborted)) put.errors.push(wrapped);
    put.stop.abort();
    return undefined;
  } finally {
    release();
  }
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
      subject: join(folder.path, name),
      cause: error,
    });
  }
}
