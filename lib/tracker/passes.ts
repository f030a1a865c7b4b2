/**
 * Walks of a base folder as the tracker sees them: a complete walk (a pass) marks what it
 * did not find as missing, never deleting a row; what the walk could not read, or did not
 * follow, is remembered until a complete walk no longer meets it; and a base that moved
 * keeps its folders.
 *
 * @module
 */

import { UploadError } from "../core/errors.ts";
import { iso, type TrackerDb } from "./db.ts";

/** A complete walk of one base in progress: which tracked rows it has seen. */
export class WalkPass {
  /** The base folder walked. */
  readonly base: string;
  /** The run walking it. */
  readonly runId: number;
  /** Bit per rowid of the rows seen. */
  #seen: Uint8Array;
  /** How many distinct rows are marked in `#seen`. */
  #seenCount = 0;

  private constructor(base: string, runId: number, rows: number) {
    this.base = base;
    this.runId = runId;
    this.#seen = new Uint8Array(Math.ceil((rows + 1) / 8) + 1024);
  }

  /** Starts a pass over `base`: nothing written, a bit per tracked row kept in memory. */
  static begin(db: TrackerDb, base: string, runId: number): WalkPass {
    const top = db.stmt("SELECT max(rowid) AS n FROM folder_status").get() as { n: number };
    return new WalkPass(base, runId, Number(top.n ?? 0));
  }

  /** Notes that the walk found the row `rowid`. */
  markSeen(rowid: number): void {
    const byte = rowid >>> 3;
    if (byte >= this.#seen.length) {
      const grown = new Uint8Array(Math.max(byte + 1, this.#seen.length * 2));
      grown.set(this.#seen);
      this.#seen = grown;
    }
    const bit = 1 << (rowid & 7);
    if ((this.#seen[byte] & bit) === 0) {
      this.#seen[byte] |= bit;
      this.#seenCount++;
    }
  }

  #wasSeen(rowid: number): boolean {
    const byte = rowid >>> 3;
    return byte < this.#seen.length && (this.#seen[byte] & (1 << (rowid & 7))) !== 0;
  }

  /**
   * Ends the pass: rows under its base it did not see are marked missing, and problems it
   * no longer met are forgotten. When every row was seen this costs two counts.
   *
   * @returns how many folders under the base are missing, and the first `limit` paths.
   */
  end(db: TrackerDb, now: Date, limit: number): { count: number; sample: string[] } {
    const present = db.stmt(
      "SELECT count(*) AS n FROM folder_status WHERE base_path = ? AND missing_since IS NULL",
    ).get(this.base) as { n: number };
    if (Number(present.n) > this.#seenCount) {
      const gone: number[] = [];
      const rows = db.stmt(
        "SELECT rowid FROM folder_status WHERE base_path = ? AND missing_since IS NULL",
      ).iterate(this.base) as Iterable<{ rowid: number }>;
      for (const { rowid } of rows) if (!this.#wasSeen(rowid)) gone.push(rowid);
      if (gone.length > 0) {
        db.stmt(
          "UPDATE folder_status SET missing_since = ? WHERE rowid IN (SELECT value FROM json_each(?))",
        ).run(iso(now), JSON.stringify(gone));
      }
    }
    db.stmt("DELETE FROM problems WHERE base_path = ? AND last_seen_run < ?")
      .run(this.base, this.runId);
    const count = db.stmt(
      "SELECT count(*) AS n FROM folder_status WHERE base_path = ? AND missing_since IS NOT NULL",
    ).get(this.base) as { n: number };
    const sample = db.stmt(
      "SELECT folder_path FROM folder_status WHERE base_path = ? AND missing_since IS NOT NULL " +
        "ORDER BY folder_path LIMIT ?",
    ).all(this.base, limit) as { folder_path: string }[];
    return { count: Number(count.n), sample: sample.map((r) => r.folder_path) };
  }
}

/** Where a problem met by a walk was met, and when. */
export interface ProblemSighting {
  /** The base walked (null: folders named one by one). */
  base: string | null;
  runId: number;
  when: Date;
}

function upsertProblem(db: TrackerDb) {
  return db.stmt(
    "INSERT INTO problems (path, base_path, reason, first_seen, last_seen, last_seen_run, " +
      "kind) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET " +
      "reason = excluded.reason, base_path = excluded.base_path, " +
      "last_seen = excluded.last_seen, last_seen_run = excluded.last_seen_run, " +
      "kind = excluded.kind",
  );
}

/** Remembers folders or files a walk could not read. One transaction. */
export function recordProblems(
  db: TrackerDb,
  problems: readonly { path: string; reason: string }[],
  at: ProblemSighting,
): void {
  if (problems.length === 0) return;
  const text = iso(at.when);
  const upsert = upsertProblem(db);
  db.transaction(() => {
    for (const p of problems) {
      upsert.run(p.path, at.base, p.reason, text, text, at.runId, "unreadable");
    }
  });
}

/**
 * Remembers symbolic links a walk did not follow. One transaction.
 *
 * @returns the links met for the first time.
 */
export function recordSkipped(
  db: TrackerDb,
  skipped: readonly { path: string; reason: string }[],
  at: ProblemSighting,
): { path: string; reason: string }[] {
  if (skipped.length === 0) return [];
  const text = iso(at.when);
  const upsert = upsertProblem(db);
  return db.transaction(() => {
    const known = new Set(
      (db.stmt(
        "SELECT path FROM problems WHERE kind = 'skipped' AND path IN " +
          "(SELECT value FROM json_each(?))",
      ).all(JSON.stringify(skipped.map((s) => s.path))) as { path: string }[]).map((r) => r.path),
    );
    for (const s of skipped) upsert.run(s.path, at.base, s.reason, text, text, at.runId, "skipped");
    return skipped.filter((s) => !known.has(s.path));
  });
}

/**
 * Moves every folder tracked under the base `from` to `to`, keeping status, key and
 * fingerprint; folders already tracked under `to` give way. One transaction.
 *
 * @returns how many folders moved, and how many earlier entries under `to` were replaced.
 * @throws {UploadError} kind `usage` when nothing is tracked under `from`.
 */
export function moveBase(db: TrackerDb, from: string, to: string): {
  moved: number;
  replaced: number;
} {
  return db.transaction(() => {
    const under = "(folder_path = ?1 OR substr(folder_path, 1, length(?1) + 1) = ?1 || '/')";
    const moving = Number(
      (db.stmt(`SELECT count(*) AS n FROM folder_status WHERE ${under}`).get(from) as {
        n: number;
      }).n,
    );
    if (moving === 0) {
      throw new UploadError("usage", `Nothing is tracked under ${from}`, {
        subject: from,
        hint: "Give the base path earlier runs used; 'deno task upload --status' lists the " +
          "tracked folders",
      });
    }
    const replaced = db.stmt(
      `DELETE FROM folder_status WHERE ${under.replaceAll("?1", "?2")} AND ` +
        `?1 || substr(folder_path, length(?2) + 1) IN (SELECT folder_path FROM folder_status WHERE ${under})`,
    ).run(from, to);
    db.stmt(
      "UPDATE folder_status SET folder_path = ?2 || substr(folder_path, length(?1) + 1), " +
        "base_path = CASE WHEN base_path = ?1 OR substr(base_path, 1, length(?1) + 1) = " +
        "?1 || '/' THEN ?2 || substr(base_path, length(?1) + 1) ELSE base_path END, " +
        "missing_since = NULL " +
        `WHERE ${under}`,
    ).run(from, to);
    db.stmt(
      "UPDATE OR REPLACE problems SET path = ?2 || substr(path, length(?1) + 1), " +
        "base_path = ?2 WHERE base_path = ?1",
    ).run(from, to);
    const underObjects = under.replaceAll("folder_path", "objects.folder_path");
    db.stmt(
      "UPDATE OR REPLACE objects SET folder_path = ?2 || substr(folder_path, length(?1) + 1) " +
        `WHERE ${underObjects}`,
    ).run(from, to);
    return { moved: moving, replaced: Number(replaced.changes) };
  });
}

/** The base folders tracked folders were found under, deepest first. */
export function knownBases(db: TrackerDb): string[] {
  const rows = db.stmt(
    "SELECT DISTINCT base_path FROM folder_status WHERE base_path IS NOT NULL",
  ).all() as { base_path: string }[];
  return rows.map((r) => r.base_path).sort((a, b) => b.length - a.length);
}
