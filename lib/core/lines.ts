/**
 * Text streams as lines: the one line splitter (stdin's folder paths, psql's output).
 *
 * @module
 */

/**
 * Splits a text stream into trimmed, non-empty lines (a trailing `\r` is dropped, so
 * CRLF input works). Used for `deno task quick -`.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      const line = rest.slice(0, nl).replace(/\r$/, "");
      rest = rest.slice(nl + 1);
      if (line.trim() !== "") yield line;
    }
  }
  const last = rest.replace(/\r$/, "");
  if (last.trim() !== "") yield last;
}
