/**
 * psql sessions: long-lived `psql` processes fed statements on stdin, each statement
 * followed by a reply trailer so the caller learns its outcome.
 *
 * After every statement the session sends psql's own conditional:
 *
 * ```
 * <statement>;
 * \if :ERROR
 * \warn <token>
 * \echo <token> err :LAST_ERROR_SQLSTATE :'LAST_ERROR_MESSAGE'
 * \else
 * \warn <token>
 * \echo <token> ok :ROW_COUNT
 * \endif
 * ```
 *
 * with a random token per statement. stdout lines before the trailer are the result rows;
 * stdout ending without a trailer means the connection is lost (psql exits with code 2 when
 * it notices a lost connection in a script). The `\warn` marker (psql 13+) closes the
 * statement's stderr (ERROR, DETAIL, HINT, CONTEXT lines) so an error reply can carry it.
 *
 * Only this file starts psql processes.
 *
 * @module
 */

import { type ErrorKind, UploadError } from "./errors.ts";

/** How to reach a server with psql. Never holds a password in `args`. */
export interface PsqlConnection {
  /** Connection arguments for psql, e.g. `["-d", "postgresql://user@host:5432/db?sslmode=require"]`. */
  args: string[];
  /** Extra environment for the psql child (PGPASSWORD and friends live here, never in args). */
  env: Record<string, string>;
  /** What to show the user: host, port and database, never a password. */
  display: string;
}

/** The outcome of one statement: {@linkcode StatementOk} or {@linkcode StatementError}. */
export type StatementReply = StatementOk | StatementError;

/** A statement that succeeded. */
export interface StatementOk {
  ok: true;
  /** Result lines (`-A -t` format: columns joined by `|`, nulls empty). */
  rows: string[];
  /** psql's `:ROW_COUNT`: rows returned or affected. */
  rowCount: number;
}

/** A statement the server refused. */
export interface StatementError {
  ok: false;
  /** Result lines printed before the error (usually none). */
  rows: string[];
  /** The server's SQLSTATE (`:LAST_ERROR_SQLSTATE`), e.g. `23505`. */
  sqlstate: string;
  /** The primary message (`:LAST_ERROR_MESSAGE`), possibly several lines. */
  message: string;
  /** psql's stderr for the statement (ERROR, DETAIL, HINT, CONTEXT); psql 13+ only. */
  stderr?: string;
}

/** Options for {@linkcode PsqlSession.start}. */
export interface PsqlSessionOptions {
  /** The psql binary. Default: `psql` on PATH. */
  psqlPath?: string;
  /**
   * Seconds libpq waits for a connection (`PGCONNECT_TIMEOUT`). Default: the connection's
   * own `PGCONNECT_TIMEOUT`, else 10.
   */
  connectTimeoutSeconds?: number;
}

/** Options for {@linkcode PsqlSession.run}. */
export interface RunOptions {
  /**
   * Milliseconds to wait for the reply; when it passes psql is killed and the call throws
   * `transient`. The server may go on running the statement until it notices the client
   * is gone. Default: no limit.
   */
  timeoutMs?: number;
}

/** Bytes of stderr a session keeps for error messages. */
export const STDERR_TAIL_BYTES = 4096;

/** Most stderr characters kept for one statement's error reply. */
const STATEMENT_STDERR_CHARS = 16_384;

/** The application name sessions report to the server (`pg_stat_activity`). */
export const APPLICATION_NAME = "folder-uploader";

const INSTALL_HINT =
  "Install the PostgreSQL client: `apt-get install postgresql-client` (Debian/Ubuntu), " +
  "`brew install libpq` (macOS), or pass the path of psql";

const MIN_PSQL_MAJOR = 12;

const ENCODER = new TextEncoder();

/**
 * What an SQLSTATE means for the run.
 *
 * - `transient` (retry, restart psql): class 08 (connection), class 53 (too many
 *   connections, out of memory, disk full), 57P01/57P02/57P03/57P05 (server shutting down,
 *   starting up, idle session closed), 40001 and 40P01 (serialization failure, deadlock),
 *   57014 (statement timeout: the caller retries in smaller pieces), 55P03 (lock not
 *   available).
 * - `config` (stop and tell the user): 42501 (permission or row-level security), class 28
 *   (authentication), 3D000 (no such database), 3F000 (no such schema), 25006 (read-only
 *   server or transaction), class 42 (no such table or column, and other errors in the
 *   statement against the schema).
 * - `data` (the rows are refused: bisect): classes 22, 23, 54, XX and anything else.
 *
 * @example
 * ```ts
 * classifySqlstate("23505"); // "data"
 * classifySqlstate("53300"); // "transient"
 * classifySqlstate("42501"); // "config"
 * ```
 */
export function classifySqlstate(code: string): ErrorKind {
  const sqlClass = code.slice(0, 2);
  switch (code) {
    case "57014":
    case "57P01":
    case "57P02":
    case "57P03":
    case "57P05":
    case "40001":
    case "40P01":
    case "55P03":
      return "transient";
    case "3D000":
    case "3F000":
    case "25006":
      return "config";
  }
  if (sqlClass === "08" || sqlClass === "53") return "transient";
  if (sqlClass === "28" || sqlClass === "42") return "config";
  return "data";
}

const TRANSIENT_CONNECT_PATTERNS = [
  /connection refused/i,
  /could not connect/i,
  /timeout expired/i,
  /timed out/i,
  /network is unreachable/i,
  /no route to host/i,
  /host is unreachable/i,
  /cannot assign requested address/i,
  /could not translate host name/i,
  /temporary failure in name resolution/i,
  /too many clients/i,
  /too many connections/i,
  /remaining connection slots are reserved/i,
  /no more connections allowed/i,
  /max client connections reached/i,
  /the database system is (starting up|shutting down|in recovery mode|not yet accepting)/i,
  /server closed the connection unexpectedly/i,
  /connection reset/i,
  /ssl syscall error/i,
  /terminating connection/i,
  /is the server running/i,
];

/**
 * What a failure to connect means, from psql's stderr: `transient` for a refused,
 * unreachable or timed-out connection, too many connections, or a server starting up or
 * shutting down; `config` for everything else (authentication, no such role or
 * database, a malformed URL, SSL settings).
 */
export function classifyConnectFailure(stderr: string): ErrorKind {
  if (
    /password authentication failed|role .* does not exist|database .* does not exist/i.test(stderr)
  ) {
    return "config";
  }
  return TRANSIENT_CONNECT_PATTERNS.some((pattern) => pattern.test(stderr))
    ? "transient"
    : "config";
}

/**
 * Checks that psql can be run and is recent enough (12+); returns its version line.
 *
 * @throws UploadError `config` with an install hint when psql is missing, cannot be
 *   run, or is older than 12.
 *
 * @example
 * ```ts
 * await checkPsql(); // "psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
 * ```
 */
export async function checkPsql(psqlPath = "psql"): Promise<string> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(psqlPath, {
      args: ["--version"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (error) {
    throw spawnError(psqlPath, error);
  }
  const text = new TextDecoder().decode(output.stdout).trim();
  if (!output.success) {
    throw new UploadError("config", `Cannot run ${psqlPath} --version: exit code ${output.code}`, {
      hint: INSTALL_HINT,
    });
  }
  const major = psqlMajor(text);
  if (major === undefined || major < MIN_PSQL_MAJOR) {
    throw new UploadError(
      "config",
      `psql ${MIN_PSQL_MAJOR} or newer is required: ${psqlPath} says ${JSON.stringify(text)}`,
      { hint: INSTALL_HINT },
    );
  }
  return text;
}

function psqlMajor(versionLine: string): number | undefined {
  const match = versionLine.match(/\(PostgreSQL\)\s+(\d+)/);
  return match ? Number(match[1]) : undefined;
}

function spawnError(psqlPath: string, error: unknown): UploadError {
  if (error instanceof Deno.errors.NotFound) {
    return new UploadError("config", `psql was not found: ${psqlPath}`, {
      hint: INSTALL_HINT,
      cause: error,
    });
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return new UploadError("config", `Cannot run psql (${psqlPath}): permission denied`, {
      hint: "Allow running psql (deno run --allow-run) and check the file's permissions",
      cause: error,
    });
  }
  return new UploadError("fatal", `Cannot start psql (${psqlPath}): ${String(error)}`, {
    cause: error,
  });
}

const psqlVersionCache = new Map<string, Promise<number | undefined>>();

/** psql's major version, asked once per binary; a failure is not cached. */
function cachedPsqlMajor(psqlPath: string): Promise<number | undefined> {
  let version = psqlVersionCache.get(psqlPath);
  if (version === undefined) {
    version = checkPsql(psqlPath).then(psqlMajor, (error) => {
      psqlVersionCache.delete(psqlPath);
      throw error;
    });
    psqlVersionCache.set(psqlPath, version);
  }
  return version;
}

/**
 * Runs psql on a connection with the terminal's stdin, stdout and stderr (for
 * `deno task sql`); returns psql's exit code. Ctrl-C goes to psql (cancelling its query)
 * and does not end this process while psql runs.
 *
 * @throws UploadError `config` when psql cannot be found or run.
 */
export async function runPsqlInteractive(
  conn: PsqlConnection,
  extraArgs: string[],
  options: { psqlPath?: string } = {},
): Promise<number> {
  const psqlPath = options.psqlPath ?? "psql";
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(psqlPath, {
      args: [...conn.args, ...extraArgs],
      env: { PGAPPNAME: APPLICATION_NAME, ...conn.env },
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
  } catch (error) {
    throw spawnError(psqlPath, error);
  }
  const ignoreInterrupt = () => {/* psql handles Ctrl-C itself (cancels the query) */};
  const listening = Deno.build.os !== "windows";
  if (listening) Deno.addSignalListener("SIGINT", ignoreInterrupt);
  try {
    return (await child.status).code;
  } finally {
    if (listening) Deno.removeSignalListener("SIGINT", ignoreInterrupt);
  }
}

/**
 * Checks that `sql` is exactly one complete statement psql will pass to the server as
 * is, and returns it terminated by `;` and a newline. Lexes like psql: quotes (`'...'`,
 * `E'...'`), quoted identifiers, dollar quotes, `--` and nested `/* *\/` comments. Plain
 * `'...'` literals are read as with `standard_conforming_strings` on; the project's
 * {@linkcode sqlLiteral} uses `E'...'` for any text with a backslash, so both readings
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
    if (c === "-" && sql[i + 1] === "-") {
      const end = sql.indexOf("\n", i);
      i = end < 0 ? n : end + 1;
      continue;
    }
    if (c === "/" && sql[i + 1] === "*") {
      let depth = 1;
      i += 2;
      while (depth > 0) {
        if (i >= n) throw fail("unterminated /* comment");
        if (sql[i] === "/" && sql[i + 1] === "*") {
          depth++;
          i += 2;
        } else if (sql[i] === "*" && sql[i + 1] === "/") {
          depth--;
          i += 2;
        } else i++;
      }
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

/** Splits a byte stream into text lines. */
class LineReader {
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

/** One statement's stderr, collected until its `\warn` marker. */
interface StderrCollector {
  marker: string;
  text: string;
  finished: boolean;
  done: Promise<string>;
  resolve: (text: string) => void;
}

/**
 * One long-lived psql process. Statements are sent one at a time: calls to
 * {@linkcode run} made while another is in flight wait in an internal queue, in call
 * order. Once the connection is lost or a statement timed out the session is dead
 * ({@linkcode alive} false) and every later call throws `transient`; start a new one.
 *
 * ```ts
 * const session = await PsqlSession.start(conn);
 * try {
 *   const reply = await session.run("select 1");
 * } finally {
 *   await session.close();
 * }
 * ```
 */
export class PsqlSession {
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #stdout: LineReader;
  readonly #display: string;
  readonly #secrets: string[];
  readonly #markers: boolean;
  readonly #stderrDone: Promise<void>;
  readonly #status: Promise<Deno.CommandStatus>;
  #stderrTail: string[] = [];
  #stderrTailChars = 0;
  #collectors: StderrCollector[] = [];
  #queue: Promise<unknown> = Promise.resolve();
  #alive = true;
  #closing = false;
  #timedOut = false;
  #exitCode: number | undefined;
  #stdinClosed = false;

  private constructor(
    child: Deno.ChildProcess,
    conn: PsqlConnection,
    markers: boolean,
  ) {
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#stdout = new LineReader(child.stdout);
    this.#display = conn.display;
    this.#secrets = Object.entries(conn.env)
      .filter(([name, value]) => /PASSWORD|SECRET|TOKEN/i.test(name) && value.length >= 3)
      .map(([, value]) => value);
    this.#markers = markers;
    this.#stderrDone = this.#drainStderr(child.stderr);
    this.#status = child.status.then((status) => {
      this.#exitCode = status.code;
      return status;
    });
  }

  /**
   * Starts psql on a connection and proves it with `select 1`.
   *
   * @throws UploadError `transient` when the server refused, could not be reached, timed
   *   out, has too many connections or is starting up or shutting down; `config` for a
   *   failed authentication, a missing role or database, a malformed URL or a missing
   *   psql. The message holds psql's own (never a password).
   */
  static async start(conn: PsqlConnection, options: PsqlSessionOptions = {}): Promise<PsqlSession> {
    const psqlPath = options.psqlPath ?? "psql";
    const major = await cachedPsqlMajor(psqlPath);
    const connectTimeout = options.connectTimeoutSeconds ?? conn.env.PGCONNECT_TIMEOUT ?? 10;
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(psqlPath, {
        args: ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0", ...conn.args],
        env: {
          PGAPPNAME: APPLICATION_NAME,
          ...conn.env,
          PGCONNECT_TIMEOUT: String(connectTimeout),
          // The reply protocol is read as UTF-8, and psql's own messages are matched in English.
          PGCLIENTENCODING: "UTF8",
          LC_ALL: "C",
        },
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (error) {
      throw spawnError(psqlPath, error);
    }
    const session = new PsqlSession(child, conn, major !== undefined && major >= 13);
    let reply: StatementReply;
    try {
      reply = await session.run("select 1", { timeoutMs: (Number(connectTimeout) + 20) * 1000 });
    } catch (error) {
      await session.kill();
      const stderr = session.#connectMessage();
      const kind = session.#timedOut ? "transient" : classifyConnectFailure(stderr);
      throw new UploadError(
        kind,
        `Cannot connect to ${conn.display}: ${stderr || (error as Error).message}`,
        { cause: error, hint: connectHint(kind, stderr, conn.display) },
      );
    }
    if (!reply.ok || reply.rows.join("\n") !== "1") {
      await session.kill();
      throw new UploadError(
        "fatal",
        `Unexpected reply to the connection probe on ${conn.display}: ${JSON.stringify(reply)}`,
      );
    }
    return session;
  }

  /** Whether psql is running and the connection was not lost. */
  get alive(): boolean {
    return this.#alive;
  }

  /** psql's exit code once it has exited, else undefined. */
  get exitCode(): number | undefined {
    return this.#exitCode;
  }

  /** psql's process id. */
  get pid(): number {
    return this.#child.pid;
  }

  /** The last few KiB of psql's stderr (errors, DETAIL, HINT, NOTICE), secrets redacted. */
  stderrTail(): string {
    return this.#redact(this.#stderrTail.join("\n"));
  }

  /**
   * Sends one statement (terminated with `;` when it is not) and waits for its reply. SQL
   * errors are replies (`ok: false`), not exceptions; read their kind with
   * {@linkcode classifySqlstate}.
   *
   * @throws UploadError `transient` when the connection is lost or the timeout passes
   *   (the session is dead afterwards); `fatal` for SQL that is not exactly one complete
   *   statement (see {@linkcode terminateStatement}).
   */
  run(sql: string, options: RunOptions = {}): Promise<StatementReply> {
    const reply = this.#queue.then(() => this.#runNow(sql, options));
    // The queue only orders calls; each caller gets its own outcome from `reply`.
    this.#queue = reply.catch(() => undefined);
    return reply;
  }

  async #runNow(sql: string, options: RunOptions): Promise<StatementReply> {
    const statement = terminateStatement(sql);
    if (!this.#alive) {
      throw new UploadError("transient", `The psql session to ${this.#display} is closed`);
    }
    const token = `@@reply-${crypto.randomUUID().replaceAll("-", "")}`;
    const collector = this.#markers ? this.#collect(`${token} stderr`) : undefined;
    const marker = collector ? `\\warn ${collector.marker}\n` : "";
    const text = `${statement}\\if :ERROR\n${marker}` +
      `\\echo ${token} err :LAST_ERROR_SQLSTATE :'LAST_ERROR_MESSAGE'\n` +
      `\\else\n${marker}\\echo ${token} ok :ROW_COUNT\n\\endif\n`;
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        this.#timedOut = true;
        this.#killProcess();
      }, options.timeoutMs);
    }
    try {
      // Read while writing: a large result must not block psql while we still write.
      const written = this.#stdin.write(ENCODER.encode(text)).then(
        () => undefined,
        (error: unknown) => error, // psql died; the read below sees the end of output
      );
      const reply = await this.#readReply(token, collector);
      await written;
      return reply;
    } finally {
      clearTimeout(timer);
    }
  }

  async #readReply(token: string, collector?: StderrCollector): Promise<StatementReply> {
    const rows: string[] = [];
    const okPrefix = `${token} ok `;
    const errPrefix = `${token} err `;
    for (;;) {
      const line = await this.#stdout.next();
      if (line === null) throw await this.#lost();
      if (line.startsWith(okPrefix)) {
        // Wait for the statement's stderr too, so stderrTail() holds its notices.
        if (collector) await collector.done;
        return { ok: true, rows, rowCount: Number(line.slice(okPrefix.length)) };
      }
      if (line.startsWith(errPrefix)) {
        const rest = line.slice(errPrefix.length);
        const space = rest.indexOf(" ");
        const sqlstate = space < 0 ? rest : rest.slice(0, space);
        let literal = space < 0 ? "''" : rest.slice(space + 1);
        let message = parseQuotedLiteral(literal);
        while (message === undefined) {
          const more = await this.#stdout.next();
          if (more === null) throw await this.#lost();
          literal += `\n${more}`;
          message = parseQuotedLiteral(literal);
        }
        const reply: StatementError = { ok: false, rows, sqlstate, message };
        if (collector) reply.stderr = this.#redact((await collector.done).trimEnd());
        return reply;
      }
      rows.push(line);
    }
  }

  /** Marks the session dead and builds the error for a lost connection or a timeout. */
  async #lost(): Promise<UploadError> {
    this.#alive = false;
    await this.#status;
    await this.#stderrDone;
    const tail = this.stderrTail().trim();
    if (this.#timedOut) {
      return new UploadError(
        "transient",
        `Statement timed out on ${this.#display}; psql was stopped`,
      );
    }
    if (this.#closing) {
      return new UploadError("transient", `The psql session to ${this.#display} was closed`);
    }
    const detail = tail === "" ? `psql exited with code ${this.#exitCode}` : tail;
    return new UploadError(
      "transient",
      `Connection to ${this.#display} lost: ${detail}`,
    );
  }

  /** psql's connection error, without its `psql: error: ` prefix. */
  #connectMessage(): string {
    return this.stderrTail().trim().replace(/^psql: error: /, "");
  }

  #collect(marker: string): StderrCollector {
    let resolve!: (text: string) => void;
    const done = new Promise<string>((r) => resolve = r);
    const collector = { marker, text: "", finished: false, done, resolve };
    this.#collectors.push(collector);
    return collector;
  }

  async #drainStderr(stream: ReadableStream<Uint8Array>): Promise<void> {
    const lines = new LineReader(stream);
    for (;;) {
      const line = await lines.next();
      if (line === null) break;
      const current = this.#collectors[0];
      if (current && line === current.marker) {
        this.#collectors.shift();
        current.finished = true;
        current.resolve(current.text);
        continue;
      }
      if (current && current.text.length < STATEMENT_STDERR_CHARS) {
        current.text += `${line}\n`;
      }
      this.#stderrTail.push(line);
      this.#stderrTailChars += line.length + 1;
      while (this.#stderrTailChars > STDERR_TAIL_BYTES && this.#stderrTail.length > 1) {
        this.#stderrTailChars -= (this.#stderrTail.shift() as string).length + 1;
      }
    }
    for (const collector of this.#collectors) collector.resolve(collector.text);
    this.#collectors = [];
  }

  #redact(text: string): string {
    let result = text;
    for (const secret of this.#secrets) result = result.replaceAll(secret, "********");
    return result;
  }

  #killProcess(): void {
    this.#alive = false;
    if (this.#exitCode !== undefined) return;
    try {
      this.#child.kill("SIGKILL");
    } catch (error) {
      // The process exited between the check and the kill: nothing left to stop.
      if (!(error instanceof TypeError)) throw error;
    }
  }

  async #closeStdin(): Promise<void> {
    if (this.#stdinClosed) return;
    this.#stdinClosed = true;
    try {
      await this.#stdin.close();
    } catch (error) {
      // psql exited first (broken pipe, or the stream errored on a failed write): the
      // documented expected case; anything else is a bug.
      if (!(error instanceof Deno.errors.BrokenPipe || error instanceof TypeError)) throw error;
    }
  }

  async #finish(): Promise<void> {
    await this.#closeStdin();
    await this.#status;
    await this.#stderrDone;
    await this.#stdout.drain();
  }

  /**
   * Waits for queued statements, ends psql's input and waits for it to exit. Harmless
   * on a dead or already closed session.
   */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#queue;
    this.#alive = false;
    await this.#finish();
  }

  /**
   * Kills psql at once (SIGKILL) and waits for it to exit; a statement in flight throws
   * `transient`, queued ones too.
   */
  async kill(): Promise<void> {
    this.#closing = true;
    this.#killProcess();
    await this.#queue;
    await this.#finish();
  }

  /** `await using session = await PsqlSession.start(conn)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function connectHint(kind: ErrorKind, stderr: string, display: string): string | undefined {
  const supabase = display.match(/db\.([a-z0-9]+)\.supabase\.co/i);
  if (
    supabase &&
    /network is unreachable|cannot assign requested address|could not translate host name|no route to host/i
      .test(stderr)
  ) {
    return `Supabase's direct host has only an IPv6 address unless the project pays for IPv4. ` +
      `Use the session pooler instead: aws-<region>.pooler.supabase.com:5432 with user ` +
      `postgres.${supabase[1]} (or the transaction pooler on port 6543)`;
  }
  if (/password authentication failed|no password supplied/i.test(stderr)) {
    return "Check the password in the database URL (or PGPASSWORD / ~/.pgpass)";
  }
  if (kind === "transient") {
    return "Check the host and port, that the server runs and accepts TCP connections";
  }
  return undefined;
}
