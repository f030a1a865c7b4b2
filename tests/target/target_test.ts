/**
 * Which database a run writes to, and how a URL becomes psql settings: the precedence of
 * the sources, the password moved out of argv into the child's environment (user-info and
 * `?password=`, percent-decoded), TLS for non-local hosts only, redaction, the target
 * identity kept in the tracker, and the hint for Supabase's IPv6-only direct host.
 * Pure functions: no server needed.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../lib/core/errors.ts";
import {
  connectionFromUrl,
  embeddedDataDir,
  isLocalHost,
  libpqConnection,
  redactUrl,
  resolveTarget,
  targetIdFromUrl,
  unreachableHint,
} from "../../lib/target/target.ts";
import { connectorFor } from "../../lib/target/connect.ts";
import { errorEvent, targetLine } from "../../lib/cli/main.ts";
import { exitCodeFor } from "../../lib/core/errors.ts";
import { oneLine } from "../../lib/cli/progress.ts";
import { seededRandom } from "../../support/run.ts";
import { leakedTrigrams, randomPassword } from "../../support/secrets.ts";

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
  // The display names no user either: the user info stays out of every message.
  assert.equal(conn.display, "db.example.com:6543/postgres");
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
  assert.equal(conn.display, "h:1/my db");
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
  // The whole user info goes, user name included (a password pasted there shows no more).
  assert.equal(redactUrl("postgresql://u:secret@h:5432/db"), "postgresql://***@h:5432/db");
  assert.equal(
    redactUrl("postgresql://u@h/db?password=secret&x=1"),
    "postgresql://***@h/db?password=***&x=1",
  );
  assert.equal(
    redactUrl("postgresql://h/db?a=1&PASSWORD=secret"),
    "postgresql://h/db?a=1&PASSWORD=***",
  );
  assert.equal(redactUrl("postgresql://h/db"), "postgresql://h/db");
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

/** The error a URL is refused with (kind `config`), or fails the test. */
function refusal(url: string, source = "$SUPABASE_DB_URL"): UploadError {
  try {
    connectionFromUrl(url, { source });
  } catch (error) {
    assert.ok(error instanceof UploadError, String(error));
    assert.equal(error.kind, "config");
    return error;
  }
  assert.fail(`accepted: ${url}`);
}

Deno.test("connectionFromUrl refuses an unencoded # ? / in the password, echoing nothing of the user info", () => {
  // The reported case: a password holding @ and #, pasted as it is. The URL parser ends the
  // host at `#`, so `dE$FG7` (part of the password) became the host and the first line.
  const reported = "postgresql://lab:xY.-abC@dE$FG7#@127.0.0.1:5432/uploads";
  for (
    const url of [
      reported,
      "postgresql://lab:ab/cd@127.0.0.1:5432/uploads",
      "postgresql://lab:ab?cd@db.example.com/uploads",
      "postgresql://lab:a@b#c@db.example.com/uploads",
      "postgres://lab:x/y?z#w@db.example.com:6543/postgres?sslmode=require",
    ]
  ) {
    const error = refusal(url);
    const shown = `${error.message}\n${error.hint}\n${JSON.stringify(errorEvent(error, 2))}`;
    assert.match(error.message, /^Cannot read the URL in \$SUPABASE_DB_URL: an "@" comes after/);
    assert.match(error.hint ?? "", /%23/);
    assert.match(error.hint ?? "", /%2F/);
    assert.match(error.hint ?? "", /%40/);
    assert.match(error.hint ?? "", /%3F/);
    assert.doesNotMatch(error.message, /\n/);
    // Nothing of "lab:<password>" is printed: not the user, not a piece of the password.
    for (const piece of ["lab", "abC", "dE$", "FG7", "ab/", "b#c", "x/y"]) {
      assert.ok(!shown.includes(piece), `${url}: "${piece}" shown in\n${shown}`);
    }
  }
  assert.match(refusal(reported, "--db-url").message, /^Cannot read the URL of --db-url: /);
  // Percent-encoded, the same password works and lands whole in PGPASSWORD.
  const encoded = connectionFromUrl(
    `postgresql://lab:${encodeURIComponent("xY.-abC@dE$FG7#")}@127.0.0.1:5432/uploads`,
  );
  assert.deepEqual(encoded.env, { PGPASSWORD: "xY.-abC@dE$FG7#" });
  assert.equal(encoded.display, "127.0.0.1:5432/uploads");
  // A bad escape is refused the same way, naming the part and never its text.
  const bad = refusal("postgresql://lab:p%zzword@h/db");
  assert.match(bad.message, /password's percent-encoding is invalid/);
  assert.ok(!`${bad.message}${bad.hint}`.includes("zzw"), bad.message);
  const badUser = refusal("postgresql://la%zzb:pw@h/db");
  assert.match(badUser.message, /user name's percent-encoding is invalid/);
});

Deno.test("targetLine: the first line names host and database, then where the URL came from", () => {
  const connector = connectorFor({
    kind: "url",
    url: "postgresql://postgres.abcd:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres",
    source: "$SUPABASE_DB_URL",
  }, {});
  assert.equal(
    targetLine(connector),
    "Uploading to aws-0-eu-central-1.pooler.supabase.com:5432/postgres (from $SUPABASE_DB_URL)",
  );
  // Messages name the target without its source: it never sits inside a sentence.
  assert.equal(connector.display, "aws-0-eu-central-1.pooler.supabase.com:5432/postgres");
  assert.equal(connector.source, "$SUPABASE_DB_URL");
  const libpq = connectorFor({ kind: "libpq", source: "$PGHOST" }, { PGHOST: "db.lab" });
  assert.equal(targetLine(libpq), "Uploading to libpq defaults (PGHOST=db.lab) (from $PGHOST)");
});

Deno.test("sslmode: a non-local PGHOST gets the same sslmode=require as a URL naming that host", () => {
  const url = connectionFromUrl("postgresql://u:p@db.lab.example/db");
  assert.deepEqual(url.tls, { mode: "require", added: true, via: "url" });
  const env = libpqConnection({ PGHOST: "db.lab.example", PGUSER: "u" });
  assert.deepEqual(env.env, { PGSSLMODE: "require" });
  assert.deepEqual(env.tls, { mode: "require", added: true, via: "env" });
  // A host list with a remote host among local ones: TLS too (as for any remote host).
  assert.deepEqual(libpqConnection({ PGHOST: "localhost,db.lab.example" }).env, {
    PGSSLMODE: "require",
  });
  // Local hosts and sockets: libpq's own default, both ways.
  for (const host of ["localhost", "127.0.0.1", "/var/run/postgresql"]) {
    assert.deepEqual(libpqConnection({ PGHOST: host }).env, {}, host);
    assert.equal(libpqConnection({ PGHOST: host }).tls?.added, false, host);
  }
  // An sslmode the user set wins on both paths (PGREQUIRESSL, the old spelling, too).
  assert.deepEqual(libpqConnection({ PGHOST: "db.lab.example", PGSSLMODE: "disable" }).env, {});
  assert.deepEqual(libpqConnection({ PGHOST: "db.lab.example", PGREQUIRESSL: "1" }).env, {});
  const kept = connectionFromUrl("postgresql://u:p@db.lab.example/db", {
    env: { PGSSLMODE: "disable" },
  });
  assert.equal(new URL(psqlUrl(kept.args)).searchParams.get("sslmode"), null);
  assert.deepEqual(kept.tls, { mode: "disable", added: false, via: "env" });
  // libpq's display names no user (PGUSER), like the URL's.
  assert.equal(env.display, "libpq defaults (PGHOST=db.lab.example)");
});

/** What the tool shows of a URL: first line, psql's argv, tracker id, or the error it prints. */
function shownFor(url: string): { text: string; refused: string | null; password?: string } {
  let connector;
  try {
    connector = connectorFor({ kind: "url", url, source: "$SUPABASE_DB_URL" }, {});
  } catch (error) {
    assert.ok(error instanceof UploadError, String(error));
    const code = exitCodeFor(error);
    assert.equal(code, 2);
    // As runMain prints it: `Error:` and `Hint:` lines, and the --json error event.
    const text = [
      `Error: ${oneLine(redactUrl(error.message))}`,
      `Hint: ${error.hint}`,
      JSON.stringify(errorEvent(error, code)),
      redactUrl(url),
    ].join("\n");
    return { text, refused: error.message };
  }
  const conn = connectionFromUrl(url, { source: "$SUPABASE_DB_URL" });
  const text = [
    targetLine(connector),
    JSON.stringify({ event: "run_start", target: connector.display }),
    `Cannot connect to ${connector.display}: timeout expired`,
    connector.id,
    JSON.stringify(conn.args),
    redactUrl(url),
  ].join("\n");
  return { text, refused: null, password: conn.env.PGPASSWORD };
}

Deno.test("password property: 1,000 random printable-ASCII passwords, raw and encoded, never shown", () => {
  const random = seededRandom(19_4);
  const host = "127.0.0.1:5432/uploads";
  const rest = `postgresql://lab:@${host}`;
  // What the tool prints for unrelated passwords of each outcome: its own fixed words.
  const words = [
    shownFor(`postgresql://lab:QQQQ@${host}`).text,
    shownFor(`postgresql://lab:QQ#QQ@${host}`).text,
    shownFor(`postgresql://lab:QQ%zQQ@${host}`).text,
  ].join("\n");
  assert.ok(!words.includes("QQ"), words);
  let refused = 0;
  for (let i = 0; i < 1000; i++) {
    const password = randomPassword(random);
    for (const form of ["raw", "encoded"] as const) {
      const text = form === "raw" ? password : encodeURIComponent(password);
      const url = `postgresql://lab:${text}@${host}`;
      const shown = shownFor(url);
      const leaks = leakedTrigrams(shown.text, password, `${rest}\n${words}`);
      assert.deepEqual(
        leaks,
        [],
        `${form} ${JSON.stringify(password)} shows ${leaks}:\n${shown.text}`,
      );
      if (form === "encoded") {
        // Encoded, every password is taken whole, and only psql's environment holds it.
        assert.equal(shown.refused, null, `${JSON.stringify(password)}: ${shown.refused}`);
        assert.equal(shown.password, password);
      } else if (/[/?#]/.test(password)) {
        // Raw with / ? or #: refused, never misread as a host, port or database.
        assert.ok(shown.refused !== null, `accepted raw ${JSON.stringify(password)}`);
      }
      if (form === "raw" && shown.refused !== null) refused++;
    }
  }
  // About half the raw passwords hold one of / ? # or a bad % escape and are refused; the
  // property covered both outcomes.
  assert.ok(refused > 200 && refused < 800, `${refused} of 1000 raw passwords refused`);
});
