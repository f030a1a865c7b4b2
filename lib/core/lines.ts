/**
 * Text streams as lines: the one line splitter, for psql's output (the reply protocol,
 * COPY rows, a statement's messages, read a line at a time as psql writes them) and for
 * the folder paths `deno task quick -` reads from stdin.
 *
 * @module
 */

/** Splits a byte stream into text lines, pulled one at a time. */
export class LineReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  readonly #keepPartial: boolean;
  #pending = "";
  #lines: string[] = [];
  #next = 0;
  #done = false;

  /**
   * @param keepPartial whether a last line without its `\n` is a line (stdin) or the
   *   remains of a process that died mid-write (psql, the default: dropped).
   */
  constructor(stream: ReadableStream<Uint8Array>, keepPartial = false) {
    this.#reader = stream.getReader();
    this.#keepPartial = keepPartial;
  }

  /** The next line without its `\n`; null at the end. */
  async next(): Promise<string | null> {
    while (this.#next >= this.#lines.length) {
      if (this.#done) return null;
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#done = true;
        const last = this.#pending + this.#decoder.decode();
        this.#lines = this.#keepPartial && last !== "" ? [last] : [];
        this.#next = 0;
        this.#pending = "";
        continue;
      }
      const text = this.#pending + this.#decoder.decode(value, { stream: true });
      const lines = text.split("\n");
      this.#pending = lines.pop() ?? "";
      this.#lines = lines;
      this.#next = 0;
    }
    return this.#lines[this.#next++];
  }

  /** Reads and discards everything up to the end of the stream. */
  async drain(): Promise<void> {
    while (!this.#done) {
      const { done } = await this.#reader.read();
      if (done) this.#done = true;
    }
    this.#lines = [];
  }
}

/**
 * Splits a text stream into trimmed, non-empty lines (a trailing `\r` is dropped, so
 * CRLF input works). Used for `deno task quick -`.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = new LineReader(stream, true);
  for (let line = await reader.next(); line !== null; line = await reader.next()) {
    const text = line.replace(/\r$/, "");
    if (text.trim() !== "") yield text;
  }
}
