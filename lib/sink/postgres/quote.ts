/**
 * Quoting: the one function every value goes through into SQL text
 * ({@linkcode sqlLiteral}), identifiers, table names and the device id check. Pure
 * functions, no I/O.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import type { DeviceInfo } from "../columns.ts";

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Quotes a string as an SQL literal that means the same to the server and to psql's lexer
 * whatever `standard_conforming_strings` says: `'...'` with `'` doubled, or, when the
 * string holds a backslash, `E'...'` with `\` and `'` doubled. The result starts with `E`
 * in that case, so splice it after a space or an operator, never right after a word.
 *
 * @throws UploadError `data` when the string holds a NUL character (PostgreSQL text cannot)
 *   or an unpaired UTF-16 surrogate (not valid UTF-8).
 *
 * @example
 * ```ts
 * sqlLiteral("it's");  // 'it''s'
 * sqlLiteral("a\\b");  // E'a\\\\b'  (that is: E'a\\b')
 * ```
 */
export function sqlLiteral(s: string): string {
  if (s.includes("\0")) {
    throw new UploadError("data", "Cannot quote text for PostgreSQL: it contains a NUL character");
  }
  if (!s.isWellFormed()) {
    throw new UploadError(
      "data",
      "Cannot quote text for PostgreSQL: it contains an unpaired UTF-16 surrogate",
    );
  }
  const quoted = s.replaceAll("'", "''");
  if (!s.includes("\\")) return `'${quoted}'`;
  return `E'${quoted.replaceAll("\\", "\\\\")}'`;
}

/**
 * Quotes one identifier (a table or column name): `"..."` with `"` doubled.
 *
 * @throws UploadError `config` for an empty name or one holding a NUL character.
 *
 * @example
 * ```ts
 * quoteIdent("device_test"); // "device_test"
 * quoteIdent('my "t"');      // "my ""t"""
 * ```
 */
export function quoteIdent(name: string): string {
  if (name === "" || name.includes("\0") || !name.isWellFormed()) {
    throw new UploadError("config", `Invalid SQL identifier: ${JSON.stringify(name)}`);
  }
  return `"${name.replaceAll('"', '""')}"`;
}

/** A table name split into optional schema and name, quoted for SQL text. */
export interface TableRef {
  /** The schema as given (unquoted), or `undefined` for a name resolved by `search_path`. */
  schema: string | undefined;
  /** The table's own name as given (unquoted). */
  name: string;
  /** Quoted, possibly schema-qualified name, for SQL text. */
  sql: string;
  /** `to_regclass(...)` argument: the quoted name as a literal. */
  regclass: string;
  /** The `devices` table in the same schema, quoted. */
  devicesSql: string;
  /** `to_regclass(...)` argument for the devices table. */
  devicesRegclass: string;
}

/**
 * Splits and quotes a table name: `table` or `schema.table`. The `devices` table lives in
 * the same schema.
 *
 * @throws UploadError `config` for more than one dot, an empty part, or an invalid identifier.
 *
 * @example
 * ```ts
 * tableRef("lab.device_test").sql; // "lab"."device_test"
 * tableRef("device_test").devicesSql; // "devices"
 * ```
 */
export function tableRef(table: string): TableRef {
  const parts = table.split(".");
  if (parts.length > 2 || parts.some((part) => part === "")) {
    throw new UploadError(
      "config",
      `Invalid table name ${JSON.stringify(table)}: expected "table" or "schema.table"`,
    );
  }
  const quoted = parts.map(quoteIdent);
  const prefix = quoted.length === 2 ? `${quoted[0]}.` : "";
  const sql = quoted.join(".");
  const devicesSql = `${prefix}${quoteIdent("devices")}`;
  return {
    schema: parts.length === 2 ? parts[0] : undefined,
    name: parts[parts.length - 1],
    sql,
    regclass: sqlLiteral(sql),
    devicesSql,
    devicesRegclass: sqlLiteral(devicesSql),
  };
}

/**
 * Checks that a device id is a UUID before it is spliced into SQL as a literal.
 *
 * @throws UploadError `config` when it is not.
 */
export function checkDevice(device: DeviceInfo): void {
  if (!UUID_PATTERN.test(device.id)) {
    throw new UploadError("config", `Device id is not a UUID: ${JSON.stringify(device.id)}`, {
      hint: "Set DEVICE_ID to a UUID, or leave it empty to have one made",
    });
  }
}

/** Characters that are not one byte in quoted UTF-8: quotes, backslashes, non-ASCII. */
const NOT_ONE_BYTE = /['\\\u0080-\uffff]/;

/** UTF-8 length of a string, counting what E'...' quoting doubles (`\` and `'`). */
function quotedUtf8Length(s: string): number {
  // Most rows are plain ASCII: one native scan says so.
  if (!NOT_ONE_BYTE.test(s)) return s.length;
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x27 || c === 0x5c) bytes += 2;
    else if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 4; // a surrogate pair: one 4-byte character
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * Bytes a row's JSON text (as `rowToJson` makes it) adds to an upsert statement: its UTF-8
 * length with the quoting's doubled characters, plus a separator. Exact for text with a
 * backslash, an upper bound otherwise. A statement is at most
 * `UPSERT_OVERHEAD_BYTES` (upsert.ts) plus the sum over its rows (device name and batch name
 * longer than a few hundred bytes aside).
 *
 * @example
 * ```ts
 * rowStatementBytes('{"folder_key":"é"}'); // 20
 * ```
 */
export function rowStatementBytes(json: string): number {
  return quotedUtf8Length(json) + 1;
}
