/**
 * What every script shares around its own work: running `main` and turning a thrown error
 * into one `Error:` line, one `Hint:` line and an exit code; the first line naming the
 * target; the object store of `--images-to`.
 *
 * @module
 */

import { exitCodeFor, messageOf, UploadError } from "../core/errors.ts";
import { type ObjectStore, type RetryEvent, storeFromEnv } from "../objects/storage.ts";
import type { Connector } from "../target/connect.ts";
import { redactUrl, type TargetSpec } from "../target/target.ts";
import type { Env } from "./parse.ts";
import { oneLine, type Reporter } from "./progress.ts";
import type { EngineEvent, RunCounters } from "../core/events.ts";

/**
 * Runs a script's `main` and exits with its code. A thrown error is printed as one
 * `Error:` line (passwords redacted) and one `Hint:` line when it has a hint; an
 * unexpected error also gets its stack. The exit code follows the error's kind. With
 * `--json` among the arguments, the error is also one JSON event on stdout
 * (`{"event":"error",...,"exit_code":N}`), so a pipeline reading stdout learns why.
 */
export async function runMain(main: (argv: string[]) => Promise<number>): Promise<never> {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (error) {
    code = exitCodeFor(error);
    const message = oneLine(redactUrl(messageOf(error)));
    console.error(`Error: ${message}`);
    const upload = error instanceof UploadError ? error : undefined;
    if (upload?.hint) console.error(`Hint: ${oneLine(upload.hint)}`);
    if (!upload) console.error(error);
    else if (upload.kind === "fatal" && upload.cause !== undefined) console.error(upload.cause);
    const end = Deno.args.indexOf("--");
    const flags = end < 0 ? Deno.args : Deno.args.slice(0, end);
    if (flags.includes("--json")) console.log(JSON.stringify(errorEvent(error, code)));
  }
  Deno.exit(code);
}

/**
 * The first line of a run that writes: the target as messages name it, then where it was
 * configured; for the embedded default, its folder and how to point at Supabase instead.
 *
 * @example
 * ```ts
 * targetLine({ display: "db.x.supabase.co:5432/postgres", source: "$SUPABASE_DB_URL", embedded: false });
 * // "Uploading to db.x.supabase.co:5432/postgres (from $SUPABASE_DB_URL)"
 * ```
 */
export function targetLine(connector: Pick<Connector, "display" | "source" | "embedded">): string {
  if (connector.embedded) {
    return `Using the ${connector.display} (no --db-url, SUPABASE_DB_URL or DATABASE_URL set). ` +
      `To upload to Supabase instead, set SUPABASE_DB_URL=postgresql://... ` +
      `(see README); 'deno task sql' opens this database.`;
  }
  const source = connector.source ? ` (from ${connector.source})` : "";
  return `Uploading to ${connector.display}${source}`;
}

/** The JSON event for an error that ended a command. */
export function errorEvent(error: unknown, exitCode: number): Record<string, unknown> {
  const upload = error instanceof UploadError ? error : undefined;
  return {
    event: "error",
    kind: upload?.kind ?? "fatal",
    message: redactUrl(messageOf(error)),
    ...(upload?.hint ? { hint: upload.hint } : {}),
    ...(upload?.sqlstate ? { sqlstate: upload.sqlstate } : {}),
    ...(upload?.subject ? { subject: redactUrl(upload.subject) } : {}),
    exit_code: exitCode,
  };
}

/**
 * The object store for `--images-to`, or null without it, announced on the reporter. Its
 * retries count in the run's counters and are reported as `retry` events (the object key as
 * subject).
 *
 * @throws {UploadError} `config` when credentials are missing or the endpoint is malformed.
 */
export function objectStoreFor(
  imagesTo: string | null,
  options: {
    env: Env;
    parallel: number;
    giveUpAfterSeconds: number;
    counters: Pick<RunCounters, "retries">;
    emit: (event: EngineEvent) => void;
    reporter: Pick<Reporter, "info">;
  },
): ObjectStore | null {
  if (imagesTo === null) return null;
  const store = storeFromEnv(options.env, imagesTo, {
    concurrency: options.parallel,
    giveUpAfterMs: options.giveUpAfterSeconds * 1000,
    onRetry: (r: RetryEvent) => {
      options.counters.retries++;
      options.emit({
        event: "retry",
        subject: r.key || "object storage",
        attempt: r.attempt,
        delay_ms: r.waitMs,
        reason: r.reason,
      });
    },
  });
  if (store !== null) options.reporter.info(`Storing images in ${store.display}`);
  return store;
}

/** Warns that a password given in `--db-url` shows in the process list. */
export function warnPasswordInArgs(
  dbUrl: string | null | undefined,
  reporter: Pick<Reporter, "warn">,
): void {
  if (dbUrl && /\/\/[^/@]*:[^/@]+@/.test(dbUrl)) {
    reporter.warn(
      "Warning: a password in --db-url is visible to other users in the process list; " +
        "prefer SUPABASE_DB_URL in the environment (see README: Configuring Supabase)",
    );
  }
}

/**
 * Checks that the embedded database of `spec` exists before a command that only reads it
 * opens it (opening a folder that does not exist would create an empty database).
 *
 * @throws {UploadError} `usage` with `hint` when it does not exist yet.
 */
export function requireEmbeddedData(spec: TargetSpec, hint: string): void {
  if (spec.kind !== "embedded") return;
  try {
    Deno.statSync(spec.dataDir);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new UploadError("usage", `No embedded database at ${spec.dataDir} yet`, { hint });
  }
}
