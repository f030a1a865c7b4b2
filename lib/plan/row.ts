/**
 * Folder -> row: turns a scan snapshot into the row uploaded for it. Reads one file, the
 * folder's stats.json; everything else comes from the snapshot's metadata.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { markerNames, type UploaderConfig } from "../../config.ts";
import { UploadError } from "../core/errors.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import { isImageName } from "../source/snapshot.ts";
import { rowStatementBytes } from "../sink/postgres/quote.ts";
import { rowJsonAndRaw } from "../sink/payload.ts";
import type { UploadRow } from "../sink/columns.ts";

/** What {@linkcode buildRow} needs from the configuration. */
export type RowConfig = Pick<
  UploaderConfig,
  | "imageExtensions"
  | "reportExtensions"
  | "fileNameTime"
  | "statsFileName"
  | "successMarker"
  | "failedMarker"
  | "legacyMarkers"
  | "testStatus"
>;

/** A row ready to upload, with the size of its JSON text. */
export interface BuiltRow {
  row: UploadRow;
  /** The row as JSON text (what travels to the server). */
  json: string;
  /** Bytes the row adds to an upsert statement (see `rowStatementBytes`). */
  bytes: number;
  /** Where the stats file's text sits in `json`. */
  rawSpan: readonly [number, number];
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The largest stats.json uploaded (16 MiB). Test statistics are kilobytes; a file this
 * large is almost surely not one, and parsing it would take several times its size in
 * memory.
 */
export const MAX_STATS_BYTES = 16 * 1024 * 1024;

/**
 * Reads and parses a folder's stats file.
 *
 * @returns the parsed JSON value and the raw bytes, or `null` when the folder has none.
 * @throws {UploadError} kind `folder` naming the file and the reason: vanished, not
 * UTF-8, empty, not JSON, or holding a NUL character (which PostgreSQL cannot store).
 */
export function readStats(
  folderPath: string,
  statsFileName: string,
  expectedSize?: number,
): { value: unknown; bytes: Uint8Array; text: string } {
  const file = join(folderPath, statsFileName);
  if (expectedSize !== undefined && expectedSize > MAX_STATS_BYTES) {
    throw tooLarge(file, expectedSize);
  }
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(file);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "it vanished before it could be read"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : String(error);
    throw new UploadError("folder", `Cannot read ${file}: ${reason}`, { subject: folderPath });
  }
  if (bytes.length > MAX_STATS_BYTES) throw tooLarge(file, bytes.length);
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw new UploadError("folder", `Cannot parse ${file}: not valid UTF-8`, {
      subject: folderPath,
    });
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (text.trim() === "") {
    throw new UploadError("folder", `Cannot parse ${file}: the file is empty`, {
      subject: folderPath,
    });
  }
  let value: unknown;
  try {
    value = MAYBE_INEXACT_NUMBER.test(text) ? JSON.parse(text, keepExactNumbers) : JSON.parse(text);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new UploadError("folder", `Cannot parse ${file}: ${detail}`, { subject: folderPath });
  }
  if ((text.includes("\\u0000") || text.includes("\0")) && containsNul(value)) {
    throw new UploadError(
      "folder",
      `Cannot upload ${file}: it contains a NUL character (\\u0000), which PostgreSQL cannot store`,
      { subject: folderPath },
    );
  }
  if (/\\u[dD][89a-fA-F]/.test(text) && !wellFormed(value)) {
    throw new UploadError(
      "folder",
      `Cannot upload ${file}: it contains an unpaired UTF-16 surrogate escape (such as ` +
        `\\ud800), which is not valid Unicode text and which PostgreSQL cannot store`,
      { subject: folderPath },
    );
  }
  return { value, bytes, text };
}

/** The refusal of a stats file over the size limit, checked before it is read or parsed. */
function tooLarge(file: string, size: number): UploadError {
  return new UploadError(
    "folder",
    `Cannot upload ${file}: it holds ${(size / 1048576).toFixed(1)} MiB, more than ` +
      `the ${MAX_STATS_BYTES / 1048576} MiB a stats file may have`,
    { subject: dirname(file) },
  );
}

/** Whether every string and key in a parsed JSON value is well-formed UTF-16. */
function wellFormed(value: unknown): boolean {
  if (typeof value === "string") return value.isWellFormed();
  if (Array.isArray(value)) return value.every(wellFormed);
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (!k.isWellFormed() || !wellFormed(v)) return false;
    }
  }
  return true;
}

/** Whether any string or key in a parsed JSON value holds U+0000. */
function containsNul(value: unknown): boolean {
  if (typeof value === "string") return value.includes("\0");
  if (Array.isArray(value)) return value.some(containsNul);
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k.includes("\0") || containsNul(v)) return true;
    }
  }
  return false;
}

/** Options of {@linkcode buildRow}. */
export interface BuildRowOptions {
  /** The key is only the folder's name: the server must not let it overwrite another folder's row. */
  strict?: boolean;
  /**
   * Object-storage keys of the folder's images (`--objects-to`), in image order: the row
   * records them, and they count for its content hash (a row gains them when images are
   * first stored).
   */
  imageObjects?: readonly string[];
  /**
   * The stored images' URLs (`--images-as urls`), in image order: the row's `images` holds
   * them instead of the file names.
   */
  imageUrls?: readonly string[];
  /**
   * The stored reports' URLs (`--objects-to`), in report order: `pdf_url` is the first (null
   * without a report), `metadata.report_urls` lists them all. Absent: `pdf_url` is not sent.
   */
  reportUrls?: readonly string[];
  /**
   * The folder goes without the file `--ready-when` waits for (past `--ready-timeout`):
   * test_status `incomplete`.
   */
  incomplete?: boolean;
}

/**
 * Builds the upload row for a folder.
 *
 * - `images`: image file names, sorted; `files_processed`: every file name except markers.
 * - `test_results`: the stats.json value, or null; `test_status` from the config's rule.
 * - `test_date`: the newest time stamp the config's `fileNameTime` reads from the images'
 *   names, else from the reports' names; else the mtime of stats.json, else of the newest
 *   image, else null.
 * - `pdf_url` (with `reportUrls`): the first report's URL; `metadata.reports`: every report's
 *   name (PDFs by default), `metadata.report_urls` their URLs.
 * - `metadata.folder_hash`: the fingerprint taken by the scan (before this read);
 *   `metadata.content_hash`: md5 of what the row carries (stats bytes, file names and sizes),
 *   which decides whether the server rewrites an existing row; `metadata.source_path`: the
 *   folder's path on this device; `metadata.computed_test_status`: the rule's status (a
 *   rewrite keeps a status someone set by hand, see `buildUpsertStatement`).
 * - The JSON text carries the stats file's own text (not a re-serialization).
 *
 * @throws {UploadError} kind `folder` when stats.json cannot be used (see {@linkcode readStats}),
 *   or is no regular file (a FIFO, a directory, a link).
 */
export function buildRow(
  snapshot: FolderSnapshot,
  config: RowConfig,
  now = new Date(),
  options: BuildRowOptions = {},
): BuiltRow {
  if (snapshot.statsNotFile) {
    throw new UploadError(
      "folder",
      `Cannot read ${join(snapshot.path, config.statsFileName)}: it is ${snapshot.statsNotFile}, ` +
        `not a regular file`,
      { subject: snapshot.path },
    );
  }
  const markers = markerNames(config);
  const files = snapshot.files.filter((f) => !markers.has(f.name));
  const images = files.filter((f) => isImageName(f.name, config.imageExtensions));
  const statsEntry = files.find((f) => f.name === config.statsFileName);
  let stats: unknown = null;
  let statsBytes: Uint8Array | null = null;
  let statsText: string | null = null;
  if (statsEntry) {
    const read = readStats(snapshot.path, config.statsFileName, statsEntry.size);
    stats = read.value;
    statsBytes = read.bytes;
    statsText = read.text;
  }
  const imageNames = images.map((f) => f.name); // snapshot files are sorted by name
  const reports = files.filter((f) =>
    !isImageName(f.name, config.imageExtensions) && isImageName(f.name, config.reportExtensions)
  ).map((f) => f.name);
  const dateMs = testDateOf(config, images, reports, statsEntry);
  const content = createHash("md5");
  if (statsBytes) content.update(statsBytes);
  // The rest in one update: the digest of the parts in order, in one call.
  let rest = "\0";
  for (const f of files) rest += `${f.name}\0${f.size}\n`;
  if (options.imageObjects) rest += `objects\0${options.imageObjects.join("\0")}`;
  if (options.imageUrls) rest += `\0image urls\0${options.imageUrls.join("\0")}`;
  // No report, no change: a row stored before reports were has the same content then.
  if (options.reportUrls && options.reportUrls.length > 0) {
    rest += `\0report urls\0${options.reportUrls.join("\0")}`;
  }
  if (options.incomplete) rest += "\0incomplete";
  content.update(rest);
  const totalBytes = files.reduce((sum, f) => sum + f.size, 0);
  const testStatus = options.incomplete
    ? "incomplete"
    : config.testStatus({ stats, images: imageNames, reports });
  const row: UploadRow = {
    folder_key: snapshot.key,
    folder_name: snapshot.name,
    images: options.imageUrls ? [...options.imageUrls] : imageNames,
    test_results: stats,
    test_status: testStatus,
    test_date: dateMs === null ? null : new Date(dateMs).toISOString(),
    metadata: {
      folder_hash: snapshot.fingerprint,
      content_hash: content.digest("hex"),
      total_images: imageNames.length,
      files_processed: files.map((f) => f.name),
      total_bytes: totalBytes,
      upload_timestamp: now.toISOString(),
      source_path: snapshot.path,
      // What the rule gave: a status that differs from it on the server was set by hand.
      computed_test_status: testStatus,
      ...(reports.length > 0 ? { reports } : {}),
      ...(options.reportUrls && reports.length > 0 ? { report_urls: [...options.reportUrls] } : {}),
      ...(options.imageUrls ? { images_as: "urls" } : {}),
    },
  };
  if (options.strict) row.strict = true;
  if (options.imageObjects) row.image_objects = [...options.imageObjects];
  if (options.reportUrls) row.pdf_url = options.reportUrls[0] ?? null;
  // null stats text also stands for a file holding just `null` (no statistics).
  const { json, rawSpan } = rowJsonAndRaw(row, stats === null ? null : statsText);
  return { row, json, bytes: rowStatementBytes(json), rawSpan };
}

/**
 * A row's test_date in ms: the newest device time stamp in the images' names, else in the
 * reports' names; else the mtime of stats.json, else of the newest image; else null.
 */
function testDateOf(
  config: Pick<RowConfig, "fileNameTime">,
  images: readonly { name: string; mtimeMs: number }[],
  reports: readonly string[],
  statsEntry: { mtimeMs: number } | undefined,
): number | null {
  const newestStamp = (names: readonly string[]): number | null => {
    let newest: number | null = null;
    for (const name of names) {
      const at = config.fileNameTime(name);
      if (at !== null && Number.isFinite(at) && (newest === null || at > newest)) newest = at;
    }
    return newest;
  };
  const stamped = newestStamp(images.map((f) => f.name)) ?? newestStamp(reports);
  if (stamped !== null) return stamped;
  if (statsEntry) return statsEntry.mtimeMs;
  let newest: number | null = null;
  for (const img of images) if (newest === null || img.mtimeMs > newest) newest = img.mtimeMs;
  return newest;
}

/**
 * Whether a JSON text may hold a number a double cannot represent exactly: 16 or more
 * digits (and dots) in a row, or an exponent. A decimal of 15 significant digits or fewer
 * always survives the trip through a double; matches inside strings only cost a reviver.
 */
const MAYBE_INEXACT_NUMBER = /\d[\d.]{15,}|\d[eE][-+]?\d/;

const JSON_WITH_RAW = JSON as unknown as { rawJSON(text: string): unknown };

/**
 * JSON.parse reviver keeping the file's own digits for numbers a double would change
 * (12345678901234567890, 0.1000000000000000055511151231257827, 1e400 which would become
 * null, 1e-400 which would become 0): they travel as raw JSON, so jsonb stores the value
 * the file holds. Numbers a double holds exactly stay plain numbers for the status rule.
 */
function keepExactNumbers(_key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value !== "number" || context?.source === undefined) return value;
  const exact = decimalDigits(context.source);
  const parsed = decimalDigits(String(value));
  if (exact !== undefined && exact === parsed) return value;
  return JSON_WITH_RAW.rawJSON(context.source);
}

/**
 * A number's decimal value as `digits@exponent` (no leading or trailing zeros, sign
 * dropped for zero), so "1.10", "1.1" and "11e-1" compare equal; undefined for text that
 * is not a finite decimal ("Infinity").
 */
function decimalDigits(text: string): string | undefined {
  const match = /^(-?)(\d+)(?:\.(\d*))?(?:[eE]([-+]?\d+))?$/.exec(text);
  if (!match) return undefined;
  const [, sign, whole, fraction = "", exponent = "0"] = match;
  const all = whole + fraction;
  const lead = all.search(/[1-9]/);
  if (lead < 0) return "0";
  const digits = all.slice(lead).replace(/0+$/, "");
  const scale = Number(exponent) + whole.length - lead;
  return `${sign}${digits}@${scale}`;
}
