/**
 * A throwaway pgbouncer in front of a test server, in transaction pooling mode like
 * Supabase's pooler on port 6543: clients authenticate with scram-sha-256 against an
 * auth_file; pgbouncer reaches the server over its Unix socket (trust). Runs from
 * /usr/sbin/pgbouncer in a temp directory on a free 127.0.0.1 port, as the `postgres` OS
 * user when the test runs as root (pgbouncer refuses root).
 *
 * ```ts
 * const pg = await startPostgres();
 * const bouncer = await startPgbouncer(pg, { users: { tester: "tester-secret" } });
 * try {
 *   // connect to bouncer.url("tester", "tester-secret")
 * } finally {
 *   await bouncer.close();
 *   await pg.close();
 * }
 * ```
 *
 * @module
 */

import { existsSync } from "node:fs";
import { TEST_DATABASE, TEST_PASSWORD, TEST_USER } from "./postgres.ts";
import type { PgServer } from "./postgres.ts";

/** The pgbouncer binary. */
export const PGBOUNCER = "/usr/sbin/pgbouncer";

/** Whether pgbouncer is installed. */
export function hasPgbouncer(): boolean {
  return existsSync(PGBOUNCER);
}

/** Options of {@linkcode startPgbouncer}. */
export interface PgbouncerOptions {
  /** Users and their passwords in the auth_file. Default: the test superuser. */
  users?: Record<string, string>;
  /** `pool_mode`. Default `transaction`. */
  poolMode?: "session" | "transaction" | "statement";
  /** Server connections per (database, user) pair. Default 2. */
  poolSize?: number;
}

/** A running pgbouncer. */
export interface Pgbouncer {
  readonly host: string;
  readonly port: number;
  /** A client URL through the pooler to the test database. */
  url(user?: string, password?: string): string;
  /** Runs a command on pgbouncer's admin console (e.g. `SHOW POOLS`); returns `-A -t` output. */
  admin(command: string): Promise<string>;
  /** Stops pgbouncer and removes its directory. */
  close(): Promise<void>;
  /** The tail of pgbouncer's log. */
  logTail(bytes?: number): Promise<string>;
}

const DECODER = new TextDecoder();

async function idOf(flag: string, user: string): Promise<number> {
  const out = await new Deno.Command("id", { args: [flag, user], stderr: "piped" }).output();
  if (!out.success) throw new Error(`No OS user ${user}: ${DECODER.decode(out.stderr).trim()}`);
  return Number(DECODER.decode(out.stdout).trim());
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Escapes a value for pgbouncer's auth_file (`"name" "password"`, `"` doubled). */
function authQuote(value: string): string {
  return `"${value.replaceAll('"', '""')}"`;
}

async function readTail(path: string, bytes: number): Promise<string> {
  try {
    const data = await Deno.readFile(path);
    return DECODER.decode(data.subarray(Math.max(0, data.length - bytes)));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return "(no log file)";
    throw error;
  }
}

/**
 * Starts pgbouncer in front of `server`; resolves when a query through it succeeds.
 *
 * @throws Error with pgbouncer's log tail when it does not start.
 */
export async function startPgbouncer(
  server: PgServer,
  options: PgbouncerOptions = {},
): Promise<Pgbouncer> {
  const users = options.users ?? { [TEST_USER]: TEST_PASSWORD };
  const dir = await Deno.makeTempDir({ prefix: "pgb-" });
  const root = Deno.uid() === 0;
  const ids = root
    ? { uid: await idOf("-u", "postgres"), gid: await idOf("-g", "postgres") }
    : null;
  if (ids) await Deno.chown(dir, ids.uid, ids.gid);
  const logFile = `${dir}/pgbouncer.log`;
  const authFile = `${dir}/userlist.txt`;
  await Deno.writeTextFile(
    authFile,
    Object.entries(users).map(([u, p]) => `${authQuote(u)} ${authQuote(p)}\n`).join(""),
    { mode: 0o600 },
  );
  if (ids) await Deno.chown(authFile, ids.uid, ids.gid);

  let child: Deno.ChildProcess | undefined;
  let port = 0;
  const stop = async () => {
    if (!child) return;
    try {
      child.kill("SIGTERM");
    } catch (error) {
      if (!(error instanceof TypeError)) throw error; // already exited
    }
    await child.status;
    child = undefined;
  };

  const adminUser = Object.keys(users)[0];
  const tryStart = async (): Promise<boolean> => {
    port = freePort();
    const conf = [
      "[databases]",
      `${TEST_DATABASE} = host=${server.socketDir} port=${server.port} dbname=${TEST_DATABASE}`,
      "",
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = scram-sha-256",
      `auth_file = ${authFile}`,
      `pool_mode = ${options.poolMode ?? "transaction"}`,
      `default_pool_size = ${options.poolSize ?? 2}`,
      "min_pool_size = 0",
      "max_client_conn = 200",
      `admin_users = ${adminUser}`,
      `logfile = ${logFile}`,
      "ignore_startup_parameters = extra_float_digits,options",
      "server_reset_query =",
      // Retry the server soon after it comes back (default: 15 s).
      "server_login_retry = 1",
      "",
    ].join("\n");
    const confFile = `${dir}/pgbouncer.ini`;
    await Deno.writeTextFile(confFile, conf);
    if (ids) await Deno.chown(confFile, ids.uid, ids.gid);
    // setpriv execs pgbouncer in place, so the child's pid is pgbouncer's.
    const [cmd, args] = ids
      ? [
        "setpriv",
        [
          `--reuid=${ids.uid}`,
          `--regid=${ids.gid}`,
          "--clear-groups",
          PGBOUNCER,
          confFile,
        ],
      ]
      : [PGBOUNCER, [confFile]];
    child = new Deno.Command(cmd, {
      args,
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const exited = await Promise.race([
        child.status.then(() => true),
        new Promise<false>((r) => setTimeout(() => r(false), 50)),
      ]);
      if (exited) {
        child = undefined;
        const log = await readTail(logFile, 2000);
        if (/Address already in use|could not bind/i.test(log)) return false;
        throw new Error(`pgbouncer exited at start:\n${log}`);
      }
      const probe = await psqlThrough(port, adminUser, users[adminUser], "select 1");
      if (probe.ok) return true;
    }
    await stop();
    throw new Error(`pgbouncer did not answer in 15 s:\n${await readTail(logFile, 2000)}`);
  };

  try {
    let started = false;
    for (let attempt = 0; attempt < 10 && !started; attempt++) started = await tryStart();
    if (!started) throw new Error("pgbouncer found no free port in 10 attempts");
  } catch (error) {
    await stop();
    await Deno.remove(dir, { recursive: true });
    throw error;
  }

  return {
    host: "127.0.0.1",
    get port() {
      return port;
    },
    url(user = adminUser, password = users[adminUser]) {
      return `postgresql://${encodeURIComponent(user)}:${
        encodeURIComponent(password)
      }@127.0.0.1:${port}/${TEST_DATABASE}`;
    },
    async admin(command: string) {
      const out = await psqlThrough(port, adminUser, users[adminUser], command, "pgbouncer");
      if (!out.ok) throw new Error(`pgbouncer admin ${command}: ${out.stderr}`);
      return out.stdout;
    },
    async close() {
      await stop();
      await Deno.remove(dir, { recursive: true });
    },
    logTail(bytes = 3000) {
      return readTail(logFile, bytes);
    },
  };
}

async function psqlThrough(
  port: number,
  user: string,
  password: string,
  sql: string,
  database = TEST_DATABASE,
): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  const out = await new Deno.Command("psql", {
    args: ["-X", "-A", "-t", "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", database],
    env: { PGPASSWORD: password, PGCONNECT_TIMEOUT: "5", LC_ALL: "C" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = out.stdin.getWriter();
  await writer.write(new TextEncoder().encode(`${sql};\n`));
  await writer.close();
  const result = await out.output();
  return {
    ok: result.success && DECODER.decode(result.stderr).trim() === "",
    stdout: DECODER.decode(result.stdout),
    stderr: DECODER.decode(result.stderr),
  };
}
