/**
 * psql sessions: long-lived `psql` processes fed statements on stdin, each statement
 * followed by a reply trailer so the caller learns its outcome.
 *
 * @module
 */

/** How to reach a server with psql. Never holds a password in `args`. */
export interface PsqlConnection {
  /** Connection arguments for psql, e.g. `["-d", "postgresql://user@host:5432/db?sslmode=require"]`. */
  args: string[];
  /** Extra environment for the psql child (PGPASSWORD and friends live here, never in args). */
  env: Record<string, string>;
  /** What to show the user: host, port and database, never a password. */
  display: string;
}
