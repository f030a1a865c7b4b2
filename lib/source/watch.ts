/**
 * The source of continuous mode (`deno task upload BASE --watch`, run by
 * lib/engine/watch.ts): the usual pass over the base, then the folders file-system events
 * name as they are written, and a full rescan every `--rescan-every` seconds that catches
 * whatever events missed (an overflowing event queue, a network mount, a USB disk
 * remounted, a watch limit).
 *
 * @module
 */

import { basename, dirname, relative, sep as SEPARATOR } from "node:path";
import { messageOf } from "../core/errors.ts";
import { describeFsError, isUploadUnit, snapshotFolder } from "./snapshot.ts";
import { scanFolders } from "./walk.ts";
import {
  type ActivityLog,
  type FolderSource,
  fromScan,
  type SourceContext,
  type SourceItem,
  treeSource,
  type WalkConfig,
} from "./sources.ts";

/** Settings of {@linkcode watchSource}. */
export interface WatchSourceOptions {
  /** Time between full passes (ms). */
  rescanEveryMs: number;
  /** Quiet time (ms) after a file-system event before its folders are looked at. */
  debounceMs: number;
  /** Use file-system events (false: rescans only). */
  fileEvents: boolean;
}

/**
 * The source of watch mode: a full pass, then folders named by file-system events, and a
 * full pass again every `rescanEveryMs`. Never ends by itself.
 */
export function watchSource(
  base: string,
  walk: WalkConfig,
  options: WatchSourceOptions,
): FolderSource {
  return async function* (context) {
    const changes = new Changes(base, walk, context.activity);
    const watching = startEvents(changes, base, options, context);
    const onAbort = () => {
      changes.close();
    };
    context.signal.addEventListener("abort", onAbort, { once: true });
    // The first pass runs at once.
    const pass: PassState = { nextRescan: 0, baseId: identity(base), gone: false };
    try {
      while (!context.signal.aborted) {
        if (Date.now() >= pass.nextRescan) {
          yield* rescan(base, walk, { options, context, changes, watching, pass });
          continue;
        }
        await changes.wait(pass.nextRescan - Date.now(), options.debounceMs);
        if (context.signal.aborted) break;
        if (changes.lost) {
          // The event queue overflowed: only a rescan knows what changed.
          pass.nextRescan = 0;
          continue;
        }
        const items = await changes.take();
        if (items.length > 0) yield items;
        if (changes.failed && changes.failure) {
          context.emit({
            event: "warning",
            message: `File-system events stopped for ${base} (${changes.failure}); ` +
              `carrying on with the rescan every ${options.rescanEveryMs / 1000} s`,
          });
          changes.failed = false;
        }
      }
    } finally {
      context.signal.removeEventListener("abort", onAbort);
      changes.close();
    }
  };
}

/** When the next full pass is due, and what the last one found of the base. */
interface PassState {
  nextRescan: number;
  /** The base's identity (device and inode) at the last pass. */
  baseId: string;
  /** The base was gone at the last pass (reported once). */
  gone: boolean;
}

/**
 * Starts the file-system events (when asked for) and says how the base is watched.
 *
 * @returns whether events are coming.
 */
function startEvents(
  changes: Changes,
  base: string,
  options: WatchSourceOptions,
  context: SourceContext,
): boolean {
  const events = options.fileEvents ? changes.watch() : null;
  if (options.fileEvents && events === null) {
    context.emit({
      event: "warning",
      message: `File-system events are not available for ${base} (${changes.failure}); ` +
        `new folders are found by the rescan every ${options.rescanEveryMs / 1000} s`,
    });
  }
  context.emit({
    event: "watching",
    base,
    rescan_every_s: options.rescanEveryMs / 1000,
    file_events: events !== null,
  });
  return events !== null;
}

/**
 * One full pass over the base, when it is there: a base gone (a disk unmounted with its
 * mount point) is waited for rather than ending the watch; a base replaced at its path (a
 * disk remounted) is watched anew.
 */
async function* rescan(
  base: string,
  walk: WalkConfig,
  at: {
    options: WatchSourceOptions;
    context: SourceContext;
    changes: Changes;
    watching: boolean;
    pass: PassState;
  },
): AsyncGenerator<SourceItem[]> {
  const { options, context, changes, pass } = at;
  changes.clear(); // a full pass looks at everything
  pass.nextRescan = Date.now() + options.rescanEveryMs;
  const id = identity(base);
  if (id === "") {
    if (!pass.gone) {
      context.emit({
        event: "warning",
        message: `Base path ${base} is gone; looking for it again every ` +
          `${options.rescanEveryMs / 1000} s`,
      });
    }
    pass.gone = true;
    return;
  }
  pass.gone = false;
  if (at.watching && id !== pass.baseId && changes.rewatch()) {
    context.emit({ event: "warning", message: `${base} was replaced; watching it anew` });
  }
  pass.baseId = id;
  let baseIsUnit = false;
  for await (const chunk of treeSource(base, walk)(context)) {
    baseIsUnit ||= chunk.some((i) => i.kind === "folder" && i.snapshot.path === base);
    yield chunk;
  }
  changes.baseIsUnit = baseIsUnit;
  pass.nextRescan = Date.now() + options.rescanEveryMs;
}

/** Folders file-system events named since they were last taken. */
class Changes {
  readonly #base: string;
  readonly #walk: WalkConfig;
  readonly #activity: ActivityLog | undefined;
  #watcher: Deno.FsWatcher | null = null;
  /** Folders whose files changed: looked at alone. */
  #folders = new Set<string>();
  /** Folders that appeared (created or moved in): walked with what is below them. */
  #trees = new Set<string>();
  #wake: (() => void) | null = null;
  #lastEvent = 0;
  /** Events were lost (the queue overflowed): a rescan is needed. */
  lost = false;
  /** The watcher failed after it started. */
  failed = false;
  /** Why events are not (or no longer) available. */
  failure = "";
  /** The base is itself an upload unit: keys below it start with its name (as the walk keys them). */
  baseIsUnit = false;

  constructor(base: string, walk: WalkConfig, activity?: ActivityLog) {
    this.#base = base;
    this.#walk = walk;
    this.#activity = activity;
  }

  /** Starts watching; null when the platform refuses (a watch limit, a file system without events). */
  /** Stops the watch and starts a new one on the base (which was replaced). */
  rewatch(): boolean {
    try {
      this.#watcher?.close();
    } catch (_error) {
      // Already closed with the directory it watched.
    }
    this.#watcher = null;
    return this.watch() !== null;
  }

  watch(): Deno.FsWatcher | null {
    try {
      this.#watcher = Deno.watchFs(this.#base, { recursive: true });
    } catch (error) {
      this.failure = describeWatchError(error);
      return null;
    }
    this.#pump(this.#watcher);
    return this.#watcher;
  }

  async #pump(watcher: Deno.FsWatcher): Promise<void> {
    try {
      for await (const event of watcher) {
        if (event.flag === "rescan") this.lost = true;
        for (const path of event.paths) this.#note(path, event.kind);
        this.#lastEvent = Date.now();
        this.#notify();
      }
    } catch (error) {
      // The watcher broke (a watch limit reached while the tree grew, a disk removed):
      // the rescans carry on alone.
      this.failed = true;
      this.failure = describeWatchError(error);
      this.#notify();
    }
  }

  #note(path: string, kind: Deno.FsEvent["kind"]): void {
    const rel = relative(this.#base, path);
    if (rel.startsWith("..")) return;
    const parts = rel === "" ? [] : rel.split(SEPARATOR);
    // Hidden entries are never uploaded (marker temp files among them), nor are the
    // project's own markers a change.
    if (parts.some((p) => p.startsWith("."))) return;
    if (this.#walk.markerNames.has(basename(path))) return;
    let info: Deno.FileInfo | null = null;
    try {
      info = Deno.lstatSync(path);
    } catch (_error) {
      // Gone again (a temp file renamed, a folder removed): its parent changed.
    }
    const now = Date.now();
    if (info?.isDirectory) {
      // A directory created or moved in (a tree written elsewhere and published with mv
      // arrives as one "rename") is walked with everything below it.
      if (kind === "create" || kind === "rename" || kind === "other" || kind === "any") {
        this.#trees.add(path);
      } else this.#folders.add(path);
      this.#activity?.note(path, now);
    } else if (parts.length > 0) {
      this.#folders.add(dirname(path));
      this.#activity?.note(dirname(path), now);
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /**
   * Waits until events came and then `debounceMs` passed without more, or `maxMs`
   * passed, or {@linkcode close}.
   */
  async wait(maxMs: number, debounceMs: number): Promise<void> {
    const until = Date.now() + Math.max(0, maxMs);
    for (;;) {
      const pending = this.#folders.size + this.#trees.size > 0 || this.lost || this.failed;
      const now = Date.now();
      if (now >= until) return;
      let ms = until - now;
      if (pending) {
        const quietFor = now - this.#lastEvent;
        if (quietFor >= debounceMs) return;
        ms = Math.min(ms, debounceMs - quietFor);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#wake = null;
          resolve();
        }, ms);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      if (this.#closed) return;
    }
  }

  #closed = false;

  /**
   * What the events named, as source items (folders snapshotted, new trees walked), each
   * folder once: a tree inside another new tree (`mkdir -p a/b/c`, `cp -a` of a nested
   * tree: every level is created) is walked with the outermost one, and a folder inside a
   * new tree comes with the tree's walk.
   */
  async take(): Promise<SourceItem[]> {
    const items: SourceItem[] = [];
    const trees = outermost(this.#trees);
    const folders = [...this.#folders].filter((f) => !trees.some((t) => isWithin(f, t)));
    this.#trees.clear();
    this.#folders.clear();
    for (const tree of trees) await this.#walkInto(tree, items, true);
    for (const folder of folders) await this.#walkInto(folder, items, false);
    return items;
  }

  /** Snapshots `dir` (and, for a new tree, every folder below it), keyed as the walk keys them. */
  async #walkInto(dir: string, items: SourceItem[], below: boolean): Promise<void> {
    if (!below) {
      const found = snapshotFolder(dir, { ...this.#walk, key: this.#key(dir) });
      // A folder removed since the event is reported missing by a later full pass.
      if (found.kind === "folder" && isUploadUnit(found.snapshot, this.#walk)) {
        items.push(fromScan(found, this.#base));
      }
      return;
    }
    try {
      if (!Deno.lstatSync(dir).isDirectory) return;
      for await (const found of scanFolders(dir, this.#walk)) {
        if (found.kind === "folder") {
          const snapshot = { ...found.snapshot, key: this.#key(found.snapshot.path) };
          items.push(fromScan({ kind: "folder", snapshot }, this.#base));
        } else {
          items.push(fromScan(found, this.#base));
        }
      }
    } catch (error) {
      // Removed since the event (a temporary directory renamed away): nothing to take.
      if (error instanceof Deno.errors.NotFound) return;
      items.push(fromScan({
        kind: "problem",
        problem: { path: dir, reason: describeFsError(error) },
      }, this.#base));
    }
  }

  /** The key the walk of the base gives `path`. */
  #key(path: string): string {
    const rel = relative(this.#base, path).split(SEPARATOR).join("/");
    if (rel === "") return basename(this.#base);
    return this.baseIsUnit ? `${basename(this.#base)}/${rel}` : rel;
  }

  /** Forgets pending events (a full pass is about to look at everything). */
  clear(): void {
    this.#folders.clear();
    this.#trees.clear();
    this.lost = false;
  }

  /** Stops watching and wakes a waiter. */
  close(): void {
    this.#closed = true;
    if (this.#watcher) {
      try {
        this.#watcher.close();
      } catch (_error) {
        // Already closed: nothing left to release.
      }
      this.#watcher = null;
    }
    this.#notify();
  }
}

/** The base's device and inode, to notice it was replaced at its path; "" when unreadable. */
function identity(path: string): string {
  try {
    const info = Deno.statSync(path);
    return `${info.dev}:${info.ino}`;
  } catch (_error) {
    return ""; // gone for now: the walk reports it
  }
}

/** The directories of `dirs` that lie inside none of the others, in name order. */
function outermost(dirs: Iterable<string>): string[] {
  const out: string[] = [];
  // Sorted, a directory comes right before what lies below it ("a" < "a/b" < "a/b/c" <
  // "a0"), so comparing with the last one kept is enough.
  for (const dir of [...dirs].sort(compareSeparatorFirst)) {
    const kept = out.at(-1);
    if (kept === undefined || !isWithin(dir, kept)) out.push(dir);
  }
  return out;
}

/** Orders paths so that the separator sorts before every other character. */
function compareSeparatorFirst(a: string, b: string): number {
  const x = a.replaceAll(SEPARATOR, "\u0000");
  const y = b.replaceAll(SEPARATOR, "\u0000");
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Whether `path` is `dir` or lies below it. */
function isWithin(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir + SEPARATOR);
}

/** Why file-system events cannot be had, in words. */
function describeWatchError(error: unknown): string {
  const message = messageOf(error);
  if (/os error 28|no space left|limit/i.test(message)) {
    return `the limit of watched folders is reached (raise fs.inotify.max_user_watches): ${message}`;
  }
  return message;
}
