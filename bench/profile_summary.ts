/**
 * Summarises V8 `.cpuprofile` files (from `deno run --cpu-prof`, one per thread): time by
 * pipeline phase, the top functions by self time, self time by source file, and inclusive
 * time of the functions that matter.
 *
 * ```sh
 * deno run -A bench/profile_summary.ts /tmp/prof/*.cpuprofile [--top 25] [--json]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

/** The parts of a `.cpuprofile` used here. */
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One line of a summary. */
export interface Entry {
  name: string;
  ms: number;
  pct: number;
}

/** What {@linkcode summarise} returns. */
export interface ProfileSummary {
  /** Wall time the profile covers (ms). */
  totalMs: number;
  /** Time in `(idle)`: waiting for I/O, timers, child processes (ms). */
  idleMs: number;
  /** Time in `(garbage collector)` (ms). */
  gcMs: number;
  /** Functions by self time. */
  self: Entry[];
  /** Source files by self time. */
  files: Entry[];
  /** Functions by inclusive time (counted once per sample however deep the recursion). */
  inclusive: Entry[];
  /** Time by phase of the pipeline: each sample goes to its innermost known phase. */
  phases: Entry[];
}

/**
 * The pipeline's phases, by the function that marks them, most specific first. A sample
 * belongs to the first phase whose function is anywhere on its stack; samples under none
 * of them are "other" (startup, glue).
 */
const PHASES: [RegExp, string][] = [
  [/^readStats lib\/folder\.ts/, "read stats.json (buildRow)"],
  [/^fingerprintFiles lib\/fingerprint\.ts/, "fingerprint md5 (scan)"],
  [/^buildUpsertStatement lib\/sql\.ts/, "upsert SQL text (writer)"],
  [/^buildRow lib\/folder\.ts/, "build row: md5, JSON (buildRow)"],
  [/^applyScan lib\/tracker\.ts/, "tracker diff (SQLite)"],
  [
    /^(recordBatch|startBatch|recordFolderFailures) lib\/tracker\.ts/,
    "tracker record batch (SQLite)",
  ],
  [/^(missing|finishRun|startRun) lib\/tracker\.ts/, "tracker run bookkeeping (SQLite)"],
  [/^(scanFolders|snapshotFolder) lib\/scan\.ts/, "walk: readdir + lstat (scan)"],
  [/ lib\/psql\.ts/, "psql session I/O"],
  [/ lib\/writer\.ts/, "writer (pool, retry)"],
  [/ lib\/progress\.ts/, "progress output"],
  [/ lib\/tracker\.ts/, "tracker other (open, lock, migrate)"],
  [/^\(idle\)$/, "idle (waiting: psql replies, timers, messages)"],
  [/^\(garbage collector\)$/, "GC"],
];

function phaseOf(names: string[]): string {
  for (const [pattern, phase] of PHASES) {
    if (names.some((name) => pattern.test(name))) return phase;
  }
  return "other (startup, module load, pipeline glue)";
}

/** Short source location: the path after the repository root, or the URL as it is. */
function shortUrl(url: string): string {
  if (url === "") return "(native)";
  const m = url.match(/\/(lib|scripts|bench|tests|config\.ts)(\/.*)?$/);
  if (m) return m[0].slice(1);
  if (url.startsWith("ext:") || url.startsWith("node:")) return url;
  return url.replace(/^file:\/\//, "").split("/").slice(-2).join("/");
}

function frameName(f: CallFrame): string {
  const fn = f.functionName || "(anonymous)";
  if (f.url === "") return fn;
  return `${fn} ${shortUrl(f.url)}:${f.lineNumber + 1}`;
}

/** Aggregates one or more profiles. */
export function summarise(profiles: CpuProfile[], top = 25): ProfileSummary {
  const self = new Map<string, number>();
  const files = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const phases = new Map<string, number>();
  let totalMs = 0;
  let idleMs = 0;
  let gcMs = 0;
  for (const profile of profiles) {
    const byId = new Map<number, ProfileNode>();
    const parent = new Map<number, number>();
    for (const node of profile.nodes) {
      byId.set(node.id, node);
      for (const c of node.children ?? []) parent.set(c, node.id);
    }
    totalMs += (profile.endTime - profile.startTime) / 1000;
    const n = profile.samples.length;
    for (let i = 0; i < n; i++) {
      // A sample's time runs until the next sample.
      const us = i + 1 < n ? profile.timeDeltas[i + 1] : 0;
      const ms = Math.max(0, us) / 1000;
      const node = byId.get(profile.samples[i])!;
      const name = frameName(node.callFrame);
      self.set(name, (self.get(name) ?? 0) + ms);
      const fn = node.callFrame.functionName;
      if (fn === "(idle)") idleMs += ms;
      if (fn === "(garbage collector)") gcMs += ms;
      const file = fn.startsWith("(") && node.callFrame.url === ""
        ? fn
        : shortUrl(node.callFrame.url);
      files.set(file, (files.get(file) ?? 0) + ms);
      const seen = new Set<string>();
      const stack: string[] = [];
      for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
        const frame = byId.get(id)!.callFrame;
        if (frame.functionName === "(root)") continue;
        const key = frameName(frame);
        stack.push(key);
        if (seen.has(key)) continue;
        seen.add(key);
        inclusive.set(key, (inclusive.get(key) ?? 0) + ms);
      }
      const phase = phaseOf(stack);
      phases.set(phase, (phases.get(phase) ?? 0) + ms);
    }
  }
  const rank = (map: Map<string, number>, count: number): Entry[] =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, count)
      .map(([name, ms]) => ({ name, ms, pct: totalMs > 0 ? (100 * ms) / totalMs : 0 }));
  return {
    totalMs,
    idleMs,
    gcMs,
    self: rank(self, top),
    files: rank(files, top),
    inclusive: rank(inclusive, top * 2),
    phases: rank(phases, PHASES.length + 1),
  };
}

/**
 * Which thread a profile is of: the main thread runs `scripts/`; a worker's is named by
 * the first `lib/` file whose name holds "worker", else by the most common `lib/` file.
 */
export function threadName(profile: CpuProfile): string {
  const urls = profile.nodes.map((n) => n.callFrame.url);
  if (urls.some((u) => /\/scripts\/[^/]+\.ts$/.test(u))) return "main thread";
  const libs = urls.filter((u) => /\/lib\/[^/]+\.ts$/.test(u)).map(shortUrl);
  const named = libs.find((u) => u.includes("worker"));
  if (named) return `worker thread (${named})`;
  const counts = new Map<string, number>();
  for (const u of libs) counts.set(u, (counts.get(u) ?? 0) + 1);
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
  return top ? `worker thread (${top[0]})` : "worker thread";
}

/** One summary per profile file, each named by its thread, main thread first. */
export function summariseEach(
  paths: string[],
  top = 25,
): { thread: string; file: string; summary: ProfileSummary }[] {
  return paths
    .map((file) => {
      const [profile] = readProfiles([file]);
      return { thread: threadName(profile), file, summary: summarise([profile], top) };
    })
    .sort((a, b) => (a.thread === "main thread" ? -1 : b.thread === "main thread" ? 1 : 0));
}

/** Reads `.cpuprofile` files. */
export function readProfiles(paths: string[]): CpuProfile[] {
  return paths.map((p) => JSON.parse(Deno.readTextFileSync(p)) as CpuProfile);
}

/** The `.cpuprofile` files in a directory. */
export function profilesIn(dir: string): string[] {
  return Array.from(Deno.readDirSync(dir))
    .filter((e) => e.name.endsWith(".cpuprofile"))
    .map((e) => `${dir}/${e.name}`)
    .sort();
}

/** A markdown rendering of a summary. */
export function formatSummary(title: string, s: ProfileSummary): string {
  const table = (heading: string, entries: Entry[]) =>
    [
      `| ${heading} | ms | % of wall |`,
      "|---|---:|---:|",
      ...entries.map((e) =>
        `| \`${e.name.replaceAll("|", "\\|")}\` | ${e.ms.toFixed(0)} | ${e.pct.toFixed(1)} |`
      ),
    ].join("\n");
  return [
    `### ${title}`,
    "",
    `Wall ${(s.totalMs / 1000).toFixed(2)} s; idle (waiting for psql, timers, messages) ${
      (s.idleMs / 1000).toFixed(2)
    } s; GC ${(s.gcMs / 1000).toFixed(2)} s.`,
    "",
    table("phase", s.phases),
    "",
    table("self time: function", s.self),
    "",
    table("self time: file", s.files),
    "",
    table("inclusive time: function", s.inclusive),
    "",
  ].join("\n");
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { top: { type: "string", default: "25" }, json: { type: "boolean" } },
  });
  const paths = positionals.flatMap((p) => Deno.statSync(p).isDirectory ? profilesIn(p) : [p]);
  if (paths.length === 0) {
    console.error("Usage: profile_summary.ts <file.cpuprofile|dir>... [--top N] [--json]");
    Deno.exit(2);
  }
  const each = summariseEach(paths, Number(values.top));
  if (values.json) console.log(JSON.stringify(each, null, 2));
  else for (const e of each) console.log(formatSummary(`${e.thread}: ${e.file}`, e.summary));
}
