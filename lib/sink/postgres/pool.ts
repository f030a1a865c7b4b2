/**
 * Sessions for the write path: {@linkcode StatementRunner}, what runs one statement at a
 * time (a psql session, or a stand-in in tests), and {@linkcode SessionPool}, up to as many
 * runners as batches in flight, started on demand, dead ones dropped.
 *
 * @module
 */

import { type PsqlConnection, PsqlSession, type StatementReply } from "./psql.ts";

/** Something that runs one statement at a time: a psql session, or a stand-in in tests. */
export interface StatementRunner {
  /** Whether the runner can take statements (false once its process or connection is gone). */
  readonly alive: boolean;
  /** The server's `statement_timeout` setting, when known (for messages). */
  readonly statementTimeout?: string;
  /** Runs one statement, or with `script` a psql script (see `RunOptions` in lib/sink/postgres/psql.ts). */
  run(sql: string, options?: { timeoutMs?: number; script?: boolean }): Promise<StatementReply>;
  /** Waits for queued statements, then ends the runner. */
  close(): Promise<void>;
  /** Ends the runner at once: a statement in flight fails as `transient`. */
  kill(): void;
}

/** Starts a statement runner. */
export type RunnerFactory = () => Promise<StatementRunner>;

/** A factory of psql sessions for a connection. */
export function psqlFactory(
  connection: PsqlConnection,
  options: { connectTimeoutSeconds?: number } = {},
): RunnerFactory {
  return () => PsqlSession.start(connection, options);
}

/** Up to `size` runners, started on demand, dead ones dropped. */
export class SessionPool {
  #factory: RunnerFactory;
  #idle: StatementRunner[] = [];
  #all = new Set<StatementRunner>();

  constructor(factory: RunnerFactory) {
    this.#factory = factory;
  }

  /** An idle live runner, or a newly started one. Start failures are thrown as they come. */
  async acquire(): Promise<StatementRunner> {
    while (this.#idle.length > 0) {
      const runner = this.#idle.pop()!;
      if (runner.alive) return runner;
      this.#all.delete(runner);
    }
    const runner = await this.#factory();
    this.#all.add(runner);
    return runner;
  }

  /** Returns a runner; a dead one is dropped (the next acquire starts a fresh one). */
  release(runner: StatementRunner): void {
    if (runner.alive) this.#idle.push(runner);
    else this.#all.delete(runner);
  }

  /** Closes every runner, waiting for each to exit. */
  async close(): Promise<void> {
    const all = [...this.#all];
    this.#all.clear();
    this.#idle = [];
    await Promise.allSettled(all.map((r) => r.close()));
  }

  /** Kills every runner at once (abandoning statements in flight). */
  kill(): void {
    for (const r of this.#all) r.kill();
    this.#all.clear();
    this.#idle = [];
  }
}
