/**
 * The floors the uploader is measured against: `find` (walk + stat of every file),
 * `psql \copy` of the very rows the uploader would send into an empty table with the
 * same columns, keys and indexes, and plain processes writing the same marker files.
 *
 * Also a script: `deno run -A bench/floor.ts markers write|remove LIST INDEX COUNT NAME`
 * is one process of {@linkcode markerFloor}.
 *
 * @module
 */

import { DEFAULT_CONFIG, markerNames } from "../config.ts";
import { buildRow } from "../lib/plan/row.ts";
import { connectionFromUrl } from "../lib/target/target.ts";
import { scanFolders } from "../lib/source/walk.ts";
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
 * Scans `tree` as the uploader does, builds each unit's row with lib/plan/row.ts buildRow and
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

/** What the marker floor writes in each folder, about the size of the uploader's marker. */
function markerText(dir: string): string {
  const name = dir.slice(dir.lastIndexOf("/") + 1);
  return JSON.stringify(
    {
      status: "success",
      folder_name: name,
      folder_key: name,
      upload_time: new Date().toISOString(),
      upload_batch: "batch_marker_floor",
      images_uploaded: 2,
      test_status: "passed",
      folder_hash: "0123456789abcdef0123456789abcdef",
    },
    null,
    2,
  ) + "\n";
}

/** Options for {@linkcode markerFloor}. */
export interface MarkerFloorOptions {
  /** `write`: a temp file then a rename onto `name`, in every folder; `remove`: unlink it. */
  action: "write" | "remove";
  /** The marker's name. Default `success.json`. */
  name?: string;
  /** Processes in parallel, each taking every `processes`-th folder. Default: the CPUs. */
  processes?: number;
}

/**
 * Writes (or removes) a marker file in every folder listed in `listFile` (absolute paths,
 * NUL-separated) the way the uploader does (a hidden temp file, then a rename), with
 * `processes` plain Deno processes in parallel doing nothing else: the floor of the
 * uploader's marker writes. Returns the wall time of the whole (all processes).
 */
export async function markerFloor(
  listFile: string,
  options: MarkerFloorOptions,
): Promise<{ wallMs: number; cpuSeconds: number }> {
  const count = Math.max(1, options.processes ?? navigator.hardwareConcurrency);
  const self = new URL(import.meta.url).pathname;
  const started = performance.now();
  const runs = await Promise.all(
    Array.from({ length: count }, (_, index) =>
      timeCommand(Deno.execPath(), [
        "run",
        "--allow-read",
        "--allow-write",
        self,
        "markers",
        options.action,
        listFile,
        String(index),
        String(count),
        options.name ?? "success.json",
      ])),
  );
  return {
    wallMs: performance.now() - started,
    cpuSeconds: runs.reduce((sum, r) => sum + r.treeCpuSeconds, 0),
  };
}

/** Writes the folders of `keys` under `tree` to `file`, NUL-separated, for markerFloor. */
export function writeFolderList(tree: string, keys: readonly string[], file: string): void {
  Deno.writeTextFileSync(file, keys.map((k) => `${tree}/${k}`).join("\0"));
}

/** One marker-floor process: its share of the folders in the list. */
function markerFloorPart(args: string[]): void {
  const [action, listFile, indexText, countText, name] = args;
  const index = Number(indexText);
  const count = Number(countText);
  const dirs = Deno.readTextFileSync(listFile).split("\0");
  for (let i = index; i < dirs.length; i += count) {
    const dir = dirs[i];
    if (action === "remove") {
      try {
        Deno.removeSync(`${dir}/${name}`);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
      continue;
    }
    const temp = `${dir}/.${name}.${Deno.pid}.tmp`;
    Deno.writeTextFileSync(temp, markerText(dir));
    Deno.renameSync(temp, `${dir}/${name}`);
  }
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  if (mode !== "markers" || rest.length !== 5) {
    console.error("Usage: floor.ts markers write|remove LIST_FILE INDEX COUNT NAME");
    Deno.exit(2);
  }
  markerFloorPart(rest);
}
