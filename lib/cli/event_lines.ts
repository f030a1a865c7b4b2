/**
 * Run events as human lines: what the upload manager prints for each event, and quick
 * upload's step lines in the original quick upload script's words (`Processing folder:
 * ...`, `Found 2 images`, `Test status: passed`). Events both commands print the same way
 * are worded once, in {@linkcode commonLine}.
 *
 * @module
 */

import type { UploaderConfig } from "../../config.ts";
import type { EngineEvent } from "../core/events.ts";
import { describeIdentity, type DeviceSource } from "../target/identity.ts";
import { plural } from "./format.ts";

/**
 * One human line for an event: `info` lines are progress (left out with `--quiet`),
 * `notice` lines are progress about trouble (on stderr, left out with `--quiet`), `warn`
 * lines always print, on stderr.
 */
export interface StepLine {
  level: "info" | "notice" | "warn";
  text: string;
}

const info = (text: string): StepLine => ({ level: "info", text });
const notice = (text: string): StepLine => ({ level: "notice", text });
const warn = (text: string): StepLine => ({ level: "warn", text });

/**
 * The line of an event both commands word alike, or null for one they word their own way
 * (or not at all). An error that stops the run (a `stopping` event with a kind) is not a
 * line here: the reporter prints it once, as the error.
 */
export function commonLine(e: EngineEvent): StepLine | null {
  switch (e.event) {
    case "retry":
      return notice(
        `Retrying ${e.subject} (attempt ${e.attempt}) in ${(e.delay_ms / 1000).toFixed(1)} s: ` +
          e.reason,
      );
    case "settle_wait":
      return info(
        `Waiting up to ${(e.wait_ms / 1000).toFixed(1)} s for ${
          plural(e.folders, "folder")
        } still being written`,
      );
    case "schema":
      return e.rekeyed > 0
        ? warn(
          `Upgraded ${e.table}: ${e.rekeyed} duplicate rows of the original tool were kept under ` +
            `keys marked "(duplicate ...)"`,
        )
        : null;
    case "device": {
      const line = deviceLine(e);
      return line === null ? null : info(line);
    }
    case "warning":
      return warn(`Warning: ${e.message}`);
    case "lock_wait":
      return warn(`Waiting for a lock: ${e.message}`);
    case "stopping":
      return e.kind !== undefined ? null : warn(`Stopping: ${e.reason}`);
    default:
      return null;
  }
}

/** The upload manager's line for an event (besides progress and the summary), or null. */
export function managerLine(e: EngineEvent): StepLine | null {
  switch (e.event) {
    case "problem":
      return warn(`Cannot read ${e.path}: ${e.reason}`);
    case "skipped":
      return warn(`Skipped ${e.path}: ${e.reason}`);
    case "folder_failed":
      return warn(`Failed ${e.key}: ${e.error}`);
    case "marker_error":
      return warn(e.error);
    case "markers_caught_up":
      return info(
        `Wrote ${plural(e.written, "marker")} owed by earlier runs` +
          (e.owed > 0 ? ` (${e.owed} still owed)` : ""),
      );
    case "verify":
      return info(
        `Verified against ${plural(e.rows, "server row")}: ${e.missing_on_server} missing ` +
          `and ${e.changed_on_server} changed there (sent again), ${e.adopted} adopted ` +
          `without sending, ${plural(e.orphans, "orphan row")} with no folder on disk` +
          (e.orphan_sample.length > 0 ? ` (${e.orphan_sample.slice(0, 3).join(", ")}...)` : ""),
      );
    default:
      return commonLine(e);
  }
}

/** The warning a verify adds when other device ids hold rows of this tree, or null. */
export function otherDevicesLine(e: EngineEvent): StepLine | null {
  if (e.event !== "verify" || e.other_devices.length === 0) return null;
  const folders = e.other_devices.reduce((sum, d) => sum + d.folders, 0);
  return warn(
    `Warning: ${plural(folders, "folder")} of this tree also have rows under other ` +
      `device ids: ${e.other_devices.map((d) => `${d.device_id} (${d.folders})`).join(", ")} ` +
      `(another device using the same folder names, or copies an older version made; those ` +
      `rows are not this device's and are never changed or deleted)`,
  );
}

/**
 * The human step lines of a quick upload's event, in the original quick upload script's
 * words. Folders of one batch are looked at together, so each step line names its folder.
 */
export function quickStepLines(
  e: EngineEvent,
  config: Pick<UploaderConfig, "statsFileName">,
): StepLine[] {
  const stats = config.statsFileName;
  switch (e.event) {
    case "folder_start":
      return [info(`Processing folder: ${e.path}`)];
    case "folder_skipped":
      return [info(`Skipped ${e.path}: ${e.reason}`)];
    case "folder_found":
      return [
        info(`  ${e.key}: Found ${plural(e.images, "image")}`),
        info(e.stats ? `  ${e.key}: Found ${stats}` : `  ${e.key}: No ${stats}`),
      ];
    case "folder_read":
      return [
        ...(e.stats ? [info(`  ${e.key}: Loaded ${stats}`)] : []),
        info(`  ${e.key}: Test status: ${e.test_status}`),
      ];
    case "folder_failed":
      return [warn(`  ${e.key ?? e.path}: Failed: ${e.error}`)];
    case "inserting":
      return [
        info(
          `Inserting into ${e.table}...${
            e.folders > 1 ? ` (${plural(e.folders, "folder")}, ${e.batch})` : ""
          }`,
        ),
      ];
    case "folder_uploaded":
      return [info(`  Success: uploaded ${e.key}`)];
    case "marker_written":
      return [info(`  ${e.key}: Marker written: ${e.marker}`)];
    case "marker_error":
      return [warn(`  ${e.error}`)];
    default: {
      const line = commonLine(e);
      return line === null ? [] : [line];
    }
  }
}

/** The line saying how an id nothing configured was settled, or null for a configured one. */
function deviceLine(e: Extract<EngineEvent, { event: "device" }>): string | null {
  if (e.source === "config" || e.source === "tracker") return null;
  return describeIdentity({
    id: e.device_id,
    source: e.source as DeviceSource,
    held: e.held,
  }, null);
}
