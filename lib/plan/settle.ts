/**
 * The settle queue: folders seen while still being written (or, with `--ready-when`, not
 * complete yet), held until they are due to be looked at again.
 *
 * @module
 */

/** A folder waiting for its newest file to be old enough. */
export interface SettlingFolder {
  path: string;
  key: string;
  base: string | null;
  force: boolean;
  strict: boolean;
  /** When to look at it again (ms). */
  dueAt: number;
  /** It waits for the file `--ready-when` names (rather than for its files to settle). */
  waiting?: boolean;
}

/**
 * Folders that were still being written when seen, keyed by path, in due order. Bounded:
 * past `capacity` a folder is only counted and left for a later scan.
 */
export class SettleQueue {
  #entries = new Map<string, SettlingFolder>();
  readonly capacity: number;

  constructor(capacity = 10_000) {
    this.capacity = capacity;
  }

  /** Queues a folder; false when the queue is full. */
  add(entry: SettlingFolder): boolean {
    if (!this.#entries.has(entry.path) && this.#entries.size >= this.capacity) return false;
    this.#entries.delete(entry.path);
    this.#entries.set(entry.path, entry);
    return true;
  }

  /** Folders waiting. */
  get size(): number {
    return this.#entries.size;
  }

  /** The earliest due time, or null when nothing waits. */
  nextDue(): number | null {
    let next: number | null = null;
    for (const e of this.#entries.values()) if (next === null || e.dueAt < next) next = e.dueAt;
    return next;
  }

  /** Takes the folders due at `now` (all of them with `all`). */
  take(now: number, all = false): SettlingFolder[] {
    const due: SettlingFolder[] = [];
    for (const [path, e] of this.#entries) {
      if (all || e.dueAt <= now) {
        due.push(e);
        this.#entries.delete(path);
      }
    }
    return due;
  }
}
