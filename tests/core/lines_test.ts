import assert from "node:assert/strict";
import { LineReader, readLines } from "../../lib/core/lines.ts";

/** A stream that delivers `parts` as separate chunks (lines split across them). */
function chunks(...parts: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return ReadableStream.from(parts.map((p) => encoder.encode(p)));
}

async function all(reader: LineReader): Promise<string[]> {
  const out: string[] = [];
  for (let line = await reader.next(); line !== null; line = await reader.next()) out.push(line);
  return out;
}

Deno.test("LineReader: lines split across chunks, a partial last line dropped or kept", async () => {
  assert.deepEqual(await all(new LineReader(chunks("a\nb", "c\n\nd"))), ["a", "bc", ""]);
  assert.deepEqual(await all(new LineReader(chunks("a\nb", "c\n\nd"), true)), ["a", "bc", "", "d"]);
  // A character split between chunks is decoded whole.
  const euro = new TextEncoder().encode("€\n");
  const split = ReadableStream.from([euro.slice(0, 1), euro.slice(1)]);
  assert.deepEqual(await all(new LineReader(split)), ["€"]);
});

Deno.test("readLines: trimmed of \\r, blank lines skipped, the last line without \\n kept", async () => {
  const lines: string[] = [];
  for await (const line of readLines(chunks("x\r\n", "  \n", "y\nz"))) lines.push(line);
  assert.deepEqual(lines, ["x", "y", "z"]);
});
