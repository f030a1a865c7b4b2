/**
 * The benchmark's figures, their medians and the markdown tables printed at the end.
 *
 * @module
 */

/** One measured run of one step. */
export interface RunFigures {
  /** Wall time of the step (ms). */
  ms: number;
  /** Wall time of its floor measured just before it (ms), when it has one. */
  floorMs?: number;
  /** Peak RSS of the Deno process (KiB). */
  rssKb?: number;
  /** Highest peak RSS of one psql child (KiB). */
  psqlPeakKb?: number;
  /** Sum of the psql children's peak RSS (KiB). */
  psqlSumKb?: number;
  /**
   * CPU seconds: the uploader's Deno process (all threads), its psql children, and the
   * server's process tree (postmaster, backends, background processes).
   */
  cpu?: { deno: number; psql: number; server: number | null };
  /** The uploader's summary event, when the step ran the uploader. */
  summary?: Record<string, unknown>;
  /** Load average (1 min) when the run started. */
  load?: number;
}

/** A step: its runs and what they mean. */
export interface StepResult {
  key: string;
  label: string;
  /** What the floor is, e.g. `find`. */
  floorLabel?: string;
  /** Folders the step handles (for a rate). */
  folders?: number;
  runs: RunFigures[];
}

/** A target and whether the measured value met it. */
export interface TargetResult {
  label: string;
  measured: number;
  limit: number;
  unit: string;
  pass: boolean;
  /** For a ratio: the figure and its floor, e.g. `6.30 s / 2.24 s (find + \copy)`. */
  detail?: string;
}

/** The median of some numbers (mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Medians and peaks of a step, for the table and the JSON. */
export interface StepFigures {
  medianMs: number;
  floorMs: number | null;
  ratio: number | null;
  rate: number | null;
  rssMb: number | null;
  psqlPeakMb: number | null;
  psqlSumMb: number | null;
  cpu: { deno: number; psql: number; server: number | null } | null;
  /** The same CPU seconds per 1,000 folders of the step (rows, for an upload). */
  cpuPer1000: { deno: number; psql: number; server: number | null } | null;
  /** Median 1-minute load average at the start of the runs. */
  load: number | null;
}

const mb = (kb: number | undefined) => (kb === undefined ? null : kb / 1024);

/** The medians of a step's runs and the peak of its memory figures. */
export function stepFigures(step: StepResult): StepFigures {
  const medianMs = median(step.runs.map((r) => r.ms));
  const floors = step.runs.map((r) => r.floorMs).filter((v): v is number => v !== undefined);
  const floorMs = floors.length > 0 ? median(floors) : null;
  const peak = (pick: (r: RunFigures) => number | undefined) => {
    const values = step.runs.map(pick).filter((v): v is number => v !== undefined);
    return values.length > 0 ? Math.max(...values) : undefined;
  };
  const cpus = step.runs.map((r) => r.cpu).filter((c) => c !== undefined);
  const servers = cpus.map((c) => c.server).filter((v): v is number => v !== null);
  const loads = step.runs.map((r) => r.load).filter((v): v is number => v !== undefined);
  const cpu = cpus.length > 0
    ? {
      deno: median(cpus.map((c) => c.deno)),
      psql: median(cpus.map((c) => c.psql)),
      server: servers.length > 0 ? median(servers) : null,
    }
    : null;
  const per = step.folders ? 1000 / step.folders : null;
  return {
    medianMs,
    floorMs,
    ratio: floorMs ? medianMs / floorMs : null,
    rate: step.folders ? step.folders / (medianMs / 1000) : null,
    rssMb: mb(peak((r) => r.rssKb)),
    psqlPeakMb: mb(peak((r) => r.psqlPeakKb)),
    psqlSumMb: mb(peak((r) => r.psqlSumKb)),
    cpu,
    cpuPer1000: cpu && per !== null
      ? {
        deno: cpu.deno * per,
        psql: cpu.psql * per,
        server: cpu.server === null ? null : cpu.server * per,
      }
      : null,
    load: loads.length > 0 ? median(loads) : null,
  };
}

const fmt = (
  v: number | null,
  digits = 2,
) => (v === null || !Number.isFinite(v) ? "" : v.toFixed(digits));

/** The main table: one line per step. */
export function formatSteps(steps: StepResult[]): string {
  const lines = [
    "| step | runs | median s | floor | floor s | x floor | folders/s | Deno RSS MB | " +
    "psql RSS MB peak / sum | CPU s Deno / psql / server | " +
    "CPU s per 1,000 folders (rows) Deno / psql / server | load |",
    "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  const cpuText = (c: StepFigures["cpu"], digits: number) =>
    c
      ? `${fmt(c.deno, digits)} / ${fmt(c.psql, digits)} / ${
        c.server === null ? "-" : fmt(c.server, digits)
      }`
      : "";
  for (const step of steps) {
    const f = stepFigures(step);
    const cpu = cpuText(f.cpu, 1);
    const per1000 = cpuText(f.cpuPer1000, 3);
    const psql = f.psqlPeakMb === null || f.psqlPeakMb === 0
      ? ""
      : f.psqlSumMb === null
      ? fmt(f.psqlPeakMb, 0)
      : `${fmt(f.psqlPeakMb, 0)} / ${fmt(f.psqlSumMb, 0)}`;
    lines.push(
      `| ${step.label} | ${step.runs.length} | ${fmt(f.medianMs / 1000)} | ${
        step.floorLabel ?? ""
      } | ` +
        `${fmt(f.floorMs === null ? null : f.floorMs / 1000)} | ${fmt(f.ratio)} | ` +
        `${f.rate === null ? "" : Math.round(f.rate).toLocaleString("en-US")} | ${
          fmt(f.rssMb, 0)
        } | ` +
        `${psql} | ${cpu} | ${per1000} | ${fmt(f.load, 1)} |`,
    );
  }
  return lines.join("\n");
}

/** The targets table. */
export function formatTargets(targets: TargetResult[]): string {
  const lines = [
    "| target | measured / floor | ratio or figure | limit | pass |",
    "|---|---|---:|---:|:---:|",
  ];
  for (const t of targets) {
    lines.push(
      `| ${t.label} | ${t.detail ?? ""} | ${fmt(t.measured)} ${t.unit} | ${
        fmt(t.limit)
      } ${t.unit} | ${t.pass ? "PASS" : "FAIL"} |`,
    );
  }
  return lines.join("\n");
}
