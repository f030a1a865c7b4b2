/**
 * Object storage for a folder's images and reports (`--objects-to s3://BUCKET/PREFIX`, alias
 * `--images-to`): puts each file over the S3 protocol into any S3-compatible store,
 * Supabase Storage's S3 endpoint (`https://<project-ref>.supabase.co/storage/v1/s3`,
 * path-style) included.
 *
 * Each image and report becomes the object `PREFIX/<device_id>/<folder_key>/<file name>`. This module
 * is the stage's one entry point; the work is done by:
 *
 * - keys.ts: `--objects-to` parsed, object keys, their request paths, Content-Types, the
 *   URLs rows give them;
 * - store.ts: the signed S3 client {@linkcode ObjectStore}, its retries (through
 *   lib/core/retry.ts) and its limits (one lib/core/budget.ts budget);
 * - replies.ts: S3 error bodies, what a status and code mean, `Retry-After`, the errors
 *   and hints;
 * - env.ts: the store from the environment ({@linkcode storeFromEnv});
 * - folder.ts: a folder's images planned ({@linkcode planFolderObjects}) and put
 *   ({@linkcode putFolderObjects}).
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

export {
  contentTypeOf,
  encodeKeyPath,
  MAX_KEY_BYTES,
  objectKey,
  objectUrl,
  type ObjectUrlForm,
  parseImagesTo,
  type StorageLocation,
} from "./keys.ts";
export {
  classifyStorageReply,
  describeNetworkError,
  parseRetryAfter,
  parseS3Error,
  redactSecrets,
} from "./replies.ts";
export {
  type ObjectHead,
  ObjectStore,
  type ObjectStoreOptions,
  type RetryEvent,
  type StoreSettings,
} from "./store.ts";
export { parseEndpoint, storeFromEnv } from "./env.ts";
export {
  type FolderFiles,
  type FolderObjectPlan,
  type FolderObjects,
  isSameObject,
  type ObjectKind,
  objectsDestination,
  planFolderObjects,
  putFolderObjects,
  type PutFolderOptions,
  type StoredObject,
} from "./folder.ts";
