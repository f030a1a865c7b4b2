/**
 * COPY's text format, without I/O: a field escaped for a line of `COPY ... FROM STDIN`
 * ({@linkcode copyField}), a text array as the literal COPY reads back
 * ({@linkcode textArrayLiteral}), and a field of `COPY ... TO STDOUT` decoded
 * ({@linkcode decodeCopyText}).
 *
 * @module
 */

/**
 * Escapes a value as one field of COPY's text format: `\N` for null; backslash, newline,
 * carriage return and tab as backslash escapes. Text only (no NUL: PostgreSQL refuses it).
 *
 * @example
 * ```ts
 * copyField("a\tb\\c"); // "a\\tb\\\\c"
 * copyField(null); // "\\N"
 * ```
 */
export function copyField(value: string | null): string {
  if (value === null) return "\\N";
  return /[\\\n\r\t]/.test(value) ? value.replace(/[\\\n\r\t]/g, escapeCopyChar) : value;
}

function escapeCopyChar(c: string): string {
  return c === "\\" ? "\\\\" : c === "\n" ? "\\n" : c === "\r" ? "\\r" : "\\t";
}

/**
 * A PostgreSQL array literal of text elements, each double-quoted with `"` and `\`
 * escaped: what `'...'::text[]` reads back as the same strings.
 *
 * @example
 * ```ts
 * textArrayLiteral(['a "b"', "c"]); // '{"a \\"b\\"","c"}'
 * ```
 */
export function textArrayLiteral(items: readonly string[]): string {
  let out = "{";
  for (let i = 0; i < items.length; i++) {
    if (i > 0) out += ",";
    const item = items[i];
    out += `"${/["\\]/.test(item) ? item.replace(/["\\]/g, "\\$&") : item}"`;
  }
  return `${out}}`;
}

/** One column of COPY's text format: `\N` is null; backslash escapes are undone. */
export function decodeCopyText(field: string): string | null {
  if (field === "\\N") return null;
  if (!field.includes("\\")) return field;
  return field.replace(/\\(.)/g, (_, c: string) => COPY_ESCAPES[c] ?? c);
}

const COPY_ESCAPES: Record<string, string> = {
  b: "\b",
  f: "\f",
  n: "\n",
  r: "\r",
  t: "\t",
  v: "\v",
};
