/**
 * `deno task quick`: upload the named folders (or the paths piped in on stdin, with `-`)
 * at once, without scanning a tree. Parses flags, wires lib/ together, prints the step
 * lines (or NDJSON with `--json`), and sets the exit code.
 *
 * @module
 */

import { localDeviceId } from "../lib/device.ts";
import { resolve } from "node:path";
import { EXIT, messageOf, UploadError } from "../lib/errors.ts";
import { parseQuickCommand, quickHelp, runMain } from "../lib/cli.ts";
import { connectorFor } from "../lib/connect.ts";
import { checkPsql } from "../lib/psql.ts";
import { Reporter } from "../lib/progress.ts";
import {
  type QuickEvent,
  quickEventLines,
  type QuickResult,
  readLines,
  runQuickUpload,
} from "../lib/quick.ts";
import { redactUrl, resolveTarget } from "../lib/target.ts";
import { Tracker } from "../lib/tracker.ts";

async function main(argv: string[]): Promise<number> {
  const env = Deno.env.toObject();
  const cmd = parseQuickCommand(argv, env);
  if (cmd.help) {
    console.log(quickHelp());
    return EXIT.OK;
  }
  const config = cmd.config;
  const reporter = new Reporter({ json: cmd.json, quiet: cmd.quiet, tty: false });
  const onEvent = (e: QuickEvent) => {
    reporter.json(e as unknown as Record<string, unknown>);
    for (const line of quickEventLines(e, config)) {
      if (line.level === "warn") reporter.warn(line.text);
      else reporter.info(line.text);
    }
  };

  if (cmd.dbUrl && /\/\/[^/@]*:[^/@]+@/.test(cmd.dbUrl)) {
    reporter.warn(
      "Warning: a password in --db-url is visible to other users in the process list; " +
        "prefer SUPABASE_DB_URL in the environment (see README: Configuring Supabase)",
    );
  }
  let base: string | null = null;
  if (cmd.base !== null) {
    base = resolve(cmd.base);
    let isDir = false;
    try {
      isDir = Deno.statSync(base).isDirectory;
    } catch (error) {
      throw new UploadError("usage", `Cannot read --base ${base}: ${messageOf(error)}`, {
        hint: "--base names the folder the keys are relative to (the one 'deno task upload' scans)",
      });
    }
    if (!isDir) throw new UploadError("usage", `--base is not a directory: ${base}`);
  }

  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: config.dbPath, env });
  const connector = connectorFor(spec, env, { maxConnections: 1 });
  await checkPsql();

  // The tracking database is used when it exists (and then locked like a manager run),
  // never created.
  let tracker: Tracker | null = null;
  if (exists(config.dbPath)) tracker = Tracker.open(config.dbPath, { command: "quick upload" });
  try {
    const deviceId = tracker
      ? tracker.deviceId(config.deviceId || undefined)
      : config.deviceId || localDeviceId();
    if (connector.embedded) {
      reporter.info(
        `Using the ${connector.display} (no --db-url, SUPABASE_DB_URL or DATABASE_URL set). ` +
          `To upload to Supabase instead, set SUPABASE_DB_URL=postgresql://... ` +
          `(see README); 'deno task sql' opens this database.`,
      );
    } else {
      reporter.info(`Uploading to ${connector.display}`);
    }
    if (tracker) {
      // The tracker says which target its folders went to; recording uploads to another
      // target there would make the manager skip folders its own target never got.
      const targetId = `${connector.id}#${config.table}`;
      const previous = tracker.getMeta("target");
      if (previous === undefined || previous === targetId) {
        tracker.useTarget(targetId);
      } else {
        reporter.warn(
          `Not recording these folders in ${tracker.path}: it tracks uploads to another ` +
            `database (${redactUrl(previous.replace(/#[^#]*$/, ""))})`,
        );
        tracker.close();
        tracker = null;
      }
    }

    const abort = new AbortController();
    let signals = 0;
    const onSignal = () => {
      signals++;
      if (signals === 1) {
        reporter.warn(
          "Interrupted: finishing the batch in flight (press Ctrl-C again to quit now)",
        );
        abort.abort();
      } else {
        reporter.warn("Interrupted again: quitting now; unacknowledged folders were not uploaded");
        tracker?.markInterrupted();
        Deno.exit(EXIT.INTERRUPTED);
      }
    };
    Deno.addSignalListener("SIGINT", onSignal);
    Deno.addSignalListener("SIGTERM", onSignal);
    try {
      const paths = cmd.stdin ? readLines(Deno.stdin.readable) : cmd.paths;
      const result = await runQuickUpload(paths, {
        config,
        connector,
        deviceId,
        tracker,
        base,
        markers: cmd.markers,
        signal: abort.signal,
        onEvent,
      });
      if (result.error) {
        reporter.warn(`Error: ${result.error.message}`);
        if (result.error.hint) reporter.warn(`Hint: ${result.error.hint}`);
      }
      printSummary(reporter, result, cmd.quiet, cmd.json);
      return result.exitCode;
    } finally {
      Deno.removeSignalListener("SIGINT", onSignal);
      Deno.removeSignalListener("SIGTERM", onSignal);
    }
  } finally {
    tracker?.close();
    await connector.close();
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw new UploadError("config", `Cannot read tracking database ${path}: ${messageOf(error)}`);
  }
}

function printSummary(reporter: Reporter, result: QuickResult, quiet: boolean, json: boolean) {
  const c = result.counters;
  reporter.json({
    event: "summary",
    mode: "quick",
    status: result.status,
    exit_code: result.exitCode,
    given: c.given,
    duplicates: c.duplicates,
    uploaded: c.uploaded,
    inserted: c.inserted,
    updated: c.updated,
    failed: c.failed,
    recorded: c.recorded,
    marker_errors: c.markerErrors,
    retries: c.retries,
    bytes: c.bytes,
    batches: c.batches,
    duration_ms: result.durationMs,
  });
  if (quiet && result.exitCode === 0) return;
  const folders = c.given - c.duplicates;
  const lines = [
    folders === 0
      ? "No folders given"
      : `Uploaded ${c.uploaded} of ${folders} folder${folders === 1 ? "" : "s"} ` +
        `(${c.inserted} inserted, ${c.updated} updated, ` +
        `${c.uploaded - c.inserted - c.updated} already up to date); ${c.failed} failed`,
  ];
  if (c.markerErrors > 0) lines.push(`${c.markerErrors} marker files could not be written`);
  if (result.status === "interrupted") {
    lines.push("Interrupted: folders not yet acknowledged were not uploaded");
  }
  for (const line of lines) json ? reporter.warn(line) : console.log(line);
}

if (import.meta.main) await runMain(main);
