/**
 * Rows and sink items for tests of the write path: a row per key, as the sink gets it.
 *
 * @module
 */

import type { UploadRow } from "../lib/sink/columns.ts";
import { rowToJson } from "../lib/sink/payload.ts";
import type { SinkItem } from "../lib/sink/sink.ts";

/** A row for `key`: a `failed` test whose stats are `{ key }`, its content hash from the key. */
export function row(key: string, extra: Partial<UploadRow> = {}): UploadRow {
  return {
    folder_key: key,
    folder_name: key.split("/").pop()!,
    images: [],
    test_results: { key },
    test_status: "failed",
    test_date: null,
    metadata: { content_hash: `hash-${key}` },
    ...extra,
  };
}

/** The sink items of `keys`' rows (folders under /data). */
export function items(keys: string[]): SinkItem[] {
  return keys.map((key) => {
    const r = row(key);
    return { path: `/data/${key}`, row: r, json: rowToJson(r) };
  });
}

/** `n` keys `f0000`, `f0001`, ... (or with another prefix). */
export function keysOf(n: number, prefix = "f"): string[] {
  return Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(4, "0")}`);
}
