/**
 * The benchmark's opt-in `embedded` step (`deno task bench --steps embedded`): the first
 * run of the embedded default, nothing configured, from a fresh tracking folder, on a copy
 * of examples/data and on a flat tree of `--embedded-folders` folders (default 20,000,
 * `--no-markers`). Each run measures the uploader process's peak RSS (VmHWM, all threads:
 * the embedded database runs on one of them) and the time from the start of the process
 * to its first acknowledged batch (`batch_done`: from then on the rows are visible to
 * `deno task sql`). Targets: peak RSS <= 250 MB and first row <= 3 s.
 *
 * @module
 */

import { join } from "node:path";
import { generateTree, setMtime, T1 } from "../support/tree.ts";
import { peakRssKb } from "./proc.ts";
import type { ExtraContext, ExtraResult } from "./extra.ts";
import type { TargetResult } from "./report.ts";

/** What one first run gave. */
interface FirstRun {
  ms: number;
  firstRowMs: number | null;
  rssKb: number;
  uploaded: number;
  exitCode: number;
}

const RSS_LIMIT_MB = 250;
const FIRST_ROW_LIMIT_S = 3;
const EXAMPLES = new URL("../examples/data/", import.meta.url);

/** Copies examples/data without marker files, every file settled (mtime T1). */
function copyExamples(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const entry of Deno.readDirSync(from)) {
    if (entry.name.startsWith(".")) continue;
    if (entry.name === "success.json" || entry.name === "failed.json") continue;
    const src = join(from, entry.name);
    const dst = join(to, entry.name);
    if (entry.isDirectory) copyExamples(src, dst);
    else if (entry.isFile) {
      Deno.copyFileSync(src, dst);
      setMtime(dst, T1);
    }
  }
}

/** The environment of a run with nothing configured: Deno's needs and the device only. */
function cleanEnv(ctx: ExtraContext): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  for (const name of ["DEVICE_ID", "DEVICE_NAME"]) {
    if (ctx.env[name] !== undefined) env[name] = ctx.env[name];
  }
  return env;
}

/** Runs the uploader on `tree` into a new embedded database in `dir`, measured. */
async function firstRun(
  ctx: ExtraContext,
  tree: string,
  dir: string,
  flags: string[],
): Promise<FirstRun> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      ...ctx.denoArgs,
      ctx.uploader,
      tree,
      "--db-path",
      join(dir, "upload_tracker.db"),
      "--json",
      ...flags,
    ],
    cwd: dir,
    env: cleanEnv(ctx),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let rssKb = 0;
  const poll = () => {
    rssKb = Math.max(rssKb, peakRssKb(child.pid) ?? 0);
  };
  const timer = setInterval(poll, 20);
  let firstRowMs: number | null = null;
  let summary: Record<string, unknown> = {};
  let pending = "";
  const stderr = new Response(child.stderr).text();
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop() ?? "";
    for (const line of lines) {
      if (firstRowMs === null && line.includes('"event":"batch_done"')) {
        firstRowMs = performance.now() - started;
      }
      if (line.includes('"event":"summary"')) summary = JSON.parse(line);
    }
  }
  const status = await child.status;
  clearInterval(timer);
  const ms = performance.now() - started;
  if (status.code !== 0) {
    throw new Error(`embedded: exit ${status.code}: ${(await stderr).slice(-2000)}`);
  }
  return {
    ms,
    firstRowMs,
    rssKb,
    uploaded: Number(summary.uploaded ?? -1),
    exitCode: status.code,
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.floor((sorted.length - 1) / 2)];
}

/**
 * The `embedded` step: `runs` first runs on a copy of examples/data (default flags) and on
 * a generated flat tree of `folders` folders (`--no-markers`), each into a new embedded
 * database, with their peak RSS and time to first row against the targets.
 */
export async function embeddedStep(
  ctx: ExtraContext,
  options: { folders: number; runs: number },
): Promise<ExtraResult> {
  const generated = join(ctx.work, "embedded_tree");
  ctx.log(`embedded: writing ${options.folders} folders`);
  const units = generateTree(generated, { folders: options.folders }).units;
  const cases = [
    // Six folders with stats or images, and Batch57 with its report alone (reportOnlyUnits).
    { name: "examples/data", tree: "", units: 7, flags: [] as string[] },
    {
      name: `${options.folders.toLocaleString("en-US")} folders, flat`,
      tree: generated,
      units,
      flags: ["--no-markers"],
    },
  ];
  const lines: string[] = [];
  const targets: TargetResult[] = [];
  const figures: Record<string, unknown> = {};
  for (const c of cases) {
    const runs: FirstRun[] = [];
    for (let i = 0; i < options.runs; i++) {
      const dir = Deno.makeTempDirSync({ dir: ctx.work, prefix: "embedded_run_" });
      let tree = c.tree;
      if (tree === "") {
        tree = join(dir, "examples", "data");
        copyExamples(decodeURIComponent(EXAMPLES.pathname), tree);
      }
      const run = await firstRun(ctx, tree, dir, c.flags);
      if (run.uploaded !== c.units) {
        throw new Error(`embedded ${c.name}: uploaded ${run.uploaded}, expected ${c.units}`);
      }
      runs.push(run);
      ctx.log(
        `embedded ${c.name} ${i + 1}/${options.runs}: ${(run.ms / 1000).toFixed(2)} s, ` +
          `first row ${((run.firstRowMs ?? NaN) / 1000).toFixed(2)} s, ` +
          `${Math.round(run.rssKb / 1024)} MB`,
      );
      Deno.removeSync(dir, { recursive: true });
    }
    const rssMb = Math.max(...runs.map((r) => r.rssKb)) / 1024;
    const firstRowS = median(runs.map((r) => r.firstRowMs ?? Infinity)) / 1000;
    const wallS = median(runs.map((r) => r.ms)) / 1000;
    const spread = runs.map((r) => `${Math.round(r.rssKb / 1024)}`).join("/");
    lines.push(
      `| embedded first run, ${c.name} | ${wallS.toFixed(2)} s, first row ${
        firstRowS.toFixed(2)
      } s | peak RSS per run ${spread} MB | | ${Math.round(rssMb)} MB |`,
    );
    targets.push(
      {
        label: `embedded first run, ${c.name}: peak RSS`,
        measured: rssMb,
        limit: RSS_LIMIT_MB,
        unit: "MB",
        pass: rssMb <= RSS_LIMIT_MB,
      },
      {
        label: `embedded first run, ${c.name}: first row`,
        measured: firstRowS,
        limit: FIRST_ROW_LIMIT_S,
        unit: "s",
        pass: firstRowS <= FIRST_ROW_LIMIT_S,
      },
    );
    figures[c.name] = runs;
  }
  Deno.removeSync(generated, { recursive: true });
  return { lines, targets, figures: { embedded: figures } };
}
