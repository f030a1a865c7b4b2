/**
 * The one retry helper: exponential backoff with jitter, a cap per wait, a deadline on how
 * long failures may last, an optional cap on attempts, and an AbortSignal. Psql sessions,
 * the schema step and object storage all retry through {@linkcode retry}; what differs
 * between them is said by their options (what is retried, how long, what giving up means),
 * never by a loop of their own.
 *
 * The rules, for every caller:
 *
 * - the wait before retry `n` is {@linkcode backoffDelay}`(n)`, or longer when the service
 *   asked for longer (`Retry-After`);
 * - failures are timed by a {@linkcode FailureClock}: from the first failure of a streak to
 *   now. Callers that talk to one service share one clock, so parallel batches give up
 *   together, and a success anywhere ends the streak; a failure of another sort may be
 *   timed by a streak of its own (`RetryVerdict.streak`), one attempt counter for both;
 * - the last attempt comes at the deadline, never a whole backoff step after it: a wait is
 *   cut to what is left; a wait the service asked for that reaches past the deadline gives
 *   up at once;
 * - an aborted signal ends the loop before the next attempt with the caller's
 *   `interrupted` error.
 *
 * The schedule is pure ({@linkcode backoffDelay}); the clock, the sleep and the random
 * source are options, so tests pin every wait.
 *
 * @module
 */

/** Settings of the backoff schedule. */
export interface BackoffOptions {
  /** First wait in ms. Default 500. */
  initialMs?: number;
  /** Longest single wait in ms. Default 30,000. */
  maxMs?: number;
  /** Relative jitter, 0..1: a wait is scaled by a factor in [1 - jitter, 1 + jitter]. Default 0.5. */
  jitter?: number;
}

/** The default schedule: 0.5 s doubling to 30 s, ±50 % jitter. */
export const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>> = Object.freeze({
  initialMs: 500,
  maxMs: 30_000,
  jitter: 0.5,
});

/**
 * The wait before retry number `attempt` (1-based): `initialMs * 2^(attempt-1)`, capped at
 * `maxMs`, scaled by a jitter factor drawn from `random` (a number in [0, 1)), and never
 * above `maxMs`.
 *
 * @example
 * ```ts
 * backoffDelay(1, { initialMs: 1000, jitter: 0 }); // 1000
 * backoffDelay(3, { initialMs: 1000, jitter: 0 }); // 4000
 * ```
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const initial = options.initialMs ?? DEFAULT_BACKOFF.initialMs;
  const max = options.maxMs ?? DEFAULT_BACKOFF.maxMs;
  const jitter = options.jitter ?? DEFAULT_BACKOFF.jitter;
  const base = Math.min(max, initial * 2 ** Math.max(0, attempt - 1));
  const factor = 1 - jitter + 2 * jitter * random();
  return Math.max(0, Math.round(Math.min(max, base * factor)));
}

/** Waits `ms`, or less when `signal` aborts (then resolves without throwing). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * How long a streak of failures has lasted, for everyone retrying against one service,
 * and whether the service ever answered (a run that never reached it gives up sooner).
 */
export class FailureClock {
  #since: number | null = null;
  #answered = false;

  /** When the current streak began, or null when the last attempt succeeded. */
  get since(): number | null {
    return this.#since;
  }

  /** Whether any attempt has succeeded since the clock was made. */
  get answered(): boolean {
    return this.#answered;
  }

  /** Notes a failure at `now`; returns when the streak began. */
  failed(now: number): number {
    this.#since ??= now;
    return this.#since;
  }

  /** Notes a success: the streak is over. */
  succeeded(): void {
    this.#since = null;
    this.#answered = true;
  }
}

/** What the caller's `classify` says about an error. */
export type RetryVerdict =
  | { retry: false }
  | {
    retry: true;
    /** A wait the service asked for (ms), at least this long. */
    afterMs?: number;
    /**
     * The streak this failure belongs to when it is not the caller's: a failure of another
     * sort with a clock and a deadline of its own (a wait for another client's lock is no
     * outage). Default: the options' `clock` and `deadlineMs`. A success still ends only
     * the options' clock's streak.
     */
    streak?: { clock: FailureClock; deadlineMs: number };
  };

/** A retry about to happen, for progress output. */
export interface RetryNotice {
  /** What is being retried (a batch, `schema`, an object key). */
  subject: string;
  /** Retry number, 1-based. */
  attempt: number;
  delayMs: number;
  reason: string;
}

/** Why {@linkcode retry} gave up, for the caller's `giveUp`. */
export interface GiveUp {
  /** Attempts made. */
  attempts: number;
  /** How long the streak of failures lasted (ms). */
  elapsedMs: number;
  /** The deadline was reached (else the attempts ran out). */
  deadline: boolean;
  /** A wait the service asked for (ms) that reached past the deadline, if that was why. */
  askedMs?: number;
}

/** Settings of {@linkcode retry}. */
export interface RetryOptions {
  /** What is retried, for notices. */
  subject: string;
  /** Whether an error is retried (and a wait the service asked for). */
  classify: (error: unknown) => RetryVerdict;
  /**
   * How long failures may last (ms) before giving up; a function is asked at each failure
   * (the window of a run that never reached the server is shorter). Default: no limit.
   */
  deadlineMs?: number | ((clock: FailureClock) => number);
  /** Attempts in all before giving up. Default: no limit. */
  attempts?: number;
  /** The streak's clock, shared by callers of one service. Default: one of its own. */
  clock?: FailureClock;
  backoff?: BackoffOptions;
  /** Aborting ends the loop before the next attempt (`interrupted` is thrown). */
  signal?: AbortSignal;
  /** The error to throw when giving up; `error` is the last failure. */
  giveUp: (error: unknown, why: GiveUp) => Error;
  /** The error to throw when `signal` aborts. */
  interrupted: () => Error;
  /** Told before each wait. */
  onRetry?: (notice: RetryNotice) => void;
  /** The error's text for notices. Default: its message. */
  reasonOf?: (error: unknown) => string;
  /** Clock, sleep and random source (tests). */
  now?: () => number;
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  random?: () => number;
}

/**
 * Runs `attempt` until it succeeds, an error is not retried (thrown as it is), the
 * failures outlast the deadline or the attempts run out (`giveUp`), or `signal` aborts
 * (`interrupted`). `attempt` gets the attempt number, 1-based.
 *
 * @example
 * ```ts
 * const rows = await retry(() => fetchRows(), {
 *   subject: "rows",
 *   classify: (e) => ({ retry: e instanceof TypeError }),
 *   deadlineMs: 60_000,
 *   giveUp: (e) => new Error(`Gave up: ${e}`),
 *   interrupted: () => new Error("Interrupted"),
 * });
 * ```
 */
export async function retry<T>(
  attempt: (n: number) => Promise<T>,
  options: RetryOptions,
): Promise<T> {
  const now = options.now ?? Date.now;
  const wait = options.sleep ?? sleep;
  const clock = options.clock ?? new FailureClock();
  const maxAttempts = options.attempts ?? Infinity;
  for (let n = 1;; n++) {
    if (options.signal?.aborted) throw options.interrupted();
    let error: unknown;
    try {
      const result = await attempt(n);
      clock.succeeded();
      return result;
    } catch (thrown) {
      error = thrown;
    }
    const verdict = options.classify(error);
    if (!verdict.retry) throw error;
    if (options.signal?.aborted) throw options.interrupted();
    const t = now();
    const since = (verdict.streak?.clock ?? clock).failed(t);
    const elapsedMs = t - since;
    const deadline = verdict.streak
      ? verdict.streak.deadlineMs
      : typeof options.deadlineMs === "function"
      ? options.deadlineMs(clock)
      : options.deadlineMs ?? Infinity;
    if (elapsedMs >= deadline) {
      throw options.giveUp(error, { attempts: n, elapsedMs, deadline: true });
    }
    if (n >= maxAttempts) throw options.giveUp(error, { attempts: n, elapsedMs, deadline: false });
    const left = deadline - elapsedMs;
    const asked = verdict.afterMs ?? 0;
    if (asked > left) {
      throw options.giveUp(error, { attempts: n, elapsedMs, deadline: true, askedMs: asked });
    }
    const delayMs = Math.max(
      asked,
      Math.min(backoffDelay(n, options.backoff, options.random), left),
    );
    options.onRetry?.({
      subject: options.subject,
      attempt: n,
      delayMs,
      reason: (options.reasonOf ?? defaultReason)(error),
    });
    await wait(delayMs, options.signal);
  }
}

function defaultReason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
