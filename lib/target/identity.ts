/**
 * This device's identity when nothing configures it: a device never forks into two.
 *
 * The id comes from `DEVICE_ID`, else the tracking database. A new tracker (a new SD card)
 * has none: before anything is written, {@linkcode resolveIdentity} walks the tree and
 * takes the id back from the folders' markers (`success.json` records it; the original
 * tools' `upload_success.json` / `upload_failed.json` record it in their storage paths),
 * and asks the server which devices hold rows of the tree's folders. When rows of these
 * folders are held under another id and none under the one the run would use, the run
 * stops (exit 2) naming that id and the `DEVICE_ID=...` to set, or takes it over when told
 * to (`--adopt-device`). {@linkcode decideIdentity} is that rule, pure.
 *
 * @module
 */

import { join } from "node:path";
import { UploadError } from "../core/errors.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import type { SchemaInspection } from "../sink/postgres/schema.ts";
import { buildDeviceCountQuery, parseDeviceCounts } from "../sink/postgres/remote.ts";

/** Where a run's device id came from. */
export type DeviceSource =
  /** `DEVICE_ID` (or config.ts). */
  | "config"
  /** The tracking database. */
  | "tracker"
  /** A folder's success.json, or the original tools' markers. */
  | "markers"
  /** Made from this machine's id: nothing else knew one. */
  | "machine"
  /** Another id the server holds the tree's rows under, taken over (`--adopt-device`). */
  | "adopted";

/** UUID, any case. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** What the server's rows of some folders say about the candidate id. */
export type IdentityDecision =
  /** The candidate holds some of them: it is this device's id. */
  | { kind: "confirmed" }
  /** Nobody holds them (new folders): nothing learned. */
  | { kind: "unknown" }
  /** Other ids hold them and the candidate none: stop, naming them (most rows first). */
  | { kind: "conflict"; others: [string, number][] }
  /** One other id holds them, and the run may take it over. */
  | { kind: "adopt"; id: string; rows: number };

/**
 * The rule: rows of the tree's folders under the candidate confirm it; rows only under
 * other ids are a fork about to happen (a conflict), unless the run may adopt an id and
 * exactly one other holds them.
 *
 * @example
 * ```ts
 * decideIdentity("a", new Map([["b", 33]]), false); // { kind: "conflict", others: [["b", 33]] }
 * decideIdentity("a", new Map([["a", 1], ["b", 33]]), false); // { kind: "confirmed" }
 * ```
 */
export function decideIdentity(
  candidate: string,
  counts: ReadonlyMap<string, number>,
  adopt: boolean,
): IdentityDecision {
  const lower = candidate.toLowerCase();
  let ours = 0;
  const others: [string, number][] = [];
  for (const [id, n] of counts) {
    if (id.toLowerCase() === lower) ours += n;
    else if (n > 0) others.push([id, n]);
  }
  if (ours > 0) return { kind: "confirmed" };
  if (others.length === 0) return { kind: "unknown" };
  others.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  if (adopt && others.length === 1) return { kind: "adopt", id: others[0][0], rows: others[0][1] };
  return { kind: "conflict", others };
}

/** Marker names the probe reads. */
export interface IdentityMarkers {
  /** This tool's success marker (`success.json`), which records `device_id`. */
  successMarker: string;
  /** The original tools' markers, whose storage paths hold the device id. */
  legacyMarkers: readonly string[];
}

/** Parses a marker file; undefined when it cannot be read or is not JSON. */
function readMarker(path: string): unknown {
  try {
    return JSON.parse(Deno.readTextFileSync(path));
  } catch (_error) {
    // A marker that vanished or is not JSON says nothing about the device: look elsewhere.
    return undefined;
  }
}

/** The device id in an original tool's marker: `<device>/<folder>/<file>` storage paths. */
function legacyDevice(marker: unknown, folder: string): string | undefined {
  const upload = (marker as { image_upload?: { uploaded_images?: unknown } })?.image_upload;
  const images = upload?.uploaded_images;
  if (!Array.isArray(images)) return undefined;
  for (const image of images) {
    const path = (image as { storage_path?: unknown })?.storage_path;
    if (typeof path !== "string") continue;
    const parts = path.split("/");
    if (parts.length >= 3 && UUID.test(parts[0]) && parts[1] === folder) {
      return parts[0].toLowerCase();
    }
  }
  return undefined;
}

/**
 * The device id a folder's markers record: `device_id` of its success.json, else the
 * device in the storage paths of the original tools' markers. Reads only markers the
 * snapshot lists.
 */
export function markerDevice(
  snapshot: FolderSnapshot,
  markers: IdentityMarkers,
): string | undefined {
  const names = new Set(snapshot.files.map((f) => f.name));
  if (names.has(markers.successMarker)) {
    const id = (readMarker(join(snapshot.path, markers.successMarker)) as { device_id?: unknown })
      ?.device_id;
    if (typeof id === "string" && UUID.test(id)) return id.toLowerCase();
  }
  for (const name of markers.legacyMarkers) {
    if (!names.has(name)) continue;
    const id = legacyDevice(readMarker(join(snapshot.path, name)), snapshot.name);
    if (id) return id;
  }
  return undefined;
}

/** What {@linkcode resolveIdentity} needs to know of the upload table. */
export interface IdentityTable {
  /** The table as configured (for SQL and messages). */
  name: string;
  /** It exists and has a `device_id` and a `folder_name` column: its rows can be asked about. */
  queryable: boolean;
  /** It has `folder_key` (else rows are matched by `folder_name`, the original shape). */
  hasFolderKey: boolean;
}

/** Settings of {@linkcode resolveIdentity}. */
export interface ResolveIdentityOptions extends IdentityMarkers {
  /** The id the run would use (made from the machine's id). */
  candidate: string;
  /** The tree's folders, in chunks, as the walk finds them. */
  folders: AsyncIterable<FolderSnapshot[]>;
  /** Take over the one other id that holds the tree's rows (`--adopt-device`). */
  adopt: boolean;
  /** The tree, for messages. */
  base: string;
  /** Folders asked about per statement. Default 5,000. */
  chunk?: number;
}

/** The id a run uses, and why. */
export interface ResolvedIdentity {
  id: string;
  source: DeviceSource;
  /** Rows of the tree under an adopted id. */
  held?: number;
}

/**
 * Walks the tree (chunk by chunk) for the device id its markers record and asks the server
 * who holds rows of its folders, until one of them settles the id: rows under the
 * candidate (the markers' id, else the machine's) confirm it; rows only under other ids
 * stop the run, or with `adopt` take over the one other id. A tree whose folders are
 * nowhere on the server keeps the candidate.
 *
 * @param query runs one statement and returns its rows (errors are thrown).
 * @throws UploadError `config` (exit 2) on a conflict, naming the ids and the `DEVICE_ID` to set.
 */
export async function resolveIdentity(
  query: (sql: string) => Promise<string[]>,
  table: IdentityTable,
  options: ResolveIdentityOptions,
): Promise<ResolvedIdentity> {
  let id = options.candidate;
  let source: DeviceSource = "machine";
  let pending: FolderSnapshot[] = [];
  const size = options.chunk ?? 5000;
  const ask = async (folders: FolderSnapshot[]): Promise<ResolvedIdentity | null> => {
    if (!table.queryable || folders.length === 0) return null;
    const counts = parseDeviceCounts(
      await query(buildDeviceCountQuery({
        table: table.name,
        keys: folders.map((f) => f.key),
        hasFolderKey: table.hasFolderKey,
      })),
    );
    const decision = decideIdentity(id, counts, options.adopt);
    if (decision.kind === "confirmed") return { id, source };
    if (decision.kind === "adopt") {
      return { id: decision.id, source: "adopted", held: decision.rows };
    }
    if (decision.kind === "conflict") {
      throw conflictError(id, source, decision.others, table, options);
    }
    return null;
  };
  for await (const chunk of options.folders) {
    for (const folder of chunk) {
      if (source === "machine") {
        const marked = markerDevice(folder, options);
        if (marked) {
          id = marked;
          source = "markers";
        }
      }
      pending.push(folder);
      if (pending.length >= size) {
        const settled = await ask(pending);
        if (settled) return settled;
        pending = [];
      }
    }
  }
  return await ask(pending) ?? { id, source };
}

/** The refusal of a run that would store the tree's folders a second time. */
function conflictError(
  candidate: string,
  source: DeviceSource,
  others: [string, number][],
  table: IdentityTable,
  options: ResolveIdentityOptions,
): UploadError {
  const where = source === "markers"
    ? `${candidate}, the id the folders' markers record`
    : `${candidate}, the id made from this machine's id`;
  const held = others.map(([id, n]) => `${id} (${n} folders)`).join(", ");
  const one = others.length === 1;
  const message = one
    ? `${others[0][1]} folders of ${options.base} already have rows in ${table.name} under ` +
      `device ${others[0][0]} and none under ${where}: uploading would store them twice`
    : `Folders of ${options.base} already have rows in ${table.name} under other devices ` +
      `(${held}) and none under ${where}: uploading would store them again`;
  const hint = one
    ? `No DEVICE_ID is set and the tracking database has no device id (a new one?). If this is ` +
      `that device, set DEVICE_ID=${others[0][0]} (or let one run of \`deno task upload ` +
      `--adopt-device\` take it over); if it is another device, set DEVICE_ID=${candidate} ` +
      `to give it its own id`
    : `No DEVICE_ID is set and the tracking database has no device id (a new one?). Set ` +
      `DEVICE_ID to this device's id: ${
        others.map(([id]) => `DEVICE_ID=${id}`).join(", ")
      }, or DEVICE_ID=${candidate} to give it its own (--adopt-device takes an id over only ` +
      `when one other device holds the folders)`;
  return new UploadError("config", `Cannot tell which device this is: ${message}`, {
    subject: "device",
    hint,
  });
}

/** A description of where the id came from, for the run's first lines. */
export function describeIdentity(identity: ResolvedIdentity, trackerPath: string | null): string {
  const tracker = trackerPath ? ` (the tracking database ${trackerPath} had none)` : "";
  switch (identity.source) {
    case "markers":
      return `Device id ${identity.id} taken from the folders' markers (success.json, or the ` +
        `original tools' upload_success.json / upload_failed.json)${tracker}`;
    case "adopted":
      return `Device id ${identity.id} adopted (--adopt-device): the server holds ` +
        `${identity.held ?? 0} of these folders under it`;
    case "machine":
      return `Device id ${identity.id} made from this machine's id: no DEVICE_ID, no device ` +
        `id in the folders' markers${tracker}, and no rows of these folders under another id`;
    default:
      return `Device id ${identity.id}`;
  }
}

/** How a run settles an id nothing configured: the tree to probe, and what it may do. */
export interface IdentitySetup extends IdentityMarkers {
  /** The tree's folders, in chunks (a fresh walk on each call). */
  folders: () => AsyncIterable<FolderSnapshot[]>;
  /** Take over the one other id that holds the tree's rows (`--adopt-device`). */
  adopt: boolean;
  /** The tree, for messages. */
  base: string;
}

/** What {@linkcode resolveIdentity} may ask of the upload table, from the schema inspection. */
export function identityTable(inspection: SchemaInspection, table: string): IdentityTable {
  const rel = inspection.table;
  return {
    name: table,
    queryable: rel !== null && rel.columns.device_id !== undefined &&
      rel.columns.folder_name !== undefined && rel.privileges.select,
    hasFolderKey: rel?.columns.folder_key !== undefined,
  };
}
