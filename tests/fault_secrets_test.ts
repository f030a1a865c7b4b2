/**
 * Secrets: with the password in SUPABASE_DB_URL (percent-encoded, full of URL and shell
 * specials), the password appears nowhere — not in any process's arguments (`ps -eo args`
 * sampled throughout the run, psql children included), not in the output, not in the
 * tracking database or its WAL (read during the run too), not in marker files — and not in
 * the errors of a wrong password or an unreachable server either.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { hasPostgres, type PgServer, startPostgres } from "../support/postgres.ts";
import { generateTree } from "../support/tree.ts";
import {
  delay,
  describeExit,
  runUploader,
  startUploader,
  type UploaderExit,
  withTempDir,
} from "./support/run.ts";

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
