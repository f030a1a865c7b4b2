/**
 * `deno task upload`: scan a tree of test folders and upload new or changed ones, keep
 * watching it (`--watch`), or report status. Parses flags, wires lib/ together, prints,
 * and sets the exit code.
 *
 * @module
 */

import { EXIT, UploadError } from "../lib/core/errors.ts";
import { handleStopSignals } from "../lib/cli/signals.ts";
import { objectStoreFor, runMain, targetLine } from "../lib/cli/main.ts";
import { parseUploadCommand } from "../lib/cli/commands.ts";
import { uploadHelp } from "../lib/cli/help.ts";
import { connectorFor } from "../lib/target/connect.ts";
import { newCounters, type RunMode } from "../lib/core/events.ts";
import { checkBase, type ManagerMode, runUpload, treeIdentity } from "../lib/engine/upload.ts";
import { checkPsql } from "../lib/sink/postgres/psql.ts";
import { Reporter } from "../lib/cli/progress.ts";
import { formatStatus } from "../lib/cli/status_text.ts";
import { printSchemaSql } from "../lib/sink/postgres/schema.ts";
import { localDeviceId } from "../lib/target/device.ts";
import type { DeviceSource } from "../lib/target/identity.ts";
import { resolveTarget } from "../lib/target/target.ts";
import { Tracker } from "../lib/tracker/tracker.ts";
import { runWatch } from "../lib/engine/watch.ts";
import { traitsOf } from "../lib/engine/options.ts";
import { DEFAULT_DEVICE_TYPE } from "../lib/sink/postgres/sink.ts";

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

  if (cmd.status) return showStatus(config.dbPath, cmd.json, config.maxRetries);
  if (cmd.printSchema) {
    console.log(printSchemaSql({
      table: config.table,
      role: cmd.role ?? undefined,
      isolateDevices: cmd.isolateDevices,
      device: {
        id: config.deviceId || trackedDeviceId(config.dbPath) || localDeviceId(),
        name: config.deviceName || Deno.hostname(),
        type: config.deviceType || DEFAULT_DEVICE_TYPE,
      },
    }));
    return EXIT.OK;
  }

  // Before anything is created (tracker, embedded database): a mistyped path leaves nothing.
  checkBase(cmd.basePath!);
  // The base is identified by its real path: reached through a symlink it is the same base.
  const basePath = Deno.realPathSync(cmd.basePath!);
  const mode: RunMode = cmd.scanOnly
    ? "scan-only"
    : cmd.dryRun
    ? "dry-run"
    : cmd.watch
    ? "watch"
    : "upload";
  if (cmd.movedFrom && mode === "dry-run") {
    throw new UploadError("usage", "--moved-from cannot be combined with --dry-run", {
      hint: "A dry run writes nothing, the tracker included",
    });
  }

  const { sends, records } = traitsOf(mode);
  const spec = resolveTarget({ dbUrl: cmd.dbUrl, dbPath: config.dbPath, env });
  // The URL is read before anything is printed: one it refuses leaves only its error.
  const connector = sends
    ? connectorFor(spec, env, { maxConnections: config.parallel })
    : undefined;
  if (cmd.dbUrl && /\/\/[^/@]*:[^/@]+@/.test(cmd.dbUrl)) {
    reporter.warn(
      "Warning: a password in --db-url is visible to other users in the process list; " +
        "prefer SUPABASE_DB_URL in the environment (see README: Configuring Supabase)",
    );
  }
  if (connector) await checkPsql();

  const tracker = openTracker(config.dbPath, mode, cmd.rebuildTracker);
  try {
    if (tracker.movedAside) {
      reporter.info(
        `Moved the tracking database aside to ${tracker.movedAside}; rebuilding it from the ` +
          `server's rows`,
      );
    }
    // The device id: DEVICE_ID, else the tracker's; else (a new tracker) it is settled
    // against the folders' markers and the server's rows before anything is written.
    const known = config.deviceId || tracker.getMeta("device_id");
    const deviceId = mode === "dry-run"
      ? (known || "00000000-0000-0000-0000-000000000000")
      : known || localDeviceId();
    const deviceSource: DeviceSource = config.deviceId ? "config" : known ? "tracker" : "machine";
    if (cmd.adoptDevice && known) {
      reporter.warn(
        `Warning: --adopt-device has no effect: the device id ${known} comes from ` +
          (config.deviceId ? "DEVICE_ID" : `the tracking database ${config.dbPath}`),
      );
    }
    if (cmd.movedFrom) {
      const moved = tracker.moveBase(cmd.movedFrom, basePath);
      reporter.info(
        `Moved ${moved.moved} tracked folders from ${cmd.movedFrom} to ${basePath}` +
          (moved.replaced > 0 ? ` (replacing ${moved.replaced} entries made there before)` : ""),
      );
    }
    if (connector) {
      reporter.info(targetLine(connector));
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

    const interrupt = new AbortController();
    const finish = new AbortController();
    const stopSignals = handleStopSignals({
      interrupt: () => {
        reporter.warn("Interrupted: finishing batches in flight (press Ctrl-C again to quit now)");
        interrupt.abort();
      },
      finish: mode === "watch"
        ? () => {
          reporter.warn("Stopping: finishing the batch in flight");
          finish.abort();
        }
        : undefined,
      quit: () => {
        reporter.warn("Interrupted again: quitting now; unacknowledged folders stay pending");
        if (records) tracker.markInterrupted();
      },
    });
    const counters = newCounters();
    const store = objectStoreFor(cmd.imagesTo, {
      env,
      parallel: cmd.imagesParallel,
      giveUpAfterSeconds: config.giveUpAfterSeconds,
      onRetry: (r) => {
        counters.retries++;
        reporter.event({
          event: "retry",
          subject: r.key || "object storage",
          attempt: r.attempt,
          delay_ms: r.waitMs,
          reason: r.reason,
        });
      },
    });
    if (store) reporter.info(`Storing images in ${store.display}`);
    reporter.start(counters);
    try {
      const options = {
        basePath,
        config,
        tracker,
        connector,
        deviceId,
        deviceSource,
        identity: known || !sends ? undefined : treeIdentity(basePath, config, cmd.adoptDevice),
        markers: cmd.markers,
        objects: store ? { store, deviceId } : null,
        signal: interrupt.signal,
        onEvent: reporter.event.bind(reporter),
        counters,
      };
      const result = mode === "watch"
        ? await runWatch({
          ...options,
          connector: connector!,
          finishSignal: finish.signal,
          rescanEverySeconds: cmd.rescanEverySeconds,
        })
        : await runUpload({ ...options, mode: mode as ManagerMode, verify: cmd.verify });
      reporter.stop();
      if (result.error) reporter.error(result.error);
      reporter.summary(result, mode);
      return result.exitCode;
    } finally {
      reporter.stop();
      stopSignals();
    }
  } finally {
    tracker.close();
    await connector?.close();
  }
}

function openTracker(dbPath: string, mode: RunMode, moveAside: boolean): Tracker {
  if (traitsOf(mode).records) {
    return Tracker.open(dbPath, { command: `upload (${mode})`, moveAside });
  }
  // A dry run writes nothing: read an existing tracker, or diff against an empty one.
  try {
    Deno.statSync(dbPath);
  } catch {
    return Tracker.open(":memory:", { lock: false });
  }
  return Tracker.open(dbPath, { lock: false, readOnly: true });
}

/** The device id kept in an existing tracking database, read without locking or changing it. */
function trackedDeviceId(dbPath: string): string | undefined {
  try {
    Deno.statSync(dbPath);
  } catch {
    return undefined; // no tracking database yet: the machine's own id is used
  }
  const tracker = Tracker.open(dbPath, { lock: false, readOnly: true });
  try {
    return tracker.schemaVersion() > 0 ? tracker.getMeta("device_id") : undefined;
  } finally {
    tracker.close();
  }
}

function showStatus(dbPath: string, json: boolean, maxRetries: number): number {
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
    // JSON gets the full lists; the text report the first entries of each, and the count.
    const report = tracker.status({ maxRetries, limit: json ? null : 10 });
    if (json) console.log(JSON.stringify(report));
    else Deno.stdout.writeSync(new TextEncoder().encode(formatStatus(report)));
    return EXIT.OK;
  } finally {
    tracker.close();
  }
}

if (import.meta.main) await runMain(main);
