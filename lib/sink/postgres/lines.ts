/**
 * The one line splitter of psql's output: stdout (the reply protocol, COPY rows) and
 * stderr (a statement's messages) are read a line at a time as psql writes them.
 *
 * @module
 */

/** Splits a byte stream into text lines. */
export class LineReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #pending = "";
  #lines: string[] = [];
  #next = 0;
  #done = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  /** The next complete line without its `\n`; null at the end (a partial last line is dropped). */
  async next(): Promise<string | null> {
    while (this.#next >= this.#lines.length) {
      if (this.#done) return null;
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#done = true;
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
