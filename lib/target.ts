/**
 * Which database a run writes to: a URL (`--db-url`, `$SUPABASE_DB_URL`, `$DATABASE_URL`),
 * libpq's own variables (`PGHOST`, `PGSERVICE`), or the embedded local database. Also turns
 * a URL into psql arguments with the password moved out of argv.
 *
 * @module
 */

import { basename, dirname, extname, join } from "node:path";
import { UploadError } from "./errors.ts";
import type { PsqlConnection } from "./psql.ts";

/** Where the data goes, before anything is started or connected. */
export type TargetSpec =
  | { kind: "url"; url: string; source: string }
  | { kind: "libpq"; source: string }
  | { kind: "embedded"; dataDir: string };

/**
 * Picks the target: `--db-url`, else `$SUPABASE_DB_URL`, else `$DATABASE_URL`; else libpq's
 * defaults when `PGHOST` or `PGSERVICE` names a server; else the embedded database in a
 * folder beside the tracking database.
 */
export function resolveTarget(
  options: { dbUrl?: string; dbPath: string; env: Record<string, string | undefined> },
): TargetSpec {
  if (options.dbUrl) return { kind: "url", url: options.dbUrl, source: "--db-url" };
  for (const name of ["SUPABASE_DB_URL", "DATABASE_URL"]) {
    const value = options.env[name];
    if (value) return { kind: "url", url: value, source: `$${name}` };
  }
  for (const name of ["PGHOST", "PGSERVICE"]) {
    if (options.env[name]) return { kind: "libpq", source: `$${name}` };
  }
  return { kind: "embedded", dataDir: embeddedDataDir(options.dbPath) };
}

/** The embedded database folder for a tracking database: `upload_tracker.db` -> `upload_tracker.pgdata`. */
export function embeddedDataDir(dbPath: string): string {
  const ext = extname(dbPath);
  const stem = ext ? basename(dbPath, ext) : basename(dbPath);
  return join(dirname(dbPath), `${stem}.pgdata`);
}

/** Whether a host is this machine (no TLS needed by default). */
export function isLocalHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "" || h === "localhost" || h.startsWith("127.") || h === "::1" ||
    h.startsWith("/");
}

/**
 * Turns a `postgres://` / `postgresql://` URL into psql connection settings. The password
 * (in the user-info part or a `password` parameter) is moved into the child's environment
 * as `PGPASSWORD`; it never appears in `args` or `display`. Non-local hosts get
 * `sslmode=require` unless the URL sets an sslmode.
 *
 * @throws {UploadError} kind `config` when the URL cannot be parsed; the message never
 * repeats the URL's password.
 */
export function connectionFromUrl(url: string): PsqlConnection {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Echo only what looks like a URL (redacted): a bare value may be a password pasted
    // into the wrong variable.
    const shown = /^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? ` ${redactUrl(url)}` : "";
    throw new UploadError("config", `Cannot parse the database URL${shown}`, {
      hint: "Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE; percent-encode " +
        "characters such as @ / # ? % in the password (%40 %2F %23 %3F %25)",
    });
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new UploadError(
      "config",
      `Database URL must start with postgresql:// or postgres://, not ${parsed.protocol}//`,
      { hint: "Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE" },
    );
  }
  const env: Record<string, string> = {};
  let password: string;
  try {
    password = parsed.password ? decodeURIComponent(parsed.password) : "";
  } catch {
    throw new UploadError(
      "config",
      `Cannot parse the database URL ${redactUrl(url)}: the password's percent-encoding is invalid`,
      { hint: "Write % in the password as %25 (and @ / # ? as %40 %2F %23 %3F)" },
    );
  }
  const queryPassword = parsed.searchParams.get("password");
  if (queryPassword !== null) password = queryPassword;
  if (password) env.PGPASSWORD = password;
  parsed.password = "";
  const host = parsed.hostname || parsed.searchParams.get("host") || "";
  // Edit the query as text: URLSearchParams would re-encode spaces as `+`, which libpq
  // does not decode (it reads only %XX).
  const params = parsed.search.replace(/^\?/, "").split("&")
    .filter((p) => p !== "" && !/^password(=|$)/.test(p));
  if (!parsed.searchParams.has("sslmode") && !isLocalHost(host)) params.push("sslmode=require");
  parsed.search = params.length > 0 ? `?${params.join("&")}` : "";
  const clean = parsed.toString();
  const user = parsed.username ? `${decodeOrKeep(parsed.username)}@` : "";
  const port = parsed.port ? `:${parsed.port}` : "";
  const db = parsed.pathname.replace(/^\//, "") || "(default database)";
  return { args: ["-d", clean], env, display: `${user}${host}${port}/${decodeOrKeep(db)}` };
}

/** Percent-decodes for display; text with a malformed escape is shown as it is. */
function decodeOrKeep(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text; // for display only: psql reports the malformed escape itself
  }
}

/**
 * The identity of a URL's server and database (`host:port/database`), without user or
 * password: two URLs with the same identity reach the same rows.
 */
export function targetIdFromUrl(url: string): string {
  try {
    const u = new URL(url);
    const host = (u.hostname || u.searchParams.get("host") || "").toLowerCase();
    return `${host}:${u.port || "5432"}/${decodeURIComponent(u.pathname.replace(/^\//, ""))}`;
  } catch {
    return redactUrl(url);
  }
}

/** A URL with any password replaced by `***`, safe to print. */
export function redactUrl(url: string): string {
  // Up to the last `@` of the URL: a password may hold unencoded `@ / # ?`.
  return url
    .replace(/(\/\/[^:/@?#\s]*:)\S*@/, "$1***@")
    .replace(/([?&]password=)[^&#]*/gi, "$1***");
}

/** libpq's own settings, as the user gave them in the environment. */
export function libpqConnection(env: Record<string, string | undefined>): PsqlConnection {
  const parts = ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"]
    .filter((k) => env[k])
    .map((k) => `${k}=${env[k]}`);
  return { args: [], env: {}, display: `libpq defaults (${parts.join(" ")})` };
}

/**
 * Advice for a connection that failed as unreachable: Supabase's direct host is IPv6-only
 * unless the project pays for IPv4, and lab networks are often IPv4-only.
 */
export function unreachableHint(display: string): string {
  const supabase = /db\.([a-z0-9]+)\.supabase\.co/i.exec(display);
  if (supabase) {
    return `db.${supabase[1]}.supabase.co has only an IPv6 address unless the project has the ` +
      `IPv4 add-on. From an IPv4-only network use the session pooler instead: ` +
      `postgresql://postgres.${
        supabase[1]
      }:PASSWORD@aws-<region>.pooler.supabase.com:5432/postgres ` +
      `(or the transaction pooler on port 6543); the dashboard's Connect button shows it`;
  }
  return "Check the host name, the port and the network; psql must reach the server from here";
}
