/**
 * `--help` of the command-line scripts, pinned by snapshot files in tests/snapshots/: the
 * test runs each script as a user does and compares its stdout with the file byte for
 * byte. After an intended change of a help text, rewrite the files with
 * `UPDATE_SNAPSHOTS=1 deno test --allow-all tests/e2e/help_test.ts` and review the diff.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type CommandName, flagsOf } from "../../lib/cli/flags.ts";
import { describeRun, REPO_ROOT, runUploadCli } from "../../support/cli.ts";

const UPDATE = Deno.env.get("UPDATE_SNAPSHOTS") === "1";
const SNAPSHOTS = join(REPO_ROOT, "tests", "snapshots");

/** Each script and the flags the table gives its parser, which its help must list. */
const CASES = [
  { script: "upload_manager.ts", snapshot: "upload_help.txt", command: "upload" },
  { script: "quick_upload.ts", snapshot: "quick_help.txt", command: "quick" },
  { script: "sql.ts", snapshot: "sql_help.txt", command: "sql" },
  { script: "fleet.ts", snapshot: "fleet_help.txt", command: "fleet" },
].map((c) => ({
  ...c,
  flags: flagsOf(c.command as CommandName).map((f) => `--${f.name}`),
}));

for (const c of CASES) {
  Deno.test(`help: ${c.script} --help matches tests/snapshots/${c.snapshot}`, async () => {
    const result = await runUploadCli(["--help"], {
      script: join(REPO_ROOT, "scripts", c.script),
      // Settings in the environment must not leak into the help text.
      env: { BATCH_SIZE: "7", UPLOAD_DB_PATH: "elsewhere.db", SUPABASE_DB_URL: "postgresql://x" },
    });
    assert.equal(result.code, 0, describeRun(result));
    assert.equal(result.stderr, "", "help prints nothing on stderr");
    const path = join(SNAPSHOTS, c.snapshot);
    if (UPDATE) {
      Deno.writeTextFileSync(path, result.stdout);
      return;
    }
    let expected: string;
    try {
      expected = Deno.readTextFileSync(path);
    } catch (error) {
      throw new Error(
        `Missing snapshot ${path} (${error}); create it with UPDATE_SNAPSHOTS=1 and review it`,
      );
    }
    assert.equal(
      result.stdout,
      expected,
      `--help of ${c.script} changed; if intended, run UPDATE_SNAPSHOTS=1 deno test ` +
        `--allow-all tests/e2e/help_test.ts and review the diff`,
    );
  });
}

Deno.test("help: every flag, the exit codes and three examples are in the texts", () => {
  for (const c of CASES) {
    const text = Deno.readTextFileSync(join(SNAPSHOTS, c.snapshot));
    for (const flag of c.flags) {
      assert.match(text, new RegExp(`${flag}\\b`), `${c.script}: ${flag}`);
    }
    const examples = text.split("\nExamples:\n")[1];
    assert.ok(examples, `${c.script}: an Examples section`);
    assert.equal(examples.trim().split("\n").length, 3, `${c.script}: three examples`);
  }
  for (const c of CASES.slice(0, 2)) {
    const text = Deno.readTextFileSync(join(SNAPSHOTS, c.snapshot));
    for (const code of ["0 ", "1 ", "2 ", "3 ", "130 "]) {
      assert.ok(text.split("Exit codes:")[1]?.includes(code), `${c.script}: exit code ${code}`);
    }
    for (
      const env of ["SUPABASE_DB_URL", "DATABASE_URL", "PGHOST", "DEVICE_ID", "UPLOAD_DB_PATH"]
    ) {
      assert.ok(text.includes(env), `${c.script}: ${env}`);
    }
    // Every option line that takes a value names its default.
    const options = text.split("\nOptions:\n")[1].split("\n\n")[0];
    const valued = options.split(/\n(?= {2}-)/).filter((o) =>
      /^ {2}(-\w, )?--[\w-]+ [A-Z]/.test(o)
    );
    for (const o of valued) assert.match(o, /\(default: /, `${c.script}: default in ${o}`);
  }
});
