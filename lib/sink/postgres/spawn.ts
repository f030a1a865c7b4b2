/**
 * The one way a psql process is started ({@linkcode spawnPsql}): outside the caller's
 * process group unless it is to own the terminal, its spawn errors named (psql missing, not
 * allowed to run), and the version check ({@linkcode checkPsql}). Sessions, COPY streams,
 * the version check and `deno task sql` all start psql here, and nothing else in the
 * program starts a process.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import type { PsqlConnection } from "./psql.ts";

/** The application name sessions report to the server (`pg_stat_activity`). */
export const APPLICATION_NAME = "folder-uploader";

const INSTALL_HINT =
  "Install the PostgreSQL client: `apt-get install postgresql-client` (Debian/Ubuntu), " +
  "`brew install libpq` (macOS), or pass the path of psql";

const MIN_PSQL_MAJOR = 12;

/** How {@linkcode spawnPsql} starts psql. */
export interface PsqlSpawnOptions {
  /** The psql binary. Default: `psql` on PATH. */
  psqlPath?: string;
  args: string[];
  /** Extra environment for the child (the caller's is inherited). */
  env?: Record<string, string>;
  stdin?: "piped" | "inherit" | "null";
  stdout?: "piped" | "inherit" | "null";
  stderr?: "piped" | "inherit" | "null";
  /**
   * Keep the child in the caller's process group, where the terminal's Ctrl-C reaches it
   * (an interactive psql). Default false: outside it ({@linkcode outsideGroup}).
   */
  foreground?: boolean;
}

/**
 * Starts psql.
 *
 * @throws UploadError `config` when psql is missing or may not be run, with an install or
 *   permission hint; `fatal` for any other failure to start it.
 */
export function spawnPsql(options: PsqlSpawnOptions): Deno.ChildProcess {
  const psqlPath = options.psqlPath ?? "psql";
  const command: Deno.CommandOptions = {
    args: options.args,
    env: options.env,
    stdin: options.stdin ?? "piped",
    stdout: options.stdout ?? "piped",
    stderr: options.stderr ?? "piped",
  };
  try {
    return (options.foreground
      ? new Deno.Command(psqlPath, command)
      : outsideGroup(psqlPath, command)).spawn();
  } catch (error) {
    throw spawnError(psqlPath, error);
  }
}

/** How {@linkcode outsideGroup} keeps a child out of the caller's process group. */
export type Detachment = "detached" | "setsid" | "none";

let detachment: Detachment | undefined;

/**
 * How children are started outside the caller's process group, so that a terminal's
 * Ctrl-C or a service manager's stop (which signal every process of the group) reaches
 * the uploader alone, and the uploader decides what its psql sessions do: a psql given
 * SIGINT cancels its statement and goes on reading the rest of its script as SQL, and one
 * given SIGTERM dies under the batch it was sending.
 *
 * - `detached`: Deno 2.4 and later start the child in a new session (setsid(2)).
 * - `setsid`: older Deno, with util-linux's `setsid` program on PATH in front of the child
 *   (it calls setsid(2) and runs the child in its place, so the pid is the child's).
 * - `none`: neither; the child shares the caller's process group.
 */
export function detachmentMethod(): Detachment {
  if (detachment !== undefined) return detachment;
  const [major, minor] = Deno.version.deno.split(".").map(Number);
  if (Deno.build.os === "windows") detachment = "none";
  else if (major > 2 || (major === 2 && minor >= 4)) detachment = "detached";
  else detachment = findOnPath("setsid") ? "setsid" : "none";
  return detachment;
}

/** Whether an executable `name` is in one of PATH's directories. */
function findOnPath(name: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    try {
      const info = Deno.statSync(`${dir}/${name}`);
      if (info.isFile && ((info.mode ?? 0) & 0o111) !== 0) return true;
    } catch (_error) {
      // Not in this directory (or not readable): look in the next one.
    }
  }
  return false;
}

/**
 * A command for `program` that runs outside the caller's process group, by `method`
 * (default: {@linkcode detachmentMethod}'s choice for this runtime).
 */
export function outsideGroup(
  program: string,
  options: Deno.CommandOptions,
  method: Detachment = detachmentMethod(),
): Deno.Command {
  switch (method) {
    case "detached":
      return new Deno.Command(program, { ...options, detached: true });
    case "setsid":
      return new Deno.Command("setsid", {
        ...options,
        args: [program, ...(options.args ?? [])],
      });
    default:
      return new Deno.Command(program, options);
  }
}

/**
 * Checks that psql can be run and is recent enough (12+); returns its version line.
 *
 * @throws UploadError `config` with an install hint when psql is missing, cannot be
 *   run, or is older than 12.
 *
 * @example
 * ```ts
 * await checkPsql(); // "psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
 * ```
 */
export function checkPsql(psqlPath = "psql"): Promise<string> {
  let check = psqlChecks.get(psqlPath);
  if (check === undefined) {
    // Asked once per binary and process (every run asks before its sessions start); a
    // failure is not kept, so a psql installed meanwhile is found on the next ask.
    check = askPsqlVersion(psqlPath);
    check.catch(() => psqlChecks.delete(psqlPath));
    psqlChecks.set(psqlPath, check);
  }
  return check;
}

const psqlChecks = new Map<string, Promise<string>>();

async function askPsqlVersion(psqlPath: string): Promise<string> {
  const output = await spawnPsql({ psqlPath, args: ["--version"], stdin: "null" }).output();
  const text = new TextDecoder().decode(output.stdout).trim();
  if (!output.success) {
    throw new UploadError("config", `Cannot run ${psqlPath} --version: exit code ${output.code}`, {
      hint: INSTALL_HINT,
    });
  }
  const major = psqlMajor(text);
  if (major === undefined || major < MIN_PSQL_MAJOR) {
    throw new UploadError(
      "config",
      `psql ${MIN_PSQL_MAJOR} or newer is required: ${psqlPath} says ${JSON.stringify(text)}`,
      { hint: INSTALL_HINT },
    );
  }
  return text;
}

/** The major version in psql's `--version` line. */
function psqlMajor(versionLine: string): number | undefined {
  const match = versionLine.match(/\(PostgreSQL\)\s+(\d+)/);
  return match ? Number(match[1]) : undefined;
}

function spawnError(psqlPath: string, error: unknown): UploadError {
  if (error instanceof Deno.errors.NotFound) {
    return new UploadError("config", `psql was not found: ${psqlPath}`, {
      hint: INSTALL_HINT,
      cause: error,
    });
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new UploadError("config", `Cannot run psql (${psqlPath}): permission denied`, {
      hint: "Allow running psql (deno run --allow-run) and check the file's permissions",
      cause: error,
    });
  }
  return new UploadError("fatal", `Cannot start psql (${psqlPath}): ${String(error)}`, {
    cause: error,
  });
}

/** psql's major version ({@linkcode checkPsql}: asked once per binary). */
export function cachedPsqlMajor(psqlPath: string): Promise<number | undefined> {
  return checkPsql(psqlPath).then(psqlMajor);
}

/**
 * Runs psql on a connection with the terminal's stdin, stdout and stderr (for
 * `deno task sql`); returns psql's exit code. Ctrl-C goes to psql (cancelling its query)
 * and does not end this process while psql runs.
 *
 * @throws UploadError `config` when psql cannot be found or run.
 */
export async function runPsqlInteractive(
  conn: PsqlConnection,
  extraArgs: string[],
  options: { psqlPath?: string } = {},
): Promise<number> {
  const child = spawnPsql({
    psqlPath: options.psqlPath,
    args: [...conn.args, ...extraArgs],
    env: { PGAPPNAME: APPLICATION_NAME, ...conn.env },
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
    // The terminal's Ctrl-C is psql's: it cancels the query.
    foreground: true,
  });
  const ignoreInterrupt = () => {/* psql handles Ctrl-C itself (cancels the query) */};
  const listening = Deno.build.os !== "windows";
  if (listening) Deno.addSignalListener("SIGINT", ignoreInterrupt);
  try {
    return (await child.status).code;
  } finally {
    if (listening) Deno.removeSignalListener("SIGINT", ignoreInterrupt);
  }
}
