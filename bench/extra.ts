/**
 * The benchmark's opt-in steps (`deno task bench --steps verify,rebuild,watch,images`):
 *
 * - `verify`: `--verify` against N rows of this device on the server, vs `psql` streaming
 *   the same rows with `COPY ... TO STDOUT`.
 * - `rebuild`: a lost tracker rebuilt by `--verify` over the benchmark's tree, vs `find`;
 *   no row may be sent.
 * - `watch`: `--watch` latency from a folder's last write to its row, idle and while
 *   folders are written in bulk; CPU over an idle minute; RSS over a soak that keeps adding
 *   folders.
 * - `images`: `--images-to` against an S3-compatible server (s3rver), vs `rclone copy` of
 *   the same images to the same server.
 *
 * Each returns lines of a markdown table and the targets it checks.
 *
 * @module
 */

import { join } from "node:path";
import { startS3Server } from "../support/s3.ts";
import { connectionFromUrl } from "../lib/target/target.ts";
import { psqlExec } from "./floor.ts";
import { cpuSeconds, type Measured, peakRssKb, runMeasured, timeCommand } from "./proc.ts";
import type { TargetResult } from "./report.ts";

/** What an extra step needs from the benchmark. */
export interface ExtraContext {
  /** The server's URL. */
  url: string;
  /** A scratch folder. */
  work: string;
  /** The benchmark's generated tree and its unit count. */
  tree: string;
  units: number;
  /** The uploader script and the Deno flags it runs with. */
  uploader: string;
  denoArgs: string[];
  /** Environment of every uploader run (server URL, device). */
  env: Record<string, string>;
  deviceId: string;
  log: (line: string) => void;
}

/** A step's report. */
export interface ExtraResult {
  lines: string[];
  targets: TargetResult[];
  figures: Record<string, unknown>;
}

const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const mb = (kb: number) => `${Math.round(kb / 1024)} MB`;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.floor((sorted.length - 1) / 2)];
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0
    ? NaN
    : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

/** The last `summary` event an uploader run printed. */
function summaryOf(result: Measured): Record<string, unknown> {
  for (const line of result.stdout.trim().split("\n").reverse()) {
    if (line.startsWith("{") && line.includes('"event":"summary"')) return JSON.parse(line);
  }
  throw new Error(`No summary (exit ${result.code}): ${result.stderr.slice(-2000)}`);
}

function upload(ctx: ExtraContext, args: string[], env: Record<string, string> = {}) {
  return runMeasured(Deno.execPath(), [
    ...ctx.denoArgs,
    ctx.uploader,
    ...args,
    "--json",
    "--quiet",
  ], { env: { ...ctx.env, ...env } });
}

/**
 * `--verify` over `rows` server rows of this device (made with generate_series, with
 * content hashes), vs streaming the same rows with `psql -c "COPY ... TO STDOUT"`.
 */
export async function verifyStep(
  ctx: ExtraContext,
  rows: number,
  runs: number,
): Promise<ExtraResult> {
  const small = join(ctx.work, "verify_tree");
  Deno.mkdirSync(join(small, "Only"), { recursive: true });
  Deno.writeTextFileSync(join(small, "Only", "stats.json"), '{"result":"PASS"}');
  ctx.log(`verify: inserting ${rows} rows`);
  await psqlExec(
    ctx.url,
    `delete from device_test where device_id = '${ctx.deviceId}';
     insert into device_test (device_id, folder_key, folder_name, images, metadata)
     select '${ctx.deviceId}', 'Line' || (g / 1000) || '/Batch' || g, 'Batch' || g, '{a.jpg}',
       jsonb_build_object('content_hash', md5(g::text), 'folder_hash', md5((g + 1)::text))
     from generate_series(1, ${rows}) g;
     vacuum analyze device_test;`,
  );
  const copySql = `COPY (select folder_key, metadata->>'content_hash' from device_test ` +
    `where device_id = '${ctx.deviceId}'::uuid) TO STDOUT`;
  const copyMs: number[] = [];
  const verifyMs: number[] = [];
  let rss = 0;
  for (let i = 0; i < runs; i++) {
    const conn = connectionFromUrl(ctx.url);
    const copy = await timeCommand("psql", ["-X", "-q", ...conn.args, "-c", copySql], {
      discardStdout: true,
      env: { ...conn.env, PATH: Deno.env.get("PATH") ?? "" },
    });
    copyMs.push(copy.wallMs);
    const run = await upload(ctx, [
      small,
      "--verify",
      "--no-markers",
      "--min-age",
      "0",
      "--db-path",
      join(ctx.work, `verify-${i}.db`),
    ]);
    const summary = summaryOf(run);
    if (summary.exit_code !== 0) throw new Error(`verify: exit ${summary.exit_code}`);
    const event = run.stdout.split("\n").find((l) => l.includes('"event":"verify"'));
    // The small tree's own row is there from the second run on.
    const read = event ? JSON.parse(event).rows : undefined;
    if (read !== rows && read !== rows + 1) {
      throw new Error(`verify: read ${read} rows, expected ${rows}`);
    }
    verifyMs.push(run.wallMs);
    rss = Math.max(rss, run.peakRssKb);
    ctx.log(`verify ${i + 1}/${runs}: ${s(run.wallMs)} (COPY ${s(copy.wallMs)})`);
  }
  await psqlExec(ctx.url, `delete from device_test where device_id = '${ctx.deviceId}'`);
  const ratio = median(verifyMs) / median(copyMs);
  return {
    lines: [
      `| --verify over ${rows.toLocaleString("en-US")} server rows | ${s(median(verifyMs))} | ` +
      `psql COPY TO STDOUT ${s(median(copyMs))} | ${ratio.toFixed(2)} | ${mb(rss)} |`,
    ],
    targets: [
      {
        label: "--verify / psql COPY TO STDOUT",
        measured: ratio,
        limit: 2,
        unit: "x",
        pass: ratio <= 2,
      },
      {
        label: "--verify peak RSS",
        measured: rss / 1024,
        limit: 200,
        unit: "MB",
        pass: rss / 1024 <= 200,
      },
    ],
    figures: { rows, verify_ms: verifyMs, copy_ms: copyMs, rss_kb: rss },
  };
}

/**
 * A lost tracker rebuilt from the server: the benchmark's tree is uploaded once, then
 * `--verify` with a new tracker must adopt every folder and send nothing; vs `find`.
 */
export async function rebuildStep(ctx: ExtraContext, runs: number): Promise<ExtraResult> {
  await psqlExec(ctx.url, `delete from device_test where device_id = '${ctx.deviceId}'`);
  const first = await upload(ctx, [
    ctx.tree,
    "--no-markers",
    "--min-age",
    "0",
    "--db-path",
    join(ctx.work, "rebuild-source.db"),
  ]);
  if (summaryOf(first).uploaded !== ctx.units) throw new Error("rebuild: first upload incomplete");
  const times: number[] = [];
  const finds: number[] = [];
  let rss = 0;
  for (let i = 0; i < runs; i++) {
    const find = await timeCommand("find", [ctx.tree, "-type", "f", "-printf", "%h %f %s %T@\\n"], {
      discardStdout: true,
    });
    finds.push(find.wallMs);
    const run = await upload(ctx, [
      ctx.tree,
      "--verify",
      "--no-markers",
      "--min-age",
      "0",
      "--db-path",
      join(ctx.work, `rebuild-${i}.db`),
    ]);
    const summary = summaryOf(run);
    if (summary.uploaded !== 0 || summary.adopted !== ctx.units) {
      throw new Error(
        `rebuild: sent ${summary.uploaded}, adopted ${summary.adopted} of ${ctx.units}`,
      );
    }
    times.push(run.wallMs);
    rss = Math.max(rss, run.peakRssKb);
    ctx.log(`rebuild ${i + 1}/${runs}: ${s(run.wallMs)} (find ${s(find.wallMs)}), 0 rows sent`);
  }
  await psqlExec(ctx.url, `delete from device_test where device_id = '${ctx.deviceId}'`);
  const ratio = median(times) / median(finds);
  return {
    lines: [
      `| lost tracker rebuilt by --verify, ${
        ctx.units.toLocaleString("en-US")
      } units, 0 rows sent | ` +
      `${s(median(times))} | find ${s(median(finds))} | ${ratio.toFixed(2)} | ${mb(rss)} |`,
    ],
    targets: [{
      label: "rebuild by --verify / find",
      measured: ratio,
      limit: 2,
      unit: "x",
      pass: ratio <= 2,
    }],
    figures: { rebuild_ms: times, find_ms: finds, rss_kb: rss },
  };
}

/** Writes a unit folder (stats.json, then an image) and returns when its last write ended. */
function writeFolder(base: string, name: string): number {
  const dir = join(base, name);
  Deno.mkdirSync(dir, { recursive: true });
  Deno.writeTextFileSync(join(dir, "stats.json"), `{"result":"PASS","name":"${name}"}`);
  Deno.writeFileSync(join(dir, "image.jpg"), new Uint8Array(2048));
  return Date.now();
}

/** Waits until every key has a row, polling; returns when each appeared (ms since epoch). */
async function rowsVisible(
  url: string,
  keys: string[],
  timeoutMs: number,
): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  const wanted = new Set(keys);
  const deadline = Date.now() + timeoutMs;
  while (seen.size < keys.length && Date.now() < deadline) {
    const out = await psqlExec(
      url,
      `select folder_key from device_test where folder_key like 'W%' and updated_at > now() - interval '1 hour'`,
    );
    const now = Date.now();
    for (const key of out.trim().split("\n")) {
      if (wanted.has(key) && !seen.has(key)) seen.set(key, now);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return seen;
}

/**
 * `--watch`: latency from a folder's last write to its row (p50, p95), idle and while
 * `bulk` folders are written as fast as one process can; CPU seconds over `idleSeconds`
 * idle; RSS over a soak of `soakSeconds` that adds a folder every 200 ms.
 */
export async function watchStep(
  ctx: ExtraContext,
  options: { bulk: number; idleSeconds: number; soakSeconds: number; minAge: number },
): Promise<ExtraResult> {
  const base = join(ctx.work, "watch_tree");
  Deno.mkdirSync(base, { recursive: true });
  await psqlExec(ctx.url, `delete from device_test where device_id = '${ctx.deviceId}'`);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      ...ctx.denoArgs,
      ctx.uploader,
      base,
      "--watch",
      "--min-age",
      String(options.minAge),
      "--rescan-every",
      "3600",
      "--no-markers",
      "--json",
      "--quiet",
      "--db-path",
      join(ctx.work, "watch.db"),
    ],
    env: ctx.env,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const pid = child.pid;
  const stderr = new Response(child.stderr).text();
  try {
    await new Promise((r) => setTimeout(r, 3000)); // started, first (empty) pass done
    // Idle latency: folders written one at a time, 1.5 s apart.
    const idle: number[] = [];
    for (let i = 0; i < 10; i++) {
      const key = `W-idle-${i}`;
      const wrote = writeFolder(base, key);
      const seen = await rowsVisible(ctx.url, [key], 30_000);
      const at = seen.get(key);
      if (at === undefined) throw new Error(`watch: ${key} never landed`);
      idle.push(at - wrote);
      await new Promise((r) => setTimeout(r, 500));
    }
    ctx.log(`watch idle latency: p50 ${s(median(idle))}, p95 ${s(percentile(idle, 0.95))}`);
    // Under load: `bulk` folders written as fast as possible.
    const wrote = new Map<string, number>();
    for (let i = 0; i < options.bulk; i++) {
      wrote.set(`W-bulk-${i}`, writeFolder(base, `W-bulk-${i}`));
    }
    const seen = await rowsVisible(ctx.url, [...wrote.keys()], 300_000);
    const loaded = [...wrote].map(([k, t]) => (seen.get(k) ?? NaN) - t);
    const missing = loaded.filter((v) => Number.isNaN(v)).length;
    if (missing > 0) throw new Error(`watch: ${missing} bulk folders never landed`);
    ctx.log(
      `watch bulk latency (${options.bulk}): p50 ${s(median(loaded))}, p95 ${
        s(percentile(loaded, 0.95))
      }`,
    );
    // Idle CPU.
    await new Promise((r) => setTimeout(r, 2000));
    const cpu0 = cpuSeconds(pid) ?? 0;
    await new Promise((r) => setTimeout(r, options.idleSeconds * 1000));
    const idleCpu = (cpuSeconds(pid) ?? 0) - cpu0;
    ctx.log(`watch idle CPU: ${idleCpu.toFixed(2)} s over ${options.idleSeconds} s`);
    // Soak: a folder every 200 ms; RSS sampled.
    const rssAt = (): number => {
      const status = Deno.readTextFileSync(`/proc/${pid}/status`);
      return Number(status.match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0);
    };
    const rssStart = rssAt();
    let rssMax = rssStart;
    const soakEnd = Date.now() + options.soakSeconds * 1000;
    let n = 0;
    while (Date.now() < soakEnd) {
      writeFolder(base, `W-soak-${n++}`);
      rssMax = Math.max(rssMax, rssAt());
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, (options.minAge + 3) * 1000));
    const rssEnd = rssAt();
    const landed = Number(
      (await psqlExec(ctx.url, `select count(*) from device_test where folder_key like 'W-soak-%'`))
        .trim(),
    );
    ctx.log(
      `watch soak: ${n} folders written, ${landed} landed; RSS ${mb(rssStart)} -> ${mb(rssEnd)}`,
    );
    const peak = peakRssKb(pid) ?? 0;
    child.kill("SIGTERM");
    const status = await child.status;
    if (status.code !== 0) {
      throw new Error(`watch: SIGTERM gave exit ${status.code}: ${await stderr}`);
    }
    const target = options.minAge * 1000 + 2000;
    return {
      lines: [
        `| --watch, last write -> row, idle (10 folders, --min-age ${options.minAge}) | p50 ${
          s(median(idle))
        } | p95 ${s(percentile(idle, 0.95))} | | |`,
        `| --watch, last write -> row, ${
          options.bulk.toLocaleString("en-US")
        } folders written at once | p50 ${s(median(loaded))} | p95 ${
          s(percentile(loaded, 0.95))
        } | | |`,
        `| --watch, CPU over ${options.idleSeconds} idle seconds | ${idleCpu.toFixed(2)} s | | | |`,
        `| --watch soak, ${options.soakSeconds} s, ${n} folders added (${landed} landed) | RSS ${
          mb(rssStart)
        } -> ${mb(rssEnd)} | max ${mb(rssMax)} | | peak ${mb(peak)} |`,
      ],
      targets: [
        {
          label: `--watch median latency, idle (<= min-age + 2 s)`,
          measured: median(idle) / 1000,
          limit: target / 1000,
          unit: "s",
          pass: median(idle) <= target,
        },
        {
          label: `--watch idle CPU over ${options.idleSeconds} s`,
          measured: idleCpu,
          limit: options.idleSeconds * 0.01,
          unit: "s",
          pass: idleCpu <= options.idleSeconds * 0.01,
        },
        {
          label: "--watch soak: every folder landed",
          measured: landed,
          limit: n,
          unit: "",
          pass: landed === n,
        },
      ],
      figures: {
        idle_ms: idle,
        bulk_ms: loaded,
        idle_cpu_s: idleCpu,
        rss_kb: { rssStart, rssEnd, rssMax, peak },
      },
    };
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already ended.
    }
    await child.status;
    await stderr.catch(() => "");
  }
}

/**
 * `--images-to` vs `rclone copy` of the same images to the same s3rver: `folders` folders of
 * `perFolder` images of ~50 KB.
 */
export async function imagesStep(
  ctx: ExtraContext,
  options: { folders: number; perFolder: number; runs: number },
): Promise<ExtraResult> {
  const tree = join(ctx.work, "images_tree");
  let files = 0;
  for (let f = 0; f < options.folders; f++) {
    const dir = join(tree, `Batch${f}`);
    Deno.mkdirSync(dir, { recursive: true });
    Deno.writeTextFileSync(join(dir, "stats.json"), '{"result":"PASS"}');
    for (let i = 0; i < options.perFolder; i++) {
      const bytes = new Uint8Array(40_000 + ((f * 7 + i * 13) % 20_000));
      crypto.getRandomValues(bytes.subarray(0, Math.min(bytes.length, 65536)));
      Deno.writeFileSync(join(dir, `img ${i}.jpg`), bytes);
      files++;
    }
  }
  const rclone = await new Deno.Command("rclone", {
    args: ["version"],
    stdout: "null",
    stderr: "null",
  })
    .output().then((o) => o.success, () => false);
  const ours: number[] = [];
  const theirs: number[] = [];
  let rss = 0;
  let rcloneRss = 0;
  for (let r = 0; r < options.runs; r++) {
    const s3 = await startS3Server();
    try {
      await psqlExec(ctx.url, `delete from device_test where device_id = '${ctx.deviceId}'`);
      const run = await upload(ctx, [
        tree,
        "--no-markers",
        "--min-age",
        "0",
        "--images-to",
        `s3://${s3.bucket}/ours`,
        "--db-path",
        join(ctx.work, `images-${r}.db`),
      ], s3.env());
      const summary = summaryOf(run);
      if (summary.objects !== files) throw new Error(`images: put ${summary.objects} of ${files}`);
      ours.push(run.wallMs);
      rss = Math.max(rss, run.peakRssKb);
      if (rclone) {
        const copy = await runMeasured("rclone", [
          "copy",
          "--transfers",
          "8",
          "--checkers",
          "8",
          tree,
          `bench:${s3.bucket}/rclone`,
          "--include",
          "*.jpg",
        ], { env: { ...Deno.env.toObject(), ...s3.rcloneEnv("bench") } });
        if (copy.code !== 0) throw new Error(`rclone: exit ${copy.code}: ${copy.stderr}`);
        theirs.push(copy.wallMs);
        rcloneRss = Math.max(rcloneRss, copy.peakRssKb);
      }
      ctx.log(
        `images ${r + 1}/${options.runs}: ours ${s(run.wallMs)}, rclone ${s(theirs.at(-1) ?? NaN)}`,
      );
    } finally {
      await s3.close();
    }
  }
  const oursRate = files / (median(ours) / 1000);
  const rcloneRate = files / (median(theirs) / 1000);
  return {
    lines: [
      `| --images-to, ${files} images of ~50 KB in ${options.folders} folders (rows too) | ${
        s(median(ours))
      } (${Math.round(oursRate)} files/s) | rclone copy --transfers 8: ${
        rclone ? `${s(median(theirs))} (${Math.round(rcloneRate)} files/s)` : "not installed"
      } | ${rclone ? (median(ours) / median(theirs)).toFixed(2) : ""} | ours ${mb(rss)}, rclone ${
        mb(rcloneRss)
      } |`,
    ],
    targets: rclone
      ? [{
        label: "--images-to files/s / rclone files/s",
        measured: oursRate / rcloneRate,
        limit: 1,
        unit: "",
        pass: oursRate >= rcloneRate,
      }]
      : [],
    figures: { files, ours_ms: ours, rclone_ms: theirs, rss_kb: rss, rclone_rss_kb: rcloneRss },
  };
}
