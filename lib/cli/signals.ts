/**
 * The scripts' signal policy: the first Ctrl-C or SIGTERM asks the run to stop, copies of
 * that one signal (the process group's and `deno task`'s forward) are the same request,
 * and a later one quits at once.
 *
 * @module
 */

import { EXIT } from "../core/errors.ts";

/** What to do on Ctrl-C (SIGINT) and SIGTERM. */
export interface StopHandlers {
  /** The first Ctrl-C (and the first SIGTERM when there is no `finish`). */
  interrupt: () => void;
  /** The first SIGTERM, when it means a graceful stop (watch mode). */
  finish?: () => void;
  /** A later signal (not a copy of the first): called just before the process exits with 130. */
  quit: () => void;
}

/**
 * Stop signals that arrive within this many ms of the first are copies of one request: a
 * terminal's Ctrl-C and a service manager's stop signal every process of the group, and
 * `deno task` forwards what it got to the uploader once more, within a millisecond or so.
 */
export const SIGNAL_COPIES_MS = 500;

/** What a stop signal asks for. */
export type StopRequest = "interrupt" | "finish" | "same" | "quit";

/**
 * The signal policy as a pure rule: the first stop signal interrupts (SIGTERM with
 * `finishOnTerm`: finishes gracefully); one within {@linkcode SIGNAL_COPIES_MS} of it is
 * a copy of the same request; a later one (a person pressing Ctrl-C again) quits.
 *
 * @example
 * ```ts
 * const requests = new StopRequests({ finishOnTerm: true });
 * requests.take("SIGTERM", 1000); // "finish"
 * requests.take("SIGTERM", 1001); // "same" (deno task's forward)
 * requests.take("SIGINT", 3000); // "quit"
 * ```
 */
export class StopRequests {
  readonly #finishOnTerm: boolean;
  readonly #copiesMs: number;
  #firstAt: number | null = null;

  constructor(options: { finishOnTerm?: boolean; copiesMs?: number } = {}) {
    this.#finishOnTerm = options.finishOnTerm ?? false;
    this.#copiesMs = options.copiesMs ?? SIGNAL_COPIES_MS;
  }

  /** What `signal`, arriving at `nowMs`, asks for. */
  take(signal: "SIGINT" | "SIGTERM", nowMs: number): StopRequest {
    if (this.#firstAt === null) {
      this.#firstAt = nowMs;
      return signal === "SIGTERM" && this.#finishOnTerm ? "finish" : "interrupt";
    }
    return nowMs - this.#firstAt < this.#copiesMs ? "same" : "quit";
  }
}

/**
 * Installs the scripts' signal policy ({@linkcode StopRequests}): the first Ctrl-C or
 * SIGTERM asks the run to stop (batches in flight finish, none starts), copies of it that
 * arrive with it are ignored, and a later one quits at once with exit code 130.
 *
 * @returns a function removing the listeners.
 */
export function handleStopSignals(handlers: StopHandlers): () => void {
  if (Deno.build.os === "windows") return () => {};
  const requests = new StopRequests({ finishOnTerm: handlers.finish !== undefined });
  const listener = (signal: "SIGINT" | "SIGTERM") => () => {
    switch (requests.take(signal, performance.now())) {
      case "quit":
        handlers.quit();
        Deno.exit(EXIT.INTERRUPTED);
        break;
      case "finish":
        handlers.finish?.();
        break;
      case "interrupt":
        handlers.interrupt();
        break;
      default:
        break; // a copy of the request already taken
    }
  };
  const onInt = listener("SIGINT");
  const onTerm = listener("SIGTERM");
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  return () => {
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
  };
}
