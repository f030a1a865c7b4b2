/**
 * `COPY (<query>) TO STDOUT` through a psql process of its own, one row at a time, never
 * the whole result in memory (`--verify` reads this device's rows this way).
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import { connectHint, psqlExitKind } from "../../core/policy.ts";
import { decodeCopyText } from "./copy_text.ts";
import { LineReader } from "../../core/lines.ts";
import type { PsqlConnection } from "./psql.ts";
import { APPLICATION_NAME, spawnPsql } from "./spawn.ts";

const ENCODER = new TextEncoder();

/**
 * Streams the result of `COPY (<query>) TO STDOUT` through a psql process, one decoded row
 * (its text columns) at a time, without holding the result in memory. The query is sent on
 * psql's stdin; rows are read as psql writes them.
 *
 * @throws UploadError `transient` or `config` (as for {@linkcode PsqlSession.start}) when
 *   psql cannot connect; `config` naming the SQLSTATE-less message when the server refuses
 *   the query; `interrupted` when `signal` aborts.
 */
export async function copyOut(
  conn: PsqlConnection,
  query: string,
  onRow: (columns: (string | null)[]) => void,
  options: { psqlPath?: string; signal?: AbortSignal } = {},
): Promise<number> {
  const child = spawnPsql({
    psqlPath: options.psqlPath,
    // -w: never prompt for a password (outside the terminal's session psql would read
    // the prompt's answer from its stdin, the script).
    args: ["-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", ...conn.args],
    env: {
      PGAPPNAME: APPLICATION_NAME,
      ...conn.env,
      PGCONNECT_TIMEOUT: conn.env.PGCONNECT_TIMEOUT ?? "10",
      PGCLIENTENCODING: "UTF8",
      LC_ALL: "C",
    },
  });
  const onAbort = () => {
    try {
      child.kill("SIGKILL");
    } catch (_error) {
      // Already exited: nothing to stop.
    }
  };
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const stderr = new Response(child.stderr).text();
  const writer = child.stdin.getWriter();
  await writer.write(ENCODER.encode(`COPY (${query}) TO STDOUT;\n`)).catch(() => {
    // psql exited before reading its input: its exit status and stderr say why.
  });
  await writer.close().catch(() => {
    // As above.
  });
  let rows = 0;
  const lines = new LineReader(child.stdout);
  try {
    for (;;) {
      const line = await lines.next();
      if (line === null) break;
      onRow(line.split("\t").map(decodeCopyText));
      rows++;
    }
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
  }
  const status = await child.status;
  const text = (await stderr).trim().replace(/^psql: error: /, "");
  if (options.signal?.aborted) {
    throw new UploadError("interrupted", `Interrupted while reading rows from ${conn.display}`);
  }
  if (!status.success) {
    const kind = psqlExitKind(status.code, text);
    throw new UploadError(
      kind,
      `Cannot read rows from ${conn.display}: ${text || `psql exited with code ${status.code}`}`,
      {
        hint: connectHint(kind, text, conn),
      },
    );
  }
  return rows;
}
