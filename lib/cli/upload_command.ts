/**
 * `deno task upload`: the upload manager's command. Parses the flags, answers `--help`,
 * `--status` and `--print-schema`, and otherwise opens the tracker and the target, settles
 * the device id and runs the engine (lib/engine/upload.ts, lib/engine/watch.ts) with the
 * progress display, the stop signals and the summary. scripts/upload_manager.ts runs it.
 *
 * @module
 */

import { DEFAULT_DEVICE_TYPE } from "../sink/postgres/sink.ts";
import { EXIT, UploadError } from "../core/errors.ts";
import { newCounters, type RunMode, type RunResult } from "../core/events.ts";
import { traitsOf } from "../engine/options.ts";
import { checkBase, type ManagerMode, runUpload, treeIdentity } from "../engine/upload.ts";
import { runWatch } from "../engine/watch.ts";
import { checkPsql } from "../sink/postgres/psql.ts";
import { printSchemaSql } from "../sink/postgres/schema.ts";
import type { Connector } from "../target/connect.ts";
import { connectorFor } from "../target/connect.ts";
import { localDeviceId } from "../target/device.ts";
import type { DeviceSource } from "../target/identity.ts";
import { resolveTarget } from "../target/target.ts";
import { Tracker } from "../tracker/tracker.ts";
import { parseUploadCommand, type UploadCommand } from "./commands.ts";
import { uploadHelp } from "./help.ts";
import { objectStoreFor, targetLine, warnPasswordInArgs } from "./main.ts";
import type { Env } from "./parse.ts";
import { Reporter } from "./progress.ts";
import { handleStopSignals } from "./signals.ts";
import { formatStatus } from "./status_text.ts";

/** Runs `deno task upload` with `argv`; returns the exit code. */
export async function uploadCommand(argv: string[], env: Env): Promise<number> {
  const cmd = parseUploadCommand(argv, env);
  if (cmd.help) {
    console.log(uploadHelp());
    return EXIT.OK;
  }
  if (cmd.status) return showStatus(cmd.config.dbPath, cmd.json, cmd.config.maxRetries);
  if (cmd.printSchema) {
    console.log(schemaFor(cmd));
    return EXIT.OK;
  }
  const reporter = new Reporter({
    json: cmd.json,
    quiet: cmd.quiet,
    tty: Deno.stderr.isTerminal(),
  });
  // Before anything is created (tracker, embedded database): a mistyped path leaves nothing.
  checkBase(cmd.basePath!);
  const mode = modeOf(cmd);
  const { sends } = traitsOf(mode);
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: cmd.config.dbPath, env });
  // The URL is read before anything is printed: one it refuses leaves only its error.
  const connector = sends
    ? connectorFor(spec, env, { maxConnections: cmd.config.parallel })
    : undefined;
  warnPasswordInArgs(cmd.dbUrl, reporter);
  if (connector) await checkPsql();
  const tracker = openTracker(cmd.config.dbPath, mode, cmd.rebuildTracker);
  try {
    return await manage({ cmd, env, mode, reporter, tracker, connector });
  } finally {
    tracker.close();
    await connector?.close();
  }
}

/** What a manager run has once its tracker and target are open. */
interface Opened {
  cmd: UploadCommand;
  env: Env;
  mode: RunMode;
  reporter: Reporter;
  tracker: Tracker;
  connector: Connector | undefined;
}

/** The run itself: the device id, what the run says first, the signals, the engine. */
async function manage(opened: Opened): Promise<number> {
  const { cmd, env, mode, reporter, tracker, connector } = opened;
  const config = cmd.config;
  // The base is identified by its real path: reached through a symlink it is the same base.
  const basePath = Deno.realPathSync(cmd.basePath!);
  if (tracker.movedAside) {
    reporter.info(
      `Moved the tracking database aside to ${tracker.movedAside}; rebuilding it from the ` +
        `server's rows`,
    );
  }
  const device = deviceOf(opened);
  if (cmd.movedFrom) {
    const moved = tracker.moveBase(cmd.movedFrom, basePath);
    reporter.info(
      `Moved ${moved.moved} tracked folders from ${cmd.movedFrom} to ${basePath}` +
        (moved.replaced > 0 ? ` (replacing ${moved.replaced} entries made there before)` : ""),
    );
  }
  announce(opened, basePath);
  const stop = stopControls(reporter, mode, tracker);
  const counters = newCounters();
  const store = objectStoreFor(cmd.imagesTo, {
    env,
    parallel: cmd.imagesParallel,
    giveUpAfterSeconds: config.giveUpAfterSeconds,
    counters,
    emit: (e) => reporter.event(e),
    reporter,
  });
  reporter.start(counters);
  try {
    const options = {
      basePath,
      config,
      tracker,
      connector,
      ...device,
      identity: device.known || !traitsOf(mode).sends
        ? undefined
        : treeIdentity(basePath, config, cmd.adoptDevice),
      markers: cmd.markers,
      objects: store ? { store, deviceId: device.deviceId } : null,
      signal: stop.interrupt,
      onEvent: reporter.event.bind(reporter),
      counters,
    };
    const result: RunResult = mode === "watch"
      ? await runWatch({
        ...options,
        connector: connector!,
        finishSignal: stop.finish,
        rescanEverySeconds: cmd.rescanEverySeconds,
      })
      : await runUpload({ ...options, mode: mode as ManagerMode, verify: cmd.verify });
    reporter.stop();
    if (result.error) reporter.error(result.error);
    reporter.summary(result, mode);
    return result.exitCode;
  } finally {
    reporter.stop();
    stop.dispose();
  }
}

/** What the run does, from its flags. */
function modeOf(cmd: UploadCommand): RunMode {
  const mode: RunMode = cmd.scanOnly
    ? "scan-only"
    : cmd.dryRun
    ? "dry-run"
    : cmd.watch
    ? "watch"
    : "upload";
  if (cmd.movedFrom && !traitsOf(mode).records) {
    throw new UploadError("usage", "--moved-from cannot be combined with --dry-run", {
      hint: "A dry run writes nothing, the tracker included",
    });
  }
  return mode;
}

/**
 * The device id: DEVICE_ID, else the tracker's; else (a new tracker) a candidate the run
 * settles against the folders' markers and the server's rows before anything is written.
 */
function deviceOf(
  opened: Opened,
): { deviceId: string; deviceSource: DeviceSource; known: string | undefined } {
  const { cmd, mode, reporter, tracker } = opened;
  const config = cmd.config;
  const known = config.deviceId || tracker.getMeta("device_id");
  const deviceId = traitsOf(mode).records
    ? known || localDeviceId()
    : known || "00000000-0000-0000-0000-000000000000";
  const deviceSource: DeviceSource = config.deviceId ? "config" : known ? "tracker" : "machine";
  if (cmd.adoptDevice && known) {
    reporter.warn(
      `Warning: --adopt-device has no effect: the device id ${known} comes from ` +
        (config.deviceId ? "DEVICE_ID" : `the tracking database ${config.dbPath}`),
    );
  }
  return { deviceId, deviceSource, known };
}

/** The run's first lines: where rows go (and a changed target), or what a scan does. */
function announce(opened: Opened, basePath: string): void {
  const { cmd, mode, reporter, tracker, connector } = opened;
  if (!connector) {
    reporter.info(
      mode === "scan-only"
        ? `Scanning ${basePath} (scan only, tracking database ${cmd.config.dbPath})`
        : `Dry run of ${basePath}: nothing will be written`,
    );
    return;
  }
  reporter.info(targetLine(connector));
  const reset = tracker.useTarget(`${connector.id}#${cmd.config.table}`);
  if (reset > 0) {
    reporter.info(
      `The target changed since the last upload: ${reset} folders recorded as uploaded ` +
        `elsewhere will be uploaded to this one too`,
    );
  }
}

/**
 * The stop signals of a manager run: Ctrl-C interrupts (a second one quits at once), and in
 * `--watch` SIGTERM finishes the batch in flight and ends normally.
 */
function stopControls(
  reporter: Reporter,
  mode: RunMode,
  tracker: Tracker,
): { interrupt: AbortSignal; finish: AbortSignal; dispose: () => void } {
  const interrupt = new AbortController();
  const finish = new AbortController();
  const dispose = handleStopSignals({
    interrupt: () => {
      reporter.warn("Interrupted: finishing batches in flight (press Ctrl-C again to quit now)");
      interrupt.abort();
    },
    finish: traitsOf(mode).endless
      ? () => {
        reporter.warn("Stopping: finishing the batch in flight");
        finish.abort();
      }
      : undefined,
    quit: () => {
      reporter.warn("Interrupted again: quitting now; unacknowledged folders stay pending");
      if (traitsOf(mode).records) tracker.markInterrupted();
    },
  });
  return { interrupt: interrupt.signal, finish: finish.signal, dispose };
}

/** `--print-schema`'s SQL, for the device this machine would upload as. */
function schemaFor(cmd: UploadCommand): string {
  const config = cmd.config;
  return printSchemaSql({
    table: config.table,
    role: cmd.role ?? undefined,
    isolateDevices: cmd.isolateDevices,
    device: {
      id: config.deviceId || trackedDeviceId(config.dbPath) || localDeviceId(),
      name: config.deviceName || Deno.hostname(),
      type: config.deviceType || DEFAULT_DEVICE_TYPE,
    },
  });
}

/** The tracker of a run: locked and written, or in a dry run only read (or empty). */
function openTracker(dbPath: string, mode: RunMode, moveAside: boolean): Tracker {
  if (traitsOf(mode).records) {
    return Tracker.open(dbPath, { command: `upload (${mode})`, moveAside });
  }
  // A dry run writes nothing: read an existing tracker, or diff against an empty one.
  if (!exists(dbPath)) return Tracker.open(":memory:", { lock: false });
  return Tracker.open(dbPath, { lock: false, readOnly: true });
}

/** The device id kept in an existing tracking database, read without locking or changing it. */
function trackedDeviceId(dbPath: string): string | undefined {
  // No tracking database yet: the machine's own id is used.
  if (!exists(dbPath)) return undefined;
  const tracker = Tracker.open(dbPath, { lock: false, readOnly: true });
  try {
    return tracker.schemaVersion() > 0 ? tracker.getMeta("device_id") : undefined;
  } finally {
    tracker.close();
  }
}

/** `--status`: the tracking database's report, as text or JSON. */
function showStatus(dbPath: string, json: boolean, maxRetries: number): number {
  if (!exists(dbPath)) {
    throw new UploadError("usage", `No tracking database at ${dbPath}`, {
      hint: "Run 'deno task upload <base_path>' first, or pass --db-path",
    });
  }
  // Not read-only: a database from an older version is migrated first (no lock needed).
  const tracker = Tracker.open(dbPath, { lock: false });
  try {
    // JSON gets the full lists; the text report the first entries of each, and the count.
    const report = tracker.status({ maxRetries, limit: json ? null : 10 });
    if (json) console.log(JSON.stringify(report));
    else Deno.stdout.writeSync(new TextEncoder().encode(formatStatus(report)));
    return EXIT.OK;
  } finally {
    tracker.close();
  }
}

/** Whether anything is at `path`. */
function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
