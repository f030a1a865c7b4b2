/**
 * Measures the upload path against its floors, in one session on one tree:
 *
 * - `find <tree> -type f -printf '%h %f %s %T@\n'`: walking and stat-ing every file;
 * - `psql \copy` of the very rows the uploader sends (same columns, same JSON, built by
 *   lib/folder.ts from the same tree) into an empty copy of device_test with the same
 *   indexes;
 * - the first full upload with the CLI, without and with marker files;
 * - an unchanged re-run of each.
 *
 * It prints a table with medians, the ratios the project targets (first upload / (find +
 * copy) <= 3, unchanged re-run / find <= 2) and the CLI's peak RSS (`/usr/bin/time -v`,
 * else /proc polling). All runs are warm-cache: the page cache cannot be dropped here, and
 * the floors are measured warm too.
 *
 * ```
 * deno run -A scripts/perf_upload.ts                      # 100,000 folders, private server
 * deno run -A scripts/perf_upload.ts --folders 20000 --repeat 1
 * PERF_DB_URL=postgresql://... deno run -A scripts/perf_upload.ts   # an existing server
 * deno run -A scripts/perf_upload.ts --cpu-prof /tmp/prof  # plus a CPU profile summary
 * ```
 *
 * A measurement script, not a test: it never fails on a missed target, it reports it.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_CONFIG, markerNames } from "../config.ts";
import { buildRow } from "../lib/folder.ts";
import { scanFolders } from "../lib/scan.ts";
import { buildSchemaStatements } from "../lib/sql.ts";
import { connectionFromUrl } from "../lib/target.ts";
import { startPostgres } from "../tests/support/postgres.ts";
import { generateTree, removeTree } from "../tests/support/tree.ts";

const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const DEVICE = { id: "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", name: "perf", type: "perf" };
const COPY_TABLE = "perf_copy_floor";
const COLUMNS = [
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
];

interface Timed {
  ms: number;
  code: number;
  stdout: string;
  stderr: string;
  /** Peak RSS of the measured process in KiB, when known. */
  rssKiB: number | null;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const HAS_GNU_TIME = (() => {
  try {
    return Deno.statSync("/usr/bin/time").isFile;
  } catch {
    return false;
  }
})();

/**
 * Runs a command, timing its wall clock; with `rss`, under `/usr/bin/time -v` (peak RSS of
 * the process) or, without GNU time, polling /proc/<pid>/status for VmHWM.
 */
async function timed(
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; rss?: boolean; stdoutToNull?: boolean } = {},
): Promise<Timed> {
  const useTime = options.rss && HAS_GNU_TIME;
  const [bin, argv] = useTime ? ["/usr/bin/time", ["-v", cmd, ...args]] : [cmd, args];
  const started = performance.now();
  const child = new Deno.Command(bin, {
    args: argv,
    env: options.env,
    stdin: "null",
    stdout: options.stdoutToNull ? "null" : "piped",
    stderr: "piped",
  }).spawn();
  let polled = 0;
  let poller: ReturnType<typeof setInterval> | undefined;
  if (options.rss && !useTime) {
    poller = setInterval(() => {
      try {
        const status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
        const hwm = /VmHWM:\s+(\d+)/.exec(status);
        if (hwm) polled = Math.max(polled, Number(hwm[1]));
      } catch {
        // The process is gone: the last reading stands.
      }
    }, 50);
  }
  const out = await child.output();
  const ms = performance.now() - started;
  clearInterval(poller);
  const decoder = new TextDecoder();
  let stderr = decoder.decode(out.stderr);
  let rssKiB: number | null = options.rss && !useTime ? polled : null;
  if (useTime) {
    const match = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
    rssKiB = match ? Number(match[1]) : null;
    stderr = stderr.replace(/\n?\tCommand being timed:[\s\S]*$/, "");
  }
  return {
    ms,
    code: out.code,
    stdout: options.stdoutToNull ? "" : decoder.decode(out.stdout),
    stderr,
    rssKiB,
  };
}

/** Escapes one value for COPY's text format. */
function copyValue(value: string | null): string {
  if (value === null) return "\\N";
  return value.replace(
    /[\\\n\r\t]/g,
    (c) => ({ "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" })[c]!,
  );
}

/** A text[] literal, every element quoted. */
function textArray(items: readonly string[]): string {
  return `{${items.map((s) => `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`).join(",")}}`;
}

/** Writes the rows the uploader would send as a COPY text file; returns the row count. */
function writeCopyFile(
  tree: string,
  file: string,
  unitList: string,
): { rows: number; bytes: number } {
  const config = DEFAULT_CONFIG;
  const out = Deno.openSync(file, { write: true, create: true, truncate: true });
  const units: string[] = [];
  const encoder = new TextEncoder();
  let rows = 0;
  let bytes = 0;
  let buffer: string[] = [];
  const flush = () => {
    const data = encoder.encode(buffer.join(""));
    let off = 0;
    while (off < data.length) off += out.writeSync(data.subarray(off));
    bytes += data.length;
    buffer = [];
  };
  try {
    const now = new Date();
    for (
      const item of scanFolders(tree, {
        imageExtensions: config.imageExtensions,
        statsFileName: config.statsFileName,
        markerNames: markerNames(config),
      })
    ) {
      if (item.kind !== "folder") continue;
      const { row } = buildRow(item.snapshot, config, now);
      units.push(`${item.snapshot.path}/perf_floor_marker.json`);
      const values = [
        DEVICE.id,
        DEVICE.name,
        DEVICE.type,
        row.folder_key,
        row.folder_name,
        textArray(row.images),
        row.test_results === null ? null : JSON.stringify(row.test_results),
        row.test_status,
        row.test_date,
        "batch_copy_floor",
        JSON.stringify(row.metadata),
        "image_analysis",
      ];
      buffer.push(values.map(copyValue).join("\t") + "\n");
      rows++;
      if (buffer.length >= 5000) flush();
    }
    flush();
  } finally {
    out.close();
  }
  Deno.writeTextFileSync(unitList, units.join("\n") + "\n");
  return { rows, bytes };
}

/** psql -X -At -v ON_ERROR_STOP=1 on the target, the password in the environment. */
function psqlArgs(url: string): { args: string[]; env: Record<string, string> } {
  const conn = connectionFromUrl(url);
  return {
    args: ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", ...conn.args],
    env: { ...Deno.env.toObject(), ...conn.env, PGCLIENTENCODING: "UTF8" },
  };
}

async function sql(url: string, text: string): Promise<string> {
  const { args, env } = psqlArgs(url);
  const child = new Deno.Command("psql", {
    args,
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  if (!out.success) {
    throw new Error(`psql failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout).trim();
}

/** The upload CLI as a user runs it; the URL in SUPABASE_DB_URL. */
function uploadCli(
  url: string,
  tree: string,
  db: string,
  extra: string[],
  denoFlags: string[],
): Promise<Timed> {
  return timed(Deno.execPath(), [
    "run",
    "-A",
    "--quiet",
    "--config",
    `${REPO}/deno.json`,
    ...denoFlags,
    `${REPO}/scripts/upload_manager.ts`,
    tree,
    "--db-path",
    db,
    "--json",
    "--quiet",
    ...extra,
  ], {
    env: { ...Deno.env.toObject(), SUPABASE_DB_URL: url, NO_COLOR: "1" },
    rss: true,
  });
}

function summaryOf(run: Timed): Record<string, number | string> {
  const line = run.stdout.split("\n").find((l) => l.includes('"event":"summary"'));
  if (!line || (run.code !== 0)) {
    throw new Error(`upload failed (exit ${run.code}):\n${run.stderr.slice(-3000)}`);
  }
  return JSON.parse(line);
}

/** Sum of batch_done durations (time the server and psql spent on statements). */
function batchMs(run: Timed): number {
  let total = 0;
  for (const line of run.stdout.split("\n")) {
    if (line.includes('"event":"batch_done"')) total += JSON.parse(line).duration_ms;
  }
  return total;
}

/** Areas of the main thread's time, matched on "function file:line" in this order. */
const CATEGORIES: [string, RegExp][] = [
  ["idle (waiting for psql)", /^\(idle\)/],
  ["gc", /^\(garbage collector\)/],
  [
    "walk",
    /^(op_fs_read_dir_sync|op_fs_lstat_sync|readDirSync|lstatSync|scanFolders|normalize|normalizeString|relative|join|resolve|basename|compareNames|isImageName|fingerprintFiles|op_node_hash|op_node_create_hash|Hash|update|digest) /,
  ],
  [
    "markers",
    /^(op_fs_write_file_sync|op_fs_remove_sync|op_fs_rename_sync|writeMarker|removeSync|writeTextFileSync|renameSync|buildCustomError|NotFound|putMarker) /,
  ],
  ["stats.json read", /^(op_fs_read_file_sync|readStats|readFileSync|containsNul|wellFormed) /],
  ["tracker (SQLite)", /^(run|get|all|exec|apply|transaction|prepare|recordBatch|applyScan) /],
  [
    "rows + SQL",
    /^(buildRow|checkStorable|buildUpsertStatement|payloadRow|sqlLiteral|terminateStatement|skipQuoted|stringify|estimateRowBytes) /,
  ],
];

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** Top functions by self time of the newest .cpuprofile in `dir`. */
function profileSummary(dir: string, top = 25): string {
  const files = [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".cpuprofile"))
    .map((e) => join(dir, e.name))
    .sort((a, b) => Deno.statSync(b).mtime!.getTime() - Deno.statSync(a).mtime!.getTime());
  if (files.length === 0) return "(no profile written)";
  const profile = JSON.parse(Deno.readTextFileSync(files[0])) as {
    nodes: ProfileNode[];
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const node = byId.get(id)!;
    const f = node.callFrame;
    const file = f.url.replace(/^.*\/(lib|scripts|node_modules|ext)\//, "$1/");
    const key = `${f.functionName || "(anonymous)"} ${file}:${f.lineNumber + 1}`;
    const dt = profile.timeDeltas[i] ?? 0;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  });
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  const groups = new Map<string, number>();
  for (const [key, us] of self) {
    const group = CATEGORIES.find(([, re]) => re.test(key))?.[0] ?? "other";
    groups.set(group, (groups.get(group) ?? 0) + us);
  }
  const grouped = [...groups.entries()].sort((a, b) => b[1] - a[1])
    .map(([g, us]) => `${g} ${(us / 1000).toFixed(0)} ms (${(100 * us / total).toFixed(0)}%)`)
    .join(", ");
  return `${files[0]} (${(total / 1000).toFixed(0)} ms sampled)\n  by area: ${grouped}\n` +
    rows.map(([k, us]) =>
      `  ${(us / 1000).toFixed(0).padStart(7)} ms ${
        (100 * us / total).toFixed(1).padStart(5)
      }%  ${k}`
    ).join("\n");
}

function fmtMs(ms: number): string {
  return ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      folders: { type: "string", default: "100000" },
      repeat: { type: "string", default: "3" },
      parallel: { type: "string" },
      "batch-size": { type: "string" },
      flat: { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      "cpu-prof": { type: "string" },
      json: { type: "string" },
    },
  });
  const folders = Number(values.folders);
  const repeat = Math.max(1, Number(values.repeat));
  const uploadExtra: string[] = [];
  if (values.parallel) uploadExtra.push("--parallel", values.parallel);
  if (values["batch-size"]) uploadExtra.push("--batch-size", values["batch-size"]);
  const profDir = values["cpu-prof"];
  /** Deno flags for one run: its own profile folder when profiling. */
  const denoFlags = (label: string) =>
    profDir ? ["--cpu-prof", "--cpu-prof-dir", join(profDir, label)] : [];
  const log = (s: string) => console.error(s);

  const root = Deno.makeTempDirSync({ prefix: "perf_upload_" });
  const tree = join(root, "data");
  const ownServer = !Deno.env.get("PERF_DB_URL");
  const server = ownServer ? await startPostgres({ conf: { shared_buffers: "'256MB'" } }) : null;
  const url = Deno.env.get("PERF_DB_URL") ?? server!.url;
  try {
    log(`Generating ${folders} folders in ${tree} ...`);
    let t = performance.now();
    const generated = generateTree(tree, { folders, nested: !values.flat });
    log(
      `  ${generated.units} units, ${generated.images} images in ${fmtMs(performance.now() - t)}`,
    );

    // (a) find, warm.
    await timed("find", [tree, "-type", "f", "-printf", "%h %f %s %T@\\n"], { stdoutToNull: true });
    const findRuns: number[] = [];
    for (let i = 0; i < repeat; i++) {
      const r = await timed("find", [tree, "-type", "f", "-printf", "%h %f %s %T@\\n"], {
        stdoutToNull: true,
      });
      if (r.code !== 0) throw new Error(`find failed: ${r.stderr}`);
      findRuns.push(r.ms);
    }
    const findMs = median(findRuns);
    log(`find: ${findRuns.map(fmtMs).join(", ")}`);

    // (b) \copy of the same rows into an empty table with the same indexes.
    const copyFile = join(root, "rows.tsv");
    t = performance.now();
    const unitList = join(root, "units.txt");
    const copy = writeCopyFile(tree, copyFile, unitList);
    log(
      `copy file: ${copy.rows} rows, ${(copy.bytes / 1e6).toFixed(1)} MB built in ` +
        fmtMs(performance.now() - t),
    );
    await sql(url, buildSchemaStatements({ table: "device_test", device: DEVICE }).join("\n"));
    await sql(
      url,
      `drop table if exists ${COPY_TABLE};\n` +
        `create table ${COPY_TABLE} (like device_test including all);`,
    );
    const copyRuns: number[] = [];
    for (let i = 0; i < repeat; i++) {
      await sql(url, `truncate ${COPY_TABLE}; checkpoint;`).catch(() =>
        sql(url, `truncate ${COPY_TABLE};`)
      );
      const { args, env } = psqlArgs(url);
      const r = await timed("psql", [
        ...args,
        "-c",
        `\\copy ${COPY_TABLE} (${COLUMNS.join(", ")}) from '${copyFile}'`,
      ], { env });
      if (r.code !== 0) throw new Error(`\\copy failed: ${r.stderr}`);
      copyRuns.push(r.ms);
    }
    const copyMs = median(copyRuns);
    log(`\\copy: ${copyRuns.map(fmtMs).join(", ")}`);
    await sql(url, `drop table ${COPY_TABLE};`);

    // The floor of writing markers: one new small file per unit (`xargs touch`).
    const touchRuns: number[] = [];
    for (let i = 0; i < repeat; i++) {
      const r = await timed("xargs", ["-a", unitList, "-d", "\n", "touch"]);
      if (r.code !== 0) throw new Error(`xargs touch failed: ${r.stderr}`);
      touchRuns.push(r.ms);
      const rm = await timed("xargs", ["-a", unitList, "-d", "\n", "rm", "-f"]);
      if (rm.code !== 0) throw new Error(`xargs rm failed: ${rm.stderr}`);
    }
    const touchMs = median(touchRuns);
    log(`touch one file per unit: ${touchRuns.map(fmtMs).join(", ")}`);

    // (c) first full upload, (d) unchanged re-run: without markers, then with.
    const results: Record<string, { first: Timed[]; rerun: Timed[] }> = {};
    for (const variant of ["no-markers", "markers"] as const) {
      results[variant] = { first: [], rerun: [] };
      const flags = variant === "no-markers" ? ["--no-markers", ...uploadExtra] : uploadExtra;
      // Markers change the tree, so that variant is measured once per fresh tree state.
      const rounds = variant === "markers" ? 1 : repeat;
      for (let i = 0; i < rounds; i++) {
        await sql(url, "truncate device_test;");
        const db = join(root, `tracker-${variant}-${i}.db`);
        const first = await uploadCli(url, tree, db, flags, denoFlags(`${variant}-first-${i}`));
        const s = summaryOf(first);
        if (s.uploaded !== generated.units) {
          throw new Error(`first upload sent ${s.uploaded} of ${generated.units} units`);
        }
        log(
          `first upload (${variant}): ${fmtMs(first.ms)}, batches ${fmtMs(batchMs(first))}, ` +
            `peak RSS ${first.rssKiB} KiB`,
        );
        results[variant].first.push(first);
        const rerun = await uploadCli(url, tree, db, flags, denoFlags(`${variant}-rerun-${i}`));
        const r = summaryOf(rerun);
        if (r.uploaded !== 0) throw new Error(`re-run uploaded ${r.uploaded} folders`);
        log(`re-run (${variant}): ${fmtMs(rerun.ms)}, peak RSS ${rerun.rssKiB} KiB`);
        results[variant].rerun.push(rerun);
      }
    }

    const noMarkersFirst = median(results["no-markers"].first.map((r) => r.ms));
    const noMarkersRerun = median(results["no-markers"].rerun.map((r) => r.ms));
    const markersFirst = median(results.markers.first.map((r) => r.ms));
    const markersRerun = median(results.markers.rerun.map((r) => r.ms));
    const rss = Math.max(
      ...Object.values(results).flatMap((v) => [...v.first, ...v.rerun]).map((r) => r.rssKiB ?? 0),
    );
    const floor = findMs + copyMs;
    const table = [
      ["measure", "median", "ratio", "target"],
      ["find", fmtMs(findMs), "", ""],
      ["psql \\copy", fmtMs(copyMs), "", ""],
      [
        "first upload --no-markers",
        fmtMs(noMarkersFirst),
        `${(noMarkersFirst / floor).toFixed(2)} x (find+copy)`,
        "<= 3",
      ],
      ["touch 1 file per unit", fmtMs(touchMs), "", ""],
      [
        "first upload, markers",
        fmtMs(markersFirst),
        `${(markersFirst / floor).toFixed(2)} x (find+copy)`,
        "<= 3",
      ],
      ["", "", `${(markersFirst / (floor + touchMs)).toFixed(2)} x (find+copy+touch)`, ""],
      [
        "re-run --no-markers",
        fmtMs(noMarkersRerun),
        `${(noMarkersRerun / findMs).toFixed(2)} x find`,
        "<= 2",
      ],
      [
        "re-run, markers",
        fmtMs(markersRerun),
        `${(markersRerun / findMs).toFixed(2)} x find`,
        "<= 2",
      ],
      ["peak RSS (CLI)", `${(rss / 1024).toFixed(0)} MiB`, "", ""],
    ];
    const widths = table[0].map((_, c) => Math.max(...table.map((r) => r[c].length)));
    console.log(
      `\n${folders} folders (${generated.units} units, ${copy.rows} rows, ` +
        `${(copy.bytes / 1e6).toFixed(1)} MB as COPY text), ${repeat} repeat(s), warm cache, ` +
        `${ownServer ? "private PostgreSQL 15 (fsync off)" : "PERF_DB_URL"}`,
    );
    for (const r of table) console.log(r.map((v, c) => v.padEnd(widths[c])).join("  "));
    if (values.json) {
      Deno.writeTextFileSync(
        values.json,
        JSON.stringify(
          {
            folders,
            units: generated.units,
            findMs: findRuns,
            copyMs: copyRuns,
            touchMs: touchRuns,
            firstNoMarkersMs: results["no-markers"].first.map((r) => r.ms),
            rerunNoMarkersMs: results["no-markers"].rerun.map((r) => r.ms),
            firstMarkersMs: results.markers.first.map((r) => r.ms),
            rerunMarkersMs: results.markers.rerun.map((r) => r.ms),
            batchMsNoMarkers: results["no-markers"].first.map(batchMs),
            peakRssKiB: rss,
          },
          null,
          2,
        ) + "\n",
      );
    }
    if (profDir) {
      for (const label of ["no-markers-first-0", "no-markers-rerun-0", "markers-first-0"]) {
        console.log(`\nCPU profile, ${label}:\n${profileSummary(join(profDir, label))}`);
      }
    }
  } finally {
    await server?.close();
    if (values.keep) console.error(`Kept ${root}`);
    else removeTree(root);
  }
}

if (import.meta.main) await main();
