/**
 * Opens the resolved target for writing: a URL or libpq's defaults go straight to psql;
 * the embedded default starts the local database first, served on a private socket for
 * the length of the run. Started lazily, so a run with nothing to upload touches nothing.
 *
 * @module
 */

import { startEmbedded } from "./embedded.ts";
import type { PsqlConnection } from "../sink/postgres/psql.ts";
import { resolve } from "node:path";
import { UploadError } from "../core/errors.ts";
import { connectionFromUrl, libpqConnection, targetIdFromUrl, type TargetSpec } from "./target.ts";

/** A target that can be opened on demand. */
export interface Connector {
  /**
   * The target as messages name it: `host:port/database`, the embedded folder, or libpq's
   * variables. Never a user name or password.
   */
  readonly display: string;
  /** Where the target was configured (`--db-url`, `$SUPABASE_DB_URL`, `$PGHOST`), when given. */
  readonly source?: string;
  /** Whether this is the embedded local database. */
  readonly embedded: boolean;
  /** Identity of the target (server, port, database; no user or password), kept in the tracker. */
  readonly id: string;
  /**
   * Starts what needs starting and returns how psql reaches the server. Aborting `signal`
   * gives up a start in progress (rejects with `interrupted`).
   */
  open(signal?: AbortSignal): Promise<PsqlConnection>;
  /** Stops what `open` started. */
  close(): Promise<void>;
}

/**
 * A connector for a target spec.
 *
 * @throws {UploadError} kind `config` for a URL that cannot be parsed.
 */
export function connectorFor(
  spec: TargetSpec,
  env: Record<string, string | undefined>,
  options: { maxConnections?: number } = {},
): Connector {
  if (spec.kind === "url") {
    const connection = connectionFromUrl(spec.url, { source: spec.source, env });
    return {
      display: connection.display,
      source: spec.source,
      embedded: false,
      id: targetIdFromUrl(spec.url),
      open: () => Promise.resolve(connection),
      close: () => Promise.resolve(),
    };
  }
  if (spec.kind === "libpq") {
    const connection = libpqConnection(env);
    return {
      display: connection.display,
      source: spec.source,
      embedded: false,
      id: `libpq:${env.PGSERVICE ?? ""}:${env.PGHOST ?? ""}:${env.PGPORT ?? ""}:${
        env.PGDATABASE ?? ""
      }`,
      open: () => Promise.resolve(connection),
      close: () => Promise.resolve(),
    };
  }
  let server: Awaited<ReturnType<typeof startEmbedded>> | null = null;
  return {
    display: `embedded PostgreSQL (PGlite) in ${spec.dataDir}`,
    embedded: true,
    id: `embedded:${resolve(spec.dataDir)}`,
    async open(signal) {
      if (signal?.aborted) {
        throw new UploadError("interrupted", "Interrupted before the embedded database started");
      }
      server ??= await startEmbedded(spec.dataDir, {
        maxConnections: Math.max(8, (options.maxConnections ?? 4) + 2),
        signal,
      });
      return server.connection;
    },
    async close() {
      const s = server;
      server = null;
      await s?.stop();
    },
  };
}
