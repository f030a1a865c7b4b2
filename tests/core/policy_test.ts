/**
 * The error policy: SQLSTATE and connection-message classification, and the one decision
 * between retry, split, fail and stop.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../lib/core/errors.ts";
import {
  actionFor,
  classifyConnectFailure,
  classifySqlstate,
  connectFailureKind,
  connectHint,
  isAbortedTransaction,
  isLockTimeout,
  isMissingTable,
  isMissingTableOrColumn,
  isNotNullRefusal,
  isPermissionRefusal,
  isReadOnlyRefusal,
  isStatementTimeout,
  isTempTableRefusal,
  isTransientSqlstate,
  probeRefusalKind,
  psqlExitKind,
  schemaRefusalKind,
} from "../../lib/core/policy.ts";

Deno.test("classifySqlstate maps SQLSTATEs to error kinds", () => {
  const table: Array<[string, string]> = [
    ["08000", "transient"],
    ["08006", "transient"],
    ["08001", "transient"],
    ["53300", "transient"],
    ["53200", "transient"],
    ["53100", "transient"],
    ["57P01", "transient"],
    ["57P02", "transient"],
    ["57P03", "transient"],
    ["40001", "transient"],
    ["40P01", "transient"],
    ["57014", "timeout"],
    ["55P03", "blocked"],
    ["42501", "config"],
    ["28000", "config"],
    ["28P01", "config"],
    ["3D000", "config"],
    ["42P01", "config"],
    ["42703", "config"],
    ["42P10", "config"],
    ["42601", "config"],
    ["22P02", "data"],
    ["22001", "data"],
    ["22P05", "data"],
    ["23505", "data"],
    ["23502", "data"],
    ["23503", "data"],
    ["54000", "data"],
    ["XX000", "data"],
    ["P0001", "data"],
    ["", "data"],
  ];
  for (const [code, kind] of table) assert.equal(classifySqlstate(code), kind, code);
});

Deno.test("classifyConnectFailure reads psql's connection errors", () => {
  const table: Array<[string, string]> = [
    [
      'connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?',
      "transient",
    ],
    ['connection to server at "10.0.0.1", port 5432 failed: timeout expired', "transient"],
    ["FATAL:  sorry, too many clients already", "transient"],
    ["FATAL:  the database system is starting up", "transient"],
    ["FATAL:  the database system is shutting down", "transient"],
    [
      'connection to server at "db.abc.supabase.co" (2a05::1), port 5432 failed: Network is unreachable',
      "transient",
    ],
    [
      'could not translate host name "nope.invalid" to address: Name or service not known',
      "transient",
    ],
    ['FATAL:  password authentication failed for user "tester"', "config"],
    ['FATAL:  role "nobody" does not exist', "config"],
    ['FATAL:  database "nowhere" does not exist', "config"],
    ["fe_sendauth: no password supplied", "config"],
    ['invalid URI query parameter: "bogus"', "config"],
  ];
  for (const [stderr, kind] of table) assert.equal(classifyConnectFailure(stderr), kind, stderr);
});

Deno.test("actionFor: one decision per error kind and batch size", () => {
  const table: [string, number, string][] = [
    ["transient", 10, "retry"],
    ["transient", 1, "retry"],
    ["blocked", 10, "retry"],
    ["blocked", 1, "retry"],
    ["data", 10, "split"],
    ["data", 1, "fail"],
    ["timeout", 2, "split"],
    ["timeout", 1, "fail"],
    ["folder", 1, "fail"],
    ["config", 10, "stop"],
    ["usage", 1, "stop"],
    ["locked", 1, "stop"],
    ["unreachable", 10, "stop"],
    ["interrupted", 10, "stop"],
    ["fatal", 10, "stop"],
  ];
  for (const [kind, rows, action] of table) {
    const error = new UploadError(kind as UploadError["kind"], "x");
    assert.equal(actionFor(error, rows), action, `${kind} with ${rows} rows`);
  }
  assert.equal(actionFor(new Error("a bug"), 10), "stop");
  assert.equal(actionFor(new RangeError("too deep"), 1), "stop");
});

Deno.test("connectHint: TLS the uploader added, and sslmode=disable against a TLS-only server", () => {
  const noSsl = 'connection to server at "lab.example" (10.0.0.5), port 5432 failed: ' +
    "server does not support SSL, but SSL was required";
  const display = "lab.example:5432/uploads";
  // The uploader added sslmode=require: the hint says so, and how to turn it off.
  const url = connectHint("config", noSsl, {
    display,
    tls: { mode: "require", added: true, via: "url" },
  });
  assert.match(url ?? "", /uploader asked for TLS \(sslmode=require\)/);
  assert.match(url ?? "", /\?sslmode=disable/);
  const env = connectHint("config", noSsl, {
    display,
    tls: { mode: "require", added: true, via: "env" },
  });
  assert.match(env ?? "", /PGSSLMODE=disable/);
  // The user asked for TLS: the server's own message is the whole story.
  assert.equal(
    connectHint("config", noSsl, { display, tls: { mode: "require", added: false, via: "url" } }),
    undefined,
  );
  // A server taking only TLS, and a URL saying sslmode=disable.
  const hba = 'connection to server at "lab.example" (10.0.0.5), port 5432 failed: FATAL:  ' +
    'no pg_hba.conf entry for host "10.0.0.9", user "lab", database "uploads", no encryption';
  const disable = connectHint("config", hba, {
    display,
    tls: { mode: "disable", added: false, via: "url" },
  });
  assert.match(disable ?? "", /takes only TLS connections and the URL says sslmode=disable/);
  // Without sslmode=disable the same FATAL is about pg_hba.conf alone: no TLS hint.
  assert.equal(connectHint("config", hba, { display }), undefined);
});

Deno.test("the named SQLSTATE predicates: each says yes to its code alone", () => {
  const cases: [(code: string) => boolean, string[]][] = [
    [isStatementTimeout, ["57014"]],
    [isLockTimeout, ["55P03"]],
    [isReadOnlyRefusal, ["25006"]],
    [isPermissionRefusal, ["42501"]],
    [isNotNullRefusal, ["23502"]],
    [isMissingTable, ["42P01"]],
    [isMissingTableOrColumn, ["42P01", "42703"]],
    [isAbortedTransaction, ["25P02"]],
    [isTransientSqlstate, ["08006", "53300", "57P01", "40001", "40P01"]],
  ];
  const all = [
    "57014",
    "55P03",
    "25006",
    "42501",
    "23502",
    "42P01",
    "42703",
    "25P02",
    "08006",
    "53300",
    "57P01",
    "40001",
    "40P01",
    "23505",
  ];
  for (const [predicate, yes] of cases) {
    for (const code of all) {
      assert.equal(predicate(code), yes.includes(code), `${predicate.name} ${code}`);
    }
  }
  assert.equal(isStatementTimeout(undefined), false);
});

Deno.test("the write path's classifications: schema refusals, the probe, psql's exit, a failed connect", () => {
  assert.equal(
    isTempTableRefusal("42501", 'permission denied to create temporary tables in database "d"'),
    true,
  );
  assert.equal(isTempTableRefusal("42501", "permission denied for table device_test"), false);
  assert.equal(isTempTableRefusal("42P01", "temporary tables"), false);
  assert.equal(schemaRefusalKind("40P01"), "transient");
  assert.equal(schemaRefusalKind("42501"), "config");
  assert.equal(schemaRefusalKind("23505"), "config");
  assert.equal(
    probeRefusalKind("57014"),
    null,
    "a probe cut short by statement_timeout: the session works",
  );
  assert.equal(probeRefusalKind("57P03"), "transient");
  assert.equal(probeRefusalKind("3D000"), "config");
  assert.equal(psqlExitKind(2, "could not connect to server: Connection refused"), "transient");
  assert.equal(psqlExitKind(2, 'password authentication failed for user "u"'), "config");
  assert.equal(psqlExitKind(1, "ERROR:  permission denied for table device_test"), "config");
  const refused = "could not connect to server: Connection refused";
  const auth = 'password authentication failed for user "u"';
  assert.equal(connectFailureKind(auth, { timedOut: true, signalled: false }), "transient");
  assert.equal(connectFailureKind(auth, { timedOut: false, signalled: true }), "transient");
  assert.equal(connectFailureKind(auth, { timedOut: false, signalled: false }), "config");
  assert.equal(connectFailureKind(refused, { timedOut: false, signalled: false }), "transient");
});
