/**
 * The tracking database's connection as the tracker's parts use it: prepared statements
 * (cached by their text), transactions, and every SQLite or file-system error turned into
 * the tracker's own fault (lib/tracker/faults.ts) naming the file, after checking that the
 * file is still the one opened.
 *
 * @module
 */

import type { DatabaseSync, StatementSync } from "node:sqlite";
import { UploadError } from "../core/errors.ts";
import { trackerFault, trackerGone } from "./faults.ts";

/** ISO-8601 UTC text, the tracker's time format. */
export function iso(date: Date): string {
  return date.toISOString();
}

/** A file's device and inode, or null when it does not exist (or cannot be stat'ed). */
export function fileIdentity(path: string): string | null {
  try {
    const info = Deno.statSync(path);
    return `${info.dev}:${info.ino}`;
  } catch (_error) {
    return null; // gone (or unreadable: the next statement says why)
  }
}

/** One open tracking database: its statements, transactions and faults. */
export class TrackerDb {
  /** The database file (`:memory:` for one in memory). */
  readonly path: string;
  /** The SQLite connection. */
  readonly db: DatabaseSync;
  #statements = new Map<string, StatementSync>();
  /** The file's device and inode when it was opened (null: in memory, or not a file). */
  #fileId: string | null = null;

  constructor(path: string, db: DatabaseSync) {
    this.path = path;
    this.db = db;
    if (path !== ":memory:") this.#fileId = fileIdentity(path);
  }

  /**
   * Runs `fn` in one transaction; rolls back and rethrows when it throws. First checks that
   * the file is still the one opened (see {@linkcode checkFile}).
   *
   * @throws {UploadError} kind `config` for a fault of the file or its disk, else what
   * `fn` threw.
   */
  transaction<T>(fn: () => T): T {
    this.checkFile();
    this.exec("BEGIN IMMEDIATE");
    try {
      const result = fn();
      this.exec("COMMIT");
      return result;
    } catch (error) {
      try {
        if (this.db.isTransaction) this.db.exec("ROLLBACK");
      } catch (_rollback) {
        // A disk that refused the commit may refuse the rollback too; the first error says why.
      }
      throw this.fault(error);
    }
  }

  /**
   * Checks that the tracking database is still at its path as opened: one deleted or
   * replaced meanwhile would take what this run records with it, silently.
   *
   * @throws {UploadError} kind `config` naming the file, when it was deleted or replaced.
   */
  checkFile(): void {
    if (this.#fileId === null) return;
    const now = fileIdentity(this.path);
    if (now === this.#fileId) return;
    throw trackerGone(this.path, now === null ? "deleted" : "replaced");
  }

  /** The error to throw for `error`, met while using the database. */
  fault(error: unknown): unknown {
    if (error instanceof UploadError) return error;
    try {
      // A file deleted or replaced under the run explains whatever SQLite says next.
      this.checkFile();
    } catch (gone) {
      return gone;
    }
    return trackerFault(this.path, error) ?? error;
  }

  /** Runs SQL text (several statements, no parameters); errors as {@linkcode fault}. */
  exec(sql: string): void {
    try {
      this.db.exec(sql);
    } catch (error) {
      throw this.fault(error);
    }
  }

  /** A prepared statement whose errors name the tracking database (see {@linkcode fault}). */
  prepare(sql: string): StatementSync {
    let stmt: StatementSync;
    try {
      stmt = this.db.prepare(sql);
    } catch (error) {
      throw this.fault(error);
    }
    const fault = (error: unknown) => this.fault(error);
    return new Proxy(stmt, {
      get(target, prop) {
        const value = Reflect.get(target, prop, target);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          try {
            return value.apply(target, args);
          } catch (error) {
            throw fault(error);
          }
        };
      },
    });
  }

  /** {@linkcode prepare}, kept for the next use of the same text. */
  stmt(sql: string): StatementSync {
    let stmt = this.#statements.get(sql);
    if (!stmt) {
      stmt = this.prepare(sql);
      this.#statements.set(sql, stmt);
    }
    return stmt;
  }

  /** Forgets the prepared statements and closes the connection. */
  close(): void {
    this.#statements.clear();
    if (this.db.isOpen) this.db.close();
  }
}
