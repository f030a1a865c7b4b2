/**
 * Throwaway PostgreSQL servers for integration tests: `initdb` into a temp directory,
 * `pg_ctl start` on a free 127.0.0.1 port plus a Unix socket in that directory, torn down
 * by `close()`. When the test process runs as root the server binaries run as the
 * `postgres` OS user (initdb refuses root).
 *
 * Local socket connections are trusted; TCP connections need a password
 * (scram-sha-256), so tests can exercise password handling. The superuser role is
 * `tester` with password `tester-secret`; the database is `uploads`.
 *
 * ```ts
 * const pg = await startPostgres();
 * try {
 *   await pg.psql("select 1");
 * } finally {
 *   await pg.close();
 * }
 * ```
 *
 * @module
 */

import { existsSync } from "node:fs";

/** The superuser role every test server has. */
export const TEST_USER = "tester";
/** The superuser's password (TCP connections use scram-sha-256). */
export const TEST_PASSWORD = "tester-secret";
/** The database every test server has. */
export const TEST_DATABASE = "uploads";

/** Options for {@linkcode startPostgres}. */
export interface StartPostgresOptions {
  /** `max_connections`. Default: 20. */
  maxConnections?: number;
  /** Extra `postgresql.conf` settings, written verbatim (`name = value`). */
  conf?: Record<string, string>;
}

/** A running throwaway server. */
export interface PgServer {
  /** TCP host: always `127.0.0.1`. */
  readonly host: string;
  /** TCP port; the Unix socket in {@linkcode socketDir} uses the same number. */
  readonly port: number;
  /** The cluster's data directory. */
  readonly dataDir: string;
  /** Directory of the Unix socket (trust authentication). */
  readonly socketDir: string;
  /** `postgresql://tester:tester-secret@127.0.0.1:PORT/uploads`. */
  readonly url: string;
  /** The superuser's URL (the same role as {@linkcode url}). */
  readonly superuserUrl: string;
  /** Runs SQL as the superuser over the socket (`psql -XAt`, stop on error); returns stdout. */
  psql(sql: string, options?: { database?: string }): Promise<string>;
  /** Stops the server (`pg_ctl stop -m fast` by default). Harmless when already stopped. */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** Starts the server again on the same port and socket. */
  start(): Promise<void>;
  /** Stops the server and removes its temp directory. */
  close(): Promise<void>;
  /** The tail of the server log, for error messages. */
  logTail(bytes?: number): Promise<string>;
}

const BIN_CANDIDATES_ROOT = "/usr/lib/postgresql";
const PSQL_CANDIDATES = ["/usr/bin/psql", "/usr/local/bin/psql"];

/** Directory holding initdb/pg_ctl/postgres, or undefined when none was found. */
function findBinDir(): string | undefined {
  const fromEnv = Deno.env.get("PG_BIN");
  if (fromEnv && existsSync(`${fromEnv}/initdb`)) return fromEnv;
  let best: { version: number; dir: string } | undefined;
  try {
    for (const entry of Deno.readDirSync(BIN_CANDIDATES_ROOT)) {
      const version = Number(entry.name);
      const dir = `${BIN_CANDIDATES_ROOT}/${entry.name}/bin`;
      if (!Number.isFinite(version) || version < 15) continue;
      if (!existsSync(`${dir}/initdb`) || !existsSync(`${dir}/pg_ctl`)) continue;
      if (best === undefined || version > best.version) best = { version, dir };
    }
  } catch (error) {
    // No Debian-style installation: the documented "absent" case.
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return best?.dir;
}

/** Whether PostgreSQL 15+ server binaries are installed, so server tests can run. */
export function hasPostgres(): boolean {
  return findBinDir() !== undefined;
}

/** The psql binary the helpers use: the cluster's own, else the system one. */
function psqlBinary(binDir: string): string {
  if (existsSync(`${binDir}/psql`)) return `${binDir}/psql`;
  for (const candidate of PSQL_CANDIDATES) if (existsSync(candidate)) return candidate;
  return "psql";
}

function isRoot(): boolean {
  return Deno.uid() === 0;
}

let postgresIds: Promise<{ uid: number; gid: number }> | undefined;

/** uid and gid of the `postgres` OS user (only needed when running as root). */
function postgresUser(): Promise<{ uid: number; gid: number }> {
  postgresIds ??= (async () => {
    const run = async (flag: string) => {
      const out = await new Deno.Command("id", { args: [flag, "postgres"], stderr: "piped" })
        .output();
      if (!out.success) {
        throw new Error(
          `Cannot run PostgreSQL as root and there is no "postgres" user: ${
            new TextDecoder().decode(out.stderr).trim()
          }`,
        );
      }
      return Number(new TextDecoder().decode(out.stdout).trim());
    };
    return { uid: await run("-u"), gid: await run("-g") };
  })();
  return postgresIds;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a server binary, as the postgres user when we are root. */
async function runServerTool(
  command: string,
  args: string[],
  options: { stdin?: string; env?: Record<string, string> } = {},
): Promise<RunResult> {
  const [cmd, fullArgs] = isRoot()
    ? ["runuser", ["-u", "postgres", "--", command, ...args]]
    : [command, args];
  const child = new Deno.Command(cmd, {
    args: fullArgs,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C", ...options.env },
    cwd: "/",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const out = await child.output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** A port that was free a moment ago (another process may still take it: callers retry). */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function readTail(path: string, bytes: number): Promise<string> {
  try {
    const data = await Deno.readFile(path);
    return new TextDecoder().decode(data.subarray(Math.max(0, data.length - bytes)));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return "(no log file)";
    throw error;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

class Server implements PgServer {
  readonly host = "127.0.0.1";
  port = 0;
  readonly dataDir: string;
  readonly socketDir: string;
  readonly #root: string;
  readonly #bin: string;
  readonly #logFile: string;
  #running = false;

  constructor(root: string, bin: string) {
    this.#root = root;
    this.#bin = bin;
    this.dataDir = `${root}/data`;
    this.socketDir = root;
    this.#logFile = `${root}/server.log`;
  }

  get url(): string {
    return `postgresql://${TEST_USER}:${TEST_PASSWORD}@${this.host}:${this.port}/${TEST_DATABASE}`;
  }

  get superuserUrl(): string {
    return this.url;
  }

  logTail(bytes = 3000): Promise<string> {
    return readTail(this.#logFile, bytes);
  }

  async psql(sql: string, options: { database?: string } = {}): Promise<string> {
    const args = [
      "-X",
      "-A",
      "-t",
      "-q",
      "-v",
      "ON_ERROR_STOP=1",
      "-h",
      this.socketDir,
      "-p",
      String(this.port),
      "-U",
      TEST_USER,
      "-d",
      options.database ?? TEST_DATABASE,
    ];
    const child = new Deno.Command(psqlBinary(this.#bin), {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { PGCLIENTENCODING: "UTF8", LC_ALL: "C" },
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(sql.trimEnd().endsWith(";") ? sql : `${sql};`));
    await writer.close();
    const out = await child.output();
    const decoder = new TextDecoder();
    if (!out.success) {
      throw new Error(
        `psql failed (exit ${out.code}) running ${JSON.stringify(sql.slice(0, 200))}: ${
          decoder.decode(out.stderr).trim()
        }`,
      );
    }
    return decoder.decode(out.stdout);
  }

  /** Starts on the current port; returns false when the port was taken (caller retries). */
  async #tryStart(): Promise<boolean> {
    const result = await runServerTool(`${this.#bin}/pg_ctl`, [
      "-D",
      this.dataDir,
      "-l",
      this.#logFile,
      "-w",
      "-t",
      "60",
      "-o",
      `-p ${this.port}`,
      "start",
    ]);
    if (result.code === 0) {
      this.#running = true;
      return true;
    }
    const log = await this.logTail();
    if (/could not bind|Address already in use|could not create any TCP\/IP sockets/i.test(log)) {
      return false;
    }
    throw new Error(
      `PostgreSQL did not start (pg_ctl exit ${result.code}): ${result.stderr.trim()}\n` +
        `--- server log tail (${this.#logFile}) ---\n${log}`,
    );
  }

  /** Waits until a real query succeeds over TCP with the password (not just pg_isready). */
  async #waitReady(): Promise<void> {
    const deadline = Date.now() + 60_000;
    let last = "";
    while (Date.now() < deadline) {
      // The password goes in the environment: tests look for it in every process's argv.
      const url = new URL(this.url.replace(/\/[^/]*$/, "/postgres"));
      const password = decodeURIComponent(url.password);
      url.password = "";
      const out = await new Deno.Command(psqlBinary(this.#bin), {
        args: ["-X", "-A", "-t", "-d", url.href, "-c", "select 1"],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        env: { PGCONNECT_TIMEOUT: "5", LC_ALL: "C", PGPASSWORD: password },
      }).output();
      if (out.success) return;
      last = new TextDecoder().decode(out.stderr).trim();
      if (!/starting up|refused|shutting down|No such file|timeout/i.test(last)) break;
      await sleep(100);
    }
    throw new Error(
      `PostgreSQL did not become ready on port ${this.port}: ${last}\n--- server log tail ---\n${await this
        .logTail()}`,
    );
  }

  async start(): Promise<void> {
    if (this.#running) return;
    if (!(await this.#tryStart())) {
      throw new Error(
        `PostgreSQL could not bind port ${this.port} again:\n${await this.logTail()}`,
      );
    }
    await this.#waitReady();
  }

  /** First start: picks ports until one binds. */
  async startFresh(): Promise<void> {
    for (let attempt = 1;; attempt++) {
      this.port = freePort();
      if (await this.#tryStart()) break;
      if (attempt >= 10) {
        throw new Error(`PostgreSQL found no free port in 10 attempts:\n${await this.logTail()}`);
      }
    }
    await this.#waitReady();
  }

  async stop(mode: "fast" | "immediate" = "fast"): Promise<void> {
    if (!existsSync(`${this.dataDir}/postmaster.pid`)) {
      this.#running = false;
      return;
    }
    const result = await runServerTool(`${this.#bin}/pg_ctl`, [
      "-D",
      this.dataDir,
      "-m",
      mode,
      "-w",
      "-t",
      "60",
      "stop",
    ]);
    if (result.code !== 0 && existsSync(`${this.dataDir}/postmaster.pid`)) {
      throw new Error(`pg_ctl stop failed (exit ${result.code}): ${result.stderr.trim()}`);
    }
    this.#running = false;
  }

  async close(): Promise<void> {
    try {
      await this.stop("immediate");
    } finally {
      await Deno.remove(this.#root, { recursive: true });
    }
  }
}

/**
 * Creates, configures and starts a throwaway server; resolves when it answers queries.
 *
 * @throws Error with the server log tail when initdb or the start fails.
 */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<PgServer> {
  const bin = findBinDir();
  if (bin === undefined) throw new Error("PostgreSQL server binaries (15+) are not installed");
  // Short prefix: the socket path must stay under ~107 bytes.
  const root = await Deno.makeTempDir({ prefix: "pgt-" });
  const server = new Server(root, bin);
  try {
    const pwfile = `${root}/pwfile`;
    await Deno.writeTextFile(pwfile, `${TEST_PASSWORD}\n`);
    if (isRoot()) {
      const { uid, gid } = await postgresUser();
      await Deno.chown(root, uid, gid);
      await Deno.chown(pwfile, uid, gid);
    }
    const init = await runServerTool(`${bin}/initdb`, [
      "-D",
      server.dataDir,
      "-U",
      TEST_USER,
      `--pwfile=${pwfile}`,
      "--auth-local=trust",
      "--auth-host=scram-sha-256",
      "-E",
      "UTF8",
      "--locale=C",
      "--no-sync",
      "--no-instructions",
    ]);
    if (init.code !== 0) {
      throw new Error(`initdb failed (exit ${init.code}):\n${init.stderr}\n${init.stdout}`);
    }
    await Deno.remove(pwfile);
    const settings: Record<string, string> = {
      listen_addresses: "'127.0.0.1'",
      unix_socket_directories: `'${server.socketDir}'`,
      max_connections: String(options.maxConnections ?? 20),
      shared_buffers: "'16MB'",
      fsync: "off",
      synchronous_commit: "off",
      full_page_writes: "off",
      password_encryption: "'scram-sha-256'",
      log_min_messages: "warning",
      ...options.conf,
    };
    const lines = Object.entries(settings).map(([name, value]) => `${name} = ${value}`);
    await Deno.writeTextFile(
      `${server.dataDir}/postgresql.conf`,
      `\n# support/postgres.ts\n${lines.join("\n")}\n`,
      { append: true },
    );
    await server.startFresh();
    await server.psql(`create database ${TEST_DATABASE}`, { database: "postgres" });
    return server;
  } catch (error) {
    await server.close().catch(() => {/* the original error matters more */});
    throw error;
  }
}
