/**
 * `deno task compile` (scripts/compile.ts). `deno compile` needs Deno's runtime, denort,
 * which it downloads from dl.deno.land or takes from `DENORT_BIN`:
 *
 * - with `DENORT_BIN` set, the real build is tested: both executables are compiled, then
 *   run from a directory without the repository, uploading a copy of examples/data into
 *   the embedded default database;
 * - without it that test is reported as ignored (its name says why), and what always runs
 *   is the failure path: a missing DENORT_BIN, an unreachable download host and a
 *   DENORT_BIN that is not denort each end the task with one line saying what to do.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { explainFailure } from "../../scripts/compile.ts";
import { type CliResult, describeRun, REPO_ROOT, runUploadCli } from "../../support/cli.ts";
import { removeTree, setMtime, T1, writeTree } from "../../support/tree.ts";

const COMPILE = join(REPO_ROOT, "scripts", "compile.ts");
const SQL = join(REPO_ROOT, "scripts", "sql.ts");
const DENORT_BIN = Deno.env.get("DENORT_BIN");

/** Runs the compile task into `outDir`, with `env` as the child's whole environment. */
function compile(outDir: string, env: Record<string, string>): Promise<CliResult> {
  return runUploadCli(["--out-dir", outDir], { script: COMPILE, env, timeoutMs: 600_000 });
}

/** Asserts a failed build printed exactly one line, an `Error:` line, and returns it. */
function oneErrorLine(result: CliResult): string {
  assert.equal(result.code, 1, describeRun(result));
  const lines = result.stderr.split("\n").filter((l) => l.trim() !== "");
  assert.equal(lines.length, 1, `one line expected:\n${result.stderr}`);
  assert.match(lines[0], /^Error: /);
  assert.doesNotMatch(lines[0], /Stack backtrace|Caused by/);
  return lines[0];
}

/** Whether deno has a denort of this version cached (then nothing is downloaded). */
function denortCached(): boolean {
  const denoDir = Deno.env.get("DENO_DIR") ?? join(Deno.env.get("HOME") ?? "/", ".cache", "deno");
  try {
    for (const entry of Deno.readDirSync(join(denoDir, "dl", "release", `v${Deno.version.deno}`))) {
      if (entry.name.startsWith("denort-")) return true;
    }
  } catch (_error) {
    return false; // no download cache: the next compile downloads
  }
  return false;
}

function copyTree(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true });
  for (const entry of Deno.readDirSync(from)) {
    if (entry.name.startsWith(".") || /^(success|failed)\.json$/.test(entry.name)) continue;
    if (entry.isDirectory) copyTree(join(from, entry.name), join(to, entry.name));
    else if (entry.isFile) {
      Deno.copyFileSync(join(from, entry.name), join(to, entry.name));
      setMtime(join(to, entry.name), T1);
    }
  }
}

/** Runs a compiled executable with a clean environment; returns its result. */
async function runBinary(path: string, args: string[], cwd: string): Promise<CliResult> {
  const out = await new Deno.Command(path, {
    args,
    cwd,
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", HOME: cwd, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

Deno.test({
  name: "compile: real executables upload examples into the embedded default " +
    "(needs DENORT_BIN: dl.deno.land is not reachable from the test machines)",
  ignore: !DENORT_BIN,
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "compile_test_" });
    try {
      const dist = join(dir, "dist");
      const built = await compile(dist, { DENORT_BIN: DENORT_BIN! });
      assert.equal(built.code, 0, describeRun(built));
      const work = join(dir, "work");
      copyTree(join(REPO_ROOT, "examples", "data"), join(work, "data"));

      const upload = await runBinary(join(dist, "upload_manager"), ["data"], work);
      assert.equal(upload.code, 0, describeRun(upload));
      assert.match(upload.stdout.split("\n")[0], /embedded/i);

      writeTree(join(work, "data"), { "Batch77/stats.json": { json: { result: "PASS" } } });
      const quick = await runBinary(join(dist, "quick_upload"), ["data/Batch77"], work);
      assert.equal(quick.code, 0, describeRun(quick));

      const count = await runUploadCli(
        ["-XAt", "-c", "select count(*) from device_test"],
        { script: SQL, cwd: work },
      );
      assert.equal(count.stdout.trim(), "7", describeRun(count));
    } finally {
      removeTree(dir);
    }
  },
});

Deno.test("compile: a DENORT_BIN that does not exist ends with one line saying what to do", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "compile_test_" });
  try {
    const result = await compile(join(dir, "dist"), { DENORT_BIN: join(dir, "no-denort") });
    const line = oneErrorLine(result);
    assert.ok(line.includes(`DENORT_BIN=${join(dir, "no-denort")} does not exist`), line);
    assert.ok(line.includes(`denort-${Deno.build.target}.zip`), line);
  } finally {
    removeTree(dir);
  }
});

Deno.test({
  name: "compile: an unreachable download host ends with one line naming DENORT_BIN",
  // With denort in deno's cache nothing is downloaded, so there is no failure to see.
  ignore: denortCached(),
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "compile_test_" });
    try {
      // A proxy on a closed local port: every download is refused, wherever this runs.
      const proxy = "http://127.0.0.1:9";
      const result = await compile(join(dir, "dist"), { HTTPS_PROXY: proxy, HTTP_PROXY: proxy });
      const line = oneErrorLine(result);
      assert.match(line, /could not download Deno's runtime \(denort\) from dl\.deno\.land/);
      assert.match(line, /set DENORT_BIN/);
      assert.match(line, /where dl\.deno\.land is reachable/);
    } finally {
      removeTree(dir);
    }
  },
});

Deno.test("compile: a DENORT_BIN that is not denort is caught before it is shipped", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "compile_test_" });
  try {
    // deno itself is accepted by `deno compile` but yields a binary that runs deno's CLI.
    const result = await compile(join(dir, "dist"), { DENORT_BIN: Deno.execPath() });
    const line = oneErrorLine(result);
    assert.match(line, /does not run as this program/);
    assert.match(line, /is not the denort runtime/);
    assert.deepEqual([...Deno.readDirSync(join(dir, "dist"))].map((e) => e.name), []);
  } finally {
    removeTree(dir);
  }
});

Deno.test("compile: deno compile's download failure, as printed on this machine, in one line", () => {
  // What `deno compile` 2.9.6 prints when dl.deno.land cannot be resolved.
  const output = [
    "Check scripts/upload_manager.ts",
    "Compile scripts/upload_manager.ts to dist/upload_manager",
    "Download https://dl.deno.land/release/v2.9.6/denort-x86_64-unknown-linux-gnu.zip",
    "error: Writing deno compile executable to temporary file 'dist/upload_manager.tmp-1'",
    "",
    "Caused by:",
    "    0: Setting up base binary.",
    "    1: error sending request for url (https://dl.deno.land/release/v2.9.6/denort-x86_64-" +
    "unknown-linux-gnu.zip): client error (Connect): dns error: failed to lookup address " +
    "information: Name or service not known",
    "    2: client error (Connect)",
    "    3: dns error",
    "    4: failed to lookup address information: Name or service not known",
    "",
    "Stack backtrace:",
    "   0: <unknown>",
  ].join("\n");
  const line = explainFailure(output, undefined);
  assert.ok(!line.includes("\n"));
  assert.match(line, /\(failed to lookup address information: Name or service not known\)/);
  assert.match(line, /set DENORT_BIN to a local denort binary of Deno \d+\.\d+\.\d+/);
  assert.match(
    explainFailure('error: Module not found "file:///x.ts"', undefined),
    /^deno compile failed: error: Module not found/,
  );
  assert.match(
    explainFailure("Could not find denort at '/opt/denort'", "aarch64-unknown-linux-gnu"),
    /DENORT_BIN=\/opt\/denort does not exist.*aarch64-unknown-linux-gnu/,
  );
});
