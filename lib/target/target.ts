/**
 * Which database a run writes to: a URL (`--db-url`, `$SUPABASE_DB_URL`, `$DATABASE_URL`),
 * libpq's own variables (`PGHOST`, `PGSERVICE`), or the embedded local database. Also turns
 * a URL into psql arguments with the password moved out of argv.
 *
 * @module
 */

import { basename, dirname, extname, join } from "node:path";
import { UploadError } from "../core/errors.ts";
import type { PsqlConnection } from "../sink/postgres/psql.ts";

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

/** The hint for any URL the uploader refuses to read: how to write a password in it. */
export const ENCODING_HINT = "Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE; " +
  "percent-encode these characters in the password: @ as %40, # as %23, ? as %3F, / as %2F, " +
  "% as %25 (the dashboard shows the password as it is, unencoded)";

/** What an error calls the URL: where it came from, never its text. */
function urlName(source: string | undefined): string {
  if (source === undefined) return "the database URL";
  return source.startsWith("--") ? `the URL of ${source}` : `the URL in ${source}`;
}

/**
 * Refuses a URL whose user info cannot be told from its host: an `@` after the first `/`,
 * `?` or `#` behind `//`. The URL parser ends the user info and host at that character, so
 * a password holding an unencoded `/ ? #` (or an `@` in a database name or a parameter)
 * would send part of the password as the host, the port or the database.
 */
function checkUserInfo(url: string, name: string): void {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url);
  if (!scheme) return;
  const rest = url.slice(scheme[0].length);
  const end = rest.search(/[/?#]/);
  if (end < 0 || !rest.includes("@", end)) return;
  throw new UploadError(
    "config",
    `Cannot read ${name}: an "@" comes after a "/", "?" or "#", so the password cannot be ` +
      `told from the host (the URL is not shown: it may hold the password)`,
    { hint: `${ENCODING_HINT}; an @ elsewhere in the URL is written %40 too` },
  );
}

/** Options of {@linkcode connectionFromUrl}. */
export interface ConnectionOptions {
  /** Where the URL came from (`--db-url`, `$SUPABASE_DB_URL`), for messages. */
  source?: string;
  /** The environment psql will inherit (its `PGSSLMODE` is respected). Default: none. */
  env?: Record<string, string | undefined>;
}

/** Percent-decodes a user-info part, or refuses it naming which part (never its text). */
function decodeUserInfo(text: string, part: string, name: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new UploadError(
      "config",
      `Cannot read ${name}: the ${part}'s percent-encoding is invalid (a % not followed by ` +
        `two hexadecimal digits)`,
      { hint: ENCODING_HINT },
    );
  }
}

/**
 * Turns a `postgres://` / `postgresql://` URL into psql connection settings. The password
 * (in the user-info part or a `password` parameter) is moved into the child's environment
 * as `PGPASSWORD`; it never appears in `args` or `display`, and `display` names no user
 * either (`host:port/database`). Non-local hosts get `sslmode=require` unless the URL sets
 * an sslmode, or libpq's `PGSSLMODE` is set in `options.env` (psql inherits it).
 *
 * @throws {UploadError} kind `config` when the URL cannot be parsed, or cannot be parsed as
 *   the user meant it (an `@` after a `/`, `?` or `#`: a password with those characters
 *   unencoded); the message names the source and never repeats any part of the URL's
 *   user info.
 */
export function connectionFromUrl(
  url: string,
  options: ConnectionOptions = {},
): PsqlConnection {
  const name = urlName(options.source);
  checkUserInfo(url, name);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Nothing of the text is echoed: a bare value may be a password pasted into the wrong
    // variable, and a URL's user info may hold one.
    throw new UploadError("config", `Cannot parse ${name} (not shown: it may hold a password)`, {
      hint: ENCODING_HINT,
    });
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new UploadError(
      "config",
      `Cannot use ${name}: it must start with postgresql:// or postgres://, not ${parsed.protocol}//`,
      { hint: "Expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE" },
    );
  }
  const env: Record<string, string> = {};
  decodeUserInfo(parsed.username, "user name", name);
  let password = parsed.password ? decodeUserInfo(parsed.password, "password", name) : "";
  const queryPassword = parsed.searchParams.get("password");
  if (queryPassword !== null) password = queryPassword;
  if (password) env.PGPASSWORD = password;
  parsed.password = "";
  const host = parsed.hostname || parsed.searchParams.get("host") || "";
  // Edit the query as text: URLSearchParams would re-encode spaces as `+`, which libpq
  // does not decode (it reads only %XX).
  const params = parsed.search.replace(/^\?/, "").split("&")
    .filter((p) => p !== "" && !/^password(=|$)/.test(p));
  const inUrl = parsed.searchParams.get("sslmode") ?? undefined;
  const inEnv = options.env?.PGSSLMODE || undefined;
  const added = inUrl === undefined && inEnv === undefined && !isLocalHost(host);
  if (added) params.push("sslmode=require");
  parsed.search = params.length > 0 ? `?${params.join("&")}` : "";
  const clean = parsed.toString();
  const port = parsed.port ? `:${parsed.port}` : "";
  const db = parsed.pathname.replace(/^\//, "") || "(default database)";
  return {
    args: ["-d", clean],
    env,
    display: `${host}${port}/${decodeOrKeep(db)}`,
    tls: {
      mode: added ? "require" : inUrl ?? inEnv,
      added,
      via: inUrl === undefined && inEnv !== undefined ? "env" : "url",
    },
  };
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

/**
 * Text with the user info of any URL in it (user and password) replaced by `***`, and any
 * `password=` parameter too: safe to print.
 */
export function redactUrl(text: string): string {
  // Up to the last `@` of the line: a password may hold unencoded `@ / # ?` and spaces.
  return text
    .replace(/(\/\/)[^\n]*@/g, "$1***@")
    .replace(/([?&]password=)[^&#\s]*/gi, "$1***");
}

/**
 * libpq's own settings, as the user gave them in the environment. As for a URL, a `PGHOST`
 * naming a host other than this machine gets `PGSSLMODE=require` in psql's environment
 * unless `PGSSLMODE` (or the older `PGREQUIRESSL`) is set; a service file's own `sslmode`
 * still wins, since libpq reads the service file before the environment.
 */
export function libpqConnection(env: Record<string, string | undefined>): PsqlConnection {
  const parts = ["PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE"]
    .filter((k) => env[k])
    .map((k) => `${k}=${env[k]}`);
  const hosts = (env.PGHOST ?? "").split(",").map((h) => h.trim()).filter((h) => h !== "");
  const given = env.PGSSLMODE || undefined;
  const added = given === undefined && !env.PGREQUIRESSL && hosts.some((h) => !isLocalHost(h));
  return {
    args: [],
    env: added ? { PGSSLMODE: "require" } : {},
    display: `libpq defaults (${parts.join(" ")})`,
    tls: { mode: added ? "require" : given, added, via: "env" },
  };
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
