/**
 * The project's one error type. Its `kind` decides what happens next; no other code
 * inspects messages to decide whether something is retried.
 *
 * @module
 */

/**
 * What an error means for the run:
 * - `usage`: the command line is wrong (exit 2).
 * - `config`: the setup is wrong: missing psql, a refused role, a bad URL (exit 2).
 * - `folder`: this folder cannot be uploaded as it is (the folder fails, the run goes on).
 * - `data`: the server refused the rows of a batch for their content (bisected).
 * - `timeout`: a statement ran past the server's `statement_timeout` or the client's own
 *   limit (the batch is split; a single row that still times out fails alone).
 * - `transient`: connection lost or refused, timeout, pooler trouble (retried with backoff).
 * - `blocked`: a statement waited for a lock another session holds (the server's
 *   `lock_timeout`, 55P03): retried with backoff on the same session, never taken for an
 *   outage; past the deadline it stops the run (exit 3, folders stay pending).
 * - `unreachable`: the target stayed unreachable past the deadline (exit 3).
 * - `locked`: another run holds the tracking database (exit 2).
 * - `interrupted`: the user asked the run to stop (exit 130).
 * - `fatal`: a bug or an environment failure nothing can recover from.
 */
export type ErrorKind =
  | "usage"
  | "config"
  | "folder"
  | "data"
  | "timeout"
  | "transient"
  | "blocked"
  | "unreachable"
  | "locked"
  | "interrupted"
  | "fatal";

/** Options for {@linkcode UploadError}. */
export interface UploadErrorOptions {
  /** The folder, file or batch the error is about. */
  subject?: string;
  /** PostgreSQL SQLSTATE when the server reported the error. */
  sqlstate?: string;
  /** A short hint printed below the message (usage errors, configuration errors). */
  hint?: string;
  /** The underlying error. */
  cause?: unknown;
}

/** An error with a kind that tells the caller what to do with it. */
export class UploadError extends Error {
  /** What the error means for the run. */
  readonly kind: ErrorKind;
  /** The folder, file or batch the error is about, when there is one. */
  readonly subject?: string;
  /** The server's SQLSTATE, when the server reported the error. */
  readonly sqlstate?: string;
  /** A short hint for the user. */
  readonly hint?: string;

  /** An error of `kind` with `message`, optionally naming its subject, SQLSTATE, hint and cause. */
  constructor(kind: ErrorKind, message: string, options: UploadErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "UploadError";
    this.kind = kind;
    this.subject = options.subject;
    this.sqlstate = options.sqlstate;
    this.hint = options.hint;
  }
}

/** Exit codes of the command-line scripts. */
export const EXIT = {
  OK: 0,
  SOME_FAILED: 1,
  USAGE: 2,
  UNREACHABLE: 3,
  INTERRUPTED: 130,
} as const;

/**
 * The exit code for an error that ends a run: the one mapping from error kinds to exit
 * codes, used for errors thrown before a run starts and, through
 * {@linkcode decideOutcome}, for errors that stop a run.
 *
 * @example
 * ```ts
 * exitCodeFor(new UploadError("locked", "Tracking database in use")); // 2
 * ```
 */
export function exitCodeFor(error: unknown): number {
  if (!(error instanceof UploadError)) return EXIT.SOME_FAILED;
  switch (error.kind) {
    case "usage":
    case "config":
    case "locked":
      return EXIT.USAGE;
    case "unreachable":
    case "transient":
    case "blocked":
      return EXIT.UNREACHABLE;
    case "interrupted":
      return EXIT.INTERRUPTED;
    default:
      return EXIT.SOME_FAILED;
  }
}

/** How a run ended, as recorded in the tracker and printed in the summary. */
export type RunStatus =
  | "completed"
  | "stopped"
  | "failed"
  | "interrupted"
  | "unreachable"
  | "blocked";

/** What {@linkcode decideOutcome} looks at. */
export interface OutcomeInput {
  /** The error that stopped the run early, if one did. */
  error?: UploadError;
  /** The user interrupted the run (Ctrl-C, or SIGTERM outside `--watch`). */
  interrupted: boolean;
  /**
   * The run was asked to stop gracefully (SIGTERM in `--watch`): a normal end, exit 0
   * (a service manager stopping the service must not see a failure; failed folders were
   * reported as they happened and stay in the tracker).
   */
  stopped?: boolean;
  /** Folders that failed in this run (refused, unreadable, bad stats.json). */
  failed: number;
}

/**
 * The one function that turns how a run went into its status and exit code: an error
 * that stopped it decides (by {@linkcode exitCodeFor}); else an interruption (130); else
 * a graceful stop (0); else any failed folder (1); else 0.
 *
 * @example
 * ```ts
 * decideOutcome({ interrupted: false, failed: 2 }); // { status: "completed", exitCode: 1 }
 * ```
 */
export function decideOutcome(input: OutcomeInput): { status: RunStatus; exitCode: number } {
  const error = input.error;
  if (error && error.kind !== "interrupted") {
    const exitCode = exitCodeFor(error);
    if (error.kind === "blocked") return { status: "blocked", exitCode };
    return { status: exitCode === EXIT.UNREACHABLE ? "unreachable" : "failed", exitCode };
  }
  if (input.interrupted || error?.kind === "interrupted") {
    return { status: "interrupted", exitCode: EXIT.INTERRUPTED };
  }
  if (input.stopped) {
    return { status: "stopped", exitCode: EXIT.OK };
  }
  return { status: "completed", exitCode: input.failed > 0 ? EXIT.SOME_FAILED : EXIT.OK };
}

/** The message of any thrown value, for reports. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
