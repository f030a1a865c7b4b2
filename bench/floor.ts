/**
 * The floors the uploader is measured against: `find` (walk + stat of every file) and
 * `psql \copy` of the very rows the uploader would send into an empty table with the
 * same columns, keys and indexes.
 *
 * @module
 */

import { DEFAULT_CONFIG, markerNames } from "../config.ts";
import { buildRow } from "../lib/folder.ts";
import { connectionFromUrl } from "../lib/target.ts";
import { scanFolders } from "../lib/scan.ts";
import { type Measured, runMeasured, timeCommand } from "./proc.ts";

/** The columns the upsert statement writes, in COPY order. */
export const COPY_COLUMNS = [
  "device_id",
  "device_name",
  "device_type",
  "folder_key",
  "folder_name",
  "images",
  "test_results",
  "test_status",
  "test_date",
  "upload_batch",
  "metadata",
  "data_type",
] as const;

/** Runs `find <tree> -type f -printf '%h %f %s %T@\n'` with its output sent to /dev/null. */
export function findFloor(tree: string): Promise<Measured> {
  return timeCommand("find", [tree, "-type", "f", "-printf", "%h %f %s %T@\\n"], {
    discardStdout: true,
  });
}

/** Escapes a value for COPY's text format (`\N` for null). */
export function copyText(value: string | null): string {
  if (value === null) return "\\N";
  return value.replace(
    /[\\\n\r\t]/g,
    (c) => c === "\\" ? "\\\\" : c === "\n" ? "\\n" : c === "\r" ? "\\r" : "\\t",
  );
}

/** A text[] literal with every element double-quoted. */
export function arrayLiteral(items: readonly string[]): string {
  return `{${items.map((s) => `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`).join(",")}}`;
}

/** What {@linkcode writeCopyFile} wrote. */
export interface CopyFile {
  rows: number;
  bytes: number;
  /** Wall time of scanning and building (not part of the floor). */
  buildMs: number;
}

/**
 * Scans `tree` as the uploader does, builds each unit's row with lib/folder.ts buildRow and
 * writes the rows in COPY text format to `file`, in {@linkcode COPY_COLUMNS} order.
 */
export async function writeCopyFile(
  tree: string,
  file: string,
  device: { id: string; name: string; type: string },
): Promise<CopyFile> {
  const started = performance.now();
  const config = DEFAULT_CONFIG;
  const out = Deno.openSync(file, { write: true, create: true, truncate: true });
  const encoder = new TextEncoder();
  let pending: string[] = [];
  let pendingChars = 0;
  let rows = 0;
  let bytes = 0;
  const flush = () => {
    const data = encoder.encode(pending.join(""));
    let off = 0;
    while (off < data.length) off += out.writeSync(data.subarray(off));
    bytes += data.length;
    pending = [];
    pendingChars = 0;
  };
  const now = new Date();
  try {
    for await (
      const item of scanFolders(tree, {
        imageExtensions: config.imageExtensions,
        statsFileName: config.statsFileName,
        markerNames: markerNames(config),
      })
    ) {
      if (item.kind !== "folder") continue;
      const { row } = buildRow(item.snapshot, config, now);
      const fields = [
        device.id,
        device.name,
        device.type,
        row.folder_key,
        row.folder_name,
        arrayLiteral(row.images),
        row.test_results === null ? null : JSON.stringify(row.test_results),
        row.test_status,
        row.test_date,
        "batch_copy_floor",
        JSON.stringify(row.metadata),
        "image_analysis",
      ];
      const line = fields.map(copyText).join("\t") + "\n";
      pending.push(line);
      pendingChars += line.length;
      rows++;
      if (pendingChars > 1 << 20) flush();
    }
    flush();
  } finally {
    out.close();
  }
  return { rows, bytes, buildMs: performance.now() - started };
}

/** SQL making `floor` an empty copy of `source` with the same columns, keys and indexes. */
export function floorTableSql(source: string, floor: string): string {
  return `drop table if exists ${floor};\n` +
    `create table ${floor} (like ${source} including all);\n` +
    `alter table ${floor} add foreign key (device_id) references devices (id);`;
}

/**
 * Times `psql -c "\copy floor (...) from 'file'"` (one process, one COPY) against `url`.
 * The table should be empty; the caller truncates it between runs.
 */
export function copyFloor(url: string, floor: string, file: string): Promise<Measured> {
  const command = `\\copy ${floor} (${COPY_COLUMNS.join(", ")}) from '${
    file.replaceAll("'", "''")
  }'`;
  const conn = connectionFromUrl(url);
  return timeCommand("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", ...conn.args, "-c", command], {
    env: { ...conn.env, PGCLIENTENCODING: "UTF8", LC_ALL: "C" },
  });
}

/** Runs SQL through psql on `url` (stop on error); returns stdout. */
export async function psqlExec(url: string, sql: string): Promise<string> {
  const conn = connectionFromUrl(url);
  const args = ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", ...conn.args];
  const result = await runMeasured("psql", args, {
    stdin: sql,
    env: { ...conn.env, PGCLIENTENCODING: "UTF8", LC_ALL: "C" },
  });
  if (result.code !== 0) {
    throw new Error(`psql failed (exit ${result.code}): ${result.stderr.trim().slice(-2000)}`);
  }
  return result.stdout;
}
