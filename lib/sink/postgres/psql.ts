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
 * The processes are started by spawn.ts; COPY streams are in copy.ts.
 *
 * @module
 */

import { UploadError } from "../../core/errors.ts";
import {
  connectFailureKind,
  connectHint,
  isAbortedTransaction,
  probeRefusalKind,
  type TlsSetting,
} from "../../core/policy.ts";
import { LineReader } from "../../core/lines.ts";
import { parseQuotedLiteral, terminateStatement } from "./psql_text.ts";
import { APPLICATION_NAME, cachedPsqlMajor, spawnPsql } from "./spawn.ts";

export { APPLICATION_NAME, checkPsql, runPsqlInteractive } from "./spawn.ts";

/** How to reach a server with psql. Never holds a password in `args`. */
export interface PsqlConnection {
  /** Connection arguments for psql, e.g. `["-d", "postgresql://user@host:5432/db?sslmode=require"]`. */
  args: string[];
  /** Extra environment for the psql child (PGPASSWORD and friends live here, never in args). */
  env: Record<string, string>;
  /** What to show the user: host, port and database, never a user name or password. */
  display: string;
  /** How the TLS setting came about, for the hints of a failed connection. */
  tls?: TlsSetting;
}

/** The outcome of one statement: {@linkcode StatementOk} or {@linkcode StatementError}. */
export type StatementReply = StatementOk | StatementError;

/** A statement that succeeded. */
export interface StatementOk {
  /** Always `true`: the statement succeeded. */
  ok: true;
  /** Result lines (`-A -t` format: columns joined by `|`, nulls empty). */
  rows: string[];
  /** psql's `:ROW_COUNT`: rows returned or affected. */
  rowCount: number;
}

/** A statement the server refused. */
export interface StatementError {
  /** Always `false`: the server refused the statement. */
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
  /**
   * The text is a psql script of several statements, sent as it is (not checked to be one
   * statement): the reply is that of the last statement it ran, and when that failed the
   * session sends `rollback` after the reply, ending a transaction the script opened.
   * `buildUpsertScript` (lib/sink/postgres/upsert.ts) makes such scripts. Default false.
   */
  script?: boolean;
}

/** Bytes of stderr a session keeps for error messages. */
export const STDERR_TAIL_BYTES = 4096;

/** Most stderr characters kept for one statement's error reply. */
const STATEMENT_STDERR_CHARS = 16_384;

const ENCODER = new TextEncoder();

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
  #timeoutMs = 0;
  #statementTimeout: string | undefined;
  #exitCode: number | undefined;
  /** The signal that ended psql, if one did (a service manager stopping every process). */
  #exitSignal: Deno.Signal | null = null;
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
      this.#exitSignal = status.signal;
      return status;
    });
  }

  /**
   * Starts psql on a connection and proves it with a probe that also reads the server's
   * `statement_timeout` (for error messages). A probe the server answers with an error
   * still proves the connection unless the error is about the connection itself: a probe
   * cancelled by a very short `statement_timeout` is a working session, not an outage.
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
    const child = spawnPsql({
      psqlPath,
      // -w: never prompt for a password (outside the terminal's session psql would read
      // the prompt's answer from its stdin, the first statement).
      args: ["-X", "-q", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=0", ...conn.args],
      env: {
        PGAPPNAME: APPLICATION_NAME,
        ...conn.env,
        PGCONNECT_TIMEOUT: String(connectTimeout),
        // The reply protocol is read as UTF-8, and psql's own messages are matched in English.
        PGCLIENTENCODING: "UTF8",
        LC_ALL: "C",
      },
    });
    const session = new PsqlSession(child, conn, major !== undefined && major >= 13);
    let reply: StatementReply;
    try {
      reply = await session.run("select 1, current_setting('statement_timeout')", {
        timeoutMs: (Number(connectTimeout) + 20) * 1000,
      });
    } catch (error) {
      // A psql ended by a signal it did not get from us (SIGTERM to every process of a
      // service) says nothing about the server or the settings: transient, as a lost session.
      const signalled = session.#exitSignal !== null && !session.#closing;
      await session.kill();
      const stderr = session.#connectMessage();
      const kind = connectFailureKind(stderr, { timedOut: session.#timedOut, signalled });
      throw new UploadError(
        kind,
        `Cannot connect to ${conn.display}: ${stderr || (error as Error).message}`,
        { cause: error, hint: connectHint(kind, stderr, conn) },
      );
    }
    if (reply.ok && reply.rows.length === 1 && reply.rows[0].startsWith("1|")) {
      session.#statementTimeout = reply.rows[0].slice(2);
      return session;
    }
    const refused = reply.ok ? undefined : probeRefusalKind(reply.sqlstate);
    if (refused === null) return session; // a statement timeout shorter than the probe
    await session.kill();
    if (!reply.ok) {
      throw new UploadError(
        refused!,
        `Cannot use the connection to ${conn.display}: ${reply.sqlstate}: ${reply.message}`,
        { sqlstate: reply.sqlstate },
      );
    }
    throw new UploadError(
      "fatal",
      `Unexpected reply to the connection probe on ${conn.display}: ${JSON.stringify(reply)}`,
    );
  }

  /** The server's `statement_timeout` as the probe read it (`0` is none), when known. */
  get statementTimeout(): string | undefined {
    return this.#statementTimeout;
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
   * `classifySqlstate` (lib/core/policy.ts).
   *
   * @throws UploadError `transient` when the connection is lost, `timeout` when the
   *   timeout passes (the session is dead after either); `fatal` for SQL that is not exactly one complete
   *   statement (see `terminateStatement` in lib/sink/postgres/psql_text.ts).
   */
  run(sql: string, options: RunOptions = {}): Promise<StatementReply> {
    const reply = this.#queue.then(() => this.#runNow(sql, options));
    // The queue only orders calls; each caller gets its own outcome from `reply`.
    this.#queue = reply.catch(() => undefined);
    return reply;
  }

  async #runNow(sql: string, options: RunOptions): Promise<StatementReply> {
    const statement = options.script ? scriptText(sql) : terminateStatement(sql);
    if (!this.#alive) {
      throw new UploadError("transient", `The psql session to ${this.#display} is closed`);
    }
    const token = `@@reply-${crypto.randomUUID().replaceAll("-", "")}`;
    const collector = this.#markers ? this.#collect(`${token} stderr`) : undefined;
    const marker = collector ? `\\warn ${collector.marker}\n` : "";
    const text = `${statement}\\if :ERROR\n${marker}` +
      `\\echo ${token} err :LAST_ERROR_SQLSTATE :'LAST_ERROR_MESSAGE'\n` +
      `\\else\n${marker}\\echo ${token} ok :ROW_COUNT\n\\endif\n` +
      (options.script ? `\\if :ERROR\nrollback;\n\\endif\n` : "");
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        this.#timedOut = true;
        this.#timeoutMs = options.timeoutMs ?? 0;
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
      return options.script ? causeOfAbort(reply) : reply;
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
        "timeout",
        `No reply within ${formatSeconds(this.#timeoutMs)} s from ${this.#display}; psql was ` +
          `stopped (the client's own statement timeout)`,
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

/** A script's text ending with a newline, so the reply trailer starts on a line of its own. */

/**
 * A script's reply blamed on the statement after a failed COPY (25P02, "current transaction
 * is aborted"): psql leaves `:ERROR` false after a COPY the server refused, so the reply
 * names the next statement. The COPY's own SQLSTATE and message are in its stderr when the
 * script set `VERBOSITY verbose` for it (`ERROR:  57014: canceling statement ...`).
 */
function causeOfAbort(reply: StatementReply): StatementReply {
  if (reply.ok || !isAbortedTransaction(reply.sqlstate) || reply.stderr === undefined) return reply;
  const cause = reply.stderr.match(/^ERROR:\s+([0-9A-Z]{5}):\s+(.*)$/m);
  if (cause === null || isAbortedTransaction(cause[1])) return reply;
  return { ...reply, sqlstate: cause[1], message: cause[2] };
}

/** A script's text ending with a newline, so the reply trailer starts on a line of its own. */
function scriptText(script: string): string {
  return script.endsWith("\n") ? script : `${script}\n`;
}

/** Milliseconds as seconds for a message: one decimal below 10 s. */
function formatSeconds(ms: number): string {
  return ms < 10_000 ? (ms / 1000).toFixed(1) : String(Math.round(ms / 1000));
}
