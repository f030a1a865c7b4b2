/**
 * Runs `scripts/upload_manager.ts` as a real subprocess for fault tests, and reads back
 * what a run left behind.
 *
 * - {@linkcode startUploader} starts it with `--json` in its own session and process
 *   group (`setsid`), so a test can SIGKILL the uploader together with its psql children,
 *   freeze it (SIGSTOP), or send it SIGINT / SIGTERM, and wait for its NDJSON events.
 * - {@linkcode expectedRows} is the test oracle: what the table must hold for a tree on
 *   disk, computed independently of `lib/` (its own walk and unit rule).
 * - {@linkcode tableRows} and {@linkcode trackerState} read the final table and the
 *   tracking database; {@linkcode assertTableMatches} compares table and disk field by field.
 *
 * @module
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { PgServer } from "./postgres.ts";
import { buildSchemaStatements } from "../lib/sink/postgres/schema.ts";

/** The repository root (the uploader's working directory, so it finds deno.json). */
export const REPO_ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** The script under test. */
export const UPLOAD_MANAGER: string = join(REPO_ROOT, "scripts", "upload_manager.ts");

/** The permissions of `deno task upload` (deno.json), so tests run what users run. */
export const TASK_PERMISSIONS: readonly string[] = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-run",
  "--allow-sys",
  "--allow-net",
];

/** Environment passed through from the test process; everything else is left out. */
const PASS_THROUGH = ["PATH", "HOME", "DENO_DIR", "TMPDIR", "LANG", "TZ"];

/** One NDJSON event printed by the uploader with `--json`. */
export type UploaderEvent = { event: string } & Record<string, unknown>;

/** How an uploader process ended. */
export interface UploaderExit {
  /** Exit code (128 + signal number when a signal ended it). */
  code: number;
  /** The signal that ended it, if one did. */
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  /** Every JSON event it printed, in order. */
  events: UploaderEvent[];
  /** Wall time from spawn to exit. */
  durationMs: number;
}

/** Options of {@linkcode startUploader}. */
export interface UploaderOptions {
  /** Extra environment (e.g. `SUPABASE_DB_URL`). The test's own environment is not inherited. */
  env?: Record<string, string>;
  /** Add `--json` (default true). */
  json?: boolean;
  /** Run it as users do, through `deno task upload` (default: `deno run` of the script). */
  task?: boolean;
  /**
   * The whole command line instead (e.g. a systemd unit's `ExecStart`), run in the
   * repository as its working directory; `json` and `task` are then ignored.
   */
  argv?: string[];
}

const DECODER = new TextDecoder();
const live = new Set<UploaderProcess>();

/** A running uploader in its own process group. */
export class UploaderProcess {
  /** The uploader's pid, which is also its process group id. */
  readonly pid: number;
  /** Events printed so far. */
  readonly events: UploaderEvent[] = [];
  /** Resolves when the process has exited and its output is read. */
  readonly done: Promise<UploaderExit>;
  #exited = false;
  #waiters: { pred: (e: UploaderEvent) => boolean; resolve: (e: UploaderEvent) => void }[] = [];
  #exitWaiters: ((exit: UploaderExit) => void)[] = [];
  #exit: UploaderExit | undefined;

  constructor(args: string[], options: UploaderOptions = {}) {
    const env: Record<string, string> = { NO_COLOR: "1" };
    for (const name of PASS_THROUGH) {
      const value = Deno.env.get(name);
      if (value !== undefined) env[name] = value;
    }
    Object.assign(env, options.env);
    const started = performance.now();
    const json = options.json ?? true ? ["--json"] : [];
    const command = options.argv ??
      (options.task
        ? [Deno.execPath(), "task", "upload", ...json, ...args]
        : [Deno.execPath(), "run", ...TASK_PERMISSIONS, UPLOAD_MANAGER, ...json, ...args]);
    const child = new Deno.Command("setsid", {
      args: command,
      cwd: REPO_ROOT,
      env,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // setsid execs in place (the child is not a group leader), so pid = pgid.
    this.pid = child.pid;
    live.add(this);
    const stdout = this.#readLines(child.stdout);
    const stderr = new Response(child.stderr).text();
    this.done = (async () => {
      const status = await child.status;
      const [out, err] = await Promise.all([stdout, stderr]);
      this.#exited = true;
      live.delete(this);
      // Children a SIGKILL left behind (psql) go with the group.
      this.#signalGroup("SIGKILL");
      const exit: UploaderExit = {
        code: status.code,
        signal: status.signal,
        stdout: out,
        stderr: err,
        events: this.events,
        durationMs: performance.now() - started,
      };
      this.#exit = exit;
      for (const w of this.#exitWaiters) w(exit);
      return exit;
    })();
  }

  async #readLines(stream: ReadableStream<Uint8Array>): Promise<string> {
    let all = "";
    let pending = "";
    for await (const chunk of stream) {
      const text = DECODER.decode(chunk, { stream: true });
      all += text;
      const lines = (pending + text).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) this.#onLine(line);
    }
    if (pending) this.#onLine(pending);
    return all;
  }

  #onLine(line: string): void {
    if (!line.startsWith("{")) return;
    let event: UploaderEvent;
    try {
      event = JSON.parse(line);
    } catch {
      return; // not an event line (the uploader prints only events on stdout with --json)
    }
    this.events.push(event);
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.pred(event)) return true;
      w.resolve(event);
      return false;
    });
  }

  /**
   * Resolves with the first event (already seen or coming) matching `pred`.
   *
   * @throws Error when the process exits first or `timeoutMs` passes.
   */
  waitFor(
    pred: (e: UploaderEvent) => boolean,
    timeoutMs = 60_000,
  ): Promise<UploaderEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    if (this.#exit) return Promise.reject(this.#exitedError(this.#exit));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`No matching event from uploader ${this.pid} in ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = {
        pred,
        resolve: (e: UploaderEvent) => {
          cleanup();
          resolve(e);
        },
      };
      const onExit = (exit: UploaderExit) => {
        cleanup();
        reject(this.#exitedError(exit));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        this.#exitWaiters = this.#exitWaiters.filter((w) => w !== onExit);
      };
      this.#waiters.push(waiter);
      this.#exitWaiters.push(onExit);
    });
  }

  #exitedError(exit: UploaderExit): Error {
    return new Error(
      `Uploader ${this.pid} exited before the awaited event: ${describeExit(exit)}`,
    );
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Sends a signal to the uploader process alone (as `kill PID` does). */
  signal(sig: Deno.Signal): void {
    if (this.#exited) return;
    try {
      Deno.kill(this.pid, sig);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }

  /** Sends a signal to the whole process group (as Ctrl-C in a terminal does). */
  signalGroup(sig: Deno.Signal): void {
    this.#signalGroup(sig);
  }

  #signalGroup(sig: Deno.Signal): void {
    try {
      Deno.kill(-this.pid, sig);
    } catch (error) {
      // The group is empty: everything in it has exited.
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }

  /**
   * SIGKILLs the whole group (uploader and psql children) and waits for the exit. Works on
   * a stopped (SIGSTOP) process too, without letting it run again first.
   */
  async kill(): Promise<UploaderExit> {
    this.#signalGroup("SIGKILL");
    return await this.done;
  }
}

/** Starts the uploader (`--json` added) with `args`. */
export function startUploader(args: string[], options: UploaderOptions = {}): UploaderProcess {
  return new UploaderProcess(args, options);
}

/** Runs the uploader to the end. */
export function runUploader(args: string[], options: UploaderOptions = {}): Promise<UploaderExit> {
  return startUploader(args, options).done;
}

/** SIGKILLs every uploader still running (for `finally` blocks). */
export async function killAllUploaders(): Promise<void> {
  await Promise.allSettled([...live].map((p) => p.kill()));
}

/** A short description of an exit for assertion messages. */
export function describeExit(exit: UploaderExit): string {
  return `exit ${exit.code}${exit.signal ? ` (${exit.signal})` : ""} after ${
    Math.round(exit.durationMs)
  } ms\n--- stderr ---\n${exit.stderr.slice(-4000)}`;
}

/** What the table must hold for one unit folder. */
export interface ExpectedRow {
  key: string;
  name: string;
  images: string[];
  /** Parsed stats.json, or null when the folder has none. */
  testResults: unknown;
}

const IMAGE_EXTENSIONS = new Set([".jpg", ".jpeg", ".png", ".gif", ".bmp"]);

function isImage(name: string): boolean {
  const dot = name.lastIndexOf(".");
  return dot > 0 && IMAGE_EXTENSIONS.has(name.slice(dot).toLowerCase());
}

/**
 * The rows the table must hold for the tree at `base`: one per folder that directly holds
 * an image or a stats.json (hidden entries, symlinks and names that are not UTF-8
 * ignored), keyed by its
 * `/`-separated path below `base`. Folders whose stats.json cannot be parsed, or is no
 * regular file, are left out and listed in `bad`.
 */
export function expectedRows(base: string): { rows: Map<string, ExpectedRow>; bad: string[] } {
  const rows = new Map<string, ExpectedRow>();
  const bad: string[] = [];
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const walk = (dir: string, key: string) => {
    const files: string[] = [];
    let statsNotFile = false;
    for (const entry of Deno.readDirSync(dir)) {
      // A stats.json that is no regular file (a link, a FIFO, a directory) fails its folder.
      if (entry.name === "stats.json" && !entry.isFile) statsNotFile = true;
      // Hidden, symlinks, and names that are not UTF-8 (read back with U+FFFD) are skipped.
      if (entry.name.startsWith(".") || entry.isSymlink || entry.name.includes("\uFFFD")) continue;
      const rel = key === "" ? entry.name : `${key}/${entry.name}`;
      if (entry.isDirectory) walk(join(dir, entry.name), rel);
      else if (entry.isFile) files.push(entry.name);
    }
    if (statsNotFile) {
      bad.push(key);
      return;
    }
    const hasStats = files.includes("stats.json");
    const images = files.filter(isImage).sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
    if (!hasStats && images.length === 0) return;
    const name = dir.split("/").pop()!;
    let testResults: unknown = null;
    if (hasStats) {
      try {
        const text = utf8.decode(Deno.readFileSync(join(dir, "stats.json")));
        testResults = JSON.parse(text.replace(/^\uFEFF/, ""));
        if (JSON.stringify(testResults).includes("\\u0000")) throw new Error("NUL");
      } catch {
        bad.push(key);
        return;
      }
    }
    rows.set(key, { key, name, images, testResults });
  };
  walk(base, "");
  return { rows, bad };
}

/** One row of the table as read back. */
export interface TableRow {
  key: string;
  name: string;
  images: string[];
  testResults: unknown;
  deviceId: string;
  batch: string;
  metadata: Record<string, unknown>;
}

/** Every row of `table`, and the number of rows sharing a (device_id, folder_key). */
export async function tableRows(
  pg: PgServer,
  table = "device_test",
): Promise<{ rows: TableRow[]; duplicates: number }> {
  const out = await pg.psql(
    `select coalesce(json_agg(json_build_object('key', folder_key, 'name', folder_name,
       'images', images, 'testResults', test_results, 'deviceId', device_id,
       'batch', upload_batch, 'metadata', metadata) order by folder_key), '[]')
     from ${table}`,
  );
  const dup = await pg.psql(
    `select count(*) - count(distinct (device_id, folder_key)) from ${table}`,
  );
  return { rows: JSON.parse(out) as TableRow[], duplicates: Number(dup.trim()) };
}

/**
 * Asserts that the table holds exactly `expected`: one row per key, no duplicates, and
 * each row's name, images and test_results equal to the disk's.
 */
export function assertTableMatches(
  table: { rows: TableRow[]; duplicates: number },
  expected: Map<string, ExpectedRow>,
): void {
  assert.equal(table.duplicates, 0, "duplicate (device_id, folder_key) rows");
  const keys = table.rows.map((r) => r.key);
  assert.equal(new Set(keys).size, keys.length, "the same folder_key twice");
  const missing = [...expected.keys()].filter((k) => !keys.includes(k));
  const extra = keys.filter((k) => !expected.has(k));
  assert.deepEqual(
    { missing: missing.slice(0, 10), extra: extra.slice(0, 10) },
    { missing: [], extra: [] },
    `table and disk differ: ${missing.length} missing, ${extra.length} extra`,
  );
  for (const row of table.rows) {
    const want = expected.get(row.key)!;
    assert.equal(row.name, want.name, `folder_name of ${JSON.stringify(row.key)}`);
    assert.deepEqual(row.images, want.images, `images of ${JSON.stringify(row.key)}`);
    assert.equal(
      canonicalJson(row.testResults),
      canonicalJson(want.testResults),
      `test_results of ${JSON.stringify(row.key)}`,
    );
  }
}

/**
 * JSON text with object keys sorted, for comparing parsed values whatever their key order
 * (jsonb reorders keys). Iterative: nesting thousands of levels deep overflows a recursive
 * deep-equal and JSON.stringify with a replacer.
 */
export function canonicalJson(value: unknown): string {
  const out: string[] = [];
  const stack: ({ text: string } | { value: unknown })[] = [{ value }];
  while (stack.length > 0) {
    const frame = stack.pop()!;
    if ("text" in frame) {
      out.push(frame.text);
      continue;
    }
    const v = frame.value;
    if (v === null || typeof v !== "object") {
      out.push(JSON.stringify(v) ?? "null");
    } else if (Array.isArray(v)) {
      out.push("[");
      stack.push({ text: "]" });
      for (let i = v.length - 1; i >= 0; i--) {
        stack.push({ value: v[i] });
        if (i > 0) stack.push({ text: "," });
      }
    } else {
      const keys = Object.keys(v).sort();
      out.push("{");
      stack.push({ text: "}" });
      for (let i = keys.length - 1; i >= 0; i--) {
        stack.push({ value: (v as Record<string, unknown>)[keys[i]] });
        stack.push({ text: `${i > 0 ? "," : ""}${JSON.stringify(keys[i])}:` });
      }
    }
  }
  return out.join("");
}

/** One folder_status row. */
export interface TrackedFolder {
  path: string;
  key: string | null;
  status: string;
  retryCount: number;
  error: string | null;
}

/** What a tracking database holds after a run. */
export interface TrackerState {
  folders: TrackedFolder[];
  /** upload_batches.status values. */
  batchStatuses: string[];
  /** runs.status values, oldest first. */
  runStatuses: string[];
  /** `PRAGMA integrity_check` result. */
  integrity: string;
}

/** Reads a tracking database (after the uploader has exited). */
export function trackerState(dbPath: string): TrackerState {
  const db = new DatabaseSync(dbPath);
  try {
    const integrity = (db.prepare("PRAGMA integrity_check").all() as Record<string, string>[])
      .map((r) => Object.values(r)[0]).join("; ");
    const folders = (db.prepare(
      "SELECT folder_path, folder_key, upload_status, retry_count, error_message " +
        "FROM folder_status ORDER BY folder_path",
    ).all() as {
      folder_path: string;
      folder_key: string | null;
      upload_status: string;
      retry_count: number;
      error_message: string | null;
    }[]).map((r) => ({
      path: r.folder_path,
      key: r.folder_key,
      status: r.upload_status,
      retryCount: Number(r.retry_count ?? 0),
      error: r.error_message,
    }));
    const batchStatuses = (db.prepare("SELECT status FROM upload_batches").all() as {
      status: string;
    }[]).map((r) => r.status);
    const runStatuses = (db.prepare("SELECT status FROM runs ORDER BY run_id").all() as {
      status: string;
    }[]).map((r) => r.status);
    return { folders, batchStatuses, runStatuses, integrity };
  } finally {
    db.close();
  }
}

/**
 * Asserts a tracker after a completed run: integrity ok, every folder `success` with
 * retry_count 0 (or failed when listed in `failedKeys`), no batch or run left `running`.
 */
export function assertTrackerComplete(
  state: TrackerState,
  expectedKeys: Iterable<string>,
  failedKeys: Iterable<string> = [],
): void {
  assert.equal(state.integrity, "ok", "PRAGMA integrity_check");
  const failed = new Set(failedKeys);
  const want = new Set([...expectedKeys, ...failed]);
  const byKey = new Map(state.folders.map((f) => [f.key ?? "", f]));
  const notTracked = [...want].filter((k) => !byKey.has(k));
  assert.deepEqual(notTracked.slice(0, 10), [], `${notTracked.length} folders not tracked`);
  const wrong = state.folders.filter((f) =>
    want.has(f.key ?? "") &&
    (failed.has(f.key ?? "") ? f.status !== "failed" : f.status !== "success" || f.retryCount !== 0)
  );
  assert.deepEqual(wrong.slice(0, 5), [], `${wrong.length} folders with the wrong status`);
  assert.ok(!state.batchStatuses.includes("running"), "a batch left running");
  assert.ok(!state.runStatuses.includes("running"), "a run left running");
}

/** Waits until one of the uploader's psql sessions is running a statement. */
export async function waitForActiveUpsert(pg: PgServer, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const n = await pg.psql(
      "select count(*) from pg_stat_activity where application_name = 'folder-uploader' " +
        "and state = 'active' and query like 'with payload%'",
    );
    if (Number(n.trim()) > 0) return;
    await delay(5);
  }
  throw new Error("No upsert became active on the server");
}

/** Waits until no statement of the uploader is running any more on the server. */
export async function waitForServerIdle(pg: PgServer, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const n = await pg.psql(
      "select count(*) from pg_stat_activity where application_name = 'folder-uploader' " +
        "and state = 'active'",
    );
    if (Number(n.trim()) === 0) return;
    await delay(10);
  }
  throw new Error("The uploader's statements did not finish on the server");
}

/**
 * Creates the uploader's tables ahead of a run (as the first run would) and a trigger
 * that makes each inserted row take `seconds`, so upserts stay in flight long enough to
 * be interrupted. {@linkcode dropSlowInserts} removes the trigger.
 */
export async function slowInserts(pg: PgServer, seconds: number): Promise<void> {
  for (
    const sql of buildSchemaStatements({
      table: "device_test",
      device: { id: "00000000-0000-4000-8000-000000000001", name: "setup", type: "test" },
    })
  ) await pg.psql(sql);
  await pg.psql(
    `create or replace function slow_insert() returns trigger language plpgsql as $$
     begin perform pg_sleep(${seconds}); return new; end $$;
     create or replace trigger slow_insert before insert on device_test
       for each row execute function slow_insert()`,
  );
}

/** Removes the trigger of {@linkcode slowInserts}. */
export async function dropSlowInserts(pg: PgServer): Promise<void> {
  await pg.psql("drop trigger if exists slow_insert on device_test");
}

/** mulberry32: a deterministic PRNG for kill points and jitter, floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Waits `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Runs `fn` with a temp directory removed afterwards, whatever happens. */
export async function withTempDir<T>(
  prefix: string,
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    return await fn(dir);
  } finally {
    await killAllUploaders();
    await Deno.remove(dir, { recursive: true }).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
  }
}
