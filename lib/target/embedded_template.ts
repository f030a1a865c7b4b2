/**
 * The embedded database's template: an empty PGlite database, made once by
 * `deno task embedded-template` (scripts/embedded_template.ts) and kept in the repository
 * as `lib/target/embedded_template.tar.br`, a tar archive compressed with brotli (about 1.3 MB;
 * the folder it holds is 39 MB). A new embedded database is this archive unpacked, not the
 * output of initdb: initdb in WebAssembly ran two PostgreSQL instances at once and took the
 * process past 550 MB of RSS for several seconds; unpacking takes a fraction of a second
 * and no WebAssembly at all.
 *
 * The archive's first entry, `template.json`, is not part of the database: it records the
 * PGlite version that made it and the PostgreSQL major version of its files
 * ({@linkcode TemplateManifest}). PGlite opens a folder only when its catalog matches the
 * PGlite build, so the template is remade whenever the PGlite pin in deno.json moves; a
 * test (tests/target/embedded_template_test.ts) fails until it is.
 *
 * Only what a PostgreSQL data directory holds is accepted when unpacking: regular files
 * and directories with relative names, no `..`; directories are made 0700 and files 0600.
 *
 * @module
 */

import { brotliCompressSync, constants, createBrotliDecompress } from "node:zlib";
import { join } from "node:path";
import { messageOf, UploadError } from "../core/errors.ts";

/** The template archive beside this module. */
export const TEMPLATE_URL: URL = new URL("./embedded_template.tar.br", import.meta.url);
/** Name of the archive's first entry, the manifest (not unpacked). */
export const MANIFEST_NAME = "template.json";

/** What `template.json` records. */
export interface TemplateManifest {
  /** The `@electric-sql/pglite` version that made the database (e.g. `0.5.16`). */
  pglite: string;
  /** The database's PG_VERSION (the PostgreSQL major version, e.g. `18`). */
  postgres: string;
}

/** One entry of an archive {@linkcode packTemplate} writes. */
interface TemplateEntry {
  /** Relative path, `/`-separated. */
  path: string;
  /** Whether it is a directory (else a regular file). */
  directory: boolean;
  /** The file's bytes (empty for a directory). */
  data: Uint8Array;
}

/** Options for {@linkcode extractTemplate}. */
export interface ExtractOptions {
  /** The archive. Default {@linkcode TEMPLATE_URL}. */
  source?: URL | string;
  /** Stops between files when it aborts (throws its reason); the caller removes `dest`. */
  signal?: AbortSignal;
}

const BLOCK = 512;
/** Size of the decompressed chunks: few enough to be quick, small enough to hold. */
const INFLATE_CHUNK = 1 << 18;
/**
 * Brotli's window (2^20 bytes): what unpacking holds besides a chunk. The largest, 2^24,
 * makes the file 10 % smaller and costs 16 MB of memory while unpacking.
 */
const WINDOW_BITS = 20;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Unpacks the template into `dest`, an existing empty directory, and returns its manifest.
 * The archive is decompressed as a stream and each file written as its bytes arrive, so
 * the process holds a few chunks at a time, never the 39 MB folder. Each file is written
 * with one short synchronous call (a thread-pool round trip per file cost more than the
 * write on a busy machine); between chunks it gives the event loop a turn every 20 ms, so
 * timers and signal handlers keep running.
 *
 * @throws {UploadError} `fatal` when the archive is missing or damaged; the signal's reason
 *   when `options.signal` aborts.
 */
export async function extractTemplate(
  dest: string,
  options: ExtractOptions = {},
): Promise<TemplateManifest> {
  const source = options.source ?? TEMPLATE_URL;
  const archive = await _openArchive(source);
  try {
    const manifest = await _readManifest(archive);
    for (;;) {
      options.signal?.throwIfAborted();
      const entry = await archive.next();
      if (entry === null) break;
      const path = join(dest, ...entry.path.split("/"));
      if (entry.directory) {
        Deno.mkdirSync(path, { mode: 0o700 });
        continue;
      }
      await _writeEntry(archive, path, entry.size);
    }
    options.signal?.throwIfAborted();
    return manifest;
  } finally {
    archive.close();
  }
}

/** Files up to this size are gathered and written in one call. */
const SMALL_FILE = 1 << 20;

/** Writes the current entry's `size` bytes to a new file at `path` (mode 0600). */
async function _writeEntry(archive: _TarStream, path: string, size: number): Promise<void> {
  const options = { createNew: true, mode: 0o600 };
  if (size <= SMALL_FILE) {
    Deno.writeFileSync(path, await archive.bytes(size), options);
    return;
  }
  const file = Deno.openSync(path, { write: true, ...options });
  try {
    await archive.body(size, (piece) => {
      for (let done = 0; done < piece.length;) done += file.writeSync(piece.subarray(done));
    });
  } finally {
    file.close();
  }
}

/**
 * Reads the manifest of a template archive (its first entry) without unpacking the rest.
 *
 * @throws {UploadError} `fatal` when the archive is missing or damaged.
 */
export async function readTemplateManifest(
  source: URL | string = TEMPLATE_URL,
): Promise<TemplateManifest> {
  const archive = await _openArchive(source);
  try {
    return await _readManifest(archive);
  } finally {
    archive.close();
  }
}

async function _openArchive(source: URL | string): Promise<_TarStream> {
  const label = source instanceof URL && source.protocol === "file:"
    ? decodeURIComponent(source.pathname)
    : String(source);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(source);
  } catch (error) {
    throw _damaged(label, messageOf(error), error);
  }
  const inflater = createBrotliDecompress({ chunkSize: INFLATE_CHUNK });
  inflater.end(bytes);
  return new _TarStream(inflater, label);
}

async function _readManifest(archive: _TarStream): Promise<TemplateManifest> {
  const first = await archive.next();
  if (!first || first.directory || first.path !== MANIFEST_NAME) {
    throw archive.damaged(`its first entry is not ${MANIFEST_NAME}`);
  }
  const text = decoder.decode(await archive.bytes(first.size));
  let manifest: TemplateManifest;
  try {
    manifest = JSON.parse(text);
  } catch (error) {
    throw archive.damaged(`${MANIFEST_NAME}: ${messageOf(error)}`, error);
  }
  if (typeof manifest.pglite !== "string" || typeof manifest.postgres !== "string") {
    throw archive.damaged(`${MANIFEST_NAME} names no pglite and postgres version`);
  }
  return manifest;
}

/** A header of the archive: what follows it. */
interface _TarHeader {
  path: string;
  directory: boolean;
  size: number;
}

/**
 * Reads a ustar archive made by {@linkcode _tar} from a stream of decompressed chunks:
 * `next()` for each header, then `body()` for that entry's bytes, piece by piece.
 */
class _TarStream {
  #chunks: AsyncIterator<Uint8Array>;
  #inflater: ReturnType<typeof createBrotliDecompress>;
  #chunk: Uint8Array = new Uint8Array();
  #offset = 0;
  #yieldedAt = performance.now();
  readonly label: string;

  constructor(inflater: ReturnType<typeof createBrotliDecompress>, label: string) {
    this.#inflater = inflater;
    this.#chunks = inflater[Symbol.asyncIterator]();
    this.label = label;
  }

  /** The next entry's header, or null at the archive's end blocks. */
  async next(): Promise<_TarHeader | null> {
    const header = new Uint8Array(BLOCK);
    let at = 0;
    await this.#take(BLOCK, (piece) => {
      header.set(piece, at);
      at += piece.length;
    });
    if (header.every((byte) => byte === 0)) return null;
    const path = _field(header, 0, 100);
    const size = parseInt(_field(header, 124, 12).trim() || "0", 8);
    const type = header[156];
    if (!_safePath(path)) throw this.damaged(`unsafe entry name ${JSON.stringify(path)}`);
    if (type !== 0x30 && type !== 0 && type !== 0x35) {
      throw this.damaged(`${path} is neither a file nor a directory`);
    }
    if (!Number.isSafeInteger(size) || size < 0) throw this.damaged(`${path} has no size`);
    return { path, directory: type === 0x35, size: type === 0x35 ? 0 : size };
  }

  /** Hands the entry's `size` bytes to `sink` in pieces, then skips its padding. */
  async body(size: number, sink: (piece: Uint8Array) => Promise<void> | void): Promise<void> {
    await this.#take(size, sink);
    const padding = (BLOCK - size % BLOCK) % BLOCK;
    await this.#take(padding, () => {});
  }

  /** The entry's `size` bytes, copied into a new array, then skips its padding. */
  async bytes(size: number): Promise<Uint8Array> {
    const out = new Uint8Array(size);
    let at = 0;
    await this.body(size, (piece) => {
      out.set(piece, at);
      at += piece.length;
    });
    return out;
  }

  damaged(detail: string, cause?: unknown): UploadError {
    return _damaged(this.label, detail, cause);
  }

  close(): void {
    _release(this.#chunk);
    this.#inflater.destroy();
  }

  async #take(count: number, sink: (piece: Uint8Array) => Promise<void> | void): Promise<void> {
    let left = count;
    while (left > 0) {
      if (this.#offset >= this.#chunk.length) {
        await this.#yieldNow();
        let step: IteratorResult<Uint8Array>;
        try {
          step = await this.#chunks.next();
        } catch (error) {
          throw this.damaged(messageOf(error), error);
        }
        if (step.done) throw this.damaged("it is cut short");
        _release(this.#chunk);
        this.#chunk = step.value;
        this.#offset = 0;
        continue;
      }
      const piece = this.#chunk.subarray(this.#offset, this.#offset + left);
      this.#offset += piece.length;
      left -= piece.length;
      await sink(piece);
    }
  }

  /**
   * Lets timers and signal handlers run. The decompressor hands over its chunks without
   * a turn of the event loop in between (awaiting them runs as microtasks), so without
   * this the whole unpacking, most of a second, would hold the main thread.
   */
  async #yieldNow(): Promise<void> {
    if (performance.now() - this.#yieldedAt < YIELD_EVERY_MS) return;
    await new Promise((resolve) => setTimeout(resolve, 0));
    this.#yieldedAt = performance.now();
  }
}

/** How long the unpacking runs before it gives the event loop a turn. */
const YIELD_EVERY_MS = 20;

/**
 * Frees a decompressed chunk now rather than at the garbage collector's next pass, which
 * may come only after PGlite has started: left to it, the 39 MB of chunks added as much to
 * the process's peak. Only a chunk that spans its whole buffer is freed (the decompressor
 * writes no more into a buffer it has filled), and only once every piece of it has been
 * copied or written: {@linkcode _TarStream} calls it when it moves to the next chunk, and
 * every sink it hands pieces to copies or writes them before returning.
 */
function _release(chunk: Uint8Array): void {
  const buffer = chunk.buffer as ArrayBuffer & { transfer?: (length: number) => ArrayBuffer };
  if (chunk.byteOffset === 0 && chunk.byteLength === buffer.byteLength && chunk.length > 0) {
    buffer.transfer?.(0);
  }
}

/** Options for {@linkcode packTemplate}. */
export interface PackOptions {
  /** Brotli quality, 0-11. Default 11, the smallest file (tens of seconds; done once). */
  quality?: number;
}

/**
 * Packs the database folder `dataDir` with `manifest` into a template archive (tar,
 * brotli).
 *
 * @throws Error when the folder holds anything but files and directories, or a name longer
 *   than a tar header takes (99 bytes).
 */
export function packTemplate(
  dataDir: string,
  manifest: TemplateManifest,
  options: PackOptions = {},
): Uint8Array {
  const directories: string[] = [];
  const files: string[] = [];
  const walk = (relative: string) => {
    for (const entry of Deno.readDirSync(join(dataDir, relative))) {
      const path = relative === "" ? entry.name : `${relative}/${entry.name}`;
      if (entry.isDirectory) {
        directories.push(path);
        walk(path);
      } else if (entry.isFile) {
        files.push(path);
      } else {
        throw new Error(`Cannot pack ${path}: neither a file nor a directory`);
      }
    }
  };
  walk("");
  // Directories first; then files by name, so the copies of one catalog in template0,
  // template1 and postgres (base/1, base/4, base/5) sit side by side and a small window
  // finds them.
  const byName = (path: string) => `${path.slice(path.lastIndexOf("/") + 1)}\u0000${path}`;
  directories.sort();
  files.sort((a, b) => byName(a) < byName(b) ? -1 : byName(a) > byName(b) ? 1 : 0);
  const tar = _tar([
    { path: MANIFEST_NAME, directory: false, data: encoder.encode(JSON.stringify(manifest)) },
    ...directories.map((path) => ({ path, directory: true, data: new Uint8Array() })),
    ...files.map((path) => ({
      path,
      directory: false,
      data: Deno.readFileSync(join(dataDir, path)),
    })),
  ]);
  return new Uint8Array(brotliCompressSync(tar, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: options.quality ?? constants.BROTLI_MAX_QUALITY,
      [constants.BROTLI_PARAM_LGWIN]: WINDOW_BITS,
      [constants.BROTLI_PARAM_SIZE_HINT]: tar.length,
    },
  }));
}

function _damaged(label: string, detail: string, cause?: unknown): UploadError {
  return new UploadError(
    "fatal",
    `Cannot read the embedded database template ${label}: ${detail}`,
    {
      subject: label,
      hint: "Restore lib/target/embedded_template.tar.br from the repository, or remake it with " +
        "'deno task embedded-template'",
      cause,
    },
  );
}

/** A ustar archive of `entries` (mode 0600/0700, owner 0, mtime 0), with its end blocks. */
function _tar(entries: TemplateEntry[]): Uint8Array {
  let size = 2 * BLOCK;
  for (const entry of entries) size += BLOCK + Math.ceil(entry.data.length / BLOCK) * BLOCK;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const entry of entries) {
    const name = encoder.encode(entry.path);
    if (name.length > 99) throw new Error(`Cannot pack ${entry.path}: name longer than 99 bytes`);
    const header = out.subarray(offset, offset + BLOCK);
    header.set(name, 0);
    _octal(header, 100, 8, entry.directory ? 0o700 : 0o600);
    _octal(header, 108, 8, 0);
    _octal(header, 116, 8, 0);
    _octal(header, 124, 12, entry.data.length);
    _octal(header, 136, 12, 0);
    header[156] = entry.directory ? 0x35 : 0x30; // '5' directory, '0' file
    header.set(encoder.encode("ustar\u000000"), 257);
    header.fill(0x20, 148, 156); // the checksum counts its own field as spaces
    let sum = 0;
    for (const byte of header) sum += byte;
    _octal(header, 148, 7, sum);
    header[155] = 0x20;
    out.set(entry.data, offset + BLOCK);
    offset += BLOCK + Math.ceil(entry.data.length / BLOCK) * BLOCK;
  }
  return out;
}

/** Writes `value` as zero-padded octal digits and a NUL into `width` bytes at `at`. */
function _octal(header: Uint8Array, at: number, width: number, value: number): void {
  header.set(encoder.encode(value.toString(8).padStart(width - 1, "0")), at);
  header[at + width - 1] = 0;
}

function _field(header: Uint8Array, at: number, width: number): string {
  const bytes = header.subarray(at, at + width);
  const end = bytes.indexOf(0);
  return decoder.decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** A relative `/`-separated path without empty, `.` or `..` segments. */
function _safePath(path: string): boolean {
  if (path === "" || path.startsWith("/") || path.includes("\\")) return false;
  return path.split("/").every((part) => part !== "" && part !== "." && part !== "..");
}
