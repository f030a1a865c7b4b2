/**
 * `deno task quick`: upload the named folders (or the paths piped in on stdin, with `-`)
 * at once, without scanning a tree. Parses flags, wires lib/ together, prints the step
 * lines (or NDJSON with `--json`), and sets the exit code.
 *
 * @module
 */

import { localDeviceId } from "../lib/target/device.ts";
import type { DeviceSource } from "../lib/target/identity.ts";
import { EXIT, messageOf, UploadError } from "../lib/core/errors.ts";
import { fromCaller } from "../lib/cli/parse.ts";
import { handleStopSignals } from "../lib/cli/signals.ts";
import { objectStoreFor, runMain, targetLine } from "../lib/cli/main.ts";
import { parseQuickCommand } from "../lib/cli/commands.ts";
import { quickHelp } from "../lib/cli/help.ts";
import { connectorFor } from "../lib/target/connect.ts";
import { type EngineEvent, newCounters } from "../lib/core/events.ts";
import { checkPsql } from "../lib/sink/postgres/psql.ts";
import { quickStepLines, Reporter } from "../lib/cli/progress.ts";
import { readLines, runQuickUpload, trackerForTarget } from "../lib/engine/quick.ts";
import { redactUrl, resolveTarget } from "../lib/target/target.ts";
import { Tracker } from "../lib/tracker/tracker.ts";

async function main(argv: string[]): Promise<number> {
  const env = Deno.env.toObject();
  const cmd = parseQuickCommand(argv, env);
  if (cmd.help) {
    console.log(quickHelp());
    return EXIT.OK;
  }
  const config = cmd.config;
  const reporter = new Reporter({ json: cmd.json, quiet: cmd.quiet, tty: false });
  const onEvent = (e: EngineEvent) => {
    reporter.json(e as unknown as Record<string, unknown>);
    if (e.event === "stopping" && e.kind !== undefined) {
      reporter.error({ message: e.reason, hint: e.hint });
    }
    for (const line of quickStepLines(e, config)) {
      if (line.level === "warn") reporter.warn(line.text);
      else reporter.info(line.text);
    }
  };

  // The URL is read before anything is printed: one it refuses leaves only its error.
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: config.dbPath, env });
  const connector = connectorFor(spec, env, { maxConnections: 1 });
  if (cmd.dbUrl && /\/\/[^/@]*:[^/@]+@/.test(cmd.dbUrl)) {
    reporter.warn(
      "Warning: a password in --db-url is visible to other users in the process list; " +
        "prefer SUPABASE_DB_URL in the environment (see README: Configuring Supabase)",
    );
  }
  let base: string | null = null;
  if (cmd.base !== null) {
    let isDir = false;
    try {
      isDir = Deno.statSync(cmd.base).isDirectory;
      base = Deno.realPathSync(cmd.base);
    } catch (error) {
      throw new UploadError("usage", `Cannot read --base ${cmd.base}: ${messageOf(error)}`, {
        hint: "--base names the folder the keys are relative to (the one 'deno task upload' scans)",
      });
    }
    if (!isDir) throw new UploadError("usage", `--base is not a directory: ${cmd.base}`);
  }

  await checkPsql();

  // The tracking database is used when it exists (and then locked like a manager run),
  // never created.
  let tracker: Tracker | null = null;
  if (exists(config.dbPath)) tracker = Tracker.open(config.dbPath, { command: "quick upload" });
  try {
    // DEVICE_ID, else the tracker's; else it is settled against the named folders' markers
    // and the server's rows before anything is written.
    const known = config.deviceId || tracker?.getMeta("device_id");
    const deviceId = known || localDeviceId();
    const deviceSource: DeviceSource = config.deviceId ? "config" : known ? "tracker" : "machine";
    reporter.info(targetLine(connector));
    let recording = tracker;
    if (tracker) {
      const use = trackerForTarget(tracker, `${connector.id}#${config.table}`);
      recording = use.tracker;
      if (use.otherTarget !== undefined) {
        reporter.warn(
          `Not recording these folders in ${tracker.path}: it tracks uploads to another ` +
            `database (${redactUrl(use.otherTarget)})`,
        );
      }
    }

    const interrupt = new AbortController();
    const stopSignals = handleStopSignals({
      interrupt: () => {
        reporter.warn(
          "Interrupted: finishing the batch in flight (press Ctrl-C again to quit now)",
        );
        interrupt.abort();
      },
      quit: () => {
        reporter.warn("Interrupted again: quitting now; unacknowledged folders were not uploaded");
        recording?.markInterrupted();
      },
    });
    const counters = newCounters();
    const store = objectStoreFor(cmd.imagesTo, {
      env,
      parallel: cmd.imagesParallel,
      giveUpAfterSeconds: config.giveUpAfterSeconds,
      onRetry: (r) => {
        counters.retries++;
        onEvent({
          event: "retry",
          subject: r.key || "object storage",
          attempt: r.attempt,
          delay_ms: r.waitMs,
          reason: r.reason,
        });
      },
    });
    if (store) reporter.info(`Storing images in ${store.display}`);
    try {
      const paths = cmd.stdin ? callerPaths(readLines(Deno.stdin.readable), env) : cmd.paths;
      const result = await runQuickUpload(paths, {
        config,
        connector,
        deviceId,
        deviceSource,
        settleDevice: !known,
        tracker: recording,
        base,
        markers: cmd.markers,
        objects: store ? { store, deviceId } : null,
        signal: interrupt.signal,
        onEvent,
        counters,
      });
      if (result.error) reporter.error(result.error);
      reporter.quickSummary(result);
      return result.exitCode;
    } finally {
      stopSignals();
    }
  } finally {
    tracker?.close();
    await connector.close();
  }
}

/** Paths read from stdin, relative ones taken from the caller's directory. */
async function* callerPaths(
  lines: AsyncIterable<string>,
  env: Record<string, string>,
): AsyncGenerator<string> {
  for await (const line of lines) yield fromCaller(line, env);
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

if (import.meta.main) await runMain(main);
