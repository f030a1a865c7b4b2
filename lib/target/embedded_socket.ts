/**
 * The embedded database's socket directory: a private (0700) directory, by default fresh
 * in the temp dir, holding the one socket file psql connects to; a dead socket file or the
 * directory a crashed run left behind is cleared, a live server's socket is refused. Used
 * by lib/target/embedded.ts.
 *
 * @module
 */

import { basename, isAbsolute, join, resolve } from "node:path";
import { messageOf, UploadError } from "../core/errors.ts";
import type { ServerLockRecord } from "./embedded_folder.ts";

/** The port psql is told to use; with `-h <dir>` it only names the socket file. */
export const EMBEDDED_PORT = 5432;

/** The socket file name libpq looks for in the `-h` directory for port 5432. */
export const SOCKET_NAME = `.s.PGSQL.${EMBEDDED_PORT}`;
/** Longest socket path the platforms accept (sun_path is 104 bytes on macOS, 108 on Linux). */
const MAX_SOCKET_PATH = 103;
/** Prefix of the socket directories this module creates in the temp dir. */
const SOCKET_DIR_PREFIX = "pglite-";

/**
 * Removes the socket directory a crashed run left behind, named in the lock record we
 * just took over. Only a directory this module made (temp-dir prefix) is removed, and only
 * its socket file and then the directory if it is empty.
 */
export function removeStaleSocketDir(
  previous: ServerLockRecord | null,
  socketDir: string | undefined,
  log: (line: string) => void,
): void {
  if (!previous || !isAbsolute(previous.socketDir)) return;
  if (socketDir !== undefined && resolve(socketDir) === previous.socketDir) return;
  if (!basename(previous.socketDir).startsWith(SOCKET_DIR_PREFIX)) return;
  const stale = join(previous.socketDir, SOCKET_NAME);
  try {
    if (Deno.lstatSync(stale).isSocket) Deno.removeSync(stale);
    Deno.removeSync(previous.socketDir);
    log(`Removed stale socket directory ${previous.socketDir} left by pid ${previous.pid}`);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      log(`Left stale socket directory ${previous.socketDir}: ${messageOf(error)}`);
    }
  }
}

/** Creates (or checks) the private socket directory and clears a dead socket file in it. */
export async function prepareSocketDir(
  wanted: string | undefined,
  log: (line: string) => void,
): Promise<string> {
  let dir: string;
  if (wanted === undefined) {
    dir = await Deno.makeTempDir({ prefix: SOCKET_DIR_PREFIX });
  } else {
    dir = resolve(wanted);
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  }
  // makeTempDir and mkdir already use 0700 on Unix; a given directory may be wider.
  if (((await Deno.stat(dir)).mode ?? 0) & 0o077) await Deno.chmod(dir, 0o700);
  const path = join(dir, SOCKET_NAME);
  if (new TextEncoder().encode(path).length > MAX_SOCKET_PATH) {
    if (wanted === undefined) await Deno.remove(dir);
    throw new UploadError("config", `Socket path too long: ${path}`, {
      subject: path,
      hint: `Unix socket paths are limited to ${MAX_SOCKET_PATH} bytes; use a shorter TMPDIR`,
    });
  }
  await removeDeadSocket(path, log);
  return dir;
}

/** Removes a socket file nobody listens on; refuses when a live server owns it. */
async function removeDeadSocket(path: string, log: (line: string) => void): Promise<void> {
  try {
    await Deno.lstat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  let live = false;
  try {
    const probe = await Deno.connect({ transport: "unix", path });
    probe.close();
    live = true;
  } catch (_error) {
    // Refused or not a socket: nobody is serving it, so it is left over from a crash.
  }
  if (live) {
    throw new UploadError("locked", `Another server is listening on ${path}`, {
      subject: path,
      hint: "Stop that server or use another socket directory",
    });
  }
  await Deno.remove(path);
  log(`Removed stale socket ${path}`);
}
