/**
 * `deno task bench`: measures the uploader on a generated tree against floors measured in
 * the same run, and prints a markdown table.
 *
 * ```sh
 * deno task bench [--trees 50000:flat,100000:flat,100000:nested] [--steps ...,million]
 * deno task bench [--folders N] [--layout nested|flat] [--runs K] [--keep] [--tree DIR]
 *                 [--latency-ms MS] [--parallel-list 1,4,8] [--profile DIR]
 *                 [--json-out FILE] [--steps scan,first,unchanged,percent,markers]
 *                 [--v8-flags FLAGS] [--verify-rows N] [--watch-bulk N]
 *                 [--watch-idle S] [--watch-soak S] [--images-folders N]
 *                 [--embedded-folders N]
 * ```
 *
 * Without `--folders`, `--layout`, `--tree` or `--trees` it measures three trees in turn:
 * 50,000 flat, 100,000 flat and 100,000 nested folders, and with the opt-in step `million`
 * 1,000,000 flat folders (one first upload and one unchanged re-run); then it prints every
 * tree's targets in one table.
 *
 * Opt-in steps (name them in `--steps`): `verify`, `rebuild`, `watch`, `images`
 * (bench/extra.ts) and `embedded`, the embedded default's first run (bench/embedded.ts).
 *
 * Steps (each run beside its floor, the floor measured just before it), with
 * `--no-markers`: scan-only of a fresh tree vs `find`; first full upload vs `find` +
 * `psql \copy` of the same rows; unchanged re-run vs `find`; re-run with 1 % of folders
 * changed vs `find`; with `--latency-ms`, the first upload through a delaying TCP proxy at
 * several `--parallel` values. With the uploader's default flags (markers on): the first
 * upload vs `find` + `\copy` + plain processes writing the same markers. The uploader runs
 * as a subprocess (`scripts/upload_manager.ts --json`) and its summary counts are checked,
 * so a broken run cannot look fast.
 *
 * The server: a private PostgreSQL 15 (support/postgres.ts), or `$SUPABASE_DB_URL`
 * (then only the benchmark's own device's rows are deleted between runs).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generatedKeys, generateTree } from "../support/tree.ts";
import { type PgServer, startPostgres } from "../support/postgres.ts";
import {
  type CopyFile,
  copyFloor,
  findFloor,
  floorTableSql,
  markerFloor,
  psqlExec,
  writeCopyFile,
  writeFolderList,
} from "./floor.ts";
import { type Measured, runMeasured, runningChildren, treeCpuSeconds } from "./proc.ts";
import { embeddedStep } from "./embedded.ts";
import { startDelayProxy } from "./delay_proxy.ts";
import {
  formatSteps,
  formatTargets,
  type RunFigures,
  stepFigures,
  type StepResult,
  type TargetResult,
} from "./report.ts";
import { formatSummary, profilesIn, summariseEach } from "./profile_summary.ts";
import {
  type ExtraContext,
  type ExtraResult,
  imagesStep,
  rebuildStep,
  verifyStep,
  watchStep,
} from "./extra.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const UPLOADER = join(ROOT, "scripts", "upload_manager.ts");
const DEVICE_ID = "6be4c000-0000-4000-8000-00000000be00";
const DEVICE_NAME = "bench";
const TABLE = "device_test";
const FLOOR_TABLE = "device_test_bench_copy_floor";

/** One tree of a run: its size, its layout, and what differs from the run's options. */
interface TreeSpec {
  folders: number;
  layout: "nested" | "flat";
  runs?: number;
  steps?: Set<string>;
}

interface Options {
  /** The trees measured one after the other (`--folders`/`--layout`: that one only). */
  trees: TreeSpec[];
  folders: number;
  /** `nested`: `Line<n>/Batch<i>`, 1000 per line; `flat`: every `Batch<i>` in the base. */
  layout: "nested" | "flat";
  runs: number;
  keep: boolean;
  tree?: string;
  latencyMs: number;
  parallelList: number[];
  /**
   * `--v8-flags` for the uploader's Deno, e.g. `--max-semi-space-size=2`. Default: those of
   * the `upload` task in deno.json, so the benchmark runs what users run; "" for none.
   */
  v8Flags?: string;
  /** Steps to run: scan, first, unchanged, percent (the last two imply first), markers. */
  steps: Set<string>;
  profile?: string;
  jsonOut: string;
  /** Server rows of the `verify` step. */
  verifyRows: number;
  /** Folders written at once in the `watch` step, and its idle and soak seconds. */
  watchBulk: number;
  watchIdle: number;
  watchSoak: number;
  /** Folders of ten ~50 KB images in the `images` step. */
  imagesFolders: number;
  /** Folders of the generated tree of the `embedded` step. */
  embeddedFolders: number;
}

function usage(message: string): never {
  console.error(`Error: ${message}`);
  console.error(
    "Usage: deno task bench [--trees N:flat|nested,...] [--steps ...,million]\n" +
      "       deno task bench [--folders N] [--layout nested|flat] [--runs K] [--keep]\n" +
      "                       [--tree DIR] [--latency-ms MS] [--parallel-list 1,4,8]\n" +
      "                       [--profile DIR] [--json-out FILE] [--v8-flags FLAGS]\n" +
      "                       [--steps scan,first,unchanged,percent,markers]\n" +
      "                       [--steps verify,rebuild,watch,images] [--verify-rows N]\n" +
      "                       [--watch-bulk N] [--watch-idle S] [--watch-soak S]\n" +
      "                       [--images-folders N] [--steps embedded] [--embedded-folders N]",
  );
  Deno.exit(2);
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      folders: { type: "string" },
      layout: { type: "string" },
      trees: { type: "string" },
      runs: { type: "string", default: "3" },
      keep: { type: "boolean", default: false },
      tree: { type: "string" },
      "latency-ms": { type: "string", default: "0" },
      "parallel-list": { type: "string", default: "1,4,8" },
      steps: { type: "string", default: STEPS.join(",") },
      "v8-flags": { type: "string" },
      profile: { type: "string" },
      "json-out": { type: "string" },
      "verify-rows": { type: "string", default: "1000000" },
      "watch-bulk": { type: "string", default: "10000" },
      "watch-idle": { type: "string", default: "60" },
      "watch-soak": { type: "string", default: "600" },
      "images-folders": { type: "string", default: "200" },
      "embedded-folders": { type: "string", default: "20000" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) usage("help requested");
  const int = (name: string, text: string, min: number) => {
    const n = Number(text.replaceAll("_", ""));
    if (!Number.isInteger(n) || n < min) usage(`--${name} takes a whole number >= ${min}`);
    return n;
  };
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
  const layout = values.layout ?? "nested";
  if (layout !== "nested" && layout !== "flat") usage("--layout takes nested or flat");
  const folders = int("folders", values.folders ?? "100000", 10);
  const steps = parseSteps(values.steps);
  const single = values.folders !== undefined || values.layout !== undefined ||
    values.tree !== undefined;
  return {
    trees: values.trees !== undefined
      ? parseTrees(values.trees, int)
      : single
      ? [{ folders, layout }]
      : suiteTrees(steps),
    folders,
    layout,
    runs: int("runs", values.runs, 1),
    keep: values.keep,
    tree: values.tree,
    latencyMs: int("latency-ms", values["latency-ms"], 0),
    parallelList: values["parallel-list"].split(",").map((p) => int("parallel-list", p, 1)),
    steps,
    v8Flags: values["v8-flags"] ?? uploadTaskV8Flags(),
    profile: values.profile,
    jsonOut: values["json-out"] ?? join(ROOT, "bench", "out", `${stamp}.json`),
    verifyRows: int("verify-rows", values["verify-rows"], 1),
    watchBulk: int("watch-bulk", values["watch-bulk"], 1),
    watchIdle: int("watch-idle", values["watch-idle"], 1),
    watchSoak: int("watch-soak", values["watch-soak"], 1),
    imagesFolders: int("images-folders", values["images-folders"], 1),
    embeddedFolders: int("embedded-folders", values["embedded-folders"], 1),
  };
}

/** The `--v8-flags=...` value of deno.json's `upload` task, if it has one. */
function uploadTaskV8Flags(): string | undefined {
  try {
    const config = JSON.parse(Deno.readTextFileSync(join(ROOT, "deno.json")));
    const task: unknown = config?.tasks?.upload;
    const text = typeof task === "string" ? task : (task as { command?: string })?.command ?? "";
    return text.match(/--v8-flags=(\S+)/)?.[1];
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

const STEPS = ["scan", "first", "unchanged", "percent", "markers"];
/** Steps run only when named. */
const EXTRA_STEPS = ["verify", "rebuild", "watch", "images", "embedded"];
/** Opt-in trees of the default run: `million`, 1,000,000 flat folders (first, unchanged). */
const TREE_STEPS = ["million"];

/** `--trees 50000:flat,100000:nested`: the trees to measure, in turn. */
function parseTrees(text: string, int: (name: string, text: string, min: number) => number) {
  return text.split(",").map((spec): TreeSpec => {
    const [count, layout = "nested"] = spec.trim().split(":");
    if (layout !== "nested" && layout !== "flat") usage("--trees takes N:flat or N:nested, ...");
    return { folders: int("trees", count, 10), layout };
  });
}

/**
 * The trees of a run without `--folders`/`--layout`: 50,000 flat, 100,000 flat and
 * 100,000 nested (the steps asked for on each), then, with the `million` step, 1,000,000
 * flat folders (one first upload and one unchanged re-run: about 13 GB, see the docs).
 */
function suiteTrees(steps: Set<string>): TreeSpec[] {
  const trees: TreeSpec[] = [];
  if ([...steps].some((s) => STEPS.includes(s) || EXTRA_STEPS.includes(s))) {
    trees.push(
      { folders: 50_000, layout: "flat" },
      { folders: 100_000, layout: "flat" },
      { folders: 100_000, layout: "nested" },
    );
  }
  if (steps.has("million")) {
    trees.push({
      folders: 1_000_000,
      layout: "flat",
      runs: 1,
      steps: new Set(["first", "unchanged"]),
    });
  }
  return trees;
}

function parseSteps(text: string): Set<string> {
  const steps = new Set(text.split(",").map((s) => s.trim()).filter((s) => s !== ""));
  for (const step of steps) {
    if (!STEPS.includes(step) && !EXTRA_STEPS.includes(step) && !TREE_STEPS.includes(step)) {
      usage(`--steps takes some of ${[...STEPS, ...EXTRA_STEPS, ...TREE_STEPS].join(",")}`);
    }
  }
  if (steps.has("unchanged") || steps.has("percent")) steps.add("first");
  return steps;
}

function log(line: string): void {
  console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}`);
}

function loadAverage(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}

async function commandText(cmd: string, args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch (error) {
    return `(${cmd}: ${error instanceof Error ? error.message : error})`;
  }
}

/** What the machine is, for the report. */
async function machineInfo(tmp: string) {
  const mem = Deno.readTextFileSync("/proc/meminfo").match(/MemTotal:\s+(\d+)/);
  const cpu = Deno.readTextFileSync("/proc/cpuinfo").match(/model name\s*:\s*(.*)/);
  return {
    nproc: navigator.hardwareConcurrency,
    cpu: cpu?.[1] ?? "?",
    memory_gb: mem ? Math.round(Number(mem[1]) / 1024 / 1024) : null,
    disk: (await commandText("df", ["-h", "--output=source,fstype,size,avail", tmp]))
      .split("\n").slice(-1)[0].replace(/\s+/g, " "),
    kernel: await commandText("uname", ["-r"]),
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    psql: await commandText("psql", ["--version"]),
    load_at_start: Deno.readTextFileSync("/proc/loadavg").trim(),
    ...await gitInfo(),
  };
}

/** The commit measured, and whether the code differs from it (a shared working tree). */
async function gitInfo(): Promise<{ commit: string; uncommitted: string[] }> {
  const commit = await commandText("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]);
  const status = await commandText("git", [
    "-C",
    ROOT,
    "status",
    "--porcelain",
    "--",
    "lib",
    "scripts",
    "config.ts",
    "deno.json",
  ]);
  return { commit, uncommitted: status.split("\n").filter((l) => l.trim() !== "") };
}

/** The uploader's final `{"event":"summary"}` line. */
function summaryOf(result: Measured): Record<string, unknown> {
  const lines = result.stdout.trim().split("\n").reverse();
  for (const line of lines) {
    if (!line.startsWith("{")) continue;
    const event = JSON.parse(line) as Record<string, unknown>;
    if (event.event === "summary") return event;
  }
  throw new Error(
    `The uploader printed no summary (exit ${result.code}):\n${result.stderr.slice(-3000)}`,
  );
}

/** Throws when a summary count is not what the step must give. */
function expectCounts(
  step: string,
  summary: Record<string, unknown>,
  expected: Record<string, number | string>,
): void {
  const wrong = Object.entries(expected).filter(([k, v]) => summary[k] !== v);
  if (wrong.length > 0) {
    throw new Error(
      `${step}: wrong counts, the run is not valid: ${
        wrong.map(([k, v]) => `${k}=${JSON.stringify(summary[k])} (expected ${v})`).join(", ")
      }\nsummary: ${JSON.stringify(summary)}`,
    );
  }
}

class Bench {
  readonly options: Options;
  readonly work: string;
  readonly tree: string;
  units = 0;
  keys: string[] = [];
  url = "";
  server: PgServer | null = null;
  external = false;
  steps: StepResult[] = [];
  #trackerSeq = 0;

  constructor(options: Options, work: string, tree: string) {
    this.options = options;
    this.work = work;
    this.tree = tree;
  }

  /** Deletes the benchmark's rows (TRUNCATE on the private server). */
  async emptyTable(table = TABLE): Promise<void> {
    if (this.external) {
      await psqlExec(this.url, `delete from ${table} where device_id = '${DEVICE_ID}'`);
    } else {
      await psqlExec(this.url, `truncate ${table}`);
    }
  }

  async countRows(table = TABLE): Promise<number> {
    return Number(
      (await psqlExec(this.url, `select count(*) from ${table} where device_id = '${DEVICE_ID}'`))
        .trim(),
    );
  }

  freshTracker(): string {
    return join(this.work, `tracker-${++this.#trackerSeq}.db`);
  }

  /**
   * Server CPU seconds so far: the postmaster's process tree (backends, background
   * processes, and the children it reaped), or null when unknown.
   */
  serverCpu(): number | null {
    if (!this.server) return null;
    try {
      const pid = Number(
        Deno.readTextFileSync(join(this.server.dataDir, "postmaster.pid")).split("\n")[0],
      );
      return treeCpuSeconds(pid) ?? null;
    } catch {
      // No pid file: the server is external or stopped.
      return null;
    }
  }

  /** Runs the uploader CLI and returns the measurement and its summary. */
  async upload(
    args: string[],
    options: { url?: string; profileDir?: string; markers?: boolean } = {},
  ): Promise<{ result: Measured; summary: Record<string, unknown>; figures: RunFigures }> {
    const denoArgs = ["run", "-A"];
    if (this.options.v8Flags) denoArgs.push(`--v8-flags=${this.options.v8Flags}`);
    if (options.profileDir) denoArgs.push("--cpu-prof", `--cpu-prof-dir=${options.profileDir}`);
    const load = loadAverage();
    const serverBefore = this.serverCpu();
    const result = await runMeasured(
      Deno.execPath(),
      [
        ...denoArgs,
        UPLOADER,
        this.tree,
        ...(options.markers ? [] : ["--no-markers"]),
        "--json",
        "--quiet",
        ...args,
      ],
      {
        env: {
          SUPABASE_DB_URL: options.url ?? this.url,
          DEVICE_ID,
          DEVICE_NAME,
          NO_COLOR: "1",
        },
        cwd: ROOT,
      },
    );
    // Backends end just after their psql: let them finish (their CPU counts either way).
    await new Promise((r) => setTimeout(r, 200));
    const serverAfter = this.serverCpu();
    const summary = summaryOf(result);
    return {
      result,
      summary,
      figures: {
        ms: result.wallMs,
        rssKb: result.peakRssKb,
        psqlPeakKb: result.psqlPeakKb,
        psqlSumKb: result.psqlSumKb,
        cpu: {
          // Everything the uploader started and waited for, less its psql children.
          deno: Math.max(result.cpuSeconds, result.treeCpuSeconds - result.psqlCpuSeconds),
          psql: result.psqlCpuSeconds,
          server: serverBefore === null || serverAfter === null ? null : serverAfter - serverBefore,
        },
        summary,
        load,
      },
    };
  }

  /** Rewrites stats.json in every unit whose index % 100 === `slot`; returns how many. */
  changeOnePercent(slot: number): number {
    const old = new Date(Date.now() - 3600_000);
    let changed = 0;
    for (let i = slot % 100; i < this.keys.length; i += 100) {
      const dir = join(this.tree, ...this.keys[i].split("/"));
      const file = join(dir, "stats.json");
      let stats: Record<string, unknown> = {};
      try {
        stats = JSON.parse(Deno.readTextFileSync(file));
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
      stats.bench_rewrite = (Number(stats.bench_rewrite) || 0) + 1;
      Deno.writeTextFileSync(file, JSON.stringify(stats, null, 2));
      Deno.utimeSync(file, old, old);
      changed++;
    }
    return changed;
  }

  async find(): Promise<number> {
    return (await findFloor(this.tree)).wallMs;
  }
}

async function prepareTree(options: Options, work: string): Promise<{
  tree: string;
  units: number;
  keys: string[];
  info: Record<string, unknown>;
}> {
  const treeRoot = options.tree ?? join(work, "tree");
  const metaFile = `${treeRoot}.bench.json`;
  const shape = { folders: options.folders, nested: options.layout === "nested", perLine: 1000 };
  try {
    const meta = JSON.parse(Deno.readTextFileSync(metaFile));
    const layout = meta.layout ?? "nested"; // trees kept before --layout existed are nested
    if (meta.folders === options.folders && layout === options.layout) {
      log(`Reusing the tree at ${treeRoot} (${meta.units} units, ${layout})`);
      const keys = generatedKeys(shape);
      if (keys.length !== meta.units) throw new Error(`${metaFile}: unexpected unit count`);
      return { tree: treeRoot, units: meta.units, keys, info: { ...meta, reused: true } };
    }
    usage(
      `${treeRoot} holds ${meta.folders} folders (${layout}), not ${options.folders} ` +
        `(${options.layout})`,
    );
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  log(
    `Generating ${options.folders.toLocaleString("en-US")} folders (${options.layout}) ` +
      `in ${treeRoot}`,
  );
  const started = performance.now();
  const generated = generateTree(treeRoot, { ...shape, keys: true });
  const seconds = (performance.now() - started) / 1000;
  const du = await commandText("du", ["-sh", "--apparent-size", treeRoot]);
  const duDisk = await commandText("du", ["-sh", treeRoot]);
  const info = {
    folders: options.folders,
    layout: options.layout,
    units: generated.units,
    non_units: generated.nonUnits,
    with_stats: generated.withStats,
    images: generated.images,
    pdfs: generated.pdfs,
    generate_seconds: seconds,
    apparent_size: du.split(/\s/)[0],
    disk_usage: duDisk.split(/\s/)[0],
  };
  Deno.writeTextFileSync(metaFile, JSON.stringify(info, null, 2));
  log(`Generated in ${seconds.toFixed(1)} s: ${JSON.stringify(info)}`);
  return { tree: treeRoot, units: generated.units, keys: generated.keys!, info };
}

/**
 * Runs each tree of the options in turn (its own server and temporary directory), the
 * opt-in steps with the first tree only, and ends with every tree's targets in one table.
 */
async function main(): Promise<number> {
  const options = parseOptions(Deno.args);
  if (options.trees.length === 1) {
    return (await benchOne({ ...options, ...options.trees[0] })).code;
  }
  const all: TargetResult[] = [];
  let code = 0;
  for (const [i, tree] of options.trees.entries()) {
    const name = `${tree.folders.toLocaleString("en-US")} ${tree.layout}`;
    log(`Tree ${i + 1}/${options.trees.length}: ${name}`);
    const steps = new Set(
      [...(tree.steps ?? options.steps)].filter((s) => i === 0 || !EXTRA_STEPS.includes(s)),
    );
    const result = await benchOne({
      ...options,
      ...tree,
      runs: tree.runs ?? options.runs,
      steps,
      jsonOut: options.jsonOut.replace(/(\.json)?$/, `-${tree.folders}-${tree.layout}.json`),
    });
    all.push(...result.targets.map((t) => ({ ...t, label: `${name}: ${t.label}` })));
    if (result.code !== 0) code = result.code;
    if (result.code === 130) break;
  }
  console.log(`Every tree's targets:\n\n${formatTargets(all)}\n`);
  return code;
}

/** Measures one tree (`options.folders`, `options.layout`); returns its targets. */
async function benchOne(options: Options): Promise<{ code: number; targets: TargetResult[] }> {
  const targets: TargetResult[] = [];
  const work = Deno.makeTempDirSync({ prefix: "uploader_bench_" });
  const cleanups: (() => Promise<void> | void)[] = [];
  // One clean-up, shared by the signal handler and the normal end, awaited by both.
  let cleaning: Promise<void> | undefined;
  const cleanUp = () =>
    cleaning ??= (async () => {
      for (const cleanup of cleanups.reverse()) {
        try {
          await cleanup();
        } catch (error) {
          console.error(`Cleanup failed: ${error instanceof Error ? error.message : error}`);
        }
      }
      if (options.keep) {
        log(`Kept ${work}; reuse the tree with --tree ${options.tree ?? join(work, "tree")}`);
      } else {
        // A tree given with --tree lives outside `work` and stays.
        Deno.removeSync(work, { recursive: true });
      }
    })();
  /** Registers a clean-up; after an interruption started cleaning, runs it at once. */
  const addCleanup = async (fn: () => Promise<void> | void) => {
    if (cleaning === undefined) {
      cleanups.push(fn);
      return;
    }
    await fn();
    throw new Error("Interrupted");
  };
  // Ctrl-C stops the server and removes the temporary files too.
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    log("Interrupted: cleaning up");
    for (const child of runningChildren) {
      try {
        child.kill("SIGTERM");
      } catch {
        // It exited meanwhile.
      }
    }
    cleanUp().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let exitCode = 0;
  try {
    const machine = await machineInfo(work);
    log(`Machine: ${JSON.stringify(machine)}`);
    const prepared = await prepareTree(options, work);
    const bench = new Bench(options, work, prepared.tree);
    bench.units = prepared.units;
    bench.keys = prepared.keys;
    const units = prepared.units;
    const runs = options.runs;
    const external = Deno.env.get("SUPABASE_DB_URL");
    if (external) {
      bench.url = external;
      bench.external = true;
      log("Using $SUPABASE_DB_URL; only the benchmark device's rows are deleted between runs");
    } else {
      log("Starting a private PostgreSQL");
      bench.server = await startPostgres({
        conf: { shared_buffers: "'256MB'", max_wal_size: "'4GB'", checkpoint_timeout: "'30min'" },
      });
      await addCleanup(() => bench.server!.close());
      bench.url = bench.server.url;
    }
    const pgVersion = (await psqlExec(bench.url, "show server_version")).trim();
    log(`Server ${pgVersion}`);

    // Warm up: compile the uploader, create the schema and this device's row.
    {
      const tiny = join(work, "tiny");
      generateTree(tiny, { folders: 20 });
      const warm = await runMeasured(Deno.execPath(), [
        "run",
        "-A",
        UPLOADER,
        tiny,
        "--no-markers",
        "--json",
        "--quiet",
        "--db-path",
        join(work, "warmup.db"),
      ], { env: { SUPABASE_DB_URL: bench.url, DEVICE_ID, DEVICE_NAME }, cwd: ROOT });
      expectCounts("warm-up", summaryOf(warm), { exit_code: 0, uploaded: 18 });
      await bench.emptyTable();
      await psqlExec(bench.url, floorTableSql(TABLE, FLOOR_TABLE));
      await addCleanup(async () => {
        await psqlExec(bench.url, `drop table if exists ${FLOOR_TABLE}`).catch(() => {});
      });
    }

    // The rows the uploader would send, as a COPY file (building them is not timed).
    const runsOf = (step: string) => (options.steps.has(step) ? runs : 0);
    const copyFile = join(work, "rows.copy");
    let copy: CopyFile | null = null;
    if (runsOf("first") > 0 || runsOf("markers") > 0) {
      copy = await writeCopyFile(bench.tree, copyFile, {
        id: DEVICE_ID,
        name: DEVICE_NAME,
        type: "image_analyzer",
      });
      if (copy.rows !== units) {
        throw new Error(`COPY file has ${copy.rows} rows, expected ${units}`);
      }
      log(
        `COPY file: ${copy.rows} rows, ${(copy.bytes / 1e6).toFixed(1)} MB, built in ${
          (copy.buildMs / 1000).toFixed(1)
        } s`,
      );
    }

    // 1. Scan only, fresh tracker each run, vs find.
    const scan: StepResult = {
      key: "scan_only",
      label: "scan-only, fresh tracker",
      floorLabel: "find",
      folders: units,
      runs: [],
    };
    if (runsOf("scan") > 0) bench.steps.push(scan);
    for (let i = 0; i < runsOf("scan"); i++) {
      const floorMs = await bench.find();
      const { summary, figures } = await bench.upload([
        "--scan-only",
        "--db-path",
        bench.freshTracker(),
      ]);
      expectCounts("scan-only", summary, { exit_code: 0, scanned: units, new: units, uploaded: 0 });
      scan.runs.push({ ...figures, floorMs });
      log(
        `scan-only ${i + 1}/${runs}: ${(figures.ms / 1000).toFixed(2)} s (find ${
          (floorMs / 1000).toFixed(2)
        } s)`,
      );
    }

    // 2. First upload vs find + \copy of the same rows, each into an empty table.
    const first: StepResult = {
      key: "first_upload",
      label: "first upload, fresh tracker, empty table",
      floorLabel: "find + \\copy",
      folders: units,
      runs: [],
    };
    const copyStep: StepResult = {
      key: "copy_floor",
      label: "(floor) psql \\copy of the same rows",
      folders: units,
      runs: [],
    };
    const findStep: StepResult = { key: "find_floor", label: "(floor) find", runs: [] };
    if (runsOf("first") > 0) bench.steps.push(first);
    let tracker = "";
    for (let i = 0; i < runsOf("first"); i++) {
      const findMs = await bench.find();
      await bench.emptyTable(FLOOR_TABLE);
      const serverBefore = bench.serverCpu();
      const copied = await copyFloor(bench.url, FLOOR_TABLE, copyFile);
      // The backend ends just after its psql: let it finish (its CPU counts either way).
      await new Promise((r) => setTimeout(r, 200));
      const serverAfter = bench.serverCpu();
      const copiedRows = await bench.countRows(FLOOR_TABLE);
      if (copiedRows !== units) {
        throw new Error(`\\copy wrote ${copiedRows} rows, expected ${units}`);
      }
      copyStep.runs.push({
        ms: copied.wallMs,
        psqlPeakKb: copied.peakRssKb,
        cpu: {
          deno: 0,
          psql: copied.cpuSeconds,
          server: serverBefore === null || serverAfter === null ? null : serverAfter - serverBefore,
        },
      });
      findStep.runs.push({ ms: findMs });
      await bench.emptyTable();
      tracker = bench.freshTracker();
      const { summary, figures } = await bench.upload(["--db-path", tracker]);
      expectCounts("first upload", summary, {
        exit_code: 0,
        scanned: units,
        uploaded: units,
        inserted: units,
        failed: 0,
      });
      const rows = await bench.countRows();
      if (rows !== units) {
        throw new Error(`first upload: table holds ${rows} rows, expected ${units}`);
      }
      first.runs.push({ ...figures, floorMs: findMs + copied.wallMs });
      log(
        `first upload ${i + 1}/${runs}: ${(figures.ms / 1000).toFixed(2)} s (find ${
          (findMs / 1000).toFixed(2)
        } s + copy ${(copied.wallMs / 1000).toFixed(2)} s)`,
      );
    }

    // 3. Unchanged re-run vs find.
    const unchanged: StepResult = {
      key: "unchanged",
      label: "unchanged re-run",
      floorLabel: "find",
      folders: units,
      runs: [],
    };
    if (runsOf("unchanged") > 0) bench.steps.push(unchanged);
    for (let i = 0; i < runsOf("unchanged"); i++) {
      const floorMs = await bench.find();
      const { summary, figures } = await bench.upload(["--db-path", tracker]);
      expectCounts("unchanged re-run", summary, {
        exit_code: 0,
        scanned: units,
        unchanged: units,
        changed: 0,
        queued: 0,
        uploaded: 0,
      });
      unchanged.runs.push({ ...figures, floorMs });
      log(
        `unchanged ${i + 1}/${runs}: ${(figures.ms / 1000).toFixed(2)} s (find ${
          (floorMs / 1000).toFixed(2)
        } s)`,
      );
    }

    // 4. 1 % of the folders changed vs find.
    const percent: StepResult = {
      key: "one_percent",
      label: "re-run, 1 % of folders changed",
      floorLabel: "find",
      folders: units,
      runs: [],
    };
    if (runsOf("percent") > 0) bench.steps.push(percent);
    for (let i = 0; i < runsOf("percent"); i++) {
      const changed = bench.changeOnePercent(i);
      const floorMs = await bench.find();
      const { summary, figures } = await bench.upload(["--db-path", tracker]);
      expectCounts("1 % changed", summary, {
        exit_code: 0,
        scanned: units,
        modified: changed,
        unchanged: units - changed,
        uploaded: changed,
        updated: changed,
        inserted: 0,
      });
      percent.runs.push({ ...figures, floorMs });
      log(
        `1 % changed ${i + 1}/${runs} (${changed} folders): ${(figures.ms / 1000).toFixed(2)} s ` +
          `(find ${(floorMs / 1000).toFixed(2)} s)`,
      );
    }
    if (runsOf("first") > 0) bench.steps.push(findStep, copyStep);

    // 5. The uploader's default flags (markers on): the first upload again, which also
    // writes a success marker in every unit, vs find + \copy + the same marker writes.
    const withMarkers: StepResult = {
      key: "first_upload_markers",
      label: "first upload, fresh tracker, empty table, markers on",
      floorLabel: "find + \\copy + markers",
      folders: units,
      runs: [],
    };
    const markerStep: StepResult = {
      key: "marker_floor",
      label: `(floor) markers: temp file + rename, ${navigator.hardwareConcurrency} processes`,
      folders: units,
      runs: [],
    };
    const defaultSteps: StepResult[] = [];
    let markerList: string | null = null;
    if (runsOf("markers") > 0) {
      const list = join(work, "units.list");
      markerList = list;
      writeFolderList(bench.tree, bench.keys, list);
      const removeMarkers = () => markerFloor(list, { action: "remove" });
      // A tree that outlives the benchmark is left without markers, even after Ctrl-C.
      if (options.tree || options.keep) {
        await addCleanup(async () => {
          await removeMarkers();
        });
      }
      for (let i = 0; i < runsOf("markers"); i++) {
        const findMs = await bench.find();
        await bench.emptyTable(FLOOR_TABLE);
        const copied = await copyFloor(bench.url, FLOOR_TABLE, copyFile);
        const marked = await markerFloor(list, { action: "write" });
        await removeMarkers();
        markerStep.runs.push({
          ms: marked.wallMs,
          cpu: { deno: marked.cpuSeconds, psql: 0, server: null },
        });
        await bench.emptyTable();
        const { summary, figures } = await bench.upload(
          ["--db-path", bench.freshTracker()],
          { markers: true },
        );
        expectCounts("first upload with markers", summary, {
          exit_code: 0,
          scanned: units,
          uploaded: units,
          inserted: units,
          failed: 0,
          marker_errors: 0,
        });
        const rows = await bench.countRows();
        if (rows !== units) {
          throw new Error(`first upload with markers: table holds ${rows} rows, not ${units}`);
        }
        for (const key of [bench.keys[0], bench.keys[bench.keys.length - 1]]) {
          const marker = join(bench.tree, key, "success.json");
          if (!Deno.statSync(marker).isFile) throw new Error(`${marker} is not a file`);
        }
        await removeMarkers();
        const floorMs = findMs + copied.wallMs + marked.wallMs;
        withMarkers.runs.push({ ...figures, floorMs });
        log(
          `first upload with markers ${i + 1}/${runs}: ${(figures.ms / 1000).toFixed(2)} s ` +
            `(find ${(findMs / 1000).toFixed(2)} s + copy ${
              (copied.wallMs / 1000).toFixed(2)
            } s + markers ${(marked.wallMs / 1000).toFixed(2)} s)`,
        );
      }
      defaultSteps.push(withMarkers, markerStep);
    }

    // 6. Latency: the first upload through a delaying proxy, at several --parallel.
    const latencySteps: { parallel: number; step: StepResult }[] = [];
    if (options.latencyMs > 0 && bench.server) {
      const proxy = startDelayProxy({
        targetHost: bench.server.host,
        targetPort: bench.server.port,
        delayMs: options.latencyMs,
      });
      await addCleanup(() => proxy.close());
      const proxied = bench.url.replace(`:${bench.server.port}/`, `:${proxy.port}/`);
      const rtt = await psqlRoundTrip(proxied);
      log(`Delay proxy on port ${proxy.port}: select 1 takes ${rtt.toFixed(0)} ms through it`);
      for (const parallel of options.parallelList) {
        const step: StepResult = {
          key: `latency_p${parallel}`,
          label: `first upload, +${options.latencyMs} ms each way, --parallel ${parallel}`,
          folders: units,
          runs: [],
        };
        await bench.emptyTable();
        const { summary, figures } = await bench.upload(
          ["--db-path", bench.freshTracker(), "--parallel", String(parallel)],
          { url: proxied },
        );
        expectCounts(`latency --parallel ${parallel}`, summary, {
          exit_code: 0,
          uploaded: units,
          inserted: units,
          failed: 0,
        });
        step.runs.push(figures);
        bench.steps.push(step);
        latencySteps.push({ parallel, step });
        log(`latency --parallel ${parallel}: ${(figures.ms / 1000).toFixed(2)} s`);
      }
    } else if (options.latencyMs > 0) {
      log("--latency-ms needs the private server (no proxy in front of $SUPABASE_DB_URL)");
    }

    // 7. The opt-in steps: --verify, a lost tracker's rebuild, --watch, --images-to.
    const extra: ExtraResult[] = [];
    if (EXTRA_STEPS.some((step) => options.steps.has(step))) {
      const ctx: ExtraContext = {
        url: bench.url,
        work,
        tree: bench.tree,
        units,
        uploader: UPLOADER,
        denoArgs: ["run", "-A", ...(options.v8Flags ? [`--v8-flags=${options.v8Flags}`] : [])],
        env: { SUPABASE_DB_URL: bench.url, DEVICE_ID, DEVICE_NAME, NO_COLOR: "1" },
        deviceId: DEVICE_ID,
        log,
      };
      if (options.steps.has("verify")) extra.push(await verifyStep(ctx, options.verifyRows, runs));
      if (options.steps.has("rebuild")) extra.push(await rebuildStep(ctx, runs));
      if (options.steps.has("watch")) {
        extra.push(
          await watchStep(ctx, {
            bulk: options.watchBulk,
            idleSeconds: options.watchIdle,
            soakSeconds: options.watchSoak,
            minAge: 1,
          }),
        );
      }
      if (options.steps.has("images")) {
        extra.push(await imagesStep(ctx, { folders: options.imagesFolders, perFolder: 10, runs }));
      }
      if (options.steps.has("embedded")) {
        extra.push(await embeddedStep(ctx, { folders: options.embeddedFolders, runs }));
      }
    }

    // 8. Profiles, in extra runs not counted above.
    const profiles: Record<string, unknown> = {};
    const profileText: string[] = [];
    if (options.profile) {
      const dir = options.profile;
      const profileRun = async (
        name: string,
        args: string[],
        prepare?: () => Promise<void>,
        markers = false,
      ) => {
        const out = join(dir, name);
        Deno.mkdirSync(out, { recursive: true });
        for (const f of profilesIn(out)) Deno.removeSync(f);
        await prepare?.();
        const { figures } = await bench.upload(args, { profileDir: out, markers });
        const threads = summariseEach(profilesIn(out));
        profiles[name] = { wall_ms: figures.ms, threads };
        for (const t of threads) {
          profileText.push(
            formatSummary(
              `${name}, ${t.thread} (profiled run: ${(figures.ms / 1000).toFixed(2)} s)`,
              t.summary,
            ),
          );
        }
        log(`profiled ${name}: ${(figures.ms / 1000).toFixed(2)} s`);
      };
      const profTracker = bench.freshTracker();
      await profileRun("first_upload", ["--db-path", profTracker], () => bench.emptyTable());
      await profileRun("unchanged", ["--db-path", profTracker]);
      await profileRun("one_percent", ["--db-path", profTracker], () => {
        bench.changeOnePercent(runs);
        return Promise.resolve();
      });
      await profileRun("scan_only", ["--scan-only", "--db-path", bench.freshTracker()]);
      if (markerList !== null) {
        const list = markerList;
        await profileRun(
          "first_upload_markers",
          ["--db-path", bench.freshTracker()],
          () => bench.emptyTable(),
          true,
        );
        await markerFloor(list, { action: "remove" });
      }
    }

    // Targets.
    const big = options.folders >= 1_000_000;
    const fig = (step: StepResult) => stepFigures(step);
    targets.push(...extra.flatMap((e) => e.targets));
    const ratioTarget = (label: string, step: StepResult, limit: number) => {
      if (step.runs.length === 0) return;
      const f = fig(step);
      if (f.ratio !== null && f.floorMs !== null) {
        const detail = `${(f.medianMs / 1000).toFixed(2)} s / ${(f.floorMs / 1000).toFixed(2)} s`;
        targets.push({
          label,
          measured: f.ratio,
          limit,
          unit: "x",
          pass: f.ratio <= limit,
          detail,
        });
      }
    };
    ratioTarget("first upload, --no-markers / (find + \\copy)", first, 2.0);
    // The unchanged re-run: <= 1.5 x find below 100,000 folders and flat at 1,000,000.
    const unchangedLimit = options.folders < 100_000 || (options.layout === "flat" && big)
      ? 1.5
      : 1.3;
    ratioTarget("unchanged re-run / find", unchanged, unchangedLimit);
    ratioTarget("1 % changed / find", percent, 2);
    ratioTarget("first upload, markers on / (find + \\copy + markers)", withMarkers, 2.0);
    // The server's CPU for the same rows: what a hosted database's user pays for.
    const serverFirst = fig(first).cpu?.server ?? null;
    const serverCopy = fig(copyStep).cpu?.server ?? null;
    if (serverFirst !== null && serverCopy !== null && serverCopy > 0) {
      const ratio = serverFirst / serverCopy;
      targets.push({
        label: "server CPU, first upload / \\copy of the same rows",
        measured: ratio,
        limit: 1.5,
        unit: "x",
        pass: ratio <= 1.5,
        detail: `${serverFirst.toFixed(2)} CPU-s / ${serverCopy.toFixed(2)} CPU-s`,
      });
    }
    if (big) {
      const abs = (label: string, step: StepResult, limitS: number) => {
        if (step.runs.length === 0) return;
        const s = fig(step).medianMs / 1000;
        targets.push({ label, measured: s, limit: limitS, unit: "s", pass: s <= limitS });
      };
      abs("first upload", first, 180);
      abs("unchanged re-run", unchanged, 60);
    }
    const rssLimit = big ? 250 : 200;
    const rss = Math.max(
      ...[...bench.steps, ...defaultSteps].map((s) => fig(s).rssMb ?? 0),
    );
    // When only opt-in steps ran, they report their own memory.
    if (bench.steps.length + defaultSteps.length > 0) {
      targets.push({
        label: "peak RSS of the Deno process (all threads)",
        measured: rss,
        limit: rssLimit,
        unit: "MB",
        pass: rss <= rssLimit,
      });
    }
    const local = fig(first).rate ?? 0;
    for (const { parallel, step } of latencySteps) {
      const rate = fig(step).rate ?? 0;
      if (parallel < 4 || first.runs.length === 0) continue;
      targets.push({
        label: `+${options.latencyMs} ms, --parallel ${parallel}: rate / local rate`,
        measured: rate / local,
        limit: 0.5,
        unit: "",
        pass: rate / local >= 0.5,
      });
    }

    const loadAtEnd = Deno.readTextFileSync("/proc/loadavg").trim();
    const table = formatSteps(bench.steps);
    const defaultTable = defaultSteps.length > 0
      ? "With the uploader's default flags (markers on):\n\n" + formatSteps(defaultSteps) + "\n\n"
      : "";
    const targetTable = formatTargets(targets);
    const code = machine.uncommitted.length === 0
      ? `code: ${machine.commit}`
      : `code: ${machine.commit} plus uncommitted changes to ${
        machine.uncommitted.map((l) => l.slice(3)).join(", ")
      }`;
    const shape = options.layout === "nested"
      ? "nested Line<n>/Batch<i>, 1000 per line"
      : "flat: every Batch<i> directly in the base";
    const header = `Tree: ${options.folders.toLocaleString("en-US")} folders ` +
      `(${units.toLocaleString("en-US")} upload units, ${shape}); ` +
      `${runs} run(s) per step (latency and profile runs: 1 each); ` +
      (options.v8Flags
        ? `uploader run with --v8-flags=${options.v8Flags}; `
        : "uploader run without --v8-flags; ") +
      `server: ${bench.external ? "$SUPABASE_DB_URL" : `private PostgreSQL ${pgVersion}`}; ` +
      `load average at start ${machine.load_at_start.split(" ").slice(0, 3).join(" ")}, ` +
      `at end ${loadAtEnd.split(" ").slice(0, 3).join(" ")}; ${code}.`;
    const noMarkers = bench.steps.length > 0 ? "With --no-markers:\n\n" + table + "\n\n" : "";
    const extraTable = extra.length > 0
      ? "Opt-in steps (median of the runs):\n\n| step | measured | floor or spread | x floor | RSS |\n" +
        "| --- | --- | --- | --- | --- |\n" + extra.flatMap((e) => e.lines).join("\n") + "\n\n"
      : "";
    console.log(`${header}\n\n${noMarkers}${defaultTable}${extraTable}${targetTable}\n`);
    if (profileText.length > 0) console.log(profileText.join("\n"));

    const report = {
      when: new Date().toISOString(),
      command: `deno task bench ${Deno.args.join(" ")}`.trim(),
      machine: { ...machine, server: pgVersion, load_at_end: loadAtEnd },
      tree: prepared.info,
      copy_file: copy,
      steps: bench.steps.map((s) => ({ ...s, figures: fig(s) })),
      default_flag_steps: defaultSteps.map((s) => ({ ...s, figures: fig(s) })),
      extra_steps: extra.map((e) => e.figures),
      targets,
      profiles,
    };
    Deno.mkdirSync(join(options.jsonOut, ".."), { recursive: true });
    Deno.writeTextFileSync(options.jsonOut, JSON.stringify(report, null, 2));
    log(`Figures written to ${options.jsonOut}`);
    if (targets.some((t) => !t.pass)) log("Some targets were missed (see the table)");
  } catch (error) {
    if (interrupted) {
      exitCode = 130;
    } else {
      console.error(`Error: ${error instanceof Error ? error.stack ?? error.message : error}`);
      exitCode = 1;
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await cleanUp();
  }
  return { code: exitCode, targets };
}

/** Milliseconds `select 1` takes through `url` (median of 5, connection included). */
async function psqlRoundTrip(url: string): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    await psqlExec(url, "select 1");
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return times[2];
}

if (import.meta.main) {
  Deno.exit(await main());
}
