/**
 * Runs a command and measures it: wall time, peak RSS (VmHWM) of the process itself and of
 * its `psql` descendants, and CPU seconds, by polling `/proc` while it runs. Linux only.
 *
 * @module
 */

/** What one measured run gave. */
export interface Measured {
  /** Exit code of the command. */
  code: number;
  /** Wall time from spawn to exit (ms). */
  wallMs: number;
  stdout: string;
  stderr: string;
  /** Peak RSS of the command's own process (KiB, VmHWM at the last poll). */
  peakRssKb: number;
  /** Highest peak RSS among its psql descendants (KiB). */
  psqlPeakKb: number;
  /** Sum of the psql descendants' peak RSS (KiB), i.e. what they held together at worst. */
  psqlSumKb: number;
  /** psql processes seen. */
  psqlCount: number;
  /** CPU seconds (user + system) of the command's own process at the last poll. */
  cpuSeconds: number;
  /** CPU seconds of its psql descendants (at their last poll). */
  psqlCpuSeconds: number;
  /**
   * CPU seconds of the command and everything it started and waited for, exactly: what
   * this process's reaped-children counters grew by while it ran.
   */
  treeCpuSeconds: number;
}

/** Options for {@linkcode runMeasured}. */
export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Poll interval (ms). Default 100. */
  pollMs?: number;
  /** Data for stdin. */
  stdin?: string;
  /** Send stdout to /dev/null instead of reading it. Default false. */
  discardStdout?: boolean;
}

const CLK_TCK = 100;

/** Children started by {@linkcode runMeasured} and still running (to stop on Ctrl-C). */
export const runningChildren: Set<Deno.ChildProcess> = new Set();

/** Reads a small /proc file, or undefined when the process is gone. */
function readProc(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    // The process exited between the listing and the read: expected while polling.
    return undefined;
  }
}

/** VmHWM (KiB) from /proc/<pid>/status, or undefined. */
export function peakRssKb(pid: number): number | undefined {
  const status = readProc(`/proc/${pid}/status`);
  const match = status?.match(/^VmHWM:\s+(\d+)\s+kB/m);
  return match ? Number(match[1]) : undefined;
}

/** User + system CPU seconds of a process (its own, not its children's), or undefined. */
export function cpuSeconds(pid: number, withChildren = false): number | undefined {
  const stat = readProc(`/proc/${pid}/stat`);
  if (!stat) return undefined;
  // The command name (field 2) may hold spaces: fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
  let ticks = Number(fields[11]) + Number(fields[12]);
  if (withChildren) ticks += Number(fields[13]) + Number(fields[14]);
  return ticks / CLK_TCK;
}

/**
 * CPU seconds of a process tree so far: the process's own and its reaped children's, plus
 * every live descendant's (own and reaped). The difference between two readings is what
 * the tree used in between, whether a child exited (and was reaped) meanwhile or not.
 * Undefined when the process is gone.
 */
export function treeCpuSeconds(pid: number): number | undefined {
  const root = cpuSeconds(pid, true);
  if (root === undefined) return undefined;
  let total = root;
  for (const child of descendantsOf(pid)) total += cpuSeconds(child, true) ?? 0;
  return total;
}

/** Direct children of a process (over all its threads). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tasks: Deno.DirEntry[];
  try {
    tasks = Array.from(Deno.readDirSync(`/proc/${pid}/task`));
  } catch {
    // Gone.
    return out;
  }
  for (const task of tasks) {
    const text = readProc(`/proc/${pid}/task/${task.name}/children`);
    if (!text) continue;
    for (const word of text.trim().split(/\s+/)) if (word) out.push(Number(word));
  }
  return out;
}

/** All descendants of a process. */
function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  const stack = [pid];
  while (stack.length > 0) {
    for (const child of childrenOf(stack.pop()!)) {
      out.push(child);
      stack.push(child);
    }
  }
  return out;
}

/** The command name of a process, or undefined. */
function commOf(pid: number): string | undefined {
  return readProc(`/proc/${pid}/comm`)?.trim();
}

/**
 * Spawns `cmd args`, polls its memory and CPU until it exits, and returns the figures with
 * its output.
 */
export async function runMeasured(
  cmd: string,
  args: string[],
  options: RunOptions = {},
): Promise<Measured> {
  const started = performance.now();
  const reapedBefore = cpuSeconds(Deno.pid, true)! - cpuSeconds(Deno.pid)!;
  const child = new Deno.Command(cmd, {
    args,
    env: options.env,
    cwd: options.cwd,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: options.discardStdout ? "null" : "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  runningChildren.add(child);
  const pid = child.pid;
  let peak = 0;
  let cpu = 0;
  const psql = new Map<number, { peak: number; cpu: number }>();
  const poll = () => {
    const rss = peakRssKb(pid);
    if (rss !== undefined) peak = Math.max(peak, rss);
    const own = cpuSeconds(pid);
    if (own !== undefined) cpu = Math.max(cpu, own);
    for (const d of descendantsOf(pid)) {
      if (commOf(d) !== "psql") continue;
      const seen = psql.get(d) ?? { peak: 0, cpu: 0 };
      seen.peak = Math.max(seen.peak, peakRssKb(d) ?? 0);
      seen.cpu = Math.max(seen.cpu, cpuSeconds(d) ?? 0);
      psql.set(d, seen);
    }
  };
  const timer = setInterval(poll, options.pollMs ?? 100);
  poll();
  const output = await child.output().finally(() => runningChildren.delete(child));
  clearInterval(timer);
  const wallMs = performance.now() - started;
  const reapedAfter = cpuSeconds(Deno.pid, true)! - cpuSeconds(Deno.pid)!;
  const decoder = new TextDecoder();
  const psqlAll = [...psql.values()];
  return {
    code: output.code,
    wallMs,
    stdout: options.discardStdout ? "" : decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
    peakRssKb: peak,
    psqlPeakKb: psqlAll.reduce((m, p) => Math.max(m, p.peak), 0),
    psqlSumKb: psqlAll.reduce((s, p) => s + p.peak, 0),
    psqlCount: psqlAll.length,
    cpuSeconds: cpu,
    psqlCpuSeconds: psqlAll.reduce((s, p) => s + p.cpu, 0),
    treeCpuSeconds: reapedAfter - reapedBefore,
  };
}

/** {@linkcode runMeasured}, throwing when the command fails. */
export async function timeCommand(
  cmd: string,
  args: string[],
  options: RunOptions = {},
): Promise<Measured> {
  const result = await runMeasured(cmd, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (exit ${result.code}): ${result.stderr.slice(-2000)}`,
    );
  }
  return result;
}
