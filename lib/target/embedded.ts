/**
 * The embedded default target: a PGlite database (PostgreSQL compiled to WebAssembly)
 * persisted in a local folder and served on a Unix socket in a private (0700) directory,
 * so `psql` talks to it like to any server.
 *
 * Threads: PGlite and the socket server run in a worker (lib/target/embedded_worker.ts). Every
 * PostgreSQL statement and the startup run synchronously in WebAssembly and block the
 * thread they run on for up to seconds; on the worker they leave this (the main)
 * thread free, so signal handlers, timers and progress keep running. The main thread owns
 * the lock, the folders and the socket directory, and can end the worker at any moment
 * (`signal` during the start, `stop({ force: true })`), which stops PostgreSQL as a crash
 * would: its WAL brings the database back at the next start.
 *
 * Files: this one starts the database, serves it and stops it; lib/target/embedded_folder.ts
 * keeps the folder (its lock, the check, a new database from the template);
 * lib/target/embedded_socket.ts the private socket directory; lib/target/embedded_thread.ts
 * talks to the worker, lib/target/embedded_worker.ts is the worker.
 *
 * Facts this module is built on (PGlite 0.5.16, pglite-socket 0.2.17, Deno 2):
 *
 * - Every client connection shares ONE PostgreSQL session. pglite-socket queues protocol
 *   messages from all connections and runs them one at a time; while the session is inside
 *   an explicit transaction only the connection that opened it is served, the others wait.
 *   A connection that disconnects inside a transaction has it rolled back. Session state
 *   (`SET`, prepared statements, temp tables) is visible to every connection.
 * - A Deno worker can listen on a Unix socket with `node:net` (what pglite-socket uses), so
 *   psql's bytes go straight to the worker: no relay through the main thread, no extra copy.
 * - PGlite takes no lock on its folder: two processes opening the same folder both succeed
 *   and lose each other's writes. A lock file beside the folder (`<dataDir>.lock`, an OS
 *   lock that dies with its process) refuses the second one.
 * - Durability: PGlite runs PostgreSQL with `fsync=off` (`-F`, its default) and writes the
 *   folder through plain `write` calls. A statement psql saw acknowledged has its WAL in the
 *   operating system's cache, so it survives a kill -9 of this process (or the end of the
 *   worker); it does not survive a power cut or a kernel crash before the OS writes back.
 * - A new database is not made by initdb: it is the empty database kept in the repository
 *   (lib/target/embedded_template.ts), unpacked on this thread, asynchronously, into
 *   `<dataDir>.creating` and renamed to `<dataDir>` once every file is written; the worker
 *   then opens it as it opens any existing database. (initdb in WebAssembly ran two
 *   PostgreSQL instances at once and peaked near 600 MB of RSS.) A start that is
 *   interrupted, killed or fails leaves no half-made `<dataDir>`: the next start removes
 *   the stale `.creating` folder and unpacks the template again.
 * - Memory: PostgreSQL's startup settings below ({@linkcode EMBEDDED_SETTINGS}) replace
 *   initdb's defaults (128 MB of shared buffers, 1 GB of WAL between checkpoints), which
 *   sized the process for a server, not a 1 GB device.
 *
 * Costs measured here (2 shared cores, Deno 2.9; docs/benchmarks.md, "The embedded
 * default"): unpacking the template takes about 0.2 s; opening a database (new or not)
 * takes 0.3-0.7 s and adds about 150 MB to the process's RSS (PGlite's compiled code, its
 * WebAssembly memory and the worker), so a first `deno task upload examples/data` peaks
 * near 230 MB. An empty database is 39 MB on disk. Upserts of ~450-byte rows in 500-row
 * statements through psql run at 20k-33k new rows/s, with 1 or 4 psql processes alike:
 * statements are serialised.
 *
 * Permissions under `deno run`: `--allow-read` and `--allow-write` (the folder, the lock
 * file, the socket directory in the temp dir, PGlite's own .wasm/.data files) and
 * `--allow-net` (listening on a Unix socket). No `--allow-env`, `--allow-sys` or
 * `--allow-run` are needed by this module. Workers inherit the process's permissions.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { messageOf, UploadError } from "../core/errors.ts";
import type { PsqlConnection } from "../sink/postgres/psql.ts";
import {
  acquireLock,
  checkDataDir,
  createDatabase,
  holderOf,
  ignoreNotFound,
  removeUnfinishedCreation,
  type ServerLockRecord,
} from "./embedded_folder.ts";
import {
  EMBEDDED_PORT,
  prepareSocketDir,
  removeStaleSocketDir,
  SOCKET_NAME,
} from "./embedded_socket.ts";
import { EmbeddedWorker, WorkerEnded, workerFailure } from "./embedded_thread.ts";

export { EMBEDDED_PORT } from "./embedded_socket.ts";

/** The role and database PGlite serves. */
export const EMBEDDED_USER = "postgres";
/** The database PGlite serves. */
export const EMBEDDED_DATABASE = "postgres";
/** Default for {@linkcode EmbeddedOptions.maxConnections}. */
export const DEFAULT_MAX_CONNECTIONS = 8;

/**
 * PostgreSQL settings given on the command line of every start (they override the
 * database's postgresql.conf, so databases made by earlier versions get them too).
 *
 * - `shared_buffers`: PostgreSQL's page cache lives inside the WebAssembly memory and is
 *   touched as it fills; the operating system caches the files anyway. 16 MB instead of
 *   initdb's 128 MB saves about 110 MB of RSS at the same upsert rate.
 * - `max_wal_size` / `min_wal_size`: a checkpoint at most every 256 MB of WAL instead of
 *   1 GB bounds the disk the WAL takes and the replay after a crash, at the cost of a
 *   checkpoint (at most `shared_buffers` of writes) more often.
 */
export const EMBEDDED_SETTINGS: Readonly<Record<string, string>> = {
  shared_buffers: "16MB",
  max_wal_size: "256MB",
  min_wal_size: "32MB",
};

/**
 * PGlite's own startup arguments (`PGlite.defaultStartParams` in 0.5.16: single-user mode,
 * fsync off, no parallel workers, synchronous I/O). They are repeated here because PGlite
 * replaces, not extends, them when `startParams` is given; the worker module (which alone
 * loads PGlite) would be the only other place to read them from.
 */
const PGLITE_START_PARAMS = [
  "--single",
  "-F",
  "-O",
  "-j",
  "-c",
  "search_path=public",
  "-c",
  "exit_on_error=false",
  "-c",
  "log_checkpoints=false",
  "-c",
  "max_worker_processes=0",
  "-c",
  "max_parallel_workers=0",
  "-c",
  "max_parallel_workers_per_gather=0",
  "-c",
  "io_method=sync",
  "-c",
  "max_parallel_maintenance_workers=0",
];

/** How long `stop()` waits for a clean shutdown before it ends the worker. */
const STOP_TIMEOUT_MS = 60_000;

/** Options for {@linkcode startEmbedded}. */
export interface EmbeddedOptions {
  /**
   * How many client connections may be open at once (they share one session, see the
   * module notes). Default {@linkcode DEFAULT_MAX_CONNECTIONS}.
   */
  maxConnections?: number;
  /** Receives progress and housekeeping lines (first-run initialisation, stale cleanup). */
  log?: (line: string) => void;
  /**
   * Directory for the socket. Created 0700 when missing, made 0700 when it is not. Default:
   * a fresh directory under the system temp dir, removed by `stop()`.
   */
  socketDir?: string;
  /**
   * Directory holding PGlite's `pglite.wasm`, `initdb.wasm` and `pglite.data`. Default:
   * PGlite finds them itself beside its own module (in `node_modules`). Pass it when those
   * files live elsewhere, e.g. extracted beside a `deno compile` binary.
   */
  assetsDir?: string;
  /**
   * The archive a new database is unpacked from. Default: lib/target/embedded_template.tar.br
   * (see lib/target/embedded_template.ts).
   */
  template?: URL | string;
  /**
   * Abandons the start when it aborts: the worker is ended at once (whatever PostgreSQL is
   * doing), a database this start was creating is removed, the socket directory is removed
   * and the lock released; `startEmbedded` then rejects with kind `interrupted`. An
   * existing database is left as a crash leaves it, and opens normally next time. Only the
   * start listens: once it has resolved, the server runs until `stop()`.
   */
  signal?: AbortSignal;
}

/** Options for {@linkcode EmbeddedServer.stop}. */
export interface StopOptions {
  /**
   * End the worker at once instead of shutting PostgreSQL down cleanly (for a second
   * Ctrl-C). Acknowledged statements are kept (see the module notes on durability); the
   * next start replays the WAL. Default false.
   */
  force?: boolean;
}

/** A running embedded database. */
export interface EmbeddedServer {
  /** The database folder, absolute. */
  dataDir: string;
  /** The private directory holding the socket file (`.s.PGSQL.5432`). */
  socketDir: string;
  /** How psql reaches it: `-h <socketDir> -p 5432 -U postgres -d postgres`. */
  connection: PsqlConnection;
  /**
   * Closes client connections (queued statements are dropped, psql sees the connection
   * lost), shuts PGlite down cleanly (a running statement finishes first), ends the
   * worker, removes the socket directory and releases the lock. Safe to call more than
   * once: later calls return the first call's promise, except that `force` ends a clean
   * shutdown still in progress.
   *
   * @throws {UploadError} `fatal` when PGlite reported a failure while shutting down (the
   *   rest of the cleanup still ran).
   */
  stop(options?: StopOptions): Promise<void>;
}

/**
 * Opens (creating when missing) the PGlite database in `dataDir` and serves it on a Unix
 * socket for psql, from a worker thread.
 *
 * @param dataDir The database folder; its parent must exist or be creatable.
 * @param options See {@linkcode EmbeddedOptions}.
 * @returns The running server; call `stop()` when done.
 * @throws {UploadError} `interrupted` when `options.signal` aborts before the server is
 *   ready; `locked` when another process serves this folder (or a live server owns the
 *   socket path); `config` when the folder is not a PGlite database, the socket path is too
 *   long or the options are invalid; `fatal` when PGlite or the listener fails.
 */
export async function startEmbedded(
  dataDir: string,
  options: EmbeddedOptions = {},
): Promise<EmbeddedServer> {
  const log = options.log ?? (() => {});
  const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  if (!Number.isInteger(maxConnections) || maxConnections < 1) {
    throw new UploadError("config", `Invalid maxConnections: ${maxConnections}`, {
      hint: "Use a whole number of at least 1",
    });
  }
  const dir = resolve(dataDir);
  const signal = options.signal;
  if (signal?.aborted) throw _interrupted(dir);
  const cleanup = new _UndoStack();
  try {
    const lock = acquireLock(dir);
    cleanup.push(() => lock.release());
    removeStaleSocketDir(holderOf(lock.previous), options.socketDir, log);
    await removeUnfinishedCreation(dir, log);
    const fresh = checkDataDir(dir);
    const socketDir = await prepareSocketDir(options.socketDir, log);
    const socketPath = join(socketDir, SOCKET_NAME);
    cleanup.push(() =>
      options.socketDir === undefined
        ? Deno.remove(socketDir, { recursive: true })
        : Deno.remove(socketPath).catch(ignoreNotFound)
    );
    lock.record(
      { pid: Deno.pid, socketDir, startedAt: new Date().toISOString() } satisfies ServerLockRecord,
    );
    const startParams = embeddedStartParams();

    if (fresh) {
      log(`Creating embedded database in ${dir}`);
      await createDatabase(dir, { template: options.template, signal });
    }
    return await _serve(
      { dataDir: dir, socketDir, socketPath, startParams, maxConnections },
      options,
      cleanup,
    );
  } catch (error) {
    await cleanup.run().catch((cleanupError) => {
      log(`Cleanup after a failed start also failed: ${messageOf(cleanupError)}`);
    });
    throw error instanceof WorkerEnded ? _interrupted(dir) : error;
  }
}

function _interrupted(dir: string): UploadError {
  return new UploadError("interrupted", `Interrupted while starting the embedded database ${dir}`, {
    subject: dir,
  });
}

/** Steps undone in reverse order; every step runs even when an earlier one fails. */
class _UndoStack {
  #steps: (() => Promise<void> | void)[] = [];

  push(step: () => Promise<void> | void): void {
    this.#steps.push(step);
  }

  /** Runs every step, newest first; rethrows the first failure after all have run. */
  async run(): Promise<void> {
    let failure: unknown = undefined;
    for (const step of this.#steps.reverse()) {
      try {
        await step();
      } catch (error) {
        failure ??= error;
      }
    }
    this.#steps.length = 0;
    if (failure !== undefined) throw failure;
  }
}

/** Where and how the worker serves the database. */
interface ServePlan {
  dataDir: string;
  socketDir: string;
  socketPath: string;
  startParams: string[];
  maxConnections: number;
}

/**
 * Starts the worker that serves `plan.dataDir` on its socket and returns the running
 * server; stopping it runs `cleanup` (worker first, then what was pushed before).
 */
async function _serve(
  plan: ServePlan,
  options: EmbeddedOptions,
  cleanup: _UndoStack,
): Promise<EmbeddedServer> {
  const { dataDir: dir, socketPath } = plan;
  const worker = new EmbeddedWorker(options.log ?? (() => {}));
  let forced = false;
  cleanup.push(async () => {
    try {
      if (!forced) {
        await worker.request({ type: "stop" }, "stopped", { timeoutMs: STOP_TIMEOUT_MS });
      }
    } catch (error) {
      if (!(error instanceof WorkerEnded)) throw error;
      // Ended by force (or by a timeout, already logged): nothing left to shut down.
    } finally {
      worker.terminate();
    }
  });
  await worker.request(
    {
      type: "serve",
      dataDir: dir,
      assetsDir: options.assetsDir,
      startParams: plan.startParams,
      socketPath,
      maxConnections: plan.maxConnections,
    },
    "ready",
    { signal: options.signal },
  ).catch((error) => {
    throw error instanceof WorkerEnded ? _interrupted(dir) : workerFailure(error, dir, socketPath);
  });

  let stopping: Promise<void> | undefined;
  return {
    dataDir: dir,
    socketDir: plan.socketDir,
    connection: {
      args: [
        "-h",
        plan.socketDir,
        "-p",
        String(EMBEDDED_PORT),
        "-U",
        EMBEDDED_USER,
        "-d",
        EMBEDDED_DATABASE,
      ],
      env: {},
      display: `embedded PGlite at ${dir}`,
    },
    stop(stopOptions = {}) {
      if (stopOptions.force) {
        forced = true;
        worker.terminate();
      }
      stopping ??= cleanup.run().catch((error) => {
        throw workerFailure(error, dir, socketPath);
      });
      return stopping;
    },
  };
}

/**
 * The arguments every embedded start gives PostgreSQL: PGlite's own with
 * {@linkcode EMBEDDED_SETTINGS} added as `-c name=value`.
 */
export function embeddedStartParams(): string[] {
  return [
    ...PGLITE_START_PARAMS,
    ...Object.entries(EMBEDDED_SETTINGS).flatMap(([name, value]) => ["-c", `${name}=${value}`]),
  ];
}
