/**
 * Which database a run writes to, and how a URL becomes psql settings: the precedence of
 * the sources, the password moved out of argv into the child's environment (user-info and
 * `?password=`, percent-decoded), TLS for non-local hosts only, redaction, the target
 * identity kept in the tracker, and the hint for Supabase's IPv6-only direct host.
 * Pure functions: no server needed.
 */

import assert from "node:assert/strict";
import { UploadError } from "../lib/errors.ts";
import {
  connectionFromUrl,
  embeddedDataDir,
  isLocalHost,
  redactUrl,
  resolveTarget,
  targetIdFromUrl,
  unreachableHint,
} from "../lib/target.ts";

const URL_A = "postgresql://a:pa@host-a:5432/db";
const URL_B = "postgresql://b:pb@host-b:5432/db";
const URL_C = "postgresql://c:pc@host-c:5432/db";

/** The `-d` URL a connection hands psql. */
function psqlUrl(args: string[]): string {
  const at = args.indexOf("-d");
  assert.ok(at >= 0 && at + 1 < args.length, `no -d in ${JSON.stringify(args)}`);
  return args[at + 1];
}

/** Everything of a connection that psql's argv or the user can see. */
function visible(conn: ReturnType<typeof connectionFromUrl>): string {
  return JSON.stringify({ args: conn.args, display: conn.display });
}

Deno.test("resolveTarget: --db-url wins over every environment variable", () => {
  const spec = resolveTarget({
    dbUrl: URL_A,
    dbPath: "t.db",
    env: { SUPABASE_DB_URL: URL_B, DATABASE_URL: URL_C, PGHOST: "h", PGSERVICE: "s" },
  });
  assert.deepEqual(spec, { kind: "url", url: URL_A, source: "--db-url" });
});

Deno.test("resolveTarget: SUPABASE_DB_URL, then DATABASE_URL, then libpq, then embedded", () => {
  const dbPath = "/var/lib/up/upload_tracker.db";
  assert.deepEqual(
    resolveTarget({
      dbPath,
      env: { SUPABASE_DB_URL: URL_B, DATABASE_URL: URL_C, PGHOST: "h" },
    }),
    { kind: "url", url: URL_B, source: "$SUPABASE_DB_URL" },
  );
  assert.deepEqual(
    resolveTarget({ dbPath, env: { DATABASE_URL: URL_C, PGHOST: "h", PGSERVICE: "s" } }),
    { kind: "url", url: URL_C, source: "$DATABASE_URL" },
  );
  assert.deepEqual(resolveTarget({ dbPath, env: { PGHOST: "h", PGSERVICE: "s" } }), {
    kind: "libpq",
    source: "$PGHOST",
  });
  assert.deepEqual(resolveTarget({ dbPath, env: { PGSERVICE: "lab" } }), {
    kind: "libpq",
    source: "$PGSERVICE",
  });
  assert.deepEqual(resolveTarget({ dbPath, env: {} }), {
    kind: "embedded",
    dataDir: "/var/lib/up/upload_tracker.pgdata",
  });
});

Deno.test("resolveTarget: empty variables count as unset", () => {
  const spec = resolveTarget({
    dbUrl: "",
    dbPath: "t.db",
    env: { SUPABASE_DB_URL: "", DATABASE_URL: URL_C, PGHOST: "" },
  });
  assert.deepEqual(spec, { kind: "url", url: URL_C, source: "$DATABASE_URL" });
  assert.equal(
    resolveTarget({ dbPath: "t.db", env: { SUPABASE_DB_URL: "", PGHOST: "" } }).kind,
    "embedded",
  );
});

Deno.test("embeddedDataDir sits beside the tracking database", () => {
  assert.equal(embeddedDataDir("upload_tracker.db"), "upload_tracker.pgdata");
  assert.equal(embeddedDataDir("/a/b/track"), "/a/b/track.pgdata");
  assert.equal(embeddedDataDir("x/y.sqlite3"), "x/y.pgdata");
});

Deno.test("connectionFromUrl moves a user-info password into PGPASSWORD", () => {
  const conn = connectionFromUrl(
    "postgresql://postgres.abcd:s3cr3t-pw@db.example.com:6543/postgres",
  );
  assert.deepEqual(conn.env, { PGPASSWORD: "s3cr3t-pw" });
  assert.ok(!visible(conn).includes("s3cr3t-pw"), visible(conn));
  const url = new URL(psqlUrl(conn.args));
  assert.equal(url.password, "");
  assert.equal(url.username, "postgres.abcd");
  assert.equal(url.hostname, "db.example.com");
  assert.equal(url.port, "6543");
  assert.equal(conn.display, "postgres.abcd@db.example.com:6543/postgres");
});

Deno.test("connectionFromUrl moves a ?password= parameter into PGPASSWORD", () => {
  const conn = connectionFromUrl(
    "postgresql://u@db.example.com/postgres?password=qp%26x%3Dy&application_name=lab",
  );
  assert.deepEqual(conn.env, { PGPASSWORD: "qp&x=y" });
  const url = new URL(psqlUrl(conn.args));
  assert.equal(url.searchParams.get("password"), null);
  assert.equal(url.searchParams.get("application_name"), "lab");
  assert.ok(!visible(conn).includes("qp"), visible(conn));
});

Deno.test("connectionFromUrl percent-decodes the password, the user and the database", () => {
  const conn = connectionFromUrl("postgres://lab%40site:p%40ss%2Fw%3Ard%25%20x@h:1/my%20db");
  assert.deepEqual(conn.env, { PGPASSWORD: "p@ss/w:rd% x" });
  assert.equal(conn.display, "lab@site@h:1/my db");
  // psql decodes the URL itself: the user stays encoded in argv.
  assert.equal(new URL(psqlUrl(conn.args)).username, "lab%40site");
  // A literal `@` in the password (not encoded): the URL parser takes the last `@`.
  const at = connectionFromUrl("postgresql://u:p@ss@h/db");
  assert.deepEqual(at.env, { PGPASSWORD: "p@ss" });
  assert.ok(!visible(at).includes("p@ss"), visible(at));
});

Deno.test("connectionFromUrl without a password sets no PGPASSWORD", () => {
  assert.deepEqual(connectionFromUrl("postgresql://u@localhost/db").env, {});
  assert.deepEqual(connectionFromUrl("postgresql:///db?host=/run/postgresql").env, {});
});

Deno.test("connectionFromUrl adds sslmode=require for non-local hosts only", () => {
  const remote = new URL(
    psqlUrl(connectionFromUrl("postgresql://u:p@db.x.supabase.co/postgres").args),
  );
  assert.equal(remote.searchParams.get("sslmode"), "require");
  const pooler = new URL(
    psqlUrl(
      connectionFromUrl("postgresql://u:p@aws-0-eu-central-1.pooler.supabase.com:6543/postgres")
        .args,
    ),
  );
  assert.equal(pooler.searchParams.get("sslmode"), "require");
  for (
    const local of [
      "postgresql://u:p@localhost/db",
      "postgresql://u:p@127.0.0.1:5433/db",
      "postgresql://u:p@127.1.2.3/db",
      "postgresql://u:p@[::1]:5432/db",
      "postgresql:///db?host=/var/run/postgresql",
    ]
  ) {
    const url = new URL(psqlUrl(connectionFromUrl(local).args));
    assert.equal(url.searchParams.get("sslmode"), null, local);
  }
});

Deno.test("connectionFromUrl keeps an explicit sslmode", () => {
  const disabled = new URL(
    psqlUrl(connectionFromUrl("postgresql://u:p@db.example.com/db?sslmode=disable").args),
  );
  assert.deepEqual(disabled.searchParams.getAll("sslmode"), ["disable"]);
  const full = new URL(
    psqlUrl(connectionFromUrl("postgresql://u:p@localhost/db?sslmode=verify-full").args),
  );
  assert.deepEqual(full.searchParams.getAll("sslmode"), ["verify-full"]);
});

Deno.test("connectionFromUrl keeps the other parameters' encoding (libpq does not read + as space)", () => {
  // libpq decodes %XX in URI parameters but leaves `+` as it is, so re-encoding a space
  // as `+` would change the value psql sends (options=-c+search_path... breaks the login).
  const conn = connectionFromUrl(
    "postgresql://u:pw@db.example.com/db?application_name=lab%20pi&options=-c%20search_path%3Dlab",
  );
  const url = psqlUrl(conn.args);
  assert.ok(url.includes("application_name=lab%20pi"), url);
  assert.ok(url.includes("options=-c%20search_path%3Dlab"), url);
  assert.ok(!url.includes("+"), url);
  assert.ok(url.includes("sslmode=require"), url);
});

Deno.test("connectionFromUrl refuses what is not a postgres URL, without echoing a password", () => {
  const cases = [
    "mysql://u:hunter22@h/db",
    "not a url hunter22",
    "postgresql://u:hunter22/x@h/db", // an unencoded `/` in the password
    "postgresql://u:hunter22#x@h/db", // an unencoded `#`
    "postgresql://u:100%hunter22@h/db", // a lone `%`: invalid percent-encoding
  ];
  for (const url of cases) {
    let caught: unknown;
    try {
      connectionFromUrl(url);
    } catch (error) {
      caught = error;
    }
    assert.ok(caught instanceof UploadError, `${url}: expected an UploadError, got ${caught}`);
    assert.equal(caught.kind, "config", url);
    const text = `${caught.message} ${caught.hint ?? ""}`;
    assert.ok(!text.includes("hunter22"), `${url}: ${text}`);
  }
});

Deno.test("redactUrl hides passwords, also in URLs the parser refuses", () => {
  assert.equal(redactUrl("postgresql://u:secret@h:5432/db"), "postgresql://u:***@h:5432/db");
  assert.equal(
    redactUrl("postgresql://u@h/db?password=secret&x=1"),
    "postgresql://u@h/db?password=***&x=1",
  );
  assert.equal(
    redactUrl("postgresql://u@h/db?a=1&PASSWORD=secret"),
    "postgresql://u@h/db?a=1&PASSWORD=***",
  );
  assert.equal(redactUrl("postgresql://u@h/db"), "postgresql://u@h/db");
  assert.equal(redactUrl("no url here"), "no url here");
  for (
    const url of [
      "postgresql://u:se@cret@h/db",
      "postgresql://u:se/cret@h/db",
      "postgresql://u:se#cret@h/db",
      "postgresql://u:se?cret@h/db",
      "Error: cannot reach postgresql://u:secret@h/db (timeout)",
    ]
  ) {
    const redacted = redactUrl(url);
    assert.ok(!/se.?cret|cret/.test(redacted), `${url} -> ${redacted}`);
  }
});

Deno.test("targetIdFromUrl names server, port and database, never user or password", () => {
  assert.equal(
    targetIdFromUrl("postgresql://u:pw@DB.Example.com:6543/postgres"),
    "db.example.com:6543/postgres",
  );
  assert.equal(targetIdFromUrl("postgresql://u:pw@h/db"), "h:5432/db");
  assert.equal(
    targetIdFromUrl("postgresql://other:pw2@h:5432/db"),
    targetIdFromUrl("postgresql://u:pw@h/db"),
  );
  assert.equal(targetIdFromUrl("postgresql:///my%20db?host=/tmp"), "/tmp:5432/my db");
  assert.ok(!targetIdFromUrl("postgresql://u:hunter22/x@h/db").includes("hunter22"));
});

Deno.test("isLocalHost", () => {
  for (
    const h of ["", "localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "::1", "[::1]", "/tmp"]
  ) {
    assert.ok(isLocalHost(h), h);
  }
  for (
    const h of ["db.abc.supabase.co", "10.0.0.5", "192.168.1.2", "::2", "localhost.example.com"]
  ) {
    assert.ok(!isLocalHost(h), h);
  }
});

Deno.test("unreachableHint points db.<ref>.supabase.co at the session and transaction poolers", () => {
  const hint = unreachableHint(
    "postgres@db.abcdefghij.supabase.co:5432/postgres (from $SUPABASE_DB_URL)",
  );
  assert.match(hint, /IPv6/);
  assert.match(hint, /postgres\.abcdefghij/);
  assert.match(hint, /pooler\.supabase\.com:5432/);
  assert.match(hint, /6543/);
  const other = unreachableHint("u@10.1.2.3:5432/db");
  assert.doesNotMatch(other, /supabase/i);
  assert.match(other, /host|port|network/i);
});
