/**
 * Backoff for transient failures: exponential with jitter, a cap per wait and a total
 * deadline. The schedule is a pure function; {@linkcode sleep} is the only clock edge.
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

/**
 * The wait before retry number `attempt` (1-based): `initialMs * 2^(attempt-1)`, capped at
 * `maxMs`, scaled by a jitter factor drawn from `random` (a number in [0, 1)).
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
  const initial = options.initialMs ?? 500;
  const max = options.maxMs ?? 30_000;
  const jitter = options.jitter ?? 0.5;
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
