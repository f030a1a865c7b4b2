/**
 * A fixture of what users migrate from: the original authors' later version, as its own
 * repository describes it (their latest `device_test` after the PDF migration, the rows
 * their REST uploader writes, and a data folder shaped like the one a device leaves, with
 * the markers of their uploaders).
 *
 * - {@linkcode UPSTREAM_DDL}: `devices` and `device_test` with their columns in order, the
 *   unique key by folder name, the CHECK on `test_status`, the GIN and btree indexes, the
 *   `updated_at` trigger and the PDF migration's guarded column add.
 * - {@linkcode writeUpstreamTree}: 33 `BatchN` folders (stats.json, timestamped images and
 *   PDFs, 14 with images but no stats), a report archive named by a number holding nine
 *   PDFs, two JSON files at the top, and `upload_success.json` / `upload_failed.json`
 *   markers as their uploaders leave them.
 * - {@linkcode upstreamRowsSql}: one INSERT per folder as their REST uploader POSTs it
 *   (public storage URLs in `images`, `metadata.image_urls`, `pdf_url`), then a lab
 *   person's hand-set `incomplete` on four rows.
 * - {@linkcode restInsertSql}: the uploader's own INSERT of one folder (no `folder_key`).
 *
 * @module
 */

import { join } from "node:path";
import { writeTree } from "./tree.ts";
import type { TreeSpec } from "./tree.ts";

/** The project URL their storage URLs start with. */
export const UPSTREAM_PROJECT = "https://abcdefghijklmnop.supabase.co";

/** The device id of their sample config file. */
export const UPSTREAM_DEVICE = "7d3c2b1a-6f5e-4d4c-8b3a-2f1e0d9c8b7a";

/** Their sample config's name and type. */
export const UPSTREAM_NAME = "TEST";
export const UPSTREAM_TYPE = "image_analyzer";

/**
 * Their latest schema: `devices` (an id and a few descriptive columns) and `device_test` as
 * it stands after their PDF migration, with its constraints, indexes and trigger.
 */
export const UPSTREAM_DDL = `
create table devices (
  id uuid primary key default gen_random_uuid(),
  name text,
  device_type text,
  location text,
  created_at timestamptz default now()
);
create or replace function update_updated_at_column() returns trigger
language plpgsql as $fn$
begin
  new.updated_at := now();
  return new;
end
$fn$;
create table device_test (
  id uuid primary key default gen_random_uuid(),
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  folder_name text not null,
  images text[] default '{}',
  pdf_url text,
  device_id uuid references devices (id),
  device_name text,
  device_type text,
  test_results jsonb,
  test_date timestamptz,
  test_status text,
  upload_batch text,
  notes text,
  metadata jsonb default '{}',
  data jsonb,
  data_type text,
  constraint unique_folder_device unique (folder_name, device_id),
  constraint device_test_test_status_check
    check (test_status in ('pending', 'passed', 'failed', 'incomplete'))
);
create index idx_device_test_data on device_test using gin (data);
create index idx_device_test_metadata on device_test using gin (metadata);
create index idx_device_test_test_results on device_test using gin (test_results);
create index idx_device_test_data_type on device_test (data_type);
create index idx_device_test_device_id on device_test (device_id);
create index idx_device_test_folder_name on device_test (folder_name);
create index idx_device_test_test_status on device_test (test_status);
create index idx_device_test_test_date on device_test (test_date);
create trigger update_device_test_updated_at before update on device_test
  for each row execute function update_updated_at_column();
-- The PDF migration: the column only when it is not there yet, its index, a comment.
do $mig$
begin
  if not exists (select 1 from information_schema.columns
      where table_name = 'device_test' and column_name = 'pdf_url') then
    alter table device_test add column pdf_url text;
  end if;
end
$mig$;
create index if not exists idx_device_test_pdf_url on device_test (pdf_url);
comment on column device_test.pdf_url is 'Public URL of the folder''s PDF report';
`;

/** One image of a folder. */
export interface UpstreamImage {
  name: string;
  bytes: number;
  /** Its upload to storage failed: the row and marker hold the bare name. */
  failed: boolean;
}

/** One folder of the tree, as the fixture made it. */
export interface UpstreamFolder {
  name: string;
  /** The stats.json value, or null without one. */
  stats: Record<string, number[][]> | null;
  images: UpstreamImage[];
  pdfs: string[];
  /** Which marker their uploader left. */
  marker: "success" | "failed";
  /** Their uploader wrote a row (false: the row's insert failed). */
  hasRow: boolean;
  /** A lab person set the row's test_status to `incomplete` by hand. */
  incomplete: boolean;
  /** Unix seconds of their upload (upload_batch, test_date, timestamps). */
  uploadedAt: number;
}

/** The tree {@linkcode writeUpstreamTree} wrote. */
export interface UpstreamTree {
  root: string;
  /** The 33 `BatchN` folders, in name order. */
  batches: UpstreamFolder[];
  /** The report archive (nine PDFs, nothing else). */
  archive: UpstreamFolder;
}

/** Percent-encoding as their uploader applies it to a file name (all but unreserved bytes). */
export function percentEncode(name: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(name)) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9_.~-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** The public URL of a stored object: `<project>/storage/v1/object/public/<bucket>/<path>`. */
export function publicUrl(bucket: string, device: string, folder: string, file: string): string {
  return `${UPSTREAM_PROJECT}/storage/v1/object/public/${bucket}/${device}/${folder}/${
    percentEncode(file)
  }`;
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** `YYYY-MM-DD HH:MM:SS` of a UTC time, as the device names its files. */
function stamp(ms: number, seconds = true): string {
  const d = new Date(ms);
  const date = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return seconds ? `${date} ${time}:${pad(d.getUTCSeconds())}` : `${date} ${time}`;
}

/** A stats.json value: seven statistics, each an array of arrays of three numbers. */
function statsFor(i: number, failed: boolean): Record<string, number[][]> {
  const triple = (k: number) => [k + i / 10, k * 2 + i / 100, k * 3 + 0.5];
  const rows = (n: number, k: number) => Array.from({ length: n }, (_, j) => triple(k + j));
  return {
    result: failed ? [] : rows(2, 1),
    mean: rows(2, 10),
    "standard deviation": rows(2, 3),
    variance: rows(2, 9),
    max: rows(2, 40),
    min: rows(2, 1),
    range: rows(2, 39),
  };
}

/** The folders: 33 batches, shaped as the UPSTREAM facts describe. */
function planFolders(): UpstreamFolder[] {
  const day = Date.UTC(2025, 5, 2, 16, 0, 0);
  const folders: UpstreamFolder[] = [];
  for (let i = 0; i < 33; i++) {
    const start = day + i * 3_600_000;
    const count = i % 5; // 0 to 4 images
    // Images minutes apart within a folder (16:16:31, 16:21:53, 16:22:27, 16:28:18).
    const offsets = [991, 1313, 1347, 1698];
    const images: UpstreamImage[] = Array.from({ length: count }, (_, k) => ({
      name: `${stamp(start + offsets[k] * 1000)}.jpg`,
      bytes: 46_000 + 97 * k + i,
      failed: false,
    }));
    folders.push({
      name: `Batch${22 + i}`,
      stats: statsFor(i, i % 4 === 3),
      images,
      pdfs: i % 3 === 2 ? [] : [`${stamp(start + 1800_000, false)}.pdf`],
      marker: "success",
      hasRow: true,
      incomplete: false,
      uploadedAt: Math.floor((start + 7200_000) / 1000),
    });
  }
  // Of the 26 with images: 14 without stats.json; 15 failed markers (eight whose row went
  // in with one image's upload failed, seven whose row's insert failed), 18 success markers
  // (the archive makes 19).
  const withImages = folders.filter((f) => f.images.length > 0);
  withImages.forEach((f, k) => {
    if (k % 2 === 0 || k === 25) f.stats = null;
    if (k % 4 === 1 || k === 24) {
      f.marker = "failed";
      f.images[f.images.length - 1].failed = true;
    } else if ([2, 3, 7, 11, 15, 19, 23].includes(k)) {
      f.marker = "failed";
      f.hasRow = false;
    }
  });
  // Four rows a lab person marked incomplete by hand: three with images, one without.
  const success = folders.filter((f) => f.hasRow && f.marker === "success");
  for (const f of success.filter((f) => f.images.length > 0).slice(0, 3)) f.incomplete = true;
  success.find((f) => f.images.length === 0)!.incomplete = true;
  return folders;
}

/** Their marker for a folder, as their uploaders write it. */
function markerFor(f: UpstreamFolder, root: string, device: string): unknown {
  const uploaded = f.images.filter((img) => !img.failed);
  return {
    timestamp: new Date(f.uploadedAt * 1000).toISOString(),
    folder_name: f.name,
    folder_path: join(root, f.name),
    table_name: "device_test",
    bucket_name: "images",
    json_upload: {
      success: f.hasRow,
      filename: f.stats ? "stats.json" : null,
      error: f.hasRow ? null : "HTTP 409: duplicate key value violates unique constraint",
      data_preview: f.stats ? JSON.stringify(f.stats).slice(0, 100) : null,
    },
    image_upload: {
      total_images: f.images.length,
      successful_uploads: uploaded.length,
      failed_uploads: f.images.length - uploaded.length,
      uploaded_images: uploaded.map((img) => ({
        filename: img.name,
        storage_path: `${device}/${f.name}/${img.name}`,
        public_url: publicUrl("images", device, f.name, img.name),
        size_bytes: img.bytes,
      })),
      failed_images: f.images.filter((img) => img.failed).map((img) => img.name),
    },
    summary: `${uploaded.length}/${f.images.length} images uploaded` +
      (f.hasRow ? ", data saved" : ", data not saved"),
  };
}

/** Options of {@linkcode writeUpstreamTree}. */
export interface UpstreamTreeOptions {
  /** The device id their config names (in the markers' storage paths). */
  device?: string;
  /** Leave their markers out (a tree copied without them). */
  markers?: boolean;
  /** File mtimes (ms). Default: 2025-06-02, long settled. */
  mtime?: number;
}

/**
 * Writes a data folder shaped like the authors' own under `root`.
 *
 * @returns what it wrote, for {@linkcode upstreamRowsSql} and the tests' expectations.
 */
export function writeUpstreamTree(root: string, options: UpstreamTreeOptions = {}): UpstreamTree {
  const device = options.device ?? UPSTREAM_DEVICE;
  const mtime = options.mtime ?? Date.UTC(2025, 5, 2, 18, 0, 0);
  const batches = planFolders();
  const archive: UpstreamFolder = {
    name: "1748880000",
    stats: null,
    images: [],
    pdfs: Array.from({ length: 9 }, (_, k) => `2025-06-0${k + 1} 09:30.pdf`),
    marker: "success",
    hasRow: true,
    incomplete: false,
    uploadedAt: 1748890000,
  };
  const spec: TreeSpec = {
    "last_batch.json": { text: "54\n", mtime },
    "settings.json": { text: "", mtime },
  };
  for (const f of [...batches, archive]) {
    if (f.stats) spec[`${f.name}/stats.json`] = { json: f.stats, mtime };
    for (const img of f.images) spec[`${f.name}/${img.name}`] = { bytes: img.bytes, mtime };
    for (const pdf of f.pdfs) spec[`${f.name}/${pdf}`] = { bytes: 2048, mtime };
    if (options.markers !== false) {
      const marker = f.marker === "success" ? "upload_success.json" : "upload_failed.json";
      spec[`${f.name}/${marker}`] = { json: markerFor(f, root, device), mtime };
    }
  }
  writeTree(root, spec);
  return { root, batches, archive };
}

/** An SQL literal (test data only: quotes doubled, no backslashes in this fixture). */
function lit(value: string | null): string {
  return value === null ? "null" : `'${value.replaceAll("'", "''")}'`;
}

function textArray(items: readonly string[]): string {
  return `array[${items.map(lit).join(", ")}]::text[]`;
}

/** The status their uploader computes: no stats -> pending, non-empty result -> passed. */
function upstreamStatus(f: UpstreamFolder): string {
  if (!f.stats) return "pending";
  return f.stats.result.length > 0 ? "passed" : "failed";
}

/** Options of {@linkcode restInsertSql} and {@linkcode upstreamRowsSql}. */
export interface UpstreamRowOptions {
  device?: string;
  name?: string;
  type?: string;
}

/**
 * The INSERT their REST uploader's POST amounts to for one folder: the columns it sends,
 * no `folder_key` (their table has none), images as public URLs (bare names for failed
 * uploads), the first PDF as `pdf_url`.
 */
export function restInsertSql(f: UpstreamFolder, options: UpstreamRowOptions = {}): string {
  const device = options.device ?? UPSTREAM_DEVICE;
  const images = f.images.map((img) =>
    img.failed ? img.name : publicUrl("images", device, f.name, img.name)
  );
  const pdf = f.pdfs[0];
  const pdfUrl = pdf === undefined ? null : publicUrl("pdfs", device, f.name, pdf);
  const when = new Date(f.uploadedAt * 1000).toISOString();
  const files = [...(f.stats ? ["stats.json"] : []), ...f.images.map((i) => i.name), ...f.pdfs]
    .sort();
  const metadata = {
    upload_timestamp: when,
    total_images: f.images.length,
    has_pdf: pdf !== undefined,
    pdf_filename: pdf ?? null,
    files_processed: files,
    folder_hash: `h${f.uploadedAt.toString(16)}`,
    image_urls: images,
    pdf_url: pdfUrl,
    device_id: device,
    device_name: options.name ?? UPSTREAM_NAME,
    device_type: options.type ?? UPSTREAM_TYPE,
  };
  return `insert into device_test (folder_name, device_id, device_name, device_type, images,
  pdf_url, test_results, test_status, test_date, upload_batch, data_type, metadata)
values (${lit(f.name)}, ${lit(device)}, ${lit(options.name ?? UPSTREAM_NAME)}, ${
    lit(options.type ?? UPSTREAM_TYPE)
  }, ${textArray(images)}, ${lit(pdfUrl)}, ${
    f.stats ? `${lit(JSON.stringify(f.stats))}::jsonb` : "null"
  }, ${lit(upstreamStatus(f))}, ${lit(when)}, ${lit(`batch_${f.uploadedAt}`)}, 'image_analysis', ${
    lit(JSON.stringify(metadata))
  }::jsonb);\n`;
}

/**
 * The table as their REST uploader leaves it for `tree`: the device's row in `devices`
 * (id only, as their setup script registers it), one INSERT per folder that has a row,
 * created and updated at the upload time, then four rows set to `incomplete` by hand with
 * a note. Run after {@linkcode UPSTREAM_DDL}.
 */
export function upstreamRowsSql(tree: UpstreamTree, options: UpstreamRowOptions = {}): string {
  const device = options.device ?? UPSTREAM_DEVICE;
  const parts = [`insert into devices (id) values (${lit(device)}) on conflict do nothing;\n`];
  for (const f of [...tree.batches, tree.archive]) {
    if (!f.hasRow) continue;
    parts.push(restInsertSql(f, options));
  }
  // Uploaded long ago: the timestamps are the upload's, not the fixture's.
  parts.push(
    `alter table device_test disable trigger update_device_test_updated_at;\n` +
      `update device_test set created_at = test_date, updated_at = test_date ` +
      `where device_id = ${lit(device)};\n` +
      `alter table device_test enable trigger update_device_test_updated_at;\n`,
  );
  const hand = [...tree.batches, tree.archive].filter((f) => f.incomplete).map((f) => f.name);
  if (hand.length > 0) {
    parts.push(
      `update device_test set test_status = 'incomplete', notes = 'checked by hand: PDF missing' ` +
        `where device_id = ${lit(device)} and folder_name in (${hand.map(lit).join(", ")});\n`,
    );
  }
  return parts.join("");
}
