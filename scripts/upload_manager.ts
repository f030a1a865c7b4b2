/**
 * `deno task upload`: scan a tree of test folders and upload new or changed ones, or
 * report status. Parses flags, wires lib/ together, prints, and sets the exit code.
 *
 * @module
 */

import { resolve } from "node:path";
import { EXIT, messageOf, UploadError } from "../lib/errors.ts";
import { parseUploadCommand, runMain, uploadHelp } from "../lib/cli.ts";
import { connectorFor } from "../lib/connect.ts";
import { checkPsql } from "../lib/psql.ts";
import { newCounters, type RunMode, runUpload } from "../lib/pipeline.ts";
import { Reporter } from "../lib/progress.ts";
import { formatStatus } from "../lib/report.ts";
import { resolveTarget } from "../lib/target.ts";
import { Tracker } from "../lib/tracker.ts";

async function main(argv: string[]): Promise<number> {
  const env = Deno.env.toObject();
  const cmd = parseUploadCommand(argv, env);
  if (cmd.help) {
    console.log(uploadHelp());
    return EXIT.OK;
  }
  const config = cmd.config;
  const reporter = new Reporter({
    json: cmd.json,
    quiet: cmd.quiet,
    tty: Deno.stderr.isTerminal(),
  });

  if (cmd.status) return showStatus(config.dbPath, cmd.json);

  const basePath = resolve(cmd.basePath!);
  const mode: RunMode = cmd.scanOnly ? "scan-only" : cmd.dryRun ? "dry-run" : "upload";
  // Before anything is created (tracker, embedded database): a mistyped path leaves nothing.
  checkBasePath(basePath);

  if (cmd.dbUrl && /\/\/[^/@]*:[^/@]+@/.test(cmd.dbUrl)) {
    reporter.warn(
      "Warning: a password in --db-url is visible to other users in the process list; " +
        "prefer SUPABASE_DB_URL in the environment (see README: Configuring Supabase)",
    );
  }
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: config.dbPath, env });
  const connector = mode === "upload"
    ? connectorFor(spec, env, { maxConnections: config.parallel })
    : undefined;
  if (connector) await checkPsql();

  const tracker = openTracker(config.dbPath, mode);
  const deviceId = mode === "dry-run"
    ? (config.deviceId || tracker.getMeta("device_id") || "00000000-0000-0000-0000-000000000000")
    : tracker.deviceId(config.deviceId || undefined);

  if (connector) {
    if (connector.embedded) {
      reporter.info(
        `Using the ${connector.display} (no --db-url, SUPABASE_DB_URL or DATABASE_URL set). ` +
          `To upload to Supabase instead, set SUPABASE_DB_URL=postgresql://... ` +
          `(see README); 'deno task sql' opens this database.`,
      );
    } else {
      reporter.info(`Uploading to ${connector.display}`);
    }
    const reset = tracker.useTarget(`${connector.id}#${config.table}`);
    if (reset > 0) {
      reporter.info(
        `The target changed since the last upload: ${reset} folders recorded as uploaded ` +
          `elsewhere will be uploaded to this one too`,
      );
    }
  } else {
    reporter.info(
      mode === "scan-only"
        ? `Scanning ${basePath} (scan only, tracking database ${config.dbPath})`
        : `Dry run of ${basePath}: nothing will be written`,
    );
  }

  const abort = new AbortController();
  let signals = 0;
  const onSignal = () => {
    signals++;
    if (signals === 1) {
      reporter.warn("Interrupted: finishing batches in flight (press Ctrl-C again to quit now)");
      abort.abort();
    } else {
      reporter.warn("Interrupted again: quitting now; unacknowledged folders stay pending");
      if (mode !== "dry-run") tracker.markInterrupted();
      Deno.exit(EXIT.INTERRUPTED);
    }
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const counters = newCounters();
  reporter.start(counters);
  try {
    const result = await runUpload({
      basePath,
      config,
      tracker,
      mode,
      connector,
      deviceId,
      markers: cmd.markers,
      signal: abort.signal,
      onEvent: (e) => reporter.event(e),
      counters,
    });
    if (result.error) {
      reporter.warn(`Error: ${result.error.message}`);
      if (result.error.hint) reporter.warn(`Hint: ${result.error.hint}`);
    }
    reporter.summary(result, mode);
    return result.exitCode;
  } finally {
    reporter.stop();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    tracker.close();
    await connector?.close();
  }
}

function checkBasePath(basePath: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(basePath);
  } catch (error) {
    throw new UploadError("usage", `Cannot read base path ${basePath}: ${messageOf(error)}`, {
      subject: basePath,
      hint: "Give the folder that holds the test folders (deno task upload <base_path>)",
    });
  }
  if (!info.isDirectory) {
    throw new UploadError("usage", `Not a directory: ${basePath}`, {
      subject: basePath,
      hint: "Give the folder that holds the test folders, not a file in it",
    });
  }
}

function openTracker(dbPath: string, mode: RunMode): Tracker {
  if (mode !== "dry-run") return Tracker.open(dbPath, { command: `upload (${mode})` });
  // A dry run writes nothing: read an existing tracker, or diff against an empty one.
  try {
    Deno.statSync(dbPath);
  } catch {
    return Tracker.open(":memory:", { lock: false });
  }
  return Tracker.open(dbPath, { lock: false, readOnly: true });
}

function showStatus(dbPath: string, json: boolean): number {
  try {
    Deno.statSync(dbPath);
  } catch {
    throw new UploadError("usage", `No tracking database at ${dbPath}`, {
      hint: "Run 'deno task upload <base_path>' first, or pass --db-path",
    });
  }
  // Not read-only: a database from an older version is migrated first (no lock needed).
  const tracker = Tracker.open(dbPath, { lock: false });
  try {
    const report = tracker.status();
    if (json) console.log(JSON.stringify(report));
    else Deno.stdout.writeSync(new TextEncoder().encode(formatStatus(report)));
    return EXIT.OK;
  } finally {
    tracker.close();
  }
}

if (import.meta.main) await runMain(main);
