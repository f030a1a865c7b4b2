/**
 * The one limiter: a number of slots and a number of bytes, handed out first come, first
 * served. Batches in flight (slots: `--parallel`, bytes: statement bytes), object puts
 * (slots: `--images-parallel`, bytes: file content in memory) and marker writes (slots)
 * are each bounded by one {@linkcode Budget}.
 *
 * A request for more bytes than the whole budget is granted once everything else is
 * released, so one large item goes alone rather than never.
 *
 * @module
 */

/** What one request takes. */
export interface BudgetRequest {
  /** Slots to take. Default 1; 0 waits for bytes alone. */
  slots?: number;
  /** Bytes to take (capped at the whole budget). Default 0. */
  bytes?: number;
}

/** Releases what a request took; calling it again does nothing. */
export type Release = () => void;

interface Waiter {
  slots: number;
  bytes: number;
  grant: () => void;
}

/** Slots and bytes, granted in order of request. */
export class Budget {
  readonly maxSlots: number;
  readonly maxBytes: number;
  #usedSlots = 0;
  #usedBytes = 0;
  #queue: Waiter[] = [];

  /**
   * @param slots how many requests may hold a slot at once (Infinity: no limit)
   * @param bytes how many bytes may be held at once (Infinity: no limit)
   */
  constructor(slots: number, bytes = Infinity) {
    this.maxSlots = slots;
    this.maxBytes = bytes;
  }

  /** Slots held now. */
  get slotsInUse(): number {
    return this.#usedSlots;
  }

  /** Bytes held now. */
  get bytesInUse(): number {
    return this.#usedBytes;
  }

  /**
   * Waits until the request fits, takes it, and returns its release.
   *
   * @throws the signal's reason when `signal` aborts first (nothing is taken).
   */
  acquire(request: BudgetRequest = {}, signal?: AbortSignal): Promise<Release> {
    const slots = Math.min(request.slots ?? 1, this.maxSlots);
    const bytes = Math.min(Math.max(0, request.bytes ?? 0), this.maxBytes);
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = () => {
        const at = this.#queue.indexOf(waiter);
        if (at >= 0) this.#queue.splice(at, 1);
        this.#serve();
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        slots,
        bytes,
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          let released = false;
          resolve(() => {
            if (released) return;
            released = true;
            this.#usedSlots -= slots;
            this.#usedBytes -= bytes;
            this.#serve();
          });
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
      this.#serve();
    });
  }

  /** Waits until `bytes` would fit now, taking nothing (a reader bounding what it loads). */
  async room(bytes: number, signal?: AbortSignal): Promise<void> {
    const release = await this.acquire({ slots: 0, bytes }, signal);
    release();
  }

  #serve(): void {
    while (this.#queue.length > 0) {
      const next = this.#queue[0];
      if (
        this.#usedSlots + next.slots > this.maxSlots || this.#usedBytes + next.bytes > this.maxBytes
      ) return;
      this.#queue.shift();
      this.#usedSlots += next.slots;
      this.#usedBytes += next.bytes;
      next.grant();
    }
  }
}
