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
 * - `transient`: connection lost or refused, timeout, pooler trouble (retried with backoff).
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
  | "transient"
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
 * Whether an error of this kind is retried with backoff in the same run.
 *
 * @example
 * ```ts
 * isRetryable(new UploadError("transient", "Connection lost")); // true
 * ```
 */
export function isRetryable(error: unknown): boolean {
  return error instanceof UploadError && error.kind === "transient";
}

/** The exit code for an error that ends a run. */
export function exitCodeFor(error: unknown): number {
  if (!(error instanceof UploadError)) return EXIT.SOME_FAILED;
  switch (error.kind) {
    case "usage":
    case "config":
    case "locked":
      return EXIT.USAGE;
    case "unreachable":
    case "transient":
      return EXIT.UNREACHABLE;
    case "interrupted":
      return EXIT.INTERRUPTED;
    default:
      return EXIT.SOME_FAILED;
  }
}

/** The message of any thrown value, for reports. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
