/**
 * Runs `scripts/upload_manager.ts` as a real subprocess (`deno run -A`), the way a user
 * does, and captures its stdout, stderr and exit code. The child gets a clean
 * environment: only what Deno itself needs (PATH, HOME, the Deno cache) plus what the test
 * passes, so a database URL set in the developer's shell never leaks into a test.
 *
 * ```ts
 * const result = await runUploadCli([tree, "--db-path", db, "--json"], {
 *   env: { SUPABASE_DB_URL: pg.url },
 *   cwd: dir,
 * });
 * assert.equal(result.code, 0, result.stderr);
 * const summary = summaryOf(result);
 * ```
 *
 * @module
 */

import { fileURLToPath } from "node:url";

/** The repository root (two levels above this file). */
export const REPO_ROOT: string = fileURLToPath(new URL("../", import.meta.url)).replace(
  /\/$/,
  "",
);

/** The upload script, absolute. */
export const UPLOAD_SCRIPT = `${REPO_ROOT}/scripts/upload_manager.ts`;

/** Environment variables passed through from the test process (Deno needs them). */
const PASS_THROUGH = ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME", "TMPDIR", "LANG"];

/** Options for {@linkcode runUploadCli}. */
export interface RunCliOptions {
  /** Extra environment for the child (on top of PATH, HOME and the Deno cache). */
  env?: Record<string, string>;
  /** Working directory. Default: the repository root. */
  cwd?: string;
  /** Text fed to stdin. Default: no stdin (`null`). */
  stdin?: string;
  /** Kill the child (SIGKILL) and fail after this many ms. Default 120,000. */
  timeoutMs?: number;
  /** The script to run. Default {@linkcode UPLOAD_SCRIPT}. */
  script?: string;
}

/** What a CLI run printed and how it ended. */
export interface CliResult {
  /** Exit code. */
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the upload CLI with `args` and waits for it to exit.
 *
 * @throws Error when the child runs longer than `timeoutMs` (it is killed first).
 */
export async function runUploadCli(
  args: string[],
  options: RunCliOptions = {},
): Promise<CliResult> {
  const env: Record<string, string> = {};
  for (const name of PASS_THROUGH) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  Object.assign(env, { NO_COLOR: "1" }, options.env);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      "--config",
      `${REPO_ROOT}/deno.json`,
      options.script ?? UPLOAD_SCRIPT,
      ...args,
    ],
    env,
    clearEnv: true,
    cwd: options.cwd ?? REPO_ROOT,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const timeoutMs = options.timeoutMs ?? 120_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch (error) {
      // It exited between the timer firing and the kill: nothing left to stop.
      if (!(error instanceof TypeError)) throw error;
    }
  }, timeoutMs);
  try {
    const out = await child.output();
    const decoder = new TextDecoder();
    const result = {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
    if (timedOut) {
      throw new Error(
        `upload CLI ran longer than ${timeoutMs} ms (killed): ${args.join(" ")}\n` +
          `--- stderr ---\n${result.stderr.slice(-3000)}`,
      );
    }
    return result;
  } finally {
    clearTimeout(timer);
  }
}

/** The JSON event lines of a `--json` run's stdout, parsed. */
export function jsonEvents(result: Pick<CliResult, "stdout">): Record<string, unknown>[] {
  return result.stdout
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/**
 * The `summary` event of a `--json` run.
 *
 * @throws Error when stdout has no summary line (with the output, for the test's message).
 */
export function summaryOf(result: CliResult): Record<string, unknown> {
  const summary = jsonEvents(result).find((e) => e.event === "summary");
  if (!summary) {
    throw new Error(
      `No summary line (exit ${result.code})\n--- stdout ---\n${result.stdout.slice(-3000)}\n` +
        `--- stderr ---\n${result.stderr.slice(-3000)}`,
    );
  }
  return summary;
}

/** A one-line description of a run for assertion messages. */
export function describeRun(result: CliResult): string {
  return `exit ${result.code}\n--- stdout ---\n${result.stdout.slice(-4000)}\n--- stderr ---\n${
    result.stderr.slice(-4000)
  }`;
}

/** Whether anything (a file, a folder, a dangling link) is at `path`. */
export function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
