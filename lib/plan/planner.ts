/**
 * The planner: what the sources found -> what to send. It diffs folders against the
 * tracker, holds back folders still being written or, with `--ready-when`, not complete yet
 * (the settle queue, settle.ts; the readiness glob, ready.ts), builds their rows, and packs
 * rows into batches bounded by count and by exact statement bytes. Batches go to a sink
 * (the committer); a dry run only counts them.
 *
 * @module
 */

import { messageOf } from "../core/errors.ts";
import { buildRow } from "./row.ts";
import { isImageName } from "../source/snapshot.ts";
import {
  type FolderObjectPlan,
  objectsDestination,
  planFolderObjects,
} from "../objects/storage.ts";
import type { FolderSnapshot } from "../source/snapshot.ts";
import type { Run } from "../engine/run.ts";
import { compileReadyGlob, isReady, type NameMatcher } from "./ready.ts";
import type { SettleQueue, SettlingFolder } from "./settle.ts";
import type { ScanDecision } from "../tracker/tracker.ts";
import type { SourceItem } from "../source/sources.ts";
import type { SinkItem } from "../sink/sink.ts";

export { SettleQueue, type SettlingFolder } from "./settle.ts";

/** A folder ready to send: its row, and what the commit needs to record it. */
export interface PlannedItem extends SinkItem {
  snapshot: FolderSnapshot;
  /** The content hash of the row (recorded once acknowledged). */
  contentHash: string;
  /** Bytes the row adds to the statement. */
  bytes: number;
}

/** Rows that go to the server in one statement. */
export interface PlannedBatch {
  items: PlannedItem[];
  /** Statement bytes of the rows. */
  bytes: number;
}

/** Receives finished batches; resolves once the batch is accepted (it may still be in flight). */
export type BatchSink = (batch: PlannedBatch) => Promise<void>;

/** Settings of a {@linkcode Planner}. */
export interface PlannerOptions {
  /** Receives batches; null in a dry run or a scan (nothing is sent). */
  sink: BatchSink | null;
  /** Held-back folders; shared with the engine, which looks at them again when due. */
  settle: SettleQueue;
  /** Waits until `bytes` more may be read into memory (the committer's byte budget). */
  roomFor?: (bytes: number) => Promise<void>;
}

/** A folder item of a source. */
type FolderItem = Extract<SourceItem, { kind: "folder" }>;

/** What planning a group of folders found besides rows to send. */
interface PlanOutcome {
  failures: { path: string; key: string; error: string; snapshot: FolderSnapshot }[];
  /** Folders whose row the server already holds (recorded, not sent). */
  adopted: { path: string; fingerprint: string; contentHash: string }[];
}

/**
 * The content hash the server is known to hold for a folder, when there is one to compare:
 * with `--verify`, the server's own; else, for a folder whose files changed, the hash last
 * uploaded. Equal to the built row's, the folder's files changed but not what its row
 * carries (a touch, a copy resetting mtimes, a lost tracker rebuilt), so nothing is sent
 * and no marker rewritten. Not with `--images-to` (see the caller): an image rewritten at
 * the same size changes no row, yet its object must be replaced.
 */
function heldContent(d: ScanDecision): string | null {
  if (d.remoteContent !== undefined) return d.remoteContent;
  return d.change === "changed" ? d.uploadedContent : null;
}

/** Stats files larger than this wait for room in the byte budget before they are read. */
const LARGE_STATS_BYTES = 1024 * 1024;

/** Turns source items into batches. */
export class Planner {
  readonly #run: Run;
  readonly #options: PlannerOptions;
  #items: PlannedItem[] = [];
  #bytes = 0;
  #keys = new Set<string>();
  /** Keys of folders keyed by name alone in this run, and the folder each belongs to. */
  #strictKeys = new Map<string, string>();
  /** The readiness rule (`--ready-when`), or null. */
  readonly #ready: NameMatcher | null;

  constructor(run: Run, options: PlannerOptions) {
    this.#run = run;
    this.#options = options;
    this.#ready = run.config.readyWhen === "" ? null : compileReadyGlob(run.config.readyWhen);
  }

  /**
   * Takes a chunk of source items: problems and rejected paths are recorded, folders are
   * diffed (in one tracker transaction per base), settling ones are queued, the rest are
   * built and packed. `revisit` marks folders the settle queue looked at again (already
   * counted once).
   */
  async take(items: readonly SourceItem[], revisit = false): Promise<void> {
    const run = this.#run;
    // A folder may come twice in one chunk (named by a file-system event and found again by
    // the walk of a new tree, or by two overlapping walks): the later sighting stands.
    const byPath = new Map<string, FolderItem>();
    const problems: { path: string; reason: string; base: string | null }[] = [];
    const rejected: { path: string; key: string | null; error: string }[] = [];
    const skipped: { path: string; reason: string; base: string | null }[] = [];
    let passEnd: Extract<SourceItem, { kind: "pass_end" }> | undefined;
    for (const item of items) {
      switch (item.kind) {
        case "folder":
          if (!byPath.delete(item.snapshot.path) && !revisit) run.counters.scanned++;
          byPath.set(item.snapshot.path, this.#withActivity(item));
          break;
        case "problem":
          run.counters.unreadable++;
          run.emit({ event: "problem", path: item.path, reason: item.reason });
          problems.push(item);
          break;
        case "rejected":
          rejected.push(item);
          break;
        case "skipped":
          run.counters.skipped++;
          skipped.push(item);
          break;
        case "pass_start":
          if (run.records) run.tracker.beginPass(item.base, run.runId);
          break;
        case "pass_end":
          passEnd = item; // after the folders taken with it
          break;
      }
    }
    if (problems.length > 0 && run.records) {
      for (const base of new Set(problems.map((p) => p.base))) {
        run.tracker.recordProblems(base, run.runId, problems.filter((p) => p.base === base));
      }
    }
    this.#reportSkipped(skipped);
    await run.failFolders(rejected);
    const folders = new Map<string | null, FolderItem[]>();
    for (const item of byPath.values()) {
      const group = folders.get(item.base);
      if (group) group.push(item);
      else folders.set(item.base, [item]);
    }
    for (const [base, group] of folders) {
      const decisions = this.#decide(base, group.map((g) => g.snapshot));
      if (!revisit && run.records) run.counters.recorded += group.length;
      await this.#plan(group, decisions, revisit);
      if (run.stopping) return;
    }
    if (passEnd) await this.#endPass(passEnd.complete);
  }

  /** Reports links the walk did not follow: each once (the tracker remembers them). */
  #reportSkipped(skipped: readonly { path: string; reason: string; base: string | null }[]): void {
    const run = this.#run;
    if (skipped.length === 0) return;
    let fresh: readonly { path: string; reason: string }[] = skipped;
    if (run.records) {
      fresh = [];
      for (const base of new Set(skipped.map((s) => s.base))) {
        fresh = fresh.concat(
          run.tracker.recordSkipped(base, run.runId, skipped.filter((s) => s.base === base)),
        );
      }
    }
    for (const s of fresh) run.emit({ event: "skipped", path: s.path, reason: s.reason });
  }

  /**
   * The item with the time file-system events last named its folder, when that is later,
   * and `ready: false` when the readiness rule waits for a file it does not hold (marker
   * files never count).
   */
  #withActivity(item: FolderItem): FolderItem {
    const at = this.#run.activity.lastAt(item.snapshot.path);
    const later = at !== undefined && at > item.snapshot.newestMtimeMs;
    let ready = true;
    if (this.#ready) {
      const markers = this.#run.markerNames();
      ready = isReady(item.snapshot.files.filter((f) => !markers.has(f.name)), this.#ready);
    }
    if (!later && ready) return item;
    const snapshot = { ...item.snapshot };
    if (later) snapshot.changedAtMs = at;
    if (!ready) snapshot.ready = false;
    return { ...item, snapshot };
  }

  /** Sends the batch being filled, if any. */
  async flush(): Promise<void> {
    if (this.#items.length === 0) return;
    const batch: PlannedBatch = { items: this.#items, bytes: this.#bytes };
    this.#items = [];
    this.#bytes = 0;
    this.#keys = new Set();
    await this.#options.sink?.(batch);
  }

  /** Leaves folders that never settled: counted, and failed when they were named on purpose. */
  async giveUp(folders: readonly SettlingFolder[]): Promise<void> {
    const named = folders.filter((f) => f.force);
    const config = this.#run.config;
    this.#run.counters.settling += folders.length - named.length;
    await this.#run.failFolders(named.map((f) => ({
      path: f.path,
      key: f.key,
      error: f.waiting
        ? `Not complete yet: it holds no file matching --ready-when ${
          JSON.stringify(config.readyWhen)
        } and changed less than ${config.readyTimeoutSeconds} s ago; upload it again once it is complete`
        : `Still being written: its newest file changed less than ${config.minAgeSeconds} s ago; upload it again once it is complete`,
    })));
  }

  #decide(base: string | null, snapshots: FolderSnapshot[]): ScanDecision[] {
    const run = this.#run;
    const options = {
      nowMs: run.now(),
      minAgeMs: run.config.minAgeSeconds * 1000,
      maxRetries: run.config.maxRetries,
      readyTimeoutMs: run.config.readyTimeoutSeconds * 1000,
    };
    return run.tracker.applyScan(snapshots, run.runId, base, {
      ...options,
      dryRun: !run.traits.records,
      remote: run.verifying,
    });
  }

  async #plan(
    group: Extract<SourceItem, { kind: "folder" }>[],
    decisions: ScanDecision[],
    revisit: boolean,
  ): Promise<void> {
    const run = this.#run;
    const outcome: PlanOutcome = { failures: [], adopted: [] };
    for (let i = 0; i < decisions.length; i++) {
      const d = decisions[i];
      if (!revisit) {
        if (d.change === "new") run.counters.new++;
        else if (d.change === "changed") run.counters.changed++;
        else run.counters.unchanged++;
      }
      if (d.settling) this.#holdBack(d.snapshot, group[i]);
      else if (this.#wanted(d, group[i], outcome)) await this.#prepare(d, group[i], outcome);
      if (run.stopping) break;
    }
    if (outcome.adopted.length > 0) {
      run.counters.adopted += outcome.adopted.length;
      if (run.records) run.tracker.recordAdopted(outcome.adopted, new Date(run.now()));
    }
    await run.failFolders(outcome.failures);
  }

  /**
   * A folder still being written: queued to be looked at again once it has settled (one that
   * is not ready: once its ready timeout is over; a file-system event brings it back sooner).
   */
  #holdBack(snap: FolderSnapshot, source: FolderItem): void {
    const run = this.#run;
    const waiting = snap.ready === false;
    const holdMs = waiting
      ? Math.max(run.config.minAgeSeconds, run.config.readyTimeoutSeconds) * 1000
      : run.config.minAgeSeconds * 1000;
    const queued = run.traits.reads && this.#options.settle.add({
      path: snap.path,
      key: snap.key,
      base: source.base,
      force: source.force,
      strict: source.strict,
      ...(waiting ? { waiting } : {}),
      dueAt: Math.max(snap.newestMtimeMs, snap.changedAtMs ?? 0) + holdMs + 50,
    });
    if (!queued) run.counters.settling++;
  }

  /**
   * Whether a settled folder goes on to be read: the diff says so, it was named on
   * purpose, or (`--objects-to`) its images and reports were never stored there. A
   * name-only key taken by another folder in this run fails instead.
   */
  #wanted(d: ScanDecision, source: FolderItem, outcome: PlanOutcome): boolean {
    const run = this.#run;
    const snap = d.snapshot;
    const stored = [...run.config.imageExtensions, ...run.config.reportExtensions];
    const needsObjects = run.objects !== null &&
      d.objectsDest !==
        objectsDestination(run.objects.store.display, run.config.reportExtensions) &&
      snap.files.some((f) => isImageName(f.name, stored));
    if (!(d.upload || source.force || needsObjects) || !run.traits.reads) return false;
    if (!source.force && run.sending.get(snap.path) === snap.fingerprint) return false;
    if (source.strict) {
      const holder = this.#strictKeys.get(snap.key);
      if (holder !== undefined && holder !== snap.path) {
        outcome.failures.push({
          path: snap.path,
          key: snap.key,
          snapshot: snap,
          error: `Key ${snap.key} is also the key of ${holder} in this run: two folders of ` +
            `the same name would share one row. Upload them with --base`,
        });
        return false;
      }
      this.#strictKeys.set(snap.key, snap.path);
    }
    run.counters.queued++;
    return true;
  }

  /**
   * Reads a folder's stats.json and builds its row; then adopts it (the server already
   * holds this content), counts it (dry run), or packs it into the batch being filled.
   */
  async #prepare(d: ScanDecision, source: FolderItem, outcome: PlanOutcome): Promise<void> {
    const run = this.#run;
    const snap = d.snapshot;
    const statsSize = snap.files.find((f) => f.name === run.config.statsFileName)?.size ?? 0;
    if (statsSize > LARGE_STATS_BYTES) {
      // Bound what is parsed at once: a large file waits for the rows in flight to go.
      await this.flush();
      await this.#options.roomFor?.(statsSize * 2);
    }
    if (run.folderEvents) this.#found(snap);
    let built;
    let plan: FolderObjectPlan | undefined;
    try {
      plan = run.objects ? this.#planObjects(snap) : undefined;
      built = buildRow(snap, run.config, new Date(run.now()), {
        strict: source.strict,
        incomplete: snap.ready === false,
        ...(plan ? this.#objectFields(plan) : {}),
      });
    } catch (error) {
      outcome.failures.push({
        path: snap.path,
        key: snap.key,
        error: messageOf(error),
        snapshot: snap,
      });
      return;
    }
    const contentHash = built.row.metadata.content_hash as string;
    if (run.folderEvents) {
      run.emit({
        event: "folder_read",
        path: snap.path,
        key: snap.key,
        stats: built.row.test_results !== null,
        test_status: built.row.test_status,
      });
    }
    if (!source.force && run.objects === null && heldContent(d) === contentHash) {
      outcome.adopted.push({ path: snap.path, fingerprint: snap.fingerprint, contentHash });
      return;
    }
    if (!run.traits.sends) {
      run.counters.bytes += built.bytes;
      if (plan) this.#countObjects(snap, plan);
      return;
    }
    await this.#pack({
      path: snap.path,
      // The parsed stats are not needed once the JSON text is built.
      row: { ...built.row, test_results: null },
      json: built.json,
      rawSpan: built.rawSpan,
      bytes: built.bytes,
      snapshot: snap,
      contentHash,
    });
  }

  async #pack(item: PlannedItem): Promise<void> {
    const config = this.#run.config;
    if (
      this.#items.length > 0 &&
      (this.#items.length >= config.batchSize || this.#bytes + item.bytes > config.maxBatchBytes ||
        this.#keys.has(item.row.folder_key))
    ) {
      await this.flush();
    }
    this.#items.push(item);
    this.#run.sending.set(item.path, item.snapshot.fingerprint);
    this.#bytes += item.bytes;
    this.#keys.add(item.row.folder_key);
    if (this.#items.length >= config.batchSize || this.#bytes >= config.maxBatchBytes) {
      await this.flush();
    }
  }

  /** The object keys of a folder's images and reports (`--objects-to`). */
  #planObjects(snap: FolderSnapshot): FolderObjectPlan {
    const objects = this.#run.objects!;
    return planFolderObjects(objects.store, snap, {
      deviceId: objects.deviceId,
      imageExtensions: this.#run.config.imageExtensions,
      reportExtensions: this.#run.config.reportExtensions,
    });
  }

  /**
   * What a row says of its stored objects: the images' keys, their URLs (`--images-as
   * urls`) and the reports' URLs, each in the `--url-form`.
   */
  #objectFields(plan: FolderObjectPlan) {
    const { store } = this.#run.objects!;
    const form = this.#run.config.urlForm;
    const images = plan.objects.filter((o) => o.kind === "image");
    const reports = plan.objects.filter((o) => o.kind === "report");
    return {
      imageObjects: images.map((o) => o.key),
      reportUrls: reports.map((o) => store.urlFor(o.key, form)),
      ...(this.#run.config.imagesAs === "urls"
        ? { imageUrls: images.map((o) => store.urlFor(o.key, form)) }
        : {}),
    };
  }

  /** A dry run's count of the images that would be put (those not recorded as stored). */
  #countObjects(snap: FolderSnapshot, plan: FolderObjectPlan): void {
    const { counters, tracker } = this.#run;
    for (const o of plan.objects) {
      if (tracker.objectKnown(snap.path, o.name, o.key, o.size)) counters.objectsSkipped++;
      else {
        counters.objects++;
        counters.objectBytes += o.size;
      }
    }
  }

  #found(snap: FolderSnapshot): void {
    const config = this.#run.config;
    this.#run.emit({
      event: "folder_found",
      path: snap.path,
      key: snap.key,
      images: snap.files.filter((f) => isImageName(f.name, config.imageExtensions)).length,
      stats: snap.files.some((f) => f.name === config.statsFileName),
      reports: snap.files.filter((f) =>
        !isImageName(f.name, config.imageExtensions) &&
        isImageName(f.name, config.reportExtensions)
      ).length,
    });
  }

  async #endPass(complete: boolean): Promise<void> {
    const run = this.#run;
    if (!run.records) return;
    if (!complete || run.stopping) {
      run.tracker.abandonPass();
      return;
    }
    await this.flush();
    const missing = run.tracker.endPass(new Date(run.now()));
    run.completedPass = true;
    // The whole tree was seen: markers earlier runs could not write are written now.
    await run.catchUpMarkers();
    run.counters.missing = missing.count;
    if (missing.count > 0) {
      run.emit({ event: "missing", count: missing.count, sample: missing.sample });
    }
  }
}
