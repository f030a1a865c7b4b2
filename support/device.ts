/**
 * A simulated test device, for tests of `--watch` and `--ready-when`: it writes one folder
 * per test run the way the authors' devices do, images first with pauses between them (the
 * authors' own data has them minutes apart), then stats.json, then the PDF report last, each
 * file dated when it is written. Several runs may overlap, started a few seconds apart.
 *
 * ```ts
 * const runs = deviceRuns(4, { gapMs: 8_000, staggerMs: 5_000 });
 * await simulateDevice(data, runs);
 * ```
 *
 * @module
 */

import { join } from "node:path";
import { delay } from "./run.ts";

/** One file a run writes, and when (ms after the run starts). */
export interface DeviceWrite {
  name: string;
  atMs: number;
  bytes?: number;
  json?: unknown;
}

/** One test run: a folder and its writes in order. */
export interface DeviceRun {
  folder: string;
  /** When it starts, ms after the simulation starts. */
  startMs: number;
  writes: DeviceWrite[];
}

/** Options of {@linkcode deviceRuns}. */
export interface DeviceRunOptions {
  /** Images per run. Default 3. */
  images?: number;
  /** Pause between two writes of a run (ms). Default 8,000. */
  gapMs?: number;
  /** Pause between the starts of two runs (ms). Default 5,000. */
  staggerMs?: number;
  /** Folder name prefix. Default `Batch`. */
  prefix?: string;
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** The device's `YYYY-MM-DD HH:MM:SS` (UTC) of a time. */
function stamp(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

/**
 * `count` runs, each writing `images` images `gapMs` apart, then stats.json and the PDF
 * report `gapMs` apart after the last image. File names carry the device's time stamps.
 */
export function deviceRuns(count: number, options: DeviceRunOptions = {}): DeviceRun[] {
  const images = options.images ?? 3;
  const gap = options.gapMs ?? 8_000;
  const stagger = options.staggerMs ?? 5_000;
  const base = Date.UTC(2025, 5, 2, 16, 16, 31);
  const runs: DeviceRun[] = [];
  for (let r = 0; r < count; r++) {
    const writes: DeviceWrite[] = [];
    for (let k = 0; k < images; k++) {
      const at = base + r * 3_600_000 + k * 322_000;
      writes.push({ name: `${stamp(at)}.jpg`, atMs: k * gap, bytes: 46_000 + 97 * k + r });
    }
    writes.push({
      name: "stats.json",
      atMs: images * gap,
      json: { result: r % 2 === 0 ? [[1, 2, 3]] : [], mean: [[r, r, r]] },
    });
    writes.push({
      name: `${stamp(base + r * 3_600_000 + 1_800_000).slice(0, 16)}.pdf`,
      atMs: (images + 1) * gap,
      bytes: 2048 + r,
    });
    runs.push({ folder: `${options.prefix ?? "Batch"}${60 + r}`, startMs: r * stagger, writes });
  }
  return runs;
}

/** Writes one file the way a device does: created, written, dated now. */
function writeFile(dir: string, w: DeviceWrite): void {
  const path = join(dir, w.name);
  if (w.json !== undefined) Deno.writeTextFileSync(path, JSON.stringify(w.json, null, 2));
  else Deno.writeFileSync(path, new Uint8Array(w.bytes ?? 1).fill(0x5a));
}

/**
 * Plays the runs into `root` in real time: each run's folder is created at its start, then
 * each file written at its time. Resolves when every file is written.
 */
export async function simulateDevice(root: string, runs: readonly DeviceRun[]): Promise<void> {
  const started = performance.now();
  await Promise.all(runs.map(async (run) => {
    await delay(run.startMs);
    const dir = join(root, run.folder);
    Deno.mkdirSync(dir, { recursive: true });
    for (const w of run.writes) {
      const wait = started + run.startMs + w.atMs - performance.now();
      if (wait > 0) await delay(wait);
      writeFile(dir, w);
    }
  }));
}
