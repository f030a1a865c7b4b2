/**
 * `deno task quick`: the quick upload's command. Uploads the named folders (or the paths
 * piped in on stdin, with `-`) at once, without scanning a tree, through the engine
 * (lib/engine/quick.ts), with the step lines (or NDJSON with `--json`).
 * scripts/quick_upload.ts runs it.
 *
 * @module
 */

import type { UploaderConfig } from "../../config.ts";
import { localDeviceId } from "../target/device.ts";
import type { DeviceSource } from "../target/identity.ts";
import { EXIT, messageOf, UploadError } from "../core/errors.ts";
import { type Env, fromCaller } from "./parse.ts";
import { handleStopSignals } from "./signals.ts";
import { objectStoreFor, targetLine, warnPasswordInArgs } from "./main.ts";
import { parseQuickCommand } from "./commands.ts";
import { quickHelp } from "./help.ts";
import { connectorFor } from "../target/connect.ts";
import { type EngineEvent, newCounters } from "../core/events.ts";
import { checkPsql } from "../sink/postgres/psql.ts";
import { quickStepLines, Reporter } from "./progress.ts";
import { readLines, runQuickUpload, trackerForTarget } from "../engine/quick.ts";
import { redactUrl, resolveTarget } from "../target/target.ts";
import { Tracker } from "../tracker/tracker.ts";

/** Runs `deno task quick` with `argv`; returns the exit code. */
export async function quickCommand(argv: string[], env: Env): Promise<number> {
  const cmd = parseQuickCommand(argv, env);
  if (cmd.help) {
    console.log(quickHelp());
    return EXIT.OK;
  }
  const config = cmd.config;
  const reporter = new Reporter({ json: cmd.json, quiet: cmd.quiet, tty: false });
  const onEvent = stepPrinter(reporter, config);

  // The URL is read before anything is printed: one it refuses leaves only its error.
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: config.dbPath, env });
  const connector = connectorFor(spec, env, { maxConnections: 1 });
  warnPasswordInArgs(cmd.dbUrl, reporter);
  const base = cmd.base === null ? null : keyBase(cmd.base);

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
    const recording = tracker && recorderFor(tracker, `${connector.id}#${config.table}`, reporter);

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
      counters,
      emit: onEvent,
      reporter,
    });
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

/** Each event as NDJSON (`--json`) and as the quick upload's step lines. */
function stepPrinter(reporter: Reporter, config: UploaderConfig): (e: EngineEvent) => void {
  return (e) => {
    reporter.json(e as unknown as Record<string, unknown>);
    if (e.event === "stopping" && e.kind !== undefined) {
      reporter.error({ message: e.reason, hint: e.hint });
    }
    for (const line of quickStepLines(e, config)) {
      if (line.level === "warn") reporter.warn(line.text);
      else reporter.info(line.text);
    }
  };
}

/**
 * The tracker the folders are recorded in: `tracker`, unless it tracks uploads to another
 * target (then none, and a warning says so).
 */
function recorderFor(tracker: Tracker, targetId: string, reporter: Reporter): Tracker | null {
  const use = trackerForTarget(tracker, targetId);
  if (use.otherTarget !== undefined) {
    reporter.warn(
      `Not recording these folders in ${tracker.path}: it tracks uploads to another ` +
        `database (${redactUrl(use.otherTarget)})`,
    );
  }
  return use.tracker;
}

/** Paths read from stdin, relative ones taken from the caller's directory. */
async function* callerPaths(
  lines: AsyncIterable<string>,
  env: Env,
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

/**
 * The real path of `--base`, the folder keys are relative to.
 *
 * @throws {UploadError} `usage` when it cannot be read or is no directory.
 */
function keyBase(path: string): string {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (error) {
    throw new UploadError("usage", `Cannot read --base ${path}: ${messageOf(error)}`, {
      hint: "--base names the folder the keys are relative to (the one 'deno task upload' scans)",
    });
  }
  if (!info.isDirectory) throw new UploadError("usage", `--base is not a directory: ${path}`);
  return Deno.realPathSync(path);
}
