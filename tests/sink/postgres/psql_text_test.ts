/**
 * The text side of the psql protocol: the one-statement check and psql's quoted literals.
 */

import assert from "node:assert/strict";
import { UploadError } from "../../../lib/core/errors.ts";
import { parseQuotedLiteral, terminateStatement } from "../../../lib/sink/postgres/psql_text.ts";

Deno.test("terminateStatement accepts one complete statement and terminates it", () => {
  assert.equal(terminateStatement("select 1"), "select 1\n;\n");
  assert.equal(terminateStatement("select 1;"), "select 1;\n");
  assert.equal(terminateStatement("  select 1 ;  -- done\n"), "  select 1 ;  -- done\n");
  assert.equal(terminateStatement("select ';' -- ;"), "select ';' -- ;\n;\n");
  for (
    const ok of [
      "select 'it''s; \\'",
      "select E'a\\'b;'",
      "select e'\\\\'",
      'select 1 as "a;""b"',
      "do $$ begin perform 1; end $$",
      "do $x$ begin perform '$$'; end $x$;",
      "select a$b$ from t",
      "select $1",
      "select /* a /* nested ; */ comment */ 1",
      "select 1::int, '{}'::text[]",
    ]
  ) {
    assert.doesNotThrow(() => terminateStatement(ok), ok);
  }
  for (
    const [bad, why] of [
      ["", /empty/],
      ["  -- only a comment", /empty/],
      [";", /empty/],
      ["select 1; select 2", /more than one/],
      ["select 1;;", /more than one/],
      ["select 'open", /unterminated quoted string/],
      ["select E'open\\'", /unterminated quoted string/],
      ['select "open', /unterminated quoted identifier/],
      ["do $$ begin", /unterminated dollar quote/],
      ["select 1 /* open", /unterminated \/\* comment/],
      ["select 1 \\gset", /backslash/],
    ] as const
  ) {
    assert.throws(
      () => terminateStatement(bad),
      (error) => error instanceof UploadError && error.kind === "fatal" && why.test(error.message),
      bad,
    );
  }
});

Deno.test("parseQuotedLiteral reads psql's :'var' output", () => {
  assert.equal(parseQuotedLiteral("'plain'"), "plain");
  assert.equal(parseQuotedLiteral("''"), "");
  assert.equal(parseQuotedLiteral("'it''s'"), "it's");
  assert.equal(parseQuotedLiteral(" E'a\\\\b'"), "a\\b");
  assert.equal(parseQuotedLiteral(" E'a''b\nc\\\\d'"), "a'b\nc\\d");
  assert.equal(parseQuotedLiteral("'two\nlines'"), "two\nlines");
  assert.equal(parseQuotedLiteral("'open"), undefined);
  assert.equal(parseQuotedLiteral("'ends with ''"), undefined);
  assert.equal(parseQuotedLiteral("'ends with '''"), "ends with '");
});
