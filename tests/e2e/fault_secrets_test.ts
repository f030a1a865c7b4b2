/**
 * Secrets: with the password in SUPABASE_DB_URL (percent-encoded, full of URL and shell
 * specials), the password appears nowhere — not in any process's arguments (`ps -eo args`
 * sampled throughout the run, psql children included), not in the output, not in the
 * tracking database or its WAL (read during the run too), not in marker files — and not in
 * the errors of a wrong password or an unreachable server either. And the property for
 * passwords pasted as they are: for random printable-ASCII passwords given raw and
 * percent-encoded, no three consecutive characters of the password that are not in the
 * rest of the URL show in stdout, stderr, `--json`, the tracker or the markers (the pure
 * half, 1,000 passwords through the parsing and rendering, is in tests/target/target_test.ts).
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../../support/postgres.ts";
import { generateTree } from "../../support/tree.ts";
import {
  delay,
  describeExit,
  runUploader,
  seededRandom,
  startUploader,
  type UploaderExit,
  withTempDir,
} from "../../support/run.ts";
import { leakedTrigrams, randomPassword } from "../../support/secrets.ts";

const LATIN1 = new TextDecoder("latin1");

/** The needles a leak would show: the whole password, its URL form, and its unique core. */
function needles(password: string, core: string): string[] {
  return [password, encodeURIComponent(password), core];
}

function findLeak(haystack: string, secrets: string[]): string | undefined {
  return secrets.find((s) => haystack.includes(s));
}

/**
 * Every file below `dir` (not following symlinks), as latin1 text, with its path. Files
 * that vanish while it reads (a marker's temp file renamed during the run) are skipped.
 */
function filesBelow(dir: string): { path: string; text: string }[] {
  const out: { path: string; text: string }[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    const path = join(dir, entry.name);
    try {
      if (entry.isDirectory) out.push(...filesBelow(path));
      else if (entry.isFile) out.push({ path, text: LATIN1.decode(Deno.readFileSync(path)) });
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return out;
}

function assertNoLeakInOutput(exit: UploaderExit, secrets: string[], label: string): void {
  assert.equal(findLeak(exit.stdout, secrets), undefined, `${label}: password on stdout`);
  assert.equal(findLeak(exit.stderr, secrets), undefined, `${label}: password on stderr`);
}

function url(pg: PgServer, user: string, password: string, port = pg.port): string {
  return `postgresql://${user}:${encodeURIComponent(password)}@127.0.0.1:${port}/uploads`;
}

Deno.test({
  name: "the password never shows: ps, output, tracker and its WAL, markers, error messages",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    const core = `Pw${crypto.randomUUID().replaceAll("-", "")}`;
    const password = `${core}:@/%?#&'"\\$ ;`;
    const secrets = needles(password, core);
    try {
      await pg.psql(
        `create role keeper login password ${`'${password.replaceAll("'", "''")}'`};
         grant usage, create on schema public to keeper`,
      );
      await withTempDir("fault_secrets_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        generateTree(data, { folders: 500, seed: 61 });
        const p = startUploader(
          [
            data,
            "--db-path",
            dbPath,
            "--min-age",
            "0",
            "--batch-size",
            "15",
            "--parallel",
            "2",
            "--batch-delay",
            "0.05",
          ],
          { env: { SUPABASE_DB_URL: url(pg, "keeper", password) } },
        );
        // Sample every process's arguments and the tracker files while the run goes on.
        let samples = 0;
        let samplesWithPsql = 0;
        while (!p.exited) {
          const ps = await new Deno.Command("ps", { args: ["-eo", "args"], stdout: "piped" })
            .output();
          const text = new TextDecoder().decode(ps.stdout);
          assert.equal(findLeak(text, secrets), undefined, `password in ps output:\n${text}`);
          samples++;
          if (/psql .*keeper@127\.0\.0\.1/.test(text)) samplesWithPsql++;
          if (samples % 10 === 0) {
            for (const f of filesBelow(dir)) {
              assert.equal(findLeak(f.text, secrets), undefined, `password in ${f.path}`);
            }
          }
          await delay(15);
        }
        const exit = await p.done;
        assert.equal(exit.code, 0, describeExit(exit));
        assert.ok(samplesWithPsql >= 3, `only ${samplesWithPsql} of ${samples} samples saw psql`);
        assertNoLeakInOutput(exit, secrets, "upload");
        // Tracker, WAL, lock file and every marker file after the run.
        const files = filesBelow(dir);
        assert.ok(files.some((f) => f.path.endsWith("success.json")), "no marker was written");
        for (const f of files) {
          assert.equal(findLeak(f.text, secrets), undefined, `password in ${f.path}`);
        }

        // The password as a query parameter works the same and stays hidden.
        generateTree(join(data, "More"), { folders: 20, seed: 62 });
        const query = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
          env: {
            SUPABASE_DB_URL: `postgresql://keeper@127.0.0.1:${pg.port}/uploads?password=${
              encodeURIComponent(password)
            }`,
          },
        });
        assert.equal(query.code, 0, describeExit(query));
        assertNoLeakInOutput(query, secrets, "password parameter");

        // A wrong password: a configuration error that does not repeat it.
        generateTree(join(data, "Even more"), { folders: 5, seed: 63 });
        const wrongCore = `Wr${crypto.randomUUID().replaceAll("-", "")}`;
        const wrong = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
          env: { SUPABASE_DB_URL: url(pg, "keeper", `${wrongCore}:@/%`) },
        });
        assert.equal(wrong.code, 2, describeExit(wrong));
        assertNoLeakInOutput(wrong, needles(`${wrongCore}:@/%`, wrongCore), "wrong password");

        // An unreachable server: exit 3, and its messages hold no password either.
        const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const closedPort = (closed.addr as Deno.NetAddr).port;
        closed.close();
        const down = await runUploader(
          [data, "--db-path", dbPath, "--min-age", "0", "--give-up-after", "1"],
          { env: { SUPABASE_DB_URL: url(pg, "keeper", password, closedPort) } },
        );
        assert.equal(down.code, 3, describeExit(down));
        assertNoLeakInOutput(down, secrets, "unreachable");
        for (const f of filesBelow(dir)) {
          assert.equal(findLeak(f.text, secrets), undefined, `password in ${f.path}`);
        }
      });
    } finally {
      await pg.close();
    }
  },
});

/** Every text value the tracking database holds (all tables), as one text. */
function trackerText(dbPath: string): string {
  const db = new DatabaseSync(dbPath);
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as {
      name: string;
    }[];
    return tables.map((t) =>
      JSON.stringify(db.prepare(`SELECT * FROM "${t.name.replaceAll('"', '""')}"`).all())
    ).join("\n");
  } finally {
    db.close();
  }
}

/** The marker files below `dir` (every JSON file but stats.json), as text. */
function markersText(dir: string): string {
  return filesBelow(dir)
    .filter((f) => f.path.endsWith(".json") && !f.path.endsWith("stats.json"))
    .map((f) => f.text)
    .join("\n");
}

Deno.test({
  name:
    "password property, real CLI: random passwords raw and encoded never show in output, --json, tracker or markers",
  ignore: !hasPostgres(),
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    try {
      await pg.psql(
        "create role lab login password 'x'; grant usage, create on schema public to lab",
      );
      await withTempDir("fault_secrets_prop_", async (dir) => {
        const data = join(dir, "data");
        const dbPath = join(dir, "tracker.db");
        generateTree(data, { folders: 3, seed: 64 });
        const host = `127.0.0.1:${pg.port}/uploads`;
        /** One run with the role's password set to `password`, from a fresh tracker. */
        const run = async (password: string, written: string) => {
          for (const f of filesBelow(dir)) {
            const name = f.path.slice(f.path.lastIndexOf("/") + 1);
            if (
              name.startsWith("tracker.db") || name === "success.json" || name === "failed.json"
            ) {
              Deno.removeSync(f.path);
            }
          }
          await pg.psql(`alter role lab password '${password.replaceAll("'", "''")}'`);
          const exit = await runUploader([data, "--db-path", dbPath, "--min-age", "0"], {
            env: {
              SUPABASE_DB_URL: `postgresql://lab:${written}@${host}`,
              DEVICE_ID: "5a1f3c2e-4b6d-4e8f-9a0b-1c2d3e4f5a6b",
            },
          });
          let tracker = "";
          try {
            tracker = trackerText(dbPath);
          } catch (error) {
            // A URL refused before the run leaves no tracker: nothing there to leak.
            if (!(error instanceof Error && /unable to open|no such/i.test(error.message))) {
              throw error;
            }
          }
          return { exit, text: [exit.stdout, exit.stderr, tracker, markersText(data)].join("\n") };
        };
        // What the CLI prints for unrelated passwords of each outcome: its own words.
        const canaries = [
          await run("QQQQQQ", "QQQQQQ"), // accepted
          await run("QQ#QQQ", "QQ#QQQ"), // refused: # in the user info
          await run("QQ%zzQ", "QQ%zzQ"), // refused: a bad escape
          await run("QQ%41Q", "QQ%41Q"), // read as QQAQ: a wrong password
        ];
        assert.deepEqual(canaries.map((c) => c.exit.code), [0, 2, 2, 2]);
        const words = canaries.map((c) => c.text).join("\n");
        assert.ok(!/QQ/.test(words), "a canary password shows");
        const rest = `postgresql://lab:@${host}\n${words}`;
        const random = seededRandom(19_5);
        const passwords = [
          "xY.-abC@dE$FG7#",
          ...Array.from({ length: 12 }, () => randomPassword(random, 8, 20)),
        ];
        let refused = 0;
        for (const password of passwords) {
          for (const written of [password, encodeURIComponent(password)]) {
            const { exit, text } = await run(password, written);
            const leaks = leakedTrigrams(text, password, rest, { digits: false });
            assert.deepEqual(
              leaks,
              [],
              `${JSON.stringify(written)} shows ${leaks}\n${describeExit(exit)}`,
            );
            if (written !== password || !/[/?#%]/.test(password)) {
              assert.equal(exit.code, 0, `${JSON.stringify(written)}: ${describeExit(exit)}`);
            } else {
              assert.equal(exit.code, 2, `${JSON.stringify(written)}: ${describeExit(exit)}`);
              refused++;
            }
          }
        }
        assert.ok(refused >= 3, `only ${refused} raw passwords were refused`);
      });
    } finally {
      await pg.close();
    }
  },
});
