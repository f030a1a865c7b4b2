/**
 * The text side of the psql protocol, without I/O: checking that SQL is exactly one
 * complete statement before it is written to psql's stdin (lexed the way psql lexes it),
 * and reading the quoted literals psql prints for `:'LAST_ERROR_MESSAGE'`.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";

/**
 * Checks that `sql` is exactly one complete statement psql will pass to the server as
 * is, and returns it terminated by `;` and a newline. Lexes like psql: quotes (`'...'`,
 * `E'...'`), quoted identifiers, dollar quotes, `--` and nested `/* *\/` comments. Plain
 * `'...'` literals are read as with `standard_conforming_strings` on; the project's
 * `sqlLiteral` (lib/sink/postgres/quote.ts) uses `E'...'` for any text with a backslash, so both readings
 * agree.
 *
 * @throws UploadError `fatal` (a bug in the caller) for an empty statement, several
 *   statements, an unterminated quote or comment (psql would read the reply trailer as
 *   part of it and never answer), or a backslash outside quotes (a psql meta-command).
 *
 * @example
 * ```ts
 * terminateStatement("select 1"); // "select 1;\n"
 * ```
 */
export function terminateStatement(sql: string): string {
  const fail = (why: string) =>
    new UploadError("fatal", `Refusing to send SQL to psql: ${why}`, {
      subject: sql.length > 120 ? `${sql.slice(0, 120)}...` : sql,
    });
  let i = 0;
  const n = sql.length;
  let sawCode = false; // something other than blanks and comments since the last ";"
  let terminated = false; // a top-level ";" was seen and nothing but blanks/comments since
  const isIdentStart = (c: string) => /[A-Za-z_\u0080-\uffff]/.test(c);
  const isIdentChar = (c: string) => /[A-Za-z0-9_$\u0080-\uffff]/.test(c);
  while (i < n) {
    const c = sql[i];
    if (c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\f" || c === "\v") {
      i++;
      continue;
    }
    const afterComment = skipComment(sql, i);
    if (afterComment < 0) throw fail("unterminated /* comment");
    if (afterComment > i) {
      i = afterComment;
      continue;
    }
    if (terminated) throw fail("more than one statement");
    if (c === ";") {
      if (!sawCode) throw fail("empty statement");
      terminated = true;
      i++;
      continue;
    }
    sawCode = true;
    if (c === "\\") throw fail("a backslash outside quotes (psql would run it as a command)");
    if (c === "'") {
      i = skipQuoted(sql, i + 1, false);
      if (i < 0) throw fail("unterminated quoted string");
      continue;
    }
    if (c === '"') {
      for (i++;; i += 2) {
        i = sql.indexOf('"', i);
        if (i < 0) throw fail("unterminated quoted identifier");
        if (sql[i + 1] !== '"') break;
      }
      i++;
      continue;
    }
    if (c === "$") {
      const match = /^\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(
        sql.slice(i, i + 64),
      );
      if (match) {
        const tag = match[0];
        const end = sql.indexOf(tag, i + tag.length);
        if (end < 0) throw fail(`unterminated dollar quote ${tag}`);
        i = end + tag.length;
        continue;
      }
      i++; // a parameter such as $1
      continue;
    }
    if (isIdentStart(c)) {
      if ((c === "E" || c === "e") && sql[i + 1] === "'") {
        i = skipQuoted(sql, i + 2, true);
        if (i < 0) throw fail("unterminated quoted string");
        continue;
      }
      while (i < n && isIdentChar(sql[i])) i++;
      continue;
    }
    i++;
  }
  if (!sawCode) throw fail("empty statement");
  return terminated ? `${sql.trimEnd()}\n` : `${sql.trimEnd()}\n;\n`;
}

/**
 * Index just after a `--` comment (its line) or a nested `/* *\/` comment starting at `i`;
 * `i` itself when no comment starts there; -1 for a block comment never closed.
 */
function skipComment(sql: string, i: number): number {
  if (sql[i] === "-" && sql[i + 1] === "-") {
    const end = sql.indexOf("\n", i);
    return end < 0 ? sql.length : end + 1;
  }
  if (sql[i] !== "/" || sql[i + 1] !== "*") return i;
  let depth = 1;
  let at = i + 2;
  while (depth > 0) {
    if (at >= sql.length) return -1;
    if (sql[at] === "/" && sql[at + 1] === "*") {
      depth++;
      at += 2;
    } else if (sql[at] === "*" && sql[at + 1] === "/") {
      depth--;
      at += 2;
    } else at++;
  }
  return at;
}

/** Index just after the closing quote of a literal whose body starts at `start`, or -1. */
function skipQuoted(sql: string, start: number, escapes: boolean): number {
  const pattern = escapes ? /['\\]/g : /'/g;
  pattern.lastIndex = start;
  for (;;) {
    const match = pattern.exec(sql);
    if (match === null) return -1;
    const at = match.index;
    if (sql[at] === "\\") {
      pattern.lastIndex = at + 2;
      continue;
    }
    if (sql[at + 1] === "'") {
      pattern.lastIndex = at + 2;
      continue;
    }
    return at + 1;
  }
}

/**
 * Reads a literal as psql's `:'var'` prints it: `'...'` with `''` for `'`, or (with a
 * leading space) ` E'...'` where `\\` stands for `\`. Returns undefined while the closing
 * quote has not arrived (the message spans more lines).
 */
export function parseQuotedLiteral(text: string): string | undefined {
  let s = text.trimStart();
  let escapes = false;
  if (s.startsWith("E'") || s.startsWith("e'")) {
    escapes = true;
    s = s.slice(1);
  }
  if (!s.startsWith("'")) {
    throw new UploadError("fatal", `Malformed psql reply: expected a quoted literal, got ${s}`);
  }
  let value = "";
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (c === "'") {
      if (s[i + 1] === "'") {
        value += "'";
        i++;
        continue;
      }
      return value;
    }
    if (c === "\\" && escapes && i + 1 < s.length) {
      value += s[i + 1];
      i++;
      continue;
    }
    value += c;
  }
  return undefined;
}
